"""A training step of the built-in model as a list of op calls, priced by a fitted cost model.

This is issue 7's model-level prediction: the step's GEMMs (forward, input-gradient and weight-gradient
for every linear layer and the LM head) and attention calls (forward and backward) are each priced by the
device profile's runtime and energy models and summed (`pyscale.costmodel.predict_step`). Elementwise
work (norms, rotary, SwiGLU, softmax of the loss, optimizer) is not in the breakdown; the comparison with
measured `gpt_step` rows (`validate_against_store`) shows how much that leaves out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from pyscale import formulas
from pyscale.costmodel.model_level import OpCall, StepPrediction, predict_step
from pyscale.plan.hardware import Hardware

_ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}


def _gemm(m: int, n: int, k: int, dtype: str, count: int, backend: str | None, op: str) -> OpCall:
    nbytes = formulas.gemm_bytes(m, n, k, _ITEMSIZE[dtype])
    return OpCall(op, dtype, float(formulas.gemm_flops(m, n, k)), float(nbytes), count, backend,
                  {"m": m, "n": n, "k": k})


def _linear_calls(m: int, n: int, k: int, dtype: str, count: int, backend: str | None, op: str) -> list[OpCall]:
    """Forward (M,N,K), input gradient (M,K,N) and weight gradient (N,K,M) of a linear layer."""
    return [_gemm(m, n, k, dtype, count, backend, op), _gemm(m, k, n, dtype, count, backend, op),
            _gemm(n, k, m, dtype, count, backend, op)]


def gpt_op_breakdown(config: Any, micro_batch: int, *, dtype: str = "bf16", gemm_op: str = "gemm",
                     gemm_backend: str | None = None, attention_fwd_op: str = "attention_fwd",
                     attention_bwd_op: str = "attention_bwd", attention_backend: str | None = None
                     ) -> list[OpCall]:
    """The GEMM and attention calls of one forward+backward of `micro_batch` sequences."""
    if dtype not in _ITEMSIZE:
        raise ValueError(f"dtype must be one of {', '.join(_ITEMSIZE)}: got {dtype!r}")
    s, d, L = config.seq_len, config.d_model, config.n_layers
    t = micro_batch * s
    calls: list[OpCall] = []
    attn_n = config.d_attn + 2 * config.d_kv
    for n, k in ((attn_n, d), (d, config.d_attn)):
        calls += _linear_calls(t, n, k, dtype, L, gemm_backend, gemm_op)
    if config.n_experts:
        d_ff = config.d_ff_expert or config.d_ff
        # tokens spread evenly over experts: the balanced case a load-balancing loss aims for
        per_expert = max(1, round(t * config.top_k / config.n_experts))
        calls += _linear_calls(t, config.n_experts, d, dtype, L, gemm_backend, gemm_op)  # router
        for n, k in ((2 * d_ff, d), (d, d_ff)):
            calls += _linear_calls(per_expert, n, k, dtype, L * config.n_experts, gemm_backend, gemm_op)
    else:
        for n, k in ((2 * config.d_ff, d), (d, config.d_ff)):
            calls += _linear_calls(t, n, k, dtype, L, gemm_backend, gemm_op)
    calls += _linear_calls(t, config.vocab_size, d, dtype, 1, gemm_backend, gemm_op)  # LM head
    feats = {"batch": micro_batch, "heads": config.n_heads, "seq_q": s, "seq_k": s, "head_dim": config.head_dim,
             "causal": True}
    for op, pass_ in ((attention_fwd_op, "fwd"), (attention_bwd_op, "bwd")):
        # causal, query-key pairs counted exactly; the bytes those of pyscale's fused kernels
        flops = formulas.attention_flops(micro_batch, s, s, config.n_heads, config.head_dim, causal=True,
                                         pass_=pass_).executed
        nbytes = formulas.attention_bytes(micro_batch, s, s, config.n_heads, config.n_kv_heads, config.head_dim,
                                          _ITEMSIZE[dtype], pass_=pass_)
        calls.append(OpCall(op, dtype, float(flops), float(nbytes), L, attention_backend, feats))
    return calls


def predict_gpt_step(profile: Any, config: Any, micro_batch: int, *, peak_flops_per_s: float | None = None,
                     **breakdown: Any) -> StepPrediction:
    """Predicted time, energy and MFU of one training step (see `gpt_op_breakdown` for `breakdown`)."""
    tokens = micro_batch * config.seq_len
    return predict_step(profile, gpt_op_breakdown(config, micro_batch, **breakdown),
                        model_flops=float(config.model_flops_per_token()) * tokens, tokens=tokens,
                        peak_flops_per_s=peak_flops_per_s)


def hardware_from_profile(profile: Any, *, micro_batch: int = 1, peak_flops_per_s: float | None = None,
                          memory_bytes: int | None = None, n_devices: int = 1, dp_efficiency: float | None = None,
                          dtype: str = "bf16", price_per_device_hour: float | None = None, pue: float | None = None,
                          **breakdown: Any) -> Hardware:
    """Throughput and power of any architecture predicted from a device profile (a fitted cost model).

    The sources take a concrete architecture (a GPTConfig): a cost model prices shapes, not a parameter count.
    """
    @functools.lru_cache(maxsize=1024)  # the planner asks for throughput and power of the same configs
    def predict(config: Any) -> StepPrediction:
        if not hasattr(config, "seq_len"):
            raise ValueError(f"config: a cost-model prediction needs a concrete architecture (a GPTConfig), "
                             f"got {type(config).__name__}")
        return predict_gpt_step(profile, config, micro_batch, peak_flops_per_s=peak_flops_per_s, dtype=dtype,
                                **breakdown)

    def flops(config: Any) -> tuple[float, str]:
        pred = predict(config)
        return pred.model_flops / pred.time_s, (f"cost model of {profile.device_name} ({profile.created}): "
                                                "step time = sum of predicted GEMM and attention calls")

    def power(config: Any) -> tuple[float | None, str]:
        pred = predict(config)
        if pred.energy_j is None:
            return None, f"cost model has no energy model: {pred.unavailable_reasons.get('energy_j')}"
        return pred.energy_j / pred.time_s, f"energy model of {profile.device_name} (energy roofline)"

    return Hardware(device_name=profile.device_name, n_devices=n_devices, dp_efficiency=dp_efficiency,
                    dp_efficiency_source="user-given" if dp_efficiency else "", peak_flops_per_s=peak_flops_per_s,
                    dtype=dtype, memory_bytes=memory_bytes, price_per_device_hour=price_per_device_hour, pue=pue,
                    flops_source=flops, power_source=power,
                    step_options={"dtype": dtype, "micro_batch": micro_batch, **breakdown})


STEP_DTYPES = ("bf16", "fp16", "fp32")  # training dtypes, most usual first


def _probe_config() -> Any:
    from pyscale.models.config import GPTConfig

    return GPTConfig(n_layers=1, d_model=2048, n_heads=16, seq_len=2048)  # one mid-size layer: a ranking probe


def _fastest(profile: Any, dtype: str, choices: dict[str, list[str]]) -> dict[str, str]:
    """The gemm and attention backends with the least predicted time of a probe step."""
    probe, best = _probe_config(), {}
    for key, backends in choices.items():
        other = {k: v[0] for k, v in choices.items() if k != key}
        times = {b: predict_gpt_step(profile, probe, 1, dtype=dtype, **other, **{key: b}).time_s for b in backends}
        best[key] = min(times, key=times.get)
    return best


def step_options(profile: Any, dtype: str | None = None) -> dict[str, str]:
    """dtype, gemm_backend and attention_backend under which `profile` prices a GPT training step.

    dtype: the one given, else the first of STEP_DTYPES with models of the ops `gpt_op_breakdown` calls (gemm,
    attention_fwd, attention_bwd). Where an op has several backends, the one predicted fastest on a probe step:
    what a tuned training run would use.
    A ValueError names what is missing.
    """
    have = profile.ops()

    def backends(op: str, dt: str) -> set[str]:
        return {b for o, d, b in have if o == op and d == dt}

    for dt in [dtype] if dtype else STEP_DTYPES:
        gemm = backends("gemm", dt)
        attention = backends("attention_fwd", dt) & backends("attention_bwd", dt)
        if gemm and attention:
            choices = {"gemm_backend": sorted(gemm), "attention_backend": sorted(attention)}
            return {"dtype": dt, **_fastest(profile, dt, choices)}
    tried = dtype or ", ".join(STEP_DTYPES)
    raise ValueError(f"dtype: the profile of {profile.device_name} cannot price a GPT step in {tried}: it needs "
                     f"gemm and attention_fwd/attention_bwd (one backend for both) models; it has "
                     f"{sorted({(o, d) for o, d, _ in have})}")


def hardware_for_profile(profile: Any, dtype: str | None = None, **fleet: Any) -> Hardware:
    """`hardware_from_profile` in the step options the profile models (`step_options`, recorded in the
    hardware's `step_options`), with the device's peak and memory from hw.py where it knows the device.

    fleet: n_devices, dp_efficiency, price_per_device_hour, pue. A ValueError names what is missing."""
    from pyscale import hw

    options = step_options(profile, dtype)
    spec = hw.lookup(profile.device_name)
    known = isinstance(spec, hw.GPUSpec)
    return hardware_from_profile(profile, peak_flops_per_s=hw.peak_flops(spec, options["dtype"]) if known
                                 else None, memory_bytes=spec.memory_bytes if known else None, **options, **fleet)


def validate_against_store(profile: Any, rows: Sequence[dict[str, Any]], **breakdown: Any) -> list[dict[str, Any]]:
    """Predicted vs measured step time of stored `gpt_step` rows (relative error per row)."""
    from pyscale.models.config import GPTConfig

    out = []
    for r in rows:
        p = r["params"]
        fields = {k: p[k] for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "seq_len",
                                    "n_experts", "top_k") if k in p}
        config = GPTConfig(**fields)
        pred = predict_gpt_step(profile, config, int(p["batch"]), **breakdown)
        out.append({"config": fields, "measured_s": r["time_s_median"], "predicted_s": pred.time_s,
                    "rel_error": pred.time_s / r["time_s_median"] - 1.0})
    return out
