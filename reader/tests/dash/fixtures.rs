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
        "ts" => "mpegts",
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

fixture!(
    /// Three frames spread over 600 s (at 0 s, 0.04 s and 600 s; the first two give it a 25 fps time base), the
    /// shape of issue 9's 13 KB upload that became 154 files of duplicated frames.
    sparse,
    generate(
        "sparse-600s.mp4",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-frames:v", "3", "-vf",
            "setpts='if(eq(N,2),600/TB,N)'", "-fps_mode", "passthrough", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// 5 minutes of 160x90 without audio: quick to produce segments, long to finish at a slow preset.
    long_small,
    generate(
        "long-160x90-300s.mp4",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25", "-t", "300", "-c:v", "libx264",
            "-preset", "ultrafast", "-crf", "40", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// Two frames of 4096x2304: over the default 3840x2160 pixel limit.
    oversize,
    generate(
        "oversize-4096x2304.mp4",
        &[
            "-f", "lavfi", "-i", "color=c=red:size=4096x2304:rate=25", "-frames:v", "2", "-c:v",
            "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// Two tiny frames five hours apart: over the default 4 h duration limit, yet only a few KB.
    five_hours,
    generate(
        "five-hours.mp4",
        &[
            "-f", "lavfi", "-i", "color=c=red:size=64x64:rate=25", "-frames:v", "2", "-vf",
            "setpts=N*18000/TB", "-fps_mode", "passthrough", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// 500 frames per second (one second of them): an absurd rate for an upload.
    fast_rate,
    generate(
        "500fps.mp4",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=500", "-frames:v", "500", "-c:v",
            "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// 2 s of MPEG-TS: a video, but not in an accepted container.
    mpegts,
    generate(
        "clip.ts",
        &[
            "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25", "-t", "2", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        ]
    )
);
fixture!(
    /// [`no_audio`] with its data reference marked as external (the `url ` entry's self-contained flag
    /// cleared): an MP4 that claims its samples live in another file.
    external_dref,
    {
        let path = dir().join("external-dref.mp4");
        if !path.exists() {
            let mut bytes = std::fs::read(no_audio()).expect("read no_audio");
            let dref = bytes
                .windows(4)
                .position(|w| w == b"dref")
                .expect("a dref box");
            // dref: type, version+flags (4), entry count (4), then the first entry: size (4), type (4),
            // version (1) + flags (3).
            let entry = dref + 4 + 8;
            assert_eq!(&bytes[entry + 4..entry + 8], b"url ", "first entry is a url box");
            bytes[entry + 11] &= !1;
            let partial = dir().join(format!("partial-{}-external-dref.mp4", std::process::id()));
            std::fs::write(&partial, &bytes).expect("write");
            std::fs::rename(&partial, &path).expect("rename fixture");
        }
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
