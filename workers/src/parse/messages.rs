//! Inbound messages: the `messages` rows of a batch and everything a new
//! one moves (its customer, chat, conversation, effects and chat counters),
//! each table written set-based ([`super::batch`]).
//!
//! The rules are those of DESIGN §4–§5: uniqueness lives in the database
//! (`ON CONFLICT`), counters move only for messages really inserted, a
//! customer has at most one open conversation, the chat's last message
//! follows Meta's time. Rows of one batch are handled in batch order, so
//! the result is the one processing the events one by one gives.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect,
};
use uuid::Uuid;
use wapipe_domain::receipts::read_status_of;
use wapipe_shared::db::{pow2_chunks, with_values};
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_shared::entities::{chats, customers};

use super::batch::{CHUNK, IN_CHUNK, any_of};
use super::chats::{count_in_chats, upsert_chats};
use super::conversations::attach_conversations;
use super::customers::{upsert_customers, who};
use super::effects::{
    Author, EffectOutcome, EffectSource, apply_effect, apply_late_effects, wait_for_targets,
};
use super::groups::{Party, party, upsert_from_messages};
use super::route::PendingMessage;

/// What storing an inbound message did.
#[derive(Debug, Clone)]
pub(super) struct InboundStored {
    pub customer_id: Uuid,
    pub chat_id: Uuid,
    pub message_id: Uuid,
    /// False when the wamid was already stored (or earlier in the batch).
    pub is_new: bool,
    /// The chat was created by this batch.
    pub new_chat: bool,
    /// For a new reaction, edit or revoke: whether its target was found.
    pub effect: Option<EffectOutcome>,
    /// Reactions, edits and revokes that came before this (new) message and
    /// were applied to it now.
    pub late_effects: u64,
}

/// Stores the batch's inbound messages: customers, chats, conversations,
/// messages, effects and chat counters. Returns one outcome per row, in
/// order.
pub(super) async fn store_inbound<C: ConnectionTrait>(
    db: &C,
    rows: &[PendingMessage],
    now: DateTime<Utc>,
) -> Result<Vec<InboundStored>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let groups = upsert_from_messages(db, rows, now).await?;
    let mut parties = groups.parties;
    parties.extend(
        upsert_customers(db, rows, now)
            .await?
            .into_iter()
            .map(|(k, c)| (Party::Person(k), c)),
    );
    let members = groups.members;
    let (chats, created_chats) = upsert_chats(db, rows, &parties, now).await?;

    // Which wamids are stored already; the first of a wamid in the batch
    // is the new one, later copies are duplicates of it.
    let mut known = existing_messages(db, rows).await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut fresh = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let key = (r.config_id, r.m.provider_message_id.clone());
        match known.get(&key) {
            Some(id) => ids.push((*id, false)),
            None => {
                let id = Uuid::now_v7();
                known.insert(key, id);
                ids.push((id, true));
                fresh.push(i);
            }
        }
    }
    let customer_of = |r: &PendingMessage| -> Result<&customers::Model, DbErr> {
        parties.get(&party(r)).ok_or_else(|| {
            DbErr::RecordNotFound(format!("customer {:?} not stored", r.sender.key()))
        })
    };
    // Who wrote it: the customer, or in a group the member.
    let author_of = |r: &PendingMessage| -> Result<&customers::Model, DbErr> {
        match r.m.group_id {
            Some(_) => members.get(&who(r)).ok_or_else(|| {
                DbErr::RecordNotFound(format!("member {:?} not stored", r.sender.key()))
            }),
            None => customer_of(r),
        }
    };
    let chat_of = |customer_id: Uuid| -> Result<&chats::Model, DbErr> {
        chats
            .get(&customer_id)
            .ok_or_else(|| DbErr::RecordNotFound(format!("chat of customer {customer_id}")))
    };

    // Conversations first, so each new message is inserted with its own.
    let fresh_rows: Vec<(&PendingMessage, Uuid, Uuid)> = fresh
        .iter()
        .map(|&i| {
            let c = customer_of(&rows[i])?;
            Ok((&rows[i], c.id, chat_of(c.id)?.id))
        })
        .collect::<Result<_, DbErr>>()?;
    let conversation_of = attach_conversations(db, &fresh_rows, now).await?;

    let mut models = Vec::with_capacity(fresh.len());
    for (n, &i) in fresh.iter().enumerate() {
        let (_, customer_id, chat_id) = fresh_rows[n];
        let mut model = new_message(
            ids[i].0,
            chat_id,
            customer_id,
            Some(conversation_of[n]),
            &rows[i],
            now,
        );
        if rows[i].m.group_id.is_some() {
            model.participant_id = Set(Some(author_of(&rows[i])?.id));
            model.sender_name = Set(rows[i].sender.name.clone());
        }
        models.push(model);
    }
    let mut inserted = 0;
    for chunk in pow2_chunks(models, CHUNK) {
        inserted += messages::Entity::insert_many(chunk)
            .on_conflict(wamid_stored())
            .exec_without_returning(db)
            .await?;
    }
    if inserted != fresh.len() as u64 {
        // Another transaction stored one of these wamids since we looked:
        // our conversation counts would be off by it. Roll back; the retry
        // sees it as a duplicate.
        return Err(DbErr::Custom(format!(
            "{} of {} new messages were stored concurrently; retrying",
            fresh.len() as u64 - inserted,
            fresh.len()
        )));
    }

    // Effects that arrived before their target, oldest first; then the
    // batch's own, in batch order (a reaction to a message earlier in the
    // batch finds it).
    let fresh_keys: Vec<(Uuid, &str)> = fresh
        .iter()
        .map(|&i| (rows[i].config_id, rows[i].m.provider_message_id.as_str()))
        .collect();
    let mut late = apply_late_effects(db, &fresh_keys, now).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut waiting = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let customer = customer_of(r)?;
        let chat_id = chat_of(customer.id)?.id;
        let (message_id, is_new) = ids[i];
        let effect = match (&r.m.effect, is_new) {
            (Some(effect), true) => Some(
                apply_effect(
                    db,
                    r.config_id,
                    chat_id,
                    Author::Customer(author_of(r)?),
                    effect,
                    EffectSource {
                        wamid: &r.m.provider_message_id,
                        at: r.at,
                    },
                    now,
                )
                .await?,
            ),
            _ => None,
        };
        if let (Some(EffectOutcome::TargetMissing), Some(e)) = (effect, &r.m.effect) {
            // Kept pending: applied when the target arrives.
            waiting.push((message_id, e.target().to_owned()));
        }
        let late_effects = if is_new {
            late.remove(&(r.config_id, r.m.provider_message_id.clone()))
                .unwrap_or(0)
        } else {
            0
        };
        out.push(InboundStored {
            customer_id: customer.id,
            chat_id,
            message_id,
            is_new,
            new_chat: created_chats.contains(&chat_id),
            effect,
            late_effects,
        });
    }
    wait_for_targets(db, waiting).await?;
    count_in_chats(db, rows, &out, now).await?;
    Ok(out)
}

/// The stored messages among a list of (config, wamid): a lateral lookup
/// per pair, which can only be a probe of the unique index. (A plain join
/// is planned from size estimates; on a table never analysed it may still
/// hash-join a full scan.)
const EXISTING_BY_JOIN: &str = "SELECT m.id, m.config_id, m.provider_message_id FROM {values} \
     CROSS JOIN LATERAL (SELECT id, config_id, provider_message_id FROM messages \
       WHERE config_id = v.config_id AND provider_message_id = v.wamid LIMIT 1) AS m";
const WAMID_KEY_COLUMNS: [(&str, &str); 2] = [("config_id", "uuid"), ("wamid", "text")];

/// (config, wamid) -> message id, for the batch's wamids already stored.
async fn existing_messages<C: ConnectionTrait>(
    db: &C,
    rows: &[PendingMessage],
) -> Result<HashMap<(Uuid, String), Uuid>, DbErr> {
    let wamids: Vec<&str> = rows
        .iter()
        .map(|r| r.m.provider_message_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let configs: HashSet<Uuid> = rows.iter().map(|r| r.config_id).collect();
    let mut out = HashMap::new();
    if db.get_database_backend() == DbBackend::Postgres {
        // One lookup per wamid, not `IN (…)`: for an IN list of hundreds
        // of wamids PostgreSQL (without statistics, as on a table never
        // analysed) estimates that it matches everything and scans every
        // message of the config (62 ms at 300k messages); the probes take
        // 1 ms.
        let keys: Vec<(Uuid, &str)> = rows
            .iter()
            .map(|r| (r.config_id, r.m.provider_message_id.as_str()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for chunk in keys.chunks(IN_CHUNK) {
            let found = with_values(
                db,
                EXISTING_BY_JOIN,
                Vec::new(),
                &WAMID_KEY_COLUMNS,
                chunk
                    .iter()
                    .map(|(c, w)| vec![(*c).into(), (*w).to_owned().into()])
                    .collect(),
            )
            .await?;
            for r in found {
                let id: Uuid = r.try_get_by_index(0)?;
                let config_id: Uuid = r.try_get_by_index(1)?;
                let wamid: String = r.try_get_by_index(2)?;
                out.insert((config_id, wamid), id);
            }
        }
        return Ok(out);
    }
    for chunk in wamids.chunks(IN_CHUNK) {
        let found: Vec<(Uuid, Uuid, Option<String>)> = messages::Entity::find()
            .select_only()
            .column(messages::Column::Id)
            .column(messages::Column::ConfigId)
            .column(messages::Column::ProviderMessageId)
            // Both columns, so the unique (config, wamid) index serves it.
            .filter(messages::Column::ConfigId.is_in(any_of(configs.iter().copied())))
            .filter(messages::Column::ProviderMessageId.is_in(any_of(chunk.iter().copied())))
            .into_tuple()
            .all(db)
            .await?;
        for (id, config_id, wamid) in found {
            if let Some(w) = wamid {
                out.insert((config_id, w), id);
            }
        }
    }
    Ok(out)
}

/// A message whose wamid the config already has is not stored again.
pub(super) fn wamid_stored() -> OnConflict {
    OnConflict::columns([
        messages::Column::ConfigId,
        messages::Column::ProviderMessageId,
    ])
    .do_nothing()
    .to_owned()
}

/// An inbound message's row (the coexistence imports adapt it for the
/// business's own messages).
pub(super) fn new_message(
    id: Uuid,
    chat_id: Uuid,
    customer_id: Uuid,
    conversation_id: Option<Uuid>,
    r: &PendingMessage,
    now: DateTime<Utc>,
) -> messages::ActiveModel {
    let (config_id, m) = (r.config_id, &r.m);
    messages::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        chat_id: Set(chat_id),
        customer_id: Set(customer_id),
        conversation_id: Set(conversation_id),
        provider_message_id: Set(Some(m.provider_message_id.clone())),
        direction: Set(Direction::Inbound),
        origin: Set(Origin::User),
        sender_type: Set("customer".to_owned()),
        sender_id: Set(None),
        r#type: Set(m.kind.clone()),
        text: Set(m.text.clone()),
        media: Set(m.media.clone()),
        location: Set(m.location.clone()),
        contacts: Set(m.contacts.clone()),
        interactive: Set(m.interactive.clone()),
        template: Set(None),
        reaction: Set(m.reaction.clone()),
        reactions: Set(None),
        context: Set(m.context.clone()),
        reply_to_provider_id: Set(m.reply_to.clone()),
        is_forwarded: Set(m.is_forwarded),
        referral: Set(m.referral.clone()),
        payload: Set(Some(m.payload.clone())),
        errors: Set(m.errors.clone()),
        // Inbound messages have no delivery of ours to track: they are
        // delivered by definition, and `is_read` says whether an agent saw it.
        status: Set(MessageStatus::Delivered),
        error_code: Set(None),
        error_title: Set(None),
        error_details: Set(None),
        timestamp: Set(m.timestamp),
        sent_at: Set(None),
        delivered_at: Set(None),
        read_at: Set(None),
        failed_at: Set(None),
        dispatched_at: Set(None),
        attempt_count: Set(0),
        is_read: Set(false),
        is_edited: Set(false),
        edit_history: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        effect_target: Set(None),
        answers_message_id: Set(None),
        answer_seq: Set(None),
        provider: Set("meta-whatsapp".to_owned()),
        // The customer's number (a username-only sender has none), and ours.
        from: Set(r.sender.wa_id.clone()),
        to: Set(Some(r.business.clone())),
        // `read` once an agent marks it read (the API).
        read_status: Set(read_status_of(MessageStatus::Delivered).map(str::to_owned)),
        ..Default::default()
    }
}

#[cfg(test)]
mod plan_tests {
    use sea_orm::ConnectionTrait;
    use wapipe_shared::db::{self, with_values};

    use super::{EXISTING_BY_JOIN, WAMID_KEY_COLUMNS};

    /// The batch's wamid lookup stays one index probe per wamid on a big
    /// table that was never analysed (autovacuum off, or a fresh restore).
    /// Written as `IN (…)` it scanned every message of the config.
    #[tokio::test]
    async fn wamid_lookup_probes_the_index_per_wamid_on_a_big_unanalysed_table() {
        // A plain URL from the test kit: its copy of this crate is not this one.
        let url = wapipe_testkit::db::fresh_postgres_url()
            .await
            .expect("create a test database (is PostgreSQL on 127.0.0.1:5432?)");
        let db = db::connect(&url, 2).await.expect("connect");
        let config = "00000000-0000-0000-0000-000000000001";
        // Rows only (no parents): foreign keys are not what is measured.
        db.execute_unprepared(&format!(
            "SET session_replication_role = replica; \
             INSERT INTO messages (id, created_at, updated_at, config_id, chat_id, customer_id, \
               provider_message_id, direction, origin, sender_type, type, status) \
             SELECT gen_random_uuid(), now(), now(), '{config}', gen_random_uuid(), \
               gen_random_uuid(), 'wamid.' || g, 'inbound', 'user', 'customer', 'text', 'received' \
             FROM generate_series(1, 50000) g; \
             SET session_replication_role = origin;"
        ))
        .await
        .expect("fill");
        let config: uuid::Uuid = config.parse().expect("uuid");
        let rows = (0..256)
            .map(|i| {
                let wamid = if i % 2 == 0 {
                    format!("wamid.{}", i + 1)
                } else {
                    format!("wamid.new{i}")
                };
                vec![config.into(), wamid.into()]
            })
            .collect();
        let plan: Vec<String> = with_values(
            &db,
            &format!("EXPLAIN ANALYZE {EXISTING_BY_JOIN}"),
            Vec::new(),
            &WAMID_KEY_COLUMNS,
            rows,
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("plan line"))
        .collect();
        let text = plan.join("\n");
        assert!(text.contains("ux_messages_wamid"), "{text}");
        let cond = plan
            .iter()
            .find(|l| l.contains("Index Cond"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(cond.contains("provider_message_id"), "{text}");
        assert!(!text.contains("Rows Removed by"), "{text}");
        assert!(!text.contains("Seq Scan on messages"), "{text}");
        // 128 of the 256 exist.
        assert!(
            plan.iter()
                .any(|l| l.contains("Nested Loop") && l.contains("rows=128")),
            "{text}"
        );
    }
}
