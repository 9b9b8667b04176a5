// The simulator's memory-access profiler (GALA_SIM_PROFILE=memory, `bench learner --profile`):
// the interface between the runtime (sim_runtime.cpp) and the recorder (sim_profile.cpp).
//
// What it measures: for every warp-level memory instruction of a launch (a "request"), how
// many shared-memory wavefronts (bank conflicts) or global 32-byte sectors (coalescing) the
// addresses of its active lanes need, from the real addresses the real kernel text touches.
//
// How: the profiled variant of every kernel is built by g++ with -fsanitize=thread, which makes
// the compiler call __tsan_readN/__tsan_writeN(addr) before every load and store; those hooks
// are defined here (no TSan runtime is linked), record (call site, address, size) per lane, and
// classify the address as shared (this host thread's static TLS block, where `__shared__`
// arrays live in the simulator) or global (a registered device allocation); stack and
// simulator-internal addresses are ignored (registers and bookkeeping on a GPU).
//
// Warp requests: a GPU warp executes one instruction for all its active lanes. The simulator
// runs lanes one after another between barriers, so lanes are matched by (call site, k): the
// k-th execution of the same instruction by each lane between two barriers of its warp is one
// request. Divergence: a branch taken by some lanes only executes its instructions for those
// lanes (their call sites are executed by nobody else), which is exactly a masked request; a
// loop whose trip count differs across lanes matches iteration k of every lane still looping.
// Vector accesses: GCC instruments before it vectorizes, so four adjacent float reads that nvcc
// merges into one LDS.128 reach the hooks as four scalar reads, and GCC's scheduler may
// interleave them with another row's (the GEMM loops read a row of each tile). A lane keeps up
// to four runs open: a 4- or 8-byte access joins the run it continues (same kind, the next
// address, a call site the run has not used yet, so the trips of a loop never merge); a run of
// 8 or 16 bytes in all, aligned to that size, is counted as ONE vector access (what nvcc does
// when the alignment is provable), anything else as the scalar accesses it was made of. Runs
// close when full, when a fifth opens (the oldest), or at the warp's barrier.
#pragma once

#include <stdint.h>

#include <utility>
#include <vector>

extern "C" {

// Per access class (shared/global x load/store), summed over a launch.
struct GalaSimAccessStats {
    uint64_t requests;       // warp-level instructions
    uint64_t lane_accesses;  // active lanes summed over requests
    uint64_t bytes;          // bytes the lanes asked for (vector accesses count their width)
    uint64_t units;          // shared: wavefronts; global: 32-byte sectors
    uint64_t ideal_units;    // the minimum for the same unique bytes: ceil(bytes / 128) wavefronts, ceil(bytes / 32) sectors
    uint64_t lines;          // global: distinct 128-byte cache lines per request, summed (0 for shared)
};

struct GalaSimMemoryProfile {
    GalaSimAccessStats shared_load, shared_store, global_load, global_store;
    // Accesses inside neither a device buffer nor shared memory after classification (kernel
    // locals spilled to the fiber stack, simulator bookkeeping): counted, not analysed.
    uint64_t other_accesses;
};

// Device allocations: the only addresses classified as global memory.
void gala_sim_memory_register(const void* ptr, uint64_t bytes);
void gala_sim_memory_unregister(const void* ptr);
}

namespace gala_sim {
namespace profile {

// The registered device allocations, (begin, end) sorted: taken once per profiled launch (a
// launch of its own, so concurrent launches on other host threads do not race on it).
typedef std::vector<std::pair<uintptr_t, uintptr_t>> RegistrySnapshot;
RegistrySnapshot snapshot_registry();
// Called by gala_sim_launch on each host thread that runs blocks of a profiled launch;
// `global` lives until the launch ends.
void begin_launch_on_this_thread(const RegistrySnapshot* global);
// Adds this host thread's totals into `out` and stops recording on it.
void end_launch_on_this_thread(GalaSimMemoryProfile* out);
// Start of a block with `threads` threads.
void begin_block(unsigned threads);
// Warp `warp` of the current block passes a barrier (or finishes): its requests are complete.
void flush_warp(unsigned warp);
// Whether recording is on for this host thread.
bool active();

}  // namespace profile
}  // namespace gala_sim
