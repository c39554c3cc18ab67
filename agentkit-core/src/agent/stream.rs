//! Streaming runs: the loop runs in its own task and sends events through a bounded channel.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

use crate::agent::Agent;
use crate::agent::run::{RunState, Sink};
use crate::executor::{AgentEvent, EventStream, Invocation};
use crate::{Error, Result};

/// Events buffered between the run and a slow consumer; beyond it the run waits.
const BUFFER: usize = 32;

struct ChannelSink {
    tx: mpsc::Sender<Result<AgentEvent>>,
}

impl Sink for ChannelSink {
    const ACTIVE: bool = true;

    async fn emit(&mut self, event: AgentEvent) -> Result<()> {
        self.tx
            .send(Ok(event))
            .await
            .map_err(|_| Error::cancelled())
    }
}

/// The consumer's end: dropping it cancels the run.
struct Events {
    rx: mpsc::Receiver<Result<AgentEvent>>,
    _cancel_on_drop: DropGuard,
}

impl Stream for Events {
    type Item = Result<AgentEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Agent {
    /// Starts a streamed run. Input and prompt errors are returned here, before any event, so a
    /// transport can still answer them with a plain status.
    pub(crate) fn run_streaming(&self, mut invocation: Invocation) -> Result<EventStream> {
        let system = self.prepare(&invocation)?;
        let token = invocation.context.cancellation().child_token();
        invocation.context = invocation.context.with_cancellation(token.clone());
        let (tx, rx) = mpsc::channel(BUFFER);
        let agent = self.clone();
        tokio::spawn(async move {
            let mut sink = ChannelSink { tx };
            let outcome = agent
                .run_observed(invocation, system, None, &mut sink, RunState::default())
                .await;
            let last = outcome.map(|reply| AgentEvent::Done(Box::new(reply)));
            // The consumer may be gone; then there is nobody left to tell.
            let _ = sink.tx.send(last).await;
        });
        Ok(Box::pin(Events {
            rx,
            _cancel_on_drop: token.drop_guard(),
        }))
    }
}
