"""KernelBackend's plan cache, on the emulator: a call that hits the cache launches exactly what a fresh
plan would (the same kernels, scalars, and arrays: the call's own, or new buffers with the same bytes),
so its results are bitwise those of an uncached call; a repeated call neither plans nor looks a kernel
up; anything that changes the plan (pointer alignment, TF32, tuning, device) misses.
"""
from __future__ import annotations

import numpy as np
import pytest

import linear
from linear.backends import kernel, plan, tensor_map
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from linear.dtypes import dtype_of
from reference import DTYPES, RecordingRuntime, emulator, poisoned


@pytest.fixture(scope="module")
def runtime():
    return emulator()


def random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def at_offset(values: np.ndarray, offset_bytes: int) -> np.ndarray:
    """A copy of values whose first element is `offset_bytes` past a 16-byte boundary (same shape and
    strides, C-contiguous)."""
    flat = np.empty(values.nbytes + 32, np.uint8)
    start = -flat.ctypes.data % 16 + offset_bytes
    out = flat[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def map_address(encoded: tensor_map.TensorMap) -> int:
    """The global address an emulator tensor map holds (kernels/emu/emu_tensor_map.h: its second quadword)."""
    return int(np.frombuffer(encoded.bytes.tobytes(), np.uint64)[1])


def assert_same_launches(recorded: list[plan.Launch], planned: list[plan.Launch], inputs: list,
                          planned_inputs: list) -> None:
    """The same kernels and scalars; each array argument the same part of the corresponding input, or,
    where it is a buffer the plan makes (an aligned copy, a workspace), a new one on both sides with the
    same bytes."""
    def where(x, arrays):
        """(input number, byte offset) of an array argument, or None for a buffer."""
        return next(((j, plan.address(x) - plan.address(a)) for j, a in enumerate(arrays)
                     if a is not None and np.shares_memory(x, a)), None)

    assert len(recorded) == len(planned)
    for got, want in zip(recorded, planned):
        assert (got.source, got.name, got.grid, got.block, got.shared_mem) == \
               (want.source, want.name, want.grid, want.block, want.shared_mem)
        assert len(got.args) == len(want.args)
        for i, (x, y) in enumerate(zip(got.args, want.args)):
            if isinstance(y, tensor_map.TensorMapArg):  # the kernel got the map of the array the plan names
                assert isinstance(x, tensor_map.TensorMap) and (x.box, x.swizzle) == (y.box, y.swizzle), \
                    f"{got.name}: argument {i} is {x!r}, a fresh plan's {y!r}"
                viewed = x.array
                for view in y.views:  # the map describes the call's array seen through the plan's views
                    viewed = view.of(np, viewed)
                assert map_address(x) == plan.address(viewed), f"{got.name}: argument {i} maps another array"
                x, y = x.array, y.array
            if not isinstance(y, np.ndarray):
                assert type(x) is type(y) and x == y, f"{got.name}: argument {i} is {x!r}, a fresh plan's {y!r}"
                continue
            assert isinstance(x, np.ndarray) and x.dtype == y.dtype, f"{got.name}: argument {i}"
            got_where, want_where = where(x, inputs), where(y, planned_inputs)
            assert got_where == want_where, f"{got.name}: argument {i} is {got_where or 'a buffer'} " \
                                            f"(input, byte offset), a fresh plan's {want_where or 'a buffer'}"
            if got_where is None:
                assert x.shape == y.shape and x.strides == y.strides and np.array_equal(x, y, equal_nan=True)


# (name, a, b, c, bias, tuning) factories: every way an operand reaches the kernels.
def cases(rng, dtype):
    def matrix(rows, cols, trans=False):
        return random(rng, (cols, rows), dtype).T if trans else random(rng, (rows, cols), dtype)
    m, n, k = 37, 29, 45
    yield "NN + bias", matrix(m, k), matrix(k, n), np.empty((m, n), dtype), random(rng, n, dtype), Tuning()
    yield "TT", matrix(m, k, True), matrix(k, n, True), np.empty((m, n), dtype), None, Tuning()
    strided_bias = random(rng, 2 * n, dtype)[::2]
    yield "strided bias", matrix(m, k), matrix(k, n, True), np.empty((m, n), dtype), strided_bias, Tuning()
    yield "negative strides", matrix(m, k)[::-1], matrix(k, n)[:, ::-1], np.empty((m, n), dtype), None, Tuning()
    yield "split-K", matrix(m, 300), matrix(300, n), np.empty((m, n), dtype), random(rng, n, dtype), Tuning(splits=3)
    yield "unaligned rows", matrix(64, 63), matrix(63, 40), np.empty((64, 40), dtype), None, Tuning()
    a = np.broadcast_to(random(rng, (1, 3, 20, 24), dtype), (2, 3, 20, 24))  # dimensions that do not merge
    b = np.broadcast_to(random(rng, (2, 1, 24, 16), dtype), (2, 3, 24, 16))
    yield "stack, broadcast", a, b, np.empty((2, 3, 20, 16), dtype), None, Tuning()
    reversed_stack, broadcast = random(rng, (3, 30, 21), dtype)[::-1], np.broadcast_to(matrix(21, 16), (3, 21, 16))
    yield "reversed stack", reversed_stack, broadcast, np.empty((3, 30, 16), dtype), None, Tuning()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_a_cached_call_equals_an_uncached_one_bitwise(runtime, dtype):
    """Each case twice, with new arrays of the same layout: the first call plans, the second reuses the
    plan; both launch what plan_gemm plans for their arrays, and write the same bits."""
    rng = np.random.default_rng(41)
    for (name, *first), (_, *second) in zip(cases(rng, DTYPES[dtype]), cases(rng, DTYPES[dtype])):
        assert plan.layout_key(first[:4]) == plan.layout_key(second[:4]), name  # numpy's 16-byte alignment
        recording = RecordingRuntime(runtime)
        tuning = first[4]
        cached = KernelBackend(recording, tuning)
        for call, (a, b, c, bias, _) in enumerate((first, second)):
            c[...] = random(rng, c.shape, c.dtype)
            c_uncached = c.copy()
            before = len(recording.looked_up)
            recording.launched.clear()
            cached.gemm(a, b, c, alpha=0.5, beta=0.25, bias=bias)
            planned = plan.plan_gemm(np, a, b, c_uncached, alpha=0.5, beta=0.25, bias=bias, tuning=tuning, arch=90,
                                     device=runtime.device_limits())
            KernelBackend(runtime).launch(planned)
            assert np.array_equal(c, c_uncached, equal_nan=True), f"{name}: call {call}"
            assert_same_launches(recording.launched, planned, [a, b, c, bias], [a, b, c_uncached, bias])
            if call:
                assert len(recording.looked_up) == before, f"{name}: the repeated call looked a kernel up"


def test_a_cached_wgmma_plan_maps_each_calls_own_arrays(runtime):
    """A bfloat16 product the plan gives the Hopper tiles, twice with fresh arrays (the first call's kept
    alive, so the pointers differ): the second call reuses the plan, writes the bits of an uncached plan
    and the float64 product's within bfloat16's tolerance, and its tensor maps hold its own operands'
    addresses, not the first call's (with tensor_map's cache keyed without the pointer, both fail)."""
    dtype = DTYPES["bfloat16"]
    rng = np.random.default_rng(47)
    recording = RecordingRuntime(runtime)
    cached = KernelBackend(recording)
    calls = []
    for call in range(2):
        a, b = random(rng, (128, 64), dtype), random(rng, (64, 128), dtype)
        c, c_uncached = poisoned(np, (128, 128), dtype), poisoned(np, (128, 128), dtype)
        recording.launched.clear()
        before = len(recording.looked_up)
        cached.gemm(a, b, c, alpha=1.0, beta=0.0)
        planned = plan.plan_gemm(np, a, b, c_uncached, alpha=1.0, beta=0.0, arch=90, device=runtime.device_limits())
        KernelBackend(runtime).launch(planned)
        assert np.array_equal(c, c_uncached), f"call {call}"
        expected = a.astype(np.float64) @ b.astype(np.float64)
        assert linear.testing.relative_error(c.astype(np.float64), expected) <= linear.testing.TOLERANCE["bfloat16"]
        assert_same_launches(recording.launched, planned, [a, b, c], [a, b, c_uncached])
        maps = [arg for launch in recording.launched for arg in launch.args if isinstance(arg, tensor_map.TensorMap)]
        assert [launch.name.split("<")[0] for launch in recording.launched] == ["linear_wgmma_gemm"] and len(maps) == 2
        assert [map_address(m) for m in maps] == [plan.address(a), plan.address(b)], f"call {call}"
        if call:
            assert len(recording.looked_up) == before, "the repeated call planned again"
        calls.append((a, b, maps))
    (a1, b1, _), (a2, b2, _) = calls
    assert {plan.address(a1), plan.address(b1)}.isdisjoint({plan.address(a2), plan.address(b2)})


def test_the_pointer_alignment_is_in_the_key(runtime):
    """Two calls with the same shapes and strides whose operand is 16-byte aligned in one and 2 bytes off
    in the other: the tensor-core plan (compute capability 8.0: 9.0 takes the Hopper tiles, whose plans
    the wgmma test below holds) reads the first as it is and copies the second into aligned rows, in
    either order."""
    rng = np.random.default_rng(43)
    a, b = random(rng, (64, 64), np.float16), random(rng, (64, 48), np.float16)
    for offsets in ((0, 2), (2, 0)):
        recording = RecordingRuntime(runtime)
        recording.compute_capability = lambda: 80
        backend = KernelBackend(recording)
        for offset in offsets:
            shifted = at_offset(a, offset)
            c, c_uncached = poisoned(np, (64, 48), np.float16), poisoned(np, (64, 48), np.float16)
            recording.launched.clear()
            backend.gemm(shifted, b, c, alpha=1.0, beta=0.0)
            planned = plan.plan_gemm(np, shifted, b, c_uncached, alpha=1.0, beta=0.0, arch=80)
            KernelBackend(runtime).launch(planned)
            assert planned[0].source == "tc_gemm.cu"
            assert (planned[0].args[5] is shifted) == (offset == 0)  # copied where unaligned
            assert_same_launches(recording.launched, planned, [shifted, b, c], [shifted, b, c_uncached])
            assert np.array_equal(c, c_uncached)


def test_a_repeated_call_neither_plans_nor_looks_a_kernel_up(runtime, monkeypatch):
    planned = []
    for name in ("gemm_plan", "colsum_plan"):
        real = getattr(kernel, name)
        monkeypatch.setattr(kernel, name, lambda *a, real=real, **k: planned.append(real) or real(*a, **k))
    recording = RecordingRuntime(runtime)
    backend = KernelBackend(recording)
    rng = np.random.default_rng(47)
    counts = []
    for _ in range(3):  # fresh arrays of the same layouts each time
        x, w, b, dy = (random(rng, shape, np.float32) for shape in [(6, 40, 24), (24, 16), (16,), (6, 40, 16)])
        y = linear.forward(x, w, b, backend=backend)
        grads = linear.backward(dy, x, w, backend=backend)
        stack = linear.matmul(x, np.swapaxes(x, -1, -2), backend=backend)
        np.testing.assert_allclose(y, x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grads.dw, np.einsum("bri,brj->ij", x, dy), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stack, x.astype(np.float64) @ np.swapaxes(x, -1, -2), rtol=1e-4, atol=1e-4)
        counts.append((len(planned), len(recording.looked_up)))
    assert counts[0][0] == 5  # forward, dx, dw, db, matmul
    assert counts[1] == counts[2] == counts[0]
    # The cache keeps no array of any call (nor keeps one alive): slots and constants only.
    kept = [arg for entry, _ in backend._plans.values() for launch in entry.launches for arg in launch.args]
    assert kept and not any(isinstance(arg, np.ndarray) for arg in kept)


def test_tf32_tuning_and_device_are_in_the_key(runtime, monkeypatch):
    recording = RecordingRuntime(runtime)
    backend = KernelBackend(recording)
    rng = np.random.default_rng(53)
    a, b, c = random(rng, (32, 32), np.float32), random(rng, (32, 32), np.float32), np.empty((32, 32), np.float32)

    def plans_made():
        before = len(recording.looked_up)
        backend.gemm(a, b, c, alpha=1.0, beta=0.0)
        return len(recording.looked_up) - before

    assert plans_made() == 1 and plans_made() == 0 and recording.launched[-1].source == "gemm.cu"
    linear.set_tf32(True)
    try:
        assert plans_made() == 1 and recording.launched[-1].source == "tc_gemm.cu"
    finally:
        linear.set_tf32(None)
    assert plans_made() == 0 and recording.launched[-1].source == "gemm.cu"
    a64, b64, c64 = a.astype(np.float64), b.astype(np.float64), c.astype(np.float64)
    backend.gemm(a64, b64, c64, alpha=1.0, beta=0.0)
    linear.set_tf32(True)
    try:  # TF32 decides float32 plans only: a float64 product keeps its plan
        before = len(recording.looked_up)
        backend.gemm(a64, b64, c64, alpha=1.0, beta=0.0)
        assert len(recording.looked_up) == before and np.allclose(c64, a64 @ b64, rtol=1e-12, atol=1e-12)
    finally:
        linear.set_tf32(None)
    backend.tuning = Tuning(config="small")
    assert plans_made() == 1 and plans_made() == 0
    monkeypatch.setattr(recording, "device_id", lambda: 1)  # another device: its own plans and kernels
    assert plans_made() == 1 and plans_made() == 0


@pytest.mark.parametrize("splits", [1, 3])
def test_the_activation_is_in_the_key_and_preact_is_a_slot(runtime, splits):
    """gemm: the activation keys the plan (each a plan of its own, the same one again reused), Z (preact)
    is one more array whose layout is keyed and whose slot each call fills: cached calls with fresh arrays
    launch what a fresh plan launches and write the same bits into C and Z. activation_grad is cached
    the same way (the activation in its key)."""
    recording = RecordingRuntime(runtime)
    backend = KernelBackend(recording, Tuning(splits=splits))
    rng = np.random.default_rng(67)
    for call, activation in enumerate(["gelu", "gelu", "silu", None, "gelu"]):
        a, b, bias = random(rng, (20, 300), np.float32), random(rng, (300, 12), np.float32), random(rng, 12, np.float32)
        c, preact = poisoned(np, (20, 12), np.float32), None if activation is None else poisoned(np, (20, 12), np.float32)
        c_uncached, preact_uncached = c.copy(), None if preact is None else preact.copy()
        before = len(recording.looked_up)
        recording.launched.clear()
        backend.gemm(a, b, c, alpha=1.0, beta=0.0, bias=bias, activation=activation, preact=preact)
        assert (len(recording.looked_up) == before) == (call in (1, 4)), (call, activation)
        planned = plan.plan_gemm(np, a, b, c_uncached, alpha=1.0, beta=0.0, bias=bias, tuning=Tuning(splits=splits),
                                 arch=90, device=runtime.device_limits(), activation=activation, preact=preact_uncached)
        KernelBackend(runtime).launch(planned)
        assert_same_launches(recording.launched, planned, [a, b, c, bias, preact],
                             [a, b, c_uncached, bias, preact_uncached])
        assert np.array_equal(c, c_uncached) and (preact is None or np.array_equal(preact, preact_uncached))
        assert not np.isnan(c).any() and (preact is None or not np.isnan(preact).any())
    for call, activation in enumerate(["gelu", "gelu", "relu"]):
        dy, z = random(rng, (90, 12), np.float32), random(rng, (90, 12), np.float32)
        dz, db = poisoned(np, (90, 12), np.float32), poisoned(np, 12, np.float32)
        dz_uncached, db_uncached = dz.copy(), db.copy()
        before = len(recording.looked_up)
        backend.activation_grad(dy, z, dz, db, activation=activation, beta=0.0)
        assert (len(recording.looked_up) == before) == (call == 1), (call, activation)
        KernelBackend(runtime).launch(plan.plan_activation_grad(np, dy, z, dz_uncached, db_uncached,
                                                                activation=activation, beta=0.0))
        assert np.array_equal(dz, dz_uncached) and np.array_equal(db, db_uncached) and not np.isnan(dz).any()


def test_split_k_workspaces_are_made_for_each_call(runtime):
    recording = RecordingRuntime(runtime)
    backend = KernelBackend(recording, Tuning(splits=3))
    rng = np.random.default_rng(59)
    a, b = random(rng, (20, 300), np.float32), random(rng, (300, 12), np.float32)
    workspaces = []
    for _ in range(2):
        recording.launched.clear()
        backend.gemm(a, b, poisoned(np, (20, 12), np.float32), alpha=1.0, beta=0.0)
        gemm, reduction = recording.launched
        assert gemm.args[4] == 3 and gemm.args[11] is reduction.args[3]
        workspaces.append(gemm.args[11])
    assert not np.shares_memory(*workspaces)


def test_the_cache_keeps_the_most_recently_used_plans(runtime, monkeypatch):
    monkeypatch.setattr(kernel, "PLAN_CACHE_SIZE", 2)
    recording = RecordingRuntime(runtime)
    backend = KernelBackend(recording)
    rng = np.random.default_rng(61)
    calls = {n: (random(rng, (8, 8), np.float32), random(rng, (8, n), np.float32), np.empty((8, n), np.float32))
             for n in (4, 5, 6)}

    def plans_made(*sizes):
        before = len(recording.looked_up)
        for n in sizes:
            a, b, c = calls[n]
            backend.gemm(a, b, c, alpha=1.0, beta=0.0)
        return len(recording.looked_up) - before

    assert plans_made(4, 5) == 2 and plans_made(4, 5) == 0
    assert plans_made(6) == 1 and len(backend._plans) == 2  # 4 went, the least recently used
    assert plans_made(5, 6) == 0 and plans_made(4) == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_cuda_stand_in_of_bench_overhead_times_cached_calls_on_the_cupy_path(monkeypatch, dtype):
    """bench.overhead --stand-in cuda: linear takes its arrays for CuPy's (the general path, not numpy's),
    and every call after the first hits the plan cache; in bfloat16 the products run the Hopper kernel
    (the stand-in is an H100) and its tensor maps come from tensor_map's cache after the first call."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from bench import overhead
    planned = []
    real = kernel.gemm_plan
    monkeypatch.setattr(kernel, "gemm_plan", lambda *a, **k: planned.append(a) or real(*a, **k))
    monkeypatch.setattr(tensor_map, "TENSOR_MAPS", tensor_map.TensorMapCache())
    pairs = overhead._stand_in_pairs((4, 8, 8), dtype_of(dtype))
    for op, (ours, _) in pairs.items():
        result = ours()
        made, encoded = len(planned), tensor_map.TENSOR_MAPS.encoded
        ours()
        assert len(planned) == made and tensor_map.TENSOR_MAPS.encoded == encoded, op
        if op != "backend.gemm":  # which returns nothing
            assert type(result if op in ("forward", "matmul") else result.dx).__module__ == "cupy.stand_in"
    assert (tensor_map.TENSOR_MAPS.encoded > 0) == (dtype == "bfloat16")  # the Hopper kernel's maps


class EncodingRuntime:
    """A runtime that only encodes tensor maps: each map it makes is 128 bytes holding its number, and
    `encoded` lists what it was asked for (address, dims, byte strides, box, swizzle)."""
    xp = np

    def __init__(self, name="emulate"):
        self.name, self.encoded = name, []

    def encode_tensor_map(self, array, data_type, rank, dims, byte_strides, box, strides, swizzle, oob):
        self.encoded.append((plan.address(array), data_type, dims, byte_strides, box, swizzle))
        return len(self.encoded).to_bytes(8, "little") + bytes(tensor_map.TENSOR_MAP_BYTES - 8)


def test_the_tensor_map_cache_keys_everything_that_decides_a_map():
    """A map from the cache is the one made for the same runtime, pointer, shape, strides, dtype, views, box
    and swizzle; a change in any of them makes a new map (a wrong hit would be a silently wrong product),
    and each map the cache hands out is the one made for its key, whatever was asked for in between."""
    from linear.backends.launch import View
    cache, runtimes = tensor_map.TensorMapCache(), [EncodingRuntime(), EncodingRuntime("cuda")]
    storage = np.zeros((16, 48), DTYPES["bfloat16"])
    a = storage[:8, :32]  # rows 96 bytes apart
    stack = View((1, 8, 32), (8 * 96, 96, 2))
    other_rows = View((1, 4, 32), (8 * 96, 192, 2))  # every other row of the same memory
    asks = {  # name -> (runtime, array, box, swizzle, views): each differs from "a" in one thing
        "a": (0, a, (8, 32), 64, ()),
        "another runtime": (1, a, (8, 32), 64, ()),
        "another pointer": (0, storage[:8, 16:], (8, 32), 64, ()),
        "another shape": (0, storage[:8, :16], (8, 32), 64, ()),
        "another stride": (0, storage[::2, :32], (8, 32), 64, ()),  # rows 192 bytes apart
        "another dtype": (0, a.view(np.float16), (8, 32), 64, ()),
        "another box": (0, a, (4, 32), 64, ()),
        "another swizzle": (0, a, (8, 32), 0, ()),
        "a view": (0, a, (1, 8, 32), 64, (stack,)),
        "another view": (0, a, (1, 8, 32), 64, (other_rows,)),  # a box past the rows: TMA fills it
    }
    made = {}
    for _ in range(2):  # every map made once, then all from the cache
        for name, (runtime, array, box, swizzle, views) in asks.items():
            before = len(runtimes[0].encoded) + len(runtimes[1].encoded)
            got = cache.get(runtimes[runtime], tensor_map.TensorMapArg(array, box, swizzle, views))
            number = int.from_bytes(got.bytes[:8].tobytes(), "little")
            fresh = len(runtimes[0].encoded) + len(runtimes[1].encoded) - before
            assert got.array is array and (got.box, got.swizzle) == (tuple(box), swizzle), name
            if name not in made:
                assert fresh == 1, f"{name}: came from the cache"
                made[name] = (runtime, number)
            else:
                assert fresh == 0 and made[name] == (runtime, number), f"{name}: made again, or another's map"
    assert cache.encoded == len(asks)
    viewed = runtimes[0].encoded[made["another view"][1] - 1]
    assert viewed[0] == plan.address(a) and viewed[3] == [192, 8 * 96]  # the views applied to the array
