// emu_hopper.h: the sm_90 additions to the shim, as plain functions in namespace emu::hopper that
// the inline-PTX translator's code (emulate/ptx_hopper.py) and test kernels call: mbarriers (emu_mbarrier.h), TMA bulk copies (emu_tma.h), wgmma
// (emu_wgmma.h), and here the fences, setmaxnreg and the shared-address conversions they share.
//
//   fence_proxy_async()        fence.proxy.async(.shared::cta): orders the thread's generic-proxy
//                              writes before async-proxy (TMA, wgmma) reads; the data needs nothing
//                              (async operations read at their wait), but under racecheck an async
//                              read of a byte whose generic write its writer never fenced is reported
//   fence_mbarrier_init()      fence.mbarrier_init.release.cluster: nothing to do (no clusters)
//   setmaxnreg<INC, N>()       setmaxnreg.{inc,dec}.sync.aligned.u32 N: checked (N a multiple of 8
//                              in 24 .. 256, the same N from every thread of the warpgroup at this
//                              call); registers are not a resource here, so it does nothing else
// Thread-block clusters are not modelled: __cluster_dims__ is a compile error; their PTX
// (barrier.cluster, mapa, multicast, shared::cluster addresses of other CTAs) is not provided.
#pragma once

#include "emu_mbarrier.h"
#include "emu_tma.h"
#include "emu_wgmma.h"

#define __cluster_dims__(...) \
    _Pragma("GCC error \"thread-block clusters (__cluster_dims__) are not modelled by the emulator\"")

namespace emu {

// Shared addresses: the runtime's shared window (emu_runtime.h), where generic and shared addresses
// are congruent modulo 1024, so that swizzles computed from either agree.
EMU_SHIM_ACCESS inline uint32_t shared_address(const void* p) { return emu_generic_to_shared(p); }
EMU_SHIM_ACCESS inline void* shared_pointer(uint32_t address, uint32_t bytes, const char*) {
    (void)bytes;
    return emu_shared_to_generic(address);
}

struct SetMaxNreg {
    unsigned long long owner;
    unsigned count, value;
    bool increase;
};
inline SetMaxNreg setmaxnreg_calls[8];

}  // namespace emu

namespace emu::hopper {

EMU_SHIM_ACCESS __device__ inline void fence_proxy_async() {
#ifdef EMU_SANITIZE
    emu_sanitize_proxy_fence();
#endif
}
EMU_SHIM_ACCESS __device__ inline void fence_mbarrier_init() {}

EMU_SHIM_ACCESS inline void setmaxnreg_check(bool increase, unsigned n, const char* file, int line) {
    if (n % 8 || n < 24 || n > 256)
        emu::hopper_fail("setmaxnreg.%s %u at %s:%d: the count must be a multiple of 8 in 24 .. 256", increase ? "inc" : "dec",
                    n, file, line);
    emu::SetMaxNreg& s = emu::setmaxnreg_calls[emu::block_thread() / 128];
    if (s.owner != emu::block_owner() || s.count == 128) s = {emu::block_owner(), 0, n, increase};
    if (s.value != n || s.increase != increase)
        emu::hopper_fail("setmaxnreg.%s %u at %s:%d while other threads of warpgroup %u asked for .%s %u: it must be "
                    "warpgroup-uniform", increase ? "inc" : "dec", n, file, line, emu::block_thread() / 128,
                    s.increase ? "inc" : "dec", s.value);
    ++s.count;
}

template <bool INCREASE, unsigned N>
EMU_SHIM_ACCESS __device__ inline void setmaxnreg(EMU_HOPPER_SITE) {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes a multiple of 8 in 24 .. 256");
    setmaxnreg_check(INCREASE, N, file, line);
}

}  // namespace emu::hopper
