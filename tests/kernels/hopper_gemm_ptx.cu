// hopper_gemm_ptx.cu: hopper_gemm.cu with its Hopper instructions as the inline PTX a GPU kernel writes
// (hopper_common.cuh's HOPPER_VIA_PTX flavour), run through the emulator's PTX translator.
#define HOPPER_VIA_PTX 1
#include "hopper_gemm.cu"
