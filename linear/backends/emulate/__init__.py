"""The emulate runtime: the CUDA kernels of kernels/, compiled with g++ and run on the CPU.

runtime.function("gemm.cu", "gemm_kernel<float, false, true, 128>") compiles the kernel into a
shared library cached on disk and returns a kernel launched like CuPy's RawKernel:
kernel(grid, block, args, shared_mem=0). The runtime (kernels/emu/emu_runtime.cpp) runs the
blocks one after another and a block's threads as fibers, in the order of the schedule; deadlocks,
undefined uses of barriers and warp collectives, faults and timeouts become EmulationError.

Knobs (constructor arguments override the environment):
    LINEAR_EMU_SCHEDULE   forward | reverse | shuffle   order of the blocks, and of a block's threads
                          between waits
    LINEAR_EMU_SEED       seed of the shuffle schedule (int)
    LINEAR_EMU_STRICT     0 allows a barrier that completes only because some threads exited
    LINEAR_EMU_TIMEOUT    seconds before a launch is stopped as hung (0: never); default 300
    LINEAR_EMU_CHECK_BOUNDS  0 passes the arrays themselves (faster; out-of-bounds accesses unseen)
    LINEAR_EMU_SANITIZE   memcheck,racecheck,initcheck,synccheck (any subset): sanitize modes
    LINEAR_EMU_CACHE      where the compiled libraries are cached
    LINEAR_EMU_UCONTEXT   1 uses the portable ucontext context switch (the default off x86-64)
    CXX                   the C++ compiler (default g++)

One job per module:
    compiler.py   g++, the source rewrite for the shim, sanitize builds, the disk cache (entries verified
                  against a size and hash record; a directory others can write is refused)
    ptx.py        inline PTX: each asm statement of a kernel translated into C++ at build time
    elf.py        the static __shared__ variables of a library (and their redzones), from its symbols
    memory.py     guarded copies of array arguments (out-of-bounds global accesses)
    arguments.py  a launch's arguments checked against the kernel's signature, in C form
    sanitizers.py the sanitize modes: the memory they watch, source lines of their reports
    settings.py   the knobs above, resolved once into a frozen EmulatorSettings
    kernel.py     one loaded kernel: launch (with the runtime's settings), and errors turned into EmulationError
    runtime.py    the settings and the kernels compiled so far
"""
from .compiler import rewrite_source
from .errors import EmulationError
from .kernel import EmulatedKernel
from .runtime import EmulatorRuntime

__all__ = ["EmulatedKernel", "EmulationError", "EmulatorRuntime", "rewrite_source"]
