// The emulator's <cuda_profiler_api.h>: host-only, so nothing beyond the shim (see cublas_v2.h).
#pragma once

#include "cuda_emu.h"
