"""pyscale.ops._autotune: one policy and cache for every kernel, tested on CPU with a fake timer.

A "cuda" device object needs no GPU; the GPU model, triton version and graph-capture state are
replaced by test doubles, and the timer returns a made-up time per config (never a measurement).
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from pyscale.ops import _autotune as at

CUDA = torch.device("cuda")
TIMES = {1: 3.0, 2: 1.0, 3: 2.0}  # fake milliseconds per config id: config 2 is the fastest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A kernel module of our own, a cache file in tmp, a fake GPU and a timer that records its calls."""
    (tmp_path / "fake_kernel_mod.py").write_text("# kernel v1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(at.CACHE_ENV_VAR, str(tmp_path / "tuned.json"))
    monkeypatch.delenv(at.ENV_VAR, raising=False)
    monkeypatch.setattr(at, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(at, "triton_version", lambda: "3.6.0")
    monkeypatch.setattr(at, "capturing", lambda: False)
    timed: list[int] = []

    def fake_timer(run):
        cfg = run()
        timed.append(cfg["id"])
        if cfg["id"] == 99:
            raise RuntimeError("out of shared memory")
        return TIMES[cfg["id"]]

    monkeypatch.setattr(at, "time_config", fake_timer)
    at.clear_memory()
    at._source_hashes.clear()
    yield tmp_path, timed
    at.clear_memory()
    at._source_hashes.clear()
    sys.modules.pop("fake_kernel_mod", None)


def _tunable(space=({"id": 1}, {"id": 2}, {"id": 3})) -> at.Tunable:
    return at.Tunable("fake.kernel", ("fake_kernel_mod",),
                      default=lambda key, interpret: {"id": 0} if interpret else {"id": 1},
                      space=lambda key: list(space))


def _run(cfg):
    return cfg


def _key(seq: int) -> dict:
    return {"head_dim": 64, "seq": at.bucket(seq)}


def test_bucket_is_the_next_power_of_two():
    assert [at.bucket(n) for n in (0, 1, 2, 3, 5, 1000, 1024, 1025, 4096)] == [1, 1, 2, 4, 8, 1024, 1024, 2048, 4096]


def test_policy_variable_and_context(monkeypatch):
    monkeypatch.delenv(at.ENV_VAR, raising=False)
    assert at.policy() == "cached"
    for value, policy in (("0", "off"), ("1", "on"), ("on", "on"), ("OFF", "off"), ("cached", "cached")):
        monkeypatch.setenv(at.ENV_VAR, value)
        assert at.policy() == policy
    monkeypatch.setenv(at.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="PYSCALE_AUTOTUNE must be one of off, cached, on"):
        at.policy()
    with at.autotuning("off"):  # the context wins over the variable (even a bad one)
        assert at.policy() == "off"
    with pytest.raises(ValueError, match="mode must be one of"), at.autotuning("fast"):
        pass


def test_tunes_once_per_bucket_and_persists(env):
    tmp_path, timed = env
    t = _tunable()
    with at.autotuning("on"):
        assert t.choose(CUDA, _key(1000), _run) == {"id": 2}
        assert timed == [1, 2, 3]
        assert t.choose(CUDA, _key(1023), _run) == {"id": 2}  # same bucket: no new timing
        assert timed == [1, 2, 3]
        t.choose(CUDA, _key(1025), _run)  # the next bucket is tuned on its own
        assert timed == [1, 2, 3, 1, 2, 3]
    data = json.loads((tmp_path / "tuned.json").read_text())
    assert len(data) == 2 and all(v["config"] == {"id": 2} for v in data.values())
    entry = json.loads(next(iter(data)))
    assert entry[:3] == ["fake.kernel", "NVIDIA H100 80GB HBM3", "3.6.0"] and entry[4]["seq"] in (1024, 2048)

    at.clear_memory()  # a new process: the default policy reads the cache and never times
    assert t.choose(CUDA, _key(900), _run) == {"id": 2}
    assert len(timed) == 6


def test_a_repeated_problem_skips_the_cache_lookup(env, monkeypatch):
    """A decode loop calls `choose` with one key over and over: after the first call the settled choice
    comes back without the entry key's JSON or the cache file; tuning on (a new policy) starts over."""
    _, timed = env
    t = _tunable()
    assert t.choose(CUDA, _key(64), _run) == {"id": 1}  # "cached", nothing tuned: the default

    def no_entry(*args):
        raise AssertionError("the entry key was built again")

    with monkeypatch.context() as patch:
        patch.setattr(at.Tunable, "entry", no_entry)
        assert t.choose(CUDA, _key(64), _run) == {"id": 1}
    with at.autotuning("on"):
        assert t.choose(CUDA, _key(64), _run) == {"id": 2} and len(timed) == 3
        with monkeypatch.context() as patch:
            patch.setattr(at.Tunable, "entry", no_entry)
            assert t.choose(CUDA, _key(64), _run) == {"id": 2}
    assert t.choose(CUDA, _key(64), _run) == {"id": 2}  # the tuned config, for "cached" as well
    at.clear_memory()
    assert t.choose(CUDA, _key(64), _run) == {"id": 2}  # read back from the file


def test_another_gpu_triton_or_kernel_source_never_reuses_a_config(env, monkeypatch):
    tmp_path, timed = env
    t = _tunable()
    with at.autotuning("on"):
        t.choose(CUDA, _key(512), _run)
    assert len(timed) == 3
    assert t.choose(CUDA, _key(512), _run) == {"id": 2}  # cached policy: the hit

    monkeypatch.setattr(at, "device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    assert t.choose(CUDA, _key(512), _run) == {"id": 1}  # nothing tuned on this GPU: the default
    monkeypatch.setattr(at, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(at, "triton_version", lambda: "3.8.0")
    assert t.choose(CUDA, _key(512), _run) == {"id": 1}
    monkeypatch.setattr(at, "triton_version", lambda: "3.6.0")
    (tmp_path / "fake_kernel_mod.py").write_text("# kernel v2: edited\n")
    at._source_hashes.clear()
    assert t.choose(CUDA, _key(512), _run) == {"id": 1}
    with at.autotuning("on"):
        t.choose(CUDA, _key(512), _run)  # the edited kernel is tuned again
    assert len(timed) == 6
    assert len(json.loads((tmp_path / "tuned.json").read_text())) == 2


def test_never_tunes_while_a_cuda_graph_is_captured(env, monkeypatch):
    _, timed = env
    t = _tunable()
    monkeypatch.setattr(at, "capturing", lambda: True)
    with at.autotuning("on"):
        assert t.choose(CUDA, _key(64), _run) == {"id": 1}  # the default, untimed
        assert timed == []
        monkeypatch.setattr(at, "capturing", lambda: False)
        t.choose(CUDA, _key(64), _run)
        assert timed == [1, 2, 3]
        monkeypatch.setattr(at, "capturing", lambda: True)
        at.clear_memory()
        assert t.choose(CUDA, _key(64), _run) == {"id": 2}  # a tuned config is still used in capture
        assert timed == [1, 2, 3]


def test_interpreter_and_cpu_bypass_tuning(env):
    _, timed = env
    t = _tunable()
    with at.autotuning("on"):
        assert t.choose(CUDA, _key(64), _run, interpret=True) == {"id": 0}  # the interpreter's config
        assert t.choose(torch.device("cpu"), _key(64), _run) == {"id": 1}
    assert timed == []


def test_off_ignores_the_cache_and_stale_or_failing_configs_are_skipped(env):
    _, timed = env
    with at.autotuning("on"):
        assert _tunable().choose(CUDA, _key(64), _run) == {"id": 2}
    with at.autotuning("off"):
        assert _tunable().choose(CUDA, _key(64), _run) == {"id": 1}
    at.clear_memory()
    # the space changed and no longer holds the tuned config: it is stale, the default is used
    assert _tunable(space=({"id": 3},)).choose(CUDA, _key(64), _run) == {"id": 1}
    timed.clear()
    with at.autotuning("on"):
        assert _tunable(space=({"id": 99}, {"id": 3})).choose(CUDA, _key(128), _run) == {"id": 3}
    assert timed == [1, 99, 3]  # the default first, the failing config skipped


def test_ops_register_their_kernels_and_keep_the_interpreter_configs():
    """Attention, FP8 and int8 choose through the mechanism; without tuning their configs are the kernels'
    config functions', in the interpreter and on a GPU."""
    attn = importlib.import_module("pyscale.ops.attention")
    fp8 = importlib.import_module("pyscale.ops.gemm_fp8")
    int8 = importlib.import_module("pyscale.ops.gemm_int8")
    k_attn = importlib.import_module("pyscale.kernels.attention")
    k_fp8 = importlib.import_module("pyscale.kernels.gemm_fp8")
    k_int8 = importlib.import_module("pyscale.kernels.gemm_int8")
    for cap in ((0, 0), (8, 0), (9, 0)):
        for d in (32, 64, 128, 256):
            key = attn.tuning_key(torch.bfloat16, d, True, False, False, 1000, 3000, cap)
            assert key["seq_q"] == 1024 and key["seq_k"] == 4096 and key["tma"] is False
            for interpret in (False, True):
                assert attn.FWD_TUNING.default(key, interpret) == k_attn.fwd_config(d, cap, interpret)
            assert attn.FWD_TUNING.candidates(key)[0] == k_attn.fwd_config(d, cap)
            # the backward's variant is part of its key: each variant tunes (and caches) its own configs
            for variant in ("split", "fused"):
                bkey = attn.tuning_key(torch.bfloat16, d, True, False, False, 1000, 3000, cap, variant=variant)
                for interpret in (False, True):
                    assert attn.BWD_TUNING.default(bkey, interpret) == k_attn.bwd_config(d, cap, interpret, variant)
                assert attn.BWD_TUNING.candidates(bkey)[0] == k_attn.bwd_config(d, cap, variant=variant)
                assert all((c.dq_num_warps is None) == (variant == "fused") for c in attn.BWD_TUNING.candidates(bkey))
    for m in (1, 17, 32, 33, 64, 65, 4096):
        for interpret in (False, True):
            key = fp8.tuning_key(m, 256, 512, "block", torch.bfloat16, False, (9, 0))
            assert fp8.TUNING.default(key, interpret) == k_fp8.fp8_gemm_config(m, 256, 512, interpret=interpret)
            key = int8.tuning_key(m, 256, 512, torch.bfloat16, False, (9, 0))
            assert int8.TUNING.default(key, interpret) == k_int8.int8_gemm_config(m, 256, 512, interpret=interpret)


def test_ops_never_time_in_the_interpreter(monkeypatch):
    """With tuning on, interpreted launches take the config function's choice: the timer is never called."""
    from pyscale.ops import attention, gemm_int8, quantize_int8

    def no_timing(run):
        raise AssertionError("timed a config in the interpreter")

    monkeypatch.setattr(at, "time_config", no_timing)
    q = torch.randn(1, 9, 2, 16)
    a = torch.randn(5, 32)
    qa, sa = quantize_int8(a)
    with at.autotuning("on"):
        assert attention(q, q, q, causal=True).shape == q.shape
        assert gemm_int8(qa, qa, sa, sa, out_dtype=torch.float32).shape == (5, 5)
