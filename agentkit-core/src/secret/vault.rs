//! [`VaultSecrets`]: secrets from HashiCorp Vault's key/value engine (version 2).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{CachedSecret, EnvSecrets, Secret, SecretSource, http_client, unanswered};
use crate::{Error, ErrorKind, Result};

/// How long a lookup may take, connecting included, unless [`VaultSecrets::timeout`] says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a token read from a file (a Vault Agent sink) is read again.
const TOKEN_FILE_REFRESH: Duration = Duration::from_secs(30);

/// How often a token from `VAULT_TOKEN` is read again (the environment does not change, but a
/// cached value needs some refresh).
const TOKEN_ENV_REFRESH: Duration = Duration::from_secs(3600);

/// Secrets from HashiCorp Vault's key/value secrets engine, version 2 (`GET
/// /v1/{mount}/data/{path}`), the latest version of each.
///
/// A name is the secret's path under the mount, then `#` and the field:
/// `"payments/stripe#api_key"`. A secret with a single field may be named by its path alone.
/// Fields that are not strings come back as their JSON text.
///
/// The token is itself a [`CachedSecret`], so it can rotate too: read from a file that Vault
/// Agent keeps renewed, say. When Vault refuses the token (403), it is read again and the
/// lookup tried once more with the new one, so a rotated token takes effect without a restart.
/// Put a [`CachedSecret`] over this source to keep a secret fresh without asking Vault on
/// every use.
///
/// Answers: a missing path or field is [`ErrorKind::NotFound`]; a refused token
/// [`ErrorKind::PermissionDenied`]; a sealed, unreachable or failing Vault
/// [`ErrorKind::Unavailable`]; a name that is not a plain path (`..`, `?`, `%`, empty segments)
/// [`ErrorKind::InvalidInput`], before anything is sent. Neither the token nor secret values
/// appear in errors or in `Debug`.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use agentkit_core::secret::{CachedSecret, VaultSecrets};
///
/// # fn main() -> agentkit_core::Result<()> {
/// // VAULT_ADDR and VAULT_TOKEN_FILE (kept fresh by Vault Agent) from the environment.
/// let vault = VaultSecrets::from_env()?.expect("VAULT_ADDR is set");
/// // The model provider's key, looked up again every five minutes.
/// let key = CachedSecret::new(Arc::new(vault), "llm/openai#api_key", Duration::from_secs(300));
/// # let _ = key;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct VaultSecrets {
    client: reqwest::Client,
    /// Without a trailing slash.
    addr: Arc<str>,
    mount: Arc<str>,
    namespace: Option<Arc<str>>,
    token: CachedSecret,
}

impl fmt::Debug for VaultSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSecrets")
            .field("addr", &self.addr)
            .field("mount", &self.mount)
            .field("namespace", &self.namespace)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl VaultSecrets {
    /// Secrets from the Vault at `addr` (`https://vault.internal:8200`), authenticated by
    /// `token`, under the mount `secret` (see [`mount`](Self::mount)).
    pub fn new(addr: &str, token: CachedSecret) -> Result<Self> {
        let addr = addr.trim().trim_end_matches('/');
        let host = addr
            .strip_prefix("https://")
            .or_else(|| addr.strip_prefix("http://"));
        if !host.is_some_and(|host| !host.is_empty() && !host.contains(['/', '?', '#', ' '])) {
            return Err(Error::invalid_input(format!(
                "the Vault address {addr:?} must be http(s)://host[:port]"
            )));
        }
        Ok(Self {
            client: http_client(DEFAULT_TIMEOUT)?,
            addr: addr.into(),
            mount: "secret".into(),
            namespace: None,
            token,
        })
    }

    /// From Vault's own environment variables: `VAULT_ADDR`, the token from the file named by
    /// `VAULT_TOKEN_FILE` (read again every 30 s and whenever Vault refuses it) or else from
    /// `VAULT_TOKEN`, `VAULT_NAMESPACE` when set, and the mount from `AGENTKIT_VAULT_MOUNT`
    /// (default `secret`). `Ok(None)` when `VAULT_ADDR` is not set; an error when it is and no
    /// token is.
    pub fn from_env() -> Result<Option<Self>> {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let Some(addr) = set("VAULT_ADDR") else {
            return Ok(None);
        };
        let token = if let Some(path) = set("VAULT_TOKEN_FILE") {
            CachedSecret::from_file(path.trim(), TOKEN_FILE_REFRESH)
                .map_err(|e| Error::invalid_input(format!("VAULT_TOKEN_FILE: {}", e.message())))?
        } else if set("VAULT_TOKEN").is_some() {
            CachedSecret::new(Arc::new(EnvSecrets), "VAULT_TOKEN", TOKEN_ENV_REFRESH)
        } else {
            return Err(Error::invalid_input(
                "VAULT_ADDR is set but neither VAULT_TOKEN_FILE nor VAULT_TOKEN is",
            ));
        };
        let mut vault = Self::new(&addr, token)?;
        if let Some(namespace) = set("VAULT_NAMESPACE") {
            vault = vault.namespace(namespace.trim());
        }
        if let Some(mount) = set("AGENTKIT_VAULT_MOUNT") {
            vault = vault.mount(mount.trim());
        }
        Ok(Some(vault))
    }

    /// The key/value (version 2) engine's mount path; `secret` unless set.
    #[must_use]
    pub fn mount(mut self, mount: &str) -> Self {
        self.mount = mount.trim_matches('/').into();
        self
    }

    /// The Vault Enterprise namespace sent with every lookup (`X-Vault-Namespace`).
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// How long one lookup may take, connecting included; 10 s unless set.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self> {
        self.client = http_client(timeout)?;
        Ok(self)
    }

    /// One request with `token`: the secret's fields, or the status Vault refused with.
    async fn read(&self, path: &str, token: &Secret) -> Result<Read> {
        let url = format!("{}/v1/{}/data/{path}", self.addr, self.mount);
        let mut request = self
            .client
            .get(&url)
            .header("X-Vault-Token", token.expose());
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", &**namespace);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unanswered(&format!("Vault at {}", self.addr), e))?;
        let status = response.status().as_u16();
        if status == 200 {
            let body: KvResponse = response.json().await.map_err(|e| {
                Error::unavailable(format!("Vault answered {path} with an unreadable body"))
                    .with_source(e)
            })?;
            return Ok(Read::Found(body.data.data));
        }
        // Vault's `errors` are messages such as "permission denied": no secrets in them.
        let errors = response
            .json::<VaultErrors>()
            .await
            .map(|body| body.errors.join("; "))
            .unwrap_or_default();
        Ok(Read::Refused(status, errors))
    }
}

/// What one request found.
enum Read {
    Found(serde_json::Map<String, serde_json::Value>),
    Refused(u16, String),
}

#[derive(Deserialize)]
struct KvResponse {
    data: KvData,
}

#[derive(Deserialize)]
struct KvData {
    /// Null for a deleted version.
    #[serde(default)]
    data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct VaultErrors {
    #[serde(default)]
    errors: Vec<String>,
}

/// `path` or `path#field`, checked: path segments of letters, digits and `-_.@`, none empty
/// or a dot path.
fn parse_name(name: &str) -> Result<(&str, Option<&str>)> {
    let (path, field) = match name.split_once('#') {
        Some((path, field)) => (path, Some(field)),
        None => (name, None),
    };
    let plain = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    };
    if !path.split('/').all(plain) || field.is_some_and(str::is_empty) {
        return Err(Error::invalid_input(format!(
            "the Vault secret name {name:?} must be path/to/secret or path/to/secret#field"
        )));
    }
    Ok((path, field))
}

#[async_trait]
impl SecretSource for VaultSecrets {
    async fn get(&self, name: &str) -> Result<Secret> {
        let (path, field) = parse_name(name)?;
        let token = self.token.get().await?;
        let mut read = self.read(path, &token).await?;
        if matches!(read, Read::Refused(403, _)) {
            // The token may have rotated under us: read it again, and retry with a new one.
            self.token.invalidate();
            let fresh = self.token.get().await?;
            if fresh != token {
                read = self.read(path, &fresh).await?;
            }
        }
        let mut fields = match read {
            Read::Found(fields) => fields,
            Read::Refused(status, errors) => return Err(refused(path, status, &errors)),
        };
        let value = match field {
            Some(field) => fields.remove(field).ok_or_else(|| {
                Error::not_found(format!("the Vault secret {path} has no field {field:?}"))
            })?,
            None if fields.len() == 1 => fields
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or_default(),
            None => {
                return Err(Error::invalid_input(format!(
                    "the Vault secret {path} has {} fields: name one as {path}#field",
                    fields.len()
                )));
            }
        };
        match value {
            serde_json::Value::String(text) if !text.is_empty() => Ok(Secret::new(text)),
            serde_json::Value::String(_) | serde_json::Value::Null => Err(Error::not_found(
                format!("the Vault secret {name} is empty"),
            )),
            other => Ok(Secret::new(other.to_string())),
        }
    }
}

/// The error for a status Vault answered other than 200.
fn refused(path: &str, status: u16, errors: &str) -> Error {
    let said = if errors.is_empty() {
        String::new()
    } else {
        format!(": {errors}")
    };
    let (kind, what) = match status {
        404 => (ErrorKind::NotFound, "has no secret at"),
        401 | 403 => (ErrorKind::PermissionDenied, "refused the token for"),
        429 => (ErrorKind::RateLimited, "is rate limiting lookups of"),
        400 => (ErrorKind::InvalidInput, "rejected the lookup of"),
        500..=599 => (
            ErrorKind::Unavailable,
            "failed (sealed or down?) looking up",
        ),
        _ => (ErrorKind::Internal, "answered unexpectedly for"),
    };
    Error::new(kind, format!("Vault {what} {path} ({status}){said}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_paths_with_an_optional_field() {
        assert_eq!(
            parse_name("app/db#password").unwrap(),
            ("app/db", Some("password"))
        );
        assert_eq!(parse_name("api-key").unwrap(), ("api-key", None));
        assert_eq!(
            parse_name("a/b.c@d_e#x y").unwrap(),
            ("a/b.c@d_e", Some("x y"))
        );
        for bad in [
            "", "a//b", "/a", "a/", "../a", "a/./b", "a?b", "a%2f", "a b", "a#",
        ] {
            let error = parse_name(bad).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn addresses_must_be_http_urls() {
        let token = CachedSecret::new(Arc::new(EnvSecrets), "VAULT_TOKEN", Duration::from_secs(1));
        for bad in [
            "vault:8200",
            "https://",
            "ftp://vault",
            "https://vault/v1?x",
        ] {
            let error = VaultSecrets::new(bad, token.clone()).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let vault = VaultSecrets::new("https://vault.internal:8200/", token).unwrap();
        assert_eq!(&*vault.addr, "https://vault.internal:8200");
    }
}
