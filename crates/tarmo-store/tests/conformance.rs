//! One conformance suite, run against every backend: SQLite in a temporary
//! directory and PostgreSQL on 127.0.0.1:5432 in a fresh database per test.

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};
use tarmo_core::identity::{IdentifierKind, IdentityConfig, Trust};
use tarmo_core::segment::{BatchDefaults, parse_message};
use tarmo_store::conn::ProfileId;
use tarmo_store::keys::KeySpec;
use tarmo_store::resolve::Outcome;
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::{WriterConfig, WriterHandle};
use tarmo_store::{Backend, Store};

pub struct Harness {
    pub store: std::sync::Arc<Store>,
    pub writer: WriterHandle,
    pub cfg: IdentityConfig,
    _dir: tempfile::TempDir,
    pg: Option<PgDb>,
    master_hex: String,
}

struct PgDb {
    name: String,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut c) = ::postgres::Client::connect(PG_ADMIN, ::postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn fresh_pg() -> PgDb {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "tarmo_conf_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut c = ::postgres::Client::connect(PG_ADMIN, ::postgres::NoTls)
        .expect("PostgreSQL must answer on 127.0.0.1:5432 (user postgres, trust auth)");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    PgDb { name }
}

impl Harness {
    pub fn new(postgres: bool) -> Self {
        Self::build(postgres, false)
    }

    /// A store as the code before installation keys made it: its vault
    /// canary sealed with the keys its master key derives, and no record.
    pub fn made_before_installation_keys(postgres: bool) -> Self {
        Self::build(postgres, true)
    }

    fn build(postgres: bool, legacy: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let pg = postgres.then(fresh_pg);
        let url = pg
            .as_ref()
            .map(|p| format!("postgres://postgres@127.0.0.1:5432/{}", p.name));
        let backend = Backend::open(dir.path(), url.as_deref()).unwrap();
        if legacy {
            let old = tarmo_store::vault::Vault::new(&master, 1);
            let canary = old
                .seal_system(tarmo_store::vault::Place::VaultCheck, b"tarmo")
                .unwrap();
            backend
                .connect()
                .unwrap()
                .meta_set("vault_check", canary.as_bytes())
                .unwrap();
        }
        let store = std::sync::Arc::new(Store::open(backend, &master, 1000).unwrap());
        store
            .transact_direct(|c, _| tarmo_store::consent::seed_defaults(c, 1_000))
            .unwrap();
        let (writer, _join) = store.start_writer(WriterConfig::default()).unwrap();
        Self {
            store,
            writer,
            cfg: IdentityConfig::new(Some("FI"), &["loyalty_card".into()]).unwrap(),
            _dir: dir,
            pg,
            master_hex: master.to_hex(),
        }
    }

    /// Ingest through a server write key (a back end): what it says about
    /// identity is trusted.
    pub fn ingest(&self, msgs: Vec<Value>) -> Vec<Outcome> {
        self.ingest_as(Trust::Server, msgs)
    }

    pub fn ingest_as(&self, trust: Trust, msgs: Vec<Value>) -> Vec<Outcome> {
        let events = msgs
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let m = parse_message(
                    v,
                    i,
                    None,
                    BatchDefaults::default(),
                    tarmo_store::now_ms(),
                    &self.cfg,
                )
                .unwrap();
                let mut e = self.store.prepare(m, tarmo_core::ids::KeyId(1));
                e.trust = trust;
                e
            })
            .collect();
        self.writer.submit_blocking(events).unwrap()
    }

    /// The same database, opened anew (as by a restarted node).
    pub fn backend(&self) -> Backend {
        let url = self
            .pg
            .as_ref()
            .map(|p| format!("postgres://postgres@127.0.0.1:5432/{}", p.name));
        Backend::open(self._dir.path(), url.as_deref()).unwrap()
    }

    pub fn master(&self) -> MasterKey {
        MasterKey::from_hex(&self.master_hex).unwrap()
    }

    pub fn lookup(&self, kind: &str, value: &str) -> Option<ProfileId> {
        let k = self.cfg.kind(kind).unwrap();
        let id = self.cfg.identifier(k, value).unwrap();
        self.store.find_profile(&id).unwrap()
    }

    /// The profile `p` as a person's own request sees it (everything).
    pub fn view(&self, p: ProfileId) -> tarmo_store::ProfileView {
        self.store.profile_view(&everything(), p).unwrap().unwrap()
    }
}

fn stored(o: &Outcome) -> ProfileId {
    match o {
        Outcome::Stored(p) => *p,
        other => panic!("expected stored, got {other:?}"),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::Harness::new(false)); } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&super::Harness::new(true)); } )*
        }
    };
}

conformance!(
    identify_creates_an_encrypted_profile,
    anonymous_visitor_is_stitched_at_login,
    profiles_sharing_an_identifier_merge_and_the_merge_is_recorded,
    two_user_ids_never_merge,
    a_shared_device_does_not_merge_two_known_people,
    traits_are_last_write_wins_by_timestamp,
    message_ids_are_deduplicated,
    events_page_newest_first_with_cursor,
    event_bodies_are_packed_and_older_ones_still_read,
    api_keys_are_hashed_and_revocable,
    sessions_follow_their_account,
    the_access_log_is_chained_and_finds_tampering,
    a_journaled_read_reaches_the_log_once_even_across_a_crash,
    a_wrong_master_key_is_refused,
    purposes_are_versioned_and_material_changes_need_reconsent,
    the_ledger_chain_detects_edits_removals_and_truncation,
    a_ledger_batch_seals_each_persons_evidence_under_their_key,
    a_large_batch_folds_as_entry_by_entry_would,
    materialised_state_equals_the_fold_of_the_ledger_through_merges,
    double_opt_in_confirms_once_and_tokens_expire,
    gpc_on_ingestion_opts_out_once_and_a_later_choice_stands,
    cmp_strings_write_once_per_person_and_never_fail_their_group,
    unsubscribe_links_withdraw_for_their_purpose_only,
    bad_consent_input_is_refused_and_nothing_is_written,
    erasure_deletes_the_person_everywhere_suppresses_and_spares_others,
    requests_follow_their_state_machine_and_deadlines,
    retention_deletes_what_outlived_its_purposes,
    processors_are_registered_checked_and_their_tokens_sealed,
    exports_follow_purposes_categories_and_decisions,
    disclosures_follow_a_merge,
    erasure_notifications_are_queued_once_sealed_and_wiped,
    a_group_resolves_as_its_messages_one_by_one,
    a_group_seals_each_event_under_its_own_persons_key,
    client_claims_never_attach_to_or_merge_known_people,
    a_client_key_still_stitches_a_visitor_and_signs_people_up,
    a_server_source_verifies_what_a_client_claimed,
    profile_ids_never_come_back_after_erasure,
    request_links_go_only_to_verified_addresses,
    a_cmp_string_never_lifts_a_refusal_made_by_a_proven_act,
    segments_follow_events_consent_time_and_erasure,
    columnar_counts_agree_with_membership_through_erasure_and_reuse,
    what_commits_between_a_ticks_halves_counts_once,
    an_audience_sync_of_more_than_a_page_of_members_takes_them_all,
    bad_segment_definitions_are_refused_and_nothing_is_saved,
    audiences_carry_only_hashes_of_people_allowed_now_and_removals,
    staff_notes_and_collection_points_are_stored_sealed,
    a_revocation_by_id_or_secret_changes_the_key_epoch,
    an_outbox_message_that_does_not_open_is_parked_and_the_rest_go,
    queues_show_depth_age_and_whether_anything_drains_them,
    outbox_claims_are_leases_only_their_node_acts_on,
    a_periodic_job_runs_on_one_node_per_turn,
    claims_skip_rows_another_node_is_claiming,
    imports_are_idempotent_replace_orders_and_skip_erased_people,
    stock_imports_answer_the_offer,
    in_stock_follows_views_and_stock_imports,
    automations_send_once_per_occurrence_and_decide_at_send_time,
    caps_and_quiet_hours_are_applied_at_send_time,
    due_sends_are_claimed_by_one_node_only,
    birthdays_are_scheduled_a_year_at_a_time,
    bad_automations_are_refused_and_nothing_is_saved,
    sms_stop_withdraws_the_numbers_sms_purposes,
    frequency_caps_hold_across_automations_per_channel,
    a_reminder_names_the_viewed_product_its_price_and_the_store_that_has_it,
    a_new_win_back_looks_back_at_orders_made_before_it,
    a_segment_that_a_flow_names_is_not_deleted,
    lost_connections_are_replaced_and_say_unavailable,
    the_dashboard_aggregates_follow_every_consent_change,
    a_channel_choice_is_chained_evidence_that_folds_and_decides,
);

/// What only PostgreSQL can show: ids that commit out of their order.
mod postgres_only {
    #[test]
    fn an_event_committed_after_a_later_id_is_still_followed() {
        super::an_event_committed_after_a_later_id_is_still_followed(&super::Harness::new(true));
    }

    #[test]
    fn the_data_keys_live_in_a_schema_of_their_own() {
        super::master_key::the_data_keys_live_in_a_schema_of_their_own(&super::Harness::new(true));
    }
}

#[path = "conformance/faults.rs"]
mod faults;
use faults::*;

#[path = "conformance/imports.rs"]
mod imports;
use imports::*;

#[path = "conformance/automations.rs"]
mod automations;
use automations::*;

#[path = "conformance/segments.rs"]
mod segments;
use segments::*;

#[path = "conformance/dashboard.rs"]
mod dashboard;
use dashboard::*;

#[path = "conformance/consent.rs"]
mod consent;
use consent::*;
#[path = "conformance/requests.rs"]
mod requests;
use requests::*;

#[path = "conformance/pg_outage.rs"]
mod pg_outage;
use pg_outage::*;

#[path = "conformance/leases.rs"]
mod leases;
use leases::*;

#[path = "conformance/processors.rs"]
mod processors;
use processors::*;

#[path = "conformance/master_key.rs"]
mod master_key;

/// Installation keys and master-key rotation, on each backend.
mod installation_keys {
    mod sqlite {
        #[test]
        fn a_store_made_before_installation_keys_keeps_its_keys() {
            super::super::master_key::a_store_made_before_installation_keys_keeps_its_keys(
                &super::super::Harness::made_before_installation_keys(false),
            );
        }
        #[test]
        fn rotating_the_master_key_rewraps_the_installation_keys_only() {
            super::super::master_key::rotating_the_master_key_rewraps_the_installation_keys_only(
                &super::super::Harness::new(false),
            );
        }
    }
    mod postgres {
        #[test]
        fn a_store_made_before_installation_keys_keeps_its_keys() {
            super::super::master_key::a_store_made_before_installation_keys_keeps_its_keys(
                &super::super::Harness::made_before_installation_keys(true),
            );
        }
        #[test]
        fn rotating_the_master_key_rewraps_the_installation_keys_only() {
            super::super::master_key::rotating_the_master_key_rewraps_the_installation_keys_only(
                &super::super::Harness::new(true),
            );
        }
        #[test]
        fn an_existing_store_moves_its_installation_keys_into_the_keyring() {
            super::super::master_key::an_existing_store_moves_its_installation_keys_into_the_keyring(
                &super::super::Harness::new(true),
            );
        }
    }
}

/// What a person's own request opens: everything held (the tests read it all).
fn everything() -> tarmo_store::crypto::person::Sight {
    use tarmo_store::crypto::person::{Duty, Sight};
    Sight::duty(Duty::PersonsRequest)
}

fn identifiers_of(h: &Harness, p: ProfileId) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = h
        .view(p)
        .identifiers
        .into_iter()
        .map(|i| (i.kind, i.value, i.verified))
        .collect();
    v.sort();
    v
}

fn client_claims_never_attach_to_or_merge_known_people(h: &Harness) {
    // Known to the shop's back end.
    let victim = stored(
        &h.ingest(vec![json!({"type": "identify", "userId": "victim-1",
        "traits": {"email": "victim@shop.fi"}})])[0],
    );
    let other = stored(
        &h.ingest(vec![json!({"type": "identify", "userId": "other-1",
        "traits": {"email": "other@shop.fi", "phone": "+358401111111"}})])[0],
    );
    let card_only = stored(
        &h.ingest(vec![json!({"type": "identify", "anonymousId": "till-1",
        "context": {"externalIds": [{"type": "loyalty_card", "id": "LC-1"}]}})])[0],
    );
    let before = h.store.counts().unwrap();

    // Mallory holds the public write key and names the victim's address.
    let out = h.ingest_as(
        Trust::Client,
        vec![json!({"type": "identify", "anonymousId": "mallory-browser",
        "traits": {"email": "mallory@evil.example"},
        "context": {"externalIds": [{"type": "email", "id": "victim@shop.fi"}]}})],
    );
    let landed = stored(&out[0]);
    assert_eq!(
        h.lookup("email", "mallory@evil.example"),
        None,
        "mallory's address is not attached to anyone"
    );
    assert!(
        !identifiers_of(h, victim)
            .iter()
            .any(|(_, v, _)| v == "mallory@evil.example"),
        "mallory's address never joins the victim's profile"
    );
    assert_eq!(landed, victim);
    let v = h.view(victim);
    let refused: Vec<_> = v.merges.iter().filter(|m| m.outcome == "refused").collect();
    assert_eq!(refused.len(), 1, "{:?}", v.merges);
    assert_eq!(refused[0].identifier_type, "email");
    assert!(
        refused[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("client write key")
    );
    // The same claim again, as a browser sends it at every identify: still
    // refused, recorded once.
    let again = h.ingest_as(
        Trust::Client,
        vec![json!({"type": "identify", "anonymousId": "mallory-browser",
        "traits": {"email": "mallory@evil.example"},
        "context": {"externalIds": [{"type": "email", "id": "victim@shop.fi"}]}})],
    );
    assert_eq!(stored(&again[0]), victim);
    assert_eq!(h.lookup("email", "mallory@evil.example"), None);
    let v = h.view(victim);
    assert_eq!(
        v.merges.iter().filter(|m| m.outcome == "refused").count(),
        1,
        "{:?}",
        v.merges
    );

    // A phone (same rank as an address) and a loyalty card do not join a
    // known person either; a user id does not join a profile holding one.
    h.ingest_as(Trust::Client, vec![
        json!({"type": "identify", "userId": "other-1", "traits": {"phone": "+358402222222"}}),
        json!({"type": "identify", "userId": "other-1",
            "context": {"externalIds": [{"type": "loyalty_card", "id": "LC-2"}]}}),
        json!({"type": "identify", "userId": "mallory-1",
            "context": {"externalIds": [{"type": "loyalty_card", "id": "LC-1"}]}, "traits": {"email": "x@evil.example"}}),
    ]);
    assert_eq!(h.lookup("phone", "+358402222222"), None);
    assert_eq!(h.lookup("loyalty_card", "LC-2"), None);
    assert_eq!(
        h.lookup("email", "x@evil.example"),
        None,
        "an address does not join a known card holder"
    );

    // Two strong identifiers in one client message never merge two people.
    let out = h.ingest_as(
        Trust::Client,
        vec![json!({"type": "identify", "userId": "victim-1",
        "traits": {"email": "other@shop.fi"}})],
    );
    assert_eq!(stored(&out[0]), victim);
    assert_eq!(h.lookup("email", "other@shop.fi"), Some(other));
    assert_eq!(h.lookup("user_id", "other-1"), Some(other));
    assert_eq!(h.lookup("loyalty_card", "LC-1"), Some(card_only));
    let after = h.store.counts().unwrap();
    assert_eq!(
        after.profiles, before.profiles,
        "no merge, and no profile made for a refused claim"
    );
    assert!(
        h.view(victim)
            .merges
            .iter()
            .any(|m| m.from_profile == other && m.outcome == "refused"),
        "the refused merge is recorded"
    );
    // From a server source, the same kind of message merges (the rules of old).
    let card = stored(
        &h.ingest(vec![json!({"type": "identify", "anonymousId": "till-9",
        "context": {"externalIds": [{"type": "loyalty_card", "id": "LC-9"}]}})])[0],
    );
    let claim = json!({"type": "identify", "anonymousId": "kiosk-9", "traits": {"email": "victim@shop.fi"},
        "context": {"externalIds": [{"type": "loyalty_card", "id": "LC-9"}]}});
    h.ingest_as(Trust::Client, vec![claim.clone()]);
    assert_eq!(
        h.lookup("loyalty_card", "LC-9"),
        Some(card),
        "a client may not merge them"
    );
    h.ingest(vec![claim]);
    assert_eq!(h.lookup("loyalty_card", "LC-9"), Some(victim));
}

fn a_client_key_still_stitches_a_visitor_and_signs_people_up(h: &Harness) {
    let known = stored(
        &h.ingest(vec![json!({"type": "identify", "userId": "cust-1",
        "traits": {"email": "ann@shop.fi"}})])[0],
    );
    // The seeds' core case: a visitor browses, then logs in.
    let visitor = stored(
        &h.ingest_as(
            Trust::Client,
            vec![json!({"type": "page", "anonymousId": "v-1", "name": "Home"})],
        )[0],
    );
    assert_ne!(visitor, known);
    let out = h.ingest_as(
        Trust::Client,
        vec![json!({"type": "identify", "anonymousId": "v-1", "userId": "cust-1"})],
    );
    assert_eq!(stored(&out[0]), known);
    assert_eq!(h.lookup("anonymous_id", "v-1"), Some(known));
    assert_eq!(h.view(known).event_count, 3);
    // A sign-up: a new visitor's first identify brings a user id and an
    // address together; both join (as claims, not verified).
    let out = h.ingest_as(Trust::Client, vec![
        json!({"type": "page", "anonymousId": "v-2"}),
        json!({"type": "identify", "anonymousId": "v-2", "userId": "cust-2", "traits": {"email": "bo@shop.fi"}}),
    ]);
    let p = stored(&out[1]);
    assert_eq!(stored(&out[0]), p);
    assert_eq!(
        identifiers_of(h, p),
        [
            ("anonymous_id".into(), "v-2".into(), false),
            ("email".into(), "bo@shop.fi".into(), false),
            ("user_id".into(), "cust-2".into(), false),
        ]
    );
    // A user id may still join a person known only by an address (a
    // newsletter subscriber logging in for the first time).
    let subscriber = stored(
        &h.ingest(vec![
            json!({"type": "identify", "anonymousId": "nl-1", "traits": {"email": "cy@shop.fi"}}),
        ])[0],
    );
    let out = h.ingest_as(
        Trust::Client,
        vec![json!({"type": "identify", "userId": "cust-3", "traits": {"email": "cy@shop.fi"}})],
    );
    assert_eq!(stored(&out[0]), subscriber);
    assert_eq!(h.lookup("user_id", "cust-3"), Some(subscriber));
}

fn a_server_source_verifies_what_a_client_claimed(h: &Harness) {
    let p = stored(
        &h.ingest_as(
            Trust::Client,
            vec![json!({"type": "identify", "anonymousId": "v-9",
        "userId": "cust-9", "traits": {"email": "dee@shop.fi"}})],
        )[0],
    );
    assert!(
        identifiers_of(h, p)
            .iter()
            .all(|(_, _, verified)| !verified)
    );
    h.ingest(vec![
        json!({"type": "track", "userId": "cust-9", "event": "Order Completed"}),
    ]);
    let ids = identifiers_of(h, p);
    assert!(
        ids.contains(&("user_id".into(), "cust-9".into(), true)),
        "{ids:?}"
    );
    assert!(
        ids.contains(&("email".into(), "dee@shop.fi".into(), false)),
        "only what the server named: {ids:?}"
    );
    h.ingest(vec![
        json!({"type": "identify", "userId": "cust-9", "traits": {"email": "dee@shop.fi"}}),
    ]);
    assert!(identifiers_of(h, p).contains(&("email".into(), "dee@shop.fi".into(), true)));
}

fn identify_creates_an_encrypted_profile(h: &Harness) {
    let out = h.ingest(vec![json!({
        "type": "identify", "userId": "u-1", "anonymousId": "anon-1", "messageId": "m1",
        "timestamp": "2024-01-01T00:00:00Z",
        "traits": {"email": "Ann@Example.COM", "phone": "040 1234567", "name": "Ann", "loyalty_card": "LC-77"}
    })]);
    let p = stored(&out[0]);
    assert_eq!(
        h.lookup("email", "ann@example.com"),
        None,
        "the local part is case-sensitive"
    );
    assert_eq!(h.lookup("email", "Ann@example.com"), Some(p));
    assert_eq!(h.lookup("phone", "+358401234567"), Some(p));
    assert_eq!(h.lookup("loyalty_card", "LC-77"), Some(p));
    assert_eq!(h.lookup("user_id", "u-1"), Some(p));
    let v = h.view(p);
    assert_eq!(v.event_count, 1);
    assert_eq!(v.traits["name"], "Ann");
    let mut kinds: Vec<_> = v
        .identifiers
        .iter()
        .map(|i| (i.kind.as_str(), i.value.as_str()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("anonymous_id", "anon-1"),
            ("email", "Ann@example.com"),
            ("loyalty_card", "LC-77"),
            ("phone", "+358401234567"),
            ("user_id", "u-1"),
        ]
    );
    assert!(v.merges.is_empty());
    let c = h.store.counts().unwrap();
    assert_eq!((c.profiles, c.events, c.identifiers), (1, 1, 5));
}

fn anonymous_visitor_is_stitched_at_login(h: &Harness) {
    let a = stored(
        &h.ingest(vec![
            json!({"type": "page", "anonymousId": "a-9", "name": "Avocados"}),
        ])[0],
    );
    let b = stored(
        &h.ingest(vec![
            json!({"type": "identify", "anonymousId": "a-9", "userId": "cust-9"}),
        ])[0],
    );
    assert_eq!(a, b);
    assert_eq!(h.lookup("user_id", "cust-9"), Some(a));
    assert_eq!(h.view(a).event_count, 2);
}

fn profiles_sharing_an_identifier_merge_and_the_merge_is_recorded(h: &Harness) {
    let by_email = stored(&h.ingest(vec![json!({"type": "identify", "anonymousId": "x1", "traits": {"email": "m@shop.fi", "tier": "gold"}, "timestamp": "2024-01-01T00:00:00Z"})])[0]);
    let by_anon = stored(&h.ingest(vec![json!({"type": "track", "anonymousId": "x2", "event": "Viewed", "timestamp": "2024-01-02T00:00:00Z"})])[0]);
    assert_ne!(by_email, by_anon);
    let out = h.ingest(vec![
        json!({"type": "identify", "anonymousId": "x2", "traits": {"email": "m@shop.fi"}}),
    ]);
    let merged = stored(&out[0]);
    assert_eq!(
        merged, by_email,
        "the profile of the stronger identifier remains"
    );
    assert_eq!(h.lookup("anonymous_id", "x2"), Some(by_email));
    let v = h.view(by_anon);
    assert_eq!(
        v.id, by_email,
        "the merged id leads to the remaining profile"
    );
    assert_eq!(v.event_count, 3);
    assert_eq!(v.traits["tier"], "gold");
    assert_eq!(v.merges.len(), 1);
    assert_eq!(v.merges[0].from_profile, by_anon);
    assert_eq!(v.merges[0].into_profile, by_email);
    assert_eq!(v.merges[0].identifier_type, "anonymous_id");
    assert_eq!(v.merges[0].outcome, "merged");
    let page = h
        .store
        .events_page(&everything(), by_email, None, 10)
        .unwrap()
        .unwrap();
    assert_eq!(
        page.events.len(),
        3,
        "events of the merged profile moved and still open"
    );
    assert_eq!(h.store.counts().unwrap().profiles, 1);
}

fn two_user_ids_never_merge(h: &Harness) {
    let p1 = stored(
        &h.ingest(vec![
            json!({"type": "identify", "userId": "alice", "anonymousId": "shared-laptop"}),
        ])[0],
    );
    let p2 = stored(
        &h.ingest(vec![
            json!({"type": "identify", "userId": "bob", "anonymousId": "shared-laptop"}),
        ])[0],
    );
    assert_ne!(p1, p2);
    assert_eq!(h.lookup("user_id", "alice"), Some(p1));
    assert_eq!(h.lookup("user_id", "bob"), Some(p2));
    assert_eq!(h.lookup("anonymous_id", "shared-laptop"), Some(p1));
    let v = h.view(p2);
    let users: Vec<_> = v
        .identifiers
        .iter()
        .filter(|i| i.kind == "user_id")
        .collect();
    assert_eq!(users.len(), 1);
    assert_eq!(v.merges.len(), 1);
    assert_eq!(v.merges[0].outcome, "refused");
    // Alias of one user id onto another is refused the same way.
    let p3 = stored(
        &h.ingest(vec![
            json!({"type": "identify", "userId": "carol", "traits": {"email": "c@x.fi"}}),
        ])[0],
    );
    let out = h.ingest(vec![
        json!({"type": "identify", "userId": "dave", "traits": {"email": "c@x.fi"}}),
    ]);
    assert_ne!(stored(&out[0]), p3);
    assert_eq!(h.lookup("email", "c@x.fi"), Some(p3));
}

fn a_shared_device_does_not_merge_two_known_people(h: &Harness) {
    let p1 = stored(&h.ingest(vec![json!({"type": "identify", "anonymousId": "a1", "traits": {"email": "one@x.fi"}, "context": {"device": {"id": "tablet"}}})])[0]);
    let p2 = stored(&h.ingest(vec![json!({"type": "identify", "anonymousId": "a2", "traits": {"email": "two@x.fi"}, "context": {"device": {"id": "tablet"}}})])[0]);
    assert_ne!(p1, p2);
    assert_eq!(h.lookup("device_id", "tablet"), Some(p1));
    let v = h.view(p2);
    assert_eq!(v.merges[0].outcome, "refused");
    assert_eq!(v.merges[0].identifier_type, "device_id");
}

fn traits_are_last_write_wins_by_timestamp(h: &Harness) {
    let p = stored(&h.ingest(vec![json!({"type": "identify", "userId": "t", "timestamp": "2024-03-01T00:00:00Z", "traits": {"plan": "pro", "city": "Oulu"}})])[0]);
    h.ingest(vec![json!({"type": "identify", "userId": "t", "timestamp": "2024-02-01T00:00:00Z", "traits": {"plan": "free", "age": 40}})]);
    let v = h.view(p);
    assert_eq!(
        v.traits["plan"], "pro",
        "an older event does not overwrite a newer value"
    );
    assert_eq!(v.traits["age"], 40);
    h.ingest(vec![json!({"type": "identify", "userId": "t", "timestamp": "2024-04-01T00:00:00Z", "traits": {"plan": "team"}})]);
    assert_eq!(h.view(p).traits["plan"], "team");
}

fn message_ids_are_deduplicated(h: &Harness) {
    let e = json!({"type": "track", "userId": "d", "event": "Paid", "messageId": "same"});
    let out = h.ingest(vec![e.clone(), e.clone()]);
    assert!(matches!(out[0], Outcome::Stored(_)));
    assert_eq!(out[1], Outcome::Duplicate);
    let out = h.ingest(vec![e]);
    assert_eq!(out[0], Outcome::Duplicate);
    let p = h.lookup("user_id", "d").unwrap();
    assert_eq!(h.view(p).event_count, 1);
    assert_eq!(h.store.counts().unwrap().events, 1);
}

fn events_page_newest_first_with_cursor(h: &Harness) {
    let msgs = (0..5)
        .map(|i| json!({"type": "track", "userId": "pager", "event": format!("E{i}"), "properties": {"n": i}}))
        .collect();
    h.ingest(msgs);
    let p = h.lookup("user_id", "pager").unwrap();
    let first = h
        .store
        .events_page(&everything(), p, None, 2)
        .unwrap()
        .unwrap();
    let names: Vec<_> = first
        .events
        .iter()
        .map(|e| e.message["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["E4", "E3"]);
    let second = h
        .store
        .events_page(&everything(), p, first.next_before, 10)
        .unwrap()
        .unwrap();
    assert_eq!(second.events.len(), 3);
    assert_eq!(second.events[2].message["properties"]["n"], 0);
    assert!(second.next_before.is_none());
    assert!(
        h.store
            .events_page(&everything(), ProfileId(999_999), None, 10)
            .unwrap()
            .is_none()
    );
}

fn event_bodies_are_packed_and_older_ones_still_read(h: &Harness) {
    use tarmo_store::conn::P;
    use tarmo_store::vault::Place;
    // A page view as analytics.js sends it.
    let page = json!({"type": "track", "userId": "packer", "event": "Product Viewed",
        "anonymousId": "7f0c3a52-2f7e-4c2e-9d0b-5b1a7e3c9f41", "messageId": "ajs-next-1733400000000-7f0c3a52",
        "timestamp": "2026-12-06T09:00:00.000Z",
        "properties": {"product_id": "sku-123", "name": "Avocado", "price": 1.9, "currency": "EUR", "category": "produce"},
        "context": {"library": {"name": "analytics.js", "version": "npm:next-1.76.0"}, "locale": "fi-FI",
            "page": {"path": "/p/avocado", "referrer": "https://www.google.com/", "title": "Avocado", "url": "https://shop.example/p/avocado"},
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"}});
    let json_len = serde_json::to_vec(&page).unwrap().len();
    assert_eq!(h.ingest(vec![page.clone()]).len(), 1);
    let p = h.lookup("user_id", "packer").unwrap();
    let mut c = h.store.conn().unwrap();
    let row = c
        .query_opt(
            "SELECT ts_ms, body FROM events WHERE profile_id = $1",
            &[P::Int(p.0)],
        )
        .unwrap()
        .unwrap();
    // Sealing adds 28 bytes (nonce and tag) to what it seals: packed, the
    // body takes well under half of its JSON.
    let sealed_len = row.blob(1).unwrap().len();
    assert!(
        sealed_len * 2 < json_len,
        "{json_len} bytes of JSON sealed into {sealed_len}"
    );
    // An event an older release sealed: its JSON as it was.
    let old =
        json!({"type": "track", "userId": "packer", "event": "Old Event", "properties": {"n": 1}});
    let vault = h.store.vault();
    let key = vault.data_key(p, || c.data_key_get(p)).unwrap().unwrap();
    let sealed = vault
        .seal(
            &key,
            Place::EventBody,
            p,
            &serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
    // What is stored is sealed for its owner, not merely packed: it opens
    // with the person's key and place, and with nothing else.
    let stored = row.sealed(1).unwrap();
    let opened: Value =
        serde_json::from_slice(&vault.open(&key, Place::EventBody, p, &stored).unwrap()).unwrap();
    assert_eq!(opened["messageId"], page["messageId"]);
    assert!(
        vault
            .open(&key, Place::EventBody, ProfileId(p.0 + 1), &stored)
            .is_err()
    );
    assert!(vault.open(&key, Place::ProfileTraits, p, &stored).is_err());
    let ts = row.int(0).unwrap() - 1000;
    c.exec(
        "INSERT INTO events (profile_id, key_owner, kind, ts_ms, received_ms, body) VALUES ($1, $1, 'track', $2, $2, $3)",
        &[P::Int(p.0), P::Int(ts), P::Blob(sealed.as_bytes())],
    )
    .unwrap();
    let events = h
        .store
        .events_page(&everything(), p, None, 10)
        .unwrap()
        .unwrap()
        .events;
    assert_eq!(events.len(), 2);
    let got: Vec<&Value> = events.iter().map(|e| &e.message).collect();
    let new = got.iter().find(|m| m["event"] == "Product Viewed").unwrap();
    for k in ["properties", "context", "anonymousId", "messageId"] {
        assert_eq!(new[k], page[k], "{k}");
    }
    let old_read = got.iter().find(|m| m["event"] == "Old Event").unwrap();
    assert_eq!(old_read["properties"], old["properties"]);
}

fn a_revocation_by_id_or_secret_changes_the_key_epoch(h: &Harness) {
    let spec = KeySpec {
        roles: vec!["dpo".into()],
        ..Default::default()
    };
    let (a, a_id) = h.store.create_api_key(&spec).unwrap();
    let (b, _) = h.store.create_api_key(&spec).unwrap();
    let e0 = h.store.keys_epoch().unwrap();
    assert_eq!(
        h.store.keys_epoch().unwrap(),
        e0,
        "reading does not change it"
    );
    assert!(h.store.revoke_api_key(a_id).unwrap());
    let e1 = h.store.keys_epoch().unwrap();
    assert_ne!(e1, e0);
    assert!(h.store.authenticate(&a).unwrap().is_none());
    // By the secret: the key's id; a secret no active key has: nothing.
    let b_id = h.store.revoke_api_key_by_secret(&b).unwrap();
    assert!(b_id.is_some());
    assert_ne!(h.store.keys_epoch().unwrap(), e1);
    assert!(h.store.authenticate(&b).unwrap().is_none());
    assert_eq!(h.store.revoke_api_key_by_secret(&b).unwrap(), None);
    assert_eq!(
        h.store.revoke_api_key_by_secret("tka_nothing").unwrap(),
        None
    );
    // Expiry beyond ten years (or past i64) is refused, not wrapped.
    assert!(tarmo_store::keys::expiry(0, u64::MAX).is_err());
    assert_eq!(tarmo_store::keys::expiry(1, 2).unwrap(), 1 + 7_200_000);
}

fn api_keys_are_hashed_and_revocable(h: &Harness) {
    let spec = KeySpec {
        roles: vec!["marketer".into(), "analyst".into()],
        purposes: vec!["email_marketing".into()],
        name: "web".into(),
        ..Default::default()
    };
    let (secret, id) = h.store.create_api_key(&spec).unwrap();
    assert!(secret.len() >= 40 && secret.starts_with("tka_"));
    let k = h.store.authenticate(&secret).unwrap().unwrap();
    assert_eq!(k.id, id);
    assert_eq!(k.roles, ["marketer", "analyst"]);
    assert_eq!(k.purposes, ["email_marketing"]);
    assert!(h.store.authenticate("tkw_0000").unwrap().is_none());
    // The secret itself is nowhere in the table; its hash is.
    let rows = h
        .store
        .conn()
        .unwrap()
        .query("SELECT * FROM api_keys", &[])
        .unwrap();
    for r in rows {
        for c in r.0 {
            if let tarmo_store::conn::Cell::Text(t) = c {
                assert!(!t.contains(&secret[4..]));
            }
        }
    }
    assert!(h.store.revoke_api_key(id).unwrap());
    assert!(h.store.authenticate(&secret).unwrap().is_none());
    assert!(!h.store.revoke_api_key(id).unwrap());
    let listed = h.store.api_keys().unwrap();
    assert!(listed.iter().any(|k| k.id == id && k.revoked_ms.is_some()));
    // An expired key stops working.
    let (old, _) = h
        .store
        .create_api_key(&KeySpec {
            roles: vec!["ingest".into()],
            expires_ms: Some(tarmo_store::now_ms() - 1),
            ..Default::default()
        })
        .unwrap();
    assert!(old.starts_with("tkw_"));
    assert!(h.store.authenticate(&old).unwrap().is_none());
    // Staff accounts: Argon2id, weak passwords refused, login makes an
    // expiring key with the account's roles, disabling revokes it.
    let mk = |name: &str, pw: &str| {
        h.store.transact_direct(|c, v| {
            tarmo_store::keys::create_user(c, v, name, pw, &["dpo".into()], &[], 1)
        })
    };
    assert!(matches!(
        mk("dana", "short").unwrap_err(),
        tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::WeakPassword,
            ..
        }
    ));
    let uid = mk("dana", "correct horse battery").unwrap();
    assert!(matches!(
        mk("dana", "another long password").unwrap_err(),
        tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::UserExists,
            ..
        }
    ));
    let login = |pw: &str| h.store.login("dana", pw, 60_000);
    assert!(login("wrong password!").unwrap().is_none());
    let (session, key) = login("correct horse battery").unwrap().unwrap();
    assert_eq!(
        (key.roles.as_slice(), key.user_id),
        (&["dpo".to_owned()][..], Some(uid))
    );
    assert!(h.store.authenticate(&session).unwrap().is_some());
    let stored = h
        .store
        .conn()
        .unwrap()
        .query("SELECT password_hash FROM users", &[])
        .unwrap();
    assert!(stored[0].text(0).unwrap().starts_with("$argon2id$"));
    assert!(
        h.store
            .transact_direct(|c, _| tarmo_store::keys::disable_user(c, uid, 5))
            .unwrap()
    );
    assert!(
        h.store.authenticate(&session).unwrap().is_none(),
        "disabling revokes at once"
    );
    assert!(login("correct horse battery").unwrap().is_none());
}

/// A session holds what its account holds now: a change of roles bites on
/// a live session, as does disabling the account (even where its keys'
/// revocation were missed).
fn sessions_follow_their_account(h: &Harness) {
    let uid = h
        .store
        .transact_direct(|c, v| {
            tarmo_store::keys::create_user(
                c,
                v,
                "erik",
                "a long enough password",
                &["dpo".into()],
                &[],
                1,
            )
        })
        .unwrap();
    let (session, _) = h
        .store
        .login("erik", "a long enough password", 60_000)
        .unwrap()
        .unwrap();
    assert_eq!(
        h.store.authenticate(&session).unwrap().unwrap().roles,
        ["dpo"]
    );
    assert!(
        h.store
            .transact_direct(|c, _| tarmo_store::keys::set_user_roles(
                c,
                uid,
                &["analyst".into()],
                &["analytics".into()]
            ))
            .unwrap()
    );
    let k = h.store.authenticate(&session).unwrap().unwrap();
    assert_eq!(
        (k.roles.as_slice(), k.purposes.as_slice()),
        (&["analyst".to_owned()][..], &["analytics".to_owned()][..])
    );
    h.store
        .conn()
        .unwrap()
        .exec(
            "UPDATE users SET disabled_ms = 5 WHERE id = $1",
            &[tarmo_store::conn::P::Int(uid)],
        )
        .unwrap();
    assert!(
        h.store.authenticate(&session).unwrap().is_none(),
        "a disabled account's session no longer works"
    );
    // A failed login needs no write transaction: with another one holding
    // the write lock (on SQLite, the one lock ingestion needs too), it still
    // answers at once instead of queueing behind it with Argon2 inside.
    let mut holder = h.store.conn().unwrap();
    holder.begin().unwrap();
    holder
        .exec(
            "UPDATE users SET name = name WHERE id = $1",
            &[tarmo_store::conn::P::Int(uid)],
        )
        .unwrap();
    let t = std::time::Instant::now();
    assert!(
        h.store
            .login("erik", "wrong password!!", 60_000)
            .unwrap()
            .is_none()
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    holder.rollback().unwrap();
}

fn the_access_log_is_chained_and_finds_tampering(h: &Harness) {
    use tarmo_store::access_log::{self, AccessRecord};
    let rec = |profiles: Vec<ProfileId>, action: &'static str| AccessRecord {
        at_ms: 1_000,
        key_id: tarmo_store::conn::KeyId(7),
        user_id: None,
        roles: vec!["support".into()],
        purposes: vec![],
        route: "/api/v1/profiles/{id}".into(),
        action,
        count: profiles.len() as i64,
        profiles,
    };
    let (logger, thread) = access_log::AccessLogger::spawn(h.writer.clone());
    logger.record(rec(vec![ProfileId(11)], "read")).unwrap();
    logger
        .record(rec(vec![ProfileId(12), ProfileId(11)], "export"))
        .unwrap();
    logger.count(
        tarmo_store::conn::KeyId(7),
        None,
        &["marketer".into()],
        &["email_marketing".into()],
        "/api/v1/decisions",
        5,
    );
    logger.count(
        tarmo_store::conn::KeyId(7),
        None,
        &["marketer".into()],
        &["email_marketing".into()],
        "/api/v1/decisions",
        3,
    );
    drop(logger);
    thread.join();
    let mut c = h.store.conn().unwrap();
    let r = access_log::verify(&mut *c, h.store.vault(), &mut |_| {}).unwrap();
    assert_eq!((r.entries, r.first_broken), (3, None));
    let who = access_log::for_profile(&mut *c, ProfileId(11), 10).unwrap();
    assert_eq!(who.len(), 2);
    assert_eq!(who[0].action, "export");
    let recent = access_log::recent(&mut *c, 10).unwrap();
    assert_eq!(
        (recent[0].action.as_str(), recent[0].count),
        ("decisions", 8)
    );
    // A record removed from who-saw-whom is found.
    c.exec("DELETE FROM access_log_subjects WHERE profile_id = 12", &[])
        .unwrap();
    let r = access_log::verify(&mut *c, h.store.vault(), &mut |_| {}).unwrap();
    assert_eq!(r.first_broken.map(|b| b.seq), Some(2));
}

/// The journal: a read is durable there before it is answered; the table
/// gets each record exactly once, including those a crash left in the
/// journal only, and never a batch the crash tore.
fn a_journaled_read_reaches_the_log_once_even_across_a_crash(h: &Harness) {
    use std::os::unix::fs::FileExt;
    use tarmo_store::access_log::journal::{self, Journal};
    use tarmo_store::access_log::{self, AccessLogger, AccessRecord};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(access_log::JOURNAL_FILE);
    let bytes = 64 << 10;
    let rec = |p: i64| AccessRecord {
        at_ms: 1_000 + p,
        key_id: tarmo_store::conn::KeyId(7),
        user_id: Some(3),
        roles: vec!["support".into()],
        purposes: vec![],
        route: "/api/v1/profiles/{id}".into(),
        action: "read",
        count: 1,
        profiles: vec![ProfileId(p)],
    };
    let logged = |p: i64| {
        let mut c = h.store.conn().unwrap();
        access_log::for_profile(&mut *c, ProfileId(p), 10)
            .unwrap()
            .len()
    };
    let (logger, thread) = AccessLogger::spawn_journaled(h.writer.clone(), &path, bytes).unwrap();
    let jobs = || {
        h.store
            .metrics
            .tx_jobs
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = jobs();
    for p in 1..=3 {
        logger.record(rec(p)).unwrap();
    }
    logger.settle(std::time::Duration::from_secs(10));
    assert_eq!(
        (1..=3).map(logged).collect::<Vec<_>>(),
        [1, 1, 1],
        "once settled, the table shows the reads just answered"
    );
    assert!(
        jobs() - before <= 2,
        "three reads one after another are copied together, not a transaction each ({} taken)",
        jobs() - before
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        bytes,
        "the journal's space is written when it is made"
    );
    drop(logger);
    thread.join();

    // A crash between the journal and the table: records 4 and 5 reached
    // the journal only; record 6's batch was torn, so it was never
    // acknowledged.
    let mut j = Journal::open(&path, bytes, 4).unwrap();
    assert_eq!(j.append(&[rec(4), rec(5)], 3).unwrap(), 4);
    assert_eq!(j.append(&[rec(6)], 3).unwrap(), 6);
    drop(j);
    let numbers = |_: ()| -> Vec<u64> {
        journal::scan(&path)
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect()
    };
    assert!(numbers(()).contains(&6));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xff; 8], journal::ALIGN + 48).unwrap();
    drop(f);
    assert!(!numbers(()).contains(&6), "the torn batch does not read");

    let (logger, thread) = AccessLogger::spawn_journaled(h.writer.clone(), &path, bytes).unwrap();
    assert_eq!(
        (1..=6).map(logged).collect::<Vec<_>>(),
        [1, 1, 1, 1, 1, 0],
        "4 and 5 copied at start, once; 1 to 3 not again; the torn 6 never"
    );
    // Numbering goes on past what the journal held.
    logger.record(rec(7)).unwrap();
    drop(logger);
    thread.join();
    assert_eq!(logged(7), 1);

    // A small journal: a batch larger than it takes at once is written in
    // parts, and a record larger than that goes through the writer.
    let small = dir.path().join("small.journal");
    let (logger, thread) = AccessLogger::spawn_journaled(h.writer.clone(), &small, 4096).unwrap();
    logger
        .record(AccessRecord {
            profiles: (100..400).map(ProfileId).collect(),
            count: 300,
            action: "export",
            ..rec(100)
        })
        .unwrap();
    for i in 0..30 {
        let route = format!("/api/v1/decisions/{i}");
        logger.count(tarmo_store::conn::KeyId(7), None, &[], &[], &route, 1);
    }
    drop(logger);
    thread.join();
    assert_eq!(logged(250), 1, "the export too large for the journal");
    let mut c = h.store.conn().unwrap();
    let recent = access_log::recent(&mut *c, 100).unwrap();
    let decisions = recent.iter().filter(|r| r.action == "decisions").count();
    assert_eq!(decisions, 30, "the tally's 30 counts, written in parts");
    let r = access_log::verify(&mut *c, h.store.vault(), &mut |_| {}).unwrap();
    assert_eq!((r.entries, r.first_broken), (37, None));
}

fn a_wrong_master_key_is_refused(h: &Harness) {
    let url =
        h.pg.as_ref()
            .map(|p| format!("postgres://postgres@127.0.0.1:5432/{}", p.name));
    let again = Backend::open(h._dir.path(), url.as_deref()).unwrap();
    let err = Store::open(again, &MasterKey::generate().unwrap(), 10)
        .err()
        .unwrap();
    assert!(matches!(err, tarmo_store::Error::WrongMasterKey));
    let again = Backend::open(h._dir.path(), url.as_deref()).unwrap();
    assert!(Store::open(again, &MasterKey::from_hex(&h.master_hex).unwrap(), 10).is_ok());
    let _ = IdentifierKind::Email;
}

/// Messages that create, link, merge and refuse to merge customers, some of
/// them new within the group: ingested as one group (where PostgreSQL holds
/// the new rows until the group's end) they must give the same profiles as
/// ingested one at a time.
/// A group naming many known people whose data keys are in no cache
/// reads their keys in one pass (SQLite) or one statement (PostgreSQL):
/// each event must still be sealed under its own person's key, whatever
/// order the group and the keys come in.
fn a_group_seals_each_event_under_its_own_persons_key(h: &Harness) {
    let n = 40;
    h.ingest(
        (0..n)
            .map(|i| json!({"type": "identify", "userId": format!("sealed-{i}")}))
            .collect(),
    );
    h.store.vault().forget_all();
    let out = h.ingest(
        (0..n)
            .rev()
            .map(|i| json!({"type": "track", "userId": format!("sealed-{i}"), "event": "Keyed", "properties": {"n": i}}))
            .collect(),
    );
    assert!(out.iter().all(|o| matches!(o, Outcome::Stored(_))));
    for i in 0..n {
        let p = h.lookup("user_id", &format!("sealed-{i}")).unwrap();
        h.store.vault().forget_all();
        let page = h
            .store
            .events_page(&everything(), p, None, 10)
            .unwrap()
            .unwrap();
        assert_eq!(page.events.len(), 2, "person {i}");
        assert_eq!(page.events[0].message["event"], "Keyed");
        assert_eq!(page.events[0].message["properties"]["n"], i);
    }
}

fn a_group_resolves_as_its_messages_one_by_one(h: &Harness) {
    let before = vec![json!({"type": "identify", "userId": "u0", "anonymousId": "a0"})];
    let group = vec![
        json!({"type": "track", "anonymousId": "a1", "event": "Viewed"}),
        json!({"type": "identify", "anonymousId": "a1", "userId": "u1", "timestamp": "2024-01-01T00:00:00Z", "traits": {"email": "e1@x.fi", "tier": "gold"}}),
        json!({"type": "track", "anonymousId": "a2", "event": "Viewed", "properties": {"n": 1}}),
        json!({"type": "identify", "anonymousId": "a2", "timestamp": "2024-01-03T00:00:00Z", "traits": {"email": "e1@x.fi", "city": "Oulu"}}),
        json!({"type": "identify", "userId": "u2", "anonymousId": "a3"}),
        json!({"type": "identify", "userId": "u2", "traits": {"email": "e1@x.fi"}}),
        json!({"type": "identify", "anonymousId": "a4", "traits": {"email": "e2@x.fi"}, "context": {"device": {"id": "d1"}}}),
        json!({"type": "identify", "anonymousId": "a5", "traits": {"email": "e3@x.fi"}, "context": {"device": {"id": "d1"}}}),
        json!({"type": "identify", "userId": "u1", "timestamp": "2023-01-01T00:00:00Z", "traits": {"tier": "free", "age": 40}}),
        json!({"type": "identify", "userId": "u1", "timestamp": "2024-02-01T00:00:00Z", "traits": {"tier": "silver"}}),
        json!({"type": "identify", "anonymousId": "a0", "traits": {"email": "e0@x.fi"}}),
        json!({"type": "track", "userId": "u0", "anonymousId": "a1", "event": "Paid"}),
        json!({"type": "track", "anonymousId": "a6", "event": "Viewed"}),
        json!({"type": "identify", "anonymousId": "a6", "traits": {"email": "e0@x.fi"}}),
    ];
    let one_by_one = Harness::new(h.pg.is_some());
    h.ingest(before.clone());
    one_by_one.ingest(before);
    let together = h.ingest(group.clone());
    assert!(together.iter().all(|o| matches!(o, Outcome::Stored(_))));
    for m in group {
        stored(&one_by_one.ingest(vec![m])[0]);
    }
    let describe = |h: &Harness| {
        let mut ids = std::collections::BTreeSet::new();
        for (kind, values) in [
            ("user_id", &["u0", "u1", "u2"][..]),
            (
                "anonymous_id",
                &["a0", "a1", "a2", "a3", "a4", "a5", "a6"][..],
            ),
            ("email", &["e0@x.fi", "e1@x.fi", "e2@x.fi", "e3@x.fi"][..]),
            ("device_id", &["d1"][..]),
        ] {
            for v in values {
                ids.insert(h.lookup(kind, v).unwrap_or_else(|| panic!("{kind} {v}")));
            }
        }
        let mut profiles: Vec<String> = ids
            .into_iter()
            .map(|p| {
                let v = h.view(p);
                let mut idents: Vec<_> = v
                    .identifiers
                    .iter()
                    .map(|i| format!("{}={}", i.kind, i.value))
                    .collect();
                idents.sort();
                let mut merges: Vec<_> = v
                    .merges
                    .iter()
                    .map(|m| format!("{} {} {:?}", m.identifier_type, m.outcome, m.reason))
                    .collect();
                merges.sort();
                format!(
                    "{idents:?} events={} traits={} merges={merges:?}",
                    v.event_count,
                    Value::Object(v.traits)
                )
            })
            .collect();
        profiles.sort();
        (profiles, h.store.counts().unwrap())
    };
    let (a, ca) = describe(h);
    let (b, cb) = describe(&one_by_one);
    assert_eq!(a, b);
    assert_eq!(
        (ca.profiles, ca.events, ca.identifiers),
        (cb.profiles, cb.events, cb.identifiers)
    );
    assert_eq!(ca.events, 15);
}
