//! The one-screen text form of `status`: a `Display` per part, and [`Status::render`] putting
//! them together with each part's failure.

use std::fmt::{self, Write as _};

use super::{ConsumerStatus, KafkaStatus, LakeStatus, PostgresStatus, Status, TableMaintenance};

impl Status {
    /// The one-screen text form.
    pub fn render(&self) -> String {
        let mut o = String::new();
        // A part read but failing (a process not running) shows what was read, then why.
        let failing = |o: &mut String, ok: bool, e: &Option<String>| {
            if let (false, Some(e)) = (ok, e) {
                let _ = match e.strip_prefix("not running: ") {
                    Some(why) => writeln!(o, "{:<11} NOT RUNNING: {why}", ""),
                    None => writeln!(o, "{:<11} FAILING: {e}", ""),
                };
            }
        };
        let unreachable = |o: &mut String, title: &str, e: &Option<String>| {
            let _ = writeln!(o, "{title:<11} UNREACHABLE: {}", e.as_deref().unwrap_or("no answer"));
        };
        let part = |o: &mut String, title: &str, value: Option<&dyn fmt::Display>, error: &Option<String>| {
            match value {
                Some(v) => {
                    let _ = write!(o, "{v}");
                }
                None => unreachable(o, title, error),
            }
        };
        part(&mut o, "PostgreSQL", self.postgres.value.as_ref().map(|v| v as _), &self.postgres.error);
        part(&mut o, "Producer", self.producer.value.as_ref().map(|v| v as _), &self.producer.error);
        if self.producer.value.is_some() {
            failing(&mut o, self.producer.ok, &self.producer.error);
        }
        if let Some(slot) = &self.slot {
            part(&mut o, "Slot", slot.value.as_ref().map(|v| v as _), &slot.error);
        }
        part(&mut o, "Kafka", self.kafka.value.as_ref().map(|v| v as _), &self.kafka.error);
        match &self.consumer.value {
            Some(c) => {
                let _ = write!(o, "{c}");
                failing(&mut o, self.consumer.ok, &self.consumer.error);
                if c.quarantined > 0 {
                    let _ = writeln!(
                        o,
                        "{:<11} quarantined {} (rejects no dead letter could carry: {}/quarantine)",
                        "", c.quarantined, c.checkpoint
                    );
                }
            }
            None => unreachable(&mut o, "Consumer", &self.consumer.error),
        }
        part(&mut o, "Lake", self.lake.value.as_ref().map(|v| v as _), &self.lake.error);
        o
    }
}

impl fmt::Display for PostgresStatus {
    /// The server and table, then rows and the insert rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<11} {} table {}", "PostgreSQL", self.server, self.table)?;
        writeln!(
            f,
            "{:<11} rows {}   inserted last minute {} ({:.1}/s)   newest created_at {}",
            "",
            self.rows,
            self.inserted_last_minute,
            self.insert_rate_per_second,
            self.newest_created_at.as_deref().unwrap_or("-")
        )
    }
}

impl fmt::Display for KafkaStatus {
    /// The topic, a line per partition, the group and dead letters, and partitions nobody reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<11} {} topic {} ({} messages)", "Kafka", self.brokers, self.topic, self.messages)?;
        for p in &self.partitions {
            let committed = p.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "{:<11} partition {}: {} messages, end {}, committed {committed}, lag {}",
                "",
                p.partition,
                p.messages,
                p.end_offset,
                p.lag.unwrap_or(0)
            )?;
        }
        let dlq = self.dlq_messages.map(|n| n.to_string()).unwrap_or_else(|| "no topic".into());
        writeln!(
            f,
            "{:<11} group {} lag {}   dead letters ({}) {dlq}",
            "", self.group_id, self.group_lag, self.dlq_topic
        )?;
        let unread: Vec<&super::PartitionStatus> = self.partitions.iter().filter(|p| p.unread).collect();
        if unread.is_empty() {
            return Ok(());
        }
        let since = unread
            .iter()
            .map(|p| p.seconds_since_commit)
            .min_by(|a, b| a.unwrap_or(f64::INFINITY).total_cmp(&b.unwrap_or(f64::INFINITY)));
        writeln!(
            f,
            "{:<11} UNREAD: partitions {} hold {} messages and nothing was committed {}: no live member of group {} \
             is reading them",
            "",
            unread.iter().map(|p| p.partition.to_string()).collect::<Vec<_>>().join(" "),
            unread.iter().filter_map(|p| p.lag).sum::<i64>(),
            match since.flatten() {
                Some(s) => format!("for {s:.0} s"),
                None => "yet".to_string(),
            },
            self.group_id
        )
    }
}

impl fmt::Display for ConsumerStatus {
    /// The checkpoint, then rows written, rejected, tombstones and replays dropped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<11} checkpoint {}", "Consumer", self.checkpoint)?;
        let reasons: Vec<String> =
            self.rejected.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
        writeln!(
            f,
            "{:<11} rows written {}   rate {:.1}/s   rejected {}{}   tombstones {}   replays dropped {}",
            "",
            self.rows_written,
            self.rate_per_second,
            self.rejected_total,
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
            self.tombstones,
            self.duplicates
        )
    }
}

impl fmt::Display for LakeStatus {
    /// The table or folder, a line per date, and a Delta table's upkeep.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = self.newest_file_age_seconds.map(|a| format!("{a:.0} s ago")).unwrap_or_else(|| "-".into());
        match self.version {
            Some(v) => writeln!(
                f,
                "{:<11} {} (Delta table version {v}, {} files, {} rows, last commit {age}, {} commits in the last \
                 minute)",
                "Lake", self.path, self.files, self.rows, self.commits_last_minute
            )?,
            None => writeln!(
                f,
                "{:<11} {} ({} files, {} rows, newest file {age})",
                "Lake", self.path, self.files, self.rows
            )?,
        }
        for p in &self.partitions {
            writeln!(f, "{:<11} date={}  {} files  {} rows", "", p.date, p.files, p.rows)?;
        }
        match &self.maintenance {
            Some(m) => write!(f, "{m}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for TableMaintenance {
    /// A Delta table's upkeep: compaction, vacuum, checkpoint, current table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compaction = match &self.last_compaction {
            Some(c) => format!(
                "last compaction {:.0} s ago (date={}: {} files, {} bytes into {}, {} bytes)",
                c.age_seconds, c.date, c.files_in, c.bytes_in, c.files_out, c.bytes_out
            ),
            None => "no compaction among the recent commits".into(),
        };
        let vacuum = self
            .last_vacuum_age_seconds
            .map_or("no vacuum among them".into(), |a| format!("last vacuum {a:.0} s ago"));
        let checkpoint = self
            .checkpoint_version
            .map_or("no log checkpoint yet".into(), |v| format!("log checkpoint at version {v}"));
        writeln!(
            f,
            "{:<11} {} small files ({} in the fullest date); {compaction}; {vacuum}; {checkpoint}",
            "Upkeep", self.small_files, self.most_small_files_in_a_date
        )?;
        if let Some(c) = &self.current {
            let version = c.version.map_or("not created yet".into(), |v| format!("version {v}"));
            writeln!(
                f,
                "{:<11} {} ({version}, {} messages behind the change table)",
                "Current", c.path, c.lag_messages
            )?;
        }
        Ok(())
    }
}
