//! The simulator as a memory-access profiler: per kernel launch, shared-memory wavefronts per
//! request (bank conflicts) and global-memory sectors per request (coalescing), measured on the
//! addresses the real kernel text touches. The recorder is kernels/sim/sim_profile.cpp (its
//! header explains the instrumentation, the warp-request matching and how divergence and
//! vector accesses are handled).
//!
//! Turn it on for a closure on this thread with [`profile_memory`] (what `bench learner
//! --profile` and tests/sim_profile.rs do), or for every simulated launch of a process with
//! `GALA_SIM_PROFILE=memory` (one line per launch on stderr). Profiled launches run the
//! instrumented kernel variant: same results, several times slower.

use serde::Serialize;
use std::cell::RefCell;

/// One access class (shared/global × load/store) summed over a launch; field order and types
/// match `GalaSimAccessStats` in kernels/sim/sim_profile.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AccessStats {
    /// Warp-level memory instructions.
    pub requests: u64,
    /// Active lanes summed over the requests.
    pub lane_accesses: u64,
    /// Bytes the lanes asked for.
    pub bytes: u64,
    /// Shared memory: wavefronts (bank-conflict replays included); global: 32-byte sectors.
    pub units: u64,
    /// The least `units` the same unique bytes could take: ceil(bytes/128) wavefronts, or
    /// ceil(bytes/32) sectors, per request.
    pub ideal_units: u64,
    /// Global memory: distinct 128-byte lines per request, summed.
    pub lines: u64,
}

impl AccessStats {
    fn ratio(a: u64, b: u64) -> f64 {
        if b == 0 {
            0.0
        } else {
            a as f64 / b as f64
        }
    }
    /// Wavefronts (shared) or sectors (global) per request.
    pub fn per_request(&self) -> f64 {
        Self::ratio(self.units, self.requests)
    }
    /// The ideal of [`Self::per_request`] for the same bytes.
    pub fn ideal_per_request(&self) -> f64 {
        Self::ratio(self.ideal_units, self.requests)
    }
    /// units / ideal units: 1.0 is conflict-free (shared) or perfectly coalesced (global).
    pub fn excess(&self) -> f64 {
        Self::ratio(self.units, self.ideal_units)
    }
    fn add(&mut self, o: &AccessStats) {
        self.requests += o.requests;
        self.lane_accesses += o.lane_accesses;
        self.bytes += o.bytes;
        self.units += o.units;
        self.ideal_units += o.ideal_units;
        self.lines += o.lines;
    }
}

/// `GalaSimMemoryProfile` of kernels/sim/sim_profile.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RawMemoryProfile {
    pub shared_load: AccessStats,
    pub shared_store: AccessStats,
    pub global_load: AccessStats,
    pub global_store: AccessStats,
    pub other_accesses: u64,
}

/// One launch's memory-access profile.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchMemoryProfile {
    pub kernel: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_load: AccessStats,
    pub shared_store: AccessStats,
    pub global_load: AccessStats,
    pub global_store: AccessStats,
    /// Lane accesses outside shared memory and device buffers (stack, simulator bookkeeping).
    pub other_accesses: u64,
}

impl LaunchMemoryProfile {
    pub(crate) fn new(kernel: &str, grid: (u32, u32, u32), block: (u32, u32, u32), raw: &RawMemoryProfile) -> Self {
        LaunchMemoryProfile {
            kernel: kernel.to_string(),
            grid,
            block,
            shared_load: raw.shared_load,
            shared_store: raw.shared_store,
            global_load: raw.global_load,
            global_store: raw.global_store,
            other_accesses: raw.other_accesses,
        }
    }

    /// One line: requests and per-request counts (measured / ideal) per access class.
    pub fn summary(&self) -> String {
        let c = |s: &AccessStats| {
            if s.requests == 0 {
                "-".to_string()
            } else {
                format!("{} req {:.2}/{:.2}", s.requests, s.per_request(), s.ideal_per_request())
            }
        };
        format!(
            "{} grid {:?} block {:?}: smem ld {} | smem st {} | gmem ld {} | gmem st {} (wavefronts or sectors per request, measured/ideal)",
            self.kernel,
            self.grid,
            self.block,
            c(&self.shared_load),
            c(&self.shared_store),
            c(&self.global_load),
            c(&self.global_store)
        )
    }
}

thread_local! {
    static COLLECTOR: RefCell<Option<Vec<LaunchMemoryProfile>>> = const { RefCell::new(None) };
}

/// Runs `f` with every simulated launch on this thread profiled; returns the launches' profiles
/// in launch order. Nested calls: the inner one takes the launches made inside it.
pub fn profile_memory<R>(f: impl FnOnce() -> R) -> (R, Vec<LaunchMemoryProfile>) {
    let outer = COLLECTOR.with(|c| c.borrow_mut().replace(Vec::new()));
    let r = f();
    let got = COLLECTOR.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)).unwrap_or_default();
    (r, got)
}

/// Whether launches on this thread are being collected.
pub(crate) fn collecting() -> bool {
    COLLECTOR.with(|c| c.borrow().is_some())
}

/// Whether `GALA_SIM_PROFILE=memory` asks for every launch to be profiled and printed.
pub(crate) fn env_requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GALA_SIM_PROFILE").is_ok_and(|v| v.eq_ignore_ascii_case("memory")))
}

pub(crate) fn collect(p: LaunchMemoryProfile) {
    COLLECTOR.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push(p);
        }
    });
}

/// A markdown table of `launches` (one row per launch, then a row per kernel totalled):
/// wavefronts per request for shared loads and stores, sectors per request for global loads and
/// stores, each as measured / ideal, and the excess (measured ÷ ideal: 1.00 is conflict-free or
/// fully coalesced).
pub fn format_table(launches: &[LaunchMemoryProfile]) -> String {
    let mut out = String::new();
    out.push_str(
        "| # | kernel | grid | smem ld req | wavefronts/req (ideal) | smem st req | wavefronts/req (ideal) | gmem ld req | sectors/req (ideal) | gmem st req | sectors/req (ideal) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let cell = |s: &AccessStats| -> (String, String) {
        if s.requests == 0 {
            ("0".into(), "-".into())
        } else {
            (s.requests.to_string(), format!("{:.2} ({:.2})", s.per_request(), s.ideal_per_request()))
        }
    };
    let row = |out: &mut String, idx: &str, p: &LaunchMemoryProfile, grid: &str| {
        let (a, b) = cell(&p.shared_load);
        let (c, d) = cell(&p.shared_store);
        let (e, f) = cell(&p.global_load);
        let (g, h) = cell(&p.global_store);
        out.push_str(&format!("| {idx} | {} | {grid} | {a} | {b} | {c} | {d} | {e} | {f} | {g} | {h} |\n", p.kernel));
    };
    for (i, p) in launches.iter().enumerate() {
        row(&mut out, &(i + 1).to_string(), p, &format!("{}x{}x{}", p.grid.0, p.grid.1, p.grid.2));
    }
    // Per kernel, all its launches together.
    let mut kernels: Vec<LaunchMemoryProfile> = Vec::new();
    for p in launches {
        match kernels.iter_mut().find(|k| k.kernel == p.kernel) {
            Some(k) => {
                k.shared_load.add(&p.shared_load);
                k.shared_store.add(&p.shared_store);
                k.global_load.add(&p.global_load);
                k.global_store.add(&p.global_store);
                k.other_accesses += p.other_accesses;
            }
            None => kernels.push(p.clone()),
        }
    }
    for k in &kernels {
        row(&mut out, "all", k, "-");
    }
    out
}
