// emu_hopper.h: the sm_90 additions to the shim, as plain functions that kernel code (and the
// inline-PTX translator) calls: mbarriers (emu_mbarrier.h), TMA bulk copies (emu_tma.h), wgmma
// (emu_wgmma.h), and here the fences, setmaxnreg and the shared-address conversions they share.
//
//   fence_proxy_async()        fence.proxy.async(.shared::cta): orders generic-proxy writes to shared
//                              memory before async-proxy (TMA, wgmma) reads; the emulator's async
//                              operations read at their wait, so it has nothing to do (a missing
//                              fence is not reported yet)
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

// Shared addresses: the runtime's shared window (emu_runtime.h: generic and shared addresses congruent
// modulo 1024, so that swizzles computed from either agree), the one __cvta_generic_to_shared uses.
inline uint32_t shared_address(const void* p) { return emu_generic_to_shared(p); }
inline void* shared_pointer(uint32_t address, uint32_t bytes, const char* what) {
    (void)bytes, (void)what;  // emu_shared_to_generic fails the launch for an address outside shared memory
    return emu_shared_to_generic(address);
}

struct SetMaxNreg {
    unsigned long long owner;
    unsigned count, value;
    bool increase;
};
inline SetMaxNreg setmaxnreg_calls[8];

}  // namespace emu

__device__ inline void fence_proxy_async() {}
__device__ inline void fence_mbarrier_init() {}

template <bool INCREASE, unsigned N>
EMU_SHIM_ACCESS __device__ inline void setmaxnreg(EMU_HOPPER_SITE) {  // the shim's own state: not watched
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes a multiple of 8 in 24 .. 256");
    emu::SetMaxNreg& s = emu::setmaxnreg_calls[emu::block_thread() / 128];
    if (s.owner != emu::block_owner() || s.count == 128) s = {emu::block_owner(), 0, N, INCREASE};
    if (s.value != N || s.increase != INCREASE)
        emu::hopper_fail("setmaxnreg.%s %u at %s:%d while other threads of warpgroup %u asked for .%s %u: it must be "
                         "warpgroup-uniform", INCREASE ? "inc" : "dec", N, file, line, emu::block_thread() / 128,
                         s.increase ? "inc" : "dec", s.value);
    ++s.count;
}
