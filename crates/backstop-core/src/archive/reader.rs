//! Reading archives back: the codec from the magic bytes, the manifest from
//! the first member, and a full verification that checks everything the
//! format promises in one pass over the file.
//!
//! Verification runs its stages on threads of their own: the file is read
//! and hashed as a whole (for the sidecar), decrypted (an age file),
//! decompressed, and parsed as tar with every member hashed. Nothing is
//! written anywhere.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use crate::stores::Location;
use std::rc::Rc;

use crossbeam_channel::{Receiver, Sender, bounded};
use sha2::{Digest, Sha256};

use crate::archive::format::{
    ArchiveError, CHECKSUMS_NAME, Codec, FORMAT, MANIFEST_NAME, Manifest, TRAILER_NAME, Trailer,
    parse_checksum_line,
};
use crate::archive::frames::{FrameTable, Partial, PartialReader};
use crate::archive::hashing::FileHashes;
use crate::archive::holders::{ChainReader, Link, chain_outcome};
use crate::archive::index::{INDEX_NAME, IndexReader};
use crate::archive::skip::{self, Ask, Gaps, Piece, PlainReader, Sums};
use crate::archive::tarread::{Entry, Kind, TarReader};
use crate::encryption::{self, EncryptionError, Keys};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Phase, Progress};

/// Members of the archive's own are at most this large, except the checksums.
const MAX_DOC: u64 = 16 << 20;

/// The codec of a stream, from its first bytes.
pub fn detect_codec(head: &[u8]) -> Option<Codec> {
    if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Some(Codec::Zstd)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(Codec::Gzip)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(Codec::None)
    } else {
        None
    }
}

/// Wraps `reader` in the decoder for `codec`. The decoders read straight
/// from its buffer: one of their own in between copied every compressed
/// byte once more.
fn decoder<'a, R: BufRead + 'a>(codec: Codec, reader: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match codec {
        // Multi-frame streams are read to the end: every block is a frame.
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        // Every block is a gzip member; `GzDecoder` would stop after the first.
        Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Codec::None => Box::new(reader),
    })
}

fn corrupt(path: &Path, detail: impl Into<String>) -> Error {
    ArchiveError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
    .into()
}

/// Reads the first bytes of `path`: whether it is an age file, and if not,
/// its codec (an encrypted archive's codec is known once it is decrypted).
pub(crate) fn sniff(loc: &Location) -> Result<Option<Codec>> {
    let path = loc.label();
    let head = loc.head_bytes(512)?;
    let n = head.len();
    if encryption::is_age(&head[..n]) {
        return Ok(None);
    }
    detect_codec(&head[..n])
        .map(Some)
        .ok_or_else(|| corrupt(path, NOT_AN_ARCHIVE))
}

const NOT_AN_ARCHIVE: &str = "not a backstop archive (neither zstd, gzip, tar nor age)";

/// A read error: the store's own when it carries one (a short object is
/// damage, exit 4), else an I/O error naming `path`.
fn read_error(path: &Path, e: io::Error) -> Error {
    match crate::store::StoreError::from_io(&e) {
        Some(store) => store.clone().into(),
        None => Error::io("reading", path, e),
    }
}

/// Where the first error of an age stream is kept, so that a decoder
/// error it caused is reported as what it is: the ciphertext failed age's
/// authentication (or was cut short).
type AgeFailure = Rc<RefCell<Option<String>>>;

/// An age stream's plaintext that records its first error.
struct Tracked<R> {
    inner: R,
    failure: AgeFailure,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.failure
                .borrow_mut()
                .get_or_insert_with(|| e.to_string());
        })
    }
}

/// The plaintext tar stream of the archive `path` whose bytes `input`
/// yields, on this thread: decrypted with `keys` when `codec` is `None`
/// (an age file), then decompressed. Also says the codec, and where an age
/// failure will be recorded. ([`walk_archive`] runs the same steps as
/// stages of its pipeline, each on its own thread.)
pub(crate) fn open_stream<'a, R: BufRead + 'a>(
    path: &Path,
    codec: Option<Codec>,
    input: R,
    keys: &Keys,
) -> Result<(Codec, Box<dyn Read + 'a>, AgeFailure)> {
    let failure = AgeFailure::default();
    let (codec, raw): (Codec, Box<dyn BufRead + 'a>) = match codec {
        Some(c) => (c, Box::new(input)),
        None => {
            let mut plain = Tracked {
                inner: encryption::decrypt(path, input, keys)?,
                failure: failure.clone(),
            };
            let mut head = vec![0u8; 512];
            let n = read_full(&mut plain, &mut head).map_err(|e| {
                Error::from(EncryptionError::Damaged {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
            })?;
            head.truncate(n);
            let codec = detect_codec(&head).ok_or_else(|| corrupt(path, NOT_AN_ARCHIVE))?;
            (
                codec,
                Box::new(io::BufReader::new(io::Cursor::new(head).chain(plain))),
            )
        }
    };
    let stream = decoder(codec, raw).map_err(|e| corrupt(path, e.to_string()))?;
    Ok((codec, stream, failure))
}

/// The error for a decoding failure: the age stream's, if it failed.
pub(crate) fn decode_error(
    path: &Path,
    codec: Codec,
    failure: &AgeFailure,
    detail: String,
) -> Error {
    match failure.borrow().clone() {
        Some(age) => EncryptionError::Damaged {
            path: path.to_path_buf(),
            detail: format!("age: {age}"),
        }
        .into(),
        None => corrupt(path, format!("{codec} stream: {detail}")),
    }
}

/// Parses a manifest, refusing a newer format before anything else.
pub fn parse_manifest(path: &Path, data: &[u8]) -> Result<Manifest> {
    let value: serde_json::Value = serde_json::from_slice(data)
        .map_err(|e| corrupt(path, format!("{MANIFEST_NAME} is not valid JSON: {e}")))?;
    match value.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) if f > u64::from(FORMAT) => {
            return Err(ArchiveError::NewerFormat {
                path: path.to_path_buf(),
                found: f,
            }
            .into());
        }
        _ => {
            return Err(corrupt(
                path,
                format!("{MANIFEST_NAME} has no valid format number"),
            ));
        }
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| corrupt(path, format!("{MANIFEST_NAME}: {e}")))?;
    manifest
        .check_names()
        .map_err(|e| corrupt(path, format!("{MANIFEST_NAME}: {e}")))?;
    Ok(manifest)
}

/// Reads only the manifest, the archive's first member, decrypting with
/// `keys` when the archive is encrypted.
///
/// # Errors
///
/// Fails when the file cannot be read (or decrypted), or its first member
/// is not a manifest.
pub fn read_manifest(loc: &Location, keys: &Keys) -> Result<Manifest> {
    let path = loc.label();
    let codec = sniff(loc)?;
    let file = loc.open_lazily()?;
    let (codec, stream, failure) = open_stream(path, codec, io::BufReader::new(file), keys)?;
    let mut tar = TarReader::new(stream);
    let first = tar
        .next_entry()
        .map_err(|e| decode_error(path, codec, &failure, e.to_string()))?
        .ok_or_else(|| corrupt(path, "the archive is empty"))?;
    let data = read_doc(path, &mut tar, &first, MANIFEST_NAME)?;
    parse_manifest(path, &data)
}

/// Copies the index member of the archive `path` into `out`, its text as
/// it is; false when the archive has none (written before chains). The
/// payload is skipped, not checked: what the index says is checked where
/// it is used.
///
/// # Errors
///
/// Fails when the file cannot be read (or decrypted) as an archive.
pub fn copy_index(loc: &Location, keys: &Keys, out: &mut dyn io::Write) -> Result<bool> {
    let path = loc.label();
    let codec = sniff(loc)?;
    let file = loc.open()?;
    let input = io::BufReader::with_capacity(1 << 20, file);
    let (codec, stream, failure) = open_stream(path, codec, input, keys)?;
    let mut tar = TarReader::new(stream);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let entry = tar
            .next_entry()
            .map_err(|e| decode_error(path, codec, &failure, e.to_string()))?;
        let Some(entry) = entry else {
            return Ok(false);
        };
        if entry.path == TRAILER_NAME.as_bytes() {
            return Ok(false);
        }
        let wanted = entry.path == INDEX_NAME.as_bytes();
        loop {
            let n = tar
                .read_data(&mut buf)
                .map_err(|e| decode_error(path, codec, &failure, e.to_string()))?;
            if n == 0 {
                break;
            }
            if wanted {
                out.write_all(&buf[..n])
                    .map_err(|e| Error::io("writing the index of", path, e))?;
            }
        }
        if wanted {
            return Ok(true);
        }
    }
}

/// Reads one of the archive's own JSON members, checking its name.
pub(crate) fn read_doc<R: Read>(
    path: &Path,
    tar: &mut TarReader<R>,
    entry: &Entry,
    name: &str,
) -> Result<Vec<u8>> {
    if entry.path != name.as_bytes() {
        return Err(corrupt(
            path,
            format!(
                "expected {name}, found {}",
                String::from_utf8_lossy(&entry.path)
            ),
        ));
    }
    if entry.kind != Kind::File || entry.sparse.is_some() || entry.size > MAX_DOC {
        return Err(corrupt(path, format!("{name} is not a small regular file")));
    }
    read_content(path, tar, entry.size, name)
}

/// Reads the current member's whole content.
fn read_content<R: Read>(
    path: &Path,
    tar: &mut TarReader<R>,
    size: u64,
    name: &str,
) -> Result<Vec<u8>> {
    let mut data = vec![0u8; size as usize];
    let mut n = 0;
    while n < data.len() {
        match tar.read_data(&mut data[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(corrupt(path, format!("reading {name}: {e}"))),
        }
    }
    Ok(data)
}

/// What a full verification found; produced only when everything checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// SHA-256 of the archive file as a whole.
    pub sha256: String,
    pub size: u64,
    pub codec: Codec,
    /// Whether the file is an age stream around the compressed archive.
    pub encrypted: bool,
    pub manifest: Manifest,
    pub trailer: Trailer,
    /// Payload entries, regular files, and their bytes, as counted while reading.
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Unchanged files of an incremental, which other archives hold.
    pub unchanged: u64,
}

/// The outcome of [`verify_archive`]: the whole-file checksum is always known
/// once the file was read, even when its content is broken, so the caller can
/// also say whether the sidecar matched.
#[derive(Debug)]
pub struct VerifyRun {
    pub sha256: Option<String>,
    pub size: u64,
    /// Whether the file is an age stream (known once its first bytes are read).
    pub encrypted: bool,
    pub result: Result<Verified>,
}

/// A reader over chunks arriving through a channel.
pub(crate) struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    /// Where chunks read to the end go back to, to be filled again: a
    /// fresh zeroed megabyte a chunk was a measurable part of a restore.
    spent: Sender<Vec<u8>>,
    /// Set once the sending stage has ended and every chunk was read.
    drained: Rc<Cell<bool>>,
}

impl ChannelReader {
    /// Reads the chunks `rx` brings, giving each back to `spent` once read.
    pub(crate) fn new(rx: Receiver<Vec<u8>>, spent: Sender<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            spent,
            drained: Rc::default(),
        }
    }
}

/// A [`ChannelReader`] taken apart: the chunk being read, with where its
/// unread part starts (if anything is left of it), and the channels, to
/// take whole chunks from and give them back to.
type Parts = (Option<(Vec<u8>, usize)>, Receiver<Vec<u8>>, Sender<Vec<u8>>);

impl ChannelReader {
    /// What is left to read, and its channels.
    pub(crate) fn into_parts(self) -> Parts {
        let current = (self.pos < self.chunk.len()).then_some((self.chunk, self.pos));
        (current, self.rx, self.spent)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    let old = std::mem::replace(&mut self.chunk, c);
                    let _ = self.spent.try_send(old);
                    self.pos = 0;
                }
                Err(_) => {
                    self.drained.set(true);
                    return Ok(&[]);
                }
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, buf)
    }
}

/// `Read::read` of a reader that has its own buffer: a copy out of it.
pub(crate) fn read_buffered(r: &mut impl BufRead, buf: &mut [u8]) -> io::Result<usize> {
    let rest = r.fill_buf()?;
    let n = buf.len().min(rest.len());
    buf[..n].copy_from_slice(&rest[..n]);
    r.consume(n);
    Ok(n)
}

/// A 1 MiB buffer to fill: a spent chunk when one came back (only what its
/// last use left short is zeroed again), else a new one.
pub(crate) fn refill(spent: &Receiver<Vec<u8>>) -> Vec<u8> {
    let mut buf = spent.try_recv().unwrap_or_default();
    buf.resize(CHUNK, 0);
    buf
}

/// The size of the chunks the stages pass on.
const CHUNK: usize = 1 << 20;

/// Reads `path` completely and checks it: the codec decodes to the end with
/// nothing after it; the manifest is first and of a known format; every
/// payload path is relative, has no `..`, and lies under one of the sources;
/// the payload is in backstop's order (each source's entries together, depth
/// first, names in byte order); hard links point at earlier files; every regular file's SHA-256 matches
/// its line in the checksums member, which lists exactly those files in
/// order; the trailer is last and agrees with what was read.
pub fn verify_archive(
    path: &Location,
    (progress, cancel): (&dyn Progress, &Cancel),
    keys: &Keys,
) -> VerifyRun {
    walk_archive(
        path,
        (progress, Phase::Verify),
        cancel,
        keys,
        &mut CheckOnly,
    )
}

/// Reads `path` completely as [`verify_archive`] does, passing each payload
/// entry to `visitor` (a restore writes them out). The whole-file checksum
/// is computed on the way. Progress is reported as `phase`, in bytes of the
/// archive file read, the phase's total (a visitor that writes reports
/// nothing, so the count never passes the total). An encrypted archive is
/// decrypted with `keys`; without a key that opens it, the file is still
/// read and hashed to the end, so the caller can check the sidecar.
pub fn walk_archive(
    path: &Location,
    (progress, phase): (&dyn Progress, Phase),
    cancel: &Cancel,
    keys: &Keys,
    visitor: &mut dyn Visitor,
) -> VerifyRun {
    walk_archive_chain(
        (path, None, None),
        (&[], Vec::new()),
        (progress, phase),
        cancel,
        keys,
        visitor,
    )
}

/// [`walk_archive`] over an incremental and the `links` of its chain
/// (parent first, see [`crate::archive::holders::resolve`]), which are
/// read alongside it for its unchanged files; `sources` are the
/// incremental's, in order. Every link is read to its end and must hash
/// to the SHA-256 recorded for it.
///
/// With a `partial` read, only its frames are read, each checked against
/// the frame table (itself checked against the catalog): the run has no
/// whole-file SHA-256 then. Links with a partial read of their own are
/// read so too.
///
/// With the archive's frame `table` (checked against the catalog), a
/// visitor that compares with a live tree may vouch for large files, whose
/// frames are then passed over ([`crate::archive::skip`]): a zstd archive
/// that is no incremental only.
pub fn walk_archive_chain(
    (loc, partial, table): (&Location, Option<&Partial>, Option<&FrameTable>),
    (links, sources): (&[Link], Vec<Vec<u8>>),
    (progress, phase): (&dyn Progress, Phase),
    cancel: &Cancel,
    keys: &Keys,
    visitor: &mut dyn Visitor,
) -> VerifyRun {
    if let Some(partial) = partial {
        return walk_partial(
            (loc, partial),
            (links, sources),
            (progress, phase),
            (keys, cancel),
            visitor,
        );
    }
    let path = loc.label();
    let sniffed = match sniff(loc) {
        Ok(c) => c,
        Err(e) => {
            return VerifyRun {
                sha256: None,
                size: 0,
                encrypted: false,
                result: Err(e),
            };
        }
    };
    let encrypted = sniffed.is_none();
    // What passing frames over needs: the table's frames, the large
    // files' checksums, and where to read a frame again. A tail that
    // cannot be read is left to the walk to report.
    let skips = table
        .filter(|_| links.is_empty() && sniffed == Some(Codec::Zstd) && visitor.compares_live())
        .and_then(|t| {
            let sums = skip::sums(loc, t).ok()?;
            let refetch = skip::Refetch::new(loc, &t.frames).ok()?;
            Some((&t.frames[..], sums, refetch))
        });
    let (frames, sums, refetch) = match skips {
        Some((frames, sums, refetch)) => (Some(frames), Some(sums), Some(refetch)),
        None => (None, None, None),
    };
    let total = loc.size().ok().flatten().unwrap_or(0);
    progress.start(phase, total);
    let run = std::thread::scope(|s| {
        let (raw_tx, raw_rx) = bounded::<Vec<u8>>(8);
        let (plain_tx, plain_rx) = bounded::<Piece>(8);
        let ask = Ask::default();
        // Chunks read to the end come back to be filled again.
        let (raw_spent_tx, raw_spent_rx) = bounded::<Vec<u8>>(4);
        let (plain_spent_tx, plain_spent_rx) = bounded::<Vec<u8>>(4);
        // Stage 1: read and hash the file.
        let reader = s.spawn(move || {
            read_stage(loc, cancel, (&raw_tx, &raw_spent_rx), &|n| {
                progress.advance(n)
            })
        });
        // The codec: known from the file's first bytes, or, for an age
        // file, from the plaintext's once decrypted.
        let (codec_tx, codec_rx) = bounded::<Codec>(1);
        // Stage 2 (an age file only): decrypt, on a thread of its own, so
        // that ChaCha20-Poly1305 runs beside the decompressor rather than
        // before it on the same thread.
        let (compressed_rx, compressed_spent_tx, decrypter) = match sniffed {
            Some(codec) => {
                let _ = codec_tx.send(codec);
                (raw_rx, raw_spent_tx, None)
            }
            None => {
                let (sealed_tx, sealed_rx) = bounded::<Vec<u8>>(8);
                let (sealed_spent_tx, sealed_spent_rx) = bounded::<Vec<u8>>(4);
                let thread = s.spawn(move || -> Result<Codec> {
                    let input = ChannelReader::new(raw_rx, raw_spent_tx);
                    decrypt_stage(path, input, keys, &codec_tx, (&sealed_tx, &sealed_spent_rx))
                });
                (sealed_rx, sealed_spent_tx, Some(thread))
            }
        };
        // Stage 3: decompress. Says whether it read all it was given.
        let decoder_ask = ask.clone();
        let decoder_thread = s.spawn(move || -> (Result<()>, bool) {
            let input = ChannelReader::new(compressed_rx, compressed_spent_tx);
            let drained = input.drained.clone();
            let Ok(codec) = codec_rx.recv() else {
                // Decryption failed before the plaintext's first bytes.
                return (Ok(()), true);
            };
            let out = (&plain_tx, &plain_spent_rx);
            let decoded = match frames {
                Some(frames) => skip::decode_frames(path, frames, input, &decoder_ask, out),
                None => decompress_stage(path, codec, input, out),
            };
            (decoded, drained.get())
        });
        // Stage 4: the tar stream, here.
        let plain = PlainReader::new(plain_rx, plain_spent_tx, (ask, refetch));
        let sums = sums.as_ref();
        let checked = if links.is_empty() {
            walk_chain(path, plain, cancel, visitor, (None, None), sums)
        } else {
            ChainReader::start(s, links, sources, (keys, cancel)).and_then(|mut holders| {
                let walked = walk_chain(
                    path,
                    plain,
                    cancel,
                    visitor,
                    (Some(&mut holders), None),
                    None,
                );
                let whole = holders.finish();
                chain_outcome(walked, whole)
            })
        };
        let decoded = decoder_thread.join().expect("decoder thread panicked");
        let decrypted = match decrypter {
            Some(thread) => thread.join().expect("decryption thread panicked"),
            None => Ok(sniffed.unwrap_or(Codec::None)),
        };
        let read = reader.join().expect("reader thread panicked");
        (checked, decoded, decrypted, read)
    });
    progress.finish();
    let (checked, decoded, decrypted, read) = run;
    let (sha256, size) = match read {
        Ok((sha, size)) => (Some(sha), size),
        Err(e) => {
            return VerifyRun {
                sha256: None,
                size: 0,
                encrypted,
                result: Err(e),
            };
        }
    };
    // The first failure in the stream's order is the one reported: an age
    // failure explains whatever the decompressor found once it had read all
    // the plaintext passed on (a cut-short frame, a truncated tar); a
    // decoding error explains any tar error that follows from it.
    let result = match (decrypted, decoded, checked) {
        (Err(e), (_, true), _) => Err(e),
        (_, (Err(e), _), _) | (_, _, Err(e)) => Err(e),
        (Err(e), _, Ok(_)) => Err(e),
        (Ok(codec), (Ok(()), _), Ok(mut v)) => {
            v.sha256 = sha256.clone().unwrap_or_default();
            v.size = size;
            v.codec = codec;
            v.encrypted = encrypted;
            Ok(v)
        }
    };
    VerifyRun {
        sha256,
        size,
        encrypted,
        result,
    }
}

/// [`walk_archive_chain`] of a partial read: the frames it needs, read and
/// checked one at a time, decoded and cut to the parts it takes, walked.
fn walk_partial(
    (loc, partial): (&Location, &Partial),
    (links, sources): (&[Link], Vec<Vec<u8>>),
    (progress, phase): (&dyn Progress, Phase),
    (keys, cancel): (&Keys, &Cancel),
    visitor: &mut dyn Visitor,
) -> VerifyRun {
    let path = loc.label();
    let only = partial.source_names();
    progress.start(phase, partial.bytes());
    let advance = |n: u64| progress.advance(n);
    let result = std::thread::scope(|s| -> Result<Verified> {
        let mut plain =
            PartialReader::new(loc, partial, &advance).map_err(|e| corrupt(path, e.to_string()))?;
        let walked = if links.is_empty() {
            walk_chain(path, &mut plain, cancel, visitor, (None, Some(&only)), None)
        } else {
            ChainReader::start(s, links, sources, (keys, cancel)).and_then(|mut holders| {
                let walked = walk_chain(
                    path,
                    &mut plain,
                    cancel,
                    visitor,
                    (Some(&mut holders), Some(&only)),
                    None,
                );
                let whole = holders.finish();
                chain_outcome(walked, whole)
            })
        };
        // A frame that failed its check explains what the walk saw next.
        match plain.failed.take() {
            Some(e) => Err(e),
            None => walked,
        }
    });
    progress.finish();
    VerifyRun {
        sha256: None,
        size: 0,
        encrypted: false,
        result: result.map(|mut v| {
            v.codec = Codec::Zstd;
            v.size = partial.bytes();
            v
        }),
    }
}

/// The decryption stage of [`walk_archive`]: opens the age stream `input`
/// with `keys`, then decrypts its payload inside the chunks read from the
/// file ([`encryption::Payload`]) and sends them on; names the codec of the
/// plaintext's first bytes on `codec_tx`. Chunks the decompressor is done
/// with go back to the reader. Its errors are those [`open_stream`] and
/// [`decode_error`] give on one thread.
fn decrypt_stage(
    path: &Path,
    mut input: ChannelReader,
    keys: &Keys,
    codec_tx: &Sender<Codec>,
    (out, spent): (&Sender<Vec<u8>>, &Receiver<Vec<u8>>),
) -> Result<Codec> {
    let damaged = |e: io::Error| {
        Error::from(EncryptionError::Damaged {
            path: path.to_path_buf(),
            detail: format!("age: {e}"),
        })
    };
    let mut payload = encryption::open_payload(path, &mut input, keys)?;
    let (mut next, sealed, raw_spent) = input.into_parts();
    let mut plain = Plain {
        out,
        spent,
        raw_spent: &raw_spent,
        codec: None,
        codec_tx,
    };
    loop {
        let (mut buf, from) = match next.take() {
            Some(part) => part,
            None => match sealed.recv() {
                Ok(buf) => (buf, 0),
                Err(_) => break,
            },
        };
        let before = payload.open(&mut buf, from).map_err(damaged)?;
        let sent = match before {
            Some(chunk) => plain.send(path, chunk)? && plain.send(path, buf)?,
            None => plain.send(path, buf)?,
        };
        if !sent {
            return Ok(plain.codec.unwrap_or(Codec::None));
        }
    }
    let last = payload.finish().map_err(damaged)?;
    plain.send(path, last)?;
    match plain.codec {
        Some(codec) => Ok(codec),
        // No plaintext at all.
        None => Err(corrupt(path, NOT_AN_ARCHIVE)),
    }
}

/// Where [`decrypt_stage`] sends plaintext.
struct Plain<'a> {
    out: &'a Sender<Vec<u8>>,
    /// Chunks the decompressor is done with...
    spent: &'a Receiver<Vec<u8>>,
    /// ...go back to the reader, to be filled again.
    raw_spent: &'a Sender<Vec<u8>>,
    codec: Option<Codec>,
    codec_tx: &'a Sender<Codec>,
}

impl Plain<'_> {
    /// Sends `buf` on (naming the codec from the first bytes): false when
    /// the decompressor has stopped.
    fn send(&mut self, path: &Path, buf: Vec<u8>) -> Result<bool> {
        while let Ok(done) = self.spent.try_recv() {
            // Not the small ones that held an age chunk two reads split.
            if done.capacity() >= CHUNK {
                let _ = self.raw_spent.try_send(done);
            }
        }
        if buf.is_empty() {
            return Ok(true);
        }
        if self.codec.is_none() {
            let codec = detect_codec(&buf).ok_or_else(|| corrupt(path, NOT_AN_ARCHIVE))?;
            self.codec = Some(codec);
            let _ = self.codec_tx.send(codec);
        }
        Ok(self.out.send(buf).is_ok())
    }
}

/// The decompression stage of [`walk_archive`]: `input` decoded as
/// `codec`, sent on in chunks.
/// Reads the file at `path` to its end in chunks sent to `out`, hashing
/// it whole; gives its SHA-256 and size. Whoever reads `out` may stop
/// early (on corrupt data, or having found all it needs): the file is
/// still read and hashed to the end, so the caller can check it.
pub(crate) fn read_stage(
    loc: &Location,
    cancel: &Cancel,
    (out, spent): (&Sender<Vec<u8>>, &Receiver<Vec<u8>>),
    advance: &dyn Fn(u64),
) -> Result<(String, u64)> {
    let path = loc.label();
    let mut file = loc.open()?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        cancel.check()?;
        let mut buf = refill(spent);
        let n = read_full(&mut file, &mut buf).map_err(|e| read_error(path, e))?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), size));
        }
        buf.truncate(n);
        hasher.update(&buf);
        size += n as u64;
        advance(n as u64);
        let _ = out.send(buf);
    }
}

fn decompress_stage(
    path: &Path,
    codec: Codec,
    input: ChannelReader,
    (out, spent): (&Sender<Piece>, &Receiver<Vec<u8>>),
) -> Result<()> {
    let mut stream = decoder(codec, input).map_err(|e| corrupt(path, e.to_string()))?;
    loop {
        let mut buf = refill(spent);
        let n = read_full(&mut stream, &mut buf)
            .map_err(|e| corrupt(path, format!("{codec} stream: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        if out.send(Piece::Bytes(buf)).is_err() {
            return Ok(());
        }
    }
}

/// Checks an archive held in memory, on this thread: the same checks as
/// [`verify_archive`] but the whole-file checksum. For fuzzing and tests.
///
/// # Errors
///
/// Fails exactly when [`verify_archive`] would report the content broken.
pub fn verify_bytes(data: &[u8]) -> Result<Verified> {
    let path = Path::new("<memory>");
    let codec = detect_codec(data).ok_or_else(|| corrupt(path, NOT_AN_ARCHIVE))?;
    let mut stream = decoder(codec, data).map_err(|e| corrupt(path, e.to_string()))?;
    // Decode fully first, as verify_archive's separate stage does, so a codec
    // error is reported as such.
    let mut plain = Vec::new();
    stream
        .read_to_end(&mut plain)
        .map_err(|e| corrupt(path, format!("{codec} stream: {e}")))?;
    let mut verified = walk(path, &plain[..], &Cancel::default(), &mut CheckOnly)?;
    verified.codec = codec;
    verified.size = data.len() as u64;
    Ok(verified)
}

pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The proper ancestors of a member path: `a/b/c` gives `a/b`, then `a`.
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut end = path.len();
    std::iter::from_fn(move || {
        let i = path[..end].iter().rposition(|&b| b == b'/')?;
        end = i;
        Some(&path[..i])
    })
}

fn path_key(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The payload's order as backstop writes it: each source's entries
/// together, depth first with names in byte order, so every directory comes
/// before what it holds.
#[derive(Default)]
struct Order {
    last: Vec<u8>,
    done_sources: HashSet<Vec<u8>>,
}

impl Order {
    /// Takes the next member path; says why it is out of order, if it is.
    fn next(&mut self, member: &[u8]) -> Option<String> {
        let member = member.strip_suffix(b"/").unwrap_or(member);
        let top = |p: &[u8]| p.split(|&b| b == b'/').next().unwrap_or_default().to_vec();
        let (now, before) = (top(member), top(&self.last));
        let wrong = if self.last.is_empty() || now != before {
            if !self.last.is_empty() {
                self.done_sources.insert(before);
            }
            self.done_sources
                .contains(&now)
                .then(|| "comes after another source's entries, apart from its own".to_string())
        } else {
            let slash = |b: &u8| *b == b'/';
            member.split(slash).le(self.last.split(slash)).then(|| {
                format!(
                    "is out of order (after {}): backstop writes every directory before what it \
                     holds and names in byte order",
                    String::from_utf8_lossy(&self.last)
                )
            })
        };
        self.last = member.to_vec();
        wrong
    }
}

/// A member path's first component: its source.
fn top_component(member: &[u8]) -> &[u8] {
    member.split(|&b| b == b'/').next().unwrap_or_default()
}

/// Why a payload path may not be extracted, if it may not.
pub fn unsafe_member_path(member: &[u8], sources: &HashSet<&[u8]>) -> Option<String> {
    if member.first() == Some(&b'/') {
        return Some("is an absolute path".into());
    }
    let trimmed = member.strip_suffix(b"/").unwrap_or(member);
    let mut parts = trimmed.split(|&b| b == b'/');
    let top = parts.next().unwrap_or_default();
    if trimmed
        .split(|&b| b == b'/')
        .any(|p| p == b".." || p == b"." || p.is_empty())
    {
        return Some("has an empty, `.` or `..` component".into());
    }
    if !sources.contains(top) {
        return Some("is outside the sources the manifest lists".into());
    }
    None
}

/// What a walk over an archive does with each payload entry, besides
/// checking it. Verification does nothing more; a restore writes it out.
pub trait Visitor {
    /// Called with the manifest, before any payload entry.
    ///
    /// # Errors
    ///
    /// An error stops the walk.
    fn manifest(&mut self, manifest: &Manifest) -> Result<()> {
        let _ = manifest;
        Ok(())
    }

    /// Called for each payload entry whose path and type passed the checks.
    /// For a file, `content` yields its bytes (a sparse file's holes as
    /// zeros); what the visitor leaves unread is read and hashed after it
    /// returns. Checksums are only known to match once the walk has finished
    /// without error.
    ///
    /// # Errors
    ///
    /// An error stops the walk.
    fn entry(&mut self, entry: &Entry, content: &mut Content<'_>) -> Result<()>;

    /// Whether it compares files with a live tree, and so may vouch for
    /// a large file's content ([`Content::vouch`]): then the walk reads
    /// the index's checksums of the large files first.
    fn compares_live(&self) -> bool {
        false
    }
}

/// A visitor that only lets the walk check.
pub struct CheckOnly;

impl Visitor for CheckOnly {
    fn entry(&mut self, _: &Entry, _: &mut Content<'_>) -> Result<()> {
        Ok(())
    }
}

/// The data of the current entry; a regular file's is hashed as it is read.
pub struct Content<'a> {
    source: &'a mut dyn DataSource,
    archive: &'a Path,
    member: &'a str,
    /// Where a regular file's bytes go to be hashed; `None` for the rest.
    hashes: Option<&'a mut FileHashes>,
    read: u64,
    /// A large file's SHA-256 as the index records it, when its frames
    /// may be passed over.
    sum: Option<[u8; 32]>,
    /// Whether the frames of the rest of its data were asked to be
    /// passed over ([`Content::pass_over`]).
    asked: bool,
    /// Whether the visitor vouched for the content: it is the live
    /// file's, which hashes to `sum`.
    vouched: bool,
}

/// Anything that yields an entry's data: the tar reader.
pub trait DataSource {
    /// Reads the current entry's data; 0 at its end.
    ///
    /// # Errors
    ///
    /// Fails on I/O errors and truncated data.
    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Lends the next bytes of a plain file's data from the stream's own
    /// buffer (empty at its end), for [`DataSource::consume_data`].
    ///
    /// # Errors
    ///
    /// Fails on a sparse file, I/O errors and truncated data.
    fn peek_data(&mut self) -> io::Result<&[u8]>;

    /// Takes the first `n` bytes lent.
    fn consume_data(&mut self, n: usize);

    /// The bytes of data at the cursor that were passed over, not
    /// decoded ([`crate::archive::skip`]): 0 when none.
    ///
    /// # Errors
    ///
    /// Fails as reading does.
    fn data_gap(&mut self) -> io::Result<u64>;

    /// Moves past `n` bytes of that gap.
    fn pass_data_gap(&mut self, n: u64);

    /// Asks that the frames inside the rest of the data be passed over.
    fn ask_data_gaps(&mut self);

    /// Fills the gap at the cursor, if any, with its bytes read again.
    ///
    /// # Errors
    ///
    /// Fails when they cannot be read again.
    fn fill_data_gap(&mut self) -> io::Result<()>;
}

impl<R: BufRead + Gaps> DataSource for TarReader<R> {
    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TarReader::read_data(self, buf)
    }

    fn peek_data(&mut self) -> io::Result<&[u8]> {
        TarReader::peek_data(self)
    }

    fn consume_data(&mut self, n: usize) {
        TarReader::consume_data(self, n);
    }

    fn data_gap(&mut self) -> io::Result<u64> {
        TarReader::data_gap(self)
    }

    fn pass_data_gap(&mut self, n: u64) {
        TarReader::pass_data_gap(self, n);
    }

    fn ask_data_gaps(&mut self) {
        TarReader::ask_data_gaps(self);
    }

    fn fill_data_gap(&mut self) -> io::Result<()> {
        TarReader::fill_data_gap(self)
    }
}

impl Content<'_> {
    /// Reads into `buf`; 0 at the end of the entry.
    ///
    /// # Errors
    ///
    /// Fails (as corruption) when the archive's data cannot be read.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.fill_gap()?;
        let n = self
            .source
            .read_data(buf)
            .map_err(|e| corrupt(self.archive, format!("reading {}: {e}", self.member)))?;
        if let Some(hashes) = self.hashes.as_deref_mut().filter(|_| !self.vouched) {
            hashes.update(&buf[..n]);
        }
        self.read += n as u64;
        Ok(n)
    }

    /// The SHA-256 the archive's index records for this file, when it is
    /// large and its frames may be passed over: a visitor that finds the
    /// live file hashes to it may [`Content::vouch`] for it.
    pub fn sum(&self) -> Option<[u8; 32]> {
        self.sum
    }

    /// Asks that the frames wholly inside this file's data, not decoded
    /// yet, be passed over, before the visitor knows whether it will
    /// vouch for it ([`Content::vouch`]): the archive is read on
    /// meanwhile. A file not vouched for reads as any other, its gaps
    /// filled from the archive again.
    ///
    /// # Errors
    ///
    /// Fails when the file has no sum or part of it was read already.
    pub fn pass_over(&mut self) -> Result<()> {
        self.check_unread("asked to be passed over")?;
        self.asked = true;
        self.source.ask_data_gaps();
        Ok(())
    }

    /// Vouches that this file's content is the live file's, which hashes
    /// to [`Content::sum`]: its digest for the checksums member is that
    /// sum and its bytes are not hashed. The visitor then compares what is
    /// still decoded ([`Content::peek`]) with the live file, and passes
    /// the frames passed over ([`Content::gap`]).
    ///
    /// # Errors
    ///
    /// Fails when the file has no sum or part of it was read already.
    pub fn vouch(&mut self) -> Result<()> {
        self.check_unread("vouched for")?;
        self.vouched = true;
        Ok(())
    }

    fn check_unread(&self, what: &str) -> Result<()> {
        if self.sum.is_none() || self.read > 0 || self.vouched {
            return Err(corrupt(
                self.archive,
                format!(
                    "{} was {what} after it was read (a bug of backstop's: please report it)",
                    self.member
                ),
            ));
        }
        Ok(())
    }

    /// Fills the gap at the cursor, in a file passed over but not vouched
    /// for.
    fn fill_gap(&mut self) -> Result<()> {
        if !self.asked || self.vouched {
            return Ok(());
        }
        self.source
            .fill_data_gap()
            .map_err(|e| corrupt(self.archive, format!("reading {} again: {e}", self.member)))
    }

    /// The archive found corrupt at this member: `detail` says how.
    pub fn corrupt(&self, detail: &str) -> Error {
        corrupt(self.archive, format!("{}: {detail}", self.member))
    }

    /// Whether the visitor vouched for this file.
    pub fn vouched(&self) -> bool {
        self.vouched
    }

    /// The bytes at the cursor that were passed over: 0 when there are
    /// none (always, for a file not vouched for).
    ///
    /// # Errors
    ///
    /// As [`Content::read`].
    pub fn gap(&mut self) -> Result<u64> {
        if !self.vouched {
            return Ok(0);
        }
        self.source
            .data_gap()
            .map_err(|e| corrupt(self.archive, format!("reading {}: {e}", self.member)))
    }

    /// Moves past the `n` bytes [`Content::gap`] gave.
    pub fn pass_gap(&mut self, n: u64) {
        self.source.pass_data_gap(n);
        self.read += n;
    }

    /// Reads what is left of the file, passing its gaps.
    fn drain(&mut self, buf: &mut [u8]) -> Result<()> {
        loop {
            let gap = self.gap()?;
            if gap > 0 {
                self.pass_gap(gap);
            } else if self.read(buf)? == 0 {
                return Ok(());
            }
        }
    }

    /// The next bytes of a plain file's content, lent from the archive's
    /// buffer without a copy: empty at the end. [`Content::consume`] takes
    /// them; what is not taken is lent again.
    ///
    /// # Errors
    ///
    /// As [`Content::read`]; and on a sparse file, whose holes are in no
    /// buffer.
    pub fn peek(&mut self) -> Result<&[u8]> {
        self.fill_gap()?;
        self.source
            .peek_data()
            .map_err(|e| corrupt(self.archive, format!("reading {}: {e}", self.member)))
    }

    /// Takes (and hashes) the first `n` bytes [`Content::peek`] lent.
    ///
    /// # Errors
    ///
    /// As [`Content::peek`].
    pub fn consume(&mut self, n: usize) -> Result<()> {
        let lent = self
            .source
            .peek_data()
            .map_err(|e| corrupt(self.archive, format!("reading {}: {e}", self.member)))?;
        let n = n.min(lent.len());
        if let Some(hashes) = self.hashes.as_deref_mut().filter(|_| !self.vouched) {
            hashes.update(&lent[..n]);
        }
        self.source.consume_data(n);
        self.read += n as u64;
        Ok(())
    }
}

/// Reads `stream` as a backstop archive and checks everything the format
/// promises (see [`verify_archive`]), passing each payload entry to
/// `visitor` on the way.
///
/// # Errors
///
/// Fails on the first problem found, or on the visitor's first error.
pub fn walk<R: BufRead + Gaps>(
    path: &Path,
    stream: R,
    cancel: &Cancel,
    visitor: &mut dyn Visitor,
) -> Result<Verified> {
    walk_chain(path, stream, cancel, visitor, (None, None), None)
}

/// The archives of a chain that an incremental's unchanged files are read
/// from, in the order the incremental names them.
pub trait Holders {
    /// The entry of `member` in the nearest earlier archive of the chain
    /// that stores it, with its data ready to be read; `None` when no
    /// archive of the chain does.
    ///
    /// # Errors
    ///
    /// Fails when an archive of the chain cannot be read.
    fn find(&mut self, member: &[u8]) -> Result<Option<(Entry, &mut dyn DataSource)>>;
}

/// A member path as a key that sorts in archive order (`/` lowest).
fn order_key(member: &[u8]) -> Vec<u8> {
    member
        .iter()
        .map(|&b| if b == b'/' { 0 } else { b })
        .collect()
}

/// The names a directory's `GNU.dumpdir` marks `N` (unchanged, held by an
/// earlier archive), as member paths below `dir`.
fn unchanged_names(dir: &[u8], dumpdir: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    // Each record ends with a NUL, and the list with one more.
    let body = match dumpdir.strip_suffix(&[0]) {
        Some([]) => return Ok(out),
        Some(body) => body.strip_suffix(&[0]),
        None => None,
    };
    let Some(body) = body else {
        return Err("has a GNU.dumpdir record that is not ended by NUL bytes".into());
    };
    for record in body.split(|&b| b == 0) {
        let Some((&kind, name)) = record.split_first() else {
            return Err("has an empty GNU.dumpdir record".into());
        };
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(format!(
                "lists `{}` in its GNU.dumpdir, which is not a name",
                String::from_utf8_lossy(name)
            ));
        }
        match kind {
            b'Y' | b'D' => {}
            b'N' => {
                let mut member = dir.to_vec();
                member.push(b'/');
                member.extend_from_slice(name);
                out.push(member);
            }
            other => {
                return Err(format!(
                    "has a GNU.dumpdir record of type `{}`",
                    char::from(other).escape_default()
                ));
            }
        }
    }
    Ok(out)
}

/// The walk's record of what it read, for the checks at the end.
struct Tally {
    /// (path key, SHA-256) of every file of the tree, in order.
    hashes: Vec<(u64, Sum)>,
    files_seen: HashSet<u64>,
    seen: HashSet<u64>,
    entries: u64,
    held_files: u64,
    bytes: u64,
    unchanged: u64,
    /// The first of `hashes` whose digest has not come back yet.
    unfilled: usize,
    /// The thread that hashes the files read whole.
    file_hashes: FileHashes,
}

/// A file's SHA-256, for the checksums member.
#[derive(Debug, Clone, Copy)]
enum Sum {
    /// An unchanged file no holder was asked for: its line is only counted.
    Unasked,
    /// Being hashed: the digest comes back from the hashing thread.
    Pending,
    Known([u8; 32]),
}

impl Tally {
    /// A file read whole: its digest comes from `file_hashes`, later.
    fn held(&mut self, key: u64) {
        self.hashes.push((key, Sum::Pending));
        self.file_hashes.end_file();
        fill(
            &mut self.hashes,
            &mut self.unfilled,
            self.file_hashes.ready(),
        );
    }

    /// Waits for the last digests. Fails when one is missing, which only a
    /// bug of the walk's would cause: a file is never taken as checked
    /// without its hash.
    fn finish(&mut self, path: &Path) -> Result<()> {
        let last = self.file_hashes.finish();
        fill(&mut self.hashes, &mut self.unfilled, last.into_iter());
        if self.hashes[self.unfilled..]
            .iter()
            .any(|(_, h)| matches!(h, Sum::Pending))
        {
            return Err(corrupt(
                path,
                "a file's checksum was never computed (a bug of backstop's: please report it)",
            ));
        }
        Ok(())
    }
}

/// Puts the digests that came back, in order, in the files' places from
/// `unfilled` on (skipping the unchanged files no holder was asked for).
fn fill(hashes: &mut [(u64, Sum)], unfilled: &mut usize, digests: impl Iterator<Item = [u8; 32]>) {
    for digest in digests {
        while let Some((_, Sum::Unasked | Sum::Known(_))) = hashes.get(*unfilled) {
            *unfilled += 1;
        }
        if let Some((_, slot @ Sum::Pending)) = hashes.get_mut(*unfilled) {
            *slot = Sum::Known(digest);
            *unfilled += 1;
        }
    }
}

/// [`walk`], for an archive that may be an incremental: its unchanged
/// files are read from `holders` (the rest of its chain) and passed to
/// `visitor` in their place in the tree, each checked against the
/// archive's checksums; without `holders` they are only counted.
///
/// With `only`, `stream` is a partial read ([`crate::archive::frames`]):
/// the manifest, the entries of those sources, and the members after the
/// payload. Their checksums are checked as in a whole read; what counts
/// the whole tree (the index's length, the trailer's totals) is not.
///
/// # Errors
///
/// As [`walk`]; and when an unchanged file is in no archive of the chain.
pub fn walk_chain<'h, R: BufRead + Gaps>(
    path: &Path,
    stream: R,
    cancel: &Cancel,
    visitor: &mut dyn Visitor,
    (mut holders, only): (Option<&mut (dyn Holders + 'h)>, Option<&HashSet<Vec<u8>>>),
    sums: Option<&Sums>,
) -> Result<Verified> {
    let bad = |detail: String| corrupt(path, detail);
    let mut tar = TarReader::new(stream);
    let next = |tar: &mut TarReader<R>| -> Result<Option<Entry>> {
        tar.next_entry()
            .map_err(|e| corrupt(path, format!("tar structure: {e}")))
    };

    let first = next(&mut tar)?.ok_or_else(|| bad("the archive is empty".into()))?;
    let manifest = parse_manifest(path, &read_doc(path, &mut tar, &first, MANIFEST_NAME)?)?;
    visitor.manifest(&manifest)?;
    let source_names: Vec<Vec<u8>> = manifest
        .sources
        .iter()
        .map(|s| s.name.as_bytes().to_vec())
        .collect();
    let sources: HashSet<&[u8]> = source_names.iter().map(Vec::as_slice).collect();

    // Sized from the scan's totals (capped: they are the archive's word),
    // so a million files do not cost a doubling's worth of spare room.
    let files = manifest.totals.files.min(1 << 24) as usize;
    let entries = manifest.totals.entries.min(1 << 24) as usize;
    let mut tally = Tally {
        hashes: Vec::with_capacity(files),
        files_seen: HashSet::with_capacity(files),
        // Every payload path, to refuse a second entry for the same path.
        seen: HashSet::with_capacity(entries),
        entries: 0,
        held_files: 0,
        bytes: 0,
        unchanged: 0,
        unfilled: 0,
        file_hashes: FileHashes::start(),
    };
    let mut symlinks: HashSet<u64> = HashSet::new();
    let mut order = Order::default();
    // Unchanged files named by the dumpdirs read so far, not yet reached.
    let mut pending: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut buf = vec![0u8; 256 << 10];
    let checksums = loop {
        cancel.check()?;
        let entry = next(&mut tar)?.ok_or_else(|| {
            bad(format!(
                "{CHECKSUMS_NAME} is missing: the archive is truncated"
            ))
        })?;
        if entry.path == CHECKSUMS_NAME.as_bytes() {
            if entry.kind != Kind::File || entry.sparse.is_some() {
                return Err(bad(format!("{CHECKSUMS_NAME} is not a regular file")));
            }
            let rest = std::mem::take(&mut pending);
            for member in rest.into_values() {
                let h = holders.as_deref_mut();
                unchanged_file(path, &member, h, visitor, &mut tally, &mut buf)?;
            }
            break entry;
        }
        let shown = String::from_utf8_lossy(&entry.path).into_owned();
        let hostile = |detail: String| -> Error {
            ArchiveError::Hostile {
                path: path.to_path_buf(),
                member: shown.clone(),
                detail,
            }
            .into()
        };
        if let Some(why) = unsafe_member_path(&entry.path, &sources) {
            return Err(hostile(why));
        }
        if let Some(only) = only
            && !only.contains(top_component(&entry.path))
        {
            return Err(bad(format!(
                "{shown} is outside the sources a partial read takes"
            )));
        }
        // The unchanged files that come before this entry.
        let key = order_key(&entry.path);
        while let Some(first) = pending.first_key_value().map(|(k, _)| k.clone()) {
            let same_source = first.split(|&b| b == 0).next() == key.split(|&b| b == 0).next();
            if same_source && first >= key {
                break;
            }
            let member = pending.remove(&first).unwrap_or_default();
            let h = holders.as_deref_mut();
            unchanged_file(path, &member, h, visitor, &mut tally, &mut buf)?;
        }
        // Nothing may sit below a symlink of the archive: extracting it
        // would write wherever the link points.
        if let Some(link) = ancestors(&entry.path).find(|a| symlinks.contains(&path_key(a))) {
            return Err(hostile(format!(
                "lies below {}, which the archive makes a symlink",
                String::from_utf8_lossy(link)
            )));
        }
        if entry.kind == Kind::Symlink {
            symlinks.insert(path_key(&entry.path));
        }
        tally.entries += 1;
        let path_key_now = path_key(&entry.path);
        if !tally.seen.insert(path_key_now) {
            return Err(hostile(
                "appears twice in the archive; a second entry could replace the first".into(),
            ));
        }
        // Restores rely on it (a directory before what it holds, one pass
        // over the live tree): what verifies must restore.
        if let Some(why) = order.next(&entry.path) {
            return Err(bad(format!("{shown} {why}")));
        }
        match entry.kind {
            Kind::Other(flag) => {
                return Err(hostile(format!(
                    "has a type backstop never writes (tar type `{}`)",
                    char::from(flag).escape_default()
                )));
            }
            Kind::HardLink => {
                let target = entry.link.clone().unwrap_or_default();
                if unsafe_member_path(&target, &sources).is_some()
                    || !tally.files_seen.contains(&path_key(&target))
                {
                    return Err(hostile(format!(
                        "is a hard link to {}, which is not an earlier file of the archive",
                        String::from_utf8_lossy(&target)
                    )));
                }
            }
            Kind::Dir => {
                if let Some(dumpdir) = &entry.dumpdir {
                    for member in unchanged_names(&entry.path, dumpdir).map_err(&hostile)? {
                        pending.insert(order_key(&member), member);
                    }
                }
            }
            Kind::File | Kind::Symlink => {}
        }
        let is_file = entry.kind == Kind::File;
        let sum = match (is_file && entry.sparse.is_none(), sums) {
            (true, Some(sums)) => sums.get(&entry.path).copied(),
            _ => None,
        };
        let mut content = Content {
            source: &mut tar,
            archive: path,
            member: &shown,
            hashes: is_file.then_some(&mut tally.file_hashes),
            read: 0,
            sum,
            asked: false,
            vouched: false,
        };
        visitor.entry(&entry, &mut content)?;
        if is_file {
            content.drain(&mut buf)?;
            let vouched = content.vouched.then_some(sum).flatten();
            let read = content.read;
            if read != entry.size {
                return Err(bad(format!(
                    "{shown} holds {read} of its {} bytes",
                    entry.size
                )));
            }
            tally.bytes += read;
            tally.held_files += 1;
            tally.files_seen.insert(path_key_now);
            match vouched {
                Some(sum) => tally.hashes.push((path_key_now, Sum::Known(sum))),
                None => tally.held(path_key_now),
            }
        }
    };
    tally.finish(path)?;

    check_checksums(
        path,
        &mut tar,
        (checksums.size, only),
        &tally.hashes,
        &mut buf,
    )?;

    let mut last = next(&mut tar)?.ok_or_else(|| {
        bad(format!(
            "{TRAILER_NAME} is missing: the archive is truncated"
        ))
    })?;
    if last.path == INDEX_NAME.as_bytes() {
        let tree = only.is_none().then_some(tally.entries + tally.unchanged);
        check_index(path, &mut tar, &manifest, tree)?;
        last = next(&mut tar)?.ok_or_else(|| {
            bad(format!(
                "{TRAILER_NAME} is missing: the archive is truncated"
            ))
        })?;
    }
    let trailer_data = read_doc(path, &mut tar, &last, TRAILER_NAME)?;
    let trailer: Trailer = serde_json::from_slice(&trailer_data)
        .map_err(|e| bad(format!("{TRAILER_NAME} is not valid: {e}")))?;
    if trailer.id != manifest.id {
        return Err(bad(format!(
            "the trailer belongs to {}, the manifest to {}",
            trailer.id, manifest.id
        )));
    }
    let (entries_n, bytes) = (tally.entries, tally.bytes);
    if only.is_none()
        && (trailer.entries, trailer.files, trailer.bytes) != (entries_n, tally.held_files, bytes)
    {
        return Err(bad(format!(
            "the trailer records {} entries, {} files, {} bytes; the archive holds {entries_n}, {}, {bytes}",
            trailer.entries, trailer.files, trailer.bytes, tally.held_files
        )));
    }
    if manifest.is_full() && tally.unchanged > 0 {
        return Err(bad(
            "a full backup whose directories name files it does not hold".into(),
        ));
    }
    if let Some(extra) = next(&mut tar)? {
        return Err(bad(format!(
            "{} follows the trailer",
            String::from_utf8_lossy(&extra.path)
        )));
    }
    // After the end-of-archive blocks only zero padding may follow.
    let mut rest = tar.into_inner();
    loop {
        let n = rest.read(&mut buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(bad("data follows the end of the tar archive".into()));
        }
    }
    Ok(Verified {
        sha256: String::new(),
        size: 0,
        codec: Codec::None,
        encrypted: false,
        manifest,
        trailer,
        entries: entries_n,
        files: tally.held_files,
        bytes,
        unchanged: tally.unchanged,
    })
}

/// An unchanged file of an incremental, named by its directory's dumpdir:
/// read from the archive of the chain that holds it, when there are
/// `holders`, and passed to the visitor like a file of this archive.
fn unchanged_file<'h>(
    path: &Path,
    member: &[u8],
    holders: Option<&mut (dyn Holders + 'h)>,
    visitor: &mut dyn Visitor,
    tally: &mut Tally,
    buf: &mut [u8],
) -> Result<()> {
    let key = path_key(member);
    let shown = String::from_utf8_lossy(member).into_owned();
    if !tally.seen.insert(key) {
        return Err(ArchiveError::Hostile {
            path: path.to_path_buf(),
            member: shown,
            detail: "appears twice in the archive; a second entry could replace the first".into(),
        }
        .into());
    }
    tally.unchanged += 1;
    tally.files_seen.insert(key);
    let Some(holders) = holders else {
        tally.hashes.push((key, Sum::Unasked));
        return Ok(());
    };
    let Some((entry, source)) = holders.find(member)? else {
        return Err(ArchiveError::BrokenChain {
            path: path.to_path_buf(),
            detail: format!("{shown} is unchanged, but no earlier archive of the chain holds it"),
            damaged: None,
        }
        .into());
    };
    let mut content = Content {
        source,
        archive: path,
        member: &shown,
        hashes: Some(&mut tally.file_hashes),
        read: 0,
        sum: None,
        asked: false,
        vouched: false,
    };
    visitor.entry(&entry, &mut content)?;
    while content.read(buf)? > 0 {}
    let read = content.read;
    if read != entry.size {
        return Err(corrupt(
            path,
            format!("{shown} holds {read} of its {} bytes", entry.size),
        ));
    }
    tally.held(key);
    Ok(())
}

/// The data of the current member as a reader.
pub(crate) struct MemberData<'a, R>(pub(crate) &'a mut TarReader<R>);

impl<R: Read> Read for MemberData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}

/// Reads the index member through: well formed, of this backup, listing
/// as many paths as the tree has (`entries`, unchanged files included,
/// when the whole tree was read).
fn check_index<R: Read>(
    path: &Path,
    tar: &mut TarReader<R>,
    manifest: &Manifest,
    entries: Option<u64>,
) -> Result<()> {
    let bad = |detail: String| corrupt(path, format!("{INDEX_NAME} {detail}"));
    let data = io::BufReader::with_capacity(64 << 10, MemberData(tar));
    let mut index = IndexReader::new(data).map_err(|e| bad(format!("is not valid: {e}")))?;
    if index.id != manifest.id {
        return Err(bad(format!("belongs to {}", index.id)));
    }
    let mut n = 0u64;
    while index
        .next_entry()
        .map_err(|e| bad(format!("is not valid: {e}")))?
        .is_some()
    {
        n += 1;
    }
    if let Some(entries) = entries
        && n != entries
    {
        return Err(bad(format!("lists {n} paths; the tree has {entries}")));
    }
    Ok(())
}

/// Compares the checksums member, read line by line (it holds a line per
/// file, so it is never loaded whole), with the hashes of the files read;
/// with `only`, the lines of those sources.
fn check_checksums<R: Read>(
    path: &Path,
    tar: &mut TarReader<R>,
    (size, only): (u64, Option<&HashSet<Vec<u8>>>),
    hashes: &[(u64, Sum)],
    buf: &mut [u8],
) -> Result<()> {
    let bad = |detail: String| corrupt(path, detail);
    let mut line: Vec<u8> = Vec::new();
    let mut n = 0usize;
    let mut read = 0u64;
    let check_line = |line: &[u8], n: &mut usize| -> Result<()> {
        let (hex_sum, name) = parse_checksum_line(line)
            .ok_or_else(|| bad(format!("{CHECKSUMS_NAME} line {} is malformed", *n + 1)))?;
        if only.is_some_and(|o| !o.contains(top_component(&name))) {
            return Ok(());
        }
        let Some((key, actual)) = hashes.get(*n) else {
            return Err(ArchiveError::Checksum {
                path: path.to_path_buf(),
                detail: format!(
                    "{CHECKSUMS_NAME} lists more files than the {} the archive holds",
                    hashes.len()
                ),
            }
            .into());
        };
        if path_key(&name) != *key {
            return Err(bad(format!(
                "{CHECKSUMS_NAME} is out of order at {}",
                String::from_utf8_lossy(&name)
            )));
        }
        let actual = match actual {
            // An unchanged file read from no holder: its line is only counted.
            Sum::Unasked => None,
            Sum::Known(actual) => Some(actual),
            Sum::Pending => {
                return Err(corrupt(
                    path,
                    "a file's checksum was never computed (a bug of backstop's: please report it)",
                ));
            }
        };
        if let Some(actual) = actual
            && !hex_sum.eq_ignore_ascii_case(&hex::encode(actual))
        {
            return Err(ArchiveError::Checksum {
                path: path.to_path_buf(),
                detail: format!(
                    "the content of {} does not match its checksum",
                    String::from_utf8_lossy(&name)
                ),
            }
            .into());
        }
        *n += 1;
        Ok(())
    };
    loop {
        let k = tar
            .read_data(buf)
            .map_err(|e| bad(format!("reading {CHECKSUMS_NAME}: {e}")))?;
        if k == 0 {
            break;
        }
        read += k as u64;
        let mut chunk = &buf[..k];
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            check_line(&line, &mut n)?;
            line.clear();
            chunk = &chunk[end + 1..];
        }
        line.extend_from_slice(chunk);
    }
    if !line.is_empty() {
        check_line(&line, &mut n)?;
    }
    if read != size {
        return Err(bad(format!("{CHECKSUMS_NAME} is cut short")));
    }
    if n != hashes.len() {
        return Err(ArchiveError::Checksum {
            path: path.to_path_buf(),
            detail: format!(
                "{CHECKSUMS_NAME} lists {n} files but the archive holds {}",
                hashes.len()
            ),
        }
        .into());
    }
    Ok(())
}

/// Reads a sidecar file and returns the checksum it records for `file_name`.
///
/// # Errors
///
/// Returns `Ok(None)` when there is no sidecar; fails when it is unreadable or
/// malformed.
pub fn read_sidecar(archive: &Location) -> Result<Option<String>> {
    let found = archive.sidecar();
    let sidecar = found.label().to_path_buf();
    let Some(bytes) = found.read_small()? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let name = archive.file_name();
    let line = text.lines().next().unwrap_or_default();
    match line.split_once("  ") {
        Some((hex_sum, n)) if hex_sum.len() == 64 && n.trim_start_matches('*') == name => {
            Ok(Some(hex_sum.to_ascii_lowercase()))
        }
        _ => Err(ArchiveError::Corrupt {
            path: sidecar,
            detail: format!("is not a sha256sum line for {name}"),
        }
        .into()),
    }
}

/// The sidecar of an archive: `<file>.sha256`.
pub fn sidecar_path(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(".sha256");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::Order;

    fn first_refused(paths: &[&str]) -> Option<usize> {
        let mut order = Order::default();
        paths
            .iter()
            .position(|p| order.next(p.as_bytes()).is_some())
    }

    #[test]
    fn the_order_is_depth_first_by_component_and_sources_stay_together() {
        // "a" < "a.txt" as names, though '.' sorts before '/' as bytes.
        assert_eq!(
            first_refused(&[
                "app",
                "app/a",
                "app/a/x",
                "app/a.txt",
                "app/b/",
                "db",
                "db/x"
            ]),
            None
        );
        assert_eq!(first_refused(&["app", "app/sub/f", "app/sub"]), Some(2));
        assert_eq!(first_refused(&["app", "app/b", "app/a"]), Some(2));
        assert_eq!(first_refused(&["app", "app/a", "app/a"]), Some(2));
        assert_eq!(first_refused(&["app", "db", "app/late"]), Some(2));
    }
}
