//! The one clock every write uses, and the 24-hour customer-service window.

use chrono::{DateTime, Duration, SubsecRound, Utc};

/// Meta's customer-service window: free-form messages may be sent for 24
/// hours after the customer's last inbound message.
pub const WINDOW: Duration = Duration::hours(24);

/// The clock, truncated to microseconds: what both PostgreSQL and SQLite
/// store, so a value read back compares equal to the one written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
