// A stand-in for the broadcaster's POST /upload, for browser tests that run before (or without) the transcoder:
// an HTTP proxy that forwards everything else to a real broadcaster and answers POST /upload itself like the real
// route does: it reads the whole multipart body (slowly, so that upload progress is visible), holds the answer a
// moment (the real route waits until the video is playable), then 303 to / — or 409 with a JSON error when the
// file is named taken.*.
import http from 'node:http';

/**
 * Starts the stub on a free loopback port. `upstream` is the broadcaster's base URL. Returns
 * `{ url, uploads, close }`; `uploads` lists `{ name, bytes }` of every POST /upload seen.
 */
export async function startUploadStub(upstream, { readRate = 16 << 20, holdMs = 1500 } = {}) {
  const target = new URL(upstream);
  const uploads = [];
  const server = http.createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/upload') {
      let bytes = 0;
      let head = '';
      req.on('data', (chunk) => {
        bytes += chunk.length;
        if (head.length < 4096) head += chunk.subarray(0, 4096).toString('latin1');
        req.pause();
        setTimeout(() => req.resume(), Math.ceil((chunk.length / readRate) * 1000));
      });
      req.on('end', () => {
        const name = (/filename="([^"]*)"/.exec(head) || [])[1] || null;
        uploads.push({ name, bytes });
        setTimeout(() => {
          if (name && name.startsWith('taken.')) {
            res.writeHead(409, { 'Content-Type': 'application/json' });
            res.end(JSON.stringify({ error: `video id taken: ${name.replace(/\.[^.]*$/, '')}` }));
          } else {
            res.writeHead(303, { Location: '/' });
            res.end();
          }
        }, holdMs);
      });
      return;
    }
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url,
      headers: { ...req.headers, host: target.host } }, (r) => {
      if (req.method === 'GET' && req.url === '/' && /text\/html/.test(r.headers['content-type'] || '')) {
        // The page would upload to the broadcaster's /uploads (tus) instead of the POST /upload stood in for
        // here: without the form's data-resumable attribute its script sends the form in one request.
        const parts = [];
        r.on('data', (c) => parts.push(c));
        r.on('end', () => {
          const html = Buffer.from(Buffer.concat(parts).toString('utf8').replace(/ data-resumable="[^"]*"/, ''));
          const headers = { ...r.headers, 'content-length': String(html.length) };
          delete headers['transfer-encoding'];
          res.writeHead(r.statusCode, headers);
          res.end(html);
        });
        return;
      }
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
    req.pipe(up);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const close = () => new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections?.();
  });
  return { url: `http://127.0.0.1:${port}`, port, uploads, close };
}
