//! OTLP/HTTP export through reqwest, on a small runtime of its own: the batch span processor
//! exports from a plain thread, where an async HTTP client has no reactor.

use std::collections::HashMap;
use std::time::Duration;

use agentkit_core::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};

/// An HTTP client for the exporter: requests run on a dedicated single-threaded runtime.
#[derive(Clone, Debug)]
pub(crate) struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> std::result::Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let mut outgoing = client
                .request(parts.method, parts.uri.to_string())
                .body(body);
            for (name, value) in &parts.headers {
                outgoing = outgoing.header(name, value);
            }
            let response = outgoing.send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            let mut answer = Response::new(body);
            *answer.status_mut() = status;
            Ok::<_, reqwest::Error>(answer)
        });
        Ok(task.await??)
    }
}

/// The runtime thread the exporter's requests run on; stops when dropped.
pub(crate) struct ExportRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportRuntime {
    pub(crate) fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Error::internal(format!("cannot start the telemetry export runtime: {e}"))
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("agentkit-otlp".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| {
                Error::internal(format!("cannot start the telemetry export thread: {e}"))
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An OTLP/HTTP (protobuf) span exporter to `endpoint` (the full `/v1/traces` URL).
pub(crate) fn exporter(
    runtime: &ExportRuntime,
    endpoint: &str,
    headers: HashMap<String, String>,
) -> Result<SpanExporter> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::internal(format!("cannot build the OTLP HTTP client: {e}")))?;
    SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient {
            client,
            runtime: runtime.handle.clone(),
        })
        .with_endpoint(endpoint)
        .with_protocol(Protocol::HttpBinary)
        .with_headers(headers)
        .build()
        .map_err(|e| Error::invalid_input(format!("cannot build the OTLP exporter: {e}")))
}
