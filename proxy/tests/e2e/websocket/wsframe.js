// WebSocket frames (RFC 6455 §5.2) for the HTTP/2 extended CONNECT tests: Node's http2 module
// carries the session (RFC 8441) but has no WebSocket codec, so the two test scripts share
// this small one. Frames are whole (FIN set), as the tests send them; a frame longer than
// MAX is an error rather than an unbounded buffer.
'use strict';
const crypto = require('crypto');

const MAX = 4 << 20;
const TEXT = 1;
const BINARY = 2;

function frame(opcode, payload, masked) {
  const len = payload.length;
  let head;
  if (len < 126) {
    head = Buffer.alloc(2);
    head[1] = len;
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  head[0] = 0x80 | opcode;
  if (!masked) return Buffer.concat([head, payload]);
  head[1] |= 0x80;
  const key = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, key, body]);
}

// Feeds chunks in, calls onMessage(opcode, payload) per whole frame.
class Reader {
  constructor(onMessage) {
    this.buf = Buffer.alloc(0);
    this.onMessage = onMessage;
  }
  push(chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      const masked = (b[1] & 0x80) !== 0;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        const big = b.readBigUInt64BE(2);
        if (big > BigInt(MAX)) throw new Error(`frame of ${big} bytes exceeds ${MAX}`);
        len = Number(big);
        off = 10;
      }
      const keyLen = masked ? 4 : 0;
      if (b.length < off + keyLen + len) return;
      let payload = Buffer.from(b.subarray(off + keyLen, off + keyLen + len));
      if (masked) {
        const key = b.subarray(off, off + 4);
        for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
      }
      this.buf = b.subarray(off + keyLen + len);
      this.onMessage(b[0] & 0x0f, payload);
    }
  }
}

function digest(opcode, payload) {
  return {
    kind: opcode === TEXT ? 'text' : opcode === BINARY ? 'binary' : `op${opcode}`,
    len: payload.length,
    sha256: crypto.createHash('sha256').update(payload).digest('hex'),
  };
}

module.exports = { frame, Reader, digest, TEXT, BINARY };
