//! THE order record, defined once: the table's columns, the Kafka message (the seed's JSON),
//! the lake's Arrow/Parquet schema, and the rules that decide whether a message is a valid
//! order.
//!
//! The JSON form is exactly the seed's sample message, key order and spacing included:
//!
//! ```text
//! {"order_id": 101, "customer_name": "John Doe", "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": 220.00, "order_status": "PLACED", "created_at": "2025-01-18T12:24:00Z"}
//! ```
//!
//! `amount` is a JSON number that keeps both decimals (`NUMERIC(10,2)` never passes through a
//! float); `created_at` is the column's value (a `TIMESTAMP` holding UTC) in ISO-8601 with `Z`,
//! with a fraction only when it has one. SQL NULLs are JSON `null`.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDateTime, Timelike};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::wire::{ChangeMeta, LSN_HEADER, Op};

/// The table's columns, in the seed's order (also the JSON keys and the lake's first seven).
pub const COLUMNS: [&str; 7] =
    ["order_id", "customer_name", "restaurant_name", "item", "amount", "order_status", "created_at"];

/// The lake's columns: the seed's seven, then what the change did (`op`), where it stands in
/// the log (`lsn`, `change_index`) and when it committed (`committed_at`). Both capture modes
/// write all eleven (poll mode: `op` = `c`, the other three null), so a lake that switched
/// modes reads as one table.
pub const LAKE_COLUMNS: [&str; 11] = [
    "order_id",
    "customer_name",
    "restaurant_name",
    "item",
    "amount",
    "order_status",
    "created_at",
    "op",
    "lsn",
    "change_index",
    "committed_at",
];

/// Precision and scale of `amount` (`NUMERIC(10, 2)`).
pub const AMOUNT_PRECISION: u8 = 10;
/// Scale of `amount`.
pub const AMOUNT_SCALE: u32 = 2;

/// One order. Text borrows from its source (a database row or a Kafka message) where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order<'a> {
    /// `order_id`: the primary key.
    pub order_id: i64,
    /// `customer_name`
    pub customer_name: Option<Cow<'a, str>>,
    /// `restaurant_name`
    pub restaurant_name: Option<Cow<'a, str>>,
    /// `item`
    pub item: Option<Cow<'a, str>>,
    /// `amount`, scale 2 (NULL only in a table row; a valid message always has one).
    pub amount: Option<Decimal>,
    /// `order_status`
    pub order_status: Option<Cow<'a, str>>,
    /// `created_at` in UTC.
    pub created_at: NaiveDateTime,
}

impl Order<'_> {
    /// Appends the seed's JSON form to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, v: &Option<Cow<'_, str>>) {
            match v {
                // Writing a str into a Vec cannot fail.
                Some(s) => serde_json::to_writer(&mut *out, s.as_ref()).unwrap_or(()),
                None => out.extend_from_slice(b"null"),
            }
        }
        let _ = write!(out, "{{\"order_id\": {}, \"customer_name\": ", self.order_id);
        text(out, &self.customer_name);
        out.extend_from_slice(b", \"restaurant_name\": ");
        text(out, &self.restaurant_name);
        out.extend_from_slice(b", \"item\": ");
        text(out, &self.item);
        out.extend_from_slice(b", \"amount\": ");
        match self.amount {
            Some(a) => {
                let mut a = a;
                a.rescale(AMOUNT_SCALE);
                let _ = write!(out, "{a}");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b", \"order_status\": ");
        text(out, &self.order_status);
        out.extend_from_slice(b", \"created_at\": \"");
        write_utc(out, &self.created_at);
        out.extend_from_slice(b"\"}");
    }

    /// The seed's JSON form as a string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(200);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The same order owning its text.
    pub fn into_owned(self) -> Order<'static> {
        let own = |v: Option<Cow<'_, str>>| v.map(|s| Cow::Owned(s.into_owned()));
        Order {
            order_id: self.order_id,
            customer_name: own(self.customer_name),
            restaurant_name: own(self.restaurant_name),
            item: own(self.item),
            amount: self.amount,
            order_status: own(self.order_status),
            created_at: self.created_at,
        }
    }

    /// `created_at` as microseconds since the Unix epoch (UTC).
    pub fn created_at_micros(&self) -> i64 {
        self.created_at.and_utc().timestamp_micros()
    }

    /// Parses and validates a message value. Valid means: the seed's seven fields are all
    /// present with the right JSON types, `order_id` is not null, `amount` is a number with at
    /// most two decimals that fits `NUMERIC(10,2)` and is > 0, and `created_at` is a timestamp
    /// (with an offset: converted to UTC; without: taken as UTC). Other fields are ignored.
    pub fn parse(value: &[u8]) -> Result<Order<'_>, Reject> {
        // serde would also read a struct from a JSON array; the format is an object.
        if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Reject::new(RejectReason::InvalidJson, "not a JSON object"));
        }
        let wire: Wire<'_> = serde_json::from_slice(value).map_err(|e| {
            Reject::new(RejectReason::InvalidJson, format!("not a JSON object of the order format: {e}"))
        })?;

        let order_id = match wire.order_id {
            None => {
                return Err(Reject::new(RejectReason::NullOrderId, "order_id is missing"));
            }
            Some(raw) if raw.get() == "null" => {
                return Err(Reject::new(RejectReason::NullOrderId, "order_id is null"));
            }
            Some(raw) => serde_json::from_str::<i64>(raw.get()).map_err(|_| {
                Reject::new(
                    RejectReason::WrongType,
                    format!("order_id is not an integer: {}", clip(raw.get())),
                )
            })?,
        };
        let customer_name = text_field("customer_name", wire.customer_name)?;
        let restaurant_name = text_field("restaurant_name", wire.restaurant_name)?;
        let item = text_field("item", wire.item)?;
        let order_status = text_field("order_status", wire.order_status)?;
        let amount = match wire.amount.map(RawValue::get) {
            Some("null") => return Err(Reject::new(RejectReason::NullAmount, "amount is null")),
            _ => parse_amount(required("amount", wire.amount)?)?,
        };
        let created_at = parse_created_at(required("created_at", wire.created_at)?)?;
        Ok(Order {
            order_id,
            customer_name,
            restaurant_name,
            item,
            amount: Some(amount),
            order_status,
            created_at,
        })
    }
}

/// The id and `created_at` of a message, whatever its other fields hold (`None` if it has no
/// usable id or timestamp): enough to place a message the producer wrote.
pub fn parse_position(value: &[u8]) -> Option<Order<'static>> {
    #[derive(Deserialize)]
    struct Key<'a> {
        order_id: i64,
        #[serde(borrow)]
        created_at: &'a RawValue,
    }
    let key: Key<'_> = serde_json::from_slice(value).ok()?;
    let created_at = parse_created_at(key.created_at.get()).ok()?;
    Some(Order {
        order_id: key.order_id,
        customer_name: None,
        restaurant_name: None,
        item: None,
        amount: None,
        order_status: None,
        created_at,
    })
}

/// `2025-01-18T12:24:00Z`, or `2025-01-18T12:24:00.123456Z` when there is a fraction.
pub fn format_utc(ts: &NaiveDateTime) -> String {
    if ts.and_utc().timestamp_subsec_nanos() == 0 {
        ts.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

/// `2025-01-18 12:33:00`, with microseconds when there are any (the seed's format).
pub fn format_ts(ts: &NaiveDateTime) -> String {
    if ts.and_utc().timestamp_subsec_micros() == 0 {
        ts.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        ts.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// Appends [`format_utc`]'s text to `out` without going through a format string (a snapshot
/// writes millions of them; chrono's formatter was 7% of the producer's CPU there).
pub fn write_utc(out: &mut Vec<u8>, ts: &NaiveDateTime) {
    fn digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
        let mut buf = [b'0'; 6];
        for b in buf[..width].iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&buf[..width]);
    }
    let nanos = ts.and_utc().timestamp_subsec_nanos();
    if !(0..=9999).contains(&ts.year()) || nanos >= 1_000_000_000 {
        // Years of other widths and leap seconds: chrono's own spelling.
        out.extend_from_slice(format_utc(ts).as_bytes());
        return;
    }
    digits(out, ts.year() as u32, 4);
    for (sep, n) in
        [(b'-', ts.month()), (b'-', ts.day()), (b'T', ts.hour()), (b':', ts.minute()), (b':', ts.second())]
    {
        out.push(sep);
        digits(out, n, 2);
    }
    if nanos != 0 {
        out.push(b'.');
        digits(out, nanos / 1000, 6);
    }
    out.push(b'Z');
}

/// Why a message is not a valid order; each reason is a label of the rejected counters and the
/// `orderstream.reject.reason` header of the dead-letter copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not JSON, or not an object.
    InvalidJson,
    /// `order_id` missing or null (the seed's first filter).
    NullOrderId,
    /// One of the seed's fields is missing, or `created_at` is null.
    MissingField,
    /// `amount` is present but null (a NULL amount in the table).
    NullAmount,
    /// A field has the wrong JSON type.
    WrongType,
    /// `amount` is zero or negative (the seed's second filter).
    NonPositiveAmount,
    /// `amount` does not fit `NUMERIC(10,2)`.
    AmountOutOfRange,
    /// `created_at` is not a timestamp.
    InvalidCreatedAt,
    /// A change header (`orderstream.op`, `.lsn`, `.change_index`, `.commit_ts`) is malformed.
    InvalidHeader,
}

impl RejectReason {
    /// Every reason, for counters that list all of them.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::InvalidJson,
        RejectReason::NullOrderId,
        RejectReason::MissingField,
        RejectReason::NullAmount,
        RejectReason::WrongType,
        RejectReason::NonPositiveAmount,
        RejectReason::AmountOutOfRange,
        RejectReason::InvalidCreatedAt,
        RejectReason::InvalidHeader,
    ];

    /// The stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NullOrderId => "null_order_id",
            RejectReason::MissingField => "missing_field",
            RejectReason::NullAmount => "null_amount",
            RejectReason::WrongType => "wrong_type",
            RejectReason::NonPositiveAmount => "non_positive_amount",
            RejectReason::AmountOutOfRange => "amount_out_of_range",
            RejectReason::InvalidCreatedAt => "invalid_created_at",
            RejectReason::InvalidHeader => "invalid_header",
        }
    }
}

impl FromStr for RejectReason {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message: the reason and a one-line detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The counter label.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

impl Reject {
    /// A reject for `reason` with a one-line `detail`.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Reject {
        Reject { reason, detail: detail.into() }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The four change columns of a lake row, from the message's change headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// `op`: what the change did.
    pub op: Op,
    /// `lsn`: the commit LSN as a number (logical mode).
    pub lsn: Option<i64>,
    /// `change_index`: the change's position within its transaction (logical mode).
    pub change_index: Option<i32>,
    /// `committed_at`: the commit time in microseconds since the Unix epoch, UTC (logical mode).
    pub committed_at: Option<i64>,
}

impl Default for Change {
    /// A poll-mode row: an insert with no log position.
    fn default() -> Change {
        Change { op: Op::Insert, lsn: None, change_index: None, committed_at: None }
    }
}

impl Change {
    /// The columns of `meta`. An LSN at or above 2^63 does not fit the lake's INT64 `lsn`
    /// (PostgreSQL does not reach it in practice): an [`RejectReason::InvalidHeader`] rather
    /// than a wrapped, misordered number.
    pub fn from_meta(meta: &ChangeMeta) -> Result<Change, Reject> {
        let lsn = match meta.lsn {
            None => None,
            Some(l) => Some(i64::try_from(l.0).map_err(|_| {
                Reject::new(
                    RejectReason::InvalidHeader,
                    format!("header {LSN_HEADER}: {l} is beyond the lake's int64 lsn column"),
                )
            })?),
        };
        Ok(Change {
            op: meta.op,
            lsn,
            change_index: meta.change_index,
            committed_at: meta.commit_ts.map(|t| t.timestamp_micros()),
        })
    }

    /// A truncate (`t`) is a lake row only with its place in the log and its commit time, which
    /// decide which orders it removes and the date it is filed under.
    pub fn check_truncate(&self) -> Result<(), Reject> {
        if self.lsn.is_none() || self.change_index.is_none() || self.committed_at.is_none() {
            return Err(Reject::new(
                RejectReason::InvalidHeader,
                "a truncate (op t) without orderstream.lsn, orderstream.change_index or orderstream.commit_ts",
            ));
        }
        Ok(())
    }

    /// The change columns a message's headers give: `(name, value)` pairs as Kafka clients list
    /// them. A malformed change header is an [`RejectReason::InvalidHeader`] naming it.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Change, Reject> {
        let meta =
            ChangeMeta::from_headers(headers).map_err(|e| Reject::new(RejectReason::InvalidHeader, e))?;
        Change::from_meta(&meta)
    }
}

/// The message as it arrives: each field kept raw, so that a missing key and an explicit
/// `null` can be told apart.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    order_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    customer_name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    restaurant_name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    item: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    amount: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    order_status: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    created_at: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(de).map(Some)
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(60) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn required<'a>(name: &str, raw: Option<&'a RawValue>) -> Result<&'a str, Reject> {
    match raw.map(RawValue::get) {
        None => Err(Reject::new(RejectReason::MissingField, format!("{name} is missing"))),
        Some("null") => Err(Reject::new(RejectReason::MissingField, format!("{name} is null"))),
        Some(s) => Ok(s),
    }
}

fn text_field<'a>(name: &str, raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, Reject> {
    let raw = match raw {
        None => {
            return Err(Reject::new(RejectReason::MissingField, format!("{name} is missing")));
        }
        Some(raw) => raw.get(),
    };
    if raw == "null" {
        return Ok(None);
    }
    if !raw.starts_with('"') {
        return Err(Reject::new(RejectReason::WrongType, format!("{name} is not a string: {}", clip(raw))));
    }
    // Borrow when the string has no escapes; unescape into an owned copy otherwise.
    if let Ok(s) = serde_json::from_str::<&str>(raw) {
        return Ok(Some(Cow::Borrowed(s)));
    }
    serde_json::from_str::<String>(raw)
        .map(|s| Some(Cow::Owned(s)))
        .map_err(|_| Reject::new(RejectReason::WrongType, format!("{name} is not a string: {}", clip(raw))))
}

fn parse_amount(raw: &str) -> Result<Decimal, Reject> {
    let numeric = raw.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if !numeric {
        return Err(Reject::new(RejectReason::WrongType, format!("amount is not a number: {}", clip(raw))));
    }
    let parsed =
        if raw.contains(['e', 'E']) { Decimal::from_scientific(raw) } else { Decimal::from_str_exact(raw) };
    let mut amount = parsed
        .map_err(|_| {
            Reject::new(
                RejectReason::AmountOutOfRange,
                format!("amount {} does not fit NUMERIC(10,2)", clip(raw)),
            )
        })?
        .normalize();
    if amount <= Decimal::ZERO {
        return Err(Reject::new(RejectReason::NonPositiveAmount, format!("amount {} is not > 0", clip(raw))));
    }
    if amount.scale() > AMOUNT_SCALE || amount >= Decimal::from(100_000_000) {
        return Err(Reject::new(
            RejectReason::AmountOutOfRange,
            format!("amount {} does not fit NUMERIC(10,2)", clip(raw)),
        ));
    }
    amount.rescale(AMOUNT_SCALE);
    Ok(amount)
}

fn parse_created_at(raw: &str) -> Result<NaiveDateTime, Reject> {
    let s: &str = serde_json::from_str(raw).map_err(|_| {
        Reject::new(RejectReason::WrongType, format!("created_at is not a string: {}", clip(raw)))
    })?;
    let bad =
        || Reject::new(RejectReason::InvalidCreatedAt, format!("created_at is not a timestamp: {}", clip(s)));
    let ts = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.naive_utc()
    } else {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
            .map_err(|_| bad())?
    };
    // The lake keeps microseconds, as PostgreSQL does.
    let micros = ts.and_utc().timestamp_micros();
    DateTime::from_timestamp_micros(micros).map(|t| t.naive_utc()).ok_or_else(bad)
}

/// The lake's Arrow schema, the columns of [`LAKE_COLUMNS`] (the `date` partition column lives
/// in the folder name, as Spark writes it): order_id INT64, the texts UTF8, amount
/// DECIMAL(10,2), created_at TIMESTAMP(µs, UTC); then op UTF8 (never null), lsn INT64,
/// change_index INT32 and committed_at TIMESTAMP(µs, UTC), null in poll mode. Every column but
/// `op` is nullable: a truncate's row (`t`) has no order, only its log position and commit time.
pub fn arrow_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("order_id", DataType::Int64, true),
                Field::new("customer_name", DataType::Utf8, true),
                Field::new("restaurant_name", DataType::Utf8, true),
                Field::new("item", DataType::Utf8, true),
                Field::new("amount", DataType::Decimal128(AMOUNT_PRECISION, AMOUNT_SCALE as i8), true),
                Field::new("order_status", DataType::Utf8, true),
                Field::new("created_at", utc_micros(), true),
                Field::new("op", DataType::Utf8, false),
                Field::new("lsn", DataType::Int64, true),
                Field::new("change_index", DataType::Int32, true),
                Field::new("committed_at", utc_micros(), true),
            ]))
        })
        .clone()
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

#[cfg(test)]
mod tests;
