//! A WhatsApp group (Meta's Groups API) of one config: what Meta says of
//! it. Its chat is the chat of its party row in `customers`
//! (`customer_id`, whose `wa_group_id` is the same group id). Each part
//! keeps Meta's time of the change last applied, so older updates, late or
//! replayed, change nothing.

use sea_orm::entity::prelude::*;
use serde::Serialize;

/// `status` of a group Meta has not suspended or deleted.
pub const ACTIVE: &str = "active";
pub const SUSPENDED: &str = "suspended";
pub const DELETED: &str = "deleted";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "groups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub customer_id: Uuid,
    pub wa_group_id: String,
    pub subject: Option<String>,
    pub description: Option<String>,
    pub invite_link: Option<String>,
    pub join_approval_mode: Option<String>,
    /// [`ACTIVE`], [`SUSPENDED`] or [`DELETED`].
    pub status: String,
    pub status_at: Option<DateTimeUtc>,
    pub subject_at: Option<DateTimeUtc>,
    pub description_at: Option<DateTimeUtc>,
    /// Meta's errors for the last settings change it refused.
    pub errors: Option<Json>,
    pub errors_at: Option<DateTimeUtc>,
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
