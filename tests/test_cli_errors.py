"""The CLI's one error path: every user error is one line on stderr, `pyscale <command>: <what is wrong>,
<what to do>`, and exit status 2; failed work exits 1, Ctrl-C 130; tracebacks only for bugs or with --debug.

In-process through `pyscale.cli.main(argv)`; the few real processes are at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyscale import cli
from pyscale.commands import usage
from pyscale.store import Store

PATH_TYPES = (usage.InputFile, usage.OutputFile, usage.OutputDir, usage.StorePath)


def user_error(capsys, argv, *fragments, status=2) -> str:
    """Run `pyscale argv` and check the one-line error; returns the line."""
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == status, (argv, rc, out, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    command = next(a for a in argv if not a.startswith("-"))
    assert err.startswith(f"pyscale {command}"), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# ------------------------------------------------------------------------------------------- every path argument

def _path_arguments():
    """(command words, argument, its type) for every path argument of every subcommand, from the parser."""
    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, [*words, name])
            elif isinstance(action.type, PATH_TYPES):
                yield words, action
    return list(walk(cli.build_parser(), []))


ARGUMENTS = _path_arguments()


def test_every_argument_that_names_a_file_is_checked_while_parsing():
    """A flag added later with a plain type=Path (or a file-like metavar) and no check fails here."""
    assert len(ARGUMENTS) >= 19, ARGUMENTS
    filelike = ("PATH", "CSV", "PNG", "DIR", ".json", "FILE")
    for words, parser in ((w, p) for w, p in _parsers()):
        for action in parser._actions:
            names = f"{action.metavar or ''} {action.dest}"
            looks_like_a_path = action.type is Path or any(m in names for m in filelike) or action.dest in (
                "store", "out", "plot", "data", "export", "profile", "save_synthetic")
            if looks_like_a_path:
                assert isinstance(action.type, PATH_TYPES), (words, action.dest)


def _parsers():
    def walk(parser, words):
        yield words, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, [*words, name])
    return list(walk(cli.build_parser(), []))


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "a folder").mkdir()
    (tmp_path / "binary.dat").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.csv").write_bytes(b"")
    store = tmp_path / "read-only.db"
    Store(store).close()
    store.chmod(0o444)
    return tmp_path


def _cases(kind: str, suffix: str, root: Path) -> dict[str, Path]:
    """The bad values every argument of a kind must reject: (case -> path)."""
    missing_folder = root / "no such folder" / f"x{suffix}"
    return {
        "input": {"missing": root / "missing.json", "directory": root / "a folder", "binary": root / "binary.dat",
                  "empty": root / "empty.csv"},
        "store-read": {"missing": root / "missing.db", "directory": root / "a folder", "binary": root / "binary.dat"},
        "store-write": {"directory": root / "a folder", "binary": root / "binary.dat", "missing folder": missing_folder,
                        "read-only": root / "read-only.db"},
        "output-file": {"directory": root / "a folder", "missing folder": missing_folder,
                        "wrong ending": root / "out.unknown"},
        "output-dir": {"a file": root / "binary.dat", "missing folder": root / "no such folder" / "plots"},
    }[kind]


@pytest.mark.parametrize(("words", "action"), ARGUMENTS,
                         ids=[f"{' '.join(w)} {a.option_strings[-1] if a.option_strings else a.metavar or a.dest}"
                              for w, a in ARGUMENTS])
def test_every_path_argument_rejects_bad_files_in_one_line(words, action, bad_files, capsys):
    suffix = action.type.suffixes[0] if isinstance(action.type, usage.OutputFile) else ".db"
    name = max(action.option_strings, key=len) if action.option_strings else str(action.metavar or action.dest)
    for case, path in _cases(action.type.kind, suffix, bad_files).items():
        values = [str(path)] * (action.nargs if isinstance(action.nargs, int) else 1)  # --compare A B
        argv = [*words, *([name] if action.option_strings else []), *values]
        line = user_error(capsys, argv, name, path.parent.name if case == "missing folder" else path.name)
        assert line.startswith(f"pyscale {' '.join(words)}: {name}: "), (case, line)


# ------------------------------------------------------------------------------------------- per command

def test_parse_errors_are_one_line_naming_the_command(capsys):
    user_error(capsys, ["plan"], "one of the arguments --flops", "see `pyscale plan --help`")
    user_error(capsys, ["fit", "--synthetic", "10", "--bogus"], "pyscale fit: unrecognized arguments: --bogus")
    user_error(capsys, ["bench", "--shapes", "gpt5"], "--shapes: invalid choice: 'gpt5'")
    user_error(capsys, ["bench", "--shapes", "m=16,n=128"], "--shapes: invalid choice")
    user_error(capsys, ["profile", "--model", "gpt", "--batch", "-1"], "--batch: must be a whole number >= 1: got -1")
    user_error(capsys, ["fit", "--synthetic", "30", "--validate", "0"], "--validate: must be a whole number >= 1")
    user_error(capsys, ["fit", "--synthetic", "30", "--jobs", "0"], "--jobs: must be a whole number >= 1")
    user_error(capsys, ["plan", "--flops", "nan"], "--flops: must be a number > 0: got nan")
    user_error(capsys, ["plan", "--flops", "lots"], "--flops: expected a number > 0: got 'lots'")
    assert cli.main(["--version"]) == 0 and "pyscale" in capsys.readouterr().out


def test_bench_checks_its_options_before_the_sweep(tmp_path, capsys):
    db = tmp_path / "s.db"
    user_error(capsys, ["bench", "--store", str(db), "--export", str(tmp_path / "rows.xlsx")],
               "--export: ", "rows.xlsx", ".csv, .json, .parquet")
    user_error(capsys, ["bench", "--store", str(db), "--export", str(tmp_path / "nope" / "rows.csv")],
               "folder", "does not exist")
    user_error(capsys, ["bench", "moe", "--shapes", "llama3-8b", "--store", str(db)], "no cases for moe",
               "choose other --shapes")
    from pyscale import sysinfo

    if not sysinfo.cuda_available():
        user_error(capsys, ["bench", "--device", "cuda", "--store", str(db)], "--device cuda: torch sees no CUDA device",
                   "use --device cpu")
    assert not db.exists()  # nothing ran: not even a store was made


def test_profile_meter_and_device_checked_before_the_model_is_built(capsys):
    from pyscale.profile.power import MeterError, make_meter

    try:
        make_meter("nvml", device_kind="cuda").close()
        nvml = True
    except MeterError:
        nvml = False
    if not nvml:
        user_error(capsys, ["profile", "--model", "gpt", "--meter", "nvml", "--no-store"], "--meter nvml: ",
                   "use --meter auto")
    user_error(capsys, ["profile", "--model", "gpt", "--device", "tpu", "--no-store"], "--device tpu")
    user_error(capsys, ["profile", "--model", "gpt", "--heads", "5", "--d-model", "64", "--no-store"],
               "--d-model", "--heads 5")



def test_power_limits_are_for_a_gpu(tmp_path, capsys):
    """--power-limits sets a GPU's limit: on a CPU it is the user's mistake, said before anything runs."""
    db = tmp_path / "s.db"
    for argv in (["bench", "gemm", "--quick", "--device", "cpu", "--power-limits", "200,max", "--store", str(db)],
                 ["profile", "--model", "gpt", "--device", "cpu", "--power-limits", "200", "--no-store"]):
        user_error(capsys, argv, "--power-limits sets a GPU's power limit", "--device cuda")
    assert not db.exists()

RUNS_CSV = "run,N,D,loss\n" + "".join(f"r{i},{n:.3g},{d:.3g},{loss}\n" for i, (n, d, loss) in enumerate(
    [(1e8, 2e9, 3.1), (2e8, 4e9, 2.9), (4e8, 8e9, "nan"), (8e8, 1.6e10, 2.6), (1.6e9, 3.2e10, 2.5)]))


def test_fit_errors_speak_the_command_line(tmp_path, capsys):
    runs = tmp_path / "runs.csv"
    runs.write_text(RUNS_CSV)
    line = user_error(capsys, ["fit", str(runs), "--quick"], "1 bad row(s): row 2: loss is nan", "--nan-policy omit")
    assert "nan_policy" not in line
    header_only = tmp_path / "header.csv"
    header_only.write_text("N,D,loss\n")
    user_error(capsys, ["fit", str(header_only)], "data: no rows")
    user_error(capsys, ["fit", str(runs), "--plot", str(tmp_path / "no such folder" / "fit.png")], "--plot: folder")
    user_error(capsys, ["fit", str(runs), "--columns", "N"], "--columns: expected CANONICAL=yours")


def test_fit_plot_without_matplotlib_is_said_before_fitting(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    user_error(capsys, ["fit", "--synthetic", "30", "--plot", str(tmp_path / "fit.png")], "--plot needs matplotlib",
               "run without --plot")
    user_error(capsys, ["plan", "--flops", "1e21", "--plot", str(tmp_path / "plots")], "--plot needs matplotlib")


def test_plan_law_that_is_no_fit_and_plot_onto_a_file(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text(RUNS_CSV)
    (tmp_path / "list.json").write_text("[1, 2]")
    user_error(capsys, ["plan", "--flops", "1e21", "--law", str(tmp_path / "runs.csv")], "--law: ", "runs.csv is not JSON",
               "expected a saved fit")
    user_error(capsys, ["plan", "--flops", "1e21", "--law", str(tmp_path / "list.json")], "not a saved fit")
    user_error(capsys, ["plan", "--flops", "1e21", "--law", "epoch2025"], "--law: epoch2025: no such file",
               "or one of", "epoch2024")
    user_error(capsys, ["plan", "--flops", "1e21", "--plot", str(tmp_path / "runs.csv")], "--plot: ", "is a file",
               "give a folder")


def _gemm_store(path):
    """A store of made-up fp32 GEMM timings on this machine's CPU record (what `costmodel fit` reads)."""
    from pyscale.store import DeviceRecord, MeasurementRecord

    with Store(path) as s:
        dev = s.register_device(DeviceRecord(kind="cpu", name="Synthetic CPU", uuid="cpu-synthetic"))
        for m in (16, 64, 256, 1024):
            for n, k in ((128, 128), (512, 128), (128, 512)):
                flops = 2.0 * m * n * k
                s.record(MeasurementRecord(op="gemm", backend="torch.mm", params={"m": m, "n": n, "k": k},
                                           dtype="fp32", time_s=flops / 1e11 + 1e-5, flops=flops,
                                           bytes=4.0 * (m * k + n * k + m * n)).explain_missing("synthetic row"),
                         device_id=dev)


def test_readers_work_on_a_read_only_store_and_writers_refuse_it(tmp_path, capsys):
    db = tmp_path / "ro.db"
    _gemm_store(db)
    db.chmod(0o444)
    before = db.read_bytes()
    assert cli.main(["costmodel", "fit", "--store", str(db), "--out", str(tmp_path / "p.json")]) == 0
    assert "wrote" in capsys.readouterr().out
    user_error(capsys, ["plan", "--flops", "1e21", "--store", str(db)], "--store: no measured gpt_step rows")
    for argv in (["bench"], ["profile", "--model", "gpt"], ["report"]):
        user_error(capsys, [*argv, "--store", str(db)], "--store: ", "ro.db is read-only", "chmod u+w")
    assert db.read_bytes() == before


def test_report_checks_every_input_before_any_stage(tmp_path, capsys):
    runs = tmp_path / "runs.csv"
    runs.write_text(RUNS_CSV)
    out, db = tmp_path / "rep", tmp_path / "s.db"
    base = ["report", "--out", str(out), "--store", str(db)]
    user_error(capsys, [*base, "--budget", "12 parsecs"], "--budget: cannot parse '12 parsecs'")
    user_error(capsys, [*base, "--budget", "-5 flops"], "--budget value must be a positive finite number")
    user_error(capsys, [*base, "--law", "nope"], "--law must be a preset")
    user_error(capsys, [*base, "--gpu", "H999"], "--gpu: no spec for 'H999'", "H100 SXM")
    user_error(capsys, [*base, "--mfu", "0.4"], "--mfu given without --gpu")
    user_error(capsys, [*base, "--data", str(tmp_path / "missing.csv")], "--data: ", "no such file")
    line = user_error(capsys, [*base, "--data", str(runs)], "--data: ", "row 2: loss is nan", "--nan-policy omit")
    assert "nan_policy" not in line
    assert not out.exists() and not db.exists()  # no stage ran


def test_report_stage_failure_exits_1_and_keeps_what_succeeded(tmp_path, capsys, monkeypatch):
    import pyscale.report

    def broken(*args, **kwargs):
        raise RuntimeError("synthetic failure of the cost-model stage")

    monkeypatch.setattr(pyscale.report, "_costmodel_section", broken)
    out = tmp_path / "rep"
    argv = ["report", "--out", str(out), "--store", str(tmp_path / "s.db"), "--skip-bench"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "report written" not in captured.out
    assert "pyscale report: stage Cost model: RuntimeError: synthetic failure" in captured.err
    assert "not run after it: Loss law, Plan (--keep-going runs them)" in captured.err
    text = (out / "report.md").read_text()
    assert "## Device" in text and "This stage failed" in text and "## Plan" not in text
    assert cli.main([*argv, "--keep-going"]) == 0  # today's behaviour, asked for: the other stages run
    captured = capsys.readouterr()
    assert "stage Cost model" in captured.err and "## Plan" in (out / "report.md").read_text()


def test_interrupts_bugs_and_debug(capsys, monkeypatch):
    import pyscale.commands.info as info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err == "pyscale info: interrupted (Ctrl-C)\n"

    def bug(args):
        return {}["no such key"]

    monkeypatch.setattr(info, "run", bug)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("pyscale info: unexpected error, KeyError")

    def numpy_bug(args):  # a ValueError raised beneath pyscale (not pyscale's word on the input) is a bug
        import numpy as np

        return np.zeros(2) + np.zeros(3)

    monkeypatch.setattr(info, "run", numpy_bug)
    assert cli.main(["info"]) == 1 and "Traceback" in capsys.readouterr().err

    def user_mistake(args):
        raise usage.UsageError("--thing: not right; do it otherwise")

    monkeypatch.setattr(info, "run", user_mistake)
    user_error(capsys, ["info"], "pyscale info: --thing: not right; do it otherwise")
    for argv in (["--debug", "info"], ["info", "--debug"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.splitlines()[-1] == "pyscale info: --thing: not right; do it otherwise"


def test_missing_optional_dependency_is_one_line(capsys, monkeypatch):
    import pyscale.commands.info as info

    def needs_pandas(args):
        import pandas_that_is_missing  # noqa: F401

    def needs_sklearn(args):
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    monkeypatch.setattr(info, "run", needs_sklearn)
    user_error(capsys, ["info"], "needs scikit-learn (pip install 'pyscale[costmodel]')")
    monkeypatch.setattr(info, "run", needs_pandas)  # not one of pyscale's optional dependencies: a bug
    assert cli.main(["info"]) == 1 and "Traceback" in capsys.readouterr().err


def test_rephrasing_library_parameters_as_flags():
    flags = {"nan_policy": "--nan-policy", "columns": "--columns", "gpu": "--gpu", "frontier": "--frontier",
             "price_per_device_hour": "--price-per-gpu-hour"}
    assert cli.in_flags("pass nan_policy='omit'", flags) == "pass --nan-policy omit"
    assert cli.in_flags("e.g. columns={'N': 'params', 'loss': 'val'}", flags) == "e.g. --columns N=params,loss=val"
    assert cli.in_flags("gpu='H100 SXM' and frontier=[1e21, 1e22]", flags) == "--gpu 'H100 SXM' and --frontier 1e21 1e22"
    assert cli.in_flags("the gpu is unknown; nan_policy", flags) == "the gpu is unknown; nan_policy"  # bare: no
    assert cli.in_flags("the gpu is unknown", flags, ("gpu",)) == "the --gpu is unknown"  # ... unless listed
    assert cli.in_flags("gpu must be known", flags) == "--gpu must be known"  # or opening the message
    assert cli.in_flags("use --price-per-gpu-hour", flags, ("gpu",)) == "use --price-per-gpu-hour"  # a flag stays
    assert cli.in_flags("columns: no column 'x'; gpu: other", flags) == "--columns: no column 'x'; gpu: other"


# ------------------------------------------------------------------------------------------- real processes

def _pyscale(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "pyscale", *argv], capture_output=True, text=True, timeout=120,
                          **kwargs)


def test_a_real_process_gets_one_line_and_status_2(tmp_path):
    proc = _pyscale("fit", str(tmp_path / "missing.csv"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("pyscale fit: data: ") and "missing.csv" in proc.stderr


def test_debug_shows_the_traceback_in_a_real_process(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    proc = _pyscale("--debug", "plan", "--flops", "1e21", "--law", str(tmp_path / "list.json"))
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "choose_law" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("pyscale plan: --law: ")


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_ctrl_c_in_a_real_process_exits_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "pyscale", "fit", "--synthetic", "400", "--bootstrap", "2000",
                             "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)  # well into the bootstrap
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "pyscale fit: interrupted (Ctrl-C)\n"


def test_a_damaged_store_is_named(tmp_path, capsys):
    bad = tmp_path / "s.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)  # an SQLite header on garbage
    for argv in (["bench"], ["plan", "--flops", "1e21"], ["costmodel", "fit"]):
        user_error(capsys, [*argv, "--store", str(bad)], "s.db is damaged or not a pyscale store",
                   "move this file away")


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`pyscale report | head`: stdout's pipe closes; exit 141 (as a shell shows SIGPIPE), no traceback."""
    import subprocess
    import sys

    code = ("import os, sys\nfrom pyscale import cli\nr, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"
            "try:\n    print('x' * 200000, flush=True)\nexcept BrokenPipeError:\n    sys.exit(cli.reader_gone())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 141 and out.stderr == ""
