//! What the tests that boot the Linux guest images share: finding the images, running
//! hospes on them, and checking what the guest's /init printed.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest")
}

/// The images, or None (with one line saying so) when the set-up has not made them.
pub fn images() -> Option<PathBuf> {
    let dir = guest_dir();
    let needed = ["vmlinuz", "initrd.img", "linux.iso", "linux-disk.img"];
    if needed.iter().all(|f| dir.join(f).is_file()) {
        Some(dir)
    } else {
        eprintln!(
            "skipped: no guest images in {} (run scripts/guest-images)",
            dir.display()
        );
        None
    }
}

/// SHA-256 of 16 MiB of zeros, as `sha256sum` prints it.
pub const ZEROS_SHA256: &str = "080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e";
/// What the /init awk loop prints: sum of i % 7 for i < 200000.
pub fn awk_expected() -> u64 {
    (0..200_000u64).map(|i| i % 7).sum()
}

/// Starts `hospes run` on the guest images with `args`, its output captured.
pub fn start(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hospes"))
        .current_dir(dir)
        .arg("run")
        .args(["-m", "256", "--display", "none"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hospes")
}

/// Waits for a run and checks what /init printed and the exit status; returns the
/// serial output.
pub fn finish(name: &str, child: Child, start: Instant) -> Output {
    let out = child.wait_with_output().expect("wait for hospes");
    eprintln!("{name}: {:.1} s", start.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stdout
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let context = format!(
        "status {:?}\nstderr: {stderr}\nlast output:\n{tail}",
        out.status
    );
    for marker in ["HOSPES-INIT-START", "HOSPES-INIT-DONE"] {
        assert!(stdout.contains(marker), "{name}: no {marker}\n{context}");
    }
    let uname = stdout
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("HOSPES-UNAME "))
        .unwrap_or_else(|| panic!("{name}: no uname line\n{context}"));
    assert!(
        uname.starts_with("Linux ") && uname.contains("6.1.") && uname.contains("i686"),
        "{uname}"
    );
    let sha = stdout
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("HOSPES-SHA256 "))
        .unwrap_or_else(|| panic!("{name}: no hash line\n{context}"));
    assert!(sha.starts_with(ZEROS_SHA256), "{name}: hash {sha}");
    let awk = stdout
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("HOSPES-AWK "))
        .unwrap_or_else(|| panic!("{name}: no awk line\n{context}"));
    assert_eq!(awk.trim(), awk_expected().to_string(), "{name}");
    assert_eq!(out.status.code(), Some(0), "{name}: exit status\n{context}");
    out
}

pub fn boot(name: &str, args: &[&str]) {
    let Some(dir) = images() else { return };
    finish(name, start(&dir, args), Instant::now());
}

/// The bytes /init writes to the disk at [`DISK_PATTERN_AT`] with `hospes.disk` on its
/// command line (the SYSLINUX disk has it): `yes HOSPES-DISK-PATTERN | head -c 1M`.
pub fn disk_pattern() -> Vec<u8> {
    b"HOSPES-DISK-PATTERN\n"
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect()
}

/// Where /init writes [`disk_pattern`]: 62 MiB into the disk.
pub const DISK_PATTERN_AT: usize = 62 << 20;

/// Checks that the guest wrote the pattern through its IDE driver and read it back
/// (after dropping its caches) as written.
pub fn assert_disk_written(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("HOSPES-DISK "))
        .unwrap_or_else(|| panic!("no HOSPES-DISK line: the guest found no disk to write"));
    assert!(
        line.starts_with(DISK_PATTERN_SHA256),
        "the guest read back {line}"
    );
}

/// SHA-256 of [`disk_pattern`], as `sha256sum` prints it.
pub const DISK_PATTERN_SHA256: &str =
    "61d6773f6803264d6f4d20079257cb67d78c9c5f7f0cac1f89f4cc894d91ca96";
