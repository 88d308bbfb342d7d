//! Debian's i386 Linux on the PC, three ways: direct kernel boot (interpreted and with
//! the JIT compiling every block, which must print the same), an ISOLINUX CD and a
//! SYSLINUX hard disk (in the default tier; the guest writes to it through its IDE
//! driver). The images come from `scripts/guest-images` (run by the test command); the
//! initramfs's /init prints markers, a SHA-256 of 16 MiB of zeros and an awk result,
//! then powers off, which must end hospes with status 0.

mod guest;

use guest::{assert_disk_written, boot, finish, images, start};
use std::time::Instant;

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
    let Some(dir) = images() else { return };
    let out = finish(
        "disk",
        start(
            &dir,
            &["--hda", "linux-disk.img", "--boot", "c", "--snapshot"],
        ),
        Instant::now(),
    );
    assert_disk_written(&out);
}
