//! Secrets at rest (AES-256-GCM with random 96-bit nonces), Meta's webhook
//! signature (HMAC-SHA256 over the raw body, compared in constant time), and
//! the Standard Webhooks signature of the webhooks we send (`whsec_` secrets).

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

use crate::error::CryptoError;

/// Ciphertexts carry a version so the format can change without guessing.
const CIPHERTEXT_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// The key that encrypts secrets at rest. Never printed: `Debug` is redacted.
pub struct SecretKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(redacted)")
    }
}

impl SecretKey {
    pub fn from_base64(encoded: &str) -> Result<Self, CryptoError> {
        let bytes = B64
            .decode(encoded.trim())
            .map_err(|_| CryptoError::BadKey("WAPIPE_SECRET_KEY is not valid base64".into()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
            CryptoError::BadKey(format!(
                "WAPIPE_SECRET_KEY must decode to 32 bytes, got {}",
                v.len()
            ))
        })?;
        Ok(Self(SecretBox::new(Box::new(arr))))
    }

    pub fn generate() -> Self {
        let mut arr = [0u8; 32];
        rand::rng().fill_bytes(&mut arr);
        Self(SecretBox::new(Box::new(arr)))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.expose_secret())
    }

    /// Reads the key file, or creates it with mode 0600 when it does not
    /// exist (embedded mode's first start). `create_new` makes two processes
    /// starting at once agree on one key instead of overwriting each other.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        match std::fs::read_to_string(path) {
            Ok(s) => return Self::from_base64(&s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CryptoError::KeyFile(format!("{}: {e}", path.display()))),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| CryptoError::KeyFile(format!("{}: {e}", dir.display())))?;
        }
        let key = Self::generate();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(key.to_base64().as_bytes())
                    .map_err(|e| CryptoError::KeyFile(format!("{}: {e}", path.display())))?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let s = std::fs::read_to_string(path)
                    .map_err(|e| CryptoError::KeyFile(format!("{}: {e}", path.display())))?;
                Self::from_base64(&s)
            }
            Err(e) => Err(CryptoError::KeyFile(format!("{}: {e}", path.display()))),
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.expose_secret().into())
    }

    /// `v1:` + base64(nonce || ciphertext+tag). A fresh random nonce per call,
    /// so equal plaintexts never produce equal ciphertexts.
    pub fn encrypt(&self, plaintext: &str) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("{CIPHERTEXT_PREFIX}{}", B64.encode(out)))
    }

    pub fn decrypt(&self, stored: &str) -> Result<SecretString, CryptoError> {
        let b64 = stored
            .strip_prefix(CIPHERTEXT_PREFIX)
            .ok_or(CryptoError::Decrypt)?;
        let raw = B64.decode(b64).map_err(|_| CryptoError::Decrypt)?;
        if raw.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let pt = self
            .cipher()
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Decrypt)?;
        let s = String::from_utf8(pt).map_err(|_| CryptoError::Decrypt)?;
        Ok(SecretString::from(s))
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The `X-Hub-Signature-256` value Meta would send for `body`.
pub fn sign_body(app_secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(app_secret).expect("hmac takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Parses `sha256=<hex>` once, so checking it against several app secrets
/// does not re-decode the header each time.
pub fn parse_signature_header(header: &str) -> Option<[u8; 32]> {
    let hex_part = header.trim().strip_prefix("sha256=")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Constant-time check of a parsed signature over the raw bytes as received.
pub fn verify_signature(app_secret: &[u8], body: &[u8], expected: &[u8; 32]) -> bool {
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(app_secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(expected).is_ok()
}

/// Constant-time string equality, for the verification handshake's token.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The prefix of a Standard Webhooks signing secret.
pub const WHSEC_PREFIX: &str = "whsec_";

/// A new Standard Webhooks secret: `whsec_` + base64 of 32 random bytes
/// (the spec asks for 24 to 64).
pub fn new_webhook_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    format!("{WHSEC_PREFIX}{}", B64.encode(raw))
}

/// The HMAC key of a `whsec_` secret: the base64 after the prefix.
pub fn webhook_secret_key(secret: &str) -> Result<Vec<u8>, CryptoError> {
    let b64 = secret.strip_prefix(WHSEC_PREFIX).unwrap_or(secret);
    B64.decode(b64).map_err(|_| CryptoError::Decrypt)
}

/// The `webhook-signature` header of the Standard Webhooks spec: `v1,` +
/// base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` (the raw bytes sent).
pub fn standard_webhook_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_roundtrip_and_nonce_randomness() {
        let key = SecretKey::generate();
        let a = key.encrypt("EAAG-token").unwrap();
        let b = key.encrypt("EAAG-token").unwrap();
        assert_ne!(a, b, "random nonces");
        assert!(!a.contains("EAAG-token"));
        assert_eq!(key.decrypt(&a).unwrap().expose_secret(), "EAAG-token");
        let other = SecretKey::generate();
        assert!(other.decrypt(&a).is_err(), "wrong key must not decrypt");
        assert!(key.decrypt("v1:AAAA").is_err());
        assert!(key.decrypt("plain").is_err());
    }

    #[test]
    fn key_parsing_errors_are_clear() {
        assert!(SecretKey::from_base64("not base64!!").is_err());
        let short = B64.encode([1u8; 16]);
        let err = SecretKey::from_base64(&short).unwrap_err().to_string();
        assert!(err.contains("32 bytes"), "{err}");
        let k = SecretKey::generate();
        assert!(SecretKey::from_base64(&k.to_base64()).is_ok());
    }

    #[test]
    fn key_file_is_created_once_with_0600() {
        let dir = wapipe_testkit::db::temp_dir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let k1 = SecretKey::load_or_create(&path).unwrap();
        let k2 = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(k1.to_base64(), k2.to_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    /// The example of the Standard Webhooks reference libraries.
    #[test]
    fn standard_webhook_signature_matches_the_spec_example() {
        let key = webhook_secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard_webhook_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let fresh = new_webhook_secret();
        assert!(fresh.starts_with(WHSEC_PREFIX));
        assert_eq!(webhook_secret_key(&fresh).unwrap().len(), 32);
    }

    #[test]
    fn signature_checks_raw_bytes() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let header = sign_body(b"s3cret", body);
        let parsed = parse_signature_header(&header).unwrap();
        assert!(verify_signature(b"s3cret", body, &parsed));
        assert!(!verify_signature(b"other", body, &parsed));
        let mut tampered = body.to_vec();
        tampered[3] ^= 1;
        assert!(!verify_signature(b"s3cret", &tampered, &parsed));
        assert!(parse_signature_header("sha1=abc").is_none());
        assert!(parse_signature_header("sha256=zz").is_none());
        assert!(parse_signature_header("").is_none());
    }
}
