// The simulator's memory-access profiler: the __tsan_* hooks that the profiled kernel variant
// calls on every load and store, the per-warp request matching, and the bank-conflict and
// coalescing counts. See sim_profile.h for the model; this file is built WITHOUT
// -fsanitize=thread (only the profiled kernel shims are), so nothing here calls itself.

#include "sim_profile.h"

#include <link.h>
#include <stdlib.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

// Last: cuda_sim.h defines CUDA keywords (__noinline__, ...) that the standard headers also use.
#include "cuda_sim.h"

namespace gala_sim {
namespace profile {
namespace {

// ---- device allocations (global memory) ----
std::mutex g_registry_mutex;
std::map<uintptr_t, uintptr_t> g_registry;  // begin -> end

enum : unsigned { kShared = 0, kGlobal = 1 };
// Access class: space * 2 + is_store (shared load, shared store, global load, global store).
inline unsigned class_of(unsigned space, bool store) { return space * 2 + (store ? 1u : 0u); }

// A lane's run of contiguous same-kind accesses from distinct call sites, which may become one
// vector access (see `record`).
struct Run {
    uintptr_t addr = 0;
    uint32_t bytes = 0, elem = 0;
    unsigned cls = 0;
    unsigned n = 0;
    uintptr_t pcs[4] = {};
};

// The runs a lane has open, oldest first. Four: the GEMM loops interleave two (a row of each
// tile), and a K-step's prefetch a few more.
constexpr unsigned kOpenRuns = 4;
struct LaneRuns {
    Run open[kOpenRuns];
    unsigned count = 0;
};

struct ReqKey {
    uintptr_t pc;
    uint32_t occurrence;
    uint32_t cls;
    bool operator==(const ReqKey& o) const { return pc == o.pc && occurrence == o.occurrence && cls == o.cls; }
};
struct ReqKeyHash {
    size_t operator()(const ReqKey& k) const {
        uint64_t h = (uint64_t)k.pc * 0x9E3779B97F4A7C15ull ^ ((uint64_t)k.occurrence << 2 | k.cls);
        return (size_t)(h ^ (h >> 29));
    }
};

struct Request {
    unsigned cls = 0;
    unsigned lanes = 0;
    uintptr_t addr[32];
    uint32_t bytes[32];
};

struct Warp {
    std::unordered_map<uint64_t, uint32_t> occurrences;  // (call site << 5 | lane) -> executions so far
    std::unordered_map<ReqKey, uint32_t, ReqKeyHash> index;
    std::vector<Request> requests;
    LaneRuns runs[32];
};

struct ThreadProfile {
    bool on = false;
    // The launch's copy of the registry (sorted, non-overlapping), read-only while blocks run.
    const RegistrySnapshot* global = nullptr;
    GalaSimMemoryProfile totals{};
    std::vector<Warp> warps;
    uintptr_t tls_lo = 0, tls_hi = 0;
    // The simulator's own thread-locals that kernel code reads (threadIdx, blockIdx, ...): in
    // the TLS block, but not __shared__ storage.
    std::pair<uintptr_t, uintptr_t> excluded[4];
    std::vector<uint64_t> scratch;
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
};

__thread ThreadProfile* t_profile;  // fast access from the hooks
thread_local std::unique_ptr<ThreadProfile> t_profile_owner;  // freed when the host thread ends

GalaSimAccessStats& stats_of(GalaSimMemoryProfile& p, unsigned cls) {
    switch (cls) {
        case 0: return p.shared_load;
        case 1: return p.shared_store;
        case 2: return p.global_load;
        default: return p.global_store;
    }
}

struct TlsSearch {
    uintptr_t probe, lo, hi;
};
int find_tls_block(struct dl_phdr_info* info, size_t, void* data) {
    TlsSearch* s = static_cast<TlsSearch*>(data);
    if (!info->dlpi_tls_data) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        if (info->dlpi_phdr[i].p_type != PT_TLS) continue;
        uintptr_t lo = (uintptr_t)info->dlpi_tls_data, hi = lo + info->dlpi_phdr[i].p_memsz;
        if (s->probe >= lo && s->probe < hi) {
            s->lo = lo;
            s->hi = hi;
            return 1;
        }
    }
    return 0;
}

// -1: neither (stack, simulator internals); otherwise kShared or kGlobal.
inline int classify(ThreadProfile& p, uintptr_t a) {
    const RegistrySnapshot& g = *p.global;
    auto it = std::upper_bound(g.begin(), g.end(), std::make_pair(a, ~(uintptr_t)0));
    if (it != g.begin()) {
        --it;
        if (a < it->second) return kGlobal;
    }
    if (a >= p.tls_lo && a < p.tls_hi) {
        for (auto& e : p.excluded)
            if (a >= e.first && a < e.second) return -1;
        return kShared;
    }
    return -1;
}

void add_lane_access(Warp& w, unsigned lane, uintptr_t pc, uintptr_t addr, uint32_t bytes, unsigned cls) {
    uint32_t occurrence = w.occurrences[(uint64_t)pc << 5 | lane]++;
    auto ins = w.index.emplace(ReqKey{pc, occurrence, cls}, (uint32_t)w.requests.size());
    if (ins.second) {
        w.requests.emplace_back();
        w.requests.back().cls = cls;
    }
    Request& r = w.requests[ins.first->second];
    if (r.lanes < 32) {  // a lane executes one (call site, occurrence) once: at most 32 entries
        r.addr[r.lanes] = addr;
        r.bytes[r.lanes] = bytes;
        ++r.lanes;
    }
}

// A finished run becomes one vector access (8 or 16 bytes, aligned to its size) or stays the
// scalar accesses it was made of.
void commit_run(Warp& w, unsigned lane, const Run& r) {
    if (r.n > 1 && (r.bytes == 8 || r.bytes == 16) && r.addr % r.bytes == 0) {
        add_lane_access(w, lane, r.pcs[0], r.addr, r.bytes, r.cls);
    } else {
        for (unsigned i = 0; i < r.n; ++i) add_lane_access(w, lane, r.pcs[i], r.addr + i * r.elem, r.elem, r.cls);
    }
}

// Every open run of a lane, oldest first (at a barrier or the end of the block).
void commit(Warp& w, unsigned lane) {
    LaneRuns& lr = w.runs[lane];
    for (unsigned i = 0; i < lr.count; ++i) commit_run(w, lane, lr.open[i]);
    lr.count = 0;
}

// Closes open run i of a lane, keeping the others in order.
void close_run(Warp& w, unsigned lane, unsigned i) {
    LaneRuns& lr = w.runs[lane];
    commit_run(w, lane, lr.open[i]);
    for (unsigned j = i + 1; j < lr.count; ++j) lr.open[j - 1] = lr.open[j];
    --lr.count;
}

void analyse(ThreadProfile& p, const Request& r) {
    GalaSimAccessStats& s = stats_of(p.totals, r.cls);
    s.requests += 1;
    s.lane_accesses += r.lanes;
    // Unique bytes (for the ideal): merge the lanes' byte ranges.
    p.ranges.clear();
    for (unsigned i = 0; i < r.lanes; ++i) {
        s.bytes += r.bytes[i];
        p.ranges.emplace_back(r.addr[i], r.addr[i] + r.bytes[i]);
    }
    std::sort(p.ranges.begin(), p.ranges.end());
    uint64_t unique = 0;
    uintptr_t end = 0;
    for (auto& rg : p.ranges) {
        uintptr_t lo = std::max(rg.first, end);
        if (rg.second > lo) {
            unique += rg.second - lo;
            end = rg.second;
        }
    }
    auto distinct = [&](unsigned shift) {
        p.scratch.clear();
        for (auto& rg : p.ranges)
            for (uintptr_t u = rg.first >> shift; u <= (rg.second - 1) >> shift; ++u) p.scratch.push_back(u);
        std::sort(p.scratch.begin(), p.scratch.end());
        p.scratch.erase(std::unique(p.scratch.begin(), p.scratch.end()), p.scratch.end());
        return (uint64_t)p.scratch.size();
    };
    if (r.cls / 2 == kShared) {
        // 32 banks of 4-byte words: a wavefront serves at most one distinct word per bank (lanes
        // reading the same word share it), so the request needs max over banks of the distinct
        // words in that bank.
        distinct(2);
        unsigned per_bank[32] = {};
        unsigned worst = 0;
        for (uint64_t word : p.scratch) worst = std::max(worst, ++per_bank[word % 32]);
        s.units += worst;
        s.ideal_units += (unique + 127) / 128;
    } else {
        s.units += distinct(5);  // 32-byte sectors
        s.ideal_units += (unique + 31) / 32;
        s.lines += distinct(7);  // 128-byte lines
    }
}

inline void record(uintptr_t addr, uint32_t bytes, bool store, uintptr_t pc) {
    ThreadProfile* p = t_profile;
    if (!p || !p->on) return;
    int space = classify(*p, addr);
    if (space < 0) {
        ++p->totals.other_accesses;
        return;
    }
    ThreadState* t = current_thread;
    if (!t || t->warp >= p->warps.size()) return;
    Warp& w = p->warps[t->warp];
    const unsigned lane = t->lane, cls = class_of((unsigned)space, store);
    Run access;
    access.addr = addr;
    access.bytes = access.elem = bytes;
    access.cls = cls;
    access.pcs[0] = pc;
    access.n = 1;
    if (bytes != 4 && bytes != 8) {  // already a vector access, or a byte/half: never merged
        commit_run(w, lane, access);
        return;
    }
    // Vector accesses (see sim_profile.h): a 4- or 8-byte access that continues one of the
    // lane's open runs (same kind and element size, the next address, from a call site the run
    // has not used: one instruction of an unrolled sequence, not the next trip of a loop) joins
    // it; GCC may interleave the loads of two rows, so several runs stay open at once.
    LaneRuns& lr = w.runs[lane];
    for (unsigned i = 0; i < lr.count; ++i) {
        Run& r = lr.open[i];
        if (r.cls != cls || r.elem != bytes || addr != r.addr + r.bytes || r.bytes + bytes > 16) continue;
        bool seen = false;
        for (unsigned k = 0; k < r.n; ++k) seen |= r.pcs[k] == pc;
        if (seen) continue;
        r.pcs[r.n++] = pc;
        r.bytes += bytes;
        if (r.bytes == 16) close_run(w, lane, i);
        return;
    }
    if (lr.count == kOpenRuns) close_run(w, lane, 0);
    lr.open[lr.count++] = access;
}

}  // namespace

bool active() { return t_profile && t_profile->on; }

RegistrySnapshot snapshot_registry() {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    return RegistrySnapshot(g_registry.begin(), g_registry.end());
}

void begin_launch_on_this_thread(const RegistrySnapshot* global) {
    if (!t_profile) {
        t_profile_owner.reset(new ThreadProfile());
        t_profile = t_profile_owner.get();
    }
    ThreadProfile& p = *t_profile;
    p.global = global;
    p.totals = GalaSimMemoryProfile{};
    TlsSearch s{(uintptr_t)&current_block_idx, 0, 0};
    dl_iterate_phdr(find_tls_block, &s);
    p.tls_lo = s.lo;
    p.tls_hi = s.hi;
    p.excluded[0] = {(uintptr_t)&current_thread, (uintptr_t)&current_thread + sizeof current_thread};
    p.excluded[1] = {(uintptr_t)&current_block_idx, (uintptr_t)&current_block_idx + sizeof current_block_idx};
    p.excluded[2] = {(uintptr_t)&current_block_dim, (uintptr_t)&current_block_dim + sizeof current_block_dim};
    p.excluded[3] = {(uintptr_t)&current_grid_dim, (uintptr_t)&current_grid_dim + sizeof current_grid_dim};
    p.on = true;
}

void end_launch_on_this_thread(GalaSimMemoryProfile* out) {
    ThreadProfile& p = *t_profile;
    p.on = false;
    GalaSimAccessStats* dst[4] = {&out->shared_load, &out->shared_store, &out->global_load, &out->global_store};
    for (unsigned c = 0; c < 4; ++c) {
        const GalaSimAccessStats& s = stats_of(p.totals, c);
        dst[c]->requests += s.requests;
        dst[c]->lane_accesses += s.lane_accesses;
        dst[c]->bytes += s.bytes;
        dst[c]->units += s.units;
        dst[c]->ideal_units += s.ideal_units;
        dst[c]->lines += s.lines;
    }
    out->other_accesses += p.totals.other_accesses;
}

void begin_block(unsigned threads) {
    ThreadProfile& p = *t_profile;
    p.warps.resize((threads + 31) / 32);
}

void flush_warp(unsigned warp) {
    ThreadProfile& p = *t_profile;
    if (warp >= p.warps.size()) return;
    Warp& w = p.warps[warp];
    for (unsigned lane = 0; lane < 32; ++lane) commit(w, lane);
    for (const Request& r : w.requests) analyse(p, r);
    w.requests.clear();
    w.index.clear();
    w.occurrences.clear();
}

}  // namespace profile
}  // namespace gala_sim

extern "C" void gala_sim_memory_register(const void* ptr, uint64_t bytes) {
    std::lock_guard<std::mutex> lock(gala_sim::profile::g_registry_mutex);
    gala_sim::profile::g_registry[(uintptr_t)ptr] = (uintptr_t)ptr + bytes;
}

extern "C" void gala_sim_memory_unregister(const void* ptr) {
    std::lock_guard<std::mutex> lock(gala_sim::profile::g_registry_mutex);
    gala_sim::profile::g_registry.erase((uintptr_t)ptr);
}

// ---- the hooks GCC's -fsanitize=thread instrumentation calls (no TSan runtime is linked) ----
#define GALA_PC ((uintptr_t)__builtin_return_address(0))
#define GALA_HOOKS(N)                                                                                    \
    extern "C" void __tsan_read##N(void* a) { gala_sim::profile::record((uintptr_t)a, N, false, GALA_PC); } \
    extern "C" void __tsan_write##N(void* a) { gala_sim::profile::record((uintptr_t)a, N, true, GALA_PC); } \
    extern "C" void __tsan_unaligned_read##N(void* a) { gala_sim::profile::record((uintptr_t)a, N, false, GALA_PC); } \
    extern "C" void __tsan_unaligned_write##N(void* a) { gala_sim::profile::record((uintptr_t)a, N, true, GALA_PC); } \
    extern "C" void __tsan_volatile_read##N(void* a) { gala_sim::profile::record((uintptr_t)a, N, false, GALA_PC); } \
    extern "C" void __tsan_volatile_write##N(void* a) { gala_sim::profile::record((uintptr_t)a, N, true, GALA_PC); }
GALA_HOOKS(1)
GALA_HOOKS(2)
GALA_HOOKS(4)
GALA_HOOKS(8)
GALA_HOOKS(16)
#undef GALA_HOOKS
extern "C" void __tsan_read_range(void* a, unsigned long n) { gala_sim::profile::record((uintptr_t)a, (uint32_t)n, false, GALA_PC); }
extern "C" void __tsan_write_range(void* a, unsigned long n) { gala_sim::profile::record((uintptr_t)a, (uint32_t)n, true, GALA_PC); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}

// Atomics reach TSan as calls that must perform the operation (the memory order argument is
// ignored: sequentially consistent, like the simulator's atomics). Not profiled: the kernels
// keep atomics out of their data paths (deterministic reductions), so they are not what the
// bank-conflict and coalescing counts are about.
#define GALA_ATOMICS(BITS, T)                                                                                       \
    extern "C" T __tsan_atomic##BITS##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
    extern "C" void __tsan_atomic##BITS##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##BITS##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##BITS##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##BITS##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##BITS##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##BITS##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##BITS##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##BITS##_fetch_nand(volatile T* a, T v, int) { return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" int __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {              \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
    }                                                                                                               \
    extern "C" int __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                \
        return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                      \
    }                                                                                                               \
    extern "C" T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                    \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                           \
        return c;                                                                                                   \
    }
GALA_ATOMICS(8, unsigned char)
GALA_ATOMICS(16, unsigned short)
GALA_ATOMICS(32, unsigned int)
GALA_ATOMICS(64, unsigned long long)
#undef GALA_ATOMICS
extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
