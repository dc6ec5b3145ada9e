// A WebSocket client over HTTP/2 (RFC 8441) on Node's own http2 client, to a sidecar's
// outbound port in h2c:
//   node h2_client.js MODE HOST:PORT AUTHORITY PATH [METHOD PROTOCOL]
// MODE `exchange`: waits for SETTINGS_ENABLE_CONNECT_PROTOCOL, opens `CONNECT :protocol
// websocket` (with a forged x-weft-caller), sends text and binary frames up to 1 MiB and
// checks each echo, then half-closes and reads what the app sends after that until its end.
// `server-half-close`: asks the app to end its half first, then sends 1 MiB on its own.
// `status`: sends METHOD with :protocol PROTOCOL (`-` for none) and reports the answer.
// Prints one JSON object; every wait is bounded (20 s in all).
'use strict';
const crypto = require('crypto');
const http2 = require('http2');
const { frame, Reader, digest, TEXT, BINARY } = require('./wsframe');

const [mode, hostPort, authority, path, method, protocol] = process.argv.slice(2);
const out = { mode };
const done = (code) => {
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(code);
};
setTimeout(() => {
  out.error = 'timeout after 20 s';
  done(3);
}, 20000).unref();

const session = http2.connect(`http://${hostPort}`);
session.on('error', (e) => {
  out.session_error = String(e);
  done(0);
});

function open(headers) {
  const req = session.request(headers, { endStream: false });
  req.on('error', (e) => {
    out.stream_error = String(e);
    out.rst_code = req.rstCode;
    done(0);
  });
  return req;
}

function status() {
  const headers = { ':method': method, ':authority': authority };
  if (method !== 'CONNECT' || protocol !== '-') {
    headers[':path'] = path;
    headers[':scheme'] = 'http';
  }
  if (protocol !== '-') headers[':protocol'] = protocol;
  let req;
  try {
    req = open(headers);
  } catch (e) {
    out.client_refused = String(e);
    return done(0);
  }
  req.on('response', (h) => {
    out.status = h[':status'];
    out.error = h['x-weft-error'] || null;
    out.flag = h['x-weft-flag'] || null;
    req.close();
    done(0);
  });
}

function session_ws(serverFirst) {
  out.enable_connect_protocol = !!session.remoteSettings.enableConnectProtocol;
  const req = open({
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': 'http',
    ':path': path,
    ':authority': authority,
    'sec-websocket-version': '13',
    'x-weft-caller': 'spiffe://weft.local/ns/default/sa/forged',
  });
  const sent = [
    [TEXT, Buffer.from(crypto.randomBytes(1 << 19).toString('hex'))],
    [BINARY, crypto.randomBytes(1 << 20)],
    [TEXT, Buffer.from('hello')],
    [BINARY, crypto.randomBytes(10)],
  ];
  out.echoes = [];
  out.after_end = [];
  let waiting = sent.length;
  const reader = new Reader((op, payload) => {
    if (waiting > 0) {
      const i = sent.length - waiting;
      out.echoes.push({ sent: digest(...sent[i]), got: digest(op, payload) });
      waiting -= 1;
      if (waiting === 0) next();
      return;
    }
    out.after_end.push({ text: op === TEXT && payload.length < 64 ? payload.toString() : null, ...digest(op, payload) });
  });
  const next = () => {
    if (serverFirst) {
      req.write(frame(TEXT, Buffer.from('server-half-close'), true));
    } else {
      out.half_closed_at_ms = Date.now() - started;
      req.end();
    }
  };
  let started;
  req.on('response', (h) => {
    started = Date.now();
    out.status = h[':status'];
    out.error = h['x-weft-error'] || null;
    if (out.status !== 200) {
      req.close();
      return done(0);
    }
    for (const [op, payload] of sent) req.write(frame(op, payload, true));
  });
  req.on('data', (chunk) => {
    try {
      reader.push(chunk);
    } catch (e) {
      out.error = String(e);
      done(1);
    }
  });
  req.on('end', () => {
    out.server_ended = true;
    if (!serverFirst) {
      out.session_ms = Date.now() - started;
      return;
    }
    // The app ended its half: this direction must still reach it.
    const last = crypto.randomBytes(1 << 20);
    out.sent_after_server_end = digest(BINARY, last);
    req.end(frame(BINARY, last, true));
  });
  req.on('close', () => {
    out.session_ms = Date.now() - started;
    out.rst_code = req.rstCode;
    // The stream is closed once its last frame is queued: let the session flush it first.
    session.close(() => done(0));
  });
}

session.once('remoteSettings', () => {
  if (mode === 'status') return status();
  if (!session.remoteSettings.enableConnectProtocol) {
    out.enable_connect_protocol = false;
    return done(0);
  }
  session_ws(mode === 'server-half-close');
});
