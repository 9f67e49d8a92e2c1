"""Activations (linear.activations) and the fused layer through them, against torch's float64.

forward(x, w, b, activation=A, preact_out=z) and backward(dy, x, w, activation=A, preact=z) must give
torch's F.linear followed by F.relu / F.gelu / F.gelu(approximate="tanh") / F.silu, and its autograd
gradients, within each dtype's tolerance (relative error against float64 torch on the same inputs), on
every host backend, with outputs poisoned (NaN) before each run; NaN and inf propagate as in torch.
"""
from __future__ import annotations

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


@pytest.fixture(params=["numpy"])
def backend(request):
    """The kernel backends take activations from the next commit on."""
    return request.param


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
    x, w, b, dy = (xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((300, 24), (24, 40), (40,), (300, 40)))
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
