//! Agreement with the official IAB JavaScript libraries, run through node:
//! strings they encode decode to the same fields here and re-encode to the
//! same bytes; strings encoded here decode to the same fields there and
//! re-encode to the same bytes there.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tarmo_tcf::cli::{gpp_main, tcf_main};
use tarmo_tcf::gpp;

use crate::generate::{Rng, gpp_string, tc_string};

const CASES: usize = 300;

fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        dir.join("node_modules/@iabtechlabtcf/core").is_dir()
            && dir.join("node_modules/@iabgpp/cmpapi").is_dir(),
        "the official IAB libraries are not installed: run `npm ci --prefix crates/tarmo-tcf/js` \
         from the repository root first"
    );
    dir
}

fn node(args: &[&str], input: &str) -> String {
    let mut child = Command::new("node")
        .arg("crosscheck.cjs")
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed to cross-check against the official libraries");
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("node runs");
    writer
        .join()
        .expect("writer thread")
        .expect("stdin written");
    assert!(
        out.status.success(),
        "node crosscheck.cjs {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

type Main = fn(
    &[String],
    &mut dyn std::io::BufRead,
    &mut dyn std::io::Write,
    &mut dyn std::io::Write,
) -> i32;

/// JSON lines for `texts` through the CLI's batch decoder.
fn batch_json(main: Main, texts: &[&str]) -> Vec<String> {
    let input = texts.join("\n") + "\n";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = main(
        &["decode".into(), "--batch".into()],
        &mut input.as_bytes(),
        &mut out,
        &mut err,
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn first_difference(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

fn check_official_strings(main: Main, generator: &str, reencode: fn(&str) -> String) {
    let lines = node(&[generator, &CASES.to_string(), "20240611"], "");
    let cases: Vec<(&str, &str)> = lines
        .lines()
        .map(|l| l.split_once('\t').expect("STRING<TAB>JSON"))
        .collect();
    assert_eq!(cases.len(), CASES);
    let texts: Vec<&str> = cases.iter().map(|(t, _)| *t).collect();
    let ours = batch_json(main, &texts);
    for (i, ((text, expected), actual)) in cases.iter().zip(&ours).enumerate() {
        let at = first_difference(expected, actual);
        assert_eq!(
            actual,
            expected,
            "case {i}: {text}\nfields differ from byte {at}: ...{}",
            &actual[at.saturating_sub(60).min(actual.len())..]
        );
        assert_eq!(reencode(text), *text, "case {i}: re-encoding differs");
    }
}

#[test]
fn tc_strings_from_the_official_encoder_decode_and_reencode_identically() {
    check_official_strings(tcf_main, "gen-tcf", |text| {
        tarmo_tcf::encode(&tarmo_tcf::decode(text).expect("decodes"))
    });
}

#[test]
fn gpp_strings_from_the_official_encoder_decode_and_reencode_identically() {
    check_official_strings(gpp_main, "gen-gpp", |text| {
        gpp::encode(&gpp::decode(text).expect("decodes"))
    });
}

#[test]
fn tc_strings_encoded_here_satisfy_the_official_library() {
    let mut rng = Rng::new(7);
    let texts: Vec<String> = (0..CASES)
        .map(|_| {
            let tc = tc_string(&mut rng, false);
            let text = tarmo_tcf::encode(&tc);
            assert_eq!(tarmo_tcf::decode(&text).as_ref(), Ok(&tc));
            text
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let json = batch_json(tcf_main, &refs);
    let input: String = refs
        .iter()
        .zip(&json)
        .map(|(t, j)| format!("{t}\t{j}\n"))
        .collect();
    let report = node(&["check-tcf"], &input);
    assert!(
        report.contains(&format!("{CASES} passed, 0 failed")),
        "{report}"
    );
}

#[test]
fn gpp_strings_encoded_here_satisfy_the_official_library() {
    let mut rng = Rng::new(11);
    let texts: Vec<String> = (0..CASES)
        .map(|_| {
            let value = gpp_string(&mut rng);
            let text = gpp::encode(&value);
            assert_eq!(gpp::decode(&text).as_ref(), Ok(&value));
            text
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let json = batch_json(gpp_main, &refs);
    let input: String = refs
        .iter()
        .zip(&json)
        .map(|(t, j)| format!("{t}\t{j}\n"))
        .collect();
    let report = node(&["check-gpp"], &input);
    assert!(
        report.contains(&format!("{CASES} passed, 0 failed")),
        "{report}"
    );
}
