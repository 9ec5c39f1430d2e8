// jobgate's dashboard, the submit form: the kinds the server runs (GET api/kinds), each
// kind's arguments as fields (its schema: types, choices, defaults, constraints), a file
// picker beside a `path` argument that uploads at once with its progress, and the submit
// with the server's errors shown at their field. It uses app.js's helpers and the other
// files' functions (window.jobgate).
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { state: S, adopt, announce, api, change, el, enc, fire, fmtBytes, fmtValue, isAdmin,
    loadQueue, setKindFilter } = J;
  const $ = (id) => document.getElementById(id);
  // The other files' functions, looked up when called (the page boots once all have run).
  const jobTitle = J.late('jobTitle');
  const renderList = J.late('renderList');
  const ensurePolling = J.late('ensurePolling');
  const endSession = J.late('endSession');
  const renderWaiting = J.late('renderWaiting');

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
        S.uploadNames.set(data.ref, data.name);
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

  // --- wiring ---------------------------------------------------------------------------

  $('submit-form').addEventListener('submit', submitJob);
  $('kind').addEventListener('change', renderKindForm);

  Object.assign(J, { loadKinds });
})();
