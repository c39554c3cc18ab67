//! The agent loop, written once for plain and streaming runs (the [`Sink`] decides).

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::agent::Agent;
use crate::executor::{AgentEvent, Invocation, Reply};
use crate::message::{Message, Role, ToolCall, ToolResult, Usage};
use crate::model::{
    ModelEvent, ModelRequest, ModelResponse, ResponseBuilder, ResponseFormat, ToolChoice,
};
use crate::observer::{
    self, CallScope, ModelCallStart, RunEnd, RunReport, RunScope, RunStart, RunSummary,
};
use crate::tool::{JobAttempt, JobId, Ledger, ToolCallRecord};
use crate::trace::TraceContext;
use crate::{Context, Error, ErrorKind, Result};

/// Where a run's events go: nowhere for [`Agent::execute`], a bounded channel for streams.
pub(crate) trait Sink: Send {
    /// Whether anyone listens; when not, the loop calls `complete` instead of `stream`.
    const ACTIVE: bool;

    /// Delivers one event, waiting while the consumer is slow; an error when it went away.
    fn emit(&mut self, event: AgentEvent) -> impl Future<Output = Result<()>> + Send;
}

/// The sink of a plain run.
pub(crate) struct Silent;

impl Sink for Silent {
    const ACTIVE: bool = false;

    async fn emit(&mut self, _: AgentEvent) -> Result<()> {
        Ok(())
    }
}

/// Totals of a run, kept outside the loop so they survive its failure (for observers).
#[derive(Debug, Default)]
pub(crate) struct RunState {
    pub(crate) usage: Usage,
    pub(crate) cost: f64,
    pub(crate) records: Vec<ToolCallRecord>,
    pub(crate) steps: u32,
}

/// A job's progress through its run, as kept in the job's ledger (see [`JobId`]).
#[derive(serde::Deserialize)]
struct Progress {
    /// The run's messages after its input.
    messages: Vec<Message>,
    steps: u32,
    usage: Usage,
    cost_usd: f64,
}

/// [`Progress`] as written, borrowing the run's messages.
#[derive(serde::Serialize)]
struct ProgressRef<'a> {
    messages: &'a [Message],
    steps: u32,
    usage: Usage,
    cost_usd: f64,
}

/// Where a job's run keeps its progress: the job's ledger, under `{job}:progress`.
struct Checkpoints {
    ledger: Ledger,
    key: String,
}

impl Checkpoints {
    /// The checkpoints of the job `cx` runs, if it runs one with a ledger.
    fn of(cx: &Context) -> Option<Self> {
        let job = cx.extension::<JobId>()?;
        let ledger = cx.extension::<Ledger>()?.clone();
        Some(Self {
            ledger,
            key: format!("{}:progress", job.0),
        })
    }

    async fn load(&self) -> Result<Option<Progress>> {
        let recorded = self.ledger.0.recorded(&self.key).await.map_err(|e| {
            Error::unavailable(format!(
                "cannot read the job's recorded progress ({e}); not running it again blind"
            ))
        })?;
        recorded
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| {
                    Error::internal(format!("the job's recorded progress is not valid: {e}"))
                })
            })
            .transpose()
    }

    async fn save(&self, messages: &[Message], state: &RunState) -> Result<()> {
        let progress = ProgressRef {
            messages,
            steps: state.steps,
            usage: state.usage,
            cost_usd: state.cost,
        };
        let text = serde_json::to_string(&progress)
            .map_err(|e| Error::internal(format!("cannot encode the job's progress: {e}")))?;
        self.ledger
            .0
            .record(&self.key, &text)
            .await
            .map_err(|e| Error::unavailable(format!("cannot record the job's progress ({e})")))
    }
}

impl Agent {
    /// Checks the input and renders the system prompt: everything that can fail before a run
    /// starts, so streams can still answer with a plain error.
    pub(crate) fn prepare(&self, invocation: &Invocation) -> Result<Option<Arc<str>>> {
        let empty = invocation
            .input
            .iter()
            .all(|m| m.payload_len() == 0 || m.content.is_empty());
        if empty {
            return Err(Error::invalid_input("the input is empty"));
        }
        Message::check_conversation(&invocation.history, &invocation.input)?;
        self.inner
            .prompt
            .as_ref()
            .map(|p| p.render(&invocation.metadata))
            .transpose()
    }

    /// Runs to the end without streaming.
    pub(crate) async fn run(&self, invocation: Invocation) -> Result<Reply> {
        let system = self.prepare(&invocation)?;
        self.run_observed(invocation, system, None, &mut Silent, RunState::default())
            .await
    }

    /// One run, watched by the observer, bounded by the deadline and cancellation.
    pub(crate) async fn run_observed<S: Sink>(
        &self,
        mut invocation: Invocation,
        system: Option<Arc<str>>,
        format: Option<&ResponseFormat>,
        sink: &mut S,
        state: RunState,
    ) -> Result<Reply> {
        let inner = &*self.inner;
        if let Some(timeout) = inner.limits.run_timeout {
            invocation.context = invocation.context.with_timeout(timeout);
        }
        let observer = inner
            .observer
            .as_ref()
            .or_else(|| observer::global_observer())
            .filter(|o| o.enabled());
        let scope = observer.map(|o| {
            o.start_run(&RunStart {
                agent: &inner.name,
                agent_version: &inner.version,
                model: inner.model.id(),
                provider: inner.model.provider(),
                context: &invocation.context,
            })
        });
        let mut run = Observed {
            scope,
            state,
            agent: self,
        };
        let report = invocation.context.extension::<RunReport>().cloned();
        let tenant = report
            .as_ref()
            .and(invocation.context.tenant())
            .map(str::to_owned);
        let session_id = report
            .as_ref()
            .and(invocation.context.session_id())
            .map(str::to_owned);
        let started = report.as_ref().map(|_| std::time::Instant::now());
        let Observed { scope, state, .. } = &mut run;
        let outcome = self
            .run_bounded(invocation, system, format, sink, state, scope.as_deref())
            .await;
        let (scope, state) = (run.scope.take(), &run.state);
        if let (Some(report), Some(started)) = (report, started) {
            let trace = scope.as_ref().and_then(|s| s.trace());
            let capture = observer.is_some_and(|o| o.capture_content());
            report.set(RunSummary {
                agent: inner.name.clone(),
                agent_version: inner.version.clone(),
                model: match &outcome {
                    Ok(reply) => reply.model.clone(),
                    Err(_) => inner.model.id().to_owned(),
                },
                tenant,
                session_id,
                tokens_in: state.usage.input_tokens,
                tokens_out: state.usage.output_tokens,
                tool_names: match &outcome {
                    Ok(reply) => reply.tool_calls.iter().map(|t| t.name.clone()).collect(),
                    Err(_) => state.records.iter().map(|t| t.name.clone()).collect(),
                },
                cost_usd: state.cost,
                error_code: outcome.as_ref().err().map(Error::code),
                trace_id: trace.as_ref().map(TraceContext::trace_id_hex),
                span_id: trace.as_ref().map(TraceContext::span_id_hex),
                output: match &outcome {
                    Ok(reply) if capture => Some(reply.output.clone()),
                    _ => None,
                },
                duration: started.elapsed(),
            });
        }
        if let Some(scope) = scope {
            let model = match &outcome {
                Ok(reply) => reply.model.as_str(),
                Err(_) => inner.model.id(),
            };
            scope.end(&RunEnd {
                outcome: outcome.as_ref(),
                usage: state.usage,
                cost_usd: state.cost,
                // A reply takes the records along; a failed run leaves them in the state.
                tool_calls: match &outcome {
                    Ok(reply) => &reply.tool_calls,
                    Err(_) => &state.records,
                },
                model,
                steps: state.steps,
            });
        }
        outcome
    }

    async fn run_bounded<S: Sink>(
        &self,
        invocation: Invocation,
        system: Option<Arc<str>>,
        format: Option<&ResponseFormat>,
        sink: &mut S,
        state: &mut RunState,
        scope: Option<&dyn RunScope>,
    ) -> Result<Reply> {
        let cancel = invocation.context.cancellation().clone();
        let deadline = invocation.context.deadline();
        if cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            return Err(deadline_passed());
        }
        let run = self.run_loop(invocation, system.as_deref(), format, sink, state, scope);
        let expire = async move {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            outcome = run => outcome,
            () = cancel.cancelled() => Err(Error::cancelled()),
            () = expire => Err(deadline_passed()),
        }
    }

    async fn run_loop<S: Sink>(
        &self,
        invocation: Invocation,
        system: Option<&str>,
        format: Option<&ResponseFormat>,
        sink: &mut S,
        state: &mut RunState,
        scope: Option<&dyn RunScope>,
    ) -> Result<Reply> {
        let inner = &*self.inner;
        let Invocation {
            input,
            history,
            context: cx,
            metadata: _,
        } = invocation;
        let history_len = history.len();
        let mut messages = history;
        messages.reserve(input.len() + 4);
        messages.extend(input);
        let run_start = messages.len();
        let checkpoints = Checkpoints::of(&cx);
        let mut step = 0;
        // A redelivered job continues from its recorded progress. Boxed, as the checkpoint
        // writes below are: only some jobs take these paths, and inline their futures would
        // make every run larger to move.
        if let Some(checkpoints) = &checkpoints
            && cx.extension::<JobAttempt>().is_some_and(|a| a.0 > 1)
        {
            let resume = self.resume(
                checkpoints,
                &mut messages,
                run_start,
                &cx,
                sink,
                state,
                scope,
            );
            step = Box::pin(resume).await?;
        }
        // Only the tools this caller may use are offered.
        let tools = inner.tools.specs_for(&cx);
        loop {
            if step >= inner.limits.max_steps {
                return Err(Error::new(
                    ErrorKind::StepLimit,
                    format!(
                        "the run reached its limit of {} model calls without a final answer",
                        inner.limits.max_steps
                    ),
                ));
            }
            self.check_budget(state)?;
            step += 1;
            state.steps = step;
            let request = ModelRequest {
                system,
                messages: &messages,
                tools: &tools,
                tool_choice: ToolChoice::Auto,
                response_format: format,
                max_tokens: inner.max_tokens,
                temperature: inner.temperature,
            };
            let response = self.call_model(&request, &cx, step, sink, scope).await?;
            state.usage += response.usage;
            state.cost += self.cost_of(&response);
            if !response.message.has_tool_calls() {
                let stop_reason = response.stop_reason;
                let model = response
                    .model
                    .unwrap_or_else(|| inner.model.id().to_owned());
                let output = response.message.text_content();
                messages.push(response.message);
                if S::ACTIVE {
                    sink.emit(AgentEvent::Usage {
                        usage: state.usage,
                        cost_usd: state.cost,
                    })
                    .await?;
                }
                return Ok(Reply {
                    output,
                    messages: messages.split_off(history_len),
                    usage: state.usage,
                    cost_usd: state.cost,
                    tool_calls: std::mem::take(&mut state.records),
                    stop_reason,
                    model,
                    steps: step,
                    session: None,
                });
            }
            // A job records the calls before side effects run, so that a redelivery repeats
            // them under the same idempotency keys; without the record it does not run them.
            let checkpoint = checkpoints.as_ref().filter(|_| {
                response.message.tool_calls().any(|call| {
                    inner
                        .tools
                        .get(&call.name)
                        .is_some_and(|t| t.side_effects())
                })
            });
            messages.push(response.message);
            if let Some(checkpoints) = checkpoint {
                Box::pin(checkpoints.save(&messages[run_start..], state)).await?;
            }
            let results = match messages.last() {
                Some(last) => self.call_tools(last, &cx, sink, state, scope).await?,
                None => Vec::new(),
            };
            messages.push(Message::tool_results(results));
            if let Some(checkpoints) = checkpoint {
                Box::pin(self.saved(checkpoints, &messages[run_start..], state)).await;
            }
        }
    }

    /// Continues a redelivered job from its recorded progress: tool calls it had decided and
    /// not seen answered run now, under their recorded ids. Returns the steps taken so far.
    #[allow(clippy::too_many_arguments)]
    async fn resume<S: Sink>(
        &self,
        checkpoints: &Checkpoints,
        messages: &mut Vec<Message>,
        run_start: usize,
        cx: &Context,
        sink: &mut S,
        state: &mut RunState,
        scope: Option<&dyn RunScope>,
    ) -> Result<u32> {
        let Some(progress) = checkpoints.load().await? else {
            return Ok(0);
        };
        messages.extend(progress.messages);
        state.steps = progress.steps;
        state.usage += progress.usage;
        state.cost += progress.cost_usd;
        let pending = messages
            .last()
            .filter(|m| m.role == Role::Assistant && m.has_tool_calls());
        if let Some(last) = pending {
            let results = self.call_tools(last, cx, sink, state, scope).await?;
            messages.push(Message::tool_results(results));
            self.saved(checkpoints, &messages[run_start..], state).await;
        }
        Ok(progress.steps)
    }

    /// Records progress after tool results; a failure is only logged (a redelivery then runs
    /// the step's calls again from the earlier record, and the ledger answers the finished
    /// ones).
    async fn saved(&self, checkpoints: &Checkpoints, messages: &[Message], state: &RunState) {
        if let Err(error) = checkpoints.save(messages, state).await {
            tracing::warn!(agent = %self.inner.name, %error, "cannot record the job's progress after its tool calls");
        }
    }

    fn check_budget(&self, state: &RunState) -> Result<()> {
        let limits = &self.inner.limits;
        if let Some(budget) = limits.token_budget
            && state.usage.total_tokens() >= budget
        {
            return Err(Error::new(
                ErrorKind::BudgetExceeded,
                format!(
                    "the run spent {} of its {budget} tokens before finishing",
                    state.usage.total_tokens()
                ),
            ));
        }
        if let Some(budget) = limits.cost_budget
            && state.cost >= budget
        {
            return Err(Error::new(
                ErrorKind::BudgetExceeded,
                format!(
                    "the run spent ${:.6} of its ${budget:.6} budget before finishing",
                    state.cost
                ),
            ));
        }
        Ok(())
    }

    fn cost_of(&self, response: &ModelResponse) -> f64 {
        let inner = &*self.inner;
        let price = match &response.model {
            Some(model) if model != inner.model.id() => inner.prices.get(model),
            _ => inner.model_price,
        };
        price.map_or(0.0, |p| p.cost(&response.usage))
    }

    async fn call_model<S: Sink>(
        &self,
        request: &ModelRequest<'_>,
        cx: &Context,
        step: u32,
        sink: &mut S,
        scope: Option<&dyn RunScope>,
    ) -> Result<ModelResponse> {
        let model = &self.inner.model;
        let Some(scope) = scope else {
            return Self::ask(&**model, request, cx, sink).await;
        };
        let call = Ending::model(scope.start_model_call(&ModelCallStart {
            model: model.id(),
            provider: model.provider(),
            step,
            streaming: S::ACTIVE,
        }));
        let traced;
        let cx = match call.trace() {
            Some(trace) => {
                traced = cx.clone().with_trace(trace);
                &traced
            }
            None => cx,
        };
        let outcome = Self::ask(&**model, request, cx, sink).await;
        call.end(|call| call.end_model(outcome.as_ref()));
        outcome
    }

    async fn ask<S: Sink>(
        model: &dyn crate::model::Model,
        request: &ModelRequest<'_>,
        cx: &Context,
        sink: &mut S,
    ) -> Result<ModelResponse> {
        if !S::ACTIVE {
            return model.complete(request, cx).await;
        }
        let mut stream = model.stream(request, cx).await?;
        let mut builder = ResponseBuilder::new();
        while let Some(event) = stream.next().await {
            let event = event?;
            builder.push(&event)?;
            if let ModelEvent::TextDelta(text) = event
                && !text.is_empty()
            {
                sink.emit(AgentEvent::TextDelta { text }).await?;
            }
        }
        builder.finish()
    }

    async fn call_tools<S: Sink>(
        &self,
        message: &Message,
        cx: &Context,
        sink: &mut S,
        state: &mut RunState,
        scope: Option<&dyn RunScope>,
    ) -> Result<Vec<ToolResult>> {
        let calls: Vec<&ToolCall> = message.tool_calls().collect();
        if S::ACTIVE {
            for call in &calls {
                sink.emit(AgentEvent::ToolCallStarted {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                })
                .await?;
            }
        }
        let mut results = Vec::with_capacity(calls.len());
        if let [call] = calls.as_slice() {
            let (result, record) = self.call_tool(call, cx, scope).await;
            if S::ACTIVE {
                sink.emit(AgentEvent::ToolCallFinished(record.clone()))
                    .await?;
            }
            results.push(result);
            state.records.push(record);
            return Ok(results);
        }
        let mut done: Vec<Option<(ToolResult, ToolCallRecord)>> = Vec::new();
        done.resize_with(calls.len(), || None);
        let mut waiting = calls.iter().copied().enumerate();
        let mut running = FuturesUnordered::new();
        for (index, call) in waiting.by_ref().take(self.inner.limits.max_parallel_tools) {
            running.push(self.call_tool_at(index, call, cx, scope));
        }
        while let Some((index, (result, record))) = running.next().await {
            if let Some((next, call)) = waiting.next() {
                running.push(self.call_tool_at(next, call, cx, scope));
            }
            if S::ACTIVE {
                sink.emit(AgentEvent::ToolCallFinished(record.clone()))
                    .await?;
            }
            done[index] = Some((result, record));
        }
        for (result, record) in done.into_iter().flatten() {
            results.push(result);
            state.records.push(record);
        }
        Ok(results)
    }

    async fn call_tool_at(
        &self,
        index: usize,
        call: &ToolCall,
        cx: &Context,
        scope: Option<&dyn RunScope>,
    ) -> (usize, (ToolResult, ToolCallRecord)) {
        (index, self.call_tool(call, cx, scope).await)
    }

    async fn call_tool(
        &self,
        call: &ToolCall,
        cx: &Context,
        scope: Option<&dyn RunScope>,
    ) -> (ToolResult, ToolCallRecord) {
        let tools = &self.inner.tools;
        let timeout = self.inner.limits.tool_timeout;
        let Some(scope) = scope else {
            return tools.call(call, cx, timeout).await;
        };
        let span = Ending::tool(scope.start_tool_call(call), call);
        let traced;
        let cx = match span.trace() {
            Some(trace) => {
                traced = cx.clone().with_trace(trace);
                &traced
            }
            None => cx,
        };
        let (result, record) = tools.call(call, cx, timeout).await;
        span.end(|span| span.end_tool(&record));
        (result, record)
    }
}

/// A run's scope until it is ended, beside what the run has spent so far. A run dropped
/// midway (its caller went away: a client that disconnected, a worker handing its job back)
/// is ended here as cancelled, with that spending, so that every run an observer is told of
/// ends once and its in-flight count comes back down.
struct Observed<'a> {
    scope: Option<Box<dyn RunScope>>,
    state: RunState,
    agent: &'a Agent,
}

impl Drop for Observed<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            self.cancel(scope);
        }
    }
}

impl Observed<'_> {
    /// Ends a run dropped midway.
    #[cold]
    fn cancel(&self, scope: Box<dyn RunScope>) {
        scope.end(&RunEnd {
            outcome: Err(&Error::cancelled()),
            usage: self.state.usage,
            cost_usd: self.state.cost,
            tool_calls: &self.state.records,
            model: self.agent.inner.model.id(),
            steps: self.state.steps,
        });
    }
}

/// A model or tool call's scope until it is ended; a call cut off by its run being dropped
/// is ended here as cancelled. A tool call's record then has no duration: the toolbox times
/// the call, and it was dropped with it.
struct Ending<'a> {
    scope: Option<Box<dyn CallScope>>,
    /// The tool call; `None` for a model call.
    tool: Option<&'a ToolCall>,
}

impl<'a> Ending<'a> {
    #[inline]
    fn model(scope: Box<dyn CallScope>) -> Self {
        Self {
            scope: Some(scope),
            tool: None,
        }
    }

    #[inline]
    fn tool(scope: Box<dyn CallScope>, call: &'a ToolCall) -> Self {
        Self {
            scope: Some(scope),
            tool: Some(call),
        }
    }

    #[inline]
    fn trace(&self) -> Option<TraceContext> {
        self.scope.as_ref().and_then(|scope| scope.trace())
    }

    /// Ends the call with its outcome.
    #[inline]
    fn end(mut self, end: impl FnOnce(Box<dyn CallScope>)) {
        if let Some(scope) = self.scope.take() {
            end(scope);
        }
    }
}

impl Drop for Ending<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            self.cancel(scope);
        }
    }
}

impl Ending<'_> {
    /// Ends a call cut off by its run being dropped.
    #[cold]
    fn cancel(&self, scope: Box<dyn CallScope>) {
        let cancelled = Error::cancelled();
        match self.tool {
            None => scope.end_model(Err(&cancelled)),
            Some(call) => scope.end_tool(&ToolCallRecord {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                ok: false,
                duration: std::time::Duration::ZERO,
                error: Some(ToolCallRecord::error_text(&cancelled)),
            }),
        }
    }
}

fn deadline_passed() -> Error {
    Error::timeout("the run did not finish before its deadline")
}
