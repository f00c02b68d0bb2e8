// Browser tests for the web client against a two-node cluster (chatd serve --cluster, one private
// Redis): chat, presence and a DM across nodes, and a node's death and restart as a user sees it.
// Run through ./run.sh.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { TMP, newDataDir, startServer, stopServer, until } from './harness.mjs';
import {
  DESKTOP, fakeVisibilityAndNotifications, find, item, launch, newPage, pageIn, say, sel, setHidden,
  shownMessages, signUp, waitConnected, waitConversations, waitMessage,
} from './pages.mjs';

const REDIS_BIN = process.env.REDIS_SERVER || 'redis-server';
const SERVER_ARGS = ['--presence-grace', '500ms', '--rate', '1000', '--burst', '1000', '--ping-interval', '1s', '--idle-timeout', '5s'];

let browser, redis, node1, node2, dir1, dir2;
const contexts = [];

// ---- a private Redis: free loopback port, own dir under TMP, every write fsynced ----

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}
/** Whether a Redis on `port` answers PING. */
function pings(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = '';
    const done = (ok) => { s.destroy(); resolve(ok); };
    s.setTimeout(1000, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.on('data', (b) => { got += b; if (got.includes('\r\n')) done(got.startsWith('+PONG')); });
  });
}
function killRedis(r) {
  if (!r || r.proc.exitCode !== null || r.proc.signalCode !== null) return r ? r.exited : undefined;
  r.proc.kill('SIGKILL');
  return r.exited;
}
async function startRedis() {
  const dir = newDataDir('redis');
  for (let tries = 0; tries < 5; tries++) {
    const port = await freePort();
    const proc = spawn(REDIS_BIN, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir,
      '--logfile', path.join(dir, 'redis.log'), '--appendonly', 'yes', '--appendfsync', 'always'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
    // Named like the harness's servers so run.sh's cleanup kills it whatever happens.
    const pidFile = path.join(TMP, `server-${proc.pid}.pid`);
    fs.writeFileSync(pidFile, String(proc.pid));
    let stderr = '';
    proc.stderr.on('data', (b) => { stderr += b; });
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
      fs.rmSync(pidFile, { force: true });
      resolve({ code, signal });
    }));
    const r = { proc, port, dir, exited, url: `redis://127.0.0.1:${port}` };
    const started = await until(async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return 'exited';
      return (await pings(port)) && 'up';
    }, { timeout: 10000, interval: 50, what: `redis-server on port ${port}` }).catch(() => 'timeout');
    if (started === 'up') return r;
    await killRedis(r);
    if (tries === 4) throw new Error(`redis-server did not start (${started}); stderr=${stderr}; log ${path.join(dir, 'redis.log')}`);
  }
}
process.on('exit', () => { try { if (redis) redis.proc.kill('SIGKILL'); } catch { /* gone */ } });

// ---- pages (as in chat.spec.mjs and client.spec.mjs) ----

const memberNames = (page) => page.$$eval(sel.members, (lis) => lis.map((li) => li.dataset.user));
async function waitMembers(page, pred, what, timeout = 10000) {
  return until(async () => { const m = await memberNames(page); return pred(m) && m; }, { timeout, what });
}
async function open(p, room, title) {
  await p.locator(`${item(room)} button[data-action="select"]`).click();
  await p.waitForSelector(`${sel.title}:text-is("${title}")`);
}

before(async () => {
  redis = await startRedis();
  const args = [...SERVER_ARGS, '--cluster', redis.url];
  dir1 = newDataDir('node1');
  dir2 = newDataDir('node2');
  node1 = await startServer({ dataDir: dir1, args });
  node2 = await startServer({ dataDir: dir2, args });
  browser = await launch();
});
after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  for (const n of [node1, node2]) if (n) await stopServer(n, 'SIGTERM').catch(() => {});
  await killRedis(redis);
});

describe('web client on a two-node cluster', () => {
  let alice, bob;
  const aliceJoins = [];   // the join frames alice's page sent, in order

  it('chats and shows presence across nodes', async () => {
    assert.notEqual(node1.port, node2.port);
    const actx = await browser.newContext({ viewport: DESKTOP, reducedMotion: 'reduce' });
    contexts.push(actx);
    await fakeVisibilityAndNotifications(actx);
    alice = await pageIn(actx);
    alice.on('websocket', (ws) => ws.on('framesent', ({ payload }) => {
      try { const f = JSON.parse(String(payload)); if (f.type === 'join') aliceJoins.push(f); } catch { /* not JSON */ }
    }));
    bob = await newPage(browser, DESKTOP, contexts);
    await signUp(alice, node1.url, 'alice');
    await signUp(bob, node2.url, 'bob');
    for (const p of [alice, bob]) await p.waitForSelector(`${sel.title}:text-is("# general")`);
    await waitMembers(alice, (m) => m.includes('alice') && m.includes('bob'), 'alice (node 1) sees bob (node 2) online');
    await waitMembers(bob, (m) => m.includes('alice') && m.includes('bob'), 'bob (node 2) sees alice (node 1) online');

    await say(alice, 'hello from node 1');
    const sent = await waitMessage(alice, 'hello from node 1', { state: 'sent' });
    const got = await waitMessage(bob, 'hello from node 1');
    assert.equal(got.id, sent.id);
    assert.equal(got.user, 'alice');
    await say(bob, 'hello back from node 2');
    const reply = await waitMessage(bob, 'hello back from node 2', { state: 'sent' });
    const gotReply = await waitMessage(alice, 'hello back from node 2');
    assert.equal(gotReply.id, reply.id);
    assert.equal(gotReply.user, 'bob');
    assert.ok(reply.id > sent.id, 'one log: ids go on across nodes');
    for (const p of [alice, bob]) {
      const ids = (await shownMessages(p)).map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length, 'no duplicate message ids');
    }
  });

  it('delivers a direct message across nodes with a badge and a notification', async () => {
    await bob.locator('[data-testid="member"][data-user="alice"] [data-testid="dm-btn"]').click();
    await bob.waitForSelector(`${sel.title}[data-kind="dm"]:text-is("alice")`);
    await say(bob, 'psst, alice');
    await waitMessage(bob, 'psst, alice', { state: 'sent' });

    // alice (node 1) never joined it: node 2's notify puts it on her list, by bob's name.
    const dm = 'dm:alice+bob';
    const c = await waitConversations(alice, (l) => find(l, dm)?.unread === '1', 'the DM on alice\'s list');
    assert.equal(find(c, dm).name, 'bob');
    assert.equal(c[0].room, dm, 'newest first');
    await open(alice, dm, 'bob');
    await waitMessage(alice, 'psst, alice');
    await waitConversations(alice, (l) => find(l, dm)?.unread === null, 'DM read');
    await say(alice, 'yes?');
    await waitMessage(bob, 'yes?');

    // alice's tab hidden: a browser notification for the next DM and the count in her title.
    await open(alice, 'general', '# general');
    await setHidden(alice, true);
    await say(bob, 'are you there?');
    await until(() => alice.evaluate(() => window.__notes.length === 1), { what: 'one notification' });
    assert.deepEqual(await alice.evaluate(() => window.__notes[0]), { title: 'bob', body: 'are you there?' });
    await until(async () => (await alice.title()).startsWith('(1) '), { what: 'count in the hidden tab\'s title' });
    await setHidden(alice, false);
    await open(bob, 'general', '# general');
  });

  it('survives the death of alice\'s node: reconnects by itself, catches up once, chats on', async () => {
    const port = node1.port;
    const shownBefore = await shownMessages(alice);
    const lastSeen = Math.max(...shownBefore.map((m) => m.id));
    const joinsBefore = aliceJoins.length;

    await stopServer(node1, 'SIGKILL');
    await alice.waitForSelector(`${sel.status}[data-state="reconnecting"]`, { timeout: 10000 });
    assert.match(await alice.locator(sel.status).textContent(), /reconnecting/);
    // Node 2 notices node 1 is gone (its heartbeat key expires) and announces alice offline.
    await waitMembers(bob, (m) => !m.includes('alice') && m.includes('bob'), 'alice offline on bob\'s page after node 1 died');

    await say(bob, 'said while node 1 was down');
    const missed = await waitMessage(bob, 'said while node 1 was down', { state: 'sent' });
    assert.notEqual(await alice.locator(sel.status).getAttribute('data-state'), 'connected');
    assert.equal((await shownMessages(alice)).filter((m) => m.text === 'said while node 1 was down').length, 0);
    // alice types meanwhile: it waits as pending and goes out (once) when her page is back.
    await say(alice, 'typed while node 1 was down');
    await alice.waitForSelector(`${sel.msgs}[data-state="pending"]`);

    node1 = await startServer({ dataDir: dir1, port, args: [...SERVER_ARGS, '--cluster', redis.url] });
    assert.equal(node1.port, port);
    // No click: the page's own backoff brings it back (up to ~16 s after a few failed tries).
    await waitConnected(alice, 45000);
    await waitMessage(alice, 'said while node 1 was down', { timeout: 15000 });
    await waitMessage(alice, 'typed while node 1 was down', { state: 'sent', timeout: 15000 });
    await waitMessage(bob, 'typed while node 1 was down');
    // It resumed general from what it had, with since.
    const rejoin = aliceJoins.slice(joinsBefore).find((f) => f.room === 'general');
    assert.ok(rejoin, `alice's page rejoined general: ${JSON.stringify(aliceJoins.slice(joinsBefore))}`);
    assert.equal(rejoin.since, lastSeen, 'rejoined with since = the last id it had');
    await waitMembers(bob, (m) => m.includes('alice'), 'alice back online on bob\'s page');
    await waitMembers(alice, (m) => m.includes('alice') && m.includes('bob'), 'alice sees bob after the restart');

    await say(alice, 'back on node 1');
    await waitMessage(alice, 'back on node 1', { state: 'sent' });
    await waitMessage(bob, 'back on node 1');
    await say(bob, 'welcome back');
    // Node 1 may hear it from Redis before node 2 has read Redis's answer and acked bob.
    await waitMessage(bob, 'welcome back', { state: 'sent' });
    await waitMessage(alice, 'welcome back');

    const shownA = await shownMessages(alice);
    const count = (t) => shownA.filter((m) => m.text === t).length;
    for (const t of ['hello from node 1', 'hello back from node 2', 'said while node 1 was down', 'typed while node 1 was down',
      'back on node 1', 'welcome back']) {
      assert.equal(count(t), 1, `${t} shown exactly once`);
    }
    assert.equal(shownA.find((m) => m.text === 'said while node 1 was down').id, missed.id);
    const ids = shownA.map((m) => m.id);
    assert.equal(shownA.filter((m) => m.id === null).length, 0, 'nothing left pending');
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'ascending ids');
    assert.equal(new Set(ids).size, ids.length, 'no duplicate ids');
    assert.ok(shownA.find((m) => m.text === 'typed while node 1 was down').id > missed.id, 'the queued message stored after the missed one');
    // Both pages show the same room, message for message.
    const shownB = await shownMessages(bob);
    assert.deepEqual(shownA.map((m) => [m.id, m.user, m.text]), shownB.map((m) => [m.id, m.user, m.text]));
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  });
});
