"""Configuration parsing: TOML files, defaults, and clear errors for bad input."""

import re
from pathlib import Path

import pytest

from duckagents.config import (
    Config,
    ConfigError,
    ProviderConfig,
    default_config,
    load_config,
    parse_config,
)
from duckagents.errors import ErrorKind, Secret
from duckagents.resilience import BreakerConfig, RateLimits

EXAMPLE = """
health_interval = 10

[router]
strategy = "cheapest"
max_attempts = 2

[[providers]]
name = "gpt"
kind = "openai"
api_key_env = "OPENAI_API_KEY"
models = ["gpt-4o-mini"]
cost_per_1k_input = 0.15
limits = { requests_per_minute = 500, tokens_per_minute = 200000 }

[[providers]]
name = "local"
kind = "ollama"
breaker = { failure_threshold = 3, open_timeout = 5 }
"""


def test_toml_file_is_structured(tmp_path: Path) -> None:
    path = tmp_path / "duck.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.router.strategy == "cheapest"
    assert [p.name for p in config.providers] == ["gpt", "local"]
    gpt, local = config.providers
    assert gpt.limits == RateLimits(requests=500, tokens=200_000, period=60.0)
    assert gpt.models == ("gpt-4o-mini",)
    assert local.breaker == BreakerConfig(failure_threshold=3, open_timeout=5.0)
    assert local.limits == RateLimits()  # none set: the agent's per-model defaults apply
    assert local.url == "http://127.0.0.1:11434"
    assert gpt.url == "https://api.openai.com/v1"


def test_api_key_comes_from_the_named_environment_variable() -> None:
    provider = ProviderConfig(name="gpt", kind="openai", api_key_env="MY_KEY")
    key = provider.api_key({"MY_KEY": "sk-secret-value-123456789"})
    assert isinstance(key, Secret) and key.reveal() == "sk-secret-value-123456789"
    assert "sk-secret" not in repr(key) and "sk-secret" not in repr(provider)
    with pytest.raises(ConfigError, match="MY_KEY"):
        provider.api_key({})


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"providers": [{"name": "a", "kind": "nope"}]}, "providers[0].kind"),
        ({"providers": [{"name": "a", "kind": "mock", "limits": {"requests_per_minute": 0}}]}, "> 0"),
        ({"providers": [{"kind": "mock"}]}, "required field missing @ $.providers[0].name"),
        ({"providers": [{"name": "a", "kind": "mock", "modle": "x"}]}, "unknown key(s) modle"),
        ({"provider": []}, "unknown top-level key(s): provider"),
        ({"providers": [{"name": "a", "kind": "mock"}, {"name": "a", "kind": "mock"}]}, "duplicate"),
        ({"router": {"strategy": "fastest"}}, "router.strategy"),
        (
            {"providers": [{"name": "a", "kind": "mock", "limits": {"requests_per_minute": -1}}]},
            "requests_per_minute must be > 0, got -1 @ $.providers[0].limits",
        ),
        (
            {"providers": [{"name": "a", "kind": "mock", "limits": {"tokens_per_minute": "many"}}]},
            "tokens_per_minute must be an integer, got str @ $.providers[0].limits",
        ),
        (
            {"providers": [{"name": "a", "kind": "mock", "limits": {"tokens_per_minute": 1.5}}]},
            "tokens_per_minute must be an integer, got float",
        ),
        (
            {"providers": [{"name": "a", "kind": "mock", "limits": {"requests": 5}}]},
            "unknown key(s) requests; the keys are requests_per_minute and tokens_per_minute"
            " @ $.providers[0].limits",
        ),
        (
            {"providers": [{"name": "a", "kind": "mock", "limits": 5}]},
            "expected a table, got int @ $.providers[0].limits",
        ),
        (
            {"providers": [{"name": "a", "kind": "mock", "breaker": {"failure_threshold": 0}}]},
            "failure_threshold must be >= 1, got 0 @ $.providers[0].breaker",
        ),
        (
            {"providers": [{"name": "a", "kind": "mock", "breaker": {"open_timeout": -1}}]},
            "open_timeout must be >= 0, got -1.0",
        ),
        (
            {"providers": [{"name": "a", "kind": "mock", "breaker": {"tripping_kinds": ["oops"]}}]},
            "is not one of 'rate_limited'",
        ),
    ],
)
def test_bad_config_names_the_problem(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert fragment in str(info.value)


def test_limits_and_breaker_are_the_resilience_types_they_configure() -> None:
    config = parse_config(
        {
            "providers": [
                {
                    "name": "a",
                    "kind": "mock",
                    "limits": {"tokens_per_minute": 1000},
                    "breaker": {"half_open_trials": 2, "tripping_kinds": ["timeout", "network"]},
                }
            ]
        }
    )
    [provider] = config.providers
    # Per minute in the file, a RateLimits over 60 s in the code; an unset dimension stays None.
    assert provider.limits == RateLimits(requests=None, tokens=1000, period=60.0)
    assert provider.breaker == BreakerConfig(
        half_open_trials=2, tripping_kinds=frozenset({ErrorKind.TIMEOUT, ErrorKind.NETWORK})
    )


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[providers]\nname=")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_embedded_default_needs_no_keys() -> None:
    config = default_config()
    assert isinstance(config, Config)
    assert [p.kind for p in config.providers] == ["mock"]
    assert all(p.api_key() is None for p in config.providers)
    assert [p.kind for p in default_config(with_ollama=True).providers] == ["ollama", "mock"]


def test_http_section_is_structured_and_checked() -> None:
    http = {"enabled": True, "host": "0.0.0.0", "port": 9000, "max_in_flight": 10}
    config = parse_config({"http": http})
    assert config.http.enabled and config.http.host == "0.0.0.0" and config.http.port == 9000
    assert config.http.max_in_flight == 10 and config.http.body_timeout == 30
    assert not parse_config({}).http.enabled and parse_config({}).http.host == "127.0.0.1"
    for bad, message in (
        ({"port": 70000}, "port must be a TCP port from 0 to 65535"),
        ({"port": -1}, "port must be a TCP port"),
        ({"port": "80"}, "port"),
        ({"host": ""}, "host must be a host name"),
        ({"body_timeout": float("nan")}, "body_timeout must be > 0, got nan"),
        ({"keep_alive_timeout": float("inf")}, "keep_alive_timeout must be a finite number"),
        ({"max_in_flight": 0}, "max_in_flight must be > 0"),
        ({"prot": 80}, "http: unknown key(s) prot"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config({"http": bad})
