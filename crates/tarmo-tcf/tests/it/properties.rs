//! Properties over generated values: encoding round-trips, and no input makes
//! the decoders panic.

use proptest::prelude::*;
use tarmo_tcf::gpp;

use crate::generate::{Rng, gpp_string, tc_string};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tc_strings_round_trip(seed in any::<u64>(), for_gpp in any::<bool>()) {
        let tc = tc_string(&mut Rng::new(seed), for_gpp);
        prop_assert_eq!(tarmo_tcf::decode(&tarmo_tcf::encode(&tc)), Ok(tc));
    }

    #[test]
    fn gpp_strings_round_trip(seed in any::<u64>()) {
        let value = gpp_string(&mut Rng::new(seed));
        prop_assert_eq!(gpp::decode(&gpp::encode(&value)), Ok(value));
    }

    #[test]
    fn vendor_sets_round_trip_whatever_their_shape(
        ids in proptest::collection::vec(1u16..=u16::MAX, 0..300),
        runs in proptest::collection::vec((1u16..=u16::MAX, 0u16..2000), 0..20),
        seed in any::<u64>(),
    ) {
        let mut tc = tc_string(&mut Rng::new(seed), false);
        tc.vendor_consents = ids.iter().filter_map(|&id| tarmo_tcf::VendorId::new(id)).collect();
        for (start, len) in runs {
            let end = start.saturating_add(len);
            if let (Some(s), Some(e)) = (tarmo_tcf::VendorId::new(start), tarmo_tcf::VendorId::new(end)) {
                tc.vendor_legitimate_interests.insert_range(s..=e);
            }
        }
        prop_assert_eq!(tarmo_tcf::decode(&tarmo_tcf::encode(&tc)), Ok(tc));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[A-Za-z0-9_.~-]{0,200}|\\PC{0,50}") {
        let _ = tarmo_tcf::decode(&text);
        let _ = gpp::decode(&text);
    }

    #[test]
    fn mutated_strings_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<usize>(), 0u8..64), 1..6)) {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut rng = Rng::new(seed);
        for text in [tarmo_tcf::encode(&tc_string(&mut rng, false)), gpp::encode(&gpp_string(&mut rng))] {
            let mut bytes = text.into_bytes();
            for (at, sextet) in &flips {
                let i = at % bytes.len();
                if bytes[i] != b'.' && bytes[i] != b'~' {
                    bytes[i] = ALPHABET[*sextet as usize];
                }
            }
            let text = String::from_utf8(bytes).expect("ascii");
            let _ = tarmo_tcf::decode(&text);
            let _ = gpp::decode(&text);
        }
    }
}
