//! The session WebSocket: `{"input": ...}` frames in, the turn's events out, in order.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn frames_carry_each_turns_events_in_order() {
    let served = serve(with_demo().build().unwrap()).await;
    let url = format!(
        "{}/v1/agents/assistant/sessions/ws-1/ws",
        served.base.replace("http", "ws")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    for (turn, input) in [(1, "What is 17 + 25?"), (2, "thanks")] {
        ws.send(Message::Text(json!({"input": input}).to_string().into()))
            .await
            .unwrap();
        let mut types = Vec::new();
        let done = loop {
            let frame = next_json(&mut ws).await;
            let kind = frame["type"].as_str().unwrap().to_owned();
            types.push(kind.clone());
            if kind == "done" {
                break frame;
            }
            assert_ne!(kind, "error", "{frame}");
        };
        assert_eq!(done["version"], turn);
        assert_eq!(done["session_id"], "ws-1");
        let mut distinct = types.clone();
        distinct.dedup();
        if turn == 1 {
            assert_eq!(
                distinct,
                [
                    "tool_call_started",
                    "tool_call_finished",
                    "text_delta",
                    "usage",
                    "done"
                ]
            );
            assert_eq!(done["output"], "17 + 25 = 42");
        } else {
            assert_eq!(distinct, ["text_delta", "usage", "done"]);
            assert_eq!(done["output"], "You said: thanks");
        }
    }

    // A malformed frame gets an error frame; the socket stays usable.
    ws.send(Message::Text("{nope".into())).await.unwrap();
    let error = next_json(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "invalid_input");
    ws.send(Message::Text(json!({"input": ""}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "invalid_input");
    ws.send(Message::Text(
        json!({"input": "still here"}).to_string().into(),
    ))
    .await
    .unwrap();
    loop {
        let frame = next_json(&mut ws).await;
        if frame["type"] == "done" {
            assert_eq!(frame["version"], 3);
            break;
        }
    }
    ws.close(None).await.unwrap();
}

/// A frame over the body limit closes the socket with 1009 and a reason, rather than
/// dropping the connection without a word.
#[tokio::test]
async fn a_frame_over_the_limit_is_closed_with_1009() {
    let served = serve(with_demo().body_limit(4096).build().unwrap()).await;
    let url = format!(
        "{}/v1/agents/assistant/sessions/ws-big/ws",
        served.base.replace("http", "ws")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let big = json!({"input": "x".repeat(10_000)}).to_string();
    ws.send(Message::Text(big.into())).await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("an answer in time");
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1009);
            assert!(frame.reason.contains("4096"), "{}", frame.reason);
        }
        other => panic!("expected a close frame with 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_agent_is_refused_before_the_upgrade() {
    let served = serve(with_demo().build().unwrap()).await;
    let url = format!(
        "{}/v1/agents/nobody/sessions/s/ws",
        served.base.replace("http", "ws")
    );
    let error = tokio_tungstenite::connect_async(url).await.unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 404),
        other => panic!("expected an HTTP 404, got {other}"),
    }
}

/// Browsers cannot set `Authorization` on a WebSocket: the credential comes as the subprotocol
/// `bearer.<key>` beside `agentkit`, which the server selects; a wrong one is a 401.
#[tokio::test]
async fn browsers_authenticate_with_a_subprotocol() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let api = with_demo()
        .auth(agentkit_transport::Authenticator::none().with_api_key("acme", "dummy-key-acme"))
        .build()
        .unwrap();
    let served = serve(api).await;
    let url = format!(
        "{}/v1/agents/assistant/sessions/ws-2/ws",
        served.base.replace("http", "ws")
    );
    let offer = |protocols: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        request
    };

    let (mut ws, response) =
        tokio_tungstenite::connect_async(offer("agentkit, bearer.dummy-key-acme"))
            .await
            .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "agentkit");
    ws.send(Message::Text(
        json!({"input": "What is 2 + 3?"}).to_string().into(),
    ))
    .await
    .unwrap();
    let done = loop {
        let frame = next_json(&mut ws).await;
        if frame["type"] == "done" {
            break frame;
        }
    };
    assert!(done["output"].as_str().unwrap().contains('5'), "{done}");
    ws.close(None).await.unwrap();

    for refused in [
        tokio_tungstenite::connect_async(offer("agentkit, bearer.wrong-key")).await,
        tokio_tungstenite::connect_async(url.as_str()).await,
    ] {
        match refused.unwrap_err() {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                assert_eq!(response.status(), 401)
            }
            other => panic!("expected an HTTP 401, got {other}"),
        }
    }
}

#[tokio::test]
async fn a_frame_sent_again_on_a_new_socket_with_its_key_gets_the_same_turn() {
    // The socket dropped before the answer arrived; the client reconnects and sends the frame
    // again with the same key.
    let served = serve(with_demo().build().unwrap()).await;
    let url = format!(
        "{}/v1/agents/assistant/sessions/ws-keyed/ws",
        served.base.replace("http", "ws")
    );
    let frame = json!({"input": "What is 1 + 2?", "idempotency_key": "frame-1"}).to_string();
    let mut dones = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(Message::Text(frame.clone().into())).await.unwrap();
        let done = loop {
            let frame = next_json(&mut ws).await;
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == "done" {
                break frame;
            }
        };
        dones.push(done);
    }
    assert_eq!(dones[0]["output"], "1 + 2 = 3");
    assert_eq!(dones[1]["output"], dones[0]["output"]);
    assert_eq!(dones[1]["version"], 1, "not appended again");
}
