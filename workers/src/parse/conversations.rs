//! Conversations: a customer's 24-hour service windows. A batch's new
//! messages are attached to the window that covers them or open a new
//! one; windows that have passed are expired lazily here and by the
//! periodic sweep ([`expire_conversations`]).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder,
};
use uuid::Uuid;
use wapipe_domain::clock::WINDOW;
use wapipe_shared::db::{pow2_chunks, with_values};
use wapipe_shared::entities::conversations::{self, ConversationStatus};

use super::batch::{CHUNK, IN_CHUNK, any_of};
use super::route::PendingMessage;

/// A conversation as the batch leaves it.
struct Conv {
    model: conversations::Model,
    /// As loaded; `None` for one the batch creates.
    loaded: Option<conversations::Model>,
    added: i32,
}

/// Attaches each new inbound message (customer, chat, Meta time) to its
/// customer's 24-hour window, in order, and returns each one's
/// conversation id.
///
/// - Open conversations whose window has passed (by the clock) become
///   `expired` first: the lazy half of [`expire_conversations`].
/// - A conversation covers the message when the message's own window
///   `[at, at + 24h]` overlaps `[opened_at, expires_at]`; it then grows to
///   include the message (`expires_at` = last inbound + 24 h).
/// - Otherwise a new conversation starts at `at`: `open` if its window is
///   still running and no other one is open, else born `expired` (a late
///   message from long ago). So at most one conversation per customer is
///   open, whatever order messages arrive in.
pub(super) async fn attach_conversations<C: ConnectionTrait>(
    db: &C,
    fresh: &[(&PendingMessage, Uuid, Uuid)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbErr> {
    use conversations::Column as Cv;
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    let customers: Vec<Uuid> = fresh
        .iter()
        .map(|f| f.1)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let configs: HashSet<Uuid> = fresh.iter().map(|f| f.0.config_id).collect();
    let min_at = fresh.iter().map(|f| f.0.at).min().unwrap_or(now);
    let max_at = fresh.iter().map(|f| f.0.at).max().unwrap_or(now);
    let mut convs: Vec<Conv> = Vec::new();
    for chunk in customers.chunks(IN_CHUNK) {
        let loaded = conversations::Entity::find()
            .filter(Cv::ConfigId.is_in(any_of(configs.iter().copied())))
            .filter(Cv::CustomerId.is_in(any_of(chunk.iter().copied())))
            .filter(
                Condition::any()
                    .add(Cv::Status.eq(ConversationStatus::Open))
                    .add(
                        Condition::all()
                            .add(Cv::OpenedAt.lte(max_at + WINDOW))
                            .add(Cv::ExpiresAt.gte(min_at)),
                    ),
            )
            .order_by_desc(Cv::OpenedAt)
            .all(db)
            .await?;
        convs.extend(loaded.into_iter().map(|c| Conv {
            loaded: Some(c.clone()),
            model: c,
            added: 0,
        }));
    }
    // Per customer, newest window first.
    let mut of_customer: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, c) in convs.iter().enumerate() {
        of_customer.entry(c.model.customer_id).or_default().push(i);
    }

    let mut out = Vec::with_capacity(fresh.len());
    for &(row, customer_id, chat_id) in fresh {
        let at = row.at;
        let list = of_customer.entry(customer_id).or_default();
        for &i in list.iter() {
            let c = &mut convs[i].model;
            if c.status == ConversationStatus::Open && c.expires_at <= now {
                c.status = ConversationStatus::Expired;
                c.closed_at = Some(c.expires_at);
            }
        }
        let open = list
            .iter()
            .any(|&i| convs[i].model.status == ConversationStatus::Open);
        let covering = list.iter().copied().find(|&i| {
            let c = &convs[i].model;
            c.opened_at <= at + WINDOW && c.expires_at >= at
        });
        if let Some(i) = covering {
            let conv = &mut convs[i];
            let c = &mut conv.model;
            c.opened_at = std::cmp::min(c.opened_at, at);
            c.last_inbound_at = std::cmp::max(c.last_inbound_at, at);
            c.expires_at = c.last_inbound_at + WINDOW;
            // A late message can stretch an expired window past now: it is
            // open again, unless another conversation already is.
            if c.status == ConversationStatus::Expired {
                if c.expires_at > now && !open {
                    c.status = ConversationStatus::Open;
                    c.closed_at = None;
                } else {
                    c.closed_at = Some(c.expires_at);
                }
            }
            c.chat_id = c.chat_id.or(Some(chat_id));
            c.message_count += 1;
            conv.added += 1;
            out.push(c.id);
            continue;
        }
        let expires_at = at + WINDOW;
        let is_open = expires_at > now && !open;
        let id = Uuid::now_v7();
        convs.push(Conv {
            model: conversations::Model {
                id,
                created_at: now,
                updated_at: now,
                config_id: row.config_id,
                customer_id,
                chat_id: Some(chat_id),
                status: if is_open {
                    ConversationStatus::Open
                } else {
                    ConversationStatus::Expired
                },
                opened_at: at,
                last_inbound_at: at,
                expires_at,
                closed_at: (!is_open).then_some(expires_at),
                provider_conversation_id: None,
                origin_type: None,
                message_count: 1,
            },
            loaded: None,
            added: 1,
        });
        let new = convs.len() - 1;
        // Keep the newest-first order the search above relies on.
        let pos = list
            .iter()
            .position(|&i| convs[i].model.opened_at <= at)
            .unwrap_or(list.len());
        list.insert(pos, new);
        out.push(id);
    }

    let mut created = Vec::new();
    let mut changed = Vec::new();
    for conv in &convs {
        let c = &conv.model;
        let Some(was) = &conv.loaded else {
            created.push(conversations::ActiveModel {
                id: Set(c.id),
                created_at: Set(c.created_at),
                updated_at: Set(c.updated_at),
                config_id: Set(c.config_id),
                customer_id: Set(c.customer_id),
                chat_id: Set(c.chat_id),
                status: Set(c.status),
                opened_at: Set(c.opened_at),
                last_inbound_at: Set(c.last_inbound_at),
                expires_at: Set(c.expires_at),
                closed_at: Set(c.closed_at),
                provider_conversation_id: Set(None),
                origin_type: Set(None),
                message_count: Set(c.message_count),
            });
            continue;
        };
        if conv.added == 0 && c.status == was.status {
            continue;
        }
        changed.push(ConvChange {
            id: c.id,
            added: conv.added,
            opened_at: c.opened_at,
            last_inbound_at: c.last_inbound_at,
            expires_at: c.expires_at,
            status: (c.status != was.status || c.closed_at != was.closed_at)
                .then_some((c.status, c.closed_at)),
            chat_id: if was.chat_id.is_none() {
                c.chat_id
            } else {
                None
            },
        });
    }
    update_conversations(db, &changed, now).await?;
    for chunk in pow2_chunks(created, CHUNK) {
        conversations::Entity::insert_many(chunk)
            .exec_without_returning(db)
            .await?;
    }
    Ok(out)
}

/// What a batch changes in a stored conversation.
struct ConvChange {
    id: Uuid,
    /// New messages in it; the window fields are written only when > 0.
    added: i32,
    opened_at: DateTime<Utc>,
    last_inbound_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// A new status and `closed_at`, when they changed.
    status: Option<(ConversationStatus, Option<DateTime<Utc>>)>,
    /// Set only where the row has none.
    chat_id: Option<Uuid>,
}

/// Writes only what changed, and the count as an increment, so the sweep
/// expiring a row meanwhile is not undone. One statement on PostgreSQL,
/// one per conversation elsewhere.
async fn update_conversations<C: ConnectionTrait>(
    db: &C,
    changed: &[ConvChange],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use conversations::Column as Cv;
    if changed.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() == DbBackend::Postgres {
        let rows = changed
            .iter()
            .map(|c| {
                vec![
                    c.id.into(),
                    c.added.into(),
                    c.opened_at.into(),
                    c.last_inbound_at.into(),
                    c.expires_at.into(),
                    c.status.is_some().into(),
                    c.status.map(|(s, _)| s.as_str().to_owned()).into(),
                    c.status.and_then(|(_, at)| at).into(),
                    c.chat_id.into(),
                ]
            })
            .collect();
        with_values(
            db,
            "UPDATE conversations AS c SET updated_at = $1, \
             opened_at = CASE WHEN v.added > 0 THEN v.opened_at ELSE c.opened_at END, \
             last_inbound_at = CASE WHEN v.added > 0 THEN v.last_inbound_at ELSE c.last_inbound_at END, \
             expires_at = CASE WHEN v.added > 0 THEN v.expires_at ELSE c.expires_at END, \
             message_count = c.message_count + v.added, \
             status = CASE WHEN v.set_status THEN v.status ELSE c.status END, \
             closed_at = CASE WHEN v.set_status THEN v.closed_at ELSE c.closed_at END, \
             chat_id = COALESCE(c.chat_id, v.chat_id) \
             FROM {values} WHERE c.id = v.id",
            vec![now.into()],
            &[
                ("id", "uuid"),
                ("added", "int4"),
                ("opened_at", "timestamptz"),
                ("last_inbound_at", "timestamptz"),
                ("expires_at", "timestamptz"),
                ("set_status", "bool"),
                ("status", "text"),
                ("closed_at", "timestamptz"),
                ("chat_id", "uuid"),
            ],
            rows,
        )
        .await?;
        return Ok(());
    }
    for c in changed {
        let mut q = conversations::Entity::update_many().col_expr(Cv::UpdatedAt, Expr::value(now));
        if c.added > 0 {
            q = q
                .col_expr(Cv::OpenedAt, Expr::value(c.opened_at))
                .col_expr(Cv::LastInboundAt, Expr::value(c.last_inbound_at))
                .col_expr(Cv::ExpiresAt, Expr::value(c.expires_at))
                .col_expr(Cv::MessageCount, Expr::col(Cv::MessageCount).add(c.added));
        }
        if let Some((status, closed_at)) = c.status {
            q = q
                .col_expr(Cv::Status, Expr::value(status.as_str()))
                .col_expr(Cv::ClosedAt, Expr::value(closed_at));
        }
        if let Some(chat_id) = c.chat_id {
            q = q.col_expr(Cv::ChatId, Expr::value(chat_id));
        }
        q.filter(Cv::Id.eq(c.id)).exec(db).await?;
    }
    Ok(())
}

/// Expires every open conversation whose window has passed. Returns how
/// many. The parse worker also does this lazily, per customer, when the
/// next message comes; run this on a timer so the API's view of the window
/// is right for customers who went quiet.
pub async fn expire_conversations<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    use conversations::Column as Cv;
    let now = wapipe_domain::clock::now();
    let res = conversations::Entity::update_many()
        .col_expr(
            Cv::Status,
            Expr::value(ConversationStatus::Expired.as_str()),
        )
        .col_expr(Cv::ClosedAt, Expr::col(Cv::ExpiresAt))
        .col_expr(Cv::UpdatedAt, Expr::value(now))
        // A literal, so the partial index `ix_conversations_open_expiry`
        // (whose predicate the planner matches only against constants) serves it.
        .filter(Expr::cust("status = 'open'"))
        .filter(Cv::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
