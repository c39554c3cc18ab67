//! A lean span pipeline. The request path decides sampling, makes ids and takes the start and
//! end times; the telemetry thread ([`crate::background`]) builds each span's attributes and
//! its OpenTelemetry [`SpanData`], batches them and calls the exporter.
//!
//! The SDK's tracer is not on the path: it costs a context, a lock, processor callbacks and
//! a sampler call per span, which made four spans cost four times a scripted agent turn.
//! Sampling follows the configured sampler where a trace starts here, and a parent's decision
//! below that (what every standard sampler decides for spans of one trace). A sampler sees a
//! root span's name, kind and the attributes it starts with (an agent run's operation, agent,
//! provider and requested model; an HTTP request's method and route), built only when a
//! sampler is asked; the rest of its attributes are built later, on the telemetry thread.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime};

use agentkit_core::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context as OtelContext, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanExporter, SpanLinks,
};

/// A reading of the request path's clock: 8 bytes, and cheaper to take than
/// `std::time::Instant` (a calibrated TSC where the CPU has an invariant one, the OS clock
/// elsewhere). The counter's raw value is kept: scaling it to time takes a 128-bit multiply
/// and a few more instructions per reading (seven a one-tool turn), done on the telemetry
/// thread instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

/// The request path's clock, held here: `quanta::Instant::now` looks for a thread's mock
/// clock and then the global one on every reading, which made a reading cost about 60
/// instructions where the counter itself takes a few.
static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();

fn clock() -> &'static quanta::Clock {
    CLOCK.get_or_init(quanta::Clock::new)
}

/// The time now, for the request path.
#[inline]
pub(crate) fn now() -> Stamp {
    Stamp(clock().raw())
}

impl Stamp {
    /// This reading as a point in time.
    fn instant(self) -> quanta::Instant {
        clock().scaled(self.0)
    }
}

impl std::ops::Sub for Stamp {
    type Output = Duration;

    /// The time from `earlier` to this reading (zero if it is not earlier).
    fn sub(self, earlier: Stamp) -> Duration {
        clock().delta(earlier.0, self.0)
    }
}

fn span_context(trace_id: u128, span_id: u64, sampled: bool, remote: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes(span_id.to_be_bytes()),
        flags,
        remote,
        TraceState::default(),
    )
}

/// A non-zero random span id.
fn span_id() -> u64 {
    fastrand::u64(1..)
}

/// The request path's half: which spans are recorded, and their ids.
pub(crate) struct Sampling {
    sampler: Sampler,
    /// The sampler's decision for a span starting a trace, when known from its configuration
    /// (a `ParentBased` sampler's root is not inspectable).
    roots: Option<bool>,
}

impl std::fmt::Debug for Sampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampling").finish_non_exhaustive()
    }
}

impl Sampling {
    pub(crate) fn new(sampler: Sampler) -> Self {
        Self {
            sampler,
            roots: None,
        }
    }

    /// Decides spans starting a trace as `roots` says, without asking the sampler.
    pub(crate) fn deciding_roots(mut self, roots: Option<bool>) -> Self {
        self.roots = roots;
        self
    }

    /// Whether a span starting under `parent` (none: a new trace `trace_id`) is recorded;
    /// `attributes` are its starting attributes, made only if a sampler is asked.
    fn sampled(
        &self,
        parent: Option<&TraceContext>,
        trace_id: u128,
        name: &str,
        kind: &SpanKind,
        attributes: &dyn Fn() -> Vec<KeyValue>,
    ) -> bool {
        match (&self.sampler, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::ParentBased(_), Some(parent)) => parent.is_sampled(),
            (_, None) if self.roots.is_some() => self.roots == Some(true),
            (sampler, parent) => {
                let parent = parent.map(|p| {
                    OtelContext::new().with_remote_span_context(span_context(
                        p.trace_id(),
                        p.span_id(),
                        p.is_sampled(),
                        true,
                    ))
                });
                let result = sampler.should_sample(
                    parent.as_ref(),
                    TraceId::from_bytes(trace_id.to_be_bytes()),
                    name,
                    kind,
                    &attributes(),
                    &[],
                );
                result.decision == SamplingDecision::RecordAndSample
            }
        }
    }

    /// Starts a span at `start` continuing `parent` (from a request, a queue message or an
    /// outer span of another component), or a new trace.
    #[cfg(test)]
    pub(crate) fn start(
        &self,
        name: &str,
        kind: &SpanKind,
        parent: Option<&TraceContext>,
        start: Stamp,
    ) -> OpenSpan {
        self.start_with(name, kind, parent, start, &Vec::new)
    }

    /// [`start`](Self::start), with the attributes a sampler asked about the span sees.
    pub(crate) fn start_with(
        &self,
        name: &str,
        kind: &SpanKind,
        parent: Option<&TraceContext>,
        start: Stamp,
        attributes: &dyn Fn() -> Vec<KeyValue>,
    ) -> OpenSpan {
        let trace_id = match parent {
            Some(parent) => parent.trace_id(),
            // Two halves: a `u128` range draw divides in software.
            None => (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(1..)),
        };
        OpenSpan {
            trace_id: [(trace_id >> 64) as u64, trace_id as u64],
            span_id: span_id(),
            parent: parent.map_or(0, TraceContext::span_id),
            parent_remote: parent.is_some(),
            sampled: self.sampled(parent, trace_id, name, kind, attributes),
            start,
        }
    }
}

/// A span in progress: its identity and start. What it records is built when it ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenSpan {
    /// High and low halves (a `u128` would align the record to 16 bytes).
    trace_id: [u64; 2],
    span_id: u64,
    /// 0: none.
    parent: u64,
    parent_remote: bool,
    sampled: bool,
    start: Stamp,
}

impl OpenSpan {
    pub(crate) fn sampled(&self) -> bool {
        self.sampled
    }

    fn trace_id(&self) -> u128 {
        (u128::from(self.trace_id[0]) << 64) | u128::from(self.trace_id[1])
    }

    /// A span under this one starting at `start`, sharing its sampling decision.
    pub(crate) fn child(&self, start: Stamp) -> OpenSpan {
        OpenSpan {
            trace_id: self.trace_id,
            span_id: span_id(),
            parent: self.span_id,
            parent_remote: false,
            sampled: self.sampled,
            start,
        }
    }

    /// The trace context that work under this span continues.
    pub(crate) fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_parts(self.trace_id(), self.span_id, self.sampled)
    }

    /// The span's record, ended as `ended` says.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn data(
        &self,
        clock: &Clock,
        ended: Ended,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        status: Status,
        scope: &InstrumentationScope,
    ) -> SpanData {
        let end_time = clock.at(ended.at);
        let start_time = match ended.took {
            Some(took) => end_time.checked_sub(took).unwrap_or(end_time),
            None => clock.at(self.start),
        };
        SpanData {
            span_context: span_context(self.trace_id(), self.span_id, self.sampled, false),
            parent_span_id: SpanId::from_bytes(self.parent.to_be_bytes()),
            parent_span_is_remote: self.parent_remote,
            span_kind: kind,
            name,
            start_time,
            end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        }
    }
}

/// When a span ended, and, for a span whose start is learnt only then (a tool call, timed by
/// the core), how long before.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ended {
    at: Stamp,
    took: Option<Duration>,
}

impl Ended {
    /// Ended `at`; started when it was opened.
    pub(crate) fn at(at: Stamp) -> Self {
        Self { at, took: None }
    }

    /// Ended `at`, having started `took` before.
    pub(crate) fn after(took: Duration, at: Stamp) -> Self {
        Self {
            at,
            took: Some(took),
        }
    }
}

/// Wall-clock times for the monotonic ones the request path takes (one clock read serves a
/// span's time and a metric's duration). Taken afresh for each batch of records, which are at
/// most milliseconds old, so clock adjustments in between do not accumulate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    system: SystemTime,
    instant: quanta::Instant,
}

impl Clock {
    pub(crate) fn now() -> Self {
        Self {
            system: SystemTime::now(),
            instant: clock().now(),
        }
    }

    /// The wall-clock time of `at`.
    pub(crate) fn at(&self, at: Stamp) -> SystemTime {
        let at = at.instant();
        match at.checked_duration_since(self.instant) {
            Some(later) => self.system + later,
            None => self.system - self.instant.duration_since(at),
        }
    }
}

/// The instrumentation scope of agentkit's spans.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("agentkit")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// A span exporter the telemetry thread can own: [`SpanExporter`] is not object-safe.
pub(crate) trait Export: Send + 'static {
    fn export(&mut self, batch: Vec<SpanData>) -> OTelSdkResult;
    fn flush(&mut self) -> OTelSdkResult;
    fn shutdown(&mut self) -> OTelSdkResult;
    fn set_resource(&mut self, resource: &Resource);
}

impl<E: SpanExporter + 'static> Export for E {
    fn export(&mut self, batch: Vec<SpanData>) -> OTelSdkResult {
        block_on(SpanExporter::export(self, batch))
    }

    fn flush(&mut self) -> OTelSdkResult {
        self.force_flush()
    }

    fn shutdown(&mut self) -> OTelSdkResult {
        SpanExporter::shutdown(self)
    }

    fn set_resource(&mut self, resource: &Resource) {
        SpanExporter::set_resource(self, resource);
    }
}

/// Wakes the thread that waits in [`block_on`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread (the exporters' futures wait on HTTP requests
/// that run on a runtime of their own, or not at all).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// When spans are exported.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    /// Export once this many spans wait.
    pub(crate) size: usize,
    /// Export spans that waited this long, however few.
    pub(crate) delay: Duration,
}

impl Batching {
    /// Spans as soon as the telemetry thread has built them: what one pass of that thread
    /// builds goes in one export (for tests and local tools).
    pub(crate) const PROMPT: Batching = Batching {
        size: 512,
        delay: Duration::ZERO,
    };
}

/// The longest a flush or a shutdown waits for the exporter.
const EXPORT_WAIT: Duration = Duration::from_secs(5);

/// What the export thread is asked to do.
enum Job {
    Spans(Vec<SpanData>),
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

/// The exporter on a thread of its own, so that a collector that hangs an export holds up
/// spans only: the telemetry thread goes on writing logs and counting metrics, and drops (and
/// counts) span batches the exporter cannot take.
struct Exporting {
    inbox: SyncSender<Job>,
    dropped: Arc<AtomicU64>,
}

impl Exporting {
    /// Starts the thread; up to `queued` spans (in batches of `batch_size`, at least two
    /// batches) may wait for it.
    fn start(
        mut exporter: Box<dyn Export>,
        batch_size: usize,
        queued: usize,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let batches = (queued / batch_size.max(1)).max(2);
        let (inbox, jobs) = std::sync::mpsc::sync_channel::<Job>(batches);
        std::thread::Builder::new()
            .name("agentkit-export".into())
            .spawn(move || {
                for job in jobs {
                    match job {
                        Job::Spans(spans) => {
                            if let Err(error) = exporter.export(spans) {
                                tracing::warn!(target: "agentkit::telemetry", %error, "exporting spans failed");
                            }
                        }
                        Job::Flush(done) => {
                            if let Err(error) = exporter.flush() {
                                tracing::warn!(target: "agentkit::telemetry", %error, "flushing spans failed");
                            }
                            let _ = done.send(());
                        }
                        Job::Shutdown(done) => {
                            if let Err(error) = exporter.shutdown() {
                                tracing::warn!(target: "agentkit::telemetry", %error, "shutting the span exporter down failed");
                            }
                            let _ = done.send(());
                            return;
                        }
                    }
                }
            })?;
        Ok(Self { inbox, dropped })
    }

    /// Hands `spans` to the exporter, or drops and counts them when it is behind.
    fn send(&self, spans: Vec<SpanData>) {
        match self.inbox.try_send(Job::Spans(spans)) {
            Ok(()) => {}
            Err(
                TrySendError::Full(Job::Spans(spans))
                | TrySendError::Disconnected(Job::Spans(spans)),
            ) => {
                if self
                    .dropped
                    .fetch_add(spans.len() as u64, Ordering::Relaxed)
                    == 0
                {
                    tracing::warn!(
                        target: "agentkit::telemetry",
                        "the span exporter is behind: dropping spans (counted in \
                         agentkit_telemetry_dropped_total)"
                    );
                }
            }
            Err(_) => {}
        }
    }

    /// Asks for `job` once everything handed over before it is exported and waits for it,
    /// at most [`EXPORT_WAIT`]. False when the exporter did not answer in time.
    fn wait(&self, job: fn(SyncSender<()>) -> Job) -> bool {
        let deadline = Instant::now() + EXPORT_WAIT;
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        let mut job = job(done);
        loop {
            match self.inbox.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                    job = again;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// Spans built on the telemetry thread, waiting for export.
pub(crate) struct Batch {
    exporting: Exporting,
    batching: Batching,
    spans: Vec<SpanData>,
    /// When the oldest waiting span arrived.
    since: Option<Instant>,
}

impl Batch {
    /// Starts the export thread, for which up to `queued` spans may wait; spans it cannot
    /// take count in `dropped`.
    pub(crate) fn new(
        mut exporter: Box<dyn Export>,
        batching: Batching,
        resource: &Resource,
        queued: usize,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        exporter.set_resource(resource);
        Ok(Self {
            exporting: Exporting::start(exporter, batching.size, queued, dropped)?,
            batching,
            spans: Vec::new(),
            since: None,
        })
    }

    pub(crate) fn push(&mut self, span: SpanData) {
        self.since.get_or_insert_with(Instant::now);
        self.spans.push(span);
        if self.spans.len() >= self.batching.size {
            self.export();
        }
    }

    /// When waiting spans are due for export.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.since.map(|since| since + self.batching.delay)
    }

    pub(crate) fn export(&mut self) {
        self.since = None;
        if self.spans.is_empty() {
            return;
        }
        let spans = std::mem::replace(
            &mut self.spans,
            Vec::with_capacity(self.batching.size.min(4096)),
        );
        self.exporting.send(spans);
    }

    /// Exports what waits and flushes the exporter (waiting for it at most five seconds).
    pub(crate) fn flush(&mut self) {
        self.export();
        if !self.exporting.wait(Job::Flush) {
            tracing::warn!(target: "agentkit::telemetry", "the span exporter did not flush in time");
        }
    }

    /// Exports what waits and shuts the exporter down; an exporter that does not answer in
    /// five seconds is left to its thread.
    pub(crate) fn shutdown(&mut self) {
        self.export();
        if !self.exporting.wait(Job::Shutdown) {
            tracing::warn!(target: "agentkit::telemetry", "the span exporter did not shut down in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    fn batch() -> (Batch, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let resource = Resource::builder().with_service_name("test").build();
        (
            Batch::new(
                Box::new(exporter.clone()),
                Batching::PROMPT,
                &resource,
                8192,
                Arc::default(),
            )
            .unwrap(),
            exporter,
        )
    }

    /// Starts a root (or a span under `parent`) with one child; ends both.
    fn run(
        sampling: &Sampling,
        batch: &mut Batch,
        parent: Option<&TraceContext>,
    ) -> Option<TraceContext> {
        let scope = scope();
        let root = sampling.start("root", &SpanKind::Server, parent, now());
        let child = root.child(now());
        assert_eq!(
            child.sampled(),
            root.sampled(),
            "children share the decision"
        );
        for (span, name, attributes) in [
            (&child, "child", vec![]),
            (&root, "root", vec![KeyValue::new("k", 1)]),
        ] {
            if span.sampled() {
                batch.push(span.data(
                    &Clock::now(),
                    Ended::at(now()),
                    name.into(),
                    SpanKind::Internal,
                    attributes,
                    Status::Unset,
                    &scope,
                ));
            }
        }
        // Export happens on the export thread: wait for it.
        batch.flush();
        root.trace()
    }

    #[test]
    fn recorded_spans_are_parented_and_carry_their_attributes() {
        let sampling = Sampling::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let (mut batch, exporter) = batch();
        let inbound = TraceContext::new_root();
        let trace = run(&sampling, &mut batch, Some(&inbound)).unwrap();
        assert_eq!(trace.trace_id(), inbound.trace_id());
        let spans = exporter.get_finished_spans().unwrap();
        let [child, root] = spans.as_slice() else {
            panic!("two spans, got {}", spans.len())
        };
        assert_eq!(
            root.parent_span_id,
            SpanId::from_bytes(inbound.span_id().to_be_bytes())
        );
        assert!(root.parent_span_is_remote);
        assert_eq!(child.parent_span_id, root.span_context.span_id());
        assert!(!child.parent_span_is_remote);
        assert_eq!(root.attributes, [KeyValue::new("k", 1)]);
        assert!(root.end_time >= root.start_time);
        assert_eq!(root.instrumentation_scope.name(), "agentkit");
    }

    #[test]
    fn sampling_follows_the_sampler_at_the_root_and_the_parent_below() {
        let (mut batch, exported) = batch();
        let off = Sampling::new(Sampler::AlwaysOff);
        let trace = run(&off, &mut batch, None).unwrap();
        assert!(!trace.is_sampled(), "the decision travels on");
        assert!(exported.get_finished_spans().unwrap().is_empty());

        let ratio = Sampling::new(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            0.0,
        ))));
        run(&ratio, &mut batch, None);
        assert!(exported.get_finished_spans().unwrap().is_empty());
        // A sampled parent wins over the root sampler; an unsampled one too.
        run(&ratio, &mut batch, Some(&TraceContext::new_root()));
        assert_eq!(exported.get_finished_spans().unwrap().len(), 2);
        let unsampled = TraceContext::from_parts(7, 9, false).unwrap();
        run(&ratio, &mut batch, Some(&unsampled));
        assert_eq!(exported.get_finished_spans().unwrap().len(), 2);

        let all = Sampling::new(Sampler::TraceIdRatioBased(1.0));
        run(&all, &mut batch, None);
        assert_eq!(exported.get_finished_spans().unwrap().len(), 4);
    }

    /// A recorded span, ended now.
    fn ended() -> SpanData {
        Sampling::new(Sampler::AlwaysOn)
            .start("s", &SpanKind::Internal, None, now())
            .data(
                &Clock::now(),
                Ended::at(now()),
                "s".into(),
                SpanKind::Internal,
                Vec::new(),
                Status::Unset,
                &scope(),
            )
    }

    /// Blocks every export until released.
    #[derive(Debug, Clone, Default)]
    struct Stuck(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

    impl SpanExporter for Stuck {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            let (released, wake) = &*self.0;
            let mut released = released.lock().unwrap();
            while !*released {
                released = wake.wait(released).unwrap();
            }
            Ok(())
        }
    }

    #[test]
    fn a_hanging_exporter_costs_dropped_batches_not_a_stuck_caller() {
        let stuck = Stuck::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let resource = Resource::builder().with_service_name("test").build();
        let mut batch = Batch::new(
            Box::new(stuck.clone()),
            Batching {
                size: 1,
                delay: Duration::ZERO,
            },
            &resource,
            64,
            dropped.clone(),
        )
        .unwrap();
        for _ in 0..64 + 20 {
            batch.push(ended());
        }
        // One batch in the exporter's hands, 64 waiting, the rest dropped.
        let counted = dropped.load(Ordering::Relaxed);
        assert!((19..=20).contains(&counted), "{counted} dropped");
        *stuck.0.0.lock().unwrap() = true;
        stuck.0.1.notify_all();
        assert!(batch.exporting.wait(Job::Flush), "answers once released");
    }

    #[test]
    fn the_clock_maps_monotonic_times_on_both_sides_of_its_reading() {
        let before = now();
        std::thread::sleep(Duration::from_millis(2));
        let clock = Clock::now();
        std::thread::sleep(Duration::from_millis(5));
        let after = now();
        let apart = after - before;
        assert!(apart >= Duration::from_millis(7), "{apart:?}");
        let mapped = clock.at(after).duration_since(clock.at(before)).unwrap();
        // Scaled each on its own or as a difference, the readings round apart by nanoseconds.
        assert!(
            mapped.abs_diff(apart) < Duration::from_micros(1),
            "{mapped:?} {apart:?}"
        );
        assert_eq!(before - after, Duration::ZERO, "no negative durations");
        let wall = SystemTime::now();
        assert!(clock.at(before) < wall && clock.at(now()) <= wall + Duration::from_millis(50));
    }

    #[test]
    fn a_known_root_decision_skips_the_sampler_only_for_roots() {
        let off_roots = Sampling::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .deciding_roots(Some(false));
        let root = off_roots.start("s", &SpanKind::Internal, None, now());
        assert!(!root.sampled());
        let parent = TraceContext::new_root();
        let under = off_roots.start("s", &SpanKind::Internal, Some(&parent), now());
        assert!(under.sampled(), "a sampled parent decides");
        let asked = Sampling::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        assert!(!asked.start("s", &SpanKind::Internal, None, now()).sampled());
        let root = Sampling::new(Sampler::AlwaysOn).start("s", &SpanKind::Internal, None, now());
        assert_ne!(root.trace().unwrap().trace_id(), 0);
    }

    #[test]
    fn batches_wait_for_their_size_or_their_delay() {
        let exporter = InMemorySpanExporter::default();
        let resource = Resource::builder().with_service_name("test").build();
        let mut batch = Batch::new(
            Box::new(exporter.clone()),
            Batching {
                size: 3,
                delay: Duration::from_secs(60),
            },
            &resource,
            8192,
            Arc::default(),
        )
        .unwrap();
        assert_eq!(batch.due(), None, "nothing waits");
        let span = ended;
        batch.push(span());
        batch.push(span());
        // Waits for the export thread without sending what the batch holds.
        let exported = |batch: &Batch| {
            assert!(batch.exporting.wait(Job::Flush));
            exporter.get_finished_spans().unwrap().len()
        };
        assert_eq!(exported(&batch), 0);
        assert!(batch.due().is_some_and(|due| due > Instant::now()));
        batch.push(span());
        assert_eq!(exported(&batch), 3, "full");
        batch.push(span());
        assert_eq!(exported(&batch), 3, "one waits");
        batch.flush();
        assert_eq!(exporter.get_finished_spans().unwrap().len(), 4, "flushed");
        assert_eq!(batch.due(), None);
    }
}
