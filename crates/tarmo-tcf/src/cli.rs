//! The logic behind `tarmo tcf` and `tarmo gpp`: decode strings to JSON and
//! encode JSON back to strings. The binary only forwards its arguments and
//! standard streams here.
//!
//! # TC string JSON
//!
//! One object with exactly these keys, in this order: `version` (always 2),
//! `created_ds`, `last_updated_ds` (deciseconds since the Unix epoch, as the
//! string stores them), `cmp_id`, `cmp_version`, `consent_screen`,
//! `consent_language` (two upper-case letters), `vendor_list_version`,
//! `policy_version`, `is_service_specific`, `use_non_standard_texts`,
//! `special_feature_optins`, `purpose_consents`,
//! `purpose_legitimate_interests` (ascending id arrays),
//! `purpose_one_treatment`, `publisher_country_code`, `vendor_consents`,
//! `vendor_legitimate_interests` (ascending id arrays),
//! `publisher_restrictions` (array of `{"purpose_id", "restriction_type",
//! "vendor_ids"}` sorted by purpose then type; type 0 not allowed, 1 require
//! consent, 2 require legitimate interest), `vendors_disclosed` (ascending
//! ids, `null` when the segment is absent), `publisher_consents`,
//! `publisher_legitimate_interests`, `num_custom_purposes`,
//! `publisher_custom_consents`, `publisher_custom_legitimate_interests` (all
//! five `null` when the publisher TC segment is absent).
//!
//! # GPP string JSON
//!
//! ```json
//! {"version": 1, "section_ids": [2, 7, 6],
//!  "sections": {"tcfeuv2": {...}, "uspv1": "1YNN", "usnat": {...}}}
//! ```
//!
//! `version` is the header version (1). `section_ids` lists the ids in the
//! header's (ascending) order. `sections` is keyed by each section's API
//! prefix (`tcfeuv2`, `usnat`, `usca`, `usva`, `usco`, `usut`, `usct`, ...;
//! an unregistered id is keyed by its decimal number), in id order:
//!
//! - `tcfeuv2`: the TC string object above;
//! - the US sections: `version` then the fields of the specification in its
//!   order, snake_case (`sharing_notice`, `sale_opt_out`, ...), each holding
//!   the specification's numeric code (0 not applicable, 1, 2; lists as arrays
//!   of codes; `mspa_covered_transaction` 1 yes or 2 no), then `gpc`: `true`,
//!   `false`, or `null` when the GPC subsection is absent (`usva` and `usut`
//!   have none and so no `gpc` key);
//! - any other section: its text, unchanged.
//!
//! For `encode`, `section_ids` must agree with the keys of `sections`.
//!
//! # Exit codes
//!
//! 0 success, 1 invalid input (message on stderr; in batch mode after all
//! lines are processed), 2 usage error.

use std::io::{BufRead, Write};

use crate::gpp::{self, GppString, OpaqueSection, Section, UsCa, UsCo, UsCt, UsNat, UsUt, UsVa};
use crate::json::{self, Fields, ObjectWriter, Value};
use crate::tcf::{
    self, CustomPurposes, PublisherRestrictions, PublisherTc, PurposeId, RestrictionType, TcString,
};
use crate::types::{
    CmpId, CmpVersion, ConsentScreen, CountryCode, Deciseconds, IdSet, LanguageCode, PolicyVersion,
    VendorId, VendorListVersion, VendorSet,
};

const TCF_USAGE: &str = "\
usage: tarmo tcf decode STRING     print the TC string as one JSON object
       tarmo tcf decode --batch    read one TC string a line on stdin, write one JSON object a line
       tarmo tcf encode            read the JSON object on stdin, print the TC string
";

const GPP_USAGE: &str = "\
usage: tarmo gpp decode STRING     print the GPP string as one JSON object
       tarmo gpp decode --batch    read one GPP string a line on stdin, write one JSON object a line
       tarmo gpp encode            read the JSON object on stdin, print the GPP string
";

/// `tarmo tcf ...`; returns the process exit code.
pub fn tcf_main(
    args: &[String],
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let codec = Codec {
        usage: TCF_USAGE,
        decode: |text| {
            let tc = tcf::decode(text).map_err(|e| e.to_string())?;
            let mut out = String::new();
            tc_to_json(&tc, &mut out);
            Ok(out)
        },
        encode: |value| Ok(tcf::encode(&tc_from_json(value)?)),
    };
    run(&codec, args, stdin, stdout, stderr)
}

/// `tarmo gpp ...`; returns the process exit code.
pub fn gpp_main(
    args: &[String],
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let codec = Codec {
        usage: GPP_USAGE,
        decode: |text| {
            let gpp = gpp::decode(text).map_err(|e| e.to_string())?;
            let mut out = String::new();
            gpp_to_json(&gpp, &mut out);
            Ok(out)
        },
        encode: |value| Ok(gpp::encode(&gpp_from_json(value)?)),
    };
    run(&codec, args, stdin, stdout, stderr)
}

struct Codec {
    usage: &'static str,
    decode: fn(&str) -> Result<String, String>,
    encode: fn(Value) -> Result<String, String>,
}

fn run(
    codec: &Codec,
    args: &[String],
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--help" | "-h" | "help"] => {
            return report(stdout.write_all(codec.usage.as_bytes()), 0, stderr);
        }
        ["decode", "--batch"] => return decode_batch(codec, stdin, stdout, stderr),
        ["decode", text] if !text.starts_with("--") => (codec.decode)(text.trim()),
        ["encode"] => read_all(stdin).and_then(|text| {
            let value = json::parse(&text)?;
            (codec.encode)(value)
        }),
        _ => {
            let _ = stderr.write_all(codec.usage.as_bytes());
            return 2;
        }
    };
    match result {
        Ok(out) => report(writeln!(stdout, "{out}"), 0, stderr),
        Err(message) => {
            let _ = writeln!(stderr, "error: {message}");
            1
        }
    }
}

fn report(written: std::io::Result<()>, code: i32, stderr: &mut dyn Write) -> i32 {
    match written {
        Ok(()) => code,
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot write output: {e}");
            1
        }
    }
}

fn read_all(stdin: &mut dyn BufRead) -> Result<String, String> {
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    Ok(text)
}

fn decode_batch(
    codec: &Codec,
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let mut failures = 0usize;
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        line.clear();
        match stdin.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = writeln!(stderr, "error: cannot read standard input: {e}");
                return 1;
            }
        }
        number += 1;
        let out = match (codec.decode)(line.trim()) {
            Ok(json) => json,
            Err(message) => {
                failures += 1;
                let mut out = String::new();
                let mut o = ObjectWriter::new(&mut out);
                o.str("error", &message);
                o.finish();
                out
            }
        };
        if let Err(e) = writeln!(stdout, "{out}") {
            let _ = writeln!(stderr, "error: cannot write output: {e}");
            return 1;
        }
    }
    if failures > 0 {
        let _ = writeln!(
            stderr,
            "error: {failures} of {number} lines could not be decoded"
        );
        return 1;
    }
    0
}

fn ids(set: &VendorSet) -> impl Iterator<Item = i64> + '_ {
    set.iter().map(|id| i64::from(id.get()))
}

fn small_ids<const N: u8>(set: IdSet<N>) -> impl Iterator<Item = i64> {
    set.iter().map(i64::from)
}

pub(crate) fn tc_to_json(tc: &TcString, out: &mut String) {
    let mut o = ObjectWriter::new(out);
    o.int("version", tcf::TC_STRING_VERSION);
    o.int("created_ds", tc.created.get() as i64);
    o.int("last_updated_ds", tc.last_updated.get() as i64);
    o.int("cmp_id", tc.cmp_id.get());
    o.int("cmp_version", tc.cmp_version.get());
    o.int("consent_screen", tc.consent_screen.get());
    o.str("consent_language", tc.consent_language.as_str());
    o.int("vendor_list_version", tc.vendor_list_version.get());
    o.int("policy_version", tc.policy_version.get());
    o.bool("is_service_specific", tc.is_service_specific);
    o.bool("use_non_standard_texts", tc.use_non_standard_texts);
    o.ints(
        "special_feature_optins",
        small_ids(tc.special_feature_optins),
    );
    o.ints("purpose_consents", small_ids(tc.purpose_consents));
    o.ints(
        "purpose_legitimate_interests",
        small_ids(tc.purpose_legitimate_interests),
    );
    o.bool("purpose_one_treatment", tc.purpose_one_treatment);
    o.str("publisher_country_code", tc.publisher_country_code.as_str());
    o.ints("vendor_consents", ids(&tc.vendor_consents));
    o.ints(
        "vendor_legitimate_interests",
        ids(&tc.vendor_legitimate_interests),
    );
    let restrictions = o.key("publisher_restrictions");
    restrictions.push('[');
    for (i, (purpose, restriction, vendors)) in tc.publisher_restrictions.iter().enumerate() {
        if i > 0 {
            restrictions.push(',');
        }
        let mut r = ObjectWriter::new(restrictions);
        r.int("purpose_id", purpose.get());
        r.int("restriction_type", restriction.code());
        r.ints("vendor_ids", ids(vendors));
        r.finish();
    }
    restrictions.push(']');
    match &tc.vendors_disclosed {
        Some(disclosed) => o.ints("vendors_disclosed", ids(disclosed)),
        None => o.null("vendors_disclosed"),
    }
    match &tc.publisher_tc {
        Some(p) => {
            o.ints("publisher_consents", small_ids(p.consents));
            o.ints(
                "publisher_legitimate_interests",
                small_ids(p.legitimate_interests),
            );
            o.int("num_custom_purposes", p.custom_purposes.count());
            o.ints(
                "publisher_custom_consents",
                small_ids(p.custom_purposes.consents()),
            );
            o.ints(
                "publisher_custom_legitimate_interests",
                small_ids(p.custom_purposes.legitimate_interests()),
            );
        }
        None => {
            for key in PUBLISHER_KEYS {
                o.null(key);
            }
        }
    }
    o.finish();
}

const PUBLISHER_KEYS: [&str; 5] = [
    "publisher_consents",
    "publisher_legitimate_interests",
    "num_custom_purposes",
    "publisher_custom_consents",
    "publisher_custom_legitimate_interests",
];

/// The keys of the TC string JSON, in output order.
pub const TC_JSON_KEYS: [&str; 25] = [
    "version",
    "created_ds",
    "last_updated_ds",
    "cmp_id",
    "cmp_version",
    "consent_screen",
    "consent_language",
    "vendor_list_version",
    "policy_version",
    "is_service_specific",
    "use_non_standard_texts",
    "special_feature_optins",
    "purpose_consents",
    "purpose_legitimate_interests",
    "purpose_one_treatment",
    "publisher_country_code",
    "vendor_consents",
    "vendor_legitimate_interests",
    "publisher_restrictions",
    "vendors_disclosed",
    "publisher_consents",
    "publisher_legitimate_interests",
    "num_custom_purposes",
    "publisher_custom_consents",
    "publisher_custom_legitimate_interests",
];

fn vendor_set(ids: Vec<i64>) -> VendorSet {
    // Callers have range-checked ids to 1..=65535.
    ids.into_iter()
        .filter_map(|id| u16::try_from(id).ok().and_then(VendorId::new))
        .collect()
}

fn id_set<const N: u8>(key: &str, ids: Vec<i64>) -> Result<IdSet<N>, String> {
    IdSet::from_ids(ids.into_iter().map(|id| id as u8)).map_err(|e| format!("\"{key}\": {e}"))
}

const VENDOR_MAX: i64 = u16::MAX as i64;

pub(crate) fn tc_from_json(value: Value) -> Result<TcString, String> {
    let mut f = Fields::new(value, "TC string", &TC_JSON_KEYS)?;
    f.int("version", 2, 2)?;
    let created = Deciseconds::new(f.int("created_ds", 0, Deciseconds::MAX as i64)? as u64)
        .unwrap_or_default();
    let last_updated =
        Deciseconds::new(f.int("last_updated_ds", 0, Deciseconds::MAX as i64)? as u64)
            .unwrap_or_default();
    let cmp_id = CmpId::new(f.int("cmp_id", 0, i64::from(CmpId::MAX))? as u16).unwrap_or_default();
    let cmp_version = CmpVersion::new(f.int("cmp_version", 0, i64::from(CmpVersion::MAX))? as u16)
        .unwrap_or_default();
    let consent_screen =
        ConsentScreen::new(f.int("consent_screen", 0, i64::from(ConsentScreen::MAX))? as u8)
            .unwrap_or_default();
    let consent_language = LanguageCode::parse(&f.str("consent_language")?)
        .map_err(|_| "\"consent_language\" must be two letters".to_string())?;
    let vendor_list_version =
        VendorListVersion::new(
            f.int("vendor_list_version", 0, i64::from(VendorListVersion::MAX))? as u16,
        )
        .unwrap_or_default();
    let policy_version = PolicyVersion::new(f.int("policy_version", 2, 5)? as u8)
        .ok_or("\"policy_version\" must be 2 to 5")?;
    let is_service_specific = f.bool("is_service_specific")?;
    let use_non_standard_texts = f.bool("use_non_standard_texts")?;
    let list = |f: &mut Fields, key: &str, max: i64| -> Result<Vec<i64>, String> {
        Ok(f.ints(key, 1, max, false)?.unwrap_or_default())
    };
    let special_feature_optins = id_set(
        "special_feature_optins",
        list(&mut f, "special_feature_optins", 12)?,
    )?;
    let purpose_consents = id_set("purpose_consents", list(&mut f, "purpose_consents", 24)?)?;
    let purpose_legitimate_interests = id_set(
        "purpose_legitimate_interests",
        list(&mut f, "purpose_legitimate_interests", 24)?,
    )?;
    let purpose_one_treatment = f.bool("purpose_one_treatment")?;
    let publisher_country_code = CountryCode::parse(&f.str("publisher_country_code")?)
        .map_err(|_| "\"publisher_country_code\" must be two letters".to_string())?;
    let vendor_consents = vendor_set(list(&mut f, "vendor_consents", VENDOR_MAX)?);
    let vendor_legitimate_interests =
        vendor_set(list(&mut f, "vendor_legitimate_interests", VENDOR_MAX)?);
    let publisher_restrictions = restrictions_from_json(f.take("publisher_restrictions"))?;
    let vendors_disclosed = f
        .ints("vendors_disclosed", 1, VENDOR_MAX, true)?
        .map(vendor_set);
    let publisher_tc = publisher_from_json(&mut f)?;
    Ok(TcString {
        created,
        last_updated,
        cmp_id,
        cmp_version,
        consent_screen,
        consent_language,
        vendor_list_version,
        policy_version,
        is_service_specific,
        use_non_standard_texts,
        special_feature_optins,
        purpose_consents,
        purpose_legitimate_interests,
        purpose_one_treatment,
        publisher_country_code,
        vendor_consents,
        vendor_legitimate_interests,
        publisher_restrictions,
        vendors_disclosed,
        publisher_tc,
    })
}

fn restrictions_from_json(value: Value) -> Result<PublisherRestrictions, String> {
    let Value::Array(items) = value else {
        return Err("\"publisher_restrictions\" must be an array".into());
    };
    let mut restrictions = PublisherRestrictions::new();
    for item in items {
        let mut r = Fields::new(
            item,
            "publisher restriction",
            &["purpose_id", "restriction_type", "vendor_ids"],
        )?;
        let purpose = PurposeId::new(r.int("purpose_id", 1, 63)? as u8).ok_or("bad purpose_id")?;
        let restriction = RestrictionType::from_code(r.int("restriction_type", 0, 2)? as u8)
            .ok_or("bad restriction_type")?;
        let vendors = vendor_set(
            r.ints("vendor_ids", 1, VENDOR_MAX, false)?
                .unwrap_or_default(),
        );
        restrictions
            .insert(purpose, restriction, &vendors)
            .map_err(|e| e.to_string())?;
    }
    Ok(restrictions)
}

fn publisher_from_json(f: &mut Fields) -> Result<Option<PublisherTc>, String> {
    let values: Vec<Value> = PUBLISHER_KEYS.iter().map(|key| f.take(key)).collect();
    if values.iter().all(|v| *v == Value::Null) {
        return Ok(None);
    }
    let mut p = Fields::new(
        Value::Object(
            PUBLISHER_KEYS
                .iter()
                .map(|k| k.to_string())
                .zip(values)
                .collect(),
        ),
        "publisher TC segment (all five keys null, or none)",
        &PUBLISHER_KEYS,
    )?;
    let consents = id_set(
        "publisher_consents",
        p.ints("publisher_consents", 1, 24, false)?
            .unwrap_or_default(),
    )?;
    let legitimate_interests = id_set(
        "publisher_legitimate_interests",
        p.ints("publisher_legitimate_interests", 1, 24, false)?
            .unwrap_or_default(),
    )?;
    let count = p.int("num_custom_purposes", 0, 63)?;
    let custom_consents = id_set(
        "publisher_custom_consents",
        p.ints("publisher_custom_consents", 1, count, false)?
            .unwrap_or_default(),
    )?;
    let custom_li = id_set(
        "publisher_custom_legitimate_interests",
        p.ints("publisher_custom_legitimate_interests", 1, count, false)?
            .unwrap_or_default(),
    )?;
    let custom_purposes =
        CustomPurposes::new(count as u8, custom_consents, custom_li).map_err(|e| e.to_string())?;
    Ok(Some(PublisherTc {
        consents,
        legitimate_interests,
        custom_purposes,
    }))
}

fn section_key(id: u16) -> String {
    gpp::section_name(id).map_or_else(|| id.to_string(), str::to_owned)
}

pub(crate) fn gpp_to_json(gpp: &GppString, out: &mut String) {
    let mut o = ObjectWriter::new(out);
    o.int("version", gpp::GPP_VERSION);
    o.ints("section_ids", gpp.section_ids().map(i64::from));
    let sections = o.key("sections");
    let mut s = ObjectWriter::new(sections);
    for section in gpp.sections() {
        let out = s.key(&section_key(section.id()));
        match section {
            Section::TcfEuV2(tc) => tc_to_json(tc, out),
            Section::UsNat(x) => x.to_json(out),
            Section::UsCa(x) => x.to_json(out),
            Section::UsVa(x) => x.to_json(out),
            Section::UsCo(x) => x.to_json(out),
            Section::UsUt(x) => x.to_json(out),
            Section::UsCt(x) => x.to_json(out),
            Section::Opaque(x) => json::write_str(out, x.text()),
        }
    }
    s.finish();
    o.finish();
}

pub(crate) fn gpp_from_json(value: Value) -> Result<GppString, String> {
    let mut f = Fields::new(value, "GPP string", &["version", "section_ids", "sections"])?;
    f.int("version", 1, 1)?;
    let declared = f
        .ints("section_ids", 1, i64::from(u16::MAX), false)?
        .unwrap_or_default();
    let Value::Object(members) = f.take("sections") else {
        return Err("\"sections\" must be an object".into());
    };
    let mut gpp = GppString::new();
    for (key, value) in members {
        let id = gpp::section_id(&key)
            .or_else(|| key.parse().ok().filter(|id| *id != 0))
            .ok_or_else(|| format!("unknown section \"{key}\""))?;
        let section = match id {
            2 => Section::TcfEuV2(Box::new(tc_from_json(value)?)),
            7 => Section::UsNat(UsNat::from_json(value)?),
            8 => Section::UsCa(UsCa::from_json(value)?),
            9 => Section::UsVa(UsVa::from_json(value)?),
            10 => Section::UsCo(UsCo::from_json(value)?),
            11 => Section::UsUt(UsUt::from_json(value)?),
            12 => Section::UsCt(UsCt::from_json(value)?),
            _ => {
                let Value::Str(text) = value else {
                    return Err(format!("section \"{key}\" must be a string"));
                };
                Section::Opaque(OpaqueSection::new(id, text).ok_or_else(|| {
                    format!("section \"{key}\" must be non-empty text without '~'")
                })?)
            }
        };
        if gpp.section(id).is_some() {
            return Err(format!("section {id} is given twice"));
        }
        gpp.insert(section);
    }
    let actual: Vec<i64> = gpp.section_ids().map(i64::from).collect();
    if declared != actual {
        return Err(format!(
            "\"section_ids\" {declared:?} does not match the sections given {actual:?}"
        ));
    }
    Ok(gpp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_tcf(args: &[&str], input: &str) -> (i32, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = tcf_main(&args, &mut input.as_bytes(), &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn usage_on_help_and_no_arguments() {
        let (code, out, _) = run_tcf(&["--help"], "");
        assert_eq!(code, 0);
        assert!(out.contains("tarmo tcf decode"));
        let (code, _, err) = run_tcf(&[], "");
        assert_eq!(code, 2);
        assert!(err.contains("usage"));
    }
}
