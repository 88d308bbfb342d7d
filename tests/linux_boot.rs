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

/// `vga=0x318` (VBE mode 118h, 1024x768x24): the setup code sets it through our VBE
/// BIOS, vesafb takes the linear framebuffer at the VGA's PCI BAR, and the kernel's
/// console is drawn there (light grey text on black in the screenshot at exit).
#[test]
fn linux_vesafb_with_vga_0x318() {
    let Some(dir) = images() else { return };
    let serial = boot_to_framebuffer_console(&dir, "vesafb", "vga=0x318");
    assert!(
        serial.contains("vesafb: mode is 1024x768x24, linelength=3072"),
        "{serial}"
    );
    assert!(
        serial.contains("vesafb: framebuffer at 0xe0000000"),
        "{serial}"
    );
}

/// Boots the kernel with `options` (that bring a framebuffer) and its console on tty0
/// and COM1; checks that the screenshot at exit shows the framebuffer console
/// ([`check_console_screenshot`]) and gives what COM1 printed.
fn boot_to_framebuffer_console(dir: &std::path::Path, name: &str, options: &str) -> String {
    let png_path = std::env::temp_dir().join(format!("hospes-{name}-{}.png", std::process::id()));
    let append = format!("console=tty0 console=ttyS0 {options} panic=-1");
    let out = finish(
        name,
        start(
            dir,
            &[
                "--kernel",
                "vmlinuz",
                "--initrd",
                "initrd.img",
                "--append",
                &append,
                "--screenshot-on-exit",
                png_path.to_str().unwrap(),
            ],
        ),
        Instant::now(),
    );
    check_console_screenshot(&png_path);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 1024x768 screenshot of the kernel's framebuffer console: light grey text on black,
/// and much of it.
fn check_console_screenshot(png_path: &std::path::Path) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).expect("png"));
    let mut reader = decoder.read_info().expect("png header");
    let mut rgb = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).expect("png data");
    let _ = std::fs::remove_file(png_path);
    assert_eq!((info.width, info.height), (1024, 768));
    let grey = rgb.chunks(3).filter(|p| p == &[0xAA, 0xAA, 0xAA]).count();
    let other = rgb
        .chunks(3)
        .filter(|p| p != &[0xAA, 0xAA, 0xAA] && p != &[0, 0, 0])
        .count();
    assert!(grey > 20_000, "only {grey} text pixels");
    assert_eq!(other, 0, "the console uses two colours");
}

/// The kernel's own driver for the VGA, bochs-drm (what a distribution's udev loads for
/// QEMU's std VGA): it finds the dispi interface and the framebuffer BAR, sets 1024x768
/// through the dispi ports, and the framebuffer console moves onto it.
#[test]
fn linux_bochs_drm_console() {
    let Some(dir) = images() else { return };
    let serial = boot_to_framebuffer_console(&dir, "bochs-drm", "hospes.drm");
    for line in [
        "[drm] Found bochs VGA, ID 0xb0c5.",
        "[drm] Framebuffer size 16384 kB @ 0xe0000000, ioports @ 0x1ce.",
        "[drm] fb0: bochs-drmdrmfb frame buffer device",
        "HOSPES-FB0 bochs-drmdrmfb 1024,768",
    ] {
        assert!(serial.contains(line), "no {line:?} in:\n{serial}");
    }
    assert!(!serial.contains("HOSPES-INSMOD-FAILED"), "{serial}");
}
