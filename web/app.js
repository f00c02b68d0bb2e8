// chatd web client: plain JS, no dependencies. Speaks the wire protocol in PROTOCOL.md (1.1:
// conversations, read markers, typing, edit and delete).
// All user-supplied text goes into the DOM through textContent, never innerHTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const LS = { token: 'chatd.token', user: 'chatd.user', rooms: 'chatd.rooms', outbox: 'chatd.outbox' };
  const ROOM_RE = /^[a-z0-9_-]{1,64}$/;
  const USER_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const DM_RE = /^dm:([a-z0-9_.-]{1,32})\+([a-z0-9_.-]{1,32})$/;
  // App-level ping interval; `?ping_ms=` overrides it (tests use a short one).
  const PING_MS = Math.max(200, Number(new URLSearchParams(location.search).get('ping_ms')) || 10000);
  const DEAD_MS = 2 * PING_MS;    // nothing received for this long: the connection is dead
  const BACKOFF_BASE = 500, BACKOFF_CAP = 30000;
  const PAGE = 50;                // history page size (= the server's default replay without `since`)
  const GROUP_MS = 5 * 60 * 1000; // consecutive messages by one author within this are grouped
  const TYPING_EVERY_MS = 3000;   // send `typing` at most this often while typing
  const TYPING_SHOW_MS = 5000;    // show someone's `typing` this long

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
    forbidden: 'You are not allowed to do that.',
    not_found: 'That message no longer exists.',
  };
  const words = (f) => ERRORS[f.code] || f.message || f.code || 'Unknown error';

  // ---- storage (localStorage may throw in private modes: degrade to memory) ----
  const store = {
    get(k) { try { return localStorage.getItem(k); } catch { return null; } },
    set(k, v) { try { if (v == null) localStorage.removeItem(k); else localStorage.setItem(k, v); } catch { /* ignore */ } },
    json(k, dflt) { try { const v = JSON.parse(store.get(k)); return v == null ? dflt : v; } catch { return dflt; } },
  };

  // ---- names ----
  const isDm = (n) => { const m = DM_RE.exec(n); return !!m && m[1] < m[2]; };
  const validRoom = (n) => typeof n === 'string' && (ROOM_RE.test(n) || isDm(n));
  const dmRoom = (a, b) => { const x = a.toLowerCase(), y = b.toLowerCase(); return x < y ? `dm:${x}+${y}` : `dm:${y}+${x}`; };
  function dmPeer(name) {
    const m = DM_RE.exec(name);
    if (!m) return null;
    return m[1] === S.user.toLowerCase() ? m[2] : m[1];
  }
  // A user's name as they spell it (DM room names are lower case), once seen in a message or presence.
  const spelled = new Map();
  const learnName = (u) => { if (typeof u === 'string' && USER_RE.test(u)) spelled.set(u.toLowerCase(), u); };
  const userName = (lower) => spelled.get(lower) || lower;
  const roomLabel = (room) => (room.kind === 'dm' ? userName(room.peer) : room.name);
  const roomRoute = (room) => (room.kind === 'dm' ? '@' + room.peer : room.name);
  const num = (x) => (typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : 0);

  // `@name` of the signed-in user as a whole word (PROTOCOL-1.1 "Mentions").
  let mentionRe = null, mentionFor = null;
  function mentionsMe(text) {
    if (!S.user) return false;
    if (mentionFor !== S.user) {
      const esc = S.user.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');
      mentionRe = new RegExp(`(?<![\\p{L}\\p{N}_.\\-])@${esc}(?![\\p{L}\\p{N}_\\-])(?!\\.[\\p{L}\\p{N}])`, 'iu');
      mentionFor = S.user;
    }
    return mentionRe.test(text);
  }
  // Any `@name`-looking token, for highlighting (a trailing `.` is not part of the name).
  const MENTION_TOKEN = /(?<![\p{L}\p{N}_.\-])@[A-Za-z0-9_.\-]{1,32}/gu;

  // ---- state ----
  const S = {
    token: store.get(LS.token),
    user: store.get(LS.user) || '',
    limits: { max_text: 4000, rate_per_sec: 10, rate_burst: 20 },
    rooms: new Map(),   // name -> room: the conversation list
    current: null,      // current room name
    chosen: false,      // the current room was asked for (URL or a click), not a default
    outbox: [],         // {kind, cid, room, text, id, t, sent, failed} in send order
    listLoaded: false,  // a `rooms` reply arrived since the page loaded
    pendingJoins: [],   // rooms joined on this connection whose `joined` (or error) is still due
    editing: null,      // {room, id} of the own message being edited in the composer
    confirmDelete: null, // id of the own message whose delete asks for confirmation
    notified: new Set(), // room:id of browser notifications shown
  };
  const newRoom = (name) => ({
    name, kind: isDm(name) ? 'dm' : 'room', peer: dmPeer(name),
    msgs: [], ids: new Set(), lastId: 0, members: new Set(),
    // Unread: messages of others with id > read. `counted` is the newest id taken into account
    // (from a `rooms` reply or a message); `covered` is the id after which every message is in `msgs`.
    read: 0, unread: 0, mentions: 0, counted: 0, covered: Infinity,
    last: null, activity: 0, typing: new Map(), typingSent: 0, local: false,
    joinedConn: false, syncing: false, fresh: false, replayCount: 0,
    moreOlder: true, loadingOlder: false, historyQ: [], els: new Map(),
  });

  // ---- connection ----
  let welcomed = false;           // first welcome of this page load done (routes the URL fragment once)
  let ws = null, authed = false, creds = null, noReconnect = false, usedToken = false;
  let authedAt = 0;               // when the current session got its welcome
  let attempt = 0, retryTimer = null, retryAt = 0, countdown = null, beat = null, lastRecv = 0;
  let bucket = 0, bucketAt = 0, pumpTimer = null, roomsTimer = null;

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
    clearTimeout(roomsTimer); roomsTimer = null;
    S.pendingJoins = [];
    for (const r of S.rooms.values()) { r.joinedConn = false; r.syncing = false; r.loadingOlder = false; r.historyQ = []; r.typing.clear(); }
    for (const e of S.outbox) e.sent = false;   // every unacked frame goes out again, same cid
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
      case 'rooms': return onRooms(f);
      case 'joined': {
        const i = S.pendingJoins.indexOf(f.room);
        if (i >= 0) S.pendingJoins.splice(i, 1);
        if (!room) return;
        room.members = new Set(f.members || []);
        for (const u of room.members) learnName(u);
        room.replayCount = 0;
        if (num(f.read) > room.read) { room.read = num(f.read); recount(room); }
        if (room.name === S.current) renderMembers();
        return;
      }
      case 'message':
        if (room) { if (room.syncing) room.replayCount++; addMessages(room, [f], false); }
        return;
      case 'synced':
        if (!room) return;
        room.syncing = false;
        if (room.fresh) {
          if (room.replayCount < PAGE) room.moreOlder = false;
          room.covered = room.moreOlder && room.msgs.length ? room.msgs[0].id - 1 : 0;
        }
        if (f.more) requestHistory(room, 'after');
        else if (num(f.last_id) > room.lastId) room.lastId = num(f.last_id);
        if (room.name === S.current) { renderMessages(); maybeFill(); }
        else renderRooms();
        return;
      case 'history': return room && onHistory(room, f);
      case 'ack': return onAck(f);
      case 'read':
        if (room && num(f.id) > room.read) { room.read = num(f.id); recount(room); renderRooms(); }
        return;
      case 'notify': return onNotify(f);
      case 'typing':
        if (!room || typeof f.user !== 'string' || f.user.toLowerCase() === S.user.toLowerCase()) return;
        learnName(f.user);
        room.typing.set(f.user, Date.now() + TYPING_SHOW_MS);
        renderTyping();
        return;
      case 'edited': return room && onEdited(room, f);
      case 'deleted': return room && onDeleted(room, f);
      case 'presence':
        if (!room || typeof f.user !== 'string') return;
        learnName(f.user);
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
      default: return; // pong, left, and anything unknown
    }
  }

  function onWelcome(f) {
    authed = true; authedAt = Date.now(); noReconnect = false;
    S.token = f.token; S.user = f.user || (creds && creds.user) || S.user;
    creds = null;
    store.set(LS.token, S.token); store.set(LS.user, S.user);
    learnName(S.user);
    if (f.limits) Object.assign(S.limits, f.limits);
    bucket = S.limits.rate_burst || 1; bucketAt = Date.now();
    setAuthBusy(false);
    showAuthError('');
    if (!S.rooms.size) initRooms();
    showChat();
    setStatus('connected', 'connected');
    // The conversation list first (with unread counts), then the joins (see onRooms).
    if (!sendFrame({ type: 'rooms' })) return;
    if (!welcomed) { welcomed = true; routeFromHash(true); } else renderChat();
  }

  // The server's conversation list: unread counts, mentions, read markers, newest messages.
  function onRooms(f) {
    const list = Array.isArray(f.rooms) ? f.rooms : [];
    const first = !S.listLoaded;
    S.listLoaded = true;
    const listed = new Set();
    for (const e of list) {
      if (!e || !validRoom(e.room)) continue;
      if (isDm(e.room) && !dmPeer(e.room)) continue;
      listed.add(e.room);
      const r = S.rooms.get(e.room) || addRoom(e.room);
      r.local = false;
      const ahead = r.read > num(e.read);
      r.read = Math.max(r.read, num(e.read));
      const lastId = num(e.last_id);
      // The server counted up to last_id; add what this page holds beyond it.
      r.unread = num(e.unread) + countUnread(r, lastId, false);
      r.mentions = num(e.mentions) + countUnread(r, lastId, true);
      r.counted = Math.max(r.counted, lastId);
      if (ahead) recount(r);
      if (e.last && typeof e.last.id === 'number' && (!r.last || e.last.id >= r.last.id)) setLast(r, e.last);
      // Not loaded here: join from the newest id (nothing replayed); opening it fetches history.
      if (!r.msgs.length && !r.lastId && r.name !== S.current) { r.lastId = lastId; r.covered = lastId; }
    }
    // Rooms the server does not list were left on another device: drop them, except the one on
    // screen and those joined here since. A server with no list yet (an account from before
    // conversations) keeps what this device had.
    if (!(first && !listed.size)) {
      for (const [name, r] of [...S.rooms]) if (!listed.has(name) && name !== S.current && !r.local) S.rooms.delete(name);
    }
    // Nothing asked for: open the latest conversation rather than a default room.
    if (first && !S.chosen && listed.size && !listed.has(S.current)) {
      const dflt = S.rooms.get(S.current);
      if (dflt && !dflt.msgs.length) S.rooms.delete(S.current);
      S.current = sortedRooms()[0].name;
      const r = S.rooms.get(S.current);
      if (!r.msgs.length) { r.lastId = 0; r.covered = Infinity; }   // on screen: join with the last 50
      history.replaceState(null, '', '#' + roomRoute(r));
    }
    saveRooms();
    for (const r of S.rooms.values()) if (!r.joinedConn) sendJoin(r);
    pump();
    renderChat();
  }
  // Ask for the list again soon (unread counts this page cannot work out itself).
  function refreshRooms() {
    if (roomsTimer || !authed) return;
    roomsTimer = setTimeout(() => { roomsTimer = null; sendFrame({ type: 'rooms' }); }, 200);
  }

  function sendJoin(room) {
    const f = { type: 'join', room: room.name };
    room.fresh = !(room.lastId > 0);
    if (!room.fresh) { f.since = room.lastId; if (room.covered === Infinity) room.covered = room.lastId; }
    room.syncing = true; room.replayCount = 0;
    room.joinedConn = sendFrame(f);
    if (room.joinedConn) S.pendingJoins.push(room.name);
  }

  // dir: 'before' (older than what is shown), 'after' (catching up), 'newest' (nothing loaded yet).
  function requestHistory(room, dir) {
    const f = { type: 'history', room: room.name, limit: PAGE };
    if (dir === 'before') {
      if (!room.msgs.length) return;
      f.before = room.msgs[0].id;
      room.loadingOlder = true;
    } else if (dir === 'after') {
      f.after = room.lastId;
    } else {
      room.loadingOlder = true;
    }
    if (sendFrame(f)) room.historyQ.push(dir); else room.loadingOlder = false;
    if (room.name === S.current) renderHistoryStatus();
  }

  function onHistory(room, f) {
    const dir = room.historyQ.shift() || 'before';
    const list = Array.isArray(f.messages) ? f.messages : [];
    if (dir === 'after') {
      addMessages(room, list, false);
      if (f.more && list.length) requestHistory(room, 'after');
      return;
    }
    room.loadingOlder = false;
    room.moreOlder = !!f.more;
    // Every message after `covered` is here: a page of the newest, or one right before them.
    const prevOldest = room.msgs.length ? room.msgs[0].id : Infinity;
    const contiguous = dir === 'newest' || room.covered <= prevOldest - 1;
    addMessages(room, list, true);
    if (contiguous) room.covered = Math.min(room.covered, f.more && list.length ? list[0].id - 1 : 0);
    if (room.name === S.current) { renderMessages(); maybeFill(); }
  }

  function onAck(f) {
    const e = S.outbox.find((x) => x.cid === f.cid);
    if (!e || typeof f.id !== 'number') return;       // already confirmed through its broadcast: fine
    const room = S.rooms.get(e.room);
    if (e.errored) showComposerError('');
    if (!room) { removeOutbox(e.cid); return; }
    if (e.kind === 'edit') {
      removeOutbox(e.cid);
      applyEdit(room, e.id, e.text, f.ts);
    } else if (e.kind === 'delete') {
      removeOutbox(e.cid);
      applyDelete(room, e.id);
    } else {
      addMessages(room, [{ type: 'message', room: e.room, id: f.id, user: S.user, text: e.text, ts: f.ts, cid: e.cid }], false);
    }
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
      } else if (e.kind === 'edit' || e.kind === 'delete') {
        removeOutbox(e.cid);   // the message is gone or not ours: nothing to retry
      } else {
        e.failed = words(f); e.sent = false; saveOutbox();
      }
      showComposerError(e.kind === 'edit' || e.kind === 'delete' ? `Not ${e.kind === 'edit' ? 'edited' : 'deleted'}: ${words(f)}` : words(f));
      renderMessages();
      return;
    }
    if (f.ref === 'join' && S.pendingJoins.length) return onJoinError(S.pendingJoins.shift(), f);
    if (f.ref === 'rooms') {           // no list: join what this device knows
      S.listLoaded = true;
      for (const r of S.rooms.values()) if (!r.joinedConn) sendJoin(r);
      pump();
      return;
    }
    if (f.ref === 'read' || f.ref === 'typing') return;   // hints: nothing to tell the person
    if (f.ref === 'history') {
      for (const r of S.rooms.values()) { if (r.historyQ.length) { r.historyQ.shift(); r.loadingOlder = false; } }
    }
    showComposerError(words(f) + (f.code === 'bad_request' && f.message ? ` (${f.message})` : ''));
  }

  // A join the server refused (no such user for a DM, not ours, too many new rooms): drop the room.
  function onJoinError(name, f) {
    const room = S.rooms.get(name);
    if (!room) return;
    if (f.code === 'rate_limited') { showJoinError('You are creating rooms too fast. Try again later.'); }
    else if (room.kind === 'dm' && f.code === 'not_found') showJoinError(`There is no user named ${room.peer}.`);
    else showJoinError(`Cannot open ${roomLabel(room)}: ${words(f)}`);
    S.rooms.delete(name);
    S.outbox = S.outbox.filter((e) => e.room !== name); saveOutbox();
    saveRooms();
    if (S.current === name) {
      const next = sortedRooms()[0];
      S.current = next ? next.name : null;
      history.replaceState(null, '', location.pathname + location.search + (next ? '#' + roomRoute(next) : ''));
      if (window.matchMedia('(max-width: 759px)').matches && !document.body.classList.contains('rooms-open')) togglePanel('rooms');   // show the error
    }
    renderChat();
  }

  // A message in a room this connection has not joined: a DM or a mention of the user.
  function onNotify(f) {
    if (!validRoom(f.room) || typeof f.id !== 'number' || (isDm(f.room) && !dmPeer(f.room))) return;
    learnName(f.user);
    let room = S.rooms.get(f.room);
    if (!room) {
      room = addRoom(f.room);
      room.local = true;
      room.lastId = f.id; room.covered = f.id;
      saveRooms();
    }
    const msg = { id: f.id, user: String(f.user ?? ''), text: String(f.text ?? ''), ts: num(f.ts) || Date.now() };
    if (msg.id > room.counted) {
      room.counted = msg.id;
      if (msg.id > room.read && msg.user.toLowerCase() !== S.user.toLowerCase()) {
        room.unread++;
        if (mentionsMe(msg.text)) room.mentions++;
        notifyPerson(room, msg);
      }
    }
    if (!room.last || msg.id >= room.last.id) setLast(room, msg);
    if (authed && !room.joinedConn) sendJoin(room);
    renderRooms();
  }

  // ---- outgoing messages, edits and deletes ----
  function newCid() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  function saveOutbox() {
    store.set(LS.outbox, JSON.stringify(S.outbox.filter((e) => !e.failed).map(({ kind, cid, room, text, id, t }) => ({ kind, cid, room, text, id, t }))));
  }
  function removeOutbox(cid) {
    const i = S.outbox.findIndex((x) => x.cid === cid);
    if (i >= 0) { S.outbox.splice(i, 1); saveOutbox(); }
  }
  // Send queued frames in order, paced by the server's token bucket so a backlog is not rate limited.
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
      let f;
      if (e.kind === 'edit') f = { type: 'edit', room: e.room, id: e.id, text: e.text, cid: e.cid };
      else if (e.kind === 'delete') f = { type: 'delete', room: e.room, id: e.id, cid: e.cid };
      else f = { type: 'send', room: e.room, text: e.text, cid: e.cid };
      if (!sendFrame(f)) break;
      e.sent = true; bucket -= 1;
    }
  }
  function queue(entry) {
    S.outbox.push({ kind: 'send', t: Date.now(), sent: false, failed: null, ...entry, cid: newCid() });
    saveOutbox();
    pump();
  }

  function submitComposer() {
    const input = $('composer-input');
    const text = input.value;
    const room = S.rooms.get(S.current);
    if (S.editing) {
      const { id } = S.editing;
      const editingRoom = S.editingRoom;
      const m = room && room.msgs.find((x) => x.id === id);
      if (!/[^\s]/u.test(text)) { showComposerError('An edited message cannot be empty. Delete it instead.'); return; }
      if (tooLong(text)) return;
      stopEditing();
      if (m && m.text !== text && room.name === editingRoom) queue({ kind: 'edit', room: room.name, id, text });
      renderMessages();
      return;
    }
    if (!/[^\s]/u.test(text)) return;
    if (!room) { showComposerError('Join a room first.'); return; }
    if (tooLong(text)) return;
    showComposerError('');
    // The message ends this burst of typing: the next one may be told a second from now (the
    // server relays one typing frame per second).
    room.typingSent = Math.min(room.typingSent, Date.now() - TYPING_EVERY_MS + 1000);
    input.value = ''; autosize(); input.focus();
    closeMentionMenu();
    stick = true;
    queue({ kind: 'send', room: room.name, text });
    renderMessages();
  }
  function tooLong(text) {
    const n = [...text].length;
    if (n <= S.limits.max_text) return false;
    showComposerError(`That message is too long (${n} of at most ${S.limits.max_text} characters).`);
    return true;
  }
  function startEditing(room, id) {
    const m = room.msgs.find((x) => x.id === id);
    if (!m) return;
    S.editing = { id }; S.editingRoom = room.name; S.confirmDelete = null;
    const input = $('composer-input');
    S.draft = S.draft ?? input.value;
    input.value = pendingEdit(room, id) ?? m.text;
    $('edit-bar').hidden = false;
    $('send-btn').textContent = 'Save';
    autosize(); input.focus(); input.setSelectionRange(input.value.length, input.value.length);
    renderMessages();
  }
  function stopEditing() {
    if (!S.editing) return;
    S.editing = null; S.editingRoom = null;
    $('edit-bar').hidden = true;
    $('send-btn').textContent = 'Send';
    $('composer-input').value = S.draft || ''; S.draft = null;
    autosize();
    renderMessages();
  }
  const pendingEdit = (room, id) => {
    let t = null;
    for (const e of S.outbox) if (e.kind === 'edit' && e.room === room.name && e.id === id) t = e.text;
    return t;
  };
  const pendingDelete = (room, id) => S.outbox.some((e) => e.kind === 'delete' && e.room === room.name && e.id === id);

  // ---- typing ----
  function typed() {
    const room = S.rooms.get(S.current);
    if (!room || !room.joinedConn || S.editing || !$('composer-input').value.trim()) return;
    const now = Date.now();
    if (now - room.typingSent < TYPING_EVERY_MS) return;
    room.typingSent = now;
    sendFrame({ type: 'typing', room: room.name });
  }
  let typingTimer = null;
  function renderTyping() {
    const now = Date.now();
    let next = Infinity;
    for (const r of S.rooms.values()) {
      for (const [u, until] of r.typing) { if (until <= now) r.typing.delete(u); else next = Math.min(next, until); }
    }
    const room = S.rooms.get(S.current);
    const who = room ? [...room.typing.keys()] : [];
    const p = $('typing');
    p.textContent = !who.length ? '' : who.length === 1 ? `${who[0]} is typing…`
      : who.length === 2 ? `${who[0]} and ${who[1]} are typing…` : 'Several people are typing…';
    clearTimeout(typingTimer);
    if (next !== Infinity) typingTimer = setTimeout(renderTyping, next - now + 20);
    renderRooms();
  }

  // ---- messages ----
  function countUnread(room, above, mentionsOnly) {
    const me = S.user.toLowerCase();
    let n = 0;
    for (const m of room.msgs) {
      if (m.id > above && m.id > room.read && m.user.toLowerCase() !== me && (!mentionsOnly || mentionsMe(m.text))) n++;
    }
    return n;
  }
  // The read marker moved: count again from what is loaded, or ask the server.
  function recount(room) {
    if (room.read >= room.counted) { room.unread = 0; room.mentions = 0; }
    else if (room.covered <= room.read) {
      room.unread = countUnread(room, 0, false) - countUnread(room, room.counted, false);
      room.mentions = countUnread(room, 0, true) - countUnread(room, room.counted, true);
    } else refreshRooms();
  }
  function setLast(room, m) {
    room.last = { id: m.id, user: String(m.user ?? ''), text: String(m.text ?? ''), ts: num(m.ts) };
    room.activity = Math.max(room.activity, room.last.ts);
    learnName(room.last.user);
  }

  function addMessages(room, list, older) {
    let added = 0, fresh = 0, unordered = false;
    const me = S.user.toLowerCase();
    for (const m of list) {
      if (!m || typeof m.id !== 'number' || room.ids.has(m.id)) continue;   // dedupe by id
      const msg = { id: m.id, user: String(m.user ?? ''), text: String(m.text ?? ''), ts: Number(m.ts) || Date.now(), cid: m.cid, edited: num(m.edited_ts) };
      learnName(msg.user);
      room.ids.add(msg.id);
      if (room.msgs.length && msg.id < room.msgs[room.msgs.length - 1].id) unordered = true;
      room.msgs.push(msg);
      added++;
      const isNew = msg.id > room.lastId;
      if (isNew) { room.lastId = msg.id; if (!older) fresh++; }
      const mine = msg.user.toLowerCase() === me;
      if (msg.id > room.counted) {
        room.counted = msg.id;
        if (!mine && msg.id > room.read) {
          room.unread++;
          if (mentionsMe(msg.text)) room.mentions++;
          if (!older && !room.syncing) notifyPerson(room, msg);
        }
      }
      if (!room.last || msg.id >= room.last.id) setLast(room, msg);
      if (room.typing.delete(msg.user)) renderTyping();
      if (msg.cid && mine) {
        const el = room.els.get('c' + msg.cid);
        if (el) { room.els.delete('c' + msg.cid); room.els.set(msg.id, el); }
        removeOutbox(msg.cid);
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

  function applyEdit(room, id, text, ts) {
    const m = room.msgs.find((x) => x.id === id);
    if (m) { m.text = text; m.edited = num(ts) || Date.now(); }
    if (room.last && room.last.id === id) room.last.text = text;
    if (room.name === S.current) scheduleRender(); else renderRooms();
  }
  function applyDelete(room, id) {
    const i = room.msgs.findIndex((x) => x.id === id);
    if (i >= 0) {
      const [m] = room.msgs.splice(i, 1);
      if (m.user.toLowerCase() !== S.user.toLowerCase() && m.id > room.read && m.id <= room.counted) {
        room.unread = Math.max(0, room.unread - 1);
        if (mentionsMe(m.text)) room.mentions = Math.max(0, room.mentions - 1);
      }
    }
    room.els.delete(id);
    if (room.last && room.last.id === id) {
      const prev = room.msgs[room.msgs.length - 1];
      room.last = prev ? { id: prev.id, user: prev.user, text: prev.text, ts: prev.ts } : null;
    }
    if (S.editing && S.editing.id === id && S.editingRoom === room.name) stopEditing();
    if (room.name === S.current) scheduleRender(); else renderRooms();
  }
  function onEdited(room, f) {
    if (typeof f.id !== 'number' || typeof f.text !== 'string') return;
    if (num(f.seq) > room.lastId) room.lastId = num(f.seq);
    applyEdit(room, f.id, f.text, f.ts);
  }
  function onDeleted(room, f) {   // by the author, or an admin (`[system]`)
    if (typeof f.id !== 'number') return;
    if (num(f.seq) > room.lastId) room.lastId = num(f.seq);
    applyDelete(room, f.id);
  }

  // ---- browser notifications: DMs and mentions while the tab is hidden ----
  const canNotify = () => 'Notification' in window && Notification.permission === 'granted';
  function notifyPerson(room, msg) {
    if (!document.hidden || !canNotify()) return;
    if (room.kind !== 'dm' && !mentionsMe(msg.text)) return;
    const key = `${room.name}:${msg.id}`;
    if (S.notified.has(key)) return;
    S.notified.add(key);
    const title = room.kind === 'dm' ? msg.user : `${msg.user} in #${room.name}`;
    try {
      const n = new Notification(title, { body: clip(msg.text, 160), tag: key, icon: '/icon-192.png' });
      n.onclick = () => { window.focus(); location.hash = roomRoute(room); n.close(); };
    } catch { /* some platforms only allow notifications from a service worker */ }
  }
  function renderNotifyButton() {
    const b = $('notify-btn');
    b.hidden = !('Notification' in window) || Notification.permission !== 'default';
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
  function shortTime(ts) {
    const d = new Date(ts);
    if (dayKey(ts) === dayKey(Date.now())) return d.toLocaleTimeString(undefined, { hour: 'numeric', minute: '2-digit' });
    return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
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
  function button(cls, text, action, data = {}) {
    const b = el('button', cls, text); b.type = 'button'; b.dataset.action = action;
    Object.assign(b.dataset, data);
    return b;
  }
  // Message text with `@name` mentions highlighted: text nodes and spans only, never HTML.
  function fillText(node, text) {
    const parts = [];
    let at = 0;
    const me = S.user.toLowerCase();
    for (const m of text.matchAll(MENTION_TOKEN)) {
      const name = m[0].slice(1).replace(/\.+$/, '');
      if (m.index > at) parts.push(document.createTextNode(text.slice(at, m.index)));
      const span = el('span', name.toLowerCase() === me ? 'mention is-me' : 'mention', '@' + name);
      parts.push(span);
      at = m.index + 1 + name.length;
    }
    if (at < text.length) parts.push(document.createTextNode(text.slice(at)));
    node.replaceChildren(...parts);
  }

  function msgEl(room, key) {
    let li = room.els.get(key);
    if (li) return li;
    li = el('li', 'msg');
    li.dataset.testid = 'message';
    const av = el('span', 'avatar'); av.setAttribute('aria-hidden', 'true');
    const body = el('div', 'body');
    const meta = el('div', 'meta');
    const edited = el('span', 'edited', '(edited)'); edited.dataset.testid = 'edited'; edited.hidden = true;
    meta.append(el('span', 'author'), el('time', 'time'));
    const line = el('div', 'line');
    line.append(el('span', 'text'), edited);
    body.append(meta, line, el('div', 'state'));
    li.append(av, body, el('div', 'actions'));
    room.els.set(key, li);
    return li;
  }
  function fillMsg(li, m, opts) {
    const [av, body, actions] = li.children;
    const [meta, line, state] = body.children;
    const [author, time] = meta.children;
    const [text, edited] = line.children;
    if (li.dataset.user !== m.user) { avatar(av, m.user); author.textContent = m.user; li.dataset.user = m.user; }
    const shown = opts.editText ?? m.text;
    if (li.shownText !== shown || li.shownFor !== S.user) { fillText(text, shown); li.shownText = shown; li.shownFor = S.user; }
    const d = new Date(m.ts);
    time.dateTime = d.toISOString();
    time.title = d.toLocaleString();
    time.textContent = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
    edited.hidden = !m.edited;
    if (m.edited) edited.title = `edited ${new Date(m.edited).toLocaleString()}`;
    li.classList.toggle('mine', opts.mine);
    li.classList.toggle('cont', opts.cont);
    li.classList.toggle('mentions-me', !opts.mine && mentionsMe(m.text));
    li.classList.toggle('editing', !!opts.editing);
    li.classList.toggle('has-actions', opts.state === 'sent' && opts.id != null && !opts.busy);
    if (opts.id != null) { li.dataset.id = String(opts.id); li.removeAttribute('data-cid'); } else { li.dataset.cid = opts.cid; li.removeAttribute('data-id'); }
    if (opts.mine) li.dataset.state = opts.state; else li.removeAttribute('data-state');
    actions.replaceChildren();
    if (opts.state === 'sent' && opts.id != null && !opts.busy) {
      if (S.confirmDelete === opts.id) {
        actions.append(el('span', 'confirm', 'Delete this message?'),
          button('link-btn danger', 'Delete', 'delete-yes', { id: opts.id, testid: 'delete-confirm' }),
          button('link-btn', 'Cancel', 'delete-no', { id: opts.id }));
      } else {
        actions.append(button('link-btn', 'Edit', 'edit', { id: opts.id, testid: 'edit-btn' }),
          button('link-btn', 'Delete', 'delete', { id: opts.id, testid: 'delete-btn' }));
      }
    }
    state.replaceChildren();
    if (opts.state === 'pending') {
      state.textContent = opts.queued ? 'waiting for connection…' : 'sending…';
    } else if (opts.state === 'failed') {
      state.append(el('span', 'fail', `Not sent: ${opts.failed}`));
      state.append(button('link-btn', 'Retry', 'retry', { cid: opts.cid }), button('link-btn', 'Discard', 'discard', { cid: opts.cid }));
    } else if (opts.busy) {
      state.textContent = opts.busy;
    } else if (opts.state === 'sent') {
      const ok = el('span', 'ok', '✓'); ok.title = 'sent'; ok.setAttribute('aria-label', 'sent');
      state.append(ok);
    }
  }

  function renderMessages() {
    const list = $('message-list');
    const room = S.rooms.get(S.current);
    $('empty-state').hidden = !!room;
    if (!room) { list.replaceChildren(); renderHistoryStatus(); renderNewMarker(); renderRooms(); return; }
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
      const editText = mine ? pendingEdit(room, m.id) : null;
      const deleting = mine && pendingDelete(room, m.id);
      push(m, m.id, {
        id: m.id, mine, state: mine ? 'sent' : null, editText,
        busy: deleting ? 'deleting…' : editText != null ? 'saving…' : null,
        editing: S.editing && S.editingRoom === room.name && S.editing.id === m.id,
      });
    }
    for (const e of S.outbox) {
      if (e.room !== room.name || e.kind !== 'send') continue;
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
    markRead();
    renderRooms();
  }

  // The newest message is on screen and the tab is visible: tell the server (and so this user's
  // other devices) that the room is read up to it.
  function markRead() {
    const room = S.rooms.get(S.current);
    if (!room || !authed || !room.joinedConn || room.syncing || document.hidden || !atBottom()) return;
    const newest = room.msgs.length ? room.msgs[room.msgs.length - 1].id : 0;
    if (newest <= room.read) {
      if (room.unread && room.read >= room.counted) { room.unread = 0; room.mentions = 0; }
      return;
    }
    room.read = newest;
    recount(room);
    sendFrame({ type: 'read', room: room.name, id: newest });
  }

  function renderHistoryStatus() {
    const room = S.rooms.get(S.current);
    const p = $('history-status');
    if (!room) { p.textContent = ''; return; }
    const away = document.body.dataset.conn === 'offline' || document.body.dataset.conn === 'reconnecting';
    if (away && !room.msgs.length) p.textContent = 'You are offline. Messages load when the connection is back.';
    else if (room.loadingOlder) p.textContent = 'Loading older messages…';
    else if (!room.moreOlder && !room.syncing) {
      p.textContent = room.kind === 'dm' ? `This is the beginning of your conversation with ${roomLabel(room)}.` : `This is the beginning of #${room.name}.`;
    } else p.textContent = '';
  }
  function renderNewMarker() {
    const b = $('new-messages');
    b.hidden = stick || newCount === 0;
    $('new-count').textContent = String(newCount);
  }
  function loadOlder() {
    const room = S.rooms.get(S.current);
    if (!room || !authed || room.syncing || room.loadingOlder || !room.moreOlder) return;
    if (!room.msgs.length) { if (room.joinedConn && !room.historyQ.length) requestHistory(room, 'newest'); return; }
    requestHistory(room, 'before');
  }
  // If the messages do not fill the view, fetch older ones so there is something to scroll.
  function maybeFill() {
    const sc = scroller();
    if (sc.scrollHeight <= sc.clientHeight + 8) loadOlder();
  }

  // The conversation list, most recent activity first.
  function sortedRooms() {
    return [...S.rooms.values()].sort((a, b) => (b.activity - a.activity) || roomLabel(a).localeCompare(roomLabel(b)));
  }
  function renderRooms() {
    const ul = $('room-list');
    const items = [];
    for (const r of sortedRooms()) {
      const li = el('li', 'room-item'); li.dataset.testid = 'room-item'; li.dataset.room = r.name; li.dataset.kind = r.kind;
      const b = button('room-btn', null, 'select', { room: r.name });
      const label = roomLabel(r);
      let icon;
      if (r.kind === 'dm') { icon = el('span', 'avatar tiny'); avatar(icon, label); } else icon = el('span', 'hash', '#');
      icon.setAttribute('aria-hidden', 'true');
      // Two lines: name and time; the newest message (or who is typing) and the badges.
      const main = el('span', 'room-main');
      const line = el('span', 'room-line');
      const name = el('span', 'room-name', label); name.dataset.testid = 'room-name';
      line.append(name);
      if (r.last) line.append(el('span', 'room-time', shortTime(r.last.ts)));
      const sub = el('span', 'room-sub');
      const typers = [...r.typing.keys()];
      if (typers.length && r.name !== S.current) sub.append(el('span', 'room-preview typing', `${typers[0]} is typing…`));
      else if (r.last) {
        const who = r.last.user.toLowerCase() === S.user.toLowerCase() ? 'You' : r.kind === 'dm' ? '' : r.last.user;
        sub.append(el('span', 'room-preview', (who ? `${who}: ` : '') + clip(r.last.text.replace(/\s+/g, ' '), 80)));
      } else sub.append(el('span', 'room-preview'));
      const unread = r.name === S.current && !document.hidden ? 0 : r.unread;
      if (r.mentions && unread) {
        const at = el('span', 'badge mention-badge', '@'); at.dataset.testid = 'mention-badge';
        at.setAttribute('aria-label', `${r.mentions} mentioning you`); sub.append(at);
      }
      if (unread) {
        const u = el('span', 'badge', unread > 99 ? '99+' : String(unread)); u.dataset.testid = 'unread-badge';
        u.setAttribute('aria-label', `${unread} unread`); sub.append(u);
        li.classList.add('unread');
      }
      main.append(line, sub);
      b.append(icon, main);
      if (r.mentions && unread) li.classList.add('mentioned');
      if (r.name === S.current) { li.classList.add('active'); b.setAttribute('aria-current', 'page'); }
      const x = button('leave-btn', '×', 'leave', { room: r.name, testid: 'leave-btn' });
      x.title = r.kind === 'dm' ? `Close the conversation with ${label}` : `Leave #${r.name}`; x.setAttribute('aria-label', x.title);
      li.append(b, x);
      items.push(li);
    }
    ul.replaceChildren(...items);
    renderUnread();
  }

  // Unread messages outside the room on screen: a badge on the ☰ button (the room list is a
  // drawer on a phone) and, with the current room's while the tab is hidden, in the page title.
  function renderUnread() {
    let total = 0, others = 0, mentioned = false;
    for (const r of S.rooms.values()) {
      const here = r.name === S.current && !document.hidden;
      if (!here) total += r.unread;
      if (r.name !== S.current) { others += r.unread; if (r.mentions && r.unread) mentioned = true; }
    }
    const fmt = (n) => (n > 99 ? '99+' : String(n));
    const b = $('rooms-unread');
    b.hidden = !others;
    b.textContent = others ? fmt(others) : '';
    b.classList.toggle('has-mention', mentioned);
    $('rooms-toggle').title = others ? `Conversations: ${others} unread elsewhere` : 'Conversations';
    $('rooms-toggle').setAttribute('aria-label', $('rooms-toggle').title);
    const room = S.rooms.get(S.current);
    const base = !room ? 'chatd' : room.kind === 'dm' ? `${roomLabel(room)} · chatd` : `#${room.name} · chatd`;
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
      else if (!(room.kind === 'dm' && room.peer === u.toLowerCase())) {
        const dm = button('link-btn dm-btn', 'Message', 'dm', { user: u, testid: 'dm-btn' });
        dm.title = `Send ${u} a direct message`; dm.setAttribute('aria-label', dm.title);
        li.append(dm);
      }
      return li;
    });
    $('member-list').replaceChildren(...items);
    $('members-count').textContent = room ? String(users.length) : '';
    $('members-count-small').textContent = room ? String(users.length) : '';
  }

  function renderChat() {
    const room = S.rooms.get(S.current);
    const title = $('room-title');
    title.textContent = !room ? 'No room' : room.kind === 'dm' ? roomLabel(room) : `# ${room.name}`;
    title.dataset.kind = room ? room.kind : '';
    $('me-name').textContent = S.user;
    avatar($('me-avatar'), S.user || '?');
    const disabled = !room;
    $('composer-input').disabled = disabled; $('send-btn').disabled = disabled;
    $('composer-input').placeholder = !room ? 'Join a room to chat'
      : room.kind === 'dm' ? `Message ${clip(roomLabel(room), 24)}` : `Message #${clip(room.name, 24)}`;
    renderNotifyButton();
    renderMembers(); renderMessages(); renderTyping();
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
  function addRoom(name) {
    const r = newRoom(name);
    S.rooms.set(name, r);
    return r;
  }
  function initRooms() {
    const saved = store.json(LS.rooms, []);
    const names = Array.isArray(saved) ? saved.filter((n) => validRoom(n) && (!isDm(n) || dmPeer(n))) : [];
    if (!names.length) names.push('general');
    for (const n of names) if (!S.rooms.has(n)) addRoom(n);
    const outbox = store.json(LS.outbox, []);
    if (Array.isArray(outbox) && !S.outbox.length) {
      for (const e of outbox) if (e && typeof e.cid === 'string' && S.rooms.has(e.room)) S.outbox.push({ ...e, kind: e.kind || 'send', sent: false, failed: null });
    }
    if (!S.current) S.current = S.rooms.keys().next().value;
  }
  function saveRooms() { store.set(LS.rooms, JSON.stringify([...S.rooms.keys()])); }

  function joinRoom(name) {
    let room = S.rooms.get(name);
    if (!room) {
      room = addRoom(name);
      room.local = true;
      room.activity = Date.now();
      saveRooms();
      // Before the list arrives, onRooms joins everything; after, join now.
      if (authed && S.listLoaded) sendJoin(room);
    }
    return room;
  }
  function selectRoom(name) {
    const room = joinRoom(name);
    if (S.current !== name) { stopEditing(); S.confirmDelete = null; closeMentionMenu(); }
    S.current = name;
    stick = true; newCount = 0;
    renderChat();
    closePanels();
    maybeFill();
  }
  function openDm(user) {
    if (!USER_RE.test(user)) { showJoinError('User names are 1 to 32 letters, digits, _ . or -.'); return; }
    if (user.toLowerCase() === S.user.toLowerCase()) { showJoinError('That is you. Pick someone else to message.'); return; }
    if (!spelled.has(user.toLowerCase())) learnName(user);
    const name = dmRoom(S.user, user);
    S.chosen = true;
    history.pushState(null, '', '#@' + user.toLowerCase());
    selectRoom(name);
    $('composer-input').focus();
  }
  function leaveRoom(name) {
    const room = S.rooms.get(name);
    if (!room) return;
    if (room.joinedConn) sendFrame({ type: 'leave', room: name });
    S.rooms.delete(name);
    S.outbox = S.outbox.filter((e) => e.room !== name); saveOutbox();
    saveRooms();
    if (S.current === name) {
      const next = sortedRooms()[0];
      if (next) { location.hash = roomRoute(next); selectRoom(next.name); } else { S.current = null; history.replaceState(null, '', location.pathname + location.search); renderChat(); }
    } else {
      renderRooms();
    }
  }
  // `#general` is a room, `#@bob` the conversation with bob (`#dm:alice+bob` works too).
  function roomFromHash() {
    let name = '';
    try { name = decodeURIComponent(location.hash.slice(1)); } catch { /* malformed */ }
    if (!name) return { name: '' };
    if (name.startsWith('@')) {
      const u = name.slice(1);
      if (!USER_RE.test(u) || !S.user) return { bad: name };
      if (u.toLowerCase() === S.user.toLowerCase()) return { bad: name };
      return { name: dmRoom(S.user, u) };
    }
    if (!validRoom(name) || (isDm(name) && !dmPeer(name))) return { bad: name };
    return { name };
  }
  function routeFromHash(initial) {
    let { name, bad } = roomFromHash();
    if (bad) {
      showJoinError(`"${bad}" is not a valid room name (a-z, 0-9, _ and -, up to 64).`);
      name = '';
    }
    if (name) S.chosen = true;
    if (!name) {
      if (!S.current) { if (initial) renderChat(); return; }
      name = S.current;
      history.replaceState(null, '', '#' + roomRoute(S.rooms.get(name)));
    }
    if (name !== S.current || initial) selectRoom(name);
  }
  window.addEventListener('hashchange', () => { if (!$('chat-view').hidden) routeFromHash(false); });

  // ---- @name autocomplete ----
  let menu = { open: false, items: [], index: 0, start: 0 };
  function mentionCandidates(room) {
    const names = new Map();
    const add = (u) => { if (typeof u === 'string' && USER_RE.test(u) && u.toLowerCase() !== S.user.toLowerCase()) names.set(u.toLowerCase(), u); };
    for (const u of room.members) add(u);
    if (room.kind === 'dm') add(userName(room.peer));
    for (let i = room.msgs.length - 1; i >= 0 && names.size < 200; i--) add(room.msgs[i].user);
    return [...names.values()];
  }
  function updateMentionMenu() {
    const input = $('composer-input');
    const room = S.rooms.get(S.current);
    const upto = input.value.slice(0, input.selectionStart);
    const m = /(?:^|[^\p{L}\p{N}_.\-])@([A-Za-z0-9_.\-]{0,32})$/u.exec(upto);
    if (!room || !m || input.selectionStart !== input.selectionEnd) { closeMentionMenu(); return; }
    const q = m[1].toLowerCase();
    const items = mentionCandidates(room).filter((u) => u.toLowerCase().startsWith(q))
      .sort((a, b) => a.localeCompare(b, undefined, { sensitivity: 'base' })).slice(0, 6);
    if (!items.length) { closeMentionMenu(); return; }
    const keep = menu.open && items[menu.index] === menu.items[menu.index];
    menu = { open: true, items, index: keep ? menu.index : 0, start: upto.length - m[1].length - 1 };
    renderMentionMenu();
  }
  function renderMentionMenu() {
    const ul = $('mention-menu');
    ul.hidden = !menu.open;
    $('composer-input').setAttribute('aria-expanded', menu.open ? 'true' : 'false');
    if (!menu.open) { ul.replaceChildren(); $('composer-input').removeAttribute('aria-activedescendant'); return; }
    ul.replaceChildren(...menu.items.map((u, i) => {
      const li = el('li', 'mention-option'); li.id = `mention-opt-${i}`; li.setAttribute('role', 'option');
      li.dataset.user = u; li.dataset.testid = 'mention-option';
      li.setAttribute('aria-selected', i === menu.index ? 'true' : 'false');
      const av = el('span', 'avatar tiny'); avatar(av, u); av.setAttribute('aria-hidden', 'true');
      li.append(av, el('span', 'member-name', u));
      return li;
    }));
    $('composer-input').setAttribute('aria-activedescendant', `mention-opt-${menu.index}`);
  }
  function closeMentionMenu() { if (menu.open) { menu = { open: false, items: [], index: 0, start: 0 }; renderMentionMenu(); } }
  function pickMention(u) {
    const input = $('composer-input');
    const before = input.value.slice(0, menu.start), after = input.value.slice(input.selectionStart);
    const insert = `@${u} `;
    input.value = before + insert + after.replace(/^ /, '');
    const at = before.length + insert.length;
    input.setSelectionRange(at, at);
    closeMentionMenu();
    autosize();
    input.focus();
  }

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
    S.rooms.clear(); S.current = null; S.outbox = []; S.listLoaded = false; S.chosen = false; S.pendingJoins = [];
    S.editing = null; S.editingRoom = null; S.draft = null; S.confirmDelete = null;
    $('edit-bar').hidden = true; $('send-btn').textContent = 'Send';
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
      if (name.startsWith('@')) {
        showJoinError('');
        const u = name.slice(1);
        if (USER_RE.test(u) && u.toLowerCase() !== S.user.toLowerCase()) $('join-room').value = '';
        openDm(u);
        return;
      }
      if (!ROOM_RE.test(name)) { showJoinError('Room names are 1 to 64 characters: a-z, 0-9, _ and -. Type @name to message someone.'); return; }
      showJoinError('');
      $('join-room').value = '';
      S.chosen = true;
      location.hash = name;   // hashchange selects (and joins) it
      if (S.current !== name) selectRoom(name);
    });
    $('join-room').addEventListener('input', () => {
      const v = $('join-room').value;
      const ok = !v || ROOM_RE.test(v) || /^@[A-Za-z0-9_.-]{0,32}$/.test(v);
      showJoinError(ok ? '' : 'Use a-z, 0-9, _ and - only (lower case), or @name for a person.');
    });

    $('room-list').addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-action]');
      if (!b) return;
      const room = S.rooms.get(b.dataset.room);
      if (!room) return;
      if (b.dataset.action === 'select') {
        S.chosen = true;
        location.hash = roomRoute(room);
        if (S.current !== room.name) selectRoom(room.name); else closePanels();
      }
      if (b.dataset.action === 'leave') leaveRoom(room.name);
    });
    $('member-list').addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-action="dm"]');
      if (b) openDm(b.dataset.user);
    });

    $('message-list').addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-action]');
      if (!b) {
        // A tap on one's own message shows its actions (no hover on touch screens).
        const li = ev.target.closest('li.has-actions');
        for (const x of $('message-list').querySelectorAll('li.show-actions')) if (x !== li) x.classList.remove('show-actions');
        if (li) li.classList.toggle('show-actions');
        return;
      }
      const room = S.rooms.get(S.current);
      const id = Number(b.dataset.id);
      switch (b.dataset.action) {
        case 'edit': if (room) startEditing(room, id); return;
        case 'delete': S.confirmDelete = id; renderMessages(); return;
        case 'delete-no': S.confirmDelete = null; renderMessages(); return;
        case 'delete-yes':
          S.confirmDelete = null;
          if (room) queue({ kind: 'delete', room: room.name, id });
          renderMessages();
          return;
        default: break;
      }
      const e = S.outbox.find((x) => x.cid === b.dataset.cid);
      if (!e) return;
      if (b.dataset.action === 'retry') { e.failed = null; e.sent = false; e.rejoined = false; saveOutbox(); pump(); }
      if (b.dataset.action === 'discard') { removeOutbox(e.cid); }
      renderMessages();
    });

    $('composer').addEventListener('submit', (ev) => { ev.preventDefault(); submitComposer(); });
    $('composer-input').addEventListener('keydown', (ev) => {
      if (menu.open) {
        if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
          ev.preventDefault();
          menu.index = (menu.index + (ev.key === 'ArrowDown' ? 1 : menu.items.length - 1)) % menu.items.length;
          renderMentionMenu();
          return;
        }
        if ((ev.key === 'Enter' || ev.key === 'Tab') && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); pickMention(menu.items[menu.index]); return; }
        if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); closeMentionMenu(); return; }
      }
      if (ev.key === 'Escape' && S.editing) { ev.preventDefault(); ev.stopPropagation(); stopEditing(); return; }
      if (ev.key === 'ArrowUp' && !$('composer-input').value && !S.editing) {
        // Edit the last own message, as in most chat apps.
        const room = S.rooms.get(S.current);
        const me = S.user.toLowerCase();
        const m = room && [...room.msgs].reverse().find((x) => x.user.toLowerCase() === me);
        if (m) { ev.preventDefault(); startEditing(room, m.id); }
        return;
      }
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submitComposer(); }
    });
    $('composer-input').addEventListener('input', () => { autosize(); typed(); updateMentionMenu(); });
    $('composer-input').addEventListener('click', updateMentionMenu);
    $('composer-input').addEventListener('blur', () => setTimeout(closeMentionMenu, 150));
    $('mention-menu').addEventListener('mousedown', (ev) => {
      const li = ev.target.closest('li[data-user]');
      if (li) { ev.preventDefault(); pickMention(li.dataset.user); }
    });
    $('edit-cancel').addEventListener('click', stopEditing);

    scroller().addEventListener('scroll', () => {
      stick = atBottom();
      if (stick && newCount) { newCount = 0; renderNewMarker(); }
      if (stick) markRead();
      if (scroller().scrollTop < 120) loadOlder();
    }, { passive: true });
    $('new-messages').addEventListener('click', () => {
      stick = true; newCount = 0;
      const sc = scroller(); sc.scrollTop = sc.scrollHeight;
      renderNewMarker();
      markRead();
      $('composer-input').focus();
    });

    $('conn-status').addEventListener('click', () => { attempt = 0; reconnectNow(); });
    $('signout').addEventListener('click', () => signedOut(''));
    $('notify-btn').addEventListener('click', () => {
      Notification.requestPermission().then(renderNotifyButton, renderNotifyButton);
    });
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
    document.addEventListener('visibilitychange', () => { markRead(); renderRooms(); });
    window.addEventListener('focus', markRead);
    window.addEventListener('resize', () => { if (stick) { const sc = scroller(); sc.scrollTop = sc.scrollHeight; } });
  }

  function start() {
    wire();
    // Installable, and opens without a network: sw.js keeps a copy of these files (not messages).
    if (window.isSecureContext && 'serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js').catch(() => {});
    if (S.token) {
      learnName(S.user);
      initRooms();
      const { name } = roomFromHash();
      if (name) { joinRoom(name); S.current = name; S.chosen = true; }
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
