//! Signed webhooks: the job document POSTed to the job's `callback_url` when it ends, with an
//! HMAC-SHA256 signature of the body, retried with backoff while the receiver fails.

use std::fmt;
use std::time::Duration;

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
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    secret: Vec<u8>,
    backoff: Backoff,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("secret", &"[redacted]")
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl WebhookSender {
    /// A sender signing with `secret`: six attempts, 200 ms base backoff, 10 s per attempt.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(Error::invalid_input("the webhook secret must not be empty"));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            secret,
            backoff: Backoff::new()
                .max_attempts(6)
                .base(Duration::from_millis(200)),
        })
    }

    /// Uses `backoff` between attempts.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// POSTs `doc` to `url`, signed, until a 2xx or the attempts run out.
    pub async fn deliver(&self, url: &str, doc: &JobDoc) -> Result<()> {
        let body = serde_json::to_vec(doc)
            .map_err(|e| Error::internal(format!("cannot encode the job: {e}")))?;
        let signature = sign(&self.secret, &body);
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
                Err(e) => Error::unavailable(format!("cannot reach the webhook receiver: {e}")),
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

/// Checks a callback URL when the job is submitted: absolute http(s).
pub(crate) fn validate_callback(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::invalid_input(format!("invalid callback_url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::invalid_input(
            "callback_url must be an absolute http or https URL",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn callback_urls_must_be_http() {
        assert!(validate_callback("https://example.com/hook").is_ok());
        assert!(validate_callback("ftp://example.com/hook").is_err());
        assert!(validate_callback("not a url").is_err());
    }
}
