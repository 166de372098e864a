//! wapipe-sim: a stand-in for Meta (webhook sender and Graph API) for development, tests and benchmarks.
//!
//! - [`load`]: signed webhook load generator, plus the no-work baseline server;
//! - [`replay`]: posts payload files the way Meta delivers them;
//! - [`graph`]: a fake Graph API that accepts sends, calls back with status
//!   webhooks and injects Meta's errors;
//! - [`payloads`]: realistic WhatsApp Cloud API webhook envelopes;
//! - [`fanout`]: many WebSocket clients of wapipe's events stream;
//! - [`stats`]: latency percentiles.
//!
//! Everything runs in-process too, so tests and benches can start the servers
//! on `127.0.0.1:0` and call the clients directly.

pub mod fanout;
pub mod graph;
pub mod load;
pub mod payloads;
pub mod replay;
pub mod stats;

mod http;

pub use graph::{
    ErrorRule, GraphConfig, GraphHandle, MediaCounts, SimMedia, UploadRecord, spawn_graph,
};
pub use load::{LoadConfig, LoadReport, run_load, spawn_nowork};
pub use replay::{ReplayConfig, ReplayReport, replay_paths};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `X-Hub-Signature-256` header name Meta signs webhooks with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Meta's webhook signature: `sha256=<hex HMAC-SHA256(app secret, raw body)>`.
pub fn sign_body(app_secret: &[u8], body: &[u8]) -> String {
    Signer::new(app_secret).sign(body)
}

/// A keyed HMAC kept ready, so hot loops do not redo the key schedule for
/// every body.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl Signer {
    pub fn new(app_secret: &[u8]) -> Self {
        // HMAC accepts keys of any length (long keys are hashed), so this
        // constructor cannot fail.
        let mac = match Hmac::<Sha256>::new_from_slice(app_secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        Self { mac }
    }

    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// Parses durations such as `60s`, `500ms`, `2m`, `1.5s`, `1h` or a bare
/// number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 60s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// An HTTP client for our local peers (replay, status callbacks, the
/// fan-out check). reqwest is built with rustls and no default crypto
/// provider workspace-wide, so the ring one is installed first.
pub(crate) fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(timeout).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn signature_matches_known_vector() {
        // HMAC-SHA256 test vector from RFC 4231, test case 2.
        assert_eq!(
            sign_body(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
