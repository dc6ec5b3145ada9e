"""The WebSocket app behind a sidecar in the upgrade tests: the `websockets` package's own
server, unmodified, with a handler that echoes every message (text as text, binary as binary),
answers "whoami" with what the upgrade request carried, and closes from its side on "close".

Usage: app.py PORT_FILE HANDSHAKE_LOG [HOST PORT]. It binds HOST:PORT (default 127.0.0.1 on
a port the OS picks; the capture tests bind 0.0.0.0:8080 in a pod) and writes the bound port
to PORT_FILE (atomically); each handshake it accepts appends one JSON line (path,
x-weft-caller values) to HANDSHAKE_LOG.
"""

import asyncio
import json
import os
import sys

from websockets.asyncio.server import serve

MAX = 2 * 1024 * 1024


def main():
    port_file, log_file = sys.argv[1], sys.argv[2]
    host, want = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) > 4 else ("127.0.0.1", 0)

    async def handler(ws):
        req = ws.request
        seen = {
            "path": req.path,
            "callers": req.headers.get_all("x-weft-caller"),
        }
        with open(log_file, "a", encoding="utf-8") as log:
            log.write(json.dumps(seen) + "\n")
        async for msg in ws:
            if msg == "whoami":
                await ws.send(json.dumps(seen))
            elif msg == "close":
                await ws.close(code=4000, reason="server done")
                return
            else:
                await ws.send(msg)

    async def run():
        async with serve(handler, host, want, max_size=MAX, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            tmp = port_file + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(str(port))
            os.rename(tmp, port_file)
            await asyncio.get_running_loop().create_future()

    asyncio.run(run())


if __name__ == "__main__":
    main()
