//! The store contract, run against a local directory and against a real
//! S3-protocol server (moto on loopback, one per test); then what only an
//! S3 store meets: refused credentials, a missing bucket, a server that
//! dies mid-upload.

use std::io::{Read, Write};
use std::time::Duration;

use backstop_core::Error;
use backstop_core::store::{
    Credentials, Key, LocalStore, S3Config, S3Store, Store, StoreError, Transfer,
};
use backstop_test_support::s3::{Moto, Proxy, unique_bucket};

const MIB: usize = 1 << 20;

/// Small parts and ranges, so that a few MiB make several of each (moto
/// keeps objects in memory), pages of two keys, and few quick retries.
fn transfer() -> Transfer {
    Transfer {
        part_size: 5 * MIB,
        parts_in_flight: 2,
        range_size: MIB,
        ranges_in_flight: 3,
        list_page: 2,
        max_retries: 2,
        retry_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
    }
}

fn config(endpoint: &str, bucket: &str) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_string()),
        allow_http: true,
        transfer: transfer(),
        ..S3Config::new(bucket, "pre/fix")
    }
}

/// moto accepts any credentials until it is told to check them.
fn any_credentials() -> Credentials {
    Credentials::new("testing", "testing", None)
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

/// `len` bytes that differ from one offset to the next.
fn data(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn put(store: &dyn Store, k: &str, bytes: &[u8]) -> u64 {
    let mut w = store.create(&key(k)).unwrap();
    w.write_all(bytes).unwrap();
    w.finish().unwrap()
}

fn get(store: &dyn Store, k: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store.open(&key(k)).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn store_error(err: &Error) -> &StoreError {
    match err {
        Error::Store(e) => e,
        other => panic!("not a store error: {other:?}"),
    }
}

/// The bucket of a store made by [`s3`].
fn bucket_of(store: &S3Store) -> String {
    let url = store.describe();
    let rest = url.trim_start_matches("s3://");
    rest.split('/').next().unwrap().to_string()
}

fn local() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn s3() -> Option<(Moto, S3Store)> {
    let moto = Moto::start()?;
    let bucket = unique_bucket("contract");
    moto.create_bucket(&bucket);
    let store = S3Store::connect(&config(&moto.endpoint(), &bucket), &any_credentials()).unwrap();
    Some((moto, store))
}

/// Each case runs once on a [`LocalStore`] and once on an [`S3Store`].
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(#[test]
            fn $case() {
                let (_dir, store) = super::local();
                super::$case(&store);
            })*
        }
        mod s3 {
            $(#[test]
            fn $case() {
                let Some((_moto, store)) = super::s3() else { return };
                super::$case(&store);
            })*
        }
    };
}

contract!(
    a_small_object_round_trips,
    a_multipart_object_round_trips,
    ranged_reads_return_exactly_the_bytes_asked,
    listing_pages_through_every_object_below_a_prefix,
    delete_removes_and_tolerates_absence,
    an_existing_object_is_never_overwritten,
    racing_writers_of_one_key_leave_the_first_object,
    a_dropped_or_aborted_writer_leaves_nothing,
    a_leaked_writer_is_cleaned_up_next_run,
);

fn a_small_object_round_trips(store: &dyn Store) {
    assert_eq!(put(store, "host/inst/a.tar", b"hello"), 5);
    assert_eq!(store.head(&key("host/inst/a.tar")).unwrap(), Some(5));
    assert_eq!(get(store, "host/inst/a.tar"), b"hello");
    assert_eq!(put(store, "host/inst/empty", b""), 0);
    assert_eq!(get(store, "host/inst/empty"), b"");
    let listed: Vec<_> = store
        .list(None)
        .unwrap()
        .into_iter()
        .map(|o| (o.key.to_string(), o.size))
        .collect();
    assert_eq!(
        listed,
        [
            ("host/inst/a.tar".to_string(), 5),
            ("host/inst/empty".to_string(), 0)
        ]
    );
    assert_eq!(store.head(&key("host/inst/nothing")).unwrap(), None);
    let missing = store
        .open(&key("host/inst/nothing"))
        .err()
        .expect("no such object");
    assert!(
        matches!(store_error(&missing), StoreError::NotFound { .. }),
        "{missing:?}"
    );
    assert!(store.pending(None).unwrap().is_empty());
}

fn a_multipart_object_round_trips(store: &dyn Store) {
    // Three parts of an S3 store's 5 MiB, written in odd-sized pieces.
    let bytes = data(12 * MIB + 12_345);
    let mut w = store.create(&key("h/i/big.tar.zst")).unwrap();
    for piece in bytes.chunks(1_000_003) {
        w.write_all(piece).unwrap();
    }
    assert_eq!(w.finish().unwrap(), bytes.len() as u64);
    assert_eq!(
        store.head(&key("h/i/big.tar.zst")).unwrap(),
        Some(bytes.len() as u64)
    );
    let back = get(store, "h/i/big.tar.zst");
    assert!(back == bytes, "the object read back differs");
    assert!(
        store.pending(None).unwrap().is_empty(),
        "no upload left open"
    );
}

fn ranged_reads_return_exactly_the_bytes_asked(store: &dyn Store) {
    let bytes = data(3 * MIB + 7);
    put(store, "r/obj", &bytes);
    let k = key("r/obj");
    let end = bytes.len() as u64;
    for (start, len) in [(0, 10), (MIB as u64 - 5, 10), (end - 7, 7), (0, end)] {
        let got = store.read_range(&k, start, len).unwrap();
        assert!(
            got == bytes[start as usize..(start + len) as usize],
            "range {start}+{len}"
        );
    }
    assert!(store.read_range(&k, 5, 0).unwrap().is_empty());
    for (start, len) in [(end - 3, 10), (end, 1), (end + 5, 1)] {
        let short = store.read_range(&k, start, len).unwrap_err();
        assert!(
            matches!(store_error(&short), StoreError::Short { .. }),
            "{start}+{len}: {short:?}"
        );
        assert_eq!(short.kind(), backstop_core::ErrorKind::Integrity);
    }
    let missing = store.read_range(&key("r/none"), 0, 1).unwrap_err();
    assert!(
        matches!(store_error(&missing), StoreError::NotFound { .. }),
        "{missing:?}"
    );
}

fn listing_pages_through_every_object_below_a_prefix(store: &dyn Store) {
    let mut want = Vec::new();
    for i in 0..7 {
        let k = format!("h/i/{i:02}.tar");
        put(store, &k, &vec![b'x'; i]);
        want.push((k, i as u64));
    }
    put(store, "h/j/other", b"1");
    put(store, "h/ix", b"22");
    put(store, "h/i.tar", b"333");
    let below = |p: &str| -> Vec<(String, u64)> {
        store
            .list(Some(&key(p)))
            .unwrap()
            .into_iter()
            .map(|o| (o.key.to_string(), o.size))
            .collect()
    };
    assert_eq!(
        below("h/i"),
        want,
        "only keys below h/i, in order, every page"
    );
    assert_eq!(below("h/i/03.tar"), [("h/i/03.tar".to_string(), 3)]);
    assert_eq!(below("h").len(), 10);
    assert_eq!(store.list(None).unwrap().len(), 10);
    assert!(below("nothing/here").is_empty());
}

fn delete_removes_and_tolerates_absence(store: &dyn Store) {
    put(store, "d/one", b"1");
    put(store, "d/two", b"2");
    store.delete(&key("d/one")).unwrap();
    assert_eq!(store.head(&key("d/one")).unwrap(), None);
    let left: Vec<_> = store
        .list(None)
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    assert_eq!(left, ["d/two"]);
    store.delete(&key("d/one")).unwrap();
    store.delete(&key("never/was")).unwrap();
    // A deleted key may be written again.
    put(store, "d/one", b"again");
    assert_eq!(get(store, "d/one"), b"again");
}

fn an_existing_object_is_never_overwritten(store: &dyn Store) {
    put(store, "k/a", b"first");
    let err = store.create(&key("k/a")).err().expect("refused");
    assert!(
        matches!(store_error(&err), StoreError::AlreadyExists { key, .. } if key == "k/a"),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("never overwrites"));
    assert_eq!(get(store, "k/a"), b"first");
}

fn racing_writers_of_one_key_leave_the_first_object(store: &dyn Store) {
    // Both writers start before either finishes: the check at create
    // passes for both, and the name must still go to the first only. Once
    // small (one PUT), once in parts (a multipart completion).
    for (k, len) in [("race/small", 100), ("race/big", 11 * MIB)] {
        let (one, two) = (data(len), vec![7u8; len]);
        let mut first = store.create(&key(k)).unwrap();
        let mut second = store.create(&key(k)).unwrap();
        first.write_all(&one).unwrap();
        second.write_all(&two).unwrap();
        first.finish().unwrap();
        let err = second.finish().unwrap_err();
        assert!(
            matches!(store_error(&err), StoreError::AlreadyExists { .. }),
            "{k}: {err:?}"
        );
        assert!(get(store, k) == one, "{k} was replaced");
    }
    assert!(
        store.pending(None).unwrap().is_empty(),
        "the loser's upload is aborted"
    );
}

fn a_dropped_or_aborted_writer_leaves_nothing(store: &dyn Store) {
    let mut w = store.create(&key("gone/dropped")).unwrap();
    w.write_all(&data(7 * MIB)).unwrap();
    assert_eq!(
        store.pending(None).unwrap().len(),
        1,
        "a write in progress is pending"
    );
    drop(w);
    let mut w = store.create(&key("gone/aborted")).unwrap();
    w.write_all(&data(6 * MIB)).unwrap();
    w.abort().unwrap();
    let mut w = store.create(&key("gone/tiny")).unwrap();
    w.write_all(b"x").unwrap();
    drop(w);
    for k in ["gone/dropped", "gone/aborted", "gone/tiny"] {
        assert_eq!(store.head(&key(k)).unwrap(), None, "{k}");
    }
    assert!(store.list(None).unwrap().is_empty());
    assert!(
        store.pending(None).unwrap().is_empty(),
        "no upload or temporary file left"
    );
}

fn a_leaked_writer_is_cleaned_up_next_run(store: &dyn Store) {
    // A writer that never finishes nor aborts: what a killed process leaves.
    for k in ["mine/leaked", "theirs/leaked"] {
        let mut w = store.create(&key(k)).unwrap();
        w.write_all(&data(6 * MIB)).unwrap();
        std::mem::forget(w);
    }
    let pending: Vec<_> = store
        .pending(None)
        .unwrap()
        .into_iter()
        .map(|p| p.key.to_string())
        .collect();
    assert_eq!(pending, ["mine/leaked", "theirs/leaked"]);
    let of_one = store.pending(Some(&key("mine/leaked"))).unwrap();
    assert_eq!(
        of_one.len(),
        1,
        "a key's own pending write is at its prefix: {of_one:?}"
    );
    assert_eq!(store.cleanup_abandoned(Some(&key("mine"))).unwrap(), 1);
    let left: Vec<_> = store
        .pending(None)
        .unwrap()
        .into_iter()
        .map(|p| p.key.to_string())
        .collect();
    assert_eq!(left, ["theirs/leaked"], "only the prefix asked is cleaned");
    assert_eq!(store.cleanup_abandoned(None).unwrap(), 1);
    assert!(store.pending(None).unwrap().is_empty());
    assert_eq!(store.head(&key("mine/leaked")).unwrap(), None);
    assert!(store.list(None).unwrap().is_empty());
}

#[test]
fn s3_keys_live_under_the_store_prefix_and_multipart_objects_have_parts() {
    let Some((moto, store)) = s3() else { return };
    put(&store, "h/small", b"abc");
    put(&store, "h/big", &data(11 * MIB));
    let bucket = bucket_of(&store);
    let raw = moto.s3_request("GET", &format!("/{bucket}/pre/fix/h/small"), b"");
    assert_eq!((raw.status, raw.body.as_str()), (200, "abc"));
    let head = moto.s3_request("HEAD", &format!("/{bucket}/pre/fix/h/big"), b"");
    let etag = head.header("ETag").unwrap_or_default();
    assert!(
        etag.ends_with("-3\""),
        "11 MiB in 5 MiB parts is 3 parts: {etag}"
    );
    let mut other = config(&moto.endpoint(), &bucket);
    other.prefix = "elsewhere".into();
    let other = S3Store::connect(&other, &any_credentials()).unwrap();
    assert!(other.list(None).unwrap().is_empty());
    assert_eq!(other.head(&key("h/small")).unwrap(), None);
}

#[test]
fn s3_wrong_credentials_are_named_with_what_to_check() {
    let Some(moto) = Moto::start() else { return };
    let bucket = unique_bucket("auth");
    moto.create_bucket(&bucket);
    let (key_id, secret) = moto.create_user("backstop");
    moto.require_auth();
    // No prefix: moto, checking signatures, reads a `/` in a query value
    // (`prefix=pre%2Ffix%2F`) otherwise than AWS and refuses any signature.
    let cfg = S3Config {
        prefix: String::new(),
        ..config(&moto.endpoint(), &bucket)
    };
    let refused = |creds: Credentials| S3Store::connect(&cfg, &creds).unwrap_err();
    let unknown = refused(Credentials::new("AKIAUNKNOWNKEY000000", "whatever", None));
    assert!(
        matches!(store_error(&unknown), StoreError::BadCredentials { code, .. } if code == "InvalidAccessKeyId"),
        "{unknown:?}"
    );
    assert!(unknown.hint().unwrap().contains("AWS_ACCESS_KEY_ID"));
    let wrong = refused(Credentials::new(key_id.clone(), "not-the-secret", None));
    assert!(
        matches!(store_error(&wrong), StoreError::BadCredentials { code, .. } if code == "SignatureDoesNotMatch"),
        "{wrong:?}"
    );
    assert!(wrong.hint().unwrap().contains("AWS_SECRET_ACCESS_KEY"));
    assert!(
        !format!("{wrong:?}{wrong}").contains("not-the-secret"),
        "secrets are never shown"
    );
    // The right ones work, so the refusals above were about the keys.
    let store = S3Store::connect(&cfg, &Credentials::new(key_id, secret, None)).unwrap();
    put(&store, "ok", b"signed");
    assert_eq!(get(&store, "ok"), b"signed");
}

#[test]
fn s3_a_missing_bucket_is_named() {
    let Some(moto) = Moto::start() else { return };
    let err = S3Store::connect(
        &config(&moto.endpoint(), "bstest-no-such-bucket"),
        &any_credentials(),
    )
    .unwrap_err();
    assert!(
        matches!(store_error(&err), StoreError::NoSuchBucket { bucket, .. } if bucket == "bstest-no-such-bucket"),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("create the bucket"));
}

#[test]
fn s3_a_server_dying_mid_upload_leaves_nothing_named_and_the_upload_is_cleaned() {
    let Some(moto) = Moto::start() else { return };
    let bucket = unique_bucket("cut");
    moto.create_bucket(&bucket);
    let proxy = Proxy::start(moto.port());
    let through =
        S3Store::connect(&config(&proxy.endpoint(), &bucket), &any_credentials()).unwrap();
    let mut w = through.create(&key("h/i/cut.tar")).unwrap();
    w.write_all(&data(6 * MIB)).unwrap();
    proxy.cut();
    let wrote = w.write_all(&data(5 * MIB));
    let err = w.finish().unwrap_err();
    assert!(
        matches!(store_error(&err), StoreError::Unreachable { .. }),
        "{err:?} (write: {wrote:?})"
    );
    assert!(err.hint().unwrap().contains("is running"));
    proxy.restore();
    let direct = S3Store::connect(&config(&moto.endpoint(), &bucket), &any_credentials()).unwrap();
    assert_eq!(
        direct.head(&key("h/i/cut.tar")).unwrap(),
        None,
        "nothing under the name"
    );
    // The abort could not reach the server either: the next run cleans up.
    let pending = direct.pending(None).unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].key.as_str(), "h/i/cut.tar");
    assert_eq!(direct.cleanup_abandoned(Some(&key("h/i"))).unwrap(), 1);
    assert!(direct.pending(None).unwrap().is_empty());
}

#[test]
fn s3_a_killed_server_fails_the_write() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let bucket = unique_bucket("kill");
    moto.create_bucket(&bucket);
    let store = S3Store::connect(&config(&moto.endpoint(), &bucket), &any_credentials()).unwrap();
    let mut w = store.create(&key("h/i/killed.tar")).unwrap();
    w.write_all(&data(6 * MIB)).unwrap();
    moto.kill();
    let _ = w.write_all(&data(5 * MIB));
    let err = w.finish().unwrap_err();
    assert!(
        matches!(store_error(&err), StoreError::Unreachable { .. }),
        "{err:?}"
    );
    let err = store.head(&key("h/i/killed.tar")).unwrap_err();
    assert!(
        matches!(store_error(&err), StoreError::Unreachable { .. }),
        "{err:?}"
    );
}

#[test]
fn s3_an_object_replaced_while_read_is_refused() {
    let Some((moto, store)) = s3() else { return };
    put(&store, "h/r", &data(8 * MIB));
    let mut reader = store.open(&key("h/r")).unwrap();
    let mut first = [0; 10];
    reader.read_exact(&mut first).unwrap();
    // Another tool overwrites the object (backstop never does). Ranges
    // past the first few are asked for only as reading goes on, and find
    // another ETag under the key.
    let bucket = bucket_of(&store);
    let answer = moto.s3_request("PUT", &format!("/{bucket}/pre/fix/h/r"), &vec![9; 8 * MIB]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
    let cause = StoreError::from_io(&err).expect("a store error");
    assert!(matches!(cause, StoreError::Short { .. }), "{cause:?}");
}
