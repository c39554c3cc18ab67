//! `VaultSecrets` against a real local HTTP server speaking Vault's key/value (version 2) API:
//! Vault itself cannot be installed on this machine, so the server answers as Vault does
//! (`GET /v1/{mount}/data/{path}`, `X-Vault-Token`, `X-Vault-Namespace`, 403 with
//! `{"errors": ["permission denied"]}` for a token it does not know, 404 for a missing path).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::ErrorKind;
use agentkit_core::secret::{CachedSecret, FileSecrets, SecretSource, VaultSecrets};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the fake Vault holds: the token it accepts, its secrets by mount and path, and the
/// requests it was sent.
#[derive(Default)]
struct Vault {
    token: String,
    namespace: Option<String>,
    secrets: HashMap<String, Value>,
    requests: Vec<(String, Option<String>)>,
}

type Shared = Arc<Mutex<Vault>>;

async fn read(
    State(vault): State<Shared>,
    Path((mount, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut vault = vault.lock().unwrap();
    let namespace = header("x-vault-namespace");
    vault
        .requests
        .push((format!("{mount}/{path}"), namespace.clone()));
    if header("x-vault-token").as_deref() != Some(vault.token.as_str())
        || namespace != vault.namespace
    {
        let body = json!({"errors": ["permission denied"]});
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    match vault.secrets.get(&format!("{mount}/{path}")) {
        Some(data) => axum::Json(json!({
            "request_id": "00000000-0000-0000-0000-000000000000",
            "lease_id": "",
            "renewable": false,
            "lease_duration": 0,
            "data": {"data": data, "metadata": {"version": 1, "destroyed": false}},
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({"errors": []}))).into_response(),
    }
}

/// Starts the fake; its address and state.
async fn start(vault: Vault) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(vault));
    let app = axum::Router::new()
        .route("/v1/{mount}/data/{*path}", axum::routing::get(read))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), shared)
}

/// A token kept in a file of its own directory, as Vault Agent's sink writes it.
struct TokenFile {
    dir: std::path::PathBuf,
}

impl TokenFile {
    fn new(token: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("agentkit-vault-{}", agentkit_core::generate_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = Self { dir };
        file.write(token);
        file
    }

    fn write(&self, token: &str) {
        std::fs::write(self.dir.join("token"), format!("{token}\n")).unwrap();
    }

    /// The token, read again at most hourly (so only a refusal makes it read sooner).
    fn cached(&self) -> CachedSecret {
        CachedSecret::new(
            Arc::new(FileSecrets::new(&self.dir)),
            "token",
            Duration::from_secs(3600),
        )
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn fields_are_read_by_path_and_name_and_missing_ones_are_not_found() {
    let (addr, vault) = start(Vault {
        token: "dummy-token-1".into(),
        secrets: HashMap::from([
            (
                "secret/payments/stripe".into(),
                json!({"api_key": "sk-dummy-stripe", "webhook": "whsec-dummy"}),
            ),
            ("secret/openai".into(), json!({"key": "sk-dummy-openai"})),
            ("secret/limits".into(), json!({"burst": 40, "empty": ""})),
            (
                "kv/team/db".into(),
                json!({"password": "dummy-db-password"}),
            ),
        ]),
        ..Vault::default()
    })
    .await;
    let token = TokenFile::new("dummy-token-1");
    let secrets = VaultSecrets::new(&addr, token.cached()).unwrap();

    let get = |name: &'static str| {
        let secrets = secrets.clone();
        async move { secrets.get(name).await }
    };
    assert_eq!(
        get("payments/stripe#api_key").await.unwrap().expose(),
        "sk-dummy-stripe"
    );
    assert_eq!(
        get("payments/stripe#webhook").await.unwrap().expose(),
        "whsec-dummy"
    );
    assert_eq!(
        get("openai").await.unwrap().expose(),
        "sk-dummy-openai",
        "one field: no name needed"
    );
    assert_eq!(
        get("limits#burst").await.unwrap().expose(),
        "40",
        "not a string: its JSON"
    );

    let several = get("payments/stripe").await.unwrap_err();
    assert_eq!(several.kind(), ErrorKind::InvalidInput, "{several}");
    assert!(several.message().contains("#field"), "{several}");
    for missing in [
        "payments/paypal#api_key",
        "payments/stripe#nope",
        "limits#empty",
    ] {
        assert_eq!(
            get(missing).await.unwrap_err().kind(),
            ErrorKind::NotFound,
            "{missing}"
        );
    }

    let other_mount = VaultSecrets::new(&addr, token.cached())
        .unwrap()
        .mount("kv");
    assert_eq!(
        other_mount.get("team/db#password").await.unwrap().expose(),
        "dummy-db-password"
    );

    // Names that are not plain paths are refused before anything is sent.
    let sent = vault.lock().unwrap().requests.len();
    for bad in ["../sys/raw", "a?b", "a/%2e%2e", "", "a//b", "a#"] {
        assert_eq!(
            get(bad).await.unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
    assert_eq!(vault.lock().unwrap().requests.len(), sent);
}

#[tokio::test]
async fn a_rotated_secret_shows_through_a_cached_secret_once_refreshed() {
    let (addr, vault) = start(Vault {
        token: "dummy-token-1".into(),
        secrets: HashMap::from([("secret/app".into(), json!({"key": "v1"}))]),
        ..Vault::default()
    })
    .await;
    let token = TokenFile::new("dummy-token-1");
    let source = Arc::new(VaultSecrets::new(&addr, token.cached()).unwrap());
    let key = CachedSecret::new(source, "app#key", Duration::from_secs(3600));
    assert_eq!(key.get().await.unwrap().expose(), "v1");

    vault
        .lock()
        .unwrap()
        .secrets
        .insert("secret/app".into(), json!({"key": "v2"}));
    assert_eq!(key.get().await.unwrap().expose(), "v1", "fresh: cached");
    key.invalidate();
    assert_eq!(key.get().await.unwrap().expose(), "v2", "refreshed");
}

#[tokio::test]
async fn a_refused_token_is_read_again_and_a_rotated_one_takes_effect() {
    let (addr, vault) = start(Vault {
        token: "dummy-token-1".into(),
        namespace: Some("team-a".into()),
        secrets: HashMap::from([("secret/app".into(), json!({"key": "v1"}))]),
        ..Vault::default()
    })
    .await;
    let token = TokenFile::new("dummy-token-1");
    let secrets = VaultSecrets::new(&addr, token.cached())
        .unwrap()
        .namespace("team-a");
    assert_eq!(secrets.get("app").await.unwrap().expose(), "v1");
    assert_eq!(
        vault.lock().unwrap().requests.last().unwrap().1.as_deref(),
        Some("team-a"),
        "the namespace is sent"
    );

    // Vault now wants a new token, which the agent has not written yet: refused.
    vault.lock().unwrap().token = "dummy-token-2".into();
    let refused = secrets.get("app").await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::PermissionDenied, "{refused}");
    assert!(!refused.to_string().contains("dummy-token"), "{refused}");

    // Once it is written, the next lookup is refused once, reads the file again and succeeds,
    // although the cached token had hours to live.
    token.write("dummy-token-2");
    let before = vault.lock().unwrap().requests.len();
    assert_eq!(secrets.get("app").await.unwrap().expose(), "v1");
    assert_eq!(vault.lock().unwrap().requests.len(), before + 2);

    let printed = format!("{secrets:?}");
    assert!(!printed.contains("dummy-token"), "{printed}");
    assert!(printed.contains("team-a"), "{printed}");
}

#[tokio::test]
async fn a_vault_that_is_down_or_failing_is_unavailable() {
    // A sealed Vault answers 503 to every read.
    let sealed = axum::Router::new().fallback(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"errors": ["Vault is sealed"]})),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, sealed).await.unwrap() });
    let token = TokenFile::new("dummy-token-1");
    let error = VaultSecrets::new(&addr, token.cached())
        .unwrap()
        .get("app#key")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.message().contains("Vault is sealed"), "{error}");

    // Nothing listening: unavailable, within the timeout.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let error = VaultSecrets::new(&addr, token.cached())
        .unwrap()
        .timeout(Duration::from_secs(2))
        .unwrap()
        .get("app#key")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
}
