//! The two ends of an archive in a store, read with ranged GETs: the
//! manifest (its first member) and the trailer (its last), without the
//! payload between them. What a catalog row needs; what `reconcile
//! --store` reads to adopt an archive from a bucket.
//!
//! The manifest is read from the start, a range at a time. The trailer is
//! found from the end: compressed archives are independent zstd frames
//! (gzip members), each holding 4 MiB of the tar stream, so a frame start
//! is also a 512-byte boundary of the tar stream. The tail is fetched, and
//! from the last frame magic in it backwards, the tail is decoded from that
//! point to the end until the decoded bytes hold the trailer's header at a
//! 512-byte boundary. An age stream cannot be read from its end without
//! the key's whole stream: those are read in full by the caller.

use std::io::Read;

use crate::archive::format::{Codec, Manifest, TRAILER_NAME, Trailer};
use crate::archive::reader::{detect_codec, read_manifest};
use crate::archive::tarread::TarReader;
use crate::encryption::{self, Keys};
use crate::error::Result;
use crate::stores::Location;

/// The largest tail fetched to find the trailer: one 4 MiB block stored
/// raw, with room for the frame before it.
const TAIL: u64 = 9 << 20;

/// What the ends of an archive say.
#[derive(Debug)]
pub struct Ends {
    pub codec: Codec,
    pub manifest: Manifest,
    pub trailer: Trailer,
}

/// Reads the manifest and trailer of the `size`-byte archive at `loc`;
/// `None` when its ends cannot be read alone (an age stream, or a tail
/// that does not decode): the caller then reads it whole.
///
/// # Errors
///
/// Fails when the store cannot be read, or the manifest is damaged.
pub fn read_ends(loc: &Location, size: u64, keys: &Keys) -> Result<Option<Ends>> {
    let head = loc.read_range(0, size.min(512))?;
    if encryption::is_age(&head) {
        return Ok(None);
    }
    let Some(codec) = detect_codec(&head) else {
        return Ok(None);
    };
    // From the start, a range at a time (`Location::open_lazily`).
    let manifest = read_manifest(loc, keys)?;
    // The frames end where a frame table starts, if there is one.
    let end = size - crate::archive::frames::table_len(loc, size)?;
    let start = end.saturating_sub(TAIL);
    let tail = loc.read_range(start, end - start)?;
    let trailer = match codec {
        // The tail's start rounded up to a tar block.
        Codec::None => find_trailer(&tail[((512 - start % 512) % 512) as usize..]),
        Codec::Zstd => decoded_tail(&tail, &[0x28, 0xB5, 0x2F, 0xFD], |d| {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(d)
                .and_then(|mut z| z.read_to_end(&mut out))
                .ok()
                .map(|_| out)
        }),
        Codec::Gzip => decoded_tail(&tail, &[0x1F, 0x8B, 0x08], |d| {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(d)
                .read_to_end(&mut out)
                .ok()
                .map(|_| out)
        }),
    };
    // A trailer of another backup is no trailer of this one.
    Ok(trailer.filter(|t| t.id == manifest.id).map(|trailer| Ends {
        codec,
        manifest,
        trailer,
    }))
}

/// The trailer in the decoded end of `tail`: from each place `magic`
/// starts, last first, `decode` is tried on the rest of the tail; the
/// first decoding that holds the trailer gives it.
fn decoded_tail(
    tail: &[u8],
    magic: &[u8],
    decode: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Trailer> {
    let starts: Vec<usize> = tail
        .windows(magic.len())
        .enumerate()
        .filter(|(_, w)| *w == magic)
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .rev()
        .find_map(|&i| decode(&tail[i..]).and_then(|d| find_trailer(&d)))
}

/// The trailer whose header (or PAX header) starts at a 512-byte
/// boundary of `tar`, the last such member.
fn find_trailer(tar: &[u8]) -> Option<Trailer> {
    (0..tar.len() / 512).rev().find_map(|block| {
        let from = &tar[block * 512..];
        let mut reader = TarReader::new(from);
        let entry = reader.next_entry().ok()??;
        if entry.path != TRAILER_NAME.as_bytes() {
            return None;
        }
        let mut data = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read_data(&mut buf).ok()? {
                0 => break,
                n => data.extend_from_slice(&buf[..n]),
            }
        }
        serde_json::from_slice(&data).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_is_found_at_a_block_boundary_of_a_decoded_tail() {
        let mut tar = tar::Builder::new(Vec::new());
        let filler = vec![7u8; 3000];
        let mut h = tar::Header::new_ustar();
        h.set_size(filler.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, "filler", &filler[..]).unwrap();
        let trailer = br#"{"format":1,"id":"x","entries":3,"files":2,"bytes":10,"vanished":[],"changed":[],"unreadable":[],"skipped":[],"duration_ms":5}"#;
        let mut h = tar::Header::new_ustar();
        h.set_size(trailer.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, TRAILER_NAME, &trailer[..]).unwrap();
        let data = tar.into_inner().unwrap();
        let found = find_trailer(&data).expect("found");
        assert_eq!((found.entries, found.files, found.bytes), (3, 2, 10));
        // Two zstd frames: the trailer is found by decoding from the
        // second frame's magic, or the first's.
        let (a, b) = data.split_at(2048);
        let mut z = zstd::encode_all(a, 3).unwrap();
        z.extend(zstd::encode_all(b, 3).unwrap());
        let got = decoded_tail(&z, &[0x28, 0xB5, 0x2F, 0xFD], |d| zstd::decode_all(d).ok());
        assert_eq!(got.map(|t| t.entries), Some(3));
    }
}
