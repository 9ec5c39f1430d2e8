// jobgate's dashboard, the job detail view (#/job/ID): the job's facts, arguments, result,
// outputs (downloaded by a signed link) and deliveries, and its actions (cancel, retry,
// delete). Its log is log.js's. It uses app.js's helpers and the other files' functions
// (window.jobgate).
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { state: S, ACTIVE, adopt, announce, api, confirmDialog, el, enc, FINAL, fmtAgo,
    fmtBytes, fmtMB, fmtTime, fmtValue, relative, setTitle, ts } = J;
  const $ = (id) => document.getElementById(id);
  // The other files' functions, looked up when called (the page boots once all have run).
  const jobTitle = J.late('jobTitle');
  const renderList = J.late('renderList');
  const startText = J.late('startText');
  const stateBadge = J.late('stateBadge');
  const progressBits = J.late('progressBits');
  const timing = J.late('timing');
  const ensurePolling = J.late('ensurePolling');
  const scheduleRefresh = J.late('scheduleRefresh');
  const loadLogs = J.late('loadLogs');
  const renderLogState = J.late('renderLogState');
  const setFollow = J.late('setFollow');

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
    // Rebuilt only when the outputs change: an open preview keeps playing across events.
    const outputsKey = JSON.stringify([job.id, outputs]);
    if (S.detail.outputsKey !== outputsKey) {
      S.detail.outputsKey = outputsKey;
      $('job-outputs').replaceChildren(...outputs.map((o) => outputItem(job.id, o)));
    }

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

  // One output: its download, size, "Copy link", and a preview in place for an image, a
  // video or a sound (the browser plays it from a signed link, as it downloads).
  function outputItem(id, o) {
    const note = el('span', { class: 'output-note', role: 'status' });
    const box = el('div', { class: 'output-preview' });
    const tag = previewTag(o.content_type);
    const preview = tag && el('button', {
      type: 'button', class: 'secondary small', 'aria-expanded': 'false',
      'aria-label': `Preview ${o.name}`, text: 'Preview',
      onclick: () => togglePreview(id, o.name, tag, preview, box, note),
    });
    return el('li', { class: o.partial ? 'partial' : null, 'data-name': o.name },
      el('button', { type: 'button', class: 'link', 'data-output': o.name, 'aria-label': `Download ${o.name}`, onclick: () => download(id, o.name) },
        el('span', { 'aria-hidden': 'true', text: '⬇ ' }), o.name),
      o.size === null ? '' : el('span', { class: 'output-size', text: ` ${fmtBytes(o.size)}` }),
      // A run that did not complete left it: whatever it holds is not the job's result.
      o.partial ? el('span', { class: 'output-partial', text: ' partial: the job did not complete' }) : '',
      el('span', { class: 'output-actions' },
        el('button', { type: 'button', class: 'secondary small', 'aria-label': `Copy link to ${o.name}`,
          text: 'Copy link', onclick: () => copyLink(id, o.name, note) }),
        preview),
      note, box);
  }

  function previewTag(type) {
    const major = String(type || '').split('/')[0];
    return { image: 'img', video: 'video', audio: 'audio' }[major] || null;
  }

  function outputLink(id, name) {
    return api('POST', `api/jobs/${enc(id)}/outputs/${name.split('/').map(enc).join('/')}/link`);
  }

  // How long a link works: "5 min", from its expires_at.
  function linkLife(link) {
    const s = Math.max(0, (ts(link.expires_at) - Date.now()) / 1000);
    return s >= 5400 ? `${Math.round(s / 3600)} h` : `${Math.max(1, Math.round(s / 60))} min`;
  }

  async function togglePreview(id, name, tag, button, box, note) {
    if (box.firstChild) {
      box.replaceChildren();
      button.textContent = 'Preview';
      button.setAttribute('aria-label', `Preview ${name}`);
      button.setAttribute('aria-expanded', 'false');
      return;
    }
    note.textContent = '';
    try {
      const link = await outputLink(id, name);
      const media = tag === 'img'
        ? el('img', { src: relative(link.url), alt: `Preview of ${name}` })
        : el(tag, { src: relative(link.url), controls: true, preload: 'metadata', 'aria-label': `Preview of ${name}` });
      media.addEventListener('error', () => {
        note.textContent = `This browser cannot show ${name}: download it instead.`;
      });
      box.replaceChildren(media);
      button.textContent = 'Hide preview';
      button.setAttribute('aria-label', `Hide the preview of ${name}`);
      button.setAttribute('aria-expanded', 'true');
    } catch (err) {
      if (err.status !== 401) note.textContent = `Cannot preview ${name}: ${err.message}`;
    }
  }

  // A link anyone can open without signing in, until it expires: on the clipboard, or
  // shown selected where the page may not write there (plain http on another machine).
  async function copyLink(id, name, note) {
    note.textContent = '';
    try {
      const link = await outputLink(id, name);
      const url = new URL(relative(link.url), window.location.href).href;
      try {
        await navigator.clipboard.writeText(url);
        note.textContent = `Link copied: it works for ${linkLife(link)}, without signing in.`;
      } catch (err) {
        const input = el('input', { type: 'text', readonly: true, value: url, 'aria-label': `Link to ${name}` });
        note.replaceChildren(`Copy this link (it works for ${linkLife(link)}, without signing in): `, input);
        input.select();
      }
    } catch (err) {
      if (err.status !== 401) note.textContent = `Cannot make a link to ${name}: ${err.message}`;
    }
  }

  // An entry of a job's outputs: an object, or a plain name (what older servers sent).
  function outputEntry(o) {
    return typeof o === 'string' ? { name: o, size: null, content_type: null, partial: false } : o;
  }

  // --- actions, with a confirmation where they destroy something ----------------------------

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

  // --- wiring ---------------------------------------------------------------------------

  $('act-cancel').addEventListener('click', () => act('cancel'));
  $('act-retry').addEventListener('click', () => act('retry'));
  $('act-delete').addEventListener('click', () => act('delete'));
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

  Object.assign(J, { openDetail, loadDetail, renderDetail, loadDeliveries, download,
    outputEntry });
})();
