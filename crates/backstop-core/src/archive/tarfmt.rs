//! Encoding of tar headers: POSIX ustar headers with PAX extended records for
//! what ustar cannot hold (long or non-UTF-8 names, sub-second mtimes, large
//! ids and sizes, extended attributes), and GNU sparse headers for sparse
//! files, which GNU tar, bsdtar and the `tar` crate all read.

use tar::{EntryType, GnuExtSparseHeader, Header};

/// Tar's block size.
pub const BLOCK: usize = 512;

/// The largest value an octal numeric field of 8 bytes holds (uid, gid, mode).
const MAX_OCTAL_8: u64 = 0o7_777_777;
/// The largest value the 12-byte size field holds in octal.
const MAX_OCTAL_12: u64 = 0o77_777_777_777;

/// What kind of entry a header describes, with the fields specific to it.
#[derive(Debug, Clone)]
pub enum HeaderKind<'a> {
    File {
        size: u64,
    },
    /// A file stored as its data segments; `map` lists `(offset, length)`
    /// of each segment, and `stored` their total length.
    Sparse {
        real_size: u64,
        map: &'a [(u64, u64)],
        stored: u64,
    },
    /// A directory; `dumpdir` is its `GNU.dumpdir` record: the names it
    /// holds, each after a `Y` (stored here) or `D` (a directory) and
    /// before a NUL, and a NUL at the end (GNU tar's incremental format).
    Dir {
        dumpdir: Option<&'a [u8]>,
    },
    Symlink {
        target: &'a [u8],
    },
    HardLink {
        target: &'a [u8],
    },
}

/// Everything one header says about an entry.
#[derive(Debug, Clone)]
pub struct EntryHeader<'a> {
    /// The path inside the archive, without a trailing slash.
    pub path: &'a [u8],
    pub kind: HeaderKind<'a>,
    /// Permission bits, including set-uid, set-gid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Option<&'a str>,
    pub gname: Option<&'a str>,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Appends one PAX record (`"<len> <key>=<value>\n"`, where `len` counts the
/// whole record including its own digits).
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Whether `bytes` can stand in a ustar field of `max` bytes as is.
fn fits_ustar(bytes: &[u8], max: usize) -> bool {
    bytes.len() <= max && bytes.iter().all(|&b| (0x20..0x7f).contains(&b))
}

/// Copies `bytes` into a fixed header field, truncating.
fn set_field(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// The PAX mtime value: seconds, and the fraction without trailing zeros.
fn pax_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    // A negative time with a fraction is `-(|sec| - 1).(1e9 - nsec)`.
    let (sign, whole, frac) = if sec < 0 {
        ("-", (-(sec + 1)) as u64, 1_000_000_000 - nsec)
    } else {
        ("", sec as u64, nsec)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// Appends the header block(s) for `entry` to `out`: a PAX extended header
/// when needed, the ustar or GNU header, and GNU sparse extension blocks.
/// The entry's data (and its padding) is the caller's to write.
pub fn write_header(out: &mut Vec<u8>, entry: &EntryHeader<'_>) {
    let mut pax = Vec::new();
    let mut name = entry.path.to_vec();
    if matches!(entry.kind, HeaderKind::Dir { .. }) {
        name.push(b'/');
    }
    if !fits_ustar(&name, 100) {
        pax_record(&mut pax, b"path", &name);
        if std::str::from_utf8(&name).is_err() {
            pax_record(&mut pax, b"hdrcharset", b"BINARY");
        }
    }
    let link = match entry.kind {
        HeaderKind::Symlink { target } | HeaderKind::HardLink { target } => Some(target),
        _ => None,
    };
    if let Some(target) = link
        && !fits_ustar(target, 100)
    {
        pax_record(&mut pax, b"linkpath", target);
        if std::str::from_utf8(target).is_err() && !pax.windows(9).any(|w| w == b"hdrcharset") {
            pax_record(&mut pax, b"hdrcharset", b"BINARY");
        }
    }
    if entry.mtime_nsec != 0 || entry.mtime < 0 || entry.mtime as u64 > MAX_OCTAL_12 {
        pax_record(
            &mut pax,
            b"mtime",
            pax_time(entry.mtime, entry.mtime_nsec).as_bytes(),
        );
    }
    if entry.uid > MAX_OCTAL_8 {
        pax_record(&mut pax, b"uid", entry.uid.to_string().as_bytes());
    }
    if entry.gid > MAX_OCTAL_8 {
        pax_record(&mut pax, b"gid", entry.gid.to_string().as_bytes());
    }
    for (key, value) in [
        (b"uname".as_slice(), entry.uname),
        (b"gname".as_slice(), entry.gname),
    ] {
        if let Some(v) = value
            && !fits_ustar(v.as_bytes(), 32)
        {
            pax_record(&mut pax, key, v.as_bytes());
        }
    }
    let data_size = match entry.kind {
        HeaderKind::File { size } => size,
        HeaderKind::Sparse { stored, .. } => stored,
        _ => 0,
    };
    if data_size > MAX_OCTAL_12 {
        pax_record(&mut pax, b"size", data_size.to_string().as_bytes());
    }
    if let HeaderKind::Sparse { real_size, .. } = entry.kind
        && real_size > MAX_OCTAL_12
    {
        pax_record(
            &mut pax,
            b"GNU.sparse.realsize",
            real_size.to_string().as_bytes(),
        );
    }
    if let HeaderKind::Dir {
        dumpdir: Some(listing),
    } = entry.kind
    {
        pax_record(&mut pax, b"GNU.dumpdir", listing);
    }
    for (key, value) in entry.xattrs {
        let mut k = b"SCHILY.xattr.".to_vec();
        k.extend_from_slice(key);
        pax_record(&mut pax, &k, value);
    }

    if !pax.is_empty() {
        let mut xh = Header::new_ustar();
        let mut xname = b"PaxHeaders/".to_vec();
        let base = entry.path.rsplit(|&b| b == b'/').next().unwrap_or(b"");
        xname.extend(
            base.iter()
                .map(|&b| if (0x20..0x7f).contains(&b) { b } else { b'_' }),
        );
        set_field(&mut xh.as_old_mut().name, &xname);
        xh.set_mode(0o644);
        xh.set_uid(0);
        xh.set_gid(0);
        xh.set_mtime(entry.mtime.max(0) as u64);
        xh.set_size(pax.len() as u64);
        xh.set_entry_type(EntryType::XHeader);
        xh.set_cksum();
        out.extend_from_slice(xh.as_bytes());
        out.extend_from_slice(&pax);
        pad(out, pax.len() as u64);
    }

    let sparse = matches!(entry.kind, HeaderKind::Sparse { .. });
    let mut h = if sparse {
        Header::new_gnu()
    } else {
        Header::new_ustar()
    };
    set_field(&mut h.as_old_mut().name, &name);
    h.set_mode(entry.mode & 0o7777);
    h.set_uid(entry.uid.min(MAX_OCTAL_8));
    h.set_gid(entry.gid.min(MAX_OCTAL_8));
    h.set_mtime(entry.mtime.clamp(0, MAX_OCTAL_12 as i64) as u64);
    h.set_size(data_size);
    if let Some(u) = entry.uname.filter(|u| fits_ustar(u.as_bytes(), 32)) {
        let _ = h.set_username(u);
    }
    if let Some(g) = entry.gname.filter(|g| fits_ustar(g.as_bytes(), 32)) {
        let _ = h.set_groupname(g);
    }
    if let Some(target) = link {
        set_field(&mut h.as_old_mut().linkname, target);
    }
    h.set_entry_type(match entry.kind {
        HeaderKind::File { .. } => EntryType::Regular,
        HeaderKind::Sparse { .. } => EntryType::GNUSparse,
        HeaderKind::Dir { .. } => EntryType::Directory,
        HeaderKind::Symlink { .. } => EntryType::Symlink,
        HeaderKind::HardLink { .. } => EntryType::Link,
    });
    let mut ext_blocks = Vec::new();
    if let HeaderKind::Sparse { real_size, map, .. } = entry.kind {
        let gnu = h.as_gnu_mut().expect("a GNU header");
        gnu.set_real_size(real_size);
        for (slot, &(offset, len)) in gnu.sparse.iter_mut().zip(map) {
            slot.set_offset(offset);
            slot.set_length(len);
        }
        let first = gnu.sparse.len();
        gnu.set_is_extended(map.len() > first);
        let mut rest = map[first.min(map.len())..].chunks(21).peekable();
        while let Some(chunk) = rest.next() {
            let mut ext = GnuExtSparseHeader::new();
            for (slot, &(offset, len)) in ext.sparse.iter_mut().zip(chunk) {
                slot.set_offset(offset);
                slot.set_length(len);
            }
            ext.set_is_extended(rest.peek().is_some());
            ext_blocks.extend_from_slice(ext.as_bytes());
        }
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&ext_blocks);
}

/// The number of zero bytes that follow `len` bytes of data.
pub fn padding(len: u64) -> usize {
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// Appends the zero padding after `len` bytes of data.
pub fn pad(out: &mut Vec<u8>, len: u64) {
    out.resize(out.len() + padding(len), 0);
}

/// The end-of-archive marker: two zero blocks.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"x");
        assert_eq!(out, b"9 path=x\n");
        let mut out = Vec::new();
        let value = vec![b'a'; 95];
        pax_record(&mut out, b"path", &value);
        let len: usize = std::str::from_utf8(&out[..out.iter().position(|&b| b == b' ').unwrap()])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, out.len());
    }

    #[test]
    fn pax_time_keeps_the_fraction() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(1_700_000_000, 123_456_789), "1700000000.123456789");
        assert_eq!(pax_time(-1, 500_000_000), "-0.5");
    }
}
