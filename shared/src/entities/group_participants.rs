//! A member of a WhatsApp group, or someone who asked to join: one row per
//! group and customer, with Meta's time of the change last applied (an
//! older change, late or replayed, changes nothing).

use sea_orm::entity::prelude::*;
use serde::Serialize;

pub const MEMBER: &str = "member";
pub const REMOVED: &str = "removed";
pub const REQUESTED: &str = "requested";
pub const REQUEST_REVOKED: &str = "request_revoked";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "group_participants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    /// The `groups` row.
    pub group_id: Uuid,
    /// The member's own `customers` row.
    pub customer_id: Uuid,
    pub wa_id: Option<String>,
    /// [`MEMBER`], [`REMOVED`], [`REQUESTED`] (asked to join) or
    /// [`REQUEST_REVOKED`].
    pub status: String,
    /// Meta's reason (`invite_link`, …), when it gives one.
    pub reason: Option<String>,
    pub changed_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::groups::Entity",
        from = "Column::GroupId",
        to = "super::groups::Column::Id"
    )]
    Group,
}

impl Related<super::groups::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Group.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
