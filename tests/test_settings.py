"""Settings loading: which PKPROXY_* variables count, and how problems are reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from proxy.cli import warn_ignored_env
from proxy.settings import ConfigError, load_settings

# What Kubernetes injects for `kind: Service, name: pkproxy` with ports "http" 8080/TCP
# and "metrics" 9090/UDP, one environment variable per line.
SERVICE_LINKS = {
    "PKPROXY_SERVICE_HOST": "10.0.0.1",
    "PKPROXY_SERVICE_PORT": "8080",
    "PKPROXY_SERVICE_PORT_HTTP": "8080",
    "PKPROXY_SERVICE_PORT_METRICS_UDP": "9090",
    "PKPROXY_PORT": "tcp://10.0.0.1:8080",
    "PKPROXY_PORT_8080_TCP": "tcp://10.0.0.1:8080",
    "PKPROXY_PORT_8080_TCP_PROTO": "tcp",
    "PKPROXY_PORT_8080_TCP_PORT": "8080",
    "PKPROXY_PORT_8080_TCP_ADDR": "10.0.0.1",
    "PKPROXY_PORT_9090_UDP": "udp://10.0.0.1:9090",
    "PKPROXY_PORT_9090_UDP_PROTO": "udp",
    "PKPROXY_PORT_9090_UDP_PORT": "9090",
    "PKPROXY_PORT_9090_UDP_ADDR": "10.0.0.1",
    "PKPROXY_PORT_3868_SCTP_ADDR": "10.0.0.1",
}


def test_kubernetes_service_links_are_ignored_and_named() -> None:
    """Every service-link shape is ignored (the port stays the default) and listed."""
    settings = load_settings(env=SERVICE_LINKS)
    assert settings.server.port == 8080 and settings.server.host == "127.0.0.1"
    assert settings.ignored_env == tuple(sorted(SERVICE_LINKS))


@pytest.mark.parametrize("url", ["tcp://10.0.0.1:80", "udp://10.0.0.1:53", "sctp://[fd00::1]:9"])
def test_a_service_link_pkproxy_port_is_ignored(url: str) -> None:
    """PKPROXY_PORT in Kubernetes' proto://address:port shape is a link, not the port."""
    settings = load_settings(env={"PKPROXY_PORT": url})
    assert settings.server.port == 8080 and settings.ignored_env == ("PKPROXY_PORT",)


def test_a_plain_pkproxy_port_is_still_the_port_next_to_service_links() -> None:
    """PKPROXY_PORT=9000 stays the port alias, also when other service links are present."""
    links = {k: v for k, v in SERVICE_LINKS.items() if k != "PKPROXY_PORT"}
    settings = load_settings(env={**links, "PKPROXY_PORT": "9000"})
    assert settings.server.port == 9000 and "PKPROXY_PORT" not in settings.ignored_env


@pytest.mark.parametrize(
    "name",
    [
        "PKPROXY_SERVICE",
        "PKPROXY_SERVICE_HOSTNAME",
        "PKPROXY_SERVICE_PORT_",
        "PKPROXY_SERVICE_PORT_http",
        "PKPROXY_PORT_8080",
        "PKPROXY_PORT_HTTP_TCP",
        "PKPROXY_PORT_8080_HTTP",
        "PKPROXY_PORT_8080_TCP_HOST",
        "PKPROXY_SERVER_PORTS",
    ],
)
def test_other_unknown_variables_stay_errors(name: str) -> None:
    """Only the exact service-link shapes are ignored: near misses are still errors."""
    with pytest.raises(ConfigError) as error:
        load_settings(env={name: "1"})
    assert error.value.problems == [f"environment: unknown variable {name}"]


@pytest.mark.parametrize("value", ["http://10.0.0.1:8080", "tcp://10.0.0.1", "eighty"])
def test_a_pkproxy_port_that_is_neither_a_port_nor_a_link_is_an_error(value: str) -> None:
    """PKPROXY_PORT must be a number or Kubernetes' exact link shape."""
    with pytest.raises(ConfigError, match="PKPROXY_PORT"):
        load_settings(env={"PKPROXY_PORT": value})


def test_ignored_service_links_give_one_warning_naming_enable_service_links() -> None:
    """The caller logs one config.service_links_ignored warning that says how to turn them off;
    nothing when there are none."""
    with capture_logs() as logs:
        warn_ignored_env(load_settings(env=SERVICE_LINKS))
        warn_ignored_env(load_settings(env={}))
    assert len(logs) == 1
    (event,) = logs
    assert event["event"] == "config.service_links_ignored" and event["log_level"] == "warning"
    assert event["variables"] == sorted(SERVICE_LINKS)
    assert "enableServiceLinks: false" in event["hint"]


def problems_of(path: Path, text: str) -> list[str]:
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(str(path), env={})
    return error.value.problems


def test_an_invalid_default_priority_is_reported_once(tmp_path: Path) -> None:
    """A bad consumers.default_priority is named where it is, not again against each key."""
    problems = problems_of(
        tmp_path / "c.toml",
        '[consumers]\ndefault_priority = "urgent"\n'
        'keys = [{name = "a", key = "aaaaaaaa"}, {name = "b", key = "bbbbbbbb"}]\n',
    )
    assert problems == ["consumers.default_priority must be one of interactive, normal, background"]


def test_duplicates_are_reported_with_the_entries_other_problems(tmp_path: Path) -> None:
    """Duplicate consumer names and keys and scope names are named alongside the entries' own
    problems (not only once those are fixed), and a key is never printed."""
    problems = problems_of(
        tmp_path / "c.toml",
        '[budget]\nscopes = [{name = "a", rate = 1}, {name = "a", rate = 0}]\n'
        "[consumers]\nkeys = [\n"
        '  {name = "bot", key = "secret-key-1"},\n'
        '  {name = "bot", key = "short"},\n'
        '  {name = "other", key = "secret-key-1", weight = -1},\n'
        "]\n",
    )
    assert problems == [
        "budget.scopes[1]: rate must be a number > 0",
        "budget.scopes[1]: name 'a' is already used by budget.scopes[0]",
        "consumers.keys[1]: key must be a string of at least 8 characters",
        "consumers.keys[2]: weight must be a number > 0",
        "consumers.keys[1]: name 'bot' is already used by consumers.keys[0]",
        "consumers.keys[2]: key is already used by consumers.keys[0]",
    ]
    assert not any("secret-key-1" in problem for problem in problems)


def test_a_malformed_upstream_url_is_named_and_other_sections_still_checked(
    tmp_path: Path,
) -> None:
    """A URL that yarl refuses outright is reported as upstream.url, and the sections after
    it are still validated."""
    problems = problems_of(
        tmp_path / "c.toml", '[upstream]\nurl = "http://[bad"\n[log]\nlevel = "loud"\n'
    )
    assert problems == [
        "upstream.url must be an http(s) origin, got 'http://[bad'",
        "log.level must be one of debug, info, warning, error",
    ]


def test_the_default_cache_directory_is_one_per_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, cache.directory is $XDG_CACHE_HOME/pkproxy/<port>; a set one is kept as is."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert load_settings(env={}).cache.directory == str(tmp_path / "pkproxy" / "8080")
    on_9000 = load_settings(env={"PKPROXY_PORT": "9000"})
    assert on_9000.cache.directory == str(tmp_path / "pkproxy" / "9000")
    chosen = load_settings(env={"PKPROXY_PORT": "9000", "PKPROXY_CACHE_DIR": "/srv/c"})
    assert chosen.cache.directory == "/srv/c"


def test_the_body_budget_must_hold_at_least_one_largest_body() -> None:
    """A budget smaller than one allowed body would refuse the largest writes for ever."""
    with pytest.raises(ConfigError) as error:
        load_settings(
            env={"PKPROXY_SERVER_MAX_BODY_BYTES": "4096"},
            overrides={"server": {"max_buffered_body_bytes": 1024}},
        )
    assert error.value.problems == [
        "server.max_buffered_body_bytes must be >= server.max_body_bytes"
    ]
    settings = load_settings(env={"PKPROXY_SERVER_MAX_BUFFERED_BODY_BYTES": "2097152"})
    assert settings.server.max_buffered_body_bytes == 2097152
