//! The partitions this process owns: taking one on assignment (its lock, checkpoint and the
//! manifests ahead of it), checking where reading starts, waiting for a lock another live
//! process holds, and releasing.

// The engine's own items and imports: this is the engine, split by what its steps do.
use super::*;

impl Engine {
    /// Takes a newly assigned partition: its lock, its checkpoint and every committed manifest
    /// that is ahead of it. Returns where to start reading, or [`Acquired::Waiting`] while
    /// another live process still holds the partition's lock: the partition then waits (see
    /// [`Engine::retry_waiting`]) and the others are read meanwhile.
    pub fn acquire(&mut self, topic: &str, partition: i32) -> Result<Acquired> {
        if let Some(o) = self.owned.get(&partition) {
            return Ok(Acquired::From(o.offset()));
        }
        if self.delta.is_some() {
            return self.acquire_delta(topic, partition).map(Acquired::From);
        }
        let lock = match self.checkpoint.try_lock_partition(topic, partition)? {
            Locking::Taken(lock) => lock,
            Locking::HeldElsewhere(path) => {
                let now = Instant::now();
                let w = self.waiting.entry(partition).or_insert(Waiting { since: now, next_log: now });
                if now >= w.next_log {
                    tracing::warn!(
                        "partition {topic}/{partition}: waiting for {} (another live process still owns \
                         the partition; waited {:.0} s); the other partitions are read meanwhile",
                        path.display(),
                        now.saturating_duration_since(w.since).as_secs_f64()
                    );
                    w.next_log += WAIT_LOG_EVERY;
                }
                return Ok(Acquired::Waiting);
            }
        };
        self.waiting.remove(&partition);
        let mut state = self.checkpoint.read_state(topic, partition)?;
        let mut from_manifest = false;
        for (path, m) in self.checkpoint.manifests()? {
            let Some(s) = m.state_of(topic, partition) else { continue };
            if state.as_ref().is_none_or(|c| s.next_offset > c.next_offset) {
                state = Some(s.clone());
                from_manifest = true;
            }
            if !self.pending.iter().any(|(p, _)| *p == path) {
                self.pending.push((path, m));
            }
        }
        let stored = state.is_some();
        let committed = state.unwrap_or_else(|| PartitionState::empty(topic, partition));
        self.same_cluster(&committed)?;
        if from_manifest {
            tracing::info!(
                "partition {topic}/{partition}: finishing a batch committed by a process that stopped \
                 (next offset {})",
                committed.next_offset
            );
        }
        self.owned.insert(
            partition,
            Owned {
                _lock: Some(lock),
                position: committed.next_offset,
                resumed_at: stored.then_some(committed.next_offset),
                committed,
                stored,
                working: None,
            },
        );
        // Renames, then this partition's state file, then manifests no one needs any more.
        self.retry_pending();
        Ok(Acquired::From(if stored {
            Offset::Offset(self.owned[&partition].committed.next_offset)
        } else {
            Offset::Beginning
        }))
    }

    /// Delta lake: takes a partition at the state the table's newest version holds (no lock:
    /// a second owner's commit loses at the log, see [`crate::sink::delta`]).
    fn acquire_delta(&mut self, topic: &str, partition: i32) -> Result<Offset> {
        let Some(delta) = self.delta.as_mut() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        delta.refresh()?;
        let state = delta.state(partition)?;
        delta.own(partition)?;
        let stored = state.is_some();
        let committed = state.unwrap_or_else(|| PartitionState::empty(topic, partition));
        self.same_cluster(&committed)?;
        let offset = if stored { Offset::Offset(committed.next_offset) } else { Offset::Beginning };
        self.owned.insert(
            partition,
            Owned {
                _lock: None,
                position: committed.next_offset,
                resumed_at: stored.then_some(committed.next_offset),
                committed,
                stored,
                working: None,
            },
        );
        Ok(offset)
    }

    /// Whether a partition's committed state was read from the broker's cluster: its offsets
    /// mean nothing on another one. Unknown on either side (a state of an older version, a
    /// broker that reports no id) passes.
    fn same_cluster(&self, state: &PartitionState) -> Result<()> {
        let (Some(theirs), Some(ours)) = (&state.cluster, &self.cluster) else { return Ok(()) };
        if theirs == ours {
            return Ok(());
        }
        Err(Error::Setup(format!(
            "partition {}/{}: the checkpoint {} was written from Kafka cluster {theirs}, but the broker at {} is \
             cluster {ours}: the checkpoint belongs to another broker, or the topic moved to another cluster. Point \
             kafka.brokers at cluster {theirs}; to start over from cluster {ours} deliberately, delete the \
             checkpoint folder {} and the lake {} (its rows came from the other cluster)",
            state.topic,
            state.partition,
            self.checkpoint.state_path(&state.topic, state.partition).display(),
            self.brokers,
            self.checkpoint.dir().display(),
            self.checkpoint.lake().display()
        )))
    }

    /// Where a newly acquired partition may start, checked against the topic, so that a
    /// checkpoint that does not fit the topic stops the consumer instead of skipping messages
    /// or writing the topic into the lake a second time (`--from-beginning` overrides the
    /// last two). `served_end(h)`: the partition's end as the broker serves it, read from its
    /// reported end `h` (`None` when that cannot be told).
    pub fn check_start<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        topic: &str,
        partition: i32,
        offset: Offset,
        served_end: impl Fn(i64) -> Option<i64>,
    ) -> Result<Offset> {
        let timeout = Duration::from_secs(10);
        let cp = self.checkpoint.dir().display();
        let lake = self.checkpoint.lake().display();
        let again = "--from-beginning (`orderstream consume --from-beginning`)";
        match offset {
            Offset::Offset(n) => {
                let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, timeout) else {
                    return Ok(offset);
                };
                if n < low {
                    if self.limits.from_beginning {
                        tracing::warn!(
                            "partition {topic}/{partition}: reading on from offset {low}: messages {n} to {} were \
                             deleted before the lake got them (--from-beginning)",
                            low - 1
                        );
                        return Ok(Offset::Offset(low));
                    }
                    return Err(Error::Storage(format!(
                        "partition {topic}/{partition}: the checkpoint's next offset {n} is below the partition's \
                         first offset {low}: messages {n} to {} were deleted (retention?) before the lake got them. \
                         To accept the loss and read on from {low}, start once with {again}",
                        low - 1
                    )));
                }
                // A broker may report an end below the last message (tansu does after a
                // producer retry): only the end it serves counts.
                if n > high && served_end(high).is_some_and(|end| n > end) {
                    return Err(Error::Storage(format!(
                        "partition {topic}/{partition}: the checkpoint's next offset {n} is beyond the partition's \
                         end {high}: the topic was deleted and recreated, or the checkpoint {cp} belongs to another \
                         topic or broker. To start over deliberately, delete the checkpoint folder {cp} and the lake \
                         {lake} (its rows came from the old topic)"
                    )));
                }
                Ok(offset)
            }
            // A Delta table names its group and topic, and holds a position for every partition
            // it has rows of: one without is new to the table.
            _ if self.delta.is_some() => Ok(offset),
            _ if self.limits.from_beginning || !self.checkpoint.lake_has_files() => Ok(offset),
            _ => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let group = consumer.committed_offsets(tpl, timeout).ok().and_then(|c| {
                    match c.find_partition(topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) if o > 0 => Some(o),
                        _ => None,
                    }
                });
                let why = match group {
                    Some(o) => format!("the group has committed offset {o} for it"),
                    None if !self.checkpoint.has_any_state(topic) => {
                        format!("the checkpoint holds no state of any partition of {topic}")
                    }
                    None => return Ok(offset),
                };
                Err(Error::Storage(format!(
                    "partition {topic}/{partition} has no checkpoint in {cp}, but the lake {lake} already holds \
                     files and {why}: the checkpoint folder was lost or the configuration points at another one, and \
                     reading from the beginning would write the topic into the lake again. Point \
                     streaming.checkpoint_location at the lake's checkpoint, or start once with {again} to do it \
                     deliberately"
                )))
            }
        }
    }

    /// Deletes what dead processes left in the temp area (see [`scratch::clean_dead`]).
    pub fn clean_dead(&self) {
        if let Some(scratch) = &self.scratch
            && let Err(e) = scratch::clean_dead(&self.checkpoint, scratch.id())
        {
            tracing::warn!("cannot clean the temp folders of stopped processes: {e}");
        }
    }

    /// Releases partitions (their locks, or their wait for one); their in-flight rows must be
    /// committed or abandoned.
    pub fn release(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.owned.remove(p);
            self.waiting.remove(p);
        }
    }

    /// Whether `partition` is assigned to this member but waits for its lock (so librdkafka
    /// was never told to read it).
    pub fn is_waiting(&self, partition: i32) -> bool {
        self.waiting.contains_key(&partition)
    }

    /// The partitions assigned to this member: owned, or waiting for their lock.
    pub fn owned(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self.owned.keys().chain(self.waiting.keys()).copied().collect();
        all.sort_unstable();
        all
    }

    /// Tries again to lock the partitions assigned while another live process held them; each
    /// one locked joins the consumer's assignment at its checkpoint. Called from the loop, so
    /// a member frozen past its session (SIGSTOP, a VM pause) stalls only its own partitions:
    /// it still holds their locks, and writes them until it learns that it lost them.
    pub fn retry_waiting<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        now: Instant,
    ) -> Result<()> {
        if self.waiting.is_empty() || now < self.next_lock_try {
            return Ok(());
        }
        self.next_lock_try = now + LOCK_RETRY;
        let topic = self.topic.clone();
        let mut added = TopicPartitionList::new();
        for p in self.waiting.keys().copied().collect::<Vec<_>>() {
            if let Acquired::From(offset) = self.acquire(&topic, p)? {
                tracing::info!("partition {topic}/{p}: its previous owner let go; reading from {offset:?}");
                added
                    .add_partition_offset(&topic, p, offset)
                    .map_err(|e| Error::Kafka(format!("cannot assign {topic}/{p}: {e}")))?;
            }
        }
        if added.count() == 0 {
            return Ok(());
        }
        let assigned = if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
            consumer.incremental_assign(&added)
        } else {
            // Eager: assign() replaces the assignment, so it lists every owned partition at the
            // offset its next message must have.
            let mut all = TopicPartitionList::new();
            for (p, o) in &self.owned {
                all.add_partition_offset(&topic, *p, o.offset())
                    .map_err(|e| Error::Kafka(format!("cannot assign {topic}/{p}: {e}")))?;
            }
            consumer.assign(&all)
        };
        assigned.map_err(|e| Error::Kafka(format!("cannot apply the new assignment: {e}")))
    }
}
