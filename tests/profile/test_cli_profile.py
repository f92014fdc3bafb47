"""`pyscale profile`: a user's function (-m), the built-in model path (a stand-in with the agreed interface,
a clear error when pyscale.models.gpt is missing, and the real model when it is installed), table and JSON."""

from __future__ import annotations

import json
import sys
import textwrap
import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from pyscale.cli import main
from pyscale.store import Store

FAST = ["--meter", "null", "--min-window", "0.01", "--idle", "0", "--steps", "2", "--warmup", "0"]

USER_MODULE = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(10, 8)

def step():
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "profile_user_step.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "profile_user_step:step"
    sys.modules.pop("profile_user_step", None)


def test_user_function_json_and_store(user_module, tmp_path, capsys):
    db = tmp_path / "cli.db"
    assert main(["profile", "-m", user_module, *FAST, "--store", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["summary"]
    fwd = 2 * 10 * (8 * 16 + 16 * 4)
    assert s["flops"] == fwd + 2 * 10 * 8 * 16 + 2 * 2 * 10 * 16 * 4
    assert s["model_flops"] == 3 * fwd
    assert s["energy_j"] is None and "meter='null'" in s["energy_j_unavailable_reason"]
    assert len(out["steps"]) == 2 and out["modules"] == []  # a bare function: no module to break down
    with Store(db) as store:
        ops = [r["op"] for r in store.measurements()]
        runs = store._conn.execute("SELECT command, status FROM runs").fetchall()
    assert ops.count(user_module) == 1 and len(ops) == 3
    assert [tuple(r) for r in runs] == [("profile", "ok")]


def test_user_function_table(user_module, capsys):
    assert main(["profile", "-m", user_module, *FAST, "--no-store"]) == 0
    text = capsys.readouterr().out
    assert "energy: no meter requested" in text and "nothing stored" in text


def test_bad_function_spec(capsys):
    assert main(["profile", "-m", "no_such_module_xyz:step", *FAST, "--no-store"]) == 2
    assert "cannot import 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["profile", "-m", "json", *FAST, "--no-store"]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err


def test_gpt_missing_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyscale.models.gpt", None)  # import now raises ImportError
    assert main(["profile", "--model", "gpt", "--layers", "1", *FAST, "--no-store"]) == 2
    err = capsys.readouterr().err
    assert "built-in model is not available" in err and "-m MODULE:FUNCTION" in err


# --------------------------------------------------------------------------- a stand-in with the agreed interface

@dataclass
class FakeConfig:
    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int
    n_experts: int = 0
    top_k: int = 0
    n_kv_heads: int | None = None
    d_ff: int | None = None
    vocab_size: int = 50

    def n_params(self, embeddings: bool = True) -> int:
        body = self.n_layers * self.d_model * self.d_model + self.vocab_size * self.d_model
        return body + (self.vocab_size * self.d_model if embeddings else 0)

    def model_flops_per_token(self, seq_len: int | None = None) -> int:
        return 6 * (self.n_params() - self.vocab_size * self.d_model)


class FakeGPT(nn.Module):
    def __init__(self, config, impl="auto", dtype=None, device=None):
        super().__init__()
        self.emb = nn.Embedding(config.vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(nn.Linear(config.d_model, config.d_model, bias=False, device=device, dtype=dtype)
                                    for _ in range(config.n_layers))
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False, device=device, dtype=dtype)
        self.impl_parts = {"attention": "none"}

    def forward(self, tokens):
        x = self.emb(tokens)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


def fake_train_step(model, optimizer, tokens, targets):
    loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def fake_make_batch(config, batch_size, *, device=None, generator=None):
    seq = torch.randint(0, config.vocab_size, (batch_size, config.seq_len + 1), device=device, generator=generator)
    return seq[:, :-1], seq[:, 1:]


def test_gpt_path_with_the_agreed_interface(monkeypatch, tmp_path, capsys):
    config_mod = types.SimpleNamespace(GPTConfig=FakeConfig)
    gpt_mod = types.SimpleNamespace(GPT=FakeGPT, train_step=fake_train_step, make_batch=fake_make_batch)
    monkeypatch.setitem(sys.modules, "pyscale.models.config", config_mod)
    monkeypatch.setitem(sys.modules, "pyscale.models.gpt", gpt_mod)
    db = tmp_path / "gpt.db"
    argv = ["profile", "--model", "gpt", "--layers", "2", "--d-model", "16", "--heads", "2", "--seq", "8",
            "--batch", "3", *FAST, "--store", str(db), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = FakeConfig(2, 16, 2, 8)
    tokens = 3 * 8
    s = out["summary"]
    assert s["model_flops"] == cfg.model_flops_per_token() * tokens  # from the config, not the counter
    assert s["extra"]["model_flops_source"] == "given"
    # the counter agrees here: every non-embedding parameter is a matmul weight (forward, dX, dW)
    assert s["extra"]["counted_model_flops"] == s["model_flops"]
    assert s["flops"] == 6 * (2 * 16 * 16 + 50 * 16) * tokens
    assert out["params"]["tokens_per_step"] == tokens and out["params"]["n_params"] == cfg.n_params()
    assert out["tokens_per_s"] > 0 and out["energy_j_per_token"] is None
    names = {m["extra"]["module"] for m in out["modules"]}
    assert {"FakeGPT", "FakeGPT.layers.0", "FakeGPT.head", "FakeGPT.emb"} <= names
    head = next(m for m in out["modules"] if m["name"] == "gpt_step/FakeGPT.head")
    assert head["flops"] == 6 * 16 * 50 * tokens
    with Store(db) as store:
        rows = store.measurements(op="gpt_step")
    assert len(rows) == 1 and rows[0]["params"]["n_layers"] == 2 and rows[0]["dtype"] == "float32"


def test_real_builtin_model_when_installed(capsys):
    """Once pyscale.models.gpt lands: the counter's PaLM count matches the config's 6N + 12·L·H·Q·T."""
    config = pytest.importorskip("pyscale.models.config")
    pytest.importorskip("pyscale.models.gpt")
    argv = ["profile", "--model", "gpt", "--layers", "2", "--d-model", "32", "--heads", "4", "--kv-heads", "2",
            "--seq", "16", "--batch", "2", "--vocab", "64", "--impl", "torch", *FAST, "--no-store", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = config.GPTConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=16)
    tokens = 2 * 16
    assert out["summary"]["model_flops"] == cfg.model_flops_per_token() * tokens
    counted = out["summary"]["extra"]["counted_model_flops"]
    norms = cfg.param_counts().norms  # PaLM's N includes norm gains; they run no matmul
    assert counted == (cfg.model_flops_per_token() - 6 * norms) * tokens


def test_stored_step_feeds_the_planner(tmp_path, capsys):
    """The row `pyscale profile --model gpt` stores is what pyscale.plan.measured reads."""
    config = pytest.importorskip("pyscale.models.config")
    pytest.importorskip("pyscale.models.gpt")
    measured = pytest.importorskip("pyscale.plan.measured")
    db = tmp_path / "plan.db"
    argv = ["profile", "--model", "gpt", "--layers", "1", "--d-model", "32", "--heads", "2", "--seq", "8",
            "--batch", "2", "--vocab", "64", "--impl", "torch", *FAST, "--store", str(db), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = config.GPTConfig(n_layers=1, d_model=32, n_heads=2, vocab_size=64, seq_len=8)
    with Store(db) as store:
        name, points = measured.measured_points(store)
    assert len(points) == 1 and points[0]["n_params"] == cfg.n_params()
    assert out["op"] == measured.STEP_OP
    s = out["summary"]
    assert points[0]["model_flops_per_s"] == pytest.approx(s["model_flops"] / s["time_s"])


def _fake_gpt(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyscale.models.config", types.SimpleNamespace(GPTConfig=FakeConfig))
    monkeypatch.setitem(sys.modules, "pyscale.models.gpt", types.SimpleNamespace(
        GPT=FakeGPT, train_step=fake_train_step, make_batch=fake_make_batch))


def test_the_table_is_legible_at_80_columns_and_agrees_with_itself(monkeypatch, capsys):
    """Before: 493 lines for a 2-layer model (a 150-character reason in every row), module names cut so
    that layers could not be told apart, `--steps 3` reported as 52 steps."""
    _fake_gpt(monkeypatch)
    monkeypatch.setenv("COLUMNS", "80")
    argv = ["profile", "--model", "gpt", "--layers", "2", "--d-model", "16", "--heads", "2", "--seq", "8",
            "--batch", "3", "--meter", "null", "--idle", "0", "--warmup", "0", "--steps", "3", "--no-store"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80 and len(lines) < 25, "\n".join(lines)
    text = "\n".join(lines)
    assert "median of the 3 steps asked for" in text and "52 steps" not in text
    assert text.count("no meter requested") == 1  # a reason once, as a note, not in every row
    names = [line.split()[0] for line in lines if line.startswith(" layers.")]
    assert names == ["layers.0", "layers.1"]  # never cut
    assert "emb¹" not in text and any(line.startswith(" emb ") and "¹" in line for line in lines)
    assert "¹ forward only" in text  # the embedding's backward cannot be timed by hooks: said


def test_the_table_with_energy_at_80_columns():
    """Energy and MFU columns when a meter measured them: still 80 columns, each value in full."""
    import io

    from rich.console import Console

    from pyscale.commands.profile import profile_table
    from pyscale.profile import power
    from pyscale.profile.profiler import Profiler

    class Watts(power.PowerMeter):
        name = "constant 80 W"

        def _read(self):
            t = power.base.now_s()
            return power.MeterSnapshot(t, 80.0 * t, power_w=80.0, unavailable_reasons={
                "sm_clock_mhz": "test meter", "mem_clock_mhz": "test meter", "temperature_c": "test meter",
                "throttle_reasons": "test meter"})

    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 8)
    with Profiler(device="cpu", meter=Watts(), min_window_s=0.05, idle_s=0) as prof:
        sp = prof.profile_step(lambda: model(x).sum().backward(), steps=3, warmup=0, module=model)
    out = {"summary": sp.summary.to_dict(), "modules": [m.to_dict() for m in sp.modules]}
    table, notes = profile_table(out)
    console = Console(width=80, file=io.StringIO(), record=True)
    console.print(table)
    rendered = console.export_text()
    assert max(len(line) for line in rendered.splitlines()) <= 80
    header = next(line for line in rendered.splitlines() if "module" in line).split()
    assert header[-2:] == ["share", "J"] and "…" not in rendered
    for m in sp.modules:
        assert f"{m.energy_j:.3g}" in rendered
    assert any("MFU" in n for n in notes) and sp.summary.repeats == 3


def test_a_cpu_gpt_step_records_what_it_ran_and_its_threads(monkeypatch, capsys):
    pytest.importorskip("pyscale.models.gpt")
    monkeypatch.setenv("PYSCALE_BENCH_CPU_THREADS", "1")
    argv = ["profile", "--model", "gpt", "--layers", "1", "--d-model", "32", "--heads", "2", "--seq", "8",
            "--batch", "2", "--vocab", "64", "--impl", "torch", *FAST, "--no-store", "--json"]
    assert main([*argv, "--retry-unstable", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    p = out["params"]
    assert p["optimizer"] == "for-loop" and p["cpu_threads"] == 1 and p["impl_parts"]["attention"] == "torch"
    verdict = out["summary"]["extra"]["stability"]
    # one attempt only when it was stable; a second (its verdict either way) only after an unstable first
    assert out["attempts"] in (1, 2) and (out["attempts"] == 2 or verdict["stable"])
    assert main([*argv, "--retry-unstable", "-1"]) == 2
    assert "--retry-unstable: must be a whole number >= 0" in capsys.readouterr().err
    monkeypatch.setenv("PYSCALE_BENCH_CPU_THREADS", "zero")
    assert main(argv) == 2 and "PYSCALE_BENCH_CPU_THREADS must be a whole number" in capsys.readouterr().err
    assert main(["bench", "gemm", "--quick", "--retry-unstable", "-2"]) == 2
    assert "--retry-unstable: must be a whole number >= 0" in capsys.readouterr().err
