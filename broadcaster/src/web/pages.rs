//! Server-rendered pages: the index (upload form and video list), the watch page, and error pages.
//!
//! Every value that comes from a user (ids, error messages) goes through [`escape`] in text and attributes, and
//! through [`encode_segment`] (then [`escape`]) in URLs. The pages load scripts and styles only from this
//! origin, as separate files (no inline script or style), so the Content-Security-Policy can forbid inline code.

use std::fmt::Write as _;

use meta::VideoRecord;

use super::assets;
use super::html::{encode_segment, escape};

/// `mm:ss`, or `h:mm:ss` from one hour on (rounded down to the second).
pub fn format_duration(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// A civil UTC date and time from milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl UtcTime {
    /// Converts with the proleptic Gregorian calendar (days-from-civil inverse, H. Hinnant).
    pub fn from_unix_ms(ms: u64) -> Self {
        let secs = ms / 1000;
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: ((rem / 60) % 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// RFC 3339, for `<time datetime>`: `2024-05-01T12:34:56Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// For people: `2024-05-01 12:34 UTC`.
    pub fn display(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute
        )
    }
}

fn time_element(ms: u64) -> String {
    let t = UtcTime::from_unix_ms(ms);
    format!(
        r#"<time datetime="{}">{}</time>"#,
        t.rfc3339(),
        escape(&t.display())
    )
}

/// The page skeleton. `scripts` are same-origin paths, loaded in order at the end of the body.
fn layout(title: &str, head_extra: &str, body: &str, scripts: &[&str]) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="{icon}" type="image/svg+xml">
<link rel="stylesheet" href="{css}">
{head_extra}</head>
<body>
<header class="site"><a class="brand" href="/">Distributary</a></header>
<main>
{body}</main>
"#,
        title = escape(title),
        icon = assets::ICON_PATH,
        css = assets::CSS_PATH,
    );
    for s in scripts {
        let _ = writeln!(out, r#"<script src="{}"></script>"#, escape(s));
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn status_cell(v: &VideoRecord) -> String {
    let status = v.status.as_str();
    let class = match status {
        VideoRecord::READY | VideoRecord::PROCESSING | VideoRecord::FAILED => status,
        _ => "unknown",
    };
    let mut cell = format!(r#"<span class="badge {class}">{}</span>"#, escape(status));
    if status == VideoRecord::FAILED {
        let why = v.error.as_deref().unwrap_or("no reason recorded");
        let _ = write!(cell, r#" <span class="error-text">{}</span>"#, escape(why));
    } else if status == VideoRecord::PROCESSING {
        if let Some(p) = v.progress_percent {
            let _ = write!(
                cell,
                r#" <span class="progress" data-progress="{p}">{p}%</span>"#
            );
        }
        cell.push_str(if v.is_watchable() {
            r#" <span class="hint">transcoding; you can start watching</span>"#
        } else {
            r#" <span class="hint">transcoding; not playable yet</span>"#
        });
    }
    cell
}

/// `GET /`: the upload form and every video, newest first (the store's order is kept).
pub fn index(videos: &[VideoRecord]) -> String {
    let mut body = String::new();
    body.push_str(
        r#"<section class="card" aria-labelledby="upload-heading">
<h1 id="upload-heading">Upload a video</h1>
<form id="upload-form" action="/upload" method="post" enctype="multipart/form-data" data-resumable="/uploads">
<label for="upload-file">Video file (MP4)</label>
<input id="upload-file" type="file" name="file" accept="video/mp4,video/*" required>
<p class="hint">The file name without its extension becomes the video's id: <code>holiday.mp4</code> plays at <code>/videos/holiday</code>. After the upload the video is transcoded into several qualities; this page comes back with the video listed once it is ready to play.</p>
<p id="upload-resumable-hint" class="hint" hidden>If the connection drops, the upload continues where it stopped once the connection is back. If you leave or reload this page, choose the same file again to resume it.</p>
<p id="upload-resume" class="notice" hidden></p>
<button id="upload-button" type="submit">Upload</button>
<div id="upload-status" class="upload-status" role="status" aria-live="polite" hidden>
<progress id="upload-progress" max="100" value="0" aria-label="Upload progress"></progress>
<span id="upload-percent">0%</span>
<span id="upload-bytes" class="hint"></span>
<span id="upload-message"></span>
<button id="upload-cancel" class="secondary" type="button" hidden>Cancel</button>
</div>
<p id="upload-error" class="error-box" role="alert" hidden></p>
</form>
<div id="upload-unfinished" class="unfinished" hidden></div>
</section>
"#,
    );
    let processing = videos
        .iter()
        .filter(|v| v.status == VideoRecord::PROCESSING)
        .count();
    let _ = write!(
        body,
        r#"<section class="card" aria-labelledby="videos-heading">
<h2 id="videos-heading">Videos</h2>
<div id="videos" data-count="{}" data-processing="{processing}">
"#,
        videos.len()
    );
    if videos.is_empty() {
        body.push_str(
            r#"<p class="empty">No videos yet. Choose an MP4 file above and press Upload to add the first one.</p>
"#,
        );
    } else {
        body.push_str(
            r#"<table class="videos">
<thead><tr><th scope="col">Video</th><th scope="col">Status</th><th scope="col">Duration</th><th scope="col">Uploaded</th></tr></thead>
<tbody>
"#,
        );
        for v in videos {
            let id = escape(&v.id);
            let name = if v.is_watchable() {
                format!(
                    r#"<a href="/videos/{}">{id}</a>"#,
                    escape(&encode_segment(&v.id))
                )
            } else {
                format!(r#"<span class="name">{id}</span>"#)
            };
            let duration = v
                .duration_ms
                .map(format_duration)
                .unwrap_or_else(|| "—".to_owned());
            let _ = writeln!(
                body,
                r#"<tr class="video" data-video-id="{id}" data-status="{status}"><th scope="row">{name}</th><td>{cell}</td><td class="duration">{duration}</td><td>{time}</td></tr>"#,
                status = escape(&v.status),
                cell = status_cell(v),
                time = time_element(v.created_unix_ms),
            );
        }
        body.push_str("</tbody>\n</table>\n");
    }
    body.push_str("</div>\n</section>\n");
    layout(
        "Distributary: videos",
        "",
        &body,
        &[assets::TUS_JS_PATH, assets::APP_JS_PATH],
    )
}

/// The manifest URL of a video, as it appears in the watch page.
pub fn manifest_url(id: &str) -> String {
    format!("/content/{}/manifest.mpd", encode_segment(id))
}

/// `GET /videos/{id}` for a watchable video (see [`VideoRecord::is_watchable`]): a `<video>` driven by dash.js,
/// a quality selector, the poster; a video still processing says so above the player.
pub fn watch(v: &VideoRecord) -> String {
    let id = escape(&v.id);
    let enc = escape(&encode_segment(&v.id));
    let manifest = escape(&manifest_url(&v.id));
    let mut facts = Vec::new();
    if let Some(d) = v.duration_ms {
        facts.push(format!("Duration {}", format_duration(d)));
    }
    facts.push(format!("uploaded {}", time_element(v.created_unix_ms)));
    let processing = if v.status == VideoRecord::PROCESSING {
        format!(
            "<p id=\"processing-note\" class=\"notice\" data-progress=\"{p}\">Still processing ({p}% done): \
             you are watching while the rest is transcoded, and playback may pause until it catches up.</p>\n",
            p = v.progress_percent.unwrap_or(0)
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<nav class="back"><a href="/">&larr; All videos</a></nav>
<h1 class="video-title">{id}</h1>
{processing}<div class="player">
<video id="player" controls playsinline preload="none" poster="/content/{enc}/poster.jpg" data-manifest="{manifest}" data-video-id="{id}" aria-label="{id}"></video>
</div>
<div class="player-controls">
<label for="quality">Quality</label>
<select id="quality" disabled><option value="auto" selected>Auto</option></select>
<span id="current-quality" class="hint" aria-live="polite"></span>
</div>
<p id="player-error" class="error-box" role="alert" hidden></p>
<noscript><p class="error-box">Playback needs JavaScript: the player (dash.js) streams the video in the quality your connection allows.</p></noscript>
<p class="facts">{facts} &middot; <a href="{manifest}">DASH manifest</a></p>
"#,
        facts = facts.join(" &middot; "),
    );
    layout(
        &format!("{} · Distributary", v.id),
        "",
        &body,
        &[assets::DASH_JS_PATH, assets::WATCH_JS_PATH],
    )
}

/// An error page (404, 503, ...) with a way back. `refresh_secs` makes the browser reload it (used while a video
/// is still processing).
pub fn message(title: &str, text: &str, refresh_secs: Option<u32>) -> String {
    let head = refresh_secs
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">\n"))
        .unwrap_or_default();
    let body = format!(
        r#"<section class="card">
<h1>{}</h1>
<p>{}</p>
<p><a href="/">&larr; All videos</a></p>
</section>
"#,
        escape(title),
        escape(text)
    );
    layout(title, &head, &body, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(id: &str, status: &str, created: u64) -> VideoRecord {
        VideoRecord {
            id: id.to_owned(),
            status: status.to_owned(),
            created_unix_ms: created,
            duration_ms: Some(65_432),
            files: vec!["manifest.mpd".into()],
            error: None,
            digests: Default::default(),
            progress_percent: None,
            upload: None,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "00:00");
        assert_eq!(format_duration(999), "00:00");
        assert_eq!(format_duration(10_000), "00:10");
        assert_eq!(format_duration(65_432), "01:05");
        assert_eq!(format_duration(3_599_999), "59:59");
        assert_eq!(format_duration(3_600_000), "1:00:00");
        assert_eq!(format_duration(36_061_000), "10:01:01");
    }

    #[test]
    fn utc_times() {
        let t = UtcTime::from_unix_ms(0);
        assert_eq!(t.rfc3339(), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day in a century leap year) 23:59:59.
        assert_eq!(
            UtcTime::from_unix_ms(951_868_799_000).rfc3339(),
            "2000-02-29T23:59:59Z"
        );
        let t = UtcTime::from_unix_ms(1_714_566_896_789);
        assert_eq!(t.rfc3339(), "2024-05-01T12:34:56Z");
        assert_eq!(t.display(), "2024-05-01 12:34 UTC");
        assert_eq!(
            UtcTime::from_unix_ms(4_102_444_800_000).rfc3339(),
            "2100-01-01T00:00:00Z"
        );
    }

    #[test]
    fn empty_index_has_the_form_and_says_so() {
        let page = index(&[]);
        assert!(page.contains(r#"action="/upload""#));
        assert!(page.contains(r#"method="post""#));
        assert!(page.contains(r#"enctype="multipart/form-data""#));
        assert!(page.contains(r#"type="file" name="file""#));
        assert!(page.contains(r#"accept="video/mp4,video/*""#));
        assert!(page.contains(r#"<label for="upload-file">"#));
        assert!(page.contains(r#"type="submit""#));
        assert!(page.contains("No videos yet"));
        assert!(page.contains(r#"data-count="0""#));
        assert!(page.contains(r#"<script src="/assets/app.js"></script>"#));
        // Resumable uploads: tus-js-client from this origin, loaded before the page script, and the endpoint.
        let tus = page
            .find(r#"<script src="/assets/tus.min.js"></script>"#)
            .expect("tus-js-client script tag");
        let app = page.find(r#"<script src="/assets/app.js"></script>"#);
        assert!(Some(tus) < app, "tus-js-client must load before app.js");
        assert!(page.contains(r#"data-resumable="/uploads""#));
        // What only the script uses is hidden until it runs: without JavaScript the page is the plain form.
        assert!(
            page.contains(r#"<button id="upload-cancel" class="secondary" type="button" hidden>"#)
        );
        assert!(page.contains(r#"<p id="upload-resumable-hint" class="hint" hidden>"#));
        assert!(page.contains(r#"<div id="upload-status" class="upload-status" role="status" aria-live="polite" hidden>"#));
        // No inline script or style: the CSP forbids them.
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<style"));
        assert!(!page.contains(" style="));
    }

    #[test]
    fn index_links_only_ready_videos_and_shows_statuses() {
        let mut failed = video("broken", VideoRecord::FAILED, 3_000);
        failed.error = Some("not a video: <moov> atom missing & more".into());
        failed.duration_ms = None;
        let videos = vec![
            video("newest", VideoRecord::PROCESSING, 4_000),
            failed,
            video("clip", VideoRecord::READY, 1_714_566_896_789),
        ];
        let page = index(&videos);
        assert!(page.contains(r#"<a href="/videos/clip">clip</a>"#));
        assert!(!page.contains(r#"href="/videos/newest""#));
        assert!(!page.contains(r#"href="/videos/broken""#));
        assert!(page.contains(r#"data-video-id="newest" data-status="processing""#));
        assert!(page.contains(r#"data-video-id="broken" data-status="failed""#));
        assert!(page.contains(r#"data-video-id="clip" data-status="ready""#));
        assert!(page.contains("not a video: &lt;moov&gt; atom missing &amp; more"));
        assert!(page.contains(r#"<td class="duration">01:05</td>"#));
        assert!(page.contains(r#"<td class="duration">—</td>"#));
        assert!(
            page.contains(r#"<time datetime="2024-05-01T12:34:56Z">2024-05-01 12:34 UTC</time>"#)
        );
        assert!(page.contains(r#"data-processing="1""#));
        assert!(!page.contains("No videos yet"));
        // The store's order (newest first) is kept.
        let (a, b, c) = (
            page.find("newest").unwrap_or(usize::MAX),
            page.find("broken").unwrap_or(usize::MAX),
            page.find(">clip<").unwrap_or(usize::MAX),
        );
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn weird_ids_are_escaped_and_encoded() {
        let id = r#"a b<c>&"d"#;
        let page = index(&[video(id, VideoRecord::READY, 1)]);
        assert!(
            page.contains(r#"<a href="/videos/a%20b%3Cc%3E%26%22d">a b&lt;c&gt;&amp;&quot;d</a>"#)
        );
        assert!(page.contains(r#"data-video-id="a b&lt;c&gt;&amp;&quot;d""#));
        assert!(!page.contains("<c>"));

        let page = watch(&video(id, VideoRecord::READY, 1));
        assert!(page.contains("/content/a%20b%3Cc%3E%26%22d/manifest.mpd"));
        assert!(page.contains(r#"poster="/content/a%20b%3Cc%3E%26%22d/poster.jpg""#));
        assert!(page.contains("<title>a b&lt;c&gt;&amp;&quot;d · Distributary</title>"));
        assert!(!page.contains("<c>"));

        let page = index(&[video("<script>alert(1)</script>", VideoRecord::READY, 1)]);
        assert!(!page.contains("<script>alert"));
    }

    #[test]
    fn watch_page_has_player_manifest_quality_and_way_back() {
        let page = watch(&video("clip", VideoRecord::READY, 1));
        assert!(page.contains(r#"data-manifest="/content/clip/manifest.mpd""#));
        assert!(page.contains(r#"<a href="/content/clip/manifest.mpd">"#));
        assert!(page.contains(r#"<video id="player" controls"#));
        assert!(page.contains(r#"poster="/content/clip/poster.jpg""#));
        assert!(page.contains(r#"<select id="quality""#));
        assert!(page.contains(r#"<option value="auto" selected>Auto</option>"#));
        assert!(page.contains(r#"<a href="/">"#));
        let dash = page
            .find(r#"<script src="/assets/dash.all.min.js"></script>"#)
            .expect("dash.js script tag");
        let watch = page
            .find(r#"<script src="/assets/watch.js"></script>"#)
            .expect("watch.js script tag");
        assert!(dash < watch, "dash.js must load before the page script");
        assert!(page.contains("Duration 01:05"));
        assert!(!page.contains("<script>"));
    }

    #[test]
    fn message_pages_escape_and_refresh() {
        let page = message("Not found", "no video <b>x</b>", None);
        assert!(page.contains("no video &lt;b&gt;x&lt;/b&gt;"));
        assert!(!page.contains("http-equiv"));
        let page = message("Processing", "wait", Some(5));
        assert!(page.contains(r#"<meta http-equiv="refresh" content="5">"#));
    }
}
