"""linear.torch with a fused activation (issue 22): linear(activation=), Linear(activation=) and
swap_linear(fuse_activations=True) against torch's F.linear followed by F.relu / F.gelu /
F.gelu(approximate="tanh") / F.silu: values and gradients in every dtype on the numpy and emulate backends,
gradcheck and gradgradcheck, NaN and inf, torch.compile, and an optimizer step on a fused MLP."""
from __future__ import annotations

import copy
import importlib
import pickle

import pytest

from conftest import CI, HOST_BACKENDS

torch = importlib.import_module("torch") if CI else pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import linear.torch as lt  # noqa: E402
from test_torch import (DTYPES, assert_matches, assert_unchanged, compiled_matches_eager,  # noqa: E402,F401
                        make, needs_cuda, poisoned, rel, tol)  # poisoned: a fixture

ACTIVATIONS = ["relu", "gelu", "gelu_tanh", "silu"]
REFERENCE = {  # torch's own activation, applied after F.linear
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
}
MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU}


def backends(*, emulate: bool = True) -> list:
    return [name for name in HOST_BACKENDS if emulate or name != "emulate"]


def reference(x, weight, bias, activation, dy):
    """y and (dx, dweight[, dbias]) of torch's F.linear + activation in float64, on the same (rounded) values."""
    x64, w64, b64 = (None if t is None else t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = REFERENCE[activation](F.linear(x64, w64, b64))
    return y64, torch.autograd.grad(y64, [t for t in (x64, w64, b64) if t is not None], dy.double())


# ----------------------------------------------------------------------------------------------------
# Values and gradients
# ----------------------------------------------------------------------------------------------------

# (name, x's shape, bias, non-contiguous x and weight), as in test_torch.py; F = 5 in, D = 7 out.
CASES = [
    ("batch", (9, 5), True, False),
    ("leading dims, no bias", (2, 3, 5), False, False),
    ("sliced x, transposed weight", (4, 5), True, True),
]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_torch(case, activation, dtype, backend, poisoned):
    _, shape, has_bias, strided = case
    seed = len(shape) + 10 * DTYPES.index(dtype) + 100 * ACTIVATIONS.index(activation)
    x, weight, bias = make(shape, has_bias, strided, dtype, seed=seed)
    inputs = [t.detach().clone() for t in (x, weight, bias) if t is not None]
    y = lt.linear(x, weight, bias, activation=activation, backend=backend)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    grads = torch.autograd.grad(y, [t for t in (x, weight, bias) if t is not None], dy)
    y64, refs = reference(x, weight, bias, activation, dy)

    assert_matches(y, grads, y64, refs, dtype)
    assert_unchanged(inputs, (x, weight, bias))


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_float64(activation, backend):
    x, weight, bias = make((2, 3, 5), True, False, torch.float64, seed=31)
    assert torch.autograd.gradcheck(lambda *a: lt.linear(*a, activation=activation, backend=backend),
                                    (x, weight, bias))


@pytest.mark.parametrize("backend", backends(emulate=False))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradgradcheck_float64(activation, backend):
    """Gradients of gradients: the create_graph path (z recomputed, torch's differentiable ops for dz). On
    numpy only: that path's products are linear()'s, whose gradgradcheck on emulate is in test_torch.py."""
    x, weight, bias = make((3, 5), True, False, torch.float64, seed=32)
    assert torch.autograd.gradgradcheck(lambda *a: lt.linear(*a, activation=activation, backend=backend),
                                        (x, weight, bias))


def test_gradgradcheck_without_bias_and_with_only_the_weight_differentiable():
    x, weight, _ = make((4, 5), False, False, torch.float64, seed=33)
    for activation in ACTIVATIONS:
        assert torch.autograd.gradgradcheck(lambda x, w: lt.linear(x, w, activation=activation), (x, weight))
        assert torch.autograd.gradgradcheck(lambda w: lt.linear(x.detach(), w, activation=activation), (weight,))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_gradcheck_catches_a_wrong_activation_gradient(backend, monkeypatch):
    """Negative control: gradcheck fails for gelu with the fused backward handed y in place of z (the
    pre-activation dropped; relu is the one activation for which y serves) on emulate, and with gelu's
    derivative replaced by 1 on numpy (whose CPU tensors torch's autograd differentiates)."""
    from linear.backends import torch_cpu
    real = lt._gradients

    def dropped_preact(run, dy, x, weight, need_dx, need_dweight, need_dbias, activation, saved):
        return real(run, dy, x, weight, need_dx, need_dweight, need_dbias, activation, F.gelu(saved))  # y for z
    monkeypatch.setattr(lt, "_gradients", dropped_preact)
    monkeypatch.setitem(torch_cpu._ACTIVATIONS, "gelu", lambda z: F.gelu(z).detach() + z - z.detach())
    args = make((4, 5), True, False, torch.float64, seed=34)
    assert not torch.autograd.gradcheck(lambda *a: lt.linear(*a, activation="gelu", backend=backend), args,
                                        raise_exception=False)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nan_and_inf_propagate_as_in_torch(activation, backend):
    """Pre-activations of +inf, -inf and NaN (through the bias) and an inf in x: y, dx, dweight and dbias
    (float32) are NaN, +inf and -inf exactly where torch's are in float64, and equal elsewhere. (Against
    torch's float32 the masks differ at gelu(+inf): torch 2.13's vectorised float32 CPU kernel gives NaN
    there, its scalar and float64 kernels give inf, as the formula does and as we do.)"""
    x, weight, bias = make((6, 5), True, False, torch.float32, seed=35)
    with torch.no_grad():
        bias[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
        x[4, 1] = float("inf")
    y = lt.linear(x, weight, bias, activation=activation, backend=backend)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(36))
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    y_ref, refs = reference(x, weight, bias, activation, dy)
    for out, ref, name in zip((y, *grads), (y_ref, *refs), ("y", "dx", "dweight", "dbias")):
        for special in (torch.isnan, torch.isposinf, torch.isneginf):
            assert torch.equal(special(out), special(ref)), (name, special.__name__)
        finite = torch.isfinite(ref)  # all of dx is NaN where a column of dz holds one
        assert rel(out[finite], ref[finite]) <= tol(torch.float32), name
    assert torch.isnan(y_ref).any() and not torch.isfinite(refs[1]).all()  # the test sees specials at all


# ----------------------------------------------------------------------------------------------------
# The two paths: what is kept for backward, the custom ops, torch.compile
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_pre_activation_is_kept_only_for_backward_and_never_for_relu(activation, monkeypatch):
    """The fused autograd.Function (emulate) has the GEMM write z only when a backward will need it."""
    kept = []
    real = lt._forward
    monkeypatch.setattr(lt, "_forward", lambda *a: kept.append(a[-1] is not None) or real(*a))
    x, weight, bias = make((4, 5), True, False, torch.float32, seed=37)
    lt.linear(x, weight, bias, activation=activation, backend="emulate")
    with torch.no_grad():
        lt.linear(x, weight, bias, activation=activation, backend="emulate")
    lt.linear(x.detach(), weight.detach(), bias.detach(), activation=activation, backend="emulate")
    assert kept == [activation != "relu", False, False]


def test_the_eager_backward_is_one_fused_call_and_the_products(monkeypatch):
    """A training step's backward through the fused autograd.Function (emulate): one activation_grad (dz
    and dbias together), then two GEMMs on dz (the calls linear.torch makes; the backend's own calls inside
    them are not counted)."""
    from linear.backends.kernel import KernelBackend  # emulate's backend class
    calls, depth = [], [0]

    def spy(name, real):
        def call(*args, **kwargs):
            if not depth[0]:
                calls.append(name)
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1
        return call
    for method in ("gemm", "colsum", "activation_grad"):
        monkeypatch.setattr(KernelBackend, method, spy(method, getattr(KernelBackend, method)))
    x, weight, bias = make((4, 5), True, False, torch.float32, seed=38)
    lt.linear(x, weight, bias, activation="silu", backend="emulate").sum().backward()
    assert calls == ["gemm", "activation_grad", "gemm", "gemm"]


def test_opcheck_schema_fake_and_autograd_registration():
    x, weight, bias = make((3, 5), True, False, torch.float32, seed=39)
    for activation in ("relu", "gelu"):
        torch.library.opcheck(torch.ops.linear.linear_act.default,
                              (x, weight, bias, activation, activation != "relu", "numpy"))
    torch.library.opcheck(torch.ops.linear.linear_act.default, (x, weight, bias, "silu", False, "numpy"))
    dy, z = torch.randn(3, 7), torch.randn(3, 7)
    for needs in [(True, True, True), (False, True, False)]:
        torch.library.opcheck(torch.ops.linear.linear_act_backward.default,
                              (dy, z, x.detach(), weight.detach(), "gelu_tanh", *needs, "numpy"))


def test_meta_tensors_give_shapes_only():
    x = torch.empty(3, 2, 5, device="meta")
    weight = torch.empty(7, 5, device="meta", requires_grad=True)
    y = lt.linear(x, weight, activation="gelu")
    assert (y.shape, y.device.type) == ((3, 2, 7), "meta")
    y.sum().backward()
    assert weight.grad.shape == weight.shape


def fused_mlp(dtype=torch.float32):
    """An MLP with each fusable activation once, and a Tanh that is not fused."""
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16),
                         nn.GELU(approximate="tanh"), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3)).to(dtype)


def test_torch_compile_fullgraph_matches_eager_and_runs_the_fused_backward(monkeypatch):
    """fullgraph=True fails on any graph break; the compiled backward calls the fused activation_grad
    (not the create_graph path), once per fused layer."""
    torch.manual_seed(40)
    model = lt.swap_linear(fused_mlp())
    real = lt._gradients
    # eagerly torch's autograd differentiates every layer (CPU tensors on numpy); compiled, the custom ops'
    # backward: the fused one for each activation, the plain one for the two plain layers
    phases = iter([[], sorted([(a,) for a in ACTIVATIONS] + [()] * 2)])

    def backward(y):
        fused = []
        monkeypatch.setattr(lt, "_gradients", lambda *a: fused.append(a[7:8]) or real(*a))
        y.square().sum().backward()
        monkeypatch.setattr(lt, "_gradients", real)
        assert sorted(fused) == next(phases)

    compiled_matches_eager(model, torch.randn(6, 5), backward)


def test_torch_compile_gradient_penalty_matches_eager():
    """Double backward through the custom op's autograd (create_graph inside a compiled region is not
    traced: the penalty's second backward runs the create_graph path eagerly on the op)."""
    x, weight, bias = make((4, 5), True, False, torch.float64, seed=41)

    def penalty(fn):
        (dx,) = torch.autograd.grad(fn(x, weight, bias).sum(), x, create_graph=True)
        return torch.autograd.grad(dx.square().sum(), (weight, bias))
    eager = penalty(lambda *a: lt.linear(*a, activation="silu"))
    theirs = penalty(lambda *a: F.silu(F.linear(*a)))
    traced = penalty(lambda *a: lt._linear_act(*a, "silu", True, None)[0])  # the custom op, as compile runs it
    for ours in (eager, traced):
        assert all(rel(o, t) <= 1e-12 for o, t in zip(ours, theirs))


# ----------------------------------------------------------------------------------------------------
# Linear, swap_linear
# ----------------------------------------------------------------------------------------------------

def test_linear_layer_with_activation():
    layer = lt.Linear(5, 7, activation="gelu_tanh", dtype=torch.float64, backend="numpy")
    assert "activation='gelu_tanh'" in repr(layer) and "backend='numpy'" in repr(layer)
    x = torch.randn(3, 5, dtype=torch.float64)
    assert rel(layer(x), F.gelu(F.linear(x, layer.weight, layer.bias), approximate="tanh")) <= 1e-12
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert clone.activation == "gelu_tanh" and torch.equal(clone(x), layer(x))
    assert layer.state_dict().keys() == {"weight", "bias"}  # checkpoints load into nn.Linear as before


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match=r"activation must be one of None, 'relu', 'gelu', 'gelu_tanh', 'silu'; "
                                         r"got 'tanh'"):
        lt.linear(torch.randn(2, 5), torch.randn(3, 5), activation="tanh")
    with pytest.raises(ValueError, match="got 'gelu_erf'"):
        lt.Linear(5, 3, activation="gelu_erf")


def sgd_steps(model, optimizer, steps=3, seed=42):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    target = torch.randn(32, 3, generator=g, dtype=torch.float64)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(model(x), target).backward()
        optimizer.step()


def test_swap_linear_fuses_activations_and_a_prebuilt_optimizer_steps_as_before():
    torch.manual_seed(43)
    model = fused_mlp(torch.float64)
    reference = copy.deepcopy(model)
    before = list(model.parameters())
    keys = model.state_dict().keys()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # built before the swap
    assert lt.swap_linear(model) is model
    assert [type(m) for m in model] == [lt.Linear, nn.Identity] * 4 + [lt.Linear, nn.Tanh, lt.Linear]
    assert [model[i].activation for i in (0, 2, 4, 6, 8, 10)] == ACTIVATIONS + [None, None]
    assert all(a is b for a, b in zip(model.parameters(), before)) and model.state_dict().keys() == keys

    start = [p.detach().clone() for p in before]
    sgd_steps(model, optimizer)
    sgd_steps(reference, torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9))
    assert all(rel(p, s) > 1e-4 for p, s in zip(model.parameters(), start))  # the old optimizer moved them
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert rel(ours, theirs) <= 1e-12


def test_swap_linear_with_a_wrong_fusion_fails_the_comparison(monkeypatch):
    """Negative control for the test above: every nn.GELU fused as the tanh approximation (a plausible
    mix-up) moves the parameters after the steps by far more than that test's 1e-12 (measured: 9e-7)."""
    monkeypatch.setattr(lt, "_fusable_activation", lambda m: {nn.ReLU: "relu", nn.GELU: "gelu_tanh",
                                                              nn.SiLU: "silu"}.get(type(m)))
    torch.manual_seed(43)
    model = fused_mlp(torch.float64)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lt.swap_linear(model)
    sgd_steps(model, optimizer)
    sgd_steps(reference, torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9))
    assert max(rel(p, q) for p, q in zip(model.parameters(), reference.parameters())) > 1e-9


def test_swap_linear_fuse_activations_false_keeps_the_activation_modules():
    model = lt.swap_linear(fused_mlp(), fuse_activations=False)
    assert [type(m) for m in model][:4] == [lt.Linear, nn.ReLU, lt.Linear, nn.GELU]
    assert all(m.activation is None for m in model if isinstance(m, lt.Linear))


def test_swap_linear_fuses_only_adjacent_layers_in_sequential_containers():
    class Residual(nn.Sequential):  # a Sequential whose forward is not Sequential's: left unfused
        def forward(self, x):
            return x + super().forward(x)

    shared = nn.Linear(4, 4)
    model = nn.ModuleDict({
        "gap": nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0), nn.ReLU()),  # not adjacent
        "residual": Residual(nn.Linear(4, 4), nn.ReLU()),
        "dict": nn.ModuleDict({"fc": nn.Linear(4, 4), "act": nn.ReLU()}),  # not a Sequential
        "twice": nn.Sequential(shared, nn.SiLU(), shared),  # one layer under two names, fused at the first
        "last": nn.Sequential(nn.ReLU(), nn.Linear(4, 4)),
        "inplace": nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)),
    })
    lt.swap_linear(model)
    assert [type(m) for m in model["gap"]] == [lt.Linear, nn.Dropout, nn.ReLU]
    assert [type(m) for m in model["residual"]] == [lt.Linear, nn.ReLU]
    assert type(model["dict"]["act"]) is nn.ReLU
    twice = model["twice"]
    assert [type(m) for m in twice] == [lt.Linear, nn.Identity, lt.Linear]
    assert (twice[0].activation, twice[2].activation) == ("silu", None) and twice[0].weight is twice[2].weight
    assert type(model["last"][0]) is nn.ReLU and model["last"][1].activation is None
    assert model["inplace"][0].activation == "relu" and type(model["inplace"][1]) is nn.Identity


# ----------------------------------------------------------------------------------------------------
# On a GPU (pytest -m gpu): CUDA tensors through the cuda backend
# ----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda_values_and_gradients_match_torch(activation, dtype, poisoned):
    needs_cuda()
    x, weight, bias = make((33, 5), True, False, dtype, seed=44, device="cuda")  # 33 rows: an edge tile
    y = lt.linear(x, weight, bias, activation=activation)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    y64, refs = reference(x, weight, bias, activation, dy)
    assert y.device == x.device and rel(y, y64) <= tol(dtype)
    assert all(rel(g, r) <= tol(dtype) for g, r in zip(grads, refs))
