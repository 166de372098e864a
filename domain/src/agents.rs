//! Agents (seed 002 Agent): adding one and listing them. An agent works
//! for a company (`whatsapp_configs.company`); when that company has a
//! single number, the agent is tied to it (`config_id`). The phone number
//! is where follow-up reminders go by WhatsApp; an agent without one gets
//! them as real-time events only.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder,
};
use uuid::Uuid;
use wapipe_shared::entities::{agents, whatsapp_configs};

use crate::clock;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("an agent needs a name")]
    EmptyName,
    #[error("{0:?} is not an email address")]
    BadEmail(String),
    #[error(
        "{0:?} is not a WhatsApp phone number: expected an optional + then 6 to 15 digits (spaces, dots and dashes allowed)"
    )]
    BadPhone(String),
    #[error("no WhatsApp number is configured yet: run `wapipe config add` first")]
    NoCompany,
    #[error("no company named {name:?}; known: {known}")]
    UnknownCompany { name: String, known: String },
    #[error("several companies ({0}): pass --company")]
    CompanyNeeded(String),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// An agent to add.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub name: String,
    pub email: String,
    pub phone_number: Option<String>,
    /// May be left out when there is only one company.
    pub company: Option<String>,
}

/// A phone number as stored: `+` and its digits. Accepts the separators
/// people type (spaces, dots, dashes, parentheses).
pub fn normalize_phone(input: &str) -> Result<String, AgentError> {
    let s = input.trim();
    let rest = s.strip_prefix('+').unwrap_or(s);
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '.' | '-' | '(' | ')' => {}
            _ => return Err(AgentError::BadPhone(input.to_owned())),
        }
    }
    if (6..=15).contains(&digits.len()) {
        Ok(format!("+{digits}"))
    } else {
        Err(AgentError::BadPhone(input.to_owned()))
    }
}

/// Adds an agent; returns the row.
pub async fn create(db: &impl ConnectionTrait, new: NewAgent) -> Result<agents::Model, AgentError> {
    let name = new.name.trim();
    if name.is_empty() {
        return Err(AgentError::EmptyName);
    }
    let email = new.email.trim();
    let valid_email = email
        .split_once('@')
        .is_some_and(|(user, host)| !user.is_empty() && host.contains('.') && !host.contains('@'))
        && !email.contains(char::is_whitespace);
    if !valid_email {
        return Err(AgentError::BadEmail(new.email.clone()));
    }
    let phone = match new.phone_number.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => Some(normalize_phone(p)?),
        _ => None,
    };
    let configs = whatsapp_configs::Entity::find()
        .filter(whatsapp_configs::Column::IsDeleted.eq(false))
        .order_by(whatsapp_configs::Column::CreatedAt, Order::Asc)
        .all(db)
        .await?;
    let mut companies: Vec<&str> = configs.iter().map(|c| c.company.as_str()).collect();
    companies.sort_unstable();
    companies.dedup();
    let company = match new.company.as_deref().map(str::trim) {
        Some(c) => companies
            .iter()
            .find(|k| **k == c)
            .map(|k| (*k).to_owned())
            .ok_or_else(|| AgentError::UnknownCompany {
                name: c.to_owned(),
                known: if companies.is_empty() {
                    "none".to_owned()
                } else {
                    companies.join(", ")
                },
            })?,
        None => match companies.as_slice() {
            [] => return Err(AgentError::NoCompany),
            [one] => (*one).to_owned(),
            many => return Err(AgentError::CompanyNeeded(many.join(", "))),
        },
    };
    let numbers: Vec<Uuid> = configs
        .iter()
        .filter(|c| c.company == company)
        .map(|c| c.id)
        .collect();
    let now = clock::now();
    let id = Uuid::now_v7();
    agents::Entity::insert(agents::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(match numbers.as_slice() {
            [one] => Some(*one),
            _ => None,
        }),
        name: Set(name.to_owned()),
        email: Set(email.to_owned()),
        phone_number: Set(phone),
        company: Set(Some(company)),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await?;
    agents::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AgentError::Db(sea_orm::DbErr::RecordNotFound(format!("agent {id}"))))
}

/// Agents not deleted, by name.
pub async fn list(db: &impl ConnectionTrait) -> Result<Vec<agents::Model>, AgentError> {
    Ok(agents::Entity::find()
        .filter(agents::Column::IsDeleted.eq(false))
        .order_by(agents::Column::Name, Order::Asc)
        .order_by(agents::Column::Id, Order::Asc)
        .all(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_normalize_to_plus_digits() {
        assert_eq!(
            normalize_phone("+33 6 12-34.56 78").ok().as_deref(),
            Some("+33612345678")
        );
        assert_eq!(
            normalize_phone("(0049) 151 1234").ok().as_deref(),
            Some("+00491511234")
        );
        for bad in [
            "",
            "+",
            "12345",
            "+1234567890123456",
            "06 12 ab",
            "++331234567",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad:?}");
        }
    }
}
