// The C interface of the emulator's runtime library (emu_runtime.cpp, built once per machine).
//
// Three parties use it:
//   - linear/backends/emulate fills an emu_launch (mirrored in kernel.py with ctypes) and calls the
//     kernel library's emu_entry(launch);
//   - the kernel library (a wrapper around one template instantiation, see cuda_emu.h) unpacks the
//     arguments and hands emu_run a type-erased "run one thread" function;
//   - the built-ins of cuda_emu.h (__syncthreads, __shfl_sync, ...) call the emu_* functions below.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct { unsigned int x, y, z; } emu_uint3;

enum emu_schedule { EMU_FORWARD = 0, EMU_REVERSE = 1, EMU_SHUFFLE = 2 };

// Sanitize modes (bits), as compute-sanitizer's tools; see emu_sanitize.cpp.
enum emu_sanitize_mode { EMU_MEMCHECK = 1, EMU_RACECHECK = 2, EMU_INITCHECK = 4, EMU_SYNCCHECK = 8 };

// An array the sanitizer watches: [start, start + bytes), with guard_before bytes before it and
// guard_after after it where an access is out of bounds of this array.
typedef struct {
    uint64_t start, bytes, guard_before, guard_after;
    const char* name;              // an argument's description, or a static's mangled name
    int32_t shared;                // static __shared__: fresh (uninitialized) at every block
} emu_region;

enum emu_status {
    EMU_OK = 0,
    EMU_ERROR = 1,    // deadlock, strict-mode violation, misuse of a warp collective, assert, __trap
    EMU_FAULT = 2,    // a signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL) in a thread: see fault_address
    EMU_TIMEOUT = 3,  // the launch ran longer than timeout_s (a spin-wait that cannot finish)
};

typedef struct {
    // Filled by the caller.
    emu_uint3 grid, block;
    uint64_t dynamic_shared_bytes;
    uint64_t dynamic_shared_alignment; // the largest __align__ of the kernel's extern __shared__ (>= 16)
    int32_t schedule;              // enum emu_schedule: order in which a block's threads run
    int32_t strict;                // a barrier that completes only because threads exited is an error
    int32_t flush_subnormals;      // float32 as compiled with -ftz=true (as CuPy compiles): subnormal
                                   // inputs and results of float arithmetic are zeros (emu_fp_mode)
    uint64_t seed;                 // for EMU_SHUFFLE
    double timeout_s;              // 0: no watchdog
    void** args;                   // args[i] points at the value of kernel parameter i
    int32_t n_args;
    int32_t n_static_shared;
    void** static_shared;          // static __shared__ variables, poisoned at every block start
    uint64_t* static_shared_bytes;
    int32_t sanitize;              // emu_sanitize_mode bits; 0 runs unchecked (needs a sanitize build)
    int32_t n_regions;
    emu_region* regions;           // argument arrays and static __shared__ variables
    // Filled by the runtime when the status is not EMU_OK.
    emu_uint3 error_block, error_thread;
    int32_t fault_signal;          // EMU_FAULT: the signal number
    int32_t fault_is_write;        // EMU_FAULT: 1 write, 0 read, -1 unknown
    uint64_t fault_address;        // EMU_FAULT
    uint64_t error_pc[2];          // sanitize errors: the code addresses of the access and the other one
    char message[1024];
} emu_launch;

// The CPU's floating-point mode: whether subnormal inputs and results of float arithmetic are flushed
// to zero (x86-64 MXCSR DAZ and FTZ, AArch64 FPCR.FZ; both cover double too). emu_set_flush returns
// the mode before, for emu_restore_flush.
uint64_t emu_set_flush(int flush);
void emu_restore_flush(uint64_t mode);

// Runs every thread of every block of the launch; returns an emu_status.
int emu_run(emu_launch* launch, void (*run_thread)(void* closure), void* closure);

// Built-ins, called from kernel code (through cuda_emu.h).
extern const emu_uint3* emu_thread_idx;  // the running thread's threadIdx
extern emu_uint3 emu_block_idx, emu_block_dim, emu_grid_dim;
extern void* emu_dynamic_shared;         // the launch's dynamic shared memory (extern __shared__)

enum emu_block_op { EMU_SYNC = 0, EMU_SYNC_COUNT = 1, EMU_SYNC_AND = 2, EMU_SYNC_OR = 3 };
// file and line: the call site, which every thread of the block must share (synccheck).
int emu_syncthreads(int op, int predicate, const char* file, int line);

enum emu_warp_op {
    EMU_WARP_SYNC = 0, EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_XOR, EMU_BALLOT,
    EMU_MATCH_ANY, EMU_REDUCE_ADD, EMU_REDUCE_MIN_S, EMU_REDUCE_MAX_S, EMU_REDUCE_MIN_U,
    EMU_REDUCE_MAX_U, EMU_REDUCE_AND, EMU_REDUCE_OR, EMU_REDUCE_XOR,
};
// Waits for the lanes of mask, then returns this lane's result of op on the lanes' values.
uint64_t emu_warp_collective(int op, unsigned mask, uint64_t value, int lane_param, int width);
unsigned emu_active_mask(void);
unsigned emu_lane_id(void);

// Blocks the calling thread until ready(object) returns nonzero: at once if it already does, else the
// scheduler asks again between passes (mbarrier waits, wgmma retirement: emu_mbarrier.h, emu_wgmma.h).
// describe(object, out, n) says what the thread waits for, for the deadlock report when nothing can
// make it ready; object must stay valid while the thread waits (a local of the waiting thread is).
void emu_wait_until(int (*ready)(void* object), void (*describe)(void* object, char* out, size_t n),
                    void* object);

// The shared window: 32-bit .shared addresses as the GPU has them. Static __shared__ variables, in
// address order, then the dynamic shared memory, each at the lowest shared address not below the
// previous one's end that is congruent to its generic address modulo 1024 (so declared alignments up
// to 1024 hold in both). Both fail the launch for an address outside shared memory.
uint32_t emu_generic_to_shared(const void* p);
void* emu_shared_to_generic(uint64_t address);
void* emu_shared_lookup(uint64_t address);  // null where emu_shared_to_generic fails
int emu_is_shared(const void* p);
// The shared window's size in bytes (%total_smem_size) and the dynamic part's (%dynamic_smem_size).
uint32_t emu_shared_window_bytes(void);
uint32_t emu_dynamic_shared_bytes(void);

// Named barriers (bar.sync / bar.arrive a, b): the thread arrives at barrier `id` (0..15) whose
// expected count is `count` threads (0: the whole block); wait = 0 arrives without waiting.
// Barrier 0 with the whole block is __syncthreads (emu_syncthreads).
void emu_named_barrier(int id, int count, int wait, const char* file, int line);

// An atomic read-modify-write of n bytes at p (sanitize builds: atomics never race each other);
// reads_old: it combines the old value (initcheck reports it on shared memory no thread wrote); pc:
// the code address that reports name (the atomic's caller).
void emu_sanitize_atomic(void* p, size_t n, int reads_old, const void* pc);
// For the shim's asynchronous operations (emu_mbarrier.h, emu_tma.h, emu_wgmma.h), in sanitize builds:
// an access of n bytes at p by the async proxy for the running thread (pc: a return address in the
// kernel's code, which reports turn into its source line), fence.proxy.async (the thread's
// generic writes so far become visible to the async proxy: an async read of a byte whose generic write
// was not fenced is a racecheck report), and release/acquire through a sync object (the releasing
// thread's accesses so far happen before the acquiring thread's later ones).
void emu_sanitize_access(const void* p, size_t n, int write, const void* pc);
void emu_sanitize_proxy_fence(void);
void emu_sanitize_release(const void* object);
void emu_sanitize_acquire(const void* object);

// Ends the launch with EMU_ERROR and the message (assert, __trap); never returns.
void emu_fail(const char* message) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif
