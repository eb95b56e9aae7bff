//! Sending what is due. Due rows are claimed (on PostgreSQL with
//! `FOR UPDATE SKIP LOCKED`, so two nodes take different rows) and, each in
//! the same transaction as its outbox row: the policy decides again for
//! (purpose, channel) now; the trigger's condition is checked again (no
//! order since the view; still absent); quiet hours in the person's zone
//! move the row to their end; caps count what this flow sent the person in
//! the last day and week; then the template is rendered in the person's
//! language with only the traits the purpose allows, sealed into the
//! outbox, and the row marked. The row's key makes a second send of the
//! same occurrence impossible, and a crash before commit leaves the row
//! due: nothing is lost.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tarmo_core::automations::template::{Links, Template, marketing_footer, sms_opt_out};
use tarmo_core::automations::{ListKind, SendChannel, Trigger};
use tarmo_core::consent::{Channel, PurposeId, decide};
use tarmo_core::segments::{PRODUCT_PROPERTY, trait_kind};

use super::follow::{event_name, schedule_birthday, traits_of, zone_of};
use super::{Flow, FlowRecord, PREFERENCES_LINK, SendConfig, allowed_kinds, flows, template_get};
use crate::conn::{Conn, P, ProcessorId, ProfileId};
use crate::consent::{Catalog, Subject, subject_by_id};
use crate::crypto::person;
use crate::doi::UNSUBSCRIBE_LINK;
use crate::links::{SignedLink, sign_link};
use crate::outbox::{self, OutboxMessage};
use crate::vault::{Place, Vault};
use crate::{Error, Result};

const DAY_MS: i64 = 86_400_000;

/// What happens to one due send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// To the outbox: the person (current id), the channel, the message.
    Send {
        profile: ProfileId,
        language: String,
        message: OutboxMessage,
        /// A webhook send: the processor and the data categories that go
        /// to it, recorded as a disclosure with the outbox row.
        disclosure: Option<(ProcessorId, Vec<String>)>,
    },
    /// Not sent, with the reason (`no_consent`, `withdrawn`, `capped`, ...).
    Skip(String),
    /// Inside quiet hours: due again at this time.
    Wait(i64),
}

/// A due send.
#[derive(Debug, Clone)]
pub struct Due {
    pub flow: String,
    pub profile: ProfileId,
    pub occurrence: String,
    pub since_ms: i64,
    /// The decision's inputs, read with the page in this transaction;
    /// `None`: read them for this one.
    pub subject: Option<Subject>,
}

fn skip(r: &str) -> Verdict {
    Verdict::Skip(r.to_owned())
}

/// Did the person do `event` between `from` and `to`? (Events are opened
/// to read their names: a person has few in such a window.)
fn did(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
    event: &str,
    from: i64,
    to: i64,
) -> Result<bool> {
    let rows = conn.query(
        "SELECT key_owner, body FROM events WHERE profile_id = $1 AND kind = 'track'
         AND ts_ms >= $2 AND ts_ms <= $3 ORDER BY id DESC LIMIT 1000",
        &[P::Int(profile.0), P::Int(from), P::Int(to)],
    )?;
    for r in rows {
        if event_name(conn, vault, ProfileId(r.int(0)?), &r.sealed(1)?)?.as_deref() == Some(event) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The person's first identifier of `kind`, opened.
fn contact(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
    kind: &str,
) -> Result<Option<String>> {
    for row in conn.identifiers_of(profile)? {
        if row.kind == kind {
            let sight = person::Sight::duty(person::Duty::Delivery);
            return person::identifier(conn, vault, &sight, &row);
        }
    }
    Ok(None)
}

/// What the person was sent in the last week, by any flow: (flow, when).
/// One read serves this flow's caps and the caps across flows.
fn sent_in_week(
    conn: &mut dyn Conn,
    profiles: &[ProfileId],
    now_ms: i64,
) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for &p in profiles {
        for r in conn.query(
            "SELECT flow_id, done_ms FROM sends WHERE profile_id = $1
             AND status = 'sent' AND done_ms >= $2",
            &[P::Int(p.0), P::Int(now_ms - 7 * DAY_MS)],
        )? {
            out.push((r.text(0)?, r.int(1)?));
        }
    }
    Ok(out)
}

/// Would one more send break a cap of `limit` (`None` or `0`: no cap)?
fn over(limit: Option<u32>, sent: usize) -> bool {
    limit.is_some_and(|n| n > 0 && sent >= n as usize)
}

/// The offer for the product an event trigger's event names (its
/// `product_id` property): the product, its price and the person's store
/// that has it in stock, for `{{ offer.* }}`. Nothing when the purpose does
/// not open what the choice of store reads (the `preferred_store` and
/// `city` traits, the orders), the event names no product, or the store
/// does not have it.
fn offer_of(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
    due: &Due,
    allowed: &std::collections::BTreeSet<tarmo_core::access::DataKind>,
    language: Option<&str>,
) -> Result<Option<Value>> {
    let reads = [
        trait_kind("preferred_store"),
        trait_kind("city"),
        tarmo_core::access::DataKind::Behaviour,
    ];
    if !reads.iter().all(|k| allowed.contains(k)) {
        return Ok(None);
    }
    // An event trigger's occurrence is `e` and the event's id.
    let Some(event) = due
        .occurrence
        .strip_prefix('e')
        .and_then(|i| i.parse::<i64>().ok())
    else {
        return Ok(None);
    };
    let Some(r) = conn.query_opt(
        "SELECT key_owner, body FROM events WHERE id = $1",
        &[P::Int(event)],
    )?
    else {
        return Ok(None);
    };
    let body = person::open(
        conn,
        vault,
        &person::Sight::duty(person::Duty::Evaluation),
        ProfileId(r.int(0)?),
        Place::EventBody,
        &r.sealed(1)?,
    )?;
    let product = serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
        match b.get("properties")?.get(PRODUCT_PROPERTY)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    });
    let Some(product) = product else {
        return Ok(None);
    };
    Ok(
        crate::imports::catalog::offer(conn, vault, profile, &product, language)?
            .and_then(|o| serde_json::to_value(o).ok()),
    )
}

/// Decide one due send now. Reads only; the caller writes what follows.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    cfg: &SendConfig,
    all: &HashMap<String, FlowRecord>,
    f: &FlowRecord,
    template: Option<&Template>,
    due: &Due,
    now_ms: i64,
) -> Result<Verdict> {
    if f.status == "disabled" {
        return Ok(skip("disabled"));
    }
    if f.status == "cancelled" {
        return Ok(skip("cancelled"));
    }
    let (purpose, channel, _) = f.flow.sending();
    let Some(entry) = catalog.get(purpose.as_str()) else {
        return Ok(skip("unknown_purpose"));
    };
    let ch = f.flow.consent_channel();
    // The decision, now, in this transaction.
    let subject = match due.subject {
        Some(s) => s,
        None => subject_by_id(conn, due.profile, purpose)?,
    };
    let (profile, state, flags) = match subject {
        Subject::Known(p, st, fl) => (p, st, fl),
        Subject::Suppressed(_) => return Ok(skip("suppressed")),
        Subject::Unknown => return Ok(skip("unknown_profile")),
    };
    let v = decide(&entry.rule, Some(ch), state.as_ref(), flags, now_ms);
    if !v.allowed {
        return Ok(skip(v.reason.as_str()));
    }
    // The trigger's own condition, again.
    if let Flow::Automation(a) = &f.flow {
        match &a.trigger {
            Trigger::Event {
                unless: Some((event, within)),
                ..
            } if did(
                conn,
                vault,
                profile,
                event,
                due.since_ms,
                due.since_ms + within.ms(),
            )? =>
            {
                return Ok(skip("converted"));
            }
            Trigger::Absence { event, .. }
                if did(conn, vault, profile, event, due.since_ms + 1, i64::MAX)? =>
            {
                return Ok(skip("not_absent"));
            }
            _ => {}
        }
    }
    let traits = traits_of(conn, vault, profile)?;
    if let Some(q) = f.flow.quiet()
        && let Some(until) = q.until(&zone_of(&traits, cfg), now_ms)
    {
        return Ok(Verdict::Wait(until));
    }
    // Caps: this automation's own, then the person's marketing messages
    // over this channel from every automation and campaign.
    let ids: Vec<ProfileId> = if profile == due.profile {
        vec![profile]
    } else {
        vec![profile, due.profile]
    };
    let week = sent_in_week(conn, &ids, now_ms)?;
    let day_from = now_ms - DAY_MS;
    if let Flow::Automation(a) = &f.flow {
        let mine = || week.iter().filter(|(fl, _)| *fl == a.id);
        if over(
            a.caps.per_day,
            mine().filter(|(_, t)| *t >= day_from).count(),
        ) || over(a.caps.per_week, mine().count())
        {
            return Ok(skip("capped"));
        }
    }
    let same_channel = |fl: &str| all.get(fl).is_some_and(|o| o.flow.sending().1 == channel);
    let on_channel = || week.iter().filter(|(fl, _)| same_channel(fl));
    let caps = cfg.frequency_caps;
    if over(
        Some(caps.per_day),
        on_channel().filter(|(_, t)| *t >= day_from).count(),
    ) || over(Some(caps.per_week), on_channel().count())
    {
        return Ok(skip("frequency_capped"));
    }
    // A push list names the person as the processor's app knows them.
    let kind = match ch {
        Channel::Email => "email",
        Channel::Push => "user_id",
        _ => "phone",
    };
    let Some(to) = contact(conn, vault, profile, kind)? else {
        return Ok(skip("missing_contact"));
    };
    let Some(template) = template else {
        return Ok(skip("unknown_template"));
    };
    // Only what the purpose allows reaches the template.
    let allowed = allowed_kinds(catalog, purpose.as_str());
    let language = traits
        .get("language")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let merge: Map<String, Value> = traits
        .into_iter()
        .filter(|(k, _)| allowed.contains(&trait_kind(k)))
        .collect();
    let unsubscribe = sign_link(
        vault,
        UNSUBSCRIBE_LINK,
        &SignedLink {
            profile_id: profile,
            scope: purpose.to_string(),
            issued_ms: now_ms,
        },
    );
    let preferences = sign_link(
        vault,
        PREFERENCES_LINK,
        &SignedLink {
            profile_id: profile,
            scope: super::preferences_scope(language.as_deref()),
            issued_ms: now_ms,
        },
    );
    let links = Links {
        unsubscribe_url: format!("{}/u/{unsubscribe}", cfg.public_url),
        preferences_url: format!("{}/p/{preferences}", cfg.public_url),
        organisation: cfg.organisation.clone(),
    };
    let offer = match &f.flow {
        Flow::Automation(a) if matches!(a.trigger, Trigger::Event { .. }) => {
            offer_of(conn, vault, profile, due, &allowed, language.as_deref())?
        }
        _ => None,
    };
    let r = match template.render(language.as_deref(), &merge, &links, offer.as_ref()) {
        Ok(r) => r,
        Err(_) => return Ok(skip("render_failed")),
    };
    let mut disclosure = None;
    let footer = marketing_footer(&r.language);
    let message = match channel {
        SendChannel::Email => OutboxMessage::Marketing {
            to,
            purpose: purpose.clone(),
            subject: r.subject.unwrap_or_default(),
            text: format!(
                "{}\n\n--\n{}: {}\n{}: {}\n",
                r.text.trim_end(),
                footer.0,
                links.preferences_url,
                footer.1,
                links.unsubscribe_url
            ),
            html: r.html.map(|h| {
                format!(
                    "{h}\n<p style=\"font-size:small\"><a href=\"{}\">{}</a> · <a href=\"{}\">{}</a></p>",
                    links.preferences_url, footer.0, links.unsubscribe_url, footer.1
                )
            }),
            unsubscribe,
        },
        SendChannel::Sms => OutboxMessage::MarketingSms {
            to,
            purpose: purpose.clone(),
            // The link after the opt-out words: a person reads "reply STOP"
            // first, and the preference page is there for everything else.
            text: format!(
                "{} {} {}",
                r.text.trim_end(),
                sms_opt_out(&r.language),
                links.preferences_url
            ),
        },
        SendChannel::Webhook => {
            let Some(w) = f.flow.webhook() else {
                return Ok(skip("invalid_webhook"));
            };
            // Checked at save; the processor may have changed since.
            let categories = match super::processor_categories(conn, catalog, purpose.as_str(), w.processor)
            {
                Ok(c) => c,
                Err(Error::Rejected { code, .. }) => return Ok(skip(code.as_str())),
                Err(e) => return Err(e),
            };
            let recipient = match w.list {
                ListKind::Push => json!({ "user_id": to }),
                ListKind::Call => json!({ "phone": to }),
            };
            let payload = json!({
                "list": w.list.as_str(),
                "flow": f.flow.id(),
                "purpose": purpose,
                "recipient": recipient,
                "language": r.language,
                "text": r.text.trim_end(),
                "preferences_url": links.preferences_url,
            });
            disclosure = Some((w.processor, categories));
            OutboxMessage::ProcessorList {
                processor_id: w.processor,
                purpose: purpose.clone(),
                list: w.list.as_str().to_owned(),
                payload,
            }
        }
    };
    Ok(Verdict::Send {
        profile,
        language: r.language,
        message,
        disclosure,
    })
}

/// What one pass sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub sent: u64,
    pub skipped: u64,
    pub waiting: u64,
    /// The pass took `limit` rows: more may be due.
    pub more: bool,
}

/// Claim up to `limit` due sends and carry each out. Run in a writer
/// transaction; the outbox rows commit with the marks.
pub fn send_due(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    cfg: &SendConfig,
    now_ms: i64,
    limit: i64,
) -> Result<Sent> {
    let lock = if conn.backend_name() == "postgres" {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let rows = conn.query(
        &format!(
            "SELECT flow_id, profile_id, occurrence, since_ms FROM sends
             WHERE status = 'due' AND due_ms <= $1 ORDER BY due_ms LIMIT $2{lock}"
        ),
        &[P::Int(now_ms), P::Int(limit)],
    )?;
    let mut out = Sent {
        more: rows.len() as i64 == limit,
        ..Sent::default()
    };
    if rows.is_empty() {
        return Ok(out);
    }
    let all: HashMap<String, FlowRecord> = flows(conn)?
        .into_iter()
        .map(|f| (f.flow.id().to_owned(), f))
        .collect();
    let mut templates: HashMap<String, Option<Template>> = HashMap::new();
    // The decision's reads for the whole page, one per purpose.
    let mut by_purpose: HashMap<&PurposeId, Vec<ProfileId>> = HashMap::new();
    for r in &rows {
        if let Some(f) = all.get(&r.text(0)?) {
            by_purpose
                .entry(f.flow.sending().0)
                .or_default()
                .push(ProfileId(r.int(1)?));
        }
    }
    let mut subjects: HashMap<(&PurposeId, ProfileId), Subject> = HashMap::new();
    for (purpose, ids) in by_purpose {
        for (p, s) in crate::consent::subjects_by_id(conn, &ids, purpose)? {
            subjects.insert((purpose, p), s);
        }
    }
    for r in rows {
        let flow = r.text(0)?;
        let profile = ProfileId(r.int(1)?);
        let subject = all
            .get(&flow)
            .and_then(|f| subjects.get(&(f.flow.sending().0, profile)))
            .copied();
        let due = Due {
            flow,
            profile,
            occurrence: r.text(2)?,
            since_ms: r.int(3)?,
            subject,
        };
        let key = [
            P::Text(&due.flow),
            P::Int(due.profile.0),
            P::Text(&due.occurrence),
        ];
        let Some(f) = all.get(&due.flow) else {
            conn.exec(
                "DELETE FROM sends WHERE flow_id = $1 AND profile_id = $2 AND occurrence = $3",
                &key,
            )?;
            continue;
        };
        let tid = f.flow.sending().2.to_owned();
        if !templates.contains_key(&tid) {
            let t = template_get(conn, &tid)?.map(|t| t.template);
            templates.insert(tid.clone(), t);
        }
        let template = templates.get(&tid).and_then(Option::as_ref);
        let verdict = judge(conn, vault, catalog, cfg, &all, f, template, &due, now_ms)?;
        match verdict {
            Verdict::Send {
                profile,
                message,
                disclosure,
                ..
            } => {
                let ch = f.flow.sending().1.as_str();
                let id = outbox::enqueue(conn, vault, profile, ch, &message, now_ms)?;
                // Data leaving for a processor is a disclosure, so an
                // erasure later reaches it; recorded with the row that sends.
                if let Some((processor, categories)) = disclosure {
                    let purpose = f.flow.sending().0;
                    let cats: Vec<&str> = categories.iter().map(String::as_str).collect();
                    crate::processors::record_disclosure(
                        conn, profile, processor, purpose, &cats, now_ms,
                    )?;
                }
                let n = conn.exec(
                    "UPDATE sends SET status = 'sent', outbox_id = $4, done_ms = $5
                     WHERE flow_id = $1 AND profile_id = $2 AND occurrence = $3 AND status = 'due'",
                    &[key[0], key[1], key[2], P::Int(id), P::Int(now_ms)],
                )?;
                if n != 1 {
                    // Taken by someone else meanwhile: undo by failing the
                    // transaction rather than send twice.
                    return Err(Error::Conflict("a due send was taken twice".into()));
                }
                out.sent += 1;
            }
            Verdict::Skip(reason) => {
                conn.exec(
                    "UPDATE sends SET status = 'skipped', reason = $4, done_ms = $5
                     WHERE flow_id = $1 AND profile_id = $2 AND occurrence = $3 AND status = 'due'",
                    &[key[0], key[1], key[2], P::Text(&reason), P::Int(now_ms)],
                )?;
                out.skipped += 1;
            }
            Verdict::Wait(until) => {
                conn.exec(
                    "UPDATE sends SET due_ms = $4, deferrals = deferrals + 1
                     WHERE flow_id = $1 AND profile_id = $2 AND occurrence = $3 AND status = 'due'",
                    &[key[0], key[1], key[2], P::Int(until)],
                )?;
                out.waiting += 1;
                continue;
            }
        }
        // A birthday greeted (or passed over) schedules next year's.
        if let Flow::Automation(a) = &f.flow
            && let Trigger::Birthday { local_minutes } = a.trigger
        {
            schedule_birthday(
                conn,
                vault,
                cfg,
                &due.flow,
                local_minutes,
                due.profile,
                now_ms + DAY_MS,
                now_ms,
            )?;
        }
    }
    Ok(out)
}

/// One person in a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRow {
    pub profile_id: ProfileId,
    /// `send`, `skip` or `wait`.
    pub outcome: &'static str,
    pub reason: Option<String>,
    /// The language the message would be in.
    pub language: Option<String>,
    pub wait_until_ms: Option<i64>,
}

/// Who would receive what now, and who not, with reasons: the flow's
/// waiting sends, and for a segment-based flow its members now. Nothing
/// is written.
pub fn dry_run(
    conn: &mut dyn Conn,
    vault: &Vault,
    catalog: &Catalog,
    cfg: &SendConfig,
    id: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Option<Vec<DryRow>>> {
    let Some(f) = super::flow_get(conn, id)? else {
        return Ok(None);
    };
    let template = template_get(conn, f.flow.sending().2)?.map(|t| t.template);
    let all: HashMap<String, FlowRecord> = flows(conn)?
        .into_iter()
        .map(|f| (f.flow.id().to_owned(), f))
        .collect();
    let mut dues: Vec<Due> = conn
        .query(
            "SELECT profile_id, occurrence, since_ms FROM sends WHERE flow_id = $1 AND status = 'due'
             ORDER BY due_ms LIMIT $2",
            &[P::Text(id), P::Int(limit)],
        )?
        .iter()
        .map(|r| {
            Ok(Due {
                flow: id.to_owned(),
                profile: ProfileId(r.int(0)?),
                occurrence: r.text(1)?,
                since_ms: r.int(2)?,
                subject: None,
            })
        })
        .collect::<Result<_>>()?;
    let segment = match &f.flow {
        Flow::Automation(a) => match &a.trigger {
            Trigger::SegmentEntered(s) | Trigger::Schedule { segment: s, .. } => Some(s.clone()),
            _ => None,
        },
        Flow::Campaign(c) if f.status == "scheduled" => Some(c.segment.clone()),
        Flow::Campaign(_) => None,
    };
    if let Some(s) = segment {
        let left = limit - dues.len() as i64;
        for r in conn.query(
            "SELECT profile_id, since_ms FROM segment_members WHERE segment_id = $1
             ORDER BY profile_id LIMIT $2",
            &[P::Text(&s), P::Int(left.max(0))],
        )? {
            let p = r.int(0)?;
            if !dues.iter().any(|d| d.profile == ProfileId(p)) {
                dues.push(Due {
                    flow: id.to_owned(),
                    profile: ProfileId(p),
                    occurrence: "dry_run".into(),
                    since_ms: r.int(1)?,
                    subject: None,
                });
            }
        }
    }
    let mut out = Vec::with_capacity(dues.len());
    for d in dues {
        let v = judge(
            conn,
            vault,
            catalog,
            cfg,
            &all,
            &f,
            template.as_ref(),
            &d,
            now_ms,
        )?;
        out.push(match v {
            Verdict::Send { language, .. } => DryRow {
                profile_id: d.profile,
                outcome: "send",
                reason: None,
                language: Some(language),
                wait_until_ms: None,
            },
            Verdict::Skip(r) => DryRow {
                profile_id: d.profile,
                outcome: "skip",
                reason: Some(r),
                language: None,
                wait_until_ms: None,
            },
            Verdict::Wait(t) => DryRow {
                profile_id: d.profile,
                outcome: "wait",
                reason: Some("quiet_hours".into()),
                language: None,
                wait_until_ms: Some(t),
            },
        });
    }
    Ok(Some(out))
}
