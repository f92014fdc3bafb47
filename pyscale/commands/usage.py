"""What every command shares to catch the user's mistakes early: `UsageError`, argument types that check
paths and numbers while the command line is parsed (before any work), the store opened for reading or
writing, and optional dependencies asked for up front.

`pyscale.cli` turns these errors into one line and exit status 2. Argument types raise
`argparse.ArgumentTypeError` with a whole sentence: what is wrong with the value, then what to do. Each path
type has a `kind`, so that a test can walk every command's arguments and try bad files on each of them.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import importlib.util
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_MAGIC = b"PAR1"
RUNS = "a CSV or Parquet file of runs (columns N, D or C, loss)"
SNIFF_BYTES = 1 << 16


class UsageError(ValueError):
    """The user's mistake, in the command line's words: what is wrong, then what to do. `parameters`: the
    library parameters it names bare (as `plan.ParameterError` does), which the CLI spells as flags."""

    def __init__(self, message: str, *parameters: str) -> None:
        super().__init__(message)
        self.parameters = parameters


def _bad(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def _is_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return False
    return True


class InputFile:
    """A file to read: it must exist, be a file, be readable and not empty, and hold `what`: text (JSON,
    CSV), or Parquet by its magic number when `table` and the name ends in .parquet/.pq. `names` (a function
    giving names, so that they load only when needed): words accepted instead of a file (presets)."""

    kind = "input"

    def __init__(self, what: str, *, table: bool = False, names: Callable[[], Iterable[str]] | None = None) -> None:
        self.what, self.table, self.names = what, table, names
        self.__name__ = "file"

    def __call__(self, value: str) -> Path | str:
        if self.names is not None and value.lower() in {n.lower() for n in self.names()}:
            return value
        path = Path(value).expanduser()
        alternatives = f" or one of {', '.join(sorted(self.names()))}" if self.names is not None else ""
        if not path.exists():
            raise _bad(f"{value}: no such file; expected {self.what}{alternatives}")
        if path.is_dir():
            raise _bad(f"{value} is a folder; expected {self.what}")
        try:
            size = path.stat().st_size
            if self.table and path.suffix.lower() in PARQUET_SUFFIXES:
                with open(path, "rb") as f:
                    ok = f.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
                kind = "a Parquet file"
            else:
                ok, kind = size == 0 or _is_text(path), "a text file"
        except OSError as exc:
            raise _bad(f"{value}: cannot read it ({exc.strerror}); check its permissions") from exc
        if size == 0:
            raise _bad(f"{value} is empty; expected {self.what}")
        if not ok:
            raise _bad(f"{value} is not {kind}; expected {self.what}")
        return path


class OutputFile:
    """A file to write: not a folder, in a folder that exists and is writable, with one of `suffixes`."""

    kind = "output-file"

    def __init__(self, what: str, suffixes: Sequence[str]) -> None:
        self.what, self.suffixes = what, tuple(suffixes)
        self.__name__ = "file"

    def __call__(self, value: str) -> Path:
        path = Path(value).expanduser()
        if path.is_dir():
            raise _bad(f"{value} is a folder; give a file name for {self.what}, e.g. {path / ('out' + self.suffixes[0])}")
        if path.suffix.lower() not in self.suffixes:
            raise _bad(f"{value}: {self.what} can be written as {', '.join(self.suffixes)}; give the file one of "
                       "these endings")
        _writable_folder(path.parent, self.what)
        if path.exists() and not os.access(path, os.W_OK):
            raise _bad(f"{value} is read-only; choose another file or make it writable")
        return path


class OutputDir:
    """A folder to write into: existing or new (its parent must exist), never a file."""

    kind = "output-dir"

    def __init__(self, what: str) -> None:
        self.what = what
        self.__name__ = "folder"

    def __call__(self, value: str) -> Path:
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            raise _bad(f"{value} is a file; give a folder (new or existing) for {self.what}")
        _writable_folder(path if path.exists() else path.parent, self.what)
        return path


def _writable_folder(folder: Path, what: str) -> None:
    folder = folder if str(folder) else Path(".")
    if not folder.is_dir():
        raise _bad(f"folder {folder} does not exist; create it, or write {what} elsewhere")
    if not os.access(folder, os.W_OK):
        raise _bad(f"folder {folder} is not writable; write {what} elsewhere")


class StorePath:
    """The store's file: an SQLite file (or, for a writer, a new name in an existing folder); a reader's
    store must exist, a writer's be writable."""

    def __init__(self, *, write: bool) -> None:
        self.write = write
        self.kind = "store-write" if write else "store-read"
        self.__name__ = "store"

    def __call__(self, value: str) -> Path:
        from pyscale import store

        path = Path(value).expanduser()
        try:
            store.check_store_file(path, read_only=not self.write)
        except store.StoreError as exc:
            raise _bad(str(exc)) from exc
        if self.write and not path.exists():
            _writable_folder(path.parent, "a new store")
        return path


def open_store(path: str | os.PathLike[str] | None, *, write: bool) -> Any:
    """The store a command works on (default `$PYSCALE_HOME/pyscale.db`): a writer opens it read-write
    (created when missing); a reader opens it read-only, so that it works on a read-only store."""
    from pyscale.store import Store

    return Store(path, read_only=not write)


def _number(convert: Callable[[str], Any], test: Callable[[Any], bool], rule: str, name: str):
    def parse(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            raise _bad(f"expected {rule}: got {value!r}") from None
        if not test(number):
            raise _bad(f"must be {rule}: got {value}")
        return number

    parse.__name__ = name
    return parse


positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1", "positive_int")
nonnegative_int = _number(int, lambda v: v >= 0, "a whole number >= 0", "nonnegative_int")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a number > 0", "positive_float")
nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0", "nonnegative_float")


# Optional dependencies: import name -> what to install.
OPTIONAL = {"pandas": "pandas (pip install 'pyscale[data]')", "pyarrow": "pyarrow (pip install 'pyscale[data]')",
            "matplotlib": "matplotlib (pip install 'pyscale[data]')",
            "sklearn": "scikit-learn (pip install 'pyscale[costmodel]')", "ray": "ray (pip install 'pyscale[ray]')",
            "pynvml": "nvidia-ml-py (pip install 'pyscale[nvml]')", "torch": "torch (pip install 'pyscale[torch]')",
            "triton": "triton (pip install 'pyscale[torch]')"}


def missing_dependency(module: str | None) -> str | None:
    """What to install for the optional `module` (an import name), or None when it is not one of pyscale's."""
    return OPTIONAL.get((module or "").split(".")[0])


def require(module: str, needed_for: str, instead: str) -> None:
    """UsageError unless the optional `module` can be imported, checked before any work is done:
    `needed_for` names the option, `instead` what to do without it."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{needed_for} needs {OPTIONAL[module]}, which is not installed; install it, or {instead}")


__all__ = ["OPTIONAL", "InputFile", "OutputDir", "OutputFile", "StorePath", "UsageError", "missing_dependency",
           "nonnegative_float", "nonnegative_int", "open_store", "positive_float", "positive_int", "require"]


# ------------------------------------------------------------------------------------------- wording

# a value written after `name=`: quoted, a dict or list literal, or a bare word or number
_VALUE = r"""'[^']*'|"[^"]*"|\{[^{}]*\}|\[[^\[\]]*\]|[\w.+\-]+"""


def _as_typed(value: str) -> str:
    """A Python literal as it is typed in a shell: 'omit' -> omit, 'H100 SXM' -> 'H100 SXM' (quoted),
    {'N': 'params'} -> N=params, [1e21, 1e22] -> 1e21 1e22; a bare word or number as it is."""
    if value[0] == "{":
        try:
            return shlex.quote(",".join(f"{k}={v}" for k, v in ast.literal_eval(value).items()))
        except (ValueError, SyntaxError, AttributeError):
            return value
    if value[0] == "[":
        return " ".join(shlex.quote(v.strip().strip("'\"")) for v in value[1:-1].split(",") if v.strip())
    if value[0] in "'\"":
        return shlex.quote(value[1:-1])
    return value


def in_flags(message: str, flags: Mapping[str, str], parameters: Sequence[str] = ()) -> str:
    """`message` in a command line's words: `name=value` and `name=` of a known parameter become its flag
    (`nan_policy='omit'` -> `--nan-policy omit`), and so do the bare `parameters` (those a
    `ParameterError` lists) and an option's name opening the message (`law: unknown` -> `--law: unknown`,
    `top_k must be ...` -> `--top-k must be ...`).
    One pass, so that a flag written in is never respelled."""
    names = sorted(flags, key=len, reverse=True)
    if not names:
        return message
    bare = set(parameters)
    # a name inside a word, a flag or quotes ('law', a key) is no parameter
    pattern = rf"(?<![\w\-'\"])({'|'.join(map(re.escape, names))})(?:=({_VALUE})?)?(?![\w\-'\"])"

    def spell(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if "=" not in m.group(0):
            # bare: a listed parameter, or the option's name that opens a library message ("name: ...",
            # "name must ...": the library's way of naming the argument)
            opening = m.start() == 0 and message[m.end():m.end() + 1] in (":", " ") and flags[name].startswith("-")
            return flags[name] if name in bare or opening else m.group(0)
        return flags[name] if value is None else f"{flags[name]} {_as_typed(value)}"

    return re.sub(pattern, spell, message)
