//! Static files of the web site, all from this origin.
//!
//! - dash.js (the player) and tus-js-client (resumable uploads from the index page) come from npm
//!   (`web/package.json` + lockfile, installed with `npm ci --prefix web`) and are served from the web root's
//!   `node_modules` ([`NPM_FILES`]), so their versions are pinned by the lockfile and no CDN is involved.
//! - The site's own script, style sheet and icon are compiled into the binary (`static/`), so they can never be
//!   missing or out of step with the pages that reference them.
//!
//! Everything is served with an `ETag` and `Cache-Control: no-cache`: browsers keep a copy and revalidate it
//! (a cheap 304), so an upgrade is picked up on the next page load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// Where the watch page loads dash.js from.
pub const DASH_JS_PATH: &str = "/assets/dash.all.min.js";
/// Where the index page loads tus-js-client from.
pub const TUS_JS_PATH: &str = "/assets/tus.min.js";
/// The index page's script (upload progress, list refresh).
pub const APP_JS_PATH: &str = "/assets/app.js";
/// The watch page's script (player, quality selector).
pub const WATCH_JS_PATH: &str = "/assets/watch.js";
/// The style sheet of every page.
pub const CSS_PATH: &str = "/assets/style.css";
/// The site icon.
pub const ICON_PATH: &str = "/assets/icon.svg";

/// dash.js inside the web root, as `npm ci --prefix web` installs it.
pub const DASH_JS_FILE: &str = "node_modules/dashjs/dist/modern/umd/dash.all.min.js";
/// tus-js-client's browser bundle (UMD, defines `window.tus`) inside the web root.
pub const TUS_JS_FILE: &str = "node_modules/tus-js-client/dist/tus.min.js";

/// A browser file installed by npm under the web root and served at a fixed path of this origin.
#[derive(Debug)]
pub struct NpmFile {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Where it is, relative to the web root.
    pub file: &'static str,
    /// What it is, for messages.
    pub what: &'static str,
}

/// dash.js, for the watch page.
pub const DASH_JS: NpmFile = NpmFile {
    path: DASH_JS_PATH,
    file: DASH_JS_FILE,
    what: "dash.js",
};

/// tus-js-client, for the index page's resumable uploads.
pub const TUS_JS: NpmFile = NpmFile {
    path: TUS_JS_PATH,
    file: TUS_JS_FILE,
    what: "tus-js-client",
};

/// Every npm file the pages use.
pub const NPM_FILES: &[NpmFile] = &[DASH_JS, TUS_JS];

const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

/// A file compiled into the binary.
#[derive(Debug)]
pub struct Embedded {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The site's own files.
pub const EMBEDDED: &[Embedded] = &[
    Embedded {
        path: APP_JS_PATH,
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("static/app.js"),
    },
    Embedded {
        path: WATCH_JS_PATH,
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("static/watch.js"),
    },
    Embedded {
        path: CSS_PATH,
        content_type: "text/css; charset=utf-8",
        body: include_str!("static/style.css"),
    },
    Embedded {
        path: ICON_PATH,
        content_type: "image/svg+xml",
        body: include_str!("static/icon.svg"),
    },
];

impl Embedded {
    /// Serves the file with `ETag`, `If-None-Match` (304) and `Range`.
    pub fn serve(&self, method: &Method, headers: &HeaderMap) -> Response {
        let bytes = self.body.as_bytes();
        let etag = format!("\"{:x}\"", xxhash_rust::xxh3::xxh3_128(bytes));
        let (status, mut out, start, count) =
            match common::serve::prepare(headers, &etag, bytes.len() as u64, self.content_type) {
                common::serve::Prepared::Done(resp) => return *resp,
                common::serve::Prepared::Send {
                    status,
                    headers,
                    start,
                    count,
                } => (status, headers, start, count),
            };
        out.insert(header::CACHE_CONTROL, REVALIDATE);
        if *method == Method::HEAD {
            return (status, out).into_response();
        }
        // `prepare` only hands out ranges inside the body.
        let (start, end) = (start as usize, (start + count) as usize);
        let slice = bytes.get(start..end).unwrap_or_default();
        (status, out, Body::from(slice)).into_response()
    }
}

/// Where the npm-installed browser files live (`BROADCASTER_WEB_DIR`, `./web` by default).
#[derive(Debug, Clone)]
pub struct Assets {
    root: Arc<PathBuf>,
}

impl Assets {
    /// Assets under `root` (the directory holding `package.json` and, once installed, `node_modules`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Arc::new(root.into()),
        }
    }

    /// The web root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dash.js file served at [`DASH_JS_PATH`].
    pub fn dash_js(&self) -> PathBuf {
        self.path_of(&DASH_JS)
    }

    /// Where `file` is installed.
    pub fn path_of(&self, file: &NpmFile) -> PathBuf {
        self.root.join(file.file)
    }

    /// Serves `file` (with an `ETag`, `Cache-Control: no-cache`, `Range`), or a 404 that says how to install it.
    pub async fn serve(&self, file: &NpmFile, method: &Method, headers: &HeaderMap) -> Response {
        let path = self.path_of(file);
        if !tokio::fs::metadata(&path)
            .await
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            tracing::warn!(
                path = %path.display(),
                "{} is missing; run `npm ci --prefix web`",
                file.what
            );
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                missing_message(&self.root, file),
            )
                .into_response();
        }
        let mut resp = common::serve::serve_file(&path, method, headers, "text/javascript").await;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            resp.headers_mut().insert(header::CACHE_CONTROL, REVALIDATE);
        }
        resp
    }
}

fn missing_message(root: &Path, file: &NpmFile) -> String {
    format!(
        "{} is not installed: {} is missing. Run `npm ci --prefix web` in the repository (build/test.sh and \
         build/demo.sh do), or point BROADCASTER_WEB_DIR at the directory holding web/package.json.",
        file.what,
        root.join(file.file).display()
    )
}

/// Checks that the browser files the pages need are installed under `root`; the error says how to fix it.
/// Meant to be logged at startup: the site still works without them, except the watch page's player (dash.js)
/// and resumable uploads from the index page (tus-js-client; the form then uploads in one request).
pub fn check_assets(root: &Path) -> Result<(), String> {
    let missing: Vec<String> = NPM_FILES
        .iter()
        .filter(|f| !std::fs::metadata(root.join(f.file)).is_ok_and(|m| m.is_file() && m.len() > 0))
        .map(|f| missing_message(root, f))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_assets_names_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = check_assets(dir.path()).expect_err("nothing installed");
        assert!(err.contains("npm ci --prefix web"), "{err}");
        assert!(err.contains("dash.all.min.js"), "{err}");
        assert!(err.contains("tus.min.js"), "{err}");
        let file = dir.path().join(DASH_JS_FILE);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, "/* dash */").expect("write");
        let err = check_assets(dir.path()).expect_err("tus-js-client missing");
        assert!(!err.contains("dash.all.min.js"), "{err}");
        assert!(err.contains("tus-js-client"), "{err}");
        let file = dir.path().join(TUS_JS_FILE);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, "/* tus */").expect("write");
        assert_eq!(check_assets(dir.path()), Ok(()));
    }

    #[test]
    fn embedded_files_are_served_with_etags() {
        let app = EMBEDDED
            .iter()
            .find(|e| e.path == APP_JS_PATH)
            .expect("app.js embedded");
        let resp = app.serve(&Method::GET, &HeaderMap::new());
        assert_eq!(resp.status(), StatusCode::OK);
        let etag = resp.headers()[header::ETAG].clone();
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/javascript"));
        let mut cond = HeaderMap::new();
        cond.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            app.serve(&Method::GET, &cond).status(),
            StatusCode::NOT_MODIFIED
        );
    }
}
