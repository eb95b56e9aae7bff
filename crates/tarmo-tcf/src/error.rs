use std::fmt;

/// Why a TC string or GPP string could not be decoded.
///
/// Every variant that comes from the bits says where: `segment` is the
/// 0-based index of the dot-separated segment (the core segment is 0, a GPP
/// header is 0 too), `bit` the offset of the offending field from the start of
/// that segment, `position` a byte offset in the text that was decoded. Errors
/// inside a GPP section are wrapped in [`Error::InSection`] so the offsets stay
/// relative to the section's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input, or a segment between two separators, is empty.
    EmptySegment { segment: usize },
    /// A character outside the base64url alphabet (`A-Z a-z 0-9 - _`).
    InvalidCharacter { position: usize, byte: u8 },
    /// The segment ends before `field` does.
    Truncated {
        segment: usize,
        field: &'static str,
        bit: usize,
    },
    /// A version this crate does not implement (TC string version other than
    /// 2, GPP header version other than 1, or a GPP section version).
    UnsupportedVersion {
        segment: usize,
        field: &'static str,
        version: u8,
    },
    /// A TCF policy version outside 2 to 5.
    UnsupportedPolicyVersion { bit: usize, policy_version: u8 },
    /// A field holds a value its type does not allow (vendor id 0, restriction
    /// type 3, a language letter past Z, a 2-bit GPP value of 3, ...).
    InvalidValue {
        segment: usize,
        field: &'static str,
        bit: usize,
        value: u64,
    },
    /// A range entry whose end id is below its start id.
    InvalidRange {
        segment: usize,
        field: &'static str,
        bit: usize,
        start: u16,
        end: u16,
    },
    /// A segment type that TCF v2 does not define here (only 1, disclosed
    /// vendors, and 3, publisher TC, may follow the core segment; 2, vendors
    /// allowed, was removed from the framework).
    UnknownSegmentType { segment: usize, segment_type: u8 },
    /// The same segment type appears twice.
    DuplicateSegment { segment: usize, segment_type: u8 },
    /// The GPP header lists a different number of sections than follow it.
    SectionCountMismatch { declared: usize, found: usize },
    /// A GPP section failed to decode; `source` is relative to that section.
    InSection { section_id: u16, source: Box<Error> },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptySegment { segment } => write!(f, "segment {segment} is empty"),
            Error::InvalidCharacter { position, byte } => {
                if byte.is_ascii_graphic() {
                    write!(
                        f,
                        "invalid character {:?} at byte {position}: not base64url",
                        *byte as char
                    )
                } else {
                    write!(
                        f,
                        "invalid byte 0x{byte:02x} at byte {position}: not base64url"
                    )
                }
            }
            Error::Truncated {
                segment,
                field,
                bit,
            } => write!(
                f,
                "truncated input: segment {segment} ends inside {field} (bit {bit})"
            ),
            Error::UnsupportedVersion {
                segment,
                field,
                version,
            } => write!(
                f,
                "unsupported {field} {version} in segment {segment} (bit 0)"
            ),
            Error::UnsupportedPolicyVersion {
                bit,
                policy_version,
            } => write!(
                f,
                "unsupported TCF policy version {policy_version} at bit {bit} of segment 0 (2 to 5 are supported)"
            ),
            Error::InvalidValue {
                segment,
                field,
                bit,
                value,
            } => write!(
                f,
                "invalid {field} {value} at bit {bit} of segment {segment}"
            ),
            Error::InvalidRange {
                segment,
                field,
                bit,
                start,
                end,
            } => write!(
                f,
                "invalid range in {field} at bit {bit} of segment {segment}: ends at {end} before it starts at {start}"
            ),
            Error::UnknownSegmentType {
                segment,
                segment_type,
            } => write!(
                f,
                "unknown segment type {segment_type} in segment {segment} (bit 0)"
            ),
            Error::DuplicateSegment {
                segment,
                segment_type,
            } => write!(f, "segment {segment} repeats segment type {segment_type}"),
            Error::SectionCountMismatch { declared, found } => write!(
                f,
                "GPP header declares {declared} sections but {found} follow it"
            ),
            Error::InSection { section_id, source } => {
                write!(f, "in GPP section {section_id}: {source}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::InSection { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// A value that does not fit the field it was meant for (an id outside the
/// set's range, a number wider than its bit field, a code that is not two
/// letters A to Z).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    pub(crate) what: &'static str,
    pub(crate) value: u64,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is out of range", self.what, self.value)
    }
}

impl std::error::Error for OutOfRange {}
