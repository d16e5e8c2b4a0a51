//! Ring administration API, spoken by `storage-node admin list|add|remove|repair`: membership changes
//! (which run as workers and answer when their migration is done), repair, and an on-demand sweep.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::error::BroadcastError;
use crate::fanout::Engine;
use crate::ring::migrate::Progress;
use crate::ring::RingError;

/// `GET /admin/nodes`.
#[derive(Debug, Serialize)]
pub struct NodeList {
    /// Layout version (0 when no layout exists yet).
    pub version: u64,
    /// Copies per blob.
    pub replication: usize,
    /// Members' addresses.
    pub nodes: Vec<String>,
    /// Members with their identities.
    pub members: Vec<Member>,
    /// The migration in progress, if any.
    pub migration: Option<Migration>,
}

/// One ring member.
#[derive(Debug, Serialize)]
pub struct Member {
    /// Where it is reached.
    pub addr: String,
    /// The identity it proved when it joined (empty if it has not been seen yet).
    pub id: String,
}

/// A migration as listed: this process's progress when it runs it, else what the layout says.
#[derive(Debug, Serialize)]
pub struct Migration {
    /// The membership being moved to.
    pub next: Vec<String>,
    /// Progress, when this broadcaster runs the migration.
    #[serde(flatten)]
    pub progress: Option<Progress>,
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
        .route("/admin/repair", post(repair))
        .route("/admin/gc", post(gc))
}

async fn list(State(engine): State<Engine>) -> Result<Json<NodeList>, BroadcastError> {
    let cluster = engine.cluster();
    cluster.refresh().await?;
    let view = cluster.view();
    let progress = cluster.migration();
    Ok(Json(match &view.record {
        Some(l) => NodeList {
            version: l.version,
            replication: l.replication,
            nodes: l.nodes.clone(),
            members: l
                .nodes
                .iter()
                .enumerate()
                .map(|(i, addr)| Member {
                    addr: addr.clone(),
                    id: l.ids.get(i).cloned().unwrap_or_default(),
                })
                .collect(),
            migration: match (&l.next, progress) {
                (None, None) => None,
                (next, progress) => Some(Migration {
                    next: next.as_ref().map(|m| m.nodes.clone()).unwrap_or_default(),
                    progress,
                }),
            },
        },
        None => NodeList {
            version: 0,
            replication: engine.config().replication,
            nodes: Vec::new(),
            members: Vec::new(),
            migration: None,
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

/// `POST /admin/repair`: a repair with a scrub of every node, now.
async fn repair(State(engine): State<Engine>) -> Result<Response, BroadcastError> {
    let report = engine.cluster().repair(true).await?;
    Ok(Json(report).into_response())
}

/// `POST /admin/gc`: one housekeeping sweep, now.
async fn gc(State(engine): State<Engine>) -> Result<Response, BroadcastError> {
    let grace = engine.config().orphan_grace;
    let report = engine.cluster().sweep(grace).await?;
    Ok(Json(report).into_response())
}
