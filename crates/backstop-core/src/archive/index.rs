//! The index: every path of the tree as of one backup, with what decides
//! "unchanged" (size, times, inode, mode, owner), each file's SHA-256, and
//! the id of the archive that holds its content.
//!
//! It is a text member of the archive (`backstop-index.txt`, before the
//! trailer) and, compressed with zstd, the cache in the home from which
//! the next incremental backup of the instance decides what to read. One
//! line an entry, in archive order, fields separated by one space:
//!
//! ```text
//! backstop-index 1 app-2026-12-02-010203
//! d 755 0 0 0 1764633723.000000000 1764633723.000000000 1311 - - - app
//! f 644 0 0 5 1764633723.100000000 1764633723.100000000 1312 <sha256> app-2026-12-01-230100 - app/a.txt
//! l 777 0 0 0 1764633723.000000000 1764633723.000000000 1313 - - a.txt app/link
//! end 3
//! ```
//!
//! Kinds are `d`, `f`, `l` (symlink) and `h` (hard link to the target
//! path). Paths and targets escape `\`, spaces, control bytes and DEL as
//! `\xHH`, so a line splits on spaces. Streamed both ways: memory never
//! grows with the tree.

use std::cmp::Ordering;
use std::io::{self, BufRead};

/// The member's name in the archive.
pub const INDEX_NAME: &str = "backstop-index.txt";
const MAGIC: &str = "backstop-index";
const VERSION: u32 = 1;

/// What an entry of the index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Dir,
    File,
    Symlink,
    HardLink,
}

impl IndexKind {
    fn letter(self) -> u8 {
        match self {
            IndexKind::Dir => b'd',
            IndexKind::File => b'f',
            IndexKind::Symlink => b'l',
            IndexKind::HardLink => b'h',
        }
    }

    fn from_letter(b: &[u8]) -> Option<IndexKind> {
        Some(match b {
            b"d" => IndexKind::Dir,
            b"f" => IndexKind::File,
            b"l" => IndexKind::Symlink,
            b"h" => IndexKind::HardLink,
            _ => return None,
        })
    }
}

/// A time as seconds and nanoseconds.
pub type Time = (i64, u32);

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The archive member path, `<source>/<path>`.
    pub path: Vec<u8>,
    pub kind: IndexKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Files only; 0 for the rest.
    pub size: u64,
    pub mtime: Time,
    /// The change time as the backup saw it; `(-1, 0)` when the file
    /// changed while it was read, so the next backup reads it again.
    pub ctime: Time,
    pub ino: u64,
    /// Files only.
    pub sha256: Option<[u8; 32]>,
    /// Files only: the id of the archive holding the content.
    pub holder: Option<String>,
    /// A symlink's target, or the path a hard link names.
    pub target: Option<Vec<u8>>,
}

impl IndexEntry {
    /// Whether a file with this stat is the one the entry describes: same
    /// size, modification and change time, inode, mode and owner. The
    /// change time cannot be set by a user, so a file rewritten to the
    /// same size and mtime is still read again.
    pub fn unchanged(&self, now: &Stamp) -> bool {
        self.kind == IndexKind::File
            && self.ctime.0 >= 0
            && (
                self.size, self.mtime, self.ctime, self.ino, self.mode, self.uid, self.gid,
            ) == (
                now.size, now.mtime, now.ctime, now.ino, now.mode, now.uid, now.gid,
            )
    }
}

/// What a file looks like now, to compare with its [`IndexEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    pub ino: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Stamp {
    /// The stamp of a `stat` result.
    pub fn of(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            size: st.st_size.max(0) as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
            ino: st.st_ino,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
        }
    }
}

/// Compares two member paths of one source in archive order: depth
/// first, names in byte order (`a`, `a/x`, `a.txt`), which is byte order
/// with `/` lowest.
pub fn archive_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let slash = |x: &u8| *x == b'/';
    a.split(slash).cmp(b.split(slash))
}

/// The source a member path belongs to: its first component.
pub fn top(path: &[u8]) -> &[u8] {
    path.split(|&b| b == b'/').next().unwrap_or_default()
}

/// Archive order across sources, which come in the manifest's order.
pub fn source_cmp(sources: &[Vec<u8>], a: &[u8], b: &[u8]) -> Ordering {
    let rank = |p: &[u8]| {
        sources
            .iter()
            .position(|s| s == top(p))
            .unwrap_or(usize::MAX)
    };
    rank(a).cmp(&rank(b)).then_with(|| archive_cmp(a, b))
}

/// The first line of an index.
pub fn header_line(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(format!("{MAGIC} {VERSION} {id}\n").as_bytes());
}

/// The last line of an index: how many entries it holds.
pub fn end_line(out: &mut Vec<u8>, entries: u64) {
    out.extend_from_slice(format!("end {entries}\n").as_bytes());
}

/// Appends the line of `e` to `out`.
pub fn write_line(out: &mut Vec<u8>, e: &IndexEntry) {
    use std::io::Write;
    let _ = write!(
        out,
        "{} {:o} {} {} {} {}.{:09} {}.{:09} {} ",
        char::from(e.kind.letter()),
        e.mode,
        e.uid,
        e.gid,
        e.size,
        e.mtime.0,
        e.mtime.1,
        e.ctime.0,
        e.ctime.1,
        e.ino
    );
    match &e.sha256 {
        Some(h) => out.extend_from_slice(&hex32(h)),
        None => out.push(b'-'),
    }
    out.push(b' ');
    match &e.holder {
        Some(h) => out.extend_from_slice(h.as_bytes()),
        None => out.push(b'-'),
    }
    out.push(b' ');
    match &e.target {
        Some(t) => escape(out, t),
        None => out.push(b'-'),
    }
    out.push(b' ');
    escape(out, &e.path);
    out.push(b'\n');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of a SHA-256, without allocating (the `hex` crate's
/// encoder, a char at a time, was a tenth of a million-file incremental).
pub fn hex32(sha: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, b) in sha.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    out
}

fn unhex32(text: &[u8]) -> Option<[u8; 32]> {
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        out.extend_from_slice(b"\\x");
        return;
    }
    for &b in bytes {
        if b <= b' ' || b == 0x7f || b == b'\\' || (b == b'-' && bytes.len() == 1) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

fn unescape(field: &[u8]) -> Option<Vec<u8>> {
    if field == b"\\x" {
        return Some(Vec::new());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            let hex = field.get(i + 2..i + 4)?;
            if field.get(i + 1) != Some(&b'x') {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    Some(out)
}

fn time(field: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(field).ok()?;
    let (sec, nsec) = s.split_once('.')?;
    let nsec: u32 = nsec.parse().ok()?;
    (nsec < 1_000_000_000).then_some(())?;
    Some((sec.parse().ok()?, nsec))
}

fn number<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn optional(field: &[u8]) -> Option<&[u8]> {
    (field != b"-").then_some(field)
}

/// Parses one entry line (without its newline).
///
/// # Errors
///
/// Says what is wrong with the line.
pub fn parse_line(line: &[u8]) -> Result<IndexEntry, String> {
    let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let bad = |what: &str| format!("its {what} is not valid");
    let [
        kind,
        mode,
        uid,
        gid,
        size,
        mtime,
        ctime,
        ino,
        sha,
        holder,
        target,
        path,
    ] = f[..]
    else {
        return Err(format!("has {} fields, not 12", f.len()));
    };
    let kind = IndexKind::from_letter(kind).ok_or_else(|| bad("kind"))?;
    let mode = std::str::from_utf8(mode)
        .ok()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| bad("mode"))?;
    let sha256 = match optional(sha) {
        Some(h) => Some(unhex32(h).ok_or_else(|| bad("SHA-256"))?),
        None => None,
    };
    let holder = match optional(holder) {
        Some(h) => Some(String::from_utf8(h.to_vec()).map_err(|_| bad("holder"))?),
        None => None,
    };
    let target = match optional(target) {
        Some(t) => Some(unescape(t).ok_or_else(|| bad("target"))?),
        None => None,
    };
    let entry = IndexEntry {
        path: unescape(path).ok_or_else(|| bad("path"))?,
        kind,
        mode,
        uid: number(uid).ok_or_else(|| bad("uid"))?,
        gid: number(gid).ok_or_else(|| bad("gid"))?,
        size: number(size).ok_or_else(|| bad("size"))?,
        mtime: time(mtime).ok_or_else(|| bad("mtime"))?,
        ctime: ctime_field(ctime).ok_or_else(|| bad("ctime"))?,
        ino: number(ino).ok_or_else(|| bad("inode"))?,
        sha256,
        holder,
        target,
    };
    if kind == IndexKind::File && (entry.sha256.is_none() || entry.holder.is_none()) {
        return Err("is a file without a SHA-256 or a holder".into());
    }
    Ok(entry)
}

fn ctime_field(field: &[u8]) -> Option<Time> {
    if field == b"-1.000000000" {
        return Some((-1, 0));
    }
    time(field)
}

/// Why an index could not be read.
#[derive(Debug)]
pub enum IndexError {
    Io(io::Error),
    /// The text is not an index, or is cut short.
    Malformed(String),
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexError::Io(e) => write!(f, "{e}"),
            IndexError::Malformed(why) => f.write_str(why),
        }
    }
}

/// An index read as a stream, one entry at a time.
pub struct IndexReader<R> {
    input: R,
    /// The id of the backup the index describes.
    pub id: String,
    line: Vec<u8>,
    lines: u64,
    entries: u64,
    ended: bool,
    last: Vec<u8>,
}

impl<R: BufRead> IndexReader<R> {
    /// Reads the header line.
    ///
    /// # Errors
    ///
    /// Fails when the input does not start as an index does.
    pub fn new(mut input: R) -> Result<IndexReader<R>, IndexError> {
        let mut line = Vec::new();
        input.read_until(b'\n', &mut line).map_err(IndexError::Io)?;
        let text = String::from_utf8_lossy(&line);
        let mut parts = text.trim_end().split(' ');
        let (Some(MAGIC), Some(v), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IndexError::Malformed(
                "it does not start as an index".into(),
            ));
        };
        if v != VERSION.to_string() {
            return Err(IndexError::Malformed(format!(
                "it is index version {v}; this backstop reads version {VERSION}"
            )));
        }
        Ok(IndexReader {
            input,
            id: id.to_string(),
            line,
            lines: 1,
            entries: 0,
            ended: false,
            last: Vec::new(),
        })
    }

    /// The next entry; `None` after the end line. Entries must come in
    /// archive order, each path once.
    ///
    /// # Errors
    ///
    /// Fails on a malformed line, an index cut short before its end line,
    /// entries out of order, or data after the end.
    pub fn next_entry(&mut self) -> Result<Option<IndexEntry>, IndexError> {
        if self.ended {
            return Ok(None);
        }
        self.line.clear();
        self.input
            .read_until(b'\n', &mut self.line)
            .map_err(IndexError::Io)?;
        self.lines += 1;
        let at = self.lines;
        let malformed = |why: String| IndexError::Malformed(format!("line {at} {why}"));
        let Some(line) = self.line.strip_suffix(b"\n") else {
            return Err(IndexError::Malformed(
                "it is cut short (no end line)".into(),
            ));
        };
        if let Some(n) = line.strip_prefix(b"end ") {
            if number::<u64>(n) != Some(self.entries) {
                return Err(malformed(format!(
                    "says {} entries; the index holds {}",
                    String::from_utf8_lossy(n),
                    self.entries
                )));
            }
            let mut rest = Vec::new();
            self.input
                .read_until(b'\n', &mut rest)
                .map_err(IndexError::Io)?;
            if !rest.is_empty() {
                return Err(IndexError::Malformed("data follows its end line".into()));
            }
            self.ended = true;
            return Ok(None);
        }
        let entry = parse_line(line).map_err(malformed)?;
        if !self.last.is_empty()
            && top(&entry.path) == top(&self.last)
            && archive_cmp(&entry.path, &self.last) != Ordering::Greater
        {
            return Err(malformed("is out of order".into()));
        }
        self.last.clone_from(&entry.path);
        self.entries += 1;
        Ok(Some(entry))
    }
}

/// A forward-only lookup in an index read in step with a walk in archive
/// order: each call names a path after the previous one.
pub struct Cursor<R> {
    reader: IndexReader<R>,
    /// The sources in the order both sides hold them.
    sources: Vec<Vec<u8>>,
    peeked: Option<IndexEntry>,
    started: bool,
}

impl<R: BufRead> Cursor<R> {
    /// A cursor over `reader`, whose sources come in the order `sources`
    /// gives (a path of another source is never found).
    pub fn new(reader: IndexReader<R>, sources: Vec<Vec<u8>>) -> Cursor<R> {
        Cursor {
            reader,
            sources,
            peeked: None,
            started: false,
        }
    }

    /// The id of the backup the index describes.
    pub fn id(&self) -> &str {
        &self.reader.id
    }

    /// The entry for `path`, if the index has one.
    ///
    /// # Errors
    ///
    /// Fails when the index cannot be read further.
    pub fn find(&mut self, path: &[u8]) -> Result<Option<&IndexEntry>, IndexError> {
        if !self.started {
            self.peeked = self.reader.next_entry()?;
            self.started = true;
        }
        while let Some(e) = &self.peeked {
            if source_cmp(&self.sources, &e.path, path) != Ordering::Less {
                break;
            }
            self.peeked = self.reader.next_entry()?;
        }
        Ok(self.peeked.as_ref().filter(|e| e.path == path))
    }

    /// Reads what is left, so an index cut short or damaged after the
    /// last lookup is still found out.
    ///
    /// # Errors
    ///
    /// As [`IndexReader::next_entry`].
    pub fn finish(mut self) -> Result<(), IndexError> {
        while self.reader.next_entry()?.is_some() {}
        Ok(())
    }
}

/// An index being written, compressed as it grows: a line costs a few
/// dozen bytes of memory, not its length.
pub struct IndexWriter {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
    line: Vec<u8>,
    entries: u64,
    raw: u64,
}

/// A finished index: its text compressed with zstd (a frame with a
/// checksum, which is the cache file as it is), and the text's length.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub bytes: Vec<u8>,
    pub raw_len: u64,
    pub entries: u64,
}

impl IndexWriter {
    /// Starts the index of backup `id`.
    pub fn new(id: &str) -> IndexWriter {
        // Level 1: the index is compressed on the tar writer's thread.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd level 1");
        let _ = enc.include_checksum(true);
        let mut w = IndexWriter {
            enc,
            line: Vec::with_capacity(256),
            entries: 0,
            raw: 0,
        };
        header_line(&mut w.line, id);
        w.flush_line();
        w
    }

    fn flush_line(&mut self) {
        use std::io::Write;
        // Writing into memory fails only when memory does.
        self.enc.write_all(&self.line).expect("index in memory");
        self.raw += self.line.len() as u64;
        self.line.clear();
    }

    /// Adds the line of `e`.
    pub fn push(&mut self, e: &IndexEntry) {
        write_line(&mut self.line, e);
        self.entries += 1;
        self.flush_line();
    }

    /// Ends the index with its end line.
    pub fn finish(mut self) -> Compressed {
        end_line(&mut self.line, self.entries);
        self.flush_line();
        Compressed {
            bytes: self.enc.finish().expect("index in memory"),
            raw_len: self.raw,
            entries: self.entries,
        }
    }
}

/// Reads an index compressed as [`IndexWriter`] leaves it.
///
/// # Errors
///
/// Fails when the input is not a zstd stream starting as an index does.
pub fn open_compressed(input: impl io::Read + Send + 'static) -> Result<BoxedReader, IndexError> {
    let dec = zstd::stream::read::Decoder::new(input).map_err(IndexError::Io)?;
    IndexReader::new(
        Box::new(io::BufReader::with_capacity(64 << 10, dec)) as Box<dyn BufRead + Send>
    )
}

/// Calls `each` with the SHA-256 (hex) and path of every regular file of
/// a compressed index, in order: the checksums member, from the index
/// rather than from a list of its own (36 bytes a file, kept for the whole
/// backup).
///
/// # Errors
///
/// Fails when the index does not decompress or a file line is malformed.
pub fn each_file(
    index: &Compressed,
    mut each: impl FnMut(&str, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("index: {why}"));
    let dec = zstd::stream::read::Decoder::new(&index.bytes[..])?;
    let mut input = io::BufReader::with_capacity(256 << 10, dec);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if !line.starts_with(b"f ") {
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let mut fields = text.split(|&b| b == b' ');
        let sha = fields
            .nth(8)
            .ok_or_else(|| bad("a file line is cut short"))?;
        let path = fields
            .nth(2)
            .ok_or_else(|| bad("a file line has no path"))?;
        let sha = std::str::from_utf8(sha).map_err(|_| bad("a SHA-256 is not text"))?;
        each(
            sha,
            &unescape(path).ok_or_else(|| bad("a path is not escaped"))?,
        )?;
    }
}

/// A boxed index reader, as [`Previous`] holds it.
pub type BoxedReader = IndexReader<Box<dyn BufRead + Send>>;

/// The previous backup's index, read in step with a scan or a write.
pub struct Previous {
    cursor: Cursor<Box<dyn BufRead + Send>>,
    /// Why the index could not be read to its end, once it could not:
    /// from there on nothing is unchanged.
    pub error: Option<String>,
}

impl Previous {
    pub fn new(reader: BoxedReader, sources: Vec<Vec<u8>>) -> Previous {
        Previous {
            cursor: Cursor::new(reader, sources),
            error: None,
        }
    }

    /// The id of the backup the index describes.
    pub fn id(&self) -> &str {
        self.cursor.id()
    }

    /// Whether the file at `path` is as the index describes it.
    pub fn unchanged(&mut self, path: &[u8], now: &Stamp) -> bool {
        self.entry(path).is_some_and(|e| e.unchanged(now))
    }

    /// The index's entry for `path`, if it has one and could be read.
    pub fn entry(&mut self, path: &[u8]) -> Option<&IndexEntry> {
        if self.error.is_some() {
            return None;
        }
        match self.cursor.find(path) {
            Ok(found) => found,
            Err(e) => {
                self.error = Some(e.to_string());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &[u8]) -> IndexEntry {
        IndexEntry {
            path: path.to_vec(),
            kind: IndexKind::File,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            size: 5,
            mtime: (1_764_633_723, 100),
            ctime: (1_764_633_724, 999_999_999),
            ino: 42,
            sha256: Some([7; 32]),
            holder: Some("app-2026-12-01-230100".into()),
            target: None,
        }
    }

    fn index(entries: &[IndexEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        header_line(&mut out, "app-2026-12-02-010203");
        for e in entries {
            write_line(&mut out, e);
        }
        end_line(&mut out, entries.len() as u64);
        out
    }

    #[test]
    fn lines_round_trip_with_hostile_names() {
        let mut link = file(b"app/a b\\c\n\x7f");
        link.kind = IndexKind::Symlink;
        link.sha256 = None;
        link.holder = None;
        link.target = Some(b"-".to_vec());
        let mut empty_target = link.clone();
        empty_target.path = b"app/z".to_vec();
        empty_target.target = Some(Vec::new());
        let mut changed = file(b"app/\xc3\xa9t\xc3\xa9");
        changed.ctime = (-1, 0);
        let entries = [file(b"app"), link, empty_target, changed];
        let text = index(&entries);
        let mut r = IndexReader::new(&text[..]).unwrap();
        assert_eq!(r.id, "app-2026-12-02-010203");
        for e in &entries {
            assert_eq!(r.next_entry().unwrap().as_ref(), Some(e));
        }
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn a_cut_short_reordered_or_padded_index_is_refused() {
        let entries = [file(b"app/a"), file(b"app/b")];
        let whole = index(&entries);
        let read_all = |text: &[u8]| -> Result<(), IndexError> {
            let mut r = IndexReader::new(text)?;
            while r.next_entry()?.is_some() {}
            Ok(())
        };
        assert!(read_all(&whole).is_ok());
        assert!(read_all(&whole[..whole.len() - 6]).is_err(), "no end line");
        let cut = whole.len() - "end 2\n".len() - 10;
        assert!(read_all(&whole[..cut]).is_err(), "a line cut");
        let mut padded = whole.clone();
        padded.extend_from_slice(b"f junk\n");
        assert!(read_all(&padded).is_err(), "data after the end");
        let swapped = index(&[file(b"app/b"), file(b"app/a")]);
        assert!(read_all(&swapped).is_err(), "out of order");
        let mut wrong_count = index(&entries);
        wrong_count.truncate(wrong_count.len() - 2);
        wrong_count.extend_from_slice(b"3\n");
        assert!(read_all(&wrong_count).is_err(), "end count");
    }

    #[test]
    fn a_compressed_index_reads_back_and_a_flipped_byte_is_refused() {
        let mut w = IndexWriter::new("app-1");
        w.push(&file(b"app/a"));
        w.push(&file(b"app/b"));
        let done = w.finish();
        let read_all = |bytes: Vec<u8>| -> Result<u64, IndexError> {
            let mut r = open_compressed(std::io::Cursor::new(bytes))?;
            let mut n = 0;
            while r.next_entry()?.is_some() {
                n += 1;
            }
            Ok(n)
        };
        assert_eq!(read_all(done.bytes.clone()).unwrap(), 2);
        let mut flipped = done.bytes.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x40;
        assert!(read_all(flipped).is_err());
        assert!(read_all(done.bytes[..done.bytes.len() - 3].to_vec()).is_err());
    }

    #[test]
    fn each_file_gives_the_files_in_order_with_their_paths_unescaped() {
        let mut w = IndexWriter::new("app-1");
        let mut dir = file(b"app");
        dir.kind = IndexKind::Dir;
        dir.sha256 = None;
        dir.holder = None;
        w.push(&dir);
        w.push(&file(b"app/a b"));
        w.push(&file(b"app/c"));
        let done = w.finish();
        let mut seen = Vec::new();
        each_file(&done, |sha, path| {
            seen.push((sha.to_string(), path.to_vec()));
            Ok(())
        })
        .unwrap();
        let sha = hex::encode([7u8; 32]);
        assert_eq!(
            seen,
            vec![(sha.clone(), b"app/a b".to_vec()), (sha, b"app/c".to_vec())]
        );
    }

    #[test]
    fn archive_order_puts_a_directory_before_its_siblings_with_longer_names() {
        assert_eq!(archive_cmp(b"a/x", b"a.txt"), Ordering::Less);
        assert_eq!(archive_cmp(b"a", b"a/x"), Ordering::Less);
        assert_eq!(archive_cmp(b"a/x", b"a/x"), Ordering::Equal);
        assert_eq!(archive_cmp(b"b", b"a/z"), Ordering::Greater);
    }

    #[test]
    fn the_cursor_finds_paths_in_order_and_skips_the_rest() {
        let entries = [
            file(b"app/a"),
            file(b"app/a/x"),
            file(b"app/a.txt"),
            file(b"app/c"),
        ];
        let text = index(&entries);
        let mut c = Cursor::new(IndexReader::new(&text[..]).unwrap(), vec![b"app".to_vec()]);
        assert!(c.find(b"app/a/x").unwrap().is_some());
        assert!(c.find(b"app/b").unwrap().is_none());
        assert_eq!(c.find(b"app/c").unwrap().map(|e| e.size), Some(5));
        assert!(c.find(b"app/d").unwrap().is_none());
        c.finish().unwrap();
    }

    #[test]
    fn unchanged_needs_every_field_and_a_change_time_the_backup_trusted() {
        let e = file(b"app/a");
        let now = Stamp {
            size: 5,
            mtime: e.mtime,
            ctime: e.ctime,
            ino: 42,
            mode: 0o644,
            uid: 1000,
            gid: 100,
        };
        assert!(e.unchanged(&now));
        assert!(!e.unchanged(&Stamp {
            ctime: (e.ctime.0 + 1, 0),
            ..now
        }));
        assert!(!e.unchanged(&Stamp { ino: 43, ..now }));
        let mut read_while_changing = e.clone();
        read_while_changing.ctime = (-1, 0);
        assert!(!read_while_changing.unchanged(&Stamp {
            ctime: (-1, 0),
            ..now
        }));
    }
}
