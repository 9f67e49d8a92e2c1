"""SGD and Adam with torch.optim's update rules, written once for numpy and CuPy arrays.

Each step reads param.grad and updates param.data in place. Optimizer state (momentum, Adam moments)
has the parameter's dtype, except for half types (float16, bfloat16): there the state and the update
arithmetic are float32, since half precision cannot hold small second moments or small steps; the
result is rounded back into the half-precision parameter.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from .backends.base import accumulator_dtype
from .layer import Parameter, array_module

Array = Any  # a numpy.ndarray or a cupy.ndarray


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return float(value)


class Optimizer:
    """Steps a list of parameters (objects with .data and .grad arrays); subclasses define _update."""

    def __init__(self, params: Iterable[Parameter], lr: float, weight_decay: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty; pass e.g. [*layer1.parameters(), *layer2.parameters()]")
        for i, p in enumerate(self.params):
            if not hasattr(p, "data") or not hasattr(p, "grad"):
                raise TypeError(f"params[{i}] must have .data and .grad arrays; got {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("params lists a parameter more than once; it would be stepped twice per step()")
        self.lr = _non_negative("lr", lr)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.state: list[dict[str, Any]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad.fill(0)

    def step(self) -> None:
        for p, state in zip(self.params, self.state):
            # For float32/float64 `value` is p.data itself; for half types a float32 copy written back below.
            value = p.data.astype(accumulator_dtype(p.data.dtype), copy=False)
            grad = p.grad.astype(value.dtype, copy=False)
            if self.weight_decay:
                grad = grad + self.weight_decay * value  # L2 penalty as in torch.optim; p.grad is untouched
            self._update(value, grad, state)
            if value is not p.data:
                p.data[...] = value

    def _update(self, value: Array, grad: Array, state: dict[str, Any]) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0, no Nesterov): buf = momentum·buf + g (buf = g at the first step);
    p -= lr·buf, where g = grad + weight_decay·p."""

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = _non_negative("momentum", momentum)

    def _update(self, value, grad, state):
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()  # a copy: grad may be p.grad itself
            else:
                buf *= self.momentum
                buf += grad
            grad = buf
        value -= self.lr * grad


class Adam(Optimizer):
    """torch.optim.Adam (no AMSGrad): m, v = moving averages of g and g², bias-corrected at step t;
    p -= lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + eps), where g = grad + weight_decay·p (L2, not AdamW)."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0 <= beta < 1:
                raise ValueError(f"betas[{i}] must be in [0, 1); got {beta!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _non_negative("eps", eps)

    def _update(self, value, grad, state):
        xp = array_module(value)
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(value), exp_avg_sq=xp.zeros_like(value))
        beta1, beta2 = self.betas
        state["step"] += 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        correction1 = 1 - beta1 ** state["step"]
        correction2 = 1 - beta2 ** state["step"]
        denom = xp.sqrt(v)
        denom /= math.sqrt(correction2)
        denom += self.eps
        value -= (self.lr / correction1) * m / denom
