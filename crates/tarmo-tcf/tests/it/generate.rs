//! Random but valid values, shaped so the official JS encoders keep every
//! signal they are given (see js/crosscheck.cjs for the vendor list used).

use tarmo_tcf::gpp::{
    Choice, GppString, MspaCoveredTransaction, MspaMode, Notice, OpaqueSection, Section, UsCa,
    UsCo, UsCt, UsNat, UsNatSensitiveData, UsUt, UsVa,
};
use tarmo_tcf::{
    CmpId, CmpVersion, ConsentScreen, CountryCode, CustomPurposes, Deciseconds, IdSet,
    LanguageCode, PolicyVersion, PublisherRestrictions, PublisherTc, PurposeId, PurposeSet,
    RestrictionType, SpecialFeatureSet, TcString, VendorId, VendorListVersion, VendorSet,
};

/// splitmix64: deterministic, so a failing case can be replayed by seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const LANGUAGES: [&str; 10] = ["EN", "FR", "DE", "ES", "IT", "NL", "PL", "FI", "SV", "PT"];

pub fn vendor_set(rng: &mut Rng, max: u16) -> VendorSet {
    let mut set = VendorSet::new();
    let id = |n: u64| VendorId::new(n as u16).expect("non-zero");
    let max64 = u64::from(max);
    match rng.below(6) {
        0 => {}
        1 => {
            for _ in 0..=rng.below(8) {
                set.insert(id(1 + rng.below(max64)));
            }
        }
        2 => {
            for _ in 0..=rng.below(5) {
                let start = 1 + rng.below(max64);
                let end = (start + rng.below(40)).min(max64);
                set.insert_range(id(start)..=id(end));
            }
        }
        3 => {
            let p = rng.below(100);
            for n in 1..=max64 {
                if rng.below(100) < p {
                    set.insert(id(n));
                }
            }
        }
        4 => {
            for n in 1..=max64 {
                if rng.chance(97) {
                    set.insert(id(n));
                }
            }
        }
        _ => {
            let mut n = 1;
            while n <= max64 {
                set.insert(id(n));
                n += 1 + rng.below(3);
            }
        }
    }
    set
}

fn subset<const N: u8>(rng: &mut Rng, pool: impl IntoIterator<Item = u8>) -> IdSet<N> {
    let ids: Vec<u8> = pool.into_iter().filter(|_| rng.chance(50)).collect();
    IdSet::from_ids(ids).expect("pool within range")
}

fn publisher_tc(rng: &mut Rng) -> PublisherTc {
    let count = rng.below(64) as u8;
    PublisherTc {
        consents: subset(rng, 1..=24),
        legitimate_interests: subset(rng, 1..=24),
        custom_purposes: CustomPurposes::new(count, subset(rng, 1..=count), subset(rng, 1..=count))
            .expect("ids within count"),
    }
}

/// `for_gpp`: the GPP library only writes service-specific strings with all
/// three segments and keeps the two dates equal.
pub fn tc_string(rng: &mut Rng, for_gpp: bool) -> TcString {
    let max = if rng.chance(40) {
        300 + rng.below(1200)
    } else {
        1 + rng.below(120)
    } as u16;
    let created = 16_000_000_000 + rng.below(2_000_000_000);
    let last_updated = if for_gpp {
        created
    } else {
        created + rng.below(100_000_000)
    };
    let mut restrictions = PublisherRestrictions::new();
    for _ in 0..rng.below(4) {
        let purpose = PurposeId::new(2 + rng.below(10) as u8).expect("2..=11");
        let restriction = RestrictionType::from_code(rng.below(3) as u8).expect("0..=2");
        let vendors = vendor_set(rng, max);
        if vendors.is_empty() && !for_gpp {
            // The TCF library drops empty restrictions; the GPP one keeps them.
            continue;
        }
        restrictions
            .insert(purpose, restriction, &vendors)
            .expect("few ranges");
    }
    let is_service_specific = for_gpp || rng.chance(50);
    // Segment combinations the official encoder can produce.
    let (disclosed, publisher) = if is_service_specific {
        (true, true)
    } else {
        match rng.below(3) {
            0 => (true, false),
            1 => (true, true),
            _ => (false, true),
        }
    };
    TcString {
        created: Deciseconds::new(created).expect("36 bits"),
        last_updated: Deciseconds::new(last_updated).expect("36 bits"),
        cmp_id: CmpId::new(2 + rng.below(4094) as u16).expect("12 bits"),
        cmp_version: CmpVersion::new(rng.below(4096) as u16).expect("12 bits"),
        consent_screen: ConsentScreen::new(rng.below(64) as u8).expect("6 bits"),
        consent_language: LanguageCode::parse(LANGUAGES[rng.below(10) as usize])
            .expect("two letters"),
        vendor_list_version: VendorListVersion::new(1 + rng.below(4095) as u16).expect("12 bits"),
        policy_version: PolicyVersion::new(2 + rng.below(4) as u8).expect("2..=5"),
        is_service_specific,
        use_non_standard_texts: rng.chance(50),
        special_feature_optins: subset::<12>(rng, 1..=12) as SpecialFeatureSet,
        purpose_consents: subset::<24>(rng, 1..=24) as PurposeSet,
        purpose_legitimate_interests: subset(rng, [2, 7, 8, 9, 10, 11]),
        purpose_one_treatment: rng.chance(50),
        publisher_country_code: CountryCode::parse(
            &String::from_utf8(vec![b'A' + rng.below(26) as u8, b'A' + rng.below(26) as u8])
                .expect("ascii"),
        )
        .expect("two letters"),
        vendor_consents: vendor_set(rng, max),
        vendor_legitimate_interests: vendor_set(rng, max),
        publisher_restrictions: restrictions,
        vendors_disclosed: disclosed.then(|| vendor_set(rng, max)),
        publisher_tc: publisher.then(|| publisher_tc(rng)),
    }
}

fn choices<const N: usize>(rng: &mut Rng) -> [Choice; N] {
    std::array::from_fn(|_| choice(rng))
}

fn choice(rng: &mut Rng) -> Choice {
    Choice::from_code(rng.below(3) as u8).expect("0..=2")
}

fn notice(rng: &mut Rng) -> Notice {
    Notice::from_code(rng.below(3) as u8).expect("0..=2")
}

fn mode(rng: &mut Rng) -> MspaMode {
    MspaMode::from_code(rng.below(3) as u8).expect("0..=2")
}

fn gpc(rng: &mut Rng) -> Option<bool> {
    (!rng.chance(30)).then(|| rng.chance(50))
}

pub fn gpp_string(rng: &mut Rng) -> GppString {
    let mut gpp = GppString::new();
    if rng.chance(60) {
        gpp.insert(Section::TcfEuV2(Box::new(tc_string(rng, true))));
    }
    if rng.chance(30) {
        let text = ["1YNN", "1NYY", "1---"][rng.below(3) as usize];
        gpp.insert(Section::Opaque(OpaqueSection::new(6, text).expect("valid")));
    }
    if rng.chance(40) {
        gpp.insert(Section::UsNat(UsNat {
            sharing_notice: notice(rng),
            sale_opt_out_notice: notice(rng),
            sharing_opt_out_notice: notice(rng),
            targeted_advertising_opt_out_notice: notice(rng),
            sensitive_data_processing_opt_out_notice: notice(rng),
            sensitive_data_limit_use_notice: notice(rng),
            sale_opt_out: choice(rng),
            sharing_opt_out: choice(rng),
            targeted_advertising_opt_out: choice(rng),
            sensitive_data: UsNatSensitiveData::V2 {
                processing: choices(rng),
                known_child_consents: choices(rng),
            },
            personal_data_consents: choice(rng),
            mspa_covered_transaction: MspaCoveredTransaction(rng.chance(50)),
            mspa_opt_out_option_mode: mode(rng),
            mspa_service_provider_mode: mode(rng),
            gpc: gpc(rng),
        }));
    }
    if rng.chance(40) {
        gpp.insert(Section::UsCa(UsCa {
            sale_opt_out_notice: notice(rng),
            sharing_opt_out_notice: notice(rng),
            sensitive_data_limit_use_notice: notice(rng),
            sale_opt_out: choice(rng),
            sharing_opt_out: choice(rng),
            sensitive_data_processing: choices(rng),
            known_child_sensitive_data_consents: choices(rng),
            personal_data_consents: choice(rng),
            mspa_covered_transaction: MspaCoveredTransaction(rng.chance(50)),
            mspa_opt_out_option_mode: mode(rng),
            mspa_service_provider_mode: mode(rng),
            gpc: gpc(rng),
        }));
    }
    if rng.chance(40) {
        gpp.insert(Section::UsVa(UsVa {
            sharing_notice: notice(rng),
            sale_opt_out_notice: notice(rng),
            targeted_advertising_opt_out_notice: notice(rng),
            sale_opt_out: choice(rng),
            targeted_advertising_opt_out: choice(rng),
            sensitive_data_processing: choices(rng),
            known_child_sensitive_data_consents: choice(rng),
            mspa_covered_transaction: MspaCoveredTransaction(rng.chance(50)),
            mspa_opt_out_option_mode: mode(rng),
            mspa_service_provider_mode: mode(rng),
        }));
    }
    if rng.chance(40) {
        gpp.insert(Section::UsCo(UsCo {
            sharing_notice: notice(rng),
            sale_opt_out_notice: notice(rng),
            targeted_advertising_opt_out_notice: notice(rng),
            sale_opt_out: choice(rng),
            targeted_advertising_opt_out: choice(rng),
            sensitive_data_processing: choices(rng),
            known_child_sensitive_data_consents: choice(rng),
            mspa_covered_transaction: MspaCoveredTransaction(rng.chance(50)),
            mspa_opt_out_option_mode: mode(rng),
            mspa_service_provider_mode: mode(rng),
            gpc: gpc(rng),
        }));
    }
    if rng.chance(40) {
        gpp.insert(Section::UsUt(UsUt {
            sharing_notice: notice(rng),
            sale_opt_out_notice: notice(rng),
            targeted_advertising_opt_out_notice: notice(rng),
            sensitive_data_processing_opt_out_notice: notice(rng),
            sale_opt_out: choice(rng),
            targeted_advertising_opt_out: choice(rng),
            sensitive_data_processing: choices(rng),
            known_child_sensitive_data_consents: choice(rng),
            mspa_covered_transaction: MspaCoveredTransaction(rng.chance(50)),
            mspa_opt_out_option_mode: mode(rng),
            mspa_service_provider_mode: mode(rng),
        }));
    }
    if rng.chance(40) {
        gpp.insert(Section::UsCt(UsCt {
            sharing_notice: notice(rng),
            sale_opt_out_notice: notice(rng),
            targeted_advertising_opt_out_notice: notice(rng),
            sale_opt_out: choice(rng),
            targeted_advertising_opt_out: choice(rng),
            sensitive_data_processing: choices(rng),
            known_child_sensitive_data_consents: choices(rng),
            mspa_covered_transaction: MspaCoveredTransaction(rng.chance(50)),
            mspa_opt_out_option_mode: mode(rng),
            mspa_service_provider_mode: mode(rng),
            gpc: gpc(rng),
        }));
    }
    gpp
}
