"""The command line: check-config, cache stats and clear, the server's own start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import diskcache
import pytest

from proxy.cli import main, parse_args
from tests.conftest import MakeProxy

ROOT = Path(__file__).resolve().parents[2]


def pkproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


async def test_cache_stats_reports_the_running_proxys_hit_ratio(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """While the proxy runs, `cache stats` adds its hit ratio since start."""
    proxy = await make_proxy()
    for _ in range(4):
        async with http.get(proxy.make_url("/v2/members/abcde")) as r:
            assert r.status == 200
    env = {"PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"), "PKPROXY_PORT": str(proxy.port)}
    result = await asyncio.to_thread(pkproxy, "cache", "stats", env=env)
    stats = json.loads(result.stdout)
    assert stats["entries"] == 1
    assert stats["running"]["hit_ratio"] == 0.75 and stats["running"]["lookups"] == 4


async def test_cache_stats_and_clear(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`cache stats` counts what the disk holds; `cache clear` empties it."""
    proxy = await make_proxy()
    for path in ("/v2/members/abcde", "/v2/systems/exmpl"):
        async with http.get(proxy.make_url(path)) as r:
            assert r.status == 200
    await proxy.close()
    env = {"PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"), "PKPROXY_PORT": "9"}
    stats = json.loads(pkproxy("cache", "stats", env=env).stdout)
    assert stats["entries"] == 2 and stats["bytes"] > 0 and stats["running"] is None
    cleared = pkproxy("cache", "clear", env=env)
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["removed"] == 2
    assert json.loads(pkproxy("cache", "stats", env=env).stdout)["entries"] == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_pkproxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("PKPROXY_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "a.toml", "--host", "::1", "--port", "9", "--upstream", "http://u", "serve"],
        ["serve", "--config", "a.toml", "--host", "::1", "--port", "9", "--upstream", "http://u"],
        ["--config", "a.toml", "--port", "9", "serve", "--host", "::1", "--upstream", "http://u"],
    ],
)
def test_global_flags_count_before_and_after_the_sub_command(argv: list[str]) -> None:
    """Each global flag keeps its value wherever it stands around the sub-command."""
    args = parse_args(argv)
    assert (args.command, args.config, args.host, args.port, args.upstream) == (
        "serve",
        "a.toml",
        "::1",
        9,
        "http://u",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "1", "check-config", "--port", "2"], "--port: given both before and after"),
        (["--port", "1", "--port", "2", "check-config"], "--port: given more than once"),
        (["cache", "stats", "--config", "a", "--config", "b"], "--config: given more than once"),
    ],
)
def test_a_global_flag_given_twice_is_an_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag given twice, in one place or on both sides of the sub-command, exits 2."""
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("no_pkproxy_env")
def test_check_config_reports_a_bad_file_named_before_the_sub_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pkproxy --config bad.toml check-config` names the file's problems and exits 2."""
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nport = "eighty"\n[budget]\nmargin = -1\n')
    assert main(["--config", str(config), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "server.port" in err and "budget.margin" in err and "configuration OK" not in err


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
async def test_cache_stats_finds_the_running_proxy_by_a_port_flag(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path, before: bool
) -> None:
    """`pkproxy --port N cache stats` and `pkproxy cache stats --port N` both ask that proxy."""
    proxy = await make_proxy()
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 200
    port = ["--port", str(proxy.port)]
    argv = [*port, "cache", "stats"] if before else ["cache", "stats", *port]
    env = {"PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache")}
    result = await asyncio.to_thread(pkproxy, *argv, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["running"]["lookups"] == 1


@contextmanager
def serving(argv: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[None]:
    """`python -m proxy ARGV` (stdout to LOG) until it answers /healthz on PORT; after the
    block, SIGTERM, and it must exit 0."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")}
    with (
        log.open("w") as stdout,
        subprocess.Popen(
            [sys.executable, "-m", "proxy", *argv], cwd=ROOT, env={**clean, **env}, stdout=stdout
        ) as process,
    ):
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        break
                except OSError:
                    assert process.poll() is None, "pkproxy exited"
                    assert time.monotonic() < deadline, f"pkproxy is not serving on {port}"
                    time.sleep(0.1)
            yield
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_serve_honours_a_config_file_named_before_the_sub_command(tmp_path: Path) -> None:
    """`pkproxy --config FILE serve` listens where FILE says and enforces its consumer keys."""
    port = free_port()
    config = tmp_path / "pkproxy.toml"
    config.write_text(
        f'[server]\nport = {port}\n[upstream]\nurl = "http://127.0.0.1:9"\n'
        f'[cache]\ndirectory = "{tmp_path / "cache"}"\n'
        '[consumers]\nrequire_key = true\nkeys = [{name = "bot", key = "long-enough-key"}]\n'
    )
    with serving(["--config", str(config), "serve"], port, {}, tmp_path / "log"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/members/abcde", timeout=5)
        refused.value.close()
        assert refused.value.code == 401  # require_key came from the file


def test_serve_starts_despite_service_links_and_warns_once(tmp_path: Path) -> None:
    """With a Service named pkproxy in the namespace, pkproxy starts and logs one warning."""
    port = free_port()
    links = {
        "PKPROXY_SERVICE_HOST": "10.0.0.1",
        "PKPROXY_SERVICE_PORT": "8080",
        "PKPROXY_PORT": "tcp://10.0.0.1:8080",
        "PKPROXY_PORT_8080_TCP_ADDR": "10.0.0.1",
    }
    env = {
        **links,
        "PKPROXY_UPSTREAM": "http://127.0.0.1:9",
        "PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"),
    }
    with serving(["--port", str(port)], port, env, tmp_path / "log"):
        pass
    events = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    warnings = [e for e in events if e["event"] == "config.service_links_ignored"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert warnings[0]["variables"] == sorted(links)
    assert "enableServiceLinks: false" in warnings[0]["hint"]
    assert any(e["event"] == "server.started" and e["port"] == port for e in events)


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    """`pkproxy --version` prints the version pyproject.toml declares, and exits 0."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exited:
        parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"pkproxy {declared}"


def test_help_lists_the_environment_variables_and_control_headers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--help` names the PKPROXY_* variables, every setting, the control headers, and README
    sections that exist."""
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for name in ("PKPROXY_<SECTION>_<KEY>", "PKPROXY_CONFIG", "PKPROXY_HOST", "PKPROXY_PORT"):
        assert name in text, name
    for name in ("PKPROXY_UPSTREAM", "PKPROXY_CACHE_DIR", "max_wait_ceiling_ms", "trusted_proxies"):
        assert name in text, name
    for header in ("X-PKProxy-Max-Wait", "X-PKProxy-Priority", "X-PKProxy-Key"):
        assert header in text, header
    readme = (ROOT / "README.md").read_text()
    assert "## Configuration" in readme and "## Control headers" in readme


@pytest.mark.usefixtures("no_pkproxy_env")
def test_check_config_names_ignored_service_links_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config accepts service links, says so on stderr, and keeps stdout pure JSON."""
    monkeypatch.setenv("PKPROXY_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("PKPROXY_PORT", "tcp://10.0.0.1:8080")
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["server"]["port"] == 8080
    assert "PKPROXY_PORT, PKPROXY_SERVICE_HOST" in err and "enableServiceLinks: false" in err


@pytest.mark.usefixtures("no_pkproxy_env")
def test_cache_clear_empties_only_the_default_directory_of_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two instances on the default directory, ports 9000 and 9001: clearing one leaves the
    other's disk tier alone; `cache --help` says how the directory is chosen."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for port in ("9000", "9001"):
        with diskcache.Cache(str(tmp_path / "pkproxy" / port)) as disk:
            disk.set("/v2/members/abcde", b"{}")
    assert main(["--port", "9000", "cache", "clear"]) == 0
    cleared = json.loads(capsys.readouterr().out)
    directory = str(tmp_path / "pkproxy" / "9000")
    assert cleared == {"running": False, "directory": directory, "removed": 1}
    with diskcache.Cache(str(tmp_path / "pkproxy" / "9001")) as disk:
        assert len(disk) == 1
    with pytest.raises(SystemExit):
        parse_args(["cache", "--help"])
    assert "pkproxy/<port>" in capsys.readouterr().out


async def test_cache_purge_and_clear_reach_the_running_proxy(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`cache purge PATH` and `cache clear` act on the running proxy, memory tier included:
    the next read of what they removed is a miss, and what they did not touch a hit."""
    proxy = await make_proxy()
    for path in ("/v2/members/abcde", "/v2/systems/exmpl"):
        async with http.get(proxy.make_url(path)) as r:
            assert r.status == 200
    env = {"PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"), "PKPROXY_PORT": str(proxy.port)}
    purged = await asyncio.to_thread(pkproxy, "cache", "purge", "/v2/members/ABC-DE", env=env)
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"running": True, "path": "/v2/members/abcde", "evicted": 1}

    async def x_cache(path: str) -> str:
        async with http.get(proxy.make_url(path)) as r:
            return r.headers["X-Cache"]

    assert await x_cache("/v2/members/abcde") == "MISS"
    assert await x_cache("/v2/systems/exmpl") == "HIT"
    cleared = await asyncio.to_thread(pkproxy, "cache", "clear", env=env)
    assert json.loads(cleared.stdout)["running"] is True
    assert await x_cache("/v2/systems/exmpl") == "MISS"


def test_cache_purge_without_a_running_proxy_acts_on_the_disk(tmp_path: Path) -> None:
    """With nothing listening, purge evicts the path from the disk directory itself."""
    env = {"PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"), "PKPROXY_PORT": "9"}
    result = pkproxy("cache", "purge", "/v2/members/abcde", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["evicted"] == 0
    assert pkproxy("cache", "purge", env=env).returncode == 2
    assert pkproxy("cache", "purge", "/v2/../etc", env=env).returncode == 2


def test_check_config_masks_the_redis_password() -> None:
    """check-config prints the configuration, never the password in redis.url."""
    env = {"PKPROXY_REDIS_URL": "redis://:s3cret-pass@redis.example:6379/0"}
    result = pkproxy("check-config", env=env)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert "s3cret-pass" not in result.stdout
    assert printed["redis"]["url"] == "redis://:********@redis.example:6379/0"
