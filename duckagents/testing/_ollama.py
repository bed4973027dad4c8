"""A loopback server speaking Ollama's wire format: chat, generate, tags, ps, show, pull, version.

It keeps a table of local models and of loaded models with expiry times (on the Trio clock, so a
``MockClock`` drives it): chat/generate requests load a model for ``keep_alive`` (default 5 minutes),
``keep_alive: 0`` unloads it, a negative one keeps it forever, and ``/api/ps`` lists what is loaded.
``registry`` names the models a pull can fetch (default: any name); pulling another fails as Ollama's
does: in band after ``pulling manifest`` when streamed, else a 500, with "file does not exist".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from ..messages import FinishReason
from ._common import WireServer, bearer_refused, fault_headers, route, serve
from ._ollama_models import DEFAULT_MODELS, ModelStore, OllamaModel, canonical, now_iso
from ._script import ScriptedReply, estimate_prompt_tokens, split_text
from ._server import Fault, HTTPRequest, LoopbackServer, Reply, StreamReply, ndjson

__all__ = ["DEFAULT_MODELS", "OllamaModel", "OllamaServer", "open_ollama_server"]

VERSION = "0.9.0"
NDJSON = "application/x-ndjson"
_RATE_LIMITED = {
    "retry-after": "2",
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "2s",
}
_NOT_ALLOWED = Reply(405, b"405 method not allowed", {"content-type": "text/plain"})
_NOT_FOUND = Reply(404, b"404 page not found", {"content-type": "text/plain"})
#: What Ollama answers when the registry has no manifest for the name pulled.
MISSING_MANIFEST = "pull model manifest: file does not exist"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply.json({"error": message}, status, headers)


class OllamaServer(WireServer):
    """The Ollama wire server app; ``script`` scripts chat replies, ``inject`` queues faults."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: Iterable[OllamaModel] = DEFAULT_MODELS,
        pull_chunks: int = 3,
        registry: Iterable[str] | None = None,
        pull_interval: float = 0.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.store = ModelStore(models)
        self.pull_chunks = pull_chunks
        #: Canonical names a pull can fetch; None: any.
        self.registry = None if registry is None else {canonical(name) for name in registry}
        #: Seconds between two progress lines of a pull (a slow download, to watch or to walk away from).
        self.pull_interval = pull_interval

    @property
    def server(self) -> LoopbackServer:
        """The loopback server under this app (an older name of :attr:`loopback`)."""
        return self.loopback

    def loaded_models(self) -> list[str]:
        """Names of the models loaded now (expired ones are dropped)."""
        return self.store.loaded_names()

    # --- dispatch -------------------------------------------------------------------------------------

    async def _app(self, request: HTTPRequest, fault: Fault | None) -> Reply | StreamReply:
        if bearer_refused(request, self.api_key):
            return _error(401, "unauthorized")
        if fault is not None and fault.status is not None:
            return _error(fault.status, fault.message, fault_headers(fault, _RATE_LIMITED))
        routes = {
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/pull"): self._pull,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/generate"): self._generate,
        }
        malformed = fault is not None and fault.malformed
        return await route(routes, request, malformed, not_allowed=_NOT_ALLOWED, not_found=_NOT_FOUND)

    async def _root(self, request: HTTPRequest, malformed: bool) -> Reply:
        return Reply(200, b"Ollama is running", {"content-type": "text/plain; charset=utf-8"})

    async def _version(self, request: HTTPRequest, malformed: bool) -> Reply:
        return _json_reply({"version": VERSION}, malformed)

    async def _tags(self, request: HTTPRequest, malformed: bool) -> Reply:
        return _json_reply({"models": self.store.tags()}, malformed)

    async def _ps(self, request: HTTPRequest, malformed: bool) -> Reply:
        return _json_reply({"models": self.store.ps()}, malformed)

    async def _show(self, request: HTTPRequest, malformed: bool) -> Reply:
        found = self._find(request, ("model", "name"))
        if isinstance(found, Reply):
            return found
        return _json_reply(self.store.show(found[1]), malformed)

    async def _pull(self, request: HTTPRequest, malformed: bool) -> Reply | StreamReply:
        named = _named(request, ("model", "name"))
        if isinstance(named, Reply):
            return named
        body, name = named
        if self.registry is not None and canonical(name) not in self.registry and not self.store.get(name):
            if body.get("stream") is False:
                return _error(500, MISSING_MANIFEST)
            refusal = [ndjson({"status": "pulling manifest"}), ndjson({"error": MISSING_MANIFEST})]
            return StreamReply(refusal, headers={"content-type": NDJSON})
        model = self.store.add(name)
        if body.get("stream") is False:
            return _json_reply({"status": "success"}, malformed)
        total = model.size
        lines: list[bytes] = [ndjson({"status": "pulling manifest"})]
        for i in range(1, self.pull_chunks + 1):
            lines.append(
                ndjson(
                    {
                        "status": f"pulling {model.digest[:12]}",
                        "digest": f"sha256:{model.digest}",
                        "total": total,
                        "completed": total * i // self.pull_chunks,
                    }
                )
            )
        if malformed:
            lines.insert(2, b"{garbage\n")
        lines += [ndjson({"status": s}) for s in ("verifying sha256 digest", "writing manifest", "success")]
        return StreamReply(lines, headers={"content-type": NDJSON}, interval=self.pull_interval)

    # --- generation ---------------------------------------------------------------------------------

    async def _chat(self, request: HTTPRequest, malformed: bool) -> Reply | StreamReply:
        found = self._find(request, ("model",))
        if isinstance(found, Reply):
            return found
        body, model = found
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            return _error(400, "invalid message format: each message needs a role")
        if body.get("tools") and "tools" not in model.capabilities:
            return _error(400, f"registry.ollama.ai/library/{model.name} does not support tools")
        if any(m.get("images") for m in messages) and "vision" not in model.capabilities:
            return _error(400, f"model {model.name} does not support images")  # "...missing vision" upstream
        unload = self.store.touch(model.name, body.get("keep_alive"))
        if not messages:  # an empty chat just loads (or unloads) the model
            return _json_reply(self._head(model, "unload" if unload else "load"), malformed)
        users = [m for m in messages if m.get("role") == "user"]
        last = str(users[-1].get("content") or "") if users else ""
        prompt = " ".join(str(m.get("content") or "") for m in messages)
        reply = self._reply(last, body.get("format"))
        return self._render(model, reply, prompt, body.get("stream", True) is not False, malformed, chat=True)

    async def _generate(self, request: HTTPRequest, malformed: bool) -> Reply | StreamReply:
        found = self._find(request, ("model",))
        if isinstance(found, Reply):
            return found
        body, model = found
        unload = self.store.touch(model.name, body.get("keep_alive"))
        prompt = body.get("prompt")
        if not prompt:  # no prompt: load/unload only, always a single JSON object
            return _json_reply(
                {**self._head(model, "unload" if unload else "load"), "response": ""}, malformed
            )
        reply = self._reply(str(prompt), body.get("format"))
        return self._render(
            model, reply, str(prompt), body.get("stream", True) is not False, malformed, chat=False
        )

    def _find(
        self, request: HTTPRequest, keys: tuple[str, ...]
    ) -> tuple[dict[str, Any], OllamaModel] | Reply:
        """The body and the local model it names under one of ``keys``, or the error reply."""
        named = _named(request, keys)
        if isinstance(named, Reply):
            return named
        body, name = named
        model = self.store.get(name)
        return (body, model) if model is not None else _error(404, f"model '{name}' not found")

    def _reply(self, last_text: str, fmt: Any) -> ScriptedReply:
        return self.script.next(last_text, json_mode=fmt == "json")

    def _head(self, model: OllamaModel, done_reason: str | None = None) -> dict[str, Any]:
        head: dict[str, Any] = {"model": model.name, "created_at": now_iso()}
        if done_reason:
            head.update(done=True, done_reason=done_reason)
        return head

    def _render(
        self,
        model: OllamaModel,
        reply: ScriptedReply,
        prompt: str,
        stream: bool,
        malformed: bool,
        *,
        chat: bool,
    ) -> Reply | StreamReply:
        pieces = split_text(reply.text, reply.chunk_size)
        calls = [
            {"function": {"name": c.name, "arguments": json.loads(c.arguments or "{}")}}
            for c in reply.tool_calls
        ]
        prompt_tokens = (
            reply.prompt_tokens if reply.prompt_tokens is not None else estimate_prompt_tokens(prompt)
        )
        eval_count = reply.completion_tokens if reply.completion_tokens is not None else len(pieces)
        reason = reply.raw_finish_reason or (
            "length" if reply.finish_reason is FinishReason.LENGTH else "stop"
        )
        final = {
            **self._head(model, reason),
            "total_duration": 5_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 1_000_000,
            "eval_count": eval_count,
            "eval_duration": 3_000_000,
        }

        def payload(text: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            if not chat:
                return {"response": text}
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {"message": message}

        if not stream:
            if malformed:
                return Reply(
                    200,
                    b'{"model": "' + model.name.encode() + b'", "message": {',
                    {"content-type": "application/json; charset=utf-8"},
                )
            return _json_reply({**final, **payload(reply.text, calls), "done": True}, False)
        lines = [ndjson({**self._head(model), **payload(p), "done": False}) for p in pieces if p]
        if calls:
            lines.append(ndjson({**self._head(model), **payload("", calls), "done": False}))
        if malformed:
            lines.insert(min(1, len(lines)), b"{not json at all\n")
        lines.append(ndjson({**final, **payload("")}))
        return StreamReply(lines, headers={"content-type": NDJSON})


def _body(request: HTTPRequest) -> dict[str, Any] | Reply:
    if not request.body:
        return _error(400, "missing request body")
    try:
        body = request.json()
    except ValueError as exc:
        return _error(400, f"invalid character in request body: {exc}")
    return (
        body if isinstance(body, dict) else _error(400, "json: cannot unmarshal into Go value of type object")
    )


def _named(request: HTTPRequest, keys: tuple[str, ...]) -> tuple[dict[str, Any], str] | Reply:
    """The body and the model name under the first of ``keys`` it has (``name`` is the older spelling of
    ``model`` on some endpoints), or the error reply."""
    body = _body(request)
    if isinstance(body, Reply):
        return body
    name = next((body[key] for key in keys if body.get(key)), None)
    return (body, str(name)) if name else _error(400, "model is required")


def _json_reply(obj: Any, malformed: bool) -> Reply:
    headers = {"content-type": "application/json; charset=utf-8"}
    if malformed:
        return Reply(200, json.dumps(obj).encode()[:-3] + b"<<", headers)
    return Reply(200, json.dumps(obj).encode(), headers)


@asynccontextmanager
async def open_ollama_server(**options: Any) -> AsyncIterator[OllamaServer]:
    """Run an :class:`OllamaServer` on 127.0.0.1 for the duration of the block."""
    async with serve(OllamaServer(**options)) as server:
        yield server
