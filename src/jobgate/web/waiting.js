// jobgate's dashboard, the "Waiting to run" section: the user's own queued jobs in the
// order they will run, with their place and estimate, or why they wait (a later start, the
// jobs they depend on). It uses app.js's helpers and the other files' functions
// (window.jobgate).
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { state: S, adopt, api, el, enc, isAdmin, lastChange, ts } = J;
  const $ = (id) => document.getElementById(id);
  // The other files' functions, looked up when called (the page boots once all have run).
  const jobTitle = J.late('jobTitle');
  const startText = J.late('startText');

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

  Object.assign(J, { loadWaiting, renderWaiting });
})();
