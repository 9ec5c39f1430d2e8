// jobgate's dashboard: plain JavaScript over the JSON API, no build step, no dependencies.
//
// The view lives in the URL hash (#/jobs?state=…&owner=…, #/job/ID), so a reload, a shared
// link or an expired session that sends you back to sign in all return to the same place.
// Live updates come from the event stream (GET api/events with a one-time ticket); when
// it is unavailable the page polls, and stops polling once nothing it shows is active.
'use strict';

(() => {
  const POLL_MS = 1500;
  const SESSION_KEY = 'jobgate.session';
  const LAST_USER_KEY = 'jobgate.user';
  const LOG_PAGE = 1000;          // lines per read of a log (all of them are shown)
  const FINAL = new Set(['completed', 'failed', 'cancelled']);
  const ACTIVE = new Set(['queued', 'running']);
  const ICONS = { queued: '◷', running: '▶', completed: '✓', failed: '✕', cancelled: '⊘' };
  const FINAL_EVENTS = new Set(['job.completed', 'job.failed', 'job.cancelled']);
  const EVENT_META = new Set(['type', 'seq', 'ts', 'job_id', 'vt', 'first', 'lines']);

  const $ = (id) => document.getElementById(id);

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
  function adopt(job, mark) {
    for (const [k, [n, v]] of S.changed.get(job.id) || []) if (n > mark) job[k] = v;
    if (job.state !== 'queued') job.position = null;
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

  // --- session ---------------------------------------------------------------------------

  function loadSession() {
    try {
      const s = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
      if (s && s.token && !(ts(s.expires_at) <= Date.now())) return s;
    } catch (err) { /* a damaged entry is no session */ }
    localStorage.removeItem(SESSION_KEY);
    return null;
  }

  function showSignIn(note) {
    $('app').hidden = true;
    $('signin').hidden = false;
    $('signin-note').textContent = note || '';
    $('signin-error').textContent = '';
    $('password').value = '';
    const last = localStorage.getItem(LAST_USER_KEY) || '';
    const user = $('username');
    if (!user.value) user.value = last;
    setTitle('Sign in · jobgate');
    (user.value ? $('password') : user).focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const username = $('username').value.trim();
    const password = $('password').value;
    const error = $('signin-error');
    error.textContent = '';
    if (!username || !password) {
      error.textContent = 'Enter your user name and password.';
      (username ? $('password') : $('username')).focus();
      return;
    }
    const button = $('signin-button');
    button.disabled = true;
    try {
      const data = await api('POST', 'api/auth/token', { username, password });
      S.session = { token: data.token, expires_at: data.expires_at || null, user: data.user || null };
      localStorage.setItem(SESSION_KEY, JSON.stringify(S.session));
      localStorage.setItem(LAST_USER_KEY, username);
      $('password').value = '';
      await enter();
    } catch (err) {
      error.textContent = err.status === 401 ? 'Wrong user name or password.'
        : `Cannot sign in: ${err.message}`;
      $('password').select();
    } finally {
      button.disabled = false;
    }
  }

  function endSession(note) {
    stopLive();
    stopPolling();
    clearTimeout(S.probeTimer);
    S.probeTimer = 0;
    $('offline').hidden = true;
    clearTimeout(S.expiryTimer);
    clearTimeout(S.refreshTimer);
    S.refreshTimer = 0;
    S.lastEventId = null;
    clearInterval(S.tickTimer);
    S.session = null;
    localStorage.removeItem(SESSION_KEY);
    S.jobs.clear();
    S.order = [];
    S.next = null;
    S.listKey = null;
    S.kinds = [];
    S.queue = null;
    S.detail = null;
    S.waiting = new Set();
    $('job-list').replaceChildren();
    renderWaiting();
    closeConfirm();
    fire('leave');
    showSignIn(note);
  }

  function signOut() {
    endSession('You are signed out.');
    history.replaceState(null, '', '#/jobs');
  }

  async function enter() {
    try {
      const me = await api('GET', 'api/me');
      S.session.user = { name: me.name, admin: Boolean(me.admin) };
      if (!S.session.open) localStorage.setItem(SESSION_KEY, JSON.stringify(S.session));
    } catch (err) {
      if (!S.session) return;                      // 401: the stored session is over
      if (err.status === 0) { showSignIn('Cannot reach the server.'); return; }
      if (!S.session.user) S.session.user = { name: '', admin: false };
    }
    $('signin').hidden = true;
    $('app').hidden = false;
    $('who-name').replaceChildren(S.session.user.name,
      isAdmin() ? el('span', { class: 'role', text: ' (admin)' }) : '');
    $('signout').hidden = Boolean(S.session.open);
    $('priority-field').hidden = !isAdmin();
    $('f-owner-box').hidden = !isAdmin();
    $('f-kind-box').hidden = !isAdmin();
    $('f-q-box').hidden = !isAdmin();
    $('jobs-title').textContent = isAdmin() ? 'All jobs' : 'Your jobs';
    clearTimeout(S.expiryTimer);
    const left = ts(S.session.expires_at) - Date.now();
    if (!Number.isNaN(left)) {
      S.expiryTimer = setTimeout(
        () => endSession('Your session expired. Sign in again to go on where you were.'),
        Math.min(Math.max(left, 0), 2 ** 31 - 1));
    }
    clearInterval(S.tickTimer);
    S.tickTimer = setInterval(tick, 1000);
    if (window.matchMedia('(max-width: 700px)').matches) $('submit-box').open = false;
    loadKinds();
    fire('enter', S.session.user);
    await route();
    startLive();
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

  // --- kinds and the submit form ----------------------------------------------------------

  async function loadKinds() {
    try {
      const data = await api('GET', 'api/kinds');
      S.kinds = data.kinds || [];
    } catch (err) {
      return;
    }
    setKindFilter((S.route.view === 'list' && S.route.params.get('kind')) || '');
    fire('kinds', S.kinds);
    const select = $('kind');
    const previous = select.value || sessionStorage.getItem('jobgate.kind');
    select.replaceChildren(...S.kinds.map((k) => el('option', { value: k.name, text: k.name })));
    if (S.kinds.some((k) => k.name === previous)) select.value = previous;
    renderKindForm();
  }

  function currentKind() {
    return S.kinds.find((k) => k.name === $('kind').value) || null;
  }

  function constraintText(a) {
    const bits = [a.type];
    if (a.min !== null && a.max !== null) bits.push(`${a.min} to ${a.max}`);
    else if (a.min !== null) bits.push(`at least ${a.min}`);
    else if (a.max !== null) bits.push(`at most ${a.max}`);
    if (a.pattern) bits.push(`pattern ${a.pattern}`);
    if (a.type === 'path') bits.push('a file of the input folder, or one you upload');
    if (!a.required && a.default !== null && a.type !== 'boolean') bits.push(`default ${fmtValue(a.default)}`);
    return bits.join(', ');
  }

  function renderKindForm() {
    const kind = currentKind();
    const box = $('kind-fields');
    box.replaceChildren();
    clearFieldErrors();
    $('kind-desc').textContent = kind ? kind.description || '' : 'This server has no kinds.';
    $('submit-button').disabled = !kind;
    if (!kind) return;
    for (const [name, a] of Object.entries(kind.args || {})) box.append(argField(name, a));
  }

  function argField(name, a) {
    const id = `arg-${name}`;
    const hintId = `${id}-hint`;
    const errId = `${id}-error`;
    let input;
    if (a.choices && a.choices.length) {
      input = el('select');
      if (!a.required && (a.default === null || a.default === undefined)) {
        input.append(el('option', { value: '', text: '(none)' }));
      }
      for (const c of a.choices) input.append(el('option', { value: fmtValue(c), text: fmtValue(c) }));
      if (a.default !== null && a.default !== undefined) input.value = fmtValue(a.default);
    } else if (a.type === 'boolean') {
      input = el('input', { type: 'checkbox' });
      input.checked = Boolean(a.default);
    } else {
      const numeric = a.type === 'integer' || a.type === 'number';
      input = el('input', {
        type: a.type === 'url' ? 'url' : 'text',
        inputmode: a.type === 'integer' ? 'numeric' : a.type === 'number' ? 'decimal' : null,
        autocomplete: 'off',
        spellcheck: numeric || a.type === 'url' || a.type === 'path' ? 'false' : null,
        placeholder: a.type === 'path' ? 'a file in the input folder, or upload one'
          : a.type === 'url' ? 'https://…' : null,
      });
      if (a.default !== null && a.default !== undefined) input.value = fmtValue(a.default);
    }
    input.id = id;
    input.name = name;
    input.dataset.arg = name;
    input.dataset.type = a.type;
    if (a.choices && a.choices.length) input.dataset.choices = JSON.stringify(a.choices);
    input.setAttribute('aria-describedby', `${hintId} ${errId}`);
    if (a.required) input.setAttribute('aria-required', 'true');
    const label = el('label', { for: id }, name,
      a.required ? el('span', { class: 'req', text: ' (required)' }) : null);
    const hint = el('p', { class: 'hint', id: hintId },
      [a.description, constraintText(a)].filter(Boolean).join(' · '));
    const error = el('p', { class: 'field-error', id: errId, hidden: true });
    const field = el('div', { class: a.type === 'boolean' ? 'field check' : 'field' });
    field.dataset.field = name;
    if (a.type === 'boolean') field.append(input, label, hint, error);
    else if (a.type === 'path') field.append(label, input, uploadPicker(name, input), hint, error);
    else field.append(label, input, hint, error);
    return field;
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    const units = ['KB', 'MB', 'GB', 'TB'];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
  }

  // A file picker beside a `path` argument: the chosen file is uploaded at once (POST
  // /api/uploads, with XMLHttpRequest for its upload progress, which fetch cannot report
  // everywhere) and the argument then holds its `upload:<id>`.
  function uploadPicker(name, target) {
    const id = `arg-${name}-file`;
    const picker = el('input', { type: 'file', id, class: 'upload-file',
      'aria-label': `upload a file for ${name}` });
    const bar = el('progress', { max: '100', hidden: true, class: 'upload-progress',
      'aria-label': `upload of ${name}` });
    const status = el('span', { class: 'upload-status', role: 'status' });
    picker.addEventListener('change', () => {
      const file = picker.files && picker.files[0];
      if (file) uploadFile(file, target, bar, status, picker);
    });
    return el('div', { class: 'upload' }, picker, bar, status);
  }

  function uploadFile(file, target, bar, status, picker) {
    const button = $('submit-button');
    const xhr = new XMLHttpRequest();
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.open('POST', 'api/uploads');
    const session = S.session;
    if (session && session.token) xhr.setRequestHeader('Authorization', `Bearer ${session.token}`);
    xhr.setRequestHeader('Accept', 'application/json');
    bar.hidden = false;
    bar.value = 0;
    bar.removeAttribute('value');                       // indeterminate until it moves
    status.textContent = `uploading ${file.name} (${fmtBytes(file.size)})…`;
    button.disabled = true;
    picker.disabled = true;
    target.setAttribute('aria-busy', 'true');
    xhr.upload.onprogress = (ev) => {
      if (!ev.lengthComputable) return;
      bar.value = Math.round((ev.loaded / ev.total) * 100);
      status.textContent = `uploading ${file.name}: ${fmtBytes(ev.loaded)} of ${fmtBytes(ev.total)}`;
    };
    const finish = (message) => {
      button.disabled = false;
      picker.disabled = false;
      target.removeAttribute('aria-busy');
      status.textContent = message;
    };
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (err) { data = null; }
      if (xhr.status === 201 && data && data.ref) {
        target.value = data.ref;
        bar.value = 100;
        finish(`uploaded ${data.name} (${fmtBytes(data.size)}) as ${data.ref}`);
        announce(`Uploaded ${data.name}`);
      } else {
        bar.hidden = true;
        const e = (data && data.error) || {};
        finish(`upload failed: ${e.message || `${xhr.status} ${xhr.statusText}`}`);
        if (xhr.status === 401 && session && S.session === session) {
          endSession('Your session expired. Sign in again to go on where you were.');
        }
      }
    };
    xhr.onerror = () => {
      bar.hidden = true;
      finish('upload failed: the connection was cut (nothing was kept; try again)');
    };
    xhr.send(form);
  }

  function argValue(input) {
    const type = input.dataset.type;
    if (input.type === 'checkbox') return input.checked;
    const text = input.value.trim();
    if (text === '') return undefined;               // the server fills in the default
    if (input.dataset.choices) {
      const match = JSON.parse(input.dataset.choices).find((c) => fmtValue(c) === text);
      return match === undefined ? text : match;
    }
    if (type === 'integer' || type === 'number') {
      const n = Number(text);
      return Number.isFinite(n) ? n : text;          // not a number: let the server say so
    }
    return text;
  }

  function clearFieldErrors() {
    for (const p of document.querySelectorAll('#submit-form .field-error')) {
      p.hidden = true;
      p.textContent = '';
    }
    for (const i of document.querySelectorAll('#submit-form [aria-invalid]')) {
      i.removeAttribute('aria-invalid');
    }
    $('submit-error').textContent = '';
  }

  function showFieldError(field, message) {
    const input = field === 'kind' ? $('kind') : field === 'priority' ? $('priority')
      : document.querySelector(`#kind-fields [data-arg="${CSS.escape(field)}"]`);
    if (!input) return false;
    const error = $(`${input.id}-error`) || $(`${field}-error`);
    const prefix = `${field}: `;
    error.textContent = message.startsWith(prefix) ? message.slice(prefix.length) : message;
    error.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return true;
  }

  async function submitJob(ev) {
    ev.preventDefault();
    const kind = currentKind();
    if (!kind) return;
    clearFieldErrors();
    $('submit-note').hidden = true;
    const args = {};
    for (const input of document.querySelectorAll('#kind-fields [data-arg]')) {
      const value = argValue(input);
      if (value !== undefined) args[input.dataset.arg] = value;
    }
    const body = { kind: kind.name, args };
    const prio = $('priority').value.trim();
    if (isAdmin() && prio !== '') body.priority = /^-?\d+$/.test(prio) ? Number(prio) : prio;
    const button = $('submit-button');
    button.disabled = true;
    const mark = S.events;
    try {
      const job = await api('POST', 'api/jobs', body);
      sessionStorage.setItem('jobgate.kind', kind.name);
      adopt(job, mark);
      change(job.id, 'id', job.id);                  // new to the list reads already sent
      const p = S.route.params;
      const owner = p.get('owner');
      const fits = (!p.get('state') || p.get('state') === job.state)
        && (!owner || !isAdmin() || owner === job.owner);
      if (fits && !S.order.includes(job.id)) S.order.unshift(job.id);
      if (job.state === 'queued') S.waiting.add(job.id);
      renderList();
      renderWaiting();
      const row = document.querySelector(`#job-list [data-id="${CSS.escape(job.id)}"]`);
      if (row) {
        row.classList.add('fresh');
        setTimeout(() => row.classList.remove('fresh'), 2500);
      }
      const said = `Submitted ${jobTitle(job)}: ${job.state}` +
        (job.position ? `, #${job.position} in the queue` : '');
      announce(said);
      const note = $('submit-note');
      note.replaceChildren(`${said}. `, el('a', { href: `#/job/${enc(job.id)}`, text: 'Open it' }));
      note.hidden = false;
      clearTimeout(S.noteTimer);
      S.noteTimer = setTimeout(() => { note.hidden = true; }, 8000);
      // On a phone the list is below the form: bring the new row into view.
      if (row && window.matchMedia('(max-width: 700px)').matches) row.scrollIntoView({ block: 'center' });
      loadQueue();
      ensurePolling(true);
    } catch (err) {
      if (!S.session) return;
      if (!(err.status === 422 || err.status === 400) || !err.field ||
          !showFieldError(err.field, err.message)) {
        $('submit-error').textContent = err.message;
      }
    } finally {
      button.disabled = false;
    }
  }

  // --- the job list ------------------------------------------------------------------------

  function listQuery(cursor) {
    const q = new URLSearchParams({ limit: '50' });
    const p = S.route.params;
    if (p.get('state')) q.set('state', p.get('state'));
    if (isAdmin() && p.get('owner')) q.set('owner', p.get('owner'));
    if (isAdmin() && p.get('kind')) q.set('kind', p.get('kind'));
    if (isAdmin() && p.get('q')) q.set('q', p.get('q'));
    if (cursor) q.set('cursor', cursor);
    return q.toString();
  }

  async function loadList() {
    const key = listKey();
    const mark = S.events;
    let data;
    try {
      data = await api('GET', `api/jobs?${listQuery()}`);
      $('list-error').textContent = '';
    } catch (err) {
      if (S.session && err.status !== 0) $('list-error').textContent = err.message;
      return;
    }
    if (key !== listKey() || !S.session) return;    // the filters changed meanwhile
    const ids = data.jobs.map((j) => j.id);
    for (const j of data.jobs) adopt(j, mark);
    const fresh = new Set(ids);
    let rest = [];
    if (data.next && ids.length) {                   // keep older pages already loaded
      const last = ids[ids.length - 1];
      rest = S.order.filter((id) => id < last && !fresh.has(id));
    }
    // Jobs submitted, or changed, after the read left are not in its reply: they stay.
    const newer = S.listKey !== key ? [] : S.order.filter((id) => !fresh.has(id)
      && !rest.includes(id) && lastChange(id) > mark);
    if (!rest.length || S.listKey !== key) S.next = data.next;
    S.order = newer.concat(ids, rest);
    S.listKey = key;
    rememberOwners(data.jobs);
    renderList();
  }

  async function loadMore() {
    if (!S.next) return;
    const key = listKey();
    const mark = S.events;
    try {
      const data = await api('GET', `api/jobs?${listQuery(S.next)}`);
      if (key !== listKey()) return;
      for (const j of data.jobs) {
        adopt(j, mark);
        if (!S.order.includes(j.id)) S.order.push(j.id);
      }
      S.next = data.next;
      rememberOwners(data.jobs);
      renderList();
    } catch (err) {
      if (S.session) $('list-error').textContent = err.message;
    }
  }

  function rememberOwners(jobs) {
    if (!isAdmin()) return;
    const list = $('owners');
    const known = new Set([...list.options].map((o) => o.value));
    for (const j of jobs) {
      if (!known.has(j.owner)) {
        known.add(j.owner);
        list.append(el('option', { value: j.owner }));
      }
    }
  }

  function renderList() {
    const ul = $('job-list');
    const rows = new Map([...ul.children].map((li) => [li.dataset.id, li]));
    let prev = null;
    for (const id of S.order) {
      const job = S.jobs.get(id);
      if (!job) continue;
      let li = rows.get(id);
      if (li) rows.delete(id);
      else {
        li = el('li', { class: 'job' }, el('a', { class: 'job-link', href: `#/job/${enc(id)}` }),
          el('span', { class: 'row-actions' }));
      }
      li.dataset.id = id;
      fillRow(li, job);
      const ref = prev ? prev.nextSibling : ul.firstChild;
      if (li !== ref) ul.insertBefore(li, ref);
      prev = li;
    }
    for (const li of rows.values()) li.remove();
    const empty = $('jobs-empty');
    empty.hidden = S.order.length > 0;
    const p = S.route.params;
    const state = p.get('state');
    const owner = isAdmin() ? p.get('owner') : '';
    const kind = isAdmin() ? p.get('kind') : '';
    const search = isAdmin() ? p.get('q') : '';
    empty.textContent = state || owner || kind || search
      ? `No ${state || ''} ${kind || ''} jobs${owner ? ` of ${owner}` : ''}${
        search ? ` matching “${search}”` : ''} match this filter.`.replace(/ {2,}/g, ' ')
      : 'No jobs here yet. Submit one with the form.';
    $('more').hidden = !S.next;
    renderBulk();
  }

  // --- the Waiting section: the user's own queued jobs in the order they will run -------

  const me = () => (S.session && S.session.user && S.session.user.name) || '';

  async function loadWaiting() {
    if (!S.session || !me()) return;
    const mark = S.events;
    const q = new URLSearchParams({ state: 'queued', limit: '50' });
    if (isAdmin()) q.set('owner', me());
    let data;
    try {
      data = await api('GET', `api/jobs?${q}`);
    } catch (err) {
      return;                                        // the list's read says what is wrong
    }
    if (!S.session) return;
    for (const j of data.jobs) adopt(j, mark);
    // Jobs that changed after the read left (a submit, an event) keep their place here.
    const kept = [...S.waiting].filter((id) => lastChange(id) > mark);
    S.waiting = new Set([...data.jobs.map((j) => j.id), ...kept]);
    S.waitingMore = Boolean(data.next);
    renderWaiting();
  }

  // Why a queued job has no place yet: its start is later, or it waits for other jobs.
  function waitReason(job) {
    if (ts(job.run_at) > Date.now()) return startText(job);
    const deps = (job.depends_on || []).length;
    if (deps) return `waiting for ${deps === 1 ? 'the job' : `the ${deps} jobs`} it depends on`;
    return 'waiting for its turn';
  }

  const counting = (job) => job.position === null || job.position === undefined
    ? ts(job.run_at) > Date.now() : false;

  function waitingJobs() {
    const jobs = [...S.waiting].map((id) => S.jobs.get(id))
      .filter((j) => j && j.state === 'queued' && j.owner === me());
    const placed = jobs.filter((j) => j.position).sort((a, b) => a.position - b.position);
    const later = jobs.filter((j) => !j.position)
      .sort((a, b) => (ts(a.run_at) || 0) - (ts(b.run_at) || 0) || ts(a.created_at) - ts(b.created_at));
    return [placed, later];
  }

  function renderWaiting() {
    const box = $('waiting');
    const state = S.route.params.get('state') || '';
    const [placed, later] = S.session ? waitingJobs() : [[], []];
    box.hidden = S.route.view !== 'list' || !(state === '' || state === 'queued')
      || !(placed.length + later.length);
    if (box.hidden) return;
    $('waiting-count').textContent = ` (${placed.length + later.length}${S.waitingMore ? '+' : ''})`;
    const estimate = (job) => (job.message || '').replace(/^position \d+(, )?/, '');
    const entries = [...placed.map((j) => [j, `#${j.position}`, estimate(j), 'pos']),
      ...later.map((j) => [j, 'later', waitReason(j), 'later'])];
    // Kept by id and moved, not drawn again: a link with the focus keeps it.
    const ol = $('waiting-list');
    const focused = ol.contains(document.activeElement) ? document.activeElement : null;
    const ids = new Set(entries.map(([job]) => job.id));
    for (const li of [...ol.children]) if (!ids.has(li.dataset.id)) li.remove();  // first: fewer moves
    const items = new Map([...ol.children].map((li) => [li.dataset.id, li]));
    let prev = null;
    for (const [job, badge, why, cls] of entries) {
      let li = items.get(job.id);
      if (li) items.delete(job.id);
      else {
        li = el('li', { class: 'waiting-job', 'data-id': job.id },
          el('a', { href: `#/job/${enc(job.id)}` }));
      }
      const sig = JSON.stringify([badge, why, cls, jobTitle(job)]);
      if (li.sig !== sig) {
        li.sig = sig;
        li.firstElementChild.replaceChildren(
          el('span', { class: cls, text: badge }),
          el('span', { class: 'kind', text: jobTitle(job) }),
          why ? el('span', { class: counting(job) ? 'msg countdown' : 'msg', text: why }) : '');
      }
      const ref = prev ? prev.nextSibling : ol.firstChild;
      if (li !== ref) ol.insertBefore(li, ref);
      prev = li;
    }
    if (focused && focused.isConnected && document.activeElement !== focused) focused.focus();
  }

  function stateBadge(state) {
    return el('span', { class: `state state-${state}` },
      el('span', { class: 'icon', 'aria-hidden': 'true', text: ICONS[state] || '?' }), ` ${state}`);
  }

  function progressBits(job) {
    const bar = el('progress', { max: '100', 'aria-label': `Progress of ${job.kind}` });
    if (job.progress !== null && job.progress !== undefined) bar.value = job.progress;
    const pct = job.progress !== null && job.progress !== undefined
      ? `${Math.floor(job.progress)}%` : '';
    return [bar, el('span', { class: 'pct', text: pct }),
      el('span', { class: 'msg', text: job.message || '' })];
  }

  function statusCell(job) {
    const cell = el('span', { class: 'cell-status' });
    if (job.state === 'queued') {
      if (job.position) {
        cell.append(el('span', { class: 'pos', title: 'Place in the queue', text: `#${job.position} in queue` }));
      }
      const start = ts(job.run_at);
      if (start > Date.now()) {
        cell.append(el('span', { class: 'msg countdown', title: fmtTime(job.run_at), text: startText(job) }));
      } else if (job.message) {
        // The queue's message repeats the place shown beside it: only its estimate stays.
        const text = job.message.replace(/^position \d+(, )?/, '');
        if (text) cell.append(el('span', { class: 'msg', text }));
      }
    } else if (job.state === 'running') {
      cell.classList.add('running');
      cell.append(...progressBits(job));
    } else if (job.state === 'failed') {
      cell.append(el('span', { class: 'err', text: job.error || 'failed' }));
    } else {
      cell.append(el('span', { class: 'msg', text: job.message || '' }));
    }
    return cell;
  }

  // How long a job has waited or run, or how long it took: [label, duration text].
  function timing(job) {
    const now = Date.now();
    if (job.state === 'queued') {
      const since = ts(job.run_at) || ts(job.created_at);
      return ['waiting', since > now ? 'not yet due' : fmtDuration((now - since) / 1000)];
    }
    if (job.state === 'running') return ['running', fmtDuration((now - ts(job.started_at)) / 1000)];
    const start = ts(job.started_at);
    const end = ts(job.finished_at);
    if (Number.isNaN(start) || Number.isNaN(end)) return ['took', 'never ran'];
    return ['took', fmtDuration((end - start) / 1000)];
  }

  // When it was submitted, or when it ended: relative, kept current by tick().
  function whenText(job) {
    return FINAL.has(job.state) && job.finished_at ? `finished ${fmtAgo(job.finished_at)}`
      : `submitted ${fmtAgo(job.created_at)}`;
  }

  function whenBits(job) {
    const iso = FINAL.has(job.state) && job.finished_at ? job.finished_at : job.created_at;
    return el('span', { class: 'when', title: fmtTime(iso), text: whenText(job) });
  }

  // A delayed job's start (a retry's backoff): counted down, never a frozen "in 2.1 s".
  function startText(job) {
    const start = ts(job.run_at);
    if (!(start > Date.now())) return job.attempt > 0 ? 'retrying now' : 'starting when a slot is free';
    const left = fmtDuration((start - Date.now()) / 1000).replace(/\.\d s$/, ' s');
    if (job.attempt > 0 && job.max_attempts > 1) return `attempt ${job.attempt} failed; retrying in ${left}`;
    return `starts in ${left}`;
  }

  function timeText(job) {
    const [label, text] = timing(job);
    return text === 'never ran' || text === 'not yet due' ? text : `${label} ${text}`;
  }

  function attemptText(job) {
    if (job.max_attempts > 1 || job.attempt > 1) {
      return `attempt ${Math.max(job.attempt, 1)} of ${job.max_attempts}`;
    }
    return '';
  }

  // The argument that says which job this is: the first required one, else the first.
  function mainArg(job) {
    const kind = S.kinds.find((k) => k.name === job.kind);
    const args = job.args || {};
    const names = Object.keys(args);
    const required = kind ? Object.entries(kind.args || {}).filter(([, a]) => a.required).map(([n]) => n) : [];
    const name = required.find((n) => n in args) || names[0];
    return name === undefined ? '' : fmtValue(args[name]);
  }

  function jobTitle(job) {
    const arg = mainArg(job);
    return arg ? `${job.kind} ${arg.length > 80 ? `${arg.slice(0, 79)}…` : arg}` : job.kind;
  }

  function argsText(job) {
    return Object.entries(job.args || {}).map(([k, v]) => `${k}=${fmtValue(v)}`).join(' ');
  }

  // The buttons beside a row (outside its link): what one would do with it next.
  function rowActions(job) {
    const name = `${job.kind} ${argsText(job)}`.trim();
    const buttons = [];
    if (ACTIVE.has(job.state)) {
      buttons.push(el('button', { type: 'button', class: 'secondary small', 'data-act': 'cancel',
        'aria-label': `Cancel ${name}`, text: 'Cancel', onclick: (ev) => rowAct(job.id, 'cancel', ev.currentTarget) }));
    }
    if (job.state === 'failed' || job.state === 'cancelled') {
      buttons.push(el('button', { type: 'button', class: 'secondary small', 'data-act': 'retry',
        'aria-label': `Retry ${name}`, text: 'Retry', onclick: (ev) => rowAct(job.id, 'retry', ev.currentTarget) }));
    }
    const outputs = (job.outputs || []).map(outputEntry);
    if (FINAL.has(job.state) && outputs.length === 1) {
      const o = outputs[0];
      const size = o.size === null || o.size === undefined ? '' : ` (${fmtBytes(o.size)})`;
      buttons.push(el('button', { type: 'button', class: 'secondary small', 'data-act': 'download',
        'aria-label': `Download ${o.name}${size}`, title: `${o.name}${size}`, text: 'Download',
        onclick: () => download(job.id, o.name, $('list-error')) }));
    }
    return buttons;
  }

  async function rowAct(id, action, button) {
    const job = S.jobs.get(id);
    if (!job) return;
    $('list-error').textContent = '';
    if (action === 'cancel') {
      const ok = await confirmDialog(`Cancel ${job.kind}?`, job.state === 'running'
        ? 'Its process is stopped now, and what it has done so far is lost.'
        : 'It leaves the queue and will not run.', 'Cancel job');
      if (!ok) return;
    }
    button.disabled = true;
    const mark = S.events;
    try {
      const updated = await api('POST', `api/jobs/${enc(id)}/${action}`);
      adopt(updated, mark);
      announce(`${updated.kind} is ${updated.state}`);
      renderList();
      scheduleRefresh(false);
      ensurePolling(true);
    } catch (err) {
      if (S.session) $('list-error').textContent = `cannot ${action} ${job.kind}: ${err.message}`;
      if (err.status === 409 || err.status === 404) loadList();
    } finally {
      button.disabled = false;
    }
  }

  // --- bulk actions over the current filter (POST api/jobs/bulk), asked once with the count --

  // What each bulk button does in this view: [body filter, label, or null when it is hidden].
  function bulkPlan() {
    const p = S.route.params;
    const state = p.get('state') || '';
    const owner = isAdmin() ? (p.get('owner') || '') : '';
    const kind = isAdmin() ? (p.get('kind') || '') : '';
    const whose = isAdmin() ? (owner ? `${owner}'s ` : "everyone's ") : 'my ';
    const base = { ...(owner ? { owner } : {}), ...(kind ? { kind } : {}) };
    const plan = {};
    // A search narrows the list further than a bulk filter can: no bulk action then, so
    // none takes jobs the view does not show.
    if (isAdmin() && p.get('q')) return { cancel: null, retry: null, delete: null };
    const cancelState = state === '' ? 'queued' : (ACTIVE.has(state) ? state : null);
    plan.cancel = cancelState
      ? [{ ...base, state: cancelState }, `Cancel ${whose}${cancelState} ${kind ? `${kind} ` : ''}jobs`]
      : null;
    const retryState = state === '' ? 'failed' : (state === 'failed' || state === 'cancelled' ? state : null);
    plan.retry = retryState ? [{ ...base, state: retryState }, `Retry all ${retryState}`] : null;
    const deleteState = state === '' ? null : (FINAL.has(state) ? state : undefined);
    plan.delete = deleteState === undefined ? null
      : [{ ...base, ...(deleteState ? { state: deleteState } : { state: [...FINAL] }) },
        deleteState ? `Delete ${deleteState}` : 'Delete finished'];
    return plan;
  }

  function renderBulk() {
    const plan = bulkPlan();
    for (const action of ['cancel', 'retry', 'delete']) {
      const button = $(`bulk-${action}`);
      button.hidden = !plan[action];
      if (plan[action]) button.textContent = plan[action][1];
    }
  }

  const BULK_DONE = { cancel: 'Cancelled', retry: 'Queued again', delete: 'Deleted' };

  async function bulk(action) {
    const planned = bulkPlan()[action];
    if (!planned) return;
    const [filter, label] = planned;
    const note = $('bulk-note');
    note.textContent = '';
    $('list-error').textContent = '';
    const button = $(`bulk-${action}`);
    button.disabled = true;
    try {
      const counted = await api('POST', 'api/jobs/bulk', { action, filter, dry_run: true });
      if (!counted.matched) {
        note.textContent = `${label}: no job to take.`;
        return;
      }
      const n = counted.matched;
      const jobs = `${n}${counted.more ? '+' : ''} job${n === 1 ? '' : 's'}`;
      const ok = await confirmDialog(`${label}?`, {
        cancel: `This cancels ${jobs}: queued ones will not run, running ones are stopped now.`,
        retry: `This queues ${jobs} again.`,
        delete: `This deletes ${jobs} with their logs and output files. It cannot be undone.`,
      }[action], `${label} (${jobs})`);
      if (!ok) return;
      const done = await api('POST', 'api/jobs/bulk', { action, filter });
      const skipped = Object.values(done.skipped || {}).reduce((a, b) => a + b, 0);
      note.textContent = `${BULK_DONE[action]} ${done.done} job${done.done === 1 ? '' : 's'}` +
        (skipped ? ` (${skipped} had moved on meanwhile)` : '') +
        (done.more ? '; more are left: run it again.' : '.');
      announce(note.textContent);
      await refreshAll();
      ensurePolling(true);
    } catch (err) {
      if (S.session) $('list-error').textContent = `${label}: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  function fillRow(li, job) {
    const sig = JSON.stringify(job);
    if (li.sig === sig) return;                      // unchanged: keep the DOM as it is
    li.sig = sig;
    li.lastElementChild.replaceChildren(...rowActions(job));
    li.dataset.state = job.state;
    const a = li.firstElementChild;
    const meta = [attemptText(job)].filter(Boolean);
    a.replaceChildren(
      el('span', { class: 'cell-state' }, stateBadge(job.state)),
      el('span', { class: 'cell-main' },
        el('span', { class: 'kind', text: job.kind }),
        el('span', { class: 'args', text: argsText(job) }),
        isAdmin() ? el('span', { class: 'owner', text: job.owner }) : null),
      statusCell(job),
      el('span', { class: 'cell-meta' },
        el('span', { class: 'elapsed', text: timeText(job) }),
        meta.length ? el('span', { class: 'attempt', text: meta.join(' · ') }) : null,
        whenBits(job)),
    );
    a.setAttribute('aria-label',
      `${job.kind} ${argsText(job)}, ${job.state}` +
      (job.position ? `, number ${job.position} in the queue` : '') +
      (job.state === 'running' && job.progress !== null ? `, ${Math.floor(job.progress)}%` : '') +
      (job.error ? `, ${job.error}` : ''));
  }

  function tick() {
    renderOffline();
    if (S.transport === 'offline') return;           // what it would count is not known
    // The hour's numbers come with GET api/queue only (queue.stats has the rates).
    if (S.queueReadAt && Date.now() - S.queueReadAt > 60000 && !document.hidden) {
      S.queueReadAt = Date.now();
      loadQueue();
    }
    for (const li of document.querySelectorAll('#job-list li.job')) {
      const job = S.jobs.get(li.dataset.id);
      if (!job) continue;
      if (ACTIVE.has(job.state)) {
        const span = li.querySelector('.elapsed');
        if (span) span.textContent = timeText(job);
      }
      const when = li.querySelector('.when');
      if (when) when.textContent = whenText(job);
      const countdown = li.querySelector('.countdown');
      if (countdown) countdown.textContent = startText(job);
    }
    for (const li of document.querySelectorAll('#waiting-list li')) {
      const job = S.jobs.get(li.dataset.id);
      const span = li.querySelector('.countdown');
      if (job && span) span.textContent = startText(job);
    }
    const countdown = document.querySelector('#job-status .countdown');
    if (countdown && S.detail && S.jobs.get(S.detail.id)) countdown.textContent = startText(S.jobs.get(S.detail.id));
    if (S.detail) {
      const job = S.jobs.get(S.detail.id);
      const dd = $('fact-time');
      if (job && dd && ACTIVE.has(job.state)) dd.textContent = timing(job)[1];
    }
  }

  // --- job detail --------------------------------------------------------------------------

  async function openDetail(id) {
    if (!S.detail || S.detail.id !== id) {
      S.detail = {
        id, lastN: 0, follow: true, pending: [], missing: false, loadingLogs: false,
        logsAgain: false, logsLoaded: false, lineEls: new Map(), total: null, textRoute: false,
      };
      $('job-log').replaceChildren();
      $('job-deliveries-box').hidden = true;
      $('act-error').textContent = '';
      setFollow(true);
    }
    renderDetail();
    await loadDetail();
    const title = $('job-title');
    if (document.activeElement === document.body || !document.activeElement) title.focus();
  }

  async function loadDetail() {
    const d = S.detail;
    if (!d) return;
    const mark = S.events;
    try {
      const job = await api('GET', `api/jobs/${enc(d.id)}`);
      if (S.detail !== d) return;
      adopt(job, mark);
      d.missing = false;
    } catch (err) {
      if (S.detail !== d) return;
      if (err.status === 404) d.missing = true;
      else return;
    }
    renderDetail();
    if (!d.missing) await loadLogs();
  }

  async function loadLogs() {
    const d = S.detail;
    if (!d) return;
    if (d.loadingLogs) {
      d.logsAgain = true;                            // lines may have come after that read
      return;
    }
    d.loadingLogs = true;
    renderLogState();
    try {
      for (;;) {
        d.logsAgain = false;
        const data = await api('GET', `api/jobs/${enc(d.id)}/logs?after=${d.lastN}&limit=${LOG_PAGE}`);
        if (S.detail !== d) return;
        // Servers that keep a capped log's head and tail say what they dropped and how
        // many lines there are, and serve the log as text: absent, it is all there is.
        if (typeof data.total === 'number') d.total = data.total;
        if ('dropped' in data || 'total' in data) d.textRoute = true;
        if (data.dropped) d.dropped = data.dropped;
        addLogLines(d, data.lines.map((l) => [l.n, l.line, Boolean(l.gap)]));
        if (data.lines.length < LOG_PAGE && !d.logsAgain) break;
      }
      d.logsLoaded = true;
    } catch (err) {
      /* the next poll or event tries again */
    } finally {
      d.loadingLogs = false;
      renderLogState();
    }
  }

  function addLogLines(d, lines) {
    const fresh = lines.filter(([n]) => n > d.lastN);
    if (!fresh.length) return;
    if (d.follow) writeLog(d, fresh);
    else d.pending.push(...fresh);
    d.lastN = fresh[fresh.length - 1][0];
    renderLogState();
  }

  // A `replace` event: line `n` again, as a progress bar redraws it (`\r`): updated where
  // it is, not added.
  function replaceLogLine(d, n, line) {
    const held = d.pending.find(([m]) => m === n);
    if (held) held[1] = line;
    const e = d.lineEls.get(n);
    if (e) fillLine(e, line);
  }

  // ANSI SGR colours (ESC[…m: 0 reset, 1 bold, 22 normal, 30–37 and 90–97 colours, 39
  // default, 40–47 and 100–107 backgrounds, 49) become spans with classes; every other
  // escape or control sequence is dropped. Text goes in by textContent only.
  const ANSI = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f]/g;

  function ansiSpans(text) {
    const out = [];
    let fg = null;
    let bg = null;
    let bold = false;
    let last = 0;
    const push = (piece) => {
      if (!piece) return;
      if (fg === null && bg === null && !bold) {
        out.push(piece);
        return;
      }
      const cls = [fg !== null ? `ansi-fg-${fg}` : '', bg !== null ? `ansi-bg-${bg}` : '', bold ? 'ansi-bold' : '']
        .filter(Boolean).join(' ');
      out.push(el('span', { class: cls, text: piece }));
    };
    ANSI.lastIndex = 0;
    for (let m = ANSI.exec(text); m; m = ANSI.exec(text)) {
      push(text.slice(last, m.index));
      last = ANSI.lastIndex;
      if (m[2] !== 'm') continue;
      const codes = m[1] === '' ? [0] : m[1].split(/[;:]/).map(Number);
      for (let i = 0; i < codes.length; i++) {
        const c = codes[i];
        if (c === 0) { fg = null; bg = null; bold = false; }
        else if (c === 1) bold = true;
        else if (c === 22) bold = false;
        else if (c >= 30 && c <= 37) fg = c - 30;
        else if (c >= 90 && c <= 97) fg = c - 90 + 8;
        else if (c === 39) fg = null;
        else if (c >= 40 && c <= 47) bg = c - 40;
        else if (c >= 100 && c <= 107) bg = c - 100 + 8;
        else if (c === 49) bg = null;
        else if (c === 38 || c === 48) i += codes[i + 1] === 5 ? 2 : 4;  // 256 / RGB: skipped
      }
    }
    push(text.slice(last));
    return out;
  }

  function fillLine(e, text) {
    e.replaceChildren(...ansiSpans(text), '\n');
  }

  function writeLog(d, entries) {
    const pre = $('job-log');
    const bits = document.createDocumentFragment();
    let prev = d.shownN || 0;                       // the last line written
    for (const [n, line, gap] of entries) {
      // The server's gap line stands for the lines it dropped: one notice in its place.
      const dropped = gap && d.dropped && d.dropped.first === n ? d.dropped : null;
      if (dropped) {
        bits.append(gapEl(d, dropped.first, dropped.last));
        prev = dropped.last;
        continue;
      }
      if (n > prev + 1) bits.append(gapEl(d, prev + 1, n - 1));
      const e = el('span', { class: 'ln' });
      e.dataset.n = n;
      fillLine(e, line);
      d.lineEls.set(n, e);
      bits.append(e);
      prev = n;
    }
    d.shownN = prev;
    pre.append(bits);
    pre.scrollTop = pre.scrollHeight;
  }

  // Lines the server did not keep (a capped log keeps its head and tail): said where they
  // were, with the way to what there is.
  function gapEl(d, first, last) {
    const range = first === last ? `line ${first.toLocaleString()}` : `lines ${first.toLocaleString()}–${last.toLocaleString()}`;
    return el('span', { class: 'log-gap' }, `… ${range} not kept — `,
      el('a', { href: '#', onclick: (ev) => { ev.preventDefault(); downloadLog(); }, text: 'download the log' }), '\n');
  }

  // The whole kept log as a text file: the server's text route where it has one, else
  // the lines this page has read (all of them: it keeps every line it was sent).
  async function downloadLog() {
    const d = S.detail;
    if (!d) return;
    const job = S.jobs.get(d.id);
    const name = `${(job ? job.kind : 'job')}-${d.id}.log`;
    let text = null;
    if (d.textRoute) {
      try {
        const r = await fetch(`api/jobs/${enc(d.id)}/logs?format=text`, {
          headers: S.session && S.session.token ? { Authorization: `Bearer ${S.session.token}` } : {},
          cache: 'no-store',
        });
        if (r.ok && (r.headers.get('content-type') || '').startsWith('text/plain')) text = await r.text();
      } catch (err) { text = null; }
    }
    if (text === null) {
      const lines = [...d.lineEls.values()].map((e) => e.textContent).join('');
      const held = d.pending.map(([, line]) => `${line}\n`).join('');
      text = lines + held;
    }
    const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
    const a = el('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function setFollow(on) {
    const d = S.detail;
    const button = $('log-follow');
    button.setAttribute('aria-pressed', on ? 'true' : 'false');
    button.textContent = on ? 'Pause' : 'Follow';
    if (!d) return;
    d.follow = on;
    if (on && d.pending.length) {
      const held = d.pending;
      d.pending = [];
      writeLog(d, held);
    }
    renderLogState();
  }

  function renderLogState() {
    const d = S.detail;
    if (!d) return;
    const job = S.jobs.get(d.id);
    let text;
    if (!d.follow) {
      text = d.pending.length ? `Paused: ${d.pending.length} new lines held back.` : 'Paused.';
      $('log-follow').textContent = d.pending.length ? `Follow (${d.pending.length} new)` : 'Follow';
    } else if (d.loadingLogs || !d.logsLoaded) {
      // Never "End of the log." while pages are still coming.
      text = d.total ? `Loading… (${d.lastN.toLocaleString()} of ${d.total.toLocaleString()} lines)` : 'Loading…';
    } else if (job && ACTIVE.has(job.state)) {
      text = 'Following the log.';
    } else {
      const shown = d.lineEls.size;
      const dropped = d.dropped ? d.dropped.last - d.dropped.first + 1 : 0;
      text = !shown ? 'No log lines.' : dropped
        ? `End of the log (${(d.total || shown + dropped).toLocaleString()} lines, `
          + `${dropped.toLocaleString()} not kept).`
        : `End of the log (${shown.toLocaleString()} lines).`;
    }
    $('log-state').textContent = text;
    $('log-download').hidden = !d.lineEls.size && !d.pending.length;
  }

  function fact(name, value, id) {
    return [el('dt', { text: name }), el('dd', { text: value, id: id || null })];
  }

  function renderDetail() {
    const d = S.detail;
    if (!d) return;
    const job = S.jobs.get(d.id);
    $('job-missing').hidden = !d.missing;
    $('job-body').hidden = d.missing || !job;
    if (d.missing) {
      $('job-missing').textContent = `There is no job ${d.id}, or it is not yours to see.`;
      setTitle('No such job · jobgate');
      return;
    }
    if (!job) return;
    setTitle(`${jobTitle(job)} · ${job.state} · jobgate`);
    $('job-title').textContent = jobTitle(job);
    $('job-id').textContent = job.id;
    $('job-state').replaceChildren(stateBadge(job.state));
    $('job-state').dataset.state = job.state;

    const status = $('job-status');
    status.replaceChildren();
    if (job.state === 'queued' && job.position) {
      status.append(el('span', { class: 'pos', text: `#${job.position} in queue` }));
      // Its message repeats the place (as it was when sent): only the rest stays.
      const rest = (job.message || '').replace(/^position \d+(, )?/, '');
      if (rest) status.append(el('span', { class: 'msg', text: rest }));
    } else if (job.state === 'queued' && ts(job.run_at) > Date.now()) {
      status.append(el('span', { class: 'msg countdown', title: fmtTime(job.run_at), text: startText(job) }));
    } else if (job.state === 'running' || job.state === 'completed') {
      status.append(...progressBits(job.state === 'completed' && job.progress === null
        ? { ...job, progress: 100 } : job));
    } else if (job.message) {
      status.append(el('span', { class: 'msg', text: job.message }));
    }

    const error = $('job-error');
    error.hidden = !job.error;
    error.textContent = job.error || '';

    const facts = [
      ...fact('Owner', job.owner),
      ...fact({ waiting: 'Waiting', running: 'Running for', took: 'Duration' }[timing(job)[0]],
        timing(job)[1], 'fact-time'),
      // A job that never ran has had no attempt: not "Attempt 0 of 1".
      ...(job.attempt > 0 ? fact('Attempt', `${job.attempt} of ${job.max_attempts}`)
        : job.max_attempts > 1 ? fact('Attempts', `none yet, up to ${job.max_attempts}`) : []),
      ...fact('Priority', String(job.priority)),
      ...fact('Submitted', `${fmtAgo(job.created_at)} (${fmtTime(job.created_at)})`),
    ];
    if (job.started_at) facts.push(...fact('Started', `${fmtAgo(job.started_at)} (${fmtTime(job.started_at)})`));
    if (job.finished_at) facts.push(...fact('Finished', `${fmtAgo(job.finished_at)} (${fmtTime(job.finished_at)})`));
    if (job.worker) facts.push(...fact('Worker', job.worker));
    if (job.memory_mb) facts.push(...fact('Memory reserved', fmtMB(job.memory_mb)));
    if (job.peak_memory_mb !== null && job.peak_memory_mb !== undefined) {
      facts.push(...fact('Peak memory', fmtMB(job.peak_memory_mb)));
    }
    $('job-facts').replaceChildren(...facts);

    const args = Object.entries(job.args || {});
    $('job-args').replaceChildren(...(args.length
      ? args.flatMap(([k, v]) => fact(k, fmtValue(v))) : [el('dd', { text: 'none' })]));
    const hasResult = job.result !== null && job.result !== undefined;
    $('job-result-box').hidden = !hasResult;
    $('job-result').textContent = hasResult ? JSON.stringify(job.result, null, 2) : '';

    const outputs = (job.outputs || []).map(outputEntry);
    $('job-no-outputs').hidden = outputs.length > 0;
    $('job-outputs').replaceChildren(...outputs.map((o) => el('li', { class: o.partial ? 'partial' : null },
      el('button', { type: 'button', class: 'link', 'data-output': o.name, onclick: () => download(job.id, o.name) },
        el('span', { 'aria-hidden': 'true', text: '⬇ ' }), o.name),
      o.size === null ? '' : el('span', { class: 'output-size', text: ` ${fmtBytes(o.size)}` }),
      // A run that did not complete left it: whatever it holds is not the job's result.
      o.partial ? el('span', { class: 'output-partial', text: ' partial: the job did not complete' }) : '')));

    if (FINAL.has(job.state) && S.detail.deliveriesFor !== job.finished_at) {
      S.detail.deliveriesFor = job.finished_at;
      loadDeliveries(job.id);
    }

    $('act-cancel').hidden = !ACTIVE.has(job.state);
    $('act-retry').hidden = !(job.state === 'failed' || job.state === 'cancelled');
    $('act-delete').hidden = !FINAL.has(job.state);
    renderLogState();
  }

  // The webhooks and notifications of a finished job, with their last attempt.
  async function loadDeliveries(id) {
    let found = [];
    try {
      found = (await api('GET', `api/jobs/${enc(id)}/deliveries`)).deliveries || [];
    } catch (err) {
      found = [];
    }
    if (!S.detail || S.detail.id !== id) return;
    $('job-deliveries-box').hidden = found.length === 0;
    $('job-deliveries').replaceChildren(...found.map((d) => {
      const last = d.last_status ? `HTTP ${d.last_status}` : (d.last_error || '');
      const tries = `${d.attempts} attempt${d.attempts === 1 ? '' : 's'}`;
      return el('li', { class: `delivery delivery-${d.state}` },
        el('span', { text: `${d.channel} (${d.source}) ` }),
        el('code', { text: d.target }),
        el('span', { class: 'delivery-state', text: ` ${d.state}, ${tries}${last ? `, ${last}` : ''}` }));
    }));
  }

  // A signed link the browser fetches itself: it streams the file to disk (a fetch with
  // the bearer token would hold all of a multi-GB output in memory first).
  async function download(id, name, errorBox) {
    const box = errorBox || $('act-error');
    box.textContent = '';
    try {
      const link = await api('POST', `api/jobs/${enc(id)}/outputs/${name.split('/').map(enc).join('/')}/link`);
      const a = el('a', { href: relative(link.url), download: name.split('/').pop() });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (err) {
      if (err.status !== 401) box.textContent = `cannot download ${name}: ${err.message}`;
    }
  }

  // An entry of a job's outputs: an object, or a plain name (what older servers sent).
  function outputEntry(o) {
    return typeof o === 'string' ? { name: o, size: null, content_type: null, partial: false } : o;
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

  // --- actions, with a confirmation where they destroy something ----------------------------

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

  async function act(action) {
    const d = S.detail;
    const job = d && S.jobs.get(d.id);
    if (!job) return;
    $('act-error').textContent = '';
    if (action === 'cancel') {
      const ok = await confirmDialog('Cancel this job?', job.state === 'running'
        ? 'Its process is stopped now, and what it has done so far is lost.'
        : 'It leaves the queue and will not run.', 'Cancel job');
      if (!ok) return;
    } else if (action === 'delete') {
      const ok = await confirmDialog('Delete this job?',
        'Its log and output files are deleted too. This cannot be undone.', 'Delete job');
      if (!ok) return;
    }
    const button = $(`act-${action}`);
    button.disabled = true;
    const label = button.textContent;
    if (action === 'cancel') button.textContent = 'Cancelling…';
    try {
      if (action === 'delete') {
        await api('DELETE', `api/jobs/${enc(job.id)}`);
        S.jobs.delete(job.id);
        S.order = S.order.filter((id) => id !== job.id);
        announce(`Deleted ${job.kind} ${job.id}`);
        location.hash = S.lastListHash;
        return;
      }
      const mark = S.events;
      const updated = await api('POST', `api/jobs/${enc(job.id)}/${action}`);
      adopt(updated, mark);
      announce(`${updated.kind} is ${updated.state}`);
      renderDetail();
      renderList();
      scheduleRefresh(true);
      ensurePolling(true);
    } catch (err) {
      if (S.session) $('act-error').textContent = err.message;
      if (err.status === 409 || err.status === 404) loadDetail();
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  // --- live updates: the event stream, or polling -------------------------------------------

  function setTransport(t) {
    const was = S.transport;
    S.transport = t;
    const c = $('conn');
    c.dataset.transport = t;
    c.firstElementChild.textContent = {
      live: 'Live', polling: 'Polling', idle: 'Up to date', offline: 'Offline',
      connecting: 'Connecting',
    }[t] || t;
    c.title = {
      live: 'Updates arrive as they happen',
      polling: 'The event stream is unavailable: checking every few seconds',
      idle: 'Nothing active: not checking again until you act, refresh or come back to this tab',
      offline: 'The server cannot be reached',
      connecting: '',
    }[t] || '';
    if (t === 'offline' && was !== 'offline') goneOffline();
    else if (t !== 'offline' && was === 'offline') backOnline();
  }

  // --- the server out of reach: say so, stop the clocks, look again now and then -------------

  async function reachable() {
    try {
      await fetch('health', { cache: 'no-store' });
      return true;                                   // any answer, even 503: it is there
    } catch (err) {
      return false;
    }
  }

  function goneOffline() {
    S.offlineSince = Date.now();
    S.probeMs = 2000;
    stopPolling();
    document.body.classList.add('offline');
    $('offline').hidden = false;
    scheduleProbe();
  }

  function scheduleProbe() {
    clearTimeout(S.probeTimer);
    S.probeAt = Date.now() + S.probeMs;
    S.probeTimer = setTimeout(probe, S.probeMs);
    S.probeMs = Math.min(S.probeMs * 2, 30000);
    renderOffline();
  }

  async function probe() {
    clearTimeout(S.probeTimer);
    S.probeTimer = 0;
    $('offline-text').textContent = offlineText('checking now…');
    const ok = await reachable();
    if (!S.session || S.transport !== 'offline') return;
    if (ok) setTransport(S.es ? 'live' : 'polling');
    else scheduleProbe();
  }

  function backOnline() {
    clearTimeout(S.probeTimer);
    S.probeTimer = 0;
    document.body.classList.remove('offline');
    $('offline').hidden = true;
    announce('The server can be reached again.');
    if (!S.session) return;
    if (S.liveSupported && !S.es) {
      clearTimeout(S.liveTimer);
      S.liveTimer = 0;
      S.liveRetryMs = 2000;
      startLive();
    }
    refreshAll().then(() => ensurePolling());
    tick();
  }

  function offlineText(next) {
    const since = new Date(S.offlineSince).toLocaleTimeString();
    return `The server cannot be reached (since ${since}): what this page shows may be out `
      + `of date, and its clocks are stopped. ${next}`;
  }

  function renderOffline() {
    if (S.transport !== 'offline' || !S.probeTimer) return;
    const left = Math.max(0, Math.ceil((S.probeAt - Date.now()) / 1000));
    $('offline-text').textContent = offlineText(`Trying again in ${left} s.`);
  }

  function startLive() {
    if (!S.session || S.es) return;
    if (!S.liveSupported) {
      ensurePolling(true);
      return;
    }
    clearTimeout(S.liveTimer);
    const session = S.session;
    api('POST', 'api/auth/ticket').then((data) => {
      if (S.session !== session || S.es) return;
      // After a drop, resume where the last stream stopped: the server replays the gap
      // (or says stream.reset when it no longer has it).
      const resume = S.lastEventId ? `&last_event_id=${enc(S.lastEventId)}` : '';
      // `positions`: each queue.stats carries the places of this user's queued jobs.
      const es = new EventSource(`api/events?positions=true&ticket=${enc(data.ticket)}${resume}`);
      S.es = es;
      es.onopen = () => {
        S.liveRetryMs = 2000;
        stopPolling();
        setTransport('live');
        if (!resume) refreshAll();                   // what happened before the stream opened
      };
      es.onmessage = (m) => {
        if (S.es !== es) return;
        if (m.lastEventId) S.lastEventId = m.lastEventId;
        let ev;
        try { ev = JSON.parse(m.data); } catch (err) { return; }
        applyEvent(ev);
      };
      es.onerror = () => {
        es.close();
        if (S.es !== es) return;
        S.es = null;
        if (!S.session) return;
        reachable().then((ok) => {
          if (S.session !== session || S.es) return;
          if (!ok) {
            setTransport('offline');                 // the banner's look brings it back
            return;
          }
          setTransport('polling');
          ensurePolling();                           // polls only while something is active
          scheduleLive();                            // a ticket is single use: get a new one
        });
      };
    }).catch((err) => {
      if (S.session !== session) return;
      if (err.status === 0) return;                  // out of reach: backOnline starts it
      if (err.status === 404 || err.status === 405 || err.status === 501) S.liveSupported = false;
      else scheduleLive();
      ensurePolling();
    });
  }

  function scheduleLive() {
    clearTimeout(S.liveTimer);
    S.liveTimer = setTimeout(() => { S.liveTimer = 0; startLive(); }, S.liveRetryMs);
    S.liveRetryMs = Math.min(S.liveRetryMs * 2, 60000);
  }

  // The user is here and asking (Refresh, or back to the tab): try the stream again now.
  function retryLiveNow() {
    if (!S.session || S.es || !S.liveSupported || !S.liveTimer) return;
    clearTimeout(S.liveTimer);
    S.liveTimer = 0;
    S.liveRetryMs = 2000;
    startLive();
  }

  function stopLive() {
    clearTimeout(S.liveTimer);
    S.liveTimer = 0;
    if (S.es) {
      S.es.close();
      S.es = null;
    }
  }

  function applyEvent(ev) {
    if (ev.type === 'stream.reset') {
      refreshAll();
      return;
    }
    if (ev.type === 'queue.stats') {
      const { positions, ...stats } = ev;
      S.statsFrames = (S.statsFrames || 0) + 1;
      S.lastStats = stats;
      S.queue = { ...(S.queue || {}), ...stats };
      renderQueue();
      if (positions && typeof positions === 'object') applyPositions(positions);
      return;
    }
    if (!ev.job_id) {
      fire('event', ev);                   // the operator's controls changed, a schedule…
      return;
    }
    if (ev.type.startsWith('delivery.')) {
      // A webhook or notification of the job's end: not a change of the job itself.
      if (S.detail && S.detail.id === ev.job_id) loadDeliveries(ev.job_id);
      return;
    }
    if (ev.type === 'job.log') {
      const d = S.detail;
      if (d && d.id === ev.job_id && Array.isArray(ev.lines)) {
        const entries = ev.lines.map((line, i) => [ev.first + i, line]);
        if (ev.replace && ev.first <= d.lastN) {
          for (const [n, line] of entries) {
            if (n <= d.lastN) replaceLogLine(d, n, line);
          }
          addLogLines(d, entries);                   // any lines after it are new ones
        } else if (ev.first === d.lastN + 1) addLogLines(d, entries);
        else if (ev.first > d.lastN + 1) loadLogs();
      }
      return;
    }
    noteEnd(ev);
    const mark = S.events;
    for (const [k, v] of Object.entries(ev)) {
      if (EVENT_META.has(k)) continue;
      if (ev.type === 'job.progress' && (v === null || v === undefined)) continue;
      change(ev.job_id, k, v);
    }
    const job = S.jobs.get(ev.job_id);
    if (job) {
      adopt(job, mark);
      renderJob(job.id);
    }
    if (ev.type !== 'job.progress') {
      // A state change moves queue positions and may bring jobs this page has not seen.
      const d = S.detail;
      const shown = d && S.jobs.get(d.id);
      scheduleRefresh(Boolean(d && (d.id === ev.job_id || (shown && shown.state === 'queued'))));
    }
  }

  // The places of this user's queued jobs, pushed whenever anyone's job starts or ends:
  // kept like an event's change, so a list read that left before does not undo them.
  function applyPositions(positions) {
    for (const [id, place] of Object.entries(positions)) {
      const job = S.jobs.get(id);
      if (!job || job.state !== 'queued' || job.position === place) continue;
      change(id, 'position', place);
      job.position = place;
      renderJob(id);
    }
  }

  function renderJob(id) {
    const li = document.querySelector(`#job-list [data-id="${CSS.escape(id)}"]`);
    if (li) fillRow(li, S.jobs.get(id));
    if (S.waiting.has(id)) renderWaiting();
    if (S.detail && S.detail.id === id) renderDetail();
  }

  // At most one reload of the list (and the job shown) per 300 ms, however many events come.
  function scheduleRefresh(detailToo) {
    if (detailToo) S.refreshDetail = true;
    if (S.refreshTimer) return;
    S.refreshTimer = setTimeout(() => {
      S.refreshTimer = 0;
      const detail = S.refreshDetail;
      S.refreshDetail = false;
      if (!S.session) return;
      if (S.route.view === 'list') {
        loadList();
        loadWaiting();
      }
      if (S.detail && detail) loadDetail();
    }, 300);
  }

  async function refreshAll() {
    if (!S.session) return;
    const work = [loadQueue()];
    if (S.route.view === 'list') work.push(loadList(), loadWaiting());
    if (S.detail) work.push(loadDetail());
    await Promise.all(work);
  }

  function anythingActive() {
    for (const id of S.order) {
      const job = S.jobs.get(id);
      if (job && ACTIVE.has(job.state)) return true;
    }
    const d = S.detail;
    const job = d && S.jobs.get(d.id);
    return Boolean(job && ACTIVE.has(job.state));
  }

  // Poll while the stream is down and something shown is queued or running; `now` polls
  // once at least (after the user acted, or came back to the tab).
  function ensurePolling(now) {
    if (!S.session || S.es || S.pollTimer || S.pollBusy) return;
    if (S.transport === 'offline') {
      if (now && S.probeTimer) probe();              // the user is back: look now
      return;
    }
    if (now) {
      poll();
    } else if (anythingActive()) {
      S.pollTimer = setTimeout(poll, POLL_MS);
      setTransport('polling');
    } else if (S.transport !== 'offline') {
      setTransport('idle');
    }
  }

  async function poll() {
    S.pollTimer = 0;
    if (!S.session || S.es) return;
    S.pollBusy = true;
    if (S.transport !== 'offline') setTransport('polling');
    try {
      await refreshAll();
    } finally {
      S.pollBusy = false;
    }
    if (!S.session || S.es || S.transport === 'offline') return;  // probe() takes over
    if (document.hidden) return;                     // resumes on visibilitychange
    if (anythingActive()) {
      S.pollTimer = setTimeout(poll, POLL_MS);
    } else {
      setTransport('idle');
    }
  }

  function stopPolling() {
    clearTimeout(S.pollTimer);
    S.pollTimer = 0;
  }

  // --- wiring --------------------------------------------------------------------------------

  function wire() {
    $('signin-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', signOut);
    $('notify').addEventListener('click', toggleNotify);
    renderNotifyButton();
    $('submit-form').addEventListener('submit', submitJob);
    $('kind').addEventListener('change', renderKindForm);
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
    $('more').addEventListener('click', loadMore);
    $('act-cancel').addEventListener('click', () => act('cancel'));
    $('act-retry').addEventListener('click', () => act('retry'));
    $('act-delete').addEventListener('click', () => act('delete'));
    for (const action of ['cancel', 'retry', 'delete']) {
      $(`bulk-${action}`).addEventListener('click', () => bulk(action));
    }
    $('copy-id').addEventListener('click', async () => {
      const id = $('job-id').textContent;
      try {
        await navigator.clipboard.writeText(id);
        announce('Copied the job id');
        $('copy-id').textContent = 'Copied';
      } catch (err) {
        getSelection().selectAllChildren($('job-id'));  // no clipboard here: select it
        $('copy-id').textContent = 'Selected: press Ctrl+C';
      }
      setTimeout(() => { $('copy-id').textContent = 'Copy id'; }, 2000);
    });
    $('offline-retry').addEventListener('click', () => { if (S.transport === 'offline') probe(); });
    $('log-download').addEventListener('click', downloadLog);
    $('log-follow').addEventListener('click', () => setFollow(!(S.detail && S.detail.follow)));
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

  // Exposed for admin.js (the operator's panel), tests and curious people at the console.
  window.jobgate = {
    state: S, hooks: HOOKS, api, el, fmtDuration, fmtMB, isAdmin, announce, renderQueue,
  };
  boot();
})();
