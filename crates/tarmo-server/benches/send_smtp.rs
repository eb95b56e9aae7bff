//! Emails a second through the real pipeline, on the embedded store: SENDS
//! people with an address and consent, a campaign to all of them, then
//! `tarmo serve`'s own automation scheduler (the decision, caps, quiet
//! hours, render, seal into the outbox, in writer transactions of 200) and
//! mail worker (claim, the decision again, SMTP with connection reuse, the
//! outcome recorded) until a loopback SMTP sink has accepted every
//! message. Beside it, in the same run:
//!
//! - the raw limit: the same number of messages sent by the same SMTP
//!   client to the same sink, with nothing else (no store, no decision);
//! - the consent decision's share: the decision's reads and `decide` for
//!   everyone, done the way the pipeline does them (per page of due sends
//!   at the scheduler, per claimed page at the worker), over the pipeline's
//!   time.
//!
//! cargo bench -p tarmo-server --bench send_smtp        (env: SENDS, default 300; 3000 takes about 2 s)

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tarmo_core::automations::Campaign;
use tarmo_core::automations::template::Template;
use tarmo_core::consent::{Channel, ConsentDecision, Method, decide};
use tarmo_core::identity::IdentityConfig;
use tarmo_core::segment::{BatchDefaults, parse_message};
use tarmo_notify::testing::SmtpSink;
use tarmo_notify::{Deliver, Email, Mailbox, MessageId, SmtpConfig, SmtpMailer};
use tarmo_store::automations as flows;
use tarmo_store::conn::{P, ProfileId};
use tarmo_store::consent::{self, NewEntry, Subject};
use tarmo_store::vault::MasterKey;
use tarmo_store::writer::WriterConfig;
use tarmo_store::{Backend, Store, now_ms};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let n = env_or("SENDS", 300) as usize;
    let sink = SmtpSink::builder().without_starttls().start();
    let smtp = SmtpConfig::parse(&sink.url()).unwrap();

    // ---- raw limit: the SMTP client alone, same sink, same connection reuse
    let mailer = SmtpMailer::new(&smtp).unwrap();
    let t = Instant::now();
    for i in 0..n {
        mailer
            .send_email(&Email {
                from: Mailbox::new("shop@example.com", "Shop"),
                to: format!("raw{i}@example.com"),
                subject: "Hei P1".into(),
                text: "Hei P1\n\n--\nYour choices: http://127.0.0.1/p/x\n".into(),
                html: "<p>Hei P1</p>".into(),
                message_id: MessageId::new(&format!("raw-{i}")).unwrap(),
                list_unsubscribe: Some("http://127.0.0.1:8080/u/abc".into()),
            })
            .unwrap();
    }
    let raw_s = t.elapsed().as_secs_f64();
    sink.wait_for(n, Duration::from_secs(60));
    drop(mailer);

    // ---- the store, people, consent, a campaign
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(
            Backend::open(dir.path(), None).unwrap(),
            &MasterKey::generate().unwrap(),
            100_000,
        )
        .unwrap(),
    );
    store
        .transact_direct(|c, _| consent::seed_defaults(c, 1))
        .unwrap();
    let (writer, join) = store
        .start_writer(WriterConfig {
            pipelined: true,
            ..WriterConfig::default()
        })
        .unwrap();
    let cfg = IdentityConfig::default();
    let now = now_ms();
    let msgs: Vec<_> = (0..n)
        .map(|i| {
            json!({"type": "identify", "userId": format!("s{i}"), "messageId": format!("s{i}"),
                "traits": {"email": format!("person{i}@example.com"), "first_name": format!("P{i}"), "language": "fi"}})
        })
        .collect();
    for chunk in msgs.chunks(2000) {
        let prepared = chunk
            .iter()
            .enumerate()
            .map(|(k, v)| {
                store.prepare(
                    parse_message(v.clone(), k, None, BatchDefaults::default(), now, &cfg).unwrap(),
                    tarmo_core::ids::KeyId(1),
                )
            })
            .collect();
        writer.submit_blocking(prepared).unwrap();
    }
    let ids: Vec<ProfileId> = store
        .conn()
        .unwrap()
        .query(
            "SELECT id FROM profiles WHERE merged_into IS NULL ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ProfileId(r.int(0).unwrap()))
        .collect();
    assert_eq!(ids.len(), n);
    for chunk in ids.chunks(1000) {
        let entries: Vec<NewEntry> = chunk
            .iter()
            .map(|&p| NewEntry {
                channel: None,
                profile_id: p,
                purpose: tarmo_core::consent::PurposeId::parse("email_marketing").unwrap(),
                decision: ConsentDecision::Granted,
                method: Method::WebForm,
                notice_version: None,
                at_ms: None,
                source: "bench".into(),
                evidence: Default::default(),
            })
            .collect();
        writer
            .transact_blocking(move |ctx| {
                consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)
            })
            .unwrap();
    }
    let members = ids.clone();
    writer
        .transact_blocking(move |ctx| {
            ctx.conn.exec(
                "INSERT INTO segments (id, name, purpose_id, rule, created_ms, updated_ms) VALUES ('all', 'all', 'email_marketing', $1, 0, 0)",
                &[P::Blob(b"-")],
            )?;
            for p in members {
                ctx.conn.exec(
                    "INSERT INTO segment_members (segment_id, profile_id, since_ms) VALUES ('all', $1, 0)",
                    &[P::Int(p.0)],
                )?;
            }
            let t: Template = serde_json::from_value(json!({"id": "hello", "channel": "email", "languages": {
                "en": {"subject": "Hello {{ traits.first_name }}", "text": "Dear {{ traits.first_name }}", "html": "<p>Dear {{ traits.first_name }}</p>"},
                "fi": {"subject": "Hei {{ traits.first_name }}", "text": "Hei {{ traits.first_name }}"}}})).unwrap();
            flows::template_put(ctx.conn, &ctx.catalog, t, true, ctx.now_ms)?;
            let c = Campaign::from_json(&json!({"id": "launch", "segment": "all", "template": "hello",
                "purpose": "email_marketing", "channel": "email", "per_minute": 100_000}), ctx.now_ms - 60_000).unwrap();
            flows::campaign_create(ctx.conn, &ctx.catalog, c, ctx.now_ms).map(|_| ())
        })
        .unwrap();

    // ---- the pipeline: serve's scheduler and mail worker
    let before = sink.messages().len();
    let config = tarmo_server::ServerConfig::default();
    let outbox = Arc::new(tarmo_server::mail::OutboxSignal::default());
    let t = Instant::now();
    let scheduler = tarmo_server::scheduler::spawn(tarmo_server::scheduler::Scheduler {
        writer: writer.clone(),
        config: config.send_config(),
        outbox: outbox.clone(),
        tick: Duration::from_secs(1),
        batch: 200,
        health: store.health.clone(),
    });
    let mail = tarmo_server::mail::spawn(tarmo_server::mail::MailWorker {
        store: store.clone(),
        writer: writer.clone(),
        config,
        email: Some(Box::new(SmtpMailer::new(&smtp).unwrap())),
        sms: None,
        webhook: None,
        from: Mailbox::new("shop@example.com", "Shop"),
        signal: outbox,
        poll: Duration::from_millis(200),
        claimant: tarmo_store::lease::Claimant::new("bench", Duration::from_secs(60)),
    });
    sink.wait_for(before + n, Duration::from_secs(600));
    let pipeline_s = t.elapsed().as_secs_f64();
    scheduler.stop();
    mail.stop();
    let sent = store
        .conn()
        .unwrap()
        .query_opt("SELECT count(*) FROM outbox WHERE status = 'sent'", &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();

    // ---- the decision alone, as the pipeline takes it
    let catalog = store.catalog().unwrap();
    let rule = catalog.get("email_marketing").unwrap().rule;
    let mut c = store.conn().unwrap();
    let t = Instant::now();
    let mut allowed = 0;
    for (pages, size) in [(&ids, 200), (&ids, 20)] {
        for page in pages.chunks(size) {
            for (_, s) in consent::subjects_by_id(
                &mut *c,
                page,
                &tarmo_core::consent::PurposeId::parse("email_marketing").unwrap(),
            )
            .unwrap()
            {
                if let Subject::Known(_, st, fl) = s
                    && decide(&rule, Some(Channel::Email), st.as_ref(), fl, now_ms()).allowed
                {
                    allowed += 1;
                }
            }
        }
    }
    let decision_s = t.elapsed().as_secs_f64();
    assert_eq!(allowed, 2 * n);
    drop(c);
    drop(writer);
    let _ = join.join();

    println!(
        "SMTP pipeline: {n} emails (outbox sent: {sent}) in {pipeline_s:.2} s = {:.0} emails/s; \
         raw limit, the SMTP client alone to the same sink: {:.0} emails/s ({raw_s:.2} s); \
         consent decisions (2 per email: scheduler and worker) {:.3} s = {:.1} % of the pipeline",
        n as f64 / pipeline_s,
        n as f64 / raw_s,
        decision_s,
        100.0 * decision_s / pipeline_s
    );
}
