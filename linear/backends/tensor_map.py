"""TMA tensor maps for an array, on both runtimes: what a kernel's `const __grid_constant__ CUtensorMap`
parameter takes.

    tensor_map(runtime, array, box, swizzle=128)

describes `array` (C-contiguous or strided, rows of whole 16-byte multiples) to the tensor memory
accelerator: `box` is the tile one cp.async.bulk.tensor copies, in the array's axis order (outermost
first, as numpy shapes are; the driver's arrays are innermost first, and this module reverses them).
The runtime encodes it (its encode_tensor_map): the emulate runtime with the emulator's
cuTensorMapEncodeTiled (encode_emulated: kernels/emu/emu_tensor_map.h, in the runtime library), which
makes the driver's checks; the cuda runtime with the driver's own through cuda-python
(encode_with_driver: `cuda.bindings.driver`, an optional dependency). A map keeps its
array alive; it points at the array itself, so in the emulator TMA reads and writes the array in
place, not the guarded copy of a pointer argument (memcheck does not watch it; TMA cannot leave the
map's extents anyway).

A launch plan, made without a runtime, names a map as a TensorMapArg (array, box, swizzle); in a plan that
serves many calls its array is a launch.Slot, filled with each call's own array (launch.Launch.arguments).
launch.call encodes it for the runtime that launches, once per (runtime, pointer, shape, strides, dtype,
views, box, swizzle): TENSOR_MAPS, a TensorMapCache, hands out the 128 bytes of a map made before for that
pointer.

The cuda path has not been executed here (no GPU): it is the documented driver call, kept small.
"""
from __future__ import annotations

import ctypes
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

TENSOR_MAP_BYTES = 128
TENSOR_MAP_ALIGNMENT = 64

# CUtensorMapDataType by numpy dtype name; float32 maps to FLOAT32, or TFLOAT32 with tf32=True.
_DATA_TYPES = {"uint8": 0, "uint16": 1, "uint32": 2, "int32": 3, "uint64": 4, "int64": 5, "float16": 6,
               "float32": 7, "float64": 8, "bfloat16": 9}
_TFLOAT32 = 11
_SWIZZLES = {0: 0, 32: 1, 64: 2, 128: 3}  # CUtensorMapSwizzle by span in bytes (0: none)


def aligned_map_bytes(data: bytes) -> np.ndarray:
    """`data` (a map's 128 bytes) copied into a 64-byte aligned, read-only uint8 array."""
    buffer = np.zeros(TENSOR_MAP_BYTES + TENSOR_MAP_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % TENSOR_MAP_ALIGNMENT
    aligned = buffer[start:start + TENSOR_MAP_BYTES]
    aligned[:] = np.frombuffer(data, np.uint8)
    aligned.flags.writeable = False
    return aligned


class TensorMap:
    """A 128-byte CUtensorMap (64-byte aligned, read-only: a cached map's bytes serve every call with its
    operand) and the array it describes."""
    __slots__ = ("bytes", "array", "box", "swizzle")

    def __init__(self, data: bytes | np.ndarray, array: Any, box: tuple[int, ...], swizzle: int):
        """data: the 128 bytes, or an array aligned_map_bytes made of them (taken as it is)."""
        self.bytes = data if isinstance(data, np.ndarray) else aligned_map_bytes(data)
        self.array, self.box, self.swizzle = array, box, swizzle

    @property
    def address(self) -> int:
        """The host address of the 128 bytes (64-byte aligned)."""
        return self.bytes.ctypes.data

    def __repr__(self) -> str:
        return (f"TensorMap({self.array.dtype.name} array of shape {self.array.shape}, box {self.box}, "
                f"swizzle {self.swizzle or 'none'})")


def tensor_map(runtime: Any, array: Any, box: Sequence[int], *, swizzle: int = 0,
               element_strides: Sequence[int] | None = None, oob_nan: bool = False, tf32: bool = False) -> TensorMap:
    """A tiled tensor map of `array` for `runtime` (emulate or cuda): `box` elements per axis (numpy axis
    order), `swizzle` the span in bytes (0, 32, 64, 128), element_strides per axis (1..8; default all
    1), oob_nan: out-of-bounds elements load as NaN instead of zero (floating-point types only)."""
    dtype_name = array.dtype.name
    if dtype_name not in _DATA_TYPES:
        raise TypeError(f"tensor_map: array has dtype {dtype_name} and shape {array.shape}; TMA takes "
                        f"{', '.join(_DATA_TYPES)}")
    if tf32 and dtype_name != "float32":
        raise TypeError(f"tensor_map: tf32=True needs a float32 array, not {dtype_name}")
    if swizzle not in _SWIZZLES:
        raise ValueError(f"tensor_map: swizzle={swizzle!r}; it must be 0 (none), 32, 64 or 128 (bytes)")
    rank = array.ndim
    box = tuple(int(b) for b in box)
    strides = tuple(int(s) for s in (element_strides if element_strides is not None else (1,) * rank))
    if len(box) != rank or len(strides) != rank:
        raise ValueError(f"tensor_map: array of shape {array.shape} needs {rank} box dims and element strides, got "
                         f"box {box} and element_strides {strides}")
    if any(s <= 0 for s in array.strides) or array.strides[-1] != array.itemsize:
        raise ValueError(f"tensor_map: array of shape {array.shape} has byte strides {array.strides}: the last axis "
                         f"must be contiguous and the others positive")
    data_type = _TFLOAT32 if tf32 else _DATA_TYPES[dtype_name]
    # The driver's order: dimension 0 innermost; strides in bytes for dimensions 1 .. rank - 1.
    dims = [int(d) for d in reversed(array.shape)]
    byte_strides = [int(s) for s in reversed(array.strides)][1:]
    data = runtime.encode_tensor_map(array, data_type, rank, dims, byte_strides, box[::-1], strides[::-1],
                                     _SWIZZLES[swizzle], int(oob_nan))
    return TensorMap(data, array, box, swizzle)


def _encode_c(encode_tiled, pointer, data_type, rank, dims, byte_strides, box, strides, swizzle, oob):
    """(status, the map's bytes) from a C cuTensorMapEncodeTiled: the emulator's or the driver's (libcuda),
    which share the driver's signature."""
    u64, u32 = ctypes.c_uint64, ctypes.c_uint32
    n = max(5, rank)  # the driver reads rank entries; a rank it refuses still needs its arrays
    out = np.zeros(TENSOR_MAP_BYTES + TENSOR_MAP_ALIGNMENT, np.uint8)
    start = -out.ctypes.data % TENSOR_MAP_ALIGNMENT
    status = encode_tiled(
        ctypes.c_void_p(out.ctypes.data + start), ctypes.c_int(data_type), u32(rank), ctypes.c_void_p(pointer),
        (u64 * n)(*dims), (u64 * n)(*byte_strides), (u32 * n)(*box), (u32 * n)(*strides), ctypes.c_int(0),
        ctypes.c_int(swizzle), ctypes.c_int(0), ctypes.c_int(oob))
    return status, out[start:start + TENSOR_MAP_BYTES].tobytes()


def encode_emulated(runtime, array, data_type, rank, dims, byte_strides, box, strides, swizzle, oob) -> bytes:
    library = runtime.host_library()
    status, data = _encode_c(library.cuTensorMapEncodeTiled, array.ctypes.data, data_type, rank, dims, byte_strides,
                             box, strides, swizzle, oob)
    if status != 0:
        library.emu_tensor_map_error.restype = ctypes.c_char_p
        why = library.emu_tensor_map_error().decode()
        raise ValueError(f"tensor_map: cuTensorMapEncodeTiled refuses the {array.dtype.name} array of shape "
                         f"{array.shape} (byte strides {array.strides}) with box {tuple(box[::-1])}: {why}")
    return data


def encode_with_driver(array, data_type, rank, dims, byte_strides, box, strides, swizzle, oob) -> bytes:
    """The driver's cuTensorMapEncodeTiled through cuda-python, or without it straight from libcuda with
    ctypes (unexecuted here: no GPU)."""
    try:
        from cuda.bindings import driver
    except ImportError:
        status, data = _encode_c(ctypes.CDLL("libcuda.so.1").cuTensorMapEncodeTiled, array.data.ptr, data_type,
                                 rank, dims, byte_strides, box, strides, swizzle, oob)
        if status != 0:
            raise ValueError(f"tensor_map: the driver's cuTensorMapEncodeTiled refuses the {array.dtype.name} array "
                             f"of shape {array.shape} with box {tuple(box[::-1])}: CUresult {status}") from None
        return data
    err, encoded = driver.cuTensorMapEncodeTiled(
        driver.CUtensorMapDataType(data_type), rank, array.data.ptr, dims, byte_strides, box, strides,
        driver.CUtensorMapInterleave(0), driver.CUtensorMapSwizzle(swizzle), driver.CUtensorMapL2promotion(0),
        driver.CUtensorMapFloatOOBfill(oob))
    if err != driver.CUresult.CUDA_SUCCESS:
        raise ValueError(f"tensor_map: the driver's cuTensorMapEncodeTiled refuses the {array.dtype.name} array of "
                         f"shape {array.shape} with box {tuple(box[::-1])}: {err}")
    return ctypes.string_at(encoded.getPtr(), TENSOR_MAP_BYTES)


def address(x: Any) -> int:
    """The device (CuPy) or host (numpy) address of x's first element."""
    return x.ctypes.data if isinstance(x, np.ndarray) else x.data.ptr


class TensorMapCache:
    """Tensor maps by (runtime, pointer, shape, strides, dtype, views, box, swizzle): the driver (or the
    emulator) encodes a map once; a later call with the same operand gets a TensorMap of the same
    (read-only) bytes. The bytes hold no reference to the array, so the cache keeps no array alive; a map
    is only passed along with the array it describes."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._maps: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.encoded = 0  # how many maps were made (the rest came from the cache)

    def get(self, runtime: Any, arg: TensorMapArg) -> TensorMap:
        """The map of arg.array seen through arg.views (launch.View: each has .of(xp, array)), which are
        applied only to make a map the cache does not have."""
        array = arg.array
        key = (runtime.name, address(array), array.shape, array.strides, array.dtype, arg.layout)
        data = self._maps.get(key)
        if data is None:
            viewed = array
            for view in arg.views:
                viewed = view.of(runtime.xp, viewed)
            data = tensor_map(runtime, viewed, arg.box, swizzle=arg.swizzle).bytes
            self.encoded += 1
            self._maps[key] = data
            if len(self._maps) > self.capacity:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return TensorMap(data, array, arg.box, arg.swizzle)


TENSOR_MAPS = TensorMapCache()


class TensorMapArg:
    """A kernel argument that is the tensor map of `array` seen through `views` (launch.View), with this box
    and swizzle: a launch plan holds it (plans are made without a runtime; a cached plan's `array` is a
    launch.Slot, with the views, until a call fills it in: of()); launch.call encodes it for the runtime that
    launches, through TENSOR_MAPS. The TensorMap it gives holds `array` itself.

    `layout` is the box, swizzle and views as one tuple of ints (each view's key), made once: with the
    array's address, shape, strides and dtype, all that decides the map, and TENSOR_MAPS' key, which hashes
    it at C speed on every call."""
    __slots__ = ("array", "box", "swizzle", "views", "layout")

    def __init__(self, array: Any, box: tuple[int, ...], swizzle: int, views: tuple = ()):
        self.array, self.box, self.swizzle, self.views = array, tuple(box), swizzle, tuple(views)
        self.layout = (self.box, swizzle, tuple(view.key for view in self.views))

    def of(self, array: Any) -> TensorMapArg:
        """This map of another array (a call's): the same box, swizzle, views and layout."""
        arg = object.__new__(TensorMapArg)
        arg.array, arg.box, arg.swizzle, arg.views, arg.layout = array, self.box, self.swizzle, self.views, self.layout
        return arg

    def encode(self, runtime: Any) -> TensorMap:
        return TENSOR_MAPS.get(runtime, self)

    def __repr__(self) -> str:
        return f"TensorMapArg({self.array!r}, box {self.box}, swizzle {self.swizzle}, views {self.views})"
