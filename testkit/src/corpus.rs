//! Meta's public payloads (`shared/meta-corpus`), read where they lie
//! beside the repository and never copied into it. Tests that use them
//! skip cleanly when they are absent.

use std::path::PathBuf;

/// `../shared/meta-corpus` from the workspace root, or the folder
/// `WAPIPE_META_CORPUS` names (a checkout elsewhere, such as a git
/// worktree), if present.
pub fn corpus_dir() -> Option<PathBuf> {
    let p = std::env::var_os("WAPIPE_META_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/meta-corpus")
        });
    p.is_dir().then_some(p)
}

/// The corpus sample `folder/name` as JSON, or `None` (the test then
/// skips) when the corpus is absent.
pub fn corpus_sample(folder: &str, name: &str) -> Option<serde_json::Value> {
    let path = corpus_dir()?.join(folder).join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}
