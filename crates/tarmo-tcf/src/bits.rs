//! Bit-level reading and writing straight over base64url text.
//!
//! Reading works on the characters themselves (6 bits each) instead of first
//! decoding into a byte buffer: a short TC string then decodes without any
//! scratch allocation, and long strings are not copied twice.

use crate::error::Error;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

const INVALID: u8 = 0xff;

static SEXTETS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The largest field read at once; keeps `have` below 64 in [`BitReader::read`].
pub(crate) const MAX_READ: u32 = 57;

pub(crate) struct BitReader<'a> {
    text: &'a [u8],
    pos: usize,
    len: usize,
    segment: usize,
}

impl<'a> BitReader<'a> {
    /// Checks every character up front so that reads cannot meet a bad one;
    /// `offset` is where `text` starts in the caller's input, for errors.
    pub(crate) fn new(text: &'a str, segment: usize, offset: usize) -> Result<Self, Error> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(Error::EmptySegment { segment });
        }
        if let Some(i) = bytes.iter().position(|&b| SEXTETS[b as usize] == INVALID) {
            return Err(Error::InvalidCharacter {
                position: offset + i,
                byte: bytes[i],
            });
        }
        Ok(BitReader {
            text: bytes,
            pos: 0,
            len: bytes.len() * 6,
            segment,
        })
    }

    pub(crate) fn segment(&self) -> usize {
        self.segment
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.len - self.pos
    }

    pub(crate) fn truncated(&self, field: &'static str) -> Error {
        Error::Truncated {
            segment: self.segment,
            field,
            bit: self.pos,
        }
    }

    pub(crate) fn invalid(&self, field: &'static str, bit: usize, value: u64) -> Error {
        Error::InvalidValue {
            segment: self.segment,
            field,
            bit,
            value,
        }
    }

    /// Reads `n <= MAX_READ` bits, most significant first.
    pub(crate) fn read(&mut self, n: u32, field: &'static str) -> Result<u64, Error> {
        debug_assert!(n <= MAX_READ);
        if n == 0 {
            return Ok(0);
        }
        if self.remaining() < n as usize {
            return Err(self.truncated(field));
        }
        let mut idx = self.pos / 6;
        let skip = (self.pos % 6) as u32;
        let mut have = 6 - skip;
        let mut acc = u64::from(SEXTETS[self.text[idx] as usize]) & ((1 << have) - 1);
        idx += 1;
        while have < n {
            acc = (acc << 6) | u64::from(SEXTETS[self.text[idx] as usize]);
            have += 6;
            idx += 1;
        }
        self.pos += n as usize;
        Ok(acc >> (have - n))
    }

    /// Reads up to 64 bits, for the few fields wider than [`MAX_READ`].
    pub(crate) fn read_wide(&mut self, n: u32, field: &'static str) -> Result<u64, Error> {
        if n <= MAX_READ {
            return self.read(n, field);
        }
        let high = self.read(n - 32, field)?;
        Ok((high << 32) | self.read(32, field)?)
    }

    pub(crate) fn read_bool(&mut self, field: &'static str) -> Result<bool, Error> {
        Ok(self.read(1, field)? == 1)
    }
}

/// How a segment is padded at its end. The two official encoders differ:
/// TCF core and GPP's TCF section pad to 24 bits (whole base64 quanta), the
/// GPP header and the US sections pad to a byte and then to a character.
#[derive(Clone, Copy)]
pub(crate) enum Padding {
    Quantum,
    Compressed,
}

pub(crate) struct BitWriter<'a> {
    out: &'a mut String,
    acc: u64,
    pending: u32,
    total: usize,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut String) -> Self {
        BitWriter {
            out,
            acc: 0,
            pending: 0,
            total: 0,
        }
    }

    /// Writes the low `n <= MAX_READ` bits of `value`, most significant first.
    pub(crate) fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= MAX_READ);
        if n == 0 {
            return;
        }
        self.acc = (self.acc << n) | (value & ((1u64 << n) - 1));
        self.pending += n;
        self.total += n as usize;
        while self.pending >= 6 {
            self.pending -= 6;
            let sextet = (self.acc >> self.pending) & 63;
            self.out.push(ALPHABET[sextet as usize] as char);
        }
        self.acc &= (1u64 << self.pending) - 1;
    }

    /// Writes up to 64 bits, for the few fields wider than [`MAX_READ`].
    pub(crate) fn write_wide(&mut self, value: u64, n: u32) {
        if n <= MAX_READ {
            self.write(value, n);
        } else {
            self.write(value >> 32, n - 32);
            self.write(value, 32);
        }
    }

    pub(crate) fn write_bool(&mut self, value: bool) {
        self.write(u64::from(value), 1);
    }

    /// Writes `count` zero bits (used for the gaps of a bitfield).
    pub(crate) fn zeros(&mut self, mut count: usize) {
        while count > 0 {
            let n = count.min(48);
            self.write(0, n as u32);
            count -= n;
        }
    }

    /// Writes `count` one bits (used for the runs of a bitfield).
    pub(crate) fn ones(&mut self, mut count: usize) {
        while count > 0 {
            let n = count.min(48);
            self.write(u64::MAX, n as u32);
            count -= n;
        }
    }

    pub(crate) fn finish(mut self, padding: Padding) {
        let target = match padding {
            Padding::Quantum => self.total.div_ceil(24) * 24,
            Padding::Compressed => (self.total.div_ceil(8) * 8).div_ceil(6) * 6,
        };
        self.zeros(target - self.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_across_character_boundaries() {
        let mut r = BitReader::new("CQA_", 0, 0).unwrap();
        assert_eq!(r.read(6, "version").unwrap(), 2);
        assert_eq!(r.read(3, "x").unwrap(), 0b010);
        assert_eq!(r.read(9, "y").unwrap(), 0);
        assert_eq!(r.read(6, "z").unwrap(), 63);
        assert!(matches!(
            r.read(1, "w"),
            Err(Error::Truncated { bit: 24, .. })
        ));
    }

    #[test]
    fn rejects_characters_outside_base64url() {
        assert_eq!(
            BitReader::new("CQ+A", 1, 10).err(),
            Some(Error::InvalidCharacter {
                position: 12,
                byte: b'+'
            })
        );
    }

    #[test]
    fn pads_like_the_official_encoders() {
        let mut quantum = String::new();
        let mut w = BitWriter::new(&mut quantum);
        w.write(0b11, 2);
        w.finish(Padding::Quantum);
        assert_eq!(quantum, "wAAA");

        let mut compressed = String::new();
        let mut w = BitWriter::new(&mut compressed);
        w.write(0b011, 3);
        w.finish(Padding::Compressed);
        assert_eq!(compressed, "YA");
    }
}
