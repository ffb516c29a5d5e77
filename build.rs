//! Build script: gives the shared library its SONAME and, with the `capi-header` feature,
//! generates the C header with cbindgen.
//!
//! The header goes to `$OUT_DIR/reuseport.h`; the CMake build copies it from there (it
//! finds OUT_DIR in cargo's JSON messages). The script never writes into the source tree
//! unless asked with `REUSEPORT_UPDATE_HEADER=1` (scripts/update-header.sh), so a
//! read-only copy of the sources builds. The committed include/reuseport.h is checked
//! against the generated one by tests/check-header.sh.

fn main() {
    let version = Version::from_env();
    // Only the cdylib gets it: the rlib and the staticlib are linked into something else.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libreuseport.so.{}", version.abi());
    #[cfg(feature = "capi-header")]
    header::generate(&version);
}

/// The package version, from Cargo.toml (cargo passes it in the environment).
struct Version {
    major: u32,
    minor: u32,
    /// Read by the header's version macros only.
    #[cfg_attr(not(feature = "capi-header"), allow(dead_code))]
    patch: u32,
}

impl Version {
    fn from_env() -> Self {
        let part = |name: &str| -> u32 {
            let v = std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by cargo"));
            v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        };
        Version {
            major: part("CARGO_PKG_VERSION_MAJOR"),
            minor: part("CARGO_PKG_VERSION_MINOR"),
            patch: part("CARGO_PKG_VERSION_PATCH"),
        }
    }

    /// The ABI version in the SONAME: MAJOR from 1.0 on; before that every 0.MINOR release
    /// may break the ABI (Cargo's semver rule for 0.x), so it is 0.MINOR, as cargo-c does.
    /// CMakeLists.txt derives the same from Cargo.toml.
    fn abi(&self) -> String {
        if self.major == 0 {
            format!("0.{}", self.minor)
        } else {
            self.major.to_string()
        }
    }
}

#[cfg(feature = "capi-header")]
mod header {
    use std::path::PathBuf;

    use super::Version;

    pub(super) fn generate(version: &Version) {
        let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("reuseport.h");
        println!("cargo:rerun-if-changed=cbindgen.toml");
        println!("cargo:rerun-if-changed=src/capi");
        println!("cargo:rerun-if-env-changed=REUSEPORT_UPDATE_HEADER");
        let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
        // Literals only in the Rust sources, so the version macros come from here.
        config.after_includes = Some(version_macros(version));
        let bindings = cbindgen::Builder::new()
            // Only the C ABI: the core modules' public items are Rust API, not C API.
            .with_src(dir.join("src/capi/mod.rs"))
            .with_config(config)
            .generate()
            .unwrap_or_else(|e| panic!("cbindgen could not generate the header: {e}"));
        // write_to_file leaves an unchanged file alone, so builds stay incremental.
        bindings.write_to_file(&out);
        if std::env::var("REUSEPORT_UPDATE_HEADER").as_deref() == Ok("1") {
            bindings.write_to_file(dir.join("include").join("reuseport.h"));
        }
    }

    fn version_macros(v: &Version) -> String {
        format!(
            "\n/* The version of the header; reuseport_version() gives the library's. */\n\
             #define REUSEPORT_VERSION_MAJOR {major}\n\
             #define REUSEPORT_VERSION_MINOR {minor}\n\
             #define REUSEPORT_VERSION_PATCH {patch}\n\
             #define REUSEPORT_VERSION \"{major}.{minor}.{patch}\"\n\
             /* For #if: MAJOR * 10000 + MINOR * 100 + PATCH. */\n\
             #define REUSEPORT_VERSION_NUMBER {number}",
            major = v.major,
            minor = v.minor,
            patch = v.patch,
            number = v.major * 10000 + v.minor * 100 + v.patch,
        )
    }
}
