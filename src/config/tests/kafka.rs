//! kafka.properties: refused, honoured and passed-through settings, per client.

use super::*;

/// What librdkafka itself will use for `name` in this client's settings.
fn effective(client: Client, cfg: &Config, name: &str) -> String {
    client.config(&cfg.kafka).create_native_config().unwrap().get(name).unwrap()
}

// Over 80 lines: a table of every refused setting and its reason, one row each.
#[test]
fn refused_kafka_properties_are_named_with_the_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "bootstrap.servers",
            "other:9092",
            "orderstream sets this to kafka.brokers because every client must reach the brokers that key names; \
             delete it",
        ),
        (
            "group.id",
            "mine",
            "orderstream sets this to kafka.group_id (orderstream-reader for the producer's recovery reader) \
             because consume and status must use the group that key names; delete it",
        ),
        (
            "group.instance.id",
            "me",
            "orderstream sets this to kafka.member_name on the consumer alone because no other client may join \
             the group under the consumer's name (a second member with one instance id fences the first); \
             delete it",
        ),
        (
            "acks",
            "1",
            "orderstream sets this to all because both producers are idempotent, and a message acknowledged by \
             the leader alone is lost when that leader fails; delete it",
        ),
        (
            "enable.idempotence",
            "false",
            "orderstream sets this to true on both producers because a retried send must not write a message \
             twice or out of order; delete it",
        ),
        (
            "enable.gapless.guarantee",
            "false",
            "orderstream sets this to true on the orders producer because a message that fails inside a batch \
             must stop the producer, never leave a hole in a partition; delete it",
        ),
        (
            "partitioner",
            "consistent_random",
            "orderstream sets this to murmur2_random on the orders producer because an order id must stay in \
             the partition its earlier changes are in (the Java client's choice), or they lose their order; \
             delete it",
        ),
        (
            "transactional.id",
            "tx",
            "orderstream leaves this unset because exactly once comes from the idempotent producer and its \
             recovery, and a transactional producer cannot send outside a transaction; delete it",
        ),
        (
            "isolation.level",
            "read_uncommitted",
            "orderstream sets this to read_committed because no aborted message may reach the lake or the \
             producer's recovery; delete it",
        ),
        (
            "enable.auto.commit",
            "true",
            "orderstream sets this to false because the consumer commits offsets only together with a written \
             lake batch, and the readers commit nothing; delete it",
        ),
        (
            "enable.auto.offset.store",
            "true",
            "orderstream sets this to false because the consumer stores offsets only together with a written \
             lake batch; delete it",
        ),
        (
            "auto.offset.reset",
            "latest",
            "orderstream sets this to earliest because a new group or a recovery must start at the first \
             message, never skip to the end; delete it",
        ),
        (
            "enable.partition.eof",
            "true",
            "orderstream sets this to true on the producer's recovery reader and false on the consumer because \
             the recovery stops at the end of every partition and the consumer never does; delete it",
        ),
    ];
    for (name, value, why) in cases {
        let e = err(&with_properties(&format!("    {name}: \"{value}\"\n")), &[]);
        assert_eq!(e, format!("test.yml: kafka.properties.{name}: {why}"));
    }
    // Every refused property has its case above.
    let tested: BTreeSet<&str> = cases.iter().map(|c| c.0).collect();
    let refused: BTreeSet<&str> = clients::REFUSED.iter().map(|r| r.0).collect();
    assert_eq!(tested, refused);

    // The example, from the environment: named by its variable.
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PROPERTIES__ACKS", "1")]);
    assert_eq!(
        e,
        "ORDERSTREAM__KAFKA__PROPERTIES__ACKS (kafka.properties.acks): orderstream sets this to all because both \
         producers are idempotent, and a message acknowledged by the leader alone is lost when that leader \
         fails; delete it"
    );
}

#[test]
fn member_name_is_the_consumers_group_instance_id_and_no_other_clients() {
    let cfg = load(
        &GOOD.replace(
            "  topic: \"ROLL001_food_orders_raw\"\n",
            "  topic: \"ROLL001_food_orders_raw\"\n  member_name: \" orders-host-1 \"\n",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(cfg.kafka.member_name.as_deref(), Some("orders-host-1"));
    assert_eq!(effective(Client::Consumer, &cfg, "group.instance.id"), "orders-host-1");
    for client in [Client::Reader, Client::Status] {
        assert_eq!(client.config(&cfg.kafka).get("group.instance.id"), None, "{client:?}");
    }
    // Without it: dynamic membership.
    assert_eq!(Client::Consumer.config(&load(GOOD, &[]).unwrap().kafka).get("group.instance.id"), None);
    let e = err(
        &GOOD.replace(
            "  topic: \"ROLL001_food_orders_raw\"\n",
            "  topic: \"ROLL001_food_orders_raw\"\n  member_name: \"a b\"\n",
        ),
        &[],
    );
    assert_eq!(e, "test.yml: kafka.member_name: `a b` contains ` `; member names use only a-z A-Z 0-9 . _ -");
}

#[test]
fn another_name_of_a_refused_property_is_refused_too() {
    let e = err(&with_properties("    request.required.acks: 1\n"), &[]);
    assert_eq!(
        e,
        "test.yml: kafka.properties.request.required.acks: is another name for acks: orderstream sets this to \
         all because both producers are idempotent, and a message acknowledged by the leader alone is lost \
         when that leader fails; delete it"
    );
    let e = err(&with_properties("    metadata.broker.list: \"other:9092\"\n"), &[]);
    assert!(
        e.starts_with(
            "test.yml: kafka.properties.metadata.broker.list: is another name for bootstrap.servers: "
        ),
        "{e}"
    );
    let e = err(&with_properties("    auto.commit.enable: \"true\"\n"), &[]);
    assert!(e.starts_with(
        "test.yml: kafka.properties.auto.commit.enable: is another name for enable.auto.commit: "
    ));
}

#[test]
fn two_names_of_one_setting_are_refused() {
    let e = err(&with_properties("    linger.ms: 10\n    queue.buffering.max.ms: 20\n"), &[]);
    assert_eq!(
        e,
        "test.yml: kafka.properties.linger.ms: names the same setting as kafka.properties.queue.buffering.max.ms; \
         delete one"
    );
    let e = err(&with_properties("    compression.codec: lz4\n    compression.type: zstd\n"), &[]);
    assert_eq!(
        e,
        "test.yml: kafka.properties.compression.codec: names the same setting as kafka.properties.compression.type; \
         delete one"
    );
}

/// Every property orderstream chooses but lets `kafka.properties` change, with a valid value
/// different from ours.
const HONOURED: &[(&str, &str)] = &[
    ("client.id", "mine"),
    ("broker.address.family", "v4"),
    ("message.timeout.ms", "60000"),
    ("linger.ms", "20"),
    ("batch.num.messages", "500"),
    ("queue.buffering.max.messages", "1000"),
    ("fetch.wait.max.ms", "200"),
    ("partition.assignment.strategy", "roundrobin"),
    ("fetch.queue.backoff.ms", "30"),
    ("queued.max.messages.kbytes", "4096"),
    ("statistics.interval.ms", "0"),
    ("heartbeat.interval.ms", "1000"),
];

#[test]
fn honoured_kafka_properties_reach_every_client() {
    let lines: String = HONOURED.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    let cfg = load(&with_properties(&lines), &[]).unwrap();
    for client in Client::ALL {
        for (name, value) in HONOURED {
            assert_eq!(effective(client, &cfg, name), *value, "{name} of the {}", client.name());
        }
    }
    // Every choice of ours that a user may change is in HONOURED, so none is left untested.
    let ours: BTreeSet<&str> = clients::COMMON_DEFAULTS
        .iter()
        .chain(Client::ALL.iter().flat_map(|c| c.defaults()))
        .map(|d| d.0)
        .chain(["heartbeat.interval.ms"])
        .collect();
    let tested: BTreeSet<&str> = HONOURED.iter().map(|h| h.0).collect();
    assert_eq!(ours, tested);
}

#[test]
fn without_kafka_properties_each_client_gets_our_choices() {
    let cfg = load(GOOD, &[]).unwrap();
    let cases: &[(Client, &str, &str)] = &[
        (Client::Producer, "linger.ms", "5"),
        (Client::Producer, "message.timeout.ms", "0"),
        (Client::Producer, "batch.num.messages", "10000"),
        (Client::Producer, "acks", "-1"),
        (Client::Producer, "partitioner", "murmur2_random"),
        (Client::Producer, "enable.gapless.guarantee", "true"),
        (Client::DeadLetters, "linger.ms", "5"),
        (Client::DeadLetters, "message.timeout.ms", "300000"),
        (Client::DeadLetters, "acks", "-1"),
        (Client::DeadLetters, "partitioner", "consistent_random"),
        (Client::Reader, "fetch.wait.max.ms", "100"),
        (Client::Reader, "enable.partition.eof", "true"),
        (Client::Reader, "group.id", "orderstream-reader"),
        (Client::Consumer, "fetch.wait.max.ms", "50"),
        (Client::Consumer, "enable.partition.eof", "false"),
        (Client::Consumer, "isolation.level", "read_committed"),
        (Client::Consumer, "statistics.interval.ms", "5000"),
        (Client::Consumer, "group.id", "orderstream_ROLL001_food_orders_raw"),
        (Client::Status, "group.id", "orderstream_ROLL001_food_orders_raw"),
        (Client::Admin, "client.id", "orderstream"),
        (Client::Admin, "bootstrap.servers", "127.0.0.1:9092"),
    ];
    for (client, name, value) in cases {
        assert_eq!(effective(*client, &cfg, name), *value, "{name} of the {}", client.name());
    }
    // Every setting orderstream makes on any client is either refused or one a user may change.
    let changeable: BTreeSet<&str> = HONOURED.iter().map(|h| h.0).collect();
    for client in Client::ALL {
        for name in client.config(&cfg.kafka).config_map().keys() {
            assert!(
                clients::refusal(name).is_some() || changeable.contains(name),
                "{name} of the {} is neither refused nor honoured",
                client.name()
            );
        }
    }
}

#[test]
fn the_heartbeat_follows_a_shortened_session_unless_set() {
    let cfg = load(&with_properties("    session.timeout.ms: 3000\n"), &[]).unwrap();
    assert_eq!(effective(Client::Consumer, &cfg, "heartbeat.interval.ms"), "1500");
    assert_eq!(effective(Client::Consumer, &cfg, "session.timeout.ms"), "3000");
    let cfg = load(&with_properties("    session.timeout.ms: 3000\n    heartbeat.interval.ms: 500\n"), &[])
        .unwrap();
    assert_eq!(effective(Client::Consumer, &cfg, "heartbeat.interval.ms"), "500");
}

#[test]
fn another_name_of_an_honoured_property_replaces_our_choice() {
    let cfg = load(&with_properties("    queue.buffering.max.ms: 20\n    delivery.timeout.ms: 60000\n"), &[])
        .unwrap();
    assert_eq!(cfg.kafka.properties.get("linger.ms").map(String::as_str), Some("20"));
    assert_eq!(cfg.kafka.properties.get("message.timeout.ms").map(String::as_str), Some("60000"));
    for client in [Client::Producer, Client::DeadLetters] {
        assert_eq!(effective(client, &cfg, "linger.ms"), "20", "{}", client.name());
        assert_eq!(effective(client, &cfg, "message.timeout.ms"), "60000", "{}", client.name());
    }
}

#[test]
fn transport_properties_pass_through_to_every_client() {
    let cfg = load(
        &with_properties(
            "    security.protocol: sasl_plaintext\n    sasl.mechanism: PLAIN\n    sasl.username: u\n    \
             sasl.password: p\n    socket.keepalive.enable: true\n",
        ),
        &[],
    )
    .unwrap();
    for client in Client::ALL {
        assert_eq!(effective(client, &cfg, "security.protocol"), "sasl_plaintext", "{}", client.name());
        assert_eq!(effective(client, &cfg, "sasl.mechanisms"), "PLAIN", "{}", client.name());
        assert_eq!(effective(client, &cfg, "sasl.username"), "u", "{}", client.name());
        assert_eq!(effective(client, &cfg, "socket.keepalive.enable"), "true", "{}", client.name());
    }
}

#[test]
fn settings_librdkafka_refuses_together_are_configuration_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "    message.timeout.ms: 3\n",
            "test.yml: kafka.properties.message.timeout.ms: librdkafka cannot build the orders producer: \
             `message.timeout.ms` must be greater than `linger.ms`",
        ),
        (
            "    max.in.flight.requests.per.connection: 10\n",
            "test.yml: kafka.properties.max.in.flight.requests.per.connection: librdkafka cannot build the orders \
             producer: `max.in.flight` must be set <= 5 when `enable.idempotence` is true",
        ),
        (
            "    retries: 0\n",
            "test.yml: kafka.properties.retries: librdkafka cannot build the orders producer: `retries` must be \
             set >= 1 when `enable.idempotence` is true",
        ),
    ];
    for (lines, want) in cases {
        assert_eq!(err(&with_properties(lines), &[]), *want, "{lines}");
    }
    // Only the dead-letter producer keeps librdkafka's 300 s message timeout; named by variable.
    let e = err(GOOD, &[("ORDERSTREAM__KAFKA__PROPERTIES__LINGER_MS", "400000")]);
    assert_eq!(
        e,
        "ORDERSTREAM__KAFKA__PROPERTIES__LINGER_MS (kafka.properties.linger.ms): librdkafka cannot build the \
         dead-letter producer: `message.timeout.ms` must be greater than `linger.ms`"
    );
    let e =
        err(&with_properties("    security.protocol: ssl\n    ssl.ca.location: /nonexistent/ca.pem\n"), &[]);
    let want = "test.yml: kafka.properties.ssl.ca.location: librdkafka cannot build the orders producer: \
                ssl.ca.location failed: ";
    assert!(e.starts_with(want), "{e}");
}

#[test]
fn building_the_clients_leaves_no_thread_behind() {
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let cfg = load(GOOD, &[]).unwrap();
    let _serial = serial();
    let before = threads();
    for _ in 0..10 {
        clients::check_clients(&cfg.kafka).unwrap();
    }
    assert_eq!(threads(), before);
}
