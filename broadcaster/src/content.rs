//! `GET /content/{id}/{file}`: files stored on the ring under a video id (DASH manifests, init and media
//! segments, posters), served from whichever replica answers.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::protocol::ErrorBody;
use futures_util::TryStreamExt;
use std::time::Duration;

use crate::fanout::Engine;
use crate::ring::nodes::{BlobKey, NodeError};
use crate::ring::read::Opened;
use crate::ring::RingError;

/// The media type of a ring file, from its name.
pub fn content_type(file: &str) -> &'static str {
    match file
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
    {
        Some(ext) => match ext.as_str() {
            "mpd" => "application/dash+xml",
            "m4s" | "mp4" | "m4v" => "video/mp4",
            "m4a" => "audio/mp4",
            "jpg" | "jpeg" => "image/jpeg",
            "png" => "image/png",
            "json" => "application/json",
            _ => "application/octet-stream",
        },
        None => "application/octet-stream",
    }
}

/// Longest wait for a file of a video still being processed (a player asks for segments ahead of the
/// transcoder when it starts watching early). Below dash.js's own 20 s fragment timeout, so the player gets
/// an answer (a 404 it retries) rather than abandoning the request.
pub const PROCESSING_WAIT: Duration = Duration::from_secs(15);

/// How often a waiting request looks again; the record it reads is shared by every request for a moment.
const PROCESSING_POLL: Duration = Duration::from_millis(250);

/// Whether `file` is named like a DASH init or media segment, the files a player asks for before they exist.
fn is_media_segment(file: &str) -> bool {
    (file.starts_with("init-") || file.starts_with("chunk-")) && file.ends_with(".m4s")
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(ErrorBody { error: msg })).into_response()
}

/// Serves one ring file with `Range`, `ETag` and caching headers.
pub async fn get_content(
    State(engine): State<Engine>,
    Path((id, file)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = common::name::validate_name(&id) {
        return bad_request(format!("bad id: {e}"));
    }
    if let Err(e) = common::name::validate_name(&file) {
        return bad_request(format!("bad file name: {e}"));
    }
    let key = BlobKey::new(id, file);
    let missing = || {
        (
            StatusCode::NOT_FOUND,
            Json(ErrorBody {
                error: format!("no such file: {key}"),
            }),
        )
            .into_response()
    };
    // Only files a committed upload recorded are served, each checked against the digest recorded then:
    // a storage node cannot alter or add what viewers receive. The record is reused for a moment across
    // requests (a watch page asks for hundreds of segments); a read that fails against a reused record
    // is tried once more against a fresh one, so a video uploaded again is served at once.
    let cluster = engine.cluster().clone();
    let mut fresh = false;
    let waiting_since = tokio::time::Instant::now();
    let (expected, opened) = loop {
        let video = match cluster.video_for_reading(&key.id, fresh).await {
            Ok(Some(v)) if v.status != meta::VideoRecord::FAILED => v,
            Ok(_) => return missing(),
            Err(e) => return crate::error::BroadcastError::from(e).into_response(),
        };
        let expected = match video.digests.get(&key.file) {
            Some(sha) => Some(sha.clone()),
            // Records written before digests existed.
            None if video.digests.is_empty() && video.files.contains(&key.file) => None,
            // A video being processed is watched while its files land: a segment the transcoder has not
            // stored yet is waited for, a while, instead of ending the player's request with a 404.
            None if video.status == meta::VideoRecord::PROCESSING
                && is_media_segment(&key.file)
                && waiting_since.elapsed() < PROCESSING_WAIT =>
            {
                tokio::time::sleep(PROCESSING_POLL).await;
                continue;
            }
            None if fresh => return missing(),
            None => {
                fresh = true;
                continue;
            }
        };
        // A windowed digest costs one small table read here (often none: checked tables are cached);
        // the payload then streams window by window, each checked before it is sent. Older records are
        // read whole.
        match cluster.open_blob(&key, expected.as_deref()).await {
            Ok(o) => break (expected, o),
            Err(_) if !fresh => fresh = true,
            // The transcoder replaces the provisional manifest with ffmpeg's when it ends: for a moment the
            // ring holds the new one while the record still names the old digest.
            Err(_)
                if video.status == meta::VideoRecord::PROCESSING
                    && waiting_since.elapsed() < PROCESSING_WAIT =>
            {
                tokio::time::sleep(PROCESSING_POLL).await;
            }
            Err(RingError::Node(NodeError::NotFound { .. })) => return missing(),
            Err(e) => return crate::error::BroadcastError::from(e).into_response(),
        }
    };
    let etag = match (&expected, &opened) {
        (Some(sha), _) => format!("\"{sha}\""),
        (None, Opened::Whole(data)) => format!("\"{:x}\"", xxhash_rust::xxh3::xxh3_128(data)),
        (None, Opened::Windowed(_)) => unreachable!("only a recorded windowed digest streams"),
    };
    let len = opened.len();
    let (status, mut out, start, count) =
        match common::serve::prepare(&headers, &etag, len, content_type(&key.file)) {
            common::serve::Prepared::Done(resp) => return *resp,
            common::serve::Prepared::Send {
                status,
                headers,
                start,
                count,
            } => (status, headers, start, count),
        };
    // Segments never change once written; the manifest is re-checked so a re-upload is seen.
    let cache = if key.file.ends_with(".mpd") {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if method == Method::HEAD || count == 0 {
        return (status, out).into_response();
    }
    match cluster.stream_blob(key, opened, start, count).await {
        Ok(stream) => {
            let stream = stream.map_err(|e| std::io::Error::other(e.to_string()));
            (status, out, Body::from_stream(stream)).into_response()
        }
        Err(e) => crate::error::BroadcastError::from(e).into_response(),
    }
}
