"""``duckagents completion SHELL``: the shell completion script (generated from the parser by shtab).

shtab writes a static script once, so pressing TAB never starts Python (argcomplete runs the program on
every TAB) and nothing global is installed: ``duckagents completion bash > ~/.local/share/bash-completion/
completions/duckagents``, or ``eval "$(duckagents completion bash)"`` in ``~/.bashrc``.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from ._base import Commands, ExitCode

SHELLS = ("bash", "zsh", "tcsh")


def add_commands(commands: Commands) -> None:
    """``completion``."""
    completion = commands.add(
        "completion", run_completion, help="print the shell completion script (bash, zsh, tcsh)",
        description="Print the completion script for SHELL. Install it with e.g. "
        "'duckagents completion bash > ~/.local/share/bash-completion/completions/duckagents', or "
        "'eval \"$(duckagents completion bash)\"' in ~/.bashrc; for zsh, write it as _duckagents into a "
        "directory of your $fpath.",
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(root_parser=commands.root)


async def run_completion(args: argparse.Namespace, out: TextIO) -> int:
    """Write the completion script of the whole ``duckagents`` parser for ``args.shell``."""
    import shtab

    out.write(shtab.complete(args.root_parser, shell=args.shell))
    out.write("\n")
    return ExitCode.OK
