//! Meta's public payloads (`shared/meta-corpus`), read where they lie
//! beside the repository and never copied into it. Tests that use them
//! skip cleanly when they are absent.

use std::path::PathBuf;

/// `../shared/meta-corpus` from the workspace root, if present.
pub fn corpus_dir() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/meta-corpus");
    p.is_dir().then_some(p)
}
