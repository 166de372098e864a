//! The `outbound` role: one `outbound.send` job at a time per lane, as the
//! module doc of [`super`] describes step by step.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::ExprTrait;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr,
};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::broker::Delivery;
use wapipe_shared::entities::message_status_events::{self, Column as E};
use wapipe_shared::entities::messages::{self, Column as M, Direction, MessageStatus};
use wapipe_shared::jobs::{REALTIME_MESSAGE_STATUS, RealtimeEvent};

mod batch;

use self::batch::Posted;
use wapipe_domain::clock::now;
use wapipe_domain::configs::SendConfig;
use wapipe_domain::outbox::content::mark_read_body;
use wapipe_domain::outbox::{CODE_WINDOW_CLOSED, OutboxError, WINDOW_CLOSED_TITLE};
use wapipe_domain::receipts::read_status_of;
use wapipe_domain::templates;
use wapipe_shared::jobs::{MarkRead, OutboundSend, OutboundWork};

use super::graph::{ErrorClass, GraphClient, GraphOutcome, Refusal, classify};
use super::limits::{Limits, RateLimited};
use super::{METRIC_CONFIG_FLAGGED_TOTAL, METRIC_SENDS_TOTAL, OutboundSettings};
use crate::registry::Deps;
use crate::runtime::{BatchOutcome, JobError, JobWorker, TypedJob};

/// Receipts stamped this long before a claim still count as proof that
/// the claimed send went through (clock skew between Meta and us; Meta's
/// timestamps have whole seconds).
const RECEIPT_SKEW: Duration = Duration::from_secs(10);

/// What one job came to, for tests and the benchmark; the runtime only
/// sees Ok or the retryable error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Meta accepted the send; the wamid is stored.
    Sent { wamid: String },
    /// A send presumed lost turned out accepted (a receipt named its
    /// wamid): adopted, not resent.
    Recovered { wamid: String },
    /// The message already had a wamid: nothing sent (invariant 3).
    AlreadySent,
    /// The message ended `failed`; `local` when no Graph call was made.
    Failed { code: String, local: bool },
    /// Nothing to do: the message is gone, finished, or another attempt
    /// holds it.
    Skipped(&'static str),
    /// A mark-as-read went through (or needs no retry).
    MarkedRead,
}

struct Inner {
    deps: Deps,
    settings: OutboundSettings,
    graph: GraphClient,
    limits: Limits,
}

/// The outbound worker; cheap to clone (limits and caches are shared).
#[derive(Clone)]
pub struct OutboundWorker {
    inner: Arc<Inner>,
}

fn job_err(e: impl Into<OutboxError>) -> JobError {
    let e: OutboxError = e.into();
    match e {
        OutboxError::Db(e) => JobError::from(e),
        // A key that cannot open the token is an operator problem that a
        // fixed key repairs: keep the messages queued.
        other => JobError::Retryable(other.to_string()),
    }
}

fn count(result: &'static str, code: &str) {
    metrics::counter!(METRIC_SENDS_TOTAL, "result" => result, "code" => code.to_owned())
        .increment(1);
}

/// Held back by a limit: the job comes back at its slot, not as a failed
/// attempt (see [`super::limits`]).
pub(super) fn deferred(limited: RateLimited) -> JobError {
    count("deferred", "rate_limited");
    JobError::deferred(limited.retry_after, limited)
}

/// The job is about one message; these say which.
#[derive(Clone, Copy)]
struct Claim {
    id: Uuid,
    /// `attempt_count` as our claim left it: later writes are conditional
    /// on it, so a newer attempt's claim is never overwritten.
    attempt: i32,
}

impl OutboundWorker {
    pub fn new(deps: Deps, settings: OutboundSettings) -> Result<Self, OutboxError> {
        let graph =
            GraphClient::new(&settings.graph).map_err(|e| OutboxError::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                limits: Limits::new(settings.limits),
                graph,
                settings,
                deps,
            }),
        })
    }

    pub fn settings(&self) -> &OutboundSettings {
        &self.inner.settings
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    fn db(&self) -> &DatabaseConnection {
        &self.inner.deps.db
    }

    /// Carries one queued message to Meta (see the module doc of
    /// [`super`]). `Err` is always retryable: the message stays `queued`
    /// or `sending` and a later attempt continues.
    pub async fn send_message(&self, id: Uuid) -> Result<SendOutcome, JobError> {
        self.send(id, None).await
    }

    /// Carries several queued messages to Meta together, as the runtime
    /// does with what has queued up on a lane (see [`batch`]): one answer
    /// per id, in order.
    pub async fn send_messages(&self, ids: &[Uuid]) -> Vec<Result<SendOutcome, JobError>> {
        let jobs: Vec<(Uuid, &str)> = ids.iter().map(|id| (*id, "")).collect();
        self.send_batch(&jobs).await
    }

    /// `lane_key` (`{phone_number_id}:{wa_id}`, from the job) lets a held
    /// number or recipient turn the attempt away before any database work.
    async fn send(&self, id: Uuid, lane_key: Option<&str>) -> Result<SendOutcome, JobError> {
        if let Some((phone, recipient)) = lane_key.and_then(|k| k.split_once(':'))
            && let Err(limited) = self.inner.limits.precheck(phone, recipient, id)
        {
            return Err(deferred(limited));
        }
        let now = now();
        // The common case in one statement: claim a queued message and read
        // it back. Anything else needs a look at the row first.
        let (msg, claim) = match self.claim_queued(id, now).await.map_err(JobError::from)? {
            Some(m) => {
                let claim = Claim {
                    id,
                    attempt: m.attempt_count,
                };
                (m, claim)
            }
            None => match self.not_queued(id, now).await? {
                Ok(claimed) => claimed,
                Err(done) => return Ok(done),
            },
        };
        let (config, body, recipient) = match self.prepare(&msg, claim).await {
            Ok(ready) => ready,
            Err(answer) => return answer,
        };
        if !batch::is_template(&body) {
            let open = match self.open_windows(&[&msg]).await {
                Ok(open) => open.contains(&msg.customer_id),
                Err(e) => return Err(self.release_err(claim, JobError::from(e)).await),
            };
            if !open {
                return self.fail_window(&msg, claim).await;
            }
        }
        match self
            .acquire_and_post(config.clone(), &recipient, &body, id)
            .await
        {
            Posted::Answer(outcome) => self.settle(&msg, &config, &recipient, claim, outcome).await,
            Posted::Limited(limited) => Err(self.limited(claim, limited).await),
        }
    }

    /// The local checks of a claimed message: its config, a Graph body
    /// with a recipient, a usable and unflagged config. `Err` with the
    /// job's answer when the message cannot go (failed locally, no call).
    async fn prepare(
        &self,
        msg: &messages::Model,
        claim: Claim,
    ) -> Result<(Arc<SendConfig>, Value, String), Result<SendOutcome, JobError>> {
        let config = match self.inner.deps.configs.get(self.db(), msg.config_id).await {
            Ok(Some(c)) => c,
            // The message goes with its config (foreign key cascade).
            Ok(None) => return Err(Ok(SendOutcome::Skipped("config gone"))),
            Err(e) => return Err(Err(self.release_err(claim, job_err(e)).await)),
        };
        let body = msg.payload.clone().unwrap_or(Value::Null);
        let recipient = match recipient_of(&body) {
            Some(to) if body.is_object() => to.to_owned(),
            _ => {
                return Err(self
                    .fail_local(
                        msg,
                        claim,
                        "wapipe_bad_payload",
                        "the message has no Graph request body with a recipient",
                        None,
                    )
                    .await);
            }
        };
        if !config.usable {
            return Err(self
                .fail_local(
                    msg,
                    claim,
                    "wapipe_config_inactive",
                    "the WhatsApp config is removed or inactive",
                    None,
                )
                .await);
        }
        if let Some((code, reason)) = &config.flag {
            let title = format!("config flagged after Meta error {code}: {reason}; not sent");
            return Err(self.fail_local(msg, claim, code, &title, None).await);
        }
        // The rule the outbox applied when it was queued, again: the
        // customer may have stopped marketing messages since.
        if let Some(t) = body.get("template")
            && let (Some(name), Some(lang)) = (
                t.get("name").and_then(Value::as_str),
                t.get("language")
                    .and_then(|l| l.get("code"))
                    .and_then(Value::as_str),
            )
        {
            let refused = templates::template_refusal(
                self.db(),
                msg.config_id,
                name,
                lang,
                msg.customer_id,
                body.get("to").is_none(),
            )
            .await;
            match refused {
                Ok(None) => {}
                Ok(Some(r)) => {
                    return Err(self
                        .fail_local(msg, claim, r.code, &r.message, Some(&r.message))
                        .await);
                }
                Err(e) => return Err(Err(self.release_err(claim, job_err(e)).await)),
            }
        }
        Ok((config, body, recipient))
    }

    /// Fails a free-form message to a customer whose window is closed.
    async fn fail_window(
        &self,
        msg: &messages::Model,
        claim: Claim,
    ) -> Result<SendOutcome, JobError> {
        self.fail_local(
            msg,
            claim,
            CODE_WINDOW_CLOSED,
            WINDOW_CLOSED_TITLE,
            Some(WINDOW_CLOSED_TITLE),
        )
        .await
    }

    /// No slot in time: the claim goes back (the attempt not counted), and
    /// the job is deferred to its slot.
    async fn limited(&self, claim: Claim, limited: RateLimited) -> JobError {
        self.release_err(claim, deferred(limited)).await
    }

    /// POSTs `body` to `/{phone_number_id}/messages` as `config`: its
    /// number, Graph API version and access token (sends and mark-as-read).
    async fn post_as(&self, config: &SendConfig, body: &Value) -> GraphOutcome {
        self.inner
            .graph
            .post_messages(
                &config.phone_number_id,
                config.graph_api_version.as_deref(),
                &config.access_token,
                body,
            )
            .await
    }

    /// The message was not `queued`. `Ok` with a claim when a stale
    /// `sending` one is taken over; `Err` with the outcome when there is
    /// nothing to send (the error case is a retryable `JobError` instead).
    async fn not_queued(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Result<(messages::Model, Claim), SendOutcome>, JobError> {
        let Some(msg) = messages::Entity::find_by_id(id)
            .one(self.db())
            .await
            .map_err(JobError::from)?
        else {
            count("skipped", "none");
            return Ok(Err(SendOutcome::Skipped("no such message")));
        };
        if msg.direction != Direction::Outbound {
            return Err(JobError::Permanent(format!("message {id} is not outbound")));
        }
        if let Some(wamid) = &msg.provider_message_id {
            // Invariant 3. Receipts are applied here too, in case the
            // attempt that stored the wamid died before applying them.
            self.apply_receipts(msg.config_id, wamid).await?;
            count("duplicate", "none");
            return Ok(Err(SendOutcome::AlreadySent));
        }
        match msg.status {
            MessageStatus::Sending => {}
            // Claimed and released (or finished) between our two reads.
            MessageStatus::Queued => {
                return Err(JobError::Retryable(format!(
                    "message {id} changed hands; try again"
                )));
            }
            _ => return Ok(Err(SendOutcome::Skipped("already finished"))),
        }
        let claimed_at = msg.updated_at;
        if claimed_at > super::sweep::ago(now, self.inner.settings.sending_timeout) {
            count("retry", "in_flight");
            return Err(JobError::Retryable(format!(
                "an earlier attempt claimed message {id} {}s ago and may still be in flight",
                (now - claimed_at).num_seconds()
            )));
        }
        // Presumed dead. Did Meta accept it anyway?
        let recipient = msg
            .payload
            .as_ref()
            .and_then(recipient_of)
            .unwrap_or_default()
            .to_owned();
        let seen = Claim {
            id,
            attempt: msg.attempt_count,
        };
        if let Some(wamid) = self
            .orphan_receipt(msg.config_id, &recipient, claimed_at)
            .await
            .map_err(JobError::from)?
            && self.store_wamid(seen, &wamid, now).await?
        {
            tracing::info!(message_id = %id, %wamid,
                "a send presumed lost was accepted by Meta; adopted its wamid, not resent");
            self.apply_receipts(msg.config_id, &wamid).await?;
            self.notify(&msg, "sent", None).await;
            count("recovered", "none");
            return Ok(Err(SendOutcome::Recovered { wamid }));
        }
        match self.reclaim(&msg, now).await.map_err(JobError::from)? {
            Some(claim) => Ok(Ok((msg, claim))),
            None => Ok(Err(SendOutcome::Skipped("claimed by another attempt"))),
        }
    }

    async fn settle(
        &self,
        msg: &messages::Model,
        config: &SendConfig,
        recipient: &str,
        claim: Claim,
        outcome: GraphOutcome,
    ) -> Result<SendOutcome, JobError> {
        let now = now();
        match outcome {
            GraphOutcome::Accepted { wamid } => {
                // The first write after Meta's answer: the window for a
                // double send is as short as this one statement.
                if !self.store_wamid(claim, &wamid, now).await? {
                    tracing::error!(message_id = %claim.id, %wamid,
                        "Meta accepted a send of a message that another attempt finished meanwhile");
                    count("duplicate_send", "none");
                    return Ok(SendOutcome::Skipped("finished by another attempt"));
                }
                count("sent", "none");
                self.apply_receipts(config.id, &wamid).await?;
                self.notify(msg, "sent", None).await;
                Ok(SendOutcome::Sent { wamid })
            }
            GraphOutcome::Refused(e) => {
                let class = classify(&e.code);
                match class {
                    ErrorClass::NumberLimit | ErrorClass::PairLimit | ErrorClass::Transient => {
                        match class {
                            ErrorClass::NumberLimit => {
                                self.inner.limits.cool_down_number(&config.phone_number_id)
                            }
                            ErrorClass::PairLimit => self
                                .inner
                                .limits
                                .cool_down_pair(&config.phone_number_id, recipient),
                            _ => {}
                        }
                        self.release(claim, now, true)
                            .await
                            .map_err(JobError::from)?;
                        count("retry", &e.code);
                        Err(JobError::Retryable(format!(
                            "Meta error {}: {}",
                            e.code, e.title
                        )))
                    }
                    ErrorClass::FlagConfig | ErrorClass::Permanent => {
                        self.fail_meta(msg, claim, &e, now).await?;
                        if class == ErrorClass::FlagConfig {
                            let flagged = self
                                .inner
                                .deps
                                .configs
                                .flag(self.db(), config.id, &e.code, &e.title, now)
                                .await
                                .map_err(job_err)?;
                            if flagged {
                                metrics::counter!(METRIC_CONFIG_FLAGGED_TOTAL, "code" => e.code.clone())
                                    .increment(1);
                                tracing::error!(config_id = %config.id, code = %e.code,
                                    "config flagged: sends fail until an operator clears it");
                            }
                        }
                        count("failed", &e.code);
                        Ok(SendOutcome::Failed {
                            code: e.code,
                            local: false,
                        })
                    }
                }
            }
            GraphOutcome::NotSent(reason) => {
                self.release(claim, now, true)
                    .await
                    .map_err(JobError::from)?;
                count("retry", "none");
                Err(JobError::Retryable(format!("not sent: {reason}")))
            }
            // A 2xx without a wamid, a timeout, a cut connection: Meta may
            // have the message. Stay `sending`; see "The `sending` state".
            GraphOutcome::Success | GraphOutcome::Unknown(_) => {
                let reason = match outcome {
                    GraphOutcome::Unknown(r) => r,
                    _ => "a 2xx answer without a wamid".into(),
                };
                count("unknown", "none");
                tracing::warn!(message_id = %claim.id, %reason,
                    "send outcome unknown; the message stays `sending` until proven or timed out");
                Err(JobError::Retryable(format!(
                    "outcome unknown ({reason}); kept `sending`"
                )))
            }
        }
    }

    /// `queued → sending, attempt_count + 1`, returning the row as claimed.
    /// Only one attempt can win it.
    async fn claim_queued(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<messages::Model>, DbErr> {
        let mut rows = messages::Entity::update_many()
            .col_expr(M::Status, Expr::value(MessageStatus::Sending.as_str()))
            .col_expr(M::AttemptCount, Expr::col(M::AttemptCount).add(1))
            .col_expr(M::UpdatedAt, Expr::value(now))
            .filter(M::Id.eq(id))
            .filter(M::Direction.eq(Direction::Outbound))
            .filter(M::Status.eq(MessageStatus::Queued))
            .filter(M::ProviderMessageId.is_null())
            .exec_with_returning(self.db())
            .await?;
        Ok(rows.pop())
    }

    /// Takes over a stale `sending` claim, conditionally on the attempt
    /// count we read, so only one attempt wins it.
    async fn reclaim(
        &self,
        msg: &messages::Model,
        now: DateTime<Utc>,
    ) -> Result<Option<Claim>, DbErr> {
        let res = messages::Entity::update_many()
            .col_expr(M::AttemptCount, Expr::col(M::AttemptCount).add(1))
            .col_expr(M::UpdatedAt, Expr::value(now))
            .filter(M::Id.eq(msg.id))
            .filter(M::Status.eq(MessageStatus::Sending))
            .filter(M::AttemptCount.eq(msg.attempt_count))
            .filter(M::ProviderMessageId.is_null())
            .exec(self.db())
            .await?;
        Ok((res.rows_affected == 1).then_some(Claim {
            id: msg.id,
            attempt: msg.attempt_count + 1,
        }))
    }

    /// Releases a claim before any call was made (the attempt did not
    /// count), then returns `e`.
    async fn release_err(&self, claim: Claim, e: JobError) -> JobError {
        if let Err(db) = self.release(claim, now(), false).await {
            tracing::warn!(message_id = %claim.id, error = %db,
                "cannot release the claim; it is taken over once stale");
        }
        e
    }

    /// Gives the claim back after a send that certainly did not happen.
    /// `called`: whether Meta was called (the attempt then counts).
    async fn release(&self, claim: Claim, now: DateTime<Utc>, called: bool) -> Result<(), DbErr> {
        let attempts = if called {
            claim.attempt
        } else {
            claim.attempt - 1
        };
        messages::Entity::update_many()
            .col_expr(M::Status, Expr::value(MessageStatus::Queued.as_str()))
            .col_expr(M::AttemptCount, Expr::value(attempts))
            .col_expr(M::UpdatedAt, Expr::value(now))
            .filter(M::Id.eq(claim.id))
            .filter(M::Status.eq(MessageStatus::Sending))
            .filter(M::AttemptCount.eq(claim.attempt))
            .exec(self.db())
            .await?;
        Ok(())
    }

    /// Stores the wamid and `sent`. False when the claim is no longer ours
    /// and the row already has a wamid.
    async fn store_wamid(
        &self,
        claim: Claim,
        wamid: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, JobError> {
        let update = |exact: bool| {
            let mut q = messages::Entity::update_many()
                .col_expr(M::ProviderMessageId, Expr::value(wamid))
                .col_expr(M::Status, Expr::value(MessageStatus::Sent.as_str()))
                .col_expr(
                    M::ReadStatus,
                    Expr::value(read_status_of(MessageStatus::Sent)),
                )
                .col_expr(M::SentAt, Expr::value(now))
                .col_expr(M::UpdatedAt, Expr::value(now))
                .filter(M::Id.eq(claim.id))
                .filter(M::ProviderMessageId.is_null())
                .filter(M::Status.is_in([MessageStatus::Queued, MessageStatus::Sending]));
            if exact {
                q = q.filter(M::AttemptCount.eq(claim.attempt));
            }
            q
        };
        for exact in [true, false] {
            match update(exact).exec(self.db()).await {
                Ok(r) if r.rows_affected == 1 => return Ok(true),
                Ok(_) => {}
                // Another message holds this wamid: not ours to take.
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    return Ok(false);
                }
                Err(e) => return Err(JobError::from(e)),
            }
        }
        Ok(false)
    }

    async fn fail_meta(
        &self,
        msg: &messages::Model,
        claim: Claim,
        e: &Refusal,
        now: DateTime<Utc>,
    ) -> Result<(), JobError> {
        messages::Entity::update_many()
            .col_expr(M::Status, Expr::value(MessageStatus::Failed.as_str()))
            .col_expr(M::ErrorCode, Expr::value(e.code.clone()))
            .col_expr(M::ErrorTitle, Expr::value(e.title.clone()))
            .col_expr(M::ErrorDetails, Expr::value(e.error.details.clone()))
            .col_expr(M::Errors, Expr::value(json!([e.error.raw])))
            .col_expr(M::FailedAt, Expr::value(now))
            .col_expr(M::UpdatedAt, Expr::value(now))
            .filter(M::Id.eq(claim.id))
            .filter(M::Status.eq(MessageStatus::Sending))
            .filter(M::AttemptCount.eq(claim.attempt))
            .exec(self.db())
            .await
            .map_err(JobError::from)?;
        self.notify(msg, "failed", Some(&e.code)).await;
        Ok(())
    }

    /// Fails a claimed message without calling Meta.
    async fn fail_local(
        &self,
        msg: &messages::Model,
        claim: Claim,
        code: &str,
        title: &str,
        details: Option<&str>,
    ) -> Result<SendOutcome, JobError> {
        let now = now();
        messages::Entity::update_many()
            .col_expr(M::Status, Expr::value(MessageStatus::Failed.as_str()))
            .col_expr(M::ErrorCode, Expr::value(code))
            .col_expr(M::ErrorTitle, Expr::value(title))
            .col_expr(M::ErrorDetails, Expr::value(details))
            .col_expr(M::FailedAt, Expr::value(now))
            .col_expr(M::UpdatedAt, Expr::value(now))
            // No call was made: the attempt does not count.
            .col_expr(M::AttemptCount, Expr::value(claim.attempt - 1))
            .filter(M::Id.eq(claim.id))
            .filter(M::Status.eq(MessageStatus::Sending))
            .filter(M::AttemptCount.eq(claim.attempt))
            .exec(self.db())
            .await
            .map_err(JobError::from)?;
        tracing::info!(message_id = %msg.id, code, title, "send refused locally");
        self.notify(msg, "failed", Some(code)).await;
        count("failed_local", code);
        Ok(SendOutcome::Failed {
            code: code.to_owned(),
            local: true,
        })
    }

    /// A pending receipt that names an unknown wamid of this number and
    /// this recipient, stamped after (about) the claim: Meta's word that
    /// the presumed-lost send went through.
    async fn orphan_receipt(
        &self,
        config_id: Uuid,
        recipient: &str,
        claimed_at: DateTime<Utc>,
    ) -> Result<Option<String>, DbErr> {
        let since = super::sweep::ago(claimed_at, RECEIPT_SKEW);
        let candidates: Vec<String> = message_status_events::Entity::find()
            .select_only()
            .column(E::ProviderMessageId)
            .filter(E::ConfigId.eq(config_id))
            .filter(E::Applied.eq(false))
            .filter(E::MessageId.is_null())
            .filter(
                Condition::any()
                    .add(E::RecipientId.eq(recipient))
                    .add(E::RecipientUserId.eq(recipient)),
            )
            .filter(E::Timestamp.gte(since))
            .order_by_asc(E::Timestamp)
            .limit(20)
            .into_tuple()
            .all(self.db())
            .await?;
        for wamid in candidates {
            let known: Option<Uuid> = messages::Entity::find()
                .select_only()
                .column(M::Id)
                .filter(M::ConfigId.eq(config_id))
                .filter(M::ProviderMessageId.eq(&wamid))
                .into_tuple()
                .one(self.db())
                .await?;
            if known.is_none() {
                return Ok(Some(wamid));
            }
        }
        Ok(None)
    }

    /// Applies the receipts that arrived before the wamid was stored. A
    /// one-row look first: most sends have none, and the status module's
    /// transaction costs four round trips. Nothing slips between the look
    /// and the store: the parse worker commits a receipt before publishing
    /// its `status.receipt` job, so a receipt the look misses was committed
    /// after the wamid, and its job finds the message.
    async fn apply_receipts(&self, config_id: Uuid, wamid: &str) -> Result<(), JobError> {
        let pending: Option<Uuid> = message_status_events::Entity::find()
            .select_only()
            .column(E::Id)
            .filter(E::ConfigId.eq(config_id))
            .filter(E::ProviderMessageId.eq(wamid))
            .filter(E::Applied.eq(false))
            .into_tuple()
            .one(self.db())
            .await
            .map_err(JobError::from)?;
        if pending.is_none() {
            return Ok(());
        }
        wapipe_domain::receipts::apply_pending_receipts(self.db(), config_id, wamid)
            .await
            .map_err(JobError::from)?;
        Ok(())
    }

    /// Real-time updates are best effort: a lost one costs a refresh.
    async fn notify(&self, msg: &messages::Model, status: &str, code: Option<&str>) {
        let ev = RealtimeEvent {
            event: REALTIME_MESSAGE_STATUS.to_owned(),
            config_id: msg.config_id,
            chat_id: Some(msg.chat_id),
            message_id: Some(msg.id),
            data: json!({ "status": status, "error_code": code }),
        };
        if let Err(e) = self
            .inner
            .deps
            .broker
            .publish_realtime(RealtimeEvent::encode(&[ev]))
            .await
        {
            tracing::debug!(error = %e, "cannot publish message.status");
        }
    }

    /// Marks a customer's message read. Not limited per pair; skipped for
    /// flagged or inactive configs.
    pub async fn mark_read(&self, mark: &MarkRead) -> Result<SendOutcome, JobError> {
        let Some(config) = self
            .inner
            .deps
            .configs
            .get(self.db(), mark.config_id)
            .await
            .map_err(job_err)?
        else {
            return Ok(SendOutcome::Skipped("config gone"));
        };
        if !config.usable || config.flag.is_some() {
            count("skipped", "read");
            return Ok(SendOutcome::Skipped("config inactive or flagged"));
        }
        let body = mark_read_body(&mark.provider_message_id, mark.typing);
        let outcome = self.post_as(&config, &body).await;
        match outcome {
            GraphOutcome::Success | GraphOutcome::Accepted { .. } => {
                count("read", "none");
                Ok(SendOutcome::MarkedRead)
            }
            GraphOutcome::Refused(e) => match classify(&e.code) {
                ErrorClass::NumberLimit | ErrorClass::PairLimit | ErrorClass::Transient => {
                    count("retry", &e.code);
                    Err(JobError::Retryable(format!(
                        "Meta error {}: {}",
                        e.code, e.title
                    )))
                }
                // A read receipt Meta refuses (unknown or old message) is
                // not worth a dead letter.
                _ => {
                    tracing::info!(code = %e.code, title = %e.title, "mark-as-read refused");
                    count("read_failed", &e.code);
                    Ok(SendOutcome::MarkedRead)
                }
            },
            // Marking read twice is harmless, so unknown outcomes retry too.
            GraphOutcome::NotSent(r) | GraphOutcome::Unknown(r) => {
                count("retry", "none");
                Err(JobError::Retryable(format!("mark-as-read: {r}")))
            }
        }
    }
}

#[async_trait]
impl JobWorker for OutboundWorker {
    type Job = OutboundSend;

    async fn handle(&self, job: OutboundSend, _: &Delivery) -> Result<(), JobError> {
        match job.work {
            OutboundWork::Send { message_id } => {
                self.send(message_id, Some(&job.lane_key)).await.map(|_| ())
            }
            OutboundWork::MarkRead { mark_read } => self.mark_read(&mark_read).await.map(|_| ()),
        }
    }

    fn batch_size(&self) -> usize {
        self.inner.settings.batch_size.max(1)
    }

    /// What has queued up on a lane: the sends together (see [`batch`]),
    /// each job answered on its own; mark-as-read jobs one by one.
    async fn handle_batch(
        &self,
        jobs: Vec<TypedJob<'_, OutboundSend>>,
    ) -> Result<BatchOutcome, JobError> {
        let mut answers: Vec<Result<(), JobError>> = Vec::with_capacity(jobs.len());
        let mut sends = Vec::new();
        let mut send_slots = Vec::new();
        for (slot, j) in jobs.iter().enumerate() {
            answers.push(Ok(()));
            match &j.job.work {
                OutboundWork::Send { message_id } => {
                    sends.push((*message_id, j.job.lane_key.as_str()));
                    send_slots.push(slot);
                }
                OutboundWork::MarkRead { mark_read } => {
                    answers[slot] = self.mark_read(mark_read).await.map(|_| ());
                }
            }
        }
        for (slot, answer) in send_slots.into_iter().zip(self.send_batch(&sends).await) {
            answers[slot] = answer.map(|_| ());
        }
        Ok(BatchOutcome::Each(answers))
    }
}

/// Who a Graph request body goes to: Meta's `to` (a phone number), else
/// `recipient` (a business-scoped user id).
fn recipient_of(body: &Value) -> Option<&str> {
    ["to", "recipient"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .filter(|to| !to.is_empty())
}
