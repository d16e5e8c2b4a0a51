//! The DASH pipeline: probe an uploaded video, choose an adaptive bitrate ladder, transcode it with one ffmpeg
//! run into MPEG-DASH, hand out each finished file while ffmpeg is still running, and make a poster frame.
//!
//! This module is the library; the reader's `dash` sink stages the upload to a file (ffmpeg cannot read an MP4
//! whose index is at the end from a pipe), calls [`probe_within`], [`ladder`], [`transcode`] and [`thumbnail`],
//! and replicates every path that arrives on the `done` channel onto the ring.
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
//! # Trust
//!
//! The input is an upload, so ffmpeg is never allowed to guess what it is or to read anything else:
//!
//! - **Only the upload is read.** The container is decided by its first bytes, from an allow-list
//!   ([`Container`]: MP4/MOV, Matroska/WebM); anything else, including DASH/HLS manifests, concat lists and
//!   other containers, is refused (415) before ffprobe runs. ffprobe and ffmpeg then get that demuxer forced
//!   (`-f mov` / `-f matroska`), `-protocol_whitelist file`, and for MP4 `-enable_drefs 0`; an MP4 whose
//!   sample descriptions point at external files (`dref` entries that are not self-contained) is refused too.
//! - **Source timing is kept** (`-fps_mode passthrough`): no frame is ever duplicated to fill a gap, so the
//!   output holds at most the frames the upload holds. A sparse file (three frames spread over 600 s) is a
//!   legitimate, if odd, video (slides, a still image over an audio track) and is *transcoded*, into a number
//!   of files proportional to its content: a segment can only end on a frame, so each long gap becomes one
//!   long segment instead of 150 copies of the same picture.
//! - **Output is capped by the input.** ffmpeg writes at most the probed duration plus [`output_margin`]
//!   (`-t`) and at most [`MAX_FPS`] frames per second of it (`-frames:v`); a run that names more segments than
//!   that duration can fill is killed; the manifest must not run longer than the source.
//! - **Limits** ([`Limits`]): duration, pixels per frame, frame rate and frame count are checked when probing
//!   (422); each transcode has a wall-time limit after which ffmpeg's whole process group is killed (422).
//! - **Errors** carry a detailed `Display` for the log and a short [`DashError::public_message`] for clients.
//!
//! Modules:
//! - [`probe`](probe()): container sniffing + `ffprobe` → [`Probe`], rejecting non-videos (415), damaged
//!   files and files over the limits (422).
//! - [`ladder`](ladder()): renditions from 1080p/720p/480p/360p, never upscaled.
//! - [`ffmpeg_args_probed`]: the single ffmpeg command line (public for the benchmark's bare-ffmpeg baseline).
//! - [`transcode`](transcode()): runs ffmpeg, streams finished files, validates the output.
//! - [`thumbnail`](thumbnail()): the JPEG poster frame.
//! - [`provisional_manifest`]: the static manifest a video plays from while it is transcoded.
//! - `mpd`: the small manifest reader used by validation.
//!
//! Errors are [`DashError`]; [`DashError::http_status`] maps them to 415/422/499/500.

mod args;
mod error;
mod ladder;
mod mpd;
mod probe;
mod provisional;
mod thumbnail;
mod transcode;

use std::path::Path;
use std::time::Duration;

pub use args::{ffmpeg_args, ffmpeg_args_probed, AUDIO_KBPS};
pub use error::DashError;
pub use ladder::{ladder, Rendition, RUNGS};
pub use probe::{probe, probe_within, Probe};
pub use provisional::{announced_segments, provisional_manifest};
pub use thumbnail::{thumbnail, THUMBNAIL_WIDTH};
pub use transcode::{transcode, Progress, TranscodeReport};

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

/// Highest frame rate accepted, in frames per second of the source (stated rate and frames ÷ duration): phones
/// record 240 fps slow motion; beyond 300 a file is a decoding-cost attack or a broken header. HTTP 422.
pub const MAX_FPS: f64 = 300.0;
/// Default `READER_MAX_VIDEO_SECS`: 4 hours.
pub const DEFAULT_MAX_VIDEO_SECS: u64 = 4 * 3600;
/// Default `READER_MAX_VIDEO_PIXELS`: 3840×2160 (4K UHD).
pub const DEFAULT_MAX_VIDEO_PIXELS: u64 = 3840 * 2160;
/// The automatic transcode time limit is this fixed allowance ...
pub const AUTO_TIMEOUT_BASE: Duration = Duration::from_secs(60);
/// ... plus this many times the source's duration (`veryfast` runs a 1080p ladder near real time on 2 cores).
pub const AUTO_TIMEOUT_FACTOR: u32 = 4;

/// What one upload may cost the transcoder. Defaults: 4 h, 3840×2160, automatic time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted source (`READER_MAX_VIDEO_SECS`).
    pub max_duration: Duration,
    /// Largest accepted frame, width × height, coded or displayed (`READER_MAX_VIDEO_PIXELS`).
    pub max_pixels: u64,
    /// Wall-time limit of one transcode (`READER_TRANSCODE_TIMEOUT_SECS`).
    pub timeout: TranscodeTimeout,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(DEFAULT_MAX_VIDEO_SECS),
            max_pixels: DEFAULT_MAX_VIDEO_PIXELS,
            timeout: TranscodeTimeout::Auto,
        }
    }
}

/// How long one transcode may run before ffmpeg is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranscodeTimeout {
    /// [`AUTO_TIMEOUT_BASE`] + [`AUTO_TIMEOUT_FACTOR`] × the source's probed duration: a 10 s clip gets 100 s,
    /// a 4 h film 16 h. Scales with the one thing the uploader cannot inflate without hitting
    /// `READER_MAX_VIDEO_SECS`.
    Auto,
    /// The same limit for every video.
    Fixed(Duration),
}

impl TranscodeTimeout {
    /// The limit for a source of `duration`.
    pub fn for_duration(self, duration: Duration) -> Duration {
        match self {
            Self::Auto => {
                AUTO_TIMEOUT_BASE.saturating_add(duration.saturating_mul(AUTO_TIMEOUT_FACTOR))
            }
            Self::Fixed(limit) => limit,
        }
    }
}

/// How much longer than the probed source the output may run: 1 s plus 1 % (AAC priming and the last frame's
/// duration make real output a few tens of milliseconds longer; anything beyond is invented content).
pub fn output_margin(duration: Duration) -> Duration {
    Duration::from_secs(1) + duration / 100
}

/// The input containers the transcoder reads, decided from a file's first bytes (never by ffmpeg's guess,
/// which follows DASH/HLS manifests and concat lists to other files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// ISO base media: MP4, MOV, 3GP, fragmented MP4 (`-f mov`).
    Mov,
    /// Matroska and WebM (`-f matroska`).
    Matroska,
}

impl Container {
    /// The ffmpeg demuxer forced for it.
    pub fn demuxer(self) -> &'static str {
        match self {
            Self::Mov => "mov",
            Self::Matroska => "matroska",
        }
    }

    /// A name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Mov => "MP4/QuickTime",
            Self::Matroska => "Matroska/WebM",
        }
    }
}

/// Input options for ffprobe/ffmpeg reading `input` as `container`: the demuxer forced, only the `file`
/// protocol, no external MP4 data references; ends with `-i file:{input}`.
pub(crate) fn input_args(input: &str, container: Container) -> Vec<String> {
    let mut a: Vec<String> = ["-protocol_whitelist", "file", "-f", container.demuxer()]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if container == Container::Mov {
        // ffmpeg's default since 2017, stated so a changed default cannot reopen the hole.
        a.extend(["-enable_drefs".to_owned(), "0".to_owned()]);
    }
    a.extend(["-i".to_owned(), input.to_owned()]);
    a
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
        assert_eq!(DashError::Limit("x".into()).http_status(), 422);
        let slow = DashError::TooSlow {
            limit: Duration::from_secs(2),
        };
        assert_eq!(slow.http_status(), 422);
        assert!(slow.public_message().contains("2 s"), "{slow}");
    }

    #[test]
    fn public_messages_hide_paths_and_stderr() {
        let io = DashError::io(
            "cannot list /srv/reader/staging/abc.dash",
            std::io::Error::other("boom"),
        );
        let invalid = DashError::Invalid("path /srv/reader/staging/x is not valid UTF-8".into());
        for e in [io, invalid] {
            let m = e.public_message();
            assert!(!m.contains("/srv"), "{m}");
            assert!(e.to_string().contains("/srv"), "the log keeps the detail");
        }
    }

    #[test]
    fn timeouts_scale_with_duration() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            TranscodeTimeout::Auto.for_duration(ten),
            Duration::from_secs(100)
        );
        assert_eq!(
            TranscodeTimeout::Fixed(Duration::from_secs(7)).for_duration(ten),
            Duration::from_secs(7)
        );
        assert_eq!(
            output_margin(Duration::from_secs(600)),
            Duration::from_secs(7)
        );
        let a = input_args("file:/x", Container::Mov);
        assert_eq!(
            a.join(" "),
            "-protocol_whitelist file -f mov -enable_drefs 0 -i file:/x"
        );
        let a = input_args("file:/x", Container::Matroska);
        assert_eq!(
            a.join(" "),
            "-protocol_whitelist file -f matroska -i file:/x"
        );
    }
}
