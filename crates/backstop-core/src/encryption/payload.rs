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
}
