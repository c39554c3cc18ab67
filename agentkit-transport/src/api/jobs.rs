//! Job routes: submit (202), read, and follow a job's status as Server-Sent Events.

use std::sync::Arc;
use std::time::Duration;

use agentkit_core::{Context, Error};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::dto::{ErrorBody, Input};
use crate::api::{ApiJson, ApiPath, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::jobs::{JobDoc, JobQueue, JobSpec, webhook};

/// `POST /v1/agents/{agent}/jobs`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobRequest {
    /// The input: text or messages.
    pub(crate) input: Input,
    /// Run as a turn of this session.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
    /// Where to POST the job document, signed, when the job ends.
    #[serde(default)]
    pub(crate) callback_url: Option<String>,
    /// Deduplicates submissions (also accepted as the `Idempotency-Key` header); keys starting
    /// with `agentkit:` are reserved.
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
    /// Caller metadata (the agent's prompt variables).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
}

/// The answer to a submission.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JobAccepted {
    /// The job id (an existing job's for a repeated idempotency key).
    pub(crate) job_id: String,
    /// Its status now: `queued` for a new job.
    pub(crate) status: String,
}

/// A job document, as `GET /v1/jobs/{job_id}` answers.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JobDocSchema {
    /// The job id.
    pub(crate) job_id: String,
    /// The agent.
    pub(crate) agent: String,
    /// `queued`, `running`, `succeeded`, `failed` or `dead`.
    pub(crate) status: String,
    /// How many times a worker started it.
    pub(crate) attempts: u32,
    /// The result, once succeeded: `output`, `messages`, `usage`, `cost_usd`, `tool_calls`.
    #[schema(value_type = Option<Object>)]
    pub(crate) result: Option<serde_json::Value>,
    /// The last error: `code` and `message`.
    #[schema(value_type = Option<Object>)]
    pub(crate) error: Option<serde_json::Value>,
}

fn queue(state: &AppState) -> Result<&Arc<dyn JobQueue>, ApiError> {
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "this service has no job queue",
        )
    })
}

/// The job, if it exists and belongs to the caller's tenant (else 404, never another's job).
async fn visible(
    queue: &dyn JobQueue,
    job_id: &str,
    principal: &Principal,
) -> Result<JobDoc, ApiError> {
    mine(queue.get(job_id).await?, job_id, principal)
}

/// `doc` if it belongs to the caller's tenant (else 404, never another's job).
fn mine(doc: Option<JobDoc>, job_id: &str, principal: &Principal) -> Result<JobDoc, ApiError> {
    match doc {
        Some(doc) if doc.tenant() == Some(principal.tenant.as_str()) => Ok(doc),
        _ => Err(Error::not_found(format!("no job `{job_id}`")).into()),
    }
}

/// Submits a job: answers 202 at once; the work runs on a worker.
#[utoipa::path(
    post,
    path = "/v1/agents/{agent}/jobs",
    tag = "jobs",
    params(
        ("agent" = String, Path, description = "The agent's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Deduplicates submissions within the retention window"),
    ),
    request_body = JobRequest,
    responses(
        (status = 202, description = "Queued (or, for a repeated idempotency key, the existing job)", body = JobAccepted),
        (status = 400, description = "Malformed request, empty input or a bad callback URL", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for another request", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "The caller may not use this agent", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 503, description = "The queue is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(cx): Extension<Context>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiPath(agent): ApiPath<String>,
    ApiJson(request): ApiJson<JobRequest>,
) -> Result<Response, ApiError> {
    state.agent(&agent, &principal)?;
    let queue = queue(&state)?;
    let idempotency_key = crate::api::idempotency_key(request.idempotency_key, &headers)?;
    if let Some(key) = &idempotency_key {
        crate::jobs::check_caller_key(key)?;
    }
    if let Some(url) = &request.callback_url {
        if !state.accept_callbacks {
            return Err(Error::invalid_input(
                "this service sends no webhooks, so a job cannot have a callback_url \
                 (its operators can turn them on with a webhook secret)",
            )
            .into());
        }
        webhook::validate_callback(url, state.allow_private_callbacks)?;
    }
    if let Some(session) = &request.session_id {
        crate::api::stored_session_id(&agent, session)?;
    }
    let input = request.input.into_messages();
    let spec = JobSpec {
        agent,
        input,
        history: Vec::new(),
        session_id: request.session_id,
        metadata: request.metadata,
        tenant: principal.tenant.clone(),
        callback_url: request.callback_url,
        idempotency_key,
        request_id: cx.request_id().to_owned(),
        traceparent: cx.trace().map(|t| t.traceparent()),
    };
    // A key already taken names a job; it must be this request's, not another's.
    let (enqueued, existing) = crate::jobs::enqueue_once(queue.as_ref(), spec).await?;
    let status = if enqueued.created {
        "queued".to_owned()
    } else {
        let doc = mine(existing, &enqueued.job_id, &principal)?;
        doc.status.as_str().to_owned()
    };
    let location = format!("/v1/jobs/{}", enqueued.job_id);
    let body = JobAccepted {
        job_id: enqueued.job_id,
        status,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response())
}

/// Reads a job.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "The job", body = JobDocSchema),
        (status = 404, description = "No such job (for this tenant)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_job(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let queue = queue(&state)?;
    let doc = visible(queue.as_ref(), &job_id, &principal).await?;
    Ok(axum::Json(doc).into_response())
}

/// Follows a job: a `status` event with the job document at each change, ending after the
/// terminal one.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/events",
    tag = "jobs",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "`text/event-stream` of `status` events carrying the job document"),
        (status = 404, description = "No such job (for this tenant)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn job_events(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let queue = queue(&state)?.clone();
    let first = visible(queue.as_ref(), &job_id, &principal).await?;
    let until = tokio::time::Instant::now() + state.request_timeout;
    struct Follow {
        queue: Arc<dyn JobQueue>,
        job_id: String,
        last: Option<JobDoc>,
        next: Option<JobDoc>,
        until: tokio::time::Instant,
        done: bool,
    }
    let follow = Follow {
        queue,
        job_id,
        last: None,
        next: Some(first),
        until,
        done: false,
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(doc) = f.next.take() {
                let changed = f
                    .last
                    .as_ref()
                    .is_none_or(|last| last.status != doc.status || last.attempts != doc.attempts);
                if changed {
                    f.done = doc.status.is_terminal();
                    let data = serde_json::to_string(&doc).unwrap_or_default();
                    f.last = Some(doc);
                    return Some((
                        Ok::<_, std::convert::Infallible>(
                            Event::default().event("status").data(data),
                        ),
                        f,
                    ));
                }
            }
            if tokio::time::Instant::now() >= f.until {
                return None;
            }
            // At once when the job ends, else as it stands after `pause`.
            match f.queue.until_ended(&f.job_id, pause).await {
                Ok(Some(doc)) => f.next = Some(doc),
                // Gone (its retention ran out): nothing more will come.
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(job_id = %f.job_id, %error, "cannot read the job while following it");
                    tokio::time::sleep(pause).await;
                }
            }
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
