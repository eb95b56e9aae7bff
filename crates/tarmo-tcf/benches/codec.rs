//! TC string decode/encode throughput on one core, next to the official
//! `@iabtechlabtcf/core` decoding the same strings in the same run, plus the
//! heap allocations one short decode makes. Figures go to BENCHMARKS.md.
//!
//! `cargo bench -p tarmo-tcf` (release). The JS side needs
//! `npm ci --prefix crates/tarmo-tcf/js`; without it only the Rust figures
//! are printed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tarmo_tcf::{
    CmpId, CmpVersion, ConsentScreen, CountryCode, Deciseconds, LanguageCode, PolicyVersion,
    PublisherRestrictions, PurposeId, PurposeSet, RestrictionType, SpecialFeatureSet, TcString,
    VendorId, VendorListVersion, VendorSet,
};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// xorshift: the same strings on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn vendor(id: u64) -> VendorId {
    VendorId::new(id as u16).expect("non-zero")
}

fn base(rng: &mut Rng) -> TcString {
    TcString {
        created: Deciseconds::new(17_000_000_000 + rng.below(100_000_000)).expect("36 bits"),
        last_updated: Deciseconds::new(17_100_000_000).expect("36 bits"),
        cmp_id: CmpId::new(300).expect("12 bits"),
        cmp_version: CmpVersion::new(5).expect("12 bits"),
        consent_screen: ConsentScreen::new(1).expect("6 bits"),
        consent_language: LanguageCode::parse("FI").expect("letters"),
        vendor_list_version: VendorListVersion::new(120).expect("12 bits"),
        policy_version: PolicyVersion::TCF_2_3,
        is_service_specific: false,
        use_non_standard_texts: false,
        special_feature_optins: SpecialFeatureSet::from_ids([1]).expect("in range"),
        purpose_consents: PurposeSet::from_ids(1..=11).expect("in range"),
        purpose_legitimate_interests: PurposeSet::from_ids([2, 7, 8, 9, 10, 11]).expect("in range"),
        purpose_one_treatment: false,
        publisher_country_code: CountryCode::parse("FI").expect("letters"),
        vendor_consents: VendorSet::new(),
        vendor_legitimate_interests: VendorSet::new(),
        publisher_restrictions: PublisherRestrictions::new(),
        vendors_disclosed: None,
        publisher_tc: None,
    }
}

/// A site with a handful of vendors: range-encoded, a few dozen characters.
fn short(rng: &mut Rng) -> String {
    let mut tc = base(rng);
    for _ in 0..1 + rng.below(6) {
        let id = vendor(1 + rng.below(1000));
        tc.vendor_consents.insert(id);
        if rng.below(2) == 0 {
            tc.vendor_legitimate_interests.insert(id);
        }
    }
    tc.vendors_disclosed = Some(tc.vendor_consents.clone());
    tc.encode()
}

/// A "accept all" on a big site: ~800 of 1200 vendors, restrictions.
fn long(rng: &mut Rng) -> String {
    let mut tc = base(rng);
    let mut disclosed = VendorSet::new();
    for id in 1..=1200 {
        if rng.below(3) != 0 {
            tc.vendor_consents.insert(vendor(id));
            disclosed.insert(vendor(id));
            if rng.below(2) == 0 {
                tc.vendor_legitimate_interests.insert(vendor(id));
            }
        }
    }
    for purpose in [2, 7, 10] {
        let vendors: VendorSet = (0..20).map(|_| vendor(1 + rng.below(1200))).collect();
        let purpose = PurposeId::new(purpose).expect("1..=63");
        tc.publisher_restrictions
            .insert(purpose, RestrictionType::RequireConsent, &vendors)
            .expect("few ranges");
    }
    tc.vendors_disclosed = Some(disclosed);
    tc.encode()
}

const RUN: Duration = Duration::from_secs(2);

/// Operations per second of `op` over `items`, repeated for about [`RUN`].
fn measure<T>(items: &[T], mut op: impl FnMut(&T)) -> f64 {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < RUN {
        for item in items {
            op(item);
        }
        done += items.len();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn js_decodes_per_second(strings: &[String]) -> Option<f64> {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    if !js.join("node_modules/@iabtechlabtcf/core").is_dir() {
        return None;
    }
    let file = std::env::temp_dir().join(format!("tarmo-tcf-bench-{}.txt", std::process::id()));
    std::fs::write(&file, strings.join("\n")).ok()?;
    let out = Command::new("node")
        .current_dir(&js)
        .args(["crosscheck.cjs", "bench-tcf"])
        .arg(&file)
        .arg(RUN.as_millis().to_string())
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8(out.stdout).ok()?;
    let rate = text.split("\"per_second\":").nth(1)?;
    rate.trim().trim_end_matches('}').parse().ok()
}

fn main() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let shorts: Vec<String> = (0..1000).map(|_| short(&mut rng)).collect();
    let longs: Vec<String> = (0..100).map(|_| long(&mut rng)).collect();
    // The mix a busy ingestion endpoint sees: mostly short strings.
    let mix: Vec<String> = shorts
        .iter()
        .take(900)
        .chain(longs.iter())
        .cloned()
        .collect();
    let avg = |set: &[String]| set.iter().map(String::len).sum::<usize>() / set.len();
    println!(
        "strings: short avg {} chars, long avg {} chars",
        avg(&shorts),
        avg(&longs)
    );

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let decoded = tarmo_tcf::decode(&shorts[0]).expect("valid");
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    drop(decoded);
    println!("heap allocations for one short decode: {allocations}");

    println!("| set | rust decode/s | rust encode/s | @iabtechlabtcf/core decode/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (name, set) in [("short", &shorts), ("long", &longs), ("mix 90/10", &mix)] {
        let values: Vec<TcString> = set
            .iter()
            .map(|s| tarmo_tcf::decode(s).expect("valid"))
            .collect();
        let decode = measure(set, |s| {
            black_box(tarmo_tcf::decode(black_box(s)).ok());
        });
        let encode = measure(&values, |tc| {
            black_box(tarmo_tcf::encode(black_box(tc)));
        });
        let (js, ratio) = match js_decodes_per_second(set) {
            Some(js) => (format!("{js:.0}"), format!("{:.0}x", decode / js)),
            None => ("(node_modules missing)".into(), "-".into()),
        };
        println!("| {name} | {decode:.0} | {encode:.0} | {js} | {ratio} |");
    }
}
