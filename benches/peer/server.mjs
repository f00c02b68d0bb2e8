// Peer for chatd's benchmarks: the typical Node `ws` chat server, in memory, no durability and no
// password hashing. It speaks the subset of chatd's protocol the benchmarks use (auth, join, send,
// ping) and prints `listening on HOST:PORT` like chatd does.
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] || 0);
const rooms = new Map(); // room -> Set<ws>
let nextId = 1;

const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws', perMessageDeflate: false });
wss.on('listening', () => console.log(`listening on 127.0.0.1:${wss.address().port}`));
wss.on('connection', (ws) => {
  ws.user = null;
  ws.rooms = new Set();
  ws.on('message', (data, isBinary) => {
    if (isBinary) return ws.close(1003);
    let f;
    try { f = JSON.parse(data.toString()); } catch { return; }
    if (!ws.user) {
      if (f.type !== 'auth') return;
      ws.user = f.user || 'token-user';
      return ws.send(JSON.stringify({ type: 'welcome', user: ws.user, token: f.token || 't', server_time: Date.now() }));
    }
    switch (f.type) {
      case 'join': {
        if (!rooms.has(f.room)) rooms.set(f.room, new Set());
        rooms.get(f.room).add(ws);
        ws.rooms.add(f.room);
        ws.send(JSON.stringify({ type: 'joined', room: f.room, members: [] }));
        ws.send(JSON.stringify({ type: 'synced', room: f.room, last_id: nextId - 1, more: false }));
        break;
      }
      case 'send': {
        const id = nextId++;
        const ts = Date.now();
        ws.send(JSON.stringify({ type: 'ack', room: f.room, cid: f.cid, id, ts }));
        const msg = JSON.stringify({ type: 'message', room: f.room, id, user: ws.user, text: f.text, ts, cid: f.cid });
        for (const member of rooms.get(f.room) || []) member.send(msg);
        break;
      }
      case 'ping':
        ws.send(JSON.stringify({ type: 'pong', t: f.t }));
        break;
    }
  });
  ws.on('close', () => { for (const r of ws.rooms) rooms.get(r)?.delete(ws); });
});
