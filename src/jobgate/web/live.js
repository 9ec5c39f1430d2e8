// jobgate's dashboard, live updates: the event stream (GET api/events with a one-time
// ticket, resumed after a drop) and the events applied to what is shown, polling while the
// stream is unavailable, the banner and probes while the server cannot be reached, and the
// clocks (tick). It uses app.js's helpers and the other files' functions (window.jobgate).
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { state: S, ACTIVE, adopt, announce, api, change, enc, fire, loadQueue, noteEnd,
    renderQueue } = J;
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 1500;
  const EVENT_META = new Set(['type', 'seq', 'ts', 'job_id', 'vt', 'first', 'lines']);
  // The other files' functions, looked up when called (the page boots once all have run).
  const loadDeliveries = J.late('loadDeliveries');
  const loadDetail = J.late('loadDetail');
  const renderDetail = J.late('renderDetail');
  const fillRow = J.late('fillRow');
  const loadList = J.late('loadList');
  const startText = J.late('startText');
  const leftText = J.late('leftText');
  const readEstimates = J.late('readEstimates');
  const timeText = J.late('timeText');
  const timing = J.late('timing');
  const whenText = J.late('whenText');
  const addLogLines = J.late('addLogLines');
  const loadLogs = J.late('loadLogs');
  const replaceLogLine = J.late('replaceLogLine');
  const loadWaiting = J.late('loadWaiting');
  const renderWaiting = J.late('renderWaiting');

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
      adopt(job, mark, false);
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

  // --- the clocks: every second, the times shown that count (elapsed, ago, countdowns) -------

  function tick() {
    renderOffline();
    if (S.transport === 'offline') return;           // what it would count is not known
    // The hour's numbers come with GET api/queue only (queue.stats has the rates).
    if (S.queueReadAt && Date.now() - S.queueReadAt > 60000 && !document.hidden) {
      S.queueReadAt = Date.now();
      loadQueue();
    }
    if (!document.hidden) readEstimates();
    for (const li of document.querySelectorAll('#job-list li.job')) {
      const job = S.jobs.get(li.dataset.id);
      if (!job) continue;
      if (ACTIVE.has(job.state)) {
        const span = li.querySelector('.elapsed');
        if (span) span.textContent = timeText(job);
        const left = li.querySelector('.left');
        if (left) left.textContent = leftText(job);
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
    const left = document.querySelector('#job-status .left');
    if (left && S.detail && S.jobs.get(S.detail.id)) left.textContent = leftText(S.jobs.get(S.detail.id));
    const countdown = document.querySelector('#job-status .countdown');
    if (countdown && S.detail && S.jobs.get(S.detail.id)) countdown.textContent = startText(S.jobs.get(S.detail.id));
    if (S.detail) {
      const job = S.jobs.get(S.detail.id);
      const dd = $('fact-time');
      if (job && dd && ACTIVE.has(job.state)) dd.textContent = timing(job)[1];
    }
  }

  // --- wiring ---------------------------------------------------------------------------

  $('offline-retry').addEventListener('click', () => { if (S.transport === 'offline') probe(); });

  Object.assign(J, { setTransport, startLive, stopLive, stopPolling, retryLiveNow,
    scheduleRefresh, refreshAll, ensurePolling, tick });
})();
