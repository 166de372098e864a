//! seed 000 template_scenarios: an interactive product-list message a
//! scenario step sends (header, body, footer, catalog and `sections`).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "template_scenarios")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub scenario_id: Option<Uuid>,
    /// The step that sends it (no foreign key in the schema).
    pub scenario_item_id: Option<Uuid>,
    pub name: String,
    pub header: Option<String>,
    pub body: Option<String>,
    pub footer: Option<String>,
    pub catalog_id: Option<String>,
    pub sections: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
    #[sea_orm(
        belongs_to = "super::scenarios::Entity",
        from = "Column::ScenarioId",
        to = "super::scenarios::Column::Id"
    )]
    Scenario,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::scenarios::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Scenario.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
