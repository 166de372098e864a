//! The engine: what the bot does with one stored inbound message.
//!
//! In order ([`handle`]):
//! 1. **No reply** to a blocked number (`blocked_numbers` active, or the
//!    customer flagged `is_blocked`), a chat assigned to an agent and not
//!    resolved, a chat handed off and not resolved since, or a message older
//!    than the maximum age when it is processed. A customer whose
//!    `scenario_not_allowed` holds the scenario it would run gets nothing
//!    either, nor does a WhatsApp group.
//! 2. **What the message is**: a reply id of ours (a button or list reply,
//!    or a template quick reply whose payload is one) goes to that item;
//!    an exit keyword (the whole text) ends the waiting run, and "menu"
//!    starts the default scenario; a text matching a keyword starts that
//!    scenario (the config's own before generic ones, then by priority),
//!    unless the customer's runs of it reached `repeat_count`; anything
//!    else, while a run waits for a choice, gets the fallback text and the
//!    options again, twice at most, and the third time ends the run.
//! 3. **Sending an item**: text, media and product_list items are sent
//!    and followed by their children in order; a button or list item is
//!    sent with its children as options and the run waits on it; a handoff
//!    item sends its label and hands the chat to a human (the chat's
//!    `handoff_at`, an `audit_log` row, a `chat.updated` event, a real-time wake-up).
//!
//! Idempotent per inbound message: replies are queued through the outbox
//! with `answers = (inbound message, seq)`, unique in `messages`, and only
//! then is the run state written, in one transaction that records the
//! message as the run's `last_message_id`. A redelivered job either finds
//! the message consumed (a run of the customer consumed it or a later
//! one) and does nothing, or recomputes the same replies from the same
//! state, which the unique key turns into no-ops.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use uuid::Uuid;
use wapipe_shared::broker::Broker;
use wapipe_shared::entities::messages::{Direction, Origin};
use wapipe_shared::entities::{
    audit_log, blocked_numbers, chats, customer_blocked_scenarios, customers, messages,
    scenario_items, scenario_runs, scenarios, template_scenarios,
};
use wapipe_shared::jobs::{REALTIME_CHAT_UPDATED, RealtimeEvent};

use super::content::{self, ItemError};
use super::flow::ItemType;
use super::keywords::Text;
use super::store::{self, ChatbotSettings, MENU_KEYWORD, uuids};
use super::{metrics as m, status};
use crate::clock;
use crate::outbox::{self, Answer, NewOutbound, OutboundContent, OutboxError};

/// Unknown answers a waiting run answers with the fallback; the next one
/// ends it.
pub const MAX_FALLBACKS: i32 = 2;
/// The most messages one inbound message may cause (a chain of text items
/// each with children could otherwise flood a customer).
pub const MAX_REPLIES: usize = 10;

#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// Messages older than this when processed get no reply
    /// (`WAPIPE_SCENARIO_MAX_AGE_S`).
    pub max_age: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("{0}")]
    Item(#[from] ItemError),
}

impl EngineError {
    /// A fault of the stored flow or of the message (not of the moment):
    /// retrying changes nothing.
    pub fn is_permanent(&self) -> bool {
        match self {
            EngineError::Item(_) => true,
            EngineError::Outbox(e) => matches!(
                e,
                OutboxError::BadPhone(_)
                    | OutboxError::Content(_)
                    | OutboxError::UnknownConfig(_)
                    | OutboxError::InactiveConfig(_)
                    | OutboxError::Refused { .. }
            ),
            EngineError::Db(_) => false,
        }
    }
}

/// Why the bot stayed silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Blocked,
    Assigned,
    HandedOff,
    TooOld,
    NotAllowed,
    RepeatLimit,
    /// A group chat: keyword flows are one-to-one, and a bot answering
    /// every member's keyword would flood the group.
    Group,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Blocked => "blocked",
            Refusal::Assigned => "assigned",
            Refusal::HandedOff => "handoff",
            Refusal::TooOld => "too_old",
            Refusal::NotAllowed => "not_allowed",
            Refusal::RepeatLimit => "repeat_limit",
            Refusal::Group => "group",
        }
    }
}

/// What [`handle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not an inbound message we know (deleted, outbound, another config).
    Unknown,
    /// This message (or a later one) was consumed before: a redelivery.
    AlreadyConsumed,
    Refused(Refusal),
    /// Nothing to do: no keyword, no waiting run, not one of our ids.
    NoMatch,
    /// Replies queued (`sent` of them new) and the run state written.
    Done {
        scenario: String,
        action: Action,
        replies: usize,
        sent: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Started,
    Continued,
    Fallback,
    /// The run ended without a reply (fallbacks used up, or an exit keyword).
    Ended,
}

/// What the inbound message says to the bot.
#[derive(Debug, Clone, PartialEq)]
enum Input {
    /// A reply id of ours.
    Choice(Uuid),
    Text(String),
    /// Media, a location, a reply id not ours…: an answer, but no keyword.
    Other,
}

fn input_of(msg: &messages::Model) -> Input {
    if let Some(i) = &msg.interactive {
        let id = match i.get("type").and_then(|t| t.as_str()) {
            Some("button") => i.get("payload"),
            _ => i.get("id"),
        };
        if let Some(item) = id
            .and_then(|v| v.as_str())
            .and_then(content::parse_reply_id)
        {
            return Input::Choice(item);
        }
    }
    match (msg.r#type.as_str(), &msg.text) {
        ("text", Some(t)) => Input::Text(t.clone()),
        _ => Input::Other,
    }
}

/// A run to write after the replies are queued.
#[derive(Debug, Clone)]
enum Target {
    New { scenario_id: Uuid },
    Existing { run_id: Uuid },
}

/// The decision for one message: replies, then run changes.
#[derive(Debug, Clone)]
struct Plan {
    scenario: scenarios::Model,
    action: Action,
    replies: Vec<OutboundContent>,
    /// Runs to end first: (run, status, its scenario's title).
    end: Vec<(Uuid, &'static str, String)>,
    target: Option<(Target, Step)>,
    handoff: bool,
}

/// Where a run stands after the replies.
#[derive(Debug, Clone, Copy)]
struct Step {
    status: &'static str,
    current_item_id: Option<Uuid>,
    fallback_count: i32,
}

/// The items of one scenario, and the templates they use.
struct Graph {
    items: HashMap<Uuid, scenario_items::Model>,
    templates: HashMap<Uuid, template_scenarios::Model>,
}

impl Graph {
    async fn load<C: ConnectionTrait>(db: &C, scenario_id: Uuid) -> Result<Self, sea_orm::DbErr> {
        let rows = scenario_items::Entity::find()
            .filter(scenario_items::Column::ScenarioId.eq(scenario_id))
            .order_by_asc(scenario_items::Column::Position)
            .all(db)
            .await?;
        let template_ids: Vec<Uuid> = rows
            .iter()
            .flat_map(|i| uuids(&i.template_scenario_ids))
            .collect();
        let templates = if template_ids.is_empty() {
            HashMap::new()
        } else {
            template_scenarios::Entity::find()
                .filter(template_scenarios::Column::Id.is_in(template_ids))
                .all(db)
                .await?
                .into_iter()
                .map(|t| (t.id, t))
                .collect()
        };
        Ok(Self {
            items: rows.into_iter().map(|i| (i.id, i)).collect(),
            templates,
        })
    }

    /// Items without parents, in file order.
    fn roots(&self) -> Vec<&scenario_items::Model> {
        let mut r: Vec<&scenario_items::Model> = self
            .items
            .values()
            .filter(|i| uuids(&i.parents).is_empty())
            .collect();
        r.sort_by_key(|i| i.position);
        r
    }
}

/// What sending a sequence of items produced.
#[derive(Default)]
struct Emitted {
    replies: Vec<OutboundContent>,
    waiting_on: Option<Uuid>,
    handoff: bool,
}

impl Emitted {
    fn step(&self) -> Step {
        let (status, current) = if self.handoff {
            (status::HANDOFF, None)
        } else if let Some(w) = self.waiting_on {
            (status::WAITING, Some(w))
        } else {
            (status::FINISHED, None)
        };
        Step {
            status,
            current_item_id: current,
            fallback_count: 0,
        }
    }
}

/// Sends `item` (and what follows it) into `out`.
fn emit(
    g: &Graph,
    item: &scenario_items::Model,
    s: &ChatbotSettings,
    out: &mut Emitted,
    depth: usize,
) -> Result<(), ItemError> {
    if out.handoff || out.replies.len() >= MAX_REPLIES || depth > MAX_REPLIES {
        return Ok(());
    }
    let Some(kind) = ItemType::parse(&item.r#type) else {
        return Err(ItemError {
            item: item.id,
            reason: format!("unknown type {:?}", item.r#type),
        });
    };
    if kind.offers_options() {
        out.replies
            .push(content::options(item, &g.items, &s.list_button)?);
        out.waiting_on = Some(item.id);
        return Ok(());
    }
    out.replies.push(content::message(item, &g.templates)?);
    if kind == ItemType::Handoff {
        out.handoff = true;
        return Ok(());
    }
    for c in uuids(&item.children) {
        if let Some(child) = g.items.get(&c) {
            emit(g, child, s, out, depth + 1)?;
        }
    }
    Ok(())
}

/// Whether a chat is in a human's hands: assigned and not resolved, or
/// handed off by a scenario and not resolved since.
pub fn in_human_hands(chat: &chats::Model) -> Option<Refusal> {
    let closed = matches!(chat.status.as_str(), "resolved" | "closed");
    if chat.assigned_to.is_some() && !closed {
        return Some(Refusal::Assigned);
    }
    if let Some(h) = chat.handoff_at
        && chat.resolved_at.is_none_or(|r| r < h)
    {
        return Some(Refusal::HandedOff);
    }
    None
}

/// Whether the customer's number is blocked for the config.
pub async fn is_blocked<C: ConnectionTrait>(
    db: &C,
    customer: &customers::Model,
) -> Result<bool, sea_orm::DbErr> {
    if customer.is_blocked {
        return Ok(true);
    }
    let numbers: Vec<String> = [&customer.wa_id, &customer.phone_number]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if numbers.is_empty() {
        return Ok(false);
    }
    Ok(blocked_numbers::Entity::find()
        .filter(blocked_numbers::Column::ConfigId.eq(customer.config_id))
        .filter(blocked_numbers::Column::PhoneNumber.is_in(numbers))
        .filter(blocked_numbers::Column::IsActive.eq(true))
        .count(db)
        .await?
        > 0)
}

async fn not_allowed<C: ConnectionTrait>(
    db: &C,
    customer_id: Uuid,
    scenario_id: Uuid,
) -> Result<bool, sea_orm::DbErr> {
    Ok(
        customer_blocked_scenarios::Entity::find_by_id((customer_id, scenario_id))
            .one(db)
            .await?
            .is_some(),
    )
}

async fn runs_of<C: ConnectionTrait>(
    db: &C,
    customer_id: Uuid,
    scenario_id: Uuid,
) -> Result<u64, sea_orm::DbErr> {
    scenario_runs::Entity::find()
        .filter(scenario_runs::Column::CustomerId.eq(customer_id))
        .filter(scenario_runs::Column::ScenarioId.eq(scenario_id))
        .count(db)
        .await
}

/// Handles one stored inbound message (see the module doc).
pub async fn handle(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    message_id: Uuid,
    settings: &EngineSettings,
) -> Result<Outcome, EngineError> {
    let Some(msg) = messages::Entity::find_by_id(message_id).one(db).await? else {
        return Ok(Outcome::Unknown);
    };
    if msg.direction != Direction::Inbound || msg.is_deleted {
        return Ok(Outcome::Unknown);
    }
    let (Some(customer), Some(chat)) = (
        customers::Entity::find_by_id(msg.customer_id)
            .one(db)
            .await?,
        chats::Entity::find_by_id(msg.chat_id).one(db).await?,
    ) else {
        return Ok(Outcome::Unknown);
    };

    let refuse = |r: Refusal, scenario: Option<&str>| {
        m::refused(r.as_str(), scenario.unwrap_or(""));
        Ok(Outcome::Refused(r))
    };
    if is_blocked(db, &customer).await? {
        return refuse(Refusal::Blocked, None);
    }
    if customer.wa_group_id.is_some() {
        return refuse(Refusal::Group, None);
    }
    if let Some(r) = in_human_hands(&chat) {
        return refuse(r, None);
    }
    let sent_at = msg.timestamp.unwrap_or(msg.created_at);
    let age = clock::now().signed_duration_since(sent_at);
    if age.to_std().is_ok_and(|a| a > settings.max_age) {
        return refuse(Refusal::TooOld, None);
    }
    // Consumed before, or overtaken by a later message of the customer
    // (message ids are UUIDv7, in the order parse stored them).
    let latest = scenario_runs::Entity::find()
        .filter(scenario_runs::Column::CustomerId.eq(customer.id))
        .filter(scenario_runs::Column::LastMessageId.is_not_null())
        .order_by_desc(scenario_runs::Column::LastMessageId)
        .one(db)
        .await?;
    if latest
        .and_then(|r| r.last_message_id)
        .is_some_and(|last| last >= msg.id)
    {
        return Ok(Outcome::AlreadyConsumed);
    }

    let config = store::settings(db, msg.config_id).await?;
    let waiting = scenario_runs::Entity::find()
        .filter(scenario_runs::Column::CustomerId.eq(customer.id))
        .filter(scenario_runs::Column::Status.eq(status::WAITING))
        .one(db)
        .await?;

    let plan = match decide(db, &msg, &customer, &config, waiting).await? {
        Ok(p) => p,
        // Refusals were counted where the scenario was known.
        Err(outcome) => return Ok(outcome),
    };
    execute(db, broker, &msg, &customer, &chat, plan).await
}

type Decision = Result<Plan, Outcome>;

async fn decide(
    db: &DatabaseConnection,
    msg: &messages::Model,
    customer: &customers::Model,
    config: &ChatbotSettings,
    waiting: Option<scenario_runs::Model>,
) -> Result<Decision, EngineError> {
    match input_of(msg) {
        Input::Choice(item_id) => {
            if let Some(d) = choose(db, msg, customer, config, waiting.as_ref(), item_id).await? {
                return Ok(d);
            }
            // An id of ours that leads nowhere now (deleted scenario or item).
            fallback(db, config, waiting).await
        }
        Input::Text(t) => {
            let text = Text::new(&t);
            if let Some(exit) = config.exit_keywords.iter().find(|k| text.is(k)) {
                let menu = super::keywords::fold(exit) == MENU_KEYWORD;
                let default = match (&config.default_scenario, menu) {
                    (Some(title), true) => store::find_visible(db, msg.config_id, title)
                        .await?
                        .filter(|s| s.active),
                    _ => None,
                };
                if let Some(s) = default {
                    return start(db, customer, config, waiting.as_ref(), status::EXITED, s).await;
                }
                return Ok(match waiting {
                    Some(run) => {
                        let scenario = scenarios::Entity::find_by_id(run.scenario_id)
                            .one(db)
                            .await?;
                        match scenario {
                            Some(scenario) => Ok(Plan {
                                action: Action::Ended,
                                replies: Vec::new(),
                                end: vec![(run.id, status::EXITED, scenario.title.clone())],
                                scenario,
                                target: None,
                                handoff: false,
                            }),
                            None => Err(Outcome::NoMatch),
                        }
                    }
                    None => Err(Outcome::NoMatch),
                });
            }
            for s in store::visible(db, msg.config_id).await? {
                if !s.active {
                    continue;
                }
                let kws = store::strings(&s.keywords);
                if kws.iter().any(|k| text.contains(k)) {
                    return start(db, customer, config, waiting.as_ref(), status::REPLACED, s)
                        .await;
                }
            }
            fallback(db, config, waiting).await
        }
        Input::Other => fallback(db, config, waiting).await,
    }
}

/// A reply id of ours: that item, in its scenario's run.
async fn choose(
    db: &DatabaseConnection,
    msg: &messages::Model,
    customer: &customers::Model,
    config: &ChatbotSettings,
    waiting: Option<&scenario_runs::Model>,
    item_id: Uuid,
) -> Result<Option<Decision>, EngineError> {
    let Some(item) = scenario_items::Entity::find_by_id(item_id).one(db).await? else {
        return Ok(None);
    };
    let Some(scenario) = scenarios::Entity::find_by_id(item.scenario_id)
        .one(db)
        .await?
        .filter(|s| !s.is_deleted && s.active && s.config_id.is_none_or(|c| c == msg.config_id))
    else {
        return Ok(None);
    };
    if not_allowed(db, customer.id, scenario.id).await? {
        m::refused(Refusal::NotAllowed.as_str(), &scenario.title);
        return Ok(Some(Err(Outcome::Refused(Refusal::NotAllowed))));
    }
    let g = Graph::load(db, scenario.id).await?;
    let Some(item) = g.items.get(&item_id) else {
        return Ok(None);
    };
    let mut out = Emitted::default();
    emit(&g, item, config, &mut out, 0)?;
    let step = out.step();
    let mut end = Vec::new();
    // The waiting run of this scenario goes on; another one gives way.
    // Without one, the customer's latest run of this scenario resumes (an
    // old menu counts no new run against the repeat limit).
    let target = match waiting {
        Some(w) if w.scenario_id == scenario.id => Target::Existing { run_id: w.id },
        other => {
            if let Some(w) = other {
                end.push((w.id, status::REPLACED, title_of(db, w.scenario_id).await?));
            }
            let last = scenario_runs::Entity::find()
                .filter(scenario_runs::Column::CustomerId.eq(customer.id))
                .filter(scenario_runs::Column::ScenarioId.eq(scenario.id))
                .order_by_desc(scenario_runs::Column::StartedAt)
                .one(db)
                .await?;
            match last {
                Some(r) => Target::Existing { run_id: r.id },
                None => Target::New {
                    scenario_id: scenario.id,
                },
            }
        }
    };
    Ok(Some(Ok(Plan {
        scenario,
        action: Action::Continued,
        replies: out.replies,
        end,
        target: Some((target, step)),
        handoff: out.handoff,
    })))
}

async fn title_of<C: ConnectionTrait>(db: &C, scenario_id: Uuid) -> Result<String, sea_orm::DbErr> {
    Ok(scenarios::Entity::find_by_id(scenario_id)
        .one(db)
        .await?
        .map(|s| s.title)
        .unwrap_or_default())
}

/// Starts `s` for the customer: its root items, in order. A waiting run
/// ends first, as `ending`.
async fn start(
    db: &DatabaseConnection,
    customer: &customers::Model,
    config: &ChatbotSettings,
    waiting: Option<&scenario_runs::Model>,
    ending: &'static str,
    s: scenarios::Model,
) -> Result<Decision, EngineError> {
    if not_allowed(db, customer.id, s.id).await? {
        m::refused(Refusal::NotAllowed.as_str(), &s.title);
        return Ok(Err(Outcome::Refused(Refusal::NotAllowed)));
    }
    if s.repeat_count > 0 && runs_of(db, customer.id, s.id).await? >= s.repeat_count as u64 {
        m::refused(Refusal::RepeatLimit.as_str(), &s.title);
        return Ok(Err(Outcome::Refused(Refusal::RepeatLimit)));
    }
    let g = Graph::load(db, s.id).await?;
    let mut out = Emitted::default();
    for root in g.roots() {
        emit(&g, root, config, &mut out, 0)?;
    }
    let step = out.step();
    let mut end = Vec::new();
    if let Some(w) = waiting {
        end.push((w.id, ending, title_of(db, w.scenario_id).await?));
    }
    Ok(Ok(Plan {
        action: Action::Started,
        replies: out.replies,
        end,
        target: Some((Target::New { scenario_id: s.id }, step)),
        handoff: out.handoff,
        scenario: s,
    }))
}

/// An answer that is neither an option nor a keyword.
async fn fallback(
    db: &DatabaseConnection,
    config: &ChatbotSettings,
    waiting: Option<scenario_runs::Model>,
) -> Result<Decision, EngineError> {
    let Some(run) = waiting else {
        return Ok(Err(Outcome::NoMatch));
    };
    let Some(scenario) = scenarios::Entity::find_by_id(run.scenario_id)
        .one(db)
        .await?
    else {
        return Ok(Err(Outcome::NoMatch));
    };
    let g = Graph::load(db, scenario.id).await?;
    let current = run.current_item_id.and_then(|c| g.items.get(&c));
    let (Some(current), true) = (current, run.fallback_count < MAX_FALLBACKS) else {
        // Out of chances (or the item is gone): the run ends, silently.
        return Ok(Ok(Plan {
            scenario,
            action: Action::Ended,
            replies: Vec::new(),
            end: Vec::new(),
            target: Some((
                Target::Existing { run_id: run.id },
                Step {
                    status: status::ABANDONED,
                    current_item_id: run.current_item_id,
                    fallback_count: run.fallback_count,
                },
            )),
            handoff: false,
        }));
    };
    let mut replies = Vec::new();
    if let Some(f) = &config.fallback {
        replies.push(OutboundContent::Text {
            body: f.clone(),
            preview_url: false,
        });
    }
    replies.push(content::options(current, &g.items, &config.list_button)?);
    Ok(Ok(Plan {
        scenario,
        action: Action::Fallback,
        replies,
        end: Vec::new(),
        target: Some((
            Target::Existing { run_id: run.id },
            Step {
                status: status::WAITING,
                current_item_id: Some(current.id),
                fallback_count: run.fallback_count + 1,
            },
        )),
        handoff: false,
    }))
}

async fn execute(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    msg: &messages::Model,
    customer: &customers::Model,
    chat: &chats::Model,
    plan: Plan,
) -> Result<Outcome, EngineError> {
    // A customer without a number is written to by their BSUID.
    let to = crate::outbox::address_of(customer).unwrap_or_default();
    // One transaction for all the replies, their jobs published in order.
    let news: Vec<NewOutbound> = plan
        .replies
        .iter()
        .enumerate()
        .map(|(seq, content)| NewOutbound {
            config_id: msg.config_id,
            to: to.clone(),
            content: content.clone(),
            reply_to: None,
            origin: Origin::Bot,
            sender_type: "bot".into(),
            sender_id: None,
            answers: Some(Answer {
                message_id: msg.id,
                seq: seq as i32,
            }),
        })
        .collect();
    let sent = outbox::send_all(db, broker, news)
        .await?
        .iter()
        .filter(|q| q.is_new)
        .count();

    let now = clock::now();
    let txn = wapipe_shared::db::begin_write(db).await?;
    for (run_id, st, _) in &plan.end {
        scenario_runs::Entity::update_many()
            .col_expr(scenario_runs::Column::Status, Expr::value(*st))
            .col_expr(scenario_runs::Column::EndedAt, Expr::value(now))
            .col_expr(scenario_runs::Column::LastStepAt, Expr::value(now))
            .col_expr(scenario_runs::Column::UpdatedAt, Expr::value(now))
            .col_expr(scenario_runs::Column::LastMessageId, Expr::value(msg.id))
            .filter(scenario_runs::Column::Id.eq(*run_id))
            .filter(scenario_runs::Column::Status.eq(status::WAITING))
            .exec(&txn)
            .await?;
    }
    if let Some((target, step)) = &plan.target {
        let ended = (step.status != status::WAITING).then_some(now);
        match target {
            Target::Existing { run_id } => {
                scenario_runs::Entity::update_many()
                    .col_expr(scenario_runs::Column::Status, Expr::value(step.status))
                    .col_expr(
                        scenario_runs::Column::CurrentItemId,
                        Expr::value(step.current_item_id),
                    )
                    .col_expr(
                        scenario_runs::Column::FallbackCount,
                        Expr::value(step.fallback_count),
                    )
                    .col_expr(scenario_runs::Column::EndedAt, Expr::value(ended))
                    .col_expr(scenario_runs::Column::LastStepAt, Expr::value(now))
                    .col_expr(scenario_runs::Column::UpdatedAt, Expr::value(now))
                    .col_expr(scenario_runs::Column::LastMessageId, Expr::value(msg.id))
                    .col_expr(scenario_runs::Column::ChatId, Expr::value(chat.id))
                    .filter(scenario_runs::Column::Id.eq(*run_id))
                    .exec(&txn)
                    .await?;
            }
            Target::New { scenario_id } => {
                scenario_runs::Entity::insert(scenario_runs::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    created_at: Set(now),
                    updated_at: Set(now),
                    config_id: Set(msg.config_id),
                    scenario_id: Set(*scenario_id),
                    customer_id: Set(customer.id),
                    chat_id: Set(Some(chat.id)),
                    current_item_id: Set(step.current_item_id),
                    status: Set(step.status.to_owned()),
                    fallback_count: Set(step.fallback_count),
                    start_message_id: Set(Some(msg.id)),
                    last_message_id: Set(Some(msg.id)),
                    started_at: Set(now),
                    last_step_at: Set(now),
                    ended_at: Set(ended),
                })
                .on_conflict(
                    OnConflict::column(scenario_runs::Column::StartMessageId)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
            }
        }
    }
    let handed_off = plan.handoff && chat.handoff_at.is_none_or(|h| h < now);
    if plan.handoff {
        chats::Entity::update_many()
            .col_expr(chats::Column::HandoffAt, Expr::value(now))
            .col_expr(chats::Column::UpdatedAt, Expr::value(now))
            .filter(chats::Column::Id.eq(chat.id))
            .exec(&txn)
            .await?;
        audit_log::Entity::insert(audit_log::ActiveModel {
            id: Set(Uuid::now_v7()),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(Some(msg.config_id)),
            actor_type: Set("bot".into()),
            actor_id: Set(None),
            action: Set("chat.handoff".into()),
            entity_type: Set("chats".into()),
            entity_id: Set(Some(chat.id.to_string())),
            details: Set(Some(json!({
                "scenario_id": plan.scenario.id,
                "scenario": plan.scenario.title,
                "customer_id": customer.id,
                "message_id": msg.id,
            }))),
        })
        .exec_without_returning(&txn)
        .await?;
    }
    if handed_off {
        // Runs once: a later message of a handed-off chat is refused above.
        crate::events::record_chats(&txn, crate::events::CHAT_UPDATED, &[chat.id]).await?;
    }
    txn.commit().await?;

    if plan.handoff && handed_off {
        // Best effort, after the commit: agents' screens learn of it now;
        // the chat row says so for good.
        let event = RealtimeEvent {
            event: REALTIME_CHAT_UPDATED.to_owned(),
            config_id: msg.config_id,
            chat_id: Some(chat.id),
            message_id: Some(msg.id),
            data: json!({"handoff": true, "handoff_at": now, "scenario": plan.scenario.title,
                         "customer_id": customer.id}),
        };
        if let Err(e) = broker
            .publish_realtime(RealtimeEvent::encode(&[event]))
            .await
        {
            tracing::warn!(error = %e, chat = %chat.id, "handoff real-time event not published");
        }
    }

    let title = plan.scenario.title.as_str();
    match plan.action {
        Action::Started => m::started(title),
        Action::Continued => m::continued(title),
        Action::Fallback => m::fallback(title),
        Action::Ended => {}
    }
    for (_, st, ended_title) in &plan.end {
        m::finished(ended_title, st);
    }
    if let Some((_, step)) = &plan.target
        && step.status != status::WAITING
    {
        m::finished(title, step.status);
    }
    if plan.handoff {
        m::handoff(title);
    }
    Ok(Outcome::Done {
        scenario: plan.scenario.title,
        action: plan.action,
        replies: plan.replies.len(),
        sent,
    })
}
