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
