//! NVRTC: compiles kernels/*.cu to PTX at run time (the CUDA device's module store) and in the
//! tests (every kernel must compile for sm_90 with no warning).
//!
//! libnvrtc is loaded dynamically; cudarc panics when it is missing, so every entry point checks
//! for the library first and turns its absence into an error that says how to install it.

use super::{KernelSource, KERNEL_HEADERS};
use crate::error::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString};

/// How to get libnvrtc without a CUDA toolkit.
pub const INSTALL_HINT: &str = "install it with `pip install nvidia-cuda-nvrtc==13.0.*` and add \
    <site-packages>/nvidia/cu13/lib to LD_LIBRARY_PATH (or install the CUDA 13 toolkit)";

/// Whether libnvrtc can be loaded.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library and drops the handle.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version (major, minor).
pub fn version() -> Result<(i32, i32)> {
    require()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked); the out-pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Backend(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

fn require() -> Result<()> {
    if available() {
        Ok(())
    } else {
        Err(Error::Backend(format!("the NVRTC library (libnvrtc.so) was not found; {INSTALL_HINT}")))
    }
}

/// The result of compiling one source: PTX (for a virtual `compute_XY` target; None for a real
/// `sm_XY` target, which NVRTC compiles to a cubin) plus NVRTC's log (warnings land there even
/// when the compile succeeds).
pub struct Compiled {
    pub ptx: Option<String>,
    pub log: String,
}

/// The options every kernel is compiled with (NVRTC has no -Werror: warnings are reported in
/// the log of a successful compile, which the NVRTC test requires to be empty), for virtual architecture `compute_XY`.
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        // Keep IEEE division and square root (the CPU reference uses them); fmad stays on.
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
    ]
}

/// Compiles `source` for `arch` ("compute_90" for PTX, "sm_90" to check the full compile to
/// machine code). An error carries NVRTC's log.
pub fn compile(source: &KernelSource, arch: &str) -> Result<Compiled> {
    require()?;
    let src = CString::new(source.text)
        .map_err(|_| Error::Backend(format!("{} contains a NUL byte", source.describe())))?;
    let name = CString::new(source.file).expect("kernel file names have no NUL");
    // Every kernels/*.cuh goes in as an in-memory header under its file name, so
    // `#include "prelude.cuh"` resolves with no file system (the CUDA device has none to offer).
    let header_text: Vec<CString> = KERNEL_HEADERS
        .iter()
        .map(|h| CString::new(h.text).map_err(|_| Error::Backend(format!("kernels/{} contains a NUL byte", h.file))))
        .collect::<Result<_>>()?;
    let header_names: Vec<CString> = KERNEL_HEADERS.iter().map(|h| CString::new(h.file).expect("header names have no NUL")).collect();
    let text_ptrs: Vec<*const std::ffi::c_char> = header_text.iter().map(|c| c.as_ptr()).collect();
    let name_ptrs: Vec<*const std::ffi::c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
    let mut prog = std::mem::MaybeUninit::<sys::nvrtcProgram>::uninit();
    // SAFETY: the library is present (checked); every pointer is a live NUL-terminated string
    // that outlives the program (destroyed below, before these vectors drop).
    unsafe {
        sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            src.as_ptr(),
            name.as_ptr(),
            text_ptrs.len() as i32,
            text_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        )
    }
    .result()
    .map_err(|e| Error::Backend(format!("nvrtcCreateProgram for {}: {e:?}", source.describe())))?;
    // SAFETY: nvrtcCreateProgram succeeded, so it wrote the program handle.
    let prog = unsafe { prog.assume_init() };
    let mut opts = options(arch);
    opts.extend(source.defines.iter().map(|d| format!("-D{d}")));
    // SAFETY: `prog` is a live program created above; destroyed below on every path.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: as above; the log is a NUL-terminated C string.
    let log = unsafe { result::get_program_log(prog) }
        .map(|raw| unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().trim().to_string())
        .unwrap_or_default();
    let outcome = match compiled {
        Err(e) => Err(Error::Backend(format!(
            "NVRTC failed to compile {} for {arch} ({e:?}) with options {opts:?}:\n{log}",
            source.describe()
        ))),
        Ok(()) if !arch.starts_with("compute_") => Ok(Compiled { ptx: None, log }),
        // SAFETY: the program compiled; get_ptx copies the NUL-terminated PTX out.
        Ok(()) => unsafe { result::get_ptx(prog) }
            .map(|ptx| {
                let bytes: Vec<u8> = ptx.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                Compiled { ptx: Some(String::from_utf8_lossy(&bytes).into_owned()), log }
            })
            .map_err(|e| Error::Backend(format!("nvrtcGetPTX for {}: {e:?}", source.describe()))),
    };
    // SAFETY: `prog` is live and not used afterwards.
    let _ = unsafe { result::destroy_program(prog) };
    outcome
}
