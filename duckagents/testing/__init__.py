"""Loopback provider servers for tests: real HTTP on 127.0.0.1 speaking each provider's wire format.

``async with open_openai_server() as upstream:`` (likewise ``open_anthropic_server``,
``open_ollama_server``, ``open_tgi_server``) yields a server with ``.url``, ``.requests`` (recorded),
``.script`` (:class:`ReplyScript` of :class:`ScriptedReply`) and ``.inject(Fault(...))`` for fault
injection. Our own test suite uses them; so can yours. :class:`ThreadedServer` runs one in a thread, for
synchronous clients. :class:`RedisServer` runs a real ``redis-server`` on a free loopback port (fleet tests).
"""

from ._anthropic import AnthropicServer, open_anthropic_server
from ._common import WireServer
from ._ollama import OllamaServer, open_ollama_server
from ._openai import OpenAIRateLimits, OpenAIServer, open_openai_server
from ._redis import RedisServer, redis_server_path
from ._script import ReplyScript, ScriptedReply
from ._server import Fault, HTTPRequest, LoopbackServer, Reply, StreamReply, ndjson, serve_loopback, sse
from ._tgi import TGIServer, open_tgi_server
from ._threaded import ThreadedServer

__all__ = [
    "AnthropicServer",
    "Fault",
    "HTTPRequest",
    "LoopbackServer",
    "OllamaServer",
    "OpenAIRateLimits",
    "OpenAIServer",
    "RedisServer",
    "Reply",
    "ReplyScript",
    "ScriptedReply",
    "StreamReply",
    "TGIServer",
    "ThreadedServer",
    "WireServer",
    "ndjson",
    "open_anthropic_server",
    "open_ollama_server",
    "open_openai_server",
    "open_tgi_server",
    "redis_server_path",
    "serve_loopback",
    "sse",
]
