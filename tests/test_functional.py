"""The public API on every backend: matmul, forward, backward against a float64 reference.

Each test takes the `backend` fixture (numpy, emulate where a C++ compiler exists, cuda under -m gpu),
so the kernels behind the emulate and cuda backends face the same assertions as numpy's BLAS.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import linear
from linear.backends import get_backend
from linear.dtypes import SUPPORTED_DTYPES, dtype_of
from reference import assert_close, poisoned, rel_err, to_numpy

DTYPES = list(SUPPORTED_DTYPES)  # bfloat16 needs ml_dtypes, which the test extra installs

LAYOUTS = ["C", "F", "reversed", "strided", "sliced"]


def make(rng, backend: str, shape: tuple[int, ...], dtype: str, layout: str = "C"):
    """Random normal values with the given memory layout, as an array of the backend's module."""
    values = rng.standard_normal(shape).astype(dtype_of(dtype))
    if layout == "F":
        values = np.asfortranarray(values)
    elif layout == "reversed":  # negative strides on every axis
        values = np.ascontiguousarray(values[(slice(None, None, -1),) * values.ndim])[
            (slice(None, None, -1),) * values.ndim]
    elif layout == "strided":  # a non-unit inner stride
        wide = np.empty(shape[:-1] + (2 * shape[-1],), values.dtype) if values.ndim else values
        if values.ndim:
            wide[..., ::2] = values
            values = wide[..., ::2]
    elif layout == "sliced":  # the leading dimension is larger than the row
        wide = np.zeros(shape[:-1] + (shape[-1] + 3,), values.dtype) if values.ndim else values
        if values.ndim:
            wide[..., : shape[-1]] = values
            values = wide[..., : shape[-1]]
    xp = get_backend(backend).xp
    return values if xp is np else xp.asarray(values)


def f64(a) -> np.ndarray:
    return to_numpy(a).astype(np.float64)


def op(a: np.ndarray, trans: bool) -> np.ndarray:
    return a.T if trans else a


def fixed_settings(backend: str):
    """Fewer examples on the emulator (each new kernel instantiation costs a g++ build)."""
    return settings(max_examples=60 if backend == "numpy" else 20, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


small = st.integers(0, 40)
inner = st.one_of(st.integers(0, 70), st.integers(1000, 4096))


# ----------------------------------------------------------------------------------------------------
# Property tests against float64
# ----------------------------------------------------------------------------------------------------

def test_matmul_matches_float64(backend):
    @fixed_settings(backend)
    @given(m=small, n=small, k=inner, trans_a=st.booleans(), trans_b=st.booleans(),
           dtype=st.sampled_from(DTYPES), layout_a=st.sampled_from(LAYOUTS), layout_b=st.sampled_from(LAYOUTS),
           alpha=st.sampled_from([1.0, -0.5, 2.0]), beta=st.sampled_from([0.0, 1.0, 0.25]),
           seed=st.integers(0, 2**32 - 1))
    def check(m, n, k, trans_a, trans_b, dtype, layout_a, layout_b, alpha, beta, seed):
        if k > 100:  # long inner products only on thin outputs, to keep the emulator quick
            m, n = min(m, 4), min(n, 4)
        rng = np.random.default_rng(seed)
        a = make(rng, backend, (k, m) if trans_a else (m, k), dtype, layout_a)
        b = make(rng, backend, (n, k) if trans_b else (k, n), dtype, layout_b)
        c = make(rng, backend, (m, n), dtype) if beta else poisoned(get_backend(backend).xp, (m, n), dtype_of(dtype))
        c0 = f64(c)
        ref = alpha * op(f64(a), trans_a) @ op(f64(b), trans_b) + (beta * c0 if beta else 0)
        out = linear.matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=c, backend=backend)
        assert out is c
        assert_close(out, ref, dtype_of(dtype))

    check()


batch_dims = st.lists(st.integers(1, 3), max_size=2)


def test_matmul_stacks_and_vectors_match_float64(backend):
    """numpy.matmul's shapes: stacks broadcast over leading dimensions (a broadcast operand read in
    place), 1-D operands promoted and their dimension removed; with trans, alpha, beta and out."""
    @settings(max_examples=40 if backend == "numpy" else 15, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(batch_a=batch_dims, batch_b=batch_dims, vector=st.sampled_from(["", "a", "b", "ab"]),
           m=st.integers(0, 20), n=st.integers(0, 20), k=st.integers(0, 40), trans_a=st.booleans(),
           trans_b=st.booleans(), dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
           alpha=st.sampled_from([1.0, -0.5]), beta=st.sampled_from([0.0, 0.25]), seed=st.integers(0, 2**32 - 1))
    def check(batch_a, batch_b, vector, m, n, k, trans_a, trans_b, dtype, layout, alpha, beta, seed):
        rng = np.random.default_rng(seed)
        # Broadcasting batches: where both have a dimension (aligned from the right), b's is a's or 1.
        for j in range(1, min(len(batch_a), len(batch_b)) + 1):
            batch_b[-j] = 1 if rng.random() < 0.5 else batch_a[-j]
        trans_a, trans_b = trans_a and "a" not in vector, trans_b and "b" not in vector
        a_shape = (k,) if "a" in vector else (*batch_a, *((k, m) if trans_a else (m, k)))
        b_shape = (k,) if "b" in vector else (*batch_b, *((n, k) if trans_b else (k, n)))
        a, b = make(rng, backend, a_shape, dtype, layout), make(rng, backend, b_shape, dtype)
        a64 = np.swapaxes(f64(a), -1, -2) if trans_a else f64(a)
        b64 = np.swapaxes(f64(b), -1, -2) if trans_b else f64(b)
        ref = np.matmul(a64, b64)
        xp = get_backend(backend).xp
        c = make(rng, backend, ref.shape, dtype) if beta else poisoned(xp, ref.shape, dtype_of(dtype))
        ref = alpha * ref + (beta * f64(c) if beta else 0)
        a_before, b_before = f64(a), f64(b)
        out = linear.matmul(a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, backend=backend)
        assert out is c and out.shape == ref.shape
        assert_close(out, ref, dtype_of(dtype))
        assert np.array_equal(f64(a), a_before, equal_nan=True) and np.array_equal(f64(b), b_before, equal_nan=True)

    check()


def test_matmul_axes_and_out_casting(backend):
    rng = np.random.default_rng(17)
    xp = get_backend(backend).xp
    a, b = make(rng, backend, (3, 2, 4), "float32"), make(rng, backend, (4, 5), "float32")
    axes = [(0, 2), (0, 1), (2, 0)]  # a's matrices are a[:, i, :], the result's are out[:, :, i].T
    out = linear.matmul(a, b, axes=axes, backend=backend)
    expected = np.matmul(to_numpy(a), to_numpy(b), axes=axes)
    assert out.shape == expected.shape == (5, 2, 3)
    assert_close(out, expected, np.float32)
    wide = xp.full((5, 2, 3), np.nan, np.complex128)  # a dtype the result casts to, as numpy allows
    assert linear.matmul(a, b, wide, axes=axes, backend=backend) is wide
    assert_close(wide.real, expected, np.float32)
    with pytest.raises(TypeError, match="Cannot cast ufunc 'matmul' output from float32 to int32"):
        linear.matmul(a, b, xp.zeros((5, 2, 3), np.int32), axes=axes, backend=backend)
    with pytest.raises(TypeError, match="axis can only be used"):
        linear.matmul(a, b, axis=0, backend=backend)
    with pytest.raises(ValueError, match="non-broadcastable"):
        linear.matmul(a, b, xp.zeros((1, 2, 5), np.float32), backend=backend)
    v = make(rng, backend, (4,), "float64")
    scalar = linear.matmul(v, v, backend=backend)
    assert (type(scalar) is np.float64) if xp is np else scalar.shape == ()


def test_matmul_out_of_a_narrower_float_dtype_takes_the_cast_result(backend):
    """numpy.matmul writes a float64 product into a float32 out= (casting="same_kind", which "safe" would
    refuse), and a float32 one into float16: so does linear.matmul, computing in the wider dtype."""
    rng = np.random.default_rng(29)
    xp = get_backend(backend).xp
    for wide, narrow in (("float64", "float32"), ("float32", "float16")):
        a, b = make(rng, backend, (2, 7, 9), wide), make(rng, backend, (9, 6), wide)
        out = xp.full((2, 7, 6), np.nan, narrow)
        assert linear.matmul(a, b, out, backend=backend) is out
        assert out.dtype == np.dtype(narrow)
        assert_close(out, np.matmul(to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)), narrow)


def test_forward_matches_float64(backend):
    @fixed_settings(backend)
    @given(lead=st.lists(st.integers(0, 5), max_size=3), f=st.integers(0, 70), d=small, bias=st.booleans(),
           dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
    def check(lead, f, d, bias, dtype, layout, seed):
        rng = np.random.default_rng(seed)
        x = make(rng, backend, (*lead, f), dtype, layout)
        w = make(rng, backend, (f, d), dtype, layout)
        b = make(rng, backend, (d,), dtype) if bias else None
        ref = f64(x) @ f64(w) + (f64(b) if bias else 0)
        y = linear.forward(x, w, b, backend=backend)
        assert type(y) is type(x) and y.dtype == x.dtype and y.shape == (*lead, d)
        assert_close(y, ref, dtype_of(dtype))

    check()


def test_backward_matches_float64(backend):
    @fixed_settings(backend)
    @given(lead=st.lists(st.integers(1, 5), max_size=3), f=small, d=small, dtype=st.sampled_from(DTYPES),
           layout=st.sampled_from(LAYOUTS), accumulate=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def check(lead, f, d, dtype, layout, accumulate, seed):
        rng = np.random.default_rng(seed)
        xp = get_backend(backend).xp
        x = make(rng, backend, (*lead, f), dtype, layout)
        w = make(rng, backend, (f, d), dtype, layout)
        dy = make(rng, backend, (*lead, d), dtype, layout)
        dt = dtype_of(dtype)
        dw0 = make(rng, backend, (f, d), dtype) if accumulate else poisoned(xp, (f, d), dt)
        db0 = make(rng, backend, (d,), dtype) if accumulate else poisoned(xp, (d,), dt)
        dx_out = poisoned(xp, (*lead, f), dt)
        rows = int(np.prod(lead))
        ref_dw = (f64(dw0) if accumulate else 0) + f64(x).reshape(rows, f).T @ f64(dy).reshape(rows, d)
        ref_db = (f64(db0) if accumulate else 0) + f64(dy).reshape(rows, d).sum(axis=0)
        g = linear.backward(dy, x, w, dx_out=dx_out, dw_out=dw0, db_out=db0, accumulate=accumulate,
                            backend=backend)
        assert g.dx is dx_out and g.dw is dw0 and g.db is db0
        assert_close(g.dx, f64(dy) @ f64(w).T, dt)
        assert_close(g.dw, ref_dw, dt)
        assert_close(g.db, ref_db, dt)

    check()


# ----------------------------------------------------------------------------------------------------
# The gradients are the gradients: finite differences in float64
# ----------------------------------------------------------------------------------------------------

def numerical_gradient(loss, a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of loss() with respect to every element of a (modified in place, restored)."""
    grad = np.empty_like(a)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + h
        up = loss()
        a[i] = saved - h
        down = loss()
        a[i] = saved
        grad[i] = (up - down) / (2 * h)
    return grad


def test_gradients_match_finite_differences(backend):
    rng = np.random.default_rng(7)
    xp = get_backend(backend).xp
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    g_out = rng.standard_normal((2, 3, 5))  # L = Σ G ∘ Y, so dL/dY = G

    def loss() -> float:
        y = linear.forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), backend=backend)
        return float(np.sum(g_out * to_numpy(y)))

    grads = linear.backward(xp.asarray(g_out), xp.asarray(x), xp.asarray(w), backend=backend)
    for name, ours, param in (("dx", grads.dx, x), ("dw", grads.dw, w), ("db", grads.db, b)):
        numeric = numerical_gradient(loss, param)
        assert rel_err(ours, numeric) < 1e-8, name


def test_mean_loss_puts_one_over_batch_inside_dy(backend):
    """L = mean_i ½‖y_i − t_i‖²: dY = (Y − T)/B, and dW = Xᵀ·dY with no further 1/B."""
    rng = np.random.default_rng(8)
    xp = get_backend(backend).xp
    batch = 6
    x, w, t = rng.standard_normal((batch, 3)), rng.standard_normal((3, 2)), rng.standard_normal((batch, 2))

    def loss() -> float:
        y = to_numpy(linear.forward(xp.asarray(x), xp.asarray(w), backend=backend))
        return float(0.5 * np.sum((y - t) ** 2) / batch)

    y = to_numpy(linear.forward(xp.asarray(x), xp.asarray(w), backend=backend))
    dy = (y - t) / batch
    grads = linear.backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), need_db=False, backend=backend)
    assert grads.db is None
    assert rel_err(grads.dw, numerical_gradient(loss, w)) < 1e-8
    assert rel_err(grads.dw, x.T @ dy) < 1e-12


# ----------------------------------------------------------------------------------------------------
# Zero-size dimensions behave as numpy's matmul
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_zero_features(backend, bias):
    rng = np.random.default_rng(1)
    x, w = make(rng, backend, (3, 0), "float32"), make(rng, backend, (0, 4), "float32")
    b = make(rng, backend, (4,), "float32") if bias else None
    y = to_numpy(linear.forward(x, w, b, backend=backend))
    np.testing.assert_array_equal(y, np.broadcast_to(to_numpy(b) if bias else 0, (3, 4)))
    g = linear.backward(make(rng, backend, (3, 4), "float32"), x, w, backend=backend)
    assert g.dx.shape == (3, 0) and g.dw.shape == (0, 4) and g.db.shape == (4,)


def test_zero_batch(backend):
    rng = np.random.default_rng(2)
    x, w = make(rng, backend, (0, 5), "float32"), make(rng, backend, (5, 3), "float32")
    assert linear.forward(x, w, backend=backend).shape == (0, 3)
    g = linear.backward(make(rng, backend, (0, 3), "float32"), x, w, backend=backend)
    assert g.dx.shape == (0, 5)
    np.testing.assert_array_equal(to_numpy(g.dw), np.zeros((5, 3)))
    np.testing.assert_array_equal(to_numpy(g.db), np.zeros(3))


def test_matmul_empty_inner_dimension_scales_c(backend):
    rng = np.random.default_rng(3)
    a, b = make(rng, backend, (4, 0), "float64"), make(rng, backend, (0, 3), "float64")
    c = make(rng, backend, (4, 3), "float64")
    expected = 0.5 * to_numpy(c)
    linear.matmul(a, b, beta=0.5, out=c, backend=backend)
    np.testing.assert_array_equal(to_numpy(c), expected)


# ----------------------------------------------------------------------------------------------------
# out=, aliasing, and inputs left alone
# ----------------------------------------------------------------------------------------------------

def test_inputs_are_never_modified(backend):
    rng = np.random.default_rng(4)
    x, w, b = (make(rng, backend, s, "float32", "F") for s in ((6, 5), (5, 4), (4,)))
    dy = make(rng, backend, (6, 4), "float32")
    before = [to_numpy(a).copy() for a in (x, w, b, dy)]
    linear.forward(x, w, b, backend=backend)
    linear.backward(dy, x, w, backend=backend)
    linear.matmul(x, w, backend=backend)
    for original, now in zip(before, (x, w, b, dy)):
        np.testing.assert_array_equal(original, to_numpy(now))


def test_out_aliasing_an_input_gives_the_right_answer(backend):
    rng = np.random.default_rng(5)
    a = make(rng, backend, (8, 8), "float64")
    b = make(rng, backend, (8, 8), "float64")
    ref = f64(a).T @ f64(b) + 2 * f64(a)
    out = linear.matmul(a, b, trans_a=True, beta=2.0, out=a, backend=backend)  # C = Aᵀ·B + 2·A, into A
    assert out is a
    assert rel_err(a, ref) < 1e-12
    # dx_out aliasing x: dW must still be computed from the original x
    x, w, dy = make(rng, backend, (5, 5), "float64"), make(rng, backend, (5, 5), "float64"), \
        make(rng, backend, (5, 5), "float64")
    ref_dw, ref_dx = f64(x).T @ f64(dy), f64(dy) @ f64(w).T
    g = linear.backward(dy, x, w, dx_out=x, backend=backend)
    assert rel_err(g.dw, ref_dw) < 1e-12 and rel_err(x, ref_dx) < 1e-12


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_forward_fast_path_equals_the_general_path(backend, dtype):
    """Plain arrays of one float dtype take forward's fast path; out= and an ndarray subclass take the
    general path: one answer, bit for bit, for every layout and lead shape."""
    rng = np.random.default_rng(20)
    for lead, layout, bias in [((3,), "C", True), ((), "C", True), ((2, 3), "F", False), ((0,), "C", True),
                               ((4,), "reversed", True), ((5,), "sliced", False)]:
        x, w = make(rng, backend, (*lead, 6), dtype, layout), make(rng, backend, (6, 4), dtype, layout)
        b = make(rng, backend, (4,), dtype) if bias else None
        fast = linear.forward(x, w, b, backend=backend)
        general = linear.forward(x, w, b, out=get_backend(backend).xp.full(fast.shape, np.nan, fast.dtype),
                                 backend=backend)
        assert type(fast) is type(x) and fast.dtype == x.dtype and fast.shape == (*lead, 4)
        np.testing.assert_array_equal(to_numpy(fast), to_numpy(general))
    if get_backend(backend).xp is np:
        subclass = type("Subclass", (np.ndarray,), {})
        np.testing.assert_array_equal(linear.forward(x.view(subclass), w, b, backend=backend), fast)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_backward_and_matmul_fast_paths_equal_the_general_path(backend, dtype):
    """backward and matmul's fast paths (plain arrays of one float dtype, no out=) against their general
    path (out= given): one answer, bit for bit; backward's flags pick the gradients in both."""
    rng = np.random.default_rng(21)
    xp = get_backend(backend).xp
    nan = lambda a: xp.full(a.shape, np.nan, a.dtype)
    for lead, layout, needs in [((3,), "C", (True, True, True)), ((2, 3), "F", (True, False, True)),
                                ((4,), "reversed", (False, True, False)), ((0,), "C", (True, True, True))]:
        x, w = make(rng, backend, (*lead, 6), dtype, layout), make(rng, backend, (6, 4), dtype, layout)
        dy = make(rng, backend, (*lead, 4), dtype, layout)
        flags = dict(zip(("need_dx", "need_dw", "need_db"), needs))
        fast = linear.backward(dy, x, w, **flags, backend=backend)
        outs = {name: nan(g) for name, g in zip(("dx_out", "dw_out", "db_out"), fast) if g is not None}
        general = linear.backward(dy, x, w, **flags, **outs, backend=backend)
        for got, want, need in zip(fast, general, needs):
            assert (got is None) == (want is None) == (not need)
            if need:
                assert type(got) is type(x) and got.dtype == x.dtype
                np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
        a, b = x.reshape(-1, 6), make(rng, backend, (6, 5), dtype, layout)
        for a, b in [(a, b), (xp.stack([a, a]), xp.stack([b, b]))]:
            fast = linear.matmul(a, b, alpha=0.5, backend=backend)
            general = linear.matmul(a, b, alpha=0.5, out=nan(fast), backend=backend)
            assert type(fast) is type(a) and fast.shape == a.shape[:-1] + b.shape[-1:]
            np.testing.assert_array_equal(to_numpy(fast), to_numpy(general))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_forward_fast_path_writes_a_given_preact_out_as_the_general_path_does(backend, dtype, activation,
                                                                            monkeypatch):
    """Linear.forward's call (preact_out given) takes forward's fast path (no _resolve) and writes y and z as
    the general path (forced by out=) does, bit for bit. A preact_out it cannot write directly takes the
    general path: Fortran-ordered, or x itself (z must be computed from x as it was)."""
    from linear import functional
    rng = np.random.default_rng(23)
    xp = get_backend(backend).xp
    resolved = []
    real = functional._resolve
    monkeypatch.setattr(functional, "_resolve", lambda *a, **k: resolved.append(a) or real(*a, **k))
    nan = lambda shape: xp.full(shape, np.nan, dtype_of(dtype))
    for lead in [(3,), (2, 3), (0,)]:
        x, w, b = (make(rng, backend, shape, dtype) for shape in [(*lead, 6), (6, 4), (4,)])
        z = nan((*lead, 4))
        y = linear.forward(x, w, b, activation=activation, preact_out=z, backend=backend)
        assert not resolved
        z_general = nan((*lead, 4))
        y_general = linear.forward(x, w, b, activation=activation, preact_out=z_general, out=nan((*lead, 4)),
                                   backend=backend)
        for got, want in [(y, y_general), (z, z_general)]:
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
        z_fortran = xp.asfortranarray(nan((*lead, 4)))
        linear.forward(x, w, b, activation=activation, preact_out=z_fortran, backend=backend)
        np.testing.assert_array_equal(to_numpy(z_fortran), to_numpy(z))
        # the general path, twice (an empty array is C-contiguous too, and takes the fast path)
        assert len(resolved) == 1 + (not z_fortran.flags.c_contiguous)
        resolved.clear()
    x, w = make(rng, backend, (3, 4), "float64"), make(rng, backend, (4, 4), "float64")
    expected = f64(x) @ f64(w)
    linear.forward(x, w, activation=activation, preact_out=x, backend=backend)
    assert rel_err(x, expected) < 1e-12


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_backward_fast_path_writes_given_gradients_as_the_general_path_does(backend, dtype, activation,
                                                                           monkeypatch):
    """Linear.backward's call (dw_out and db_out given, accumulate=True, with or without an activation), and
    the same with accumulate=False, takes backward's fast path (no _resolve) and writes what the general path
    (forced by a dx_out) writes, bit for bit. Outputs it cannot write directly take the general path: a
    Fortran-ordered dw_out, a dw_out that is the input w (dw must be computed from w as it was); two
    gradients in one memory are still an error."""
    from linear import functional
    rng = np.random.default_rng(22)
    xp = get_backend(backend).xp
    resolved = []
    real = functional._resolve
    monkeypatch.setattr(functional, "_resolve", lambda *a, **k: resolved.append(a) or real(*a, **k))
    for lead, accumulate in [((3,), True), ((2, 3), False), ((0,), True), ((5,), False)]:
        x, w, dy = (make(rng, backend, shape, dtype) for shape in [(*lead, 6), (6, 4), (*lead, 4)])
        preact = None if activation is None else make(rng, backend, (*lead, 4), dtype)
        dw0, db0 = make(rng, backend, (6, 4), dtype), make(rng, backend, (4,), dtype)
        call = dict(activation=activation, preact=preact, accumulate=accumulate, backend=backend)
        fast_dw, fast_db = dw0.copy(), db0.copy()
        fast = linear.backward(dy, x, w, dw_out=fast_dw, db_out=fast_db, **call)
        assert not resolved and fast.dw is fast_dw and fast.db is fast_db
        general = linear.backward(dy, x, w, dx_out=xp.full(x.shape, np.nan, x.dtype), dw_out=dw0.copy(),
                                  db_out=db0.copy(), **call)
        for got, want in zip(fast, general):
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
        fortran = linear.backward(dy, x, w, dw_out=xp.asfortranarray(dw0), db_out=db0.copy(), **call)
        np.testing.assert_array_equal(to_numpy(fortran.dw), to_numpy(fast.dw))
        assert len(resolved) == 2  # the general path, twice
        resolved.clear()
    x, w, dy = (make(rng, backend, shape, "float64") for shape in [(3, 6), (6, 4), (3, 4)])
    w0 = f64(w)
    grads = linear.backward(dy, x, w, dw_out=w, db_out=make(rng, backend, (4,), "float64"), accumulate=True,
                            backend=backend)
    assert grads.dw is w and rel_err(w, w0 + f64(x).T @ f64(dy)) < 1e-12
    assert rel_err(grads.dx, f64(dy) @ w0.T) < 1e-12
    dw = make(rng, backend, (6, 4), "float64")
    with pytest.raises(ValueError, match="dw_out and db_out share memory"):
        linear.backward(dy, x, w, dw_out=dw, db_out=dw[0], accumulate=True, backend=backend)


def test_cupy_arrays_take_the_fast_paths_and_the_general_path_still_checks(monkeypatch):
    """Arrays of the cuda backend's type take the fast paths of forward, backward and matmul as numpy's take
    them on the numpy backend (no _resolve), here bench.overhead's stand-in for CuPy (numpy arrays of a class
    in a module named cupy, on a runtime whose kernels do nothing); what the fast paths do not take (a
    mismatch, arrays of two modules) still gets the general path's exceptions."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from bench import overhead
    from linear import functional
    from linear.backends.kernel import KernelBackend
    backend = KernelBackend(overhead.NoLaunchRuntime())
    resolved = []
    real = functional._resolve
    monkeypatch.setattr(functional, "_resolve", lambda *a, **k: resolved.append(a) or real(*a, **k))
    on_device = lambda shape, dtype: np.ones(shape, dtype).view(overhead._StandInArray)
    for dtype in (np.float32, dtype_of("bfloat16")):
        x, w, b, dy = (on_device(shape, dtype) for shape in [(2, 3, 4), (4, 5), (5,), (2, 3, 5)])
        results = [linear.forward(x, w, b, backend=backend), *linear.backward(dy, x, w, backend=backend),
                   linear.matmul(x, x.swapaxes(-1, -2), backend=backend)]
        assert not resolved
        assert [(type(r), r.dtype, r.shape) for r in results] == \
               [(overhead._StandInArray, np.dtype(dtype), shape) for shape in [(2, 3, 5), (2, 3, 4), (4, 5), (5,),
                                                                               (2, 3, 3)]]
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 4\) and w has shape \(5, 5\)"):
        linear.forward(x, on_device((5, 5), dtype), backend=backend)
    with pytest.raises(TypeError, match="cannot mix CuPy and numpy arrays: x, b on the GPU .* w on the host"):
        linear.forward(x, np.ones((4, 5), dtype), b, backend=backend)
    assert len(resolved) == 2


def test_non_contiguous_out(backend):
    rng = np.random.default_rng(6)
    x, w = make(rng, backend, (7, 3), "float32"), make(rng, backend, (3, 5), "float32")
    xp = get_backend(backend).xp
    out = xp.full((5, 7), np.nan, dtype=np.float32).T  # Fortran-ordered view
    y = linear.forward(x, w, out=out, backend=backend)
    assert y is out
    assert_close(out, f64(x) @ f64(w), np.float32)


def test_mixed_dtypes_follow_numpy_result_type(backend):
    rng = np.random.default_rng(9)
    x, w = make(rng, backend, (4, 3), "float32"), make(rng, backend, (3, 2), "float64")
    y = linear.forward(x, w, backend=backend)
    assert y.dtype == np.float64
    assert rel_err(y, f64(x) @ f64(w)) < 1e-12


def test_bfloat16_promotes_like_float32_where_numpy_cannot_promote_it():
    x, w = np.ones((2, 3), np.float16), np.ones((3, 2), dtype_of("bfloat16"))
    assert linear.forward(x, w).dtype == np.float32
    y = linear.forward(x, w, np.full(2, 1e-9))  # float64 bias: float64 result, the 1e-9 kept
    assert y.dtype == np.float64 and np.allclose(y - 3, 1e-9, rtol=1e-6, atol=0)


def test_float16_accumulates_in_float32(backend):
    """Σ of 4096 products in float16 would lose ~3 digits; accumulating in float32 keeps the error at rounding."""
    rng = np.random.default_rng(10)
    x, w = make(rng, backend, (2, 4096), "float16"), make(rng, backend, (4096, 3), "float16")
    err = rel_err(linear.forward(x, w, backend=backend), f64(x) @ f64(w))
    assert err < 2e-3, err


# ----------------------------------------------------------------------------------------------------
# Bad input: a clear exception that names the argument
# ----------------------------------------------------------------------------------------------------

BAD_DTYPES = [np.int32, np.int64, np.bool_, np.complex64, np.longdouble, object]


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("argument", ["x", "w", "b"])
def test_forward_rejects_non_float_dtypes(backend, argument, bad):
    rng = np.random.default_rng(11)
    args = {"x": make(rng, backend, (3, 4), "float32"), "w": make(rng, backend, (4, 2), "float32"),
            "b": make(rng, backend, (2,), "float32")}
    if bad in (object, np.longdouble) and get_backend(backend).xp is not np:
        pytest.skip("CuPy has no object or long double arrays")
    args[argument] = args[argument].astype(bad)
    with pytest.raises(TypeError, match=rf"{argument} has shape .* and dtype {np.dtype(bad).name}"):
        linear.forward(args["x"], args["w"], args["b"], backend=backend)


@pytest.mark.parametrize("argument", ["dy", "x", "w"])
def test_backward_rejects_non_float_dtypes(backend, argument):
    rng = np.random.default_rng(12)
    args = {"dy": make(rng, backend, (3, 2), "float32"), "x": make(rng, backend, (3, 4), "float32"),
            "w": make(rng, backend, (4, 2), "float32")}
    args[argument] = args[argument].astype(np.int64)
    with pytest.raises(TypeError, match=rf"{argument} has shape .* and dtype int64"):
        linear.backward(args["dy"], args["x"], args["w"], backend=backend)


@pytest.mark.parametrize("dtypes", [("complex64", "float32"), ("int8", "int8"), ("bool", "bool"), ("uint8", "int16")])
def test_matmul_other_dtypes_run_the_array_modules_matmul(backend, dtypes):
    rng = np.random.default_rng(13)
    xp = get_backend(backend).xp
    a, b = (xp.asarray((rng.standard_normal(shape) * 3).astype(dtype))
            for shape, dtype in zip(((2, 3, 4), (4, 2)), dtypes))
    out = linear.matmul(a, b, backend=backend)
    expected = xp.matmul(a, b)
    assert out.dtype == expected.dtype and bool((out == expected).all())
    with pytest.raises(TypeError, match=rf"alpha and beta need a float result; a has shape \(2, 3, 4\) and dtype {dtypes[0]}"):
        linear.matmul(a, b, alpha=2.0, backend=backend)


def test_matmul_mixed_dtypes_promote_as_numpy(backend):
    """int with float runs the kernels in numpy's result dtype (float64 for int64 with float32)."""
    rng = np.random.default_rng(12)
    xp = get_backend(backend).xp
    a = xp.asarray(rng.integers(-5, 5, (3, 4)))
    for dtype in ("float32", "float16"):
        b = make(rng, backend, (4, 2), dtype)
        out = linear.matmul(a, b, backend=backend)
        assert out.dtype == np.result_type(np.int64, dtype_of(dtype))
        assert_close(out, f64(a) @ f64(b), out.dtype)


@pytest.mark.parametrize("shapes, names", [
    (((3, 4), (5, 2), None), ["(3, 4)", "(5, 2)"]),     # F mismatch
    (((3, 4), (4, 2), (3,)), ["b", "(3,)"]),             # bias length
    (((3, 4), (4, 2), (1, 2)), ["b", "(1, 2)"]),          # bias not 1-D
    (((3, 4), (4,), None), ["w", "(4,)"]),               # w not 2-D
    (((), (4, 2), None), ["x", "()"]),                   # x a scalar
])
def test_forward_shape_errors_name_the_shapes(backend, shapes, names):
    rng = np.random.default_rng(14)
    x, w, b = (None if s is None else make(rng, backend, s, "float32") for s in shapes)
    with pytest.raises(ValueError) as info:
        linear.forward(x, w, b, backend=backend)
    for name in names:
        assert name in str(info.value)


def test_backward_shape_errors_name_the_shapes(backend):
    rng = np.random.default_rng(15)
    x, w = make(rng, backend, (3, 4), "float32"), make(rng, backend, (4, 2), "float32")
    with pytest.raises(ValueError, match=r"dy has shape \(3, 5\)"):
        linear.backward(make(rng, backend, (3, 5), "float32"), x, w, backend=backend)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 2\)"):
        linear.backward(make(rng, backend, (2, 2), "float32"), x, w, backend=backend)
    with pytest.raises(ValueError, match="accumulate=True needs dw_out"):
        linear.backward(make(rng, backend, (3, 2), "float32"), x, w, accumulate=True, backend=backend)


def test_matmul_shape_errors_name_the_shapes(backend):
    rng = np.random.default_rng(16)
    a, b = make(rng, backend, (3, 4), "float32"), make(rng, backend, (3, 2), "float32")
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 2\)"):
        linear.matmul(a, b, backend=backend)
    assert linear.matmul(a, b, trans_a=True, backend=backend).shape == (4, 2)
    with pytest.raises(ValueError, match=r"a has shape \(\) and dtype float32; a scalar"):
        linear.matmul(make(rng, backend, (), "float32"), b, backend=backend)
    with pytest.raises(ValueError, match=r"\(2, 4, 3\).*\(3, 3, 2\).*do not broadcast"):
        linear.matmul(make(rng, backend, (2, 4, 3), "float32"), make(rng, backend, (3, 3, 2), "float32"),
                      backend=backend)
    with pytest.raises(ValueError, match="trans_b needs a matrix"):
        linear.matmul(a, make(rng, backend, (3,), "float32"), trans_b=True, backend=backend)
    with pytest.raises(ValueError, match="beta != 0 needs out"):
        linear.matmul(a, b, trans_a=True, beta=1.0, backend=backend)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        linear.matmul(a, b, trans_a=True, alpha="2", backend=backend)


@pytest.mark.parametrize("out_shape, out_dtype, error", [
    ((3, 3), "float32", ValueError), ((2, 3), "float64", TypeError), ((2, 3), "float16", TypeError),
])
def test_bad_out_is_rejected(backend, out_shape, out_dtype, error):
    rng = np.random.default_rng(17)
    x, w = make(rng, backend, (2, 4), "float32"), make(rng, backend, (4, 3), "float32")
    out = make(rng, backend, out_shape, out_dtype)
    with pytest.raises(error, match=rf"out has shape \({out_shape[0]}, {out_shape[1]}\) and dtype {out_dtype}"):
        linear.forward(x, w, out=out, backend=backend)
    for name in ("dw_out", "dx_out"):
        with pytest.raises((ValueError, TypeError), match=name):
            linear.backward(make(rng, backend, (2, 3), "float32"), x, w, **{name: out}, backend=backend)


def test_gradient_outputs_sharing_memory_are_rejected(backend):
    rng = np.random.default_rng(18)
    x, w, dy = (make(rng, backend, (4, 4), "float32") for _ in range(3))
    shared = make(rng, backend, (4, 4), "float32")
    with pytest.raises(ValueError, match="dx_out and dw_out share memory"):
        linear.backward(dy, x, w, dx_out=shared, dw_out=shared, backend=backend)
    with pytest.raises(ValueError, match="dw_out and db_out share memory"):
        linear.backward(dy, x, w, dw_out=shared, db_out=shared[0], backend=backend)


def test_flags_must_be_booleans(backend):
    rng = np.random.default_rng(19)
    a, b = make(rng, backend, (3, 3), "float32"), make(rng, backend, (3, 3), "float32")
    with pytest.raises(TypeError, match="trans_a must be True or False; got 'no'"):
        linear.matmul(a, b, trans_a="no", backend=backend)
    with pytest.raises(TypeError, match="accumulate must be True or False"):
        linear.backward(a, b, a, accumulate=1, backend=backend)


def test_out_must_be_an_array():
    x, w = np.full((2, 2), 0.5), np.full((2, 2), 0.25)
    with pytest.raises(TypeError, match="out must be a numpy array like the inputs; got list"):
        linear.forward(x, w, out=[[0.0, 0.0], [0.0, 0.0]])


def test_read_only_out_is_rejected():
    x, w = np.ones((2, 2), np.float32) + 1, np.ones((2, 2), np.float32) + 2
    out = np.empty((2, 2), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        linear.forward(x, w, out=out)


# ----------------------------------------------------------------------------------------------------
# Choosing the backend
# ----------------------------------------------------------------------------------------------------

def test_linear_backend_environment_variable(monkeypatch):
    x, w = np.full((2, 3), 0.5, np.float32), np.full((3, 2), 0.25, np.float32)
    monkeypatch.setenv("LINEAR_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match=r"\$LINEAR_BACKEND .* got .no-such-backend."):
        linear.forward(x, w)
    monkeypatch.setenv("LINEAR_BACKEND", "numpy")
    np.testing.assert_allclose(linear.forward(x, w), x @ w)


def test_the_environment_variables_are_read_as_os_environ_has_them_on_every_call(monkeypatch):
    """environment.setting reads os.environ's own dict: what os.environ.get gives, set, changed, empty or
    removed at run time, and from a mapping that replaces os.environ (which it reads with get); $LINEAR_BACKEND
    and $LINEAR_TF32 are read through it at every call."""
    import os
    from linear.backends import default_backend_name
    from linear.environment import setting
    monkeypatch.setattr(linear.tf32, "_set_by_user", None)
    for value in ("emulate", "numpy", "", "cuda", None):
        if value is None:
            monkeypatch.delenv("LINEAR_BACKEND", raising=False)
        else:
            monkeypatch.setenv("LINEAR_BACKEND", value)
        assert setting("LINEAR_BACKEND") == os.environ.get("LINEAR_BACKEND") == value
        assert default_backend_name() == (value or "numpy")
    for value, enabled in (("1", True), ("0", False), (None, False)):
        if value is None:
            monkeypatch.delenv("LINEAR_TF32", raising=False)
        else:
            monkeypatch.setenv("LINEAR_TF32", value)
        assert setting("LINEAR_TF32") == value and linear.get_tf32() is enabled
    monkeypatch.setattr(os, "environ", {"LINEAR_BACKEND": "emulate", "LINEAR_TF32": "1"})
    assert default_backend_name() == "emulate" and linear.get_tf32()
    os.environ["LINEAR_BACKEND"] = "no-such-backend"
    with pytest.raises(ValueError, match=r"\$LINEAR_BACKEND .* got .no-such-backend."):
        default_backend_name()


def test_numpy_arrays_on_the_cuda_backend_are_refused():
    x, w = np.full((2, 3), 0.5, np.float32), np.full((3, 2), 0.25, np.float32)
    error = TypeError if "cuda" in linear.available_backends() else linear.BackendUnavailable
    with pytest.raises(error, match="cuda"):
        linear.forward(x, w, backend="cuda")


@pytest.mark.gpu
def test_mixing_numpy_and_cupy_is_a_type_error():
    if "cuda" not in linear.available_backends():
        pytest.skip("needs the cuda backend")
    import cupy
    x, w = cupy.full((2, 3), 0.5, cupy.float32), np.full((3, 2), 0.25, np.float32)
    with pytest.raises(TypeError, match="cannot mix CuPy and numpy"):
        linear.forward(x, w)


def test_lists_are_accepted_as_numpy_arrays():
    y = linear.forward([[1.0, 2.0]], [[3.0], [4.0]])
    assert isinstance(y, np.ndarray) and y.tolist() == [[11.0]]


def test_available_backends_always_has_numpy():
    assert linear.available_backends()[0] == "numpy"


def test_a_missing_array_is_a_type_error_naming_it(backend):
    w = make(np.random.default_rng(18), backend, (4, 2), "float32")
    with pytest.raises(TypeError, match="x must be an array; got None"):
        linear.forward(None, w, backend=backend)
    with pytest.raises(TypeError, match="w must be an array; got None"):
        linear.backward(w, w, None, backend=backend)
    with pytest.raises(TypeError, match="b must be an array; got None"):
        linear.matmul(w, None, backend=backend)
