//! Prints the exact ffmpeg command the dash reader runs for a file: probes it with `reader::dash::probe`,
//! chooses the ladder with `reader::dash::ladder`, and builds the arguments with `reader::dash::ffmpeg_args_probed` (as the reader runs them).
//! `bench/video.sh` runs that command as its bare-ffmpeg baseline.
//!
//! ```text
//! cargo run --release -p reader --example ladder_cmd -- [OPTIONS] INPUT OUT_DIR
//!
//!   --preset P        libx264 preset (default: the reader's, veryfast; the reader takes READER_FFMPEG_PRESET)
//!   --segment-secs N  segment length (default 4, as the reader)
//!   --threads N       ffmpeg -threads (default: none, as the reader)
//!   --nul             print the arguments (without the program name) NUL-terminated, for scripts:
//!                     mapfile -d '' args < <(ladder_cmd --nul in.mp4 out/)
//! ```
//!
//! Without `--nul`, prints one shell-quoted command line (`ffmpeg ...`) that can be pasted into a shell. The
//! ladder and the probe go to stderr in both modes. OUT_DIR is not created: the dash muxer needs it to exist.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use reader::dash::{self, TranscodeOptions};

fn usage() -> ExitCode {
    eprintln!(
        "usage: ladder_cmd [--preset P] [--segment-secs N] [--threads N] [--nul] INPUT OUT_DIR"
    );
    ExitCode::from(2)
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut opts = TranscodeOptions::default();
    let mut nul = false;
    let mut positional: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| {
            args.next().ok_or_else(|| {
                eprintln!("{flag} needs a value");
            })
        };
        match a.as_str() {
            "--preset" => match value("--preset") {
                Ok(v) => opts.preset = v,
                Err(()) => return usage(),
            },
            "--segment-secs" => match value("--segment-secs").map(|v| v.parse::<u32>()) {
                Ok(Ok(n)) if n > 0 => opts.segment_secs = n,
                _ => return usage(),
            },
            "--threads" => match value("--threads").map(|v| v.parse::<u32>()) {
                Ok(Ok(n)) if n > 0 => opts.threads = Some(n),
                _ => return usage(),
            },
            "--nul" => nul = true,
            "-h" | "--help" => return usage(),
            s if s.starts_with("--") => {
                eprintln!("unknown option {s}");
                return usage();
            }
            _ => positional.push(a),
        }
    }
    let Ok([input, out_dir]) = <[String; 2]>::try_from(positional) else {
        return usage();
    };
    let (input, out_dir) = (PathBuf::from(input), PathBuf::from(out_dir));

    let probe = match dash::probe(&input).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ladder_cmd: {}: {e}", input.display());
            return ExitCode::FAILURE;
        }
    };
    let ladder = dash::ladder(&probe);
    let rungs: Vec<String> = ladder
        .iter()
        .map(|r| format!("{}x{}@{}k", r.width, r.height, r.video_kbps))
        .collect();
    eprintln!(
        "probe: {}x{} {:.3} fps, {} ms, video {}, audio {}; ladder: {}{}",
        probe.width,
        probe.height,
        probe.fps,
        probe.duration_ms,
        probe.video_codec,
        if probe.has_audio { "yes" } else { "no" },
        rungs.join(" "),
        if probe.has_audio {
            format!(" + aac {}k", dash::AUDIO_KBPS)
        } else {
            String::new()
        },
    );

    let argv = dash::ffmpeg_args_probed(&input, &out_dir, &ladder, &probe, &opts);
    let mut out = std::io::stdout().lock();
    let written = if nul {
        argv.iter().try_for_each(|a| {
            out.write_all(a.as_bytes())
                .and_then(|()| out.write_all(b"\0"))
        })
    } else {
        let line: Vec<String> = std::iter::once("ffmpeg".to_owned())
            .chain(argv.iter().map(|a| shell_quote(a)))
            .collect();
        writeln!(out, "{}", line.join(" "))
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ladder_cmd: cannot write: {e}");
            ExitCode::FAILURE
        }
    }
}
