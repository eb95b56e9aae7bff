//! The offline register on each backend: imports go through identity
//! resolution, are idempotent, replace a changed order, skip erased people,
//! keep no plaintext, and the shop's stock answers the offer.

use super::everything;
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::imports::catalog::{self, StoreBasis};
use tarmo_store::imports::{self, Format, ImportKind, ImportSpec, Mapping, Status};

use super::Harness;

fn spec(kind: ImportKind) -> ImportSpec {
    ImportSpec {
        kind,
        format: Format::Csv,
        mapping: Mapping::default(),
        source: "till export marker-src-77".into(),
        documentation: "forms archive marker-doc-88".into(),
        file_name: format!("{}.csv", kind.as_str()),
        skip_invalid: false,
        dry_run: false,
    }
}

fn run(h: &Harness, kind: ImportKind, csv: &str) -> imports::Finished {
    imports::run(
        &h.store,
        &h.writer,
        &h.cfg,
        spec(kind),
        csv.as_bytes(),
        None,
        |_, _| {},
    )
    .unwrap()
}

fn orders_of(h: &Harness, profile: ProfileId) -> Vec<serde_json::Value> {
    let page = h
        .store
        .events_page(&everything(), profile, None, 100)
        .unwrap()
        .unwrap();
    page.events
        .into_iter()
        .map(|e| e.message)
        .filter(|m| m["event"] == "Order Completed")
        .collect()
}

const CUSTOMERS: &str = "\
email,loyalty_card,first_name,city,preferred_store
ada@example.fi,LC-1,Ada,Tampere,S1
ben@example.fi,LC-2,Ben,Helsinki,
cy@example.fi,LC-3,Cy,Oulu,
";

/// A setting of the writer's SQLite connection: `cache_size` (its page
/// cache, KiB, negative) or `journal_size_limit` (how far its log is cut
/// back after a checkpoint, bytes; -1: not at all).
fn writer_pragma(h: &Harness, name: &'static str) -> i64 {
    h.writer
        .transact_blocking(move |ctx| {
            ctx.conn
                .query_opt(&format!("PRAGMA {name}"), &[])?
                .unwrap()
                .int(0)
        })
        .unwrap()
}

fn writer_cache(h: &Harness) -> i64 {
    writer_pragma(h, "cache_size")
}

fn log_limit(h: &Harness) -> i64 {
    writer_pragma(h, "journal_size_limit")
}

/// How many entries each of the writer's identity caches may hold.
fn identity_cache(h: &Harness) -> usize {
    h.writer
        .transact_blocking(|ctx| Ok(ctx.identity_cache_capacity()))
        .unwrap()
}

pub fn imports_are_idempotent_replace_orders_and_skip_erased_people(h: &Harness) {
    let sqlite = h.pg.is_none();
    let normal = if sqlite { writer_cache(h) } else { 0 };
    let normal_limit = if sqlite { log_limit(h) } else { 0 };
    let normal_ids = identity_cache(h);
    // PostgreSQL's writer caches no identities (another node may change
    // them); SQLite's does.
    assert_eq!(normal_ids > 0, sqlite, "{normal_ids}");
    let mut during = 0;
    let mut during_limit = 0;
    let mut during_ids = 0;
    let done = imports::run(
        &h.store,
        &h.writer,
        &h.cfg,
        spec(ImportKind::Customers),
        CUSTOMERS.as_bytes(),
        None,
        |_, _| {
            if sqlite {
                during = writer_cache(h);
                during_limit = log_limit(h);
            }
            during_ids = identity_cache(h);
        },
    )
    .unwrap();
    // The identity caches grow while records go in, and come back after;
    // a writer without them stays without.
    let bulk = tarmo_store::writer::BULK_IDENTITY_CACHE.max(normal_ids);
    assert_eq!(during_ids, if sqlite { bulk } else { 0 });
    assert_eq!(identity_cache(h), normal_ids);
    if sqlite {
        // A bulk load's cache while records go in, the usual one after.
        assert!(
            during < 4 * normal,
            "{during} KiB during, {normal} KiB before"
        );
        assert_eq!(writer_cache(h), normal);
        // The log is never cut back while the writer writes, a load or
        // not (its blocks are written over, not allocated again); the
        // checkpointer truncates it at a lull.
        assert_eq!(during_limit, -1);
        assert_eq!(normal_limit, -1);
        assert_eq!(log_limit(h), -1);
    }
    assert_eq!(done.status, Status::Done);
    assert_eq!(done.report.created, 3, "{:?}", done.report);
    let ada = h.lookup("email", "ada@example.fi").unwrap();
    assert_eq!(h.lookup("loyalty_card", "LC-1"), Some(ada));
    let view = h.view(ada);
    assert_eq!(view.traits["city"], "Tampere");
    assert!(view.identifiers.iter().all(|i| i.verified));
    let again = run(h, ImportKind::Customers, CUSTOMERS);
    assert_eq!(
        (
            again.report.created,
            again.report.updated,
            again.report.unchanged
        ),
        (0, 0, 3)
    );
    let events_before = view.event_count;
    assert_eq!(
        h.view(ada).event_count,
        events_before,
        "an unchanged row writes nothing"
    );
    // A CRM change of one trait updates that person only.
    let changed = CUSTOMERS.replace("Ben,Helsinki", "Ben,Espoo");
    let r = run(h, ImportKind::Customers, &changed).report;
    assert_eq!((r.updated, r.unchanged), (1, 2));
    let ben = h.lookup("email", "ben@example.fi").unwrap();
    assert_eq!(h.view(ben).traits["city"], "Espoo");

    let orders = "\
order_id,ordered_at,loyalty_card,store_id,total,currency
T1,2026-10-01,LC-1,S2,30.00,EUR
T2,2026-10-02,LC-2,S1,12.50,EUR
";
    let r = run(h, ImportKind::Orders, orders).report;
    assert_eq!(r.created, 2);
    assert_eq!(orders_of(h, ada).len(), 1);
    let r = run(h, ImportKind::Orders, &orders.replace("30.00", "35.00")).report;
    assert_eq!((r.created, r.updated, r.unchanged), (0, 1, 1));
    let o = orders_of(h, ada);
    assert_eq!(o.len(), 1, "replaced, not duplicated: {o:?}");
    assert_eq!(o[0]["properties"]["revenue"], 35);
    assert_eq!(
        h.view(ada).event_count,
        events_before + 1,
        "the counter follows the replacement"
    );

    // Nothing the files said is in the tables in plaintext.
    {
        let mut c = h.store.conn().unwrap();
        for r in c.query("SELECT details, report FROM imports", &[]).unwrap() {
            for i in 0..2 {
                if let Some(b) = r.opt_blob(i).unwrap() {
                    let s = String::from_utf8_lossy(&b);
                    assert!(!s.contains("marker-src-77") && !s.contains("marker-doc-88"));
                }
            }
        }
    }

    // Cy is erased: the same files skip and count them.
    let cy = h.lookup("email", "cy@example.fi").unwrap();
    h.writer
        .transact_blocking(move |ctx| {
            tarmo_store::erasure::erase_profile(ctx, cy, None, true).map(|_| ())
        })
        .unwrap();
    let r = run(h, ImportKind::Customers, &changed).report;
    assert_eq!((r.unchanged, r.suppressed, r.created), (2, 1, 0), "{r:?}");
    assert_eq!(h.lookup("email", "cy@example.fi"), None);
    let mut c = h.store.conn().unwrap();
    let n = c
        .query_opt(
            "SELECT count(*) FROM import_rows WHERE profile_id = $1",
            &[P::Int(cy.0)],
        )
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(n, 0, "an erased person's row hashes go with them");
}

pub fn stock_imports_answer_the_offer(h: &Harness) {
    let r = run(
        h,
        ImportKind::Products,
        "product_id,name_fi,name_en,category,price\nP1,Vihreä tee,Green tea,tea,4.50\nP2,Muki,Mug,kitchen,12\n",
    )
    .report;
    assert_eq!(r.created, 2);
    run(
        h,
        ImportKind::Stores,
        "store_id,name,city,latitude,longitude\nS1,Tarmo Keskusta,Tampere,61.4981,23.7610\nS2,Tarmo Itis,Helsinki,60.2108,25.0825\nS3,Tarmo Kamppi,Helsinki,60.1690,24.9320\n",
    );
    let stock = "store_id,product_id,quantity\nS1,P1,5\nS2,P1,0\nS3,P1,3\nS2,P2,9\n";
    assert_eq!(run(h, ImportKind::Stock, stock).report.created, 4);
    let r = run(h, ImportKind::Stock, stock).report;
    assert_eq!(
        (r.created, r.updated, r.unchanged),
        (0, 0, 4),
        "a re-import changes nothing"
    );
    // Bad rows are refused whole.
    let bad = imports::run(
        &h.store,
        &h.writer,
        &h.cfg,
        spec(ImportKind::Stock),
        b"store_id,product_id,quantity\nS1,P1,-2\nS1,P2,1.5\n",
        None,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(bad.status, Status::Invalid);
    assert_eq!(bad.report.invalid, 2);

    run(h, ImportKind::Customers, CUSTOMERS);
    run(
        h,
        ImportKind::Orders,
        "order_id,ordered_at,loyalty_card,store_id\nU1,2026-09-01,LC-3,S2\n",
    );
    let (ada, ben, cy) = (
        h.lookup("email", "ada@example.fi").unwrap(),
        h.lookup("email", "ben@example.fi").unwrap(),
        h.lookup("email", "cy@example.fi").unwrap(),
    );
    let mut c = h.store.conn().unwrap();
    let v = h.store.vault().clone();
    // Ada: her preferred store.
    let o = catalog::offer(&mut *c, &v, ada, "P1", Some("fi"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            o.store.name.as_str(),
            o.product.name.as_str(),
            o.quantity,
            o.basis
        ),
        ("Tarmo Keskusta", "Vihreä tee", 5, StoreBasis::Preferred)
    );
    // Ben: no preference, no purchase; the stores of his city, the one
    // that has it.
    let o = catalog::offer(&mut *c, &v, ben, "P1", Some("en"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (o.store.id.as_str(), o.product.name.as_str(), o.basis),
        ("S3", "Green tea", StoreBasis::City)
    );
    // Cy: the store of the latest till purchase, where P1 is out.
    assert_eq!(
        catalog::store_of(&mut *c, &v, cy).unwrap(),
        Some(("S2".to_owned(), StoreBasis::LatestPurchase))
    );
    assert_eq!(catalog::offer(&mut *c, &v, cy, "P1", None).unwrap(), None);
    // A language the product has no name in: English, then any.
    let o = catalog::offer(&mut *c, &v, cy, "P2", Some("sv"))
        .unwrap()
        .unwrap();
    assert_eq!((o.product.name.as_str(), o.quantity), ("Mug", 9));
    assert_eq!(
        catalog::offer(&mut *c, &v, ada, "P404", None).unwrap(),
        None
    );
}

pub fn in_stock_follows_views_and_stock_imports(h: &Harness) {
    use serde_json::json;
    use tarmo_core::consent::{PurposeId, PurposeSpec};
    use tarmo_core::segments::{LifecycleConfig, Rule};
    use tarmo_store::segments::SegmentDef;
    use tarmo_store::segments::engine::SegmentEngine;

    // A purpose that reads where people shop (traits) and what they do.
    let mut spec: PurposeSpec = h
        .store
        .catalog()
        .unwrap()
        .require("personalisation")
        .unwrap()
        .spec
        .clone();
    spec.data_categories
        .push(tarmo_core::consent::DataCategory::parse("profile").unwrap());
    let id = PurposeId::parse("personalisation").unwrap();
    h.writer
        .transact_blocking(move |ctx| {
            tarmo_store::consent::upsert_purpose(ctx.conn, &id, &spec, false, ctx.now_ms)
        })
        .unwrap();
    h.store.catalog_changed();

    run(
        h,
        ImportKind::Stores,
        "store_id,name,city\nS1,Keskusta,Tampere\n",
    );
    run(
        h,
        ImportKind::Stock,
        "store_id,product_id,quantity\nS1,P1,0\n",
    );
    run(
        h,
        ImportKind::Customers,
        "user_id,city\nann,Tampere\nbob,Oulu\n",
    );
    h.ingest(vec![
        json!({"type": "track", "userId": "ann", "event": "Product Viewed", "properties": {"product_id": "P1"}}),
        json!({"type": "track", "userId": "bob", "event": "Product Viewed", "properties": {"product_id": "P1"}}),
    ]);
    let ann = h.lookup("user_id", "ann").unwrap();
    let engine = SegmentEngine::start(
        h.store.clone(),
        h.writer.clone(),
        LifecycleConfig::default(),
    )
    .unwrap();
    let now = tarmo_store::now_ms();
    let (_, n) = engine
        .put(SegmentDef {
            id: "reminder".into(),
            name: "In stock near them".into(),
            purpose: tarmo_core::consent::PurposeId::parse("personalisation").unwrap(),
            rule: Rule::from_json(
                &json!({"in_stock": {"product": "viewed", "store": "preferred"}}),
            )
            .unwrap(),
            created_ms: now,
            updated_ms: now,
        })
        .unwrap();
    assert_eq!(n, 0, "sold out in Tampere");
    let members = |e: &SegmentEngine| -> Vec<ProfileId> {
        e.members("reminder", None, 100, None)
            .unwrap()
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.0)
            .collect()
    };
    run(
        h,
        ImportKind::Stock,
        "store_id,product_id,quantity\nS1,P1,3\n",
    );
    engine.tick().unwrap();
    assert_eq!(members(&engine), vec![ann], "Bob's city has no store");
    run(
        h,
        ImportKind::Stock,
        "store_id,product_id,quantity\nS1,P1,0\n",
    );
    engine.tick().unwrap();
    assert_eq!(members(&engine), Vec::<ProfileId>::new());
}
