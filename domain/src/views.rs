//! The JSON resources as the REST API shows them: every field of seed
//! 002's models under its camelCase name, ids as our UUIDs, times RFC 3339
//! UTC. Built from the rows (and, for a chat, its labels and transfers,
//! loaded in one query per page). Here rather than in the API because the
//! events log carries the same views, and the workers write events too.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use wapipe_shared::db::pad_pow2;
use wapipe_shared::entities::{
    chat_assignments, chat_labels, chats, follow_ups, group_participants, groups, labels,
    message_media, messages, whatsapp_configs,
};

/// seed 002 Chat.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub id: Uuid,
    /// The WhatsApp number (config) the chat belongs to.
    pub config_id: Uuid,
    pub phone_number: Option<String>,
    pub customer_name: Option<String>,
    pub customer_id: Uuid,
    /// `unassigned | assigned | resolved | closed`.
    pub status: String,
    pub assigned_to: Option<Uuid>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub assigned_by: Option<Uuid>,
    /// Label ids.
    pub labels: Vec<Uuid>,
    /// `low | medium | high | urgent`.
    pub priority: String,
    /// `whatsapp | api | webhook`.
    pub source: String,
    pub last_message: Option<LastMessage>,
    pub last_message_time: Option<DateTime<Utc>>,
    pub last_message_id: Option<Uuid>,
    pub unread_count: i32,
    pub provider: String,
    pub provider_chat_id: Option<String>,
    pub whatsapp_business_account_id: Option<String>,
    pub phone_number_id: Option<String>,
    pub customer_info: Option<CustomerInfo>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub transfer_history: Vec<Transfer>,
    /// Seconds.
    pub first_response_time: Option<f64>,
    /// Seconds.
    pub avg_response_time: Option<f64>,
    pub total_messages: i32,
    pub customer_messages: i32,
    pub agent_messages: i32,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTime<Utc>>,
    /// When a scenario handed the chat to a human (beyond seed 002).
    pub handoff_at: Option<DateTime<Utc>>,
    /// The WhatsApp group this chat is (Meta's Groups API); `null` for a
    /// one-to-one chat. Its members: `GET /chats/{id}/participants`.
    pub group: Option<GroupInfo>,
}

/// What Meta says of a group chat's group.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    /// Meta's group id (send to it as `group:<id>` from the CLI).
    pub group_id: String,
    pub subject: Option<String>,
    pub description: Option<String>,
    pub invite_link: Option<String>,
    pub join_approval_mode: Option<String>,
    /// `active | suspended | deleted`.
    pub status: String,
    /// Members now (status `member`).
    pub participant_count: u64,
}

/// A chat's latest message, as the list shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastMessage {
    pub id: Option<Uuid>,
    pub text: String,
}

/// seed 002 `customerInfo`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomerInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// One entry of `transferHistory`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    pub from_agent: Option<Uuid>,
    pub to_agent: Uuid,
    pub transferred_at: DateTime<Utc>,
    pub reason: Option<String>,
}

/// What a chat's view needs besides its row.
#[derive(Debug, Default)]
pub struct ChatExtras {
    pub labels: HashMap<Uuid, Vec<Uuid>>,
    pub transfers: HashMap<Uuid, Vec<chat_assignments::Model>>,
    /// Group chats' groups, by the chat's customer (the group's party).
    pub groups: HashMap<Uuid, GroupInfo>,
}

impl Chat {
    pub fn from_row(c: chats::Model, extras: &ChatExtras) -> Self {
        Self {
            labels: extras.labels.get(&c.id).cloned().unwrap_or_default(),
            transfer_history: extras
                .transfers
                .get(&c.id)
                .map(|ts| {
                    ts.iter()
                        .map(|t| Transfer {
                            from_agent: t.transferred_from,
                            to_agent: t.assigned_to,
                            transferred_at: t.assigned_at,
                            reason: t.transfer_reason.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            group: extras.groups.get(&c.customer_id).cloned(),
            customer_info: c.customer_info.and_then(|v| serde_json::from_value(v).ok()),
            last_message: c.last_message.map(|text| LastMessage {
                id: c.last_message_id,
                text,
            }),
            id: c.id,
            config_id: c.config_id,
            phone_number: c.phone_number,
            customer_name: c.customer_name,
            customer_id: c.customer_id,
            status: c.status,
            assigned_to: c.assigned_to,
            assigned_at: c.assigned_at,
            assigned_by: c.assigned_by,
            priority: c.priority,
            source: c.source,
            last_message_time: c.last_message_time,
            last_message_id: c.last_message_id,
            unread_count: c.unread_count,
            provider: c.provider,
            provider_chat_id: c.provider_chat_id,
            whatsapp_business_account_id: c.whatsapp_business_account_id,
            phone_number_id: c.phone_number_id,
            created_at: c.created_at,
            updated_at: c.updated_at,
            closed_at: c.closed_at,
            first_response_time: c.first_response_time,
            avg_response_time: c.avg_response_time,
            total_messages: c.total_messages,
            customer_messages: c.customer_messages,
            agent_messages: c.agent_messages,
            is_deleted: c.is_deleted,
            deleted_at: c.deleted_at,
            handoff_at: c.handoff_at,
        }
    }
}

/// seed 002 Message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub text: Option<String>,
    /// `text | image | video | audio | document | location | contacts |
    /// sticker | template | interactive | reaction | ...` (Meta's type).
    #[serde(rename = "type")]
    pub kind: String,
    pub media: Option<Media>,
    pub location: Option<Location>,
    pub contact: Option<Contact>,
    /// `inbound | outbound`.
    pub direction: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub context: Option<Context>,
    /// `queued | sending | sent | delivered | read | failed`.
    pub status: String,
    pub read_status: Option<String>,
    pub read_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub sender_id: Option<Uuid>,
    pub sender_name: Option<String>,
    /// `agent | customer | bot | system`.
    pub sender_type: String,
    pub provider: String,
    /// Meta's wamid.
    pub provider_message_id: Option<String>,
    pub provider_status: Option<String>,
    pub template: Option<TemplateRef>,
    pub error: Option<MessageError>,
    pub timestamp: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub metadata: Option<Value>,
    pub is_deleted: bool,
    /// seed 000: `user` (customer), `bot`, `admin` (agent), `system`.
    pub origin: String,
    /// seed 000 `is_read`: an agent has seen this inbound message.
    pub is_read: bool,
    /// In a group chat, the customer id of the member who wrote it (`from`
    /// and `senderName` are theirs too); `null` elsewhere.
    pub participant_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    pub url: Option<String>,
    pub media_id: Option<String>,
    pub mime_type: Option<String>,
    pub file_name: Option<String>,
    pub file_size: Option<i64>,
    pub caption: Option<String>,
    pub thumbnail_url: Option<String>,
    /// Where wapipe's copy of the file stands: `pending`, `stored`,
    /// `failed`, `refused` or `pruned`; null when wapipe keeps no copy
    /// (a link sent as is).
    pub status: Option<String>,
    /// Why the file is not stored (`failed`, `refused`, `pruned`).
    pub error: Option<String>,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub name: Option<String>,
    pub phone_number: Option<String>,
    pub vcard: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub referred_product: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub name: Option<String>,
    pub language: Option<String>,
    pub parameters: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageError {
    pub code: Option<String>,
    pub message: Option<String>,
    pub retryable: bool,
}

fn s(v: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_owned))
}

/// Who the two ends of a message are: the customer's number and ours.
pub struct Ends<'a> {
    pub customer: Option<&'a str>,
    pub business: Option<&'a str>,
}

impl Message {
    /// The message with wapipe's copy of its file: `media.url` (and
    /// `thumbnailUrl`) point at the API once it is stored; `status` and
    /// `error` say where it stands otherwise.
    pub fn with_file(mut self, file: Option<&message_media::Model>) -> Self {
        let Some(f) = file else {
            return self;
        };
        let media = self.media.get_or_insert_with(|| Media {
            url: None,
            media_id: f.media_id.clone(),
            mime_type: None,
            file_name: None,
            file_size: None,
            caption: None,
            thumbnail_url: None,
            status: None,
            error: None,
        });
        media.status = Some(f.status.clone());
        media.error = f.error.clone();
        if f.status == message_media::status::STORED {
            media.url = Some(crate::media::file_url(self.id));
            // Made on first request for any stored image.
            media.thumbnail_url = (f.thumbnail_sha256.is_some()
                || crate::media::has_thumbnail(f.mime_type.as_deref()))
            .then(|| crate::media::thumbnail_url(self.id));
            if f.mime_type.is_some() {
                media.mime_type = f.mime_type.clone();
            }
            if f.file_size.is_some() {
                media.file_size = f.file_size;
            }
        } else if self.direction == "inbound" {
            // Meta's own URL needs the number's token and expires in
            // minutes: of no use to a client.
            media.url = None;
            media.thumbnail_url = None;
        }
        self
    }

    pub fn from_row(m: messages::Model, ends: &Ends<'_>) -> Self {
        let inbound = m.direction == messages::Direction::Inbound;
        let (from, to) = if inbound {
            (ends.customer, ends.business)
        } else {
            (ends.business, ends.customer)
        };
        let media = m.media.as_ref().map(|v| Media {
            url: s(v, &["url", "link"]),
            media_id: s(v, &["id", "media_id"]),
            mime_type: s(v, &["mime_type"]),
            file_name: s(v, &["filename", "file_name"]),
            file_size: v
                .get("file_size")
                .or_else(|| v.get("fileSize"))
                .and_then(|x| x.as_i64()),
            caption: s(v, &["caption"]),
            thumbnail_url: s(v, &["thumbnail_url"]),
            status: None,
            error: None,
        });
        let location = m.location.as_ref().and_then(|v| {
            Some(Location {
                latitude: v.get("latitude")?.as_f64()?,
                longitude: v.get("longitude")?.as_f64()?,
                name: s(v, &["name"]),
                address: s(v, &["address"]),
            })
        });
        let contact = m.contacts.as_ref().and_then(|v| {
            let first = v.as_array().and_then(|a| a.first()).unwrap_or(v);
            Some(Contact {
                name: first.get("name").and_then(|n| {
                    s(n, &["formatted_name"]).or_else(|| n.as_str().map(str::to_owned))
                }),
                phone_number: first
                    .get("phones")
                    .and_then(|p| p.as_array())
                    .and_then(|p| p.first())
                    .and_then(|p| s(p, &["phone", "wa_id"])),
                vcard: s(first, &["vcard"]),
            })
            .filter(|c| c.name.is_some() || c.phone_number.is_some() || c.vcard.is_some())
        });
        let context = m.context.as_ref().map(|v| Context {
            message_id: s(v, &["message_id", "id"]),
            from: s(v, &["from"]),
            referred_product: v.get("referred_product").cloned(),
        });
        let template = m.template.as_ref().map(|v| TemplateRef {
            name: s(v, &["name"]),
            language: v
                .get("language")
                .and_then(|l| s(l, &["code"]).or_else(|| l.as_str().map(str::to_owned))),
            parameters: v
                .get("components")
                .and_then(|c| c.as_array())
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c.get("parameters").and_then(|p| p.as_array()))
                        .flatten()
                        .filter_map(|p| s(p, &["text"]))
                        .collect()
                })
                .unwrap_or_default(),
        });
        let error = m.error_code.as_ref().map(|code| MessageError {
            code: Some(code.clone()),
            message: m.error_title.clone().or(m.error_details.clone()),
            retryable: false,
        });
        // Rows written before the workers stored the column: derived.
        let read_status = m.read_status.clone().or_else(|| {
            use crate::receipts::read_status_of;
            let seen = inbound && m.is_read;
            read_status_of(if seen {
                messages::MessageStatus::Read
            } else {
                m.status
            })
            .map(str::to_owned)
        });
        Self {
            id: m.id,
            chat_id: m.chat_id,
            text: m.text,
            kind: m.r#type,
            media,
            location,
            contact,
            direction: m.direction.to_string(),
            from: m.from.or(from.map(str::to_owned)),
            to: m.to.or(to.map(str::to_owned)),
            context,
            status: m.status.to_string(),
            read_status,
            read_at: m.read_at,
            delivered_at: m.delivered_at,
            sender_id: m.sender_id,
            sender_name: m.sender_name,
            sender_type: m.sender_type,
            provider: m.provider,
            provider_message_id: m.provider_message_id,
            provider_status: m.provider_status,
            template,
            error,
            timestamp: m.timestamp,
            created_at: m.created_at,
            updated_at: m.updated_at,
            metadata: m.metadata,
            is_deleted: m.is_deleted,
            origin: m.origin.to_string(),
            is_read: m.is_read,
            participant_id: m.participant_id,
        }
    }
}

/// Labels, transfers and groups of some chats, one query each (groups
/// only when one of them is a group's chat).
pub async fn chat_extras<C: ConnectionTrait>(
    db: &C,
    chats: &[&chats::Model],
) -> Result<ChatExtras, DbErr> {
    let mut out = ChatExtras::default();
    if chats.is_empty() {
        return Ok(out);
    }
    let ids: Vec<Uuid> = chats.iter().map(|c| c.id).collect();
    let ids = ids.as_slice();
    // Group chats carry the group's id (`provider_chat_id`).
    let parties: Vec<Uuid> = chats
        .iter()
        .filter(|c| c.provider_chat_id.is_some())
        .map(|c| c.customer_id)
        .collect();
    if !parties.is_empty() {
        out.groups = group_infos(db, parties).await?;
    }
    let rows = chat_labels::Entity::find()
        .inner_join(labels::Entity)
        .filter(chat_labels::Column::ChatId.is_in(pad_pow2(ids.to_vec())))
        .filter(labels::Column::IsDeleted.eq(false))
        .order_by_asc(chat_labels::Column::CreatedAt)
        .all(db)
        .await?;
    for r in rows {
        out.labels.entry(r.chat_id).or_default().push(r.label_id);
    }
    let transfers = chat_assignments::Entity::find()
        .filter(chat_assignments::Column::ChatId.is_in(pad_pow2(ids.to_vec())))
        .filter(chat_assignments::Column::AssignmentType.eq("transfer"))
        .order_by_asc(chat_assignments::Column::AssignedAt)
        .order_by_asc(chat_assignments::Column::Id)
        .all(db)
        .await?;
    for t in transfers {
        out.transfers.entry(t.chat_id).or_default().push(t);
    }
    Ok(out)
}

/// The groups of some parties (customer ids), with their member counts.
async fn group_infos<C: ConnectionTrait>(
    db: &C,
    parties: Vec<Uuid>,
) -> Result<HashMap<Uuid, GroupInfo>, DbErr> {
    use sea_orm::QuerySelect;
    let rows = groups::Entity::find()
        .filter(groups::Column::CustomerId.is_in(pad_pow2(parties)))
        .all(db)
        .await?;
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: HashMap<Uuid, i64> = group_participants::Entity::find()
        .select_only()
        .column(group_participants::Column::GroupId)
        .column_as(group_participants::Column::Id.count(), "n")
        .filter(
            group_participants::Column::GroupId
                .is_in(pad_pow2(rows.iter().map(|g| g.id).collect())),
        )
        .filter(group_participants::Column::Status.eq(group_participants::MEMBER))
        .group_by(group_participants::Column::GroupId)
        .into_tuple::<(Uuid, i64)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(|g| {
            let info = GroupInfo {
                participant_count: counts.get(&g.id).copied().unwrap_or(0).max(0) as u64,
                group_id: g.wa_group_id,
                subject: g.subject,
                description: g.description,
                invite_link: g.invite_link,
                join_approval_mode: g.join_approval_mode,
                status: g.status,
            };
            (g.customer_id, info)
        })
        .collect())
}

/// The views of some chats, by id, in the order given (absent ones left
/// out): the rows, then their extras.
pub async fn load_chats<C: ConnectionTrait>(db: &C, ids: &[Uuid]) -> Result<Vec<Chat>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: HashMap<Uuid, chats::Model> = chats::Entity::find()
        .filter(chats::Column::Id.is_in(pad_pow2(ids.to_vec())))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let extras = chat_extras(db, &rows.values().collect::<Vec<_>>()).await?;
    Ok(ids
        .iter()
        .filter_map(|id| rows.remove(id))
        .map(|c| Chat::from_row(c, &extras))
        .collect())
}

/// The views of some messages with their config ids, by id, in the order
/// given (absent ones left out): three queries whatever their number
/// (messages, their chats' numbers, their configs').
pub async fn load_messages<C: ConnectionTrait>(
    db: &C,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Message)>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: HashMap<Uuid, messages::Model> = messages::Entity::find()
        .filter(messages::Column::Id.is_in(pad_pow2(ids.to_vec())))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let chat_ids: Vec<Uuid> = rows
        .values()
        .map(|m| m.chat_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let phones: HashMap<Uuid, Option<String>> = chats::Entity::find()
        .filter(chats::Column::Id.is_in(pad_pow2(chat_ids)))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c.phone_number))
        .collect();
    let config_ids: Vec<Uuid> = rows
        .values()
        .map(|m| m.config_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let business: HashMap<Uuid, String> = whatsapp_configs::Entity::find()
        .filter(whatsapp_configs::Column::Id.is_in(pad_pow2(config_ids)))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c.business_number().to_owned()))
        .collect();
    // Only media messages have a file row: most batches skip the query.
    let with_media: Vec<Uuid> = rows
        .values()
        .filter(|m| m.media.is_some())
        .map(|m| m.id)
        .collect();
    let files = crate::media::files_of(db, &with_media).await?;
    Ok(ids
        .iter()
        .filter_map(|id| rows.remove(id))
        .map(|m| {
            let ends = Ends {
                customer: phones.get(&m.chat_id).and_then(|p| p.as_deref()),
                business: business.get(&m.config_id).map(String::as_str),
            };
            let file = files.get(&m.id);
            (m.config_id, Message::from_row(m, &ends).with_file(file))
        })
        .collect())
}

/// seed 002 FollowUp.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FollowUp {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub title: Option<String>,
    pub notes: Option<String>,
    pub scheduled_at: chrono::DateTime<chrono::Utc>,
    /// `pending | completed | cancelled | overdue`.
    pub status: String,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub completed_by: Option<Uuid>,
    /// `low | medium | high`.
    pub priority: String,
    pub reminder_sent: bool,
    pub reminder_sent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub created_by: Option<Uuid>,
    pub is_deleted: bool,
}

impl From<follow_ups::Model> for FollowUp {
    fn from(f: follow_ups::Model) -> Self {
        Self {
            id: f.id,
            chat_id: f.chat_id,
            agent_id: f.agent_id,
            title: f.title,
            notes: f.notes,
            scheduled_at: f.scheduled_at,
            status: f.status,
            completed_at: f.completed_at,
            completed_by: f.completed_by,
            priority: f.priority,
            reminder_sent: f.reminder_sent,
            reminder_sent_at: f.reminder_sent_at,
            created_at: f.created_at,
            updated_at: f.updated_at,
            created_by: f.created_by,
            is_deleted: f.is_deleted,
        }
    }
}
