"""Configuration parsing: TOML files, defaults, and clear errors for bad input."""

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
from duckagents.errors import Secret

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
    assert gpt.limits.requests_per_minute == 500 and gpt.models == ("gpt-4o-mini",)
    assert local.breaker.failure_threshold == 3 and local.breaker.half_open_trials == 1
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
    ],
)
def test_bad_config_names_the_problem(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert fragment in str(info.value)


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
