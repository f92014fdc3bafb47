"""The `pyscale` command (also `python -m pyscale`) and its one error path.

Subcommands are registered in one place, COMMANDS below: each names a module in pyscale.commands that
defines HELP, add_arguments(parser) and run(args) -> int, and optionally FLAGS (library parameter -> the
flag that gives it, where the two are not spelled alike). Command modules import heavy dependencies
(torch, scipy, ...) inside run(), so `pyscale --help` and `pyscale plan` start fast.

Every failure ends in one line on stderr, `pyscale <command>: <what is wrong>, <what to do>`, and a status:
- 2, the user's mistake: a command line argparse rejects (including the path and number types of
  `pyscale.commands.usage`, which check files while parsing, before any work); a ValueError that pyscale
  raises (its contract for bad input: commands raise `usage.UsageError`, the library ValueErrors naming its
  parameters -- `nan_policy='omit'` reads `--nan-policy omit` here); an OSError about a file; a missing
  optional dependency.
- 1, work that failed: a command returning 1 (a report stage, a measurement) or a store that failed.
- 130, Ctrl-C.
Anything else is a bug in pyscale (or in a user's own code it runs): its traceback, then the line. `--debug`
prints the traceback of every error.

A new command adopts all of this by registering itself in COMMANDS and, in its module: giving each path
argument a type from `pyscale.commands.usage` (InputFile, OutputFile, OutputDir, StorePath: the generated
test in tests/test_cli_errors.py then covers it), numbers a checked type (positive_int, ...), opening the
store with `usage.open_store(path, write=...)`, raising `usage.UsageError` for what only it can check,
`usage.require(...)` for an optional dependency, FLAGS for library parameters spelled otherwise than its
flags, and returning 1 when work failed. It catches nothing itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyscale import __version__
from pyscale.commands.usage import in_flags, missing_dependency

COMMANDS: tuple[tuple[str, str], ...] = (
    ("info", "pyscale.commands.info"),
    ("bench", "pyscale.commands.bench"),
    ("profile", "pyscale.commands.profile"),
    ("fit", "pyscale.commands.fit"),
    ("plan", "pyscale.commands.plan"),
    ("report", "pyscale.commands.report"),
    ("costmodel", "pyscale.commands.costmodel"),
    ("energy", "pyscale.commands.energy"),
)

USER_ERROR, FAILED, INTERRUPTED, BROKEN_PIPE = 2, 1, 130, 141  # 141: 128 + SIGPIPE, as a shell shows it

# argparse's own complaints, which say what is wrong but not where to look
_ARGPARSE_WORDING = re.compile(r"invalid .* value|invalid choice|required|expected .*argument|unrecognized "
                               r"arguments|not allowed with|ambiguous option")


class CommandLineError(Exception):
    """A command line argparse rejected; the message is the whole line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as one line instead of a usage block and an exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        if _ARGPARSE_WORDING.search(message):
            message += f" (see `{self.prog} --help`)"
        raise CommandLineError(f"{self.prog}: {message}")


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def flags_of(parser: argparse.ArgumentParser, extra: Mapping[str, str] = {}) -> dict[str, str]:  # noqa: B006
    """Python parameter -> the argument that gives it: every option's dest (`nan_policy` -> `--nan-policy`),
    every positional's metavar, then the command's own FLAGS for names spelled differently."""
    out: dict[str, str] = {}
    for p in _parsers(parser):
        for action in p._actions:
            if action.option_strings:
                out.setdefault(action.dest, max(action.option_strings, key=len))
            elif action.dest != "==SUPPRESS==" and not isinstance(action, argparse._SubParsersAction):
                out.setdefault(action.dest, str(action.metavar or action.dest.upper()))
    return {**out, **extra}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyscale", description="What does scaling cost on my GPU, and what should I train?")
    parser.add_argument("--version", action="version", version=f"pyscale {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        flags = flags_of(p, getattr(module, "FLAGS", {}))
        for q in _parsers(p):  # `pyscale costmodel fit --debug` as well as `pyscale --debug costmodel fit`
            q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show the traceback of any error")
            q.set_defaults(_prog=q.prog, _flags=flags)
        p.set_defaults(_run=module.run)
    return parser


# ------------------------------------------------------------------------------------------- the error path

def _raised_by_pyscale(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc` is pyscale's own code (not numpy's, a parser's, or a user's)."""
    tb = exc.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    root = Path(__file__).resolve().parent
    try:
        Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _oserror_line(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    hint = {FileNotFoundError: "check the path", IsADirectoryError: "give a file, not a folder",
            NotADirectoryError: "check the path", PermissionError: "check its permissions or choose another path",
            FileExistsError: "remove it or choose another path"}.get(type(exc), "check the path and the disk")
    return f"{exc.filename}: {what}, {hint}"


def classify(exc: BaseException, flags: Mapping[str, str]) -> tuple[int, str] | None:
    """(exit status, line) of an error that is no bug, else None."""
    import sqlite3

    # pyscale's word on the input: raised in its code, or an error that names parameters (UsageError,
    # ParameterError) wherever it was raised
    if isinstance(exc, ValueError) and (_raised_by_pyscale(exc) or hasattr(exc, "parameters")):
        return USER_ERROR, in_flags(str(exc), flags, getattr(exc, "parameters", ()))
    need = missing_dependency(getattr(exc, "name", None))
    if isinstance(exc, ModuleNotFoundError) and need:
        return USER_ERROR, f"this needs {need}, which is not installed; install it, or leave out the option that needs it"
    if isinstance(exc, OSError) and exc.filename is not None:
        return USER_ERROR, _oserror_line(exc)
    if isinstance(exc, sqlite3.Error):
        return FAILED, f"the store failed: {exc}"
    if isinstance(exc, OSError):
        return FAILED, f"failed: {exc}"
    return None


def reader_gone() -> int:
    """The exit status after stdout's reader closed the pipe; stdout is pointed at /dev/null so that the
    interpreter's final flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
    except KeyboardInterrupt:  # Ctrl-C while the command modules load
        print("pyscale: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("pyscale: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    except CommandLineError as exc:
        line = str(exc)
        command = next((a for a in argv if a in dict(COMMANDS)), None)
        if command and line.startswith("pyscale: "):  # the top-level parser reports a command's leftovers
            line = f"pyscale {command}: " + line.removeprefix("pyscale: ")
        print(line, file=sys.stderr)
        return USER_ERROR
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    if not getattr(args, "_run", None):
        parser.print_help()
        return USER_ERROR
    prog, debug = args._prog, args.debug
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (`pyscale report | head`): stop quietly, as Unix tools do
        return reader_gone()
    except Exception as exc:  # the one place where an error becomes a line and a status
        known = classify(exc, args._flags)
        if known is None or debug:
            traceback.print_exc()
        if known is None:
            print(f"{prog}: unexpected error, {type(exc).__name__}: {exc}; the traceback above shows where "
                  "(in pyscale's code it is a bug: please report it with the traceback)", file=sys.stderr)
            return FAILED
        status, line = known
        print(f"{prog}: {line}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
