use super::*;
use chrono::NaiveDate;

fn ts(s: &str) -> NaiveDateTime {
    parse_ts(s).unwrap()
}

#[test]
fn position_round_trips_through_the_state_lines() {
    let mut pos =
        PollPosition { watermark: Some((ts("2025-01-18 12:33:00"), 110)), ..PollPosition::default() };
    pos.open.insert(ts("2025-01-18 12:30:00.250000"), [107, 111].into());
    pos.open.insert(ts("2025-01-18 12:40:00"), BTreeSet::new());
    let lines = PollSource::encode(&pos);
    assert_eq!(
        lines,
        [
            "2025-01-18 12:33:00",
            "order_id=110",
            "open=2025-01-18 12:30:00.250000 ids=107,111",
            "open=2025-01-18 12:40:00 ids="
        ]
    );
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(PollSource::decode(&lines).unwrap(), pos);
}

#[test]
fn a_bc_watermark_round_trips() {
    // A BC row is dead-lettered in its turn, and its time becomes the watermark.
    let bc = NaiveDate::from_ymd_opt(-43, 3, 15).unwrap().and_hms_opt(12, 0, 0).unwrap();
    let pos = PollPosition { watermark: Some((bc, 7)), ..PollSource::beginning() };
    let lines = PollSource::encode(&pos);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(PollSource::decode(&lines).unwrap(), pos, "{lines:?}");
}

#[test]
fn the_seed_file_means_everything_at_or_before_it() {
    let pos = PollSource::decode(&["2025-01-18 12:33:00"]).unwrap();
    assert_eq!(pos.watermark, Some((ts("2025-01-18 12:33:00"), i64::MAX)));
}

#[test]
fn corrupt_lines_are_named() {
    assert!(PollSource::decode(&["yesterday"]).unwrap_err().starts_with("line 1"));
    assert!(PollSource::decode(&["2025-01-18 12:33:00", "order_id=x"]).unwrap_err().starts_with("line 2"));
    assert!(PollSource::decode(&["2025-01-18 12:33:00", "what"]).unwrap_err().starts_with("line 2"));
}

#[test]
fn covers_the_watermark_and_tracked_ids() {
    let mut pos =
        PollPosition { watermark: Some((ts("2025-01-18 12:33:00"), 110)), ..PollPosition::default() };
    pos.open.insert(ts("2025-01-18 12:40:00"), [120].into());
    let order = |id: i64, at: &str| (ts(at), id);
    assert!(PollSource::covers(&pos, &order(110, "2025-01-18 12:33:00")));
    assert!(PollSource::covers(&pos, &order(5, "2025-01-18 12:00:00")));
    assert!(!PollSource::covers(&pos, &order(111, "2025-01-18 12:33:00")));
    assert!(PollSource::covers(&pos, &order(120, "2025-01-18 12:40:00")));
    assert!(!PollSource::covers(&pos, &order(121, "2025-01-18 12:40:00")));
    // A tracked start time at or below the watermark: its unpublished orders are read again.
    pos.open.insert(ts("2025-01-18 12:30:00"), [107].into());
    assert!(PollSource::covers(&pos, &order(107, "2025-01-18 12:30:00")));
    assert!(!PollSource::covers(&pos, &order(108, "2025-01-18 12:30:00")));
}
