//! The poster frame shown before playback starts.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{file_url, input_args, Container, DashError, Probe};

/// Poster width in pixels; the height follows the display aspect ratio (even, for the JPEG encoder's 4:2:0).
pub const THUMBNAIL_WIDTH: u32 = 320;
/// Decoding one frame should take well under a second; this only guards against a pathological input.
const THUMBNAIL_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes a JPEG poster frame of `input` to `out` (conventionally `poster.jpg`), 320 px wide. `probe` must be
/// `input`'s (its container is forced on ffmpeg).
///
/// The frame is taken 1 s in (the very first frame is often black or a fade-in), or from the middle of clips
/// shorter than 2 s. If that position yields no frame (a duration header that overstates the stream), the first
/// frame is used instead. The JPEG is written beside `out` under a temporary name and renamed into place, so
/// `out` is either absent or complete.
pub async fn thumbnail(input: &Path, out: &Path, probe: &Probe) -> Result<(), DashError> {
    let name = out
        .file_name()
        .ok_or_else(|| DashError::Invalid(format!("{} is not a file path", out.display())))?;
    let tmp = out.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let input_url = file_url(input)?;
    let tmp_url = file_url(&tmp)?;
    let at = if probe.duration_ms >= 2000 {
        1.0
    } else {
        probe.duration_ms as f64 / 2000.0
    };
    let result = async {
        for seek in [at, 0.0] {
            extract(&input_url, probe.container, &tmp_url, seek).await?;
            let ok = match tokio::fs::read(&tmp).await {
                Ok(bytes) => bytes.starts_with(&[0xff, 0xd8]) && bytes.len() > 100,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(DashError::io(format!("cannot read {}", tmp.display()), e)),
            };
            if ok {
                return tokio::fs::rename(&tmp, out)
                    .await
                    .map_err(|e| DashError::io(format!("cannot write {}", out.display()), e));
            }
            if seek == 0.0 {
                break;
            }
        }
        Err(DashError::Corrupt(
            "no frame could be decoded for the poster image".into(),
        ))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn extract(
    input_url: &str,
    container: Container,
    out_url: &str,
    seek: f64,
) -> Result<(), DashError> {
    // Width 320, height from the display aspect ratio (`dar` includes non-square pixels), square pixels out.
    let filter = format!("scale=w={THUMBNAIL_WIDTH}:h=trunc(ow/dar/2)*2,setsar=1");
    let child = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-loglevel",
            "error",
            "-y",
        ])
        // -ss before -i: a fast keyframe seek plus exact decode to the position, not a decode from the start.
        // The input is read as its probed container, nothing but the file (see `input_args`).
        .args(["-ss", &format!("{seek:.3}")])
        .args(input_args(input_url, container))
        .args(["-frames:v", "1", "-an", "-sn", "-vf", &filter])
        .args([
            "-c:v", "mjpeg", "-q:v", "3", "-f", "image2", "-update", "1", out_url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DashError::Spawn {
            program: "ffmpeg",
            source,
        })?;
    let output = tokio::time::timeout(THUMBNAIL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| DashError::Timeout("ffmpeg (thumbnail)"))?
        .map_err(|e| DashError::io("ffmpeg (thumbnail)", e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let start = stderr.len().saturating_sub(2048);
        let start = (start..stderr.len())
            .find(|&i| stderr.is_char_boundary(i))
            .unwrap_or(stderr.len());
        return Err(DashError::Ffmpeg {
            status: output.status,
            stderr_tail: stderr[start..].trim().to_owned(),
        });
    }
    Ok(())
}
