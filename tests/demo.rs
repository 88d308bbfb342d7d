//! `hospes` with no arguments runs the built-in demo guest: check its whole serial output,
//! and what it leaves on the screen (as text and as pixels drawn with the BIOS font).

use std::path::PathBuf;
use std::process::Command;

/// Lines the protected-mode kernel writes straight into the text buffer.
const KERNEL_LINES: [&str; 7] = [
    "  protected mode: 32-bit flat segments, CPL 0",
    "  paging: on, 4 KiB pages + a 4 MiB page; alias 0x80003000 -> 0x00003000 ok",
    "  primes below 100:",
    "    2 3 5 7 11 13 17 19 23 29 31 37 41 43 47 53 59 61 67 71 73 79 83 89 97",
    "  TSS and IDT loaded; IRET to ring 3",
    "  ring 3: hello from user mode, CPL=3, via INT 80h",
    "  ring 0: caught #PF from ring 3, CR2=0x00003000 error code=0x00000007",
];

#[test]
fn demo_guest_runs_to_completion() {
    // No graphical display, whatever the developer's session has: headless.
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run hospes");
    let stdout = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(
        out.status.success(),
        "exit status {:?}, stderr: {}\nstdout:\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = "\
hospes demo guest
  real mode: booted from hard disk 80h by the hospes BIOS
  CPUID vendor: GenuineIntel
  protected mode: 32-bit flat segments, CPL 0
  paging: on, 4 KiB pages + a 4 MiB page; alias 0x80003000 -> 0x00003000 ok
  primes below 100:
    2 3 5 7 11 13 17 19 23 29 31 37 41 43 47 53 59 61 67 71 73 79 83 89 97
  TSS and IDT loaded; IRET to ring 3
  ring 3: hello from user mode, CPL=3, via INT 80h
  ring 0: caught #PF from ring 3, CR2=0x00003000 error code=0x00000007
demo finished: powering off
";
    assert_eq!(stdout, expected);
}

#[test]
fn unknown_flag_is_one_line_and_nonzero() {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .arg("--no-such-flag")
        .output()
        .expect("run hospes");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("hospes: "), "stderr: {stderr}");
}

#[test]
fn missing_suite_is_one_line_and_nonzero() {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["conformance", "--suite", "/nonexistent/suite"])
        .output()
        .expect("run hospes");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.contains("/nonexistent/suite"), "stderr: {stderr}");
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hospes-demo-{}-{name}", std::process::id()))
}

#[test]
fn demo_guest_shows_on_the_screen() {
    let png_path = temp_path("screen.png");
    let text_path = temp_path("screen.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["demo", "--display", "none", "--screenshot-on-exit"])
        .arg(&png_path)
        .arg("--screen-text-on-exit")
        .arg(&text_path)
        .output()
        .expect("run hospes");
    assert!(out.status.success(), "{out:?}");

    // The text screen: the BIOS banner, the real-mode lines (INT 10h) and the kernel's.
    let text = std::fs::read_to_string(&text_path).expect("screen text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 25, "{text}");
    assert_eq!(lines[0], "hospes BIOS");
    assert_eq!(lines[1], "hospes demo guest");
    assert_eq!(
        lines[2],
        "  real mode: booted from hard disk 80h by the hospes BIOS"
    );
    assert_eq!(lines[3], "  CPUID vendor: GenuineIntel");
    assert_eq!(lines[4..11], KERNEL_LINES);
    assert_eq!(lines[11], "demo finished: powering off");
    assert!(lines[12..].iter().all(|l| l.is_empty()), "{text}");

    // The pixels: 80x25 cells of 9x16 in 720x400; each cell drawn from the BIOS's
    // 8x16 font, light grey (attribute 07h) for the real-mode text and light green
    // (0Ah) for the kernel's.
    let decoder = png::Decoder::new(std::fs::File::open(&png_path).expect("png"));
    let mut reader = decoder.read_info().expect("png header");
    let mut rgb = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).expect("png data");
    assert_eq!((info.width, info.height), (720, 400));
    let pixel = |x: usize, y: usize| {
        let i = (y * 720 + x) * 3;
        u32::from_be_bytes([0, rgb[i], rgb[i + 1], rgb[i + 2]])
    };
    let font = hospes_bios::font::font_8x16();
    let check_cell = |row: usize, col: usize, ch: u8, fg: u32| {
        for line in 0..16 {
            let bits = font[ch as usize * 16 + line];
            for x in 0..9 {
                let on = x < 8 && bits >> (7 - x) & 1 != 0;
                let want = if on { fg } else { 0 };
                let got = pixel(col * 9 + x, row * 16 + line);
                assert_eq!(
                    got, want,
                    "cell ({row},{col}) {:?} line {line} x {x}",
                    ch as char
                );
            }
        }
    };
    const GREY: u32 = 0xAAAAAA;
    const LIGHT_GREEN: u32 = 0x55FF55;
    for (col, ch) in "hospes demo guest".bytes().enumerate() {
        check_cell(1, col, ch, GREY);
    }
    for (col, ch) in KERNEL_LINES[0].bytes().enumerate() {
        check_cell(4, col, ch, LIGHT_GREEN);
    }
    // A glyph that is not blank really lit some pixels.
    assert!((0..16).any(|y| (0..8).any(|x| pixel(x, 16 + y) == GREY)));
    let _ = std::fs::remove_file(&png_path);
    let _ = std::fs::remove_file(&text_path);
}

#[test]
fn window_without_a_display_is_one_line_and_nonzero() {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["demo", "--display", "window"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run hospes");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.contains("cannot open a window"), "stderr: {stderr}");
}
