//! An age payload decrypted where its bytes lie.
//!
//! age's payload is its STREAM construction: ChaCha20-Poly1305 over chunks
//! of 64 KiB of plaintext, each sealed with a 16-byte tag, under a nonce of
//! an 11-byte big-endian counter and a last-chunk flag. The `age` crate's
//! reader copies each chunk four times on its way out (into its buffer,
//! into a fresh `Vec` to decrypt, into a boxed slice, into the caller's
//! buffer) and zeroes it once; for a restore that is as much memory traffic
//! as the cipher itself. [`Payload`] decrypts the chunks inside the buffers
//! the archive was read into and closes the tag gaps with one move.
//!
//! Only the payload is done here. The header is parsed, its stanza
//! unwrapped and its MAC checked by the `age` crate ([`super::open_payload`]),
//! which also reads the payload's nonce; the payload key is derived from the
//! file key as age does (HKDF-SHA256, salt the nonce, label `payload`). Every
//! chunk is authenticated before its plaintext is used, the last one must
//! carry the last-chunk flag, and nothing may follow it: a truncated,
//! reordered or extended payload fails here as it does in `age`.

use std::io;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag};

/// Plaintext bytes a chunk holds (all but the last hold exactly this).
const CHUNK: usize = 64 << 10;
const TAG: usize = 16;
/// A sealed chunk: its plaintext and its tag.
const SEALED: usize = CHUNK + TAG;

/// The payload of one age stream being decrypted.
pub struct Payload {
    aead: ChaCha20Poly1305,
    /// The next chunk's number.
    counter: u128,
    /// The start of a chunk the last buffer ended in, or the last whole
    /// chunk seen, which is the stream's last if nothing follows.
    carry: Vec<u8>,
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Payload {
    /// A payload sealed under `key` (the payload key).
    pub fn new(key: &[u8; 32]) -> Payload {
        Payload {
            aead: ChaCha20Poly1305::new(key.into()),
            counter: 0,
            carry: Vec::with_capacity(SEALED),
        }
    }

    /// Decrypts the sealed chunk `chunk` in place (its tag last), as the
    /// stream's last when `last`: the length of its plaintext.
    fn open_chunk(&mut self, chunk: &mut [u8], last: bool) -> io::Result<usize> {
        if chunk.len() < TAG {
            return Err(damaged("age file is truncated"));
        }
        if self.counter >> 88 != 0 {
            return Err(damaged("age stream has too many chunks"));
        }
        let nonce: [u8; 12] = ((self.counter << 8) | u128::from(last)).to_be_bytes()[4..]
            .try_into()
            .expect("twelve bytes");
        let (body, tag) = chunk.split_at_mut(chunk.len() - TAG);
        let tag = *Tag::from_slice(tag);
        self.aead
            .decrypt_in_place_detached(&nonce.into(), &[], body, &tag)
            .map_err(|_| damaged("decryption error"))?;
        if last && body.is_empty() && self.counter > 0 {
            return Err(damaged("last chunk is empty"));
        }
        self.counter += 1;
        Ok(body.len())
    }

    /// Takes the next part of the sealed payload, `buf[from..]`, and leaves
    /// in `buf` only plaintext: that of every chunk it holds whole and
    /// that is not the last. Gives first the plaintext of a chunk that an
    /// earlier buffer began and this one completes, if any.
    ///
    /// # Errors
    ///
    /// Fails on a chunk that does not authenticate.
    pub fn open(&mut self, buf: &mut Vec<u8>, from: usize) -> io::Result<Option<Vec<u8>>> {
        let mut pos = from.min(buf.len());
        let mut before = None;
        if !self.carry.is_empty() && pos < buf.len() {
            let take = (SEALED - self.carry.len()).min(buf.len() - pos);
            self.carry.extend_from_slice(&buf[pos..pos + take]);
            pos += take;
            if self.carry.len() == SEALED && pos < buf.len() {
                // Something follows: not the last chunk.
                let mut chunk = std::mem::replace(&mut self.carry, Vec::with_capacity(SEALED));
                let n = self.open_chunk(&mut chunk, false)?;
                chunk.truncate(n);
                before = Some(chunk);
            }
        }
        let mut plain = 0;
        while buf.len() - pos > SEALED {
            let n = self.open_chunk(&mut buf[pos..pos + SEALED], false)?;
            buf.copy_within(pos..pos + n, plain);
            plain += n;
            pos += SEALED;
        }
        if pos < buf.len() {
            self.carry.extend_from_slice(&buf[pos..]);
        }
        buf.truncate(plain);
        Ok(before)
    }

    /// Ends the payload: the plaintext of its last chunk.
    ///
    /// # Errors
    ///
    /// Fails when the payload stops before its last chunk, or that chunk
    /// does not authenticate.
    pub fn finish(&mut self) -> io::Result<Vec<u8>> {
        let mut chunk = std::mem::take(&mut self.carry);
        if chunk.is_empty() {
            return Err(damaged("age file is truncated"));
        }
        match self.open_chunk(&mut chunk, true) {
            Ok(n) => {
                chunk.truncate(n);
                Ok(chunk)
            }
            // A whole chunk that is not the last: the rest is missing.
            Err(_) if chunk.len() == SEALED && self.open_chunk(&mut chunk, false).is_ok() => {
                Err(damaged("age file is truncated"))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;
    use std::io::{Read, Write};

    fn identity() -> age::x25519::Identity {
        age::x25519::Identity::generate()
    }

    fn seal(id: &age::x25519::Identity, plain: &[u8]) -> Vec<u8> {
        let recipient = id.to_public();
        let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as _)).unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    /// Decrypts `sealed` with `Payload`, fed in buffers of `size` bytes.
    fn open(id: &age::x25519::Identity, sealed: &[u8], size: usize) -> io::Result<Vec<u8>> {
        open_in(id, sealed, std::iter::repeat(size))
    }

    /// Decrypts `sealed` with `Payload`, fed in buffers of the `sizes`
    /// given, each after a few bytes already read (as the header is).
    fn open_in(
        id: &age::x25519::Identity,
        sealed: &[u8],
        mut sizes: impl Iterator<Item = usize>,
    ) -> io::Result<Vec<u8>> {
        let set =
            crate::encryption::IdentitySet::parse("key", id.to_string().expose_secret().as_bytes())
                .unwrap();
        let keys = crate::encryption::Keys::new(vec![set], Vec::new());
        let mut input = sealed;
        let mut payload =
            crate::encryption::open_payload(std::path::Path::new("x.age"), &mut input, &keys)
                .unwrap();
        let mut out = Vec::new();
        let mut i = 0;
        while !input.is_empty() {
            let size = sizes.next().unwrap_or(1).clamp(1, input.len());
            let (part, rest) = input.split_at(size);
            input = rest;
            let read = i % 3 * 5;
            i += 1;
            let mut buf = vec![0xa5; read];
            buf.extend_from_slice(part);
            if let Some(before) = payload.open(&mut buf, read)? {
                out.extend(before);
            }
            out.extend(buf);
        }
        out.extend(payload.finish()?);
        Ok(out)
    }

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn it_opens_what_age_seals_whatever_the_buffers() {
        let id = identity();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 77] {
            let data = plain(len);
            let sealed = seal(&id, &data);
            for size in [1000, SEALED - 1, SEALED, SEALED + 1, 1 << 20] {
                assert_eq!(open(&id, &sealed, size).unwrap(), data, "{len} in {size}");
            }
            // And age's own reader agrees.
            let d = age::Decryptor::new(&sealed[..]).unwrap();
            let mut r = d.decrypt(std::iter::once(&id as _)).unwrap();
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn buffers_of_any_sizes_give_the_same_plaintext() {
        let id = identity();
        let data = plain(9 * CHUNK + 1234);
        let sealed = seal(&id, &data);
        let mut x: u64 = 7;
        for _ in 0..20 {
            let sizes = std::iter::from_fn(|| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                Some((x >> 33) as usize % (3 * SEALED) + 1)
            });
            assert_eq!(open_in(&id, &sealed, sizes).unwrap(), data);
        }
    }

    #[test]
    fn a_cut_altered_or_extended_payload_fails() {
        let id = identity();
        let data = plain(3 * CHUNK);
        let sealed = seal(&id, &data);
        // The header and the payload's nonce, then three whole chunks.
        let start = sealed.len() - 3 * SEALED;
        // Cut at a chunk boundary: the last chunk is missing.
        let cut = &sealed[..start + 2 * SEALED];
        let e = open(&id, cut, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Cut inside a chunk.
        assert!(open(&id, &sealed[..sealed.len() - 100], 1 << 20).is_err());
        // A flipped byte in the middle.
        let mut flipped = sealed.clone();
        flipped[start + SEALED + 5] ^= 1;
        assert!(open(&id, &flipped, SEALED).is_err());
        // Bytes after the last chunk.
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; 40]);
        assert!(open(&id, &longer, 1 << 20).is_err());
        // Two chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = (start, start + SEALED);
        let first = swapped[a..b].to_vec();
        swapped.copy_within(b..b + SEALED, a);
        swapped[b..b + SEALED].copy_from_slice(&first);
        assert!(open(&id, &swapped, 1 << 20).is_err());
    }

    /// An identity that keeps the file key it unwraps.
    struct Grab<'a>(
        &'a age::x25519::Identity,
        std::sync::Mutex<Option<[u8; 16]>>,
    );

    impl age::Identity for Grab<'_> {
        fn unwrap_stanza(
            &self,
            stanza: &age_core::format::Stanza,
        ) -> Option<Result<age_core::format::FileKey, age::DecryptError>> {
            let got = age::Identity::unwrap_stanza(self.0, stanza);
            if let Some(Ok(k)) = &got {
                *self.1.lock().unwrap() = Some(k.expose_secret()[..].try_into().unwrap());
            }
            got
        }
    }

    /// The header and nonce of a real age file to `id`, and its payload key.
    fn prefix_and_key(id: &age::x25519::Identity) -> (Vec<u8>, [u8; 32]) {
        let sealed = seal(id, b"");
        let prefix = sealed[..sealed.len() - TAG].to_vec();
        let nonce = &prefix[prefix.len() - 16..];
        let grab = Grab(id, std::sync::Mutex::new(None));
        let d = age::Decryptor::new_buffered(&sealed[..]).unwrap();
        drop(
            d.decrypt(std::iter::once(&grab as &dyn age::Identity))
                .unwrap(),
        );
        let fk = grab.1.lock().unwrap().unwrap();
        let key = age_core::primitives::hkdf(nonce, b"payload", &fk);
        (prefix, key)
    }

    /// A chunk to seal: its plaintext, counter and last flag.
    type Chunk = (Vec<u8>, u128, bool);

    /// A payload of `chunks`, sealed under `key`.
    fn craft(key: &[u8; 32], chunks: &[Chunk]) -> Vec<u8> {
        let aead = ChaCha20Poly1305::new(key.into());
        let mut out = Vec::new();
        for (p, counter, last) in chunks {
            let nonce: [u8; 12] = ((counter << 8) | u128::from(*last)).to_be_bytes()[4..]
                .try_into()
                .unwrap();
            let mut body = p.clone();
            let tag = aead
                .encrypt_in_place_detached(&nonce.into(), &[], &mut body)
                .unwrap();
            out.extend_from_slice(&body);
            out.extend_from_slice(&tag);
        }
        out
    }

    /// What the `age` crate decrypts `file` to.
    fn age_opens(id: &age::x25519::Identity, file: &[u8]) -> io::Result<Vec<u8>> {
        let d = age::Decryptor::new_buffered(file).unwrap();
        let mut r = d.decrypt(std::iter::once(id as _)).unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back)?;
        Ok(back)
    }

    /// STREAM payloads age itself never writes (an empty last chunk after
    /// a full one, a chunk after the last, a counter that skips...),
    /// sealed with the real payload key: opened exactly when the `age`
    /// crate opens them, to the same plaintext, whatever the buffers.
    #[test]
    fn crafted_streams_are_opened_exactly_when_age_opens_them() {
        let id = identity();
        let (prefix, key) = prefix_and_key(&id);
        let full = || plain(CHUNK);
        let short = |n: usize| plain(n);
        let e = Vec::new;
        // (name, chunks, extra bytes appended, expect ok)
        let cases: Vec<(&str, Vec<Chunk>, Vec<u8>, bool)> = vec![
            ("empty", vec![(e(), 0, true)], vec![], true),
            ("short", vec![(short(100), 0, true)], vec![], true),
            ("full-last", vec![(full(), 0, true)], vec![], true),
            (
                "full-full-short",
                vec![(full(), 0, false), (full(), 1, false), (short(1), 2, true)],
                vec![],
                true,
            ),
            (
                "full-full-lastfull",
                vec![(full(), 0, false), (full(), 1, true)],
                vec![],
                true,
            ),
            (
                "full-then-empty-last",
                vec![(full(), 0, false), (e(), 1, true)],
                vec![],
                false,
            ),
            (
                "two-full-then-empty-last",
                vec![(full(), 0, false), (full(), 1, false), (e(), 2, true)],
                vec![],
                false,
            ),
            (
                "empty-then-empty",
                vec![(e(), 0, true), (e(), 1, true)],
                vec![],
                false,
            ),
            ("empty-not-last", vec![(e(), 0, false)], vec![], false),
            (
                "full-last-then-short",
                vec![(full(), 0, true), (short(10), 1, true)],
                vec![],
                false,
            ),
            (
                "full-last-then-full-short",
                vec![(full(), 0, true), (full(), 1, false), (short(5), 2, true)],
                vec![],
                false,
            ),
            (
                "short-not-last-at-end",
                vec![(full(), 0, false), (short(10), 1, false)],
                vec![],
                false,
            ),
            (
                "full-not-last-at-end",
                vec![(full(), 0, false), (full(), 1, false)],
                vec![],
                false,
            ),
            (
                "only-full-not-last",
                vec![(full(), 0, false)],
                vec![],
                false,
            ),
            (
                "counter-skips",
                vec![(full(), 0, false), (short(10), 2, true)],
                vec![],
                false,
            ),
            (
                "counter-starts-at-1",
                vec![(short(10), 1, true)],
                vec![],
                false,
            ),
            (
                "short-non-last-in-middle",
                vec![(short(100), 0, false), (short(10), 1, true)],
                vec![],
                false,
            ),
            (
                "oversize-last",
                vec![(plain(CHUNK + 1), 0, true)],
                vec![],
                false,
            ),
            (
                "trailing-after-short",
                vec![(short(100), 0, true)],
                vec![0; 40],
                false,
            ),
            (
                "trailing-1-after-full",
                vec![(full(), 0, true)],
                vec![0],
                false,
            ),
            (
                "trailing-tag-after-full",
                vec![(full(), 0, true)],
                vec![0; TAG],
                false,
            ),
            (
                "trailing-after-empty",
                vec![(e(), 0, true)],
                vec![7; 3],
                false,
            ),
            (
                "trailing-valid-chunk-after-last",
                vec![(short(3), 0, true)],
                craft(&key, &[(short(3), 1, true)]),
                false,
            ),
        ];
        for (name, chunks, extra, ok) in cases {
            let mut file = prefix.clone();
            file.extend(craft(&key, &chunks));
            file.extend(extra);
            let want: Vec<u8> = chunks.iter().flat_map(|c| c.0.clone()).collect();
            let theirs = age_opens(&id, &file);
            assert_eq!(theirs.is_ok(), ok, "{name}: age says {theirs:?}");
            if ok {
                assert_eq!(theirs.unwrap(), want, "{name}");
            }
            for size in [
                1,
                15,
                16,
                17,
                1000,
                SEALED - 1,
                SEALED,
                SEALED + 1,
                2 * SEALED,
                1 << 20,
            ] {
                let ours = open(&id, &file, size);
                match (&ours, ok) {
                    (Ok(p), true) => assert_eq!(p, &want, "{name} in {size}"),
                    (Err(_), false) => {}
                    _ => panic!("{name} in {size}: ours {:?}", ours.map(|p| p.len())),
                }
            }
        }
    }

    /// Drives open_payload and Payload over a ChannelReader exactly as
    /// reader.rs's decrypt_stage does, with the file split into pieces
    /// anywhere around the header, the nonce and the first chunk.
    fn via_channel(
        id: &age::x25519::Identity,
        sealed: &[u8],
        first: usize,
        rest: usize,
    ) -> io::Result<Vec<u8>> {
        let set =
            crate::encryption::IdentitySet::parse("key", id.to_string().expose_secret().as_bytes())
                .unwrap();
        let keys = crate::encryption::Keys::new(vec![set], Vec::new());
        let (tx, rx) = crossbeam_channel::unbounded();
        let (stx, _srx) = crossbeam_channel::unbounded();
        let mut at = 0;
        let mut size = first;
        while at < sealed.len() {
            let n = size.min(sealed.len() - at);
            tx.send(sealed[at..at + n].to_vec()).unwrap();
            at += n;
            size = rest;
        }
        drop(tx);
        let mut input = crate::archive::reader::ChannelReader::new(rx, stx);
        let mut payload =
            crate::encryption::open_payload(std::path::Path::new("x.age"), &mut input, &keys)
                .map_err(|e| io::Error::other(e.to_string()))?;
        let (mut next, sealed_rx, _spent) = input.into_parts();
        let mut out = Vec::new();
        loop {
            let (mut buf, from) = match next.take() {
                Some(p) => p,
                None => match sealed_rx.recv() {
                    Ok(b) => (b, 0),
                    Err(_) => break,
                },
            };
            if let Some(b) = payload.open(&mut buf, from)? {
                out.extend(b);
            }
            out.extend(buf);
        }
        out.extend(payload.finish()?);
        Ok(out)
    }

    #[test]
    fn the_nonce_is_found_wherever_the_reads_split_the_header() {
        let id = identity();
        for len in [0usize, 2 * CHUNK + 5] {
            let data = plain(len);
            let sealed = seal(&id, &data);
            let body = if len == 0 { TAG } else { 2 * SEALED + 5 + TAG };
            let payload_start = sealed.len() - body;
            let header_end = payload_start - 16;
            let mut firsts: Vec<usize> = (1..=24).collect();
            for d in 0..=17 {
                firsts.push(header_end - 8 + d);
                firsts.push(payload_start + d);
            }
            firsts.push(payload_start + SEALED);
            firsts.push(sealed.len());
            for &first in &firsts {
                // Byte by byte only where the payload is empty: each run
                // unwraps the key, slow in a debug build.
                let rests: &[usize] = if len == 0 {
                    &[1, 16, 1 << 20]
                } else {
                    &[7, SEALED, 1 << 20]
                };
                for &rest in rests {
                    let got = via_channel(&id, &sealed, first, rest)
                        .unwrap_or_else(|e| panic!("{len}: first {first} rest {rest}: {e}"));
                    assert!(got == data, "{len}: first {first} rest {rest}");
                }
            }
            // A cut at the chunk boundary still fails through the channel.
            if len > 0 {
                for first in [header_end, payload_start, payload_start + SEALED] {
                    let cut = &sealed[..payload_start + 2 * SEALED];
                    let e = via_channel(&id, cut, first.min(cut.len()), 1000).unwrap_err();
                    assert!(e.to_string().contains("truncated"), "{e}");
                }
            }
        }
    }
}
