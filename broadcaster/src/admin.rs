//! Ring membership API, spoken by `storage-node admin list|add|remove`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::error::BroadcastError;
use crate::fanout::Engine;
use crate::ring::RingError;

/// `GET /admin/nodes`.
#[derive(Debug, Serialize)]
pub struct NodeList {
    /// Layout version (0 when no layout exists yet).
    pub version: u64,
    /// Copies per blob.
    pub replication: usize,
    /// Members.
    pub nodes: Vec<String>,
}

/// Body of `POST /admin/nodes`.
#[derive(Debug, Deserialize)]
pub struct AddNode {
    /// `host:port` of the node to add.
    pub node: String,
}

/// Routes under `/admin`.
pub fn routes() -> Router<Engine> {
    Router::new()
        .route("/admin/nodes", get(list).post(add))
        .route("/admin/nodes/{node}", delete(remove))
}

async fn list(State(engine): State<Engine>) -> Result<Json<NodeList>, BroadcastError> {
    engine.cluster().refresh().await?;
    let view = engine.cluster().view();
    Ok(Json(match &view.layout {
        Some(l) => NodeList {
            version: l.version,
            replication: l.replication,
            nodes: l.nodes.clone(),
        },
        None => NodeList {
            version: 0,
            replication: engine.config().replication,
            nodes: Vec::new(),
        },
    }))
}

async fn add(
    State(engine): State<Engine>,
    Json(body): Json<AddNode>,
) -> Result<Response, BroadcastError> {
    let node = body.node.trim();
    hashring::validate_node(node).map_err(|e| RingError::Membership(e.to_string()))?;
    let change = engine.cluster().add_node(node).await?;
    Ok(Json(change).into_response())
}

async fn remove(
    State(engine): State<Engine>,
    Path(node): Path<String>,
) -> Result<Response, BroadcastError> {
    let change = engine.cluster().remove_node(node.trim()).await?;
    Ok(Json(change).into_response())
}
