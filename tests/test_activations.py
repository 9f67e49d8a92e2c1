"""Activations (linear.activations) and the fused layer through them, against torch's float64.

forward(x, w, b, activation=A, preact_out=z) and backward(dy, x, w, activation=A, preact=z) must give
torch's F.linear followed by F.relu / F.gelu / F.gelu(approximate="tanh") / F.silu, and its autograd
gradients, within each dtype's tolerance (relative error against float64 torch on the same inputs), on
every host backend, with outputs poisoned (NaN) before each run; NaN and inf propagate as in torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import linear
from linear import activations
from linear.backends import get_backend
from linear.testing import TOLERANCE
from reference import assert_close, poisoned, rel_err, to_numpy
from test_functional import DTYPES, dtype_of

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_ACTIVATIONS = {
    None: lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
}
NAMED = [name for name in activations.ACTIVATIONS if name is not None]


def torch_reference(activation, x, w, b, dy):
    """(y, z, dx, dw, db) of F.linear + the activation in float64 torch, on the inputs' values."""
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64)).requires_grad_()
    tx, tw, tb = t(x), t(w), t(b)
    z = F.linear(tx, tw.T, tb)
    z.retain_grad()
    y = TORCH_ACTIVATIONS[activation](z)
    y.backward(torch.from_numpy(np.asarray(dy, dtype=np.float64)))
    return tuple(a.detach().numpy() for a in (y, z, tx.grad, tw.grad, tb.grad))


# ----------------------------------------------------------------------------------------------------
# The choices and the numpy references
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["gelu_erf", "ReLU", "tanh", 1, ""])
def test_unknown_activations_are_value_errors_listing_the_choices(bad):
    with pytest.raises(ValueError, match="None, 'relu', 'gelu', 'gelu_tanh', 'silu'"):
        activations.check_activation(bad)
    x, w = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        linear.forward(x, w, activation=bad)
    with pytest.raises(ValueError, match="activation must be one of"):
        linear.backward(np.ones((2, 4), np.float32), x, w, activation=bad, preact=np.ones((2, 4), np.float32))


@pytest.mark.parametrize("activation", NAMED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_references_match_torch(activation, dtype):
    """act(z) and act'(z) against torch in float64, on z of the dtype over a wide range."""
    rng = np.random.default_rng(1)
    z = (rng.standard_normal(4000) * rng.choice([0.1, 1.0, 4.0, 20.0], 4000)).astype(dtype_of(dtype))
    tz = torch.from_numpy(z.astype(np.float64)).requires_grad_()
    ty = TORCH_ACTIVATIONS[activation](tz)
    ty.backward(torch.ones_like(ty))
    y, dz = activations.forward(activation, z), activations.derivative(activation, z)
    assert y.dtype == z.dtype and dz.dtype == z.dtype
    tolerance = TOLERANCE[dtype]
    assert rel_err(y, ty.detach().numpy()) <= tolerance
    assert rel_err(dz, tz.grad.numpy()) <= tolerance


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 1.0, 30.0, -30.0])


def assert_same_specials(out, ref, what):
    """NaN where torch has NaN, the same infinities, and the finite values close."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert np.array_equal(np.isnan(out), np.isnan(ref)), f"{what}: NaN at {np.isnan(out)}, torch {np.isnan(ref)}"
    finite = np.isfinite(ref)
    assert np.array_equal(out[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)]), f"{what}: infinities"
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-2, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("activation", NAMED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_as_in_torch(activation, dtype):
    z = SPECIAL.astype(dtype_of(dtype))
    tz = torch.from_numpy(SPECIAL).requires_grad_()
    ty = TORCH_ACTIVATIONS[activation](tz)
    ty.backward(torch.ones_like(ty))
    assert_same_specials(activations.forward(activation, z), ty.detach().numpy(), f"{activation}({dtype})")
    assert_same_specials(activations.derivative(activation, z), tz.grad.numpy(), f"{activation}'({dtype})")


# ----------------------------------------------------------------------------------------------------
# forward and backward through an activation, on every backend
# ----------------------------------------------------------------------------------------------------

# (B, F, D): edge tiles on every side (none a multiple of a tile), and a shape whose rows are 16-byte
# aligned in every dtype (the tensor-core path for the half types on the emulator).
SHAPES = [(37, 29, 45), (64, 48, 40)]


def run_layer(backend, activation, dtype, shape, seed=0):
    """forward and backward with poisoned out arrays; the results and the float64 torch reference."""
    rng = np.random.default_rng(seed)
    rows, features, d = shape
    xp = get_backend(backend).xp
    host = lambda *s: rng.standard_normal(s).astype(dtype_of(dtype))
    x, w, b, dy = host(rows, features), host(features, d), host(d), host(rows, d)
    ref = torch_reference(activation, x, w, b, dy)
    x, w, b, dy = (xp.asarray(a) for a in (x, w, b, dy))
    y, z = poisoned(xp, (rows, d), x.dtype), poisoned(xp, (rows, d), x.dtype)
    linear.forward(x, w, b, activation=activation, preact_out=z, out=y, backend=backend)
    grads = [poisoned(xp, a.shape, x.dtype) for a in (x, w, b)]
    linear.backward(dy, x, w, activation=activation, preact=z if activation else None, dx_out=grads[0],
                    dw_out=grads[1], db_out=grads[2], backend=backend)
    return (y, z, *grads), ref


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", activations.ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_backward_match_torch(backend, activation, dtype, shape):
    ours, ref = run_layer(backend, activation, dtype, shape)
    for name, out, expected in zip(("y", "z", "dx", "dw", "db"), ours, ref):
        assert out.dtype == dtype_of(dtype), name
        err = rel_err(out, expected)
        assert err <= (1e-3 if dtype == "float32" and linear.get_tf32() else TOLERANCE[dtype]), \
            f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("activation", NAMED)
def test_nan_and_inf_in_the_layer_propagate_as_in_torch(backend, activation):
    """Columns whose bias is NaN, ±inf or large: y, dx, dw and db as torch's float64 gives them."""
    rng = np.random.default_rng(2)
    xp = get_backend(backend).xp
    x, w, dy = (rng.standard_normal(s) for s in ((8, 16), (16, len(SPECIAL)), (8, len(SPECIAL))))
    ref = torch_reference(activation, x, w, SPECIAL, dy)
    x, w, b, dy = (xp.asarray(a) for a in (x, w, SPECIAL, dy))
    z = poisoned(xp, dy.shape, np.float64)
    y = linear.forward(x, w, b, activation=activation, preact_out=z, backend=backend)
    grads = linear.backward(dy, x, w, activation=activation, preact=z, backend=backend)
    for name, out, expected in zip(("y", "z", "dx", "dw", "db"), (y, z, *grads), ref):
        assert_same_specials(to_numpy(out), expected, f"{activation}: {name}")


def test_relu_backward_takes_the_output_as_preact(backend):
    """relu' needs only where Z > 0, which Y tells: the layer keeps Y, not Z."""
    rng = np.random.default_rng(3)
    xp = get_backend(backend).xp
    x, w, b, dy = (xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((33, 20), (20, 17), (17,), (33, 17)))
    z = xp.empty((33, 17), np.float32)
    y = linear.forward(x, w, b, activation="relu", preact_out=z, backend=backend)
    through_z = linear.backward(dy, x, w, activation="relu", preact=z, backend=backend)
    through_y = linear.backward(dy, x, w, activation="relu", preact=y, backend=backend)
    for a, b_ in zip(through_z, through_y):
        assert np.array_equal(to_numpy(a), to_numpy(b_))


def test_options_keep_working_through_an_activation(backend):
    """need_dx=False, accumulate=True into dw_out/db_out, leading dimensions, preact_out only."""
    rng = np.random.default_rng(4)
    xp = get_backend(backend).xp
    x, w, b, dy = (rng.standard_normal(s) for s in ((2, 5, 12), (12, 9), (9,), (2, 5, 9)))
    y, z, dx, dw, db = torch_reference("silu", x.reshape(10, 12), w, b, dy.reshape(10, 9))
    x, w, b, dy = (xp.asarray(a) for a in (x, w, b, dy))
    preact = xp.empty((2, 5, 9))
    out = linear.forward(x, w, b, activation="silu", preact_out=preact, backend=backend)
    assert out.shape == (2, 5, 9)
    assert rel_err(out, y.reshape(2, 5, 9)) <= 1e-12 and rel_err(preact, z.reshape(2, 5, 9)) <= 1e-12
    dw_acc, db_acc = xp.ones((12, 9)), xp.ones(9)
    grads = linear.backward(dy, x, w, activation="silu", preact=preact, need_dx=False, dw_out=dw_acc,
                            db_out=db_acc, accumulate=True, backend=backend)
    assert grads.dx is None and grads.dw is dw_acc and grads.db is db_acc
    assert rel_err(dw_acc, dw + 1) <= 1e-12 and rel_err(db_acc, db + 1) <= 1e-12
    only_db = linear.backward(dy, x, w, activation="silu", preact=preact, need_dx=False, need_dw=False,
                              backend=backend)
    assert only_db.dx is None and only_db.dw is None and rel_err(only_db.db, db) <= 1e-12
    assert rel_err(linear.backward(dy, x, w, activation="silu", preact=preact, need_db=False,
                                   backend=backend).dx, dx.reshape(2, 5, 12)) <= 1e-12


def test_backward_is_bitwise_repeatable(backend):
    rng = np.random.default_rng(5)
    xp = get_backend(backend).xp
    x, w, b, dy = (xp.asarray(rng.standard_normal(s).astype(np.float32))
                   for s in ((300, 24), (24, 40), (40,), (300, 40)))
    z = xp.empty((300, 40), np.float32)
    linear.forward(x, w, b, activation="gelu", preact_out=z, backend=backend)
    first, second = (linear.backward(dy, x, w, activation="gelu", preact=z, backend=backend) for _ in range(2))
    for a, b_ in zip(first, second):
        assert np.array_equal(to_numpy(a), to_numpy(b_))


def test_bad_preact_is_named(backend):
    xp = get_backend(backend).xp
    x, w, dy = xp.ones((4, 3), np.float32), xp.ones((3, 5), np.float32), xp.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="activation='gelu' needs preact"):
        linear.backward(dy, x, w, activation="gelu", backend=backend)
    with pytest.raises(ValueError, match="preact is given but activation is None"):
        linear.backward(dy, x, w, preact=dy, backend=backend)
    with pytest.raises(ValueError, match=r"preact has shape \(4, 4\) and dtype float32; expected dy's shape \(4, 5\)"):
        linear.backward(dy, x, w, activation="gelu", preact=xp.ones((4, 4), np.float32), backend=backend)
    with pytest.raises(TypeError, match=r"preact has shape \(4, 5\) and dtype float64; expected dtype float32"):
        linear.backward(dy, x, w, activation="gelu", preact=xp.ones((4, 5)), backend=backend)
    with pytest.raises(TypeError, match="preact has shape .* dtype int64"):
        linear.backward(dy, x, w, activation="gelu", preact=xp.ones((4, 5), np.int64), backend=backend)
    with pytest.raises(ValueError, match=r"preact_out has shape \(4, 4\)"):
        linear.forward(x, w, activation="gelu", preact_out=xp.ones((4, 4), np.float32), backend=backend)
    with pytest.raises(TypeError, match=r"preact_out has shape \(4, 5\) and dtype float64; expected dtype float32"):
        linear.forward(x, w, activation="gelu", preact_out=xp.ones((4, 5)), backend=backend)
    y = xp.empty((4, 5), np.float32)
    with pytest.raises(ValueError, match="out and preact_out share memory"):
        linear.forward(x, w, activation="gelu", out=y, preact_out=y, backend=backend)


def test_inputs_are_not_modified(backend):
    rng = np.random.default_rng(6)
    xp = get_backend(backend).xp
    arrays = [xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((6, 4), (4, 3), (3,), (6, 3))]
    copies = [a.copy() for a in arrays]
    x, w, b, dy = arrays
    z = xp.empty((6, 3), np.float32)
    linear.forward(x, w, b, activation="gelu_tanh", preact_out=z, backend=backend)
    z_copy = z.copy()
    linear.backward(dy, x, w, activation="gelu_tanh", preact=z, backend=backend)
    for a, c in zip(arrays + [z], copies + [z_copy]):
        assert np.array_equal(to_numpy(a), to_numpy(c))


# ----------------------------------------------------------------------------------------------------
# The epilogue of every kernel family on the emulator: staging rounds, split-K, tensor cores, TF32
# ----------------------------------------------------------------------------------------------------

# (config, dtype, splits, beta, trans_a, tf32), shape (M, N, K): edge tiles everywhere. large (float32) and
# medium (float64) stage their rows in 4 and 2 rounds; split-K applies the activation in linear_sum_splits;
# tensor cores in bf16 and f16, and TF32 with Aᵀ (the paired rows of its epilogue). The Hopper kernel's
# epilogue has its own tests (tests/test_wgmma_gemm.py: the persistent grid and tensor maps need its harness).
FAMILIES = [("large", "float32", 1, 0.0, False, False, (129, 131, 65)),
            ("medium", "float64", 1, 0.5, True, False, (70, 66, 33)),
            ("small", "float16", 3, 0.0, False, False, (70, 50, 33)),
            ("tc_large", "bfloat16", 1, 0.5, False, False, (136, 136, 64)),
            ("tc_small", "float16", 3, 0.0, False, False, (72, 80, 96)),
            ("tc_small", "float32", 1, 0.0, True, True, (72, 80, 48))]


@pytest.fixture(scope="module")
def emulator_runtime():
    from test_kernels import emulator
    return emulator()


@pytest.mark.parametrize("config,dtype,splits,beta,trans_a,tf32,shape", FAMILIES,
                         ids=[f"{c}-{d}-splits{s}" for c, d, s, *_ in FAMILIES])
def test_the_epilogue_of_every_family(emulator_runtime, config, dtype, splits, beta, trans_a, tf32, shape):
    from linear.backends import plan
    from linear.backends.kernel import KernelBackend
    from linear.backends.plan import Tuning
    m, n, k = shape
    rng = np.random.default_rng(list(shape))
    host = lambda *s: rng.standard_normal(s).astype(dtype_of(dtype))
    a, b, bias = host(*((k, m) if trans_a else (m, k))), host(k, n), host(n)
    a64 = a.astype(np.float64).T if trans_a else a.astype(np.float64)
    for activation in activations.ACTIVATIONS:
        c = host(m, n) if beta else poisoned(np, (m, n), a.dtype)
        preact = poisoned(np, (m, n), a.dtype)
        z = a64 @ b.astype(np.float64) + bias.astype(np.float64) + (beta * c.astype(np.float64) if beta else 0)
        expected = TORCH_ACTIVATIONS[activation](torch.from_numpy(z)).numpy()
        launches = plan.plan_gemm(np, a.T if trans_a else a, b, c, alpha=1.0, beta=beta, bias=bias,
                                  tuning=Tuning(config=config, splits=splits), arch=90, tf32=tf32,
                                  activation=activation, preact=preact)
        assert launches[0].source == ("tc_gemm.cu" if config.startswith("tc") else "gemm.cu")
        assert len(launches) == (1 if splits == 1 else 2) and launches[0].grid[2] == splits
        KernelBackend(emulator_runtime).launch(launches)
        tolerance = 1e-3 if tf32 else TOLERANCE[dtype]
        for name, out, ref in (("C", c, expected), ("Z", preact, z)):
            err = rel_err(out, ref)
            assert err <= tolerance, f"{activation}: {name} relative error {err:.2e}"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_emulator_runs_the_half_types_fused_forward_on_the_hopper_kernel(emulator_runtime, dtype):
    """The emulator reports compute capability 9.0: test_forward_and_backward_match_torch's forward on
    emulate, both shapes, applies the activation and stores Z in wgmma_gemm.cu's epilogue (the plan the
    backend makes for it, with the runtime's capability and limits)."""
    from linear.backends import plan
    for rows, features, d in SHAPES:
        x, w = np.zeros((rows, features), dtype_of(dtype)), np.zeros((features, d), dtype_of(dtype))
        y, z, b = np.zeros((rows, d), x.dtype), np.zeros((rows, d), x.dtype), np.zeros(d, x.dtype)
        fused = plan.plan_gemm(np, x, w, y, alpha=1.0, beta=0.0, bias=b, activation="gelu", preact=z,
                               arch=emulator_runtime.compute_capability(), device=emulator_runtime.device_limits())
        gemm = fused[-1]
        assert gemm.source == "wgmma_gemm.cu", gemm.name
        assert gemm.args[-3] == activations.activation_code("gelu") and gemm.args[-2] is z and gemm.args[-1] == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_activation_gradient_pass(emulator_runtime, dtype):
    """dZ and db over several row chunks, dy a view with a leading dimension, z column-major (copied)."""
    from linear.backends import plan
    from linear.backends.kernel import KernelBackend
    rows, cols = 300, 70
    rng = np.random.default_rng(7)
    wide = rng.standard_normal((rows, cols + 10)).astype(dtype_of(dtype))
    dy = wide[:, :cols]
    z = np.asfortranarray(rng.standard_normal((rows, cols)).astype(dtype_of(dtype)))
    for activation in NAMED:
        dz, db = poisoned(np, (rows, cols), dy.dtype), rng.standard_normal(cols).astype(dy.dtype)
        db_before = db.astype(np.float64)
        launches = plan.plan_activation_grad(np, dy, z, dz, db, activation=activation, beta=1.0)
        assert launches[0].grid[1] > 1, "several chunks of rows"
        KernelBackend(emulator_runtime).launch(launches)
        tz = torch.from_numpy(z.astype(np.float64)).requires_grad_()
        TORCH_ACTIVATIONS[activation](tz).backward(torch.from_numpy(dy.astype(np.float64)))
        expected = tz.grad.numpy()
        assert_close(dz, expected, dtype)
        assert_close(db, expected.sum(axis=0) + db_before, dtype)


def test_the_kernels_number_the_activations_as_python_does():
    import re
    from linear.backends.sources import kernels_dir
    header = (kernels_dir() / "epilogue.cuh").read_text()
    codes = {name.lower(): int(code) for name, code in re.findall(r"ACTIVATION_(\w+) = (\d+)", header)}
    assert codes == {"none" if name is None else name: i for i, name in enumerate(activations.ACTIVATIONS)}


def test_split_k_applies_the_activation_in_the_reduction():
    from linear.backends import plan
    from linear.backends.plan import Tuning
    a, b = np.ones((70, 33), np.float32), np.ones((33, 50), np.float32)
    c, z = np.empty((70, 50), np.float32), np.empty((70, 50), np.float32)
    first, second = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0,
                                   tuning=Tuning(splits=3), activation="gelu", preact=z)
    assert first.grid[2] == 3 and first.args[-3] == 0 and first.args[-1] == 0  # the workspace: plain sums
    assert second.args[-3] == activations.activation_code("gelu") and second.args[-2] is z and second.args[-1] == 1
    with pytest.raises(ValueError, match="preact must have c's shape"):
        plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, activation="gelu",
                       preact=np.empty((50, 70), np.float32).T)


def test_staging_without_its_barrier_is_caught(tmp_path):
    """Negative control: without the barrier before the epilogue's staging, a warp's staged values overwrite
    the K loop's last tile while other warps still read it; racecheck reports it."""
    from linear.backends.emulate import EmulationError
    from linear.backends.kernel import KernelBackend
    from linear.backends.plan import Tuning
    from test_kernels import broken_copy, emulator
    broken_dir = broken_copy(tmp_path, r"__syncthreads\(\);")  # the last one: the staging's
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((64, 64)).astype(np.float32), rng.standard_normal((64, 64)).astype(np.float32)
    c = poisoned(np, (64, 64), np.float32)
    broken = KernelBackend(emulator(kernel_dir=broken_dir, sanitize="racecheck"), Tuning(config="medium", splits=1))
    with pytest.raises(EmulationError, match="racecheck"):
        broken.gemm(a, b, c, alpha=1.0, beta=0.0, activation="gelu")


def test_a_wrong_gelu_derivative_constant_fails(tmp_path, emulator_runtime):
    """Negative control: the kernels with φ's factor 1/√(2π) off by 10 % give gelu gradients that the
    comparison with torch refuses (the intact kernels pass test_the_activation_gradient_pass)."""
    import shutil
    from linear.backends import plan
    from linear.backends.kernel import KernelBackend
    from linear.backends.sources import kernels_dir
    from test_kernels import emulator
    for path in kernels_dir().iterdir():
        if path.suffix in (".cu", ".cuh"):
            shutil.copy(path, tmp_path / path.name)
    header = (tmp_path / "epilogue.cuh").read_text()
    right = "GELU_PDF_SCALE = 0.39894228040143267794;"
    assert header.count(right) == 1
    (tmp_path / "epilogue.cuh").write_text(header.replace(right, "GELU_PDF_SCALE = 0.35904805236128941015;"))
    rng = np.random.default_rng(12)
    dy, z = rng.standard_normal((100, 30)).astype(np.float32), rng.standard_normal((100, 30)).astype(np.float32)
    tz = torch.from_numpy(z.astype(np.float64)).requires_grad_()
    F.gelu(tz).backward(torch.from_numpy(dy.astype(np.float64)))
    for runtime, should_pass in ((emulator_runtime, True), (emulator(kernel_dir=tmp_path), False)):
        dz, db = poisoned(np, (100, 30), np.float32), poisoned(np, (30,), np.float32)
        KernelBackend(runtime).launch(plan.plan_activation_grad(np, dy, z, dz, db, activation="gelu", beta=0.0))
        assert (rel_err(dz, tz.grad.numpy()) <= TOLERANCE["float32"]) == should_pass
        assert (rel_err(db, tz.grad.numpy().sum(0)) <= TOLERANCE["float32"]) == should_pass


# ----------------------------------------------------------------------------------------------------
# linear.Linear(activation=)
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", NAMED)
def test_a_layer_with_an_activation_matches_torch(backend, activation):
    layer = linear.Linear(12, 9, activation=activation, dtype="float64", backend=backend, seed=0)
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((2, 7, 12)), rng.standard_normal((2, 7, 9))
    w, b = to_numpy(layer.weight.data), to_numpy(layer.bias.data)
    y, _, dx, dw, db = torch_reference(activation, x.reshape(14, 12), w, b, dy.reshape(14, 9))
    xp = layer.xp
    out = layer(xp.asarray(x))
    dx_out = layer.backward(xp.asarray(dy))
    assert rel_err(out, y.reshape(2, 7, 9)) <= 1e-12 and rel_err(dx_out, dx.reshape(2, 7, 12)) <= 1e-12
    assert rel_err(layer.weight.grad, dw) <= 1e-12 and rel_err(layer.bias.grad, db) <= 1e-12
    # relu keeps its output for backward (what is > 0 there is > 0 in Z); the others keep Z
    assert (layer._preact is out) == (activation == "relu")


def test_the_activation_travels_with_the_layer(tmp_path):
    import copy
    import pickle
    layer = linear.Linear(5, 4, activation="gelu_tanh", seed=1)
    assert repr(layer) == "Linear(in_features=5, out_features=4, bias=True, activation='gelu_tanh')"
    x = np.random.default_rng(9).standard_normal((3, 5)).astype(np.float32)
    expected = layer(x)
    layer.save(tmp_path / "layer.npz")
    for other in (linear.Linear.load(tmp_path / "layer.npz"), pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert other.activation == "gelu_tanh" and other._preact is None
        assert np.array_equal(other(x), expected)
    plain = linear.Linear(5, 4, seed=1)
    plain.save(tmp_path / "plain.npz")
    assert linear.Linear.load(tmp_path / "plain.npz").activation is None


def test_checkpoints_and_pickles_from_before_activations_still_load(tmp_path):
    import pickle
    layer = linear.Linear(3, 2, seed=2)
    # the file Linear.save wrote before activations existed: no "activation" entry
    np.savez(tmp_path / "old.npz", in_features=3, out_features=2, has_bias=True, dtype="float32",
             weight=layer.weight.data, bias=layer.bias.data)
    old = linear.Linear.load(tmp_path / "old.npz")
    assert old.activation is None and np.array_equal(old.weight.data, layer.weight.data)
    state = layer.__getstate__()
    del state["activation"]  # a pickle of such a layer
    unpickled = linear.Linear.__new__(linear.Linear)
    unpickled.__setstate__(pickle.loads(pickle.dumps(state)))
    x = np.ones((1, 3), np.float32)
    assert np.array_equal(unpickled(x), layer(x))
    unpickled.backward(np.ones((1, 2), np.float32))


@pytest.mark.parametrize("value", ["tanh", 3])
def test_a_checkpoint_with_an_unknown_activation_is_refused(tmp_path, value):
    np.savez(tmp_path / "bad.npz", in_features=3, out_features=2, has_bias=False, dtype="float32",
             activation=value, weight=np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="activation must be '' .none. or one of relu, gelu, gelu_tanh, silu"):
        linear.Linear.load(tmp_path / "bad.npz")


def test_a_layer_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of None, 'relu'"):
        linear.Linear(3, 2, activation="GELU")


# ----------------------------------------------------------------------------------------------------
# The benchmark's Linear+activation case (bench/activation.py)
# ----------------------------------------------------------------------------------------------------

def test_the_benchmark_counts_the_bytes_and_checks_before_it_times(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))  # bench/ is not installed as bench
    from bench.activation import main, measure, step_bytes
    from bench.cases import Shape
    b, f, d = 8192, 4096, 11008  # bench/NOTES.md's figures, bf16
    gemms = (3 * b * f + 3 * f * d + 2 * b * d) * 2
    assert step_bytes(b, f, d, 2, "gelu", False) == gemms + 7 * b * d * 2 == 2_095_054_848
    assert step_bytes(b, f, d, 2, "gelu", True) == gemms + 5 * b * d * 2 == 1_734_344_704
    assert step_bytes(b, f, d, 2, "relu", True) == gemms + 4 * b * d * 2 == 1_553_989_632
    assert step_bytes(b, f, d, 2, "silu", True) == step_bytes(b, f, d, 2, "gelu_tanh", True)
    for activation in NAMED:
        times = measure(Shape(40, 24, 36), "float32", activation, "numpy", repeats=1)
        assert set(times) == {"unfused", "fused"} and all(t > 0 for t in times.values())
    main(["--shape", "16,8,12", "--repeats", "1", "--activation", "silu"])
