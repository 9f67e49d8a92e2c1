"""numpy's own matmul tests, imported from the numpy package (never copied), run against linear.matmul
on the numpy and emulate backends.

- TestMatmul (which holds MatmulCommon's tests too): subclassed with `matmul` set to linear.matmul.
- The tests of both that call `np.matmul` directly, and TestMethods' matmul tests, read `np` from their
  module's globals: a fixture points that name at numpy with linear.matmul in place of numpy.matmul.
- TestMethods' tests parametrized over (np.dot, np.matmul) are run with our matmul as `func`, keeping
  their other parameters.
TestMatmulOperator is left out: the @ operator is numpy's own, whatever linear.matmul does.
"""
from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import linear
from conftest import HOST_BACKENDS

numpy_tests = pytest.importorskip("numpy._core.tests.test_multiarray")

BACKENDS = [name for name in ("numpy", "emulate") if name in HOST_BACKENDS]
# TestMethods' matmul tests: the ones that call np.matmul, and the ones parametrized over it.
METHODS_CALLING_MATMUL = ("test_dot_matmul_out", "test_dot_matmul_inner_array_casting_fails", "test_matmul_out")


def numpy_with(matmul) -> types.ModuleType:
    """A stand-in for the numpy module whose matmul is `matmul` (every other name is numpy's)."""
    module = types.ModuleType("numpy")
    module.__dict__.update(np.__dict__)
    module.matmul = matmul
    return module


def parameters(test, name: str) -> list:
    """The values of one @pytest.mark.parametrize of a numpy test."""
    [values] = [mark.args[1] for mark in test.pytestmark if mark.name == "parametrize" and mark.args[0] == name]
    return list(values)


class OnBackend:
    """Mixin: every test runs with `self.matmul` and the test module's `np.matmul` as linear.matmul on
    self.backend_name."""
    backend_name: str

    @pytest.fixture(autouse=True)
    def _our_matmul(self, monkeypatch):
        monkeypatch.setattr(numpy_tests, "np", numpy_with(self.matmul))

    @classmethod
    def make(cls, base: type, backend: str) -> type:
        matmul = functools.partial(linear.matmul, backend=backend)
        name = f"Test{base.__name__.removeprefix('Test')}On{backend.capitalize()}"
        return type(name, (cls, base), {"matmul": staticmethod(matmul), "backend_name": backend,
                                        "__test__": True})


class MethodsMatmul:
    """The matmul tests of numpy's TestMethods."""
    locals().update({name: getattr(numpy_tests.TestMethods, name) for name in METHODS_CALLING_MATMUL})

    def test_arr_mult(self):
        numpy_tests.TestMethods().test_arr_mult(self.matmul)

    @pytest.mark.parametrize("dtype", parameters(numpy_tests.TestMethods.test_no_dgemv, "dtype"))
    def test_no_dgemv(self, dtype):
        numpy_tests.TestMethods().test_no_dgemv(self.matmul, dtype)


for _backend in BACKENDS:
    for _base in (numpy_tests.TestMatmul, MethodsMatmul):
        _cls = OnBackend.make(_base, _backend)
        globals()[_cls.__name__] = _cls


def test_a_wrong_matmul_fails_numpy_tests():
    """Negative control: the imported tests do check the values of whatever matmul they are given."""
    def off_by_one(a, b, out=None):
        return linear.matmul(a, b, out) + 1
    wrong = OnBackend.make(numpy_tests.TestMatmul, "numpy")()
    wrong.matmul = off_by_one
    with pytest.raises(AssertionError):
        wrong.test_matrix_matrix_values()
    with pytest.MonkeyPatch.context() as monkeypatch:  # the tests that call np.matmul themselves
        monkeypatch.setattr(numpy_tests, "np", numpy_with(off_by_one))
        with pytest.raises(AssertionError):
            numpy_tests.TestMethods().test_matmul_out()
