"""A loopback TCP proxy that delays every client-to-server chunk: a slow (distant) Neo4j.

Run as ``python -m bench.proxy --listen-port P --target-port T --delay-ms 20``; it prints
``ready`` once it listens and runs until SIGTERM/SIGINT. Each chunk read from the client is
written upstream ``delay`` after it arrived, in order; chunks are not serialised behind one
another's delay, so pipelining still works and only latency (not bandwidth) changes, as with
a real network hop. Server-to-client traffic passes straight through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

CHUNK = 65536


async def _pipe_delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(CHUNK)
            await queue.put((loop.time() + delay, data))
            if not data:
                break
    finally:
        await queue.put((0.0, b""))
        await sender


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                  target: tuple[str, int], delay: float) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe_delayed(client_r, server_w, delay),
                             _pipe(server_r, client_w), return_exceptions=True)
    finally:
        for w in (client_w, server_w):
            w.close()
            with contextlib.suppress(OSError, ConnectionError):
                await w.wait_closed()


async def serve(listen_port: int, target_port: int, delay_ms: float,
                host: str = "127.0.0.1") -> None:
    """Listen on ``host:listen_port`` and forward to ``host:target_port`` until signalled."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, (host, target_port), delay_ms / 1000.0), host, listen_port)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen_port, args.target_port, args.delay_ms))
    sys.exit(0)


if __name__ == "__main__":
    main()
