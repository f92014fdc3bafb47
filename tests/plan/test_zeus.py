"""The Zeus-style batch size and power limit optimiser (`pyscale.plan.zeus`, `pyscale energy optimize`) on a
job small enough to solve by hand.

Batch 32 reaches the target in 9, 10, 11 epochs (mean 10); batch 64 in 12, 12 and once never (2 of 3
count, mean 12); batch 128 once in three seeds (left out). Per epoch, time (s) and power (W):

            100 W        200 W        300 W
    b32   30 s, 90 W   20 s, 170 W  18 s, 240 W    ->  TTA 300 200 180 s,  ETA 27000 34000 43200 J
    b64   20 s, 95 W   14 s, 180 W  12 s, 260 W    ->  TTA 240 168 144 s,  ETA 22800 30240 37440 J

Energy-optimal b64 at 100 W; time-optimal b64 at 300 W; baseline b32 at 300 W, so the saving is
1 − 22800/43200. Cost at η = 0.5 and MaxPower 300 W (0.5·ETA + 150·TTA): b64 at 200 W and at 300 W tie at
40320, and the tie goes to less energy (200 W). The Pareto front: b64 at 300, 200 and 100 W.
"""

from __future__ import annotations

import json
import math

import pytest

from pyscale import cli
from pyscale.plan import zeus
from pyscale.plan.zeus import Run, Step
from pyscale.store import DeviceRecord, MeasurementRecord, Store

TABLE = {(32, 100.0): (30.0, 90.0), (32, 200.0): (20.0, 170.0), (32, 300.0): (18.0, 240.0),
         (64, 100.0): (20.0, 95.0), (64, 200.0): (14.0, 180.0), (64, 300.0): (12.0, 260.0),
         (128, 300.0): (8.0, 290.0)}
EPOCHS = {32: [9, 10, 11], 64: [12, 12, None], 128: [20, None, None]}


def steps(table=TABLE):
    return [Step(b, lim, t, p) for (b, lim), (t, p) in table.items()]


def runs(epochs=EPOCHS):
    return [Run(b, str(seed), e) for b, values in epochs.items() for seed, e in enumerate(values)]


def picked(choice):
    return choice.batch_size, choice.power_limit_w


def test_the_hand_solved_job():
    r = zeus.optimize(steps(), runs(), baseline_batch=32)
    assert picked(r.energy_optimal) == (64, 100.0) and r.energy_optimal.energy_j == pytest.approx(22800)
    assert r.energy_optimal.time_s == pytest.approx(240)
    assert picked(r.time_optimal) == (64, 300.0)
    assert picked(r.cost_optimal) == (64, 200.0)  # ties 300 W on cost; less energy wins
    assert picked(r.baseline) == (32, 300.0) and r.baseline.energy_j == pytest.approx(43200)
    assert r.energy_saving == pytest.approx(1 - 22800 / 43200)
    assert [picked(c) for c in r.pareto_front] == [(64, 300.0), (64, 200.0), (64, 100.0)]
    assert any("batch size 128" in n and "1 of 3 seeds" in n for n in r.notes)
    d = r.to_dict()
    assert list(d) == ["energy_optimal", "time_optimal", "cost_optimal", "baseline", "energy_saving", "pareto_front"]
    assert set(d["cost_optimal"]) == {"batch_size", "power_limit_w", "energy_j", "time_s"}


def test_eta_and_max_power_move_the_cost_optimum():
    assert picked(zeus.optimize(steps(), runs(), baseline_batch=32, eta=1.0).cost_optimal) == (64, 100.0)
    assert picked(zeus.optimize(steps(), runs(), baseline_batch=32, eta=0.0).cost_optimal) == (64, 300.0)
    # pricing a second at 100 W: 0.5·22800 + 50·240 = 23400 beats 0.5·30240 + 50·168 = 23520
    r = zeus.optimize(steps(), runs(), baseline_batch=32, max_power_w=100.0)
    assert picked(r.cost_optimal) == (64, 100.0) and r.max_power_w == 100.0


def test_a_batch_measured_at_some_limits_is_used_at_those_and_said():
    table = {k: v for k, v in TABLE.items() if k != (64, 100.0)}
    r = zeus.optimize(steps(table), runs(), baseline_batch=32)
    assert picked(r.energy_optimal) == (32, 100.0)  # 27000 J: b64's best left is 30240 J at 200 W
    assert any(n.startswith("batch size 64: measured at 200 W, 300 W only") and "used at those" in n for n in r.notes)


def test_batches_without_runs_or_steps_are_left_out_and_said():
    r = zeus.optimize(steps(), runs({**EPOCHS, 16: [5, 5]}), baseline_batch=32)
    assert any("batch size 16: runs but no step measurements" in n for n in r.notes)
    r = zeus.optimize(steps({**TABLE, (8, 300.0): (50.0, 200.0)}), runs(), baseline_batch=32)
    assert any("batch size 8: step measurements but no runs" in n for n in r.notes)


@pytest.mark.parametrize(("change", "fragment"), [
    (dict(eta=1.5), "eta: must be in [0, 1]"),
    (dict(eta=math.nan), "eta: must be in [0, 1]"),
    (dict(max_power_w=0.0), "max_power_w: must be a finite number > 0"),
    (dict(baseline_batch=128), "baseline_batch: batch size 128 has no runs that reached the target"),
    (dict(baseline_batch=7), "baseline_batch: batch size 7"),
    (dict(steps=[s for s in steps() if (s.batch_size, s.power_limit_w) != (32, 300.0)]),
     "baseline_batch: batch size 32 is not measured at the largest power limit, 300 W"),
    (dict(steps=[*steps(), Step(32, 100.0, 1.0, 1.0)]), "steps: duplicate (batch_size, power_limit_w) row (32, 100.0)"),
    (dict(runs=[*runs(), Run(32, "0", 3.0)]), "runs: duplicate (batch_size, seed) row (32, '0')"),
    (dict(runs=runs({32: [None, None], 64: [1, None, None]})), "runs: no batch size with step measurements reached"),
    (dict(steps=[]), "steps: no step measurements"),
    (dict(runs=[]), "runs: no training runs"),
])
def test_data_it_cannot_use_is_named(change, fragment):
    args = {"steps": steps(), "runs": runs(), "baseline_batch": 32, **change}
    with pytest.raises(ValueError) as exc:
        zeus.optimize(args.pop("steps"), args.pop("runs"), **args)
    assert fragment in str(exc.value)


def write(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


STEPS_HEADER = "batch_size,power_limit_w,time_s,avg_power_w"


def steps_csv(tmp_path, table=TABLE):
    return write(tmp_path / "steps.csv", STEPS_HEADER, [f"{b},{lim:g},{t},{p}" for (b, lim), (t, p) in table.items()])


def runs_csv(tmp_path, epochs=EPOCHS):
    return write(tmp_path / "runs.csv", "batch_size,seed,epochs_to_target",
                 [f"{b},{s},{'' if e is None else e}" for b, v in epochs.items() for s, e in enumerate(v)])


def test_csv_files_read_back_the_same_job(tmp_path):
    assert sorted(zeus.read_steps_csv(steps_csv(tmp_path)), key=picked) == sorted(steps(), key=picked)
    assert zeus.read_runs_csv(runs_csv(tmp_path)) == runs()


@pytest.mark.parametrize(("rows", "fragment"), [
    (("batch_size,time_s,avg_power_w", "32,1,1"), "lacks column(s) power_limit_w (it has: batch_size, time_s"),
    ((STEPS_HEADER,), "has a header but no rows"),
    ((STEPS_HEADER, "32,300,0,100"), "time_s: must be a finite number > 0, got '0' at steps.csv line 2"),
    ((STEPS_HEADER, "32,300,nan,100"), "time_s: must be a finite number > 0, got 'nan'"),
    ((STEPS_HEADER, "32,300,1,-5"), "avg_power_w: must be a finite number > 0"),
    ((STEPS_HEADER, "32,0,1,5"), "power_limit_w: must be a finite number > 0"),
    ((STEPS_HEADER, "32,300,fast,5"), "time_s: 'fast' at steps.csv line 2 is not a number"),
    ((STEPS_HEADER, "32.5,300,1,5"), "batch_size: must be a whole number >= 1, got '32.5'"),
])
def test_bad_step_files_are_named_by_column_and_line(tmp_path, rows, fragment):
    with pytest.raises(ValueError) as exc:
        zeus.read_steps_csv(write(tmp_path / "steps.csv", rows[0], list(rows[1:])))
    assert fragment in str(exc.value)


def test_epochs_to_target_must_be_positive_or_empty(tmp_path):
    with pytest.raises(ValueError, match="epochs_to_target: must be a finite number > 0, got '0'"):
        zeus.read_runs_csv(write(tmp_path / "runs.csv", "batch_size,seed,epochs_to_target", ["32,0,0"]))


def _store_with_steps(path, points, *, extra_model=False):
    """A store of `pyscale profile --model gpt` rows: (batch, limit, seconds per step, watts)."""
    device = DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="GPU-test")
    with Store(path) as store:
        device_id = store.register_device(device)
        for batch, limit, step_s, watts in points:
            params = {"n_layers": 2, "d_model": 64 * (2 if extra_model and batch == 64 else 1), "batch": batch,
                      "tokens_per_step": batch * 128, "n_params": 1000}
            store.record(MeasurementRecord(op="gpt_step", backend="pyscale", params=params, dtype="bf16",
                                           time_s=step_s, avg_power_w=watts, power_limit_w=limit).explain_missing(
                "not measured in this test"), device_id=device_id)
    return path


def test_store_rows_become_time_per_unit_of_work(tmp_path):
    # 6400 samples per epoch: batch 32 takes 200 steps, batch 64 takes 100
    points = [(b, lim, t * b / 6400, p) for (b, lim), (t, p) in TABLE.items() if b != 128]
    db = _store_with_steps(tmp_path / "s.db", points)
    with Store(db, read_only=True) as store:
        got = zeus.steps_from_store(store, epoch_samples=6400)
    want = {k: v for k, v in TABLE.items() if k[0] != 128}
    assert {picked(s): pytest.approx((s.time_s, s.avg_power_w)) for s in got} == want
    r = zeus.optimize(got, runs(), baseline_batch=32)
    assert picked(r.energy_optimal) == (64, 100.0)


def test_store_rows_of_two_models_or_no_limits_are_refused(tmp_path):
    mixed = _store_with_steps(tmp_path / "m.db", [(32, 300.0, 0.1, 200.0), (64, 300.0, 0.1, 200.0)], extra_model=True)
    with Store(mixed, read_only=True) as store, pytest.raises(ValueError, match="store: gpt_step rows of 2 different"):
        zeus.steps_from_store(store, epoch_samples=100)
    empty = _store_with_steps(tmp_path / "e.db", [(32, None, 0.1, 200.0)])
    with Store(empty, read_only=True) as store, pytest.raises(ValueError, match="with a power limit"):
        zeus.steps_from_store(store, epoch_samples=100)


# ------------------------------------------------------------------------------------------- the command


def user_error(capsys, argv, fragment):
    """`pyscale argv` fails with one line naming `fragment` and status 2 (the CLI's rule for a user's mistake)."""
    rc = cli.main(argv)
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (rc, err)
    assert err.startswith("pyscale energy optimize: ") and fragment in err, err


def test_cli_prints_the_choices_at_80_columns_and_json_exactly(tmp_path, capsys):
    argv = ["energy", "optimize", "--steps", str(steps_csv(tmp_path)), "--runs", str(runs_csv(tmp_path)),
            "--baseline-batch", "32"]
    assert cli.main(argv) == 0
    out, _ = capsys.readouterr()
    assert "energy-optimal" in out and "47.2%" in out and "note: batch size 128" in out
    assert max(map(len, out.splitlines())) <= 80, out
    assert cli.main([*argv, "--json", "--eta", "1"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert list(d) == ["energy_optimal", "time_optimal", "cost_optimal", "baseline", "energy_saving", "pareto_front"]
    assert (d["cost_optimal"]["batch_size"], d["cost_optimal"]["power_limit_w"]) == (64, 100.0)
    assert "note: batch size 128" in err


def test_cli_reads_the_store(tmp_path, capsys):
    points = [(b, lim, t * b / 6400, p) for (b, lim), (t, p) in TABLE.items()]
    db = _store_with_steps(tmp_path / "s.db", points)
    argv = ["energy", "optimize", "--store", str(db), "--runs", str(runs_csv(tmp_path)), "--baseline-batch", "32",
            "--json"]
    assert cli.main([*argv, "--epoch-samples", "6400"]) == 0
    assert json.loads(capsys.readouterr().out)["energy_optimal"]["power_limit_w"] == 100.0


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--eta", "-0.1"], "--eta: must be in [0, 1]"),
    (["--max-power-w", "0"], "--max-power-w: must be a number > 0"),
    (["--baseline-batch", "128"], "--baseline-batch: batch size 128 has no runs"),
    (["--store", "STORE"], "--steps STEPS.csv or --store PATH (one of the two)"),
    (["--epoch-samples", "10"], "--epoch-samples goes with --store"),
])
def test_cli_errors_are_one_line_naming_the_flag(tmp_path, capsys, extra, fragment):
    db = _store_with_steps(tmp_path / "s.db", [(32, 300.0, 0.1, 200.0)])
    argv = ["energy", "optimize", "--steps", str(steps_csv(tmp_path)), "--runs", str(runs_csv(tmp_path)),
            "--baseline-batch", "32"]
    user_error(capsys, [*argv, *[str(db) if e == "STORE" else e for e in extra]], fragment)


def test_cli_store_needs_epoch_samples(tmp_path, capsys):
    db = _store_with_steps(tmp_path / "s.db", [(32, 300.0, 0.1, 200.0)])
    user_error(capsys, ["energy", "optimize", "--store", str(db), "--runs", str(runs_csv(tmp_path)),
                        "--baseline-batch", "32"], "--store needs --epoch-samples N")


def test_the_readme_example_runs(tmp_path, capsys):
    """README's two example files, side by side in one text block, with its command."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## Energy: batch size and power limit", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    left, right = zip(*(line.split() for line in block.splitlines()))
    write(tmp_path / "steps.csv", left[0], list(left[1:]))
    write(tmp_path / "to_target.csv", right[0], list(right[1:]))
    assert cli.main(["energy", "optimize", "--steps", str(tmp_path / "steps.csv"), "--runs",
                     str(tmp_path / "to_target.csv"), "--baseline-batch", "256"]) == 0
    assert "energy-optimal     256      200" in capsys.readouterr().out
