#!/usr/bin/env node
// Writes a small two-rendition DASH stream (see makeDashFixture in lib.mjs) into OUTDIR and prints its files as
// JSON. Used by the broadcaster's web tests to put real DASH content on the storage ring without the transcoder.
// Usage: node web/tests/make-dash.mjs OUTDIR [SECONDS]
import { makeDashFixture } from './lib.mjs';

const [dir, seconds] = process.argv.slice(2);
if (!dir) {
  console.error('usage: node web/tests/make-dash.mjs OUTDIR [SECONDS]');
  process.exit(2);
}
try {
  console.log(JSON.stringify(makeDashFixture(dir, { seconds: Number(seconds || 10) })));
} catch (e) {
  console.error(`make-dash.mjs: ${e.message}`);
  process.exit(1);
}
