// jobgate's dashboard, the job list: its pages (GET api/jobs with the filters of the URL),
// its rows (state, arguments, progress, times) and their buttons, and the bulk actions over
// the current filter. How a job reads (its title, times, state badge) is here, used by the
// other views too. It uses app.js's helpers and the other files' functions (window.jobgate).
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { state: S, ACTIVE, adopt, announce, api, confirmDialog, el, enc, FINAL, fmtAgo,
    fmtBytes, fmtDuration, fmtTime, fmtValue, isAdmin, lastChange, listKey, ts } = J;
  const $ = (id) => document.getElementById(id);
  const ICONS = { queued: '◷', running: '▶', completed: '✓', failed: '✕', cancelled: '⊘' };
  // The other files' functions, looked up when called (the page boots once all have run).
  const download = J.late('download');
  const outputEntry = J.late('outputEntry');
  const ensurePolling = J.late('ensurePolling');
  const refreshAll = J.late('refreshAll');
  const scheduleRefresh = J.late('scheduleRefresh');

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

  // --- how a job reads: its state, progress, times and title (the other views use these) --

  function stateBadge(state) {
    return el('span', { class: `state state-${state}` },
      el('span', { class: 'icon', 'aria-hidden': 'true', text: ICONS[state] || '?' }), ` ${state}`);
  }

  function progressBits(job) {
    const bar = el('progress', { max: '100', 'aria-label': `Progress of ${job.kind}` });
    if (job.progress !== null && job.progress !== undefined) bar.value = job.progress;
    const pct = job.progress !== null && job.progress !== undefined
      ? `${Math.floor(job.progress)}%` : '';
    const bits = [bar, el('span', { class: 'pct', text: pct }),
      el('span', { class: 'msg', text: job.message || '' })];
    if (job.state === 'running') bits.push(el('span', { class: 'left', text: leftText(job) }));
    return bits;
  }

  // The running jobs' estimates read again (every ESTIMATES_MS while one is shown): a
  // job's progress events say how far it is, only a read says what the server makes of it.
  const ESTIMATES_MS = 10000;
  async function readEstimates() {
    const shown = [...S.jobs.values()].some((j) => j.state === 'running');
    if (!shown || S.estimatesBusy || Date.now() - (S.estimatesAt || 0) < ESTIMATES_MS) return;
    S.estimatesBusy = true;
    S.estimatesAt = Date.now();
    try {
      const page = await api('GET', 'api/jobs?state=running&limit=100');
      for (const job of page.jobs || []) {
        if (typeof job.remaining_s === 'number' && S.jobs.has(job.id)) {
          S.endsAt.set(job.id, Date.now() + job.remaining_s * 1000);
        }
      }
    } catch (err) {
      // The next tick looks again; the offline banner says why if the server is gone.
    } finally {
      S.estimatesBusy = false;
    }
  }

  // A running job's estimated time left (the API's remaining_s), counted down by tick().
  function leftText(job) {
    const end = S.endsAt.get(job.id);
    if (job.state !== 'running' || end === undefined) return '';
    const s = (end - Date.now()) / 1000;
    return s >= 1 ? `about ${fmtDuration(s).replace(/\.\d s$/, ' s')} left` : 'about to finish';
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
    if (name === undefined) return '';
    const value = args[name];
    return typeof value === 'string' && S.uploadNames.has(value) ? S.uploadNames.get(value)
      : fmtValue(value);
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

  // --- wiring ---------------------------------------------------------------------------

  $('more').addEventListener('click', loadMore);
  for (const action of ['cancel', 'retry', 'delete']) {
    $(`bulk-${action}`).addEventListener('click', () => bulk(action));
  }

  Object.assign(J, { loadList, renderList, fillRow, jobTitle, stateBadge, progressBits,
    startText, timing, timeText, whenText, leftText, readEstimates });
})();
