"""Soak and queue-memory benchmarks: pkproxy under hostile traffic for a while, and its
resident memory with 10,000 requests queued.

    python -m tests.perf soak                 # 60 s, as part of the benchmark table
    python -m tests.perf.soak --seconds 600   # longer
    python -m tests.perf queue_memory         # 10,000 queued requests, three kinds

The fake PluralKit and pkproxy run as separate processes (the fake with a control route to
block or reset), the load generator in this one."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakepk import PLURALKIT_SCOPES, FakePluralKit, pluralkit_scope
from tests.perf.harness import ROOT, free_port, stop

Row = tuple[str, str]
POPULATION = 400
MEMBERS = [f"m{n:05d}"[-6:] for n in range(POPULATION)]
KEYS = [
    {"name": "bot-a", "key": "bot-a-key-000", "priority": "interactive"},
    {"name": "bot-b", "key": "bot-b-key-000", "priority": "interactive"},
    {"name": "bot-c", "key": "bot-c-key-000", "priority": "interactive"},
    {"name": "bulk", "key": "bulk-key-0000", "priority": "background"},
    {"name": "writer", "key": "writer-key-00"},
]


# -- the processes ----------------------------------------------------------------------


def _fake_app(profile: str) -> web.Application:
    """The fake PluralKit with Zipf's population and a control route for the soak."""
    fake = FakePluralKit()
    if profile == "pluralkit":
        fake.scopes, fake.scope_of = dict(PLURALKIT_SCOPES), pluralkit_scope
    else:
        fake.scopes = {"generic": 1e6}
    for mid in MEMBERS:
        fake.members[mid] = {**fake.members["abcde"], "id": mid, "name": f"Member {mid}"}

    async def control(request: web.Request) -> web.Response:
        if request.method == "POST":
            fake.delay = float(request.query.get("delay", fake.delay))
            fake.reset_every = int(request.query.get("reset_every", fake.reset_every))
        statuses = Counter(str(a.status) for a in fake.arrivals)
        return web.json_response({"arrivals": len(fake.arrivals), "statuses": statuses})

    app = web.Application()
    app.router.add_route("*", "/__soak", control)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    return app


@dataclass
class Processes:
    proxy: str
    fake: str
    pid: int


@contextmanager
def processes(profile: str, env: dict[str, str]) -> Iterator[Processes]:
    fake_port, proxy_port = free_port(), free_port()
    fake_cmd = [sys.executable, "-m", "tests.perf.soak", "fake", str(fake_port), profile]
    with tempfile.TemporaryDirectory() as cache_dir:
        fake = subprocess.Popen(fake_cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        proxy_env = {
            **os.environ,
            "PKPROXY_UPSTREAM": f"http://127.0.0.1:{fake_port}",
            "PKPROXY_PORT": str(proxy_port),
            "PKPROXY_CACHE_DIRECTORY": cache_dir,
            "PKPROXY_LOG_LEVEL": "warning",
            **env,
        }
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy"], cwd=ROOT, env=proxy_env, stdout=subprocess.DEVNULL
        )
        try:
            for port in (fake_port, proxy_port):
                _wait_for(port)
            urls = (f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{fake_port}")
            yield Processes(*urls, proxy.pid)
        finally:
            stop(proxy, fake)


def _wait_for(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_sockets(pid: int) -> int:
    """Sockets among the open fds: the listener, client and upstream connections."""
    fds = f"/proc/{pid}/fd"
    with_targets = (os.readlink(f"{fds}/{fd}") for fd in os.listdir(fds))
    return sum(1 for target in with_targets if target.startswith("socket:"))


async def queue_depth(session: aiohttp.ClientSession, proxy: str) -> int:
    async with session.get(f"{proxy}/metrics") as response:
        text = await response.text()
    lines = [line for line in text.splitlines() if line.startswith("pkproxy_queue_depth{")]
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in lines))


# -- the soak ---------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    stalled_opened: int = 0
    stalled_answered_408: int = 0
    disconnected: int = 0

    def count(self, status: int | str) -> None:
        self.statuses[str(status)] += 1


class Soak:
    """Traffic from several kinds of clients until `stop`; every answer is tallied."""

    def __init__(self, procs: Processes, seconds: float) -> None:
        self.procs = procs
        self.stop = time.monotonic() + seconds
        self.tally = Tally()
        self.rng = random.Random(14)
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(POPULATION)]
        self.zipf = lambda: self.rng.choices(MEMBERS, weights)[0]

    @property
    def running(self) -> bool:
        return time.monotonic() < self.stop

    async def _get(self, session: aiohttp.ClientSession, path: str, **headers: str) -> None:
        try:
            async with session.get(self.procs.proxy + path, headers=headers) as response:
                await response.read()
                self.tally.count(response.status)
        except aiohttp.ClientError as error:
            self.tally.count(type(error).__name__)

    async def reader(self, session: aiohttp.ClientSession, n: int) -> None:
        """Zipf reads, a tenth of them credentialed; half the bots carry a key."""
        key = {"X-PKProxy-Key": KEYS[n % 3]["key"]} if n < 3 else {}
        while self.running:
            path = f"/v2/members/{self.zipf()}"
            if self.rng.random() < 0.2:
                path = "/v2/systems/exmpl/fronters"
            auth = {"Authorization": "token-exmpl"} if self.rng.random() < 0.1 else {}
            await self._get(session, path, **key, **auth, **{"X-PKProxy-Max-Wait": "4000"})
            await asyncio.sleep(0.1)

    async def bulk(self, session: aiohttp.ClientSession) -> None:
        """A background export: uniform over the population, 20 requests at a time."""
        headers = {"X-PKProxy-Key": "bulk-key-0000", "X-PKProxy-Max-Wait": "10000"}

        async def worker() -> None:
            while self.running:
                await self._get(session, f"/v2/members/{self.rng.choice(MEMBERS)}", **headers)

        await asyncio.gather(*(worker() for _ in range(20)))

    async def writer(self, session: aiohttp.ClientSession) -> None:
        headers = {"X-PKProxy-Key": "writer-key-00", "Authorization": "token-exmpl"}
        n = 0
        while self.running:
            n += 1
            url = f"{self.procs.proxy}/v2/members/abcde"
            try:
                async with session.patch(url, json={"name": f"Alice {n}"}, headers=headers) as r:
                    await r.read()
                    self.tally.count(r.status)
            except aiohttp.ClientError as error:
                self.tally.count(type(error).__name__)
            await asyncio.sleep(1.0)

    async def quitter(self, session: aiohttp.ClientSession) -> None:
        """Clients that give up while queued (their connection closes)."""
        while self.running:
            wait = self.rng.uniform(0.05, 1.0)
            path = f"/v2/members/{self.rng.choice(MEMBERS)}"
            headers = {"Authorization": "token-exmpl", "X-PKProxy-Max-Wait": "10000"}
            try:
                await asyncio.wait_for(self._get(session, path, **headers), wait)
            except TimeoutError:
                self.tally.disconnected += 1

    async def staller(self) -> None:
        """Every 5 s, 20 connections send half a request line and fall silent."""
        port = int(self.procs.proxy.rsplit(":", 1)[1])
        stalls: list[asyncio.Task[None]] = []
        while self.running:
            stalls += [asyncio.create_task(self._stall(port)) for _ in range(20)]
            await asyncio.sleep(5)
        for task in stalls:
            task.cancel()
        await asyncio.gather(*stalls, return_exceptions=True)

    async def _stall(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.tally.stalled_opened += 1
        try:
            writer.write(b"GET /v2/memb")
            answer = await reader.read()
            if answer.startswith(b"HTTP/1.1 408"):
                self.tally.stalled_answered_408 += 1
        finally:
            writer.close()

    async def hiccups(self, session: aiohttp.ClientSession) -> None:
        """Upstream resets one request in 15 throughout, and blocks 3 s per request for 6 s
        of every 20."""
        control = f"{self.procs.fake}/__soak"
        await session.post(control, params={"reset_every": "15"})
        while self.running:
            await asyncio.sleep(min(14.0, max(0.0, self.stop - time.monotonic())))
            await session.post(control, params={"delay": "3"})
            await asyncio.sleep(6.0)
            await session.post(control, params={"delay": "0"})


async def _sample(pid: int, stop: float, every: float, out: list[tuple[float, float, int]]) -> None:
    started = time.monotonic()
    while time.monotonic() < stop:
        out.append((time.monotonic() - started, rss_mib(pid), open_fds(pid)))
        await asyncio.sleep(every)


async def _soak(procs: Processes, seconds: float) -> list[Row]:
    baseline_fds, baseline_rss = open_fds(procs.pid), rss_mib(procs.pid)
    baseline_sockets = open_sockets(procs.pid)
    soak = Soak(procs, seconds)
    samples: list[tuple[float, float, int]] = []
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(
            *(soak.reader(session, n) for n in range(6)),
            soak.bulk(session),
            soak.writer(session),
            *(soak.quitter(session) for _ in range(4)),
            soak.staller(),
            soak.hiccups(session),
            _sample(procs.pid, soak.stop, max(1.0, seconds / 30), samples),
        )
    async with aiohttp.ClientSession() as session, session.get(f"{procs.fake}/__soak") as r:
        upstream = await r.json()
    settle_started = time.monotonic()
    while open_sockets(procs.pid) > baseline_sockets and time.monotonic() - settle_started < 30:
        await asyncio.sleep(0.5)
    settled = time.monotonic() - settle_started
    rows = _soak_rows(soak.tally, upstream, samples, (baseline_rss, baseline_fds), settled, procs)
    sockets = f"{baseline_sockets} / {open_sockets(procs.pid)}"
    return [*rows, ("soak: open sockets start / end (listener, clients, upstream)", sockets)]


def _soak_rows(
    tally: Tally,
    upstream: dict[str, Any],
    samples: list[tuple[float, float, int]],
    baseline: tuple[float, int],
    settled: float,
    procs: Processes,
) -> list[Row]:
    warm = samples[len(samples) // 4][1]  # after a quarter of the run
    peak_rss = max(rss for _, rss, _ in samples)
    end_rss = rss_mib(procs.pid)
    statuses = upstream["statuses"]
    step = max(1, len(samples) // 8)
    timeline = " ".join(f"{t:.0f}s:{rss:.0f}" for t, rss, _ in samples[::step])
    peak_fds = max(fds for _, _, fds in samples)
    return [
        ("soak: answers by status", _counts(tally.statuses)),
        ("soak: 500 answers", str(tally.statuses.get("500", 0))),
        ("soak: clients that gave up while queued", str(tally.disconnected)),
        (
            "soak: stalled connections opened / answered 408 and closed",
            f"{tally.stalled_opened} / {tally.stalled_answered_408}",
        ),
        (
            "soak: upstream requests / resets injected",
            f"{upstream['arrivals']} / {statuses.get('0', 0)}",
        ),
        ("soak: upstream 429s", str(statuses.get("429", 0))),
        (
            "soak: RSS MiB start / after warm-up / peak / end",
            f"{baseline[0]:.0f} / {warm:.0f} / {peak_rss:.0f} / {end_rss:.0f}",
        ),
        ("soak: RSS growth after warm-up", f"{(end_rss - warm) / warm:+.1%}"),
        ("soak: RSS MiB over time", timeline),
        (
            "soak: open fds start / peak / end (disk cache: 2 per executor thread)",
            f"{baseline[1]} / {peak_fds} / {open_fds(procs.pid)} (settled in {settled:.1f} s)",
        ),
    ]


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


SOAK_ENV = {
    "PKPROXY_BUDGET_PROFILE": "pluralkit",
    "PKPROXY_CONSUMERS_KEYS": json.dumps(KEYS),
    "PKPROXY_SERVER_HEADER_TIMEOUT_SECONDS": "5",
}


def soak(seconds: float = 60.0) -> list[Row]:
    with processes("pluralkit", SOAK_ENV) as procs:
        rows = asyncio.run(_soak(procs, seconds))
    return [(f"soak: duration (s), {len(KEYS)} consumers + others", f"{seconds:.0f}"), *rows]


# -- 10,000 queued requests -------------------------------------------------------------

QUEUED = 10_000
QUEUE_ENV = {
    "PKPROXY_BUDGET_PROFILE": "seed",  # 2/s: the queue drains by 2 a second only
    "PKPROXY_SERVER_MAX_CONNECTIONS": str(QUEUED + 500),
    # Every body held at once (10,000 x 16 KiB), to measure what one costs:
    "PKPROXY_SERVER_MAX_BUFFERED_BODY_BYTES": str(QUEUED * 32 * 1024),
    "PKPROXY_BUDGET_MAX_QUEUE": str(QUEUED * 2),
    "PKPROXY_BUDGET_DEFAULT_MAX_WAIT_MS": str(QUEUED * 1000),
    "PKPROXY_BUDGET_MAX_WAIT_CEILING_MS": str(QUEUED * 1000),
}
BODY = b'{"members": [], "pad": "' + b"x" * (16 * 1024 - 30) + b'"}'
KINDS = {
    "credentialed GET (direct path)": lambda n: _raw("GET", "/v2/members/abcde", b""),
    "POST with a 16 KiB body (direct path)": lambda n: _raw(
        "POST", "/v2/systems/exmpl/switches", BODY
    ),
    "cacheable GET, distinct URLs (coalescer flights)": lambda n: _raw(
        "GET", f"/v2/members/{_short_id(n)}", b"", credential=False
    ),
}


def _short_id(n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(5):
        n, digit = divmod(n, 26)
        out += letters[digit]
    return out


def _raw(method: str, path: str, body: bytes, credential: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: pkproxy", "User-Agent: queue-bench"]
    if credential:
        lines.append("Authorization: token-exmpl")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _queue(procs: Processes, make: Any) -> tuple[float, float, int]:
    port = int(procs.proxy.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as session:
        await queue_depth(session, procs.proxy)  # the app is up and warm
        before = rss_mib(procs.pid)
        writers: list[asyncio.StreamWriter] = []
        for start in range(0, QUEUED, 500):
            opened = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", port) for _ in range(500))
            )
            for n, (_, writer) in enumerate(opened, start):
                writer.write(make(n))
                writers.append(writer)
        depth = await _settled_depth(session, procs.proxy)
        await asyncio.sleep(1.0)
        after = rss_mib(procs.pid)
        for writer in writers:
            writer.close()
    return before, after, depth


async def _settled_depth(session: aiohttp.ClientSession, proxy: str) -> int:
    """The queue depth once every request is in (the queue drains by 2 a second): when
    nearly all are queued, or it has stopped growing for 5 s."""
    depth, grown_at = 0, time.monotonic()
    while depth < QUEUED - 200 and time.monotonic() - grown_at < 5:
        await asyncio.sleep(0.5)
        now = await queue_depth(session, proxy)
        if now > depth:
            depth, grown_at = now, time.monotonic()
    return depth


def queue_memory() -> list[Row]:
    rows: list[Row] = []
    for kind, make in KINDS.items():
        with processes("unlimited", QUEUE_ENV) as procs:
            before, after, depth = asyncio.run(_queue(procs, make))
        per = (after - before) * 1024 / max(1, depth)
        rows.append(
            (
                f"queued {kind}: RSS MiB idle / queued, queued count",
                f"{before:.0f} / {after:.0f}, {depth}",
            )
        )
        rows.append((f"queued {kind}: KiB per queued request", f"{per:.1f}"))
    return rows


# -- command line -----------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "fake":
        web.run_app(_fake_app(sys.argv[3]), host="127.0.0.1", port=int(sys.argv[2]), print=None)
        return
    parser = argparse.ArgumentParser(prog="python -m tests.perf.soak")
    parser.add_argument("--seconds", type=float, default=60.0, help="soak length (default 60)")
    args = parser.parse_args()
    for name, value in soak(args.seconds):
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
