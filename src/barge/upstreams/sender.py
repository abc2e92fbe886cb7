"""A sender process: makes the engine's upstream requests on its own CPU.

``python -m barge.upstreams.sender FD`` serves the frames of ``upstreams.wire`` on the
Unix socket FD: an UpstreamClient per configured upstream (the engine's own code, so a
request goes out and its answer is capped, read and classified exactly as in-process),
each request a task, each answer or failure a frame back. It keeps no state of its own:
it exits when the engine's end of the socket closes (the engine stopped or died), and
ignores SIGINT and SIGTERM so that a Ctrl-C or a stop sent to the whole process group
lets the engine drain what is in flight through it first.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import orjson

from barge.memory import tune_allocator
from barge.upstreams import wire
from barge.upstreams.client import (
    UpstreamClient,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)


class SenderSide(wire.FramedProtocol):
    def __init__(self, closed: asyncio.Future[None]) -> None:
        super().__init__()
        self._closed = closed
        self._clients: dict[int, UpstreamClient] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def on_frame(self, kind: int, fields: memoryview) -> None:
        if kind == wire.REQUEST:
            rid, upstream, n = wire.REQUEST_FIELDS.unpack_from(fields)
            at = wire.REQUEST_FIELDS.size
            endpoint = str(fields[at:at + n], "utf-8")
            body = bytes(fields[at + n:])
            task = asyncio.get_running_loop().create_task(
                self._send(rid, self._clients[upstream], endpoint, body))
            self._tasks[rid] = task
        elif kind == wire.CANCEL:
            (rid,) = wire.CANCEL_FIELDS.unpack_from(fields)
            running = self._tasks.get(rid)
            if running is not None:
                running.cancel()
        elif kind == wire.CONFIGURE:
            config = orjson.loads(fields)
            client = UpstreamClient(
                config["base_url"], api_key=config["api_key"], timeout=config["timeout"],
                max_connections=config["max_connections"],
                max_response_bytes=config["max_response_bytes"])
            client.open_session()
            self._clients[config["id"]] = client

    async def _send(self, rid: int, client: UpstreamClient, endpoint: str,
                    body: bytes) -> None:
        try:
            reply = await client.send(endpoint, body)
        except asyncio.CancelledError:
            return  # the engine no longer waits for it
        except UpstreamResponseTooLarge as e:
            self._fail(rid, wire.TOO_LARGE, e.message, e.status, e.request_id or "")
        except UpstreamTimeout as e:
            self._fail(rid, wire.TIMEOUT, e.message)
        except UpstreamUnreachable as e:
            self._fail(rid, wire.UNREACHABLE, e.message)
        except Exception as e:  # UpstreamConnectionError, or anything else: the same
            self._fail(rid, wire.CONNECTION, getattr(e, "message", None) or
                       f"The sender failed: {type(e).__name__}: {e}")
        else:
            headers = wire.encode_headers(list(reply.headers.items()))
            self.send(wire.ANSWER,
                      wire.ANSWER_FIELDS.pack(rid, reply.status, len(headers)),
                      headers, reply.body)
        finally:
            self._tasks.pop(rid, None)

    def _fail(self, rid: int, what: int, message: str, status: int = 0,
              request_id: str = "") -> None:
        text = message.encode("utf-8", "surrogateescape")
        self.send(wire.FAILURE, wire.FAILURE_FIELDS.pack(rid, what, status, len(text)),
                  text, request_id.encode("utf-8", "surrogateescape"))

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks.values():
            task.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


async def serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    sock = socket.socket(fileno=fd)
    _, side = await loop.create_unix_connection(lambda: SenderSide(closed), sock=sock)
    await closed
    await side.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_allocator()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(serve(int(sys.argv[1])))
    else:
        uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
