//! Link lines for the ALE C++ library that `ale-sys` builds with cmake: ale-sys 0.1.2 links the
//! static libale but not the C++ runtime or zlib it depends on, so the final link of every binary
//! and test would fail with undefined `std::` and `gz*` symbols without these two lines.
fn main() {
    println!("cargo:rustc-link-lib=stdc++");
    println!("cargo:rustc-link-lib=z");
    println!("cargo:rerun-if-changed=build.rs");
}
