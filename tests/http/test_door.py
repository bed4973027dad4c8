"""The door's own routes over real loopback HTTP (httpx, like curl): health, readiness, status, models,
metrics parsed by prometheus_client's own parser, auth and scopes, body limits, drain."""

from __future__ import annotations

import json
from typing import Any

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from duckagents.config import (
    Config,
    GatewayConfig,
    HttpConfig,
    ProviderConfig,
    RouterConfig,
    TokenConfig,
)
from duckagents.errors import ConfigError
from duckagents.gateway import connect, open_gateway
from duckagents.http import open_http
from duckagents.providers import MockProvider
from duckagents.resilience import BreakerConfig
from duckagents.testing import Fault, OpenAIServer, ScriptedReply, ThreadedServer, open_openai_server
from duckagents.validation import ValidationLimits

from .support import chat_body, is_error_object, mock_config, running_door, sse_events, strict_json, until

KEY = "sk-door-test-0123456789abcdefghij"
ENV = {"DOOR_KEY": KEY, "TOKEN_BOTH": "tok-both-0123456789", "TOKEN_WATCH": "tok-watch-0123456789"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels), through prometheus_client's own text parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, **headers: str) -> dict[Any, float]:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_health_readiness_models_and_status() -> None:
    config = mock_config(
        ProviderConfig(name="mock", kind="mock", default_model="mock-1", models=("mock-2",)),
    )
    async with running_door(config) as (_, server, client):
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert (await client.head("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["serving"] == ["mock"]
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["mock-2", "mock-1"]
        assert all(m["object"] == "model" and m["owned_by"] == "mock" for m in models["data"])
        one = await client.get("/v1/models/mock-2")
        assert one.status_code == 200 and one.json()["id"] == "mock-2"
        missing = await client.get("/v1/models/gpt-9")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        status = (await client.get("/v1/status")).json()
        (agent,) = status["data"]
        assert agent["provider"] == "mock" and agent["breaker_state"] == "closed"
        assert agent["serving"] is True and agent["reachable"] is True
        assert set(agent["headroom"]) == {"requests", "tokens", "retry_after"}
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0


async def test_unknown_routes_and_methods_are_openai_errors() -> None:
    async with running_door(mock_config()) as (_, _, client):
        nowhere = await client.get("/v2/nothing")
        assert nowhere.status_code == 404 and is_error_object(nowhere.json())
        wrong = await client.get("/v1/chat/completions")
        assert wrong.status_code == 405 and is_error_object(wrong.json())
        assert "POST" in wrong.headers["allow"]


async def test_readyz_turns_503_when_every_agent_is_down() -> None:
    # Real upstreams on their own threads, so the test can stop them while the tree keeps running.
    upstreams = {
        "a": ThreadedServer(OpenAIServer(api_key=KEY)),
        "b": ThreadedServer(OpenAIServer(api_key=KEY)),
    }
    running = []
    try:
        for up in upstreams.values():
            running.append(up.__enter__())
        providers = tuple(
            ProviderConfig(
                name=name,
                kind="openai",
                base_url=up.server.base_url,
                api_key_env="DOOR_KEY",
                default_model="gpt-4o-mini",
            )
            for name, up in upstreams.items()
        )
        config = Config(providers=providers, http=HttpConfig(enabled=True, port=0), health_interval=0.2)
        async with running_door(config, environ=ENV) as (_, _, client):
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and sorted(ready.json()["serving"]) == ["a", "b"]
            await trio.to_thread.run_sync(upstreams["a"].__exit__, None, None, None)
            running.remove(upstreams["a"])

            async def only_b() -> bool:
                nonlocal ready
                ready = await client.get("/readyz")
                return bool(ready.json().get("serving") == ["b"])

            await until(only_b)
            assert ready.status_code == 200
            assert any(r.startswith("a: upstream unreachable") for r in ready.json()["not_serving"])
            await trio.to_thread.run_sync(upstreams["b"].__exit__, None, None, None)
            running.remove(upstreams["b"])

            async def none_left() -> bool:
                nonlocal ready
                ready = await client.get("/readyz")
                return ready.status_code == 503

            await until(none_left)
            body = ready.json()
            assert body["status"] == "not ready"
            assert sorted(r.split(":")[0] for r in body["reasons"]) == ["a", "b"]
            assert (await client.get("/healthz")).status_code == 200  # the process itself is fine
    finally:
        for up in running:
            up.__exit__(None, None, None)


async def test_metrics_count_what_was_sent_through_both_doors() -> None:
    async with open_openai_server(api_key=KEY) as upstream, open_openai_server(api_key=KEY) as spare:
        providers = (
            ProviderConfig(
                name="gpt",
                kind="openai",
                base_url=upstream.base_url,
                api_key_env="DOOR_KEY",
                models=("gpt-4o-mini",),
                cost_per_1k_input=1.0,
                cost_per_1k_output=2.0,
            ),
            ProviderConfig(
                name="spare",
                kind="openai",
                base_url=spare.base_url,
                api_key_env="DOOR_KEY",
                models=("gpt-4o-mini",),
                priority=1,
            ),
        )
        config = Config(
            providers=providers,
            router=RouterConfig(backoff_initial=0.0),
            http=HttpConfig(enabled=True, port=0),
            gateway=GatewayConfig(port=0),
        )
        async with running_door(config, environ=ENV) as (tree, server, client):
            async with open_gateway(tree.router, config.gateway) as gateway:
                server.metrics.gateway_stats = gateway.stats
                upstream.script.push(*[ScriptedReply(text="hi", prompt_tokens=7, completion_tokens=5)] * 3)
                for _ in range(2):
                    answer = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o-mini"))
                    assert answer.status_code == 200, answer.text
                streamed = await client.post(
                    "/v1/chat/completions", json=chat_body(model="gpt-4o-mini", stream=True)
                )
                assert streamed.status_code == 200 and sse_events(streamed.text)[-1] == "[DONE]"
                # One request fails over: gpt answers 500, spare takes it (its own usage: echo reply).
                upstream.inject(Fault(status=500, path="/v1/chat/completions"))
                spare.script.push(ScriptedReply(text="from spare", prompt_tokens=3, completion_tokens=2))
                failover = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o-mini"))
                assert failover.json()["choices"][0]["message"]["content"] == "from spare"
                unknown = await client.post("/v1/chat/completions", json=chat_body(model="nope"))
                assert unknown.status_code == 404
                # A request through the WebSocket gateway is counted too.
                async with connect(gateway.url) as ws:
                    await ws.send_message(
                        '{"type":"request","id":1,"messages":'
                        '[{"role":"user","content":"via ws"}],"model":"gpt-4o-mini"}'
                    )
                    while '"provider_response"' not in await ws.get_message():
                        pass
                    got: dict[Any, float] = {}

                    async def all_counted() -> bool:
                        nonlocal got
                        got = await scrape(client)
                        gpt_ok = {"provider": "gpt", "model": "gpt-4o-mini", "kind": "ok"}
                        return value(got, "duckagents_requests_total", **gpt_ok) >= 4

                    await until(all_counted)
                    assert value(got, "duckagents_gateway_connections") == 1
    ok = {"provider": "gpt", "model": "gpt-4o-mini"}
    assert value(got, "duckagents_requests_total", **ok, kind="ok") == 4  # 2 JSON + 1 stream + 1 gateway
    assert value(got, "duckagents_requests_total", provider="spare", model="gpt-4o-mini", kind="ok") == 1
    assert value(got, "duckagents_requests_total", provider="", model="unknown", kind="no_provider") == 1
    assert value(got, "duckagents_requests_started_total") == 6
    # tokens: 3 scripted replies of 7 + 5; the gateway's echo has its own stand-in count
    input_sum = value(got, "gen_ai_client_token_usage_sum", **ok, token_type="input")
    output_sum = value(got, "gen_ai_client_token_usage_sum", **ok, token_type="output")
    assert value(got, "gen_ai_client_token_usage_count", **ok, token_type="input") == 4
    assert input_sum >= 3 * 7 + 1 and output_sum >= 3 * 5 + 1
    assert (
        value(
            got, "gen_ai_client_token_usage_sum", provider="spare", model="gpt-4o-mini", token_type="output"
        )
        == 2
    )
    # cost from the configured prices: USD per 1k tokens
    assert value(got, "duckagents_cost_usd_total", **ok) == pytest.approx(
        (input_sum * 1 + output_sum * 2) / 1000
    )
    assert value(got, "gen_ai_client_operation_duration_seconds_count", **ok, kind="ok") == 4
    assert value(got, "gen_ai_client_operation_time_to_first_chunk_seconds_count", **ok) >= 1
    assert value(got, "duckagents_attempts_total", **ok, kind="upstream_5xx") == 1
    assert value(got, "duckagents_attempts_total", provider="spare", model="gpt-4o-mini", kind="ok") == 1
    assert value(got, "duckagents_failovers_total", provider="spare") == 1
    assert value(got, "duckagents_breaker_state", provider="gpt", state="closed") == 1
    assert value(got, "duckagents_breaker_state", provider="gpt", state="open") == 0
    assert value(got, "duckagents_provider_reachable", provider="gpt") == 1
    assert value(got, "duckagents_requests_in_flight") == 0
    assert value(got, "duckagents_attempts_in_flight", provider="gpt") == 0
    assert value(got, "duckagents_metrics_signals_dropped_total") == 0
    assert (
        value(
            got,
            "http_server_request_duration_seconds_count",
            http_request_method="POST",
            http_route="/v1/chat/completions",
            http_response_status_code="200",
        )
        == 4
    )
    assert (
        value(
            got,
            "http_server_request_duration_seconds_count",
            http_request_method="POST",
            http_route="/v1/chat/completions",
            http_response_status_code="404",
        )
        == 1
    )


async def test_restarts_and_breaker_state_reach_the_metrics() -> None:
    mock = MockProvider(default_model="mock-1")
    breaker = BreakerConfig(failure_threshold=1, open_timeout=60)
    config = Config(
        providers=(ProviderConfig(name="mock", kind="mock", default_model="mock-1", breaker=breaker),),
        # One attempt, and a deadline shorter than the open breaker: a refusal comes at once.
        router=RouterConfig(max_attempts=1, request_timeout=5),
        http=HttpConfig(enabled=True, port=0),
    )
    async with running_door(config, providers={"mock": mock}) as (_, _, client):
        mock.crash_agent_next()
        crashed = await client.post("/v1/chat/completions", json=chat_body())
        assert crashed.status_code == 500 and crashed.json()["error"]["type"] == "agent_crashed"

        async def restarted() -> bool:  # the supervisor restarts the agent
            return (await client.get("/readyz")).status_code == 200

        await until(restarted)
        mock.fail_next("upstream_5xx")
        failed = await client.post("/v1/chat/completions", json=chat_body())
        assert failed.status_code == 502 and failed.json()["error"]["type"] == "upstream_5xx"
        got: dict[Any, float] = {}

        async def breaker_open() -> bool:
            nonlocal got
            got = await scrape(client)
            return value(got, "duckagents_breaker_state", provider="mock", state="open") == 1

        await until(breaker_open)
        assert value(got, "duckagents_restarts_total", child="agent:mock") == 1
        assert value(got, "duckagents_supervisor_events_total", child="agent:mock", event="crashed") == 1
        assert (
            value(got, "duckagents_requests_total", provider="mock", model="mock-1", kind="agent_crashed")
            == 1
        )
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "circuit breaker open" in ready.json()["reasons"][0]
        refused = await client.post("/v1/chat/completions", json=chat_body())
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "circuit_open"
        assert 0 < int(refused.headers["retry-after"]) <= 60


async def test_tokens_and_scopes_are_the_gateways() -> None:
    tokens = (TokenConfig("TOKEN_BOTH"), TokenConfig("TOKEN_WATCH", scopes=("subscribe",)))
    config = Config(
        providers=mock_config().providers,
        gateway=GatewayConfig(tokens=tokens),
        http=HttpConfig(enabled=True, port=0),
    )
    both = {"authorization": f"Bearer {ENV['TOKEN_BOTH']}"}
    watch = {"authorization": f"Bearer {ENV['TOKEN_WATCH']}"}
    async with running_door(config, environ=ENV) as (_, _, client):
        assert (await client.get("/healthz")).status_code == 200  # probes need no token
        assert (await client.get("/readyz")).status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic eHg6eXk="}):
            denied = await client.post("/v1/chat/completions", json=chat_body(), headers=headers)
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
            assert denied.headers["www-authenticate"].startswith("Bearer")
            assert (await client.get("/metrics", headers=headers)).status_code == 401
            assert (await client.get("/v1/models", headers=headers)).status_code == 401
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=both)).status_code == 200
        lacking = await client.post("/v1/chat/completions", json=chat_body(), headers=watch)
        assert lacking.status_code == 403 and lacking.json()["error"]["code"] == "permission_denied"
        assert (await client.get("/metrics", headers=watch)).status_code == 200
        assert (await client.get("/v1/status", headers=watch)).status_code == 200
        assert (await client.get("/v1/models", headers=watch)).status_code == 200
        # A page of another site, in the user's browser, gets nothing (even with a good token).
        foreign = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={**both, "origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        local = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={**both, "origin": "http://localhost:3000"}
        )
        assert local.status_code == 200
        # No token ever appears in what the door says.
        for secret in (ENV["TOKEN_BOTH"], ENV["TOKEN_WATCH"]):
            assert secret not in (await client.get("/metrics", headers=watch)).text
            assert secret not in (await client.get("/v1/status", headers=watch)).text


async def test_body_limits_and_field_errors_name_the_field() -> None:
    limits = ValidationLimits(max_bytes=2000, max_depth=16, max_tool_schema_depth=4)
    async with running_door(mock_config(validation=limits)) as (_, _, client):
        big = await client.post("/v1/chat/completions", json=chat_body("x" * 5000))
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        deep: Any = "leaf"
        for _ in range(20):
            deep = [deep]
        nested = await client.post(
            "/v1/chat/completions",
            json=chat_body(
                tools=[
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "x": deep}},
                    }
                ]
            ),
        )
        assert nested.status_code == 400 and "nested deeper than 16" in nested.json()["error"]["message"]
        assert nested.json()["error"]["param"].startswith("tools[0].function.parameters.x[0]")
        schema: Any = {"type": "object"}
        for _ in range(5):  # within the body's depth, beyond a tool schema's (max_tool_schema_depth = 4)
            schema = {"type": "object", "properties": {"p": schema}}
        tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
        deep_schema = await client.post("/v1/chat/completions", json=chat_body(tools=[tool]))
        assert deep_schema.status_code == 400, deep_schema.text
        assert deep_schema.json()["error"]["param"].startswith("options.tools[0].parameters")
        cases: list[tuple[Any, str]] = [
            (chat_body(n=2), "n"),
            (chat_body(temperature=3), "temperature"),
            (chat_body(max_tokens=0), "max_tokens"),
            (chat_body(frobnicate=True), "frobnicate"),
            (chat_body(response_format={"type": "json_schema", "json_schema": {}}), "response_format.type"),
            ({"model": "mock-1", "messages": []}, "messages"),
            ({"model": "mock-1", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
            ({"model": "mock-1", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
            ({"model": 5, "messages": [{"role": "user", "content": "hi"}]}, "model"),
            (chat_body(stream_options={"include_usage": True}), "stream_options"),
            (
                chat_body(tool_choice={"type": "function", "function": {"name": "nope"}}),
                "tool_choice.function.name",
            ),
        ]
        for body, param in cases:
            answer = await client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 400, (body, answer.text)
            error = answer.json()["error"]
            assert error["param"] == param and error["type"] == "invalid_request", (body, error)
        for raw, where in (
            (b"{nope", "not valid JSON"),
            (b"\xff\xfe", "UTF-8"),
            (b'{"a": NaN}', "NaN"),
            (b'"\\ud800"', "surrogate"),
            (b"1" * 1000, "out of range"),
        ):
            answer = await client.post("/v1/chat/completions", content=raw)
            assert answer.status_code == 400 and where in answer.json()["error"]["message"], answer.text
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200


async def test_a_slow_body_gets_408() -> None:
    async with running_door(mock_config(body_timeout=0.3)) as (_, server, _):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
                b'content-type: application/json\r\n\r\n{"model":'
            )
            with trio.fail_after(10):
                data = b""
                while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                    data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert strict_json(body)["error"]["code"] == "request_timeout"


async def test_drain_lets_requests_finish_and_refuses_new_ones() -> None:
    mock = MockProvider(default_model="mock-1", latency=0.5)
    async with running_door(mock_config(), providers={"mock": mock}) as (_, server, client):
        results: list[httpx.Response] = []

        async def slow() -> None:
            results.append(await client.post("/v1/chat/completions", json=chat_body("slow")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await until(lambda: _true(server.door.in_flight.count > 0), step=0.01)
            nursery.start_soon(server.aclose)
            await until(lambda: _true(server.draining), step=0.01)
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "draining" in ready.json()["reasons"][0]
            refused = await client.post("/v1/chat/completions", json=chat_body("late"))
            assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutdown"
        assert (
            results[0].status_code == 200 and "slow" in results[0].json()["choices"][0]["message"]["content"]
        )


async def test_in_flight_limit_answers_503_with_retry_after() -> None:
    mock = MockProvider(default_model="mock-1", latency=0.5)
    async with running_door(mock_config(max_in_flight=1), providers={"mock": mock}) as (_, server, client):

        async def slow() -> None:
            assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await until(lambda: _true(server.door.in_flight.count > 0), step=0.01)
            busy = await client.post("/v1/chat/completions", json=chat_body())
        assert busy.status_code == 503 and busy.json()["error"]["type"] == "overloaded"
        assert busy.headers["retry-after"] == "1"


async def test_non_loopback_without_tokens_is_refused() -> None:
    config = Config(providers=mock_config().providers, http=HttpConfig(enabled=True, host="0.0.0.0", port=0))
    with pytest.raises(Exception, match=r"refusing to serve '0\.0\.0\.0' without tokens"):
        async with running_door(config):
            pass


async def test_busy_port_is_a_clear_config_error() -> None:
    async with running_door(mock_config()) as (tree, server, _):
        taken = Config(providers=mock_config().providers, http=HttpConfig(enabled=True, port=server.port))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
            async with open_http(tree.router, taken):
                pass


async def _true(value: bool) -> bool:
    await trio.lowlevel.checkpoint()
    return value


async def test_a_client_that_leaves_a_json_request_cancels_it() -> None:
    mock = MockProvider(default_model="mock-1", latency=30.0)
    async with running_door(mock_config(), providers={"mock": mock}) as (tree, server, client):
        body = b'{"model":"mock-1","messages":[{"role":"user","content":"slow"}]}'
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await until(lambda: _true(tree.router.in_flight == 1), step=0.01)
        await stream.aclose()  # the client gives up long before the 30 s answer

        async def cancelled() -> bool:
            got = await scrape(client)
            return (
                value(got, "duckagents_requests_total", provider="mock", model="mock-1", kind="cancelled")
                == 1
            )

        with trio.fail_after(10):  # far less than the mock's 30 s: the request was cancelled, not answered
            await until(cancelled)
        assert tree.router.in_flight == 0 and server.door.in_flight.count == 0


async def test_a_tokens_chat_requests_spend_its_budget_and_a_typo_gets_the_closest_model() -> None:
    from duckagents.costs import Budget

    tokens = (TokenConfig(env="TOKEN_BOTH", name="both", budget=Budget(0.004, "day")),)
    # $1 per 1,000 output tokens: each 8-character mock answer (2 tokens) costs $0.002.
    priced = ProviderConfig(
        name="mock", kind="mock", default_model="mock-1", cost_per_1k_input=0.0, cost_per_1k_output=1.0
    )
    config = attrs.evolve(mock_config(priced), gateway=GatewayConfig(tokens=tokens))
    mock = MockProvider(replies=["abcdefgh"] * 3)
    auth = {"authorization": f"Bearer {ENV['TOKEN_BOTH']}"}
    async with running_door(config, environ=ENV, providers={"mock": mock}) as (tree, _, client):
        answers = [
            await client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2), headers=auth)
            for _ in range(3)
        ]
        typo = await client.post("/v1/chat/completions", json=chat_body("hi", model="mock1"), headers=auth)
        [spend] = await tree.router.spend()
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[2].json()["error"]
    assert refused["type"] == "budget_exceeded" and "token:both" in refused["message"]
    assert mock.calls == 2 and (spend.account, spend.spent) == ("token:both", 0.004)
    assert typo.status_code == 404 and "(did you mean 'mock-1'?)" in typo.json()["error"]["message"]


async def test_v1_status_is_the_routers_status_document_and_follows_operator_controls() -> None:
    """One status document for both doors: GET /v1/status returns what the gateway's status message does
    (router.status_document()), current to the last control and request."""
    async with running_door(mock_config()) as (tree, _, client):
        await client.post("/v1/chat/completions", json=chat_body("hi"))
        await tree.router.controls.drain("mock", principal="test")
        response = await client.get("/v1/status")
        document = strict_json(response.content)
        assert document == json.loads(json.dumps(tree.router.status_document()))
        (agent,) = document["data"]
        assert agent["draining"] and not agent["serving"] and agent["metrics"]["total_requests"] == 1
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and any("draining" in r for r in ready.json()["reasons"])
        await tree.router.controls.disable_breaker("mock")
        await tree.router.controls.resume("mock")
        (agent,) = (await client.get("/v1/status")).json()["data"]
        assert agent["breaker_state"] == "disabled" and agent["serving"]  # a breaker switched off serves
