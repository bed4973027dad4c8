"""Nox sessions: tests, lint, typecheck, bench."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


def _ensure_redis_server(session: nox.Session) -> None:
    """The fleet tests start a real redis-server; install it when missing and we may (root + apt-get)."""
    if shutil.which("redis-server"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "redis-server"]
        try:
            session.run(*install, external=True, silent=True)
        except nox.command.CommandFailed:  # a stale package index: refresh it once
            session.run("apt-get", "update", "-q", external=True, silent=True)
            session.run(*install, external=True, silent=True)
        return
    session.warn("redis-server is missing and cannot be installed here: the fleet tests will be skipped")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the whole test suite (unit, property, loopback integration, fleet on a real redis-server)."""
    _ensure_redis_server(session)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "duckagents", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Mypy over the package."""
    session.install("-e", ".[server]", "mypy")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: duckagents vs bare httpx vs litellm.Router (in-process) and vs LiteLLM's proxy server
    (HTTP front doors), on one loopback upstream; [fleet] on a loopback redis-server vs in-process.
    litellm[proxy] is a benchmark-only dependency."""
    _ensure_redis_server(session)  # the fleet section runs one on loopback
    session.install("-e", ".[server,fleet]", "litellm[proxy]", "pyinstrument")
    session.run("python", "-m", "benchmarks", *session.posargs)
