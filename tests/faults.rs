//! Faults while writing: a full disk, a read-only folder, a file-size limit, and a process
//! killed mid-write each leave no partial output where the output goes, keep an existing output
//! as it was, and leave the inputs untouched.
//!
//! Full and read-only file systems are small tmpfs mounts (the tests run as root, as CI does);
//! where mounting is not allowed those two tests say so and check nothing else. A killed
//! process cannot clean up: its temporary (`.NAME.XXXXXX.tmp`, never the output's own name)
//! may stay behind, which is documented in docs/RELIABILITY.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_attnopt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tmpfs of `kb` KiB at a fresh folder, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(kb: usize) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kb}k"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?
            .status
            .success();
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount_read_only(&self) {
        let o = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn golden() -> PathBuf {
    root().join("fixtures/bert/golden.safetensors")
}

fn run_to(out: &Path) -> Output {
    Command::new(bin())
        .args(["run", "fixtures/bert", "--all-layers", "-i"])
        .arg(golden())
        .arg("-o")
        .arg(out)
        .current_dir(root())
        .output()
        .unwrap()
}

fn optimize_to(out: &Path) -> Output {
    Command::new(bin())
        .args(["optimize", "fixtures/bert", "--standalone", "-o"])
        .arg(out)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_leaves_nothing_behind() {
    let Some(fs) = Tmpfs::new(64) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let input = std::fs::read(golden()).unwrap();
    // Fill the disk but for a few KiB: less than the outputs and the folder need.
    let filler = vec![0u8; 60 * 1024];
    let _ = std::fs::write(fs.path().join("filler"), &filler);
    let o = run_to(&fs.path().join("out.safetensors"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
    let o = optimize_to(&fs.path().join("opt"));
    assert!(!o.status.success(), "{}", stderr(&o));
    assert_eq!(names(fs.path()), ["filler"], "no output, no temporary");
    assert_eq!(std::fs::read(golden()).unwrap(), input);
}

#[test]
fn a_read_only_folder_is_an_error_and_keeps_what_is_there() {
    let Some(fs) = Tmpfs::new(1024) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let out = fs.path().join("out.safetensors");
    std::fs::write(&out, b"previous output").unwrap();
    fs.remount_read_only();
    let o = run_to(&out);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    let o = optimize_to(&fs.path().join("opt"));
    assert!(!o.status.success());
    assert_eq!(names(fs.path()), ["out.safetensors"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"previous output");
}

/// `sh -c 'ulimit -f BLOCKS; [trap "" XFSZ;] exec attnopt ...'`: a file-size limit below the
/// output's size. With SIGXFSZ ignored the write fails with EFBIG (a clean error); with it at
/// its default the process is killed mid-write.
fn limited(blocks: usize, ignore_signal: bool, out: &Path) -> Output {
    let trap = if ignore_signal { "trap '' XFSZ; " } else { "" };
    let script = format!(
        "ulimit -f {blocks}; {trap}exec \"$0\" run fixtures/bert --all-layers -i \"$1\" -o \"$2\""
    );
    Command::new("sh")
        .args(["-c", &script, bin()])
        .arg(golden())
        .arg(out)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn a_file_size_limit_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    std::fs::write(&out, b"previous output").unwrap();
    // The outputs with --all-layers are ~8 KB; 2 blocks is less in every shell's unit.
    let o = limited(2, true, &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert_eq!(
        names(tmp.path()),
        ["out.safetensors"],
        "the temporary is removed"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous output");
}

#[test]
fn a_process_killed_mid_write_keeps_the_previous_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    std::fs::write(&out, b"previous output").unwrap();
    let input = std::fs::read(golden()).unwrap();
    let o = limited(2, false, &out);
    assert!(!o.status.success());
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(25), "killed by SIGXFSZ: {o:?}");
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"previous output");
    assert_eq!(std::fs::read(golden()).unwrap(), input);
    // Whatever else is there is a recognisable temporary, never the output's name.
    for n in names(tmp.path()) {
        assert!(
            n == "out.safetensors" || (n.starts_with(".out.safetensors.") && n.ends_with(".tmp")),
            "{n}"
        );
    }
}
