//! The web site: `GET /` (upload form and video list), `GET /videos/{id}` (watch page with dash.js and a quality
//! selector), and the static files they use under `/assets/`.
//!
//! `POST /upload` (the form's target) and `GET /content/{id}/{file}` (the DASH files) live elsewhere; nothing here
//! routes `GET /upload`, so it is a 405 once `POST /upload` is routed.
//!
//! # Behaviour
//! - Pages are rendered on the server from the metadata store; every id and error message is escaped
//!   ([`html::escape`]), and ids in URLs are percent-encoded as one path segment ([`html::encode_segment`]).
//! - Watchable videos are links: `ready` ones, and `processing` ones whose first segments are stored (a viewer
//!   starts while the rest is transcoded; the gateway holds a request for a segment not written yet).
//!   `GET /videos/{id}` answers 404 for an unknown or malformed id, and also for a video that is not playable:
//!   a `processing` one with nothing to play yet gets a 404 page saying it is still processing that reloads
//!   itself every few seconds, a `failed` one a 404 page with the reason. The status is 404 because there is
//!   nothing to play at that URL yet; the page says why.
//! - The upload form works without JavaScript (a plain multipart POST, then the server's 303 to `/`). With
//!   JavaScript, `/assets/app.js` uploads the file with tus-js-client (`/assets/tus.min.js`) to the resumable
//!   endpoint named by the form's `data-resumable` attribute (`/uploads`): progress in bytes and percent, a
//!   Cancel button (`DELETE`), automatic resume after a dropped connection, and after a reload the same file
//!   resumes from the offset the server kept. Without tus-js-client, or when the server has no resumable
//!   endpoint (404/405/501 on creation), it sends the form with one `XMLHttpRequest` instead. Either way it shows
//!   the server's error message on 4xx/5xx and refreshes the list while videos are processing.
//! - Every response from these routes carries `X-Content-Type-Options: nosniff` and a Content-Security-Policy
//!   that allows scripts, styles, images and connections from this origin only and media from this origin and
//!   `blob:` (dash.js plays through MediaSource object URLs). No page contains inline script or style.
//!
//! # Layout
//! - [`html`]: escaping and URL segment encoding.
//! - [`pages`]: the HTML of each page, pure functions of metadata records.
//! - [`assets`]: dash.js and tus-js-client from the web root (`npm ci --prefix web`), and the site's own files
//!   compiled in.

pub mod assets;
pub mod html;
pub mod pages;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use meta::VideoRecord;

pub use assets::{check_assets, Assets};

use crate::fanout::Engine;

/// The policy of every page: nothing but this origin, plus `blob:` media for MediaSource.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; media-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Seconds between reloads of the page of a video that is still processing.
const PROCESSING_REFRESH_SECS: u32 = 5;

/// The site's routes; `assets` says where dash.js and tus-js-client are installed.
pub fn routes(assets: Assets) -> Router<Engine> {
    let mut router = Router::new()
        .route("/", get(index))
        .route("/videos/{id}", get(watch));
    for file in assets::NPM_FILES {
        let assets = assets.clone();
        router = router.route(
            file.path,
            get(move |method: Method, headers: HeaderMap| {
                let assets = assets.clone();
                async move { assets.serve(file, &method, &headers).await }
            }),
        );
    }
    for file in assets::EMBEDDED {
        router =
            router.route(
                file.path,
                get(move |method: Method, headers: HeaderMap| async move {
                    file.serve(&method, &headers)
                }),
            );
    }
    router
}

/// `nosniff`, the Content-Security-Policy and a same-origin referrer policy, on every response of the
/// gateway (JSON, pages and media alike), unless a handler set its own policy.
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// An HTML page that is never cached (the list changes with every upload).
fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn unavailable(e: &meta::MetaError) -> Response {
    tracing::error!(error = %e, "metadata store unavailable for a page");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(
            "Temporarily unavailable",
            "The list of videos cannot be read right now (the metadata store does not answer). Please try again in a moment.",
            None,
        ),
    )
}

async fn index(
    State(engine): State<Engine>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
) -> Response {
    match engine.cluster().meta().list_videos().await {
        Ok(mut videos) => {
            // A token limited to a prefix sees only the videos it may watch.
            if let Some(prefix) = principal.as_ref().and_then(|p| p.0.prefix()) {
                videos.retain(|v| v.id.starts_with(prefix));
            }
            page(StatusCode::OK, pages::index(&videos))
        }
        Err(e) => unavailable(&e),
    }
}

fn not_found(id: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        pages::message(
            "Video not found",
            &format!("There is no video named “{id}”."),
            None,
        ),
    )
}

async fn watch(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    if common::name::validate_name(&id).is_err() {
        return not_found(&id);
    }
    let video = match engine.cluster().meta().get_video(&id).await {
        Ok(Some(v)) => v,
        Ok(None) => return not_found(&id),
        Err(e) => return unavailable(&e),
    };
    if video.is_watchable() {
        return page(StatusCode::OK, pages::watch(&video));
    }
    match video.status.as_str() {
        VideoRecord::PROCESSING => page(
            StatusCode::NOT_FOUND,
            pages::message(
                "Still processing",
                &format!(
                    "“{id}” is still processing: it is being transcoded{} and is not playable yet. This page \
                     reloads every {PROCESSING_REFRESH_SECS} seconds and shows the player once it is ready.",
                    video
                        .progress_percent
                        .map(|p| format!(" ({p}% done)"))
                        .unwrap_or_default()
                ),
                Some(PROCESSING_REFRESH_SECS),
            ),
        ),
        VideoRecord::FAILED => page(
            StatusCode::NOT_FOUND,
            pages::message(
                "Video failed",
                &format!(
                    "“{id}” cannot be played: processing failed ({}).",
                    video.error.as_deref().unwrap_or("no reason recorded")
                ),
                None,
            ),
        ),
        other => page(
            StatusCode::NOT_FOUND,
            pages::message(
                "Video not playable",
                &format!("“{id}” is not playable (status: {other})."),
                None,
            ),
        ),
    }
}
