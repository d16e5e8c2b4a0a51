//! The pipeline's error type, the HTTP status each error maps to, and what a client may be told about it.

use std::process::ExitStatus;
use std::time::Duration;

/// Everything probing, transcoding or thumbnailing can fail with.
///
/// `Display` is the detailed text for the log (it may name staging paths and quote ffmpeg's stderr);
/// [`DashError::public_message`] is what goes into a response body: what was wrong with the file, never a
/// path or a tool's raw output.
#[derive(Debug, thiserror::Error)]
pub enum DashError {
    /// The file is readable but is not a video we accept: text, an image, audio only, a container outside the
    /// allow-list, or a manifest/playlist that points at other files. HTTP 415.
    #[error("not a video: {0}")]
    NotVideo(String),
    /// The file looks like a video container but cannot be used: truncated, no frames, zero duration, nonsense
    /// dimensions or frame rate, or ffmpeg produced output that does not match the source. HTTP 422.
    #[error("corrupt video: {0}")]
    Corrupt(String),
    /// A usable video over one of the reader's limits (`READER_MAX_VIDEO_SECS`, `READER_MAX_VIDEO_PIXELS`, the
    /// frame-rate ceiling). HTTP 422.
    #[error("video over a limit: {0}")]
    Limit(String),
    /// ffmpeg exited unsuccessfully for a file that probed fine. `stderr_tail` is the last ~2 KiB it printed
    /// (logged, never sent to a client).
    #[error("ffmpeg failed ({status}): {stderr_tail}")]
    Ffmpeg {
        status: ExitStatus,
        stderr_tail: String,
    },
    /// The cancellation token fired, or the receiver of finished files was dropped; ffmpeg was killed.
    #[error("transcode cancelled")]
    Cancelled,
    /// `ffmpeg` or `ffprobe` could not be started (usually: not installed).
    #[error("cannot run {program}: {source} (is ffmpeg installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A helper step (ffprobe, the poster frame) ran longer than the pipeline allows for it.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The transcode ran past its wall-time limit (`READER_TRANSCODE_TIMEOUT_SECS`); ffmpeg's process group
    /// was killed. HTTP 422: the file costs more to transcode than this reader grants one upload.
    #[error("transcoding took longer than the {} s allowed for this video", .limit.as_secs())]
    TooSlow { limit: Duration },
    /// The caller asked for something the pipeline cannot do (empty ladder, non-UTF-8 path, used output dir).
    #[error("invalid transcode request: {0}")]
    Invalid(String),
    /// A local file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl DashError {
    /// The HTTP status a route should answer with for this error.
    ///
    /// 499 for [`DashError::Cancelled`]: nginx's "client closed request", since cancellation means the upload was
    /// aborted and nobody is waiting for the answer; logs still tell it apart from a server fault.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotVideo(_) => 415,
            Self::Corrupt(_) | Self::Limit(_) | Self::TooSlow { .. } => 422,
            Self::Cancelled => 499,
            Self::Ffmpeg { .. }
            | Self::Spawn { .. }
            | Self::Timeout(_)
            | Self::Invalid(_)
            | Self::Io { .. } => 500,
        }
    }

    /// A short reason for the uploader: no staging or work paths, no ffmpeg/ffprobe output. The messages of
    /// [`NotVideo`](Self::NotVideo), [`Corrupt`](Self::Corrupt) and [`Limit`](Self::Limit) are composed by the
    /// pipeline from validated values only, so they are passed on; the other variants get a fixed text (their
    /// detail belongs in the log, see `Display`).
    pub fn public_message(&self) -> String {
        match self {
            Self::NotVideo(_) | Self::Corrupt(_) | Self::Limit(_) | Self::TooSlow { .. } => {
                self.to_string()
            }
            Self::Ffmpeg { status, .. } => match status.code() {
                Some(code) => format!("transcoding failed (ffmpeg exited with status {code})"),
                None => "transcoding failed (ffmpeg was killed)".into(),
            },
            Self::Cancelled => "transcode cancelled".into(),
            Self::Spawn { program, .. } => format!("the transcoder cannot run {program}"),
            Self::Timeout(step) => format!("{step} timed out"),
            Self::Invalid(_) => {
                "the transcoder cannot process this upload (server configuration)".into()
            }
            Self::Io { .. } => "the transcoder could not read or write its working files".into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
