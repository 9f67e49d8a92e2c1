"""KernelBackend: the Backend of base.py on top of any Runtime (cuda, emulate).

It turns the plan (plan.py) into runtime launches; nothing here depends on the runtime. Plans are
cached: a call whose arrays have the layout (plan.layout_key: shapes, strides, dtypes, addresses
modulo 16 bytes) of an earlier one, under the same tuning, TF32 setting (of float32 products) and
device, reuses that call's Plan and the kernel functions it resolved, and only fills in its own
arrays, scalars and buffers (and its tensor maps: launch.call encodes each from the call's own array,
through tensor_map's cache).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from ..tf32 import get_tf32
from .base import KernelFunction, Runtime
from .launch import Launch, call, function, run
from .plan import Plan, Tuning, activation_grad_plan, colsum_plan, gemm_plan, layout_key

PLAN_CACHE_SIZE = 512  # plans kept per backend; the least recently used goes first
_FLOAT32 = np.dtype(np.float32)


class KernelBackend:
    def __init__(self, runtime: Runtime, tuning: Tuning = Tuning()):
        """tuning overrides the plan's cost model (tests, tile sweeps); the default follows it."""
        self.runtime = runtime
        self.name = runtime.name
        self.xp = runtime.xp
        self.tuning = tuning
        # key -> (Plan, its launches' kernel functions); the key names the product ("gemm", "colsum",
        # "activation_grad")
        self._plans: OrderedDict[tuple, tuple[Plan, tuple[KernelFunction, ...]]] = OrderedDict()
        self._insert = threading.Lock()

    def gemm(self, a: Any, b: Any, c: Any, *, alpha: float, beta: float, bias: Any = None,
             activation: str | None = None, preact: Any = None) -> None:
        """base.Backend.gemm. An argument that changes the plan belongs in the key: an array as one more
        entry of `arrays` (plan.GEMM_ARRAYS; its layout is then keyed and its slot filled per call), any
        other (a flag, an epilogue's name) as itself in the key."""
        arrays = (a, b, c, bias, preact)  # in plan.GEMM_ARRAYS' order
        # TF32 is a way to run float32 products: the setting ($LINEAR_TF32, ~0.6 µs to read) decides no other plan
        tf32 = c.dtype == _FLOAT32 and get_tf32()
        key = ("gemm", layout_key(arrays), activation, self.tuning, tf32, self.runtime.device_id())
        self._run(key, arrays, alpha, beta, self._plan_gemm)

    def colsum(self, a: Any, out: Any, *, beta: float) -> None:
        arrays = (a, out)
        self._run(("colsum", layout_key(arrays), self.runtime.device_id()), arrays, 1.0, beta, self._plan_colsum)

    def activation_grad(self, dy: Any, z: Any, dz: Any, db: Any, *, activation: str, beta: float) -> None:
        """base.Backend.activation_grad: planned and cached as colsum is, the activation in the key."""
        arrays = (dy, z, dz, db)  # in plan.ACTIVATION_GRAD_ARRAYS' order
        key = ("activation_grad", layout_key(arrays), activation, self.runtime.device_id())
        self._run(key, arrays, 1.0, beta, self._plan_activation_grad)

    def _plan_gemm(self, key: tuple, arrays: tuple) -> tuple[Plan, dict[int, Any]]:
        _, _, activation, tuning, tf32, _ = key  # the settings the plan is keyed by, read once
        a, b, c, bias, preact = arrays
        runtime = self.runtime
        return gemm_plan(self.xp, a, b, c, bias=bias, tuning=tuning, arch=runtime.compute_capability(), tf32=tf32,
                         device=runtime.device_limits(), activation=activation, preact=preact)

    def _plan_colsum(self, key: tuple, arrays: tuple) -> tuple[Plan, dict[int, Any]]:
        return colsum_plan(*arrays, device=self.runtime.device_limits()), {}

    def _plan_activation_grad(self, key: tuple, arrays: tuple) -> tuple[Plan, dict[int, Any]]:
        return activation_grad_plan(*arrays, activation=key[2], device=self.runtime.device_limits()), {}

    def _run(self, key: tuple, arrays: tuple, alpha: float, beta: float,
             make: Callable[[tuple, tuple], tuple[Plan, dict[int, Any]]]) -> None:
        """Launch the plan cached under key, made (make(key, arrays)) and its kernels looked up on a miss."""
        entry, made = self._plans.get(key), None
        if entry is None:
            plan, made = make(key, arrays)
            entry = plan, tuple(function(self.runtime, launch) for launch in plan.launches)
            with self._insert:
                self._plans[key] = entry
                if len(self._plans) > PLAN_CACHE_SIZE:
                    self._plans.popitem(last=False)
        else:
            try:
                self._plans.move_to_end(key)
            except KeyError:  # another thread dropped it meanwhile
                pass
        plan, kernels = entry
        xp, runtime = self.xp, self.runtime
        values = plan.values(xp, arrays, alpha, beta, made)
        for launch, kernel in zip(plan.launches, kernels):
            call(runtime, kernel, launch, launch.arguments(xp, values))

    def launch(self, launches: list[Launch]) -> None:
        """Run launches as they are (a plan bound to its arrays: plan.plan_gemm's), without the cache."""
        run(self.runtime, launches)
