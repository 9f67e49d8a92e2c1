"""linear.torch: our kernels inside PyTorch training loops, in place of torch.nn.Linear.

    linear(x, weight, bias=None, *, activation=None, backend=None)
                                  torch.nn.functional.linear's contract on our kernels, optionally followed
                                  by an activation in the same kernel: "relu", "gelu", "gelu_tanh", "silu"
    Linear(in_features, out_features, bias=True, device=None, dtype=None, *, activation=None, backend=None)
                                  an nn.Linear whose forward is linear()
    swap_linear(module, *, fuse_activations=True, backend=None)
                                  every torch.nn.Linear in a model -> Linear, in place; inside nn.Sequential
                                  a Linear followed by nn.ReLU / nn.GELU / nn.SiLU becomes one fused Linear

Layout: torch stores weight as (out_features, in_features) = (D, F), the transpose of our W (F, D), so
y = x·weightᵀ + b is one GEMM with weight's transpose as a flag, never a copy. The gradients: dx = dy·weight
(NN), dweight = dyᵀ·x (TN, written in weight's own layout, as autograd wants it for weight.grad),
dbias = Σ_rows dy. Each product is one call of the backend's gemm or colsum on tensors checked once by
linear(), with the backend resolved once per call (the backward reuses the forward's).

With an activation (linear.activations): y = act(z), z = x·weightᵀ + b in one GEMM whose epilogue applies
act and also writes z when backward needs it (for relu y itself serves, as in torch: y > 0 exactly where
z > 0). Backward: dz = dy ⊙ act'(z) and dbias = Σ_rows dz in one backend call (activation_grad), then
dx = dz·weight and dweight = dzᵀ·x. Under create_graph (double backward) the backward is instead written
with differentiable pieces: z recomputed by linear(), dz by torch's elementwise ops, the products by
linear()'s differentiable backward.

Two paths, one set of products:
- eager (plain CPU or CUDA tensors, nothing tracing): torch.autograd.Functions, whose backward is itself
  differentiable (double backward, gradient penalties), written with linear() again; except on CPU tensors on
  the "numpy" backend, where the product (and its activation) is a composition of torch's own
  differentiable ops (backends.torch_cpu's product), and torch's autograd does the backward, as for
  nn.Linear and torch's activations;
- traced (torch.compiler.is_compiling(), tensor subclasses such as fake tensors, meta tensors): the custom
  op "linear::linear" (torch.library) with autograd and a fake implementation, so torch.compile(fullgraph=True)
  traces it without a graph break; its backward is the custom op "linear::linear_backward".

Where it runs (the tensors are never copied on the way in):
- CPU tensors run on `backend`, else $LINEAR_BACKEND, else "numpy". On "numpy" the products are torch's own
  CPU kernels on the tensors themselves (backends.torch_cpu: torch's BLAS, with torch's thread count, and
  the numpy backend's arithmetic); on "emulate" (our CUDA source run on the CPU) the tensors share their
  memory with numpy arrays (through DLPack).
- CUDA tensors go to the "cuda" backend through DLPack, on torch's current stream, with no host sync; what
  CuPy allocates during the call comes from torch's caching allocator (so CUDA graphs capture it).
- meta tensors (and torch.compile's fake tensors) only get the result's shape, dtype and device.
float32, float64, float16 and bfloat16; x, weight and bias must share one dtype and one device, as in
torch.nn.functional.linear. This module and the backend it runs CPU tensors on (backends.torch_cpu) are the
only ones that import torch: `import linear` does not.
"""
import contextlib
import math
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from .activations import check_activation
from .backends import BackendUnavailable, default_backend_name, get_backend
from .backends.torch_cpu import TorchCpuBackend, activation_gradient

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
    """What torch.nn.functional.linear requires; every message names the argument, its device and dtype.
    The common case (tensors of one supported dtype and device, matching shapes) in one expression: a
    small layer feels each microsecond."""
    if (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dtype in _SUPPORTED
            and weight.dtype is x.dtype and weight.device == x.device and weight.dim() == 2 and x.dim() >= 1
            and x.shape[-1] == weight.shape[1]
            and (bias is None or isinstance(bias, torch.Tensor) and bias.dtype is x.dtype
                 and bias.device == x.device and bias.dim() == 1 and bias.shape[0] == weight.shape[0])):
        return
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


def _where(tensors: dict[str, Optional[torch.Tensor]]) -> str:
    present = {name: t for name, t in tensors.items() if t is not None}
    first = next(iter(present.values()))
    return f"{', '.join(present)} on {first.device} with dtype {first.dtype}"


def _resolve(tensors: dict[str, Optional[torch.Tensor]], backend: Optional[str]) -> "_Run":
    """Where a call on `tensors` (of one device, named for the messages) runs: the cuda backend for CUDA
    tensors, else `backend` or the default. Resolved once per call of linear(); its backward uses the same."""
    first = next(iter(tensors.values()))  # x or dy, never None; is_cuda, is_cpu: device.type's, ~0.2 µs sooner
    if first.is_cuda:
        device = first.device
        if backend not in (None, "cuda"):
            try:
                get_backend(backend)  # ValueError for a name that is no backend at all
            except BackendUnavailable:
                pass
            raise TypeError(f"backend {backend!r} takes CPU tensors; got {_where(tensors)}: use backend='cuda' or "
                            "None, or move the tensors with .cpu()")
        try:
            return _Device(get_backend("cuda"), device)
        except BackendUnavailable as e:
            raise BackendUnavailable(f"got {_where(tensors)}, but {e}") from e
    if not first.is_cpu:
        raise TypeError(f"linear.torch runs on CPU and CUDA tensors; got {_where(tensors)}")
    name = backend or default_backend_name()
    host = _HOSTS.get(name)
    if host is None:  # "numpy" is there from the start
        if name == "cuda":
            raise TypeError(f"backend 'cuda' takes CUDA tensors; got {_where(tensors)}: move them with .cuda()")
        host = _HOSTS[name] = _Host(get_backend(name))  # BackendUnavailable with the reason, e.g. no C++ compiler
    return host


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes  # linear's bfloat16 arrays are ml_dtypes.bfloat16, in numpy and in CuPy
    except ImportError as e:
        raise TypeError("bfloat16 tensors need the ml_dtypes package (pip install 'linear[torch]')") from e
    return np.dtype(ml_dtypes.bfloat16)


# torch's own DLPack export, without Tensor.__dlpack__'s checks in Python (~1.5 µs a tensor); a versioned
# capsule, which numpy imports as writable. Tensor.numpy() would be as cheap, but it makes the storage
# non-resizable for good, and FSDP frees its gathered weights by resizing their storage to 0.
_TO_DLPACK = getattr(torch._C, "_to_dlpack_versioned", None)


class _Capsule:
    """DLPack's producer protocol around a capsule torch has made, for numpy.from_dlpack."""
    __slots__ = ("capsule",)

    def __init__(self, capsule: Any) -> None:
        self.capsule = capsule

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def _host_array(t: torch.Tensor) -> np.ndarray:
    """A numpy array sharing the memory of CPU tensor t (and keeping it alive). DLPack does not know
    torch.bfloat16: it crosses as int16 bits, viewed back as bfloat16."""
    if t.dtype is torch.bfloat16:
        return _host_array(t.view(torch.int16)).view(_bfloat16())
    if _TO_DLPACK is None:  # a torch without it
        return np.from_dlpack(t.detach())
    return np.from_dlpack(_Capsule(_TO_DLPACK(t)))


class _Run:
    """Where a call runs, as _resolve answers it: a backend and how tensors reach it."""
    __slots__ = ()

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               activation: Optional[str]) -> torch.Tensor:
        """linear() eagerly: the autograd.Function around our products (with an activation, the fused one)."""
        if activation is None:
            return _Linear.apply(x, weight, bias, self)
        return _LinearAct.apply(x, weight, bias, activation, _keep_preact(x, weight, bias, activation), self)


class _Host(_Run):
    """CPU tensors on a backend of numpy arrays (emulate): numpy arrays sharing the tensors' memory."""
    __slots__ = ("backend", "name")
    array = staticmethod(_host_array)
    scope = staticmethod(contextlib.nullcontext)

    def __init__(self, backend: Any) -> None:
        self.backend, self.name = backend, backend.name


class _TorchHost(_Host):
    """CPU tensors on the "numpy" backend: the tensors themselves, to torch's own CPU kernels
    (backends.torch_cpu), so the products run on torch's BLAS with torch's thread count.

    Eagerly, linear() is the backend's product (its activation included), a composition of torch's
    differentiable ops that torch's autograd records as it records nn.Linear's (and the activation's): the
    backward (dz = dy ⊙ act'(z), dx = dz·weight, dweight = dzᵀ·x, dbias = Σ_rows dz, half types in float32
    and rounded once, as the product was) and any double backward run in torch's C++ engine, with no Python
    of ours. A training step of a small layer is mostly host work, and an autograd.Function's Python costs
    ~10 µs a step (README's Cost)."""
    __slots__ = ()
    array = staticmethod(lambda t: t)

    def __init__(self) -> None:
        self.backend, self.name = TorchCpuBackend(), "numpy"

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               activation: Optional[str]) -> torch.Tensor:
        """act(x·weightᵀ + bias), differentiable by torch's autograd."""
        if x.ndim == 2:
            return self.backend.product(x, weight.T, bias, activation=activation)
        lead = x.shape[:-1]
        matrix = x.reshape(math.prod(lead), x.shape[-1])
        return self.backend.product(matrix, weight.T, bias, activation=activation).view(*lead, weight.shape[0])


_HOSTS: dict[str, _Host] = {"numpy": _TorchHost()}


class _Device(_Run):
    """CUDA tensors: CuPy arrays sharing their memory (DLPack on torch's current stream, so no event and no
    wait); the launches go to torch's current stream, and what CuPy allocates inside the call (the plan's
    workspaces) comes from torch's caching allocator rather than from CuPy's pool, so memory is not held
    twice and a CUDA graph captures the allocations. Nothing here synchronises with the host."""
    __slots__ = ("backend", "name", "device", "cupy")

    def __init__(self, backend: Any, device: torch.device) -> None:
        self.backend, self.name, self.device = backend, backend.name, device
        self.cupy = backend.xp

    def array(self, t: torch.Tensor) -> Any:
        if t.dtype is torch.bfloat16:
            return self.cupy.from_dlpack(t.detach().view(torch.int16)).view(_bfloat16())
        return self.cupy.from_dlpack(t.detach())

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        cuda = self.cupy.cuda
        stream = cuda.Stream.from_external(torch.cuda.current_stream(self.device))  # its __cuda_stream__
        with cuda.Device(self.device.index), stream, cuda.using_allocator(self.allocate):
            yield

    def allocate(self, size: int) -> Any:
        """CuPy's allocator hook: `size` bytes of a torch tensor on the current stream, held by the
        MemoryPointer (torch's allocator reuses the block once CuPy drops it; the stream orders the reuse)."""
        buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
        memory = self.cupy.cuda.UnownedMemory(buffer.data_ptr(), size, buffer, self.device.index)
        return self.cupy.cuda.MemoryPointer(memory, 0)


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A new contiguous result tensor of like's dtype and device (the tests replace it with one full of NaN)."""
    return like.new_empty(shape)


# ----------------------------------------------------------------------------------------------------
# The products: one backend call per GEMM, on tensors _check has checked
# ----------------------------------------------------------------------------------------------------

def _matrix(a: Any, rows: int, columns: int) -> Any:
    """a (..., columns), a tensor or an array, as the (rows, columns) matrix a backend takes: a itself when
    it is one (reshape costs ~0.8 µs even when it changes nothing, and a small layer feels each)."""
    return a if a.ndim == 2 else a.reshape(rows, columns)


def _forward(run: _Run, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             activation: Optional[str] = None, preact: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = act(x·weightᵀ + bias): one GEMM (NT: weight's transpose a view, which the kernels take as a flag)
    whose epilogue applies the activation and, when preact (a tensor of y's shape) is given, writes the
    pre-activation into it."""
    out_features, in_features = weight.shape
    lead = x.shape[:-1]
    rows = math.prod(lead)
    y = _empty((*lead, out_features), x)
    with run.scope():
        array = run.array
        run.backend.gemm(_matrix(array(x), rows, in_features), array(weight).T, _matrix(array(y), rows, out_features),
                         alpha=1.0, beta=0.0, bias=None if bias is None else array(bias), activation=activation,
                         preact=None if preact is None else _matrix(array(preact), rows, out_features))
    return y


def _gradients(run: _Run, dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_dx: bool,
               need_dweight: bool, need_dbias: bool, activation: Optional[str] = None,
               saved: Optional[torch.Tensor] = None
               ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dx, dweight, dbias), None where not needed: dx = dy·weight (NN), dweight = dyᵀ·x (TN, written in
    weight's own (out_features, in_features) layout, as autograd wants it for weight.grad),
    dbias = Σ_rows dy. Through an activation (saved: z, or y for relu) dy is first replaced by
    dz = dy ⊙ act'(z), computed with dbias = Σ_rows dz in one backend call."""
    out_features, in_features = weight.shape
    rows = math.prod(x.shape[:-1])
    dx = _empty(x.shape, x) if need_dx else None
    dweight = _empty((out_features, in_features), x) if need_dweight else None
    dbias = _empty((out_features,), x) if need_dbias else None
    if need_dx or need_dweight or need_dbias:
        with run.scope():
            array, backend = run.array, run.backend
            dy2 = _matrix(array(dy), rows, out_features)
            if activation is not None:
                dz = array(_empty((rows, out_features), x))
                backend.activation_grad(dy2, _matrix(array(saved), rows, out_features), dz,
                                        None if dbias is None else array(dbias), activation=activation, beta=0.0)
                dy2, need_dbias = dz, False
            if need_dx:
                backend.gemm(dy2, array(weight), _matrix(array(dx), rows, in_features), alpha=1.0, beta=0.0)
            if need_dweight:
                backend.gemm(dy2.T, _matrix(array(x), rows, in_features), array(dweight), alpha=1.0, beta=0.0)
            if need_dbias:
                backend.colsum(dy2, array(dbias), beta=0.0)
    return dx, dweight, dbias


def _preact(x: torch.Tensor, weight: torch.Tensor, keep: bool) -> Optional[torch.Tensor]:
    """A tensor for the pre-activation z (y's shape) when keep, else None."""
    return _empty((*x.shape[:-1], weight.shape[0]), x) if keep else None


def _differentiable_act_gradients(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                  bias: Optional[torch.Tensor], activation: str, needs: tuple[bool, ...],
                                  backend: Optional[str]) -> tuple[Optional[torch.Tensor], ...]:
    """The backward through the activation when it must itself be differentiable (create_graph=True):
    z recomputed by linear() (one more GEMM, only here) so that it carries its graph back to x, weight
    and bias, dz by torch's ops, then linear()'s differentiable backward (eager or the custom op)."""
    z = linear(x, weight, bias, backend=backend)
    dz = activation_gradient(activation, dy, z)
    need_dx, need_dweight, need_dbias = needs
    if torch.compiler.is_compiling() or not _eager(dz, x, weight):
        grads = _linear_backward(dz, x, weight, need_dx, need_dweight, need_dbias, backend)
        return tuple(g if need else None for g, need in zip(grads, needs))
    run = _resolve({"dy": dz, "x": x, "weight": weight}, backend)
    return _Gradients.apply(dz, x, weight, need_dx, need_dweight, need_dbias, run)


def _double_backward(ctx: Any, g_dx: Optional[torch.Tensor], g_dweight: Optional[torch.Tensor],
                     g_dbias: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
    """The backward of dx = dy·weight, dweight = dyᵀ·x, dbias = Σ_rows dy, written with linear() (which
    computes a·bᵀ) so that it is differentiable in turn. ctx holds (dy, x, weight), the gradients that
    were computed and the backend's name."""
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


# ----------------------------------------------------------------------------------------------------
# Eager: autograd.Functions, when nothing traces
# ----------------------------------------------------------------------------------------------------

class _Linear(torch.autograd.Function):
    """linear() in eager mode: the products called directly, with the call's backend resolved once.
    (forward takes ctx: an autograd.Function with a separate setup_context costs ~10 µs more a call.)"""

    @staticmethod
    def forward(ctx, x, weight, bias, run):
        ctx.save_for_backward(x, weight)
        ctx.run = run
        return _forward(run, x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: the gradients are differentiable in turn
            grads = _Gradients.apply(dy, x, weight, need_dx, need_dweight, need_dbias, ctx.run)
        else:
            grads = _gradients(ctx.run, dy, x, weight, need_dx, need_dweight, need_dbias)
        return (*grads, None)


class _Gradients(torch.autograd.Function):
    """The backward of _Linear, differentiable (double backward) through _double_backward."""

    @staticmethod
    def forward(ctx, dy, x, weight, need_dx, need_dweight, need_dbias, run):
        ctx.save_for_backward(dy, x, weight)
        ctx.computed = (need_dx, need_dweight, need_dbias)
        ctx.backend = run.name
        return _gradients(run, dy, x, weight, need_dx, need_dweight, need_dbias)

    backward = staticmethod(_double_backward)


class _LinearAct(torch.autograd.Function):
    """linear(activation=A) in eager mode: y = act(x·weightᵀ + bias) in one GEMM, keeping z for backward
    (y for relu); backward fused (_gradients through the activation), or differentiable under create_graph."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation, keep_preact, run):
        z = _preact(x, weight, keep_preact)
        y = _forward(run, x, weight, bias, activation, z)
        ctx.save_for_backward(x, weight, bias, y if activation == "relu" else z)
        ctx.activation, ctx.run = activation, run
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True
            grads = _differentiable_act_gradients(dy, x, weight, bias, ctx.activation, needs, ctx.run.name)
        else:
            grads = _gradients(ctx.run, dy, x, weight, *needs, ctx.activation, saved)
        return (*grads, None, None, None)


# ----------------------------------------------------------------------------------------------------
# Traced: the custom ops, for torch.compile (and meta or fake tensors)
# ----------------------------------------------------------------------------------------------------

@torch.library.custom_op("linear::linear", mutates_args=())
def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            backend: Optional[str]) -> torch.Tensor:
    return _forward(_resolve({"x": x, "weight": weight, "bias": bias}, backend), x, weight, bias)


@_linear.register_fake
def _(x, weight, bias, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("linear::linear_backward", mutates_args=())
def _linear_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_dx: bool, need_dweight: bool,
                     need_dbias: bool, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); a gradient not asked for is an empty tensor (a custom op returns tensors)."""
    run = _resolve({"dy": dy, "x": x, "weight": weight}, backend)
    grads = _gradients(run, dy, x, weight, need_dx, need_dweight, need_dbias)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@_linear_backward.register_fake
def _linear_backward_fake(dy, x, weight, need_dx, need_dweight, need_dbias, backend):
    return (x.new_empty(x.shape) if need_dx else x.new_empty(0),
            weight.new_empty(weight.shape) if need_dweight else x.new_empty(0),
            x.new_empty((weight.shape[0],)) if need_dbias else x.new_empty(0))


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


_linear_backward.register_autograd(_double_backward, setup_context=_setup_backward_context)


@torch.library.custom_op("linear::linear_act", mutates_args=())
def _linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
                keep_preact: bool, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, z): z is empty unless keep_preact (a custom op returns tensors)."""
    z = _preact(x, weight, keep_preact)
    y = _forward(_resolve({"x": x, "weight": weight, "bias": bias}, backend), x, weight, bias, activation, z)
    return y, x.new_empty(0) if z is None else z


@_linear_act.register_fake
def _(x, weight, bias, activation, keep_preact, backend):
    shape = (*x.shape[:-1], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape if keep_preact else 0)


@torch.library.custom_op("linear::linear_act_backward", mutates_args=())
def _linear_act_backward(dy: torch.Tensor, saved: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         activation: str, need_dx: bool, need_dweight: bool, need_dbias: bool,
                         backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) through the activation; a gradient not asked for is an empty tensor. Not
    differentiable itself: the create_graph path does not call it."""
    run = _resolve({"dy": dy, "saved": saved, "x": x, "weight": weight}, backend)
    grads = _gradients(run, dy, x, weight, need_dx, need_dweight, need_dbias, activation, saved)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@_linear_act_backward.register_fake
def _(dy, saved, x, weight, activation, need_dx, need_dweight, need_dbias, backend):
    return _linear_backward_fake(dy, x, weight, need_dx, need_dweight, need_dbias, backend)


def _setup_act_context(ctx, inputs, output):
    x, weight, bias, activation, keep_preact, backend = inputs
    y, z = output
    ctx.mark_non_differentiable(z)  # internal: the create_graph path recomputes z with its graph
    ctx.save_for_backward(x, weight, bias, y if activation == "relu" else z)
    ctx.activation, ctx.backend = activation, backend


def _act_backward(ctx, dy, _):
    x, weight, bias, saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    if torch.is_grad_enabled():  # create_graph=True
        grads = _differentiable_act_gradients(dy, x, weight, bias, ctx.activation, needs, ctx.backend)
    else:
        if saved.shape != dy.shape:  # called with keep_preact=False yet differentiated: z computed again
            saved = _linear(x, weight, bias, ctx.backend)
        grads = _linear_act_backward(dy, saved, x, weight, ctx.activation, *needs, ctx.backend)
    return (*(g if need else None for g, need in zip(grads, needs)), None, None, None)


_linear_act.register_autograd(_act_backward, setup_context=_setup_act_context)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------

def _autocast(t: Optional[torch.Tensor], device_type: str) -> Optional[torch.Tensor]:
    if t is None or t.dtype not in _AUTOCAST_CASTS:
        return t
    return t.to(torch.get_autocast_dtype(device_type))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
           activation: Optional[str] = None, backend: Optional[str] = None) -> torch.Tensor:
    """y = act(x·weightᵀ + bias), as torch.nn.functional.linear followed by the activation: x (..., F),
    weight (D, F), bias (D,) or None; activation None, "relu", "gelu", "gelu_tanh" (F.gelu's
    approximate="tanh") or "silu", applied in the GEMM's epilogue.

    Differentiable in x, weight and bias. backend=None: "cuda" for CUDA tensors; for CPU tensors
    $LINEAR_BACKEND, else "numpy" (read at each call, also in a compiled graph). Inside torch.autocast
    for the tensors' device type, x, weight and bias are first cast to the autocast dtype (float64 ones
    are left alone), as torch casts them for nn.Linear; the casts are ordinary differentiable torch ops.
    """
    device = x.device.type if isinstance(x, torch.Tensor) else None
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        x, weight, bias = (_autocast(t, device) for t in (x, weight, bias))
    _check(x, weight, bias)
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None; got {backend!r}")
    if activation is not None:
        check_activation(activation)
    if torch.compiler.is_compiling() or not _eager(x, weight, bias):
        if activation is None:
            return _linear(x, weight, bias, backend)
        return _linear_act(x, weight, bias, activation, _keep_preact(x, weight, bias, activation), backend)[0]
    return _resolve({"x": x, "weight": weight, "bias": bias}, backend).linear(x, weight, bias, activation)


def _keep_preact(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> bool:
    """Whether the GEMM writes z beside y: only when a backward will need it (for relu, y serves)."""
    return activation != "relu" and torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or bias is not None and bias.requires_grad)

_PLAIN = (torch.Tensor, nn.Parameter)


def _eager(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Plain CPU or CUDA tensors: the eager path. Tensor subclasses (fake, functional, DTensor) and meta
    tensors take the custom op, which tracing knows."""
    return (type(x) in _PLAIN and type(weight) in _PLAIN and (bias is None or type(bias) in _PLAIN)
            and (x.is_cpu or x.is_cuda))  # on a plain tensor these say what x.device.type does, ~0.2 µs sooner


class Linear(nn.Linear):
    """torch.nn.Linear computed by our kernels: the same parameters (weight (out_features, in_features),
    bias), initialisation, state_dict keys and repr; forward is
    linear(x, weight, bias, activation=activation, backend=backend).

    It is an nn.Linear subclass, so checkpoints load both ways and isinstance(m, nn.Linear) holds. With an
    activation it computes nn.Linear followed by that activation (nn.ReLU, nn.GELU, nn.SiLU) in one kernel.
    """

    activation: Optional[str] = None  # the class default, for layers pickled before activations existed

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Optional[torch.dtype] = None, *, activation: Optional[str] = None,
                 backend: Optional[str] = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.activation = check_activation(activation)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation=self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        return (super().extra_repr() + ("" if self.activation is None else f", activation={self.activation!r}")
                + ("" if self.backend is None else f", backend={self.backend!r}"))


def _fusable_activation(module: nn.Module) -> Optional[str]:
    """The activation name of an nn.ReLU, nn.GELU (either approximation) or nn.SiLU module (exactly those
    types: a subclass may compute something else), else None."""
    kind = type(module)
    if kind is nn.ReLU:
        return "relu"
    if kind is nn.SiLU:
        return "silu"
    if kind is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return None


def _replacement(old: nn.Linear, activation: Optional[str], backend: Optional[str]) -> Linear:
    # Built on the meta device (nothing allocated or initialised), then given old's Parameter objects.
    new = Linear(old.in_features, old.out_features, old.bias is not None, device="meta", activation=activation,
                 backend=backend)
    new.weight = old.weight
    if old.bias is not None:
        new.bias = old.bias
    return new.train(old.training)


def swap_linear(module: nn.Module, *, fuse_activations: bool = True, backend: Optional[str] = None) -> nn.Module:
    """Replace every torch.nn.Linear inside `module` by a Linear holding the very same Parameter objects
    (values, device, dtype, requires_grad), so an optimizer built before the swap keeps working.

    fuse_activations=True: inside an nn.Sequential (or a subclass that keeps its forward), an nn.Linear
    directly followed by nn.ReLU, nn.GELU (approximate "none" or "tanh") or nn.SiLU becomes one Linear with
    that activation, and the activation module is replaced by nn.Identity rather than removed, so the
    container's indices and the model's state_dict keys stay what they were.

    Returns `module`, changed in place (or a new Linear when `module` is itself an nn.Linear). A layer
    that appears under several names is replaced everywhere (by one Linear for each activation it is
    fused with, all on its parameters). Only modules whose type is exactly nn.Linear are replaced:
    subclasses (e.g. parametrized layers, or attention's out_proj, whose forward is never called) may
    compute something else and are left as they are. Not carried over: hooks registered on the old
    modules (the fused activation module's included) and attributes set on them by hand.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if type(module) is nn.Linear:
        return _replacement(module, None, backend)
    # keyed by (id, activation); holds the old module alive, so its id stays its own
    replaced: dict[tuple[int, Optional[str]], tuple[nn.Linear, Linear]] = {}
    for parent in list(module.modules()):
        # parent._modules, not named_children(): that skips a module's second name in the same parent
        children = list(parent._modules.items())
        sequential = fuse_activations and isinstance(parent, nn.Sequential) and (
            type(parent).forward is nn.Sequential.forward)
        for index, (name, child) in enumerate(children):
            if type(child) is not nn.Linear:
                continue
            activation = None
            if sequential and index + 1 < len(children):
                activation = _fusable_activation(children[index + 1][1])
            key = (id(child), activation)
            if key not in replaced:
                replaced[key] = (child, _replacement(child, activation, backend))
            setattr(parent, name, replaced[key][1])
            if activation is not None:
                setattr(parent, children[index + 1][0], nn.Identity())
    return module
