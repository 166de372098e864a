//! Hashes the migrations' sources at compile time into
//! `WAPIPE_MIGRATIONS_SOURCE_HASH`, so a hash always describes the code
//! compiled with it. The test kit names its migrated template databases by
//! it: hashing the files at run time instead let a test binary built before
//! an edit create the template of the edited sources with the old schema,
//! and every later run (on any checkout of the same text) reuse it.

use std::hash::{DefaultHasher, Hasher};
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    let mut files: Vec<PathBuf> = std::fs::read_dir("src")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        if let Ok(text) = std::fs::read(&f) {
            h.write(f.file_name().unwrap_or_default().as_encoded_bytes());
            h.write(&text);
        }
    }
    println!(
        "cargo:rustc-env=WAPIPE_MIGRATIONS_SOURCE_HASH={:016x}",
        h.finish()
    );
}
