//! seed 000 scenario_items: the steps of a scenario. Items form a graph:
//! `parents` and `children` hold item ids (JSON arrays of UUID strings); a
//! button or list item offers its children as options.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "scenario_items")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The scenario's config; `None` for the items of a generic scenario.
    pub config_id: Option<Uuid>,
    pub scenario_id: Uuid,
    /// The flow file's name of the item, unique per scenario.
    pub r#ref: String,
    /// text, image, video, audio, document, button, list, product_list or handoff.
    pub r#type: String,
    /// The text, caption or body.
    pub label: Option<String>,
    /// The media link of an image, video, audio or document item.
    pub url: Option<String>,
    /// The short text shown on the parent's reply button or list row.
    pub title: Option<String>,
    pub parents: Option<Json>,
    pub children: Option<Json>,
    /// seed 000 `template_scenatio_id` (sic): the template scenarios a
    /// product_list item sends, a JSON array of UUID strings.
    pub template_scenario_ids: Option<Json>,
    pub position: i32,
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
