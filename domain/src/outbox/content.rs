//! What we send: [`OutboundContent`], one variant per kind of Cloud API
//! message, validated against Meta's documented limits and turned into the
//! exact JSON body of `POST /{phone_number_id}/messages` by
//! [`OutboundContent::graph_body`].
//!
//! Our own (serde) form is tagged by `kind` so the agents' API and the
//! scenario worker can accept it as JSON; Meta's form exists only in
//! `messages.payload`, which is what the outbound worker posts.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::queue::Recipient;

/// Why a message cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} characters long; Meta allows at most {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field}: {count} given; Meta allows {min} to {max}")]
    Count {
        field: &'static str,
        count: usize,
        min: usize,
        max: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A media object: by public URL, or by an id from Meta's media upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaSource {
    Link(String),
    Id(String),
}

impl MediaSource {
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            MediaSource::Link(url) => m.insert("link".into(), url.clone().into()),
            MediaSource::Id(id) => m.insert("id".into(), id.clone().into()),
        };
        m
    }

    fn validate(&self, field: &'static str) -> Result<(), ContentError> {
        let v = match self {
            MediaSource::Link(v) | MediaSource::Id(v) => v,
        };
        non_empty(field, v)?;
        if let MediaSource::Link(url) = self
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ContentError::Invalid(format!(
                "{field}: {url:?} is not an http(s) URL"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
    Sticker,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
        }
    }

    /// Audio and stickers take no caption.
    fn takes_caption(self) -> bool {
        matches!(
            self,
            MediaKind::Image | MediaKind::Video | MediaKind::Document
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyButton {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRow {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub rows: Vec<ListRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSection {
    pub title: String,
    pub product_retailer_ids: Vec<String>,
}

/// A template parameter, as Meta's `components[].parameters[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TemplateParam {
    Text {
        text: String,
    },
    Currency {
        fallback_value: String,
        code: String,
        amount_1000: i64,
    },
    DateTime {
        fallback_value: String,
    },
    Image {
        source: MediaSource,
    },
    Video {
        source: MediaSource,
    },
    Document {
        source: MediaSource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
    /// Quick-reply buttons: echoed back in the customer's `button` message.
    Payload {
        payload: String,
    },
    /// Copy-code buttons.
    CouponCode {
        coupon_code: String,
    },
}

impl TemplateParam {
    fn to_json(&self) -> Value {
        match self {
            TemplateParam::Text { text } => json!({"type": "text", "text": text}),
            TemplateParam::Currency {
                fallback_value,
                code,
                amount_1000,
            } => json!({"type": "currency", "currency": {
                "fallback_value": fallback_value, "code": code, "amount_1000": amount_1000}}),
            TemplateParam::DateTime { fallback_value } => {
                json!({"type": "date_time", "date_time": {"fallback_value": fallback_value}})
            }
            TemplateParam::Image { source } => json!({"type": "image", "image": source.to_json()}),
            TemplateParam::Video { source } => json!({"type": "video", "video": source.to_json()}),
            TemplateParam::Document { source, filename } => {
                let mut doc = source.to_json();
                if let Some(f) = filename {
                    doc.insert("filename".into(), f.clone().into());
                }
                json!({"type": "document", "document": doc})
            }
            TemplateParam::Payload { payload } => json!({"type": "payload", "payload": payload}),
            TemplateParam::CouponCode { coupon_code } => {
                json!({"type": "coupon_code", "coupon_code": coupon_code})
            }
        }
    }

    fn validate(&self) -> Result<(), ContentError> {
        match self {
            TemplateParam::Text { text } => non_empty("template text parameter", text),
            TemplateParam::Currency {
                fallback_value,
                code,
                ..
            } => {
                non_empty("currency fallback_value", fallback_value)?;
                non_empty("currency code", code)
            }
            TemplateParam::DateTime { fallback_value } => {
                non_empty("date_time fallback_value", fallback_value)
            }
            TemplateParam::Image { source }
            | TemplateParam::Video { source }
            | TemplateParam::Document { source, .. } => source.validate("template media"),
            TemplateParam::Payload { payload } => {
                non_empty("button payload", payload)?;
                max_len("button payload", payload, 128)
            }
            TemplateParam::CouponCode { coupon_code } => {
                non_empty("coupon code", coupon_code)?;
                max_len("coupon code", coupon_code, 15)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ButtonSubType {
    QuickReply,
    Url,
    CopyCode,
}

impl ButtonSubType {
    fn as_str(self) -> &'static str {
        match self {
            ButtonSubType::QuickReply => "quick_reply",
            ButtonSubType::Url => "url",
            ButtonSubType::CopyCode => "copy_code",
        }
    }
}

/// One `components[]` entry of a template send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TemplateComponent {
    Header {
        parameters: Vec<TemplateParam>,
    },
    Body {
        parameters: Vec<TemplateParam>,
    },
    Button {
        sub_type: ButtonSubType,
        index: u8,
        parameters: Vec<TemplateParam>,
    },
}

impl TemplateComponent {
    fn to_json(&self) -> Value {
        let params = |p: &[TemplateParam]| Value::Array(p.iter().map(|x| x.to_json()).collect());
        match self {
            TemplateComponent::Header { parameters } => {
                json!({"type": "header", "parameters": params(parameters)})
            }
            TemplateComponent::Body { parameters } => {
                json!({"type": "body", "parameters": params(parameters)})
            }
            // Meta documents the index as a string ("0").
            TemplateComponent::Button {
                sub_type,
                index,
                parameters,
            } => json!({"type": "button", "sub_type": sub_type.as_str(),
                "index": index.to_string(), "parameters": params(parameters)}),
        }
    }

    fn parameters(&self) -> &[TemplateParam] {
        match self {
            TemplateComponent::Header { parameters }
            | TemplateComponent::Body { parameters }
            | TemplateComponent::Button { parameters, .. } => parameters,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    /// Meta's language code, e.g. `en_US`.
    pub language: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<TemplateComponent>,
}

impl Template {
    /// The usual case: parameters of the body only (`wapipe send --param`).
    pub fn with_body_params(name: &str, language: &str, params: &[String]) -> Self {
        let components = if params.is_empty() {
            Vec::new()
        } else {
            vec![TemplateComponent::Body {
                parameters: params
                    .iter()
                    .map(|p| TemplateParam::Text { text: p.clone() })
                    .collect(),
            }]
        };
        Self {
            name: name.to_owned(),
            language: language.to_owned(),
            components,
        }
    }
}

/// Everything we can send. See the module doc for the two JSON forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboundContent {
    Text {
        body: String,
        #[serde(default)]
        preview_url: bool,
    },
    Template(Template),
    /// Interactive reply buttons (1 to 3).
    Buttons {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
        buttons: Vec<ReplyButton>,
    },
    /// Interactive list (up to 10 rows over up to 10 sections).
    List {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
        /// The label of the button that opens the list.
        button: String,
        sections: Vec<ListSection>,
    },
    /// Interactive multi-product message from a catalog.
    ProductList {
        header: String,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        footer: Option<String>,
        catalog_id: String,
        sections: Vec<ProductSection>,
    },
    Media {
        media: MediaKind,
        source: MediaSource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        /// Documents only: the file name the customer sees.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// A reaction to one of the customer's messages; an empty emoji removes it.
    Reaction {
        message_id: String,
        emoji: String,
    },
}

fn non_empty(field: &'static str, v: &str) -> Result<(), ContentError> {
    if v.trim().is_empty() {
        return Err(ContentError::Empty { field });
    }
    Ok(())
}

fn max_len(field: &'static str, v: &str, max: usize) -> Result<(), ContentError> {
    let len = v.chars().count();
    if len > max {
        return Err(ContentError::TooLong { field, len, max });
    }
    Ok(())
}

fn opt_max_len(field: &'static str, v: &Option<String>, max: usize) -> Result<(), ContentError> {
    match v {
        Some(v) => max_len(field, v, max),
        None => Ok(()),
    }
}

fn count(field: &'static str, n: usize, min: usize, max: usize) -> Result<(), ContentError> {
    if n < min || n > max {
        return Err(ContentError::Count {
            field,
            count: n,
            min,
            max,
        });
    }
    Ok(())
}

fn text_obj(t: &str) -> Value {
    json!({ "text": t })
}

/// The optional text header and footer every interactive kind shares.
fn header_footer(o: &mut Value, header: Option<&String>, footer: Option<&String>) {
    if let Some(h) = header {
        o["header"] = json!({"type": "text", "text": h});
    }
    if let Some(f) = footer {
        o["footer"] = text_obj(f);
    }
}

impl OutboundContent {
    /// Meta's `type` of the message (also `messages.type`).
    pub fn graph_type(&self) -> &'static str {
        match self {
            OutboundContent::Text { .. } => "text",
            OutboundContent::Template(_) => "template",
            OutboundContent::Buttons { .. }
            | OutboundContent::List { .. }
            | OutboundContent::ProductList { .. } => "interactive",
            OutboundContent::Media { media, .. } => media.as_str(),
            OutboundContent::Location { .. } => "location",
            OutboundContent::Reaction { .. } => "reaction",
        }
    }

    /// Templates are the only messages Meta delivers outside the 24-hour
    /// customer-service window (DESIGN invariant 7).
    pub fn is_template(&self) -> bool {
        matches!(self, OutboundContent::Template(_))
    }

    /// Checks Meta's documented limits, so a bad message fails when it is
    /// queued, with a clear reason, instead of at Meta.
    pub fn validate(&self) -> Result<(), ContentError> {
        match self {
            OutboundContent::Text { body, .. } => {
                non_empty("text body", body)?;
                max_len("text body", body, 4096)
            }
            OutboundContent::Template(t) => {
                non_empty("template name", &t.name)?;
                max_len("template name", &t.name, 512)?;
                non_empty("template language", &t.language)?;
                for c in &t.components {
                    for p in c.parameters() {
                        p.validate()?;
                    }
                }
                Ok(())
            }
            OutboundContent::Buttons {
                body,
                header,
                footer,
                buttons,
            } => {
                non_empty("body", body)?;
                max_len("body", body, 1024)?;
                opt_max_len("header", header, 60)?;
                opt_max_len("footer", footer, 60)?;
                count("buttons", buttons.len(), 1, 3)?;
                for b in buttons {
                    non_empty("button id", &b.id)?;
                    max_len("button id", &b.id, 256)?;
                    non_empty("button title", &b.title)?;
                    max_len("button title", &b.title, 20)?;
                }
                let mut ids: Vec<&str> = buttons.iter().map(|b| b.id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() != buttons.len() {
                    return Err(ContentError::Invalid("button ids must be unique".into()));
                }
                Ok(())
            }
            OutboundContent::List {
                body,
                header,
                footer,
                button,
                sections,
            } => {
                non_empty("body", body)?;
                max_len("body", body, 4096)?;
                opt_max_len("header", header, 60)?;
                opt_max_len("footer", footer, 60)?;
                non_empty("list button", button)?;
                max_len("list button", button, 20)?;
                count("sections", sections.len(), 1, 10)?;
                let rows: usize = sections.iter().map(|s| s.rows.len()).sum();
                count("rows", rows, 1, 10)?;
                if sections.len() > 1 && sections.iter().any(|s| s.title.is_none()) {
                    return Err(ContentError::Invalid(
                        "every section needs a title when there are several".into(),
                    ));
                }
                for s in sections {
                    opt_max_len("section title", &s.title, 24)?;
                    for r in &s.rows {
                        non_empty("row id", &r.id)?;
                        max_len("row id", &r.id, 200)?;
                        non_empty("row title", &r.title)?;
                        max_len("row title", &r.title, 24)?;
                        opt_max_len("row description", &r.description, 72)?;
                    }
                }
                Ok(())
            }
            OutboundContent::ProductList {
                header,
                body,
                footer,
                catalog_id,
                sections,
            } => {
                non_empty("header", header)?;
                max_len("header", header, 60)?;
                non_empty("body", body)?;
                max_len("body", body, 1024)?;
                opt_max_len("footer", footer, 60)?;
                non_empty("catalog id", catalog_id)?;
                count("sections", sections.len(), 1, 10)?;
                let items: usize = sections.iter().map(|s| s.product_retailer_ids.len()).sum();
                count("products", items, 1, 30)?;
                for s in sections {
                    non_empty("section title", &s.title)?;
                    max_len("section title", &s.title, 24)?;
                    for p in &s.product_retailer_ids {
                        non_empty("product retailer id", p)?;
                    }
                }
                Ok(())
            }
            OutboundContent::Media {
                media,
                source,
                caption,
                filename,
            } => {
                source.validate("media")?;
                if caption.is_some() && !media.takes_caption() {
                    return Err(ContentError::Invalid(format!(
                        "{} messages take no caption",
                        media.as_str()
                    )));
                }
                opt_max_len("caption", caption, 1024)?;
                if filename.is_some() && *media != MediaKind::Document {
                    return Err(ContentError::Invalid(
                        "only documents take a filename".into(),
                    ));
                }
                Ok(())
            }
            OutboundContent::Location {
                latitude,
                longitude,
                ..
            } => {
                if !(-90.0..=90.0).contains(latitude) || !(-180.0..=180.0).contains(longitude) {
                    return Err(ContentError::Invalid(format!(
                        "({latitude}, {longitude}) is not a latitude/longitude pair"
                    )));
                }
                Ok(())
            }
            OutboundContent::Reaction { message_id, emoji } => {
                non_empty("reaction message_id", message_id)?;
                // Empty removes the reaction; otherwise one emoji (which may
                // be several code points: skin tones, ZWJ sequences).
                max_len("reaction emoji", emoji, 16)
            }
        }
    }

    /// The object under the message's `type` key in Meta's body.
    fn type_object(&self) -> Value {
        match self {
            OutboundContent::Text { body, preview_url } => {
                json!({"preview_url": preview_url, "body": body})
            }
            OutboundContent::Template(t) => {
                let mut o = json!({"name": t.name, "language": {"code": t.language}});
                if !t.components.is_empty() {
                    o["components"] =
                        Value::Array(t.components.iter().map(|c| c.to_json()).collect());
                }
                o
            }
            OutboundContent::Buttons {
                body,
                header,
                footer,
                buttons,
            } => {
                let mut o = json!({"type": "button", "body": text_obj(body)});
                header_footer(&mut o, header.as_ref(), footer.as_ref());
                o["action"] = json!({"buttons": buttons.iter().map(|b| json!({
                    "type": "reply", "reply": {"id": b.id, "title": b.title}})).collect::<Vec<_>>()});
                o
            }
            OutboundContent::List {
                body,
                header,
                footer,
                button,
                sections,
            } => {
                let mut o = json!({"type": "list", "body": text_obj(body)});
                header_footer(&mut o, header.as_ref(), footer.as_ref());
                let sections: Vec<Value> = sections
                    .iter()
                    .map(|s| {
                        let rows: Vec<Value> = s
                            .rows
                            .iter()
                            .map(|r| {
                                let mut row = json!({"id": r.id, "title": r.title});
                                if let Some(d) = &r.description {
                                    row["description"] = d.clone().into();
                                }
                                row
                            })
                            .collect();
                        let mut sec = json!({"rows": rows});
                        if let Some(t) = &s.title {
                            sec["title"] = t.clone().into();
                        }
                        sec
                    })
                    .collect();
                o["action"] = json!({"button": button, "sections": sections});
                o
            }
            OutboundContent::ProductList {
                header,
                body,
                footer,
                catalog_id,
                sections,
            } => {
                let mut o = json!({"type": "product_list", "body": text_obj(body)});
                header_footer(&mut o, Some(header), footer.as_ref());
                let sections: Vec<Value> = sections
                    .iter()
                    .map(|s| {
                        json!({"title": s.title, "product_items": s.product_retailer_ids
                        .iter().map(|p| json!({"product_retailer_id": p})).collect::<Vec<_>>()})
                    })
                    .collect();
                o["action"] = json!({"catalog_id": catalog_id, "sections": sections});
                o
            }
            OutboundContent::Media {
                source,
                caption,
                filename,
                ..
            } => {
                let mut o = source.to_json();
                if let Some(c) = caption {
                    o.insert("caption".into(), c.clone().into());
                }
                if let Some(f) = filename {
                    o.insert("filename".into(), f.clone().into());
                }
                Value::Object(o)
            }
            OutboundContent::Location {
                latitude,
                longitude,
                name,
                address,
            } => {
                let mut o = json!({"latitude": latitude, "longitude": longitude});
                if let Some(n) = name {
                    o["name"] = n.clone().into();
                }
                if let Some(a) = address {
                    o["address"] = a.clone().into();
                }
                o
            }
            OutboundContent::Reaction { message_id, emoji } => {
                json!({"message_id": message_id, "emoji": emoji})
            }
        }
    }

    /// Meta's request body for a send to `to`, replying to the customer's
    /// message `reply_to` when given (reactions carry their own target and
    /// take no context). A phone number goes in Meta's `to`; a
    /// business-scoped user id (a user known by no number) in `recipient`;
    /// a group's id in `to`, with `recipient_type: group`.
    pub fn graph_body(&self, to: &Recipient, reply_to: Option<&str>) -> Value {
        let kind = self.graph_type();
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "type": kind,
        });
        match to {
            Recipient::Phone(p) => body["to"] = json!(p),
            Recipient::UserId(u) => body["recipient"] = json!(u),
            Recipient::Group(g) => {
                body["recipient_type"] = json!("group");
                body["to"] = json!(g);
            }
        }
        body[kind] = self.type_object();
        if let Some(id) = reply_to
            && !matches!(self, OutboundContent::Reaction { .. })
        {
            body["context"] = json!({ "message_id": id });
        }
        body
    }

    /// The columns of `messages` that describe the content, so the agents'
    /// API shows a sent message like a received one.
    pub fn row_fields(&self, graph_body: &Value) -> RowFields {
        let kind = self.graph_type();
        let obj = graph_body.get(kind).cloned();
        let mut f = RowFields::default();
        match self {
            OutboundContent::Text { body, .. } => f.text = Some(body.clone()),
            OutboundContent::Template(_) => f.template = obj,
            OutboundContent::Buttons { body, .. }
            | OutboundContent::List { body, .. }
            | OutboundContent::ProductList { body, .. } => {
                f.text = Some(body.clone());
                f.interactive = obj;
            }
            OutboundContent::Media { caption, .. } => {
                f.text = caption.clone();
                f.media = obj;
            }
            OutboundContent::Location { .. } => f.location = obj,
            OutboundContent::Reaction { .. } => f.reaction = obj,
        }
        f
    }

    /// A one-line summary for chat lists (`chats.last_message`).
    pub fn preview(&self) -> String {
        match self {
            OutboundContent::Text { body, .. } => body.chars().take(200).collect(),
            OutboundContent::Template(t) => format!("[template: {}]", t.name),
            OutboundContent::Buttons { body, .. }
            | OutboundContent::List { body, .. }
            | OutboundContent::ProductList { body, .. } => body.chars().take(200).collect(),
            OutboundContent::Media { media, caption, .. } => match caption {
                Some(c) => c.chars().take(200).collect(),
                None => format!("[{}]", media.as_str()),
            },
            OutboundContent::Location { name, .. } => {
                format!(
                    "[location{}]",
                    name.as_deref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                )
            }
            OutboundContent::Reaction { emoji, .. } => format!("[reaction {emoji}]"),
        }
    }
}

/// See [`OutboundContent::row_fields`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowFields {
    pub text: Option<String>,
    pub template: Option<Value>,
    pub interactive: Option<Value>,
    pub media: Option<Value>,
    pub location: Option<Value>,
    pub reaction: Option<Value>,
}

/// Mark-as-read of a customer's message (blue ticks), optionally with the
/// typing indicator. Not a message of ours: no row, no wamid.
pub fn mark_read_body(provider_message_id: &str, typing: bool) -> Value {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": provider_message_id,
    });
    if typing {
        body["typing_indicator"] = json!({ "type": "text" });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_body_is_metas_shape() {
        let c = OutboundContent::Text {
            body: "hi".into(),
            preview_url: true,
        };
        assert_eq!(
            c.graph_body(&Recipient::Phone("4915112345678".into()), Some("wamid.X")),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "4915112345678", "type": "text",
                "text": {"preview_url": true, "body": "hi"},
                "context": {"message_id": "wamid.X"}})
        );
        // A user known by a BSUID only: Meta's `recipient`, no `to`.
        assert_eq!(
            c.graph_body(&Recipient::UserId("US.1349".into()), None),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "recipient": "US.1349", "type": "text",
                "text": {"preview_url": true, "body": "hi"}})
        );
        // A group: its id in `to`, `recipient_type: group`.
        assert_eq!(
            c.graph_body(&Recipient::Group("120363025@g.us".into()), None),
            json!({"messaging_product": "whatsapp", "recipient_type": "group",
                "to": "120363025@g.us", "type": "text",
                "text": {"preview_url": true, "body": "hi"}})
        );
    }

    #[test]
    fn limits_are_checked() {
        let long = OutboundContent::Text {
            body: "x".repeat(4097),
            preview_url: false,
        };
        assert!(matches!(
            long.validate(),
            Err(ContentError::TooLong { max: 4096, .. })
        ));
        let four = OutboundContent::Buttons {
            body: "b".into(),
            header: None,
            footer: None,
            buttons: (0..4)
                .map(|i| ReplyButton {
                    id: i.to_string(),
                    title: "t".into(),
                })
                .collect(),
        };
        assert!(matches!(four.validate(), Err(ContentError::Count { .. })));
        let sticker = OutboundContent::Media {
            media: MediaKind::Sticker,
            source: MediaSource::Id("1".into()),
            caption: Some("no".into()),
            filename: None,
        };
        assert!(sticker.validate().is_err());
        let bad_geo = OutboundContent::Location {
            latitude: 91.0,
            longitude: 0.0,
            name: None,
            address: None,
        };
        assert!(bad_geo.validate().is_err());
    }

    #[test]
    fn our_json_round_trips() {
        let c = OutboundContent::Template(Template {
            name: "order_update".into(),
            language: "en_US".into(),
            components: vec![TemplateComponent::Button {
                sub_type: ButtonSubType::QuickReply,
                index: 0,
                parameters: vec![TemplateParam::Payload {
                    payload: "STOP".into(),
                }],
            }],
        });
        let s = serde_json::to_value(&c).expect("serialize");
        assert_eq!(s["kind"], "template");
        let back: OutboundContent = serde_json::from_value(s).expect("deserialize");
        assert_eq!(back, c);
    }
}
