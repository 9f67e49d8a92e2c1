// The emulator's <device_launch_parameters.h>: threadIdx and the other built-ins are the shim's.
#pragma once

#include "cuda_emu.h"
