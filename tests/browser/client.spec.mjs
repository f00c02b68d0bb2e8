// Browser tests for the web client's phone layout, installability and offline start, and the
// conversation features of protocol 1.1. Run through ./run.sh.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Bot, newDataDir, startServer, stopServer, until } from './harness.mjs';
import {
  DESKTOP, PHONE, PW, artifact, conversations, fakeVisibilityAndNotifications, find, fullyVisible, item, joinRoom, launch,
  newPage, pageIn, say, sel, setHidden, shownMessages as shownMessagesOf, shot, signUp, waitConnected, waitConversations,
  waitMessage,
} from './pages.mjs';

const SERVER_ARGS = ['--presence-grace', '500ms', '--rate', '1000', '--burst', '1000', '--ping-interval', '1s', '--idle-timeout', '5s'];
const LONG_ROOM = 'a-room-name-of-the-longest-allowed-length-sixty-four-characters-';  // 64
let browser, srv;
const contexts = [];
const page = (viewport) => newPage(browser, viewport, contexts);

before(async () => {
  assert.equal(LONG_ROOM.length, 64);
  srv = await startServer({ dataDir: newDataDir('client'), args: SERVER_ARGS });
  browser = await launch();
});
after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (srv) await stopServer(srv, 'SIGTERM').catch(() => {});
});

/** Layout facts that make a page usable at its width. */
const layout = (p) => p.evaluate(() => {
  const status = document.querySelector('[data-testid="conn-status"]');
  const title = document.querySelector('[data-testid="room-title"]');
  return {
    scrollWidth: document.documentElement.scrollWidth,
    width: window.innerWidth,
    statusClipped: status.scrollWidth > status.clientWidth,
    titleTruncated: title.scrollWidth > title.clientWidth,
    titleEllipsis: getComputedStyle(title).textOverflow,
  };
});

describe('phone layout, installable, offline', () => {
  it('fits a phone and a tablet with a 64-character room name', async () => {
    const p = await page(PHONE);
    await signUp(p, srv.url, 'pia');
    await joinRoom(p, LONG_ROOM);
    await say(p, 'hello from a long room');
    await waitMessage(p, 'hello from a long room', { state: 'sent' });
    for (const viewport of [PHONE, { width: 768, height: 1024 }, { width: 1000, height: 800 }]) {
      await p.setViewportSize(viewport);
      const l = await layout(p);
      assert.ok(l.scrollWidth <= viewport.width, `no horizontal overflow at ${viewport.width}: ${l.scrollWidth}`);
      assert.equal(l.titleEllipsis, 'ellipsis');
      if (viewport.width < 1000) assert.ok(l.titleTruncated, `title truncated at ${viewport.width}`);
      assert.equal(l.statusClipped, false, `status pill not clipped at ${viewport.width}`);
      assert.ok(await fullyVisible(p, '[data-testid="send-btn"]'), `Send button visible at ${viewport.width}`);
      assert.ok(await fullyVisible(p, sel.status), `status pill visible at ${viewport.width}`);
    }
    // In the drawer too: the long name is cut, the drawer is not widened.
    await p.setViewportSize(PHONE);
    await p.locator('[data-testid="rooms-toggle"]').click();
    const item = `[data-testid="room-item"][data-room="${LONG_ROOM}"]`;
    await p.waitForSelector(`${item}:visible`);
    assert.ok(await fullyVisible(p, `${item} [data-testid="leave-btn"]`), 'leave button of the long room visible');
    assert.ok(await p.evaluate(() => document.documentElement.scrollWidth <= 390));
    await p.keyboard.press('Escape');
    assert.deepEqual(p.errors, []);
  });

  it('shows news from another room on the ☰ button and in the page title', async () => {
    const p = await page(PHONE);
    await signUp(p, srv.url, 'quinn');                     // in #general
    await joinRoom(p, 'quiet');
    const bot = await Bot.connect(srv.wsUrl, { user: 'rita', password: PW, register: true });
    await bot.join('general');
    await bot.say('general', 'news in general');
    const badge = p.locator('[data-testid="rooms-unread"]');
    await until(async () => (await badge.isVisible()) && (await badge.textContent()) === '1', { what: '☰ badge 1' });
    assert.match(await p.title(), /^\(1\) /);
    assert.ok(await fullyVisible(p, '[data-testid="rooms-unread"]'));
    await p.locator('[data-testid="rooms-toggle"]').click();
    await p.locator('[data-testid="room-item"][data-room="general"] button[data-action="select"]').click();
    await waitMessage(p, 'news in general');
    await until(async () => !(await badge.isVisible()), { what: '☰ badge gone' });
    await until(async () => !/^\(/.test(await p.title()), { what: 'title without a count' });
    await bot.close();
  });

  it('serves a favicon and a web app manifest with icons (no 404s)', async () => {
    const p = await page(DESKTOP);
    await signUp(p, srv.url, 'sam');
    const checks = await p.evaluate(async () => {
      const out = {};
      const get = async (u) => { const r = await fetch(u); return { status: r.status, type: r.headers.get('content-type'), size: (await r.arrayBuffer()).byteLength }; };
      const manifestHref = document.querySelector('link[rel="manifest"]').getAttribute('href');
      const m = await (await fetch(manifestHref)).json();
      out.manifest = { name: m.name, display: m.display, start_url: m.start_url };
      for (const i of m.icons) out[i.src] = await get(i.src);
      for (const l of document.querySelectorAll('link[rel~="icon"], link[rel="apple-touch-icon"]')) out[l.getAttribute('href')] = await get(l.getAttribute('href'));
      out['/favicon.ico'] = await get('/favicon.ico');
      return out;
    });
    assert.deepEqual(checks.manifest, { name: 'chatd', display: 'standalone', start_url: '/' });
    for (const [src, r] of Object.entries(checks)) {
      if (src === 'manifest') continue;
      assert.equal(r.status, 200, `${src} served`);
      assert.match(r.type, /^image\//, `${src} is an image`);
      assert.ok(r.size > 100 && r.size < 20000, `${src} is small (${r.size} bytes)`);
    }
    assert.ok(Object.keys(checks).some((k) => k.includes('512')), 'a 512 px icon');
    assert.deepEqual(p.httpErrors, [], 'no HTTP errors while loading the page');
  });

  it('registers a service worker; the page then opens offline and says so, sending nothing', async () => {
    const own = await startServer({ dataDir: newDataDir('offline'), args: SERVER_ARGS });
    let restarted = null;
    try {
      const p = await page(PHONE);
      await signUp(p, own.url, 'olga');
      await say(p, 'before going offline');
      await waitMessage(p, 'before going offline', { state: 'sent' });
      // Controlled by the worker, with the client's files in its cache.
      await until(() => p.evaluate(async () => !!navigator.serviceWorker.controller
        && !!(await caches.match('/')) && !!(await caches.match('/app.js')) && !!(await caches.match('/style.css'))),
      { what: 'service worker in control with a cached client' });

      // The server is gone and the device is offline: the page still opens.
      await stopServer(own, 'SIGTERM');
      await p.context().setOffline(true);
      await p.reload();
      await p.waitForSelector('[data-testid="composer"]:visible');
      await p.waitForSelector(`${sel.status}[data-state="offline"]`);
      assert.equal((await p.locator(sel.status).textContent()).trim(), 'offline');
      assert.match(await p.locator('[data-testid="history-status"]').textContent(), /offline/i);
      // A message written now waits; it is not shown as delivered.
      await say(p, 'written offline');
      const pending = p.locator(`${sel.msgs}[data-state="pending"]`);
      await pending.waitFor();
      assert.match(await pending.locator('.state').textContent(), /waiting for connection/);
      assert.equal(await p.locator(`${sel.msgs}[data-state="sent"]`).count(), 0);

      // Back online with the server up: it connects and the message goes through, once.
      restarted = await startServer({ dataDir: own.dataDir, port: own.port, args: SERVER_ARGS });
      await p.context().setOffline(false);
      await waitConnected(p, 40000);
      await waitMessage(p, 'written offline', { state: 'sent', timeout: 15000 });
      const bot = await Bot.connect(restarted.wsUrl, { user: 'olga', password: PW });
      await bot.join('general');
      const stored = await bot.allMessages('general');
      assert.equal(stored.filter((m) => m.text === 'written offline').length, 1);
      await bot.close();
      assert.deepEqual(p.errors, []);
    } finally {
      await stopServer(own, 'SIGKILL').catch(() => {});
      if (restarted) await stopServer(restarted, 'SIGTERM').catch(() => {});
    }
  });
});

// ---- protocol 1.1: conversations ----

async function open(p, room) {
  if (await p.locator('[data-testid="rooms-toggle"]').isVisible()) await p.locator('[data-testid="rooms-toggle"]').click();
  await p.locator(`${item(room)} button[data-action="select"]`).click();
}

describe('conversations (protocol 1.1)', () => {
  it('lists conversations by activity with unread and mention badges, and the count in the title', async () => {
    const p = await page(DESKTOP);
    await signUp(p, srv.url, 'uma');
    await joinRoom(p, 'alpha');
    await joinRoom(p, 'beta');
    await open(p, 'general');
    await p.waitForSelector(`${sel.title}:text-is("# general")`);
    const bot = await Bot.connect(srv.wsUrl, { user: 'vic', password: PW, register: true });
    await bot.join('alpha');
    await bot.join('beta');
    await bot.say('beta', 'plain news in beta');
    await bot.say('alpha', 'first in alpha');
    await bot.say('alpha', 'hey @uma, have a look');
    const list = await waitConversations(p, (c) => find(c, 'alpha')?.unread === '2' && find(c, 'beta')?.unread === '1', 'badges 2 and 1');
    assert.deepEqual(list.map((c) => c.room).slice(0, 2), ['alpha', 'beta'], 'newest activity first');
    assert.equal(find(list, 'alpha').mention, true, 'alpha mentions uma');
    assert.equal(find(list, 'beta').mention, false);
    assert.equal(find(list, 'general').unread, null);
    await until(async () => (await p.title()).startsWith('(3) '), { what: 'title count 3' });

    // Opening alpha reads it: its badges go, the mention is highlighted in the message.
    await open(p, 'alpha');
    await waitMessage(p, 'hey @uma, have a look');
    await waitConversations(p, (c) => find(c, 'alpha').unread === null && !find(c, 'alpha').mention, 'alpha read');
    const shown = await shownMessagesOf(p);
    assert.equal(shown.find((m) => m.text === 'hey @uma, have a look').mentionsMe, true);
    assert.equal(await p.locator(`${sel.msgs} .mention.is-me`).count(), 1);
    await until(async () => (await p.title()).startsWith('(1) '), { what: 'title count 1' });
    // The server agrees: a fresh list says alpha is read.
    const again = await Bot.connect(srv.wsUrl, { user: 'uma', password: PW });
    again.send({ type: 'rooms' });
    const rooms = await again.next((f) => f.type === 'rooms');
    assert.equal(rooms.rooms.find((r) => r.room === 'alpha').unread, 0);
    assert.equal(rooms.rooms.find((r) => r.room === 'beta').unread, 1);
    await again.close();
    await bot.close();
    assert.deepEqual(p.errors, []);
  });

  it('clears a badge on one browser when the room is read on another of the same user', async () => {
    const a = await page(DESKTOP);
    await signUp(a, srv.url, 'yara');
    await joinRoom(a, 'newsroom');
    await open(a, 'general');
    const b = await page(DESKTOP);
    await signUp(b, srv.url, 'yara', { register: false });
    await waitConversations(b, (c) => find(c, 'newsroom'), 'newsroom listed on the second browser');
    const bot = await Bot.connect(srv.wsUrl, { user: 'zoe', password: PW, register: true });
    await bot.join('newsroom');
    for (let i = 1; i <= 3; i++) await bot.say('newsroom', `story ${i}`);
    for (const p of [a, b]) await waitConversations(p, (c) => find(c, 'newsroom')?.unread === '3', 'badge 3');
    await open(a, 'newsroom');
    await waitMessage(a, 'story 3');
    await waitConversations(b, (c) => find(c, 'newsroom').unread === null, 'badge cleared on the other browser');
    await until(async () => !(await b.title()).startsWith('('), { what: 'no count in the other title' });
    // And the other way round.
    await open(a, 'general');
    await a.waitForSelector(`${sel.title}:text-is("# general")`);
    await bot.say('newsroom', 'story 4');
    for (const p of [a, b]) await waitConversations(p, (c) => find(c, 'newsroom')?.unread === '1', 'badge 1');
    await open(b, 'newsroom');
    await waitMessage(b, 'story 4');
    await waitConversations(a, (c) => find(c, 'newsroom').unread === null, 'read on b: cleared on a');
    await bot.close();
  });

  it('starts a DM from the member list and by name; the other side gets it with a notification', async () => {
    const wes = await page(DESKTOP);
    const xctx = await browser.newContext({ viewport: DESKTOP, reducedMotion: 'reduce' });
    contexts.push(xctx);
    await fakeVisibilityAndNotifications(xctx);
    const xena = await pageIn(xctx);
    await signUp(wes, srv.url, 'wes');
    await signUp(xena, srv.url, 'Xena');
    await until(async () => (await wes.locator('[data-testid="member"][data-user="Xena"]').count()) === 1, { what: 'Xena online' });
    await wes.locator('[data-testid="member"][data-user="Xena"] [data-testid="dm-btn"]').click();
    await wes.waitForSelector(`${sel.title}[data-kind="dm"]:text-is("Xena")`);
    assert.equal(new URL(wes.url()).hash, '#@xena');
    await say(wes, 'hi Xena, a word in private?');
    await waitMessage(wes, 'hi Xena, a word in private?', { state: 'sent' });

    // Xena has not joined it: the server's notify puts it on her list, by wes's name.
    const dm = 'dm:wes+xena';
    const c = await waitConversations(xena, (l) => find(l, dm)?.unread === '1', 'the DM on Xena\'s list');
    assert.equal(find(c, dm).name, 'wes');
    assert.equal(c[0].room, dm, 'newest first');
    await open(xena, dm);
    await waitMessage(xena, 'hi Xena, a word in private?');
    await xena.waitForSelector(`${sel.title}[data-kind="dm"]:text-is("wes")`);
    await say(xena, 'sure');
    await waitMessage(wes, 'sure');
    const wesList = await conversations(wes);
    assert.equal(find(wesList, dm).name, 'Xena', 'DMs show the other person\'s name as spelled');
    assert.ok(!wesList.some((x) => x.name.startsWith('dm:')));

    // While Xena's tab is hidden: a browser notification for the DM, and the count in her title.
    await setHidden(xena, true);
    await say(wes, 'are you there?');
    await until(() => xena.evaluate(() => window.__notes.length === 1), { what: 'one notification' });
    assert.deepEqual(await xena.evaluate(() => window.__notes[0]), { title: 'wes', body: 'are you there?' });
    await until(async () => (await xena.title()).startsWith('(1) '), { what: 'count in the hidden tab\'s title' });
    await setHidden(xena, false);
    await until(async () => !(await xena.title()).startsWith('('), { what: 'count gone when visible' });

    // By name: @wes in the join field opens the same conversation; a name nobody has says so.
    await open(xena, 'general');
    await xena.locator('[data-testid="join-input"]').fill('@wes');
    await xena.locator('[data-testid="join-btn"]').click();
    await xena.waitForSelector(`${sel.title}:text-is("wes")`);
    await waitMessage(xena, 'are you there?');
    await xena.locator('[data-testid="join-input"]').fill('@nobody-here');
    await xena.locator('[data-testid="join-btn"]').click();
    await until(async () => /no user named nobody-here/i.test(await xena.locator('[data-testid="join-error"]').textContent()), { what: 'no such user' });
    await until(async () => !(await conversations(xena)).some((x) => x.room.includes('nobody')), { what: 'not listed' });
    assert.deepEqual(wes.errors, []);
    assert.deepEqual(xena.errors, []);
  });

  it('shows who is typing, for about five seconds, at most one typing frame per 3 s', async () => {
    const ann = await page(DESKTOP);
    const ben = await page(DESKTOP);
    const typingFrames = [];
    ann.on('websocket', (ws) => ws.on('framesent', ({ payload }) => { if (String(payload).includes('"typing"')) typingFrames.push(Date.now()); }));
    await signUp(ann, srv.url, 'ann');
    await signUp(ben, srv.url, 'ben');
    await ann.locator(sel.input).pressSequentially('hello the', { delay: 20 });
    await until(async () => (await ben.locator('[data-testid="typing"]').textContent()) === 'ann is typing…', { what: 'ann is typing…' });
    assert.equal(typingFrames.length, 1, 'one typing frame for a burst of keystrokes');
    await ann.locator(sel.input).press('Enter');
    await waitMessage(ben, 'hello the');
    await until(async () => (await ben.locator('[data-testid="typing"]').textContent()) === '', { what: 'cleared by the message' });
    // Typing without sending: shown, then gone after about 5 s.
    await ann.locator(sel.input).pressSequentially('still thinking', { delay: 100 });
    await until(async () => (await ben.locator('[data-testid="typing"]').textContent()) !== '', { what: 'typing again' });
    const shownAt = Date.now();
    await until(async () => (await ben.locator('[data-testid="typing"]').textContent()) === '', { timeout: 9000, what: 'typing expired' });
    assert.ok(Date.now() - shownAt > 3000, 'shown for a few seconds');
  });

  it('edits and deletes one\'s own messages, with an edited mark, on both sides', async () => {
    const cat = await page(DESKTOP);
    const dan = await page(DESKTOP);
    await signUp(cat, srv.url, 'cat', { hash: '#edits' });
    await signUp(dan, srv.url, 'dan', { hash: '#edits' });
    await say(cat, 'teh first draft');
    await say(cat, 'to be removed');
    await say(dan, 'not yours to edit');
    await waitMessage(cat, 'not yours to edit');
    const msg = (p, text) => p.locator(sel.msgs).filter({ hasText: text });
    assert.equal(await msg(cat, 'not yours to edit').locator('[data-testid="edit-btn"]').count(), 0, 'no edit on others\' messages');

    await msg(cat, 'teh first draft').hover();
    await msg(cat, 'teh first draft').locator('[data-testid="edit-btn"]').click();
    await cat.waitForSelector('[data-testid="edit-bar"]:visible');
    assert.equal(await cat.locator(sel.input).inputValue(), 'teh first draft');
    await cat.locator(sel.input).fill('the first draft');
    await cat.locator(sel.input).press('Enter');
    for (const p of [cat, dan]) {
      const m = await waitMessage(p, 'the first draft');
      assert.equal(m.edited, true, 'edited mark');
    }
    assert.equal(await cat.locator('[data-testid="edit-bar"]').isVisible(), false);
    assert.equal(await cat.locator(sel.input).inputValue(), '');

    await msg(cat, 'to be removed').hover();
    await msg(cat, 'to be removed').locator('[data-testid="delete-btn"]').click();
    await msg(cat, 'to be removed').locator('[data-testid="delete-confirm"]').click();
    for (const p of [cat, dan]) {
      await until(async () => !(await shownMessagesOf(p)).some((m) => m.text === 'to be removed'), { what: 'deleted everywhere' });
    }
    // ↑ in an empty composer edits one's last message; Esc gives up.
    await cat.locator(sel.input).focus();
    await cat.locator(sel.input).press('ArrowUp');
    await cat.waitForSelector('[data-testid="edit-bar"]:visible');
    assert.equal(await cat.locator(sel.input).inputValue(), 'the first draft');
    await cat.locator(sel.input).press('Escape');
    await cat.waitForSelector('[data-testid="edit-bar"]', { state: 'hidden' });
    assert.equal(await cat.locator(sel.input).inputValue(), '');
    // After a reload the edit and the deletion are still there (replayed from the server).
    await dan.reload();
    await waitConnected(dan);
    const m = await waitMessage(dan, 'the first draft');
    assert.equal(m.edited, true);
    assert.ok(!(await shownMessagesOf(dan)).some((x) => x.text === 'to be removed' || x.text === 'teh first draft'));
    assert.deepEqual(cat.errors, []);
  });

  it('completes @names from the room and highlights mentions of the reader', async () => {
    const eve = await page(DESKTOP);
    const fay = await page(DESKTOP);
    await signUp(eve, srv.url, 'eve', { hash: '#mentions' });
    await signUp(fay, srv.url, 'Fay.Lee', { hash: '#mentions' });
    await until(async () => (await eve.locator('[data-testid="member"][data-user="Fay.Lee"]').count()) === 1, { what: 'Fay online' });
    await eve.locator(sel.input).pressSequentially('thanks @fa');
    await eve.waitForSelector('[data-testid="mention-option"][data-user="Fay.Lee"]');
    await eve.locator(sel.input).press('Tab');
    assert.equal(await eve.locator(sel.input).inputValue(), 'thanks @Fay.Lee ');
    assert.equal(await eve.locator('[data-testid="mention-menu"]').isVisible(), false);
    await eve.locator(sel.input).pressSequentially('for the review.');
    await eve.locator(sel.input).press('Enter');
    const got = await waitMessage(fay, 'thanks @Fay.Lee for the review.');
    assert.equal(got.mentionsMe, true);
    const mine = await waitMessage(eve, 'thanks @Fay.Lee for the review.');
    assert.equal(mine.mentionsMe, false, 'the author is not highlighted');
    assert.equal(await fay.locator(`${sel.msgs} .mention.is-me`).textContent(), '@Fay.Lee');
  });
});

describe('screenshots', () => {
  // Saved in artifacts/; with UPDATE_SCREENSHOTS=1 also as docs/screenshot-{desktop,phone}.png.
  it('shows the conversation list with badges, a DM with an edited message, at desktop and phone width', async (t) => {
    const docs = process.env.UPDATE_SCREENSHOTS === '1' ? path.resolve(import.meta.dirname, '../../docs') : null;
    const srv = await startServer({ dataDir: newDataDir('pictures'), args: SERVER_ARGS });   // nothing from other tests
    const bots = {};
    t.after(async () => {
      for (const b of Object.values(bots)) await b.close();
      await stopServer(srv, 'SIGTERM');
    });
    for (const u of ['noah', 'olivia', 'priya']) bots[u] = await Bot.connect(srv.wsUrl, { user: u, password: PW, register: true });
    const desk = await page(DESKTOP);
    await signUp(desk, srv.url, 'maya');
    await joinRoom(desk, 'design');
    await joinRoom(desk, 'release-planning');
    await bots.olivia.join('design');
    await bots.priya.join('release-planning');
    const dm = 'dm:maya+noah';
    await bots.noah.join(dm);
    await bots.noah.say(dm, 'Morning! Did the release notes go out?');
    await open(desk, dm);
    await waitMessage(desk, 'Morning! Did the release notes go out?');
    await say(desk, 'Not yet, fixing the changelog first.');
    const draft = desk.locator(sel.msgs).filter({ hasText: 'Not yet, fixing the changelog first.' });
    await draft.locator('[data-testid="edit-btn"]').waitFor({ state: 'attached' });
    await draft.hover();
    await draft.locator('[data-testid="edit-btn"]').click();
    await desk.locator(sel.input).fill('Not yet: fixing the changelog first, then they go out today.');
    await desk.locator(sel.input).press('Enter');
    await waitMessage(desk, 'Not yet: fixing the changelog first, then they go out today.');
    await bots.noah.say(dm, 'Great. @maya can you also check the screenshots on a phone?');
    await say(desk, 'Sure, doing that now.');
    await waitMessage(desk, 'Sure, doing that now.', { state: 'sent' });
    await bots.olivia.say('design', 'The new icon set is up for review.');
    await bots.olivia.say('design', '@maya what do you think of the purple?');
    await bots.olivia.say('design', 'Dark theme tweaks are pushed too.');
    await bots.priya.say('release-planning', 'Freeze moves to Thursday.');
    await bots.priya.say('release-planning', 'Please update your tickets.');
    await bots.olivia.join('dm:maya+olivia');
    await bots.olivia.say('dm:maya+olivia', 'Lunch at 12?');
    await waitConversations(desk, (c) => find(c, 'design')?.unread === '3' && find(c, 'release-planning')?.unread === '2'
      && find(c, 'dm:maya+olivia')?.unread === '1', 'badges for the picture');
    // The server relays one typing frame per connection and room per second and drops the rest
    // silently, so noah keeps typing until the page shows it.
    const typingOn = (p, what) => until(async () => {
      bots.noah.send({ type: 'typing', room: dm });
      return (await p.locator('[data-testid="typing"]').textContent()) === 'noah is typing…';
    }, { what, interval: 250 });
    await typingOn(desk, 'typing shown');
    await shot(desk, artifact('conversations-desktop.png'));
    if (docs) await shot(desk, path.join(docs, 'screenshot-desktop.png'));

    // The phone: the DM (news elsewhere on the ☰ button) and the conversation list, side by side.
    const phone = await page(PHONE);
    await signUp(phone, srv.url, 'maya', { register: false, hash: '#@noah' });
    await waitMessage(phone, 'Sure, doing that now.');
    await waitConversations(phone, (c) => find(c, 'design')?.unread === '3', 'badges on the phone');
    await typingOn(phone, 'typing on the phone');
    const left = artifact('conversations-phone-dm.png');
    await shot(phone, left);
    await phone.locator('[data-testid="rooms-toggle"]').click();
    await phone.waitForSelector('#sidebar [data-testid="room-list"]:visible');
    const right = artifact('conversations-phone-list.png');
    await shot(phone, right);
    const both = await page({ width: 2 * PHONE.width + 72, height: PHONE.height + 48 });
    const img = (f) => `data:image/png;base64,${fs.readFileSync(f).toString('base64')}`;
    await both.setContent(`<body style="margin:0;background:#d9dce3;display:flex;gap:24px;padding:24px;box-sizing:border-box">
      <img src="${img(left)}" style="border-radius:14px;box-shadow:0 4px 16px rgb(0 0 0/.18)">
      <img src="${img(right)}" style="border-radius:14px;box-shadow:0 4px 16px rgb(0 0 0/.18)"></body>`);
    await both.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0));
    await both.screenshot({ path: artifact('conversations-phone.png') });
    if (docs) await both.screenshot({ path: path.join(docs, 'screenshot-phone.png') });
    assert.deepEqual(desk.errors, []);
    assert.deepEqual(phone.errors, []);
  });
});
