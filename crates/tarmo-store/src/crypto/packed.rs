//! Event bodies are compressed before they are sealed: a Segment message is
//! ~300 bytes of JSON whose keys and much of whose values (`"context":
//! {"library":{"name":"analytics.js"`…) every message repeats. Alone, zstd
//! finds little to take in a message that small; with a dictionary of what
//! messages look like, a ~300-byte track becomes ~75 bytes (BENCHMARKS.md).
//!
//! The dictionary is built in ([`DICT_V1`], `events-v1.dict`), trained by
//! zstd on synthetic messages that `scripts/events-dict.py` writes: the
//! shapes of the Segment spec and the SDKs' contexts, with made-up values
//! (addresses only at the reserved example domains). It is not trained on
//! the installation's events, because a trained dictionary holds fragments
//! of the messages it saw (addresses, names) and must outlive every one of
//! them to read the rest: an erasure could not take a person's fragments
//! out of it.
//!
//! A packed body is [`MARK_V1`] then one zstd frame with its size
//! recorded, without its magic number and dictionary id (the mark says
//! both). A body written before packing (or one packing would not shrink)
//! is JSON, which starts with `{` and is read as it is. A later dictionary
//! takes a new mark; this one must stay readable as long as any body uses
//! it.
//!
//! Packing costs about 1 µs a message, unpacking 0.3 µs. For the Segment
//! API it runs where the message is parsed (the request's thread), not on
//! the writer; an import builds its events' bodies inside the writer's
//! transaction and packs them there.

use std::cell::RefCell;
use std::sync::OnceLock;

use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

use crate::{Error, Result};

/// The first byte of a body packed with [`DICT_V1`]. JSON never starts with it.
pub const MARK_V1: u8 = 0x01;

/// The first four bytes of every zstd frame, not stored.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The built-in dictionary: what messages look like, nothing about anyone
/// (`scripts/events-dict.py` says how it was made).
pub static DICT_V1: &[u8] = include_bytes!("events-v1.dict");

/// zstd's default level. Level 9 took ~10 % fewer bytes on the bench's
/// messages (zstd's command line); its time was not measured here.
const LEVEL: i32 = 3;

/// The most a packed body may unpack to. The server takes messages of at
/// most 32 KiB and imports write less; anything larger is not ours.
const MAX_BODY: usize = 4 << 20;

fn encoder() -> &'static EncoderDictionary<'static> {
    static D: OnceLock<EncoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| EncoderDictionary::copy(DICT_V1, LEVEL))
}

fn decoder() -> &'static DecoderDictionary<'static> {
    static D: OnceLock<DecoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| DecoderDictionary::copy(DICT_V1))
}

thread_local! {
    // A context per thread: making one allocates its tables, which for a
    // 300-byte message would cost more than the compression.
    static PACKER: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static UNPACKER: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `json` packed for sealing, or `json` itself when packing would not make
/// it smaller (or zstd could not get memory: the body is then kept whole).
pub fn pack(json: Vec<u8>) -> Vec<u8> {
    let packed = PACKER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Compressor::with_prepared_dictionary(encoder())
                .and_then(|mut c| c.include_dictid(false).map(|()| c))
                .ok();
        }
        let c = p.as_mut()?;
        let frame = c.compress(&json).ok()?;
        // The mark says what follows: zstd's own magic number would only
        // repeat it, so it is left out and put back to unpack.
        let rest = frame.strip_prefix(&ZSTD_MAGIC)?;
        let mut out = Vec::with_capacity(1 + rest.len());
        out.push(MARK_V1);
        out.extend_from_slice(rest);
        Some(out)
    });
    match packed {
        Some(p) if p.len() < json.len() => p,
        _ => json,
    }
}

/// The JSON of a body as [`pack`] left it: unpacked if it was packed.
pub fn unpack(plain: Vec<u8>) -> Result<Vec<u8>> {
    match plain.first() {
        Some(&MARK_V1) => UNPACKER.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(
                    Decompressor::with_prepared_dictionary(decoder())
                        .map_err(|e| Error::Corrupt(format!("an event body's unpacker: {e}")))?,
                );
            }
            let d = d.as_mut().expect("made above");
            let mut frame = Vec::with_capacity(plain.len() + ZSTD_MAGIC.len() - 1);
            frame.extend_from_slice(&ZSTD_MAGIC);
            frame.extend_from_slice(&plain[1..]);
            d.decompress(&frame, MAX_BODY)
                .map_err(|e| Error::Corrupt(format!("an event body does not unpack: {e}")))
        }),
        _ => Ok(plain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(n: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "track", "userId": format!("user-{n}"), "event": "Product Viewed",
            "messageId": format!("msg-{n}"), "timestamp": "2026-11-01T10:00:01.000Z",
            "properties": {"product_id": format!("sku-{n}"), "price": 19.9, "currency": "EUR"},
            "context": {"library": {"name": "analytics.js", "version": "5.2.0"}, "page": {"path": "/p/avocado"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_message_packs_to_under_a_third_and_comes_back_the_same() {
        for n in [0, 7, 123_456] {
            let json = track(n);
            let packed = pack(json.clone());
            assert_eq!(packed[0], MARK_V1);
            assert_ne!(packed[1..5], ZSTD_MAGIC, "the magic number is not kept");
            assert!(
                packed.len() * 3 < json.len(),
                "{} bytes packed to {}",
                json.len(),
                packed.len()
            );
            assert_eq!(unpack(packed).unwrap(), json);
        }
    }

    #[test]
    fn bodies_from_before_packing_and_ones_that_do_not_shrink_stay_json() {
        // What an older release sealed is read as it is.
        let json = track(1);
        assert_eq!(unpack(json.clone()).unwrap(), json);
        // Nothing to take out of a tiny message: kept whole.
        let tiny = br#"{"a":1}"#.to_vec();
        assert_eq!(pack(tiny.clone()), tiny);
        assert_eq!(unpack(tiny.clone()).unwrap(), tiny);
        assert_eq!(unpack(Vec::new()).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_damaged_or_oversized_body_is_an_error_not_a_panic() {
        let mut packed = pack(track(2));
        let last = packed.len() - 1;
        packed.truncate(last);
        assert!(matches!(unpack(packed), Err(Error::Corrupt(_))));
        assert!(matches!(
            unpack(vec![MARK_V1, 1, 2, 3]),
            Err(Error::Corrupt(_))
        ));
        // A frame that says it holds more than any body may.
        let big = vec![b' '; MAX_BODY + 1];
        let mut c = Compressor::with_prepared_dictionary(encoder()).unwrap();
        let mut frame = vec![MARK_V1];
        frame.extend(&c.compress(&big).unwrap()[ZSTD_MAGIC.len()..]);
        let e = unpack(frame).unwrap_err().to_string();
        assert!(e.contains("does not unpack"), "{e}");
    }

    #[test]
    fn the_dictionary_is_zstds_and_holds_no_one() {
        assert_eq!(
            &DICT_V1[..4],
            &[0x37, 0xa4, 0x30, 0xec],
            "a zstd dictionary"
        );
        // Any address in it is at a domain reserved for examples: the
        // corpus was made up.
        let mut addresses = 0;
        for i in 1..DICT_V1.len() - 1 {
            // An address: text, `@`, a letter (the entropy tables at the
            // start hold `@` as a byte among others).
            if DICT_V1[i] != b'@'
                || !DICT_V1[i - 1].is_ascii_alphanumeric()
                || !DICT_V1[i + 1].is_ascii_alphabetic()
            {
                continue;
            }
            let after = &DICT_V1[i + 1..(i + 13).min(DICT_V1.len())];
            assert!(
                after.starts_with(b"example.") || after.starts_with(b"mail.example"),
                "an address at {:?}",
                String::from_utf8_lossy(after)
            );
            addresses += 1;
        }
        // It did learn what an address looks like.
        assert!(addresses > 0);
    }
}
