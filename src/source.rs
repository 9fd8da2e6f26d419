//! How changes leave PostgreSQL. A [`Source`] turns "everything after this position" into a
//! batch of changes in a deterministic order and the position after them; the producer does
//! not care how. [`logical`] reads the write-ahead log through logical replication (inserts,
//! updates and deletes; the default); [`poll`] is the seed's timestamp polling, made lossless.

pub mod ids;
pub mod logical;
pub mod poll;
pub mod table;

use std::future::Future;
use std::hash::Hash;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::order::Order;
use crate::wire::{ChangeMeta, Lsn, Op};
pub use crate::wire::{SEQ_HEADER, SOURCE_HEADER};

/// One captured change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The order after the change (before it, for a delete).
    pub order: Order<'static>,
    /// What happened to the row.
    pub op: Op,
    /// Commit LSN of the transaction and the change's index within it (logical mode).
    pub at: Option<(Lsn, i32)>,
    /// Commit time of the transaction (logical mode).
    pub commit_ts: Option<DateTime<Utc>>,
    /// Why the row cannot become an order message; it is published as a dead letter instead,
    /// and `order` holds its key and what could be read (`created_at` a placeholder).
    pub reject: Option<Box<Unencodable>>,
}

/// A row no order message can carry: a `created_at` that is NULL, `infinity`, `-infinity`, BC
/// or beyond the year 9999 (RFC 3339 has no such time, and the consumer would reject the
/// message), or an `amount` no decimal of the message holds (a widened column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unencodable {
    /// One line: the order and what is wrong with it.
    pub detail: String,
    /// The row as JSON, every column as read (`created_at` as PostgreSQL writes it).
    pub row: String,
}

impl Unencodable {
    /// The reject of `order`, whose `created_at` was `raw` (`None`: NULL).
    pub fn created_at(order: &Order<'_>, raw: Option<&str>) -> Box<Unencodable> {
        let detail = match raw {
            None => format!("order {}: created_at is NULL", order.order_id),
            Some(r) => {
                format!("order {}: created_at `{r}` is not a time a message can carry", order.order_id)
            }
        };
        let amount = order.amount.map(|a| a.to_string());
        Box::new(Unencodable { detail, row: row_json(order, amount.as_deref(), raw) })
    }

    /// The reject of `order`, whose `amount` was `raw` and `created_at` `created_at` (as
    /// PostgreSQL writes them).
    pub fn amount(order: &Order<'_>, raw: &str, created_at: Option<&str>) -> Box<Unencodable> {
        let detail = format!("order {}: amount `{raw}` is not a number a message can carry", order.order_id);
        Box::new(Unencodable { detail, row: row_json(order, Some(raw), created_at) })
    }
}

/// The row as JSON with `amount` and `created_at` as PostgreSQL wrote them.
fn row_json(order: &Order<'_>, amount: Option<&str>, created_at: Option<&str>) -> String {
    serde_json::json!({
        "order_id": order.order_id,
        "customer_name": order.customer_name,
        "restaurant_name": order.restaurant_name,
        "item": order.item,
        "amount": amount,
        "order_status": order.order_status,
        "created_at": created_at,
    })
    .to_string()
}

impl Change {
    /// An insert seen by polling: no log position.
    pub fn polled(order: Order<'static>) -> Change {
        Change { order, op: Op::Insert, at: None, commit_ts: None, reject: None }
    }

    /// A truncate of the table at `at`, committed at `commit_ts` (`order` is a placeholder:
    /// the change has no row).
    pub fn truncate(at: (Lsn, i32), commit_ts: DateTime<Utc>) -> Change {
        let order = Order {
            order_id: 0,
            customer_name: None,
            restaurant_name: None,
            item: None,
            amount: None,
            order_status: None,
            created_at: Default::default(),
        };
        Change { order, op: Op::Truncate, at: Some(at), commit_ts: Some(commit_ts), reject: None }
    }

    /// The headers the change's message carries (`tombstone`: the tombstone after a delete).
    pub fn meta(&self, tombstone: bool) -> ChangeMeta {
        ChangeMeta {
            op: self.op,
            lsn: self.at.map(|a| a.0),
            change_index: self.at.map(|a| a.1),
            commit_ts: self.commit_ts,
            tombstone,
        }
    }

    /// Whether a tombstone follows the change's message (a delete read from the log).
    pub fn has_tombstone(&self) -> bool {
        self.op == Op::Delete
    }
}

/// What one poll returned.
#[derive(Debug, Clone)]
pub struct Batch<P> {
    /// The changes, in the order they must be published.
    pub changes: Vec<Change>,
    /// The position once every change of this batch is published.
    pub position: P,
}

/// A change-data-capture source.
pub trait Source {
    /// Where capture stands; persisted in the producer's state file.
    type Position: Clone + PartialEq + std::fmt::Debug + Send + Sync;
    /// What identifies one message of this source, so that recovery can tell which messages of
    /// an unsaved batch are already in the topic.
    type Key: Clone + Eq + Hash + std::fmt::Debug + Send + Sync;

    /// Whether `poll` waits for changes itself (a stream); a source that does not is polled
    /// once per `batch_interval`.
    const STREAMING: bool;

    /// The lineage written in [`SOURCE_HEADER`].
    fn name(&self) -> String;

    /// The changes after `position`, at most about `limit` of them, and the position after them.
    /// Calling it again with the same position may return more (changes committed since), never
    /// fewer, except rows deleted meanwhile.
    fn poll(
        &mut self,
        position: &Self::Position,
        limit: usize,
    ) -> impl Future<Output = Result<Batch<Self::Position>>> + Send;

    /// The identity of the message `change` produces (or of the tombstone after it).
    fn key(change: &Change, tombstone: bool) -> Self::Key;

    /// The identity of a message of this source found in the topic (`None`: not one of ours).
    fn key_of(meta: &ChangeMeta, order: Option<&Order<'_>>) -> Option<Self::Key>;

    /// Whether polling on from `position` will not produce the message `key` again (it lies at
    /// or before `position`). Recovery skips exactly the found messages that are not covered,
    /// so an answer of "covered" for a message the source reads again publishes it twice.
    fn covers(position: &Self::Position, key: &Self::Key) -> bool;

    /// Called once the state file holding `position` is saved: a log-based source lets the
    /// server forget what it covers.
    fn saved(&mut self, _position: &Self::Position) {}

    /// Called after recovery with the highest log position found in the topic beyond the saved
    /// state, so positions handed out later stay above it, and whether the topic holds
    /// messages of this source from an earlier producer state (`earlier`): a capture whose
    /// state was removed, which a new snapshot must replace.
    fn recovered(&mut self, _highest: Option<(Lsn, i32)>, _earlier: bool) {}

    /// The position as lines of the state file; the first line is the seed's human-readable
    /// `last_timestamp.txt` content.
    fn encode(position: &Self::Position) -> Vec<String>;

    /// Reads the lines written by [`Source::encode`] (or the seed's one-line file).
    fn decode(lines: &[&str]) -> std::result::Result<Self::Position, String>;

    /// The position before anything was captured.
    fn beginning() -> Self::Position;
}
