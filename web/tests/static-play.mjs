#!/usr/bin/env node
// Checks the browser half of the watch page without the broadcaster: ffmpeg makes a two-rendition H.264/AAC DASH
// stream named like the real one (manifest.mpd, init-{rep}.m4s, chunk-{rep}-{n:05}.m4s), `python3 -m http.server`
// serves it on a free loopback port beside a copy of the watch page (same element ids, same script and style
// files as the broadcaster embeds, the same Content-Security-Policy as a <meta> tag), and headless Chromium
// plays it with dash.js past 2 s, lists both renditions in the quality selector, and switches to the lowest.
//
// Usage: node web/tests/static-play.mjs     (needs ffmpeg, python3, /usr/bin/chromium, `npm ci --prefix web`)
// Prints one JSON line; exit 0 on success, 1 on failure.
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, watchPage, playWatchPage, chooseQuality, makeDashFixture, dashJsPath } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const webDir = join(here, '..');
const staticDir = join(webDir, '..', 'broadcaster', 'src', 'web', 'static');
const dashJs = dashJsPath();
// Keep in step with broadcaster/src/web/mod.rs (CONTENT_SECURITY_POLICY); frame-ancestors is header-only.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self' blob:; " +
  "connect-src 'self'; form-action 'self'; base-uri 'none'";

function fail(msg) {
  console.log(JSON.stringify({ ok: false, error: msg }));
  console.error(`static-play.mjs: ${msg}`);
  process.exit(1);
}
if (!existsSync(dashJs)) fail(`${dashJs} is missing: run npm ci --prefix web`);

const work = mkdtempSync(join(tmpdir(), 'distributary-static-play-'));
let server;
let browser;
const problems = [];
let step = 'ffmpeg';
try {
  const id = 'clip';
  const content = join(work, 'content', id);
  const { segments } = makeDashFixture(content, { seconds: 10 });
  if (segments < 10) throw new Error(`ffmpeg wrote only ${segments} segments`);

  step = 'page';
  mkdirSync(join(work, 'assets'));
  copyFileSync(dashJs, join(work, 'assets', 'dash.all.min.js'));
  for (const f of ['watch.js', 'style.css', 'icon.svg']) copyFileSync(join(staticDir, f), join(work, 'assets', f));
  mkdirSync(join(work, 'videos'));
  writeFileSync(join(work, 'videos', 'clip.html'), `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<title>clip</title><link rel="icon" href="/assets/icon.svg"><link rel="stylesheet" href="/assets/style.css"></head>
<body><main>
<video id="player" controls playsinline preload="none" poster="/content/clip/poster.jpg" data-manifest="/content/clip/manifest.mpd"></video>
<label for="quality">Quality</label>
<select id="quality" disabled><option value="auto" selected>Auto</option></select>
<span id="current-quality"></span>
<p id="player-error" hidden></p>
</main>
<script src="/assets/dash.all.min.js"></script>
<script src="/assets/watch.js"></script>
</body></html>
`);

  step = 'http.server';
  server = spawn('python3', ['-u', '-m', 'http.server', '--bind', '127.0.0.1', '0'], { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`http.server did not start: ${out}`)), 10_000);
    const onData = (d) => {
      out += d;
      const m = /port (\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    server.stdout.on('data', onData);
    server.stderr.on('data', onData);
    server.on('exit', (c) => reject(new Error(`http.server exited (${c}): ${out}`)));
  });

  step = 'chromium';
  browser = await launch();
  const page = browser.context.pages()[0] || (await browser.context.newPage());
  watchPage(page, problems);
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`); });
  await page.goto(`http://127.0.0.1:${port}/videos/clip.html`, { waitUntil: 'load' });

  step = 'play';
  const played = await playWatchPage(page, { timeoutMs: 60_000 });
  if (played.qualities.length < 3) throw new Error(`expected Auto + 2 renditions, got ${JSON.stringify(played.qualities)}`);
  step = 'switch quality';
  const lowest = played.qualities[played.qualities.length - 1];
  const switched = await chooseQuality(page, lowest.value);
  const csp = problems.filter((p) => p.startsWith('CSP'));
  if (csp.length) throw new Error(`Content-Security-Policy violations: ${csp.join('; ')}`);
  console.log(JSON.stringify({ ok: true, segments, ...played, switchedTo: switched, pageErrors: problems }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, step, error: e.message, pageErrors: problems }));
  console.error(`static-play.mjs failed at "${step}": ${e.message}`);
  for (const p of problems) console.error(`  page: ${p}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
  if (server && server.exitCode === null) server.kill('SIGTERM');
  rmSync(work, { recursive: true, force: true });
}
