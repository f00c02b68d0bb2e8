// The fixed workload of benches/callgrind/fanout.sh: N connections of one account joined to one
// room, a publisher, and M messages in lock-step (the next once every receiver has the previous).
// Only the messages are counted: callgrind's counters are zeroed once everyone has joined and
// dumped after the last delivery.
import WebSocket from '../peer/node_modules/ws/index.js';
import { execSync } from 'node:child_process';

const [url, N, M, pid] = [process.argv[2], +process.argv[3], +process.argv[4], process.argv[5]];
const PASSWORD = 'correct-horse-battery';

const open = (auth) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  ws.on('error', reject);
  ws.on('open', () => ws.send(JSON.stringify(auth)));
  ws.once('message', (d) => {
    const v = JSON.parse(d);
    if (v.type !== 'welcome') reject(new Error(`not welcomed: ${d}`));
    ws.welcome = v;
    resolve(ws);
  });
});
const next = (ws, pred) => new Promise((resolve) => {
  const on = (d) => {
    const v = JSON.parse(d);
    if (pred(v)) { ws.off('message', on); resolve(v); }
  };
  ws.on('message', on);
});
const join = async (ws, room) => {
  const synced = next(ws, (v) => v.type === 'synced');
  ws.send(JSON.stringify({ type: 'join', room }));
  await synced;
};

const first = await open({ type: 'auth', user: 'reader', password: PASSWORD, register: true });
const readers = [first];
for (let i = 1; i < N; i++) readers.push(await open({ type: 'auth', token: first.welcome.token }));
for (const r of readers) await join(r, 'fan');
const pub = await open({ type: 'auth', user: 'writer', password: PASSWORD, register: true });
// Every reader hears the writer come online: nothing of the joins is left to count.
const online = readers.map((r) => next(r, (v) => v.type === 'presence' && v.user === 'writer'));
await join(pub, 'fan');
await Promise.all(online);
execSync(`callgrind_control -z ${pid}`, { stdio: 'ignore' });
for (let i = 0; i < M; i++) {
  const got = readers.map((r) => next(r, (v) => v.type === 'message'));
  pub.send(JSON.stringify({ type: 'send', room: 'fan', text: `message number ${i} of the run` }));
  await Promise.all(got);
}
execSync(`callgrind_control -d ${pid}`, { stdio: 'ignore' });
process.exit(0);
