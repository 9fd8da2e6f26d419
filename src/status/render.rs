//! The one-screen text form of `status`.

use std::fmt::Write as _;

use super::Status;

impl Status {
    /// The one-screen text form.
    pub fn render(&self) -> String {
        let mut o = String::new();
        // A part read but failing (a process not running) shows what was read, then why.
        let failing = |o: &mut String, title: &str, ok: bool, e: &Option<String>| {
            if let (false, Some(e)) = (ok, e) {
                let _ = match e.strip_prefix("not running: ") {
                    Some(why) => writeln!(o, "{title:<11} NOT RUNNING: {why}"),
                    None => writeln!(o, "{title:<11} FAILING: {e}"),
                };
            }
        };
        let unreachable = |o: &mut String, title: &str, e: &Option<String>| {
            let _ = writeln!(o, "{title:<11} UNREACHABLE: {}", e.as_deref().unwrap_or("no answer"));
        };
        match &self.postgres.value {
            Some(p) => {
                let _ = writeln!(o, "{:<11} {} table {}", "PostgreSQL", p.server, p.table);
                let _ = writeln!(
                    o,
                    "{:<11} rows {}   inserted last minute {} ({:.1}/s)   newest created_at {}",
                    "",
                    p.rows,
                    p.inserted_last_minute,
                    p.insert_rate_per_second,
                    p.newest_created_at.as_deref().unwrap_or("-")
                );
            }
            None => unreachable(&mut o, "PostgreSQL", &self.postgres.error),
        }
        match &self.producer.value {
            Some(p) => {
                let _ = write!(o, "{p}");
                failing(&mut o, "", self.producer.ok, &self.producer.error);
            }
            None => unreachable(&mut o, "Producer", &self.producer.error),
        }
        if let Some(slot) = &self.slot {
            match &slot.value {
                Some(s) => {
                    let _ = write!(o, "{s}");
                }
                None => unreachable(&mut o, "Slot", &slot.error),
            }
        }
        match &self.kafka.value {
            Some(k) => {
                let _ =
                    writeln!(o, "{:<11} {} topic {} ({} messages)", "Kafka", k.brokers, k.topic, k.messages);
                for p in &k.partitions {
                    let committed = p.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                    let _ = writeln!(
                        o,
                        "{:<11} partition {}: {} messages, end {}, committed {committed}, lag {}",
                        "",
                        p.partition,
                        p.messages,
                        p.end_offset,
                        p.lag.unwrap_or(0)
                    );
                }
                let dlq = k.dlq_messages.map(|n| n.to_string()).unwrap_or_else(|| "no topic".into());
                let _ = writeln!(
                    o,
                    "{:<11} group {} lag {}   dead letters ({}) {dlq}",
                    "", k.group_id, k.group_lag, k.dlq_topic
                );
                let unread: Vec<&super::PartitionStatus> = k.partitions.iter().filter(|p| p.unread).collect();
                if !unread.is_empty() {
                    let since = unread
                        .iter()
                        .map(|p| p.seconds_since_commit)
                        .min_by(|a, b| a.unwrap_or(f64::INFINITY).total_cmp(&b.unwrap_or(f64::INFINITY)));
                    let _ = writeln!(
                        o,
                        "{:<11} UNREAD: partitions {} hold {} messages and nothing was committed {}: no live \
                         member of group {} is reading them",
                        "",
                        unread.iter().map(|p| p.partition.to_string()).collect::<Vec<_>>().join(" "),
                        unread.iter().filter_map(|p| p.lag).sum::<i64>(),
                        match since.flatten() {
                            Some(s) => format!("for {s:.0} s"),
                            None => "yet".to_string(),
                        },
                        k.group_id
                    );
                }
            }
            None => unreachable(&mut o, "Kafka", &self.kafka.error),
        }
        match &self.consumer.value {
            Some(c) => {
                let _ = writeln!(o, "{:<11} checkpoint {}", "Consumer", c.checkpoint);
                let reasons: Vec<String> =
                    c.rejected.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
                let _ = writeln!(
                    o,
                    "{:<11} rows written {}   rate {:.1}/s   rejected {}{}   tombstones {}   replays dropped {}",
                    "",
                    c.rows_written,
                    c.rate_per_second,
                    c.rejected_total,
                    if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
                    c.tombstones,
                    c.duplicates
                );
                failing(&mut o, "", self.consumer.ok, &self.consumer.error);
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
        match &self.lake.value {
            Some(l) => {
                let age =
                    l.newest_file_age_seconds.map(|a| format!("{a:.0} s ago")).unwrap_or_else(|| "-".into());
                let _ = match l.version {
                    Some(v) => writeln!(
                        o,
                        "{:<11} {} (Delta table version {v}, {} files, {} rows, last commit {age}, {} commits in the \
                         last minute)",
                        "Lake", l.path, l.files, l.rows, l.commits_last_minute
                    ),
                    None => writeln!(
                        o,
                        "{:<11} {} ({} files, {} rows, newest file {age})",
                        "Lake", l.path, l.files, l.rows
                    ),
                };
                for p in &l.partitions {
                    let _ = writeln!(o, "{:<11} date={}  {} files  {} rows", "", p.date, p.files, p.rows);
                }
                if let Some(m) = &l.maintenance {
                    render_maintenance(&mut o, m);
                }
            }
            None => unreachable(&mut o, "Lake", &self.lake.error),
        }
        o
    }
}

/// A Delta table's upkeep: compaction, vacuum, checkpoint, current table.
fn render_maintenance(o: &mut String, m: &super::TableMaintenance) {
    let compaction = match &m.last_compaction {
        Some(c) => format!(
            "last compaction {:.0} s ago (date={}: {} files, {} bytes into {}, {} bytes)",
            c.age_seconds, c.date, c.files_in, c.bytes_in, c.files_out, c.bytes_out
        ),
        None => "no compaction among the recent commits".into(),
    };
    let vacuum = m
        .last_vacuum_age_seconds
        .map_or("no vacuum among them".into(), |a| format!("last vacuum {a:.0} s ago"));
    let checkpoint = m
        .checkpoint_version
        .map_or("no log checkpoint yet".into(), |v| format!("log checkpoint at version {v}"));
    let _ = writeln!(
        o,
        "{:<11} {} small files ({} in the fullest date); {compaction}; {vacuum}; {checkpoint}",
        "Upkeep", m.small_files, m.most_small_files_in_a_date
    );
    if let Some(c) = &m.current {
        let version = c.version.map_or("not created yet".into(), |v| format!("version {v}"));
        let _ = writeln!(
            o,
            "{:<11} {} ({version}, {} messages behind the change table)",
            "Current", c.path, c.lag_messages
        );
    }
}
