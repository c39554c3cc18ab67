//! Signed webhooks: the job document POSTed to the job's `callback_url` when it ends, with an
//! HMAC-SHA256 signature of the body, retried with backoff while the receiver fails.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use agentkit_core::secret::CachedSecret;
use agentkit_core::{Backoff, Error, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::JobDoc;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Agentkit-Signature";

/// The signature header value of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Whether `header` is the signature of `body` under `secret` (constant-time comparison).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let bytes: Vec<u8> = (0..32)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

/// Delivers job documents to callback URLs.
///
/// Callback URLs come from callers, so by default a sender refuses to reach loopback, private,
/// link-local, shared and other non-public addresses (a caller could otherwise point the service
/// at its own network: a cloud metadata endpoint, an admin port): an address literal is refused
/// outright, and host names are resolved by a resolver that keeps only public addresses (so a
/// name cannot be re-pointed between check and connect). [`allow_private_targets`] lifts this,
/// for tests and for receivers inside a trusted network.
///
/// [`allow_private_targets`]: WebhookSender::allow_private_targets
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    secret: SigningKey,
    backoff: Backoff,
    allow_private: bool,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("secret", &"[redacted]")
            .field("backoff", &self.backoff)
            .field("allow_private", &self.allow_private)
            .finish()
    }
}

/// What a sender signs with.
#[derive(Clone)]
enum SigningKey {
    Fixed(Vec<u8>),
    /// Looked up (through its cache) for each delivery, so a rotated secret signs the next one.
    Rotating(CachedSecret),
}

/// The HTTP client of a sender (with the public-only resolver unless `allow_private`).
fn client(allow_private: bool) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if !allow_private {
        builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly));
    }
    builder
        .build()
        .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
}

/// Whether `ip` is an address on the public internet.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Resolves host names to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl WebhookSender {
    /// A sender signing with `secret`: six attempts, 200 ms base backoff, 10 s per attempt,
    /// public addresses only.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(Error::invalid_input("the webhook secret must not be empty"));
        }
        Self::signing_with(SigningKey::Fixed(secret))
    }

    /// A sender signing with a secret that rotates: each delivery is signed with its current
    /// value (receivers should accept the old and the new secret while a rotation settles).
    pub fn with_rotating_secret(secret: CachedSecret) -> Result<Self> {
        Self::signing_with(SigningKey::Rotating(secret))
    }

    fn signing_with(secret: SigningKey) -> Result<Self> {
        Ok(Self {
            client: client(false)?,
            secret,
            backoff: Backoff::new()
                .max_attempts(6)
                .base(Duration::from_millis(200)),
            allow_private: false,
        })
    }

    /// Lets callbacks reach loopback and private addresses (off by default; see the type's
    /// docs).
    pub fn allow_private_targets(mut self, allow: bool) -> Result<Self> {
        self.client = client(allow)?;
        self.allow_private = allow;
        Ok(self)
    }

    /// Uses `backoff` between attempts.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// POSTs `doc` to `url`, signed, until a 2xx or the attempts run out.
    pub async fn deliver(&self, url: &str, doc: &JobDoc) -> Result<()> {
        if !self.allow_private {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| Error::invalid_input(format!("invalid callback_url: {e}")))?;
            if private_literal(&parsed) {
                return Err(Error::invalid_input(
                    "callback_url points at a private address; not calling it",
                ));
            }
        }
        let body = serde_json::to_vec(doc)
            .map_err(|e| Error::internal(format!("cannot encode the job: {e}")))?;
        let signature = match &self.secret {
            SigningKey::Fixed(secret) => sign(secret, &body),
            SigningKey::Rotating(secret) => sign(secret.get().await?.expose().as_bytes(), &body),
        };
        let mut attempt = 1;
        loop {
            let sent = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header("X-Agentkit-Job", &doc.job_id)
                .body(body.clone())
                .send()
                .await;
            let error = match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => Error::unavailable(format!(
                    "the webhook receiver answered {}",
                    response.status()
                )),
                Err(e) => Error::unavailable(format!(
                    "cannot reach the webhook receiver: {}",
                    with_sources(&e)
                )),
            };
            match self.backoff.next_delay(attempt, &error, None) {
                Some(delay) => {
                    tracing::warn!(job_id = %doc.job_id, attempt, error = %error, "webhook failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(error),
            }
            attempt += 1;
        }
    }
}

/// An error and its sources, as one line.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether `url`'s host is an address literal that is not public. (Names are checked when
/// resolved, by the sender's resolver.)
fn private_literal(url: &reqwest::Url) -> bool {
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .is_some_and(|ip| !is_public(ip))
}

/// Whether `url`'s host is `localhost` or under it (RFC 6761: always loopback).
fn localhost(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        let name = h.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || name.ends_with(".localhost")
    })
}

/// Checks a callback URL when the job is submitted: absolute http(s), and unless
/// `allow_private`, not a host the workers would refuse to call (so the caller hears of it at
/// once, as a 400, rather than from a webhook that never comes).
pub(crate) fn validate_callback(url: &str, allow_private: bool) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::invalid_input(format!("invalid callback_url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::invalid_input(
            "callback_url must be an absolute http or https URL",
        ));
    }
    if !allow_private && (private_literal(&parsed) || localhost(&parsed)) {
        return Err(Error::invalid_input(
            "callback_url points at a loopback or private address, which webhooks do not call \
             (allow with AGENTKIT_WEBHOOK_ALLOW_PRIVATE=true)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a rotating secret, each delivery is signed with the secret's value at the time.
    #[tokio::test]
    async fn a_rotated_secret_signs_the_next_delivery() {
        use std::sync::{Arc, Mutex};

        let dir =
            std::env::temp_dir().join(format!("agentkit-hook-{}", agentkit_core::generate_id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hook-secret"), "dummy-old\n").unwrap();
        let seen: Arc<Mutex<Vec<(String, axum::body::Bytes)>>> = Arc::default();
        let app = {
            let seen = seen.clone();
            axum::Router::new().route(
                "/hook",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let seen = seen.clone();
                        async move {
                            let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
                            seen.lock().unwrap().push((signature, body));
                        }
                    },
                ),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let secret = CachedSecret::from_file(dir.join("hook-secret"), Duration::ZERO).unwrap();
        let sender = WebhookSender::with_rotating_secret(secret)
            .unwrap()
            .allow_private_targets(true)
            .unwrap();
        let doc = JobDoc::queued("job-1".into(), crate::jobs::JobSpec::default());
        sender.deliver(&url, &doc).await.unwrap();
        std::fs::write(dir.join("hook-secret"), "dummy-new\n").unwrap();
        sender.deliver(&url, &doc).await.unwrap();

        let seen = seen.lock().unwrap().clone();
        assert!(verify(b"dummy-old", &seen[0].1, &seen[0].0));
        assert!(verify(b"dummy-new", &seen[1].1, &seen[1].0));
        assert!(
            !verify(b"dummy-old", &seen[1].1, &seen[1].0),
            "signed with the new one"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let signature = sign(b"dummy-secret", b"{\"job_id\":\"1\"}");
        assert!(signature.starts_with("sha256=") && signature.len() == 71);
        assert!(verify(b"dummy-secret", b"{\"job_id\":\"1\"}", &signature));
        assert!(!verify(b"dummy-secret", b"{\"job_id\":\"2\"}", &signature));
        assert!(!verify(b"other-secret", b"{\"job_id\":\"1\"}", &signature));
        assert!(!verify(b"dummy-secret", b"{}", "sha256=zz"));
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed() {
        let doc = JobDoc::queued("job-1".into(), crate::jobs::JobSpec::default());
        let sender = WebhookSender::new(b"dummy-secret".to_vec()).unwrap();
        for url in [
            "http://127.0.0.1:9/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9/hook",
        ] {
            let error = sender.deliver(url, &doc).await.unwrap_err();
            assert_eq!(
                error.kind(),
                agentkit_core::ErrorKind::InvalidInput,
                "{url}"
            );
        }
        // A name that resolves only to loopback fails at resolution, without a connection.
        let error = sender
            .clone()
            .with_backoff(Backoff::new().max_attempts(1))
            .deliver("http://localhost:9/hook", &doc)
            .await
            .unwrap_err();
        assert!(error.message().contains("no public address"), "{error}");
    }

    #[test]
    fn callback_urls_must_be_http() {
        assert!(validate_callback("https://example.com/hook", false).is_ok());
        assert!(validate_callback("ftp://example.com/hook", false).is_err());
        assert!(validate_callback("not a url", false).is_err());
        for private in [
            "http://127.0.0.1:9000/hook",
            "http://[::1]/hook",
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:8080/hook",
            "http://api.LOCALHOST./hook",
        ] {
            let error = validate_callback(private, false).unwrap_err();
            assert_eq!(
                error.kind(),
                agentkit_core::ErrorKind::InvalidInput,
                "{private}"
            );
            assert!(error.message().contains("private"), "{private}: {error}");
            assert!(
                validate_callback(private, true).is_ok(),
                "{private} when allowed"
            );
        }
    }
}
