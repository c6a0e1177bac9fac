"""The deployment files parse, agree with the code, and their commands work."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

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


def test_kubernetes_sidecar_has_probes_resources_and_emptydir() -> None:
    """The sidecar probes /healthz and /readyz on its port and keeps its cache on emptyDir."""
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "bot-with-pkproxy.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["containers"] if c["name"] == "pkproxy")
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert sidecar["resources"]["requests"]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    mount = sidecar["volumeMounts"][0]
    assert env["PKPROXY_CACHE_DIRECTORY"] == mount["mountPath"]
    assert any("emptyDir" in v and v["name"] == mount["name"] for v in spec["volumes"])
    assert sidecar["args"] == ["pkproxy"]


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
