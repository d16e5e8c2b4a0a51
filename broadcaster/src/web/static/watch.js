// Distributary watch page: plays the video's DASH manifest with dash.js and offers a quality selector
// (Auto = adaptive bitrate, or one fixed video representation).
'use strict';
(function () {
  var video = document.getElementById('player');
  var select = document.getElementById('quality');
  var current = document.getElementById('current-quality');
  var errorBox = document.getElementById('player-error');
  if (!video) return;

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function label(rep) {
    var parts = [];
    if (rep.height) parts.push(rep.height + 'p');
    else if (rep.width) parts.push(rep.width + 'w');
    var kbps = rep.bandwidth ? Math.round(rep.bandwidth / 1000) : (rep.bitrateInKbit ? Math.round(rep.bitrateInKbit) : 0);
    if (kbps) parts.push(kbps + ' kb/s');
    return parts.length ? parts.join(' · ') : 'Representation ' + rep.id;
  }

  if (typeof window.dashjs === 'undefined') {
    showError('The video player (dash.js) could not be loaded from /assets/dash.all.min.js. ' +
      'The server needs `npm ci --prefix web` to install it.');
    return;
  }

  var manifest = video.getAttribute('data-manifest');
  var player = window.dashjs.MediaPlayer().create();
  var events = window.dashjs.MediaPlayer.events;
  window.distributaryPlayer = player; // for debugging and the browser test

  player.updateSettings({ debug: { logLevel: window.dashjs.Debug.LOG_LEVEL_WARNING } });
  player.initialize(video, manifest, false);

  function fillQualities() {
    var reps = (player.getRepresentationsByType('video') || []).slice();
    reps.sort(function (a, b) { return (b.height || 0) - (a.height || 0) || (b.bandwidth || 0) - (a.bandwidth || 0); });
    while (select.options.length > 1) select.remove(1);
    reps.forEach(function (rep) {
      var opt = document.createElement('option');
      opt.value = String(rep.id);
      opt.textContent = label(rep);
      select.appendChild(opt);
    });
    select.disabled = reps.length === 0;
  }

  player.on(events.STREAM_INITIALIZED, fillQualities);

  player.on(events.QUALITY_CHANGE_RENDERED, function (e) {
    if (e.mediaType === 'video' && e.newRepresentation) {
      current.textContent = 'Playing ' + label(e.newRepresentation) +
        (select.value === 'auto' ? ' (auto)' : '');
    }
  });

  player.on(events.ERROR, function (e) {
    var err = e && e.error;
    var msg = err && (err.message || err.code) ? (err.message || ('code ' + err.code)) : 'unknown error';
    showError('Playback error: ' + msg);
  });

  select.addEventListener('change', function () {
    if (select.value === 'auto') {
      player.updateSettings({ streaming: { abr: { autoSwitchBitrate: { video: true } } } });
    } else {
      player.updateSettings({ streaming: { abr: { autoSwitchBitrate: { video: false } } } });
      player.setRepresentationForTypeById('video', select.value, true);
    }
  });
})();
