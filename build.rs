//! Generates include/reuseport.h from the `capi` module's doc comments with cbindgen.
//! The header is committed; CI regenerates it and fails when it differs.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let header = dir.join("include").join("reuseport.h");
    match cbindgen::Builder::new()
        // Only the C ABI: the core modules' public items are Rust API, not C API.
        .with_src(dir.join("src/capi/mod.rs"))
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            // write_to_file leaves the file alone when unchanged, so builds stay incremental.
            bindings.write_to_file(&header);
        }
        Err(e) => panic!("cbindgen could not generate {}: {e}", header.display()),
    }
}
