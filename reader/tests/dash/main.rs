//! The DASH pipeline against real ffmpeg/ffprobe (Debian's 5.1), on clips generated with lavfi.
//!
//! Encodes use `-preset ultrafast`: these tests check structure, naming, streaming and error mapping, not quality.

#![allow(clippy::unwrap_used)]

mod fixtures;
mod hardening;
mod ring;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reader::dash::{
    self, content_type, ffmpeg_args, ladder, probe, thumbnail, transcode, DashError, Limits, Probe,
    Rendition, TranscodeOptions, TranscodeReport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn fast() -> TranscodeOptions {
    TranscodeOptions {
        preset: "ultrafast".into(),
        ..TranscodeOptions::default()
    }
}

/// [`transcode`] with the fast options and default limits.
async fn fast_transcode(
    input: &Path,
    out: &Path,
    ladder: &[Rendition],
    done: mpsc::Sender<PathBuf>,
    cancel: CancellationToken,
) -> Result<TranscodeReport, DashError> {
    transcode(
        input,
        out,
        ladder,
        &fast(),
        &Limits::default(),
        done,
        cancel,
        Default::default(),
    )
    .await
}

/// A file received on the `done` channel: when, and how big it was at that moment.
#[derive(Debug)]
struct Arrival {
    name: String,
    at: Duration,
    size: u64,
}

/// Runs a transcode while recording every file sent on `done`, with its size at arrival.
async fn run(
    input: &Path,
    out: &Path,
    ladder: &[Rendition],
    has_audio: bool,
    opts: &TranscodeOptions,
) -> (Result<TranscodeReport, DashError>, Vec<Arrival>) {
    let start = Instant::now();
    let (tx, mut rx) = mpsc::channel::<PathBuf>(4);
    let collector = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(path) = rx.recv().await {
            let size = std::fs::metadata(&path).expect("sent file exists").len();
            got.push(Arrival {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                at: start.elapsed(),
                size,
            });
        }
        got
    });
    let _ = has_audio; // the transcoder takes it from its own probe; the caller's checks use it
    let result = transcode(
        input,
        out,
        ladder,
        opts,
        &Limits::default(),
        tx,
        CancellationToken::new(),
        Default::default(),
    )
    .await;
    (result, collector.await.expect("collector"))
}

/// Everything a finished output must satisfy; returns the chunk count per representation.
fn check_output(
    out: &Path,
    report: &TranscodeReport,
    arrivals: &[Arrival],
    ladder: &[Rendition],
    has_audio: bool,
    duration_secs: f64,
) -> BTreeMap<u32, u64> {
    let reps = ladder.len() + usize::from(has_audio);

    // Each file exactly once, manifest last, the report agrees with what was received.
    let names: Vec<&str> = arrivals.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names.last(), Some(&"manifest.mpd"), "{names:?}");
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a file was sent twice: {names:?}"
    );
    assert_eq!(report.files, names);
    assert_eq!(report.representations, reps);

    // Every file in the directory was sent, named as the contract says, and was complete when sent.
    let mut on_disk: Vec<String> = std::fs::read_dir(out)
        .expect("list out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut sent: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    sent.sort();
    assert_eq!(on_disk, sent, "directory and channel disagree");
    for a in arrivals {
        assert!(content_type(&a.name).is_some(), "bad name {}", a.name);
        let final_size = std::fs::metadata(out.join(&a.name)).expect("stat").len();
        assert_eq!(
            a.size, final_size,
            "{} was sent before it was complete",
            a.name
        );
        assert!(final_size > 0, "{} is empty", a.name);
    }

    // Per representation: an init, chunks 1..=n without gaps, n ≈ duration / 4.
    let mut chunks: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut inits = HashSet::new();
    for name in &sent {
        if let Some(rep) = name
            .strip_prefix("init-")
            .and_then(|s| s.strip_suffix(".m4s"))
        {
            inits.insert(rep.parse::<u32>().expect("init rep"));
        } else if let Some(rest) = name
            .strip_prefix("chunk-")
            .and_then(|s| s.strip_suffix(".m4s"))
        {
            let (rep, n) = rest.split_once('-').expect("chunk-R-N");
            assert_eq!(n.len(), 5, "{name}: number not 5 digits");
            chunks
                .entry(rep.parse().expect("rep"))
                .or_default()
                .push(n.parse().expect("number"));
        } else {
            assert_eq!(name, "manifest.mpd");
        }
    }
    let expected_reps: Vec<u32> = (0..reps as u32).collect();
    let mut init_reps: Vec<u32> = inits.into_iter().collect();
    init_reps.sort_unstable();
    assert_eq!(init_reps, expected_reps);
    assert_eq!(chunks.keys().copied().collect::<Vec<_>>(), expected_reps);
    let expected_count = (duration_secs / 4.0).ceil() as i64;
    let mut counts = BTreeMap::new();
    for (rep, mut numbers) in chunks {
        numbers.sort_unstable();
        let n = numbers.len() as u64;
        assert_eq!(numbers, (1..=n).collect::<Vec<_>>(), "rep {rep} has gaps");
        assert!(
            (n as i64 - expected_count).abs() <= 1,
            "rep {rep}: {n} chunks for {duration_secs} s"
        );
        counts.insert(rep, n);
    }
    assert_eq!(report.segments as u64, counts.values().sum::<u64>());

    // Per representation, the init segment was sent before any of its chunks, chunks in order.
    let position = |name: &str| names.iter().position(|n| *n == name).expect("sent");
    for (&rep, &n) in &counts {
        let mut last = position(&format!("init-{rep}.m4s"));
        for k in 1..=n {
            let p = position(&format!("chunk-{rep}-{k:05}.m4s"));
            assert!(p > last, "rep {rep} chunk {k} out of order");
            last = p;
        }
    }

    check_manifest(out, ladder, has_audio, &counts);
    counts
}

/// Parses the manifest as XML and checks it against the ladder and the files.
fn check_manifest(out: &Path, ladder: &[Rendition], has_audio: bool, counts: &BTreeMap<u32, u64>) {
    let xml = std::fs::read_to_string(out.join("manifest.mpd")).expect("read manifest");
    let doc = roxmltree::Document::parse(&xml).expect("manifest is XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "MPD");
    assert_eq!(root.attribute("type"), Some("static"));

    let sets: Vec<_> = root
        .descendants()
        .filter(|n| n.has_tag_name("AdaptationSet"))
        .collect();
    assert_eq!(sets.len(), 1 + usize::from(has_audio));
    let reps_of = |set: &roxmltree::Node| -> Vec<(String, Option<u32>, u64)> {
        set.children()
            .filter(|n| n.has_tag_name("Representation"))
            .map(|r| {
                let segments: u64 = r
                    .descendants()
                    .filter(|n| n.has_tag_name("S"))
                    .map(|s| 1 + s.attribute("r").map_or(0, |v| v.parse::<u64>().expect("r")))
                    .sum();
                (
                    r.attribute("id").expect("id").to_owned(),
                    r.attribute("height").map(|h| h.parse().expect("height")),
                    segments,
                )
            })
            .collect()
    };
    assert_eq!(sets[0].attribute("contentType"), Some("video"));
    let video = reps_of(&sets[0]);
    assert_eq!(video.len(), ladder.len(), "video representations");
    for (i, (id, height, segments)) in video.iter().enumerate() {
        assert_eq!(id, &i.to_string());
        assert_eq!(*height, Some(ladder[i].height));
        assert_eq!(Some(segments), counts.get(&(i as u32)));
    }
    if has_audio {
        assert_eq!(sets[1].attribute("contentType"), Some("audio"));
        let audio = reps_of(&sets[1]);
        assert_eq!(audio.len(), 1);
        assert_eq!(audio[0].0, ladder.len().to_string());
        assert_eq!(Some(&audio[0].2), counts.get(&(ladder.len() as u32)));
    }
    assert!(xml.contains(r#"initialization="init-$RepresentationID$.m4s""#));
    assert!(xml.contains(r#"media="chunk-$RepresentationID$-$Number%05d$.m4s""#));
}

fn assert_about(actual: u64, expected: u64, slack: u64, what: &str) {
    assert!(
        actual.abs_diff(expected) <= slack,
        "{what}: {actual}, expected {expected} ± {slack}"
    );
}

#[tokio::test]
async fn probe_reads_fields() {
    for clip in [fixtures::clip720(), fixtures::clip720_faststart()] {
        let p = probe(clip).await.expect("probe");
        assert_about(p.duration_ms, 10_000, 100, "duration");
        assert_eq!((p.width, p.height), (1280, 720));
        assert!((p.fps - 30.0).abs() < 0.01, "fps {}", p.fps);
        assert_eq!(p.video_codec, "h264");
        assert!(p.has_audio);
    }
    let p = probe(fixtures::clip360()).await.expect("probe 360");
    assert_eq!((p.width, p.height), (640, 360));
    let p = probe(fixtures::no_audio()).await.expect("probe no audio");
    assert!(!p.has_audio);
    assert_about(p.duration_ms, 6_000, 100, "duration");
    assert!((p.fps - 25.0).abs() < 0.01);
}

#[tokio::test]
async fn ladder_never_upscales() {
    let p = probe(fixtures::clip720()).await.expect("probe");
    let l = ladder(&p);
    assert_eq!(
        l.iter().map(|r| r.height).collect::<Vec<_>>(),
        [720, 480, 360]
    );
    assert_eq!(
        l.iter().map(|r| r.width).collect::<Vec<_>>(),
        [1280, 854, 640]
    );
    assert!(l.windows(2).all(|w| w[0].video_kbps > w[1].video_kbps));
    let p = probe(fixtures::clip360()).await.expect("probe 360");
    assert_eq!(
        ladder(&p),
        [Rendition {
            height: 360,
            width: 640,
            video_kbps: 800
        }]
    );
    let small = Probe {
        width: 320,
        height: 180,
        ..p
    };
    assert_eq!(
        ladder(&small)
            .iter()
            .map(|r| (r.width, r.height))
            .collect::<Vec<_>>(),
        [(320, 180)]
    );
}

#[tokio::test]
async fn transcodes_720p_ladder_with_audio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("video");
    let p = probe(fixtures::clip720()).await.expect("probe");
    let l = ladder(&p);
    let (report, arrivals) = run(fixtures::clip720(), &out, &l, true, &fast()).await;
    let report = report.expect("transcode");
    let counts = check_output(&out, &report, &arrivals, &l, true, 10.0);
    assert_eq!(counts.len(), 4, "3 video + 1 audio");
    // Every rendition is what the ladder asked for.
    assert_eq!(
        fixtures::video_size(&out.join("init-0.m4s")),
        (1280, 720),
        "representation 0 is the highest video"
    );
    assert_eq!(fixtures::video_size(&out.join("init-2.m4s")), (640, 360));
    eprintln!(
        "720p x3 + audio, 10 s: {:?} ({} files)",
        report.elapsed,
        report.files.len()
    );
}

#[tokio::test]
async fn transcodes_faststart_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("a:b dir"); // a ':' must not be taken for a protocol
    let p = probe(fixtures::clip720_faststart()).await.expect("probe");
    let l = ladder(&p)[1..].to_vec(); // 480p + 360p: enough to check, cheaper
    let opts = TranscodeOptions {
        threads: Some(2),
        ..fast()
    };
    let (report, arrivals) = run(fixtures::clip720_faststart(), &out, &l, true, &opts).await;
    let report = report.expect("transcode");
    check_output(&out, &report, &arrivals, &l, true, 10.0);
}

#[tokio::test]
async fn transcodes_without_audio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("v");
    let p = probe(fixtures::no_audio()).await.expect("probe");
    let l = ladder(&p);
    assert_eq!(l.len(), 1);
    let (report, arrivals) = run(fixtures::no_audio(), &out, &l, false, &fast()).await;
    let report = report.expect("transcode");
    let counts = check_output(&out, &report, &arrivals, &l, false, 6.0);
    assert_eq!(counts.len(), 1);
}

#[tokio::test]
async fn rotated_source_keeps_its_orientation() {
    let p = probe(fixtures::rotated()).await.expect("probe");
    assert_eq!((p.width, p.height), (180, 320), "display size");
    let l = ladder(&p);
    assert_eq!(
        l.iter().map(|r| (r.width, r.height)).collect::<Vec<_>>(),
        [(180, 320)]
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("v");
    let (report, arrivals) = run(fixtures::rotated(), &out, &l, false, &fast()).await;
    let report = report.expect("transcode");
    check_output(&out, &report, &arrivals, &l, false, 6.0);
    // ffmpeg autorotates while decoding, so the rendition is upright.
    assert_eq!(fixtures::video_size(&out.join("init-0.m4s")), (180, 320));
}

#[tokio::test]
async fn streams_files_while_ffmpeg_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("long");
    let p = probe(fixtures::clip720_30s()).await.expect("probe");
    let l = ladder(&p);
    let (report, arrivals) = run(fixtures::clip720_30s(), &out, &l, true, &fast()).await;
    let report = report.expect("transcode");
    check_output(&out, &report, &arrivals, &l, true, 30.0);
    // Arrival times are measured from before the call, so `at < ffmpeg_elapsed` means "before ffmpeg exited".
    let early: Vec<&Arrival> = arrivals
        .iter()
        .filter(|a| a.at < report.ffmpeg_elapsed)
        .collect();
    let chunks_early = early
        .iter()
        .filter(|a| a.name.starts_with("chunk-"))
        .count();
    eprintln!(
        "30 s, 720p x3 + audio: ffmpeg ran {:?}, {} of {} files sent before it exited ({chunks_early} chunks), \
         first at {:?}",
        report.ffmpeg_elapsed,
        early.len(),
        arrivals.len(),
        arrivals.first().map(|a| a.at)
    );
    assert!(
        chunks_early >= 4,
        "only {chunks_early} chunks arrived before ffmpeg exited"
    );
    assert!(
        early.iter().any(|a| a.name.starts_with("init-")),
        "no init segment arrived before ffmpeg exited"
    );
    assert!(report.elapsed >= report.ffmpeg_elapsed);
}

/// PIDs of live ffmpeg processes of this test process whose command line mentions `needle`.
fn our_ffmpegs(needle: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ffmpeg = args.first().is_some_and(|a| a.ends_with("ffmpeg"));
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Field 4 of /proc/PID/stat is the parent PID (after the parenthesised command name).
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .unwrap_or("");
        if is_ffmpeg && ppid == me && args.iter().any(|a| a.contains(needle)) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn cancel_kills_ffmpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("cancelled");
    let input = fixtures::clip720_30s();
    let p = probe(input).await.expect("probe");
    let l = ladder(&p);
    let (tx, mut rx) = mpsc::channel::<PathBuf>(64);
    let cancel = CancellationToken::new();
    let task = {
        let (out, l, cancel) = (out.clone(), l.clone(), cancel.clone());
        tokio::spawn(async move { fast_transcode(input, &out, &l, tx, cancel).await })
    };
    // Once a file has arrived, ffmpeg is certainly running.
    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a file within 30 s")
        .expect("channel open");
    assert!(first.starts_with(&out));
    let pids = our_ffmpegs(&out.to_string_lossy());
    assert_eq!(pids.len(), 1, "exactly one ffmpeg for this transcode");
    let pid = pids[0];

    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("cancel is prompt")
        .expect("join");
    let err = result.expect_err("cancelled transcode must fail");
    assert!(matches!(err, DashError::Cancelled), "{err}");
    assert_eq!(err.http_status(), 499);
    // Killed and reaped: no process (not even a zombie) with that PID remains.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "ffmpeg {pid} still exists after cancel"
    );
    assert!(our_ffmpegs(&out.to_string_lossy()).is_empty());
    // No manifest was published for a cancelled transcode.
    let mut rest = Vec::new();
    while let Ok(p) = rx.try_recv() {
        rest.push(p);
    }
    assert!(
        !rest.iter().any(|p| p.ends_with("manifest.mpd")),
        "{rest:?}"
    );
}

#[tokio::test]
async fn dropped_receiver_stops_ffmpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("dropped");
    let input = fixtures::clip720_30s();
    let l = ladder(&probe(input).await.expect("probe"));
    let (tx, rx) = mpsc::channel::<PathBuf>(1);
    drop(rx);
    let started = Instant::now();
    let err = fast_transcode(input, &out, &l, tx, CancellationToken::new())
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, DashError::Cancelled), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(our_ffmpegs(&out.to_string_lossy()).is_empty());
}

#[tokio::test]
async fn text_file_is_not_a_video() {
    let err = probe(fixtures::text()).await.expect_err("text");
    assert!(matches!(err, DashError::NotVideo(_)), "{err}");
    assert_eq!(err.http_status(), 415);
    eprintln!("text: {err}");
}

#[tokio::test]
async fn png_is_not_a_video() {
    let err = probe(fixtures::png()).await.expect_err("png");
    assert!(matches!(err, DashError::NotVideo(_)), "{err}");
    assert_eq!(err.http_status(), 415);
    assert!(err.to_string().contains("image"), "{err}");
}

#[tokio::test]
async fn audio_only_is_not_a_video() {
    let err = probe(fixtures::audio_only()).await.expect_err("m4a");
    assert!(matches!(err, DashError::NotVideo(_)), "{err}");
    assert!(err.to_string().contains("audio"), "{err}");
}

#[tokio::test]
async fn empty_file_is_not_a_video() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.mp4");
    std::fs::write(&path, b"").expect("write");
    let err = probe(&path).await.expect_err("empty");
    assert_eq!(err.http_status(), 415, "{err}");
}

#[tokio::test]
async fn truncated_mp4_is_corrupt() {
    // Index at the end: ffprobe finds no `moov`.
    let err = probe(fixtures::truncated()).await.expect_err("truncated");
    assert!(matches!(err, DashError::Corrupt(_)), "{err}");
    assert_eq!(err.http_status(), 422);
    // Index first: ffprobe is happy, the box walk is not.
    let err = probe(fixtures::truncated_faststart())
        .await
        .expect_err("truncated faststart");
    assert!(matches!(err, DashError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    eprintln!("truncated faststart: {err}");
}

#[tokio::test]
async fn transcode_rejects_truncated_input() {
    // Matroska states its full duration up front; ffmpeg decodes half of it and exits 0. The output check sees
    // that the timeline does not cover the source.
    let input = fixtures::truncated_mkv();
    let p = probe(input).await.expect("a truncated mkv still probes");
    assert_about(p.duration_ms, 10_000, 100, "stated duration");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("v");
    let (result, arrivals) = run(input, &out, &ladder(&p), false, &fast()).await;
    let err = result.expect_err("half a video");
    assert!(matches!(err, DashError::Corrupt(_)), "{err}");
    assert_eq!(err.http_status(), 422);
    assert!(!arrivals.iter().any(|a| a.name == "manifest.mpd"));
    eprintln!("truncated mkv: {err}");

    // The truncated MP4 (index first) is caught by the probe transcode runs alongside ffmpeg.
    let input = fixtures::truncated_faststart();
    let out = dir.path().join("w");
    let l = [Rendition {
        height: 360,
        width: 640,
        video_kbps: 800,
    }];
    let (result, arrivals) = run(input, &out, &l, true, &fast()).await;
    let err = result.expect_err("half an mp4");
    assert_eq!(err.http_status(), 422, "{err}");
    assert!(!arrivals.iter().any(|a| a.name == "manifest.mpd"));
}

#[tokio::test]
async fn ffmpeg_failure_keeps_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TranscodeOptions {
        preset: "no-such-preset".into(),
        ..fast()
    };
    let l = ladder(&probe(fixtures::no_audio()).await.expect("probe"));
    let (result, _) = run(
        fixtures::no_audio(),
        &dir.path().join("v"),
        &l,
        false,
        &opts,
    )
    .await;
    match result {
        Err(e @ DashError::Ffmpeg { .. }) => {
            assert_eq!(e.http_status(), 500);
            let DashError::Ffmpeg { stderr_tail, .. } = &e else {
                unreachable!()
            };
            assert!(!stderr_tail.is_empty() && stderr_tail.len() <= 2048);
            assert!(stderr_tail.contains("preset"), "{stderr_tail}");
        }
        other => panic!("expected an ffmpeg error, got {other:?}"),
    }
}

#[tokio::test]
async fn output_dir_must_be_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("stale.m4s"), b"x").expect("write");
    let l = ladder(&probe(fixtures::no_audio()).await.expect("probe"));
    let (result, arrivals) = run(fixtures::no_audio(), dir.path(), &l, false, &fast()).await;
    assert!(matches!(result, Err(DashError::Invalid(_))), "{result:?}");
    assert!(arrivals.is_empty());
}

#[tokio::test]
async fn thumbnail_is_a_320px_jpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (clip, size) in [
        (fixtures::clip720(), (320, 180)),
        (fixtures::one_second(), (320, 180)),
    ] {
        let p = probe(clip).await.expect("probe");
        let out = dir.path().join(dash::POSTER);
        thumbnail(clip, &out, &p).await.expect("thumbnail");
        let bytes = std::fs::read(&out).expect("read poster");
        assert_eq!(&bytes[..2], &[0xff, 0xd8], "JPEG magic");
        assert_eq!(fixtures::video_size(&out), size);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != dash::POSTER)
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_file(&out).expect("remove");
    }
}

#[test]
fn args_match_the_contract() {
    let l = [Rendition {
        height: 360,
        width: 640,
        video_kbps: 800,
    }];
    let a = ffmpeg_args(
        Path::new("/in.mp4"),
        Path::new("/out"),
        &l,
        true,
        &TranscodeOptions::default(),
    );
    let joined = a.join(" ");
    for needle in [
        "-f dash",
        "-use_template 1",
        "-use_timeline 1",
        "-seg_duration 4",
        "-init_seg_name init-$RepresentationID$.m4s",
        "-media_seg_name chunk-$RepresentationID$-$Number%05d$.m4s",
        "-sc_threshold 0",
        "-c:v libx264",
        "-preset veryfast",
        "-c:a aac",
    ] {
        assert!(joined.contains(needle), "missing {needle}: {joined}");
    }
    assert_eq!(a.last().map(String::as_str), Some("file:/out/manifest.mpd"));
}
