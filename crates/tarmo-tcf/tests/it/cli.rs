//! The `tarmo tcf` / `tarmo gpp` logic as the binary drives it.

use tarmo_tcf::cli::{TC_JSON_KEYS, gpp_main, tcf_main};

use crate::generate::{Rng, gpp_string, tc_string};

type Main = fn(
    &[String],
    &mut dyn std::io::BufRead,
    &mut dyn std::io::Write,
    &mut dyn std::io::Write,
) -> i32;

fn run(main: Main, args: &[&str], input: &str) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = main(&args, &mut input.as_bytes(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

/// The keys of the outermost JSON object, in order.
fn top_level_keys(json: &str) -> Vec<String> {
    let (mut keys, mut depth, mut in_string, mut escaped) = (Vec::new(), 0, false, false);
    let mut current = String::new();
    let bytes: Vec<char> = json.chars().collect();
    for (i, &c) in bytes.iter().enumerate() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    in_string = false;
                    if depth == 1 && bytes.get(i + 1) == Some(&':') {
                        keys.push(std::mem::take(&mut current));
                    }
                    current.clear();
                }
                c => current.push(c),
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    keys
}

#[test]
fn tc_json_has_exactly_the_documented_keys_in_order() {
    let mut rng = Rng::new(3);
    for _ in 0..20 {
        let text = tarmo_tcf::encode(&tc_string(&mut rng, false));
        let (code, out, err) = run(tcf_main, &["decode", &text], "");
        assert_eq!(code, 0, "{err}");
        assert_eq!(top_level_keys(out.trim()), TC_JSON_KEYS);
    }
}

#[test]
fn batch_decoding_reports_bad_lines_in_place_and_fails_at_the_end() {
    let mut rng = Rng::new(4);
    let good = tarmo_tcf::encode(&tc_string(&mut rng, false));
    let input = format!("{good}\nnot a tc string!\n{good}\n");
    let (code, out, err) = run(tcf_main, &["decode", "--batch"], &input);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("{\"version\":2,"));
    assert!(
        lines[1].starts_with("{\"error\":\"invalid "),
        "{}",
        lines[1]
    );
    assert_eq!(lines[0], lines[2]);
    assert!(err.contains("1 of 3 lines"), "{err}");
}

#[test]
fn encode_turns_decoded_json_back_into_the_same_string() {
    let mut rng = Rng::new(5);
    for _ in 0..30 {
        let text = tarmo_tcf::encode(&tc_string(&mut rng, false));
        let (_, json, _) = run(tcf_main, &["decode", &text], "");
        let (code, again, err) = run(tcf_main, &["encode"], &json);
        assert_eq!(code, 0, "{err}");
        assert_eq!(again.trim(), text);

        let gpp_text = tarmo_tcf::gpp::encode(&gpp_string(&mut rng));
        let (_, json, _) = run(gpp_main, &["decode", &gpp_text], "");
        let (code, again, err) = run(gpp_main, &["encode"], &json);
        assert_eq!(code, 0, "{err}\n{json}");
        assert_eq!(again.trim(), gpp_text);
    }
}

#[test]
fn invalid_input_is_a_message_on_stderr_and_a_failing_exit() {
    let (code, out, err) = run(
        tcf_main,
        &["decode", "CPzHq4APzHq4AAHABBENAUEAAAAAAAAAAAAAA"],
        "",
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.starts_with("error: truncated input"), "{err}");

    let (code, _, err) = run(tcf_main, &["encode"], r#"{"version": 2}"#);
    assert_eq!(code, 1);
    assert!(err.contains("missing key"), "{err}");

    let (code, _, err) = run(gpp_main, &["decode", "DBABMA~"], "");
    assert_eq!(code, 1);
    assert!(err.starts_with("error: in GPP section"), "{err}");

    let (code, out, _) = run(gpp_main, &["--help"], "");
    assert_eq!(code, 0);
    assert!(out.contains("tarmo gpp decode"));
}
