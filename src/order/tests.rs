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
        (with("amount", "null"), RejectReason::MissingField),
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
