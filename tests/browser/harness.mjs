// Test harness: start/stop chatd servers, a tiny protocol client in Node, polling helpers.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import WebSocket from 'ws';

export const CHATD_BIN = process.env.CHATD_BIN || path.resolve(import.meta.dirname, '../../target/debug/chatd');
// run.sh makes this dir and removes it (and kills pids recorded in it) on exit, whatever happens.
export const TMP = process.env.CHATD_TEST_TMP || fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-browser-'));
export const ARTIFACTS = path.resolve(import.meta.dirname, 'artifacts');

const OWN_TMP = !process.env.CHATD_TEST_TMP;   // made here, so removed here
const children = new Set();
function reap() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  if (OWN_TMP) fs.rmSync(TMP, { recursive: true, force: true });
}
process.on('exit', reap);

export function newDataDir(name) {
  const d = path.join(TMP, `${name}-${crypto.randomBytes(3).toString('hex')}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Start `chatd serve`; resolves once it printed `listening on HOST:PORT`. */
export function startServer({ dataDir, port = 0, args = [], timeoutMs = 60000 }) {
  // Every browser and bot here comes from 127.0.0.1: lift the limits per address.
  const argv = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir,
    '--registrations-per-ip', '0', '--hash-jobs-per-ip', '0', ...args];
  const proc = spawn(CHATD_BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  fs.writeFileSync(path.join(TMP, `server-${proc.pid}.pid`), String(proc.pid));
  const logFile = path.join(TMP, `server-${proc.pid}.log`);
  const log = fs.createWriteStream(logFile);
  proc.stderr.pipe(log);
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    children.delete(proc);
    fs.rmSync(path.join(TMP, `server-${proc.pid}.pid`), { force: true });
    resolve({ code, signal });
  }));
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`chatd did not print "listening on" within ${timeoutMs} ms; stdout=${JSON.stringify(out)}; log ${logFile}`)); }, timeoutMs);
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    exited.then(({ code, signal }) => { clearTimeout(timer); reject(new Error(`chatd exited early (code ${code}, signal ${signal}); stdout=${JSON.stringify(out)}; see ${logFile}: ${safeTail(logFile)}`)); });
    proc.stdout.on('data', (b) => {
      out += b.toString();
      const m = out.match(/listening on ([\d.]+):(\d+)/);
      if (m) {
        clearTimeout(timer);
        const p = Number(m[2]);
        resolve({ proc, port: p, url: `http://127.0.0.1:${p}/`, wsUrl: `ws://127.0.0.1:${p}/ws`, exited, logFile, dataDir });
      }
    });
  });
}
function safeTail(f) { try { return fs.readFileSync(f, 'utf8').slice(-2000); } catch { return ''; } }

/** Stop a server with a signal and wait until the process is gone. */
export async function stopServer(srv, signal = 'SIGTERM', timeoutMs = 15000) {
  if (srv.proc.exitCode !== null || srv.proc.signalCode !== null) return srv.exited;
  srv.proc.kill(signal);
  const t = setTimeout(() => srv.proc.kill('SIGKILL'), timeoutMs);
  const r = await srv.exited;
  clearTimeout(t);
  return r;
}

/** Poll `fn` until it returns a truthy value or the deadline passes. */
export async function until(fn, { timeout = 10000, interval = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** A minimal protocol client for the other side of a conversation. */
export class Bot {
  static async connect(wsUrl, auth) {
    const b = new Bot();
    b.frames = [];
    b.waiters = [];
    b.ws = new WebSocket(wsUrl);
    b.ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      b.frames.push(f);
      for (const w of [...b.waiters]) if (w.pred(f)) { b.waiters.splice(b.waiters.indexOf(w), 1); w.resolve(f); }
    });
    b.closed = new Promise((r) => b.ws.on('close', (code) => r(code)));
    await new Promise((resolve, reject) => { b.ws.once('open', resolve); b.ws.once('error', reject); });
    b.send({ type: 'auth', ...auth });
    const w = await b.next((f) => f.type === 'welcome' || f.type === 'error');
    if (w.type !== 'welcome') throw new Error(`bot auth failed: ${JSON.stringify(w)}`);
    b.welcome = w;
    return b;
  }
  send(f) { this.ws.send(JSON.stringify(f)); }
  /** Resolve with the first frame (already received or future) matching pred. */
  next(pred, timeout = 10000) {
    const i = this.frames.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.frames.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve: (f) => { clearTimeout(t); this.frames.splice(this.frames.indexOf(f), 1); resolve(f); } };
      const t = setTimeout(() => { this.waiters.splice(this.waiters.indexOf(w), 1); reject(new Error(`bot: no matching frame within ${timeout} ms; got ${JSON.stringify(this.frames.slice(-5))}`)); }, timeout);
      this.waiters.push(w);
    });
  }
  async join(room) {
    this.send({ type: 'join', room });
    return this.next((f) => f.type === 'synced' && f.room === room);
  }
  async say(room, text) {
    const cid = crypto.randomBytes(8).toString('hex');
    this.send({ type: 'send', room, text, cid });
    const f = await this.next((x) => (x.type === 'ack' && x.cid === cid) || (x.type === 'error' && x.ref === cid));
    if (f.type !== 'ack') throw new Error(`bot send failed: ${JSON.stringify(f)}`);
    return f;
  }
  /** All messages of a room, oldest first, paging with history before. */
  async allMessages(room) {
    const out = [];
    let before;
    for (;;) {
      const f = { type: 'history', room, limit: 200 };
      if (before !== undefined) f.before = before;
      this.send(f);
      const h = await this.next((x) => x.type === 'history' && x.room === room);
      out.unshift(...h.messages);
      if (!h.more || !h.messages.length) return out;
      before = h.messages[0].id;
    }
  }
  close() { try { this.ws.close(); } catch { /* ignore */ } return this.closed; }
}
