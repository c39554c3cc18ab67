//! Credentials: API keys and HS256 JWTs; missing, malformed, wrong, expired, `alg: none`,
//! wrong tenant, wrong scope; and tenants never see each other's sessions.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use agentkit_transport::{AgentOptions, Api, Authenticator};
use serde_json::{Value, json};
use support::*;

const SECRET: &[u8] = b"dummy-jwt-secret-for-tests-only";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

async fn service() -> Served {
    let auth = Authenticator::none()
        .with_api_keys_spec("acme:dummy-key-acme,beta:dummy-key-beta")
        .unwrap()
        .with_jwt_secret(SECRET)
        .unwrap();
    let api = Api::builder()
        .agent("assistant", demo_agent())
        .agent_with(
            "acme-only",
            demo_agent(),
            AgentOptions {
                tenants: Some(vec!["acme".into()]),
                ..AgentOptions::default()
            },
        )
        .auth(auth)
        .build()
        .unwrap();
    serve(api).await
}

async fn invoke(served: &Served, agent: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}/v1/agents/{agent}/invoke", served.base))
        .json(&json!({"input": "What is 1 + 1?"}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn api_keys_and_bad_credentials() {
    let served = service().await;
    assert_eq!(
        invoke(&served, "assistant", Some("Bearer dummy-key-acme"))
            .await
            .status(),
        200
    );
    for bad in [
        None,
        Some("dummy-key-acme"),
        Some("Basic abc"),
        Some("Bearer "),
        Some("Bearer wrong-key"),
    ] {
        let response = invoke(&served, "assistant", bad).await;
        assert_eq!(
            error_code(response, 401).await,
            "unauthenticated",
            "{bad:?}"
        );
    }
    // A header that is there but not text is called malformed, not missing.
    let response = client()
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .json(&json!({"input": "What is 1 + 1?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{body}"
    );
    // Operations routes stay open for probes.
    assert_eq!(
        client()
            .get(format!("{}/healthz", served.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn jwts_valid_expired_forged_and_alg_none() {
    let served = service().await;
    let valid = jwt(
        json!({"sub": "user-1", "tenant": "acme", "exp": now() + 300}),
        SECRET,
    );
    assert_eq!(
        invoke(&served, "assistant", Some(&format!("Bearer {valid}")))
            .await
            .status(),
        200
    );

    let expired = jwt(
        json!({"sub": "user-1", "tenant": "acme", "exp": now() - 600}),
        SECRET,
    );
    let forged = jwt(
        json!({"sub": "user-1", "tenant": "acme", "exp": now() + 300}),
        b"another-secret-of-enough-length",
    );
    let no_exp = jwt(json!({"sub": "user-1", "tenant": "acme"}), SECRET);
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload =
        b64url(format!(r#"{{"sub":"admin","tenant":"acme","exp":{}}}"#, now() + 300).as_bytes());
    let alg_none = format!("{header}.{payload}.");
    let malformed = "abc.def.ghi".to_owned();
    for token in [expired, forged, no_exp, alg_none, malformed] {
        let response = invoke(&served, "assistant", Some(&format!("Bearer {token}"))).await;
        assert_eq!(
            error_code(response, 401).await,
            "unauthenticated",
            "{token}"
        );
    }
}

#[tokio::test]
async fn wrong_tenant_and_wrong_scope_are_403() {
    let served = service().await;
    assert_eq!(
        invoke(&served, "acme-only", Some("Bearer dummy-key-acme"))
            .await
            .status(),
        200
    );
    let response = invoke(&served, "acme-only", Some("Bearer dummy-key-beta")).await;
    assert_eq!(error_code(response, 403).await, "permission_denied");
    let beta = jwt(json!({"tenant": "beta", "exp": now() + 300}), SECRET);
    let response = invoke(&served, "acme-only", Some(&format!("Bearer {beta}"))).await;
    assert_eq!(error_code(response, 403).await, "permission_denied");

    let scoped = jwt(
        json!({"tenant": "acme", "scope": "agent:assistant", "exp": now() + 300}),
        SECRET,
    );
    let bearer = format!("Bearer {scoped}");
    assert_eq!(
        invoke(&served, "assistant", Some(&bearer)).await.status(),
        200
    );
    let response = invoke(&served, "acme-only", Some(&bearer)).await;
    assert_eq!(error_code(response, 403).await, "permission_denied");
}

#[tokio::test]
async fn one_tenant_never_sees_another_tenants_session() {
    let served = service().await;
    let c = client();
    let session = format!("{}/v1/agents/assistant/sessions/shared-id", served.base);
    let created = c
        .post(format!("{session}/messages"))
        .header("authorization", "Bearer dummy-key-acme")
        .json(&json!({"input": "acme's secret plan"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let as_beta = c
        .get(&session)
        .header("authorization", "Bearer dummy-key-beta")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(as_beta, 404).await, "not_found");
    let delete = c
        .delete(&session)
        .header("authorization", "Bearer dummy-key-beta")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(delete, 404).await, "not_found");
    let beta_turn: Value = c
        .post(format!("{session}/messages"))
        .header("authorization", "Bearer dummy-key-beta")
        .json(&json!({"input": "beta's own"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(beta_turn["version"], 1, "beta starts its own session");
    let acme: Value = c
        .get(&session)
        .header("authorization", "Bearer dummy-key-acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(acme["version"], 1);
    assert_eq!(
        acme["messages"][0]["content"][0]["text"],
        "acme's secret plan"
    );
}

/// Keys and JWT secrets read from files that rotate: a signing secret is replaced with an
/// overlap in which both are accepted, then the old one is refused; an API key is replaced;
/// a file that does not parse keeps the credentials before it.
#[tokio::test]
async fn keys_and_jwt_secrets_rotate_through_their_files() {
    use agentkit_core::secret::{CachedSecret, FileSecrets};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("agentkit-auth-{}", agentkit_core::generate_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    let refresh = Duration::from_millis(100);
    let file = |name: &str| CachedSecret::new(Arc::new(FileSecrets::new(&dir)), name, refresh);
    const OLD: &[u8] = b"dummy-jwt-secret-old-0001";
    const NEW: &[u8] = b"dummy-jwt-secret-new-0002";
    write("jwt", "dummy-jwt-secret-old-0001\n");
    write("keys", "acme:dummy-key-1\n");
    let auth = Authenticator::none()
        .with_jwt_secrets_from(file("jwt"))
        .with_api_keys_from(file("keys"));
    let api = Api::builder()
        .agent("assistant", demo_agent())
        .auth(auth)
        .build()
        .unwrap();
    let served = serve(api).await;
    let token = |secret| {
        let claims = json!({"sub": "user-1", "tenant": "acme", "exp": now() + 300});
        format!("Bearer {}", jwt(claims, secret))
    };
    let (old, new) = (token(OLD), token(NEW));
    let status = |value: String| {
        let served = &served;
        async move { invoke(served, "assistant", Some(&value)).await.status() }
    };
    let settle = || tokio::time::sleep(refresh * 3);

    assert_eq!(status(old.clone()).await, 200);
    assert_eq!(status(new.clone()).await, 401);
    assert_eq!(status("Bearer dummy-key-1".into()).await, 200);

    // The overlap: the new secret signs, tokens signed with the old one still pass.
    write(
        "jwt",
        "dummy-jwt-secret-new-0002\ndummy-jwt-secret-old-0001\n",
    );
    settle().await;
    assert_eq!(status(new.clone()).await, 200);
    assert_eq!(status(old.clone()).await, 200);

    // The old secret retired; the API key replaced.
    write("jwt", "dummy-jwt-secret-new-0002\n");
    write("keys", "acme:dummy-key-2,beta:dummy-key-3");
    settle().await;
    assert_eq!(status(old.clone()).await, 401);
    assert_eq!(status(new.clone()).await, 200);
    assert_eq!(status("Bearer dummy-key-1".into()).await, 401);
    assert_eq!(status("Bearer dummy-key-2".into()).await, 200);
    assert_eq!(status("Bearer dummy-key-3".into()).await, 200);

    // A botched rotation (a secret too short, a pair without a tenant) keeps what was there.
    write("jwt", "short\n");
    write("keys", "no-tenant-here");
    settle().await;
    assert_eq!(status(new.clone()).await, 200);
    assert_eq!(status("Bearer dummy-key-2".into()).await, 200);
    std::fs::remove_dir_all(&dir).unwrap();
}
