//! Reactions, edits and revokes: applied to their target message once,
//! when the message carrying them is new; one whose target is not stored
//! yet waits (`effect_target`) and is applied when the target arrives.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait,
    QueryFilter,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;
use wapipe_shared::db::with_values;
use wapipe_shared::entities::customers;
use wapipe_shared::entities::messages::{self, Direction};

use super::batch::{CHUNK, IN_CHUNK, any_of};
use super::extract::{Effect, extract_message};

/// The reaction, edit or revoke message that carries an effect.
#[derive(Debug, Clone, Copy)]
pub(super) struct EffectSource<'a> {
    pub wamid: &'a str,
    /// Its (Meta) time.
    pub at: DateTime<Utc>,
}

/// Who wrote a reaction, edit or revoke: the customer (an inbound
/// message), or the business from the WhatsApp Business app (an echo,
/// under its number).
#[derive(Debug, Clone, Copy)]
pub(super) enum Author<'a> {
    Customer(&'a customers::Model),
    Business(&'a str),
}

/// What applying an effect found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EffectOutcome {
    /// Applied to this message (its id).
    Applied(Uuid),
    /// The target is not stored (yet): the effect stays in the reaction,
    /// edit or revoke row's own columns.
    TargetMissing,
}

/// Applies a reaction, edit or revoke to its target message, once: it runs
/// only when the reaction/edit/revoke message row was newly inserted.
///
/// Edits and revokes apply only to the author's own messages (nobody else
/// can edit them): the customer's inbound ones, or the business's
/// outbound ones in that chat; reactions to any message of the chat.
pub(super) async fn apply_effect<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    chat_id: Uuid,
    author: Author<'_>,
    effect: &Effect,
    source: EffectSource<'_>,
    now: DateTime<Utc>,
) -> Result<EffectOutcome, DbErr> {
    use messages::Column as M;
    let mut q = messages::Entity::find()
        .filter(M::ConfigId.eq(config_id))
        .filter(M::ProviderMessageId.eq(effect.target()));
    q = match (effect, author) {
        (Effect::React { .. }, _) => q.filter(M::ChatId.eq(chat_id)),
        // In a group the author is the member who wrote it
        // (`participant_id`); the message's customer is the group.
        (Effect::Edit { .. } | Effect::Revoke { .. }, Author::Customer(customer)) => q
            .filter(
                Condition::any()
                    .add(M::CustomerId.eq(customer.id))
                    .add(M::ParticipantId.eq(customer.id)),
            )
            .filter(M::Direction.eq(Direction::Inbound)),
        (Effect::Edit { .. } | Effect::Revoke { .. }, Author::Business(_)) => q
            .filter(M::ChatId.eq(chat_id))
            .filter(M::Direction.eq(Direction::Outbound)),
    };
    let Some(target) = q.one(db).await? else {
        return Ok(EffectOutcome::TargetMissing);
    };
    let mut am = messages::ActiveModel {
        id: Set(target.id),
        updated_at: Set(now),
        ..Default::default()
    };
    match effect {
        Effect::React { emoji, .. } => {
            let who = match author {
                Author::Customer(customer) => customer
                    .wa_id
                    .clone()
                    .or_else(|| customer.user_id.clone())
                    .unwrap_or_else(|| customer.id.to_string()),
                Author::Business(number) => number.to_owned(),
            };
            let mut map = match target.reactions {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            // An older reaction arriving late must not undo a newer one.
            let newer_known = map
                .get(&who)
                .and_then(|r| r.get("at"))
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .is_some_and(|t| t > source.at);
            if !newer_known {
                match emoji {
                    Some(e) => {
                        map.insert(
                            who,
                            json!({"emoji": e, "at": source.at.to_rfc3339(), "message_id": source.wamid}),
                        );
                    }
                    None => {
                        map.remove(&who);
                    }
                }
                am.reactions = Set((!map.is_empty()).then_some(Value::Object(map)));
            }
        }
        Effect::Edit { text, .. } => {
            let mut history = match target.edit_history {
                Some(Value::Array(h)) => h,
                _ => Vec::new(),
            };
            history.push(json!({
                "text": target.text,
                "edited_at": source.at.to_rfc3339(),
                "edit_message_id": source.wamid,
            }));
            am.edit_history = Set(Some(Value::Array(history)));
            am.text = Set(text.clone());
            am.is_edited = Set(true);
        }
        Effect::Revoke { .. } => {
            // The text and edit history stay: agents keep what they saw,
            // lists hide the row by `is_deleted`.
            am.is_deleted = Set(true);
            am.deleted_at = Set(Some(source.at));
        }
    }
    messages::Entity::update_many()
        .set(am)
        .filter(M::Id.eq(target.id))
        .exec(db)
        .await?;
    Ok(EffectOutcome::Applied(target.id))
}

/// Marks effects whose target is not stored yet with the target's wamid
/// (`effect_target`), to be applied when it arrives: one statement on
/// PostgreSQL, one per effect elsewhere.
pub(super) async fn wait_for_targets<C: ConnectionTrait>(
    db: &C,
    waiting: Vec<(Uuid, String)>,
) -> Result<(), DbErr> {
    if waiting.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() == DbBackend::Postgres {
        for chunk in waiting.chunks(CHUNK) {
            with_values(
                db,
                "UPDATE messages AS m SET effect_target = v.target FROM {values} WHERE m.id = v.id",
                Vec::new(),
                &[("id", "uuid"), ("target", "text")],
                chunk
                    .iter()
                    .map(|(id, target)| vec![(*id).into(), target.clone().into()])
                    .collect(),
            )
            .await?;
        }
        return Ok(());
    }
    for (id, target) in waiting {
        messages::Entity::update_many()
            .col_expr(messages::Column::EffectTarget, Expr::value(target))
            .filter(messages::Column::Id.eq(id))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Applies the stored reactions, edits and revokes that wait for one of
/// `targets` (config, wamid), oldest first, and clears their
/// `effect_target` (also when the rules refuse them: someone else's edit
/// never applies). Returns how many were applied per target.
pub(super) async fn apply_late_effects<C: ConnectionTrait>(
    db: &C,
    targets: &[(Uuid, &str)],
    now: DateTime<Utc>,
) -> Result<HashMap<(Uuid, String), u64>, DbErr> {
    use messages::Column as M;
    let mut applied = HashMap::new();
    if targets.is_empty() {
        return Ok(applied);
    }
    let configs: HashSet<Uuid> = targets.iter().map(|t| t.0).collect();
    let wanted: HashSet<(Uuid, &str)> = targets.iter().copied().collect();
    let mut pending = Vec::new();
    for chunk in targets.chunks(IN_CHUNK) {
        pending.extend(
            messages::Entity::find()
                .filter(M::ConfigId.is_in(any_of(configs.iter().copied())))
                .filter(M::EffectTarget.is_in(any_of(chunk.iter().map(|t| t.1))))
                .all(db)
                .await?
                .into_iter()
                .filter(|m| {
                    m.effect_target
                        .as_deref()
                        .is_some_and(|t| wanted.contains(&(m.config_id, t)))
                }),
        );
    }
    if pending.is_empty() {
        return Ok(applied);
    }
    pending.sort_by_key(|m| (m.timestamp.unwrap_or(m.created_at), m.id));
    // A group's messages are the member's who wrote them.
    let author_of = |m: &messages::Model| m.participant_id.unwrap_or(m.customer_id);
    let authors: HashMap<Uuid, customers::Model> = customers::Entity::find()
        .filter(customers::Column::Id.is_in(any_of(pending.iter().map(author_of))))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    for p in &pending {
        let effect = p
            .payload
            .as_ref()
            .and_then(|raw| extract_message(raw).effect);
        // An echo's effect (outbound) is the business's.
        let author = match p.direction {
            Direction::Outbound => Some(Author::Business(p.from.as_deref().unwrap_or_default())),
            Direction::Inbound => authors.get(&author_of(p)).map(Author::Customer),
        };
        if let (Some(effect), Some(author)) = (effect, author) {
            let outcome = apply_effect(
                db,
                p.config_id,
                p.chat_id,
                author,
                &effect,
                EffectSource {
                    wamid: p.provider_message_id.as_deref().unwrap_or_default(),
                    at: std::cmp::min(p.timestamp.unwrap_or(p.created_at), p.created_at),
                },
                now,
            )
            .await?;
            if matches!(outcome, EffectOutcome::Applied(_)) {
                *applied
                    .entry((p.config_id, effect.target().to_owned()))
                    .or_insert(0) += 1;
            }
        }
        messages::Entity::update_many()
            .col_expr(M::EffectTarget, Expr::value(Option::<String>::None))
            .filter(M::Id.eq(p.id))
            .exec(db)
            .await?;
    }
    Ok(applied)
}
