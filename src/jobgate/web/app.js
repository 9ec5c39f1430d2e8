// jobgate's dashboard: plain JavaScript over the JSON API, no build step, no dependencies.
//
// The view lives in the URL hash (#/jobs?state=…&owner=…, #/job/ID), so a reload, a shared
// link or an expired session that sends you back to sign in all return to the same place.
// Live updates come from the event stream (GET api/events with a one-time ticket); when
// it is unavailable the page polls, and stops polling once nothing it shows is active.
//
// This file is the core: the state, the helpers, the API, routing, the queue header and
// its stat strip, the confirmation dialog and the page's start. Each view is a file of its
// own, loaded after it (index.html): signin.js (signing in and out), submit.js (the
// submit form), waiting.js (the Waiting section), list.js (the job list), detail.js (a
// job's page), log.js (its log), live.js (the event stream, polling, the clocks), then
// admin.js (the operator's panel). They use what this file puts on window.jobgate, and
// each other's functions through it.
'use strict';

(() => {
  const SESSION_KEY = 'jobgate.session';
  const LAST_USER_KEY = 'jobgate.user';
  const FINAL = new Set(['completed', 'failed', 'cancelled']);
  const ACTIVE = new Set(['queued', 'running']);
  const FINAL_EVENTS = new Set(['job.completed', 'job.failed', 'job.cancelled']);

  const $ = (id) => document.getElementById(id);

  // The other files' functions, by name on window.jobgate, looked up when called: every
  // file has run by then (the page boots at DOMContentLoaded, after all of them).
  const late = (name) => (...args) => window.jobgate[name](...args);
  const setTransport = late('setTransport');
  const loadSession = late('loadSession');
  const showSignIn = late('showSignIn');
  const endSession = late('endSession');
  const enter = late('enter');
  const openDetail = late('openDetail');
  const loadList = late('loadList');
  const renderList = late('renderList');
  const jobTitle = late('jobTitle');
  const loadWaiting = late('loadWaiting');
  const renderWaiting = late('renderWaiting');
  const startLive = late('startLive');
  const stopLive = late('stopLive');
  const retryLiveNow = late('retryLiveNow');
  const refreshAll = late('refreshAll');
  const ensurePolling = late('ensurePolling');

  // What admin.js (the operator's panel) hooks into: called with the queue's numbers on
  // each render, with each event that is no job's, at sign-in and at sign-out.
  const HOOKS = { queue: [], event: [], enter: [], leave: [], kinds: [] };
  function fire(name, ...args) {
    for (const f of HOOKS[name]) {
      try { f(...args); } catch (err) { console.error(err); }
    }
  }

  const S = {
    session: null,        // {token, expires_at, user: {name, admin}}
    kinds: [],
    jobs: new Map(),      // id → job JSON
    endsAt: new Map(),    // id → when a running job should end (ms), from its remaining_s
    uploadNames: new Map(), // `upload:<id>` → the file's name (your uploads): for titles
    order: [],            // ids shown in the list, newest first
    next: null,           // cursor of the next page
    listKey: null,        // the filters the list was loaded for
    queue: null,
    health: null,
    route: { view: 'list', id: null, params: new URLSearchParams() },
    lastListHash: '#/jobs',
    es: null,
    liveSupported: true,
    liveRetryMs: 2000,
    liveTimer: 0,
    pollTimer: 0,
    pollBusy: false,
    transport: 'connecting',
    refreshTimer: 0,
    refreshDetail: false,
    lastEventId: null,    // of the last stored event the stream delivered, to resume from
    tickTimer: 0,
    probeTimer: 0,        // while the server cannot be reached: the next look at it
    probeAt: 0,
    probeMs: 2000,
    offlineSince: 0,
    expiryTimer: 0,
    detail: null,         // {id, lastN, follow, pending: [[n, line]], lineEls, missing, loadingLogs}
    events: 0,            // job events applied so far, to date the replies of reads
    changed: new Map(),   // job id -> Map of field -> [S.events when set, value]
    waiting: new Set(),   // ids of the user's own queued jobs (the Waiting section)
    waitingMore: false,   // more of them than the read brought
  };

  // --- small helpers -------------------------------------------------------------------

  // What events (and submits) changed, field by field, numbered in the order they came.
  function change(id, field, value) {
    if (!S.changed.has(id)) S.changed.set(id, new Map());
    S.changed.get(id).set(field, [++S.events, value]);
  }

  function lastChange(id) {
    let last = 0;
    for (const [n] of (S.changed.get(id) || new Map()).values()) last = Math.max(last, n);
    return last;
  }

  // Keep a job read from the API, with what events changed after the read left (`mark`,
  // S.events then) laid over it: the reply can be older than the row, whose bar would
  // otherwise jump back, or than the job's start, which would then never show.
  // `read`: the job as the API answered (not one an event changed), with its estimates.
  function adopt(job, mark, read = true) {
    for (const [k, [n, v]] of S.changed.get(job.id) || []) if (n > mark) job[k] = v;
    if (job.state !== 'queued') job.position = null;
    // A read's remaining_s counts from the read: kept as a moment, so the clock counts down.
    if (job.state !== 'running') S.endsAt.delete(job.id);
    else if (read && typeof job.remaining_s === 'number') S.endsAt.set(job.id, Date.now() + job.remaining_s * 1000);
    S.jobs.set(job.id, job);
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  const enc = encodeURIComponent;
  const isAdmin = () => Boolean(S.session && S.session.user && S.session.user.admin);
  const ts = (iso) => (iso ? Date.parse(iso) : NaN);

  function fmtDuration(seconds) {
    let s = Math.max(0, seconds);
    if (s < 10) return `${s.toFixed(1)} s`;
    s = Math.floor(s);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function fmtMB(mb) {
    if (mb === null || mb === undefined) return '?';
    return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${Math.round(mb)} MB`;
  }

  function fmtBytes(n) {
    if (typeof n !== 'number') return '';
    if (n < 1024) return `${n} B`;
    const units = ['KB', 'MB', 'GB', 'TB'];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v >= 100 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
  }

  // "3 min ago", "in 20 s": for what a person reads at a glance (the exact time in a title).
  function fmtAgo(iso) {
    const t = ts(iso);
    if (Number.isNaN(t)) return '—';
    const s = (Date.now() - t) / 1000;
    if (Math.abs(s) < 5) return 'just now';
    const text = s < 0 ? fmtDuration(-s) : fmtDuration(s);
    const short = text.replace(/ \d+ s$| \d+ min$| \d+ h$/, '').replace(/\.\d s$/, ' s');
    return s < 0 ? `in ${short}` : `${short} ago`;
  }

  function fmtTime(iso) {
    const t = ts(iso);
    return Number.isNaN(t) ? '—' : new Date(t).toLocaleString();
  }

  function fmtValue(v) {
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  // The tab's title, with "(2 ended) " before it while jobs of yours ended unseen (the
  // tab hidden): the tab strip says so without the page being looked at.
  let baseTitle = document.title;
  let unseenEnds = 0;

  function setTitle(text) {
    baseTitle = text;
    document.title = unseenEnds ? `(${unseenEnds} ended) ${text}` : text;
  }

  function noteEnd(ev) {
    const me = S.session && S.session.user && S.session.user.name;
    if (!document.hidden || !FINAL_EVENTS.has(ev.type) || !me) return;
    const job = S.jobs.get(ev.job_id);
    // A user's stream has only their own jobs; an admin's has everyone's.
    if (isAdmin() && (ev.owner || (job && job.owner)) !== me) return;
    unseenEnds += 1;
    setTitle(baseTitle);
    notifyEnd(ev, job);
  }

  // The opt-in browser notification of an end while the tab is hidden: asked for by the
  // "Notify me" button (a browser asks its user once), remembered in this browser.
  const NOTIFY_KEY = 'jobgate.notify';
  const canNotify = () => typeof Notification === 'function';
  const notifying = () => canNotify() && Notification.permission === 'granted'
    && localStorage.getItem(NOTIFY_KEY) === 'on';

  function notifyEnd(ev, job) {
    if (!notifying()) return;
    const what = job ? jobTitle(job) : ev.kind || 'a job';
    const state = ev.type.replace('job.', '');
    try {
      new Notification(`jobgate: ${what} ${state}`, {
        body: ev.message || (ev.error ? String(ev.error).split('\n')[0] : ''), tag: ev.job_id });
    } catch (err) { /* a browser that shows them only from a service worker */ }
  }

  function renderNotifyButton() {
    const button = $('notify');
    button.hidden = !canNotify() || Notification.permission === 'denied';
    const on = notifying();
    button.textContent = on ? 'Notifying' : 'Notify me';
    button.setAttribute('aria-pressed', String(on));
    button.title = on ? 'A notification when one of your jobs ends while this tab is hidden (click to stop)'
      : 'Get a notification when one of your jobs ends while this tab is hidden';
  }

  async function toggleNotify() {
    if (notifying()) {
      localStorage.setItem(NOTIFY_KEY, 'off');
    } else {
      const answer = Notification.permission === 'granted' ? 'granted'
        : await Notification.requestPermission();
      localStorage.setItem(NOTIFY_KEY, answer === 'granted' ? 'on' : 'off');
    }
    renderNotifyButton();
  }

  function seenEnds() {
    if (!unseenEnds) return;
    unseenEnds = 0;
    setTitle(baseTitle);
  }

  function announce(text) {
    const box = $('announce');
    box.textContent = '';
    setTimeout(() => { box.textContent = text; }, 50);
  }

  // --- the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field || null;
    }
  }

  // Every URL of the page is relative to it (`api/…`, `ui/…`, `health`), so the same page
  // works at `/` and mounted under a prefix (`/jobs/`). A path the server sends (a download
  // link, `/api/…`) is relative to its app: made relative to the page the same way.
  function relative(path) {
    return path.replace(/^\/+/, '');
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const session = S.session;
    if (session && session.token) headers.Authorization = `Bearer ${session.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let r;
    try {
      r = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch (err) {
      setTransport('offline');
      throw new ApiError(0, 'offline', 'cannot reach the server');
    }
    if (S.transport === 'offline') setTransport(S.es ? 'live' : 'polling');
    let data = null;
    if (r.status !== 204) {
      try { data = await r.json(); } catch (err) { data = null; }
    }
    if (r.status === 401 && session && S.session === session && !path.startsWith('api/auth/token')) {
      endSession('Your session expired. Sign in again to go on where you were.');
    }
    if (!r.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(r.status, e.code || 'http_error', e.message || `${r.status} ${r.statusText}`,
        e.field);
    }
    return data;
  }

  // --- routing -----------------------------------------------------------------------------

  function parseHash() {
    const h = location.hash.replace(/^#\/?/, '');
    const q = h.indexOf('?');
    const path = q < 0 ? h : h.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : h.slice(q + 1));
    const parts = path.split('/').filter(Boolean);
    if (parts[0] === 'job' && parts[1]) {
      return { view: 'job', id: decodeURIComponent(parts[1]), params };
    }
    return { view: 'list', id: null, params };
  }

  async function route() {
    if (!S.session) return;
    S.route = parseHash();
    closeConfirm();
    if (S.route.view === 'job') {
      $('view-list').hidden = true;
      $('view-job').hidden = false;
      $('back').href = S.lastListHash;
      await Promise.all([openDetail(S.route.id), loadQueue()]);
    } else {
      S.lastListHash = location.hash || '#/jobs';
      S.detail = null;
      $('view-job').hidden = true;
      $('view-list').hidden = false;
      setTitle('jobgate');
      $('f-state').value = S.route.params.get('state') || '';
      $('f-owner').value = S.route.params.get('owner') || '';
      setKindFilter(S.route.params.get('kind') || '');
      // Not while it is being typed in: the debounced search would undo keystrokes.
      if (document.activeElement !== $('f-q')) $('f-q').value = S.route.params.get('q') || '';
      const key = listKey();
      if (key !== S.listKey) {
        S.order = [];
        S.next = null;
        renderList();
      }
      renderWaiting();
      await Promise.all([loadList(), loadQueue(), loadWaiting()]);
    }
    ensurePolling();
  }

  function listKey() {
    const p = S.route.params;
    const admin = isAdmin() ? [p.get('owner'), p.get('kind'), p.get('q')] : [];
    return [p.get('state'), ...admin].map((v) => v || '').join('|');
  }

  // `replace`: the search box's keystrokes change the view without a history entry each.
  function setFilters(replace) {
    const p = new URLSearchParams();
    const state = $('f-state').value;
    const owner = $('f-owner').value.trim();
    const kind = $('f-kind').value;
    const q = $('f-q').value.trim().slice(0, 100);
    if (state) p.set('state', state);
    if (owner && isAdmin()) p.set('owner', owner);
    if (kind && isAdmin()) p.set('kind', kind);
    if (q && isAdmin()) p.set('q', q);
    const qs = p.toString();
    const hash = qs ? `#/jobs?${qs}` : '#/jobs';
    if (hash === location.hash) return;
    if (replace === true) {
      history.replaceState(null, '', hash);
      route();
    } else {
      location.hash = hash;
    }
  }

  // The kind filter's choices: every kind the server runs, and the one in the URL.
  function setKindFilter(value) {
    const select = $('f-kind');
    const names = S.kinds.map((k) => k.name);
    if (value && !names.includes(value)) names.push(value);
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join('\n') !== names.join('\n')) {
      select.replaceChildren(el('option', { value: '', text: 'Every kind' }),
        ...names.map((n) => el('option', { value: n, text: n })));
    }
    select.value = value;
  }

  // --- queue header --------------------------------------------------------------------------

  async function loadQueue() {
    const mark = S.statsFrames || 0;
    try {
      const [queue, health] = await Promise.all([
        api('GET', 'api/queue'),
        fetch('health', { cache: 'no-store' }).then((r) => r.json()).catch(() => null),
      ]);
      // A queue.stats that came after this read left is newer than its reply: it stays.
      S.queue = (S.statsFrames || 0) > mark ? { ...queue, ...S.lastStats } : queue;
      S.queueReadAt = Date.now();
      S.health = health;
      S.queueRead = queue;                 // as read: its nodes in full (frames: names only)
      renderQueue();
    } catch (err) { /* shown by the connection state, or the session ended */ }
  }

  function renderQueue() {
    const q = S.queue;
    if (!q) return;
    $('q-counts').textContent =
      `${q.queued} in queue • ${q.running} running of ${q.max_running}`;
    $('q-memory').textContent = q.memory_budget_mb
      ? `${fmtMB(q.memory_reserved_mb)} of ${fmtMB(q.memory_budget_mb)} memory reserved`
      : `${fmtMB(q.memory_reserved_mb || 0)} memory reserved (no budget)`;
    let nodes = [];
    if (Array.isArray(q.nodes)) nodes = q.nodes.map((n) => (typeof n === 'string' ? n : n.name));
    else if (typeof q.nodes === 'number') nodes = new Array(q.nodes).fill('');
    else if (S.health && S.health.worker) nodes = [S.health.worker];
    const n = nodes.length;
    const part = $('q-nodes');
    part.textContent = `${n} ${n === 1 ? 'node' : 'nodes'} live`;
    part.title = nodes.filter(Boolean).join(', ');
    part.classList.toggle('warn', n === 0);
    // The operator's pause (GET /api/queue, queue.stats): the whole queue or some kinds.
    const paused = $('q-paused');
    const kinds = Array.isArray(q.paused_kinds) ? q.paused_kinds : [];
    paused.hidden = !q.paused && kinds.length === 0;
    paused.textContent = q.paused ? 'paused' : `paused: ${kinds.join(', ')}`;
    renderStats();
    fire('queue', q);
  }

  // The stat strip: the last hour's and day's ends (GET api/queue's `ended`, read at most
  // a minute ago) and the live rates of every queue.stats.
  function renderStats() {
    const q = S.queue;
    const items = [];
    const rate = typeof q.success_rate === 'number' ? q.success_rate : null;
    const ended = q.ended || {};
    for (const [window, label] of [['1h', 'last hour'], ['24h', 'last day']]) {
      const counts = ended[window];
      if (!counts) continue;
      items.push([`Done, ${label}`, String(counts.completed)]);
      items.push([`Failed, ${label}`, String(counts.failed)]);
    }
    if (typeof q.throughput_per_min === 'number') items.push(['Jobs per minute', String(q.throughput_per_min)]);
    items.push(['Average run time', typeof q.avg_duration_s === 'number' ? fmtDuration(q.avg_duration_s) : '—']);
    items.push(['Success rate, last hour', rate === null ? '—' : `${Math.round(rate * 100)}%`]);
    const totals = q.totals && q.totals.since_start;
    if (totals) items.push(['Since the server started', `${totals.completed} done, ${totals.failed} failed`]);
    $('stat-strip').replaceChildren(...items.map(([k, v]) => el('li', null,
      el('span', { class: 'stat-name', text: k }), el('span', { class: 'stat-value', text: v }))));
  }



  // --- a confirmation, for the actions that destroy something ---------------------------

  let confirmResolve = null;

  function confirmDialog(title, text, okLabel) {
    const dialog = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel;
    dialog.returnValue = '';
    dialog.showModal();
    return new Promise((resolve) => { confirmResolve = resolve; });
  }

  function closeConfirm() {
    const dialog = $('confirm');
    if (dialog.open) dialog.close('no');
  }

  // --- wiring: the page's own events (each file wires its own controls) --------------------

  function wire() {
    $('notify').addEventListener('click', toggleNotify);
    renderNotifyButton();
    $('f-state').addEventListener('change', setFilters);
    $('f-owner').addEventListener('change', setFilters);
    $('f-kind').addEventListener('change', setFilters);
    let searchTimer = 0;
    $('f-q').addEventListener('input', () => {       // the server searches: not per key
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => setFilters(true), 300);
    });
    $('filters').addEventListener('submit', (ev) => { ev.preventDefault(); setFilters(); });
    $('refresh').addEventListener('click', () => {
      retryLiveNow();
      refreshAll().then(() => ensurePolling());
    });
    $('confirm').addEventListener('close', () => {
      const resolve = confirmResolve;
      confirmResolve = null;
      if (resolve) resolve($('confirm').returnValue === 'ok');
    });
    $('skip').addEventListener('click', (ev) => {
      ev.preventDefault();
      const target = S.session ? $('main') : $('username');
      target.focus();
    });
    window.addEventListener('hashchange', () => { route(); });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) seenEnds();
      if (document.hidden || !S.session) return;
      retryLiveNow();
      ensurePolling(true);
    });
    window.addEventListener('focus', () => { if (S.session) ensurePolling(true); });
    window.addEventListener('storage', (ev) => {
      // Signed in or out in another tab of this browser: follow it.
      if (ev.key !== SESSION_KEY || (S.session && S.session.open)) return;
      const other = loadSession();
      if (!S.session) {
        if (other) {
          S.session = other;
          enter();
        }
      } else if (!other) {
        endSession('You signed out in another tab.');
      } else if (other.token !== S.session.token) {
        const sameUser = other.user && S.session.user && other.user.name === S.session.user.name;
        if (!sameUser) {
          location.reload();
          return;
        }
        S.session = other;                         // the same person, a newer login
        stopLive();
        startLive();
      }
    });
  }

  async function boot() {
    wire();
    S.session = loadSession();
    if (!S.session) {
      // A server with [auth] enabled = false needs no sign-in (everybody is its admin),
      // nor does a host app's own session: ui/session says so with a 200 either way, so a
      // signed-out visit leaves no failed request in the console.
      try {
        const r = await fetch('ui/session', { cache: 'no-store' });
        const data = r.ok ? await r.json() : null;
        if (data && data.signed_in && data.user) {
          S.session = { token: null, expires_at: null, user: data.user, open: true };
        }
      } catch (err) { /* shown when signing in */ }
    }
    if (!S.session) {
      showSignIn('');
      return;
    }
    enter();
  }

  // Exposed for the other files (admin.js, the operator's panel, among them), tests and
  // curious people at the console; the other files add their own functions to it.
  window.jobgate = {
    state: S, hooks: HOOKS, api, el, fmtDuration, fmtMB, isAdmin, announce, renderQueue,
    late, fire, change, lastChange, adopt, enc, ts, fmtAgo, fmtTime, fmtValue, fmtBytes,
    setTitle, noteEnd, relative, route, listKey, setKindFilter, loadQueue, confirmDialog,
    closeConfirm, FINAL, ACTIVE, SESSION_KEY, LAST_USER_KEY,
  };
  // Once every file has run (deferred scripts all run before DOMContentLoaded).
  document.addEventListener('DOMContentLoaded', boot);
})();
