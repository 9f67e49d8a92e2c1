"""KernelBackend: the Backend of base.py on top of any Runtime (cuda, emulate).

It only turns the plan (plan.py) into runtime launches; nothing here depends on the runtime.
"""
from __future__ import annotations

from typing import Any

from ..tf32 import get_tf32
from .base import Runtime
from .plan import Launch, Tuning, plan_activation_grad, plan_colsum, plan_gemm


class KernelBackend:
    def __init__(self, runtime: Runtime, tuning: Tuning = Tuning()):
        """tuning overrides the plan's cost model (tests, tile sweeps); the default follows it."""
        self.runtime = runtime
        self.name = runtime.name
        self.xp = runtime.xp
        self.tuning = tuning

    def gemm(self, a: Any, b: Any, c: Any, *, trans_a: bool, trans_b: bool, alpha: float, beta: float,
             bias: Any = None, activation: str | None = None, preact: Any = None) -> None:
        self.launch(plan_gemm(self.xp, a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                              bias=bias, tuning=self.tuning, arch=self.runtime.compute_capability(),
                              tf32=get_tf32(), device=self.runtime.device_limits(), activation=activation,
                              preact=preact))

    def colsum(self, a: Any, out: Any, *, beta: float) -> None:
        self.launch(plan_colsum(self.xp, a, out, beta=beta))

    def activation_grad(self, dy: Any, z: Any, dz: Any, db: Any, *, activation: str, beta: float) -> None:
        self.launch(plan_activation_grad(self.xp, dy, z, dz, db, activation=activation, beta=beta))

    def launch(self, launches: list[Launch]) -> None:
        for launch in launches:
            kernel = self.runtime.function(launch.source, launch.name)
            kernel(launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)
