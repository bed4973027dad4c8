"""Prometheus metrics of one tree, fed from its signal bus (docs/metrics.md lists every metric).

:class:`Metrics` owns a :class:`prometheus_client.CollectorRegistry` of its own (never the process-global
one, so two trees in a process, or a test after another, never mix figures) and one bounded
``DROP_OLDEST`` subscription to the bus: it sees every request however it came in (HTTP, the WebSocket
gateway, an embedding program) and can never slow the bus down; what it had to drop is itself a metric.
Names follow the OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai.client.operation.duration`` is ``gen_ai_client_operation_duration_seconds`` in Prometheus).

Figures that are a state rather than a count (requests in flight, the gateway's connections) are read
when Prometheus scrapes, by a collector, so they are never stale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..bus import Overflow, SignalBus, SignalFilter, Subscription
from ..config import ProviderConfig, is_pattern
from ..errors import BusClosed
from ..router import DISPATCH, SOURCE
from ..signals import (
    ProviderErrorData,
    ProviderRequest,
    ProviderResponse,
    ProviderStatus,
    Signal,
    SupervisorEvent,
)

__all__ = ["SCRAPE_CONTENT_TYPE", "Metrics"]

#: The content type of :meth:`Metrics.exposition` (Prometheus text format 0.0.4).
SCRAPE_CONTENT_TYPE = CONTENT_TYPE_LATEST

#: OpenTelemetry's advisory buckets for gen_ai.client.operation.duration, with three below 10 ms added
#: (requests served from a local model or a cache answer that fast).
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
#: OpenTelemetry's advisory buckets for gen_ai.client.operation.time_to_first_chunk.
FIRST_CHUNK_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: OpenTelemetry's advisory buckets for gen_ai.client.token.usage.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
#: OpenTelemetry's advisory buckets for http.server.request.duration.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
BREAKER_STATES = ("closed", "half_open", "open", "forced_open", "disabled")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
#: Distinct ``model`` label values kept; later ones are counted as ``other`` (a client names the model,
#: and every label value is a time series kept forever).
MAX_MODELS = 256
#: Requests (and attempts) whose start is remembered to time them; the oldest are forgotten first.
MAX_TRACKED = 65_536
#: Extra time past an attempt's deadline before an attempt whose end was never seen stops counting as
#: in flight (its terminal was dropped by the bounded subscription).
STALE_GRACE = 30.0
SIGNAL_TYPES = frozenset(
    {
        ProviderRequest.TYPE,
        ProviderResponse.TYPE,
        ProviderErrorData.TYPE,
        ProviderStatus.TYPE,
        SupervisorEvent.TYPE,
    }
)
OK = "ok"


class Metrics:
    """The metrics of one tree: ``await nursery.start(metrics.run)``, then :meth:`exposition`.

    ``prices`` come from the providers' ``cost_per_1k_input``/``cost_per_1k_output`` and price a response
    that does not carry its own ``usage.cost``. ``in_flight`` (the router's count) and ``gateway_stats``
    are read at scrape time.
    """

    def __init__(
        self,
        bus: SignalBus,
        providers: Sequence[ProviderConfig] = (),
        *,
        in_flight: Callable[[], int] | None = None,
        buffer: int = 16_384,
    ) -> None:
        self.bus = bus
        self.buffer = buffer
        self.in_flight = in_flight
        #: Set when a gateway runs in the same process: ``() -> GatewayStats``.
        self.gateway_stats: Callable[[], Any] | None = None
        self._prices = {p.name: (p.cost_per_1k_input or 0.0, p.cost_per_1k_output or 0.0) for p in providers}
        self._providers = tuple(p.name for p in providers)
        listed = [(p.model, *p.models) for p in providers]
        #: Models the configuration offers by name; None when a pattern makes the names open-ended.
        self._offered: frozenset[str] | None = (
            None if any(is_pattern(m) for names in listed for m in names)
            else frozenset(m for names in listed for m in names)
        )
        self._sub: Subscription | None = None
        self._started: dict[str, int] = {}  # request id -> intake time (us)
        self._attempts: dict[str, tuple[str, float]] = {}  # attempt subject -> (provider, deadline)
        self._models: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        #: Children a supervisor reported crashed or given up on (and not started since), with why.
        self.down: dict[str, str] = {}
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def histogram(name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.duration = histogram(
            "gen_ai_client_operation_duration_seconds",
            "Requests through the router, from intake to final result (all attempts), by outcome kind.",
            ("provider", "model", "kind"),
            DURATION_BUCKETS,
        )
        self.first_chunk = histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to the first streamed chunk of successful streamed requests (the answering attempt).",
            ("provider", "model"),
            FIRST_CHUNK_BUCKETS,
        )
        self.tokens = histogram(
            "gen_ai_client_token_usage",
            "Tokens per successful request; token_type input (prompt) or output (completion).",
            ("provider", "model", "token_type"),
            TOKEN_BUCKETS,
        )
        self.requests = counter(
            "duckagents_requests",
            "Requests that ended, by outcome kind (ok, or the error kind).",
            ("provider", "model", "kind"),
        )
        self.started = counter("duckagents_requests_started", "Requests the router accepted.")
        self.attempts = counter(
            "duckagents_attempts",
            "Attempts that ended, by provider and outcome kind.",
            ("provider", "model", "kind"),
        )
        self.failovers = counter(
            "duckagents_failovers",
            "Attempts sent to a provider after an earlier attempt of the same "
            "request failed elsewhere (retries included).",
            ("provider",),
        )
        self.cost = counter(
            "duckagents_cost_usd",
            "Spend in USD: usage.cost when the response carries it, else the provider's configured prices.",
            ("provider", "model"),
        )
        self.breaker = gauge(
            "duckagents_breaker_state",
            "1 for the provider's current circuit breaker state, 0 otherwise.",
            ("provider", "state"),
        )
        self.health = gauge(
            "duckagents_provider_health", "Health score 0..1 of the last status report.", ("provider",)
        )
        self.reachable = gauge(
            "duckagents_provider_reachable",
            "1 when the provider's last health probe answered.",
            ("provider",),
        )
        self.headroom_requests = gauge(
            "duckagents_ratelimit_headroom_requests",
            "Requests the provider's rate limiter would still admit now (absent: unlimited).",
            ("provider",),
        )
        self.headroom_tokens = gauge(
            "duckagents_ratelimit_headroom_tokens",
            "Tokens the provider's rate limiter would still admit now (absent: unlimited).",
            ("provider",),
        )
        self.restarts = counter(
            "duckagents_restarts", "Restarts of a supervised child (router, agents).", ("child",)
        )
        self.supervisor_events = counter(
            "duckagents_supervisor_events",
            "Supervisor events by child and event "
            "(started, crashed, restarted, gave_up, exited, shutdown, killed).",
            ("child", "event"),
        )
        self.http_duration = histogram(
            "http_server_request_duration_seconds",
            "Requests to the HTTP front door (any route).",
            ("http_request_method", "http_route", "http_response_status_code"),
            HTTP_BUCKETS,
        )
        registry.register(_ScrapeTime(self))
        # The process itself (RSS, CPU seconds, open files), as the global registry would have it.
        ProcessCollector(registry=registry)

    # --- feeding -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe (before ``task_status.started``, so nothing after it is missed) and count until the
        bus closes or the task is cancelled."""
        signal_filter = SignalFilter(types=SIGNAL_TYPES)
        with self.bus.subscribe(signal_filter, buffer=self.buffer, overflow=Overflow.DROP_OLDEST) as sub:
            self._sub = sub
            task_status.started()
            try:
                while True:
                    try:
                        signal = await sub.receive()
                    except BusClosed:
                        return
                    self.observe(signal)
                    while True:  # drain what is buffered without a scheduler round trip per signal
                        try:
                            signal = sub.receive_nowait()
                        except (trio.WouldBlock, BusClosed):
                            break
                        self.observe(signal)
            finally:
                self._sub = None

    @property
    def dropped(self) -> int:
        """Signals the subscription had to drop (the figures miss them)."""
        return self._sub.dropped if self._sub is not None else 0

    def observe(self, signal: Signal) -> None:
        """Account for one signal (pure bookkeeping; no I/O)."""
        data = signal.data
        if isinstance(data, ProviderRequest):
            self._on_request(signal, data)
        elif isinstance(data, ProviderResponse | ProviderErrorData):
            if signal.source == SOURCE and signal.subject == data.request_id:
                self._on_final(signal, data)
            elif signal.subject is not None and signal.subject != data.request_id:
                self._on_attempt_end(signal.subject, data)
        elif isinstance(data, ProviderStatus):
            self.observe_status(data)
        elif isinstance(data, SupervisorEvent):
            self._on_supervisor(data)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request to the HTTP front door (``route`` is a route template, never a raw path)."""
        method = method if method in HTTP_METHODS else "_OTHER"
        self._child(self.http_duration, method, route, str(status)).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: prometheus_client validates the labels on every call, and
        this runs several times per request. Bounded like the label values themselves."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _model(self, model: str | None, *, answered: bool = True) -> str:
        """The ``model`` label: bounded in distinct values. A model that did not answer (a failure) and
        that the configuration does not offer is a name the client made up: ``unknown``."""
        if not model:
            return ""
        if not answered and self._offered is not None and model not in self._offered:
            return "unknown"
        if model in self._models:
            return model
        if len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return "other"

    def _on_request(self, signal: Signal, request: ProviderRequest) -> None:
        if signal.source == SOURCE:
            self.started.inc()
            _remember(self._started, request.request_id, signal.time)
        elif signal.source == DISPATCH and request.provider is not None and signal.subject:
            deadline = math.inf if request.deadline is None else request.deadline
            _remember(self._attempts, signal.subject, (request.provider, deadline))
            if request.attempt > 1:
                self._child(self.failovers, request.provider).inc()

    def _on_attempt_end(self, subject: str, data: ProviderResponse | ProviderErrorData) -> None:
        if self._attempts.pop(subject, None) is None and subject.rpartition("#")[0] != data.request_id:
            return  # not an attempt of a routed request
        kind = OK if isinstance(data, ProviderResponse) else data.kind.value
        answered = isinstance(data, ProviderResponse)
        self._child(
            self.attempts, data.provider or "", self._model(data.model, answered=answered), kind
        ).inc()

    def _on_final(self, signal: Signal, data: ProviderResponse | ProviderErrorData) -> None:
        started = self._started.pop(data.request_id, None)
        answered = isinstance(data, ProviderResponse)
        provider, model = data.provider or "", self._model(data.model, answered=answered)
        seconds: float | None
        if isinstance(data, ProviderResponse):
            kind = OK
            seconds = (signal.time - started) / 1e6 if started is not None else data.latency
            if data.time_to_first_chunk is not None:
                self._child(self.first_chunk, provider, model).observe(data.time_to_first_chunk)
            usage = data.usage
            self._child(self.tokens, provider, model, "input").observe(usage.prompt_tokens)
            self._child(self.tokens, provider, model, "output").observe(usage.completion_tokens)
            cost = self._cost(provider, usage)
            if cost > 0:
                self._child(self.cost, provider, model).inc(cost)
        else:
            kind = data.kind.value
            seconds = (signal.time - started) / 1e6 if started is not None else None
        self._child(self.requests, provider, model, kind).inc()
        if seconds is not None and seconds >= 0:
            self._child(self.duration, provider, model, kind).observe(seconds)

    def _cost(self, provider: str, usage: Any) -> float:
        given = getattr(usage, "cost", None)
        if isinstance(given, int | float) and math.isfinite(given):
            return float(given)
        price_in, price_out = self._prices.get(provider, (0.0, 0.0))
        return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1000.0

    def observe_status(self, status: ProviderStatus) -> None:
        """Take a provider's status report (also used to seed the gauges at start)."""
        name = status.provider
        states = (
            BREAKER_STATES
            if status.breaker_state in BREAKER_STATES
            else (*BREAKER_STATES, status.breaker_state)
        )
        for state in states:
            self.breaker.labels(name, state).set(1.0 if state == status.breaker_state else 0.0)
        self.health.labels(name).set(status.health)
        self.reachable.labels(name).set(1.0 if status.reachable else 0.0)
        for gauge, value in (
            (self.headroom_requests, status.headroom.requests),
            (self.headroom_tokens, status.headroom.tokens),
        ):
            if value is None:
                try:
                    gauge.remove(name)
                except KeyError:
                    pass
            else:
                gauge.labels(name).set(value)

    def _on_supervisor(self, event: SupervisorEvent) -> None:
        self.supervisor_events.labels(event.child, event.event).inc()
        if event.event == "restarted":
            self.restarts.labels(event.child).inc()
        if event.event in ("started", "restarted"):
            self.down.pop(event.child, None)
        elif event.event in ("crashed", "gave_up"):
            self.down[event.child] = f"{event.event}: {event.reason}"[:200] if event.reason else event.event

    # --- reading -----------------------------------------------------------------------------------

    def attempts_in_flight(self, now: float) -> dict[str, int]:
        """Attempts dispatched and not ended, by provider (forgetting those long past their deadline)."""
        counts = dict.fromkeys(self._providers, 0)
        stale = [s for s, (_, deadline) in self._attempts.items() if deadline + STALE_GRACE < now]
        for subject in stale:
            del self._attempts[subject]
        for provider, _ in self._attempts.values():
            counts[provider] = counts.get(provider, 0) + 1
        return counts

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric (what ``GET /metrics`` serves)."""
        return generate_latest(self.registry)


def _remember(table: dict[str, Any], key: str, value: Any) -> None:
    if len(table) >= MAX_TRACKED:
        del table[next(iter(table))]  # dicts keep insertion order: this is the oldest
    table[key] = value


class _ScrapeTime(Collector):
    """Figures read at scrape time: requests and attempts in flight, gateway counters, drops."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked: the families depend on what runs (a gateway or not)

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        if m.in_flight is not None:
            yield GaugeMetricFamily(
                "duckagents_requests_in_flight",
                "Requests between intake and final result in the router.",
                value=m.in_flight(),
            )
        attempts = GaugeMetricFamily(
            "duckagents_attempts_in_flight",
            "Attempts dispatched to a provider and not ended.",
            labels=["provider"],
        )
        try:
            now = trio.current_time()
        except RuntimeError:  # scraped outside Trio (a test): nothing is stale
            now = -math.inf
        for provider, count in sorted(m.attempts_in_flight(now).items()):
            attempts.add_metric([provider], count)
        yield attempts
        yield CounterMetricFamily(
            "duckagents_metrics_signals_dropped",
            "Signals the metrics subscription dropped because it fell behind (figures miss them).",
            value=m.dropped,
        )
        stats = m.gateway_stats() if m.gateway_stats is not None else None
        if stats is not None:
            yield GaugeMetricFamily(
                "duckagents_gateway_connections",
                "Open WebSocket gateway connections.",
                value=stats.connections,
            )
            yield GaugeMetricFamily(
                "duckagents_gateway_subscriptions", "Live gateway subscriptions.", value=stats.subscriptions
            )
            yield CounterMetricFamily(
                "duckagents_gateway_accepted_connections",
                "Gateway connections accepted.",
                value=stats.accepted,
            )
            yield CounterMetricFamily(
                "duckagents_gateway_dropped_frames",
                "Signal frames dropped for slow gateway clients.",
                value=stats.dropped,
            )
            yield CounterMetricFamily(
                "duckagents_gateway_slow_disconnects",
                "Gateway clients disconnected for being too slow.",
                value=stats.slow_disconnects,
            )
            rejected = CounterMetricFamily(
                "duckagents_gateway_rejected_connections",
                "Gateway handshakes refused, by HTTP status.",
                labels=["status"],
            )
            for status, count in sorted(stats.rejected.items()):
                rejected.add_metric([str(status)], count)
            yield rejected
