"""linear.torch: the custom op against torch.nn.functional.linear (values and gradients, every dtype, on the
numpy and emulate backends), gradcheck, torch.compile, Linear and swap_linear, autocast, DDP, the error
messages, and the example that README.md carries. CUDA tests run under -m gpu on a GPU machine."""
from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import json
import os
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import CI, HOST_BACKENDS, load_example

# The [test] extra installs torch; under LINEAR_CI=1 its absence is an import error, never a skip.
torch = importlib.import_module("torch") if CI else pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import linear  # noqa: E402
import linear.torch as lt  # noqa: E402
from linear.backends import BackendUnavailable, available_backends  # noqa: E402
from linear.testing import TOLERANCE, relative_error  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "torch_mlp.py"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    """relative_error in float64 (inf when out holds a NaN: a result element left unwritten)."""
    return relative_error(out.detach().cpu().double().numpy(), ref.detach().cpu().double().numpy())


def tol(dtype: torch.dtype) -> float:
    return TOLERANCE[str(dtype).removeprefix("torch.")]


@pytest.fixture
def poisoned(monkeypatch):
    """Every result tensor linear.torch allocates starts full of NaN, so an element the kernels never
    write shows as a NaN (relative_error is then inf)."""
    def empty(shape, like):
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    monkeypatch.setattr(lt, "_empty", empty)


# ----------------------------------------------------------------------------------------------------
# Values and gradients
# ----------------------------------------------------------------------------------------------------

# (name, x's shape, bias, non-contiguous x and weight). F = 5 features in, D = 7 out.
CASES = [
    ("1-D x", (5,), True, False),
    ("batch", (9, 5), True, False),
    ("leading dims, no bias", (2, 3, 5), False, False),
    ("sliced x, transposed weight", (4, 5), True, True),
    ("empty batch", (0, 5), True, False),
]


def make(shape, has_bias, strided, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out_features, in_features = 7, shape[-1]

    def randn(*size):  # converted before any view is taken: .to() would make a sliced view contiguous
        return torch.randn(*size, generator=g).to(device, dtype)
    if strided:  # x every other column of a wider tensor; weight the transposed view of an (F, D) tensor
        x = randn(*shape[:-1], 2 * in_features)[..., ::2]
        weight = randn(in_features, out_features).t()
        assert not x.is_contiguous() and not weight.is_contiguous()
    else:
        x, weight = randn(*shape), randn(out_features, in_features)
    bias = randn(out_features) if has_bias else None
    return [None if t is None else t.requires_grad_() for t in (x, weight, bias)]


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_torch(case, dtype, backend, poisoned):
    _, shape, has_bias, strided = case
    x, weight, bias = make(shape, has_bias, strided, dtype, seed=len(shape) + 10 * DTYPES.index(dtype))
    inputs = [t.detach().clone() for t in (x, weight, bias) if t is not None]
    y = lt.linear(x, weight, bias, backend=backend)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(y, [t for t in (x, weight, bias) if t is not None], dy)

    # the reference: torch's own linear in float64 on the same (rounded) values
    x64, w64, b64 = (None if t is None else t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.linear(x64, w64, b64)
    refs = torch.autograd.grad(y64, [t for t in (x64, w64, b64) if t is not None], dy.double())

    assert_matches(y, grads, y64, refs, dtype)
    assert_unchanged(inputs, (x, weight, bias))


def assert_matches(y, grads, y64, refs, dtype):
    """y and the gradients (dx, dweight, dbias) against their float64 references: dtype, shape, and relative
    error within the dtype's tolerance."""
    assert y.dtype == dtype and y.shape == y64.shape
    assert rel(y, y64) <= tol(dtype)
    for grad, ref, name in zip(grads, refs, ("dx", "dweight", "dbias")):
        assert grad.dtype == dtype and grad.shape == ref.shape, name
        assert rel(grad, ref) <= tol(dtype), name


def assert_unchanged(copies, tensors):
    """Nothing the user passes is modified: each given tensor (None skipped) equals its copy from before."""
    for before, after in zip(copies, (t for t in tensors if t is not None)):
        assert torch.equal(before, after.detach())


def test_the_poison_shows():
    """Negative control for the poisoned fixture: a result left unwritten is an infinite error."""
    assert rel(torch.full((3,), float("nan")), torch.ones(3)) == float("inf")


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("has_bias", [True, False])
def test_gradcheck_float64(backend, has_bias):
    x, weight, bias = make((2, 3, 5), has_bias, False, torch.float64, seed=3)
    args = (x, weight) if bias is None else (x, weight, bias)
    assert torch.autograd.gradcheck(lambda *a: lt.linear(*a, backend=backend), args)


@pytest.mark.parametrize("backend, has_bias", [(name, True) for name in HOST_BACKENDS] + [("numpy", False)])
def test_gradgradcheck_float64(backend, has_bias):
    """Gradients of gradients (the backward op's own backward), as gradient penalties need."""
    x, weight, bias = make((2, 3, 5), has_bias, False, torch.float64, seed=13)
    args = (x, weight) if bias is None else (x, weight, bias)
    assert torch.autograd.gradgradcheck(lambda *a: lt.linear(*a, backend=backend), args)


def test_gradgradcheck_with_only_some_inputs_differentiable():
    x, weight, _ = make((3, 5), False, False, torch.float64, seed=14)
    assert torch.autograd.gradgradcheck(lambda w: lt.linear(x.detach(), w, backend="numpy"), (weight,))
    assert torch.autograd.gradgradcheck(lambda x: lt.linear(x, weight.detach(), backend="numpy"), (x,))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_gradcheck_catches_a_wrong_gradient(backend, monkeypatch):
    """Negative control: gradcheck fails once the bias gradient is wrong: doubled by the autograd.Function's
    backward (emulate), or lost by a product that adds the bias outside torch's autograd (numpy, whose CPU
    tensors torch's autograd differentiates)."""
    from linear.backends.torch_cpu import TorchCpuBackend
    real = lt._gradients

    def doubled_dbias(*args):
        dx, dweight, dbias = real(*args)
        return dx, dweight, 2 * dbias
    monkeypatch.setattr(lt, "_gradients", doubled_dbias)
    monkeypatch.setattr(TorchCpuBackend, "product",
                        lambda self, a, b, bias, activation: torch.mm(a, b) + bias.detach())
    args = make((4, 5), True, False, torch.float64, seed=4)
    assert not torch.autograd.gradcheck(lambda *a: lt.linear(*a, backend=backend), args, raise_exception=False)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_the_weight_gradient_of_a_square_layer_is_not_transposed(backend, poisoned):
    """dweight = dyᵀ·x has weight's (out_features, in_features) shape; with a square weight its transpose
    xᵀ·dy has that shape too, so only the values tell them apart (the 5 -> 7 cases above fail on the shape)."""
    g = torch.Generator().manual_seed(15)
    x, weight, bias, dy = (torch.randn(*shape, dtype=torch.float64, generator=g) for shape in [(9, 6), (6, 6), (6,), (9, 6)])
    weight.requires_grad_()
    lt.linear(x, weight, bias, backend=backend).backward(dy)
    reference = dy.t() @ x
    assert rel(weight.grad, reference) <= 1e-12
    assert rel(reference.t(), reference) > 0.1  # the transposed gradient would be far off


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_the_eager_path_calls_no_custom_op_and_converts_each_tensor_once(backend, monkeypatch):
    """Plain tensors take the autograd.Function: no custom-op dispatch, the backend resolved once per call
    (forward and backward share it); on emulate each tensor viewed as an array once per product, on numpy
    none (the tensors go to torch's own kernels as they are)."""
    resolved, custom, viewed = [], [], []
    real_resolve, real_array = lt._resolve, lt._Host.array
    monkeypatch.setattr(lt, "_resolve", lambda *a: resolved.append(a) or real_resolve(*a))
    monkeypatch.setattr(lt, "_linear", lambda *a: custom.append(a))
    monkeypatch.setattr(lt._Host, "array", staticmethod(lambda t: viewed.append(t.shape) or real_array(t)))
    x, weight, bias = make((4, 5), True, False, torch.float32, seed=18)
    lt.linear(x, weight, bias, backend=backend).sum().backward()
    assert len(resolved) == 1 and not custom
    # x, weight, bias, y; then dy, weight, dx, x, dweight, dbias
    assert len(viewed) == (4 + 6 if backend == "emulate" else 0)


def test_opcheck_schema_fake_and_autograd_registration():
    """torch.library.opcheck: the fake impls agree with the real ones (shapes, strides), the autograd
    registration and AOT dispatch (what torch.compile relies on) work."""
    x, weight, bias = make((3, 5), True, False, torch.float32, seed=5)
    torch.library.opcheck(torch.ops.linear.linear.default, (x, weight, bias, "numpy"))
    dy = torch.randn(3, 7, requires_grad=True)
    for needs in [(True, True, True), (False, True, False)]:
        torch.library.opcheck(torch.ops.linear.linear_backward.default, (dy, x, weight, *needs, "numpy"))


def test_only_the_needed_gradients_are_computed(monkeypatch):
    """The autograd.Function's backward asks the backend for the gradients autograd needs, no more (on
    emulate: on numpy, CPU tensors are differentiated by torch's autograd)."""
    calls = []
    real = lt._gradients

    def spy(run, dy, x, weight, need_dx, need_dweight, need_dbias):
        calls.append((need_dx, need_dweight, need_dbias))
        return real(run, dy, x, weight, need_dx, need_dweight, need_dbias)
    monkeypatch.setattr(lt, "_gradients", spy)
    x, weight, bias = make((4, 5), True, False, torch.float32, seed=6)
    lt.linear(x.detach(), weight, bias.detach(), backend="emulate").sum().backward()
    assert calls == [(False, True, False)] and weight.grad is not None


def backend_calls(monkeypatch, backend_class):
    """A list that records each gemm, colsum and activation_grad call of backend_class as (method, the
    types of its array arguments), and then runs it."""
    calls = []

    def spy(method, real):
        def call(self, *arrays, **kwargs):
            calls.append((method, {type(a) for a in arrays if a is not None}))
            return real(self, *arrays, **kwargs)
        return call
    for method in ("gemm", "colsum", "activation_grad", "product"):
        if hasattr(backend_class, method):
            monkeypatch.setattr(backend_class, method, spy(method, getattr(backend_class, method)))
    return calls


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_tensors_on_the_numpy_backend_run_on_torchs_own_kernels(dtype, activation, monkeypatch, poisoned):
    """backend="numpy" (the default) on CPU tensors: every product is a call of the torch_cpu backend on the
    tensors themselves (torch's BLAS, torch's thread count), none reaches numpy's BLAS, and the values are
    torch's within the dtype's tolerance. Negative control: numpy arrays through linear.forward and
    linear.backward still go to the numpy backend, and never to torch's kernels."""
    from linear.backends.numpy import NumpyBackend
    from linear.backends.torch_cpu import TorchCpuBackend
    on_torch, on_numpy = backend_calls(monkeypatch, TorchCpuBackend), backend_calls(monkeypatch, NumpyBackend)
    x, weight, bias = make((2, 3, 5), True, True, dtype, seed=41)
    y = lt.linear(x, weight, bias, activation=activation, backend="numpy")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(42)).to(dtype)
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.linear(x64, w64, b64)
    y64 = y64 if activation is None else F.gelu(y64)
    refs = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    assert rel(y, y64) <= tol(dtype)
    for grad, ref in zip(grads, refs):
        assert grad.dtype == dtype and rel(grad, ref) <= tol(dtype)
    assert [method for method, _ in on_torch] == ["product"]  # y (and z); torch's autograd differentiates it
    assert all(issubclass(kind, torch.Tensor) for _, types in on_torch for kind in types)
    assert not on_numpy

    on_torch.clear()
    a, w, b = (t.detach().float().numpy() for t in (x.reshape(6, 5), weight.t(), bias))
    linear.forward(a, w, b)
    linear.backward(np.ones((6, 7), np.float32), a, w)
    assert [method for method, _ in on_numpy] == ["gemm", "gemm", "gemm", "colsum"] and not on_torch


def torch_cpu_case(dtype, seed, m=5, k=6, n=7):
    """a (m, k) as a transposed view, b (k, n), c, bias and preact as float64 tensors rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *size: torch.randn(*size, generator=g, dtype=torch.float64).to(dtype)
    return randn(k, m).t(), randn(k, n), randn(m, n), randn(n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (1.0, 1.0), (0.5, 2.0), (-2.0, 0.0)])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_the_torch_cpu_backend_computes_what_the_interface_says(dtype, alpha, beta, has_bias, activation):
    """Every path of TorchCpuBackend.gemm (straight into c, c an addend, the bias as addmm's addend, a cast
    for the half types, the activation and preact after): c = act(alpha·a·b + beta·c + bias), preact the sum
    before the activation, against float64; c NaN-poisoned where beta == 0 (its contents must be ignored)."""
    from linear.backends.torch_cpu import TorchCpuBackend
    a, b, c0, bias = torch_cpu_case(dtype, seed=43)
    c = torch.full_like(c0, float("nan")) if beta == 0 else c0.clone()
    preact = None if activation is None else torch.full_like(c0, float("nan"))
    inputs = [t.clone() for t in (a, b, bias)]
    TorchCpuBackend().gemm(a, b, c, alpha=alpha, beta=beta, bias=bias if has_bias else None,
                           activation=activation, preact=preact)
    z = alpha * a.double() @ b.double() + beta * c0.double() + (bias.double() if has_bias else 0)
    expected = {None: z, "relu": torch.relu(z), "silu": F.silu(z)}[activation]
    assert c.dtype == dtype and rel(c, expected) <= tol(dtype)
    if preact is not None:
        assert rel(preact, z) <= tol(dtype)
    assert all(torch.equal(before, after) for before, after in zip(inputs, (a, b, bias)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_the_torch_cpu_backend_colsum_and_activation_gradient(dtype, beta):
    """colsum: out = Σ_rows a + beta·out; activation_grad: dz = dy ⊙ act'(z), db = Σ_rows dz + beta·db
    (gelu_tanh here), against float64 references; out and db NaN-poisoned where beta == 0."""
    from linear.backends.torch_cpu import TorchCpuBackend
    g = torch.Generator().manual_seed(44)
    dy, z, db0 = (torch.randn(*size, generator=g, dtype=torch.float64).to(dtype) for size in [(6, 7), (7, 6), (7,)])
    z = z.t()  # a transposed view: any strides will do
    poisoned_or_given = lambda: torch.full_like(db0, float("nan")) if beta == 0 else db0.clone()
    out = poisoned_or_given()
    TorchCpuBackend().colsum(dy, out, beta=beta)
    assert rel(out, dy.double().sum(0) + beta * db0.double()) <= tol(dtype)
    dz, db = torch.full_like(dy, float("nan")), poisoned_or_given()
    TorchCpuBackend().activation_grad(dy, z, dz, db, activation="gelu_tanh", beta=beta)
    z64 = z.double().requires_grad_()
    (expected,) = torch.autograd.grad(F.gelu(z64, approximate="tanh"), z64, dy.double())
    assert dz.dtype == dtype and rel(dz, expected) <= tol(dtype)
    assert rel(db, expected.sum(0) + beta * db0.double()) <= tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("has_bias", [False, True])
def test_the_torch_cpu_backends_product(dtype, has_bias):
    """product (a·b + bias into a new tensor), what linear.torch runs on CPU tensors without an activation:
    a's dtype, against float64, inputs unchanged."""
    from linear.backends.torch_cpu import TorchCpuBackend
    a, b, _, bias = torch_cpu_case(dtype, seed=45)
    inputs = [t.clone() for t in (a, b, bias)]
    c = TorchCpuBackend().product(a, b, bias if has_bias else None)
    assert c.dtype == dtype and rel(c, a.double() @ b.double() + (bias.double() if has_bias else 0)) <= tol(dtype)
    assert all(torch.equal(before, after) for before, after in zip(inputs, (a, b, bias)))


def test_the_torch_cpu_backend_tests_can_fail():
    """Negative control for the two tests above: the interface's sums with the addend dropped, or the
    bias added twice, are far outside every tolerance."""
    a, b, c0, bias = torch_cpu_case(torch.float32, seed=43)
    z = a.double() @ b.double() + c0.double() + bias.double()
    assert rel(a @ b + bias, z) > 0.1 and rel(a @ b + c0 + 2 * bias, z) > 0.1


def test_meta_tensors_give_shapes_only():
    x = torch.empty(3, 2, 5, device="meta")
    weight = torch.empty(7, 5, device="meta", requires_grad=True)
    y = lt.linear(x, weight)
    assert (y.shape, y.device.type) == ((3, 2, 7), "meta")
    y.sum().backward()
    assert weight.grad.shape == weight.shape


# ----------------------------------------------------------------------------------------------------
# Errors and dispatch
# ----------------------------------------------------------------------------------------------------

def test_integer_dtype_is_refused_with_its_name_device_and_dtype():
    with pytest.raises(TypeError, match=r"x has shape \(2, 5\), dtype torch.int64 and device cpu"):
        lt.linear(torch.ones(2, 5, dtype=torch.int64), torch.randn(3, 5))


def test_mixed_dtypes_are_refused():
    with pytest.raises(TypeError, match="x torch.float32, weight torch.float64, bias torch.float32"):
        lt.linear(torch.randn(2, 5), torch.randn(3, 5, dtype=torch.float64), torch.randn(3))


def test_mixed_devices_are_refused():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():  # fake CUDA tensors exist on a CPU-only torch
        x, weight = torch.randn(2, 5), torch.randn(3, 5, device="cuda")
        with pytest.raises(ValueError, match="x on cpu, weight on cuda:0"):
            lt.linear(x, weight)


@pytest.mark.parametrize("x_shape, w_shape, b_shape, message", [
    ((2, 4), (3, 5), None, r"x must be \(\.\.\., 5\)"),
    ((2, 5), (5,), None, "weight must be 2-D"),
    ((2, 5), (3, 5), (5,), r"bias must be \(3,\)"),
    ((), (3, 5), None, r"x must be \(\.\.\., 5\)"),
])
def test_shape_mismatches_name_the_shapes(x_shape, w_shape, b_shape, message):
    bias = None if b_shape is None else torch.randn(b_shape)
    with pytest.raises(ValueError, match=message):
        lt.linear(torch.randn(x_shape), torch.randn(w_shape), bias)


def test_bad_arguments():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor; got ndarray"):
        lt.linear(torch.randn(2, 5), torch.randn(3, 5).numpy())
    with pytest.raises(ValueError, match="backend must be one of"):
        lt.linear(torch.randn(2, 5), torch.randn(3, 5), backend="cpu")
    with pytest.raises(TypeError, match="backend 'cuda' takes CUDA tensors; got x, weight on cpu"):
        lt.linear(torch.randn(2, 5), torch.randn(3, 5), backend="cuda")


def test_linear_backend_environment_variable_picks_the_cpu_backend(monkeypatch):
    chosen = []
    real = lt._resolve

    def spy(*args):
        run = real(*args)
        chosen.append(run.name)
        return run
    monkeypatch.setattr(lt, "_resolve", spy)
    other = "emulate" if "emulate" in HOST_BACKENDS else "numpy"
    monkeypatch.setenv("LINEAR_BACKEND", other)
    lt.linear(torch.randn(2, 5), torch.randn(3, 5))
    monkeypatch.delenv("LINEAR_BACKEND")
    lt.linear(torch.randn(2, 5), torch.randn(3, 5))
    assert chosen == [other, "numpy"]


def test_bfloat16_without_ml_dtypes(monkeypatch):
    """numpy's bfloat16 is ml_dtypes': the emulate backend, which views tensors as numpy arrays, needs it
    and says so; the numpy backend runs CPU tensors on torch's own kernels and does not."""
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now raises ImportError
    x, weight = torch.randn(2, 5, dtype=torch.bfloat16), torch.randn(3, 5, dtype=torch.bfloat16)
    assert rel(lt.linear(x, weight, backend="numpy"), F.linear(x.double(), weight.double())) <= tol(torch.bfloat16)
    if "emulate" in HOST_BACKENDS:
        with pytest.raises(TypeError, match="bfloat16 tensors need the ml_dtypes package"):
            lt.linear(x, weight, backend="emulate")


class TestCudaDispatch:
    """Which backend CUDA tensors get, with fake CUDA tensors (the dispatch reads device and dtype only)."""

    @pytest.fixture
    def cuda_tensors(self):
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            return {"x": torch.randn(2, 5, device="cuda"), "weight": torch.randn(3, 5, device="cuda"), "bias": None}

    def test_without_a_cuda_backend_the_error_names_arguments_device_and_dtype(self, cuda_tensors, monkeypatch):
        def no_cuda(name):
            raise BackendUnavailable("backend 'cuda' is unavailable: no GPU here")
        monkeypatch.setattr(lt, "get_backend", no_cuda)
        with pytest.raises(BackendUnavailable, match="x, weight on cuda:0 with dtype torch.float32, but backend "
                                                     "'cuda' is unavailable: no GPU here"):
            lt._resolve(cuda_tensors, None)

    def test_with_a_cuda_backend(self, cuda_tensors, monkeypatch):
        import types
        cuda = types.SimpleNamespace(name="cuda", xp=None)
        monkeypatch.setattr(lt, "get_backend", lambda name: cuda)
        for backend in (None, "cuda"):
            run = lt._resolve(cuda_tensors, backend)
            assert type(run) is lt._Device and run.backend is cuda and run.device == torch.device("cuda", 0)

    def test_a_cpu_backend_is_refused(self, cuda_tensors):
        with pytest.raises(TypeError, match="backend 'numpy' takes CPU tensors; got x, weight on cuda:0"):
            lt._resolve(cuda_tensors, "numpy")
        with pytest.raises(ValueError, match="backend must be one of"):
            lt._resolve(cuda_tensors, "cpu")

    def test_other_devices_are_refused(self):
        with pytest.raises(TypeError, match="runs on CPU and CUDA tensors; got x on meta"):
            lt._resolve({"x": torch.empty(2, device="meta")}, None)


class DeviceFakeCupy:
    """The CuPy that linear.torch's CUDA path meets, faked around test_cuda_runtime's FakeCupy (numpy
    arrays, kernels run by the emulator): it records each allocation (from CuPy's pool, or through the
    allocator hook that cupy.cuda.using_allocator installs), the streams made current, and any call that
    would synchronise with the host. Anything else it lacks raises AttributeError, so an unforeseen CuPy
    call fails the test too."""

    SYNCHRONISING = ("synchronize", "deviceSynchronize", "streamSynchronize", "asnumpy")

    def __init__(self, emulator):
        from test_cuda_runtime import H100_ATTRIBUTES, FakeCupy
        self.module = FakeCupy(emulator)
        self.events: list[tuple] = []
        self.allocator = None
        fake, record = self, self.events.append

        class Device:
            id, compute_capability, attributes = 0, "90", H100_ATTRIBUTES

            def __init__(self, index=None):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

            def synchronize(self):
                record(("sync", "Device.synchronize"))

        class Stream:
            @classmethod
            def from_external(cls, stream):  # CuPy 14: any object with the CUDA stream protocol
                version, handle = stream.__cuda_stream__()
                record(("stream", version, handle))
                return cls()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

            def synchronize(self):
                record(("sync", "Stream.synchronize"))

        @contextlib.contextmanager
        def using_allocator(allocate):
            fake.allocator = allocate
            try:
                yield
            finally:
                fake.allocator = None

        cuda = self.module.cuda
        cuda.Device, cuda.Stream, cuda.using_allocator = Device, Stream, using_allocator
        cuda.UnownedMemory = lambda ptr, size, owner, device_id: types.SimpleNamespace(ptr=ptr, size=size, owner=owner)
        cuda.MemoryPointer = lambda memory, offset: types.SimpleNamespace(memory=memory, offset=offset)
        cuda.runtime.deviceSynchronize = lambda: record(("sync", "deviceSynchronize"))
        cuda.runtime.streamSynchronize = lambda stream: record(("sync", "streamSynchronize"))
        module = self.module
        module.asnumpy = lambda a, *args, **kwargs: record(("sync", "asnumpy")) or np.asarray(a)
        for name in ("empty", "zeros", "empty_like", "ascontiguousarray", "array"):
            setattr(module, name, self._allocating(getattr(np, name)))

    def _allocating(self, make):
        def allocate(*args, **kwargs):
            a = make(*args, **kwargs)
            if make is np.ascontiguousarray and a is args[0]:  # already contiguous: no copy, no allocation
                return a
            if self.allocator is None:
                self.events.append(("pool", a.nbytes))
            else:
                self.allocator(a.nbytes)
                self.events.append(("hook", a.nbytes))
            return a
        return allocate


@pytest.mark.skipif("emulate" not in HOST_BACKENDS, reason="runs the kernels on the emulator")
def test_the_cuda_path_allocates_from_torch_on_torchs_stream_and_never_synchronises(monkeypatch, poisoned):
    """linear.torch's CUDA path (_Device), with CPU tensors standing in for CUDA ones and a fake CuPy: every
    allocation CuPy makes in forward and backward (the column sum's partials at least) goes through the
    hook to torch.empty on the tensors' device; launches run inside torch's current stream; nothing
    synchronises. Negative control: the same product outside the call's scope allocates from the pool."""
    from linear.backends.cuda import CupyRuntime
    from linear.backends.emulate import EmulatorRuntime
    from linear.backends.kernel import KernelBackend
    fake = DeviceFakeCupy(EmulatorRuntime())
    monkeypatch.setitem(sys.modules, "cupy", fake.module)
    run = lt._Device(KernelBackend(CupyRuntime()), torch.device("cpu"))
    monkeypatch.setattr(lt, "_resolve", lambda tensors, backend: run)
    assert hasattr(torch.cuda.Stream, "__cuda_stream__")  # what CuPy's Stream.from_external reads
    torch_stream = types.SimpleNamespace(__cuda_stream__=lambda: (0, 1234))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: torch_stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: fake.events.append(("sync", "torch.cuda.synchronize")))
    buffers = []
    real_empty = torch.empty

    def torch_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if kwargs.get("dtype") is torch.uint8:
            buffers.append(t.numel())
        return t
    monkeypatch.setattr(torch, "empty", torch_empty)

    x, weight, bias = make((33, 5), True, False, torch.float32, seed=22)
    y = lt.linear(x, weight, bias)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(23))
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.linear(x64, w64, b64)
    assert rel(y, y64) <= tol(torch.float32)
    for grad, ref in zip(grads, torch.autograd.grad(y64, (x64, w64, b64), dy.double())):
        assert rel(grad, ref) <= tol(torch.float32)

    allocations = [e for e in fake.events if e[0] in ("pool", "hook")]
    assert allocations and all(kind == "hook" for kind, _ in allocations), fake.events
    assert buffers == [size for _, size in allocations]  # each one a torch tensor of its size
    assert [e for e in fake.events if e[0] == "stream"] == [("stream", 0, 1234)] * 2  # forward, backward
    assert not [e for e in fake.events if e[0] == "sync"], fake.events

    fake.events.clear()
    a = np.ones((40, 7), np.float32)
    run.backend.colsum(a, np.empty(7, np.float32), beta=0.0)  # outside the scope: CuPy's own pool
    assert [e[0] for e in fake.events if e[0] in ("pool", "hook")] == ["pool"]


# ----------------------------------------------------------------------------------------------------
# Linear, swap_linear
# ----------------------------------------------------------------------------------------------------

def test_linear_initialises_like_nn_linear_and_checkpoints_load_both_ways():
    torch.manual_seed(7)
    ours = lt.Linear(5, 7)
    torch.manual_seed(7)
    theirs = nn.Linear(5, 7)
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"weight", "bias"}
    assert all(torch.equal(ours.state_dict()[k], theirs.state_dict()[k]) for k in ("weight", "bias"))

    x = torch.randn(4, 5)
    other = nn.Linear(5, 7)
    ours.load_state_dict(other.state_dict())  # nn.Linear -> ours
    assert rel(ours(x), other(x)) <= 1e-6
    back = nn.Linear(5, 7)
    ours.load_state_dict(lt.Linear(5, 7).state_dict())  # ours -> nn.Linear
    back.load_state_dict(ours.state_dict())
    assert rel(back(x), ours(x)) <= 1e-6


def test_linear_without_bias_and_with_dtype_and_backend():
    layer = lt.Linear(5, 7, bias=False, dtype=torch.float64, backend="numpy")
    assert layer.bias is None and layer.weight.dtype == torch.float64
    assert "backend='numpy'" in repr(layer)
    assert layer(torch.randn(3, 5, dtype=torch.float64)).shape == (3, 7)


def test_linear_pickles_and_deep_copies():
    layer = lt.Linear(5, 7, backend="numpy")
    x = torch.randn(3, 5)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert type(clone) is lt.Linear and clone.backend == "numpy"
        assert torch.equal(clone(x), layer(x))
        with torch.no_grad():
            clone.weight.add_(1.0)
        assert not torch.equal(clone.weight, layer.weight)  # its own parameters


def mlp(dtype=torch.float32):
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16, bias=False), nn.Tanh(),
                         nn.Linear(16, 3)).to(dtype)


def test_swap_linear_keeps_the_parameter_objects_and_a_prebuilt_optimizer():
    torch.manual_seed(8)
    model = mlp(torch.float64)
    model[2].weight.requires_grad_(False)  # a frozen layer stays frozen
    model.eval()
    before = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert lt.swap_linear(model) is model
    assert [type(m) for m in model] == [lt.Linear, nn.Tanh, lt.Linear, nn.Tanh, lt.Linear]
    assert all(a is b for a, b in zip(model.parameters(), before))
    assert not model[0].training and model[2].bias is None

    x, target = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    frozen = model[2].weight.clone()
    first = model[0].weight.detach().clone()
    F.mse_loss(model(x), target).backward()
    optimizer.step()
    assert model[2].weight.grad is None and torch.equal(model[2].weight, frozen)
    assert not torch.equal(model[0].weight, first)  # the optimizer built before the swap moved it


def test_swap_linear_shared_layers_subclasses_and_a_bare_layer():
    shared = nn.Linear(4, 4)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "attn": nn.MultiheadAttention(4, 2)})
    lt.swap_linear(model)
    assert type(model["a"]) is lt.Linear and model["b"][0] is model["a"]
    assert type(model["attn"].out_proj) is not lt.Linear  # an nn.Linear subclass: left alone
    bare = nn.Linear(4, 2)
    swapped = lt.swap_linear(bare, backend="numpy")
    assert type(swapped) is lt.Linear and swapped.weight is bare.weight and swapped.backend == "numpy"
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        lt.swap_linear(object())


def sgd_losses(model, steps=25, seed=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    target = torch.sin(x[:, :3] + x[:, 2:])  # a function the MLP can learn
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


def test_a_swapped_model_trains_with_the_same_loss_curve():
    torch.manual_seed(10)
    original = mlp()
    swapped = lt.swap_linear(copy.deepcopy(original))
    perturbed = copy.deepcopy(original)
    with torch.no_grad():
        perturbed[0].weight[0, 0] += 1e-2
    reference = sgd_losses(original)
    assert reference[-1] < 0.5 * reference[0]  # it does learn
    assert rel(sgd_losses(swapped), reference) <= 1e-5
    assert rel(sgd_losses(perturbed), reference) > 1e-4  # negative control: the tolerance sees a small change


def compiled_matches_eager(model: nn.Module, x: torch.Tensor, backward=lambda y: y.square().sum().backward()):
    """model compiled with fullgraph=True (aot_eager): its output for x, and the parameters' gradients after
    backward(output), equal the eager model's (1e-6). Returns the compiled model."""
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    outputs, grads = [], []
    for fn in (model, compiled):
        model.zero_grad()
        y = fn(x)
        backward(y)
        outputs.append(y)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert rel(outputs[1], outputs[0]) <= 1e-6
    assert all(rel(c, e) <= 1e-6 for c, e in zip(grads[1], grads[0]))
    return compiled


def test_torch_compile_fullgraph_matches_eager():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward through the fake
    impls as inductor does, without inductor's minute of C++ compilation."""
    torch.manual_seed(11)
    model = lt.swap_linear(mlp())
    x = torch.randn(6, 5)
    compiled = compiled_matches_eager(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast casts are traced into the graph too
        y_compiled, y_eager = compiled(x), model(x)
    assert y_compiled.dtype == y_eager.dtype == torch.bfloat16 and torch.equal(y_compiled, y_eager)


def test_autocast_casts_like_nn_linear():
    torch.manual_seed(12)
    theirs = nn.Linear(5, 7)
    ours = lt.swap_linear(copy.deepcopy(theirs))
    x = torch.randn(4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_theirs, y_ours = theirs(x), ours(x)
    assert y_ours.dtype == y_theirs.dtype == torch.bfloat16
    assert rel(y_ours, y_theirs) <= tol(torch.bfloat16)
    y_ours.float().sum().backward()
    y_theirs.float().sum().backward()
    assert ours.weight.grad.dtype == torch.float32  # the parameters stay float32
    assert rel(ours.weight.grad, theirs.weight.grad) <= tol(torch.bfloat16)
    x64 = torch.randn(4, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="x torch.float64"):
        ours(x64)  # float64 is left alone, as autocast leaves it, and nn.Linear fails as well


def test_import_linear_does_not_import_torch():
    code = "import sys, linear; linear.forward; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------------------------------
# The example, and DDP
# ----------------------------------------------------------------------------------------------------

def test_example_reaches_95_percent_accuracy():
    assert load_example("torch_mlp.py").train(verbose=False)[1] >= 0.95


def test_untrained_example_is_near_chance():
    """Negative control: the initial weights do not solve the task (chance is 1/3)."""
    assert load_example("torch_mlp.py").train(steps=0, verbose=False)[1] < 0.6


def test_readme_carries_the_torch_example():
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)
    block = next((b for b in blocks if "import linear.torch" in b and "def train(" in b), None)
    assert block is not None, ("README.md has no ```python block with the torch training loop: paste "
                               "examples/torch_mlp.py")
    example = EXAMPLE.read_text().strip() + "\n"
    if block.strip() + "\n" != example:
        diff = "".join(difflib.unified_diff(example.splitlines(True), (block.strip() + "\n").splitlines(True),
                                            "examples/torch_mlp.py", "README.md"))
        raise AssertionError("README.md's torch example has drifted from examples/torch_mlp.py:\n" + diff)


@pytest.mark.slow
def test_ddp_in_two_processes_matches_one_process_on_the_whole_batch(tmp_path):
    """The README's torchrun command (gloo on the CPU) for 5 Adam steps, against the same training in one
    process: equal within float32 rounding (measured 3e-8 after one step, 6e-6 after five: Adam divides
    by the root of tiny second moments, which magnifies the rounding of the all-reduce)."""
    steps, saved = 5, tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(EXAMPLE), "--steps", str(steps), "--save", str(saved)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    ddp = torch.load(saved)
    example = load_example("torch_mlp.py")
    one = example.train(steps=steps, verbose=False)[0].state_dict()
    fewer = example.train(steps=steps - 1, verbose=False)[0].state_dict()
    assert ddp.keys() == one.keys()
    for name in one:
        assert rel(ddp[name], one[name]) <= 1e-4, name
        assert rel(fewer[name], one[name]) > 1e-3, name  # negative control: one Adam step shows


@pytest.mark.slow
def test_fsdp2_in_two_processes_matches_one_process():
    """fully_shard (FSDP2) frees each gathered weight by resizing its storage to 0 after the forward; a
    storage once shared through Tensor.numpy() refuses that, so linear.torch shares CPU memory via DLPack."""
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "tests" / "fsdp_worker.py")], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FSDP vs one process, 3 steps" in run.stdout


def test_benchmark_script_checks_and_times_both_layers(monkeypatch, tmp_path):
    """bench/torch_linear.py (a phase of bench/gpu_session.sh), on a tiny CPU shape, with one busy process
    beside it that is gone afterwards."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import torch_linear
    monkeypatch.setattr(sys, "argv", ["torch_linear.py", str(tmp_path / "t.json"), "--shape", "9,16,5",
                                      "--dtype", "bfloat16", "--repeats", "3", "--busy", "1"])
    threads = torch.get_num_threads()
    assert torch_linear.main() == 0
    report = json.loads((tmp_path / "t.json").read_text())
    (result,) = report["results"]
    for name in ("nn.Linear", "linear.torch.Linear"):
        assert result[name]["ok"] and 0 < result[name]["max_relative_error"] <= 1e-2
        assert len(result[name]["times_ms"]) == 3
    low, high = result["speed_quartiles"]
    assert result["speed"] > 0 and 0 < low <= high
    (pid,) = report["busy_pids"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the spinning process was ended (and reaped)
    assert report["threads"] == threads == torch.get_num_threads()


def test_benchmark_script_times_a_fused_activation_against_the_pair_it_replaces(monkeypatch, tmp_path, capsys):
    """--activation gelu: nn.Linear followed by nn.GELU against the fused Linear that swap_linear makes of
    them, both checked against float64. Negative control: with our product's activation dropped, the check
    fails the run."""
    from linear.backends.torch_cpu import TorchCpuBackend
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import torch_linear
    argv = ["torch_linear.py", str(tmp_path / "t.json"), "--shape", "9,16,5", "--repeats", "2", "--activation", "gelu"]
    monkeypatch.setattr(sys, "argv", argv)
    assert torch_linear.main() == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["activation"] == "gelu" and report["results"][0]["activation"] == "gelu"
    assert "followed by gelu" in capsys.readouterr().out
    real = TorchCpuBackend.product
    monkeypatch.setattr(TorchCpuBackend, "product", lambda self, a, b, bias=None, activation=None: real(self, a, b, bias))
    assert torch_linear.main() == 1 and "WRONG" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# On a GPU (pytest -m gpu): CUDA tensors through the cuda backend
# ----------------------------------------------------------------------------------------------------

def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch and a GPU")
    if "cuda" not in available_backends():
        pytest.skip("the cuda backend needs CuPy and a GPU")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cuda_values_and_gradients_match_torch(case, dtype, poisoned):
    needs_cuda()
    _, shape, has_bias, strided = case
    x, weight, bias = make(shape, has_bias, strided, dtype, seed=21, device="cuda")
    y = lt.linear(x, weight, bias)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in (x, weight, bias) if t is not None], dy)
    x64, w64, b64 = (None if t is None else t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.linear(x64, w64, b64)
    refs = torch.autograd.grad(y64, [t for t in (x64, w64, b64) if t is not None], dy.double())
    assert y.device == x.device and rel(y, y64) <= tol(dtype)
    assert all(rel(g, r) <= tol(dtype) for g, r in zip(grads, refs))


@pytest.mark.gpu
def test_cuda_runs_on_torchs_current_stream():
    """x is written on a side stream after a long sleep; a kernel launched on any other stream would read
    it before it is written (and no synchronisation happens before the result is read back on it)."""
    needs_cuda()
    side = torch.cuda.Stream()
    weight = torch.randn(256, 512, device="cuda")
    x = torch.empty(1024, 512, device="cuda")
    source = torch.randn(1024, 512, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time
        x.copy_(source)
        y = lt.linear(x, weight)
        reference = F.linear(x, weight)
    torch.cuda.synchronize()
    assert rel(y, reference.double()) <= TOLERANCE["float32"]


@pytest.mark.gpu
def test_cuda_refuses_a_cpu_backend():
    needs_cuda()
    with pytest.raises(TypeError, match="backend 'numpy' takes CPU tensors; got x, weight on cuda:0"):
        lt.linear(torch.randn(2, 5, device="cuda"), torch.randn(3, 5, device="cuda"), backend="numpy")


def graph_step_reference(layer, x, dy):
    """y, dx, dweight, dbias of nn.functional.linear in float64 on layer's parameters."""
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, layer.weight, layer.bias))
    y64 = F.linear(x64, w64, b64)
    return (y64, *torch.autograd.grad(y64, (x64, w64, b64), dy.double()))


@pytest.mark.gpu
def test_cuda_graph_captures_a_training_step():
    """torch.cuda.graph captures forward and backward: every launch on the capture stream, every workspace
    from torch's allocator (the graph's pool), no host synchronisation (any of these fails the capture).
    Replays on new inputs give new, correct results."""
    needs_cuda()
    torch.manual_seed(24)
    layer = lt.Linear(512, 256, device="cuda")
    x = torch.randn(64, 512, device="cuda", requires_grad=True)
    dy = torch.randn(64, 256, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: kernels compiled and loaded
        for _ in range(3):
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).backward(dy)
    torch.cuda.current_stream().wait_stream(side)
    layer.zero_grad(set_to_none=True)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
        y.backward(dy)
    for seed in (25, 26):
        g = torch.Generator(device="cuda").manual_seed(seed)
        with torch.no_grad():
            x.copy_(torch.randn(x.shape, device="cuda", generator=g))
            dy.copy_(torch.randn(dy.shape, device="cuda", generator=g))
        graph.replay()
        torch.cuda.synchronize()
        refs = graph_step_reference(layer, x, dy)
        for out, ref in zip((y, x.grad, layer.weight.grad, layer.bias.grad), refs):
            assert rel(out, ref) <= TOLERANCE["float32"]


@pytest.mark.gpu
def test_torch_compile_reduce_overhead_runs_in_cuda_graphs():
    """mode="reduce-overhead": inductor's CUDA graphs take the custom ops (no cudagraph skip is counted)
    and the replays are correct."""
    needs_cuda()
    from torch._dynamo.utils import counters
    torch.manual_seed(27)
    layer = lt.Linear(512, 256, device="cuda")
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    counters.clear()
    for seed in range(4):
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(64, 512, device="cuda", generator=g, requires_grad=True)
        dy = torch.randn(64, 256, device="cuda", generator=g)
        layer.zero_grad(set_to_none=True)
        y = compiled(x)
        y.backward(dy)
        torch.cuda.synchronize()
        refs = graph_step_reference(layer, x, dy)
        for out, ref in zip((y, x.grad, layer.weight.grad, layer.bias.grad), refs):
            assert rel(out, ref) <= TOLERANCE["float32"]
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
