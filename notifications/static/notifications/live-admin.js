// The live Django admin of any model (notifications.live_admin.LiveModelAdmin adds this module).
//
// Its settings come in the module's own URL: list (the destination of every object's events),
// object (one object's, "{pk}" standing for its primary key), key (the event field holding the
// primary key) and seq (the field ordering an object's events).
//
// Change list: an event about an object shown on the page makes the page fetch itself again
// (at most one fetch at a time, the next one right after it if more events came) and swap in the
// changed rows' cells as Django renders them; the action checkboxes, and so the selection, stay.
// Events about other objects are counted in a banner. Change form: read-only fields are swapped
// in from the fetched page; a changed editable field only raises a banner, so nothing typed is
// lost. After a reconnect the page refreshes once (the database is the truth).
import { subscribe } from './live.js';

const params = new URL(import.meta.url).searchParams;
const LIST = params.get('list') || null;
const OBJECT = params.get('object') || null;
const KEY = params.get('key') || 'id';
const SEQ = params.get('seq') || null;
// Fetches of the page are at least this far apart, however fast events come.
const MIN_REFRESH_MS = 300;

// django.contrib.admin.utils.quote: characters with a meaning in URLs are written _XX in pks.
export function unquote(text) {
  return text.replace(/_([0-9A-F]{2})/g, (m, hex) => String.fromCharCode(parseInt(hex, 16)));
}

const CHANGE_URL = /\/([^/]+)\/change\/(?:\?.*)?$/;

function pkOfRow(row) {
  const box = row.querySelector('input.action-select');
  if (box) return box.value;
  for (const a of row.querySelectorAll('a[href]')) {
    const m = new URL(a.getAttribute('href'), window.location.href).pathname.match(CHANGE_URL);
    if (m) return unquote(m[1]);
  }
  return null;
}

/** Calls refresh() for a burst of requests once, and once more if requests came during it. */
class Refresher {
  constructor(refresh) {
    this.refresh = refresh;
    this.running = false;
    this.again = false;
  }

  request() {
    if (this.running) { this.again = true; return; }
    this.running = true;
    this._run();
  }

  async _run() {
    do {
      this.again = false;
      const started = Date.now();
      try {
        await this.refresh();
      } catch (e) {
        console.warn('live admin: refresh failed', e); // eslint-disable-line no-console
      }
      const wait = MIN_REFRESH_MS - (Date.now() - started);
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    } while (this.again);
    this.running = false;
  }
}

async function fetchPage() {
  const response = await fetch(window.location.href, { credentials: 'same-origin', headers: { Accept: 'text/html' } });
  if (!response.ok) throw new Error(`${window.location.pathname}: ${response.status}`);
  return new DOMParser().parseFromString(await response.text(), 'text/html');
}

function banner(before, text) {
  let node = document.querySelector('[data-live-admin-banner]');
  if (!node) {
    node = document.createElement('p');
    node.className = 'live-admin-banner';
    node.dataset.liveAdminBanner = '';
    node.setAttribute('role', 'status');
    before.parentNode.insertBefore(node, before);
  }
  node.textContent = '';
  const reload = document.createElement('a');
  reload.href = '';
  reload.textContent = 'Reload';
  node.append(`${text} `, reload, ' to see them.');
  return node;
}

/** "<text>", with a dot that is green while the page is connected (as the jobs admin's). */
function liveLine(before, text) {
  const node = document.createElement('p');
  node.className = 'help live-admin-state';
  const dot = document.createElement('span');
  dot.className = 'live-admin-dot';
  dot.setAttribute('aria-hidden', 'true');
  node.append(dot, text);
  before.parentNode.insertBefore(node, before);
  return node;
}

class LiveChangeList {
  constructor(table) {
    this.table = table;
    this.anchor = table.closest('.results') || table;
    liveLine(this.anchor, 'This list updates live.');
    this.others = new Set();
    this.refresher = new Refresher(() => this.refresh());
    let ready = 0;
    subscribe(LIST, (event) => this.onEvent(event), {
      key: KEY, seq: SEQ,
      onReady: () => {
        table.dataset.live = 'live';
        if (ready++ > 0) this.refresher.request(); // back after a reconnect: catch up
      },
      onError: () => { table.dataset.live = 'denied'; },
    });
  }

  rows() {
    const rows = new Map();
    for (const row of this.table.querySelectorAll('tbody tr')) {
      const pk = pkOfRow(row);
      if (pk !== null) rows.set(pk, row);
    }
    return rows;
  }

  onEvent(event) {
    if (event === null || typeof event !== 'object' || event[KEY] === undefined) return;
    const pk = String(event[KEY]);
    if (this.rows().has(pk)) {
      this.refresher.request();
    } else if (!this.others.has(pk)) {
      this.others.add(pk);
      const n = this.others.size;
      banner(this.anchor, `${n} other ${n === 1 ? 'object' : 'objects'} changed or added since this page was loaded.`);
    }
  }

  async refresh() {
    const fresh = (await fetchPage()).querySelector('#result_list');
    if (!fresh) return;
    const current = this.rows();
    for (const row of fresh.querySelectorAll('tbody tr')) {
      const pk = pkOfRow(row);
      const mine = pk !== null ? current.get(pk) : null;
      if (!mine) continue;
      const cells = [...row.children];
      const ours = [...mine.children];
      if (cells.length !== ours.length) continue; // another column set: leave it to a reload
      let changed = false;
      cells.forEach((cell, i) => {
        if (ours[i].classList.contains('action-checkbox') || ours[i].innerHTML === cell.innerHTML) return;
        ours[i].innerHTML = cell.innerHTML;
        changed = true;
      });
      if (changed) {
        mine.classList.remove('live-admin-updated');
        void mine.offsetWidth; // restart the highlight
        mine.classList.add('live-admin-updated');
        mine.dispatchEvent(new CustomEvent('live-admin:update', { bubbles: true, detail: { pk } }));
      }
    }
  }
}

class LiveChangeForm {
  constructor(form, pk) {
    this.form = form;
    this.pk = pk;
    this.refresher = new Refresher(() => this.refresh());
    const destination = OBJECT ? OBJECT.replace('{pk}', pk) : LIST;
    let ready = 0;
    subscribe(destination, (event) => {
      if (event !== null && typeof event === 'object' && String(event[KEY]) === pk) this.refresher.request();
    }, {
      key: KEY, seq: SEQ,
      onReady: () => {
        form.dataset.live = 'live';
        if (ready++ > 0) this.refresher.request();
      },
      onError: () => { form.dataset.live = 'denied'; },
    });
  }

  async refresh() {
    const fresh = (await fetchPage()).getElementById(this.form.id);
    if (!fresh) return;
    let edited = false;
    for (const field of fresh.querySelectorAll('.readonly')) {
      const row = field.closest('[class*="field-"]');
      const name = row && [...row.classList].find((c) => c.startsWith('field-'));
      const mine = name && this.form.querySelector(`.${name} .readonly`);
      if (mine && mine.innerHTML !== field.innerHTML) mine.innerHTML = field.innerHTML;
    }
    for (const input of fresh.querySelectorAll('input[name], textarea[name], select[name]')) {
      const mine = this.form.querySelector(`[name="${CSS.escape(input.name)}"]`);
      if (!mine || mine.type === 'hidden' || input.type === 'hidden') continue;
      const server = input.type === 'checkbox' ? String(input.checked) : (input.tagName === 'SELECT'
        ? [...input.options].filter((o) => o.selected).map((o) => o.value).join(',') : input.value);
      const loaded = mine.type === 'checkbox' ? String(mine.defaultChecked) : (mine.tagName === 'SELECT'
        ? [...mine.options].filter((o) => o.defaultSelected).map((o) => o.value).join(',') : mine.defaultValue);
      if (server !== loaded) edited = true;
    }
    this.form.dataset.liveVersion = String(Number(this.form.dataset.liveVersion || 0) + 1);
    if (edited) banner(this.form, 'This object was changed since you opened it.');
  }
}

const table = document.querySelector('#result_list');
if (table && LIST) window.liveChangeList = new LiveChangeList(table);
const changeForm = document.querySelector('#content-main form[id$="_form"]');
const match = window.location.pathname.match(CHANGE_URL);
if (changeForm && match && (OBJECT || LIST)) window.liveChangeForm = new LiveChangeForm(changeForm, unquote(match[1]));
