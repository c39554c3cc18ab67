//! OTLP/HTTP export to a local receiver: the protobuf it gets carries the run's spans.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit::model::ScriptedModel;
use agentkit::{Executor, Invocation};
use axum::body::Bytes;
use axum::http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_at_an_otlp_http_receiver() {
    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let telemetry = agentkit::observe::ObserveBuilder::from_env()
        .unwrap()
        .logs(false)
        .service_name("agentkit-otlp-test")
        .otlp_endpoint(format!("http://{addr}/v1/traces"))
        .init()
        .unwrap();
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let reply = agent
        .execute(Invocation::text("What is 17 + 25?"))
        .await
        .unwrap();
    assert_eq!(reply.output, "17 + 25 = 42");
    let flushing = tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    });
    let telemetry = flushing.await.unwrap();

    let mut names = Vec::new();
    let mut service = None;
    for _ in 0..100 {
        for (headers, body) in received.lock().unwrap().iter() {
            assert_eq!(headers["content-type"], "application/x-protobuf");
            let request =
                ExportTraceServiceRequest::decode(body.as_ref()).expect("valid OTLP protobuf");
            for resource_spans in request.resource_spans {
                if let Some(resource) = resource_spans.resource {
                    for attribute in resource.attributes {
                        if attribute.key == "service.name"
                            && let Some(AnyValue::StringValue(name)) =
                                attribute.value.and_then(|v| v.value)
                        {
                            service = Some(name);
                        }
                    }
                }
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        names.push(span.name);
                    }
                }
            }
        }
        if names.iter().any(|n| n == "invoke_agent assistant") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tokio::task::spawn_blocking(move || drop(telemetry)).await);
    assert!(
        names.contains(&"invoke_agent assistant".to_owned()),
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "chat scripted").count(),
        2,
        "{names:?}"
    );
    assert!(names.contains(&"execute_tool add".to_owned()), "{names:?}");
    assert_eq!(service.as_deref(), Some("agentkit-otlp-test"));
}
