//! TCF v2 TC strings: the core segment, the disclosed-vendors segment and the
//! publisher TC segment, as laid out in IAB Europe's "Consent string and
//! vendor list formats" (TCF v2.x).

use crate::bits::{BitReader, BitWriter, MAX_READ, Padding};
use crate::error::{Error, OutOfRange};
use crate::types::{
    CmpId, CmpVersion, ConsentScreen, CountryCode, Deciseconds, IdSet, LanguageCode, PolicyVersion,
    PurposeSet, SpecialFeatureSet, VendorId, VendorListVersion, VendorSet,
};

/// A decoded TC string (TCF v2, policy versions 2 to 5).
///
/// Every field type only admits values its bit field can carry, so any
/// `TcString` encodes. The string's own `Version` field is always 2 and so is
/// not stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcString {
    pub created: Deciseconds,
    pub last_updated: Deciseconds,
    pub cmp_id: CmpId,
    pub cmp_version: CmpVersion,
    pub consent_screen: ConsentScreen,
    pub consent_language: LanguageCode,
    pub vendor_list_version: VendorListVersion,
    pub policy_version: PolicyVersion,
    pub is_service_specific: bool,
    pub use_non_standard_texts: bool,
    pub special_feature_optins: SpecialFeatureSet,
    pub purpose_consents: PurposeSet,
    pub purpose_legitimate_interests: PurposeSet,
    pub purpose_one_treatment: bool,
    pub publisher_country_code: CountryCode,
    pub vendor_consents: VendorSet,
    pub vendor_legitimate_interests: VendorSet,
    pub publisher_restrictions: PublisherRestrictions,
    /// The disclosed-vendors segment; `None` when the string has none. TCF 2.3
    /// makes it mandatory for CMPs, but older strings lack it and a decoder
    /// must still read them, so its absence is not an error.
    pub vendors_disclosed: Option<VendorSet>,
    /// The publisher TC segment, if present.
    pub publisher_tc: Option<PublisherTc>,
}

/// The version of TC strings this crate reads and writes.
pub const TC_STRING_VERSION: u8 = 2;

/// How a publisher restricts vendors for one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RestrictionType {
    NotAllowed = 0,
    RequireConsent = 1,
    RequireLegitimateInterest = 2,
}

impl RestrictionType {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(RestrictionType::NotAllowed),
            1 => Some(RestrictionType::RequireConsent),
            2 => Some(RestrictionType::RequireLegitimateInterest),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A purpose id in a publisher restriction: 1 to 63 (6 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PurposeId(u8);

impl PurposeId {
    pub const fn new(id: u8) -> Option<Self> {
        if id >= 1 && id <= 63 {
            Some(PurposeId(id))
        } else {
            None
        }
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

/// The most range entries one restriction can carry (`NumEntries` is 12 bits).
pub const MAX_RESTRICTION_RANGES: usize = 4095;

/// Publisher restrictions, kept sorted by purpose then restriction type (and
/// merged per pair), so that equal restrictions always encode to the same
/// bits. A pair may have no vendors: `@iabgpp/cmpapi` writes such entries, and
/// keeping them is what lets its strings re-encode byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PublisherRestrictions {
    entries: Vec<(PurposeId, RestrictionType, VendorSet)>,
}

/// A restriction whose vendors would need more range entries than the string
/// can hold ([`MAX_RESTRICTION_RANGES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyRanges;

impl std::fmt::Display for TooManyRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a publisher restriction can hold at most {MAX_RESTRICTION_RANGES} vendor ranges"
        )
    }
}

impl std::error::Error for TooManyRanges {}

impl PublisherRestrictions {
    pub fn new() -> Self {
        PublisherRestrictions::default()
    }

    /// Restricts `vendors` for `purpose`. Adding to an existing
    /// (purpose, type) pair takes the union.
    pub fn insert(
        &mut self,
        purpose: PurposeId,
        restriction: RestrictionType,
        vendors: &VendorSet,
    ) -> Result<(), TooManyRanges> {
        match self
            .entries
            .binary_search_by(|(p, t, _)| (*p, *t).cmp(&(purpose, restriction)))
        {
            Ok(i) => {
                let mut merged = self.entries[i].2.clone();
                merged.union_with(vendors);
                if merged.run_count() > MAX_RESTRICTION_RANGES {
                    return Err(TooManyRanges);
                }
                self.entries[i].2 = merged;
            }
            Err(i) => {
                if vendors.run_count() > MAX_RESTRICTION_RANGES {
                    return Err(TooManyRanges);
                }
                self.entries
                    .insert(i, (purpose, restriction, vendors.clone()));
            }
        }
        Ok(())
    }

    /// The vendors restricted for `purpose` with `restriction`, if any.
    pub fn vendors(&self, purpose: PurposeId, restriction: RestrictionType) -> Option<&VendorSet> {
        self.entries
            .binary_search_by(|(p, t, _)| (*p, *t).cmp(&(purpose, restriction)))
            .ok()
            .map(|i| &self.entries[i].2)
    }

    /// The restriction type a vendor has for a purpose, if any. Should a
    /// (malformed) string give several, the strictest wins, as in the
    /// official library.
    pub fn restriction_for(&self, purpose: PurposeId, vendor: VendorId) -> Option<RestrictionType> {
        self.entries
            .iter()
            .filter(|(p, _, vendors)| *p == purpose && vendors.contains(vendor))
            .map(|(_, t, _)| *t)
            .min()
    }

    /// Entries sorted by purpose, then restriction type.
    pub fn iter(&self) -> impl Iterator<Item = (PurposeId, RestrictionType, &VendorSet)> {
        self.entries.iter().map(|(p, t, v)| (*p, *t, v))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The publisher TC segment: the publisher's own purposes and its custom
/// purposes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PublisherTc {
    pub consents: PurposeSet,
    pub legitimate_interests: PurposeSet,
    pub custom_purposes: CustomPurposes,
}

/// Publisher custom purposes: how many there are (0 to 63) and which of them
/// have consent or legitimate interest. Both sets only hold ids up to the
/// count, so the count always covers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CustomPurposes {
    count: u8,
    consents: IdSet<63>,
    legitimate_interests: IdSet<63>,
}

impl CustomPurposes {
    pub fn new(
        count: u8,
        consents: IdSet<63>,
        legitimate_interests: IdSet<63>,
    ) -> Result<Self, OutOfRange> {
        let highest = consents.max().max(legitimate_interests.max());
        if count > 63 || highest > count {
            return Err(OutOfRange {
                what: "custom purpose",
                value: u64::from(highest.max(count)),
            });
        }
        Ok(CustomPurposes {
            count,
            consents,
            legitimate_interests,
        })
    }

    pub fn count(&self) -> u8 {
        self.count
    }

    pub fn consents(&self) -> IdSet<63> {
        self.consents
    }

    pub fn legitimate_interests(&self) -> IdSet<63> {
        self.legitimate_interests
    }
}

/// Which official encoder's choices to reproduce. The wire format is the
/// same; the two IAB libraries choose between bitfield and range encoding
/// differently, and matching them keeps our strings byte-identical to theirs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `@iabtechlabtcf/core`, for standalone TC strings.
    TcfCore,
    /// `@iabgpp/cmpapi`, for the TCF EU v2 section of a GPP string.
    Gpp,
}

const SEGMENT_DISCLOSED: u8 = 1;
const SEGMENT_PUBLISHER_TC: u8 = 3;

/// Decodes a TC string.
pub fn decode(text: &str) -> Result<TcString, Error> {
    decode_at(text, 0)
}

/// Encodes a TC string exactly as `@iabtechlabtcf/core` would encode the same
/// content.
pub fn encode(tc: &TcString) -> String {
    encode_flavor(tc, Flavor::TcfCore)
}

impl TcString {
    pub fn decode(text: &str) -> Result<TcString, Error> {
        decode(text)
    }

    pub fn encode(&self) -> String {
        encode(self)
    }
}

impl std::str::FromStr for TcString {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        decode(text)
    }
}

pub(crate) fn decode_at(text: &str, offset: usize) -> Result<TcString, Error> {
    let mut segments = text.split('.');
    let mut start = offset;
    let core_text = segments.next().unwrap_or_default();
    let mut tc = decode_core(BitReader::new(core_text, 0, start)?)?;
    start += core_text.len() + 1;
    let mut seen_publisher = false;
    for (index, segment_text) in segments.enumerate() {
        let segment = index + 1;
        let mut r = BitReader::new(segment_text, segment, start)?;
        start += segment_text.len() + 1;
        let segment_type = r.read(3, "segment type")? as u8;
        match segment_type {
            SEGMENT_DISCLOSED if tc.vendors_disclosed.is_none() => {
                tc.vendors_disclosed = Some(read_vendor_set(&mut r, "vendors_disclosed")?);
            }
            SEGMENT_PUBLISHER_TC if !seen_publisher => {
                tc.publisher_tc = Some(read_publisher_tc(&mut r)?);
                seen_publisher = true;
            }
            SEGMENT_DISCLOSED | SEGMENT_PUBLISHER_TC => {
                return Err(Error::DuplicateSegment {
                    segment,
                    segment_type,
                });
            }
            _ => {
                return Err(Error::UnknownSegmentType {
                    segment,
                    segment_type,
                });
            }
        }
    }
    Ok(tc)
}

fn decode_core(mut r: BitReader<'_>) -> Result<TcString, Error> {
    let version = r.read(6, "version")? as u8;
    if version != TC_STRING_VERSION {
        return Err(Error::UnsupportedVersion {
            segment: 0,
            field: "TC string version",
            version,
        });
    }
    let created = Deciseconds::new(r.read(36, "created")?).unwrap_or_default();
    let last_updated = Deciseconds::new(r.read(36, "last_updated")?).unwrap_or_default();
    let cmp_id = CmpId::new(r.read(12, "cmp_id")? as u16).unwrap_or_default();
    let cmp_version = CmpVersion::new(r.read(12, "cmp_version")? as u16).unwrap_or_default();
    let consent_screen = ConsentScreen::new(r.read(6, "consent_screen")? as u8).unwrap_or_default();
    let consent_language = read_alpha2(&mut r, "consent_language", LanguageCode::from_indexes)?;
    let vendor_list_version =
        VendorListVersion::new(r.read(12, "vendor_list_version")? as u16).unwrap_or_default();
    let bit = r.pos();
    let policy_code = r.read(6, "policy_version")? as u8;
    let policy_version =
        PolicyVersion::new(policy_code).ok_or(Error::UnsupportedPolicyVersion {
            bit,
            policy_version: policy_code,
        })?;
    let is_service_specific = r.read_bool("is_service_specific")?;
    let use_non_standard_texts = r.read_bool("use_non_standard_texts")?;
    let special_feature_optins =
        SpecialFeatureSet::from_field(r.read(12, "special_feature_optins")?, 12);
    let purpose_consents = PurposeSet::from_field(r.read(24, "purpose_consents")?, 24);
    let purpose_legitimate_interests =
        PurposeSet::from_field(r.read(24, "purpose_legitimate_interests")?, 24);
    let purpose_one_treatment = r.read_bool("purpose_one_treatment")?;
    let publisher_country_code =
        read_alpha2(&mut r, "publisher_country_code", CountryCode::from_indexes)?;
    let vendor_consents = read_vendor_set(&mut r, "vendor_consents")?;
    let vendor_legitimate_interests = read_vendor_set(&mut r, "vendor_legitimate_interests")?;
    let publisher_restrictions = read_restrictions(&mut r)?;
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
        vendors_disclosed: None,
        publisher_tc: None,
    })
}

fn read_alpha2<T>(
    r: &mut BitReader<'_>,
    field: &'static str,
    make: fn(u8, u8) -> Option<T>,
) -> Result<T, Error> {
    let bit = r.pos();
    let first = r.read(6, field)? as u8;
    let second = r.read(6, field)? as u8;
    make(first, second).ok_or_else(|| {
        r.invalid(
            field,
            if first < 26 { bit + 6 } else { bit },
            u64::from(if first < 26 { second } else { first }),
        )
    })
}

fn read_vendor_id(r: &mut BitReader<'_>, field: &'static str) -> Result<u16, Error> {
    let bit = r.pos();
    let id = r.read(16, field)? as u16;
    if id == 0 {
        return Err(r.invalid(field, bit, 0));
    }
    Ok(id)
}

/// Reads range entries (`NumEntries` then each entry) into `set`.
fn read_ranges(
    r: &mut BitReader<'_>,
    field: &'static str,
    set: &mut VendorSet,
) -> Result<(), Error> {
    let entries = r.read(12, field)?;
    for _ in 0..entries {
        let bit = r.pos();
        let is_range = r.read_bool(field)?;
        let start = read_vendor_id(r, field)?;
        let end = if is_range {
            read_vendor_id(r, field)?
        } else {
            start
        };
        if end < start {
            return Err(Error::InvalidRange {
                segment: r.segment(),
                field,
                bit,
                start,
                end,
            });
        }
        set.add_run(start, end);
    }
    Ok(())
}

/// `MaxVendorId`, `IsRangeEncoding`, then a bitfield or range entries.
fn read_vendor_set(r: &mut BitReader<'_>, field: &'static str) -> Result<VendorSet, Error> {
    let max = r.read(16, field)? as u32;
    let is_range = r.read_bool(field)?;
    let mut set = VendorSet::new();
    if is_range {
        read_ranges(r, field, &mut set)?;
        return Ok(set);
    }
    if r.remaining() < max as usize {
        return Err(r.truncated(field));
    }
    let mut id = 1u32;
    let mut left = max;
    while left > 0 {
        let n = left.min(MAX_READ);
        // Left-align the chunk so leading_zeros walks it id by id.
        let mut chunk = r.read(n, field)? << (64 - n);
        let mut at = id;
        while chunk != 0 {
            let zeros = chunk.leading_zeros();
            chunk <<= zeros;
            at += zeros;
            let ones = (!chunk).leading_zeros();
            set.add_run(at as u16, (at + ones - 1) as u16);
            chunk = chunk.checked_shl(ones).unwrap_or(0);
            at += ones;
        }
        id += n;
        left -= n;
    }
    Ok(set)
}

fn read_restrictions(r: &mut BitReader<'_>) -> Result<PublisherRestrictions, Error> {
    const FIELD: &str = "publisher_restrictions";
    let count = r.read(12, FIELD)?;
    let mut restrictions = PublisherRestrictions::new();
    for _ in 0..count {
        let bit = r.pos();
        let purpose_code = r.read(6, FIELD)? as u8;
        let purpose = PurposeId::new(purpose_code)
            .ok_or_else(|| r.invalid("restriction purpose id", bit, 0))?;
        let type_code = r.read(2, FIELD)? as u8;
        let restriction = RestrictionType::from_code(type_code)
            .ok_or_else(|| r.invalid("restriction type", bit + 6, u64::from(type_code)))?;
        let mut vendors = VendorSet::new();
        let entries_bit = r.pos();
        read_ranges(r, FIELD, &mut vendors)?;
        restrictions
            .insert(purpose, restriction, &vendors)
            .map_err(|TooManyRanges| {
                r.invalid(
                    "restriction range count",
                    entries_bit,
                    vendors.run_count() as u64,
                )
            })?;
    }
    Ok(restrictions)
}

fn read_publisher_tc(r: &mut BitReader<'_>) -> Result<PublisherTc, Error> {
    let consents = PurposeSet::from_field(r.read(24, "publisher_consents")?, 24);
    let legitimate_interests =
        PurposeSet::from_field(r.read(24, "publisher_legitimate_interests")?, 24);
    let count = r.read(6, "num_custom_purposes")? as u32;
    let custom_consents =
        IdSet::from_field(r.read_wide(count, "publisher_custom_consents")?, count);
    let custom_li = IdSet::from_field(
        r.read_wide(count, "publisher_custom_legitimate_interests")?,
        count,
    );
    Ok(PublisherTc {
        consents,
        legitimate_interests,
        custom_purposes: CustomPurposes {
            count: count as u8,
            consents: custom_consents,
            legitimate_interests: custom_li,
        },
    })
}

pub(crate) fn encode_flavor(tc: &TcString, flavor: Flavor) -> String {
    let mut out = String::with_capacity(64);
    let mut w = BitWriter::new(&mut out);
    w.write(u64::from(TC_STRING_VERSION), 6);
    w.write(tc.created.get(), 36);
    w.write(tc.last_updated.get(), 36);
    w.write(u64::from(tc.cmp_id.get()), 12);
    w.write(u64::from(tc.cmp_version.get()), 12);
    w.write(u64::from(tc.consent_screen.get()), 6);
    write_alpha2(&mut w, tc.consent_language.indexes());
    w.write(u64::from(tc.vendor_list_version.get()), 12);
    w.write(u64::from(tc.policy_version.get()), 6);
    w.write_bool(tc.is_service_specific);
    w.write_bool(tc.use_non_standard_texts);
    w.write(tc.special_feature_optins.to_field(12), 12);
    w.write(tc.purpose_consents.to_field(24), 24);
    w.write(tc.purpose_legitimate_interests.to_field(24), 24);
    w.write_bool(tc.purpose_one_treatment);
    write_alpha2(&mut w, tc.publisher_country_code.indexes());
    write_vendor_set(&mut w, &tc.vendor_consents, flavor);
    write_vendor_set(&mut w, &tc.vendor_legitimate_interests, flavor);
    w.write(tc.publisher_restrictions.len() as u64, 12);
    for (purpose, restriction, vendors) in tc.publisher_restrictions.iter() {
        w.write(u64::from(purpose.get()), 6);
        w.write(u64::from(restriction.code()), 2);
        write_ranges(&mut w, vendors);
    }
    w.finish(Padding::Quantum);
    if let Some(disclosed) = &tc.vendors_disclosed {
        out.push('.');
        let mut w = BitWriter::new(&mut out);
        w.write(u64::from(SEGMENT_DISCLOSED), 3);
        write_vendor_set(&mut w, disclosed, flavor);
        w.finish(Padding::Quantum);
    }
    if let Some(publisher) = &tc.publisher_tc {
        out.push('.');
        let mut w = BitWriter::new(&mut out);
        w.write(u64::from(SEGMENT_PUBLISHER_TC), 3);
        w.write(publisher.consents.to_field(24), 24);
        w.write(publisher.legitimate_interests.to_field(24), 24);
        let custom = &publisher.custom_purposes;
        let count = u32::from(custom.count);
        w.write(u64::from(custom.count), 6);
        w.write_wide(custom.consents.to_field(count), count);
        w.write_wide(custom.legitimate_interests.to_field(count), count);
        w.finish(Padding::Quantum);
    }
    out
}

fn write_alpha2(w: &mut BitWriter<'_>, (first, second): (u8, u8)) {
    w.write(u64::from(first), 6);
    w.write(u64::from(second), 6);
}

/// Whether to range-encode a vendor set, reproducing each official encoder.
///
/// `@iabtechlabtcf/core` (VendorVectorEncoder) walks ids 1..=max keeping a
/// running range length that it stops growing once it is no longer smaller
/// than the bitfield; it decides on the value seen at id `max`, before the
/// last run's closing id is counted, and it counts a single-id entry as 16
/// bits instead of 17. It also never range-encodes when max <= 45. The closed
/// form below gives the same answer. `@iabgpp/cmpapi` (OptimizedFixedRange)
/// simply takes ranges when they are not longer than `max` bits.
fn use_range_encoding(set: &VendorSet, max: u32, flavor: Flavor) -> bool {
    let runs = set.run_count();
    if runs == 0 || runs > MAX_RESTRICTION_RANGES {
        // Empty sets are a zero-length bitfield in both libraries; more runs
        // than NumEntries can count cannot be range-encoded at all.
        return false;
    }
    match flavor {
        Flavor::TcfCore => {
            if max <= 45 {
                return false;
            }
            let mut length = 29usize;
            for (i, (_, _, single)) in set.run_bounds().enumerate() {
                let last = i + 1 == runs;
                length += match (single, last) {
                    (true, false) => 16,
                    (false, false) => 33,
                    (true, true) => 0,
                    (false, true) => 17,
                };
            }
            length < 17 + max as usize
        }
        Flavor::Gpp => {
            let length: usize = 12
                + set
                    .run_bounds()
                    .map(|(_, _, single)| if single { 17 } else { 33 })
                    .sum::<usize>();
            length <= max as usize
        }
    }
}

fn write_vendor_set(w: &mut BitWriter<'_>, set: &VendorSet, flavor: Flavor) {
    let max = set.max().map_or(0, |id| u32::from(id.get()));
    w.write(u64::from(max), 16);
    if use_range_encoding(set, max, flavor) {
        w.write_bool(true);
        write_ranges(w, set);
        return;
    }
    w.write_bool(false);
    let mut next = 1u32;
    for (start, end, _) in set.run_bounds() {
        w.zeros((u32::from(start) - next) as usize);
        w.ones((u32::from(end) - u32::from(start) + 1) as usize);
        next = u32::from(end) + 1;
    }
}

/// `NumEntries` then one entry per run. Callers guarantee at most
/// [`MAX_RESTRICTION_RANGES`] runs.
fn write_ranges(w: &mut BitWriter<'_>, set: &VendorSet) {
    w.write(set.run_count() as u64, 12);
    for (start, end, single) in set.run_bounds() {
        w.write_bool(!single);
        w.write(u64::from(start), 16);
        if !single {
            w.write(u64::from(end), 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_unsupported_versions_and_segments() {
        assert!(matches!(
            decode("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA"),
            Err(Error::UnsupportedVersion { version: 1, .. })
        ));
        let tc = sample();
        let text = encode(&tc);
        let bad = format!("{text}.QAAA");
        assert_eq!(
            decode(&bad),
            Err(Error::UnknownSegmentType {
                segment: 2,
                segment_type: 2
            })
        );
        assert_eq!(
            decode(&format!("{text}.")),
            Err(Error::EmptySegment { segment: 2 })
        );
    }

    #[test]
    fn reports_ranges_that_end_before_they_start() {
        let mut text = String::new();
        let mut w = BitWriter::new(&mut text);
        w.write(2, 6);
        w.zeros(36 + 36 + 12 + 12 + 6);
        w.write(4, 6);
        w.write(4, 6);
        w.write(1, 12);
        w.write(4, 6);
        w.zeros(2 + 12 + 24 + 24 + 1 + 12);
        let range_at =
            6 + 36 + 36 + 12 + 12 + 6 + 12 + 12 + 6 + 2 + 12 + 24 + 24 + 1 + 12 + 17 + 12;
        w.write(100, 16);
        w.write(1, 1);
        w.write(1, 12);
        w.write(1, 1);
        w.write(50, 16);
        w.write(40, 16);
        w.finish(Padding::Quantum);
        assert_eq!(
            decode(&text),
            Err(Error::InvalidRange {
                segment: 0,
                field: "vendor_consents",
                bit: range_at,
                start: 50,
                end: 40
            })
        );
    }

    fn sample() -> TcString {
        TcString {
            created: Deciseconds::new(16_000_000_000).unwrap(),
            last_updated: Deciseconds::new(16_000_000_001).unwrap(),
            cmp_id: CmpId::new(300).unwrap(),
            cmp_version: CmpVersion::new(2).unwrap(),
            consent_screen: ConsentScreen::new(1).unwrap(),
            consent_language: LanguageCode::parse("fr").unwrap(),
            vendor_list_version: VendorListVersion::new(120).unwrap(),
            policy_version: PolicyVersion::TCF_2_3,
            is_service_specific: true,
            use_non_standard_texts: false,
            special_feature_optins: SpecialFeatureSet::from_ids([1]).unwrap(),
            purpose_consents: PurposeSet::from_ids(1..=10).unwrap(),
            purpose_legitimate_interests: PurposeSet::from_ids([2, 7]).unwrap(),
            purpose_one_treatment: false,
            publisher_country_code: CountryCode::parse("DE").unwrap(),
            vendor_consents: (1..=200).filter_map(VendorId::new).collect(),
            vendor_legitimate_interests: [3, 755].into_iter().filter_map(VendorId::new).collect(),
            publisher_restrictions: PublisherRestrictions::new(),
            vendors_disclosed: Some((1..=5).filter_map(VendorId::new).collect()),
            publisher_tc: None,
        }
    }

    #[test]
    fn round_trips_a_sample() {
        let tc = sample();
        assert_eq!(decode(&encode(&tc)), Ok(tc));
    }
}
