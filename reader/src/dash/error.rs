//! The pipeline's error type and the HTTP status each error maps to.

use std::process::ExitStatus;

/// Everything probing, transcoding or thumbnailing can fail with.
///
/// The messages are meant for the uploader (they end up in a 415/422 response body), so they say what was wrong
/// with the file rather than how the pipeline noticed.
#[derive(Debug, thiserror::Error)]
pub enum DashError {
    /// The file is readable but is not a video: text, an image, audio only, an unknown format. HTTP 415.
    #[error("not a video: {0}")]
    NotVideo(String),
    /// The file looks like a video container but cannot be used: truncated, no frames, zero duration, nonsense
    /// dimensions, or ffmpeg produced output that does not cover the source. HTTP 422.
    #[error("corrupt video: {0}")]
    Corrupt(String),
    /// ffmpeg exited unsuccessfully for a file that probed fine. `stderr_tail` is the last ~2 KiB it printed.
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
    /// A tool ran longer than the pipeline allows for its step.
    #[error("{0} timed out")]
    Timeout(&'static str),
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
            Self::Corrupt(_) => 422,
            Self::Cancelled => 499,
            Self::Ffmpeg { .. }
            | Self::Spawn { .. }
            | Self::Timeout(_)
            | Self::Invalid(_)
            | Self::Io { .. } => 500,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
