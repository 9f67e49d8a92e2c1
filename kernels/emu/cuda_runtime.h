// The emulator's <cuda_runtime.h>: everything a kernel needs is already in cuda_emu.h.
#pragma once

#include "cuda_emu.h"
