//! Data subject requests, erasure and retention, on each backend.

use super::everything;
use serde_json::{Map, Value, json};
use tarmo_core::consent::{ConsentDecision, Method, Reason, decide};
use tarmo_store::conn::{Cell, P, ProfileId, RequestId};
use tarmo_store::consent::{self, NewEntry, Subject};
use tarmo_store::doi::{self, Subscribe};
use tarmo_store::requests::{self, Filter, NewRequest, RequestKind, RequestStatus};
use tarmo_store::resolve::Outcome;

use super::Harness;

fn prepared(h: &Harness, kind: &str, value: &str) -> tarmo_store::resolve::PreparedIdentifier {
    let id = h.cfg.identifier(h.cfg.kind(kind).unwrap(), value).unwrap();
    h.store.prepare_identifier(&id)
}

fn request(
    h: &Harness,
    kind: RequestKind,
    subject: (&str, &str),
) -> tarmo_store::Result<RequestId> {
    let req = NewRequest {
        kind,
        subject: prepared(h, subject.0, subject.1),
        corrected: None,
        purposes: None,
        language: "en".into(),
        origin: "staff",
        actor: "test".into(),
    };
    h.writer
        .transact_blocking(move |ctx| requests::create(ctx, req, 3_600_000))
}

fn verify(h: &Harness, id: RequestId) -> tarmo_store::Result<()> {
    h.writer.transact_blocking(move |ctx| {
        requests::verify(ctx, id, "staff", "ID card seen at the till")
    })
}

fn view(h: &Harness, id: RequestId) -> requests::RequestView {
    requests::get(
        &mut *h.store.conn().unwrap(),
        h.store.vault(),
        id,
        tarmo_store::now_ms(),
    )
    .unwrap()
}

fn grant(h: &Harness, profile: ProfileId, purpose: &str, ev: Value) {
    let e = NewEntry {
        channel: None,
        profile_id: profile,
        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
        decision: ConsentDecision::Granted,
        method: Method::WebForm,
        notice_version: None,
        at_ms: None,
        source: "form".into(),
        evidence: ev.as_object().unwrap().clone(),
    };
    h.writer
        .transact_blocking(move |ctx| {
            consent::append(ctx.conn, ctx.vault, &ctx.catalog, &[e], ctx.now_ms)
        })
        .unwrap();
}

fn reason(h: &Harness, profile: ProfileId, purpose: &str) -> Reason {
    let catalog = h.store.catalog().unwrap();
    let rule = catalog.require(purpose).unwrap().rule;
    match consent::subject_by_id(
        &mut *h.store.conn().unwrap(),
        profile,
        &tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
    )
    .unwrap()
    {
        Subject::Known(_, st, flags) => {
            decide(&rule, None, st.as_ref(), flags, tarmo_store::now_ms()).reason
        }
        _ => Reason::UnknownProfile,
    }
}

/// Every cell of every table, as text, for the content scan.
fn all_content(h: &Harness) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut c = h.store.conn().unwrap();
    let tables = [
        "meta",
        "api_keys",
        "profiles",
        "identifiers",
        "events",
        "dedup",
        "merges",
        "purposes",
        "purpose_versions",
        "consent_ledger",
        "consent_state",
        "consent_signals",
        "suppression",
        "profile_flags",
        "tokens",
        "outbox",
        "processors",
        "disclosures",
        "requests",
        "request_events",
        "processor_notifications",
        "retention_runs",
    ];
    for t in tables {
        for row in c.query(&format!("SELECT * FROM {t}"), &[]).unwrap() {
            for cell in row.0 {
                let text = match cell {
                    Cell::Null => continue,
                    Cell::Int(i) => i.to_string(),
                    Cell::Text(s) => s,
                    Cell::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
                };
                out.push((t.to_owned(), text));
            }
        }
    }
    // The data keys (a file of their own on SQLite, schema `keyring` on
    // PostgreSQL).
    for (owner, wrapped) in c.data_keys_after(0, i64::MAX).unwrap() {
        out.push(("data_keys".into(), owner.to_string()));
        out.push((
            "data_keys".into(),
            String::from_utf8_lossy(&wrapped).into_owned(),
        ));
    }
    out
}

pub fn erasure_deletes_the_person_everywhere_suppresses_and_spares_others(h: &Harness) {
    let marker = "Erasemark7q";
    let email = "erase.me.7q@example.fi";
    h.ingest(vec![
        json!({"type": "identify", "userId": "erase-7q", "anonymousId": "anon-7q",
            "traits": {"email": email, "phone": "040 7777777", "nickname": marker, "loyalty_card": "LC-7Q"},
            "context": {"device": {"id": "dev-7q"}}}),
        json!({"type": "track", "userId": "erase-7q", "event": "Bought", "properties": {"note": marker}}),
        json!({"type": "page", "anonymousId": "anon-7q-second"}),
        json!({"type": "identify", "anonymousId": "anon-7q-second", "traits": {"email": email}}),
        json!({"type": "identify", "userId": "keep-me", "traits": {"email": "keep@example.fi", "nickname": "Keeper"}}),
    ]);
    let p = h.lookup("user_id", "erase-7q").unwrap();
    let keep = h.lookup("user_id", "keep-me").unwrap();
    grant(
        h,
        p,
        "email_marketing",
        json!({"ip": "192.0.2.77", "user_agent": marker}),
    );
    grant(h, keep, "email_marketing", json!({"ip": "192.0.2.1"}));
    let sub = Subscribe {
        identifier: prepared(h, "email", email),
        address: email.into(),
        channel: "email",
        purposes: vec!["sms_marketing".into()],
        language: "fi".into(),
        source: "form".into(),
        evidence: Map::new(),
        token_ttl_ms: 3_600_000,
    };
    h.writer
        .transact_blocking(move |ctx| doi::subscribe(ctx, sub))
        .unwrap();
    let ledger_before =
        consent::verify(&mut *h.store.conn().unwrap(), h.store.vault(), &mut |_| {})
            .unwrap()
            .entries;

    let id = request(h, RequestKind::Erasure, ("email", email)).unwrap();
    assert_eq!(view(h, id).status, RequestStatus::AwaitingVerification);
    verify(h, id).unwrap();
    let v = view(h, id);
    assert_eq!(v.status, RequestStatus::Completed, "{v:?}");
    assert!(v.outcome.unwrap().contains("erased"));

    // Gone: by every identifier, and by id.
    for (k, val) in [
        ("user_id", "erase-7q"),
        ("email", email),
        ("phone", "+358407777777"),
        ("loyalty_card", "LC-7Q"),
        ("anonymous_id", "anon-7q"),
        ("anonymous_id", "anon-7q-second"),
        ("device_id", "dev-7q"),
    ] {
        assert_eq!(h.lookup(k, val), None, "{k}");
    }
    assert!(h.store.profile_view(&everything(), p).unwrap().is_none());
    let mut c = h.store.conn().unwrap();
    for t in ["events", "identifiers", "consent_state", "tokens", "outbox"] {
        let n = c
            .query_opt(
                &format!("SELECT count(*) FROM {t} WHERE profile_id = $1"),
                &[P::Int(p.0)],
            )
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(n, 0, "{t} still holds rows of the erased person");
    }
    assert!(
        c.data_key_get(p).unwrap().is_none(),
        "the data key is destroyed"
    );
    // The ledger keeps its chain; the erased person's entries cannot be opened.
    let r = consent::verify(&mut *c, h.store.vault(), &mut |_| {}).unwrap();
    assert_eq!((r.entries, r.first_broken), (ledger_before, None));
    assert!(
        consent::history(&mut *c, h.store.vault(), &everything(), p).is_err()
            || consent::history(&mut *c, h.store.vault(), &everything(), p)
                .unwrap()
                .is_empty()
    );
    drop(c);
    // No marker in any table, in any form.
    for (table, text) in all_content(h) {
        for m in [
            marker,
            &marker.to_lowercase(),
            email,
            "+358407777777",
            "LC-7Q",
        ] {
            assert!(!text.contains(m), "{m} found in {table}");
        }
    }

    // The other person is intact.
    let kv = h.view(keep);
    assert_eq!(kv.traits["nickname"], "Keeper");
    assert_eq!(reason(h, keep, "email_marketing"), Reason::ConsentGranted);
    let hist = consent::history(
        &mut *h.store.conn().unwrap(),
        h.store.vault(),
        &everything(),
        keep,
    )
    .unwrap();
    assert_eq!(hist[0].evidence["ip"], "192.0.2.1");

    // Ingestion of the suppressed identifiers stores nothing.
    let out = h.ingest(vec![
        json!({"type": "track", "userId": "someone-new", "event": "E", "properties": {"x": 1},
            "context": {"traits": {"email": email}}}),
        json!({"type": "identify", "userId": "erase-7q"}),
        json!({"type": "track", "userId": "keep-me", "event": "Still here"}),
    ]);
    assert_eq!(out[0], Outcome::Suppressed);
    assert_eq!(out[1], Outcome::Suppressed);
    assert!(matches!(out[2], Outcome::Stored(_)));
    assert_eq!(h.lookup("user_id", "someone-new"), None);
    // Subscribing the erased address again stores and sends nothing.
    let sub = Subscribe {
        identifier: prepared(h, "email", email),
        address: email.into(),
        channel: "email",
        purposes: vec!["email_marketing".into()],
        language: "en".into(),
        source: "form".into(),
        evidence: Map::new(),
        token_ttl_ms: 3_600_000,
    };
    let s = h
        .writer
        .transact_blocking(move |ctx| doi::subscribe(ctx, sub))
        .unwrap();
    assert!(s.suppressed);
    assert_eq!(h.lookup("email", email), None);
}

pub fn requests_follow_their_state_machine_and_deadlines(h: &Harness) {
    h.ingest(vec![json!({"type": "identify", "userId": "rq-1", "traits": {"email": "rq1@example.fi", "lastName": "Wrongname"}})]);
    let p = h.lookup("user_id", "rq-1").unwrap();
    let id = request(h, RequestKind::Access, ("user_id", "rq-1")).unwrap();
    let v = view(h, id);
    assert_eq!(
        v.status,
        RequestStatus::AwaitingVerification,
        "a link went to the email on record"
    );
    let due = tarmo_core::segment::parse_timestamp_ms(&v.due_at).unwrap();
    let received = tarmo_core::segment::parse_timestamp_ms(&v.received_at).unwrap();
    assert!(
        (28..=31).contains(&((due - received) / 86_400_000)),
        "one month"
    );
    // The same request again while open: refused.
    let err = request(h, RequestKind::Access, ("email", "rq1@example.fi")).unwrap_err();
    assert!(
        matches!(
            err,
            tarmo_store::Error::Rejected {
                code: tarmo_core::codes::Code::DuplicateRequest,
                ..
            }
        ),
        "{err:?}"
    );
    // Extension: once, with a reason.
    let e = |r: &str| {
        let r = r.to_owned();
        h.writer
            .transact_blocking(move |ctx| requests::extend(ctx, id, &r, "dpo"))
    };
    assert!(matches!(
        e(" ").unwrap_err(),
        tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::MissingReason,
            ..
        }
    ));
    e("many requests this month").unwrap();
    assert!(matches!(
        e("again").unwrap_err(),
        tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::AlreadyExtended,
            ..
        }
    ));
    let v = view(h, id);
    let due2 = tarmo_core::segment::parse_timestamp_ms(&v.due_at).unwrap();
    assert!(
        (58..=62).contains(&((due2 - due) / 86_400_000)),
        "two more months"
    );
    // Overdue: shown in the view and in the list.
    h.store
        .conn()
        .unwrap()
        .exec(
            "UPDATE requests SET due_ms = 1 WHERE id = $1",
            &[P::from(id)],
        )
        .unwrap();
    assert!(view(h, id).overdue);
    let overdue = requests::list(
        &mut *h.store.conn().unwrap(),
        &Filter {
            overdue: true,
            limit: 10,
            ..Default::default()
        },
        tarmo_store::now_ms(),
    )
    .unwrap();
    assert_eq!(overdue.iter().map(|r| r.id).collect::<Vec<_>>(), [id]);
    assert_eq!(
        requests::overdue_count(&mut *h.store.conn().unwrap(), tarmo_store::now_ms()).unwrap(),
        1
    );
    verify(h, id).unwrap();
    let v = view(h, id);
    assert_eq!(v.status, RequestStatus::Completed);
    assert!(!v.overdue);
    assert_eq!(v.history.len(), 5, "{:?}", v.history);
    assert!(matches!(
        verify(h, id).unwrap_err(),
        tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::AlreadyVerified,
            ..
        }
    ));
    let b = h.store.bundle(p).unwrap().unwrap();
    assert_eq!(b.traits["lastName"], "Wrongname");
    assert_eq!(b.identifiers.len(), 2);

    // Rectification corrects the traits.
    let req = NewRequest {
        kind: RequestKind::Rectification,
        subject: prepared(h, "user_id", "rq-1"),
        corrected: Some(json!({"lastName": "Virtanen"}).as_object().unwrap().clone()),
        purposes: None,
        language: "en".into(),
        origin: "staff",
        actor: "t".into(),
    };
    let rid = h
        .writer
        .transact_blocking(move |ctx| requests::create(ctx, req, 1000))
        .unwrap();
    verify(h, rid).unwrap();
    assert_eq!(h.view(p).traits["lastName"], "Virtanen");
    let bad = NewRequest {
        kind: RequestKind::Rectification,
        subject: prepared(h, "user_id", "rq-1"),
        corrected: None,
        purposes: None,
        language: "en".into(),
        origin: "staff",
        actor: "t".into(),
    };
    let err = h
        .writer
        .transact_blocking(move |ctx| requests::create(ctx, bad, 1000))
        .unwrap_err();
    assert!(matches!(
        err,
        tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::MissingCorrections,
            ..
        }
    ));

    // Restriction freezes every decision until lifted.
    grant(h, p, "email_marketing", json!({}));
    let rid = request(h, RequestKind::Restriction, ("user_id", "rq-1")).unwrap();
    verify(h, rid).unwrap();
    assert_eq!(reason(h, p, "email_marketing"), Reason::Restricted);
    assert_eq!(reason(h, p, "order_fulfilment"), Reason::Restricted);
    h.writer
        .transact_blocking(move |ctx| requests::lift(ctx, rid, "dpo"))
        .unwrap();
    assert_eq!(reason(h, p, "email_marketing"), Reason::ConsentGranted);

    // Objection stops direct marketing and legitimate interests for good.
    let oid = request(h, RequestKind::Objection, ("user_id", "rq-1")).unwrap();
    verify(h, oid).unwrap();
    assert_eq!(reason(h, p, "email_marketing"), Reason::Objected);
    assert_eq!(reason(h, p, "analytics"), Reason::Objected);
    assert_eq!(reason(h, p, "order_fulfilment"), Reason::Contract);
    grant(h, p, "email_marketing", json!({}));
    // (a web form is the person's explicit act: it counts again)
    assert_eq!(reason(h, p, "email_marketing"), Reason::ConsentGranted);

    // Refusal needs its legal reason, and closes the request.
    let xid = request(h, RequestKind::Erasure, ("user_id", "rq-1")).unwrap();
    let refuse = |r: &str| {
        let r = r.to_owned();
        h.writer
            .transact_blocking(move |ctx| requests::refuse(ctx, xid, &r, "dpo"))
    };
    assert!(refuse("").is_err());
    refuse("Art. 17(3)(b): receipts kept under the bookkeeping act").unwrap();
    assert_eq!(view(h, xid).status, RequestStatus::Refused);
    assert!(verify(h, xid).is_err());
    assert!(
        h.store.profile_view(&everything(), p).unwrap().is_some(),
        "a refused erasure erases nothing"
    );

    // An unknown subject: recorded, for staff to see, nothing to verify by link.
    let uid = request(h, RequestKind::Access, ("email", "nobody@example.fi")).unwrap();
    let v = view(h, uid);
    assert_eq!(
        (v.status, v.subject_found),
        (RequestStatus::Received, false)
    );
    verify(h, uid).unwrap();
    assert_eq!(
        view(h, uid).outcome.as_deref(),
        Some("no data is held about the person")
    );
    assert!(matches!(
        requests::RequestKind::parse("forget-me").unwrap_err(),
        tarmo_store::Error::Rejected {
            code: tarmo_core::codes::Code::UnknownRequestType,
            ..
        }
    ));
}

pub fn retention_deletes_what_outlived_its_purposes(h: &Harness) {
    h.ingest(vec![
        json!({"type": "track", "userId": "old-1", "event": "Old"}),
        json!({"type": "track", "userId": "old-1", "event": "Older"}),
        json!({"type": "track", "userId": "new-1", "event": "New"}),
        json!({"type": "identify", "userId": "idle-1"}),
    ]);
    let old = h.lookup("user_id", "old-1").unwrap();
    let idle = h.lookup("user_id", "idle-1").unwrap();
    let new = h.lookup("user_id", "new-1").unwrap();
    grant(h, new, "email_marketing", json!({}));
    grant(h, old, "personalisation", json!({}));
    let day = 86_400_000i64;
    let now = tarmo_store::now_ms();
    {
        let mut c = h.store.conn().unwrap();
        // The old person's events are 3,000 days old (the longest retention
        // of a purpose using event data in the default catalog is 2,555 days:
        // order fulfilment, for the bookkeeping law).
        c.exec(
            "UPDATE events SET received_ms = $2 WHERE profile_id = $1",
            &[P::Int(old.0), P::Int(now - 3000 * day)],
        )
        .unwrap();
        // The idle person has had nothing for ten years.
        c.exec(
            "DELETE FROM events WHERE profile_id = $1",
            &[P::Int(idle.0)],
        )
        .unwrap();
        c.exec(
            "UPDATE profiles SET updated_ms = $2 WHERE id = $1",
            &[P::Int(idle.0), P::Int(now - 3650 * day)],
        )
        .unwrap();
        c.exec(
            "UPDATE profile_counts SET events = 0, last_ms = $2 WHERE profile_id = $1",
            &[P::Int(idle.0), P::Int(now - 3650 * day)],
        )
        .unwrap();
        // The old person's consent is two years old (lifetime 365 days).
        c.exec(
            "UPDATE consent_state SET at_ms = $2 WHERE profile_id = $1",
            &[P::Int(old.0), P::Int(now - 400 * day)],
        )
        .unwrap();
    }
    let dry = tarmo_store::retention::sweep(&h.writer, now, true).unwrap();
    assert_eq!(
        (
            dry.events_deleted,
            dry.consents_expired,
            dry.profiles_erased
        ),
        (2, 1, 1),
        "{dry:?}"
    );
    assert_eq!(
        h.store.counts().unwrap().events,
        3,
        "a dry run changes nothing"
    );
    let r = tarmo_store::retention::sweep(&h.writer, now, false).unwrap();
    assert_eq!(
        (r.events_deleted, r.consents_expired, r.profiles_erased),
        (2, 1, 1),
        "{r:?}"
    );
    assert_eq!(h.store.counts().unwrap().events, 1);
    assert_eq!(h.view(old).event_count, 0);
    assert!(h.store.profile_view(&everything(), idle).unwrap().is_none());
    assert_eq!(reason(h, old, "personalisation"), Reason::Expired);
    let hist = consent::history(
        &mut *h.store.conn().unwrap(),
        h.store.vault(),
        &everything(),
        old,
    )
    .unwrap();
    assert_eq!(
        (
            hist.last().unwrap().decision.as_str(),
            hist.last().unwrap().method.as_str()
        ),
        ("expired", "system")
    );
    assert_eq!(reason(h, new, "email_marketing"), Reason::ConsentGranted);
    // Not suppressed: the idle person may come back as a new customer.
    let out = h.ingest(vec![json!({"type": "identify", "userId": "idle-1"})]);
    assert!(matches!(out[0], Outcome::Stored(_)));
    let again = tarmo_store::retention::sweep(&h.writer, now, false).unwrap();
    assert_eq!(
        (
            again.events_deleted,
            again.consents_expired,
            again.profiles_erased
        ),
        (0, 0, 0)
    );
    let runs = h
        .store
        .conn()
        .unwrap()
        .query("SELECT count(*) FROM retention_runs", &[])
        .unwrap();
    assert_eq!(runs[0].int(0).unwrap(), 3);
}

fn outbox_mail(h: &Harness) -> Vec<tarmo_store::outbox::Claimed> {
    h.store
        .transact_direct(|c, v| {
            tarmo_store::outbox::claim_due(
                c,
                v,
                &Default::default(),
                "email",
                tarmo_store::now_ms() + 1,
                100,
            )
        })
        .unwrap()
}

pub fn profile_ids_never_come_back_after_erasure(h: &Harness) {
    use tarmo_store::links::SignedLink;
    let older = stored_of(
        &h.ingest(vec![json!({"type": "identify", "userId": "older-1",
        "traits": {"email": "older@shop.fi"}})])[0],
    );
    let gone = stored_of(
        &h.ingest(vec![json!({"type": "identify", "userId": "gone-1",
        "traits": {"email": "gone@shop.fi"}})])[0],
    );
    assert!(gone > older, "the person to erase is the newest profile");
    grant(h, gone, "email_marketing", json!({}));
    // A request still open when the person is erased, and a link they had.
    let open = request(h, RequestKind::Access, ("email", "gone@shop.fi")).unwrap();
    assert_eq!(view(h, open).status, RequestStatus::AwaitingVerification);
    let newest_mail: i64 = h
        .store
        .conn()
        .unwrap()
        .query_opt("SELECT max(id) FROM outbox", &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    let erase = request(h, RequestKind::Erasure, ("user_id", "gone-1")).unwrap();
    verify(h, erase).unwrap();
    assert_eq!(view(h, erase).status, RequestStatus::Completed);

    // The next new person gets an id never given before.
    let next = stored_of(
        &h.ingest(vec![json!({"type": "identify", "userId": "next-1",
        "traits": {"email": "next@shop.fi"}})])[0],
    );
    assert!(next > gone, "id {next} after erasing {gone}");
    grant(h, next, "email_marketing", json!({}));

    // The erased person's unsubscribe link reaches nobody.
    let link = SignedLink {
        profile_id: gone,
        scope: "email_marketing".into(),
        issued_ms: tarmo_store::now_ms(),
    };
    let acted = h
        .writer
        .transact_blocking(move |ctx| doi::unsubscribe(ctx, &link, Map::new()))
        .unwrap();
    assert!(!acted);
    assert_eq!(reason(h, next, "email_marketing"), Reason::ConsentGranted);
    // Their preference page finds no one.
    assert_eq!(
        doi::current_profile(&mut *h.store.conn().unwrap(), gone).unwrap(),
        None
    );
    // Their open request, verified now, does not act on the new person.
    verify(h, open).unwrap();
    let v = view(h, open);
    assert_eq!(v.status, RequestStatus::Completed);
    assert_eq!(
        v.outcome.as_deref(),
        Some("no data is held about the person")
    );
    // Messages get new ids too (a mail's id is its Message-ID).
    let fresh = request(h, RequestKind::Access, ("email", "next@shop.fi")).unwrap();
    assert_eq!(view(h, fresh).status, RequestStatus::AwaitingVerification);
    let mail = outbox_mail(h);
    assert!(mail.iter().all(|m| m.id > newest_mail), "outbox ids reused");
    assert!(mail.iter().all(|m| m.profile_id == next));
}

pub fn request_links_go_only_to_verified_addresses(h: &Harness) {
    use tarmo_core::identity::Trust;
    // Mallory's own profile, made through the public write key: her address
    // is a claim.
    let mallory = stored_of(
        &h.ingest_as(
            Trust::Client,
            vec![json!({"type": "identify",
        "anonymousId": "m-1", "traits": {"email": "mallory@evil.example"}})],
        )[0],
    );
    let r = request(h, RequestKind::Access, ("email", "mallory@evil.example")).unwrap();
    let v = view(h, r);
    assert_eq!(v.status, RequestStatus::Received, "staff verify; no link");
    assert!(outbox_mail(h).is_empty());
    // Staff verifying the person (here: the claimer herself) verify the
    // address the request names.
    let claimed = prepared(h, "email", "mallory@evil.example").bidx;
    let is_verified = |h: &Harness| {
        requests::identifier_verified(&mut *h.store.conn().unwrap(), &claimed).unwrap()
    };
    assert!(!is_verified(h));

    // A person whose profile holds a claimed address beside a verified one:
    // a request naming the claimed one sends its link to the verified one.
    let p = stored_of(
        &h.ingest_as(
            Trust::Client,
            vec![json!({"type": "identify", "userId": "u-77",
        "traits": {"email": "claimed@evil.example"}})],
        )[0],
    );
    assert_ne!(p, mallory);
    h.ingest(vec![
        json!({"type": "identify", "userId": "u-77", "traits": {"email": "real@shop.fi"}}),
    ]);
    let r = request(h, RequestKind::Access, ("email", "claimed@evil.example")).unwrap();
    assert_eq!(view(h, r).status, RequestStatus::AwaitingVerification);
    let mail = outbox_mail(h);
    assert_eq!(mail.len(), 1);
    let tarmo_store::outbox::OutboxMessage::RequestVerification { to, .. } = &mail[0].message
    else {
        panic!("expected a request verification");
    };
    assert_eq!(to, "real@shop.fi");

    // Double opt-in verifies the address it confirmed: afterwards a request
    // naming it is sent its link.
    let s = h
        .writer
        .transact_blocking({
            let identifier = prepared(h, "email", "mallory@evil.example");
            move |ctx| {
                doi::subscribe(
                    ctx,
                    Subscribe {
                        identifier,
                        address: "mallory@evil.example".into(),
                        channel: "email",
                        purposes: vec!["email_marketing".into()],
                        language: "en".into(),
                        source: "form".into(),
                        evidence: Map::new(),
                        token_ttl_ms: 3_600_000,
                    },
                )
            }
        })
        .unwrap();
    assert_eq!(s.profile_id, mallory);
    let mail = outbox_mail(h);
    let tarmo_store::outbox::OutboxMessage::Confirmation { token, .. } = mail[0].message.clone()
    else {
        panic!("expected a confirmation");
    };
    h.writer
        .transact_blocking(move |ctx| doi::confirm(ctx, &token, Map::new()))
        .unwrap();
    assert!(is_verified(h), "double opt-in verified the address");
    let r2 = request(h, RequestKind::Erasure, ("email", "mallory@evil.example")).unwrap();
    assert_eq!(view(h, r2).status, RequestStatus::AwaitingVerification);

    // Staff verification verifies the address a request names.
    let q = stored_of(
        &h.ingest_as(
            Trust::Client,
            vec![json!({"type": "identify",
        "anonymousId": "q-1", "traits": {"email": "quinn@shop.fi"}})],
        )[0],
    );
    let quinn = prepared(h, "email", "quinn@shop.fi").bidx;
    let r3 = request(h, RequestKind::Restriction, ("email", "quinn@shop.fi")).unwrap();
    assert_eq!(view(h, r3).status, RequestStatus::Received);
    verify(h, r3).unwrap();
    assert!(requests::identifier_verified(&mut *h.store.conn().unwrap(), &quinn).unwrap());
    assert!(
        h.view(q)
            .identifiers
            .iter()
            .any(|i| i.value == "quinn@shop.fi" && i.verified)
    );
}

fn stored_of(o: &Outcome) -> ProfileId {
    match o {
        Outcome::Stored(p) => *p,
        other => panic!("expected stored, got {other:?}"),
    }
}

pub fn staff_notes_and_collection_points_are_stored_sealed(h: &Harness) {
    h.ingest(vec![
        json!({"type": "identify", "userId": "noted", "traits": {"email": "noted@example.fi"}}),
    ]);
    let p = h.lookup("user_id", "noted").unwrap();
    let e = NewEntry {
        channel: None,
        profile_id: p,
        purpose: tarmo_core::consent::PurposeId::parse("email_marketing").unwrap(),
        decision: ConsentDecision::Granted,
        method: Method::Staff,
        notice_version: None,
        at_ms: None,
        source: "phone call with Src-Marker-Virtanen".into(),
        evidence: json!({"ip": "192.0.2.8"}).as_object().unwrap().clone(),
    };
    h.writer
        .transact_blocking(move |ctx| {
            consent::append(ctx.conn, ctx.vault, &ctx.catalog, &[e], ctx.now_ms)
        })
        .unwrap();
    let id = request(h, RequestKind::Access, ("user_id", "noted")).unwrap();
    h.writer
        .transact_blocking(move |ctx| {
            requests::verify(ctx, id, "staff", "passport Note-Marker-AB123 seen")
        })
        .unwrap();
    for (table, text) in all_content(h) {
        assert!(
            !text.contains("Src-Marker") && !text.contains("Note-Marker"),
            "plaintext in {table}: {text}"
        );
    }
    // Staff and the person still read them.
    let hist = consent::history(
        &mut *h.store.conn().unwrap(),
        h.store.vault(),
        &everything(),
        p,
    )
    .unwrap();
    assert_eq!(hist[0].source, "phone call with Src-Marker-Virtanen");
    assert_eq!(hist[0].evidence, json!({"ip": "192.0.2.8"}));
    let notes: Vec<String> = view(h, id)
        .history
        .into_iter()
        .filter_map(|t| t.note)
        .collect();
    assert!(
        notes.iter().any(|n| n == "passport Note-Marker-AB123 seen"),
        "{notes:?}"
    );
    // The chain still verifies with the sealed bytes hashed.
    let r = consent::verify(&mut *h.store.conn().unwrap(), h.store.vault(), &mut |_| {}).unwrap();
    assert_eq!(r.first_broken, None, "{r:?}");
}
