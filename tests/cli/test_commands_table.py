"""The command table: how command modules add commands and groups."""

from __future__ import annotations


def test_a_command_group_can_be_extended_from_another_module() -> None:
    """How a later command module adds to an existing group (e.g. ``models load`` beside ``models list``)."""
    import argparse

    from duckagents.cli import build_parser
    from duckagents.cli._base import Commands, Parser

    parser = Parser(prog="duckagents")
    commands = Commands(parser.add_subparsers(dest="command", parser_class=Parser), parser)

    async def noop(args: argparse.Namespace, out: object) -> int:
        return 0

    first = commands.group("models", help="models", default=noop)
    assert commands.group("models", help="models") is first
    first.add("list", noop, help="list")
    commands.group("models", help="models").add("load", noop, help="load")
    assert parser.parse_args(["models", "load"]).models_command == "load"
    assert build_parser().parse_args(["models"]).run.__name__ == "run_list"
