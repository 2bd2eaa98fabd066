//! Fingerprints of source checkpoint files, so an optimised folder can refuse a source that
//! changed since it was written instead of silently mixing new weights with an old graph.
//!
//! A fingerprint costs the same at 1 MB and at 100 GB: file metadata (size, inode, modification
//! time), a BLAKE3 hash of the safetensors header, and a BLAKE3 hash of [`SAMPLE_BLOCKS`]
//! blocks of [`SAMPLE_BLOCK`] bytes spread evenly over the file (the whole file when it is at
//! most [`WHOLE_FILE_BELOW`] bytes). Any metadata or header change is refused outright; the
//! samples catch in-place edits that keep the metadata (a rewrite with `touch -r`, a copy with
//! `cp -a` onto the same inode). Only a hash of every byte ([`Fingerprint::full`], recorded
//! where it is cheap or when asked for) catches an edit between samples; `--verify-source`
//! checks it.
//!
//! This module reads files only through `pread` on one opened handle, never maps them, and
//! never reads more than the header cap plus the samples unless a full hash is asked for.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::ImportError;

/// Blocks hashed from a large file.
pub const SAMPLE_BLOCKS: u64 = 256;
/// Bytes per sampled block.
pub const SAMPLE_BLOCK: u64 = 64 * 1024;
/// Files up to this size are hashed whole in the sample hash.
pub const WHOLE_FILE_BELOW: u64 = SAMPLE_BLOCKS * SAMPLE_BLOCK;
/// The largest safetensors header hashed (the safetensors crate refuses larger ones).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// What an optimised folder remembers of one source file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub bytes: u64,
    pub inode: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// BLAKE3 (hex) of the first `8 + header length` bytes.
    pub header_blake3: String,
    /// BLAKE3 (hex) of the sampled blocks (see the module docs).
    pub sample_blake3: String,
    /// BLAKE3 (hex) of every byte, when it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_blake3: Option<String>,
}

/// How much of a file to read when checking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Metadata, header and samples.
    Sampled,
    /// Also every byte (needs a recorded full hash).
    Full,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open(path: &Path) -> Result<(File, std::fs::Metadata), ImportError> {
    let file = File::open(path).map_err(io(path))?;
    let md = file.metadata().map_err(io(path))?;
    if !md.is_file() {
        return Err(ImportError::Config {
            file: path.to_path_buf(),
            msg: "is not a regular file".into(),
        });
    }
    Ok((file, md))
}

fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec()
}

fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ImportError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).map_err(io(path))?;
    Ok(buf)
}

fn header_hash(file: &File, path: &Path, len: u64) -> Result<String, ImportError> {
    let mut h = blake3::Hasher::new();
    if len >= 8 {
        let n = read_at(file, path, 0, 8)?;
        let header = u64::from_le_bytes(n.try_into().unwrap_or([0; 8]));
        let take = 8 + header.min(MAX_HEADER).min(len - 8);
        h.update(&read_at(file, path, 0, take)?);
    } else {
        h.update(&read_at(file, path, 0, len)?);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn sample_hash(file: &File, path: &Path, len: u64) -> Result<String, ImportError> {
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    if len <= WHOLE_FILE_BELOW {
        h.update(&read_at(file, path, 0, len)?);
    } else {
        // Evenly spaced, first and last block included.
        let last = len - SAMPLE_BLOCK;
        for i in 0..SAMPLE_BLOCKS {
            let offset = (last as u128 * i as u128 / (SAMPLE_BLOCKS - 1) as u128) as u64;
            h.update(&read_at(file, path, offset, SAMPLE_BLOCK)?);
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

fn full_hash(file: &File, path: &Path) -> Result<String, ImportError> {
    let mut h = blake3::Hasher::new();
    let mut reader = file;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

impl Fingerprint {
    /// Fingerprints the regular file at `path`; with `full`, also hashes every byte.
    pub fn of(path: &Path, full: bool) -> Result<Fingerprint, ImportError> {
        let (file, md) = open(path)?;
        let len = md.len();
        Ok(Fingerprint {
            bytes: len,
            inode: md.ino(),
            mtime_ns: mtime_ns(&md),
            header_blake3: header_hash(&file, path, len)?,
            sample_blake3: sample_hash(&file, path, len)?,
            full_blake3: if full {
                Some(full_hash(&file, path)?)
            } else {
                None
            },
        })
    }

    /// Checks the file at `path` against this fingerprint, cheapest test first; the error says
    /// which part differs (for the user, without the file's contents).
    pub fn check(&self, path: &Path, depth: Depth) -> Result<(), Mismatch> {
        let (file, md) = open(path).map_err(|e| Mismatch(e.to_string()))?;
        let err = |e: ImportError| Mismatch(e.to_string());
        let len = md.len();
        if len != self.bytes {
            return Err(Mismatch(format!(
                "size is {len} bytes, was {} bytes",
                self.bytes
            )));
        }
        if md.ino() != self.inode {
            return Err(Mismatch(format!(
                "it is another file (inode {}, was {}): copied or replaced",
                md.ino(),
                self.inode
            )));
        }
        if mtime_ns(&md) != self.mtime_ns {
            return Err(Mismatch("its modification time changed".into()));
        }
        if header_hash(&file, path, len).map_err(err)? != self.header_blake3 {
            return Err(Mismatch("its safetensors header changed".into()));
        }
        if sample_hash(&file, path, len).map_err(err)? != self.sample_blake3 {
            return Err(Mismatch(
                "its contents changed (sampled blocks differ)".into(),
            ));
        }
        if depth == Depth::Full {
            let Some(want) = &self.full_blake3 else {
                return Err(Mismatch(
                    "no hash of every byte was recorded when this folder was optimised \
                     (optimise again with --hash-source to record one)"
                        .into(),
                ));
            };
            if &full_hash(&file, path).map_err(err)? != want {
                return Err(Mismatch(
                    "its contents changed (the hash of every byte differs)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// How a file differs from its fingerprint, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
