// Runs one interoperability scenario with @stomp/stompjs over TCP (@stomp/tcp-wrapper) and
// prints one JSON object on stdout: what the client saw, for the pytest side to check.
//
//   node stompjs_scenario.mjs SCENARIO HOST PORT [LOGIN PASSCODE] [DESTINATION-SUFFIX]
//
// Nothing here asserts: the Python test owns the expected values. Every wait is bounded
// (SCENARIO_TIMEOUT_MS); on a timeout the script still prints what it saw, with "error".
import { Client } from '@stomp/stompjs';
import { TCPWrapper } from '@stomp/tcp-wrapper';

const [scenario, host, portText, login = '', passcode = '', suffixArg] = process.argv.slice(2);
const port = Number(portText);
const suffix = suffixArg || `${process.pid}.${Date.now()}`;
const SCENARIO_TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 10000);

const result = { scenario };
const debugLines = [];

function finish(code = 0) {
  result.debug_tail = debugLines.slice(-15);
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(code);
}

const watchdog = setTimeout(() => {
  result.error = `timeout after ${SCENARIO_TIMEOUT_MS} ms`;
  finish(2);
}, SCENARIO_TIMEOUT_MS);
watchdog.unref();

function headersOf(frameOrMessage) {
  return { ...frameOrMessage.headers };
}

// A connected client, resolved on CONNECTED; a STOMP ERROR or a socket close before that rejects.
function connect(extra = {}) {
  return new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory: () => new TCPWrapper(host, port),
      connectHeaders: login ? { login, passcode, host: '/' } : { host: '/' },
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      debug: line => debugLines.push(line.slice(0, 300)),
      ...extra,
    });
    client.onConnect = frame => resolve({ client, connected: frame });
    client.onStompError = frame => {
      result.stomp_error = { headers: headersOf(frame), body: frame.body };
      reject(new Error(`STOMP ERROR: ${frame.headers.message}`));
    };
    client.onWebSocketClose = () => reject(new Error('socket closed before CONNECTED'));
    client.activate();
  });
}

// Collects messages of one subscription; waitFor(n) resolves once n have arrived.
class Inbox {
  constructor() {
    this.messages = [];
    this.waiters = [];
  }
  push(message) {
    this.messages.push(message);
    this.waiters = this.waiters.filter(([n, resolve]) => {
      if (this.messages.length >= n) {
        resolve(this.messages);
        return false;
      }
      return true;
    });
  }
  waitFor(n) {
    if (this.messages.length >= n) return Promise.resolve(this.messages);
    return new Promise(resolve => this.waiters.push([n, resolve]));
  }
  bodies() {
    return this.messages.map(m => m.body);
  }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

function subscribe(client, destination, headers = {}) {
  const inbox = new Inbox();
  const subscription = client.subscribe(destination, m => inbox.push(m), headers);
  return { inbox, subscription };
}

// Published to a destination by the subscriber itself after subscribing: once it is back,
// every message that was going to arrive before it has arrived (FIFO per destination).
async function drainWithSentinel(client, inbox, destination) {
  const before = inbox.messages.length;
  client.publish({ destination, body: 'sentinel' });
  for (let i = 0; i < 200; i++) {
    if (inbox.messages.slice(before).some(m => m.body === 'sentinel')) break;
    await sleep(10);
  }
  await sleep(200);  // a short grace for anything arriving out of order, which would be a bug
  return inbox.bodies().filter(b => b !== 'sentinel');
}

const scenarios = {
  // Topic: custom headers (one with a colon, which 1.2 escapes) and a UTF-8 body arrive intact.
  // No backslash in a value: stompjs 7.5.0 unescapes \\c wrongly (it replaces \c before \\).
  async topic() {
    const { client, connected } = await connect();
    result.connected = headersOf(connected);
    const destination = `/topic/interop.topic.${suffix}`;
    const { inbox } = subscribe(client, destination);
    await receiptFor(client, destination);
    client.publish({
      destination,
      body: 'héllo\nwörld ✓',
      headers: { 'content-type': 'text/plain;charset=utf-8', 'x-trace': 'a:b', 'x-empty': '' },
    });
    const [message] = await inbox.waitFor(1);
    result.message = { headers: headersOf(message), body: message.body };
    await client.deactivate();
  },

  // A binary body containing NUL bytes (sent with content-length) arrives byte for byte.
  async binary() {
    const { client } = await connect();
    const destination = `/topic/interop.binary.${suffix}`;
    const { inbox } = subscribe(client, destination);
    await receiptFor(client, destination);
    const body = new Uint8Array(256);
    for (let i = 0; i < 256; i++) body[i] = i;
    client.publish({ destination, binaryBody: body, headers: { 'content-type': 'application/octet-stream' } });
    const [message] = await inbox.waitFor(1);
    result.body_hex = Buffer.from(message.binaryBody).toString('hex');
    result.content_length = message.headers['content-length'];
    await client.deactivate();
  },

  // Queue: messages sent before any consumer exists are held, then delivered in order.
  async queue() {
    const destination = `/queue/interop.queue.${suffix}`;
    const producer = (await connect()).client;
    for (const body of ['one', 'two', 'three']) producer.publish({ destination, body });
    await receiptFor(producer, destination, 'SEND');
    await producer.deactivate();
    const { client } = await connect();
    const { inbox } = subscribe(client, destination);
    await inbox.waitFor(3);
    result.bodies = inbox.bodies();
    result.message_headers = headersOf(inbox.messages[0]);
    await client.deactivate();
  },

  // ack:client is cumulative: acking the 2nd message acks the 1st; the 3rd comes back.
  async 'ack-client'() {
    await ackScenario('client', messages => [messages[1]]);
  },

  // ack:client-individual acks only the named message: the unacked 2nd comes back.
  async 'ack-client-individual'() {
    await ackScenario('client-individual', messages => [messages[0], messages[2]]);
  },

  // RECEIPT for SUBSCRIBE, SEND and UNSUBSCRIBE, each answering its own receipt id.
  async receipts() {
    const { client } = await connect();
    const destination = `/queue/interop.receipts.${suffix}`;
    const seen = [];
    client.onUnhandledReceipt = frame => seen.push(`unexpected:${frame.headers['receipt-id']}`);
    const wait = id => new Promise(resolve => client.watchForReceipt(id, frame => {
      seen.push(frame.headers['receipt-id']);
      resolve();
    }));
    const subscribed = wait('r-subscribe');
    const { subscription } = subscribe(client, destination, { receipt: 'r-subscribe' });
    await subscribed;
    const sent = wait('r-send');
    client.publish({ destination, body: 'x', headers: { receipt: 'r-send' } });
    await sent;
    const unsubscribed = wait('r-unsubscribe');
    subscription.unsubscribe({ receipt: 'r-unsubscribe' });
    await unsubscribed;
    result.receipts = seen;
    await client.deactivate();
  },

  // BEGIN/COMMIT delivers at commit time; BEGIN/ABORT delivers nothing.
  async transaction() {
    const { client } = await connect();
    const destination = `/topic/interop.tx.${suffix}`;
    const { inbox } = subscribe(client, destination);
    await receiptFor(client, destination);
    const committed = client.begin('tx-commit');
    client.publish({ destination, body: 'in-committed-tx', headers: { transaction: committed.id } });
    client.publish({ destination, body: 'outside-1' });
    await inbox.waitFor(1);
    result.before_commit = inbox.bodies();
    committed.commit();
    await inbox.waitFor(2);
    const aborted = client.begin('tx-abort');
    client.publish({ destination, body: 'in-aborted-tx', headers: { transaction: aborted.id } });
    aborted.abort();
    client.publish({ destination, body: 'outside-2' });
    await inbox.waitFor(3);
    await receiptFor(client, destination, 'SEND');
    await sleep(100);
    result.bodies = inbox.bodies();
    await client.deactivate();
  },

  // Heart-beats negotiated both ways at 500 ms (or what the broker asks): pings flow both
  // ways over an idle two seconds or more, and the connection is still usable afterwards.
  // Three missed periods before giving up: node's timers slip on a loaded machine.
  async heartbeat() {
    const { client, connected } = await connect({
      heartbeatIncoming: 500, heartbeatOutgoing: 500, heartbeatToleranceMultiplier: 3,
    });
    result.connected_heart_beat = connected.headers['heart-beat'];
    let lost = false;
    client.onHeartbeatLost = () => { lost = true; };
    const [sx, sy] = connected.headers['heart-beat'].split(',').map(Number);
    const idle = Math.min(5000, Math.max(2000, 4 * Math.max(sx, sy, 500)));
    const startDebug = debugLines.length;
    await sleep(idle);
    const lines = debugLines.slice(startDebug);
    result.pongs_received = lines.filter(l => l.includes('<<< PONG')).length;
    result.pings_sent = lines.filter(l => l.includes('>>> PING')).length;
    result.idle_ms = idle;
    result.heartbeat_lost = lost;
    const destination = `/topic/interop.hb.${suffix}`;
    const { inbox } = subscribe(client, destination);
    await receiptFor(client, destination);
    client.publish({ destination, body: 'still-alive' });
    await inbox.waitFor(1);
    result.after_idle = inbox.bodies();
    await client.deactivate();
  },

  // CONNECT refused (a wrong passcode): the broker's ERROR frame reaches onStompError.
  async 'bad-login'() {
    try {
      const { client } = await connect();
      result.connected = true;
      await client.deactivate();
    } catch (error) {
      result.connected = false;
      result.rejection = String(error.message);
    }
  },

  // DISCONNECT with a receipt comes after everything sent before it was handled: 200 messages
  // sent back to back to a queue, then DISCONNECT; a new consumer finds all 200, in order.
  async disconnect() {
    const destination = `/queue/interop.disconnect.${suffix}`;
    const producer = (await connect()).client;
    let disconnectReceipt = null;
    producer.onDisconnect = frame => { disconnectReceipt = frame.headers['receipt-id'] || null; };
    for (let i = 0; i < 200; i++) producer.publish({ destination, body: `m${i}` });
    await producer.deactivate();
    result.disconnect_receipt_seen = disconnectReceipt !== null;
    const { client } = await connect();
    const { inbox } = subscribe(client, destination);
    await inbox.waitFor(200);
    const bodies = inbox.bodies();
    result.count = bodies.length;
    result.in_order = bodies.every((b, i) => b === `m${i}`);
    await client.deactivate();
  },
};

// A RECEIPT on this connection: every frame sent on it earlier was handled by the broker.
// kind SEND probes with a SEND to a private topic, SUBSCRIBE with a throwaway subscription.
function receiptFor(client, destination, kind = 'SUBSCRIBE') {
  const id = `sync-${Math.random().toString(36).slice(2)}`;
  const probe = `/topic/interop.sync.${suffix}`;
  return new Promise(resolve => {
    if (kind === 'SEND') {
      client.watchForReceipt(id, () => resolve());
      client.publish({ destination: probe, body: '', headers: { receipt: id } });
    } else {
      let sub = null;
      client.watchForReceipt(id, () => { sub.unsubscribe(); resolve(); });
      sub = client.subscribe(probe, () => {}, { receipt: id });
    }
  });
}

async function ackScenario(ackMode, toAck) {
  const destination = `/queue/interop.${ackMode}.${suffix}`;
  const first = (await connect()).client;
  for (const body of ['one', 'two', 'three']) first.publish({ destination, body });
  const { inbox } = subscribe(first, destination, { ack: ackMode, 'prefetch-count': '10' });
  const messages = await inbox.waitFor(3);
  result.first_bodies = inbox.bodies();
  result.first_ack_header_present = messages.every(m => Boolean(m.headers.ack || m.headers['message-id']));
  for (const message of toAck(messages)) message.ack();
  await first.deactivate();  // leaves with the rest unacknowledged
  const { client } = await connect();
  const second = subscribe(client, destination, { ack: 'auto' });
  // The first client's messages go back to the queue when the broker has processed its leaving,
  // which may be after this subscription: wait (bounded) for the first before the sentinel.
  await Promise.race([second.inbox.waitFor(1), sleep(5000)]);
  result.redelivered = await drainWithSentinel(client, second.inbox, destination);
  result.redelivered_headers = second.inbox.messages.filter(m => m.body !== 'sentinel').map(headersOf);
  await client.deactivate();
}

if (!scenarios[scenario]) {
  result.error = `unknown scenario ${scenario}; known: ${Object.keys(scenarios).join(', ')}`;
  finish(2);
}

scenarios[scenario]().then(
  () => finish(0),
  error => {
    result.error = String(error && error.message ? error.message : error);
    finish(1);
  },
);
