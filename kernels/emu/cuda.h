// The emulator's <cuda.h> (the driver API): the shim (cuda_emu.h), which every kernel library
// includes first anyway, and the tensor maps (CUtensorMap, cuTensorMapEncodeTiled: emu_tensor_map.h)
// that kernels' host helpers and __grid_constant__ parameters use.
#pragma once

#include "cuda_emu.h"
#include "emu_tensor_map.h"
