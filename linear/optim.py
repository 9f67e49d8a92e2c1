"""SGD, Adam and AdamW with torch.optim's update rules, parameter groups and state_dict, written once
for numpy and CuPy arrays.

Each step reads param.grad and updates param.data in place. Optimizer state (momentum, Adam moments)
has the parameter's dtype, except for half types (float16, bfloat16): there the state and the update
arithmetic are float32, since half precision cannot hold small second moments or small steps; the
result is rounded back into the half-precision parameter.

As in torch, `params` is a list of parameters or a list of groups, dicts with "params" and any of the
optimizer's options, which override the defaults for that group. state_dict() holds plain Python
numbers and copies of the state arrays (picklable); parameters are numbered in the order of the groups.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from .arrays import array_module
from .dtypes import accumulator_dtype

Array = Any  # a numpy.ndarray or a cupy.ndarray


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} of type {type(value).__name__}")
    return bool(value)


def _betas(value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2); got {value!r}")
    for i, beta in enumerate(value):
        if not 0 <= _non_negative(f"betas[{i}]", beta) < 1:
            raise ValueError(f"betas[{i}] must be in [0, 1); got {beta!r}")
    return float(value[0]), float(value[1])


class Optimizer:
    """Steps groups of parameters (objects with .data and .grad arrays); subclasses define OPTIONS
    (name -> check) and _update."""
    OPTIONS: dict[str, Any] = {}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self.defaults = defaults
        given = list(params)
        if not given:
            raise ValueError("params is empty; pass e.g. [*layer1.parameters(), *layer2.parameters()]")
        self.param_groups: list[dict[str, Any]] = []
        for group in given if isinstance(given[0], dict) else [{"params": given}]:
            self.add_param_group(group)
        self.state: dict[int, dict[str, Any]] = {}  # by parameter number

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group: {"params": [...], option: value, ...}; options it leaves out take the defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with 'params'; got {type(group).__name__}")
        unknown = sorted(group.keys() - self.OPTIONS.keys() - {"params"})
        if unknown:
            raise ValueError(f"unknown options {unknown} in a parameter group; {type(self).__name__} takes "
                             f"{sorted(self.OPTIONS)}")
        params = list(group["params"])
        if not params:
            raise ValueError("a parameter group has an empty params list")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not hasattr(p, "data") or not hasattr(p, "grad"):
                raise TypeError(f"params[{i}] must have .data and .grad arrays; got {type(p).__name__}")
            if id(p) in taken:
                raise ValueError("params lists a parameter more than once; it would be stepped twice per step()")
            taken.add(id(p))
        options = {name: check(name, group.get(name, self.defaults[name])) for name, check in self.OPTIONS.items()}
        self._check_group(options)
        self.param_groups.append({"params": params, **options})

    def _check_group(self, options: dict[str, Any]) -> None:
        """Checks across options (none by default)."""

    def _numbered(self):
        number = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield number, p, group
                number += 1

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.fill(0)

    def step(self) -> None:
        for number, p, group in self._numbered():
            # For float32/float64 `value` is p.data itself; for half types a float32 copy written back below.
            value = p.data.astype(accumulator_dtype(p.data.dtype), copy=False)
            grad = p.grad.astype(value.dtype, copy=False)
            if group.get("maximize"):
                grad = -grad
            self._update(value, grad, self.state.setdefault(number, {}), group)
            if value is not p.data:
                p.data[...] = value

    def _update(self, value: Array, grad: Array, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """{"state": {number: {name: copy}}, "param_groups": [{options, "params": [numbers]}]}, as torch."""
        groups, number = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            groups.append({**group, "params": list(range(number, number + count))})
            number += count
        state = {n: {k: v.copy() if hasattr(v, "copy") else v for k, v in s.items()} for n, s in self.state.items() if s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what state_dict() returned (options and state) onto this optimizer's parameters, which
        must be grouped the same way; nothing changes unless everything matches."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or not isinstance(state_dict.get("state"), dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups', as state_dict() returns")
        if [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"state_dict has groups of {[len(g.get('params', ())) for g in groups]} parameters; "
                             f"this optimizer has {[len(g['params']) for g in self.param_groups]}")
        options = [{name: check(name, g[name]) for name, check in self.OPTIONS.items()} for g in groups]
        params = {number: p for number, p, _ in self._numbered()}
        state = {}
        for number, entries in state_dict["state"].items():
            if number not in params:
                raise ValueError(f"state_dict has state for parameter {number!r}; there are {len(params)}")
            p = params[number]
            xp, work = array_module(p.data), accumulator_dtype(p.data.dtype)
            state[number] = {}
            for name, value in entries.items():
                if hasattr(value, "shape"):
                    if tuple(value.shape) != tuple(p.data.shape):
                        raise ValueError(f"state_dict['state'][{number}][{name!r}] has shape {tuple(value.shape)}; "
                                         f"parameter {number} has shape {tuple(p.data.shape)}")
                    value = xp.array(value, dtype=work)  # a copy on the parameter's device
                state[number][name] = value
        for group, loaded in zip(self.param_groups, options):
            group.update(loaded)
        self.state = state


class SGD(Optimizer):
    """torch.optim.SGD: g = ±grad + weight_decay·p; with momentum, buf = g at the first step, then
    buf = momentum·buf + (1 - dampening)·g, and g = g + momentum·buf (nesterov) or buf; p -= lr·g."""
    OPTIONS = {"lr": _non_negative, "momentum": _non_negative, "dampening": _non_negative,
               "weight_decay": _non_negative, "nesterov": _flag, "maximize": _flag}

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _check_group(self, options):
        if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0 (as torch.optim.SGD)")

    def _update(self, value, grad, state, group):
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * value  # L2 penalty; p.grad is untouched
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()  # a copy: grad may be p.grad itself
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        value -= group["lr"] * grad


class Adam(Optimizer):
    """torch.optim.Adam: m, v = moving averages of g and g², bias-corrected at step t (amsgrad: the
    running maximum of v); p -= lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + eps), where
    g = ±grad + weight_decay·p (L2 in the gradient; AdamW decouples it)."""
    OPTIONS = {"lr": _non_negative, "betas": lambda name, value: _betas(value), "eps": _non_negative,
               "weight_decay": _non_negative, "amsgrad": _flag, "maximize": _flag}
    DEFAULT_WEIGHT_DECAY = 0.0

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float | None = None, amsgrad: bool = False, *,
                 maximize: bool = False):
        weight_decay = self.DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _decay(self, value, grad, group):
        return grad + group["weight_decay"] * value  # L2 penalty; p.grad is untouched

    def _update(self, value, grad, state, group):
        xp = array_module(value)
        if group["weight_decay"]:
            grad = self._decay(value, grad, group)
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(value), exp_avg_sq=xp.zeros_like(value))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(value)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        correction1 = 1 - beta1 ** state["step"]
        correction2 = 1 - beta2 ** state["step"]
        denom = xp.sqrt(v)
        denom /= math.sqrt(correction2)
        denom += group["eps"]
        value -= (group["lr"] / correction1) * m / denom


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr·weight_decay before the Adam
    step (the gradient is left alone); weight_decay defaults to 0.01 as in torch."""
    DEFAULT_WEIGHT_DECAY = 1e-2

    def _decay(self, value, grad, group):
        value *= 1 - group["lr"] * group["weight_decay"]
        return grad
