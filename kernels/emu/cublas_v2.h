// The emulator's <cublas_v2.h>: kernel files often include it for the host code beside them; the
// emulator compiles kernels only, so nothing of cuBLAS is declared (a use fails to compile).
#pragma once

#include "cuda_emu.h"
