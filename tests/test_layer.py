"""linear.Linear: initialisation, forward/backward against a float64 reference, gradient accumulation,
state_dict, and every error it raises (its files, save and load: test_checkpoint.py). Runs on every
backend (the `backend` fixture)."""
from __future__ import annotations

import numpy as np
import pytest

from linear import Linear
from linear.backends import get_backend
from linear.dtypes import SUPPORTED_DTYPES, dtype_of
from reference import assert_close, to_numpy

DTYPES = list(SUPPORTED_DTYPES)


def random_array(backend: str, shape, dtype, seed: int):
    """Fresh standard-normal values (never zeros) in `dtype`, on the backend's array module."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype_of(dtype))
    return get_backend(backend).xp.asarray(values)


def as_float64(a) -> np.ndarray:
    return to_numpy(a).astype(np.float64)


def reference(x, w, b, dy):
    """float64 y, dx, dw, db of Y = X·W + b for x of shape (..., F), from the (rounded) inputs."""
    x, w, dy = as_float64(x), as_float64(w), as_float64(dy)
    x2, dy2 = x.reshape(-1, w.shape[0]), dy.reshape(-1, w.shape[1])
    y = x @ w + (0 if b is None else as_float64(b))
    return y, dy @ w.T, x2.T @ dy2, dy2.sum(axis=0)


# ---------------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------------

def test_init_statistics_match_torch(backend):
    layer = Linear(256, 128, seed=0, backend=backend)
    bound = 1 / np.sqrt(256)
    w, b = as_float64(layer.weight.data), as_float64(layer.bias.data)
    assert isinstance(layer.weight.data, layer.xp.ndarray)
    assert (w.shape, b.shape) == ((256, 128), (128,))
    assert layer.weight.data.dtype == layer.bias.data.dtype == np.float32
    for values in (w, b):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.95 * bound  # uses the whole range
    # uniform(-bound, bound): mean 0, std bound/sqrt(3); 32768 samples pin both to well under 2%
    assert abs(w.mean()) < 0.02 * bound
    assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.02
    for p in layer.parameters():
        assert p.grad.shape == p.data.shape and p.grad.dtype == p.data.dtype
        assert not to_numpy(p.grad).any()


def test_seed_makes_init_reproducible(backend):
    def weights(seed):
        return [to_numpy(p.data) for p in Linear(7, 5, seed=seed, backend=backend).parameters()]

    for same, again in zip(weights(3), weights(3)):
        np.testing.assert_array_equal(same, again)
    assert not np.array_equal(weights(3)[0], weights(4)[0])
    assert not np.array_equal(weights(None)[0], weights(None)[0])


@pytest.mark.parametrize("kwargs, exception, words", [
    ({"in_features": -1}, ValueError, ["in_features", "-1"]),
    ({"out_features": 2.5}, TypeError, ["out_features", "2.5"]),
    ({"in_features": True}, TypeError, ["in_features", "True"]),
    ({"dtype": "int32"}, TypeError, ["dtype", "int32"]),
    ({"dtype": "complex64"}, TypeError, ["dtype", "complex64"]),
    ({"backend": "no-such-backend"}, ValueError, ["backend", "no-such-backend"]),
])
def test_constructor_rejects_bad_arguments(kwargs, exception, words):
    arguments = {"in_features": 3, "out_features": 4, **kwargs}
    with pytest.raises(exception) as info:
        Linear(arguments.pop("in_features"), arguments.pop("out_features"), **arguments)
    for word in words:
        assert word in str(info.value)


def test_repr_and_parameters():
    assert repr(Linear(3, 4)) == "Linear(in_features=3, out_features=4, bias=True)"
    assert repr(Linear(3, 4, bias=False, dtype="float16")) == \
        "Linear(in_features=3, out_features=4, bias=False, dtype=float16)"
    with_bias, without_bias = Linear(3, 4), Linear(3, 4, bias=False)
    assert list(with_bias.parameters()) == [with_bias.weight, with_bias.bias]
    assert list(without_bias.parameters()) == [without_bias.weight] and without_bias.bias is None


# ---------------------------------------------------------------------------------------------------
# Forward and backward
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_float64_reference(backend, dtype, bias):
    layer = Linear(5, 4, bias=bias, dtype=dtype, backend=backend, seed=1)
    for p in layer.parameters():  # grads left NaN would poison the result unless zero_grad clears them
        p.grad[...] = np.nan
    layer.zero_grad()
    x = random_array(backend, (2, 3, 5), dtype, seed=2)
    dy = random_array(backend, (2, 3, 4), dtype, seed=3)

    y = layer(x)
    dx = layer.backward(dy)

    ref_y, ref_dx, ref_dw, ref_db = reference(x, layer.weight.data, None if layer.bias is None else
                                              layer.bias.data, dy)
    assert y.dtype == dx.dtype == layer.dtype and isinstance(y, layer.xp.ndarray)
    assert_close(y, ref_y, layer.dtype)
    assert_close(dx, ref_dx, layer.dtype)
    assert_close(layer.weight.grad, ref_dw, layer.dtype)
    if bias:
        assert_close(layer.bias.grad, ref_db, layer.dtype)


def test_backward_without_dx_accumulates_the_weight_and_bias_gradients(backend):
    layer = Linear(5, 4, backend=backend, seed=1)
    x, dy = random_array(backend, (6, 5), "float32", 2), random_array(backend, (6, 4), "float32", 3)
    layer(x)
    assert layer.backward(dy, need_dx=False) is None
    _, _, ref_dw, ref_db = reference(x, layer.weight.data, layer.bias.data, dy)
    assert_close(layer.weight.grad, ref_dw, np.float32)
    assert_close(layer.bias.grad, ref_db, np.float32)


def test_two_micro_batches_accumulate_to_one_big_batch(backend):
    layer = Linear(5, 4, backend=backend, seed=1)
    x = random_array(backend, (7, 5), "float32", 2)
    dy = random_array(backend, (7, 4), "float32", 3)
    for rows in (slice(0, 3), slice(3, 7)):
        layer(x[rows])
        dx = layer.backward(dy[rows])
        assert_close(dx, reference(x[rows], layer.weight.data, layer.bias.data, dy[rows])[1], np.float32)
    _, _, ref_dw, ref_db = reference(x, layer.weight.data, layer.bias.data, dy)
    assert_close(layer.weight.grad, ref_dw, np.float32)
    assert_close(layer.bias.grad, ref_db, np.float32)
    # negative control: the second micro-batch alone is far from the whole batch's gradient
    single = Linear(5, 4, backend=backend, seed=1)
    single(x[3:])
    single.backward(dy[3:])
    assert not np.allclose(to_numpy(single.weight.grad), ref_dw, rtol=0.1)


def test_zero_grad_clears_accumulated_gradients(backend):
    layer = Linear(5, 4, backend=backend, seed=1)
    x, dy = random_array(backend, (3, 5), "float32", 2), random_array(backend, (3, 4), "float32", 3)
    layer(x)
    layer.backward(dy)
    once = [to_numpy(p.grad).copy() for p in layer.parameters()]
    layer.backward(dy)  # the same input again: exactly twice the gradient
    for p, g in zip(layer.parameters(), once):
        np.testing.assert_allclose(to_numpy(p.grad), 2 * g, rtol=1e-6)
    grads = [p.grad for p in layer.parameters()]
    layer.zero_grad()
    for p, g in zip(layer.parameters(), grads):
        assert p.grad is g and not to_numpy(p.grad).any()  # cleared in place: optimizers keep the arrays


def test_backward_before_forward_is_an_error(backend):
    with pytest.raises(RuntimeError, match="before forward"):
        Linear(5, 4, backend=backend).backward(random_array(backend, (3, 4), "float32", 0))


def test_bad_inputs_name_the_argument(backend):
    layer = Linear(5, 4, backend=backend, seed=1)
    layer(random_array(backend, (2, 3, 5), "float32", 2))
    with pytest.raises(ValueError, match=r"dy has shape \(6, 4\).*expected shape \(2, 3, 4\)"):
        layer.backward(random_array(backend, (6, 4), "float32", 3))
    with pytest.raises(TypeError, match=r"dy has shape \(2, 3, 4\) and dtype float64.*float32"):
        layer.backward(random_array(backend, (2, 3, 4), "float64", 3))
    with pytest.raises(TypeError, match=r"x has shape \(3, 5\) and dtype float64.*float32"):
        layer(random_array(backend, (3, 5), "float64", 4))
    with pytest.raises(TypeError, match="x must be a .* array.*list"):
        layer([[1.0] * 5])
    with pytest.raises(ValueError, match=r"x has shape \(3, 6\).*\(5, 4\)"):
        layer(random_array(backend, (3, 6), "float32", 4))


# ---------------------------------------------------------------------------------------------------
# state_dict and load_state_dict (save and load: test_checkpoint.py)
# ---------------------------------------------------------------------------------------------------

def test_state_dict_round_trip_copies(backend):
    source = Linear(5, 4, backend=backend, seed=1)
    state = source.state_dict()
    assert sorted(state) == ["bias", "weight"]
    state["weight"][...] = 0  # a copy: the layer keeps its values
    assert to_numpy(source.weight.data).any()

    state = source.state_dict()
    target = Linear(5, 4, backend=backend, seed=2)
    weight_array = target.weight.data
    target.load_state_dict(state)
    assert target.weight.data is weight_array  # loaded in place: an optimizer's references stay valid
    for name in state:
        np.testing.assert_array_equal(to_numpy(getattr(target, name).data), to_numpy(state[name]))
    state["bias"][...] = 0  # ... and copied: the layer does not alias the dict
    assert to_numpy(target.bias.data).any()


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("bias"), ["missing keys ['bias']"]),
    (lambda s: s.update(scale=s["bias"]), ["unexpected keys ['scale']"]),
    (lambda s: s.update(weight=s["weight"].T.copy()), ["'weight'", "(4, 5)", "(5, 4)"]),
    (lambda s: s.update(bias=s["bias"][:3].copy()), ["'bias'", "(3,)", "(4,)"]),
    (lambda s: s.update(weight=s["weight"].astype("float64")), ["'weight'", "float64", "float32"]),
])
def test_load_state_dict_mismatch_is_a_clear_error(backend, change, words):
    layer = Linear(5, 4, backend=backend, seed=1)
    before = [to_numpy(p.data).copy() for p in layer.parameters()]
    state = Linear(5, 4, backend=backend, seed=2).state_dict()
    change(state)
    with pytest.raises(ValueError) as info:
        layer.load_state_dict(state)
    for word in words:
        assert word in str(info.value)
    for p, old in zip(layer.parameters(), before):  # nothing was half-loaded
        np.testing.assert_array_equal(to_numpy(p.data), old)


def test_load_state_dict_rejects_non_arrays():
    layer = Linear(2, 2)
    with pytest.raises(TypeError, match=r"state_dict\['weight'\] must be an array; got list"):
        layer.load_state_dict({"weight": [[0.0, 0.0], [0.0, 0.0]], "bias": layer.bias.data})
