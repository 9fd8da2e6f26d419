//! `kafka.*`: the settings of every Kafka client orderstream makes (rdkafka with its bundled
//! librdkafka).
//!
//! Every setting of every client is made here, in [`Client::config`], and each librdkafka
//! property is one of three kinds:
//!
//! * **Refused** ([`REFUSED`]): orderstream sets it on the clients that need it because a
//!   guarantee depends on it, so `kafka.properties` naming it is a configuration error (never
//!   a silent override, nor a value that reaches some clients and not others).
//! * **Ours by default** ([`Client::defaults`]): orderstream's choice for some clients, and
//!   when `kafka.properties` names it, the user's value on every client.
//! * **Anything else** in `kafka.properties` (`security.protocol`, `sasl.*`, `ssl.*`,
//!   `socket.*`, `session.timeout.ms`, …) reaches every client as written.
//!
//! Two names of one librdkafka setting (`request.required.acks` is `acks`) count as one
//! ([`canonical`]), so an alias can neither slip past a refusal nor race a default.
//! [`check_clients`] builds every client once when the configuration is loaded, so that
//! librdkafka's own checks (conflicting settings, unreadable certificates) fail there. The
//! network side (admin client, topics, watermarks) is [`crate::kafka`].

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaType;

use super::KafkaConfig;

/// The properties `kafka.properties` may not name, each with what orderstream does instead and
/// why: the refusal reads "orderstream <this>; delete it".
pub const REFUSED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "sets this to kafka.brokers because every client must reach the brokers that key names",
    ),
    (
        "group.id",
        "sets this to kafka.group_id (orderstream-reader for the producer's recovery reader) because \
         consume and status must use the group that key names",
    ),
    (
        "group.instance.id",
        "sets this to kafka.member_name on the consumer alone because no other client may join the \
         group under the consumer's name (a second member with one instance id fences the first)",
    ),
    (
        "acks",
        "sets this to all because both producers are idempotent, and a message acknowledged by the \
         leader alone is lost when that leader fails",
    ),
    (
        "enable.idempotence",
        "sets this to true on both producers because a retried send must not write a message twice or \
         out of order",
    ),
    (
        "enable.gapless.guarantee",
        "sets this to true on the orders producer because a message that fails inside a batch must \
         stop the producer, never leave a hole in a partition",
    ),
    (
        "partitioner",
        "sets this to murmur2_random on the orders producer because an order id must stay in the \
         partition its earlier changes are in (the Java client's choice), or they lose their order",
    ),
    (
        "transactional.id",
        "leaves this unset because exactly once comes from the idempotent producer and its recovery, \
         and a transactional producer cannot send outside a transaction",
    ),
    (
        "isolation.level",
        "sets this to read_committed because no aborted message may reach the lake or the producer's \
         recovery",
    ),
    (
        "enable.auto.commit",
        "sets this to false because the consumer commits offsets only together with a written lake \
         batch, and the readers commit nothing",
    ),
    (
        "enable.auto.offset.store",
        "sets this to false because the consumer stores offsets only together with a written lake batch",
    ),
    (
        "auto.offset.reset",
        "sets this to earliest because a new group or a recovery must start at the first message, \
         never skip to the end",
    ),
    (
        "enable.partition.eof",
        "sets this to true on the producer's recovery reader and false on the consumer because the \
         recovery stops at the end of every partition and the consumer never does",
    ),
];

/// librdkafka's aliases (librdkafka 2.12, `rdkafka_conf.c`): the name orderstream uses first,
/// the other name of the same setting second.
const ALIASES: &[(&str, &str)] = &[
    ("bootstrap.servers", "metadata.broker.list"),
    ("acks", "request.required.acks"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("message.timeout.ms", "delivery.timeout.ms"),
    ("enable.auto.commit", "auto.commit.enable"),
    ("max.in.flight.requests.per.connection", "max.in.flight"),
    ("retries", "message.send.max.retries"),
    ("compression.type", "compression.codec"),
    ("fetch.message.max.bytes", "max.partition.fetch.bytes"),
    ("sasl.mechanisms", "sasl.mechanism"),
    ("sasl.oauthbearer.client.id", "sasl.oauthbearer.client.credentials.client.id"),
    ("sasl.oauthbearer.client.secret", "sasl.oauthbearer.client.credentials.client.secret"),
];

/// The one name orderstream keeps a setting under: `name` itself unless it is an alias.
pub fn canonical(name: &str) -> &str {
    ALIASES.iter().find(|(_, alias)| *alias == name).map_or(name, |(ours, _)| ours)
}

/// Every name of the setting `name` (canonical first).
pub fn spellings(name: &str) -> Vec<&str> {
    let ours = canonical(name);
    let mut names = vec![ours];
    names.extend(ALIASES.iter().filter(|(o, _)| *o == ours).map(|(_, alias)| *alias));
    names
}

/// Why `kafka.properties` may not name `name` (an alias counts as its setting), if it may not.
pub fn refusal(name: &str) -> Option<String> {
    let ours = canonical(name);
    let (_, what) = REFUSED.iter().find(|(n, _)| *n == ours)?;
    Some(if ours == name {
        format!("orderstream {what}; delete it")
    } else {
        format!("is another name for {ours}: orderstream {what}; delete it")
    })
}

/// orderstream's choices for every client that `kafka.properties` may change.
pub const COMMON_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "orderstream"),
    // Resolve "localhost" to the address the broker actually listens on, not ::1 first.
    ("broker.address.family", "any"),
];

/// The orders producer's defaults: messages never time out locally, so a broker outage only
/// delays them (a timeout is safe too: with the gapless guarantee it fails the batch, and the
/// producer starts over from what the topic holds).
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("message.timeout.ms", "0"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("queue.buffering.max.messages", "200000"),
];

/// The orders producer's fixed settings. Idempotence keeps every partition in publish order
/// without duplicates; the gapless guarantee turns any failure that could leave a hole into a
/// fatal error (the producer then starts over from what the topic holds).
const PRODUCER_FIXED: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("enable.gapless.guarantee", "true"),
    ("acks", "all"),
    // The Java client's partitioner: one order id, one partition, whoever produces it.
    ("partitioner", "murmur2_random"),
];

const DEAD_LETTER_DEFAULTS: &[(&str, &str)] = &[("linger.ms", "5")];

/// The dead-letter producer is idempotent (a batch commits only after its rejects are
/// acknowledged, see `sink::dlq`); no gapless guarantee: a failed reject fails its batch.
const DEAD_LETTER_FIXED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

const READER_DEFAULTS: &[(&str, &str)] = &[("fetch.wait.max.ms", "100")];

/// The recovery reader assigns partitions itself and reads each to its end.
const READER_FIXED: &[(&str, &str)] = &[
    ("isolation.level", "read_committed"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "true"),
    ("auto.offset.reset", "earliest"),
];

const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // Eager: every partition is revoked (and its batch committed) before anyone gets it.
    ("partition.assignment.strategy", "range"),
    // tansu holds every fetch for the whole wait even when data is there, so a catch-up moves
    // at most 5 MB per wait: 50 ms instead of 500 (Kafka brokers answer as soon as data is
    // there, so elsewhere this only adds idle fetches).
    ("fetch.wait.max.ms", "50"),
    // When the prefetch queue is full, fetch again 20 ms after it drains, not up to 1 s.
    ("fetch.queue.backoff.ms", "20"),
    // Prefetched messages: about a third of librdkafka's default keeps the process well
    // under its memory target while a batch is written.
    ("queued.max.messages.kbytes", "24576"),
    // Feeds the lag gauge (see `sink::group::GroupContext::stats`).
    ("statistics.interval.ms", "5000"),
];

/// The group member commits offsets itself, with each lake batch (see `sink`).
const CONSUMER_FIXED: &[(&str, &str)] = &[
    ("isolation.level", "read_committed"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
];

/// `status` only reads the group's committed offsets and the watermarks.
const STATUS_FIXED: &[(&str, &str)] = &[("enable.auto.commit", "false")];

/// The Kafka clients orderstream makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The idempotent, gapless producer of the orders topic (`produce`, `run`).
    Producer,
    /// The producer's recovery reader: what the topic holds after the saved offsets.
    Reader,
    /// The consumer-group member of `consume`.
    Consumer,
    /// The producer of the dead-letter topic (`consume`).
    DeadLetters,
    /// The admin client that creates the topics.
    Admin,
    /// The reader of `status`: the group's committed offsets and the watermarks.
    Status,
}

impl Client {
    /// Every client.
    pub const ALL: [Client; 6] = [
        Client::Producer,
        Client::Reader,
        Client::Consumer,
        Client::DeadLetters,
        Client::Admin,
        Client::Status,
    ];

    /// The client's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Client::Producer => "orders producer",
            Client::Reader => "producer's recovery reader",
            Client::Consumer => "consumer",
            Client::DeadLetters => "dead-letter producer",
            Client::Admin => "admin client",
            Client::Status => "status reader",
        }
    }

    /// Whether librdkafka makes it as a consumer (else as a producer, as the admin client is).
    pub fn is_consumer(self) -> bool {
        matches!(self, Client::Reader | Client::Consumer | Client::Status)
    }

    /// orderstream's choices for this client that `kafka.properties` may change (besides
    /// `client.id` and `broker.address.family` for every client, and the consumer's
    /// `heartbeat.interval.ms`, derived from `session.timeout.ms`).
    pub fn defaults(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Client::Producer => PRODUCER_DEFAULTS,
            Client::Reader => READER_DEFAULTS,
            Client::Consumer => CONSUMER_DEFAULTS,
            Client::DeadLetters => DEAD_LETTER_DEFAULTS,
            Client::Admin | Client::Status => &[],
        }
    }

    /// The settings orderstream fixes on this client (all in [`REFUSED`]), besides
    /// `bootstrap.servers` and `group.id`.
    pub fn fixed(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Client::Producer => PRODUCER_FIXED,
            Client::Reader => READER_FIXED,
            Client::Consumer => CONSUMER_FIXED,
            Client::DeadLetters => DEAD_LETTER_FIXED,
            Client::Status => STATUS_FIXED,
            Client::Admin => &[],
        }
    }

    /// The group the client names, if it names one.
    fn group_id(self, cfg: &KafkaConfig) -> Option<&str> {
        match self {
            Client::Reader => Some("orderstream-reader"),
            Client::Consumer | Client::Status => Some(&cfg.group_id),
            Client::Producer | Client::DeadLetters | Client::Admin => None,
        }
    }

    /// The client's settings: our defaults, then the user's `kafka.properties` (which replace
    /// them), then what orderstream fixes (which the configuration's validation made sure the
    /// user's properties do not name).
    pub fn config(self, cfg: &KafkaConfig) -> ClientConfig {
        let props = &cfg.properties;
        let mut c = ClientConfig::new();
        for (k, v) in COMMON_DEFAULTS.iter().chain(self.defaults()) {
            if !props.contains_key(*k) {
                c.set(*k, *v);
            }
        }
        // A shortened session needs heartbeats inside it: librdkafka keeps 3 s otherwise, which
        // expires any session of 3 s or less. Half the session at most (a third made tansu 0.6
        // keep a killed member's partitions assigned to it in our two-consumer test).
        if self == Client::Consumer
            && let (Some(session), false) =
                (props.get("session.timeout.ms"), props.contains_key("heartbeat.interval.ms"))
            && let Ok(ms) = session.parse::<u64>()
        {
            c.set("heartbeat.interval.ms", (ms / 2).clamp(1, 3000).to_string());
        }
        for (k, v) in props {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &cfg.brokers);
        for (k, v) in self.fixed() {
            c.set(*k, *v);
        }
        if let Some(group) = self.group_id(cfg) {
            c.set("group.id", group);
        }
        // Static membership: a restarted consumer takes back its place (and its partitions)
        // in the group at once, instead of waiting for the coordinator to expire its old self.
        if self == Client::Consumer
            && let Some(name) = &cfg.member_name
        {
            c.set("group.instance.id", name);
        }
        c
    }
}

/// A client made only to be checked: silent, since it has no brokers to talk to.
struct Probe;

impl ClientContext for Probe {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

/// Builds every client once and drops it, so that librdkafka's own checks of the whole
/// configuration (conflicting settings such as `max.in.flight` above 5 with idempotence,
/// unreadable certificate files, a SASL mechanism the build lacks) fail before any command
/// runs. Without `bootstrap.servers`, so nothing is contacted (`kafka.brokers` is checked by
/// the configuration). Bare librdkafka handles, not rdkafka's consumer, whose drop polls for
/// 100 ms to leave a group it never joined: all six take about 25 ms, and destroying a handle
/// joins its threads.
pub fn check_clients(cfg: &KafkaConfig) -> Result<(), String> {
    for client in Client::ALL {
        let mut c = client.config(cfg);
        c.remove("bootstrap.servers");
        let kind = if client.is_consumer() {
            RDKafkaType::RD_KAFKA_CONSUMER
        } else {
            RDKafkaType::RD_KAFKA_PRODUCER
        };
        let made = c
            .create_native_config()
            .and_then(|native| rdkafka::client::Client::new(&c, native, kind, Probe))
            .map(drop);
        if let Err(e) = made {
            let why = match e {
                KafkaError::ClientCreation(why) => why,
                other => other.to_string(),
            };
            return Err(format!("librdkafka cannot build the {}: {why}", client.name()));
        }
    }
    Ok(())
}
