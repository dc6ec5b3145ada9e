"""The WebSocket client of the gateway tests: the `websockets` package's own client,
unmodified, from outside the mesh over TLS (wss) to the gateway, trusting the edge CA and
sending the route's host name as SNI and Host. Prints one JSON object with what it sent and
got; the Rust test judges it.

Usage:
  ws_client.py exchange GATEWAY HOST PATH CA TOKEN
      "whoami", then text and binary messages from 1 byte to 1 MiB, each echoed; closes (1000).
  ws_client.py status GATEWAY HOST PATH CA TOKEN
      only the handshake: 101, or the refusal's status, WWW-Authenticate and x-weft-error.
GATEWAY is ip:port; TOKEN goes out as `Authorization: Bearer TOKEN` ("-": none).
"""

import asyncio
import hashlib
import json
import random
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

MAX = 2 * 1024 * 1024
SIZES = [1, 125, 126, 65535, 65536, 1024 * 1024]


def digest(msg):
    data = msg.encode() if isinstance(msg, str) else msg
    return {"kind": "text" if isinstance(msg, str) else "binary", "len": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def dial(gateway, host, path, ca, token):
    addr, port = gateway.rsplit(":", 1)
    tls = ssl.create_default_context(cafile=ca)
    headers = {} if token == "-" else {"Authorization": f"Bearer {token}"}
    # The URL names the route's host (SNI, Host); the TCP connection goes to the gateway.
    return connect(f"wss://{host}:{port}{path}", host=addr, port=int(port), ssl=tls,
                   server_hostname=host, additional_headers=headers, max_size=MAX,
                   compression=None, open_timeout=20, close_timeout=20)


async def exchange(gateway, host, path, ca, token):
    out = {"messages": []}
    async with dial(gateway, host, path, ca, token) as ws:
        out["tls"] = ws.transport.get_extra_info("ssl_object").version()
        await ws.send("whoami")
        out["whoami"] = json.loads(await ws.recv())
        rng = random.Random(23)
        for size in SIZES:
            text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(size))
            for msg in (text, rng.randbytes(size)):
                await ws.send(msg)
                got = await ws.recv()
                out["messages"].append({"sent": digest(msg), "got": digest(got)})
        await ws.close(code=1000, reason="client done")
        out["close_rcvd"] = [ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason]
    return out


async def status(gateway, host, path, ca, token):
    try:
        async with dial(gateway, host, path, ca, token):
            return {"status": 101}
    except InvalidStatus as e:
        h = e.response.headers
        return {"status": e.response.status_code, "www_authenticate": h.get("www-authenticate", ""),
                "error": h.get("x-weft-error", "")}


def main():
    mode, gateway, host, path, ca, token = sys.argv[1:7]
    if mode == "exchange":
        run = exchange(gateway, host, path, ca, token)
    elif mode == "status":
        run = status(gateway, host, path, ca, token)
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(asyncio.run(run)))


if __name__ == "__main__":
    main()
