//! Build script: links ALE's C++ runtime, and turns kernels/*.cu (and kernels/test/*.cu) into
//!   1. the CUDA simulator: each file is compiled by the host C++ compiler against
//!      kernels/sim/cuda_sim.h, with a generated C++ shim per `extern "C" __global__` kernel that
//!      unpacks cuLaunchKernel-style `void** args`;
//!   2. `$OUT_DIR/kernels_generated.rs`: the kernel sources (for NVRTC at run time), every
//!      kernel's parameter list (so launches are checked before they reach a device), and the
//!      table kernel name -> simulator shim.
//! A file listed in `VARIANTS` is built a second time with a macro defined and its kernels
//! renamed (`<name>_tf32`: kernels/conv.cu's TF32 tensor-core GEMMs), for both targets.
//!
//! Adding a kernel therefore needs no hand-written glue: write it in a .cu file and rebuild.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One parameter of a kernel, as the Rust side checks it.
#[derive(Clone)]
enum Param {
    /// Pointer to the named C element type ("float", "double", "unsigned int", ...).
    Pointer(String),
    /// A scalar: one of "u32", "i32", "u64", "f32", "f64" (the `KernelArg` variants).
    Scalar(&'static str),
}

struct Kernel {
    name: String,
    file: String,
    /// (C type as written without `__restrict__`, parsed kind)
    params: Vec<(String, Param)>,
    /// "" for the plain build of `file`, else the `Variant` suffix this entry belongs to.
    variant: &'static str,
}

/// A second build of one kernel file with a macro defined and every kernel of the file renamed
/// `<name>_<suffix>` (so both builds link into one simulator and load into one CUDA module
/// store). Only `kernels` (the ones the engine launches in that form) get table entries:
/// signature, simulator shim, CUDA function.
struct Variant {
    suffix: &'static str,
    file: &'static str,
    define: &'static str,
    kernels: &'static [&'static str],
    /// The oldest GPU architecture (major * 10 + minor) the build compiles for: a CUDA device
    /// below it skips the build, and its kernels are absent there.
    min_arch: u32,
}

/// kernels/conv.cu's GEMM kernels with TF32 tensor-core tile products (`precision = "tf32"`; see
/// "Precision" in conv.cu).
const VARIANTS: &[Variant] = &[Variant {
    suffix: "tf32",
    file: "conv.cu",
    define: "GALA_TF32",
    kernels: &[
        "conv_forward_u8",
        "conv_forward_u8_words",
        "conv_forward_f32",
        "conv_backward_data",
        "conv_backward_filter_u8",
        "conv_backward_filter_u8_words",
        "conv_backward_filter_f32",
        "fc_forward",
        "fc_backward_data",
        "fc_backward_filter",
    ],
    // mma.sync with TF32 operands and cvt.rna.tf32 need sm_80.
    min_arch: 80,
}];

#[path = "build/prereqs.rs"]
mod prereqs;

fn main() {
    check_system_prerequisites();
    link_ale_runtime();
    build_cuda_simulator_and_kernel_tables();
}

/// Stops with one clear message when cmake, a C++ compiler or the zlib headers are missing
/// (build/prereqs.rs).
fn check_system_prerequisites() {
    println!("cargo:rerun-if-env-changed=CMAKE");
    let cmake = std::env::var_os("CMAKE").unwrap_or_else(|| "cmake".into());
    let cxx = cc::Build::new().cpp(true).cargo_metadata(false).cargo_debug(false).get_compiler().path().to_path_buf();
    let missing = prereqs::missing(&cmake, &cxx, &[]);
    if !missing.is_empty() {
        eprintln!("{}", prereqs::advice(&missing));
        println!("cargo:warning={}", prereqs::advice(&missing));
        std::process::exit(1);
    }
}

/// Link lines for the ALE C++ library that `ale-sys` builds with cmake: ale-sys 0.1.2 links the
/// static libale but not the C++ runtime or zlib it depends on, so the final link of every binary
/// and test would fail with undefined `std::` and `gz*` symbols without these two lines.
fn link_ale_runtime() {
    println!("cargo:rustc-link-lib=stdc++");
    println!("cargo:rustc-link-lib=z");
    println!("cargo:rerun-if-changed=build.rs");
}

/// Everything kernels/ needs at build time (see the module docs).
fn build_cuda_simulator_and_kernel_tables() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels_dir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=kernels/sim/cuda_sim.h");
    println!("cargo:rerun-if-changed=kernels/sim/sim_runtime.cpp");
    println!("cargo:rerun-if-changed=kernels/sim/sim_profile.h");
    println!("cargo:rerun-if-changed=kernels/sim/sim_profile.cpp");

    // (path relative to kernels/, absolute path); engine kernels first, then the simulator's own.
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (dir, prefix) in [(kernels_dir.clone(), ""), (kernels_dir.join("test"), "test/")] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        found.sort();
        for p in found {
            println!("cargo:rerun-if-changed={}", p.display());
            files.push((format!("{prefix}{}", p.file_name().unwrap().to_string_lossy()), p));
        }
    }

    // kernels/*.cuh: headers the .cu files include (the prelude). The simulator build finds them
    // beside the .cu; NVRTC gets them in memory (KERNEL_HEADERS); the signature parser never
    // reads them, so a header must not define kernels.
    let mut headers: Vec<PathBuf> = std::fs::read_dir(&kernels_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", kernels_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cuh"))
        .collect();
    headers.sort();
    for h in &headers {
        println!("cargo:rerun-if-changed={}", h.display());
        let text = std::fs::read_to_string(h).unwrap_or_else(|e| panic!("cannot read {}: {e}", h.display()));
        assert!(
            parse_kernels(&strip_comments(&text), "header").is_empty(),
            "{}: headers must not define kernels (build.rs tables only the kernels of .cu files)",
            h.display()
        );
    }

    let mut kernels: Vec<Kernel> = Vec::new();
    let shim_dir = out.join("sim_shims");
    std::fs::create_dir_all(&shim_dir).unwrap();
    // The plain simulator and, from the same kernel text, the profiled variant (GCC's
    // -fsanitize=thread instrumentation calls the hooks in sim_profile.cpp before every load and
    // store; no TSan runtime is linked). Same optimisation flags, so both run the same code.
    let sim_build = || {
        let mut b = cc::Build::new();
        b.cpp(true)
        .std("c++17")
        // The simulator must compute what the CPU reference computes: no FMA contraction (Rust
        // never contracts), no fast-math.
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-fno-strict-aliasing")
        // Kernel parameters that a kernel leaves unused are not the simulator's business.
        .flag_if_supported("-Wno-unused-parameter")
        .include(kernels_dir.join("sim"));
        b
    };
    let mut build = sim_build();
    build.file(kernels_dir.join("sim").join("sim_runtime.cpp")).file(kernels_dir.join("sim").join("sim_profile.cpp"));
    let mut profiled = sim_build();
    profiled
        .define("GALA_SIM_PROFILE_BUILD", "1")
        .flag("-fsanitize=thread")
        // Only loads and stores are wanted: no function entry/exit calls.
        .flag("--param=tsan-instrument-func-entry-exit=0")
        .flag("--param=tsan-distinguish-volatile=0");
    // The sources NVRTC compiles: (file, text path, variant suffix, -D definitions, oldest arch).
    let mut sources: Vec<(String, PathBuf, &'static str, Vec<String>, u32)> = Vec::new();
    for (rel, path) in &files {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let found = parse_kernels(&strip_comments(&text), rel);
        let stem = rel.replace(['/', '.'], "_");
        for profiled_build in [false, true] {
            let shim = sim_shim(rel, path, &found, None, profiled_build);
            let shim_path = shim_dir.join(format!("{stem}{}.cpp", if profiled_build { ".profiled" } else { "" }));
            write_if_changed(&shim_path, &shim);
            if profiled_build { profiled.file(&shim_path) } else { build.file(&shim_path) };
        }
        sources.push((rel.clone(), path.clone(), "", Vec::new(), 0));
        for v in VARIANTS.iter().filter(|v| v.file == rel) {
            for name in v.kernels {
                assert!(found.iter().any(|k| k.name == *name), "build.rs VARIANTS: kernels/{rel} has no kernel `{name}`");
            }
            for profiled_build in [false, true] {
                let shim = sim_shim(rel, path, &found, Some(v), profiled_build);
                let shim_path = shim_dir.join(format!("{stem}.{}{}.cpp", v.suffix, if profiled_build { ".profiled" } else { "" }));
                write_if_changed(&shim_path, &shim);
                if profiled_build { profiled.file(&shim_path) } else { build.file(&shim_path) };
            }
            let mut defines = vec![format!("{}=1", v.define)];
            defines.extend(found.iter().map(|k| format!("{}={}_{}", k.name, k.name, v.suffix)));
            sources.push((rel.clone(), path.clone(), v.suffix, defines, v.min_arch));
            kernels.extend(found.iter().filter(|k| v.kernels.contains(&k.name.as_str())).map(|k| Kernel {
                name: format!("{}_{}", k.name, v.suffix),
                file: k.file.clone(),
                params: k.params.clone(),
                variant: v.suffix,
            }));
        }
        kernels.extend(found);
    }
    assert!(VARIANTS.iter().all(|v| files.iter().any(|(rel, _)| rel == v.file)), "build.rs VARIANTS names a missing kernel file");
    for (i, a) in kernels.iter().enumerate() {
        if let Some(b) = kernels[..i].iter().find(|b| b.name == a.name) {
            panic!("kernel `{}` is defined in both kernels/{} and kernels/{}; kernel names must be unique", a.name, b.file, a.file);
        }
    }
    // Profiled first: its objects need the runtime and the hooks of the plain library, and a
    // static library only resolves symbols of the ones linked before it.
    profiled.compile("gala_cuda_sim_profiled");
    build.compile("gala_cuda_sim");

    let mut gen = String::new();
    writeln!(gen, "// Generated by build.rs from kernels/**/*.cu; do not edit.").unwrap();
    writeln!(gen, "pub static KERNEL_SOURCES: &[KernelSource] = &[").unwrap();
    for (rel, path, variant, defines, min_arch) in &sources {
        writeln!(
            gen,
            "    KernelSource {{ file: {rel:?}, text: include_str!({:?}), variant: {variant:?}, defines: &{defines:?}, min_arch: {min_arch} }},",
            path.display().to_string()
        )
        .unwrap();
    }
    writeln!(gen, "];").unwrap();
    writeln!(gen, "pub static KERNEL_HEADERS: &[KernelSource] = &[").unwrap();
    for h in &headers {
        let name = h.file_name().unwrap().to_string_lossy();
        writeln!(gen, "    KernelSource {{ file: {name:?}, text: include_str!({:?}), variant: \"\", defines: &[], min_arch: 0 }},", h.display().to_string())
            .unwrap();
    }
    writeln!(gen, "];").unwrap();
    writeln!(gen, "pub static KERNEL_SIGNATURES: &[KernelSignature] = &[").unwrap();
    for k in &kernels {
        let params: Vec<String> = k
            .params
            .iter()
            .map(|(_, p)| match p {
                Param::Pointer(elem) => format!("ParamKind::Pointer({elem:?})"),
                Param::Scalar(s) => format!("ParamKind::{}", s.to_uppercase()),
            })
            .collect();
        writeln!(
            gen,
            "    KernelSignature {{ name: {:?}, file: {:?}, variant: {:?}, params: &[{}] }},",
            k.name,
            k.file,
            k.variant,
            params.join(", ")
        )
        .unwrap();
    }
    writeln!(gen, "];").unwrap();
    writeln!(gen, "extern \"C\" {{").unwrap();
    for k in &kernels {
        writeln!(gen, "    fn gala_sim_shim_{}(args: *mut *mut core::ffi::c_void);", k.name).unwrap();
        writeln!(gen, "    fn gala_sim_pshim_{}(args: *mut *mut core::ffi::c_void);", k.name).unwrap();
    }
    writeln!(gen, "}}").unwrap();
    writeln!(gen, "pub static SIM_SHIMS: &[(&str, SimShim)] = &[").unwrap();
    for k in &kernels {
        writeln!(gen, "    ({:?}, gala_sim_shim_{}),", k.name, k.name).unwrap();
    }
    writeln!(gen, "];").unwrap();
    writeln!(gen, "pub static SIM_PROFILED_SHIMS: &[(&str, SimShim)] = &[").unwrap();
    for k in &kernels {
        writeln!(gen, "    ({:?}, gala_sim_pshim_{}),", k.name, k.name).unwrap();
    }
    writeln!(gen, "];").unwrap();
    write_if_changed(&out.join("kernels_generated.rs"), &gen);
}

/// The C++ file that builds kernels/`rel` (its `variant` build, if any) for the simulator, with
/// one `extern "C" void <prefix><kernel>(void** args)` per kernel that unpacks cuLaunchKernel-style
/// arguments. A variant defines its macro and renames every kernel `<kernel>_<suffix>` (shims
/// only for the variant's own list). The profiled build (`profiled`) renames every kernel again
/// (its plain twin keeps the C name), gets static helpers from cuda_sim.h's
/// GALA_SIM_PROFILE_BUILD (set by its cc::Build) and names its shims gala_sim_pshim_<kernel>.
fn sim_shim(rel: &str, path: &Path, found: &[Kernel], variant: Option<&Variant>, profiled: bool) -> String {
    let mut shim = String::new();
    let (what, prefix) = if profiled { (" (profiled build)", "gala_sim_pshim_") } else { ("", "gala_sim_shim_") };
    let suffix = variant.map(|v| format!("_{}", v.suffix)).unwrap_or_default();
    let variant_note = variant.map(|v| format!(", variant {}", v.suffix)).unwrap_or_default();
    writeln!(shim, "// Generated by build.rs from kernels/{rel}{what}{variant_note}; do not edit.").unwrap();
    if let Some(v) = variant {
        // Internal linkage for its helpers (see cuda_sim.h), then the variant's macro.
        writeln!(shim, "#define GALA_SIM_VARIANT_BUILD 1").unwrap();
        writeln!(shim, "#include \"cuda_sim.h\"").unwrap();
        writeln!(shim, "#define {} 1", v.define).unwrap();
    } else {
        writeln!(shim, "#include \"cuda_sim.h\"").unwrap();
    }
    for k in found {
        let c_name = if profiled { format!("gala_sim_profiled_{}{suffix}", k.name) } else { format!("{}{suffix}", k.name) };
        if c_name != k.name {
            writeln!(shim, "#define {} {c_name}", k.name).unwrap();
        }
    }
    writeln!(shim, "#include \"{}\"", path.display()).unwrap();
    for k in found.iter().filter(|k| variant.is_none_or(|v| v.kernels.contains(&k.name.as_str()))) {
        let args: Vec<String> = k.params.iter().enumerate().map(|(i, (ty, _))| format!("*({ty}*)args[{i}]")).collect();
        writeln!(shim, "extern \"C\" void {prefix}{}{suffix}(void** args) {{ {}({}); }}", k.name, k.name, args.join(", ")).unwrap();
    }
    shim
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Removes // and /* */ comments (kernel sources have no string literals worth keeping, except
/// the "C" of extern "C", which contains no comment markers).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Finds every `extern "C" __global__ [__launch_bounds__(..)] void name(params)`.
fn parse_kernels(src: &str, file: &str) -> Vec<Kernel> {
    let mut kernels = Vec::new();
    let mut rest = src;
    while let Some(pos) = rest.find("extern \"C\"") {
        rest = &rest[pos + "extern \"C\"".len()..];
        let head = rest.trim_start();
        let Some(after_global) = head.strip_prefix("__global__") else { continue };
        let open = after_global.find('(').unwrap_or_else(|| panic!("kernels/{file}: kernel without a parameter list"));
        let mut before = after_global[..open].trim().to_string();
        let mut params_start = open;
        if let Some(lb) = before.find("__launch_bounds__") {
            // Skip the launch-bounds arguments: the real parameter list is the next '(' after them.
            let lb_close = after_global[lb..].find(')').map(|c| lb + c).expect("unclosed __launch_bounds__");
            let next_open = after_global[lb_close..].find('(').map(|o| lb_close + o).expect("kernel without parameters");
            before = format!("{} {}", &after_global[..lb], &after_global[lb_close + 1..next_open]);
            params_start = next_open;
        }
        let words: Vec<&str> = before.split_whitespace().collect();
        assert!(
            words.len() == 2 && words[0] == "void",
            "kernels/{file}: cannot parse the kernel declaration `{}`; write `extern \"C\" __global__ void name(...)`",
            before.trim()
        );
        let name = words[1].to_string();
        let close = after_global[params_start..].find(')').map(|c| params_start + c).expect("unclosed parameter list");
        let list = after_global[params_start + 1..close].trim();
        let mut params = Vec::new();
        if !list.is_empty() && list != "void" {
            for raw in list.split(',') {
                let decl = raw.replace("__restrict__", " ");
                let decl = decl.trim();
                let name_start = decl
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|i| i + 1)
                    .unwrap_or_else(|| panic!("kernels/{file}: kernel `{name}`: parameter `{decl}` has no name"));
                let ty = decl[..name_start].trim().to_string();
                let norm = ty.split_whitespace().collect::<Vec<_>>().join(" ");
                let kind = if norm.ends_with('*') {
                    let elem = norm.trim_end_matches('*').replace("const", " ");
                    Param::Pointer(elem.split_whitespace().collect::<Vec<_>>().join(" "))
                } else {
                    Param::Scalar(match norm.trim_start_matches("const ") {
                        "unsigned int" | "unsigned" => "u32",
                        "int" => "i32",
                        "unsigned long long" | "unsigned long long int" => "u64",
                        "float" => "f32",
                        "double" => "f64",
                        other => panic!(
                            "kernels/{file}: kernel `{name}`: parameter type `{other}` is not supported; use a pointer, unsigned int, int, unsigned long long, float or double"
                        ),
                    })
                };
                params.push((ty, kind));
            }
        }
        kernels.push(Kernel { name, file: file.to_string(), params, variant: "" });
        rest = &after_global[close..];
    }
    kernels
}
