//! GPP strings (IAB Tech Lab Global Privacy Platform, "Consent String
//! Specification"): a header listing section ids, then one `~`-separated
//! section per id.
//!
//! The EU TCF v2 section (2), US national (7) and the California (8),
//! Virginia (9), Colorado (10), Utah (11) and Connecticut (12) sections are
//! decoded in full, GPC subsections included. Every other section is kept as
//! its exact text and written back unchanged.

use crate::bits::{BitReader, BitWriter, Padding};
use crate::error::Error;
use crate::tcf::{self, Flavor, TcString};

/// A decoded GPP string: its sections, in ascending id order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GppString {
    sections: Vec<Section>,
}

/// The GPP header's type field and the only header version defined.
const HEADER_TYPE: u64 = 3;
pub const GPP_VERSION: u8 = 1;

/// One section of a GPP string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Section {
    /// Boxed: a TC string is several times larger than the other sections.
    TcfEuV2(Box<TcString>),
    UsNat(UsNat),
    UsCa(UsCa),
    UsVa(UsVa),
    UsCo(UsCo),
    UsUt(UsUt),
    UsCt(UsCt),
    /// A section this crate does not decode, kept verbatim.
    Opaque(OpaqueSection),
}

/// A section kept as its text: a non-zero id and the non-empty text between
/// the `~` separators.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpaqueSection {
    id: u16,
    text: String,
}

impl OpaqueSection {
    /// `None` if `id` is 0 or one of the ids this crate decodes, or if `text`
    /// is empty or contains `~`.
    pub fn new(id: u16, text: impl Into<String>) -> Option<Self> {
        let text = text.into();
        (id != 0 && !is_decoded_id(id) && !text.is_empty() && !text.contains('~'))
            .then_some(OpaqueSection { id, text })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Registered section ids and their API prefixes.
const SECTION_NAMES: &[(u16, &str)] = &[
    (2, "tcfeuv2"),
    (5, "tcfcav1"),
    (6, "uspv1"),
    (7, "usnat"),
    (8, "usca"),
    (9, "usva"),
    (10, "usco"),
    (11, "usut"),
    (12, "usct"),
    (13, "usfl"),
    (14, "usmt"),
    (15, "usor"),
    (16, "ustx"),
    (17, "usde"),
    (18, "usia"),
    (19, "usne"),
    (20, "usnh"),
    (21, "usnj"),
    (22, "ustn"),
    (23, "usmn"),
    (24, "usmd"),
    (25, "usin"),
    (26, "usky"),
    (27, "usri"),
];

/// The registered API prefix of a section id (`usnat` for 7), if any.
pub fn section_name(id: u16) -> Option<&'static str> {
    SECTION_NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, name)| *name)
}

/// The section id registered under an API prefix.
pub fn section_id(name: &str) -> Option<u16> {
    SECTION_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(id, _)| *id)
}

fn is_decoded_id(id: u16) -> bool {
    (7..=12).contains(&id) || id == 2
}

impl Section {
    pub fn id(&self) -> u16 {
        match self {
            Section::TcfEuV2(_) => 2,
            Section::UsNat(_) => 7,
            Section::UsCa(_) => 8,
            Section::UsVa(_) => 9,
            Section::UsCo(_) => 10,
            Section::UsUt(_) => 11,
            Section::UsCt(_) => 12,
            Section::Opaque(s) => s.id,
        }
    }

    fn decode(id: u16, text: &str) -> Result<Section, Error> {
        Ok(match id {
            2 => Section::TcfEuV2(Box::new(tcf::decode_at(text, 0)?)),
            7 => Section::UsNat(UsNat::decode(text)?),
            8 => Section::UsCa(UsCa::decode(text)?),
            9 => Section::UsVa(UsVa::decode(text)?),
            10 => Section::UsCo(UsCo::decode(text)?),
            11 => Section::UsUt(UsUt::decode(text)?),
            12 => Section::UsCt(UsCt::decode(text)?),
            _ => Section::Opaque(OpaqueSection {
                id,
                text: text.to_owned(),
            }),
        })
    }

    fn encode(&self, out: &mut String) {
        match self {
            Section::TcfEuV2(tc) => out.push_str(&tcf::encode_flavor(tc, Flavor::Gpp)),
            Section::UsNat(s) => s.encode(out),
            Section::UsCa(s) => s.encode(out),
            Section::UsVa(s) => s.encode(out),
            Section::UsCo(s) => s.encode(out),
            Section::UsUt(s) => s.encode(out),
            Section::UsCt(s) => s.encode(out),
            Section::Opaque(s) => out.push_str(&s.text),
        }
    }
}

impl GppString {
    pub fn new() -> Self {
        GppString::default()
    }

    /// Adds a section, replacing any section with the same id.
    pub fn insert(&mut self, section: Section) {
        match self
            .sections
            .binary_search_by_key(&section.id(), Section::id)
        {
            Ok(i) => self.sections[i] = section,
            Err(i) => self.sections.insert(i, section),
        }
    }

    pub fn remove(&mut self, id: u16) -> Option<Section> {
        let i = self.sections.binary_search_by_key(&id, Section::id).ok()?;
        Some(self.sections.remove(i))
    }

    pub fn section(&self, id: u16) -> Option<&Section> {
        let i = self.sections.binary_search_by_key(&id, Section::id).ok()?;
        Some(&self.sections[i])
    }

    /// Sections in ascending id order, as the header lists them.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn section_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.sections.iter().map(Section::id)
    }

    /// The EU TCF v2 section, if present.
    pub fn tcf_eu_v2(&self) -> Option<&TcString> {
        match self.section(2)? {
            Section::TcfEuV2(tc) => Some(tc),
            _ => None,
        }
    }

    pub fn decode(text: &str) -> Result<GppString, Error> {
        decode(text)
    }

    pub fn encode(&self) -> String {
        encode(self)
    }
}

impl std::str::FromStr for GppString {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        decode(text)
    }
}

/// Decodes a GPP string.
pub fn decode(text: &str) -> Result<GppString, Error> {
    let mut parts = text.split('~');
    let header = parts.next().unwrap_or_default();
    let mut r = BitReader::new(header, 0, 0)?;
    let header_type = r.read(6, "GPP header type")?;
    if header_type != HEADER_TYPE {
        return Err(r.invalid("GPP header type", 0, header_type));
    }
    let version = r.read(6, "GPP version")? as u8;
    if version != GPP_VERSION {
        return Err(Error::UnsupportedVersion {
            segment: 0,
            field: "GPP version",
            version,
        });
    }
    let ids = read_section_ids(&mut r)?;
    let texts: Vec<&str> = parts.collect();
    if texts.len() != ids.len() {
        return Err(Error::SectionCountMismatch {
            declared: ids.len(),
            found: texts.len(),
        });
    }
    let mut sections = Vec::with_capacity(ids.len());
    for (id, section_text) in ids.into_iter().zip(texts) {
        let section = Section::decode(id, section_text).map_err(|source| Error::InSection {
            section_id: id,
            source: Box::new(source),
        })?;
        if section_text.is_empty() {
            return Err(Error::InSection {
                section_id: id,
                source: Box::new(Error::EmptySegment { segment: 0 }),
            });
        }
        sections.push(section);
    }
    Ok(GppString { sections })
}

/// Encodes a GPP string exactly as `@iabgpp/cmpapi` would encode the same
/// sections.
pub fn encode(gpp: &GppString) -> String {
    let mut out = String::with_capacity(64);
    let mut w = BitWriter::new(&mut out);
    w.write(HEADER_TYPE, 6);
    w.write(u64::from(GPP_VERSION), 6);
    write_section_ids(&mut w, &gpp.sections);
    w.finish(Padding::Compressed);
    for section in &gpp.sections {
        out.push('~');
        section.encode(&mut out);
    }
    out
}

/// Fibonacci codes above this cannot be a section id; stops hostile input
/// from reading forever.
const MAX_FIBONACCI: u32 = u16::MAX as u32;

fn read_fibonacci(r: &mut BitReader<'_>, field: &'static str) -> Result<u32, Error> {
    let bit = r.pos();
    let (mut value, mut prev) = (0u32, false);
    let (mut fib, mut next) = (1u32, 2u32);
    loop {
        let set = r.read_bool(field)?;
        if set && prev {
            return Ok(value);
        }
        if set {
            value += fib;
        }
        if value > MAX_FIBONACCI || fib > MAX_FIBONACCI {
            return Err(r.invalid(field, bit, u64::from(value.max(fib))));
        }
        prev = set;
        (fib, next) = (next, fib + next);
    }
}

fn write_fibonacci(w: &mut BitWriter<'_>, value: u32) {
    let mut fibs = vec![1u32, 2];
    while let [.., a, b] = fibs[..] {
        if a + b > value {
            break;
        }
        fibs.push(a + b);
    }
    let mut bits = vec![false; fibs.len()];
    let mut rest = value;
    for (i, &f) in fibs.iter().enumerate().rev() {
        if f <= rest {
            bits[i] = true;
            rest -= f;
        }
    }
    let used = bits.iter().rposition(|&b| b).map_or(0, |i| i + 1);
    for &bit in &bits[..used] {
        w.write_bool(bit);
    }
    w.write_bool(true);
}

fn read_section_ids(r: &mut BitReader<'_>) -> Result<Vec<u16>, Error> {
    const FIELD: &str = "section ids";
    let count = r.read(12, FIELD)?;
    let mut ids = Vec::new();
    let mut offset = 0u32;
    for _ in 0..count {
        let bit = r.pos();
        let is_range = r.read_bool(FIELD)?;
        let start = offset + read_fibonacci(r, FIELD)?;
        let end = if is_range {
            start + read_fibonacci(r, FIELD)?
        } else {
            start
        };
        if end > u32::from(u16::MAX) {
            return Err(r.invalid(FIELD, bit, u64::from(end)));
        }
        if end - start > 64 {
            // No registry will ever hold that many sections; a range this wide
            // can only be an attempt to make us allocate.
            return Err(r.invalid(FIELD, bit, u64::from(end)));
        }
        ids.extend((start..=end).map(|id| id as u16));
        offset = end;
    }
    Ok(ids)
}

fn write_section_ids(w: &mut BitWriter<'_>, sections: &[Section]) {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for id in sections.iter().map(Section::id) {
        match runs.last_mut() {
            Some((_, end)) if u32::from(*end) + 1 == u32::from(id) => *end = id,
            _ => runs.push((id, id)),
        }
    }
    w.write(runs.len() as u64, 12);
    let mut offset = 0u32;
    for (start, end) in runs {
        w.write_bool(start != end);
        write_fibonacci(w, u32::from(start) - offset);
        if start != end {
            write_fibonacci(w, u32::from(end - start));
        }
        offset = u32::from(end);
    }
}

macro_rules! two_bit_enum {
    ($(#[$doc:meta])* $name:ident { $zero:ident, $one:ident, $two:ident }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $zero = 0,
            $one = 1,
            $two = 2,
        }

        impl $name {
            pub fn from_code(code: u8) -> Option<Self> {
                match code {
                    0 => Some($name::$zero),
                    1 => Some($name::$one),
                    2 => Some($name::$two),
                    _ => None,
                }
            }

            pub fn code(self) -> u8 {
                self as u8
            }
        }

        impl UsField for $name {
            fn read(r: &mut BitReader<'_>, field: &'static str, _: u8) -> Result<Self, Error> {
                let bit = r.pos();
                let code = r.read(2, field)?;
                Self::from_code(code as u8).ok_or_else(|| r.invalid(field, bit, code))
            }

            fn write(&self, w: &mut BitWriter<'_>) {
                w.write(u64::from(self.code()), 2);
            }

            fn to_json(&self, out: &mut ObjectWriter<'_>, key: &str) {
                out.int(key, self.code());
            }

            fn from_json(fields: &mut Fields, key: &str, _: u8) -> Result<Self, String> {
                let code = fields.int(key, 0, 2)?;
                Ok(Self::from_code(code as u8).unwrap_or_default())
            }
        }
    };
}

two_bit_enum!(
    /// Whether a notice was given: 0 not applicable, 1 yes, 2 no.
    Notice { NotApplicable, Provided, NotProvided }
);
two_bit_enum!(
    /// A consumer's choice. The specification words it "1 opted out / 2 did
    /// not opt out" for opt-out rights and "1 no consent / 2 consent" for
    /// consent rights; both mean the same bits: 1 denies, 2 allows.
    Choice { NotApplicable, Denied, Allowed }
);
two_bit_enum!(
    /// An MSPA mode flag: 0 not applicable, 1 yes, 2 no.
    MspaMode { NotApplicable, Yes, No }
);

/// Whether the transaction is an MSPA covered transaction: 1 yes, 2 no (0 is
/// not allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MspaCoveredTransaction(pub bool);

impl UsField for MspaCoveredTransaction {
    fn read(r: &mut BitReader<'_>, field: &'static str, _: u8) -> Result<Self, Error> {
        let bit = r.pos();
        match r.read(2, field)? {
            1 => Ok(MspaCoveredTransaction(true)),
            2 => Ok(MspaCoveredTransaction(false)),
            code => Err(r.invalid(field, bit, code)),
        }
    }

    fn write(&self, w: &mut BitWriter<'_>) {
        w.write(if self.0 { 1 } else { 2 }, 2);
    }

    fn to_json(&self, out: &mut ObjectWriter<'_>, key: &str) {
        out.int(key, if self.0 { 1 } else { 2 });
    }

    fn from_json(fields: &mut Fields, key: &str, _: u8) -> Result<Self, String> {
        Ok(MspaCoveredTransaction(fields.int(key, 1, 2)? == 1))
    }
}

impl Default for MspaCoveredTransaction {
    fn default() -> Self {
        MspaCoveredTransaction(true)
    }
}

impl<const N: usize> UsField for [Choice; N] {
    fn read(r: &mut BitReader<'_>, field: &'static str, version: u8) -> Result<Self, Error> {
        let mut out = [Choice::NotApplicable; N];
        for slot in &mut out {
            *slot = Choice::read(r, field, version)?;
        }
        Ok(out)
    }

    fn write(&self, w: &mut BitWriter<'_>) {
        for choice in self {
            choice.write(w);
        }
    }

    fn to_json(&self, out: &mut ObjectWriter<'_>, key: &str) {
        out.ints(key, self.iter().map(|c| i64::from(c.code())));
    }

    fn from_json(fields: &mut Fields, key: &str, _: u8) -> Result<Self, String> {
        let codes = fields.ints(key, 0, 2, false)?.unwrap_or_default();
        if codes.len() != N {
            return Err(format!("\"{key}\" must have {N} entries"));
        }
        let mut out = [Choice::NotApplicable; N];
        for (slot, code) in out.iter_mut().zip(codes) {
            *slot = Choice::from_code(code as u8).unwrap_or_default();
        }
        Ok(out)
    }
}

use crate::json::{Fields, ObjectWriter};

/// A field of a US section: its bits, and its JSON form (the raw code the
/// specification's tables define, so JSON and string say the same thing).
///
/// `version` is the section's version, for the fields whose width depends on
/// it; a field that stands for several keys of the JSON form (the US
/// national section's sensitive-data lists) names them in `json_keys`.
pub(crate) trait UsField: Sized {
    fn read(r: &mut BitReader<'_>, field: &'static str, version: u8) -> Result<Self, Error>;
    fn write(&self, w: &mut BitWriter<'_>);
    fn to_json(&self, out: &mut ObjectWriter<'_>, key: &str);
    fn from_json(fields: &mut Fields, key: &str, version: u8) -> Result<Self, String>;
    fn json_keys(key: &'static str, out: &mut Vec<&'static str>) {
        out.push(key);
    }
}

/// The GPC subsection shared by the US sections that have one: a 2-bit
/// subsection type (1) and the GPC flag.
const GPC_SUBSECTION_TYPE: u64 = 1;

fn read_gpc(text: &str, segment: usize, offset: usize) -> Result<bool, Error> {
    let mut r = BitReader::new(text, segment, offset)?;
    let subsection = r.read(2, "subsection type")?;
    if subsection != GPC_SUBSECTION_TYPE {
        return Err(Error::UnknownSegmentType {
            segment,
            segment_type: subsection as u8,
        });
    }
    r.read_bool("gpc")
}

fn write_gpc(out: &mut String, gpc: bool) {
    out.push('.');
    let mut w = BitWriter::new(out);
    w.write(GPC_SUBSECTION_TYPE, 2);
    w.write_bool(gpc);
    w.finish(Padding::Compressed);
}

/// Splits a US section into its core text and at most one subsection.
fn split_subsections(text: &str, allows_gpc: bool) -> Result<(&str, Option<&str>), Error> {
    let mut parts = text.split('.');
    let core = parts.next().unwrap_or_default();
    let gpc = parts.next();
    if let Some(extra) = parts.next().or(if allows_gpc { None } else { gpc }) {
        let segment = if allows_gpc { 2 } else { 1 };
        let offset = text.len() - extra.len();
        let mut r = BitReader::new(extra, segment, offset)?;
        return Err(Error::UnknownSegmentType {
            segment,
            segment_type: r.read(2, "subsection type")? as u8,
        });
    }
    Ok((core, gpc))
}

fn read_section_version(r: &mut BitReader<'_>, supported: &[u8]) -> Result<u8, Error> {
    let version = r.read(6, "section version")? as u8;
    if !supported.contains(&version) {
        return Err(Error::UnsupportedVersion {
            segment: 0,
            field: "section version",
            version,
        });
    }
    Ok(version)
}

/// A US section, its fields listed once: the struct, the bits (decode and
/// encode) and the JSON form all follow the list, in its order.
/// `versions` are the section versions read; `version_of` says which one a
/// value is written as.
macro_rules! us_section {
    (
        $(#[$doc:meta])*
        $name:ident, $json_name:literal, versions $versions:expr, version_of($s:ident) $version_of:expr,
        [$($(#[$fdoc:meta])* $field:ident: $ty:ty),* $(,)?] $(, $gpc:ident)?
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
            $(
                /// The GPC subsection's flag; `None` when the subsection is absent.
                pub $gpc: Option<bool>,
            )?
        }

        impl $name {
            const VERSIONS: &'static [u8] = $versions;

            fn version_of(&self) -> u8 {
                let $s = self;
                $version_of
            }

            fn decode(text: &str) -> Result<Self, Error> {
                let allows_gpc = false $(|| { let _ = stringify!($gpc); true })?;
                let (core, _gpc_text) = split_subsections(text, allows_gpc)?;
                let mut r = BitReader::new(core, 0, 0)?;
                let version = read_section_version(&mut r, Self::VERSIONS)?;
                $(let $field = <$ty>::read(&mut r, stringify!($field), version)?;)*
                $(let $gpc = match _gpc_text {
                    Some(gpc) => Some(read_gpc(gpc, 1, core.len() + 1)?),
                    None => None,
                };)?
                Ok($name { $($field,)* $($gpc,)? })
            }

            fn encode(&self, out: &mut String) {
                let mut w = BitWriter::new(out);
                w.write(u64::from(self.version_of()), 6);
                $(self.$field.write(&mut w);)*
                w.finish(Padding::Compressed);
                $(if let Some(gpc) = self.$gpc {
                    write_gpc(out, gpc);
                })?
            }

            /// The keys of the JSON form, in order.
            fn json_keys() -> Vec<&'static str> {
                let mut keys = vec!["version"];
                $(<$ty as UsField>::json_keys(stringify!($field), &mut keys);)*
                $(keys.push(stringify!($gpc));)?
                keys
            }

            pub(crate) fn to_json(&self, out: &mut String) {
                let mut o = ObjectWriter::new(out);
                o.int("version", self.version_of());
                $(self.$field.to_json(&mut o, stringify!($field));)*
                $(match self.$gpc {
                    Some(gpc) => o.bool("gpc", gpc),
                    None => o.null("gpc"),
                })?
                o.finish();
            }

            pub(crate) fn from_json(value: crate::json::Value) -> Result<Self, String> {
                let mut f = Fields::new(value, $json_name, &Self::json_keys())?;
                let (first, last) = (Self::VERSIONS[0], Self::VERSIONS[Self::VERSIONS.len() - 1]);
                let version = f.int("version", i64::from(first), i64::from(last))? as u8;
                $(let $field = <$ty>::from_json(&mut f, stringify!($field), version)?;)*
                $(let $gpc = match f.take("gpc") {
                    crate::json::Value::Null => None,
                    crate::json::Value::Bool(b) => Some(b),
                    _ => return Err(format!("{}: \"gpc\" must be true, false or null", $json_name)),
                };)?
                Ok($name { $($field,)* $($gpc,)? })
            }
        }
    };
}

/// The US state sections: one version each so far.
macro_rules! us_state_section {
    (
        $(#[$doc:meta])*
        $name:ident, $json_name:literal, [$($field:ident: $ty:ty),* $(,)?] $(, $gpc:ident)?
    ) => {
        us_section!($(#[$doc])* $name, $json_name, versions &[1], version_of(_s) $name::VERSION,
            [$($field: $ty),*] $(, $gpc)?);

        impl $name {
            /// The only version of this section defined so far.
            pub const VERSION: u8 = 1;
        }
    };
}

us_state_section!(
    /// California (section 8, `usca`).
    UsCa, "usca", [
        sale_opt_out_notice: Notice,
        sharing_opt_out_notice: Notice,
        sensitive_data_limit_use_notice: Notice,
        sale_opt_out: Choice,
        sharing_opt_out: Choice,
        sensitive_data_processing: [Choice; 9],
        known_child_sensitive_data_consents: [Choice; 2],
        personal_data_consents: Choice,
        mspa_covered_transaction: MspaCoveredTransaction,
        mspa_opt_out_option_mode: MspaMode,
        mspa_service_provider_mode: MspaMode,
    ], gpc
);

us_state_section!(
    /// Virginia (section 9, `usva`); it has no GPC subsection.
    UsVa, "usva", [
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sale_opt_out: Choice,
        targeted_advertising_opt_out: Choice,
        sensitive_data_processing: [Choice; 8],
        known_child_sensitive_data_consents: Choice,
        mspa_covered_transaction: MspaCoveredTransaction,
        mspa_opt_out_option_mode: MspaMode,
        mspa_service_provider_mode: MspaMode,
    ]
);

us_state_section!(
    /// Colorado (section 10, `usco`).
    UsCo, "usco", [
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sale_opt_out: Choice,
        targeted_advertising_opt_out: Choice,
        sensitive_data_processing: [Choice; 7],
        known_child_sensitive_data_consents: Choice,
        mspa_covered_transaction: MspaCoveredTransaction,
        mspa_opt_out_option_mode: MspaMode,
        mspa_service_provider_mode: MspaMode,
    ], gpc
);

us_state_section!(
    /// Utah (section 11, `usut`); it has no GPC subsection.
    UsUt, "usut", [
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sensitive_data_processing_opt_out_notice: Notice,
        sale_opt_out: Choice,
        targeted_advertising_opt_out: Choice,
        sensitive_data_processing: [Choice; 8],
        known_child_sensitive_data_consents: Choice,
        mspa_covered_transaction: MspaCoveredTransaction,
        mspa_opt_out_option_mode: MspaMode,
        mspa_service_provider_mode: MspaMode,
    ]
);

us_state_section!(
    /// Connecticut (section 12, `usct`).
    UsCt, "usct", [
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sale_opt_out: Choice,
        targeted_advertising_opt_out: Choice,
        sensitive_data_processing: [Choice; 8],
        known_child_sensitive_data_consents: [Choice; 3],
        mspa_covered_transaction: MspaCoveredTransaction,
        mspa_opt_out_option_mode: MspaMode,
        mspa_service_provider_mode: MspaMode,
    ], gpc
);

us_section!(
    /// The US national section (7, `usnat`). Version 2 widened the sensitive-data
    /// list from 12 to 16 entries and the known-child list from 2 to 3; both
    /// versions are read and written back as they are.
    UsNat, "usnat", versions &[1, 2], version_of(s) s.sensitive_data.version(), [
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        sharing_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sensitive_data_processing_opt_out_notice: Notice,
        sensitive_data_limit_use_notice: Notice,
        sale_opt_out: Choice,
        sharing_opt_out: Choice,
        targeted_advertising_opt_out: Choice,
        /// `sensitive_data_processing` and `known_child_sensitive_data_consents`,
        /// whose lengths the section version sets.
        sensitive_data: UsNatSensitiveData,
        personal_data_consents: Choice,
        mspa_covered_transaction: MspaCoveredTransaction,
        mspa_opt_out_option_mode: MspaMode,
        mspa_service_provider_mode: MspaMode,
    ], gpc
);

/// The version-dependent lists of the US national section; the variant is
/// the section version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UsNatSensitiveData {
    V1 {
        processing: [Choice; 12],
        known_child_consents: [Choice; 2],
    },
    V2 {
        processing: [Choice; 16],
        known_child_consents: [Choice; 3],
    },
}

impl Default for UsNatSensitiveData {
    fn default() -> Self {
        UsNatSensitiveData::V2 {
            processing: [Choice::NotApplicable; 16],
            known_child_consents: [Choice::NotApplicable; 3],
        }
    }
}

impl UsNatSensitiveData {
    pub fn version(&self) -> u8 {
        match self {
            UsNatSensitiveData::V1 { .. } => 1,
            UsNatSensitiveData::V2 { .. } => 2,
        }
    }
}

const SDP: &str = "sensitive_data_processing";
const KCC: &str = "known_child_sensitive_data_consents";

impl UsField for UsNatSensitiveData {
    fn read(r: &mut BitReader<'_>, _: &'static str, version: u8) -> Result<Self, Error> {
        Ok(if version == 1 {
            UsNatSensitiveData::V1 {
                processing: UsField::read(r, SDP, version)?,
                known_child_consents: UsField::read(r, KCC, version)?,
            }
        } else {
            UsNatSensitiveData::V2 {
                processing: UsField::read(r, SDP, version)?,
                known_child_consents: UsField::read(r, KCC, version)?,
            }
        })
    }

    fn write(&self, w: &mut BitWriter<'_>) {
        match self {
            UsNatSensitiveData::V1 {
                processing,
                known_child_consents,
            } => {
                processing.write(w);
                known_child_consents.write(w);
            }
            UsNatSensitiveData::V2 {
                processing,
                known_child_consents,
            } => {
                processing.write(w);
                known_child_consents.write(w);
            }
        }
    }

    fn to_json(&self, out: &mut ObjectWriter<'_>, _: &str) {
        match self {
            UsNatSensitiveData::V1 {
                processing,
                known_child_consents,
            } => {
                processing.to_json(out, SDP);
                known_child_consents.to_json(out, KCC);
            }
            UsNatSensitiveData::V2 {
                processing,
                known_child_consents,
            } => {
                processing.to_json(out, SDP);
                known_child_consents.to_json(out, KCC);
            }
        }
    }

    fn from_json(f: &mut Fields, _: &str, version: u8) -> Result<Self, String> {
        Ok(if version == 1 {
            UsNatSensitiveData::V1 {
                processing: UsField::from_json(f, SDP, version)?,
                known_child_consents: UsField::from_json(f, KCC, version)?,
            }
        } else {
            UsNatSensitiveData::V2 {
                processing: UsField::from_json(f, SDP, version)?,
                known_child_consents: UsField::from_json(f, KCC, version)?,
            }
        })
    }

    fn json_keys(_: &'static str, out: &mut Vec<&'static str>) {
        out.extend([SDP, KCC]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fibonacci_codes_match_the_specification_table() {
        for (value, code) in [
            (1, "11"),
            (2, "011"),
            (3, "0011"),
            (4, "1011"),
            (12, "101011"),
        ] {
            let mut text = String::new();
            let mut w = BitWriter::new(&mut text);
            w.write(0b1, 1);
            write_fibonacci(&mut w, value);
            let bits = 1 + code.len() as u32;
            w.finish(Padding::Compressed);
            let mut r = BitReader::new(&text, 0, 0).unwrap();
            assert_eq!(r.read(1, "marker").unwrap(), 1);
            let expected = u64::from_str_radix(code, 2).unwrap();
            assert_eq!(r.read(bits - 1, "code").unwrap(), expected, "value {value}");
            let mut r = BitReader::new(&text, 0, 0).unwrap();
            r.read(1, "marker").unwrap();
            assert_eq!(read_fibonacci(&mut r, "code").unwrap(), value);
        }
    }

    #[test]
    fn decodes_a_string_from_the_official_encoder() {
        let text = "DBACTvA~1NYY~BKRhaUlU.QA~BJQIiCk";
        let gpp = decode(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gpp.section_ids().collect::<Vec<_>>(), vec![6, 8, 9]);
        let Some(Section::UsCa(ca)) = gpp.section(8) else {
            panic!("California section decoded")
        };
        assert_eq!(ca.gpc, Some(false));
        assert!(ca.mspa_covered_transaction.0);
        assert_eq!(encode(&gpp), text);
    }

    #[test]
    fn the_us_national_section_keeps_its_version_in_bits_and_json() {
        let mut v1 = UsNat {
            sensitive_data: UsNatSensitiveData::V1 {
                processing: [Choice::Denied; 12],
                known_child_consents: [Choice::Allowed; 2],
            },
            gpc: Some(true),
            ..UsNat::default()
        };
        v1.sale_opt_out = Choice::Allowed;
        for section in [v1, UsNat::default()] {
            let mut text = String::new();
            section.encode(&mut text);
            assert_eq!(UsNat::decode(&text).unwrap(), section);
            let mut json = String::new();
            section.to_json(&mut json);
            assert!(
                json.contains(&format!("\"version\":{}", section.sensitive_data.version())),
                "{json}"
            );
            let keys: Vec<usize> = UsNat::json_keys()
                .iter()
                .map(|k| json.find(&format!("\"{k}\"")).unwrap())
                .collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "keys in the listed order: {json}"
            );
            let back = UsNat::from_json(crate::json::parse(&json).unwrap()).unwrap();
            assert_eq!(back, section);
        }
        // A version 1 list must have version 1's length.
        let mut json = String::new();
        UsNat::default().to_json(&mut json);
        let json = json.replace("\"version\":2", "\"version\":1");
        let err = UsNat::from_json(crate::json::parse(&json).unwrap()).unwrap_err();
        assert_eq!(err, "\"sensitive_data_processing\" must have 12 entries");
    }

    #[test]
    fn counts_sections_against_the_header() {
        assert_eq!(
            decode("DBACTvA~1NYY"),
            Err(Error::SectionCountMismatch {
                declared: 3,
                found: 1
            })
        );
    }
}
