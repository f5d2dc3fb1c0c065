//! A deterministic stand-in for fuzzing, run with every test: archives cut
//! at every block boundary and with bytes flipped all over are refused with
//! an error (never accepted, never a panic). `fuzz/` holds the coverage-
//! guided version.

use backstop_core::stores::Location;
use std::io::Write;
use std::path::Path;

use backstop_core::Error;
use backstop_core::archive::Codec;
use backstop_core::archive::reader::{VerifyRun, verify_archive, verify_bytes};
use backstop_core::encryption::{
    EncryptionError, IdentitySet, Keys, NO_KEYS, Recipients, new_identity,
};
use backstop_core::progress::{Cancel, NoProgress};

use crate::support::Env;

fn archive(codec: Codec) -> Vec<u8> {
    let env = Env::new();
    let src = env.path("app");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("d/a.txt"), b"alpha\n".repeat(200)).unwrap();
    std::fs::write(
        src.join("d/e/b.bin"),
        (0..20_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::os::unix::fs::symlink("d/a.txt", src.join("link")).unwrap();
    std::fs::hard_link(src.join("d/a.txt"), src.join("hard")).unwrap();
    let report = env.backup(&src, codec);
    std::fs::read(Path::new(report.backup.location.as_deref().unwrap())).unwrap()
}

#[test]
fn every_truncation_is_refused() {
    for codec in [Codec::None, Codec::Zstd, Codec::Gzip] {
        let data = archive(codec);
        verify_bytes(&data).expect("the intact archive verifies");
        let step = if codec == Codec::None { 512 } else { 1 };
        // Cut just before its frame table, a zstd archive is whole: it is
        // an archive without a table, which only its sidecar tells apart.
        let table = frame_table_start(&data);
        if codec == Codec::Zstd {
            assert!(table.is_some(), "a zstd archive ends with a frame table");
        }
        let mut cut = 0;
        while cut < data.len() {
            if Some(cut) == table {
                verify_bytes(&data[..cut]).expect("the archive without its frame table");
                cut += step;
                continue;
            }
            assert!(
                verify_bytes(&data[..cut]).is_err(),
                "{codec}: accepted when cut at {cut} of {}",
                data.len()
            );
            cut += step;
        }
    }
}

/// Where the frame table ending `data` starts (see docs/format.md), if it
/// ends with one.
fn frame_table_start(data: &[u8]) -> Option<usize> {
    let (rest, footer) = data.split_at(data.len().checked_sub(8)?);
    if &footer[4..] != b"BSFT" {
        return None;
    }
    let len = u32::from_le_bytes(footer[..4].try_into().unwrap()) as usize;
    let start = rest.len().checked_sub(len + 8)?;
    (data[start..start + 4] == 0x184D_2A5Bu32.to_le_bytes()).then_some(start)
}

/// What the flipped-byte test compares: for compressed archives the whole
/// decoded meaning (the codecs checksum every byte of the tar stream); for
/// uncompressed ones the payload's files (the inner checksums cover file
/// content; the manifest, the trailer and PAX metadata of an uncompressed
/// archive are covered by its sidecar, which `verify_bytes` does not see).
#[test]
fn flipped_bytes_are_refused() {
    for codec in [Codec::None, Codec::Zstd, Codec::Gzip] {
        let data = archive(codec);
        let original = verify_bytes(&data).unwrap();
        // A prime stride reaches every kind of field in a few thousand runs.
        let stride = if codec == Codec::None { 7 } else { 3 };
        let mut at = 0;
        while at < data.len() {
            let mut bad = data.clone();
            bad[at] ^= 0x20;
            if let Ok(v) = verify_bytes(&bad) {
                // Accepted: only possible where the flip changes nothing that
                // is checked (tar padding; gzip header fields such as mtime).
                assert_eq!(
                    (v.entries, v.files, v.bytes),
                    (original.entries, original.files, original.bytes),
                    "{codec}: a flip at {at} changed the payload"
                );
                if codec != Codec::None {
                    assert_eq!(
                        (&v.manifest, &v.trailer),
                        (&original.manifest, &original.trailer),
                        "{codec}: a flip at {at} changed the manifest or trailer"
                    );
                }
            }
            at += stride;
        }
    }
}

/// An encrypted archive of several pipeline chunks (1 MiB) and many age
/// chunks (64 KiB), its identity's keys, and where its payload starts
/// (after the header and the nonce).
fn encrypted(env: &Env) -> (std::path::PathBuf, Keys, usize) {
    let src = env.path("app");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/a.txt"), b"alpha\n".repeat(20_000)).unwrap();
    // Incompressible: stored, so the ciphertext is as long as the content.
    let noise = backstop_test_support::noise(3 << 20, 0x2545_f491_4f6c_dd1d);
    std::fs::write(src.join("d/noise.bin"), noise).unwrap();
    let report = env.backup(&src, Codec::Zstd);
    let plain = std::fs::read(report.backup.location.as_deref().unwrap()).unwrap();
    let (identity, recipient) = new_identity("now");
    let mut sealed = Vec::new();
    let mut w = Recipients::parse(&[recipient])
        .unwrap()
        .wrap(&mut sealed)
        .unwrap();
    w.write_all(&plain).unwrap();
    w.finish().unwrap();
    let file = env.path("sealed.tar.zst.age");
    std::fs::write(&file, &sealed).unwrap();
    let mac = sealed.windows(5).position(|w| w == b"\n--- ").unwrap() + 5;
    let header_end = mac + sealed[mac..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let keys = Keys::new(
        vec![IdentitySet::parse("key.txt", identity.as_bytes()).unwrap()],
        vec![],
    );
    (file, keys, header_end + 16)
}

fn verify_file(path: &Path, keys: &Keys) -> VerifyRun {
    verify_archive(
        &Location::file(path),
        (&NoProgress, &Cancel::default()),
        keys,
    )
}

fn is_damaged(e: &Error) -> bool {
    matches!(e, Error::Encryption(EncryptionError::Damaged { .. }))
}

/// The reader decrypts and decompresses on two threads; whichever notices
/// first, a cut or a flipped byte in the ciphertext is reported as what it
/// is (the encryption is damaged), never as a broken zstd or tar stream,
/// and the whole-file checksum is still known.
#[test]
fn every_cut_and_flip_of_an_encrypted_archive_is_reported_as_damaged_encryption() {
    let env = Env::new();
    let (file, keys, payload) = encrypted(&env);
    let data = std::fs::read(&file).unwrap();
    let intact = verify_file(&file, &keys);
    assert!(intact.result.is_ok(), "{:?}", intact.result.err());
    let bad = env.path("bad.tar.zst.age");
    // Around every age chunk boundary (64 KiB of plaintext, 16 bytes of
    // tag), and through the header.
    let chunk = (64 << 10) + 16;
    let mut cuts: Vec<usize> = (30..payload + 20).step_by(7).collect();
    for k in 0..=(data.len() - payload) / chunk {
        let at = payload + k * chunk;
        cuts.extend([at.saturating_sub(1), at, at + 1, at + 17]);
    }
    cuts.push(data.len() - 1);
    for cut in cuts.into_iter().filter(|&c| c < data.len()) {
        std::fs::write(&bad, &data[..cut]).unwrap();
        let run = verify_file(&bad, &keys);
        let err = run.result.as_ref().expect_err("a cut archive verified");
        assert!(is_damaged(err), "cut at {cut} of {}: {err}", data.len());
        assert!(run.sha256.is_some(), "cut at {cut}: no checksum");
    }
    let mut at = payload;
    while at < data.len() {
        let mut flipped = data.clone();
        flipped[at] ^= 0x20;
        std::fs::write(&bad, &flipped).unwrap();
        let run = verify_file(&bad, &keys);
        let err = run.result.as_ref().expect_err("a flipped archive verified");
        assert!(is_damaged(err), "flip at {at}: {err}");
        at += 40_009;
    }
}

#[test]
fn an_encrypted_archive_without_its_key_is_refused_as_such_and_still_hashed() {
    let env = Env::new();
    let (file, _, _) = encrypted(&env);
    let (other, _) = new_identity("now");
    let wrong = Keys::new(
        vec![IdentitySet::parse("other.txt", other.as_bytes()).unwrap()],
        vec![],
    );
    for (keys, want) in [
        (&NO_KEYS, "no identity"),
        (&wrong, "none of the identities"),
    ] {
        let run = verify_file(&file, keys);
        let err = run.result.expect_err("opened without its key");
        assert!(
            matches!(
                err,
                Error::Encryption(
                    EncryptionError::NoIdentity { .. } | EncryptionError::WrongIdentity { .. }
                )
            ) && err.to_string().contains(want),
            "{err}"
        );
        assert!(run.encrypted);
        assert_eq!(run.size, std::fs::metadata(&file).unwrap().len());
        assert!(run.sha256.is_some());
    }
}
