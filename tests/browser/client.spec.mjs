// Browser tests for the web client's phone layout, installability and offline start, and the
// conversation features of protocol 1.1. Run through ./run.sh.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Bot, newDataDir, startServer, stopServer, until } from './harness.mjs';
import {
  DESKTOP, PHONE, PW, fullyVisible, joinRoom, launch, newPage, say, sel, signUp, waitConnected, waitMessage,
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
