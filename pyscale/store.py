"""The embedded store: one SQLite file of devices, runs and measurements.

- Location: `$PYSCALE_HOME/pyscale.db`, else the user's data directory (`pyscale.store.default_path()`).
- WAL mode (set once, when the file is created), one transaction per measurement: a killed process loses
  nothing already written. Writers wait for each other (busy timeout) and retry a whole transaction that
  found the database locked, so concurrent writers are serialised, never crashed.
- The schema is versioned (`PRAGMA user_version`) and migrated forward when a writer opens it. A reader
  (`read_only=True`) never writes: it reads the file through SQLite's read-only mode (a store on read-only
  media works) and migrates an older schema in a private in-memory copy.
- Each run records its host, process id and process start time. A writer that opens the store marks
  `interrupted` the runs of this host still `running` whose process is gone (killed mid-sweep); other
  hosts' runs are left alone (their processes cannot be seen from here).
- Every measurement has a canonical case key (op, backend, params JSON with sorted keys, dtype, device
  uuid, versions, rank). Recording a case again supersedes the earlier row (kept, flagged), so `--resume`
  and retries see one current row per case and nothing measured is ever deleted. A failed attempt never
  hides a measured row: it is stored already superseded, behind the `ok` row that stays current.
- One schema of measured values, `MeasuredValues`: the profiler's `Measurement` and the store's row
  `MeasurementRecord` both extend it. An unavailable value is None with a `<name>_unavailable_reason`
  in Python, and NULL with that reason in the `unavailable_reasons` column; never 0.
- One writer per database file is the design (rank 0 or a Ray driver gathers rows); concurrent writers
  are still safe, just serialised. WAL needs a local filesystem.
- A file that cannot be a store (a directory, not SQLite, a newer schema, read-only for a writer) raises
  `StoreError` (a ValueError) naming the file and what to do.
Standard library only (pandas/pyarrow are imported lazily by the exporters).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

DB_NAME = "pyscale.db"
HOME_ENV = "PYSCALE_HOME"
STATUSES = ("ok", "oom", "error", "skipped", "timeout")
# A run's status: "running" until it ends ("ok", "error"), "interrupted" by Ctrl-C, or found dead by a later
# writer ("interrupted" too: its process no longer exists).
RUN_STATUSES = ("running", "ok", "error", "interrupted")
SQLITE_HEADER = b"SQLite format 3\x00"
# Fields whose absence must be explained: a missing energy reading is never a silent zero.
EXPLAINED_FIELDS = ("energy_j", "avg_power_w")
# Measured or derived fields that may be absent, but only with a reason (0 can be real here: a
# permutation does no FLOPs).
REASONED_FIELDS = ("flops", "bytes", "idle_power_w", "sm_clock_mhz", "mem_clock_mhz", "temperature_c")


def _device_id(conn: sqlite3.Connection, device: Mapping[str, Any]) -> int:
    """The id of the devices row with this uuid and these versions, inserted (with `device`'s columns) when
    there is none. Looked up first: the table's UNIQUE constraint lets rows with a NULL version repeat."""
    found = conn.execute("SELECT id FROM devices WHERE uuid = ? AND driver_version IS ? AND cuda_version IS ? "
                         "AND torch_version IS ? AND triton_version IS ? ORDER BY id LIMIT 1",
                         (device["uuid"], device["driver_version"], device["cuda_version"], device["torch_version"],
                          device["triton_version"])).fetchone()
    if found is not None:
        return int(found[0])
    cur = conn.execute(f"INSERT INTO devices ({', '.join(device)}, created_at) "
                       f"VALUES ({', '.join('?' * len(device))}, ?)", (*device.values(), time.time()))
    return int(cur.lastrowid)


def _migrate_v3_one_device_record(conn: sqlite3.Connection) -> None:
    """v3: every measurement on the device record `pyscale.sysinfo.device_record` builds.

    Before v3 the profiler and the benchmark built that record apart: the profiler named a CPU on a
    machine with CUDA devices "cpu" (now "cpu-<host>", the host of the run that measured it), the
    benchmark gave a CPU torch's CUDA version (a CPU row has none now), and the profiler named a CUDA
    device without a uuid "cuda:<index>" (now its name, as the benchmark did). Rows move onto the device
    as it is recorded now, with their case keys recomputed, so that --resume still matches them; where two
    current rows become one case, one stays current (an ok row before a failure, then the newer).
    """
    devices = {row["id"]: dict(row) for row in conn.execute("SELECT * FROM devices")}
    identity = ("kind", "name", "uuid", "compute_capability", "memory_bytes", "driver_version", "cuda_version",
                "torch_version", "triton_version")

    def as_recorded_now(dev: dict[str, Any], host: str | None) -> dict[str, Any]:
        new = {k: dev[k] for k in identity}
        if dev["kind"] == "cpu":
            new["cuda_version"] = None
            if dev["uuid"] == "cpu":
                new["uuid"] = f"cpu-{host or platform.node()}"
        elif dev["kind"] == "cuda" and dev["uuid"].startswith("cuda:"):
            new["uuid"] = dev["name"]
        return new

    rows = conn.execute("SELECT m.id, m.device_id, m.op, m.backend, m.params, m.dtype, m.rank, r.hostname "
                        "FROM measurements m LEFT JOIN runs r ON r.id = m.run_id").fetchall()
    conn.execute("DROP INDEX measurements_current_case")  # keys may meet while they are rewritten
    for row in rows:
        dev = devices[row["device_id"]]
        new = as_recorded_now(dev, row["hostname"])
        if new == {k: dev[k] for k in identity}:
            continue
        key = case_key(row["op"], row["backend"], json.loads(row["params"]), row["dtype"], new["uuid"],
                       DeviceRecord(**new).versions(), row["rank"])
        conn.execute("UPDATE measurements SET device_id = ?, case_key = ? WHERE id = ?",
                     (_device_id(conn, new), key, row["id"]))
    for (key,) in conn.execute("SELECT case_key FROM measurements WHERE superseded = 0 GROUP BY case_key "
                               "HAVING COUNT(*) > 1").fetchall():
        (keep,) = conn.execute("SELECT id FROM measurements WHERE case_key = ? AND superseded = 0 "
                               "ORDER BY status = 'ok' DESC, id DESC LIMIT 1", (key,)).fetchone()
        conn.execute("UPDATE measurements SET superseded = 1 WHERE case_key = ? AND superseded = 0 AND id != ?",
                     (key, keep))
    conn.execute("CREATE UNIQUE INDEX measurements_current_case ON measurements (case_key) WHERE superseded = 0")
    stale = [i for i, dev in devices.items() if as_recorded_now(dev, None) != {k: dev[k] for k in identity}]
    conn.executemany("DELETE FROM devices WHERE id = ? AND id NOT IN (SELECT device_id FROM measurements)",
                     [(i,) for i in stale])


# Schema migrations in order: SQL scripts, or functions of the connection for what SQL cannot say.
MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    # v1: devices, runs and timed measurements.
    """
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        uuid TEXT NOT NULL,
        compute_capability TEXT,
        memory_bytes INTEGER,
        driver_version TEXT,
        cuda_version TEXT,
        torch_version TEXT,
        triton_version TEXT,
        created_at REAL NOT NULL,
        UNIQUE (uuid, driver_version, cuda_version, torch_version, triton_version)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        command TEXT NOT NULL,
        arguments TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        status TEXT NOT NULL DEFAULT 'running',
        pyscale_version TEXT,
        git_revision TEXT,
        hostname TEXT
    );
    CREATE TABLE measurements (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id),
        device_id INTEGER NOT NULL REFERENCES devices(id),
        case_key TEXT NOT NULL,
        op TEXT NOT NULL,
        backend TEXT NOT NULL,
        params TEXT NOT NULL,
        dtype TEXT NOT NULL,
        rank INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        error TEXT,
        time_s_median REAL,
        time_s_p20 REAL,
        time_s_p80 REAL,
        repeats INTEGER,
        flops REAL,
        model_flops REAL,
        bytes REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX measurements_op ON measurements (op, dtype);
    """,
    # v2: energy, power, clocks and temperature; explained absences; superseded rows kept.
    """
    ALTER TABLE measurements ADD COLUMN energy_j REAL;
    ALTER TABLE measurements ADD COLUMN avg_power_w REAL;
    ALTER TABLE measurements ADD COLUMN idle_power_w REAL;
    ALTER TABLE measurements ADD COLUMN sm_clock_mhz REAL;
    ALTER TABLE measurements ADD COLUMN mem_clock_mhz REAL;
    ALTER TABLE measurements ADD COLUMN temperature_c REAL;
    ALTER TABLE measurements ADD COLUMN throttle_reasons TEXT;
    ALTER TABLE measurements ADD COLUMN unavailable_reasons TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE measurements ADD COLUMN extra TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE measurements ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX measurements_current_case ON measurements (case_key) WHERE superseded = 0;
    """,
    # v3: one device record for the profiler and the benchmark (case keys of the rows it moves recomputed).
    _migrate_v3_one_device_record,
    # v4: the process of each run (with its host), so that a later writer can tell a killed run from a live one.
    """
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    ALTER TABLE runs ADD COLUMN process_started_at REAL;
    """,
    # v5: the GPU power limit enforced while measuring (part of a GPU case's key from now on; older rows have
    # none: their limit was never read, so a resume measures them again rather than guess it).
    """
    ALTER TABLE measurements ADD COLUMN power_limit_w REAL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def default_path() -> Path:
    """`$PYSCALE_HOME/pyscale.db`, else the platform's per-user data directory."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / DB_NAME
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "pyscale" / DB_NAME


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def case_key(op: str, backend: str, params: Mapping[str, Any], dtype: str, device_uuid: str,
             versions: Mapping[str, str | None], rank: int = 0, power_limit_w: float | None = None) -> str:
    """Canonical identity of a measured case, shared by --resume and retries. A GPU's enforced power limit is
    part of it (the same case at 300 W and at 400 W are two measurements); without one (a CPU, an
    unreadable limit, rows older than schema v5) the key is what it always was."""
    key = {"op": op, "backend": backend, "params": dict(params), "dtype": dtype, "device": device_uuid,
           "versions": dict(versions), "rank": rank}
    if power_limit_w is not None:
        key["power_limit_w"] = float(power_limit_w)
    return _canonical_json(key)


@dataclass(frozen=True)
class DeviceRecord:
    kind: str  # "cuda" or "cpu"
    name: str
    uuid: str
    compute_capability: str | None = None
    memory_bytes: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    torch_version: str | None = None
    triton_version: str | None = None

    def versions(self) -> dict[str, str | None]:
        return {"driver": self.driver_version, "cuda": self.cuda_version, "torch": self.torch_version,
                "triton": self.triton_version}


# Python name -> column, where the measurements table names a value differently.
COLUMN_OF = {"time_s": "time_s_median"}
# Why a value is unavailable (None while the value is there).
Reason = str | None


@dataclass(kw_only=True)
class MeasuredValues:
    """What one measurement holds, in SI units: the fields of the profiler's `Measurement` and of the
    store's row alike. An absent value is None with its `<name>_unavailable_reason`, never 0."""

    time_s: float | None = None  # median of one call (the column time_s_median)
    time_s_p20: float | None = None
    time_s_p80: float | None = None
    repeats: int | None = None  # timed calls (None when nothing was timed)
    flops: float | None = None  # per call, as executed
    model_flops: float | None = None  # per call, PaLM convention
    bytes: float | None = None
    energy_j: float | None = None  # per call
    avg_power_w: float | None = None  # over the energy window
    idle_power_w: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temperature_c: float | None = None
    throttle_reasons: tuple[str, ...] | None = None  # NVML's reason names; () when none
    power_limit_w: float | None = None  # the GPU power limit NVML enforced while measuring (part of the key)
    time_s_unavailable_reason: Reason = None
    flops_unavailable_reason: Reason = None
    model_flops_unavailable_reason: Reason = None
    bytes_unavailable_reason: Reason = None
    energy_j_unavailable_reason: Reason = None
    avg_power_w_unavailable_reason: Reason = None
    idle_power_w_unavailable_reason: Reason = None
    sm_clock_mhz_unavailable_reason: Reason = None
    mem_clock_mhz_unavailable_reason: Reason = None
    temperature_c_unavailable_reason: Reason = None
    throttle_reasons_unavailable_reason: Reason = None
    power_limit_w_unavailable_reason: Reason = None
    extra: dict[str, Any] = field(default_factory=dict)

    def unavailable_reasons(self) -> dict[str, str]:
        """{name: reason} of every absent value that has a reason (the store's `unavailable_reasons` column)."""
        out = {}
        for name in OPTIONAL_VALUES:
            reason = getattr(self, f"{name}_unavailable_reason")
            if getattr(self, name) is None and reason:
                out[name] = reason
        return out

    def explain_missing(self, why: str) -> MeasuredValues:
        """Give `why` as the reason of every absent value the store requires one for (an ok row's energy,
        power, FLOPs, bytes, clocks and temperature) that has none yet; returns self (for chaining)."""
        for name in EXPLAINED_FIELDS + REASONED_FIELDS:
            if getattr(self, name) is None and not getattr(self, f"{name}_unavailable_reason"):
                setattr(self, f"{name}_unavailable_reason", why)
        return self


_FIELDS = tuple(f.name for f in fields(MeasuredValues))
# The measured values (columns of their own), and those of them that carry a reason when absent.
VALUES = tuple(n for n in _FIELDS if not n.endswith("_unavailable_reason") and n != "extra")
OPTIONAL_VALUES = tuple(n for n in VALUES if f"{n}_unavailable_reason" in _FIELDS)


@dataclass
class MeasurementRecord(MeasuredValues):
    """One row of the measurements table: a case's identity and its measured values."""

    op: str
    backend: str
    params: dict[str, Any]
    dtype: str
    status: str = "ok"
    error: str | None = None
    rank: int = 0

    def validate(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}: got {self.status!r}")
        if self.throttle_reasons is not None and not isinstance(self.throttle_reasons, (tuple, list)):
            raise ValueError(f"throttle_reasons must be a tuple of reason names: got {self.throttle_reasons!r}")
        if self.status != "ok":
            if not self.error:
                raise ValueError(f"error must say what happened when status is {self.status!r}")
            return
        if self.time_s is None or not self.time_s > 0 or not math.isfinite(self.time_s):
            raise ValueError(f"time_s (stored as time_s_median) must be a positive finite time for an ok "
                             f"measurement: got {self.time_s!r}")
        for name in EXPLAINED_FIELDS:
            value = getattr(self, name)
            if value is not None and value == 0:
                raise ValueError(f"{name} is 0: an unmeasured value is None with a reason, never 0")
        for name in EXPLAINED_FIELDS + REASONED_FIELDS:
            if getattr(self, name) is None and not getattr(self, f"{name}_unavailable_reason"):
                raise ValueError(f"{name} is None: give the reason in {name}_unavailable_reason")

    def columns(self) -> dict[str, Any]:
        """The row's measurement columns (identity, values, reasons and extra, JSON-encoded where nested)."""
        row: dict[str, Any] = {name: getattr(self, name) for name in ("op", "backend", "dtype", "status", "error",
                                                                      "rank")}
        row["params"] = _canonical_json(self.params)
        row.update({COLUMN_OF.get(name, name): getattr(self, name) for name in VALUES})
        if self.throttle_reasons is not None:  # a text column: the names comma-joined, "none" for none
            row["throttle_reasons"] = ",".join(self.throttle_reasons) or "none"
        row["unavailable_reasons"] = _canonical_json(self.unavailable_reasons())
        row["extra"] = _canonical_json(self.extra)
        return row


@cache
def source_revision() -> str | None:
    """The git commit of the pyscale source that is running, `-dirty` if it has uncommitted changes.

    None when pyscale is not run from a git checkout (a wheel) or git is missing: the version says enough."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or (Path(top) / "pyscale" / "store.py").resolve() != Path(__file__).resolve():
        return None  # some other repository that happens to contain site-packages
    head = git("rev-parse", "HEAD")
    if head is None:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


# --------------------------------------------------------------------------- processes (killed runs)

def process_started_at(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None where this cannot be read (no such
    process, or a system without /proc). With the pid it names a process: pids are reused, start times not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    fields_ = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    ticks = int(fields_[19])  # field 22 of proc(5), counted after the name
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")


# Start times of one process read twice agree to the clock tick; boot time moves only if the clock is stepped.
_SAME_START_S = 2.0


def process_exists(pid: int, started_at: float | None) -> bool | None:
    """Whether the process that recorded (pid, started_at) on this host is still running; None when this
    system cannot tell (then nothing is marked)."""
    if Path("/proc/self/stat").exists():
        now = process_started_at(pid)
        if now is None:
            return False
        return started_at is None or abs(now - started_at) <= _SAME_START_S
    if os.name == "posix":  # no /proc (macOS): the pid alone, as good as it gets without one
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return None  # Windows: os.kill(pid, 0) would terminate the process


# --------------------------------------------------------------------------- the store

def check_store_file(path: Path, read_only: bool) -> None:
    """Raise StoreError when `path` cannot be a store (for writing, unless `read_only`): what can be said
    before SQLite opens it, in words a user can act on."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory: give the store's file (e.g. {path / DB_NAME})")
    if not path.exists():
        if read_only:
            raise StoreError(f"no store at {path}: measure something first (pyscale bench, pyscale profile) "
                             "or give the path of an existing store")
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read the store {path}: {exc.strerror}") from exc
    if head and head != SQLITE_HEADER:
        raise StoreError(f"{path} is not a pyscale store (not an SQLite database): give the path of a store, "
                         "or a new file name to start one")
    if not read_only and not (os.access(path, os.W_OK) and path.stat().st_mode & 0o222):
        raise StoreError(f"{path} is read-only: this command writes to its store; give a writable store or make "
                         f"it writable (chmod u+w {path})")


def _damaged(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    return StoreError(f"{path} is damaged or not a pyscale store (SQLite: {exc}); give another store, or move this "
                      "file away to start a new one")


def _newer(path: Path, version: int) -> StoreError:
    return StoreError(f"{path} has schema v{version}, newer than this pyscale's v{SCHEMA_VERSION}: upgrade pyscale")


class StoreError(ValueError):
    """A file that cannot serve as the store asked for: the message names it and says what to do."""


_T = TypeVar("_T")


def _busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (5, 6) or "locked" in str(exc) or "busy" in str(exc)


class Store:
    """A connection to the pyscale SQLite store.

    A writer (the default) creates the file when missing, sets WAL once, migrates the schema forward and
    marks this host's dead runs `interrupted`. `read_only=True` opens an existing store for reading only;
    it works on read-only files and media and never changes the file. `timeout_s`: how long a write waits
    for other writers before it fails.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False,
                 timeout_s: float = 60.0) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.timeout_s = float(timeout_s)
        in_memory = str(self.path) == ":memory:"
        self.read_only = read_only and not in_memory  # an in-memory store is private: nothing to protect
        if not in_memory:
            check_store_file(self.path, read_only)
        if read_only and not in_memory:
            self._conn = self._open_read_only()
        else:
            if not in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), one per write.
            self._conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
            try:
                self._configure()
                self._set_wal()
                self._migrate()
            except sqlite3.DatabaseError as exc:
                self._conn.close()
                if "readonly" in str(exc) or "read-only" in str(exc):
                    raise StoreError(f"{self.path} is read-only: this command writes to its store; give a writable "
                                     "store or make it writable") from exc
                if not isinstance(exc, sqlite3.OperationalError):  # corrupt, or not a database after all
                    raise _damaged(self.path, exc) from exc
                raise
            self.interrupted_now = self._mark_interrupted_runs()
            return
        self.interrupted_now = []

    def _configure(self) -> None:
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        if not self.read_only:
            self._conn.execute("PRAGMA synchronous = NORMAL")  # durable at each commit in WAL mode
        self._conn.execute("PRAGMA foreign_keys = ON")

    def _open_read_only(self) -> sqlite3.Connection:
        """SQLite's read-only mode (it reads a write-ahead log left behind too). Where that cannot open the
        file (a read-only folder without the WAL's -wal and -shm files), the file as immutable -- unless a
        write-ahead log holds rows that reading it that way would miss."""
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout_s, isolation_level=None)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError):
                raise _damaged(self.path, exc) from exc
            wal = Path(f"{self.path}-wal")
            if wal.is_file() and wal.stat().st_size > 0:
                raise StoreError(f"{self.path} cannot be read here: its folder is read-only and its write-ahead "
                                 f"log {wal.name} holds rows not yet merged; open it once where it is writable "
                                 f"(any pyscale command that writes, e.g. `pyscale bench --store {self.path}`), "
                                 f"or copy the store and {wal.name} to a writable folder") from exc
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=self.timeout_s, isolation_level=None)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            conn.close()
            raise _newer(self.path, version)
        if version < SCHEMA_VERSION:  # migrate a private copy: the file stays as it is
            memory = sqlite3.connect(":memory:", isolation_level=None)
            conn.backup(memory)
            conn.close()
            conn = memory
        self._conn = conn
        self._configure()
        if version < SCHEMA_VERSION:
            self._migrate(copy=True)
        return conn

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        """`attempt()` again after a short, growing, jittered pause while the database is locked, until
        timeout_s has passed (SQLite's own busy wait does not cover every lock, e.g. a journal-mode change)."""
        deadline = time.monotonic() + self.timeout_s
        pause = 0.002
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(f"{self.path}: the database stayed locked by another writer "
                                                   f"for {self.timeout_s:g} s ({exc})") from exc
            time.sleep(pause * (0.5 + random.random()))
            pause = min(2 * pause, 0.2)

    def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn(connection)` as one write transaction, the whole of it again if the database was locked.

        `fn` must only touch the database (it may run more than once)."""
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only: it cannot be written")

        def attempt() -> _T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return result

        return self._retrying(attempt)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction around a block (its start waits for other writers; prefer `write`, which
        retries the whole transaction)."""
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only: it cannot be written")
        self._retrying(lambda: self._conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _set_wal(self) -> None:
        """WAL once, when the file is new: it persists in the file, so later opens only read it."""
        mode = self._retrying(lambda: self._conn.execute("PRAGMA journal_mode").fetchone()[0])
        if str(mode).lower() != "wal" and str(self.path) != ":memory:":
            self._retrying(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone())

    def _migrate(self, copy: bool = False) -> None:
        def migrate(conn: sqlite3.Connection) -> None:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise _newer(self.path, version)
            for target in range(version, SCHEMA_VERSION):
                step = MIGRATIONS[target]
                if callable(step):
                    step(conn)
                else:
                    for statement in filter(str.strip, step.split(";")):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target + 1}")

        if copy:  # a reader's private copy: nobody else writes it
            self._conn.execute("BEGIN")
            migrate(self._conn)
            self._conn.execute("COMMIT")
        else:
            self.write(migrate)

    def _mark_interrupted_runs(self) -> list[int]:
        """Mark `interrupted` this host's `running` runs whose process is gone; returns their ids."""
        host = platform.node()
        candidates = self._conn.execute("SELECT id, pid, process_started_at FROM runs WHERE status = 'running' "
                                        "AND hostname = ? AND pid IS NOT NULL", (host,)).fetchall()
        dead = [row["id"] for row in candidates if process_exists(row["pid"], row["process_started_at"]) is False]
        if dead:
            self.write(lambda conn: conn.executemany(
                "UPDATE runs SET status = 'interrupted' WHERE id = ? AND status = 'running'", [(i,) for i in dead]))
        return dead

    # ------------------------------------------------------------------ devices and runs

    def register_device(self, device: DeviceRecord) -> int:
        """The id of this device (with these versions), inserting it on first sight."""
        return self.write(lambda conn: _device_id(conn, asdict(device)))

    def device(self, device_id: int) -> DeviceRecord:
        row = self._conn.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            raise KeyError(f"no device with id {device_id}")
        return DeviceRecord(**{f.name: row[f.name] for f in fields(DeviceRecord)})

    def start_run(self, command: str, arguments: Mapping[str, Any] | Sequence[Any] = (), *,
                  git_revision: str | None = None, hostname: str | None = None) -> int:
        """A run row; `git_revision` defaults to the pyscale checkout's (None for an installed wheel).

        A run of this host records this process (pid and start time), so that a later writer can tell when
        it was killed; a run filed for another host records none."""
        from pyscale import __version__

        git_revision = git_revision or source_revision()
        host = hostname or platform.node()
        pid = os.getpid() if host == platform.node() else None
        started = None if pid is None else process_started_at(pid)
        values = (command, _canonical_json(arguments), time.time(), __version__, git_revision, host, pid, started)
        return self.write(lambda conn: int(conn.execute(
            "INSERT INTO runs (command, arguments, started_at, pyscale_version, git_revision, hostname, pid, "
            "process_started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values).lastrowid))

    def end_run(self, run_id: int, status: str = "ok") -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}: got {status!r}")
        self.write(lambda conn: conn.execute("UPDATE runs SET ended_at = ?, status = ? WHERE id = ?",
                                             (time.time(), status, run_id)))

    def runs(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Run rows (newest last), each with `measurements`: how many current rows it measured."""
        where, values = ("WHERE r.status = ?", (status,)) if status else ("", ())
        rows = self._conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM measurements m WHERE m.run_id = r.id AND m.superseded = 0) "
            f"AS measurements FROM runs r {where} ORDER BY r.id", values).fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ measurements

    def record(self, m: MeasurementRecord, *, device_id: int, run_id: int | None = None) -> int:
        """Write one measurement in its own transaction; an earlier row of the same case is superseded.

        Unless the new row failed and the current one is `ok`: then the failure is kept, flagged as
        superseded, and the measurement stays current (a rerun that runs out of memory loses nothing)."""
        m.validate()
        device = self.device(device_id)
        key = case_key(m.op, m.backend, m.params, m.dtype, device.uuid, device.versions(), m.rank,
                       m.power_limit_w)
        row = m.columns()
        row.update(case_key=key, device_id=device_id, run_id=run_id, created_at=time.time())

        def insert(conn: sqlite3.Connection) -> int:
            current = conn.execute("SELECT status FROM measurements WHERE case_key = ? AND superseded = 0",
                                   (key,)).fetchone()
            values = dict(row)
            if m.status != "ok" and current is not None and current[0] == "ok":
                values["superseded"] = 1
            else:
                conn.execute("UPDATE measurements SET superseded = 1 WHERE case_key = ? AND superseded = 0", (key,))
            cur = conn.execute(f"INSERT INTO measurements ({', '.join(values)}) "
                               f"VALUES ({', '.join('?' * len(values))})", tuple(values.values()))
            return int(cur.lastrowid)

        return self.write(insert)

    def case_key_for(self, op: str, backend: str, params: Mapping[str, Any], dtype: str, *, device_id: int,
                     rank: int = 0, power_limit_w: float | None = None) -> str:
        device = self.device(device_id)
        return case_key(op, backend, params, dtype, device.uuid, device.versions(), rank, power_limit_w)

    def has_case(self, key: str, *, statuses: Sequence[str] = ("ok",)) -> bool:
        """True when the current row of this case has one of `statuses` (what --resume skips)."""
        marks = ", ".join("?" * len(statuses))
        row = self._conn.execute(
            f"SELECT 1 FROM measurements WHERE case_key = ? AND superseded = 0 AND status IN ({marks})",
            (key, *statuses)).fetchone()
        return row is not None

    def measurements(self, *, op: str | None = None, dtype: str | None = None, device_id: int | None = None,
                     status: str | None = "ok", include_superseded: bool = False) -> list[dict[str, Any]]:
        """Current measurements joined with their device, as dicts with params etc. decoded."""
        clauses, values = [], []
        for column, value in (("m.op", op), ("m.dtype", dtype), ("m.device_id", device_id), ("m.status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if not include_superseded:
            clauses.append("m.superseded = 0")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            "SELECT m.*, d.name AS device_name, d.uuid AS device_uuid, d.kind AS device_kind "
            f"FROM measurements m JOIN devices d ON d.id = m.device_id {where} ORDER BY m.id", values).fetchall()
        out = []
        for r in rows:
            item = dict(r)
            for column in ("params", "unavailable_reasons", "extra"):
                item[column] = json.loads(item[column])
            out.append(item)
        return out

    def rows(self, table: str) -> list[dict[str, Any]]:
        if table not in ("devices", "runs", "measurements"):
            raise ValueError(f"table must be devices, runs or measurements: got {table!r}")
        return [dict(r) for r in self._conn.execute(f"SELECT * FROM {table} ORDER BY id")]

    # ------------------------------------------------------------------ export

    def to_pandas(self, table: str = "measurements"):
        import pandas as pd

        return pd.DataFrame(self.rows(table))

    def to_csv(self, path: str | os.PathLike[str], table: str = "measurements") -> Path:
        rows = self.rows(table)
        columns = [d[0] for d in self._conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return Path(path)

    def to_parquet(self, path: str | os.PathLike[str], table: str = "measurements") -> Path:
        self.to_pandas(table).to_parquet(path, index=False)
        return Path(path)
