//! The first answer to an API request that carried an `Idempotency-Key`:
//! unique per (API key, key), so a replayed request finds it instead of
//! doing the work again. The row is claimed (inserted) before the work and
//! holds no response until the work is done.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub api_key_id: Uuid,
    pub key: String,
    /// sha256 of method, path and body: the same key with another request is refused.
    pub request_hash: String,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::api_keys::Entity",
        from = "Column::ApiKeyId",
        to = "super::api_keys::Column::Id"
    )]
    ApiKey,
}

impl Related<super::api_keys::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ApiKey.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
