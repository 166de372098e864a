//! Who the bot must not answer: blocked numbers of a config (seed 002
//! BlockedNumber) and the scenarios a customer may not run (seed 000
//! `whatsapp_users.scenario_not_allowed`). Every change writes an
//! `audit_log` row in the same transaction. Used by the CLI (`wapipe
//! block`, `wapipe customers`) and the agents' API.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter, QueryOrder,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::entities::{
    audit_log, blocked_numbers, customer_blocked_scenarios, customers, scenarios, whatsapp_configs,
};

use crate::clock;
use crate::outbox::normalize_wa_id;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{0:?} is not a WhatsApp number: expected 6 to 15 digits after an optional +")]
    BadPhone(String),
    #[error("no WhatsApp config with id {0}")]
    UnknownConfig(Uuid),
    #[error("{0} is not blocked")]
    NotBlocked(String),
    #[error("no customer with number {0} for this config")]
    UnknownCustomer(String),
    #[error("no scenario titled {0:?} for this config")]
    UnknownScenario(String),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Who made a change, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// `cli`, `agent`, `admin`, `bot`, `system`.
    pub kind: &'static str,
    pub id: Option<Uuid>,
}

impl Actor {
    pub const CLI: Actor = Actor {
        kind: "cli",
        id: None,
    };
}

fn phone(p: &str) -> Result<String, BlockError> {
    normalize_wa_id(p).map_err(|_| BlockError::BadPhone(p.to_owned()))
}

async fn check_config<C: ConnectionTrait>(db: &C, config_id: Uuid) -> Result<(), BlockError> {
    match whatsapp_configs::Entity::find_by_id(config_id)
        .one(db)
        .await?
    {
        Some(c) if !c.is_deleted => Ok(()),
        _ => Err(BlockError::UnknownConfig(config_id)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn audit<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    actor: Actor,
    action: &str,
    entity_type: &str,
    entity_id: String,
    details: Value,
) -> Result<(), sea_orm::DbErr> {
    let now = clock::now();
    audit_log::Entity::insert(audit_log::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(Some(config_id)),
        actor_type: Set(actor.kind.to_owned()),
        actor_id: Set(actor.id),
        action: Set(action.to_owned()),
        entity_type: Set(entity_type.to_owned()),
        entity_id: Set(Some(entity_id)),
        details: Set(Some(details)),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

async fn set_customer_blocked<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    wa_id: &str,
    blocked: bool,
) -> Result<(), sea_orm::DbErr> {
    customers::Entity::update_many()
        .col_expr(customers::Column::IsBlocked, Expr::value(blocked))
        .col_expr(customers::Column::UpdatedAt, Expr::value(clock::now()))
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(customers::Column::WaId.eq(wa_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Blocks `phone` for the config (again, if it was unblocked): the bot no
/// longer answers it; its messages are still stored.
pub async fn block(
    db: &DatabaseConnection,
    config_id: Uuid,
    phone_number: &str,
    reason: Option<String>,
    actor: Actor,
) -> Result<blocked_numbers::Model, BlockError> {
    let number = phone(phone_number)?;
    check_config(db, config_id).await?;
    let now = clock::now();
    let txn = wapipe_shared::db::begin_write(db).await?;
    blocked_numbers::Entity::insert(blocked_numbers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        phone_number: Set(number.clone()),
        reason: Set(reason.clone()),
        blocked_by: Set(actor.id),
        is_active: Set(true),
        unblocked_at: Set(None),
        unblocked_by: Set(None),
        notes: Set(None),
        blocked_by_name: Set(None),
        blocked_at: Set(Some(now)),
        is_deleted: Set(false),
        deleted_at: Set(None),
    })
    .on_conflict(
        OnConflict::columns([
            blocked_numbers::Column::ConfigId,
            blocked_numbers::Column::PhoneNumber,
        ])
        .update_columns([
            blocked_numbers::Column::UpdatedAt,
            blocked_numbers::Column::Reason,
            blocked_numbers::Column::BlockedBy,
            blocked_numbers::Column::IsActive,
            blocked_numbers::Column::UnblockedAt,
            blocked_numbers::Column::UnblockedBy,
            blocked_numbers::Column::BlockedAt,
            blocked_numbers::Column::IsDeleted,
            blocked_numbers::Column::DeletedAt,
        ])
        .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    let row = blocked_numbers::Entity::find()
        .filter(blocked_numbers::Column::ConfigId.eq(config_id))
        .filter(blocked_numbers::Column::PhoneNumber.eq(&number))
        .one(&txn)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("blocked number after upsert".into()))?;
    set_customer_blocked(&txn, config_id, &number, true).await?;
    audit(
        &txn,
        config_id,
        actor,
        "number.block",
        "blocked_numbers",
        row.id.to_string(),
        json!({"phone_number": number, "reason": reason}),
    )
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// Lifts a block; the row stays, inactive, for history.
pub async fn unblock(
    db: &DatabaseConnection,
    config_id: Uuid,
    phone_number: &str,
    actor: Actor,
) -> Result<blocked_numbers::Model, BlockError> {
    let number = phone(phone_number)?;
    check_config(db, config_id).await?;
    let now = clock::now();
    let txn = wapipe_shared::db::begin_write(db).await?;
    let changed = blocked_numbers::Entity::update_many()
        .col_expr(blocked_numbers::Column::IsActive, Expr::value(false))
        .col_expr(blocked_numbers::Column::UnblockedAt, Expr::value(now))
        .col_expr(blocked_numbers::Column::UnblockedBy, Expr::value(actor.id))
        .col_expr(blocked_numbers::Column::UpdatedAt, Expr::value(now))
        .filter(blocked_numbers::Column::ConfigId.eq(config_id))
        .filter(blocked_numbers::Column::PhoneNumber.eq(&number))
        .filter(blocked_numbers::Column::IsActive.eq(true))
        .exec(&txn)
        .await?;
    if changed.rows_affected == 0 {
        return Err(BlockError::NotBlocked(number));
    }
    let row = blocked_numbers::Entity::find()
        .filter(blocked_numbers::Column::ConfigId.eq(config_id))
        .filter(blocked_numbers::Column::PhoneNumber.eq(&number))
        .one(&txn)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("blocked number".into()))?;
    set_customer_blocked(&txn, config_id, &number, false).await?;
    audit(
        &txn,
        config_id,
        actor,
        "number.unblock",
        "blocked_numbers",
        row.id.to_string(),
        json!({"phone_number": number}),
    )
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// The config's blocked numbers; with `all`, unblocked ones too.
pub async fn list_blocked(
    db: &DatabaseConnection,
    config_id: Uuid,
    all: bool,
) -> Result<Vec<blocked_numbers::Model>, BlockError> {
    check_config(db, config_id).await?;
    let mut q = blocked_numbers::Entity::find()
        .filter(blocked_numbers::Column::ConfigId.eq(config_id))
        .order_by_asc(blocked_numbers::Column::PhoneNumber);
    if !all {
        q = q.filter(blocked_numbers::Column::IsActive.eq(true));
    }
    Ok(q.all(db).await?)
}

/// A scenario the customer may or may not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioAccess {
    pub customer_id: Uuid,
    pub scenario_id: Uuid,
    /// Whether this call changed anything.
    pub changed: bool,
}

/// Adds the scenario `title` to the customer's `scenario_not_allowed`. A
/// customer who never wrote is created, so a number can be denied ahead.
pub async fn deny_scenario(
    db: &DatabaseConnection,
    config_id: Uuid,
    phone_number: &str,
    title: &str,
    actor: Actor,
) -> Result<ScenarioAccess, BlockError> {
    let number = phone(phone_number)?;
    check_config(db, config_id).await?;
    let scenario = crate::scenarios::store::find_visible(db, config_id, title)
        .await?
        .ok_or_else(|| BlockError::UnknownScenario(title.to_owned()))?;
    let now = clock::now();
    let txn = wapipe_shared::db::begin_write(db).await?;
    customers::Entity::insert(customers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        wa_id: Set(Some(number.clone())),
        phone_number: Set(Some(number.clone())),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([customers::Column::ConfigId, customers::Column::WaId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    let customer = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(customers::Column::WaId.eq(&number))
        .one(&txn)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("customer after upsert".into()))?;
    let inserted =
        customer_blocked_scenarios::Entity::insert(customer_blocked_scenarios::ActiveModel {
            customer_id: Set(customer.id),
            scenario_id: Set(scenario.id),
            config_id: Set(config_id),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([
                customer_blocked_scenarios::Column::CustomerId,
                customer_blocked_scenarios::Column::ScenarioId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    settle_access(
        txn,
        Access {
            config_id,
            actor,
            action: "customer.deny_scenario",
            number: &number,
            customer: &customer,
            scenario: &scenario,
        },
        inserted > 0,
    )
    .await
}

/// A change of a customer's `scenario_not_allowed`, for its audit row.
struct Access<'a> {
    config_id: Uuid,
    actor: Actor,
    action: &'static str,
    number: &'a str,
    customer: &'a customers::Model,
    scenario: &'a scenarios::Model,
}

/// Audits the change when there was one (a repeat changes nothing and
/// writes nothing), commits, and answers.
async fn settle_access(
    txn: DatabaseTransaction,
    a: Access<'_>,
    changed: bool,
) -> Result<ScenarioAccess, BlockError> {
    if changed {
        audit(
            &txn,
            a.config_id,
            a.actor,
            a.action,
            "customers",
            a.customer.id.to_string(),
            json!({"phone_number": a.number, "scenario_id": a.scenario.id, "scenario": a.scenario.title}),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(ScenarioAccess {
        customer_id: a.customer.id,
        scenario_id: a.scenario.id,
        changed,
    })
}

/// Removes the scenario `title` from the customer's `scenario_not_allowed`.
pub async fn allow_scenario(
    db: &DatabaseConnection,
    config_id: Uuid,
    phone_number: &str,
    title: &str,
    actor: Actor,
) -> Result<ScenarioAccess, BlockError> {
    let number = phone(phone_number)?;
    check_config(db, config_id).await?;
    let scenario = crate::scenarios::store::find_visible(db, config_id, title)
        .await?
        .ok_or_else(|| BlockError::UnknownScenario(title.to_owned()))?;
    let customer = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(customers::Column::WaId.eq(&number))
        .one(db)
        .await?
        .ok_or_else(|| BlockError::UnknownCustomer(number.clone()))?;
    let txn = wapipe_shared::db::begin_write(db).await?;
    let deleted = customer_blocked_scenarios::Entity::delete_many()
        .filter(customer_blocked_scenarios::Column::CustomerId.eq(customer.id))
        .filter(customer_blocked_scenarios::Column::ScenarioId.eq(scenario.id))
        .exec(&txn)
        .await?;
    settle_access(
        txn,
        Access {
            config_id,
            actor,
            action: "customer.allow_scenario",
            number: &number,
            customer: &customer,
            scenario: &scenario,
        },
        deleted.rows_affected > 0,
    )
    .await
}

/// The titles of the scenarios the customer may not run.
pub async fn denied_scenarios(
    db: &DatabaseConnection,
    config_id: Uuid,
    phone_number: &str,
) -> Result<Vec<String>, BlockError> {
    let number = phone(phone_number)?;
    let Some(customer) = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(customers::Column::WaId.eq(&number))
        .one(db)
        .await?
    else {
        return Ok(Vec::new());
    };
    let ids: Vec<Uuid> = customer_blocked_scenarios::Entity::find()
        .filter(customer_blocked_scenarios::Column::CustomerId.eq(customer.id))
        .all(db)
        .await?
        .into_iter()
        .map(|r| r.scenario_id)
        .collect();
    let mut titles: Vec<String> = wapipe_shared::entities::scenarios::Entity::find()
        .filter(wapipe_shared::entities::scenarios::Column::Id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|s| s.title)
        .collect();
    titles.sort();
    Ok(titles)
}
