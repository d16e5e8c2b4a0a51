//! Issue 9, item 6: what an upload can make the transcoder read, produce, and cost, and what a client is told.
//!
//! The sink-level tests run the real dash sink ([`VideoSink`]) against real ffmpeg and an in-memory storage node
//! ([`FakeRing`]), so "nothing published" means "no blob on the ring".

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reader::dash::{
    ladder, probe, probe_within, thumbnail, transcode, Container, DashError, Limits,
    TranscodeOptions, TranscodeTimeout,
};
use reader::video::{SinkLimits, VideoSink};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fixtures;
use crate::ring::{client_view, commit, finished, stage, transcode_upload, upload_id, FakeRing};

fn preset(p: &str) -> TranscodeOptions {
    TranscodeOptions {
        preset: p.into(),
        ..TranscodeOptions::default()
    }
}

/// A dash sink staging under `dir/staging`, writing to `ring`.
async fn sink(
    dir: &Path,
    ring: &FakeRing,
    options: TranscodeOptions,
    concurrency: usize,
    limits: SinkLimits,
) -> Arc<VideoSink> {
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).expect("staging dir");
    Arc::new(
        VideoSink::new(
            staging,
            ring.cluster(dir).await,
            concurrency,
            options,
            65536,
        )
        .with_limits(limits),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A DASH manifest, an HLS playlist and a concat list, each pointing at `target`.
fn reference_files(target: &Path) -> [(&'static str, String); 3] {
    let t = target.display();
    [
        (
            "DASH manifest",
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT6S" minBufferTime="PT1S"
     profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
  <Period><AdaptationSet mimeType="video/mp4">
    <Representation id="0" bandwidth="100000" width="320" height="180" codecs="avc1.42c00d">
      <BaseURL>{t}</BaseURL>
    </Representation>
  </AdaptationSet></Period>
</MPD>
"#
            ),
        ),
        (
            "HLS playlist",
            format!("#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6.0,\n{t}\n#EXT-X-ENDLIST\n"),
        ),
        ("concat list", format!("ffconcat version 1.0\nfile '{t}'\n")),
    ]
}

#[tokio::test]
async fn leak_manifest_is_refused_and_nothing_is_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = FakeRing::start().await;
    // A real, transcodable clip the uploader was never meant to reach.
    let secret = dir.path().join("secret.mp4");
    std::fs::copy(fixtures::no_audio(), &secret).expect("copy clip");
    let s = sink(
        dir.path(),
        &ring,
        preset("ultrafast"),
        1,
        SinkLimits::default(),
    )
    .await;
    for (what, text) in reference_files(&secret) {
        let err = stage(&s, "leak.mp4", text.into_bytes())
            .await
            .expect_err(what);
        let (status, message) = client_view(err).await;
        eprintln!("{what} as leak.mp4 → {status}: {message}");
        assert_eq!(status, 415, "{what}: {message}");
        assert!(message.contains("points at other files"), "{message}");
        assert!(
            !message.contains(&*dir.path().to_string_lossy()),
            "{message}"
        );
    }
    assert_eq!(ring.puts(), 0, "something was written to the ring");
    assert!(ring.keys().is_empty());
    assert!(
        entries(&dir.path().join("staging")).is_empty(),
        "staging left behind"
    );
}

/// Watches a FIFO: `opened()` turns true if anyone opens it for reading before `stop()`.
struct Tripwire {
    path: PathBuf,
    opened: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl Tripwire {
    fn new(path: PathBuf) -> Self {
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo failed");
        let (opened, stopped) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, o, s) = (path.clone(), opened.clone(), stopped.clone());
        // Opening a FIFO for writing blocks until a reader opens it; the writer closes at once, so the reader
        // sees an empty file rather than hanging.
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&p);
            if !s.load(Ordering::SeqCst) {
                o.store(true, Ordering::SeqCst);
            }
            drop(f);
        });
        Self {
            path,
            opened,
            stopped,
        }
    }

    /// Stops watching (opening the FIFO ourselves, non-blocking, to release the thread); true if it was opened.
    fn stop(self) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        self.stopped.store(true, Ordering::SeqCst);
        const O_NONBLOCK: i32 = 0o4000;
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(&self.path);
        self.opened.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn files_named_by_a_manifest_are_never_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wire = Tripwire::new(dir.path().join("secret.mp4"));
    let clip = probe(fixtures::no_audio())
        .await
        .expect("probe a real clip");
    for (i, (what, text)) in reference_files(&wire.path).into_iter().enumerate() {
        let leak = dir.path().join(format!("leak{i}.mp4"));
        std::fs::write(&leak, text).expect("write manifest");
        let err = tokio::time::timeout(Duration::from_secs(10), probe(&leak))
            .await
            .expect("probe returns")
            .expect_err(what);
        assert_eq!(err.http_status(), 415, "{what}: {err}");
        // The transcoder and the poster step, called directly, are just as closed.
        let (tx, _rx) = mpsc::channel(8);
        let out = dir.path().join(format!("out{i}"));
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            transcode(
                &leak,
                &out,
                &ladder(&clip),
                &preset("ultrafast"),
                &Limits::default(),
                tx,
                CancellationToken::new(),
                Default::default(),
            ),
        )
        .await
        .expect("transcode returns")
        .expect_err(what);
        assert_eq!(err.http_status(), 415, "{what}: {err}");
        let poster = dir.path().join(format!("poster{i}.jpg"));
        let forced = reader::dash::Probe {
            container: Container::Mov,
            ..clip.clone()
        };
        assert!(thumbnail(&leak, &poster, &forced).await.is_err(), "{what}");
    }
    assert!(
        !wire.stop(),
        "a file named inside an upload was opened by ffprobe/ffmpeg"
    );
}

#[tokio::test]
async fn external_data_references_and_other_containers_are_415() {
    let err = probe(fixtures::external_dref())
        .await
        .expect_err("external dref");
    assert_eq!(err.http_status(), 415, "{err}");
    assert!(err.to_string().contains("other files"), "{err}");
    let err = probe(fixtures::mpegts()).await.expect_err("mpeg-ts");
    assert_eq!(err.http_status(), 415, "{err}");
    assert!(err.to_string().contains("MPEG-TS"), "{err}");
    // The allowed containers still probe, with their demuxer recorded for every later run.
    assert_eq!(
        probe(fixtures::no_audio()).await.expect("mp4").container,
        Container::Mov
    );
    assert_eq!(
        probe(fixtures::mkv()).await.expect("mkv").container,
        Container::Matroska
    );
}

#[tokio::test]
async fn sparse_frames_stay_sparse() {
    // Decision: transcode it. Three frames over ten minutes is a slideshow, not an attack by itself; with source
    // timing kept it costs what its content costs: one segment per frame at most.
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = FakeRing::start().await;
    let bytes = std::fs::read(fixtures::sparse()).expect("read sparse clip");
    let p = probe(fixtures::sparse())
        .await
        .expect("a sparse clip is a video");
    assert!(
        (599_000..=601_000).contains(&p.duration_ms),
        "{}",
        p.duration_ms
    );
    let s = sink(
        dir.path(),
        &ring,
        preset("veryfast"),
        1,
        SinkLimits::default(),
    )
    .await;
    let started = Instant::now();
    let video = transcode_upload(&s, "sparse.mp4", bytes.clone())
        .await
        .expect("staged and committed");
    let elapsed = started.elapsed();
    assert_eq!(video.status, "ready", "{video:?}");
    let keys = ring.keys();
    eprintln!(
        "sparse: {} bytes, 3 frames over 600 s → {} files on the ring in {elapsed:?}: {keys:?}",
        bytes.len(),
        keys.len()
    );
    // init, at most one chunk per frame, manifest, poster.
    assert!(keys.len() <= 6, "{} files: {keys:?}", keys.len());
    assert_eq!(keys.len(), video.files.len());
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // The manifest runs no longer than the source (plus the 1 s + 1 % margin).
    let client = reqwest::Client::new();
    let xml = client
        .get(format!("http://{}/v1/blobs/sparse/manifest.mpd", ring.addr))
        .send()
        .await
        .expect("get manifest")
        .text()
        .await
        .expect("manifest text");
    let doc = roxmltree::Document::parse(&xml).expect("manifest is XML");
    let template = doc
        .descendants()
        .find(|n| n.has_tag_name("SegmentTemplate"))
        .expect("template");
    let scale: f64 = template
        .attribute("timescale")
        .expect("timescale")
        .parse()
        .expect("number");
    let ticks: f64 = doc
        .descendants()
        .filter(|n| n.has_tag_name("S"))
        .map(|s| {
            let d: f64 = s.attribute("d").expect("d").parse().expect("d");
            let r: f64 = s.attribute("r").map_or(0.0, |r| r.parse().expect("r"));
            d * (r + 1.0)
        })
        .sum();
    let secs = ticks / scale;
    assert!((590.0..=607.0).contains(&secs), "timeline of {secs} s");
}

#[tokio::test]
async fn transcode_timeout_kills_ffmpeg_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = FakeRing::start().await;
    let limits = SinkLimits {
        video: Limits {
            timeout: TranscodeTimeout::Fixed(Duration::from_secs(3)),
            ..Limits::default()
        },
        ..SinkLimits::default()
    };
    // 5 minutes of 160x90 at `slow`: the first segments reach the ring within a second, the whole would take
    // about half a minute on two cores.
    let s = sink(dir.path(), &ring, preset("slow"), 1, limits).await;
    let staging = dir.path().join("staging");
    let bytes = std::fs::read(fixtures::long_small()).expect("read clip");
    let started = Instant::now();
    let id = commit(&s, "slow.mp4", bytes)
        .await
        .expect("a video commits before it is transcoded");
    let video = finished(&s, &id, Duration::from_secs(30)).await;
    let elapsed = started.elapsed();
    let message = video.error.clone().unwrap_or_default();
    eprintln!(
        "timeout 3 s → {} after {elapsed:?}: {message} ({} ring writes, all undone)",
        video.status,
        ring.puts()
    );
    assert_eq!(video.status, "failed", "{video:?}");
    assert!(message.contains("longer than the 3 s allowed"), "{message}");
    assert!(
        video.files.is_empty() && video.digests.is_empty(),
        "{video:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(
        ring.puts() > 0,
        "segments were on the ring before the limit (what must be undone)"
    );
    assert!(
        ring.keys().is_empty(),
        "left on the ring: {:?}",
        ring.keys()
    );
    assert!(
        crate::our_ffmpegs(&staging.to_string_lossy()).is_empty(),
        "ffmpeg still running"
    );
    // The staged upload, the committed job with its source, and the work directory are gone.
    let jobs = dir.path().join("transcode");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(entries(&staging).is_empty() && entries(&jobs).is_empty()) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(entries(&staging).is_empty(), "{:?}", entries(&staging));
    assert!(entries(&jobs).is_empty(), "{:?}", entries(&jobs));
}

#[tokio::test]
async fn transcode_timeout_kills_the_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let input = fixtures::clip720_30s();
    let l = ladder(&probe(input).await.expect("probe"));
    let limits = Limits {
        timeout: TranscodeTimeout::Fixed(Duration::from_secs(2)),
        ..Limits::default()
    };
    let (tx, mut rx) = mpsc::channel::<PathBuf>(64);
    let task = {
        let (out, l) = (out.clone(), l.clone());
        tokio::spawn(async move {
            transcode(
                input,
                &out,
                &l,
                &preset("slow"),
                &limits,
                tx,
                CancellationToken::new(),
                Default::default(),
            )
            .await
        })
    };
    // Find ffmpeg while it runs.
    let mut pids = Vec::new();
    for _ in 0..100 {
        pids = crate::our_ffmpegs(&out.to_string_lossy());
        if !pids.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pids.len(), 1, "one ffmpeg for the transcode");
    let pid = pids[0];
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[2],
        pid.to_string(),
        "ffmpeg leads its own process group"
    );
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the limit ends it")
        .expect("join")
        .expect_err("too slow");
    assert!(matches!(err, DashError::TooSlow { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "ffmpeg {pid} survived"
    );
    while let Ok(p) = rx.try_recv() {
        assert!(!p.ends_with("manifest.mpd"), "a manifest after a timeout");
    }
}

#[tokio::test]
async fn oversize_videos_are_refused_422() {
    for (what, clip, word) in [
        ("4096x2304", fixtures::oversize(), "megapixels"),
        ("5 hours", fixtures::five_hours(), "5 h"),
        ("500 fps", fixtures::fast_rate(), "fps"),
    ] {
        let err = probe(clip).await.expect_err(what);
        eprintln!("{what}: {err}");
        assert_eq!(err.http_status(), 422, "{what}: {err}");
        assert!(matches!(err, DashError::Limit(_)), "{what}: {err}");
        assert!(err.public_message().contains(word), "{what}: {err}");
    }
    // Configured limits, through the sink: a 6 s clip over a 5 s limit, a 320x180 one over 200x200 pixels.
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = FakeRing::start().await;
    let strict = Limits {
        max_duration: Duration::from_secs(5),
        ..Limits::default()
    };
    assert!(probe_within(fixtures::one_second(), &strict).await.is_ok());
    let s = sink(
        dir.path(),
        &ring,
        preset("ultrafast"),
        1,
        SinkLimits {
            video: strict,
            ..SinkLimits::default()
        },
    )
    .await;
    let err = stage(
        &s,
        "six.mp4",
        std::fs::read(fixtures::no_audio()).expect("read"),
    )
    .await
    .expect_err("over 5 s");
    let (status, message) = client_view(err).await;
    assert_eq!(status, 422, "{message}");
    assert!(message.contains("up to 5 s"), "{message}");
    let small = Limits {
        max_pixels: 200 * 200,
        ..Limits::default()
    };
    let err = probe_within(fixtures::no_audio(), &small)
        .await
        .expect_err("over 40000 pixels");
    assert_eq!(err.http_status(), 422);
    assert_eq!(ring.puts(), 0);
}

#[tokio::test]
async fn errors_reach_clients_without_paths_or_ffmpeg_output() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = FakeRing::start().await;
    let root = dir.path().join("SECRET-ROOT");
    std::fs::create_dir_all(&root).expect("root");
    let secret = root.join("secret.mp4");
    std::fs::copy(fixtures::no_audio(), &secret).expect("copy");
    let tight = SinkLimits {
        video: Limits {
            timeout: TranscodeTimeout::Fixed(Duration::from_secs(1)),
            ..Limits::default()
        },
        ..SinkLimits::default()
    };
    let ok = sink(&root, &ring, preset("ultrafast"), 1, SinkLimits::default()).await;
    let capped = sink(
        &root.join("a"),
        &ring,
        preset("ultrafast"),
        1,
        SinkLimits {
            max_upload_bytes: Some(100_000),
            ..SinkLimits::default()
        },
    )
    .await;
    let broken = sink(
        &root.join("b"),
        &ring,
        preset("no-such-preset"),
        1,
        SinkLimits::default(),
    )
    .await;
    let slow = sink(&root.join("c"), &ring, preset("slow"), 1, tight).await;
    let odd_root = root.join(std::ffi::OsStr::from_bytes(b"odd-\xff"));
    let odd = sink(
        &odd_root,
        &ring,
        preset("ultrafast"),
        1,
        SinkLimits::default(),
    )
    .await;

    let read = |p: &Path| std::fs::read(p).expect("read fixture");
    let manifest = reference_files(&secret)[0].1.clone().into_bytes();
    // Refused when staged (415/422 from the probe, 413), or failed after the commit (the record says why).
    // What, on which sink, the upload, and the status when it is refused at stage (`None`: fails later).
    type Case<'a> = (&'a str, &'a Arc<VideoSink>, Vec<u8>, Option<u16>);
    let cases: Vec<Case> = vec![
        ("text", &ok, read(fixtures::text()), Some(415)),
        ("manifest", &ok, manifest, Some(415)),
        ("truncated", &ok, read(fixtures::truncated()), Some(422)),
        // Matroska has no index to check when probing: the damage shows when decoding, after the commit.
        ("truncated mkv", &ok, read(fixtures::truncated_mkv()), None),
        (
            "over the size limit",
            &capped,
            read(fixtures::clip360()),
            Some(413),
        ),
        ("ffmpeg failure", &broken, read(fixtures::no_audio()), None),
        ("time limit", &slow, read(fixtures::clip720()), None),
        (
            "non-UTF-8 staging path",
            &odd,
            read(fixtures::no_audio()),
            Some(500),
        ),
    ];
    for (what, s, bytes, expected) in cases {
        let message = match (transcode_upload(s, "clip.mp4", bytes).await, expected) {
            (Err(err), Some(expected)) => {
                let (status, message) = client_view(err).await;
                eprintln!("{what} → {status}: {message}");
                assert_eq!(status, expected, "{what}: {message}");
                message
            }
            (Ok(video), None) => {
                eprintln!("{what} → {}: {:?}", video.status, video.error);
                assert_eq!(video.status, "failed", "{what}: {video:?}");
                video.error.expect("a failed video says why")
            }
            (got, _) => panic!("{what}: expected {expected:?}, got {got:?}"),
        };
        for needle in [
            "SECRET",
            "/tmp",
            &*dir.path().to_string_lossy(),
            "staging",
            "transcode/",
            ".source",
            ".dash",
            "file:",
            "@ 0x",
            "x264",
            "moov atom",
            "Invalid data",
        ] {
            assert!(
                !message.contains(needle),
                "{what}: {needle:?} in {message:?}"
            );
        }
    }
}

#[tokio::test]
async fn upload_size_limit_applies_to_the_dash_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = FakeRing::start().await;
    let s = sink(
        dir.path(),
        &ring,
        preset("ultrafast"),
        1,
        SinkLimits {
            max_upload_bytes: Some(10_000),
            ..SinkLimits::default()
        },
    )
    .await;
    let bytes = std::fs::read(fixtures::no_audio()).expect("read");
    assert!(bytes.len() > 10_000);
    let err = stage(&s, "big.mp4", bytes.clone())
        .await
        .expect_err("over the limit");
    let (status, message) = client_view(err).await;
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("10000"), "{message}");
    // Raw (non-video) uploads through a dash reader are held to it too.
    let body =
        futures_util::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from(bytes))]);
    let err = s
        .stage(
            &upload_id(),
            "raw.bin",
            common::protocol::VideoMode::Skip,
            body,
        )
        .await
        .expect_err("raw over the limit");
    assert_eq!(client_view(err).await.0, 413);
    assert!(entries(&dir.path().join("staging")).is_empty());
    assert_eq!(ring.puts(), 0);
}

#[tokio::test]
async fn the_transcode_queue_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = FakeRing::start().await;
    // One transcode at a time, one upload may wait: the third at once is refused.
    let s = sink(
        dir.path(),
        &ring,
        preset("slow"),
        1,
        SinkLimits {
            queue: 1,
            ..SinkLimits::default()
        },
    )
    .await;
    let slow = std::fs::read(fixtures::clip720()).expect("read");
    let first = commit(&s, "first.mp4", slow)
        .await
        .expect("the first upload commits");
    let staging = dir.path().join("staging");
    let mut running = false;
    for _ in 0..200 {
        if !crate::our_ffmpegs(&staging.to_string_lossy()).is_empty() {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(running, "the first transcode started");
    let small = std::fs::read(fixtures::one_second()).expect("read");
    let second = commit(&s, "second.mp4", small.clone())
        .await
        .expect("the second upload commits and waits its turn");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = s
        .cluster()
        .meta()
        .get_video(&second)
        .await
        .expect("meta")
        .expect("the waiting video is listed");
    assert_eq!(waiting.status, "processing", "{waiting:?}");
    assert_eq!(
        crate::our_ffmpegs(&staging.to_string_lossy()).len(),
        1,
        "one transcode at a time"
    );
    let started = Instant::now();
    let err = stage(&s, "third.mp4", small.clone())
        .await
        .expect_err("the queue is full");
    let (status, message) = client_view(err).await;
    eprintln!(
        "third upload → {status} in {:?}: {message}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("busy"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        ring.keys().iter().all(|k| !k.starts_with("third/")),
        "a refused upload writes nothing"
    );

    // Both committed uploads are transcoded, one after the other; then there is room again.
    for id in [&first, &second] {
        let video = finished(&s, id, Duration::from_secs(120)).await;
        assert_eq!(video.status, "ready", "{video:?}");
    }
    let fourth = commit(&s, "fourth.mp4", small)
        .await
        .expect("admitted again");
    let video = finished(&s, &fourth, Duration::from_secs(60)).await;
    assert_eq!(video.status, "ready", "{video:?}");
}
