"""The `step` benchmark family (pyscale.benchmark.cases.step): what a training step of the built-in GPT spends
outside GEMMs and attention, run with the model's own code, priced by pyscale.formulas."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pyscale import benchmark, formulas  # noqa: E402
from pyscale.benchmark import runner  # noqa: E402
from pyscale.benchmark.cases import cold_copies, round_robin, step  # noqa: E402
from pyscale.benchmark.shapes import FAMILIES, STEP_OPS  # noqa: E402


def test_the_family_covers_every_step_op_with_the_devices_implementations():
    assert "step" in FAMILIES
    cases = benchmark.plan_cases(["step"], "quick", device="cpu")
    assert {c.op for c in cases} == set(STEP_OPS)
    assert {c.impl for c in cases if c.op == "rotary"} == {"pyscale", "torch"}
    adamw = [c for c in cases if c.op == "adamw"]
    # on a CPU torch steps one tensor at a time: a case is one tensor
    assert {c.impl for c in adamw} == {"for-loop"} and all(c.params_dict["tensors"] == 1 for c in adamw)
    assert all(c.dtype == "fp32" for c in cases)


def test_one_case_of_each_op_and_implementation_runs_with_the_formulas_counts():
    seen = {}
    for c in benchmark.plan_cases(["step"], "quick", device="cpu"):
        seen.setdefault((c.op, c.impl), c)
    for (op, impl), case in seen.items():
        _, rec = runner.run_case(case, device="cpu", min_time_s=0.002)
        assert rec.status == "ok", (op, impl, rec.error)
        assert rec.time_s > 0 and rec.flops > 0 and rec.bytes > 0
        assert rec.extra["cpu_time_s_median"] > 0 and "stable" in rec.extra
    p = seen[("cross_entropy", "torch")].params_dict
    _, rec = runner.run_case(seen[("cross_entropy", "torch")], device="cpu", min_time_s=0.002)
    assert rec.flops == formulas.cross_entropy_flops(p["rows"], p["vocab"])
    assert rec.bytes == formulas.cross_entropy_bytes(p["rows"], p["vocab"], 4)


def test_adamw_keeps_the_zero_fraction_of_its_gradients_and_moments():
    gen = torch.Generator().manual_seed(0)
    step_fn = step._adamw("for-loop", {"elements": 1000, "tensors": 4, "matrix": True, "zero_fraction": 0.3},
                          "cpu", torch.float32, gen)
    optimizer = step_fn.__self__
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert [int((p.grad == 0).sum()) for p in params] == [250, 50, 0, 0]  # the first 30 % of the elements
    step_fn()
    state = optimizer.state[params[0]]
    assert int((state["exp_avg_sq"] == 0).sum()) == 250 and params[0].dim() == 2  # decayed like a matrix
    assert optimizer.param_groups[0]["weight_decay"] == 0.1


def test_attention_backward_rotates_copies_that_each_keep_their_own_graph(monkeypatch):
    from pyscale.benchmark.cases import attention

    monkeypatch.setattr(runner, "cpu_last_level_cache_bytes", lambda: 1 << 20)  # copies past 2 MiB
    case = runner.Case.make("attention", "attention_bwd", "sdpa", {"batch": 1, "seq_q": 32, "seq_k": 32, "heads": 2,
                                                                    "heads_kv": 2, "head_dim": 16, "causal": True},
                            "fp32", "quick")
    w = attention.workload(case, "cpu")
    assert w.args == () and w.notes["rotating_copies"] > 1 and w.notes["cold_l2"]
    copies = w.notes["rotating_copies"]
    grads = [w.fn() for _ in range(copies + 1)]  # each call runs the next copy's backward: copy 0 comes back
    assert all(len(g) == 3 and all(torch.isfinite(x).all() for x in g) for g in grads)
    assert torch.equal(grads[0][0], grads[copies][0]) and not torch.equal(grads[0][0], grads[1][0])


def test_cold_copies_exceed_twice_the_cache_and_round_robin_cycles(monkeypatch):
    monkeypatch.setattr(runner, "cpu_last_level_cache_bytes", lambda: 1000)
    assert cold_copies(300, "cpu") == 7 and cold_copies(5000, "cpu") == 1 and cold_copies(1, "cpu") == 64
    monkeypatch.setattr(runner, "cpu_last_level_cache_bytes", lambda: None)
    assert cold_copies(300, "cpu") == 1
    calls = []
    fn = round_robin([lambda i=i: calls.append(i) for i in range(3)])
    for _ in range(7):
        fn()
    assert calls == [0, 1, 2, 0, 1, 2, 0]
