#!/usr/bin/env node
// Browser test of an already-published video: open /, find ID listed as ready, follow its link, play the watch
// page muted until video.currentTime > 2 s, check the quality selector (Auto + at least MIN_RENDITIONS entries),
// switch to the lowest quality, and fail on any Content-Security-Policy violation or page error.
// Usage: node web/tests/watch.mjs BASE_URL ID [MIN_RENDITIONS]
// Environment: WEB_SCREENSHOT_DIR, if set, receives index.png and watch.png (to look at the pages).
// Prints one JSON line; exit 0 on success, 1 with the reason and the page's errors on failure.
import { join } from 'node:path';
import { launch, watchPage, encodeSegment, cssString, playWatchPage, chooseQuality } from './lib.mjs';

const [base, id, minArg] = process.argv.slice(2);
if (!base || !id) {
  console.error('usage: node web/tests/watch.mjs BASE_URL ID [MIN_RENDITIONS]');
  process.exit(2);
}
const minRenditions = Number(minArg || 1);
const root = base.replace(/\/+$/, '');
const problems = [];
let step = 'launch chromium';
let browser;
try {
  browser = await launch();
  const page = browser.context.pages()[0] || (await browser.context.newPage());
  watchPage(page, problems);
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`); });

  step = 'open /';
  const index = await page.goto(`${root}/`, { waitUntil: 'load' });
  if (!index || index.status() !== 200) throw new Error(`GET / answered ${index && index.status()}`);
  const link = page.locator(`tr.video[data-status="ready"][data-video-id=${cssString(id)}] a`);
  await link.waitFor({ timeout: 10_000 });
  const href = `/videos/${encodeSegment(id)}`;
  if ((await link.getAttribute('href')) !== href) throw new Error(`link is ${await link.getAttribute('href')}, expected ${href}`);

  const shots = process.env.WEB_SCREENSHOT_DIR;
  if (shots) await page.screenshot({ path: join(shots, 'index.png'), fullPage: true });

  step = 'open the watch page';
  await Promise.all([page.waitForURL(`${root}${href}`, { timeout: 30_000 }), link.click()]);

  step = 'play';
  const played = await playWatchPage(page, { timeoutMs: 60_000 });
  if (played.qualities.length < 1 + minRenditions) {
    throw new Error(`quality selector has ${played.qualities.length} entries: ${JSON.stringify(played.qualities)}`);
  }
  step = 'switch quality';
  const lowest = played.qualities[played.qualities.length - 1];
  const switchedTo = await chooseQuality(page, lowest.value);
  if (shots) await page.screenshot({ path: join(shots, 'watch.png'), fullPage: true });
  const bad = problems.filter((p) => p.startsWith('CSP') || p.startsWith('uncaught'));
  if (bad.length) throw new Error(bad.join('; '));
  console.log(JSON.stringify({ ok: true, id, url: page.url(), ...played, switchedTo, pageErrors: problems }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, id, step, error: e.message, pageErrors: problems }));
  console.error(`watch.mjs failed at "${step}": ${e.message}`);
  for (const p of problems) console.error(`  page: ${p}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
}
