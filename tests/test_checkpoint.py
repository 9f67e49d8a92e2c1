"""Checkpoints of a Linear (linear/checkpoint.py and the layer's state): save and load round trips, pickle
and deepcopy, atomic save (a save killed with SIGKILL leaves the previous file loadable), load that checks
a file before it allocates, torch's weight layout."""
from __future__ import annotations

import copy
import importlib.metadata
import io
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import linear
from linear import Linear
from reference import to_numpy


def test_version_is_the_installed_distributions():
    assert linear.__version__ == importlib.metadata.version("linear")


@pytest.mark.parametrize("clone", [lambda layer: pickle.loads(pickle.dumps(layer)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_pickle_and_deepcopy_keep_parameters_and_gradients(backend, clone):
    layer = Linear(5, 3, backend=backend, seed=1)
    x = layer.xp.asarray(np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32))
    layer.backward(layer(x))  # a gradient, and an input kept for backward
    twin = clone(layer)
    assert repr(twin) == repr(layer) and twin.backend == layer.backend and twin.xp is layer.xp
    for mine, theirs in zip(layer.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(to_numpy(theirs.data), to_numpy(mine.data))
        np.testing.assert_array_equal(to_numpy(theirs.grad), to_numpy(mine.grad))
        assert theirs.data is not mine.data
    twin.weight.data[...] = 0  # independent copies
    assert float(abs(layer.weight.data).sum()) > 0
    np.testing.assert_array_equal(to_numpy(twin(x)), to_numpy(twin.bias.data)[None].repeat(4, 0))
    with pytest.raises(RuntimeError, match="before forward"):  # the kept input is not carried over
        clone(layer).backward(layer(x))


def test_torch_layout_round_trip_and_transposed_weight_error():
    layer = Linear(3, 2, seed=3)
    state = layer.state_dict(layout="torch")
    assert state["weight"].shape == (2, 3)  # torch.nn.Linear's (out_features, in_features)
    np.testing.assert_array_equal(state["weight"], layer.weight.data.T)
    other = Linear(3, 2, seed=4)
    other.load_state_dict(state, layout="torch")
    np.testing.assert_array_equal(other.weight.data, layer.weight.data)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*expected shape \(3, 2\).*transpose.*layout='torch'"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="layout must be"):
        other.state_dict(layout="TORCH")


# ----------------------------------------------------------------------------------------------------
# Save and load
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_save_load_round_trip(backend, dtype, bias, tmp_path):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    layer = Linear(5, 3, bias=bias, dtype=dtype, backend=backend, seed=7)
    layer.save(tmp_path / "layer.npz")
    loaded = Linear.load(tmp_path / "layer.npz", backend=backend)
    assert repr(loaded) == repr(layer) and loaded.dtype == layer.dtype and loaded.backend == backend
    for mine, theirs in zip(layer.parameters(), loaded.parameters(), strict=True):
        assert theirs.data.dtype == mine.data.dtype
        np.testing.assert_array_equal(to_numpy(theirs.data), to_numpy(mine.data))
    x = layer.xp.asarray(np.random.default_rng(8).standard_normal((2, 5)).astype(layer.dtype))
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(layer(x)))


def test_save_keeps_the_name_it_is_given(tmp_path):
    layer = Linear(3, 2, seed=4)
    layer.save(tmp_path / "layer")  # no ".npz" added behind the caller's back
    np.testing.assert_array_equal(Linear.load(tmp_path / "layer").weight.data, layer.weight.data)


def test_load_rejects_files_that_are_not_a_saved_linear(tmp_path):
    np.savez(tmp_path / "weights.npz", weight=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"not a saved Linear: missing keys \['in_features'"):
        Linear.load(tmp_path / "weights.npz")
    # pickled objects are refused (allow_pickle=False), never executed
    np.savez(tmp_path / "pickled.npz", in_features=2, out_features=2, has_bias=False, dtype="float32",
             weight=np.array([object()] * 4).reshape(2, 2))
    with pytest.raises(ValueError, match="holds Python objects"):
        Linear.load(tmp_path / "pickled.npz")
    # a file whose arrays disagree with its configuration
    Linear(3, 2).save(tmp_path / "layer.npz")
    stored = dict(np.load(tmp_path / "layer.npz"))
    np.savez(tmp_path / "edited.npz", **{**stored, "in_features": 4})
    with pytest.raises(ValueError, match=r"'weight'.*\(3, 2\).*\(4, 2\)"):
        Linear.load(tmp_path / "edited.npz")


# ----------------------------------------------------------------------------------------------------
# Validated load
# ----------------------------------------------------------------------------------------------------

def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def valid_arrays(**changes):
    layer = Linear(3, 2, seed=5)
    return {"in_features": 3, "out_features": 2, "has_bias": True, "dtype": "float32",
            "weight": layer.weight.data, "bias": layer.bias.data, **changes}


def with_member(name: str, header_shape: tuple[int, ...], data: bytes = b"") -> bytes:
    """A checkpoint whose member `name` has an .npy header claiming header_shape (float32), then `data`."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, value in valid_arrays().items():
            if key != name:
                archive.writestr(f"{key}.npy", npz_member(value))
        archive.writestr(f"{name}.npy", member.getvalue() + data)
    return buffer.getvalue()


def npz_member(value) -> bytes:
    member = io.BytesIO()
    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return member.getvalue()


def flipped(data: bytes) -> bytes:
    """One byte changed inside the last member's data (caught by the zip CRC)."""
    position = data.rindex(b"PK\x01\x02") - 10
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1:]


BAD_FILES = {
    "empty": (b"", "not an .npz"),
    "text": (b"weights: 1, 2, 3\n", "not an .npz"),
    "truncated": (npz_bytes(**valid_arrays())[:300], "not an .npz"),
    "flipped byte": (flipped(npz_bytes(**valid_arrays())), "corrupt"),
    "huge claimed weight": (with_member("weight", (60000, 60000)), r"declares shape \(60000, 60000\).*holds 0 bytes"),
    "short member": (with_member("weight", (3, 2), bytes(20)),
                     r"'weight.npy' declares shape \(3, 2\) and dtype float32 \(24 bytes\) but holds 20 bytes \(truncated\)"),
    "member with trailing bytes": (with_member("bias", (2,), bytes(8 + 3)),
                                   r"'bias.npy' declares shape \(2,\) and dtype float32 \(8 bytes\) but holds 11 bytes "
                                   r"\(3 trailing bytes\)"),
    "configuration disagrees": (npz_bytes(**valid_arrays(in_features=60000, out_features=60000)),
                                r"'weight' has shape \(3, 2\).*needs shape \(60000, 60000\)"),
    "features out of range": (npz_bytes(**valid_arrays(in_features=-1)), r"in_features must be an integer in \[0"),
    "features not integers": (npz_bytes(**valid_arrays(out_features=2.0)), "out_features must be an integer"),
    "has_bias not boolean": (npz_bytes(**valid_arrays(has_bias=1)), "has_bias must be a boolean"),
    "dtype unsupported": (npz_bytes(**valid_arrays(dtype="int32")), "dtype must be one of"),
    "configuration not scalar": (npz_bytes(**valid_arrays(in_features=np.arange(3))), "'in_features' must be a scalar"),
    "missing key": (npz_bytes(**{k: v for k, v in valid_arrays().items() if k != "dtype"}), r"missing keys \['dtype'\]"),
    "missing bias": (npz_bytes(**{k: v for k, v in valid_arrays().items() if k != "bias"}), r"missing keys \['bias'\]"),
    "extra key": (npz_bytes(**valid_arrays(extra=np.zeros(2))), r"unexpected keys \['extra'\]"),
    "objects": (npz_bytes(**valid_arrays(weight=np.array([object()] * 6).reshape(3, 2))), "holds Python objects"),
    "trailing bytes": (with_member("weight", (3, 2), bytes(28)), r"declares shape \(3, 2\).* \(24 bytes\) but holds 28 bytes"),
    "short member": (with_member("weight", (3, 2), bytes(20)), r"declares shape \(3, 2\).* \(24 bytes\) but holds 20 bytes"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_load_refuses_bad_files_with_a_value_error_naming_the_file(tmp_path, name):
    data, words = BAD_FILES[name]
    path = tmp_path / "layer.npz"
    path.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=words) as info:
        Linear.load(path)
    assert str(path) in str(info.value) and "is not a saved Linear" in str(info.value)
    assert time.perf_counter() - started < 1.0  # checked before allocating, never a long allocation


def test_load_refuses_compressed_members(tmp_path):
    with open(tmp_path / "layer.npz", "wb") as file:
        np.savez_compressed(file, **valid_arrays())
    with pytest.raises(ValueError, match="is compressed"):
        Linear.load(tmp_path / "layer.npz")


def test_a_valid_file_built_the_same_way_loads(tmp_path):
    """Control for the bad files above: the same construction, unchanged, loads."""
    (tmp_path / "layer.npz").write_bytes(npz_bytes(**valid_arrays()))
    np.testing.assert_array_equal(Linear.load(tmp_path / "layer.npz").weight.data, valid_arrays()["weight"])


# ----------------------------------------------------------------------------------------------------
# Atomic save: a child process killed (SIGKILL) in the middle of saving a large layer
# ----------------------------------------------------------------------------------------------------

FEATURES = 1536  # a 9 MiB weight: each save takes long enough to be killed in the middle of it
SAVER = """
import sys
import numpy as np
import linear
layer = linear.Linear({features}, {features}, seed=1)
print("ready", flush=True)
while True:
    if sys.argv[2] == "atomic":
        layer.save(sys.argv[1])
    else:  # a save that is not atomic: the target opened for writing, then filled
        with open(sys.argv[1], "wb") as file:
            np.savez(file, in_features=layer.in_features, out_features=layer.out_features, has_bias=True,
                     dtype="float32", weight=layer.weight.data, bias=layer.bias.data)
"""


def kill_mid_save(path, mode: str, mid_save) -> None:
    """Start a child that saves a layer to `path` over and over; SIGKILL it once mid_save() is true."""
    child = subprocess.Popen([sys.executable, "-c", SAVER.format(features=FEATURES), str(path), mode],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 30
        while not mid_save() and time.monotonic() < deadline:
            pass
        assert time.monotonic() < deadline, "the child never got to the middle of a save"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "layer.npz"
    previous, next_one = Linear(FEATURES, FEATURES, seed=0), Linear(FEATURES, FEATURES, seed=1)
    previous.save(path)
    for _ in range(3):
        for stale in tmp_path.glob("*.tmp"):  # left by the last kill; the next one must be fresh
            stale.unlink()
        kill_mid_save(path, "atomic", lambda: any(name.endswith(".tmp") for name in os.listdir(tmp_path)))
        loaded = Linear.load(path)  # whole: the previous save's or the next one's, never a mix
        assert any(np.array_equal(loaded.weight.data, layer.weight.data) and
                   np.array_equal(loaded.bias.data, layer.bias.data) for layer in (previous, next_one))


def test_a_non_atomic_save_killed_midway_is_caught(tmp_path):
    """Negative control: killing a save that writes the target in place leaves a file
    that load refuses, so the test above would see a save that is not atomic."""
    path = tmp_path / "layer.npz"
    Linear(FEATURES, FEATURES, seed=0).save(path)
    whole = path.stat().st_size
    for _ in range(20):  # the kill can land after the write completes; then try again
        kill_mid_save(path, "in place", lambda: 0 < path.stat().st_size < whole)
        try:
            Linear.load(path)
        except ValueError as e:
            assert "is not a saved Linear" in str(e)
            return
    pytest.fail("20 kills in the middle of an in-place save never left a broken file")
