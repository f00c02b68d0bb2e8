// chatd web client: plain JS, no dependencies. Speaks the wire protocol in PROTOCOL.md.
// All user-supplied text goes into the DOM through textContent, never innerHTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const LS = { token: 'chatd.token', user: 'chatd.user', rooms: 'chatd.rooms', outbox: 'chatd.outbox' };
  const ROOM_RE = /^[a-z0-9_-]{1,64}$/;
  const USER_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  // App-level ping interval; `?ping_ms=` overrides it (tests use a short one).
  const PING_MS = Math.max(200, Number(new URLSearchParams(location.search).get('ping_ms')) || 10000);
  const DEAD_MS = 2 * PING_MS;    // nothing received for this long: the connection is dead
  const BACKOFF_BASE = 500, BACKOFF_CAP = 30000;
  const PAGE = 50;                // history page size (= the server's default replay without `since`)
  const GROUP_MS = 5 * 60 * 1000; // consecutive messages by one author within this are grouped

  const ERRORS = {
    rate_limited: 'You are sending too fast. The message will be retried in a moment.',
    too_long: 'That message is too long.',
    banned: 'This account has been banned.',
    not_joined: 'You are not in this room. Join it first.',
    bad_request: 'The server rejected that request.',
    unauthorized: 'You are not signed in.',
    auth_failed: 'Wrong user name or password.',
    user_exists: 'That user name is already taken.',
    registration_closed: 'Registration is closed on this server.',
    internal: 'The server had an internal error. Please try again.',
  };
  const words = (f) => ERRORS[f.code] || f.message || f.code || 'Unknown error';

  // ---- storage (localStorage may throw in private modes: degrade to memory) ----
  const store = {
    get(k) { try { return localStorage.getItem(k); } catch { return null; } },
    set(k, v) { try { if (v == null) localStorage.removeItem(k); else localStorage.setItem(k, v); } catch { /* ignore */ } },
    json(k, dflt) { try { const v = JSON.parse(store.get(k)); return v == null ? dflt : v; } catch { return dflt; } },
  };

  // ---- state ----
  const S = {
    token: store.get(LS.token),
    user: store.get(LS.user) || '',
    limits: { max_text: 4000, rate_per_sec: 10, rate_burst: 20 },
    rooms: new Map(),   // name -> room
    current: null,      // current room name
    outbox: [],         // {cid, room, text, t, sent, failed} in send order
  };
  const newRoom = (name) => ({
    name, msgs: [], ids: new Set(), lastId: 0, members: new Set(), unread: 0,
    joinedConn: false, syncing: false, fresh: false, replayCount: 0,
    moreOlder: true, loadingOlder: false, historyQ: [], els: new Map(),
  });

  // ---- connection ----
  let welcomed = false;           // first welcome of this page load done (routes the URL fragment once)
  let ws = null, authed = false, creds = null, noReconnect = false, usedToken = false;
  let authedAt = 0;               // when the current session got its welcome
  let attempt = 0, retryTimer = null, retryAt = 0, countdown = null, beat = null, lastRecv = 0;
  let bucket = 0, bucketAt = 0, pumpTimer = null;

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }
  function sendFrame(f) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(f));
    return true;
  }

  function connect() {
    clearTimeout(retryTimer); retryTimer = null;
    clearInterval(countdown); countdown = null;
    if (ws || (!S.token && !creds)) return;
    noReconnect = false;
    setStatus(attempt ? 'reconnecting' : 'connecting', attempt ? 'reconnecting…' : 'connecting…');
    let sock;
    try { sock = new WebSocket(wsUrl()); } catch { lost(null); return; }
    ws = sock; authed = false; lastRecv = Date.now();
    sock.onopen = () => {
      if (ws !== sock) return;
      lastRecv = Date.now();
      usedToken = !creds && !!S.token;
      sock.send(JSON.stringify(authFrame()));
    };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      lastRecv = Date.now();
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      if (f && typeof f.type === 'string') handle(f);
    };
    sock.onclose = (ev) => { if (ws === sock) lost(ev.code, ev.reason); };
    clearInterval(beat);
    beat = setInterval(() => {
      if (ws !== sock) return;
      if (Date.now() - lastRecv > DEAD_MS) { drop(); return; }   // dead server or network: give up on it
      if (authed) sendFrame({ type: 'ping', t: Date.now() });
    }, PING_MS);
  }
  function authFrame() {
    if (creds) {
      const f = { type: 'auth', user: creds.user, password: creds.password };
      if (creds.register) f.register = true;
      return f;
    }
    return { type: 'auth', token: S.token };
  }
  // Abandon the current socket without waiting for a close handshake.
  function drop() {
    const sock = ws;
    if (!sock) return;
    sock.onopen = sock.onmessage = sock.onclose = null;
    try { sock.close(); } catch { /* ignore */ }
    lost(null);
  }
  function lost(code, reason) {
    const sock = ws;
    // Back off from scratch only after a connection that held for a while; a server that accepts
    // and then drops us at once keeps growing the delay.
    if (authed && Date.now() - authedAt > 10000) attempt = 0;
    if (sock) sock.onopen = sock.onmessage = sock.onclose = null;
    ws = null; authed = false;
    clearInterval(beat); beat = null;
    clearTimeout(pumpTimer); pumpTimer = null;
    for (const r of S.rooms.values()) { r.joinedConn = false; r.syncing = false; r.loadingOlder = false; r.historyQ = []; }
    for (const e of S.outbox) e.sent = false;   // every unacked send goes out again, same cid
    if (noReconnect) return;                      // auth_failed / banned / signed out: already handled
    if (!S.token) {                               // a sign-in attempt that did not get through
      const wasAttempt = !!creds;
      creds = null;
      if (!wasAttempt) return;
      if (!$('auth-error').textContent) showAuthError(code === 1008 ? 'The server closed the connection. Try again.' : 'Cannot reach the server. Try again.');
      setAuthBusy(false);
      return;
    }
    renderChat();
    if (code === 1008) {
      // Kicked by an admin or cut off for flooding (banned/auth_failed arrive as errors first and
      // are handled above): do not reconnect behind the admin's back; the person can.
      setStatus('offline', 'offline');
      showComposerError(`Disconnected by the server${reason ? ` (${reason})` : ''}. Select the connection status to reconnect.`);
      return;
    }
    scheduleReconnect();
  }
  function scheduleReconnect() {
    const ceiling = Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt);
    const delay = Math.random() * ceiling;       // full jitter
    attempt = Math.min(attempt + 1, 30);
    retryAt = Date.now() + delay;
    retryTimer = setTimeout(connect, delay);
    const tick = () => {
      if (!navigator.onLine) { setStatus('offline', 'offline'); return; }
      const s = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
      setStatus('reconnecting', `reconnecting in ${s} s`);
    };
    tick();
    clearInterval(countdown);
    countdown = setInterval(tick, 250);
  }
  function reconnectNow() {
    if (ws || !S.token || noReconnect) return;
    showComposerError('');
    connect();
  }
  window.addEventListener('online', () => { attempt = 0; reconnectNow(); });
  window.addEventListener('offline', () => { if (!ws) setStatus('offline', 'offline'); });

  // ---- incoming frames ----
  function handle(f) {
    const room = typeof f.room === 'string' ? S.rooms.get(f.room) : undefined;
    switch (f.type) {
      case 'welcome': return onWelcome(f);
      case 'joined':
        if (!room) return;
        room.members = new Set(f.members || []);
        room.replayCount = 0;
        if (room.name === S.current) renderMembers();
        return;
      case 'message':
        if (room) { if (room.syncing) room.replayCount++; addMessages(room, [f], false); }
        return;
      case 'synced':
        if (!room) return;
        room.syncing = false;
        if (room.fresh && room.replayCount < PAGE) room.moreOlder = false;
        if (f.more) requestHistory(room, 'after');
        if (room.name === S.current) { renderMessages(); maybeFill(); }
        return;
      case 'history': return room && onHistory(room, f);
      case 'ack': return onAck(f);
      case 'presence':
        if (!room || typeof f.user !== 'string') return;
        if (f.state === 'online') room.members.add(f.user);
        else if (f.state === 'offline') room.members.delete(f.user);
        if (room.name === S.current) renderMembers();
        return;
      case 'members':
        if (!room) return;
        room.members = new Set(f.users || []);
        if (room.name === S.current) renderMembers();
        return;
      case 'error': return onError(f);
      case 'deleted':   // extension: an admin removed a message
        if (!room || typeof f.id !== 'number') return;
        room.msgs = room.msgs.filter((m) => m.id !== f.id);
        room.els.delete(f.id);
        if (room.name === S.current) scheduleRender();
        return;
      default: return; // pong, left, and anything unknown
    }
  }

  function onWelcome(f) {
    authed = true; authedAt = Date.now(); noReconnect = false;
    S.token = f.token; S.user = f.user || (creds && creds.user) || S.user;
    creds = null;
    store.set(LS.token, S.token); store.set(LS.user, S.user);
    if (f.limits) Object.assign(S.limits, f.limits);
    bucket = S.limits.rate_burst || 1; bucketAt = Date.now();
    setAuthBusy(false);
    showAuthError('');
    if (!S.rooms.size) initRooms();
    showChat();
    setStatus('connected', 'connected');
    for (const r of S.rooms.values()) sendJoin(r);
    pump();
    if (!welcomed) { welcomed = true; routeFromHash(true); } else renderChat();
  }

  function sendJoin(room) {
    const f = { type: 'join', room: room.name };
    room.fresh = !(room.lastId > 0);
    if (!room.fresh) f.since = room.lastId;
    room.syncing = true; room.replayCount = 0;
    room.joinedConn = sendFrame(f);
  }

  function requestHistory(room, dir) {
    const f = { type: 'history', room: room.name, limit: PAGE };
    if (dir === 'before') {
      if (!room.msgs.length) return;
      f.before = room.msgs[0].id;
      room.loadingOlder = true;
    } else {
      f.after = room.lastId;
    }
    if (sendFrame(f)) room.historyQ.push(dir); else room.loadingOlder = false;
    if (room.name === S.current) renderHistoryStatus();
  }

  function onHistory(room, f) {
    const dir = room.historyQ.shift() || 'before';
    const list = Array.isArray(f.messages) ? f.messages : [];
    if (dir === 'before') {
      room.loadingOlder = false;
      room.moreOlder = !!f.more;
      addMessages(room, list, true);
      if (room.name === S.current) { renderMessages(); maybeFill(); }
    } else {
      addMessages(room, list, false);
      if (f.more && list.length) requestHistory(room, 'after');
    }
  }

  function onAck(f) {
    const e = S.outbox.find((x) => x.cid === f.cid);
    if (!e || typeof f.id !== 'number') return;       // already confirmed through its message: fine
    const room = S.rooms.get(e.room);
    if (!room) { removeOutbox(e.cid); return; }
    if (e.errored) showComposerError('');
    addMessages(room, [{ type: 'message', room: e.room, id: f.id, user: S.user, text: e.text, ts: f.ts, cid: e.cid }], false);
  }

  function onError(f) {
    if (!authed) {
      if (f.code === 'auth_failed' || f.code === 'banned') {
        noReconnect = true;
        const msg = f.code === 'banned' ? ERRORS.banned
          : usedToken ? 'Your session has expired. Please sign in again.' : ERRORS.auth_failed;
        signedOut(msg);
      } else if (f.code !== 'unauthorized') {
        showAuthError(words(f) + (f.code === 'bad_request' && f.message ? ` (${f.message})` : ''));
        creds = null; setAuthBusy(false);
      }
      return;
    }
    if (f.code === 'banned') { noReconnect = true; signedOut(ERRORS.banned); return; }
    const e = f.ref != null ? S.outbox.find((x) => x.cid === f.ref) : null;
    if (e) {
      e.errored = true;
      if (f.code === 'rate_limited') {
        e.sent = false;
        clearTimeout(pumpTimer); pumpTimer = setTimeout(pump, 1000);
      } else if (f.code === 'not_joined' && !e.rejoined) {
        e.sent = false; e.rejoined = true;
        const room = S.rooms.get(e.room);
        if (room) { sendJoin(room); pump(); }
      } else {
        e.failed = words(f); e.sent = false; saveOutbox();
      }
      showComposerError(words(f));
      renderMessages();
      return;
    }
    if (f.ref === 'history') {
      for (const r of S.rooms.values()) { if (r.historyQ.length) { r.historyQ.shift(); r.loadingOlder = false; } }
    }
    showComposerError(words(f) + (f.code === 'bad_request' && f.message ? ` (${f.message})` : ''));
  }

  // ---- outgoing messages ----
  function newCid() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  function saveOutbox() {
    store.set(LS.outbox, JSON.stringify(S.outbox.filter((e) => !e.failed).map(({ cid, room, text, t }) => ({ cid, room, text, t }))));
  }
  function removeOutbox(cid) {
    const i = S.outbox.findIndex((x) => x.cid === cid);
    if (i >= 0) { S.outbox.splice(i, 1); saveOutbox(); }
  }
  // Send queued messages in order, paced by the server's token bucket so a backlog is not rate limited.
  function pump() {
    clearTimeout(pumpTimer); pumpTimer = null;
    if (!authed) return;
    const now = Date.now();
    // Pace a little under the advertised rate: frames do not reach the server exactly as spaced.
    const rate = (S.limits.rate_per_sec || 10) * 0.8, burst = S.limits.rate_burst || 1;
    bucket = Math.min(burst, bucket + ((now - bucketAt) / 1000) * rate); bucketAt = now;
    for (const e of S.outbox) {
      if (e.sent || e.failed) continue;
      const room = S.rooms.get(e.room);
      if (!room || !room.joinedConn) continue;
      if (bucket < 1) { pumpTimer = setTimeout(pump, Math.ceil(((1 - bucket) / rate) * 1000) + 10); break; }
      if (!sendFrame({ type: 'send', room: e.room, text: e.text, cid: e.cid })) break;
      e.sent = true; bucket -= 1;
    }
  }

  function submitComposer() {
    const input = $('composer-input');
    const text = input.value;
    if (!/[^\s]/u.test(text)) return;
    const room = S.rooms.get(S.current);
    if (!room) { showComposerError('Join a room first.'); return; }
    const n = [...text].length;
    if (n > S.limits.max_text) { showComposerError(`That message is too long (${n} of at most ${S.limits.max_text} characters).`); return; }
    showComposerError('');
    S.outbox.push({ cid: newCid(), room: room.name, text, t: Date.now(), sent: false, failed: null });
    saveOutbox();
    input.value = ''; autosize(); input.focus();
    stick = true;
    renderMessages();
    pump();
  }

  // ---- messages ----
  function addMessages(room, list, older) {
    let added = 0, fresh = 0, unordered = false;
    const me = S.user.toLowerCase();
    for (const m of list) {
      if (!m || typeof m.id !== 'number' || room.ids.has(m.id)) continue;   // dedupe by id
      const msg = { id: m.id, user: String(m.user ?? ''), text: String(m.text ?? ''), ts: Number(m.ts) || Date.now(), cid: m.cid };
      room.ids.add(msg.id);
      if (room.msgs.length && msg.id < room.msgs[room.msgs.length - 1].id) unordered = true;
      room.msgs.push(msg);
      added++;
      const isNew = msg.id > room.lastId;
      if (isNew) { room.lastId = msg.id; if (!older) fresh++; }
      if (msg.cid && msg.user.toLowerCase() === me) {
        const el = room.els.get('c' + msg.cid);
        if (el) { room.els.delete('c' + msg.cid); room.els.set(msg.id, el); }
        removeOutbox(msg.cid);
      } else if (!older && isNew && (room.name !== S.current || document.hidden)) {
        room.unread++;
      }
    }
    if (!added) return;
    if (unordered) room.msgs.sort((a, b) => a.id - b.id);
    if (room.name === S.current) {
      if (fresh && !stick && !older) { newCount += fresh; }
      scheduleRender();
    } else {
      renderRooms();
    }
  }

  // ---- view state ----
  let stick = true, newCount = 0, renderQueued = false;
  const scroller = () => $('scroller');
  const atBottom = () => { const s = scroller(); return s.scrollHeight - s.scrollTop - s.clientHeight < 48; };

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; renderMessages(); });
  }

  function dayKey(ts) { const d = new Date(ts); return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`; }
  function dayLabel(ts) {
    const d = new Date(ts), today = new Date();
    const y = new Date(); y.setDate(today.getDate() - 1);
    if (dayKey(ts) === dayKey(today)) return 'Today';
    if (dayKey(ts) === dayKey(y)) return 'Yesterday';
    return d.toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
  }
  function hue(name) { let h = 0; for (const c of name.toLowerCase()) h = (h * 31 + c.codePointAt(0)) % 360; return h; }
  function avatar(el, name) {
    el.textContent = ([...name][0] || '?').toUpperCase();
    el.style.setProperty('--hue', hue(name));
  }
  const clip = (s, n) => ([...s].length > n ? [...s].slice(0, n - 1).join('') + '…' : s);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function msgEl(room, key) {
    let li = room.els.get(key);
    if (li) return li;
    li = el('li', 'msg');
    li.dataset.testid = 'message';
    const av = el('span', 'avatar'); av.setAttribute('aria-hidden', 'true');
    const body = el('div', 'body');
    const meta = el('div', 'meta');
    meta.append(el('span', 'author'), el('time', 'time'));
    body.append(meta, el('div', 'text'), el('div', 'state'));
    li.append(av, body);
    room.els.set(key, li);
    return li;
  }
  function fillMsg(li, m, opts) {
    const [av, body] = li.children;
    const [meta, text, state] = body.children;
    const [author, time] = meta.children;
    if (li.dataset.user !== m.user) { avatar(av, m.user); author.textContent = m.user; li.dataset.user = m.user; }
    if (text.textContent !== m.text) text.textContent = m.text;   // text, never HTML
    const d = new Date(m.ts);
    time.dateTime = d.toISOString();
    time.title = d.toLocaleString();
    time.textContent = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
    li.classList.toggle('mine', opts.mine);
    li.classList.toggle('cont', opts.cont);
    if (opts.id != null) { li.dataset.id = String(opts.id); li.removeAttribute('data-cid'); } else { li.dataset.cid = opts.cid; li.removeAttribute('data-id'); }
    if (opts.mine) li.dataset.state = opts.state; else li.removeAttribute('data-state');
    state.replaceChildren();
    if (opts.state === 'pending') {
      state.textContent = opts.queued ? 'waiting for connection…' : 'sending…';
    } else if (opts.state === 'failed') {
      state.append(el('span', 'fail', `Not sent: ${opts.failed}`));
      const retry = el('button', 'link-btn', 'Retry'); retry.type = 'button'; retry.dataset.action = 'retry'; retry.dataset.cid = opts.cid;
      const discard = el('button', 'link-btn', 'Discard'); discard.type = 'button'; discard.dataset.action = 'discard'; discard.dataset.cid = opts.cid;
      state.append(retry, discard);
    } else if (opts.state === 'sent') {
      const ok = el('span', 'ok', '✓'); ok.title = 'sent'; ok.setAttribute('aria-label', 'sent');
      state.append(ok);
    }
  }

  function renderMessages() {
    const list = $('message-list');
    const room = S.rooms.get(S.current);
    $('empty-state').hidden = !!room;
    if (!room) { list.replaceChildren(); renderHistoryStatus(); renderNewMarker(); return; }
    const sc = scroller();
    // Keep the first visible message where it is unless we are following the bottom.
    let anchor = null, anchorOff = 0;
    if (!stick) {
      for (const li of list.children) {
        if (li.offsetTop + li.offsetHeight > sc.scrollTop) { anchor = li; anchorOff = li.offsetTop - sc.scrollTop; break; }
      }
    }
    const me = S.user.toLowerCase();
    const nodes = [];
    let prevDay = null, prevUser = null, prevTs = 0;
    const push = (m, key, opts) => {
      const dk = dayKey(m.ts);
      if (dk !== prevDay) {
        let sep = room.els.get('d' + dk);
        if (!sep) {
          sep = el('li', 'day'); sep.setAttribute('role', 'separator'); sep.dataset.testid = 'day-separator';
          sep.append(el('span'));
          room.els.set('d' + dk, sep);
        }
        sep.firstChild.textContent = dayLabel(m.ts);
        nodes.push(sep); prevDay = dk; prevUser = null;
      }
      opts.cont = prevUser === m.user.toLowerCase() && m.ts - prevTs < GROUP_MS;
      const li = msgEl(room, key);
      fillMsg(li, m, opts);
      nodes.push(li);
      prevUser = m.user.toLowerCase(); prevTs = m.ts;
    };
    for (const m of room.msgs) {
      const mine = m.user.toLowerCase() === me;
      push(m, m.id, { id: m.id, mine, state: mine ? 'sent' : null });
    }
    for (const e of S.outbox) {
      if (e.room !== room.name) continue;
      push({ user: S.user, text: e.text, ts: e.t }, 'c' + e.cid,
        { cid: e.cid, mine: true, state: e.failed ? 'failed' : 'pending', failed: e.failed, queued: !authed });
    }
    // Move only what changed (appends stay appends for screen readers; cheap for long lists).
    let cur = list.firstChild;
    for (const n of nodes) {
      if (cur === n) { cur = cur.nextSibling; continue; }
      list.insertBefore(n, cur);
    }
    while (cur) { const next = cur.nextSibling; cur.remove(); cur = next; }
    // Forget cached elements of messages no longer shown (e.g. discarded).
    if (room.els.size > nodes.length + 16) {
      const keep = new Set(nodes);
      for (const [k, v] of room.els) if (!keep.has(v)) room.els.delete(k);
    }
    if (stick) sc.scrollTop = sc.scrollHeight;
    else if (anchor && anchor.isConnected) sc.scrollTop = anchor.offsetTop - anchorOff;
    renderHistoryStatus();
    renderNewMarker();
    renderRooms();
  }

  function renderHistoryStatus() {
    const room = S.rooms.get(S.current);
    const p = $('history-status');
    if (!room) { p.textContent = ''; return; }
    const away = document.body.dataset.conn === 'offline' || document.body.dataset.conn === 'reconnecting';
    if (away && !room.msgs.length) p.textContent = 'You are offline. Messages load when the connection is back.';
    else if (room.loadingOlder) p.textContent = 'Loading older messages…';
    else if (!room.moreOlder && !room.syncing) p.textContent = `This is the beginning of #${room.name}.`;
    else p.textContent = '';
  }
  function renderNewMarker() {
    const b = $('new-messages');
    b.hidden = stick || newCount === 0;
    $('new-count').textContent = String(newCount);
  }
  function loadOlder() {
    const room = S.rooms.get(S.current);
    if (!room || !authed || room.syncing || room.loadingOlder || !room.moreOlder || !room.msgs.length) return;
    requestHistory(room, 'before');
  }
  // If the messages do not fill the view, fetch older ones so there is something to scroll.
  function maybeFill() {
    const sc = scroller();
    if (sc.scrollHeight <= sc.clientHeight + 8) loadOlder();
  }

  function renderRooms() {
    const ul = $('room-list');
    const items = [];
    for (const r of S.rooms.values()) {
      const li = el('li', 'room-item'); li.dataset.testid = 'room-item'; li.dataset.room = r.name;
      const b = el('button', 'room-btn'); b.type = 'button'; b.dataset.action = 'select'; b.dataset.room = r.name;
      b.append(el('span', 'hash', '#'), el('span', 'room-name', r.name));
      if (r.unread) { const u = el('span', 'badge', String(r.unread > 99 ? '99+' : r.unread)); u.setAttribute('aria-label', `${r.unread} unread`); b.append(u); }
      if (r.name === S.current) { li.classList.add('active'); b.setAttribute('aria-current', 'page'); }
      const x = el('button', 'leave-btn', '×'); x.type = 'button'; x.dataset.action = 'leave'; x.dataset.room = r.name;
      x.dataset.testid = 'leave-btn'; x.title = `Leave #${r.name}`; x.setAttribute('aria-label', `Leave #${r.name}`);
      li.append(b, x);
      items.push(li);
    }
    ul.replaceChildren(...items);
    renderUnread();
  }

  // Unread messages outside the room on screen: a badge on the ☰ button (the room list is a
  // drawer on a phone) and, with the current room's while the tab is hidden, in the page title.
  function renderUnread() {
    let total = 0, others = 0;
    for (const r of S.rooms.values()) { total += r.unread; if (r.name !== S.current) others += r.unread; }
    const fmt = (n) => (n > 99 ? '99+' : String(n));
    const b = $('rooms-unread');
    b.hidden = !others;
    b.textContent = others ? fmt(others) : '';
    $('rooms-toggle').title = others ? `Rooms: ${others} unread elsewhere` : 'Rooms';
    $('rooms-toggle').setAttribute('aria-label', $('rooms-toggle').title);
    const room = S.rooms.get(S.current);
    const base = room ? `#${room.name} · chatd` : 'chatd';
    document.title = total ? `(${fmt(total)}) ${base}` : base;
  }

  function renderMembers() {
    const room = S.rooms.get(S.current);
    const users = room ? [...room.members].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: 'base' })) : [];
    const me = S.user.toLowerCase();
    const items = users.map((u) => {
      const li = el('li', 'member'); li.dataset.user = u; li.dataset.testid = 'member';
      const av = el('span', 'avatar small'); av.setAttribute('aria-hidden', 'true'); avatar(av, u);
      li.append(av, el('span', 'member-name', u));
      if (u.toLowerCase() === me) li.append(el('span', 'you', '(you)'));
      return li;
    });
    $('member-list').replaceChildren(...items);
    $('members-count').textContent = room ? String(users.length) : '';
    $('members-count-small').textContent = room ? String(users.length) : '';
  }

  function renderChat() {
    const room = S.rooms.get(S.current);
    $('room-title').textContent = room ? `# ${room.name}` : 'No room';
    $('me-name').textContent = S.user;
    avatar($('me-avatar'), S.user || '?');
    const disabled = !room;
    $('composer-input').disabled = disabled; $('send-btn').disabled = disabled;
    $('composer-input').placeholder = room ? `Message #${clip(room.name, 24)}` : 'Join a room to chat';
    renderRooms(); renderMembers(); renderMessages();
  }

  function setStatus(state, text) {
    if ((state === 'connecting' || state === 'reconnecting') && !navigator.onLine) { state = 'offline'; text = 'offline'; }
    const b = $('conn-status');
    b.dataset.state = state;
    $('conn-text').textContent = text;
    document.body.dataset.conn = state;
    if (state === 'connected') { clearInterval(countdown); countdown = null; }
    renderHistoryStatus();
  }

  // ---- rooms ----
  function initRooms() {
    const saved = store.json(LS.rooms, []);
    const names = Array.isArray(saved) ? saved.filter((n) => typeof n === 'string' && ROOM_RE.test(n)) : [];
    if (!names.length) names.push('general');
    for (const n of names) if (!S.rooms.has(n)) S.rooms.set(n, newRoom(n));
    const outbox = store.json(LS.outbox, []);
    if (Array.isArray(outbox) && !S.outbox.length) {
      for (const e of outbox) if (e && typeof e.cid === 'string' && S.rooms.has(e.room)) S.outbox.push({ ...e, sent: false, failed: null });
    }
    if (!S.current) S.current = S.rooms.keys().next().value;
  }
  function saveRooms() { store.set(LS.rooms, JSON.stringify([...S.rooms.keys()])); }

  function joinRoom(name) {
    let room = S.rooms.get(name);
    if (!room) {
      room = newRoom(name);
      S.rooms.set(name, room);
      saveRooms();
      if (authed) sendJoin(room);
    }
    return room;
  }
  function selectRoom(name) {
    const room = joinRoom(name);
    S.current = name;
    room.unread = 0;
    stick = true; newCount = 0;
    renderChat();
    closePanels();
  }
  function leaveRoom(name) {
    const room = S.rooms.get(name);
    if (!room) return;
    if (room.joinedConn) sendFrame({ type: 'leave', room: name });
    S.rooms.delete(name);
    S.outbox = S.outbox.filter((e) => e.room !== name); saveOutbox();
    saveRooms();
    if (S.current === name) {
      const next = S.rooms.keys().next().value || null;
      if (next) { location.hash = next; selectRoom(next); } else { S.current = null; history.replaceState(null, '', location.pathname + location.search); renderChat(); }
    } else {
      renderRooms();
    }
  }
  function routeFromHash(initial) {
    let name = '';
    try { name = decodeURIComponent(location.hash.slice(1)); } catch { /* malformed */ }
    if (name && !ROOM_RE.test(name)) {
      showJoinError(`"${name}" is not a valid room name (a-z, 0-9, _ and -, up to 64).`);
      name = '';
    }
    if (!name) {
      if (!S.current) { if (initial) renderChat(); return; }
      name = S.current;
      history.replaceState(null, '', '#' + name);
    }
    if (name !== S.current || initial) selectRoom(name);
  }
  window.addEventListener('hashchange', () => { if (!$('chat-view').hidden) routeFromHash(false); });

  // ---- views ----
  function showChat() {
    $('auth-view').hidden = true;
    $('chat-view').hidden = false;
    renderChat();
  }
  function showAuthError(msg) { $('auth-error').textContent = msg; }
  function setAuthBusy(busy) {
    $('login-btn').disabled = busy; $('register-btn').disabled = busy;
    $('auth-form').setAttribute('aria-busy', busy ? 'true' : 'false');
  }
  function showJoinError(msg) { $('join-error').textContent = msg; }
  function showComposerError(msg) { $('composer-error').textContent = msg; }

  // Forget the session and show the sign-in form (with a reason, if any).
  function signedOut(reason) {
    noReconnect = true;
    clearTimeout(retryTimer); retryTimer = null; clearInterval(countdown); countdown = null;
    const sock = ws;
    if (sock) { sock.onopen = sock.onmessage = sock.onclose = null; try { sock.close(1000); } catch { /* ignore */ } }
    ws = null; authed = false; clearInterval(beat); creds = null; welcomed = false;
    S.token = null; store.set(LS.token, null);
    S.rooms.clear(); S.current = null; S.outbox = [];
    store.set(LS.rooms, null); store.set(LS.outbox, null);
    $('chat-view').hidden = true;
    $('auth-view').hidden = false;
    setAuthBusy(false);
    showAuthError(reason || '');
    $('auth-user').value = S.user || '';
    $('auth-password').value = '';
    (S.user ? $('auth-password') : $('auth-user')).focus();
  }

  // ---- panels on narrow screens ----
  function togglePanel(which) {
    const open = !document.body.classList.contains(which + '-open');
    closePanels();
    if (open) {
      document.body.classList.add(which + '-open');
      $(which === 'rooms' ? 'rooms-toggle' : 'members-toggle').setAttribute('aria-expanded', 'true');
      $('scrim').hidden = false;
      const first = document.querySelector(which === 'rooms' ? '#sidebar button, #sidebar input' : '#members');
      if (first) { if (which === 'members') first.tabIndex = -1; first.focus(); }
    }
  }
  function closePanels() {
    document.body.classList.remove('rooms-open', 'members-open');
    $('rooms-toggle').setAttribute('aria-expanded', 'false');
    $('members-toggle').setAttribute('aria-expanded', 'false');
    $('scrim').hidden = true;
  }

  function autosize() {
    const t = $('composer-input');
    t.style.height = 'auto';
    t.style.height = Math.min(t.scrollHeight, 200) + 'px';
  }

  // ---- wiring ----
  function wire() {
    $('auth-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const register = ev.submitter ? ev.submitter.value === 'register' : false;
      const user = $('auth-user').value.trim();
      const password = $('auth-password').value;
      if (!USER_RE.test(user)) { showAuthError('User names are 1 to 32 letters, digits, _ . or -.'); $('auth-user').focus(); return; }
      if (password.length < 8 || password.length > 128) { showAuthError('Passwords are 8 to 128 characters.'); $('auth-password').focus(); return; }
      showAuthError('');
      setAuthBusy(true);
      S.token = null; store.set(LS.token, null);
      creds = { user, password, register };
      noReconnect = false;
      if (ws && ws.readyState === WebSocket.OPEN && !authed) { usedToken = false; sendFrame(authFrame()); }
      else if (!ws) connect();
    });

    $('join-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const name = $('join-room').value.trim();
      if (!ROOM_RE.test(name)) { showJoinError('Room names are 1 to 64 characters: a-z, 0-9, _ and -.'); return; }
      showJoinError('');
      $('join-room').value = '';
      location.hash = name;   // hashchange selects (and joins) it
      if (S.current !== name) selectRoom(name);
    });
    $('join-room').addEventListener('input', () => {
      const v = $('join-room').value;
      showJoinError(v && !ROOM_RE.test(v) ? 'Use a-z, 0-9, _ and - only (lower case).' : '');
    });

    $('room-list').addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-action]');
      if (!b) return;
      if (b.dataset.action === 'select') { location.hash = b.dataset.room; if (S.current !== b.dataset.room) selectRoom(b.dataset.room); else closePanels(); }
      if (b.dataset.action === 'leave') leaveRoom(b.dataset.room);
    });

    $('message-list').addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-action]');
      if (!b) return;
      const e = S.outbox.find((x) => x.cid === b.dataset.cid);
      if (!e) return;
      if (b.dataset.action === 'retry') { e.failed = null; e.sent = false; e.rejoined = false; saveOutbox(); pump(); }
      if (b.dataset.action === 'discard') { removeOutbox(e.cid); }
      renderMessages();
    });

    $('composer').addEventListener('submit', (ev) => { ev.preventDefault(); submitComposer(); });
    $('composer-input').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submitComposer(); }
    });
    $('composer-input').addEventListener('input', autosize);

    scroller().addEventListener('scroll', () => {
      stick = atBottom();
      if (stick && newCount) { newCount = 0; renderNewMarker(); }
      if (scroller().scrollTop < 120) loadOlder();
    }, { passive: true });
    $('new-messages').addEventListener('click', () => {
      stick = true; newCount = 0;
      const sc = scroller(); sc.scrollTop = sc.scrollHeight;
      renderNewMarker();
      $('composer-input').focus();
    });

    $('conn-status').addEventListener('click', () => { attempt = 0; reconnectNow(); });
    $('signout').addEventListener('click', () => signedOut(''));
    $('rooms-toggle').addEventListener('click', () => togglePanel('rooms'));
    $('members-toggle').addEventListener('click', () => togglePanel('members'));
    $('scrim').addEventListener('click', closePanels);
    document.addEventListener('keydown', (ev) => {
      if (ev.key !== 'Escape') return;
      const which = document.body.classList.contains('rooms-open') ? 'rooms-toggle'
        : document.body.classList.contains('members-open') ? 'members-toggle' : null;
      closePanels();
      if (which) $(which).focus();
    });
    document.addEventListener('visibilitychange', () => {
      const room = S.rooms.get(S.current);
      if (!document.hidden && room && room.unread) { room.unread = 0; renderRooms(); }
    });
    window.addEventListener('resize', () => { if (stick) { const sc = scroller(); sc.scrollTop = sc.scrollHeight; } });
  }

  function start() {
    wire();
    // Installable, and opens without a network: sw.js keeps a copy of these files (not messages).
    if (window.isSecureContext && 'serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js').catch(() => {});
    if (S.token) {
      initRooms();
      let name = '';
      try { name = decodeURIComponent(location.hash.slice(1)); } catch { /* ignore */ }
      if (ROOM_RE.test(name)) { joinRoom(name); S.current = name; }
      showChat();
      connect();
    } else {
      $('auth-view').hidden = false;
      $('auth-user').value = S.user || '';
      (S.user ? $('auth-password') : $('auth-user')).focus();
    }
  }
  start();
})();
