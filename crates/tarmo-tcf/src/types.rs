//! The value types a TC string is made of. Each one can only hold what its
//! bit field can carry, so encoding never has to fail or truncate.

use std::fmt;
use std::num::NonZeroU16;
use std::ops::RangeInclusive;

use crate::error::OutOfRange;

/// A vendor id from the Global Vendor List: 1 to 65535.
pub type VendorId = NonZeroU16;

macro_rules! bounded_uint {
    ($(#[$doc:meta])* $name:ident, $repr:ty, $bits:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name($repr);

        impl $name {
            /// Width of the field in the string.
            pub const BITS: u32 = $bits;
            pub const MAX: $repr = ((1u64 << $bits) - 1) as $repr;

            pub const fn new(value: $repr) -> Option<Self> {
                if value <= Self::MAX { Some($name(value)) } else { None }
            }

            pub const fn get(self) -> $repr {
                self.0
            }
        }

        impl TryFrom<u64> for $name {
            type Error = OutOfRange;
            fn try_from(value: u64) -> Result<Self, OutOfRange> {
                if value <= Self::MAX as u64 {
                    Ok($name(value as $repr))
                } else {
                    Err(OutOfRange { what: $what, value })
                }
            }
        }
    };
}

bounded_uint!(
    /// Registered id of the consent management platform (12 bits).
    CmpId, u16, 12, "cmp_id"
);
bounded_uint!(
    /// The CMP's own version number (12 bits).
    CmpVersion, u16, 12, "cmp_version"
);
bounded_uint!(
    /// CMP-defined number of the screen where consent was given (6 bits).
    ConsentScreen, u8, 6, "consent_screen"
);
bounded_uint!(
    /// Version of the Global Vendor List used (12 bits).
    VendorListVersion, u16, 12, "vendor_list_version"
);
bounded_uint!(
    /// A timestamp as the string stores it: deciseconds since the Unix epoch
    /// (36 bits, enough until the year 2187).
    Deciseconds, u64, 36, "deciseconds"
);

/// TCF policy version: 2 (TCF 2.0 and 2.1) to 5 (TCF 2.3). Other values mean a
/// framework whose rules this crate does not know, so they are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyVersion(u8);

impl PolicyVersion {
    pub const TCF_2_2: PolicyVersion = PolicyVersion(4);
    pub const TCF_2_3: PolicyVersion = PolicyVersion(5);

    pub const fn new(value: u8) -> Option<Self> {
        if value >= 2 && value <= 5 {
            Some(PolicyVersion(value))
        } else {
            None
        }
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

macro_rules! alpha2 {
    ($(#[$doc:meta])* $name:ident, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 2]);

        impl $name {
            /// Two ASCII letters, either case; stored upper case.
            pub fn parse(code: &str) -> Result<Self, OutOfRange> {
                match code.as_bytes() {
                    [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                        Ok($name([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
                    }
                    _ => Err(OutOfRange { what: $what, value: code.len() as u64 }),
                }
            }

            /// From the two 6-bit letter indexes of the string (0 is A).
            pub(crate) fn from_indexes(first: u8, second: u8) -> Option<Self> {
                (first < 26 && second < 26).then(|| $name([b'A' + first, b'A' + second]))
            }

            pub(crate) fn indexes(self) -> (u8, u8) {
                (self.0[0] - b'A', self.0[1] - b'A')
            }

            pub fn as_str(&self) -> &str {
                // Only ASCII letters are ever stored.
                std::str::from_utf8(&self.0).unwrap_or("??")
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.as_str())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

alpha2!(
    /// ISO 639-1 language of the consent dialogue, e.g. `EN`.
    LanguageCode,
    "language code"
);
alpha2!(
    /// ISO 3166-1 alpha-2 country of the publisher, e.g. `DE` (`AA` when unknown).
    CountryCode,
    "country code"
);

/// A set of small ids 1..=N kept as one machine word: purposes (N = 24),
/// special features (N = 12), custom purposes (N = 63).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IdSet<const N: u8>(u64);

/// Purposes 1 to 24.
pub type PurposeSet = IdSet<24>;
/// Special features 1 to 12.
pub type SpecialFeatureSet = IdSet<12>;

impl<const N: u8> IdSet<N> {
    pub const fn new() -> Self {
        IdSet(0)
    }

    /// The set of `ids`; fails on the first id outside 1..=N.
    pub fn from_ids(ids: impl IntoIterator<Item = u8>) -> Result<Self, OutOfRange> {
        let mut set = IdSet::new();
        for id in ids {
            set.insert(id)?;
        }
        Ok(set)
    }

    /// Adds `id`; fails if it is not within 1..=N.
    pub fn insert(&mut self, id: u8) -> Result<(), OutOfRange> {
        if id == 0 || id > N {
            return Err(OutOfRange {
                what: "id",
                value: u64::from(id),
            });
        }
        self.0 |= 1 << (id - 1);
        Ok(())
    }

    pub fn remove(&mut self, id: u8) {
        if id != 0 && id <= N {
            self.0 &= !(1 << (id - 1));
        }
    }

    pub fn contains(&self, id: u8) -> bool {
        id != 0 && id <= N && self.0 & (1 << (id - 1)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// The highest id present, 0 when empty.
    pub fn max(&self) -> u8 {
        (64 - self.0.leading_zeros()) as u8
    }

    /// Ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + use<N> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let id = rest.trailing_zeros() as u8 + 1;
                rest &= rest - 1;
                id
            })
        })
    }

    /// The first `count` ids as the string lays them out: id 1 first.
    pub(crate) fn to_field(self, count: u32) -> u64 {
        ((self.0 & low_mask(count)).reverse_bits() >> (64 - count.max(1))) & low_mask(count)
    }

    pub(crate) fn from_field(bits: u64, count: u32) -> Self {
        if count == 0 {
            return IdSet(0);
        }
        IdSet((bits << (64 - count)).reverse_bits() & low_mask(u32::from(N)))
    }
}

fn low_mask(count: u32) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

impl<const N: u8> fmt::Debug for IdSet<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A run of consecutive vendor ids, `start..=end`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
struct Run {
    start: u16,
    end: u16,
}

impl Run {
    fn is_single(self) -> bool {
        self.start == self.end
    }
}

/// Runs kept inline before spilling to the heap: enough for the vendor sets
/// of typical short strings, so decoding them does not allocate.
const INLINE_RUNS: usize = 8;

#[derive(Clone)]
enum Runs {
    Inline { len: u8, runs: [Run; INLINE_RUNS] },
    Heap(Vec<Run>),
}

/// A set of vendor ids, stored as sorted, disjoint, non-adjacent runs.
///
/// Runs mirror both wire encodings: a range entry is a run, and a bitfield is
/// read a word at a time into runs. Membership is a binary search, and a
/// range entry covering thousands of ids costs one element, so hostile ranges
/// cannot blow up memory.
#[derive(Clone)]
pub struct VendorSet {
    runs: Runs,
}

impl Default for VendorSet {
    fn default() -> Self {
        VendorSet::new()
    }
}

impl VendorSet {
    pub const fn new() -> Self {
        VendorSet {
            runs: Runs::Inline {
                len: 0,
                runs: [Run { start: 0, end: 0 }; INLINE_RUNS],
            },
        }
    }

    fn runs(&self) -> &[Run] {
        match &self.runs {
            Runs::Inline { len, runs } => &runs[..*len as usize],
            Runs::Heap(runs) => runs,
        }
    }

    /// Runs `f` on the runs as a vector, spilling inline storage first.
    fn with_heap<R>(&mut self, f: impl FnOnce(&mut Vec<Run>) -> R) -> R {
        let mut runs = match std::mem::replace(&mut self.runs, Runs::Heap(Vec::new())) {
            Runs::Inline { len, runs } => {
                // Spilling means a long string: leave room to grow.
                let mut spilled = Vec::with_capacity(8 * INLINE_RUNS);
                spilled.extend_from_slice(&runs[..len as usize]);
                spilled
            }
            Runs::Heap(runs) => runs,
        };
        let result = f(&mut runs);
        self.runs = Runs::Heap(runs);
        result
    }

    fn push_run(&mut self, run: Run) {
        match &mut self.runs {
            Runs::Heap(runs) => runs.push(run),
            Runs::Inline { len, runs } if (*len as usize) < INLINE_RUNS => {
                runs[*len as usize] = run;
                *len += 1;
            }
            Runs::Inline { .. } => self.with_heap(|runs| runs.push(run)),
        }
    }

    fn last_mut(&mut self) -> Option<&mut Run> {
        match &mut self.runs {
            Runs::Inline { len, runs } => runs[..*len as usize].last_mut(),
            Runs::Heap(runs) => runs.last_mut(),
        }
    }

    /// Adds `start..=end` (`start <= end`, both non-zero). Appending past the
    /// last run, the case of every well-formed string, is O(1).
    pub(crate) fn add_run(&mut self, start: u16, end: u16) {
        debug_assert!(start != 0 && start <= end);
        match self.runs().last().copied() {
            None => self.push_run(Run { start, end }),
            Some(last) if u32::from(start) > u32::from(last.end) + 1 => {
                self.push_run(Run { start, end })
            }
            Some(last) if start >= last.start => {
                if let Some(last) = self.last_mut() {
                    last.end = last.end.max(end);
                }
            }
            Some(_) => self.merge_run(start, end),
        }
    }

    fn merge_run(&mut self, start: u16, end: u16) {
        self.with_heap(|runs| {
            // First run that could touch the new one, and one past the last.
            let lo = runs.partition_point(|r| u32::from(r.end) + 1 < u32::from(start));
            let hi = runs.partition_point(|r| u32::from(r.start) <= u32::from(end) + 1);
            if lo == hi {
                runs.insert(lo, Run { start, end });
            } else {
                let merged = Run {
                    start: start.min(runs[lo].start),
                    end: end.max(runs[hi - 1].end),
                };
                runs.splice(lo..hi, [merged]);
            }
        })
    }

    pub fn insert(&mut self, id: VendorId) {
        self.add_run(id.get(), id.get());
    }

    /// Adds every id of `range`; an empty range adds nothing.
    pub fn insert_range(&mut self, range: RangeInclusive<VendorId>) {
        let (start, end) = (range.start().get(), range.end().get());
        if start <= end {
            self.add_run(start, end);
        }
    }

    pub fn contains(&self, id: VendorId) -> bool {
        let runs = self.runs();
        let i = runs.partition_point(|r| r.end < id.get());
        runs.get(i).is_some_and(|r| r.start <= id.get())
    }

    pub fn is_empty(&self) -> bool {
        self.runs().is_empty()
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.runs()
            .iter()
            .map(|r| usize::from(r.end - r.start) + 1)
            .sum()
    }

    /// The highest id, which is what the string stores as `MaxVendorId`.
    pub fn max(&self) -> Option<VendorId> {
        self.runs().last().and_then(|r| VendorId::new(r.end))
    }

    /// Ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = VendorId> + '_ {
        self.runs()
            .iter()
            .flat_map(|r| (r.start..=r.end).filter_map(VendorId::new))
    }

    /// Maximal runs of consecutive ids, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInclusive<VendorId>> + '_ {
        self.runs()
            .iter()
            .filter_map(|r| Some(VendorId::new(r.start)?..=VendorId::new(r.end)?))
    }

    pub(crate) fn run_count(&self) -> usize {
        self.runs().len()
    }

    pub(crate) fn run_bounds(&self) -> impl Iterator<Item = (u16, u16, bool)> + '_ {
        self.runs().iter().map(|r| (r.start, r.end, r.is_single()))
    }

    pub(crate) fn union_with(&mut self, other: &VendorSet) {
        for r in other.runs() {
            self.add_run(r.start, r.end);
        }
    }
}

impl PartialEq for VendorSet {
    fn eq(&self, other: &Self) -> bool {
        self.runs() == other.runs()
    }
}

impl Eq for VendorSet {}

impl std::hash::Hash for VendorSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.runs().hash(state);
    }
}

impl fmt::Debug for VendorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, r) in self.runs().iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            if r.is_single() {
                write!(f, "{sep}{}", r.start)?;
            } else {
                write!(f, "{sep}{}-{}", r.start, r.end)?;
            }
        }
        f.write_str("}")
    }
}

impl FromIterator<VendorId> for VendorSet {
    fn from_iter<I: IntoIterator<Item = VendorId>>(ids: I) -> Self {
        let mut set = VendorSet::new();
        for id in ids {
            set.insert(id);
        }
        set
    }
}

impl Extend<VendorId> for VendorSet {
    fn extend<I: IntoIterator<Item = VendorId>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: u16) -> VendorId {
        VendorId::new(id).unwrap()
    }

    #[test]
    fn keeps_runs_canonical_whatever_the_insertion_order() {
        let mut a = VendorSet::new();
        for id in [9, 3, 4, 1, 2, 7, 8, 20, 5, 6] {
            a.insert(v(id));
        }
        let b: VendorSet = [1, 2, 3, 4, 5, 6, 7, 8, 9, 20].into_iter().map(v).collect();
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), "{1-9, 20}");
        assert_eq!(a.len(), 10);
        assert!(a.contains(v(20)) && !a.contains(v(10)));
    }

    #[test]
    fn spills_to_the_heap_and_still_compares_by_content() {
        let many: VendorSet = (1..=40).step_by(2).map(v).collect();
        let mut reversed = VendorSet::new();
        for id in (1..=40).step_by(2).rev() {
            reversed.insert(v(id));
        }
        assert_eq!(many, reversed);
        assert_eq!(many.run_count(), 20);
        reversed.insert_range(v(2)..=v(38));
        assert_eq!(format!("{reversed:?}"), "{1-39}");
    }

    #[test]
    fn id_sets_map_to_string_bit_order() {
        let set = PurposeSet::from_ids([1, 3, 24]).unwrap();
        let field = set.to_field(24);
        assert_eq!(field, 0b1010_0000_0000_0000_0000_0001);
        assert_eq!(PurposeSet::from_field(field, 24), set);
        let custom = IdSet::<63>::from_field(0b101, 3);
        assert_eq!(custom.iter().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(custom.to_field(3), 0b101);
        assert_eq!(IdSet::<63>::new().to_field(0), 0);
    }
}
