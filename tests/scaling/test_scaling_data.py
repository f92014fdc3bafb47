from __future__ import annotations

import re

import numpy as np
import pytest

from pyscale.scaling import fit, load
from pyscale.scaling.synthetic import chinchilla_runs, write_csv


@pytest.fixture(scope="module")
def runs():
    return chinchilla_runs(40, noise=0.005, seed=2)


def test_bad_rows_are_listed(runs):
    bad = {k: np.array(v, copy=True) for k, v in runs.items()}
    bad["loss"][3] = np.nan
    bad["N"][7] = -5.0
    bad["D"][9] = 0.0
    with pytest.raises(ValueError) as exc:
        load(bad)
    msg = str(exc.value)
    assert "row 3" in msg and "row 7" in msg and "row 9" in msg and "3 bad row" in msg
    sd = load(bad, nan_policy="omit")
    assert sd.n == 37 and sd.n_dropped == 3 and [i for i, _ in sd.dropped] == [3, 7, 9]
    r = fit("chinchilla", bad, starts="quick", nan_policy="omit")
    assert r.n == 37 and r.n_dropped == 3


def test_duplicates_are_bad_rows(runs):
    dup = {k: np.concatenate([np.asarray(v), np.asarray(v)[:2]]) for k, v in runs.items()}
    with pytest.raises(ValueError, match="duplicate of row 0"):
        load(dup)
    assert load(dup, nan_policy="omit").n == 40


def test_missing_columns_and_mapping(runs):
    renamed = {"params": runs["N"], "tokens": runs["D"], "val_loss": runs["loss"]}
    with pytest.raises(ValueError, match="missing column"):
        load(renamed)
    sd = load(renamed, columns={"N": "params", "D": "tokens", "loss": "val_loss"})
    np.testing.assert_array_equal(sd.columns["N"], runs["N"])
    sd2 = load(renamed, columns={"params": "N", "tokens": "D", "val_loss": "loss"})  # either direction
    np.testing.assert_array_equal(sd2.columns["loss"], runs["loss"])
    with pytest.raises(ValueError, match="no column"):
        load(renamed, columns={"N": "nope"})
    with pytest.raises(ValueError, match="nan_policy"):
        load(runs, nan_policy="drop")
    with pytest.raises(ValueError, match="not numeric"):
        load({"N": ["a", "b"], "D": [1.0, 2.0], "loss": [1.0, 2.0]})


def test_flop_convention_derives_missing_column(runs):
    C = 6 * runs["N"] * runs["D"]
    sd = load({"N": runs["N"], "C": C, "loss": runs["loss"]})
    np.testing.assert_allclose(sd.columns["D"], runs["D"], rtol=1e-12)
    sd8 = load({"N": runs["N"], "C": C, "loss": runs["loss"]}, flops_per_param_token=8.0)
    np.testing.assert_allclose(sd8.columns["D"], runs["D"] * 6 / 8, rtol=1e-12)
    r = fit("chinchilla", {"N": runs["N"], "C": 8 * runs["N"] * runs["D"], "loss": runs["loss"]},
            starts="quick", flops_per_param_token=8.0)
    assert r.flops_convention == "C = 8*N*D"


def test_csv_and_parquet_files(tmp_path, runs):
    path = tmp_path / "runs.csv"
    write_csv(runs, str(path))
    a = fit("chinchilla", str(path), starts="quick")
    b = fit("chinchilla", runs, starts="quick")
    assert a.params == pytest.approx(b.params, rel=1e-9)
    assert a.n_runs == 40
    pd = pytest.importorskip("pandas")
    pq = tmp_path / "runs.parquet"
    try:
        pd.DataFrame(runs).to_parquet(pq)
    except ImportError:
        pytest.skip("no parquet engine")
    c = fit("chinchilla", pd.read_parquet(pq), starts="quick")
    d = fit("chinchilla", str(pq), starts="quick")
    assert c.params == pytest.approx(b.params, rel=1e-9) and d.params == pytest.approx(b.params, rel=1e-9)
    with pytest.raises(ValueError, match="no such file"):
        load(str(tmp_path / "missing.csv"))


def test_group_size_must_exceed_one():
    with pytest.raises(ValueError, match="group size"):
        load({"N": [1e9, 2e9], "D": [1e10, 2e10], "G": [1.0, 32.0], "loss": [2.5, 2.4]}, required=("N", "D", "G"))


def test_every_bad_row_is_named():
    hypothesis = pytest.importorskip("hypothesis")
    given, st = hypothesis.given, hypothesis.strategies

    base = chinchilla_runs(25, seed=3)

    @given(st.sets(st.integers(0, 24), min_size=1, max_size=6), st.sampled_from([np.nan, np.inf, -1.0, 0.0]))
    def check(rows, value):
        bad = {k: np.array(v, copy=True) for k, v in base.items()}
        bad["loss"][sorted(rows)] = value
        with pytest.raises(ValueError) as exc:
            load(bad)
        for i in rows:
            assert f"row {i}:" in str(exc.value)
        assert load(bad, nan_policy="omit").n == 25 - len(rows)

    check()


def test_step_zero_is_a_valid_checkpoint_index(runs):
    data = {**runs, "step": np.arange(40)}
    assert load(data).n == 40
    with pytest.raises(ValueError, match="step = -1"):
        load({**runs, "step": np.arange(40) - 1})


def test_csv_is_read_without_pandas_as_pandas_reads_it(tmp_path, monkeypatch):
    """CSV through the standard library (a plain install has no pandas): quoted names with commas, a
    byte-order mark, spaces and empty/NA cells read as pandas reads them."""
    path = tmp_path / "runs.csv"
    path.write_text('\ufeffrun,N, D ,loss\n"a, 1",1e8,2e9,3.1\nb,2e8, 4e9 ,\nc,4e8,8e9,NA\n"d ""x""",8e8,1.6e10,2.6\n',
                    encoding="utf-8")
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(path)
    frame.columns = [c.strip() for c in frame.columns]
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)  # pandas gone: import pandas raises
    sd = load(path, nan_policy="omit")
    assert list(sd.columns["run"]) == ["a, 1", 'd "x"'] and sd.n_dropped == 2
    kept = frame[frame["loss"].notna()]
    np.testing.assert_array_equal(sd.columns["N"], kept["N"].to_numpy(float))
    np.testing.assert_array_equal(sd.columns["D"], kept["D"].to_numpy(float))
    np.testing.assert_array_equal(sd.columns["loss"], kept["loss"].to_numpy(float))


def test_files_that_are_no_csv_are_named(tmp_path):
    cases = {"binary.csv": bytes(range(256)), "ragged.csv": b"N,D,loss\n1e8,2e9\n", "empty.csv": b"",
             "blank.csv": b"\n\n", "twice.csv": b"N,N,loss\n1,2,3\n"}
    messages = {"binary.csv": "is not a text file", "ragged.csv": "line(s) [2] have another number of cells",
                "empty.csv": "is empty", "blank.csv": "is empty", "twice.csv": "repeated column names"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(messages[name])) as info:
            load(tmp_path / name)
        assert name in str(info.value) and "expected a CSV or Parquet file of runs" in str(info.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        load(tmp_path / "folder")
