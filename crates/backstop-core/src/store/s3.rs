//! A store in an S3-compatible bucket, through `object_store` on a small
//! tokio runtime that the store owns.
//!
//! Only the portable subset of S3 is used: put (with `If-None-Match: *`),
//! multipart upload, ranged get, head, list v2, list of multipart uploads,
//! abort and delete. No object lock, versioning, tagging or server-side
//! checksums: R2, MinIO, Ceph and Garage disagree about them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential, S3ConditionalPut};
use object_store::client::{HttpConnector, ReqwestConnector};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, RetryConfig,
    StaticCredentialProvider,
};
use tokio::runtime::Runtime;

use super::s3_classify::{Failure, Place};
use super::s3_read::S3Reader;
use super::s3_wire::{UploadsPage, Wire};
use super::s3_write::S3Writer;
use super::{Credentials, Key, ObjectInfo, Pending, Store, StoreError, StoreWriter};
use crate::error::{Error, Result};

/// The smallest part S3 accepts (all but the last part of an upload).
const MIN_PART: usize = 5 << 20;
/// The largest part S3 accepts.
const MAX_PART: usize = 5 << 30;

/// Where a bucket is and how to reach it: what a store's config table
/// holds. Credentials are not part of it (see [`Credentials`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Keys are stored under `prefix/` (nothing when empty).
    pub prefix: String,
    /// The server's URL (`https://s3.example.com`, `http://127.0.0.1:9000`);
    /// AWS when `None`.
    pub endpoint: Option<String>,
    /// The signing region; `AWS_REGION`, `AWS_DEFAULT_REGION`, then
    /// `us-east-1` when `None`.
    pub region: Option<String>,
    /// Address the bucket as a host name (`bucket.s3.example.com`) rather
    /// than a path (`s3.example.com/bucket`, the default, which every
    /// S3-compatible server understands).
    pub virtual_hosted: bool,
    /// Allow a plain-HTTP endpoint (a loopback test server).
    pub allow_http: bool,
    /// Sizes, parallelism, retries and timeouts.
    pub transfer: Transfer,
}

impl S3Config {
    /// The bucket `bucket` with keys under `prefix`, everything else at
    /// its default.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
            virtual_hosted: false,
            allow_http: false,
            transfer: Transfer::default(),
        }
    }

    /// The store as messages name it.
    pub fn describe(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            prefix => format!("s3://{}/{prefix}", self.bucket),
        }
    }
}

/// How an [`S3Store`] moves data. Memory is bounded by
/// `(parts_in_flight + 1) × part_size` for a writer and
/// `ranges_in_flight × range_size` for a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The size of the first 1,000 parts of a multipart upload (5 MiB to
    /// 5 GiB; doubled after every 1,000 more); an object smaller than one
    /// part is sent in one request. An object may have at most 10,000
    /// parts.
    pub part_size: usize,
    /// Parts uploaded at once; a writer waits when this many are in flight.
    pub parts_in_flight: usize,
    /// The size of each ranged GET of a reader.
    pub range_size: usize,
    /// Ranges a reader fetches ahead at once.
    pub ranges_in_flight: usize,
    /// Keys asked for per list request (at most 1000).
    pub list_page: usize,
    /// Retries of a failed request (5xx, throttling, dropped connections).
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// How long one request may take, body included.
    pub request_timeout: Duration,
}

impl Default for Transfer {
    fn default() -> Transfer {
        Transfer {
            part_size: 8 << 20,
            parts_in_flight: 3,
            range_size: 8 << 20,
            ranges_in_flight: 3,
            list_page: 1000,
            max_retries: 8,
            retry_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
        }
    }
}

impl Transfer {
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        let bad = |message: &str| {
            Err(StoreError::InvalidConfig {
                message: message.to_string(),
            })
        };
        if !(MIN_PART..=MAX_PART).contains(&self.part_size) {
            return bad("the part size must be between 5 MiB and 5 GiB");
        }
        if self.parts_in_flight == 0 || self.ranges_in_flight == 0 || self.range_size == 0 {
            return bad("parts and ranges in flight, and the range size, must be at least 1");
        }
        if !(1..=1000).contains(&self.list_page) {
            return bad("the list page must hold 1 to 1000 keys");
        }
        Ok(())
    }
}

/// What a store, its writers and its readers share: the runtime, the
/// client, and the names for messages.
#[derive(Clone)]
pub(crate) struct Remote {
    pub rt: Arc<Runtime>,
    pub s3: AmazonS3,
    pub wire: Wire,
    pub place: Place,
    pub prefix: String,
    pub transfer: Transfer,
}

impl Remote {
    /// The full key of `key` in the bucket.
    pub(crate) fn full(&self, key: &str) -> String {
        match self.prefix.as_str() {
            "" => key.to_string(),
            prefix => format!("{prefix}/{key}"),
        }
    }

    pub(crate) fn path(&self, key: &Key) -> ObjectPath {
        ObjectPath::from(self.full(key.as_str()))
    }

    /// The key a full key in the bucket is, if it is below the prefix and
    /// a key at all.
    fn key_of(&self, full: &str) -> Option<Key> {
        let rel = match self.prefix.as_str() {
            "" => full,
            prefix => full.strip_prefix(prefix)?.strip_prefix('/')?,
        };
        Key::new(rel).ok()
    }

    /// Runs `f` to completion on the store's runtime.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The typed error of an `object_store` failure.
    pub(crate) fn fail(
        &self,
        op: &'static str,
        key: Option<&Key>,
        e: object_store::Error,
    ) -> Error {
        self.place.object_store(op, key, &e).into()
    }

    /// The size and ETag of `key`, or `None` when there is no such object.
    pub(crate) fn head(&self, key: &Key) -> Result<Option<(u64, Option<String>)>> {
        match self.block_on(self.s3.head(&self.path(key))) {
            Ok(meta) => Ok(Some((meta.size, meta.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("head", Some(key), e)),
        }
    }

    pub(crate) fn exists(&self, key: &Key) -> Error {
        StoreError::AlreadyExists {
            store: self.place.store.clone(),
            key: key.to_string(),
        }
        .into()
    }
}

/// A bucket (or a prefix in one) on an S3-compatible server.
///
/// The store owns a tokio runtime with two worker threads: parts upload
/// and ranges download on them while the caller's thread goes on
/// producing or consuming bytes.
pub struct S3Store {
    remote: Remote,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.remote.place.store)
            .field("endpoint", &self.remote.place.endpoint)
            .finish()
    }
}

impl S3Store {
    /// Connects to the bucket `config` names with `credentials`, and checks
    /// with one list request that the bucket is there and the credentials,
    /// the clock and the endpoint are right.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidConfig`] for settings that cannot work;
    /// [`StoreError::BadCredentials`], [`StoreError::NoSuchBucket`],
    /// [`StoreError::ClockSkew`], [`StoreError::AccessDenied`] or
    /// [`StoreError::Unreachable`] when the check fails.
    pub fn connect(config: &S3Config, credentials: &Credentials) -> Result<S3Store> {
        let store = S3Store::build(config, credentials)?;
        store.check()?;
        Ok(store)
    }

    fn build(config: &S3Config, credentials: &Credentials) -> Result<S3Store> {
        config.transfer.check()?;
        install_tls_provider();
        let region = region(config);
        let base = bucket_endpoint(config, &region)?;
        let invalid = |e: object_store::Error| StoreError::InvalidConfig {
            message: e.to_string(),
        };
        let options = client_options(config);
        let credential = Arc::new(AwsCredential {
            key_id: credentials.key_id.clone(),
            secret_key: credentials.secret.clone(),
            token: credentials.token.clone(),
        });
        let t = &config.transfer;
        let s3 = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&region)
            // The bucket's own URL, as computed here, so that these requests
            // and the raw ones (`Wire`) go to exactly the same place.
            .with_endpoint(&base)
            .with_virtual_hosted_style_request(true)
            .with_allow_http(config.allow_http)
            .with_credentials(Arc::new(StaticCredentialProvider::new(AwsCredential {
                key_id: credentials.key_id.clone(),
                secret_key: credentials.secret.clone(),
                token: credentials.token.clone(),
            })))
            .with_client_options(options.clone())
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: t.max_retries,
                retry_timeout: t.retry_timeout,
            })
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_disable_tagging(true)
            .build()
            .map_err(invalid)?;
        let client = ReqwestConnector::default()
            .connect(&options)
            .map_err(invalid)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backstop-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 runtime for", config.describe(), e))?;
        let wire = Wire {
            client,
            credential,
            region,
            base: base.clone(),
            max_retries: t.max_retries,
            retry_timeout: t.retry_timeout,
        };
        let place = Place {
            store: config.describe(),
            endpoint: base,
            bucket: config.bucket.clone(),
        };
        Ok(S3Store {
            remote: Remote {
                rt: Arc::new(rt),
                s3,
                wire,
                place,
                prefix: config.prefix.trim_matches('/').to_string(),
                transfer: config.transfer.clone(),
            },
        })
    }

    /// One list request of at most one key.
    fn check(&self) -> Result<()> {
        let prefix = self.list_prefix(None);
        let opts = PaginatedListOptions {
            max_keys: Some(1),
            ..PaginatedListOptions::default()
        };
        let r = &self.remote;
        r.block_on(r.s3.list_paginated(prefix.as_deref(), opts))
            .map(|_| ())
            .map_err(|e| r.fail("list", None, e))
    }

    /// The string prefix of the full keys at or below `prefix`.
    fn list_prefix(&self, prefix: Option<&Key>) -> Option<String> {
        match (prefix, self.remote.prefix.as_str()) {
            (Some(key), _) => Some(self.remote.full(key.as_str())),
            (None, "") => None,
            (None, p) => Some(format!("{p}/")),
        }
    }

    /// One page of multipart uploads below `prefix`, from the markers.
    fn uploads_page(&self, prefix: &str, markers: &(String, String)) -> Result<UploadsPage> {
        let r = &self.remote;
        let mut query = vec![("uploads", ""), ("prefix", prefix)];
        if !markers.0.is_empty() {
            query.push(("key-marker", &markers.0));
            query.push(("upload-id-marker", &markers.1));
        }
        let url = r.wire.url("", &query);
        let body = r
            .block_on(
                r.wire
                    .send(http::Method::GET, &url, &[], bytes::Bytes::new()),
            )
            .map_err(|e| Error::from(r.place.name("list uploads", None, e.failure)))?;
        UploadsPage::parse(&body).map_err(|detail| {
            StoreError::Remote {
                store: r.place.store.clone(),
                op: "list uploads",
                detail,
            }
            .into()
        })
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.remote.place.store.clone()
    }

    fn create(&self, key: &Key) -> Result<Box<dyn StoreWriter>> {
        // The conditional put or completion refuses an existing object in
        // the end; this check refuses it before any data is sent, and on
        // servers that ignore `If-None-Match`.
        if self.remote.head(key)?.is_some() {
            return Err(self.remote.exists(key));
        }
        Ok(Box::new(S3Writer::new(self.remote.clone(), key.clone())))
    }

    fn open(&self, key: &Key) -> Result<Box<dyn std::io::Read + Send>> {
        let (size, etag) = self.remote.head(key)?.ok_or_else(|| {
            Error::from(StoreError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            })
        })?;
        Ok(Box::new(S3Reader::new(
            self.remote.clone(),
            key.clone(),
            size,
            etag,
        )))
    }

    fn read_range(&self, key: &Key, start: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let r = &self.remote;
        let opts = GetOptions {
            range: Some((start..start + len).into()),
            ..GetOptions::default()
        };
        let path = r.path(key);
        let got = r.block_on(async { r.s3.get_opts(&path, opts).await?.bytes().await });
        let short = |got: u64| StoreError::Short {
            store: self.describe(),
            key: key.to_string(),
            expected: len,
            got,
        };
        match got {
            Ok(bytes) if bytes.len() as u64 == len => Ok(bytes.to_vec()),
            Ok(bytes) => Err(short(bytes.len() as u64).into()),
            Err(e) => {
                // A range that starts at or past the end: 416 InvalidRange.
                let failure = Failure::of(&e);
                if failure.status == Some(416) || failure.code.as_deref() == Some("InvalidRange") {
                    return Err(short(0).into());
                }
                Err(r.place.name("get", Some(key), failure).into())
            }
        }
    }

    fn head(&self, key: &Key) -> Result<Option<u64>> {
        Ok(self.remote.head(key)?.map(|(size, _)| size))
    }

    fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>> {
        let r = &self.remote;
        let string_prefix = self.list_prefix(prefix);
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let opts = PaginatedListOptions {
                max_keys: Some(r.transfer.list_page),
                page_token: token.take(),
                ..PaginatedListOptions::default()
            };
            let page = r
                .block_on(r.s3.list_paginated(string_prefix.as_deref(), opts))
                .map_err(|e| r.fail("list", None, e))?;
            for meta in page.result.objects {
                let Some(key) = r.key_of(meta.location.as_ref()) else {
                    continue;
                };
                if prefix.is_none_or(|p| key.is_within(p)) {
                    found.push(ObjectInfo {
                        key,
                        size: meta.size,
                    });
                }
            }
            match page.page_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn delete(&self, key: &Key) -> Result<()> {
        let r = &self.remote;
        match r.block_on(r.s3.delete(&r.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(r.fail("delete", Some(key), e)),
        }
    }

    fn pending(&self, prefix: Option<&Key>) -> Result<Vec<Pending>> {
        let r = &self.remote;
        let string_prefix = self.list_prefix(prefix).unwrap_or_default();
        let mut markers = (String::new(), String::new());
        let mut found = Vec::new();
        loop {
            let page = self.uploads_page(&string_prefix, &markers)?;
            for upload in page.upload {
                let Some(key) = r.key_of(&upload.key) else {
                    continue;
                };
                if prefix.is_none_or(|p| key.is_within(p)) {
                    found.push(Pending {
                        key,
                        id: upload.upload_id,
                    });
                }
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(u))
                    if (k.as_str(), u.as_str()) != (&markers.0, &markers.1) =>
                {
                    markers = (k, u)
                }
                _ => break,
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.id.cmp(&b.id)));
        Ok(found)
    }

    fn cleanup_abandoned(&self, prefix: Option<&Key>) -> Result<usize> {
        let r = &self.remote;
        let pending = self.pending(prefix)?;
        let mut first_error = None;
        for p in &pending {
            match r.block_on(r.s3.abort_multipart(&r.path(&p.key), &p.id)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(r.fail("abort upload", Some(&p.key), e));
                }
            }
        }
        first_error.map_or(Ok(pending.len()), Err)
    }
}

/// Makes ring the process's TLS crypto provider, unless one is installed
/// already. reqwest is built without a provider of its own (its default,
/// aws-lc, is a long C build) and panics when it builds a client and
/// finds none, even for a plain-HTTP endpoint, so this runs before the
/// first client is built.
fn install_tls_provider() {
    // An error means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The region to sign for.
fn region(config: &S3Config) -> String {
    let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    config
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into())
}

/// The bucket's URL: its endpoint with the bucket as a path component or
/// (virtual-hosted) as the first label of the host.
fn bucket_endpoint(config: &S3Config, region: &str) -> Result<String, StoreError> {
    let bucket = &config.bucket;
    let Some(endpoint) = &config.endpoint else {
        return Ok(match config.virtual_hosted {
            true => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            false => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        });
    };
    let bad = |message: String| StoreError::InvalidConfig { message };
    let endpoint = endpoint.trim_end_matches('/');
    let (scheme, rest) = endpoint
        .split_once("://")
        .filter(|(s, rest)| matches!(*s, "http" | "https") && !rest.is_empty())
        .ok_or_else(|| {
            bad(format!(
                "endpoint `{endpoint}` is not an http:// or https:// URL"
            ))
        })?;
    if scheme == "http" && !config.allow_http {
        return Err(bad(format!(
            "endpoint `{endpoint}` is plain HTTP: set `allow_http = true` to use it"
        )));
    }
    Ok(match config.virtual_hosted {
        true => format!("{scheme}://{bucket}.{rest}"),
        false => format!("{endpoint}/{bucket}"),
    })
}

fn client_options(config: &S3Config) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(config.allow_http)
        .with_connect_timeout(config.transfer.connect_timeout)
        .with_timeout(config.transfer.request_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_are_path_style_unless_asked() {
        let mut c = S3Config::new("bkt", "p");
        assert_eq!(
            bucket_endpoint(&c, "eu-west-1").unwrap(),
            "https://s3.eu-west-1.amazonaws.com/bkt"
        );
        c.virtual_hosted = true;
        assert_eq!(
            bucket_endpoint(&c, "eu-west-1").unwrap(),
            "https://bkt.s3.eu-west-1.amazonaws.com"
        );
        c.endpoint = Some("https://s3.example.com/".into());
        assert_eq!(
            bucket_endpoint(&c, "x").unwrap(),
            "https://bkt.s3.example.com"
        );
        c.virtual_hosted = false;
        assert_eq!(
            bucket_endpoint(&c, "x").unwrap(),
            "https://s3.example.com/bkt"
        );
        c.endpoint = Some("http://127.0.0.1:9000".into());
        let err = bucket_endpoint(&c, "x").unwrap_err().to_string();
        assert!(err.contains("allow_http"), "{err}");
        c.allow_http = true;
        assert_eq!(
            bucket_endpoint(&c, "x").unwrap(),
            "http://127.0.0.1:9000/bkt"
        );
        c.endpoint = Some("127.0.0.1:9000".into());
        assert!(bucket_endpoint(&c, "x").is_err());
    }

    #[test]
    fn transfer_settings_are_checked() {
        assert!(Transfer::default().check().is_ok());
        let small = Transfer {
            part_size: 1 << 20,
            ..Transfer::default()
        };
        assert!(small.check().unwrap_err().to_string().contains("5 MiB"));
        let none = Transfer {
            parts_in_flight: 0,
            ..Transfer::default()
        };
        assert!(none.check().is_err());
    }

    #[test]
    fn an_endpoint_nobody_listens_on_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = S3Config::new("bucket", "");
        c.endpoint = Some(format!("http://127.0.0.1:{port}"));
        c.allow_http = true;
        c.transfer.max_retries = 1;
        c.transfer.retry_timeout = Duration::from_secs(2);
        let err = S3Store::connect(&c, &Credentials::new("AKIA", "s", None)).unwrap_err();
        assert!(
            matches!(&err, Error::Store(StoreError::Unreachable { endpoint, .. }) if endpoint.contains(&port.to_string())),
            "{err:?}"
        );
        assert!(err.hint().unwrap().contains("is running"));
    }

    /// A config for `https://{addr}` that gives up quickly.
    fn https_config(addr: std::net::SocketAddr) -> S3Config {
        let mut c = S3Config::new("bucket", "");
        c.endpoint = Some(format!("https://{addr}"));
        c.transfer.max_retries = 1;
        c.transfer.retry_timeout = Duration::from_secs(2);
        c
    }

    // Guards the TLS stack without aws-lc: reqwest has no crypto provider
    // of its own and panics building a client without one.
    #[test]
    fn an_https_endpoint_nobody_listens_on_is_unreachable() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let c = https_config(addr);
        let err = S3Store::connect(&c, &Credentials::new("AKIA", "s", None)).unwrap_err();
        assert!(
            matches!(&err, Error::Store(StoreError::Unreachable { endpoint, .. }) if endpoint.starts_with("https://") && endpoint.contains(&addr.port().to_string())),
            "{err:?}"
        );
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn an_https_endpoint_is_sent_a_tls_client_hello() {
        use std::io::Read;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Reads the first bytes of each connection and hangs up, until a
        // connection that sends nothing (the test's own, to stop it).
        let server = std::thread::spawn(move || {
            let mut hellos = Vec::new();
            for conn in listener.incoming() {
                let mut head = [0u8; 3];
                match conn.unwrap().read_exact(&mut head) {
                    Ok(()) => hellos.push(head),
                    Err(_) => break,
                }
            }
            hellos
        });
        let err = S3Store::connect(&https_config(addr), &Credentials::new("AKIA", "s", None))
            .unwrap_err();
        drop(std::net::TcpStream::connect(addr).unwrap());
        let hellos = server.join().unwrap();
        assert!(
            matches!(&err, Error::Store(StoreError::Unreachable { .. })),
            "{err:?}"
        );
        // A TLS handshake record (22), protocol version 3.x.
        assert!(!hellos.is_empty());
        assert!(hellos.iter().all(|h| h[..2] == [22, 3]), "{hellos:?}");
    }
}
