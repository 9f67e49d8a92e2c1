// The emulator as a compute-sanitizer: memcheck, racecheck and initcheck (see emu_sanitize.h).
//
// Shadow memory: one Cell per byte of every watched region. A cell keeps the last write and up to
// two reads by different threads; an access conflicts with a recorded one when one of them writes,
// not both are atomics, and nothing orders them: they come from different blocks (nothing orders
// blocks), or from different threads of one block with no __syncthreads released in between (the
// block's barrier epoch is the same), no __syncwarp that both lanes took part in since, and no named
// barrier (bar.sync / bar.arrive of part of the block) where the earlier thread arrived after its access
// and the later one waited before its own.
#include "emu_sanitize.h"

#include <cxxabi.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace emu_san {
namespace {

struct Access {
    const void* pc;
    uint32_t block, epoch, warp_syncs;  // warp_syncs: the thread's count of __syncwarp at the access
    uint32_t clock;                     // the thread's own entry of its vector clock (mbarrier-style sync)
    uint32_t proxy_fences;              // the thread's count of fence.proxy.async at the access
    uint32_t named_syncs;               // the thread's count of named-barrier arrivals at the access
    uint16_t thread;
    bool valid, write, atomic;
    bool async;                         // by the async proxy (TMA, wgmma) on the thread's behalf
};

struct Cell {
    Access write, read[2];
    bool written;  // by a thread of the running block (initcheck)
};

struct Region {
    const char *start, *end;            // the array's bytes
    const char *guard_low, *guard_high; // around them: out of bounds of this array
    std::string name;
    bool shared;
    std::vector<Cell> cells;            // racecheck and initcheck only
};

struct State {
    emu_launch* launch = nullptr;
    int modes = 0;
    std::vector<Region> regions;
    unsigned block = 0, thread = 0, epoch = 0;
    std::vector<uint32_t> warp_syncs;   // per thread: __syncwarp calls completed
    std::vector<uint32_t> synced_with;  // [thread * 32 + lane]: that lane's count at their last common __syncwarp
    // Release/acquire synchronization (mbarriers, wgmma retirement): vector clocks, [thread * n + other],
    // made at the block's first release; a sync object's clock is the join of what was released into it.
    std::vector<uint32_t> clocks;
    std::unordered_map<const void*, std::vector<uint32_t>> released;
    std::vector<uint32_t> proxy_fences;  // per thread: fence.proxy.async executed
    unsigned threads = 0;
    std::vector<uint32_t> named_syncs;  // per thread: named-barrier arrivals
    // [thread * threads + other]: other's count of arrivals at the last named barrier `thread` waited
    // at and `other` arrived at (allocated at a launch's first partial named barrier)
    std::vector<uint32_t> named_with;
};
State S;

std::string demangled(const char* name) {
    int status = 0;
    char* text = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string result = status == 0 && text ? text : name;
    free(text);
    return result;
}

std::string sized(uint64_t bytes) { return " (" + std::to_string(bytes) + " bytes)"; }

const char* kind(const Access& a) { return a.atomic ? "atomic" : a.write ? "write" : "read"; }

// Ends the launch with the message; error_pc names this access and the other one, which Python
// turns into source lines.
[[noreturn]] __attribute__((format(printf, 3, 4))) void fail_at(const void* pc, const void* other_pc,
                                                                 const char* format, ...) {
    char message[sizeof S.launch->message];
    va_list ap;
    va_start(ap, format);
    vsnprintf(message, sizeof message, format, ap);
    va_end(ap);
    S.launch->error_pc[0] = reinterpret_cast<uintptr_t>(pc);
    S.launch->error_pc[1] = reinterpret_cast<uintptr_t>(other_pc);
    emu_fail(message);
}

bool ordered(const Access& before, const Access& now) {
    if (!before.valid) return true;
    if (before.atomic && now.atomic) return true;
    if (before.block != now.block) return false;
    if (before.thread == now.thread || before.epoch != now.epoch) return true;
    if (!S.clocks.empty() && S.clocks[size_t(now.thread) * S.threads + before.thread] >= before.clock) return true;
    if (!S.named_with.empty() && S.named_with[size_t(now.thread) * S.threads + before.thread] > before.named_syncs)
        return true;
    return before.thread / 32 == now.thread / 32 &&
           S.synced_with[now.thread * 32u + before.thread % 32] > before.warp_syncs;
}

[[noreturn]] void race(const Region& r, size_t offset, const Access& now, const Access& other) {
    const emu_uint3 t = thread_idx(other.thread);
    const emu_uint3 n = thread_idx(now.thread);
    const emu_uint3 g = S.launch->grid;
    char block[96] = "";
    if (other.block != now.block)
        snprintf(block, sizeof block, " of block (%u, %u, %u)", other.block % g.x, other.block / g.x % g.y,
                 other.block / (g.x * g.y));
    fail_at(now.pc, other.pc, "racecheck: %s by thread (%u, %u, %u) and %s by thread (%u, %u, %u)%s of byte %zu of %s, "
             "with no barrier between them", kind(now), n.x, n.y, n.z, kind(other), t.x, t.y, t.z, block,
             offset, r.name.c_str());
}

void check_race(Region& r, size_t offset, const Access& now) {
    Cell& c = r.cells[offset];
    if (!ordered(c.write, now)) race(r, offset, now, c.write);
    if (now.write) {
        for (const Access& read : c.read)
            if (!ordered(read, now)) race(r, offset, now, read);
        c.write = now;
        c.read[0].valid = c.read[1].valid = false;
    } else {
        Access& slot = ordered(c.read[0], now) ? c.read[0] : c.read[1];
        slot = now;
    }
}

Region* find(const char* p) {
    for (Region& r : S.regions)
        if (p >= r.guard_low && p < r.guard_high) return &r;
    return nullptr;
}

// An async-proxy read (TMA store, wgmma operand) of a byte whose last write was a generic one that its
// writer has not followed with fence.proxy.async: the PTX memory model leaves what it reads undefined.
void check_proxy_fence(const Region& r, size_t offset, const void* pc) {
    const Access& w = r.cells[offset].write;
    if (!w.valid || w.async || w.atomic || w.block != S.block || S.proxy_fences[w.thread] != w.proxy_fences) return;
    const emu_uint3 t = thread_idx(w.thread), n = thread_idx(S.thread);
    fail_at(pc, w.pc, "racecheck: the async proxy (TMA or wgmma) reads byte %zu of %s for thread (%u, %u, %u), "
            "written through the generic proxy by thread (%u, %u, %u) with no fence.proxy.async after the write",
            offset, r.name.c_str(), n.x, n.y, n.z, t.x, t.y, t.z);
}

void access(const void* address, size_t bytes, bool write, bool atomic, const void* pc, bool reads_old = false,
            bool async_proxy = false) {
    if (!S.modes) return;
    const char* p = static_cast<const char*>(address);
    Region* r = find(p);
    if (!r) return;  // locals, and memory the launch does not describe
    if (p < r->start || p + bytes > r->end) {
        if (!(S.modes & EMU_MEMCHECK)) return;
        fail_at(pc, nullptr, "memcheck: out-of-bounds %s of %zu bytes at byte %td of %s",
                 write ? "write" : "read", bytes, p - r->start, r->name.c_str());
    }
    if (r->cells.empty()) return;
    const size_t offset = size_t(p - r->start);
    if (r->shared && (!write || reads_old) && (S.modes & EMU_INITCHECK))
        for (size_t i = 0; i < bytes; ++i)
            if (!r->cells[offset + i].written) {
                fail_at(pc, nullptr, "initcheck: %s of %zu bytes at byte %zu of %s, "
                         "which no thread of the block has written (byte %zu is uninitialized)",
                        reads_old ? "atomic read-modify-write" : "read", bytes, offset, r->name.c_str(), offset + i);
            }
    const uint32_t clock = S.clocks.empty() ? 1 : S.clocks[size_t(S.thread) * S.threads + S.thread];
    const Access now{pc, S.block, S.epoch, S.warp_syncs[S.thread], clock, S.proxy_fences[S.thread],
                     S.named_syncs[S.thread], uint16_t(S.thread), true, write, atomic, async_proxy};
    for (size_t i = 0; i < bytes; ++i) {
        if ((S.modes & EMU_RACECHECK) && async_proxy && !write) check_proxy_fence(*r, offset + i, pc);
        if (S.modes & EMU_RACECHECK) check_race(*r, offset + i, now);
        if (write) r->cells[offset + i].written = true;
    }
}

Region region(const char* start, size_t bytes, const char* guard_low, const char* guard_high,
              std::string name, bool shared) {
    Region r{start, start + bytes, guard_low, guard_high, std::move(name), shared, {}};
    if (S.modes & (EMU_RACECHECK | EMU_INITCHECK)) r.cells.resize(bytes);
    return r;
}

}  // namespace

void launch_begin(emu_launch* L, const char* dynamic, const char* buffer, const char* buffer_end) {
    S.launch = L;
    S.modes = L->sanitize & (EMU_MEMCHECK | EMU_RACECHECK | EMU_INITCHECK);
    S.regions.clear();
    if (!S.modes) return;
    for (int i = 0; i < L->n_regions; ++i) {
        const emu_region& g = L->regions[i];
        auto* start = reinterpret_cast<const char*>(g.start);
        S.regions.push_back(region(start, g.bytes, start - g.guard_before, start + g.bytes + g.guard_after,
                                   g.shared ? "static __shared__ " + demangled(g.name) + sized(g.bytes) : g.name,
                                   g.shared));
    }
    S.regions.push_back(region(dynamic, L->dynamic_shared_bytes, buffer, buffer_end,
                               "the dynamic shared memory" + sized(L->dynamic_shared_bytes), true));
    const unsigned threads = L->block.x * L->block.y * L->block.z;
    S.warp_syncs.assign(threads, 0);
    S.synced_with.assign(threads * 32u, 0);
    S.threads = threads;
    S.named_syncs.assign(threads, 0);
    S.named_with.clear();
    S.proxy_fences.assign(threads, 0);
}

void launch_end() {
    S.launch = nullptr;
    S.modes = 0;  // accesses between launches (e.g. the kernel library's own statics) are not watched
    S.regions.clear();
}

void block_begin(unsigned block) {
    S.block = block;
    S.epoch = 0;
    if (!S.modes) return;
    for (Region& r : S.regions)
        if (r.shared) r.cells.assign(r.cells.size(), Cell{});  // a block starts with fresh shared memory
    std::fill(S.warp_syncs.begin(), S.warp_syncs.end(), 0);
    std::fill(S.synced_with.begin(), S.synced_with.end(), 0);
    std::fill(S.named_syncs.begin(), S.named_syncs.end(), 0);
    std::fill(S.named_with.begin(), S.named_with.end(), 0);
    S.clocks.clear();
    S.released.clear();
    std::fill(S.proxy_fences.begin(), S.proxy_fences.end(), 0);
}

// Vector clocks start at the first release of a block: a thread's own entry 1, the others 0.
static uint32_t* clock_of(unsigned thread) {
    if (S.clocks.empty()) {
        S.clocks.assign(size_t(S.threads) * S.threads, 0);
        for (unsigned t = 0; t < S.threads; ++t) S.clocks[size_t(t) * S.threads + t] = 1;
    }
    return &S.clocks[size_t(thread) * S.threads];
}

void release(const void* object) {
    if (!(S.modes & EMU_RACECHECK)) return;
    uint32_t* mine = clock_of(S.thread);
    std::vector<uint32_t>& into = S.released[object];
    into.resize(S.threads, 0);
    for (unsigned t = 0; t < S.threads; ++t) into[t] = std::max(into[t], mine[t]);
    ++mine[S.thread];  // later accesses of this thread are not covered by this release
}

void acquire(const void* object) {
    if (!(S.modes & EMU_RACECHECK)) return;
    auto found = S.released.find(object);
    if (found == S.released.end()) return;
    uint32_t* mine = clock_of(S.thread);
    for (unsigned t = 0; t < S.threads; ++t) mine[t] = std::max(mine[t], found->second[t]);
}

void thread_switch(unsigned thread) { S.thread = thread; }

void barrier_released() { ++S.epoch; }

void warp_synced(unsigned warp, unsigned group) {
    if (!S.modes) return;
    const unsigned base = warp * 32;
    for (unsigned m = group; m; m &= m - 1) ++S.warp_syncs[base + __builtin_ctz(m)];
    for (unsigned m = group; m; m &= m - 1)
        for (unsigned o = group; o; o &= o - 1)
            S.synced_with[(base + __builtin_ctz(m)) * 32 + __builtin_ctz(o)] =
                S.warp_syncs[base + __builtin_ctz(o)];
}

void named_barrier_completed(const unsigned* threads, const bool* waited, unsigned count) {
    if (!(S.modes & EMU_RACECHECK)) return;
    if (S.named_with.empty()) S.named_with.assign(size_t(S.threads) * S.threads, 0);
    for (unsigned i = 0; i < count; ++i) ++S.named_syncs[threads[i]];
    for (unsigned i = 0; i < count; ++i) {
        if (!waited[i]) continue;  // bar.arrive: it goes on without seeing the others' accesses
        uint32_t* row = &S.named_with[size_t(threads[i]) * S.threads];
        for (unsigned j = 0; j < count; ++j) row[threads[j]] = S.named_syncs[threads[j]];
    }
}

emu_uint3 thread_idx(unsigned index) {
    const emu_uint3 b = S.launch->block;
    return {index % b.x, index / b.x % b.y, index / (b.x * b.y)};
}

}  // namespace emu_san

// What g++'s -fsanitize=thread instrumentation calls for every load and store of kernel code.
#define EMU_ACCESS(p, n, write) emu_san::access(p, n, write, false, __builtin_return_address(0))
#define EMU_HOOKS(n)                                                                               \
    extern "C" void __tsan_read##n(void* p) { EMU_ACCESS(p, n, false); }                           \
    extern "C" void __tsan_write##n(void* p) { EMU_ACCESS(p, n, true); }                           \
    extern "C" void __tsan_unaligned_read##n(void* p) { EMU_ACCESS(p, n, false); }                 \
    extern "C" void __tsan_unaligned_write##n(void* p) { EMU_ACCESS(p, n, true); }
EMU_HOOKS(1)
EMU_HOOKS(2)
EMU_HOOKS(4)
EMU_HOOKS(8)
EMU_HOOKS(16)
#undef EMU_HOOKS
extern "C" void __tsan_read_range(void* p, size_t n) { EMU_ACCESS(p, n, false); }
extern "C" void __tsan_write_range(void* p, size_t n) { EMU_ACCESS(p, n, true); }
#undef EMU_ACCESS
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}

// memcpy, memset and memmove of a sanitize build's kernel code (compiled -fno-builtin-mem*, linked
// --wrap=mem*: see emulate/compiler.py): checked as one read and one write of the whole range, then
// done by libc (this library is linked without --wrap).
extern "C" void* __wrap_memcpy(void* to, const void* from, size_t n) {
    emu_san::access(from, n, false, false, __builtin_return_address(0));
    emu_san::access(to, n, true, false, __builtin_return_address(0));
    return memcpy(to, from, n);
}
extern "C" void* __wrap_memmove(void* to, const void* from, size_t n) {
    emu_san::access(from, n, false, false, __builtin_return_address(0));
    emu_san::access(to, n, true, false, __builtin_return_address(0));
    return memmove(to, from, n);
}
extern "C" void* __wrap_memset(void* to, int value, size_t n) {
    emu_san::access(to, n, true, false, __builtin_return_address(0));
    return memset(to, value, n);
}

extern "C" void emu_sanitize_atomic(void* p, size_t n, int reads_old, const void* pc) {
    emu_san::access(p, n, true, true, pc, reads_old != 0);
}

extern "C" void emu_sanitize_access(const void* p, size_t n, int write, const void* pc) {
    emu_san::access(p, n, write != 0, false, pc, false, true);
}
extern "C" void emu_sanitize_proxy_fence(void) {
    if (emu_san::S.modes) ++emu_san::S.proxy_fences[emu_san::S.thread];
}
extern "C" void emu_sanitize_release(const void* object) { emu_san::release(object); }
extern "C" void emu_sanitize_acquire(const void* object) { emu_san::acquire(object); }
