"""linear.torch: our kernels inside PyTorch training loops, in place of torch.nn.Linear.

    linear(x, weight, bias=None, *, backend=None)   torch.nn.functional.linear's contract, on our kernels
    Linear(in_features, out_features, bias=True, device=None, dtype=None, *, backend=None)
                                                    an nn.Linear whose forward is linear()
    swap_linear(module, *, backend=None)            every torch.nn.Linear in a model -> Linear, in place

Layout: torch stores weight as (out_features, in_features) = (D, F), the transpose of our W (F, D), so
y = x·weightᵀ + b is functional.forward(x, weight.T, b) with the transpose passed as a flag, never copied.
The gradients come from functional.backward: dx = dy·weight (NN), dweight = dyᵀ·x (TN, our dW = xᵀ·dy
returned as its transposed view), dbias = Σ_rows dy.

linear() is the custom op "linear::linear" (torch.library), with autograd and a fake implementation,
so torch.compile(fullgraph=True) traces it without a graph break. Its backward is the custom op
"linear::linear_backward", whose own backward is written with linear() again: gradients of gradients
(double backward, gradient penalties) work to any order.

Where it runs (the tensors are never copied on the way in):
- CPU tensors share their memory with numpy arrays (through DLPack); the backend is `backend`, else
  $LINEAR_BACKEND, else "numpy" ("emulate" runs our CUDA source on the CPU).
- CUDA tensors go to the "cuda" backend through DLPack, on torch's current stream, with no extra sync.
- meta tensors (and torch.compile's fake tensors) only get the result's shape, dtype and device.
float32, float64, float16 and bfloat16; x, weight and bias must share one dtype and one device, as in
torch.nn.functional.linear. This module is the only one that imports torch: `import linear` does not.
"""
import contextlib
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from . import functional
from .backends import BackendUnavailable, default_backend_name, get_backend

__all__ = ["linear", "Linear", "swap_linear"]

_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Autocast casts floating tensors to its dtype except float64 ones, and so does linear().
_AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------
# Checks and dispatch
# ----------------------------------------------------------------------------------------------------

def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype} and device {t.device}"


def _check(x: Any, weight: Any, bias: Any) -> None:
    """What torch.nn.functional.linear requires; every message names the argument, its device and dtype."""
    given = {"x": x, "weight": weight, "bias": bias}
    tensors = {name: t for name, t in given.items() if t is not None or name != "bias"}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dtype not in _SUPPORTED:
            raise TypeError(f"{name} has {_describe(t)}; supported dtypes are float32, float64, float16 "
                            "and bfloat16")
    if len({t.device for t in tensors.values()}) > 1:
        raise ValueError("x, weight and bias must be on one device; got "
                         + ", ".join(f"{name} on {t.device}" for name, t in tensors.items()))
    if len({t.dtype for t in tensors.values()}) > 1:
        raise TypeError("x, weight and bias must share one dtype (as in torch.nn.functional.linear; cast "
                        "them, or use torch.autocast); got "
                        + ", ".join(f"{name} {t.dtype}" for name, t in tensors.items()))
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features); got {_describe(weight)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has shape {tuple(x.shape)} and weight has shape {tuple(weight.shape)}: x must be "
                         f"(..., {weight.shape[1]}), its last dimension weight's in_features")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias has shape {tuple(bias.shape)} and weight has shape {tuple(weight.shape)}: "
                         f"bias must be ({weight.shape[0]},)")


def _backend_name(tensors: dict[str, Optional[torch.Tensor]], backend: Optional[str]) -> str:
    """The backend for tensors on one device: "cuda" for CUDA tensors, else `backend` or the default."""
    present = {name: t for name, t in tensors.items() if t is not None}
    first = next(iter(present.values()))
    where = f"{', '.join(present)} on {first.device} with dtype {first.dtype}"
    if first.device.type == "cuda":
        if backend not in (None, "cuda"):
            try:
                get_backend(backend)  # ValueError for a name that is no backend at all
            except BackendUnavailable:
                pass
            raise TypeError(f"backend {backend!r} takes CPU tensors; got {where}: use backend='cuda' or None, "
                            "or move the tensors with .cpu()")
        try:
            get_backend("cuda")
        except BackendUnavailable as e:
            raise BackendUnavailable(f"got {where}, but {e}") from e
        return "cuda"
    if first.device.type != "cpu":
        raise TypeError(f"linear.torch runs on CPU and CUDA tensors; got {where}")
    name = backend or default_backend_name()
    if name == "cuda":
        raise TypeError(f"backend 'cuda' takes CUDA tensors; got {where}: move them with .cuda()")
    get_backend(name)  # BackendUnavailable with the reason, e.g. emulate without a C++ compiler
    return name


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes  # linear's bfloat16 arrays are ml_dtypes.bfloat16, in numpy and in CuPy
    except ImportError as e:
        raise TypeError("bfloat16 tensors need the ml_dtypes package (pip install 'linear[torch]')") from e
    return np.dtype(ml_dtypes.bfloat16)


def _as_array(t: Optional[torch.Tensor], convert: Callable[[torch.Tensor], Any]) -> Any:
    """A numpy or CuPy array sharing t's memory (neither numpy nor DLPack consumers know torch.bfloat16:
    it crosses as int16 bits and is viewed back as bfloat16)."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return convert(t.view(torch.int16)).view(_bfloat16())
    return convert(t)


@contextlib.contextmanager
def _arrays(backend: Optional[str], inputs: dict[str, Optional[torch.Tensor]],
            outputs: dict[str, torch.Tensor]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(backend name, arrays sharing the memory of the inputs and outputs); for CUDA tensors the body runs
    on torch's current stream, which CuPy (and so our kernel launches) then uses as its own."""
    name = _backend_name(inputs, backend)
    tensors = {**inputs, **outputs}
    if name != "cuda":
        # DLPack rather than Tensor.numpy(), which makes the storage non-resizable for good, and FSDP frees
        # its gathered weights by resizing their storage to 0 after the forward.
        yield name, {k: _as_array(t, np.from_dlpack) for k, t in tensors.items()}
        return
    import cupy
    device = next(iter(outputs.values())).device
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream, device.index):
        # from_dlpack inside the stream context: producer and consumer stream are one, so no sync.
        yield name, {k: _as_array(t, cupy.from_dlpack) for k, t in tensors.items()}


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A new contiguous result tensor (the tests replace it with one full of NaN)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------------
# The custom ops
# ----------------------------------------------------------------------------------------------------

@torch.library.custom_op("linear::linear", mutates_args=())
def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            backend: Optional[str]) -> torch.Tensor:
    y = _empty((*x.shape[:-1], weight.shape[0]), x)
    with _arrays(backend, {"x": x, "weight": weight, "bias": bias}, {"y": y}) as (name, a):
        functional.forward(a["x"], a["weight"].T, a["bias"], out=a["y"], backend=name)
    return y


@_linear.register_fake
def _(x, weight, bias, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("linear::linear_backward", mutates_args=())
def _linear_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_dx: bool, need_dweight: bool,
                     need_dbias: bool, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); a gradient not asked for is an empty tensor. dweight is the transposed view
    of our (in_features, out_features) dW, the layout our TN GEMM writes."""
    out_features, in_features = weight.shape
    dx = _empty(tuple(x.shape), x) if need_dx else x.new_empty(0)
    dw = _empty((in_features, out_features), x) if need_dweight else x.new_empty(0)
    db = _empty((out_features,), x) if need_dbias else x.new_empty(0)
    if need_dx or need_dweight or need_dbias:
        with _arrays(backend, {"dy": dy, "x": x, "weight": weight}, {"dx": dx, "dw": dw, "db": db}) as (name, a):
            functional.backward(a["dy"], a["x"], a["weight"].T, need_dx=need_dx, need_dw=need_dweight,
                                need_db=need_dbias, dx_out=a["dx"] if need_dx else None,
                                dw_out=a["dw"] if need_dweight else None, db_out=a["db"] if need_dbias else None,
                                backend=name)
    return dx, (dw.t() if need_dweight else dw), db


@_linear_backward.register_fake
def _(dy, x, weight, need_dx, need_dweight, need_dbias, backend):
    out_features, in_features = weight.shape
    return (x.new_empty(x.shape) if need_dx else x.new_empty(0),
            x.new_empty((in_features, out_features)).t() if need_dweight else x.new_empty(0),
            x.new_empty((out_features,)) if need_dbias else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.backend = backend


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
    dx, dweight, dbias = _linear_backward(dy, x, weight, need_dx, need_dweight, need_dbias, ctx.backend)
    return (dx if need_dx else None, dweight if need_dweight else None, dbias if need_dbias else None, None)


_linear.register_autograd(_backward, setup_context=_setup_context)


def _setup_backward_context(ctx, inputs, output):
    dy, x, weight, need_dx, need_dweight, need_dbias, backend = inputs
    ctx.save_for_backward(dy, x, weight)
    ctx.computed = (need_dx, need_dweight, need_dbias)
    ctx.backend = backend


def _double_backward(ctx, g_dx, g_dweight, g_dbias):
    """The backward of dx = dy·weight, dweight = dyᵀ·x, dbias = Σ_rows dy, written with linear() (which
    computes a·bᵀ) so that it is differentiable in turn."""
    dy, x, weight = ctx.saved_tensors
    # the gradient of a placeholder for an output that was not computed is dropped
    g_dx, g_dweight, g_dbias = (g if computed else None for g, computed in zip((g_dx, g_dweight, g_dbias),
                                                                                 ctx.computed))
    d_dy = d_x = d_weight = None
    if ctx.needs_input_grad[0]:
        terms = []
        if g_dx is not None:
            terms.append(linear(g_dx, weight, backend=ctx.backend))  # g_dx·weightᵀ
        if g_dweight is not None:
            terms.append(linear(x, g_dweight, g_dbias, backend=ctx.backend))  # x·g_dweightᵀ + g_dbias
        elif g_dbias is not None:
            terms.append(g_dbias.expand(dy.shape))
        d_dy = sum(terms[1:], terms[0]) if terms else None
    if ctx.needs_input_grad[1] and g_dweight is not None:
        d_x = linear(dy, g_dweight.t(), backend=ctx.backend)  # dy·g_dweight
    if ctx.needs_input_grad[2] and g_dx is not None:
        rows = dy.reshape(-1, dy.shape[-1]).t()
        d_weight = linear(rows, g_dx.reshape(-1, g_dx.shape[-1]).t(), backend=ctx.backend)  # dyᵀ·g_dx
    return d_dy, d_x, d_weight, None, None, None, None


_linear_backward.register_autograd(_double_backward, setup_context=_setup_backward_context)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------

def _autocast(t: Optional[torch.Tensor], device_type: str) -> Optional[torch.Tensor]:
    if t is None or t.dtype not in _AUTOCAST_CASTS:
        return t
    return t.to(torch.get_autocast_dtype(device_type))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
           backend: Optional[str] = None) -> torch.Tensor:
    """y = x·weightᵀ + bias, as torch.nn.functional.linear: x (..., F), weight (D, F), bias (D,) or None.

    Differentiable in x, weight and bias. backend=None: "cuda" for CUDA tensors; for CPU tensors
    $LINEAR_BACKEND, else "numpy" (read at each call, also in a compiled graph). Inside torch.autocast
    for the tensors' device type, x, weight and bias are first cast to the autocast dtype (float64 ones
    are left alone), as torch casts them for nn.Linear; the casts are ordinary differentiable torch ops.
    """
    if isinstance(x, torch.Tensor) and x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        x, weight, bias = (_autocast(t, x.device.type) for t in (x, weight, bias))
    _check(x, weight, bias)
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None; got {backend!r}")
    return _linear(x, weight, bias, backend)


class Linear(nn.Linear):
    """torch.nn.Linear computed by our kernels: the same parameters (weight (out_features, in_features),
    bias), initialisation, state_dict keys and repr; forward is linear(x, weight, bias, backend=backend).

    It is an nn.Linear subclass, so checkpoints load both ways and isinstance(m, nn.Linear) holds.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Optional[torch.dtype] = None, *, backend: Optional[str] = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.backend is None else f", backend={self.backend!r}")


def _replacement(old: nn.Linear, backend: Optional[str]) -> Linear:
    # Built on the meta device (nothing allocated or initialised), then given old's Parameter objects.
    new = Linear(old.in_features, old.out_features, old.bias is not None, device="meta", backend=backend)
    new.weight = old.weight
    if old.bias is not None:
        new.bias = old.bias
    return new.train(old.training)


def swap_linear(module: nn.Module, *, backend: Optional[str] = None) -> nn.Module:
    """Replace every torch.nn.Linear inside `module` by a Linear holding the very same Parameter objects
    (values, device, dtype, requires_grad), so an optimizer built before the swap keeps working.

    Returns `module`, changed in place (or a new Linear when `module` is itself an nn.Linear). A layer
    that appears under several names is replaced by one Linear everywhere. Only modules whose type is
    exactly nn.Linear are replaced: subclasses (e.g. parametrized layers, or attention's out_proj,
    whose forward is never called) may compute something else and are left as they are. Not carried
    over: hooks registered on the old modules and attributes set on them by hand.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if type(module) is nn.Linear:
        return _replacement(module, backend)
    replaced: dict[int, tuple[nn.Linear, Linear]] = {}  # keeps the old module alive, so its id stays its own
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if id(child) not in replaced:
                    replaced[id(child)] = (child, _replacement(child, backend))
                setattr(parent, name, replaced[id(child)][1])
    return module
