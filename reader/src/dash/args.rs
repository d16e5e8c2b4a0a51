//! The one ffmpeg command line that turns a source into the whole DASH ladder.

use std::path::Path;
use std::time::Duration;

use super::{
    input_args, output_margin, Container, Probe, Rendition, TranscodeOptions, MANIFEST, MAX_FPS,
};

/// AAC bitrate of the audio representation; stereo at 128 kb/s is transparent enough for a video site.
pub const AUDIO_KBPS: u32 = 128;

/// The command line [`super::transcode`] runs for a probed source: [`ffmpeg_args`] plus the demuxer of
/// `probe.container` forced (`-f mov` + `-enable_drefs 0`, or `-f matroska`) and the output capped to the
/// probed duration plus [`output_margin`] (`-t`) and to [`MAX_FPS`] frames per second of that (`-frames:v`).
pub fn ffmpeg_args_probed(
    input: &Path,
    out_dir: &Path,
    ladder: &[Rendition],
    probe: &Probe,
    opts: &TranscodeOptions,
) -> Vec<String> {
    build(
        input,
        out_dir,
        ladder,
        probe.has_audio,
        Some((probe.container, probe.duration())),
        opts,
    )
}

/// Builds the arguments (without the program name) of a single ffmpeg run that decodes `input` once and
/// encodes every rendition of `ladder` plus, when `has_audio`, one AAC track, muxed as MPEG-DASH into `out_dir`.
///
/// Only the `file` protocol is allowed and source timing is kept (`-fps_mode passthrough`: no frame is
/// duplicated to reach a constant rate). Without a probe this leaves the demuxer to ffmpeg and the output
/// uncapped: the reader itself always runs [`ffmpeg_args_probed`].
///
/// Public so the benchmark can time a bare ffmpeg run of exactly the same ladder (create `out_dir` first: the
/// dash muxer does not). Layout of the output:
/// representations `0..ladder.len()` are the video renditions in ladder order (0 = highest), the audio is the
/// last representation; files are `manifest.mpd`, `init-{rep}.m4s` and `chunk-{rep}-{number:05}.m4s` from 1.
///
/// Paths are passed as `file:` URLs so a `:` in a directory name is never taken for a protocol, and because the
/// dash muxer only writes segments to `*.tmp` and renames them into place when the protocol is `file` (see
/// [`super::transcode`]). Non-UTF-8 path bytes are replaced; [`super::transcode`] rejects such paths up front.
pub fn ffmpeg_args(
    input: &Path,
    out_dir: &Path,
    ladder: &[Rendition],
    has_audio: bool,
    opts: &TranscodeOptions,
) -> Vec<String> {
    build(input, out_dir, ladder, has_audio, None, opts)
}

fn build(
    input: &Path,
    out_dir: &Path,
    ladder: &[Rendition],
    has_audio: bool,
    probed: Option<(Container, Duration)>,
    opts: &TranscodeOptions,
) -> Vec<String> {
    let seg = opts.segment_secs.max(1);
    let mut a: Vec<String> = Vec::with_capacity(64 + 8 * ladder.len());
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));

    // -nostdin: ffmpeg would otherwise read keystrokes from our stdin. -loglevel error keeps stderr to what
    // explains a failure (its tail goes into DashError::Ffmpeg); -nostats drops the progress lines there.
    // -progress pipe:1 reports how far the transcode is on stdout instead, as key=value lines each second.
    push(&[
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "error",
        "-progress",
        "pipe:1",
        "-stats_period",
        "1",
        "-y",
    ]);
    let input_url = format!("file:{}", input.to_string_lossy());
    match probed {
        Some((container, _)) => {
            let input = input_args(&input_url, container);
            push(&input.iter().map(String::as_str).collect::<Vec<_>>());
        }
        None => push(&["-protocol_whitelist", "file", "-i", &input_url]),
    }

    // Decode once, split, scale each copy. The ladder sizes are display sizes rounded to even numbers; the scale
    // filter then sets a sample aspect ratio a hair off 1:1 so every rendition keeps the source's exact display
    // aspect ratio, which the dash muxer requires within an adaptation set ("Conflicting stream aspect ratios";
    // forcing setsar=1 trips it for 854x480). format=yuv420p keeps 10-bit or 4:4:4 sources playable by
    // browsers' H.264 decoders.
    let n = ladder.len().max(1);
    let mut graph = format!("[0:v:0]split={n}");
    for i in 0..n {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, r) in ladder.iter().enumerate() {
        graph.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bicubic,format=yuv420p[v{i}]",
            r.width, r.height
        ));
    }
    push(&["-filter_complex", &graph]);
    for i in 0..ladder.len() {
        push(&["-map", &format!("[v{i}]")]);
    }
    if has_audio {
        push(&["-map", "0:a:0"]);
    }
    push(&["-map_metadata", "-1", "-map_chapters", "-1"]);
    // The source's timestamps as they are: a gap stays a gap (one long segment) instead of being filled with
    // copies of the last frame, so the output never holds more frames than the upload.
    push(&["-fps_mode", "passthrough"]);
    if let Some((_, duration)) = probed {
        let cap = duration + output_margin(duration);
        let frames = (cap.as_secs_f64() * MAX_FPS).ceil() as u64;
        push(&["-t", &format!("{:.3}", cap.as_secs_f64())]);
        push(&["-frames:v", &frames.to_string()]);
    }

    // Keyframes exactly on segment boundaries in every rendition, so segments align across representations and
    // a player can switch quality at any boundary: forced by timestamp (robust to variable frame rate), and no
    // extra scene-cut keyframes that would make the muxer cut segments elsewhere.
    push(&["-c:v", "libx264", "-preset", &opts.preset]);
    push(&[
        "-force_key_frames",
        &format!("expr:gte(t,n_forced*{seg})"),
        "-sc_threshold",
        "0",
    ]);
    for (i, r) in ladder.iter().enumerate() {
        let k = r.video_kbps.max(1);
        push(&[
            &format!("-b:v:{i}"),
            &format!("{k}k"),
            &format!("-maxrate:v:{i}"),
            &format!("{}k", k + k * 7 / 100),
            &format!("-bufsize:v:{i}"),
            &format!("{}k", k + k / 2),
        ]);
    }
    if has_audio {
        // Stereo: browsers' MSE AAC support for 5.1 is patchy; mono sources are simply duplicated.
        push(&["-c:a", "aac", "-b:a", &format!("{AUDIO_KBPS}k"), "-ac", "2"]);
    }
    if let Some(t) = opts.threads {
        push(&["-threads", &t.max(1).to_string()]);
    }

    let sets = if has_audio {
        "id=0,streams=v id=1,streams=a"
    } else {
        "id=0,streams=v"
    };
    push(&[
        "-f",
        "dash",
        "-use_template",
        "1",
        "-use_timeline",
        "1",
        "-seg_duration",
        &seg.to_string(),
        "-init_seg_name",
        "init-$RepresentationID$.m4s",
        "-media_seg_name",
        "chunk-$RepresentationID$-$Number%05d$.m4s",
        "-adaptation_sets",
        sets,
    ]);
    push(&[&format!(
        "file:{}",
        out_dir.join(MANIFEST).to_string_lossy()
    )]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(has_audio: bool, n: usize) -> Vec<String> {
        let ladder: Vec<Rendition> = super::super::ladder::RUNGS[..n]
            .iter()
            .map(|&(h, k)| Rendition {
                height: h,
                width: h * 16 / 9 / 2 * 2,
                video_kbps: k,
            })
            .collect();
        ffmpeg_args(
            &PathBuf::from("/in/a:b.mp4"),
            &PathBuf::from("/out"),
            &ladder,
            has_audio,
            &TranscodeOptions::default(),
        )
    }

    fn after<'a>(a: &'a [String], flag: &str) -> &'a str {
        let i = a.iter().position(|x| x == flag).expect(flag);
        &a[i + 1]
    }

    #[test]
    fn one_run_for_the_whole_ladder() {
        let a = args(true, 3);
        assert_eq!(after(&a, "-i"), "file:/in/a:b.mp4");
        assert_eq!(a.last().map(String::as_str), Some("file:/out/manifest.mpd"));
        assert_eq!(after(&a, "-f"), "dash");
        assert_eq!(after(&a, "-seg_duration"), "4");
        assert_eq!(
            after(&a, "-adaptation_sets"),
            "id=0,streams=v id=1,streams=a"
        );
        assert_eq!(after(&a, "-init_seg_name"), "init-$RepresentationID$.m4s");
        assert_eq!(
            after(&a, "-media_seg_name"),
            "chunk-$RepresentationID$-$Number%05d$.m4s"
        );
        assert_eq!(after(&a, "-b:v:0"), "5000k");
        assert_eq!(after(&a, "-b:v:2"), "1400k");
        let maps: Vec<&str> = a
            .windows(2)
            .filter(|w| w[0] == "-map")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(maps, ["[v0]", "[v1]", "[v2]", "0:a:0"]);
        assert!(after(&a, "-filter_complex").starts_with("[0:v:0]split=3[s0][s1][s2];"));
        assert_eq!(after(&a, "-force_key_frames"), "expr:gte(t,n_forced*4)");
        assert_eq!(after(&a, "-protocol_whitelist"), "file");
        assert_eq!(after(&a, "-fps_mode"), "passthrough");
    }

    #[test]
    fn probed_sources_force_their_demuxer_and_caps() {
        let ladder = [Rendition {
            height: 360,
            width: 640,
            video_kbps: 800,
        }];
        let probe = Probe {
            duration_ms: 600_000,
            width: 640,
            height: 360,
            fps: 0.005,
            video_codec: "h264".into(),
            has_audio: false,
            container: Container::Mov,
        };
        let a = ffmpeg_args_probed(
            &PathBuf::from("/in/x"),
            &PathBuf::from("/out"),
            &ladder,
            &probe,
            &TranscodeOptions::default(),
        );
        let joined = a.join(" ");
        assert!(
            joined.starts_with(
                "-hide_banner -nostdin -nostats -loglevel error -progress pipe:1 -stats_period 1 -y \
                 -protocol_whitelist file -f mov \
                 -enable_drefs 0 -i file:/in/x "
            ),
            "{joined}"
        );
        assert_eq!(after(&a, "-fps_mode"), "passthrough");
        assert_eq!(after(&a, "-t"), "607.000");
        assert_eq!(after(&a, "-frames:v"), "182100");
        let mkv = Probe {
            container: Container::Matroska,
            ..probe
        };
        let a = ffmpeg_args_probed(
            &PathBuf::from("/in/x"),
            &PathBuf::from("/out"),
            &ladder,
            &mkv,
            &TranscodeOptions::default(),
        );
        assert_eq!(after(&a, "-f"), "matroska");
        assert!(!a.iter().any(|x| x == "-enable_drefs"));
    }

    #[test]
    fn no_audio_no_audio_set() {
        let a = args(false, 1);
        assert_eq!(after(&a, "-adaptation_sets"), "id=0,streams=v");
        assert!(!a.iter().any(|x| x == "0:a:0" || x == "aac"));
        assert!(!a.iter().any(|x| x == "-threads"));
    }
}
