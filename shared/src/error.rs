//! Typed errors of the shared library. Each says what went wrong in words an
//! operator can act on; the binary adds context with anyhow.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CryptoError {
    #[error("bad secret key: {0}")]
    BadKey(String),
    #[error("secret key file {0}")]
    KeyFile(String),
    #[error("encryption failed")]
    Encrypt,
    #[error("a stored secret could not be decrypted (wrong WAPIPE_SECRET_KEY, or corrupted data)")]
    Decrypt,
}

#[derive(Debug, Error)]
pub enum TenantError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "a config with phone_number_id {phone_number_id} already exists (id {existing}{removed})"
    )]
    Duplicate {
        phone_number_id: String,
        existing: uuid::Uuid,
        removed: &'static str,
    },
    #[error("no config with id {0}")]
    NotFound(uuid::Uuid),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}
