//! Static resource check of every kernel on sm_90 (H100/H200), with no GPU: each kernels/**/*.cu
//! goes through NVRTC to PTX exactly as the CUDA device compiles it at run time, then through
//! `ptxas -arch=sm_90 -O3 -v` (the PTX-to-SASS step the driver's JIT does at module load), and
//! the test requires, for EVERY kernel found (so new kernels are covered without editing this
//! file): no spill stores or loads, no stack frame (local memory), no ptxas warning; and for
//! the kernels `OCCUPANCY_FLOORS` names (the GEMMs), a theoretical occupancy at least the floor.
//! It prints the resource table that BENCHMARKS.md copies.
//!
//! Needs libnvrtc (.ci/install-nvrtc.sh) and ptxas from the `nvidia-cuda-nvcc==13.0.*` wheel
//! (.ci/install-ptxas.sh exports GALA_PTXAS; otherwise `ptxas` on PATH or the wheel's
//! nvidia/cu13/bin/ptxas is used). Missing either, the test is skipped with the reason printed,
//! except in CI (the CI environment variable set), where that is a failure.

use gala_gpu::device::{nvrtc, KERNEL_SIGNATURES, KERNEL_SOURCES};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Theoretical-occupancy floors, by a part of the kernel name (first match wins): the GEMM kernels
/// (conv forward, backward-data and backward-filter, and any fc/gemm kernel) must keep at least
/// half of an SM's 64 warps resident, so the latency of their loads is hidden. A GEMM kernel
/// must carry __launch_bounds__ (its block size is then known from the PTX's .maxntid).
const OCCUPANCY_FLOORS: &[(&str, f64)] = &[
    ("conv_forward", 0.5),
    ("conv_backward_data", 0.5),
    ("conv_backward_filter", 0.5),
    ("conv_gemm", 0.5),
    ("fc_", 0.5),
    ("gemm", 0.5),
];

/// Kernels below their floor today, with the occupancy they have: the check accepts exactly
/// this value for them (lower fails, and so does reaching the floor: then delete the entry).
/// Empty since conv_backward_data became the transposed-conv GEMM on a pre-masked gradient (it
/// was 72 registers, 43.75%: the `y` loads of its fused ReLU mask did not fit under 64).
const KNOWN_BELOW_FLOOR: &[(&str, f64)] = &[];

// sm_90 limits (CUDA occupancy calculator, compute capability 9.0).
const REGS_PER_SM: u32 = 65536;
const REG_ALLOC_UNIT: u32 = 256; // registers, per warp
const SMEM_PER_SM: u32 = 233472; // 228 KiB
const SMEM_RESERVED_PER_BLOCK: u32 = 1024;
const THREADS_PER_SM: u32 = 2048;
const BLOCKS_PER_SM: u32 = 32;
const WARPS_PER_SM: u32 = 64;

#[derive(Debug, Default, Clone)]
struct Resources {
    regs: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
}

/// (blocks per SM, what limits them, occupancy = resident warps / 64).
fn occupancy(r: &Resources, threads: u32) -> (u32, &'static str, f64) {
    let warps = threads.div_ceil(32);
    let regs_per_warp = (r.regs * 32).div_ceil(REG_ALLOC_UNIT) * REG_ALLOC_UNIT;
    // Registers are allocated per SM sub-partition (4 of 16K), whole warps at a time.
    let by_regs = if regs_per_warp == 0 { BLOCKS_PER_SM } else { (REGS_PER_SM / 4 / regs_per_warp) * 4 / warps };
    let by_smem = if r.smem == 0 { u32::MAX } else { SMEM_PER_SM / (r.smem + SMEM_RESERVED_PER_BLOCK) };
    let by_threads = THREADS_PER_SM / threads;
    let (blocks, limit) = [(by_regs, "regs"), (by_smem, "smem"), (by_threads, "threads"), (BLOCKS_PER_SM, "blocks")]
        .into_iter()
        .min_by_key(|&(b, _)| b)
        .unwrap();
    (blocks, limit, (blocks * warps) as f64 / WARPS_PER_SM as f64)
}

fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GALA_PTXAS") {
        return Some(PathBuf::from(p));
    }
    if Command::new("ptxas").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(PathBuf::from("ptxas"));
    }
    // The wheel's namespace package: <site-packages>/nvidia/cu13/bin/ptxas.
    let out = Command::new("python3")
        .args(["-c", "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'ptxas'))"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

/// Per entry function: ptxas -v's "Function properties" and "Used N registers" lines.
fn parse_ptxas(log: &str) -> Vec<(String, Resources)> {
    let mut out: Vec<(String, Resources)> = Vec::new();
    let num_before = |line: &str, what: &str| -> Option<u32> {
        let i = line.find(what)?;
        line[..i].split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            out.push((rest.split('\'').next().unwrap_or_default().to_string(), Resources::default()));
            continue;
        }
        let Some((_, r)) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            r.stack = num_before(line, "bytes stack frame").unwrap_or(0);
            r.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
            r.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains("registers") {
            r.regs = num_before(line, "registers").unwrap_or(0);
            r.smem = num_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// The block size a kernel declares with __launch_bounds__: `.maxntid X, Y, Z` of its PTX entry.
fn maxntid(ptx: &str, kernel: &str) -> Option<u32> {
    let start = ptx.find(&format!(".entry {kernel}("))?;
    let body = &ptx[start..];
    let end = body.find('{').unwrap_or(body.len());
    let line = body[..end].lines().find(|l| l.trim_start().starts_with(".maxntid"))?;
    line.trim_start()
        .trim_start_matches(".maxntid")
        .split(',')
        .map(|s| s.trim().parse::<u32>().ok())
        .try_fold(1u32, |acc, v| v.map(|v| acc * v))
}

fn require_tools() -> Option<PathBuf> {
    let missing = if !nvrtc::available() {
        Some(format!("libnvrtc not found; {}", nvrtc::INSTALL_HINT))
    } else if find_ptxas().is_none() {
        Some("ptxas not found: `pip install nvidia-cuda-nvcc==13.0.*` (see .ci/install-ptxas.sh) or set GALA_PTXAS".to_string())
    } else {
        None
    };
    match missing {
        Some(reason) if std::env::var_os("CI").is_some() => panic!("CI is set, so the ptxas resource check must run: {reason}"),
        Some(reason) => {
            println!("SKIPPED kernels_ptxas: {reason}");
            None
        }
        None => find_ptxas(),
    }
}

#[test]
fn every_kernel_has_no_spills_no_local_memory_and_gemm_occupancy_at_least_the_floor() {
    let Some(ptxas) = require_tools() else { return };
    let version = Command::new(&ptxas).arg("--version").output().expect("ptxas runs");
    println!("ptxas: {}", String::from_utf8_lossy(&version.stdout).lines().last().unwrap_or("?"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels_ptxas");
    std::fs::create_dir_all(&dir).unwrap();

    let mut failures = Vec::new();
    let mut table = String::from(
        "| kernel | file | regs | spill st/ld (B) | stack (B) | static smem (B) | block | blocks/SM (limit) | occupancy | floor |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut seen = 0usize;
    for source in KERNEL_SOURCES {
        let compiled = nvrtc::compile(source, "compute_90").unwrap_or_else(|e| panic!("{e}"));
        let ptx = compiled.ptx.expect("compute_90 gives PTX");
        let stem = format!("{}{}", source.file.replace(['/', '.'], "_"), source.variant);
        let ptx_path = dir.join(format!("{stem}.ptx"));
        std::fs::write(&ptx_path, &ptx).unwrap();
        let run = Command::new(&ptxas)
            .args(["-arch=sm_90", "-O3", "-v", "-warn-spills", "-warn-lmem-usage"])
            .arg(&ptx_path)
            .arg("-o")
            .arg(dir.join(format!("{stem}.cubin")))
            .output()
            .expect("ptxas runs");
        let log = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
        assert!(run.status.success(), "ptxas failed on {}:\n{log}", source.describe());
        for line in log.lines().filter(|l| l.contains("warning")) {
            failures.push(format!("{}: ptxas: {line}", source.describe()));
        }
        let found = parse_ptxas(&log);
        for k in KERNEL_SIGNATURES.iter().filter(|k| source.builds(k)) {
            let Some((_, r)) = found.iter().find(|(n, _)| n == k.name) else {
                failures.push(format!("{}: ptxas reported no resources for it", k.name));
                continue;
            };
            seen += 1;
            if r.spill_stores != 0 || r.spill_loads != 0 {
                failures.push(format!("{}: spills {} B stored / {} B loaded", k.name, r.spill_stores, r.spill_loads));
            }
            if r.stack != 0 {
                failures.push(format!("{}: {} B stack frame (local memory)", k.name, r.stack));
            }
            let floor = OCCUPANCY_FLOORS.iter().find(|(p, _)| k.name.contains(p)).map(|&(_, f)| f);
            let threads = maxntid(&ptx, k.name);
            let (occ_cell, blocks_cell) = match threads {
                Some(t) => {
                    let (b, lim, occ) = occupancy(r, t);
                    if let Some(floor) = floor {
                        let known = KNOWN_BELOW_FLOOR.iter().find(|(n, _)| *n == k.name).map(|&(_, o)| o);
                        match known {
                            Some(o) if (occ - o).abs() < 1e-9 => {}
                            Some(o) => failures.push(format!(
                                "{}: occupancy {:.1}% but KNOWN_BELOW_FLOOR says {:.1}%: update or delete that entry (floor {:.0}%)",
                                k.name,
                                occ * 100.0,
                                o * 100.0,
                                floor * 100.0
                            )),
                            None if occ + 1e-9 < floor => failures.push(format!(
                                "{}: theoretical occupancy {:.1}% ({b} blocks/SM of {t} threads, limited by {lim}) is under the floor {:.0}%",
                                k.name,
                                occ * 100.0,
                                floor * 100.0
                            )),
                            None => {}
                        }
                    }
                    (format!("{:.1}%", occ * 100.0), format!("{b} ({lim})"))
                }
                None => {
                    if floor.is_some() {
                        failures.push(format!("{}: a GEMM kernel needs __launch_bounds__ so its occupancy can be checked", k.name));
                    }
                    ("-".into(), "- (no __launch_bounds__)".into())
                }
            };
            let floor_cell = match (floor, KNOWN_BELOW_FLOOR.iter().any(|(n, _)| *n == k.name)) {
                (Some(f), true) => format!("{:.0}% (known below)", f * 100.0),
                (Some(f), false) => format!("{:.0}%", f * 100.0),
                (None, _) => "-".into(),
            };
            table.push_str(&format!(
                "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |\n",
                k.name,
                source.file,
                r.regs,
                r.spill_stores,
                r.spill_loads,
                r.stack,
                r.smem,
                threads.map_or("-".to_string(), |t| t.to_string()),
                blocks_cell,
                occ_cell,
                floor_cell
            ));
        }
    }
    println!("{table}");
    for (name, _) in KNOWN_BELOW_FLOOR {
        if !KERNEL_SIGNATURES.iter().any(|k| k.name == *name) {
            failures.push(format!("KNOWN_BELOW_FLOOR names `{name}`, which no longer exists: delete the entry"));
        }
    }
    assert_eq!(seen, KERNEL_SIGNATURES.len(), "every kernel build.rs found went through ptxas");
    assert!(failures.is_empty(), "static resource check failed:\n{}", failures.join("\n"));
}

/// The parser and the occupancy arithmetic on known inputs (so a format change in ptxas's
/// output cannot make the check above pass by reading zeros).
#[test]
fn ptxas_log_parser_and_occupancy_arithmetic() {
    let log = "ptxas info    : 0 bytes gmem\n\
               ptxas info    : Compiling entry function 'k1' for 'sm_90'\n\
               ptxas info    : Function properties for k1\n\
               \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
               ptxas info    : Used 72 registers, used 1 barriers, 12288 bytes smem, 420 bytes cmem[0]\n\
               ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
               ptxas info    : Function properties for k2\n\
               \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
               ptxas info    : Used 32 registers, 388 bytes cmem[0]\n";
    let got = parse_ptxas(log);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "k1");
    let r = &got[0].1;
    assert_eq!((r.regs, r.stack, r.spill_stores, r.spill_loads, r.smem), (72, 8, 4, 12, 12288));
    let r = &got[1].1;
    assert_eq!((r.regs, r.stack, r.smem), (32, 0, 0));
    // The numbers of ../shared/reference/gpu-static-analysis.md's table.
    let res = |regs, smem| Resources { regs, smem, ..Default::default() };
    assert_eq!(occupancy(&res(72, 12288), 128), (7, "regs", 0.4375));
    assert_eq!(occupancy(&res(40, 12288), 128), (12, "regs", 0.75));
    assert_eq!(occupancy(&res(32, 1024), 128), (16, "regs", 1.0));
    assert_eq!(occupancy(&res(18, 128), 256), (8, "threads", 1.0));
    assert_eq!(occupancy(&res(32, 0), 1), (32, "blocks", 0.5));
    assert_eq!(occupancy(&res(32, 100 * 1024), 128), (2, "smem", 0.125));
    let ptx = ".visible .entry kern(\n\t.param .u64 a\n)\n.maxntid 128, 1, 1\n{\n}\n.visible .entry other(\n)\n{\n}\n";
    assert_eq!(maxntid(ptx, "kern"), Some(128));
    assert_eq!(maxntid(ptx, "other"), None);
}
