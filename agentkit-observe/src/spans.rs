//! A lean span pipeline: spans are plain records built on the request path and handed, once
//! ended, to an OpenTelemetry SDK span processor (which batches and exports them).
//!
//! The SDK's tracer is not on the path: it costs a context, a lock, processor callbacks and
//! a sampler call per span, which made four spans cost four times a scripted agent turn.
//! Sampling follows the configured sampler where a trace starts here, and a parent's decision
//! below that (what every standard sampler decides for spans of one trace).

use std::borrow::Cow;
use std::time::SystemTime;

use agentkit_core::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context as OtelContext, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

/// Where ended spans go, and which are recorded.
pub(crate) struct Pipeline {
    processor: Box<dyn SpanProcessor>,
    sampler: Sampler,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
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

impl Pipeline {
    pub(crate) fn new(
        mut processor: Box<dyn SpanProcessor>,
        sampler: Sampler,
        resource: &Resource,
    ) -> Self {
        processor.set_resource(resource);
        Self {
            processor,
            sampler,
            scope: InstrumentationScope::builder("agentkit")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// Exports what is batched, waiting for the exporter.
    pub(crate) fn flush(&self) -> OTelSdkResult {
        self.processor.force_flush()
    }

    /// Flushes and stops the processor; spans ended after this are dropped.
    pub(crate) fn shutdown(&self) -> OTelSdkResult {
        self.processor.shutdown()
    }

    /// Whether a span starting under `parent` (none: a new trace `trace_id`) is recorded.
    fn sampled(
        &self,
        parent: Option<&TraceContext>,
        trace_id: u128,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
    ) -> bool {
        match (&self.sampler, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::ParentBased(_), Some(parent)) => parent.is_sampled(),
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
                    attributes,
                    &[],
                );
                result.decision == SamplingDecision::RecordAndSample
            }
        }
    }

    /// Starts a span continuing `parent` (from a request, a queue message or an outer span of
    /// another component), or a new trace.
    pub(crate) fn start(
        &self,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: Option<&TraceContext>,
    ) -> OpenSpan {
        let trace_id = match parent {
            Some(parent) => parent.trace_id(),
            None => TraceContext::new_root().trace_id(),
        };
        let sampled = self.sampled(parent, trace_id, &name, &kind, &attributes);
        OpenSpan {
            context: span_context(trace_id, span_id(), sampled, false),
            parent: parent.map_or(SpanId::INVALID, |p| {
                SpanId::from_bytes(p.span_id().to_be_bytes())
            }),
            parent_remote: parent.is_some(),
            kind,
            name,
            start: SystemTime::now(),
            attributes: if sampled { attributes } else { Vec::new() },
            status: Status::Unset,
        }
    }

    /// Starts a span under `parent`, a span of this process, sharing its sampling decision.
    pub(crate) fn child(
        &self,
        parent: &OpenSpan,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> OpenSpan {
        let sampled = parent.sampled();
        OpenSpan {
            context: span_context(
                u128::from_be_bytes(parent.context.trace_id().to_bytes()),
                span_id(),
                sampled,
                false,
            ),
            parent: parent.context.span_id(),
            parent_remote: false,
            kind,
            name,
            start: SystemTime::now(),
            attributes: if sampled { attributes } else { Vec::new() },
            status: Status::Unset,
        }
    }

    /// Ends `span` now and hands it to the processor (when sampled).
    pub(crate) fn end(&self, span: OpenSpan) {
        if !span.sampled() {
            return;
        }
        self.processor.on_end(SpanData {
            span_context: span.context,
            parent_span_id: span.parent,
            parent_span_is_remote: span.parent_remote,
            span_kind: span.kind,
            name: span.name,
            start_time: span.start,
            end_time: SystemTime::now(),
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: span.status,
            instrumentation_scope: self.scope.clone(),
        });
    }
}

/// A span in progress.
#[derive(Debug)]
pub(crate) struct OpenSpan {
    context: SpanContext,
    parent: SpanId,
    parent_remote: bool,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

impl OpenSpan {
    pub(crate) fn sampled(&self) -> bool {
        self.context.is_sampled()
    }

    /// The trace context that work under this span continues.
    pub(crate) fn trace(&self) -> Option<TraceContext> {
        TraceContext::from_parts(
            u128::from_be_bytes(self.context.trace_id().to_bytes()),
            u64::from_be_bytes(self.context.span_id().to_bytes()),
            self.sampled(),
        )
    }

    /// The attributes, to add to in place; `None` when the span is not recorded.
    pub(crate) fn attributes_mut(&mut self) -> Option<&mut Vec<KeyValue>> {
        self.sampled().then_some(&mut self.attributes)
    }

    /// Adds attributes (dropped when the span is not recorded).
    pub(crate) fn add(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        if self.sampled() {
            self.attributes.extend(attributes);
        }
    }

    pub(crate) fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    fn pipeline(sampler: Sampler) -> (Pipeline, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let processor = Box::new(opentelemetry_sdk::trace::SimpleSpanProcessor::new(
            exporter.clone(),
        ));
        let resource = Resource::builder().with_service_name("test").build();
        (Pipeline::new(processor, sampler, &resource), exporter)
    }

    /// Starts a root (or a span under `parent`) with one child; ends both.
    fn run(pipeline: &Pipeline, parent: Option<&TraceContext>) -> Option<TraceContext> {
        let mut root = pipeline.start("root".into(), SpanKind::Server, Vec::new(), parent);
        let child = pipeline.child(&root, "child".into(), SpanKind::Internal, Vec::new());
        assert_eq!(
            child.sampled(),
            root.sampled(),
            "children share the decision"
        );
        pipeline.end(child);
        root.add([KeyValue::new("k", 1)]);
        let trace = root.trace();
        pipeline.end(root);
        trace
    }

    #[test]
    fn recorded_spans_are_parented_and_carry_their_attributes() {
        let (pipeline, exporter) = pipeline(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let inbound = TraceContext::new_root();
        let trace = run(&pipeline, Some(&inbound)).unwrap();
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
        let (off, exported) = pipeline(Sampler::AlwaysOff);
        let trace = run(&off, None).unwrap();
        assert!(!trace.is_sampled(), "the decision travels on");
        assert!(exported.get_finished_spans().unwrap().is_empty());

        let (ratio, exported) = pipeline(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(0.0),
        )));
        run(&ratio, None);
        assert!(exported.get_finished_spans().unwrap().is_empty());
        // A sampled parent wins over the root sampler; an unsampled one too.
        run(&ratio, Some(&TraceContext::new_root()));
        assert_eq!(exported.get_finished_spans().unwrap().len(), 2);
        let unsampled = TraceContext::from_parts(7, 9, false).unwrap();
        run(&ratio, Some(&unsampled));
        assert_eq!(exported.get_finished_spans().unwrap().len(), 2);

        let (all, exported) = pipeline(Sampler::TraceIdRatioBased(1.0));
        run(&all, None);
        assert_eq!(exported.get_finished_spans().unwrap().len(), 2);
    }
}
