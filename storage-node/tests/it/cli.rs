//! `storage-node admin list|add|remove` against a mock of the broadcaster's admin API.
//!
//! The mock is deliberate: these tests pin the CLI's side of the wire contract (method, path, JSON in and
//! out) and its exact output and exit codes. The real broadcaster and real migrations are tested end to
//! end in the broadcaster's suite.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::harness::run_cli;

/// How long the mock takes to "migrate": the CLI must wait for it, with no overall timeout.
const MIGRATION_DELAY: Duration = Duration::from_millis(1500);

#[derive(Debug, Default)]
struct Mock {
    nodes: Vec<String>,
    version: u64,
    /// Every request seen: `METHOD path body`.
    seen: Vec<String>,
}

type Shared = Arc<Mutex<Mock>>;

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn list(State(m): State<Shared>) -> Response {
    let mut m = m.lock().unwrap();
    m.seen.push("GET /admin/nodes".into());
    Json(json!({ "version": m.version, "replication": 2, "nodes": m.nodes })).into_response()
}

async fn add(State(m): State<Shared>, Json(body): Json<Value>) -> Response {
    let node = body["node"].as_str().unwrap_or_default().to_owned();
    {
        let mut m = m.lock().unwrap();
        m.seen.push(format!("POST /admin/nodes {body}"));
        if m.nodes.contains(&node) {
            return refuse(
                StatusCode::CONFLICT,
                format!("node {node} is already in the ring"),
            );
        }
        if node.ends_with(":1") {
            return refuse(
                StatusCode::BAD_GATEWAY,
                format!("node {node} is unreachable: connection refused"),
            );
        }
    }
    tokio::time::sleep(MIGRATION_DELAY).await;
    let mut m = m.lock().unwrap();
    m.nodes.push(node.clone());
    m.version += 1;
    Json(json!({ "node": node, "migrated": 42 })).into_response()
}

async fn remove(State(m): State<Shared>, Path(node): Path<String>) -> Response {
    let mut m = m.lock().unwrap();
    m.seen.push(format!("DELETE /admin/nodes/{node}"));
    let Some(pos) = m.nodes.iter().position(|n| *n == node) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("node {node} is not in the ring"),
        );
    };
    if m.nodes.len() == 1 {
        return refuse(
            StatusCode::CONFLICT,
            format!("node {node} is the last node of the ring and cannot be removed"),
        );
    }
    m.nodes.remove(pos);
    m.version += 1;
    Json(json!({ "node": node, "migrated": 7 })).into_response()
}

/// Starts the mock on a free port; it lives as long as the test's runtime.
async fn mock(nodes: &[&str]) -> (SocketAddr, Shared) {
    let state: Shared = Arc::new(Mutex::new(Mock {
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        version: 1,
        seen: Vec::new(),
    }));
    let app = Router::new()
        .route("/admin/nodes", get(list).post(add))
        .route("/admin/nodes/{node}", delete(remove))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_add_remove_output() {
    let (addr, state) = mock(&["127.0.0.1:8090", "127.0.0.1:8091", "127.0.0.1:8092"]).await;
    let b = addr.to_string();

    let (status, stdout, stderr) = run_cli(&["admin", "list", &b], &[]).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "Storage cluster nodes:\n  - 127.0.0.1:8090\n  - 127.0.0.1:8091\n  - 127.0.0.1:8092\n"
    );
    assert_eq!(stderr, "");

    let started = Instant::now();
    let (status, stdout, stderr) = run_cli(&["admin", "add", &b, "127.0.0.1:8093"], &[]).await;
    assert!(status.success(), "{stderr}");
    assert!(
        started.elapsed() >= MIGRATION_DELAY,
        "returned before the migration finished"
    );
    assert_eq!(
        stdout,
        "Successfully added node: 127.0.0.1:8093\nNumber of files migrated: 42\n"
    );

    let (status, stdout, stderr) = run_cli(&["admin", "remove", &b, "127.0.0.1:8090"], &[]).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "Successfully removed node: 127.0.0.1:8090\nNumber of files migrated: 7\n"
    );

    let (_, stdout, _) = run_cli(&["admin", "list", &format!("http://{b}")], &[]).await;
    assert_eq!(
        stdout,
        "Storage cluster nodes:\n  - 127.0.0.1:8091\n  - 127.0.0.1:8092\n  - 127.0.0.1:8093\n"
    );

    let seen = state.lock().unwrap().seen.clone();
    assert_eq!(
        seen,
        [
            "GET /admin/nodes",
            r#"POST /admin/nodes {"node":"127.0.0.1:8093"}"#,
            "DELETE /admin/nodes/127.0.0.1:8090",
            "GET /admin/nodes",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_1_with_the_broadcasters_message() {
    let (addr, state) = mock(&["127.0.0.1:8090"]).await;
    let b = addr.to_string();
    for (args, message) in [
        (
            vec!["admin", "add", &b, "127.0.0.1:8090"],
            "Error: node 127.0.0.1:8090 is already in the ring\n",
        ),
        (
            vec!["admin", "add", &b, "127.0.0.1:1"],
            "Error: node 127.0.0.1:1 is unreachable: connection refused\n",
        ),
        (
            vec!["admin", "remove", &b, "127.0.0.1:9999"],
            "Error: node 127.0.0.1:9999 is not in the ring\n",
        ),
        (
            vec!["admin", "remove", &b, "127.0.0.1:8090"],
            "Error: node 127.0.0.1:8090 is the last node of the ring and cannot be removed\n",
        ),
    ] {
        let (status, stdout, stderr) = run_cli(&args, &[]).await;
        assert_eq!(status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(stderr, message, "{args:?}");
    }
    assert_eq!(
        state.lock().unwrap().nodes,
        ["127.0.0.1:8090"],
        "ring unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broadcaster_exits_1() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = format!("127.0.0.1:{port}");
    for args in [
        vec!["admin", "list", b.as_str()],
        vec!["admin", "add", b.as_str(), "127.0.0.1:8093"],
        vec!["admin", "remove", b.as_str(), "127.0.0.1:8093"],
    ] {
        let (status, stdout, stderr) = run_cli(&args, &[]).await;
        assert_eq!(status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.starts_with(&format!("Error: cannot reach broadcaster at {b}: ")),
            "{stderr}"
        );
        assert!(
            stderr.to_lowercase().contains("refused"),
            "the cause is shown: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_errors_and_bad_answers() {
    // A proxy or another server answering with plain text, and a 2xx answer of the wrong shape.
    let broken = Router::new().route(
        "/admin/nodes",
        get(|| async { (StatusCode::BAD_GATEWAY, "upstream exploded") })
            .post(|| async { Json(json!({ "unexpected": true })) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let _ = axum::serve(listener, broken).await;
    });
    let (status, _, stderr) = run_cli(&["admin", "list", &b], &[]).await;
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr,
        "Error: broadcaster answered 502 Bad Gateway: upstream exploded\n"
    );
    let (status, _, stderr) = run_cli(&["admin", "add", &b, "127.0.0.1:8093"], &[]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.starts_with(&format!("Error: unexpected answer from broadcaster at {b}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_before_any_request() {
    let (addr, state) = mock(&["127.0.0.1:8090"]).await;
    let b = addr.to_string();
    for args in [
        vec!["admin", "add", &b, "not-a-node"],
        vec!["admin", "add", &b, "127.0.0.1:99999"],
        vec!["admin", "remove", &b, "host/x:80"],
        vec!["admin", "list", "localhost"],
        vec!["admin", "list"],
        vec!["admin", "add", &b],
        vec!["admin", "rename", &b],
    ] {
        let (status, stdout, stderr) = run_cli(&args, &[]).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    }
    let (_, _, stderr) = run_cli(&["admin", "add", &b, "not-a-node"], &[]).await;
    assert!(
        stderr.contains("not-a-node"),
        "the bad value is named: {stderr}"
    );
    assert!(state.lock().unwrap().seen.is_empty(), "nothing was sent");
}
