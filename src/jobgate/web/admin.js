// jobgate's dashboard, the operator's panel (admins only): who has what queued and running
// (the queue's numbers' `by_owner`, kept live by queue.stats as the header is), pause and
// resume of the queue and of a kind, the run-time limits, the live nodes with drain and
// undrain, and charts of the queue's depth and wait over the last hour. It uses app.js's helpers
// and hooks (window.jobgate); for anyone else it does nothing, and the panel stays hidden.
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { api, el } = J;
  const $ = (id) => document.getElementById(id);
  const NODES_MS = 5000;          // the nodes' running counts and heartbeats: read this often
  const CONTROL_EVENT = /^(queue\.(paused|resumed)|limits\.changed|node\.(drained|undrained))$/;

  const A = {
    on: false,
    controls: null,       // GET api/controls
    nodes: [],            // GET api/queue's nodes, in full
    nodesReadAt: 0,
    nodesBusy: false,
    nodesTimer: 0,
    tickTimer: 0,
    nodesKey: '',         // what the table was last built from
    limitsShown: {},      // the values the limits form was filled with
  };

  const enc = encodeURIComponent;

  // --- the per-user line ---------------------------------------------------------------

  function ownersText(byOwner) {
    const names = Object.keys(byOwner || {}).sort();
    if (!names.length) return 'Nobody has a job queued or running.';
    return names.map((name) => {
      const c = byOwner[name] || {};
      const bits = [];
      if (c.queued) bits.push(`${c.queued} queued`);
      if (c.running) bits.push(`${c.running} running`);
      return `${name} ${bits.join(', ') || 'nothing'}`;
    }).join(' · ');
  }

  // --- dispatch: pause and resume ------------------------------------------------------

  function renderDispatch(q) {
    const kinds = Array.isArray(q.paused_kinds) ? q.paused_kinds : [];
    const state = $('dispatch-state');
    if (q.paused) state.textContent = 'Paused: no job starts; running jobs go on.';
    else if (kinds.length) state.textContent = `Paused kinds: ${kinds.join(', ')}.`;
    else state.textContent = 'Running: queued jobs start as slots free up.';
    state.classList.toggle('paused', Boolean(q.paused || kinds.length));
    $('queue-toggle').textContent = q.paused ? 'Resume queue' : 'Pause queue';
    const kind = $('pause-kind').value;
    $('kind-toggle').textContent = kinds.includes(kind) ? 'Resume kind' : 'Pause kind';
    $('kind-toggle').disabled = !kind;
  }

  async function control(path, body, errorBox, button) {
    errorBox.textContent = '';
    if (button) button.disabled = true;
    try {
      const controls = await api('POST', path, body);
      applyControls(controls);
      return true;
    } catch (err) {
      if (err.status !== 401) errorBox.textContent = `Not done: ${err.message}`;
      return false;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function toggleQueue() {
    const q = J.state.queue || {};
    const verb = q.paused ? 'resume' : 'pause';
    control(`api/queue/${verb}`, undefined, $('dispatch-error'), $('queue-toggle'))
      .then((ok) => { if (ok) J.announce(verb === 'pause' ? 'Queue paused' : 'Queue resumed'); });
  }

  function toggleKind() {
    const kind = $('pause-kind').value;
    if (!kind) return;
    const q = J.state.queue || {};
    const paused = (q.paused_kinds || []).includes(kind);
    const verb = paused ? 'resume' : 'pause';
    control(`api/queue/${verb}`, { kind }, $('dispatch-error'), $('kind-toggle'))
      .then((ok) => { if (ok) J.announce(`${kind} ${paused ? 'resumed' : 'paused'}`); });
  }

  // What the controls' answer changes at once (queue.stats follows with the same).
  function applyControls(controls) {
    A.controls = controls;
    const q = J.state.queue;
    if (q) {
      q.paused = Boolean(controls.paused);
      q.paused_kinds = controls.paused_kinds || [];
      q.drained_nodes = controls.drained || [];
      const eff = controls.effective || {};
      if (eff.max_running) q.max_running = eff.max_running.value;
    }
    renderLimits();
    if (q) J.renderQueue();               // the header's "paused", and onQueue here
  }

  async function loadControls() {
    try {
      const controls = await api('GET', 'api/controls');
      if (A.on) applyControls(controls);
    } catch (err) {
      if (A.on && err.status !== 401) $('limits-error').textContent = `Cannot read the limits: ${err.message}`;
    }
  }

  // --- limits ----------------------------------------------------------------------------

  const LIMITS = [['max_running', 'lim-max-running'], ['per_user_running', 'lim-per-user']];

  function renderLimits() {
    const eff = (A.controls && A.controls.effective) || {};
    for (const [key, id] of LIMITS) {
      const limit = eff[key];
      if (!limit) continue;
      const value = limit.value === null || limit.value === undefined ? '' : String(limit.value);
      const input = $(id);
      // A value being edited stays as typed.
      if (document.activeElement !== input && input.value === (A.limitsShown[key] ?? input.value)) {
        input.value = value;
      }
      A.limitsShown[key] = value;
      $(`${id}-src`).textContent = limit.value === null ? '(none, from the config)'
        : `(${limit.source === 'live' ? 'set here' : 'from the config'})`;
    }
  }

  async function saveLimits(ev) {
    ev.preventDefault();
    const error = $('limits-error');
    const note = $('limits-note');
    error.textContent = '';
    note.textContent = '';
    const body = {};
    for (const [key, id] of LIMITS) {
      const text = $(id).value.trim();
      if (text === A.limitsShown[key]) continue;
      // The API checks the value and says what is wrong with it.
      body[key] = text === '' ? null : (/^-?\d+$/.test(text) ? Number(text) : text);
    }
    if (!Object.keys(body).length) {
      note.textContent = 'Nothing changed.';
      return;
    }
    const button = $('limits-save');
    button.disabled = true;
    try {
      const controls = await api('PUT', 'api/limits', body);
      for (const [key] of LIMITS) delete A.limitsShown[key];   // refill every field
      for (const [, id] of LIMITS) $(id).value = '';
      applyControls(controls);
      note.textContent = 'Limits saved.';
    } catch (err) {
      if (err.status !== 401) error.textContent = `Not saved: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  // --- nodes -----------------------------------------------------------------------------

  async function readNodes() {
    if (!A.on || A.nodesBusy) return;
    A.nodesBusy = true;
    try {
      const q = await api('GET', 'api/queue');
      if (!A.on) return;
      A.nodes = Array.isArray(q.nodes) ? q.nodes.filter((n) => n && typeof n === 'object') : [];
      A.nodesReadAt = Date.now();
      if (q.depth) renderDepth(q.depth);
      $('nodes-error').textContent = '';
      renderNodes();
    } catch (err) {
      if (A.on && err.status !== 401 && err.status !== 0) {
        $('nodes-error').textContent = `Cannot read the nodes: ${err.message}`;
      }
    } finally {
      A.nodesBusy = false;
    }
  }

  function ageText(iso) {
    const at = Date.parse(iso);
    if (Number.isNaN(at)) return '—';
    return `${Math.max(0, Math.round((Date.now() - at) / 1000))} s ago`;
  }

  // Memory: each node's own, as its last heartbeat wrote it (GET /api/queue's node
  // entries); '—' when the node reported none (a node of an older version).
  function memoryText(node) {
    const rss = node.running_rss_mb;
    const free = node.memory_available_mb;
    if (typeof rss !== 'number' && typeof free !== 'number') return '—';
    const bits = [];
    if (typeof rss === 'number') bits.push(`${J.fmtMB(rss)} in jobs`);
    if (typeof free === 'number') bits.push(`${J.fmtMB(free)} free`);
    return bits.join(', ');
  }

  function renderNodes() {
    const q = J.state.queue || {};
    const drained = new Set(q.drained_nodes || (A.controls && A.controls.drained) || []);
    const rows = A.nodes.map((n) => ({ ...n, live: true }));
    for (const name of drained) {             // drained and gone: still undrainable here
      if (!rows.some((n) => n.name === name)) rows.push({ name, live: false });
    }
    const key = JSON.stringify(rows.map((n) => [n.name, n.slots, n.running_count, n.live,
      drained.has(n.name), memoryText(n)]));
    if (key === A.nodesKey) {
      for (const cell of $('nodes-body').querySelectorAll('[data-heartbeat]')) {
        cell.textContent = ageText(cell.dataset.heartbeat);
      }
      return;
    }
    A.nodesKey = key;
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.node : undefined;
    $('nodes-body').replaceChildren(...rows.map((n) => {
      const isDrained = drained.has(n.name);
      const button = el('button', {
        type: 'button', class: 'secondary small', 'data-node': n.name,
        'aria-label': `${isDrained ? 'Undrain' : 'Drain'} ${n.name}`,
        text: isDrained ? 'Undrain' : 'Drain',
        onclick: () => drain(n.name, !isDrained, button),
      });
      const beat = el('td', n.live ? { 'data-heartbeat': n.heartbeat_at, text: ageText(n.heartbeat_at) }
        : { text: 'not live' });
      return el('tr', { 'data-name': n.name },
        el('th', { scope: 'row', title: n.host || '', text: n.name }),
        el('td', { text: n.live ? String(n.slots) : '—' }),
        el('td', { text: n.live ? String(n.running_count) : '—' }),
        beat,
        el('td', { text: n.live ? memoryText(n) : '—' }),
        el('td', { text: isDrained ? 'Drained' : 'Taking jobs' }),
        el('td', null, button));
    }));
    $('nodes-empty').hidden = rows.length > 0;
    if (focused) {
      const again = [...$('nodes-body').querySelectorAll('button')].find((b) => b.dataset.node === focused);
      if (again) again.focus();
    }
  }

  async function drain(name, on, button) {
    const ok = await control(`api/nodes/${enc(name)}/${on ? 'drain' : 'undrain'}`, undefined,
      $('nodes-error'), button);
    if (ok) J.announce(`${name} ${on ? 'drained' : 'undrained'}`);
  }

  // --- the depth and wait charts: inline SVG, a step per sample ---------------------------
  // Depth: queued solid, running dashed. Wait: how long the job due the longest had waited.

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const HOUR_MS = 3600 * 1000;

  // Draw `series` ([sample key, class]) of the last hour's samples in `svg`, scaled to `top`.
  function drawSteps(svg, samples, everyMs, top, series) {
    const now = Date.now();
    const x = (t) => Math.max(0, Math.min(600, ((t - (now - HOUR_MS)) / HOUR_MS) * 600));
    const y = (v) => (96 - (v / top) * 90).toFixed(1);
    const line = ([key, cls]) => {
      const points = [];
      for (const s of samples) {
        const at = Date.parse(s.at);
        if (Number.isNaN(at) || at + everyMs < now - HOUR_MS) continue;
        const v = Number(s[key]) || 0;
        points.push(`${x(at).toFixed(1)},${y(v)}`, `${x(Math.min(at + everyMs, now)).toFixed(1)},${y(v)}`);
      }
      const e = document.createElementNS(SVG_NS, 'polyline');
      e.setAttribute('points', points.join(' '));
      e.setAttribute('class', cls);
      return e;
    };
    const base = document.createElementNS(SVG_NS, 'line');
    for (const [k, v] of Object.entries({ x1: 0, x2: 600, y1: 96, y2: 96, class: 'depth-axis' })) {
      base.setAttribute(k, String(v));
    }
    svg.replaceChildren(base, ...series.map(line));
  }

  function renderDepth(depth) {
    const samples = Array.isArray(depth.samples) ? depth.samples : [];
    const every = depth.every_s || 30;
    const top = Math.max(1, ...samples.map((s) => Math.max(s.queued, s.running)));
    drawSteps($('depth-chart'), samples, every * 1000, top,
      [['running', 'depth-running'], ['queued', 'depth-queued']]);
    const last = samples[samples.length - 1];
    const most = Math.max(0, ...samples.map((s) => s.queued));
    $('depth-text').textContent = last
      ? `Queued (solid line): ${last.queued} in the last ${every} s, at most ${most} `
        + `in the last hour; running (dashed): ${last.running}. Scale: 0 to ${top}.`
      : 'No sample yet.';
    const waits = samples.map((s) => Number(s.wait_s) || 0);
    const longest = Math.max(0, ...waits);
    drawSteps($('wait-chart'), samples, every * 1000, Math.max(1, longest), [['wait_s', 'depth-queued']]);
    $('wait-text').textContent = last
      ? `Longest wait in the last ${every} s: ${J.fmtDuration(waits[waits.length - 1])}; `
        + `at most ${J.fmtDuration(longest)} in the last hour. Scale: 0 to ${J.fmtDuration(Math.max(1, longest))}.`
      : 'No sample yet.';
  }

  // --- hooks from app.js -----------------------------------------------------------------

  function onQueue(q) {
    if (!A.on) return;
    if (q.by_owner && typeof q.by_owner === 'object') $('admin-owners').textContent = ownersText(q.by_owner);
    renderDispatch(q);
    // A frame names the live nodes only: another node came or went, or jobs moved; read
    // them in full, at most every second.
    if (Date.now() - A.nodesReadAt > 1000) readNodes();
    else renderNodes();
  }

  function fillKinds(kinds) {
    const select = $('pause-kind');
    const previous = select.value;
    select.replaceChildren(...kinds.map((k) => el('option', { value: k.name, text: k.name })));
    if (kinds.some((k) => k.name === previous)) select.value = previous;
    if (J.state.queue) renderDispatch(J.state.queue);
  }

  function start(user) {
    A.on = Boolean(user && user.admin);
    $('admin').hidden = !A.on;
    if (!A.on) return;
    $('admin-owners').textContent = 'Reading who has what…';
    loadControls();
    readNodes();
    clearInterval(A.nodesTimer);
    clearInterval(A.tickTimer);
    A.nodesTimer = setInterval(() => { if (!document.hidden) readNodes(); }, NODES_MS);
    A.tickTimer = setInterval(() => { if (A.on) renderNodes(); }, 1000);
  }

  function stop() {
    A.on = false;
    clearInterval(A.nodesTimer);
    clearInterval(A.tickTimer);
    A.controls = null;
    A.nodes = [];
    A.nodesKey = '';
    A.limitsShown = {};
    $('admin').hidden = true;
    $('nodes-body').replaceChildren();
    for (const id of ['depth-chart', 'wait-chart']) $(id).replaceChildren();
    for (const id of ['depth-text', 'wait-text']) $(id).textContent = '';
    for (const id of ['dispatch-error', 'limits-error', 'limits-note', 'nodes-error']) $(id).textContent = '';
  }

  J.hooks.enter.push(start);
  J.hooks.leave.push(stop);
  J.hooks.queue.push(onQueue);
  J.hooks.kinds.push(fillKinds);
  J.hooks.event.push((ev) => { if (A.on && CONTROL_EVENT.test(ev.type)) loadControls(); });

  $('queue-toggle').addEventListener('click', toggleQueue);
  $('kind-toggle').addEventListener('click', toggleKind);
  $('pause-kind').addEventListener('change', () => { if (J.state.queue) renderDispatch(J.state.queue); });
  $('limits-form').addEventListener('submit', saveLimits);
  J.state.admin = A;      // for tests and the curious, as app.js's state is
})();
