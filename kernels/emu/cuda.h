// The emulator's <cuda.h> (the driver API): host-only, so empty here; a kernel file that includes
// it gets the shim (cuda_emu.h), which every kernel library includes first anyway.
#pragma once

#include "cuda_emu.h"
