// Browser tests for the chatd web client. Run through ./run.sh (it builds chatd and installs deps).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARTIFACTS, Bot, newDataDir, startServer, stopServer, until } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SERVER_ARGS = ['--presence-grace', '500ms', '--rate', '1000', '--burst', '1000', '--ping-interval', '1s', '--idle-timeout', '5s'];
const PW = 'correct-horse-battery';

let browser, srv, dataDir;
const contexts = [];

async function newPage(viewport = { width: 1280, height: 800 }) {
  const ctx = await browser.newContext({ viewport, reducedMotion: 'reduce' }); // no drawer animations
  contexts.push(ctx);
  const page = await ctx.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('dialog', (d) => { page.errors.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  return page;
}
const sel = {
  status: '[data-testid="conn-status"]',
  msgs: '[data-testid="message-list"] li[data-testid="message"]',
  members: '[data-testid="member-list"] li',
  input: '[data-testid="composer-input"]',
};
const status = (page) => page.locator(sel.status).getAttribute('data-state');
const waitConnected = (page, timeout = 15000) =>
  page.waitForSelector(`${sel.status}[data-state="connected"]`, { timeout });

async function signUp(page, user, { url = srv.url, register = true, hash = '' } = {}) {
  await page.goto(url + hash);
  await page.locator('#auth-user').fill(user);
  await page.locator('#auth-password').fill(PW);
  await page.locator(register ? '[data-testid="register-btn"]' : '[data-testid="login-btn"]').click();
  await waitConnected(page);
}
async function say(page, text) {
  await page.locator(sel.input).fill(text);
  await page.locator(sel.input).press('Enter');
}
/** Texts of the confirmed messages (with ids) currently in the list, in DOM order. */
const shownMessages = (page) => page.$$eval(sel.msgs, (lis) => lis.map((li) => ({
  id: li.dataset.id ? Number(li.dataset.id) : null, cid: li.dataset.cid || null, state: li.dataset.state || null,
  user: li.dataset.user, text: li.querySelector('.text').textContent,
})));
async function waitMessage(page, text, { state, timeout = 10000 } = {}) {
  return until(async () => {
    const all = await shownMessages(page);
    return all.find((m) => m.text === text && m.id !== null && (!state || m.state === state));
  }, { timeout, what: `message ${JSON.stringify(text)}${state ? ` in state ${state}` : ''}` });
}
const memberNames = (page) => page.$$eval(sel.members, (lis) => lis.map((li) => li.dataset.user));
async function waitMembers(page, pred, what) {
  return until(async () => { const m = await memberNames(page); return pred(m) && m; }, { timeout: 10000, what });
}
async function joinRoom(page, room) {
  await page.locator('[data-testid="join-input"]').fill(room);
  await page.locator('[data-testid="join-btn"]').click();
  await page.waitForSelector(`[data-testid="room-title"]:text-is("# ${room}")`);
}
async function shot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.mouse.move(0, 0);   // no stray hover highlight in the picture
  await page.screenshot({ path: path.join(ARTIFACTS, name) });
}

before(async () => {
  dataDir = newDataDir('main');
  srv = await startServer({ dataDir, args: SERVER_ARGS });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
});
after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (srv) await stopServer(srv, 'SIGTERM').catch(() => {});
});

describe('chatd web client', () => {
  let alice, bob;

  it('serves the client and registers two users who chat both ways', async () => {
    alice = await newPage();
    bob = await newPage();
    await signUp(alice, 'alice');
    await signUp(bob, 'bob');
    assert.equal(await alice.locator('[data-testid="room-title"]').textContent(), '# general');
    await waitMembers(alice, (m) => m.includes('alice') && m.includes('bob'), 'alice sees bob online');

    await say(alice, 'hello bob');
    const sent = await waitMessage(alice, 'hello bob', { state: 'sent' });
    const got = await waitMessage(bob, 'hello bob');
    assert.equal(got.id, sent.id);
    assert.equal(got.user, 'alice');

    // Shift+Enter makes a newline, Enter sends.
    const input = bob.locator(sel.input);
    await input.fill('');
    await input.type('hi alice');
    await input.press('Shift+Enter');
    await input.type('second line');
    await input.press('Enter');
    const reply = await waitMessage(alice, 'hi alice\nsecond line');
    assert.equal(reply.user, 'bob');
    assert.equal(await input.inputValue(), '');
    // Each message exactly once on both sides.
    for (const p of [alice, bob]) {
      const ids = (await shownMessages(p)).map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length, 'no duplicate message ids');
    }
    assert.ok(await alice.locator('[data-testid="day-separator"]').count() >= 1, 'day separator shown');
  });

  it('renders an XSS payload as text', async () => {
    const payload = '<img src=x onerror=alert(1)><script>window.__pwned=1</script>';
    await say(alice, payload);
    await waitMessage(bob, payload);
    await waitMessage(alice, payload, { state: 'sent' });
    for (const p of [alice, bob]) {
      assert.equal(await p.locator('[data-testid="message-list"] img, [data-testid="message-list"] script').count(), 0);
      assert.equal(await p.evaluate(() => window.__pwned), undefined);
      const text = await p.locator(sel.msgs).filter({ hasText: '<img src=x' }).locator('.text').textContent();
      assert.equal(text, payload);
      assert.deepEqual(p.errors, []);
    }
  });

  it('updates presence when a user leaves a room and when their page closes', async () => {
    await joinRoom(alice, 'lobby');
    const bob2 = await newPage();
    await bob2.goto(srv.url + '#lobby');   // deep link; bob's token from localStorage? (new context: sign in)
    await bob2.locator('#auth-user').fill('bob');
    await bob2.locator('#auth-password').fill(PW);
    await bob2.locator('[data-testid="login-btn"]').click();
    await waitConnected(bob2);
    await bob2.waitForSelector('[data-testid="room-title"]:text-is("# lobby")');
    await waitMembers(alice, (m) => m.includes('bob'), 'bob online in lobby');
    await waitMembers(bob2, (m) => m.includes('alice') && m.includes('bob'), 'bob sees alice in lobby');

    // Leaving with the button announces offline at once.
    await bob2.locator('[data-testid="room-item"][data-room="lobby"] [data-testid="leave-btn"]').click();
    await waitMembers(alice, (m) => !m.includes('bob'), 'bob gone after leave');

    // Join again through the text field, then close the page: offline after the grace period.
    await joinRoom(bob2, 'lobby');
    await waitMembers(alice, (m) => m.includes('bob'), 'bob back in lobby');
    await bob2.close();
    await waitMembers(alice, (m) => !m.includes('bob') && m.includes('alice'), 'bob offline after page close');
  });

  it('rejects bad room names in the join field', async () => {
    await alice.locator('[data-testid="join-input"]').fill('Bad Room');
    await alice.locator('[data-testid="join-btn"]').click();
    assert.match(await alice.locator('[data-testid="join-error"]').textContent(), /a-z/);
    assert.equal(await alice.locator('[data-testid="room-title"]').textContent(), '# lobby');
    await alice.locator('[data-testid="join-input"]').fill('');
  });

  it('loads older history on scroll and shows a new-messages marker instead of jumping', async () => {
    const bot = await Bot.connect(srv.wsUrl, { user: 'robot', password: PW, register: true });
    await bot.join('history');
    for (let i = 1; i <= 130; i++) await bot.say('history', `line ${i}`);
    await joinRoom(alice, 'history');
    await waitMessage(alice, 'line 130');
    const scroller = alice.locator('[data-testid="scroller"]');
    // Scroll to the top until everything is loaded.
    await until(async () => {
      await scroller.evaluate((s) => { s.scrollTop = 0; s.dispatchEvent(new Event('scroll')); });
      return (await alice.locator('[data-testid="history-status"]').textContent()).includes('beginning');
    }, { timeout: 15000, what: 'all history loaded' });
    const all = await shownMessages(alice);
    const texts = all.map((m) => m.text);
    assert.equal(texts.length, 130);
    assert.equal(texts[0], 'line 1');
    assert.equal(texts[129], 'line 130');
    const ids = all.map((m) => m.id);
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'ascending ids');

    // Scrolled up: a new message shows the marker and does not move the view.
    await scroller.evaluate((s) => { s.scrollTop = 300; s.dispatchEvent(new Event('scroll')); });
    const before = await scroller.evaluate((s) => s.scrollTop);
    await bot.say('history', 'while you were up there');
    await waitMessage(alice, 'while you were up there');
    await alice.waitForSelector('[data-testid="new-messages"]:visible');
    assert.ok(Math.abs((await scroller.evaluate((s) => s.scrollTop)) - before) < 5, 'view not yanked');
    await alice.locator('[data-testid="new-messages"]').click();
    await until(() => scroller.evaluate((s) => s.scrollHeight - s.scrollTop - s.clientHeight < 50), { what: 'scrolled to bottom' });
    assert.equal(await alice.locator('[data-testid="new-messages"]').isVisible(), false);
    await bot.close();
  });

  it('survives kill -9 and restart: reconnects, catches up, delivers queued messages exactly once', async () => {
    const page = await newPage();
    await signUp(page, 'carol');          // in #general
    await say(page, 'before the crash');
    await waitMessage(page, 'before the crash', { state: 'sent' });
    const port = srv.port;

    await stopServer(srv, 'SIGKILL');
    await page.waitForSelector(`${sel.status}[data-state="reconnecting"]`, { timeout: 10000 });
    assert.match(await page.locator(sel.status).textContent(), /reconnecting/);

    // Keep the page away (as if its network were down) while others talk, so what they say is
    // only reachable through the replay on rejoin.
    await page.context().setOffline(true);
    await say(page, 'typed while the server was down');
    await page.waitForSelector(`${sel.msgs}[data-state="pending"]`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'offline-pending-desktop.png') }).catch(() => {});

    srv = await startServer({ dataDir, port, args: SERVER_ARGS });
    const bot = await Bot.connect(srv.wsUrl, { user: 'robot', password: PW });
    await bot.join('general');
    for (let i = 1; i <= 3; i++) await bot.say('general', `missed ${i}`);
    assert.notEqual(await status(page), 'connected', 'the page was still away while the bot talked');
    assert.equal((await shownMessages(page)).filter((m) => m.text.startsWith('missed')).length, 0);

    await page.context().setOffline(false);
    await waitConnected(page, 40000);
    for (let i = 1; i <= 3; i++) await waitMessage(page, `missed ${i}`, { timeout: 15000 });
    await waitMessage(page, 'typed while the server was down', { state: 'sent', timeout: 15000 });

    // Now a graceful restart (SIGTERM → close 1001) with the page online: it reconnects on its own.
    await stopServer(srv, 'SIGTERM');
    await page.waitForSelector(`${sel.status}[data-state="reconnecting"], ${sel.status}[data-state="connecting"]`, { timeout: 10000 });
    srv = await startServer({ dataDir, port, args: SERVER_ARGS });
    await waitConnected(page, 40000);
    const bot2 = await Bot.connect(srv.wsUrl, { user: 'robot', password: PW });
    await bot2.join('general');
    await bot2.say('general', 'after the graceful restart');
    await waitMessage(page, 'after the graceful restart');

    const shown = await shownMessages(page);
    const count = (t) => shown.filter((m) => m.text === t).length;
    for (const t of ['before the crash', 'missed 1', 'missed 2', 'missed 3', 'typed while the server was down', 'after the graceful restart']) {
      assert.equal(count(t), 1, `${t} shown exactly once`);
    }
    assert.equal(shown.filter((m) => m.id === null).length, 0, 'nothing left pending');
    const ids = shown.map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length, 'no duplicate ids');
    // The server stored the queued message once.
    const stored = await bot2.allMessages('general');
    assert.equal(stored.filter((m) => m.text === 'typed while the server was down').length, 1);
    assert.deepEqual(page.errors, []);
    await bot.close();
    await bot2.close();
  });

  it('detects a silent (stopped) server with app-level pings and recovers', async () => {
    const page = await newPage();
    await page.goto(srv.url + '?ping_ms=300#general');
    await page.locator('#auth-user').fill('frank');
    await page.locator('#auth-password').fill(PW);
    await page.locator('[data-testid="register-btn"]').click();
    await waitConnected(page);
    process.kill(srv.proc.pid, 'SIGSTOP');
    try {
      // No pong or frame for 2 intervals: the page gives up on the socket and shows it.
      await page.waitForSelector(`${sel.status}[data-state="reconnecting"]`, { timeout: 10000 });
    } finally {
      process.kill(srv.proc.pid, 'SIGCONT');
    }
    await waitConnected(page, 40000);
    await say(page, 'alive again');
    await waitMessage(page, 'alive again', { state: 'sent' });
  });

  it('shows errors near the composer: too long locally, server errors in words', async () => {
    const page = await newPage();
    // Sit between page and server so a server error can be produced on demand.
    await page.routeWebSocket(/\/ws$/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => {
        const f = JSON.parse(m);
        if (f.type === 'send' && f.text === 'please fail') {
          ws.send(JSON.stringify({ type: 'error', code: 'not_joined', message: 'join first', ref: f.cid }));
          return;
        }
        server.send(m);
      });
      server.onMessage((m) => ws.send(m));
    });
    await signUp(page, 'gina');
    await page.locator(sel.input).fill('x'.repeat(4001));
    await page.locator(sel.input).press('Enter');
    assert.match(await page.locator('[data-testid="composer-error"]').textContent(), /too long/i);
    assert.equal(await page.locator(sel.msgs).filter({ hasText: 'xxxxxxxx' }).count(), 0);
    await say(page, 'please fail');
    // not_joined: the client rejoins and retries once; the interceptor fails it again.
    await page.waitForSelector(`${sel.msgs}[data-state="failed"]`);
    assert.match(await page.locator('[data-testid="composer-error"]').textContent(), /not in this room/i);
    await page.locator(`${sel.msgs}[data-state="failed"] button[data-action="discard"]`).click();
    assert.equal(await page.locator(`${sel.msgs}[data-state="failed"]`).count(), 0);
    await say(page, 'this one works');
    await waitMessage(page, 'this one works', { state: 'sent' });
  });

  it('handles server-side moderation: deleted message, kick (1008) without auto-reconnect, ban', async () => {
    const page = await newPage();
    let route = null;
    await page.routeWebSocket(/\/ws$/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => server.send(m));
      server.onMessage((m) => ws.send(m));
      route = { ws, server };
    });
    await signUp(page, 'ivan');
    await say(page, 'to be deleted');
    const m = await waitMessage(page, 'to be deleted', { state: 'sent' });
    // Extension frame: an admin deleted the message.
    route.ws.send(JSON.stringify({ type: 'deleted', room: 'general', id: m.id }));
    await until(async () => !(await shownMessages(page)).some((x) => x.id === m.id), { what: 'deleted message gone' });

    // Kick: close 1008 with no error before it. The page stops and says so.
    const first = route;
    first.ws.close({ code: 1008, reason: 'kicked' });
    first.server.close();
    await page.waitForSelector(`${sel.status}[data-state="offline"]`);
    assert.match(await page.locator('[data-testid="composer-error"]').textContent(), /Disconnected by the server/);
    // 'offline' (not 'reconnecting in N s'): no reconnect was scheduled.
    assert.equal((await page.locator(sel.status).textContent()).trim(), 'offline');
    assert.equal(route, first, 'no automatic reconnect after a kick');
    await page.locator(sel.status).click();           // the person reconnects
    await waitConnected(page);
    assert.notEqual(route, first);

    // Banned while connected: back to the sign-in form with the reason, token forgotten.
    route.ws.send(JSON.stringify({ type: 'error', code: 'banned', message: 'banned' }));
    await page.waitForSelector('[data-testid="auth-form"]:visible');
    assert.match(await page.locator('[data-testid="auth-error"]').textContent(), /banned/i);
    assert.equal(await page.evaluate(() => localStorage.getItem('chatd.token')), null);
  });

  it('catches up past the replay limit (synced.more) by paging history after', async () => {
    const small = await startServer({ dataDir: newDataDir('replay'), args: ['--replay-limit', '5', '--rate', '1000', '--burst', '1000'] });
    try {
      const page = await newPage();
      let blocked = false, current = null;
      await page.routeWebSocket(/\/ws$/, (ws) => {
        if (blocked) { ws.close({ code: 4000, reason: 'test: network down' }); return; }
        const server = ws.connectToServer();
        ws.onMessage((m) => server.send(m));
        server.onMessage((m) => ws.send(m));
        current = { ws, server };
      });
      await signUp(page, 'judy', { url: small.url });
      await say(page, 'seen before the drop');
      await waitMessage(page, 'seen before the drop', { state: 'sent' });
      // The network drops and stays down while 23 messages go by.
      blocked = true;
      current.ws.close({ code: 4000, reason: 'test: network down' });
      current.server.close();
      await page.waitForSelector(`${sel.status}[data-state="reconnecting"]`);
      const bot = await Bot.connect(small.wsUrl, { user: 'kate', password: PW, register: true });
      await bot.join('general');
      for (let i = 1; i <= 23; i++) await bot.say('general', `away ${i}`);
      blocked = false;
      await page.locator(sel.status).click();   // reconnect now instead of waiting out the backoff
      await waitConnected(page, 40000);
      await waitMessage(page, 'away 23', { timeout: 15000 });
      const shown = (await shownMessages(page)).map((m) => m.text);
      assert.deepEqual(shown, ['seen before the drop', ...Array.from({ length: 23 }, (_, i) => `away ${i + 1}`)]);
      await bot.close();
    } finally {
      await stopServer(small, 'SIGTERM');
    }
  });

  it('paces a burst of sends to the server rate limit: all delivered once, no errors', async () => {
    const slow = await startServer({ dataDir: newDataDir('slow'), args: ['--rate', '2', '--burst', '2'] });
    try {
      const page = await newPage();
      const errors = [];
      page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
        if (String(payload).includes('"error"')) errors.push(String(payload));
      }));
      await signUp(page, 'hank', { url: slow.url });
      for (let i = 1; i <= 6; i++) await say(page, `burst ${i}`);
      for (let i = 1; i <= 6; i++) await waitMessage(page, `burst ${i}`, { state: 'sent', timeout: 15000 });
      const shown = (await shownMessages(page)).map((m) => m.text);
      assert.deepEqual(shown, [1, 2, 3, 4, 5, 6].map((i) => `burst ${i}`), 'in order, once each');
      assert.equal(await page.locator('[data-testid="composer-error"]').textContent(), '');
      assert.deepEqual(errors, [], 'the client paced its sends: the server rate-limited none');
    } finally {
      await stopServer(slow, 'SIGTERM');
    }
  });

  it('resumes with the stored token after reload, and signs out', async () => {
    await alice.reload();
    await waitConnected(alice);
    assert.equal(await alice.locator('#auth-view').isVisible(), false);
    assert.equal(await alice.locator('[data-testid="room-title"]').textContent(), '# history');
    await alice.locator('[data-testid="signout"]').click();
    await alice.waitForSelector('[data-testid="auth-form"]:visible');
    assert.equal(await alice.evaluate(() => localStorage.getItem('chatd.token')), null);
    await alice.reload();
    await alice.waitForSelector('[data-testid="auth-form"]:visible');
    // A token the server does not know: back to the sign-in form with a reason.
    await alice.evaluate(() => localStorage.setItem('chatd.token', 'not-a-real-token'));
    await alice.reload();
    await alice.waitForSelector('[data-testid="auth-form"]:visible');
    await until(async () => (await alice.locator('[data-testid="auth-error"]').textContent()).length > 0, { what: 'auth error shown' });
    // Wrong password: error in the form.
    await alice.locator('#auth-user').fill('alice');
    await alice.locator('#auth-password').fill('wrong-password');
    await alice.locator('[data-testid="login-btn"]').click();
    await until(async () => /wrong/i.test(await alice.locator('[data-testid="auth-error"]').textContent()), { what: 'wrong password message' });
    // Taken name on register.
    await alice.locator('#auth-user').fill('BOB');
    await alice.locator('#auth-password').fill(PW);
    await alice.locator('[data-testid="register-btn"]').click();
    await until(async () => /taken/i.test(await alice.locator('[data-testid="auth-error"]').textContent()), { what: 'user exists message' });
    await shot(alice, 'signin-desktop.png');
  });

  it('looks right at desktop and phone width (screenshots)', async () => {
    const bot = await Bot.connect(srv.wsUrl, { user: 'dana', password: PW, register: true });
    await bot.join('design');
    const desk = await newPage({ width: 1280, height: 800 });
    await signUp(desk, 'erin', { hash: '#design' });
    await bot.say('design', 'Morning! Did the deploy go out?');
    await bot.say('design', 'I saw the dashboards flicker around 9.');
    await say(desk, 'Yes, shipped at 08:55. The flicker was the cache warming up.');
    await waitMessage(desk, 'Yes, shipped at 08:55. The flicker was the cache warming up.', { state: 'sent' });
    await bot.say('design', 'Great, thanks. Here is a long line to check wrapping: ' + 'lorem ipsum dolor sit amet '.repeat(8));
    await waitMessage(desk, 'Great, thanks. Here is a long line to check wrapping: ' + 'lorem ipsum dolor sit amet '.repeat(8));
    await desk.locator(sel.input).fill('Drafting a reply…');
    await shot(desk, 'chat-desktop.png');

    const phone = await newPage({ width: 390, height: 844 });
    await phone.goto(srv.url + '#design');
    await phone.locator('#auth-user').fill('erin');
    await phone.locator('#auth-password').fill(PW);
    await shot(phone, 'signin-phone.png');
    await phone.locator('[data-testid="login-btn"]').click();
    await waitConnected(phone);
    await waitMessage(phone, 'Yes, shipped at 08:55. The flicker was the cache warming up.');
    await shot(phone, 'chat-phone.png');
    await phone.locator('[data-testid="rooms-toggle"]').click();
    await phone.waitForSelector('#sidebar [data-testid="room-list"]:visible');
    await shot(phone, 'rooms-phone.png');
    await phone.keyboard.press('Escape');
    await phone.locator('[data-testid="members-toggle"]').click();
    await phone.waitForSelector('#members [data-testid="member-list"]:visible');
    await shot(phone, 'members-phone.png');
    assert.deepEqual(desk.errors, []);
    assert.deepEqual(phone.errors, []);
    await bot.close();
  });
});
