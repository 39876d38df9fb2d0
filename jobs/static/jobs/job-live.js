// Live job widgets: every element with data-job-live (rendered by {% job_progress job %}) follows
// its job over STOMP. The server rendered the state at load (data-seq); the subscription's
// snapshot and every later event are applied only when their seq is newer (SeqGate), so an
// event that arrives late, or a snapshot older than the page, never rolls the widget back.
import { connection, SeqGate } from '../notifications/stomp-client.js';

const gate = new SeqGate();
const widgets = new Map(); // job id -> [element, ...]

// The words and the rounded percentage come with each event (event.display, built by the
// server's jobs.vocabulary), so every page, the admin included, shows the same ones.
export function display(event) {
  return event.display || { label: event.status, percent: null, percent_text: '', message: event.message || '' };
}
export function statusLabel(event) { return display(event).label; }

function field(root, name) { return root.querySelector(`[data-field="${name}"]`); }

/** Apply one job event (contract 5) to one widget. */
export function render(root, event) {
  root.dataset.seq = String(event.seq);
  root.dataset.status = event.status;
  root.dataset.final = event.final ? 'true' : 'false';
  root.className = root.className.replace(/\bjob-status-\w+/g, '').trim() + ` job-status-${event.status.toLowerCase()}`;
  const shownState = display(event);
  const wasFinal = root.dataset.announced === event.status;
  const status = field(root, 'status');
  if (status) status.textContent = shownState.label;
  const percent = event.progress ? event.progress.percent : null;
  const bar = root.querySelector('[role="progressbar"]');
  if (bar) {
    const shown = event.status === 'SUCCESSFUL' ? 100 : percent;
    bar.classList.toggle('job-bar-indeterminate', shown === null && event.status === 'RUNNING');
    if (shown === null) bar.removeAttribute('aria-valuenow');
    else bar.setAttribute('aria-valuenow', String(shown));
    if (shownState.percent_text) bar.setAttribute('aria-valuetext', shownState.percent_text);
    else bar.removeAttribute('aria-valuetext');
    const fill = bar.querySelector('.job-bar-fill');
    if (fill) fill.style.width = `${shown === null ? 0 : shown}%`;
  }
  const pct = field(root, 'percent');
  if (pct) pct.textContent = shownState.percent_text;
  const counts = field(root, 'counts');
  if (counts && event.progress) counts.textContent = event.progress.total ? `${event.progress.done} / ${event.progress.total}` : (event.progress.done ? String(event.progress.done) : '');
  const message = field(root, 'message');
  if (message) message.textContent = shownState.message;
  const error = field(root, 'error');
  if (error) {
    error.textContent = event.error ? event.error.message : '';
    error.hidden = !event.error;
  }
  const result = field(root, 'result');
  if (result) {
    if (event.result_url) result.setAttribute('href', event.result_url);
    result.hidden = !event.result_url;
  }
  const cancel = root.querySelector('[data-action="cancel"]');
  if (cancel) cancel.hidden = event.final || event.cancel_requested;
  const log = field(root, 'log');
  if (log && Array.isArray(event.log)) renderLog(log, event.log);
  // Screen readers hear the end of a job once, not every progress step.
  const announce = field(root, 'announce');
  if (announce && event.final && !wasFinal) {
    announce.textContent = `${event.name}: ${shownState.label}. ${shownState.message}`;
    root.dataset.announced = event.status;
  }
  root.dispatchEvent(new CustomEvent('job:update', { bubbles: true, detail: event }));
}

// Log times as the server renders them: the ISO text's clock part (or date and clock).
export const clockOf = (iso) => (iso || '').slice(11, 19);
export const stampOf = (iso) => (iso || '').slice(0, 19).replace('T', ' ');

/** Append log entries newer than what the list shows (entries carry a running number n). */
export function renderLog(list, entries, format = clockOf) {
  let last = Number(list.dataset.lastN || 0);
  for (const entry of entries) {
    if (entry.n <= last) continue;
    const item = document.createElement('li');
    item.dataset.n = String(entry.n);
    const time = document.createElement('time');
    time.dateTime = entry.at;
    time.textContent = format(entry.at);
    item.append(time, ' ', entry.text);
    list.append(item);
    last = entry.n;
  }
  list.dataset.lastN = String(last);
  const limit = Number(list.dataset.limit || 200);
  while (list.children.length > limit) list.firstElementChild.remove();
}

function when(iso) {
  if (!iso) return '\u2014';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

// Times as the server renders them (settings.TIME_ZONE is UTC here).
/** Facts a job page lists beside the widget (<... data-job-detail="id"> with [data-fact=...] inside). */
export function renderFacts(container, event) {
  const set = (name, text) => { const n = container.querySelector(`[data-fact="${name}"]`); if (n) n.textContent = text; };
  set('status', display(event).label);
  set('started', when(event.started_at));
  set('finished', when(event.finished_at));
  set('attempts', `${event.attempts} of ${event.max_attempts}`);
}

function onEvent(event) {
  if (event.type !== 'job' || !gate.accept(event.id, event.seq)) return;
  for (const root of widgets.get(event.id) || []) render(root, event);
  for (const facts of document.querySelectorAll(`[data-job-detail="${event.id}"]`)) renderFacts(facts, event);
}

/** Follow a job: its widgets are updated by every newer event. Returns the subscription. */
export function follow(jobId) {
  return connection().subscribe(`/topic/jobs.${jobId}`, (frame) => onEvent(frame.json()), {
    onReceipt: () => { for (const root of widgets.get(jobId) || []) root.dataset.live = 'live'; },
    onError: (frame) => {
      for (const root of widgets.get(jobId) || []) root.dataset.live = 'denied';
    },
  });
}

function bindCancel(root) {
  const button = root.querySelector('[data-action="cancel"]');
  if (!button) return;
  const form = button.closest('form');
  const handler = async (e) => {
    const client = connection();
    if (client.state !== 'connected') return; // the plain form posts instead
    e.preventDefault();
    button.disabled = true;
    try {
      await client.send('/app/jobs.cancel', { job: root.dataset.jobId });
    } catch (err) {
      const error = field(root, 'error');
      if (error) { error.textContent = `Could not cancel: ${err.message}`; error.hidden = false; }
    } finally {
      button.disabled = false;
    }
  };
  if (form) form.addEventListener('submit', handler); else button.addEventListener('click', handler);
}

export function bind(root) {
  if (root.dataset.liveBound) return;
  root.dataset.liveBound = '1';
  const id = root.dataset.jobId;
  const seq = Number(root.dataset.seq || -1);
  if (seq > gate.seen(id)) gate.set(id, seq);
  if (!widgets.has(id)) {
    widgets.set(id, []);
    if (root.dataset.final !== 'true' || root.dataset.follow === 'always') follow(id);
  }
  widgets.get(id).push(root);
  bindCancel(root);
}

for (const root of document.querySelectorAll('[data-job-live]')) bind(root);
