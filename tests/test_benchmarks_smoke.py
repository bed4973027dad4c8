"""Smoke tests of the benchmark harness (benchmarks/): tiny runs so the code is exercised in CI.

No timing assertions: what is checked is that every scenario runs end to end over real loopback sockets,
answers are validated, records and reports have the promised shape, and the measurement arithmetic is
right on synthetic times. LiteLLM and pyinstrument are benchmark-only tools, not test dependencies: the
parts that need them are not run here. nginx is optional (the harness falls back to the loopback server).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio

REPO = Path(__file__).resolve().parent.parent
# benchmarks/ is repository tooling, not part of the installed package: import it from the checkout.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import doors as doors_module  # noqa: E402
from benchmarks import soak  # noqa: E402
from benchmarks import upstream as upstream_module  # noqa: E402
from benchmarks._stats import CallOutcome, LoadWindow, Recorder, percentile  # noqa: E402
from benchmarks.aggregate import http_ratios, http_rows  # noqa: E402
from benchmarks.loadgen_asyncio import run_load as run_asyncio_load  # noqa: E402
from benchmarks.loadgen_trio import run_load as run_trio_load  # noqa: E402
from benchmarks.profiling import summarise  # noqa: E402
from benchmarks.runner import run_worker  # noqa: E402
from benchmarks.upstream import (  # noqa: E402
    CONTENT_CHUNKS,
    EXPECTED_TEXT,
    find_nginx,
    open_upstream,
    render_nginx_config,
    run_loopback,
    run_nginx,
    sse_body,
)
from benchmarks.workload import HttpSpec  # noqa: E402
from duckagents.providers import SSEParser  # noqa: E402
from duckagents.testing import redis_server_path  # noqa: E402

OK = CallOutcome(ok=True, chunks=2, first_chunk=0.001)


# --- measurement arithmetic ----------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 99) == 99.0


def test_recorder_counts_only_completions_inside_the_window() -> None:
    recorder = Recorder(LoadWindow(warmup=1.0, duration=2.0), start=10.0, cpu_clock=lambda: 0.0)
    recorder.record(10.2, 10.9, OK)  # finished during warm-up
    recorder.record(10.5, 11.5, OK)  # started in warm-up, finished in the window: counts
    recorder.record(12.0, 12.5, CallOutcome(ok=False, error="boom"))
    recorder.record(12.9, 13.5, OK)  # finished after the window
    summary = recorder.summary()
    assert summary["warmup_requests"] == 1
    assert summary["requests"] == 1 and summary["errors"] == 1
    assert summary["error_examples"] == ["boom"]
    assert summary["window_s"] == pytest.approx(2.0)
    assert summary["throughput_rps"] == pytest.approx(0.5)
    assert summary["p50_ms"] == pytest.approx(1000.0)
    assert summary["chunks"] == 2 and summary["ttfc_p50_ms"] == pytest.approx(1.0)
    assert not recorder.should_continue(13.01) and recorder.should_continue(12.99)


def test_recorder_max_requests_closes_the_window_early() -> None:
    recorder = Recorder(LoadWindow(warmup=0.0, duration=100.0, max_requests=2), start=0.0)
    recorder.record(0.0, 1.0, OK)
    assert recorder.should_continue(1.0)
    recorder.record(1.0, 4.0, OK)
    assert not recorder.should_continue(4.0)
    recorder.record(2.0, 5.0, OK)  # in flight when the window closed: not counted
    summary = recorder.summary()
    assert summary["requests"] == 2
    assert summary["window_s"] == pytest.approx(4.0)


def test_recorder_min_requests_stretches_the_window_up_to_the_cap() -> None:
    window = LoadWindow(warmup=0.0, duration=1.0, min_requests=3, max_stretch=4.0)
    recorder = Recorder(window, start=0.0)
    recorder.record(0.0, 0.9, OK)
    assert recorder.should_continue(2.0)  # past the duration, but short of samples
    recorder.record(0.9, 2.5, OK)
    recorder.record(2.5, 3.0, OK)
    assert not recorder.should_continue(3.0)
    summary = recorder.summary()
    assert summary["requests"] == 3 and summary["window_s"] == pytest.approx(3.0)
    capped = Recorder(window, start=0.0)
    assert not capped.should_continue(4.01)


async def test_trio_load_runs_closed_loop_and_cancels_stragglers(autojump_clock: trio.abc.Clock) -> None:
    ids = itertools.count()

    async def call() -> CallOutcome:
        if next(ids) == 1:  # the second request hangs: it must not keep the run alive
            await trio.sleep_forever()
        await trio.sleep(1.0)
        return OK

    started = trio.current_time()
    summary = await run_trio_load(call, 2, LoadWindow(warmup=0.5, duration=3.0))
    # One worker completes at t = 1, 2, 3 (in the window [0.5, 3.5]); the other hangs from the start.
    assert summary["requests"] == 3 and summary["errors"] == 0
    assert summary["throughput_rps"] == pytest.approx(1.0)
    assert summary["p50_ms"] == pytest.approx(1000.0)
    assert trio.current_time() - started == pytest.approx(4.0)  # the 4th request ended past the window


def test_asyncio_load_counts_failures_and_stops_at_max_requests() -> None:
    ids = itertools.count()

    async def call() -> CallOutcome:
        await asyncio.sleep(0)
        if next(ids) % 3 == 0:
            raise ValueError("bad answer")
        return OK

    summary = asyncio.run(run_asyncio_load(call, 4, LoadWindow(warmup=0.0, duration=60.0, max_requests=9)))
    assert summary["requests"] + summary["errors"] == 9
    assert summary["errors"] >= 1 and summary["error_examples"][0] == "ValueError: bad answer"


def _record(client: str, repeat: int, rps: float, p50: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "throughput_rps": rps,
        "p50_ms": p50,
        "p99_ms": p50,
        "ttfc_p50_ms": None,
        "ttfc_p99_ms": None,
        "chunks_per_s": 0.0,
        "cpu_us_per_request": 100.0,
        "requests": 10,
        "errors": 0,
        "error_examples": [],
    }
    return {
        "client": client,
        "stream": False,
        "concurrency": 32,
        "repeat": repeat,
        "result": result,
        "peak_rss_mib": 40.0,
    }


def test_ratios_pair_clients_within_each_repeat() -> None:
    records = [
        _record("direct", 0, 100.0, 1.0),
        _record("duckagents", 0, 90.0, 1.5),
        _record("direct", 1, 50.0, 2.0),
        _record("duckagents", 1, 50.0, 2.1),
        _record("direct", 2, 200.0, 0.5),
        _record("duckagents", 2, 160.0, 0.6),
    ]
    (ratio,) = http_ratios(records)
    # Per-repeat ratios 0.9, 1.0, 0.8 -> median 0.9 (the ratio of medians would be 90/100 too, but the
    # added latency shows the pairing: diffs 0.5, 0.1, 0.1 -> 0.1, while medians differ by 0.5).
    assert ratio["duckagents_vs_direct_throughput"] == pytest.approx(0.9)
    assert ratio["duckagents_added_p50_ms"] == pytest.approx(0.1)
    assert ratio["duckagents_vs_litellm_throughput"] is None
    rows = {r["client"]: r for r in http_rows(records)}
    assert rows["duckagents"]["throughput_rps"] == 90.0 and rows["duckagents"]["repeats"] == 3


def _frame(path: str, function: str, time: float, *children: Any, cls: str | None = None) -> Any:
    return SimpleNamespace(
        file_path=path,
        function=function,
        class_name=cls,
        time=time,
        children=list(children),
        is_synthetic=False,
    )


def test_profile_summary_splits_the_provider_call_from_the_agent_layer() -> None:
    site = "/venv/lib/python3.11/site-packages"
    send = _frame(f"{site}/httpx/_client.py", "send", 6.0)
    complete = _frame("/repo/duckagents/providers/openai.py", "complete", 7.0, send, cls="OpenAIProvider")
    publish = _frame("/repo/duckagents/bus.py", "publish", 1.0, cls="SignalBus")
    execute = _frame("/repo/duckagents/agents/_execution.py", "_perform", 9.0, complete, publish)
    poll = _frame("<built-in>", "poll", 1.0)
    run = _frame(f"{site}/trio/_core/_run.py", "unrolled_run", 10.0, execute, poll)
    summary = summarise(run)
    assert summary["idle_pct"] == 10.0
    assert summary["provider_call_pct"] == 70.0
    # outside the provider call: _perform's own 1 s and publish's 1 s (duckagents); trio's own 0 s
    assert summary["layer_pct"] == 20.0
    inclusive = {x["where"]: x["pct"] for x in summary["duckagents_inclusive"]}
    assert inclusive["duckagents/agents/_execution.py:_perform"] == 90.0
    packages = {x["where"]: x["pct"] for x in summary["self_by_package"]}
    assert packages["httpx"] == 60.0 and packages["duckagents"] == 30.0


# --- the upstream --------------------------------------------------------------------------------


def test_sse_fixture_parses_to_the_expected_answer() -> None:
    events = SSEParser().feed(sse_body().encode())
    assert events[-1].data == "[DONE]"
    chunks = [e.json() for e in events[:-1]]
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]]
    assert len(deltas) == CONTENT_CHUNKS and "".join(deltas) == EXPECTED_TEXT
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == CONTENT_CHUNKS


def test_nginx_config_renders_every_placeholder(tmp_path: Path) -> None:
    text = render_nginx_config(tmp_path, 4321)
    assert "@" not in text.split("\n", 5)[-1]  # placeholders are @NAME@; none left after the header
    assert "listen 127.0.0.1:4321" in text and f"pid {tmp_path}/nginx.pid" in text
    assert "data: [DONE]\\n\\n'" in text and EXPECTED_TEXT.split()[0] in text


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (the harness falls back)")
def test_nginx_upstream_serves_both_bodies() -> None:
    with run_nginx(find_nginx() or "nginx") as upstream:
        body = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{upstream.json_base}/chat/completions", json=body).json()
        assert answer["choices"][0]["message"]["content"] == EXPECTED_TEXT
        stream = httpx.post(f"{upstream.sse_base}/chat/completions", json={**body, "stream": True})
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.text == sse_body()


def test_upstream_falls_back_to_loopback_when_nginx_cannot_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(upstream_module, "find_nginx", lambda: "/bin/false")  # exits at once
    with open_upstream("auto") as upstream:
        assert upstream.kind == "loopback"
        body = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{upstream.json_base}/chat/completions", json=body).json()
        assert answer["choices"][0]["message"]["content"]
    assert "nginx did not start" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="nginx did not start"), open_upstream("nginx"):
        pass


# --- workers and the whole CLI over loopback ------------------------------------------------------


def test_http_worker_reports_wrong_answers_as_errors() -> None:
    with run_loopback() as upstream:
        # The loopback server echoes the prompt, so demanding another text must fail every request.
        spec = HttpSpec(
            "direct",
            2,
            False,
            upstream.json_base,
            upstream.sse_base,
            warmup=0.0,
            duration=30.0,
            max_requests=4,
            expected_text="something else",
        )
        record = run_worker({"kind": "http", "params": spec.to_dict()})
    result = record["result"]
    assert result["requests"] == 0 and result["errors"] == 4
    assert "unexpected text" in result["error_examples"][0]
    assert record["peak_rss_mib"] > 0


def test_cli_quick_run_covers_every_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "latest.json"
    argv = [
        "--quick",
        "--upstream",
        "loopback",
        "--profile",
        "never",
        "--output",
        str(output),
        "--scenarios",
        "direct,duckagents,bus,supervisor,gateway,memory",
        "--concurrency",
        "2",
        "--warmup",
        "0",
        "--duration",
        "30",
        "--max-requests",
        "6",
        "--bus-deliveries",
        "3000",
        "--restarts",
        "10",
        "--gateway-clients",
        "4",
        "--gateway-signals",
        "25",
        "--memory-agents",
        "3",
        "--memory-in-flight",
        "6",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads(output.read_text())
    assert output.with_suffix(".md").read_text() == printed.rstrip("\n") + "\n"

    rows = data["derived"]["http_rows"]
    assert {(r["client"], r["stream"], r["concurrency"]) for r in rows} == {
        (c, s, 2) for c in ("direct", "duckagents") for s in (False, True)
    }
    for row in rows:
        assert row["failed_runs"] == 0 and row["errors"] == 0, row
        assert row["throughput_rps"] > 0 and row["p50_ms"] is not None and row["peak_rss_mib"] > 0
        if row["stream"]:
            assert row["ttfc_p50_ms"] is not None and row["chunks_per_s"] > 0
    assert all(r["result"]["requests"] == 6 for r in data["http"])

    internal = data["internal"]
    assert [b["subscribers"] for b in data["derived"]["bus"]["bus"]] == [1, 10, 100]
    assert internal["supervisor"]["result"]["bare"]["restarts"] == 10
    assert internal["supervisor"]["result"]["agent"]["restarts"] == 10
    gateway = data["derived"]["gateway"]
    assert gateway["received"] == 4 * 25 and gateway["dropped"] == 0
    memory = internal["memory"]["result"]
    assert memory["idle_agent"]["traced_kib_per_agent"] > 0
    assert memory["in_flight"]["traced_kib_per_request"] > 0

    verdicts = {t["name"]: t for t in data["targets"]}
    assert len(verdicts) == 16 and all(t["met"] in (True, False, None) for t in verdicts.values())
    # litellm was not selected: its ratio is "not measured", never a pass or a fail
    assert verdicts["duckagents throughput vs litellm.Router, c=32, non-streaming"]["met"] is None
    for heading in (
        "### HTTP, non-streaming",
        "### HTTP, streaming",
        "### Signal bus",
        "### Targets",
        "### Supervisor restart latency",
        "### Gateway fan-out",
        "### Memory",
    ):
        assert heading in printed


def test_front_door_section_runs_the_door_and_reports_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM's proxy is a benchmark-only tool: without it the section runs with the doors it has.
    monkeypatch.setattr(doors_module, "find_litellm", lambda: None)
    output = tmp_path / "latest.json"
    argv = [
        "--quick", "--upstream", "loopback", "--profile", "never", "--output", str(output),
        "--scenarios", "direct,door-duckagents,door-litellm,door-floor", "--concurrency", "2",
        "--warmup", "0", "--duration", "30", "--max-requests", "6",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "door-litellm unavailable" in captured.err
    data = json.loads(output.read_text())
    rows = {(r["client"], r["stream"]): r for r in data["derived"]["http_rows"]}
    assert set(rows) == {(c, s) for c in ("direct", "door-duckagents", "door-floor") for s in (False, True)}
    for (client, stream), row in rows.items():
        assert row["failed_runs"] == 0 and row["errors"] == 0, row
        if client != "direct":
            assert row["server_peak_rss_mib"] > 10 and row["server_cpu_us_per_request"] > 0
            if stream:
                assert row["ttfc_p50_ms"] is not None and row["chunks_per_s"] > 0
    ratios = {r["stream"]: r for r in data["derived"]["http_ratios"]}
    assert all(ratios[s]["door_duckagents_added_p50_ms"] is not None for s in (False, True))
    assert all(ratios[s]["door_duckagents_vs_litellm_throughput"] is None for s in (False, True))
    assert all(ratios[s]["door_duckagents_over_floor_p50_ms"] is not None for s in (False, True))
    assert "floor: bare hypercorn + httpx" in captured.out
    assert "### HTTP front doors" in captured.out and "duckagents serve --http" in captured.out
    verdicts = {t["name"]: t for t in data["targets"]}
    assert verdicts["front door throughput vs LiteLLM proxy, c=32, streaming"]["met"] is None


@pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")
def test_fleet_section_runs_both_arms_and_three_replicas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "latest.json"
    argv = [
        "--quick", "--upstream", "loopback", "--profile", "never", "--output", str(output),
        "--scenarios", "fleet", "--warmup", "0", "--duration", "0.3",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads(output.read_text())
    runs = data["fleet"]["runs"]
    assert {(r["arm"], r["concurrency"]) for r in runs} == {
        (arm, c) for arm in ("in-process", "fleet") for c in (1, 32)
    }
    for run in runs:
        assert run["result"]["requests"] > 0 and run["result"]["errors"] == 0, run
    assert all(r["result"]["degraded"] == 0 for r in runs if r["arm"] == "in-process")
    fleet = data["derived"]["fleet"]
    assert fleet["added_p50_ms_c1"] is not None and fleet["throughput_vs_in_process_c32"] is not None
    for key, fleet_mode in (("shared_limit", True), ("separate_limits", False)):
        record = fleet[key]
        assert record["fleet"] is fleet_mode and len(record["replicas"]) == 3, record
        assert record["admitted_rps"] > 0 and all(r["errors"] == 0 for r in record["replicas"])
    verdicts = {t["name"]: t for t in data["targets"]}
    assert verdicts["[fleet] throughput vs in-process, c=32"]["met"] in (True, False)
    assert "### Fleet" in printed and "3 replicas, no [fleet]" in printed


def test_front_door_configs_route_each_mode_to_its_upstream_base() -> None:
    upstream = upstream_module.Upstream("nginx", "http://h:1/json/v1", "http://h:1/sse/v1")
    config = doors_module.duckagents_config(upstream)
    assert 'base_url = "http://h:1/json/v1"' in config and 'models = ["bench-json"]' in config
    assert 'base_url = "http://h:1/sse/v1"' in config and 'models = ["bench-sse"]' in config
    proxy = json.loads(doors_module.litellm_config(upstream))
    assert {m["model_name"]: m["litellm_params"]["api_base"] for m in proxy["model_list"]} == {
        "bench-json": "http://h:1/json/v1",
        "bench-sse": "http://h:1/sse/v1",
    }
    assert proxy["litellm_settings"]["num_retries"] == 0
    assert proxy["general_settings"]["master_key"] == doors_module.DUMMY_KEY  # the clients' bearer key
    assert f'env = "{doors_module.TOKEN_ENV}"' in config
    assert doors_module.model_for(True) == "bench-sse" and doors_module.model_for(False) == "bench-json"


# --- the soak run --------------------------------------------------------------------------------


def test_soak_runs_end_to_end_and_checks_its_invariants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few seconds of the soak (no RSS target here: too short to mean anything): mixed traffic, faults,
    gateway clients in their own process, the graceful stop, and the figures' shape."""
    out = tmp_path / "soak.json"
    argv = [
        "--duration", "3", "--warmup", "1", "--concurrency", "4", "--subscribers", "1", "--requesters", "1",
        "--large-kib", "16", "--fault-interval", "0.4", "--max-growth", "1000", "--json", str(out),
    ]
    assert soak.main(argv) == 0, capsys.readouterr().out
    report = capsys.readouterr().out
    assert "## Soak" in report and "**PASS**" in report
    figures = json.loads(out.read_text())
    assert figures["requests"] > 0 and figures["outcomes"]["ok"] > 0 and not figures["bugs"]
    assert figures["outcomes"].get("invalid_request", 0) == figures["by_kind"].get("poison", 0)
    assert sum(figures["faults"].values()) >= 4
    assert figures["leftovers"] == {"router_in_flight": 0, "agent_requests": 0}
    clients = figures["gateway"]["clients"]
    assert clients["close_codes"] == {"1001": 2} and clients["frames"] > 0 and clients["unanswered"] == 0
    rss = figures["rss_mib"]
    assert rss["after_warmup"] > 0 and rss["end"] > 0 and len(rss["samples"]) >= 2
