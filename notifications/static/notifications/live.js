// The page API for live destinations: subscribe with a callback, send to /app/..., nothing else.
//
//   import { subscribe, send, onState } from '/static/notifications/live.js';
//
//   // Every JSON event of the destination, the snapshot first. Events about one item (`key`)
//   // that are not newer (`seq`) than one already given are dropped.
//   const sub = subscribe('/topic/orders.12', (order) => render(order), {
//     key: 'id', seq: 'seq',              // the defaults; key: null turns ordering off
//     onError: (message) => ...,          // the server refused the subscription (it is not retried)
//     onReady: () => ...,                 // the server confirmed it (again after each reconnect)
//   });
//   sub.unsubscribe();
//
//   await send('/app/orders.cancel', { order: 12 });   // resolves on the server's RECEIPT;
//                                                        // rejects with the ERROR's message
//   onState((state) => ...);                             // 'connected', 'reconnecting', ...
//
// One WebSocket per page, shared with the notifications bell and the job widgets (stomp-client.js):
// it reconnects with backoff (at once when a server goes away on purpose), resubscribes, and asks
// the server for what changed while it was away (the `since` header), so a callback sees every
// item's latest state after any outage without the page doing anything.
import { SeqGate, connection } from './stomp-client.js';

/** Subscribe to a destination; callback(event, frame) for every JSON message. */
export function subscribe(destination, callback, { key = 'id', seq = 'seq', onError = null, onReady = null } = {}) {
  const gate = new SeqGate();
  const sub = connection().subscribe(destination, (frame) => {
    let event;
    try {
      event = frame.json();
    } catch (e) {
      return; // not JSON: not for this API
    }
    if (key !== null && event !== null && typeof event === 'object' && event[key] !== undefined && event[seq] !== undefined) {
      if (!gate.accept(String(event[key]), event[seq])) return;
    }
    callback(event, frame);
  }, {
    onReceipt: onReady,
    onError: onError ? (frame) => onError(frame.headers.message || frame.text, frame) : null,
  });
  return { destination, unsubscribe: () => sub.unsubscribe() };
}

// How long send() waits for the connection when the page is (re)connecting.
const SEND_WAIT_MS = 10000;

function connected(client) {
  if (client.state === 'connected') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeEventListener('state', listener);
      reject(new Error(`not connected within ${SEND_WAIT_MS / 1000} s`));
    }, SEND_WAIT_MS);
    function listener(e) {
      if (e.detail !== 'connected') return;
      clearTimeout(timer);
      client.removeEventListener('state', listener);
      resolve();
    }
    client.addEventListener('state', listener);
  });
}

/** Send a JSON body to /app/...; resolves on the RECEIPT, rejects with the server's ERROR message.
 *  While the page is reconnecting it waits for the connection (at most SEND_WAIT_MS). */
export async function send(destination, body) {
  const client = connection();
  await connected(client);
  return client.send(destination, body === undefined ? {} : body);
}

/** Call back with the connection's state now and at every change; returns a function to stop. */
export function onState(callback) {
  const client = connection();
  const listener = (e) => callback(e.detail);
  client.addEventListener('state', listener);
  callback(client.state);
  return () => client.removeEventListener('state', listener);
}
