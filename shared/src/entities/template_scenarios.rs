//! seed 000 template_scenarios: the products a product_list item sends
//! (`thumbnail_id`, `sections` of product retailer ids), with the catalog
//! and the texts Meta's product-list message needs. Items point at them
//! (`scenario_items.template_scenario_ids`).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "template_scenarios")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Option<Uuid>,
    /// The flow file's name of the template, unique per config.
    pub r#ref: String,
    /// Meta's product retailer id of the thumbnail product.
    pub thumbnail_id: Option<String>,
    pub catalog_id: Option<String>,
    pub header: Option<String>,
    pub body: Option<String>,
    pub footer: Option<String>,
    /// `[{"title": …, "product_items": ["retailer id", …]}]`.
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
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
