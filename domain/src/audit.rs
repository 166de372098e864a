//! `audit_log` rows: who changed what, with the state before and after.
//! Written in the transaction of the change it records.

use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::entities::audit_log;

use crate::clock;

/// Who acted: `admin`, `agent`, `cli`, `bot`, `system`, and the agent or
/// key id when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who {
    pub kind: &'static str,
    pub id: Option<Uuid>,
}

/// One change to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub config_id: Option<Uuid>,
    pub who: Who,
    pub action: &'a str,
    pub entity_type: &'a str,
    pub entity_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

pub async fn record<C: ConnectionTrait>(db: &C, e: Entry<'_>) -> Result<(), sea_orm::DbErr> {
    let now = clock::now();
    audit_log::Entity::insert(audit_log::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(e.config_id),
        actor_type: Set(e.who.kind.to_owned()),
        actor_id: Set(e.who.id),
        action: Set(e.action.to_owned()),
        entity_type: Set(e.entity_type.to_owned()),
        entity_id: Set(Some(e.entity_id)),
        details: Set(Some(
            serde_json::json!({"before": e.before, "after": e.after}),
        )),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}
