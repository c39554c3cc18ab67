//! [`AwsSecrets`]: secrets from AWS Secrets Manager, requests signed with Signature Version 4.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{CachedSecret, EnvSecrets, Secret, SecretSource, http_client, unanswered};
use crate::{Error, ErrorKind, Result};

/// How long a lookup may take, connecting included, unless [`AwsSecrets::timeout`] says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often credentials from the environment are read again.
const ENV_REFRESH: Duration = Duration::from_secs(3600);

/// The longest secret id Secrets Manager takes (a name or an ARN).
const MAX_ID: usize = 2048;

/// The credentials requests are signed with, each a [`CachedSecret`] so that they can rotate
/// (files a credentials agent rewrites, say): when AWS refuses them, they are read again and
/// the lookup tried once more. The key id is not secret, but travels the same way so that a
/// new key id and its secret are read together.
#[derive(Clone, Debug)]
pub struct AwsCredentials {
    access_key_id: CachedSecret,
    secret_access_key: CachedSecret,
    session_token: Option<CachedSecret>,
}

impl AwsCredentials {
    /// Long-term credentials: an access key id and its secret.
    pub fn new(access_key_id: CachedSecret, secret_access_key: CachedSecret) -> Self {
        Self {
            access_key_id,
            secret_access_key,
            session_token: None,
        }
    }

    /// Adds the session token of temporary credentials (`X-Amz-Security-Token`).
    #[must_use]
    pub fn session_token(mut self, token: CachedSecret) -> Self {
        self.session_token = Some(token);
        self
    }

    /// The standard variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, when set,
    /// `AWS_SESSION_TOKEN`. `None` when the first two are not both set.
    pub fn from_env() -> Option<Self> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let env = |name: &str| CachedSecret::new(Arc::new(EnvSecrets), name, ENV_REFRESH);
        if !(set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY")) {
            return None;
        }
        let credentials = Self::new(env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"));
        Some(if set("AWS_SESSION_TOKEN") {
            credentials.session_token(env("AWS_SESSION_TOKEN"))
        } else {
            credentials
        })
    }

    /// The current values.
    async fn current(&self) -> Result<Keys> {
        Ok(Keys {
            access_key_id: self.access_key_id.get().await?,
            secret_access_key: self.secret_access_key.get().await?,
            session_token: match &self.session_token {
                Some(token) => Some(token.get().await?),
                None => None,
            },
        })
    }

    /// Makes the next lookup read every credential again.
    fn invalidate(&self) {
        self.access_key_id.invalidate();
        self.secret_access_key.invalidate();
        if let Some(token) = &self.session_token {
            token.invalidate();
        }
    }
}

/// One set of credential values.
#[derive(PartialEq, Eq)]
struct Keys {
    access_key_id: Secret,
    secret_access_key: Secret,
    session_token: Option<Secret>,
}

/// Secrets from AWS Secrets Manager (`GetSecretValue`, the `AWSCURRENT` version), the
/// requests signed with Signature Version 4.
///
/// A name is the secret's name or ARN, optionally followed by `#` and a key when the secret
/// string is a JSON object of keys (as the console stores key/value secrets):
/// `"prod/payments#stripe_api_key"`. Values that are not strings come back as their JSON
/// text; binary secrets are not supported.
///
/// Answers: a missing secret or key is [`ErrorKind::NotFound`]; credentials AWS does not
/// accept [`ErrorKind::Unauthenticated`] (after reading them again and retrying once, so
/// rotated credentials take effect without a restart); a policy that denies the read
/// [`ErrorKind::PermissionDenied`]; throttling [`ErrorKind::RateLimited`]; an unreachable or
/// failing service [`ErrorKind::Unavailable`]; a malformed name [`ErrorKind::InvalidInput`],
/// before anything is sent. Neither credentials nor secret values appear in errors or in
/// `Debug`. Put a [`CachedSecret`] over this source to keep a secret fresh without a request
/// per use.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use agentkit_core::secret::{AwsSecrets, CachedSecret};
///
/// # fn main() -> agentkit_core::Result<()> {
/// // AWS_REGION and the AWS_* credentials from the environment.
/// let aws = AwsSecrets::from_env()?.expect("AWS_REGION is set");
/// // A key/value secret's `api_key`, looked up again every five minutes.
/// let key = CachedSecret::new(Arc::new(aws), "prod/openai#api_key", Duration::from_secs(300));
/// # let _ = key;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AwsSecrets {
    client: reqwest::Client,
    region: Arc<str>,
    /// Without a trailing slash.
    endpoint: Arc<str>,
    /// What the `Host` header carries, as signed.
    host: Arc<str>,
    credentials: AwsCredentials,
}

impl fmt::Debug for AwsSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSecrets")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl AwsSecrets {
    /// Secrets Manager in `region` (`eu-west-1`), at its public endpoint.
    pub fn new(region: &str, credentials: AwsCredentials) -> Result<Self> {
        let region = region.trim();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::invalid_input(format!(
                "{region:?} is not an AWS region name"
            )));
        }
        let mut secrets = Self {
            client: http_client(DEFAULT_TIMEOUT)?,
            region: region.into(),
            endpoint: "".into(),
            host: "".into(),
            credentials,
        };
        secrets.set_endpoint(&format!("https://secretsmanager.{region}.amazonaws.com"))?;
        Ok(secrets)
    }

    /// From the standard environment: the region from `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`), credentials as [`AwsCredentials::from_env`] reads them, and
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER` when set. `Ok(None)` without a region; an error with
    /// a region but no credentials.
    pub fn from_env() -> Result<Option<Self>> {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let Some(region) = set("AWS_REGION").or_else(|| set("AWS_DEFAULT_REGION")) else {
            return Ok(None);
        };
        let credentials = AwsCredentials::from_env().ok_or_else(|| {
            Error::invalid_input(
                "AWS_REGION is set but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not",
            )
        })?;
        let secrets = Self::new(&region, credentials)?;
        match set("AWS_ENDPOINT_URL_SECRETS_MANAGER") {
            Some(endpoint) => secrets.endpoint(&endpoint).map(Some),
            None => Ok(Some(secrets)),
        }
    }

    /// Another endpoint: a VPC endpoint, or a local stand-in.
    pub fn endpoint(mut self, endpoint: &str) -> Result<Self> {
        self.set_endpoint(endpoint)?;
        Ok(self)
    }

    fn set_endpoint(&mut self, endpoint: &str) -> Result<()> {
        let endpoint = endpoint.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.path() == "/")
            .filter(|url| url.query().is_none() && url.username().is_empty());
        let Some(host) = url.as_ref().and_then(|url| {
            let host = url.host_str()?;
            Some(match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            })
        }) else {
            return Err(Error::invalid_input(format!(
                "the endpoint {endpoint:?} must be http(s)://host[:port]"
            )));
        };
        self.endpoint = endpoint.into();
        self.host = host.into();
        Ok(())
    }

    /// How long one lookup may take, connecting included; 10 s unless set.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self> {
        self.client = http_client(timeout)?;
        Ok(self)
    }

    /// One signed `GetSecretValue`: the secret string, or what AWS refused it with.
    async fn read(&self, id: &str, keys: &Keys) -> Result<Read> {
        let body = serde_json::to_vec(&serde_json::json!({ "SecretId": id }))
            .map_err(|e| Error::internal(format!("cannot encode the request: {e}")))?;
        let now = amz_date(SystemTime::now());
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", &*self.host),
            ("x-amz-date", &now),
            ("x-amz-target", "secretsmanager.GetSecretValue"),
        ];
        if let Some(token) = &keys.session_token {
            headers.push(("x-amz-security-token", token.expose()));
        }
        headers.sort_unstable_by_key(|(name, _)| *name);
        let authorization = authorization(
            &Signing {
                access_key_id: keys.access_key_id.expose(),
                secret_access_key: keys.secret_access_key.expose(),
                region: &self.region,
                service: "secretsmanager",
            },
            &Request {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                body: &body,
            },
        );
        let mut request = self.client.post(format!("{}/", self.endpoint));
        for (name, value) in headers.iter().filter(|(name, _)| *name != "host") {
            request = request.header(*name, *value);
        }
        let response = request
            .header("authorization", authorization)
            .body(body)
            .send()
            .await
            .map_err(|e| unanswered(&format!("AWS Secrets Manager at {}", self.endpoint), e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| {
            Error::unavailable("AWS Secrets Manager's answer was cut off").with_source(e)
        })?;
        if status == 200 {
            let value: SecretValue = serde_json::from_str(&text).map_err(|e| {
                Error::unavailable("AWS Secrets Manager answered with an unreadable body")
                    .with_source(e)
            })?;
            return match value.secret_string {
                Some(string) => Ok(Read::Found(string)),
                None => Err(Error::invalid_input(format!(
                    "the AWS secret {id} is binary: only secret strings are supported"
                ))),
            };
        }
        // AWS's JSON errors name a type and say why; no credentials or values in them.
        let error: AwsError = serde_json::from_str(&text).unwrap_or_default();
        let kind = error.kind.rsplit('#').next().unwrap_or_default().to_owned();
        Ok(Read::Refused {
            status,
            kind,
            message: error.message.or(error.message_lower).unwrap_or_default(),
        })
    }
}

/// What one request found.
enum Read {
    Found(String),
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
}

impl Read {
    /// Whether AWS refused the credentials themselves (worth reading them again).
    fn refused_credentials(&self) -> bool {
        matches!(self, Read::Refused { kind, .. } if unauthenticated(kind))
    }
}

fn unauthenticated(kind: &str) -> bool {
    matches!(
        kind,
        "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
    )
}

#[derive(Deserialize)]
struct SecretValue {
    #[serde(rename = "SecretString")]
    secret_string: Option<String>,
}

#[derive(Default, Deserialize)]
struct AwsError {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "message")]
    message_lower: Option<String>,
}

/// `id` or `id#key`, checked: an id of the characters names and ARNs use.
fn parse_name(name: &str) -> Result<(&str, Option<&str>)> {
    let (id, key) = match name.split_once('#') {
        Some((id, key)) => (id, Some(key)),
        None => (name, None),
    };
    let plain = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-:".contains(&b));
    if !plain || key.is_some_and(str::is_empty) {
        return Err(Error::invalid_input(format!(
            "the AWS secret name {name:?} must be a secret name or ARN, optionally #key"
        )));
    }
    Ok((id, key))
}

#[async_trait]
impl SecretSource for AwsSecrets {
    async fn get(&self, name: &str) -> Result<Secret> {
        let (id, key) = parse_name(name)?;
        let keys = self.credentials.current().await?;
        let mut read = self.read(id, &keys).await?;
        if read.refused_credentials() {
            // They may have rotated under us: read them again, and retry with new ones.
            self.credentials.invalidate();
            let fresh = self.credentials.current().await?;
            if fresh != keys {
                read = self.read(id, &fresh).await?;
            }
        }
        let string = match read {
            Read::Found(string) => string,
            Read::Refused {
                status,
                kind,
                message,
            } => return Err(refused(id, status, &kind, &message)),
        };
        let Some(key) = key else {
            return if string.is_empty() {
                Err(Error::not_found(format!("the AWS secret {id} is empty")))
            } else {
                Ok(Secret::new(string))
            };
        };
        let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&string)
            .map_err(|_| {
                Error::invalid_input(format!(
                    "the AWS secret {id} is not a JSON object of keys, so {name:?} names nothing"
                ))
            })?;
        match fields.remove(key) {
            Some(serde_json::Value::String(text)) if !text.is_empty() => Ok(Secret::new(text)),
            Some(serde_json::Value::String(_) | serde_json::Value::Null) | None => Err(
                Error::not_found(format!("the AWS secret {id} has no key {key:?}")),
            ),
            Some(other) => Ok(Secret::new(other.to_string())),
        }
    }
}

/// The error for an answer other than 200.
fn refused(id: &str, status: u16, kind: &str, message: &str) -> Error {
    let (error_kind, what) = match kind {
        "ResourceNotFoundException" => (ErrorKind::NotFound, "has no secret"),
        "AccessDeniedException" | "DecryptionFailure" => {
            (ErrorKind::PermissionDenied, "may not be read:")
        }
        "ThrottlingException" | "TooManyRequestsException" => {
            (ErrorKind::RateLimited, "throttled the lookup of")
        }
        "InvalidParameterException" | "InvalidRequestException" => {
            (ErrorKind::InvalidInput, "rejected the lookup of")
        }
        kind if unauthenticated(kind) => {
            (ErrorKind::Unauthenticated, "refused the credentials for")
        }
        _ if status >= 500 => (ErrorKind::Unavailable, "failed looking up"),
        _ => (ErrorKind::Internal, "answered unexpectedly for"),
    };
    let said = match (kind.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(": {kind}"),
        (true, false) => format!(": {message}"),
        (false, false) => format!(": {kind}: {message}"),
    };
    Error::new(
        error_kind,
        format!("AWS Secrets Manager {what} {id} ({status}){said}"),
    )
}

/// Who signs, and for what.
struct Signing<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    region: &'a str,
    service: &'a str,
}

/// A request as signed: `headers` lower-case, sorted by name, `x-amz-date` among them.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    /// Already canonical (names and values encoded, sorted).
    query: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

/// The `Authorization` header of Signature Version 4 (`AWS4-HMAC-SHA256`) for `request`.
fn authorization(signing: &Signing<'_>, request: &Request<'_>) -> String {
    let amz_date = request
        .headers
        .iter()
        .find(|(name, _)| *name == "x-amz-date")
        .map_or("", |(_, value)| *value);
    let date = amz_date.get(..8).unwrap_or_default();
    let mut canonical = format!("{}\n{}\n{}\n", request.method, request.path, request.query);
    for (name, value) in request.headers {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value.trim());
        canonical.push('\n');
    }
    let signed: Vec<&str> = request.headers.iter().map(|(name, _)| *name).collect();
    let signed = signed.join(";");
    canonical.push('\n');
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(&hex(&Sha256::digest(request.body)));
    let scope = format!("{date}/{}/{}/aws4_request", signing.region, signing.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = [date, signing.region, signing.service, "aws4_request"]
        .iter()
        .fold(
            format!("AWS4{}", signing.secret_access_key).into_bytes(),
            |key, part| hmac(&key, part.as_bytes()),
        );
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={}",
        signing.access_key_id,
        hex(&hmac(&key, to_sign.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// `time` as Signature Version 4 writes it: `20150830T123600Z` (UTC).
fn amz_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's own worked example of Signature Version 4 (the IAM `ListUsers` request of the
    /// General Reference's "create a signed request" tasks), with its published signature.
    #[test]
    fn signatures_match_the_published_aws_example() {
        let headers = [
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("host", "iam.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ];
        let header = authorization(
            &Signing {
                access_key_id: "AKIDEXAMPLE",
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                region: "us-east-1",
                service: "iam",
            },
            &Request {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &headers,
                body: b"",
            },
        );
        assert_eq!(
            header,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn dates_are_utc_in_the_signing_format() {
        let at = |secs| amz_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(1_440_938_160), "20150830T123600Z");
        assert_eq!(at(951_782_400), "20000229T000000Z", "a leap day");
        assert_eq!(
            at(4_107_542_399),
            "21000228T235959Z",
            "2100 is no leap year"
        );
    }

    #[test]
    fn names_are_ids_or_arns_with_an_optional_key() {
        assert_eq!(
            parse_name("prod/db#password").unwrap(),
            ("prod/db", Some("password"))
        );
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf";
        assert_eq!(parse_name(arn).unwrap(), (arn, None));
        for bad in ["", "a b", "a\"b", "a#", "a\nb", &"x".repeat(MAX_ID + 1)] {
            let error = parse_name(bad).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn endpoints_and_regions_are_checked() {
        let env = |name| CachedSecret::new(Arc::new(EnvSecrets), name, Duration::from_secs(1));
        let credentials =
            AwsCredentials::new(env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"));
        let secrets = AwsSecrets::new("eu-west-1", credentials.clone()).unwrap();
        assert_eq!(&*secrets.host, "secretsmanager.eu-west-1.amazonaws.com");
        let local = secrets.endpoint("http://127.0.0.1:4566/").unwrap();
        assert_eq!(&*local.host, "127.0.0.1:4566");
        assert_eq!(&*local.endpoint, "http://127.0.0.1:4566");
        for bad in ["EU_WEST", "", "eu west"] {
            let error = AwsSecrets::new(bad, credentials.clone()).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        for bad in [
            "localhost:4566",
            "ftp://x",
            "http://x/path",
            "http://x/?q=1",
        ] {
            let error = local.clone().endpoint(bad).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    /// A local server answering `GetSecretValue` as Secrets Manager does, which checks each
    /// request's signature against what it received (so that what is sent is what was
    /// signed: the host with its port, every signed header, the body) and the date's skew.
    mod fake {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::{IntoResponse, Response};
        use serde_json::{Value, json};

        use super::super::{Request, Signing, amz_date, authorization};

        #[derive(Default)]
        pub(super) struct Aws {
            /// Accepted key ids and their secrets.
            pub(super) keys: HashMap<String, String>,
            /// The session token required, if any.
            pub(super) token: Option<String>,
            pub(super) secrets: HashMap<String, String>,
            pub(super) denied: Vec<String>,
            pub(super) requests: usize,
        }

        pub(super) type Shared = Arc<Mutex<Aws>>;

        fn error(kind: &str, message: &str) -> Response {
            let body = json!({"__type": kind, "Message": message});
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }

        async fn get_secret_value(
            State(aws): State<Shared>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            let mut aws = aws.lock().unwrap();
            aws.requests += 1;
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            if header("x-amz-target") != "secretsmanager.GetSecretValue" {
                return error("UnknownOperationException", "");
            }
            let auth = header("authorization");
            let field = |name: &str| {
                auth.split([' ', ','])
                    .find_map(|part| part.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            let credential = field("Credential=");
            let signed = field("SignedHeaders=");
            let Some((key_id, scope)) = credential.split_once('/') else {
                return error("IncompleteSignature", "no credential");
            };
            let Some(secret) = aws.keys.get(key_id).cloned() else {
                return error(
                    "UnrecognizedClientException",
                    "The security token is invalid.",
                );
            };
            let scope: Vec<&str> = scope.split('/').collect();
            let date = header("x-amz-date");
            let now = amz_date(std::time::SystemTime::now());
            if scope.len() != 4 || !date.starts_with(scope[0]) || date.get(..11) != now.get(..11) {
                return error(
                    "InvalidSignatureException",
                    "Signature expired or scope wrong",
                );
            }
            if aws.token.is_some() && aws.token.as_deref() != Some(&header("x-amz-security-token"))
            {
                return error(
                    "UnrecognizedClientException",
                    "The security token is invalid.",
                );
            }
            let received: Vec<(String, String)> = signed
                .split(';')
                .map(|name| (name.to_owned(), header(name)))
                .collect();
            let received: Vec<(&str, &str)> = received
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let expected = authorization(
                &Signing {
                    access_key_id: key_id,
                    secret_access_key: &secret,
                    region: scope[1],
                    service: scope[2],
                },
                &Request {
                    method: "POST",
                    path: "/",
                    query: "",
                    headers: &received,
                    body: &body,
                },
            );
            let required = ["content-type", "host", "x-amz-date", "x-amz-target"];
            if expected != auth
                || !required
                    .iter()
                    .all(|name| signed.split(';').any(|s| s == *name))
            {
                return error(
                    "InvalidSignatureException",
                    "The request signature we calculated does not match.",
                );
            }
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|body| body["SecretId"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if aws.denied.contains(&id) {
                return error(
                    "AccessDeniedException",
                    "not authorized to perform GetSecretValue",
                );
            }
            match aws.secrets.get(&id) {
                Some(string) => axum::Json(json!({
                    "ARN": format!("arn:aws:secretsmanager:eu-west-1:123456789012:secret:{id}-AbCdEf"),
                    "Name": id,
                    "VersionId": "00000000-0000-0000-0000-000000000001",
                    "SecretString": string,
                    "VersionStages": ["AWSCURRENT"],
                }))
                .into_response(),
                None => error(
                    "ResourceNotFoundException",
                    "Secrets Manager can't find the specified secret.",
                ),
            }
        }

        /// Starts the fake; its endpoint and state.
        pub(super) async fn start(aws: Aws) -> (String, Shared) {
            let shared: Shared = Arc::new(Mutex::new(aws));
            let app = axum::Router::new()
                .route("/", axum::routing::post(get_secret_value))
                .with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (format!("http://{addr}"), shared)
        }
    }

    /// Credentials kept as files in a directory of their own, read again at most hourly.
    struct Files(std::path::PathBuf);

    impl Files {
        fn new(entries: &[(&str, &str)]) -> Self {
            let dir = std::env::temp_dir().join(format!("agentkit-aws-{}", crate::generate_id()));
            std::fs::create_dir_all(&dir).unwrap();
            let files = Self(dir);
            files.write(entries);
            files
        }

        fn write(&self, entries: &[(&str, &str)]) {
            for (name, value) in entries {
                std::fs::write(self.0.join(name), value).unwrap();
            }
        }

        fn cached(&self, name: &str) -> CachedSecret {
            let source = Arc::new(super::super::FileSecrets::new(&self.0));
            CachedSecret::new(source, name, Duration::from_secs(3600))
        }

        fn credentials(&self) -> AwsCredentials {
            AwsCredentials::new(self.cached("key-id"), self.cached("secret"))
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn secrets_and_their_keys_are_read_with_signed_requests() {
        let (endpoint, aws) = fake::start(fake::Aws {
            keys: [("AKIDDUMMY1".into(), "dummy-secret-1".into())].into(),
            secrets: [
                ("prod/openai".into(), "sk-dummy-openai".into()),
                (
                    "prod/db".into(),
                    r#"{"user":"app","password":"dummy-pw","port":5432}"#.into(),
                ),
                ("prod/empty".into(), String::new()),
            ]
            .into(),
            denied: vec!["prod/root".into()],
            ..fake::Aws::default()
        })
        .await;
        let files = Files::new(&[("key-id", "AKIDDUMMY1"), ("secret", "dummy-secret-1")]);
        let secrets = AwsSecrets::new("eu-west-1", files.credentials())
            .unwrap()
            .endpoint(&endpoint)
            .unwrap();
        let get = |name: &'static str| {
            let secrets = secrets.clone();
            async move { secrets.get(name).await }
        };
        assert_eq!(
            get("prod/openai").await.unwrap().expose(),
            "sk-dummy-openai"
        );
        assert_eq!(get("prod/db#password").await.unwrap().expose(), "dummy-pw");
        assert_eq!(get("prod/db#port").await.unwrap().expose(), "5432");
        for (name, kind) in [
            ("prod/db#nope", ErrorKind::NotFound),
            ("prod/missing", ErrorKind::NotFound),
            ("prod/empty", ErrorKind::NotFound),
            ("prod/openai#key", ErrorKind::InvalidInput),
            ("prod/root", ErrorKind::PermissionDenied),
        ] {
            let error = get(name).await.unwrap_err();
            assert_eq!(error.kind(), kind, "{name}: {error}");
        }
        let sent = aws.lock().unwrap().requests;
        for bad in ["", "a b", "prod/db#"] {
            assert_eq!(
                get(bad).await.unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        assert_eq!(aws.lock().unwrap().requests, sent, "refused before sending");
        let printed = format!("{secrets:?}");
        assert!(!printed.contains("dummy-secret"), "{printed}");
    }

    #[tokio::test]
    async fn rotated_credentials_are_read_again_when_aws_refuses_the_old_ones() {
        let (endpoint, aws) = fake::start(fake::Aws {
            keys: [("AKIDDUMMY1".into(), "dummy-secret-1".into())].into(),
            token: Some("dummy-session-1".into()),
            secrets: [("prod/openai".into(), "sk-dummy-openai".into())].into(),
            ..fake::Aws::default()
        })
        .await;
        let files = Files::new(&[
            ("key-id", "AKIDDUMMY1"),
            ("secret", "dummy-secret-1"),
            ("token", "dummy-session-1"),
        ]);
        let credentials = files.credentials().session_token(files.cached("token"));
        let secrets = AwsSecrets::new("eu-west-1", credentials)
            .unwrap()
            .endpoint(&endpoint)
            .unwrap();
        assert_eq!(
            secrets.get("prod/openai").await.unwrap().expose(),
            "sk-dummy-openai"
        );

        // AWS rotates the temporary credentials before the files are rewritten: refused.
        {
            let mut aws = aws.lock().unwrap();
            aws.keys = [("AKIDDUMMY2".into(), "dummy-secret-2".into())].into();
            aws.token = Some("dummy-session-2".into());
        }
        let refused = secrets.get("prod/openai").await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Unauthenticated, "{refused}");
        assert!(!refused.to_string().contains("dummy-secret"), "{refused}");

        // Rewritten: the next lookup is refused once, reads them again and succeeds, although
        // the cached values had an hour to live.
        files.write(&[
            ("key-id", "AKIDDUMMY2"),
            ("secret", "dummy-secret-2"),
            ("token", "dummy-session-2"),
        ]);
        let before = aws.lock().unwrap().requests;
        assert_eq!(
            secrets.get("prod/openai").await.unwrap().expose(),
            "sk-dummy-openai"
        );
        assert_eq!(aws.lock().unwrap().requests, before + 2);
    }

    #[tokio::test]
    async fn a_failing_or_unreachable_service_is_unavailable() {
        let failing = axum::Router::new().fallback(|| async {
            let body =
                serde_json::json!({"__type": "InternalServiceError", "Message": "try later"});
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(body),
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, failing).await.unwrap() });
        let files = Files::new(&[("key-id", "AKIDDUMMY1"), ("secret", "dummy-secret-1")]);
        let secrets = AwsSecrets::new("eu-west-1", files.credentials()).unwrap();
        let error = secrets
            .clone()
            .endpoint(&endpoint)
            .unwrap()
            .get("prod/x")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
        assert!(error.message().contains("InternalServiceError"), "{error}");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let error = secrets
            .endpoint(&endpoint)
            .unwrap()
            .timeout(Duration::from_secs(2))
            .unwrap()
            .get("prod/x")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    }
}
