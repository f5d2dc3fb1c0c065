//! The archive writer: turns a [`Scan`] into a format-1 archive.
//!
//! ```text
//!  reader threads ──(per-entry channels, in scan order)──▶ tar writer
//!   open, read, hash                                       headers, data
//!                                                              │ 4 MiB blocks
//!                                                              ▼
//!  sink ◀──(results, in block order)── compressor threads ◀────┘
//!   SHA-256 of the archive, write, early write-back
//! ```
//!
//! Readers work ahead of the tar writer by a bounded number of bytes, so
//! memory stays flat however large the tree; each entry's content arrives in
//! order through its own small channel. Blocks are compressed independently
//! and handed to the sink in order through one-shot channels, which bounds
//! the number of blocks in flight. The archive's SHA-256 is computed by the
//! sink as it writes: the archive is never read back.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use sha2::{Digest, Sha256};

use crate::archive::compress::{BLOCK_SIZE, BlockCompressor};
use crate::archive::format::{
    CHECKSUMS_NAME, CompressionSpec, FORMAT, MANIFEST_NAME, Manifest, Problem, TRAILER_NAME,
    Trailer, checksum_line,
};
use crate::archive::frames::{self, Frame, Layout};
use crate::archive::index::{
    Compressed, INDEX_NAME, IndexEntry, IndexKind, IndexWriter, Previous, each_file,
};
use crate::archive::read_entry::{EntryMeta, MetaKind, Msg, Names, read_entry};
use crate::archive::tarfmt::{self, EntryHeader, HeaderKind};
use crate::encryption::Recipients;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil::WriteBack;
use crate::progress::{Cancel, Phase, Progress};
use crate::source::scan::{Dirs, EntryRef, NodeKind, Scan};

/// How far (in bytes of file content) readers may run ahead of the tar writer.
const READ_AHEAD_BYTES: u64 = 32 << 20;
/// How many batches readers may run ahead, for trees of tiny files.
const READ_AHEAD_BATCHES: usize = 64;
/// A batch holds consecutive entries up to this much content…
const BATCH_BYTES: u64 = 1 << 20;
/// …and at most this many entries. Batching keeps channel traffic and thread
/// wake-ups per batch instead of per entry, which matters for trees of
/// millions of small files.
const BATCH_ENTRIES: usize = 512;
/// Messages buffered for a large file; its reader waits for the writer beyond.
const LARGE_FILE_QUEUE: usize = 4;
/// Reader threads. Reading is mostly waiting for the disk or copying from the
/// page cache, so a few more threads than cores keep the disk busy.
const READERS: usize = 4;

/// Where the compressed archive goes.
pub enum Target<'a> {
    /// A file: written with early write-back.
    File(&'a std::fs::File),
    /// A stream such as stdout.
    Stream(Box<dyn Write + Send + 'a>),
}

/// What the writer produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes of the compressed archive.
    pub size: u64,
    /// SHA-256 of the compressed archive, lower-case hex.
    pub sha256: String,
    /// The trailer as written into the archive.
    pub trailer: Trailer,
    /// The index as written into the archive, compressed: the cache the
    /// next incremental backup reads.
    pub index: Compressed,
    /// The SHA-256 of the frame table that ends the archive (a zstd
    /// archive that is not encrypted), which the catalog keeps.
    pub frames_sha256: Option<String>,
}

/// Writes the archive for `scan` described by `manifest` to `target`,
/// encrypted to `recipients` when there are any (one age stream around the
/// compressed archive; the size and SHA-256 returned are the ciphertext's).
///
/// # Errors
///
/// Fails on any error writing the output (a full disk, a closed pipe), on a
/// codec error, or when `cancel` is set. Problems with single source files
/// are not errors: they are recorded in the trailer.
pub fn write_archive(
    (scan, previous): (&Scan, Option<Previous>),
    manifest: &Manifest,
    target: Target<'_>,
    spec: CompressionSpec,
    recipients: Option<&Recipients>,
    (progress, cancel): (&dyn Progress, &Cancel),
) -> Result<Written> {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let failure = &Failure::default();
    // A frame table ends a zstd archive that is not encrypted (age's
    // stream moves every frame); the tar writer hands over the layout.
    let table = (spec.codec == crate::archive::Codec::Zstd && recipients.is_none())
        .then(|| Mutex::new(None::<Layout>));
    let id = manifest.id.as_str();

    std::thread::scope(|s| {
        // The sink: receives compressed blocks in order.
        let queue = threads + 2;
        let (ordered_tx, ordered_rx) = bounded::<Receiver<BlockResult>>(queue);
        let slot = table.as_ref().map(|t| (id, t));
        let sink = s.spawn(move || sink_loop(ordered_rx, (target, slot), recipients, failure));

        // The compressors.
        let (job_tx, job_rx) = bounded::<BlockJob>(queue);
        let (spare_tx, spare_rx) = bounded::<Vec<u8>>(2 * queue + threads);
        let compress = spec.codec != crate::archive::Codec::None;
        let hash_frames = table.is_some();
        if compress {
            for _ in 0..threads {
                let job_rx = job_rx.clone();
                let spare_tx = spare_tx.clone();
                s.spawn(move || compress_loop(spec, job_rx, spare_tx, hash_frames));
            }
        }
        drop(job_rx);

        // The readers.
        let (read_tx, read_rx) = unbounded::<ReadJob>();
        for _ in 0..READERS {
            let read_rx = read_rx.clone();
            s.spawn(move || reader_loop(scan, read_rx, cancel));
        }
        drop(read_rx);

        let blocks = BlockOut {
            buf: Vec::with_capacity(BLOCK_SIZE),
            offset: 0,
            ordered_tx,
            job_tx: compress.then_some(job_tx),
            spare_rx,
        };
        drop(spare_tx);
        let mut tar = TarWriter {
            scan,
            blocks,
            read_tx,
            progress,
            cancel,
            index: Some(IndexWriter::new(&manifest.id)),
            previous,
            written_files: vec![false; scan.len()],
            gone_dirs: vec![false; scan.len()],
            // Problems the scan met are the first the trailer records.
            trailer: Trailer {
                format: FORMAT,
                id: manifest.id.clone(),
                unreadable: scan.unreadable.clone(),
                skipped: scan.skipped.clone(),
                ..Trailer::default()
            },
            header: Vec::with_capacity(2048),
            path: Vec::with_capacity(256),
            layout: Layout::default(),
        };
        progress.start(Phase::Backup, scan.totals.bytes);
        let result = tar.run(manifest, started);
        // Closing the block channels lets the compressors and the sink finish.
        let TarWriter {
            blocks,
            read_tx,
            layout,
            ..
        } = tar;
        drop(read_tx);
        // Before the blocks end: the sink writes the table once they have.
        if let (Some(slot), Ok(_)) = (&table, &result) {
            *slot.lock().expect("layout lock") = Some(layout);
        }
        drop(blocks);
        let sink_result = sink.join().expect("sink thread panicked");
        progress.finish();
        // The first error recorded is the cause; later ones are its echoes.
        if let Some(err) = failure.take() {
            return Err(err);
        }
        let (trailer, index) = result?;
        let (size, sha256, frames_sha256) = sink_result?;
        Ok(Written {
            size,
            sha256,
            trailer,
            index,
            frames_sha256,
        })
    })
}

/// A compressed block: its bytes, the bytes of tar stream it holds, and
/// (when the archive gets a frame table) the BLAKE3 hash of its bytes.
struct Block {
    bytes: Vec<u8>,
    raw: u64,
    hash: Option<blake3::Hash>,
}

/// A compressed block, or the codec's error.
type BlockResult = std::io::Result<Block>;
/// A block to compress and where its result goes.
type BlockJob = (Vec<u8>, Sender<BlockResult>);

/// The first fatal error of any thread of the pipeline.
#[derive(Default)]
struct Failure(Mutex<Option<Error>>);

impl Failure {
    fn set(&self, err: Error) {
        let mut slot = self.0.lock().expect("failure lock");
        if slot.is_none() {
            *slot = Some(err);
        }
    }

    fn take(&self) -> Option<Error> {
        self.0.lock().expect("failure lock").take()
    }
}

/// Consecutive entries for one reader to read, in order.
struct ReadJob {
    start: u32,
    end: u32,
    tx: Sender<Vec<Msg>>,
}

fn reader_loop(scan: &Scan, jobs: Receiver<ReadJob>, cancel: &Cancel) {
    let mut names = Names::default();
    let mut dirs = Dirs::default();
    for job in jobs {
        // Whole entries are gathered and sent together at the end of the
        // batch, so the writer wakes once per batch, not once per entry.
        // The chunks of a streamed file go one by one, with what came before.
        let mut pending: Vec<Msg> = Vec::new();
        let tx = &job.tx;
        let mut open = true;
        for index in job.start..job.end {
            if cancel.is_cancelled() {
                return;
            }
            let e = EntryRef(index);
            if scan.unchanged(e) {
                continue;
            }
            read_located(scan, e, scan.kind(e), &mut dirs, &mut names, &mut |m| {
                let streamed = matches!(m, Msg::Meta(_) | Msg::Data(_) | Msg::End { .. });
                pending.push(m);
                if streamed {
                    open = !cancel.is_cancelled() && tx.send(std::mem::take(&mut pending)).is_ok();
                }
                open
            });
            if !open {
                // The writer stopped listening: this batch is not needed.
                break;
            }
        }
        if open && !pending.is_empty() {
            let _ = tx.send(pending);
        }
    }
}

/// Reads entry `e` through the handles of the directories above it. An
/// entry whose directory is gone, or was replaced by a symlink or a file
/// since the scan, is no longer in the source: it vanished.
fn read_located(
    scan: &Scan,
    e: EntryRef,
    expected: NodeKind,
    dirs: &mut Dirs,
    names: &mut Names,
    send: &mut dyn FnMut(Msg) -> bool,
) {
    match scan.locate(e, dirs) {
        Ok((dir, name)) => read_entry(dir, name, expected, names, send),
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
            ) =>
        {
            send(Msg::Vanished);
        }
        Err(err) => {
            send(Msg::Unreadable(format!(
                "a directory above it cannot be opened: {err}"
            )));
        }
    }
}

/// The receiving end of a batch: messages in the order they were sent.
struct BatchRx {
    rx: Receiver<Vec<Msg>>,
    buf: VecDeque<Msg>,
}

impl BatchRx {
    /// The next message. A reader only stops sending early when the
    /// operation is being cancelled.
    fn next(&mut self, cancel: &Cancel) -> Result<Msg> {
        loop {
            if let Some(m) = self.buf.pop_front() {
                return Ok(m);
            }
            let more = self
                .rx
                .recv()
                .map_err(|_| cancel.check().err().unwrap_or(Error::Interrupted))?;
            self.buf.extend(more);
        }
    }
}

fn compress_loop(
    spec: CompressionSpec,
    jobs: Receiver<BlockJob>,
    spare: Sender<Vec<u8>>,
    hash: bool,
) {
    let mut compressor = match BlockCompressor::new(spec) {
        Ok(c) => Some(c),
        Err(e) => {
            // Report the error through every job this thread would have done.
            for (_, done) in &jobs {
                let _ = done.send(Err(std::io::Error::other(e.to_string())));
            }
            None
        }
    };
    let Some(compressor) = compressor.as_mut() else {
        return;
    };
    for (input, done) in jobs {
        let mut out = Vec::new();
        let raw = input.len() as u64;
        // Hashed here, on every core, not in the sink.
        let result = compressor.compress(&input, &mut out).map(|()| Block {
            hash: hash.then(|| blake3::hash(&out)),
            bytes: out,
            raw,
        });
        let _ = spare.try_send(input);
        if done.send(result).is_err() {
            return;
        }
    }
}

/// The frame table's slot: the backup's id, and the layout the tar writer
/// leaves there before the blocks end.
type TableSlot<'a> = Option<(&'a str, &'a Mutex<Option<Layout>>)>;

fn sink_loop(
    ordered: Receiver<Receiver<BlockResult>>,
    (target, table): (Target<'_>, TableSlot<'_>),
    recipients: Option<&Recipients>,
    failure: &Failure,
) -> Result<(u64, String, Option<String>)> {
    let sealed = Sealed::new(target);
    let wrote = |e: std::io::Error| Error::io("writing", "archive", e);
    let result = match recipients {
        // One age stream around the whole archive: what is hashed and
        // counted is the ciphertext, as the sidecar must be.
        Some(r) => (|| {
            let mut age = r.wrap(sealed).map_err(wrote)?;
            pump(&ordered, &mut age)?;
            let (size, sha) = age.finish().map_err(wrote)?.done()?;
            Ok((size, sha, None))
        })(),
        None => (|| {
            let mut plain = sealed;
            let frames = pump(&ordered, &mut plain)?;
            let mut frames_sha = None;
            if let Some((id, slot)) = table {
                // No layout: the tar stream failed; nothing is kept anyway.
                let layout = slot.lock().expect("layout lock").take();
                if let Some((bytes, sha)) = layout.and_then(|l| frames::encode(id, l, frames)) {
                    plain.write_all(&bytes).map_err(wrote)?;
                    frames_sha = Some(sha);
                }
            }
            let (size, sha) = plain.done()?;
            Ok((size, sha, frames_sha))
        })(),
    };
    if let Err(e) = result {
        failure.set(e);
        return Err(Error::Interrupted);
    }
    result
}

/// Writes the compressed blocks to `out` in order as they come; gives the
/// frames they were.
fn pump(ordered: &Receiver<Receiver<BlockResult>>, out: &mut dyn Write) -> Result<Vec<Frame>> {
    let mut frames = Vec::new();
    for pending in ordered {
        let block = pending
            .recv()
            .map_err(|_| {
                Error::io(
                    "compressing",
                    "archive",
                    std::io::Error::other("compressor stopped"),
                )
            })?
            .map_err(|e| Error::io("compressing", "archive", e))?;
        out.write_all(&block.bytes)
            .map_err(|e| Error::io("writing", "archive", e))?;
        if let Some(hash) = block.hash {
            frames.push(Frame {
                size: block.bytes.len() as u64,
                raw: block.raw,
                blake3: hash.to_hex().to_string(),
            });
        }
        failpoint::hit("backup.sink-write")?;
    }
    Ok(frames)
}

/// The bytes that leave the pipeline, as they reach the target: hashed,
/// counted, and (for a file) written back early.
struct Sealed<'a> {
    out: Box<dyn Write + Send + 'a>,
    writeback: Option<WriteBack>,
    hasher: Sha256,
    written: u64,
}

impl<'a> Sealed<'a> {
    fn new(target: Target<'a>) -> Sealed<'a> {
        let (out, writeback): (Box<dyn Write + Send + 'a>, _) = match target {
            Target::File(f) => (Box::new(f), Some(WriteBack::new(f))),
            Target::Stream(w) => (w, None),
        };
        Sealed {
            out,
            writeback,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Flushes the target; the size and SHA-256 of what reached it.
    fn done(mut self) -> Result<(u64, String)> {
        self.out
            .flush()
            .map_err(|e| Error::io("writing", "archive", e))?;
        Ok((self.written, hex::encode(self.hasher.finalize())))
    }
}

impl Write for Sealed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        if let Some(wb) = self.writeback.as_mut() {
            wb.advance(self.written);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The tar stream cut into blocks and sent off for compression.
struct BlockOut {
    buf: Vec<u8>,
    /// Bytes of tar stream written so far.
    offset: u64,
    ordered_tx: Sender<Receiver<BlockResult>>,
    /// `None` for uncompressed archives: blocks go straight to the sink.
    job_tx: Option<Sender<BlockJob>>,
    /// Input buffers the compressors are done with, for reuse.
    spare_rx: Receiver<Vec<u8>>,
}

impl BlockOut {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.offset += data.len() as u64;
        while !data.is_empty() {
            let room = BLOCK_SIZE - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == BLOCK_SIZE {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.spare_rx.try_recv().map_or_else(
            |_| Vec::with_capacity(BLOCK_SIZE),
            |mut v| {
                v.clear();
                v
            },
        );
        let block = std::mem::replace(&mut self.buf, next);
        let (done_tx, done_rx) = bounded(1);
        // The sink's slot is taken first, so blocks reach it in order.
        self.ordered_tx
            .send(done_rx)
            .map_err(|_| Error::Interrupted)?;
        match &self.job_tx {
            Some(jobs) => jobs
                .send((block, done_tx))
                .map_err(|_| Error::Interrupted)?,
            None => {
                let raw = block.len() as u64;
                let _ = done_tx.send(Ok(Block {
                    bytes: block,
                    raw,
                    hash: None,
                }));
            }
        }
        Ok(())
    }
}

struct TarWriter<'a> {
    scan: &'a Scan,
    blocks: BlockOut,
    read_tx: Sender<ReadJob>,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
    /// The index, a line an entry; taken when it is written out.
    index: Option<IndexWriter>,
    /// The parent's index, for the lines of unchanged files.
    previous: Option<Previous>,
    /// Which entries were written as files: hard links may only point there.
    written_files: Vec<bool>,
    /// Directories of the scan that are not in the archive as directories
    /// (gone, or replaced by a symlink or a file while the backup ran):
    /// what was below them is left out as vanished, so no entry ever sits
    /// below a non-directory.
    gone_dirs: Vec<bool>,
    trailer: Trailer,
    header: Vec<u8>,
    path: Vec<u8>,
    /// Where the manifest, each source and the tail are in the stream.
    layout: Layout,
}

impl TarWriter<'_> {
    fn run(&mut self, manifest: &Manifest, started: Instant) -> Result<(Trailer, Compressed)> {
        let manifest_json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        self.member(
            MANIFEST_NAME.as_bytes(),
            &manifest_json,
            manifest_mtime(manifest),
        )?;
        self.layout.manifest_end = self.blocks.offset;
        failpoint::hit("backup.after-manifest")?;

        let n = self.scan.len();
        // Batches handed to readers, in order: (first entry, end, content bytes, messages).
        let mut queue: VecDeque<(u32, u32, u64, BatchRx)> = VecDeque::new();
        let mut next = 0usize;
        let mut ahead_bytes = 0u64;
        while next < n || !queue.is_empty() {
            // Keep the readers supplied up to the read-ahead limits.
            while next < n
                && (queue.is_empty()
                    || (ahead_bytes < READ_AHEAD_BYTES && queue.len() < READ_AHEAD_BATCHES))
            {
                let start = next;
                let mut bytes = 0u64;
                while next < n && next - start < BATCH_ENTRIES {
                    let e = EntryRef(next as u32);
                    let size = if self.scan.unchanged(e) {
                        0
                    } else {
                        self.scan.size(e)
                    };
                    if next > start && (size > BATCH_BYTES || bytes + size > BATCH_BYTES) {
                        break;
                    }
                    bytes += size;
                    next += 1;
                }
                let (tx, rx) = bounded(LARGE_FILE_QUEUE);
                let rx = BatchRx {
                    rx,
                    buf: VecDeque::new(),
                };
                let job = ReadJob {
                    start: start as u32,
                    end: next as u32,
                    tx,
                };
                self.read_tx.send(job).map_err(|_| Error::Interrupted)?;
                ahead_bytes += bytes;
                queue.push_back((start as u32, next as u32, bytes, rx));
            }
            let (start, end, bytes, mut rx) = queue.pop_front().expect("queue is not empty");
            for index in start..end {
                self.cancel.check()?;
                self.entry(EntryRef(index), &mut rx)?;
            }
            ahead_bytes -= bytes;
        }
        failpoint::hit("backup.after-payload")?;
        self.layout.payload_end(self.blocks.offset);

        let index = self
            .index
            .take()
            .expect("the index is written once")
            .finish();
        self.checksums_member(manifest, &index)?;
        self.index_member(manifest, &index)?;
        self.trailer.duration_ms = started.elapsed().as_millis() as u64;
        let trailer_json = serde_json::to_vec_pretty(&self.trailer).expect("trailer serialises");
        self.member(
            TRAILER_NAME.as_bytes(),
            &trailer_json,
            manifest_mtime(manifest),
        )?;
        self.blocks.write(&tarfmt::END_OF_ARCHIVE)?;
        self.blocks.flush()?;
        Ok((self.trailer.clone(), index))
    }

    /// Writes one of the archive's own members (manifest, checksums, trailer).
    fn member(&mut self, name: &[u8], data: &[u8], mtime: i64) -> Result<()> {
        self.own_header(name, data.len() as u64, mtime)?;
        self.blocks.write(data)?;
        self.blocks
            .write(&[0; tarfmt::BLOCK][..tarfmt::padding(data.len() as u64)])
    }

    /// Writes the header of one of the archive's own members.
    fn own_header(&mut self, name: &[u8], size: u64, mtime: i64) -> Result<()> {
        self.header.clear();
        tarfmt::write_header(
            &mut self.header,
            &EntryHeader {
                path: name,
                kind: HeaderKind::File { size },
                mode: 0o600,
                uid: 0,
                gid: 0,
                uname: None,
                gname: None,
                mtime,
                mtime_nsec: 0,
                xattrs: &[],
            },
        );
        self.blocks.write(&self.header)
    }

    /// Writes the index member, after the checksums: the text is
    /// decompressed from memory straight into the archive.
    fn index_member(&mut self, manifest: &Manifest, index: &Compressed) -> Result<()> {
        self.own_header(
            INDEX_NAME.as_bytes(),
            index.raw_len,
            manifest_mtime(manifest),
        )?;
        let mut dec = zstd::stream::read::Decoder::new(&index.bytes[..])
            .map_err(|e| Error::io("writing", INDEX_NAME, e))?;
        let mut chunk = vec![0u8; 256 << 10];
        loop {
            let n = std::io::Read::read(&mut dec, &mut chunk)
                .map_err(|e| Error::io("writing", INDEX_NAME, e))?;
            if n == 0 {
                break;
            }
            self.blocks.write(&chunk[..n])?;
        }
        self.blocks
            .write(&[0; tarfmt::BLOCK][..tarfmt::padding(index.raw_len)])
    }

    /// Writes the checksums member from the index: a line for every
    /// regular file of the tree, in order. Two passes: the size goes in the
    /// header first.
    fn checksums_member(&mut self, manifest: &Manifest, index: &Compressed) -> Result<()> {
        let internal = |e: std::io::Error| Error::io("writing", CHECKSUMS_NAME, e);
        let mut line = Vec::new();
        let mut size = 0u64;
        each_file(index, |sha, path| {
            line.clear();
            checksum_line(&mut line, sha, path);
            size += line.len() as u64;
            Ok(())
        })
        .map_err(internal)?;
        self.own_header(CHECKSUMS_NAME.as_bytes(), size, manifest_mtime(manifest))?;
        let mut chunk = Vec::with_capacity(64 << 10);
        let blocks = &mut self.blocks;
        let mut failed = None;
        each_file(index, |sha, path| {
            checksum_line(&mut chunk, sha, path);
            if chunk.len() >= 60 << 10 {
                if let Err(e) = blocks.write(&chunk) {
                    failed = Some(e);
                    return Err(std::io::Error::other("the archive cannot be written"));
                }
                chunk.clear();
            }
            Ok(())
        })
        .map_err(|e| failed.take().unwrap_or_else(|| internal(e)))?;
        self.blocks.write(&chunk)?;
        self.blocks
            .write(&[0; tarfmt::BLOCK][..tarfmt::padding(size)])
    }

    /// The current entry's path, for messages.
    fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Writes one payload entry from its reader's messages.
    fn entry(&mut self, e: EntryRef, rx: &mut BatchRx) -> Result<()> {
        self.scan.archive_path(e, &mut self.path);
        let source = self.path.split(|&b| b == b'/').next().unwrap_or_default();
        self.layout.entry(source, self.blocks.offset);
        if self
            .scan
            .parent(e)
            .is_some_and(|p| self.gone_dirs[p.0 as usize])
        {
            return self.left_out(e, rx);
        }
        if self.scan.unchanged(e) {
            return self.unchanged_file(e);
        }
        // Until it is written as a directory (in `whole`).
        self.gone_dirs[e.0 as usize] = self.scan.kind(e) == NodeKind::Dir;
        self.write_entry(e, rx)
    }

    /// An unchanged file of an incremental: not stored (its directory's
    /// dumpdir names it `N`); its index line and checksum are the
    /// parent's, naming the archive that holds it.
    fn unchanged_file(&mut self, e: EntryRef) -> Result<()> {
        let path = self.path.clone();
        let parent = self.previous.as_mut().and_then(|p| p.entry(&path)).cloned();
        let Some(entry) = parent.filter(|p| p.sha256.is_some()) else {
            return Err(Error::Refused {
                message: format!(
                    "the parent backup's index no longer describes {}, which the scan found \
                     unchanged: the index cache changed while the backup ran",
                    self.display()
                ),
                hint: Some("run the backup again, or with --full".into()),
            });
        };
        self.written_files[e.0 as usize] = true;
        self.index_push(&entry);
        self.progress.advance(self.scan.size(e));
        Ok(())
    }

    fn index_push(&mut self, entry: &IndexEntry) {
        if let Some(index) = self.index.as_mut() {
            index.push(entry);
        }
    }

    /// The index line of the entry being written.
    fn index_entry(&self, meta: &EntryMeta, sha256: Option<[u8; 32]>, changed: bool) -> IndexEntry {
        let (kind, size, target) = match &meta.kind {
            MetaKind::Dir => (IndexKind::Dir, 0, None),
            MetaKind::File { size, .. } => (IndexKind::File, *size, None),
            MetaKind::Symlink { target } => (IndexKind::Symlink, 0, Some(target.clone())),
            MetaKind::HardLink => (IndexKind::HardLink, 0, None),
        };
        IndexEntry {
            path: self.path.clone(),
            kind,
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            size,
            mtime: (meta.mtime, meta.mtime_nsec),
            ctime: if changed { (-1, 0) } else { meta.ctime },
            ino: meta.ino,
            holder: (kind == IndexKind::File).then(|| self.trailer.id.clone()),
            sha256: sha256.filter(|_| kind == IndexKind::File),
            target,
        }
    }

    /// Drops the messages about an entry below a directory that is not in
    /// the archive, and reports it as vanished.
    fn left_out(&mut self, e: EntryRef, rx: &mut BatchRx) -> Result<()> {
        if self.scan.kind(e) == NodeKind::Dir {
            self.gone_dirs[e.0 as usize] = true;
        }
        if self.scan.unchanged(e) {
            // Never read: no message to drop.
        } else if let Msg::Meta(_) = rx.next(self.cancel)? {
            while !matches!(rx.next(self.cancel)?, Msg::End { .. }) {}
        }
        self.trailer.vanished.push(self.display());
        self.progress.advance(self.scan.size(e));
        Ok(())
    }

    /// Writes the entry its reader described.
    fn write_entry(&mut self, e: EntryRef, rx: &mut BatchRx) -> Result<()> {
        match rx.next(self.cancel)? {
            Msg::Whole {
                meta,
                data,
                sha256,
                changed,
            } => self.whole(e, &meta, &data, sha256, changed),
            Msg::Meta(meta) => self.streamed_file(e, &meta, rx),
            Msg::Vanished => {
                self.trailer.vanished.push(self.display());
                self.progress.advance(self.scan.size(e));
                Ok(())
            }
            Msg::Unreadable(detail) => {
                let path = self.display();
                self.trailer.unreadable.push(Problem { path, detail });
                self.progress.advance(self.scan.size(e));
                Ok(())
            }
            other => unreachable!("reader sent {other:?} first"),
        }
    }

    /// Writes an entry that arrived in one message.
    fn whole(
        &mut self,
        e: EntryRef,
        meta: &EntryMeta,
        data: &[u8],
        sha256: [u8; 32],
        changed: Option<String>,
    ) -> Result<()> {
        match &meta.kind {
            MetaKind::HardLink => {
                let target = self.scan.link_target(e).expect("hard links have targets");
                if !self.written_files[target.0 as usize] {
                    // The first name vanished: this one carries the data instead.
                    return self.reread_as_file(e);
                }
                let mut target_path = Vec::new();
                self.scan.archive_path(target, &mut target_path);
                self.header_for(
                    meta,
                    HeaderKind::HardLink {
                        target: &target_path,
                    },
                );
                self.blocks.write(&self.header)?;
                let mut line = self.index_entry(meta, None, false);
                line.target = Some(target_path);
                self.index_push(&line);
            }
            MetaKind::File { size, sparse: None } => {
                self.header_for(meta, HeaderKind::File { size: *size });
                self.blocks.write(&self.header)?;
                self.blocks.write(data)?;
                self.blocks
                    .write(&[0; tarfmt::BLOCK][..tarfmt::padding(*size)])?;
                self.file_done(e, *size);
                let line = self.index_entry(meta, Some(sha256), changed.is_some());
                self.index_push(&line);
            }
            MetaKind::File {
                sparse: Some(_), ..
            } => {
                unreachable!("sparse files are always streamed")
            }
            MetaKind::Dir => {
                let dumpdir = dumpdir(self.scan, e);
                self.header_for(
                    meta,
                    HeaderKind::Dir {
                        dumpdir: Some(&dumpdir),
                    },
                );
                self.blocks.write(&self.header)?;
                self.gone_dirs[e.0 as usize] = false;
                let line = self.index_entry(meta, None, false);
                self.index_push(&line);
            }
            MetaKind::Symlink { target } => {
                self.header_for(meta, HeaderKind::Symlink { target });
                self.blocks.write(&self.header)?;
                let line = self.index_entry(meta, None, false);
                self.index_push(&line);
            }
        }
        self.trailer.entries += 1;
        self.progress.advance(self.scan.size(e));
        if let Some(detail) = changed {
            let path = self.display();
            self.trailer.changed.push(Problem { path, detail });
        }
        Ok(())
    }

    /// Reads entry `e` as a file, outside the readers' queue: a hard link
    /// whose first name could not be archived.
    fn reread_as_file(&mut self, e: EntryRef) -> Result<()> {
        let (tx, rx) = bounded(LARGE_FILE_QUEUE);
        let scan = self.scan;
        let cancel = self.cancel.clone();
        std::thread::scope(|threads| {
            threads.spawn(move || {
                let mut dirs = Dirs::default();
                read_located(
                    scan,
                    e,
                    NodeKind::File,
                    &mut dirs,
                    &mut Names::default(),
                    &mut |m| !cancel.is_cancelled() && tx.send(vec![m]).is_ok(),
                )
            });
            let mut rx = BatchRx {
                rx,
                buf: VecDeque::new(),
            };
            // The receiver goes when the entry is written, so a reader still
            // sending stops.
            self.entry(e, &mut rx)
        })
    }

    /// Records a regular file as written.
    fn file_done(&mut self, e: EntryRef, size: u64) {
        self.written_files[e.0 as usize] = true;
        self.trailer.files += 1;
        self.trailer.bytes += size;
    }

    /// Writes a large or sparse file that arrives in chunks.
    fn streamed_file(&mut self, e: EntryRef, meta: &EntryMeta, rx: &mut BatchRx) -> Result<()> {
        let MetaKind::File { size, sparse } = &meta.kind else {
            unreachable!("only files are streamed")
        };
        let size = *size;
        let stored = match sparse {
            Some(map) => map.iter().map(|&(_, l)| l).sum(),
            None => size,
        };
        let kind = match sparse {
            Some(map) => HeaderKind::Sparse {
                real_size: size,
                map,
                stored,
            },
            None => HeaderKind::File { size },
        };
        self.header_for(meta, kind);
        self.blocks.write(&self.header)?;
        let mut got = 0u64;
        loop {
            match rx.next(self.cancel)? {
                Msg::Data(d) => {
                    got += d.len() as u64;
                    self.blocks.write(&d)?;
                    self.progress.advance(d.len() as u64);
                }
                Msg::End { sha256, changed } => {
                    debug_assert_eq!(got, stored);
                    self.blocks
                        .write(&[0; tarfmt::BLOCK][..tarfmt::padding(stored)])?;
                    self.file_done(e, size);
                    self.trailer.entries += 1;
                    let line = self.index_entry(meta, Some(sha256), changed.is_some());
                    self.index_push(&line);
                    if let Some(detail) = changed {
                        let path = self.display();
                        self.trailer.changed.push(Problem { path, detail });
                    }
                    // Holes and shrinkage still count as done for the progress bar.
                    self.progress.advance(self.scan.size(e).saturating_sub(got));
                    return Ok(());
                }
                other => unreachable!("reader sent {other:?} inside a file"),
            }
        }
    }

    /// Builds the header for the current entry into `self.header`.
    fn header_for(&mut self, meta: &EntryMeta, kind: HeaderKind<'_>) {
        self.header.clear();
        tarfmt::write_header(
            &mut self.header,
            &EntryHeader {
                path: &self.path,
                kind,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                uname: meta.uname.as_deref(),
                gname: meta.gname.as_deref(),
                mtime: meta.mtime,
                mtime_nsec: meta.mtime_nsec,
                xattrs: &meta.xattrs,
            },
        );
    }
}

/// The `GNU.dumpdir` record of directory `e`: every name the scan found in
/// it, `D` for a directory, `N` for a file an earlier archive of the chain
/// holds, and `Y` (stored in this archive) for the rest,
/// each ended by a NUL, and a NUL at the end. GNU tar's
/// `-x --listed-incremental=/dev/null` reads it to remove what a directory
/// no longer holds, which is what makes a chain of archives restorable by
/// hand, deletions included.
fn dumpdir(scan: &Scan, e: EntryRef) -> Vec<u8> {
    let mut out = Vec::new();
    for child in scan.children(e) {
        out.push(if scan.kind(child) == NodeKind::Dir {
            b'D'
        } else if scan.unchanged(child) {
            b'N'
        } else {
            b'Y'
        });
        out.extend_from_slice(scan.file_name(child));
        out.push(0);
    }
    out.push(0);
    out
}

/// The mtime given to the archive's own members: the backup's creation time.
fn manifest_mtime(manifest: &Manifest) -> i64 {
    manifest
        .created_at
        .parse::<jiff::Timestamp>()
        .map_or(0, |t| t.as_second())
}
