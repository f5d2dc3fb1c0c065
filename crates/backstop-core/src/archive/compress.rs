//! Block compression: the tar stream is cut into fixed-size blocks, each
//! compressed on its own by a pool of threads, and the results written in
//! order. Each block becomes a complete zstd frame or gzip member, so the
//! output is a standard multi-frame `.zst` or multi-member `.gz` that `zstd -d`,
//! `gzip -d` and `tar -x` read, and that a reader could later decompress in
//! parallel (each gzip member carries its own length in a `BS` extra field).
//!
//! Blocks that do not compress (media, archives, encrypted data) are detected
//! from a few samples and stored without compression inside the same format:
//! raw zstd blocks, or deflate level 0. This saves the CPU time the codec
//! would spend learning that the data is random.

use std::io;

use crate::archive::format::{Codec, CompressionSpec};

/// The size of the blocks the tar stream is cut into. Larger blocks compress
/// slightly better (no shared window across blocks); smaller ones use less
/// memory. At 4 MiB the archive is within about 1 % of a single stream.
pub const BLOCK_SIZE: usize = 4 << 20;

/// The zstd frame magic number.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Largest zstd block.
const ZSTD_MAX_BLOCK: usize = 128 << 10;

/// Per-thread compression state for one codec.
pub enum BlockCompressor {
    Zstd(Box<zstd::bulk::Compressor<'static>>, Sampler),
    Gzip(libdeflater::Compressor, libdeflater::Compressor, Sampler),
    None,
}

impl BlockCompressor {
    /// Creates the state for `spec`.
    ///
    /// # Errors
    ///
    /// Fails when the codec cannot be initialised.
    pub fn new(spec: CompressionSpec) -> io::Result<BlockCompressor> {
        Ok(match spec.codec {
            Codec::Zstd => {
                let mut c = zstd::bulk::Compressor::new(spec.level.unwrap_or(3))?;
                c.include_checksum(true)?;
                c.include_contentsize(true)?;
                BlockCompressor::Zstd(Box::new(c), Sampler::new()?)
            }
            Codec::Gzip => {
                let level = spec.level.unwrap_or(6);
                let lvl = libdeflater::CompressionLvl::new(level)
                    .map_err(|_| io::Error::other(format!("invalid gzip level {level}")))?;
                let stored = libdeflater::CompressionLvl::new(0).expect("level 0 exists");
                BlockCompressor::Gzip(
                    libdeflater::Compressor::new(lvl),
                    libdeflater::Compressor::new(stored),
                    Sampler::new()?,
                )
            }
            Codec::None => BlockCompressor::None,
        })
    }

    /// Compresses `input` into `out` (which is cleared first) as one
    /// self-contained frame or member.
    ///
    /// # Errors
    ///
    /// Fails only when the codec reports an internal error.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        match self {
            BlockCompressor::Zstd(c, sampler) => {
                if sampler.incompressible(input) {
                    raw_zstd_frame(input, out);
                    return Ok(());
                }
                out.reserve(zstd::zstd_safe::compress_bound(input.len()));
                c.compress_to_buffer(input, out)?;
                Ok(())
            }
            BlockCompressor::Gzip(c, stored, sampler) => {
                let c = if sampler.incompressible(input) {
                    stored
                } else {
                    c
                };
                gzip_member(c, input, out)
            }
            BlockCompressor::None => {
                out.extend_from_slice(input);
                Ok(())
            }
        }
    }
}

/// Decides from samples whether a block is worth compressing.
pub struct Sampler {
    probe: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

/// Samples taken from each block, and their size.
const SAMPLES: usize = 8;
const SAMPLE_LEN: usize = 16 << 10;
/// Blocks whose samples shrink by less than this fraction are stored.
const MIN_SAVING: f64 = 0.03;

impl Sampler {
    fn new() -> io::Result<Sampler> {
        Ok(Sampler {
            probe: zstd::bulk::Compressor::new(1)?,
            scratch: Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLE_LEN)),
        })
    }

    /// Whether `block` looks incompressible: evenly spread samples compressed
    /// at zstd's fastest level, taken together, save less than `MIN_SAVING`.
    fn incompressible(&mut self, block: &[u8]) -> bool {
        if block.len() < SAMPLES * SAMPLE_LEN * 2 {
            return false;
        }
        let stride = block.len() / SAMPLES;
        let mut raw = 0usize;
        let mut packed = 0usize;
        for i in 0..SAMPLES {
            let sample = &block[i * stride..i * stride + SAMPLE_LEN];
            self.scratch.clear();
            match self.probe.compress_to_buffer(sample, &mut self.scratch) {
                Ok(n) => packed += n,
                Err(_) => return false,
            }
            raw += SAMPLE_LEN;
        }
        (packed as f64) > (raw as f64) * (1.0 - MIN_SAVING)
    }
}

/// Writes `input` as a zstd frame of raw (stored) blocks: a single-segment
/// frame with its content size and the standard content checksum (the low
/// 32 bits of XXH64), so a damaged stored frame is caught by any zstd
/// decoder, as a damaged compressed one is.
fn raw_zstd_frame(input: &[u8], out: &mut Vec<u8>) {
    out.reserve(input.len() + 20 + input.len() / ZSTD_MAX_BLOCK * 3);
    out.extend_from_slice(&ZSTD_MAGIC.to_le_bytes());
    // Frame header descriptor: 8-byte content size (flag 3), single segment,
    // content checksum present.
    out.push(0b1110_0100);
    out.extend_from_slice(&(input.len() as u64).to_le_bytes());
    let mut chunks = input.chunks(ZSTD_MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        // An empty frame still needs one (empty, last) block.
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        // Block header: last-block bit, type 0 (raw), 21-bit size.
        let header = last | ((chunk.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    let checksum = xxhash_rust::xxh64::xxh64(input, 0) as u32;
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// Writes `input` as one gzip member. The header carries an extra field
/// `BS` with the member's total length, so members can be found without
/// decompressing; gzip tools ignore it.
fn gzip_member(c: &mut libdeflater::Compressor, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    const HEADER: usize = 20;
    let bound = c.deflate_compress_bound(input.len());
    out.resize(HEADER + bound + 8, 0);
    let n = c
        .deflate_compress(input, &mut out[HEADER..HEADER + bound])
        .map_err(|e| io::Error::other(format!("deflate failed: {e:?}")))?;
    let total = (HEADER + n + 8) as u32;
    let header: [u8; 12] = [
        0x1f, 0x8b, // magic
        8,    // deflate
        0x04, // FEXTRA
        0, 0, 0, 0, // mtime: none
        0, // extra flags
        3, // OS: Unix
        8, 0, // XLEN
    ];
    out[..12].copy_from_slice(&header);
    out[12..14].copy_from_slice(b"BS");
    out[14..16].copy_from_slice(&4u16.to_le_bytes());
    out[16..20].copy_from_slice(&total.to_le_bytes());
    let crc = libdeflater::crc32(input);
    out.truncate(HEADER + n);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn text(len: usize) -> Vec<u8> {
        b"lorem ipsum dolor sit amet, backup restore rollback "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    fn noise(len: usize) -> Vec<u8> {
        backstop_test_support::noise(len, 0x9E37_79B9_7F4A_7C15)
    }

    fn round_trip(codec: Codec, blocks: &[Vec<u8>]) {
        let spec = CompressionSpec::new(codec, None).unwrap();
        let mut c = BlockCompressor::new(spec).unwrap();
        let mut stream = Vec::new();
        let mut out = Vec::new();
        for b in blocks {
            c.compress(b, &mut out).unwrap();
            stream.extend_from_slice(&out);
        }
        let mut decoded = Vec::new();
        match codec {
            Codec::Zstd => {
                zstd::stream::read::Decoder::new(&stream[..])
                    .unwrap()
                    .read_to_end(&mut decoded)
                    .unwrap();
            }
            Codec::Gzip => {
                flate2::read::MultiGzDecoder::new(&stream[..])
                    .read_to_end(&mut decoded)
                    .unwrap();
            }
            Codec::None => decoded = stream.clone(),
        }
        assert_eq!(decoded, blocks.concat());
    }

    #[test]
    fn zstd_blocks_concatenate_into_one_stream() {
        round_trip(
            Codec::Zstd,
            &[text(BLOCK_SIZE), noise(BLOCK_SIZE), text(1000), vec![]],
        );
    }

    #[test]
    fn gzip_members_concatenate_into_one_stream() {
        round_trip(
            Codec::Gzip,
            &[text(BLOCK_SIZE), noise(BLOCK_SIZE), text(1000)],
        );
    }

    #[test]
    fn a_damaged_stored_frame_is_refused_by_the_decoder() {
        let spec = CompressionSpec::new(Codec::Zstd, None).unwrap();
        let mut c = BlockCompressor::new(spec).unwrap();
        let mut out = Vec::new();
        c.compress(&noise(BLOCK_SIZE), &mut out).unwrap();
        assert!(out.len() > BLOCK_SIZE, "noise is stored, not compressed");
        out[BLOCK_SIZE / 2] ^= 1;
        let mut decoded = Vec::new();
        let result = zstd::stream::read::Decoder::new(&out[..])
            .unwrap()
            .read_to_end(&mut decoded);
        assert!(result.is_err(), "the content checksum catches the flip");
    }

    #[test]
    fn noise_is_stored_and_text_is_compressed() {
        let mut s = Sampler::new().unwrap();
        assert!(s.incompressible(&noise(BLOCK_SIZE)));
        assert!(!s.incompressible(&text(BLOCK_SIZE)));
    }
}
