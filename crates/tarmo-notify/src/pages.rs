//! The sentences of the pages a person opens from Tarmo's messages
//! (confirmation, unsubscribe, the preference center, rights requests), in
//! the six languages of the templates. Each language is complete: a page in
//! one of them never falls back to English for its own words; only texts an
//! operator wrote (purpose names, notices) may, and the page marks those.
//!
//! `{org}` and `{days}` are filled in by the caller ([`fill_org`], [`fill_days`]).

use crate::templates::Lang;

/// One language's page sentences.
#[derive(Debug)]
pub struct PageTexts {
    pub confirm_title: &'static str,
    pub confirm_lead: &'static str,
    pub confirm_button: &'static str,
    pub confirmed_title: &'static str,
    pub confirmed_body: &'static str,
    pub used: &'static str,
    pub expired: &'static str,
    pub invalid: &'static str,
    pub unsub_title: &'static str,
    pub unsub_button: &'static str,
    pub unsubscribed: &'static str,
    pub prefs_title: &'static str,
    pub prefs_lead: &'static str,
    pub prefs_save: &'static str,
    pub prefs_saved: &'static str,
    pub gpc_note: &'static str,
    pub manage: &'static str,
    /// Heading over the purposes resting on consent.
    pub consents_title: &'static str,
    /// The consent box's label: "I allow this".
    pub allow_label: &'static str,
    /// Heading over the purposes resting on legitimate interests.
    pub objections_title: &'static str,
    pub objections_lead: &'static str,
    /// The objection box's label: "I object".
    pub object_label: &'static str,
    /// Shown instead of the box once the person has objected.
    pub objected_note: &'static str,
    /// Heading over what is done on a contract or a legal duty.
    pub necessary_title: &'static str,
    pub necessary_lead: &'static str,
    pub held_label: &'static str,
    pub channels_label: &'static str,
    /// Over the boxes of one purpose's channels (keep email, stop SMS).
    pub channel_choice: &'static str,
    pub recipients_label: &'static str,
    pub recipients_none: &'static str,
    /// `{days}`.
    pub retention: &'static str,
    pub controller_title: &'static str,
    /// `{org}`.
    pub controller_body: &'static str,
    pub contact_label: &'static str,
    pub dpo_label: &'static str,
    pub rights_title: &'static str,
    pub rights_lead: &'static str,
    pub access_button: &'static str,
    pub erase_button: &'static str,
    pub erase_note: &'static str,
    pub request_sent: &'static str,
    pub request_confirmed: &'static str,
    pub verify_lead: &'static str,
    pub verify_button: &'static str,
    pub download_link: &'static str,
}

impl Lang {
    /// This language's page sentences.
    pub fn page(self) -> &'static PageTexts {
        match self {
            Lang::En => &EN,
            Lang::Fi => &FI,
            Lang::De => &DE,
            Lang::Nb => &NB,
            Lang::He => &HE,
            Lang::Tr => &TR,
        }
    }

    /// `ltr` or `rtl`, for `dir`.
    pub fn dir(self) -> &'static str {
        if self.is_rtl() { "rtl" } else { "ltr" }
    }

    /// A data category in plain words, for the known ones.
    pub fn data_category(self, id: &str) -> Option<&'static str> {
        let i = CATEGORIES.iter().position(|c| *c == id)?;
        Some(self.rows(&CATEGORY_WORDS)[i])
    }

    /// A channel in plain words.
    pub fn channel(self, id: &str) -> Option<&'static str> {
        let i = CHANNELS.iter().position(|c| *c == id)?;
        Some(self.rows(&CHANNEL_WORDS)[i])
    }

    /// A kind of rights request in plain words.
    pub fn request_kind(self, id: &str) -> Option<&'static str> {
        let i = REQUEST_KINDS.iter().position(|c| *c == id)?;
        Some(self.rows(&REQUEST_WORDS)[i])
    }

    fn rows<const N: usize>(
        self,
        table: &'static [[&'static str; N]; 6],
    ) -> &'static [&'static str; N] {
        &table[Lang::ALL.iter().position(|l| *l == self).unwrap_or(0)]
    }
}

/// Whether text in `tag` (a BCP 47 tag) is written right to left.
pub fn tag_is_rtl(tag: &str) -> bool {
    matches!(
        tag.split(['-', '_']).next().unwrap_or_default(),
        "he" | "iw" | "ar" | "fa" | "ur" | "yi" | "ps" | "sd" | "ug" | "dv"
    )
}

/// Fills `{org}`.
pub fn fill_org(template: &str, org: &str) -> String {
    template.replace("{org}", org)
}

/// Fills `{days}`.
pub fn fill_days(template: &str, days: u32) -> String {
    template.replace("{days}", &days.to_string())
}

const CATEGORIES: [&str; 9] = [
    "contact",
    "address",
    "purchase_history",
    "behaviour",
    "identifiers",
    "profile",
    "traits",
    "location",
    "health",
];

// Rows in the order of `Lang::ALL`: en, fi, de, nb, he, tr.
const CATEGORY_WORDS: [[&str; 9]; 6] = [
    [
        "your email address and phone number",
        "your postal address",
        "what you have bought",
        "what you view on our site and in our app",
        "your customer numbers and account ids",
        "what you have told us about yourself",
        "what you have told us about yourself",
        "where you are",
        "information about your health",
    ],
    [
        "sähköpostiosoitteesi ja puhelinnumerosi",
        "postiosoitteesi",
        "mitä olet ostanut",
        "mitä katsot sivustollamme ja sovelluksessamme",
        "asiakasnumerosi ja tunnuksesi",
        "mitä olet kertonut itsestäsi",
        "mitä olet kertonut itsestäsi",
        "sijaintisi",
        "terveystietosi",
    ],
    [
        "Ihre E-Mail-Adresse und Telefonnummer",
        "Ihre Postanschrift",
        "was Sie gekauft haben",
        "was Sie sich auf unserer Website und in unserer App ansehen",
        "Ihre Kundennummern und Konto-IDs",
        "was Sie uns über sich gesagt haben",
        "was Sie uns über sich gesagt haben",
        "wo Sie sich befinden",
        "Angaben zu Ihrer Gesundheit",
    ],
    [
        "e-postadressen og telefonnummeret ditt",
        "postadressen din",
        "hva du har kjøpt",
        "hva du ser på i nettbutikken og appen vår",
        "kundenumrene og konto-ID-ene dine",
        "det du har fortalt oss om deg selv",
        "det du har fortalt oss om deg selv",
        "hvor du er",
        "opplysninger om helsen din",
    ],
    [
        "כתובת הדוא״ל ומספר הטלפון שלך",
        "הכתובת שלך למשלוח דואר",
        "מה שקנית",
        "מה שצפית בו באתר ובאפליקציה שלנו",
        "מספרי הלקוח והחשבון שלך",
        "מה שסיפרת לנו על עצמך",
        "מה שסיפרת לנו על עצמך",
        "המיקום שלך",
        "מידע על בריאותך",
    ],
    [
        "e-posta adresiniz ve telefon numaranız",
        "posta adresiniz",
        "satın aldıklarınız",
        "sitemizde ve uygulamamızda baktıklarınız",
        "müşteri numaralarınız ve hesap kimlikleriniz",
        "bize kendiniz hakkında anlattıklarınız",
        "bize kendiniz hakkında anlattıklarınız",
        "konumunuz",
        "sağlığınızla ilgili bilgiler",
    ],
];

const CHANNELS: [&str; 7] = ["email", "sms", "push", "phone", "post", "web", "ads"];

const CHANNEL_WORDS: [[&str; 7]; 6] = [
    [
        "email",
        "text message",
        "app notification",
        "phone call",
        "post",
        "our website",
        "ads on other sites",
    ],
    [
        "sähköposti",
        "tekstiviesti",
        "sovelluksen ilmoitus",
        "puhelu",
        "kirje",
        "verkkosivustomme",
        "mainokset muilla sivustoilla",
    ],
    [
        "E-Mail",
        "SMS",
        "App-Benachrichtigung",
        "Anruf",
        "Post",
        "unsere Website",
        "Anzeigen auf anderen Websites",
    ],
    [
        "e-post",
        "SMS",
        "varsel i appen",
        "telefonsamtale",
        "post",
        "nettstedet vårt",
        "annonser på andre nettsteder",
    ],
    [
        "דוא״ל",
        "הודעת SMS",
        "התראה באפליקציה",
        "שיחת טלפון",
        "דואר",
        "האתר שלנו",
        "מודעות באתרים אחרים",
    ],
    [
        "e-posta",
        "kısa mesaj",
        "uygulama bildirimi",
        "telefon araması",
        "posta",
        "web sitemiz",
        "başka sitelerdeki reklamlar",
    ],
];

const REQUEST_KINDS: [&str; 6] = [
    "access",
    "portability",
    "erasure",
    "rectification",
    "restriction",
    "objection",
];

const REQUEST_WORDS: [[&str; 6]; 6] = [
    [
        "a copy of your data",
        "your data in a portable format",
        "the erasure of all your data",
        "the correction of your data",
        "the restriction of processing",
        "an objection to processing",
    ],
    [
        "kopio tiedoistasi",
        "tietosi siirrettävässä muodossa",
        "kaikkien tietojesi poistaminen",
        "tietojesi oikaiseminen",
        "käsittelyn rajoittaminen",
        "käsittelyn vastustaminen",
    ],
    [
        "eine Kopie Ihrer Daten",
        "Ihre Daten in einem übertragbaren Format",
        "die Löschung aller Ihrer Daten",
        "die Berichtigung Ihrer Daten",
        "die Einschränkung der Verarbeitung",
        "ein Widerspruch gegen die Verarbeitung",
    ],
    [
        "en kopi av opplysningene dine",
        "opplysningene dine i et flyttbart format",
        "sletting av alle opplysningene dine",
        "retting av opplysningene dine",
        "begrensning av behandlingen",
        "en protest mot behandlingen",
    ],
    [
        "עותק של המידע שלך",
        "המידע שלך בפורמט נייד",
        "מחיקת כל המידע שלך",
        "תיקון המידע שלך",
        "הגבלת העיבוד",
        "התנגדות לעיבוד",
    ],
    [
        "verilerinizin bir kopyası",
        "taşınabilir biçimde verileriniz",
        "tüm verilerinizin silinmesi",
        "verilerinizin düzeltilmesi",
        "işlemenin kısıtlanması",
        "işlemeye itiraz",
    ],
];

const EN: PageTexts = PageTexts {
    confirm_title: "Please confirm",
    confirm_lead: "You asked to hear from us. Nothing is switched on until you press the button below. You agree to:",
    confirm_button: "Yes, I confirm",
    confirmed_title: "Thank you — confirmed",
    confirmed_body: "Your choice is recorded. You can change your mind at any time.",
    used: "This link was already used. Your earlier choice stands.",
    expired: "This link has expired. Please subscribe again to get a new one.",
    invalid: "This link is not valid.",
    unsub_title: "Unsubscribe",
    unsub_button: "Unsubscribe",
    unsubscribed: "You are unsubscribed. It took effect at once.",
    prefs_title: "Your choices",
    prefs_lead: "Here you see what we do with your data and change what you allow. A change takes effect at once.",
    prefs_save: "Save my choices",
    prefs_saved: "Saved. Your choices took effect at once.",
    gpc_note: "Your browser sends a Global Privacy Control signal: we have recorded it as an opt-out of sale and sharing. A choice you make here stands.",
    manage: "See and change all your choices",
    consents_title: "What you allow",
    allow_label: "I allow this",
    objections_title: "What we do without asking — you may object",
    objections_lead: "We do these on our legitimate interests, so we do not ask for your consent. You may object at any time, and we stop.",
    object_label: "I object",
    objected_note: "You have objected to this. We have stopped.",
    necessary_title: "What we must do",
    necessary_lead: "These are needed to deliver what you ordered or required by law. They cannot be switched off here.",
    held_label: "Data used",
    channels_label: "Reaches you by",
    channel_choice: "Channels you allow",
    recipients_label: "Shared with",
    recipients_none: "No one else",
    retention: "Kept for at most {days} days.",
    controller_title: "Who is responsible",
    controller_body: "{org} is the controller of your personal data: it decides what is done with it and answers for it.",
    contact_label: "Contact",
    dpo_label: "Data protection officer",
    rights_title: "Your data",
    rights_lead: "You may get a copy of everything we hold about you, or have it all erased. We send a link to your address to check the request is yours.",
    access_button: "Send me a copy of my data",
    erase_button: "Erase all my data",
    erase_note: "Erasure removes everything we hold about you and cannot be undone.",
    request_sent: "We sent a confirmation link to your address. The request goes ahead once you confirm it.",
    request_confirmed: "Your request is confirmed.",
    verify_lead: "Please confirm that you asked for",
    verify_button: "Yes, this is my request",
    download_link: "Download my data (ZIP file)",
};

const FI: PageTexts = PageTexts {
    confirm_title: "Vahvista, kiitos",
    confirm_lead: "Pyysit viestejämme. Mitään ei oteta käyttöön ennen kuin painat alla olevaa painiketta. Hyväksyt:",
    confirm_button: "Kyllä, vahvistan",
    confirmed_title: "Kiitos — vahvistettu",
    confirmed_body: "Valintasi on tallennettu. Voit muuttaa mieltäsi milloin tahansa.",
    used: "Tätä linkkiä on jo käytetty. Aiempi valintasi on voimassa.",
    expired: "Linkki on vanhentunut. Tilaa uudelleen saadaksesi uuden.",
    invalid: "Linkki ei ole kelvollinen.",
    unsub_title: "Peru tilaus",
    unsub_button: "Peru tilaus",
    unsubscribed: "Tilaus on peruttu. Muutos tuli voimaan heti.",
    prefs_title: "Valintasi",
    prefs_lead: "Tässä näet, mitä teemme tiedoillasi, ja voit muuttaa, mitä sallit. Muutos tulee voimaan heti.",
    prefs_save: "Tallenna valintani",
    prefs_saved: "Tallennettu. Valintasi tulivat voimaan heti.",
    gpc_note: "Selaimesi lähettää Global Privacy Control -signaalin: olemme kirjanneet sen kieltona myydä tai jakaa tietojasi. Tällä sivulla tekemäsi valinta on voimassa.",
    manage: "Katso ja muuta kaikkia valintojasi",
    consents_title: "Mitä sallit",
    allow_label: "Sallin tämän",
    objections_title: "Mitä teemme kysymättä — voit vastustaa",
    objections_lead: "Teemme nämä oikeutetun etumme perusteella, joten emme kysy suostumustasi. Voit vastustaa milloin tahansa, ja lopetamme.",
    object_label: "Vastustan",
    objected_note: "Olet vastustanut tätä. Olemme lopettaneet.",
    necessary_title: "Mitä meidän on tehtävä",
    necessary_lead: "Nämä tarvitaan tilaamasi toimittamiseen tai laki vaatii ne. Niitä ei voi kytkeä pois tällä sivulla.",
    held_label: "Käytetyt tiedot",
    channels_label: "Tavoittaa sinut",
    channel_choice: "Kanavat, jotka sallit",
    recipients_label: "Jaetaan",
    recipients_none: "Ei kenellekään muulle",
    retention: "Säilytetään enintään {days} päivää.",
    controller_title: "Kuka vastaa tiedoistasi",
    controller_body: "{org} on henkilötietojesi rekisterinpitäjä: se päättää, mitä niillä tehdään, ja vastaa siitä.",
    contact_label: "Yhteystiedot",
    dpo_label: "Tietosuojavastaava",
    rights_title: "Tietosi",
    rights_lead: "Voit saada kopion kaikista sinusta säilyttämistämme tiedoista tai poistattaa ne kaikki. Lähetämme osoitteeseesi linkin, jolla varmistamme, että pyyntö on sinun.",
    access_button: "Lähetä minulle kopio tiedoistani",
    erase_button: "Poista kaikki tietoni",
    erase_note: "Poistaminen hävittää kaiken, mitä sinusta säilytämme, eikä sitä voi perua.",
    request_sent: "Lähetimme vahvistuslinkin osoitteeseesi. Pyyntö etenee, kun vahvistat sen.",
    request_confirmed: "Pyyntösi on vahvistettu.",
    verify_lead: "Vahvista, että pyysit",
    verify_button: "Kyllä, tämä on minun pyyntöni",
    download_link: "Lataa tietoni (ZIP-tiedosto)",
};

const DE: PageTexts = PageTexts {
    confirm_title: "Bitte bestätigen",
    confirm_lead: "Sie möchten von uns hören. Nichts wird aktiviert, bevor Sie auf die Schaltfläche unten klicken. Sie stimmen zu:",
    confirm_button: "Ja, ich bestätige",
    confirmed_title: "Danke — bestätigt",
    confirmed_body: "Ihre Wahl ist gespeichert. Sie können sie jederzeit ändern.",
    used: "Dieser Link wurde bereits verwendet. Ihre frühere Wahl gilt weiter.",
    expired: "Dieser Link ist abgelaufen. Bitte melden Sie sich erneut an.",
    invalid: "Dieser Link ist ungültig.",
    unsub_title: "Abmelden",
    unsub_button: "Abmelden",
    unsubscribed: "Sie sind abgemeldet. Das gilt ab sofort.",
    prefs_title: "Ihre Einstellungen",
    prefs_lead: "Hier sehen Sie, was wir mit Ihren Daten tun, und ändern, was Sie erlauben. Eine Änderung gilt sofort.",
    prefs_save: "Einstellungen speichern",
    prefs_saved: "Gespeichert. Ihre Einstellungen gelten ab sofort.",
    gpc_note: "Ihr Browser sendet ein Global-Privacy-Control-Signal: Wir haben es als Widerspruch gegen Verkauf und Weitergabe erfasst. Eine Wahl, die Sie hier treffen, gilt.",
    manage: "Alle Einstellungen ansehen und ändern",
    consents_title: "Was Sie erlauben",
    allow_label: "Ich erlaube das",
    objections_title: "Was wir ohne Nachfrage tun — Sie können widersprechen",
    objections_lead: "Das tun wir aufgrund unseres berechtigten Interesses, daher fragen wir nicht nach Ihrer Einwilligung. Sie können jederzeit widersprechen, dann hören wir auf.",
    object_label: "Ich widerspreche",
    objected_note: "Sie haben widersprochen. Wir haben damit aufgehört.",
    necessary_title: "Was wir tun müssen",
    necessary_lead: "Das ist nötig, um Ihre Bestellungen zu liefern, oder gesetzlich vorgeschrieben. Es lässt sich hier nicht abschalten.",
    held_label: "Verwendete Daten",
    channels_label: "Erreicht Sie per",
    channel_choice: "Kanäle, die Sie erlauben",
    recipients_label: "Weitergegeben an",
    recipients_none: "Niemanden sonst",
    retention: "Höchstens {days} Tage aufbewahrt.",
    controller_title: "Wer verantwortlich ist",
    controller_body: "{org} ist für Ihre personenbezogenen Daten verantwortlich: entscheidet, was mit ihnen geschieht, und steht dafür ein.",
    contact_label: "Kontakt",
    dpo_label: "Datenschutzbeauftragte Stelle",
    rights_title: "Ihre Daten",
    rights_lead: "Sie können eine Kopie aller Daten erhalten, die wir über Sie speichern, oder alle löschen lassen. Wir senden einen Link an Ihre Adresse, um zu prüfen, dass die Anfrage von Ihnen kommt.",
    access_button: "Eine Kopie meiner Daten senden",
    erase_button: "Alle meine Daten löschen",
    erase_note: "Das Löschen entfernt alles, was wir über Sie speichern, und lässt sich nicht rückgängig machen.",
    request_sent: "Wir haben einen Bestätigungslink an Ihre Adresse geschickt. Die Anfrage wird bearbeitet, sobald Sie ihn bestätigen.",
    request_confirmed: "Ihre Anfrage ist bestätigt.",
    verify_lead: "Bitte bestätigen Sie, dass Sie Folgendes angefragt haben:",
    verify_button: "Ja, das ist meine Anfrage",
    download_link: "Meine Daten herunterladen (ZIP-Datei)",
};

const NB: PageTexts = PageTexts {
    confirm_title: "Vennligst bekreft",
    confirm_lead: "Du ba om å høre fra oss. Ingenting slås på før du trykker på knappen under. Du samtykker til:",
    confirm_button: "Ja, jeg bekrefter",
    confirmed_title: "Takk — bekreftet",
    confirmed_body: "Valget ditt er lagret. Du kan ombestemme deg når som helst.",
    used: "Denne lenken er allerede brukt. Det tidligere valget ditt gjelder.",
    expired: "Denne lenken er utløpt. Meld deg på igjen for å få en ny.",
    invalid: "Denne lenken er ikke gyldig.",
    unsub_title: "Meld av",
    unsub_button: "Meld av",
    unsubscribed: "Du er meldt av. Det gjelder fra nå.",
    prefs_title: "Dine valg",
    prefs_lead: "Her ser du hva vi gjør med opplysningene dine, og endrer hva du tillater. En endring gjelder med en gang.",
    prefs_save: "Lagre valgene mine",
    prefs_saved: "Lagret. Valgene dine gjelder med en gang.",
    gpc_note: "Nettleseren din sender et Global Privacy Control-signal: vi har registrert det som et nei til salg og deling. Et valg du gjør her, gjelder.",
    manage: "Se og endre alle valgene dine",
    consents_title: "Hva du tillater",
    allow_label: "Jeg tillater dette",
    objections_title: "Hva vi gjør uten å spørre — du kan protestere",
    objections_lead: "Dette gjør vi på grunnlag av en berettiget interesse, så vi ber ikke om samtykke. Du kan protestere når som helst, og da stopper vi.",
    object_label: "Jeg protesterer",
    objected_note: "Du har protestert mot dette. Vi har stoppet.",
    necessary_title: "Hva vi må gjøre",
    necessary_lead: "Dette trengs for å levere det du har bestilt, eller kreves av loven. Det kan ikke slås av her.",
    held_label: "Opplysninger som brukes",
    channels_label: "Når deg via",
    channel_choice: "Kanaler du tillater",
    recipients_label: "Deles med",
    recipients_none: "Ingen andre",
    retention: "Lagres i høyst {days} dager.",
    controller_title: "Hvem som er ansvarlig",
    controller_body: "{org} er behandlingsansvarlig for personopplysningene dine: bestemmer hva som gjøres med dem, og står ansvarlig for det.",
    contact_label: "Kontakt",
    dpo_label: "Personvernombud",
    rights_title: "Dine opplysninger",
    rights_lead: "Du kan få en kopi av alt vi har om deg, eller få alt slettet. Vi sender en lenke til adressen din for å sjekke at forespørselen er din.",
    access_button: "Send meg en kopi av opplysningene mine",
    erase_button: "Slett alle opplysningene mine",
    erase_note: "Sletting fjerner alt vi har om deg og kan ikke angres.",
    request_sent: "Vi har sendt en bekreftelseslenke til adressen din. Forespørselen går videre når du bekrefter den.",
    request_confirmed: "Forespørselen din er bekreftet.",
    verify_lead: "Bekreft at du ba om",
    verify_button: "Ja, dette er min forespørsel",
    download_link: "Last ned opplysningene mine (ZIP-fil)",
};

// Worded without gendered verb forms where it can be (infinitives and
// nouns), as in the Hebrew email.
const HE: PageTexts = PageTexts {
    confirm_title: "נא לאשר",
    confirm_lead: "ביקשת לשמוע מאיתנו. דבר לא יופעל לפני לחיצה על הכפתור למטה. ההסכמה היא ל:",
    confirm_button: "כן, מאשר/ת",
    confirmed_title: "תודה — אושר",
    confirmed_body: "הבחירה שלך נשמרה. אפשר לשנות אותה בכל עת.",
    used: "הקישור הזה כבר נוצל. הבחירה הקודמת שלך בתוקף.",
    expired: "תוקף הקישור פג. נא להירשם שוב כדי לקבל קישור חדש.",
    invalid: "הקישור אינו תקף.",
    unsub_title: "ביטול הרשמה",
    unsub_button: "ביטול הרשמה",
    unsubscribed: "ההרשמה בוטלה. השינוי נכנס לתוקף מיד.",
    prefs_title: "הבחירות שלך",
    prefs_lead: "כאן רואים מה אנו עושים במידע שלך ומשנים את מה שמותר לנו. שינוי נכנס לתוקף מיד.",
    prefs_save: "שמירת הבחירות שלי",
    prefs_saved: "נשמר. הבחירות שלך נכנסו לתוקף מיד.",
    gpc_note: "הדפדפן שלך שולח אות Global Privacy Control: רשמנו אותו כהתנגדות למכירה ולשיתוף. בחירה שנעשית כאן תקפה.",
    manage: "צפייה בכל הבחירות שלך ושינוין",
    consents_title: "מה מותר לנו",
    allow_label: "מותר",
    objections_title: "מה שאנו עושים בלי לשאול — אפשר להתנגד",
    objections_lead: "אנו עושים זאת על סמך אינטרס לגיטימי, ולכן איננו מבקשים את הסכמתך. אפשר להתנגד בכל עת, ואז נפסיק.",
    object_label: "התנגדות",
    objected_note: "נרשמה התנגדותך לכך. הפסקנו.",
    necessary_title: "מה שעלינו לעשות",
    necessary_lead: "אלה נחוצים כדי לספק את מה שהוזמן או נדרשים לפי חוק. אי אפשר לכבות אותם כאן.",
    held_label: "המידע שבשימוש",
    channels_label: "מגיע אליך ב",
    channel_choice: "הערוצים המותרים",
    recipients_label: "משותף עם",
    recipients_none: "אף אחד אחר",
    retention: "נשמר לכל היותר {days} ימים.",
    controller_title: "מי אחראי",
    controller_body: "{org} הוא בעל השליטה במידע האישי שלך: מחליט מה ייעשה בו ואחראי לכך.",
    contact_label: "יצירת קשר",
    dpo_label: "ממונה הגנת פרטיות",
    rights_title: "המידע שלך",
    rights_lead: "אפשר לקבל עותק של כל מה שאנו מחזיקים עליך, או למחוק הכול. נשלח קישור לכתובת שלך כדי לוודא שהבקשה שלך.",
    access_button: "שליחת עותק של המידע שלי",
    erase_button: "מחיקת כל המידע שלי",
    erase_note: "מחיקה מסירה את כל מה שאנו מחזיקים עליך ואי אפשר לבטל אותה.",
    request_sent: "שלחנו קישור אישור לכתובת שלך. הבקשה תטופל לאחר האישור.",
    request_confirmed: "הבקשה שלך אושרה.",
    verify_lead: "נא לאשר שביקשת",
    verify_button: "כן, זו הבקשה שלי",
    download_link: "הורדת המידע שלי (קובץ ZIP)",
};

const TR: PageTexts = PageTexts {
    confirm_title: "Lütfen onaylayın",
    confirm_lead: "Bizden haber almak istediniz. Aşağıdaki düğmeye basana kadar hiçbir şey etkinleşmez. Onay verdiğiniz:",
    confirm_button: "Evet, onaylıyorum",
    confirmed_title: "Teşekkürler — onaylandı",
    confirmed_body: "Seçiminiz kaydedildi. Fikrinizi istediğiniz zaman değiştirebilirsiniz.",
    used: "Bu bağlantı zaten kullanıldı. Önceki seçiminiz geçerli.",
    expired: "Bu bağlantının süresi doldu. Yeni bir bağlantı için yeniden abone olun.",
    invalid: "Bu bağlantı geçerli değil.",
    unsub_title: "Abonelikten çık",
    unsub_button: "Abonelikten çık",
    unsubscribed: "Abonelikten çıktınız. Hemen geçerli oldu.",
    prefs_title: "Seçimleriniz",
    prefs_lead: "Burada verilerinizle ne yaptığımızı görür ve neye izin verdiğinizi değiştirirsiniz. Değişiklik hemen geçerli olur.",
    prefs_save: "Seçimlerimi kaydet",
    prefs_saved: "Kaydedildi. Seçimleriniz hemen geçerli oldu.",
    gpc_note: "Tarayıcınız Global Privacy Control sinyali gönderiyor: bunu satış ve paylaşıma itiraz olarak kaydettik. Burada yaptığınız seçim geçerlidir.",
    manage: "Tüm seçimlerinizi görün ve değiştirin",
    consents_title: "İzin verdikleriniz",
    allow_label: "Buna izin veriyorum",
    objections_title: "Sormadan yaptıklarımız — itiraz edebilirsiniz",
    objections_lead: "Bunları meşru menfaatimize dayanarak yaparız, bu yüzden onayınızı istemeyiz. İstediğiniz zaman itiraz edebilirsiniz, o zaman dururuz.",
    object_label: "İtiraz ediyorum",
    objected_note: "Buna itiraz ettiniz. Durdurduk.",
    necessary_title: "Yapmak zorunda olduklarımız",
    necessary_lead: "Bunlar siparişinizi teslim etmek için gereklidir ya da yasa gereğidir. Burada kapatılamazlar.",
    held_label: "Kullanılan veriler",
    channels_label: "Size ulaştığı yol",
    channel_choice: "İzin verdiğiniz kanallar",
    recipients_label: "Paylaşıldığı taraflar",
    recipients_none: "Başka kimse",
    retention: "En fazla {days} gün saklanır.",
    controller_title: "Sorumlu kim",
    controller_body: "Kişisel verilerinizin veri sorumlusu {org}: verilerle ne yapılacağına karar verir ve bundan sorumludur.",
    contact_label: "İletişim",
    dpo_label: "Veri koruma görevlisi",
    rights_title: "Verileriniz",
    rights_lead: "Hakkınızda tuttuğumuz her şeyin bir kopyasını alabilir ya da hepsini sildirebilirsiniz. Talebin size ait olduğunu doğrulamak için adresinize bir bağlantı göndeririz.",
    access_button: "Verilerimin bir kopyasını gönder",
    erase_button: "Tüm verilerimi sil",
    erase_note: "Silme, hakkınızda tuttuğumuz her şeyi kaldırır ve geri alınamaz.",
    request_sent: "Adresinize bir onay bağlantısı gönderdik. Talep, onayladığınızda işleme alınır.",
    request_confirmed: "Talebiniz onaylandı.",
    verify_lead: "Lütfen şunu istediğinizi onaylayın:",
    verify_button: "Evet, bu benim talebim",
    download_link: "Verilerimi indir (ZIP dosyası)",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_every_word() {
        for l in Lang::ALL {
            for c in CATEGORIES {
                assert!(l.data_category(c).is_some_and(|w| !w.is_empty()));
            }
            for c in CHANNELS {
                assert!(l.channel(c).is_some_and(|w| !w.is_empty()));
            }
            for k in REQUEST_KINDS {
                assert!(l.request_kind(k).is_some_and(|w| !w.is_empty()));
            }
            let t = l.page();
            assert!(t.controller_body.contains("{org}"), "{l:?}");
            assert!(t.retention.contains("{days}"), "{l:?}");
        }
        // Each language's sentences are its own, not English copied in.
        for l in &Lang::ALL[1..] {
            let (t, en) = (l.page(), Lang::En.page());
            assert_ne!(t.rights_title, en.rights_title, "{l:?}");
            assert_ne!(t.object_label, en.object_label, "{l:?}");
            assert_ne!(t.access_button, en.access_button, "{l:?}");
            assert_ne!(t.controller_title, en.controller_title, "{l:?}");
        }
        assert_eq!(Lang::Fi.data_category("nope"), None);
        assert!(tag_is_rtl("he-IL") && !tag_is_rtl("en"));
        assert_eq!(fill_days(EN.retention, 30), "Kept for at most 30 days.");
    }
}
