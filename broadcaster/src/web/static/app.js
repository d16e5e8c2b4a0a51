// Distributary index page: uploads with a progress bar, a Cancel button, the server's errors, and a list that
// refreshes while videos are processing.
//
// Uploads are resumable: with tus-js-client (/assets/tus.min.js) the file goes to the form's data-resumable
// endpoint (/uploads, tus 1.0.0) in one PATCH; a dropped connection is retried and resumed from the offset the
// server kept, and after a reload choosing the same file resumes it (the upload's URL is kept in localStorage
// under the file's fingerprint). Where tus-js-client is missing or the server has no resumable endpoint, the form
// is sent in one multipart request to /upload as without this script. Without JavaScript the form still works
// (a plain POST, then the server's 303 to /).
'use strict';
(function () {
  var form = document.getElementById('upload-form');
  var input = document.getElementById('upload-file');
  // The upload in progress: { tus: tus.Upload | null, xhr: XMLHttpRequest | null, cancelled: bool }.
  var current = null;
  // Delays between automatic retries after a dropped connection or a busy server (tus-js-client's retryDelays).
  var RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000];
  // How often to try again after the connection was lost and the browser does not say it is back.
  var RECONNECT_EVERY_MS = 15000;

  function $(id) { return document.getElementById(id); }

  function formatBytes(n) {
    if (n < 1024) return n + ' B';
    var units = ['KiB', 'MiB', 'GiB', 'TiB'];
    var u = -1;
    do { n /= 1024; u++; } while (n >= 1024 && u < units.length - 1);
    return n.toFixed(1) + ' ' + units[u];
  }

  // The server's error message: JSON {"error": ...}, an HTML page, or plain text.
  function errorText(body, type) {
    body = body || '';
    type = type || '';
    var text = '';
    try {
      if (type.indexOf('json') >= 0) {
        var j = JSON.parse(body);
        text = j.error || j.message || JSON.stringify(j);
      } else if (type.indexOf('html') >= 0) {
        var doc = new DOMParser().parseFromString(body, 'text/html');
        var main = doc.querySelector('main') || doc.body;
        text = main ? main.textContent : '';
      } else {
        text = body;
      }
    } catch (e) {
      text = body;
    }
    text = String(text).replace(/\s+/g, ' ').trim();
    if (text.length > 400) text = text.slice(0, 400) + '…';
    return text;
  }

  function showError(message) {
    var box = $('upload-error');
    box.textContent = message;
    box.hidden = false;
  }

  function setMessage(text) { $('upload-message').textContent = text; }

  // Bytes sent of the total; `null` makes the bar indeterminate (the server is checking and transcoding).
  function setProgress(sent, total) {
    var bar = $('upload-progress');
    if (sent === null) {
      bar.removeAttribute('value');
      return;
    }
    var percent = total > 0 ? Math.min(100, Math.floor((sent / total) * 100)) : 0;
    bar.value = percent;
    $('upload-percent').textContent = percent + '%';
    $('upload-bytes').textContent = formatBytes(sent) + ' of ' + formatBytes(total);
  }

  function begin(file) {
    $('upload-error').hidden = true;
    $('upload-resume').hidden = true;
    $('upload-status').hidden = false;
    $('upload-button').disabled = true;
    $('upload-button').textContent = 'Upload';
    $('upload-cancel').hidden = false;
    $('upload-cancel').disabled = false;
    form.setAttribute('aria-busy', 'true');
    setProgress(0, file.size);
  }

  // The upload is over (done, failed or cancelled): the form takes another file.
  function finish(keepStatus) {
    current = null;
    $('upload-button').disabled = false;
    $('upload-cancel').hidden = true;
    form.removeAttribute('aria-busy');
    if (!keepStatus) $('upload-status').hidden = true;
  }

  function fail(message) {
    finish(false);
    showError(message);
    showUnfinished();
  }

  // ---------------------------------------------------------------------------------------------
  // The video list
  // ---------------------------------------------------------------------------------------------

  function processingCount() {
    var list = $('videos');
    return list ? parseInt(list.getAttribute('data-processing') || '0', 10) : 0;
  }

  // Fetches / and puts its list in place of ours.
  function reloadList() {
    return fetch('/', { cache: 'no-store', credentials: 'same-origin', headers: { Accept: 'text/html' } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error('GET / answered ' + r.status)); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html').getElementById('videos');
        var list = $('videos');
        if (fresh && list) list.replaceWith(document.importNode(fresh, true));
      });
  }

  // While some video is processing, refresh the list every few seconds (not during an upload of our own).
  var refreshTimer = null;
  function scheduleRefresh() {
    if (refreshTimer === null && processingCount() > 0) refreshTimer = setTimeout(refreshTick, 5000);
  }
  function refreshTick() {
    refreshTimer = null;
    if (current || processingCount() === 0) return;
    reloadList().catch(function () { /* try again on the next tick */ }).then(scheduleRefresh);
  }

  function videoRow(id) {
    var rows = document.querySelectorAll('#videos tr.video');
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute('data-video-id') === id) return rows[i];
    }
    return null;
  }

  // The video id of an upload name: the name without its extension (as the server derives it).
  function videoId(name) {
    var dot = name.lastIndexOf('.');
    return dot > 0 ? name.slice(0, dot) : name;
  }

  // After a committed upload: refresh the list until the video is listed as ready (or failed), then say so.
  function awaitListed(id, size) {
    var tries = 0;
    function check() {
      return reloadList().catch(function () { /* keep trying */ }).then(function () {
        var row = videoRow(id);
        var status = row ? row.getAttribute('data-status') : null;
        if (status === 'ready') {
          finish(true);
          setProgress(size, size);
          var link = row.querySelector('a');
          setMessage('');
          var msg = $('upload-message');
          msg.appendChild(document.createTextNode('Ready: '));
          if (link) {
            var a = document.createElement('a');
            a.href = link.getAttribute('href');
            a.textContent = 'watch “' + id + '”';
            msg.appendChild(a);
          } else {
            msg.appendChild(document.createTextNode('“' + id + '” is listed below.'));
          }
          scheduleRefresh();
          return;
        }
        if (status === 'failed') {
          var why = row.querySelector('.error-text');
          fail('Processing failed for “' + id + '”' + (why ? ': ' + why.textContent : '.'));
          return;
        }
        tries++;
        if (!row && tries > 20) {
          // Committed but not (or no longer) in the list: nothing more to wait for.
          finish(true);
          setProgress(size, size);
          setMessage('Uploaded.');
          return;
        }
        setTimeout(check, Math.min(5000, 1000 + tries * 500));
      });
    }
    return check();
  }

  // ---------------------------------------------------------------------------------------------
  // Resumable upload (tus-js-client)
  // ---------------------------------------------------------------------------------------------

  function tusAvailable() {
    return !!(form && form.getAttribute('data-resumable') && window.tus && window.tus.isSupported);
  }

  function endpointUrl() {
    return new URL(form.getAttribute('data-resumable'), window.location.href).href;
  }

  function statusOf(err) {
    return err && err.originalResponse ? err.originalResponse.getStatus() : 0;
  }

  function methodOf(err) {
    return err && err.originalRequest ? err.originalRequest.getMethod() : '';
  }

  // Removes what localStorage keeps about earlier uploads of this file (they cannot be resumed).
  function forgetStored(upload) {
    return upload.findPreviousUploads().then(function (prev) {
      var storage = upload.options.urlStorage;
      return Promise.all(prev.map(function (p) { return storage.removeUpload(p.urlStorageKey); }));
    }).catch(function () { /* nothing stored, or storage unavailable */ });
  }

  function tusOptions(file, hooks) {
    return {
      endpoint: endpointUrl(),
      protocol: 'tus-v1',
      // `video` (any value) makes it a video upload, as POST /upload does.
      metadata: { filename: file.name, video: '1' },
      // No chunkSize: the whole rest of the file goes in one PATCH, which the server streams to its targets.
      retryDelays: RETRY_DELAYS,
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      headers: { Accept: 'application/json' },
      onShouldRetry: hooks.onShouldRetry,
      onAfterResponse: hooks.onAfterResponse,
      onProgress: hooks.onProgress,
      onUploadUrlAvailable: hooks.onUploadUrlAvailable,
      onSuccess: hooks.onSuccess,
      onError: hooks.onError,
    };
  }

  function startTus(file) {
    var state = { tus: null, xhr: null, cancelled: false, reconnect: null };
    current = state;
    begin(file);
    setMessage('Uploading ' + file.name + '…');
    var resumedFrom = null;

    function stopWaiting() {
      if (state.reconnect) {
        window.removeEventListener('online', state.reconnect);
        clearInterval(state.reconnectTimer);
        state.reconnect = null;
      }
    }

    // The connection is gone: resume by ourselves once the browser is back online (or every few seconds).
    function waitForConnection(upload) {
      setMessage('Connection lost. The upload continues from where it stopped once the connection is back…');
      if (state.reconnect) return;
      state.reconnect = function () {
        if (state.cancelled || (state.reconnect && navigator.onLine === false)) return;
        stopWaiting();
        setMessage('Reconnecting…');
        upload.start();
      };
      window.addEventListener('online', state.reconnect);
      state.reconnectTimer = setInterval(state.reconnect, RECONNECT_EVERY_MS);
    }

    var upload = new window.tus.Upload(file, tusOptions(file, {
      onShouldRetry: function (err, attempt, options) {
        var status = statusOf(err);
        var method = methodOf(err);
        var retry;
        if (method === 'DELETE') {
          retry = status === 0 || status >= 500 || status === 423;
        } else if (state.cancelled) {
          retry = false;
        } else if (status === 0) {
          // Offline: no use retrying now; onError waits for the connection instead.
          retry = navigator.onLine !== false;
        } else if (status === 409 || status === 423) {
          // A wrong offset (the server kept less or more than we thought): ask for it again and go on from there.
          retry = method !== 'POST';
        } else if (status === 503) {
          // Busy (Retry-After) or the metadata store is away: worth another try. A creation refused without
          // Retry-After (no targets configured) will not get better.
          retry = method !== 'POST' || !!err.originalResponse.getHeader('Retry-After');
        } else {
          // 502 is final here (the targets could not commit); 4xx are our fault and will not get better.
          retry = status === 408 || status === 429 || status === 500 || status === 504;
        }
        if (retry && method !== 'DELETE') {
          var delay = options.retryDelays[attempt] || 0;
          setMessage('Connection interrupted; ' + (delay >= 1000 ? 'retrying in ' + Math.round(delay / 1000) + ' s…' : 'retrying…'));
        }
        return retry;
      },
      onAfterResponse: function (req, res) {
        // A HEAD answers how much the server kept: the resume continues from there.
        if (req.getMethod() === 'HEAD' && res.getStatus() === 200) {
          var offset = parseInt(res.getHeader('Upload-Offset'), 10);
          if (!isNaN(offset)) resumedFrom = offset;
        }
      },
      onProgress: function (sent, total) {
        if (state.cancelled) return;
        stopWaiting();
        setProgress(sent, total);
        // Once every byte is sent the server decides; cancelling then would race its commit.
        $('upload-cancel').hidden = sent >= total;
        if (sent >= total) {
          setProgress(null);
          setMessage('Uploaded. The server checks and transcodes the video; it is listed when ready to play…');
        } else if (resumedFrom !== null && sent > 0) {
          setMessage('Resumed at ' + formatBytes(resumedFrom) + '. Uploading ' + file.name + '…');
        } else {
          setMessage('Uploading ' + file.name + '…');
        }
      },
      onUploadUrlAvailable: function () {
        form.setAttribute('data-upload-url', upload.url);
      },
      onSuccess: function () {
        if (state.cancelled) return;
        stopWaiting();
        $('upload-cancel').hidden = true;
        setProgress(null);
        setMessage('Uploaded. The server checks and transcodes the video; it is listed when ready to play…');
        afterCommit(state, upload, file);
      },
      onError: function (err) {
        if (state.cancelled) return;
        var status = statusOf(err);
        if (status === 0) {
          waitForConnection(upload);
          return;
        }
        if (methodOf(err) === 'POST' && upload.url === null && (status === 404 || status === 405 || status === 501)) {
          // This server has no resumable uploads: one multipart request, as without tus-js-client.
          current = null;
          startMultipart(file);
          return;
        }
        var res = err.originalResponse;
        var why = errorText(res.getBody(), res.getHeader('Content-Type'));
        var permanent = status !== 503 && status !== 500 && status !== 504 && status !== 429 && status !== 408;
        var done = permanent ? forgetStored(upload) : Promise.resolve();
        done.then(function () {
          fail('Upload failed (' + status + ')' + (why ? ': ' + why : '.') +
            (permanent || upload.url === null ? '' : ' Press Upload again with the same file to continue where it stopped.'));
        });
      },
    }));
    state.tus = upload;
    window.distributaryUpload = upload; // for debugging and the browser test

    upload.findPreviousUploads().then(function (previous) {
      if (state.cancelled) return;
      if (previous.length > 0) {
        previous.sort(function (a, b) { return Date.parse(b.creationTime) - Date.parse(a.creationTime); });
        upload.resumeFromPreviousUpload(previous[0]);
        setMessage('Resuming the earlier upload of ' + file.name + '…');
      }
      upload.start();
    }, function () {
      upload.start();
    });
  }

  // The upload's final state from GET /uploads/{id}: committed (then the video is listed), failed, or still
  // finishing (polled).
  function afterCommit(state, upload, file) {
    var tries = 0;
    function poll() {
      fetch(upload.url, { cache: 'no-store', credentials: 'same-origin', headers: { Accept: 'application/json' } })
        .then(function (r) {
          if (!r.ok) return { state: null, status: r.status };
          return r.json();
        })
        .then(function (info) {
          if (state.cancelled) return;
          var id = videoId(info && info.name ? info.name : file.name);
          if (info.state === 'failed') {
            var s = info.summary || {};
            var why = info.error || s.error || (s.targets || []).map(function (t) { return t.error; }).filter(Boolean).join('; ');
            fail('Upload failed: the server could not keep “' + id + '”' + (why ? ': ' + why : '.'));
            return;
          }
          if (info.state === 'open' && tries++ < 600) {
            setTimeout(poll, 1000);
            return;
          }
          // Committed (or the server does not say): the list tells when the video is ready.
          awaitListed(id, file.size);
        })
        .catch(function () {
          if (!state.cancelled) awaitListed(videoId(file.name), file.size);
        });
    }
    poll();
  }

  // HEAD of an upload: { offset, length } or null (gone, refused, unreachable).
  function headOffset(url) {
    return fetch(url, { method: 'HEAD', cache: 'no-store', credentials: 'same-origin', headers: { 'Tus-Resumable': '1.0.0' } })
      .then(function (r) {
        if (!r.ok) return { gone: r.status === 404 || r.status === 410, offset: null, length: null };
        var o = parseInt(r.headers.get('Upload-Offset'), 10);
        var l = parseInt(r.headers.get('Upload-Length'), 10);
        return { gone: false, offset: isNaN(o) ? null : o, length: isNaN(l) ? null : l };
      })
      .catch(function () { return null; });
  }

  // Unfinished uploads this browser remembers: offered for resuming (choose the same file) or discarding.
  function showUnfinished() {
    var box = $('upload-unfinished');
    if (!box || !tusAvailable() || !window.tus.canStoreURLs) return;
    var storage = window.tus.defaultOptions.urlStorage;
    var endpoint = endpointUrl();
    storage.findAllUploads().then(function (all) {
      var mine = all.filter(function (u) {
        return u.uploadUrl && u.uploadUrl.indexOf(endpoint + '/') === 0;
      });
      box.textContent = '';
      if (mine.length === 0 || current) {
        box.hidden = true;
        return;
      }
      var title = document.createElement('h2');
      title.textContent = 'Unfinished uploads';
      box.appendChild(title);
      var list = document.createElement('ul');
      box.appendChild(list);
      mine.forEach(function (u) {
        var name = (u.metadata && u.metadata.filename) || 'a file';
        var li = document.createElement('li');
        li.className = 'unfinished-upload';
        li.setAttribute('data-filename', name);
        var text = document.createElement('span');
        text.textContent = name + ' (' + formatBytes(u.size || 0) + '): choose this file again to resume it. ';
        var discard = document.createElement('button');
        discard.type = 'button';
        discard.className = 'secondary';
        discard.textContent = 'Discard';
        discard.addEventListener('click', function () {
          discard.disabled = true;
          window.tus.Upload.terminate(u.uploadUrl, { retryDelays: [0, 1000] })
            .catch(function () { /* gone already, or the server removes it when it expires */ })
            .then(function () { return storage.removeUpload(u.urlStorageKey); })
            .then(showUnfinished, showUnfinished);
        });
        li.appendChild(text);
        li.appendChild(discard);
        list.appendChild(li);
        headOffset(u.uploadUrl).then(function (info) {
          if (info && info.gone) {
            // Expired or cancelled elsewhere: nothing to resume.
            storage.removeUpload(u.urlStorageKey).then(showUnfinished, showUnfinished);
          } else if (info && info.offset !== null) {
            text.textContent = name + ' (' + formatBytes(info.offset) + ' of ' + formatBytes(info.length || u.size || 0) +
              ' uploaded): choose this file again to resume it. ';
          }
        });
      });
      box.hidden = false;
    }).catch(function () { box.hidden = true; });
  }

  // When a file is chosen: say whether pressing Upload will resume an earlier upload of it.
  function offerResume() {
    var note = $('upload-resume');
    note.hidden = true;
    $('upload-button').textContent = 'Upload';
    if (!tusAvailable() || current || !input.files || input.files.length === 0) return;
    var file = input.files[0];
    var probe = new window.tus.Upload(file, { endpoint: endpointUrl() });
    probe.findPreviousUploads().then(function (prev) {
      if (prev.length === 0 || input.files[0] !== file || current) return;
      prev.sort(function (a, b) { return Date.parse(b.creationTime) - Date.parse(a.creationTime); });
      return headOffset(prev[0].uploadUrl).then(function (info) {
        if (input.files[0] !== file || current) return;
        if (info && info.gone) {
          forgetStored(probe);
          return;
        }
        var how = info && info.offset !== null
          ? formatBytes(info.offset) + ' of ' + formatBytes(info.length || file.size) + ' were uploaded'
          : 'it was started';
        note.textContent = 'This file was partly uploaded before (' + how + '). Upload resumes from there.';
        note.hidden = false;
        $('upload-button').textContent = 'Resume upload';
      });
    }).catch(function () { /* nothing stored */ });
  }

  // ---------------------------------------------------------------------------------------------
  // One multipart request (no tus-js-client, or a server without /uploads)
  // ---------------------------------------------------------------------------------------------

  function startMultipart(file) {
    var state = { tus: null, xhr: new XMLHttpRequest(), cancelled: false };
    current = state;
    begin(file);
    setMessage('Uploading ' + file.name + '…');
    var xhr = state.xhr;
    xhr.open('POST', form.getAttribute('action'));
    // Errors as JSON ({"error": ...}); without this header a browser form gets them as an HTML page.
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.addEventListener('progress', function (e) {
      if (e.lengthComputable && e.total > 0) setProgress(e.loaded, e.total);
    });
    xhr.upload.addEventListener('load', function () {
      setProgress(file.size, file.size);
      setProgress(null);
      setMessage('Uploaded. Transcoding; the video will be listed when it is ready to play…');
    });
    xhr.addEventListener('load', function () {
      if (xhr.status >= 200 && xhr.status < 400) {
        // The server answers 303 to / once the video is playable; XMLHttpRequest followed it.
        setProgress(file.size, file.size);
        setMessage('Ready.');
        current = null;
        window.location.assign('/');
        return;
      }
      var why = errorText(xhr.responseText, xhr.getResponseHeader('Content-Type'));
      fail('Upload failed (' + xhr.status + (xhr.statusText ? ' ' + xhr.statusText : '') + ')' +
        (why ? ': ' + why : '.'));
    });
    xhr.addEventListener('error', function () {
      fail('Upload failed: the connection to the server was lost.');
    });
    xhr.addEventListener('abort', function () {
      fail('Upload cancelled.');
    });
    xhr.send(new FormData(form));
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------------

  function cancel() {
    var state = current;
    if (!state || state.cancelled) return;
    state.cancelled = true;
    $('upload-cancel').disabled = true;
    if (state.xhr) {
      state.xhr.abort(); // its abort handler reports it
      return;
    }
    if (state.reconnect) {
      window.removeEventListener('online', state.reconnect);
      clearInterval(state.reconnectTimer);
      state.reconnect = null;
    }
    setMessage('Cancelling…');
    var upload = state.tus;
    // abort(true): stop sending and DELETE the upload, so the server removes everything it staged.
    upload.abort(true).then(function () {
      return forgetStored(upload).then(function () {
        fail('Upload cancelled; the server removed what it had received.');
      });
    }, function (err) {
      forgetStored(upload).then(function () {
        var status = statusOf(err);
        fail('Upload cancelled here, but the server could not be told' +
          (status ? ' (' + status + ')' : ' (no connection)') +
          '; it removes unfinished uploads when they expire.');
      });
    });
    form.removeAttribute('data-upload-url');
  }

  if (form && window.XMLHttpRequest && window.FormData) {
    if (tusAvailable()) $('upload-resumable-hint').hidden = false;

    form.addEventListener('submit', function (ev) {
      if (!input.files || input.files.length === 0) return; // let the browser say the field is required
      ev.preventDefault();
      if (current) return;
      var file = input.files[0];
      $('upload-unfinished').hidden = true;
      if (tusAvailable()) startTus(file);
      else startMultipart(file);
    });

    $('upload-cancel').addEventListener('click', cancel);
    input.addEventListener('change', offerResume);

    window.addEventListener('beforeunload', function (ev) {
      if (current && !current.cancelled) {
        ev.preventDefault();
        ev.returnValue = '';
      }
    });

    showUnfinished();
    offerResume(); // a browser may keep the chosen file across a reload
  }

  scheduleRefresh();
})();
