//! Automations and campaigns as the marketer defines them: what starts a
//! send (a segment entered or left, an event and a delay unless another
//! event came, a birthday at a local time, an absence, a cron schedule),
//! for which purpose, over which channel, with which template, under which
//! caps and quiet hours. Parsing at the edge with one error code per fault;
//! the store decides and sends.
//!
//! Pure: no I/O, no clock (times are passed in).

pub mod clock;
pub mod template;

use crate::codes::Code;
use serde_json::{Map, Value, json};

use crate::consent::PurposeId;
use crate::segments::{Span, valid_segment_id};

/// Why a definition is refused: (code, message).
pub type DefError = (Code, String);

fn bad(code: Code, msg: impl Into<String>) -> DefError {
    (code, msg.into())
}

/// How a message leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendChannel {
    Email,
    Sms,
    /// To a registered processor's webhook, who pushes or calls: a
    /// disclosure to that processor.
    Webhook,
}

impl SendChannel {
    pub fn parse(s: &str) -> Result<Self, DefError> {
        match s {
            "email" => Ok(Self::Email),
            "sms" => Ok(Self::Sms),
            "webhook" => Ok(Self::Webhook),
            _ => Err(bad(
                Code::InvalidChannel,
                format!(
                    "`{}` is not a channel: email, sms or webhook",
                    s.chars().take(20).collect::<String>()
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Webhook => "webhook",
        }
    }
}

/// What a processor does with a webhook send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// A push notification: the person is named by their `user_id`, which
    /// the processor's app knows; consent over the `push` channel.
    Push,
    /// A call list: the person's phone number; consent over `phone`.
    Call,
}

impl ListKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Call => "call",
        }
    }
}

/// `"webhook": {"processor": 3, "list": "push" | "call"}`: where a
/// webhook flow's sends go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookAction {
    pub processor: crate::ids::ProcessorId,
    pub list: ListKind,
}

impl WebhookAction {
    /// Required with the `webhook` channel, refused with the others.
    pub fn from_json(v: Option<&Value>, channel: SendChannel) -> Result<Option<Self>, DefError> {
        let v = v.filter(|v| !v.is_null());
        match (v, channel) {
            (None, SendChannel::Webhook) => Err(bad(
                Code::InvalidWebhook,
                "the webhook channel needs `webhook`: {\"processor\": ID, \"list\": \"push\" | \"call\"}",
            )),
            (None, _) => Ok(None),
            (Some(_), SendChannel::Email | SendChannel::Sms) => Err(bad(
                Code::InvalidWebhook,
                "`webhook` goes with the webhook channel only",
            )),
            (Some(v), SendChannel::Webhook) => {
                let o = v.as_object().ok_or_else(|| {
                    bad(
                        Code::InvalidWebhook,
                        "`webhook` is {\"processor\", \"list\"}",
                    )
                })?;
                if let Some(k) = o.keys().find(|k| *k != "processor" && *k != "list") {
                    return Err(bad(
                        Code::InvalidWebhook,
                        format!("webhook: unknown field `{k}`"),
                    ));
                }
                let processor = o
                    .get("processor")
                    .and_then(Value::as_i64)
                    .filter(|n| *n > 0)
                    .map(crate::ids::ProcessorId)
                    .ok_or_else(|| {
                        bad(
                            Code::InvalidWebhook,
                            "webhook.processor is a processor's id",
                        )
                    })?;
                let list = match o.get("list").and_then(Value::as_str) {
                    Some("push") => ListKind::Push,
                    Some("call") => ListKind::Call,
                    _ => return Err(bad(Code::InvalidWebhook, "webhook.list is push or call")),
                };
                Ok(Some(Self { processor, list }))
            }
        }
    }

    pub fn to_json(self) -> Value {
        json!({"processor": self.processor, "list": self.list.as_str()})
    }
}

/// `webhook` beside the other fields, only where there is one.
fn with_webhook(mut v: Value, w: Option<WebhookAction>) -> Value {
    if let (Some(w), Some(o)) = (w, v.as_object_mut()) {
        o.insert("webhook".into(), w.to_json());
    }
    v
}

/// What starts a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    SegmentEntered(String),
    SegmentLeft(String),
    /// `event` happened; after `delay`, send unless `unless.event` came
    /// within `unless.within` of it.
    Event {
        event: String,
        delay: Span,
        unless: Option<(String, Span)>,
    },
    /// On the person's birthday at this local time (minutes after midnight).
    Birthday {
        local_minutes: u16,
    },
    /// `event` has not happened for `for_` since the last one: once per absence.
    Absence {
        event: String,
        for_: Span,
    },
    /// Recurring: every firing of `cron` (in the default time zone), to
    /// the members of `segment` at that moment.
    Schedule {
        cron: String,
        segment: String,
    },
}

fn span(v: &Value, at: &str) -> Result<Span, DefError> {
    let s = v.as_str().ok_or_else(|| {
        bad(
            Code::InvalidTrigger,
            format!("{at} must be a duration (\"48h\")"),
        )
    })?;
    Span::parse(s).map_err(|e| bad(Code::InvalidTrigger, format!("{at}: {e}")))
}

fn event_name(v: Option<&Value>, at: &str) -> Result<String, DefError> {
    match v.and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.to_owned()),
        _ => Err(bad(
            Code::InvalidTrigger,
            format!("{at} must be an event name (1-200 bytes)"),
        )),
    }
}

fn segment_id(v: Option<&Value>, at: &str) -> Result<String, DefError> {
    match v.and_then(Value::as_str) {
        Some(s) if valid_segment_id(s) => Ok(s.to_owned()),
        _ => Err(bad(
            Code::InvalidTrigger,
            format!("{at} must be a segment id"),
        )),
    }
}

fn only(o: &Map<String, Value>, keys: &[&str], at: &str) -> Result<(), DefError> {
    match o.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(bad(
            Code::InvalidTrigger,
            format!("{at}: unknown field `{k}` (expected {})", keys.join(", ")),
        )),
        None => Ok(()),
    }
}

impl Trigger {
    pub fn from_json(v: &Value) -> Result<Self, DefError> {
        let o = v.as_object().ok_or_else(|| {
            bad(
                Code::InvalidTrigger,
                "`trigger` is an object: segment_entered, segment_left, event, birthday, absence or schedule",
            )
        })?;
        if let Some(s) = o.get("segment_entered") {
            only(o, &["segment_entered"], "trigger")?;
            return Ok(Self::SegmentEntered(segment_id(
                Some(s),
                "trigger.segment_entered",
            )?));
        }
        if let Some(s) = o.get("segment_left") {
            only(o, &["segment_left"], "trigger")?;
            return Ok(Self::SegmentLeft(segment_id(
                Some(s),
                "trigger.segment_left",
            )?));
        }
        if o.contains_key("event") {
            only(o, &["event", "delay", "unless"], "trigger")?;
            let event = event_name(o.get("event"), "trigger.event")?;
            let delay = span(o.get("delay").unwrap_or(&Value::Null), "trigger.delay")?;
            let unless = match o.get("unless") {
                None | Some(Value::Null) => None,
                Some(Value::Object(u)) => {
                    only(u, &["event", "within"], "trigger.unless")?;
                    let within = match u.get("within") {
                        Some(w) => span(w, "trigger.unless.within")?,
                        None => delay,
                    };
                    Some((event_name(u.get("event"), "trigger.unless.event")?, within))
                }
                Some(_) => {
                    return Err(bad(
                        Code::InvalidTrigger,
                        "trigger.unless is {\"event\", \"within\"}",
                    ));
                }
            };
            return Ok(Self::Event {
                event,
                delay,
                unless,
            });
        }
        if let Some(b) = o.get("birthday") {
            only(o, &["birthday"], "trigger")?;
            let t = b
                .get("local_time")
                .and_then(Value::as_str)
                .unwrap_or("09:00");
            let local_minutes = clock::parse_hhmm(t).ok_or_else(|| {
                bad(
                    Code::InvalidTrigger,
                    "trigger.birthday.local_time is HH:MM (\"09:00\")",
                )
            })?;
            return Ok(Self::Birthday { local_minutes });
        }
        if let Some(a) = o.get("absence") {
            only(o, &["absence"], "trigger")?;
            let a = a.as_object().ok_or_else(|| {
                bad(
                    Code::InvalidTrigger,
                    "trigger.absence is {\"event\", \"for\"}",
                )
            })?;
            only(a, &["event", "for"], "trigger.absence")?;
            return Ok(Self::Absence {
                event: event_name(a.get("event"), "trigger.absence.event")?,
                for_: span(a.get("for").unwrap_or(&Value::Null), "trigger.absence.for")?,
            });
        }
        if let Some(s) = o.get("schedule") {
            only(o, &["schedule"], "trigger")?;
            let s = s.as_object().ok_or_else(|| {
                bad(
                    Code::InvalidTrigger,
                    "trigger.schedule is {\"cron\", \"segment\"}",
                )
            })?;
            only(s, &["cron", "segment"], "trigger.schedule")?;
            let cron = s
                .get("cron")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(Code::InvalidTrigger, "trigger.schedule.cron is needed"))?;
            clock::Schedule::parse(cron).map_err(|e| bad(Code::InvalidCron, e))?;
            return Ok(Self::Schedule {
                cron: cron.to_owned(),
                segment: segment_id(s.get("segment"), "trigger.schedule.segment")?,
            });
        }
        Err(bad(
            Code::InvalidTrigger,
            "`trigger` is one of segment_entered, segment_left, event, birthday, absence, schedule",
        ))
    }

    pub fn to_json(&self) -> Value {
        match self {
            Self::SegmentEntered(s) => json!({ "segment_entered": s }),
            Self::SegmentLeft(s) => json!({ "segment_left": s }),
            Self::Event {
                event,
                delay,
                unless,
            } => {
                let mut o = json!({"event": event, "delay": delay.to_string()});
                if let Some((e, w)) = unless {
                    o["unless"] = json!({"event": e, "within": w.to_string()});
                }
                o
            }
            Self::Birthday { local_minutes } => json!({"birthday": {
                "local_time": format!("{:02}:{:02}", local_minutes / 60, local_minutes % 60)}}),
            Self::Absence { event, for_ } => {
                json!({"absence": {"event": event, "for": for_.to_string()}})
            }
            Self::Schedule { cron, segment } => {
                json!({"schedule": {"cron": cron, "segment": segment}})
            }
        }
    }

    /// The segment the trigger names, if any.
    pub fn segment(&self) -> Option<&str> {
        match self {
            Self::SegmentEntered(s) | Self::SegmentLeft(s) => Some(s),
            Self::Schedule { segment, .. } => Some(segment),
            _ => None,
        }
    }

    /// Short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SegmentEntered(_) => "segment_entered",
            Self::SegmentLeft(_) => "segment_left",
            Self::Event { .. } => "event",
            Self::Birthday { .. } => "birthday",
            Self::Absence { .. } => "absence",
            Self::Schedule { .. } => "schedule",
        }
    }
}

/// Sends a person may get from one automation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub per_day: Option<u32>,
    pub per_week: Option<u32>,
}

impl Caps {
    pub fn from_json(v: Option<&Value>) -> Result<Self, DefError> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Self::default());
        };
        let o = v.as_object().ok_or_else(|| {
            bad(
                Code::InvalidCaps,
                "`caps` is {\"per_person_per_day\", \"per_person_per_week\"}",
            )
        })?;
        let mut c = Self::default();
        for (k, v) in o {
            let n = v
                .as_u64()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    bad(
                        Code::InvalidCaps,
                        format!("caps.{k} is a whole number 1-1000"),
                    )
                })? as u32;
            match k.as_str() {
                "per_person_per_day" => c.per_day = Some(n),
                "per_person_per_week" => c.per_week = Some(n),
                _ => return Err(bad(Code::InvalidCaps, format!("caps: unknown field `{k}`"))),
            }
        }
        Ok(c)
    }

    pub fn to_json(self) -> Value {
        let mut o = Map::new();
        if let Some(n) = self.per_day {
            o.insert("per_person_per_day".into(), n.into());
        }
        if let Some(n) = self.per_week {
            o.insert("per_person_per_week".into(), n.into());
        }
        Value::Object(o)
    }
}

/// Marketing messages a person may get per channel across every
/// automation and campaign (`[frequency_caps]` in tarmo.toml): one
/// automation's own caps cannot stop three automations from each sending
/// their one a day. `0` lifts a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrequencyCaps {
    pub per_day: u32,
    pub per_week: u32,
}

impl Default for FrequencyCaps {
    /// A birthday greeting and a reminder may meet on one day; a third
    /// message that day, or an eighth that week, is more than a customer
    /// asked for when they agreed to offers.
    fn default() -> Self {
        Self {
            per_day: 2,
            per_week: 7,
        }
    }
}

/// `{"start": "21:00", "end": "08:00"}`.
pub fn quiet_from_json(v: Option<&Value>) -> Result<Option<clock::Quiet>, DefError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let o = v.as_object();
    let get = |k: &str| {
        o.and_then(|o| o.get(k))
            .and_then(Value::as_str)
            .and_then(clock::parse_hhmm)
    };
    let (Some(start), Some(end)) = (get("start"), get("end")) else {
        return Err(bad(
            Code::InvalidQuietHours,
            "`quiet_hours` is {\"start\": \"21:00\", \"end\": \"08:00\"}",
        ));
    };
    clock::Quiet::new(start, end).map(Some).ok_or_else(|| {
        bad(
            Code::QuietHoursWholeDay,
            "quiet hours from a time to the same time cover the whole day: nothing could be sent",
        )
    })
}

pub fn quiet_to_json(q: Option<clock::Quiet>) -> Value {
    match q {
        None => Value::Null,
        Some(q) => json!({
            "start": format!("{:02}:{:02}", q.start / 60, q.start % 60),
            "end": format!("{:02}:{:02}", q.end / 60, q.end % 60),
        }),
    }
}

/// An automation's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Automation {
    pub id: String,
    pub name: String,
    pub purpose: PurposeId,
    pub channel: SendChannel,
    /// With the webhook channel: the processor and the kind of list.
    pub webhook: Option<WebhookAction>,
    pub template: String,
    pub trigger: Trigger,
    pub caps: Caps,
    pub quiet: Option<clock::Quiet>,
    pub enabled: bool,
}

/// `purpose`: text as any field, then a purpose id; one that is not even
/// well formed is answered as the catalog answers a purpose it does not
/// hold (the store checks the catalog next).
fn purpose_field(o: &Map<String, Value>, code: Code) -> Result<PurposeId, DefError> {
    let s = text_field(o, "purpose", code)?;
    PurposeId::parse(&s).map_err(|_| {
        bad(
            Code::UnknownPurpose,
            format!(
                "unknown purpose `{}`; see GET /api/v1/purposes",
                s.chars().take(64).collect::<String>()
            ),
        )
    })
}

fn text_field(o: &Map<String, Value>, k: &str, code: Code) -> Result<String, DefError> {
    match o.get(k).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.to_owned()),
        _ => Err(bad(code, format!("`{k}` is needed (1-200 bytes)"))),
    }
}

impl Automation {
    /// Parse the API's JSON; `id` from the path when the body has none.
    pub fn from_json(v: &Value, path_id: Option<&str>) -> Result<Self, DefError> {
        let o = v
            .as_object()
            .ok_or_else(|| bad(Code::InvalidAutomation, "a JSON object is needed"))?;
        let known = [
            "id",
            "name",
            "purpose",
            "channel",
            "template",
            "trigger",
            "caps",
            "quiet_hours",
            "enabled",
            "webhook",
        ];
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(bad(Code::InvalidAutomation, format!("unknown field `{k}`")));
        }
        let id = match (o.get("id").and_then(Value::as_str), path_id) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(
                    Code::InvalidAutomation,
                    "the body's `id` differs from the path's",
                ));
            }
            (Some(a), _) => a.to_owned(),
            (None, Some(b)) => b.to_owned(),
            (None, None) => return Err(bad(Code::InvalidAutomation, "`id` is needed")),
        };
        if !valid_segment_id(&id) {
            return Err(bad(
                Code::InvalidAutomationId,
                "an automation id is 1-64 of a-z, 0-9 and _, starting with a letter",
            ));
        }
        let name = match o.get("name") {
            None => id.clone(),
            Some(_) => text_field(o, "name", Code::InvalidAutomation)?,
        };
        let channel = SendChannel::parse(
            o.get("channel")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(Code::InvalidChannel, "`channel` is email, sms or webhook"))?,
        )?;
        Ok(Self {
            id,
            name,
            purpose: purpose_field(o, Code::InvalidAutomation)?,
            channel,
            webhook: WebhookAction::from_json(o.get("webhook"), channel)?,
            template: text_field(o, "template", Code::InvalidAutomation)?,
            trigger: Trigger::from_json(o.get("trigger").unwrap_or(&Value::Null))?,
            caps: Caps::from_json(o.get("caps"))?,
            quiet: quiet_from_json(o.get("quiet_hours"))?,
            enabled: match o.get("enabled") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad(Code::InvalidAutomation, "`enabled` is true or false")),
            },
        })
    }

    pub fn to_json(&self) -> Value {
        with_webhook(
            json!({
                "id": self.id,
                "name": self.name,
                "purpose": self.purpose,
                "channel": self.channel.as_str(),
                "template": self.template,
                "trigger": self.trigger.to_json(),
                "caps": self.caps.to_json(),
                "quiet_hours": quiet_to_json(self.quiet),
                "enabled": self.enabled,
            }),
            self.webhook,
        )
    }
}

/// A one-off send to a segment, throttled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: String,
    pub segment: String,
    pub template: String,
    pub purpose: PurposeId,
    pub channel: SendChannel,
    pub webhook: Option<WebhookAction>,
    pub send_at_ms: i64,
    /// At most this many sends a minute (1-100,000).
    pub per_minute: u32,
    pub quiet: Option<clock::Quiet>,
}

impl Campaign {
    pub fn from_json(v: &Value, now_ms: i64) -> Result<Self, DefError> {
        let o = v
            .as_object()
            .ok_or_else(|| bad(Code::InvalidCampaign, "a JSON object is needed"))?;
        let known = [
            "id",
            "segment",
            "template",
            "purpose",
            "channel",
            "send_at",
            "per_minute",
            "quiet_hours",
            "webhook",
        ];
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(bad(Code::InvalidCampaign, format!("unknown field `{k}`")));
        }
        let id = text_field(o, "id", Code::InvalidCampaign)?;
        if !valid_segment_id(&id) {
            return Err(bad(
                Code::InvalidCampaignId,
                "a campaign id is 1-64 of a-z, 0-9 and _, starting with a letter",
            ));
        }
        let send_at_ms = match o.get("send_at") {
            None | Some(Value::Null) => now_ms,
            Some(Value::String(s)) => s
                .parse::<jiff::Timestamp>()
                .map_err(|_| bad(Code::InvalidSendAt, "`send_at` is an RFC 3339 time"))?
                .as_millisecond(),
            Some(_) => return Err(bad(Code::InvalidSendAt, "`send_at` is an RFC 3339 time")),
        };
        let per_minute = match o.get("per_minute") {
            None | Some(Value::Null) => 1000,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| bad(Code::InvalidPerMinute, "`per_minute` is 1-100000"))?
                as u32,
        };
        let channel = SendChannel::parse(
            o.get("channel")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(Code::InvalidChannel, "`channel` is email, sms or webhook"))?,
        )?;
        Ok(Self {
            id,
            segment: segment_id(o.get("segment"), "segment")
                .map_err(|(_, m)| bad(Code::InvalidCampaign, m))?,
            template: text_field(o, "template", Code::InvalidCampaign)?,
            purpose: purpose_field(o, Code::InvalidCampaign)?,
            channel,
            webhook: WebhookAction::from_json(o.get("webhook"), channel)?,
            send_at_ms,
            per_minute,
            quiet: quiet_from_json(o.get("quiet_hours"))?,
        })
    }

    pub fn to_json(&self) -> Value {
        with_webhook(
            json!({
                "id": self.id,
                "segment": self.segment,
                "template": self.template,
                "purpose": self.purpose,
                "channel": self.channel.as_str(),
                "send_at_ms": self.send_at_ms,
                "per_minute": self.per_minute,
                "quiet_hours": quiet_to_json(self.quiet),
            }),
            self.webhook,
        )
    }

    /// When the `i`-th send (from 0) is due: throttled evenly.
    pub fn due_of(&self, i: u64) -> i64 {
        self.send_at_ms + (i as i64 * 60_000) / self.per_minute as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_round_trip_and_refuse_nonsense() {
        for t in [
            json!({"segment_entered": "vip"}),
            json!({"segment_left": "vip"}),
            json!({"event": "Product Viewed", "delay": "2d", "unless": {"event": "Order Completed", "within": "2d"}}),
            json!({"birthday": {"local_time": "09:00"}}),
            json!({"absence": {"event": "Order Completed", "for": "180d"}}),
            json!({"schedule": {"cron": "0 9 * * MON", "segment": "vip"}}),
        ] {
            assert_eq!(Trigger::from_json(&t).unwrap().to_json(), t);
        }
        for (t, code) in [
            (
                json!({"schedule": {"cron": "nope", "segment": "vip"}}),
                "invalid_cron",
            ),
            (json!({"event": "X", "delay": "soon"}), "invalid_trigger"),
            (
                json!({"birthday": {"local_time": "25:00"}}),
                "invalid_trigger",
            ),
            (json!({"weather": "rain"}), "invalid_trigger"),
        ] {
            assert_eq!(Trigger::from_json(&t).unwrap_err().0.as_str(), code);
        }
    }

    #[test]
    fn whole_day_quiet_hours_are_refused() {
        let e = quiet_from_json(Some(&json!({"start": "08:00", "end": "08:00"}))).unwrap_err();
        assert_eq!(e.0, Code::QuietHoursWholeDay);
    }

    #[test]
    fn campaigns_are_throttled_evenly() {
        let c = Campaign::from_json(
            &json!({"id": "c", "segment": "s", "template": "t", "purpose": "p", "channel": "email", "per_minute": 120}),
            1000,
        )
        .unwrap();
        assert_eq!(c.due_of(0), 1000);
        assert_eq!(c.due_of(120), 61_000);
    }
}
