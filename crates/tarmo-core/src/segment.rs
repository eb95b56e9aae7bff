//! Messages of the Segment tracking spec (identify, track, page, screen, group,
//! alias), as the public Segment and RudderStack SDKs send them, parsed into
//! what identity resolution needs: the identifiers, the traits with their
//! timestamp, and the whole message to be sealed.

use crate::codes::Code;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::identity::{Identifier, IdentifierKind, IdentityConfig};

/// The spec's limit for one message, in bytes of JSON.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The spec's limit for one batch request, in bytes of JSON.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// The spec's limit for the number of messages in one batch.
pub const MAX_BATCH_MESSAGES: usize = 2500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl MessageKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "identify" => Self::Identify,
            "track" => Self::Track,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "group" => Self::Group,
            "alias" => Self::Alias,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }
}

/// One parsed message. Its identifiers and body are personal data.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: MessageKind,
    /// The SDK's messageId; `None` when the sender gave none (it is then not
    /// deduplicated, as there is nothing to recognise a retry by).
    pub message_id: Option<String>,
    /// When the event happened, in milliseconds since the epoch: the
    /// sender's time corrected for its clock's skew and never later than
    /// when it arrived (see [`event_time_ms`]).
    pub timestamp_ms: i64,
    pub identifiers: Vec<Identifier>,
    /// Traits to merge into the profile (identify, and `context.traits`).
    pub traits: Map<String, Value>,
    /// Values in traits that look like identifiers but do not parse (kept as
    /// traits, not used to recognise anyone), counted for metrics.
    pub rejected_identifiers: usize,
    /// The whole message, batch context merged in, as it is sealed and stored.
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message {index} is not a JSON object")]
    NotAnObject { index: usize },
    #[error(
        "message {index}: `type` is missing or not one of identify, track, page, screen, group, alias"
    )]
    BadType { index: usize },
    #[error("message {index}: a message needs a userId or an anonymousId")]
    NoIdentity { index: usize },
    #[error("message {index}: `{field}` must be {expected}")]
    WrongType {
        index: usize,
        field: &'static str,
        expected: &'static str,
    },
    #[error("message {index}: `{field}` is not an ISO 8601 date-time")]
    BadTimestamp { index: usize, field: &'static str },
    #[error("message {index}: track needs an `event` name")]
    NoEventName { index: usize },
    #[error("message {index}: alias needs `previousId` and `userId`")]
    BadAlias { index: usize },
    #[error("message {index}: `{field}`: {reason}")]
    BadIdentifier {
        index: usize,
        field: &'static str,
        reason: String,
    },
}

impl MessageError {
    pub fn code(&self) -> Code {
        match self {
            Self::NotAnObject { .. } | Self::WrongType { .. } => Code::InvalidFieldType,
            Self::BadType { .. } => Code::InvalidMessageType,
            Self::NoIdentity { .. } => Code::MissingIdentity,
            Self::BadTimestamp { .. } => Code::InvalidTimestamp,
            Self::NoEventName { .. } => Code::MissingEventName,
            Self::BadAlias { .. } => Code::InvalidAlias,
            Self::BadIdentifier { .. } => Code::InvalidIdentifier,
        }
    }

    pub fn index(&self) -> usize {
        match self {
            Self::NotAnObject { index }
            | Self::BadType { index }
            | Self::NoIdentity { index }
            | Self::WrongType { index, .. }
            | Self::BadTimestamp { index, .. }
            | Self::NoEventName { index }
            | Self::BadAlias { index }
            | Self::BadIdentifier { index, .. } => *index,
        }
    }
}

/// Parse an ISO 8601 / RFC 3339 date-time into milliseconds since the epoch.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Merge `defaults` (a batch's `context` or `integrations`) under `item`'s own
/// keys: what the message says wins.
fn merge_defaults(item: &mut Map<String, Value>, key: &str, defaults: Option<&Value>) {
    let Some(Value::Object(d)) = defaults else {
        return;
    };
    match item.get_mut(key) {
        Some(Value::Object(own)) => {
            for (k, v) in d {
                own.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        None | Some(Value::Null) => {
            item.insert(key.to_owned(), Value::Object(d.clone()));
        }
        Some(_) => {}
    }
}

/// A string id as the SDKs send it: analytics.js accepts numbers for userId.
fn id_field(
    obj: &Map<String, Value>,
    key: &'static str,
    index: usize,
) -> Result<Option<String>, MessageError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(MessageError::WrongType {
            index,
            field: key,
            expected: "a string",
        }),
    }
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    key: &'static str,
    index: usize,
) -> Result<Option<&'a Map<String, Value>>, MessageError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(MessageError::WrongType {
            index,
            field: key,
            expected: "an object",
        }),
    }
}

/// What the batch wrapper contributes to each message.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchDefaults<'a> {
    pub context: Option<&'a Value>,
    pub integrations: Option<&'a Value>,
    /// The batch's `sentAt` (the sender's clock when it sent the batch),
    /// used for messages that carry none of their own.
    pub sent_at: Option<&'a Value>,
}

/// When an event happened, on the server's clock. The sender's clock may be
/// wrong: as Segment does, the event's time is shifted by how far the
/// sender's clock was off when it sent the message (`received - sentAt`).
/// Whatever is still later than `received_ms` is taken as `received_ms`: a
/// time in the future is never true, and traits are last-write-wins by this
/// time, so a trait dated in the future could never be corrected.
pub fn event_time_ms(timestamp_ms: i64, sent_at_ms: Option<i64>, received_ms: i64) -> i64 {
    let corrected = match sent_at_ms {
        Some(sent) => timestamp_ms.saturating_add(received_ms.saturating_sub(sent)),
        None => timestamp_ms,
    };
    corrected.min(received_ms)
}

/// Parse one message. `kind_from_route` is set for `/v1/track` and friends,
/// where the route names the type and the body may omit it.
pub fn parse_message(
    mut value: Value,
    index: usize,
    kind_from_route: Option<MessageKind>,
    defaults: BatchDefaults<'_>,
    now_ms: i64,
    cfg: &IdentityConfig,
) -> Result<Message, MessageError> {
    let Value::Object(obj) = &mut value else {
        return Err(MessageError::NotAnObject { index });
    };
    let kind = match (obj.get("type"), kind_from_route) {
        (Some(Value::String(t)), _) => {
            MessageKind::parse(t).ok_or(MessageError::BadType { index })?
        }
        (None | Some(Value::Null), Some(k)) => k,
        _ => return Err(MessageError::BadType { index }),
    };
    if let Some(k) = kind_from_route
        && k != kind
    {
        return Err(MessageError::BadType { index });
    }
    obj.insert("type".into(), Value::String(kind.as_str().into()));
    obj.remove("writeKey");
    merge_defaults(obj, "context", defaults.context);
    merge_defaults(obj, "integrations", defaults.integrations);

    let user_id = id_field(obj, "userId", index)?;
    let anonymous_id = id_field(obj, "anonymousId", index)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(MessageError::NoIdentity { index });
    }
    let message_id = id_field(obj, "messageId", index)?;

    let sent_at_ms = match obj.get("sentAt").or(defaults.sent_at) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(parse_timestamp_ms(s).ok_or(MessageError::BadTimestamp {
                index,
                field: "sentAt",
            })?)
        }
        Some(_) => {
            return Err(MessageError::WrongType {
                index,
                field: "sentAt",
                expected: "an ISO 8601 string",
            });
        }
    };
    let timestamp_ms = match obj
        .get("timestamp")
        .or_else(|| obj.get("originalTimestamp"))
    {
        None | Some(Value::Null) => now_ms,
        Some(Value::String(s)) => event_time_ms(
            parse_timestamp_ms(s).ok_or(MessageError::BadTimestamp {
                index,
                field: "timestamp",
            })?,
            sent_at_ms,
            now_ms,
        ),
        Some(_) => {
            return Err(MessageError::WrongType {
                index,
                field: "timestamp",
                expected: "an ISO 8601 string",
            });
        }
    };

    match kind {
        MessageKind::Track => match obj.get("event") {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            _ => return Err(MessageError::NoEventName { index }),
        },
        MessageKind::Alias
            if user_id.is_none() || id_field(obj, "previousId", index)?.is_none() =>
        {
            return Err(MessageError::BadAlias { index });
        }
        _ => {}
    }
    for key in ["properties", "integrations"] {
        object_field(obj, key, index)?;
    }

    let mut identifiers = Vec::with_capacity(4);
    let strict = |kind: IdentifierKind, raw: &str, field: &'static str| {
        cfg.identifier(kind, raw)
            .map_err(|e| MessageError::BadIdentifier {
                index,
                field,
                reason: e.to_string(),
            })
    };
    if let Some(u) = &user_id {
        identifiers.push(strict(IdentifierKind::UserId, u, "userId")?);
    }
    if let Some(a) = &anonymous_id {
        identifiers.push(strict(IdentifierKind::AnonymousId, a, "anonymousId")?);
    }
    if kind == MessageKind::Alias
        && let Some(p) = id_field(obj, "previousId", index)?
    {
        // The old id of an alias is, in every SDK's use, the anonymous id the
        // person had before logging in; were it another user id, linking it
        // would give one profile two user ids, which resolution refuses.
        identifiers.push(strict(IdentifierKind::AnonymousId, &p, "previousId")?);
    }

    let context = object_field(obj, "context", index)?;
    if let Some(ctx) = context {
        if let Some(Value::Object(device)) = ctx.get("device")
            && let Some(Value::String(id)) = device.get("id")
            && let Ok(i) = cfg.identifier(IdentifierKind::DeviceId, id)
        {
            identifiers.push(i);
        }
        if let Some(Value::Array(ext)) = ctx.get("externalIds") {
            for e in ext {
                if let (Some(Value::String(t)), Some(id)) = (e.get("type"), e.get("id")) {
                    let raw = match id {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => continue,
                    };
                    let kind = cfg.kind(t).map_err(|e| MessageError::BadIdentifier {
                        index,
                        field: "context.externalIds",
                        reason: e.to_string(),
                    })?;
                    identifiers.push(strict(kind, &raw, "context.externalIds")?);
                }
            }
        }
    }

    let mut traits = Map::new();
    if let Some(Value::Object(t)) = context.and_then(|c| c.get("traits")) {
        traits.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if kind == MessageKind::Identify {
        if let Some(t) = object_field(obj, "traits", index)? {
            traits.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    } else {
        object_field(obj, "traits", index)?;
    }

    // Traits that name a person become identifiers when they parse; a bad one
    // stays a trait, so a typo in a form does not drop a whole batch.
    let mut rejected_identifiers = 0;
    let trait_kinds = [
        ("email", IdentifierKind::Email),
        ("phone", IdentifierKind::Phone),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(
        cfg.custom_kinds()
            .iter()
            .map(|c| (c.as_str().to_owned(), IdentifierKind::Custom(c.clone()))),
    );
    for (name, kind) in trait_kinds {
        let raw = match traits.get(&name) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => continue,
        };
        match cfg.identifier(kind, &raw) {
            Ok(i) => identifiers.push(i),
            Err(_) => rejected_identifiers += 1,
        }
    }
    identifiers.sort_by(|a, b| {
        (a.kind().precedence(), a.kind(), a.value()).cmp(&(
            b.kind().precedence(),
            b.kind(),
            b.value(),
        ))
    });
    identifiers.dedup();

    Ok(Message {
        kind,
        message_id,
        timestamp_ms,
        identifiers,
        traits,
        rejected_identifiers,
        body: value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> IdentityConfig {
        IdentityConfig::new(Some("FI"), &["loyalty_card".into()]).unwrap()
    }

    /// When the messages arrive: after every timestamp in them (a time
    /// later than arrival is taken as the arrival).
    const RECEIVED: i64 = 4_000_000_000_000;

    fn parse(v: Value) -> Result<Message, MessageError> {
        parse_message(v, 0, None, BatchDefaults::default(), RECEIVED, &cfg())
    }

    #[test]
    fn identify_yields_identifiers_and_traits() {
        let m = parse(json!({
            "type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m1",
            "timestamp": "2024-05-01T10:00:00.000Z",
            "traits": {"email": "Ann@Example.com", "phone": "040 1234567", "loyalty_card": "LC-1", "name": "Ann"},
            "context": {"device": {"id": "dev-9"}}
        }))
        .unwrap();
        let kinds: Vec<_> = m.identifiers.iter().map(|i| i.kind().as_str()).collect();
        assert_eq!(
            kinds,
            [
                "user_id",
                "email",
                "phone",
                "loyalty_card",
                "device_id",
                "anonymous_id"
            ]
        );
        assert_eq!(m.identifiers[1].value(), "Ann@example.com");
        assert_eq!(m.traits["name"], "Ann");
        assert_eq!(m.timestamp_ms, 1_714_557_600_000);
        assert_eq!(m.message_id.as_deref(), Some("m1"));
    }

    #[test]
    fn batch_context_is_merged_under_the_message() {
        let ctx = json!({"library": {"name": "analytics-python"}, "ip": "1.2.3.4"});
        let m = parse_message(
            json!({"type": "track", "event": "Bought", "userId": 7, "context": {"ip": "5.6.7.8"}}),
            3,
            None,
            BatchDefaults {
                context: Some(&ctx),
                integrations: None,
                sent_at: None,
            },
            1,
            &cfg(),
        )
        .unwrap();
        assert_eq!(m.body["context"]["ip"], "5.6.7.8");
        assert_eq!(m.body["context"]["library"]["name"], "analytics-python");
        assert_eq!(m.identifiers[0].value(), "7");
    }

    #[test]
    fn errors_name_the_message_and_have_codes() {
        let e = parse(json!({"type": "track", "userId": "u"})).unwrap_err();
        assert_eq!(e.code(), Code::MissingEventName);
        let e = parse(json!({"type": "nope", "userId": "u"})).unwrap_err();
        assert_eq!(e.code(), Code::InvalidMessageType);
        let e = parse(json!({"type": "page"})).unwrap_err();
        assert_eq!(e.code(), Code::MissingIdentity);
        let e =
            parse(json!({"type": "page", "userId": "u", "timestamp": "yesterday"})).unwrap_err();
        assert_eq!(e.code(), Code::InvalidTimestamp);
        let e = parse(json!({"type": "page", "userId": "u", "properties": [1]})).unwrap_err();
        assert_eq!(e.code(), Code::InvalidFieldType);
        let e = parse(json!({"type": "alias", "userId": "u"})).unwrap_err();
        assert_eq!(e.code(), Code::InvalidAlias);
        let e = parse(json!({"type": "page", "userId": "u",
            "context": {"externalIds": [{"id": "x", "type": "shoe_size"}]}}))
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidIdentifier);
        assert_eq!(e.index(), 0);
    }

    #[test]
    fn a_bad_email_trait_stays_a_trait() {
        let m =
            parse(json!({"type": "identify", "userId": "u", "traits": {"email": "not-an-email"}}))
                .unwrap();
        assert_eq!(m.identifiers.len(), 1);
        assert_eq!(m.rejected_identifiers, 1);
        assert_eq!(m.traits["email"], "not-an-email");
    }

    #[test]
    fn route_kind_must_agree_with_body() {
        let ok = parse_message(
            json!({"userId": "u", "event": "E"}),
            0,
            Some(MessageKind::Track),
            BatchDefaults::default(),
            1,
            &cfg(),
        );
        assert_eq!(ok.unwrap().kind, MessageKind::Track);
        let bad = parse_message(
            json!({"type": "page", "userId": "u"}),
            0,
            Some(MessageKind::Track),
            BatchDefaults::default(),
            1,
            &cfg(),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn a_skewed_clock_is_corrected_and_the_future_is_clamped() {
        // The sender's clock is an hour fast: the event happened a minute
        // before it sent the message, which arrived at 10:00.
        let received = parse_timestamp_ms("2024-05-01T10:00:00Z").unwrap();
        let m = parse_message(
            json!({"type": "identify", "userId": "u", "timestamp": "2024-05-01T10:59:00Z",
                "sentAt": "2024-05-01T11:00:00Z"}),
            0,
            None,
            BatchDefaults::default(),
            received,
            &cfg(),
        )
        .unwrap();
        assert_eq!(m.timestamp_ms, received - 60_000);
        // The batch's sentAt serves messages without their own.
        let sent = json!("2024-05-01T11:00:00Z");
        let m = parse_message(
            json!({"type": "identify", "userId": "u", "timestamp": "2024-05-01T10:59:00Z"}),
            0,
            None,
            BatchDefaults {
                sent_at: Some(&sent),
                ..BatchDefaults::default()
            },
            received,
            &cfg(),
        )
        .unwrap();
        assert_eq!(m.timestamp_ms, received - 60_000);
        // Without sentAt, a date in the future becomes the time of arrival.
        let m = parse_message(
            json!({"type": "identify", "userId": "u", "timestamp": "9999-12-31T23:59:59Z"}),
            0,
            None,
            BatchDefaults::default(),
            received,
            &cfg(),
        )
        .unwrap();
        assert_eq!(m.timestamp_ms, received);
        let e = parse(json!({"type": "page", "userId": "u", "sentAt": "soon"})).unwrap_err();
        assert_eq!(e.code(), Code::InvalidTimestamp);
    }

    mod props {
        use super::super::event_time_ms;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_in_the_future(ts in any::<i64>(), sent in proptest::option::of(any::<i64>()),
                received in any::<i64>()) {
                prop_assert!(event_time_ms(ts, sent, received) <= received);
            }

            #[test]
            fn a_true_clock_changes_nothing_in_the_past(ts in -1i64 << 50..1i64 << 50,
                received in -1i64 << 50..1i64 << 50) {
                let t = event_time_ms(ts, Some(received), received);
                prop_assert_eq!(t, ts.min(received));
            }

            #[test]
            fn the_skew_is_removed(ts in -1i64 << 50..1i64 << 50, lag in 0i64..1 << 40,
                skew in -1i64 << 40..1i64 << 40, received in -1i64 << 50..1i64 << 50) {
                // Sent `lag` after the event, by a clock `skew` off.
                let sender_ts = ts + skew;
                let sent = ts + lag + skew;
                let t = event_time_ms(sender_ts, Some(sent), received);
                prop_assert_eq!(t, (received - lag).min(received));
            }
        }
    }
}
