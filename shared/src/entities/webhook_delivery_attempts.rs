//! Each HTTP attempt of a webhook delivery: its number, the answer's status
//! code (none on a timeout or a refused connection), latency and error.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_delivery_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub delivery_id: Uuid,
    /// 1, 2, … per delivery (a retry from the API continues the count).
    pub attempt: i32,
    pub succeeded: bool,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
