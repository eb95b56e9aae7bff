//! Installation keys and master-key rotation: a store made before the
//! installation keys existed keeps every blind index, MAC and wrapped data
//! key it holds; rotation re-wraps one record and needs the current key.

use super::everything;
use serde_json::{Map, Value, json};
use tarmo_core::consent::{ConsentDecision, Method};
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::consent::{self, NewEntry};
use tarmo_store::vault::{INSTALLATION_KEYS, InstallationKeys, MasterKey, Vault};
use tarmo_store::{Error, Store, rotate_master};

use super::Harness;

fn evidence() -> Map<String, Value> {
    json!({"ip": "192.0.2.7"}).as_object().unwrap().clone()
}

/// A person with an email, traits and a consent entry; their profile id.
fn person(h: &Harness, user: &str, email: &str) -> ProfileId {
    h.ingest(vec![json!({
        "type": "identify", "userId": user,
        "traits": {"email": email, "city": "Vaasa"}
    })]);
    let p = h.lookup("email", email).unwrap();
    let e = NewEntry {
        profile_id: p,
        purpose: tarmo_core::consent::PurposeId::parse("email_marketing").unwrap(),
        decision: ConsentDecision::Granted,
        method: Method::WebForm,
        notice_version: None,
        at_ms: None,
        source: "test form".into(),
        evidence: evidence(),
        channel: None,
    };
    h.writer
        .transact_blocking(move |ctx| {
            consent::append(ctx.conn, ctx.vault, &ctx.catalog, &[e], ctx.now_ms)
        })
        .unwrap();
    p
}

/// Everything a reopened store must still do with what was stored before.
fn reads_back(store: &Store, p: ProfileId, email: &str) {
    let cfg = tarmo_core::identity::IdentityConfig::new(Some("FI"), &[]).unwrap();
    let id = cfg.identifier(cfg.kind("email").unwrap(), email).unwrap();
    assert_eq!(store.find_profile(&id).unwrap(), Some(p));
    let view = store.profile_view(&everything(), p).unwrap().unwrap();
    assert_eq!(view.traits["city"], "Vaasa");
    assert!(view.identifiers.iter().any(|i| i.value == email));
    let mut c = store.conn().unwrap();
    let r = consent::verify(&mut *c, store.vault(), &mut |_| {}).unwrap();
    assert!(r.first_broken.is_none(), "{:?}", r.first_broken);
    assert!(r.entries >= 1);
}

fn record(h: &Harness) -> Option<Vec<u8>> {
    let mut c = h.store.conn().unwrap();
    let sql = format!("SELECT value FROM {} WHERE key = $1", c.keyring_meta());
    let found = c
        .query_opt(&sql, &[P::Text(INSTALLATION_KEYS)])
        .unwrap()
        .map(|r| r.blob(0).unwrap());
    if c.keyring_meta() != "meta" {
        // On PostgreSQL the record is in the keyring schema only: a dump
        // of the data without that schema holds no key.
        assert!(c.meta_get(INSTALLATION_KEYS).unwrap().is_none());
    }
    found
}

pub fn a_store_made_before_installation_keys_keeps_its_keys(h: &Harness) {
    let master = h.master();
    let p = person(h, "legacy-1", "legacy@example.fi");
    // The blind index stored is the one the old code derived from the
    // master key: nothing was rewritten.
    let old = Vault::new(&master, 1);
    let bidx = old.blind_index("email", "legacy@example.fi");
    let mut c = h.store.conn().unwrap();
    let held = c
        .query(
            "SELECT profile_id FROM identifiers WHERE bidx = $1",
            &[P::Blob(&bidx.0)],
        )
        .unwrap();
    assert_eq!(held.len(), 1);
    // The record holds exactly the derived keys.
    let keys = InstallationKeys::unwrap_under(&master, &record(h).unwrap()).unwrap();
    assert_eq!(
        Vault::with_keys(&keys, 1).blind_index("email", "legacy@example.fi"),
        bidx
    );
    // Drop the record: the store is now byte for byte what the old code
    // left (every value above was written with the derived keys).
    let sql = format!("DELETE FROM {} WHERE key = $1", c.keyring_meta());
    c.exec(&sql, &[P::Text(INSTALLATION_KEYS)]).unwrap();
    drop(c);
    // A wrong key is still refused, and writes no record.
    assert!(matches!(
        Store::open(h.backend(), &MasterKey::generate().unwrap(), 10).err(),
        Some(Error::WrongMasterKey)
    ));
    assert!(record(h).is_none());
    // Upgraded on open: the record is back, everything reads.
    let store = Store::open(h.backend(), &master, 10).unwrap();
    assert!(record(h).is_some());
    reads_back(&store, p, "legacy@example.fi");
    // And the upgraded store rotates like any other.
    let new = MasterKey::generate().unwrap();
    rotate_master(&h.backend(), &master, &new).unwrap();
    reads_back(
        &Store::open(h.backend(), &new, 10).unwrap(),
        p,
        "legacy@example.fi",
    );
}

pub fn rotating_the_master_key_rewraps_the_installation_keys_only(h: &Harness) {
    let master = h.master();
    let p = person(h, "rot-1", "rotate@example.fi");
    // New stores get random installation keys, not the derived ones.
    assert!(h.lookup("email", "rotate@example.fi").is_some());
    let derived = Vault::new(&master, 1).blind_index("email", "rotate@example.fi");
    let held = h
        .store
        .conn()
        .unwrap()
        .query(
            "SELECT 1 FROM identifiers WHERE bidx = $1",
            &[P::Blob(&derived.0)],
        )
        .unwrap();
    assert!(held.is_empty());

    let count_keys = || -> Vec<Vec<u8>> {
        h.store
            .conn()
            .unwrap()
            .data_keys_after(0, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, wrapped)| wrapped)
            .collect()
    };
    let data_keys = count_keys();
    let before = record(h).unwrap();
    let new = MasterKey::generate().unwrap();

    // A wrong current key: refused, nothing changed.
    let err = rotate_master(&h.backend(), &MasterKey::generate().unwrap(), &new).unwrap_err();
    assert!(matches!(err, Error::WrongMasterKey), "{err:?}");
    assert_eq!(record(h).unwrap(), before);
    // The same key twice: refused with its own code.
    let err = rotate_master(&h.backend(), &master, &master).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rejected {
                code: tarmo_store::Code::MasterKeyUnchanged,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(record(h).unwrap(), before);

    rotate_master(&h.backend(), &master, &new).unwrap();
    assert_ne!(record(h).unwrap(), before);
    // No data key was rewritten.
    assert_eq!(count_keys(), data_keys);
    // The running store goes on with the keys it holds.
    let q = person(h, "rot-2", "after@example.fi");
    reads_back(&h.store, q, "after@example.fi");
    // The old key no longer opens the store; the new one opens everything.
    assert!(matches!(
        Store::open(h.backend(), &master, 10).err(),
        Some(Error::WrongMasterKey)
    ));
    let reopened = Store::open(h.backend(), &new, 10).unwrap();
    reads_back(&reopened, p, "rotate@example.fi");
    reads_back(&reopened, q, "after@example.fi");
    // Rotating again needs the new key as the current one.
    assert!(matches!(
        rotate_master(&h.backend(), &master, &MasterKey::generate().unwrap()),
        Err(Error::WrongMasterKey)
    ));
    // Two rotations at once: exactly one wins, and its key opens the store.
    // On PostgreSQL a third connection holds the record's row lock until
    // both have read it, so they do overlap (SQLite's BEGIN IMMEDIATE
    // makes them take turns).
    let hexes: Vec<String> = (0..2)
        .map(|_| MasterKey::generate().unwrap().to_hex())
        .collect();
    let mut holder = (h.store.backend_name() == "postgres").then(|| {
        let mut c = h.backend().connect().unwrap();
        c.begin().unwrap();
        let sql = format!(
            "UPDATE {} SET value = value WHERE key = $1",
            c.keyring_meta()
        );
        c.exec(&sql, &[P::Text(INSTALLATION_KEYS)]).unwrap();
        c
    });
    let results: Vec<bool> = std::thread::scope(|sc| {
        let runs: Vec<_> = hexes
            .iter()
            .map(|hex| {
                let (b, cur) = (h.backend(), MasterKey::from_hex(&new.to_hex()).unwrap());
                sc.spawn(move || {
                    rotate_master(&b, &cur, &MasterKey::from_hex(hex).unwrap()).is_ok()
                })
            })
            .collect();
        if let Some(c) = holder.as_mut() {
            std::thread::sleep(std::time::Duration::from_millis(700));
            c.commit().unwrap();
        }
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
    let winner = &hexes[results.iter().position(|ok| *ok).unwrap()];
    let store = Store::open(h.backend(), &MasterKey::from_hex(winner).unwrap(), 10).unwrap();
    reads_back(&store, p, "rotate@example.fi");
}

/// PostgreSQL: the wrapped data keys are in schema `keyring`, apart from
/// the data, and every connection finds them there.
pub fn the_data_keys_live_in_a_schema_of_their_own(h: &Harness) {
    let p = person(h, "schema-1", "schema@example.fi");
    let mut c = h.store.conn().unwrap();
    let schemas: Vec<String> = c
        .query(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'data_keys'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.text(0).unwrap())
        .collect();
    assert_eq!(schemas, vec!["keyring".to_owned()]);
    let held = c
        .query(
            "SELECT 1 FROM keyring.data_keys WHERE owner_id = $1",
            &[P::Int(p.0)],
        )
        .unwrap();
    assert_eq!(held.len(), 1);
    drop(c);
    reads_back(
        &Store::open(h.backend(), &h.master(), 10).unwrap(),
        p,
        "schema@example.fi",
    );
}

/// PostgreSQL: a store made before migration 20 kept the installation
/// keys' record in `public.meta`, where a dump of the data holds it. On
/// the next start it moves to `keyring.meta`, and the store opens as
/// before.
pub fn an_existing_store_moves_its_installation_keys_into_the_keyring(h: &Harness) {
    let master = h.master();
    let p = person(h, "moved-1", "moved@example.fi");
    let held = record(h).expect("a record");
    // Back to what the store looked like before migration 20.
    let mut c = h.backend().connect().unwrap();
    c.exec(
        "INSERT INTO public.meta (key, value) VALUES ($1, $2)",
        &[P::Text(INSTALLATION_KEYS), P::Blob(&held)],
    )
    .unwrap();
    c.exec("DROP TABLE keyring.meta", &[]).unwrap();
    c.exec("DELETE FROM schema_migrations WHERE version = 20", &[])
        .unwrap();
    drop(c);
    // The next start migrates: the record is in the keyring only (`record`
    // checks that `public.meta` has none), unchanged, and opens the store.
    let store = Store::open(h.backend(), &master, 10).unwrap();
    assert_eq!(record(h).as_deref(), Some(&held[..]));
    reads_back(&store, p, "moved@example.fi");
}
