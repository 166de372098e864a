//! Outgoing webhooks (Standard Webhooks): owns the endpoints' rules (which
//! URLs are allowed, which event types, the `whsec_` secret), the
//! dispatch of events into deliveries ([`dispatch`]: one transaction per
//! batch inserts the deliveries and moves the cursor), publishing their
//! `webhook.deliver` jobs ([`publish`], and the sweep's [`unpublished`]),
//! recording attempts with the endpoint's health ([`record_attempt`],
//! which disables an endpoint failing for too long), and the API's retry
//! ([`requeue`]). The HTTP call itself is the webhook worker's.
//!
//! A delivery is unique per (endpoint, event `seq`) in the database, so a
//! dispatch replayed after a crash never delivers an event twice to one
//! endpoint (DESIGN invariant 3).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, LockType, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    ExprTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::broker::Broker;
use wapipe_shared::crypto::{SecretKey, new_webhook_secret};
use wapipe_shared::entities::webhook_deliveries::{self, status};
use wapipe_shared::entities::{webhook_delivery_attempts, webhook_dispatch, webhook_endpoints};
use wapipe_shared::jobs::{Job, WebhookDeliver};

use crate::clock::now;
use crate::events::{self, Event, Scope};

/// The cursor's row in `webhook_dispatch`.
const CURSOR: &str = "events";
/// Rows per multi-row INSERT of deliveries (15 values each).
const CHUNK: usize = 256;
/// Longest a name may take to resolve (a request waits on it).
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

pub const METRIC_DELIVERIES_TOTAL: &str = "wapipe_webhook_deliveries_total";
pub const METRIC_DELIVERY_SECONDS: &str = "wapipe_webhook_delivery_seconds";
pub const METRIC_ENDPOINTS_DISABLED_TOTAL: &str = "wapipe_webhook_endpoints_disabled_total";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("url: {0}")]
    BadUrl(String),
    #[error("url: {0}")]
    PrivateAddress(String),
    #[error("eventTypes: {0}")]
    BadEventTypes(String),
    #[error("the endpoint is disabled or deleted")]
    EndpointGone,
    #[error("secret: {0}")]
    Secret(String),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("broker: {0}")]
    Broker(#[from] wapipe_shared::broker::BrokerError),
}

/// Addresses a webhook must never reach unless private targets are allowed:
/// loopback, private, link-local, unique-local, unspecified, and the
/// IPv4-mapped forms of those. Also broadcast, documentation and
/// shared (CGNAT) ranges, none of which is a public receiver.
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7, unique local
                || (first & 0xfe00) == 0xfc00
                // fe80::/10, link-local
                || (first & 0xffc0) == 0xfe80
                // 2001:db8::/32, documentation
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)
                // ::/96, the deprecated IPv4-compatible form (::127.0.0.1)
                || v6.segments()[..6].iter().all(|s| *s == 0)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 0.0.0.0/8: "this network"
        || a == 0
        // 100.64.0.0/10: carrier-grade NAT
        || (a == 100 && (64..128).contains(&b))
}

/// Parses an endpoint URL: http or https, a host, no credentials, at most
/// [`MAX_URL_LEN`]. Does not resolve it.
pub fn parse_url(raw: &str) -> Result<reqwest::Url, WebhookError> {
    if raw.len() > MAX_URL_LEN {
        return Err(WebhookError::BadUrl(format!(
            "longer than {MAX_URL_LEN} characters"
        )));
    }
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| WebhookError::BadUrl(format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(WebhookError::BadUrl("only http and https URLs".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(WebhookError::BadUrl("the URL has no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(WebhookError::BadUrl(
            "credentials in the URL are not allowed".into(),
        ));
    }
    Ok(url)
}

/// The IP of a URL whose host is an address literal.
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Resolves `host` and refuses it when any of its addresses is forbidden
/// (unless `allow_private`). Used at creation and, through
/// [`PublicResolver`], for every delivery: a name that resolved to a public
/// address at creation may point inward later (DNS rebinding).
pub async fn resolve_public(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, WebhookError> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| WebhookError::BadUrl(format!("cannot resolve {host} in time")))?
            .map_err(|e| WebhookError::BadUrl(format!("cannot resolve {host}: {e}")))?
            .collect();
    if addrs.is_empty() {
        return Err(WebhookError::BadUrl(format!("{host} has no address")));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| forbidden_ip(a.ip())) {
        return Err(WebhookError::PrivateAddress(format!(
            "{host} resolves to {}, a loopback, private or link-local address",
            bad.ip()
        )));
    }
    Ok(addrs)
}

/// Checks an endpoint URL fully: [`parse_url`], then its address (literal
/// or resolved) against [`forbidden_ip`] unless `allow_private`.
pub async fn check_url(raw: &str, allow_private: bool) -> Result<reqwest::Url, WebhookError> {
    let url = parse_url(raw)?;
    if let Some(ip) = literal_ip(&url) {
        if !allow_private && forbidden_ip(ip) {
            return Err(WebhookError::PrivateAddress(format!(
                "{ip} is a loopback, private or link-local address"
            )));
        }
        return Ok(url);
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    resolve_public(&host, port, allow_private).await?;
    Ok(url)
}

/// reqwest's resolver for deliveries: [`resolve_public`] on every
/// connection, so the address checked is the address connected to.
#[derive(Debug, Clone, Copy)]
pub struct PublicResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_public(&host, 0, allow).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The event types asked for, checked against [`events::TYPES`], each once.
pub fn check_event_types(asked: &[String]) -> Result<Vec<String>, WebhookError> {
    if asked.is_empty() {
        return Err(WebhookError::BadEventTypes(format!(
            "name at least one of {}",
            events::TYPES.join(", ")
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(asked.len());
    for t in asked {
        if !events::TYPES.contains(&t.as_str()) {
            return Err(WebhookError::BadEventTypes(format!(
                "unknown event type {t:?}; known: {}",
                events::TYPES.join(", ")
            )));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// An endpoint to create (already checked: [`check_url`], [`check_event_types`]).
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub config_id: Option<Uuid>,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Vec<String>,
}

/// Creates an endpoint with a fresh secret; returns the row and the secret
/// in clear (shown once). The first endpoint also starts the dispatcher's
/// cursor at the events log's high-water mark: endpoints get what happens
/// after they exist.
pub async fn create(
    db: &DatabaseConnection,
    key: &SecretKey,
    new: NewEndpoint,
) -> Result<(webhook_endpoints::Model, String), WebhookError> {
    let secret = new_webhook_secret();
    let secret_enc = key
        .encrypt(&secret)
        .map_err(|e| WebhookError::Secret(e.to_string()))?;
    let at = now();
    let row = webhook_endpoints::Model {
        id: Uuid::now_v7(),
        created_at: at,
        updated_at: at,
        config_id: new.config_id,
        url: new.url,
        description: new.description,
        event_types: json!(new.event_types),
        secret_enc,
        enabled: true,
        failing_since: None,
        last_success_at: None,
        disabled_at: None,
        disabled_reason: None,
        is_deleted: false,
        deleted_at: None,
    };
    let txn = wapipe_shared::db::begin_write(db).await?;
    let high = events::high_water(&txn).await?;
    webhook_dispatch::Entity::insert(webhook_dispatch::ActiveModel {
        name: Set(CURSOR.to_owned()),
        seq: Set(high),
        updated_at: Set(at),
    })
    .on_conflict(
        OnConflict::column(webhook_dispatch::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    webhook_endpoints::Entity::insert(webhook_endpoints::ActiveModel::from(row.clone()))
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok((row, secret))
}

/// Soft-deletes an endpoint; its pending deliveries are dropped by the
/// worker when their job comes. False when it was already gone.
pub async fn delete<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<bool, DbErr> {
    let at = now();
    let r = webhook_endpoints::Entity::update_many()
        .col_expr(webhook_endpoints::Column::IsDeleted, Expr::value(true))
        .col_expr(webhook_endpoints::Column::DeletedAt, Expr::value(at))
        .col_expr(webhook_endpoints::Column::UpdatedAt, Expr::value(at))
        .filter(webhook_endpoints::Column::Id.eq(id))
        .filter(webhook_endpoints::Column::IsDeleted.eq(false))
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}

/// The event types an endpoint wants.
pub fn event_types(e: &webhook_endpoints::Model) -> Vec<String> {
    serde_json::from_value(e.event_types.clone()).unwrap_or_default()
}

/// Whether `endpoint` wants `event`.
fn wants(endpoint: &webhook_endpoints::Model, types: &[String], event: &events::Envelope) -> bool {
    endpoint.config_id.is_none_or(|c| c == event.config_id)
        && types.contains(&event.kind)
        && endpoint.created_at <= event.occurred_at
}

/// What one [`dispatch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Events read past the cursor.
    pub events: usize,
    /// Deliveries created (their jobs are not published yet).
    pub deliveries: Vec<Uuid>,
}

/// Turns up to `limit` events after the cursor into deliveries, one per
/// enabled endpoint that wants each, and moves the cursor past them: one
/// transaction, with the cursor row locked (PostgreSQL; SQLite has one
/// writer), so concurrent dispatchers take turns, and a crash before the
/// commit leaves both as they were. Nothing happens before the first
/// endpoint exists (no cursor yet).
pub async fn dispatch(db: &DatabaseConnection, limit: u64) -> Result<Dispatched, DbErr> {
    let txn = wapipe_shared::db::begin_write(db).await?;
    let Some(cursor) = webhook_dispatch::Entity::find_by_id(CURSOR.to_owned())
        .lock(LockType::Update)
        .one(&txn)
        .await?
    else {
        txn.commit().await?;
        return Ok(Dispatched::default());
    };
    let read = events::read_after(&txn, cursor.seq, limit, &Scope::everything()).await?;
    let Some(last) = read.last().map(|e| e.seq) else {
        txn.commit().await?;
        return Ok(Dispatched::default());
    };
    let endpoints: Vec<(webhook_endpoints::Model, Vec<String>)> = webhook_endpoints::Entity::find()
        .filter(webhook_endpoints::Column::Enabled.eq(true))
        .filter(webhook_endpoints::Column::IsDeleted.eq(false))
        .all(&txn)
        .await?
        .into_iter()
        .map(|e| {
            let types = event_types(&e);
            (e, types)
        })
        .collect();
    let at = now();
    let mut rows = Vec::new();
    for ev in read.iter().cloned().map(events::Envelope::from) {
        for (ep, types) in &endpoints {
            if wants(ep, types, &ev) {
                rows.push(webhook_deliveries::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    created_at: Set(at),
                    updated_at: Set(at),
                    endpoint_id: Set(ep.id),
                    event_seq: Set(ev.seq),
                    event_type: Set(ev.kind.clone()),
                    config_id: Set(ev.config_id),
                    status: Set(status::PENDING.to_owned()),
                    attempts: Set(0),
                    last_status_code: Set(None),
                    last_latency_ms: Set(None),
                    last_error: Set(None),
                    delivered_at: Set(None),
                    dispatched_at: Set(None),
                });
            }
        }
    }
    let ids: Vec<Uuid> = rows
        .iter()
        .filter_map(|r| match &r.id {
            Set(id) => Some(*id),
            _ => None,
        })
        .collect();
    for chunk in wapipe_shared::db::pow2_chunks(rows, CHUNK) {
        webhook_deliveries::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([
                    webhook_deliveries::Column::EndpointId,
                    webhook_deliveries::Column::EventSeq,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    // A delivery that existed already (a dispatch replayed) kept its own
    // id: only ours that are stored are new.
    let mut created = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        created.extend(
            webhook_deliveries::Entity::find()
                .select_only()
                .column(webhook_deliveries::Column::Id)
                .filter(webhook_deliveries::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple::<Uuid>()
                .all(&txn)
                .await?,
        );
    }
    created.sort_unstable();
    webhook_dispatch::Entity::update_many()
        .col_expr(webhook_dispatch::Column::Seq, Expr::value(last))
        .col_expr(webhook_dispatch::Column::UpdatedAt, Expr::value(at))
        .filter(webhook_dispatch::Column::Name.eq(CURSOR))
        .filter(webhook_dispatch::Column::Seq.lt(last))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(Dispatched {
        events: read.len(),
        deliveries: created,
    })
}

/// Publishes a `webhook.deliver` job per delivery and stamps
/// `dispatched_at` on those published; the others stay for the sweep.
/// Returns how many were published.
pub async fn publish(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    ids: &[Uuid],
) -> Result<usize, DbErr> {
    let mut published = Vec::with_capacity(ids.len());
    for id in ids {
        match broker
            .publish(WebhookDeliver { delivery_id: *id }.to_outbound())
            .await
        {
            Ok(()) => published.push(*id),
            Err(e) => tracing::warn!(delivery = %id, error = %e, "cannot publish webhook.deliver"),
        }
    }
    for chunk in published.chunks(CHUNK) {
        webhook_deliveries::Entity::update_many()
            .col_expr(webhook_deliveries::Column::DispatchedAt, Expr::value(now()))
            .filter(webhook_deliveries::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    Ok(published.len())
}

/// Pending deliveries no job is known to carry, created before `before`
/// (so the sweep does not race the dispatcher's own publish).
pub async fn unpublished<C: ConnectionTrait>(
    db: &C,
    before: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Uuid>, DbErr> {
    webhook_deliveries::Entity::find()
        .select_only()
        .column(webhook_deliveries::Column::Id)
        .filter(webhook_deliveries::Column::Status.eq(status::PENDING))
        .filter(webhook_deliveries::Column::DispatchedAt.is_null())
        .filter(webhook_deliveries::Column::CreatedAt.lt(before))
        .order_by_asc(webhook_deliveries::Column::Id)
        .limit(limit)
        .into_tuple::<Uuid>()
        .all(db)
        .await
}

/// Forgets which pending deliveries had a job before `before`: the embedded
/// queue dies with its process, so at start its jobs are gone.
pub async fn forget_dispatched<C: ConnectionTrait>(
    db: &C,
    before: DateTime<Utc>,
) -> Result<u64, DbErr> {
    Ok(webhook_deliveries::Entity::update_many()
        .col_expr(
            webhook_deliveries::Column::DispatchedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(webhook_deliveries::Column::Status.eq(status::PENDING))
        .filter(webhook_deliveries::Column::DispatchedAt.lt(before))
        .exec(db)
        .await?
        .rows_affected)
}

/// One HTTP attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// A 2xx answer.
    pub succeeded: bool,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

/// What [`record_attempt`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The attempt's number.
    pub attempt: i32,
    /// This failure disabled the endpoint.
    pub disabled: bool,
}

/// Records an attempt of `delivery` to `endpoint`, in one transaction: the
/// attempt row, the delivery's last outcome, and the endpoint's health. A
/// success clears `failing_since`; a failure sets it if unset, and when it
/// is older than `disable_after` disables the endpoint, with a
/// `webhook.disabled` event (once: the UPDATE applies only to an enabled
/// endpoint) and the delivery marked `failed`.
pub async fn record_attempt(
    db: &DatabaseConnection,
    delivery: &webhook_deliveries::Model,
    endpoint: &webhook_endpoints::Model,
    a: &Attempt,
    disable_after: chrono::Duration,
) -> Result<Recorded, DbErr> {
    let at = now();
    let txn = wapipe_shared::db::begin_write(db).await?;
    let mut upd = webhook_deliveries::Entity::update_many()
        .col_expr(
            webhook_deliveries::Column::Attempts,
            Expr::col(webhook_deliveries::Column::Attempts).add(1),
        )
        .col_expr(
            webhook_deliveries::Column::LastStatusCode,
            Expr::value(a.status_code.map(i32::from)),
        )
        .col_expr(
            webhook_deliveries::Column::LastLatencyMs,
            Expr::value(a.latency_ms),
        )
        .col_expr(
            webhook_deliveries::Column::LastError,
            Expr::value(a.error.clone()),
        )
        .col_expr(webhook_deliveries::Column::UpdatedAt, Expr::value(at));
    if a.succeeded {
        upd = upd
            .col_expr(
                webhook_deliveries::Column::Status,
                Expr::value(status::SUCCEEDED),
            )
            .col_expr(webhook_deliveries::Column::DeliveredAt, Expr::value(at));
    }
    upd.filter(webhook_deliveries::Column::Id.eq(delivery.id))
        .exec(&txn)
        .await?;
    let attempt = webhook_deliveries::Entity::find_by_id(delivery.id)
        .select_only()
        .column(webhook_deliveries::Column::Attempts)
        .into_tuple::<i32>()
        .one(&txn)
        .await?
        .unwrap_or(1);
    webhook_delivery_attempts::Entity::insert(webhook_delivery_attempts::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(at),
        delivery_id: Set(delivery.id),
        attempt: Set(attempt),
        succeeded: Set(a.succeeded),
        status_code: Set(a.status_code.map(i32::from)),
        latency_ms: Set(a.latency_ms),
        error: Set(a.error.clone()),
    })
    .exec_without_returning(&txn)
    .await?;
    let mut disabled = false;
    if a.succeeded {
        webhook_endpoints::Entity::update_many()
            .col_expr(
                webhook_endpoints::Column::FailingSince,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(webhook_endpoints::Column::LastSuccessAt, Expr::value(at))
            .filter(webhook_endpoints::Column::Id.eq(endpoint.id))
            .exec(&txn)
            .await?;
    } else {
        webhook_endpoints::Entity::update_many()
            .col_expr(webhook_endpoints::Column::FailingSince, Expr::value(at))
            .filter(webhook_endpoints::Column::Id.eq(endpoint.id))
            .filter(webhook_endpoints::Column::FailingSince.is_null())
            .exec(&txn)
            .await?;
        let reason = format!(
            "failing without a success for more than {} s",
            disable_after.num_seconds()
        );
        let r = webhook_endpoints::Entity::update_many()
            .col_expr(webhook_endpoints::Column::Enabled, Expr::value(false))
            .col_expr(webhook_endpoints::Column::DisabledAt, Expr::value(at))
            .col_expr(
                webhook_endpoints::Column::DisabledReason,
                Expr::value(reason.clone()),
            )
            .col_expr(webhook_endpoints::Column::UpdatedAt, Expr::value(at))
            .filter(webhook_endpoints::Column::Id.eq(endpoint.id))
            .filter(webhook_endpoints::Column::Enabled.eq(true))
            .filter(webhook_endpoints::Column::FailingSince.lte(at - disable_after))
            .exec(&txn)
            .await?;
        if r.rows_affected == 1 {
            disabled = true;
            let ep = webhook_endpoints::Entity::find_by_id(endpoint.id)
                .one(&txn)
                .await?
                .ok_or(DbErr::RecordNotFound("webhook endpoint".into()))?;
            events::record(&txn, &[disabled_event(&ep, &reason)]).await?;
            set_status(&txn, delivery.id, status::FAILED, Some("endpoint disabled")).await?;
        }
    }
    txn.commit().await?;
    if disabled {
        metrics::counter!(METRIC_ENDPOINTS_DISABLED_TOTAL).increment(1);
        // Not the URL: its query string may carry the receiver's token.
        tracing::warn!(endpoint = %endpoint.id, "webhook endpoint disabled");
    }
    Ok(Recorded { attempt, disabled })
}

/// The `webhook.disabled` event of an endpoint. A global endpoint's event
/// goes under the nil config id, which only keys that see every config see.
fn disabled_event(ep: &webhook_endpoints::Model, reason: &str) -> Event {
    Event::new(
        events::WEBHOOK_DISABLED,
        ep.config_id.unwrap_or(Uuid::nil()),
        None,
        json!({
            "endpointId": ep.id,
            "configId": ep.config_id,
            "url": ep.url,
            "reason": reason,
            "failingSince": ep.failing_since,
            "disabledAt": ep.disabled_at,
        }),
    )
}

/// Sets a delivery's status (and its last error when given).
pub async fn set_status<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    to: &str,
    error: Option<&str>,
) -> Result<(), DbErr> {
    let mut upd = webhook_deliveries::Entity::update_many()
        .col_expr(webhook_deliveries::Column::Status, Expr::value(to))
        .col_expr(webhook_deliveries::Column::UpdatedAt, Expr::value(now()));
    if let Some(e) = error {
        upd = upd.col_expr(webhook_deliveries::Column::LastError, Expr::value(e));
    }
    upd.filter(webhook_deliveries::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Delivers `delivery` again (the API's retry): back to `pending`, and a
/// new job. Refused when its endpoint is disabled or deleted.
pub async fn requeue(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    delivery: &webhook_deliveries::Model,
) -> Result<(), WebhookError> {
    let live = webhook_endpoints::Entity::find_by_id(delivery.endpoint_id)
        .one(db)
        .await?
        .is_some_and(|e| e.enabled && !e.is_deleted);
    if !live {
        return Err(WebhookError::EndpointGone);
    }
    webhook_deliveries::Entity::update_many()
        .col_expr(
            webhook_deliveries::Column::Status,
            Expr::value(status::PENDING),
        )
        .col_expr(
            webhook_deliveries::Column::DispatchedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(webhook_deliveries::Column::UpdatedAt, Expr::value(now()))
        .filter(webhook_deliveries::Column::Id.eq(delivery.id))
        .exec(db)
        .await?;
    // A publish that fails leaves it to the dispatcher's sweep.
    if publish(db, broker, &[delivery.id]).await? == 0 {
        tracing::info!(delivery = %delivery.id, "retry left to the webhook sweep");
    }
    Ok(())
}

/// What a delivery sends: its Standard Webhooks id and the raw body.
pub struct Outgoing {
    /// `msg_<delivery id>`: the same for every attempt of the delivery.
    pub id: String,
    pub body: Vec<u8>,
}

/// The Standard Webhooks message of a delivery: its id and the event's
/// envelope as JSON. `None` when the event was pruned.
pub async fn outgoing<C: ConnectionTrait>(
    db: &C,
    delivery: &webhook_deliveries::Model,
) -> Result<Option<Outgoing>, DbErr> {
    let Some(ev) = wapipe_shared::entities::events::Entity::find_by_id(delivery.event_seq)
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let body = serde_json::to_vec(&events::Envelope::from(ev))
        .map_err(|e| DbErr::Custom(format!("event envelope: {e}")))?;
    Ok(Some(Outgoing {
        id: format!("msg_{}", delivery.id.simple()),
        body,
    }))
}

/// The JSON of an endpoint as the API and events show it (without secret).
pub fn endpoint_json(ep: &webhook_endpoints::Model) -> Value {
    json!({
        "id": ep.id,
        "configId": ep.config_id,
        "url": ep.url,
        "eventTypes": event_types(ep),
        "enabled": ep.enabled,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn private_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(forbidden_ip(ip), "{ip} must be forbidden");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "93.184.215.14", "2606:4700::1111"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!forbidden_ip(ip), "{ip} is public");
        }
        assert!(forbidden_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("https://user:pw@example.com/").is_err());
        assert!(parse_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[tokio::test]
    async fn literal_private_urls_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "http://10.0.0.5/",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://localhost:9/",
        ] {
            assert!(
                matches!(
                    check_url(url, false).await,
                    Err(WebhookError::PrivateAddress(_))
                ),
                "{url} must be refused"
            );
            assert!(check_url(url, true).await.is_ok(), "{url} when allowed");
        }
    }

    /// The resolver the worker connects through refuses a name that points
    /// inward, whatever it pointed at when the endpoint was created.
    #[tokio::test]
    async fn the_delivery_resolver_refuses_private_names() {
        use reqwest::dns::Resolve;
        let name = |n: &str| n.parse::<reqwest::dns::Name>().expect("name");
        let refused = PublicResolver {
            allow_private: false,
        }
        .resolve(name("localhost"))
        .await;
        let err = refused.err().expect("localhost refused").to_string();
        assert!(err.contains("loopback, private or link-local"), "{err}");
        let allowed = PublicResolver {
            allow_private: true,
        }
        .resolve(name("localhost"))
        .await
        .expect("allowed");
        assert!(allowed.into_iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn event_types_are_checked() {
        assert!(check_event_types(&[]).is_err());
        assert!(check_event_types(&["nope".into()]).is_err());
        assert_eq!(
            check_event_types(&["chat.created".into(), "chat.created".into()]).expect("ok"),
            vec!["chat.created".to_owned()]
        );
    }
}
