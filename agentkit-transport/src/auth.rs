//! Who is calling: API keys and HS256 JWTs, turned into a [`Principal`] (tenant and scopes).

use std::collections::HashMap;
use std::fmt;

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
#[derive(Clone, Default)]
pub struct Authenticator {
    /// SHA-256 of each key → tenant: lookups do not compare secrets byte by byte.
    keys: HashMap<[u8; 32], String>,
    jwt: Option<DecodingKey>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.keys.len())
            .field("jwt", &self.jwt.is_some())
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
        self.keys.insert(digest(key), tenant.into());
        self
    }

    /// Parses `tenant:key,tenant:key` (the `AGENTKIT_API_KEYS` format).
    pub fn with_api_keys_spec(mut self, spec: &str) -> Result<Self> {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tenant, key) = pair
                .split_once(':')
                .filter(|(t, k)| !t.trim().is_empty() && !k.trim().is_empty())
                .ok_or_else(|| {
                    Error::invalid_input(
                        "API keys must be given as tenant:key pairs separated by commas",
                    )
                })?;
            self = self.with_api_key(tenant.trim(), key.trim());
        }
        Ok(self)
    }

    /// Accepts HS256 JWTs signed with `secret`.
    pub fn with_jwt_secret(mut self, secret: &[u8]) -> Result<Self> {
        if secret.len() < 16 {
            return Err(Error::invalid_input(
                "the JWT secret must be at least 16 bytes",
            ));
        }
        self.jwt = Some(DecodingKey::from_secret(secret));
        Ok(self)
    }

    /// Whether any credential is configured (then `/v1` needs one).
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// The principal of an `Authorization` header value.
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
        if let Some(tenant) = self.keys.get(&digest(token)) {
            return Ok(Principal {
                tenant: tenant.clone(),
                subject: None,
                scopes: None,
            });
        }
        match &self.jwt {
            Some(key) if token.matches('.').count() == 2 => self.verify_jwt(token, key),
            _ => Err(unauthenticated("invalid credentials")),
        }
    }

    fn verify_jwt(&self, token: &str, key: &DecodingKey) -> Result<Principal> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as Jwt;
            let why = match e.kind() {
                Jwt::ExpiredSignature => "the token has expired",
                Jwt::InvalidAlgorithm => "the token's algorithm is not accepted",
                Jwt::InvalidSignature => "the token's signature is not valid",
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
