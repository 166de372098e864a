//! The statuses of a `scenario_runs` row.

/// Waiting for the customer's choice among the options of `current_item_id`.
pub const WAITING: &str = "waiting";
/// Sent everything it had; nothing to choose.
pub const FINISHED: &str = "finished";
/// Ended by an exit keyword.
pub const EXITED: &str = "exited";
/// Ended after the fallbacks were used up (or its item was removed).
pub const ABANDONED: &str = "abandoned";
/// Ended because the customer started another scenario.
pub const REPLACED: &str = "replaced";
/// Ended by a handoff item: the chat waits for a human.
pub const HANDOFF: &str = "handoff";
