#!/usr/bin/env node
// End-to-end browser test of the Distributary web site with a real headless Chromium:
// open /, upload an MP4 through the form, wait until the list shows it ready, open its watch page, play it muted
// until video.currentTime > 2 s, and check the quality selector.
//
// Usage: node web/tests/play.mjs BASE_URL MP4_PATH EXPECTED_ID
//   e.g. node web/tests/play.mjs http://127.0.0.1:8080 /tmp/clip.mp4 clip
// Environment: PLAY_READY_TIMEOUT_MS (upload + transcode, default 300000), PLAY_TIMEOUT_MS (playback, 60000),
//   CHROMIUM_PATH (default /usr/bin/chromium), PLAY_SCREENSHOT_DIR (where a failure screenshot goes; default tmp).
// Prints one JSON line; exit 0 on success, 1 (with the reason and the page's console errors) on failure.
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launch, watchPage, encodeSegment, cssString, playWatchPage } from './lib.mjs';

const [base, mp4, id] = process.argv.slice(2);
if (!base || !mp4 || !id) {
  console.error('usage: node web/tests/play.mjs BASE_URL MP4_PATH EXPECTED_ID');
  process.exit(2);
}
if (!existsSync(mp4)) {
  console.error(`no such file: ${mp4}`);
  process.exit(2);
}
const readyTimeout = Number(process.env.PLAY_READY_TIMEOUT_MS || 300_000);
const playTimeout = Number(process.env.PLAY_TIMEOUT_MS || 60_000);
const root = base.replace(/\/+$/, '');

const problems = [];
let step = 'launch chromium';
let browser;
let page;
try {
  browser = await launch();
  page = browser.context.pages()[0] || (await browser.context.newPage());
  watchPage(page, problems);

  step = 'open /';
  const index = await page.goto(`${root}/`, { waitUntil: 'load' });
  if (!index || index.status() !== 200) throw new Error(`GET / answered ${index && index.status()}`);

  step = 'upload through the form';
  const t0 = Date.now();
  await page.setInputFiles('form[action="/upload"] input[type=file][name=file]', mp4);
  await page.click('form[action="/upload"] [type=submit]');

  step = 'wait for the video to be listed as ready';
  const readyLink = page.locator(`tr.video[data-status="ready"][data-video-id=${cssString(id)}] a`);
  const uploadError = page.locator('#upload-error:not([hidden])');
  const outcome = await Promise.race([
    readyLink.waitFor({ timeout: readyTimeout }).then(() => 'ready'),
    uploadError.waitFor({ timeout: readyTimeout }).then(() => 'error'),
  ]);
  if (outcome === 'error') throw new Error(`the upload form reports: ${await uploadError.textContent()}`);
  const uploadMs = Date.now() - t0;
  const href = await readyLink.getAttribute('href');
  const expectedHref = `/videos/${encodeSegment(id)}`;
  if (href !== expectedHref) throw new Error(`link is ${href}, expected ${expectedHref}`);

  step = 'open the watch page';
  // The index re-renders its list while uploads settle, so a click can land on a row just replaced and go
  // nowhere; the link's target was checked above, so a click that did not navigate is followed by going
  // there.
  const target = `${root}${expectedHref}`;
  const followed = await Promise.all([page.waitForURL(target, { timeout: 10_000 }), readyLink.click()])
    .then(() => true, () => false);
  if (!followed) await page.goto(target, { timeout: 30_000 });
  if (page.url() !== target) throw new Error(`the watch page is not open: at ${page.url()}`);
  const manifest = `/content/${encodeSegment(id)}/manifest.mpd`;
  const html = await page.content();
  if (!html.includes(manifest)) throw new Error(`the watch page does not contain ${manifest}`);

  step = 'play';
  const played = await playWatchPage(page, { timeoutMs: playTimeout });
  if (played.qualities.length < 2) {
    throw new Error(`quality selector has ${played.qualities.length} entries: ${JSON.stringify(played.qualities)}`);
  }
  console.log(JSON.stringify({ ok: true, id, url: page.url(), uploadMs, ...played, pageErrors: problems }));
  await browser.close();
  process.exit(0);
} catch (e) {
  let screenshot = null;
  if (page) {
    screenshot = join(process.env.PLAY_SCREENSHOT_DIR || tmpdir(), `distributary-play-failure-${process.pid}.png`);
    await page.screenshot({ path: screenshot, fullPage: true }).catch(() => { screenshot = null; });
  }
  console.log(JSON.stringify({ ok: false, id, step, error: e.message, url: page ? page.url() : null, screenshot, pageErrors: problems }));
  console.error(`play.mjs failed at "${step}": ${e.message}`);
  for (const p of problems) console.error(`  page: ${p}`);
  if (browser) await browser.close();
  process.exit(1);
}
