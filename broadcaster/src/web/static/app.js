// Distributary index page: upload with a progress bar, errors from the server, and a list that refreshes while
// videos are processing. Without this script the form still works (plain POST, then the server's 303 to /).
'use strict';
(function () {
  var form = document.getElementById('upload-form');
  var uploading = false;

  function $(id) { return document.getElementById(id); }

  // The server's error message from a failed upload: JSON {"error": ...}, an HTML page, or plain text.
  function errorText(xhr) {
    var body = xhr.responseText || '';
    var type = xhr.getResponseHeader('Content-Type') || '';
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
    text = text.replace(/\s+/g, ' ').trim();
    if (text.length > 400) text = text.slice(0, 400) + '…';
    return text;
  }

  function showError(message) {
    var box = $('upload-error');
    box.textContent = message;
    box.hidden = false;
  }

  function setProgress(percent, message) {
    var bar = $('upload-progress');
    if (percent === null) {
      bar.removeAttribute('value'); // indeterminate: the server is transcoding
    } else {
      bar.value = percent;
      $('upload-percent').textContent = percent + '%';
    }
    if (message !== undefined) $('upload-message').textContent = message;
  }

  function finish() {
    uploading = false;
    $('upload-button').disabled = false;
    form.removeAttribute('aria-busy');
  }

  if (form && window.XMLHttpRequest && window.FormData) {
    form.addEventListener('submit', function (ev) {
      var input = $('upload-file');
      if (!input.files || input.files.length === 0) return; // let the browser say the field is required
      ev.preventDefault();
      if (uploading) return;
      uploading = true;
      var file = input.files[0];
      $('upload-error').hidden = true;
      $('upload-status').hidden = false;
      $('upload-button').disabled = true;
      form.setAttribute('aria-busy', 'true');
      setProgress(0, 'Uploading ' + file.name + '…');

      var xhr = new XMLHttpRequest();
      xhr.open('POST', form.getAttribute('action'));
      // Errors as JSON ({"error": ...}); without this header a browser form gets them as an HTML page.
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.upload.addEventListener('progress', function (e) {
        if (e.lengthComputable && e.total > 0) {
          setProgress(Math.floor((e.loaded / e.total) * 100));
        }
      });
      xhr.upload.addEventListener('load', function () {
        setProgress(100);
        setProgress(null, 'Uploaded. Transcoding; the video will be listed when it is ready to play…');
      });
      xhr.addEventListener('load', function () {
        if (xhr.status >= 200 && xhr.status < 400) {
          // The server answers 303 to / once the video is playable; XMLHttpRequest followed it.
          setProgress(100, 'Ready.');
          uploading = false;
          window.location.assign('/');
          return;
        }
        finish();
        setProgress(0, '');
        $('upload-status').hidden = true;
        var why = errorText(xhr);
        showError('Upload failed (' + xhr.status + (xhr.statusText ? ' ' + xhr.statusText : '') + ')' +
          (why ? ': ' + why : '.'));
      });
      xhr.addEventListener('error', function () {
        finish();
        $('upload-status').hidden = true;
        showError('Upload failed: the connection to the server was lost.');
      });
      xhr.addEventListener('abort', function () {
        finish();
        $('upload-status').hidden = true;
        showError('Upload cancelled.');
      });
      xhr.send(new FormData(form));
    });

    window.addEventListener('beforeunload', function (ev) {
      if (uploading) {
        ev.preventDefault();
        ev.returnValue = '';
      }
    });
  }

  // While some video is processing, refresh the list every few seconds (not during an upload of our own).
  function processingCount(root) {
    var list = root.getElementById ? root.getElementById('videos') : null;
    return list ? parseInt(list.getAttribute('data-processing') || '0', 10) : 0;
  }

  function refreshList() {
    if (uploading || processingCount(document) === 0) return;
    fetch('/', { cache: 'no-store', headers: { Accept: 'text/html' } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html').getElementById('videos');
        var current = document.getElementById('videos');
        if (fresh && current && !uploading) current.replaceWith(document.importNode(fresh, true));
      })
      .catch(function () { /* try again on the next tick */ })
      .then(function () {
        if (processingCount(document) > 0) setTimeout(refreshList, 5000);
      });
  }
  if (processingCount(document) > 0) setTimeout(refreshList, 5000);
})();
