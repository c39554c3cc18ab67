//! [`Router`]: one executor in front of several, choosing one per invocation by rule or by a
//! classifier.

use std::sync::Arc;

use super::{BoxExecutor, EventStream, Executor, Invocation, Reply};
use crate::{Error, Result};

/// The route an invocation was sent down, in its context
/// (`cx.extension::<Route>()`), for the executors, tools and logs behind the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route(pub String);

type Rule = Box<dyn Fn(&Invocation) -> bool + Send + Sync>;

/// Sends each invocation to one of several executors (agents, sessions, pools, remote
/// services, queues): the first [`rule`](RouterBuilder::rule) that matches, else the
/// [`classifier`](RouterBuilder::classifier)'s answer, else the
/// [`fallback`](RouterBuilder::fallback). With none of them choosing, the invocation fails as
/// invalid input. The chosen route is in the routed invocation's context as a [`Route`].
///
/// ```
/// use agentkit_core::executor::Router;
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_core::{Agent, Executor, Invocation};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let agent = |name: &str| Agent::builder().name(name).model(ScriptedModel::demo()).build().unwrap();
/// let router = Router::builder()
///     .route("billing", agent("billing"))
///     .route("support", agent("support"))
///     .rule("billing", |invocation: &Invocation| {
///         invocation.input.iter().any(|m| m.text_content().contains("invoice"))
///     })
///     .fallback("support")
///     .build()?;
/// assert_eq!(router.choose(&Invocation::text("my invoice is wrong")).await?, "billing");
/// assert_eq!(router.choose(&Invocation::text("hello")).await?, "support");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Vec<(String, BoxExecutor)>,
    /// Rules in order, with the index of their route.
    rules: Vec<(Rule, usize)>,
    classifier: Option<BoxExecutor>,
    fallback: Option<usize>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.routes.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Router")
            .field("routes", &names)
            .field("rules", &self.inner.rules.len())
            .field("classifier", &self.inner.classifier.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Router`].
#[must_use]
#[derive(Default)]
pub struct RouterBuilder {
    routes: Vec<(String, BoxExecutor)>,
    rules: Vec<(String, Rule)>,
    classifier: Option<BoxExecutor>,
    fallback: Option<String>,
}

impl std::fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.routes.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("RouterBuilder")
            .field("routes", &names)
            .finish_non_exhaustive()
    }
}

impl RouterBuilder {
    /// Adds the route `name` to `executor`.
    pub fn route(mut self, name: impl Into<String>, executor: impl Executor + 'static) -> Self {
        self.routes.push((name.into(), BoxExecutor::new(executor)));
        self
    }

    /// Sends invocations for which `matches` holds down `route`. Rules are tried in the order
    /// they were added.
    pub fn rule(
        mut self,
        route: impl Into<String>,
        matches: impl Fn(&Invocation) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.rules.push((route.into(), Box::new(matches)));
        self
    }

    /// Asks `classifier` (a small agent told to answer with a route's name, say) when no rule
    /// matched: its answer, trimmed, names the route. It is given the invocation's input,
    /// metadata and context, not its history.
    pub fn classifier(mut self, classifier: impl Executor + 'static) -> Self {
        self.classifier = Some(BoxExecutor::new(classifier));
        self
    }

    /// The route when neither a rule nor the classifier chose one (or the classifier failed
    /// or named no route).
    pub fn fallback(mut self, route: impl Into<String>) -> Self {
        self.fallback = Some(route.into());
        self
    }

    /// Checks that there is a route, that route names are unique and not empty, and that
    /// every rule and the fallback name a route.
    pub fn build(self) -> Result<Router> {
        if self.routes.is_empty() {
            return Err(Error::invalid_input("a router needs at least one route"));
        }
        let index = |name: &str| self.routes.iter().position(|(n, _)| n == name);
        for (i, (name, _)) in self.routes.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(Error::invalid_input("a route needs a name"));
            }
            if index(name) != Some(i) {
                return Err(Error::invalid_input(format!(
                    "two routes are named {name:?}"
                )));
            }
        }
        let unknown = |name: &str| Error::invalid_input(format!("no route is named {name:?}"));
        let mut rules = Vec::with_capacity(self.rules.len());
        for (route, rule) in self.rules {
            rules.push((rule, index(&route).ok_or_else(|| unknown(&route))?));
        }
        let fallback = match &self.fallback {
            Some(route) => Some(index(route).ok_or_else(|| unknown(route))?),
            None => None,
        };
        Ok(Router {
            inner: Arc::new(Inner {
                routes: self.routes,
                rules,
                classifier: self.classifier,
                fallback,
            }),
        })
    }
}

impl Router {
    /// A builder with no routes.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// The route `invocation` would be sent down (asking the classifier if no rule matches).
    pub async fn choose(&self, invocation: &Invocation) -> Result<&str> {
        let index = self.pick(invocation).await?;
        Ok(&self.inner.routes[index].0)
    }

    async fn pick(&self, invocation: &Invocation) -> Result<usize> {
        let inner = &*self.inner;
        if let Some((_, route)) = inner.rules.iter().find(|(rule, _)| rule(invocation)) {
            return Ok(*route);
        }
        if let Some(classifier) = &inner.classifier {
            let mut question = Invocation::new(invocation.input.clone());
            question.metadata = invocation.metadata.clone();
            question.context = invocation.context.clone();
            match classifier.execute(question).await {
                Ok(reply) => {
                    let answer = reply.output.trim();
                    if let Some(index) = inner.routes.iter().position(|(n, _)| n == answer) {
                        return Ok(index);
                    }
                    tracing::debug!(
                        target: "agentkit::router",
                        answer,
                        "the classifier named no route"
                    );
                }
                Err(error) if inner.fallback.is_some() => {
                    tracing::warn!(
                        target: "agentkit::router",
                        %error,
                        "the classifier failed; taking the fallback route"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        inner
            .fallback
            .ok_or_else(|| Error::invalid_input("no route for this invocation"))
    }

    /// The executor for `invocation`, with its route in the context.
    async fn routed(&self, mut invocation: Invocation) -> Result<(&BoxExecutor, Invocation)> {
        let index = self.pick(&invocation).await?;
        let (name, executor) = &self.inner.routes[index];
        invocation.context = invocation.context.with_extension(Route(name.clone()));
        Ok((executor, invocation))
    }
}

impl Executor for Router {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let (executor, invocation) = self.routed(invocation).await?;
        executor.execute(invocation).await
    }

    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let (executor, invocation) = self.routed(invocation).await?;
        executor.stream(invocation).await
    }
}
