//! Nothing to build: this script exists for its build-dependency. Turning on the `mpi` feature
//! brings bindgen to the host, which turns on memchr's `std` there; memchr is also under cubecl's
//! proc-macros (through tynm and nom), so without this the `mpi` build recompiled cubecl and all of
//! burn after the default build (3 min 46 s of CI, 2026-12-04). Asking for the same memchr
//! features here makes both builds share their host crates. Likewise syn's `fold`: the
//! workspace's tests bring it (mdm-serve's browser test, through fantoccini's webdriver and
//! yoke-derive), the `mpi` build alone would not, and every proc-macro above syn (burn's, cubecl's)
//! was rebuilt (about 3 min 20 s of CI, 2026-12-07).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
