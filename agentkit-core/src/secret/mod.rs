//! Secrets that can rotate: a [`Secret`] value that is never printed, [`SecretSource`]s that
//! look secrets up by name (the environment, a directory of files such as a mounted Kubernetes
//! secret), and a [`CachedSecret`] that keeps one fresh, so a rotated key takes effect without
//! a restart. With the `vault` feature, `VaultSecrets` reads them from HashiCorp Vault; with
//! `aws`, `AwsSecrets` from AWS Secrets Manager.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{Error, Result};

#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "vault")]
mod vault;
#[cfg(feature = "aws")]
pub use aws::{AwsCredentials, AwsSecrets};
#[cfg(feature = "vault")]
pub use vault::VaultSecrets;

/// The HTTP client of a secret store's source: every lookup bounded by `timeout`.
#[cfg(any(feature = "vault", feature = "aws"))]
fn http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
}

/// A request to the secret store `store` that got no answer: unavailable, saying whether it
/// timed out or could not connect.
#[cfg(any(feature = "vault", feature = "aws"))]
fn unanswered(store: &str, error: reqwest::Error) -> Error {
    let what = if error.is_timeout() {
        "did not answer in time"
    } else {
        "cannot be reached"
    };
    Error::unavailable(format!("{store} {what}")).with_source(error)
}

/// A secret value. `Debug` and `Display` print `[redacted]`; [`expose`](Self::expose) is the
/// one way to read it, so reading it is visible in review. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where secrets come from, by name. Implementations answer a missing secret with
/// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) and a store that cannot be reached with
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable); they need not cache
/// ([`CachedSecret`] does).
///
/// ```
/// use agentkit_core::secret::{Secret, SecretSource};
/// use agentkit_core::{Error, Result};
///
/// /// Secrets from a fixed table (tests, local runs).
/// struct Table(Vec<(&'static str, &'static str)>);
///
/// #[async_trait::async_trait]
/// impl SecretSource for Table {
///     async fn get(&self, name: &str) -> Result<Secret> {
///         self.0
///             .iter()
///             .find(|(n, _)| *n == name)
///             .map(|(_, value)| Secret::new(*value))
///             .ok_or_else(|| Error::not_found(format!("no secret {name}")))
///     }
/// }
/// ```
#[async_trait]
pub trait SecretSource: Send + Sync + 'static {
    /// The current value of the secret `name`.
    async fn get(&self, name: &str) -> Result<Secret>;
}

/// Secrets from environment variables, named as they are (fixed for the process's life: use
/// [`FileSecrets`] for secrets that rotate).
#[derive(Clone, Copy, Debug, Default)]
pub struct EnvSecrets;

#[async_trait]
impl SecretSource for EnvSecrets {
    async fn get(&self, name: &str) -> Result<Secret> {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value)),
            _ => Err(Error::not_found(format!(
                "the environment variable {name} holds no secret"
            ))),
        }
    }
}

/// Secrets as files in one directory, one per name (the layout of a mounted Kubernetes secret
/// or Docker secret), read afresh on every lookup; surrounding whitespace, such as the final
/// newline editors add, is trimmed. Names are plain file names: no paths.
#[derive(Clone, Debug)]
pub struct FileSecrets {
    dir: PathBuf,
}

impl FileSecrets {
    /// Secrets in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl SecretSource for FileSecrets {
    async fn get(&self, name: &str) -> Result<Secret> {
        let plain =
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
        if !plain {
            return Err(Error::invalid_input(format!(
                "secret name {name:?} must be a plain file name"
            )));
        }
        let path = self.dir.join(name);
        match tokio::fs::read_to_string(&path).await {
            Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim())),
            Ok(_) => Err(Error::not_found(format!(
                "the secret file {} is empty",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found(format!(
                "no secret file {}",
                path.display()
            ))),
            Err(e) => Err(Error::unavailable(format!(
                "cannot read the secret file {}: {e}",
                path.display()
            ))),
        }
    }
}

/// How soon a [`CachedSecret`] whose refresh failed tries again (serving its last value).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One secret kept fresh: looked up on first use, kept for `refresh`, then looked up again.
/// When a lookup fails, the last good value keeps serving (the failure is logged, and the
/// lookup is tried again after a few seconds rather than on every call), so a secret store
/// that blinks does not take the service down; [`invalidate`](Self::invalidate)
/// forces a lookup on next use (after the value was refused, say, because it was rotated).
/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct CachedSecret {
    inner: Arc<Cached>,
}

struct Cached {
    source: Arc<dyn SecretSource>,
    name: String,
    refresh: Duration,
    /// The last good value and when it stops being fresh.
    state: Mutex<Option<(Secret, Instant)>>,
    /// One lookup at a time; the others wait for it rather than stampede the store.
    lookup: tokio::sync::Mutex<()>,
}

impl fmt::Debug for CachedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSecret")
            .field("name", &self.inner.name)
            .field("refresh", &self.inner.refresh)
            .finish_non_exhaustive()
    }
}

impl CachedSecret {
    /// The secret `name` of `source`, looked up again every `refresh`.
    pub fn new(source: Arc<dyn SecretSource>, name: impl Into<String>, refresh: Duration) -> Self {
        Self {
            inner: Arc::new(Cached {
                source,
                name: name.into(),
                refresh,
                state: Mutex::new(None),
                lookup: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The secret held in the file at `path` (a mounted secret: see [`FileSecrets`]), read
    /// again every `refresh`; an error if `path` does not name a file.
    pub fn from_file(path: impl AsRef<Path>, refresh: Duration) -> Result<Self> {
        let path = path.as_ref();
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|f| f.to_str()))
        else {
            return Err(Error::invalid_input(format!(
                "{} does not name a secret file",
                path.display()
            )));
        };
        Ok(Self::new(Arc::new(FileSecrets::new(dir)), name, refresh))
    }

    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn fresh(&self) -> Option<Secret> {
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .as_ref()
            .filter(|(_, stale_at)| Instant::now() < *stale_at)
            .map(|(secret, _)| secret.clone())
    }

    /// The current value: the cached one while fresh, else a new lookup (or, if that fails,
    /// the last good value; an error only when there has never been one).
    pub async fn get(&self) -> Result<Secret> {
        if let Some(secret) = self.fresh() {
            return Ok(secret);
        }
        let _lookup = self.inner.lookup.lock().await;
        if let Some(secret) = self.fresh() {
            return Ok(secret);
        }
        match self.inner.source.get(&self.inner.name).await {
            Ok(secret) => {
                *self.inner.state.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((secret.clone(), Instant::now() + self.inner.refresh));
                Ok(secret)
            }
            Err(error) => {
                let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
                match state.as_mut() {
                    Some((secret, stale_at)) => {
                        tracing::warn!(secret = %self.inner.name, %error, "cannot refresh a secret; keeping the last value");
                        // Try again soon, not on every call while the store is down.
                        *stale_at = Instant::now() + self.inner.refresh.min(RETRY_AFTER_FAILURE);
                        Ok(secret.clone())
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// Makes the next [`get`](Self::get) look the secret up again (the last value still
    /// serves if that lookup fails).
    pub fn invalidate(&self) {
        if let Some((_, stale_at)) = self
            .inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            *stale_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn secrets_are_never_printed() {
        let secret = Secret::new("sk-dummy-value");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(secret.to_string(), "[redacted]");
        assert_eq!(secret.expose(), "sk-dummy-value");
    }

    #[tokio::test]
    async fn files_are_read_trimmed_and_names_stay_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("agentkit-secrets-{}", crate::generate_id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("api-key"), "sk-dummy-1\n").unwrap();
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let files = FileSecrets::new(&dir);
        assert_eq!(files.get("api-key").await.unwrap().expose(), "sk-dummy-1");
        assert_eq!(
            files.get("missing").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            files.get("empty").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        for bad in ["../api-key", "a/b", "..", ""] {
            let error = files.get(bad).await.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let unset = EnvSecrets.get("AGENTKIT_TEST_SECRET_THAT_IS_NOT_SET").await;
        assert_eq!(unset.unwrap_err().kind(), ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A source whose value the test sets, counting lookups; `None` fails them.
    struct Switch {
        value: Mutex<Option<&'static str>>,
        lookups: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl SecretSource for Switch {
        async fn get(&self, _name: &str) -> Result<Secret> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match *self.value.lock().unwrap() {
                Some(value) => Ok(Secret::new(value)),
                None => Err(Error::unavailable("the secret store is down")),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cached_secrets_refresh_keep_the_last_value_and_can_be_invalidated() {
        let source = Arc::new(Switch {
            value: Mutex::new(None),
            lookups: Default::default(),
        });
        let lookups = || source.lookups.load(std::sync::atomic::Ordering::SeqCst);
        let cached = CachedSecret::new(source.clone(), "api-key", Duration::from_secs(60));
        let never = cached.get().await.unwrap_err();
        assert_eq!(
            never.kind(),
            ErrorKind::Unavailable,
            "no value yet: the error"
        );

        *source.value.lock().unwrap() = Some("v1");
        assert_eq!(cached.get().await.unwrap().expose(), "v1");
        *source.value.lock().unwrap() = Some("v2");
        assert_eq!(cached.get().await.unwrap().expose(), "v1", "fresh: cached");
        let before = lookups();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cached.get().await.unwrap().expose(), "v2", "refreshed");
        assert_eq!(lookups(), before + 1);

        *source.value.lock().unwrap() = Some("v3");
        cached.invalidate();
        assert_eq!(
            cached.clone().get().await.unwrap().expose(),
            "v3",
            "invalidated"
        );

        *source.value.lock().unwrap() = None;
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            cached.get().await.unwrap().expose(),
            "v3",
            "store down: last value"
        );
    }
}
