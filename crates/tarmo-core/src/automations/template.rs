//! Message templates: a subject, a text and an HTML body per language,
//! rendered with minijinja. HTML is auto-escaped; a missing trait renders
//! empty (never an error mid-send); the traits a template names are known
//! at save time, so a template can be checked against a purpose's data
//! categories before anything is sent.
//!
//! A template body is not personal data; what it renders is, and only ever
//! travels sealed (the outbox) or in memory.

use crate::codes::Code;
use std::collections::{BTreeMap, BTreeSet};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::access::DataKind;
use crate::segments::valid_segment_id;

/// The channels a template is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateChannel {
    Email,
    Sms,
}

impl TemplateChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }
}

/// One language's content. Email needs a subject and a text; SMS a text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// A template as stored and as the API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    #[serde(default)]
    pub id: String,
    pub channel: TemplateChannel,
    /// Languages in the order given: the first is the fallback. Kept as a
    /// list of pairs so the order survives storage.
    #[serde(with = "ordered")]
    pub languages: Vec<(String, Content)>,
}

mod ordered {
    use super::Content;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[(String, Content)], s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, c) in v {
            m.serialize_entry(k, c)?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, Content)>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, Content)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of language: {subject, text, html}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, Content)> = Vec::new();
                while let Some((k, c)) = a.next_entry::<String, Content>()? {
                    if out.iter().any(|(x, _)| *x == k) {
                        return Err(serde::de::Error::custom(format!("language `{k}` twice")));
                    }
                    out.push((k, c));
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Syntax(String),
    #[error(
        "the template uses trait `{field}` ({kind} data), which purpose `{purpose}` does not use"
    )]
    FieldNotPermitted {
        field: String,
        kind: &'static str,
        purpose: String,
    },
}

impl TemplateError {
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidTemplate,
            Self::Syntax(_) => Code::InvalidTemplateSyntax,
            Self::FieldNotPermitted { .. } => Code::TemplateFieldNotPermitted,
        }
    }
}

/// Names a template may use besides `traits.*`.
pub const LINK_VARIABLES: &[&str] = &["unsubscribe_url", "preferences_url", "organisation"];
/// Reserved for the commerce branch's offers (`{{ offer.* }}`): the context
/// carries an `offer` object when the caller gives one.
pub const OFFER_VARIABLE: &str = "offer";

fn env() -> Environment<'static> {
    let mut e = Environment::new();
    // Every template is HTML-escaped when rendered as HTML; text bodies and
    // subjects are rendered with escaping off (see `render`).
    e.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    // A missing trait (or a field of one) renders empty, never an error.
    e.set_undefined_behavior(UndefinedBehavior::Chainable);
    e
}

fn valid_language(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=8).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

impl Template {
    /// Check the shape and compile every part; the template's trait names.
    pub fn validate(&self) -> Result<BTreeSet<String>, TemplateError> {
        if !valid_segment_id(&self.id) {
            return Err(TemplateError::Invalid(
                "a template id is 1-64 of a-z, 0-9 and _, starting with a letter".into(),
            ));
        }
        if self.languages.is_empty() || self.languages.len() > 50 {
            return Err(TemplateError::Invalid(
                "`languages` needs 1 to 50 languages: {\"en\": {\"subject\", \"text\", \"html\"}}"
                    .into(),
            ));
        }
        let mut fields = BTreeSet::new();
        for (lang, c) in &self.languages {
            if !valid_language(lang) {
                return Err(TemplateError::Invalid(format!(
                    "`{}` is not a language tag (\"en\", \"fi\", \"pt-br\")",
                    lang.chars().take(20).collect::<String>()
                )));
            }
            match self.channel {
                TemplateChannel::Email => {
                    if c.subject.as_deref().is_none_or(|s| s.trim().is_empty()) {
                        return Err(TemplateError::Invalid(format!(
                            "an email template needs a `subject` in `{lang}`"
                        )));
                    }
                }
                TemplateChannel::Sms => {
                    if c.subject.is_some() || c.html.is_some() {
                        return Err(TemplateError::Invalid(format!(
                            "an SMS template has only a `text` (in `{lang}`)"
                        )));
                    }
                }
            }
            if c.text.trim().is_empty() {
                return Err(TemplateError::Invalid(format!(
                    "`text` is empty in `{lang}`"
                )));
            }
            let total = c.text.len()
                + c.subject.as_ref().map_or(0, String::len)
                + c.html.as_ref().map_or(0, String::len);
            if total > 200_000 {
                return Err(TemplateError::Invalid(format!(
                    "the `{lang}` content is larger than 200 KB"
                )));
            }
            let env = env();
            for (part, src) in [
                ("subject", c.subject.as_deref()),
                ("text", Some(c.text.as_str())),
                ("html", c.html.as_deref()),
            ] {
                let Some(src) = src else { continue };
                let t = env.template_from_str(src).map_err(|e| {
                    TemplateError::Syntax(format!("{lang}.{part}: {}", e.detail().unwrap_or("")))
                })?;
                for v in t.undeclared_variables(true) {
                    match v.split_once('.') {
                        Some(("traits", name)) => {
                            let name = name.split('.').next().unwrap_or(name);
                            fields.insert(name.to_owned());
                        }
                        _ if v == "traits" => {
                            return Err(TemplateError::Invalid(format!(
                                "{lang}.{part}: name each trait (`traits.first_name`), so that what a message reads can be checked"
                            )));
                        }
                        _ => {
                            let root = v.split('.').next().unwrap_or(&v);
                            if !LINK_VARIABLES.contains(&root) && root != OFFER_VARIABLE {
                                return Err(TemplateError::Invalid(format!(
                                    "{lang}.{part}: unknown variable `{root}` (use traits.NAME, {}, offer)",
                                    LINK_VARIABLES.join(", ")
                                )));
                            }
                        }
                    }
                }
            }
        }
        Ok(fields)
    }

    /// The trait names the template reads (it must be valid).
    pub fn fields(&self) -> BTreeSet<String> {
        self.validate().unwrap_or_default()
    }

    /// Every field must be of a kind the purpose's data categories open.
    pub fn check_fields(
        &self,
        purpose: &str,
        allowed: &BTreeSet<DataKind>,
    ) -> Result<(), TemplateError> {
        for f in self.fields() {
            let kind = crate::segments::trait_kind(&f);
            if !allowed.contains(&kind) {
                return Err(TemplateError::FieldNotPermitted {
                    field: f,
                    kind: kind.as_str(),
                    purpose: purpose.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The language to send in: the person's (`language` trait, or its
    /// primary subtag), else the template's first.
    pub fn language_for(&self, wanted: Option<&str>) -> &(String, Content) {
        if let Some(w) = wanted {
            let w = w.trim().to_ascii_lowercase().replace('_', "-");
            if let Some(c) = self.languages.iter().find(|(l, _)| *l == w) {
                return c;
            }
            let primary = w.split('-').next().unwrap_or("");
            if let Some(c) = self
                .languages
                .iter()
                .find(|(l, _)| l.split('-').next() == Some(primary))
            {
                return c;
            }
        }
        &self.languages[0]
    }

    /// Render for one person. `traits` must already hold only what the
    /// purpose allows; `links` the unsubscribe and preference URLs.
    pub fn render(
        &self,
        language: Option<&str>,
        traits: &Map<String, Value>,
        links: &Links,
        offer: Option<&Value>,
    ) -> Result<Rendered, TemplateError> {
        let (lang, c) = self.language_for(language);
        let mut ctx = BTreeMap::new();
        ctx.insert("traits", Value::Object(traits.clone()));
        ctx.insert(
            "unsubscribe_url",
            Value::String(links.unsubscribe_url.clone()),
        );
        ctx.insert(
            "preferences_url",
            Value::String(links.preferences_url.clone()),
        );
        ctx.insert("organisation", Value::String(links.organisation.clone()));
        ctx.insert(OFFER_VARIABLE, offer.cloned().unwrap_or(Value::Null));
        let mut env = env();
        let render = |env: &mut Environment<'static>, name: &'static str, src: &str| {
            env.add_template_owned(name, src.to_owned())
                .and_then(|()| env.get_template(name)?.render(&ctx))
                .map_err(|e| TemplateError::Syntax(format!("{lang}: {e}")))
        };
        let subject = match &c.subject {
            Some(s) => Some(render(&mut env, "subject.txt", s)?.replace(['\r', '\n'], " ")),
            None => None,
        };
        let text = render(&mut env, "text.txt", &c.text)?;
        let html = match &c.html {
            Some(h) => Some(render(&mut env, "body.html", h)?),
            None => None,
        };
        Ok(Rendered {
            language: lang.clone(),
            subject,
            text,
            html,
        })
    }
}

/// The links every marketing message carries.
#[derive(Debug, Clone, Default)]
pub struct Links {
    pub unsubscribe_url: String,
    pub preferences_url: String,
    pub organisation: String,
}

/// A rendered message: personal data.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    pub language: String,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

/// The two links under every marketing email, in the message's language:
/// (the person's preference page, unsubscribe).
pub fn marketing_footer(language: &str) -> (&'static str, &'static str) {
    match language.split('-').next().unwrap_or("en") {
        "fi" => ("Valintasi", "Peru tilaus"),
        "de" => ("Ihre Einstellungen", "Abmelden"),
        "nb" | "no" => ("Dine valg", "Meld av"),
        "he" => ("הבחירות שלך", "ביטול הרשמה"),
        "tr" => ("Seçimleriniz", "Abonelikten çık"),
        _ => ("Your choices", "Unsubscribe"),
    }
}

/// The opt-out line every marketing SMS ends with, in its language.
pub fn sms_opt_out(language: &str) -> &'static str {
    match language.split('-').next().unwrap_or("en") {
        "fi" => "Peru viestit: vastaa STOP",
        "de" => "Abmelden: Antworte STOP",
        "nb" | "no" => "Avslutt: svar STOPP",
        "he" => "להסרה השב STOP",
        "tr" => "Iptal icin RET yazin",
        _ => "Reply STOP to opt out",
    }
}

/// Whether an inbound SMS body asks to stop, in the supported languages.
pub fn is_stop_word(body: &str) -> bool {
    let w = body
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation())
        .to_lowercase();
    matches!(
        w.as_str(),
        "stop"
            | "stopall"
            | "unsubscribe"
            | "cancel"
            | "end"
            | "quit"
            | "lopeta"
            | "seis"
            | "stopp"
            | "abmelden"
            | "avslutt"
            | "avmeld"
            | "הסר"
            | "עצור"
            | "dur"
            | "iptal"
            | "ret"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(json: Value) -> Template {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn renders_in_the_persons_language_with_html_escaped_and_missing_traits_empty() {
        let tpl = t(
            serde_json::json!({"id": "bday", "channel": "email", "languages": {
            "en": {"subject": "Happy birthday {{ traits.first_name }}", "text": "Hi {{ traits.first_name }}{{ traits.nope.deeper }}!", "html": "<p>Hi {{ traits.first_name }}</p>"},
            "fi": {"subject": "Hyvää syntymäpäivää {{ traits.first_name }}", "text": "Hei {{ traits.first_name }}"}}}),
        );
        assert_eq!(
            tpl.fields(),
            BTreeSet::from(["first_name".to_owned(), "nope".to_owned()])
        );
        let mut traits = Map::new();
        traits.insert("first_name".into(), Value::String("<b>Ann</b>".into()));
        let r = tpl
            .render(Some("fi-FI"), &traits, &Links::default(), None)
            .unwrap();
        assert_eq!(r.language, "fi");
        assert_eq!(r.text, "Hei <b>Ann</b>");
        let r = tpl
            .render(Some("sv"), &traits, &Links::default(), None)
            .unwrap();
        assert_eq!(r.language, "en");
        assert_eq!(r.text, "Hi <b>Ann</b>!");
        assert_eq!(
            r.html.as_deref(),
            Some("<p>Hi &lt;b&gt;Ann&lt;&#x2f;b&gt;</p>")
        );
        let r = tpl
            .render(None, &Map::new(), &Links::default(), None)
            .unwrap();
        assert_eq!(r.subject.as_deref(), Some("Happy birthday "));
    }

    #[test]
    fn fields_are_checked_against_the_purpose() {
        let tpl = t(
            serde_json::json!({"id": "x", "channel": "sms", "languages": {
            "en": {"text": "{{ traits.city }}"}}}),
        );
        let contact = BTreeSet::from([DataKind::Contact]);
        let e = tpl.check_fields("email_marketing", &contact).unwrap_err();
        assert_eq!(e.code(), Code::TemplateFieldNotPermitted);
        assert!(
            tpl.check_fields("p", &BTreeSet::from([DataKind::Traits]))
                .is_ok()
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for (j, code) in [
            (
                serde_json::json!({"id": "x", "channel": "email", "languages": {"en": {"text": "a"}}}),
                "invalid_template",
            ),
            (
                serde_json::json!({"id": "x", "channel": "sms", "languages": {"en": {"text": "{{ traits }}"}}}),
                "invalid_template",
            ),
            (
                serde_json::json!({"id": "x", "channel": "sms", "languages": {"en": {"text": "{{ secret }}"}}}),
                "invalid_template",
            ),
            (
                serde_json::json!({"id": "x", "channel": "sms", "languages": {"en": {"text": "{% if %}"}}}),
                "invalid_template_syntax",
            ),
            (
                serde_json::json!({"id": "x", "channel": "sms", "languages": {}}),
                "invalid_template",
            ),
        ] {
            assert_eq!(t(j).validate().unwrap_err().code().as_str(), code);
        }
    }

    #[test]
    fn stop_words() {
        for w in ["STOP", " stop ", "Lopeta", "STOPP", "iptal", "Abmelden."] {
            assert!(is_stop_word(w), "{w}");
        }
        assert!(!is_stop_word("hello"));
    }
}
