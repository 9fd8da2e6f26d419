//! A decoder of the `pgoutput` messages that carry rows (protocol version 1, text format):
//! Relation, Insert, Update, Delete and Truncate, as documented in PostgreSQL's "Logical
//! Replication Message Formats". Begin, Commit and logical decoding messages are parsed by the
//! transport (`pgwire-replication`); Type and Origin carry nothing we need.
//!
//! Rows are turned into [`Order`]s by column *name*, so a column added to the table is ignored;
//! a seed column dropped or given another type is an error naming it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;

use chrono::{Datelike, NaiveDateTime};
use rust_decimal::Decimal;

use crate::order::{AMOUNT_SCALE, COLUMNS, Order};
use crate::source::Unencodable;

/// PostgreSQL type OIDs the orders table may use.
mod oid {
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const NUMERIC: u32 = 1700;
    pub const TIMESTAMP: u32 = 1114;
    pub const TEXT: u32 = 25;
    pub const VARCHAR: u32 = 1043;
    pub const BPCHAR: u32 = 1042;
    pub const NAME: u32 = 19;
}

/// One decoded message that matters to capture.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// A table's description (sent before its first change and after every schema change).
    Relation(Relation),
    /// A row was inserted.
    Insert {
        /// The table's relation id.
        rel: u32,
        /// The new row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// The table's relation id.
        rel: u32,
        /// The old row: present with `REPLICA IDENTITY FULL` (or a key change).
        old: Option<Tuple>,
        /// The new row.
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// The table's relation id.
        rel: u32,
        /// The whole old row with `REPLICA IDENTITY FULL`, else its key.
        old: Tuple,
    },
    /// Tables were truncated.
    Truncate {
        /// The relation ids of the truncated tables.
        rels: Vec<u32>,
    },
    /// Anything else (Type, Origin, …).
    Other(u8),
}

/// A table's description.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// The relation's OID.
    pub id: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Columns in table order: name and type OID.
    pub columns: Vec<(String, u32)>,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that the message does not repeat.
    Unchanged,
    /// The value in PostgreSQL's text output form.
    Text(String),
}

/// A row: one value per column of its relation.
pub type Tuple = Vec<Value>;

/// Decodes one XLogData payload.
pub fn decode(data: &[u8]) -> Result<Message, String> {
    let mut r = Reader { data, at: 0 };
    let tag = r.u8()?;
    let msg = match tag {
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let _identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let _flags = r.u8()?;
                let col = r.cstr()?;
                let ty = r.u32()?;
                let _typmod = r.i32()?;
                columns.push((col, ty));
            }
            Message::Relation(Relation { id, namespace, name, columns })
        }
        b'I' => {
            let rel = r.u32()?;
            r.expect(b'N')?;
            Message::Insert { rel, new: r.tuple()? }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(format!("Update: expected N, got byte {kind}"));
            }
            Message::Update { rel, old, new: r.tuple()? }
        }
        b'D' => {
            let rel = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(format!("Delete: expected K or O, got byte {kind}"));
            }
            Message::Delete { rel, old: r.tuple()? }
        }
        b'T' => {
            let n = r.i32()?;
            let _options = r.u8()?;
            let mut rels = Vec::with_capacity(n.clamp(0, 1024) as usize);
            for _ in 0..n {
                rels.push(r.u32()?);
            }
            Message::Truncate { rels }
        }
        other => Message::Other(other),
    };
    Ok(msg)
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        let end = end.ok_or_else(|| format!("message truncated at byte {}", self.at))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn expect(&mut self, want: u8) -> Result<(), String> {
        match self.u8()? {
            b if b == want => Ok(()),
            b => Err(format!("expected {}, got byte {b}", want as char)),
        }
    }
    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(self.i32()? as u32)
    }
    fn cstr(&mut self) -> Result<String, String> {
        let rest = &self.data[self.at..];
        let end = rest.iter().position(|b| *b == 0).ok_or("string without terminator")?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Tuple, String> {
        let n = self.i16()?;
        let mut values = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let v = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    let len = usize::try_from(len).map_err(|_| format!("negative length {len}"))?;
                    let bytes = self.take(len)?;
                    Value::Text(String::from_utf8(bytes.to_vec()).map_err(|_| "a text value is not UTF-8")?)
                }
                b'b' => return Err("binary column values are not expected (text protocol)".into()),
                other => return Err(format!("unknown column kind byte {other}")),
            };
            values.push(v);
        }
        Ok(values)
    }
}

/// Where each seed column sits in a relation, checked once per Relation message.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Index in the tuple of each of [`COLUMNS`].
    index: [usize; 7],
}

impl Layout {
    /// Maps the seed's columns; a missing column or an unexpected type is an error naming it.
    pub fn of(rel: &Relation) -> Result<Layout, String> {
        let by_name: HashMap<&str, (usize, u32)> =
            rel.columns.iter().enumerate().map(|(i, (n, t))| (n.as_str(), (i, *t))).collect();
        let mut index = [0; 7];
        for (slot, column) in COLUMNS.iter().enumerate() {
            let Some((i, ty)) = by_name.get(column) else {
                return Err(format!("column {column} is gone from table {}.{}", rel.namespace, rel.name));
            };
            let ok = match *column {
                "order_id" => matches!(*ty, oid::INT2 | oid::INT4 | oid::INT8),
                "amount" => *ty == oid::NUMERIC,
                "created_at" => *ty == oid::TIMESTAMP,
                _ => matches!(*ty, oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME),
            };
            if !ok {
                return Err(format!(
                    "column {column} of table {}.{} changed its type (type oid {ty})",
                    rel.namespace, rel.name
                ));
            }
            index[slot] = *i;
        }
        Ok(Layout { index })
    }

    /// The order in `tuple`, and its reject when no message can carry it (see
    /// [`Unencodable`]); `fallback` supplies values the tuple marks unchanged (the old row of an
    /// update).
    pub fn order(
        &self,
        mut tuple: Tuple,
        fallback: Option<&Tuple>,
    ) -> Result<(Order<'static>, Option<Box<Unencodable>>), String> {
        // Unchanged (TOASTed) values come from the old row.
        for &i in &self.index {
            if matches!(tuple.get(i), Some(Value::Unchanged))
                && let Some(v) = fallback.and_then(|f| f.get(i))
            {
                tuple[i] = v.clone();
            }
        }
        let value = |slot: usize| -> Result<Option<&str>, String> {
            match tuple.get(self.index[slot]) {
                Some(Value::Null) => Ok(None),
                Some(Value::Text(s)) => Ok(Some(s.as_str())),
                Some(Value::Unchanged) => Err(format!("column {} unchanged but not sent", COLUMNS[slot])),
                None => Err(format!("row has no column {}", COLUMNS[slot])),
            }
        };
        let order_id = value(0)?
            .ok_or("order_id is NULL")?
            .parse::<i64>()
            .map_err(|_| "order_id is not an integer".to_string())?;
        // A value no message can carry makes the change a reject, not a stop: `None` here.
        let raw_amount = value(4)?.map(str::to_string);
        let amount = match raw_amount.as_deref() {
            None => Ok(None),
            // JSON has no NaN: as `null` the consumer could not tell it from a NULL amount.
            Some("NaN") => Err(()),
            Some(s) => Decimal::from_str(s)
                .map(|mut d| {
                    d.rescale(AMOUNT_SCALE);
                    Some(d)
                })
                .map_err(|_| ()),
        };
        // NULL, `infinity`, `-infinity`, BC, beyond 9999: no message can carry it.
        let raw_created_at = value(6)?.map(str::to_string);
        let created_at = raw_created_at.as_deref().and_then(parse_timestamp);
        // The texts move out of the tuple: no copy per column.
        let mut text = |slot: usize| -> Result<Option<Cow<'static, str>>, String> {
            match tuple.get_mut(self.index[slot]).map(|v| std::mem::replace(v, Value::Null)) {
                Some(Value::Text(s)) => Ok(Some(Cow::Owned(s))),
                Some(Value::Null) => Ok(None),
                Some(Value::Unchanged) => Err(format!("column {} unchanged but not sent", COLUMNS[slot])),
                None => Err(format!("row has no column {}", COLUMNS[slot])),
            }
        };
        let order = Order {
            order_id,
            customer_name: text(1)?,
            restaurant_name: text(2)?,
            item: text(3)?,
            amount: amount.as_ref().ok().copied().flatten(),
            order_status: text(5)?,
            created_at: created_at.unwrap_or_default(),
        };
        let reject = match (amount.is_ok(), created_at) {
            (false, _) => Some(Unencodable::amount(
                &order,
                raw_amount.as_deref().unwrap_or_default(),
                raw_created_at.as_deref(),
            )),
            (true, None) => Some(Unencodable::created_at(&order, raw_created_at.as_deref())),
            (true, Some(_)) => None,
        };
        Ok((order, reject))
    }
}

/// A `timestamp` in PostgreSQL's ISO output (`2025-01-18 12:24:00[.fraction]`, `DateStyle`
/// pinned to ISO on the replication connection) of the years 1 to 9999, the ones RFC 3339 and
/// the message's `created_at` can carry; `None` for any other (BC times end in ` BC`).
fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok().filter(|t| (1..=9999).contains(&t.year()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<&str>]) {
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("\u{0}unchanged") => out.push(b'u'),
                Some(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    fn relation(extra: Option<(&str, u32)>, amount_type: u32) -> Vec<u8> {
        let mut cols = vec![
            ("order_id", oid::INT4),
            ("customer_name", oid::VARCHAR),
            ("restaurant_name", oid::VARCHAR),
            ("item", oid::VARCHAR),
            ("amount", amount_type),
            ("order_status", oid::VARCHAR),
            ("created_at", oid::TIMESTAMP),
        ];
        if let Some(e) = extra {
            cols.insert(2, e);
        }
        let mut out = vec![b'R'];
        out.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut out, "public");
        cstr(&mut out, "roll001_orders");
        out.push(b'f');
        out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (name, ty) in cols {
            out.push(0);
            cstr(&mut out, name);
            out.extend_from_slice(&ty.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        out
    }

    const ROW: [Option<&str>; 7] = [
        Some("101"),
        Some("John Doe"),
        Some("Burger Junction"),
        Some("Veg Burger"),
        Some("220.00"),
        Some("PLACED"),
        Some("2025-01-18 12:24:00"),
    ];

    // Over 80 lines: the three row messages decoded against one relation, case by case.
    #[test]
    fn insert_update_delete_decode_to_orders() {
        let Message::Relation(rel) = decode(&relation(None, oid::NUMERIC)).unwrap() else { panic!() };
        let layout = Layout::of(&rel).unwrap();

        let mut ins = vec![b'I'];
        ins.extend_from_slice(&16384u32.to_be_bytes());
        ins.push(b'N');
        tuple(&mut ins, &ROW);
        let Message::Insert { rel: 16384, new } = decode(&ins).unwrap() else { panic!() };
        let (order, reject) = layout.order(new, None).unwrap();
        assert_eq!(reject, None);
        assert_eq!(
            order.to_json(),
            r#"{"order_id": 101, "customer_name": "John Doe", "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": 220.00, "order_status": "PLACED", "created_at": "2025-01-18T12:24:00Z"}"#
        );

        let mut upd = vec![b'U'];
        upd.extend_from_slice(&16384u32.to_be_bytes());
        upd.push(b'O');
        tuple(&mut upd, &ROW);
        upd.push(b'N');
        let mut new_row = ROW;
        new_row[3] = Some("\u{0}unchanged");
        new_row[5] = Some("DELIVERED");
        tuple(&mut upd, &new_row);
        let Message::Update { old: Some(old), new, .. } = decode(&upd).unwrap() else { panic!() };
        let (order, _) = layout.order(new.clone(), Some(&old)).unwrap();
        assert_eq!(order.order_status.as_deref(), Some("DELIVERED"));
        assert_eq!(order.item.as_deref(), Some("Veg Burger"));
        assert!(layout.order(new, None).unwrap_err().contains("item unchanged"));

        let mut del = vec![b'D'];
        del.extend_from_slice(&16384u32.to_be_bytes());
        del.push(b'O');
        let mut old_row = ROW;
        old_row[1] = None;
        old_row[4] = Some("NaN");
        tuple(&mut del, &old_row);
        let Message::Delete { old, .. } = decode(&del).unwrap() else { panic!() };
        let (order, reject) = layout.order(old, None).unwrap();
        assert_eq!((order.customer_name, order.amount), (None, None));
        assert_eq!(reject.unwrap().detail, "order 101: amount `NaN` is not a number a message can carry");

        // A created_at no message can carry makes the change a reject, with the row as read.
        for (raw, detail) in [
            (Some("infinity"), "order 101: created_at `infinity` is not a time a message can carry"),
            (Some("-infinity"), "order 101: created_at `-infinity` is not a time a message can carry"),
            (None, "order 101: created_at is NULL"),
            (
                Some("12345-06-07 00:00:00"),
                "order 101: created_at `12345-06-07 00:00:00` is not a time a message can carry",
            ),
            (
                Some("0044-03-15 12:00:00 BC"),
                "order 101: created_at `0044-03-15 12:00:00 BC` is not a time a message can carry",
            ),
            (
                Some("0001-01-01 00:00:00 BC"),
                "order 101: created_at `0001-01-01 00:00:00 BC` is not a time a message can carry",
            ),
        ] {
            let mut row = ROW;
            row[6] = raw;
            let mut ins = vec![b'I'];
            ins.extend_from_slice(&16384u32.to_be_bytes());
            ins.push(b'N');
            tuple(&mut ins, &row);
            let Message::Insert { new, .. } = decode(&ins).unwrap() else { panic!() };
            let (order, reject) = layout.order(new, None).unwrap();
            let reject = reject.expect("a reject");
            assert_eq!((order.order_id, reject.detail.as_str()), (101, detail));
            let row: serde_json::Value = serde_json::from_str(&reject.row).unwrap();
            assert_eq!((row["item"].as_str(), row["created_at"].as_str()), (Some("Veg Burger"), raw));
        }

        // The edges of what a message carries still land.
        for raw in ["0001-01-01 00:00:00", "9999-12-31 23:59:59.999999"] {
            let mut row = ROW;
            row[6] = Some(raw);
            let mut ins = vec![b'I'];
            ins.extend_from_slice(&16384u32.to_be_bytes());
            ins.push(b'N');
            tuple(&mut ins, &row);
            let Message::Insert { new, .. } = decode(&ins).unwrap() else { panic!() };
            assert_eq!(layout.order(new, None).unwrap().1, None, "{raw}");
        }
        // An amount no decimal holds (a widened column) is a reject too, with the value as read.
        let mut row = ROW;
        row[4] = Some("123456789012345678901234567890123.5");
        let mut ins = vec![b'I'];
        ins.extend_from_slice(&16384u32.to_be_bytes());
        ins.push(b'N');
        tuple(&mut ins, &row);
        let Message::Insert { new, .. } = decode(&ins).unwrap() else { panic!() };
        let reject = layout.order(new, None).unwrap().1.expect("a reject");
        assert_eq!(
            reject.detail,
            "order 101: amount `123456789012345678901234567890123.5` is not a number a message can carry"
        );
        let row: serde_json::Value = serde_json::from_str(&reject.row).unwrap();
        assert_eq!(row["amount"].as_str(), Some("123456789012345678901234567890123.5"));

        let mut tr = vec![b'T'];
        tr.extend_from_slice(&1i32.to_be_bytes());
        tr.push(0);
        tr.extend_from_slice(&16384u32.to_be_bytes());
        assert_eq!(decode(&tr).unwrap(), Message::Truncate { rels: vec![16384] });
        assert_eq!(decode(b"Yxyz").unwrap(), Message::Other(b'Y'));
    }

    #[test]
    fn added_columns_are_ignored_and_changed_ones_named() {
        let Message::Relation(rel) = decode(&relation(Some(("tip", oid::NUMERIC)), oid::NUMERIC)).unwrap()
        else {
            panic!()
        };
        let layout = Layout::of(&rel).unwrap();
        let mut row: Tuple = ROW.iter().map(|v| Value::Text(v.unwrap_or_default().to_string())).collect();
        row.insert(2, Value::Text("5.00".into()));
        assert_eq!(layout.order(row, None).unwrap().0.order_id, 101);

        let Message::Relation(rel) = decode(&relation(None, oid::TEXT)).unwrap() else { panic!() };
        assert!(
            Layout::of(&rel).unwrap_err().starts_with("column amount of table public.roll001_orders changed")
        );
        let mut rel = rel;
        rel.columns.remove(4);
        assert_eq!(Layout::of(&rel).unwrap_err(), "column amount is gone from table public.roll001_orders");
    }

    #[test]
    fn truncated_messages_are_errors() {
        let ins = relation(None, oid::NUMERIC);
        for cut in [1, 5, 12, ins.len() - 1] {
            assert!(decode(&ins[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"I\0\0\0\x01Nzz").is_err());
    }
}
