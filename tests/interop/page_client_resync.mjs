// The pages' own STOMP client (notifications/static/notifications/stomp-client.js), run by node with
// the `ws` package as its WebSocket, against the site's /ws/stomp/ endpoint. Prints one JSON object
// per line for tests/integration/test_stompjs_ws.py:
//   {"state": "connected" | "reconnecting" | ...}
//   {"subscribe": {...SUBSCRIBE headers}}   each SUBSCRIBE it sends (after a reconnect: with since)
//   {"receipt": n}                          the server confirmed the n-th (re)subscription
//   {"message": {...event}}                 every MESSAGE
//
//   node page_client_resync.mjs WS_URL ORIGIN SESSIONID DESTINATION
//
// Nothing here asserts: the Python test owns the expected values. It runs until killed (bounded).
import WebSocket from 'ws';
import { StompClient } from '../../notifications/static/notifications/stomp-client.js';

const [url, origin, sessionid, destination] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

class SessionWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols, { headers: { Cookie: `sessionid=${sessionid}`, Origin: origin } });
  }
}

const client = new StompClient({ url, WebSocket: SessionWebSocket, reconnectMinMs: 200, reconnectMaxMs: 1000 });
const write = client._write.bind(client);
client._write = (command, headers, body) => {
  if (command === 'SUBSCRIBE') out({ subscribe: headers });
  write(command, headers, body);
};
client.addEventListener('state', (e) => out({ state: e.detail }));
let receipts = 0;
client.subscribe(destination, (frame) => out({ message: frame.json() }), { onReceipt: () => out({ receipt: ++receipts }) });
client.start();
setTimeout(() => process.exit(2), Number(process.env.SCENARIO_TIMEOUT_MS || 90000)).unref();
