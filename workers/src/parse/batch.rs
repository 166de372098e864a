//! How the per-table writes of a batch size their statements. Every table
//! is written with a handful of multi-row statements for the whole batch
//! instead of several statements per message: round trips, not rows, are
//! what a worker pays for (measured: at one message per statement the
//! worker and PostgreSQL spent their time in socket wake-ups).

use wapipe_shared::db::pad_pow2;

/// Rows per multi-row INSERT: below PostgreSQL's 65,535 bind parameters and
/// SQLite's 32,766 for the widest table (`messages`, ~45 columns). Batches
/// are split into power-of-two chunks and `IN` lists padded likewise
/// ([`wapipe_shared::db::pow2_chunks`], [`pad_pow2`]) so each statement has
/// a few cached shapes.
pub(super) const CHUNK: usize = 256;
/// Values per `IN (…)` list.
pub(super) const IN_CHUNK: usize = 1024;

/// `IN (…)` values, padded to a power-of-two count.
pub(super) fn any_of<T: Clone>(values: impl IntoIterator<Item = T>) -> Vec<T> {
    pad_pow2(values.into_iter().collect())
}
