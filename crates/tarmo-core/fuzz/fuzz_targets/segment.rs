//! Any bytes as a request body to the tracking API: parsing a message or a
//! batch must not panic, and what parses keeps the parser's promises (an
//! event time never after its arrival, identifiers sorted and unique, the
//! body an object of the message's type).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tarmo_core::identity::IdentityConfig;
use tarmo_core::segment::{BatchDefaults, MessageKind, parse_message};

/// 2024-05-01T10:00:00Z: when every fuzzed message arrives.
const RECEIVED: i64 = 1_714_557_600_000;

fn check(v: Value, kind: Option<MessageKind>, defaults: BatchDefaults<'_>, cfg: &IdentityConfig) {
    if let Ok(m) = parse_message(v, 0, kind, defaults, RECEIVED, cfg) {
        assert!(
            m.timestamp_ms <= RECEIVED,
            "an event dated after its arrival"
        );
        assert!(m.body.is_object());
        assert_eq!(m.body["type"], m.kind.as_str());
        if let Some(k) = kind {
            assert_eq!(m.kind, k);
        }
        for pair in m.identifiers.windows(2) {
            assert_ne!(pair[0], pair[1], "a duplicate identifier");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let cfg = IdentityConfig::new(Some("FI"), &["loyalty_card".into()])
        .expect("a valid identity configuration");
    // As a batch: every message with the batch's context and sentAt.
    if let Some(Value::Array(items)) = v.get("batch") {
        let defaults = BatchDefaults {
            context: v.get("context"),
            integrations: v.get("integrations"),
            sent_at: v.get("sentAt"),
        };
        for item in items.iter().take(64) {
            check(item.clone(), None, defaults, &cfg);
        }
    }
    // As one message on its own route and on the batch route.
    check(
        v.clone(),
        Some(MessageKind::Track),
        BatchDefaults::default(),
        &cfg,
    );
    check(v, None, BatchDefaults::default(), &cfg);
});
