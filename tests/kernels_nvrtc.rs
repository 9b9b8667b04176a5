//! Every kernels/**/*.cu compiles under NVRTC for sm_90 (H100/H200) — both to PTX (what the
//! CUDA device loads) and to machine code — with no error and no warning.
//!
//! Needs libnvrtc (e.g. `pip install nvidia-cuda-nvrtc==13.0.*` plus LD_LIBRARY_PATH, see
//! .ci/install-nvrtc.sh). Without it the test is skipped with the reason printed, except in CI
//! (the CI environment variable set), where a missing libnvrtc is a failure.

use gala_gpu::device::{nvrtc, KERNEL_SIGNATURES, KERNEL_SOURCES};

#[test]
fn every_kernel_compiles_under_nvrtc_for_sm90_without_warnings() {
    if !nvrtc::available() {
        let reason = format!("libnvrtc not found; {}", nvrtc::INSTALL_HINT);
        if std::env::var_os("CI").is_some() {
            panic!("CI is set, so the NVRTC check must run: {reason}");
        }
        println!("SKIPPED every_kernel_compiles_under_nvrtc_for_sm90_without_warnings: {reason}");
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    println!("NVRTC {major}.{minor}");
    assert!(!KERNEL_SOURCES.is_empty());
    let mut failures = Vec::new();
    for source in KERNEL_SOURCES {
        for arch in ["compute_90", "sm_90"] {
            match nvrtc::compile(source, arch) {
                Err(e) => failures.push(e.to_string()),
                Ok(c) => {
                    if !c.log.is_empty() {
                        failures.push(format!("{} for {arch}: NVRTC printed:\n{}", source.describe(), c.log));
                    }
                    if let Some(ptx) = &c.ptx {
                        // Every kernel build.rs found must be an entry point of the PTX.
                        for k in KERNEL_SIGNATURES.iter().filter(|k| source.builds(k)) {
                            let Some(at) = ptx.find(&format!(".entry {}(", k.name)) else {
                                failures.push(format!("{}: no PTX entry for `{}`", source.describe(), k.name));
                                continue;
                            };
                            // The TF32 build's GEMMs run on tensor cores; the plain build has no mma.
                            let body = &ptx[at..ptx[at + 1..].find(".entry ").map_or(ptx.len(), |e| at + 1 + e)];
                            let tensor_core = body.contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32");
                            if tensor_core != (k.variant == "tf32") {
                                failures.push(format!("{}: `{}` {} tensor-core mma", source.describe(), k.name, if tensor_core { "has" } else { "lacks" }));
                            }
                        }
                    }
                }
            }
        }
        println!("{}: ok", source.describe());
    }
    assert!(failures.is_empty(), "NVRTC problems:\n{}", failures.join("\n\n"));
}

/// NVRTC reports warnings in the log of a successful compile, which the test above requires to be
/// empty: show that a warning really lands there (so a clean run means something).
#[test]
fn nvrtc_log_reports_warnings() {
    if !nvrtc::available() {
        println!("SKIPPED nvrtc_log_reports_warnings: libnvrtc not found");
        return;
    }
    let bad = gala_gpu::device::KernelSource {
        file: "warning_probe.cu",
        text: "extern \"C\" __global__ void probe(float* x) { int unused = 3; x[0] = 1.0f; }\n\
               __device__ int f(int a) { if (a) return 1; }\n\
               __global__ void g(int* y) { y[0] = f(y[1]); }\n",
        variant: "",
        defines: &[],
        min_arch: 0,
    };
    // The probe compiles (a warning is not an error for NVRTC), so only the log shows it.
    let compiled = nvrtc::compile(&bad, "compute_90").expect("the probe is valid CUDA");
    println!("NVRTC log of the probe:\n{}", compiled.log);
    assert!(compiled.log.contains("warning"), "a kernel with warnings must leave them in the log");
}

/// The gossip mix promises bit-identity with its CPU twin (θ·w, then + msg·w per message, each
/// rounded), which NVRTC's default FMA contraction breaks: on an H200 the agents of an all-to-all
/// round came out a few ulps apart where the CPU leaves them equal. The kernels spell the
/// arithmetic with __fmul_rn/__fadd_rn; this pins that no f32 FMA reaches their PTX.
#[test]
fn gossip_mix_ptx_has_no_fused_multiply_add() {
    if !nvrtc::available() {
        assert!(std::env::var_os("CI").is_none(), "CI is set, so the NVRTC check must run");
        println!("SKIPPED gossip_mix_ptx_has_no_fused_multiply_add: libnvrtc not found");
        return;
    }
    let source = KERNEL_SOURCES.iter().find(|s| s.file == "gossip.cu").expect("kernels/gossip.cu");
    let ptx = nvrtc::compile(source, "compute_90").unwrap().ptx.expect("PTX for a virtual target");
    for kernel in ["gossip_mix", "gossip_mix_mailbox"] {
        let start = ptx.find(&format!(".entry {kernel}(")).unwrap_or_else(|| panic!("no PTX entry for {kernel}"));
        let body = &ptx[start..];
        let body = &body[..body[1..].find(".entry").map_or(body.len(), |e| e + 1)];
        assert!(body.contains("mul.rn.f32") && body.contains("add.rn.f32"), "{kernel}: expected rounded mul/add:\n{body}");
        assert!(!body.contains("fma.rn.f32"), "{kernel}: an f32 FMA in the mix breaks bit-identity with the CPU:\n{body}");
    }
}
