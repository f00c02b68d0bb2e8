// chatd service worker: keeps a copy of the static client so the page opens without a network.
// Network first (the server's files are always fresh when it can be reached), the cached copy when
// it cannot. Only the client's own files: never /ws, /healthz, /metrics, and nothing that carries
// messages. Messages are only ever sent through the server.
'use strict';
const CACHE = 'chatd-static-v1';
const FILES = ['/', '/app.js', '/style.css', '/manifest.webmanifest', '/favicon.svg', '/icon-192.png'];
const STATIC = new Set([...FILES, '/index.html', '/favicon.ico', '/icon-512.png', '/icon-maskable-512.png', '/apple-touch-icon.png']);
const NETWORK_WAIT_MS = 4000;   // a network that does not answer: serve the copy, refresh it later

self.addEventListener('install', (ev) => {
  ev.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});
self.addEventListener('activate', (ev) => {
  ev.waitUntil((async () => {
    for (const k of await caches.keys()) if (k !== CACHE) await caches.delete(k);
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (ev) => {
  const req = ev.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  // Every page load is the one page (query and fragment are the client's business).
  const key = req.mode === 'navigate' || url.pathname === '/index.html' ? '/' : url.pathname;
  if (!STATIC.has(key)) return;
  ev.respondWith(networkFirst(req, key));
});

async function networkFirst(req, key) {
  const cache = await caches.open(CACHE);
  const fromNetwork = fetch(req).then((res) => {
    if (res.ok) cache.put(key, res.clone()).catch(() => {});
    return res;
  });
  fromNetwork.catch(() => {});   // handled below; a late failure after a timeout is not an error
  let timer;
  const slow = new Promise((resolve) => { timer = setTimeout(resolve, NETWORK_WAIT_MS, null); });
  try {
    const res = await Promise.race([fromNetwork, slow]);
    if (res) return res;
    const copy = await cache.match(key);
    return copy || await fromNetwork;   // nothing cached yet: keep waiting for the network
  } catch (e) {
    const copy = await cache.match(key);
    if (copy) return copy;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}
