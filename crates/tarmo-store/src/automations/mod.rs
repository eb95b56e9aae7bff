//! Templates, automations and campaigns as stored, and the sends they make.
//!
//! A *flow* is an automation or a campaign. Each send a flow may make is a
//! row of `sends` keyed by (flow, person, occurrence) — the occurrence names
//! what caused it (a segment entry, an event, a birthday's year, a cron
//! firing, the campaign) — so the database itself refuses a second send of
//! the same thing, whatever crashes, restarts or nodes. Rows wait with their
//! due time in an index of pending rows; [`follow`] makes them from what
//! commits, [`send`] takes the due ones and, in the transaction that writes
//! the outbox row, decides again.
//!
//! This module must never send without a decision taken in that
//! transaction, never store a rendered message but sealed in the outbox,
//! and never save a definition that names something missing.

pub mod follow;
pub mod send;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tarmo_core::access::DataKind;
use tarmo_core::automations::clock::{Schedule, TimeZone};
use tarmo_core::automations::template::{Template, TemplateChannel};
use tarmo_core::automations::{
    Automation, Campaign, FrequencyCaps, ListKind, SendChannel, Trigger, WebhookAction,
};
use tarmo_core::consent::{Channel, PurposeId};

use crate::conn::{Conn, P, ProcessorId, ProfileId};
use crate::consent::Catalog;
use crate::writer::WriterHandle;
use crate::{Code, Error, Result, Services};

/// What sends need beyond the store.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// The base of links in messages, without a trailing slash.
    pub public_url: String,
    pub organisation: String,
    /// For people without a `timezone` trait, and for cron schedules.
    pub default_tz: TimeZone,
    /// Marketing messages per person and channel across all flows.
    pub frequency_caps: FrequencyCaps,
    /// Where this process follows `segment_history` and `events` from
    /// (shared by the clones of this config; see [`crate::cursor`]).
    pub cursors: follow::FollowCursors,
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            organisation: "Tarmo".into(),
            default_tz: TimeZone::UTC,
            frequency_caps: FrequencyCaps::default(),
            cursors: Default::default(),
        }
    }
}

/// The kind of signed link that opens the person's preference page.
pub const PREFERENCES_LINK: &str = "preferences";

/// A preference link's scope: `*` (every purpose), and the person's own
/// language after a colon when it is known (`*:fi`), so that their page
/// opens in the language they chose whatever their browser says. The scope
/// is signed with the rest of the link.
pub fn preferences_scope(language: Option<&str>) -> String {
    match language.filter(|l| tarmo_core::consent::purpose::valid_language(l)) {
        Some(l) => format!("*:{l}"),
        None => "*".into(),
    }
}

/// The language a preference link's scope names: `None` when the scope is
/// not a preference scope at all, `Some(None)` for one without a language.
pub fn preferences_language(scope: &str) -> Option<Option<&str>> {
    match scope.strip_prefix('*')? {
        "" => Some(None),
        rest => rest.strip_prefix(':').map(Some),
    }
}

// ------------------------------------------------------------- templates

/// A template with its times.
#[derive(Debug, Clone)]
pub struct TemplateRecord {
    pub template: Template,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn rejected(code: Code, msg: impl Into<String>) -> Error {
    Error::rejected(code, msg)
}

pub fn template_get(conn: &mut dyn Conn, id: &str) -> Result<Option<TemplateRecord>> {
    let Some(r) = conn.query_opt(
        "SELECT body, created_ms, updated_ms FROM templates WHERE id = $1",
        &[P::Text(id)],
    )?
    else {
        return Ok(None);
    };
    let template: Template =
        serde_json::from_str(&r.text(0)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(Some(TemplateRecord {
        template,
        created_ms: r.int(1)?,
        updated_ms: r.int(2)?,
    }))
}

pub fn templates(conn: &mut dyn Conn) -> Result<Vec<TemplateRecord>> {
    let ids: Vec<String> = conn
        .query("SELECT id FROM templates ORDER BY id", &[])?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(template_get(conn, &id)?);
    }
    Ok(out)
}

fn template_error(e: tarmo_core::automations::template::TemplateError) -> Error {
    rejected(e.code(), e.to_string())
}

/// The kinds of a person's data a purpose opens.
pub fn allowed_kinds(catalog: &Catalog, purpose: &str) -> BTreeSet<DataKind> {
    catalog.get(purpose).map_or_else(BTreeSet::new, |c| {
        c.spec
            .data_categories
            .iter()
            .flat_map(|c| DataKind::of_category(c.as_str()).iter().copied())
            .collect()
    })
}

/// Save a template (`create`: it must not exist; else it must). Every flow
/// using it is checked again: same channel, fields its purpose allows.
pub fn template_put(
    conn: &mut dyn Conn,
    catalog: &Catalog,
    t: Template,
    create: bool,
    now_ms: i64,
) -> Result<TemplateRecord> {
    t.validate().map_err(template_error)?;
    let old = template_get(conn, &t.id)?;
    match (&old, create) {
        (Some(_), true) => {
            return Err(rejected(
                Code::TemplateExists,
                format!("template `{}` exists; PUT changes it", t.id),
            ));
        }
        (None, false) => return Err(Error::rejected(Code::TemplateNotFound, "no such template")),
        _ => {}
    }
    for f in flows(conn)? {
        let (purpose, channel, template) = f.flow.sending();
        if template != t.id {
            continue;
        }
        check_template(&t, catalog, purpose.as_str(), channel)?;
    }
    let created_ms = old.as_ref().map_or(now_ms, |o| o.created_ms);
    let body = serde_json::to_string(&t).expect("serialises");
    conn.exec(
        "INSERT INTO templates (id, channel, body, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET channel = EXCLUDED.channel, body = EXCLUDED.body,
             updated_ms = EXCLUDED.updated_ms",
        &[
            P::Text(&t.id),
            P::Text(t.channel.as_str()),
            P::Text(&body),
            P::Int(created_ms),
            P::Int(now_ms),
        ],
    )?;
    Ok(TemplateRecord {
        template: t,
        created_ms,
        updated_ms: now_ms,
    })
}

/// Delete a template no flow uses.
pub fn template_delete(conn: &mut dyn Conn, id: &str) -> Result<bool> {
    if let Some(f) = flows(conn)?.into_iter().find(|f| f.flow.sending().2 == id) {
        return Err(rejected(
            Code::TemplateInUse,
            format!("`{}` sends with this template", f.flow.id()),
        ));
    }
    Ok(conn.exec("DELETE FROM templates WHERE id = $1", &[P::Text(id)])? > 0)
}

fn check_template(
    t: &Template,
    catalog: &Catalog,
    purpose: &str,
    channel: SendChannel,
) -> Result<()> {
    // A push or a call script is text, as an SMS is.
    let wanted = match channel {
        SendChannel::Email => TemplateChannel::Email,
        SendChannel::Sms | SendChannel::Webhook => TemplateChannel::Sms,
    };
    if t.channel != wanted {
        return Err(rejected(
            Code::TemplateChannelMismatch,
            format!(
                "template `{}` is written for {}, not {}",
                t.id,
                t.channel.as_str(),
                channel.as_str()
            ),
        ));
    }
    t.check_fields(purpose, &allowed_kinds(catalog, purpose))
        .map_err(template_error)
}

// ----------------------------------------------------------------- flows

/// An automation or a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Automation(Automation),
    Campaign(Campaign),
}

impl Flow {
    pub fn id(&self) -> &str {
        match self {
            Self::Automation(a) => &a.id,
            Self::Campaign(c) => &c.id,
        }
    }

    /// (purpose, channel, template)
    pub fn sending(&self) -> (&PurposeId, SendChannel, &str) {
        match self {
            Self::Automation(a) => (&a.purpose, a.channel, &a.template),
            Self::Campaign(c) => (&c.purpose, c.channel, &c.template),
        }
    }

    /// The segment the flow sends to or is triggered by.
    pub fn segment(&self) -> Option<&str> {
        match self {
            Self::Automation(a) => a.trigger.segment(),
            Self::Campaign(c) => Some(&c.segment),
        }
    }

    pub fn webhook(&self) -> Option<WebhookAction> {
        match self {
            Self::Automation(a) => a.webhook,
            Self::Campaign(c) => c.webhook,
        }
    }

    /// The consent channel the flow reaches people over.
    pub fn consent_channel(&self) -> Channel {
        match (self.sending().1, self.webhook()) {
            (SendChannel::Email, _) => Channel::Email,
            (SendChannel::Sms, _) => Channel::Sms,
            (
                SendChannel::Webhook,
                Some(WebhookAction {
                    list: ListKind::Call,
                    ..
                }),
            ) => Channel::Phone,
            (SendChannel::Webhook, _) => Channel::Push,
        }
    }

    pub fn quiet(&self) -> Option<tarmo_core::automations::clock::Quiet> {
        match self {
            Self::Automation(a) => a.quiet,
            Self::Campaign(c) => c.quiet,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Automation(_) => "automation",
            Self::Campaign(_) => "campaign",
        }
    }

    fn spec(&self) -> Value {
        match self {
            Self::Automation(a) => a.to_json(),
            Self::Campaign(c) => c.to_json(),
        }
    }
}

/// A flow as stored.
#[derive(Debug, Clone)]
pub struct FlowRecord {
    pub flow: Flow,
    /// Automations: `active` or `disabled`; campaigns: `scheduled`,
    /// `running`, `cancelled`.
    pub status: String,
    pub next_fire_ms: Option<i64>,
    pub cursor: i64,
    pub backfill: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn flow_of_row(r: &crate::conn::Row) -> Result<FlowRecord> {
    let spec: Value =
        serde_json::from_str(&r.text(2)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let corrupt = |(_, m): (Code, String)| Error::Corrupt(m);
    let flow = match r.text(1)?.as_str() {
        "automation" => Flow::Automation(Automation::from_json(&spec, None).map_err(corrupt)?),
        _ => {
            let mut spec = spec;
            // Stored with its time in ms; the parser takes RFC 3339.
            let at = spec["send_at_ms"].as_i64().unwrap_or(0);
            if let Some(o) = spec.as_object_mut() {
                o.remove("send_at_ms");
            }
            let mut c = Campaign::from_json(&spec, at).map_err(corrupt)?;
            c.send_at_ms = at;
            Flow::Campaign(c)
        }
    };
    Ok(FlowRecord {
        flow,
        status: r.text(3)?,
        next_fire_ms: r.opt_int(4)?,
        cursor: r.int(5)?,
        backfill: r.opt_int(6)?,
        created_ms: r.int(7)?,
        updated_ms: r.int(8)?,
    })
}

const FLOW_COLUMNS: &str =
    "id, kind, spec, status, next_fire_ms, cursor, backfill, created_ms, updated_ms";

pub fn flows(conn: &mut dyn Conn) -> Result<Vec<FlowRecord>> {
    conn.query(
        &format!("SELECT {FLOW_COLUMNS} FROM automations ORDER BY id"),
        &[],
    )?
    .iter()
    .map(flow_of_row)
    .collect()
}

pub fn flow_get(conn: &mut dyn Conn, id: &str) -> Result<Option<FlowRecord>> {
    conn.query_opt(
        &format!("SELECT {FLOW_COLUMNS} FROM automations WHERE id = $1"),
        &[P::Text(id)],
    )?
    .map(|r| flow_of_row(&r))
    .transpose()
}

fn segment_exists(conn: &mut dyn Conn, id: &str) -> Result<bool> {
    Ok(conn
        .query_opt("SELECT 1 FROM segments WHERE id = $1", &[P::Text(id)])?
        .is_some())
}

/// Everything a flow names must exist and fit together.
fn check_flow(conn: &mut dyn Conn, catalog: &Catalog, f: &Flow) -> Result<()> {
    let (purpose, channel, template) = f.sending();
    let entry = catalog.require(purpose.as_str())?;
    let ch = f.consent_channel();
    if !entry.rule.covers(ch) {
        return Err(rejected(
            Code::ChannelNotCovered,
            format!(
                "purpose `{purpose}` does not cover the {} channel",
                ch.as_str()
            ),
        ));
    }
    if let Some(w) = f.webhook() {
        processor_categories(conn, catalog, purpose.as_str(), w.processor)?;
    }
    let Some(t) = template_get(conn, template)? else {
        return Err(rejected(
            Code::UnknownTemplate,
            format!("no template `{template}`"),
        ));
    };
    check_template(&t.template, catalog, purpose.as_str(), channel)?;
    if let Some(s) = f.segment()
        && !segment_exists(conn, s)?
    {
        return Err(rejected(Code::UnknownSegment, format!("no segment `{s}`")));
    }
    Ok(())
}

/// The data categories a webhook flow discloses to its processor: the
/// purpose's that the processor is registered for. The processor must
/// exist, be registered for the purpose, share a category with it and
/// have a webhook to send to.
pub fn processor_categories(
    conn: &mut dyn Conn,
    catalog: &Catalog,
    purpose: &str,
    processor: ProcessorId,
) -> Result<Vec<String>> {
    let Some(p) = crate::processors::get(conn, processor)? else {
        return Err(rejected(
            Code::UnknownProcessor,
            format!("no processor {processor}"),
        ));
    };
    if !p.purposes.iter().any(|x| x == purpose) {
        return Err(rejected(
            Code::ProcessorPurposeNotRegistered,
            format!("processor {processor} is not registered for purpose `{purpose}`"),
        ));
    }
    if p.erasure_webhook.is_none() {
        return Err(rejected(
            Code::ProcessorWithoutWebhook,
            format!("processor {processor} has no webhook to send to"),
        ));
    }
    let entry = catalog.require(purpose)?;
    let shared: Vec<String> = entry
        .spec
        .data_categories
        .iter()
        .map(|c| c.as_str().to_owned())
        .filter(|c| p.data_categories.contains(c))
        .collect();
    if shared.is_empty() {
        return Err(rejected(
            Code::NoCommonDataCategories,
            format!("purpose `{purpose}` and processor {processor} share no data category"),
        ));
    }
    Ok(shared)
}

fn max_id(conn: &mut dyn Conn, table: &str) -> Result<i64> {
    let r = conn.query_opt(&format!("SELECT COALESCE(MAX(id), 0) FROM {table}"), &[])?;
    r.map_or(Ok(0), |r| r.int(0))
}

/// Where a trigger starts following: from now on (entries and events
/// already committed do not fire), and for birthdays a pass over everyone.
/// A win-back also looks back over the orders made before it existed: a
/// customer who stopped buying a year ago is the one it is for, and
/// following only new orders would reach nobody until `for` had passed.
fn start_of(
    conn: &mut dyn Conn,
    t: &Trigger,
    cfg: &SendConfig,
    now_ms: i64,
) -> Result<(i64, Option<i64>, Option<i64>)> {
    Ok(match t {
        Trigger::SegmentEntered(_) | Trigger::SegmentLeft(_) => {
            (max_id(conn, "segment_history")?, None, None)
        }
        Trigger::Event { .. } => (max_id(conn, "events")?, None, None),
        Trigger::Absence { .. } => (max_id(conn, "events")?, Some(0), None),
        Trigger::Birthday { .. } => (max_id(conn, "events")?, Some(0), None),
        Trigger::Schedule { cron, .. } => {
            let s = Schedule::parse(cron).map_err(|e| rejected(Code::InvalidCron, e))?;
            let next = s.next_after(&cfg.default_tz, now_ms).ok_or_else(|| {
                rejected(
                    Code::CronNeverFires,
                    format!("`{cron}` never fires (a date that does not exist?)"),
                )
            })?;
            (0, None, Some(next))
        }
    })
}

/// Create (`create`) or replace an automation. A changed trigger starts
/// afresh: its waiting sends are dropped.
pub fn automation_put(
    conn: &mut dyn Conn,
    catalog: &Catalog,
    cfg: &SendConfig,
    a: Automation,
    create: bool,
    now_ms: i64,
) -> Result<FlowRecord> {
    let old = flow_get(conn, &a.id)?;
    match (&old, create) {
        (Some(_), true) => {
            return Err(rejected(
                Code::AutomationExists,
                format!("`{}` exists; PUT changes it", a.id),
            ));
        }
        (
            Some(FlowRecord {
                flow: Flow::Campaign(_),
                ..
            }),
            false,
        )
        | (None, false) => {
            return Err(Error::rejected(
                Code::AutomationNotFound,
                "no such automation",
            ));
        }
        _ => {}
    }
    if let Trigger::Schedule { .. } = a.trigger {
        // A cron that never fires is refused before anything it names.
        start_of(conn, &a.trigger, cfg, now_ms)?;
    }
    let flow = Flow::Automation(a.clone());
    check_flow(conn, catalog, &flow)?;
    let same_trigger = matches!(&old, Some(FlowRecord { flow: Flow::Automation(o), .. }) if o.trigger == a.trigger);
    let (cursor, backfill, next) = match &old {
        Some(o) if same_trigger => (o.cursor, o.backfill, o.next_fire_ms),
        _ => start_of(conn, &a.trigger, cfg, now_ms)?,
    };
    if !same_trigger {
        conn.exec(
            "DELETE FROM sends WHERE flow_id = $1 AND status = 'due'",
            &[P::Text(&a.id)],
        )?;
    }
    let status = if a.enabled { "active" } else { "disabled" };
    let created_ms = old.as_ref().map_or(now_ms, |o| o.created_ms);
    let spec = flow.spec().to_string();
    conn.exec(
        "INSERT INTO automations (id, kind, spec, status, next_fire_ms, cursor, backfill, created_ms, updated_ms)
         VALUES ($1, 'automation', $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET spec = EXCLUDED.spec, status = EXCLUDED.status,
             next_fire_ms = EXCLUDED.next_fire_ms, cursor = EXCLUDED.cursor,
             backfill = EXCLUDED.backfill, updated_ms = EXCLUDED.updated_ms",
        &[
            P::Text(&a.id),
            P::Text(&spec),
            P::Text(status),
            next.into(),
            P::Int(cursor),
            backfill.into(),
            P::Int(created_ms),
            P::Int(now_ms),
        ],
    )?;
    Ok(flow_get(conn, &a.id)?.expect("just written"))
}

/// Schedule a campaign: at `send_at` its segment's members get a send
/// each, spread to `per_minute`.
pub fn campaign_create(
    conn: &mut dyn Conn,
    catalog: &Catalog,
    c: Campaign,
    now_ms: i64,
) -> Result<FlowRecord> {
    if flow_get(conn, &c.id)?.is_some() {
        return Err(rejected(
            Code::CampaignExists,
            format!("`{}` exists (automations and campaigns share ids)", c.id),
        ));
    }
    let flow = Flow::Campaign(c.clone());
    check_flow(conn, catalog, &flow)?;
    conn.exec(
        "INSERT INTO automations (id, kind, spec, status, next_fire_ms, cursor, backfill, created_ms, updated_ms)
         VALUES ($1, 'campaign', $2, 'scheduled', $3, 0, NULL, $4, $4)",
        &[
            P::Text(&c.id),
            P::Text(&flow.spec().to_string()),
            P::Int(c.send_at_ms),
            P::Int(now_ms),
        ],
    )?;
    Ok(flow_get(conn, &c.id)?.expect("just written"))
}

/// Cancel a campaign: what has not been sent will not be.
pub fn campaign_cancel(conn: &mut dyn Conn, id: &str, now_ms: i64) -> Result<FlowRecord> {
    match flow_get(conn, id)? {
        Some(FlowRecord {
            flow: Flow::Campaign(_),
            ..
        }) => {}
        _ => return Err(Error::rejected(Code::CampaignNotFound, "no such campaign")),
    }
    conn.exec(
        "UPDATE automations SET status = 'cancelled', next_fire_ms = NULL, updated_ms = $2 WHERE id = $1",
        &[P::Text(id), P::Int(now_ms)],
    )?;
    conn.exec(
        "UPDATE sends SET status = 'skipped', reason = 'cancelled', done_ms = $2
         WHERE flow_id = $1 AND status = 'due'",
        &[P::Text(id), P::Int(now_ms)],
    )?;
    Ok(flow_get(conn, id)?.expect("exists"))
}

/// Delete an automation and its sends' records.
pub fn automation_delete(conn: &mut dyn Conn, id: &str) -> Result<bool> {
    match flow_get(conn, id)? {
        Some(FlowRecord {
            flow: Flow::Automation(_),
            ..
        }) => {}
        _ => return Ok(false),
    }
    conn.exec("DELETE FROM sends WHERE flow_id = $1", &[P::Text(id)])?;
    Ok(conn.exec("DELETE FROM automations WHERE id = $1", &[P::Text(id)])? > 0)
}

/// An erased person's sends go with them.
pub fn erase(conn: &mut dyn Conn, profile: ProfileId) -> Result<()> {
    conn.exec(
        "DELETE FROM sends WHERE profile_id = $1",
        &[P::Int(profile.0)],
    )?;
    Ok(())
}

/// How the mail worker words a send the policy stopped at delivery.
pub const NOT_ALLOWED: &str = "not allowed at send time: ";

/// What a flow did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Handed to the outbox (and not given up there).
    pub sent: i64,
    pub skipped: BTreeMap<String, i64>,
    /// Given up by the outbox after its retries.
    pub failed: i64,
    /// Still waiting (their time has not come, or quiet hours).
    pub pending: i64,
    /// Sends that waited for the end of quiet hours.
    pub deferred_quiet_hours: i64,
    /// People who withdrew from the purpose after a send.
    pub unsubscribed: i64,
}

pub fn counters(conn: &mut dyn Conn, id: &str, purpose: &str) -> Result<Counters> {
    let mut c = Counters::default();
    for r in conn.query(
        "SELECT s.status, s.reason, o.status, count(*), CAST(COALESCE(SUM(s.deferrals), 0) AS BIGINT),
             o.last_error FROM sends s
         LEFT JOIN outbox o ON o.id = s.outbox_id
         WHERE s.flow_id = $1 GROUP BY s.status, s.reason, o.status, o.last_error",
        &[P::Text(id)],
    )? {
        let n = r.int(3)?;
        c.deferred_quiet_hours += r.int(4)?;
        match (r.text(0)?.as_str(), r.opt_text(2)?) {
            // The outbox decides once more when it delivers: a refusal
            // there is a skip with its reason, not a failure.
            ("sent", Some(o)) if o == "failed" => {
                match r.opt_text(5)?.as_deref().and_then(|e| e.strip_prefix(NOT_ALLOWED)) {
                    Some(reason) => *c.skipped.entry(reason.to_owned()).or_default() += n,
                    None => c.failed += n,
                }
            }
            ("sent", _) => c.sent += n,
            ("due", _) => c.pending += n,
            _ => {
                *c.skipped
                    .entry(r.opt_text(1)?.unwrap_or_else(|| "unknown".into()))
                    .or_default() += n
            }
        }
    }
    let r = conn.query_opt(
        "SELECT count(DISTINCT s.profile_id) FROM sends s
         JOIN consent_ledger l ON l.profile_id = s.profile_id AND l.purpose_id = $2
             AND l.decision IN ('withdrawn', 'denied', 'objected') AND l.at_ms >= s.done_ms
         WHERE s.flow_id = $1 AND s.status = 'sent'",
        &[P::Text(id), P::Text(purpose)],
    )?;
    c.unsubscribed = r.map_or(Ok(0), |r| r.int(0))?;
    Ok(c)
}

/// `STOP` from a phone number: every purpose that reaches the person by
/// SMS on their consent or as direct marketing is withdrawn, in the
/// ledger, at once. The purposes withdrawn (none for an unknown number).
pub fn sms_stop(
    conn: &mut dyn Conn,
    vault: &crate::vault::Vault,
    catalog: &Catalog,
    phone: &crate::vault::BlindIndex,
    keyword: &str,
    now_ms: i64,
) -> Result<Vec<String>> {
    use tarmo_core::consent::{ConsentDecision, LegalBasis, Method};
    let Some(r) = conn.query_opt(
        "SELECT profile_id FROM identifiers WHERE bidx = $1",
        &[P::Blob(&phone.0)],
    )?
    else {
        return Ok(Vec::new());
    };
    let profile = r.int(0)?;
    let mut entries = Vec::new();
    for c in catalog.entries() {
        if !c.rule.covers(Channel::Sms)
            || !(c.rule.direct_marketing || c.rule.basis == LegalBasis::Consent)
        {
            continue;
        }
        let st = crate::consent::state(conn, ProfileId(profile), &c.id)?;
        if st.is_some_and(|s| s.decision.is_refusal()) {
            continue;
        }
        let mut evidence = serde_json::Map::new();
        evidence.insert("channel".into(), "sms".into());
        evidence.insert(
            "keyword".into(),
            keyword.chars().take(20).collect::<String>().into(),
        );
        entries.push(crate::consent::NewEntry {
            channel: None,
            profile_id: ProfileId(profile),
            purpose: c.id.clone(),
            decision: ConsentDecision::Withdrawn,
            method: Method::OneClickUnsubscribe,
            notice_version: None,
            at_ms: None,
            source: "sms reply".into(),
            evidence,
        });
    }
    let purposes = entries.iter().map(|e| e.purpose.to_string()).collect();
    crate::consent::append(conn, vault, catalog, &entries, now_ms)?;
    Ok(purposes)
}

// ------------------------------------------------------------------ use cases
//
// What the HTTP crate and the scheduler call: each owns its transaction
// (a writer job, or a read on the pool) and returns what it made.

/// Save a new template (`template_exists` if its id is taken).
pub fn create_template(svc: &Services, t: Template) -> Result<TemplateRecord> {
    svc.write(move |ctx| template_put(ctx.conn, &ctx.catalog, t, true, ctx.now_ms))
}

/// Change a template; every flow using it is checked again.
pub fn change_template(svc: &Services, t: Template) -> Result<TemplateRecord> {
    svc.write(move |ctx| template_put(ctx.conn, &ctx.catalog, t, false, ctx.now_ms))
}

/// Every template, by id.
pub fn list_templates(svc: &Services) -> Result<Vec<TemplateRecord>> {
    svc.read(|conn, _| templates(conn))
}

/// One template.
pub fn template(svc: &Services, id: &str) -> Result<Option<TemplateRecord>> {
    svc.read(|conn, _| template_get(conn, id))
}

/// Delete a template no flow uses; false when there is none.
pub fn delete_template(svc: &Services, id: &str) -> Result<bool> {
    let id = id.to_owned();
    svc.write(move |ctx| template_delete(ctx.conn, &id))
}

/// Every flow, automations and campaigns, by id.
pub fn list_flows(svc: &Services) -> Result<Vec<FlowRecord>> {
    svc.read(|conn, _| flows(conn))
}

/// One flow.
pub fn flow(svc: &Services, id: &str) -> Result<Option<FlowRecord>> {
    svc.read(|conn, _| flow_get(conn, id))
}

/// What a flow did so far (`purpose`: the one it sends for).
pub fn flow_counters(svc: &Services, id: &str, purpose: &PurposeId) -> Result<Counters> {
    svc.read(|conn, _| counters(conn, id, purpose.as_str()))
}

/// Define a new automation (`create`) or replace one.
pub fn save_automation(
    svc: &Services,
    cfg: SendConfig,
    a: Automation,
    create: bool,
) -> Result<FlowRecord> {
    svc.write(move |ctx| automation_put(ctx.conn, &ctx.catalog, &cfg, a, create, ctx.now_ms))
}

/// Delete an automation and its sends' records; false when there is none.
pub fn delete_automation(svc: &Services, id: &str) -> Result<bool> {
    let id = id.to_owned();
    svc.write(move |ctx| automation_delete(ctx.conn, &id))
}

/// Schedule a campaign.
pub fn create_campaign(svc: &Services, c: Campaign) -> Result<FlowRecord> {
    svc.write(move |ctx| campaign_create(ctx.conn, &ctx.catalog, c, ctx.now_ms))
}

/// Cancel a campaign.
pub fn cancel_campaign(svc: &Services, id: &str) -> Result<FlowRecord> {
    let id = id.to_owned();
    svc.write(move |ctx| campaign_cancel(ctx.conn, &id, ctx.now_ms))
}

/// Who a flow would reach now, and who not, with reasons (at most
/// `limit` people); `None` when there is no such flow. Nothing is written.
pub fn preview_sends(
    svc: &Services,
    cfg: &SendConfig,
    id: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Option<Vec<send::DryRow>>> {
    let catalog = svc.store.catalog()?;
    svc.read(|conn, vault| send::dry_run(conn, vault, &catalog, cfg, id, now_ms, limit))
}

/// `STOP` from a phone number, given as the identifier the message came
/// from: its SMS purposes are withdrawn (see [`sms_stop`]).
pub fn stop_sms(
    svc: &Services,
    phone: &tarmo_core::identity::Identifier,
    keyword: String,
) -> Result<Vec<String>> {
    let bidx = svc
        .store
        .vault()
        .blind_index(phone.kind().as_str(), phone.value());
    svc.write(move |ctx| {
        sms_stop(
            ctx.conn,
            ctx.vault,
            &ctx.catalog,
            &bidx,
            &keyword,
            ctx.now_ms,
        )
    })
}

/// The scheduler's first step: make sends due from what committed since
/// the last pass, in one writer transaction.
pub fn follow_committed(writer: &WriterHandle, cfg: SendConfig) -> Result<follow::Followed> {
    writer.transact_blocking(move |ctx| follow::follow(ctx.conn, ctx.vault, &cfg, ctx.now_ms))
}

/// The scheduler's second step: carry out up to `batch` due sends, in one
/// writer transaction with their outbox rows.
pub fn send_due_now(writer: &WriterHandle, cfg: SendConfig, batch: i64) -> Result<send::Sent> {
    writer.transact_blocking(move |ctx| {
        send::send_due(ctx.conn, ctx.vault, &ctx.catalog, &cfg, ctx.now_ms, batch)
    })
}
