"""A launch's arguments: checked against the kernel's signature and put in C form."""
from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np

from ..tensor_map import TensorMap
from .memory import GuardedRegion, byte_span


class Arguments:
    """The launch's argument values in C form; array arguments as guarded copies when guard is set."""

    def __init__(self, kernel: str, signature: list[str], args: Sequence[Any], guard: bool):
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{kernel}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(signature):
            raise TypeError(f"{kernel} takes {len(signature)} arguments ({', '.join(signature)}), "
                            f"got {len(args)}")
        self.values: list[Any] = []   # keeps the C values alive
        self.regions: list[GuardedRegion] = []
        self.arrays: dict[int, np.ndarray] = {}
        for i, (arg, parameter) in enumerate(zip(args, signature)):
            if parameter.startswith("*"):
                if not isinstance(arg, np.ndarray):
                    raise TypeError(f"{kernel}: argument {i} must be a numpy array for the pointer "
                                    f"parameter ({parameter[1:]} *), got {type(arg).__name__}")
                if parameter != "*?" and arg.dtype.name != parameter[1:]:
                    raise TypeError(f"{kernel}: argument {i} has dtype {arg.dtype.name} and shape "
                                    f"{arg.shape}; the parameter is a {parameter[1:]} pointer")
                self.arrays[i] = arg
                self.values.append(ctypes.c_void_p(arg.ctypes.data))
            elif parameter == "CUtensorMap":  # `const __grid_constant__ CUtensorMap`: 128 bytes by value
                if not isinstance(arg, TensorMap):
                    raise TypeError(f"{kernel}: argument {i} must be a TensorMap (linear.backends.tensor_map) for "
                                    f"the CUtensorMap parameter, got {type(arg).__name__}")
                self.values.append(arg.bytes)  # 64-byte aligned, as the parameter's type is
            else:
                if not isinstance(arg, np.generic) or arg.dtype.name != parameter:
                    got = f"np.{arg.dtype.name}" if isinstance(arg, np.generic) else type(arg).__name__
                    raise TypeError(f"{kernel}: argument {i} must be a numpy scalar of type "
                                    f"{parameter}, got {got}")
                self.values.append(np.array(arg))
        if guard:
            self._guard()
        pointers = [v.ctypes.data if isinstance(v, np.ndarray) else ctypes.addressof(v) for v in self.values]
        self.c_args = (ctypes.c_void_p * max(1, len(pointers)))(*pointers)

    def _guard(self) -> None:
        """One guarded copy per group of overlapping arrays, so aliasing arguments stay aliased."""
        spans = sorted((*byte_span(a), i) for i, a in self.arrays.items())
        groups: list[list] = []
        for low, high, i in spans:
            if groups and low < groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], high)
                groups[-1][2].append(i)
            else:
                groups.append([low, high, [i]])
        for low, high, members in groups:
            writable = all(self.arrays[i].flags.writeable for i in members)
            region = GuardedRegion(low, high, writable, members)
            self.regions.append(region)
            for i in members:
                self.values[i] = ctypes.c_void_p(region.address_of(self.arrays[i].ctypes.data))

    def describe(self, region: GuardedRegion) -> str:
        if len(region.arguments) > 1:
            return (f"the {region.size} bytes shared by arguments "
                    f"{', '.join(map(str, region.arguments))}")
        i = region.arguments[0]
        a = self.arrays[i]
        return f"argument {i} ({a.dtype.name} array of shape {a.shape}, {region.size} bytes)"

    def describe_fault(self, address: int) -> str | None:
        for region in self.regions:
            offset = region.offset(address)
            if offset is not None:
                return f"at byte {offset} of {self.describe(region)}"
        return None

    def finish(self) -> str | None:
        """After a clean launch: checks every copy's slack, then writes the copies back."""
        for step in (GuardedRegion.check, GuardedRegion.commit):
            for region in self.regions:
                problem = step(region)
                if problem:
                    return f"{problem} {self.describe(region)}"
        return None

    def release(self) -> None:
        for region in self.regions:
            region.release()
        self.regions = []
