//! The rows of one micro-batch, in Arrow builders per date (the UTC day of `created_at`, the
//! lake's partition): one Parquet file per date per batch.

use std::sync::Arc;

use arrow_array::builder::{
    Decimal128Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use chrono::DateTime;

use crate::error::{Error, Result};
use crate::order::{AMOUNT_SCALE, Change, Order, arrow_schema};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// At most this many dates (files) in one batch: a stream of scattered dates closes batches
/// early instead of holding thousands of builders and writing thousands of tiny files at once.
pub const MAX_DATES: usize = 64;

/// One date's rows of a batch, with the Kafka partition and offset of each row.
pub struct DateBatch {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The rows, in the lake's columns.
    pub rows: RecordBatch,
    /// Row `i` came from message `sources[i]` (partition, offset).
    pub sources: Vec<(i32, i64)>,
}

/// The columns of one date.
struct DateRows {
    day: i64,
    sources: Vec<(i32, i64)>,
    order_id: Int64Builder,
    customer_name: StringBuilder,
    restaurant_name: StringBuilder,
    item: StringBuilder,
    amount: Decimal128Builder,
    order_status: StringBuilder,
    created_at: TimestampMicrosecondBuilder,
    op: StringBuilder,
    lsn: Int64Builder,
    change_index: Int32Builder,
    committed_at: TimestampMicrosecondBuilder,
}

impl DateRows {
    fn new(day: i64) -> DateRows {
        let schema = arrow_schema();
        DateRows {
            day,
            sources: Vec::new(),
            order_id: Int64Builder::new(),
            customer_name: StringBuilder::new(),
            restaurant_name: StringBuilder::new(),
            item: StringBuilder::new(),
            amount: Decimal128Builder::new().with_data_type(schema.field(4).data_type().clone()),
            order_status: StringBuilder::new(),
            created_at: TimestampMicrosecondBuilder::new()
                .with_data_type(schema.field(6).data_type().clone()),
            op: StringBuilder::new(),
            lsn: Int64Builder::new(),
            change_index: Int32Builder::new(),
            committed_at: TimestampMicrosecondBuilder::new()
                .with_data_type(schema.field(10).data_type().clone()),
        }
    }

    /// A truncate's row: no order, only the change columns.
    fn push_truncate(&mut self, change: &Change) {
        self.order_id.append_null();
        self.customer_name.append_null();
        self.restaurant_name.append_null();
        self.item.append_null();
        self.amount.append_null();
        self.order_status.append_null();
        self.created_at.append_null();
        self.push_change(change);
    }

    fn push_change(&mut self, change: &Change) {
        self.op.append_value(change.op.as_str());
        self.lsn.append_option(change.lsn);
        self.change_index.append_option(change.change_index);
        self.committed_at.append_option(change.committed_at);
    }

    fn push(&mut self, o: &Order<'_>, change: &Change, micros: i64) {
        self.order_id.append_value(o.order_id);
        self.customer_name.append_option(o.customer_name.as_deref());
        self.restaurant_name.append_option(o.restaurant_name.as_deref());
        self.item.append_option(o.item.as_deref());
        match o.amount {
            Some(mut a) => {
                if a.scale() != AMOUNT_SCALE {
                    a.rescale(AMOUNT_SCALE);
                }
                self.amount.append_value(a.mantissa());
            }
            // Never for a parsed message (amount is required); kept total for safety.
            None => self.amount.append_null(),
        }
        self.order_status.append_option(o.order_status.as_deref());
        self.created_at.append_value(micros);
        self.push_change(change);
    }

    fn finish(mut self) -> Result<DateBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.order_id.finish()),
            Arc::new(self.customer_name.finish()),
            Arc::new(self.restaurant_name.finish()),
            Arc::new(self.item.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.order_status.finish()),
            Arc::new(self.created_at.finish()),
            Arc::new(self.op.finish()),
            Arc::new(self.lsn.finish()),
            Arc::new(self.change_index.finish()),
            Arc::new(self.committed_at.finish()),
        ];
        let batch = RecordBatch::try_new(arrow_schema(), columns)
            .map_err(|e| Error::Storage(format!("cannot assemble the rows of one batch: {e}")))?;
        Ok(DateBatch { date: date_of_day(self.day), rows: batch, sources: self.sources })
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn date_of_day(day: i64) -> String {
    match DateTime::from_timestamp(day.saturating_mul(86_400), 0) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        // Unreachable for a parsed created_at (chrono's own range); a name that sorts last.
        None => format!("day{day}"),
    }
}

/// The valid rows of the in-flight batch, by date.
#[derive(Default)]
pub struct Rows {
    dates: Vec<DateRows>,
    last: usize,
    rows: usize,
}

impl Rows {
    /// Appends one valid order, and the change that produced it, to its date's columns; `None`:
    /// the row of a truncate, filed under the date of its commit. `source`: the message's
    /// partition and offset.
    pub fn push(&mut self, o: Option<&Order<'_>>, change: &Change, source: (i32, i64)) {
        let micros = match o {
            Some(o) => o.created_at_micros(),
            None => change.committed_at.unwrap_or_default(),
        };
        let day = micros.div_euclid(MICROS_PER_DAY);
        // Orders arrive mostly in time order: the last date used is almost always the one.
        let i = match self.dates.get(self.last) {
            Some(d) if d.day == day => self.last,
            _ => match self.dates.iter().position(|d| d.day == day) {
                Some(i) => i,
                None => {
                    self.dates.push(DateRows::new(day));
                    self.dates.len() - 1
                }
            },
        };
        self.last = i;
        self.dates[i].sources.push(source);
        match o {
            Some(o) => self.dates[i].push(o, change, micros),
            None => self.dates[i].push_truncate(change),
        }
        self.rows += 1;
    }

    /// Valid rows held.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Distinct dates held (files the batch will write).
    pub fn dates(&self) -> usize {
        self.dates.len()
    }

    /// The rows as one Arrow batch per date (`YYYY-MM-DD`), leaving this empty.
    pub fn finish(&mut self) -> Result<Vec<(String, RecordBatch)>> {
        Ok(self.finish_sourced()?.into_iter().map(|d| (d.date, d.rows)).collect())
    }

    /// As [`Rows::finish`], with each row's partition and offset.
    pub fn finish_sourced(&mut self) -> Result<Vec<DateBatch>> {
        self.rows = 0;
        self.last = 0;
        std::mem::take(&mut self.dates).into_iter().map(DateRows::finish).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_by_utc_day() {
        let mut rows = Rows::default();
        for (id, ts) in [
            (1, "2025-01-18T23:30:00-05:00"),
            (2, "2025-01-18T12:00:00Z"),
            (3, "2025-01-19T00:30:00+01:00"),
            (4, "1969-12-31T23:59:59.999999Z"),
        ] {
            let json = format!(
                r#"{{"order_id": {id}, "customer_name": "a", "restaurant_name": null, "item": "i", "amount": 1.5, "order_status": "PLACED", "created_at": "{ts}"}}"#
            );
            let o = Order::parse(json.as_bytes()).unwrap_or_else(|r| panic!("{r}"));
            rows.push(Some(&o), &Change::default(), (0, 0));
        }
        assert_eq!((rows.len(), rows.dates()), (4, 3));
        let out = rows.finish().unwrap();
        let summary: Vec<(String, usize)> = out.iter().map(|(d, b)| (d.clone(), b.num_rows())).collect();
        assert_eq!(
            summary,
            [("2025-01-19".to_string(), 1), ("2025-01-18".to_string(), 2), ("1969-12-31".to_string(), 1)]
        );
        assert_eq!((rows.len(), rows.dates()), (0, 0));
        let amounts = out[1].1.column(4).as_any().downcast_ref::<arrow_array::Decimal128Array>().unwrap();
        assert_eq!(amounts.value_as_string(0), "1.50");
    }

    #[test]
    fn the_change_columns_follow_the_seven_and_poll_rows_leave_three_null() {
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};

        use crate::wire::Op;

        let json = |id: i64| {
            format!(
                r#"{{"order_id": {id}, "customer_name": "a", "restaurant_name": "r", "item": "i", "amount": 2, "order_status": "PLACED", "created_at": "2025-01-18T12:00:00Z"}}"#
            )
        };
        let changes = [
            Change {
                op: Op::Update,
                lsn: Some(0x16B_3748),
                change_index: Some(3),
                committed_at: Some(1_764_136_800_000_001),
            },
            Change::default(),
            Change { op: Op::Delete, lsn: Some(i64::MAX), change_index: Some(0), committed_at: Some(0) },
        ];
        let mut rows = Rows::default();
        for (id, change) in changes.iter().enumerate() {
            let text = json(id as i64);
            let o = Order::parse(text.as_bytes()).unwrap_or_else(|r| panic!("{r}"));
            rows.push(Some(&o), change, (0, id as i64));
        }
        let out = rows.finish().unwrap();
        assert_eq!(out.len(), 1);
        let batch = &out[0].1;
        assert_eq!(batch.schema(), arrow_schema());
        assert_eq!((batch.num_columns(), batch.num_rows()), (11, 3));
        let ids: Vec<i64> = batch.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, [0, 1, 2]);
        let op: Vec<Option<&str>> = batch.column(7).as_string::<i32>().iter().collect();
        assert_eq!(op, [Some("u"), Some("c"), Some("d")]);
        let lsn: Vec<Option<i64>> = batch.column(8).as_primitive::<Int64Type>().iter().collect();
        assert_eq!(lsn, [Some(0x16B_3748), None, Some(i64::MAX)]);
        let index: Vec<Option<i32>> = batch.column(9).as_primitive::<Int32Type>().iter().collect();
        assert_eq!(index, [Some(3), None, Some(0)]);
        let committed = batch.column(10).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(committed.iter().collect::<Vec<_>>(), [Some(1_764_136_800_000_001), None, Some(0)]);
        assert_eq!(committed.timezone(), Some("UTC"));
    }

    #[test]
    fn a_truncate_is_a_row_of_nulls_with_its_position_under_its_commit_date() {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;

        use crate::wire::Op;

        let mut rows = Rows::default();
        // 2025-11-26T06:00:00Z
        let change = Change {
            op: Op::Truncate,
            lsn: Some(7),
            change_index: Some(2),
            committed_at: Some(1_764_136_800_000_000),
        };
        rows.push(None, &change, (0, 0));
        let out = rows.finish().unwrap();
        assert_eq!(out[0].0, "2025-11-26");
        let batch = &out[0].1;
        assert_eq!(batch.num_rows(), 1);
        for c in 0..7 {
            assert!(batch.column(c).is_null(0), "column {c}");
        }
        assert_eq!(batch.column(7).as_string::<i32>().value(0), "t");
        assert!(!batch.column(8).is_null(0) && !batch.column(10).is_null(0));
    }
}
