// The sanitizer's side of the runtime library (emu_sanitize.cpp), as emu_runtime.cpp drives it.
//
// A sanitize build of a kernel library is compiled with g++'s ThreadSanitizer instrumentation
// (-fsanitize=thread) but linked without libtsan: every load and store of kernel code calls
// __tsan_readN / __tsan_writeN, which emu_sanitize.cpp defines. Those check the access against the
// launch's arrays (memcheck), the shared memory the block has written (initcheck) and the last
// accesses of other threads that no barrier orders (racecheck). Only memory the launch describes
// is checked: argument arrays, static and dynamic shared memory; locals are ignored.
#pragma once

#include "emu_runtime.h"

namespace emu_san {

// At the start of a launch: the modes and the memory regions to watch; the dynamic shared buffer
// [dynamic, dynamic + dynamic_bytes) sits inside the mapping [buffer, buffer_end).
void launch_begin(emu_launch* L, const char* dynamic, const char* buffer, const char* buffer_end);
// At its end: the regions are forgotten (their memory is released and may be reused).
void launch_end();
// Before each block (its index in launch order) and each fiber switch (thread index in the block).
void block_begin(unsigned block);
void thread_switch(unsigned thread);
// Ordering: a released __syncthreads orders everything before it in the block before everything
// after; a __syncwarp orders the accesses of the lanes of `group` (a mask of warp `warp`).
void barrier_released();
void warp_synced(unsigned warp, unsigned group);
// Release/acquire through a sync object (an mbarrier, a wgmma operation): the running thread's accesses
// so far happen before those of a thread that acquires the object afterwards (racecheck).
void release(const void* object);
void acquire(const void* object);
// A named barrier of part of the block completed: the threads[0..count) that arrived there, of which
// those with waited[i] waited (bar.sync) and so see everything every arrival did before arriving.
void named_barrier_completed(const unsigned* threads, const bool* waited, unsigned count);
// Where thread `index` of the running block is, for messages.
emu_uint3 thread_idx(unsigned index);

}  // namespace emu_san
