// The traveller's app, its page: one self-contained HTML document (no framework, no external assets),
// served by app-server.ts on 127.0.0.1. It holds no secret (the session cookie is HttpOnly) and no data
// of its own: it reads /api/overview, follows jobs by Server-Sent Events (/api/events) and starts them
// with POSTs. All text goes in through textContent, never innerHTML. Only this inline script may run
// (by its hash, as server/console-page.ts does). Accessibility: native controls with labels, one
// heading per desktop, progress in <progress> plus an aria-live sentence, sizes in rem (200% zoom
// reflows to one column), a visible focus ring.
import { createHash } from 'node:crypto';

export const APP_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>carryon: your desktops</title>
<style>
  :root { color-scheme: light; --ok: #0a6b2d; --warn: #8a4b00; --bad: #a4001d; --line: #c9c9c9; }
  body { font: 1rem/1.5 system-ui, sans-serif; margin: 0 auto; padding: 1rem; max-width: 62rem; color: #1b1b1b; background: #fff; }
  h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.25rem; margin: 0 0 .5rem; } h3 { font-size: 1.05rem; margin: 1rem 0 .25rem; }
  header p { margin: .25rem 0; color: #444; }
  .desktop { border: 1px solid var(--line); border-radius: .5rem; padding: 1rem; margin: 1rem 0; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .5rem 0; }
  dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
  .actions { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-top: .75rem; }
  button { font: inherit; padding: .4rem .9rem; border: 1px solid #333; border-radius: .35rem; background: #f3f3f3; cursor: pointer; }
  button.primary { background: #0b5cad; color: #fff; border-color: #0b5cad; }
  button:disabled { opacity: .55; cursor: not-allowed; }
  :focus-visible { outline: 3px solid #e66b00; outline-offset: 2px; }
  input { font: inherit; padding: .35rem; border: 1px solid #555; border-radius: .3rem; }
  label { display: inline-flex; flex-direction: column; gap: .1rem; }
  progress { width: 100%; height: 1.25rem; }
  .ready { color: #fff; background: var(--ok); padding: .5rem .75rem; border-radius: .35rem; font-weight: 700; }
  .notready { color: var(--warn); font-weight: 600; }
  .warning { border-left: .3rem solid var(--warn); padding: .25rem .75rem; background: #fff6e6; }
  .error { border-left: .3rem solid var(--bad); padding: .25rem .75rem; background: #fdecee; color: var(--bad); }
  .error:empty, .warning:empty, .notice:empty { display: none; }
  .notice { border-left: .3rem solid var(--ok); padding: .25rem .75rem; background: #eaf6ee; }
  pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f5f5f5; padding: .5rem; border-radius: .3rem; font-size: .9rem; }
  .conflicts li { margin-bottom: .5rem; } code { overflow-wrap: anywhere; }
  .muted { color: #555; }
  .job { margin-top: .75rem; } .conflicts ul { margin: .25rem 0; padding-left: 1.25rem; }
</style>
</head>
<body>
<header>
  <h1>carryon: your desktops</h1>
  <p id="who" class="muted"></p>
  <p id="update" class="muted"></p>
</header>
<main>
  <p id="error" class="error" role="alert"></p>
  <p id="offline" class="warning" role="status"></p>
  <div id="desktops" aria-busy="true"><p class="muted">Loading…</p></div>
</main>
<script>
(function () {
  'use strict';
  var data = null;
  var jobs = {};      // the newest job of each desktop
  var deadlines = {}; // desktop -> lease end in this browser's clock (the laptop's monotonic clock decides)

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { if (k === 'class') e.className = attrs[k]; else e.setAttribute(k, attrs[k]); });
    if (text != null) e.textContent = String(text);
    return e;
  }
  function bytes(n) { if (n == null) return 'unknown'; var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; var i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return n.toFixed(i ? 1 : 0) + ' ' + u[i]; }
  function duration(s) {
    if (s == null || !isFinite(s)) return 'unknown';
    s = Math.max(0, Math.round(s));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    return (d ? d + ' d ' : '') + (d || h ? h + ' h ' : '') + (d || h || m ? m + ' min ' : '') + sec + ' s';
  }
  function errorText(e) { return e && e.code ? e.message + ' (error ' + e.code + ')' : String(e && e.message || e); }
  function showError(e) { $('error').textContent = e ? errorText(e) : ''; }
  function call(method, path, body) {
    return fetch(path, { method: method, credentials: 'same-origin', headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (!r.ok) throw (j && j.error) || { code: 'HTTP_' + r.status, message: 'the app answered ' + r.status };
          return j;
        });
      });
  }
  function pair(dl, term, value, cls) { dl.appendChild(el('dt', null, term)); var dd = el('dd', cls ? { class: cls } : null, value); dl.appendChild(dd); return dd; }
  function btn(id, text, label, primary, onclick) {
    var b = el('button', { id: id, type: 'button', 'aria-label': label }, text);
    if (primary) b.className = 'primary';
    b.addEventListener('click', onclick);
    return b;
  }

  function leaseText(name) {
    var end = deadlines[name];
    if (end == null) return 'no offline lease';
    var left = (end - Date.now()) / 1000;
    return left <= 0 ? 'ran out: renew it online, or enter a code from your admin' : duration(left) + ' left';
  }
  function tick() {
    Object.keys(deadlines).forEach(function (n) { var t = $('lease-' + n); if (t) t.textContent = leaseText(n); });
  }

  function render() {
    var focused = document.activeElement && document.activeElement.id;
    var typed = {}; document.querySelectorAll('#desktops input').forEach(function (i) { typed[i.id] = i.value; });
    var root = $('desktops'); root.textContent = ''; root.setAttribute('aria-busy', 'false');
    $('who').textContent = 'carryon ' + data.version + ' \\u00b7 ' + (data.login ? 'this laptop is ' + data.login.deviceName + ', signed in to ' + data.login.url : 'not signed in: run carryon login URL --token TOKEN in a terminal') + ' \\u00b7 ' + data.home;
    $('offline').textContent = data.offline ? 'The server cannot be reached now, so only what this laptop holds is shown: ' + errorText(data.offline) : '';
    if (!data.desktops.length) root.appendChild(el('p', null, data.login ? 'No desktops are assigned to you yet.' : 'Nothing here yet.'));
    data.desktops.forEach(function (d) { root.appendChild(card(d)); });
    (data.jobs || []).slice().reverse().forEach(function (j) { if (!jobs[j.desktop] || jobs[j.desktop].id <= j.id) jobs[j.desktop] = j; });
    Object.keys(jobs).forEach(function (n) { if (!stale(jobs[n])) showJob(jobs[n]); });
    Object.keys(typed).forEach(function (id) { if ($(id)) $(id).value = typed[id]; });
    if (focused && $(focused)) $(focused).focus();
    tick();
  }

  function card(d) {
    var n = d.name, local = d.local, s = d.server;
    var held = local && (local.state === 'active' || local.state === 'streaming');
    var sec = el('section', { class: 'desktop', id: 'desktop-' + n, 'aria-labelledby': 'title-' + n, 'data-desktop': n });
    sec.appendChild(el('h2', { id: 'title-' + n }, n));
    var dl = el('dl');
    if (s) pair(dl, 'Size', bytes(s.size) + ' (version ' + s.version + ' on the server)');
    var holds = !local ? 'nothing yet' : local.state === 'active' || local.state === 'streaming' ? 'checked out here: version ' + local.version + ', ' + bytes(local.localBytes) + ' of ' + bytes(local.size) + ' local'
      : local.state === 'checked-in' ? 'a read-only copy of version ' + local.version + ' (checked in)' : local.state === 'downloading' ? 'an unfinished check-out: check out again to resume' : local.state === 'rolled-back' ? 'rolled back by an admin' : local.state;
    pair(dl, 'This laptop holds', holds, 'holds');
    if (d.toFetch != null) pair(dl, 'To download', bytes(d.toFetch) + (d.toFetchNote ? ' (' + d.toFetchNote + ')' : ''), 'to-fetch');
    if (s && s.heldBy && !s.heldHere) pair(dl, 'Checked out by', s.heldBy + ' (another device)');
    if (held && local.state === 'streaming') pair(dl, 'Streamed', local.readyToTravel ? 'every block has come down' : bytes(local.localBytes) + ' of ' + bytes(local.size) + ' local (' + (100 * local.localBytes / local.size).toFixed(1) + '%); ' + (local.etaSeconds != null ? 'about ' + duration(local.etaSeconds) + ' left at ' + bytes(local.rateBytesPerSec) + '/s' : local.servedBy ? 'estimating' : 'paused: start carryon serve ' + n + ', or press \u201cDownload the rest\u201d'), 'stream-state');
    if (held) {
      var lease = pair(dl, 'Offline lease', '', 'lease'); lease.id = 'lease-' + n;
      if (local.lease && local.lease.expiresAt) { deadlines[n] = Date.now() + local.lease.remainingMs; lease.title = 'until ' + local.lease.expiresAt; } else delete deadlines[n];
      pair(dl, 'Ready to travel', local.readyToTravel ? 'yes: every block is on this laptop' : 'not yet: ' + bytes(local.size - local.localBytes) + ' still on the server', local.readyToTravel ? 'travel-state' : 'travel-state notready');
      pair(dl, 'Running VM', local.servedBy ? 'carryon serve (pid ' + local.servedBy + ') is serving the disk' : local.openForWritingText ? 'in use: ' + local.openForWritingText : 'not running', 'vm-state');
      pair(dl, 'Written since check-out', local.blocksWritten == null ? 'counted at check-in (full scan: ' + (local.dirtyMap && local.dirtyMap.reason) + ')' : local.blocksWritten + ' blocks (' + bytes(local.bytesWritten) + ')', 'written');
      if (local.encryption && local.encryption.encrypted) pair(dl, 'Encryption', local.encryption.locked ? 'encrypted and locked: run carryon unlock' : 'encrypted at rest');
    }
    sec.appendChild(dl);
    if (local && local.state === 'rolled-back') sec.appendChild(el('p', { class: 'warning', role: 'status' }, 'An admin rolled this desktop back: ' + local.message));
    if (local && local.lease && local.lease.warning) sec.appendChild(el('p', { class: 'warning' }, local.lease.warning));
    (d.adminRequests || []).forEach(function (q) {
      sec.appendChild(el('p', { class: 'warning admin-request', role: 'status' }, q.kind === 'checkin'
        ? 'Your admin asked for a check-in of ' + n + ' (request #' + q.id + ', ' + q.state + '). Check it in when you can; the carryon agent does it at its next contact if it runs.'
        : 'Your admin asked for a ' + q.kind + ' of ' + n + ' (request #' + q.id + ', ' + q.state + ').'));
    });

    var acts = el('div', { class: 'actions' });
    if (!held && s && (!s.heldBy || s.heldHere)) {
      acts.appendChild(btn('checkout-' + n, 'Check out', 'Check out ' + n, true, function () { start('checkout', n); }));
      acts.appendChild(btn('stream-' + n, 'Check out, streamed', 'Check out ' + n + ' streamed: start the VM at once, blocks come as it reads them', false, function () { start('stream', n); }));
    }
    if (held && local.state === 'streaming' && !local.readyToTravel) acts.appendChild(btn('finish-' + n, 'Download the rest', 'Download the rest of ' + n + ' now (stop carryon serve first)', true, function () { start('checkout', n); }));
    if (held) {
      acts.appendChild(btn('checkin-' + n, 'Check in', 'Check in ' + n, true, function () { start('checkin', n); }));
      if (!local.servedBy) acts.appendChild(btn('serve-' + n, 'Start serving the disk', 'Serve the disk of ' + n + ' to a VM (carryon serve ' + n + ')', false, function () { serve(n, 'serve'); }));
      else if (d.vm && d.vm.servedByApp) acts.appendChild(btn('stop-serve-' + n, 'Stop serving', 'Stop serving the disk of ' + n + ' (shut the VM down first)', false, function () { serve(n, 'stop-serve'); }));
      acts.appendChild(btn('replicate-' + n, 'Make a restore point', 'Send a restore point of ' + n + ' to the server now', false, function () { start('replicate', n); }));
      acts.appendChild(btn('renew-' + n, 'Renew lease', 'Renew the offline lease of ' + n + ' now (needs the server)', false, function () { renew(n, undefined); }));
      var lab = el('label', { for: 'code-' + n }, 'Code from your admin');
      var inp = el('input', { id: 'code-' + n, name: 'code', autocomplete: 'off', spellcheck: 'false', size: '22' });
      lab.appendChild(inp); acts.appendChild(lab);
      acts.appendChild(btn('use-code-' + n, 'Use code', 'Renew the lease of ' + n + ' with the code from your admin', false, function () { var c = inp.value.trim(); if (c) renew(n, c); else { showError({ code: 'INVALID_ARGUMENT', message: 'type the code your admin read out first' }); inp.focus(); } }));
    }
    sec.appendChild(acts);

    var job = el('div', { id: 'job-' + n, class: 'job', 'aria-live': 'polite' });
    var prog = el('progress', { id: 'progress-' + n, max: '100', value: '0', 'aria-label': 'progress of ' + n, hidden: '' });
    job.appendChild(prog);
    job.appendChild(el('p', { id: 'progress-text-' + n, class: 'progress-text' }));
    job.appendChild(el('p', { id: 'travel-' + n, role: 'status' }));
    job.appendChild(el('div', { id: 'result-' + n }));
    sec.appendChild(job);

    if (held && d.vm) {
      var det = el('details', local.servedBy ? { open: '' } : null); det.appendChild(el('summary', null, 'Start the VM on this copy'));
      det.appendChild(el('p', null, local.servedBy ? 'The disk is served now. Start QEMU with:' : '1. Press \u201cStart serving the disk\u201d (or in a terminal: ' + d.vm.serve + ').  2. Then QEMU:'));
      det.appendChild(el('pre', { class: 'qemu' }, d.vm.qemuLine));
      det.appendChild(el('p', null, 'or, in a libvirt domain\\u2019s <devices>:'));
      det.appendChild(el('pre', { class: 'libvirt' }, d.vm.libvirtXml));
      sec.appendChild(det);
    }
    return sec;
  }

  // A finished job's result holds only while the copy is still as it left it: a check-out's "ready to
  // travel" goes once the desktop is checked in (here, or by the agent) or rolled back.
  function stale(j) {
    if (j.state !== 'done') return false;
    var d = data && data.desktops.filter(function (x) { return x.name === j.desktop; })[0];
    var st = d && d.local ? d.local.state : null;
    if (j.kind === 'checkin') return st !== 'checked-in';
    return st !== 'active' && st !== 'streaming';
  }
  function showJob(j) {
    var n = j.desktop, prog = $('progress-' + n), text = $('progress-text-' + n), travel = $('travel-' + n), res = $('result-' + n);
    if (!prog) return;
    var pct = j.total > 0 ? Math.min(100, 100 * j.done / j.total) : (j.state === 'done' ? 100 : 0);
    var what = { checkout: 'Check-out', stream: 'Streamed check-out', checkin: 'Check-in', replicate: 'Restore point' }[j.kind];
    if (j.state === 'running') {
      prog.hidden = false; prog.value = pct;
      text.textContent = what + ' running (' + j.phase + '): ' + pct.toFixed(0) + '%, ' + bytes(j.done) + ' of ' + bytes(j.total) + ', ' + bytes(j.rateBytesPerSec) + '/s, ' + (j.etaSeconds == null ? 'estimating time left' : 'about ' + duration(j.etaSeconds) + ' left');
      if (j.kind === 'checkout' || j.kind === 'stream') { travel.className = 'notready'; travel.textContent = 'Not ready to travel yet: stay online until the check-out reaches 100%.' + (navigator.onLine ? '' : ' This laptop seems to be offline now: the check-out cannot finish.'); }
      document.querySelectorAll('#desktop-' + n + ' .actions button').forEach(function (b) { b.disabled = true; });
      return;
    }
    prog.hidden = j.state !== 'done'; prog.value = j.state === 'done' ? 100 : prog.value;
    res.textContent = '';
    if (j.state === 'failed') {
      text.textContent = '';
      travel.textContent = ''; travel.className = '';
      res.appendChild(el('p', { class: 'error', role: 'alert' }, what + ' failed: ' + errorText(j.error)));
      return;
    }
    var r = j.result || {};
    if (j.kind === 'checkout') {
      text.textContent = 'Check-out finished: 100%, ' + bytes(r.bytesReceived) + ' received in ' + duration(r.seconds) + '.';
      if (r.readyToTravel) { travel.className = 'ready'; travel.textContent = 'Ready to travel: every block of ' + n + ' is on this laptop.'; }
      else { travel.className = 'warning'; travel.textContent = 'Not ready to travel: part of ' + n + ' is still on the server.'; }
    } else if (j.kind === 'stream') {
      text.textContent = 'Streamed check-out ready: ' + (r.streaming ? r.streaming.localBytes + ' of ' + r.streaming.blocks + ' blocks local' : '') + '. Start the VM now (below); carryon serve fetches blocks as the VM reads them and downloads the rest.';
      if (r.readyToTravel) { travel.className = 'ready'; travel.textContent = 'Ready to travel: every block of ' + n + ' is on this laptop.'; }
      else { travel.className = 'warning'; travel.textContent = 'Not ready to travel yet: stay online until every block is here (see Streamed above).'; }
    } else if (j.kind === 'checkin') {
      travel.textContent = ''; travel.className = '';
      text.textContent = 'Checked in: version ' + r.previousVersion + ' \\u2192 ' + r.version + ', ' + r.blocksChanged + ' blocks changed, ' + bytes(r.bytesSent) + ' sent.';
      var p = r.persona;
      var h = el('h3', { id: 'merge-' + n }, 'Merge report'); res.appendChild(h);
      if (!p) res.appendChild(el('p', null, 'No persona was checked in.'));
      else if (!r.conflicts.length) res.appendChild(el('p', { class: 'merge-summary' }, p.merged ? 'Your profile was merged with changes made elsewhere meanwhile: no conflicts.' : 'Your profile went in as it is: nothing was changed elsewhere.'));
      else {
        res.appendChild(el('p', { class: 'merge-summary' }, r.conflicts.length + (r.conflicts.length === 1 ? ' conflict' : ' conflicts') + ': both sides changed the same thing. Both copies are kept where shown.'));
        var ul = el('ul', { class: 'conflicts', 'aria-labelledby': 'merge-' + n });
        r.conflicts.forEach(function (c) {
          var li = el('li', { 'data-path': c.path });
          li.appendChild(el('strong', null, c.path)); li.appendChild(document.createTextNode(': ' + c.resolution + '.'));
          var both = el('ul');
          var one = el('li', null, 'At its place: '); one.appendChild(el('code', { class: 'at' }, c.at)); both.appendChild(one);
          if (c.keptCopy) { var two = el('li', null, 'The other version, kept beside it: '); two.appendChild(el('code', { class: 'kept' }, c.keptCopy)); both.appendChild(two); }
          li.appendChild(both);
          ul.appendChild(li);
        });
        res.appendChild(ul);
      }
    } else {
      text.textContent = 'Restore point #' + r.restorePoint + ' sent: ' + r.blocksChanged + ' blocks changed since check-out, ' + bytes(r.bytesSent) + ' sent.';
    }
  }

  function start(kind, n) {
    showError(null);
    call('POST', '/api/desktops/' + encodeURIComponent(n) + '/' + kind).then(function (r) { jobs[n] = r.job; showJob(r.job); }, showError);
  }
  function renew(n, code) {
    showError(null);
    call('POST', '/api/desktops/' + encodeURIComponent(n) + '/renew', code ? { code: code } : {}).then(function (r) {
      return refresh().then(function () { var t = $('result-' + n); if (t) { t.textContent = ''; t.appendChild(el('p', { class: 'notice', role: 'status' }, 'The offline lease of ' + n + ' now runs until ' + r.leaseExpiresAt + (r.code ? ' (code #' + r.code.seq + '; the server learns of it at the next contact).' : '.'))); } });
    }, showError);
  }
  function checkUpdate() {
    call('GET', '/api/update').then(function (u) {
      $('update').textContent = u.status === 'up-to-date' ? 'carryon ' + u.running + ' is the version your company offers: up to date.'
        : u.status === 'available' ? 'carryon ' + u.offered + ' is offered (this laptop runs ' + u.running + '): run carryon update, or let the agent install it.'
        : u.status === 'skipped-failed' ? 'carryon ' + u.offered + ' is offered but did not start here before: ask your admin.' : '';
    }, function (e) { $('update').textContent = e && e.code === 'RELEASE_NOT_FOUND' ? 'Your company\u2019s server offers no client updates (yet).' : 'Client updates: ' + errorText(e); });
  }
  function serve(n, what) {
    showError(null);
    document.querySelectorAll('#desktop-' + n + ' .actions button').forEach(function (b) { b.disabled = true; });
    call('POST', '/api/desktops/' + encodeURIComponent(n) + '/' + what).then(refresh, function (e) { showError(e); return refresh(); });
  }
  function refresh() {
    return call('GET', '/api/overview').then(function (o) { data = o; render(); }, showError);
  }
  function listen() {
    var es = new EventSource('/api/events');
    es.addEventListener('job', function (ev) {
      var j = JSON.parse(ev.data); jobs[j.desktop] = j;
      if (j.state === 'running') showJob(j); else refresh().then(function () { showJob(j); });
    });
  }
  window.addEventListener('offline', function () { Object.keys(jobs).forEach(function (n) { if (jobs[n].state === 'running') showJob(jobs[n]); }); });
  refresh().then(listen).then(checkUpdate);
  setInterval(tick, 1000);
  // A streamed copy grows while carryon serve downloads it: show it every few seconds.
  setInterval(function () {
    var growing = data && data.desktops.some(function (d) { return d.local && d.local.state === 'streaming' && !d.local.readyToTravel; });
    var busy = Object.keys(jobs).some(function (n) { return jobs[n].state === 'running'; });
    if (growing && !busy) refresh();
  }, 3000);
})();
</script>
</body>
</html>
`;

/** Only this page's own inline script may run (by its hash): an injected script would not. */
const script = /<script>([\s\S]*)<\/script>/.exec(APP_HTML)![1]!;
export const APP_CSP = `default-src 'none'; script-src 'sha256-${createHash('sha256').update(script).digest('base64')}'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
