// Feeds the page client's FrameParser, encodeFrame and SeqGate (notifications/static/notifications/
// stomp-client.js) with fixed inputs and prints what they produced as JSON, one case per key.
// Nothing here asserts: tests/browser/test_stomp_client_js.py owns the expected values.
import { FrameParser, encodeFrame, SeqGate } from '../../notifications/static/notifications/stomp-client.js';

const enc = new TextEncoder();
const show = (events) => events.map((e) => (e === 'heartbeat' ? 'heartbeat' : { command: e.command, headers: e.headers, body: e.text }));
const oneByteAtATime = (raw, version = '1.2') => {
  const parser = new FrameParser(version);
  const out = [];
  for (const byte of enc.encode(raw)) out.push(...parser.feed(new Uint8Array([byte])));
  return show(out);
};
const error = (fn) => { try { fn(); return null; } catch (e) { return e.message; } };

const stream = 'CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0\n'
  + 'MESSAGE\ndestination:/topic/a\\cb\nsubscription:s1\ncontent-length:5\n\nab\0cd\0\r\n'
  + 'MESSAGE\nsubscription:s1\nfoo:1\nfoo:2\n\nh\u00e9llo\0';
const result = {
  all_at_once: show(new FrameParser().feed(stream)),
  one_byte_at_a_time: oneByteAtATime(stream),
  incomplete: show(new FrameParser().feed('MESSAGE\ncontent-length:10\n\n12345')),
  version_10_keeps_backslashes: oneByteAtATime('MESSAGE\nx:a\\cb\n\n\0', '1.0'),
  bad_escape: error(() => new FrameParser().feed('MESSAGE\nx:a\\tb\n\n\0')),
  missing_nul_after_body: error(() => new FrameParser().feed('MESSAGE\ncontent-length:2\n\nabX')),
  encoded_send: new TextDecoder().decode(encodeFrame('SEND', { destination: '/app/a:b\nc', receipt: 'r1' }, '{"job":"x"}')),
  encoded_subscribe: new TextDecoder().decode(encodeFrame('SUBSCRIBE', { id: 'sub-1', destination: '/topic/jobs.all' })),
  encoded_connect: new TextDecoder().decode(encodeFrame('CONNECT', { 'accept-version': '1.2', host: 'a:b' })),
};
const gate = new SeqGate();
gate.set('job', 5);
result.seq_gate = [4, 5, 6, 6, 9, 7].map((seq) => gate.accept('job', seq));
process.stdout.write(JSON.stringify(result));
