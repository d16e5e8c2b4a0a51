#!/usr/bin/env node
// A resumable upload with tus-js-client (the node build, a Buffer input), for the end-to-end tests in
// broadcaster/tests/it/resumable.rs: a real tus / IETF-draft client against a real broadcaster.
//
// Usage: node web/tests/tus-upload.mjs ENDPOINT FILE [options]
//   --protocol tus-v1|ietf-draft-05   (default tus-v1; env TUS_PROTOCOL)
//   --chunk-size N                    bytes per PATCH, or "inf" for one PATCH of the rest (default inf;
//                                     env TUS_CHUNK_SIZE)
//   --token T                         sends `Authorization: Bearer T` (env TUS_TOKEN)
//   --name NAME                       metadata `filename` (default: the file's base name)
//   --video                           adds the metadata key `video` (a video upload)
//   --resume-url URL                  resume that upload (tus-js-client's `uploadUrl`) instead of creating one
//   --stop-after-bytes N              vanish (SIGKILL to itself) once the upload's offset passes N: a client
//                                     that dies in the middle of a PATCH
//   --retry                           let tus-js-client retry failed requests (default: no retries)
//
// Prints `URL <url>` as soon as the upload URL is known, `OFFSET <n>` for each offset the server accepted,
// `STOP <n>` just before vanishing (n = bytes of the upload handed to the socket), `DONE` on success, and
// `ERROR <message>` (exit 1) on failure. Exit 2: bad usage.
//
// tus-js-client reports progress at most every 100 ms, which on loopback can be several MiB; to stop at a
// precise offset, the HTTP stack here is tus-js-client's own node stack with the PATCH/POST body handed to it
// as a stream of 64 KiB slices (same Content-Length, same headers), so the byte count is exact.
import { readFileSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import * as tus from 'tus-js-client';

function say(line) {
  // Synchronous, so that a line written just before SIGKILL is not lost.
  writeSync(1, `${line}\n`);
}

function fail(message) {
  say(`ERROR ${String(message).replace(/\s+/g, ' ')}`);
  process.exit(1);
}

function usage(message) {
  writeSync(2, `${message}\nusage: node web/tests/tus-upload.mjs ENDPOINT FILE [--protocol P] [--chunk-size N] [--token T] [--name NAME] [--video] [--resume-url URL] [--stop-after-bytes N] [--retry]\n`);
  process.exit(2);
}

const positional = [];
const opts = {
  protocol: process.env.TUS_PROTOCOL || 'tus-v1',
  chunkSize: process.env.TUS_CHUNK_SIZE || 'inf',
  token: process.env.TUS_TOKEN || '',
  name: '',
  video: false,
  resumeUrl: '',
  stopAfter: -1,
  retry: false,
};
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const value = () => {
    if (i + 1 >= args.length) usage(`${a} needs a value`);
    return args[++i];
  };
  switch (a) {
    case '--protocol': opts.protocol = value(); break;
    case '--chunk-size': opts.chunkSize = value(); break;
    case '--token': opts.token = value(); break;
    case '--name': opts.name = value(); break;
    case '--video': opts.video = true; break;
    case '--resume-url': opts.resumeUrl = value(); break;
    case '--stop-after-bytes': opts.stopAfter = Number(value()); break;
    case '--retry': opts.retry = true; break;
    default:
      if (a.startsWith('--')) usage(`unknown option ${a}`);
      positional.push(a);
  }
}
const [endpoint, file] = positional;
if (!endpoint || !file || positional.length > 2) usage('ENDPOINT and FILE are required');
if (!['tus-v1', 'ietf-draft-05'].includes(opts.protocol)) usage(`unsupported protocol ${opts.protocol}`);
const chunkSize = opts.chunkSize === 'inf' ? Number.POSITIVE_INFINITY : Number(opts.chunkSize);
if (!(chunkSize > 0)) usage(`bad chunk size ${opts.chunkSize}`);
if (Number.isNaN(opts.stopAfter)) usage('bad --stop-after-bytes');

const data = readFileSync(file);
const SLICE = 64 * 1024;

let stopping = false;
// The highest absolute offset handed to the HTTP stack so far (progress events lag behind it).
let handedOver = 0;
/** Called with an absolute offset of the bytes handed over so far; vanishes once it passes the limit. */
function maybeStop(sent) {
  if (opts.stopAfter < 0 || stopping || sent <= opts.stopAfter) return false;
  stopping = true;
  // Let what was handed over reach the socket, then die without closing anything politely.
  setTimeout(() => {
    say(`STOP ${Math.max(sent, handedOver)}`);
    process.kill(process.pid, 'SIGKILL');
  }, 200);
  return true;
}

/** tus-js-client's node HTTP stack, with request bodies fed as a stream of SLICE-byte pieces. */
class SlicingStack {
  constructor() {
    this.inner = new tus.DefaultHttpStack();
  }

  createRequest(method, url) {
    const req = this.inner.createRequest(method, url);
    const send = req.send.bind(req);
    req.send = (body) => {
      if (!(body instanceof Uint8Array) || body.length === 0) return send(body);
      const start = Number(req.getHeader('Upload-Offset') || 0);
      let pos = 0;
      const stream = new Readable({
        read() {
          if (stopping) return; // hold the rest back: the process is about to vanish
          if (pos >= body.length) {
            this.push(null);
            return;
          }
          const end = Math.min(pos + SLICE, body.length);
          this.push(Buffer.from(body.buffer, body.byteOffset + pos, end - pos));
          pos = end;
          handedOver = Math.max(handedOver, start + pos);
          maybeStop(start + pos);
        },
      });
      // The node stack sets Content-Length from `size`; without it the body would go chunked.
      stream.size = body.length;
      return send(stream);
    };
    return req;
  }

  getName() {
    return 'SlicingStack';
  }
}

const metadata = { filename: opts.name || basename(file) };
if (opts.video) metadata.video = '';
const headers = {};
if (opts.token) headers.Authorization = `Bearer ${opts.token}`;

const upload = new tus.Upload(data, {
  endpoint,
  uploadUrl: opts.resumeUrl || null,
  protocol: opts.protocol,
  chunkSize,
  metadata,
  headers,
  httpStack: new SlicingStack(),
  retryDelays: opts.retry ? [0, 500, 1000, 2000] : null,
  storeFingerprintForResuming: false,
  removeFingerprintOnSuccess: false,
  onUploadUrlAvailable() {
    say(`URL ${upload.url}`);
  },
  onProgress(sent) {
    maybeStop(sent);
  },
  onChunkComplete(_chunk, accepted) {
    say(`OFFSET ${accepted}`);
  },
  onSuccess() {
    if (stopping) return;
    say('DONE');
    process.exit(0);
  },
  onError(err) {
    if (stopping) return;
    const res = err && err.originalResponse;
    const detail = res ? ` (status ${res.getStatus()}, body ${JSON.stringify(res.getBody())})` : '';
    fail(`${err && err.message ? err.message : err}${detail}`);
  },
});
upload.start();
