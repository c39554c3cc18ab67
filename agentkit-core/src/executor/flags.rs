//! Feature flags: rules by tenant, user and scope, a sticky percentage rollout, a table that
//! can be replaced while the service runs, and [`FlagSwitch`] to pick an executor by flag.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::Either;
use serde::Deserialize;

use crate::executor::{EventStream, Executor, Invocation, Reply};
use crate::{Context, Error, Result, stable_hash};

/// A segment and the value a flag takes in it: a caller matches when every list given contains
/// its tenant, its user, or one of its scopes (an empty or missing list matches anyone).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlagRule {
    /// Tenants in the segment.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Users in the segment.
    #[serde(default)]
    pub users: Vec<String>,
    /// Scopes, any of which puts a caller in the segment.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The flag's value in the segment.
    pub on: bool,
}

impl FlagRule {
    fn matches(&self, cx: &Context) -> bool {
        let within = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|item| item == v))
        };
        within(&self.tenants, cx.tenant())
            && within(&self.users, cx.user())
            && (self.scopes.is_empty()
                || cx
                    .scopes()
                    .is_some_and(|held| held.iter().any(|s| self.scopes.contains(s))))
    }
}

/// One flag: the first rule that matches decides; else a caller is on when it falls in the
/// rollout percentage (sticky: by user, else tenant, else session); else `default`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    /// The value when no rule matches and the caller is outside the rollout.
    #[serde(default)]
    pub default: bool,
    /// Segments, in order.
    #[serde(default)]
    pub rules: Vec<FlagRule>,
    /// The share of callers (0-100) the flag is on for, when no rule matches.
    #[serde(default)]
    pub percent: Option<f64>,
}

/// The caller's bucket (0-100) for the flag `flag`: by [`stable_hash`] of flag and key, so it
/// is the same on every instance and two 10% rollouts do not pick the same callers.
fn bucket(flag: &str, key: &str) -> f64 {
    let hash = stable_hash(flag.bytes().chain([0]).chain(key.bytes()));
    (hash % 10_000) as f64 / 100.0
}

impl Flag {
    fn is_on(&self, name: &str, cx: &Context) -> bool {
        if let Some(rule) = self.rules.iter().find(|r| r.matches(cx)) {
            return rule.on;
        }
        if let Some(percent) = self.percent {
            let key = cx
                .user()
                .or_else(|| cx.tenant())
                .or_else(|| cx.session_id())
                .unwrap_or_else(|| cx.request_id());
            if bucket(name, key) < percent {
                return true;
            }
        }
        self.default
    }
}

/// A table of flags by name, shared and replaceable while the service runs (from a file, an
/// admin endpoint, a flag service): readers see the old table or the new one, never a mix.
/// Cheap to clone; clones share the table.
///
/// ```
/// use agentkit_core::Context;
/// use agentkit_core::executor::Flags;
///
/// let flags = Flags::from_json(r#"{
///     "new-prompt": {"rules": [{"tenants": ["acme"], "on": true}], "percent": 10}
/// }"#)?;
/// assert!(flags.is_on("new-prompt", &Context::new().with_tenant("acme")));
/// assert!(!flags.is_on("unknown-flag", &Context::new()));
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Flags {
    table: Arc<RwLock<Arc<HashMap<String, Flag>>>>,
}

impl Flags {
    /// A table read from JSON: `{"name": {"default", "rules": [...], "percent"}}`; an
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind) naming the problem when it does not parse.
    pub fn from_json(json: &str) -> Result<Self> {
        let flags = Self::default();
        flags.replace_json(json)?;
        Ok(flags)
    }

    fn parse(json: &str) -> Result<HashMap<String, Flag>> {
        let table: HashMap<String, Flag> = serde_json::from_str(json)
            .map_err(|e| Error::invalid_input(format!("invalid flag table: {e}")))?;
        for (name, flag) in &table {
            if flag.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                return Err(Error::invalid_input(format!(
                    "flag {name:?}: percent must be between 0 and 100"
                )));
            }
        }
        Ok(table)
    }

    /// Replaces the whole table with `json`'s; on an error the table in use stays.
    pub fn replace_json(&self, json: &str) -> Result<()> {
        let table = Self::parse(json)?;
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        Ok(())
    }

    /// Keeps the table equal to the JSON file at `path` (a mounted ConfigMap, a file your
    /// deploy tool writes): reads it now, an error if it cannot be read or parsed; then reads
    /// it every `every` and, when its content changed, replaces the table. A later version that
    /// cannot be read or parsed is logged and the table in use stays. The watcher ends when
    /// every clone of these flags is gone; abort the handle to end it sooner.
    pub async fn watch_file(
        &self,
        path: impl Into<PathBuf>,
        every: Duration,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let path = path.into();
        let read = |path: PathBuf| async move {
            tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| Error::invalid_input(format!("cannot read {}: {e}", path.display())))
        };
        let mut seen = read(path.clone()).await?;
        self.replace_json(&seen)
            .map_err(|e| Error::invalid_input(format!("{}: {}", path.display(), e.message())))?;
        let table = Arc::downgrade(&self.table);
        Ok(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(table) = table.upgrade() else {
                    return;
                };
                let text = match read(path.clone()).await {
                    Ok(text) => text,
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "flag file not read; the table in use stays");
                        continue;
                    }
                };
                if text == seen {
                    continue;
                }
                // Each version is applied, or warned about, once.
                match (Flags { table }).replace_json(&text) {
                    Ok(()) => tracing::info!(path = %path.display(), "flag table reloaded"),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "flag file not applied; the table in use stays");
                    }
                }
                seen = text;
            }
        }))
    }

    /// Sets one flag.
    pub fn set(&self, name: impl Into<String>, flag: Flag) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        Arc::make_mut(&mut table).insert(name.into(), flag);
    }

    /// Whether the flag `name` is on for the caller of `cx` (an unknown flag is off).
    pub fn is_on(&self, name: &str, cx: &Context) -> bool {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        table.get(name).is_some_and(|flag| flag.is_on(name, cx))
    }
}

/// Runs `on` for callers the flag `name` is on for and `off` for the rest, deciding per
/// invocation from the current table (so a flag flipped at run time takes effect at once).
#[derive(Clone, Debug)]
pub struct FlagSwitch<On, Off> {
    flags: Flags,
    name: String,
    on: On,
    off: Off,
}

impl<On, Off> FlagSwitch<On, Off> {
    /// Switches between `on` and `off` by the flag `name` of `flags`.
    pub fn new(flags: Flags, name: impl Into<String>, on: On, off: Off) -> Self {
        Self {
            flags,
            name: name.into(),
            on,
            off,
        }
    }
}

impl<On: Executor, Off: Executor> Executor for FlagSwitch<On, Off> {
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        if self.flags.is_on(&self.name, &invocation.context) {
            Either::Left(self.on.execute(invocation))
        } else {
            Either::Right(self.off.execute(invocation))
        }
    }

    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        if self.flags.is_on(&self.name, &invocation.context) {
            Either::Left(self.on.stream(invocation))
        } else {
            Either::Right(self.off.stream(invocation))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_then_rollout_then_default() {
        let flags = Flags::from_json(
            r#"{
                "beta": {
                    "rules": [
                        {"tenants": ["blocked"], "on": false},
                        {"scopes": ["beta:tester"], "on": true},
                        {"tenants": ["acme"], "users": ["ann"], "on": true}
                    ],
                    "percent": 25
                },
                "everyone": {"default": true}
            }"#,
        )
        .unwrap();
        let cx = |tenant: &str, user: &str| Context::new().with_tenant(tenant).with_user(user);
        assert!(flags.is_on("beta", &cx("acme", "ann")));
        assert!(flags.is_on(
            "beta",
            &cx("other", "zed").with_scopes(["beta:tester".to_owned()])
        ));
        assert!(!flags.is_on(
            "beta",
            &cx("blocked", "ann").with_scopes(["beta:tester".to_owned()])
        ));
        assert!(flags.is_on("everyone", &Context::new()));
        assert!(!flags.is_on("missing", &Context::new()));

        let on = (0..4000)
            .filter(|i| flags.is_on("beta", &cx("t", &format!("user-{i}"))))
            .count();
        assert!((850..=1150).contains(&on), "25% of 4000 users, got {on}");
        let sticky = cx("t", "user-7");
        let first = flags.is_on("beta", &sticky);
        assert!((0..50).all(|_| flags.is_on("beta", &sticky) == first));
    }

    #[test]
    fn bad_tables_are_refused_and_the_old_one_stays() {
        let flags = Flags::from_json(r#"{"x": {"default": true}}"#).unwrap();
        for bad in [
            r#"{"x": {"percent": 150}}"#,
            r#"{"x": {"defualt": true}}"#,
            "not json",
        ] {
            let error = flags.replace_json(bad).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(flags.is_on("x", &Context::new()), "the old table stays");
        flags.set("x", Flag::default());
        assert!(!flags.is_on("x", &Context::new()));
    }
}
