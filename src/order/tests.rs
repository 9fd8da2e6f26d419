use super::*;

const SEED: &str = r#"{"order_id": 101, "customer_name": "John Doe", "restaurant_name": "Burger Junction", "item": "Veg Burger", "amount": 220.00, "order_status": "PLACED", "created_at": "2025-01-18T12:24:00Z"}"#;

fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

fn seed_order() -> Order<'static> {
    Order {
        order_id: 101,
        customer_name: Some("John Doe".into()),
        restaurant_name: Some("Burger Junction".into()),
        item: Some("Veg Burger".into()),
        amount: Some(Decimal::from_str("220.00").unwrap()),
        order_status: Some("PLACED".into()),
        created_at: ts("2025-01-18 12:24:00"),
    }
}

fn parsed(json: &str) -> Order<'static> {
    Order::parse(json.as_bytes()).unwrap_or_else(|r| panic!("{json}: {r}")).into_owned()
}

fn reject(json: &str) -> Reject {
    match Order::parse(json.as_bytes()) {
        Ok(o) => panic!("expected a reject for {json}, got {o:?}"),
        Err(r) => r,
    }
}

/// The seed message with one field's raw JSON replaced; an empty value removes the field.
fn with(field: &str, value: &str) -> String {
    let parts: Vec<String> = [
        ("order_id", "101"),
        ("customer_name", "\"John Doe\""),
        ("restaurant_name", "\"Burger Junction\""),
        ("item", "\"Veg Burger\""),
        ("amount", "220.00"),
        ("order_status", "\"PLACED\""),
        ("created_at", "\"2025-01-18T12:24:00Z\""),
    ]
    .iter()
    .filter(|(k, _)| !(*k == field && value.is_empty()))
    .map(|(k, v)| format!("\"{k}\": {}", if *k == field { value } else { v }))
    .collect();
    format!("{{{}}}", parts.join(", "))
}

#[test]
fn writes_exactly_the_seed_message() {
    assert_eq!(seed_order().to_json(), SEED);
}

#[test]
fn nulls_fractions_and_escapes() {
    let mut o = seed_order();
    o.customer_name = None;
    o.item = Some("Veg \"Burger\"\n".into());
    o.amount = Some(Decimal::from_str("5").unwrap());
    o.created_at = ts("2025-01-18 12:24:00.5");
    assert_eq!(
        o.to_json(),
        r#"{"order_id": 101, "customer_name": null, "restaurant_name": "Burger Junction", "item": "Veg \"Burger\"\n", "amount": 5.00, "order_status": "PLACED", "created_at": "2025-01-18T12:24:00.500000Z"}"#
    );
    let back = parsed(&o.to_json());
    assert_eq!(back, o);
}

#[test]
fn parses_the_seed_message() {
    let o = Order::parse(SEED.as_bytes()).unwrap();
    assert_eq!(o, seed_order());
    assert_eq!(o.amount.unwrap().to_string(), "220.00");
    assert!(matches!(o.customer_name, Some(Cow::Borrowed(_))));
}

#[test]
fn offsets_are_converted_to_utc_and_naive_is_utc() {
    let o = parsed(&with("created_at", r#""2025-01-18T23:30:00-05:00""#));
    assert_eq!(o.created_at, ts("2025-01-19 04:30:00"));
    let o = parsed(&with("created_at", r#""2025-01-19T01:15:00+05:30""#));
    assert_eq!(o.created_at, ts("2025-01-18 19:45:00"));
    let o = parsed(&with("created_at", r#""2025-01-18 12:24:00.123456""#));
    assert_eq!(o.created_at, ts("2025-01-18 12:24:00.123456"));
    let o = parsed(&with("created_at", r#""2025-01-18T12:24:00""#));
    assert_eq!(o.created_at, ts("2025-01-18 12:24:00"));
    // Nanoseconds are cut to the lake's microseconds.
    let o = parsed(&with("created_at", r#""2025-01-18T12:24:00.123456789Z""#));
    assert_eq!(o.created_at, ts("2025-01-18 12:24:00.123456"));
}

#[test]
fn amounts_keep_two_decimals() {
    for (raw, want) in [
        ("220", "220.00"),
        ("220.5", "220.50"),
        ("0.01", "0.01"),
        ("99999999.99", "99999999.99"),
        ("2.2e2", "220.00"),
        ("220.000", "220.00"),
    ] {
        let o = parsed(&with("amount", raw));
        assert_eq!(o.amount.unwrap().to_string(), want, "{raw}");
    }
}

#[test]
fn extra_fields_are_ignored() {
    let json = SEED.replace("{\"order_id\"", "{\"coupon\": {\"x\": [1]}, \"order_id\"");
    assert_eq!(parsed(&json), seed_order());
}

#[test]
fn every_reject_reason() {
    let cases: Vec<(String, RejectReason)> = vec![
        ("not json".into(), RejectReason::InvalidJson),
        ("[1, 2]".into(), RejectReason::InvalidJson),
        ("".into(), RejectReason::InvalidJson),
        (SEED[..40].to_string(), RejectReason::InvalidJson),
        (with("order_id", "null"), RejectReason::NullOrderId),
        (with("order_id", ""), RejectReason::NullOrderId),
        (with("order_id", "\"101\""), RejectReason::WrongType),
        (with("order_id", "1.5"), RejectReason::WrongType),
        (with("amount", "0"), RejectReason::NonPositiveAmount),
        (with("amount", "-12.50"), RejectReason::NonPositiveAmount),
        (with("amount", "0.00"), RejectReason::NonPositiveAmount),
        (with("amount", "\"220.00\""), RejectReason::WrongType),
        (with("amount", "null"), RejectReason::NullAmount),
        (with("amount", ""), RejectReason::MissingField),
        (with("amount", "100000000.00"), RejectReason::AmountOutOfRange),
        (with("amount", "1.234"), RejectReason::AmountOutOfRange),
        (with("amount", "1e400"), RejectReason::AmountOutOfRange),
        (with("created_at", "\"yesterday\""), RejectReason::InvalidCreatedAt),
        (with("created_at", "\"2025-02-30T00:00:00Z\""), RejectReason::InvalidCreatedAt),
        (with("created_at", "\"2025-01-18\""), RejectReason::InvalidCreatedAt),
        (with("created_at", "1737203040"), RejectReason::WrongType),
        (with("created_at", "null"), RejectReason::MissingField),
        (with("customer_name", "42"), RejectReason::WrongType),
        (with("item", ""), RejectReason::MissingField),
    ];
    for (json, want) in cases {
        let r = reject(&json);
        assert_eq!(r.reason, want, "{json}: {r}");
        assert!(!r.detail.is_empty());
    }
}

#[test]
fn null_texts_are_valid() {
    let o = parsed(&with("order_status", "null"));
    assert_eq!(o.order_status, None);
}

#[test]
fn reasons_round_trip_through_their_labels() {
    for r in RejectReason::ALL {
        assert_eq!(r.as_str().parse::<RejectReason>(), Ok(r));
    }
}

#[test]
fn the_lake_schema_is_the_seven_columns_then_the_four_change_columns() {
    let schema = arrow_schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, LAKE_COLUMNS);
    assert_eq!(names[..7], COLUMNS);
    let tail: Vec<(DataType, bool)> =
        schema.fields()[7..].iter().map(|f| (f.data_type().clone(), f.is_nullable())).collect();
    assert_eq!(
        tail,
        [
            (DataType::Utf8, false),
            (DataType::Int64, true),
            (DataType::Int32, true),
            (DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        ]
    );
}

fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> {
    pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes())))
}

#[test]
fn change_columns_come_from_the_headers() {
    // Poll mode: no change header, an insert with no log position.
    let poll = [("orderstream.source", "poll:db.t"), ("orderstream.seq", "7")];
    assert_eq!(Change::from_headers(headers(&poll)), Ok(Change::default()));
    assert_eq!(Change::default().op, Op::Insert);

    let logical = [
        ("orderstream.op", "d"),
        ("orderstream.lsn", "1/16B3748"),
        ("orderstream.change_index", "2"),
        ("orderstream.commit_ts", "2026-11-26T08:00:00.000001+02:00"),
    ];
    let c = Change::from_headers(headers(&logical)).unwrap();
    assert_eq!(
        c,
        Change {
            op: Op::Delete,
            lsn: Some(0x1_016B_3748),
            change_index: Some(2),
            committed_at: Some(
                DateTime::parse_from_rfc3339("2026-11-26T06:00:00.000001Z").unwrap().timestamp_micros()
            ),
        }
    );
}

#[test]
fn malformed_change_headers_are_invalid_header_rejects_naming_the_header() {
    for (pairs, detail) in [
        (
            vec![("orderstream.lsn", "0/xyz")],
            "header orderstream.lsn: `0/xyz` is not an LSN (like 0/16B3748)",
        ),
        (vec![("orderstream.op", "x")], "header orderstream.op: `x` is not an operation (c, u, d, r or t)"),
        (
            vec![("orderstream.change_index", "-1")],
            "header orderstream.change_index: `-1` is not a change index (an integer ≥ 0)",
        ),
        (
            vec![("orderstream.commit_ts", "today")],
            "header orderstream.commit_ts: `today` is not an RFC 3339 time",
        ),
        // Fits the text form but not the lake's INT64 column.
        (
            vec![("orderstream.lsn", "80000000/0")],
            "header orderstream.lsn: 80000000/0 is beyond the lake's int64 lsn column",
        ),
    ] {
        let r = Change::from_headers(headers(&pairs)).unwrap_err();
        assert_eq!((r.reason, r.detail.as_str()), (RejectReason::InvalidHeader, detail));
    }
    let r = Change::from_headers([("orderstream.op", Some(b"\xff".as_slice()))]).unwrap_err();
    assert_eq!(
        (r.reason, r.detail.as_str()),
        (RejectReason::InvalidHeader, "header orderstream.op is not UTF-8")
    );
    // The largest LSN the column holds.
    let max = [("orderstream.lsn", "7FFFFFFF/FFFFFFFF")];
    assert_eq!(Change::from_headers(headers(&max)).unwrap().lsn, Some(i64::MAX));
    assert_eq!("invalid_header".parse::<RejectReason>(), Ok(RejectReason::InvalidHeader));
}

#[test]
fn write_utc_spells_every_timestamp_as_format_utc() {
    let cases = [
        "2025-01-18T12:24:00",
        "2025-01-18T12:24:00.5",
        "2025-12-31T23:59:59.999999",
        "0001-01-01T00:00:00.000001",
        "9999-12-31T23:59:59",
        "1970-01-01T00:00:00",
    ];
    for c in cases {
        let ts: NaiveDateTime = c.parse().unwrap();
        let mut out = Vec::new();
        write_utc(&mut out, &ts);
        assert_eq!(String::from_utf8(out).unwrap(), format_utc(&ts), "{c}");
    }
    let far = chrono::NaiveDate::from_ymd_opt(12345, 6, 7).unwrap().and_hms_opt(1, 2, 3).unwrap();
    let mut out = Vec::new();
    write_utc(&mut out, &far);
    assert_eq!(String::from_utf8(out).unwrap(), format_utc(&far));
}
