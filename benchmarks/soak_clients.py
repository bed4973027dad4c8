"""The gateway clients of the soak run (:mod:`benchmarks.soak`), as their own process so that their memory
is not counted in the soak's RSS.

``python -m benchmarks.soak_clients URL SUBSCRIBERS REQUESTERS`` opens ``SUBSCRIBERS`` connections
subscribed to every signal (like ``duckagents watch``) and ``REQUESTERS`` connections that send one
request after another through the ``request`` op; it prints ``ready`` once all are connected, runs until
the gateway closes the connections (the soak ends with a graceful stop), and prints one JSON line: frames
and bytes received, requests answered by terminal kind, and the close codes seen.

Subscriber frames are counted from their first bytes (no JSON decoding), so this side stays cheap next
to the server it loads.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import attrs
import trio
import trio_websocket

CONNECT_TIMEOUT = 30.0
#: Seconds a requester waits for one answer before it counts the request as unanswered.
ANSWER_TIMEOUT = 60.0


@attrs.define
class Totals:
    """What every connection saw, together."""

    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    answers: Counter[str] = attrs.field(factory=Counter)
    unanswered: int = 0
    close_codes: Counter[str] = attrs.field(factory=Counter)


def _closed(totals: Totals, exc: trio_websocket.ConnectionClosed) -> None:
    totals.close_codes[str(exc.reason.code if exc.reason is not None else None)] += 1


async def subscriber(url: str, totals: Totals, ready: trio.Semaphore) -> None:
    """Subscribe to everything and count frames until the gateway closes the connection."""
    async with trio_websocket.open_websocket_url(url, connect_timeout=CONNECT_TIMEOUT) as ws:
        await ws.get_message()  # hello
        await ws.send_message('{"type":"subscribe","id":"all"}')
        ready.release()
        try:
            while True:
                frame = await ws.get_message()
                totals.frames += 1
                totals.bytes += len(frame)
                if isinstance(frame, str) and frame.startswith('{"type":"dropped"'):
                    totals.dropped += int(json.loads(frame)["count"])
        except trio_websocket.ConnectionClosed as exc:
            _closed(totals, exc)


async def requester(url: str, index: int, totals: Totals, ready: trio.Semaphore) -> None:
    """Send requests one after the other (every third streamed) until the gateway closes."""
    async with trio_websocket.open_websocket_url(url, connect_timeout=CONNECT_TIMEOUT) as ws:
        await ws.get_message()  # hello
        ready.release()
        sent = 0
        try:
            while True:
                sent += 1
                msg_id = f"q{index}-{sent}"
                message = {
                    "type": "request",
                    "id": msg_id,
                    "messages": [{"role": "user", "content": f"soak question {sent} from requester {index}"}],
                    "options": {"stream": sent % 3 == 0},
                }
                await ws.send_message(json.dumps(message))
                with trio.move_on_after(ANSWER_TIMEOUT) as waited:
                    while True:
                        frame: dict[str, Any] = json.loads(await ws.get_message())
                        kind = frame.get("type")
                        if kind == "error" and frame.get("id") == msg_id:
                            totals.answers[f"error:{frame.get('code')}"] += 1
                            await trio.sleep(0.1)  # e.g. unavailable while the gateway drains
                            break
                        if kind == "signal" and frame.get("request") == msg_id:
                            event = frame["event"]
                            if event["type"] == "provider_response":
                                totals.answers["ok"] += 1
                                break
                            if event["type"] == "provider_error":
                                totals.answers[event["data"]["kind"]] += 1
                                break
                if waited.cancelled_caught:
                    totals.unanswered += 1
        except trio_websocket.ConnectionClosed as exc:
            _closed(totals, exc)


async def main(url: str, subscribers: int, requesters: int) -> dict[str, Any]:
    """Run every client until the gateway closes them; return the totals."""
    totals = Totals()
    ready = trio.Semaphore(0)
    async with trio.open_nursery() as nursery:
        for _ in range(subscribers):
            nursery.start_soon(subscriber, url, totals, ready)
        for index in range(requesters):
            nursery.start_soon(requester, url, index, totals, ready)
        with trio.fail_after(CONNECT_TIMEOUT):
            for _ in range(subscribers + requesters):
                await ready.acquire()
        print("ready", flush=True)
    return {
        "frames": totals.frames,
        "bytes": totals.bytes,
        "dropped": totals.dropped,
        "answers": dict(totals.answers),
        "unanswered": totals.unanswered,
        "close_codes": dict(totals.close_codes),
    }


if __name__ == "__main__":
    url_arg = sys.argv[1]
    subscribers_arg, requesters_arg = (int(a) for a in sys.argv[2:4])
    print(json.dumps(trio.run(main, url_arg, subscribers_arg, requesters_arg)), flush=True)
