//! Who is calling: API keys and HS256 JWTs, turned into a [`Principal`] (tenant and scopes).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use agentkit_core::secret::{CachedSecret, Secret};
use agentkit_core::{Error, ErrorKind, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The tenant the caller acts for.
    pub tenant: String,
    /// The subject (user or service), when the credential names one.
    pub subject: Option<String>,
    /// What the caller may do; `None` means everything within its tenant (API keys, JWTs
    /// without a `scope` claim).
    pub scopes: Option<Vec<String>>,
}

impl Principal {
    /// The principal of a service that does not authenticate: tenant `default`, every scope.
    pub fn anonymous() -> Self {
        Self {
            tenant: "default".to_owned(),
            subject: None,
            scopes: None,
        }
    }

    /// Whether the caller may use `agent`: scopes `*`, `agents:invoke` or `agent:{name}`.
    pub fn may_use(&self, agent: &str) -> bool {
        self.scopes.as_ref().is_none_or(|scopes| {
            scopes.iter().any(|s| {
                s == "*" || s == "agents:invoke" || s.strip_prefix("agent:") == Some(agent)
            })
        })
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    tenant: String,
    #[serde(default)]
    scope: Option<String>,
}

/// Checks bearer credentials. With nothing configured every caller is
/// [`Principal::anonymous`]; otherwise `/v1` routes need `Authorization: Bearer <credential>`,
/// where the credential is an API key or an HS256 JWT with `tenant`, `exp` and optional `sub`
/// and `scope` (space-separated) claims.
///
/// Keys and JWT secrets given to the `with_*` methods are fixed. Those given as
/// [`CachedSecret`]s ([`with_jwt_secrets_from`](Self::with_jwt_secrets_from),
/// [`with_api_keys_from`](Self::with_api_keys_from): a mounted secret file, Vault, AWS) are
/// read again as the secret refreshes ([`refresh`](Self::refresh), which the service calls
/// before each authentication), so keys and signing secrets rotate without a restart: list
/// the new JWT secret and the old one while tokens signed with the old one are still about,
/// then drop the old one. Clones share what was read.
#[derive(Clone, Default)]
pub struct Authenticator {
    fixed: Arc<Credentials>,
    rotating: Option<Arc<Rotating>>,
}

/// Accepted API keys and JWT secrets.
#[derive(Clone, Default)]
struct Credentials {
    /// SHA-256 of each key → tenant: lookups do not compare secrets byte by byte.
    keys: HashMap<[u8; 32], String>,
    /// Each secret a JWT may be signed with: the current one and, while rotating, older ones.
    jwt: Vec<DecodingKey>,
}

impl Credentials {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.jwt.is_empty()
    }

    fn add_api_keys(&mut self, spec: &str) -> Result<()> {
        for pair in spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (tenant, key) = pair
                .split_once(':')
                .filter(|(t, k)| !t.trim().is_empty() && !k.trim().is_empty())
                .ok_or_else(|| {
                    Error::invalid_input(
                        "API keys must be given as tenant:key pairs separated by commas or lines",
                    )
                })?;
            self.keys
                .insert(digest(key.trim()), tenant.trim().to_owned());
        }
        Ok(())
    }

    /// The credentials of rotating secrets: JWT secrets one per line, API key pairs.
    fn parse(jwt: Option<&Secret>, api_keys: Option<&Secret>) -> Result<Self> {
        let mut credentials = Self::default();
        let lines = jwt.into_iter().flat_map(|secrets| secrets.expose().lines());
        for line in lines.map(str::trim).filter(|line| !line.is_empty()) {
            credentials.add_jwt_secret(line.as_bytes())?;
        }
        if let Some(keys) = api_keys {
            credentials.add_api_keys(keys.expose())?;
        }
        Ok(credentials)
    }

    fn add_jwt_secret(&mut self, secret: &[u8]) -> Result<()> {
        if secret.len() < 16 {
            return Err(Error::invalid_input(
                "the JWT secret must be at least 16 bytes",
            ));
        }
        self.jwt.push(DecodingKey::from_secret(secret));
        Ok(())
    }
}

/// Keys and JWT secrets read from secrets that rotate.
struct Rotating {
    jwt: Option<CachedSecret>,
    api_keys: Option<CachedSecret>,
    loaded: RwLock<Loaded>,
}

/// The secrets' values last read, and the credentials they gave.
#[derive(Default)]
struct Loaded {
    jwt: Option<Secret>,
    api_keys: Option<Secret>,
    credentials: Arc<Credentials>,
}

impl Rotating {
    fn loaded(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the secrets (cached: a lock and a clock reading while fresh) and, when either
    /// changed, the credentials again. A value that does not parse keeps the last good ones.
    async fn refresh(&self) -> Result<()> {
        let jwt = match &self.jwt {
            Some(secret) => Some(secret.get().await?),
            None => None,
        };
        let api_keys = match &self.api_keys {
            Some(secret) => Some(secret.get().await?),
            None => None,
        };
        {
            let loaded = self.loaded();
            if loaded.jwt == jwt && loaded.api_keys == api_keys {
                return Ok(());
            }
        }
        let parsed = Credentials::parse(jwt.as_ref(), api_keys.as_ref());
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        match parsed {
            Ok(credentials) => {
                tracing::info!(
                    api_keys = credentials.keys.len(),
                    jwt_secrets = credentials.jwt.len(),
                    "credentials reloaded"
                );
                loaded.credentials = Arc::new(credentials);
            }
            // The message says what is wrong with the format, never the values.
            Err(error) => tracing::warn!(
                %error,
                "rotated credentials do not parse; keeping the ones before"
            ),
        }
        // Either way, not parsed again until they change again.
        loaded.jwt = jwt;
        loaded.api_keys = api_keys;
        Ok(())
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rotating = self
            .rotating
            .as_ref()
            .map(|r| r.loaded().credentials.clone());
        let count =
            |get: fn(&Credentials) -> usize| get(&self.fixed) + rotating.as_deref().map_or(0, get);
        f.debug_struct("Authenticator")
            .field("api_keys", &count(|c| c.keys.len()))
            .field("jwt_secrets", &count(|c| c.jwt.len()))
            .field("rotating", &self.rotating.is_some())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Authenticator {
    /// No authentication.
    pub fn none() -> Self {
        Self::default()
    }

    /// Accepts `key` for `tenant`.
    #[must_use]
    pub fn with_api_key(mut self, tenant: impl Into<String>, key: &str) -> Self {
        Arc::make_mut(&mut self.fixed)
            .keys
            .insert(digest(key), tenant.into());
        self
    }

    /// Parses `tenant:key,tenant:key` (the `AGENTKIT_API_KEYS` format; lines separate pairs
    /// too).
    pub fn with_api_keys_spec(mut self, spec: &str) -> Result<Self> {
        Arc::make_mut(&mut self.fixed).add_api_keys(spec)?;
        Ok(self)
    }

    /// Accepts HS256 JWTs signed with `secret` (besides any secret given before).
    pub fn with_jwt_secret(mut self, secret: &[u8]) -> Result<Self> {
        Arc::make_mut(&mut self.fixed).add_jwt_secret(secret)?;
        Ok(self)
    }

    /// Accepts HS256 JWTs signed with any of the secrets `secrets` holds, one per line (the
    /// current one and, while rotating, the previous ones), read again as it refreshes.
    #[must_use]
    pub fn with_jwt_secrets_from(self, secrets: CachedSecret) -> Self {
        let api_keys = self.rotating.as_ref().and_then(|r| r.api_keys.clone());
        self.rotating_from(Some(secrets), api_keys)
    }

    /// Accepts the API keys `spec` holds (`tenant:key` pairs separated by commas or lines),
    /// read again as it refreshes.
    #[must_use]
    pub fn with_api_keys_from(self, spec: CachedSecret) -> Self {
        let jwt = self.rotating.as_ref().and_then(|r| r.jwt.clone());
        self.rotating_from(jwt, Some(spec))
    }

    fn rotating_from(mut self, jwt: Option<CachedSecret>, api_keys: Option<CachedSecret>) -> Self {
        self.rotating = Some(Arc::new(Rotating {
            jwt,
            api_keys,
            loaded: RwLock::default(),
        }));
        self
    }

    /// Reads rotating keys and JWT secrets again when their secrets have refreshed (a cheap
    /// check while they are fresh). An error only when a secret could never be read; a value
    /// that does not parse is logged and the credentials before it kept.
    pub async fn refresh(&self) -> Result<()> {
        match &self.rotating {
            Some(rotating) => rotating.refresh().await,
            None => Ok(()),
        }
    }

    /// Whether any credential is configured (then `/v1` needs one).
    pub fn is_enabled(&self) -> bool {
        !self.fixed.is_empty() || self.rotating.is_some()
    }

    /// The principal of an `Authorization` header value, by the credentials read so far (see
    /// [`refresh`](Self::refresh)).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        if !self.is_enabled() {
            return Ok(Principal::anonymous());
        }
        let unauthenticated = |m: &str| Error::new(ErrorKind::Unauthenticated, m.to_owned());
        let header = authorization
            .ok_or_else(|| unauthenticated("missing Authorization: Bearer credentials"))?;
        let (scheme, token) = header.trim().split_once(' ').ok_or_else(|| {
            unauthenticated("malformed Authorization header; expected `Bearer <credential>`")
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(unauthenticated(
                "malformed Authorization header; expected `Bearer <credential>`",
            ));
        }
        let token = token.trim();
        let rotating = self
            .rotating
            .as_ref()
            .map(|r| r.loaded().credentials.clone());
        let all = || std::iter::once(&*self.fixed).chain(rotating.as_deref());
        let hashed = digest(token);
        if let Some(tenant) = all().find_map(|credentials| credentials.keys.get(&hashed)) {
            return Ok(Principal {
                tenant: tenant.clone(),
                subject: None,
                scopes: None,
            });
        }
        let mut jwt = all().flat_map(|credentials| &credentials.jwt).peekable();
        if jwt.peek().is_none() || token.matches('.').count() != 2 {
            return Err(unauthenticated("invalid credentials"));
        }
        // Any accepted secret may have signed it: a signature that does not verify under one
        // is tried under the next; any other failure (expired, no tenant) is the answer.
        let mut last = None;
        for key in jwt {
            match verify_jwt(token, key) {
                Err(error) if error.message() == BAD_SIGNATURE => last = Some(error),
                done => return done,
            }
        }
        Err(last.unwrap_or_else(|| unauthenticated("invalid credentials")))
    }
}

/// The message of a JWT whose signature does not verify under a secret.
const BAD_SIGNATURE: &str = "the token's signature is not valid";

fn verify_jwt(token: &str, key: &DecodingKey) -> Result<Principal> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    validation.leeway = 5;
    let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as Jwt;
        let why = match e.kind() {
            Jwt::ExpiredSignature => "the token has expired",
            Jwt::InvalidAlgorithm => "the token's algorithm is not accepted",
            Jwt::InvalidSignature => BAD_SIGNATURE,
            Jwt::MissingRequiredClaim(_) => "the token lacks a required claim",
            _ => "the token is not valid",
        };
        Error::new(ErrorKind::Unauthenticated, why)
    })?;
    let claims = data.claims;
    if claims.tenant.trim().is_empty() {
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            "the token names no tenant",
        ));
    }
    Ok(Principal {
        tenant: claims.tenant,
        subject: claims.sub,
        scopes: claims
            .scope
            .map(|s| s.split_whitespace().map(str::to_owned).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_specs_parse_and_reject_garbage() {
        let auth = Authenticator::none()
            .with_api_keys_spec("acme:k1, beta:k2")
            .unwrap();
        assert_eq!(auth.authenticate(Some("Bearer k2")).unwrap().tenant, "beta");
        assert!(Authenticator::none().with_api_keys_spec("nocolon").is_err());
        assert!(Authenticator::none().with_api_keys_spec(":key").is_err());
    }

    #[test]
    fn a_jwt_is_checked_under_each_accepted_secret_and_says_why_it_fails() {
        let (old, new) = (b"dummy-jwt-secret-old-0001", b"dummy-jwt-secret-new-0002");
        let auth = Authenticator::none()
            .with_jwt_secret(new)
            .unwrap()
            .with_jwt_secret(old)
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = |secret: &[u8], exp: u64| {
            let claims = serde_json::json!({"tenant": "acme", "exp": exp});
            let key = jsonwebtoken::EncodingKey::from_secret(secret);
            let token =
                jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
            format!("Bearer {token}")
        };
        let check = |header: String| auth.authenticate(Some(&header));
        assert_eq!(check(token(old, now + 60)).unwrap().tenant, "acme");
        assert_eq!(check(token(new, now + 60)).unwrap().tenant, "acme");
        // Signed with the second secret but expired: expiry is the reason, not the signature.
        let expired = check(token(old, now - 600)).unwrap_err();
        assert_eq!(expired.message(), "the token has expired");
        let forged = check(token(b"dummy-jwt-secret-other-003", now + 60)).unwrap_err();
        assert_eq!(forged.message(), BAD_SIGNATURE);
        assert_eq!(forged.kind(), ErrorKind::Unauthenticated);
    }

    #[test]
    fn scopes_gate_agents() {
        let p = Principal {
            tenant: "t".into(),
            subject: None,
            scopes: Some(vec!["agent:assistant".into()]),
        };
        assert!(p.may_use("assistant"));
        assert!(!p.may_use("admin"));
        assert!(Principal::anonymous().may_use("anything"));
    }
}
