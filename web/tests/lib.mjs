// Shared pieces of the browser tests: launching Debian's Chromium through playwright-core, collecting what the
// page complains about, and playing a Distributary watch page until the video really advances.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** Launches Chromium with a fresh user-data dir; `close()` stops it and removes the dir. */
export async function launch() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'distributary-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 800 },
    });
  } catch (e) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw new Error(`cannot launch ${CHROMIUM} (install it with: apt-get install -y chromium chromium-driver): ${e.message}`);
  }
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}

/** Records console errors, uncaught exceptions, failed requests and HTTP errors of `page` into `sink`. */
export function watchPage(page, sink) {
  page.on('console', (m) => {
    if (m.type() === 'error') sink.push(`console.error: ${m.text()}`);
  });
  page.on('pageerror', (e) => sink.push(`uncaught: ${e.message}`));
  page.on('requestfailed', (r) => {
    const why = r.failure() ? r.failure().errorText : 'failed';
    // Media requests cancelled by the player (seeking, quality switches) are not errors.
    if (why !== 'net::ERR_ABORTED') sink.push(`request failed: ${r.method()} ${r.url()} (${why})`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) sink.push(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`);
  });
}

/** Percent-encodes one path segment the way the server does (RFC 3986 unreserved characters kept). */
export function encodeSegment(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

/** A CSS string literal for attribute selectors. */
export function cssString(s) {
  return '"' + String(s).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\a ') + '"';
}

/**
 * On a loaded watch page: starts muted playback, waits until `currentTime > minTime`, and returns what the page
 * offers (quality options, the representation playing). Throws with the page's own error message if the player
 * reports one.
 */
export async function playWatchPage(page, { timeoutMs = 60_000, minTime = 2 } = {}) {
  const deadline = Date.now() + timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  await page.waitForSelector('video#player', { timeout: left() });
  // dash.js attaches a MediaSource (a blob: URL) once the manifest is parsed; play only then.
  await page.waitForFunction(
    () => {
      const err = document.getElementById('player-error');
      if (err && !err.hidden) return true;
      const v = document.querySelector('video');
      return !!(v && v.src && v.src.startsWith('blob:'));
    },
    null,
    { timeout: left(), polling: 100 },
  );
  await throwIfPlayerError(page);
  const started = Date.now();
  await page.evaluate(() => {
    const v = document.querySelector('video');
    v.muted = true;
    window.__playError = null;
    v.play().catch((e) => { window.__playError = String(e); });
  });
  // Nudge again if the first play() was refused while nothing was buffered.
  const nudge = setInterval(() => {
    page.evaluate(() => {
      const v = document.querySelector('video');
      if (v && v.paused && !v.ended) v.play().catch(() => {});
    }).catch(() => {});
  }, 2000);
  try {
    await page.waitForFunction(
      (t) => {
        const err = document.getElementById('player-error');
        if (err && !err.hidden) return true;
        return document.querySelector('video').currentTime > t;
      },
      minTime,
      { timeout: left(), polling: 100 },
    );
  } catch (e) {
    const state = await page.evaluate(() => {
      const v = document.querySelector('video');
      return { currentTime: v.currentTime, readyState: v.readyState, paused: v.paused, networkState: v.networkState,
        mediaError: v.error ? `${v.error.code} ${v.error.message}` : null, playError: window.__playError };
    }).catch(() => null);
    throw new Error(`video.currentTime did not pass ${minTime} s: ${JSON.stringify(state)}`);
  } finally {
    clearInterval(nudge);
  }
  await throwIfPlayerError(page);
  const playMs = Date.now() - started;
  // The selector is filled when the stream is initialised, which is before playback starts.
  const qualities = await page.$$eval('#quality option', (os) => os.map((o) => ({ value: o.value, label: o.textContent })));
  const info = await page.evaluate(() => {
    const v = document.querySelector('video');
    return {
      currentTime: v.currentTime,
      videoWidth: v.videoWidth,
      videoHeight: v.videoHeight,
      currentQuality: document.getElementById('current-quality').textContent,
      manifest: v.getAttribute('data-manifest'),
    };
  });
  return { ...info, qualities, playMs };
}

async function throwIfPlayerError(page) {
  const text = await page.evaluate(() => {
    const err = document.getElementById('player-error');
    return err && !err.hidden ? err.textContent : null;
  });
  if (text) throw new Error(`the watch page reports: ${text}`);
}

/** Chooses the quality option `value` and waits until the player renders that representation. */
export async function chooseQuality(page, value, { timeoutMs = 30_000 } = {}) {
  await page.selectOption('#quality', value);
  const label = await page.$eval(`#quality option[value=${cssString(value)}]`, (o) => o.textContent);
  await page.waitForFunction(
    (l) => document.getElementById('current-quality').textContent.includes(l),
    label,
    { timeout: timeoutMs, polling: 100 },
  );
  return label;
}

/** dash.js as `npm ci --prefix web` installs it. */
export function dashJsPath() {
  return fileURLToPath(new URL('../node_modules/dashjs/dist/modern/umd/dash.all.min.js', import.meta.url));
}

/**
 * Writes a test DASH stream into `dir` (created if needed) with ffmpeg: lavfi test pattern and tone, two H.264
 * renditions (640x360 at 800 kb/s, 320x180 at 250 kb/s) and AAC audio, 2-second segments, files named as the
 * broadcaster serves them (manifest.mpd, init-{rep}.m4s, chunk-{rep}-{n:05}.m4s; representation 0 is video), and a
 * poster.jpg. Returns the file names and the number of media segments.
 */
export function makeDashFixture(dir, { seconds = 10 } = {}) {
  mkdirSync(dir, { recursive: true }); // the dash muxer does not create its output directory
  const ff = spawnSync('ffmpeg', [
    '-hide_banner', '-loglevel', 'error', '-y',
    '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=25',
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-t', String(seconds),
    '-map', '0:v', '-map', '0:v', '-map', '1:a',
    '-c:v', 'libx264', '-preset', 'veryfast', '-pix_fmt', 'yuv420p', '-profile:v', 'main',
    '-g', '50', '-keyint_min', '50', '-sc_threshold', '0',
    '-filter:v:0', 'scale=640:360', '-b:v:0', '800k',
    '-filter:v:1', 'scale=320:180', '-b:v:1', '250k',
    '-c:a', 'aac', '-b:a', '96k',
    '-f', 'dash', '-seg_duration', '2', '-use_template', '1', '-use_timeline', '0',
    '-init_seg_name', 'init-$RepresentationID$.m4s',
    '-media_seg_name', 'chunk-$RepresentationID$-$Number%05d$.m4s',
    '-adaptation_sets', 'id=0,streams=v id=1,streams=a',
    join(dir, 'manifest.mpd'),
  ], { encoding: 'utf8' });
  if (ff.error) throw new Error(`cannot run ffmpeg (apt-get install -y ffmpeg): ${ff.error.message}`);
  if (ff.status !== 0) throw new Error(`ffmpeg failed: ${ff.stderr}`);
  const poster = spawnSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi',
    '-i', 'testsrc2=size=640x360', '-frames:v', '1', join(dir, 'poster.jpg')], { encoding: 'utf8' });
  if (poster.status !== 0) throw new Error(`ffmpeg (poster) failed: ${poster.stderr}`);
  const files = readdirSync(dir).sort();
  return { files, segments: files.filter((f) => f.startsWith('chunk-')).length };
}
