//! Migrations written once for both backends: `{BLOB}` is BLOB or BYTEA,
//! `{SERIAL}` an integer key the database numbers, `{NOROWID}` SQLite's
//! ` WITHOUT ROWID` (nothing on PostgreSQL). The first migration, from before
//! this file, stays in each backend.

/// (version, SQL with tokens), in order.
pub const SHARED: &[(i64, &str)] = &[
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
        6,
        r#"
ALTER TABLE request_events ADD COLUMN note_sealed {BLOB};
"#,
    ),
];

/// The shared migrations in SQLite's dialect.
pub fn sqlite() -> Vec<(i64, String)> {
    SHARED
        .iter()
        .map(|(v, sql)| {
            let s = sql
                .replace("{BLOB}", "BLOB")
                .replace("{SERIAL}", "INTEGER PRIMARY KEY")
                .replace("{NOROWID}", " WITHOUT ROWID");
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
                .replace("{NOROWID}", "");
            (*v, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_token_is_replaced_in_both_dialects() {
        for (_, sql) in super::sqlite().into_iter().chain(super::postgres()) {
            assert!(!sql.contains('{'), "{sql}");
        }
    }
}
