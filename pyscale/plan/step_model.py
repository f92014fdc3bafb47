"""A training step of the built-in model as a list of op calls, priced by a fitted cost model.

The step is what `pyscale.models.gpt.train_step` runs, op by op (`gpt_op_breakdown`):
* GEMMs: the forward, input-gradient and weight-gradient GEMM of every weight matrix the model has
  (`GPTConfig.matrices`: q, k, v, o, gate, up, down per layer, the LM head);
* attention: forward and backward per layer;
* the rest (`STEP_OPS`, measured by the benchmark's `step` family): 2L+1 RMSNorms, L SwiGLU activations, L
  rotary embeddings of q and k, 7L elementwise adds of the residual stream's width (2 residual adds forward;
  backward, autograd sums the gradients of each forked tensor: the residual stream twice, the input of q/k/v
  twice, the input of gate/up once), the cross-entropy over the vocabulary, the embedding gather and its
  dense gradient, and the AdamW step: one call per tensor for torch's one-tensor-at-a-time implementation
  (its cost per element depends on each tensor's size against the caches), one per parameter group (the
  matrices, decayed; the norm weights) for the multi-tensor ones.
Each call is priced with the implementation the step ran (`implementation_of` reads it from a stored step)
and summed (`pyscale.costmodel.predict_step`); communication is an explicit, user-given time per step (0
on one device). Not modelled: the MoE routing and its auxiliary losses beyond the router and expert GEMMs,
host gaps, data loading.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from pyscale import formulas
from pyscale.costmodel.model_level import OpCall, StepPrediction, predict_step
from pyscale.plan.hardware import Hardware

_ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}
STEP_OPS = ("rmsnorm", "swiglu", "rotary", "add", "cross_entropy", "embedding", "adamw")  # the benchmark's step family
ADDS_PER_LAYER = 7  # residual adds (2) and gradient sums of forked tensors (5), each of the residual width
ONE_TENSOR_AT_A_TIME = "for-loop"  # the AdamW implementation that runs one call per tensor


def _gemm(m: int, n: int, k: int, dtype: str, count: int, backend: str | None, op: str) -> OpCall:
    nbytes = formulas.gemm_bytes(m, n, k, _ITEMSIZE[dtype])
    return OpCall(op, dtype, float(formulas.gemm_flops(m, n, k)), float(nbytes), count, backend,
                  {"m": m, "n": n, "k": k})


def _linear_calls(m: int, n: int, k: int, dtype: str, count: int, backend: str | None, op: str) -> list[OpCall]:
    """Forward (M,N,K), input gradient (M,K,N) and weight gradient (N,K,M) of a linear layer."""
    return [_gemm(m, n, k, dtype, count, backend, op), _gemm(m, k, n, dtype, count, backend, op),
            _gemm(n, k, m, dtype, count, backend, op)]


def _rest_of_step(config: Any, micro_batch: int, dtype: str, rotary_backend: str | None,
                  optimizer_backend: str | None, repeated_batch: bool) -> list[OpCall]:
    """The step ops outside GEMMs and attention (module docstring), priced by the benchmark's step family."""
    s, d, L, V = config.seq_len, config.d_model, config.n_layers, config.vocab_size
    t, e = micro_batch * s, _ITEMSIZE[dtype]

    def call(op: str, flops: int, nbytes: int, count: int, features: dict[str, Any],
             backend: str | None = "torch") -> OpCall:
        return OpCall(op, dtype, float(flops), float(nbytes), count, backend, features)

    h, hkv, hd = config.n_heads, config.n_kv_heads, config.head_dim
    if config.n_experts:  # balanced routing, as for the expert GEMMs
        rows, width, acts = max(1, round(t * config.top_k / config.n_experts)), config.d_ff_expert, L * config.n_experts
    else:
        rows, width, acts = t, config.d_ff, L
    calls = [
        call("rmsnorm", formulas.rmsnorm_flops(t, d), formulas.rmsnorm_bytes(t, d, e), 2 * L + 1, {"rows": t, "dim": d}),
        call("swiglu", formulas.swiglu_flops(rows, width), formulas.swiglu_bytes(rows, width, e), acts,
             {"rows": rows, "width": width}),
        call("rotary", formulas.rotary_flops(micro_batch, s, h, hkv, hd),
             formulas.rotary_bytes(micro_batch, s, h, hkv, hd, e), L,
             {"batch": micro_batch, "seq": s, "heads": h, "heads_kv": hkv, "head_dim": hd}, rotary_backend),
        call("add", formulas.add_flops(t * d), formulas.add_bytes(t * d, e), ADDS_PER_LAYER * L, {"rows": t, "dim": d}),
        call("cross_entropy", formulas.cross_entropy_flops(t, V), formulas.cross_entropy_bytes(t, V, e), 1,
             {"rows": t, "vocab": V}),
        call("embedding", formulas.embedding_flops(t, d), formulas.embedding_bytes(t, V, d, e), 1,
             {"rows": t, "vocab": V, "dim": d}),
    ]
    matrices = [m.out_features * m.in_features for m in config.matrices() for _ in range(m.count)]
    # a repeated batch never touches most embedding rows: their gradients and AdamW moments stay zero
    untouched = round((V - formulas.embedding_rows_touched(t, V)) * d) if repeated_batch else 0

    def adamw(n: int, tensors: int, matrix: bool, zero: int, count: int) -> OpCall:
        return call("adamw", formulas.adamw_flops(n), formulas.adamw_bytes(n, e), count,
                    {"elements": n, "tensors": tensors, "matrix": matrix, "zero_fraction": round(zero / n, 4)},
                    optimizer_backend)

    vectors = [v.size for v in config.vectors() for _ in range(v.count)]
    if optimizer_backend == ONE_TENSOR_AT_A_TIME:
        calls.append(adamw(matrices[0], 1, True, untouched, 1))  # the embedding table, matrices()[0]
        for sizes, matrix in ((matrices[1:], True), (vectors, False)):
            calls += [adamw(n, 1, matrix, 0, sizes.count(n)) for n in sorted(set(sizes))]
    else:
        calls += [adamw(sum(matrices), len(matrices), True, untouched, 1),
                  adamw(sum(vectors), len(vectors), False, 0, 1)]
    return calls


def gpt_op_breakdown(config: Any, micro_batch: int, *, dtype: str = "bf16", gemm_op: str = "gemm",
                     gemm_backend: str | None = None, attention_fwd_op: str = "attention_fwd",
                     attention_bwd_op: str = "attention_bwd", attention_backend: str | None = None,
                     rotary_backend: str | None = None, optimizer_backend: str | None = None,
                     step_ops: bool | None = True, repeated_batch: bool = False) -> list[OpCall]:
    """The op calls of one forward+backward and optimizer step of `micro_batch` sequences (module docstring).

    Backends name the implementation each op ran (None: the profile's only one): GEMMs (`torch.mm` for
    nn.Linear), attention (`pyscale`, or `sdpa` as torch dispatches it), rotary (`pyscale` or `torch`, the
    attention module's), the optimizer (`for-loop`, `foreach` or `fused`). `step_ops=False` leaves out the
    ops outside GEMMs and attention. `repeated_batch`: every step trains on the same batch (a profile does),
    so the embedding rows it never touches keep zero AdamW moments; a training run's batches change."""
    if dtype not in _ITEMSIZE:
        raise ValueError(f"dtype must be one of {', '.join(_ITEMSIZE)}: got {dtype!r}")
    s, L = config.seq_len, config.n_layers
    t = micro_batch * s
    calls: list[OpCall] = []
    for matrix in config.matrices():
        if matrix.name == "embed.weight":
            continue  # a gather (step op "embedding"), not a GEMM
        rows = t
        if matrix.name.startswith("mlp.experts."):  # tokens spread evenly over experts: the balanced case a
            rows = max(1, round(t * config.top_k / config.n_experts))  # load-balancing loss aims for
        calls += _linear_calls(rows, matrix.out_features, matrix.in_features, dtype, matrix.count, gemm_backend,
                               gemm_op)
    feats = {"batch": micro_batch, "heads": config.n_heads, "heads_kv": config.n_kv_heads, "seq_q": s, "seq_k": s,
             "head_dim": config.head_dim, "causal": True}
    for op, pass_ in ((attention_fwd_op, "fwd"), (attention_bwd_op, "bwd")):
        # causal, query-key pairs counted exactly; the bytes those of pyscale's fused kernels
        flops = formulas.attention_flops(micro_batch, s, s, config.n_heads, config.head_dim, causal=True,
                                         pass_=pass_).executed
        nbytes = formulas.attention_bytes(micro_batch, s, s, config.n_heads, config.n_kv_heads, config.head_dim,
                                          _ITEMSIZE[dtype], pass_=pass_)
        calls.append(OpCall(op, dtype, float(flops), float(nbytes), L, attention_backend, feats))
    if step_ops or step_ops is None:
        calls += _rest_of_step(config, micro_batch, dtype, rotary_backend, optimizer_backend, repeated_batch)
    return calls


def missing_step_ops(profile: Any, dtype: str) -> list[str]:
    """The step ops (`STEP_OPS`) the profile has no model of in `dtype`."""
    have = {o for o, d, _ in profile.ops() if d == dtype}
    return [op for op in STEP_OPS if op not in have]


def predict_gpt_step(profile: Any, config: Any, micro_batch: int, *, peak_flops_per_s: float | None = None,
                     communication_s: float = 0.0, **breakdown: Any) -> StepPrediction:
    """Predicted time, energy and MFU of one training step (see `gpt_op_breakdown` for `breakdown`).

    `step_ops=None` (the default here) prices the ops outside GEMMs and attention when the profile models them
    all and otherwise leaves them out, saying so in the prediction's notes; True requires them.
    `communication_s`: the user-given seconds of communication per step that no op overlaps (0 on one device).
    """
    tokens = micro_batch * config.seq_len
    step_ops = breakdown.pop("step_ops", None)
    note = None
    if step_ops is None:
        missing = missing_step_ops(profile, breakdown.get("dtype", "bf16"))
        step_ops = not missing
        if missing:
            note = (f"the profile has no model of {', '.join(missing)}: the step time counts GEMMs and attention "
                    "only, and leaves out the rest of the step (norms, activations, loss, embedding, optimizer)")
    pred = predict_step(profile, gpt_op_breakdown(config, micro_batch, step_ops=step_ops, **breakdown),
                        model_flops=float(config.model_flops_per_token()) * tokens, tokens=tokens,
                        peak_flops_per_s=peak_flops_per_s, communication_s=communication_s)
    if note:
        pred.notes.append(note)
    return pred


def hardware_from_profile(profile: Any, *, micro_batch: int = 1, peak_flops_per_s: float | None = None,
                          memory_bytes: int | None = None, n_devices: int = 1, dp_efficiency: float | None = None,
                          dtype: str = "bf16", price_per_device_hour: float | None = None, pue: float | None = None,
                          communication_s: float = 0.0, **breakdown: Any) -> Hardware:
    """Throughput and power of any architecture predicted from a device profile (a fitted cost model).

    The sources take a concrete architecture (a GPTConfig): a cost model prices shapes, not a parameter count.
    `communication_s`: user-given communication seconds per step (`predict_gpt_step`).
    Throughput and power are those at the largest measured power limit; where the profile models every op of
    the step across power limits, `power_limit_source` gives the step's time and energy at each measured limit
    relative to that.
    """
    @functools.lru_cache(maxsize=1024)  # the planner asks for throughput and power of the same configs
    def predict(config: Any) -> StepPrediction:
        if not hasattr(config, "seq_len"):
            raise ValueError(f"config: a cost-model prediction needs a concrete architecture (a GPTConfig), "
                             f"got {type(config).__name__}")
        return predict_gpt_step(profile, config, micro_batch, peak_flops_per_s=peak_flops_per_s, dtype=dtype,
                                communication_s=communication_s, **breakdown)

    def at_limits(config: Any) -> tuple[list[dict[str, Any]] | None, str]:
        base = predict(config)
        if not base.at_power_limits:  # the reason matters only where the profile has a power-limit model at all
            modelled = any(getattr(m, "power_limits", None) is not None for m in getattr(profile, "models", ()))
            return None, str(base.power_limits_reason) if modelled else ""
        options = [{"power_limit_w": at["power_limit_w"], "time_ratio": at["time_s"] / base.time_s,
                    "energy_ratio": None if at["energy_j"] is None or base.energy_j is None
                    else at["energy_j"] / base.energy_j} for at in base.at_power_limits]
        listed = ", ".join(f"{o['power_limit_w']:g}" for o in options)
        return options, f"power-limit model of {profile.device_name}: every op of the step measured at {listed} W"

    def flops(config: Any) -> tuple[float, str]:
        pred = predict(config)
        what = ("the rest of the step left out: " + pred.notes[-1].split(":")[0] if pred.notes and
                "leaves out" in pred.notes[-1] else "GEMMs, attention and the rest of the step (norms, activations, "
                "rotary, adds, loss, embedding, optimizer)")
        comm = f", plus {communication_s:g} s of user-given communication" if communication_s else ""
        return pred.model_flops / pred.time_s, (f"cost model of {profile.device_name} ({profile.created}): "
                                                f"step time = sum of predicted op calls ({what}){comm}")

    def power(config: Any) -> tuple[float | None, str]:
        pred = predict(config)
        if pred.energy_j is None:
            return None, f"cost model has no energy model: {pred.unavailable_reasons.get('energy_j')}"
        return pred.energy_j / pred.time_s, f"energy model of {profile.device_name} (energy roofline)"

    return Hardware(device_name=profile.device_name, n_devices=n_devices, dp_efficiency=dp_efficiency,
                    dp_efficiency_source="user-given" if dp_efficiency else "", peak_flops_per_s=peak_flops_per_s,
                    dtype=dtype, memory_bytes=memory_bytes, price_per_device_hour=price_per_device_hour, pue=pue,
                    flops_source=flops, power_source=power, power_limit_source=at_limits,
                    time_error=validation_summary(profile),
                    step_options={"dtype": dtype, "micro_batch": micro_batch, **breakdown})


STEP_DTYPES = ("bf16", "fp16", "fp32")  # training dtypes, most usual first


def _probe_config() -> Any:
    from pyscale.models.config import GPTConfig

    return GPTConfig(n_layers=1, d_model=2048, n_heads=16, seq_len=2048)  # one mid-size layer: a ranking probe


def _fastest(profile: Any, dtype: str, choices: dict[str, list[str]], fixed: dict[str, Any]) -> dict[str, str]:
    """The backends with the least predicted time of a probe step, one choice at a time."""
    probe, best = _probe_config(), {}
    for key, backends in choices.items():
        other = {k: v[0] for k, v in choices.items() if k != key}
        times = {b: predict_gpt_step(profile, probe, 1, dtype=dtype, **fixed, **other, **{key: b}).time_s
                 for b in backends}
        best[key] = min(times, key=times.get)
    return best


def step_options(profile: Any, dtype: str | None = None) -> dict[str, Any]:
    """dtype and backends under which `profile` prices a GPT training step of any architecture (planning).

    dtype: the one given, else the first of STEP_DTYPES with models of gemm, attention_fwd and attention_bwd.
    Where an op has several backends, the one predicted fastest on a probe step: what a tuned training run
    would use. When the profile models every step op (`STEP_OPS`) in that dtype, the options also name the
    rotary backend that goes with the attention chosen and the optimizer's, with `step_ops=True`; otherwise
    they leave the step ops out (and the prediction says so). A ValueError names what is missing.
    """
    have = profile.ops()

    def backends(op: str, dt: str) -> set[str]:
        return {b for o, d, b in have if o == op and d == dt}

    for dt in [dtype] if dtype else STEP_DTYPES:
        gemm = backends("gemm", dt)
        attention = backends("attention_fwd", dt) & backends("attention_bwd", dt)
        if not (gemm and attention):
            continue
        options: dict[str, Any] = {"dtype": dt, **_fastest(profile, dt, {"gemm_backend": sorted(gemm),
                                                                          "attention_backend": sorted(attention)},
                                                           {"step_ops": False})}
        if not missing_step_ops(profile, dt):
            rotary = backends("rotary", dt)
            module = "pyscale" if options["attention_backend"] == "pyscale" else "torch"
            options["rotary_backend"] = module if module in rotary else sorted(rotary)[0]
            fixed = {"step_ops": True, "rotary_backend": options["rotary_backend"], **options}
            fixed.pop("dtype")
            options.update(_fastest(profile, dt, {"optimizer_backend": sorted(backends("adamw", dt))}, fixed))
            options["step_ops"] = True
        return options
    tried = dtype or ", ".join(STEP_DTYPES)
    raise ValueError(f"dtype: the profile of {profile.device_name} cannot price a GPT step in {tried}: it needs "
                     f"gemm and attention_fwd/attention_bwd (one backend for both) models; it has "
                     f"{sorted({(o, d) for o, d, _ in have})}")


def hardware_for_profile(profile: Any, dtype: str | None = None, **fleet: Any) -> Hardware:
    """`hardware_from_profile` in the step options the profile models (`step_options`, recorded in the
    hardware's `step_options`), with the device's peak and memory from hw.py where it knows the device.

    fleet: n_devices, dp_efficiency, price_per_device_hour, pue, communication_s. A ValueError names what is
    missing."""
    from pyscale import hw

    options = step_options(profile, dtype)
    spec = hw.lookup(profile.device_name)
    known = isinstance(spec, hw.GPUSpec)
    return hardware_from_profile(profile, peak_flops_per_s=hw.peak_flops(spec, options["dtype"]) if known
                                 else None, memory_bytes=spec.memory_bytes if known else None, **options, **fleet)


# ---------------------------------------------------------------------------------------- validation

_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "fp32": "fp32", "bf16": "bf16",
                "fp16": "fp16"}
# the attention module the built-in model ran (`impl_parts["attention"]`) -> the backends of its attention and
# of its rotary embedding in the benchmark (pyscale.nn.Attention; gpt.TorchAttention calls SDPA undirected)
_ATTENTION_BACKENDS = {"pyscale": ("pyscale", "pyscale"), "torch": ("sdpa", "torch")}


def implementation_of(row: dict[str, Any]) -> dict[str, Any]:
    """The dtype and backends a stored `gpt_step` row ran with, as `gpt_op_breakdown` keywords.

    From the row: its dtype, `impl_parts["attention"]` and `optimizer` (the AdamW implementation; rows stored
    before it was recorded get torch's default for their device kind, "foreach" on CUDA, "for-loop" on CPU).
    GEMMs are nn.Linear's (`torch.mm`); the batch is repeated (`pyscale profile` makes one). A ValueError
    names what the row lacks."""
    p = row.get("params") or {}
    dtype = _DTYPE_NAMES.get(str(row.get("dtype")))
    if dtype is None:
        raise ValueError(f"dtype: a gpt_step row in {row.get('dtype')!r} cannot be priced (one of "
                         f"{', '.join(sorted(set(_DTYPE_NAMES.values())))})")
    attention = (p.get("impl_parts") or {}).get("attention")
    if attention not in _ATTENTION_BACKENDS:
        raise ValueError(f"params: the gpt_step row does not say which attention it ran (impl_parts: "
                         f"{p.get('impl_parts')!r})")
    optimizer = p.get("optimizer") or ("foreach" if row.get("device_kind") == "cuda" else ONE_TENSOR_AT_A_TIME)
    attention_backend, rotary_backend = _ATTENTION_BACKENDS[attention]
    # `pyscale profile` trains on one batch, made once
    return {"dtype": dtype, "gemm_backend": "torch.mm", "attention_backend": attention_backend,
            "rotary_backend": rotary_backend, "optimizer_backend": optimizer, "step_ops": True,
            "repeated_batch": True}


STEP_CONFIG_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "seq_len", "n_experts",
                    "top_k")


def validate_against_store(profile: Any, rows: Sequence[dict[str, Any]], *,
                           communication_s: float = 0.0) -> list[dict[str, Any]]:
    """Predicted vs measured step time of stored `gpt_step` rows (relative error per row), each row priced
    with the implementation it ran (`implementation_of`) and, where the profile models every op of the step at
    the row's recorded power limit, at that limit (`priced_at_power_limit_w`); else at the largest."""
    from pyscale.models.config import GPTConfig

    out = []
    for r in rows:
        p = r["params"]
        fields = {k: p[k] for k in STEP_CONFIG_KEYS if k in p}
        config = GPTConfig(**fields)
        options = implementation_of(r)
        pred = predict_gpt_step(profile, config, int(p["batch"]), communication_s=communication_s, **options)
        # a step measured at a power limit the profile models every op at is priced at that limit
        limit = r.get("power_limit_w")
        at = next((a for a in pred.at_power_limits if limit is not None and a["power_limit_w"] == limit), None)
        predicted = pred.time_s if at is None else at["time_s"]
        extra = r.get("extra") or {}
        check = {"config": fields, "batch": int(p["batch"]), "priced_as": options, "measured_s": r["time_s_median"],
                 "predicted_s": predicted, "rel_error": predicted / r["time_s_median"] - 1.0,
                 "measured_stable": extra.get("stable"),
                 "predicted_share_outside_gemm_attention": _share_outside(pred)}
        if at is not None:
            check["priced_at_power_limit_w"] = limit
        out.append(check)
    return out


def _share_outside(pred: StepPrediction) -> float:
    outside = sum(e["time_s"] for e in pred.per_op if e["op"] not in ("gemm", "attention_fwd", "attention_bwd"))
    return outside / pred.time_s if pred.time_s else 0.0


def summarize_validation(checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-step errors and their summary (max and mean |error|), what a profile records of its validation."""
    errors = [c["rel_error"] for c in checks]
    return {"n_steps": len(errors), "max_abs_error": max(abs(e) for e in errors),
            "mean_abs_error": sum(abs(e) for e in errors) / len(errors), "min_error": min(errors),
            "max_error": max(errors)}


def validation_summary(profile: Any) -> str:
    """One line of the profile's recorded step validation, for a plan's time (or that it has none)."""
    v = getattr(profile, "validation", None)
    if not v:
        return ("step-validation error of this profile: unknown (it records no validation; run "
                "`pyscale costmodel validate PROFILE --record`)")
    s = v.get("summary") or {}
    return (f"step-validation error of this profile: {s['min_error']:+.1%} to {s['max_error']:+.1%} over "
            f"{s['n_steps']} measured step(s), max |error| {s['max_abs_error']:.1%} ({v.get('created', '?')})")
