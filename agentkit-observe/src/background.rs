//! The telemetry thread: the request path hands finished spans and run records over in a
//! bounded queue; one thread per [`Telemetry`](crate::Telemetry) turns them into span data and
//! log lines and exports them.
//!
//! The request path pays for a lock and a push. It wakes the thread only when the thread has
//! parked after a quiet spell; under load the thread wakes itself every [`TICK`] and takes
//! everything queued in one swap, so no request makes a system call for telemetry.
//!
//! A request never waits for telemetry: when the thread falls behind by a full queue (a log
//! pipe nobody reads, a collector that hangs an export, a starved CPU) records are dropped
//! and counted, as OpenTelemetry's batch processor and non-blocking log writers do, rather
//! than slowing the service down when it is already in trouble.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the thread waits for more records while work keeps arriving.
const TICK: Duration = Duration::from_millis(1);
/// Quiet ticks after which the thread parks until a record wakes it.
const QUIET_TICKS: u32 = 50;

/// Records waiting for the telemetry thread, kept by kind so that a small record does not
/// take the room (and the copying) of the largest.
pub(crate) trait Items: Default + Send + 'static {
    /// How many records wait.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Send + 'static> Items for Vec<T> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// What the telemetry thread does with records.
pub(crate) trait Drain: Send + 'static {
    /// Records handed over by the request path.
    type Items: Items;

    /// Takes in `items` (and leaves them empty, keeping their room).
    fn take(&mut self, items: &mut Self::Items);

    /// When batched output is next due, if any is pending.
    fn due(&self) -> Option<Instant>;

    /// Sends what is batched; with `force`, everything, and flushes the exporter.
    fn send(&mut self, force: bool);

    /// Sends everything and shuts the exporter down.
    fn stop(&mut self);
}

struct State<T> {
    items: T,
    /// Records accepted so far.
    submitted: u64,
    /// Records sent by the last forced send (a flush's or the stop's).
    flushed: u64,
    /// A flush waits until `flushed` reaches this.
    flush_to: u64,
    /// Records taken in (built, counted, written), sent or not.
    taken: u64,
    /// A sync waits until `taken` reaches this.
    take_to: u64,
    /// Flushes and syncs waiting for progress.
    watching: usize,
    /// The thread waits without a deadline; a new record must wake it.
    parked: bool,
    /// The thread lets records gather for a tick; a record that fills half the queue wakes
    /// it.
    gathering: bool,
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the thread.
    work: Condvar,
    /// Wakes requests waiting for room and flushes waiting for progress.
    progress: Condvar,
    capacity: usize,
    /// Shared with the span export, which counts the spans it drops here too.
    dropped: Arc<AtomicU64>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the thread and waits for its progress until `done` or `deadline`; true when
    /// `done`.
    fn wait_until<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<T>>,
        deadline: Instant,
        mut done: impl FnMut(&mut State<T>) -> bool,
    ) -> (MutexGuard<'a, State<T>>, bool) {
        loop {
            if done(&mut state) {
                return (state, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (state, false);
            }
            self.work.notify_one();
            state = self
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The request path's end of the queue.
pub(crate) struct Queue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.shared.capacity)
            .field("dropped", &self.shared.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T: Items> Queue<T> {
    /// Hands one record to the thread: `add` puts it among the waiting records. When the
    /// queue is full, or the thread has stopped, the record is dropped and counted instead.
    #[inline]
    pub(crate) fn push(&self, add: impl FnOnce(&mut T)) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.items.len() < shared.capacity && !state.closed {
            add(&mut state.items);
            state.submitted += 1;
            if state.parked || (state.gathering && state.items.len() >= shared.capacity / 2) {
                state.parked = false;
                state.gathering = false;
                shared.work.notify_one();
            }
            return;
        }
        drop(state);
        self.dropped_one();
    }

    /// Counts a dropped record; says so the first time.
    #[cold]
    fn dropped_one(&self) {
        if self.shared.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                target: "agentkit::telemetry",
                "the telemetry thread is behind or stopped: dropping spans, run logs and metric \
                 observations (counted in agentkit_telemetry_dropped_total)"
            );
        }
    }

    /// Records dropped because the queue was full or the thread had stopped, and spans the
    /// exporter could not take.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything pushed before this call is sent and the exporter flushed, at
    /// most `timeout`. False when the deadline passed first.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        self.wait(timeout, |state, target| {
            state.flush_to = state.flush_to.max(target);
            state.flushed
        })
    }

    /// Waits until everything pushed before this call is taken in (counted, built, written;
    /// not necessarily exported), at most `timeout`. False when the deadline passed first.
    pub(crate) fn sync(&self, timeout: Duration) -> bool {
        self.wait(timeout, |state, target| {
            state.take_to = state.take_to.max(target);
            state.taken
        })
    }

    /// Asks for progress up to what was submitted (`ask` records the target and returns the
    /// progress made) and waits for it.
    fn wait(&self, timeout: Duration, ask: impl Fn(&mut State<T>, u64) -> u64) -> bool {
        let shared = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut state = shared.lock();
        let target = state.submitted;
        if ask(&mut state, target) >= target {
            return true;
        }
        state.watching += 1;
        let (mut state, _) = shared.wait_until(state, deadline, |state| {
            ask(state, target) >= target || state.closed
        });
        state.watching -= 1;
        ask(&mut state, target) >= target
    }
}

/// The thread, owned by [`Telemetry`](crate::Telemetry): stopping it sends what is left.
pub(crate) struct Background<T> {
    queue: Queue<T>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Items> Background<T> {
    /// Starts the thread with room for `capacity` records; drops count in `dropped`.
    pub(crate) fn start<D: Drain<Items = T>>(
        capacity: usize,
        drain: D,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                items: T::default(),
                submitted: 0,
                flushed: 0,
                flush_to: 0,
                taken: 0,
                take_to: 0,
                watching: 0,
                parked: false,
                gathering: false,
                closed: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            capacity: capacity.max(1),
            dropped,
        });
        let thread = std::thread::Builder::new()
            .name("agentkit-telemetry".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, drain)
            })?;
        Ok(Self {
            queue: Queue { shared },
            thread: Some(thread),
        })
    }

    pub(crate) fn queue(&self) -> &Queue<T> {
        &self.queue
    }

    /// Sends what is queued, shuts the exporter down and ends the thread. Records pushed
    /// afterwards are dropped.
    pub(crate) fn stop(&mut self) {
        {
            let mut state = self.queue.shared.lock();
            state.closed = true;
            self.queue.shared.work.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.queue.shared.progress.notify_all();
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        let mut state = self.queue.shared.lock();
        state.closed = true;
        self.queue.shared.work.notify_one();
    }
}

/// The thread's loop.
fn run<D: Drain>(shared: &Shared<D::Items>, mut drain: D) {
    let mut batch = D::Items::default();
    let mut quiet = 0u32;
    let mut busy = false;
    loop {
        let mut state = shared.lock();
        // Under load, records gather for a tick between swaps (unless the queue fills up or
        // someone waits for progress): fewer, larger batches, and meanwhile the producers'
        // pushes stay in their own cores' caches instead of meeting this thread's swaps.
        if busy
            && !state.items.is_empty()
            && state.items.len() < shared.capacity / 4
            && !state.closed
            && state.flush_to <= state.flushed
            && state.take_to <= state.taken
        {
            state.gathering = true;
            state = shared
                .work
                .wait_timeout(state, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            state.gathering = false;
        }
        while state.items.is_empty()
            && !state.closed
            && state.flush_to <= state.flushed
            && state.take_to <= state.taken
        {
            let due = drain.due();
            if due.is_some_and(|due| due <= Instant::now()) {
                break;
            }
            let wait = if quiet < QUIET_TICKS {
                quiet += 1;
                Some(TICK)
            } else {
                due.map(|due| due.saturating_duration_since(Instant::now()))
            };
            state = match wait {
                Some(wait) => {
                    shared
                        .work
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => {
                    state.parked = true;
                    let mut state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
                    state.parked = false;
                    state
                }
            };
        }
        std::mem::swap(&mut state.items, &mut batch);
        let upto = state.submitted;
        let flush = state.flush_to > state.flushed;
        let closed = state.closed;
        drop(state);

        busy = !batch.is_empty();
        if busy {
            quiet = 0;
            drain.take(&mut batch);
        }
        if closed {
            drain.stop();
        } else if flush || drain.due().is_some_and(|due| due <= Instant::now()) {
            drain.send(flush);
        }

        let mut state = shared.lock();
        state.taken = upto;
        if flush || closed {
            state.flushed = upto;
        }
        if state.watching > 0 || closed {
            shared.progress.notify_all();
        }
        if closed && state.items.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Held<T> = Arc<Mutex<T>>;

    /// A started thread, what it sent, whether it stopped, and how many takes it made.
    type Started = (
        Background<Vec<u32>>,
        Held<Vec<u32>>,
        Held<bool>,
        Arc<AtomicU64>,
    );

    /// Collects what it takes; `sent` holds what was sent.
    struct Collect {
        pending: Vec<u32>,
        sent: Arc<Mutex<Vec<u32>>>,
        stopped: Arc<Mutex<bool>>,
        slow: Duration,
        takes: Arc<AtomicU64>,
    }

    impl Drain for Collect {
        type Items = Vec<u32>;
        fn take(&mut self, items: &mut Vec<u32>) {
            std::thread::sleep(self.slow);
            self.takes.fetch_add(1, Ordering::Relaxed);
            self.pending.append(items);
        }
        fn due(&self) -> Option<Instant> {
            None
        }
        fn send(&mut self, _force: bool) {
            self.sent.lock().unwrap().append(&mut self.pending);
        }
        fn stop(&mut self) {
            self.send(true);
            *self.stopped.lock().unwrap() = true;
        }
    }

    fn start(capacity: usize, slow: Duration) -> Started {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(Mutex::new(false));
        let takes = Arc::new(AtomicU64::new(0));
        let background = Background::start(
            capacity,
            Collect {
                pending: Vec::new(),
                sent: sent.clone(),
                stopped: stopped.clone(),
                slow,
                takes: takes.clone(),
            },
            Arc::default(),
        )
        .unwrap();
        (background, sent, stopped, takes)
    }

    #[test]
    fn a_flush_returns_after_everything_pushed_before_it_is_sent() {
        let (background, sent, _, _) = start(1024, Duration::ZERO);
        for i in 0..1000 {
            background.queue().push(|items| items.push(i));
        }
        assert!(background.queue().flush(Duration::from_secs(5)));
        assert_eq!(*sent.lock().unwrap(), (0..1000).collect::<Vec<_>>());
        assert_eq!(background.queue().dropped(), 0);
    }

    #[test]
    fn a_sync_returns_once_everything_pushed_before_it_is_taken_in_without_sending() {
        let (background, sent, _, _) = start(128, Duration::ZERO);
        for i in 0..100 {
            background.queue().push(|items| items.push(i));
        }
        assert!(background.queue().sync(Duration::from_secs(5)));
        assert!(sent.lock().unwrap().is_empty(), "taken in, not sent");
        assert!(
            background.queue().sync(Duration::from_secs(5)),
            "nothing new"
        );
        assert!(background.queue().flush(Duration::from_secs(5)));
        assert_eq!(sent.lock().unwrap().len(), 100);
    }

    #[test]
    fn under_load_records_gather_for_a_tick_between_takes() {
        let (background, sent, _, takes) = start(1 << 16, Duration::ZERO);
        // A record every 10 µs or so for 30 ms: a thread taking each as it comes would take
        // thousands of times; one that gathers takes about once a tick.
        let started = Instant::now();
        let mut pushed = 0;
        while started.elapsed() < Duration::from_millis(30) {
            background.queue().push(|items| items.push(pushed));
            pushed += 1;
            let pause = Instant::now();
            while pause.elapsed() < Duration::from_micros(10) {
                std::hint::spin_loop();
            }
        }
        let elapsed_ticks = started.elapsed().as_micros() / TICK.as_micros();
        let taken = takes.load(Ordering::Relaxed) as u128;
        assert!(
            taken <= elapsed_ticks + 2,
            "{taken} takes of {pushed} records in {elapsed_ticks} ticks"
        );
        assert!(background.queue().flush(Duration::from_secs(5)));
        assert_eq!(sent.lock().unwrap().len(), pushed as usize, "nothing lost");
    }

    #[test]
    fn a_parked_thread_wakes_for_a_record() {
        let (background, sent, _, _) = start(8, Duration::ZERO);
        // Long enough for the thread to park after its quiet ticks.
        std::thread::sleep(TICK * (QUIET_TICKS + 20));
        background.queue().push(|items| items.push(7));
        assert!(background.queue().flush(Duration::from_secs(5)));
        assert_eq!(*sent.lock().unwrap(), [7]);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_making_the_producer_wait() {
        // The thread takes 200 ms per batch; 4 records fit.
        let (background, sent, _, _) = start(4, Duration::from_millis(200));
        for i in 0..100 {
            background.queue().push(|items| items.push(i));
        }
        let dropped = background.queue().dropped();
        assert!(
            dropped >= 100 - 2 * 4,
            "at most two batches' worth got in, {dropped} dropped"
        );
        assert!(background.queue().flush(Duration::from_secs(5)));
        let sent = sent.lock().unwrap();
        assert_eq!(
            sent.len() as u64 + dropped,
            100,
            "every record sent or counted"
        );
        assert!(sent.windows(2).all(|w| w[0] < w[1]), "in order: {sent:?}");
    }

    #[test]
    fn stopping_sends_what_is_left_and_later_records_are_counted_as_dropped() {
        let (mut background, sent, stopped, _) = start(64, Duration::ZERO);
        let queue = background.queue().clone();
        for i in 0..10 {
            queue.push(|items| items.push(i));
        }
        background.stop();
        assert!(*stopped.lock().unwrap());
        assert_eq!(sent.lock().unwrap().len(), 10);
        queue.push(|items| items.push(11));
        assert_eq!(queue.dropped(), 1);
        assert!(
            queue.flush(Duration::from_millis(100)),
            "a stopped queue has nothing to wait for"
        );
    }
}
