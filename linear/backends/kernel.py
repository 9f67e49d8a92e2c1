"""KernelBackend: the Backend of base.py on top of any Runtime (cuda, emulate).

It only turns the plan (plan.py) into runtime launches; nothing here depends on the runtime.
"""
from __future__ import annotations

from typing import Any

from ..tf32 import get_tf32
from .base import Runtime
from .launch import Launch, run
from .plan import Tuning, plan_colsum, plan_gemm


class KernelBackend:
    def __init__(self, runtime: Runtime, tuning: Tuning = Tuning()):
        """tuning overrides the plan's cost model (tests, tile sweeps); the default follows it."""
        self.runtime = runtime
        self.name = runtime.name
        self.xp = runtime.xp
        self.tuning = tuning

    def gemm(self, a: Any, b: Any, c: Any, *, alpha: float, beta: float, bias: Any = None) -> None:
        self.launch(plan_gemm(self.xp, a, b, c, alpha=alpha, beta=beta, bias=bias, tuning=self.tuning,
                              arch=self.runtime.compute_capability(), tf32=get_tf32(),
                              device=self.runtime.device_limits()))

    def colsum(self, a: Any, out: Any, *, beta: float) -> None:
        self.launch(plan_colsum(self.xp, a, out, beta=beta, device=self.runtime.device_limits()))

    def launch(self, launches: list[Launch]) -> None:
        run(self.runtime, launches)
