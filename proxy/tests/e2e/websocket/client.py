"""The WebSocket client of the upgrade tests: the `websockets` package's own client,
unmodified, driven through a sidecar's outbound port (it connects there and sends the mesh
service's name as Host), or, with PROXY `-`, straight to ws://HOST/PATH with no proxy at all
(the capture tests: the pod's rules take it to the sidecar). Prints one JSON object with what it sent and got; the Rust test
judges it.

Usage:
  client.py exchange PROXY HOST PATH HOLD_SECS FORGED_CALLER
      "whoami", then text and binary messages from 1 byte to 1 MiB, each echoed; holds the
      session HOLD_SECS; closes (1000). FORGED_CALLER goes out as x-weft-caller.
  client.py server-close PROXY HOST PATH
      one echo, then asks the app to close (4000) and reports the close it got.
  client.py status PROXY HOST PATH
      only the handshake: 101, or the refusal's status and x-weft-error, or, when no HTTP
      answer came (the connection was closed or reset), "refused" with the error.
"""

import asyncio
import hashlib
import json
import random
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

MAX = 2 * 1024 * 1024
SIZES = [1, 125, 126, 65535, 65536, 1024 * 1024]


def digest(msg):
    data = msg.encode() if isinstance(msg, str) else msg
    return {"kind": "text" if isinstance(msg, str) else "binary", "len": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def dial(proxy, host, path, headers=None):
    opts = {"additional_headers": headers, "max_size": MAX, "compression": None,
            "open_timeout": 20, "close_timeout": 20}
    if proxy != "-":
        addr, port = proxy.rsplit(":", 1)
        opts.update(host=addr, port=int(port))
    return connect(f"ws://{host}{path}", **opts)


async def exchange(proxy, host, path, hold, forged):
    out = {"messages": []}
    started = time.monotonic()
    async with dial(proxy, host, path, {"x-weft-caller": forged}) as ws:
        await ws.send("whoami")
        out["whoami"] = json.loads(await ws.recv())
        rng = random.Random(7)
        for size in SIZES:
            text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(size))
            for msg in (text, rng.randbytes(size)):
                await ws.send(msg)
                got = await ws.recv()
                out["messages"].append({"sent": digest(msg), "got": digest(got)})
        await asyncio.sleep(hold)
        await ws.close(code=1000, reason="client done")
        out["close_sent"] = [ws.protocol.close_sent.code, ws.protocol.close_sent.reason]
        out["close_rcvd"] = [ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason]
    out["seconds"] = time.monotonic() - started
    return out


async def server_close(proxy, host, path):
    async with dial(proxy, host, path) as ws:
        await ws.send(b"\x00\x01before close")
        echoed = await ws.recv()
        await ws.send("close")
        try:
            await ws.recv()
            return {"error": "a message after the app closed"}
        except ConnectionClosed as e:
            return {"echoed": digest(echoed), "close_rcvd": [e.rcvd.code, e.rcvd.reason],
                    "close_sent": [e.sent.code, e.sent.reason]}


async def status(proxy, host, path):
    try:
        async with dial(proxy, host, path):
            return {"status": 101}
    except InvalidStatus as e:
        return {"status": e.response.status_code,
                "error": e.response.headers.get("x-weft-error", "")}
    except (OSError, InvalidHandshake) as e:
        return {"refused": f"{type(e).__name__}: {e}"}


def main():
    mode, proxy, host, path = sys.argv[1:5]
    if mode == "exchange":
        run = exchange(proxy, host, path, float(sys.argv[5]), sys.argv[6])
    elif mode == "server-close":
        run = server_close(proxy, host, path)
    elif mode == "status":
        run = status(proxy, host, path)
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(asyncio.run(run)))


if __name__ == "__main__":
    main()
