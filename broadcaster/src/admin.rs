//! Ring membership API, spoken by `storage-node admin list|add|remove`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use common::protocol::ErrorBody;
use serde::{Deserialize, Serialize};

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

impl IntoResponse for RingError {
    fn into_response(self) -> Response {
        let status = match &self {
            RingError::Membership(_) | RingError::Conflict | RingError::Empty => {
                StatusCode::CONFLICT
            }
            RingError::Unreachable(_) | RingError::NoReplica(_) | RingError::Node(_) => {
                StatusCode::BAD_GATEWAY
            }
            RingError::Meta(meta::MetaError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            RingError::Meta(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "ring request failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

async fn list(State(engine): State<Engine>) -> Result<Json<NodeList>, RingError> {
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
) -> Result<Response, RingError> {
    let node = body.node.trim();
    hashring::validate_node(node).map_err(|e| RingError::Membership(e.to_string()))?;
    let change = engine.cluster().add_node(node).await?;
    Ok(Json(change).into_response())
}

async fn remove(
    State(engine): State<Engine>,
    Path(node): Path<String>,
) -> Result<Response, RingError> {
    let change = engine.cluster().remove_node(node.trim()).await?;
    Ok(Json(change).into_response())
}
