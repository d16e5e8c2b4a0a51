//! Running ffmpeg, handing out each finished file while it runs, and checking the result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mpd;
use super::probe::{probe_detail, ProbeDetail};
use super::{
    ffmpeg_args_probed, output_margin, DashError, Limits, Rendition, TranscodeOptions, MANIFEST,
};

/// How often the output directory is listed while ffmpeg runs. A segment is several seconds of encoding, so
/// 150 ms adds little latency and costs a `readdir` of a few dozen entries.
const POLL: Duration = Duration::from_millis(150);
/// How much of ffmpeg's stderr is kept for [`DashError::Ffmpeg`].
const STDERR_TAIL: usize = 2048;
/// Largest manifest accepted when validating (ffmpeg's are a few KiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// Longest line of ffmpeg's `-progress` output that is read (its `key=value` lines are a few dozen bytes).
const PROGRESS_LINE: usize = 256;

/// How far a running [`transcode`] is, from ffmpeg's `-progress` reports.
#[derive(Debug, Default)]
pub struct Progress {
    /// The source's length as probed, microseconds; 0 until known.
    duration_us: AtomicU64,
    /// Output time ffmpeg reported last, microseconds.
    out_us: AtomicU64,
}

impl Progress {
    /// Percent of the source transcoded, 0 to 99 while ffmpeg runs (100 is for the caller to say once the
    /// files are stored); `None` before ffmpeg reported anything.
    pub fn percent(&self) -> Option<f64> {
        let total = self.duration_us.load(Ordering::Relaxed);
        let done = self.out_us.load(Ordering::Relaxed);
        (total > 0 && done > 0).then(|| (done as f64 * 100.0 / total as f64).clamp(0.0, 99.0))
    }

    /// Takes one line of `-progress` output: `out_time_us=N` moves the output time forward (never back;
    /// ffmpeg prints `N/A` before the first frame).
    fn note(&self, line: &str) {
        if let Some(us) = line
            .trim()
            .strip_prefix("out_time_us=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.out_us.fetch_max(us, Ordering::Relaxed);
        }
    }
}

/// Reads ffmpeg's `-progress` lines from `out` into `progress` until ffmpeg closes it; a line longer than
/// [`PROGRESS_LINE`] is skipped, so a misbehaving child cannot make this buffer grow. (tokio-util's
/// `LinesCodec` has the same length cap, but `FramedRead` ends the stream at the first overlong line.)
async fn read_progress(mut out: ChildStdout, progress: Arc<Progress>) {
    let mut line: Vec<u8> = Vec::with_capacity(PROGRESS_LINE);
    let mut skipping = false;
    let mut chunk = [0u8; 1024];
    loop {
        let n = match out.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                if !skipping {
                    progress.note(&String::from_utf8_lossy(&line));
                }
                line.clear();
                skipping = false;
            } else if line.len() < PROGRESS_LINE {
                line.push(b);
            } else {
                skipping = true;
            }
        }
    }
}

/// What a successful [`transcode`] produced.
#[derive(Debug, Clone)]
pub struct TranscodeReport {
    /// Every file name in the order it was sent on `done`; `manifest.mpd` is last.
    pub files: Vec<String>,
    /// Representations in the manifest (video renditions plus audio).
    pub representations: usize,
    /// Media segments (`chunk-*`) over all representations.
    pub segments: usize,
    /// From the call to the manifest being sent.
    pub elapsed: Duration,
    /// From the call to ffmpeg's exit: files sent earlier than this were streamed while ffmpeg was running.
    pub ffmpeg_elapsed: Duration,
}

/// A DASH output file the muxer writes, by what it is rather than by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Output {
    Init { rep: u32 },
    Chunk { rep: u32, number: u64 },
}

impl Output {
    fn file_name(self) -> String {
        match self {
            Self::Init { rep } => format!("init-{rep}.m4s"),
            Self::Chunk { rep, number } => format!("chunk-{rep}-{number:05}.m4s"),
        }
    }

    /// Parses `init-{rep}.m4s` / `chunk-{rep}-{number:05}.m4s`, with an optional `.tmp` suffix (second value).
    /// Only the canonical spelling is accepted, so a name maps to exactly one output and back.
    fn parse(name: &str) -> Option<(Self, bool)> {
        let (base, tmp) = match name.strip_suffix(".tmp") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let stem = base.strip_suffix(".m4s")?;
        let out = if let Some(rep) = stem.strip_prefix("init-") {
            Self::Init {
                rep: digits(rep)?.try_into().ok()?,
            }
        } else {
            let (rep, number) = stem.strip_prefix("chunk-")?.split_once('-')?;
            Self::Chunk {
                rep: digits(rep)?.try_into().ok()?,
                number: digits(number)?,
            }
        };
        (out.file_name() == base).then_some((out, tmp))
    }

    fn rep(self) -> u32 {
        match self {
            Self::Init { rep } | Self::Chunk { rep, .. } => rep,
        }
    }
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Tracks the output directory and decides when a file is complete.
///
/// ffmpeg 5.1's dash muxer (checked with strace on Debian 12's 5.1.x) writes each media segment to
/// `chunk-….m4s.tmp`, closes it and renames it into place, whenever the output protocol is `file` (which
/// [`ffmpeg_args`] guarantees with a `file:` URL); the manifest likewise goes through `manifest.mpd.tmp`. Init
/// segments are *not* renamed: `init-{rep}.m4s` is created under its final name, written and closed before the
/// first media segment of that representation is opened. Hence:
///
/// - a `chunk-…` under its final name is complete once the muxer is seen using `.tmp` files at all; until then
///   (or with a muxer that writes in place) it is complete once a later chunk of the same representation exists;
/// - an `init-{rep}` is complete once any chunk of that representation exists (final or `.tmp`);
/// - everything present is complete once ffmpeg has exited successfully.
#[derive(Debug)]
struct Watcher {
    dir: PathBuf,
    rename_seen: bool,
    sent: BTreeSet<Output>,
    /// Finished files in the state of the last scan.
    present: BTreeSet<Output>,
    /// `.tmp` files in the state of the last scan.
    partial: Vec<String>,
    /// Highest chunk number seen in any representation (final or `.tmp`): segments started so far.
    most_chunks: u64,
}

impl Watcher {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            rename_seen: false,
            sent: BTreeSet::new(),
            present: BTreeSet::new(),
            partial: Vec::new(),
            most_chunks: 0,
        }
    }

    /// Lists the directory and returns the outputs that became complete since the last call, inits first, then
    /// chunks in segment order.
    async fn scan(&mut self, exited: bool) -> Result<Vec<Output>, DashError> {
        let io_err = |e| DashError::io(format!("cannot list {}", self.dir.display()), e);
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(io_err)?;
        self.present.clear();
        self.partial.clear();
        // Highest chunk number per representation, counting `.tmp` files: proof that earlier files are closed.
        let mut newest: BTreeMap<u32, u64> = BTreeMap::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_err)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                self.partial.push(name.to_owned());
            }
            let Some((out, tmp)) = Output::parse(name) else {
                continue;
            };
            if let Output::Chunk { rep, number } = out {
                let n = newest.entry(rep).or_insert(number);
                *n = (*n).max(number);
                self.rename_seen |= tmp;
                self.most_chunks = self.most_chunks.max(number);
            }
            if !tmp {
                self.present.insert(out);
            }
        }
        let mut ready: Vec<Output> = self
            .present
            .iter()
            .copied()
            .filter(|out| !self.sent.contains(out))
            .filter(|&out| {
                exited
                    || match out {
                        Output::Init { rep } => newest.contains_key(&rep),
                        Output::Chunk { rep, number } => {
                            self.rename_seen || newest.get(&rep).is_some_and(|&n| n > number)
                        }
                    }
            })
            .collect();
        ready.sort_by_key(|out| match *out {
            Output::Init { rep } => (0, 0, rep),
            Output::Chunk { rep, number } => (1, number, rep),
        });
        Ok(ready)
    }
}

/// Aborts a spawned task when dropped, so an early return never leaves a stray probe running.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// ffmpeg's process group (it is spawned as the leader of a new one), killed as a whole on every early exit.
#[derive(Debug)]
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    /// SIGKILL to every process of the group, through `sh`'s builtin `kill` (the workspace forbids `unsafe`,
    /// so no libc call; `/bin/sh` exists wherever ffmpeg does). Only called before ffmpeg is reaped, so the id
    /// cannot have been reused by an unrelated group.
    fn kill(&mut self) {
        let Some(pgid) = self.0.take() else { return };
        let killed = std::process::Command::new("sh")
            .args(["-c", r#"kill -s KILL -- "-$1""#, "sh", &pgid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !killed.is_ok_and(|s| s.success()) {
            tracing::warn!(pgid, "could not kill ffmpeg's process group");
        }
    }

    /// ffmpeg exited and was reaped: nothing to kill any more.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // The transcode future was dropped mid-run (its caller went away): `kill_on_drop` takes the leader,
        // this takes anything it started.
        self.kill();
    }
}

/// Transcodes `input` into the DASH ladder in `out_dir` with one ffmpeg run (see [`ffmpeg_args_probed`]).
///
/// The source is probed first ([`super::probe_within`] `limits`: refusals are the same as the probe's), so
/// ffmpeg gets the probed container forced and its output capped to the probed duration. The whole run has the
/// wall-time limit of `limits.timeout` for that duration, counted from this call; past it ffmpeg's process
/// group is killed and the result is [`DashError::TooSlow`].
///
/// While ffmpeg runs, every `init-*.m4s` and `chunk-*.m4s` is sent on `done` (as `out_dir/name`) exactly once,
/// as soon as it is complete, so the caller can replicate segments while later ones are still being encoded.
/// `manifest.mpd` is sent last, once, after ffmpeg exited successfully and the output was validated: the
/// manifest exists, lists exactly the expected representations with the ladder's sizes (plus audio when the
/// source has it), every representation has its init segment and every chunk the manifest names (and no
/// others), no representation has more segments or a longer timeline than the source's duration allows, and
/// each video timeline covers the source. A run that starts more segments than the duration allows is killed.
///
/// `out_dir` is created if needed and must be empty (stale files would be sent as if they were new). On error,
/// whatever ffmpeg wrote stays in `out_dir` for the caller to remove along with what it already replicated.
///
/// Errors: [`DashError::Cancelled`] when `cancel` fires or `done`'s receiver is dropped; [`DashError::TooSlow`]
/// past the time limit; [`DashError::Ffmpeg`] when ffmpeg fails; [`DashError::Corrupt`] /
/// [`DashError::NotVideo`] / [`DashError::Limit`] when the source or the output does not hold up. In every
/// error case ffmpeg's process group is killed and ffmpeg reaped before this returns; dropping the future
/// kills them too. How far it is goes into `progress` as ffmpeg reports it.
#[allow(clippy::too_many_arguments)]
pub async fn transcode(
    input: &Path,
    out_dir: &Path,
    ladder: &[Rendition],
    opts: &TranscodeOptions,
    limits: &Limits,
    done: mpsc::Sender<PathBuf>,
    cancel: CancellationToken,
    progress: Arc<Progress>,
) -> Result<TranscodeReport, DashError> {
    let started = Instant::now();
    if ladder.is_empty() {
        return Err(DashError::Invalid("the ladder has no renditions".into()));
    }
    super::file_url(input)?;
    super::file_url(out_dir)?;
    prepare_out_dir(out_dir).await?;

    let detail = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(DashError::Cancelled),
        d = probe_detail(input, limits) => d?,
    };
    let limit = limits.timeout.for_duration(detail.probe.duration());
    progress.duration_us.store(
        detail.probe.duration().as_micros() as u64,
        Ordering::Relaxed,
    );
    let deadline = started + limit;

    let mut child = Command::new("ffmpeg")
        .args(ffmpeg_args_probed(
            input,
            out_dir,
            ladder,
            &detail.probe,
            opts,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|source| DashError::Spawn {
            program: "ffmpeg",
            source,
        })?;
    let mut group = ProcessGroup(child.id());
    // stdout carries the `-progress` reports; like stderr it is drained concurrently (a full pipe would
    // block ffmpeg), and the reader ends with the pipe or when the transcode is dropped.
    let _progress = child
        .stdout
        .take()
        .map(|o| AbortOnDrop(tokio::spawn(read_progress(o, progress))));
    // stderr is drained concurrently: a full pipe would block ffmpeg.
    let tail = child
        .stderr
        .take()
        .map(|e| AbortOnDrop(tokio::spawn(read_tail(e, STDERR_TAIL))));
    tracing::debug!(
        pid = child.id(), input = %input.display(), out = %out_dir.display(), limit_secs = limit.as_secs(),
        "ffmpeg started"
    );

    let mut run = Run {
        out_dir,
        ladder,
        opts,
        detail: &detail,
        watcher: Watcher::new(out_dir),
        files: Vec::new(),
        exited: false,
        started,
    };
    let outcome = tokio::time::timeout_at(
        deadline.into(),
        run.complete(&mut child, tail, &done, &cancel),
    )
    .await;
    let result = outcome.unwrap_or_else(|_| {
        tracing::warn!(limit_secs = limit.as_secs(), out = %out_dir.display(), "transcode over its time limit");
        Err(DashError::TooSlow { limit })
    });
    if run.exited {
        group.disarm();
    }
    if result.is_err() {
        // Kill *and reap*, so when this returns no ffmpeg of ours is left, not even as a zombie.
        group.kill();
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    result
}

/// The state of one ffmpeg run.
struct Run<'a> {
    out_dir: &'a Path,
    ladder: &'a [Rendition],
    opts: &'a TranscodeOptions,
    detail: &'a ProbeDetail,
    watcher: Watcher,
    files: Vec<String>,
    /// ffmpeg exited and was reaped.
    exited: bool,
    started: Instant,
}

impl Run<'_> {
    /// Streams files while ffmpeg runs, then checks the output and sends the rest and the manifest.
    async fn complete(
        &mut self,
        child: &mut Child,
        tail: Option<AbortOnDrop<String>>,
        done: &mpsc::Sender<PathBuf>,
        cancel: &CancellationToken,
    ) -> Result<TranscodeReport, DashError> {
        let seg = f64::from(self.opts.segment_secs.max(1));
        let duration = self.detail.probe.duration();
        let max_segments =
            ((duration + output_margin(duration)).as_secs_f64() / seg).ceil() as u64 + 1;
        let status = self.watch(child, done, cancel, max_segments).await?;
        self.exited = true;
        let ffmpeg_elapsed = self.started.elapsed();
        let stderr_tail = match tail {
            Some(mut t) => (&mut t.0).await.unwrap_or_default(),
            None => String::new(),
        };
        if !status.success() {
            return Err(DashError::Ffmpeg {
                status,
                stderr_tail,
            });
        }

        let remaining = self.watcher.scan(true).await?;
        let (representations, segments) = validate(
            self.out_dir,
            self.ladder,
            self.opts,
            self.detail,
            &self.watcher,
        )
        .await?;

        for out in remaining {
            send(done, self.out_dir.join(out.file_name()), cancel).await?;
            self.watcher.sent.insert(out);
            self.files.push(out.file_name());
        }
        send(done, self.out_dir.join(MANIFEST), cancel).await?;
        self.files.push(MANIFEST.to_owned());
        let elapsed = self.started.elapsed();
        tracing::debug!(
            files = self.files.len(),
            ?elapsed,
            ?ffmpeg_elapsed,
            "transcode done"
        );
        Ok(TranscodeReport {
            files: std::mem::take(&mut self.files),
            representations,
            segments,
            elapsed,
            ffmpeg_elapsed,
        })
    }

    /// Polls the output while ffmpeg runs and sends each finished file; returns ffmpeg's exit status. Fails
    /// (and the caller kills ffmpeg) once more segments have been started than `max_segments`.
    async fn watch(
        &mut self,
        child: &mut Child,
        done: &mpsc::Sender<PathBuf>,
        cancel: &CancellationToken,
        max_segments: u64,
    ) -> Result<ExitStatus, DashError> {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(DashError::Cancelled),
                status = child.wait() => {
                    return status.map_err(|e| DashError::io("waiting for ffmpeg", e));
                }
                _ = tick.tick() => {
                    for out in self.watcher.scan(false).await? {
                        send(done, self.watcher.dir.join(out.file_name()), cancel).await?;
                        self.watcher.sent.insert(out);
                        self.files.push(out.file_name());
                    }
                    if self.watcher.most_chunks > max_segments {
                        return Err(DashError::Corrupt(format!(
                            "the output runs longer than the {:.1} s source ({} segments started)",
                            self.detail.probe.duration_ms as f64 / 1000.0,
                            self.watcher.most_chunks
                        )));
                    }
                }
            }
        }
    }
}

async fn send(
    done: &mpsc::Sender<PathBuf>,
    path: PathBuf,
    cancel: &CancellationToken,
) -> Result<(), DashError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(DashError::Cancelled),
        sent = done.send(path) => sent.map_err(|_| DashError::Cancelled),
    }
}

/// Creates `dir` (the dash muxer does not) and insists it is empty.
async fn prepare_out_dir(dir: &Path) -> Result<(), DashError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| DashError::io(format!("cannot create {}", dir.display()), e))?;
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| DashError::io(format!("cannot list {}", dir.display()), e))?;
    let first = entries
        .next_entry()
        .await
        .map_err(|e| DashError::io(format!("cannot list {}", dir.display()), e))?;
    if let Some(entry) = first {
        return Err(DashError::Invalid(format!(
            "output directory {} is not empty (holds {})",
            dir.display(),
            entry.file_name().to_string_lossy()
        )));
    }
    Ok(())
}

/// Reads a pipe to the end, keeping only the last `cap` bytes, starting at a line boundary when cut.
async fn read_tail(mut r: ChildStderr, cap: usize) -> String {
    let mut buf = Vec::with_capacity(cap * 2);
    let mut chunk = [0u8; 4096];
    let mut cut = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > cap * 2 {
                    buf.drain(..buf.len() - cap);
                    cut = true;
                }
            }
        }
    }
    if buf.len() > cap {
        buf.drain(..buf.len() - cap);
        cut = true;
    }
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    if cut {
        if let Some(i) = s.find('\n') {
            s.drain(..=i);
        }
    }
    s.trim().to_owned()
}

/// Checks ffmpeg's output against the request and the source; returns (representations, media segments).
async fn validate(
    out_dir: &Path,
    ladder: &[Rendition],
    opts: &TranscodeOptions,
    detail: &ProbeDetail,
    watcher: &Watcher,
) -> Result<(usize, usize), DashError> {
    let has_audio = detail.probe.has_audio;
    if let Some(tmp) = watcher.partial.first() {
        return Err(DashError::Corrupt(format!(
            "ffmpeg exited but left the unfinished file {tmp}"
        )));
    }
    let manifest = out_dir.join(MANIFEST);
    let len = match tokio::fs::metadata(&manifest).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DashError::Corrupt("ffmpeg produced no manifest".into()))
        }
        Err(e) => {
            return Err(DashError::io(
                format!("cannot read {}", manifest.display()),
                e,
            ))
        }
    };
    if len > MAX_MANIFEST {
        return Err(DashError::Corrupt(format!(
            "the manifest is implausibly large ({len} bytes)"
        )));
    }
    let xml = tokio::fs::read_to_string(&manifest)
        .await
        .map_err(|e| DashError::io(format!("cannot read {}", manifest.display()), e))?;
    let reps = mpd::representations(&xml)
        .map_err(|e| DashError::Corrupt(format!("unreadable manifest: {e}")))?;

    let expected = ladder.len() + usize::from(has_audio);
    if reps.len() != expected {
        return Err(DashError::Corrupt(format!(
            "the manifest lists {} representations, expected {expected}",
            reps.len()
        )));
    }

    let seg = f64::from(opts.segment_secs.max(1));
    let video_secs = detail.video_duration_ms as f64 / 1000.0;
    let expected_video_segments = (video_secs / seg).ceil() as u64;
    let all_secs = detail.probe.duration_ms as f64 / 1000.0;
    // Source timing is kept, so a representation can have fewer segments than duration ÷ segment length (a
    // sparse source has one per frame at most) but never more, and never a longer timeline than the source.
    let margin = output_margin(detail.probe.duration()).as_secs_f64();
    let max_segments = ((all_secs + margin) / seg).ceil() as u64 + 1;
    let mut total = 0usize;

    for (i, rep) in reps.iter().enumerate() {
        let id = u32::try_from(i).map_err(|_| DashError::Invalid("too many renditions".into()))?;
        if rep.id != id.to_string() {
            return Err(DashError::Corrupt(format!(
                "representation #{i} has id {:?}, expected {id}",
                rep.id
            )));
        }
        match ladder.get(i) {
            Some(r)
                if rep.kind != "video"
                    || rep.width != Some(r.width)
                    || rep.height != Some(r.height) =>
            {
                return Err(DashError::Corrupt(format!(
                    "representation {id} is {} {:?}x{:?}, expected video {}x{}",
                    rep.kind, rep.width, rep.height, r.width, r.height
                )));
            }
            Some(_) => {}
            None if rep.kind != "audio" => {
                return Err(DashError::Corrupt(format!(
                    "representation {id} is {}, expected audio",
                    rep.kind
                )));
            }
            None => {}
        }
        if !watcher.present.contains(&Output::Init { rep: id }) {
            return Err(DashError::Corrupt(format!(
                "representation {id} has no init segment"
            )));
        }
        let on_disk: Vec<u64> = watcher
            .present
            .iter()
            .filter_map(|out| match *out {
                Output::Chunk { rep, number } if rep == id => Some(number),
                _ => None,
            })
            .collect();
        let count = rep.segments.unwrap_or(on_disk.len() as u64);
        if count == 0 {
            return Err(DashError::Corrupt(format!(
                "representation {id} has no segments (the source decoded to nothing)"
            )));
        }
        let wanted: Vec<u64> = (rep.start_number..rep.start_number + count).collect();
        if rep.start_number != 1 || on_disk != wanted {
            return Err(DashError::Corrupt(format!(
                "representation {id}: the manifest names {count} segments from {}, the directory holds {}",
                rep.start_number,
                on_disk.len()
            )));
        }
        if count > max_segments {
            return Err(DashError::Corrupt(format!(
                "representation {id} has {count} segments, more than {max_segments} for {all_secs:.1} s"
            )));
        }
        if let Some(end) = rep.timeline_end_secs {
            if end > all_secs + margin {
                return Err(DashError::Corrupt(format!(
                    "representation {id} runs {end:.1} s, longer than the {all_secs:.1} s source"
                )));
            }
        }
        if rep.kind == "video" {
            match rep.timeline_secs {
                // The timeline must cover the source within half a segment or 10 %, whichever is larger (a
                // truncated file decodes "successfully").
                Some(covered) => {
                    let slack = (seg / 2.0).max(video_secs * 0.1);
                    if covered + slack < video_secs {
                        return Err(DashError::Corrupt(format!(
                            "only {covered:.1} s of {video_secs:.1} s could be decoded (the file is truncated or \
                             damaged)"
                        )));
                    }
                }
                None if count + 1 < expected_video_segments => {
                    return Err(DashError::Corrupt(format!(
                        "representation {id} has {count} segments, expected about {expected_video_segments} for \
                         {video_secs:.1} s of video"
                    )));
                }
                None => {}
            }
        }
        total += on_disk.len();
    }
    let extra = watcher
        .present
        .iter()
        .find(|out| out.rep() as usize >= expected);
    if let Some(out) = extra {
        return Err(DashError::Corrupt(format!(
            "unexpected output file {}",
            out.file_name()
        )));
    }
    Ok((reps.len(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_out_time_and_stays_below_100() {
        let p = Progress::default();
        assert_eq!(p.percent(), None, "nothing known yet");
        p.duration_us.store(20_000_000, Ordering::Relaxed);
        p.note("out_time_us=N/A");
        assert_eq!(p.percent(), None, "ffmpeg says N/A before the first frame");
        p.note("out_time_us=5000000");
        assert_eq!(p.percent(), Some(25.0));
        // Never back, whatever a line says; junk is ignored.
        for line in [
            "out_time_us=1000",
            "out_time_us=-5",
            "out_time_us=",
            "bitrate=100kbits/s",
            "progress=continue",
        ] {
            p.note(line);
        }
        assert_eq!(p.percent(), Some(25.0));
        // The output may run a little past the probed length: still not 100 until the files are stored.
        p.note("out_time_us=21000000");
        assert_eq!(p.percent(), Some(99.0));
    }

    /// ffmpeg's `-progress` stream, read as a child writes it: lines cut anywhere, an overlong line skipped
    /// without growing the buffer, and the last complete `out_time_us` kept.
    #[tokio::test]
    async fn progress_is_read_from_a_child_pipe() {
        let long = "x".repeat(10 * PROGRESS_LINE);
        let script = format!(
            "printf 'frame=1\\nout_time_us=1000000\\n{long}out_time_us=9000000\\nout_time_us=3000000\\nprogress=end\\n'"
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let progress = Arc::new(Progress::default());
        progress.duration_us.store(10_000_000, Ordering::Relaxed);
        let out = child.stdout.take().expect("stdout");
        read_progress(out, progress.clone()).await;
        let _ = child.wait().await;
        // The overlong line (with the 9 s inside it) is skipped; 3 s is the furthest complete report.
        assert_eq!(progress.percent(), Some(30.0));
    }

    #[test]
    fn output_names_round_trip() {
        assert_eq!(
            Output::parse("init-0.m4s"),
            Some((Output::Init { rep: 0 }, false))
        );
        assert_eq!(
            Output::parse("chunk-3-00012.m4s.tmp"),
            Some((Output::Chunk { rep: 3, number: 12 }, true))
        );
        assert_eq!(
            Output::parse("chunk-1-123456.m4s"),
            Some((
                Output::Chunk {
                    rep: 1,
                    number: 123_456
                },
                false
            ))
        );
        for bad in [
            "manifest.mpd",
            "init-.m4s",
            "init-01.m4s",
            "chunk-0-1.m4s",
            "chunk-0-00001.mp4",
            "chunk--00001.m4s",
            "chunk-0-0000a.m4s",
            "init-99999999999.m4s",
        ] {
            assert_eq!(Output::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn completion_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let touch = |name: &str| std::fs::write(dir.path().join(name), b"x").expect("write");
        let mut w = Watcher::new(dir.path());

        // In-place writer: nothing is complete until something later exists.
        touch("init-0.m4s");
        assert!(w.scan(false).await.expect("scan").is_empty());
        touch("chunk-0-00001.m4s");
        assert_eq!(
            w.scan(false).await.expect("scan"),
            [Output::Init { rep: 0 }]
        );
        w.sent.insert(Output::Init { rep: 0 });
        touch("chunk-0-00002.m4s");
        assert_eq!(
            w.scan(false).await.expect("scan"),
            [Output::Chunk { rep: 0, number: 1 }]
        );
        w.sent.insert(Output::Chunk { rep: 0, number: 1 });

        // Once a .tmp shows the rename protocol, final names are complete at once.
        touch("chunk-0-00003.m4s.tmp");
        assert_eq!(
            w.scan(false).await.expect("scan"),
            [Output::Chunk { rep: 0, number: 2 }]
        );
        w.sent.insert(Output::Chunk { rep: 0, number: 2 });
        assert!(w.scan(false).await.expect("scan").is_empty());

        // After exit, everything left is complete.
        touch("init-1.m4s");
        assert_eq!(w.scan(true).await.expect("scan"), [Output::Init { rep: 1 }]);
        assert_eq!(w.partial, ["chunk-0-00003.m4s.tmp"]);
    }
}
