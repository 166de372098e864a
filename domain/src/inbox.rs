//! Who handles a chat: assign, transfer, unassign, resolve, close and
//! delete, keeping each agent's `current_chat_count` right and refusing an
//! agent at `maxConcurrentChats` unless forced. Every change writes its
//! `chat_assignments` row (a transfer is the chat's `transferHistory`), an
//! `audit_log` row and a `chat.updated` event in one transaction.
//!
//! Races are settled by conditional updates, never by reading first: the
//! capacity check is part of the agent's `UPDATE`, and the chat moves only
//! if it is still assigned as the caller saw it.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, ExprTrait,
    QueryFilter,
};
use serde_json::json;
use uuid::Uuid;
use wapipe_shared::entities::{agents, chat_assignments, chats};

use crate::audit::{self, Entry, Who};
use crate::clock;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("no agent with id {0}")]
    UnknownAgent(Uuid),
    #[error("agent {agent} already has {current} of at most {max} chats")]
    AgentFull { agent: Uuid, current: i32, max: i32 },
    #[error("the chat is not assigned to anyone")]
    NotAssigned,
    #[error("the chat was changed by someone else meanwhile; read it again")]
    Changed,
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// How a chat stops being someone's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Back to the queue (`unassigned`); the assignment is `cancelled`.
    Unassign,
    /// `resolved`; the assignment is `completed`.
    Resolve,
    /// `closed`; the assignment is `completed`.
    Close,
    /// Soft delete; the assignment is `cancelled`.
    Delete,
}

impl Release {
    fn action(self) -> &'static str {
        match self {
            Release::Unassign => "chat.unassign",
            Release::Resolve => "chat.resolve",
            Release::Close => "chat.close",
            Release::Delete => "chat.delete",
        }
    }
}

/// The agent id a change is recorded under as `assignedBy` (admins: none).
fn by_agent(who: Who) -> Option<Uuid> {
    (who.kind == "agent").then_some(who.id).flatten()
}

async fn free_slot<C: ConnectionTrait>(db: &C, agent: Uuid) -> Result<(), sea_orm::DbErr> {
    agents::Entity::update_many()
        .col_expr(
            agents::Column::CurrentChatCount,
            Expr::case(
                Expr::col(agents::Column::CurrentChatCount).gt(0),
                Expr::col(agents::Column::CurrentChatCount).sub(1),
            )
            .finally(0)
            .into(),
        )
        .col_expr(agents::Column::UpdatedAt, Expr::value(clock::now()))
        .filter(agents::Column::Id.eq(agent))
        .exec(db)
        .await?;
    Ok(())
}

async fn end_assignments<C: ConnectionTrait>(
    db: &C,
    chat: Uuid,
    status: &str,
) -> Result<(), sea_orm::DbErr> {
    let now = clock::now();
    chat_assignments::Entity::update_many()
        .col_expr(chat_assignments::Column::Status, Expr::value(status))
        .col_expr(chat_assignments::Column::CompletedAt, Expr::value(now))
        .col_expr(chat_assignments::Column::UpdatedAt, Expr::value(now))
        .filter(chat_assignments::Column::ChatId.eq(chat))
        .filter(chat_assignments::Column::Status.eq("active"))
        .exec(db)
        .await?;
    Ok(())
}

fn still_assigned_as(
    q: sea_orm::UpdateMany<chats::Entity>,
    seen: &chats::Model,
) -> sea_orm::UpdateMany<chats::Entity> {
    let q = q.filter(chats::Column::Id.eq(seen.id));
    match seen.assigned_to {
        Some(a) => q.filter(chats::Column::AssignedTo.eq(a)),
        None => q.filter(chats::Column::AssignedTo.is_null()),
    }
}

/// Gives the chat to `to`. With `transfer_reason`, it is a transfer (the
/// chat must be assigned to someone else now). `force` ignores the
/// agent's `maxConcurrentChats`; the caller decides who may force.
pub async fn assign(
    db: &DatabaseConnection,
    seen: &chats::Model,
    to: Uuid,
    who: Who,
    force: bool,
    transfer_reason: Option<String>,
) -> Result<chats::Model, InboxError> {
    let transfer = transfer_reason.is_some();
    if transfer && seen.assigned_to.is_none() {
        return Err(InboxError::NotAssigned);
    }
    if seen.assigned_to == Some(to) {
        return Ok(seen.clone());
    }
    let now = clock::now();
    let txn = wapipe_shared::db::begin_write(db).await?;
    let mut take = agents::Entity::update_many()
        .col_expr(
            agents::Column::CurrentChatCount,
            Expr::col(agents::Column::CurrentChatCount).add(1),
        )
        .col_expr(agents::Column::UpdatedAt, Expr::value(now))
        .filter(agents::Column::Id.eq(to))
        .filter(agents::Column::IsDeleted.eq(false));
    if !force {
        take = take.filter(
            Expr::col(agents::Column::CurrentChatCount)
                .lt(Expr::col(agents::Column::MaxConcurrentChats)),
        );
    }
    if take.exec(&txn).await?.rows_affected == 0 {
        let agent = agents::Entity::find_by_id(to)
            .one(&txn)
            .await?
            .filter(|a| !a.is_deleted)
            .ok_or(InboxError::UnknownAgent(to))?;
        return Err(InboxError::AgentFull {
            agent: to,
            current: agent.current_chat_count,
            max: agent.max_concurrent_chats,
        });
    }
    let moved = still_assigned_as(chats::Entity::update_many(), seen)
        .col_expr(chats::Column::AssignedTo, Expr::value(to))
        .col_expr(chats::Column::AssignedAt, Expr::value(now))
        .col_expr(chats::Column::AssignedBy, Expr::value(by_agent(who)))
        .col_expr(chats::Column::Status, Expr::value("assigned"))
        .col_expr(chats::Column::UpdatedAt, Expr::value(now))
        .filter(chats::Column::IsDeleted.eq(false))
        .exec(&txn)
        .await?;
    if moved.rows_affected == 0 {
        txn.rollback().await?;
        return Err(InboxError::Changed);
    }
    if let Some(old) = seen.assigned_to {
        free_slot(&txn, old).await?;
        end_assignments(
            &txn,
            seen.id,
            if transfer { "completed" } else { "cancelled" },
        )
        .await?;
    }
    chat_assignments::Entity::insert(chat_assignments::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(seen.config_id),
        chat_id: Set(seen.id),
        assigned_to: Set(to),
        assigned_by: Set(by_agent(who)),
        transferred_from: Set(seen.assigned_to),
        transfer_reason: Set(transfer_reason.clone()),
        assigned_at: Set(now),
        completed_at: Set(None),
        assignment_type: Set(if transfer { "transfer" } else { "manual" }.to_owned()),
        status: Set("active".to_owned()),
    })
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        Entry {
            config_id: Some(seen.config_id),
            who,
            action: if transfer {
                "chat.transfer"
            } else {
                "chat.assign"
            },
            entity_type: "chats",
            entity_id: seen.id.to_string(),
            before: Some(json!({"assignedTo": seen.assigned_to, "status": seen.status})),
            after: Some(json!({"assignedTo": to, "status": "assigned", "reason": transfer_reason})),
        },
    )
    .await?;
    let chat = chats::Entity::find_by_id(seen.id)
        .one(&txn)
        .await?
        .ok_or(InboxError::Changed)?;
    crate::events::record_chats(&txn, crate::events::CHAT_UPDATED, &[seen.id]).await?;
    txn.commit().await?;
    Ok(chat)
}

/// Takes the chat from its agent (if any) and moves it to the status
/// `how` says, freeing the agent's slot.
pub async fn release(
    db: &DatabaseConnection,
    seen: &chats::Model,
    who: Who,
    how: Release,
) -> Result<chats::Model, InboxError> {
    if how == Release::Unassign && seen.assigned_to.is_none() {
        return Err(InboxError::NotAssigned);
    }
    let now = clock::now();
    let txn = wapipe_shared::db::begin_write(db).await?;
    let mut q = still_assigned_as(chats::Entity::update_many(), seen)
        .col_expr(chats::Column::AssignedTo, Expr::value(Option::<Uuid>::None))
        .col_expr(chats::Column::UpdatedAt, Expr::value(now))
        .filter(chats::Column::IsDeleted.eq(false));
    let status = match how {
        Release::Unassign => "unassigned",
        Release::Resolve => "resolved",
        Release::Close => "closed",
        Release::Delete => seen.status.as_str(),
    };
    q = q.col_expr(chats::Column::Status, Expr::value(status));
    q = match how {
        Release::Resolve => q.col_expr(chats::Column::ResolvedAt, Expr::value(now)),
        Release::Close => q.col_expr(chats::Column::ClosedAt, Expr::value(now)),
        Release::Delete => q
            .col_expr(chats::Column::IsDeleted, Expr::value(true))
            .col_expr(chats::Column::DeletedAt, Expr::value(now)),
        Release::Unassign => q,
    };
    if q.exec(&txn).await?.rows_affected == 0 {
        txn.rollback().await?;
        return Err(InboxError::Changed);
    }
    if let Some(old) = seen.assigned_to {
        free_slot(&txn, old).await?;
        let ended = match how {
            Release::Resolve | Release::Close => "completed",
            Release::Unassign | Release::Delete => "cancelled",
        };
        end_assignments(&txn, seen.id, ended).await?;
    }
    audit::record(
        &txn,
        Entry {
            config_id: Some(seen.config_id),
            who,
            action: how.action(),
            entity_type: "chats",
            entity_id: seen.id.to_string(),
            before: Some(json!({"assignedTo": seen.assigned_to, "status": seen.status})),
            after: Some(json!({
                "assignedTo": null,
                "status": status,
                "isDeleted": how == Release::Delete,
            })),
        },
    )
    .await?;
    let chat = chats::Entity::find_by_id(seen.id)
        .one(&txn)
        .await?
        .ok_or(InboxError::Changed)?;
    crate::events::record_chats(&txn, crate::events::CHAT_UPDATED, &[seen.id]).await?;
    txn.commit().await?;
    Ok(chat)
}
