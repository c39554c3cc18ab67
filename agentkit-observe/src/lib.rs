//! agentkit observability: what an operator needs to answer "what did request X do, what did it
//! cost, what failed, and how is agent Y doing right now" from agentkit's own output.
//!
//! [`init`] reads the standard environment and installs:
//!
//! - **JSON-lines logs** (or pretty ones) through `tracing-subscriber`: the HTTP edge writes one
//!   line per request and workers one line per job, with `request_id`, `trace_id`, `span_id`,
//!   `tenant`, `agent`, `agent_version`, `session_id`, `model`, `tokens_in`, `tokens_out`,
//!   `tool_calls`, `tool_names`, `cost_usd`, `latency_ms`, `outcome`, `error_code`. Prompt and
//!   completion text only with content capture on; credentials never.
//! - **OpenTelemetry traces** exported over OTLP/HTTP (protobuf), named and attributed by the
//!   GenAI semantic conventions: `invoke_agent {agent}`, `chat {model}`, `execute_tool {tool}`,
//!   under the HTTP request's span, continuing inbound `traceparent`s and queue messages.
//! - **Prometheus metrics** rendered by [`Telemetry::metrics`] for `/metrics`.
//!
//! The request path only records: ids, monotonic times, the names and counts a span, a log
//! line or a metric will carry. A telemetry thread per [`Telemetry`] builds the spans, writes
//! the run log lines (through the subscriber that was current where each run ended) and
//! observes the metrics; spans are exported from a thread of their own. Neither a slow log
//! writer nor a collector is on a request's path, and a collector that hangs costs spans
//! only. What does not fit in the queues is dropped and counted
//! (`agentkit_telemetry_dropped_total`), never waited for. [`Telemetry::flush`], and
//! rendering the metrics, wait for what was recorded before.
//!
//! ```no_run
//! # fn main() -> agentkit_core::Result<()> {
//! let telemetry = agentkit_observe::init()?; // flushes spans when dropped
//! let metrics = telemetry.metrics_renderer(); // hand to the API's /metrics
//! # let _ = metrics;
//! # Ok(())
//! # }
//! ```
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `RUST_LOG` | log filter | `info` |
//! | `AGENTKIT_LOG_FORMAT` | `json` or `pretty` | `json` |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector base URL (`/v1/traces` is appended) | traces off |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | full traces URL (wins over the above) | |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (the only one supported) | `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_HEADERS` | `key=value,...` sent to the collector | none |
//! | `OTEL_SERVICE_NAME` | `service.name` | `agentkit` |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `key=value,...` | none |
//! | `OTEL_TRACES_SAMPLER` (+ `_ARG`) | `always_on`, `always_off`, `traceidratio`, `parentbased_*` | `parentbased_always_on` |
//! | `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | spans per export | 512 |
//! | `OTEL_BSP_SCHEDULE_DELAY` | milliseconds a span waits at most for its batch | 5000 |
//! | `OTEL_BSP_MAX_QUEUE_SIZE` | records waiting for the telemetry thread (past it, records are dropped and counted, never waited for) | 8192 |
//! | `OTEL_SEMCONV_STABILITY_OPT_IN` | `gen_ai/dup` also emits the older attribute names | latest names |
//! | `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` | `true` records prompt and completion text | off |

mod background;
mod fnv;
mod json;
mod metrics;
mod observer;
mod otlp;
pub mod semconv;
mod spans;
mod text;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::observer::Observer;
use agentkit_core::{Error, Result};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SpanExporter};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

pub use json::JsonLines;
pub use metrics::MetricsHandle;
pub use observer::AgentObserver;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// Configures and installs telemetry; [`from_env`](Self::from_env) reads the standard
/// environment, the setters override it.
#[must_use]
pub struct ObserveBuilder {
    service_name: String,
    resource: Vec<KeyValue>,
    log_format: LogFormat,
    log_filter: String,
    logs: bool,
    writer: Option<BoxMakeWriter>,
    otlp_endpoint: Option<String>,
    otlp_headers: HashMap<String, String>,
    protocol: Option<String>,
    sampler: Sampler,
    /// What the sampler decides for a span starting a trace, when known without asking it.
    root_decision: Option<bool>,
    /// The exporter, and whether it takes spans as they come rather than in batches.
    exporter: Option<(Box<dyn spans::Export>, bool)>,
    batching: spans::Batching,
    queue_size: usize,
    names: &'static [semconv::Names],
    capture: bool,
    metrics: bool,
    global: bool,
}

impl std::fmt::Debug for ObserveBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveBuilder")
            .field("service_name", &self.service_name)
            .field("log_format", &self.log_format)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("capture", &self.capture)
            .finish_non_exhaustive()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A positive whole number from `name`, or `default` when unset.
fn number(name: &str, default: usize) -> Result<usize> {
    match var(name) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "{name} must be a positive whole number, not {text:?}"
                ))
            }),
    }
}

fn pairs(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler> {
    let ratio = || -> Result<f64> {
        match arg {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    Error::invalid_input("OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1")
                }),
        }
    };
    Ok(
        match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
            }
            other => {
                return Err(Error::invalid_input(format!(
                    "unsupported OTEL_TRACES_SAMPLER {other:?}"
                )));
            }
        },
    )
}

impl ObserveBuilder {
    /// Everything from the environment (see the crate documentation).
    pub fn from_env() -> Result<Self> {
        let log_format = match var("AGENTKIT_LOG_FORMAT")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("json") => LogFormat::Json,
            Some("pretty" | "text") => LogFormat::Pretty,
            Some(other) => {
                return Err(Error::invalid_input(format!(
                    "AGENTKIT_LOG_FORMAT must be json or pretty, not {other:?}"
                )));
            }
        };
        let otlp_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        });
        let resource = var("OTEL_RESOURCE_ATTRIBUTES")
            .map(|text| {
                pairs(&text)
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "agentkit".to_owned()),
            resource,
            log_format,
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            logs: true,
            writer: None,
            otlp_endpoint,
            otlp_headers: var("OTEL_EXPORTER_OTLP_HEADERS")
                .map(|h| pairs(&h).into_iter().collect())
                .unwrap_or_default(),
            protocol: var("OTEL_EXPORTER_OTLP_PROTOCOL"),
            root_decision: match var("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
                None | Some("always_on" | "parentbased_always_on") => Some(true),
                Some("always_off" | "parentbased_always_off") => Some(false),
                Some(_) => None,
            },
            sampler: sampler(
                var("OTEL_TRACES_SAMPLER").as_deref(),
                var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
            )?,
            exporter: None,
            batching: spans::Batching {
                size: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?,
                delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)? as u64),
            },
            queue_size: number("OTEL_BSP_MAX_QUEUE_SIZE", 8192)?,
            names: semconv::from_opt_in(var("OTEL_SEMCONV_STABILITY_OPT_IN").as_deref()),
            capture: var("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            metrics: true,
            global: true,
        })
    }

    /// The `service.name` resource attribute.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// JSON or pretty log lines.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// The log filter (`RUST_LOG` syntax).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Where log lines go (default stdout); for tests and log shippers.
    pub fn log_writer(mut self, writer: BoxMakeWriter) -> Self {
        self.writer = Some(writer);
        self
    }

    /// Whether to install the log subscriber at all (default yes).
    pub fn logs(mut self, on: bool) -> Self {
        self.logs = on;
        self
    }

    /// Exports spans over OTLP/HTTP to this full traces URL.
    pub fn otlp_endpoint(mut self, url: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(url.into());
        self
    }

    /// Exports spans to `exporter` as soon as the telemetry thread has built them (within
    /// about a millisecond of their end; what one pass of that thread builds goes in one
    /// export), e.g. an in-memory exporter in tests; replaces OTLP.
    pub fn span_exporter(mut self, exporter: impl SpanExporter + 'static) -> Self {
        self.exporter = Some((Box::new(exporter), true));
        self
    }

    /// Exports spans to `exporter` in batches, as OTLP does (see
    /// [`span_batches`](Self::span_batches)).
    pub fn span_exporter_batched(mut self, exporter: impl SpanExporter + 'static) -> Self {
        self.exporter = Some((Box::new(exporter), false));
        self
    }

    /// Batches of at most `size` spans, each sent once full or once its oldest span has
    /// waited `delay` (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512, and
    /// `OTEL_BSP_SCHEDULE_DELAY`, default 5 s). Up to [`queue_size`](Self::queue_size) spans
    /// wait for an exporter that is behind; later batches are dropped and counted
    /// ([`Telemetry::dropped`]).
    pub fn span_batches(mut self, size: usize, delay: Duration) -> Self {
        self.batching = spans::Batching {
            size: size.max(1),
            delay,
        };
        self
    }

    /// How many finished spans and run records may wait for the telemetry thread, and how many
    /// spans for the exporter (`OTEL_BSP_MAX_QUEUE_SIZE`, default 8,192). A request that finds the queue full does
    /// not wait: its record is dropped and counted ([`Telemetry::dropped`],
    /// `agentkit_telemetry_dropped_total`).
    pub fn queue_size(mut self, records: usize) -> Self {
        self.queue_size = records.max(1);
        self
    }

    /// The sampler.
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self.root_decision = None;
        self
    }

    /// Records prompt and completion text in spans and request logs.
    pub fn capture_content(mut self, on: bool) -> Self {
        self.capture = on;
        self
    }

    /// Whether to keep Prometheus metrics (default yes).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Whether to install the observer for every agent and the log subscriber process-wide
    /// (default yes; tests of several configurations in one process turn it off).
    pub fn global(mut self, on: bool) -> Self {
        self.global = on;
        self
    }

    /// Installs what was configured and returns the guard that flushes spans when dropped.
    pub fn init(self) -> Result<Telemetry> {
        if let Some(protocol) = &self.protocol
            && protocol != "http/protobuf"
        {
            return Err(Error::invalid_input(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {protocol:?} is not supported; use http/protobuf"
            )));
        }
        let mut runtime = None;
        let exporter: Option<(Box<dyn spans::Export>, spans::Batching)> =
            match (self.exporter, &self.otlp_endpoint) {
                (Some((exporter, prompt)), _) => Some((
                    exporter,
                    if prompt {
                        spans::Batching::PROMPT
                    } else {
                        self.batching
                    },
                )),
                (None, Some(endpoint)) => {
                    let export = otlp::ExportRuntime::start()?;
                    let exporter = otlp::exporter(&export, endpoint, self.otlp_headers.clone())?;
                    runtime = Some(export);
                    Some((Box::new(exporter), self.batching))
                }
                (None, None) => None,
            };
        let sampling = exporter
            .as_ref()
            .map(|_| spans::Sampling::new(self.sampler.clone()).deciding_roots(self.root_decision));
        // Records the queue cannot take and spans the exporter cannot take, counted together.
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let batch = exporter
            .map(|(exporter, batching)| {
                let resource = Resource::builder()
                    .with_service_name(self.service_name.clone())
                    .with_attributes(self.resource.clone())
                    .build();
                spans::Batch::new(
                    exporter,
                    batching,
                    &resource,
                    self.queue_size,
                    dropped.clone(),
                )
            })
            .transpose()
            .map_err(|e| Error::internal(format!("cannot start the span export thread: {e}")))?;
        let metrics = self.metrics.then(|| Arc::new(metrics::Metrics::new()));
        // The request path's clock calibrates on its first reading; take it here, not there.
        let _ = spans::now();
        let background = if batch.is_some() || self.logs || metrics.is_some() {
            let builder = observer::Builder {
                names: self.names,
                scope: spans::scope(),
                batch,
                clock: spans::Clock::now(),
                metrics: metrics.clone().map(observer::Counting::new),
            };
            Some(
                background::Background::start(self.queue_size, builder, dropped).map_err(|e| {
                    Error::internal(format!("cannot start the telemetry thread: {e}"))
                })?,
            )
        } else {
            None
        };
        let observer = AgentObserver {
            inner: Arc::new(observer::Inner {
                sampling,
                queue: background.as_ref().map(|b| b.queue().clone()),
                metrics: metrics.clone(),
                capture: self.capture,
                log_runs: self.logs,
                labels: observer::Labels::default(),
            }),
        };
        if self.logs && self.global {
            let filter = EnvFilter::try_new(&self.log_filter).map_err(|e| {
                Error::invalid_input(format!("invalid log filter {:?}: {e}", self.log_filter))
            })?;
            let writer = self
                .writer
                .unwrap_or_else(|| BoxMakeWriter::new(std::io::stdout));
            let installed = match self.log_format {
                LogFormat::Json => tracing_subscriber::fmt()
                    .event_format(JsonLines)
                    .with_env_filter(filter)
                    .with_writer(writer)
                    .try_init(),
                LogFormat::Pretty => tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(writer)
                    .try_init(),
            };
            if installed.is_err() {
                eprintln!("agentkit-observe: a log subscriber was already installed; keeping it");
            }
        }
        if self.global && !agentkit_core::observer::set_global_observer(Arc::new(observer.clone()))
        {
            tracing::warn!("an agentkit observer was already installed; keeping it");
        }
        Ok(Telemetry {
            observer,
            metrics: metrics.map(|metrics| MetricsHandle {
                metrics,
                pending: background.as_ref().map(|b| b.queue().clone()),
            }),
            background,
            _runtime: runtime,
        })
    }
}

/// Installs telemetry from the environment; see the crate documentation.
pub fn init() -> Result<Telemetry> {
    ObserveBuilder::from_env()?.init()
}

/// What [`init`] installed, and its telemetry thread. Dropping it exports what is left and
/// shuts down the span exporter; spans and run logs recorded afterwards are dropped.
pub struct Telemetry {
    observer: AgentObserver,
    metrics: Option<MetricsHandle>,
    background: Option<background::Background<observer::Records>>,
    /// Dropped after the thread that exports through it.
    _runtime: Option<otlp::ExportRuntime>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("observer", &self.observer)
            .field("tracing", &self.observer.inner.sampling.is_some())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The observer, for agents, APIs and workers built without the global one.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(self.observer.clone())
    }

    /// The metrics, when kept.
    pub fn metrics(&self) -> Option<MetricsHandle> {
        self.metrics.clone()
    }

    /// `watch`, its alerts also kept as the gauge `agentkit_alerts_firing{watch,rule}` (1
    /// while firing, 0 once resolved) when metrics are on, so that dashboards and Prometheus
    /// alert rules see them beside the log lines.
    pub fn report_alerts(
        &self,
        watch: agentkit_core::executor::HealthWatch,
    ) -> agentkit_core::executor::HealthWatch {
        let Some(metrics) = self.observer.inner.metrics.clone() else {
            return watch;
        };
        watch.on_change(move |alert| {
            let labels = metrics::AlertLabels {
                watch: alert.watch.clone(),
                rule: alert.rule.as_str(),
            };
            metrics
                .alerts
                .get_or_create(&labels)
                .set(i64::from(alert.firing));
        })
    }

    /// A renderer of the Prometheus text, for `Api::builder().metrics(...)`.
    pub fn metrics_renderer(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let metrics = self.metrics.clone();
        Arc::new(move || {
            metrics
                .as_ref()
                .map(MetricsHandle::render)
                .unwrap_or_default()
        })
    }

    /// Writes the run log lines and exports the spans finished so far, waiting up to ten
    /// seconds for the telemetry thread and the exporter.
    pub fn flush(&self) {
        if let Some(background) = &self.background
            && !background.queue().flush(Duration::from_secs(10))
        {
            eprintln!("agentkit-observe: flushing telemetry took longer than ten seconds");
        }
    }

    /// Spans, run logs and metric observations dropped because the telemetry thread fell
    /// behind by more than the queue holds (a log pipe nobody reads, a collector that hangs an
    /// export, a starved CPU), or had stopped. Zero in a healthy process; also exported as
    /// `agentkit_telemetry_dropped_total`.
    pub fn dropped(&self) -> u64 {
        self.background
            .as_ref()
            .map_or(0, |background| background.queue().dropped())
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(background) = &mut self.background {
            background.stop();
        }
    }
}
