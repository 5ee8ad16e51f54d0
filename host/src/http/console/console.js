// Quiver web console: one page over the broker's JSON API (/api/...).
//
// Layout of this file:
//   1. DOM and formatting helpers (all text goes through textContent, never innerHTML)
//   2. API calls, the session (token in sessionStorage), login and logout
//   3. Routing, the 2-second live refresh, notices, actions and two-click confirms
//   4. Shared pieces: position parsing, the record browser, the lag chart
//   5. One object per view: setup() builds the static part (forms) once, load() fetches,
//      render() refills the live region with what load() returned
'use strict';

(() => {
  // ---- 1. DOM and formatting helpers -------------------------------------------------

  const $ = (sel) => document.querySelector(sel);
  const enc = encodeURIComponent;

  /** Creates an element. props: class, text, dataset, on (events), or attributes. */
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else if (k in el && typeof el[k] !== 'function' && k !== 'spellcheck') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    add(el, kids);
    return el;
  }

  function add(el, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid == null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
  }

  /** Creates an SVG element with attributes. */
  function svg(tag, attrs, ...kids) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    add(el, kids);
    return el;
  }

  const NF = new Intl.NumberFormat('en-US');
  const fmtNum = (n) => (n == null ? '—' : NF.format(n));

  function fmtBytes(n) {
    if (n == null) return '—';
    if (n < 1024) return `${NF.format(n)} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
  }

  /** A time as ISO 8601 (UTC), without milliseconds. */
  function fmtTime(ms) {
    if (ms == null) return '—';
    const d = new Date(ms);
    return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  /** A record's time: ISO 8601 with milliseconds. */
  function isoTime(ms) {
    const d = new Date(ms);
    return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString();
  }

  /** A duration: "3d 4h", "4h 5m", "5m 6s", "6s", "250 ms". */
  function fmtDuration(ms) {
    if (ms == null) return '—';
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    const s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d) return hr ? `${d}d ${hr}h` : `${d}d`;
    if (hr) return m ? `${hr}h ${m}m` : `${hr}h`;
    if (m) return sec ? `${m}m ${sec}s` : `${m}m`;
    return `${sec}s`;
  }

  /** A serde enum value as [variant, data]: "Sync" or {"Variant": data}. */
  function variant(v) {
    if (v == null) return ['', null];
    if (typeof v === 'string') return [v, null];
    const k = Object.keys(v)[0];
    return [k, v[k]];
  }

  function fmtRetention(r) {
    if (!r) return '—';
    const parts = [];
    if (r.max_age_ms != null) parts.push(`age ≤ ${fmtDuration(r.max_age_ms)}`);
    if (r.max_bytes != null) parts.push(`≤ ${fmtBytes(r.max_bytes)}`);
    if (r.max_records != null) parts.push(`≤ ${fmtNum(r.max_records)} records`);
    return parts.length ? parts.join(', ') : 'unlimited';
  }

  function fmtDurability(d) {
    const [name, data] = variant(d);
    if (name === 'Batched') return `batched (${fmtNum(data.interval_ms)} ms)`;
    return name.toLowerCase();
  }

  function fmtStartAt(s) {
    const [name, data] = variant(s);
    if (name === 'Offset') return `offset ${fmtNum(data)}`;
    if (name === 'Timestamp') return `time ${fmtTime(data)}`;
    return name.toLowerCase();
  }

  /** A u128 id: exact only when the server sends it as a string. */
  function fmtId(id) {
    if (id == null) return 'not reached yet';
    return typeof id === 'string' ? id : 'reached';
  }

  const topicHash = (n) => `#/topics/${enc(n)}`;
  const groupHash = (n) => `#/groups/${enc(n)}`;
  const dlqHash = (n) => `#/dead-letters/${enc(n)}`;
  const topicLink = (n) => h('a', { href: topicHash(n) }, n);
  const dash = () => h('span', { class: 'muted' }, '—');
  const sum = (xs, f) => xs.reduce((a, x) => a + (f(x) || 0), 0);

  // Table cells: text, numbers, bytes.
  const td = (...kids) => h('td', null, ...kids);
  const tn = (n) => h('td', { class: 'num' }, fmtNum(n));
  const tb = (n) => h('td', { class: 'num' }, fmtBytes(n));

  /** A table. A column label starting with ">" is numeric (right-aligned). */
  function table(cols, rows, empty, cls) {
    const head = h('tr', null, cols.map((c) => (c.startsWith('>')
      ? h('th', { class: 'num', scope: 'col' }, c.slice(1))
      : h('th', { scope: 'col' }, c))));
    const body = h('tbody', null, rows);
    if (!rows.length && empty) {
      body.append(h('tr', { class: 'empty' }, h('td', { colspan: cols.length }, empty)));
    }
    return h('div', { class: 'table-wrap' }, h('table', { class: cls || 'grid' }, h('thead', null, head), body));
  }

  /** A definition list from [label, value] pairs; values may be nodes. */
  function facts(pairs, cls) {
    return h('dl', { class: cls || 'facts' }, pairs.filter(Boolean).map(([k, v]) => [
      h('dt', null, k), h('dd', null, v == null || v === '' ? dash() : v),
    ]));
  }

  function fig(key, label, value, cls, href) {
    const val = h('div', { class: 'fig-value', dataset: { figure: key } }, value);
    const box = h(href ? 'a' : 'div', { class: `fig ${cls || ''}`, href }, h('div', { class: 'fig-label' }, label), val);
    return box;
  }

  // ---- 2. API and session --------------------------------------------------------------

  const TOKEN_KEY = 'quiver.console.token';
  let session = null; // { token, who } while the app is shown

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /**
   * Calls the API. opts: method, body (JSON), token (overrides the session's; null:
   * anonymous), login (true: a 401 is returned to the caller, not a logout).
   */
  async function api(path, opts = {}) {
    const headers = { Accept: 'application/json' };
    const token = 'token' in opts ? opts.token : session && session.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 15000);
    let res;
    let text;
    try {
      res = await fetch(path, {
        method: opts.method || 'GET',
        headers,
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        signal: ctl.signal,
        cache: 'no-store',
        credentials: 'same-origin',
      });
      text = await res.text();
    } catch (e) {
      throw new ApiError(0, 'Network', e.name === 'AbortError'
        ? 'The broker did not answer in time.' : 'Cannot reach the broker.');
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!res.ok) {
      const err = (data && data.error) || {};
      const e = new ApiError(res.status, err.code || String(res.status),
        err.message || text.trim() || `${res.status} ${res.statusText}`);
      if (res.status === 401 && !opts.login) expired();
      throw e;
    }
    return data;
  }

  const whoami = (token) => api('/api/whoami', { token, login: true });

  async function start() {
    $('#login-form').addEventListener('submit', onLogin);
    $('#logout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('');
    });
    window.addEventListener('hashchange', route);
    const stored = sessionStorage.getItem(TOKEN_KEY);
    try {
      enter(stored, await whoami(stored || null));
    } catch (e) {
      if (stored && e.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      showLogin(e.status === 401 ? (stored ? 'Your token is no longer accepted.' : '') : e.message);
    }
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const input = $('#login-token');
    const btn = $('#login-submit');
    const token = input.value.trim();
    $('#login-error').textContent = '';
    btn.disabled = true;
    try {
      const who = await whoami(token || null);
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      input.value = '';
      enter(token || null, who);
    } catch (e) {
      $('#login-error').textContent = e.status === 401
        ? (token ? 'That token was not accepted.' : 'Enter a token.') : e.message;
    } finally {
      btn.disabled = false;
    }
  }

  /** Shows the app for a principal. */
  function enter(token, who) {
    session = { token, who };
    $('#version').textContent = who.version || '';
    $('#principal').textContent = who.principal || 'anonymous';
    $('#admin-badge').hidden = !who.admin;
    $('#logout').textContent = token ? 'Log out' : 'Log in';
    $('#boot').hidden = true;
    $('#login').hidden = true;
    $('#app').hidden = false;
    route();
  }

  function showLogin(message) {
    stop();
    session = null;
    $('#boot').hidden = true;
    $('#app').hidden = true;
    $('#login').hidden = false;
    $('#login-error').textContent = message;
    delete document.body.dataset.view;
    document.body.dataset.loaded = '0';
    $('#login-token').focus();
  }

  /** A 401 after login: the token expired or was revoked. */
  function expired() {
    if (!session) return;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('Your session has ended: log in again.');
  }

  // ---- 3. Routing, live refresh, notices, actions -------------------------------------

  // The view on screen: { view, arg, live, timer, busy, again, stamp, data, json, first }.
  let current = null;

  function parseHash() {
    const m = /^#\/([^/]*)(?:\/(.+))?$/.exec(location.hash);
    if (!m) return { section: 'overview', arg: null };
    let arg = null;
    if (m[2]) {
      try { arg = decodeURIComponent(m[2]); } catch (_) { arg = m[2]; }
    }
    return { section: m[1], arg };
  }

  function route() {
    if (!session) return;
    const { section, arg } = parseHash();
    const names = ROUTES[section];
    if (!names) {
      location.replace('#/overview');
      return;
    }
    const view = VIEWS[arg && names[1] ? names[1] : names[0]];
    stop();
    notice('', '');
    const body = document.body.dataset;
    delete body.view;
    body.loaded = '0';
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.nav === section);
      if (a.dataset.nav === 'principals') a.hidden = !session.who.admin;
    }
    document.title = `${arg || view.title} · Quiver`;
    const c = { view, arg, live: h('div', { class: 'live' }), busy: false, again: false, stamp: 0, first: true };
    current = c;
    const root = $('#view');
    root.replaceChildren();
    view.setup(root, c);
    liveStatus('', '');
    tick(c);
    c.timer = setInterval(() => tick(c), 2000);
  }

  function stop() {
    disarm();
    if (current) clearInterval(current.timer);
    current = null;
  }

  /** One refresh of the current view; skipped while the previous one runs. */
  async function tick(c) {
    if (c !== current || c.busy) return;
    c.busy = true;
    const stamp = c.stamp;
    try {
      const data = await c.view.load(c.arg, c);
      if (c !== current || stamp !== c.stamp) return;
      liveStatus(`updated ${new Date().toLocaleTimeString()}`, '');
      const json = c.view.stable ? JSON.stringify(data) : null;
      if (!c.view.stable || json !== c.json) show(c, data, json);
      if (c.first) {
        c.first = false;
        if (c.view.afterFirst) await c.view.afterFirst(c);
        ready(c);
      }
    } catch (e) {
      if (c !== current || e.status === 401) return;
      if (c.data === undefined) c.live.replaceChildren(h('p', { class: 'error-text load-error' }, e.message));
      liveStatus(`update failed: ${e.message}`, 'error');
      if (e.status === 403) notice(e.message, 'error');
      ready(c);
    } finally {
      c.busy = false;
      if (c.again && c === current) {
        c.again = false;
        tick(c);
      }
    }
  }

  function show(c, data, json) {
    c.data = data;
    c.json = json;
    // <details> opened by the user stay open across re-renders
    const open = new Set([...c.live.querySelectorAll('details[open][data-keep]')].map((d) => d.dataset.keep));
    c.view.render(c.live, data, c);
    for (const d of c.live.querySelectorAll('details[data-keep]')) if (open.has(d.dataset.keep)) d.open = true;
  }

  /** Shows data an action returned; a refresh already under way is discarded. */
  function applyData(c, data) {
    if (c !== current) return;
    c.stamp += 1;
    show(c, data, c.view.stable ? JSON.stringify(data) : null);
  }

  /** Refreshes now (after an action), or right after the refresh under way. */
  function refreshNow(c) {
    if (c !== current) return;
    if (c.busy) c.again = true;
    else tick(c);
  }

  function ready(c) {
    if (c !== current) return;
    document.body.dataset.view = c.view.name;
    document.body.dataset.loaded = '1';
  }

  function liveStatus(text, cls) {
    const el = $('#live-status');
    el.textContent = text;
    el.className = `live-status ${cls}`;
  }

  /** The notice area: the last action's result ("ok") or error ("error"). */
  function notice(text, cls) {
    const el = $('#notice');
    el.textContent = text;
    el.className = text ? cls : '';
  }

  /**
   * Runs an action: fn returns the text of its success notice. Sets
   * body[data-action] to "name:ok" or "name:error". btn is disabled while it runs.
   */
  async function act(name, fn, btn) {
    if (btn) btn.disabled = true;
    try {
      const msg = await fn();
      notice(msg, 'ok');
      document.body.dataset.action = `${name}:ok`;
    } catch (e) {
      if (e.status === 401) return; // the login form takes over
      notice(e.message, 'error');
      document.body.dataset.action = `${name}:error`;
    } finally {
      if (btn) btn.disabled = false;
    }
  }

  // Two-click confirms: the first click arms the button (its text changes), a second
  // within 5 s runs it. Kept by key, so a button re-rendered meanwhile stays armed.
  let armed = null; // { key, timer }

  function confirmButton(key, label, confirmLabel, run, props, check) {
    const btn = h('button', Object.assign({ type: 'button' }, props));
    Object.assign(btn.dataset, { confirmKey: key, label, confirmLabel });
    const isArmed = armed && armed.key === key;
    btn.textContent = isArmed ? confirmLabel : label;
    btn.classList.toggle('armed', Boolean(isArmed));
    btn.addEventListener('click', () => {
      if (armed && armed.key === key) {
        disarm();
        run(btn);
        return;
      }
      if (check && !check()) return;
      disarm();
      armed = { key, timer: setTimeout(disarm, 5000) };
      btn.textContent = confirmLabel;
      btn.classList.add('armed');
    });
    return btn;
  }

  function disarm() {
    if (!armed) return;
    clearTimeout(armed.timer);
    const key = armed.key;
    armed = null;
    for (const b of document.querySelectorAll('[data-confirm-key]')) {
      if (b.dataset.confirmKey !== key) continue;
      b.textContent = b.dataset.label;
      b.classList.remove('armed');
    }
  }

  // ---- 4. Shared pieces ----------------------------------------------------------------

  /**
   * A position as the API takes it: earliest, latest, an offset, time:MS; a date-time
   * (ISO text, or a datetime-local value, read as local time) becomes time:MS.
   */
  function parsePosition(raw, dflt) {
    const s = raw.trim();
    if (!s) {
      if (dflt) return dflt;
      throw new Error('Say where: earliest, latest, an offset or a date-time.');
    }
    const low = s.toLowerCase();
    if (low === 'earliest' || low === 'latest' || /^\d+$/.test(s) || /^time:\d+$/.test(low)) return low;
    if (/^-\d/.test(s)) return s; // "-5m": a while ago, as the broker reads it
    if (/^\d{4}-\d\d-\d\d/.test(s)) {
      const ms = Date.parse(s.replace(/^(\d{4}-\d\d-\d\d) /, '$1T'));
      if (!Number.isNaN(ms)) return `time:${ms}`;
    }
    throw new Error(`"${s}" is not earliest, latest, an offset, a date-time or -DURATION (-5m).`);
  }

  /** A text input for positions, with a date-time picker that fills it. */
  function positionInputs(id, value, placeholder) {
    const text = h('input', { id, type: 'text', value, placeholder, autocomplete: 'off', spellcheck: 'false' });
    const pick = h('input', {
      id: `${id.split('-')[0]}-at`, type: 'datetime-local', step: 1, title: 'Pick a date-time (local time)',
      on: { change: (ev) => { if (ev.target.value) text.value = ev.target.value; } },
    });
    return [text, pick];
  }

  /** "name=value" (params) or "name: value" (headers) lines as pairs. */
  function parseLines(text, sep, what) {
    const out = [];
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      const i = line.indexOf(sep);
      if (i <= 0) throw new Error(`${what} "${line.trim()}" is not name${sep}value.`);
      out.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
    }
    return out;
  }

  /** A payload as shown: pretty JSON when it parses (and has no integer JSON would round). */
  function prettyPayload(p) {
    if (/\d{16,}/.test(p)) return p;
    try { return JSON.stringify(JSON.parse(p), null, 2); } catch (_) { return p; }
  }

  function hexLines(hex) {
    const lines = [];
    for (let i = 0; i < hex.length; i += 64) lines.push(hex.slice(i, i + 64).replace(/(..)(?!$)/g, '$1 '));
    return lines.join('\n');
  }

  function payloadCell(r) {
    if (r.binary) {
      return h('td', { class: 'payload-cell' }, h('span', { class: 'tag' }, `binary, ${fmtBytes(r.payload.length / 2)} (hex)`),
        h('pre', { class: 'payload binary' }, hexLines(r.payload)));
    }
    return h('td', { class: 'payload-cell' }, h('pre', { class: 'payload' }, prettyPayload(r.payload)));
  }

  const keyView = (k) => (k == null ? dash() : h('code', null, k === '' ? '""' : k));
  const keyCell = (k) => td(keyView(k));
  const headerList = (hs) => (hs.length
    ? h('ul', { class: 'headers' }, hs.map((x) => h('li', null, h('span', { class: 'hname' }, x.name), ': ', x.value)))
    : dash());

  /** Records as a table; dlq: a checkbox and the quiver-dlq-* headers as columns. */
  function recordsTable(records, dlq) {
    if (!dlq) {
      return table(['>Offset', 'Time', 'Key', 'Headers', 'Payload'], records.map((r) => h('tr', { dataset: { offset: String(r.offset) } },
        tn(r.offset), td(isoTime(r.timestamp_ms)), keyCell(r.key), td(headerList(r.headers)), payloadCell(r))), null, 'grid records');
    }
    const all = h('input', {
      type: 'checkbox', id: 'select-page', 'aria-label': 'Select every record on this page',
      on: { change: (ev) => { for (const b of document.querySelectorAll('input[data-select-offset]')) b.checked = ev.target.checked; } },
    });
    const rows = records.map((r) => {
      const dl = {};
      const other = [];
      for (const x of r.headers) {
        if (x.name.startsWith('quiver-dlq-')) dl[x.name.slice(11)] = x.value;
        else other.push(x);
      }
      for (const k of Object.keys(dl)) {
        if (!['reason', 'plugin', 'topic', 'group', 'offset'].includes(k)) other.push({ name: `quiver-dlq-${k}`, value: dl[k] });
      }
      const src = dl.topic;
      return h('tr', { dataset: { offset: String(r.offset) } },
        td(h('input', { type: 'checkbox', dataset: { selectOffset: String(r.offset) }, 'aria-label': `Select record ${r.offset}` })),
        tn(r.offset), td(isoTime(r.timestamp_ms)),
        h('td', { class: 'reason' }, dl.reason || dash()), td(dl.plugin || dash()),
        td(src ? topicLink(src) : dash()), td(dl.group ? h('a', { href: groupHash(dl.group) }, dl.group) : dash()),
        h('td', { class: 'num' }, dl.offset || '—'),
        td(h('div', null, 'key ', keyView(r.key)), headerList(other)),
        payloadCell(r));
    });
    // a th holding the "select all" box
    const t = table(['', '>Offset', 'Time', 'Reason', 'Plugin', 'Topic', 'Group', '>Source offset', 'Key, headers', 'Payload'], rows, null, 'grid records');
    t.querySelector('th').append(all);
    return t;
  }

  /**
   * The record browser of a topic (or dead-letter topic, fixed 50 per page): a form,
   * a status line and a results region. Results are fetched only when asked.
   */
  function browser(topic, c, dlq) {
    const [from, at] = positionInputs('browse-from', 'earliest', 'earliest, latest, offset or date-time');
    const key = dlq ? null : h('input', { id: 'browse-key', type: 'text', placeholder: 'any key', autocomplete: 'off' });
    const limit = dlq ? null : h('input', { id: 'browse-limit', type: 'number', min: 1, max: 500, value: 50 });
    const go = h('button', { id: 'browse-go', type: 'submit', class: 'primary' }, 'Browse');
    const next = h('button', { id: 'browse-next', type: 'button', disabled: true }, 'Next page');
    const status = h('p', { id: 'browse-status', class: 'muted' }, 'Choose where to start and press Browse.');
    const results = h('div', { id: 'browse-results' });
    let last = null; // { key, limit, next, end }
    let running = false;

    async function run(pos, k, lim) {
      if (running) return;
      running = true;
      go.disabled = true;
      next.disabled = true;
      try {
        const q = new URLSearchParams({ from: pos, limit: String(lim) });
        if (k) q.set('key', k);
        const d = await api(`/api/topics/${enc(topic)}/records?${q}`);
        if (c !== current) return;
        last = { key: k, limit: lim, next: d.next, end: d.end };
        results.replaceChildren(recordsTable(d.records, dlq));
        const rs = d.records;
        status.textContent = [
          rs.length ? `${fmtNum(rs.length)} record${rs.length === 1 ? '' : 's'}, offsets ${fmtNum(rs[0].offset)}–${fmtNum(rs[rs.length - 1].offset)}`
            : `No records${k ? ` with key "${k}"` : ''} from ${pos}`,
          k ? `scanned to ${fmtNum(d.scanned_to)}` : null,
          `topic ends at ${fmtNum(d.end)}`,
          d.next < d.end ? null : 'no more records',
        ].filter(Boolean).join(' · ');
      } catch (e) {
        if (e.status !== 401) notice(e.message, 'error');
      } finally {
        running = false;
        go.disabled = false;
        next.disabled = !(last && last.next < last.end);
        document.body.dataset.browsed = String(Date.now());
      }
    }

    const form = h('form', {
      class: 'row',
      on: {
        submit: (ev) => {
          ev.preventDefault();
          let pos;
          let lim = 50;
          try {
            pos = parsePosition(from.value, 'earliest');
            if (limit) {
              lim = Number(limit.value || 50);
              if (!Number.isInteger(lim) || lim < 1 || lim > 500) throw new Error('The limit is 1 to 500 records.');
            }
          } catch (e) {
            notice(e.message, 'error');
            document.body.dataset.browsed = String(Date.now());
            return;
          }
          run(pos, key && key.value !== '' ? key.value : null, lim);
        },
      },
    },
    h('label', null, 'From', from), h('label', null, 'or pick', at),
    key && h('label', null, 'Key', key), limit && h('label', { class: 'narrow' }, 'Limit', limit),
    h('div', { class: 'buttons' }, go, next));
    next.addEventListener('click', () => { if (last) run(String(last.next), last.key, last.limit); });
    return { form, status, results, run };
  }

  // Lag samples per group, collected while the console is open: [{ t, lag, pending }].
  const lagSamples = new Map();
  const MAX_SAMPLES = 150;

  function recordLag(g) {
    let list = lagSamples.get(g.name);
    if (!list) lagSamples.set(g.name, (list = []));
    list.push({ t: Date.now(), lag: sum(g.topics, (x) => x.lag), pending: sum(g.topics, (x) => x.pending) });
    if (list.length > MAX_SAMPLES) list.splice(0, list.length - MAX_SAMPLES);
  }

  /** The smallest of 1, 2, 5, 10, 20, 50, … at least `v` (v ≥ 1). */
  function niceStep(v) {
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /** The lag chart: lag (solid) and pending (dashed) over the samples' time span. */
  function lagChart(samples) {
    const W = 720, H = 220, L = 70, R = 16, T = 14, B = 28;
    const el = svg('svg', { id: 'lag-chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Lag and pending over time' });
    if (!samples.length) return el;
    // Four whole steps up to at least the highest sample: the gridlines are round.
    const highest = Math.max(...samples.map((p) => Math.max(p.lag, p.pending)));
    const top = 4 * niceStep(Math.max(1, highest / 4));
    const t0 = samples[0].t;
    const span = samples[samples.length - 1].t - t0;
    const x = (t) => L + (W - L - R) * (span > 0 ? (t - t0) / span : 1);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      el.append(svg('line', { class: 'gridline', x1: L, x2: W - R, y1: y(top * f), y2: y(top * f) }),
        svg('text', { class: 'axis-label', x: L - 8, y: y(top * f) + 4, 'text-anchor': 'end' }, fmtNum(Math.round(top * f))));
    }
    el.append(svg('text', { class: 'axis-label', x: L, y: H - 8 }, span > 0 ? `−${fmtDuration(span)}` : ''),
      svg('text', { class: 'axis-label', x: W - R, y: H - 8, 'text-anchor': 'end' }, 'now'));
    for (const k of ['pending', 'lag']) {
      const pts = samples.map((p) => `${x(p.t).toFixed(1)},${y(p[k]).toFixed(1)}`).join(' ');
      el.append(svg('polyline', { class: `line ${k}`, points: pts }));
      const lastP = samples[samples.length - 1];
      el.append(svg('circle', { class: `dot ${k}`, cx: x(lastP.t), cy: y(lastP[k]), r: 3 }));
    }
    return el;
  }

  /** A publish receipt as text: "stored at offset N", or where the record went. */
  function receiptText(r) {
    const parts = [];
    if (r.count === 1) parts.push(`stored at offset ${r.base_offset}`);
    else if (r.count > 1) parts.push(`stored at offsets ${r.base_offset}–${r.base_offset + r.count - 1}`);
    for (const p of r.routed || []) parts.push(`routed to ${p.topic} at offset ${p.base_offset}`);
    if (r.dead_letter) parts.push(`dead-lettered to ${r.dead_letter.topic} at offset ${r.dead_letter.base_offset}`);
    if (r.dropped) parts.push(`${r.dropped} dropped by a plugin`);
    return parts.join('; ') || 'not stored';
  }

  const crumbs = (href, label) => h('p', { class: 'crumbs' }, h('a', { href }, label), ' /');

  // ---- 5. Views ------------------------------------------------------------------------

  // Hash sections and their views: [list view, item view (with a name)].
  const ROUTES = {
    overview: ['overview'],
    topics: ['topics', 'topic'],
    groups: ['groups', 'group'],
    'dead-letters': ['dead-letters', 'dead-letter'],
    plugins: ['plugins'],
    links: ['links'],
    principals: ['principals'],
  };

  // The last totals seen, for the publish rates: { at, records_in, bytes_in, rates }.
  let rateBase = null;

  const VIEWS = {};

  VIEWS.overview = {
    name: 'overview',
    title: 'Overview',
    setup(root, c) { root.append(h('h1', null, 'Overview'), c.live); },
    async load() {
      const d = await api('/api/overview');
      const now = performance.now();
      const t = d.totals;
      if (rateBase && now - rateBase.at < 500) {
        d.rates = rateBase.rates; // a refresh right after another: keep the last rates
      } else {
        d.rates = null;
        if (rateBase && now - rateBase.at < 30000 && t.records_in >= rateBase.records_in && t.bytes_in >= rateBase.bytes_in) {
          const dt = (now - rateBase.at) / 1000;
          d.rates = { records: (t.records_in - rateBase.records_in) / dt, bytes: (t.bytes_in - rateBase.bytes_in) / dt };
        }
        rateBase = { at: now, records_in: t.records_in, bytes_in: t.bytes_in, rates: d.rates };
      }
      return d;
    },
    render(live, d) {
      const s = d.server; // null when the principal is not an admin
      const r = d.rates;
      const alerts = d.alerts || [];
      live.replaceChildren(
        h('section', { class: 'alerts' }, h('h2', null, 'Alerts'), h('ul', { id: 'alerts' },
          alerts.length ? alerts.map((a) => h('li', { class: `alert ${a.level}` },
            h('span', { class: 'level' }, a.level), h('span', { class: 'alert-text' }, a.text),
            a.link && a.link.startsWith('#') ? h('a', { href: a.link }, 'Open') : null))
            : h('li', { class: 'none' }, 'No alerts.'))),
        h('section', { class: 'figs' },
          fig('ready', 'Readiness', d.ready ? 'ready' : 'not ready', d.ready ? 'good' : 'bad'),
          s && fig('uptime', 'Uptime', fmtDuration(Date.now() - s.started_ms)),
          fig('rate-records', 'Publish rate', r ? [fmtNum(Math.round(r.records)), h('span', { class: 'unit' }, ' records/s')] : 'measuring…'),
          fig('rate-bytes', 'Inbound', r ? [fmtBytes(Math.round(r.bytes)), h('span', { class: 'unit' }, '/s')] : 'measuring…'),
          fig('records', 'Records held', fmtNum(d.totals.records)),
          fig('stored', 'Stored', fmtBytes(d.totals.stored_bytes)),
          s && fig('disk', 'Disk used', fmtBytes(s.disk_bytes))),
        ...(s ? [
          h('section', { class: 'figs' },
            fig('topics', 'Topics', fmtNum(s.topics), 'link', '#/topics'),
            fig('groups', 'Groups', fmtNum(s.groups), 'link', '#/groups'),
            fig('plugins', 'Plugins', fmtNum(s.plugins), 'link', '#/plugins'),
            fig('links', 'Links', fmtNum(s.links), 'link', '#/links'),
            fig('connections', 'Connections', fmtNum(s.connections))),
          h('div', { class: 'cols' },
            h('section', null, h('h2', null, 'Broker'), facts([
              ['Version', h('span', { dataset: { figure: 'version' } }, s.broker.version)],
              ['Started', fmtTime(s.started_ms)],
              ['Data dir', h('code', { dataset: { figure: 'data-dir' } }, s.data_dir)],
              ['Records in', fmtNum(d.totals.records_in)],
              ['Bytes in', fmtBytes(d.totals.bytes_in)],
            ])),
            h('section', null, h('h2', null, 'Listeners'), table(['Kind', 'Address'],
              s.listeners.map(([kind, addr]) => h('tr', null, td(kind), td(h('code', null, addr)))), 'None.'))),
        ] : [h('p', { class: 'muted' }, 'The figures above cover the topics you may see; the server\'s details (uptime, disk, listeners) are for admins.')]));
    },
  };

  VIEWS.topics = {
    name: 'topics',
    title: 'Topics',
    stable: true,
    setup(root, c) {
      c.filter = h('input', { id: 'topic-filter', type: 'search', placeholder: 'Filter by name', on: { input: () => c.data && this.render(c.live, c.data, c) } });
      root.append(h('div', { class: 'title-row' }, h('h1', null, 'Topics'), c.filter), c.live);
    },
    load: () => api('/api/topics'),
    render(live, topics, c) {
      const f = c.filter.value.trim().toLowerCase();
      const shown = topics.filter((t) => !f || t.name.toLowerCase().includes(f));
      live.replaceChildren(table(
        ['Name', '>Records', '>Stored', '>Bytes in', '>First offset', '>Next offset', 'Retention', 'Durability', 'Pipeline'],
        shown.map((t) => h('tr', { dataset: { topic: t.name } },
          td(topicLink(t.name)), tn(t.records), tb(t.bytes), tb(t.bytes_in), tn(t.first_offset), tn(t.next_offset),
          td(fmtRetention(t.retention)), td(fmtDurability(t.durability)),
          td(t.pipeline.length ? t.pipeline.map((s) => s.plugin).join(' → ') : dash()))),
        f ? 'No topic matches.' : 'No topics yet.'));
    },
  };

  VIEWS.topic = {
    name: 'topic',
    title: 'Topic',
    stable: true,
    setup(root, c) {
      const name = c.arg;
      const path = `/api/topics/${enc(name)}`;

      // Attach a plugin stage.
      const plugin = h('select', { id: 'attach-plugin' }, h('option', { value: '' }, 'loading…'));
      const onError = h('select', { id: 'attach-on-error' },
        h('option', { value: 'FailClosed' }, 'FailClosed: refuse publishes while quarantined'),
        h('option', { value: 'FailOpen' }, 'FailOpen: pass records unchanged while quarantined'));
      const params = h('textarea', { id: 'attach-params', rows: 2, placeholder: 'name=value, one per line (optional)', spellcheck: 'false' });
      const attachGo = h('button', { id: 'attach-go', type: 'submit', class: 'primary' }, 'Attach');
      const attach = h('form', {
        class: 'panel',
        on: {
          submit: (ev) => {
            ev.preventDefault();
            act('attach', async () => {
              if (!plugin.value) throw new Error('Choose a plugin to attach.');
              const body = { plugin: plugin.value, params: parseLines(params.value, '=', 'Parameter'), on_error: onError.value };
              applyData(c, await api(`${path}/plugins`, { method: 'POST', body }));
              return `Attached ${body.plugin} to ${name}.`;
            }, attachGo);
          },
        },
      }, h('h2', null, 'Attach a plugin'),
      h('div', { class: 'row' }, h('label', null, 'Plugin', plugin), h('label', null, 'While quarantined', onError)),
      h('label', null, 'Parameters', params), h('div', { class: 'buttons' }, attachGo));
      api('/api/plugins').then((list) => {
        const names = list.map((p) => p.info.name).sort();
        plugin.replaceChildren(...(names.length
          ? names.map((n) => h('option', { value: n }, n))
          : [h('option', { value: '' }, 'no plugins deployed')]));
      }).catch((e) => plugin.replaceChildren(h('option', { value: '' }, `cannot list plugins: ${e.message}`)));

      // Publish a record.
      const key = h('input', { id: 'publish-key', type: 'text', placeholder: 'none', autocomplete: 'off' });
      const headers = h('textarea', { id: 'publish-headers', rows: 2, placeholder: 'name: value, one per line (optional)', spellcheck: 'false' });
      const payload = h('textarea', { id: 'publish-payload', rows: 5, placeholder: '{"hello": "world"}', spellcheck: 'false' });
      const pubGo = h('button', { id: 'publish-go', type: 'submit', class: 'primary' }, 'Publish');
      const result = h('span', { id: 'publish-result', class: 'result' });
      const publish = h('form', {
        class: 'panel',
        on: {
          submit: (ev) => {
            ev.preventDefault();
            result.textContent = '';
            act('publish', async () => {
              const body = {
                key: key.value === '' ? null : key.value,
                payload: payload.value,
                headers: parseLines(headers.value, ':', 'Header').map(([n, v]) => ({ name: n, value: v })),
              };
              const r = await api(`${path}/records`, { method: 'POST', body });
              result.textContent = receiptText(r);
              refreshNow(c);
              return `Published to ${name}: ${result.textContent}.`;
            }, pubGo);
          },
        },
      }, h('h2', null, 'Publish a record'),
      h('label', null, 'Key', key), h('label', null, 'Headers', headers), h('label', null, 'Payload', payload),
      h('div', { class: 'buttons' }, pubGo, result));

      const b = browser(name, c, false);
      root.append(crumbs('#/topics', 'Topics'), h('h1', null, name), c.live,
        h('div', { class: 'cols' }, attach, publish),
        h('section', { class: 'panel' }, h('h2', null, 'Browse records'), b.form, b.status), b.results);
    },
    load: (name) => api(`/api/topics/${enc(name)}`),
    render(live, t, c) {
      const name = c.arg;
      const stages = t.pipeline.map((s, i) => h('li', { class: 'stage', dataset: { stage: s.plugin } },
        h('span', { class: 'stage-n' }, `${i + 1}.`),
        h('a', { href: '#/plugins', class: 'stage-name' }, s.plugin),
        h('span', { class: 'muted' }, s.params.length ? s.params.map(([k, v]) => `${k}=${v}`).join(', ') : 'no parameters'),
        h('span', { class: 'tag' }, s.on_error),
        h('span', { class: 'muted' }, `attached by ${s.attached_by || 'anonymous'}`),
        confirmButton(`detach:${s.plugin}`, 'Detach', 'Confirm detach', (btn) => act('detach', async () => {
          applyData(c, await api(`/api/topics/${enc(name)}/plugins/${enc(s.plugin)}`, { method: 'DELETE' }));
          return `Detached ${s.plugin} from ${name}.`;
        }, btn), { class: 'small', dataset: { detach: s.plugin } })));
      live.replaceChildren(
        h('section', { class: 'figs' },
          fig('records', 'Records', fmtNum(t.records)),
          fig('stored', 'Stored', fmtBytes(t.bytes)),
          fig('bytes-in', 'Bytes in', fmtBytes(t.bytes_in)),
          fig('first-offset', 'First offset', fmtNum(t.first_offset)),
          fig('next-offset', 'Next offset', fmtNum(t.next_offset))),
        facts([
          ['Retention', fmtRetention(t.retention)],
          ['Durability', fmtDurability(t.durability)],
          ['Created', fmtTime(t.created_ms)],
          ['Dead-letter topic', h('a', { href: dlqHash(t.dead_letter) }, t.dead_letter)],
        ]),
        h('h2', null, 'Pipeline'),
        stages.length ? h('ol', { id: 'pipeline', class: 'pipeline' }, stages)
          : h('p', { id: 'pipeline', class: 'muted' }, 'No plugins: records are stored as published.'));
    },
  };

  VIEWS.groups = {
    name: 'groups',
    title: 'Groups',
    stable: true,
    setup(root, c) { root.append(h('h1', null, 'Consumer groups'), c.live); },
    async load() {
      const groups = await api('/api/groups');
      groups.forEach(recordLag);
      return groups;
    },
    render(live, groups) {
      const rows = [];
      for (const g of groups) {
        rows.push(h('tr', { class: 'group-row', dataset: { group: g.name } },
          td(h('a', { href: groupHash(g.name) }, g.name)), td(h('code', null, g.settings.pattern)), tn(g.members),
          tn(sum(g.topics, (x) => x.lag)), tn(sum(g.topics, (x) => x.pending)),
          tn(sum(g.topics, (x) => x.redelivered)), tn(sum(g.topics, (x) => x.dead_lettered))));
        for (const x of g.topics) {
          rows.push(h('tr', { class: 'sub', dataset: { groupTopic: `${g.name}/${x.topic}` } },
            h('td', { class: 'indent', colspan: 3 }, '↳ ', topicLink(x.topic)),
            tn(x.lag), tn(x.pending), tn(x.redelivered), tn(x.dead_lettered)));
        }
      }
      live.replaceChildren(table(['Name', 'Pattern', '>Members', '>Lag', '>Pending', '>Redelivered', '>Dead-lettered'], rows, 'No groups yet.'));
    },
  };

  VIEWS.group = {
    name: 'group',
    title: 'Group',
    setup(root, c) {
      const name = c.arg;
      const [to, at] = positionInputs('reset-to', '', 'earliest, latest, offset or date-time');
      const go = confirmButton('reset', 'Reset', 'Confirm reset', (btn) => act('reset', async () => {
        const pos = parsePosition(to.value);
        applyData(c, await api(`/api/groups/${enc(name)}/reset`, { method: 'POST', body: { to: pos } }));
        return `Group ${name} reset to ${pos}.`;
      }, btn), { id: 'reset-go', class: 'danger-outline' }, () => {
        try { parsePosition(to.value); return true; } catch (e) { notice(e.message, 'error'); return false; }
      });
      const form = h('form', { class: 'panel', on: { submit: (ev) => ev.preventDefault() } },
        h('h2', null, 'Reset the group'),
        h('p', { class: 'muted' }, 'Moves the group in every topic it consumes; pending records are dropped.'),
        h('div', { class: 'row' }, h('label', null, 'To', to), h('label', null, 'or pick', at), h('div', { class: 'buttons' }, go)));
      root.append(crumbs('#/groups', 'Groups'), h('h1', null, name), c.live, form);
    },
    async load(name) {
      const g = await api(`/api/groups/${enc(name)}`);
      recordLag(g);
      return g;
    },
    render(live, g) {
      const s = g.settings;
      const samples = lagSamples.get(g.name) || [];
      const last = samples[samples.length - 1] || { lag: 0, pending: 0 };
      live.replaceChildren(
        h('section', { class: 'figs' },
          fig('members', 'Members', fmtNum(g.members)),
          fig('lag', 'Lag', fmtNum(sum(g.topics, (x) => x.lag))),
          fig('pending', 'Pending', fmtNum(sum(g.topics, (x) => x.pending))),
          fig('redelivered', 'Redelivered', fmtNum(sum(g.topics, (x) => x.redelivered))),
          fig('dead-lettered', 'Dead-lettered', fmtNum(sum(g.topics, (x) => x.dead_lettered)))),
        h('section', { class: 'chart' },
          h('h2', null, 'Lag over time'),
          lagChart(samples),
          h('p', { class: 'legend' },
            h('span', { class: 'key lag' }), `lag ${fmtNum(last.lag)}`,
            h('span', { class: 'key pending' }), `pending ${fmtNum(last.pending)}`,
            h('span', { class: 'muted' }, ` · ${samples.length} sample${samples.length === 1 ? '' : 's'} taken while this console is open`))),
        h('div', { class: 'cols' },
          h('section', null, h('h2', null, 'Topics'), table(['Topic', '>Cursor', '>Lag', '>Pending', '>Redelivered', '>Dead-lettered'],
            g.topics.map((x) => h('tr', { dataset: { topic: x.topic } }, td(topicLink(x.topic)), tn(x.cursor), tn(x.lag),
              tn(x.pending), tn(x.redelivered), tn(x.dead_lettered))), 'No matching topics.')),
          h('section', null, h('h2', null, 'Settings'), facts([
            ['Pattern', h('code', null, s.pattern)],
            ['Starts at', fmtStartAt(s.from)],
            ['Ack timeout', fmtDuration(s.ack_timeout_ms)],
            ['Max deliveries', fmtNum(s.max_deliveries)],
            ['Prefetch', fmtNum(s.prefetch)],
            ['Dead letters to', s.dead_letter ? h('a', { href: dlqHash(s.dead_letter) }, s.dead_letter) : "each topic's dead-letter topic"],
            ['Created', fmtTime(g.created_ms)],
          ]))));
    },
  };

  VIEWS['dead-letters'] = {
    name: 'dead-letters',
    title: 'Dead letters',
    stable: true,
    setup(root, c) { root.append(h('h1', null, 'Dead-letter topics'), c.live); },
    load: () => api('/api/dead-letters'),
    render(live, list) {
      live.replaceChildren(table(['Topic', '>Records', '>First offset', '>Next offset', 'Dead letters of'],
        list.map((d) => h('tr', { dataset: { dlq: d.topic } }, td(h('a', { href: dlqHash(d.topic) }, d.topic)),
          tn(d.records), tn(d.first_offset), tn(d.next_offset), td(d.of.join(', ') || dash()))),
        'No dead-letter topics: nothing has been dead-lettered.'));
    },
  };

  VIEWS['dead-letter'] = {
    name: 'dead-letter',
    title: 'Dead letters',
    stable: true,
    setup(root, c) {
      const name = c.arg;
      const b = browser(name, c, true);
      c.browser = b;
      const to = h('input', { id: 'redrive-to', type: 'text', placeholder: 'each record\'s source topic', autocomplete: 'off' });
      const result = h('div', { id: 'redrive-result', class: 'result' });
      const url = `/api/dead-letters/${enc(name)}/redrive`;
      const withTo = (body) => (to.value.trim() ? Object.assign(body, { to: to.value.trim() }) : body);

      // Shows a redrive's totals; returns the notice text.
      const showResult = (acc, running) => {
        const text = `${running ? 'Working… ' : ''}Redriven ${fmtNum(acc.redriven)}, skipped ${fmtNum(acc.skipped)}, failed ${fmtNum(acc.failedCount)}.`;
        result.replaceChildren(...[
          h('p', { class: 'totals', dataset: { redriven: acc.redriven, skipped: acc.skipped, failed: acc.failedCount } }, text),
          acc.failed.length ? h('ul', { class: 'failures' }, acc.failed.map((f) => h('li', null, `offset ${f.offset}: ${f.message}`))) : null,
          acc.sample.length ? h('details', null, h('summary', null, 'Where they went'),
            h('ul', null, acc.sample.map((x) => h('li', null, `offset ${x.offset} → ${x.topic} at offset ${x.base_offset}`)))) : null,
        ].filter(Boolean));
        return text;
      };
      // Totals over the requests of a redrive; the first 100 records of each list are kept.
      const newAcc = () => ({ redriven: 0, sample: [], skipped: 0, failedCount: 0, failed: [] });
      const merge = (acc, r) => {
        acc.redriven += r.redriven.length;
        acc.sample.push(...r.redriven.slice(0, 100 - acc.sample.length));
        acc.skipped += r.skipped;
        acc.failedCount += r.failed.length;
        acc.failed.push(...r.failed.slice(0, 100 - acc.failed.length));
      };
      const finish = (acc) => {
        for (const box of document.querySelectorAll('input[data-select-offset]:checked, #select-page')) box.checked = false;
        refreshNow(c);
        return `${name}: ${showResult(acc, false)}`;
      };

      const selected = h('button', { id: 'redrive-selected', type: 'button', class: 'primary' }, 'Redrive selected');
      selected.addEventListener('click', () => act('redrive', async () => {
        const offsets = [...document.querySelectorAll('input[data-select-offset]:checked')].map((x) => Number(x.dataset.selectOffset));
        if (!offsets.length) throw new Error('Select the records to redrive first.');
        const acc = newAcc();
        merge(acc, await api(url, { method: 'POST', body: withTo({ offsets }) }));
        return finish(acc);
      }, selected));
      const all = confirmButton('redrive-all', 'Redrive all', 'Confirm redrive all', (btn) => act('redrive', async () => {
        const acc = newAcc();
        let body = withTo({ all: true });
        for (;;) { // at most 10,000 per request: go on from `next`
          const r = await api(url, { method: 'POST', body });
          merge(acc, r);
          showResult(acc, true);
          if (r.next == null || r.next === body.from) break;
          body = Object.assign({}, body, { from: r.next });
        }
        return finish(acc);
      }, btn), { id: 'redrive-all' });

      root.append(crumbs('#/dead-letters', 'Dead letters'), h('h1', null, name), c.live,
        h('section', { class: 'panel' }, h('h2', null, 'Redrive'),
          h('p', { class: 'muted' }, 'Publishes dead-lettered records again, to their source topic or to the topic named here.'),
          h('div', { class: 'row' }, h('label', null, 'To topic (optional)', to), h('div', { class: 'buttons' }, selected, all)), result),
        h('section', { class: 'panel' }, h('h2', null, 'Records'), b.form, b.status), b.results);
    },
    async load(name) {
      const list = await api('/api/dead-letters');
      return list.find((d) => d.topic === name) || null;
    },
    // The records are listed once when the page opens (50, from the earliest).
    afterFirst: (c) => (c.data ? c.browser.run('earliest', null, 50) : null),
    render(live, d, c) {
      if (!d) {
        live.replaceChildren(h('p', { class: 'muted' }, `There is no dead-letter topic named ${c.arg}.`));
        return;
      }
      live.replaceChildren(
        h('section', { class: 'figs' },
          fig('records', 'Records', fmtNum(d.records)),
          fig('first-offset', 'First offset', fmtNum(d.first_offset)),
          fig('next-offset', 'Next offset', fmtNum(d.next_offset))),
        facts([['Dead letters of', d.of.join(', ')], ['As a topic', topicLink(d.topic)]]));
    },
  };

  VIEWS.plugins = {
    name: 'plugins',
    title: 'Plugins',
    stable: true,
    setup(root, c) { root.append(h('h1', null, 'Plugins'), c.live); },
    load: () => api('/api/plugins'),
    render(live, plugins, c) {
      if (!plugins.length) {
        live.replaceChildren(h('p', { class: 'muted' }, 'No plugins deployed. Deploy one with quiver plugin deploy.'));
        return;
      }
      live.replaceChildren(...plugins.map((p) => {
        const i = p.info;
        const quarantined = p.attachments.some((a) => a.quarantined_until_ms != null);
        const lift = quarantined ? h('button', {
          type: 'button', class: 'primary small', dataset: { lift: i.name },
          on: {
            click: (ev) => act('lift', async () => {
              const updated = await api(`/api/plugins/${enc(i.name)}/lift`, { method: 'POST' });
              if (c === current && Array.isArray(c.data)) applyData(c, c.data.map((x) => (x.info.name === i.name ? updated : x)));
              return `Lifted the quarantine of ${i.name}.`;
            }, ev.currentTarget),
          },
        }, 'Lift quarantine') : null;
        return h('section', { class: `card${quarantined ? ' quarantined' : ''}`, dataset: { plugin: i.name } },
          h('div', { class: 'card-head' }, h('h2', null, i.name), h('span', { class: 'tag' }, i.version),
            quarantined ? h('span', { class: 'tag bad' }, 'quarantined') : null, h('span', { class: 'spacer' }), lift),
          facts([
            ['Versions', i.versions.join(', ')],
            ['Size', fmtBytes(i.size)],
            ['SHA-256', h('code', { title: i.sha256 }, i.sha256.slice(0, 12))],
            ['Deployed', fmtTime(i.deployed_ms)],
            ['Code', i.cached ? 'from the compiled cache' : 'compiled at load'],
            ['Topics', i.topics.length ? i.topics.map((t, n) => [n ? ', ' : '', topicLink(t)]) : null],
          ], 'facts inline'),
          table(['Target', 'Version', 'On error', '>Calls', '>Records in', '>Records out', '>Errors', '>p50 µs', '>p99 µs', 'Quarantined until', 'Last error'],
            p.attachments.map((a) => h('tr', { class: a.quarantined_until_ms != null ? 'bad' : '', dataset: { target: a.target } },
              td(a.target), td(a.version), td(a.on_error), tn(a.calls), tn(a.records_in), tn(a.records_out), tn(a.errors),
              tn(a.p50_us), tn(a.p99_us), td(a.quarantined_until_ms != null ? fmtTime(a.quarantined_until_ms) : dash()),
              h('td', { class: 'last-error' }, a.last_error || dash()))), 'Not attached anywhere.'));
      }));
    },
  };

  /** A link's state as [class, text]. */
  function linkState(st) {
    const [name, d] = variant(st);
    if (name === 'Connected') return ['good', `connected to ${d.addr}`];
    if (name === 'BackingOff') return ['bad', `backing off: ${d.error} (next try in ${fmtDuration(d.retry_ms)})`];
    if (name === 'Starting') return ['warn', 'starting'];
    if (name === 'Paused') return ['muted', 'paused'];
    return ['', name];
  }

  VIEWS.links = {
    name: 'links',
    title: 'Links',
    stable: true,
    setup(root, c) { root.append(h('h1', null, 'Links'), c.live); },
    load: () => api('/api/links'),
    render(live, links) {
      if (!links.length) {
        live.replaceChildren(h('p', { class: 'muted' }, 'No links. Create one with quiver link create.'));
        return;
      }
      live.replaceChildren(...links.map((l) => {
        const s = l.spec;
        const [cls, text] = linkState(l.state);
        const remote = s.jetstream ? `${s.to.join(', ')} (JetStream stream ${s.jetstream.stream})` : s.to.join(', ');
        return h('section', { class: 'card', dataset: { link: s.name } },
          h('div', { class: 'card-head' }, h('h2', null, s.name), h('span', { class: 'tag' }, s.direction === 'In' ? 'in' : 'out'),
            h('span', { class: `state ${cls}`, dataset: { state: variant(l.state)[0] } }, text)),
          facts([
            ['Remote', remote],
            ['Remote broker', fmtId(l.remote)],
            ['Topics', h('code', null, s.topics)],
            ['Prefix', s.prefix ? h('code', null, s.prefix) : null],
            ['Failures', fmtNum(l.failures)],
            ['Max rate', s.max_rate != null ? `${fmtNum(s.max_rate)} records/s` : 'unlimited'],
          ], 'facts inline'),
          table(['Topic', '>Next', '>Lag', '>Lag bytes', 'Oldest unsent', '>Forwarded', '>Skipped', '>Looped', '>Dead-lettered', '>Rate/s'],
            l.topics.map((t) => h('tr', { dataset: { topic: t.topic } }, td(t.topic), tn(t.next), tn(t.lag), tb(t.lag_bytes),
              td(t.oldest_ms != null ? fmtTime(t.oldest_ms) : dash()), tn(t.forwarded), tn(t.skipped), tn(t.looped),
              tn(t.dead_lettered), tn(t.rate))), 'No topics forwarded yet.'),
          l.skips.length ? h('details', { dataset: { keep: `skips:${s.name}` } }, h('summary', null, `Recent skips (${l.skips.length})`),
            h('ul', null, l.skips.map((k) => h('li', null, `${k.topic}: offsets ${fmtNum(k.from)}–${fmtNum(k.to - 1)} removed by retention before forwarding, noticed ${fmtTime(k.at_ms)}`)))) : null);
      }));
    },
  };

  VIEWS.principals = {
    name: 'principals',
    title: 'Principals',
    stable: true,
    setup(root, c) { root.append(h('h1', null, 'Principals'), c.live); },
    load: () => api('/api/principals'),
    render(live, list) {
      live.replaceChildren(table(['Name', 'Grants', 'Certificates', '>Tokens'],
        list.map((p) => h('tr', { dataset: { principal: p.name } }, td(h('strong', null, p.name)),
          td(p.grants.length ? h('ul', { class: 'grants' }, p.grants.map((g) => h('li', null, h('span', { class: 'right' }, variant(g.right)[0]), ' ', h('code', null, g.pattern)))) : dash()),
          td(p.certificates.length ? p.certificates.join(', ') : dash()),
          Array.isArray(p.tokens) ? h('td', { class: 'num', title: p.tokens.join(', ') }, fmtNum(p.tokens.length)) : tn(p.tokens))),
        'No principals: the broker lets anonymous clients in.'));
    },
  };

  start();
})();
