//! [`PromptTemplate`]: a strict minijinja template for system prompts.

use std::fmt;
use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior};

use crate::{Error, Result};

const NAME: &str = "prompt";

/// A minijinja template rendered strictly: a syntax error is an error when the template is
/// made, and a variable the template uses but the caller did not give is an error at render,
/// never a silent empty string.
///
/// A template without variables is rendered once, up front.
///
/// ```
/// use agentkit_core::PromptTemplate;
///
/// let t = PromptTemplate::new("You help {{ company }} customers.")?;
/// let vars = serde_json::json!({"company": "Acme"});
/// assert_eq!(&*t.render(vars.as_object().unwrap())?, "You help Acme customers.");
/// assert!(t.render(&serde_json::Map::new()).is_err()); // `company` is undefined
/// assert!(PromptTemplate::new("{% if %}").is_err()); // syntax error
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct PromptTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    constant: Option<Arc<str>>,
}

impl fmt::Debug for PromptTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptTemplate")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl PromptTemplate {
    /// Parses `source`; an [`ErrorKind::InvalidInput`](crate::ErrorKind) error on a syntax error.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let source: String = source.into();
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template_owned(NAME, source.clone())
            .map_err(|e| Error::invalid_input(format!("invalid prompt template: {e:#}")))?;
        let template = env
            .get_template(NAME)
            .map_err(|e| Error::invalid_input(format!("invalid prompt template: {e:#}")))?;
        let constant = if template.undeclared_variables(false).is_empty() {
            let text = template
                .render(())
                .map_err(|e| Error::invalid_input(format!("invalid prompt template: {e:#}")))?;
            Some(Arc::from(text))
        } else {
            None
        };
        Ok(Self {
            env: Arc::new(env),
            source: Arc::from(source),
            constant,
        })
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders with `vars`; an [`ErrorKind::InvalidInput`](crate::ErrorKind) error naming the
    /// problem when a variable is missing.
    pub fn render(&self, vars: &serde_json::Map<String, serde_json::Value>) -> Result<Arc<str>> {
        if let Some(text) = &self.constant {
            return Ok(text.clone());
        }
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::internal(format!("prompt template vanished: {e}")))?;
        template
            .render(minijinja::value::Serde(vars))
            .map(Arc::from)
            .map_err(|e| Error::invalid_input(format!("cannot render the prompt: {e:#}")))
    }
}
