use std::collections::HashSet;

use tarmo_notify::templates::{
    ConfirmationContext, Lang, Purpose, confirmation_email, confirmation_sms,
};
use tarmo_notify::testing::SmtpSink;
use tarmo_notify::{Deliver, Email, Mailbox, MessageId, SmtpConfig, SmtpMailer};

use crate::WAIT;

const URL: &str = "https://tarmo.example/confirm/3f9a?lang=fi&t=abc";
const URL_ESCAPED: &str = "https://tarmo.example/confirm/3f9a?lang=fi&amp;t=abc";

fn context() -> ConfirmationContext {
    ConfirmationContext {
        organisation: "Kahvila <Ilo> & Co".into(),
        purposes: vec![
            Purpose {
                name: "Uutiskirje".into(),
                notice: "Lähetämme sinulle uutiskirjeen kerran kuukaudessa.\nVoit perua sen milloin tahansa."
                    .into(),
            },
            Purpose {
                name: "Offers <script>alert(1)</script>".into(),
                notice: "We use your purchases to pick offers. <script>alert(\"x\")</script> 'quoted'"
                    .into(),
            },
        ],
        confirm_url: URL.into(),
        expires_in_hours: 48,
    }
}

/// Tags to try, and a phrase only that language's text contains.
const LANGUAGES: [(&str, &str); 7] = [
    ("en", "Nothing happens unless you confirm."),
    ("fi", "Mitään ei tapahdu, ellet vahvista."),
    ("de", "Ohne Ihre Bestätigung passiert nichts."),
    ("nb", "Ingenting skjer med mindre du bekrefter."),
    ("no", "Ingenting skjer med mindre du bekrefter."),
    ("he", "ללא אישורך שום דבר לא יקרה."),
    ("tr", "Siz onaylamadıkça hiçbir şey olmaz."),
];

#[test]
fn every_language_has_the_url_the_notices_and_the_expiry() {
    let ctx = context();
    for (lang, phrase) in LANGUAGES {
        let content = confirmation_email(lang, &ctx);
        assert!(content.text.contains(phrase), "{lang}: {}", content.text);
        assert!(content.text.contains(URL), "{lang}");
        assert!(content.text.contains("48"), "{lang}: expiry missing");
        assert!(content.html.contains(URL_ESCAPED), "{lang}");
        assert!(content.html.contains("48"), "{lang}: expiry missing");
        assert!(
            content.subject.contains("Kahvila <Ilo> & Co"),
            "{lang}: {}",
            content.subject
        );
        assert!(content.text.contains("Kahvila <Ilo> & Co"), "{lang}");
        assert!(
            content.html.contains("Kahvila &lt;Ilo&gt; &amp; Co"),
            "{lang}"
        );
        for purpose in &ctx.purposes {
            assert!(content.text.contains(&purpose.name), "{lang}");
            assert!(
                content.text.contains(&purpose.notice),
                "{lang}: notice not verbatim"
            );
        }
        assert!(
            content.html.contains("Lähetämme sinulle uutiskirjeen kerran kuukaudessa.\nVoit perua sen milloin tahansa."),
            "{lang}"
        );
        let sms = confirmation_sms(lang, &ctx);
        assert!(sms.contains(URL), "{lang}: {sms}");
        assert!(sms.contains("48"), "{lang}: {sms}");
        assert!(
            sms.chars().count() < 250,
            "{lang}: {} characters",
            sms.chars().count()
        );
    }
}

#[test]
fn html_escapes_everything_interpolated() {
    for (lang, _) in LANGUAGES {
        let html = confirmation_email(lang, &context()).html;
        assert!(!html.contains("<script>"), "{lang}");
        assert!(!html.contains("<Ilo>"), "{lang}");
        assert!(
            html.contains("Offers &lt;script&gt;alert(1)&lt;/script&gt;"),
            "{lang}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &#39;quoted&#39;"),
            "{lang}"
        );
    }
}

#[test]
fn hebrew_is_right_to_left_and_the_others_are_not() {
    for (lang, _) in LANGUAGES {
        let html = confirmation_email(lang, &context()).html;
        let rtl = html.contains("dir=\"rtl\"");
        assert_eq!(rtl, lang == "he", "{lang}");
        assert!(html.contains(&format!("lang=\"{}\"", Lang::negotiate(lang).code())));
    }
    assert!(
        confirmation_email("he-IL", &context())
            .html
            .contains("<html lang=\"he\" dir=\"rtl\">")
    );
}

#[test]
fn each_language_is_its_own_text_and_others_fall_back() {
    let ctx = context();
    let subjects: HashSet<String> = Lang::ALL
        .iter()
        .map(|l| confirmation_email(l.code(), &ctx).subject)
        .collect();
    assert_eq!(subjects.len(), Lang::ALL.len());
    for lang in Lang::ALL {
        assert_eq!(Lang::negotiate(lang.code()), lang);
    }
    assert_eq!(
        confirmation_email("no", &ctx),
        confirmation_email("nb", &ctx)
    );
    assert_eq!(
        confirmation_email("fi-FI", &ctx),
        confirmation_email("fi", &ctx)
    );
    assert_eq!(
        confirmation_email("de_CH", &ctx),
        confirmation_email("de", &ctx)
    );
    assert_eq!(
        confirmation_email("sv-SE", &ctx),
        confirmation_email("en", &ctx)
    );
    assert_eq!(confirmation_email("", &ctx), confirmation_email("en", &ctx));
    assert_eq!(
        confirmation_sms("pt-BR", &ctx),
        confirmation_sms("en", &ctx)
    );
}

#[test]
fn one_hour_is_singular() {
    let mut ctx = context();
    ctx.expires_in_hours = 1;
    assert!(
        confirmation_email("en", &ctx)
            .text
            .contains("expires in 1 hour.")
    );
    assert!(
        confirmation_email("de", &ctx)
            .text
            .contains("in 1 Stunde ab.")
    );
    assert!(confirmation_email("nb", &ctx).text.contains("om 1 time."));
}

#[test]
fn every_language_survives_smtp() {
    let sink = SmtpSink::builder().without_starttls().start();
    let mailer = SmtpMailer::new(&SmtpConfig::parse(&sink.url()).unwrap()).unwrap();
    let languages = Lang::ALL.map(Lang::code);
    let mut sent = Vec::new();
    for lang in languages {
        let content = confirmation_email(lang, &context());
        let email = Email {
            from: Mailbox::new("hello@kahvila.example", "Kahvila Ilo"),
            to: "ann@example.com".into(),
            subject: content.subject,
            text: content.text,
            html: content.html,
            message_id: MessageId::new(&format!("confirm-{lang}")).unwrap(),
            list_unsubscribe: None,
        };
        mailer.send_email(&email).unwrap();
        sent.push(email);
    }
    let received = sink.wait_for(languages.len(), WAIT);
    for (mail, email) in received.iter().zip(&sent) {
        assert_eq!(mail.header("Subject").unwrap(), email.subject);
        assert_eq!(mail.text_body().unwrap(), email.text);
        assert_eq!(mail.html_body().unwrap(), email.html);
    }
}
