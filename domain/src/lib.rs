//! wapipe's domain: the writes and reads that more than one producer needs.
//! The workers and the agents' API both depend on this crate, never on each
//! other (DESIGN §2): queuing an outbound message (the shared outbox), the
//! 24-hour window, receipts that came before their message, the lane key,
//! the clock and the decrypted config cache live here.

pub mod agents;
pub mod clock;
pub mod followups;
