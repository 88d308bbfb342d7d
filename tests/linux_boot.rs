//! Debian's i386 Linux on the PC, three ways: direct kernel boot (interpreted and with
//! the JIT compiling every block, which must print the same), an ISOLINUX CD and a
//! SYSLINUX hard disk (in the default tier). The images come from `scripts/guest-images` (run by the test
//! command); the initramfs's /init prints markers, a SHA-256 of 16 MiB of zeros and an
//! awk result, then powers off, which must end hospes with status 0.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest")
}

/// The images, or None (with one line saying so) when the set-up has not made them.
fn images() -> Option<PathBuf> {
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
const ZEROS_SHA256: &str = "080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e";
/// What the /init awk loop prints: sum of i % 7 for i < 200000.
fn awk_expected() -> u64 {
    (0..200_000u64).map(|i| i % 7).sum()
}

/// Starts `hospes run` on the guest images with `args`, its output captured.
fn start(dir: &Path, args: &[&str]) -> Child {
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
fn finish(name: &str, child: Child, start: Instant) -> Output {
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

fn boot(name: &str, args: &[&str]) {
    let Some(dir) = images() else { return };
    finish(name, start(&dir, args), Instant::now());
}

/// The line of the first difference between two outputs, for a failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  interp: {x}\n  jit:    {y}", i + 1);
        }
    }
    format!(
        "one output is a prefix of the other ({} and {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}

/// The direct kernel boot twice at once, interpreted and with every block compiled by
/// the JIT: both must pass, and the guest must not tell them apart. Guest time comes from
/// the instruction count and the RTC starts at a fixed date, so the serial output,
/// kernel timestamps included, must be the same byte for byte.
#[test]
fn linux_direct_kernel_boot_jit_matches_interpreter() {
    let Some(dir) = images() else { return };
    let args = |tier| {
        [
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.img",
            "--append",
            "console=ttyS0 panic=-1",
            "--rtc-start",
            "1764028800",
            "--jit-stats",
            "--tier",
            tier,
        ]
    };
    let t0 = Instant::now();
    let jit = start(&dir, &args("jit"));
    let interp = start(&dir, &args("interp"));
    let interp = finish("kernel, --tier interp", interp, t0);
    let jit = finish("kernel, --tier jit", jit, t0);
    let stats = String::from_utf8_lossy(&jit.stderr);
    let compiled: u64 = stats
        .split_once("JIT: ")
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no JIT counters on stderr: {stats}"));
    eprintln!("{}", stats.trim_end());
    assert!(compiled > 0, "the JIT compiled nothing: {stats}");
    assert!(
        interp.stdout == jit.stdout,
        "the serial output differs between the tiers: {}",
        first_difference(&interp.stdout, &jit.stdout)
    );
}

#[test]
fn linux_from_isolinux_cd() {
    boot("cdrom", &["--cdrom", "linux.iso", "--boot", "d"]);
}

#[test]
fn linux_from_syslinux_disk() {
    boot(
        "disk",
        &["--hda", "linux-disk.img", "--boot", "c", "--snapshot"],
    );
}

/// The same disk as a qcow2 image (converted by `qemu-img`, compressed clusters and
/// all), booted in the default tier with its writes kept in memory.
#[test]
fn linux_from_a_qcow2_copy_of_the_disk() {
    let Some(dir) = images() else { return };
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux_boot");
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let qcow2 = scratch.join("linux-disk.qcow2");
    let converted = Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(dir.join("linux-disk.img"))
        .arg(&qcow2)
        .status();
    match converted {
        Err(_) => {
            eprintln!("skipped: no qemu-img (scripts/guest-images installs qemu-utils)");
            return;
        }
        Ok(s) => assert!(s.success(), "qemu-img convert: {s:?}"),
    }
    let before = std::fs::read(&qcow2).expect("read the image");
    let path = qcow2.to_str().expect("a UTF-8 path");
    boot("qcow2 disk", &["--hda", path, "--boot", "c", "--snapshot"]);
    assert!(
        std::fs::read(&qcow2).expect("read the image") == before,
        "--snapshot wrote the image"
    );
}
