//! The double opt-in confirmation message in each supported language: English,
//! Finnish, German, Norwegian Bokmål, Hebrew (right to left) and Turkish.
//!
//! Each message lists the purposes with the exact notice text the person is
//! agreeing to, says that nothing happens unless they confirm, and says when
//! the link expires. Every interpolated value is HTML-escaped in the HTML body;
//! the plain-text body and the SMS carry them as they are.

/// What the person is asked to confirm.
#[derive(Debug, Clone)]
pub struct ConfirmationContext {
    /// The controller's name as the person knows it.
    pub organisation: String,
    pub purposes: Vec<Purpose>,
    /// The absolute `https` URL of the confirmation page, built by the caller.
    pub confirm_url: String,
    pub expires_in_hours: u32,
}

/// One purpose of processing and the notice shown for it.
#[derive(Debug, Clone)]
pub struct Purpose {
    pub name: String,
    /// The exact notice text; it is reproduced verbatim (line breaks kept).
    pub notice: String,
}

/// A rendered email: the subject, the plain-text body and the HTML body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A language the templates are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Fi,
    De,
    /// Norwegian Bokmål; also chosen for `no` and for Nynorsk (`nn`), whose
    /// readers all read Bokmål.
    Nb,
    He,
    Tr,
}

impl Lang {
    pub const ALL: [Lang; 6] = [Lang::En, Lang::Fi, Lang::De, Lang::Nb, Lang::He, Lang::Tr];

    /// Picks the language for a BCP 47 tag: the primary subtag decides
    /// (`fi-FI` and `fi_FI` are Finnish), anything unknown is English.
    pub fn negotiate(tag: &str) -> Lang {
        let primary = tag.trim().split(['-', '_']).next().unwrap_or_default();
        match primary.to_ascii_lowercase().as_str() {
            "fi" => Lang::Fi,
            "de" => Lang::De,
            "nb" | "no" | "nn" => Lang::Nb,
            "he" | "iw" => Lang::He,
            "tr" => Lang::Tr,
            _ => Lang::En,
        }
    }

    /// The supported language for a BCP 47 tag, if there is one (the same
    /// primary-subtag rule as [`Lang::negotiate`], without its English default).
    pub fn supported(tag: &str) -> Option<Lang> {
        let primary = tag.trim().split(['-', '_']).next().unwrap_or_default();
        let l = Lang::negotiate(primary);
        (l != Lang::En || primary.eq_ignore_ascii_case("en")).then_some(l)
    }

    /// The language of a page shown to a person: their own language when it
    /// is one of ours (they chose it when they subscribed), else the first
    /// supported language of the browser's `Accept-Language` by q-value
    /// (RFC 9110 §12.5.4; equal weights keep the header's order, `q=0` means
    /// "not this one"), else English.
    pub fn for_person(own: Option<&str>, accept_language: Option<&str>) -> Lang {
        if let Some(l) = own.and_then(Lang::supported) {
            return l;
        }
        let Some(header) = accept_language else {
            return Lang::En;
        };
        // A browser sends a handful of ranges; more is noise or an attack.
        let mut ranges: Vec<(u16, Lang)> = header
            .split(',')
            .take(32)
            .filter_map(|item| {
                let mut parts = item.split(';');
                let tag = parts.next()?.trim();
                let q = parts
                    .find_map(|p| {
                        let p = p.trim();
                        p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
                    })
                    .map_or(Some(1000), qvalue)?;
                (q > 0).then_some((q, Lang::supported(tag)?))
            })
            .collect();
        // Stable: among equal weights the header's order stands.
        ranges.sort_by_key(|r| std::cmp::Reverse(r.0));
        ranges.first().map_or(Lang::En, |r| r.1)
    }

    /// The BCP 47 tag, as used in `<html lang>`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Fi => "fi",
            Lang::De => "de",
            Lang::Nb => "nb",
            Lang::He => "he",
            Lang::Tr => "tr",
        }
    }

    pub fn is_rtl(self) -> bool {
        self == Lang::He
    }

    fn texts(self) -> &'static Texts {
        match self {
            Lang::En => &EN,
            Lang::Fi => &FI,
            Lang::De => &DE,
            Lang::Nb => &NB,
            Lang::He => &HE,
            Lang::Tr => &TR,
        }
    }

    /// "in N hours", in the form each language's `expires` sentence needs.
    fn hours(self, n: u32) -> String {
        match self {
            Lang::En if n == 1 => "1 hour".into(),
            Lang::En => format!("{n} hours"),
            // "… {n} tunnin kuluttua": the genitive is the same for 1 and many.
            Lang::Fi => format!("{n} tunnin"),
            Lang::De if n == 1 => "1 Stunde".into(),
            Lang::De => format!("{n} Stunden"),
            Lang::Nb if n == 1 => "1 time".into(),
            Lang::Nb => format!("{n} timer"),
            Lang::He if n == 1 => "שעה".into(),
            Lang::He if n == 2 => "שעתיים".into(),
            Lang::He => format!("{n} שעות"),
            // Turkish keeps the noun singular after a number.
            Lang::Tr => format!("{n} saat"),
        }
    }
}

/// One language's sentences. `{org}`, `{url}` and `{hours}` are filled in.
struct Texts {
    subject: &'static str,
    greeting: &'static str,
    intro: &'static str,
    open_link: &'static str,
    button: &'static str,
    nothing_unless_confirmed: &'static str,
    nothing_unless_pressed: &'static str,
    expires: &'static str,
    ignore: &'static str,
    button_fallback: &'static str,
    sms: &'static str,
}

const EN: Texts = Texts {
    subject: "Please confirm your choices with {org}",
    greeting: "Hello,",
    intro: "{org} would like your permission for the following. Please read it and confirm only if you agree.",
    open_link: "To confirm, open this link:",
    button: "Yes, I confirm",
    nothing_unless_confirmed: "Nothing happens unless you confirm.",
    nothing_unless_pressed: "Nothing happens unless you press the button.",
    expires: "The link expires in {hours}.",
    ignore: "If you did not ask for this, you can simply ignore this email.",
    button_fallback: "If the button does not work, copy this link into your browser:",
    sms: "{org}: please confirm your choices: {url} Nothing happens unless you confirm. The link expires in {hours}.",
};

const FI: Texts = Texts {
    subject: "Vahvista valintasi – {org}",
    greeting: "Hei,",
    intro: "{org} pyytää lupaasi seuraaviin asioihin. Lue ne ja vahvista vain, jos hyväksyt ne.",
    open_link: "Vahvista avaamalla tämä linkki:",
    button: "Kyllä, vahvistan",
    nothing_unless_confirmed: "Mitään ei tapahdu, ellet vahvista.",
    nothing_unless_pressed: "Mitään ei tapahdu, ellet paina painiketta.",
    expires: "Linkki vanhenee {hours} kuluttua.",
    ignore: "Jos et pyytänyt tätä, voit jättää viestin huomiotta.",
    button_fallback: "Jos painike ei toimi, kopioi tämä linkki selaimeesi:",
    sms: "{org}: vahvista valintasi: {url} Mitään ei tapahdu, ellet vahvista. Linkki vanhenee {hours} kuluttua.",
};

const DE: Texts = Texts {
    subject: "Bitte bestätigen Sie Ihre Auswahl bei {org}",
    greeting: "Hallo,",
    intro: "{org} bittet Sie um Ihre Einwilligung zu Folgendem. Bitte lesen Sie es und bestätigen Sie nur, wenn Sie einverstanden sind.",
    open_link: "Zum Bestätigen öffnen Sie diesen Link:",
    button: "Ja, ich bestätige",
    nothing_unless_confirmed: "Ohne Ihre Bestätigung passiert nichts.",
    nothing_unless_pressed: "Es passiert nichts, solange Sie nicht auf die Schaltfläche klicken.",
    expires: "Der Link läuft in {hours} ab.",
    ignore: "Falls Sie das nicht angefordert haben, können Sie diese E-Mail einfach ignorieren.",
    button_fallback: "Falls die Schaltfläche nicht funktioniert, kopieren Sie diesen Link in Ihren Browser:",
    sms: "{org}: Bitte bestätigen Sie Ihre Auswahl: {url} Ohne Ihre Bestätigung passiert nichts. Der Link läuft in {hours} ab.",
};

const NB: Texts = Texts {
    subject: "Bekreft valgene dine hos {org}",
    greeting: "Hei,",
    intro: "{org} ber om samtykke fra deg til følgende. Les gjennom og bekreft bare hvis du er enig.",
    open_link: "Åpne denne lenken for å bekrefte:",
    button: "Ja, jeg bekrefter",
    nothing_unless_confirmed: "Ingenting skjer med mindre du bekrefter.",
    nothing_unless_pressed: "Ingenting skjer med mindre du trykker på knappen.",
    expires: "Lenken utløper om {hours}.",
    ignore: "Hvis du ikke har bedt om dette, kan du bare se bort fra denne e-posten.",
    button_fallback: "Hvis knappen ikke virker, kan du kopiere denne lenken inn i nettleseren:",
    sms: "{org}: bekreft valgene dine: {url} Ingenting skjer med mindre du bekrefter. Lenken utløper om {hours}.",
};

// Worded without gendered verb forms (infinitives and nouns), so it reads
// right for every recipient.
const HE: Texts = Texts {
    subject: "אישור הבחירות שלך אצל {org}",
    greeting: "שלום,",
    intro: "הודעה זו נשלחה מטעם {org} כדי לבקש את הסכמתך לנושאים הבאים. נא לקרוא אותם ולאשר רק אם הם מקובלים עליך.",
    open_link: "לאישור יש לפתוח את הקישור הזה:",
    button: "אישור",
    nothing_unless_confirmed: "ללא אישורך שום דבר לא יקרה.",
    nothing_unless_pressed: "ללא לחיצה על הכפתור שום דבר לא יקרה.",
    expires: "תוקף הקישור יפוג בעוד {hours}.",
    ignore: "אם לא ביקשת זאת, אפשר פשוט להתעלם מהודעה זו.",
    button_fallback: "אם הכפתור אינו פועל, יש להעתיק את הקישור הזה לדפדפן:",
    sms: "{org}: לאישור הבחירות שלך: {url} ללא אישורך שום דבר לא יקרה. תוקף הקישור יפוג בעוד {hours}.",
};

const TR: Texts = Texts {
    subject: "{org}: lütfen seçimlerinizi onaylayın",
    greeting: "Merhaba,",
    intro: "{org} aşağıdakiler için izninizi istiyor. Lütfen okuyun ve yalnızca kabul ediyorsanız onaylayın.",
    open_link: "Onaylamak için bu bağlantıyı açın:",
    button: "Evet, onaylıyorum",
    nothing_unless_confirmed: "Siz onaylamadıkça hiçbir şey olmaz.",
    nothing_unless_pressed: "Düğmeye basmadıkça hiçbir şey olmaz.",
    expires: "Bağlantının süresi {hours} sonra dolacak.",
    ignore: "Bunu siz istemediyseniz bu e-postayı görmezden gelebilirsiniz.",
    button_fallback: "Düğme çalışmazsa bu bağlantıyı tarayıcınıza kopyalayın:",
    sms: "{org}: lütfen seçimlerinizi onaylayın: {url} Onaylamadıkça hiçbir şey olmaz. Bağlantının süresi {hours} sonra dolacak.",
};

/// The confirmation email in `lang` (a BCP 47 tag; see [`Lang::negotiate`]).
pub fn confirmation_email(lang: &str, ctx: &ConfirmationContext) -> EmailContent {
    let lang = Lang::negotiate(lang);
    let t = lang.texts();
    let hours = lang.hours(ctx.expires_in_hours);
    let org = ctx.organisation.as_str();
    let url = ctx.confirm_url.as_str();
    let fill_plain = |template: &str| fill(template, org, url, &hours);
    let fill_html = |template: &str| {
        fill(
            &escape(template),
            &escape(org),
            &escape(url),
            &escape(&hours),
        )
    };

    let subject = fill_plain(t.subject);

    let mut text = format!("{}\n\n{}\n\n", t.greeting, fill_plain(t.intro));
    for purpose in &ctx.purposes {
        text.push_str(&format!("{}\n{}\n\n", purpose.name, purpose.notice));
    }
    text.push_str(&format!(
        "{}\n{url}\n\n{} {} {}\n\n{org}\n",
        t.open_link,
        t.nothing_unless_confirmed,
        fill_plain(t.expires),
        t.ignore,
    ));

    let dir = if lang.is_rtl() { "rtl" } else { "ltr" };
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"{code}\" dir=\"{dir}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n</head>\n\
         <body style=\"margin:0;padding:0;background:#ffffff;\">\n\
         <div dir=\"{dir}\" style=\"max-width:36em;margin:0 auto;padding:1.5em;font-family:Helvetica,Arial,sans-serif;font-size:16px;line-height:1.5;color:#222222;\">\n\
         <p>{greeting}</p>\n<p>{intro}</p>\n",
        code = lang.code(),
        title = escape(&subject),
        greeting = escape(t.greeting),
        intro = fill_html(t.intro),
    );
    for purpose in &ctx.purposes {
        html.push_str(&format!(
            "<h2 style=\"font-size:1.1em;margin:1.2em 0 0.3em;\">{}</h2>\n\
             <p style=\"margin:0;white-space:pre-line;\">{}</p>\n",
            escape(&purpose.name),
            escape(&purpose.notice),
        ));
    }
    html.push_str(&format!(
        "<p style=\"margin:2em 0;\"><a href=\"{url}\" style=\"display:inline-block;padding:0.8em 1.6em;background:#1a5fb4;color:#ffffff;text-decoration:none;border-radius:4px;font-weight:bold;\">{button}</a></p>\n\
         <p>{nothing} {expires} {ignore}</p>\n\
         <p style=\"font-size:0.9em;color:#555555;\">{fallback}<br>\n<a href=\"{url}\" dir=\"ltr\" style=\"color:#1a5fb4;word-break:break-all;\">{url}</a></p>\n\
         <p>{org}</p>\n</div>\n</body>\n</html>\n",
        url = escape(url),
        button = escape(t.button),
        nothing = escape(t.nothing_unless_pressed),
        expires = fill_html(t.expires),
        ignore = escape(t.ignore),
        fallback = escape(t.button_fallback),
        org = escape(org),
    ));

    EmailContent {
        subject,
        text,
        html,
    }
}

/// The confirmation SMS in `lang`: one short paragraph with the URL.
pub fn confirmation_sms(lang: &str, ctx: &ConfirmationContext) -> String {
    let lang = Lang::negotiate(lang);
    fill(
        lang.texts().sms,
        &ctx.organisation,
        &ctx.confirm_url,
        &lang.hours(ctx.expires_in_hours),
    )
}

/// An RFC 9110 weight (`0`, `0.5`, `1.000`) in thousandths; `None` when
/// malformed, so that a range with a broken weight is ignored rather than
/// taken at full weight.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Replaces `{org}`, `{url}` and `{hours}` in one pass, so a value that itself
/// contains `{url}` is not substituted again.
fn fill(template: &str, org: &str, url: &str, hours: &str) -> String {
    let mut out = String::with_capacity(template.len() + org.len() + url.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let (value, len) = if after.starts_with("{org}") {
            (org, 5)
        } else if after.starts_with("{url}") {
            (url, 5)
        } else if after.starts_with("{hours}") {
            (hours, 7)
        } else {
            ("{", 1)
        };
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(Lang::negotiate("fi"), Lang::Fi);
        assert_eq!(Lang::negotiate("fi-FI"), Lang::Fi);
        assert_eq!(Lang::negotiate("FI_fi"), Lang::Fi);
        assert_eq!(Lang::negotiate("de-AT"), Lang::De);
        assert_eq!(Lang::negotiate("no"), Lang::Nb);
        assert_eq!(Lang::negotiate("nb-NO"), Lang::Nb);
        assert_eq!(Lang::negotiate("nn"), Lang::Nb);
        assert_eq!(Lang::negotiate("he-IL"), Lang::He);
        assert_eq!(Lang::negotiate("iw"), Lang::He);
        assert_eq!(Lang::negotiate("tr"), Lang::Tr);
        assert_eq!(Lang::negotiate("sv-SE"), Lang::En);
        assert_eq!(Lang::negotiate(""), Lang::En);
        assert_eq!(Lang::negotiate("en-GB"), Lang::En);
    }

    #[test]
    fn accept_language_by_weight() {
        let f = |own: Option<&str>, h: &str| Lang::for_person(own, Some(h));
        assert_eq!(f(None, "fi-FI,fi;q=0.9,en-US;q=0.8,en;q=0.7"), Lang::Fi);
        assert_eq!(f(None, "en;q=0.5, he;q=0.8"), Lang::He);
        assert_eq!(f(None, "sv-SE, de;q=0.3, tr;q=0.4"), Lang::Tr);
        assert_eq!(f(None, "de;q=0, fi;q=0.1"), Lang::Fi);
        assert_eq!(f(None, "de;q=0"), Lang::En);
        assert_eq!(
            f(None, "de;q=2, nb;q=0.2"),
            Lang::Nb,
            "a broken weight is ignored"
        );
        assert_eq!(f(None, "de;q=0.1234, nb;q=0.2"), Lang::Nb);
        assert_eq!(f(None, "*, fi;q=0.5"), Lang::Fi);
        assert_eq!(f(None, "de, fi"), Lang::De, "equal weights: header order");
        assert_eq!(
            f(Some("he"), "fi"),
            Lang::He,
            "the person's own language first"
        );
        assert_eq!(f(Some("sv"), "fi"), Lang::Fi);
        assert_eq!(Lang::for_person(None, None), Lang::En);
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("1.001"), None);
        assert_eq!(qvalue("0."), Some(0));
        assert_eq!(qvalue(".5"), None);
        assert_eq!(Lang::supported("EN-gb"), Some(Lang::En));
        assert_eq!(Lang::supported("sv"), None);
    }

    /// The one negotiation every page goes through (`Lang::for_person`),
    /// against what browsers send.
    #[test]
    fn accept_language_q_values_ties_exclusions_and_regions() {
        let f = |h: &str| Lang::for_person(None, Some(h));
        // q-values outrank the header's order.
        assert_eq!(f("fi;q=0.1, de;q=0.9"), Lang::De);
        assert_eq!(f("en;q=0.2, tr;q=0.3, fi;q=0.25"), Lang::Tr);
        // A language we do not write is passed over for the next one by
        // weight: Swedish is asked first, Finnish is what we have.
        assert_eq!(f("fi;q=0.1, sv;q=0.9"), Lang::Fi);
        // Equal weights (stated or implied) keep the header's order.
        assert_eq!(f("tr;q=0.5, de;q=0.5"), Lang::Tr);
        assert_eq!(f("he, fi"), Lang::He);
        assert_eq!(f("nb;q=1, de"), Lang::Nb);
        // q=0 means "not this one", in any spelling of zero.
        assert_eq!(f("fi;q=0, de;q=0.1"), Lang::De);
        assert_eq!(f("fi;q=0.000, de;q=0.001"), Lang::De);
        assert_eq!(f("fi;q=0"), Lang::En);
        // Region subtags: the primary subtag decides.
        assert_eq!(f("sv-FI, fi-FI;q=0.8"), Lang::Fi);
        assert_eq!(f("de-AT;q=0.9, nb-NO;q=0.95"), Lang::Nb);
        assert_eq!(f("he-IL"), Lang::He);
        // `*`, unknown tags and noise fall back to English.
        assert_eq!(f("*"), Lang::En);
        assert_eq!(f("sv-FI, xx;q=0.5"), Lang::En);
        assert_eq!(f(""), Lang::En);
        assert_eq!(f(";;,,"), Lang::En);
        // Spaces and an upper-case Q are what some clients send.
        assert_eq!(f("de ; q=0.5 , fi ; Q=0.6"), Lang::Fi);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn tag() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("en".to_owned()),
                Just("fi-FI".to_owned()),
                Just("de".to_owned()),
                Just("nb-NO".to_owned()),
                Just("he".to_owned()),
                Just("tr".to_owned()),
                Just("sv".to_owned()),
                Just("*".to_owned()),
                "[a-z]{2,3}(-[A-Z]{2})?",
            ]
        }

        proptest! {
            #[test]
            fn never_panics(own in proptest::option::of(".{0,20}"), h in ".{0,200}") {
                let _ = Lang::for_person(own.as_deref(), Some(&h));
            }

            #[test]
            fn the_heaviest_supported_range_wins(
                items in proptest::collection::vec((tag(), 0u16..=1000), 0..8)
            ) {
                let header = items
                    .iter()
                    .map(|(t, q)| format!("{t};q={}.{:03}", q / 1000, q % 1000))
                    .collect::<Vec<_>>()
                    .join(", ");
                let got = Lang::for_person(None, Some(&header));
                // The model: the first range of the greatest weight above 0
                // among supported tags, else English.
                let best = items
                    .iter()
                    .filter(|(t, q)| *q > 0 && Lang::supported(t).is_some())
                    .max_by_key(|(_, q)| *q)
                    .map(|(_, q)| *q);
                let want = best.map_or(Lang::En, |b| {
                    items
                        .iter()
                        .find(|(t, q)| *q == b && Lang::supported(t).is_some())
                        .and_then(|(t, _)| Lang::supported(t))
                        .unwrap_or(Lang::En)
                });
                prop_assert_eq!(got, want, "{}", header);
            }

            #[test]
            fn the_persons_own_language_comes_first(
                own in tag(), h in ".{0,100}"
            ) {
                if let Some(l) = Lang::supported(&own) {
                    prop_assert_eq!(Lang::for_person(Some(&own), Some(&h)), l);
                }
            }
        }
    }

    #[test]
    fn fill_is_one_pass() {
        assert_eq!(
            fill("{org} at {url} in {hours}", "A{url}", "U", "H"),
            "A{url} at U in H"
        );
        assert_eq!(fill("{x} {org", "O", "U", "H"), "{x} {org");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn hours_forms() {
        assert_eq!(Lang::En.hours(1), "1 hour");
        assert_eq!(Lang::En.hours(48), "48 hours");
        assert_eq!(Lang::De.hours(1), "1 Stunde");
        assert_eq!(Lang::Nb.hours(24), "24 timer");
        assert_eq!(Lang::He.hours(2), "שעתיים");
    }
}
