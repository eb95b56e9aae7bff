//! Migrations written once for both backends, with the dialects'
//! differences in one place (`sqlite()` and `postgres()` below): `{BLOB}` is
//! BLOB or BYTEA, `{INT}` INTEGER or BIGINT, `{BOOL}` INTEGER or BOOLEAN,
//! `{SERIAL}` an integer key the database numbers, `{NOROWID}` SQLite's
//! ` WITHOUT ROWID` (nothing on PostgreSQL), `{IDS_NEVER_REUSED}` SQLite's
//! rebuild of tables whose ids must never come back (nothing on PostgreSQL,
//! whose sequences never go back), `{KEYRING_SCHEMA}` PostgreSQL's move of
//! the data keys into a schema of their own and `{KEYRING_META}` of the
//! installation keys' record beside them (nothing on SQLite),
//! `{KEYRING_FILE}` SQLite's drop of the data keys' table once they were
//! copied into the keyring file of their own (migration 22; nothing on
//! PostgreSQL), and `{IDENTIFIERS_APPENDED}` SQLite's rebuild of the
//! identifiers in arrival order (migration 23; nothing on PostgreSQL), and
//! `{DEDUP_RECENT}` SQLite's tables of recent messageId digests (migration
//! 25, see `db::recent`; nothing on PostgreSQL), and `{EVENTS_COUNTED}`
//! SQLite's mark of the events its counters hold (migration 27; nothing on
//! PostgreSQL).

/// (version, SQL with tokens), in order.
pub const SHARED: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value {BLOB} NOT NULL);
CREATE TABLE api_keys (
    id {SERIAL},
    key_hash {BLOB} NOT NULL UNIQUE,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ms {INT} NOT NULL,
    revoked_ms {INT}
);
CREATE TABLE profiles (
    id {SERIAL},
    created_ms {INT} NOT NULL,
    updated_ms {INT} NOT NULL,
    merged_into {INT},
    event_count {INT} NOT NULL DEFAULT 0,
    traits {BLOB}
);
CREATE INDEX profiles_merged_into ON profiles(merged_into) WHERE merged_into IS NOT NULL;
CREATE TABLE data_keys (
    owner_id {INT} PRIMARY KEY,
    profile_id {INT} NOT NULL,
    wrapped {BLOB} NOT NULL
);
CREATE INDEX data_keys_profile ON data_keys(profile_id);
CREATE TABLE identifiers (
    bidx {BLOB} PRIMARY KEY,
    kind TEXT NOT NULL,
    profile_id {INT} NOT NULL,
    key_owner {INT} NOT NULL,
    sealed {BLOB} NOT NULL,
    first_seen_ms {INT} NOT NULL
){NOROWID};
CREATE INDEX identifiers_profile ON identifiers(profile_id);
CREATE TABLE events (
    id {SERIAL},
    profile_id {INT} NOT NULL,
    key_owner {INT} NOT NULL,
    kind TEXT NOT NULL,
    ts_ms {INT} NOT NULL,
    received_ms {INT} NOT NULL,
    body {BLOB} NOT NULL
);
CREATE INDEX events_profile ON events(profile_id, id);
CREATE TABLE dedup (h {INT} PRIMARY KEY, seen_ms {INT} NOT NULL);
CREATE TABLE merges (
    id {SERIAL},
    into_profile {INT} NOT NULL,
    from_profile {INT} NOT NULL,
    identifier_kind TEXT NOT NULL,
    at_ms {INT} NOT NULL,
    refused {BOOL} NOT NULL,
    reason TEXT
);
CREATE INDEX merges_into ON merges(into_profile);
CREATE INDEX merges_from ON merges(from_profile);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE purposes (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    notice_seq BIGINT NOT NULL,
    min_notice_seq BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE purpose_versions (
    purpose_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    spec TEXT NOT NULL,
    notice_seq BIGINT NOT NULL,
    notice_version TEXT NOT NULL,
    material BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (purpose_id, version)
);
CREATE TABLE consent_ledger (
    seq BIGINT PRIMARY KEY,
    profile_id BIGINT NOT NULL,
    key_owner BIGINT NOT NULL,
    purpose_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    method TEXT NOT NULL,
    notice_version TEXT NOT NULL,
    notice_seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    recorded_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    evidence {BLOB} NOT NULL,
    prev_hash {BLOB} NOT NULL,
    hash {BLOB} NOT NULL
);
CREATE INDEX consent_ledger_profile ON consent_ledger(profile_id, seq);
CREATE TABLE consent_state (
    profile_id BIGINT NOT NULL,
    purpose_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    method TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    notice_seq BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    gpc_ms BIGINT,
    PRIMARY KEY (profile_id, purpose_id)
){NOROWID};
CREATE TABLE consent_signals (
    profile_id BIGINT NOT NULL,
    hash {BLOB} NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (profile_id, hash)
){NOROWID};
CREATE TABLE suppression (
    bidx {BLOB} PRIMARY KEY,
    kind TEXT NOT NULL,
    at_ms BIGINT NOT NULL
){NOROWID};
CREATE TABLE profile_flags (
    profile_id BIGINT PRIMARY KEY,
    restricted_ms BIGINT
);
CREATE TABLE tokens (
    hash {BLOB} PRIMARY KEY,
    kind TEXT NOT NULL,
    profile_id BIGINT NOT NULL,
    data TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    used_ms BIGINT
);
CREATE INDEX tokens_profile ON tokens(profile_id);
CREATE TABLE outbox (
    id {SERIAL},
    profile_id BIGINT NOT NULL,
    key_owner BIGINT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload {BLOB},
    created_ms BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    sent_ms BIGINT,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox(status, next_attempt_ms);
CREATE INDEX outbox_profile ON outbox(profile_id);
"#,
    ),
    (
        3,
        r#"
ALTER TABLE events ADD COLUMN source_id BIGINT;
CREATE TABLE processors (
    id {SERIAL},
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    country TEXT NOT NULL,
    transfer_safeguard TEXT,
    dpa_reference TEXT NOT NULL,
    dpa_signed_on TEXT NOT NULL,
    purposes TEXT NOT NULL,
    data_categories TEXT NOT NULL,
    erasure_webhook TEXT,
    webhook_token {BLOB},
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE disclosures (
    id {SERIAL},
    profile_id BIGINT NOT NULL,
    processor_id BIGINT NOT NULL,
    purpose TEXT NOT NULL,
    categories TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX disclosures_profile ON disclosures(profile_id);
CREATE TABLE requests (
    id {SERIAL},
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_bidx {BLOB} NOT NULL,
    profile_id BIGINT,
    payload {BLOB},
    origin TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    due_ms BIGINT NOT NULL,
    extended_ms BIGINT,
    verified_ms BIGINT,
    completed_ms BIGINT,
    outcome TEXT,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX requests_subject ON requests(subject_bidx, kind);
CREATE INDEX requests_status ON requests(status, due_ms);
CREATE INDEX requests_profile ON requests(profile_id);
CREATE TABLE request_events (
    id {SERIAL},
    request_id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT
);
CREATE INDEX request_events_request ON request_events(request_id);
CREATE TABLE processor_notifications (
    id {SERIAL},
    request_id BIGINT NOT NULL,
    processor_id BIGINT NOT NULL,
    payload {BLOB},
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    delivered_ms BIGINT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX processor_notifications_due ON processor_notifications(status, next_attempt_ms);
CREATE TABLE retention_runs (
    id {SERIAL},
    at_ms BIGINT NOT NULL,
    dry_run BIGINT NOT NULL,
    cutoff_ms BIGINT,
    events_deleted BIGINT NOT NULL,
    consents_expired BIGINT NOT NULL,
    profiles_erased BIGINT NOT NULL,
    millis BIGINT NOT NULL
);
"#,
    ),
    (
        4,
        r#"
ALTER TABLE api_keys ADD COLUMN roles TEXT;
ALTER TABLE api_keys ADD COLUMN purposes TEXT;
ALTER TABLE api_keys ADD COLUMN user_id BIGINT;
ALTER TABLE api_keys ADD COLUMN expires_ms BIGINT;
CREATE TABLE users (
    id {SERIAL},
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    purposes TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    disabled_ms BIGINT
);
CREATE TABLE access_log (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    user_id BIGINT,
    roles TEXT NOT NULL,
    purposes TEXT NOT NULL,
    route TEXT NOT NULL,
    action TEXT NOT NULL,
    subjects BIGINT NOT NULL,
    prev_hash {BLOB} NOT NULL,
    hash {BLOB} NOT NULL
);
CREATE TABLE access_log_subjects (
    profile_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (profile_id, seq)
);
CREATE INDEX access_log_subjects_seq ON access_log_subjects(seq);
"#,
    ),
    (
        5,
        r#"
ALTER TABLE api_keys ADD COLUMN trust TEXT;
ALTER TABLE identifiers ADD COLUMN verified_ms BIGINT;
{IDS_NEVER_REUSED}
"#,
    ),
    (
        6,
        r#"
ALTER TABLE request_events ADD COLUMN note_sealed {BLOB};
"#,
    ),
    (
        8,
        r#"
CREATE TABLE segments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    purpose_id TEXT NOT NULL,
    rule {BLOB} NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE segment_members (
    segment_id TEXT NOT NULL,
    profile_id BIGINT NOT NULL,
    since_ms BIGINT NOT NULL,
    PRIMARY KEY (segment_id, profile_id)
){NOROWID};
CREATE INDEX segment_members_profile ON segment_members(profile_id);
CREATE TABLE segment_history (
    id {SERIAL},
    segment_id TEXT NOT NULL,
    profile_id BIGINT NOT NULL,
    entered BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX segment_history_profile ON segment_history(profile_id);
CREATE TABLE profile_touches (
    id {SERIAL},
    profile_id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE TABLE audiences (
    id TEXT PRIMARY KEY,
    segment_id TEXT NOT NULL,
    processor_id BIGINT NOT NULL,
    format TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE audience_members (
    audience_id TEXT NOT NULL,
    profile_id BIGINT NOT NULL,
    hashes {BLOB} NOT NULL,
    erased BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (audience_id, profile_id)
){NOROWID};
CREATE INDEX audience_members_profile ON audience_members(profile_id);
CREATE TABLE audience_syncs (
    audience_id TEXT NOT NULL,
    n BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    added BIGINT NOT NULL,
    removed BIGINT NOT NULL,
    excluded TEXT NOT NULL,
    file {BLOB},
    PRIMARY KEY (audience_id, n)
){NOROWID};
"#,
    ),
    (
        9,
        r#"
CREATE TABLE imports (
    id {SERIAL},
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    details {BLOB} NOT NULL,
    report {BLOB},
    rows_total BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT
);
CREATE TABLE import_rows (
    h BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    mac BIGINT NOT NULL,
    profile_id BIGINT,
    event_id BIGINT,
    import_id BIGINT NOT NULL
);
CREATE INDEX import_rows_kind ON import_rows(kind);
CREATE INDEX import_rows_profile ON import_rows(profile_id);
CREATE TABLE products (
    id TEXT PRIMARY KEY,
    names TEXT NOT NULL,
    category TEXT,
    price TEXT,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE stores (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT,
    lat TEXT,
    lon TEXT,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE stock (
    store_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (store_id, product_id)
){NOROWID};
"#,
    ),
    (
        10,
        r#"
CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE automations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    next_fire_ms BIGINT,
    cursor BIGINT NOT NULL,
    backfill BIGINT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE sends (
    flow_id TEXT NOT NULL,
    profile_id BIGINT NOT NULL,
    occurrence TEXT NOT NULL,
    due_ms BIGINT NOT NULL,
    since_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    deferrals BIGINT NOT NULL DEFAULT 0,
    outbox_id BIGINT,
    created_ms BIGINT NOT NULL,
    done_ms BIGINT,
    PRIMARY KEY (flow_id, profile_id, occurrence)
){NOROWID};
CREATE INDEX sends_due ON sends(due_ms) WHERE status = 'due';
CREATE INDEX sends_profile ON sends(profile_id);
CREATE INDEX sends_outbox ON sends(outbox_id) WHERE outbox_id IS NOT NULL;
"#,
    ),
    (
        12,
        r#"
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN lease_until BIGINT;
ALTER TABLE processor_notifications ADD COLUMN claimed_by TEXT;
ALTER TABLE processor_notifications ADD COLUMN lease_until BIGINT;
CREATE TABLE work_leases (
    name TEXT PRIMARY KEY,
    claimed_by TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
"#,
    ),
    (
        13,
        r#"
CREATE TABLE erasure_log (
    seq {SERIAL},
    profile_id BIGINT NOT NULL,
    request_id BIGINT,
    at_ms BIGINT NOT NULL
);
"#,
    ),
    (
        16,
        r#"
CREATE TABLE consent_daily_entries (
    day BIGINT NOT NULL,
    purpose_id TEXT NOT NULL,
    method TEXT NOT NULL,
    decision TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (day, purpose_id, method, decision)
){NOROWID};
INSERT INTO consent_daily_entries (day, purpose_id, method, decision, n)
    SELECT at_ms / 86400000, purpose_id, method, decision, count(*) FROM consent_ledger
    GROUP BY at_ms / 86400000, purpose_id, method, decision;
CREATE TABLE consent_daily_states (
    day BIGINT NOT NULL,
    purpose_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    delta BIGINT NOT NULL,
    PRIMARY KEY (day, purpose_id, decision)
){NOROWID};
INSERT INTO consent_daily_states (day, purpose_id, decision, delta)
    SELECT at_ms / 86400000, purpose_id, decision, count(*) FROM consent_state
    GROUP BY at_ms / 86400000, purpose_id, decision;
CREATE INDEX consent_state_expiry ON consent_state(purpose_id, decision, at_ms);
"#,
    ),
    (
        17,
        r#"
ALTER TABLE consent_ledger ADD COLUMN channel TEXT;
ALTER TABLE consent_state ADD COLUMN channels_off BIGINT NOT NULL DEFAULT 0;
"#,
    ),
    (
        19,
        r#"
{KEYRING_SCHEMA}
"#,
    ),
    (
        20,
        r#"
{KEYRING_META}
"#,
    ),
    (
        21,
        r#"
CREATE TABLE profile_counts (
    profile_id {INT} PRIMARY KEY,
    events {INT} NOT NULL,
    last_ms {INT} NOT NULL
);
INSERT INTO profile_counts (profile_id, events, last_ms)
    SELECT id, event_count, updated_ms FROM profiles WHERE event_count <> 0;
ALTER TABLE profiles DROP COLUMN event_count;
"#,
    ),
    (
        22,
        r#"
{KEYRING_FILE}
"#,
    ),
    (
        23,
        r#"
{IDENTIFIERS_APPENDED}
"#,
    ),
    (
        24,
        // Only a dry run read import rows by kind (all of them, so a scan
        // does as well), and every imported record paid an index entry.
        r#"
DROP INDEX IF EXISTS import_rows_kind;
"#,
    ),
    (
        25,
        r#"
{DEDUP_RECENT}
"#,
    ),
    (
        26,
        // Both readers of the expiry index (consent lifetimes: the
        // retention sweep and the dashboard's "expiring soon") ask for
        // granted states only; every other change of a state paid an
        // index entry at a random place for nothing.
        r#"
DROP INDEX IF EXISTS consent_state_expiry;
CREATE INDEX consent_state_expiry ON consent_state(purpose_id, at_ms) WHERE decision = 'granted';
"#,
    ),
    (
        27,
        // SQLite's event counters are folded from the events table in
        // batches (see `SqliteConn::fold_counts`), and its events are
        // numbered so that an id never comes back.
        r#"
{EVENTS_COUNTED}
"#,
    ),
];

/// The embedded store's event counters (`profile_counts`) hold the events
/// up to `events_counted.through`; the events after it are counted from
/// the events table when read, and folded in every [`FOLD_COUNTS_EVERY`]
/// events (`SqliteConn::fold_counts`): a counter written at each event
/// dirtied a page of `profile_counts` at a random place per event. Before
/// this statement runs, `SqliteConn::migrate` makes the events' ids
/// `AUTOINCREMENT` (no id ever given twice, which the mark and every
/// follower of events by id rely on). PostgreSQL writes its counters with
/// each group.
///
/// [`FOLD_COUNTS_EVERY`]: super::sqlite::FOLD_COUNTS_EVERY
const SQLITE_EVENTS_COUNTED: &str = r#"
CREATE TABLE events_counted (through INTEGER NOT NULL);
INSERT INTO events_counted (through) SELECT COALESCE(max(id), 0) FROM events;
"#;

/// The embedded store's recent messageId digests, appended in arrival
/// order and folded into `dedup` a sorted slice at a time (see
/// `db::recent`); PostgreSQL inserts into `dedup` directly.
const SQLITE_DEDUP_RECENT: &str = r#"
CREATE TABLE dedup_recent_a (seq INTEGER PRIMARY KEY, h INTEGER NOT NULL, seen_ms INTEGER NOT NULL);
CREATE TABLE dedup_recent_b (seq INTEGER PRIMARY KEY, h INTEGER NOT NULL, seen_ms INTEGER NOT NULL);
"#;

/// SQLite numbers an `INTEGER PRIMARY KEY` without `AUTOINCREMENT` as the
/// largest id plus one: after the erasure of the newest person, the next new
/// person would get their id, and with it the erased person's ledger rows,
/// links and open requests. With `AUTOINCREMENT` an id is never given twice;
/// the high-water mark starts at the largest id any table still names, so
/// ids already freed before this migration do not come back either.
const SQLITE_IDS_NEVER_REUSED: &str = r#"
CREATE TABLE profiles_v5 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    merged_into INTEGER,
    event_count INTEGER NOT NULL DEFAULT 0,
    traits BLOB
);
INSERT INTO profiles_v5 (id, created_ms, updated_ms, merged_into, event_count, traits)
    SELECT id, created_ms, updated_ms, merged_into, event_count, traits FROM profiles;
DROP TABLE profiles;
ALTER TABLE profiles_v5 RENAME TO profiles;
CREATE INDEX profiles_merged_into ON profiles(merged_into) WHERE merged_into IS NOT NULL;
CREATE TABLE outbox_v5 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id BIGINT NOT NULL,
    key_owner BIGINT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB,
    created_ms BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    sent_ms BIGINT,
    last_error TEXT
);
INSERT INTO outbox_v5 SELECT id, profile_id, key_owner, channel, kind, payload, created_ms,
    next_attempt_ms, attempts, status, sent_ms, last_error FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v5 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox(status, next_attempt_ms);
CREATE INDEX outbox_profile ON outbox(profile_id);
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'profiles', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'profiles');
UPDATE sqlite_sequence SET seq = max(
    seq,
    coalesce((SELECT max(id) FROM profiles), 0),
    coalesce((SELECT max(max(profile_id), max(key_owner)) FROM consent_ledger), 0),
    coalesce((SELECT max(profile_id) FROM requests), 0),
    coalesce((SELECT max(profile_id) FROM access_log_subjects), 0),
    coalesce((SELECT max(max(into_profile), max(from_profile)) FROM merges), 0),
    coalesce((SELECT max(owner_id) FROM data_keys), 0)
) WHERE name = 'profiles';
"#;

/// The identifiers in a table numbered in arrival order, found by a narrow
/// unique index of blind indexes (16 bytes and the row's number), instead of
/// a table ordered by blind index. A blind index is random, so every new
/// identifier lands at a random place in whatever orders by it: when that
/// was the table itself, each one dirtied a page of ~35 whole rows (sealed
/// value and all, ~110 bytes each), and a group of new people rewrote most
/// of the table; now the rows are appended, and the random place is in an
/// index of ~150 entries a page. (PostgreSQL's tables are heaps already.)
const SQLITE_IDENTIFIERS_APPENDED: &str = r#"
CREATE TABLE identifiers_v23 (
    bidx BLOB NOT NULL,
    kind TEXT NOT NULL,
    profile_id INTEGER NOT NULL,
    key_owner INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    verified_ms BIGINT
);
INSERT INTO identifiers_v23 (bidx, kind, profile_id, key_owner, sealed, first_seen_ms, verified_ms)
    SELECT bidx, kind, profile_id, key_owner, sealed, first_seen_ms, verified_ms FROM identifiers
    ORDER BY profile_id, first_seen_ms;
DROP TABLE identifiers;
ALTER TABLE identifiers_v23 RENAME TO identifiers;
CREATE UNIQUE INDEX identifiers_bidx ON identifiers(bidx);
CREATE INDEX identifiers_profile ON identifiers(profile_id);
"#;

/// The people's wrapped data keys in a schema of their own, so that they
/// can be dumped (`pg_dump --schema=keyring`), kept and granted apart from
/// the data. Every connection has `keyring` on its `search_path`.
const PG_KEYRING_SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS keyring;
ALTER TABLE data_keys SET SCHEMA keyring;
"#;

/// The installation keys' record (wrapped by the master key) beside the
/// data keys, in the keyring schema: a `pg_dump --exclude-schema=keyring`
/// of the data then holds no key at all.
const PG_KEYRING_META: &str = r#"
CREATE TABLE keyring.meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
INSERT INTO keyring.meta (key, value)
    SELECT key, value FROM public.meta WHERE key = 'installation_keys';
DELETE FROM public.meta WHERE key = 'installation_keys';
"#;

/// The shared migrations in SQLite's dialect.
pub fn sqlite() -> Vec<(i64, String)> {
    SHARED
        .iter()
        .map(|(v, sql)| {
            let s = sql
                .replace("{BLOB}", "BLOB")
                .replace("{SERIAL}", "INTEGER PRIMARY KEY")
                .replace("{NOROWID}", " WITHOUT ROWID")
                .replace("{INT}", "INTEGER")
                .replace("{BOOL}", "INTEGER")
                .replace("{IDS_NEVER_REUSED}", SQLITE_IDS_NEVER_REUSED)
                .replace("{KEYRING_SCHEMA}", "")
                // Nothing to do: the keyring's split is made by `tarmo
                // backup` (see the README's roadmap).
                .replace("{KEYRING_META}", "SELECT 1;")
                // The keys were copied into the keyring file just before
                // (`SqliteConn::move_keys_out`).
                .replace("{KEYRING_FILE}", "DROP TABLE IF EXISTS data_keys;")
                .replace("{IDENTIFIERS_APPENDED}", SQLITE_IDENTIFIERS_APPENDED)
                .replace("{DEDUP_RECENT}", SQLITE_DEDUP_RECENT)
                .replace("{EVENTS_COUNTED}", SQLITE_EVENTS_COUNTED);
            (*v, s)
        })
        .collect()
}

/// The shared migrations in PostgreSQL's dialect.
pub fn postgres() -> Vec<(i64, String)> {
    SHARED
        .iter()
        .map(|(v, sql)| {
            let s = sql
                .replace("{BLOB}", "BYTEA")
                .replace("{SERIAL}", "BIGSERIAL PRIMARY KEY")
                .replace("{NOROWID}", "")
                .replace("{INT}", "BIGINT")
                .replace("{BOOL}", "BOOLEAN")
                .replace("{IDS_NEVER_REUSED}", "")
                .replace("{KEYRING_SCHEMA}", PG_KEYRING_SCHEMA)
                .replace("{KEYRING_META}", PG_KEYRING_META)
                // The keyring schema is in the same database: nothing moves.
                .replace("{KEYRING_FILE}", "SELECT 1;")
                .replace("{IDENTIFIERS_APPENDED}", "SELECT 1;")
                .replace("{DEDUP_RECENT}", "SELECT 1;")
                .replace("{EVENTS_COUNTED}", "SELECT 1;");
            (*v, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// Migration 1 ran on every installation made before it moved here from
    /// the two backends: its SQL in each dialect is pinned to the text each
    /// backend held, byte for byte.
    #[test]
    fn the_first_migration_is_the_text_each_backend_held() {
        let first = |all: Vec<(i64, String)>| {
            let (v, sql) = all.into_iter().next().unwrap();
            assert_eq!(v, 1);
            hex::encode(Sha256::digest(sql.as_bytes()))
        };
        assert_eq!(
            first(super::sqlite()),
            "48244711ac668aafa49b44ef8460d6a01ef8fdf65b20e49f6b8c315b6c50a146"
        );
        assert_eq!(
            first(super::postgres()),
            "58cae7aa2dee9d343d1628c8e61a0aa3ee0ba06792c31f21745bc9c41d2f01e9"
        );
    }

    #[test]
    fn every_token_is_replaced_in_both_dialects() {
        for (_, sql) in super::sqlite().into_iter().chain(super::postgres()) {
            assert!(!sql.contains('{'), "{sql}");
        }
    }
}
