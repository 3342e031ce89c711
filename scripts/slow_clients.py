#!/usr/bin/env python3
"""Slow clients against a running server (docs/serving.md, "Shutdown and slow clients").

Opens N connections that each send half a request's headers and then nothing, checks that a
normal request is still answered meanwhile, and counts how many of the N the server has closed
after WAIT seconds.

    python3 scripts/slow_clients.py http://127.0.0.1:8000 [N=3000] [WAIT=40]
"""
import json
import socket
import sys
import time
import urllib.request

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
wait = float(sys.argv[3]) if len(sys.argv) > 3 else 40.0
host, port = url.removeprefix("http://").rstrip("/").split(":")

socks = []
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    s.setblocking(False)
    socks.append(s)
print(f"{n} connections opened, each with half a request's headers")

t = time.time()
body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 4, "steps": 4}).encode()
req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=wait) as r:
    print(f"a normal request meanwhile: {r.status} in {time.time() - t:.2f} s")

time.sleep(max(0.0, wait - (time.time() - t)))
closed = 0
for s in socks:
    try:
        closed += s.recv(1) == b""
    except (BlockingIOError, InterruptedError):
        pass  # still open: nothing to read
    except OSError:
        closed += 1  # reset by the server
print(f"after {wait:.0f} s: {closed} of {n} closed by the server, {n - closed} still open")
