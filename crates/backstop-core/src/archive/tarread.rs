//! A strict streaming reader for the tar subset backstop writes: ustar
//! headers, PAX extended headers (`x`), and GNU sparse files (`S`).
//!
//! Why not the `tar` crate's reader: it splits PAX records on newlines rather
//! than by their length prefix, so a file name containing a newline comes
//! back wrong; and a restore must see every entry exactly as stored (DESIGN
//! guarantee 3) rather than have absolute paths and `..` quietly skipped or
//! rewritten. Everything here is checked: header checksums, record lengths,
//! sparse maps, sizes. Anything else (GNU long names, global PAX headers,
//! devices, FIFOs) is reported as an unsupported type for the caller to refuse.

use std::io::{self, BufRead, Read};

use super::skip::Gaps;
use super::tarfmt::BLOCK;

/// PAX data larger than this is refused: backstop writes at most a few KiB
/// (paths, times, xattrs).
const MAX_PAX: u64 = 8 << 20;
/// Sparse maps longer than this are refused.
const MAX_SPARSE_SEGMENTS: usize = 1 << 20;

/// The type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    /// Any other type flag, such as devices or FIFOs, which backstop never
    /// writes.
    Other(u8),
}

/// One entry's header, with its PAX records applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path as stored, with a trailing `/` of directories removed.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Target of a symlink or hard link.
    pub link: Option<Vec<u8>>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Option<Vec<u8>>,
    pub gname: Option<Vec<u8>>,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// The logical size of a file (the apparent size of a sparse one).
    pub size: u64,
    /// For sparse files, the data segments `(offset, length)`.
    pub sparse: Option<Vec<(u64, u64)>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A directory's `GNU.dumpdir` record, as stored.
    pub dumpdir: Option<Vec<u8>>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses a numeric header field: octal text, or GNU base-256 when the high
/// bit of the first byte is set.
fn number(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err(bad("negative base-256 number in tar header"));
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad("number too large in tar header"))?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&text).map_err(|_| bad("invalid number in tar header"))?;
    u64::from_str_radix(s, 8).map_err(|_| bad(format!("invalid octal number `{s}` in tar header")))
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses PAX records: `"<len> <key>=<value>\n"`, each exactly `len` bytes,
/// so values may contain any byte, newlines included.
pub fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("malformed PAX record: no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed PAX record length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("malformed PAX record: wrong length"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("malformed PAX record: no `=`"))?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// A PAX time value: `seconds[.fraction]`, possibly negative.
fn pax_time(value: &[u8]) -> io::Result<(i64, u32)> {
    let s = std::str::from_utf8(value).map_err(|_| bad("invalid PAX time"))?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let whole: i64 = whole.parse().map_err(|_| bad("invalid PAX time"))?;
    let mut nsec: u32 = 0;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("invalid PAX time"));
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nsec = digits.parse().map_err(|_| bad("invalid PAX time"))?;
    }
    Ok(if neg && nsec > 0 {
        (-whole - 1, 1_000_000_000 - nsec)
    } else if neg {
        (-whole, 0)
    } else {
        (whole, nsec)
    })
}

fn pax_number(value: &[u8]) -> io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("invalid number in PAX record"))
}

/// Reads entries one after another from a tar stream.
pub struct TarReader<R> {
    inner: R,
    /// Bytes of the current entry's data not yet consumed, and its padding.
    remaining: u64,
    padding: u64,
    /// For sparse entries: segments left to deliver, and the logical offset.
    segments: Vec<(u64, u64)>,
    logical: u64,
    logical_size: u64,
    sparse: bool,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            segments: Vec::new(),
            logical: 0,
            logical_size: 0,
            sparse: false,
            finished: false,
        }
    }

    /// The underlying stream, positioned after the end-of-archive marker
    /// once [`TarReader::next_entry`] returned `None`.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut buf = [0u8; BLOCK];
        let mut n = 0;
        while n < BLOCK {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match n {
            0 => Ok(None),
            BLOCK => Ok(Some(buf)),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ends inside a block",
            )),
        }
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.inner.read_exact(&mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn read_exact_vec(&mut self, n: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n as usize];
        self.inner.read_exact(&mut v)?;
        Ok(v)
    }

    /// The next entry, or `None` at the end-of-archive marker. Data of the
    /// previous entry that was not read is skipped.
    ///
    /// # Errors
    ///
    /// Fails on I/O errors, a truncated stream, a bad header checksum, and
    /// malformed PAX records or sparse maps.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.finished {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        self.segments.clear();
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            let Some(block) = self.block()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar stream ends without its end-of-archive marker",
                ));
            };
            if block.iter().all(|&b| b == 0) {
                // End of archive: a second zero block must follow.
                match self.block()? {
                    Some(b) if b.iter().all(|&x| x == 0) => {
                        self.finished = true;
                        return Ok(None);
                    }
                    _ => return Err(bad("a lone zero block inside the tar stream")),
                }
            }
            check_checksum(&block)?;
            let typeflag = block[156];
            let size = number(&block[124..136])?;
            if typeflag == b'x' {
                if size > MAX_PAX {
                    return Err(bad("PAX header too large"));
                }
                let data = self.read_exact_vec(size)?;
                self.skip(pad(size))?;
                pax.extend(parse_pax(&data)?);
                continue;
            }
            return self.entry(&block, typeflag, size, pax).map(Some);
        }
    }

    fn entry(
        &mut self,
        block: &[u8; BLOCK],
        typeflag: u8,
        size: u64,
        pax: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> io::Result<Entry> {
        let ustar = &block[257..263] == b"ustar\0";
        let mut path = cstr(&block[0..100]).to_vec();
        if ustar && block[345] != 0 {
            let mut full = cstr(&block[345..500]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&path);
            path = full;
        }
        let kind = match typeflag {
            b'0' | 0 | b'7' | b'S' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::HardLink,
            other => Kind::Other(other),
        };
        let mut e = Entry {
            path,
            kind,
            link: match kind {
                Kind::Symlink | Kind::HardLink => Some(cstr(&block[157..257]).to_vec()),
                _ => None,
            },
            mode: number(&block[100..108])? as u32 & 0o7777,
            uid: number(&block[108..116])?,
            gid: number(&block[116..124])?,
            uname: Some(cstr(&block[265..297]).to_vec()).filter(|v| !v.is_empty()),
            gname: Some(cstr(&block[297..329]).to_vec()).filter(|v| !v.is_empty()),
            mtime: number(&block[136..148])? as i64,
            mtime_nsec: 0,
            size,
            sparse: None,
            xattrs: Vec::new(),
            dumpdir: None,
        };
        let mut stored = size;
        let mut real_size = None;
        for (key, value) in pax {
            match key.as_slice() {
                b"path" => e.path = value,
                b"linkpath" => e.link = Some(value),
                b"mtime" => (e.mtime, e.mtime_nsec) = pax_time(&value)?,
                b"uid" => e.uid = pax_number(&value)?,
                b"gid" => e.gid = pax_number(&value)?,
                b"uname" => e.uname = Some(value),
                b"gname" => e.gname = Some(value),
                b"size" => stored = pax_number(&value)?,
                b"GNU.sparse.realsize" => real_size = Some(pax_number(&value)?),
                b"GNU.dumpdir" => e.dumpdir = Some(value),
                k if k.starts_with(b"SCHILY.xattr.") => {
                    e.xattrs.push((k[b"SCHILY.xattr.".len()..].to_vec(), value));
                }
                // Other records (atime, ctime, hdrcharset, comments) carry
                // nothing backstop restores.
                _ => {}
            }
        }
        if e.path.len() > 1 && e.path.ends_with(b"/") {
            e.path.pop();
        }
        e.size = stored;
        if typeflag == b'S' {
            let map = self.sparse_map(block)?;
            let real = real_size.unwrap_or(number(&block[483..495])?);
            let total: u64 = map.iter().map(|&(_, l)| l).sum();
            if total != stored {
                return Err(bad("the sparse map does not add up to the stored size"));
            }
            let mut end = 0u64;
            for (i, &(off, len)) in map.iter().enumerate() {
                if off < end {
                    return Err(bad("sparse segments overlap or are out of order"));
                }
                if i + 1 < map.len() && len % BLOCK as u64 != 0 {
                    return Err(bad("a sparse segment is not a whole number of blocks"));
                }
                end = off
                    .checked_add(len)
                    .ok_or_else(|| bad("sparse segment overflows"))?;
            }
            if end > real {
                return Err(bad("sparse segments extend past the file's size"));
            }
            e.size = real;
            e.sparse = Some(map.clone());
            self.segments = map;
        }
        // Whatever data an entry carries is skipped unless read, so a
        // directory or link with a size cannot desynchronise the stream.
        self.remaining = stored;
        self.sparse = e.sparse.is_some();
        self.padding = pad(stored);
        self.logical = 0;
        self.logical_size = e.size;
        Ok(e)
    }

    fn sparse_map(&mut self, block: &[u8; BLOCK]) -> io::Result<Vec<(u64, u64)>> {
        let mut map = Vec::new();
        let mut push = |chunk: &[u8]| -> io::Result<()> {
            let (off, len) = (number(&chunk[..12])?, number(&chunk[12..24])?);
            if chunk.iter().all(|&b| b == 0) {
                return Ok(());
            }
            if map.len() >= MAX_SPARSE_SEGMENTS {
                return Err(bad("sparse map too long"));
            }
            map.push((off, len));
            Ok(())
        };
        for i in 0..4 {
            push(&block[386 + i * 24..386 + (i + 1) * 24])?;
        }
        let mut extended = block[482] != 0;
        while extended {
            let ext = self
                .block()?
                .ok_or_else(|| bad("the sparse map is truncated"))?;
            for i in 0..21 {
                push(&ext[i * 24..(i + 1) * 24])?;
            }
            extended = ext[504] != 0;
        }
        Ok(map)
    }

    /// Reads the current entry's content into `buf`, returning 0 at its end.
    /// A sparse file reads as its full logical content, holes as zeros.
    ///
    /// # Errors
    ///
    /// Fails on I/O errors and a stream that ends inside the data.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.sparse {
            // A plain file: the stored bytes are the content.
            let want = (buf.len() as u64).min(self.remaining) as usize;
            if want == 0 {
                return Ok(0);
            }
            let n = self.inner.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar stream ends inside a file",
                ));
            }
            self.remaining -= n as u64;
            self.logical += n as u64;
            return Ok(n);
        }
        // Sparse: zeros up to the next segment, then its data.
        let (next_off, next_len) = self
            .segments
            .first()
            .copied()
            .unwrap_or((self.logical_size, 0));
        if self.logical < next_off {
            let n = ((next_off - self.logical).min(buf.len() as u64)) as usize;
            buf[..n].fill(0);
            self.logical += n as u64;
            return Ok(n);
        }
        if self.segments.is_empty() {
            return Ok(0);
        }
        let seg_left = next_off + next_len - self.logical;
        if seg_left == 0 {
            self.segments.remove(0);
            return self.read_data(buf);
        }
        let want = seg_left.min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ends inside a file",
            ));
        }
        self.remaining -= n as u64;
        self.logical += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> TarReader<R> {
    /// The next bytes of the current file's data as the stream's own buffer
    /// holds them, lent rather than copied: empty at the end of the data.
    /// [`TarReader::consume_data`] takes them. Plain files only: a sparse
    /// file's holes are in no buffer.
    ///
    /// # Errors
    ///
    /// Fails on a sparse file, I/O errors and a stream that ends inside
    /// the data.
    pub fn peek_data(&mut self) -> io::Result<&[u8]> {
        if self.sparse {
            return Err(io::Error::other("a sparse file's data is read, not lent"));
        }
        let remaining = self.remaining;
        if remaining == 0 {
            return Ok(&[]);
        }
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ends inside a file",
            ));
        }
        let n = (buf.len() as u64).min(remaining) as usize;
        Ok(&buf[..n])
    }

    /// Takes the first `n` bytes [`TarReader::peek_data`] lent (never more
    /// than the data has left).
    pub fn consume_data(&mut self, n: usize) {
        let n = (n as u64).min(self.remaining);
        self.inner.consume(n as usize);
        self.remaining -= n;
        self.logical += n;
    }
}

impl<R: BufRead + Gaps> TarReader<R> {
    /// The bytes of the current plain file's data at the cursor that the
    /// decoder passed over ([`crate::archive::skip`]): 0 when none.
    ///
    /// # Errors
    ///
    /// Fails as reading the stream does.
    pub fn data_gap(&mut self) -> io::Result<u64> {
        if self.sparse || self.remaining == 0 {
            return Ok(0);
        }
        Ok(self.inner.gap()?.min(self.remaining))
    }

    /// Moves past `n` bytes of the gap [`TarReader::data_gap`] gave.
    pub fn pass_data_gap(&mut self, n: u64) {
        let n = n.min(self.remaining);
        self.inner.pass_gap(n);
        self.remaining -= n;
        self.logical += n;
    }

    /// Asks that the frames wholly inside the rest of the current plain
    /// file's data, not decoded yet, be passed over.
    pub fn ask_data_gaps(&mut self) {
        if !self.sparse {
            self.inner.ask_gaps(self.remaining);
        }
    }

    /// Fills the gap at the cursor, if any, with its bytes read again.
    ///
    /// # Errors
    ///
    /// Fails when they cannot be.
    pub fn fill_data_gap(&mut self) -> io::Result<()> {
        if self.sparse || self.remaining == 0 {
            return Ok(());
        }
        self.inner.fill_gap()
    }
}

fn pad(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

fn check_checksum(block: &[u8; BLOCK]) -> io::Result<()> {
    let stored = number(&block[148..156])?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored != unsigned {
        return Err(bad("a tar header's checksum does not match"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tarfmt::{self, EntryHeader, HeaderKind};

    fn header(path: &[u8], kind: HeaderKind<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        tarfmt::write_header(
            &mut out,
            &EntryHeader {
                path,
                kind,
                mode: 0o640,
                uid: 3_000_000,
                gid: 7,
                uname: Some("someone-with-a-very-long-user-name-x"),
                gname: Some("g"),
                mtime: 1_700_000_000,
                mtime_nsec: 120_000_000,
                xattrs,
            },
        );
        out
    }

    fn read_all(r: &mut TarReader<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = r.read_data(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let long: Vec<u8> = [b"dir/".as_slice(), &[b'x'; 150], b"/new\nline \\ \xff"].concat();
        let xattrs = vec![(b"user.a".to_vec(), b"\x00\n=".to_vec())];
        let mut stream = header(&long, HeaderKind::File { size: 5 }, &xattrs);
        stream.extend_from_slice(b"hello");
        tarfmt::pad(&mut stream, 5);
        stream.extend(header(b"d", HeaderKind::Dir { dumpdir: None }, &[]));
        stream.extend(header(b"l", HeaderKind::Symlink { target: &long }, &[]));
        let map = [(4096u64, 512u64), (10_000, 0)];
        stream.extend(header(
            b"s",
            HeaderKind::Sparse {
                real_size: 10_000,
                map: &map,
                stored: 512,
            },
            &[],
        ));
        stream.extend(std::iter::repeat_n(7u8, 512));
        stream.extend_from_slice(&tarfmt::END_OF_ARCHIVE);

        let mut r = TarReader::new(&stream[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.path, long);
        assert_eq!(
            (e.kind, e.size, e.mode, e.uid, e.gid),
            (Kind::File, 5, 0o640, 3_000_000, 7)
        );
        assert_eq!((e.mtime, e.mtime_nsec), (1_700_000_000, 120_000_000));
        assert_eq!(
            e.uname.as_deref(),
            Some(b"someone-with-a-very-long-user-name-x".as_slice())
        );
        assert_eq!(e.xattrs, xattrs);
        assert_eq!(read_all(&mut r), b"hello");
        let d = r.next_entry().unwrap().unwrap();
        assert_eq!((d.path.as_slice(), d.kind), (b"d".as_slice(), Kind::Dir));
        let l = r.next_entry().unwrap().unwrap();
        assert_eq!(l.link.as_deref(), Some(long.as_slice()));
        let s = r.next_entry().unwrap().unwrap();
        assert_eq!((s.kind, s.size), (Kind::File, 10_000));
        let data = read_all(&mut r);
        assert_eq!(data.len(), 10_000);
        assert!(data[..4096].iter().all(|&b| b == 0));
        assert!(data[4096..4608].iter().all(|&b| b == 7));
        assert!(data[4608..].iter().all(|&b| b == 0));
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn unread_data_is_skipped() {
        let mut stream = header(b"a", HeaderKind::File { size: 700 }, &[]);
        stream.extend(std::iter::repeat_n(1u8, 700));
        tarfmt::pad(&mut stream, 700);
        stream.extend(header(b"b", HeaderKind::Dir { dumpdir: None }, &[]));
        stream.extend_from_slice(&tarfmt::END_OF_ARCHIVE);
        let mut r = TarReader::new(&stream[..]);
        r.next_entry().unwrap().unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().path, b"b");
    }

    #[test]
    fn lent_data_is_the_files_and_ends_with_it() {
        let mut stream = header(b"a", HeaderKind::File { size: 700 }, &[]);
        stream.extend((0..700u32).map(|i| i as u8));
        tarfmt::pad(&mut stream, 700);
        stream.extend(header(b"b", HeaderKind::File { size: 3 }, &[]));
        stream.extend_from_slice(b"xyz");
        tarfmt::pad(&mut stream, 3);
        stream.extend_from_slice(&tarfmt::END_OF_ARCHIVE);
        // A buffer smaller than the data, so that it is lent in parts.
        let mut r = TarReader::new(io::BufReader::with_capacity(300, &stream[..]));
        r.next_entry().unwrap().unwrap();
        let mut got = Vec::new();
        loop {
            let lent = r.peek_data().unwrap();
            if lent.is_empty() {
                break;
            }
            // Taken in two steps: what is not consumed is lent again.
            let n = lent.len().div_ceil(2);
            got.extend_from_slice(&lent[..n]);
            r.consume_data(n);
        }
        assert_eq!(got, (0..700u32).map(|i| i as u8).collect::<Vec<_>>());
        let b = r.next_entry().unwrap().unwrap();
        assert_eq!(b.path, b"b");
        assert_eq!(r.peek_data().unwrap(), b"xyz");
        // Not consumed: skipped by the next entry.
        assert!(r.next_entry().unwrap().is_none());
        // Cut inside the data: an error, not an early end.
        let headers = header(b"a", HeaderKind::File { size: 700 }, &[]).len();
        let mut r = TarReader::new(&stream[..headers + 100]);
        r.next_entry().unwrap().unwrap();
        assert_eq!(r.peek_data().unwrap().len(), 100);
        r.consume_data(100);
        assert!(r.peek_data().is_err());
    }

    #[test]
    fn damaged_headers_and_truncation_are_errors() {
        let mut stream = header(b"a", HeaderKind::File { size: 3 }, &[]);
        stream.extend_from_slice(b"abc");
        tarfmt::pad(&mut stream, 3);
        stream.extend_from_slice(&tarfmt::END_OF_ARCHIVE);
        let mut flipped = stream.clone();
        flipped[10] ^= 1;
        assert!(TarReader::new(&flipped[..]).next_entry().is_err());
        let truncated = &stream[..stream.len() - 1024];
        let mut r = TarReader::new(truncated);
        r.next_entry().unwrap();
        assert!(r.next_entry().is_err(), "no end-of-archive marker");
        // Headers, then 100 of the data block's 512 bytes.
        let cut = stream.len() - 1024 - 512 + 100;
        let mut r = TarReader::new(&stream[..cut]);
        r.next_entry().unwrap();
        assert!(r.next_entry().is_err(), "data cut short");
    }

    #[test]
    fn pax_lengths_are_exact() {
        assert_eq!(
            parse_pax(b"9 path=x\n").unwrap(),
            vec![(b"path".to_vec(), b"x".to_vec())]
        );
        assert!(parse_pax(b"8 path=x\n").is_err());
        assert!(parse_pax(b"11 path=x\n").is_err());
        assert!(parse_pax(b"99999 path=x\n").is_err());
        let with_newline = b"14 path=a\nb\nc\n";
        assert_eq!(parse_pax(with_newline).unwrap()[0].1, b"a\nb\nc");
    }

    #[test]
    fn pax_times_parse_fractions_and_negatives() {
        assert_eq!(pax_time(b"5.5").unwrap(), (5, 500_000_000));
        assert_eq!(pax_time(b"-0.5").unwrap(), (-1, 500_000_000));
        assert_eq!(
            pax_time(b"1700000000.123456789").unwrap(),
            (1_700_000_000, 123_456_789)
        );
        assert!(pax_time(b"1.2x").is_err());
    }
}
