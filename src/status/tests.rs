//! `status`'s own checks (the rest is tested against the live stack in tests/pipeline.rs).
use super::*;

fn partition(partition: i32, lag: i64) -> PartitionStatus {
    PartitionStatus {
        partition,
        messages: 100,
        end_offset: 100,
        committed: Some(100 - lag),
        lag: Some(lag),
        seconds_since_commit: None,
        unread: false,
    }
}

#[test]
fn partitions_with_lag_and_no_recent_commit_are_unread() {
    let dir = std::env::temp_dir().join(format!("orderstream-status-unread-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let old = SystemTime::now() - Duration::from_secs(120);
    for p in [0, 1] {
        let f = std::fs::File::create(dir.join("state").join(format!("t-{p}.json"))).unwrap();
        f.set_modified(old).unwrap();
    }
    std::fs::File::create(dir.join("state").join("t-2.json")).unwrap();
    let mut k = KafkaStatus {
        brokers: "b".into(),
        topic: "t".into(),
        messages: 400,
        // 0: lag, old commit; 1: old commit, no lag; 2: lag, fresh commit; 3: lag, never committed.
        partitions: vec![partition(0, 5), partition(1, 0), partition(2, 5), partition(3, 5)],
        group_id: "g".into(),
        group_lag: 15,
        stall_window_seconds: 90.0,
        dlq_topic: "d".into(),
        dlq_messages: None,
    };
    mark_unread(&mut k, &dir);
    let unread: Vec<(i32, bool)> = k.partitions.iter().map(|p| (p.partition, p.unread)).collect();
    assert_eq!(unread, [(0, true), (1, false), (2, false), (3, true)]);
    assert!(k.partitions[0].seconds_since_commit.is_some_and(|s| s >= 119.0));
    assert_eq!(k.partitions[3].seconds_since_commit, None);
    let status = Status {
        postgres: Part::down("x".into()),
        producer: Part::down("x".into()),
        slot: None,
        kafka: Ok::<_, Error>(k).into(),
        consumer: Part::down("x".into()),
        lake: Part::down("x".into()),
    };
    let text = status.render();
    let line = text.lines().find(|l| l.contains("UNREAD")).unwrap_or_default().trim().to_string();
    assert!(
        line.starts_with("UNREAD: partitions 0 3 hold 10 messages and nothing was committed for 1"),
        "{text}"
    );
    assert!(line.ends_with(" s: no live member of group g is reading them"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
