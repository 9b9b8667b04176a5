// The CUDA simulator's runtime: runs a grid of blocks on host threads, the threads of a block as
// cooperative fibers that switch at barriers (see cuda_sim.h for the model).
//
// Scheduling is what makes the simulator useful as a test: within a block, every "round" runs
// each runnable fiber until it blocks (barrier) or finishes, in an order shuffled by a hash of
// (block index, round). A kernel missing a __syncthreads between a shared-memory write and
// another thread's read therefore reads a stale value for some threads and fails its test,
// whatever the access pattern (forward, backward or strided neighbours).
//
// The order depends only on the block index, never on which host thread runs the block, so a
// launch gives the same result on any number of host threads.

#include "cuda_sim.h"
#include "sim_profile.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gala_sim {

__thread ThreadState* current_thread;
__thread uint3 current_block_idx;
__thread dim3 current_block_dim;
__thread dim3 current_grid_dim;

typedef void (*KernelShim)(void** args);

// 64 KiB per fiber: kernels keep small local arrays; a guard page below each stack turns an
// overflow into a crash at the faulting fiber instead of silent corruption of its neighbour.
static const size_t kStackBytes = 64 * 1024;
static const unsigned kMaxThreadsPerBlock = 1024;
// Fragment registers a lane publishes per mma_m16n8k8_tf32_x4: A (4), then B of tiles 0..3 (2 each).
static const unsigned kMmaSlots = 12;

enum class FiberState : unsigned char { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
    ThreadState thread;
    void* sp;  // saved stack pointer while suspended
    FiberState state;
    char* stack_top;
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
};

// Everything one host thread needs to run blocks; pooled so stacks are mapped once per process.
struct Worker {
    std::vector<Fiber> fibers;
    std::vector<unsigned long long> warp_slots;
    // Twelve fragment registers per thread for the tensor-core emulation (mma_m16n8k8_tf32_x4).
    std::vector<unsigned> mma_slots;
    std::vector<unsigned> order;
    char* stacks = nullptr;
    void* scheduler_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t scheduler_ctx;
#endif
    KernelShim shim = nullptr;
    void** args = nullptr;

    Worker()
        : fibers(kMaxThreadsPerBlock), warp_slots(kMaxThreadsPerBlock), mma_slots(kMmaSlots * kMaxThreadsPerBlock),
          order(kMaxThreadsPerBlock) {}
    bool map_stacks() {
        size_t per = kStackBytes + (size_t)getpagesize();
        size_t total = per * kMaxThreadsPerBlock;
        void* mem = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem == MAP_FAILED) return false;
        stacks = static_cast<char*>(mem);
        for (unsigned i = 0; i < kMaxThreadsPerBlock; ++i) {
            char* base = stacks + i * per;
            mprotect(base, (size_t)getpagesize(), PROT_NONE);
            fibers[i].stack_top = base + per;  // page-aligned, hence 16-byte aligned
        }
        return true;
    }
};

static __thread Worker* current_worker;

static std::mutex g_pool_mutex;
static std::vector<Worker*> g_pool;

static Worker* acquire_worker() {
    {
        std::lock_guard<std::mutex> lock(g_pool_mutex);
        if (!g_pool.empty()) {
            Worker* w = g_pool.back();
            g_pool.pop_back();
            return w;
        }
    }
    Worker* w = new Worker();
    if (!w->map_stacks()) {
        delete w;
        return nullptr;
    }
    return w;
}
static void release_worker(Worker* w) {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_pool.push_back(w);
}

// ---------------------------------------------------------------------------------------------
// Context switching. x86-64: a minimal switch saving the callee-saved registers and the FP
// control words (an order of magnitude cheaper than swapcontext, which makes a signal-mask
// system call per switch). Elsewhere: ucontext.
// ---------------------------------------------------------------------------------------------
extern "C" void gala_sim_fiber_main();

#if defined(__x86_64__)
extern "C" void gala_sim_switch(void** save_sp, void* load_sp);
extern "C" void gala_sim_fiber_entry();
asm(R"(
    .text
    .globl gala_sim_switch
    .type gala_sim_switch,@function
gala_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gala_sim_switch,.-gala_sim_switch

    .globl gala_sim_fiber_entry
    .type gala_sim_fiber_entry,@function
gala_sim_fiber_entry:
    call gala_sim_fiber_main
    ud2
    .size gala_sim_fiber_entry,.-gala_sim_fiber_entry
)");

// Lays out a fresh stack so that gala_sim_switch "returns" into gala_sim_fiber_entry with a
// 16-byte aligned stack (the call inside it then gives gala_sim_fiber_main the ABI alignment).
static void init_fiber(Worker&, Fiber& f) {
    unsigned long long* top = reinterpret_cast<unsigned long long*>(f.stack_top);
    unsigned long long* sp = top - 10;
    unsigned int control[2] = {0x1F80u, 0x037Fu};  // default MXCSR, x87 control word
    memcpy(&sp[0], control, 8);
    for (int i = 1; i <= 6; ++i) sp[i] = 0;  // r15 r14 r13 r12 rbx rbp
    sp[7] = reinterpret_cast<unsigned long long>(&gala_sim_fiber_entry);
    f.sp = sp;
}
static inline void switch_to_fiber(Worker& w, Fiber& f) { gala_sim_switch(&w.scheduler_sp, f.sp); }
static inline void switch_to_scheduler(Worker& w, Fiber& f) { gala_sim_switch(&f.sp, w.scheduler_sp); }
#else
static void init_fiber(Worker&, Fiber& f) {
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack_top - kStackBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, gala_sim_fiber_main, 0);
}
static inline void switch_to_fiber(Worker& w, Fiber& f) { swapcontext(&w.scheduler_ctx, &f.ctx); }
static inline void switch_to_scheduler(Worker& w, Fiber& f) { swapcontext(&f.ctx, &w.scheduler_ctx); }
#endif

static inline Fiber& current_fiber() {
    // ThreadState is the first member of Fiber.
    return *reinterpret_cast<Fiber*>(current_thread);
}

extern "C" void gala_sim_fiber_main() {
    Worker& w = *current_worker;
    w.shim(w.args);
    Fiber& f = current_fiber();
    f.state = FiberState::Done;
    switch_to_scheduler(w, f);
    abort();  // a finished fiber is never resumed
}

void block_barrier() {
    Fiber& f = current_fiber();
    f.state = FiberState::AtBlockBarrier;
    switch_to_scheduler(*current_worker, f);
}

void warp_barrier() {
    Fiber& f = current_fiber();
    f.state = FiberState::AtWarpBarrier;
    switch_to_scheduler(*current_worker, f);
}

// Here, not in cuda_sim.h, so that the profiled kernel build does not see the fragment traffic
// (it would count as shared-memory accesses: the slots are no kernel's memory).
void mma_m16n8k8_tf32_x4(float d[4][4], const unsigned int a[4], const unsigned int b[4][2]) {
    ThreadState* t = current_thread;
    unsigned* slots = &current_worker->mma_slots[kMmaSlots * (t->warp * 32)];
    unsigned* mine = slots + kMmaSlots * t->lane;
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    for (int tile = 0; tile < 4; ++tile) {
        mine[4 + 2 * tile] = b[tile][0];
        mine[5 + 2 * tile] = b[tile][1];
    }
    warp_barrier();
    const unsigned grp = t->lane / 4, tig = t->lane % 4;
    float out[4][4];
    for (unsigned tile = 0; tile < 4; ++tile)
        for (unsigned r = 0; r < 4; ++r) {
            // Accumulator r: row grp (+8 for r >= 2), column 2*tig + r % 2.
            const unsigned row = grp + 8 * (r / 2), col = 2 * tig + r % 2;
            float acc = d[tile][r];
            for (unsigned k = 0; k < 8; ++k) {
                // A(row, k): lane 4*(row % 8) + k % 4, register (row >= 8) + 2*(k >= 4);
                // B(k, col): lane 4*col + k % 4, register (k >= 4) of the tile's pair.
                const unsigned a_bits = slots[kMmaSlots * (4 * (row % 8) + k % 4) + (row / 8) + 2 * (k / 4)];
                const unsigned b_bits = slots[kMmaSlots * (4 * col + k % 4) + 4 + 2 * tile + k / 4];
                acc += from_bits<float>(a_bits & 0xffffe000u) * from_bits<float>(b_bits & 0xffffe000u);
            }
            out[tile][r] = t->lanes_in_warp == 32 ? acc : NAN;
        }
    // Nobody republishes before every lane has read.
    warp_barrier();
    for (int tile = 0; tile < 4; ++tile)
        for (int r = 0; r < 4; ++r) d[tile][r] = out[tile][r];
}

static inline unsigned long long mix64(unsigned long long x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

// Runs one block to completion on this host thread; returns an error message or "".
static std::string run_block(Worker& w, uint3 block_idx, dim3 block_dim, dim3 grid_dim) {
    const unsigned n = block_dim.x * block_dim.y * block_dim.z;
    current_block_idx = block_idx;
    current_block_dim = block_dim;
    current_grid_dim = grid_dim;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = w.fibers[t];
        f.thread.thread_idx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
        f.thread.lane = t % 32;
        unsigned warp_start = t - t % 32;
        f.thread.lanes_in_warp = n - warp_start < 32 ? n - warp_start : 32;
        f.thread.warp_slots = &w.warp_slots[warp_start];
        f.thread.warp = t / 32;
        f.state = FiberState::Runnable;
        init_fiber(w, f);
    }
    const unsigned long long block_linear =
        ((unsigned long long)block_idx.z * grid_dim.y + block_idx.y) * grid_dim.x + block_idx.x;
    // The profiler matches a warp's accesses between two of its barriers (sim_profile.h).
    const bool profiling = profile::active();
    if (profiling) profile::begin_block(n);
    auto flush_all_warps = [&]() {
        if (profiling)
            for (unsigned warp_start = 0; warp_start < n; warp_start += 32) profile::flush_warp(warp_start / 32);
    };
    unsigned long long round = 0;
    for (;;) {
        unsigned runnable = 0;
        for (unsigned t = 0; t < n; ++t)
            if (w.fibers[t].state == FiberState::Runnable) w.order[runnable++] = t;
        // Fisher-Yates with a counter-based hash: deterministic per (block, round).
        unsigned long long seed = mix64(block_linear * 0x9E3779B97F4A7C15ull + round + 1);
        for (unsigned i = runnable; i > 1; --i) {
            seed = mix64(seed + i);
            unsigned j = (unsigned)(seed % i);
            unsigned tmp = w.order[i - 1];
            w.order[i - 1] = w.order[j];
            w.order[j] = tmp;
        }
        for (unsigned i = 0; i < runnable; ++i) {
            Fiber& f = w.fibers[w.order[i]];
            current_thread = &f.thread;
            switch_to_fiber(w, f);
        }
        ++round;
        // Release every warp whose live lanes all wait at a warp barrier.
        bool released = false;
        unsigned live = 0, at_block = 0;
        for (unsigned warp_start = 0; warp_start < n; warp_start += 32) {
            unsigned end = warp_start + 32 < n ? warp_start + 32 : n;
            unsigned warp_live = 0, warp_waiting = 0;
            for (unsigned t = warp_start; t < end; ++t) {
                FiberState s = w.fibers[t].state;
                if (s == FiberState::Done) continue;
                ++warp_live;
                if (s == FiberState::AtWarpBarrier) ++warp_waiting;
                if (s == FiberState::AtBlockBarrier) ++at_block;
            }
            live += warp_live;
            if (warp_live > 0 && warp_waiting == warp_live) {
                for (unsigned t = warp_start; t < end; ++t)
                    if (w.fibers[t].state == FiberState::AtWarpBarrier) w.fibers[t].state = FiberState::Runnable;
                if (profiling) profile::flush_warp(warp_start / 32);
                released = true;
            }
        }
        if (released) continue;
        if (live == 0) {
            flush_all_warps();
            return std::string();
        }
        if (at_block == live) {
            flush_all_warps();
            for (unsigned t = 0; t < n; ++t)
                if (w.fibers[t].state == FiberState::AtBlockBarrier) w.fibers[t].state = FiberState::Runnable;
            continue;
        }
        char msg[256];
        snprintf(msg, sizeof msg,
                 "deadlock in block (%u,%u,%u): %u threads wait at __syncthreads while others of the same "
                 "block wait at a warp-level exchange (shuffle/ballot/__syncwarp) that not all lanes reach",
                 block_idx.x, block_idx.y, block_idx.z, at_block);
        return std::string(msg);
    }
}

static unsigned host_threads() {
    if (const char* s = getenv("GALA_SIM_THREADS")) {
        int v = atoi(s);
        if (v > 0) return (unsigned)v;
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : hw;
}

}  // namespace gala_sim

// Runs `shim(args)` over the grid. Returns 0 on success, otherwise writes a message to `err`.
// `profile`: null, or where to add the launch's memory-access profile (the shim must then be
// the profiled variant, whose loads and stores call the profiler's hooks).
extern "C" int gala_sim_launch(gala_sim::KernelShim shim, const unsigned* grid, const unsigned* block,
                               unsigned shared_bytes, void** args, char* err, unsigned long err_len,
                               GalaSimMemoryProfile* profile) {
    using namespace gala_sim;
    auto fail = [&](const std::string& m) {
        snprintf(err, err_len, "%s", m.c_str());
        return 1;
    };
    if (shared_bytes != 0)
        return fail("dynamic shared memory is not supported by the simulator; declare a fixed-size __shared__ array");
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads == 0 || threads > kMaxThreadsPerBlock) return fail("block size must be 1..1024 threads");
    const unsigned long long blocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    if (blocks == 0) return fail("grid has zero blocks");
    const dim3 grid_dim{grid[0], grid[1], grid[2]};
    const dim3 block_dim{block[0], block[1], block[2]};

    std::atomic<unsigned long long> next_block{0};
    std::mutex error_mutex;
    std::string first_error;
    // Device memory as of this launch: what the profiler counts as global.
    const profile::RegistrySnapshot registry = profile ? profile::snapshot_registry() : profile::RegistrySnapshot();
    std::mutex profile_mutex;
    auto work = [&]() {
        Worker* w = acquire_worker();
        if (!w) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (first_error.empty()) first_error = "could not map fiber stacks (out of memory)";
            return;
        }
        current_worker = w;
        if (profile) profile::begin_launch_on_this_thread(&registry);
        w->shim = shim;
        w->args = args;
        for (;;) {
            unsigned long long b = next_block.fetch_add(1);
            if (b >= blocks) break;
            uint3 idx{(unsigned)(b % grid_dim.x), (unsigned)((b / grid_dim.x) % grid_dim.y),
                      (unsigned)(b / ((unsigned long long)grid_dim.x * grid_dim.y))};
            std::string e = run_block(*w, idx, block_dim, grid_dim);
            if (!e.empty()) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (first_error.empty()) first_error = e;
                next_block.store(blocks);
                break;
            }
        }
        if (profile) {
            // Integer sums: the launch total does not depend on which thread ran which block.
            std::lock_guard<std::mutex> lock(profile_mutex);
            profile::end_launch_on_this_thread(profile);
        }
        current_worker = nullptr;
        release_worker(w);
    };
    unsigned long long helpers = host_threads();
    if (helpers > blocks) helpers = blocks;
    std::vector<std::thread> pool;
    for (unsigned long long i = 1; i < helpers; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    if (!first_error.empty()) return fail(first_error);
    return 0;
}
