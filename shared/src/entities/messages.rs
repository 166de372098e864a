//! seed 002 Message + seed 000 chats: every message in and out, with Meta's
//! wamid (`provider_message_id`, unique per config) and its delivery status.
//! `MessageStatus::can_apply` is the one rule for status updates (DESIGN
//! invariant 4).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Which way the message went.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[sea_orm(string_value = "inbound")]
    Inbound,
    #[sea_orm(string_value = "outbound")]
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inbound" => Ok(Self::Inbound),
            "outbound" => Ok(Self::Outbound),
            other => Err(format!(
                "unknown direction {other:?}: expected inbound or outbound"
            )),
        }
    }
}

/// Who wrote the message (seed 000 `origin`): the customer, a scenario, an
/// agent, or wapipe itself (reminders, notices).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "bot")]
    Bot,
    #[sea_orm(string_value = "admin")]
    Admin,
    #[sea_orm(string_value = "system")]
    System,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Bot => "bot",
            Self::Admin => "admin",
            Self::System => "system",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "bot" => Ok(Self::Bot),
            "admin" => Ok(Self::Admin),
            "system" => Ok(Self::System),
            other => Err(format!(
                "unknown origin {other:?}: expected user, bot, admin or system"
            )),
        }
    }
}

/// Delivery status of a message. Inbound messages are stored as `delivered`
/// (and `read` once an agent reads them); outbound ones start `queued`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "sending")]
    Sending,
    #[sea_orm(string_value = "sent")]
    Sent,
    #[sea_orm(string_value = "delivered")]
    Delivered,
    #[sea_orm(string_value = "read")]
    Read,
    #[sea_orm(string_value = "played")]
    Played,
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl MessageStatus {
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Delivered,
        Self::Read,
        Self::Played,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
            Self::Failed => "failed",
        }
    }

    /// DESIGN invariant 4: queued 0 < sending 1 < sent 2 < delivered 3 <
    /// read 4 < played 5. `failed` has the rank of `sent` (2): it ends a send
    /// that never reached a device, and `can_apply` treats it specially.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Sending => 1,
            Self::Sent | Self::Failed => 2,
            Self::Delivered => 3,
            Self::Read => 4,
            Self::Played => 5,
        }
    }

    /// Whether a message in status `from` may move to `to`:
    /// - a status applies only if it ranks strictly higher (so a repeat is a
    ///   no-op and nothing regresses);
    /// - `failed` applies over queued, sending and sent, never over
    ///   delivered, read or played, nor over itself;
    /// - over `failed`, only delivered, read and played apply: with
    ///   multi-device sends Meta can report both a failure and a delivery,
    ///   and the delivery wins.
    ///
    /// This is the total order queued < sending < sent < failed < delivered
    /// < read < played, so the final status does not depend on the order
    /// in which Meta's receipts arrive.
    pub fn can_apply(from: Self, to: Self) -> bool {
        match (from, to) {
            (Self::Failed, Self::Failed) => false,
            (_, Self::Failed) => from.rank() <= Self::Sent.rank(),
            (Self::Failed, _) => to.rank() > Self::Sent.rank(),
            _ => to.rank() > from.rank(),
        }
    }

    /// The statuses `self` may replace: the `WHERE status IN (..)` of the
    /// one conditional UPDATE that applies a receipt.
    pub fn applies_over(self) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|from| Self::can_apply(*from, self))
            .collect()
    }
}

impl std::fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MessageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown message status {s:?}: expected queued, sending, sent, delivered, read, played or failed"
                )
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub chat_id: Uuid,
    pub customer_id: Uuid,
    pub conversation_id: Option<Uuid>,
    /// Meta's wamid; `None` until an outbound send returns it.
    pub provider_message_id: Option<String>,
    pub direction: Direction,
    pub origin: Origin,
    /// `customer`, `agent`, `bot` or `system` (seed 002 `senderType`).
    pub sender_type: String,
    pub sender_id: Option<Uuid>,
    /// Meta's message type (`text`, `image`, `interactive`, ...), kept as
    /// sent so unknown types are stored too.
    pub r#type: String,
    pub text: Option<String>,
    pub media: Option<Json>,
    pub location: Option<Json>,
    pub contacts: Option<Json>,
    pub interactive: Option<Json>,
    pub template: Option<Json>,
    pub reaction: Option<Json>,
    pub reactions: Option<Json>,
    pub context: Option<Json>,
    pub reply_to_provider_id: Option<String>,
    pub is_forwarded: bool,
    pub referral: Option<Json>,
    pub payload: Option<Json>,
    pub errors: Option<Json>,
    pub status: MessageStatus,
    pub error_code: Option<String>,
    pub error_title: Option<String>,
    pub error_details: Option<String>,
    /// Meta's `timestamp` of the message.
    pub timestamp: Option<DateTimeUtc>,
    pub sent_at: Option<DateTimeUtc>,
    pub delivered_at: Option<DateTimeUtc>,
    pub read_at: Option<DateTimeUtc>,
    pub failed_at: Option<DateTimeUtc>,
    /// When an `outbound.send` job was last handed to the broker (outbound sweep).
    pub dispatched_at: Option<DateTimeUtc>,
    pub attempt_count: i32,
    pub is_read: bool,
    pub is_edited: bool,
    pub edit_history: Option<Json>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
    /// A reaction, edit or revoke whose target is not stored yet: the
    /// target's wamid, until the parse worker applies it. NULL otherwise.
    pub effect_target: Option<String>,
    /// For a bot reply: the inbound message it answers, and its place
    /// among that message's replies. Unique together: a replayed inbound
    /// message cannot queue the same reply twice.
    pub answers_message_id: Option<Uuid>,
    pub answer_seq: Option<i32>,

    /// Sender and recipient numbers (seed 002 `from`, `to`).
    pub from: Option<String>,
    pub to: Option<String>,
    pub read_status: Option<String>,
    pub sender_name: Option<String>,
    pub provider: String,
    pub provider_status: Option<String>,
    pub metadata: Option<Json>,

    /// The `pricing` of the message's status receipts (Meta's
    /// `pricing_model`, `type`, `category`, `billable`).
    pub pricing_model: Option<String>,
    pub pricing_type: Option<String>,
    pub pricing_category: Option<String>,
    pub billable: Option<bool>,
    /// In a group chat, the customer row of the member who wrote it
    /// (`customer_id` is the group's); `None` elsewhere.
    pub participant_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
    #[sea_orm(
        belongs_to = "super::chats::Entity",
        from = "Column::ChatId",
        to = "super::chats::Column::Id"
    )]
    Chat,
    #[sea_orm(
        belongs_to = "super::customers::Entity",
        from = "Column::CustomerId",
        to = "super::customers::Column::Id"
    )]
    Customer,
    #[sea_orm(
        belongs_to = "super::conversations::Entity",
        from = "Column::ConversationId",
        to = "super::conversations::Column::Id"
    )]
    Conversation,
    #[sea_orm(has_many = "super::message_status_events::Entity")]
    StatusEvents,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chat.def()
    }
}

impl Related<super::customers::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Customer.def()
    }
}

impl Related<super::conversations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Conversation.def()
    }
}

impl Related<super::message_status_events::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::StatusEvents.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

#[cfg(test)]
mod tests {
    use super::MessageStatus::{self, *};

    /// The expected answer for every (from, to) pair, written out by hand
    /// rather than derived from `rank()`.
    fn expected(from: MessageStatus, to: MessageStatus) -> bool {
        let applies_over: &[MessageStatus] = match to {
            Queued => &[],
            Sending => &[Queued],
            Sent => &[Queued, Sending],
            Failed => &[Queued, Sending, Sent],
            Delivered => &[Queued, Sending, Sent, Failed],
            Read => &[Queued, Sending, Sent, Failed, Delivered],
            Played => &[Queued, Sending, Sent, Failed, Delivered, Read],
        };
        applies_over.contains(&from)
    }

    #[test]
    fn can_apply_every_pair() {
        for from in MessageStatus::ALL {
            for to in MessageStatus::ALL {
                assert_eq!(
                    MessageStatus::can_apply(from, to),
                    expected(from, to),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn nothing_regresses_or_repeats() {
        for s in MessageStatus::ALL {
            assert!(!MessageStatus::can_apply(s, s), "{s} over itself");
            assert!(!MessageStatus::can_apply(s, Queued), "queued over {s}");
        }
        for from in [Delivered, Read, Played] {
            assert!(
                !MessageStatus::can_apply(from, Failed),
                "failed over {from}"
            );
            assert!(!MessageStatus::can_apply(from, Sent), "sent over {from}");
        }
        assert!(!MessageStatus::can_apply(Failed, Sent));
        assert!(!MessageStatus::can_apply(Failed, Sending));
    }

    #[test]
    fn ranks_follow_design() {
        let order = [Queued, Sending, Sent, Delivered, Read, Played];
        for (i, s) in order.into_iter().enumerate() {
            assert_eq!(usize::from(s.rank()), i, "{s}");
        }
    }

    /// Receipts arrive in any order: applying them in every order of
    /// every subset ends in the same status.
    #[test]
    fn final_status_independent_of_arrival_order() {
        fn permutations(items: &[MessageStatus]) -> Vec<Vec<MessageStatus>> {
            if items.is_empty() {
                return vec![vec![]];
            }
            let mut out = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.to_vec();
                let first = rest.remove(i);
                for mut p in permutations(&rest) {
                    p.insert(0, first);
                    out.push(p);
                }
            }
            out
        }
        let receipts = [Sent, Delivered, Read, Played, Failed];
        for mask in 1u32..(1 << receipts.len()) {
            let subset: Vec<_> = (0..receipts.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| receipts[i])
                .collect();
            let mut finals = permutations(&subset).into_iter().map(|order| {
                order.into_iter().fold(Queued, |cur, next| {
                    if MessageStatus::can_apply(cur, next) {
                        next
                    } else {
                        cur
                    }
                })
            });
            let first = finals.next().expect("non-empty subset");
            assert!(finals.all(|f| f == first), "{subset:?}");
        }
    }

    #[test]
    fn applies_over_matches_can_apply_and_strings_round_trip() {
        assert_eq!(Failed.applies_over(), vec![Queued, Sending, Sent]);
        assert_eq!(
            Delivered.applies_over(),
            vec![Queued, Sending, Sent, Failed]
        );
        assert!(Queued.applies_over().is_empty());
        for s in MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<MessageStatus>(), Ok(s));
        }
        assert!("bogus".parse::<MessageStatus>().is_err());
    }
}
