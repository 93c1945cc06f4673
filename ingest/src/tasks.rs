//! Background work that must not die unnoticed (the silence check, the Alertmanager notifier,
//! maintenance): each runs under a supervisor that restarts it after a panic, with a growing
//! pause, counts the restarts for `/metrics` and says in `/readyz` which one is down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

/// The first pause before a restart; it doubles with each panic in a row, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// A task that ran this long before panicking starts again from the first pause.
const STEADY: Duration = Duration::from_secs(300);

/// One supervised task, as `/metrics` and `/readyz` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRecord {
    /// Times it panicked and was started again.
    pub restarts: u64,
    /// Running now (false while it waits to be restarted, or after it ended).
    pub up: bool,
    /// What its last panic said.
    pub last_panic: Option<String>,
}

/// The supervised tasks of this process; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    records: Arc<Mutex<BTreeMap<&'static str, TaskRecord>>>,
}

/// Aborts the running attempt when the supervisor itself is aborted or dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Tasks {
    /// Runs `make()` as task `name` until it returns; after a panic, logs it, counts it and runs
    /// `make()` again. Aborting the returned handle stops the task.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_paused(name, FIRST_PAUSE, make)
    }

    /// [`Tasks::spawn`] with the first pause before a restart `first_pause`.
    fn spawn_paused<F, Fut>(
        &self,
        name: &'static str,
        first_pause: Duration,
        make: F,
    ) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tasks = self.clone();
        tasks.update(name, |r| r.up = true);
        tokio::spawn(async move {
            let mut pause = first_pause;
            loop {
                tasks.update(name, |r| r.up = true);
                let started = tokio::time::Instant::now();
                let mut attempt = AbortOnDrop(tokio::spawn(make()));
                let ended = (&mut attempt.0).await;
                match ended {
                    Ok(()) => {
                        tasks.update(name, |r| r.up = false);
                        tracing::info!(task = name, "background task ended");
                        return;
                    }
                    Err(e) if e.is_panic() => {
                        let message = panic_message(e);
                        if started.elapsed() >= STEADY {
                            pause = first_pause;
                        }
                        tracing::error!(
                            task = name,
                            panic = %message,
                            restart_in = ?pause,
                            "background task panicked; restarting it"
                        );
                        tasks.update(name, |r| {
                            r.up = false;
                            r.restarts = r.restarts.saturating_add(1);
                            r.last_panic = Some(message);
                        });
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                    Err(_) => {
                        // Cancelled: the runtime is shutting down.
                        tasks.update(name, |r| r.up = false);
                        return;
                    }
                }
            }
        })
    }

    /// Every supervised task by name.
    pub fn records(&self) -> BTreeMap<&'static str, TaskRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut TaskRecord)) {
        if let Ok(mut records) = self.records.lock() {
            f(records.entry(name).or_default());
        }
    }
}

/// The text of a panic, as far as it has one.
pub fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_counted() {
        let tasks = Tasks::default();
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let handle = tasks.spawn_paused("flaky", Duration::from_millis(5), move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        });
        handle.await.expect("the supervisor itself ends cleanly");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let record = &tasks.records()["flaky"];
        assert_eq!(record.restarts, 2);
        assert!(!record.up, "it ended");
        assert_eq!(record.last_panic.as_deref(), Some("boom"));
    }

    #[tokio::test]
    async fn aborting_the_supervisor_stops_the_task() {
        let tasks = Tasks::default();
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let handle = tasks.spawn("forever", move || {
            let counter = counter.clone();
            async move {
                loop {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.abort();
        let _ = handle.await;
        let seen = runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            seen,
            "still running after abort"
        );
    }
}
