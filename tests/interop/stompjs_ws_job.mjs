// @stomp/stompjs over WebSocket (the `ws` package) against the site's /ws/stomp/ endpoint.
// Prints one JSON object per line on stdout, for tests/integration/test_stompjs_ws.py to check:
//   {"connected": {...CONNECTED headers}, "protocol": "v12.stomp"}
//   {"message": {...job event}, "headers": {...}}     one per MESSAGE, in arrival order
//   {"error": {...ERROR headers}, "body": "..."}      a STOMP ERROR frame
//   {"done": true} once a final job event arrived, or {"timeout": true}
//
//   node stompjs_ws_job.mjs WS_URL ORIGIN SESSIONID DESTINATION
//
// Nothing here asserts: the Python test owns the expected values. Every wait is bounded.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

const [url, origin, sessionid, destination] = process.argv.slice(2);
const TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 60000);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

let socket = null;
const client = new Client({
  webSocketFactory: () => {
    socket = new WebSocket(url, ['v12.stomp', 'v11.stomp', 'v10.stomp'], {
      headers: { Cookie: `sessionid=${sessionid}`, Origin: origin },
    });
    return socket;
  },
  heartbeatIncoming: 10000,
  heartbeatOutgoing: 10000,
  reconnectDelay: 0,
  onConnect: (frame) => {
    out({ connected: frame.headers, protocol: socket.protocol });
    client.subscribe(destination, (message) => {
      const event = JSON.parse(message.body);
      out({ message: event, headers: message.headers });
      if (event.final) {
        out({ done: true });
        client.deactivate().then(() => process.exit(0));
      }
    });
  },
  onStompError: (frame) => {
    out({ error: frame.headers, body: frame.body });
    client.deactivate().then(() => process.exit(0));
  },
  onWebSocketClose: (event) => {
    out({ closed: event.code });
  },
});

setTimeout(() => { out({ timeout: true }); process.exit(2); }, TIMEOUT_MS).unref();
client.activate();
