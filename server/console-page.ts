// The admin web console: one self-contained page served at /console (no framework, no external
// assets). It keeps the admin's token in sessionStorage and calls the admin HTTP API with it: the
// page holds no data of its own. All text goes in through textContent, never innerHTML.
import { createHash } from 'node:crypto';
import { RECOMPOSE_SURVIVES } from './recompose.js';

export const CONSOLE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>carryon console</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
  th { background: #f4f4f4; }
  .expired { color: #b00; font-weight: bold; } .warn { color: #b60; }
  button { margin-right: 4px; } #error { color: #b00; } .muted { color: #777; }
  #notice { background: #eef6ee; } #notice:empty { display: none; } #notice code { font-size: 1.2em; }
</style>
</head>
<body>
<h1>carryon console</h1>
<form id="login">
  <label>Admin token <input id="token" type="password" size="50" autocomplete="off"></label>
  <button id="login-button" type="submit">Log in</button>
</form>
<div id="app" hidden>
  <p><span id="whoami"></span> · <a href="#" id="logout">log out</a> · <span class="muted" id="updated"></span></p>
  <p id="error" role="alert"></p>
  <p id="notice" role="status"></p>
  <h2>Checkouts</h2>
  <table id="checkouts">
    <thead><tr><th>desktop</th><th>user</th><th>device</th><th>since</th><th>lease</th><th>last contact</th><th>pending</th><th>encryption</th><th>requests</th><th>actions</th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Storage: what sharing saves</h2>
  <p id="sharing-totals"></p>
  <table id="sharing-images"><thead><tr><th>image</th><th>versions</th><th>newest</th><th>data (newest)</th><th>stored (all versions)</th><th>desktops on it</th></tr></thead><tbody></tbody></table>
  <table id="sharing-desktops"><thead><tr><th>desktop</th><th>on image</th><th>shared with the image</th><th>its own (stored)</th><th>only in earlier versions and restore points (stored)</th><th>actions</th></tr></thead><tbody></tbody></table>
  <h2>Requests</h2>
  <table id="requests"><thead><tr><th>#</th><th>kind</th><th>desktop</th><th>state</th><th>by</th><th>updated</th><th>detail</th></tr></thead><tbody></tbody></table>
  <h2>Audit log</h2>
  <table id="audit"><thead><tr><th>when</th><th>who</th><th>from</th><th>what</th><th>target</th><th>detail</th></tr></thead><tbody></tbody></table>
</div>
<script>
(function () {
  var API = '/v1';
  var SURVIVES = ${JSON.stringify(RECOMPOSE_SURVIVES)};
  var data = { checkouts: [] };
  function token() { return sessionStorage.getItem('carryon-token'); }
  function call(method, path, body) {
    return fetch(API + path, { method: method, headers: Object.assign({ authorization: 'Bearer ' + token() }, body ? { 'content-type': 'application/json' } : {}), body: body ? JSON.stringify(body) : undefined })
      .then(function (r) { return r.json().then(function (j) { if (!r.ok) { var e = new Error((j.error && (j.error.code + ': ' + j.error.message)) || ('HTTP ' + r.status)); e.status = r.status; throw e; } return j; }); });
  }
  function cell(tr, text, cls) { var td = document.createElement('td'); td.textContent = text == null ? '' : String(text); if (cls) td.className = cls; tr.appendChild(td); return td; }
  function bytes(n) { if (n == null) return 'unknown'; var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; var i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return n.toFixed(i ? 1 : 0) + ' ' + u[i]; }
  function countdown(iso) {
    if (!iso) return { text: 'no lease', cls: '' };
    var s = Math.round((Date.parse(iso) - Date.now()) / 1000);
    if (s <= 0) return { text: 'expired', cls: 'expired' };
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    return { text: (d ? d + 'd ' : '') + h + 'h ' + m + 'm ' + sec + 's', cls: s < 86400 ? 'warn' : '' };
  }
  function notice(before, code, after) {
    var p = document.getElementById('notice'); p.textContent = before;
    if (code) { var k = document.createElement('code'); k.textContent = code; p.appendChild(k); p.appendChild(document.createTextNode(after)); }
  }
  function showError(e) { document.getElementById('error').textContent = e ? String(e.message || e) : ''; }
  function button(td, label, name, action) { var b = document.createElement('button'); b.textContent = label; b.name = name; b.onclick = action; td.appendChild(b); }
  function renderCheckouts() {
    var tb = document.querySelector('#checkouts tbody'); tb.textContent = '';
    data.checkouts.forEach(function (c) {
      var tr = document.createElement('tr'); tr.dataset.desktop = c.desktop; tr.dataset.checkout = c.checkoutId;
      cell(tr, c.desktop); cell(tr, c.user); cell(tr, c.deviceName); cell(tr, c.since);
      var cd = countdown(c.leaseExpiresAt); var lease = cell(tr, cd.text, cd.cls + ' lease'); lease.dataset.expires = c.leaseExpiresAt || '';
      cell(tr, c.lastContactAt || 'never'); cell(tr, c.pendingBytes == null ? 'unknown' : bytes(c.pendingBytes) + ' in ' + c.pendingBlocks + ' blocks', 'pending');
      cell(tr, c.escrow ? 'encrypted (key check ' + c.escrow.keyCheck + ')' : c.encryptionRequired ? 'required; key not escrowed yet' : 'plaintext copy', 'encryption');
      cell(tr, c.openRequests.map(function (q) { return q.kind + ': ' + q.state; }).join(', '), 'open-requests');
      var td = cell(tr, '');
      button(td, 'Force check-in', 'checkin', function () { call('POST', '/admin/checkouts/' + c.checkoutId + '/checkin').then(refresh, showError); });
      button(td, 'Extend lease', 'extend', function () {
        var d = Number(prompt('Extend the lease of ' + c.desktop + ' by how many days?', '7'));
        if (d > 0) call('POST', '/admin/checkouts/' + c.checkoutId + '/lease', { days: d }).then(function (x) {
          notice('The server\u2019s lease of ' + x.desktop + ' now ends ' + x.leaseExpiresAt + '. The laptop (' + x.deviceName + ') learns this only at its next contact with the server (last contact: ' + (x.lastContactAt || 'never') + '). If it is offline, press \u201cLease code\u201d and read the code to the user.');
          return refresh();
        }, showError);
      });
      button(td, 'Lease code', 'lease-code', function () {
        var d = Number(prompt('A code to extend the lease of ' + c.desktop + ' offline by how many whole days (1-255)?', '7'));
        if (d > 0) call('POST', '/admin/checkouts/' + c.checkoutId + '/lease-code', { days: d }).then(function (x) {
          notice('Lease code for ' + x.desktop + ': ', x.code, ' \u2014 the user types: carryon renew ' + x.desktop + ' --code ' + x.code + '. The lease then runs until ' + x.leaseExpiresAt + '. The server\u2019s lease moves when the laptop reports the code, at its next contact.');
          return refresh();
        }, showError);
      });
      if (c.escrow) button(td, 'Recovery code', 'recovery-code', function () {
        if (confirm('Show the recovery code of ' + c.desktop + ' on ' + c.deviceName + '? It opens that laptop\u2019s encrypted copy; the reveal is audited.')) call('POST', '/admin/checkouts/' + c.checkoutId + '/recovery-code').then(function (x) {
          notice('Recovery code for ' + x.desktop + ' on ' + x.deviceName + ' (key check ' + x.keyCheck + '): ', x.code, ' \u2014 the user types: carryon unlock ' + x.desktop + ' --recovery-code CODE, then chooses a new passphrase.');
        }, showError);
      });
      button(td, 'Roll back', 'rollback', function () { if (confirm('Roll ' + c.desktop + ' back to its last server version? Changes on the laptop not checked in are discarded.')) call('POST', '/admin/checkouts/' + c.checkoutId + '/rollback').then(refresh, showError); });
      tb.appendChild(tr);
    });
    if (!data.checkouts.length) { var tr = document.createElement('tr'); cell(tr, 'no active checkouts', 'muted'); tb.appendChild(tr); }
  }
  function renderRows(sel, rows, cols) {
    var tb = document.querySelector(sel + ' tbody'); tb.textContent = '';
    rows.forEach(function (r) { var tr = document.createElement('tr'); cols.forEach(function (f) { var v = f(r); cell(tr, v && typeof v === 'object' ? JSON.stringify(v) : v); }); tr.dataset.id = r.id; tb.appendChild(tr); });
  }
  function tick() { document.querySelectorAll('#checkouts td.lease').forEach(function (td) { var cd = countdown(td.dataset.expires); td.textContent = cd.text; td.className = cd.cls + ' lease'; }); }
  function refresh() {
    return Promise.all([call('GET', '/admin/checkouts'), call('GET', '/admin/requests'), call('GET', '/admin/audit?limit=100')]).then(function (r) {
      data.checkouts = r[0].checkouts; renderCheckouts();
      renderRows('#requests', r[1].requests, [function (q) { return q.id; }, function (q) { return q.kind; }, function (q) { return q.desktop; }, function (q) { return q.state; }, function (q) { return q.requestedBy; }, function (q) { return q.updatedAt; }, function (q) { return q.summary; }]);
      renderRows('#audit', r[2].audit, [function (a) { return a.at; }, function (a) { return a.actor + (a.device ? ' on ' + (a.deviceName || a.device) : ''); }, function (a) { return a.address; }, function (a) { return a.action; }, function (a) { return a.target; }, function (a) { return a.detail; }]);
      document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString(); showError(null);
    }, function (e) {
      // A token revoked (or refused) meanwhile: polling again would only fail again; back to the login.
      if (e.status === 401 || e.status === 403) return logOut(e.message + ' \u2014 log in again with the admin\u2019s own token');
      showError(e);
    });
  }
  function size(n) { var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(1) : String(n)) + ' ' + u[i]; }
  function refreshSharing() {
    return call('GET', '/admin/sharing').then(function (r) {
      var t = r.totals;
      document.getElementById('sharing-totals').textContent = size(t.logicalBytes) + ' of disks (every image\u2019s newest version and every desktop, as full copies of their data) stored as ' + size(t.storedBytes) + ': ' + (t.saving * 100).toFixed(1) + '% saved (linked-clone products promised \u201cup to 90%\u201d)';
      renderRows('#sharing-images', r.images, [function (i) { return i.image; }, function (i) { return i.versions; }, function (i) { return i.newestVersion; }, function (i) { return size(i.logicalBytes); }, function (i) { return size(i.held.storedBytes); }, function (i) { return i.desktops; }]);
      var tb = document.querySelector('#sharing-desktops tbody'); tb.textContent = '';
      r.desktops.forEach(function (d) {
        var tr = document.createElement('tr'); tr.dataset.desktop = d.desktop;
        cell(tr, d.desktop); cell(tr, d.image + ' v' + d.imageVersion); cell(tr, size(d.sharedWithImage.bytes));
        cell(tr, size(d.unique.bytes) + ' (' + size(d.unique.storedBytes) + ')'); cell(tr, size(d.restorePointsOnly.bytes) + ' (' + size(d.restorePointsOnly.storedBytes) + ')');
        button(cell(tr, ''), 'Refresh', 'refresh', function () {
          if (!confirm('Refresh ' + d.desktop + ' onto the newest version of image ' + d.image + '? ' + SURVIVES)) return;
          call('POST', '/admin/desktops/' + encodeURIComponent(d.desktop) + '/refresh').then(function (o) {
            notice(o.state === 'done' ? o.desktop + ' is now version ' + o.version + ', on image ' + o.image + ' version ' + o.imageVersion + '; its previous disk is kept as version ' + o.keptVersion + ' (carryon-server admin restore ' + o.desktop + ' --version ' + o.keptVersion + ' brings it back). The user\u2019s persona is unchanged.'
              : o.state === 'queued' ? o.desktop + ' is checked out: it moves to image ' + o.image + '\u2019s newest version when that checkout ends, after its check-in is in.'
              : o.desktop + ' is already on image ' + o.image + ' version ' + o.imageVersion + ': nothing changed.');
            return refreshSharing();
          }, showError);
        });
        tb.appendChild(tr);
      });
    }, showError);
  }
  var timers = [];
  function logOut(why) {
    timers.forEach(clearInterval); timers = [];
    sessionStorage.removeItem('carryon-token');
    document.getElementById('app').hidden = true; document.getElementById('login').hidden = false;
    showLoginError(why);
  }
  function start() {
    call('GET', '/whoami').then(function (w) {
      if (!w.admin) throw new Error(w.user + ' is not an admin');
      if (w.device) throw new Error('This is the token of the laptop \u201c' + (w.deviceName || w.device) + '\u201d (a device token, made by carryon login), not ' + w.user + '\u2019s own admin token: admin actions never accept a laptop\u2019s token. Paste the token that carryon-server user add ' + w.user + ' --admin printed (or ask for a new admin user).');
      document.getElementById('whoami').textContent = 'logged in as ' + w.user;
      document.getElementById('login').hidden = true; document.getElementById('app').hidden = false;
      var p = document.getElementById('login-error'); if (p) p.textContent = '';
      refresh(); refreshSharing(); timers.push(setInterval(refresh, 2000), setInterval(tick, 1000), setInterval(refreshSharing, 30000));
    }).catch(function (e) { sessionStorage.removeItem('carryon-token'); document.getElementById('login').hidden = false; showLoginError(e); });
  }
  function showLoginError(e) { var p = document.getElementById('login-error'); if (!p) { p = document.createElement('p'); p.id = 'login-error'; p.style.color = '#b00'; document.getElementById('login').appendChild(p); } p.textContent = String(e.message || e); }
  document.getElementById('login').onsubmit = function (ev) { ev.preventDefault(); sessionStorage.setItem('carryon-token', document.getElementById('token').value.trim()); start(); };
  document.getElementById('logout').onclick = function (ev) { ev.preventDefault(); sessionStorage.removeItem('carryon-token'); location.reload(); };
  if (token()) start();
})();
</script>
</body>
</html>
`;

/** Only this page's own inline script may run (by its hash): an injected script would not. */
const script = /<script>([\s\S]*)<\/script>/.exec(CONSOLE_HTML)![1]!;
export const CONSOLE_CSP = `default-src 'none'; script-src 'sha256-${createHash('sha256').update(script).digest('base64')}'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
