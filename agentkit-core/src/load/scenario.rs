//! What each invocation of a load run asks.

use std::sync::Arc;

use crate::executor::Invocation;

/// What each invocation of a load run asks.
///
/// ```
/// use agentkit_core::load::Scenario;
/// use agentkit_core::{Context, Invocation};
///
/// /// Every tenth caller asks for a sum; the rest say hello.
/// struct Mix;
///
/// impl Scenario for Mix {
///     fn invocation(&self, index: u64) -> Invocation {
///         let text = if index % 10 == 0 { "What is 1 + 2?" } else { "hello" };
///         Invocation::text(text).with_context(Context::new().with_tenant("load-test"))
///     }
/// }
/// # let _ = Mix.invocation(0);
/// ```
pub trait Scenario: Send + Sync {
    /// The `index`th invocation of the run (from 0). The generator replaces its request id
    /// and sets its deadline; tenant, session, history and metadata are kept.
    fn invocation(&self, index: u64) -> Invocation;
}

/// Texts asked in turn; with [`sessions`](Prompts::sessions), spread over that many sessions
/// (invocation `i` in session `load-{i mod n}`), each turn a next message of its session.
#[derive(Clone, Debug)]
pub struct Prompts {
    texts: Vec<String>,
    sessions: Option<u64>,
    tenant: Option<String>,
}

impl Prompts {
    /// The texts, asked in turn. An empty list asks an empty message, which agents refuse.
    pub fn new<I, S>(texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            texts: texts.into_iter().map(Into::into).collect(),
            sessions: None,
            tenant: None,
        }
    }

    /// Spreads the invocations over `sessions` sessions (at least one).
    #[must_use]
    pub fn sessions(mut self, sessions: u64) -> Self {
        self.sessions = Some(sessions.max(1));
        self
    }

    /// In `tenant`.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
}

impl Scenario for Prompts {
    fn invocation(&self, index: u64) -> Invocation {
        let text = match self.texts.len() {
            0 => "",
            n => &self.texts[(index % n as u64) as usize],
        };
        let mut invocation = Invocation::text(text);
        if let Some(tenant) = &self.tenant {
            invocation.context = invocation.context.with_tenant(tenant.as_str());
        }
        if let Some(sessions) = self.sessions {
            let session = format!("load-{}", index % sessions);
            invocation.context = invocation.context.with_session_id(session);
        }
        invocation
    }
}

const _: Option<&dyn Scenario> = None;

impl<S: Scenario + ?Sized> Scenario for Arc<S> {
    fn invocation(&self, index: u64) -> Invocation {
        (**self).invocation(index)
    }
}

impl<S: Scenario + ?Sized> Scenario for Box<S> {
    fn invocation(&self, index: u64) -> Invocation {
        (**self).invocation(index)
    }
}
