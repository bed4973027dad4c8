"""Configuration parsing: TOML files, defaults, and clear errors for bad input."""

import re
from pathlib import Path

import pytest

from duckagents.config import (
    Config,
    ConfigError,
    FleetConfig,
    ProviderConfig,
    default_config,
    load_config,
    mask_url,
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
        (
            {"providers": [{"name": "a", "kind": "mock", "modle": "x"}]},
            "unknown key 'modle' (did you mean 'models'?) @ $.providers[0]",
        ),
        ({"provider": []}, "unknown key 'provider' (did you mean 'providers'?) @ $"),
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
            "unknown key 'requests' (the keys here: requests_per_minute, tokens_per_minute, burst)"
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
            "open_timeout must be >= 0, got -1.0 @ $.providers[0].breaker",
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


def test_a_burst_is_a_smaller_bucket_refilled_at_the_per_minute_rate() -> None:
    limits = {"requests_per_minute": 600, "tokens_per_minute": 60_000, "burst": 20}
    config = parse_config({"providers": [{"name": "a", "kind": "mock", "limits": limits}]})
    [provider] = config.providers
    # 20 requests at once, then 10 a second: 600 a minute, the token rate kept over the same 2 s.
    assert provider.limits == RateLimits(requests=20, tokens=2000, period=2.0)
    with pytest.raises(ConfigError, match="burst needs requests_per_minute"):
        parse_config({"providers": [{"name": "a", "kind": "mock", "limits": {"burst": 5}}]})
    with pytest.raises(ConfigError, match="burst must be > 0"):
        parse_config(
            {"providers": [{"name": "a", "kind": "mock", "limits": {"requests_per_minute": 5, "burst": 0}}]}
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
        ({"body_timeout": float("nan")}, "must be a finite number, got nan @ $.http.body_timeout"),
        ({"keep_alive_timeout": float("inf")}, "got inf @ $.http.keep_alive_timeout"),
        ({"body_timeout": -1}, "body_timeout must be a finite number > 0, got -1"),
        ({"max_in_flight": 0}, "max_in_flight must be a finite number > 0"),
        ({"prot": 80}, "unknown key 'prot' (did you mean 'port'?) @ $.http"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config({"http": bad})


# --- model routing keys (docs/routing.md) ----------------------------------------------------------

ROUTED = """
[router]
default_model = "gpt-4o-mini"

[[providers]]
name = "gpt"
kind = "openai"
models = ["gpt-4o*", "o3-mini"]
weight = 3
first_chunk_timeout = 20
idle_chunk_timeout = 5
budget = { usd = 20, period = "day" }

[[providers]]
name = "local"
kind = "ollama"
models = ["gemma:*"]

[[providers]]
name = "backup"
kind = "mock"

[models."gpt-4o-mini"]
fallbacks = ["llama3.2", "mock-1"]
context_window_fallbacks = ["gpt-4o"]
price = { input = 0.1, output = 0.5 }

[[gateway.tokens]]
env = "ALICE_TOKEN"
name = "alice"
budget = { usd = 5, period = "month" }
"""


def test_routing_keys_are_structured() -> None:
    import tomllib

    from duckagents.config import ModelConfig
    from duckagents.costs import Budget, ModelPrice

    config = parse_config(tomllib.loads(ROUTED))
    gpt, local, backup = config.providers
    assert (gpt.weight, gpt.first_chunk_timeout, gpt.idle_chunk_timeout) == (3.0, 20.0, 5.0)
    assert gpt.budget == Budget(20.0, "day") and local.budget is None
    assert config.models["gpt-4o-mini"] == ModelConfig(
        fallbacks=("llama3.2", "mock-1"), context_window_fallbacks=("gpt-4o",), price=ModelPrice(0.1, 0.5)
    )
    [token] = config.gateway.tokens
    assert (token.label, token.budget) == ("alice", Budget(5.0, "month"))
    assert config.default_model == "gpt-4o-mini"
    # Patterns and the default model: nothing else.
    assert gpt.serves("gpt-4o-mini") and gpt.serves("gpt-4o-2024-08-06") and gpt.serves("o3-mini")
    assert not gpt.serves("gpt-4.1") and not gpt.serves("o3-mini-high")
    assert local.serves("llama3.2") and local.serves("gemma:2b") and not local.serves("gemma2")
    assert backup.serves("mock-1") and not backup.serves("gpt-4o-mini")  # no list: its default only
    assert ProviderConfig(name="any", kind="openai", models=("*",)).serves("whatever-you-like")


def test_the_default_model_without_router_default_model() -> None:
    config = Config(providers=(
        ProviderConfig(name="b", kind="mock", priority=5),
        ProviderConfig(name="a", kind="anthropic", priority=1),
        ProviderConfig(name="c", kind="ollama", priority=1),
    ))
    assert config.default_model == "claude-sonnet-4-6"  # lowest priority, then config order
    assert Config().default_model is None


def test_kind_default_models_are_the_providers_own() -> None:
    from duckagents.config import DEFAULT_MODELS
    from duckagents.providers import (
        AnthropicProvider,
        MockProvider,
        OllamaProvider,
        OpenAIProvider,
        TGIProvider,
    )

    classes = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "ollama": OllamaProvider,
               "tgi": TGIProvider, "mock": MockProvider}
    assert {kind: cls().default_model for kind, cls in classes.items()} == DEFAULT_MODELS


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[router]\ndefault_model = "gpt-4o-mnii"',
         "router.default_model: no provider serves model 'gpt-4o-mnii' (did you mean 'gpt-4o-mini'?)"),
        ('[models."gpt-4o-mini"]\nfallbacks = ["claud-sonnet-4-6"]',
         "models.'gpt-4o-mini'.fallbacks: no provider serves model 'claud-sonnet-4-6'"
         " (did you mean 'claude-sonnet-4-6'?)"),
        ('[models."gpt-4o-mini"]\nfallbacks = ["gpt-4o-mini"]', "a model cannot fall back to itself"),
        ('[models."gpt-4o-mini"]\nfallbacks = ["mock-1", "mock-1"]', "'mock-1' is listed twice"),
        ('[models."gpt-4o-mini"]\nfallbacks = ["claude-*"]', "'claude-*' is a pattern"),
        ('[models."gpt-4o-mini"]\nfallbacks = ["claude-sonnet-4-6"]\n'
         '[models."claude-sonnet-4-6"]\ncontext_window_fallbacks = ["gpt-4o-mini"]',
         "the fallback chains loop: gpt-4o-mini -> claude-sonnet-4-6 -> gpt-4o-mini"),
        ('[router]\nmax_fallbacks = 1\n[models."gpt-4o-mini"]\nfallbacks = ["claude-sonnet-4-6"]\n'
         '[models."claude-sonnet-4-6"]\nfallbacks = ["mock-1"]',
         "models.'gpt-4o-mini': its fallback chains go 2 models deep; router.max_fallbacks is 1"),
        ('[models."gpt-4o-mini"]\nfallback = ["mock-1"]',
         "unknown key 'fallback' (did you mean 'fallbacks'?) @ $.models.gpt-4o-mini"),
        ('[models."gpt-5"]\nprice = { input = 1 }', "models.'gpt-5': no provider serves model 'gpt-5'"),
        ('[models."gpt-4o-mini"]\nprice = { input = 1, ouput = 2 }', "ouput"),
        ('[models."gpt-4o-mini"]\nprice = { input = -1 }', "input must be >= 0"),
    ],
)
def test_routing_mistakes_are_refused_at_load(extra: str, message: str) -> None:
    import tomllib

    base = (
        '[[providers]]\nname = "gpt"\nkind = "openai"\n'
        '[[providers]]\nname = "claude"\nkind = "anthropic"\n'
        '[[providers]]\nname = "backup"\nkind = "mock"\n'
    )
    # Tables after the array of tables: TOML needs them last, so the extra goes first.
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(extra + "\n" + base if extra.startswith("[router]") else base + extra))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ({"budget": {"usd": 5, "perod": "day"}}, "perod"),
        ({"budget": {"usd": 5, "period": "week"}}, "budget.period"),
        ({"budget": {"usd": 0}}, "usd must be > 0"),
        ({"weight": 0}, "weight must be a finite number > 0"),
        ({"first_chunk_timeout": -1}, "first_chunk_timeout must be a finite number > 0"),
        ({"cost_per_1k_input": -0.1}, "cost_per_1k_input must be a finite number >= 0"),
        ({"models": [""]}, "a model name must not be empty"),
    ],
)
def test_bad_routing_values_name_the_key(provider: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"providers": [{"name": "p", "kind": "mock", **provider}]})


def test_gateway_token_names_are_unique() -> None:
    tokens = [{"env": "A"}, {"env": "B", "name": "A"}]
    with pytest.raises(ConfigError, match="duplicate token names: A"):
        parse_config({"gateway": {"tokens": tokens}})


def test_the_embedded_default_falls_back_from_ollama_to_the_mock() -> None:
    from duckagents.config import ModelConfig

    assert default_config().default_model == "mock-1"
    with_ollama = default_config(with_ollama=True)
    assert with_ollama.default_model == "llama3.2"
    assert with_ollama.models == {"llama3.2": ModelConfig(fallbacks=("mock-1",))}


def test_the_official_host_is_the_vendors_own() -> None:
    assert ProviderConfig(name="o", kind="openai").official_host
    assert ProviderConfig(name="o", kind="openai", base_url="https://api.openai.com/v1/").official_host
    assert not ProviderConfig(name="o", kind="openai", base_url="http://127.0.0.1:8000/v1").official_host
    assert ProviderConfig(name="a", kind="anthropic").official_host
    assert not ProviderConfig(name="a", kind="anthropic", base_url="https://proxy.example/v1").official_host
    assert not ProviderConfig(name="l", kind="ollama").official_host
def _provider(**fields: object) -> dict[str, object]:
    return {"providers": [{"name": "p", "kind": "mock", **fields}]}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"routr": {}}, "unknown key 'routr' (did you mean 'router'?) @ $"),
        (
            {"router": {"max_attempt": 2}},
            "unknown key 'max_attempt' (did you mean 'max_attempts'?) @ $.router",
        ),
        ({"router": {"stratgy": "cheapest"}}, "unknown key 'stratgy' (did you mean 'strategy'?) @ $.router"),
        ({"gateway": {"prot": 1}}, "unknown key 'prot' (did you mean 'port'?) @ $.gateway"),
        ({"gateway": {"origins": ["*"]}}, "unknown key 'origins'"),
        (
            {"gateway": {"tokens": [{"env": "T", "scope": ["request"]}]}},
            "unknown key 'scope' (did you mean 'scopes'?) @ $.gateway.tokens[0]",
        ),
        (
            _provider(limits={"request_per_minute": 5}),
            "unknown key 'request_per_minute' (did you mean 'requests_per_minute'?) @ $.providers[0].limits",
        ),
        (
            _provider(breaker={"open_timout": 5}),
            "unknown key 'open_timout' (did you mean 'open_timeout'?) @ $.providers[0].breaker",
        ),
        (
            _provider(options={"latncy": 0.1}),
            "unknown key 'latncy' (did you mean 'latency'?) @ $.providers[0].options",
        ),
        (
            _provider(options={"failures": [{"kind": "timeout", "cout": 2}]}),
            "unknown key 'cout' (did you mean 'count'?) @ $.providers[0].options.failures[0]",
        ),
        (
            _provider(options={"latency": {"kind": "uniform", "lo": 0.1}}),
            "unknown key 'lo' (did you mean 'low'?) @ $.providers[0].options.latency",
        ),
        (
            {"providers": [{"name": "p", "kind": "openai", "options": {"organisation": "o"}}]},
            "unknown key 'organisation' (did you mean 'organization'?) @ $.providers[0].options",
        ),
        (
            {"providers": [{"name": "p", "kind": "anthropic", "options": {"context_windw": 9}}]},
            "unknown key 'context_windw' (did you mean 'context_window'?) @ $.providers[0].options",
        ),
        (
            {"providers": [{"name": "p", "kind": "ollama", "options": {"autopull": True}}]},
            "unknown key 'autopull' (did you mean 'auto_pull'?) @ $.providers[0].options",
        ),
        (
            {"providers": [{"name": "p", "kind": "tgi", "options": {"anything": 1}}]},
            "unknown key 'anything' (this table takes no keys) @ $.providers[0].options",
        ),
        # An option of one kind is unknown to another.
        (
            {"providers": [{"name": "p", "kind": "openai", "options": {"auto_pull": True}}]},
            "unknown key 'auto_pull'",
        ),
    ],
)
def test_unknown_keys_anywhere_are_named_with_a_suggestion(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert fragment in str(info.value)


def test_every_unknown_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"router": {"retries": 1}, "gateway": {"bind": "x"}})
    assert "'retries'" in str(info.value) and "'bind'" in str(info.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"health_interval": float("nan")}, "must be a finite number, got nan @ $.health_interval"),
        ({"health_interval": -5}, "health_interval must be a finite number > 0, got -5"),
        ({"health_interval": 0}, "health_interval must be a finite number > 0"),
        (
            {"router": {"request_timeout": float("inf")}},
            "must be a finite number, got inf @ $.router.request_timeout",
        ),
        ({"router": {"request_timeout": -1}}, "request_timeout must be a finite number > 0, got -1"),
        (
            {"router": {"backoff_initial": -0.5}},
            "backoff_initial must be a finite number >= 0, got -0.5 @ $.router",
        ),
        ({"router": {"backoff_max": float("nan")}}, "got nan @ $.router.backoff_max"),
        (
            {"router": {"backoff_initial": 3, "backoff_max": 2}},
            "backoff_initial (3) must not exceed backoff_max (2)",
        ),
        (_provider(breaker={"open_timeout": float("nan")}), "got nan @ $.providers[0].breaker.open_timeout"),
        (_provider(breaker={"open_timeout": -1}), "open_timeout must be >= 0"),
        (_provider(options={"latency": -0.1}), "latency must be a finite number of seconds >= 0, got -0.1"),
        (_provider(options={"latency": float("nan")}), "got nan @ $.providers[0].options.latency"),
        (
            _provider(options={"chunk_size": 0}),
            "chunk_size must be a finite number >= 1, got 0 @ $.providers[0].options",
        ),
        (_provider(options={"chunk_delay": -1}), "chunk_delay must be a finite number >= 0"),
        (_provider(timeout=-3), "timeout must be a finite number > 0, got -3"),
        (_provider(max_concurrency=0), "max_concurrency must be a finite number > 0, got 0"),
        (_provider(cost_per_1k_input=-1), "cost_per_1k_input must be a finite number >= 0"),
        ({"providers": [{"name": "", "kind": "mock"}]}, "name must not be empty @ $.providers[0]"),
        ({"providers": [{"name": "   ", "kind": "mock"}]}, "name must not be empty"),
        ({"providers": [{"name": " a", "kind": "mock"}]}, "without spaces around it"),
        (_provider(api_key_env=""), "api_key_env must not be empty"),
        ({"gateway": {"port": 70000}}, "port must be a TCP port from 0 to 65535, got 70000 @ $.gateway"),
        ({"gateway": {"port": -1}}, "port must be a TCP port from 0 to 65535, got -1"),
        ({"gateway": {"host": ""}}, "host must be a host name or address"),
        ({"gateway": {"tokens": [{"env": "T", "scopes": []}]}}, "scopes must name at least one"),
        (
            {"gateway": {"max_messages_per_second": float("inf")}},
            "got inf @ $.gateway.max_messages_per_second",
        ),
        (
            {"providers": [{"name": "p", "kind": "ollama", "options": {"ps_interval": -1}}]},
            "ps_interval must be a finite number > 0, got -1.0 @ $.providers[0].options",
        ),
        (
            {"providers": [{"name": "p", "kind": "ollama", "options": {"auto_pull": "yes"}}]},
            "expected true or false, got str @ $.providers[0].options.auto_pull",
        ),
        (
            {"providers": [{"name": "p", "kind": "anthropic", "options": {"context_window": 0}}]},
            "context_window must be a finite number > 0, got 0",
        ),
        (_provider(options={"replies": [5]}), "a reply is a string or a table"),
        (_provider(options={"latency": "slow"}), "latency is seconds or a table"),
        (_provider(options={"failures": [{"kind": "timeout", "count": 0}]}), "count"),
    ],
)
def test_out_of_range_and_non_finite_values_are_refused(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert fragment in str(info.value)


def test_options_are_checked_in_code_too() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        ProviderConfig(name="p", kind="mock", options={"chunk_size": 0})
    with pytest.raises(ValueError, match="unknown key 'latncy'"):
        ProviderConfig(name="p", kind="mock", options={"latncy": 1})


def test_a_failure_count_scripts_that_many_failures() -> None:
    [provider] = parse_config(_provider(options={"failures": [{"kind": "timeout", "count": 3}]})).providers
    assert provider.options["failures"][0]["count"] == 3


def test_a_missing_key_is_reported_not_raised_by_missing_key() -> None:
    provider = ProviderConfig(name="gpt", kind="openai", api_key_env="OPENAI_API_KEY")
    assert provider.missing_key({}) == "OPENAI_API_KEY is not set"
    assert provider.missing_key({"OPENAI_API_KEY": "sk-x"}) is None
    assert ProviderConfig(name="m", kind="mock").missing_key({}) is None


def test_directory_and_non_utf8_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


# --- fleet ---------------------------------------------------------------------------------------


def test_fleet_is_absent_by_default_and_parsed_when_given(tmp_path: Path) -> None:
    assert parse_config({}).fleet is None
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[fleet]\nredis_url = "redis://127.0.0.1:6379/0"\nkey_prefix = "prod"\ninstance = "eu-1"\n'
        "expected_replicas = 3\nstream_maxlen = 5000\ntimeout = 0.05\n"
    )
    fleet = load_config(path).fleet
    assert fleet == FleetConfig(
        redis_url="redis://127.0.0.1:6379/0",
        key_prefix="prod",
        instance="eu-1",
        expected_replicas=3,
        stream_maxlen=5000,
        timeout=0.05,
    )
    default = FleetConfig(redis_url="unix:///run/redis.sock")
    assert default.key_prefix == "duckagents" and default.expected_replicas == 1 and default.instance


@pytest.mark.parametrize(
    ("fleet", "fragment"),
    [
        ({}, "required field missing @ $.fleet.redis_url"),
        ({"redis_url": "http://h"}, "must start with redis://"),
        ({"redis_url": "redis://"}, "names no host"),
        ({"redis_url": "redis://h:70000"}, "not a valid URL"),
        ({"redis_url": "redis://h/zero"}, "database number"),
        ({"redis_url": "unix://"}, "no socket path"),
        ({"redis_url": "redis://h", "key_prefix": "a{b}"}, "fleet.key_prefix"),
        ({"redis_url": "redis://h", "instance": "has space"}, "fleet.instance"),
        ({"redis_url": "redis://h", "expected_replicas": 0}, "expected_replicas must be a finite number > 0"),
        ({"redis_url": "redis://h", "stream_maxlen": 0}, "stream_maxlen must be a finite number > 0"),
        ({"redis_url": "redis://h", "timeout": 0}, "timeout must be a finite number > 0"),
        ({"redis_url": "redis://h", "timeout": 30}, "<= 10.0"),
        ({"redis_url": "redis://h", "timeout": "1"}, "expected a number"),
        (
            {"redis_url": "redis://h", "pasword_env": "X"},
            "unknown key 'pasword_env' (did you mean 'password_env'?) @ $.fleet",
        ),
        ({"redis_url": "redis://:pw@h", "password_env": "X"}, "not both"),
    ],
)
def test_bad_fleet_config_names_the_problem(fleet: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"fleet": fleet})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret-pw@10.0.0.1:6380/2", "redis://:***@10.0.0.1:6380/2"),
        ("rediss://app:s3cret-pw@cache.example:6380/0", "rediss://app:***@cache.example:6380/0"),
        ("redis://s3cret-pw@h/0", "redis://***@h/0"),
        ("redis://h:6379/0?password=s3cret-pw&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_the_redis_password_is_masked_everywhere(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    config = parse_config({"fleet": {"redis_url": url}})
    assert config.fleet is not None and config.fleet.masked_url == masked
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.fleet)
    with pytest.raises(ConfigError) as info:
        parse_config({"fleet": {"redis_url": url.replace("/0", "/x").replace("/2", "/x"), "timeout": 1}})
    assert "s3cret" not in str(info.value)


def test_the_fleet_password_can_come_from_the_environment() -> None:
    fleet = FleetConfig(redis_url="redis://h", password_env="REDIS_PW")
    secret = fleet.password({"REDIS_PW": "s3cret-pw"})
    assert secret is not None and secret.reveal() == "s3cret-pw" and "s3cret" not in repr(secret)
    assert FleetConfig(redis_url="redis://h").password({}) is None
    with pytest.raises(ConfigError, match="REDIS_PW"):
        fleet.password({})
