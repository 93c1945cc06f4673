//! The batch writer: requests hand their prepared report to a queue and wait for its commit; a
//! few writer tasks each take whatever is queued (up to `batch_max`) and commit it in one
//! transaction. Under light load a batch is one report and nothing waits for company; under
//! heavy load batches grow by themselves and PostgreSQL does far less work per report.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::rows::PreparedReport;
use super::{Core, FailureKind, InsertOutcome, StorageError};

struct Job {
    report: PreparedReport,
    reply: oneshot::Sender<Result<InsertOutcome, StorageError>>,
}

/// The sending side; writer tasks end when it is dropped.
pub(super) struct Writer {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field(
                "queued",
                &(self.queue.max_capacity() - self.queue.capacity()),
            )
            .finish()
    }
}

impl Writer {
    /// Starts `writers` tasks. They hold the [`Core`], not the `Storage` that owns this writer,
    /// so they end when the last `Storage` handle is dropped.
    pub(super) fn start(storage: Core, writers: usize, batch_max: usize) -> Self {
        // Admission control bounds what can be in flight; this bound only stops a bug from
        // turning into unbounded memory.
        let (queue, rx) = mpsc::channel(16 * 1024);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..writers.max(1) {
            let rx = rx.clone();
            let storage = storage.clone();
            tokio::spawn(async move {
                tracing::debug!(writer = n, "batch writer started");
                while let Some(jobs) = next_batch(&rx, batch_max.max(1)).await {
                    run(&storage, jobs).await;
                }
            });
        }
        Writer { queue }
    }

    pub(super) async fn submit(
        &self,
        report: PreparedReport,
    ) -> Result<InsertOutcome, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { report, reply })
            .await
            .map_err(|_| StorageError::Unavailable("the batch writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StorageError::Unavailable("the batch writer dropped the report".into()))?
    }
}

/// Waits for one job, then takes what else is already queued.
async fn next_batch(rx: &Mutex<mpsc::Receiver<Job>>, max: usize) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut jobs = vec![first];
    while jobs.len() < max {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

async fn run(storage: &Core, jobs: Vec<Job>) {
    let reports: Vec<&PreparedReport> = jobs.iter().map(|j| &j.report).collect();
    match storage.write_batch(&reports).await {
        Ok(outcomes) => {
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(e) if e.kind() == FailureKind::Transient || jobs.len() == 1 => {
            if jobs.len() > 1 {
                tracing::warn!(reports = jobs.len(), error = %e, "batch not committed");
            }
            let message = e.to_string();
            let mut jobs = jobs.into_iter();
            if let Some(first) = jobs.next() {
                let _ = first.reply.send(Err(e));
            }
            for job in jobs {
                let _ = job
                    .reply
                    .send(Err(StorageError::Unavailable(message.clone())));
            }
        }
        Err(e) => {
            // One report the database refused must not fail the others: each goes alone, and
            // only the culprit gets the error.
            tracing::warn!(reports = jobs.len(), error = %e, "batch refused; writing its reports one by one");
            for job in jobs {
                let result = storage
                    .write_batch(&[&job.report])
                    .await
                    .map(|o| o.into_iter().next().unwrap_or(InsertOutcome::Duplicate));
                let _ = job.reply.send(result);
            }
        }
    }
}
