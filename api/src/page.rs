//! Cursor pagination: `limit` (default 50, at most 200) and an opaque
//! `cursor`, the (sort key, id) of the last row served, base64url. Lists
//! are keyset queries on (sort key, id), so a page never repeats or skips a
//! row when rows are inserted between two calls, and a deep page costs what
//! the first does (no OFFSET).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 200;

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Where the previous page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!(
            "{}|{}",
            self.at.to_rfc3339_opts(SecondsFormat::Nanos, true),
            self.id
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(s: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::field("cursor", "not a cursor this API gave out");
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (at, id) = raw.split_once('|').ok_or_else(bad)?;
        Ok(Cursor {
            at: DateTime::parse_from_rfc3339(at)
                .map_err(|_| bad())?
                .with_timezone(&Utc),
            id: Uuid::parse_str(id).map_err(|_| bad())?,
        })
    }
}

/// The page size asked for, checked.
pub fn limit(asked: Option<u64>) -> Result<u64, ApiError> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

/// Cuts the `limit + 1` rows fetched into a page and its next cursor.
pub fn paginate<R, T>(
    rows: Vec<R>,
    limit: u64,
    key: impl Fn(&R) -> Cursor,
    view: impl FnMut(R) -> T,
) -> Page<T> {
    paginate_opt(rows, limit, |r| Some(key(r)), view)
}

fn paginate_opt<R, T>(
    mut rows: Vec<R>,
    limit: u64,
    key: impl Fn(&R) -> Option<Cursor>,
    view: impl FnMut(R) -> T,
) -> Page<T> {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().and_then(key).map(|c| c.encode())
    } else {
        None
    };
    Page {
        data: rows.into_iter().map(view).collect(),
        next_cursor,
    }
}

/// `from` / `to` filters: RFC 3339, or a date (`2026-11-29`, midnight UTC).
pub fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(ApiError::field(
        field,
        "expected an RFC 3339 time or a YYYY-MM-DD date",
    ))
}

/// The rows after `cursor` in (time, id) order, descending or ascending.
pub fn after<C: sea_orm::ColumnTrait>(
    cursor: Option<&str>,
    time: C,
    id: C,
    descending: bool,
) -> Result<sea_orm::Condition, ApiError> {
    use sea_orm::sea_query::Expr;
    let col = |c: C| Expr::col(c.as_column_ref());
    after_expr(cursor, col(time), col(id), descending)
}

/// [`after`] over any sort expression (the chat list sorts by a COALESCE).
/// One row-value comparison, `(time, id) < (at, id)`, rather than
/// `time < at OR (time = at AND id < id)`: both databases read it as one
/// range of a (time, id) index, where the OR made PostgreSQL walk the index
/// from the top to reach a deep page.
pub fn after_expr(
    cursor: Option<&str>,
    time: sea_orm::sea_query::SimpleExpr,
    id: sea_orm::sea_query::SimpleExpr,
    descending: bool,
) -> Result<sea_orm::Condition, ApiError> {
    use sea_orm::sea_query::Expr;
    use sea_orm::{Condition, ExprTrait};
    let Some(c) = cursor else {
        return Ok(Condition::all());
    };
    let c = Cursor::decode(c)?;
    let key = Expr::tuple([time, id]);
    let at = Expr::tuple([Expr::value(c.at), Expr::value(c.id)]);
    Ok(Condition::all().add(if descending { key.lt(at) } else { key.gt(at) }))
}

/// A keyset list's order: a time column, then the id column.
pub struct Keyset<C> {
    pub time: C,
    pub id: C,
    pub descending: bool,
}

impl<C: sea_orm::ColumnTrait> Keyset<C> {
    /// Oldest first.
    pub fn asc(time: C, id: C) -> Self {
        Self {
            time,
            id,
            descending: false,
        }
    }

    /// Newest first.
    pub fn desc(time: C, id: C) -> Self {
        Self {
            time,
            id,
            descending: true,
        }
    }

    /// One page of `query` in this order: the `limit` (checked) rows after
    /// `cursor`, each shown through `view`, and the next cursor, read off
    /// the last row's two columns.
    pub async fn page<E, T, D>(
        self,
        db: &D,
        query: sea_orm::Select<E>,
        cursor: Option<&str>,
        asked: Option<u64>,
        view: impl FnMut(E::Model) -> T,
    ) -> Result<Page<T>, ApiError>
    where
        E: sea_orm::EntityTrait<Column = C>,
        D: sea_orm::ConnectionTrait,
    {
        use sea_orm::sea_query::ValueType;
        use sea_orm::{ModelTrait, QueryFilter, QueryOrder, QuerySelect};
        let limit = limit(asked)?;
        let order = if self.descending {
            sea_orm::Order::Desc
        } else {
            sea_orm::Order::Asc
        };
        let rows = query
            .filter(after(cursor, self.time, self.id, self.descending)?)
            .order_by(self.time, order.clone())
            .order_by(self.id, order)
            .limit(limit + 1)
            .all(db)
            .await?;
        // Keyset columns are a timestamp and a uuid by construction; a row
        // whose cursor cannot be read ends the list rather than failing it.
        let key = |m: &E::Model| {
            Some(Cursor {
                at: <DateTime<Utc> as ValueType>::try_from(m.get(self.time)).ok()?,
                id: <Uuid as ValueType>::try_from(m.get(self.id)).ok()?,
            })
        };
        Ok(paginate_opt(rows, limit, key, view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_to_the_nanosecond() {
        let c = Cursor {
            at: DateTime::from_timestamp(1_790_000_000, 123_456_789).expect("time"),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()).expect("decode"), c);
        assert!(Cursor::decode("not a cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("2026|x")).is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(limit(None).expect("default"), 50);
        assert_eq!(limit(Some(200)).expect("max"), 200);
        assert!(limit(Some(0)).is_err() && limit(Some(201)).is_err());
    }
}
