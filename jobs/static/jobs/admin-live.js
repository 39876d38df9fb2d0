// The live Django admin for jobs.
//
// Change list: rows are found by the job's pk (the action checkbox's value, else the change
// link), and their status, progress, message and duration cells follow /topic/jobs.all. Rows
// still running at load also follow their own topic, whose snapshot on every (re)subscribe
// catches up with whatever happened while the socket was away. Jobs that appear meanwhile are
// announced in a banner (reloading shows them where the list's ordering and filters put them).
//
// Change page: the live widget ({% job_progress original log=True %}) is bound by job-live.js;
// here the read-only fields of the form follow the same events.
import { connection, SeqGate } from '../notifications/stomp-client.js';
import { statusLabel, formatPercent } from './job-live.js';

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;
const gate = new SeqGate();

function pkOf(row) {
  const box = row.querySelector('input.action-select');
  if (box && UUID.test(box.value)) return box.value;
  for (const a of row.querySelectorAll('a[href]')) {
    const m = a.getAttribute('href').match(UUID);
    if (m) return m[0];
  }
  return null;
}

/** "1:02:03" / "2:03" / "4.2s", like the admin's duration column. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '-';
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const s = Math.floor(seconds % 60);
  const m = Math.floor(seconds / 60) % 60;
  const h = Math.floor(seconds / 3600);
  const pad = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

function durationOf(event, now = Date.now()) {
  if (!event.started_at) return null;
  const end = event.finished_at ? Date.parse(event.finished_at) : now;
  return (end - Date.parse(event.started_at)) / 1000;
}

function cell(row, ...names) {
  for (const name of names) {
    const td = row.querySelector(`.field-${name}`);
    if (td) return td;
  }
  return null;
}

function miniBar(td, event) {
  let wrap = td.querySelector('.job-mini');
  if (!wrap) {
    td.textContent = '';
    wrap = document.createElement('span');
    wrap.className = 'job-mini';
    wrap.innerHTML = '<span class="job-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"><span class="job-bar-fill" style="display:block"></span></span><span class="job-percent"></span>';
    td.append(wrap);
  }
  const percent = event.status === 'SUCCESSFUL' ? 100 : event.progress.percent;
  const bar = wrap.querySelector('.job-bar');
  bar.classList.toggle('job-bar-indeterminate', percent === null && event.status === 'RUNNING');
  if (percent === null) bar.removeAttribute('aria-valuenow'); else bar.setAttribute('aria-valuenow', String(percent));
  wrap.querySelector('.job-bar-fill').style.width = `${percent || 0}%`;
  wrap.querySelector('.job-percent').textContent = percent === null ? (event.progress.done ? String(event.progress.done) : '') : formatPercent(percent);
  wrap.className = `job-mini job-status-${event.status.toLowerCase()}`;
}

function localTime(iso) { return iso ? new Date(iso).toLocaleString() : '-'; }

class LiveChangeList {
  constructor(table) {
    this.rows = new Map();
    this.events = new Map();
    for (const row of table.querySelectorAll('tbody tr')) {
      const pk = pkOf(row);
      if (pk) { this.rows.set(pk, row); row.dataset.jobId = pk; }
    }
    this.banner = document.querySelector('[data-live-banner]');
    this.newJobs = new Set();
    const client = connection();
    client.subscribe('/topic/jobs.all', (frame) => this.apply(frame.json()), {
      onError: () => { document.documentElement.dataset.jobsLive = 'denied'; },
    });
    for (const [pk, row] of this.rows) {
      const status = cell(row, 'status', 'status_badge', 'live_status');
      const text = status ? status.textContent.trim().toUpperCase() : '';
      if (!['SUCCESSFUL', 'DONE', 'FAILED', 'CANCELLED'].includes(text)) {
        client.subscribe(`/topic/jobs.${pk}`, (frame) => this.apply(frame.json()), { onError: () => {} });
      }
    }
    // Running jobs' durations grow between events.
    setInterval(() => this.tick(), 1000);
  }

  apply(event) {
    if (event.type !== 'job' || !gate.accept(event.id, event.seq)) return;
    const row = this.rows.get(event.id);
    if (!row) {
      this.newJobs.add(event.id);
      if (this.banner) {
        this.banner.hidden = false;
        const n = this.newJobs.size;
        this.banner.querySelector('[data-count]').textContent = `${n} new job${n === 1 ? '' : 's'}`;
      }
      return;
    }
    this.events.set(event.id, event);
    row.dataset.status = event.status;
    row.dataset.seq = String(event.seq);
    const status = cell(row, 'status', 'status_badge', 'live_status');
    if (status) {
      const label = event.cancel_requested && !event.final ? 'Cancelling' : statusLabel(event.status);
      const badge = status.querySelector('[data-field="status"], .job-status-badge');
      (badge || status).textContent = label;
      if (badge) badge.className = badge.className.replace(/\bjob-status-\w+/g, '').trim() + ` job-status-${event.status.toLowerCase()}`;
    }
    const progress = cell(row, 'progress', 'progress_bar', 'live_progress', 'percent');
    if (progress) miniBar(progress, event);
    const message = cell(row, 'message', 'short_message');
    if (message) message.textContent = event.message || '';
    const started = cell(row, 'started_at');
    if (started) started.textContent = localTime(event.started_at);
    const finished = cell(row, 'finished_at');
    if (finished) finished.textContent = localTime(event.finished_at);
    const attempts = cell(row, 'attempts');
    if (attempts) attempts.textContent = String(event.attempts);
    this.renderDuration(row, event);
    row.classList.remove('job-row-updated');
    void row.offsetWidth; // restart the flash animation
    row.classList.add('job-row-updated');
  }

  renderDuration(row, event) {
    const td = cell(row, 'duration', 'live_duration', 'run_time');
    if (td) td.textContent = formatDuration(durationOf(event));
  }

  tick() {
    for (const [pk, event] of this.events) {
      if (event.status === 'RUNNING' && !event.finished_at) this.renderDuration(this.rows.get(pk), event);
    }
  }
}

function bindChangeForm(form) {
  // The read-only fields of the change page follow the live widget's events.
  document.addEventListener('job:update', (e) => {
    const event = e.detail;
    const set = (name, value) => {
      const node = form.querySelector(`.field-${name} .readonly`);
      if (node) node.textContent = value;
    };
    set('status', event.status.charAt(0) + event.status.slice(1).toLowerCase());
    set('message', event.message || '');
    set('progress_done', String(event.progress.done));
    if (event.progress.total !== null) set('progress_total', String(event.progress.total));
    set('attempts', String(event.attempts));
    set('seq', String(event.seq));
    set('duration', formatDuration(durationOf(event)));
    if (event.started_at) set('started_at', localTime(event.started_at));
    if (event.finished_at) set('finished_at', localTime(event.finished_at));
  });
}

const table = document.querySelector('#result_list');
if (table) window.liveChangeList = new LiveChangeList(table);
const changeForm = document.querySelector('#job_form');
if (changeForm) bindChangeForm(changeForm);
