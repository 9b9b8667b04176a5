//! The build's check of the system prerequisites (build/prereqs.rs, run by build.rs): a missing
//! cmake, compiler or zlib header is named with the command that installs it.

#[path = "../build/prereqs.rs"]
mod prereqs;

use std::path::Path;

/// The compiler the build uses (CXX, else c++), which this machine has: it built the tests.
fn cxx() -> std::path::PathBuf {
    std::env::var_os("CXX").map(Into::into).unwrap_or_else(|| "c++".into())
}

#[test]
fn this_machine_has_what_the_build_needs() {
    let cmake = std::env::var_os("CMAKE").unwrap_or_else(|| "cmake".into());
    assert_eq!(prereqs::missing(&cmake, &cxx(), &[]), Vec::<&str>::new());
}

#[test]
fn what_is_missing_is_named_with_the_command_that_installs_it() {
    let missing = prereqs::missing("/nonexistent/cmake".as_ref(), &cxx(), &[]);
    assert_eq!(missing, ["cmake"]);
    let advice = prereqs::advice(&missing);
    assert!(advice.contains("cmake is missing") && advice.contains("sudo apt-get install -y cmake g++ zlib1g-dev"), "{advice}");
    // A compiler that finds no system headers stands for a machine without zlib1g-dev.
    assert_eq!(prereqs::missing("/nonexistent/cmake".as_ref(), &cxx(), &["-nostdinc"]), ["cmake", "the zlib headers (zlib.h)"]);
    assert_eq!(prereqs::missing("cmake".as_ref(), Path::new("/nonexistent/c++"), &[]), ["a C++ compiler (g++)"]);
    assert!(prereqs::advice(&["cmake", "the zlib headers (zlib.h)"]).contains("cmake, the zlib headers (zlib.h) are missing"));
}
