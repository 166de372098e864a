//! What an item sends: the outbound content of one scenario item, and the
//! reply ids of its options. A reply id names the option's item
//! (`sc:{item id}`), and item ids survive re-imports (see [`super::store`]),
//! so a menu the customer scrolls back to still works later.

use std::collections::HashMap;

use uuid::Uuid;
use wapipe_shared::entities::{scenario_items, template_scenarios};

use super::flow::ItemType;
use super::limits;
use super::store::uuids;
use crate::outbox::content::{
    ListRow, ListSection, MediaKind, MediaSource, OutboundContent, ProductSection, ReplyButton,
};

const REPLY_PREFIX: &str = "sc:";

/// The reply id of an option leading to `item_id`.
pub fn reply_id(item_id: Uuid) -> String {
    format!("{REPLY_PREFIX}{item_id}")
}

/// The item a reply id leads to, if it is one of ours.
pub fn parse_reply_id(id: &str) -> Option<Uuid> {
    id.trim()
        .strip_prefix(REPLY_PREFIX)
        .and_then(|u| Uuid::parse_str(u).ok())
}

/// Why an item cannot be sent as it is stored (an item written around the
/// flow file's validation, e.g. by hand in SQL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scenario item {item}: {reason}")]
pub struct ItemError {
    pub item: Uuid,
    pub reason: String,
}

fn err(item: &scenario_items::Model, reason: impl Into<String>) -> ItemError {
    ItemError {
        item: item.id,
        reason: reason.into(),
    }
}

fn label(item: &scenario_items::Model) -> String {
    item.label.clone().unwrap_or_default()
}

/// The interactive message offering `item`'s children: reply buttons for
/// a button item with 3 options or fewer, a list otherwise.
pub fn options(
    item: &scenario_items::Model,
    items: &HashMap<Uuid, scenario_items::Model>,
    list_button: &str,
) -> Result<OutboundContent, ItemError> {
    let kind = ItemType::parse(&item.r#type)
        .ok_or_else(|| err(item, format!("unknown type {:?}", item.r#type)))?;
    let children: Vec<&scenario_items::Model> = uuids(&item.children)
        .iter()
        .filter_map(|c| items.get(c))
        .collect();
    if children.is_empty() {
        return Err(err(item, "offers no options"));
    }
    let title = |c: &scenario_items::Model| {
        c.title
            .clone()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| c.r#ref.clone())
    };
    let body = label(item);
    if limits::as_buttons(kind, children.len()) {
        Ok(OutboundContent::Buttons {
            body,
            header: None,
            footer: None,
            buttons: children
                .iter()
                .map(|c| ReplyButton {
                    id: reply_id(c.id),
                    title: title(c),
                })
                .collect(),
        })
    } else {
        Ok(OutboundContent::List {
            body,
            header: None,
            footer: None,
            button: list_button.to_owned(),
            sections: vec![ListSection {
                title: None,
                rows: children
                    .iter()
                    .map(|c| ListRow {
                        id: reply_id(c.id),
                        title: title(c),
                        description: None,
                    })
                    .collect(),
            }],
        })
    }
}

/// The message of a text, media, product_list or handoff item (button
/// and list items go through [`options`]).
pub fn message(
    item: &scenario_items::Model,
    templates: &HashMap<Uuid, template_scenarios::Model>,
) -> Result<OutboundContent, ItemError> {
    let kind = ItemType::parse(&item.r#type)
        .ok_or_else(|| err(item, format!("unknown type {:?}", item.r#type)))?;
    let caption = item.label.clone().filter(|l| !l.trim().is_empty());
    let media = |m: MediaKind| {
        let url = item
            .url
            .clone()
            .ok_or_else(|| err(item, "a media item without a url"))?;
        Ok(OutboundContent::Media {
            media: m,
            source: MediaSource::Link(url),
            caption: if m == MediaKind::Audio {
                None
            } else {
                caption.clone()
            },
            filename: None,
        })
    };
    match kind {
        ItemType::Text | ItemType::Handoff => Ok(OutboundContent::Text {
            body: label(item),
            preview_url: false,
        }),
        ItemType::Image => media(MediaKind::Image),
        ItemType::Video => media(MediaKind::Video),
        ItemType::Audio => media(MediaKind::Audio),
        ItemType::Document => media(MediaKind::Document),
        ItemType::ProductList => {
            let used: Vec<&template_scenarios::Model> = uuids(&item.template_scenario_ids)
                .iter()
                .filter_map(|t| templates.get(t))
                .collect();
            let first = used
                .first()
                .ok_or_else(|| err(item, "a product_list item without template scenarios"))?;
            let catalog_id = used
                .iter()
                .find_map(|t| t.catalog_id.clone())
                .ok_or_else(|| err(item, "its template scenarios name no catalog_id"))?;
            let sections = used
                .iter()
                .flat_map(|t| {
                    t.sections
                        .as_ref()
                        .and_then(|s| s.as_array())
                        .cloned()
                        .unwrap_or_default()
                })
                .map(|s| ProductSection {
                    title: s["title"].as_str().unwrap_or_default().to_owned(),
                    product_retailer_ids: s["product_items"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|p| p.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect();
            let header = first
                .header
                .clone()
                .or_else(|| item.title.clone())
                .unwrap_or_else(|| "Catalogue".to_owned());
            Ok(OutboundContent::ProductList {
                header,
                body: label(item),
                footer: first.footer.clone(),
                catalog_id,
                sections,
            })
        }
        ItemType::Button | ItemType::List => Err(err(item, "sent through its options")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn item(r: &str, kind: &str, title: &str, children: &[Uuid]) -> scenario_items::Model {
        let now = Utc::now();
        scenario_items::Model {
            id: Uuid::now_v7(),
            created_at: now,
            updated_at: now,
            config_id: None,
            scenario_id: Uuid::nil(),
            r#ref: r.into(),
            r#type: kind.into(),
            label: Some(format!("{r} body")),
            url: None,
            title: Some(title.into()),
            parents: None,
            children: Some(json!(
                children.iter().map(|c| c.to_string()).collect::<Vec<_>>()
            )),
            template_scenario_ids: None,
            position: 0,
        }
    }

    fn graph(
        n: usize,
        kind: &str,
    ) -> (scenario_items::Model, HashMap<Uuid, scenario_items::Model>) {
        let kids: Vec<scenario_items::Model> = (0..n)
            .map(|i| item(&format!("c{i}"), "text", &format!("Option {i}"), &[]))
            .collect();
        let ids: Vec<Uuid> = kids.iter().map(|k| k.id).collect();
        let root = item("root", kind, "", &ids);
        let mut all: HashMap<Uuid, scenario_items::Model> =
            kids.into_iter().map(|k| (k.id, k)).collect();
        all.insert(root.id, root.clone());
        (root, all)
    }

    #[test]
    fn reply_ids_round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(parse_reply_id(&reply_id(id)), Some(id));
        assert_eq!(parse_reply_id("other:123"), None);
        assert_eq!(parse_reply_id("sc:not-a-uuid"), None);
    }

    #[test]
    fn three_options_are_buttons_four_a_list() {
        let (root, all) = graph(3, "button");
        let c = options(&root, &all, "Menu").expect("options");
        c.validate().expect("Meta accepts it");
        let OutboundContent::Buttons { buttons, .. } = c else {
            panic!("buttons expected")
        };
        assert_eq!(buttons.len(), 3);
        assert_eq!(buttons[0].title, "Option 0");
        assert!(parse_reply_id(&buttons[2].id).is_some());

        let (root, all) = graph(7, "button");
        let c = options(&root, &all, "Menu").expect("options");
        c.validate().expect("Meta accepts it");
        let OutboundContent::List {
            sections, button, ..
        } = c
        else {
            panic!("list expected")
        };
        assert_eq!(button, "Menu");
        assert_eq!(sections[0].rows.len(), 7);

        let (root, all) = graph(2, "list");
        assert!(matches!(
            options(&root, &all, "Menu").expect("options"),
            OutboundContent::List { .. }
        ));
    }
}
