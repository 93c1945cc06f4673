//! The batch writer: requests hand their prepared report to a queue and wait for its commit; a
//! few writer tasks each take whatever is queued (up to `batch_max`) and commit it in one
//! transaction. Under light load a batch is one report and nothing waits for company; under
//! heavy load batches grow by themselves and PostgreSQL does far less work per report.
//!
//! Each commit runs in a task of its own, so a panic (a bug some report triggers) fails that
//! batch and not the writer: its reports are retried one by one, and only the one that panics
//! again is refused. [`WriteHealth`] keeps what `/readyz` and `/metrics` say about writing.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
                &self
                    .queue
                    .max_capacity()
                    .saturating_sub(self.queue.capacity()),
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

/// How writing has gone lately.
#[derive(Debug, Default)]
pub struct WriteHealth {
    panics: AtomicU64,
    /// Since when every write has failed for a reason of ours or the database's (not the
    /// report's), when the last one failed, and its error; `None` once one succeeds.
    failing: std::sync::Mutex<Option<(Instant, Instant, String)>>,
}

/// A failure older than this no longer counts: a replica taken out of its balancer gets no
/// writes to prove it has recovered, so it must be let back to try.
const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// What [`WriteHealth`] says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteStatus {
    /// Commits that panicked since the process started.
    pub panics: u64,
    /// How long every write has been failing, and the last error, if they are (and the last
    /// failure is recent).
    pub failing: Option<(Duration, String)>,
}

impl WriteHealth {
    pub(super) fn status(&self) -> WriteStatus {
        WriteStatus {
            panics: self.panics.load(Ordering::Relaxed),
            failing: self.failing.lock().ok().and_then(|f| {
                f.as_ref()
                    .filter(|(_, last, _)| last.elapsed() < FAILURE_MEMORY)
                    .map(|(since, _, e)| (since.elapsed(), e.clone()))
            }),
        }
    }

    fn succeeded(&self) {
        if let Ok(mut f) = self.failing.lock() {
            *f = None;
        }
    }

    fn failed(&self, e: &StorageError) {
        // The report's own fault says nothing about whether this replica can store.
        if e.kind() == FailureKind::BadData {
            return;
        }
        if let Ok(mut f) = self.failing.lock() {
            let now = Instant::now();
            let since = f
                .as_ref()
                .filter(|(_, last, _)| last.elapsed() < FAILURE_MEMORY)
                .map_or(now, |(since, _, _)| *since);
            *f = Some((since, now, e.to_string()));
        }
    }

    fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a commit in its own task came to: its result, or the message of its panic.
type Committed = Result<Result<Vec<InsertOutcome>, StorageError>, String>;

/// Commits `reports` (or only the `only`th of them) in a task of its own.
async fn commit(
    storage: &Core,
    reports: Arc<Vec<PreparedReport>>,
    only: Option<usize>,
) -> Committed {
    let core = storage.clone();
    let task = tokio::spawn(async move {
        let refs: Vec<&PreparedReport> = match only {
            Some(i) => reports.get(i).into_iter().collect(),
            None => reports.iter().collect(),
        };
        core.write_batch(&refs).await
    });
    match task.await {
        Ok(result) => {
            match &result {
                Ok(_) => storage.health.succeeded(),
                Err(e) => storage.health.failed(e),
            }
            Ok(result)
        }
        Err(e) => {
            storage.health.panicked();
            Err(crate::tasks::panic_message(e))
        }
    }
}

type Reply = oneshot::Sender<Result<InsertOutcome, StorageError>>;

async fn run(storage: &Core, jobs: Vec<Job>) {
    let (reports, replies): (Vec<PreparedReport>, Vec<Reply>) =
        jobs.into_iter().map(|j| (j.report, j.reply)).unzip();
    let reports = Arc::new(reports);
    let n = replies.len();
    match commit(storage, reports.clone(), None).await {
        Ok(Ok(outcomes)) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(Err(e)) if e.kind() == FailureKind::Transient || n == 1 => {
            if n > 1 {
                tracing::warn!(reports = n, error = %e, "batch not committed");
            }
            let message = e.to_string();
            let mut replies = replies.into_iter();
            if let Some(first) = replies.next() {
                let _ = first.send(Err(e));
            }
            for reply in replies {
                let _ = reply.send(Err(StorageError::Unavailable(message.clone())));
            }
        }
        Ok(Err(e)) => {
            // One report the database refused must not fail the others: each goes alone, and
            // only the culprit gets the error.
            tracing::warn!(reports = n, error = %e, "batch refused; writing its reports one by one");
            one_by_one(storage, reports, replies).await;
        }
        Err(panic) => {
            tracing::error!(
                reports = n,
                panic,
                "a batch panicked; writing its reports one by one"
            );
            one_by_one(storage, reports, replies).await;
        }
    }
}

async fn one_by_one(storage: &Core, reports: Arc<Vec<PreparedReport>>, replies: Vec<Reply>) {
    for (i, reply) in replies.into_iter().enumerate() {
        let result = match commit(storage, reports.clone(), Some(i)).await {
            Ok(r) => r.map(|o| o.into_iter().next().unwrap_or(InsertOutcome::Duplicate)),
            Err(panic) => {
                let r = reports.get(i);
                tracing::error!(
                    serial = r.map(|r| r.serial.as_str()),
                    report_id = %r.map(|r| r.report_id.to_string()).unwrap_or_default(),
                    panic,
                    "report refused: processing it panicked (a bug; the writer goes on)"
                );
                Err(StorageError::Poison(panic))
            }
        };
        let _ = reply.send(result);
    }
}
