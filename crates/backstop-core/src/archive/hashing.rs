//! Every file's SHA-256, computed on a thread of its own while the walk
//! goes on.
//!
//! The walk parses tar, hands each member to its visitor (which compares
//! it with the live tree or writes it out) and hashes each file's content
//! for the checksums member at the end. The hash was most of the walk's
//! thread, the one every restore waits on; here the walk only copies the
//! bytes into a batch, and a second thread hashes them. The digests come
//! back in file order, and are all checked where they always were: against
//! the checksums member, before the walk returns. Nothing is checked later
//! than before, so a restore still commits only what matched.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use sha2::{Digest, Sha256};

/// A batch is sent once it holds this many bytes...
const BATCH_BYTES: usize = 512 << 10;
/// ... or this many file ends (a tree of tiny files).
const BATCH_FILES: usize = 4096;
/// Batches queued for the thread; with the one it hashes, the one being
/// filled and the spent ones kept for reuse, a few megabytes in all.
const IN_FLIGHT: usize = 3;

/// The bytes of consecutive files, with where each file ends in them. The
/// bytes after the last end belong to a file not ended yet.
struct Batch {
    data: Vec<u8>,
    ends: Vec<usize>,
}

/// The hashing thread and the batch being filled for it.
pub(crate) struct FileHashes {
    batch: Batch,
    tx: Option<Sender<Batch>>,
    spent: Receiver<Batch>,
    digests: Receiver<[u8; 32]>,
    thread: Option<JoinHandle<()>>,
}

impl FileHashes {
    /// Starts the hashing thread.
    pub(crate) fn start() -> FileHashes {
        let (tx, rx) = bounded::<Batch>(IN_FLIGHT);
        let (spent_tx, spent) = bounded::<Batch>(IN_FLIGHT);
        let (digest_tx, digests) = unbounded();
        let thread = std::thread::Builder::new()
            .name("backstop-hash".into())
            .spawn(move || hash_batches(&rx, &spent_tx, &digest_tx))
            .expect("spawning a thread");
        FileHashes {
            batch: Batch {
                data: Vec::with_capacity(BATCH_BYTES),
                ends: Vec::new(),
            },
            tx: Some(tx),
            spent,
            digests,
            thread: Some(thread),
        }
    }

    /// Adds bytes of the current file.
    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = BATCH_BYTES.saturating_sub(self.batch.data.len()).max(1);
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.batch.data.extend_from_slice(now);
            bytes = later;
            if self.batch.data.len() >= BATCH_BYTES {
                self.send();
            }
        }
    }

    /// Ends the current file: its digest is the next one [`Self::ready`]
    /// or [`Self::finish`] gives.
    pub(crate) fn end_file(&mut self) {
        self.batch.ends.push(self.batch.data.len());
        if self.batch.ends.len() >= BATCH_FILES {
            self.send();
        }
    }

    /// The digests computed so far, in file order.
    pub(crate) fn ready(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.digests.try_iter()
    }

    /// Sends what is left and waits for the thread: the remaining digests,
    /// in file order. Nothing may be hashed after.
    pub(crate) fn finish(&mut self) -> Vec<[u8; 32]> {
        self.send();
        self.stop();
        self.digests.try_iter().collect()
    }

    fn send(&mut self) {
        let fresh = match self.spent.try_recv() {
            Ok(mut b) => {
                b.data.clear();
                b.ends.clear();
                b
            }
            Err(_) => Batch {
                data: Vec::with_capacity(BATCH_BYTES),
                ends: Vec::new(),
            },
        };
        let full = std::mem::replace(&mut self.batch, fresh);
        if let Some(tx) = &self.tx {
            // The thread only ends once `tx` is dropped.
            let _ = tx.send(full);
        }
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // A panic on that thread would be a bug of sha2's: say so.
            thread.join().expect("the hashing thread panicked");
        }
    }
}

impl Drop for FileHashes {
    fn drop(&mut self) {
        // A walk that failed: the thread ends at its next batch.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: hashes each batch's files, sending one digest a file end.
fn hash_batches(rx: &Receiver<Batch>, spent: &Sender<Batch>, digests: &Sender<[u8; 32]>) {
    let mut hasher = Sha256::new();
    for batch in rx {
        let mut start = 0;
        for &end in &batch.ends {
            hasher.update(&batch.data[start..end]);
            let _ = digests.send(hasher.finalize_reset().into());
            start = end;
        }
        hasher.update(&batch.data[start..]);
        let _ = spent.try_send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn digests_come_back_in_order_across_batch_boundaries() {
        let files: Vec<Vec<u8>> = (0..10_000usize)
            .map(|i| {
                let len = match i % 7 {
                    0 => 0,
                    1 => BATCH_BYTES + 17,
                    _ => i % 1000,
                };
                (0..len).map(|j| (i * 31 + j) as u8).collect()
            })
            .collect();
        let mut hashes = FileHashes::start();
        let mut got = Vec::new();
        for f in &files {
            for part in f.chunks(300_000) {
                hashes.update(part);
            }
            hashes.end_file();
            got.extend(hashes.ready());
        }
        got.extend(hashes.finish());
        let want: Vec<[u8; 32]> = files.iter().map(|f| sha(f)).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "a digest differs or is out of order");
    }

    #[test]
    fn dropped_mid_file_the_thread_ends() {
        let mut hashes = FileHashes::start();
        hashes.update(&vec![7u8; 3 * BATCH_BYTES]);
        drop(hashes);
    }
}
