//! Messages: a chat's messages (newest first), send, get one, mark read.
//!
//! A send is checked before anything is queued: the number must not be
//! blocked (409), and a free-form message needs the customer's 24-hour
//! window open (422 with Meta's code 131047 and a hint to use a template).
//! Then it becomes a `queued` row and an `outbound.send` job through the
//! shared outbox, and the answer is 202 with the message.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, ExprTrait, QueryFilter};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::outbox::content::{
    ListRow, ListSection, MediaKind, MediaSource, ReplyButton, Template,
};
use wapipe_domain::outbox::{
    self, CODE_WINDOW_CLOSED, NewOutbound, OutboundContent, customer_window_open,
};
use wapipe_domain::receipts::read_status_of;
use wapipe_domain::templates::{self, TemplateCheckError};
use wapipe_shared::entities::messages::{self as m, Direction, Origin};
use wapipe_shared::entities::{blocked_numbers, chats, customers, whatsapp_configs};

use crate::AppState;
use crate::auth::Principal;
use crate::chats::{queue_mark_read, visible};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};
use crate::page::{self, Keyset, Page};
use crate::views::{Ends, Location, Message};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListMessages {
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

async fn ends(
    state: &AppState,
    chat: &chats::Model,
) -> ApiResult<(Option<String>, Option<String>)> {
    let config = whatsapp_configs::Entity::find_by_id(chat.config_id)
        .one(&state.db)
        .await?;
    let business = config.map(|c| c.business_number().to_owned());
    Ok((chat.phone_number.clone(), business))
}

#[utoipa::path(get, path = "/api/whatsapp/chats/{chatId}/messages", tag = "messages",
    params(("chatId" = Uuid, Path, description = "chat id"), ListMessages),
    responses((status = 200, body = Page<Message>), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(chat_id): Id,
    Q(p): Q<ListMessages>,
) -> ApiResult<axum::Json<Page<Message>>> {
    // Checked before any query: a bad limit is the caller's error.
    page::limit(p.limit)?;
    let chat = visible(&state, &who, chat_id).await?;
    let (customer, business) = ends(&state, &chat).await?;
    let ends = Ends {
        customer: customer.as_deref(),
        business: business.as_deref(),
    };
    let by = Keyset::desc(m::Column::CreatedAt, m::Column::Id);
    let q = m::Entity::find()
        .filter(m::Column::ChatId.eq(chat.id))
        .filter(m::Column::IsDeleted.eq(false));
    let view = |r| Message::from_row(r, &ends);
    let mut page = by
        .page(&state.db, q, p.cursor.as_deref(), p.limit, view)
        .await?;
    let with_media: Vec<Uuid> = page
        .data
        .iter()
        .filter(|m| m.media.is_some())
        .map(|m| m.id)
        .collect();
    let files = wapipe_domain::media::files_of(&state.db, &with_media).await?;
    page.data = page
        .data
        .into_iter()
        .map(|m| {
            let file = files.get(&m.id);
            m.with_file(file)
        })
        .collect();
    Ok(axum::Json(page))
}

/// A message visible to the caller: its chat must be.
pub(crate) async fn visible_message(
    state: &AppState,
    who: &Principal,
    id: Uuid,
) -> ApiResult<(m::Model, chats::Model)> {
    let msg = m::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|m| !m.is_deleted)
        .ok_or_else(|| ApiError::not_found("message"))?;
    let chat = visible(state, who, msg.chat_id)
        .await
        .map_err(|_| ApiError::not_found("message"))?;
    Ok((msg, chat))
}

#[utoipa::path(get, path = "/api/whatsapp/messages/{id}", tag = "messages",
    params(("id" = Uuid, Path, description = "message id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<Message>> {
    let (msg, chat) = visible_message(&state, &who, id).await?;
    let (customer, business) = ends(&state, &chat).await?;
    let files = wapipe_domain::media::files_of(&state.db, &[msg.id]).await?;
    Ok(axum::Json(
        Message::from_row(
            msg,
            &Ends {
                customer: customer.as_deref(),
                business: business.as_deref(),
            },
        )
        .with_file(files.values().next()),
    ))
}

#[utoipa::path(put, path = "/api/whatsapp/messages/{id}/read", tag = "messages",
    params(("id" = Uuid, Path, description = "message id")),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not a customer's message")))]
pub async fn mark_read(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<Message>> {
    let (msg, chat) = visible_message(&state, &who, id).await?;
    if msg.direction != Direction::Inbound {
        return Err(ApiError::conflict(
            "not_inbound",
            "only a customer's message can be marked read",
        ));
    }
    let now = wapipe_domain::clock::now();
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    let changed = m::Entity::update_many()
        .col_expr(m::Column::IsRead, Expr::value(true))
        .col_expr(
            m::Column::ReadStatus,
            Expr::value(read_status_of(m::MessageStatus::Read)),
        )
        .col_expr(m::Column::UpdatedAt, Expr::value(now))
        .filter(m::Column::Id.eq(msg.id))
        .filter(m::Column::IsRead.eq(false))
        .exec(&txn)
        .await?;
    if changed.rows_affected > 0 {
        chats::Entity::update_many()
            .col_expr(
                chats::Column::UnreadCount,
                Expr::case(
                    Expr::col(chats::Column::UnreadCount).gt(0),
                    Expr::col(chats::Column::UnreadCount).sub(1),
                )
                .finally(0)
                .into(),
            )
            .col_expr(chats::Column::UpdatedAt, Expr::value(now))
            .filter(chats::Column::Id.eq(chat.id))
            .exec(&txn)
            .await?;
        // The message (isRead) and its chat (unreadCount) changed.
        use wapipe_domain::events;
        let mut evs = events::message_events(&txn, events::MESSAGE_UPDATED, &[msg.id]).await?;
        evs.extend(events::chat_events(&txn, events::CHAT_UPDATED, &[chat.id]).await?);
        events::record(&txn, &evs).await?;
    }
    txn.commit().await?;
    if changed.rows_affected > 0
        && let (Some(wamid), Some(phone)) = (&msg.provider_message_id, &chat.phone_number)
    {
        queue_mark_read(&state, chat.config_id, wamid, phone).await?;
    }
    get(State(state), Extension(who), Id(id)).await
}

/// Seed 002's `template` of a send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendTemplate {
    pub name: String,
    pub language: String,
    /// The body's `{{1}}`, `{{2}}`… in order.
    #[serde(default)]
    pub parameters: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendButton {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendListRow {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendListSection {
    pub title: Option<String>,
    pub rows: Vec<SendListRow>,
}

/// Reply buttons (`buttons`) or a list (`button` + `sections`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendInteractive {
    pub body: String,
    pub header: Option<String>,
    pub footer: Option<String>,
    pub buttons: Option<Vec<SendButton>>,
    /// The label of the button that opens a list.
    pub button: Option<String>,
    pub sections: Option<Vec<SendListSection>>,
}

/// Media by link (`url`) or by an uploaded media id (`mediaId`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMedia {
    pub url: Option<String>,
    pub media_id: Option<String>,
    pub caption: Option<String>,
    pub file_name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendReaction {
    /// The wamid of the message reacted to.
    pub message_id: String,
    /// Empty removes the reaction.
    pub emoji: String,
}

/// A message to send. `type` says which of the other fields is used.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMessage {
    /// `text | template | interactive | image | video | audio | document |
    /// sticker | location | reaction`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    #[serde(default)]
    pub preview_url: bool,
    pub template: Option<SendTemplate>,
    pub interactive: Option<SendInteractive>,
    pub media: Option<SendMedia>,
    pub location: Option<Location>,
    pub reaction: Option<SendReaction>,
    /// Reply to this message of the customer (its wamid).
    pub reply_to: Option<String>,
}

fn need<T>(v: Option<T>, field: &str) -> ApiResult<T> {
    v.ok_or_else(|| ApiError::field(field, "required for this type"))
}

impl SendMessage {
    fn content(self) -> ApiResult<OutboundContent> {
        let media_kind = match self.kind.as_str() {
            "image" => Some(MediaKind::Image),
            "video" => Some(MediaKind::Video),
            "audio" => Some(MediaKind::Audio),
            "document" => Some(MediaKind::Document),
            "sticker" => Some(MediaKind::Sticker),
            _ => None,
        };
        if let Some(media) = media_kind {
            let m = need(self.media, "media")?;
            let source = match (m.url, m.media_id) {
                (Some(url), None) => MediaSource::Link(url),
                (None, Some(id)) => MediaSource::Id(id),
                _ => {
                    return Err(ApiError::field(
                        "media",
                        "give exactly one of url and mediaId",
                    ));
                }
            };
            return Ok(OutboundContent::Media {
                media,
                source,
                caption: m.caption,
                filename: m.file_name,
            });
        }
        Ok(match self.kind.as_str() {
            "text" => OutboundContent::Text {
                body: need(self.text, "text")?,
                preview_url: self.preview_url,
            },
            "template" => {
                let t = need(self.template, "template")?;
                OutboundContent::Template(Template::with_body_params(
                    &t.name,
                    &t.language,
                    &t.parameters,
                ))
            }
            "interactive" => {
                let i = need(self.interactive, "interactive")?;
                match (i.buttons, i.button, i.sections) {
                    (Some(buttons), None, None) => OutboundContent::Buttons {
                        body: i.body,
                        header: i.header,
                        footer: i.footer,
                        buttons: buttons
                            .into_iter()
                            .map(|b| ReplyButton {
                                id: b.id,
                                title: b.title,
                            })
                            .collect(),
                    },
                    (None, Some(button), Some(sections)) => OutboundContent::List {
                        body: i.body,
                        header: i.header,
                        footer: i.footer,
                        button,
                        sections: sections
                            .into_iter()
                            .map(|s| ListSection {
                                title: s.title,
                                rows: s
                                    .rows
                                    .into_iter()
                                    .map(|r| ListRow {
                                        id: r.id,
                                        title: r.title,
                                        description: r.description,
                                    })
                                    .collect(),
                            })
                            .collect(),
                    },
                    _ => {
                        return Err(ApiError::field(
                            "interactive",
                            "give either buttons, or button and sections",
                        ));
                    }
                }
            }
            "location" => {
                let l = need(self.location, "location")?;
                OutboundContent::Location {
                    latitude: l.latitude,
                    longitude: l.longitude,
                    name: l.name,
                    address: l.address,
                }
            }
            "reaction" => {
                let r = need(self.reaction, "reaction")?;
                OutboundContent::Reaction {
                    message_id: r.message_id,
                    emoji: r.emoji,
                }
            }
            _ => {
                return Err(ApiError::field(
                    "type",
                    "one of text, template, interactive, image, video, audio, document, \
                     sticker, location, reaction",
                ));
            }
        })
    }
}

#[utoipa::path(post, path = "/api/whatsapp/chats/{chatId}/messages", tag = "messages",
    request_body(content(
        (SendMessage = "application/json"),
        (crate::media::SendUpload = "multipart/form-data")),
        description = "a message as JSON, or a media file to upload to Meta and send (multipart)"),
    params(("chatId" = Uuid, Path, description = "chat id"),
        ("Idempotency-Key" = Option<String>, Header, description = "the same key and body within 24 h sends once")),
    responses((status = 202, body = Message, description = "queued"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the number is blocked"),
        (status = 413, body = ErrorBody, description = "an upload over Meta's size limit for its type"),
        (status = 415, body = ErrorBody, description = "an upload of a type Meta does not accept for its message type"),
        (status = 422, body = ErrorBody, description = "131047: outside the 24-hour window; use a template; \
            131050: a MARKETING template to a customer who stopped marketing messages; \
            authentication_needs_phone_number: an AUTHENTICATION template to a customer known \
            by a business-scoped user id only; \
            template_invalid: unknown, paused, disabled or rejected template (with Meta's reason); \
            upload_invalid: a multipart send without its file or type"),
        (status = 502, body = ErrorBody, description = "Meta refused or did not answer the upload")))]
pub async fn send(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(chat_id): Id,
    req: axum::extract::Request,
) -> ApiResult<axum::response::Response> {
    if crate::media::is_multipart(req.headers()) {
        let chat = visible(&state, &who, chat_id).await?;
        return crate::media::send_upload(state, who, chat, req).await;
    }
    let Body(body) =
        <Body<SendMessage> as axum::extract::FromRequest<AppState>>::from_request(req, &state)
            .await?;
    let chat = visible(&state, &who, chat_id).await?;
    let reply_to = body.reply_to.clone();
    let template = body
        .template
        .as_ref()
        .filter(|_| body.kind == "template")
        .map(|t| (t.name.clone(), t.language.clone(), t.parameters.len()));
    let content = body.content()?;
    content
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let gate = gate(&state, &chat, content.is_template(), template).await?;
    let view = queue(&state, &who, &chat, gate, content, reply_to, None).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

/// A send that passed the checks: the customer's number, and the template
/// it uses, if any.
pub(crate) struct Gate {
    phone: String,
    template: Option<wapipe_shared::entities::templates::Model>,
}

/// The checks before anything is queued (or uploaded): the chat has a
/// number that is not blocked, a template is usable and allowed for this
/// customer, a free-form message has the 24-hour window open.
pub(crate) async fn gate(
    state: &AppState,
    chat: &chats::Model,
    is_template: bool,
    template: Option<(String, String, usize)>,
) -> ApiResult<Gate> {
    // A customer without a number (a username user) is written to by
    // their business-scoped user id; a group by its group id.
    let phone = match chat.phone_number.clone() {
        Some(p) => p,
        None => customers::Entity::find_by_id(chat.customer_id)
            .one(&state.db)
            .await?
            .and_then(|c| outbox::address_of(&c))
            .ok_or_else(|| {
                ApiError::conflict(
                    "no_number",
                    "this chat has no WhatsApp number or business-scoped user id",
                )
            })?,
    };
    let blocked = blocked_numbers::Entity::find()
        .filter(blocked_numbers::Column::ConfigId.eq(chat.config_id))
        .filter(blocked_numbers::Column::PhoneNumber.eq(&phone))
        .filter(blocked_numbers::Column::IsActive.eq(true))
        .filter(blocked_numbers::Column::IsDeleted.eq(false))
        .one(&state.db)
        .await?;
    if blocked.is_some() {
        return Err(ApiError::conflict(
            "number_blocked",
            format!("{phone} is blocked; unblock it before sending"),
        ));
    }
    let template = match template {
        Some((name, language, given)) => Some(
            templates::check_send(&state.db, chat.config_id, &name, &language, given)
                .await
                .map_err(|e| match e {
                    TemplateCheckError::Db(e) => ApiError::internal(e),
                    other => {
                        let mut err =
                            ApiError::unprocessable("template_invalid", other.to_string());
                        err.fields.insert("template".to_owned(), other.to_string());
                        err
                    }
                })?,
        ),
        None => None,
    };
    if !is_template && !customer_window_open(&state.db, chat.config_id, chat.customer_id).await? {
        return Err(ApiError::unprocessable(
            CODE_WINDOW_CLOSED,
            "the customer's 24-hour window is closed: only a template message can be sent \
             (type: template)",
        ));
    }
    Ok(Gate { phone, template })
}

/// Queues a checked send (a `queued` row and its `outbound.send` job) and
/// answers its view; `file` is wapipe's copy of an uploaded file.
pub(crate) async fn queue(
    state: &AppState,
    who: &Principal,
    chat: &chats::Model,
    gate: Gate,
    content: OutboundContent,
    reply_to: Option<String>,
    file: Option<crate::media::UploadedFile>,
) -> ApiResult<Message> {
    let queued = outbox::send(
        &state.db,
        state.broker.as_ref(),
        NewOutbound {
            config_id: chat.config_id,
            to: gate.phone,
            content,
            reply_to,
            origin: Origin::Admin,
            sender_type: "agent".to_owned(),
            sender_id: who.agent_id(),
            answers: None,
        },
    )
    .await?;
    if let Some(t) = &gate.template {
        templates::record_use(&state.db, t.id).await?;
    }
    if let Some(agent) = &who.agent {
        m::Entity::update_many()
            .col_expr(m::Column::SenderName, Expr::value(agent.name.as_str()))
            .filter(m::Column::Id.eq(queued.message_id))
            .exec(&state.db)
            .await?;
    }
    if let Some(f) = &file {
        wapipe_domain::media::record_upload(
            &state.db,
            queued.message_id,
            chat.config_id,
            &f.media_id,
            &f.stored,
            &f.mime_type,
        )
        .await?;
    }
    let msg = m::Entity::find_by_id(queued.message_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::internal("queued message vanished"))?;
    let files = wapipe_domain::media::files_of(&state.db, &[msg.id]).await?;
    let (customer, business) = ends(state, chat).await?;
    Ok(Message::from_row(
        msg,
        &Ends {
            customer: customer.as_deref(),
            business: business.as_deref(),
        },
    )
    .with_file(files.values().next()))
}
