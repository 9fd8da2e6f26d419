-- The tables tansu 0.6.0's PostgreSQL storage engine (`--storage-engine postgres://…`) reads
-- and writes. tansu creates no schema of its own on PostgreSQL: dev/stack.sh applies this file
-- to the broker's database on every `up` (each statement is a no-op when its object exists).
--
-- Written for orderstream from the statements tansu-storage 0.6.0 prepares (src/sql/*.sql,
-- src/pg/record_fetch.sql, the COPY into record and header in src/pg.rs), so it holds what
-- those statements need and nothing else:
--   * every `on conflict (…)` target has its unique constraint, since the upserts (consumer
--     offsets, the group state's compare-and-set on e_tag, producer sequences) rely on them;
--   * column types are the Rust types tansu binds (i32 → int, i64 → bigint, i16 → smallint,
--     uuid, bytea, json, SystemTime → timestamptz);
--   * `last_updated` exists wherever an upsert or update sets it;
--   * deleting a topic, group or cluster cascades, as tansu deletes the parent row and expects
--     the rest to go with it (compaction and retention delete records and expect headers to go).
-- Not carried over, on purpose: tansu's reporting views (nothing in the broker reads them), the
-- list partitioning of record and header (one default partition is all tansu ever makes), and
-- per-row creation times on record and header (nothing reads them; they cost on every
-- produced message).
-- PostgreSQL 16 or newer: tansu's ListOffsets statement has a subquery in FROM without an alias.

create table if not exists cluster (
    id int generated always as identity primary key,
    name text not null unique,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp
);

create table if not exists topic (
    id int generated always as identity primary key,
    cluster int not null references cluster (id) on delete cascade,
    name text not null,
    uuid uuid not null default gen_random_uuid(),
    partitions int not null,
    replication_factor int not null,
    is_internal bool not null default false,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (cluster, name)
);

-- A topic's partition ("topic partition"): what records, offsets and watermarks hang off.
create table if not exists topition (
    id int generated always as identity primary key,
    topic int not null references topic (id) on delete cascade,
    partition int not null,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (topic, partition)
);

-- low: the first offset kept; high: the next offset to assign (both null until the first write).
create table if not exists watermark (
    id int generated always as identity primary key,
    topition int not null unique references topition (id) on delete cascade,
    low bigint,
    high bigint,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp
);

create table if not exists topic_configuration (
    id int generated always as identity primary key,
    topic int not null references topic (id) on delete cascade,
    name text not null,
    value text,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (topic, name)
);

-- One row per Kafka record; fetches read a range of offset_id of one topition in order, which
-- the primary key's index serves. transaction_id is the writing PostgreSQL transaction: a fetch
-- compares it with the oldest transaction still running, so that it never serves a record past
-- a gap that a slower, still uncommitted produce will fill.
create table if not exists record (
    topition int not null references topition (id) on delete cascade,
    offset_id bigint not null,
    transaction_id xid8 not null default pg_current_xact_id(),
    attributes smallint,
    producer_id bigint,
    producer_epoch smallint,
    timestamp timestamptz,
    k bytea,
    v bytea,
    primary key (topition, offset_id)
);

-- A record's headers. Not keyed by name: Kafka lets one record carry a header name twice.
create table if not exists header (
    topition int not null,
    offset_id bigint not null,
    k bytea,
    v bytea,
    foreign key (topition, offset_id) references record (topition, offset_id) on delete cascade
);
create index if not exists header_record on header (topition, offset_id);

create table if not exists consumer_group (
    id int generated always as identity primary key,
    cluster int not null references cluster (id) on delete cascade,
    name text not null,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (cluster, name)
);

-- The group coordinator's state (members, generation, assignments) as one JSON document,
-- replaced by compare-and-set on e_tag.
create table if not exists consumer_group_detail (
    id int generated always as identity primary key,
    consumer_group int not null unique references consumer_group (id) on delete cascade,
    e_tag uuid not null,
    detail json not null,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp
);

create table if not exists consumer_offset (
    id int generated always as identity primary key,
    consumer_group int not null references consumer_group (id) on delete cascade,
    topition int not null references topition (id) on delete cascade,
    committed_offset bigint,
    leader_epoch int,
    timestamp timestamptz,
    metadata text,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (consumer_group, topition)
);

-- Idempotent and transactional producers: an id, its epochs, and per epoch and partition the
-- next expected sequence number.
create table if not exists producer (
    id bigint generated by default as identity primary key,
    cluster int not null references cluster (id) on delete cascade,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp
);

create table if not exists producer_epoch (
    id int generated by default as identity primary key,
    producer bigint not null references producer (id) on delete cascade,
    epoch smallint not null default 0,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (producer, epoch)
);

create table if not exists producer_detail (
    id bigint generated by default as identity primary key,
    producer_epoch int not null references producer_epoch (id) on delete cascade,
    topition int not null references topition (id) on delete cascade,
    sequence int not null default 0,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (producer_epoch, topition)
);

-- Kafka transactions (transactional.id → txn), their state per producer epoch, the partitions
-- they wrote to and the offset range written there, and the offsets they commit for a group.
create table if not exists txn (
    id bigint generated always as identity primary key,
    cluster int not null references cluster (id) on delete cascade,
    name text not null,
    producer bigint references producer (id) on delete cascade,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (cluster, name)
);

create table if not exists txn_detail (
    id bigint generated always as identity primary key,
    transaction bigint not null references txn (id) on delete cascade,
    producer_epoch int not null references producer_epoch (id) on delete cascade,
    transaction_timeout_ms int not null,
    -- Set when the first partition joins the transaction (the timeout runs from then).
    started_at timestamptz,
    -- null, then BEGIN, PREPARE_COMMIT or PREPARE_ABORT, then COMMITTED or ABORTED.
    status text,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (transaction, producer_epoch)
);

create table if not exists txn_topition (
    id int generated always as identity primary key,
    txn_detail bigint not null references txn_detail (id) on delete cascade,
    topition int not null references topition (id) on delete cascade,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (txn_detail, topition)
);

create table if not exists txn_produce_offset (
    id int generated always as identity primary key,
    txn_topition int not null unique references txn_topition (id) on delete cascade,
    offset_start bigint not null,
    offset_end bigint not null,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp
);

create table if not exists txn_offset_commit (
    id int generated always as identity primary key,
    txn_detail bigint not null references txn_detail (id) on delete cascade,
    consumer_group int not null references consumer_group (id) on delete cascade,
    generation_id int,
    member_id text,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (txn_detail, consumer_group)
);

create table if not exists txn_offset_commit_tp (
    id int generated always as identity primary key,
    offset_commit int not null references txn_offset_commit (id) on delete cascade,
    topition int not null references topition (id) on delete cascade,
    committed_offset bigint,
    leader_epoch int,
    metadata text,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (offset_commit, topition)
);

-- SASL/SCRAM users (unused by the stack, which listens without authentication; tansu still
-- reads the table when a client asks).
create table if not exists scram_credential (
    id bigint generated by default as identity primary key,
    cluster int not null references cluster (id) on delete cascade,
    username text not null,
    mechanism int not null,
    salt bytea not null,
    iterations int not null,
    stored_key bytea not null,
    server_key bytea not null,
    last_updated timestamptz not null default current_timestamp,
    created_at timestamptz not null default current_timestamp,
    unique (cluster, username, mechanism)
);
