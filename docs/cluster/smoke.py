"""Two clients of one session, on one or two synq nodes (or through a balancer): the first
sends "hello" and both must receive it as the same message (docs/cluster.md).

    pip install websockets
    python3 smoke.py ws://127.0.0.1:8081 ws://127.0.0.1:8082 [SESSION]
    python3 smoke.py ws://localhost:8080
"""

import asyncio
import json
import secrets
import sys

import websockets


async def join(base, session, user):
    ws = await websockets.connect(f"{base}/reflector/{session}")
    await ws.send(json.dumps({"id": session, "action": "JOIN", "args": {
        "name": "t/s", "apiKey": "none", "appId": "t", "version": 1, "user": user,
        "ticks": {"tick": 100}, "tove": "T"}}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if frame["action"] == "SYNC":
            print(user, "SYNC", json.dumps(frame["args"])[:100], "…")
            return ws


async def recv(ws, user):
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if frame["action"] == "RECV":
            print(user, "RECV", json.dumps(frame["args"]))
            return frame["args"]


async def main():
    args = sys.argv[1:]
    first = args[0] if args else "ws://localhost:8080"
    second = args[1] if len(args) > 1 and args[1].startswith("ws") else first
    rest = [a for a in args[1:] if not a.startswith("ws")]
    session = rest[0] if rest else "smoke-" + secrets.token_hex(4)
    a = await join(first, session, "u1")
    b = await join(second, session, "u2")
    await a.send(json.dumps({"id": session, "action": "SEND", "args": [0, 0, "hello", 0]}))
    got_a, got_b = await asyncio.gather(recv(a, "u1"), recv(b, "u2"))
    assert got_a[2] == got_b[2] == "hello" and got_a[1] == got_b[1], (got_a, got_b)
    print("OK: both clients got", got_a[2], "as message", got_a[1])
    await a.close()
    await b.close()


asyncio.run(main())
