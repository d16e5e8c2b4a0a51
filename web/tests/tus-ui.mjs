#!/usr/bin/env node
// Resumable uploads from the index page in headless Chromium, against a real broadcaster (with a dash reader):
// the page's script uploads with tus-js-client to /uploads, and this test breaks the upload on purpose.
//
//   drop    the network is cut part way through the PATCH, twice: once while the browser thinks it is online
//           (tus-js-client retries after its retryDelays), once offline (context.setOffline: the page waits
//           for the `online` event). Each resume must start from the offset the server kept, never from zero.
//   reload  the page is reloaded part way; it then lists the unfinished upload, and choosing the same file
//           offers and does the resume (tus-js-client's stored fingerprint), without creating a new upload.
//   cancel  Cancel part way: DELETE /uploads/{id} answers 204, the upload is gone (HEAD 404), nothing is left
//           in localStorage.
//   nojs    the same page with JavaScript disabled: the plain multipart form to POST /upload still works.
// Then the "drop" video is opened from the list and played until currentTime advances (as watch.mjs does).
//
// The cut: Chromium's offline emulation (context.setOffline) fails only new requests, and page.route can only
// refuse a request before any of its body is sent, so neither stops a PATCH part way. The page is therefore
// loaded through a TCP relay in this script that can drop every connection at once (and refuse new ones until
// restored); uploads are paced with Chromium's upload throttling (CDP Network.emulateNetworkConditions) so
// that "part way" is a few seconds long.
//
// Usage: node web/tests/tus-ui.mjs BASE_URL [--token TOKEN] [--prefix ID_PREFIX] [--only drop,reload,cancel,nojs]
//   --token     a token with the upload and read rights: the test signs in with it on /signin first (cookie).
//   --prefix    video ids are PREFIX-drop, PREFIX-reload, ... (default "tus").
// Environment: TUS_UI_THROTTLE (upload bytes/s while cutting, default 1048576), TUS_UI_READY_TIMEOUT_MS (upload
//   + transcode, default 300000), CHROMIUM_PATH, WEB_SCREENSHOT_DIR (index.png, and failure.png on failure).
// Needs ffmpeg (the clips are made here), /usr/bin/chromium, `npm ci --prefix web`.
// Prints one JSON line: ok, and per video its id, name, size, sha256, upload URL and the offsets seen; exit 0 on
// success, 1 with the reason, the step and the page's errors on failure.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, cssString, encodeSegment, playWatchPage, watchPage } from './lib.mjs';

const args = process.argv.slice(2);
const base = args.find((a, i) => !a.startsWith('--') && (i === 0 || !args[i - 1].startsWith('--')));
function option(name, fallback) {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
}
if (!base) {
  console.error('usage: node web/tests/tus-ui.mjs BASE_URL [--token TOKEN] [--prefix ID_PREFIX] [--only drop,reload,cancel,nojs]');
  process.exit(2);
}
const token = option('token', process.env.TUS_UI_TOKEN || '');
const prefix = option('prefix', 'tus');
const only = new Set(option('only', 'drop,reload,cancel,nojs').split(','));
const THROTTLE = Number(process.env.TUS_UI_THROTTLE || 1 << 20);
const READY_TIMEOUT = Number(process.env.TUS_UI_READY_TIMEOUT_MS || 300_000);
const upstream = new URL(base);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An ffmpeg clip: `seconds` of test pattern and tone, H.264/AAC MP4 at about 5 Mb/s (index at the end). */
function makeClip(path, seconds, frequency) {
  const ff = spawnSync('ffmpeg', [
    '-hide_banner', '-loglevel', 'error', '-y',
    '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=25',
    '-f', 'lavfi', '-i', `sine=frequency=${frequency}:sample_rate=48000`,
    '-t', String(seconds),
    '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-b:v', '5M', '-maxrate', '5M', '-bufsize', '2M',
    '-c:a', 'aac', '-b:a', '96k', path,
  ], { encoding: 'utf8' });
  if (ff.error) throw new Error(`cannot run ffmpeg (apt-get install -y ffmpeg): ${ff.error.message}`);
  if (ff.status !== 0) throw new Error(`ffmpeg failed: ${ff.stderr}`);
  const data = readFileSync(path);
  return { path, size: data.length, sha256: createHash('sha256').update(data).digest('hex') };
}

/**
 * A TCP relay to the broadcaster. `cut()` drops every open connection (RST) and refuses new ones until
 * `restore()`: for the browser, the network is gone.
 */
async function startRelay(host, port) {
  const open = new Set();
  let down = false;
  let cuts = 0;
  const server = net.createServer((client) => {
    if (down) {
      client.resetAndDestroy();
      return;
    }
    const up = net.connect(port, host);
    open.add(client);
    open.add(up);
    const close = () => {
      client.destroy();
      up.destroy();
      open.delete(client);
      open.delete(up);
    };
    client.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
    client.pipe(up);
    up.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      down = true;
      cuts++;
      for (const s of open) s.resetAndDestroy();
      open.clear();
    },
    restore() { down = false; },
    get cuts() { return cuts; },
    close: () => new Promise((resolve) => {
      for (const s of open) s.destroy();
      server.close(() => resolve());
    }),
  };
}

const work = mkdtempSync(join(tmpdir(), 'distributary-tus-ui-'));
const problems = [];
const results = {};
const uploadsLog = []; // every request to /uploads: { t, method, path, offset, status, responseOffset }
// Console errors about /favicon.ico: the sign-in page links no icon, so Chromium asks for /favicon.ico, which
// answers 401 before the cookie exists. Reported, not failed on (the broadcaster's sign-in page, not this page).
const faviconErrors = [];

function noteFavicon(p) {
  p.on('console', (m) => {
    if (m.type() === 'error' && /\/favicon\.ico$/.test(m.location().url || '')) faviconErrors.push(`console.error: ${m.text()}`);
  });
}
let step = 'make clips';
let browser;
let relay;
let page;
const t0 = Date.now();

function logUploads(p) {
  p.on('request', (r) => {
    const u = new URL(r.url());
    if (!u.pathname.startsWith('/uploads')) return;
    const entry = { t: Date.now() - t0, method: r.method(), path: u.pathname, offset: r.headers()['upload-offset'] ?? null,
      status: null, responseOffset: null };
    uploadsLog.push(entry);
    r.response().then((res) => {
      if (!res) return;
      entry.status = res.status();
      entry.responseOffset = res.headers()['upload-offset'] ?? null;
    }).catch(() => {});
    r.__entry = entry;
  });
  p.on('requestfailed', (r) => {
    if (r.__entry) r.__entry.failed = r.failure() ? r.failure().errorText : 'failed';
  });
}

/** Paces uploads to `bps` bytes/s (-1: no limit). */
async function throttle(cdp, bps) {
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bps });
}

async function progress() {
  return page.evaluate(() => {
    const bar = document.getElementById('upload-progress');
    return bar.hasAttribute('value') ? bar.value : 100;
  });
}

async function waitProgress(min, timeout = 60_000) {
  await page.waitForFunction((m) => {
    const bar = document.getElementById('upload-progress');
    const err = document.getElementById('upload-error');
    return (err && !err.hidden) || !bar.hasAttribute('value') || bar.value >= m;
  }, min, { timeout, polling: 50 });
  await throwIfUploadError();
}

async function throwIfUploadError() {
  const text = await page.evaluate(() => {
    const err = document.getElementById('upload-error');
    return err && !err.hidden ? err.textContent : null;
  });
  if (text) throw new Error(`the upload form reports: ${text}`);
}

/** Waits until `id` is listed as ready (the page refreshes its list itself after the upload). */
async function waitReady(id) {
  const row = page.locator(`tr.video[data-status="ready"][data-video-id=${cssString(id)}] a`);
  const error = page.locator('#upload-error:not([hidden])');
  const outcome = await Promise.race([
    row.waitFor({ timeout: READY_TIMEOUT }).then(() => 'ready'),
    error.waitFor({ timeout: READY_TIMEOUT }).then(() => 'error'),
  ]);
  if (outcome === 'error') throw new Error(`the upload form reports: ${await error.textContent()}`);
  const message = await page.textContent('#upload-message');
  if (!/Ready/.test(message)) throw new Error(`the page lists ${id} as ready but says: ${message}`);
  return row;
}

function patchesSince(n) {
  return uploadsLog.slice(n).filter((e) => e.method === 'PATCH');
}

async function signIn(p, root) {
  await p.goto(`${root}/signin`, { waitUntil: 'load' });
  await p.fill('input[name=token]', token);
  await Promise.all([p.waitForURL(`${root}/`, { timeout: 10_000 }), p.click('[type=submit]')]);
}

try {
  const clips = {
    drop: makeClip(join(work, `${prefix}-drop.mp4`), 8, 440),
    reload: makeClip(join(work, `${prefix}-reload.mp4`), 8, 550),
    cancel: makeClip(join(work, `${prefix}-cancel.mp4`), 8, 660),
    nojs: makeClip(join(work, `${prefix}-nojs.mp4`), 4, 770),
  };

  step = 'start the relay and chromium';
  relay = await startRelay(upstream.hostname, Number(upstream.port || 80));
  const root = relay.url;
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  } catch (e) {
    throw new Error(`cannot launch ${CHROMIUM} (install it with: apt-get install -y chromium chromium-driver): ${e.message}`);
  }
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  watchPage(page, problems);
  noteFavicon(page);
  logUploads(page);
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`); });
  // Leaving the page during an upload asks for confirmation (beforeunload): the reload variant says yes.
  page.on('dialog', (d) => d.accept().catch(() => {}));
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');

  if (token) {
    step = 'sign in';
    await signIn(page, root);
  }

  step = 'open /';
  const index = await page.goto(`${root}/`, { waitUntil: 'load' });
  if (!index || index.status() !== 200) throw new Error(`GET / answered ${index && index.status()}`);
  const ready = await page.evaluate(() => ({
    tus: typeof window.tus === 'object' && window.tus.isSupported === true,
    hint: !document.getElementById('upload-resumable-hint').hidden,
    endpoint: document.getElementById('upload-form').getAttribute('data-resumable'),
  }));
  if (!ready.tus) throw new Error('tus-js-client did not load from /assets/tus.min.js');
  if (!ready.hint || ready.endpoint !== '/uploads') throw new Error(`the page does not offer resumable uploads: ${JSON.stringify(ready)}`);
  if (process.env.WEB_SCREENSHOT_DIR) await page.screenshot({ path: join(process.env.WEB_SCREENSHOT_DIR, 'index.png'), fullPage: true });

  if (only.has('drop')) {
    const clip = clips.drop;
    const id = `${prefix}-drop`;
    step = 'drop: start the upload';
    await throttle(cdp, THROTTLE);
    const mark = uploadsLog.length;
    await page.setInputFiles('#upload-file', clip.path);
    await page.click('#upload-button');
    await waitProgress(25);
    if (await page.isHidden('#upload-cancel')) throw new Error('no Cancel button during the upload');
    const bytesText = await page.textContent('#upload-bytes');
    if (!/MiB of .*MiB/.test(bytesText)) throw new Error(`the page does not show the bytes sent: "${bytesText}"`);

    step = 'drop: cut the network while online';
    const firstCutAt = await progress();
    relay.cut();
    await sleep(2000); // tus-js-client retries after 0 s and 1 s (refused), then after 3 s more
    relay.restore();
    await page.waitForFunction(() => /retrying|Reconnect|Resumed|Uploading/.test(document.getElementById('upload-message').textContent), null, { timeout: 10_000 });
    await waitProgress(firstCutAt + 15);

    step = 'drop: go offline part way';
    const secondCutAt = await progress();
    await context.setOffline(true);
    relay.cut();
    await page.waitForFunction(() => /Connection lost/.test(document.getElementById('upload-message').textContent), null, { timeout: 10_000 });
    const offlineMessage = await page.textContent('#upload-message');
    await sleep(1500);
    relay.restore();
    await context.setOffline(false); // fires `online`: the page resumes by itself

    step = 'drop: wait until ready';
    const url = await page.getAttribute('#upload-form', 'data-upload-url').catch(() => null);
    await waitReady(id);
    const patches = patchesSince(mark);
    const creations = uploadsLog.slice(mark).filter((e) => e.method === 'POST');
    const offsets = patches.map((p) => Number(p.offset));
    if (creations.length !== 1) throw new Error(`expected one creation, saw ${JSON.stringify(creations)}`);
    if (patches.length < 3) throw new Error(`expected a PATCH and two resumed ones, saw ${JSON.stringify(patches)}`);
    if (offsets[0] !== 0) throw new Error(`the first PATCH starts at ${offsets[0]}`);
    const resumed = offsets.slice(1);
    if (resumed.some((o) => !(o > 0))) throw new Error(`a resume started from zero: PATCH offsets ${offsets.join(', ')}`);
    for (let i = 1; i < offsets.length; i++) {
      if (offsets[i] < offsets[i - 1]) throw new Error(`the offset went back: PATCH offsets ${offsets.join(', ')}`);
    }
    const last = patches[patches.length - 1];
    if (last.status !== 204) throw new Error(`the final PATCH answered ${last.status}`);
    results.drop = { id, name: `${id}.mp4`, size: clip.size, sha256: clip.sha256, uploadUrl: url,
      cutAtPercent: [firstCutAt, secondCutAt], patchOffsets: offsets, offlineMessage,
      heads: uploadsLog.slice(mark).filter((e) => e.method === 'HEAD').map((e) => ({ status: e.status, offset: e.responseOffset, failed: e.failed })) };
  }

  if (only.has('reload')) {
    const clip = clips.reload;
    const id = `${prefix}-reload`;
    step = 'reload: start the upload';
    await throttle(cdp, THROTTLE);
    await page.setInputFiles('#upload-file', clip.path);
    await page.click('#upload-button');
    await waitProgress(35);
    const url = await page.getAttribute('#upload-form', 'data-upload-url');
    if (!url) throw new Error('the page did not expose the upload URL');
    const cutAt = await progress();

    step = 'reload: reload the page part way';
    await page.reload({ waitUntil: 'load' });
    const offer = page.locator(`#upload-unfinished li[data-filename=${cssString(`${id}.mp4`)}]`);
    await offer.waitFor({ timeout: 10_000 });
    await page.waitForFunction((n) => {
      const li = [...document.querySelectorAll('#upload-unfinished li')].find((l) => l.getAttribute('data-filename') === n);
      return li && /uploaded/.test(li.textContent);
    }, `${id}.mp4`, { timeout: 10_000 });
    const offerText = (await offer.textContent()).trim();

    step = 'reload: choose the same file';
    const mark = uploadsLog.length;
    await page.setInputFiles('#upload-file', clip.path);
    await page.waitForSelector('#upload-resume:not([hidden])', { timeout: 10_000 });
    const resumeNote = await page.textContent('#upload-resume');
    const button = (await page.textContent('#upload-button')).trim();
    if (button !== 'Resume upload') throw new Error(`the button says "${button}"`);
    await throttle(cdp, -1);
    await page.click('#upload-button');

    step = 'reload: wait until ready';
    await waitReady(id);
    const after = uploadsLog.slice(mark);
    if (after.some((e) => e.method === 'POST')) throw new Error(`a new upload was created instead of resuming: ${JSON.stringify(after)}`);
    const patches = after.filter((e) => e.method === 'PATCH');
    if (patches.length === 0 || !(Number(patches[0].offset) > 0)) {
      throw new Error(`the resumed upload did not continue from the server's offset: ${JSON.stringify(after)}`);
    }
    if (new URL(patches[0].path, root).href !== url) throw new Error(`resumed ${patches[0].path}, not ${url}`);
    results.reload = { id, name: `${id}.mp4`, size: clip.size, sha256: clip.sha256, uploadUrl: url, cutAtPercent: cutAt,
      resumedAt: Number(patches[0].offset), offer: offerText, resumeNote };
  }

  if (only.has('cancel')) {
    const clip = clips.cancel;
    const id = `${prefix}-cancel`;
    step = 'cancel: start the upload';
    await throttle(cdp, THROTTLE);
    const mark = uploadsLog.length;
    await page.setInputFiles('#upload-file', clip.path);
    await page.click('#upload-button');
    await waitProgress(20);
    const url = await page.getAttribute('#upload-form', 'data-upload-url');

    step = 'cancel: press Cancel';
    await page.click('#upload-cancel');
    await page.waitForSelector('#upload-error:not([hidden])', { timeout: 30_000 });
    const message = await page.textContent('#upload-error');
    if (!/cancelled/i.test(message)) throw new Error(`after Cancel the page says: ${message}`);
    if (!(await page.isHidden('#upload-status'))) throw new Error('the progress is still shown after Cancel');
    if (await page.isDisabled('#upload-button')) throw new Error('the button stays disabled after Cancel');
    await sleep(300);
    const deletes = uploadsLog.slice(mark).filter((e) => e.method === 'DELETE');
    if (deletes.length !== 1 || deletes[0].status !== 204) throw new Error(`DELETE: ${JSON.stringify(deletes)}`);
    const head = await context.request.fetch(url, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' } });
    if (head.status() !== 404) throw new Error(`HEAD of the cancelled upload answered ${head.status()}`);
    const stored = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('tus::')));
    if (stored.length) throw new Error(`localStorage still has ${stored.join(', ')}`);
    const listed = await page.locator(`tr.video[data-video-id=${cssString(id)}]`).count();
    if (listed) throw new Error(`the cancelled ${id} is listed`);
    results.cancel = { id, name: `${id}.mp4`, uploadUrl: url, message: message.trim(), deleteStatus: deletes[0].status,
      headAfter: head.status() };
    await throttle(cdp, -1);
  }

  if (only.has('drop')) {
    step = 'play the dropped-and-resumed video';
    const id = `${prefix}-drop`;
    await page.goto(`${root}/`, { waitUntil: 'load' });
    const link = page.locator(`tr.video[data-status="ready"][data-video-id=${cssString(id)}] a`);
    await link.waitFor({ timeout: 10_000 });
    const href = `/videos/${encodeSegment(id)}`;
    await Promise.all([page.waitForURL(`${root}${href}`, { timeout: 30_000 }), link.click()]);
    const played = await playWatchPage(page, { timeoutMs: 60_000 });
    results.drop.played = { currentTime: played.currentTime, qualities: played.qualities.length, videoHeight: played.videoHeight };
  }

  if (only.has('nojs')) {
    step = 'nojs: the plain form';
    const clip = clips.nojs;
    const id = `${prefix}-nojs`;
    const plain = await browser.newContext({ javaScriptEnabled: false });
    try {
      const p = await plain.newPage();
      watchPage(p, problems);
      noteFavicon(p);
      if (token) await signIn(p, root);
      await p.goto(`${root}/`, { waitUntil: 'load' });
      if (!(await p.isHidden('#upload-cancel')) || !(await p.isHidden('#upload-status'))) {
        throw new Error('without JavaScript the page shows controls that need it');
      }
      await p.setInputFiles('form[action="/upload"] input[type=file][name=file]', clip.path);
      const [resp] = await Promise.all([
        p.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/upload', { timeout: READY_TIMEOUT }),
        p.click('form[action="/upload"] [type=submit]'),
      ]);
      if (resp.status() !== 303) throw new Error(`POST /upload answered ${resp.status()}: ${await resp.text().catch(() => '')}`);
      await p.waitForURL(`${root}/`, { timeout: 30_000 });
      await p.locator(`tr.video[data-status="ready"][data-video-id=${cssString(id)}] a`).waitFor({ timeout: 10_000 });
      results.nojs = { id, name: `${id}.mp4`, size: clip.size, sha256: clip.sha256, status: resp.status() };
    } finally {
      await plain.close();
    }
  }

  step = 'check the page errors';
  // Expected: requests to /uploads cut by the relay or refused while offline (and Chromium's console line for
  // each), and the favicon of the sign-in page. Anything else (an HTTP error, a CSP violation, an exception)
  // fails the test.
  const favicon = [...faviconErrors];
  const unexpected = problems.filter((p) => !(
    (favicon.includes(p) && favicon.splice(favicon.indexOf(p), 1)) ||
    /^request failed: (PATCH|HEAD|POST|DELETE) [^ ]*\/uploads(\/[0-9a-f]+)? \(net::ERR_/.test(p) ||
    /^console\.error: Failed to load resource: net::ERR_(INTERNET_DISCONNECTED|CONNECTION_(RESET|CLOSED|REFUSED|ABORTED)|SOCKET_NOT_CONNECTED|EMPTY_RESPONSE)$/.test(p)
  ));
  if (unexpected.length) throw new Error(unexpected.join('; '));
  console.log(JSON.stringify({ ok: true, relayCuts: relay.cuts, ms: Date.now() - t0, ...results, uploads: uploadsLog, pageErrors: problems,
    faviconErrors }));
} catch (e) {
  if (page && process.env.WEB_SCREENSHOT_DIR) {
    await page.screenshot({ path: join(process.env.WEB_SCREENSHOT_DIR, 'failure.png'), fullPage: true }).catch(() => {});
  }
  const pageState = page ? await page.evaluate(() => ({
    message: document.getElementById('upload-message')?.textContent,
    error: document.getElementById('upload-error')?.textContent,
    bytes: document.getElementById('upload-bytes')?.textContent,
  })).catch(() => null) : null;
  console.log(JSON.stringify({ ok: false, step, error: e.message, pageState, ...results, uploads: uploadsLog, pageErrors: problems }));
  console.error(`tus-ui.mjs failed at "${step}": ${e.message}`);
  for (const p of problems) console.error(`  page: ${p}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
  if (relay) await relay.close();
  rmSync(work, { recursive: true, force: true });
}
