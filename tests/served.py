"""The proxy served as `pkproxy` serves it (ProxyRunner on a real port), and raw HTTP/1.1 over
a socket, for tests that must send what no HTTP client library would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.server import ProxyRunner
from proxy.settings import Settings

# How long a raw exchange may take before the test fails instead of hanging; generous, as
# it only bounds a failure (a passing exchange ends as soon as the server answers).
GUARD_SECONDS = 10.0


@asynccontextmanager
async def serving(settings: Settings, app: web.Application | None = None) -> AsyncIterator[int]:
    """Serve `app` (by default create_app(settings)) on 127.0.0.1 with the runner `pkproxy`
    uses; yield the port."""
    runner = ProxyRunner(app if app is not None else create_app(settings), settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


class ProxyTestServer(TestServer):
    """aiohttp's TestServer (make_url, port, app, close) serving with ProxyRunner, as
    `pkproxy` serves: the quick hit path and the server's limits are those under test."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ProxyRunner(self.app, self._settings)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased; the last of repeated names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answers(data: bytes) -> list[Answer]:
    """Every response in `data` (Content-Length framed, as the proxy frames its own)."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        answers.append(Answer(int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return answers


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection (the test fails if it does not)."""
    return await asyncio.wait_for(reader.read(), GUARD_SECONDS)


async def exchange(port: int, data: bytes) -> list[Answer]:
    """Send `data` on a new connection, read until the server closes it, parse the answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return parse_answers(await read_all(reader))
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One Content-Length framed answer from a connection that stays open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_SECONDS)
    parsed = parse_answers(head)[0]
    length = int(parsed.headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), GUARD_SECONDS)
    return Answer(parsed.status, parsed.headers, body)


def request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    """A request head as bytes; a Host header is added, Content-Length when there is a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: pkproxy.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
