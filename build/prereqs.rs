//! What the build needs from the system besides Rust — cmake, a C++ compiler and the zlib
//! headers for ALE (built by the `ale-sys` dependency), and a C++ compiler for the CUDA simulator —
//! checked by build.rs so that a fresh machine is told exactly what is missing and how to get it,
//! instead of ale-sys's "is `cmake` not installed?". (Cargo may run ale-sys's build script before
//! or alongside ours, so README also gives the package line right above its two commands, and
//! `.ci/run` checks the same things.) Shared with tests/build_prereqs.rs through `#[path]`.

use std::path::Path;
use std::process::{Command, Stdio};

/// The one command that installs everything on Debian and Ubuntu.
pub const APT_LINE: &str = "sudo apt-get install -y cmake g++ zlib1g-dev";

/// Whether `program --version` runs.
fn runs(program: &std::ffi::OsStr) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether `cc` (a C or C++ compiler driver) finds `<zlib.h>` (with `flags` added).
fn finds_zlib(cc: &Path, flags: &[&str]) -> bool {
    let Ok(mut child) = Command::new(cc)
        .args(flags)
        .args(["-E", "-x", "c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"#include <zlib.h>\n");
    }
    child.wait().is_ok_and(|s| s.success())
}

/// What is missing, in words ("cmake", "a C++ compiler (g++)", "the zlib headers (zlib.h)").
/// `cmake`: the cmake to run (ale-sys's cmake crate honours `$CMAKE`); `cxx`: the C++ compiler;
/// `flags`: extra compiler flags for the zlib probe.
pub fn missing(cmake: &std::ffi::OsStr, cxx: &Path, flags: &[&str]) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !runs(cmake) {
        missing.push("cmake");
    }
    if !runs(cxx.as_os_str()) {
        missing.push("a C++ compiler (g++)");
    } else if !finds_zlib(cxx, flags) {
        missing.push("the zlib headers (zlib.h)");
    }
    missing
}

/// The message for what is missing: what, why, and the command that installs it.
pub fn advice(missing: &[&str]) -> String {
    format!(
        "gala-gpu cannot be built on this machine: {} missing (the Atari emulator ALE is compiled from C++ with cmake and links zlib). On Debian/Ubuntu install them with: {APT_LINE} (other systems: the same packages from your package manager), then build again.",
        match missing {
            [one] => format!("{one} is"),
            many => format!("{} are", many.join(", ")),
        }
    )
}
