"""The one interface every backend implements, and the one every kernel runtime implements.

A backend only multiplies and reduces; the equations of the layer live in linear.functional.

    Backend.gemm(a, b, c, alpha=, beta=, bias=, activation=None, preact=None)
        z = alpha * a @ b + beta * c (+ bias[None, :] when bias is given)
        c[...] = act(z);  preact[...] = z when preact is given
        a is (M, K), b is (K, N), c is (M, N); or stacks of them: a, b and c with the same leading
        (batch) dimensions, c's matrices computed independently. A transpose reaches the backend one
        way: as a transposed view (x.T, swapaxes), never a flag; a kernel backend's plan derives the
        kernel's transpose flags from the strides (plan.as_operand).
        activation: a name of linear.activations.ACTIVATIONS, applied to z in the accumulator dtype.
    Backend.colsum(a, out, beta=)
        out[...] = a.sum(axis=0) + beta * out, in a fixed (deterministic) order.
    Backend.activation_grad(dy, z, dz, db, activation=, beta=)
        dz[...] = dy ⊙ act'(z) (linear.activations.gradient, in the accumulator dtype);
        db[...] = Σ_rows of those products + beta * db, in a fixed order, unless db is None.

What linear.functional guarantees to a backend (so backends never re-check it):
- every array is an array of `backend.xp`: a, b, c 2-D, or all three with the same batch dimensions
  before their matrices (a and b possibly broadcast views, stride 0); bias and out 1-D;
- all arrays share one dtype (float16, bfloat16, float32 or float64); half types accumulate in float32;
- c, out, preact, dz and db are C-contiguous, writable and overlap no input (preact has c's shape,
  dz that of dy and z, db is (N,) for (M, N) dy); activation is never None in activation_grad;
- a and b may be any strided view (transposed, Fortran-ordered, negative strides); the backend maps
  views to leading dimensions (and, for the kernels, transpose flags) and copies only when no such
  mapping exists;
- when beta == 0 the contents of c / out are ignored (they may be NaN); M, N, K may be zero.

A kernel backend (cuda, emulate) is the same class with a different Runtime: the runtime compiles a
kernel source from kernels/ and launches a named template instantiation of it:

    runtime.function(source, name, options=())(grid, block, args, shared_mem=0)
    runtime.compute_capability()    e.g. 90: tensor-core kernels run from 80 on
    runtime.device_limits()         device.DeviceLimits: SMs, registers, shared memory, grid (the plan)
    runtime.device_id()             the current device's number (a key of the plan cache)

where source is a file name in kernels/ ("gemm.cu"), name an instantiation ("gemm<float, ...>"),
grid and block 3-tuples, and args a tuple of `runtime.xp` arrays (passed as pointers) and numpy
scalars (np.int32, np.int64, np.float32, np.float64: passed by value with that exact type).
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Protocol


class Backend(Protocol):
    name: str
    xp: ModuleType

    def gemm(self, a: Any, b: Any, c: Any, *, alpha: float, beta: float, bias: Any = None,
             activation: str | None = None, preact: Any = None) -> None: ...

    def colsum(self, a: Any, out: Any, *, beta: float) -> None: ...

    def activation_grad(self, dy: Any, z: Any, dz: Any, db: Any, *, activation: str, beta: float) -> None: ...


KernelFunction = Callable[..., None]


class Runtime(Protocol):
    name: str
    xp: ModuleType

    def function(self, source: str, name: str, options: tuple[str, ...] = ()) -> KernelFunction:
        """The kernel, compiled with these extra compiler flags (a family's arch_flags)."""
        ...

    def compute_capability(self) -> int:
        """The current device's compute capability as an int (90 for 9.0): the plan's choice of kernels."""
        ...

    def device_limits(self) -> Any:
        """The current device's device.DeviceLimits (SM count, registers, shared memory, threads, grid,
        clock, bandwidth): what the launch plan and its cost model plan for."""
        ...

    def device_id(self) -> int:
        """The current device's number: a kernel function, and so a cached plan, belongs to one device
        (its compute capability and limits are the device's)."""
        ...


class BackendUnavailable(RuntimeError):
    """The named backend cannot run on this machine (the message says why): raised by a runtime that
    finds what it needs missing, and by the registry's get_backend."""
