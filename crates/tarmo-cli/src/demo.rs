//! `tarmo demo`: a new data directory holding a believable shop, then
//! served. Everything goes in through the public API, as a shop's own
//! systems would send it: the SDK batch route for behaviour (with TCF
//! strings and GPC signals), the consent, subscription, request, processor
//! and segment routes for the rest. The same seed makes the same shop.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tarmo_tcf::{
    CmpId, CmpVersion, ConsentScreen, CountryCode, Deciseconds, LanguageCode, PolicyVersion,
    PublisherRestrictions, PurposeSet, SpecialFeatureSet, TcString, VendorListVersion, VendorSet,
};

use crate::{Common, ServeArgs, is_initialised, open_store, settings_with};

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on.
    #[arg(long, env = "TARMO_LISTEN")]
    listen: Option<String>,
    /// How many customers the shop has (10 to 1,000,000).
    #[arg(long, default_value_t = 10_000)]
    customers: u32,
    /// The same seed makes the same shop.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

/// A small, fast, deterministic generator (SplitMix64): demo data needs
/// variety, not unpredictability.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

struct Country {
    code: &'static str,
    language: &'static str,
    timezone: &'static str,
    /// Share of customers, in percent.
    weight: u64,
    first: &'static [&'static str],
    last: &'static [&'static str],
    cities: &'static [&'static str],
    /// A mobile prefix in E.164 and how many digits follow.
    mobile: (&'static str, u32),
}

const COUNTRIES: &[Country] = &[
    Country {
        code: "FI",
        language: "fi",
        timezone: "Europe/Helsinki",
        weight: 40,
        first: &[
            "Aino", "Eino", "Helmi", "Väinö", "Sofia", "Onni", "Aada", "Leevi", "Ilona", "Juho",
        ],
        last: &[
            "Virtanen",
            "Korhonen",
            "Mäkinen",
            "Nieminen",
            "Hämäläinen",
            "Laine",
            "Koskinen",
            "Järvinen",
            "Lehtonen",
            "Heikkinen",
        ],
        cities: &[
            "Helsinki",
            "Tampere",
            "Turku",
            "Oulu",
            "Jyväskylä",
            "Kuopio",
        ],
        mobile: ("+35840", 7),
    },
    Country {
        code: "DE",
        language: "de",
        timezone: "Europe/Berlin",
        weight: 15,
        first: &[
            "Lena", "Jonas", "Mia", "Lukas", "Hannah", "Felix", "Emilia", "Paul", "Jürgen", "Anke",
        ],
        last: &[
            "Müller",
            "Schmidt",
            "Schneider",
            "Fischer",
            "Weber",
            "Meyer",
            "Wagner",
            "Becker",
            "Schulz",
            "Hoffmann",
        ],
        cities: &["Berlin", "Hamburg", "München", "Köln", "Leipzig"],
        mobile: ("+49151", 8),
    },
    Country {
        code: "NO",
        language: "nb",
        timezone: "Europe/Oslo",
        weight: 15,
        first: &[
            "Nora", "Jakob", "Ingrid", "Emil", "Sigrid", "Filip", "Astrid", "Håkon", "Maja", "Ola",
        ],
        last: &[
            "Hansen",
            "Johansen",
            "Olsen",
            "Larsen",
            "Andersen",
            "Pedersen",
            "Nilsen",
            "Kristiansen",
            "Jensen",
            "Karlsen",
        ],
        cities: &["Oslo", "Bergen", "Trondheim", "Stavanger", "Tromsø"],
        mobile: ("+474", 7),
    },
    Country {
        code: "IL",
        language: "he",
        timezone: "Asia/Jerusalem",
        weight: 10,
        first: &[
            "נועה",
            "אורי",
            "מאיה",
            "יונתן",
            "תמר",
            "איתי",
            "שירה",
            "דניאל",
            "רוני",
            "עומר",
        ],
        last: &[
            "כהן",
            "לוי",
            "מזרחי",
            "פרץ",
            "ביטון",
            "דהן",
            "אברהם",
            "פרידמן",
            "אזולאי",
            "כץ",
        ],
        cities: &["תל אביב", "ירושלים", "חיפה", "באר שבע"],
        mobile: ("+97252", 7),
    },
    Country {
        code: "TR",
        language: "tr",
        timezone: "Europe/Istanbul",
        weight: 10,
        first: &[
            "Zeynep", "Yusuf", "Elif", "Mustafa", "Ayşe", "Emir", "Defne", "Ömer", "Ebru", "Çağan",
        ],
        last: &[
            "Yılmaz",
            "Kaya",
            "Demir",
            "Şahin",
            "Çelik",
            "Yıldız",
            "Yıldırım",
            "Öztürk",
            "Aydın",
            "Özdemir",
        ],
        cities: &["İstanbul", "Ankara", "İzmir", "Bursa", "Antalya"],
        mobile: ("+90532", 7),
    },
    Country {
        code: "GB",
        language: "en",
        timezone: "Europe/London",
        weight: 10,
        first: &[
            "Olivia", "George", "Amelia", "Harry", "Isla", "Oliver", "Ava", "Jack", "Freya", "Noah",
        ],
        last: &[
            "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Davies", "Evans", "Thomas",
            "Roberts",
        ],
        cities: &["London", "Manchester", "Leeds", "Bristol", "Edinburgh"],
        // Ofcom's range for drama: never a real subscriber.
        mobile: ("+447700900", 3),
    },
];

/// The shop: outdoor gear (id, name, category, price in euros).
const PRODUCTS: &[(&str, &str, &str, u64)] = &[
    ("p-101", "Trail running shoe", "shoes", 129),
    ("p-102", "Winter boot", "shoes", 189),
    ("p-103", "Hiking sandal", "shoes", 79),
    ("p-104", "Rubber boot", "shoes", 69),
    ("p-201", "Down jacket", "jackets", 249),
    ("p-202", "Rain shell", "jackets", 199),
    ("p-203", "Fleece midlayer", "jackets", 89),
    ("p-204", "Softshell jacket", "jackets", 159),
    ("p-301", "Daypack 24 l", "backpacks", 99),
    ("p-302", "Trekking pack 60 l", "backpacks", 219),
    ("p-303", "Hip bag", "backpacks", 39),
    ("p-401", "Two-person tent", "tents", 329),
    ("p-402", "Ultralight tarp", "tents", 119),
    ("p-403", "Sleeping bag −10 °C", "tents", 279),
    ("p-501", "Wool beanie", "accessories", 29),
    ("p-502", "Merino socks", "accessories", 19),
    ("p-503", "Headlamp", "accessories", 49),
    ("p-504", "Thermos 0.75 l", "accessories", 35),
];

/// The catalogue's Finnish names (the till prints them).
const FINNISH_NAMES: &[(&str, &str)] = &[
    ("p-101", "Polkujuoksukenkä"),
    ("p-102", "Talvikenkä"),
    ("p-201", "Untuvatakki"),
    ("p-202", "Sadetakki"),
    ("p-301", "Päiväreppu 24 l"),
    ("p-401", "Kahden hengen teltta"),
    ("p-403", "Makuupussi −10 °C"),
    ("p-502", "Merinovillasukat"),
];

/// The shops the till knows (id, name, city, latitude, longitude).
const STORES: &[(&str, &str, &str, f64, f64)] = &[
    (
        "helsinki-1",
        "Tarmo Outdoor Kamppi",
        "Helsinki",
        60.1699,
        24.9384,
    ),
    (
        "tampere-1",
        "Tarmo Outdoor Tampere",
        "Tampere",
        61.4978,
        23.7610,
    ),
    ("oulu-1", "Tarmo Outdoor Oulu", "Oulu", 65.0121, 25.4651),
];

const DAY_MS: i64 = 86_400_000;
const BATCH: usize = 200;

/// A TC string as a CMP writes it: purposes consented and standing on
/// legitimate interests.
fn tc_string(consents: &[u8], legitimate_interests: &[u8], country: &str, stamp: u64) -> String {
    TcString {
        created: Deciseconds::new(17_300_000_000).expect("a valid time"),
        last_updated: Deciseconds::new(17_300_000_000 + stamp).expect("a valid time"),
        cmp_id: CmpId::new(300).expect("a valid CMP id"),
        cmp_version: CmpVersion::new(7).expect("a valid version"),
        consent_screen: ConsentScreen::new(1).expect("a valid screen"),
        consent_language: LanguageCode::parse(if country == "GB" { "EN" } else { "FI" })
            .expect("a language"),
        vendor_list_version: VendorListVersion::new(90).expect("a version"),
        policy_version: PolicyVersion::new(4).expect("a policy version"),
        is_service_specific: true,
        use_non_standard_texts: false,
        special_feature_optins: SpecialFeatureSet::new(),
        purpose_consents: PurposeSet::from_ids(consents.iter().copied()).expect("purposes"),
        purpose_legitimate_interests: PurposeSet::from_ids(legitimate_interests.iter().copied())
            .expect("purposes"),
        purpose_one_treatment: false,
        publisher_country_code: CountryCode::parse("FI").expect("a country"),
        vendor_consents: VendorSet::new(),
        vendor_legitimate_interests: VendorSet::new(),
        publisher_restrictions: PublisherRestrictions::new(),
        vendors_disclosed: None,
        publisher_tc: None,
    }
    .encode()
}

fn iso(ms: i64) -> String {
    tarmo_store::rfc3339(ms)
}

/// Plain ASCII for an email address's local part.
fn ascii(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            'ä' | 'Ä' => Some('a'),
            'ö' | 'Ö' | 'ø' | 'Ø' => Some('o'),
            'å' | 'Å' => Some('a'),
            'ü' | 'Ü' => Some('u'),
            'ş' | 'Ş' => Some('s'),
            'ç' | 'Ç' => Some('c'),
            'ğ' => Some('g'),
            'ı' | 'İ' => Some('i'),
            c if c.is_ascii_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

struct Person {
    user_id: String,
    email: String,
    language: &'static str,
}

/// The shop's HTTP client: the admin key for the API, a server write key
/// for the SDK route.
struct Api {
    base: String,
    admin: String,
    write: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.admin);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.map(|b| b.to_string()).unwrap_or_default().as_bytes()),
        };
        answer(resp, method, path)
    }

    fn batch(&self, messages: Vec<Value>, gpc: bool) -> anyhow::Result<()> {
        // The SDKs retry on 429 and 503; so does the shop.
        let body = json!({ "batch": messages }).to_string();
        for attempt in 0.. {
            let mut r = self
                .agent
                .post(format!("{}/v1/batch", self.base))
                .header("Authorization", &basic(&self.write))
                .header("Content-Type", "application/json");
            if gpc {
                r = r.header("Sec-GPC", "1");
            }
            match r.send(body.as_bytes()) {
                Ok(resp) if matches!(resp.status().as_u16(), 429 | 503) && attempt < 50 => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => {
                    answer(other, "POST", "/v1/batch")?;
                    break;
                }
            }
        }
        Ok(())
    }
}

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

fn answer(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    method: &str,
    path: &str,
) -> anyhow::Result<Value> {
    let mut resp = resp.with_context(|| format!("{method} {path}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if !(200..300).contains(&status) {
        bail!("{method} {path} answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

struct Progress {
    tty: bool,
    start: Instant,
}

impl Progress {
    fn show(&self, what: &str, done: u64, total: u64) {
        if self.tty {
            eprint!("\r  {what}: {done}/{total}   ");
            let _ = std::io::stderr().flush();
            if done == total {
                eprintln!();
            }
        } else if done == total {
            eprintln!(
                "  {what}: {total} ({:.1} s)",
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    if !(10..=1_000_000).contains(&a.customers) {
        bail!("--customers must be between 10 and 1,000,000");
    }
    let s = settings_with(&a.common, a.listen.clone(), ServeArgs::default())?;
    if s.database_url.is_some() {
        bail!("`tarmo demo` makes an embedded store; leave out --database-url");
    }
    if is_initialised(&s) || s.data_dir.join(tarmo_store::SQLITE_FILE).exists() {
        bail!(
            "{} already holds a store; the demo makes a new one (choose another --data-dir)",
            s.data_dir.display()
        );
    }
    let keys = crate::init(&s)?;
    let password = {
        let store = open_store(&s)?;
        let bytes: [u8; 12] = store.vault().random()?;
        let password = hex::encode(bytes);
        for (name, role) in [
            ("demo-admin", "admin"),
            ("demo-support", "support"),
            ("demo-marketer", "marketer"),
            ("demo-dpo", "dpo"),
        ] {
            store.transact_direct(|c, v| {
                tarmo_store::keys::create_user(
                    c,
                    v,
                    name,
                    &password,
                    &[role.to_owned()],
                    &[],
                    tarmo_store::now_ms(),
                )
            })?;
        }
        password
    };
    let listen = s.listen.clone();
    let customers = a.customers;
    let seed = a.seed;
    let admin = keys.admin.clone();
    let feeder = std::thread::spawn(move || -> anyhow::Result<()> {
        let base = format!("http://{listen}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let started = Instant::now();
        loop {
            if agent.get(format!("{base}/healthz")).call().is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the server did not answer on {base}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut api = Api {
            base: base.clone(),
            admin,
            write: String::new(),
            agent,
        };
        let key = api.call(
            "POST",
            "/api/v1/keys",
            Some(&json!({"roles": ["ingest"], "trust": "server", "name": "demo shop back end"})),
        )?;
        api.write = key["key"].as_str().unwrap_or_default().to_owned();
        seed_shop(&api, customers, seed)?;
        eprintln!(
            "\nStaff accounts (password {password}): demo-admin, demo-support, demo-marketer, demo-dpo.\n\
             API: Authorization: Bearer {}\n\
             The demo shop is ready at {base}/ ({customers} customers).",
            api.admin
        );
        Ok(())
    });
    crate::print_keys(&keys, false);
    eprintln!("making the demo shop in {} ...", s.data_dir.display());
    // The feeder fills the shop through the API while the server runs; a
    // failure of the feeder is said, and the server goes on with what it has.
    std::thread::spawn(move || match feeder.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("error: making the demo shop: {e:#}"),
        Err(_) => eprintln!("error: making the demo shop: the feeder panicked"),
    });
    crate::serve(s)
}

fn seed_shop(api: &Api, customers: u32, seed: u64) -> anyhow::Result<()> {
    let mut rng = Rng(seed);
    let now = tarmo_store::now_ms();
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
        start: Instant::now(),
    };

    // Processors, before any export or audience names them.
    api.call(
        "POST",
        "/api/v1/processors",
        Some(&json!({
            "name": "Postilaatikko Oy", "role": "email delivery", "country": "FI",
            "dpa_reference": "DPA-2025-014", "dpa_signed_on": "2025-03-01",
            "purposes": ["email_marketing"], "data_categories": ["contact"]
        })),
    )?;
    api.call(
        "POST",
        "/api/v1/processors",
        Some(&json!({
            "name": "Viestikaista SMS", "role": "SMS delivery", "country": "SE",
            "dpa_reference": "DPA-2025-022", "dpa_signed_on": "2025-04-15",
            "purposes": ["sms_marketing"], "data_categories": ["contact"]
        })),
    )?;

    // Customers with two years of behaviour: identify, product views,
    // orders, and a few anonymous visits that later log in.
    let total_weight: u64 = COUNTRIES.iter().map(|c| c.weight).sum();
    let mut people = Vec::with_capacity(customers as usize);
    let mut batch: Vec<Value> = Vec::with_capacity(BATCH + 40);
    let mut gpc_batch: Vec<Value> = Vec::new();
    let mut order_no = 10_000u64;
    for i in 0..customers {
        let mut w = rng.below(total_weight);
        let country = COUNTRIES
            .iter()
            .find(|c| {
                if w < c.weight {
                    true
                } else {
                    w -= c.weight;
                    false
                }
            })
            .unwrap_or(&COUNTRIES[0]);
        let first = *rng.pick(country.first);
        let last = *rng.pick(country.last);
        let user_id = format!("cust-{:06}", i + 1);
        let domain = rng.pick(&["example.com", "example.org", "example.net"]);
        let email = if country.code == "IL" {
            format!("customer{}@{domain}", i + 1)
        } else {
            format!("{}.{}{}@{domain}", ascii(first), ascii(last), i + 1)
        };
        let (prefix, digits) = country.mobile;
        let phone = format!(
            "{prefix}{:0width$}",
            rng.below(10u64.pow(digits)),
            width = digits as usize
        );
        let born = format!(
            "{}-{:02}-{:02}",
            1950 + rng.below(55),
            1 + rng.below(12),
            1 + rng.below(28)
        );
        let joined = now - (rng.below(700) as i64 + 30) * DAY_MS;
        let gpc = rng.chance(4);
        let tcf = if rng.chance(30) {
            Some(if rng.chance(70) {
                tc_string(
                    &(1..=11).collect::<Vec<_>>(),
                    &[2, 7, 8, 9, 10],
                    country.code,
                    i as u64,
                )
            } else {
                tc_string(&[1], &[], country.code, i as u64)
            })
        } else {
            None
        };
        let anon = format!("anon-{:06}", i + 1);
        let mut msgs = Vec::new();
        msgs.push(json!({
            "type": "page", "anonymousId": anon, "name": "Home",
            "properties": {"path": "/", "title": "Tarmo Outdoor"},
            "timestamp": iso(joined - 3_600_000),
        }));
        let mut identify = json!({
            "type": "identify", "userId": user_id, "anonymousId": anon,
            "traits": {
                "first_name": first, "last_name": last, "email": email, "phone": phone,
                "city": rng.pick(country.cities), "country": country.code,
                "language": country.language, "timezone": country.timezone,
                "birthday": born,
                "loyalty_tier": rng.pick(&["bronze", "bronze", "silver", "gold"]),
            },
            "timestamp": iso(joined),
        });
        if let Some(tc) = &tcf {
            identify["context"] = json!({"consent": {"tcString": tc}});
        }
        msgs.push(identify);
        // Buyers and browsers: a few heavy buyers, many occasional ones,
        // some who only look.
        let orders = match rng.below(10) {
            0..=2 => 0,
            3..=6 => 1 + rng.below(3),
            7..=8 => 3 + rng.below(5),
            _ => 8 + rng.below(12),
        };
        let views = 2 + rng.below(15);
        let span = (now - joined).max(DAY_MS);
        for _ in 0..views {
            let (pid, name, cat, price) = *rng.pick(PRODUCTS);
            msgs.push(json!({
                "type": "track", "userId": user_id, "event": "Product Viewed",
                "properties": {"product_id": pid, "name": name, "category": cat, "price": price, "currency": "EUR"},
                "timestamp": iso(joined + rng.below(span as u64) as i64),
            }));
        }
        for _ in 0..orders {
            order_no += 1;
            let lines = 1 + rng.below(3);
            let mut products = Vec::new();
            let mut revenue = 0;
            for _ in 0..lines {
                let (pid, name, cat, price) = *rng.pick(PRODUCTS);
                let qty = 1 + rng.below(2);
                revenue += price * qty;
                products.push(json!({"product_id": pid, "name": name, "category": cat, "price": price, "quantity": qty}));
            }
            let store = if rng.chance(40) {
                "web"
            } else {
                *rng.pick(&["helsinki-1", "tampere-1", "oulu-1"])
            };
            msgs.push(json!({
                "type": "track", "userId": user_id, "event": "Order Completed",
                "messageId": format!("order-{order_no}"),
                "properties": {"order_id": format!("O-{order_no}"), "revenue": revenue, "currency": "EUR",
                               "store": store, "products": products},
                "timestamp": iso(joined + rng.below(span as u64) as i64),
            }));
        }
        if gpc {
            gpc_batch.extend(msgs);
        } else {
            batch.extend(msgs);
        }
        people.push(Person {
            user_id,
            email,
            language: country.language,
        });
        if batch.len() >= BATCH {
            api.batch(std::mem::take(&mut batch), false)?;
        }
        if gpc_batch.len() >= BATCH {
            api.batch(std::mem::take(&mut gpc_batch), true)?;
        }
        if (i + 1) % 500 == 0 || i + 1 == customers {
            progress.show(
                "customers and their events",
                u64::from(i + 1),
                u64::from(customers),
            );
        }
    }
    if !batch.is_empty() {
        api.batch(batch, false)?;
    }
    if !gpc_batch.is_empty() {
        api.batch(gpc_batch, true)?;
    }

    // Consent: the checkout form and the newsletter box (web form), the
    // till's paper forms (import), some withdrawn later.
    let mut entries = Vec::new();
    let total = people.len() as u64;
    for (n, p) in people.iter().enumerate() {
        let subject = json!({"type": "user_id", "value": p.user_id});
        let evidence = json!({"ip": format!("192.0.2.{}", 1 + rng.below(250)), "user_agent": "Mozilla/5.0 (demo)"});
        if rng.chance(62) {
            let (method, source) = if rng.chance(80) {
                ("web_form", "checkout form v3")
            } else {
                ("import", "till sign-up form, scanned 2025")
            };
            entries.push(
                json!({"subject": subject, "purpose": "email_marketing", "decision": "granted",
                "method": method, "source": source, "evidence": evidence}),
            );
            if rng.chance(8) {
                entries.push(json!({"subject": subject, "purpose": "email_marketing", "decision": "withdrawn",
                    "method": "web_form", "source": "preference page", "evidence": evidence}));
            }
        } else if rng.chance(20) {
            entries.push(
                json!({"subject": subject, "purpose": "email_marketing", "decision": "denied",
                "method": "web_form", "source": "checkout form v3", "evidence": evidence}),
            );
        }
        if rng.chance(28) {
            entries.push(
                json!({"subject": subject, "purpose": "sms_marketing", "decision": "granted",
                "method": "web_form", "source": "loyalty app", "evidence": evidence}),
            );
        }
        if rng.chance(45) {
            entries.push(
                json!({"subject": subject, "purpose": "personalisation", "decision": "granted",
                "method": "web_form", "source": "account settings", "evidence": evidence}),
            );
        }
        if rng.chance(3) {
            entries.push(
                json!({"subject": subject, "purpose": "analytics", "decision": "objected",
                "method": "web_form", "source": "account settings", "evidence": evidence}),
            );
        }
        if entries.len() >= 500 || n + 1 == people.len() {
            if !entries.is_empty() {
                api.call(
                    "POST",
                    "/api/v1/consents",
                    Some(&json!({"entries": std::mem::take(&mut entries)})),
                )?;
            }
            progress.show("consent decisions", n as u64 + 1, total);
        }
    }

    // Double opt-in started and not yet confirmed: the confirmations wait
    // in the outbox (no SMTP server in the demo).
    let pending = (people.len() / 50).clamp(3, 200);
    for i in 0..pending {
        let p = &people[(i * 7919) % people.len()];
        api.call(
            "POST",
            "/api/v1/subscriptions",
            Some(
                &json!({"email": format!("new.{}", p.email), "purposes": ["email_marketing"],
                         "language": p.language, "source": "newsletter box, footer",
                         "ip": "198.51.100.7", "user_agent": "Mozilla/5.0 (demo)"}),
            ),
        )?;
    }
    progress.show(
        "subscriptions awaiting confirmation",
        pending as u64,
        pending as u64,
    );

    // Rights: a few erased people, open access requests (one overdue soon),
    // a rectification.
    let erased = (people.len() / 500).clamp(2, 20);
    for i in 0..erased {
        let p = &people[people.len() - 1 - i];
        let r = api.call(
            "POST",
            "/api/v1/requests",
            Some(&json!({"type": "erasure", "subject": {"type": "email", "value": p.email}})),
        )?;
        api.call(
            "POST",
            &format!("/api/v1/requests/{}/verify", r["id"]),
            Some(&json!({"reason": "identity checked against the loyalty card at the till"})),
        )?;
    }
    for i in 0..(people.len() / 400).clamp(2, 25) {
        let p = &people[(i * 104_729 + 13) % people.len()];
        api.call(
            "POST",
            "/api/v1/requests",
            Some(&json!({"type": "access", "subject": {"type": "email", "value": p.email}})),
        )?;
    }
    progress.show("rights requests", erased as u64, erased as u64);

    // The marketer's segments.
    for (id, name, purpose, rule) in [
        (
            "vip",
            "VIP: five orders or more in two years",
            "email_marketing",
            json!({"event": "Order Completed", "within": "730d", "count": {"gte": 5}}),
        ),
        (
            "lapsed_buyers",
            "Lapsed buyers: bought before, nothing in 180 days",
            "email_marketing",
            json!({"all": [
                {"event": "Order Completed", "within": "730d"},
                {"event": "Order Completed", "within": "180d", "count": {"eq": 0}},
                {"consent": "email_marketing", "channel": "email"}
            ]}),
        ),
        (
            "viewed_not_bought",
            "Viewed shoes lately, no order",
            "email_marketing",
            json!({"all": [
                {"event": "Product Viewed", "where": [{"property": "category", "op": "eq", "value": "shoes"}], "within": "60d"},
                {"event": "Order Completed", "within": "60d", "count": {"eq": 0}}
            ]}),
        ),
        (
            "birthday_week",
            "Birthday within a week",
            "email_marketing",
            json!({"all": [{"birthday_within": "7d"}, {"consent": "email_marketing", "channel": "email"}]}),
        ),
        (
            "tent_browsers",
            "Looked at tents in the last 90 days",
            "personalisation",
            json!({"event": "Product Viewed", "where": [{"property": "category", "op": "eq", "value": "tents"}], "within": "90d"}),
        ),
    ] {
        api.call(
            "POST",
            "/api/v1/segments",
            Some(&json!({"id": id, "name": name, "purpose": purpose, "rule": rule})),
        )?;
    }
    progress.show("segments", 5, 5);

    seed_register(api, &mut rng, now)?;
    progress.show("till and CRM imports", 5, 5);
    seed_marketing(api, now)?;
    progress.show("templates, automations and a campaign", 3, 3);
    Ok(())
}

/// Runs one import over HTTP, as a nightly job would, and waits for it.
fn import(
    api: &Api,
    kind: &str,
    file_name: &str,
    source: &str,
    content: String,
) -> anyhow::Result<()> {
    let started = api.call(
        "POST",
        "/api/v1/imports",
        Some(&json!({
            "kind": kind, "format": "csv", "file_name": file_name, "source": source,
            "documentation": "Tarmo Outdoor's till and CRM exports (demo)",
            "content": content,
        })),
    )?;
    let id = started["id"].as_i64().unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let state = api.call("GET", &format!("/api/v1/imports/{id}"), None)?;
        match state["status"].as_str() {
            Some("done") => return Ok(()),
            Some("queued" | "running" | "checked") if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => bail!("the {kind} import ended as {state}"),
        }
    }
}

/// The offline register: the catalogue, the shops and their stock, and the
/// till's loyalty customers who never shopped online, with their receipts.
fn seed_register(api: &Api, rng: &mut Rng, now: i64) -> anyhow::Result<()> {
    let mut products = String::from("product_id,name_en,name_fi,name_de,category,price\n");
    for (pid, name, cat, price) in PRODUCTS {
        let fi = FINNISH_NAMES
            .iter()
            .find(|(id, _)| id == pid)
            .map_or(*name, |(_, n)| *n);
        products.push_str(&format!("{pid},{name},{fi},{name},{cat},{price}\n"));
    }
    import(
        api,
        "products",
        "catalogue.csv",
        "product catalogue export",
        products,
    )?;
    let mut stores = String::from("store_id,name,city,latitude,longitude\n");
    for (id, name, city, lat, lon) in STORES {
        stores.push_str(&format!("{id},{name},{city},{lat},{lon}\n"));
    }
    import(api, "stores", "stores.csv", "store register", stores)?;
    let mut stock = String::from("store_id,product_id,quantity\n");
    for (store, ..) in STORES {
        for (pid, ..) in PRODUCTS {
            // Some shelves are empty: the in-stock rule has something to say.
            let quantity = if rng.chance(25) { 0 } else { 1 + rng.below(20) };
            stock.push_str(&format!("{store},{pid},{quantity}\n"));
        }
    }
    import(api, "stock", "stock.csv", "till stock count", stock)?;

    let mut customers =
        String::from("loyalty_card,phone,first_name,city,birthday,preferred_store,language\n");
    let mut orders = String::from(
        "order_id,ordered_at,loyalty_card,store_id,currency,product_id,quantity,price\n",
    );
    for n in 1..=40u64 {
        let card = format!("LC-{:05}", 20_000 + n);
        let first = *rng.pick(&["Aino", "Eero", "Helmi", "Onni", "Siiri", "Väinö"]);
        let (store, _, city, ..) = *rng.pick(STORES);
        let phone = format!("+35850{:07}", rng.below(10_000_000));
        let born = format!(
            "{}-{:02}-{:02}",
            1950 + rng.below(55),
            1 + rng.below(12),
            1 + rng.below(28)
        );
        customers.push_str(&format!(
            "{card},{phone},{first},{city},{born},{store},fi\n"
        ));
        for o in 0..rng.below(4) {
            let day = now - (rng.below(600) as i64 + 1) * DAY_MS;
            let (pid, _, _, price) = *rng.pick(PRODUCTS);
            orders.push_str(&format!(
                "T-{n}-{o},{},{card},{store},EUR,{pid},1,{price}\n",
                iso(day)
            ));
        }
    }
    import(
        api,
        "customers",
        "crm-loyalty.csv",
        "till loyalty register",
        customers,
    )?;
    import(
        api,
        "orders",
        "till-receipts.csv",
        "till receipts export",
        orders,
    )?;
    Ok(())
}

/// Templates in the shop's languages, three automations and a campaign for
/// the VIPs next week. Without a mail server the sends wait in the outbox.
fn seed_marketing(api: &Api, now: i64) -> anyhow::Result<()> {
    api.call(
        "POST",
        "/api/v1/templates",
        Some(&json!({
            "id": "birthday", "channel": "email", "languages": {
                "en": {"subject": "Happy birthday, {{ traits.first_name }}!", "text": "Happy birthday from Tarmo Outdoor: 15 % off anything this week."},
                "fi": {"subject": "Hyvää syntymäpäivää, {{ traits.first_name }}!", "text": "Onnea Tarmo Outdoorilta: kaikesta -15 % tällä viikolla."},
                "de": {"subject": "Alles Gute zum Geburtstag, {{ traits.first_name }}!", "text": "Tarmo Outdoor gratuliert: diese Woche 15 % auf alles."},
                "nb": {"subject": "Gratulerer med dagen, {{ traits.first_name }}!", "text": "Gratulerer fra Tarmo Outdoor: 15 % på alt denne uken."},
                "he": {"subject": "יום הולדת שמח, {{ traits.first_name }}!", "text": "מזל טוב מ-Tarmo Outdoor: 15% הנחה על הכול השבוע."},
                "tr": {"subject": "Doğum günün kutlu olsun, {{ traits.first_name }}!", "text": "Tarmo Outdoor'dan: bu hafta her şeyde %15 indirim."}
            }
        })),
    )?;
    api.call(
        "POST",
        "/api/v1/templates",
        Some(&json!({
            "id": "reminder", "channel": "email", "languages": {
                "en": {"subject": "Still thinking, {{ traits.first_name }}?", "text": "What you looked at is waiting for you."},
                "fi": {"subject": "Jäikö jotain kesken, {{ traits.first_name }}?", "text": "Katsomasi tuote odottaa sinua."}
            }
        })),
    )?;
    api.call(
        "POST",
        "/api/v1/templates",
        Some(&json!({
            "id": "we_miss_you", "channel": "email", "languages": {
                "en": {"subject": "We miss you, {{ traits.first_name }}", "text": "The new season's gear is in."},
                "fi": {"subject": "Ikävä sinua, {{ traits.first_name }}", "text": "Uuden kauden varusteet ovat tulleet."}
            }
        })),
    )?;
    for automation in [
        json!({
            "id": "birthday_greeting", "name": "Birthday greeting", "purpose": "email_marketing",
            "channel": "email", "template": "birthday",
            "trigger": {"birthday": {"local_time": "09:00"}}, "enabled": true
        }),
        json!({
            "id": "viewed_not_bought", "name": "Viewed, did not buy", "purpose": "email_marketing",
            "channel": "email", "template": "reminder",
            "trigger": {"event": "Product Viewed", "delay": "48h", "unless": {"event": "Order Completed", "within": "48h"}},
            "caps": {"per_person_per_day": 1, "per_person_per_week": 2},
            "quiet_hours": {"start": "21:00", "end": "08:00"}, "enabled": true
        }),
        json!({
            "id": "win_back", "name": "Win back after 180 days", "purpose": "email_marketing",
            "channel": "email", "template": "we_miss_you",
            "trigger": {"absence": {"event": "Order Completed", "for": "180d"}}, "enabled": true
        }),
    ] {
        api.call("POST", "/api/v1/automations", Some(&automation))?;
    }
    api.call(
        "POST",
        "/api/v1/campaigns",
        Some(&json!({
            "id": "vip_spring_preview", "segment": "vip", "template": "we_miss_you",
            "purpose": "email_marketing", "channel": "email",
            "send_at": iso(now + 7 * DAY_MS), "per_minute": 600
        })),
    )?;
    Ok(())
}
