// A WebSocket app over HTTP/2 (RFC 8441), h2c on 127.0.0.1, on Node's own http2 server:
//   node h2_app.js PORT_FILE LOG_FILE MODE
// MODE `ws` advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, answers an extended CONNECT `200` and
// echoes every frame; `no-connect` is an h2 app without extended CONNECT; `hang` accepts the
// CONNECT and never answers. Each session ends with one JSON line in LOG_FILE: what the app
// saw (method, :protocol, path, x-weft-caller), what it received, and what it sent after the
// client's half-close. The text message `server-half-close` makes the app send `bye` and end
// its own half while it keeps reading.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http2 = require('http2');
const { frame, Reader, digest, TEXT, BINARY } = require('./wsframe');

const [portFile, logFile, mode] = process.argv.slice(2);
const server = http2.createServer({
  settings: { enableConnectProtocol: mode !== 'no-connect' },
});

server.on('stream', (stream, headers) => {
  const seen = {
    method: headers[':method'],
    protocol: headers[':protocol'] || null,
    path: headers[':path'] || null,
    authority: headers[':authority'] || null,
    callers: [].concat(headers['x-weft-caller'] || []),
    received: [],
    after_client_end: [],
    client_ended: false,
    server_ended_first: false,
  };
  stream.on('error', () => {});
  stream.on('close', () => fs.appendFileSync(logFile, JSON.stringify(seen) + '\n'));
  if (headers[':method'] !== 'CONNECT') {
    stream.respond({ ':status': 200, 'content-type': 'text/plain' });
    stream.end('plain h2\n');
    return;
  }
  if (mode === 'hang') return;
  stream.respond({ ':status': 200 });
  let writing = true;
  const reader = new Reader((op, payload) => {
    seen.received.push(digest(op, payload));
    if (!writing) return;
    if (op === TEXT && payload.toString() === 'server-half-close') {
      stream.write(frame(TEXT, Buffer.from('bye'), false));
      writing = false;
      seen.server_ended_first = true;
      stream.end();
      return;
    }
    stream.write(frame(op, payload, false));
  });
  stream.on('data', (chunk) => {
    try {
      reader.push(chunk);
    } catch (e) {
      seen.error = String(e);
      stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR);
    }
  });
  stream.on('end', () => {
    seen.client_ended = true;
    if (!writing) return;
    // The client finished sending: this direction still flows (half-close, RFC 9113 §8.5).
    const after = [Buffer.from('after-your-fin'), crypto.randomBytes(1 << 20)];
    seen.after_client_end.push(digest(TEXT, after[0]), digest(BINARY, after[1]));
    stream.write(frame(TEXT, after[0], false));
    stream.write(frame(BINARY, after[1], false));
    writing = false;
    stream.end();
  });
});

server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(portFile + '.tmp', String(server.address().port));
  fs.renameSync(portFile + '.tmp', portFile);
});
