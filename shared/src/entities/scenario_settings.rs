//! A config's chatbot settings (issue 11): the fallback text sent when an
//! answer is neither an option nor a keyword, the exit keywords, the
//! default scenario "menu" starts, and the label of a list's button. One
//! row per config; a config without one uses the defaults.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "scenario_settings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub config_id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub fallback: Option<String>,
    /// A JSON array of strings; `None`: `["stop", "menu"]`.
    pub exit_keywords: Option<Json>,
    /// A scenario title.
    pub default_scenario: Option<String>,
    pub list_button: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
