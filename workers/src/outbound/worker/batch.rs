//! Several `outbound.send` jobs of one lane at once: the same steps as one
//! send (see the module doc of [`crate::outbound`]), with the database work
//! done set-based. Per batch: one claim for every queued message, one look
//! at the 24-hour windows, one wamid store per group of answers that are in
//! together, and one look for receipts that came first. One send alone
//! costs three statements and two commits; in a batch of 32 that falls to a
//! handful of statements in all.
//!
//! What does not change:
//! - a message is sent only under a committed claim, and its wamid is the
//!   first thing written after Meta's answer (stored as soon as the answer
//!   is in, with whatever other answers are in at that moment, not at the
//!   end of the batch);
//! - messages to one recipient leave in lane order, one after the other;
//!   different recipients go concurrently;
//! - limit slots are taken right before each request;
//! - every job gets its own answer: a throttled send is retried alone.
//!
//! Anything unusual (a message not `queued`, the same message twice in the
//! batch) goes through the one-job path, after the batch.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt, stream};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DbBackend, DbErr, EntityTrait, ExprTrait, QueryFilter, QuerySelect, SqlErr,
};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::db::{pad_pow2, with_values};
use wapipe_shared::entities::message_status_events::{self, Column as E};
use wapipe_shared::entities::messages::{self, Column as M, Direction, MessageStatus};

use wapipe_domain::clock::now;
use wapipe_domain::configs::SendConfig;
use wapipe_domain::receipts::read_status_of;

use super::super::graph::GraphOutcome;
use super::super::limits::RateLimited;
use super::{Claim, OutboundWorker, SendOutcome, count, deferred};
use crate::runtime::JobError;

type Answer = Result<SendOutcome, JobError>;

/// A claimed message that passed the local checks, ready to go to Meta.
struct Ready {
    /// The job's place in the batch.
    slot: usize,
    msg: messages::Model,
    claim: Claim,
    config: std::sync::Arc<SendConfig>,
    body: Value,
    recipient: String,
}

/// What came back for one message.
pub(super) enum Posted {
    /// No slot within the brief wait: nothing was sent.
    Limited(RateLimited),
    Answer(GraphOutcome),
}

impl OutboundWorker {
    /// Carries the messages of `jobs` (message id, lane key), all of one
    /// lane and in lane order, to Meta. One answer per job, in order.
    pub(crate) async fn send_batch(&self, jobs: &[(Uuid, &str)]) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = jobs.iter().map(|_| None).collect();
        // Jobs for the one-job path, after the batch: a message that is not
        // `queued`, or one that appears twice (the second copy then finds
        // the first one's wamid and sends nothing).
        let mut alone = Vec::new();
        let mut first_seen = HashSet::new();
        let mut to_claim = Vec::new();
        for (slot, (id, key)) in jobs.iter().enumerate() {
            if let Some((phone, recipient)) = key.split_once(':')
                && let Err(limited) = self.inner.limits.precheck(phone, recipient, *id)
            {
                answers[slot] = Some(Err(deferred(limited)));
            } else if first_seen.insert(*id) {
                to_claim.push(slot);
            } else {
                alone.push(slot);
            }
        }

        let ids: Vec<Uuid> = to_claim.iter().map(|&s| jobs[s].0).collect();
        let mut claimed = match self.claim_queued_many(&ids, now()).await {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing is known to be claimed: each job on its own later.
                let e = JobError::from(e);
                for slot in to_claim {
                    answers[slot] = Some(Err(e.clone()));
                }
                return finish(answers);
            }
        };
        let mut held = Vec::new();
        for slot in to_claim {
            match claimed.remove(&jobs[slot].0) {
                Some(msg) => held.push((slot, msg)),
                None => alone.push(slot),
            }
        }

        let ready = self.check_all(held, &mut answers).await;
        self.post_all(ready, &mut answers).await;

        alone.sort_unstable();
        for slot in alone {
            let (id, key) = jobs[slot];
            answers[slot] = Some(self.send(id, Some(key)).await);
        }
        finish(answers)
    }

    /// The local checks of each claimed message (config, body, 24-hour
    /// window); a message that fails one is failed locally, and the rest
    /// come back ready to send.
    async fn check_all(
        &self,
        held: Vec<(usize, messages::Model)>,
        answers: &mut [Option<Answer>],
    ) -> Vec<Ready> {
        let mut ready = Vec::with_capacity(held.len());
        for (slot, msg) in held {
            let claim = Claim {
                id: msg.id,
                attempt: msg.attempt_count,
            };
            let (config, body, recipient) = match self.prepare(&msg, claim).await {
                Ok(ok) => ok,
                Err(answer) => {
                    answers[slot] = Some(answer);
                    continue;
                }
            };
            ready.push(Ready {
                slot,
                msg,
                claim,
                config,
                body,
                recipient,
            });
        }

        // Templates are always allowed; the rest need an open window.
        let free_form: Vec<&messages::Model> = ready
            .iter()
            .filter(|r| r.body.get("type").and_then(Value::as_str) != Some("template"))
            .map(|r| &r.msg)
            .collect();
        if free_form.is_empty() {
            return ready;
        }
        let open = match self.open_windows(&free_form).await {
            Ok(open) => open,
            Err(e) => {
                let e = JobError::from(e);
                let mut kept = Vec::new();
                for r in ready {
                    if is_template(&r.body) {
                        kept.push(r);
                    } else {
                        answers[r.slot] = Some(Err(self.release_err(r.claim, e.clone()).await));
                    }
                }
                return kept;
            }
        };
        let mut kept = Vec::with_capacity(ready.len());
        for r in ready {
            if is_template(&r.body) || open.contains(&r.msg.customer_id) {
                kept.push(r);
            } else {
                answers[r.slot] = Some(self.fail_window(&r.msg, r.claim).await);
            }
        }
        kept
    }

    /// Sends every ready message: one recipient's messages one after the
    /// other, recipients concurrently. Answers are settled as they come in;
    /// the accepted ones that are in together share one wamid store.
    async fn post_all(&self, ready: Vec<Ready>, answers: &mut [Option<Answer>]) {
        let mut groups: Vec<Vec<Ready>> = Vec::new();
        let mut group_of: HashMap<(String, String), usize> = HashMap::new();
        for r in ready {
            let key = (r.config.phone_number_id.clone(), r.recipient.clone());
            let g = *group_of.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(r);
        }
        let mut posts = stream::select_all(groups.into_iter().map(|group| {
            stream::iter(group)
                .then(move |r| async move {
                    let posted = self
                        .acquire_and_post(r.config.clone(), &r.recipient, &r.body, r.msg.id)
                        .await;
                    (r, posted)
                })
                .boxed()
        }));

        let mut sent: Vec<Ready> = Vec::new();
        while let Some(first) = posts.next().await {
            // Whatever else has come back meanwhile shares the store.
            let mut arrived = vec![first];
            while let Some(Some(more)) = posts.next().now_or_never() {
                arrived.push(more);
            }
            let mut accepted = Vec::new();
            for (r, posted) in arrived {
                match posted {
                    Posted::Answer(GraphOutcome::Accepted { wamid }) => accepted.push((r, wamid)),
                    Posted::Answer(outcome) => {
                        let answer = self
                            .settle(&r.msg, &r.config, &r.recipient, r.claim, outcome)
                            .await;
                        answers[r.slot] = Some(answer);
                    }
                    Posted::Limited(limited) => {
                        answers[r.slot] = Some(Err(self.limited(r.claim, limited).await));
                    }
                }
            }
            if accepted.is_empty() {
                continue;
            }
            let pairs: Vec<(Claim, &str)> = accepted
                .iter()
                .map(|(r, w)| (r.claim, w.as_str()))
                .collect();
            match self.store_wamids(&pairs, now()).await {
                Ok(stored) => {
                    for ((r, wamid), ok) in accepted.into_iter().zip(stored) {
                        if ok {
                            count("sent", "none");
                            answers[r.slot] = Some(Ok(SendOutcome::Sent { wamid }));
                            sent.push(r);
                        } else {
                            tracing::error!(message_id = %r.claim.id, %wamid,
                                "Meta accepted a send of a message that another attempt finished meanwhile");
                            count("duplicate_send", "none");
                            answers[r.slot] =
                                Some(Ok(SendOutcome::Skipped("finished by another attempt")));
                        }
                    }
                }
                // Kept `sending`: a later attempt finds the receipt Meta
                // sends, or times the claim out (see "The `sending` state").
                Err(e) => {
                    for (r, _) in accepted {
                        answers[r.slot] = Some(Err(e.clone()));
                    }
                }
            }
        }
        if sent.is_empty() {
            return;
        }

        let wamids: Vec<(Uuid, &str)> = sent
            .iter()
            .filter_map(|r| match &answers[r.slot] {
                Some(Ok(SendOutcome::Sent { wamid })) => Some((r.config.id, wamid.as_str())),
                _ => None,
            })
            .collect();
        if let Err(e) = self.apply_receipts_many(&wamids).await {
            // The wamids are stored: a retry finds them, sends nothing and
            // applies the receipts then.
            for r in &sent {
                answers[r.slot] = Some(Err(e.clone()));
            }
            return;
        }
        for r in &sent {
            self.notify(&r.msg, "sent", None).await;
        }
    }

    /// The slots, taken right before the request leaves (Meta counts
    /// requests as they arrive, so no commit may sit between the two), then
    /// the call, on a task of its own: the batch loop that collects answers
    /// may be busy storing earlier ones, and a slot taken with its request
    /// held back would let two requests reach Meta closer together than the
    /// limit allows.
    pub(super) async fn acquire_and_post(
        &self,
        config: std::sync::Arc<SendConfig>,
        recipient: &str,
        body: &Value,
        job: Uuid,
    ) -> Posted {
        if let Err(limited) = self
            .inner
            .limits
            .acquire(&config.phone_number_id, config.max_mps, recipient, job)
            .await
        {
            return Posted::Limited(limited);
        }
        let worker = self.clone();
        let body = body.clone();
        let request = tokio::spawn(async move { worker.post_as(&config, &body).await });
        match request.await {
            Ok(outcome) => Posted::Answer(outcome),
            // The task panicked: whether the request left is unknown.
            Err(e) => Posted::Answer(GraphOutcome::Unknown(format!("send task failed: {e}"))),
        }
    }

    /// `queued → sending, attempt_count + 1` for every message of `ids`
    /// that is queued, in one statement; returns the rows it claimed.
    async fn claim_queued_many(
        &self,
        ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<HashMap<Uuid, messages::Model>, DbErr> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = messages::Entity::update_many()
            .col_expr(M::Status, Expr::value(MessageStatus::Sending.as_str()))
            .col_expr(M::AttemptCount, Expr::col(M::AttemptCount).add(1))
            .col_expr(M::UpdatedAt, Expr::value(now))
            // Padded to a power of two: a few statement shapes, not one per
            // batch size (see `pad_pow2`).
            .filter(M::Id.is_in(pad_pow2(ids.to_vec())))
            .filter(M::Direction.eq(Direction::Outbound))
            .filter(M::Status.eq(MessageStatus::Queued))
            .filter(M::ProviderMessageId.is_null())
            .exec_with_returning(self.db())
            .await?;
        Ok(rows.into_iter().map(|m| (m.id, m)).collect())
    }

    /// The customers among `msgs`' whose 24-hour window is open (the
    /// shared outbox's rule, so the API refuses what the worker would).
    pub(super) async fn open_windows(
        &self,
        msgs: &[&messages::Model],
    ) -> Result<HashSet<Uuid>, DbErr> {
        let pairs: Vec<(Uuid, Uuid)> = msgs.iter().map(|m| (m.config_id, m.customer_id)).collect();
        wapipe_domain::outbox::open_windows(self.db(), &pairs).await
    }

    /// Stores each `(claim, wamid)` with `sent`, like
    /// [`store_wamid`](OutboundWorker::store_wamid), in one statement on
    /// PostgreSQL. One flag per pair: false when the message is no longer
    /// ours to finish.
    async fn store_wamids(
        &self,
        pairs: &[(Claim, &str)],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, JobError> {
        if pairs.len() > 1 && self.db().get_database_backend() == DbBackend::Postgres {
            match self.store_wamids_postgres(pairs, now).await {
                Ok(stored) => return Ok(stored),
                // A wamid already held by another message fails the whole
                // statement: sort it out one by one.
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {}
                Err(e) => return Err(JobError::from(e)),
            }
        }
        let mut stored = Vec::with_capacity(pairs.len());
        for (claim, wamid) in pairs {
            stored.push(self.store_wamid(*claim, wamid, now).await?);
        }
        Ok(stored)
    }

    async fn store_wamids_postgres(
        &self,
        pairs: &[(Claim, &str)],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, DbErr> {
        let rows = pairs
            .iter()
            .map(|(claim, wamid)| vec![claim.id.into(), (*wamid).to_owned().into()])
            .collect();
        // The same conditions as `store_wamid`: not finished, no wamid yet.
        let stored: HashSet<Uuid> = with_values(
            self.db(),
            "UPDATE messages AS m SET provider_message_id = v.wamid, status = 'sent', \
             read_status = $2, sent_at = $1, updated_at = $1 FROM {values} \
             WHERE m.id = v.id AND m.provider_message_id IS NULL \
             AND m.status IN ('queued', 'sending') RETURNING m.id",
            vec![now.into(), read_status_of(MessageStatus::Sent).into()],
            &[("id", "uuid"), ("wamid", "text")],
            rows,
        )
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<Uuid>(0))
        .collect::<Result<_, _>>()?;
        Ok(pairs.iter().map(|(c, _)| stored.contains(&c.id)).collect())
    }

    /// [`apply_receipts`](OutboundWorker::apply_receipts) for many
    /// `(config, wamid)` at once: one look for all of them, then the status
    /// module's transaction for each one that has receipts waiting.
    async fn apply_receipts_many(&self, wamids: &[(Uuid, &str)]) -> Result<(), JobError> {
        if wamids.is_empty() {
            return Ok(());
        }
        let ours: HashSet<(Uuid, &str)> = wamids.iter().copied().collect();
        let list: Vec<String> = wamids.iter().map(|(_, w)| (*w).to_owned()).collect();
        // By wamid alone: `ix_status_events_pending` leads with it, so the
        // plan is the same whether or not the table has been analysed.
        let pending: Vec<(Uuid, String)> = message_status_events::Entity::find()
            .select_only()
            .column(E::ConfigId)
            .column(E::ProviderMessageId)
            .filter(E::ProviderMessageId.is_in(pad_pow2(list)))
            .filter(E::Applied.eq(false))
            .into_tuple()
            .all(self.db())
            .await
            .map_err(JobError::from)?;
        let mut done = HashSet::new();
        for (config_id, wamid) in pending {
            if ours.contains(&(config_id, wamid.as_str()))
                && done.insert((config_id, wamid.clone()))
            {
                wapipe_domain::receipts::apply_pending_receipts(self.db(), config_id, &wamid)
                    .await
                    .map_err(JobError::from)?;
            }
        }
        Ok(())
    }
}

pub(super) fn is_template(body: &Value) -> bool {
    body.get("type").and_then(Value::as_str) == Some("template")
}

fn finish(answers: Vec<Option<Answer>>) -> Vec<Answer> {
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(JobError::Retryable("the batch gave no answer".into()))))
        .collect()
}
