// jobgate's dashboard, signing in and out: the sign-in form, the session kept in this
// browser (localStorage) and its expiry, and what signing in starts (enter) and signing
// out clears (endSession). It uses app.js's helpers and the other files' functions
// (window.jobgate); the storage event of another tab's sign-in or out is app.js's.
'use strict';

(() => {
  const J = window.jobgate;
  if (!J) return;
  const { state: S, api, closeConfirm, el, fire, isAdmin, LAST_USER_KEY, route, SESSION_KEY,
    setTitle, ts } = J;
  const $ = (id) => document.getElementById(id);
  // The other files' functions, looked up when called (the page boots once all have run).
  const startLive = J.late('startLive');
  const stopLive = J.late('stopLive');
  const stopPolling = J.late('stopPolling');
  const tick = J.late('tick');
  const loadKinds = J.late('loadKinds');
  const renderWaiting = J.late('renderWaiting');
  const renderList = J.late('renderList');
  const renderDetail = J.late('renderDetail');

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
    loadUploadNames();
    fire('enter', S.session.user);
    await route();
    startLive();
  }

  // Your uploads' names, so that a job whose file you uploaded is titled by the file.
  async function loadUploadNames() {
    try {
      const data = await api('GET', 'api/uploads');
      for (const u of data.uploads || []) S.uploadNames.set(u.ref, u.name);
      if (!data.uploads || !data.uploads.length) return;
      renderList();
      if (S.detail) renderDetail();
    } catch (err) {
      // Titles then show the upload's reference, as the API has it.
    }
  }

  // --- wiring ---------------------------------------------------------------------------

  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);

  Object.assign(J, { loadSession, showSignIn, endSession, enter });
})();
