//! Deciding whether an upload is a usable video before any transcoding starts: the container is sniffed from
//! the file's first bytes against an allow-list, MP4 box structure is checked, then `ffprobe` reads the
//! headers with that demuxer forced and nothing but the file readable.
//!
//! Nothing in ffprobe's JSON is trusted: every number is parsed leniently (number or numeric string), checked for
//! range, and a missing or nonsensical value turns into a [`DashError`] that tells the uploader what is wrong.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::Command;

use super::{file_url, input_args, Container, DashError, Limits, MAX_FPS};

/// How long ffprobe may take. It reads headers only, so anything slower is a pathological file.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame side accepted (libx264's own limit is 16384 in each direction).
const MAX_SIDE: u32 = 16_384;
/// A week of video: anything longer is a broken header, not a real upload.
const MAX_DURATION_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// Bytes read from the start of a file to recognise it.
const HEAD_LEN: usize = 4096;
/// Boxes visited inside one `moov` looking for data references; real files have a few dozen.
const MAX_MOOV_BOXES: usize = 100_000;

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
    /// The container, from the allow-list; every later ffmpeg run forces its demuxer.
    pub container: Container,
}

impl Probe {
    /// The source's duration.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

/// A probe plus what only the transcoder's output check needs.
#[derive(Debug, Clone)]
pub(crate) struct ProbeDetail {
    pub(crate) probe: Probe,
    /// Duration of the video stream itself when the container states it (the format duration may be longer
    /// because of a longer audio track); the DASH output's video timeline must cover this.
    pub(crate) video_duration_ms: u64,
}

/// [`probe_within`] the default [`Limits`].
pub async fn probe(input: &Path) -> Result<Probe, DashError> {
    probe_within(input, &Limits::default()).await
}

/// Decides whether `input` is a video this reader transcodes, and describes it.
///
/// In order: the first bytes must be an allowed container ([`Container`]); anything else, a DASH/HLS manifest
/// or concat list in particular, is refused without being handed to ffprobe. An MP4 must have sound top-level
/// boxes (a truncated upload is caught here) and no data reference to another file. Only then does
/// `ffprobe -show_format -show_streams` run, with the demuxer forced and only the `file` protocol allowed.
///
/// Errors: [`DashError::NotVideo`] (415) for files that are not an accepted video (text, an image, audio only,
/// another container, a manifest or playlist, external references); [`DashError::Corrupt`] (422) for files that
/// look like a video container but cannot be used (truncated, no frames, zero duration, impossible dimensions
/// or frame rate); [`DashError::Limit`] (422) for videos over `limits` or [`MAX_FPS`].
pub async fn probe_within(input: &Path, limits: &Limits) -> Result<Probe, DashError> {
    probe_detail(input, limits).await.map(|d| d.probe)
}

pub(crate) async fn probe_detail(input: &Path, limits: &Limits) -> Result<ProbeDetail, DashError> {
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
    let container = classify(&head)?;
    // ffprobe reads only the headers: an MP4 whose `moov` comes first probes perfectly even when half of its
    // `mdat` is missing, and ffmpeg then "succeeds" with half the frames. The box walk catches that up front,
    // and refuses external data references before any tool could be tempted to follow them.
    if container == Container::Mov {
        check_bmff_boxes(input, meta.len()).await?;
    }
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
        .args(input_args(&url, container))
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
        _ => return Err(unreadable(container, &stderr)),
    };
    interpret(&json, container, limits)
}

/// Decides the container from the first bytes of a file, or refuses it (415) with what it appears to be.
fn classify(head: &[u8]) -> Result<Container, DashError> {
    if is_iso_bmff(head) {
        return Ok(Container::Mov);
    }
    if head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return Ok(Container::Matroska);
    }
    if let Some(what) = reference_list_kind(head) {
        return Err(DashError::NotVideo(format!(
            "{what}, which points at other files; upload the video file itself"
        )));
    }
    if let Some(image) = image_kind(head) {
        return Err(DashError::NotVideo(format!(
            "a still image ({image}), not a video"
        )));
    }
    if let Some(kind) = container_kind(head) {
        return Err(DashError::NotVideo(format!(
            "{kind} is not an accepted container (accepted: MP4/MOV, Matroska/WebM)"
        )));
    }
    Err(DashError::NotVideo(
        "not a recognised video format (accepted: MP4/MOV, Matroska/WebM)".into(),
    ))
}

/// Text formats with which ffmpeg would read other files or URLs than the one it was given: streaming
/// manifests, playlists and concat lists.
fn reference_list_kind(head: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(head);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("#extm3u") {
        Some("an HLS playlist (M3U8)")
    } else if lower.contains("<mpd") {
        Some("a DASH manifest (MPD)")
    } else if lower.starts_with("ffconcat")
        || lower.starts_with("file ")
        || lower.starts_with("file\t")
    {
        Some("an ffmpeg concat list")
    } else if lower.contains("<smil") {
        Some("a SMIL playlist")
    } else if lower.starts_with("[playlist]") || lower.starts_with("<asx") {
        Some("a playlist")
    } else {
        None
    }
}

fn image_kind(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("PNG")
    } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("JPEG")
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some("GIF")
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some("WebP")
    } else {
        None
    }
}

/// The error for an allowed container ffprobe could not read: 422, with a hint for the usual causes. ffprobe's
/// own words go to the log only (they may quote the staging path, and are not written for uploaders).
fn unreadable(container: Container, stderr: &str) -> DashError {
    let why = first_line(stderr);
    tracing::info!(ffprobe = %why, container = container.label(), "upload cannot be probed");
    let hint = if why.contains("moov atom not found") {
        ": its index (moov box) is missing, so the upload is incomplete"
    } else if why.contains("EBML header parsing failed") {
        ": its header is damaged"
    } else {
        ""
    };
    DashError::Corrupt(format!(
        "{} file that cannot be read{hint}",
        container.label()
    ))
}

fn first_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("ffprobe found no streams");
    line.chars().take(300).collect()
}

/// Recognises the signatures of video containers outside the allow-list, for the refusal message.
fn container_kind(head: &[u8]) -> Option<&'static str> {
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
    let mut head = vec![0u8; HEAD_LEN];
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
/// which is what a truncated upload looks like; inside each `moov`, refuses data references to other files.
async fn check_bmff_boxes(input: &Path, len: u64) -> Result<(), DashError> {
    let io_err = |e| DashError::io(format!("cannot read {}", input.display()), e);
    let mut file = tokio::fs::File::open(input).await.map_err(io_err)?;
    let mut offset = 0u64;
    // Fragmented files have two boxes per fragment; a million boxes is far beyond any real upload.
    for _ in 0..1_000_000 {
        let remaining = len - offset;
        if remaining < 8 {
            // End of file, or a few stray bytes after the last box: some muxers pad; harmless to ffmpeg.
            return Ok(());
        }
        let Some(b) = read_box_header(&mut file, offset, len)
            .await
            .map_err(io_err)?
        else {
            return Err(DashError::Corrupt(
                "truncated MP4: the file ends inside a box header".into(),
            ));
        };
        let kind = String::from_utf8_lossy(&b.kind).into_owned();
        if b.size < b.header {
            return Err(DashError::Corrupt(format!(
                "damaged MP4: box '{}' at byte {offset} has an impossible size {}",
                kind.escape_debug(),
                b.size
            )));
        }
        if b.size > remaining {
            return Err(DashError::Corrupt(format!(
                "truncated MP4: box '{}' at byte {offset} needs {} bytes but the file ends after {remaining} \
                 (the upload is incomplete)",
                kind.escape_debug(),
                b.size
            )));
        }
        if &b.kind == b"moov" {
            check_data_references(&mut file, offset + b.header, offset + b.size)
                .await
                .map_err(io_err)??;
        }
        if b.to_end {
            return Ok(());
        }
        offset += b.size;
    }
    Ok(())
}

/// One box header: its type, total size (header included) and header length.
#[derive(Debug)]
struct BoxHeader {
    kind: [u8; 4],
    size: u64,
    header: u64,
    /// Size 0: the box runs to the end of its parent (or the file).
    to_end: bool,
}

/// Reads the header of the box at `offset` within a parent ending at `end`; `None` when fewer than 8 bytes (or
/// a 64-bit size that does not fit) remain.
async fn read_box_header(
    file: &mut tokio::fs::File,
    offset: u64,
    end: u64,
) -> std::io::Result<Option<BoxHeader>> {
    let remaining = end.saturating_sub(offset);
    if remaining < 8 {
        return Ok(None);
    }
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut h = [0u8; 16];
    let want = if remaining >= 16 { 16 } else { 8 };
    file.read_exact(&mut h[..want]).await?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = [h[4], h[5], h[6], h[7]];
    Ok(match size32 {
        0 => Some(BoxHeader {
            kind,
            size: remaining,
            header: 8,
            to_end: true,
        }),
        1 if want == 16 => Some(BoxHeader {
            kind,
            size: u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
            header: 16,
            to_end: false,
        }),
        1 => None,
        n => Some(BoxHeader {
            kind,
            size: u64::from(n),
            header: 8,
            to_end: false,
        }),
    })
}

/// Walks the boxes inside a `moov` (`start..end`) down to every `dref` and fails with 415 if an entry is not
/// self-contained: such a file takes its samples from another file or URL. ffmpeg ignores these references
/// unless `enable_drefs` is set (we force it off), but a file built to read elsewhere is refused outright.
async fn check_data_references(
    file: &mut tokio::fs::File,
    start: u64,
    end: u64,
) -> std::io::Result<Result<(), DashError>> {
    // (offset, end, depth) of box lists still to read.
    let mut lists = vec![(start, end, 0u32)];
    let mut visited = 0usize;
    while let Some((mut offset, list_end, depth)) = lists.pop() {
        while let Some(b) = read_box_header(file, offset, list_end).await? {
            visited += 1;
            if visited > MAX_MOOV_BOXES || b.size < b.header || b.size > list_end - offset {
                // Damaged inside the index: ffprobe/ffmpeg judge it; nothing here can point elsewhere.
                break;
            }
            let body = offset + b.header;
            match &b.kind {
                b"trak" | b"mdia" | b"minf" | b"dinf" | b"edts" | b"udta" if depth < 8 => {
                    lists.push((body, offset + b.size, depth + 1));
                }
                // ISO `meta` is a full box (version and flags before its children); QuickTime's is not.
                b"meta" if depth < 8 => {
                    let mut vf = [0u8; 4];
                    file.seek(std::io::SeekFrom::Start(body)).await?;
                    file.read_exact(&mut vf).await?;
                    let skip = if vf == [0, 0, 0, 0] { 4 } else { 0 };
                    lists.push((body + skip, offset + b.size, depth + 1));
                }
                b"dref" => {
                    if let Some(entry) = external_reference(file, body, offset + b.size).await? {
                        return Ok(Err(DashError::NotVideo(format!(
                            "an MP4 that takes its media from other files (external '{}' data reference); \
                             upload a self-contained file",
                            String::from_utf8_lossy(&entry).escape_debug()
                        ))));
                    }
                }
                _ => {}
            }
            if b.to_end {
                break;
            }
            offset += b.size;
        }
    }
    Ok(Ok(()))
}

/// The type of the first `dref` entry (body `start..end`) that is not self-contained (flag 1 clear), if any.
async fn external_reference(
    file: &mut tokio::fs::File,
    start: u64,
    end: u64,
) -> std::io::Result<Option<[u8; 4]>> {
    if end.saturating_sub(start) < 8 {
        return Ok(None);
    }
    file.seek(std::io::SeekFrom::Start(start + 4)).await?; // version and flags of the dref itself
    let mut n = [0u8; 4];
    file.read_exact(&mut n).await?;
    let count = u32::from_be_bytes(n);
    let mut offset = start + 8;
    for _ in 0..count.min(1024) {
        let Some(entry) = read_box_header(file, offset, end).await? else {
            break;
        };
        if entry.size < entry.header + 4 || entry.size > end - offset {
            // A malformed entry cannot be self-contained either.
            return Ok(Some(entry.kind));
        }
        file.seek(std::io::SeekFrom::Start(offset + entry.header))
            .await?;
        let mut vf = [0u8; 4];
        file.read_exact(&mut vf).await?;
        if vf[3] & 1 == 0 {
            return Ok(Some(entry.kind));
        }
        offset += entry.size;
    }
    Ok(None)
}

/// Turns ffprobe's JSON for a file read as `container` into a validated [`ProbeDetail`] within `limits`.
fn interpret(
    json: &Value,
    container: Container,
    limits: &Limits,
) -> Result<ProbeDetail, DashError> {
    let format = &json["format"];
    let format_name = format["format_name"].as_str().unwrap_or("");
    // The demuxer was forced, so this only fails if ffprobe ignored `-f`: refuse rather than guess.
    let expected = match container {
        Container::Mov => "mov",
        Container::Matroska => "matroska",
    };
    if !format_name.split(',').any(|n| n == expected) {
        tracing::warn!(
            format_name,
            expected,
            "ffprobe read the file with another demuxer"
        );
        return Err(DashError::NotVideo(format!(
            "not a readable {} file",
            container.label()
        )));
    }
    let streams: &[Value] = json["streams"].as_array().map_or(&[], Vec::as_slice);

    let has_audio = streams.iter().any(|s| s["codec_type"] == "audio");
    let video = streams.iter().find(|s| {
        s["codec_type"] == "video"
            // Cover art inside an audio file is a "video" stream of one picture.
            && int(&s["disposition"]["attached_pic"]) != Some(1)
    });
    let Some(video) = video else {
        let what = if has_audio {
            "audio only, no video stream".to_owned()
        } else if streams.is_empty() {
            format!("no streams found in the {} file", container.label())
        } else {
            format!("no video stream in the {} file", container.label())
        };
        return Err(DashError::NotVideo(what));
    };
    let codec = sanitize_codec(video["codec_name"].as_str().unwrap_or(""));

    let frames = int(&video["nb_frames"]);
    if frames == Some(1) {
        return Err(DashError::NotVideo(format!(
            "a single frame ({codec}), not a video"
        )));
    }
    if frames == Some(0) {
        return Err(DashError::Corrupt("the video stream has no frames".into()));
    }

    let ((coded_w, coded_h), (width, height)) = frame_size(video)?;
    let pixels =
        (u64::from(coded_w) * u64::from(coded_h)).max(u64::from(width) * u64::from(height));
    if pixels > limits.max_pixels {
        return Err(DashError::Limit(format!(
            "frames of {width}x{height} ({:.1} megapixels); this reader accepts up to {:.1} megapixels",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }
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
    if Duration::from_millis(duration_ms) > limits.max_duration {
        return Err(DashError::Limit(format!(
            "it lasts {}; this reader accepts videos up to {}",
            clock(Duration::from_millis(duration_ms)),
            clock(limits.max_duration)
        )));
    }
    let video_duration_ms = video_secs
        .filter(|&v| v <= MAX_DURATION_SECS)
        .map_or(duration_ms, |v| {
            ((v * 1000.0).round() as u64).min(duration_ms)
        });
    if video_duration_ms == 0 {
        return Err(DashError::Corrupt("the video stream lasts 0 ms".into()));
    }

    // Frame rate and frame count, relative to the duration: both bound what decoding and encoding cost.
    if valid_rate(&video["avg_frame_rate"]).is_some_and(|f| f > MAX_FPS) {
        return Err(DashError::Limit(format!(
            "a frame rate of {fps:.0} fps; this reader accepts up to {MAX_FPS:.0}"
        )));
    }
    if let Some(n) = frames {
        let stream_secs = video_duration_ms as f64 / 1000.0;
        if n < 0 || n as f64 > stream_secs * MAX_FPS + 2.0 {
            return Err(DashError::Limit(format!(
                "{n} frames in {stream_secs:.1} s (more than {MAX_FPS:.0} per second)"
            )));
        }
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
            container,
        },
        video_duration_ms,
    })
}

/// `1 h 05 min`, `12 min 30 s`, `42 s`: durations in messages.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, 0, _) => format!("{h} h"),
        (h, m, _) => format!("{h} h {m:02} min"),
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

/// Width and height as coded, and as displayed: storage size, stretched by the sample aspect ratio, swapped for
/// ±90° rotation.
#[allow(clippy::type_complexity)]
fn frame_size(video: &Value) -> Result<((u32, u32), (u32, u32)), DashError> {
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
    Ok(((w, h), (dw, dh)))
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

/// A frame rate given as `"num/den"`, when it is a positive number of at most 1000 fps.
fn valid_rate(v: &Value) -> Option<f64> {
    v.as_str()
        .and_then(rational)
        .filter(|&(_, d)| d > 0)
        .map(|(n, d)| n as f64 / d as f64)
        .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1000.0)
}

fn frame_rate(video: &Value) -> Result<f64, DashError> {
    valid_rate(&video["avg_frame_rate"])
        .or_else(|| valid_rate(&video["r_frame_rate"]))
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

    fn mov(json: &Value) -> Result<ProbeDetail, DashError> {
        interpret(json, Container::Mov, &Limits::default())
    }

    #[test]
    fn accepts_a_plain_video() {
        let d = mov(&doc(
            vec![
                video(json!({})),
                json!({"codec_type": "audio", "codec_name": "aac"}),
            ],
            json!({"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "12.600"}),
        ))
        .expect("valid");
        assert_eq!(d.probe.duration_ms, 12_600);
        assert_eq!(d.video_duration_ms, 12_500);
        assert_eq!((d.probe.width, d.probe.height), (1920, 1080));
        assert!((d.probe.fps - 29.97).abs() < 0.01);
        assert!(d.probe.has_audio);
        assert_eq!(d.probe.video_codec, "h264");
        assert_eq!(d.probe.container, Container::Mov);
    }

    #[test]
    fn the_forced_demuxer_must_have_read_it() {
        let d = doc(
            vec![video(json!({}))],
            json!({"format_name": "hls", "duration": "12.5"}),
        );
        assert_eq!(mov(&d).expect_err("hls").http_status(), 415);
        let d = doc(
            vec![video(json!({}))],
            json!({"format_name": "matroska,webm", "duration": "12.5"}),
        );
        assert!(interpret(&d, Container::Matroska, &Limits::default()).is_ok());
        assert!(mov(&d).is_err());
    }

    #[test]
    fn rotation_and_sar_give_display_size() {
        let d = mov(&doc(
            vec![video(json!({"side_data_list": [{"rotation": -90}]}))],
            json!({"format_name": "mov", "duration": "12.5"}),
        ))
        .expect("valid");
        assert_eq!((d.probe.width, d.probe.height), (1080, 1920));
        let d = interpret(
            &doc(
                vec![video(
                    json!({"width": 720, "height": 576, "sample_aspect_ratio": "64:45", "nb_frames": null}),
                )],
                json!({"format_name": "matroska,webm", "duration": "1"}),
            ),
            Container::Matroska,
            &Limits::default(),
        )
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
            let err = mov(&doc(
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
            let err = mov(&doc(
                vec![video(json!({"duration": null}))],
                json!({"format_name": "mov", "duration": dur.clone()}),
            ))
            .expect_err("must fail");
            assert!(matches!(err, DashError::Corrupt(_)), "{dur}: {err}");
        }
    }

    #[test]
    fn limits_are_422() {
        let limits = Limits {
            max_duration: Duration::from_secs(60),
            max_pixels: 1280 * 720,
            ..Limits::default()
        };
        let cases = [
            // Over the pixel limit, coded or displayed (a SAR that stretches 1280 to 1707).
            (json!({}), "10"),
            (
                json!({"width": 1280, "height": 720, "sample_aspect_ratio": "4:3"}),
                "10",
            ),
            // Over the duration limit.
            (json!({"width": 640, "height": 360, "duration": null}), "61"),
            // An absurd frame rate, or frame count for the duration.
            (
                json!({"width": 640, "height": 360, "avg_frame_rate": "500/1"}),
                "10",
            ),
            (
                json!({"width": 640, "height": 360, "nb_frames": "100000", "duration": "10"}),
                "10",
            ),
        ];
        for (extra, dur) in cases {
            let err = interpret(
                &doc(
                    vec![video(extra.clone())],
                    json!({"format_name": "mov", "duration": dur}),
                ),
                Container::Mov,
                &limits,
            )
            .expect_err("over a limit");
            assert!(matches!(err, DashError::Limit(_)), "{extra}: {err}");
            assert_eq!(err.http_status(), 422);
        }
        // 3840x2160 is within the default limit, 4096x2160 is not; portrait counts the same.
        for (w, h, ok) in [(3840, 2160, true), (2160, 3840, true), (4096, 2160, false)] {
            let r = mov(&doc(
                vec![video(json!({"width": w, "height": h}))],
                json!({"format_name": "mov", "duration": "10"}),
            ));
            assert_eq!(r.is_ok(), ok, "{w}x{h}: {r:?}");
        }
        // Sparse is not absurd: three frames over ten minutes.
        assert!(mov(&doc(
            vec![video(
                json!({"avg_frame_rate": "75/15001", "r_frame_rate": "25/1", "nb_frames": "3", "duration": "600.04"})
            )],
            json!({"format_name": "mov", "duration": "600.04"}),
        ))
        .is_ok());
    }

    #[test]
    fn not_videos() {
        let cases = [
            doc(
                vec![json!({"codec_type": "audio", "codec_name": "mp3"})],
                json!({"format_name": "mov", "duration": "3"}),
            ),
            doc(
                vec![
                    json!({"codec_type": "audio", "codec_name": "aac"}),
                    video(json!({"codec_name": "mjpeg", "disposition": {"attached_pic": 1}})),
                ],
                json!({"format_name": "mov", "duration": "3"}),
            ),
            doc(
                vec![video(json!({"nb_frames": "1"}))],
                json!({"format_name": "mov", "duration": "0.04"}),
            ),
            doc(vec![], json!({"format_name": "mov"})),
        ];
        for c in cases {
            let err = mov(&c).expect_err("must fail");
            assert_eq!(err.http_status(), 415, "{c}: {err}");
        }
    }

    #[test]
    fn containers_are_sniffed_from_an_allow_list() {
        let mut mp4 = vec![0, 0, 0, 0x20];
        mp4.extend_from_slice(b"ftypisom");
        assert_eq!(classify(&mp4).expect("mp4"), Container::Mov);
        assert_eq!(
            classify(&[0x1a, 0x45, 0xdf, 0xa3, 0]).expect("mkv"),
            Container::Matroska
        );
        let refused: [(&[u8], &str); 8] = [
            (
                b"<?xml version=\"1.0\"?>\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\">",
                "DASH",
            ),
            (b"\xef\xbb\xbf  #EXTM3U\n#EXTINF:10,\n/etc/passwd\n", "HLS"),
            (b"ffconcat version 1.0\nfile /tmp/a.mp4\n", "concat"),
            (b"file '/tmp/a.mp4'\n", "concat"),
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "PNG"),
            (b"FLV\x01\x05", "FLV"),
            (b"RIFF\0\0\0\0AVI LIST", "AVI"),
            (b"These are my holiday notes, not a video.", "recognised"),
        ];
        for (head, word) in refused {
            let err = classify(head).expect_err(word);
            assert_eq!(err.http_status(), 415, "{word}: {err}");
            assert!(err.to_string().contains(word), "{word}: {err}");
        }
    }

    #[test]
    fn unreadable_files_hide_ffprobe_words() {
        let e = unreadable(
            Container::Mov,
            "file:/srv/reader/staging/0123: [mov,mp4 @ 0x55] moov atom not found",
        );
        let m = e.public_message();
        assert_eq!(e.http_status(), 422);
        assert!(m.contains("index"), "{m}");
        assert!(
            !m.contains("/srv") && !m.contains("0x55") && !m.contains("atom"),
            "{m}"
        );
    }

    #[test]
    fn clock_reads_well() {
        assert_eq!(clock(Duration::from_secs(42)), "42 s");
        assert_eq!(clock(Duration::from_secs(600)), "10 min");
        assert_eq!(clock(Duration::from_secs(750)), "12 min 30 s");
        assert_eq!(clock(Duration::from_secs(4 * 3600)), "4 h");
        assert_eq!(clock(Duration::from_secs(5 * 3600 + 300)), "5 h 05 min");
    }
}
