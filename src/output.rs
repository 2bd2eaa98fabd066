//! Safe output writes: every file and folder attnopt writes goes through here.
//!
//! What holds for every output:
//! - it is assembled under an unpredictable temporary name beside the target, created with
//!   `O_EXCL` (the `tempfile` crate), so a planted file or symlink at a guessable name can
//!   neither receive the data nor be replaced by it;
//! - it replaces only a regular file or nothing: a symlink, device, FIFO, socket or folder at
//!   the target is refused (`-o /dev/null` never replaces `/dev/null`);
//! - it never replaces one of the command's inputs ([`Inputs`]: the checkpoint's files, its
//!   config, an input tensor file), compared by device and inode, so hard links and other
//!   spellings of the same path are caught;
//! - it appears whole or not at all: the data is synced before a rename, and a failure removes
//!   the temporary.
//!
//! Folders (an optimised model) are written by [`write_dir`], which replaces an existing folder
//! only when the caller's `replaceable` check accepts it, and keeps the old folder until the new
//! one is in place.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// Files a command reads, which its outputs must never replace.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// (device, inode, path as given) of each input that exists.
    files: Vec<(u64, u64, PathBuf)>,
}

impl Inputs {
    pub fn new() -> Inputs {
        Inputs::default()
    }

    /// Adds `path` (followed through symlinks) if it exists.
    pub fn add(&mut self, path: &Path) {
        if let Ok(md) = std::fs::metadata(path) {
            self.files.push((md.dev(), md.ino(), path.to_path_buf()));
        }
    }

    /// The same set plus `path`.
    pub fn with(mut self, path: &Path) -> Inputs {
        self.add(path);
        self
    }

    /// The input `md` is, if any.
    fn find(&self, md: &std::fs::Metadata) -> Option<&Path> {
        self.files
            .iter()
            .find(|(dev, ino, _)| *dev == md.dev() && *ino == md.ino())
            .map(|(_, _, p)| p.as_path())
    }
}

fn refuse(path: &Path, msg: impl Into<String>) -> Error {
    Error::Usage {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What sits at `path`, without following a symlink there.
fn what_is(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Checks that a file may be written at `path`: nothing there, or a regular file that is not
/// one of `inputs`.
pub fn check_file_target(path: &Path, inputs: &Inputs) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
        Ok(md) if !md.file_type().is_file() => Err(refuse(
            path,
            format!(
                "is {}; attnopt only replaces regular files (choose another output path)",
                what_is(&md)
            ),
        )),
        Ok(md) => match inputs.find(&md) {
            Some(input) if input == path => Err(refuse(
                path,
                "is one of this command's inputs; choose another output path",
            )),
            Some(input) => Err(refuse(
                path,
                format!(
                    "is one of this command's inputs (the same file as {}); choose another \
                     output path",
                    input.display()
                ),
            )),
            None => Ok(()),
        },
    }
}

/// The folder a target lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `.NAME.` — the prefix of temporaries for `path`, so a left-over one is recognisable.
fn temp_prefix(path: &Path) -> Result<String, Error> {
    let name = path
        .file_name()
        .ok_or_else(|| refuse(path, "is not a file name"))?;
    Ok(format!(".{}.", name.to_string_lossy()))
}

/// Syncs a folder so a rename in it survives a crash (best effort: not every file system
/// supports it).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `data` to the file `path`, safely (see the module docs).
pub fn write_file(path: &Path, data: &[u8], inputs: &Inputs) -> Result<(), Error> {
    check_file_target(path, inputs)?;
    let dir = parent_of(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path)?)
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(data).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    // Look again just before the rename: the target may have changed while we wrote.
    check_file_target(path, inputs)?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Writes the folder `out`: `fill` writes into a fresh private folder, `check` inspects the
/// result, and only then is it renamed into place. An existing `out` is replaced only when it
/// is a real folder (not a symlink) and `replaceable` accepts it; it is kept until the new
/// folder is in place, and restored if that fails.
pub fn write_dir<T>(
    out: &Path,
    replaceable: impl Fn(&Path) -> Result<(), Error>,
    fill: impl FnOnce(&Path) -> Result<T, Error>,
    check: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<T, Error> {
    let existing = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(out)(e)),
        Ok(md) if md.file_type().is_dir() => {
            replaceable(out)?;
            true
        }
        Ok(md) => {
            return Err(refuse(
                out,
                format!(
                    "is {}; the output must be a new folder or one attnopt wrote",
                    what_is(&md)
                ),
            ))
        }
    };
    let parent = parent_of(out);
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let prefix = temp_prefix(out)?;
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o777))
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let value = fill(tmp.path())?;
    check(tmp.path())?;
    if existing {
        // Move the old folder aside (onto an empty folder of our own), put the new one in
        // place, then delete the old one; put it back if the second rename fails.
        let old = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".old")
            .tempdir_in(parent)
            .map_err(io(parent))?;
        replaceable(out)?;
        std::fs::rename(out, old.path()).map_err(io(out))?;
        if let Err(e) = std::fs::rename(tmp.path(), out) {
            let _ = std::fs::rename(old.path(), out);
            return Err(io(out)(e));
        }
        // `old` now holds the replaced folder; dropping it deletes it.
        drop(old);
    } else {
        let tmp_path = tmp.path().to_path_buf();
        std::fs::rename(&tmp_path, out).map_err(io(out))?;
    }
    // The temporary folder's name is gone; don't let its guard try to delete it.
    let _ = tmp.keep();
    sync_dir(parent);
    Ok(value)
}
