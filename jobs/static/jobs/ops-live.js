// The admin's live operations pages, fed by /topic/ops.overview (jobs.ops_live): the Workers
// change list (state, heartbeat age, running jobs and counts of each row) and the Overview
// dashboard (jobs per state, finished per minute over the last hour, queues, slowest tasks,
// workers). The page is drawn by the server at load; each overview event redraws it, the newest
// (generated_at) winning. The first message of the subscription is the current overview, and
// it comes again after a reconnect, so a page that was away catches up at once.
import { connection } from '../notifications/stomp-client.js';

// The chart's geometry: jobs.ops_admin.chart_bars draws the same at load.
const CHART_HEIGHT = 110;
const CHART_STEP = 10;
const SVG = 'http://www.w3.org/2000/svg';
let newest = '';

function text(parent, tag, value, className) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (className) el.className = className;
  parent.appendChild(el);
  return el;
}

function title(word) {
  return word.charAt(0) + word.slice(1).toLowerCase();
}

function fillTable(root, field, rows, empty, cells) {
  const body = root.querySelector(`[data-field="${field}"] tbody`);
  if (!body) return;
  body.replaceChildren();
  if (!rows.length) {
    const row = document.createElement('tr');
    const cell = text(row, 'td', empty);
    cell.colSpan = body.parentElement.querySelectorAll('th').length;
    body.appendChild(row);
    return;
  }
  for (const item of rows) {
    const row = document.createElement('tr');
    for (const [value, className] of cells(item)) text(row, 'td', value, className);
    body.appendChild(row);
  }
}

/** Bars for the per-minute chart: succeeded stacked on failed, bottom-aligned, like the server's. */
export function chartBars(perMinute) {
  const peak = Math.max(1, ...perMinute.map((m) => m.succeeded + m.failed));
  return {
    peak,
    bars: perMinute.map((m, n) => {
      const failedH = CHART_HEIGHT * m.failed / peak;
      const okH = CHART_HEIGHT * m.succeeded / peak;
      return { x: n * CHART_STEP, failedY: 120 - failedH, failedH, okY: 120 - failedH - okH, okH,
        label: `${m.minute.slice(11, 16)} UTC: ${m.succeeded} succeeded, ${m.failed} failed` };
    }),
  };
}

function drawChart(root, perMinute) {
  const svg = root.querySelector('[data-field="chart"]');
  if (!svg) return;
  const { peak, bars } = chartBars(perMinute);
  svg.replaceChildren();
  for (const b of bars) {
    const g = document.createElementNS(SVG, 'g');
    const t = document.createElementNS(SVG, 'title');
    t.textContent = b.label;
    g.appendChild(t);
    for (const [cls, y, h] of [['ops-ok', b.okY, b.okH], ['ops-failed', b.failedY, b.failedH]]) {
      const r = document.createElementNS(SVG, 'rect');
      r.setAttribute('class', cls);
      r.setAttribute('x', b.x);
      r.setAttribute('y', y.toFixed(1));
      r.setAttribute('width', 8);
      r.setAttribute('height', h.toFixed(1));
      g.appendChild(r);
    }
    svg.appendChild(g);
  }
  const peakEl = root.querySelector('[data-field="peak"]');
  if (peakEl) peakEl.textContent = String(peak);
}

function drawOverview(root, o) {
  const stamp = root.querySelector('[data-field="generated_at"]');
  if (stamp) { stamp.dateTime = o.generated_at; stamp.textContent = o.generated_at.slice(0, 19); }
  for (const [status, n] of Object.entries(o.states)) {
    const el = root.querySelector(`[data-state="${status}"]`);
    if (el) el.textContent = String(n);
  }
  drawChart(root, o.per_minute);
  fillTable(root, 'queues', o.queues, 'No job is waiting.',
    (q) => [[q.queue], [String(q.depth)], [`${q.oldest_seconds} s`]]);
  fillTable(root, 'slowest', o.slowest, 'No job finished in the last hour.',
    (t) => [[t.task], [String(t.runs)], [`${t.avg_seconds} s`], [`${t.max_seconds} s`]]);
  fillTable(root, 'workers', o.workers, 'No worker has run yet.',
    (w) => [[w.id], [title(w.state), `worker-state worker-state-${w.state.toLowerCase()}`], [`${w.heartbeat_age} s ago`],
      [String(w.running.length)], [String(w.succeeded)], [String(w.failed)]]);
}

function ago(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function drawWorkers(root, o) {
  const shown = new Set();
  for (const w of o.workers) {
    const cells = document.querySelectorAll(`[data-worker="${CSS.escape(w.id)}"]`);
    if (!cells.length) continue;
    shown.add(w.id);
    const alive = w.state === 'RUNNING' || w.state === 'STOPPING';
    for (const cell of cells) {
      const field = cell.dataset.field;
      if (field === 'state') {
        cell.textContent = title(w.state);
        cell.className = `worker-state worker-state-${w.state.toLowerCase()}`;
      } else if (field === 'heartbeat') cell.textContent = alive ? ago(w.heartbeat_age) : '\u2014';
      else if (field === 'running') cell.textContent = String(w.running.length);
      else if (field === 'succeeded' || field === 'failed') cell.textContent = String(w[field]);
    }
  }
  const fresh = o.workers.filter((w) => !shown.has(w.id) && (w.state === 'RUNNING' || w.state === 'STOPPING'));
  const banner = document.querySelector('[data-ops-new-workers]');
  if (banner) {
    banner.hidden = fresh.length === 0;
    banner.querySelector('[data-count]').textContent = fresh.length === 1 ? '1 worker' : `${fresh.length} workers`;
  }
}

export function start() {
  const root = document.querySelector('[data-ops-live]');
  if (!root) return;
  const draw = root.dataset.opsLive === 'overview' ? drawOverview : drawWorkers;
  connection().subscribe(root.dataset.destination, (frame) => {
    const o = frame.json();
    if (!o || o.type !== 'jobs.overview' || o.generated_at < newest) return;
    newest = o.generated_at;
    draw(root, o);
    document.documentElement.dataset.opsLive = o.generated_at;
  }, { onError: () => { document.documentElement.dataset.opsLive = 'denied'; } });
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
