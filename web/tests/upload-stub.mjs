#!/usr/bin/env node
// Runs the POST /upload stand-in of stub.mjs in front of a broadcaster until SIGTERM/SIGINT, logging
// `listening on 127.0.0.1:PORT` (the test harness waits for that line).
// Usage: node web/tests/upload-stub.mjs UPSTREAM_BASE_URL
import { startUploadStub } from './stub.mjs';

const [upstream] = process.argv.slice(2);
if (!upstream) {
  console.error('usage: node web/tests/upload-stub.mjs UPSTREAM_BASE_URL');
  process.exit(2);
}
const stub = await startUploadStub(upstream);
console.log(`listening on 127.0.0.1:${stub.port}`);
const stop = async () => {
  await stub.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
