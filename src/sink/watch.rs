//! Partitions nobody consumes. A group member that crashed is counted by the coordinator until
//! its session expires, and some brokers keep counting it longer (tansu 0.6 was seen assigning
//! partitions to killed members, leaving the restarted consumer with none for minutes). Kafka
//! then reports nothing wrong: the live member has a valid, empty, assignment.
//!
//! A thread of this module reads, every few seconds, the group's committed offset and the end
//! of every partition of the topic (the same requests as `orderstream status`). A partition is
//! *stalled* when it has messages beyond its committed offset and that offset has not moved for
//! the stall window: twice `session.timeout.ms`, at least 10 s, so a member that died cleanly
//! has lost its partitions long before. The poll loop compares the stalled partitions with its
//! own assignment: a stalled partition this member does not hold is nobody's, as far as it can
//! tell; it reports them on `/health` (stage `consumer group`, 503) and rejoins the group, which
//! makes the coordinator drop expired members and assign again. Rejoins back off (5 s, doubling
//! up to [`REJOIN_MAX`]) so a live member that is merely slow is not rebalanced in a tight loop,
//! while partitions nobody reads are never left for minutes.
//!
//! Before each such rejoin the watch thread also commits the unread partitions' committed
//! offsets once more, unchanged (the *nudge*). That is for tansu 0.6's group coordinator, which
//! can wedge a group for good: when a leader's heartbeat reaches it later than the session
//! timeout (a broker frozen or stalled for longer than `session.timeout.ms`), it drops the
//! leader from the members but keeps it as the leader, so every later member is told to wait
//! for a leader that will never come, and rejoining changes nothing (a plain librdkafka
//! consumer is stuck the same way). The coordinator forgets a leader that is not a member only
//! when it reloads the group from its storage, which an offset commit arriving while a joining
//! member holds the group's state makes it do; the joining member then becomes the leader. The
//! commit moves no offset (the unread partitions' offsets are not moving, or they would not be
//! unread), and the consumer never reads Kafka's committed offsets (it starts from its
//! checkpoint), so on any other broker the nudge changes nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka;

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_MS: u64 = 45_000;

/// The first wait between two rejoins while partitions stay unread.
const REJOIN_FIRST: Duration = Duration::from_secs(5);

/// The longest wait between two rejoins while partitions stay unread.
pub const REJOIN_MAX: Duration = Duration::from_secs(30);

/// A partition with messages beyond its committed offset, which has not moved for `for_`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stalled {
    pub partition: i32,
    /// Messages beyond the committed offset.
    pub lag: i64,
    pub for_: Duration,
}

/// What the watch thread last saw of one partition.
struct Seen {
    committed: Option<i64>,
    /// The first offset the broker still has (what no commit means).
    low: i64,
    lag: i64,
    since: Instant,
}

/// The watch thread and what it found.
pub struct Watch {
    window: Duration,
    seen: Arc<Mutex<BTreeMap<i32, Seen>>>,
    stop: Arc<AtomicBool>,
    /// Partitions whose committed offsets the thread is to commit again (see the module doc).
    nudge: Arc<Mutex<Vec<i32>>>,
    thread: Option<JoinHandle<()>>,
}

/// How long a partition's committed offset must stand still, with messages beyond it, before
/// it counts as read by nobody: twice `session.timeout.ms`, at least 10 s.
pub fn stall_window(cfg: &KafkaConfig) -> Duration {
    let session = cfg
        .properties
        .get("session.timeout.ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SESSION_MS);
    Duration::from_millis(session * 2).max(Duration::from_secs(10))
}

impl Watch {
    /// Starts watching `cfg.topic` for the group `cfg.group_id`.
    pub fn start(cfg: &KafkaConfig) -> Result<Watch> {
        let window = stall_window(cfg);
        let client: BaseConsumer = kafka::Client::Status
            .config(cfg)
            .create()
            .map_err(|e| Error::Kafka(format!("cannot create the group watch for {}: {e}", cfg.brokers)))?;
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let nudge = Arc::new(Mutex::new(Vec::new()));
        let every = (window / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
        let thread = {
            let (seen, stop, nudge, topic, brokers) =
                (seen.clone(), stop.clone(), nudge.clone(), cfg.topic.clone(), cfg.brokers.clone());
            std::thread::Builder::new()
                .name("group-watch".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        look(&client, &brokers, &topic, &seen);
                        let end = Instant::now() + every;
                        while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                            recommit(&client, &topic, &seen, &nudge);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
                .map_err(|e| Error::Kafka(format!("cannot start the group watch: {e}")))?
        };
        Ok(Watch { window, seen, stop, nudge, thread: Some(thread) })
    }

    /// Has the watch thread commit these partitions' committed offsets again, unchanged.
    pub fn nudge(&self, partitions: &[i32]) {
        if let Ok(mut n) = self.nudge.lock() {
            n.extend_from_slice(partitions);
        }
    }

    /// The partitions stalled for the window or longer.
    pub fn stalled(&self) -> Vec<Stalled> {
        let Ok(seen) = self.seen.lock() else { return Vec::new() };
        seen.iter()
            .filter(|(_, s)| s.lag > 0 && s.since.elapsed() >= self.window)
            .map(|(p, s)| Stalled { partition: *p, lag: s.lag, for_: s.since.elapsed() })
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One look at the topic's partitions: a partition whose committed offset moved, or that has
/// nothing beyond it, starts a new stall clock. When the broker does not answer, every clock
/// starts again: nobody could make progress, and rejoining would not help.
fn look(client: &BaseConsumer, brokers: &str, topic: &str, seen: &Mutex<BTreeMap<i32, Seen>>) {
    let timeout = Duration::from_secs(5);
    let now = Instant::now();
    let observed = kafka::partition_progress(client, brokers, topic, timeout).map(|parts| {
        parts.into_iter().map(|p| (p.partition, p.committed, p.low, p.lag())).collect::<Vec<_>>()
    });
    let Ok(mut seen) = seen.lock() else { return };
    match observed {
        Err(_) => {
            for s in seen.values_mut() {
                s.since = now;
            }
        }
        Ok(parts) => {
            seen.retain(|p, _| parts.iter().any(|(q, _, _, _)| q == p));
            for (p, committed, low, lag) in parts {
                let s = seen.entry(p).or_insert(Seen { committed, low, lag, since: now });
                if s.committed != committed || lag == 0 {
                    s.since = now;
                }
                s.committed = committed;
                s.low = low;
                s.lag = lag;
            }
        }
    }
}

/// The nudge (see the module doc): commits the requested partitions' committed offsets as last
/// seen (the first offset the broker has when the group committed none), unchanged.
fn recommit(client: &BaseConsumer, topic: &str, seen: &Mutex<BTreeMap<i32, Seen>>, nudge: &Mutex<Vec<i32>>) {
    use rdkafka::consumer::{CommitMode, Consumer};
    let wanted: Vec<i32> = match nudge.lock() {
        Ok(mut n) if !n.is_empty() => std::mem::take(&mut *n),
        _ => return,
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    if let Ok(seen) = seen.lock() {
        for p in wanted {
            if let Some(s) = seen.get(&p) {
                let _ =
                    tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(s.committed.unwrap_or(s.low)));
            }
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match client.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            tracing::info!("committed the offsets of unread partitions again, unchanged (a group nudge)")
        }
        Err(e) => tracing::warn!("cannot commit the offsets of unread partitions again: {e}"),
    }
}

/// Decides, in the poll loop, when this member must rejoin the group.
pub struct Orphans {
    next_rejoin: Instant,
    delay: Duration,
    reported: bool,
}

/// What the poll loop should do about partitions nobody holds.
pub enum Verdict {
    /// Nothing stalled outside this member (again): clear the health entry.
    Clear,
    /// Still stalled: keep the health entry (the message).
    Report(String),
    /// Stalled and the back-off has passed: report, nudge these partitions, and rejoin.
    Rejoin(String, Vec<i32>),
    Nothing,
}

impl Default for Orphans {
    fn default() -> Self {
        Self::new()
    }
}

impl Orphans {
    /// Nothing reported yet; a first rejoin is allowed at once.
    pub fn new() -> Orphans {
        Orphans { next_rejoin: Instant::now(), delay: REJOIN_FIRST, reported: false }
    }

    /// `held` is this member's assignment (owned or waiting for a lock).
    pub fn judge(&mut self, watch: &Watch, held: &[i32], now: Instant) -> Verdict {
        let orphans: Vec<Stalled> =
            watch.stalled().into_iter().filter(|s| !held.contains(&s.partition)).collect();
        if orphans.is_empty() {
            self.delay = REJOIN_FIRST;
            return if std::mem::take(&mut self.reported) { Verdict::Clear } else { Verdict::Nothing };
        }
        self.reported = true;
        let holds = if held.is_empty() {
            "holds no partitions".to_string()
        } else {
            format!("holds {}", held.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" "))
        };
        let lag: i64 = orphans.iter().map(|s| s.lag).sum();
        let oldest = orphans.iter().map(|s| s.for_).max().unwrap_or_default();
        let message = format!(
            "this member {holds}; partitions {} have {lag} messages beyond their committed offsets, which have not moved for {} s",
            orphans.iter().map(|s| s.partition.to_string()).collect::<Vec<_>>().join(" "),
            oldest.as_secs()
        );
        if now < self.next_rejoin {
            return Verdict::Report(message);
        }
        self.next_rejoin = now + self.delay;
        self.delay = (self.delay * 2).min(REJOIN_MAX);
        Verdict::Rejoin(message, orphans.iter().map(|s| s.partition).collect())
    }
}
