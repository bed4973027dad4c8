"""duckagents.testing's loopback OpenAI server as a standalone process (the upstream without nginx).

``python -m benchmarks.fallback_server [--hang N]`` prints the server root URL on its first stdout line
and serves until terminated. ``--hang N`` makes the next ``N`` chat completions wait an hour before
answering: the in-flight memory benchmark needs requests that stay in flight while their state is
counted, on an upstream whose own memory is in another process.
"""

from __future__ import annotations

import argparse

import trio

from duckagents.testing import Fault, open_openai_server

HANG_SECONDS = 3600.0


async def serve(hang: int) -> None:
    """Serve until cancelled; announce the URL first."""
    async with open_openai_server(models=None) as server:
        if hang:
            server.inject(*(Fault(latency=HANG_SECONDS, path="/v1/chat/completions") for _ in range(hang)))
        print(server.url, flush=True)
        await trio.sleep_forever()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hang", type=int, default=0, help="chat completions that never answer")
    trio.run(serve, parser.parse_args().hang)


if __name__ == "__main__":
    main()
