//! The policy decision in-process, with the state cached in memory: how many
//! decisions one core makes per second, against the cost of the state lookup
//! alone (the raw limit of the same loop without the policy).
//!
//! cargo bench -p tarmo-core --bench decision   (env: PROFILES, DECISIONS)

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use tarmo_core::consent::{
    Channel, ConsentDecision, ConsentState, DataCategory, LegalBasis, Method, ProfileFlags,
    PurposeRule, PurposeSpec, decide,
};

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn spec(basis: LegalBasis, life: Option<u32>, special: bool) -> PurposeSpec {
    PurposeSpec {
        name: "p".into(),
        legal_basis: basis,
        balancing_note: (basis == LegalBasis::LegitimateInterests).then(|| "note".into()),
        channels: vec![Channel::Email, Channel::Web, Channel::Ads],
        data_categories: if special {
            vec![DataCategory::parse("health").unwrap()]
        } else {
            vec![]
        },
        retention_days: 365,
        consent_lifetime_days: life,
        gpc_opt_out: true,
        direct_marketing: true,
        notice: [("en".to_owned(), "text".to_owned())].into(),
        names: Default::default(),
        description: Default::default(),
    }
}

/// A small deterministic generator, so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    let profiles = env_or("PROFILES", 1_000_000);
    let n = env_or("DECISIONS", 50_000_000);
    let rules = [
        PurposeRule::new(&spec(LegalBasis::Consent, Some(730), false), 1),
        PurposeRule::new(&spec(LegalBasis::Consent, None, true), 2),
        PurposeRule::new(&spec(LegalBasis::LegitimateInterests, None, false), 1),
        PurposeRule::new(&spec(LegalBasis::Contract, None, false), 1),
    ];
    let decisions = [
        ConsentDecision::Granted,
        ConsentDecision::Granted,
        ConsentDecision::Withdrawn,
        ConsentDecision::PendingConfirmation,
        ConsentDecision::Objected,
    ];
    let methods = [
        Method::WebForm,
        Method::Import,
        Method::Gpc,
        Method::DoubleOptInEmail,
    ];
    let mut rng = Rng(0x9e3779b97f4a7c15);
    // Two layouts of the same states: a hash map keyed by (profile,
    // purpose), and a dense table indexed by profile id * purposes + purpose
    // (profile ids are dense integers).
    let mut states: HashMap<(i64, u8), ConsentState> =
        HashMap::with_capacity(profiles as usize * 2);
    let mut dense: Vec<Option<ConsentState>> = vec![None; profiles as usize * 4];
    for p in 0..profiles as i64 {
        for purpose in 0..2u8 {
            let r = rng.next();
            let st = ConsentState {
                decision: decisions[(r % 5) as usize],
                method: methods[((r >> 8) % 4) as usize],
                at_ms: 1_700_000_000_000 + (r >> 20) as i64 % 100_000_000_000,
                notice_seq: 1 + ((r >> 40) % 2) as u32,
                seq: p,
                gpc_ms: None,
                channels_off: 0,
            };
            states.insert((p, purpose), st);
            dense[p as usize * 4 + purpose as usize] = Some(st);
        }
    }
    let now = 1_790_000_000_000i64;
    let channels = [Some(Channel::Email), Some(Channel::Sms), None];
    // Precomputed request stream: the benchmark times decisions, not the RNG.
    let reqs: Vec<(i64, u8, usize)> = (0..1_000_000)
        .map(|_| {
            let r = rng.next();
            (
                (r % profiles) as i64,
                ((r >> 32) % 4) as u8,
                ((r >> 48) % 3) as usize,
            )
        })
        .collect();

    // The raw limit: the state lookup alone.
    let t = Instant::now();
    let mut found = 0u64;
    for i in 0..n as usize {
        let (p, purpose, _) = reqs[i % reqs.len()];
        found += states.contains_key(&(p, purpose)) as u64;
    }
    black_box(found);
    let lookup_rate = n as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut allowed = 0u64;
    for i in 0..n as usize {
        let (p, purpose, ch) = reqs[i % reqs.len()];
        let st = states.get(&(p, purpose));
        let v = decide(
            &rules[purpose as usize],
            channels[ch],
            st,
            ProfileFlags::default(),
            black_box(now),
        );
        allowed += v.allowed as u64;
    }
    black_box(allowed);
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;

    let t = Instant::now();
    let mut found = 0u64;
    for i in 0..n as usize {
        let (p, purpose, _) = reqs[i % reqs.len()];
        found += dense[p as usize * 4 + purpose as usize].is_some() as u64;
    }
    black_box(found);
    let dense_lookup_rate = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut allowed_dense = 0u64;
    for i in 0..n as usize {
        let (p, purpose, ch) = reqs[i % reqs.len()];
        let st = dense[p as usize * 4 + purpose as usize].as_ref();
        let v = decide(
            &rules[purpose as usize],
            channels[ch],
            st,
            ProfileFlags::default(),
            black_box(now),
        );
        allowed_dense += v.allowed as u64;
    }
    assert_eq!(allowed_dense, allowed);
    let dense_rate = n as f64 / t.elapsed().as_secs_f64();

    // The policy alone, on a state already in hand.
    let sample: Vec<Option<ConsentState>> = (0..1024).map(|i| dense[i * 4 + i % 2]).collect();
    let t = Instant::now();
    let mut a = 0u64;
    for i in 0..n as usize {
        let v = decide(
            &rules[i % 4],
            channels[i % 3],
            sample[i % 1024].as_ref(),
            ProfileFlags::default(),
            black_box(now),
        );
        a += v.allowed as u64;
    }
    black_box(a);
    let policy_rate = n as f64 / t.elapsed().as_secs_f64();
    println!("profiles in memory:        {profiles}");
    println!(
        "decisions:                 {n} ({:.1} % allowed)",
        allowed as f64 * 100.0 / n as f64
    );
    println!(
        "policy alone (state in hand):     {:.1} M decisions/s",
        policy_rate / 1e6
    );
    println!(
        "dense table: raw lookup limit     {:.2} M lookups/s",
        dense_lookup_rate / 1e6
    );
    println!(
        "dense table: lookup + decision    {:.2} M decisions/s on one core ({:.0} ns each), ratio {:.2}",
        dense_rate / 1e6,
        1e9 / dense_rate,
        dense_rate / dense_lookup_rate
    );
    println!(
        "hash map: raw lookup limit        {:.2} M lookups/s",
        lookup_rate / 1e6
    );
    println!(
        "hash map: lookup + decision       {:.2} M decisions/s on one core ({:.0} ns each), ratio {:.2}",
        rate / 1e6,
        1e9 / rate,
        rate / lookup_rate
    );
}
