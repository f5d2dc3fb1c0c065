//! Streaming writes to S3: a multipart upload fed part by part, completed
//! last and only if no object took the key meanwhile.
//!
//! Bytes collect in one part-sized buffer; a full buffer becomes a part,
//! uploaded on the store's runtime while the caller goes on writing. When
//! `parts_in_flight` parts are on their way, the next full buffer waits
//! for the oldest (backpressure), so memory stays under
//! `(parts_in_flight + 1) × part_size` (the part size doubles after every
//! 1,000 parts, so a large archive still fits in S3's 10,000). An object
//! smaller than one part is sent in a single conditional PUT instead.
//!
//! `object_store`'s own `WriteMultipart` cannot be used: its completion
//! always overwrites. The completion here is sent with
//! `If-None-Match: *`, which S3, R2 and MinIO honour; the check before the
//! first byte covers servers that ignore it.

use std::collections::VecDeque;
use std::io::{self, Write};

use md5::{Digest, Md5};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutPayload};
use tokio::task::JoinHandle;

use super::s3::Remote;
use super::s3_wire::complete_body;
use super::{Key, StoreError, StoreWriter};
use crate::error::Result;

/// S3's limit on the parts of one upload.
const MAX_PARTS: usize = 10_000;

/// Parts of one size before the part size doubles.
const PARTS_PER_SIZE: usize = 1_000;

type PartTask = JoinHandle<Result<PartId, object_store::Error>>;

/// A write to one key of an [`S3Store`](super::S3Store).
pub(crate) struct S3Writer {
    remote: Remote,
    key: Key,
    path: ObjectPath,
    buf: Vec<u8>,
    /// The multipart upload, once the first part is sent.
    upload: Option<String>,
    /// The ETags of the parts uploaded so far, in order.
    etags: Vec<String>,
    /// Parts on their way, in order.
    in_flight: VecDeque<PartTask>,
    /// Parts started.
    parts: usize,
    written: u64,
    /// The first error: the writer accepts nothing after it.
    failed: Option<StoreError>,
    /// Finished or aborted: nothing to clean up on drop.
    done: bool,
}

impl S3Writer {
    pub(crate) fn new(remote: Remote, key: Key) -> S3Writer {
        let path = remote.path(&key);
        S3Writer {
            remote,
            key,
            path,
            buf: Vec::new(),
            upload: None,
            etags: Vec::new(),
            in_flight: VecDeque::new(),
            parts: 0,
            written: 0,
            failed: None,
            done: false,
        }
    }

    /// The size of the part being filled: the configured size for the
    /// first 1,000 parts, doubled after every 1,000 more (up to S3's 5 GiB),
    /// so that small archives take little memory and a large one still fits
    /// in S3's 10,000 parts (8 MiB parts reach about 8 TB).
    fn part_size(&self) -> usize {
        part_size_after(self.remote.transfer.part_size, self.parts)
    }

    fn fail(&self, op: &'static str, e: &object_store::Error) -> StoreError {
        self.remote.place.object_store(op, Some(&self.key), e)
    }

    /// Sends the buffer as the next part, starting the upload first if
    /// this is the first part, and waits while too many are in flight.
    fn ship(&mut self) -> Result<(), StoreError> {
        if self.parts == MAX_PARTS {
            return Err(StoreError::TooLarge {
                key: self.key.to_string(),
                part_size: self.part_size(),
            });
        }
        let id = match &self.upload {
            Some(id) => id.clone(),
            None => {
                let started = self
                    .remote
                    .block_on(self.remote.s3.create_multipart(&self.path));
                let id = started.map_err(|e| self.fail("start upload", &e))?;
                self.upload = Some(id.clone());
                id
            }
        };
        let data = std::mem::take(&mut self.buf);
        let (s3, path, idx) = (self.remote.s3.clone(), self.path.clone(), self.parts);
        let task = self
            .remote
            .rt
            .spawn(async move { s3.put_part(&path, &id, idx, PutPayload::from(data)).await });
        self.in_flight.push_back(task);
        self.parts += 1;
        while self.in_flight.len() >= self.remote.transfer.parts_in_flight {
            self.wait_oldest()?;
        }
        Ok(())
    }

    /// Waits for the oldest part in flight and records its ETag.
    fn wait_oldest(&mut self) -> Result<(), StoreError> {
        let Some(task) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match self.remote.block_on(task) {
            Ok(Ok(part)) => {
                self.etags.push(part.content_id);
                Ok(())
            }
            Ok(Err(e)) => Err(self.fail("upload part", &e)),
            Err(e) => Err(StoreError::Remote {
                store: self.remote.place.store.clone(),
                op: "upload part",
                detail: e.to_string(),
            }),
        }
    }

    /// Everything `finish` does before the object is there.
    fn complete(&mut self) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.upload.is_none() {
            return self.put_whole();
        }
        if !self.buf.is_empty() {
            self.ship()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        self.complete_upload()
    }

    /// Sends an object smaller than one part in one conditional PUT.
    fn put_whole(&mut self) -> Result<(), StoreError> {
        let data = PutPayload::from(std::mem::take(&mut self.buf));
        let put = self
            .remote
            .s3
            .put_opts(&self.path, data, PutMode::Create.into());
        match self.remote.block_on(put) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail("put", &e)),
        }
    }

    /// Completes the upload, unless an object took the key meanwhile.
    fn complete_upload(&mut self) -> Result<(), StoreError> {
        let id = self.upload.clone().expect("an upload was started");
        let r = &self.remote;
        let url = r.wire.url(&r.full(self.key.as_str()), &[("uploadId", &id)]);
        let body = bytes::Bytes::from(complete_body(&self.etags));
        let sent = r
            .wire
            .send(http::Method::POST, &url, &[("If-None-Match", "*")], body);
        let Err(e) = r.block_on(sent) else {
            self.upload = None;
            return Ok(());
        };
        // A retried completion may find its own earlier attempt done: the
        // object is there (412) or the upload gone (NoSuchUpload). It is
        // ours if its ETag is the one these parts make.
        let maybe_ours =
            e.failure.status == Some(412) || e.failure.code.as_deref() == Some("NoSuchUpload");
        if e.retried && maybe_ours && self.is_ours() {
            self.upload = None;
            return Ok(());
        }
        Err(r.place.name("complete upload", Some(&self.key), e.failure))
    }

    /// Whether the object under the key is the one these parts make.
    fn is_ours(&self) -> bool {
        let expected = multipart_etag(&self.etags);
        match self.remote.head(&self.key) {
            Ok(Some((_, Some(etag)))) => Some(etag.trim_matches('"')) == expected.as_deref(),
            _ => false,
        }
    }

    /// Stops the parts in flight and aborts the upload.
    fn abort_upload(&mut self) -> Result<(), StoreError> {
        for task in &self.in_flight {
            task.abort();
        }
        for task in std::mem::take(&mut self.in_flight) {
            let _ = self.remote.block_on(task);
        }
        let Some(id) = self.upload.take() else {
            return Ok(());
        };
        match self
            .remote
            .block_on(self.remote.s3.abort_multipart(&self.path, &id))
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("abort upload", &e)),
        }
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into_io());
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.part_size());
        }
        let size = self.part_size();
        let n = data.len().min(size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == size
            && let Err(e) = self.ship()
        {
            self.failed = Some(e.clone());
            return Err(e.into_io());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StoreWriter for S3Writer {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        let result = self.complete();
        self.done = true;
        match result {
            Ok(()) => Ok(self.written),
            Err(e) => {
                // The first error is the one to report; an abort that fails
                // too leaves the upload for `cleanup_abandoned`.
                let _ = self.abort_upload();
                Err(e.into())
            }
        }
    }

    fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        self.abort_upload().map_err(Into::into)
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.abort_upload();
        }
    }
}

/// The size of part number `parts` (from 0) of an upload whose first
/// parts are `base` bytes.
fn part_size_after(base: usize, parts: usize) -> usize {
    let doublings = (parts / PARTS_PER_SIZE).min(20) as u32;
    base.saturating_mul(1 << doublings).min(5 << 30)
}

/// The ETag S3 gives an object made of parts with these ETags: the MD5 of
/// their MD5s, then `-` and the number of parts. `None` when a part's ETag
/// is not an MD5 (some servers use other ETags).
fn multipart_etag(etags: &[String]) -> Option<String> {
    let mut md5 = Md5::new();
    for etag in etags {
        let digest = hex::decode(etag.trim_matches('"'))
            .ok()
            .filter(|d| d.len() == 16)?;
        md5.update(&digest);
    }
    Some(format!("{}-{}", hex::encode(md5.finalize()), etags.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_ten_thousand_hold_terabytes() {
        let base = 8 << 20;
        assert_eq!(part_size_after(base, 0), base);
        assert_eq!(part_size_after(base, 999), base);
        assert_eq!(part_size_after(base, 1000), 2 * base);
        assert_eq!(part_size_after(base, 9999), 4 << 30);
        assert_eq!(part_size_after(1 << 30, 9999), 5 << 30);
        let total: u64 = (0..MAX_PARTS)
            .map(|p| part_size_after(base, p) as u64)
            .sum();
        assert!(total > 8_000_000_000_000, "{total}");
    }

    #[test]
    fn multipart_etags_are_the_md5_of_the_parts_md5s() {
        let a = format!("\"{}\"", hex::encode(Md5::digest(b"a")));
        let b = hex::encode(Md5::digest(b"b"));
        let mut both = Md5::digest(b"a").to_vec();
        both.extend(Md5::digest(b"b"));
        assert_eq!(
            multipart_etag(&[a, b]).unwrap(),
            format!("{}-2", hex::encode(Md5::digest(&both)))
        );
        assert_eq!(multipart_etag(&["not-md5".into()]), None);
    }
}
