"""The `pyscale` command (also `python -m pyscale`).

Subcommands are registered in one place, COMMANDS below: each names a module in pyscale.commands that
defines HELP, add_arguments(parser) and run(args) -> int. Command modules import heavy dependencies
(torch, scipy, ...) inside run(), so `pyscale --help` and `pyscale plan` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pyscale import __version__

COMMANDS: tuple[tuple[str, str], ...] = (
    ("info", "pyscale.commands.info"),
    ("bench", "pyscale.commands.bench"),
    ("profile", "pyscale.commands.profile"),
    ("fit", "pyscale.commands.fit"),
    ("plan", "pyscale.commands.plan"),
    ("report", "pyscale.commands.report"),
    ("costmodel", "pyscale.commands.costmodel"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyscale",
        description="What does scaling cost on my GPU, and what should I train?",
    )
    parser.add_argument("--version", action="version", version=f"pyscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
