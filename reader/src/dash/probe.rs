//! `ffprobe` wrapper: decides whether an upload is a usable video before any transcoding starts.
//!
//! Nothing in ffprobe's JSON is trusted: every number is parsed leniently (number or numeric string), checked for
//! range, and a missing or nonsensical value turns into a [`DashError`] that tells the uploader what is wrong.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::Command;

use super::{file_url, DashError};

/// How long ffprobe may take. It reads headers only, so anything slower is a pathological file.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame side accepted (libx264's own limit is 16384 in each direction).
const MAX_SIDE: u32 = 16_384;
/// A week of video: anything longer is a broken header, not a real upload.
const MAX_DURATION_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// What the pipeline needs to know about a source video. Dimensions are the *displayed* ones: rotation metadata
/// and non-square pixels are already applied, because ffmpeg autorotates and the ladder scales to square pixels.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub duration_ms: u64,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// ffprobe's codec name (`h264`, `hevc`, `vp9`, ...), restricted to `[A-Za-z0-9_]`.
    pub video_codec: String,
    pub has_audio: bool,
}

/// A probe plus what only the transcoder's output check needs.
#[derive(Debug, Clone)]
pub(crate) struct ProbeDetail {
    pub(crate) probe: Probe,
    /// Duration of the video stream itself when the container states it (the format duration may be longer
    /// because of a longer audio track); the DASH output's video timeline must cover this.
    pub(crate) video_duration_ms: u64,
}

/// Probes `input` with `ffprobe -show_format -show_streams` and validates the result.
///
/// Errors: [`DashError::NotVideo`] for files without a video stream (text, audio only, a still image, an unknown
/// format); [`DashError::Corrupt`] for files that look like a media container but cannot be used (truncated, no
/// frames, zero duration, impossible dimensions or frame rate).
pub async fn probe(input: &Path) -> Result<Probe, DashError> {
    probe_detail(input).await.map(|d| d.probe)
}

pub(crate) async fn probe_detail(input: &Path) -> Result<ProbeDetail, DashError> {
    let meta = tokio::fs::metadata(input)
        .await
        .map_err(|e| DashError::io(format!("cannot read {}", input.display()), e))?;
    if !meta.is_file() {
        return Err(DashError::Invalid(format!(
            "{} is not a regular file",
            input.display()
        )));
    }
    if meta.len() == 0 {
        return Err(DashError::NotVideo("the file is empty".into()));
    }
    let head = read_head(input).await?;
    let url = file_url(input)?;

    let child = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DashError::Spawn {
            program: "ffprobe",
            source,
        })?;
    let output = tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| DashError::Timeout("ffprobe"))?
        .map_err(|e| DashError::io("ffprobe", e))?;

    let stderr = String::from_utf8_lossy(&output.stderr);
    let parsed: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    let has_format = parsed
        .as_ref()
        .and_then(|v| v.get("format"))
        .is_some_and(Value::is_object);
    let json = match parsed {
        Some(v) if output.status.success() && has_format => v,
        _ => return Err(unreadable(&head, &stderr)),
    };
    let detail = interpret(&json)?;
    // ffprobe reads only the headers: an MP4 whose `moov` comes first probes perfectly even when half of its
    // `mdat` is missing, and ffmpeg then "succeeds" with half the frames. The box walk catches that up front.
    if is_iso_bmff(&head) {
        check_bmff_boxes(input, meta.len()).await?;
    }
    Ok(detail)
}

/// Classifies a file ffprobe could not read: a known container signature means a damaged video (422),
/// anything else is simply not a video (415).
fn unreadable(head: &[u8], stderr: &str) -> DashError {
    let why = first_line(stderr);
    match container_kind(head) {
        Some(kind) => DashError::Corrupt(format!("{kind} file that cannot be read ({why})")),
        // ffprobe's own message names whatever demuxer the file extension suggested ("moov atom not found" for a
        // text file called x.mp4), which would mislead the uploader; it goes to the log instead.
        None => {
            tracing::debug!(ffprobe = %why, "unrecognised upload");
            DashError::NotVideo("not a recognised video format".into())
        }
    }
}

fn first_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("ffprobe found no streams");
    // ffprobe prefixes the file name (our staging path, meaningless to the uploader) or `[demuxer @ 0x...]`.
    let line = line.rsplit_once(": ").map_or(line, |(_, msg)| msg);
    let line = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((_, msg)) => msg,
        None => line,
    };
    line.chars().take(200).collect()
}

/// Recognises the signatures of common video containers in the first bytes of a file.
fn container_kind(head: &[u8]) -> Option<&'static str> {
    if is_iso_bmff(head) {
        return Some("MP4/QuickTime");
    }
    if head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return Some("Matroska/WebM");
    }
    if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"AVI " {
        return Some("AVI");
    }
    if head.starts_with(b"FLV") {
        return Some("FLV");
    }
    if head.starts_with(b"OggS") {
        return Some("Ogg");
    }
    if head.starts_with(&[0x00, 0x00, 0x01, 0xba]) {
        return Some("MPEG-PS");
    }
    if head.starts_with(&[0x30, 0x26, 0xb2, 0x75]) {
        return Some("ASF/WMV");
    }
    if head.len() > 188 && head[0] == 0x47 && head[188] == 0x47 {
        return Some("MPEG-TS");
    }
    None
}

/// ISO base media file format (MP4, MOV, 3GP, fragmented MP4): a box header with a known top-level type.
fn is_iso_bmff(head: &[u8]) -> bool {
    head.len() >= 8
        && matches!(
            &head[4..8],
            b"ftyp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"pnot" | b"styp" | b"moof"
        )
}

async fn read_head(input: &Path) -> Result<Vec<u8>, DashError> {
    let mut file = tokio::fs::File::open(input)
        .await
        .map_err(|e| DashError::io(format!("cannot open {}", input.display()), e))?;
    let mut head = vec![0u8; 512];
    let mut filled = 0;
    while filled < head.len() {
        let n = file
            .read(&mut head[filled..])
            .await
            .map_err(|e| DashError::io(format!("cannot read {}", input.display()), e))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    Ok(head)
}

/// Walks the top-level boxes of an ISO BMFF file and fails if one claims to extend past the end of the file,
/// which is what a truncated upload looks like.
async fn check_bmff_boxes(input: &Path, len: u64) -> Result<(), DashError> {
    let io_err = |e| DashError::io(format!("cannot read {}", input.display()), e);
    let mut file = tokio::fs::File::open(input).await.map_err(io_err)?;
    let mut offset = 0u64;
    // Fragmented files have two boxes per fragment; a million boxes is far beyond any real upload.
    for _ in 0..1_000_000 {
        let remaining = len - offset;
        if remaining == 0 {
            return Ok(());
        }
        if remaining < 8 {
            // A few stray bytes after the last box: some muxers pad; harmless to ffmpeg.
            return Ok(());
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(io_err)?;
        let mut header = [0u8; 16];
        let want = if remaining >= 16 { 16 } else { 8 };
        file.read_exact(&mut header[..want]).await.map_err(io_err)?;
        let size32 = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = String::from_utf8_lossy(&header[4..8]).into_owned();
        let size = match size32 {
            0 => return Ok(()), // "extends to the end of the file"
            1 if want == 16 => u64::from_be_bytes([
                header[8], header[9], header[10], header[11], header[12], header[13], header[14],
                header[15],
            ]),
            1 => {
                return Err(DashError::Corrupt(
                    "truncated MP4: the file ends inside a box header".into(),
                ))
            }
            n => u64::from(n),
        };
        if size < 8 {
            return Err(DashError::Corrupt(format!(
                "damaged MP4: box '{}' at byte {offset} has an impossible size {size}",
                kind.escape_debug()
            )));
        }
        if size > remaining {
            return Err(DashError::Corrupt(format!(
                "truncated MP4: box '{}' at byte {offset} needs {size} bytes but the file ends after {remaining} \
                 (the upload is incomplete)",
                kind.escape_debug()
            )));
        }
        offset += size;
    }
    Ok(())
}

/// Turns ffprobe's JSON into a validated [`ProbeDetail`].
fn interpret(json: &Value) -> Result<ProbeDetail, DashError> {
    let format = &json["format"];
    let format_name = format["format_name"].as_str().unwrap_or("").to_owned();
    let streams: &[Value] = json["streams"].as_array().map_or(&[], Vec::as_slice);

    let has_audio = streams.iter().any(|s| s["codec_type"] == "audio");
    let video = streams.iter().find(|s| {
        s["codec_type"] == "video"
            // Cover art inside an audio file is a "video" stream of one picture.
            && int(&s["disposition"]["attached_pic"]) != Some(1)
            // ANSI art / text rendered by the tty demuxer is not a video anyone uploaded as such.
            && !matches!(s["codec_name"].as_str(), Some("ansi" | "bintext" | "xbin" | "idf"))
    });
    let Some(video) = video else {
        let what = if has_audio {
            "audio only, no video stream".to_owned()
        } else if streams.is_empty() {
            format!("no streams found in the {} file", nice_format(&format_name))
        } else {
            format!("no video stream in the {} file", nice_format(&format_name))
        };
        return Err(DashError::NotVideo(what));
    };
    let codec = sanitize_codec(video["codec_name"].as_str().unwrap_or(""));

    // Image demuxers (`image2`, `png_pipe`, `jpeg_pipe`, ...) read pictures, not videos.
    if format_name == "image2" || format_name.ends_with("_pipe") {
        return Err(DashError::NotVideo(format!(
            "a still image ({codec}), not a video"
        )));
    }
    let frames = int(&video["nb_frames"]);
    if frames == Some(1) {
        return Err(DashError::NotVideo(format!(
            "a single frame ({codec}), not a video"
        )));
    }
    if frames == Some(0) {
        return Err(DashError::Corrupt("the video stream has no frames".into()));
    }

    let (width, height) = display_size(video)?;
    let fps = frame_rate(video)?;

    let format_secs = secs(&format["duration"]);
    let video_secs = secs(&video["duration"]);
    let duration = format_secs.or(video_secs).ok_or_else(|| {
        DashError::Corrupt("the file states no duration (zero or missing)".into())
    })?;
    if duration > MAX_DURATION_SECS {
        return Err(DashError::Corrupt(format!(
            "implausible duration of {duration:.0} s"
        )));
    }
    let duration_ms = (duration * 1000.0).round() as u64;
    if duration_ms == 0 {
        return Err(DashError::Corrupt("the video lasts 0 ms".into()));
    }
    let video_duration_ms = video_secs
        .filter(|&v| v <= MAX_DURATION_SECS)
        .map_or(duration_ms, |v| {
            ((v * 1000.0).round() as u64).min(duration_ms)
        });
    if video_duration_ms == 0 {
        return Err(DashError::Corrupt("the video stream lasts 0 ms".into()));
    }
    let still_codec = matches!(
        codec.as_str(),
        "png" | "mjpeg" | "jpegls" | "bmp" | "gif" | "webp" | "tiff" | "apng" | "jpeg2000"
    );
    if still_codec && frames.is_none() && video_secs.is_none() && duration_ms < 100 {
        return Err(DashError::NotVideo(format!(
            "a still image ({codec}), not a video"
        )));
    }

    Ok(ProbeDetail {
        probe: Probe {
            duration_ms,
            width,
            height,
            fps,
            video_codec: codec,
            has_audio,
        },
        video_duration_ms,
    })
}

fn nice_format(name: &str) -> &str {
    if name.is_empty() {
        "unrecognised"
    } else {
        name.split(',').next().unwrap_or(name)
    }
}

fn sanitize_codec(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

/// Width and height as displayed: storage size, stretched by the sample aspect ratio, swapped for ±90° rotation.
fn display_size(video: &Value) -> Result<(u32, u32), DashError> {
    let w = int(&video["width"]);
    let h = int(&video["height"]);
    let (w, h) = match (w, h) {
        (Some(w), Some(h))
            if (1..=i64::from(MAX_SIDE)).contains(&w) && (1..=i64::from(MAX_SIDE)).contains(&h) =>
        {
            (w as u32, h as u32)
        }
        _ => {
            return Err(DashError::Corrupt(format!(
                "invalid frame size {}x{}",
                show(&video["width"]),
                show(&video["height"])
            )))
        }
    };
    let mut dw = w;
    if let Some((n, d)) = video["sample_aspect_ratio"].as_str().and_then(rational) {
        if n > 0 && d > 0 {
            let stretched = (f64::from(w) * n as f64 / d as f64).round();
            // A SAR that would make the picture absurdly wide or narrow is a broken header: ignore it.
            if (1.0..=f64::from(MAX_SIDE)).contains(&stretched) {
                dw = stretched as u32;
            }
        }
    }
    let (dw, dh) = if rotation(video).rem_euclid(180) == 90 {
        (h, dw)
    } else {
        (dw, h)
    };
    Ok((dw, dh))
}

/// Rotation in degrees from the display matrix side data (ffmpeg 5+) or the legacy `rotate` tag.
fn rotation(video: &Value) -> i64 {
    let from_side_data = video["side_data_list"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|sd| int(&sd["rotation"]));
    from_side_data
        .or_else(|| int(&video["tags"]["rotate"]))
        .filter(|r| r.abs() <= 360)
        .unwrap_or(0)
}

fn frame_rate(video: &Value) -> Result<f64, DashError> {
    let valid = |v: &Value| {
        v.as_str()
            .and_then(rational)
            .filter(|&(_, d)| d > 0)
            .map(|(n, d)| n as f64 / d as f64)
            .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1000.0)
    };
    valid(&video["avg_frame_rate"])
        .or_else(|| valid(&video["r_frame_rate"]))
        .ok_or_else(|| {
            DashError::Corrupt(format!(
                "no usable frame rate (avg_frame_rate {}, r_frame_rate {})",
                show(&video["avg_frame_rate"]),
                show(&video["r_frame_rate"])
            ))
        })
}

/// `"30000/1001"` or `"16:9"` → (30000, 1001).
fn rational(s: &str) -> Option<(i64, i64)> {
    let (n, d) = s.split_once(['/', ':'])?;
    Some((n.trim().parse().ok()?, d.trim().parse().ok()?))
}

/// An integer given as a JSON number or a numeric string (ffprobe uses both).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A positive, finite number of seconds given as a number or string; `None` for anything else.
fn secs(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    (f.is_finite() && f > 0.0).then_some(f)
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "missing".into(),
        Value::String(s) => s.chars().take(40).collect(),
        other => other.to_string().chars().take(40).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn video(extra: Value) -> Value {
        let mut s = json!({
            "codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
            "avg_frame_rate": "30000/1001", "r_frame_rate": "30000/1001", "duration": "12.5",
            "nb_frames": "375", "disposition": {"attached_pic": 0}
        });
        if let (Some(m), Value::Object(e)) = (s.as_object_mut(), extra) {
            m.extend(e);
        }
        s
    }

    fn doc(streams: Vec<Value>, format: Value) -> Value {
        json!({ "streams": streams, "format": format })
    }

    #[test]
    fn accepts_a_plain_video() {
        let d = interpret(&doc(
            vec![
                video(json!({})),
                json!({"codec_type": "audio", "codec_name": "aac"}),
            ],
            json!({"format_name": "mov,mp4", "duration": "12.600"}),
        ))
        .expect("valid");
        assert_eq!(d.probe.duration_ms, 12_600);
        assert_eq!(d.video_duration_ms, 12_500);
        assert_eq!((d.probe.width, d.probe.height), (1920, 1080));
        assert!((d.probe.fps - 29.97).abs() < 0.01);
        assert!(d.probe.has_audio);
        assert_eq!(d.probe.video_codec, "h264");
    }

    #[test]
    fn rotation_and_sar_give_display_size() {
        let d = interpret(&doc(
            vec![video(json!({"side_data_list": [{"rotation": -90}]}))],
            json!({"format_name": "mov", "duration": "1"}),
        ))
        .expect("valid");
        assert_eq!((d.probe.width, d.probe.height), (1080, 1920));
        let d = interpret(&doc(
            vec![video(
                json!({"width": 720, "height": 576, "sample_aspect_ratio": "64:45"}),
            )],
            json!({"format_name": "mpegts", "duration": "1"}),
        ))
        .expect("valid");
        assert_eq!((d.probe.width, d.probe.height), (1024, 576));
    }

    #[test]
    fn rejects_bad_numbers() {
        let bad = [
            json!({"width": 0}),
            json!({"height": -5}),
            json!({"width": "huge"}),
            json!({"width": 100_000}),
            json!({"avg_frame_rate": "0/0", "r_frame_rate": "1/0"}),
            json!({"avg_frame_rate": "NaN/1", "r_frame_rate": "100000/1"}),
            json!({"nb_frames": "0"}),
        ];
        for extra in bad {
            let err = interpret(&doc(
                vec![video(extra.clone())],
                json!({"format_name": "mov", "duration": "3"}),
            ))
            .expect_err("must fail");
            assert!(matches!(err, DashError::Corrupt(_)), "{extra}: {err}");
        }
        for dur in [
            json!("0.000000"),
            json!("-1"),
            json!("inf"),
            json!(null),
            json!("1e12"),
        ] {
            let err = interpret(&doc(
                vec![video(json!({"duration": null}))],
                json!({"format_name": "mov", "duration": dur.clone()}),
            ))
            .expect_err("must fail");
            assert!(matches!(err, DashError::Corrupt(_)), "{dur}: {err}");
        }
    }

    #[test]
    fn not_videos() {
        let cases = [
            doc(vec![], json!({"format_name": "tty"})),
            doc(
                vec![json!({"codec_type": "audio", "codec_name": "mp3"})],
                json!({"format_name": "mp3", "duration": "3"}),
            ),
            doc(
                vec![
                    json!({"codec_type": "audio", "codec_name": "mp3"}),
                    video(json!({"codec_name": "mjpeg", "disposition": {"attached_pic": 1}})),
                ],
                json!({"format_name": "mp3", "duration": "3"}),
            ),
            doc(
                vec![video(
                    json!({"codec_name": "png", "nb_frames": null, "duration": null}),
                )],
                json!({"format_name": "png_pipe"}),
            ),
            doc(
                vec![video(json!({"nb_frames": "1"}))],
                json!({"format_name": "mov", "duration": "0.04"}),
            ),
            doc(
                vec![video(json!({"codec_name": "ansi"}))],
                json!({"format_name": "tty", "duration": "1"}),
            ),
        ];
        for c in cases {
            let err = interpret(&c).expect_err("must fail");
            assert_eq!(err.http_status(), 415, "{c}: {err}");
        }
    }

    #[test]
    fn signatures() {
        let mut mp4 = vec![0, 0, 0, 0x20];
        mp4.extend_from_slice(b"ftypisom");
        assert_eq!(container_kind(&mp4), Some("MP4/QuickTime"));
        assert_eq!(container_kind(b"hello world, this is text"), None);
        assert_eq!(
            container_kind(&[0x1a, 0x45, 0xdf, 0xa3, 0]),
            Some("Matroska/WebM")
        );
        assert!(matches!(
            unreadable(b"plain", "x.txt: Invalid data found when processing input"),
            DashError::NotVideo(m) if !m.contains("x.txt")
        ));
        assert!(matches!(
            unreadable(&mp4, "[mov,mp4 @ 0x55] moov atom not found"),
            DashError::Corrupt(m) if m.ends_with("(moov atom not found)")
        ));
    }
}
