//! Test media, generated with ffmpeg's lavfi sources (never committed) and cached under Cargo's per-target
//! temporary directory, so only the first run pays for the encodes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dash-fixtures-v1");
    std::fs::create_dir_all(&dir).expect("create fixture dir");
    dir
}

/// Runs `ffmpeg` with `args` writing to a temporary name, then renames it to `name`: a run killed half-way never
/// leaves a truncated fixture behind for the next run to trust.
fn generate(name: &str, args: &[&str]) -> PathBuf {
    let path = dir().join(name);
    if path.exists() {
        return path;
    }
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .expect("fixture extension");
    let partial = dir().join(format!("partial-{}-{name}", std::process::id()));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .args(["-f", muxer(ext)])
        .arg(&partial)
        .status()
        .expect("run ffmpeg (is it installed?)");
    assert!(status.success(), "ffmpeg failed generating {name}");
    std::fs::rename(&partial, &path).expect("rename fixture");
    path
}

fn muxer(ext: &str) -> &'static str {
    match ext {
        "mp4" => "mp4",
        "mkv" => "matroska",
        "m4a" => "ipod",
        "png" => "image2",
        other => panic!("no muxer for .{other}"),
    }
}

/// Writes the first half of `src` to `name`.
fn first_half(src: &Path, name: &str) -> PathBuf {
    let path = dir().join(name);
    if !path.exists() {
        let bytes = std::fs::read(src).expect("read source");
        let partial = dir().join(format!("partial-{}-{name}", std::process::id()));
        std::fs::write(&partial, &bytes[..bytes.len() / 2]).expect("write half");
        std::fs::rename(&partial, &path).expect("rename fixture");
    }
    path
}

const AV_720: [&str; 16] = [
    "-f",
    "lavfi",
    "-i",
    "testsrc2=size=1280x720:rate=30",
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440",
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-pix_fmt",
    "yuv420p",
    "-c:a",
    "aac",
];

macro_rules! fixture {
    ($(#[$doc:meta])* $name:ident, $body:expr) => {
        $(#[$doc])*
        pub fn $name() -> &'static Path {
            static CELL: OnceLock<PathBuf> = OnceLock::new();
            CELL.get_or_init(|| $body).as_path()
        }
    };
}

fixture!(
    /// 10 s, 1280x720 at 30 fps, with audio; the index (`moov`) at the end, as ffmpeg writes by default.
    clip720,
    generate("clip720.mp4", &[&AV_720[..], &["-t", "10"]].concat())
);
fixture!(
    /// The same with `-movflags +faststart` (index first).
    clip720_faststart,
    generate(
        "clip720-faststart.mp4",
        &[&AV_720[..], &["-t", "10", "-movflags", "+faststart"]].concat()
    )
);
fixture!(
    /// 30 s at 720p with audio: long enough that ffmpeg is still running when the first segments are done.
    clip720_30s,
    generate("clip720-30s.mp4", &[&AV_720[..], &["-t", "30"]].concat())
);
fixture!(
    /// 10 s, 640x360, with audio.
    clip360,
    generate(
        "clip360.mp4",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i",
            "sine=frequency=440", "-t", "10", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-c:a", "aac",
        ]
    )
);
fixture!(
    /// 6 s, 320x180 at 25 fps, no audio stream at all.
    no_audio,
    generate(
        "noaudio.mp4",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "6", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// 1 s clip, for the "middle of a short clip" poster rule.
    one_second,
    generate(
        "one-second.mp4",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "1", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// 10 s of Matroska whose header states the full duration; cut in half below.
    mkv,
    generate(
        "clip.mkv",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "10", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// [`no_audio`] (320x180) marked as rotated by 90° (a phone held upright): displayed as 180x320.
    rotated,
    {
        let src = no_audio().to_string_lossy().into_owned();
        generate(
            "rotated.mp4",
            &["-i", &src, "-c", "copy", "-metadata:s:v:0", "rotate=90"],
        )
    }
);
fixture!(
    /// A PNG still image.
    png,
    generate(
        "still.png",
        &["-f", "lavfi", "-i", "testsrc2=size=320x240", "-frames:v", "1"]
    )
);
fixture!(
    /// 3 s of AAC audio in an M4A (MP4) container: no video stream.
    audio_only,
    generate(
        "audio.m4a",
        &["-f", "lavfi", "-i", "sine=frequency=440", "-t", "3", "-c:a", "aac"]
    )
);
fixture!(
    /// The first half of [`clip720`]: the `moov` index at the end is missing.
    truncated,
    first_half(clip720(), "truncated.mp4")
);
fixture!(
    /// The first half of [`clip720_faststart`]: the index is intact, half of the media data is missing.
    truncated_faststart,
    first_half(clip720_faststart(), "truncated-faststart.mp4")
);
fixture!(
    /// The first half of [`mkv`].
    truncated_mkv,
    first_half(mkv(), "truncated.mkv")
);
fixture!(
    /// A text file with a video-ish name.
    text,
    {
        let path = dir().join("notes.mp4");
        std::fs::write(&path, "These are my holiday notes, not a video.\n".repeat(50))
            .expect("write text");
        path
    }
);

/// Width and height of a media file's first video stream, by ffprobe.
pub fn video_size(path: &Path) -> (u32, u32) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    let (w, h) = text.trim().split_once(',').expect("width,height");
    (w.parse().expect("width"), h.parse().expect("height"))
}
