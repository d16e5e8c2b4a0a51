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
        .route("/admin/tokens", get(list_tokens).post(create_token))
        .route("/admin/tokens/{id}", delete(revoke_token))
}

/// Body of `POST /admin/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who or what it is for.
    pub name: String,
    /// Rights: `read`, `upload`, `delete`, `admin`.
    pub scopes: Vec<String>,
    /// Limit to names and video ids starting with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Lifetime in seconds; none = until revoked.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Answer of `POST /admin/tokens`: the only time the secret is shown.
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    /// Public id, for listing and revocation.
    pub id: String,
    /// The secret to send as `Authorization: Bearer`.
    pub token: String,
}

/// One token as listed: never its secret or hash.
#[derive(Debug, Serialize)]
pub struct ListedToken {
    /// Public id.
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// Rights.
    pub scopes: Vec<String>,
    /// Name prefix it is limited to.
    pub prefix: Option<String>,
    /// Creation, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_unix_ms: Option<u64>,
}

fn bad(msg: String) -> Response {
    (
        axum::http::StatusCode::BAD_REQUEST,
        Json(common::protocol::ErrorBody { error: msg }),
    )
        .into_response()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn create_token(
    State(engine): State<Engine>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, BroadcastError> {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return Ok(bad(format!("bad token request: {}", e.body_text()))),
    };
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Ok(bad("name must be 1 to 128 printable characters".into()));
    }
    if body.scopes.is_empty() {
        return Ok(bad(
            "scopes must name at least one of read, upload, delete, admin".into(),
        ));
    }
    let mut scopes = Vec::new();
    for s in &body.scopes {
        if crate::auth::Scope::parse(s).is_none() {
            return Ok(bad(format!(
                "unknown scope {s:?}: expected read, upload, delete or admin"
            )));
        }
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    let prefix = match body.prefix.as_deref() {
        None | Some("") => None,
        Some(p) if p.len() > 255 || p.contains('/') || p.chars().any(char::is_control) => {
            return Ok(bad(
                "prefix must be at most 255 bytes, without `/` or control characters".into(),
            ))
        }
        Some(p) => Some(p.to_owned()),
    };
    let ttl_ms = match body.ttl_secs {
        None => None,
        Some(0) => return Ok(bad("ttl_secs must be at least 1".into())),
        Some(s) => Some(s.min(100 * 365 * 86_400) * 1000),
    };
    let secret = format!(
        "dst_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let created = now_ms();
    let record = meta::TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        hash: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes())),
        scopes,
        prefix,
        created_unix_ms: created,
        expires_unix_ms: ttl_ms.map(|t| created + t),
    };
    engine
        .cluster()
        .meta()
        .create_token(&record)
        .await
        .map_err(RingError::from)?;
    tracing::info!(token = %id, name = %record.name, scopes = ?record.scopes, "token created");
    Ok((
        axum::http::StatusCode::CREATED,
        Json(CreatedToken { id, token: secret }),
    )
        .into_response())
}

async fn list_tokens(State(engine): State<Engine>) -> Result<Response, BroadcastError> {
    let tokens = engine
        .cluster()
        .meta()
        .list_tokens()
        .await
        .map_err(RingError::from)?;
    let listed: Vec<ListedToken> = tokens
        .into_iter()
        .map(|t| ListedToken {
            id: t.id,
            name: t.name,
            scopes: t.scopes,
            prefix: t.prefix,
            created_unix_ms: t.created_unix_ms,
            expires_unix_ms: t.expires_unix_ms,
        })
        .collect();
    Ok(Json(serde_json::json!({ "tokens": listed })).into_response())
}

async fn revoke_token(
    State(engine): State<Engine>,
    auth: Option<axum::Extension<std::sync::Arc<crate::auth::Auth>>>,
    Path(id): Path<String>,
) -> Result<Response, BroadcastError> {
    let existed = engine
        .cluster()
        .meta()
        .delete_token(&id)
        .await
        .map_err(RingError::from)?;
    if let Some(axum::Extension(auth)) = auth {
        auth.forget_cached();
    }
    if !existed {
        return Ok((
            axum::http::StatusCode::NOT_FOUND,
            Json(common::protocol::ErrorBody {
                error: "no such token".into(),
            }),
        )
            .into_response());
    }
    tracing::info!(token = %id, "token revoked");
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
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
