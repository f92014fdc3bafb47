"""The embedded store: one SQLite file of devices, runs and measurements.

- Location: `$PYSCALE_HOME/pyscale.db`, else the user's data directory (`pyscale.store.default_path()`).
- WAL mode, one transaction per measurement: a killed process loses nothing already written.
- The schema is versioned (`PRAGMA user_version`) and migrated forward on open.
- Every measurement has a canonical case key (op, backend, params JSON with sorted keys, dtype, device
  uuid, versions, rank). Recording a case again supersedes the earlier row (kept, flagged), so `--resume`
  and retries see one current row per case and nothing measured is ever deleted. A failed attempt never
  hides a measured row: it is stored already superseded, behind the `ok` row that stays current.
- One schema of measured values, `MeasuredValues`: the profiler's `Measurement` and the store's row
  `MeasurementRecord` both extend it. An unavailable value is None with a `<name>_unavailable_reason`
  in Python, and NULL with that reason in the `unavailable_reasons` column; never 0.
- One writer per database file is the design (rank 0 or a Ray driver gathers rows); concurrent writers
  are still safe (SQLite locking + busy timeout), just serialised. WAL needs a local filesystem.
Standard library only (pandas/pyarrow are imported lazily by the exporters).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

DB_NAME = "pyscale.db"
HOME_ENV = "PYSCALE_HOME"
STATUSES = ("ok", "oom", "error", "skipped", "timeout")
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
             versions: Mapping[str, str | None], rank: int = 0) -> str:
    """Canonical identity of a measured case, shared by --resume and retries."""
    return _canonical_json({"op": op, "backend": backend, "params": dict(params), "dtype": dtype,
                            "device": device_uuid, "versions": dict(versions), "rank": rank})


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


class Store:
    """A connection to the pyscale SQLite store (created and migrated on open)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path) if path is not None else default_path()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), one per write.
        self._conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # durable at each commit in WAL mode
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self.transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema v{version}, newer than this pyscale's "
                                   f"v{SCHEMA_VERSION}: upgrade pyscale")
            for target in range(version, SCHEMA_VERSION):
                step = MIGRATIONS[target]
                if callable(step):
                    step(conn)
                else:
                    for statement in filter(str.strip, step.split(";")):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target + 1}")

    # ------------------------------------------------------------------ devices and runs

    def register_device(self, device: DeviceRecord) -> int:
        """The id of this device (with these versions), inserting it on first sight."""
        with self.transaction() as conn:
            return _device_id(conn, asdict(device))

    def device(self, device_id: int) -> DeviceRecord:
        row = self._conn.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            raise KeyError(f"no device with id {device_id}")
        return DeviceRecord(**{f.name: row[f.name] for f in fields(DeviceRecord)})

    def start_run(self, command: str, arguments: Mapping[str, Any] | Sequence[Any] = (), *,
                  git_revision: str | None = None, hostname: str | None = None) -> int:
        """A run row; `git_revision` defaults to the pyscale checkout's (None for an installed wheel)."""
        from pyscale import __version__

        git_revision = git_revision or source_revision()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO runs (command, arguments, started_at, pyscale_version, git_revision, hostname) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (command, _canonical_json(arguments), time.time(), __version__, git_revision,
                 hostname or platform.node()))
        return int(cur.lastrowid)

    def end_run(self, run_id: int, status: str = "ok") -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET ended_at = ?, status = ? WHERE id = ?", (time.time(), status, run_id))

    # ------------------------------------------------------------------ measurements

    def record(self, m: MeasurementRecord, *, device_id: int, run_id: int | None = None) -> int:
        """Write one measurement in its own transaction; an earlier row of the same case is superseded.

        Unless the new row failed and the current one is `ok`: then the failure is kept, flagged as
        superseded, and the measurement stays current (a rerun that runs out of memory loses nothing)."""
        m.validate()
        device = self.device(device_id)
        key = case_key(m.op, m.backend, m.params, m.dtype, device.uuid, device.versions(), m.rank)
        row = m.columns()
        row.update(case_key=key, device_id=device_id, run_id=run_id, created_at=time.time())
        with self.transaction() as conn:
            current = conn.execute("SELECT status FROM measurements WHERE case_key = ? AND superseded = 0",
                                   (key,)).fetchone()
            if m.status != "ok" and current is not None and current[0] == "ok":
                row["superseded"] = 1
            else:
                conn.execute("UPDATE measurements SET superseded = 1 WHERE case_key = ? AND superseded = 0", (key,))
            cur = conn.execute(f"INSERT INTO measurements ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                               tuple(row.values()))
        return int(cur.lastrowid)

    def case_key_for(self, op: str, backend: str, params: Mapping[str, Any], dtype: str, *, device_id: int,
                     rank: int = 0) -> str:
        device = self.device(device_id)
        return case_key(op, backend, params, dtype, device.uuid, device.versions(), rank)

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
