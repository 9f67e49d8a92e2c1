// The emulator's runtime: runs the threads of a CUDA launch as fibers on the calling OS thread.
//
// Blocks run one after another. Inside a block every CUDA thread is a fiber (a stackful coroutine
// with its own 64 KiB stack and a guard page below it). The scheduler makes passes over the block:
// in a pass every runnable fiber runs, in the order the schedule gives (forward, reverse or a
// seeded shuffle), until it waits at __syncthreads, waits in a warp collective, waits for a
// condition (emu_wait_until: an mbarrier phase, a wgmma's warpgroup), or exits. Between passes the
// scheduler completes the warp collectives whose lanes have all arrived and wakes the threads whose
// condition holds; when there are none and every live thread waits at __syncthreads it releases the
// barrier; otherwise no thread can ever move again and the block is deadlocked. Since fibers never preempt each other, every
// read-modify-write between two waits is atomic, so atomics are plain code (see cuda_emu.h).
//
// Faults in kernel code (SIGSEGV on a guard page, SIGFPE, ...) and the watchdog's SIGALRM jump
// back to emu_run with siglongjmp, so a bad kernel ends in a Python exception, not a dead process.
// Built once per machine (linear/backends/emulate caches it) and shared by every kernel library.
#include "emu_runtime.h"
#include "emu_sanitize.h"
#define EMU_TENSOR_MAP_DEFINE  // cuTensorMapEncodeTiled lives here, for kernel libraries and Python alike
#include "emu_tensor_map.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#if defined(__x86_64__) && defined(__ELF__) && !defined(EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

const emu_uint3* emu_thread_idx;
emu_uint3 emu_block_idx, emu_block_dim, emu_grid_dim;
void* emu_dynamic_shared;

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kMaxDynamicShared = 256 * 1024;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kNone = ~0u;

// ---- Context switch ------------------------------------------------------------------------
#if EMU_ASM_SWITCH
// emu_switch_context(save, next): push the callee-saved registers, store the stack pointer in
// *save, load next as the stack pointer, pop that context's registers and return into it. The
// System V ABI lets everything else be clobbered across a call; kernels never change the FP
// control registers, so those are not saved. About 20 ns, against ~400 ns for swapcontext, which
// also makes a system call for the signal mask.
asm(R"(
    .text
    .p2align 4
    .globl emu_switch_context
    .hidden emu_switch_context
    .type emu_switch_context, @function
emu_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_context, .-emu_switch_context
)");
extern "C" void emu_switch_context(void** save, void* next);

struct Context { void* sp; };

void context_switch(Context& from, Context& to) { emu_switch_context(&from.sp, to.sp); }

// A fresh context whose first switch "returns" into entry with an ABI-aligned stack.
void context_make(Context& c, char* stack_low, size_t bytes, void (*entry)()) {
    auto top = reinterpret_cast<uintptr_t>(stack_low + bytes) & ~uintptr_t(15);
    auto** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                            // entry's return address: entry never returns
    *--sp = reinterpret_cast<void*>(entry);     // popped by ret
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    c.sp = sp;
}
#else
// Portable fallback: POSIX ucontext (slower: a system call per switch).
struct Context { ucontext_t uc; };

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void context_make(Context& c, char* stack_low, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack_low;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

// ---- Threads of the running block --------------------------------------------------------------
enum class State : unsigned char { runnable, at_barrier, at_named_barrier, at_warp, waiting, exited };

struct Fiber {
    Context context;
    emu_uint3 thread_idx;
    unsigned warp, lane;
    State state;
    // The warp collective this lane waits in and, once the group completes, its result.
    int op, lane_param, width;
    unsigned mask;
    uint64_t value, result;
    const char* barrier_file;  // where it called __syncthreads (synccheck) or a named barrier
    int barrier_line;
    // emu_wait_until: the condition the thread waits for.
    int (*ready)(void*);
    void (*describe)(void*, char*, size_t);
    void* wait_object;
    int named_barrier;         // the named barrier it waits at (State::at_named_barrier)
};

// A named barrier of the running block (bar.sync / bar.arrive with an id): the threads that have
// arrived since it last completed, and the count it completes at (fixed by its first arrival).
struct NamedBarrier {
    unsigned arrived, expected;
    std::vector<unsigned> threads;  // those that arrived (racecheck: emu_san::named_barrier_completed)
    std::vector<bool> waited;
};
constexpr int kNamedBarriers = 16;

// A piece of the shared window: `bytes` bytes at generic address `generic` and at shared address
// `shared` (see emu_runtime.h).
struct SharedWindow {
    const char* generic;
    uint64_t bytes;
    uint32_t shared;
};

const char* const kWarpOpNames[] = {
    "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
    "__ballot_sync", "__match_any_sync", "__reduce_add_sync", "__reduce_min_sync",
    "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
    "__reduce_or_sync", "__reduce_xor_sync"};

struct Runtime {
    emu_launch* launch = nullptr;
    void (*run_thread)(void*) = nullptr;
    void* closure = nullptr;
    Context scheduler;                 // the caller's stack, where the scheduler runs
    Fiber* current = nullptr;          // the running fiber; null while the scheduler runs
    std::vector<Fiber> fibers;
    std::vector<unsigned> order;       // the order of the current pass
    unsigned n_threads = 0, live = 0;  // threads in the block; those not exited
    unsigned at_barrier = 0, barrier_true = 0;  // waiting at __syncthreads; with a true predicate
    unsigned released_arrived = 0, released_true = 0;  // the same, at the last release
    NamedBarrier named[kNamedBarriers] = {};
    unsigned at_named = 0;             // threads waiting at named barriers
    bool named_released = false;       // a named barrier completed during this pass
    std::vector<SharedWindow> windows; // static __shared__ variables in address order, then dynamic
    uint32_t window_bytes = 0;
    uint64_t rng = 0;
    char* stacks = nullptr;            // kMaxThreadsPerBlock slots of [guard page][stack]
    size_t stack_slot = 0;
    char* shared = nullptr;            // kMaxDynamicShared bytes, then a guard page
    size_t page = 0;
    sigjmp_buf jump;                   // back to emu_run from a signal handler or emu_fail
    volatile sig_atomic_t jump_status = EMU_OK;
    pthread_t launch_thread;
    volatile sig_atomic_t in_launch = 0;
};
Runtime rt;

int vfail(const Fiber* thread, const char* format, va_list ap) {
    emu_launch* L = rt.launch;
    L->error_block = emu_block_idx;
    L->error_thread = thread ? thread->thread_idx : emu_uint3{kNone, kNone, kNone};
    vsnprintf(L->message, sizeof L->message, format, ap);
    return EMU_ERROR;
}

__attribute__((format(printf, 2, 3))) int fail(const Fiber* thread, const char* format, ...) {
    va_list ap;
    va_start(ap, format);
    vfail(thread, format, ap);
    va_end(ap);
    return EMU_ERROR;
}

void yield_to_scheduler() { context_switch(rt.current->context, rt.scheduler); }

void fiber_main() {
    rt.run_thread(rt.closure);
    rt.current->state = State::exited;
    --rt.live;
    yield_to_scheduler();
    __builtin_unreachable();
}

void resume(Fiber& f) {
    rt.current = &f;
    emu_san::thread_switch(unsigned(&f - rt.fibers.data()));
    emu_thread_idx = &f.thread_idx;
    context_switch(rt.scheduler, f.context);
    rt.current = nullptr;
}

uint64_t next_random() {  // splitmix64
    uint64_t z = (rt.rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void plan_pass() {
    if (rt.launch->schedule != EMU_SHUFFLE) return;  // forward and reverse orders never change
    for (unsigned i = rt.n_threads; i > 1; --i) std::swap(rt.order[i - 1], rt.order[next_random() % i]);
}

// ---- Warp collectives --------------------------------------------------------------------------
unsigned width_source(unsigned lane, int op, int param, unsigned width) {
    unsigned segment = lane & ~(width - 1);
    switch (op) {
    case EMU_SHFL_IDX: return segment + (unsigned(param) & (width - 1));
    case EMU_SHFL_UP: return (lane - segment) >= unsigned(param) ? lane - param : lane;
    case EMU_SHFL_DOWN: return (lane - segment) + unsigned(param) < width ? lane + param : lane;
    default: {  // EMU_SHFL_XOR: lanes of a later segment are out of reach
        unsigned source = lane ^ unsigned(param);
        return source < segment + width ? source : lane;
    }
    }
}

uint64_t reduce(int op, uint64_t a, uint64_t b) {
    auto sa = int32_t(uint32_t(a)), sb = int32_t(uint32_t(b));
    auto ua = uint32_t(a), ub = uint32_t(b);
    switch (op) {
    case EMU_REDUCE_ADD: return uint32_t(ua + ub);
    case EMU_REDUCE_MIN_S: return uint32_t(sa < sb ? sa : sb);
    case EMU_REDUCE_MAX_S: return uint32_t(sa > sb ? sa : sb);
    case EMU_REDUCE_MIN_U: return ua < ub ? ua : ub;
    case EMU_REDUCE_MAX_U: return ua > ub ? ua : ub;
    case EMU_REDUCE_AND: return ua & ub;
    case EMU_REDUCE_OR: return ua | ub;
    default: return ua ^ ub;
    }
}

// Every lane of the group (a mask of lanes of warp `lanes`) waits in the same collective: compute
// each lane's result. A shuffle from a lane outside the group reads poison (all bits set).
void complete_group(Fiber* lanes, unsigned group) {
    const Fiber& first = lanes[__builtin_ctz(group)];
    uint64_t ballot = 0, reduced = 0;
    bool first_value = true;
    for (unsigned m = group; m; m &= m - 1) {
        const Fiber& f = lanes[__builtin_ctz(m)];
        ballot |= uint64_t(f.value != 0) << f.lane;
        reduced = first_value ? uint32_t(f.value) : reduce(first.op, reduced, f.value);
        first_value = false;
    }
    for (unsigned m = group; m; m &= m - 1) {
        Fiber& f = lanes[__builtin_ctz(m)];
        switch (f.op) {
        case EMU_WARP_SYNC: f.result = 0; break;
        case EMU_BALLOT: f.result = ballot; break;
        case EMU_MATCH_ANY: {
            uint64_t same = 0;
            for (unsigned o = group; o; o &= o - 1) {
                const Fiber& other = lanes[__builtin_ctz(o)];
                same |= uint64_t(other.value == f.value) << other.lane;
            }
            f.result = same;
            break;
        }
        case EMU_SHFL_IDX: case EMU_SHFL_UP: case EMU_SHFL_DOWN: case EMU_SHFL_XOR: {
            unsigned source = width_source(f.lane, f.op, f.lane_param, unsigned(f.width));
            f.result = source < 32 && (group >> source & 1) ? lanes[source].value : ~uint64_t(0);
            break;
        }
        default: f.result = reduced; break;
        }
        f.state = State::runnable;
    }
}

// Completes every warp collective whose lanes have all arrived; *completed tells whether one did.
// Returns EMU_OK, or EMU_ERROR for a collective that CUDA leaves undefined.
int complete_warp_collectives(bool* completed) {
    *completed = false;
    for (unsigned base = 0; base < rt.n_threads; base += 32) {
        Fiber* lanes = &rt.fibers[base];
        unsigned n = rt.n_threads - base < 32 ? rt.n_threads - base : 32;
        unsigned existing = n == 32 ? ~0u : (1u << n) - 1, waiting = 0, exited = 0;
        for (unsigned l = 0; l < n; ++l) {
            waiting |= unsigned(lanes[l].state == State::at_warp) << l;
            exited |= unsigned(lanes[l].state == State::exited) << l;
        }
        for (unsigned pending = waiting; pending;) {
            const Fiber& f = lanes[__builtin_ctz(pending)];
            const char* op = kWarpOpNames[f.op];
            unsigned group = f.mask & existing;
            if (!(group >> f.lane & 1))
                return fail(&f, "%s with mask 0x%08x, which leaves out the calling lane %u", op,
                            f.mask, f.lane);
            if (f.width < 1 || f.width > 32 || (f.width & (f.width - 1)))
                return fail(&f, "%s with width %d (must be a power of 2 up to 32)", op, f.width);
            if (group & exited) {
                if (rt.launch->strict)
                    return fail(&f, "%s with mask 0x%08x names lanes that have exited (0x%08x); "
                                "strict mode", op, f.mask, group & exited);
                group &= ~exited;
            }
            pending &= ~group;
            if ((group & waiting) != group) continue;  // some lanes have not arrived yet
            for (unsigned m = group; m; m &= m - 1) {
                const Fiber& g = lanes[__builtin_ctz(m)];
                if (g.op != f.op || g.mask != f.mask)
                    return fail(&g, "divergent warp collective: lane %u calls %s with mask 0x%08x "
                                "while lane %u calls %s with mask 0x%08x", g.lane,
                                kWarpOpNames[g.op], g.mask, f.lane, op, f.mask);
            }
            complete_group(lanes, group);
            if (f.op == EMU_WARP_SYNC) emu_san::warp_synced(base / 32, group);
            waiting &= ~group;
            *completed = true;
        }
    }
    return EMU_OK;
}

// ---- Blocks ------------------------------------------------------------------------------------
void poison_shared() {
    const emu_launch* L = rt.launch;
    for (int i = 0; i < L->n_static_shared; ++i)
        memset(L->static_shared[i], 0xFF, L->static_shared_bytes[i]);
    memset(emu_dynamic_shared, 0xFF, L->dynamic_shared_bytes);
}

// Makes runnable every thread of emu_wait_until whose condition now holds; returns whether one did.
bool release_waits() {
    bool released = false;
    for (unsigned i = 0; i < rt.n_threads; ++i) {
        Fiber& f = rt.fibers[i];
        if (f.state == State::waiting && f.ready(f.wait_object)) {
            f.state = State::runnable;
            released = true;
        }
    }
    return released;
}

// The threads of emu_wait_until, in runs of consecutive threads that wait for the same thing.
int deadlock_in_waits(unsigned n_waiting) {
    char text[sizeof rt.launch->message] = "", what[320], previous[320] = "";
    size_t used = 0;
    unsigned first = kNone, last = kNone;
    auto flush = [&]() {
        if (first == kNone || used >= sizeof text) return;
        const emu_uint3 a = rt.fibers[first].thread_idx, b = rt.fibers[last].thread_idx;
        used += size_t(snprintf(text + used, sizeof text - used, "%sthreads (%u, %u, %u)..(%u, %u, %u) wait for %s",
                                used ? "; " : "", a.x, a.y, a.z, b.x, b.y, b.z, previous));
    };
    for (unsigned i = 0; i < rt.n_threads; ++i) {
        Fiber& f = rt.fibers[i];
        if (f.state != State::waiting) continue;
        f.describe(f.wait_object, what, sizeof what);
        if (first != kNone && last + 1 == i && !strcmp(what, previous)) {
            last = i;
            continue;
        }
        flush();
        first = last = i;
        memcpy(previous, what, sizeof what);
    }
    flush();
    const Fiber* example = nullptr;
    for (unsigned i = 0; i < rt.n_threads && !example; ++i)
        if (rt.fibers[i].state == State::waiting) example = &rt.fibers[i];
    return fail(example, "deadlock: %u threads wait on conditions no thread can bring about (%s); %u wait at "
                "__syncthreads, %u have exited", n_waiting, text, rt.at_barrier, rt.n_threads - rt.live);
}

int deadlock() {
    unsigned at_warp = 0, waiting = 0;
    const Fiber* example = nullptr;  // the first thread waiting in a warp collective
    const Fiber* named = nullptr;    // the first thread waiting at a named barrier
    for (unsigned i = 0; i < rt.n_threads; ++i) {
        if (rt.fibers[i].state == State::at_warp && at_warp++ == 0) example = &rt.fibers[i];
        if (rt.fibers[i].state == State::at_named_barrier && !named) named = &rt.fibers[i];
        waiting += rt.fibers[i].state == State::waiting;
    }
    if (waiting && !example && !named) return deadlock_in_waits(waiting);
    if (named) {
        const NamedBarrier& b = rt.named[named->named_barrier];
        char others[64] = "";  // threads in emu_wait_until (mbarriers, wgmma), when there are any
        if (waiting) snprintf(others, sizeof others, ", %u wait for mbarriers or wgmma", waiting);
        return fail(named, "deadlock: %u threads wait at named barriers (e.g. barrier %d of %s:%d, which has %u of "
                    "the %u threads it expects), %u at __syncthreads, %u in warp collectives%s, %u have exited",
                    rt.at_named, named->named_barrier, named->barrier_file, named->barrier_line, b.arrived,
                    b.expected, rt.at_barrier, at_warp, others, rt.n_threads - rt.live);
    }
    if (example)
        return fail(example, "deadlock: %u threads wait at __syncthreads, %u in warp collectives "
                    "(e.g. %s with mask 0x%08x), %u have exited", rt.at_barrier, at_warp,
                    kWarpOpNames[example->op], example->mask, rt.n_threads - rt.live);
    return fail(nullptr, "deadlock: %u threads wait at __syncthreads, %u have exited",
                rt.at_barrier, rt.n_threads - rt.live);
}

// synccheck: every thread of the block must wait at the same __syncthreads call.
int check_barrier_sites() {
    if (!(rt.launch->sanitize & EMU_SYNCCHECK)) return EMU_OK;
    const Fiber* first = nullptr;
    for (unsigned i = 0; i < rt.n_threads; ++i) {
        const Fiber& f = rt.fibers[i];
        if (f.state != State::at_barrier) continue;
        if (!first) first = &f;
        if (f.barrier_line == first->barrier_line && !strcmp(f.barrier_file, first->barrier_file)) continue;
        return fail(&f, "synccheck: thread (%u, %u, %u) waits at the __syncthreads of %s:%d, thread "
                    "(%u, %u, %u) at the one of %s:%d; CUDA leaves a barrier reached from two call sites "
                    "undefined", f.thread_idx.x, f.thread_idx.y, f.thread_idx.z, f.barrier_file,
                    f.barrier_line, first->thread_idx.x, first->thread_idx.y, first->thread_idx.z,
                    first->barrier_file, first->barrier_line);
    }
    return EMU_OK;
}

int run_block() {
    const emu_uint3 b = emu_block_dim;
    poison_shared();
    unsigned i = 0;
    for (unsigned z = 0; z < b.z; ++z)
        for (unsigned y = 0; y < b.y; ++y)
            for (unsigned x = 0; x < b.x; ++x, ++i) {
                Fiber& f = rt.fibers[i];
                f.thread_idx = {x, y, z};
                f.warp = i / 32;
                f.lane = i % 32;
                f.state = State::runnable;
                char* slot = rt.stacks + i * rt.stack_slot;
                context_make(f.context, slot + rt.page, kStackBytes, fiber_main);
            }
    rt.live = rt.n_threads;
    rt.at_barrier = rt.barrier_true = 0;
    rt.at_named = 0;
    for (NamedBarrier& b : rt.named) b.arrived = 0, b.threads.clear(), b.waited.clear();
    // A pass runs every runnable thread until it waits or exits. After it, complete what can be
    // completed: warp collectives first, then the block barrier once every live thread is at it.
    for (;;) {
        plan_pass();
        rt.named_released = false;
        for (unsigned t : rt.order)
            if (rt.fibers[t].state == State::runnable) resume(rt.fibers[t]);
        if (rt.live == 0) return EMU_OK;
        bool completed;
        if (int status = complete_warp_collectives(&completed)) return status;
        if (release_waits() || completed || rt.named_released) continue;  // threads a named barrier released run next pass
        if (rt.at_barrier != rt.live) return deadlock();
        if (rt.live < rt.n_threads && rt.launch->strict)
            return fail(nullptr, "__syncthreads completed only because %u of %u threads exited "
                        "(strict mode; every thread of the block must reach each barrier)",
                        rt.n_threads - rt.live, rt.n_threads);
        if (int status = check_barrier_sites()) return status;
        emu_san::barrier_released();
        rt.released_arrived = rt.at_barrier;
        rt.released_true = rt.barrier_true;
        rt.at_barrier = rt.barrier_true = 0;
        for (unsigned t = 0; t < rt.n_threads; ++t)
            if (rt.fibers[t].state == State::at_barrier) rt.fibers[t].state = State::runnable;
    }
}

// ---- Memory ------------------------------------------------------------------------------------
char* map_anonymous(size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
}

bool allocate_once() {
    if (rt.stacks) return true;
    rt.page = size_t(sysconf(_SC_PAGESIZE));
    rt.stack_slot = rt.page + kStackBytes;
    rt.stacks = map_anonymous(kMaxThreadsPerBlock * rt.stack_slot);
    rt.shared = map_anonymous(kMaxDynamicShared + rt.page);
    if (!rt.stacks || !rt.shared) return false;
    for (unsigned i = 0; i < kMaxThreadsPerBlock; ++i)
        mprotect(rt.stacks + i * rt.stack_slot, rt.page, PROT_NONE);
    mprotect(rt.shared + kMaxDynamicShared, rt.page, PROT_NONE);
    rt.fibers.resize(kMaxThreadsPerBlock);
    return true;
}

// ---- Signals -----------------------------------------------------------------------------------
const int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGALRM};
struct sigaction previous_action[sizeof kSignals / sizeof kSignals[0]];
stack_t previous_altstack;
itimerval previous_timer;
alignas(16) char altstack[64 * 1024];

void restore_previous_action(int sig) {
    for (size_t i = 0; i < sizeof kSignals / sizeof kSignals[0]; ++i)
        if (kSignals[i] == sig) sigaction(sig, &previous_action[i], nullptr);
}

void on_signal(int sig, siginfo_t* info, void* context) {
    const bool ours = rt.in_launch && pthread_equal(pthread_self(), rt.launch_thread);
    if (!ours) {
        if (sig == SIGALRM) {  // the watchdog: forward it to the launch, or drop it after the launch
            if (rt.in_launch) pthread_kill(rt.launch_thread, SIGALRM);
        } else {  // not a fault of the launch: the previous handler sees it when the access repeats
            restore_previous_action(sig);
        }
        return;
    }
    emu_launch* L = rt.launch;
    L->error_block = emu_block_idx;
    L->error_thread = rt.current ? rt.current->thread_idx : emu_uint3{kNone, kNone, kNone};
    if (sig == SIGALRM) {
        rt.jump_status = EMU_TIMEOUT;
    } else {
        L->fault_signal = sig;
        L->fault_address = reinterpret_cast<uintptr_t>(info->si_addr);
        L->fault_is_write = -1;
#if defined(__x86_64__) && defined(__linux__)
        if (sig == SIGSEGV)  // bit 1 of the page-fault error code: the access was a write
            L->fault_is_write = int(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] >> 1 & 1);
#else
        (void)context;
#endif
        rt.jump_status = EMU_FAULT;
    }
    siglongjmp(rt.jump, 1);
}

itimerval seconds_timer(double seconds) {
    itimerval timer{};
    timer.it_value.tv_sec = time_t(seconds);
    timer.it_value.tv_usec = suseconds_t((seconds - double(time_t(seconds))) * 1e6);
    return timer;
}

double seconds_left(const itimerval& timer) {
    return double(timer.it_value.tv_sec) + 1e-6 * double(timer.it_value.tv_usec);
}

void install_handlers(double timeout_s) {
    stack_t alt{};
    alt.ss_sp = altstack;
    alt.ss_size = sizeof altstack;
    sigaltstack(&alt, &previous_altstack);
    struct sigaction action {};
    action.sa_sigaction = on_signal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof kSignals / sizeof kSignals[0]; ++i)
        sigaction(kSignals[i], &action, &previous_action[i]);
    if (timeout_s > 0) {
        itimerval timer = seconds_timer(timeout_s);
        setitimer(ITIMER_REAL, &timer, &previous_timer);
    }
}

void restore_handlers(double timeout_s) {
    if (timeout_s > 0) {  // give back the caller's timer, less the time the launch took
        itimerval stop{}, ours{};
        setitimer(ITIMER_REAL, &stop, &ours);
        if (previous_timer.it_value.tv_sec || previous_timer.it_value.tv_usec) {
            double left = seconds_left(previous_timer) - (timeout_s - seconds_left(ours));
            itimerval rest = seconds_timer(left > 1e-6 ? left : 1e-6);
            rest.it_interval = previous_timer.it_interval;
            setitimer(ITIMER_REAL, &rest, nullptr);
        }
    }
    for (size_t i = 0; i < sizeof kSignals / sizeof kSignals[0]; ++i)
        sigaction(kSignals[i], &previous_action[i], nullptr);
    sigaltstack(&previous_altstack, nullptr);
}

// Names the faults the runtime can explain; the caller explains the rest (its argument copies).
void describe_fault(emu_launch* L) {
    const char* address = reinterpret_cast<const char*>(L->fault_address);
    const char* dynamic_end = rt.shared + kMaxDynamicShared;
    if (L->fault_signal == SIGFPE)
        snprintf(L->message, sizeof L->message, "arithmetic exception (SIGFPE: an integer division by zero?)");
    else if (L->fault_signal == SIGILL)
        snprintf(L->message, sizeof L->message, "illegal instruction (SIGILL)");
    else if (address >= dynamic_end && address < dynamic_end + rt.page)
        snprintf(L->message, sizeof L->message, "out-of-bounds shared memory %s at byte %zu of the "
                 "dynamic shared memory (%llu bytes)",
                 L->fault_is_write == 1 ? "write" : L->fault_is_write == 0 ? "read" : "access",
                 size_t(address - static_cast<const char*>(emu_dynamic_shared)),
                 static_cast<unsigned long long>(L->dynamic_shared_bytes));
    else if (address >= rt.stacks && address < rt.stacks + kMaxThreadsPerBlock * rt.stack_slot &&
             size_t(address - rt.stacks) % rt.stack_slot < rt.page)
        snprintf(L->message, sizeof L->message, "stack overflow: the thread needs more than the "
                 "emulator's %zu KiB stack (large local arrays or recursion)", kStackBytes / 1024);
}

void map_shared_window(const emu_launch* L) {
    rt.windows.clear();
    for (int i = 0; i < L->n_static_shared; ++i)
        rt.windows.push_back({static_cast<const char*>(L->static_shared[i]), L->static_shared_bytes[i], 0});
    std::sort(rt.windows.begin(), rt.windows.end(),
              [](const SharedWindow& a, const SharedWindow& b) { return a.generic < b.generic; });
    rt.windows.push_back({static_cast<const char*>(emu_dynamic_shared), L->dynamic_shared_bytes, 0});
    uint64_t next = 0;
    for (SharedWindow& w : rt.windows) {
        next += (reinterpret_cast<uintptr_t>(w.generic) - next) & 1023;  // congruent modulo 1024
        w.shared = uint32_t(next);
        next += w.bytes;
    }
    rt.window_bytes = uint32_t(next);
}

int check_launch(emu_launch* L) {
    const emu_uint3 b = L->block, g = L->grid;
    uint64_t threads = uint64_t(b.x) * b.y * b.z;
    if (threads == 0 || threads > kMaxThreadsPerBlock || b.z > 64 || g.x == 0 || g.y == 0 || g.z == 0 ||
        g.y > 65535 || g.z > 65535)
        return fail(nullptr, "invalid launch: grid (%u, %u, %u), block (%u, %u, %u)", g.x, g.y, g.z,
                    b.x, b.y, b.z);
    if (L->dynamic_shared_bytes > kMaxDynamicShared)
        return fail(nullptr, "dynamic shared memory of %llu bytes exceeds the emulator's %zu",
                    static_cast<unsigned long long>(L->dynamic_shared_bytes), kMaxDynamicShared);
    if (!allocate_once()) return fail(nullptr, "cannot map memory for fiber stacks");
    return EMU_OK;
}

}  // namespace

extern "C" int emu_run(emu_launch* L, void (*run_thread)(void*), void* closure) {
    rt.launch = L;
    L->message[0] = '\0';
    L->fault_signal = 0;
    L->error_pc[0] = L->error_pc[1] = 0;
    if (int status = check_launch(L)) return status;
    rt.run_thread = run_thread;
    rt.closure = closure;
    rt.rng = L->seed;
    emu_block_dim = L->block;
    emu_grid_dim = L->grid;
    rt.n_threads = L->block.x * L->block.y * L->block.z;
    rt.order.resize(rt.n_threads);
    std::iota(rt.order.begin(), rt.order.end(), 0u);
    if (L->schedule == EMU_REVERSE) std::reverse(rt.order.begin(), rt.order.end());
    // The dynamic buffer ends at the guard page (when its size is a multiple of its alignment), so
    // reading past its end faults.
    const uint64_t alignment = L->dynamic_shared_alignment > 16 ? L->dynamic_shared_alignment : 16;
    if (alignment & (alignment - 1) || alignment > 4096)
        return fail(nullptr, "extern __shared__ alignment %llu is not a power of 2 up to 4096",
                    static_cast<unsigned long long>(alignment));
    emu_dynamic_shared = reinterpret_cast<char*>(
        reinterpret_cast<uintptr_t>(rt.shared + kMaxDynamicShared - L->dynamic_shared_bytes) & ~(alignment - 1));
    map_shared_window(L);
    emu_san::launch_begin(L, static_cast<char*>(emu_dynamic_shared), rt.shared,
                          rt.shared + kMaxDynamicShared + rt.page);
    // Nothing orders the blocks of a launch: they run in the schedule's order too.
    const uint64_t n_blocks = uint64_t(L->grid.x) * L->grid.y * L->grid.z;
    std::vector<uint64_t> block_order;
    if (L->schedule == EMU_SHUFFLE) {
        block_order.resize(n_blocks);
        std::iota(block_order.begin(), block_order.end(), uint64_t(0));
        for (uint64_t i = n_blocks; i > 1; --i) std::swap(block_order[i - 1], block_order[next_random() % i]);
    }

    const uint64_t fp_mode = emu_set_flush(L->flush_subnormals);
    rt.launch_thread = pthread_self();
    rt.jump_status = EMU_OK;
    install_handlers(L->timeout_s);
    rt.in_launch = 1;
    int status = EMU_OK;
    if (sigsetjmp(rt.jump, 1) == 0) {
        for (uint64_t i = 0; i < n_blocks && status == EMU_OK; ++i) {
            const uint64_t b = block_order.empty() ? (L->schedule == EMU_REVERSE ? n_blocks - 1 - i : i)
                                                   : block_order[i];
            emu_block_idx = {unsigned(b % L->grid.x), unsigned(b / L->grid.x % L->grid.y),
                             unsigned(b / (uint64_t(L->grid.x) * L->grid.y))};
            emu_san::block_begin(unsigned(b));
            status = run_block();
        }
    } else {
        status = rt.jump_status;
        if (status == EMU_FAULT) describe_fault(L);
    }
    rt.in_launch = 0;
    emu_restore_flush(fp_mode);
    restore_handlers(L->timeout_s);
    emu_san::launch_end();
    rt.current = nullptr;
    rt.launch = nullptr;
    return status;
}

extern "C" int emu_syncthreads(int op, int predicate, const char* file, int line) {
    Fiber* f = rt.current;
    f->state = State::at_barrier;
    ++rt.at_barrier;
    rt.barrier_true += predicate != 0;
    f->barrier_file = file;
    f->barrier_line = line;
    yield_to_scheduler();
    switch (op) {
    case EMU_SYNC_COUNT: return int(rt.released_true);
    case EMU_SYNC_AND: return rt.released_true == rt.released_arrived;
    case EMU_SYNC_OR: return rt.released_true != 0;
    default: return 0;
    }
}

extern "C" uint64_t emu_warp_collective(int op, unsigned mask, uint64_t value, int lane_param, int width) {
    Fiber* f = rt.current;
    f->op = op;
    f->mask = mask;
    f->value = value;
    f->lane_param = lane_param;
    f->width = width;
    f->state = State::at_warp;
    yield_to_scheduler();
    return f->result;
}

extern "C" void emu_wait_until(int (*ready)(void*), void (*describe)(void*, char*, size_t), void* object) {
    if (ready(object)) return;
    Fiber* f = rt.current;
    f->ready = ready;
    f->describe = describe;
    f->wait_object = object;
    f->state = State::waiting;
    yield_to_scheduler();
}

extern "C" unsigned emu_active_mask() {
    const Fiber* lanes = &rt.fibers[rt.current->warp * 32];
    unsigned n = rt.n_threads - rt.current->warp * 32, mask = 0;
    for (unsigned l = 0; l < n && l < 32; ++l) mask |= unsigned(lanes[l].state != State::exited) << l;
    return mask;
}

extern "C" unsigned emu_lane_id() { return rt.current->lane; }

extern "C" void emu_fail(const char* message) {
    fail(rt.current, "%s", message);
    rt.jump_status = EMU_ERROR;
    siglongjmp(rt.jump, 1);
}

extern "C" uint32_t emu_generic_to_shared(const void* p) {
    const char* c = static_cast<const char*>(p);
    // An address inside a piece first: one-past-the-end of a piece (allowed, as pointer arithmetic
    // makes it) may be the start of the next piece, which is other memory.
    for (int end_ok = 0; end_ok < 2; ++end_ok)
        for (const SharedWindow& w : rt.windows)
            if (c >= w.generic && (c < w.generic + w.bytes || (end_ok && c == w.generic + w.bytes)))
                return w.shared + uint32_t(c - w.generic);
    char message[160];
    snprintf(message, sizeof message, "__cvta_generic_to_shared (cvta.to.shared): %p is not an address in "
             "shared memory", p);
    emu_fail(message);
}

extern "C" void* emu_shared_lookup(uint64_t address) {
    for (int end_ok = 0; end_ok < 2; ++end_ok)  // inside a piece first (see emu_generic_to_shared)
        for (const SharedWindow& w : rt.windows)
            if (address >= w.shared && (address < w.shared + w.bytes || (end_ok && address == w.shared + w.bytes)))
                return const_cast<char*>(w.generic) + (address - w.shared);
    return nullptr;
}

extern "C" void* emu_shared_to_generic(uint64_t address) {
    if (void* p = emu_shared_lookup(address)) return p;
    char message[200];
    snprintf(message, sizeof message, "shared address 0x%llx is outside the block's shared memory (static "
             "__shared__ variables and %llu bytes of dynamic shared memory: %u bytes of shared window)",
             static_cast<unsigned long long>(address), static_cast<unsigned long long>(rt.launch->dynamic_shared_bytes),
             rt.window_bytes);
    emu_fail(message);
}

extern "C" int emu_is_shared(const void* p) {
    const char* c = static_cast<const char*>(p);
    for (const SharedWindow& w : rt.windows)
        if (c >= w.generic && c < w.generic + w.bytes) return 1;
    return 0;
}

extern "C" uint32_t emu_shared_window_bytes() { return rt.window_bytes; }
extern "C" uint32_t emu_dynamic_shared_bytes() { return uint32_t(rt.launch->dynamic_shared_bytes); }

extern "C" void emu_named_barrier(int id, int count, int wait, const char* file, int line) {
    Fiber* f = rt.current;
    if (id < 0 || id >= kNamedBarriers)
        emu_fail("bar.sync / bar.arrive: the barrier id must be 0..15");
    if (count < 0 || count % 32 || unsigned(count) > rt.n_threads) {
        char message[160];
        snprintf(message, sizeof message, "barrier %d: a thread count of %d (it must be a multiple of 32, at most "
                 "the block's %u threads)", id, count, rt.n_threads);
        emu_fail(message);
    }
    const unsigned expected = count ? unsigned(count) : rt.n_threads;
    if (id == 0 && expected == rt.n_threads && wait) {  // the block's barrier: __syncthreads
        emu_syncthreads(EMU_SYNC, 0, file, line);
        return;
    }
    NamedBarrier& b = rt.named[id];
    if (b.arrived == 0) b.expected = expected;
    if (b.expected != expected) {
        char message[200];
        snprintf(message, sizeof message, "barrier %d: a thread arrives expecting %u threads (%s:%d) while the "
                 "barrier's first arrival expects %u", id, expected, file, line, b.expected);
        emu_fail(message);
    }
    b.threads.push_back(unsigned(f - rt.fibers.data()));
    b.waited.push_back(wait != 0);
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        rt.named_released = true;
        if (expected == rt.n_threads) {
            emu_san::barrier_released();
        } else {
            std::unique_ptr<bool[]> waited(new bool[b.waited.size()]);
            std::copy(b.waited.begin(), b.waited.end(), waited.get());
            emu_san::named_barrier_completed(b.threads.data(), waited.get(), unsigned(b.threads.size()));
        }
        b.threads.clear();
        b.waited.clear();
        for (unsigned t = 0; t < rt.n_threads; ++t) {
            Fiber& other = rt.fibers[t];
            if (other.state == State::at_named_barrier && other.named_barrier == id) {
                other.state = State::runnable;
                --rt.at_named;
            }
        }
        return;
    }
    if (!wait) return;
    f->state = State::at_named_barrier;
    f->named_barrier = id;
    f->barrier_file = file;
    f->barrier_line = line;
    ++rt.at_named;
    yield_to_scheduler();
}

extern "C" uint64_t emu_set_flush(int flush) {
#if defined(__x86_64__)
    const unsigned mode = _mm_getcsr();
    _mm_setcsr(flush ? mode | 0x8040u : mode & ~0x8040u);  // FTZ (bit 15), DAZ (bit 6)
    return mode;
#elif defined(__aarch64__)
    uint64_t mode;
    asm volatile("mrs %0, fpcr" : "=r"(mode));
    const uint64_t next = flush ? mode | (1ull << 24) : mode & ~(1ull << 24);  // FZ
    asm volatile("msr fpcr, %0" ::"r"(next));
    return mode;
#else
    if (flush) emu_fail("flushing float32 subnormals to zero is not modelled on this CPU");
    return 0;
#endif
}

extern "C" void emu_restore_flush(uint64_t mode) {
#if defined(__x86_64__)
    _mm_setcsr(unsigned(mode));
#elif defined(__aarch64__)
    asm volatile("msr fpcr, %0" ::"r"(mode));
#else
    (void)mode;
#endif
}
