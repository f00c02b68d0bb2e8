// Browser-side helpers shared by the spec files: launching Chromium, pages, signing up, messages.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARTIFACTS, until } from './harness.mjs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const PW = 'correct-horse-battery';
export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

export const sel = {
  status: '[data-testid="conn-status"]',
  msgs: '[data-testid="message-list"] li[data-testid="message"]',
  members: '[data-testid="member-list"] li',
  input: '[data-testid="composer-input"]',
  title: '[data-testid="room-title"]',
};

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
}

/** A page in a new context (its own storage: another device), recording page errors and HTTP errors. */
export async function newPage(browser, viewport = DESKTOP, contexts = []) {
  const ctx = await browser.newContext({ viewport, reducedMotion: 'reduce' });
  contexts.push(ctx);
  return pageIn(ctx);
}
export async function pageIn(ctx) {
  const page = await ctx.newPage();
  page.errors = [];
  page.httpErrors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('dialog', (d) => { page.errors.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on('response', (r) => { if (r.status() >= 400) page.httpErrors.push(`${r.status()} ${r.url()}`); });
  return page;
}

export const waitConnected = (page, timeout = 15000) =>
  page.waitForSelector(`${sel.status}[data-state="connected"]`, { timeout });

export async function signUp(page, url, user, { register = true, hash = '' } = {}) {
  await page.goto(url + hash);
  await page.locator('#auth-user').fill(user);
  await page.locator('#auth-password').fill(PW);
  await page.locator(register ? '[data-testid="register-btn"]' : '[data-testid="login-btn"]').click();
  await waitConnected(page);
}
export async function say(page, text) {
  await page.locator(sel.input).fill(text);
  await page.locator(sel.input).press('Enter');
}
/** The messages shown, in DOM order. */
export const shownMessages = (page) => page.$$eval(sel.msgs, (lis) => lis.map((li) => ({
  id: li.dataset.id ? Number(li.dataset.id) : null, state: li.dataset.state || null, user: li.dataset.user,
  text: li.querySelector('.text').textContent, edited: !!li.querySelector('[data-testid="edited"]'),
  mentionsMe: li.classList.contains('mentions-me'),
})));
export async function waitMessage(page, text, { state, timeout = 10000 } = {}) {
  return until(async () => {
    const all = await shownMessages(page);
    return all.find((m) => m.text === text && m.id !== null && (!state || m.state === state));
  }, { timeout, what: `message ${JSON.stringify(text)}${state ? ` in state ${state}` : ''}` });
}
export async function joinRoom(page, room, title = `# ${room}`) {
  // On a phone the join field is in the rooms drawer.
  if (await page.locator('[data-testid="rooms-toggle"]').isVisible()
    && !(await page.locator('[data-testid="join-input"]').isVisible())) await page.locator('[data-testid="rooms-toggle"]').click();
  await page.locator('[data-testid="join-input"]').fill(room);
  await page.locator('[data-testid="join-btn"]').click();
  await page.waitForSelector(`${sel.title}:text-is("${title}")`);
}
export async function shot(page, file) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await page.mouse.move(0, 0);   // no stray hover highlight in the picture
  await page.screenshot({ path: file });
}
export const artifact = (name) => path.join(ARTIFACTS, name);

/** Whether the element's box lies fully inside the viewport. */
export async function fullyVisible(page, selector) {
  return page.locator(selector).evaluate((e) => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.left >= 0 && r.top >= 0 && r.right <= window.innerWidth && r.bottom <= window.innerHeight;
  });
}

// ---- protocol 1.1: the conversation list, hidden tabs and notifications ----

/** A room's entry in the conversation list. */
export const item = (room) => `[data-testid="room-item"][data-room="${room}"]`;
/** The conversation list as shown: room, label, unread badge, mention badge, in order. */
export const conversations = (p) => p.$$eval('[data-testid="room-item"]', (lis) => lis.map((li) => ({
  room: li.dataset.room,
  name: li.querySelector('[data-testid="room-name"]').textContent,
  unread: li.querySelector('[data-testid="unread-badge"]')?.textContent || null,
  mention: !!li.querySelector('[data-testid="mention-badge"]'),
})));
export async function waitConversations(p, pred, what) {
  return until(async () => { const c = await conversations(p); return pred(c) && c; }, { what });
}
export const find = (list, room) => list.find((c) => c.room === room);
/** Pretend the tab can be hidden, and record browser notifications instead of showing them. */
export async function fakeVisibilityAndNotifications(ctx) {
  await ctx.addInitScript(() => {
    window.__notes = [];
    window.__hidden = false;
    Object.defineProperty(Document.prototype, 'hidden', { get() { return window.__hidden; }, configurable: true });
    Object.defineProperty(Document.prototype, 'visibilityState', { get() { return window.__hidden ? 'hidden' : 'visible'; }, configurable: true });
    class FakeNotification { constructor(title, opts) { window.__notes.push({ title, body: opts && opts.body }); } close() {} }
    FakeNotification.permission = 'granted';
    FakeNotification.requestPermission = async () => 'granted';
    window.Notification = FakeNotification;
  });
}
export const setHidden = (p, hidden) => p.evaluate((h) => { window.__hidden = h; document.dispatchEvent(new Event('visibilitychange')); }, hidden);
