//! Passing over what is already in place.
//!
//! An exact restore over a live tree compares every file of the backup
//! with the live one. A large file whose live twin already hashes to the
//! SHA-256 the archive's index records for it is left where it is, so
//! its bytes in the archive need not be decoded: the zstd frames that lie
//! wholly inside its data are passed over. They are still read, and
//! hashed into the archive's SHA-256 that the restore checks against the
//! sidecar and the catalog; what is not done is decompressing them and
//! hashing their content a second time. The file's line in the checksums
//! member is checked against the live file's digest, which is the content
//! the restored tree then holds.
//!
//! Three parts: [`sums`] reads the index's checksums of the large files
//! from the archive's tail (through the frame table, each frame checked
//! against it) before the stream; `decode_frames` decodes frame by
//! frame, passing over each frame the walk asked it to, and sends a
//! `Piece::Gap` in its place; `PlainReader` is the walk's side, a
//! buffered reader that stops at a gap until the walk passes it.
//!
//! The walk asks before it knows: as soon as a large file's live twin
//! has the backup's size and attributes, so that the reader and the
//! decoder go on through the archive while the live file is hashed. When
//! the digest is not the index's, the file is read as any other, and each
//! gap is filled again from the archive file: its frame read (checked
//! against its BLAKE3 hash in the table) and decoded (`Refetch`).

use std::collections::HashMap;
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use crate::archive::format::{ArchiveError, CHECKSUMS_NAME};
use crate::archive::frames::{
    Frame, FrameTable, Needed, Partial, PartialReader, placed, read_frame,
};
use crate::archive::index::{INDEX_NAME, IndexKind, IndexReader};
use crate::archive::reader::{ChannelReader, MemberData, read_buffered, refill};
use crate::archive::tarread::TarReader;
use crate::error::{Error, Result};
use crate::stores::Location;

/// Files at least this large may be passed over: a frame holds 4 MiB of
/// the tar stream, and the decoder runs some megabytes ahead of the walk,
/// so a smaller file seldom holds a frame not decoded yet.
pub const LARGE: u64 = 8 << 20;

/// The SHA-256 the index records for each large file, by member path.
pub type Sums = HashMap<Vec<u8>, [u8; 32]>;

/// Where to read a frame passed over again: the archive and its table.
pub(crate) struct Refetch {
    loc: Location,
    /// Each frame with where it starts in the file and in the tar stream.
    frames: Vec<Needed>,
    decoder: zstd::bulk::Decompressor<'static>,
}

impl Refetch {
    pub(crate) fn new(loc: &Location, table: &[Frame]) -> io::Result<Refetch> {
        Ok(Refetch {
            loc: loc.clone(),
            frames: placed(table),
            decoder: zstd::bulk::Decompressor::new()?,
        })
    }

    /// The bytes of the frame that starts at `raw` in the tar stream.
    fn fetch(&mut self, raw: u64) -> io::Result<Vec<u8>> {
        let i = self
            .frames
            .binary_search_by_key(&raw, |f| f.raw_offset)
            .map_err(|_| io::Error::other(format!("no frame starts at {raw} of the tar stream")))?;
        let f = &self.frames[i];
        let data = read_frame(&self.loc, f).map_err(|e| io::Error::other(e.to_string()))?;
        let plain = self.decoder.decompress(&data, f.raw as usize)?;
        if plain.len() as u64 != f.raw {
            return Err(io::Error::other(format!(
                "frame {} holds {} bytes, not {}",
                f.index,
                plain.len(),
                f.raw
            )));
        }
        Ok(plain)
    }
}

/// A part of the decoded tar stream: bytes, or the length of a frame the
/// decoder passed over.
pub(crate) enum Piece {
    Bytes(Vec<u8>),
    Gap(u64),
}

/// The frames the walk asks the decoder to pass over: those, not begun
/// yet, that lie wholly inside `[from, to)` of the tar stream.
#[derive(Clone, Default)]
pub(crate) struct Ask(Arc<Mutex<(u64, u64)>>);

impl Ask {
    fn set(&self, from: u64, to: u64) {
        *self.0.lock().expect("ask lock") = (from, to);
    }

    fn covers(&self, start: u64, len: u64) -> bool {
        let (from, to) = *self.0.lock().expect("ask lock");
        start >= from && start + len <= to
    }
}

/// The checksums of the large files of the archive `table` describes,
/// read from its tail: the checksums member is passed, the index read.
/// Empty when the archive has no index.
///
/// # Errors
///
/// Fails when a frame of the tail is not the one the table records, or
/// the tail is not as backstop writes it.
pub fn sums(loc: &Location, table: &FrameTable) -> Result<Sums> {
    let tail = Partial::tail(table);
    let no_progress = |_: u64| {};
    let bad = |detail: String| -> Error {
        ArchiveError::Corrupt {
            path: loc.label().to_path_buf(),
            detail,
        }
        .into()
    };
    let mut plain = PartialReader::new(loc, &tail, &no_progress)
        .map_err(|e| bad(format!("the frames of its tail: {e}")))?;
    let mut tar = TarReader::new(&mut plain);
    let mut next = || -> Result<Option<Vec<u8>>> {
        match tar.next_entry() {
            Ok(entry) => Ok(entry.map(|e| e.path)),
            Err(e) => Err(bad(format!("its tail: {e}"))),
        }
    };
    if next()?.as_deref() != Some(CHECKSUMS_NAME.as_bytes()) {
        return Err(bad(format!(
            "its tail does not start with {CHECKSUMS_NAME}"
        )));
    }
    if next()?.as_deref() != Some(INDEX_NAME.as_bytes()) {
        return Ok(Sums::new());
    }
    let data = io::BufReader::with_capacity(64 << 10, MemberData(&mut tar));
    let mut index =
        IndexReader::new(data).map_err(|e| bad(format!("{INDEX_NAME} is not valid: {e}")))?;
    let mut sums = Sums::new();
    while let Some(e) = index
        .next_entry()
        .map_err(|e| bad(format!("{INDEX_NAME} is not valid: {e}")))?
    {
        if let (IndexKind::File, Some(sha), true) = (e.kind, e.sha256, e.size >= LARGE) {
            sums.insert(e.path, sha);
        }
    }
    Ok(sums)
}

/// The decompression stage of a walk that may pass frames over: `input`
/// (the archive's zstd frames, as `frames` lists them) decoded one frame
/// at a time and sent on in chunks; a frame that `ask` covers when the
/// decoder reaches it is read past and sent as a `Piece::Gap`. Each
/// frame must end where the table says it does.
///
/// # Errors
///
/// Fails when the stream does not decode, or its frames are not the
/// table's.
pub(crate) fn decode_frames(
    path: &Path,
    frames: &[Frame],
    mut input: ChannelReader,
    ask: &Ask,
    (out, spent): (&Sender<Piece>, &Receiver<Vec<u8>>),
) -> Result<()> {
    let bad = |detail: String| -> Error {
        ArchiveError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("zstd stream: {detail}"),
        }
        .into()
    };
    let mut dec = zstd::stream::raw::Decoder::new().map_err(|e| bad(e.to_string()))?;
    let mut place = Place::default();
    let mut buf = refill(spent);
    let mut filled = 0usize;
    loop {
        if !place.in_frame
            && let Some(f) = frames.get(place.frame)
            && ask.covers(place.raw, f.raw)
        {
            if filled > 0 {
                buf.truncate(filled);
                if out.send(Piece::Bytes(std::mem::take(&mut buf))).is_err() {
                    return Ok(());
                }
                (buf, filled) = (refill(spent), 0);
            }
            pass(&mut input, f.size).map_err(|e| bad(e.to_string()))?;
            if out.send(Piece::Gap(f.raw)).is_err() {
                return Ok(());
            }
            place.passed(f);
            continue;
        }
        let data = input.fill_buf().map_err(|e| bad(e.to_string()))?;
        let at_end = data.is_empty();
        if at_end && !place.in_frame {
            break;
        }
        let mut src = InBuffer::around(data);
        let mut dst = OutBuffer::around(&mut buf[filled..]);
        let hint = dec
            .run(&mut src, &mut dst)
            .map_err(|e| bad(e.to_string()))?;
        let (used, made) = (src.pos(), dst.pos());
        input.consume(used);
        filled += made;
        place.ran(used, made);
        if hint == 0 {
            place.frame_ended(frames).map_err(bad)?;
            dec.reinit().map_err(|e| bad(e.to_string()))?;
        } else {
            place.in_frame = true;
            if at_end && made == 0 {
                return Err(bad("the archive ends inside a frame".into()));
            }
        }
        if filled == buf.len() {
            if out.send(Piece::Bytes(std::mem::take(&mut buf))).is_err() {
                return Ok(());
            }
            (buf, filled) = (refill(spent), 0);
        }
    }
    if filled > 0 {
        buf.truncate(filled);
        let _ = out.send(Piece::Bytes(buf));
    }
    Ok(())
}

/// Where `decode_frames` is: the frame it is in or at, where that frame
/// starts in the tar stream, and what it has read and made of it so far.
#[derive(Default)]
struct Place {
    frame: usize,
    in_frame: bool,
    raw: u64,
    used: u64,
    made: u64,
}

impl Place {
    fn ran(&mut self, used: usize, made: usize) {
        self.used += used as u64;
        self.made += made as u64;
    }

    fn passed(&mut self, f: &Frame) {
        self.frame += 1;
        self.raw += f.raw;
    }

    /// A frame ended: it must be the table's, in size and in what it held
    /// (past the table's frames, the table's own skippable frame, nothing
    /// is checked).
    fn frame_ended(&mut self, frames: &[Frame]) -> std::result::Result<(), String> {
        self.in_frame = false;
        let (used, made) = (
            std::mem::take(&mut self.used),
            std::mem::take(&mut self.made),
        );
        let Some(f) = frames.get(self.frame) else {
            return Ok(());
        };
        if (used, made) != (f.size, f.raw) {
            return Err(format!(
                "frame {} is {used} bytes holding {made}; the frame table says {} holding {}",
                self.frame, f.size, f.raw
            ));
        }
        self.passed(f);
        Ok(())
    }
}

/// Reads `n` bytes of `input` past.
fn pass(input: &mut impl BufRead, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let data = input.fill_buf()?;
        if data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a frame",
            ));
        }
        let k = (data.len() as u64).min(n) as usize;
        input.consume(k);
        n -= k as u64;
    }
    Ok(())
}

/// What a reader of the tar stream can say of the frames passed over.
/// Only `PlainReader` has any; at a gap, its buffer is empty until the
/// gap is passed.
pub trait Gaps {
    /// The bytes passed over at the cursor: 0 when there is none.
    ///
    /// # Errors
    ///
    /// Fails as reading the stream does.
    fn gap(&mut self) -> io::Result<u64> {
        Ok(0)
    }

    /// Moves the cursor past `n` bytes of the gap there.
    fn pass_gap(&mut self, n: u64) {
        let _ = n;
    }

    /// Asks that the frames wholly inside the next `len` bytes, not
    /// decoded yet, be passed over.
    fn ask_gaps(&mut self, len: u64) {
        let _ = len;
    }

    /// Fills the gap at the cursor, if there is one, with its bytes read
    /// again from the archive.
    ///
    /// # Errors
    ///
    /// Fails when the frame cannot be read or is not the table's.
    fn fill_gap(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Gaps for &[u8] {}
impl Gaps for ChannelReader {}
impl Gaps for PartialReader<'_> {}
impl<R: Gaps + ?Sized> Gaps for &mut R {
    fn gap(&mut self) -> io::Result<u64> {
        (**self).gap()
    }

    fn pass_gap(&mut self, n: u64) {
        (**self).pass_gap(n);
    }

    fn ask_gaps(&mut self, len: u64) {
        (**self).ask_gaps(len);
    }

    fn fill_gap(&mut self) -> io::Result<()> {
        (**self).fill_gap()
    }
}

/// The walk's reader of the decoded tar stream: the chunks and gaps the
/// decoder sends, in order. Chunks read to the end go back to be filled
/// again.
pub(crate) struct PlainReader {
    rx: Receiver<Piece>,
    chunk: Vec<u8>,
    pos: usize,
    /// What is left of the gap at the cursor.
    gap: u64,
    /// The cursor's offset in the tar stream.
    at: u64,
    spent: Sender<Vec<u8>>,
    ask: Ask,
    /// Where gaps are filled from; `None` when nothing is passed over.
    refetch: Option<Refetch>,
}

impl PlainReader {
    pub(crate) fn new(
        rx: Receiver<Piece>,
        spent: Sender<Vec<u8>>,
        (ask, refetch): (Ask, Option<Refetch>),
    ) -> PlainReader {
        PlainReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            gap: 0,
            at: 0,
            spent,
            ask,
            refetch,
        }
    }
}

impl BufRead for PlainReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() && self.gap == 0 {
            match self.rx.recv() {
                Ok(Piece::Bytes(c)) => {
                    let old = std::mem::replace(&mut self.chunk, c);
                    let _ = self.spent.try_send(old);
                    self.pos = 0;
                }
                Ok(Piece::Gap(n)) => self.gap = n,
                Err(_) => return Ok(&[]),
            }
        }
        if self.gap > 0 {
            return Ok(&[]);
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.chunk.len() - self.pos);
        self.pos += n;
        self.at += n as u64;
    }
}

impl Read for PlainReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, buf)
    }
}

impl Gaps for PlainReader {
    fn gap(&mut self) -> io::Result<u64> {
        if self.pos == self.chunk.len() {
            self.fill_buf()?;
        }
        Ok(if self.pos == self.chunk.len() {
            self.gap
        } else {
            0
        })
    }

    fn pass_gap(&mut self, n: u64) {
        let n = n.min(self.gap);
        self.gap -= n;
        self.at += n;
    }

    fn ask_gaps(&mut self, len: u64) {
        self.ask.set(self.at, self.at + len);
    }

    fn fill_gap(&mut self) -> io::Result<()> {
        if self.gap()? == 0 {
            return Ok(());
        }
        let refetch = self
            .refetch
            .as_mut()
            .ok_or_else(|| io::Error::other("a frame was passed over that cannot be read again"))?;
        let data = refetch.fetch(self.at)?;
        if data.len() as u64 != self.gap {
            return Err(io::Error::other(
                "a gap was filled from the middle of a frame",
            ));
        }
        let old = std::mem::replace(&mut self.chunk, data);
        let _ = self.spent.try_send(old);
        (self.pos, self.gap) = (0, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};

    /// What a decoder sent, its bytes run together: `Ok(bytes)` or
    /// `Err(gap)`.
    type Sent = Vec<std::result::Result<Vec<u8>, u64>>;

    fn part(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect()
    }

    /// `parts` as zstd frames, one each, and their table.
    fn archive(parts: &[Vec<u8>]) -> (Vec<u8>, Vec<Frame>) {
        let mut out = Vec::new();
        let mut table = Vec::new();
        for p in parts {
            let c = zstd::bulk::compress(p, 3).unwrap();
            table.push(Frame {
                size: c.len() as u64,
                raw: p.len() as u64,
                blake3: String::new(),
            });
            out.extend_from_slice(&c);
        }
        (out, table)
    }

    /// `decode_frames` over `bytes` in chunks of 100,000, asked for
    /// `[from, to)` from the start.
    fn decode(bytes: &[u8], table: &[Frame], (from, to): (u64, u64)) -> (Result<()>, Sent) {
        let (in_tx, in_rx) = bounded(bytes.len() / 100_000 + 1);
        for c in bytes.chunks(100_000) {
            in_tx.send(c.to_vec()).unwrap();
        }
        drop(in_tx);
        let (spent_tx, _spent_rx) = unbounded();
        let input = ChannelReader::new(in_rx, spent_tx);
        let (out_tx, out_rx) = unbounded();
        let (_plain_spent_tx, plain_spent_rx) = bounded::<Vec<u8>>(4);
        let ask = Ask::default();
        ask.set(from, to);
        let result = decode_frames(
            Path::new("a.tar.zst"),
            table,
            input,
            &ask,
            (&out_tx, &plain_spent_rx),
        );
        drop(out_tx);
        let mut sent: Sent = Vec::new();
        for piece in out_rx {
            match (piece, sent.last_mut()) {
                (Piece::Bytes(b), Some(Ok(last))) => last.extend_from_slice(&b),
                (Piece::Bytes(b), _) => sent.push(Ok(b)),
                (Piece::Gap(n), _) => sent.push(Err(n)),
            }
        }
        (result, sent)
    }

    #[test]
    fn the_frames_wholly_inside_what_was_asked_are_passed_over() {
        let parts = [part(1, 1 << 20), part(2, 1_500_000), part(3, 700_000)];
        let (bytes, table) = archive(&parts);
        let (a, b) = (parts[0].len() as u64, parts[1].len() as u64);
        let whole = [parts[0].clone(), parts[1].clone(), parts[2].clone()].concat();

        let (r, sent) = decode(&bytes, &table, (0, 0));
        r.unwrap();
        assert!(sent == [Ok(whole.clone())], "nothing asked, all decoded");

        let (r, sent) = decode(&bytes, &table, (a, a + b));
        r.unwrap();
        assert!(sent == [Ok(parts[0].clone()), Err(b), Ok(parts[2].clone())]);

        // A frame that reaches past what was asked is decoded.
        let (r, sent) = decode(&bytes, &table, (1, a + b + 10));
        r.unwrap();
        assert!(sent == [Ok(parts[0].clone()), Err(b), Ok(parts[2].clone())]);
        let (r, sent) = decode(&bytes, &table, (0, a + b - 1));
        r.unwrap();
        assert!(sent == [Err(a), Ok([parts[1].clone(), parts[2].clone()].concat())]);

        // Two in a row, then the end.
        let (r, sent) = decode(&bytes, &table, (a, u64::MAX / 2));
        r.unwrap();
        assert!(sent == [Ok(parts[0].clone()), Err(b), Err(parts[2].len() as u64)]);
    }

    #[test]
    fn a_frame_unlike_its_line_in_the_table_is_refused() {
        let parts = [part(1, 300_000), part(2, 200_000)];
        let (bytes, table) = archive(&parts);
        for (i, raw, size) in [(0, 1i64, 0i64), (0, 0, 1), (1, -1, 0)] {
            let mut wrong = table.clone();
            wrong[i].raw = (wrong[i].raw as i64 + raw) as u64;
            wrong[i].size = (wrong[i].size as i64 + size) as u64;
            let (r, _) = decode(&bytes, &wrong, (0, 0));
            let e = r.expect_err("a table that lies is refused").to_string();
            assert!(e.contains("the frame table says"), "{e}");
        }
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_refused_passed_over_or_not() {
        let parts = [part(1, 300_000), part(2, 200_000)];
        let (bytes, table) = archive(&parts);
        let cut = &bytes[..bytes.len() - 10];
        for ask in [(0, 0), (0, 1 << 30)] {
            let (r, _) = decode(cut, &table, ask);
            let e = r.expect_err("a cut stream is refused").to_string();
            assert!(e.contains("ends inside a frame"), "{ask:?}: {e}");
        }
    }

    #[test]
    fn the_reader_stops_at_a_gap_until_it_is_passed_and_asks_from_its_cursor() {
        let (tx, rx) = unbounded();
        let (spent, _spent_rx) = unbounded();
        let ask = Ask::default();
        let mut r = PlainReader::new(rx, spent, (ask.clone(), None));
        tx.send(Piece::Bytes(b"head".to_vec())).unwrap();
        tx.send(Piece::Gap(1000)).unwrap();
        tx.send(Piece::Bytes(b"tail".to_vec())).unwrap();
        drop(tx);
        let mut buf = [0u8; 16];
        assert_eq!(r.gap().unwrap(), 0);
        assert_eq!(r.read(&mut buf).unwrap(), 4);
        assert_eq!(r.read(&mut buf).unwrap(), 0, "no bytes at a gap");
        assert_eq!(r.gap().unwrap(), 1000);
        r.pass_gap(400);
        assert_eq!(r.gap().unwrap(), 600);
        r.ask_gaps(50);
        assert!(ask.covers(404, 50) && !ask.covers(403, 10) && !ask.covers(404, 51));
        r.pass_gap(600);
        assert_eq!(r.gap().unwrap(), 0);
        assert_eq!(r.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"tail");
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }
}
