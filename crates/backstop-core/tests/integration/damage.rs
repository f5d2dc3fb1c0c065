//! A deterministic stand-in for fuzzing, run with every test: archives cut
//! at every block boundary and with bytes flipped all over are refused with
//! an error (never accepted, never a panic). `fuzz/` holds the coverage-
//! guided version.

use std::path::Path;

use backstop_core::archive::Codec;
use backstop_core::archive::reader::verify_bytes;

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
        let mut cut = 0;
        while cut < data.len() {
            assert!(
                verify_bytes(&data[..cut]).is_err(),
                "{codec}: accepted when cut at {cut} of {}",
                data.len()
            );
            cut += step;
        }
    }
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
