// emu_mbarrier.h: the PTX ISA's mbarrier (a 64-bit object in shared memory) on the CPU.
//
// What it models (PTX ISA, "Parallel Synchronization and Communication Instructions: mbarrier"):
//   a barrier has a current phase, a pending arrival count, an expected arrival count and a
//   transaction count (tx-count, bytes). init(count) starts phase 0 with pending = expected = count
//   (1 .. 2^20 - 1) and tx-count 0. arrive(n) takes n from the pending count; expect_tx(b) adds b to
//   the tx-count, complete_tx(b) (what a bulk copy does when its bytes have landed) takes b from it.
//   When both reach zero the phase completes: the phase parity flips, pending = expected, tx = 0.
//   test_wait / try_wait(state) hold once the phase that `state` (arrive's result) names has
//   completed; the .parity forms hold once the phase of that parity has completed, i.e. while the
//   current phase's parity differs from it. inval makes the object plain memory again.
// The object's 64 bits, this emulator's encoding (the ISA leaves it opaque):
//   bits 0-19 pending arrivals, 20-39 expected arrivals, 40-60 tx-count (signed), 61 phase parity,
//   62-63 the tag 01 of an initialized barrier: shared memory starts as 0xFF bytes, so a barrier
//   used before init (or after inval, or overwritten) is an error, not a wait on garbage.
// Waiting never spins: a try_wait or test_wait that finds the phase incomplete suspends the thread
// (emu_wait_until) until the phase completes; test_wait then returns false (the poll the thread
// made while it was incomplete), try_wait true. A phase that can never complete is a deadlock report
// naming each waiting thread, the barrier (its shared address, phase and counts) and the waiting
// call's file:line. Bulk copies that complete on a barrier (emu_tma.h) land, and complete their
// transaction bytes, only when some thread waits on that barrier: a thread that reads their
// destination without waiting reads what was there before.
// Not modelled: .cluster scope and remote (shared::cluster) barriers, arrive.noComplete, the
// .release/.acquire qualifiers (fibers never run concurrently, so every access is ordered),
// mbarrier.pending_count. An arrival or complete_tx beyond what the phase expects, a count out of the
// ISA's range, and an address that is not 8-byte aligned are errors.
#pragma once

#include <cstdarg>
#include <vector>

// Every function of the sm_90 shim is uninstrumented in sanitize builds: what its accesses mean for the
// sanitizer is said explicitly (sanitize_access, sanitize_release, sanitize_acquire below).
#define EMU_SHIM_ACCESS __attribute__((no_sanitize_thread))

namespace emu {

namespace mbar {
constexpr uint64_t kCountMask = (1u << 20) - 1;
constexpr int kExpectedShift = 20, kTxShift = 40, kPhaseShift = 61, kTagShift = 62;
constexpr uint64_t kTag = 1;
constexpr int64_t kTxLimit = (1 << 20) - 1;  // tx-count range: [-(2^20 - 1), 2^20 - 1]

struct State {
    uint32_t pending, expected, phase;
    int64_t tx;
};
EMU_SHIM_ACCESS inline bool valid(uint64_t word) { return (word >> kTagShift) == kTag; }
EMU_SHIM_ACCESS inline State decode(uint64_t word) {
    int64_t tx = int64_t(word >> kTxShift & ((uint64_t(1) << 21) - 1));
    if (tx >= (int64_t(1) << 20)) tx -= int64_t(1) << 21;
    return {uint32_t(word & kCountMask), uint32_t(word >> kExpectedShift & kCountMask),
            uint32_t(word >> kPhaseShift & 1), tx};
}
EMU_SHIM_ACCESS inline uint64_t encode(const State& s) {
    return uint64_t(s.pending) | uint64_t(s.expected) << kExpectedShift |
           (uint64_t(s.tx) & ((uint64_t(1) << 21) - 1)) << kTxShift | uint64_t(s.phase) << kPhaseShift |
           kTag << kTagShift;
}
}  // namespace mbar

// A bulk copy (emu_tma.h) whose bytes land in shared memory when a thread waits on its barrier.
struct PendingBulkLoad {
    uint64_t* barrier;
    unsigned char* destination;
    unsigned swizzle_chunks;   // 1 (none), 2, 4 or 8: 16-byte chunks per swizzle span
    uint32_t bytes;
    std::vector<unsigned char> data;  // the box in order, before swizzling
};
struct PendingBulkLoads {
    unsigned long long owner;  // the launch and block they belong to (copies of an earlier block are dropped)
    std::vector<PendingBulkLoad> loads;
};
inline PendingBulkLoads pending_bulk_loads;

EMU_SHIM_ACCESS inline unsigned long long block_owner() {
    return launch_serial << 32 ^ (emu_block_idx.x + emu_grid_dim.x * (emu_block_idx.y + emu_grid_dim.y * emu_block_idx.z));
}
EMU_SHIM_ACCESS inline std::vector<PendingBulkLoad>& bulk_loads() {
    if (pending_bulk_loads.owner != block_owner()) {
        pending_bulk_loads.owner = block_owner();
        pending_bulk_loads.loads.clear();
    }
    return pending_bulk_loads.loads;
}

// Sanitize builds: the shim's own accesses to barriers and to the data of asynchronous copies are
// uninstrumented (no_sanitize_thread); what they mean for the sanitizer is said explicitly: an arrive
// releases, a successful wait acquires (racecheck orders accesses through them), and a copy's data
// accesses are made by the thread that issues or retires it (see emu_tma.h, emu_wgmma.h), at the kernel's
// call: the shim's entry points pass their return address (in a sanitize build they are real calls, never
// inlined into the instrumented kernel code), which reports turn into the kernel's source line.
#ifdef EMU_SANITIZE
EMU_SHIM_ACCESS inline void sanitize_access(const void* p, size_t n, bool write, const void* pc) {
    emu_sanitize_access(p, n, write, pc);
}
EMU_SHIM_ACCESS inline void sanitize_release(const void* object) { emu_sanitize_release(object); }
EMU_SHIM_ACCESS inline void sanitize_acquire(const void* object) { emu_sanitize_acquire(object); }
#else
EMU_SHIM_ACCESS inline void sanitize_access(const void*, size_t, bool, const void*) {}
EMU_SHIM_ACCESS inline void sanitize_release(const void*) {}
EMU_SHIM_ACCESS inline void sanitize_acquire(const void*) {}
#endif

// The shared address of a barrier, for messages (emu_hopper.h defines it).
EMU_SHIM_ACCESS inline uint32_t shared_address(const void* p);

[[noreturn]] __attribute__((format(printf, 1, 2))) inline void hopper_fail(const char* format, ...) {
    char message[900];
    va_list ap;
    va_start(ap, format);
    vsnprintf(message, sizeof message, format, ap);
    va_end(ap);
    emu_fail(message);
}

EMU_SHIM_ACCESS inline mbar::State mbarrier_state(const uint64_t* barrier, const char* what, const char* file, int line) {
    if (reinterpret_cast<uintptr_t>(barrier) % 8)
        hopper_fail("%s: the mbarrier address %p is not 8-byte aligned (%s:%d)", what,
                    static_cast<const void*>(barrier), file, line);
    const uint64_t word = *barrier;
    if (!mbar::valid(word))
        hopper_fail("%s on the mbarrier at shared address 0x%x, which is not initialized (mbarrier.init "
                    "was not called on it, or it was invalidated or overwritten) (%s:%d)", what,
                    shared_address(barrier), file, line);
    return mbar::decode(word);
}

// Completes the phase when nothing is pending; stores the barrier.
EMU_SHIM_ACCESS inline void mbarrier_store(uint64_t* barrier, mbar::State s) {
    if (s.pending == 0 && s.tx == 0) {
        s.phase ^= 1;
        s.pending = s.expected;
    }
    *barrier = mbar::encode(s);
}

EMU_SHIM_ACCESS inline void mbarrier_add_tx(uint64_t* barrier, int64_t bytes, const char* what, const char* file, int line) {
    mbar::State s = mbarrier_state(barrier, what, file, line);
    s.tx += bytes;
    if (s.tx > mbar::kTxLimit || s.tx < -mbar::kTxLimit)
        hopper_fail("%s: the transaction count of the mbarrier at shared address 0x%x would be %lld, outside "
                    "the ISA's range of +-(2^20 - 1) (%s:%d)", what, shared_address(barrier),
                    static_cast<long long>(s.tx), file, line);
    mbarrier_store(barrier, s);
}

// Lands every bulk copy that completes on `barrier`, swizzled as its tensor map says (emu_tma.h).
EMU_SHIM_ACCESS inline void land_bulk_loads(uint64_t* barrier) {
    std::vector<PendingBulkLoad>& loads = bulk_loads();
    size_t kept = 0;
    for (size_t i = 0; i < loads.size(); ++i) {
        PendingBulkLoad& load = loads[i];
        if (load.barrier != barrier) {
            if (kept != i) loads[kept] = std::move(load);
            ++kept;
            continue;
        }
        const uintptr_t mask = load.swizzle_chunks - 1;
        for (uint32_t offset = 0; offset < load.bytes; offset += 16) {
            const uintptr_t at = reinterpret_cast<uintptr_t>(load.destination + offset);
            unsigned char* to = reinterpret_cast<unsigned char*>(at ^ ((at >> 7 & mask) << 4));
            __builtin_memcpy(to, load.data.data() + offset, 16);
        }
        mbarrier_add_tx(barrier, -int64_t(load.bytes), "complete_tx of a bulk copy", __FILE__, __LINE__);
    }
    loads.resize(kept);
}

EMU_SHIM_ACCESS inline unsigned pending_loads_on(const uint64_t* barrier) {
    unsigned n = 0;
    for (const PendingBulkLoad& load : bulk_loads()) n += load.barrier == barrier;
    return n;
}

struct MbarrierWait {
    uint64_t* barrier;
    uint32_t parity;  // the phase parity waited for: ready once the current phase's parity differs
    const char* file;
    int line;
};

EMU_SHIM_ACCESS inline int mbarrier_phase_done(void* object) {
    auto* w = static_cast<MbarrierWait*>(object);
    land_bulk_loads(w->barrier);
    if (!mbar::valid(*w->barrier)) return 1;  // invalidated while waited on: the wait returns to report it
    return mbar::decode(*w->barrier).phase != w->parity;
}

EMU_SHIM_ACCESS inline void describe_mbarrier_wait(void* object, char* out, size_t n) {
    auto* w = static_cast<MbarrierWait*>(object);
    const mbar::State s = mbar::decode(*w->barrier);
    snprintf(out, n, "the phase of parity %u of the mbarrier at shared address 0x%x (its current phase has "
             "parity %u, %u of %u arrivals pending, tx-count %lld, %u bulk copies in flight; waited on at %s:%d)",
             w->parity, shared_address(w->barrier), s.phase, s.pending, s.expected,
             static_cast<long long>(s.tx), pending_loads_on(w->barrier), w->file, w->line);
}

// Whether the phase of `parity` has completed; if not and `block`, waits until it has.
EMU_SHIM_ACCESS inline bool mbarrier_wait(uint64_t* barrier, uint32_t parity, bool block, const char* what, const char* file,
                          int line) {
    mbarrier_state(barrier, what, file, line);
    MbarrierWait w{barrier, parity & 1, file, line};
    if (mbarrier_phase_done(&w)) {
        mbarrier_state(barrier, what, file, line);
        sanitize_acquire(barrier);
        return true;
    }
    if (!block) return false;
    emu_wait_until(mbarrier_phase_done, describe_mbarrier_wait, &w);
    mbarrier_state(barrier, what, file, line);
    sanitize_acquire(barrier);
    return true;
}

}  // namespace emu

// ---- The instructions, as plain functions: the mbarrier operand is its generic address ----------
namespace emu::hopper {

#define EMU_HOPPER_SITE const char* file = __builtin_FILE(), int line = __builtin_LINE()

// mbarrier.init.shared.b64 [bar], count
EMU_SHIM_ACCESS __device__ inline void mbarrier_init(uint64_t* barrier, uint32_t count, EMU_HOPPER_SITE) {
    if (reinterpret_cast<uintptr_t>(barrier) % 8)
        emu::hopper_fail("mbarrier.init: the address %p is not 8-byte aligned (%s:%d)", static_cast<void*>(barrier),
                         file, line);
    if (count < 1 || count > emu::mbar::kCountMask)
        emu::hopper_fail("mbarrier.init: count %u is outside the ISA's 1 .. 2^20 - 1 (%s:%d)", count, file, line);
    *barrier = emu::mbar::encode({count, count, 0, 0});
}

// mbarrier.inval.shared.b64 [bar]
EMU_SHIM_ACCESS __device__ inline void mbarrier_inval(uint64_t* barrier, EMU_HOPPER_SITE) {
    emu::mbarrier_state(barrier, "mbarrier.inval", file, line);
    if (emu::pending_loads_on(barrier))
        emu::hopper_fail("mbarrier.inval on the mbarrier at shared address 0x%x while %u bulk copies still complete "
                         "on it (%s:%d)", emu::shared_address(barrier), emu::pending_loads_on(barrier), file, line);
    *barrier = 0;
}

// mbarrier.arrive.shared.b64 state, [bar], count: returns the state token (the phase arrived on).
EMU_SHIM_ACCESS __device__ inline uint64_t mbarrier_arrive(uint64_t* barrier, uint32_t count = 1, EMU_HOPPER_SITE) {
    emu::mbar::State s = emu::mbarrier_state(barrier, "mbarrier.arrive", file, line);
    if (count < 1 || count > emu::mbar::kCountMask)
        emu::hopper_fail("mbarrier.arrive: count %u is outside the ISA's 1 .. 2^20 - 1 (%s:%d)", count, file, line);
    if (count > s.pending)
        emu::hopper_fail("mbarrier.arrive with count %u on the mbarrier at shared address 0x%x, whose current phase "
                         "(parity %u) has only %u of %u arrivals pending: more threads arrive than it expects "
                         "(%s:%d)", count, emu::shared_address(barrier), s.phase, s.pending, s.expected, file, line);
    const uint64_t token = uint64_t(s.phase) << emu::mbar::kPhaseShift | emu::mbar::kTag << emu::mbar::kTagShift;
    emu::sanitize_release(barrier);
    s.pending -= count;
    emu::mbarrier_store(barrier, s);
    return token;
}

// mbarrier.expect_tx.shared.b64 [bar], bytes
EMU_SHIM_ACCESS __device__ inline void mbarrier_expect_tx(uint64_t* barrier, uint32_t bytes, EMU_HOPPER_SITE) {
    emu::mbarrier_add_tx(barrier, bytes, "mbarrier.expect_tx", file, line);
}

// mbarrier.complete_tx.shared.b64 [bar], bytes
EMU_SHIM_ACCESS __device__ inline void mbarrier_complete_tx(uint64_t* barrier, uint32_t bytes, EMU_HOPPER_SITE) {
    emu::sanitize_release(barrier);
    emu::mbarrier_add_tx(barrier, -int64_t(bytes), "mbarrier.complete_tx", file, line);
}

// mbarrier.arrive.expect_tx.shared.b64 state, [bar], bytes: expect-tx, then arrive-on with count 1.
EMU_SHIM_ACCESS __device__ inline uint64_t mbarrier_arrive_expect_tx(uint64_t* barrier, uint32_t bytes, EMU_HOPPER_SITE) {
    emu::mbarrier_add_tx(barrier, bytes, "mbarrier.arrive.expect_tx", file, line);
    return mbarrier_arrive(barrier, 1, file, line);
}

// mbarrier.test_wait{.parity} / mbarrier.try_wait{.parity}: waitComplete.
EMU_SHIM_ACCESS __device__ inline bool mbarrier_test_wait_parity(uint64_t* barrier, uint32_t parity, EMU_HOPPER_SITE) {
    if (emu::mbarrier_wait(barrier, parity, false, "mbarrier.test_wait", file, line)) return true;
    emu::mbarrier_wait(barrier, parity, true, "mbarrier.test_wait", file, line);  // the thread polls again later
    return false;
}
EMU_SHIM_ACCESS __device__ inline bool mbarrier_test_wait(uint64_t* barrier, uint64_t state, EMU_HOPPER_SITE) {
    return mbarrier_test_wait_parity(barrier, uint32_t(state >> emu::mbar::kPhaseShift), file, line);
}
EMU_SHIM_ACCESS __device__ inline bool mbarrier_try_wait(uint64_t* barrier, uint64_t state, EMU_HOPPER_SITE) {
    return emu::mbarrier_wait(barrier, uint32_t(state >> emu::mbar::kPhaseShift), true, "mbarrier.try_wait",
                              file, line);
}
EMU_SHIM_ACCESS __device__ inline bool mbarrier_try_wait_parity(uint64_t* barrier, uint32_t parity, EMU_HOPPER_SITE) {
    return emu::mbarrier_wait(barrier, parity, true, "mbarrier.try_wait.parity", file, line);
}

// Not an instruction: whether the phase of `parity` has completed, never waiting (for tests; the
// bulk copies that complete on the barrier land first, as at any wait).
EMU_SHIM_ACCESS __device__ inline bool mbarrier_phase_complete(uint64_t* barrier, uint32_t parity, EMU_HOPPER_SITE) {
    return emu::mbarrier_wait(barrier, parity, false, "mbarrier_phase_complete", file, line);
}

}  // namespace emu::hopper
