//! The DASH pipeline: probe an uploaded video, choose an adaptive bitrate ladder, transcode it with one ffmpeg
//! run into MPEG-DASH, hand out each finished file while ffmpeg is still running, and make a poster frame.
//!
//! This module is the library; the reader's `dash` sink stages the upload to a file (ffmpeg cannot read an MP4
//! whose index is at the end from a pipe), calls [`probe`], [`ladder`], [`transcode`] and [`thumbnail`], and
//! replicates every path that arrives on the `done` channel onto the ring.
//!
//! # Layout
//!
//! Output of one [`transcode`] (names are the public contract of `GET /content/{id}/{file}`, DESIGN.md §2):
//!
//! ```text
//! out_dir/
//!   manifest.mpd               MPEG-DASH static manifest (SegmentTemplate + SegmentTimeline); sent last
//!   init-{rep}.m4s             initialisation segment of each representation
//!   chunk-{rep}-{number:05}.m4s  media segments, numbered from 1, ~4 s each, keyframe-aligned across reps
//! ```
//!
//! Representations `0..n-1` are the H.264 video renditions, highest first (0 is the best video); when the source
//! has audio, representation `n` is AAC stereo. Adaptation set 0 holds the video, set 1 the audio. The caller
//! writes the poster as `poster.jpg` ([`POSTER`]) next to these.
//!
//! Modules:
//! - [`probe`](probe()): `ffprobe` → [`Probe`], rejecting non-videos (415) and damaged files (422).
//! - [`ladder`](ladder()): renditions from 1080p/720p/480p/360p, never upscaled.
//! - [`ffmpeg_args`]: the single ffmpeg command line (public for the benchmark's bare-ffmpeg baseline).
//! - [`transcode`](transcode()): runs ffmpeg, streams finished files, validates the output.
//! - [`thumbnail`](thumbnail()): the JPEG poster frame.
//! - `mpd`: the small manifest reader used by validation.
//!
//! Errors are [`DashError`]; [`DashError::http_status`] maps them to 415/422/499/500.

mod args;
mod error;
mod ladder;
mod mpd;
mod probe;
mod thumbnail;
mod transcode;

use std::path::Path;

pub use args::{ffmpeg_args, AUDIO_KBPS};
pub use error::DashError;
pub use ladder::{ladder, Rendition, RUNGS};
pub use probe::{probe, Probe};
pub use thumbnail::{thumbnail, THUMBNAIL_WIDTH};
pub use transcode::{transcode, TranscodeReport};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.mpd";
/// The poster frame's conventional file name.
pub const POSTER: &str = "poster.jpg";

/// Encoder settings of a [`transcode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeOptions {
    /// Target segment length in seconds (keyframes are forced on these boundaries). Default 4.
    pub segment_secs: u32,
    /// libx264 preset. Default `veryfast`: a good quality/speed trade-off for 2-core machines.
    pub preset: String,
    /// Encoder threads (`-threads`); `None` lets ffmpeg choose (one per core).
    pub threads: Option<u32>,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        Self {
            segment_secs: 4,
            preset: "veryfast".into(),
            threads: None,
        }
    }
}

/// The Content-Type of a DASH output file name, or `None` when the name is not one the pipeline produces (so a
/// route can answer 400 for a malformed name before asking the ring).
pub fn content_type(file: &str) -> Option<&'static str> {
    if file == MANIFEST {
        return Some("application/dash+xml");
    }
    if file == POSTER {
        return Some("image/jpeg");
    }
    let stem = file.strip_suffix(".m4s")?;
    let numeric = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match stem.strip_prefix("init-") {
        Some(rep) => numeric(rep),
        None => stem
            .strip_prefix("chunk-")
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(rep, n)| numeric(rep) && numeric(n) && n.len() >= 5),
    };
    ok.then_some("video/mp4")
}

/// `file:` URL of a path for ffmpeg/ffprobe: a `:` in a path is then never read as a protocol prefix, and the
/// dash muxer sees the `file` protocol it needs for its write-then-rename behaviour.
fn file_url(path: &Path) -> Result<String, DashError> {
    let s = path.to_str().ok_or_else(|| {
        DashError::Invalid(format!(
            "path {} is not valid UTF-8",
            path.to_string_lossy()
        ))
    })?;
    Ok(format!("file:{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("manifest.mpd"), Some("application/dash+xml"));
        assert_eq!(content_type("init-0.m4s"), Some("video/mp4"));
        assert_eq!(content_type("chunk-3-00012.m4s"), Some("video/mp4"));
        assert_eq!(content_type("poster.jpg"), Some("image/jpeg"));
        for bad in [
            "",
            "x.m4s",
            "chunk-0-1.m4s",
            "init-.m4s",
            "../init-0.m4s",
            "chunk-a-00001.m4s",
        ] {
            assert_eq!(content_type(bad), None, "{bad}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(DashError::NotVideo("x".into()).http_status(), 415);
        assert_eq!(DashError::Corrupt("x".into()).http_status(), 422);
        assert_eq!(DashError::Cancelled.http_status(), 499);
        assert_eq!(DashError::Timeout("ffmpeg").http_status(), 500);
    }
}
