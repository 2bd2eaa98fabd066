//! Source fingerprints: what the sampled check catches, what only the full hash catches, and
//! that reading them stays bounded on large files.

use std::os::unix::fs::FileExt;
use std::path::Path;

use attnopt_import::fingerprint::{Depth, Fingerprint, SAMPLE_BLOCK, WHOLE_FILE_BELOW};

/// A safetensors-like file: an 8-byte header length, a small header, then `len` data bytes.
fn write_file(path: &Path, len: usize) {
    let header = br#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend((0..len).map(|i| (i * 7 % 251) as u8));
    std::fs::write(path, bytes).unwrap();
}

/// Flips one byte at `offset`, keeping the modification time.
fn flip_keeping_mtime(path: &Path, offset: u64) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], offset).unwrap();
    f.set_modified(mtime).unwrap();
}

#[test]
fn small_files_are_hashed_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.safetensors");
    write_file(&p, 100_000);
    let fp = Fingerprint::of(&p, false).unwrap();
    assert_eq!(fp.check(&p, Depth::Sampled), Ok(()));
    flip_keeping_mtime(&p, 50_001);
    let e = fp.check(&p, Depth::Sampled).unwrap_err();
    assert!(e.0.contains("sampled blocks differ"), "{e}");
}

#[test]
fn header_edits_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.safetensors");
    write_file(&p, 1000);
    let fp = Fingerprint::of(&p, true).unwrap();
    flip_keeping_mtime(&p, 12);
    let e = fp.check(&p, Depth::Sampled).unwrap_err();
    assert!(e.0.contains("header changed"), "{e}");
}

#[test]
fn large_files_sample_and_the_full_hash_catches_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("big.safetensors");
    let len = (WHOLE_FILE_BELOW + 3 * SAMPLE_BLOCK + 12345) as usize;
    write_file(&p, len);
    let fp = Fingerprint::of(&p, true).unwrap();
    assert!(fp.full_blake3.is_some());
    assert_eq!(fp.check(&p, Depth::Full), Ok(()));

    // The last block is always sampled.
    let total = std::fs::metadata(&p).unwrap().len();
    flip_keeping_mtime(&p, total - 1);
    assert!(fp.check(&p, Depth::Sampled).is_err());
    flip_keeping_mtime(&p, total - 1);
    assert_eq!(fp.check(&p, Depth::Full), Ok(()));

    // Just past the first sampled block: only the hash of every byte sees it.
    flip_keeping_mtime(&p, SAMPLE_BLOCK + 10);
    assert_eq!(
        fp.check(&p, Depth::Sampled),
        Ok(()),
        "samples are a documented compromise"
    );
    let e = fp.check(&p, Depth::Full).unwrap_err();
    assert!(e.0.contains("hash of every byte differs"), "{e}");

    // Without a recorded full hash, --verify-source says how to get one.
    let sampled_only = Fingerprint::of(&p, false).unwrap();
    let e = sampled_only.check(&p, Depth::Full).unwrap_err();
    assert!(e.0.contains("--hash-source"), "{e}");
}

#[test]
fn size_and_kind_are_checked_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.safetensors");
    write_file(&p, 1000);
    let fp = Fingerprint::of(&p, false).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all_at(b"x", 5000)
        .unwrap();
    let e = fp.check(&p, Depth::Sampled).unwrap_err();
    assert!(e.0.contains("size is"), "{e}");
    assert!(Fingerprint::of(tmp.path(), false).is_err(), "a folder");
    assert!(
        Fingerprint::of(Path::new("/dev/null"), false).is_err(),
        "a device"
    );
}
