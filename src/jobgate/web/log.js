// jobgate's dashboard, the job log of the detail view: its pages (GET api/jobs/ID/logs),
// the lines the stream adds or redraws, ANSI colours as spans, the gaps of a capped log,
// follow and pause, and the download of the whole log as text. It uses app.js's helpers
// and the other files' functions (window.jobgate).
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { state: S, ACTIVE, api, el, enc } = J;
  const $ = (id) => document.getElementById(id);
  const LOG_PAGE = 1000;          // lines per read of a log (all of them are shown)

  // --- the job's log -----------------------------------------------------------------------

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

  // --- wiring ---------------------------------------------------------------------------

  $('log-download').addEventListener('click', downloadLog);
  $('log-follow').addEventListener('click', () => setFollow(!(S.detail && S.detail.follow)));

  Object.assign(J, { loadLogs, addLogLines, replaceLogLine, setFollow, renderLogState });
})();
