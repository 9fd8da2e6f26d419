//! How changes leave PostgreSQL. A [`Source`] turns "everything after this position" into a
//! batch of changes in a deterministic order and the position after them; the producer does
//! not care how. [`poll`] is the seed's timestamp polling, made lossless; a log-based source
//! (logical replication, carrying updates and deletes) implements the same trait.

pub mod poll;

use std::future::Future;

use crate::error::Result;
use crate::order::Order;

pub use crate::wire::{SEQ_HEADER, SOURCE_HEADER};

/// One captured change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The order as it is now.
    pub order: Order<'static>,
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

    /// Whether `order`, found in the topic, lies at or before `position` (so a batch polled from
    /// before it has been passed).
    fn covers(position: &Self::Position, order: &Order<'_>) -> bool;

    /// The position as lines of the state file; the first line is the seed's human-readable
    /// `last_timestamp.txt` content.
    fn encode(position: &Self::Position) -> Vec<String>;

    /// Reads the lines written by [`Source::encode`] (or the seed's one-line file).
    fn decode(lines: &[&str]) -> std::result::Result<Self::Position, String>;

    /// The position before anything was captured.
    fn beginning() -> Self::Position;
}
