//! The one loop of a consumer-group worker: receive a batch, process it, commit it (with its
//! offsets, in one Postgres transaction), again, until a shutdown signal; and the same batches
//! until the log is drained, for tools and tests.
//!
//! Every batch worker (the projector, the scorer, the risk worker, the actuator) implements
//! [`BatchWorker`] and runs [`run_until_stopped`] or [`run_until_idle`], so they agree on three
//! things:
//!
//! - **Shutdown finishes the batch in hand**: a signal that arrives mid-batch lets the batch
//!   commit (within [`SHUTDOWN_GRACE`]) and then stops; it is checked again between batches.
//!   A batch still running after the grace (waiting on a service that is down) is dropped
//!   uncommitted, which is safe: nothing of it is stored, and the next owner reads it again.
//! - **A failed batch committed nothing**: the worker's [`BatchWorker::recover`] decides
//!   whether to read it again after a backoff (a transient failure of Postgres, Kafka or Redis)
//!   or to stop with the error. A shutdown during the backoff stops at once.
//! - **Idle means an empty batch with no assignment pending** ([`run_until_idle`]).
//!
//! A pipelined worker (the projector: batch N+1 is received and folded while batch N commits)
//! returns from [`BatchWorker::process_batch`] with a write still in flight, and commits it in
//! [`BatchWorker::drain`], which both loops call before they return.

use std::future::Future;
use std::time::Duration;

/// How long a shutdown waits for the batch in hand to commit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The first backoff after a failed batch.
pub const RETRY_START: Duration = crate::member::Member::RETRY_START;

/// A worker that consumes its topics in batches, each committed with its offsets.
pub trait BatchWorker: Send {
    /// What one batch did.
    type Outcome: Default + Send;

    /// Receives the messages available (waiting at most `wait` for the first), processes them
    /// and commits. An error means nothing of the batch was committed.
    fn process_batch(
        &mut self,
        wait: Duration,
    ) -> impl Future<Output = anyhow::Result<Self::Outcome>> + Send;

    /// Messages a batch received (0: the worker was idle).
    fn received(outcome: &Self::Outcome) -> u64;

    /// Adds one batch's outcome to a running total.
    fn add(total: &mut Self::Outcome, outcome: &Self::Outcome);

    /// After a failed batch: gets ready to read it again and returns `Ok` to retry (after
    /// waiting `backoff`, which it may grow), or returns the error to stop the worker.
    fn recover(
        &mut self,
        err: anyhow::Error,
        backoff: &mut Duration,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Whether partitions were assigned and not yet read (then an empty batch is not idle).
    fn settling(&self) -> bool {
        false
    }

    /// Commits what is still in flight (a pipelined worker's last write) before the loop
    /// returns; what it committed. A worker that commits within `process_batch` has nothing.
    fn drain(&mut self) -> impl Future<Output = anyhow::Result<Self::Outcome>> + Send {
        async { Ok(Self::Outcome::default()) }
    }
}

/// [`BatchWorker::drain`] at a shutdown: bounded by `grace`; a failure is logged, not returned
/// (nothing of the write was committed, and the next owner reads it again).
async fn drain_for_shutdown<W: BatchWorker>(worker: &mut W, grace: Duration) {
    match tokio::time::timeout(grace, worker.drain()).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %format!("{err:#}"), "shutdown: the write in flight failed; nothing of it was committed")
        }
        Err(_) => tracing::warn!(?grace, "shutdown: the write in flight did not finish"),
    }
}

/// Runs batches of `wait` until `shutdown` resolves; see the module docs for what a shutdown
/// and a failure do.
pub async fn run_until_stopped<W: BatchWorker>(
    worker: &mut W,
    wait: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut backoff = RETRY_START;
    loop {
        let finished = {
            let batch = worker.process_batch(wait);
            tokio::pin!(batch);
            tokio::select! {
                biased;
                outcome = &mut batch => Some((outcome, false)),
                () = &mut shutdown => match tokio::time::timeout(grace, batch).await {
                    Ok(outcome) => Some((outcome, true)),
                    Err(_) => None,
                },
            }
        };
        let Some((outcome, stopping)) = finished else {
            tracing::warn!(
                ?grace,
                "shutdown: the batch in hand did not finish; dropped uncommitted"
            );
            drain_for_shutdown(worker, grace).await;
            return Ok(());
        };
        match outcome {
            Ok(_) => backoff = RETRY_START,
            Err(err) if stopping => {
                tracing::warn!(error = %format!("{err:#}"), "shutdown: the last batch failed; nothing of it was committed");
                drain_for_shutdown(worker, grace).await;
                return Ok(());
            }
            Err(err) => {
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        drain_for_shutdown(worker, grace).await;
                        return Ok(());
                    }
                    retry = worker.recover(err, &mut backoff) => retry?,
                }
            }
        }
        if stopping {
            drain_for_shutdown(worker, grace).await;
            return Ok(());
        }
    }
}

/// Runs batches until one comes back empty with no assignment pending, and returns their
/// total; the first batch waits at least 30 s (a new member's group join), later ones `idle`.
/// A failed batch is returned as the error.
pub async fn run_until_idle<W: BatchWorker>(
    worker: &mut W,
    idle: Duration,
) -> anyhow::Result<W::Outcome> {
    let mut total = W::Outcome::default();
    let mut wait = idle.max(Duration::from_secs(30));
    loop {
        let outcome = worker.process_batch(wait).await?;
        wait = idle;
        W::add(&mut total, &outcome);
        if W::received(&outcome) == 0 && !worker.settling() {
            W::add(&mut total, &worker.drain().await?);
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A worker whose batches are scripted: each takes `took` and then commits `messages`
    /// (counted in `committed`), or fails.
    struct Scripted {
        batches: Vec<(Duration, anyhow::Result<u64>)>,
        committed: Arc<AtomicU64>,
        recovered: u64,
        retry: bool,
    }

    impl BatchWorker for Scripted {
        type Outcome = u64;

        fn process_batch(&mut self, _wait: Duration) -> impl Future<Output = anyhow::Result<u64>> {
            let (took, result) = if self.batches.is_empty() {
                (Duration::from_millis(5), Ok(0))
            } else {
                self.batches.remove(0)
            };
            let committed = self.committed.clone();
            async move {
                tokio::time::sleep(took).await;
                let n = result?;
                committed.fetch_add(n, Ordering::SeqCst);
                Ok(n)
            }
        }

        fn received(outcome: &u64) -> u64 {
            *outcome
        }

        fn add(total: &mut u64, outcome: &u64) {
            *total += outcome;
        }

        async fn recover(
            &mut self,
            err: anyhow::Error,
            backoff: &mut Duration,
        ) -> anyhow::Result<()> {
            self.recovered += 1;
            *backoff *= 2;
            if self.retry {
                Ok(())
            } else {
                Err(err)
            }
        }
    }

    fn scripted(batches: Vec<(Duration, anyhow::Result<u64>)>, retry: bool) -> Scripted {
        Scripted {
            batches,
            committed: Arc::new(AtomicU64::new(0)),
            recovered: 0,
            retry,
        }
    }

    #[tokio::test]
    async fn a_shutdown_mid_batch_lets_the_batch_commit_and_runs_no_other() {
        let mut worker = scripted(
            vec![
                (Duration::from_millis(300), Ok(7)),
                (Duration::from_millis(1), Ok(100)),
            ],
            true,
        );
        let committed = worker.committed.clone();
        run_until_stopped(
            &mut worker,
            Duration::from_millis(1),
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_millis(20)),
        )
        .await
        .expect("stops cleanly");
        assert_eq!(
            committed.load(Ordering::SeqCst),
            7,
            "the batch in hand committed, no later one"
        );
    }

    #[tokio::test]
    async fn a_batch_past_the_grace_is_dropped_uncommitted() {
        let mut worker = scripted(vec![(Duration::from_secs(60), Ok(7))], true);
        let committed = worker.committed.clone();
        let started = std::time::Instant::now();
        run_until_stopped(
            &mut worker,
            Duration::from_millis(1),
            Duration::from_millis(50),
            tokio::time::sleep(Duration::from_millis(10)),
        )
        .await
        .expect("stops cleanly");
        assert_eq!(committed.load(Ordering::SeqCst), 0);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_failed_batch_is_recovered_and_the_loop_goes_on_or_stops_with_the_error() {
        let mut worker = scripted(
            vec![
                (
                    Duration::from_millis(1),
                    Err(anyhow::anyhow!("Postgres is down")),
                ),
                (Duration::from_millis(1), Ok(3)),
            ],
            true,
        );
        let committed = worker.committed.clone();
        run_until_stopped(
            &mut worker,
            Duration::from_millis(1),
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await
        .expect("stops cleanly");
        assert_eq!(worker.recovered, 1);
        assert_eq!(
            committed.load(Ordering::SeqCst),
            3,
            "the batch after the failure ran"
        );

        let mut fatal = scripted(
            vec![(Duration::from_millis(1), Err(anyhow::anyhow!("bad config")))],
            false,
        );
        let err = run_until_stopped(
            &mut fatal,
            Duration::from_millis(1),
            Duration::from_secs(5),
            std::future::pending(),
        )
        .await
        .expect_err("a non-transient failure stops the worker");
        assert!(err.to_string().contains("bad config"), "{err}");
    }

    /// A pipelined worker: each batch's commit happens in the next call (or in `drain`).
    struct Pipelined {
        batches: Vec<u64>,
        in_flight: Option<u64>,
        committed: Arc<AtomicU64>,
    }

    impl BatchWorker for Pipelined {
        type Outcome = u64;

        async fn process_batch(&mut self, _wait: Duration) -> anyhow::Result<u64> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = self.in_flight.take().unwrap_or(0);
            self.committed.fetch_add(done, Ordering::SeqCst);
            let next = if self.batches.is_empty() {
                0
            } else {
                self.batches.remove(0)
            };
            if next > 0 {
                self.in_flight = Some(next);
            }
            Ok(done)
        }

        fn settling(&self) -> bool {
            self.in_flight.is_some()
        }

        fn received(outcome: &u64) -> u64 {
            *outcome
        }

        fn add(total: &mut u64, outcome: &u64) {
            *total += outcome;
        }

        async fn recover(&mut self, err: anyhow::Error, _: &mut Duration) -> anyhow::Result<()> {
            Err(err)
        }

        async fn drain(&mut self) -> anyhow::Result<u64> {
            let done = self.in_flight.take().unwrap_or(0);
            self.committed.fetch_add(done, Ordering::SeqCst);
            Ok(done)
        }
    }

    #[tokio::test]
    async fn a_shutdown_commits_the_write_a_pipelined_worker_has_in_flight() {
        let committed = Arc::new(AtomicU64::new(0));
        let mut worker = Pipelined {
            batches: vec![4, 6],
            in_flight: None,
            committed: committed.clone(),
        };
        // Stops during the second batch: it folds 6 and commits 4; the 6 still in flight must
        // be committed by the drain, not dropped.
        run_until_stopped(
            &mut worker,
            Duration::from_millis(1),
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_millis(30)),
        )
        .await
        .expect("stops cleanly");
        assert_eq!(committed.load(Ordering::SeqCst), 10);
        assert_eq!(worker.in_flight, None);

        // Run until idle: the first batch commits in the second call, the last in the drain
        // after the first empty batch with nothing in flight.
        let committed = Arc::new(AtomicU64::new(0));
        let mut worker = Pipelined {
            batches: vec![3, 5],
            in_flight: None,
            committed: committed.clone(),
        };
        let total = run_until_idle(&mut worker, Duration::from_millis(1))
            .await
            .expect("drains");
        assert_eq!((total, committed.load(Ordering::SeqCst)), (8, 8));
    }

    #[tokio::test]
    async fn idle_is_the_first_empty_batch_and_the_total_sums_the_rest() {
        let mut worker = scripted(
            vec![
                (Duration::from_millis(1), Ok(2)),
                (Duration::from_millis(1), Ok(5)),
                (Duration::from_millis(1), Ok(0)),
                (Duration::from_millis(1), Ok(9)),
            ],
            true,
        );
        let total = run_until_idle(&mut worker, Duration::from_millis(1))
            .await
            .expect("drains");
        assert_eq!(total, 7);
    }
}
