//! `orderstream produce`: every `batch_interval`, publish the orders added since the last poll,
//! one message per order, keyed by `order_id`, to `kafka.topic`, exactly once.
//!
//! # Why exactly once, without Kafka transactions
//!
//! Transactions would make "publish the batch and save the position" atomic, but the local
//! broker cannot do them correctly, so this design holds on any broker:
//!
//! * **Idempotent, gapless producer.** Within a partition, messages land once each and in the
//!   order they were sent; any failure that could leave a hole is fatal to that producer
//!   instance (`enable.gapless.guarantee`), and by default messages never time out locally
//!   (a `message.timeout.ms` of the user's is safe too: a message that times out fails its
//!   batch, and the next instance recovers from what the topic holds).
//! * **The position is saved only after the broker acknowledged the whole batch** (state file:
//!   watermark, last sequence number, and per partition the offset after the batch). So what
//!   the state file says is published is in the topic.
//! * **Every message names its source, the epoch of its numbering and carries a sequence
//!   number** (headers `orderstream.source`, `orderstream.epoch`, `orderstream.seq`). The epoch
//!   is minted with the state file ([`state`]): a producer that lost its state numbers a new
//!   lineage, which the consumer never compares with the old one.
//! * **On every start (and after any failure) the producer reads, partition by partition, what
//!   the topic holds after the saved offsets**: exactly the messages of the batch that was
//!   published but not saved. A crash can leave any mix: one partition's share delivered,
//!   another's lost. Polling again from the saved position returns those orders again (plus
//!   any committed since); the ones found in the topic are skipped, the rest published. The
//!   saved offsets only move past the recovered messages once the saved position covers them,
//!   so a crash during recovery recovers the same messages again. Snapshot reads count only
//!   under the state's own epoch: after a lost slot the state file is removed, and the new
//!   state's full snapshot must not take the old capture's reads of an order for its own (the
//!   order may have changed meanwhile). Such a snapshot opens with a truncate on every
//!   partition, so that its reads replace everything before them, the orders deleted while no
//!   slot existed included.
//! * **Sequence numbers continue after the highest one found** (of our source, whatever its
//!   epoch, but never from one 2^32 or more beyond the saved number: that is a copied header
//!   with a made-up seq, see [`recovery::read_tail`]), so within a partition they only grow and
//!   the consumer can drop any replay as a second line of defence.
//!
//! After a crash the producer also waits a moment (0.3 s) and re-reads the partition ends, so
//! that a request the dead process left in its socket, which the broker may still append, is
//! usually seen before anything is published again. Nothing fences a request delayed longer:
//! the broker appends it after the new producer's copy, and the topic holds those messages
//! twice with identical headers; the consumer's replay filter drops the second copy (tested
//! with the dead producer's bytes held in a proxy; the README says what is not covered).

pub mod publish;
pub mod recovery;
pub mod state;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Capture, Config};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::retry::{Backoff, Retry};
use crate::shutdown::Shutdown;
use crate::source::logical::{self, LogicalSource};
use crate::source::poll::PollSource;
use crate::source::{Batch, Change, Source};
use crate::wire::{Lsn, Op, TRUNCATE_KEY, TRUNCATE_VALUE};
use publish::{Acked, Publisher};
use state::State;

/// Runs the producer on the configured table until a stop is requested.
pub async fn produce(cfg: &Config, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<()> {
    match cfg.postgres.capture {
        Capture::Logical => {
            let source = LogicalSource::new(&cfg.postgres, cfg.streaming.batch_interval);
            let monitor =
                logical::monitor(cfg.postgres.clone(), source.published(), metrics.clone(), shutdown.clone());
            let slot = tokio::spawn(monitor);
            let result = run(source, cfg, &metrics, &shutdown).await;
            slot.abort();
            result
        }
        Capture::Poll => {
            let gauge = metrics.producer.unpublished_below_watermark.clone();
            run(PollSource::new(&cfg.postgres, &cfg.kafka.topic, gauge), cfg, &metrics, &shutdown).await
        }
    }
}

/// Runs the producer on any source until a stop is requested. Failures of PostgreSQL or the
/// broker are retried with capped exponential backoff, one log line each; a missing table or
/// topic, or a corrupt state file, ends it with an error.
pub async fn run<S: Source>(
    mut source: S,
    cfg: &Config,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<()> {
    let path = state::path(&cfg.streaming.last_processed_timestamp_location);
    let mut committed = state::load::<S>(&path)?.unwrap_or_else(State::beginning::<S>);
    // The epoch is saved before any message carries it: recovery takes only messages of this
    // epoch for its own, so a crash before the first batch is saved must not mint another.
    state::save::<S>(&path, &committed)?;
    tracing::info!(
        "producer: {} → {} (position: {}, state {})",
        source.name(),
        cfg.kafka.topic,
        describe::<S>(&committed.position),
        path.display()
    );
    let mut backoff = Retry::new("producer", Backoff::new());
    loop {
        match session(&mut source, &mut committed, &path, cfg, metrics, shutdown, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_transient() => return Err(e),
            // A failure caused by the stop itself (a queue that stayed full) is not retried.
            Err(e) if shutdown.is_triggered() => {
                tracing::warn!("{e}; stopping");
                return Ok(());
            }
            Err(e) => {
                if retry_later(&e, metrics, &mut backoff, shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// One producer instance: recovery, then batches until a stop or a failure.
async fn session<S: Source>(
    source: &mut S,
    committed: &mut State<S::Position>,
    path: &Path,
    cfg: &Config,
    metrics: &Metrics,
    shutdown: &Shutdown,
    backoff: &mut Retry,
) -> Result<()> {
    let name = source.name();
    // Created first so that its connection and producer id are ready when recovery ends; it
    // sends nothing before that.
    let publisher = Publisher::new(&cfg.kafka, &name, &committed.epoch, shutdown)?;
    let owner = state::Owner {
        source: name.clone(),
        topic: cfg.kafka.topic.clone(),
        cluster: tokio::task::block_in_place(|| publisher.cluster_id()),
    };
    if shutdown.is_triggered() {
        return Ok(());
    }
    claim(committed, owner, path)?;
    // Nothing is saved before recovery ends: a stop may drop it halfway.
    let Some(recovered) = shutdown.until(recover::<S>(cfg, &name, committed)).await else {
        return Ok(());
    };
    let mut recovered = recovered?;
    source.recovered(recovered.highest, recovered.earlier);
    let mut seq = committed.seq.max(recovered.max_seq);
    let limit = cfg.streaming.max_batch_rows;
    // During a catch-up, the next page is read while the broker acknowledges the current one.
    let mut prefetched = None;
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        let started = Instant::now();
        let batch = match next_batch(
            source,
            prefetched.take(),
            &committed.position,
            limit,
            metrics,
            backoff,
            shutdown,
        )
        .await?
        {
            Polled::Batch(batch) => batch,
            Polled::Retry => continue,
            Polled::Stopped => return Ok(()),
        };
        let full = batch.changes.len() >= limit;
        metrics.health.ok("producer");
        if batch.changes.is_empty() && batch.position == committed.position {
            backoff.reset();
            if !S::STREAMING {
                pause(started, cfg.streaming.batch_interval, shutdown).await;
            }
            continue;
        }

        publisher.begin();
        let sent =
            publish_changes::<S>(&publisher, &batch.changes, &recovered, &mut seq, cfg, metrics).await?;
        let read_ahead = full || S::STREAMING;
        let (acked, next) =
            finish(&publisher, read_ahead.then_some(&mut *source), &batch.position, limit, shutdown).await;
        let Acked::Ends(ends) = acked? else { return Ok(()) };

        save(source, committed, &mut recovered, batch.position, seq, &ends, path)?;
        prefetched = next;
        backoff.reset();

        report_batch::<S>(metrics, &batch.changes, sent, started.elapsed(), &committed.position);
        if !full && !S::STREAMING {
            pause(started, cfg.streaming.batch_interval, shutdown).await;
        }
    }
}

/// What one batch sent: orders published, found already in the topic, and bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    published: u64,
    skipped: u64,
    bytes: u64,
}

/// Writes this instance's owner into the state, refusing a state that belongs to another
/// source, topic or cluster.
fn claim<P>(committed: &mut State<P>, mut owner: state::Owner, path: &Path) -> Result<()> {
    if let Some(previous) = &committed.owner
        && !previous.fits(&owner)
    {
        return Err(Error::Setup(format!(
            "{}: this state belongs to {previous}, but this configuration is {owner}; point \
             streaming.last_processed_timestamp_location at a folder of this pipeline's own, or remove the file to \
             start over (the producer then publishes the table again from the beginning)",
            path.display()
        )));
    }
    // A broker that did not say its id this time keeps the one it said before.
    if owner.cluster.is_none() {
        owner.cluster = committed.owner.as_ref().and_then(|o| o.cluster.clone());
    }
    committed.owner = Some(owner);
    Ok(())
}

/// Sends one batch's changes (those recovery did not find in the topic already) to the
/// publisher, unencodable and oversized ones to the dead-letter topic; returns what was sent.
async fn publish_changes<S: Source>(
    publisher: &Publisher,
    changes: &[Change],
    recovered: &Recovered<S::Key>,
    seq: &mut u64,
    cfg: &Config,
    metrics: &Metrics,
) -> Result<Sent> {
    let mut sent = Sent::default();
    let mut value = Vec::with_capacity(256);
    for change in changes {
        if change.op == Op::Truncate {
            let (published, found) =
                publish_truncate(publisher, change, &recovered.partitions, &recovered.truncates, seq).await?;
            sent.published += published;
            sent.skipped += found;
            continue;
        }
        let key = change.order.order_id.to_string();
        if recovered.found.contains(&S::key(change, false)) {
            sent.skipped += 1;
        } else {
            value.clear();
            let rejected = match &change.reject {
                // No message can carry it, and the consumer would reject it.
                Some(r) => {
                    value.extend_from_slice(r.row.as_bytes());
                    Some(("unencodable", r.detail.clone()))
                }
                // The broker cannot take it, and every later change would wait behind it.
                None => {
                    change.order.write_json(&mut value);
                    publisher.too_large(key.as_bytes(), &value).map(|limit| {
                        let size = key.len() + value.len();
                        (
                            "too_large",
                            format!(
                                "order {key}: its message of {size} bytes exceeds message.max.bytes {limit}"
                            ),
                        )
                    })
                }
            };
            if let Some((reason, detail)) = rejected {
                publisher.dead_letter(key.as_bytes(), &value, reason, &detail, &change.meta(false)).await?;
                tracing::warn!(
                    "{detail}: sent to the dead-letter topic {} instead (reason {reason})",
                    cfg.kafka.dlq_topic
                );
                metrics.producer.dead_letters.inc();
            } else {
                *seq += 1;
                publisher.send(key.as_bytes(), Some(&value), *seq, &change.meta(false)).await?;
                sent.published += 1;
                sent.bytes += value.len() as u64;
            }
        }
        // A delete is followed by a tombstone, so a compacted topic forgets the order.
        if change.has_tombstone() && !recovered.found.contains(&S::key(change, true)) {
            *seq += 1;
            publisher.send(key.as_bytes(), None, *seq, &change.meta(true)).await?;
        }
    }
    Ok(sent)
}

/// Waits for the broker to acknowledge the batch; with `source`, reads the next batch from
/// `position` meanwhile (a stream always, a poll source during a catch-up).
async fn finish<S: Source>(
    publisher: &Publisher,
    source: Option<&mut S>,
    position: &S::Position,
    limit: usize,
    shutdown: &Shutdown,
) -> (Result<Acked>, Option<Result<Batch<S::Position>>>) {
    match source {
        Some(source) => {
            tokio::join!(publisher.finish(shutdown), shutdown.until(source.poll(position, limit)))
        }
        None => (publisher.finish(shutdown).await, None),
    }
}

/// What the producer's next poll gave.
enum Polled<P> {
    /// Changes, or none and a new position.
    Batch(Batch<P>),
    /// PostgreSQL failed; the backoff has been slept.
    Retry,
    /// A stop was asked for.
    Stopped,
}

/// The prefetched batch, or the next poll from `position`. A poll's result is saved only once
/// published, so a stop may drop it halfway (a snapshot page, a wait for the writer lock or
/// the slot, a server that does not answer).
async fn next_batch<S: Source>(
    source: &mut S,
    prefetched: Option<Result<Batch<S::Position>>>,
    position: &S::Position,
    limit: usize,
    metrics: &Metrics,
    backoff: &mut Retry,
    shutdown: &Shutdown,
) -> Result<Polled<S::Position>> {
    let polled = match prefetched {
        Some(polled) => polled,
        None => match shutdown.until(source.poll(position, limit)).await {
            Some(polled) => polled,
            None => return Ok(Polled::Stopped),
        },
    };
    match polled {
        Ok(batch) => Ok(Polled::Batch(batch)),
        // PostgreSQL trouble: the producer and what recovery found stay as they are.
        Err(e) if e.is_transient() => {
            let stopped = retry_later(&e, metrics, backoff, shutdown).await;
            Ok(if stopped { Polled::Stopped } else { Polled::Retry })
        }
        Err(e) => Err(e),
    }
}

/// Saves the state after a batch the broker acknowledged (`ends`: per partition, the offset
/// after its last message) and tells the source.
fn save<S: Source>(
    source: &mut S,
    committed: &mut State<S::Position>,
    recovered: &mut Recovered<S::Key>,
    position: S::Position,
    seq: u64,
    ends: &BTreeMap<i32, i64>,
    path: &Path,
) -> Result<()> {
    // The saved offsets pass the recovered messages only once the position covers them all.
    recovered.found.retain(|k| !S::covers(&position, k));
    let offsets = if recovered.found.is_empty() {
        Some(advance(committed.offsets.clone().unwrap_or_default(), recovered.ends.iter().chain(ends.iter())))
    } else {
        committed.offsets.clone()
    };
    let next =
        State { position, seq, epoch: committed.epoch.clone(), offsets, owner: committed.owner.clone() };
    state::save::<S>(path, &next)?;
    source.saved(&next.position);
    *committed = next;
    Ok(())
}

/// `offsets` with each partition raised to the highest of `ends` for it.
fn advance<'a>(
    mut offsets: BTreeMap<i32, i64>,
    ends: impl Iterator<Item = (&'a i32, &'a i64)>,
) -> BTreeMap<i32, i64> {
    for (p, end) in ends {
        let e = offsets.entry(*p).or_insert(0);
        *e = (*e).max(*end);
    }
    offsets
}

/// Counts a saved batch in the metrics and logs it.
fn report_batch<S: Source>(
    metrics: &Metrics,
    changes: &[Change],
    sent: Sent,
    took: Duration,
    position: &S::Position,
) {
    let newest = changes
        .iter()
        .filter(|c| c.reject.is_none() || c.commit_ts.is_some())
        .map(|c| c.commit_ts.map_or(c.order.created_at, |t| t.naive_utc()))
        .max();
    if sent.published + sent.skipped == 0 {
        return;
    }
    report(metrics, sent.published, sent.skipped, sent.bytes, newest, took);
    let lag = newest.map(|t| (chrono::Utc::now().naive_utc() - t).as_seconds_f64()).unwrap_or(0.0);
    tracing::info!(
        rows = sent.published,
        skipped = sent.skipped,
        bytes = sent.bytes,
        lag_s = (lag * 1000.0).round() / 1000.0,
        duration_ms = took.as_millis() as u64,
        "batch published; watermark {}",
        describe::<S>(position)
    );
}

/// Logs a failure (as an outage: its start, then reminders) and sleeps the next backoff delay;
/// returns whether a stop was requested.
async fn retry_later(e: &Error, metrics: &Metrics, backoff: &mut Retry, shutdown: &Shutdown) -> bool {
    metrics.producer.retries.inc();
    metrics.health.fail("producer", &e.to_string());
    let delay = backoff.failed(&format_args!("{e} (position not advanced)"));
    shutdown.sleep(delay).await
}

/// What recovery found in the topic beyond the saved state.
struct Recovered<K> {
    /// The keys of our messages there that the saved position does not cover.
    found: HashSet<K>,
    /// Per partition, the offset after the last message read.
    ends: BTreeMap<i32, i64>,
    /// The highest sequence number.
    max_seq: u64,
    /// The highest log position.
    highest: Option<(Lsn, i32)>,
    /// The truncates there, as `(commit LSN, index, partition)`.
    truncates: HashSet<(Lsn, i32, i32)>,
    /// The topic's partitions.
    partitions: Vec<i32>,
    /// Whether the topic holds messages of our source from another epoch.
    earlier: bool,
}

/// Publishes a truncate to every partition it is not already on (a crash may have left it on
/// some only); returns how many messages were sent and how many found.
async fn publish_truncate(
    publisher: &Publisher,
    change: &Change,
    partitions: &[i32],
    found: &HashSet<(Lsn, i32, i32)>,
    seq: &mut u64,
) -> Result<(u64, u64)> {
    let (lsn, index) = change.at.unwrap_or_default();
    let (mut sent, mut skipped) = (0, 0);
    for &p in partitions {
        if found.contains(&(lsn, index, p)) {
            skipped += 1;
            continue;
        }
        *seq += 1;
        let (key, value) = (TRUNCATE_KEY.as_bytes(), TRUNCATE_VALUE.as_bytes());
        publisher.send_to(Some(p), key, Some(value), *seq, &change.meta(false)).await?;
        sent += 1;
    }
    Ok((sent, skipped))
}

/// Reads what the topic holds after the saved offsets, until the partition ends stop moving.
async fn recover<S: Source>(
    cfg: &Config,
    name: &str,
    committed: &State<S::Position>,
) -> Result<Recovered<S::Key>> {
    let mut found: HashSet<S::Key> = HashSet::new();
    let mut highest: Option<(Lsn, i32)> = None;
    let kafka = cfg.kafka.clone();
    let source = name.to_string();
    let from = committed.offsets.clone();
    let (saved_seq, epoch) = (committed.seq, committed.epoch.clone());
    let tail = tokio::task::spawn_blocking(move || {
        recovery::read_tail(&kafka, &source, &epoch, saved_seq, from.as_ref())
    })
    .await
    .map_err(|e| Error::Kafka(format!("recovery task failed: {e}")))??;
    for (meta, order) in &tail.found {
        if let (Some(lsn), Some(i)) = (meta.lsn, meta.change_index) {
            highest = highest.max(Some((lsn, i)));
        }
        found.extend(S::key_of(meta, order.as_ref()));
    }
    let (messages, ends, max_seq) = (tail.messages, tail.ends, tail.max_seq);
    let truncates = tail.truncates.into_iter().collect();
    found.retain(|k| !S::covers(&committed.position, k));
    if messages > 0 || !found.is_empty() {
        tracing::info!(
            "recovery: {messages} messages after the saved offsets, {} orders of an unsaved batch already in {}; \
             they will not be published again",
            found.len(),
            cfg.kafka.topic
        );
    }
    let earlier = tail.earlier > 0;
    Ok(Recovered { found, ends, max_seq, highest, truncates, partitions: tail.partitions, earlier })
}

fn report(
    metrics: &Metrics,
    published: u64,
    skipped: u64,
    bytes: u64,
    newest: Option<chrono::NaiveDateTime>,
    took: Duration,
) {
    let m = &metrics.producer;
    m.orders_published.inc_by(published);
    m.orders_recovered.inc_by(skipped);
    m.bytes_published.inc_by(bytes);
    m.batches.inc();
    m.batch_duration.observe(took.as_secs_f64());
    if let Some(t) = newest {
        let t = t.and_utc();
        m.watermark.set(t.timestamp_micros() as f64 / 1e6);
        m.lag_seconds.set((chrono::Utc::now() - t).as_seconds_f64());
    }
}

/// Sleeps until one interval after `started`, or until a stop is requested.
async fn pause(started: Instant, interval: Duration, shutdown: &Shutdown) {
    shutdown.sleep((started + interval).saturating_duration_since(Instant::now())).await;
}

/// The first two state lines (watermark and id), for logs.
fn describe<S: Source>(position: &S::Position) -> String {
    S::encode(position).into_iter().take(2).collect::<Vec<_>>().join(" ")
}
