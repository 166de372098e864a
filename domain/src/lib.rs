//! wapipe's domain: the writes and reads that more than one producer needs.
//! The workers and the agents' API both depend on this crate, never on each
//! other (DESIGN §2): queuing an outbound message (the shared [`outbox`]),
//! the 24-hour window, receipts that came before their message
//! ([`receipts`]), the lane key, the [`clock`], the decrypted config
//! cache ([`configs`]), leases on periodic jobs ([`leases`]), the events
//! log ([`events`]) and the JSON views it and the API share ([`views`]).

pub mod agents;
pub mod apikeys;
pub mod audit;
pub mod blocking;
pub mod clock;
pub mod configs;
pub mod events;
pub mod followups;
pub mod inbox;
pub mod leases;
pub mod media;
pub mod outbox;
pub mod receipts;
pub mod scenarios;
pub mod stats;
pub mod templates;
pub mod views;
pub mod webhooks;

/// The lane key of a customer's work, built in one place.
pub use wapipe_shared::jobs::lane_key;
