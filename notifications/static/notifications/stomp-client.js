// A small STOMP 1.2 over WebSocket client for the pages of this site (no build step, an ES module).
//
// What it does: negotiates v12.stomp/v11.stomp/v10.stomp, sends CONNECT with heart-beats, sends
// its own heart-beats and drops a silent server, parses frames (content-length, header
// unescaping, several frames per message, frames split across messages), keeps subscriptions
// across reconnects (exponential backoff with full jitter, then resubscribe with a `since`
// header naming, in the server's clock, the last moment it heard from the server, so the server
// sends what changed meanwhile), and offers receipts. Ordering by `seq` lives in SeqGate; the
// small page API (subscribe with a callback, send) is live.js.

const NUL = 0;
const LF = 10;
const CR = 13;
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

export const SUBPROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

// Heart-beats asked of the server and offered to it (ms). The server's silence is tolerated for
// this many of its intervals before the socket is judged dead (stompjs uses a similar margin).
const HEARTBEAT_MS = 10000;
const SILENCE_FACTOR = 2.5;
// Reconnect backoff: the delay doubles from MIN up to MAX; the actual wait is random in
// [delay/2, delay] so a restarted server is not hit by every browser at the same instant.
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 15000;
// Bounds for what a server may send us: a page never needs frames this big.
const MAX_FRAME_BYTES = 1024 * 1024;

function unescapeHeader(value, version) {
  if (version === '1.0') return value;
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c !== '\\') { out += c; continue; }
    const n = value[++i];
    if (n === 'n') out += '\n';
    else if (n === 'c') out += ':';
    else if (n === '\\') out += '\\';
    else if (n === 'r' && version === '1.2') out += '\r';
    else throw new Error(`undefined escape sequence \\${n === undefined ? '' : n} in a header`);
  }
  return out;
}

function escapeHeader(value, version, command) {
  if (version === '1.0' || command === 'CONNECT' || command === 'CONNECTED') return String(value);
  return String(value)
    .replace(/\\/g, '\\\\')
    .replace(/\r/g, version === '1.2' ? '\\r' : '\r')
    .replace(/\n/g, '\\n')
    .replace(/:/g, '\\c');
}

/** A received frame: command, headers (first value of a repeated header wins), body (Uint8Array). */
export class Frame {
  constructor(command, headers, body) {
    this.command = command;
    this.headers = headers;
    this.body = body;
  }
  get text() { return decoder.decode(this.body); }
  json() { return JSON.parse(this.text); }
}

/** Incremental frame parser: feed(bytes) returns the frames completed so far; 'heartbeat' for a bare EOL. */
export class FrameParser {
  constructor(version = '1.2') {
    this.version = version;
    this.buffer = new Uint8Array(0);
  }

  feed(chunk) {
    const bytes = typeof chunk === 'string' ? encoder.encode(chunk) : new Uint8Array(chunk);
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer, 0);
    joined.set(bytes, this.buffer.length);
    this.buffer = joined;
    const events = [];
    for (;;) {
      const event = this._next();
      if (event === null) break;
      events.push(event);
    }
    if (this.buffer.length > MAX_FRAME_BYTES) throw new Error('frame too large');
    return events;
  }

  _next() {
    const buf = this.buffer;
    if (buf.length === 0) return null;
    // EOLs between frames are heart-beats.
    if (buf[0] === LF) { this.buffer = buf.subarray(1); return 'heartbeat'; }
    if (buf[0] === CR) {
      if (buf.length < 2) return null;
      if (buf[1] === LF) { this.buffer = buf.subarray(2); return 'heartbeat'; }
      throw new Error('CR not followed by LF');
    }
    // The header block ends at the first empty line.
    let end = -1;
    let bodyStart = -1;
    for (let i = 0; i < buf.length; i++) {
      if (buf[i] !== LF) continue;
      if (i + 1 < buf.length && buf[i + 1] === LF) { end = i; bodyStart = i + 2; break; }
      if (i + 2 < buf.length && buf[i + 1] === CR && buf[i + 2] === LF) { end = i; bodyStart = i + 3; break; }
    }
    if (end < 0) return null;
    const lines = decoder.decode(buf.subarray(0, end)).split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
    const command = lines.shift();
    const raw = command === 'CONNECTED' ? '1.0' : this.version;
    const headers = {};
    for (const line of lines) {
      const colon = line.indexOf(':');
      if (colon < 0) throw new Error(`header line without a colon: ${line}`);
      const name = unescapeHeader(line.slice(0, colon), raw);
      if (!(name in headers)) headers[name] = unescapeHeader(line.slice(colon + 1), raw);
    }
    let body;
    let next;
    if ('content-length' in headers) {
      const length = Number.parseInt(headers['content-length'], 10);
      if (!Number.isFinite(length) || length < 0) throw new Error('bad content-length');
      if (buf.length < bodyStart + length + 1) return null;
      if (buf[bodyStart + length] !== NUL) throw new Error('frame body not followed by NUL');
      body = buf.slice(bodyStart, bodyStart + length);
      next = bodyStart + length + 1;
    } else {
      const nul = buf.indexOf(NUL, bodyStart);
      if (nul < 0) return null;
      body = buf.slice(bodyStart, nul);
      next = nul + 1;
    }
    this.buffer = buf.subarray(next);
    return new Frame(command, headers, body);
  }
}

/** Encode a frame to a string (always with content-length, so bodies may hold NULs). */
export function encodeFrame(command, headers = {}, body = '', version = '1.2') {
  const bodyBytes = typeof body === 'string' ? encoder.encode(body) : body;
  let head = command + '\n';
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || value === null) continue;
    head += `${escapeHeader(name, version, command)}:${escapeHeader(value, version, command)}\n`;
  }
  if (command !== 'CONNECT' && command !== 'STOMP' && command !== 'DISCONNECT' && command !== 'SUBSCRIBE' && command !== 'UNSUBSCRIBE') {
    head += `content-length:${bodyBytes.length}\n`;
  }
  const headBytes = encoder.encode(head + '\n');
  const out = new Uint8Array(headBytes.length + bodyBytes.length + 1);
  out.set(headBytes, 0);
  out.set(bodyBytes, headBytes.length);
  out[out.length - 1] = NUL;
  return out;
}

/** Keeps the newest state per key: accept(key, seq) is true only for a seq above the last accepted. */
export class SeqGate {
  constructor() { this.last = new Map(); }
  seen(key) { return this.last.has(key) ? this.last.get(key) : -1; }
  set(key, seq) { this.last.set(key, Number(seq)); }
  accept(key, seq) {
    const n = Number(seq);
    if (!Number.isFinite(n)) return false;
    if (this.last.has(key) && n <= this.last.get(key)) return false;
    this.last.set(key, n);
    return true;
  }
}

export function defaultUrl(path = '/ws/stomp/') {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${window.location.host}${path}`;
}

/**
 * The client. States: 'idle' -> 'connecting' -> 'connected' -> ('reconnecting' -> 'connecting' ...) | 'closed'.
 *
 *   const client = new StompClient({url});
 *   client.addEventListener('state', (e) => ...);          // e.detail: 'connected' | 'reconnecting' | ...
 *   const sub = client.subscribe('/topic/x', (frame) => ...); // kept across reconnects
 *   sub.unsubscribe();
 *   await client.send('/app/x', {a: 1});                    // resolves on the server's RECEIPT
 *   client.start(); client.stop();
 */
export class StompClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.url = options.url || defaultUrl();
    this.heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    this.reconnectMinMs = options.reconnectMinMs ?? RECONNECT_MIN_MS;
    this.reconnectMaxMs = options.reconnectMaxMs ?? RECONNECT_MAX_MS;
    this.connectHeaders = options.connectHeaders || {};
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.state = 'idle';
    this.version = '1.2';
    this.subscriptions = new Map(); // id -> {destination, callback, headers, onError}
    this.receipts = new Map(); // receipt id -> {resolve, reject, subscription}
    this.nextId = 1;
    this.attempt = 0;
    this.ws = null;
    this.timers = { send: null, watch: null, retry: null };
    this.lastReceived = 0;
    this.server = '';
    this.lastError = null;
    this.serverOffset = 0; // the server's clock minus ours (CONNECTED's server-time)
    this.awaySince = null; // the server's time when we last heard from it before a disconnect
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  start() {
    if (this.state !== 'idle' && this.state !== 'closed') return this;
    this._open();
    return this;
  }

  stop() {
    this._setState('closed');
    this._clearTimers();
    if (this.ws) {
      try {
        if (this.ws.readyState === 1) this._write('DISCONNECT', {});
        this.ws.close(1000);
      } catch (e) { /* already closing */ }
      this.ws = null;
    }
  }

  /**
   * Subscribe; kept across reconnects. onReceipt runs each time the server confirms the
   * (re)subscription: from then on nothing sent to the destination is missed, so it is the
   * moment to fetch whatever was sent while we were away.
   */
  subscribe(destination, callback, { headers = {}, onError = null, onReceipt = null, resync = true } = {}) {
    const id = `sub-${this.nextId++}`;
    const sub = { id, destination, callback, headers, onError, onReceipt, resync, sent: false };
    this.subscriptions.set(id, sub);
    if (this.state === 'connected') this._sendSubscribe(sub);
    return { id, destination, unsubscribe: () => this._unsubscribe(id) };
  }

  _unsubscribe(id) {
    if (!this.subscriptions.delete(id)) return;
    if (this.state === 'connected') this._write('UNSUBSCRIBE', { id });
  }

  _sendSubscribe(sub) {
    // A receipt tells us which SUBSCRIBE an ERROR frame answers (it carries our receipt-id).
    const receipt = `rcpt-${this.nextId++}`;
    this.receipts.set(receipt, {
      resolve() { if (sub.onReceipt) sub.onReceipt(); },
      reject() {},
      subscription: sub.id,
    });
    // Resubscribing after a disconnect: ask for what changed since we last heard from the server.
    const since = sub.sent && sub.resync && this.awaySince !== null ? { since: String(Math.floor(this.awaySince)) } : {};
    sub.sent = true;
    this._write('SUBSCRIBE', { ...sub.headers, ...since, id: sub.id, destination: sub.destination, ack: 'auto', receipt });
  }

  /** Send to a destination; a plain object becomes JSON. Resolves on the RECEIPT, rejects on ERROR or when not connected. */
  send(destination, body, headers = {}) {
    if (this.state !== 'connected') return Promise.reject(new Error('not connected'));
    let payload = body;
    const extra = {};
    if (body !== null && typeof body === 'object' && !(body instanceof Uint8Array)) {
      payload = JSON.stringify(body);
      extra['content-type'] = 'application/json';
    }
    const receipt = `rcpt-${this.nextId++}`;
    return new Promise((resolve, reject) => {
      this.receipts.set(receipt, { resolve, reject, subscription: null });
      this._write('SEND', { ...extra, ...headers, destination, receipt }, payload ?? '');
    });
  }

  _open() {
    this._setState('connecting');
    let ws;
    try {
      ws = new this.WebSocket(this.url, SUBPROTOCOLS);
    } catch (e) {
      this._scheduleReconnect(e);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.parser = null;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.version = { 'v10.stomp': '1.0', 'v11.stomp': '1.1', 'v12.stomp': '1.2' }[ws.protocol] || '1.2';
      this.parser = new FrameParser(this.version);
      this.lastReceived = Date.now();
      this._write('CONNECT', {
        'accept-version': '1.2,1.1,1.0',
        host: new URL(this.url).hostname,
        'heart-beat': `${this.heartbeatMs},${this.heartbeatMs}`,
        ...this.connectHeaders,
      });
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws || !this.parser) return;
      this.lastReceived = Date.now();
      let frames;
      try {
        frames = this.parser.feed(typeof event.data === 'string' ? event.data : new Uint8Array(event.data));
      } catch (e) {
        this.lastError = String(e.message || e);
        ws.close(4000);
        return;
      }
      for (const frame of frames) {
        if (frame !== 'heartbeat') this._onFrame(frame);
      }
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      if (this.parser && this.state === 'connected') this.awaySince = this.lastReceived + this.serverOffset;
      this.ws = null;
      this._clearTimers();
      for (const [, r] of this.receipts) r.reject(new Error('connection lost'));
      this.receipts.clear();
      if (this.state === 'closed') return;
      this._scheduleReconnect(event);
    };
    ws.onerror = () => { /* onclose follows and decides */ };
  }

  _scheduleReconnect(reason) {
    this._setState('reconnecting');
    let delay;
    if (reason && (reason.code === 1001 || reason.code === 1012)) {
      // The server is going away or restarting on purpose: come back at once (another process
      // takes the socket), spread over a moment so its clients do not all arrive together.
      delay = Math.random() * (this.reconnectMinMs / 2);
    } else {
      const ceiling = Math.min(this.reconnectMaxMs, this.reconnectMinMs * 2 ** this.attempt);
      this.attempt += 1;
      delay = ceiling / 2 + Math.random() * (ceiling / 2);
    }
    this.dispatchEvent(new CustomEvent('disconnect', { detail: { reason, delay } }));
    this.timers.retry = setTimeout(() => { this.timers.retry = null; this._open(); }, delay);
  }

  _clearTimers() {
    for (const name of Object.keys(this.timers)) {
      if (this.timers[name] !== null) {
        clearTimeout(this.timers[name]);
        clearInterval(this.timers[name]);
        this.timers[name] = null;
      }
    }
  }

  _write(command, headers, body = '') {
    this.ws.send(encodeFrame(command, headers, body, this.version));
  }

  _startHeartbeats(serverHeader) {
    const [sx, sy] = (serverHeader || '0,0').split(',').map((v) => Number.parseInt(v, 10) || 0);
    const ours = this.heartbeatMs;
    if (ours > 0 && sy > 0) {
      const every = Math.max(ours, sy);
      this.timers.send = setInterval(() => {
        if (this.ws && this.ws.readyState === 1) this.ws.send('\n');
      }, every);
    }
    if (ours > 0 && sx > 0) {
      const expect = Math.max(ours, sx);
      this.timers.watch = setInterval(() => {
        if (Date.now() - this.lastReceived > expect * SILENCE_FACTOR && this.ws) {
          this.lastError = 'server silent';
          this.ws.close(4001);
        }
      }, Math.min(expect, 5000));
    }
  }

  _onFrame(frame) {
    switch (frame.command) {
      case 'CONNECTED':
        this.version = frame.headers.version || (this.version === '1.0' ? '1.0' : this.version);
        this.parser.version = this.version;
        this.server = frame.headers.server || '';
        if (frame.headers['server-time']) this.serverOffset = Number(frame.headers['server-time']) - Date.now();
        this.attempt = 0;
        this._startHeartbeats(frame.headers['heart-beat']);
        this._setState('connected');
        for (const sub of this.subscriptions.values()) this._sendSubscribe(sub);
        this.dispatchEvent(new CustomEvent('connect', { detail: frame }));
        break;
      case 'MESSAGE': {
        const sub = this.subscriptions.get(frame.headers.subscription);
        if (!sub) return; // a message in flight for something we just unsubscribed
        try {
          sub.callback(frame);
        } catch (e) {
          console.error('STOMP subscriber failed', e); // eslint-disable-line no-console
        }
        break;
      }
      case 'RECEIPT': {
        const r = this.receipts.get(frame.headers['receipt-id']);
        if (r) { this.receipts.delete(frame.headers['receipt-id']); r.resolve(frame); }
        break;
      }
      case 'ERROR':
        this._onError(frame);
        break;
      default:
        break;
    }
  }

  _onError(frame) {
    this.lastError = frame.headers.message || frame.text;
    this.dispatchEvent(new CustomEvent('stomp-error', { detail: frame }));
    const receiptId = frame.headers['receipt-id'];
    const r = receiptId ? this.receipts.get(receiptId) : null;
    let denied = r && r.subscription ? this.subscriptions.get(r.subscription) : null;
    if (!denied) {
      // Servers that omit receipt-id still name the destination (our consumer does, as the issue asks).
      const named = frame.headers.destination || '';
      const text = `${frame.headers.message || ''}\n${frame.text}`;
      for (const sub of this.subscriptions.values()) {
        if (sub.destination === named || text.includes(sub.destination)) { denied = sub; break; }
      }
    }
    if (r) { this.receipts.delete(receiptId); r.reject(new Error(this.lastError)); }
    if (denied) {
      // Never resubscribe to what the server refused: that would loop through reconnects.
      this.subscriptions.delete(denied.id);
      if (denied.onError) denied.onError(frame);
    }
  }
}

let shared = null;

/** The page's one connection, shared by every live widget on it (opened on first use). */
export function connection() {
  if (shared === null) {
    const meta = document.querySelector('meta[name="stomp-url"]');
    shared = new StompClient({ url: meta ? new URL(meta.content, window.location.href).href.replace(/^http/, 'ws') : defaultUrl() });
    shared.addEventListener('state', (e) => { document.documentElement.dataset.stomp = e.detail; });
    shared.start();
    window.addEventListener('pagehide', () => shared.stop());
    // A page restored from the back/forward cache reconnects (and resubscribes, so it catches up).
    window.addEventListener('pageshow', (e) => { if (e.persisted) shared.start(); });
  }
  return shared;
}
