#!/usr/bin/env node
// Browser test of a video watched while it is still being transcoded: wait until the index links ID while its
// row still says `processing`, follow the link, check the watch page says it is still processing, and play it
// muted until video.currentTime > MIN_TIME seconds (default 2), failing on any page error.
// Usage: node web/tests/watch-processing.mjs BASE_URL ID [MIN_TIME]
// Environment: WATCHABLE_TIMEOUT_MS (until the index links the video, default 120000), PLAY_TIMEOUT_MS (60000).
// Prints one JSON line (linkedMs: from start until the index linked it; playMs: from play() to MIN_TIME;
// playedAtMs: Unix time in ms when playback passed MIN_TIME);
// exit 0 on success, 1 with the reason and the page's errors on failure.
import { launch, watchPage, encodeSegment, cssString, playWatchPage } from './lib.mjs';

const [base, id, minArg] = process.argv.slice(2);
if (!base || !id) {
  console.error('usage: node web/tests/watch-processing.mjs BASE_URL ID [MIN_TIME]');
  process.exit(2);
}
const minTime = Number(minArg || 2);
const watchableTimeout = Number(process.env.WATCHABLE_TIMEOUT_MS || 120_000);
const playTimeout = Number(process.env.PLAY_TIMEOUT_MS || 60_000);
const root = base.replace(/\/+$/, '');
const problems = [];
let step = 'launch chromium';
let browser;
try {
  const t0 = Date.now();
  browser = await launch();
  const page = browser.context.pages()[0] || (await browser.context.newPage());
  watchPage(page, problems);

  step = 'wait until the index links the processing video';
  const link = page.locator(`tr.video[data-status="processing"][data-video-id=${cssString(id)}] a`);
  const deadline = Date.now() + watchableTimeout;
  for (;;) {
    const index = await page.goto(`${root}/`, { waitUntil: 'load' });
    if (!index || index.status() !== 200) throw new Error(`GET / answered ${index && index.status()}`);
    if ((await link.count()) > 0) break;
    const ready = await page.locator(`tr.video[data-status="ready"][data-video-id=${cssString(id)}]`).count();
    if (ready > 0) throw new Error('the video became ready before the index ever linked it while processing');
    if (Date.now() > deadline) throw new Error(`not linked while processing within ${watchableTimeout} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
  const linkedMs = Date.now() - t0;
  const expected = `/videos/${encodeSegment(id)}`;
  if ((await link.getAttribute('href')) !== expected) throw new Error(`link is not ${expected}`);

  step = 'open the watch page';
  const watch = await page.goto(`${root}${expected}`, { waitUntil: 'load' });
  if (!watch || watch.status() !== 200) throw new Error(`GET ${expected} answered ${watch && watch.status()}`);
  const note = page.locator('#processing-note');
  if ((await note.count()) === 0) throw new Error('the watch page does not say the video is still processing');
  const noteText = await note.textContent();

  step = 'play while processing';
  const played = await playWatchPage(page, { timeoutMs: playTimeout, minTime });
  // When playback passed MIN_TIME, on this machine's clock: the caller compares it with when the video was ready.
  const playedAtMs = Date.now();
  console.log(JSON.stringify({ ok: true, id, linkedMs, playedAtMs, note: noteText, ...played, pageErrors: problems }));
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ ok: false, step, error: String(e && e.message || e), pageErrors: problems }));
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
