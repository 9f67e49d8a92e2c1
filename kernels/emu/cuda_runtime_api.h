// The emulator's <cuda_runtime_api.h>: host-only, so nothing beyond the shim (see cuda.h).
#pragma once

#include "cuda_emu.h"
