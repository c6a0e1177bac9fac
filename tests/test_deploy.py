"""The deployment files parse, agree with the code, and their commands work."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.settings import load_settings
from proxy.settings.model import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def readme_install_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh", 1)[1].split("```", 1)[0]
    return block.strip()


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    """Slim base, non-root user, cache volume, /healthz HEALTHCHECK, the README's install."""
    instructions = dockerfile()
    kinds = [kind for kind, _ in instructions]
    assert set(kinds) <= {
        "FROM",
        "ENV",
        "RUN",
        "WORKDIR",
        "COPY",
        "USER",
        "VOLUME",
        "EXPOSE",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "CMD",
    }
    args = dict(reversed(instructions))  # first of each kind
    assert "slim" in args["FROM"]
    user = [a for k, a in instructions if k == "USER"][-1]
    assert user not in {"root", "0"}
    assert (
        "/var/cache/pkproxy" in args["VOLUME"]
        and "PKPROXY_CACHE_DIRECTORY=/var/cache/pkproxy" in args["ENV"]
    )
    assert "/healthz" in args["HEALTHCHECK"] and "8080" in args["EXPOSE"]
    assert args["CMD"] == '["pkproxy"]'
    assert "pip install ." in readme_install_command()
    assert any("pip install ." in a for k, a in instructions if k == "RUN")


def test_compose_runs_pkproxy_next_to_a_bot() -> None:
    """compose.yaml parses, builds the Dockerfile, health-checks /healthz, and the bot uses it."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    proxy = compose["services"]["pkproxy"]
    assert proxy["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "/healthz" in " ".join(proxy["healthcheck"]["test"])
    assert proxy["environment"]["PKPROXY_PORT"] == "8080"
    assert compose["services"]["bot"]["environment"]["PLURALKIT_API"] == "http://pkproxy:8080/v2"
    assert "pkproxy-cache" in compose["volumes"]


SIDECAR = "bot-with-pkproxy.yaml"
REPLICAS = "replicas-with-redis.yaml"


def kubernetes(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def sidecar_pod(name: str = SIDECAR) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec of the Deployment with a pkproxy container, and that container."""
    for document in kubernetes(name):
        if document["kind"] != "Deployment":
            continue
        spec = document["spec"]["template"]["spec"]
        for container in spec["containers"]:
            if container["name"] == "pkproxy":
                return spec, container
    raise AssertionError(f"no pkproxy sidecar in {name}")


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_kubernetes_sidecar_has_probes_resources_and_emptydir() -> None:
    """The sidecar probes /healthz and /readyz, has requests, keeps its cache on emptyDir."""
    spec, sidecar = sidecar_pod()
    assert "/healthz" in " ".join(sidecar["livenessProbe"]["exec"]["command"])
    assert "/readyz" in " ".join(sidecar["readinessProbe"]["exec"]["command"])
    assert sidecar["resources"]["requests"]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    mount = sidecar["volumeMounts"][0]
    assert env["PKPROXY_CACHE_DIRECTORY"] == mount["mountPath"]
    assert any("emptyDir" in v and v["name"] == mount["name"] for v in spec["volumes"])
    assert sidecar["args"] == ["pkproxy"]


@pytest.mark.parametrize("name", [SIDECAR, REPLICAS])
def test_kubernetes_sidecar_stays_on_loopback_with_exec_probes_and_no_service_links(
    name: str,
) -> None:
    """pkproxy listens on 127.0.0.1, so its probes are exec probes (the kubelet sends httpGet
    and tcpSocket probes to the pod IP) that fetch 127.0.0.1 on PKPROXY_PORT with the image's
    python; the pod turns off service-link variables."""
    spec, sidecar = sidecar_pod(name)
    env = plain_env(sidecar)
    assert env["PKPROXY_HOST"] == "127.0.0.1" and "ports" not in sidecar
    assert spec["enableServiceLinks"] is False
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert set(sidecar[probe]) - {"periodSeconds", "timeoutSeconds"} == {"exec"}, probe
        command = sidecar[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"]
        assert f"'http://127.0.0.1:{env['PKPROXY_PORT']}{path}'" in command[2]
    assert dict(dockerfile())["FROM"].startswith("python:")  # the probes' python


class _Probed(BaseHTTPRequestHandler):
    statuses: dict[str, int] = {}

    def do_GET(self) -> None:
        self.send_response(self.statuses.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("name", [SIDECAR, REPLICAS])
@pytest.mark.parametrize(
    ("statuses", "live", "ready"),
    [
        ({"/healthz": 200, "/readyz": 200}, True, True),
        ({"/healthz": 200, "/readyz": 503}, True, False),  # starting or draining
        (None, False, False),  # nothing listening
    ],
)
def test_kubernetes_probe_commands_pass_on_200_and_fail_otherwise(
    statuses: dict[str, int] | None, live: bool, ready: bool, name: str
) -> None:
    """Run as the kubelet would (port moved to a free one): exit 0 on 200, else non-zero."""
    _, sidecar = sidecar_pod(name)
    _Probed.statuses = statuses or {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probed)
    port = server.server_address[1]
    if statuses is None:
        server.server_close()  # the port is free again: connection refused
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for probe, passes in (("livenessProbe", live), ("readinessProbe", ready)):
            _, flag, code = sidecar[probe]["exec"]["command"]
            code = code.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            done = subprocess.run([sys.executable, flag, code], capture_output=True, timeout=30)
            assert (done.returncode == 0) is passes, (probe, done.stderr)
    finally:
        if statuses is not None:
            server.shutdown()
            server.server_close()


def redis_args(args: list[str]) -> dict[str, str]:
    """`redis-server --name value ...` as {name: value}."""
    assert args[0] == "redis-server"
    return {k.removeprefix("--"): v for k, v in zip(args[1::2], args[2::2], strict=True)}


def test_compose_redis_variant_runs_two_replicas_on_one_redis() -> None:
    """compose.redis.yaml: two pkproxy replicas from the Dockerfile, both on the one Redis of
    the project (same URL, so one budget), each health-checked and each used by its own bot;
    Redis bounded by maxmemory with LRU eviction, no persistence, not published."""
    compose = yaml.safe_load((DEPLOY / "compose.redis.yaml").read_text())
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if name.startswith("pkproxy")}
    assert len(replicas) == 2
    redis = services["redis"]
    config = redis_args(redis["command"])
    assert config["maxmemory-policy"] == "allkeys-lru" and config["maxmemory"].endswith("mb")
    assert config["save"] == "" and config["appendonly"] == "no"
    assert "ports" not in redis and "redis-cli" in redis["healthcheck"]["test"]
    urls = set()
    for name, proxy in replicas.items():
        assert proxy["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "/healthz" in " ".join(proxy["healthcheck"]["test"])
        assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
        env = proxy["environment"]
        settings = load_settings(env=env)  # pkproxy's own variables, all valid
        assert settings.redis.enabled and settings.server.port == 8080
        urls.add(env["PKPROXY_REDIS_URL"])
        bots = [s for s in services.values() if name in s.get("depends_on", {})]
        assert [b["environment"]["PLURALKIT_API"] for b in bots] == [f"http://{name}:8080/v2"]
    assert urls == {"redis://redis:6379/0"}


def expanded_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's variables as the kubelet sets them: Secret references filled in,
    $(NAME) of an earlier variable expanded."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            value = secrets[f"{ref['name']}/{ref['key']}"]
        env[item["name"]] = value
    return env


def test_kubernetes_replicas_share_one_redis_with_a_password_from_a_secret() -> None:
    """replicas-with-redis.yaml: several bot pods, each with the loopback sidecar (no cache
    volume: with Redis on, diskcache is off), all pointing at the pkproxy-redis Service with
    the Secret's password; Redis asks for that password, bounds its memory with LRU
    eviction, keeps no files, and a NetworkPolicy admits only the bot pods."""
    documents = {(d["kind"], d["metadata"]["name"]): d for d in kubernetes(REPLICAS)}
    bot = documents["Deployment", "example-bot"]
    assert bot["spec"]["replicas"] >= 2
    spec, sidecar = sidecar_pod(REPLICAS)
    assert "volumeMounts" not in sidecar and "volumes" not in spec
    secrets = {"pkproxy-redis/password": "s3cret"}
    env = expanded_env(sidecar, secrets)
    settings = load_settings(env={k: v for k, v in env.items() if k.startswith("PKPROXY_")})
    assert settings.redis.enabled and settings.server.host == "127.0.0.1"
    service = documents["Service", "pkproxy-redis"]
    port = service["spec"]["ports"][0]["port"]
    assert env["PKPROXY_REDIS_URL"] == f"redis://:s3cret@pkproxy-redis:{port}/0"
    assert "s3cret" not in (DEPLOY / "kubernetes" / REPLICAS).read_text()

    redis = documents["Deployment", "pkproxy-redis"]["spec"]["template"]
    assert redis["spec"]["enableServiceLinks"] is False
    assert service["spec"]["selector"].items() <= redis["metadata"]["labels"].items()
    (server,) = redis["spec"]["containers"]
    config = redis_args(server["args"])
    assert expanded_env(server, secrets)["REDIS_PASSWORD"] == "s3cret"
    assert config["requirepass"] == "$(REDIS_PASSWORD)"
    assert config["maxmemory-policy"] == "allkeys-lru" and config["maxmemory"].endswith("mb")
    assert config["save"] == "" and config["appendonly"] == "no"
    assert server["resources"]["limits"]["memory"]

    policy = documents["NetworkPolicy", "pkproxy-redis"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= redis["metadata"]["labels"].items()
    (admitted,) = policy["ingress"]
    (source,) = admitted["from"]
    labels = bot["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= labels.items()
    assert admitted["ports"] == [{"port": port, "protocol": "TCP"}]


def test_deploy_readme_says_when_redis_is_needed_and_what_the_fallback_does() -> None:
    """deploy/README.md names the Redis variants' commands, the fallback share with the
    code's default, maxmemory, and TLS and password in the URL."""
    text = (DEPLOY / "README.md").read_text()
    assert "docker compose -f deploy/compose.redis.yaml up --build" in text
    assert f"kubectl apply -f deploy/kubernetes/{REPLICAS}" in text
    assert DEFAULTS["redis"]["fallback_share"] == 1 / 3
    assert "`redis.fallback_share` (default 1/3)" in text
    for words in ("more than one pkproxy", "maxmemory", "allkeys-lru", "rediss://"):
        assert words in text, words
    readme = (ROOT / "README.md").read_text()
    assert "## Several replicas: shared state in Redis" in readme


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / "pkproxy.service").read_text())
    return parser


def test_systemd_unit_parses() -> None:
    """The unit has the three sections and runs pkproxy with a config file."""
    parsed = unit()
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    exec_start = shlex.split(parsed["Service"]["ExecStart"])
    assert exec_start[0].endswith("/bin/pkproxy") and exec_start[1] == "--config"
    assert parsed["Service"]["KillSignal"] == "SIGTERM"


def install_commands(text: str) -> list[list[str]]:
    lines = [line.lstrip("# ").strip() for line in text.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(("install ", "useradd "))]


@pytest.mark.parametrize("source", ["deploy/systemd/pkproxy.service", "deploy/README.md"])
def test_systemd_config_with_keys_is_readable_by_the_service_group_only(source: str) -> None:
    """The install steps put the config where ExecStart reads it, mode 0640, owner root, group
    the unit's Group= (a system group created first: DynamicUser= has none beforehand)."""
    service = unit()["Service"]
    config_path = shlex.split(service["ExecStart"])[2]
    text = (ROOT / source).read_text()
    assert f"cp config/pkproxy.toml {config_path}" not in text
    commands = install_commands(text)
    useradd = next(c for c in commands if c[0] == "useradd")
    install = next(c for c in commands if c[0] == "install")
    assert "--system" in useradd and useradd[-1] == service["User"] == service["Group"]
    options = dict(zip(install[1:-2:2], install[2:-2:2], strict=True))
    assert options == {"-m": "0640", "-o": "root", "-g": service["Group"]}
    assert install[-2:] == ["config/pkproxy.toml", config_path]
    assert "DynamicUser" not in service
    for hardening in ("NoNewPrivileges", "PrivateTmp", "RemoveIPC", "RestrictSUIDSGID"):
        assert service[hardening] == "yes", hardening
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "yes"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_install_and_unit_start_command_work_in_a_clean_venv(tmp_path: Path) -> None:
    """`pip install .` into a fresh venv, then the unit's ExecStart (its binary and flags, our
    config file) serves /healthz, and SIGTERM stops it with exit code 0."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    exec_start = shlex.split(unit()["Service"]["ExecStart"])
    command = [str(venv / "bin" / "pkproxy"), exec_start[1], str(ROOT / "config" / "pkproxy.toml")]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")},
        "PKPROXY_PORT": str(port),
        "PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"),
        "PKPROXY_UPSTREAM": "http://127.0.0.1:9",
    }
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "pkproxy did not start"
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_ci_runs_the_readmes_test_command() -> None:
    """The README's second command is what .ci/run runs, to the letter."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```sh")[1:3]]
    assert "pkproxy" in blocks[0] and "pytest" in blocks[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert blocks[1] in ci_lines


def test_pyproject_declares_the_command() -> None:
    """The `pkproxy` command the deployment files run is the package's entry point."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["pkproxy"] == "proxy.cli:main"


def test_readme_qualifies_the_never_trips_claim() -> None:
    """The README makes no unqualified promise never to trip PluralKit's limiter, and says
    before the quick start what sharing the IP's bucket with other programs costs."""
    readme = (ROOT / "README.md").read_text()
    assert "without ever tripping" not in readme
    caveat = readme.index("PluralKit limits by IP address")
    assert caveat < readme.index("## Quick start")
    assert "keeps 429s rare, not impossible" in readme[caveat : readme.index("## Quick start")]


def readme_demo() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("To try pkproxy without the real API", 1)[1]
    block = block.split("```sh", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.strip().splitlines()]


def test_readme_demo_runs_pkproxy_in_front_of_the_fake(tmp_path: Path) -> None:
    """The development section's demo, as written (ports moved to free ones): the fake starts,
    pkproxy forwards to it with --upstream, the second request is a cache hit, and the
    fake's arrivals show one upstream request."""
    ports = {"8081": str(free_port()), "8080": str(free_port())}
    fake, proxy, *fetches = [
        [re.sub(r"\b(8080|8081)\b", lambda port: ports[port[1]], word) for word in line]
        for line in readme_demo()
    ]
    assert fake[:4] == ["python", "-m", "tests.perf", "fake"] and proxy[0] == "pkproxy"
    assert [f[0] for f in fetches] == ["curl", "curl"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")},
        "XDG_CACHE_HOME": str(tmp_path),
    }
    started = [
        subprocess.Popen([sys.executable, *fake[1:]], cwd=ROOT, env=env),
        subprocess.Popen(
            [sys.executable, "-m", "proxy", *proxy[1:]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        ),
    ]
    try:
        served, arrivals = fetches[0][-1], fetches[1][-1]
        wait_for(f"http://127.0.0.1:{ports['8080']}/healthz")
        wait_for(arrivals)
        caches = []
        for _ in range(2):
            with urllib.request.urlopen(served, timeout=10) as answer:
                caches.append(answer.headers["X-Cache"])
        assert caches == ["MISS", "HIT"]
        with urllib.request.urlopen(arrivals, timeout=10) as answer:
            assert len(json.load(answer)) == 1
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing answers {url}"
            time.sleep(0.1)
