// The live Django admin for jobs (jobs.admin.JobAdmin's columns and read-only fields), the
// LiveModelAdmin script of JobAdmin: jobs' events carry the whole state, so it renders them itself
// rather than fetching the page again as the generic notifications/live-admin.js does.
//
// Change list: rows are found by the job's pk (the action checkbox's value, else the change
// link), and their status, progress, times and attempts cells follow /topic/jobs.all. Rows not
// finished at load also follow their own topic, whose snapshot on every (re)subscribe catches
// up with whatever happened while the socket was away. Jobs that appear meanwhile are announced
// in a banner (a reload shows them where the list's ordering and filters put them).
//
// Change page: the read-only fields (status, progress, message, times, error, the message log)
// follow the job's topic.
import { connection, SeqGate } from '../notifications/stomp-client.js';
import { display, renderLog, stampOf } from './job-live.js';

// Destinations as jobs.admin.JobAdmin declares them (LiveModelAdmin puts them in this module's URL).
const SETTINGS = new URL(import.meta.url).searchParams;
const LIST = SETTINGS.get('list') || '/topic/jobs.all';
const jobTopic = (pk) => (SETTINGS.get('object') || '/topic/jobs.{pk}').replace('{pk}', pk);
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;
const gate = new SeqGate();

/** The admin's duration format (jobs.admin._seconds): "4.2 s", "3 min 7 s", "2 h 5 min". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '\u2014';
  if (seconds < 60) return `${Math.max(0, seconds).toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.floor(seconds) % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function durationOf(event, now = Date.now()) {
  if (!event.started_at) return null;
  const end = event.finished_at ? Date.parse(event.finished_at) : now;
  return (end - Date.parse(event.started_at)) / 1000;
}

function queuedFor(event, now = Date.now()) {
  if (event.started_at) return (Date.parse(event.started_at) - Date.parse(event.enqueued_at)) / 1000;
  if (event.status === 'READY') return (now - Date.parse(event.enqueued_at)) / 1000;
  return null;
}

function localTime(iso) { return iso ? new Date(iso).toLocaleString() : '-'; }

/** Make a JobAdmin.status_display badge show an event's state, exactly as the server renders it:
 * class job-status-<jobs.vocabulary.state> ("cancelling" for a running job asked to stop), the word
 * of jobs.vocabulary.label. */
export function renderStatusBadge(badge, event) {
  const shown = display(event);
  badge.className = `job-admin-status job-status-${shown.state || event.status.toLowerCase()}`;
  badge.textContent = shown.label;
}

function pkOf(row) {
  const box = row.querySelector('input.action-select');
  if (box && UUID.test(box.value)) return box.value;
  for (const a of row.querySelectorAll('a[href]')) {
    const m = a.getAttribute('href').match(UUID);
    if (m) return m[0];
  }
  return null;
}

function cell(row, ...names) {
  for (const name of names) {
    const td = row.querySelector(`.field-${name}`);
    if (td) return td;
  }
  return null;
}

/** Update the admin's progress markup (JobAdmin.progress_display) from an event. */
export function renderAdminProgress(box, event) {
  const percent = event.status === 'SUCCESSFUL' ? 100 : event.progress.percent;
  box.dataset.seq = String(event.seq);
  box.dataset.status = event.status;
  const bar = box.querySelector('progress');
  if (bar) {
    if (percent === null) bar.removeAttribute('value'); else bar.value = percent;
  }
  const set = (name, text) => { const n = box.querySelector(`[data-field="${name}"]`); if (n) n.textContent = text; };
  set('percent', display(event).percent_text);
  const p = event.progress;
  set('counts', p.total ? `${p.done} / ${p.total}` : (p.done ? String(p.done) : ''));
  const message = display(event).message || '';
  set('message', message.length > 60 ? `${message.slice(0, 59)}\u2026` : message);
}

class LiveChangeList {
  constructor(table) {
    this.rows = new Map();
    this.events = new Map();
    for (const row of table.querySelectorAll('tbody tr')) {
      const pk = pkOf(row);
      if (!pk) continue;
      this.rows.set(pk, row);
      row.dataset.jobId = pk;
      const initial = row.querySelector('.job-admin-progress[data-status]');
      if (initial) row.dataset.status = initial.dataset.status;
      const box = row.querySelector('.job-admin-progress[data-seq]');
      if (box) gate.set(pk, Number(box.dataset.seq));
    }
    this.banner = document.querySelector('[data-live-banner]');
    this.newJobs = new Set();
    const client = connection();
    client.subscribe(LIST, (frame) => this.apply(frame.json()), {
      onError: () => { document.documentElement.dataset.jobsLive = 'denied'; },
    });
    for (const [pk, row] of this.rows) {
      const box = row.querySelector('.job-admin-progress[data-status]');
      if (!box || !['SUCCESSFUL', 'FAILED', 'CANCELLED'].includes(box.dataset.status)) {
        client.subscribe(jobTopic(pk), (frame) => this.apply(frame.json()), { onError: () => {} });
      }
    }
    // Times of unfinished jobs grow between events.
    setInterval(() => this.tick(), 1000);
  }

  apply(event) {
    if (event.type !== 'job') return;
    const row = this.rows.get(event.id);
    if (!row) {
      if (this.newJobs.has(event.id)) return;
      this.newJobs.add(event.id);
      if (this.banner) {
        const n = this.newJobs.size;
        this.banner.querySelector('[data-count]').textContent = `${n} new job${n === 1 ? '' : 's'}`;
        this.banner.hidden = false;
      }
      return;
    }
    if (!gate.accept(event.id, event.seq)) return;
    this.events.set(event.id, event);
    const statusChanged = row.dataset.status !== undefined && row.dataset.status !== event.status;
    row.dataset.status = event.status;
    row.dataset.seq = String(event.seq);
    const status = cell(row, 'status_display', 'status');
    if (status) {
      const badge = status.querySelector('.job-admin-status');
      if (badge) renderStatusBadge(badge, event); else status.textContent = display(event).label;
    }
    const progress = row.querySelector('.job-admin-progress');
    if (progress) renderAdminProgress(progress, event);
    const started = cell(row, 'started_at');
    if (started) started.textContent = localTime(event.started_at);
    const finished = cell(row, 'finished_at');
    if (finished) finished.textContent = localTime(event.finished_at);
    const attempts = cell(row, 'attempts_display', 'attempts');
    if (attempts) attempts.textContent = `${event.attempts}/${event.max_attempts}`;
    this.renderTimes(row, event);
    if (statusChanged) {
      // Flash a row when its status changes (not on every progress step: that would never stop).
      row.classList.remove('job-row-updated');
      void row.offsetWidth; // restart the animation
      row.classList.add('job-row-updated');
    }
  }

  renderTimes(row, event) {
    const run = cell(row, 'run_time', 'duration');
    if (run) run.textContent = formatDuration(durationOf(event));
    const queued = cell(row, 'queued_for');
    if (queued) queued.textContent = formatDuration(queuedFor(event));
  }

  tick() {
    for (const [pk, event] of this.events) {
      if (!event.final) this.renderTimes(this.rows.get(pk), event);
    }
  }
}

/** The change page: the read-only fields follow the job. */
function bindChangeForm(form, marker) {
  const jobId = marker.dataset.adminJob;
  gate.set(jobId, Number(marker.dataset.seq));
  const set = (name, value) => {
    const node = form.querySelector(`.field-${name} .readonly`);
    if (node) node.textContent = value;
  };
  let logList = form.querySelector('.field-log_display ol.job-log');
  if (logList && !logList.dataset.lastN) {
    const last = logList.lastElementChild;
    logList.dataset.lastN = last ? last.dataset.n : '0';
  }
  let current = null;
  const apply = (event) => {
    if (event.type !== 'job' || !gate.accept(event.id, event.seq)) return;
    current = event;
    const badge = form.querySelector('.field-status_display .job-admin-status');
    if (badge) renderStatusBadge(badge, event); else set('status', display(event).label);
    const progress = form.querySelector('.job-admin-progress');
    if (progress) renderAdminProgress(progress, event);
    set('message', event.message || '');
    set('progress_done', String(event.progress.done));
    set('progress_total', event.progress.total === null ? '-' : String(event.progress.total));
    set('attempts', String(event.attempts));
    set('seq', String(event.seq));
    set('run_time', formatDuration(durationOf(event)));
    set('queued_for', formatDuration(queuedFor(event)));
    if (event.started_at) set('started_at', localTime(event.started_at));
    if (event.finished_at) set('finished_at', localTime(event.finished_at));
    if (event.error) { set('error_type', event.error.type); set('error_message', event.error.message); }
    if (!logList && event.log && event.log.length) {
      // The job had no log at load (the admin shows a dash): put a list in its place.
      const holder = form.querySelector('.field-log_display .readonly');
      if (holder) {
        holder.textContent = '';
        logList = document.createElement('ol');
        logList.className = 'job-log';
        logList.dataset.field = 'log';
        holder.append(logList);
      }
    }
    if (logList) renderLog(logList, event.log || [], stampOf);
    form.dataset.status = event.status;
  };
  connection().subscribe(jobTopic(jobId), (frame) => apply(frame.json()));
  setInterval(() => {
    if (current && !current.final) {
      set('run_time', formatDuration(durationOf(current)));
      set('queued_for', formatDuration(queuedFor(current)));
    }
  }, 1000);
}

const table = document.querySelector('#result_list');
if (table) window.liveChangeList = new LiveChangeList(table);
const changeForm = document.querySelector('#job_form');
const marker = document.querySelector('[data-admin-job]');
if (changeForm && marker) bindChangeForm(changeForm, marker);
