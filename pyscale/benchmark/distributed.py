"""Fan a benchmark sweep out over a Ray cluster (`pyscale bench ... --ray [ADDRESS]`).

One Ray task per case (per case and GPU type on a mixed cluster, below): `num_gpus=1` on GPU sweeps
(Ray pins each task to its own GPU through CUDA_VISIBLE_DEVICES), one CPU otherwise. Results stream back to the driver as tasks finish
(`ray.wait`), and the driver alone writes the store (`pyscale.benchmark.runner.sweep`), so a dying worker can
leave no partial row: a task whose worker process dies is retried by Ray (`max_retries`), and when the
retries are exhausted the error is yielded for the driver to record with the case. Each result carries
the device record of the worker that measured it.

On a GPU cluster whose nodes carry more than one GPU type (Ray's `accelerator_type:<type>` resources),
every case runs once per type, pinned with `accelerator_type`, so each type ends up with a complete
profile; GPUs of a type Ray does not recognise get no tasks then. A single-type cluster runs each case
once, anywhere.

Workers get the environment variables pyscale reads (TRITON_INTERPRET, PYSCALE_BACKEND, ...) through
Ray's `runtime_env`; on a CPU sweep TRITON_INTERPRET=1 is set unless the driver set it otherwise, since a
worker process has no GPU to compile Triton kernels for. pyscale must be installed on every node.

Ray is optional: `pip install 'pyscale[ray]'`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pyscale import store as st
from pyscale.benchmark import runner

INSTALL_HINT = "pip install 'pyscale[ray]'  (or: pip install 'ray>=2.9')"
# Variables that change what a worker measures or how; forwarded when the driver has them set.
FORWARDED_ENV = ("TRITON_INTERPRET", "PYSCALE_BACKEND", "PYSCALE_NVTX", "PYSCALE_CUDA_ARCHS", "TRITON_CACHE_DIR",
                 "CUPY_CACHE_DIR")

# Set on the workers of a per-type GPU task: the Ray accelerator type it was pinned to.
ACCELERATOR_ENV = "PYSCALE_RAY_ACCELERATOR_TYPE"
_ACCELERATOR_PREFIX = "accelerator_type:"

RunFn = Callable[..., tuple[st.DeviceRecord, st.MeasurementRecord]]
Result = tuple[st.DeviceRecord, st.MeasurementRecord] | BaseException


class RayUnavailable(ImportError):
    """`--ray` was asked for but Ray is not installed."""


def _require_ray():
    if importlib.util.find_spec("ray") is None:
        raise RayUnavailable(f"--ray needs Ray, which is not installed: {INSTALL_HINT}")
    import ray

    return ray


def worker_env(device: str, extra: Mapping[str, str] | None = None,
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables every worker gets (runtime_env["env_vars"])."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in FORWARDED_ENV if name in environ}
    if device == "cpu":
        env.setdefault("TRITON_INTERPRET", "1")
    env.update(extra or {})
    return env


def _run_on_worker(run_fn: RunFn, case: runner.Case, run_kwargs: dict[str, Any]) -> Any:
    return run_fn(case, **run_kwargs)


class RayExecutor:
    """A `pyscale.benchmark.runner.Executor` that runs each case as one Ray task.

    address: an existing cluster ("host:6379", "ray://host:10001", "auto"), or None: the cluster this
        machine belongs to (RAY_ADDRESS, `ray start` here), else a local one started for the sweep and
        shut down afterwards. If this process is already connected to Ray, that connection is used and
        left open.
    max_retries: how often a case is re-run when its worker process dies (crash, OOM kill, lost node).
    num_cpus: CPUs of a local cluster (default: all of this machine's).
    env: extra environment variables for the workers, on top of `worker_env`.
    run_fn: what a worker runs per case (default `pyscale.benchmark.runner.run_case`); it must be importable or
        picklable by value on the workers.
    max_in_flight: tasks submitted ahead of results (default: twice the cluster's task slots).
    per_gpu_type: on a GPU cluster with several GPU types, run every case once per type.
    """

    def __init__(self, address: str | None = None, *, device: str = "cpu", max_retries: int = 2,
                 num_cpus: int | None = None, env: Mapping[str, str] | None = None,
                 run_fn: RunFn | None = None, max_in_flight: int | None = None,
                 per_gpu_type: bool = True) -> None:
        self._ray = _require_ray()
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda': got {device!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0: got {max_retries}")
        self.address = address
        self.device = device
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.env = worker_env(device, env)
        self.run_fn = run_fn or runner.run_case
        self.max_in_flight = max_in_flight
        self.per_gpu_type = per_gpu_type

    # -- cluster lifetime

    def _connect(self) -> bool:
        """Connect to (or start) the cluster; True when this executor must shut Ray down afterwards."""
        ray = self._ray
        if ray.is_initialized():
            return False
        # The workers' environment is set per task (below), so it also applies on a connection we reuse.
        if self.address is None:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        return True

    def _slots(self) -> int:
        resources = self._ray.cluster_resources()
        key = "GPU" if self.device == "cuda" else "CPU"
        return int(resources.get(key, 0))

    def gpu_types(self) -> list[str]:
        """The GPU types this sweep fans out over: Ray's accelerator types when there are several, else []."""
        if self.device != "cuda" or not self.per_gpu_type:
            return []
        types = sorted(k[len(_ACCELERATOR_PREFIX):] for k in self._ray.cluster_resources()
                       if k.startswith(_ACCELERATOR_PREFIX))
        return types if len(types) > 1 else []

    def task_options(self, accelerator_type: str | None = None) -> dict[str, Any]:
        """The `ray.remote` options of one case's task (pinned to `accelerator_type` when given)."""
        gpu = self.device == "cuda"
        env = dict(self.env)
        pin: dict[str, Any] = {}
        if accelerator_type is not None:
            pin["accelerator_type"] = accelerator_type
            env[ACCELERATOR_ENV] = accelerator_type
        return dict(
            **pin,
            num_gpus=1 if gpu else 0, num_cpus=1, max_retries=self.max_retries,
            # An exception raised by run_fn is deterministic (run_case already turns measurement
            # failures into status rows); only dead workers are worth retrying.
            retry_exceptions=False,
            # A fresh process per GPU case: Ray assigns the GPU through CUDA_VISIBLE_DEVICES, which a
            # reused worker whose CUDA context already exists would ignore (and the next case starts
            # from a clean allocator). Ray only defaults to this when num_gpus is given to ray.remote.
            max_calls=1 if gpu else 0,
            runtime_env={"env_vars": env})

    # -- the Executor protocol

    def map_unordered(self, cases: Sequence[runner.Case], **run_kwargs: Any
                      ) -> Iterator[tuple[runner.Case, Result]]:
        if run_kwargs.get("device", self.device) != self.device:
            raise ValueError(f"this executor was made for device {self.device!r}, "
                             f"but the sweep runs on {run_kwargs['device']!r}")
        if not cases:
            return
        ray = self._ray
        owned = self._connect()
        pending: dict[Any, runner.Case] = {}
        try:
            slots = self._slots()
            if slots == 0:
                what = "GPUs" if self.device == "cuda" else "CPUs"
                raise RuntimeError(f"the Ray cluster has no {what} for a {self.device} sweep "
                                   f"(resources: {ray.cluster_resources()})")
            variants: list[str | None] = [*self.gpu_types()] or [None]
            tasks = {t: ray.remote(**self.task_options(t))(_run_on_worker) for t in variants}
            limit = self.max_in_flight or 2 * slots
            run_fn = ray.put(self.run_fn)
            kwargs = {**run_kwargs, "device": self.device}
            queue = [(case, t) for case in cases for t in variants][::-1]
            while queue or pending:
                while queue and len(pending) < limit:
                    case, variant = queue.pop()
                    pending[tasks[variant].remote(run_fn, case, kwargs)] = case
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    case = pending.pop(ref)
                    yield case, self._result(ref)
        finally:
            if pending:  # interrupted or the consumer stopped: don't leave work running on the cluster
                for ref in pending:
                    with contextlib.suppress(Exception):  # cleanup must not mask what stopped the sweep
                        ray.cancel(ref, force=True)
            if owned:
                ray.shutdown()

    def _result(self, ref: Any) -> Result:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # run_fn raised: hand the driver the original error
            cause = getattr(exc, "cause", None)
            return cause if isinstance(cause, BaseException) else exc
        except ray.exceptions.RayError as exc:  # the worker died and retries are exhausted
            return exc


def ray_executor(address: str | None = None, *, device: str = "cpu", **options: Any) -> RayExecutor:
    """The executor behind `pyscale bench --ray [ADDRESS]`; raises RayUnavailable when Ray is missing."""
    return RayExecutor(address, device=device, **options)
