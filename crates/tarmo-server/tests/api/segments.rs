//! Segments over HTTP, in process.

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_segments_are_refused_with_their_codes_and_nothing_is_saved() {
    let s = spawn_app().await;
    let cases = [
        (
            json!({"id": "a", "name": "A", "purpose": "email_marketing", "rule": {"all": [{"identifier": "email"}, {"event": "x"}]}}),
            400,
            "invalid_rule",
            "$.all[1].within",
        ),
        (
            json!({"id": "a", "name": "A", "purpose": "email_marketing", "rule_text": "has email and\n  event \"x\" in 5y"}),
            400,
            "invalid_rule",
            "line 2, column 16",
        ),
        (
            json!({"id": "a", "name": "A", "purpose": "no_such", "rule": {"identifier": "email"}}),
            400,
            "unknown_purpose",
            "",
        ),
        (
            json!({"id": "a", "name": "A", "purpose": "email_marketing", "rule": {"trait": "city", "value": "Tampere"}}),
            400,
            "rule_data_not_permitted",
            "traits",
        ),
        (
            json!({"id": "a", "name": "A", "purpose": "email_marketing", "rule": {"segment": "nope"}}),
            400,
            "unknown_segment",
            "",
        ),
        (
            json!({"id": "a", "name": "A", "purpose": "email_marketing", "rule": {"segment": "a"}}),
            400,
            "segment_cycle",
            "",
        ),
        (
            json!({"id": "Not An Id", "name": "A", "purpose": "email_marketing", "rule": {"identifier": "email"}}),
            400,
            "invalid_segment_id",
            "",
        ),
        (
            json!({"id": "a", "name": "A", "purpose": "email_marketing"}),
            400,
            "invalid_rule",
            "one of the two",
        ),
        (
            json!({"id": "a", "name": "A", "purpose": "email_marketing", "rule": {"identifier": "email"}, "colour": 1}),
            400,
            "invalid_segment",
            "colour",
        ),
    ];
    for (body, status, code, needle) in cases {
        let (st, v) = admin(&s, "POST", "/api/v1/segments", Some(&body));
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    let (st, v) = admin(&s, "POST", "/api/v1/segments", None);
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("invalid_segment")),
        "{v}"
    );
    assert_eq!(
        admin(&s, "GET", "/api/v1/segments", None).1["segments"],
        json!([])
    );
    let ok = json!({"id": "a", "name": "A", "purpose": "email_marketing", "rule": {"identifier": "email"}});
    assert_eq!(admin(&s, "POST", "/api/v1/segments", Some(&ok)).0, 201);
    let (st, v) = admin(&s, "POST", "/api/v1/segments", Some(&ok));
    assert_eq!((st, v["code"].as_str()), (409, Some("segment_exists")));
    let (st, v) = admin(&s, "GET", "/api/v1/segments/a/members?limit=0", None);
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_query")));
    assert_eq!(
        admin(&s, "GET", "/api/v1/segments/zzz/members", None).0,
        404
    );
}
