//! The consent ledger, the purpose catalog and double opt-in, on each backend.

use serde_json::{Map, Value, json};
use tarmo_core::consent::{
    Channel, ConsentDecision, Method, PurposeId, PurposeSpec, Reason, decide,
};
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::consent::{self, NewEntry, Subject};
use tarmo_store::consent::{ConsentSignal, SignalOutcome};
use tarmo_store::doi::{self, Subscribe};
use tarmo_store::links::{self, SignedLink};
use tarmo_store::outbox::{self, OutboxMessage};
use tarmo_store::resolve::EventConsent;

use super::Harness;
use super::everything;

fn ev(ip: &str) -> Map<String, Value> {
    json!({"ip": ip, "user_agent": "Mozilla/5.0 test"})
        .as_object()
        .unwrap()
        .clone()
}

fn entry(profile: ProfileId, purpose: &str, decision: ConsentDecision, method: Method) -> NewEntry {
    NewEntry {
        channel: None,
        profile_id: profile,
        purpose: tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
        decision,
        method,
        notice_version: None,
        at_ms: None,
        source: "test form".into(),
        evidence: ev("192.0.2.1"),
    }
}

fn profile_of(h: &Harness, user: &str) -> ProfileId {
    h.ingest(vec![json!({"type": "identify", "userId": user})]);
    h.lookup("user_id", user).unwrap()
}

fn append(h: &Harness, entries: Vec<NewEntry>) -> tarmo_store::Result<Vec<i64>> {
    h.writer.transact_blocking(move |ctx| {
        consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)
    })
}

fn state(h: &Harness, profile: ProfileId, purpose: &str) -> Option<ConsentDecision> {
    consent::state(
        &mut *h.store.conn().unwrap(),
        profile,
        &tarmo_core::consent::PurposeId::parse(purpose).unwrap(),
    )
    .unwrap()
    .map(|s| s.decision)
}

fn verdict(h: &Harness, profile: ProfileId, purpose: &str) -> (bool, Reason) {
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
            let v = decide(&rule, None, st.as_ref(), flags, tarmo_store::now_ms());
            (v.allowed, v.reason)
        }
        other => panic!("expected a known subject, got {other:?}"),
    }
}

fn spec(h: &Harness, id: &str) -> PurposeSpec {
    h.store.catalog().unwrap().require(id).unwrap().spec.clone()
}

fn upsert(
    h: &Harness,
    id: &str,
    s: PurposeSpec,
    reconsent: bool,
) -> tarmo_store::Result<consent::PurposeChange> {
    let id = PurposeId::parse(id).unwrap();
    let r = h.writer.transact_blocking(move |ctx| {
        consent::upsert_purpose(ctx.conn, &id, &s, reconsent, ctx.now_ms)
    });
    h.store.catalog_changed();
    r
}

pub fn purposes_are_versioned_and_material_changes_need_reconsent(h: &Harness) {
    let p = profile_of(h, "reader");
    append(
        h,
        vec![entry(
            p,
            "email_marketing",
            ConsentDecision::Granted,
            Method::WebForm,
        )],
    )
    .unwrap();
    assert_eq!(
        verdict(h, p, "email_marketing"),
        (true, Reason::ConsentGranted)
    );
    let v1 = h
        .store
        .catalog()
        .unwrap()
        .require("email_marketing")
        .unwrap()
        .notice_version
        .clone();

    // The same definition again changes nothing.
    let same = upsert(h, "email_marketing", spec(h, "email_marketing"), false).unwrap();
    assert_eq!(same.outcome, "unchanged");

    // A new name only: a new definition, the same notice.
    let mut s = spec(h, "email_marketing");
    s.name = "Our newsletter".into();
    let c = upsert(h, "email_marketing", s.clone(), false).unwrap();
    assert_eq!(
        (c.outcome, c.version, c.notice_version.as_str()),
        ("updated", 2, v1.as_str())
    );
    // Asking everyone again without telling them what changed is refused.
    let err = upsert(h, "email_marketing", s.clone(), true).unwrap_err();
    assert!(
        matches!(
            err,
            tarmo_store::Error::Rejected {
                code: tarmo_core::codes::Code::ReconsentNeedsNewNotice,
                ..
            }
        ),
        "{err:?}"
    );

    // A reworded notice that is not material: earlier consents still count.
    s.notice
        .insert("en".into(), "We send you our weekly news by email.".into());
    let c = upsert(h, "email_marketing", s.clone(), false).unwrap();
    assert_ne!(c.notice_version, v1);
    assert_eq!(
        verdict(h, p, "email_marketing"),
        (true, Reason::ConsentGranted)
    );

    // A material change: consents under older notices need asking again.
    s.notice.insert(
        "en".into(),
        "We send you news, and share your email with partners.".into(),
    );
    let c = upsert(h, "email_marketing", s.clone(), true).unwrap();
    assert!(c.reconsent_required);
    assert_eq!(
        verdict(h, p, "email_marketing"),
        (false, Reason::ReconsentRequired)
    );
    append(
        h,
        vec![entry(
            p,
            "email_marketing",
            ConsentDecision::Granted,
            Method::WebForm,
        )],
    )
    .unwrap();
    assert_eq!(
        verdict(h, p, "email_marketing"),
        (true, Reason::ConsentGranted)
    );

    // History is kept, and the old notice's text can still be shown.
    let hist = consent::purpose_history(&mut *h.store.conn().unwrap(), "email_marketing").unwrap();
    assert_eq!(hist.len(), 4);
    assert!(hist[3].material && !hist[2].material);
    let old = consent::notice_texts(&mut *h.store.conn().unwrap(), "email_marketing", &v1)
        .unwrap()
        .unwrap();
    assert!(old["en"].contains("one click"), "{old:?}");
    // An entry may name the (older) notice it was made under.
    let mut e = entry(
        p,
        "email_marketing",
        ConsentDecision::Granted,
        Method::WebForm,
    );
    e.notice_version = Some(v1.clone());
    append(h, vec![e]).unwrap();
    assert_eq!(
        verdict(h, p, "email_marketing"),
        (false, Reason::ReconsentRequired)
    );
}

fn verify(h: &Harness) -> consent::VerifyReport {
    let mut conn = h.store.conn().unwrap();
    consent::verify(&mut *conn, h.store.vault(), &mut |_| {}).unwrap()
}

/// A batch of entries from many people whose data keys are in no cache
/// reads the keys in one pass: each entry's evidence must still be sealed
/// under its own person's key.
pub fn a_ledger_batch_seals_each_persons_evidence_under_their_key(h: &Harness) {
    let people: Vec<ProfileId> = (0..40)
        .map(|i| profile_of(h, &format!("ledger-batch-{i}")))
        .collect();
    h.store.vault().forget_all();
    let entries = people
        .iter()
        .enumerate()
        .rev()
        .map(|(i, p)| NewEntry {
            evidence: ev(&format!("192.0.2.{i}")),
            ..entry(
                *p,
                "email_marketing",
                ConsentDecision::Granted,
                Method::WebForm,
            )
        })
        .collect();
    append(h, entries).unwrap();
    for (i, p) in people.iter().enumerate() {
        h.store.vault().forget_all();
        let hist = consent::history(
            &mut *h.store.conn().unwrap(),
            h.store.vault(),
            &everything(),
            *p,
        )
        .unwrap();
        assert_eq!(hist.len(), 1, "person {i}");
        assert_eq!(hist[0].evidence["ip"], format!("192.0.2.{i}"));
    }
    assert_eq!(verify(h).first_broken, None);
}

pub fn the_ledger_chain_detects_edits_removals_and_truncation(h: &Harness) {
    let p = profile_of(h, "chained");
    let q = profile_of(h, "other");
    for i in 0..10 {
        let d = if i % 2 == 0 {
            ConsentDecision::Granted
        } else {
            ConsentDecision::Withdrawn
        };
        let who = if i % 3 == 0 { q } else { p };
        append(h, vec![entry(who, "email_marketing", d, Method::WebForm)]).unwrap();
    }
    let r = verify(h);
    assert_eq!((r.entries, r.first_broken.clone()), (10, None), "{r:?}");

    let exec = |sql: &str, params: &[P<'_>]| h.store.conn().unwrap().exec(sql, params).unwrap();
    // An edited decision.
    exec(
        "UPDATE consent_ledger SET decision = 'granted' WHERE seq = 4",
        &[],
    );
    let r = verify(h);
    assert_eq!(r.first_broken.as_ref().map(|b| b.seq), Some(4), "{r:?}");
    assert!(r.first_broken.unwrap().problem.contains("altered"));
    exec(
        "UPDATE consent_ledger SET decision = 'withdrawn' WHERE seq = 4",
        &[],
    );
    assert_eq!(verify(h).first_broken, None);

    // Evidence swapped between entries.
    exec(
        "UPDATE consent_ledger SET evidence = (SELECT evidence FROM consent_ledger WHERE seq = 2) WHERE seq = 3",
        &[],
    );
    assert_eq!(verify(h).first_broken.map(|b| b.seq), Some(3));

    // Removal and truncation, on a fresh ledger.
    let h = Harness::new(h.store.backend_name() == "postgres");
    let p = profile_of(&h, "chained");
    for _ in 0..6 {
        append(
            &h,
            vec![entry(
                p,
                "sms_marketing",
                ConsentDecision::Granted,
                Method::WebForm,
            )],
        )
        .unwrap();
    }
    let exec = |sql: &str| h.store.conn().unwrap().exec(sql, &[]).unwrap();
    exec("DELETE FROM consent_ledger WHERE seq = 6");
    let r = verify(&h);
    let b = r.first_broken.expect("truncation is noticed");
    assert!(b.problem.contains("removed or rewritten"), "{b:?}");
    exec("DELETE FROM consent_ledger WHERE seq = 3");
    let r = verify(&h);
    assert_eq!(
        r.first_broken
            .map(|b| (b.seq, b.problem.contains("missing"))),
        Some((3, true))
    );
}

pub fn materialised_state_equals_the_fold_of_the_ledger_through_merges(h: &Harness) {
    // Two visitors, each with their own choices, then found to be one person.
    let a = {
        h.ingest(vec![
            json!({"type": "identify", "anonymousId": "m-a", "traits": {"email": "merge@x.fi"}}),
        ]);
        h.lookup("anonymous_id", "m-a").unwrap()
    };
    let b = {
        h.ingest(vec![json!({"type": "page", "anonymousId": "m-b"})]);
        h.lookup("anonymous_id", "m-b").unwrap()
    };
    append(
        h,
        vec![
            entry(
                a,
                "email_marketing",
                ConsentDecision::Granted,
                Method::WebForm,
            ),
            entry(
                b,
                "personalisation",
                ConsentDecision::Granted,
                Method::WebForm,
            ),
            entry(
                a,
                "personalisation",
                ConsentDecision::Denied,
                Method::WebForm,
            ),
            entry(
                b,
                "email_marketing",
                ConsentDecision::Withdrawn,
                Method::OneClickUnsubscribe,
            ),
            entry(
                a,
                "sms_marketing",
                ConsentDecision::PendingConfirmation,
                Method::DoubleOptInSms,
            ),
        ],
    )
    .unwrap();
    for i in 0..20 {
        let who = if i % 2 == 0 { a } else { b };
        let d = [
            ConsentDecision::Granted,
            ConsentDecision::Withdrawn,
            ConsentDecision::PendingConfirmation,
        ][i % 3];
        append(h, vec![entry(who, "ad_audiences", d, Method::Api)]).unwrap();
    }
    h.ingest(vec![
        json!({"type": "identify", "anonymousId": "m-b", "traits": {"email": "merge@x.fi"}}),
    ]);
    assert_eq!(h.lookup("anonymous_id", "m-b"), Some(a), "the two merged");
    assert_eq!(
        state(h, a, "email_marketing"),
        Some(ConsentDecision::Withdrawn),
        "the later choice wins"
    );
    assert_eq!(
        state(h, a, "personalisation"),
        Some(ConsentDecision::Denied)
    );
    assert_eq!(
        state(h, b, "personalisation"),
        None,
        "nothing stays under the merged-away id"
    );

    let mut conn = h.store.conn().unwrap();
    let folded = consent::fold_all(&mut *conn).unwrap();
    let stored = consent::materialised(&mut *conn).unwrap();
    assert!(!folded.is_empty());
    assert_eq!(folded, stored);
    // Damage the materialised state; a rebuild restores it exactly.
    conn.exec("UPDATE consent_state SET decision = 'granted'", &[])
        .unwrap();
    conn.exec(
        "DELETE FROM consent_state WHERE purpose_id = 'sms_marketing'",
        &[],
    )
    .unwrap();
    conn.begin().unwrap();
    let differed = consent::rebuild(&mut *conn).unwrap();
    conn.commit().unwrap();
    assert!(differed >= 2, "{differed}");
    assert_eq!(consent::materialised(&mut *conn).unwrap(), folded);
}

fn subscribe_req(h: &Harness, email: &str, purposes: &[&str], ttl_ms: i64) -> Subscribe {
    let id = h
        .cfg
        .identifier(h.cfg.kind("email").unwrap(), email)
        .unwrap();
    Subscribe {
        identifier: h.store.prepare_identifier(&id),
        address: id.value().to_owned(),
        channel: "email",
        purposes: purposes.iter().map(|s| s.to_string()).collect(),
        language: "fi".into(),
        source: "footer form".into(),
        evidence: ev("198.51.100.7"),
        token_ttl_ms: ttl_ms,
    }
}

pub fn double_opt_in_confirms_once_and_tokens_expire(h: &Harness) {
    let req = subscribe_req(
        h,
        "doi@example.fi",
        &["email_marketing", "personalisation"],
        3_600_000,
    );
    let s = h
        .writer
        .transact_blocking(move |ctx| doi::subscribe(ctx, req))
        .unwrap();
    assert_eq!(s.pending, ["email_marketing", "personalisation"]);
    assert_eq!(
        state(h, s.profile_id, "email_marketing"),
        Some(ConsentDecision::PendingConfirmation)
    );
    assert_eq!(
        verdict(h, s.profile_id, "email_marketing"),
        (false, Reason::PendingConfirmation)
    );

    // The confirmation message waits in the outbox, sealed.
    let claimed = h
        .store
        .transact_direct(|c, v| {
            outbox::claim_due(
                c,
                v,
                &Default::default(),
                "email",
                tarmo_store::now_ms(),
                10,
            )
        })
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let OutboxMessage::Confirmation {
        to,
        token,
        language,
        purposes,
        ..
    } = claimed[0].message.clone()
    else {
        panic!("expected a confirmation");
    };
    assert_eq!(
        (to.as_str(), language.as_str(), purposes.len()),
        ("doi@example.fi", "fi", 2)
    );
    let peek = doi::peek(&mut *h.store.conn().unwrap(), &token, tarmo_store::now_ms()).unwrap();
    assert_eq!(peek.profile_id, s.profile_id);

    let t = token.clone();
    let c = h
        .writer
        .transact_blocking(move |ctx| doi::confirm(ctx, &t, ev("198.51.100.8")))
        .unwrap();
    assert_eq!(c.purposes.len(), 2);
    assert_eq!(
        verdict(h, s.profile_id, "email_marketing"),
        (true, Reason::ConsentGranted)
    );
    let hist = consent::history(
        &mut *h.store.conn().unwrap(),
        h.store.vault(),
        &everything(),
        s.profile_id,
    )
    .unwrap();
    let last = hist.last().unwrap();
    assert_eq!(
        (last.decision.as_str(), last.method.as_str()),
        ("granted", "double_opt_in_email")
    );
    assert_eq!(last.evidence["ip"], "198.51.100.8");
    assert_eq!(
        last.evidence["confirmation_token_id"],
        hist[0].evidence["confirmation_token_id"]
    );

    // Replayed: refused, nothing written.
    let before = hist.len();
    let t = token.clone();
    let err = h
        .writer
        .transact_blocking(move |ctx| doi::confirm(ctx, &t, Map::new()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            tarmo_store::Error::Rejected {
                code: tarmo_core::codes::Code::TokenUsed,
                ..
            }
        ),
        "{err:?}"
    );
    let err = h
        .writer
        .transact_blocking(|ctx| doi::confirm(ctx, "forged-token", Map::new()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            tarmo_store::Error::Rejected {
                code: tarmo_core::codes::Code::TokenUnknown,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        consent::history(
            &mut *h.store.conn().unwrap(),
            h.store.vault(),
            &everything(),
            s.profile_id
        )
        .unwrap()
        .len(),
        before
    );

    // Subscribing again to what was granted asks nothing.
    let req = subscribe_req(h, "doi@example.fi", &["email_marketing"], 3_600_000);
    let again = h
        .writer
        .transact_blocking(move |ctx| doi::subscribe(ctx, req))
        .unwrap();
    assert_eq!((again.pending.len(), again.already_granted.len()), (0, 1));

    // An expired token does not confirm.
    let req = subscribe_req(h, "late@example.fi", &["sms_marketing"], -1);
    let late = h
        .writer
        .transact_blocking(move |ctx| doi::subscribe(ctx, req))
        .unwrap();
    let claimed = h
        .store
        .transact_direct(|c, v| {
            outbox::claim_due(
                c,
                v,
                &Default::default(),
                "email",
                tarmo_store::now_ms(),
                10,
            )
        })
        .unwrap();
    let OutboxMessage::Confirmation { token, .. } = claimed[0].message.clone() else {
        panic!()
    };
    let err = h
        .writer
        .transact_blocking(move |ctx| doi::confirm(ctx, &token, Map::new()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            tarmo_store::Error::Rejected {
                code: tarmo_core::codes::Code::TokenExpired,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        verdict(h, late.profile_id, "sms_marketing"),
        (false, Reason::PendingConfirmation)
    );
}

pub fn gpc_on_ingestion_opts_out_once_and_a_later_choice_stands(h: &Harness) {
    let p = profile_of(h, "gpc-user");
    append(
        h,
        vec![entry(
            p,
            "ad_audiences",
            ConsentDecision::Granted,
            Method::WebForm,
        )],
    )
    .unwrap();
    assert_eq!(
        verdict(h, p, "ad_audiences"),
        (true, Reason::ConsentGranted)
    );
    let send = |n: usize| {
        let events = (0..n)
            .map(|i| {
                let m = tarmo_core::segment::parse_message(
                    json!({"type": "page", "userId": "gpc-user", "messageId": format!("gpc-{}-{i}", tarmo_store::now_ms())}),
                    0,
                    None,
                    Default::default(),
                    1_000,
                    &h.cfg,
                )
                .unwrap();
                let mut e = h.store.prepare(m, tarmo_core::ids::KeyId(1));
                e.consent = Some(Box::new(EventConsent {
                    gpc: true,
                    signals: vec![],
                    source: "Sec-GPC header".into(),
                    evidence: ev("203.0.113.9"),
                }));
                e
            })
            .collect();
        h.writer.submit_blocking(events).unwrap();
    };
    send(3);
    assert_eq!(verdict(h, p, "ad_audiences"), (false, Reason::OptedOut));
    assert_eq!(
        verdict(h, p, "email_marketing").1,
        Reason::NoConsent,
        "GPC touches only sale/sharing purposes"
    );
    let n = |h: &Harness| {
        consent::history(
            &mut *h.store.conn().unwrap(),
            h.store.vault(),
            &everything(),
            p,
        )
        .unwrap()
        .len()
    };
    let after_first = n(h);
    assert_eq!(after_first, 2, "one grant, one GPC opt-out");
    // The person chooses again on the preference page: that stands, even
    // though the browser keeps sending GPC.
    append(
        h,
        vec![entry(
            p,
            "ad_audiences",
            ConsentDecision::Granted,
            Method::PreferenceCenter,
        )],
    )
    .unwrap();
    send(2);
    assert_eq!(
        verdict(h, p, "ad_audiences"),
        (true, Reason::ConsentGranted)
    );
    assert_eq!(n(h), 3);
}

fn cmp_signal(hash: u8, entries: &[(&str, ConsentDecision)]) -> ConsentSignal {
    ConsentSignal {
        hash: [hash; 32],
        method: Method::Tcf,
        entries: entries
            .iter()
            .map(|(p, d)| (tarmo_core::consent::PurposeId::parse(p).unwrap(), *d))
            .collect(),
        source: "test CMP".into(),
        evidence: json!({"tc_string": format!("CQ-test-{hash}"), "outdated": false})
            .as_object()
            .unwrap()
            .clone(),
    }
}

pub fn cmp_strings_write_once_per_person_and_never_fail_their_group(h: &Harness) {
    let p = profile_of(h, "cmp-user");
    // Mapped against an older catalog: analytics now rests on legitimate
    // interests (no grant possible), and one purpose is gone. Those entries
    // are left out; the rest is written; the events are stored.
    let signal = cmp_signal(
        1,
        &[
            ("personalisation", ConsentDecision::Granted),
            ("analytics", ConsentDecision::Granted),
            ("retired_purpose", ConsentDecision::Granted),
        ],
    );
    let send = |n: usize, signal: ConsentSignal| {
        let events = (0..n)
            .map(|i| {
                let m = tarmo_core::segment::parse_message(
                    json!({"type": "page", "userId": "cmp-user", "messageId": format!("cmp-{}-{i}", tarmo_store::now_ms())}),
                    0,
                    None,
                    Default::default(),
                    1_000,
                    &h.cfg,
                )
                .unwrap();
                let mut e = h.store.prepare(m, tarmo_core::ids::KeyId(1));
                e.consent = Some(Box::new(EventConsent {
                    gpc: false,
                    signals: vec![signal.clone()],
                    source: "Sec-GPC header".into(),
                    evidence: ev("203.0.113.7"),
                }));
                e
            })
            .collect();
        h.writer.submit_blocking(events).unwrap()
    };
    let outcomes = send(3, signal.clone());
    assert_eq!(outcomes.len(), 3);
    let history = || {
        consent::history(
            &mut *h.store.conn().unwrap(),
            h.store.vault(),
            &everything(),
            p,
        )
        .unwrap()
    };
    let entries = history();
    assert_eq!(entries.len(), 1, "one string, three events: written once");
    assert_eq!(
        (
            entries[0].purpose.as_str(),
            entries[0].decision.as_str(),
            entries[0].method.as_str()
        ),
        ("personalisation", "granted", "tcf")
    );
    assert_eq!(entries[0].source, "test CMP");
    assert_eq!(entries[0].evidence["tc_string"], "CQ-test-1");
    assert_eq!(entries[0].evidence["ip"], "203.0.113.7");
    // Again later, and directly: a duplicate, whatever the cache knows.
    send(2, signal.clone());
    let again = signal.clone();
    let out = h
        .writer
        .transact_blocking(move |ctx| {
            consent::record_signal(
                ctx.conn,
                ctx.vault,
                &ctx.catalog,
                p,
                &again,
                &Map::new(),
                ctx.now_ms,
            )
        })
        .unwrap();
    assert_eq!(out, SignalOutcome::Duplicate);
    assert_eq!(history().len(), 1);
    // A new string writes; its evidence wins over the caller's on a clash.
    let denial = cmp_signal(2, &[("personalisation", ConsentDecision::Denied)]);
    let caller = json!({"tc_string": "forged", "note": "kept"})
        .as_object()
        .unwrap()
        .clone();
    let out = h
        .writer
        .transact_blocking(move |ctx| {
            consent::record_signal(
                ctx.conn,
                ctx.vault,
                &ctx.catalog,
                p,
                &denial,
                &caller,
                ctx.now_ms,
            )
        })
        .unwrap();
    let SignalOutcome::Recorded(written) = out else {
        panic!("expected a first arrival, got {out:?}")
    };
    assert_eq!(written.len(), 1);
    assert_eq!(
        (written[0].0.as_str(), written[0].1),
        ("personalisation", ConsentDecision::Denied)
    );
    let last = history().pop().unwrap();
    assert_eq!(last.seq, written[0].2);
    assert_eq!(last.evidence["tc_string"], "CQ-test-2");
    assert_eq!(last.evidence["note"], "kept");
    assert_eq!(
        state(h, p, "personalisation"),
        Some(ConsentDecision::Denied)
    );
    // Seen strings follow a merge: the survivor does not record them again.
    h.ingest(vec![json!({"type": "page", "anonymousId": "cmp-anon"})]);
    let q = h.lookup("anonymous_id", "cmp-anon").unwrap();
    assert_ne!(q, p);
    let third = cmp_signal(3, &[("personalisation", ConsentDecision::Granted)]);
    let s3 = third.clone();
    h.writer
        .transact_blocking(move |ctx| {
            consent::record_signal(
                ctx.conn,
                ctx.vault,
                &ctx.catalog,
                q,
                &s3,
                &Map::new(),
                ctx.now_ms,
            )
        })
        .unwrap();
    h.ingest(vec![
        json!({"type": "identify", "userId": "cmp-user", "anonymousId": "cmp-anon"}),
    ]);
    let survivor = h.lookup("anonymous_id", "cmp-anon").unwrap();
    assert_eq!(survivor, p, "the visitor merged into the known person");
    let out = h
        .writer
        .transact_blocking(move |ctx| {
            consent::record_signal(
                ctx.conn,
                ctx.vault,
                &ctx.catalog,
                survivor,
                &third,
                &Map::new(),
                ctx.now_ms,
            )
        })
        .unwrap();
    assert_eq!(out, SignalOutcome::Duplicate);
}

pub fn unsubscribe_links_withdraw_for_their_purpose_only(h: &Harness) {
    let p = profile_of(h, "unsub");
    append(
        h,
        vec![
            entry(
                p,
                "email_marketing",
                ConsentDecision::Granted,
                Method::WebForm,
            ),
            entry(
                p,
                "sms_marketing",
                ConsentDecision::Granted,
                Method::WebForm,
            ),
        ],
    )
    .unwrap();
    let link = SignedLink {
        profile_id: p,
        scope: "email_marketing".into(),
        issued_ms: 1,
    };
    let token = links::sign_link(h.store.vault(), doi::UNSUBSCRIBE_LINK, &link);
    let opened = links::open_link(h.store.vault(), doi::UNSUBSCRIBE_LINK, &token).unwrap();
    let changed = h
        .writer
        .transact_blocking(move |ctx| doi::unsubscribe(ctx, &opened, Map::new()))
        .unwrap();
    assert!(changed);
    assert_eq!(verdict(h, p, "email_marketing"), (false, Reason::Withdrawn));
    assert_eq!(
        verdict(h, p, "sms_marketing"),
        (true, Reason::ConsentGranted)
    );
    // A second click changes nothing and is not an error.
    let opened = links::open_link(h.store.vault(), doi::UNSUBSCRIBE_LINK, &token).unwrap();
    assert!(
        !h.writer
            .transact_blocking(move |ctx| doi::unsubscribe(ctx, &opened, Map::new()))
            .unwrap()
    );
}

pub fn bad_consent_input_is_refused_and_nothing_is_written(h: &Harness) {
    let p = profile_of(h, "strict");
    let cases: Vec<(NewEntry, &str)> = vec![
        (
            entry(p, "no_such_purpose", ConsentDecision::Granted, Method::Api),
            "unknown_purpose",
        ),
        (
            entry(p, "order_fulfilment", ConsentDecision::Granted, Method::Api),
            "purpose_not_consent_based",
        ),
        (
            entry(
                p,
                "order_fulfilment",
                ConsentDecision::Objected,
                Method::Api,
            ),
            "objection_not_applicable",
        ),
        (
            NewEntry {
                channel: None,
                notice_version: Some("0000".into()),
                ..entry(p, "email_marketing", ConsentDecision::Granted, Method::Api)
            },
            "unknown_notice_version",
        ),
        (
            NewEntry {
                channel: None,
                source: "x".repeat(201),
                ..entry(p, "email_marketing", ConsentDecision::Granted, Method::Api)
            },
            "invalid_source",
        ),
    ];
    for (e, code) in cases {
        // A good entry first in the same batch: it must not be written either.
        let good = entry(p, "sms_marketing", ConsentDecision::Granted, Method::Api);
        let err = append(h, vec![good, e]).unwrap_err();
        match err {
            tarmo_store::Error::Rejected { code: c, .. } => assert_eq!(c.as_str(), code),
            other => panic!("{code}: {other:?}"),
        }
    }
    assert!(
        consent::history(
            &mut *h.store.conn().unwrap(),
            h.store.vault(),
            &everything(),
            p
        )
        .unwrap()
        .is_empty()
    );
    assert_eq!(verify(h).entries, 0);
    // Objection to an analytics purpose resting on legitimate interests is fine.
    append(
        h,
        vec![entry(
            p,
            "analytics",
            ConsentDecision::Objected,
            Method::Staff,
        )],
    )
    .unwrap();
    assert_eq!(verdict(h, p, "analytics"), (false, Reason::Objected));
}

pub fn a_cmp_string_never_lifts_a_refusal_made_by_a_proven_act(h: &Harness) {
    let p = profile_of(h, "cmp-unsub");
    append(
        h,
        vec![
            entry(
                p,
                "email_marketing",
                ConsentDecision::Granted,
                Method::DoubleOptInEmail,
            ),
            entry(
                p,
                "personalisation",
                ConsentDecision::Granted,
                Method::WebForm,
            ),
        ],
    )
    .unwrap();
    // The person unsubscribes, and withdraws personalisation on their page.
    append(
        h,
        vec![
            entry(
                p,
                "email_marketing",
                ConsentDecision::Withdrawn,
                Method::OneClickUnsubscribe,
            ),
            entry(
                p,
                "personalisation",
                ConsentDecision::Withdrawn,
                Method::PreferenceCenter,
            ),
        ],
    )
    .unwrap();
    // Anyone with the public write key sends a denial, then an "accept all".
    let signals = [
        cmp_signal(31, &[("email_marketing", ConsentDecision::Denied)]),
        cmp_signal(
            32,
            &[
                ("email_marketing", ConsentDecision::Granted),
                ("personalisation", ConsentDecision::Granted),
            ],
        ),
    ];
    for signal in signals {
        let m = tarmo_core::segment::parse_message(
            json!({"type": "page", "userId": "cmp-unsub"}),
            0,
            None,
            Default::default(),
            1_000,
            &h.cfg,
        )
        .unwrap();
        let mut e = h.store.prepare(m, tarmo_core::ids::KeyId(1));
        e.consent = Some(Box::new(EventConsent {
            gpc: false,
            signals: vec![signal],
            source: "CMP on ingestion".into(),
            evidence: ev("203.0.113.31"),
        }));
        h.writer.submit_blocking(vec![e]).unwrap();
    }
    assert_eq!(verdict(h, p, "email_marketing"), (false, Reason::Withdrawn));
    assert_eq!(verdict(h, p, "personalisation"), (false, Reason::Withdrawn));
    // The stored state is the fold of the ledger, still.
    let folded = consent::fold_all(&mut *h.store.conn().unwrap()).unwrap();
    let decided = folded
        .iter()
        .filter(|((q, _), _)| *q == p)
        .map(|(_, s)| s.decision)
        .collect::<Vec<_>>();
    assert!(decided.iter().all(|d| d.is_refusal()), "{decided:?}");
    // The person's own new choice still counts.
    append(
        h,
        vec![entry(
            p,
            "personalisation",
            ConsentDecision::Granted,
            Method::PreferenceCenter,
        )],
    )
    .unwrap();
    assert_eq!(
        verdict(h, p, "personalisation"),
        (true, Reason::ConsentGranted)
    );
}

/// A purpose reaching people by email and SMS, for the choices per channel.
fn offers_purpose(h: &Harness) {
    let mut s = spec(h, "email_marketing");
    s.name = "Offers by email and text message".into();
    s.channels = vec![Channel::Email, Channel::Sms];
    upsert(h, "offers", s, false).unwrap();
}

fn channel_entry(profile: ProfileId, decision: ConsentDecision, channel: Channel) -> NewEntry {
    NewEntry {
        channel: Some(channel),
        ..entry(profile, "offers", decision, Method::PreferenceCenter)
    }
}

fn verdict_by(h: &Harness, profile: ProfileId, purpose: &str, channel: Channel) -> (bool, Reason) {
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
            let v = decide(
                &rule,
                Some(channel),
                st.as_ref(),
                flags,
                tarmo_store::now_ms(),
            );
            (v.allowed, v.reason)
        }
        other => panic!("expected a known subject, got {other:?}"),
    }
}

pub fn a_channel_choice_is_chained_evidence_that_folds_and_decides(h: &Harness) {
    offers_purpose(h);
    let p = profile_of(h, "two-channels");
    // Bad channel choices are refused, and nothing of their batch is written.
    let bad: Vec<(NewEntry, &str)> = vec![
        (
            NewEntry {
                channel: Some(Channel::Sms),
                ..entry(
                    p,
                    "email_marketing",
                    ConsentDecision::Withdrawn,
                    Method::Api,
                )
            },
            "channel_not_covered",
        ),
        (
            channel_entry(p, ConsentDecision::PendingConfirmation, Channel::Sms),
            "invalid_channel_decision",
        ),
        (
            NewEntry {
                channel: Some(Channel::Web),
                ..entry(p, "analytics", ConsentDecision::Objected, Method::Staff)
            },
            "purpose_not_consent_based",
        ),
        (
            channel_entry(p, ConsentDecision::Withdrawn, Channel::Sms),
            "channel_without_consent",
        ),
    ];
    for (e, code) in bad {
        let good = entry(p, "sms_marketing", ConsentDecision::Granted, Method::Api);
        match append(h, vec![good, e]).unwrap_err() {
            tarmo_store::Error::Rejected { code: c, .. } => assert_eq!(c.as_str(), code),
            other => panic!("{code}: {other:?}"),
        }
    }
    assert_eq!(verify(h).entries, 0, "nothing was written");

    // Granted for the purpose, then SMS switched off: email stays allowed.
    append(
        h,
        vec![
            entry(p, "offers", ConsentDecision::Granted, Method::WebForm),
            channel_entry(p, ConsentDecision::Withdrawn, Channel::Sms),
        ],
    )
    .unwrap();
    assert_eq!(
        verdict_by(h, p, "offers", Channel::Sms),
        (false, Reason::ChannelWithdrawn)
    );
    assert_eq!(
        verdict_by(h, p, "offers", Channel::Email),
        (true, Reason::ConsentGranted)
    );
    assert_eq!(
        state(h, p, "offers"),
        Some(ConsentDecision::Granted),
        "the purpose stands"
    );
    let hist = consent::history(
        &mut *h.store.conn().unwrap(),
        h.store.vault(),
        &everything(),
        p,
    )
    .unwrap();
    let chans: Vec<_> = hist.iter().map(|e| e.channel.as_deref()).collect();
    assert_eq!(chans, [None, Some("sms")]);
    assert_eq!(hist[1].method, "preference_center");
    assert_eq!(hist[1].decision, "withdrawn");

    // The chain covers the channel: moving the choice to another channel,
    // or dropping it, is found.
    let report = verify(h);
    assert_eq!((report.entries, report.first_broken), (2, None));
    let exec = |sql: &str| {
        h.store.conn().unwrap().exec(sql, &[]).unwrap();
    };
    for tamper in [
        "UPDATE consent_ledger SET channel = 'email' WHERE seq = 2",
        "UPDATE consent_ledger SET channel = NULL WHERE seq = 2",
    ] {
        exec(tamper);
        assert_eq!(verify(h).first_broken.map(|b| b.seq), Some(2), "{tamper}");
    }
    exec("UPDATE consent_ledger SET channel = 'sms' WHERE seq = 2");
    assert_eq!(verify(h).first_broken, None);

    // The materialised state is the ledger's fold, channels included.
    {
        let mut conn = h.store.conn().unwrap();
        let folded = consent::fold_all(&mut *conn).unwrap();
        assert_eq!(folded, consent::materialised(&mut *conn).unwrap());
        let s = folded[&(p, "offers".to_owned())];
        assert!(s.channel_off(Channel::Sms) && !s.channel_off(Channel::Email));
        conn.exec("UPDATE consent_state SET channels_off = 0", &[])
            .unwrap();
        conn.begin().unwrap();
        assert_eq!(consent::rebuild(&mut *conn).unwrap(), 1);
        conn.commit().unwrap();
        assert_eq!(consent::materialised(&mut *conn).unwrap(), folded);
    }

    // Withdrawing and granting the purpose again keeps SMS off; the
    // person's own grant of the channel switches it back on.
    append(
        h,
        vec![
            entry(
                p,
                "offers",
                ConsentDecision::Withdrawn,
                Method::OneClickUnsubscribe,
            ),
            entry(
                p,
                "offers",
                ConsentDecision::Granted,
                Method::PreferenceCenter,
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        verdict_by(h, p, "offers", Channel::Sms),
        (false, Reason::ChannelWithdrawn)
    );
    append(
        h,
        vec![channel_entry(p, ConsentDecision::Granted, Channel::Sms)],
    )
    .unwrap();
    assert_eq!(
        verdict_by(h, p, "offers", Channel::Sms),
        (true, Reason::ConsentGranted)
    );
    let mut conn = h.store.conn().unwrap();
    assert_eq!(
        consent::fold_all(&mut *conn).unwrap(),
        consent::materialised(&mut *conn).unwrap()
    );
}

/// One append for 600 people (more than one page of the state reads,
/// more than one statement of rows): some people hold a state from
/// before, some have two entries in the batch, and a choice per channel
/// refines a state read from the store. The states equal the ledger's
/// fold, the chain verifies, and each evidence opens under its own key.
pub fn a_large_batch_folds_as_entry_by_entry_would(h: &Harness) {
    offers_purpose(h);
    let events: Vec<Value> = (0..600)
        .map(|i| json!({"type": "identify", "userId": format!("big-batch-{i}")}))
        .collect();
    h.ingest(events);
    let people: Vec<ProfileId> = (0..600)
        .map(|i| h.lookup("user_id", &format!("big-batch-{i}")).unwrap())
        .collect();
    // Every third person chose offers before.
    let earlier: Vec<NewEntry> = people
        .iter()
        .step_by(3)
        .map(|p| entry(*p, "offers", ConsentDecision::Granted, Method::WebForm))
        .collect();
    append(h, earlier).unwrap();
    h.store.vault().forget_all();
    let mut batch = Vec::new();
    for (i, p) in people.iter().enumerate() {
        batch.push(NewEntry {
            evidence: ev(&format!("198.51.100.{}", i % 250)),
            ..entry(
                *p,
                "email_marketing",
                if i % 2 == 0 {
                    ConsentDecision::Granted
                } else {
                    ConsentDecision::Denied
                },
                Method::WebForm,
            )
        });
        if i % 3 == 0 {
            // Refines the state from before: no SMS.
            batch.push(channel_entry(*p, ConsentDecision::Withdrawn, Channel::Sms));
        }
        if i % 5 == 0 {
            // A second entry for the same purpose, later in the batch.
            batch.push(entry(
                *p,
                "email_marketing",
                ConsentDecision::Withdrawn,
                Method::OneClickUnsubscribe,
            ));
        }
    }
    let n = batch.len();
    let seqs = append(h, batch).unwrap();
    assert_eq!(seqs.len(), n);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "numbered in order"
    );
    for (i, p) in people.iter().enumerate() {
        let want = if i % 5 == 0 {
            ConsentDecision::Withdrawn
        } else if i % 2 == 0 {
            ConsentDecision::Granted
        } else {
            ConsentDecision::Denied
        };
        assert_eq!(state(h, *p, "email_marketing"), Some(want), "person {i}");
        if i % 3 == 0 {
            assert_eq!(state(h, *p, "offers"), Some(ConsentDecision::Granted));
            assert!(
                !verdict_by(h, *p, "offers", Channel::Sms).0,
                "person {i}: SMS withdrawn"
            );
            assert!(verdict_by(h, *p, "offers", Channel::Email).0, "person {i}");
        } else {
            assert_eq!(state(h, *p, "offers"), None, "person {i}");
        }
    }
    // A choice per channel for someone with no state yet is refused, and
    // takes the whole batch with it.
    let before = consent::materialised(&mut *h.store.conn().unwrap()).unwrap();
    let refused = append(
        h,
        vec![
            entry(
                people[1],
                "personalisation",
                ConsentDecision::Granted,
                Method::Api,
            ),
            channel_entry(people[1], ConsentDecision::Withdrawn, Channel::Sms),
        ],
    );
    assert!(refused.is_err(), "{refused:?}");
    let mut conn = h.store.conn().unwrap();
    assert_eq!(consent::materialised(&mut *conn).unwrap(), before);
    assert_eq!(consent::fold_all(&mut *conn).unwrap(), before);
    drop(conn);
    assert_eq!(verify(h).first_broken, None);
    for i in [1usize, 299, 598] {
        h.store.vault().forget_all();
        let hist = consent::history(
            &mut *h.store.conn().unwrap(),
            h.store.vault(),
            &everything(),
            people[i],
        )
        .unwrap();
        let mail = hist
            .iter()
            .find(|e| e.purpose.as_str() == "email_marketing")
            .unwrap();
        assert_eq!(mail.evidence["ip"], format!("198.51.100.{}", i % 250));
    }
}
