"""linear.optim: several steps of SGD and Adam against a float64 numpy transcription of torch.optim's
update rules, on every array module (numpy, and CuPy under -m gpu), and their argument checks."""
from __future__ import annotations

import numpy as np
import pytest

from linear import Parameter, optim
from linear.backends import get_backend
from linear.dtypes import SUPPORTED_DTYPES, dtype_of
from reference import TOLERANCE, rel_err, to_numpy

STEPS = 5
DTYPES = list(SUPPORTED_DTYPES)


def rounded(p, dtype):
    """p stored into a parameter of `dtype` (each step rounds the parameter, not the float64 state)."""
    return p.astype(dtype).astype(np.float64)


def sgd_reference(p, grads, dtype, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                  maximize=False):
    """torch.optim.SGD's documented algorithm, in float64."""
    buf = None
    for g in grads:
        g = (-g if maximize else g) + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = rounded(p - lr * g, dtype)
    return p


def adam_reference(p, grads, dtype, lr, betas, eps, weight_decay=0.0, amsgrad=False, maximize=False,
                   decoupled=False, bias_correction=True):
    """torch.optim.Adam's documented algorithm (AdamW's with decoupled=True), in float64."""
    m = v = v_max = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        v_max = np.maximum(v_max, v)
        v_used = v_max if amsgrad else v
        if bias_correction:
            m_hat, v_hat = m / (1 - betas[0] ** t), v_used / (1 - betas[1] ** t)
        else:  # only for the negative control
            m_hat, v_hat = m, v_used
        p = rounded(p - lr * m_hat / (np.sqrt(v_hat) + eps), dtype)
    return p


def run(backend, dtype, make_optimizer):
    """STEPS steps on two parameters with fresh gradients each step.

    Returns (initial values, gradients per step, final values), all float64 numpy, taken from the
    parameters' own (rounded) dtype so the reference starts where the optimizer did.
    """
    xp = get_backend(backend).xp
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,)]
    params = [Parameter(xp.asarray(rng.standard_normal(s).astype(dtype_of(dtype)))) for s in shapes]
    initial = [to_numpy(p.data).astype(np.float64) for p in params]
    data_arrays = [p.data for p in params]
    optimizer = make_optimizer(params)
    grads = [[] for _ in params]
    for _ in range(STEPS):
        for p, history in zip(params, grads):
            g = rng.standard_normal(p.data.shape).astype(p.data.dtype)
            p.grad[...] = xp.asarray(g)
            history.append(g.astype(np.float64))
        optimizer.step()
        for p, history in zip(params, grads):  # step never writes into grad (weight decay included)
            np.testing.assert_array_equal(to_numpy(p.grad).astype(np.float64), history[-1])
    for p, data in zip(params, data_arrays):  # updated in place, dtype kept
        assert p.data is data and p.data.dtype == dtype_of(dtype)
    return initial, grads, [to_numpy(p.data).astype(np.float64) for p in params]


def displacement_error(initial, final, expected) -> float:
    """Relative error of the distance travelled (p - p0), which the update rule alone decides."""
    return max(rel_err(f - i, e - i) for i, f, e in zip(initial, final, expected))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.1), (0.8, 0.05)])
def test_sgd_matches_torch_rule(backend, dtype, momentum, weight_decay):
    lr = 0.1
    initial, grads, final = run(backend, dtype, lambda params: optim.SGD(params, lr=lr, momentum=momentum,
                                                                          weight_decay=weight_decay))
    expected = [sgd_reference(p, g, dtype_of(dtype), lr, momentum=momentum, weight_decay=weight_decay) for p, g in zip(initial, grads)]
    assert displacement_error(initial, final, expected) <= TOLERANCE[dtype]
    if momentum:  # negative control: the momentum buffer changes the path
        plain = [sgd_reference(p, g, dtype_of(dtype), lr, weight_decay=weight_decay) for p, g in zip(initial, grads)]
        assert displacement_error(initial, final, plain) > 0.1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_rule(backend, dtype, weight_decay):
    hyper = dict(lr=0.1, betas=(0.8, 0.9), eps=1e-3, weight_decay=weight_decay)
    initial, grads, final = run(backend, dtype, lambda params: optim.Adam(params, **hyper))
    expected = [adam_reference(p, g, dtype_of(dtype), **hyper) for p, g in zip(initial, grads)]
    assert displacement_error(initial, final, expected) <= TOLERANCE[dtype]
    # negative control: without bias correction the first steps are much shorter
    uncorrected = [adam_reference(p, g, dtype_of(dtype), **hyper, bias_correction=False) for p, g in zip(initial, grads)]
    assert displacement_error(initial, final, uncorrected) > 0.1


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_optimizer_state_dtype(dtype):
    """State has the parameter's dtype, float32 for half types."""
    p = Parameter(np.ones(3, dtype))
    p.grad[...] = 1
    sgd, adam = optim.SGD([p], lr=0.1, momentum=0.9), optim.Adam([p])
    sgd.step()
    adam.step()
    expected = np.float32 if dtype == "float16" else np.dtype(dtype)
    assert sgd.state[0]["momentum_buffer"].dtype == expected
    assert adam.state[0]["exp_avg"].dtype == adam.state[0]["exp_avg_sq"].dtype == expected


def test_defaults_follow_torch():
    def options(optimizer):
        return {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    assert options(optim.Adam([Parameter(np.ones(2))])) == dict(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False)
    assert options(optim.AdamW([Parameter(np.ones(2))]))["weight_decay"] == 1e-2
    assert options(optim.SGD([Parameter(np.ones(2))], lr=0.5)) == dict(
        lr=0.5, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)


def test_zero_grad_clears_in_place(backend):
    xp = get_backend(backend).xp
    params = [Parameter(xp.ones((2, 3), dtype="float32")), Parameter(xp.ones(3, dtype="float32"))]
    grads = [p.grad for p in params]
    for p in params:
        p.grad[...] = 5
    optim.SGD(params, lr=0.1).zero_grad()
    for p, g in zip(params, grads):
        assert p.grad is g and not to_numpy(p.grad).any()


def test_zero_learning_rate_leaves_parameters_unchanged():
    p = Parameter(np.arange(1.0, 4.0))
    p.grad[...] = 1
    for optimizer in (optim.SGD([p], lr=0, momentum=0.9), optim.Adam([p], lr=0)):
        optimizer.step()
    np.testing.assert_array_equal(p.data, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("make, exception, words", [
    (lambda ps: optim.SGD(ps, lr=-0.1), ValueError, ["lr", "-0.1"]),
    (lambda ps: optim.SGD(ps, lr=float("nan")), ValueError, ["lr", "nan"]),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), ValueError, ["momentum", "-0.5"]),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), ValueError, ["weight_decay", "-1"]),
    (lambda ps: optim.Adam(ps, lr=-1e-3), ValueError, ["lr", "-0.001"]),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), ValueError, ["betas[0]", "1.0"]),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), ValueError, ["betas[1]", "-0.1"]),
    (lambda ps: optim.Adam(ps, betas=(0.9,)), ValueError, ["betas", "(0.9,)"]),
    (lambda ps: optim.Adam(ps, eps=-1e-8), ValueError, ["eps", "-1e-08"]),
    (lambda ps: optim.Adam(ps, weight_decay=-0.1), ValueError, ["weight_decay", "-0.1"]),
    (lambda ps: optim.Adam([]), ValueError, ["params", "empty"]),
    (lambda ps: optim.SGD(iter([]), lr=0.1), ValueError, ["params", "empty"]),
    (lambda ps: optim.SGD([*ps, np.ones(3)], lr=0.1), TypeError, ["params[1]", ".data and .grad", "ndarray"]),
    (lambda ps: optim.SGD(ps, lr="0.1"), TypeError, ["lr", "'0.1'", "str"]),
    (lambda ps: optim.Adam([*ps, *ps]), ValueError, ["more than once"]),
])
def test_bad_hyper_parameters_are_clear_errors(make, exception, words):
    with pytest.raises(exception) as info:
        make([Parameter(np.ones(3))])
    for word in words:
        assert word in str(info.value)


SGD_OPTIONS = [dict(momentum=0.9, dampening=0.3), dict(momentum=0.9, nesterov=True, weight_decay=0.05),
               dict(momentum=0.5, maximize=True), dict(maximize=True, weight_decay=0.1)]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=lambda o: ",".join(o))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sgd_options_match_torch_rule(backend, dtype, options):
    initial, grads, final = run(backend, dtype, lambda params: optim.SGD(params, lr=0.05, **options))
    expected = [sgd_reference(p, g, dtype_of(dtype), 0.05, **options) for p, g in zip(initial, grads)]
    assert displacement_error(initial, final, expected) <= TOLERANCE[dtype]
    plain = [sgd_reference(p, g, dtype_of(dtype), 0.05) for p, g in zip(initial, grads)]
    assert displacement_error(initial, final, plain) > 0.01  # negative control: each option matters


ADAM_OPTIONS = [(optim.Adam, dict(amsgrad=True)), (optim.Adam, dict(maximize=True, weight_decay=0.1)),
                (optim.AdamW, dict(weight_decay=0.5)), (optim.AdamW, dict(weight_decay=0.5, amsgrad=True))]


@pytest.mark.parametrize("kind, options", ADAM_OPTIONS, ids=lambda o: o.__name__ if isinstance(o, type) else ",".join(o))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adam_options_match_torch_rule(backend, dtype, kind, options):
    hyper = dict(lr=0.1, betas=(0.8, 0.9), eps=1e-3)
    # amsgrad shows when v shrinks: gradients that fall after the first step
    initial, grads, final = run(backend, dtype, lambda params: kind(params, **hyper, **options))
    decoupled = kind is optim.AdamW
    expected = [adam_reference(p, g, dtype_of(dtype), **hyper, **options, decoupled=decoupled)
                for p, g in zip(initial, grads)]
    assert displacement_error(initial, final, expected) <= TOLERANCE[dtype]
    coupled = [adam_reference(p, g, dtype_of(dtype), **hyper, **options, decoupled=not decoupled)
               for p, g in zip(initial, grads)]
    if options.get("weight_decay"):  # negative control: L2 and decoupled decay differ
        assert displacement_error(initial, final, coupled) > 0.01


def test_parameter_groups_take_their_own_options(backend):
    def make(params):
        return optim.SGD([{"params": params[:1], "lr": 0.5, "momentum": 0.9}, {"params": params[1:]}], lr=0.01)
    initial, grads, final = run(backend, "float64", make)
    expected = [sgd_reference(initial[0], grads[0], np.float64, 0.5, momentum=0.9),
                sgd_reference(initial[1], grads[1], np.float64, 0.01)]
    assert displacement_error(initial, final, expected) <= TOLERANCE["float64"]
    with pytest.raises(ValueError, match=r"unknown options \['betas'\]"):
        optim.SGD([{"params": [Parameter(np.ones(2))], "betas": (0.9, 0.9)}], lr=0.1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        optim.SGD([Parameter(np.ones(2))], lr=0.1, nesterov=True)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                                  lambda ps: optim.AdamW(ps, lr=0.01, amsgrad=True)], ids=["SGD", "AdamW"])
def test_resuming_from_checkpoints_is_bitwise_identical(backend, tmp_path, make):
    """Train 6 steps in one go; train 3, save layer and optimizer, load both into fresh objects, train 3
    more: the weights are bitwise equal. Resuming without the optimizer's state is not."""
    import pickle

    from linear import Linear
    rng = np.random.default_rng(30)
    batches = [rng.standard_normal((8, 5)).astype(np.float32) for _ in range(6)]

    def train(layer, optimizer, steps):
        for x in steps:
            x = layer.xp.asarray(x)
            optimizer.zero_grad()
            layer.backward(layer(x) - 1.0)  # the gradient of ½‖y - 1‖²
            optimizer.step()

    straight = Linear(5, 3, backend=backend, seed=0)
    train(straight, make(list(straight.parameters())), batches)

    first = Linear(5, 3, backend=backend, seed=0)
    optimizer = make(list(first.parameters()))
    train(first, optimizer, batches[:3])
    first.save(tmp_path / "layer.npz")
    (tmp_path / "optimizer.pkl").write_bytes(pickle.dumps(optimizer.state_dict()))

    resumed = Linear.load(tmp_path / "layer.npz", backend=backend)
    resumed_optimizer = make(list(resumed.parameters()))
    resumed_optimizer.load_state_dict(pickle.loads((tmp_path / "optimizer.pkl").read_bytes()))
    train(resumed, resumed_optimizer, batches[3:])
    for mine, theirs in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert to_numpy(mine.data).tobytes() == to_numpy(theirs.data).tobytes()

    forgetful = Linear.load(tmp_path / "layer.npz", backend=backend)
    train(forgetful, make(list(forgetful.parameters())), batches[3:])
    assert to_numpy(forgetful.weight.data).tobytes() != to_numpy(straight.weight.data).tobytes()


def test_load_state_dict_mismatches_are_clear_errors():
    p, q = Parameter(np.ones(2)), Parameter(np.ones(3))
    state = optim.SGD([p, q], lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match=r"groups of \[2\] parameters; this optimizer has \[1\]"):
        optim.SGD([p], lr=0.1, momentum=0.9).load_state_dict(state)
    source = optim.SGD([p, q], lr=0.1, momentum=0.9)
    p.grad[...] = 1
    q.grad[...] = 1
    source.step()
    state = source.state_dict()
    target = optim.SGD([q, p], lr=0.2, momentum=0.9)
    with pytest.raises(ValueError, match=r"\['momentum_buffer'\] has shape \(2,\); parameter 0 has shape \(3,\)"):
        target.load_state_dict(state)
    assert target.param_groups[0]["lr"] == 0.2 and not target.state  # nothing changed
