//! Streaming reads from S3: ranged GETs fetched ahead in parallel, handed
//! out in order.

use std::collections::VecDeque;
use std::io::{self, Read};

use bytes::Bytes;
use object_store::{GetOptions, ObjectStore};
use tokio::task::JoinHandle;

use super::s3::Remote;
use super::{Key, StoreError};

type Fetch = JoinHandle<Result<Bytes, object_store::Error>>;

/// A reader over one object. Up to `ranges_in_flight` ranges of
/// `range_size` bytes are being fetched at any time; each must come back
/// whole, from the same version of the object (`If-Match` its ETag), or the
/// read fails: a reader never returns a short or mixed object as if it
/// were complete.
pub(crate) struct S3Reader {
    remote: Remote,
    key: Key,
    size: u64,
    etag: Option<String>,
    /// Where the next range to request starts.
    next: u64,
    /// Bytes handed out so far.
    done: u64,
    /// Requested ranges, in order: their length and the task fetching them.
    ahead: VecDeque<(u64, Fetch)>,
    current: Bytes,
}

impl S3Reader {
    pub(crate) fn new(remote: Remote, key: Key, size: u64, etag: Option<String>) -> S3Reader {
        let mut reader = S3Reader {
            remote,
            key,
            size,
            etag,
            next: 0,
            done: 0,
            ahead: VecDeque::new(),
            current: Bytes::new(),
        };
        reader.fill();
        reader
    }

    /// Starts fetching ranges until enough are in flight or none is left.
    fn fill(&mut self) {
        let t = &self.remote.transfer;
        while self.ahead.len() < t.ranges_in_flight && self.next < self.size {
            let len = (t.range_size as u64).min(self.size - self.next);
            let options = GetOptions {
                range: Some((self.next..self.next + len).into()),
                if_match: self.etag.clone(),
                ..GetOptions::default()
            };
            let s3 = self.remote.s3.clone();
            let path = self.remote.path(&self.key);
            let task = self
                .remote
                .rt
                .spawn(async move { s3.get_opts(&path, options).await?.bytes().await });
            self.ahead.push_back((len, task));
            self.next += len;
        }
    }

    /// Waits for the next range.
    fn take_next(&mut self) -> Result<Option<Bytes>, StoreError> {
        let Some((len, task)) = self.ahead.pop_front() else {
            return Ok(None);
        };
        let got = self.remote.block_on(task).map_err(|e| StoreError::Remote {
            store: self.remote.place.store.clone(),
            op: "get",
            detail: e.to_string(),
        })?;
        let short = |got: u64| StoreError::Short {
            store: self.remote.place.store.clone(),
            key: self.key.to_string(),
            expected: self.size,
            got,
        };
        let bytes = match got {
            Ok(bytes) => bytes,
            // The object changed under us (another ETag) or shrank.
            Err(object_store::Error::Precondition { .. }) => return Err(short(self.done)),
            Err(e) => return Err(self.remote.place.object_store("get", Some(&self.key), &e)),
        };
        if bytes.len() as u64 != len {
            return Err(short(self.done + bytes.len() as u64));
        }
        self.fill();
        Ok(Some(bytes))
    }
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.take_next().map_err(StoreError::into_io)? {
                Some(bytes) => self.current = bytes,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.done += n as u64;
        Ok(n)
    }
}

impl Drop for S3Reader {
    fn drop(&mut self) {
        for (_, task) in &self.ahead {
            task.abort();
        }
    }
}
