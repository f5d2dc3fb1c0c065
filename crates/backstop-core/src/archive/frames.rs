//! The frame table: where each zstd frame of an archive lies, what part of
//! the tar stream it holds and its BLAKE3 hash, and where each source's
//! entries are in the tar stream. It lets a restore of some sources from a
//! bucket fetch only the frames those sources need.
//!
//! It is a zstd *skippable* frame at the very end of the archive (magic
//! `0x184D2A5B`), which `zstd -d`, `tar -I zstd` and every zstd library
//! skip: the archive stays plain `.tar.zst`. Its payload is the table as
//! JSON followed by its length (u32, little-endian) and `BSFT`, so a
//! reader finds it from the file's last 8 bytes.
//!
//! It is trusted only through the catalog: the backup records the table
//! frame's SHA-256 (`frames_sha256`) beside the archive's, and a partial
//! read checks the table against it, then each frame it reads against its
//! BLAKE3 hash in the table. Every byte a partial restore uses is so
//! checked, by cryptographic hashes, against what the home holds. Not
//! zstd's seekable format (contrib/seekable_format): its per-frame
//! checksum is 32 bits of XXH64, which guards against damage but not
//! against an altered archive. BLAKE3 rather than SHA-256 for the frames:
//! no `sha256sum` reads them, and it costs a fifth of the CPU on the
//! compressor threads of every backup.

use std::collections::HashSet;
use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::format::ArchiveError;
use crate::error::{Error, Result};
use crate::stores::Location;

/// The skippable frame's magic number (one of zstd's sixteen).
pub const TABLE_MAGIC: u32 = 0x184D_2A5B;
/// The last 4 bytes of an archive with a table.
const FOOTER_MAGIC: &[u8; 4] = b"BSFT";
/// The table's own format.
const TABLE_FORMAT: u32 = 1;
/// A table larger than this is refused unread: it is the archive's word.
const MAX_TABLE: u64 = 64 << 20;
/// No frame of backstop's holds more than one 4 MiB block; a table that
/// says otherwise is refused before anything is allocated for it.
const MAX_FRAME_RAW: u64 = 4 << 20;
/// A stored frame is a little larger than what it holds.
const MAX_FRAME_SIZE: u64 = MAX_FRAME_RAW + (1 << 16);

/// One frame: its size in the file, the bytes of tar stream it holds, and
/// the BLAKE3 hash of its bytes in the file (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub size: u64,
    pub raw: u64,
    pub blake3: String,
}

/// Where one source's entries lie in the tar stream: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpan {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

/// The table, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameTable {
    pub backstop_frames: u32,
    /// The backup it belongs to.
    pub id: String,
    /// Where the manifest member ends in the tar stream.
    pub manifest_end: u64,
    /// Each source with entries, in archive order.
    pub sources: Vec<SourceSpan>,
    /// Where the checksums member starts: everything from here to the end
    /// (checksums, index, trailer) is read by every partial restore.
    pub tail: u64,
    pub frames: Vec<Frame>,
}

/// Where the tar stream's parts are, as the writer records them.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub manifest_end: u64,
    pub sources: Vec<SourceSpan>,
    pub tail: u64,
}

impl Layout {
    /// Records that an entry of `source` starts at `offset`.
    pub fn entry(&mut self, source: &[u8], offset: u64) {
        match self.sources.last_mut() {
            Some(last) if last.name.as_bytes() == source => {}
            _ => {
                if let Some(last) = self.sources.last_mut() {
                    last.end = offset;
                }
                self.sources.push(SourceSpan {
                    name: String::from_utf8_lossy(source).into_owned(),
                    start: offset,
                    end: offset,
                });
            }
        }
    }

    /// Records where the payload ends and the checksums member starts.
    pub fn payload_end(&mut self, offset: u64) {
        if let Some(last) = self.sources.last_mut() {
            last.end = offset;
        }
        self.tail = offset;
    }
}

/// The table of an archive whose frames are `frames`, as the skippable
/// frame that ends it, and that frame's SHA-256 (hex); `None` when it
/// would be larger than a reader accepts (an archive of terabytes), which
/// leaves the archive without one: it is then always read whole.
pub fn encode(id: &str, layout: Layout, frames: Vec<Frame>) -> Option<(Vec<u8>, String)> {
    let table = FrameTable {
        backstop_frames: TABLE_FORMAT,
        id: id.to_string(),
        manifest_end: layout.manifest_end,
        sources: layout.sources,
        tail: layout.tail,
        frames,
    };
    let json = serde_json::to_vec(&table).expect("the frame table serialises");
    if json.len() as u64 + 16 > MAX_TABLE {
        return None;
    }
    let payload = json.len() as u32 + 8;
    let mut out = Vec::with_capacity(json.len() + 16);
    out.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&payload.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(FOOTER_MAGIC);
    let sha = hex::encode(Sha256::digest(&out));
    Some((out, sha))
}

/// The size of the frame table ending the `size`-byte archive at `loc`,
/// 0 when it has none. Unchecked: for finding where the frames end.
///
/// # Errors
///
/// Fails when the archive cannot be read.
pub fn table_len(loc: &Location, size: u64) -> Result<u64> {
    if size < 16 {
        return Ok(0);
    }
    let footer = loc.read_range(size - 8, 8)?;
    let json_len = u64::from(u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")));
    if &footer[4..] != FOOTER_MAGIC || json_len + 16 > size.min(MAX_TABLE) {
        return Ok(0);
    }
    let head = loc.read_range(size - json_len - 16, 4)?;
    Ok(if head == TABLE_MAGIC.to_le_bytes() {
        json_len + 16
    } else {
        0
    })
}

/// The SHA-256 of the frame table ending the `size`-byte archive of
/// backup `id` at `loc`, when it has one that describes it; for a catalog
/// rebuilt from a store, which trusts what the store holds.
///
/// # Errors
///
/// Fails when the archive cannot be read.
pub fn found_table(loc: &Location, size: u64, id: &str) -> Result<Option<String>> {
    let len = table_len(loc, size)?;
    if len == 0 {
        return Ok(None);
    }
    let frame = loc.read_range(size - len, len)?;
    let table: Option<FrameTable> = serde_json::from_slice(&frame[8..frame.len() - 8]).ok();
    Ok(table
        .filter(|t| check(t, size - len, id).is_ok())
        .map(|_| hex::encode(Sha256::digest(&frame))))
}

fn altered(loc: &Location, detail: String) -> Error {
    ArchiveError::Checksum {
        path: loc.label().to_path_buf(),
        detail,
    }
    .into()
}

/// Reads the table at the end of the `size`-byte archive at `loc` and
/// checks it against `expected` (the SHA-256 the catalog records) and the
/// backup `id`.
///
/// # Errors
///
/// An integrity error (exit 4) when the archive has no table, or one
/// that is not the recorded one or does not describe the file; a read
/// error when the store cannot be read.
pub fn read_table(loc: &Location, size: u64, expected: &str, id: &str) -> Result<FrameTable> {
    let missing = || altered(loc, "its frame table is missing or damaged".into());
    if size < 16 {
        return Err(missing());
    }
    let footer = loc.read_range(size - 8, 8)?;
    if &footer[4..] != FOOTER_MAGIC {
        return Err(missing());
    }
    let json_len = u64::from(u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")));
    let frame_len = json_len + 16;
    if frame_len > MAX_TABLE || frame_len > size {
        return Err(missing());
    }
    let start = size - frame_len;
    let frame = loc.read_range(start, frame_len)?;
    let sha = hex::encode(Sha256::digest(&frame));
    if sha != expected {
        return Err(altered(
            loc,
            format!("its frame table's SHA-256 is {sha}, the catalog records {expected}"),
        ));
    }
    let table: FrameTable =
        serde_json::from_slice(&frame[8..8 + json_len as usize]).map_err(|_| missing())?;
    check(&table, start, id).map_err(|why| altered(loc, format!("its frame table {why}")))?;
    Ok(table)
}

/// Whether `table` describes an archive of backup `id` whose frames end at
/// `end`: every frame of a size backstop writes, the parts in order.
fn check(table: &FrameTable, end: u64, id: &str) -> std::result::Result<(), String> {
    if table.backstop_frames != TABLE_FORMAT || table.id != id {
        return Err(format!("is not the table of backup {id}"));
    }
    let mut at = 0u64;
    let mut raw = 0u64;
    for f in &table.frames {
        if f.size == 0 || f.size > MAX_FRAME_SIZE || f.raw > MAX_FRAME_RAW || f.blake3.len() != 64 {
            return Err("lists a frame backstop never writes".into());
        }
        at += f.size;
        raw += f.raw;
    }
    if at != end {
        return Err(format!(
            "describes {at} bytes of frames; the file has {end}"
        ));
    }
    let mut last = table.manifest_end;
    for s in &table.sources {
        if s.start < last || s.end < s.start {
            return Err("lists sources out of order".into());
        }
        last = s.end;
    }
    if table.tail < last || table.tail > raw {
        return Err("puts the checksums outside the archive".into());
    }
    Ok(())
}

/// A frame a partial read needs: its place in the file and in the tar
/// stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub index: usize,
    pub offset: u64,
    pub raw_offset: u64,
    pub size: u64,
    pub raw: u64,
    pub blake3: String,
}

/// What a read of some sources only takes from an archive: the parts of
/// the tar stream it reads, and the frames that hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// `[start, end)` of the tar stream, in order, not touching.
    pub spans: Vec<(u64, u64)>,
    pub frames: Vec<Needed>,
    /// The sources it reads (every other source is left out).
    pub sources: Vec<String>,
}

impl Partial {
    /// The read of `wanted` (source names) from the archive `table`
    /// describes: the manifest, those sources' entries, and the tail.
    pub fn of(table: &FrameTable, wanted: &[String]) -> Partial {
        let total: u64 = table.frames.iter().map(|f| f.raw).sum();
        let mut spans: Vec<(u64, u64)> = vec![(0, table.manifest_end)];
        for s in table.sources.iter().filter(|s| wanted.contains(&s.name)) {
            spans.push((s.start, s.end));
        }
        spans.push((table.tail, total));
        Partial::of_spans(table, spans, wanted)
    }

    /// The read of the tail alone: the checksums, the index, the trailer.
    pub fn tail(table: &FrameTable) -> Partial {
        let total: u64 = table.frames.iter().map(|f| f.raw).sum();
        Partial::of_spans(table, vec![(table.tail, total)], &[])
    }

    /// The read of `spans` of the tar stream (in order), and the frames
    /// that hold them.
    fn of_spans(table: &FrameTable, spans: Vec<(u64, u64)>, wanted: &[String]) -> Partial {
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in spans.into_iter().filter(|(a, b)| b > a) {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let frames = placed(&table.frames)
            .into_iter()
            .filter(|f| {
                let (r0, r1) = (f.raw_offset, f.raw_offset + f.raw);
                merged.iter().any(|&(a, b)| a < r1 && r0 < b)
            })
            .collect();
        Partial {
            spans: merged,
            frames,
            sources: wanted.to_vec(),
        }
    }

    /// Bytes of the archive file it reads.
    pub fn bytes(&self) -> u64 {
        self.frames.iter().map(|f| f.size).sum()
    }

    /// The names it reads, as member path prefixes.
    pub fn source_names(&self) -> HashSet<Vec<u8>> {
        self.sources.iter().map(|s| s.as_bytes().to_vec()).collect()
    }
}

/// Every frame of a table, with where it starts in the file and in the
/// tar stream.
pub fn placed(frames: &[Frame]) -> Vec<Needed> {
    let (mut offset, mut raw_offset) = (0u64, 0u64);
    frames
        .iter()
        .enumerate()
        .map(|(index, f)| {
            let placed = Needed {
                index,
                offset,
                raw_offset,
                size: f.size,
                raw: f.raw,
                blake3: f.blake3.clone(),
            };
            offset += f.size;
            raw_offset += f.raw;
            placed
        })
        .collect()
}

/// Reads frame `f` of the archive at `loc` and checks it against the table.
///
/// # Errors
///
/// An integrity error when its bytes are not the ones the table records.
pub fn read_frame(loc: &Location, f: &Needed) -> Result<Vec<u8>> {
    let data = loc.read_range(f.offset, f.size)?;
    if blake3::hash(&data).to_hex().as_str() != f.blake3 {
        return Err(altered(
            loc,
            format!(
                "frame {} (bytes {}..{}) does not match its BLAKE3 hash in the frame table",
                f.index,
                f.offset,
                f.offset + f.size
            ),
        ));
    }
    Ok(data)
}

/// The frames `partial` reads of the archive at `at`, fetched (four at a
/// time, each checked against its hash in the table) into a new unnamed file in
/// `dir`, at their offsets; the rest of the file is a hole. Reads of the
/// location returned come from that file.
///
/// # Errors
///
/// Fails when the file cannot be made or written, or a frame cannot be
/// fetched or is not the one the table records.
pub fn spool(
    at: &Location,
    partial: &Partial,
    dir: &std::path::Path,
    (progress, cancel): (&dyn crate::progress::Progress, &crate::progress::Cancel),
) -> Result<Location> {
    use std::os::unix::fs::FileExt;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let file =
        crate::fsutil::unnamed_file(dir).map_err(|e| Error::io("creating a file in", dir, e))?;
    // As large as the archive, so that its size reads the same.
    let size = at.size()?.unwrap_or(0);
    file.set_len(size)
        .map_err(|e| Error::io("writing a copy of", at.label(), e))?;
    progress.start(crate::progress::Phase::Fetch, partial.bytes());
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let fetched = (|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = partial.frames.get(i) else {
                            return Ok(());
                        };
                        cancel.check()?;
                        let data = read_frame(at, f)?;
                        file.write_all_at(&data, f.offset)
                            .map_err(|e| Error::io("writing a copy of", at.label(), e))?;
                        progress.advance(f.size);
                    }
                })();
                if let Err(e) = fetched {
                    // The others stop at their next frame.
                    next.store(usize::MAX / 2, Ordering::Relaxed);
                    first_error.lock().expect("error lock").get_or_insert(e);
                }
            });
        }
    });
    progress.finish();
    if let Some(e) = first_error.into_inner().expect("error lock") {
        return Err(e);
    }
    Ok(at.with_spool(file))
}

/// The parts of the tar stream a [`Partial`] read takes, one after the
/// other, from frames read and checked one at a time.
pub struct PartialReader<'a> {
    loc: &'a Location,
    partial: &'a Partial,
    advance: &'a dyn Fn(u64),
    next: usize,
    out: Vec<u8>,
    at: usize,
    decoder: zstd::bulk::Decompressor<'static>,
    /// The first error, as it was (the tar reader sees an `io::Error`).
    pub failed: Option<Error>,
}

impl<'a> PartialReader<'a> {
    /// A reader over `loc` taking what `partial` says.
    ///
    /// # Errors
    ///
    /// Fails when the decoder cannot be made.
    pub fn new(
        loc: &'a Location,
        partial: &'a Partial,
        advance: &'a dyn Fn(u64),
    ) -> io::Result<PartialReader<'a>> {
        Ok(PartialReader {
            loc,
            partial,
            advance,
            failed: None,
            next: 0,
            out: Vec::new(),
            at: 0,
            decoder: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Reads, checks and decodes the next frame, keeping what the spans
    /// take of it; `false` after the last.
    fn fill(&mut self) -> Result<bool> {
        let Some(f) = self.partial.frames.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        let data = read_frame(self.loc, f)?;
        (self.advance)(f.size);
        let bad = |detail: String| -> Error {
            ArchiveError::Corrupt {
                path: self.loc.label().to_path_buf(),
                detail,
            }
            .into()
        };
        let plain = self
            .decoder
            .decompress(&data, f.raw as usize)
            .map_err(|e| bad(format!("frame {}: {e}", f.index)))?;
        if plain.len() as u64 != f.raw {
            return Err(bad(format!(
                "frame {} holds {} bytes, not {}",
                f.index,
                plain.len(),
                f.raw
            )));
        }
        self.out.clear();
        self.at = 0;
        let (r0, r1) = (f.raw_offset, f.raw_offset + f.raw);
        for &(a, b) in &self.partial.spans {
            let (s, e) = (a.max(r0), b.min(r1));
            if s < e {
                self.out
                    .extend_from_slice(&plain[(s - r0) as usize..(e - r0) as usize]);
            }
        }
        Ok(true)
    }
}

impl BufRead for PartialReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.at == self.out.len() {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Ok(&[]),
                Err(e) => {
                    let shown = io::Error::other(e.to_string());
                    self.failed.get_or_insert(e);
                    return Err(shown);
                }
            }
        }
        Ok(&self.out[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.out.len());
    }
}

impl Read for PartialReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::archive::reader::read_buffered(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> FrameTable {
        let frame = |size, raw| Frame {
            size,
            raw,
            blake3: "0".repeat(64),
        };
        FrameTable {
            backstop_frames: 1,
            id: "app-1".into(),
            manifest_end: 1024,
            sources: vec![
                SourceSpan {
                    name: "a".into(),
                    start: 1024,
                    end: 5 << 20,
                },
                SourceSpan {
                    name: "b".into(),
                    start: 5 << 20,
                    end: (9 << 20) + 512,
                },
            ],
            tail: (9 << 20) + 512,
            frames: vec![
                frame(100, 4 << 20),
                frame(200, 4 << 20),
                frame(300, 2 << 20),
            ],
        }
    }

    #[test]
    fn a_source_takes_the_frames_its_entries_are_in_and_the_ends() {
        let t = table();
        let b = Partial::of(&t, &["b".into()]);
        // The manifest (frame 0), b (frames 1 and 2), the tail (frame 2).
        assert_eq!(
            b.spans,
            vec![(0, 1024), (5 << 20, 10 << 20)],
            "b and the tail touch"
        );
        assert_eq!(
            b.frames.iter().map(|f| f.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(b.frames[2].offset, 300);
        assert_eq!(b.frames[2].raw_offset, 8 << 20);
        let none = Partial::of(&t, &[]);
        assert_eq!(
            none.frames.iter().map(|f| f.index).collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(none.bytes(), 400);
    }

    #[test]
    fn a_table_must_describe_the_file_it_ends() {
        let t = table();
        assert_eq!(check(&t, 600, "app-1"), Ok(()));
        assert!(check(&t, 601, "app-1").is_err());
        assert!(check(&t, 600, "app-2").is_err());
        let mut out_of_order = t.clone();
        out_of_order.sources.swap(0, 1);
        assert!(check(&out_of_order, 600, "app-1").is_err());
        let mut huge = t;
        huge.frames[0].raw = 1 << 40;
        assert!(check(&huge, 600, "app-1").is_err());
    }

    #[test]
    fn the_layout_closes_each_source_where_the_next_begins() {
        let mut l = Layout {
            manifest_end: 1024,
            ..Layout::default()
        };
        l.entry(b"a", 1024);
        l.entry(b"a", 2048);
        l.entry(b"b", 4096);
        l.payload_end(8192);
        let spans: Vec<_> = l.sources.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(spans, [(1024, 4096), (4096, 8192)]);
        assert_eq!(l.tail, 8192);
        let (bytes, sha) = encode("x", l, Vec::new()).expect("small");
        assert_eq!(&bytes[..4], &TABLE_MAGIC.to_le_bytes());
        assert_eq!(&bytes[bytes.len() - 4..], FOOTER_MAGIC);
        assert_eq!(sha.len(), 64);
    }
}
