//! The ids a customer had before Meta re-keyed it (a `system` message
//! `user_changed_number` or `user_changed_user_id`): a message still
//! written from an old id belongs to the same customer. Unique per config,
//! kind and value.

use sea_orm::entity::prelude::*;
use serde::Serialize;

/// `kind` of a previous phone number (a `wa_id`).
pub const KIND_WA_ID: &str = "wa_id";
/// `kind` of a previous business-scoped user id.
pub const KIND_USER_ID: &str = "user_id";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "customer_previous_ids")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub config_id: Uuid,
    pub customer_id: Uuid,
    /// [`KIND_WA_ID`] or [`KIND_USER_ID`].
    pub kind: String,
    pub value: String,
    /// Meta's time of the change.
    pub changed_at: DateTimeUtc,
    /// The wamid of the system message that announced it.
    pub changed_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::customers::Entity",
        from = "Column::CustomerId",
        to = "super::customers::Column::Id"
    )]
    Customer,
}

impl Related<super::customers::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Customer.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
