#!/usr/bin/env node
// The upload form's script (progress bar, percentage, transcoding state, server errors) in headless Chromium,
// against the broadcaster's real index page and assets, with POST /upload answered by the stand-in of stub.mjs
// (it reads the body slowly so that progress is visible, then answers 303 to /, or 409 with a JSON error for
// the file "taken.mp4").
//
// Usage: node web/tests/upload-ui.mjs BASE_URL
// Prints one JSON line; exit 0 on success, 1 with the reason on failure.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launch, watchPage } from './lib.mjs';
import { startUploadStub } from './stub.mjs';

const [base] = process.argv.slice(2);
if (!base) {
  console.error('usage: node web/tests/upload-ui.mjs BASE_URL');
  process.exit(2);
}
const BODY_BYTES = 24 << 20;
const stub = await startUploadStub(base);
const root = stub.url;
const uploads = stub.uploads;

const work = mkdtempSync(join(tmpdir(), 'distributary-upload-ui-'));
const problems = [];
let browser;
let step = 'launch chromium';
try {
  const big = join(work, 'holiday.mp4');
  const taken = join(work, 'taken.mp4');
  writeFileSync(big, Buffer.alloc(BODY_BYTES, 7));
  writeFileSync(taken, Buffer.alloc(1 << 20, 7));
  browser = await launch();
  const page = browser.context.pages()[0] || (await browser.context.newPage());
  watchPage(page, problems);

  step = 'upload with progress';
  await page.goto(`${root}/`, { waitUntil: 'load' });
  await page.evaluate(() => {
    window.__percents = [];
    const el = document.getElementById('upload-percent');
    new MutationObserver(() => window.__percents.push(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true });
  });
  await page.setInputFiles('input[type=file][name=file]', big);
  await page.click('[type=submit]');
  await page.waitForFunction(() => !document.getElementById('upload-status').hidden, null, { timeout: 5_000 });
  if (!(await page.isDisabled('#upload-button'))) throw new Error('the button is not disabled during the upload');
  await page.waitForFunction(() => /Transcoding/.test(document.getElementById('upload-message').textContent), null, { timeout: 30_000 });
  const percents = await page.evaluate(() => window.__percents);
  const indeterminate = await page.evaluate(() => !document.getElementById('upload-progress').hasAttribute('value'));
  const values = [...new Set(percents.map((p) => parseInt(p, 10)))];
  if (values.filter((v) => v > 0 && v < 100).length < 3) throw new Error(`too few intermediate progress values: ${percents.join(' ')}`);
  if (values[values.length - 1] !== 100) throw new Error(`progress did not reach 100%: ${percents.join(' ')}`);
  if (!indeterminate) throw new Error('the progress bar is not indeterminate while transcoding');
  step = 'follow the 303';
  await page.waitForNavigation({ timeout: 30_000 });
  await page.waitForLoadState('load');
  if (!(await page.isHidden('#upload-status'))) throw new Error('the progress is still shown after the reload');
  if (new URL(page.url()).pathname !== '/') throw new Error(`landed on ${page.url()}`);

  step = 'server error';
  await page.setInputFiles('input[type=file][name=file]', taken);
  await page.click('[type=submit]');
  await page.waitForSelector('#upload-error:not([hidden])', { timeout: 30_000 });
  const error = await page.textContent('#upload-error');
  if (!/409/.test(error) || !/video id taken: taken/.test(error)) throw new Error(`error message: ${error}`);
  if (await page.isDisabled('#upload-button')) throw new Error('the button stays disabled after an error');
  if (uploads.length !== 2 || uploads[0].name !== 'holiday.mp4' || uploads[0].bytes < BODY_BYTES) {
    throw new Error(`the stub saw ${JSON.stringify(uploads)}`);
  }
  const unexpected = problems.filter((p) => !/409/.test(p));
  if (unexpected.length) throw new Error(unexpected.join('; '));
  console.log(JSON.stringify({ ok: true, progressValues: values, error, uploads }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, step, error: e.message, uploads, pageErrors: problems }));
  console.error(`upload-ui.mjs failed at "${step}": ${e.message}`);
  for (const p of problems) console.error(`  page: ${p}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
  await stub.close();
  rmSync(work, { recursive: true, force: true });
}
