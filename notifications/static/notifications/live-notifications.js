// Live notifications: toasts and the unread counter rendered by {% live_notifications %}.
//
// The server renders the counter and the newest notifications, so the page is right without
// JavaScript. Here: new ones arrive over STOMP (/user/queue/notifications, which carries the
// user's own and the broadcasts) as toasts. Whatever was created while the page was away is
// fetched page by page after the newest id it has (GET ?after=<id>) once every (re)subscription
// is confirmed, and comes with the server's notifications.sync after the server itself lost the
// broker ("missed"); all of it goes into the list, the newest few as toasts. Marking read goes
// over STOMP, or over HTTP if that fails.
import { connection } from './stomp-client.js';

const USER_QUEUE = '/user/queue/notifications';
// Info and success toasts go away on their own; warnings and errors stay until closed.
const TOAST_MS = 10000;
// After an absence, only the newest few of the notifications it missed pop up (all are listed).
const CATCH_UP_TOASTS = 5;
// Pages of ?after= fetched per catch-up (the rest shows on the next load).
const CATCH_UP_PAGES = 10;
const CATCH_UP_PAGE = 100;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

class LiveNotifications {
  constructor(root) {
    this.root = root;
    this.badge = root.querySelector('[data-unread]');
    this.list = root.querySelector('.ln-list');
    this.toasts = document.querySelector('.ln-toasts') || el('div', { class: 'ln-toasts', role: 'status', 'aria-live': 'polite' });
    // Toasts live at the end of <body>: wherever the tag was placed (the admin puts it in its
    // header), no header style reaches them.
    if (this.toasts.parentElement !== document.body) document.body.append(this.toasts);
    this.listUrl = root.dataset.listUrl;
    this.readUrl = root.dataset.readUrl;
    this.csrf = root.dataset.csrf;
    this.known = new Set();
    this.newest = 0;
    for (const item of root.querySelectorAll('.ln-item[data-id]')) {
      const id = Number(item.dataset.id);
      this.known.add(id);
      this.newest = Math.max(this.newest, id);
    }
    // Anything created after the server rendered this page shows as a toast on the first fetch.
    this.newest = Math.max(this.newest, Number(root.dataset.newest || 0));
    root.addEventListener('click', (e) => this._onClick(e));
    const markAll = root.querySelector('form.ln-mark-all');
    if (markAll) markAll.addEventListener('submit', (e) => { e.preventDefault(); this.markRead(null); });

    this.client = connection();
    this.client.subscribe(USER_QUEUE, (frame) => this.onEvent(frame.json()), {
      onReceipt: () => this.catchUp(),
    });
  }

  setUnread(n) {
    if (typeof n !== 'number' || !this.badge) return;
    this.badge.dataset.unread = String(n);
    this.badge.textContent = n > 99 ? '99+' : String(n);
    this.badge.hidden = n === 0;
    this.root.classList.toggle('ln-has-unread', n > 0);
  }

  async _get(params) {
    const url = new URL(this.listUrl, window.location.href);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, String(v));
    const response = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`${url.pathname}: ${response.status}`);
    return response.json();
  }

  async catchUp() {
    try {
      // Everything after the newest one this page has, oldest first, page by page.
      const fresh = [];
      for (let page = 0; page < CATCH_UP_PAGES; page++) {
        const data = await this._get({ after: this.newest, limit: CATCH_UP_PAGE });
        for (const n of data.notifications) {
          if (!this.known.has(n.id)) fresh.push(n);
          this.newest = Math.max(this.newest, n.id);
        }
        if (!data.more) break;
      }
      this.addMissed(fresh);
      // Read marks and the counter, as another tab may have changed them meanwhile.
      const current = await this._get({ limit: 20 });
      for (const n of current.notifications) if (n.read) this._markItem(n.id);
      this.setUnread(current.unread);
      this.root.dataset.live = 'ready';
    } catch (e) {
      /* offline: the next reconnect tries again */
    }
  }

  /** Notifications missed while away (oldest first): all into the list, the newest few as toasts. */
  addMissed(missed) {
    const fresh = missed.filter((n) => !this.known.has(n.id));
    fresh.forEach((n, i) => this.add(n, { toast: i >= fresh.length - CATCH_UP_TOASTS }));
  }

  onEvent(event) {
    if (event.type === 'notification') {
      if (!this.known.has(event.id)) this.add(event, { toast: true });
      if (typeof event.unread === 'number') this.setUnread(event.unread);
    } else if (event.type === 'notifications.sync') {
      // The state on (re)subscribe; after an outage of the server's own broker connection it
      // also carries what was created meanwhile ("missed"), and "more" if that did not fit.
      if (Array.isArray(event.missed)) this.addMissed(event.missed);
      if (event.more) this.catchUp();
      this.setUnread(event.unread);
    } else if (event.type === 'notifications.read') {
      if (event.ids === null) for (const item of this.root.querySelectorAll('.ln-item.ln-unread')) this._markItem(Number(item.dataset.id));
      else for (const id of event.ids) this._markItem(id);
      this.setUnread(event.unread);
    }
  }

  add(n, { toast }) {
    this.known.add(n.id);
    this.newest = Math.max(this.newest, n.id);
    const empty = this.list && this.list.querySelector('.ln-empty');
    if (empty) empty.remove();
    if (this.list) this.list.prepend(this._item(n));
    if (toast) this.toast(n);
  }

  _item(n) {
    return el('li', { class: `ln-item ln-${n.level}${n.read ? '' : ' ln-unread'}`, dataset: { id: String(n.id) } },
      el('div', { class: 'ln-title' }, n.link ? el('a', { href: n.link, 'data-read': String(n.id) }, n.title) : n.title),
      n.text ? el('div', { class: 'ln-text' }, n.text) : null,
      el('div', { class: 'ln-meta' }, el('time', { datetime: n.created }, new Date(n.created).toLocaleTimeString()),
        n.read ? null : el('button', { type: 'button', class: 'ln-read', 'data-read': String(n.id), title: 'Mark as read' }, 'Mark read')));
  }

  toast(n) {
    const node = el('div', { class: `ln-toast ln-${n.level}`, role: n.level === 'error' ? 'alert' : 'status', dataset: { id: String(n.id) } },
      el('div', { class: 'ln-toast-body' },
        el('strong', { class: 'ln-title' }, n.title),
        n.text ? el('div', { class: 'ln-text' }, n.text) : null,
        n.link ? el('a', { href: n.link, class: 'ln-link', 'data-read': String(n.id) }, n.link.includes('/download/') ? 'Download' : 'Open') : null),
      el('button', { type: 'button', class: 'ln-close', 'aria-label': 'Close and mark as read', 'data-read': String(n.id), 'data-close': '' }, '\u00d7'));
    node.addEventListener('click', (e) => this._onClick(e));
    // Escape closes the toast that has the keyboard focus (its close button marks it read).
    node.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') node.querySelector('[data-close]').click();
    });
    this.toasts.append(node);
    if (n.level === 'info' || n.level === 'success') setTimeout(() => node.remove(), TOAST_MS);
  }

  _onClick(e) {
    const target = e.target.closest('[data-read]');
    if (!target) return;
    e.stopPropagation();
    const id = Number(target.dataset.read);
    if (target.hasAttribute('data-close')) target.closest('.ln-toast').remove();
    // Links still navigate; the mark-read goes out first (over HTTP with keepalive when navigating).
    this.markRead([id], { navigating: target.tagName === 'A' });
  }

  _markItem(id) {
    const item = this.list && this.list.querySelector(`.ln-item[data-id="${id}"]`);
    if (!item) return;
    item.classList.remove('ln-unread');
    const button = item.querySelector('button.ln-read');
    if (button) button.remove();
  }

  async markRead(ids, { navigating = false } = {}) {
    for (const id of ids || []) this._markItem(id);
    if (ids === null) for (const item of this.root.querySelectorAll('.ln-item.ln-unread')) this._markItem(Number(item.dataset.id));
    const body = ids === null ? { all: true } : ids.length === 1 ? { id: ids[0] } : { ids };
    if (!navigating && this.client.state === 'connected') {
      try {
        await this.client.send('/app/notifications.read', body);
        return;
      } catch (e) {
        /* fall back to HTTP */
      }
    }
    try {
      const response = await fetch(this.readUrl, {
        method: 'POST', credentials: 'same-origin', keepalive: true,
        headers: { 'Content-Type': 'application/json', 'X-CSRFToken': this.csrf, Accept: 'application/json' },
        body: JSON.stringify(ids === null ? { all: true } : { ids }),
      });
      if (response.ok) this.setUnread((await response.json()).unread);
    } catch (e) {
      /* the server keeps it unread; it shows again on the next load */
    }
  }
}

for (const root of document.querySelectorAll('[data-live-notifications]')) {
  if (!root.dataset.bound) {
    root.dataset.bound = '1';
    window.liveNotifications = new LiveNotifications(root);
  }
}
