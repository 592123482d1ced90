//! Links HDF5 by name: `chunks.rs` calls its chunk API directly. libnetcdf
//! already loads it; the linker wants it named all the same.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let libs = Command::new("pkg-config")
        .args(["--libs", "hdf5"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some(libs) = libs else {
        // Debian's name, where pkg-config does not know HDF5.
        println!("cargo:rustc-link-lib=hdf5_serial");
        return;
    };
    for flag in libs.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
}
