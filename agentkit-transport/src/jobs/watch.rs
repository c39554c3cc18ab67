//! Callers awaiting jobs' ends ([`JobQueue::until_ended`](super::JobQueue::until_ended)), by
//! job: what a queue that learns of ends (in memory, or from the Redis queue's end notices)
//! wakes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The jobs awaited in this process, each with the callers awaiting it.
#[derive(Default)]
pub(crate) struct Watchers {
    jobs: HashMap<String, Arc<Notify>>,
}

impl Watchers {
    /// Watches `job_id`; [`wake`](Self::wake) with that id wakes every watcher.
    pub(crate) fn watch(&mut self, job_id: &str) -> Arc<Notify> {
        match self.jobs.get(job_id) {
            Some(watching) => watching.clone(),
            None => {
                let watching = Arc::new(Notify::new());
                self.jobs.insert(job_id.to_owned(), watching.clone());
                watching
            }
        }
    }

    /// Takes the watchers of `job_id` out, for the caller to wake once it let go of the lock
    /// these are kept under.
    #[must_use]
    pub(crate) fn ended(&mut self, job_id: &str) -> Option<Arc<Notify>> {
        self.jobs.remove(job_id)
    }

    /// A caller stopped watching `job_id`: the last one out takes the job's entry out, unless
    /// the job ended meanwhile (then it is gone already).
    pub(crate) fn forget(&mut self, job_id: &str, watching: &Arc<Notify>) {
        // Two references: the entry's and the caller's.
        if (self.jobs.get(job_id)).is_some_and(|w| Arc::ptr_eq(w, watching))
            && Arc::strong_count(watching) == 2
        {
            self.jobs.remove(job_id);
        }
    }

    /// Every job's watchers, for the caller to wake (without taking them out) once it let go
    /// of the lock: what told them of ends stopped, and they should look for themselves.
    pub(crate) fn all(&self) -> Vec<Arc<Notify>> {
        self.jobs.values().cloned().collect()
    }

    /// Whether no job is awaited.
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// How many jobs are awaited.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }
}

/// Runs its function when dropped: a caller forgets its watch however its wait ends,
/// including when its future is dropped midway (a cancelled call), which would otherwise
/// leave the job watched until it ends.
pub(crate) struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub(crate) fn new(run: F) -> Self {
        Self(Some(run))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            run();
        }
    }
}

/// Waits at most `wait` for `watching` to be woken, having enabled the wait before `ready`
/// runs (so a wake-up while `ready` runs is not lost); `ready` says whether to wait at all.
pub(crate) async fn woken(watching: &Notify, wait: Duration, ready: impl Future<Output = bool>) {
    let mut notified = std::pin::pin!(watching.notified());
    notified.as_mut().enable();
    if ready.await {
        let _ = tokio::time::timeout(wait, notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_watcher_out_takes_the_entry_out() {
        let mut watchers = Watchers::default();
        let first = watchers.watch("a");
        let second = watchers.watch("a");
        assert!(Arc::ptr_eq(&first, &second));
        watchers.forget("a", &first);
        assert_eq!(watchers.len(), 1, "another caller still watches");
        drop(first);
        watchers.forget("a", &second);
        assert!(watchers.is_empty());
    }

    #[tokio::test]
    async fn a_wait_cut_short_forgets_its_watch() {
        let watchers = std::sync::Mutex::new(Watchers::default());
        let waiting = async {
            let watching = watchers.lock().unwrap().watch("a");
            let _forget = OnDrop::new(|| watchers.lock().unwrap().forget("a", &watching));
            woken(&watching, Duration::from_secs(600), async { true }).await;
        };
        let cut = tokio::time::timeout(Duration::from_millis(10), waiting).await;
        assert!(cut.is_err(), "the wait was cut short");
        assert!(watchers.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_end_wakes_every_watcher_and_forgets_the_job() {
        let mut watchers = Watchers::default();
        let watching = watchers.watch("a");
        let waiting = {
            let watching = watching.clone();
            tokio::spawn(async move {
                woken(&watching, Duration::from_secs(600), async { true }).await;
            })
        };
        tokio::task::yield_now().await;
        let ended = watchers.ended("a").expect("watched");
        assert!(watchers.is_empty());
        ended.notify_waiters();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken by the end")
            .unwrap();
        // Forgetting a job that ended leaves nothing behind.
        watchers.forget("a", &watching);
        assert!(watchers.is_empty());
        assert!(watchers.ended("a").is_none());
    }
}
