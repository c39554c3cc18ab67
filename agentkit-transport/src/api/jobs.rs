//! Job routes: submit (202), read, and follow a job's status as Server-Sent Events.

use std::collections::VecDeque;
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
use crate::events::Origin;
use crate::jobs::{JobDoc, JobQueue, JobSpec, JobStatus, LiveEvent, webhook};
use futures::StreamExt;
use futures::stream::BoxStream;

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
    /// Send the run's events (text deltas, tool calls, usage) to the job's followers
    /// (`GET /v1/jobs/{job_id}/events`) as they happen.
    #[serde(default)]
    pub(crate) stream: bool,
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
    /// `queued`, `running`, `succeeded`, `failed`, `dead` or `cancelled`.
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
        _ => Err(Error::not_found(format!("no job `{}`", shown(job_id))).into()),
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
        stream: request.stream,
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

/// Cancels a job: a queued job will not run; a running one's run is dropped by its worker as
/// soon as it hears of the cancel. Cancelling a cancelled job again answers it as it is; a job that
/// ended otherwise is a 409. A job with a `callback_url` gets its callback, as when it ends.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/cancel",
    tag = "jobs",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "The job, `cancelled`", body = JobDocSchema),
        (status = 404, description = "No such job (for this tenant)", body = ErrorBody),
        (status = 409, description = "The job had ended (succeeded, failed or dead)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let queue = queue(&state)?;
    let doc = visible(queue.as_ref(), &job_id, &principal).await?;
    let ended = |doc: &JobDoc| {
        Error::new(
            agentkit_core::ErrorKind::Conflict,
            format!("job {} has ended ({})", shown(&job_id), doc.status.as_str()),
        )
    };
    if doc.status.is_terminal() && doc.status != JobStatus::Cancelled {
        return Err(ended(&doc).into());
    }
    // The callback is queued before the job ends, as a worker ending it does; keyed by the
    // job, it is queued once whoever ends the job.
    if let Some(spec) = doc.spec.as_deref()
        && let Some(url) = &spec.callback_url
        && doc.status != JobStatus::Cancelled
    {
        queue
            .enqueue(crate::jobs::webhook_job(&job_id, spec, url))
            .await?;
    }
    let doc = queue
        .cancel(&job_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no job `{}`", shown(&job_id))))?;
    if doc.status != JobStatus::Cancelled {
        // It ended meanwhile.
        return Err(ended(&doc).into());
    }
    Ok(axum::Json(doc).into_response())
}

/// Retries a job that ended `dead` or `failed` (once what ended it is fixed): it is queued
/// again and its attempts start over; its callback, if any, is sent again when it ends. A job
/// in any other status is a 409.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/retry",
    tag = "jobs",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "The job, `queued`", body = JobDocSchema),
        (status = 404, description = "No such job (for this tenant)", body = ErrorBody),
        (status = 409, description = "The job is not dead or failed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retry_job(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let queue = queue(&state)?;
    let not_ended = |doc: &JobDoc| {
        Error::new(
            agentkit_core::ErrorKind::Conflict,
            format!(
                "job {} is {}: only a dead or failed job can be retried",
                shown(&job_id),
                doc.status.as_str()
            ),
        )
    };
    let doc = visible(queue.as_ref(), &job_id, &principal).await?;
    if !matches!(doc.status, JobStatus::Dead | JobStatus::Failed) {
        return Err(not_ended(&doc).into());
    }
    let doc = queue
        .retry(&job_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no job `{}`", shown(&job_id))))?;
    if doc.status != JobStatus::Queued {
        // It changed meanwhile (another retry ran and ended).
        return Err(not_ended(&doc).into());
    }
    Ok(axum::Json(doc).into_response())
}

/// A caller's job id as error messages show it: the first 64 characters of a longer one.
fn shown(job_id: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 64;
    match job_id.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &job_id[..cut]).into(),
        None => job_id.into(),
    }
}

/// Follows a job: a `status` event with the job document at each change, ending after the
/// terminal one. A job submitted with `"stream": true` also sends its run's events as they
/// happen (`text_delta`, `tool_call_started`, `tool_call_finished`, `usage`, as an invoke
/// streams them), from its first, whenever the follower connects; an `attempt` event says a
/// retry started and the earlier attempt's events are void. The terminal `status` comes last.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/events",
    tag = "jobs",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "`text/event-stream` of `status` events carrying the job document, and for a job submitted with `stream`, its run's events (`text_delta`, `tool_call_started`, `tool_call_finished`, `usage`, `attempt`)"),
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
    let live = match first.spec.as_deref().filter(|spec| spec.stream) {
        Some(_) => queue.follow_live(&job_id).await?,
        None => None,
    };
    let origin = Origin {
        request_id: (first.spec.as_deref())
            .map(|spec| spec.request_id.clone())
            .unwrap_or_default(),
        agent: first.agent.clone(),
        session_id: first
            .spec
            .as_deref()
            .and_then(|spec| spec.session_id.clone()),
    };
    let until = tokio::time::Instant::now() + state.request_timeout;
    let statuses = status_changes(queue, job_id, first, until).map(Followed::Status);
    let live_open = live.is_some();
    let merged: BoxStream<'static, Followed> = match live {
        Some(live) => Box::pin(futures::stream::select(
            statuses.chain(futures::stream::once(async { Followed::StatusEnded })),
            live.map(Followed::Live)
                .chain(futures::stream::once(async { Followed::LiveEnded })),
        )),
        None => Box::pin(statuses),
    };
    let follow = Follow {
        merged,
        origin,
        live_open,
        held: None,
        grace: None,
        attempt: 0,
        ended: 0,
        out: VecDeque::new(),
        finished: false,
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(event) = f.out.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(event), f));
            }
            if f.finished {
                return None;
            }
            let next = match f.grace {
                // The end marker is late (a worker that died, a live log that could not be
                // written): the document has the whole reply anyway.
                Some(grace) => {
                    (tokio::time::timeout_at(grace, f.merged.next()).await).unwrap_or_default()
                }
                None => f.merged.next().await,
            };
            f.step(next);
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// How long a follower waits, once the job ended, for the rest of its live events.
const LIVE_GRACE: Duration = Duration::from_secs(2);

/// What a job's follower hears of: its document changed, an entry of its live log, or the
/// end of either.
enum Followed {
    Status(JobDoc),
    StatusEnded,
    Live(agentkit_core::Result<LiveEvent>),
    LiveEnded,
}

/// A follower of a job (see [`job_events`]).
struct Follow {
    merged: BoxStream<'static, Followed>,
    origin: Origin,
    /// Whether live events may still come.
    live_open: bool,
    /// The job's terminal document, held back until its last attempt's live events are out
    /// (its end marker) or [`LIVE_GRACE`] is up.
    held: Option<JobDoc>,
    grace: Option<tokio::time::Instant>,
    /// The attempt whose live events were last sent.
    attempt: u32,
    /// The last attempt whose end marker came.
    ended: u32,
    out: VecDeque<Event>,
    finished: bool,
}

impl Follow {
    fn step(&mut self, next: Option<Followed>) {
        match next {
            // Held back for the rest of its live events, unless none can come: a cancelled
            // job's run was dropped, whatever it had written is in.
            Some(Followed::Status(doc))
                if doc.status.is_terminal()
                    && doc.status != JobStatus::Cancelled
                    && self.live_open
                    && self.ended < doc.attempts =>
            {
                self.grace = Some(tokio::time::Instant::now() + LIVE_GRACE);
                self.held = Some(doc);
            }
            Some(Followed::Status(doc)) => {
                self.finished = doc.status.is_terminal();
                self.out.push_back(status_event(&doc));
            }
            Some(Followed::Live(Ok(entry))) => {
                if entry.attempt > self.attempt {
                    if self.attempt > 0 {
                        self.out.push_back(
                            Event::default()
                                .event("attempt")
                                .data(serde_json::json!({"attempt": entry.attempt}).to_string()),
                        );
                    }
                    self.attempt = entry.attempt;
                }
                match entry.event {
                    Some(event) => {
                        let (name, data) = crate::events::encode(event, &self.origin);
                        self.out
                            .push_back(Event::default().event(name).data(data.to_string()));
                    }
                    // An end marker may come before the terminal document, or after.
                    None => {
                        self.ended = self.ended.max(entry.attempt);
                        if self
                            .held
                            .as_ref()
                            .is_some_and(|doc| self.ended >= doc.attempts)
                        {
                            self.release();
                        }
                    }
                }
            }
            Some(Followed::Live(Err(error))) => {
                tracing::warn!(%error, "cannot read a job's live events");
            }
            Some(Followed::LiveEnded) => {
                self.live_open = false;
                self.release();
            }
            // After the terminal document: its live events may still be coming.
            Some(Followed::StatusEnded) if self.held.is_some() && self.live_open => {}
            // The status follow ended without a terminal document (its deadline, or the job
            // is gone), or the grace is up, or both ended.
            Some(Followed::StatusEnded) | None => {
                self.release();
                self.finished = true;
            }
        }
    }

    /// Sends the held terminal document, and ends.
    fn release(&mut self) {
        if let Some(doc) = self.held.take() {
            self.out.push_back(status_event(&doc));
            self.finished = true;
        }
    }
}

fn status_event(doc: &JobDoc) -> Event {
    let data = serde_json::to_string(doc).unwrap_or_default();
    Event::default().event("status").data(data)
}

/// The job's document at each change of status or attempts, from `first`, ending after the
/// terminal one, when the job is gone, or at `until`.
fn status_changes(
    queue: Arc<dyn JobQueue>,
    job_id: String,
    first: JobDoc,
    until: tokio::time::Instant,
) -> BoxStream<'static, JobDoc> {
    struct Changes {
        queue: Arc<dyn JobQueue>,
        job_id: String,
        last: Option<(JobStatus, u32)>,
        next: Option<JobDoc>,
        until: tokio::time::Instant,
        done: bool,
    }
    let changes = Changes {
        queue,
        job_id,
        last: None,
        next: Some(first),
        until,
        done: false,
    };
    Box::pin(futures::stream::unfold(changes, |mut f| async move {
        if f.done {
            return None;
        }
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(doc) = f.next.take()
                && f.last != Some((doc.status, doc.attempts))
            {
                f.done = doc.status.is_terminal();
                f.last = Some((doc.status, doc.attempts));
                return Some((doc, f));
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
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkit_core::AgentEvent;

    fn follow() -> Follow {
        Follow {
            merged: Box::pin(futures::stream::pending()),
            origin: Origin {
                request_id: "r".into(),
                agent: "a".into(),
                session_id: None,
            },
            live_open: true,
            held: None,
            grace: None,
            attempt: 0,
            ended: 0,
            out: VecDeque::new(),
            finished: false,
        }
    }

    fn doc(status: JobStatus, attempts: u32) -> JobDoc {
        let mut doc = JobDoc::queued("j".into(), JobSpec::default());
        doc.status = status;
        doc.attempts = attempts;
        doc
    }

    fn text(attempt: u32) -> Followed {
        Followed::Live(Ok(LiveEvent::event(
            attempt,
            AgentEvent::TextDelta { text: "x".into() },
        )))
    }

    #[test]
    fn the_terminal_status_goes_at_once_when_the_end_marker_came_first() {
        let mut f = follow();
        f.step(Some(Followed::Status(doc(JobStatus::Running, 1))));
        f.step(Some(text(1)));
        f.step(Some(Followed::Live(Ok(LiveEvent::end(1)))));
        assert!(!f.finished);
        f.step(Some(Followed::Status(doc(JobStatus::Succeeded, 1))));
        assert!(f.finished && f.held.is_none(), "sent at once, no grace");
        assert_eq!(f.out.len(), 3);
    }

    #[test]
    fn the_terminal_status_waits_for_the_last_attempts_events() {
        let mut f = follow();
        f.step(Some(text(1)));
        f.step(Some(Followed::Live(Ok(LiveEvent::end(1)))));
        f.step(Some(Followed::Status(doc(JobStatus::Succeeded, 2))));
        f.step(Some(Followed::StatusEnded));
        assert!(
            !f.finished && f.held.is_some(),
            "attempt 2's events are to come"
        );
        f.step(Some(text(2)));
        f.step(Some(Followed::Live(Ok(LiveEvent::end(2)))));
        assert!(f.finished);
        // text, attempt, text, status
        assert_eq!(f.out.len(), 4);
    }

    #[test]
    fn a_cancelled_job_ends_the_stream_at_once() {
        let mut f = follow();
        f.step(Some(text(1)));
        f.step(Some(Followed::Status(doc(JobStatus::Cancelled, 1))));
        assert!(f.finished, "no end marker is waited for");
        assert_eq!(f.out.len(), 2);
    }

    #[test]
    fn without_live_events_the_terminal_status_ends_the_stream() {
        let mut f = follow();
        f.live_open = false;
        f.step(Some(Followed::Status(doc(JobStatus::Failed, 1))));
        assert!(f.finished);
        assert_eq!(f.out.len(), 1);
    }
}
