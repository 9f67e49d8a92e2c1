"""The file format of a saved Linear: an uncompressed .npz (zip) of .npy members, never pickled.

    in_features, out_features   integer scalars in [0, 2**31 - 1]
    has_bias                    a boolean scalar
    dtype                       the parameters' dtype name, a string scalar (one of SUPPORTED_DTYPES)
    weight                      (in_features, out_features); bfloat16 is stored as raw 2-byte values ("V2")
    bias                        (out_features,), present exactly when has_bias
    activation                  a string scalar: "" for none, else a name of linear.activations
                                (optional: files written before activations existed have none)

save() writes it atomically; load() checks a file against this description before it allocates anything.
"""
from __future__ import annotations

import math
import os
import secrets
import zipfile
from typing import NamedTuple

import numpy as np

from .activations import ACTIVATIONS
from .backends.tiles import MAX_SIZE
from .dtypes import SUPPORTED_DTYPES, dtype_of


class Checkpoint(NamedTuple):
    """A layer's configuration and its parameters: host arrays by name ("weight", and "bias" when it has one)."""
    in_features: int
    out_features: int
    has_bias: bool
    dtype: str
    arrays: dict[str, np.ndarray]
    activation: str | None = None  # files written before activations existed have none


_ACTIVATION_KEY = "activation"  # optional (older files lack it); "" for None
_CONFIG_KEYS = ("in_features", "out_features", "has_bias", "dtype")
_MAX_CONFIG_BYTES = 4096  # a configuration entry is a scalar; anything bigger is not ours


def save(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` (the name as given, no suffix added).

    Atomic: the file is written under a temporary name in the same directory, flushed to disk, then
    renamed over `path`, so a crash at any moment leaves the previous file at `path` whole.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with O_EXCL: a fresh file with the umask's permissions, as open(path, "wb") makes.
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            np.savez(file, in_features=checkpoint.in_features, out_features=checkpoint.out_features,
                     has_bias=checkpoint.has_bias, dtype=checkpoint.dtype,
                     **{_ACTIVATION_KEY: checkpoint.activation or ""}, **checkpoint.arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_directory(directory)  # the rename itself survives a power cut


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is what it offers
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and check a file written by save(); ValueError naming the file and the problem.

    The file is checked before anything is allocated (its keys, the configuration's types and ranges,
    each array's shape and dtype against the configuration, and that each member holds exactly the
    bytes its header declares); the arrays are never unpickled."""
    path = os.fspath(path)

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path!r} is not a saved Linear: {problem}")

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise bad(f"not an .npz (zip) file ({e})") from None
    with archive:
        try:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            missing = [key for key in _CONFIG_KEYS if key not in members]
            if missing:
                raise bad(f"missing keys {missing}")
            headers = {key: _npy_header(archive, info, bad) for key, info in members.items()}
            config = {key: _read_small(archive, members[key], headers[key], key, bad) for key in _CONFIG_KEYS}
            in_features, out_features = (_int_in_range(config[key], key, bad) for key in ("in_features", "out_features"))
            if config["has_bias"].dtype != np.bool_:
                raise bad(f"has_bias must be a boolean; got dtype {config['has_bias'].dtype}")
            has_bias = bool(config["has_bias"])
            if config["dtype"].dtype.kind != "U" or str(config["dtype"]) not in SUPPORTED_DTYPES:
                raise bad(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}; got {config['dtype']!r}")
            dtype = dtype_of(str(config["dtype"]))
            expected = {"weight": (in_features, out_features), **({"bias": (out_features,)} if has_bias else {})}
            activation = _read_activation(archive, members, headers, bad)
            unexpected = sorted(members.keys() - expected.keys() - set(_CONFIG_KEYS) - {_ACTIVATION_KEY})
            missing = sorted(expected.keys() - members.keys())
            if missing or unexpected:
                raise bad(f"missing keys {missing}, unexpected keys {unexpected} (has_bias={has_bias})")
            for key, shape in expected.items():
                stored_shape, stored_dtype, _ = headers[key]
                # bfloat16, which numpy does not know, is stored as raw bytes ("V2")
                if stored_shape != shape or stored_dtype not in (dtype, np.dtype(f"V{dtype.itemsize}")):
                    raise bad(f"{key!r} has shape {stored_shape} and dtype {stored_dtype}; the configuration "
                              f"(in_features={in_features}, out_features={out_features}, dtype={dtype.name}) "
                              f"needs shape {shape} and dtype {dtype.name}")
            arrays = {key: _read_array(archive, members[key]).view(dtype) for key in expected}
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # a CRC mismatch, a truncated member, ...
            raise bad(f"corrupt ({type(e).__name__}: {e})") from None
    return Checkpoint(in_features, out_features, has_bias, dtype.name, arrays, activation)


def _read_activation(archive: zipfile.ZipFile, members: dict, headers: dict, bad) -> str | None:
    """The checkpoint's activation: None when the key is absent (older files) or "" (saved as None)."""
    if _ACTIVATION_KEY not in members:
        return None
    value = _read_small(archive, members[_ACTIVATION_KEY], headers[_ACTIVATION_KEY], _ACTIVATION_KEY, bad)
    names = [name for name in ACTIVATIONS if name is not None]
    if value.dtype.kind != "U" or str(value) not in ["", *names]:
        raise bad(f"activation must be '' (none) or one of {', '.join(names)}; got {value!r}")
    return str(value) or None


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, bad) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) of one .npy member, after checking that the member holds exactly
    the bytes its header declares, uncompressed (as save writes it): so nothing read later is larger
    than the file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise bad(f"{info.filename!r} is compressed; Linear.save writes uncompressed members")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran_order, dtype = read_header(member)
        except ValueError as e:
            raise bad(f"{info.filename!r} has no valid .npy header ({e})") from None
        if dtype.hasobject:
            raise bad(f"{info.filename!r} holds Python objects (dtype {dtype}); they are never unpickled")
        data_bytes, held = math.prod(shape) * dtype.itemsize, info.file_size - member.tell()
        if held != data_bytes:
            problem = "truncated" if held < data_bytes else f"{held - data_bytes} trailing bytes"
            raise bad(f"{info.filename!r} declares shape {shape} and dtype {dtype} ({data_bytes} bytes) but holds "
                      f"{held} bytes ({problem})")
    return shape, dtype, fortran_order


def _read_small(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header, key: str, bad) -> np.ndarray:
    shape, dtype, _ = header
    if shape != () or info.file_size > _MAX_CONFIG_BYTES:
        raise bad(f"{key!r} must be a scalar; got shape {shape} and dtype {dtype}")
    return _read_array(archive, info)


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _int_in_range(value: np.ndarray, key: str, bad) -> int:
    if value.dtype.kind not in "iu" or not 0 <= int(value) <= MAX_SIZE:
        raise bad(f"{key} must be an integer in [0, {MAX_SIZE}]; got {value!r}")
    return int(value)
