//! What both sources read of the orders table: the checked columns, the row's SQL select list,
//! and a row turned into an order (with its reject when no message can carry it).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use tokio_postgres::{Client, Row};

use super::Unencodable;
use crate::config::TableName;
use crate::db::{self, pg_error};
use crate::error::{Error, Result};
use crate::order::{AMOUNT_PRECISION, AMOUNT_SCALE, Order, format_ts};

/// The select list of an order row, for [`to_order`].
//
// `id`, not `order_id`: ORDER BY order_id must name the column (and its index), not this cast.
// `created_at` comes twice: as a timestamp when finite and below the year 10000 (aliased, so
// ORDER BY created_at still names the column; a BC time keeps its place in watermark order),
// and as text when no message can carry it (`infinity`, `-infinity`, BC, beyond 9999), for the
// reject.
pub const SELECT_COLUMNS: &str = "order_id::int8 AS id, customer_name, restaurant_name, item, \
                       NULLIF(amount, 'NaN'::numeric), order_status, \
                       CASE WHEN isfinite(created_at) AND created_at < '10000-01-01' THEN created_at END AS created_ts, \
                       CASE WHEN NOT isfinite(created_at) OR created_at < '0001-01-01' OR created_at >= '10000-01-01' \
                       THEN created_at::text END AS created_raw, \
                       amount = 'NaN'::numeric AS amount_nan";

/// Checks that the table exists with columns the order record can hold.
pub async fn check_table(client: &Client, table: &TableName) -> Result<()> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypmod \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| pg_error(table, &e))?;
    if rows.is_empty() {
        return Err(Error::Setup(format!(
            "PostgreSQL: table {table} does not exist (run `orderstream init`)"
        )));
    }
    let types: BTreeMap<String, (String, i32)> =
        rows.iter().map(|r| (r.get::<_, String>(0), (r.get::<_, String>(1), r.get::<_, i32>(2)))).collect();
    let text_types = ["text", "character varying", "character", "name"];
    for column in crate::order::COLUMNS {
        let Some((ty, typmod)) = types.get(column) else {
            return Err(Error::Setup(format!("PostgreSQL: table {table}: column {column} is missing")));
        };
        let base = ty.split('(').next().unwrap_or(ty).trim();
        let ok = match column {
            "order_id" => matches!(base, "integer" | "bigint" | "smallint"),
            "amount" => {
                // numeric(p,s): typmod = ((p << 16) | s) + 4
                let (p, s) = ((typmod - 4) >> 16, (typmod - 4) & 0xffff);
                base == "numeric"
                    && *typmod >= 4
                    && p <= i32::from(AMOUNT_PRECISION)
                    && s == AMOUNT_SCALE as i32
            }
            "created_at" => base == "timestamp without time zone",
            _ => text_types.contains(&base),
        };
        if !ok {
            let want = match column {
                "order_id" => "an integer type",
                "amount" => "numeric(10,2)",
                "created_at" => "timestamp (without time zone)",
                _ => "a text type",
            };
            return Err(Error::Setup(format!(
                "PostgreSQL: table {table}: column {column} is {ty}, expected {want}"
            )));
        }
    }
    Ok(())
}

/// The order of a row read with [`SELECT_COLUMNS`], and its reject when no message can carry it (its
/// `created_at` then a placeholder, except for a BC time, which keeps its place in watermark
/// order).
pub fn to_order(row: &Row, table: &TableName) -> Result<(Order<'static>, Option<Box<Unencodable>>)> {
    let bad = |e: tokio_postgres::Error| {
        Error::Setup(format!("PostgreSQL: table {table}: unreadable row: {}", db::error_text(&e)))
    };
    let text = |i: usize| -> Result<Option<Cow<'static, str>>> {
        Ok(row.try_get::<_, Option<String>>(i).map_err(bad)?.map(Cow::Owned))
    };
    let created_at = row.try_get::<_, Option<NaiveDateTime>>(6).map_err(bad)?;
    let raw = row.try_get::<_, Option<String>>(7).map_err(bad)?;
    let order = Order {
        order_id: row.try_get(0).map_err(bad)?,
        customer_name: text(1)?,
        restaurant_name: text(2)?,
        item: text(3)?,
        amount: row.try_get::<_, Option<Decimal>>(4).map_err(bad)?,
        order_status: text(5)?,
        created_at: created_at.unwrap_or_default(),
    };
    if created_at.is_none() || raw.is_some() {
        let reject = Unencodable::created_at(&order, raw.as_deref());
        return Ok((order, Some(reject)));
    }
    if row.try_get::<_, Option<bool>>(8).map_err(bad)? == Some(true) {
        // JSON has no NaN: as `null` the consumer could not tell it from a NULL amount.
        let reject = Unencodable::amount(&order, "NaN", Some(&format_ts(&order.created_at)));
        return Ok((order, Some(reject)));
    }
    if order.amount.is_none() {
        tracing::warn!(order_id = order.order_id, "order has no amount (NULL): published with amount null");
    }
    Ok((order, None))
}
