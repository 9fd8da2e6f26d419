//! Committing the in-flight batch, or abandoning it: the steps of the protocol in
//! [`crate::sink`], to Parquet files with a manifest or to the Delta table.

// The engine's own items and imports: this is the engine, split by what its steps do.
use super::*;

impl Engine {
    /// Commits the in-flight batch (steps 1-7 of the protocol in [`crate::sink`]). On an error
    /// nothing was committed; the caller abandons the batch.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> Result<()> {
        if self.batch.messages == 0 {
            return Ok(());
        }
        if let Some(e) = self.batch.error.take() {
            return Err(e);
        }
        if self.delta.is_some() {
            return self.commit_delta(consumer);
        }
        let start = Instant::now();
        let batch_id = Uuid::now_v7().to_string();
        let Some(scratch) = self.scratch.as_ref() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        let process = scratch.id().to_string();
        let mut files = Vec::new();
        let written =
            self.write_files(&mut files).inspect(|()| crate::sink::failpoint(crate::sink::Failpoint::Files));
        let refused = written.and_then(|()| self.dlq.flush());
        let quarantined = refused.and_then(|refused| {
            self.batch.quarantine.extend(refused);
            self.write_quarantine()
        });
        let committed = quarantined.and_then(|()| {
            let partitions = self.new_states(&batch_id, &process);
            let m = Manifest { batch: batch_id.clone(), process, partitions, files: files.clone() };
            // The commit point.
            self.checkpoint.write_manifest(&m).map(|path| (path, m))
        });
        let (path, manifest) = match committed {
            Ok(c) => {
                crate::sink::failpoint(crate::sink::Failpoint::Manifest);
                c
            }
            Err(e) => {
                for f in &files {
                    let _ = fs::remove_file(self.checkpoint.lake().join(&f.temp));
                }
                return Err(e);
            }
        };

        // Committed: the in-memory state follows the manifest.
        let offsets = self.committed(&manifest.partitions, manifest.files.len());

        // Steps 4-6: idempotent; if they fail, the manifest finishes them later (here or at
        // the next start), so the batch stays committed.
        if let Err(e) = self.checkpoint.finish(&path, &manifest) {
            tracing::error!("batch {batch_id} is committed but not finished yet ({e}); will retry");
            self.pending.push((path, manifest));
        }
        self.retry_pending();
        let success = self.checkpoint.lake().join(SUCCESS_FILE);
        if let Err(e) = File::create(&success) {
            tracing::warn!("cannot refresh {}: {e}", success.display());
        }
        // Step 7: for lag monitoring only; the checkpoint is the truth.
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
        {
            tracing::debug!("group offsets not committed to Kafka: {e}");
        }
        self.metrics.consumer.batch_duration.observe(start.elapsed().as_secs_f64());
        self.log_progress();
        Ok(())
    }

    /// The in-memory state follows a committed batch: counters, owned states, a fresh batch.
    /// Returns the group offsets to commit to Kafka (for lag monitoring only).
    fn committed(&mut self, partitions: &[PartitionState], files: usize) -> TopicPartitionList {
        let mut offsets = TopicPartitionList::new();
        let metrics = self.metrics.clone();
        let c = &metrics.consumer;
        for new in partitions {
            let Some(owned) = self.owned.get_mut(&new.partition) else { continue };
            let old = &owned.committed;
            c.rows_written.inc_by(new.rows_written - old.rows_written);
            c.tombstones.inc_by(new.tombstones - old.tombstones);
            c.duplicates.inc_by(new.duplicates - old.duplicates);
            for (label, n) in &new.rejected {
                let before = old.rejected.get(label).copied().unwrap_or(0);
                c.rejected.get_or_create(&ReasonLabel { reason: label.clone() }).inc_by(n - before);
                self.progress.rejected += n - before;
            }
            self.progress.rows += new.rows_written - old.rows_written;
            owned.committed = new.clone();
            owned.working = None;
            owned.stored = true;
            let _ = offsets.add_partition_offset(&new.topic, new.partition, Offset::Offset(new.next_offset));
        }
        c.batches.inc();
        c.files_written.inc_by(files as u64);
        self.progress.batches += 1;
        self.batch.notes.log(&self.topic);
        self.batch = InFlight::default();
        offsets
    }

    /// The working state of every partition the batch advanced, stamped for the commit.
    fn new_states(&self, batch_id: &str, process: &str) -> Vec<PartitionState> {
        self.owned
            .values()
            .filter_map(|o| o.working.clone())
            .map(|mut s| {
                // A state of an older version (none recorded) is adopted here.
                if self.cluster.is_some() {
                    s.cluster.clone_from(&self.cluster);
                }
                s.batches += 1;
                s.last_batch = batch_id.to_string();
                s.last_process = process.to_string();
                s
            })
            .collect()
    }

    /// Commits the in-flight batch to the Delta table: files, `txn` actions and partition
    /// states in one log entry (see [`crate::sink::delta`]). On an error nothing is known to be
    /// committed: the caller abandons the batch, which settles it from the table.
    fn commit_delta<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> Result<()> {
        let start = Instant::now();
        if self.unsettled && self.settle_from_table()? {
            return Err(Error::Storage(
                "the table holds more than this process knew (an earlier commit landed after all): the batch is \
                 read again from the table's positions"
                    .into(),
            ));
        }
        let batch_id = Uuid::now_v7().to_string();
        let refused = self.dlq.flush()?;
        self.batch.quarantine.extend(refused);
        self.write_quarantine()?;
        let dates = self.batch.rows.finish_sourced()?;
        let states = self.new_states(&batch_id, "delta");
        let expected: Vec<(i32, Option<i64>)> = states
            .iter()
            .filter_map(|s| self.owned.get(&s.partition))
            .map(|o| (o.committed.partition, o.stored.then(|| o.committed.next_offset - 1)))
            .collect();
        let Some(delta) = self.delta.as_mut() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        crate::sink::failpoint(crate::sink::Failpoint::Files);
        let commit_start = Instant::now();
        let committed = delta.commit(dates, states.clone(), &expected)?;
        let commit_secs = commit_start.elapsed().as_secs_f64();
        crate::sink::failpoint(crate::sink::Failpoint::Manifest);
        let c = &self.metrics.consumer;
        c.table_version.set(committed.version);
        c.last_commit.set(chrono::Utc::now().timestamp_micros() as f64 / 1e6);
        let offsets = self.committed(&states, committed.files);
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
        {
            tracing::debug!("group offsets not committed to Kafka: {e}");
        }
        // The benches read the commit's duration from this line (benches/logical.rs).
        tracing::debug!(
            "batch {batch_id} committed as version {} ({} bytes) in {commit_secs:.4} s",
            committed.version,
            committed.bytes
        );
        self.metrics.consumer.batch_duration.observe(start.elapsed().as_secs_f64());
        self.log_progress();
        Ok(())
    }

    /// Delta lake: reads the table again and gives every owned partition the table's state, so
    /// a batch whose commit failed, lost a race or timed out is settled by what the log holds.
    /// Returns whether any partition's position moved.
    fn settle_from_table(&mut self) -> Result<bool> {
        let Some(delta) = self.delta.as_mut() else { return Ok(false) };
        self.unsettled = true;
        delta.refresh()?;
        let mut moved = false;
        for (p, owned) in self.owned.iter_mut() {
            let state = delta.state(*p)?;
            delta.own(*p)?;
            let before = owned.committed.next_offset;
            owned.stored = state.is_some();
            owned.committed = state.unwrap_or_else(|| PartitionState::empty(&self.topic, *p));
            if owned.committed.next_offset != before {
                moved = true;
                self.metrics.consumer.commit_conflicts.inc();
                tracing::warn!(
                    "partition {}/{p}: the table {} holds offsets up to {} (this process had {}): reading on from there",
                    self.topic,
                    delta.location(),
                    owned.committed.next_offset - 1,
                    before - 1
                );
            }
        }
        self.unsettled = false;
        Ok(moved)
    }

    /// The rejects no dead letter can carry, each to its file under the checkpoint, before the
    /// commit point (so a committed batch has all of them).
    fn write_quarantine(&self) -> Result<()> {
        for q in &self.batch.quarantine {
            let path = q.write(self.checkpoint.dir())?;
            self.metrics.consumer.quarantined.inc();
            tracing::warn!(
                "a reject whose dead letter cannot be sent to {} was written to {} instead",
                self.dlq.topic(),
                path.display()
            );
        }
        Ok(())
    }

    /// Step 1: one fsynced temp file per date; the date folders exist before the commit point.
    fn write_files(&mut self, files: &mut Vec<ManifestFile>) -> Result<()> {
        let Some(scratch) = self.scratch.as_ref() else {
            return Err(Error::Storage("the consumer is closed".into()));
        };
        let lake = self.checkpoint.lake();
        for (date, rows) in self.batch.rows.finish()? {
            let dir = lake.join(format!("date={date}"));
            if !dir.is_dir() {
                fs::create_dir_all(&dir).map_err(|e| io_error("cannot create directory", &dir, e))?;
                sync_dir(lake)?;
            }
            let name = format!("part-{}", Uuid::now_v7());
            let (temp, temp_rel) = scratch.temp_file(&name);
            files.push(ManifestFile {
                temp: temp_rel,
                path: format!("date={date}/{name}.parquet"),
                rows: rows.num_rows() as u64,
            });
            parquet::write_file(&temp, &rows)?;
        }
        // The temp files' names must survive a power loss too: the manifest will point at them.
        if !files.is_empty() {
            sync_dir(scratch.dir())?;
        }
        Ok(())
    }

    /// Finishes committed manifests that could not be finished before.
    pub(super) fn retry_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (path, m) in pending {
            let done = self.checkpoint.roll_forward(&m).and_then(|()| {
                for s in &m.partitions {
                    if s.topic == self.topic
                        && let Some(owned) = self.owned.get(&s.partition)
                    {
                        self.checkpoint.write_state(&owned.committed)?;
                    }
                }
                self.checkpoint.tidy(&path, &m)
            });
            match done {
                Ok(true) => {}
                Ok(false) => {
                    // Waits for the owner of another partition it names: keep it only while
                    // one of those partitions is ours, else that owner finishes it.
                    if m.partitions
                        .iter()
                        .any(|s| s.topic == self.topic && self.owned.contains_key(&s.partition))
                    {
                        self.pending.push((path, m));
                    }
                }
                Err(e) => {
                    tracing::error!("batch {} is committed but not finished yet ({e}); will retry", m.batch);
                    self.pending.push((path, m));
                }
            }
        }
    }

    /// Drops the in-flight batch; with `seek`, rewinds its partitions to the checkpoint.
    pub fn abandon<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>, seek: bool) -> Result<()> {
        self.batch = InFlight::default();
        if seek && let Err(e) = self.settle_from_table() {
            // Settled before the next commit instead; until then a commit of offsets the
            // table already holds still loses at the log (same txn app id).
            tracing::warn!("{e}; the batch is settled from the table before the next commit");
        }
        for (p, owned) in self.owned.iter_mut() {
            if owned.working.take().is_none() && owned.position == owned.committed.next_offset {
                continue;
            }
            owned.position = owned.committed.next_offset;
            owned.resumed_at = owned.stored.then_some(owned.position);
            if seek {
                let offset = if owned.stored {
                    Offset::Offset(owned.committed.next_offset)
                } else {
                    Offset::Beginning
                };
                consumer.seek(&self.topic, *p, offset, SEEK_TIMEOUT).map_err(|e| {
                    Error::Kafka(format!(
                        "cannot rewind {}/{p} to the checkpoint ({offset:?}): {e}",
                        self.topic
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Commits the in-flight batch, or abandons it (without seeking) if that fails; returns
    /// whether it was committed.
    pub fn commit_or_abandon<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> bool {
        match self.commit(consumer) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("{e}; the in-flight batch is abandoned (it will be read again)");
                let _ = self.abandon(consumer, false);
                false
            }
        }
    }
}
