"""One replica's link to the fleet's Redis: the client, bounded operations, health, probe and notices."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import trio

from ..config import FleetConfig
from ..errors import FleetUnavailable, redact
from ._health import FleetHealth
from ._keys import FleetKeys
from ._writer import BatchWriter

try:
    import coredis
    from coredis.exceptions import NoScriptError, RedisError
    from coredis.patterns.pubsub import PubSub
    from coredis.retry import ConstantRetryPolicy, NoRetryPolicy
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("fleet mode needs coredis: pip install 'duckagents[fleet]'") from exc

__all__ = ["FINISH_QUEUE", "Fleet", "ScriptCall", "number", "open_fleet"]

log = logging.getLogger("duckagents.fleet")

T = TypeVar("T")

#: What a Redis outage looks like from here: coredis errors, socket errors, coredis' own timeouts.
_TROUBLE = (RedisError, OSError, TimeoutError)

# Pool bound: ordinary commands are multiplexed (a connection is released once the command is sent),
# so only blocking reads (XREAD BLOCK) hold one each.
_MAX_CONNECTIONS = 16

# Each script is assembled from the package's Lua files (each defines one function) and a last line
# that calls them: the standalone machines (equivalence tests, single operations) and request.lua, the
# two per-request calls of an agent.
#: Script calls (request verdicts) queued for the writer at most; more push the oldest out (counted).
FINISH_QUEUE = 4096
#: Script calls sent in one pipeline at most.
FINISH_BATCH = 256

_SCRIPTS: dict[str, tuple[tuple[str, ...], str]] = {
    "ratelimit": (("clock", "ratelimit"), "return ratelimit(KEYS[1], ARGV, clock(ARGV[2]), ARGV[2] == '')"),
    "breaker": (("clock", "breaker"), "return breaker(KEYS[1], ARGV, clock(ARGV[2]))"),
    "request": (("clock", "ratelimit", "breaker", "request"), ""),
    "budget": (("budget",), ""),
}


def _assemble(parts: tuple[str, ...], last: str) -> str:
    files = resources.files(__package__)
    sources = [files.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in parts]
    return "\n".join([*sources, last]).rstrip() + "\n"


def number(value: float | int | None) -> str:
    """A number as the scripts read it: exact (``repr`` of a float round-trips), "" for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number here")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"the scripts take finite numbers only, got {value!r}")
    return repr(float(value))


@attrs.frozen
class ScriptCall:
    """One script call queued for the fleet's writer (see :meth:`Fleet.defer`)."""

    script: str
    keys: list[str]
    args: list[str]
    #: What it is, for logs and the reason of a degradation.
    what: str
    #: Called with the reply (None when the call was lost: Redis failed, or the fleet is degraded) and
    #: the caller's clock when the batch was sent (the reply's times are moved into it).
    on_reply: Callable[[list[str] | None, float], None]


def _only_trouble(group: BaseExceptionGroup[BaseException]) -> bool:
    _, rest = group.split(_TROUBLE)
    return rest is None


class Fleet:
    """A replica's connection to the fleet. Create it with :func:`open_fleet`.

    Every Redis operation goes through :meth:`call`, which bounds it by ``config.timeout`` and turns any
    failure into :class:`~duckagents.errors.FleetUnavailable` after marking :attr:`health` degraded. While
    degraded, a probe task pings Redis every ``config.probe_interval`` and re-joins when it answers.
    """

    def __init__(self, config: FleetConfig, client: coredis.Redis[str], secrets: tuple[str, ...]) -> None:
        self.config = config
        self.client = client
        self.keys = FleetKeys(config.key_prefix)
        self.health = FleetHealth(config.instance)
        self._secrets = secrets
        self._scripts = {
            name: client.register_script(_assemble(parts, last)) for name, (parts, last) in _SCRIPTS.items()
        }
        self._notice_handlers: list[Callable[[str], None]] = []
        self._listening = trio.Event()
        #: Script calls that no request waits for (verdicts), sent in pipelined batches by :meth:`run`.
        self.finishes: BatchWriter[ScriptCall] = BatchWriter(
            "verdict", self._send_calls, capacity=FINISH_QUEUE, max_batch=FINISH_BATCH
        )

    @property
    def instance(self) -> str:
        """The name of this replica."""
        return self.config.instance

    def script_source(self, name: str) -> str:
        """The Lua source of one of the fleet's scripts (``ratelimit``, ``breaker`` or ``request``)."""
        return str(self._scripts[name].script)

    async def run_script(
        self, name: str, keys: list[str], args: list[str], what: str, *, reply_length: int
    ) -> list[str]:
        """EVALSHA one of the fleet's scripts (loading it on NOSCRIPT), bounded like :meth:`call`.

        The reply must be a list of ``reply_length`` strings; anything else raises
        :class:`FleetUnavailable` (a Redis that answers nonsense is as good as none).
        """
        script = self._scripts[name]
        reply: object = await self.call(what, lambda: script(keys=keys, args=args))
        if (
            not isinstance(reply, list)
            or len(reply) != reply_length
            or not all(isinstance(v, str) for v in reply)
        ):
            raise self.unavailable(f"{what}: unexpected script reply {str(reply)[:200]!r}")
        return reply

    def defer(self, call: ScriptCall) -> None:
        """Queue a script call nobody waits for; it goes out with others in one round trip. While the
        fleet is degraded it is dropped at once (``call.on_reply(None, ...)``, counted in
        ``finishes.dropped``)."""
        if self.health.degraded:
            self.finishes.lost(1)
            call.on_reply(None, trio.current_time())
            return
        self.finishes.offer(call)

    async def run_scripts(self, calls: list[ScriptCall]) -> list[list[str] | None]:
        """Several script calls in one round trip (a pipeline, not a transaction), bounded like
        :meth:`call`. A call whose reply is an error or not a list of strings gets None (logged);
        scripts the server lost (a restart) are loaded again and their calls re-sent once."""
        replies: list[object] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            batch = [calls[i] for i in todo]
            answers = await self.call(f"pipeline of {len(batch)}", partial(self._pipeline, batch))
            missing = [i for i, a in zip(todo, answers, strict=True) if isinstance(a, NoScriptError)]
            for i, answer in zip(todo, answers, strict=True):
                replies[i] = answer
            if not missing or attempt:
                break
            for name in {calls[i].script for i in missing}:
                script = self._scripts[name]
                await self.call(f"SCRIPT LOAD {name}", partial(self.client.script_load, script.script))
            todo = missing
        out: list[list[str] | None] = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, list) and all(isinstance(v, str) for v in reply):
                out.append(reply)
            else:
                why = redact(str(reply), self._secrets)
                log.error("fleet %s: %s failed: %.300s", self.instance, call.what, why)
                out.append(None)
        return out

    async def _pipeline(self, calls: list[ScriptCall]) -> list[object]:
        async with self.client.pipeline(transaction=False, raise_on_error=False) as pipe:
            pending = [
                pipe.evalsha(self._scripts[call.script].sha, keys=call.keys, args=call.args) for call in calls
            ]
        answers: list[object] = []
        for reply in pending:
            try:
                answers.append(await reply)
            except RedisError as exc:  # this call's error (NOSCRIPT, a script error): the others stand
                answers.append(exc)
        return answers

    async def _send_calls(self, calls: list[ScriptCall]) -> None:
        now = trio.current_time()
        replies: list[list[str] | None] = [None] * len(calls)
        if self.health.degraded:
            self.finishes.lost(len(calls))
        else:
            try:
                replies = await self.run_scripts(calls)
                self.finishes.written += len(calls)
            except FleetUnavailable:
                self.finishes.lost(len(calls))
        for call, reply in zip(calls, replies, strict=True):
            try:
                call.on_reply(reply, now)
            except Exception:  # one caller's bug must not cost the others their replies
                log.exception("fleet %s: handling the reply of %s failed", self.instance, call.what)

    def unavailable(self, failure: str) -> FleetUnavailable:
        """Degrade for ``failure`` and return the error to raise (also for a reply that makes no sense)."""
        self.health.degrade(failure)
        return FleetUnavailable(f"Redis failed ({failure})")

    async def call(self, what: str, operation: Callable[[], Awaitable[T]], *, allowance: float = 0.0) -> T:
        """Run one Redis operation within ``config.timeout + allowance`` seconds.

        Raises :class:`FleetUnavailable` (and degrades :attr:`health`) when it fails or is late. The
        operation may still run on the server after a timeout: callers treat the outcome as unknown.
        """
        failure: str
        with trio.move_on_after(self.config.timeout + allowance):
            try:
                return await operation()
            except _TROUBLE as exc:
                failure = f"{what}: {type(exc).__name__}: {redact(str(exc), self._secrets)}"
            except BaseExceptionGroup as group:
                if not _only_trouble(group):
                    raise
                failure = f"{what}: {redact(str(group.exceptions[0]), self._secrets)}"
            raise self.unavailable(failure)
        raise self.unavailable(f"{what}: no answer within {self.config.timeout + allowance:g} s")

    async def ping(self) -> None:
        """One bounded PING; raises :class:`FleetUnavailable` when Redis does not answer."""
        await self.call("PING", self.client.ping)

    # --- notices ---------------------------------------------------------------------------------

    def on_notice(self, handler: Callable[[str], None]) -> Callable[[], None]:
        """Call ``handler`` with every message on the fleet's notice channel; returns an unregister."""
        self._notice_handlers.append(handler)

        def unregister() -> None:
            if handler in self._notice_handlers:
                self._notice_handlers.remove(handler)

        return unregister

    async def wait_listening(self) -> None:
        """Return once the notice subscription is active (tests; notices before it are not seen)."""
        await self._listening.wait()

    async def run(self) -> None:
        """The fleet's background work, until cancelled: the reconnection probe, the notice subscription
        and the verdict writer (:func:`open_fleet` runs it)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe)
            nursery.start_soon(self._listen)
            nursery.start_soon(self.finishes.run)

    async def _listen(self) -> None:
        # Our own reconnect loop, at the probe's pace (coredis' backs off up to 16 s, a long time to miss
        # breaker notices after Redis came back).
        while True:
            try:
                async with PubSub(
                    self.client.connection_pool,
                    channels=[self.keys.notices],
                    ignore_subscribe_messages=True,
                    retry_policy=NoRetryPolicy(),
                    subscription_timeout=self.config.timeout + 1.0,
                    # On the way out nobody needs the server's acknowledgement (coredis waits 0.1 s).
                    unsubscription_timeout=0.01,
                ) as subscription:
                    self._listening.set()
                    async for message in subscription:
                        self._dispatch(message["data"])
            except* _TROUBLE as group:
                log.debug("fleet %s: notice subscription lost: %s", self.instance, group.exceptions[0])
            self._listening = trio.Event()
            await trio.sleep(self.config.probe_interval)

    def _dispatch(self, data: object) -> None:
        if not isinstance(data, str):
            return
        for handler in list(self._notice_handlers):
            try:
                handler(data)
            except Exception:  # one handler's bug must not stop the notices
                log.exception("fleet %s: a notice handler failed", self.instance)

    # --- probe -----------------------------------------------------------------------------------

    async def _probe(self) -> None:
        while True:
            await self.health.wait_degraded()
            await trio.sleep(self.config.probe_interval)
            try:
                await self.ping()
            except FleetUnavailable:
                continue
            self.health.rejoin()


@asynccontextmanager
async def open_fleet(
    config: FleetConfig, *, environ: Mapping[str, str] | None = None
) -> AsyncIterator[Fleet]:
    """Connect to the fleet's Redis and run the probe and notice tasks until the block ends.

    Redis being unreachable is not an error here: the fleet starts degraded and re-joins when it can.
    ``environ`` is where ``config.password_env`` is looked up (default ``os.environ``).
    """
    password = config.password(environ)
    extra: dict[str, Any] = {} if password is None else {"password": password.reveal()}
    client: coredis.Redis[str] = coredis.Redis.from_url(
        config.redis_url,
        decode_responses=True,
        connect_timeout=config.timeout,
        max_connections=_MAX_CONNECTIONS,
        # One immediate retry re-dials a pooled connection that a restarted server closed; the bound
        # of Fleet.call covers both attempts.
        retry_policy=ConstantRetryPolicy((coredis.exceptions.ConnectionError,), retries=1, delay=0),
        **extra,
    )
    url_password = urlsplit(config.redis_url).password
    secrets = tuple(s for s in (password.reveal() if password else None, url_password) if s)
    async with client:
        fleet = Fleet(config, client, secrets)
        async with trio.open_nursery() as nursery:
            try:
                await fleet.ping()
            except FleetUnavailable:
                pass  # degraded from the start; the probe re-joins
            nursery.start_soon(fleet.run)
            yield fleet
            nursery.cancel_scope.cancel()
