//! Graphics through the BIOS, checked pixel by pixel in the screenshot a run leaves:
//! VGA mode 13h (INT 10h pixels, direct chain-4 writes, a DAC entry), mode 12h (INT 10h
//! pixels, write mode 2 through the bit mask, a latched copy in write mode 1), and VBE
//! modes over the Bochs dispi interface (4F00h/4F01h/4F02h, the linear framebuffer at
//! the VGA's PCI BAR reached from unreal mode, and a bank through A0000h), the VBE
//! protected-mode interface (4F0Ah) called from 32-bit code, and 80x50 text.

use iced_x86::code_asm::*;
use std::path::PathBuf;
use std::process::Command;

fn temp_path(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("graphics-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A picture from a PNG screenshot.
struct Shot {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Shot {
    fn pixel(&self, x: usize, y: usize) -> u32 {
        assert!(x < self.width && y < self.height);
        let i = (y * self.width + x) * 3;
        u32::from_be_bytes([0, self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }
}

fn out_byte(a: &mut CodeAssembler, b: u8) {
    a.mov(dx, 0x3F8u32).unwrap();
    a.mov(al, b as u32).unwrap();
    a.out(dx, al).unwrap();
}

/// Boots a sector holding `body` (16-bit code at 0000:7C00 with DS = ES = 0 and a
/// `fail` label to jump to), which prints "OK" on COM1 unless it failed, then powers
/// off; returns what COM1 printed and the screen at exit.
fn run(name: &str, body: &dyn Fn(&mut CodeAssembler, CodeLabel)) -> (String, Shot) {
    run_with(name, &[], body)
}

/// [`run`] with more arguments for `hospes run` (another firmware).
fn run_with(
    name: &str,
    extra: &[&str],
    body: &dyn Fn(&mut CodeAssembler, CodeLabel),
) -> (String, Shot) {
    run_disk(name, extra, body, &[])
}

/// [`run_with`], with `second_sector` in the disk's second sector (for the program to
/// load itself).
fn run_disk(
    name: &str,
    extra: &[&str],
    body: &dyn Fn(&mut CodeAssembler, CodeLabel),
    second_sector: &[u8],
) -> (String, Shot) {
    let mut a = CodeAssembler::new(16).unwrap();
    let fail = a.create_label();
    let mut fail_at = fail;
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7C00u32).unwrap();
    body(&mut a, fail);
    out_byte(&mut a, b'O');
    out_byte(&mut a, b'K');
    let mut off = a.create_label();
    a.jmp(off).unwrap();
    a.set_label(&mut fail_at).unwrap();
    for b in *b"FAIL" {
        out_byte(&mut a, b);
    }
    a.set_label(&mut off).unwrap();
    a.mov(dx, 0x604u32).unwrap();
    a.mov(ax, 0x3400u32).unwrap();
    a.out(dx, ax).unwrap();
    a.hlt().unwrap();
    let mut code = a.assemble(0x7C00).unwrap();
    assert!(code.len() <= 510, "boot program too long: {}", code.len());
    code.resize(512, 0);
    code[510] = 0x55;
    code[511] = 0xAA;
    let disk = temp_path(&format!("{name}.img"));
    let mut img = code;
    assert!(second_sector.len() <= 512);
    img.extend_from_slice(second_sector);
    img.resize(1 << 20, 0);
    std::fs::write(&disk, img).unwrap();
    let png_path = temp_path(&format!("{name}.png"));
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["run", "--hda"])
        .arg(&disk)
        .args(["--boot", "c", "-m", "32", "--display", "none"])
        .args(extra)
        .arg("--screenshot-on-exit")
        .arg(&png_path)
        .output()
        .expect("run hospes");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let decoder = png::Decoder::new(std::fs::File::open(&png_path).expect("png"));
    let mut reader = decoder.read_info().expect("png header");
    let mut rgb = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).expect("png data");
    let shot = Shot {
        width: info.width as usize,
        height: info.height as usize,
        rgb,
    };
    (stdout, shot)
}

/// INT 10h AH=0Ch: colour `c` at (x, y).
fn put_pixel(a: &mut CodeAssembler, x: u16, y: u16, c: u8) {
    a.mov(ax, 0x0C00u32 | c as u32).unwrap();
    a.xor(bx, bx).unwrap();
    a.mov(cx, x as u32).unwrap();
    a.mov(dx, y as u32).unwrap();
    a.int(0x10).unwrap();
}

/// INT 10h AH=0Dh at (x, y) must give `c`.
fn check_pixel(a: &mut CodeAssembler, x: u16, y: u16, c: u8, fail: CodeLabel) {
    a.mov(ax, 0x0D00u32).unwrap();
    a.xor(bx, bx).unwrap();
    a.mov(cx, x as u32).unwrap();
    a.mov(dx, y as u32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(al, c as u32).unwrap();
    a.jne(fail).unwrap();
}

fn gc(a: &mut CodeAssembler, index: u8, v: u8) {
    a.mov(dx, 0x3CEu32).unwrap();
    a.mov(ax, (v as u32) << 8 | index as u32).unwrap();
    a.out(dx, ax).unwrap();
}

#[test]
fn mode_13h_pixels_and_palette() {
    let (out, shot) = run("mode13", &mode_13h_program);
    check_mode_13h(&out, &shot);
}

fn mode_13h_program(a: &mut CodeAssembler, fail: CodeLabel) {
    {
        a.mov(ax, 0x0013u32).unwrap();
        a.int(0x10).unwrap();
        a.mov(ah, 0x0F).unwrap();
        a.int(0x10).unwrap();
        a.cmp(ax, 0x2813u32).unwrap(); // 40 columns, mode 13h
        a.jne(fail).unwrap();
        put_pixel(a, 10, 20, 4); // red in the default palette
        put_pixel(a, 319, 199, 15);
        // DAC entry 80h = (3Fh, 20h, 00h), then a direct write at (7, 5).
        a.mov(dx, 0x3C8u32).unwrap();
        a.mov(al, 0x80).unwrap();
        a.out(dx, al).unwrap();
        a.inc(dx).unwrap();
        for c in [0x3Fu32, 0x20, 0x00] {
            a.mov(al, c).unwrap();
            a.out(dx, al).unwrap();
        }
        a.mov(ax, 0xA000u32).unwrap();
        a.mov(es, ax).unwrap();
        a.mov(byte_ptr(5 * 320 + 7).es(), 0x80u32).unwrap();
        check_pixel(a, 7, 5, 0x80, fail);
        check_pixel(a, 10, 20, 4, fail);
        check_pixel(a, 11, 20, 0, fail);
    }
}

fn check_mode_13h(out: &str, shot: &Shot) {
    assert_eq!(out, "OK");
    assert_eq!((shot.width, shot.height), (320, 200));
    assert_eq!(shot.pixel(10, 20), 0xAA0000);
    assert_eq!(shot.pixel(319, 199), 0xFFFFFF);
    assert_eq!(shot.pixel(7, 5), 0xFF8200);
    for (x, y) in [(0, 0), (11, 20), (9, 20), (10, 19), (8, 5), (318, 199)] {
        assert_eq!(shot.pixel(x, y), 0, "({x}, {y})");
    }
}

#[test]
fn mode_12h_write_modes_and_latched_copy() {
    let (out, shot) = run("mode12", &mode_12h_program);
    check_mode_12h(&out, &shot);
}

fn mode_12h_program(a: &mut CodeAssembler, fail: CodeLabel) {
    {
        a.mov(ax, 0x0012u32).unwrap();
        a.int(0x10).unwrap();
        put_pixel(a, 100, 50, 0x0E); // yellow
        put_pixel(a, 639, 479, 0x0C);
        put_pixel(a, 639, 479, 0x80 | 0x06); // XOR: 0Ch ^ 06h = 0Ah
        check_pixel(a, 100, 50, 0x0E, fail);
        check_pixel(a, 639, 479, 0x0A, fail);
        check_pixel(a, 101, 50, 0, fail);
        // Write mode 2, bit mask F0h: light blue at x 16-19 of line 10.
        a.mov(ax, 0xA000u32).unwrap();
        a.mov(es, ax).unwrap();
        gc(a, 5, 0x02);
        gc(a, 8, 0xF0);
        a.mov(al, byte_ptr(10 * 80 + 2).es()).unwrap();
        a.mov(byte_ptr(10 * 80 + 2).es(), 0x09u32).unwrap();
        // Write mode 1: the latches of that byte to x 40-47 of line 30.
        gc(a, 8, 0xFF);
        gc(a, 5, 0x01);
        a.mov(al, byte_ptr(10 * 80 + 2).es()).unwrap();
        a.mov(byte_ptr(30 * 80 + 5).es(), al).unwrap();
        gc(a, 5, 0x00);
        check_pixel(a, 41, 30, 0x09, fail);
        check_pixel(a, 45, 30, 0, fail);
    }
}

fn check_mode_12h(out: &str, shot: &Shot) {
    assert_eq!(out, "OK");
    assert_eq!((shot.width, shot.height), (640, 480));
    const YELLOW: u32 = 0xFFFF55;
    const LIGHT_BLUE: u32 = 0x5555FF;
    const LIGHT_GREEN: u32 = 0x55FF55;
    assert_eq!(shot.pixel(100, 50), YELLOW);
    assert_eq!(shot.pixel(639, 479), LIGHT_GREEN);
    for x in 0..64 {
        let in_run = (16..20).contains(&x);
        let want = if in_run { LIGHT_BLUE } else { 0 };
        assert_eq!(shot.pixel(x, 10), want, "write mode 2, x {x}");
        let copied = (40..44).contains(&x);
        let want = if copied { LIGHT_BLUE } else { 0 };
        assert_eq!(shot.pixel(x, 30), want, "latched copy, x {x}");
    }
    assert_eq!(shot.pixel(99, 50), 0);
    assert_eq!(shot.pixel(100, 51), 0);
}

/// Sets VBE mode `mode` with the linear framebuffer after checking the controller and
/// mode information, then enters unreal mode (DS with a 4 GiB limit) and leaves ESI at
/// the framebuffer.
fn vbe_setup(a: &mut CodeAssembler, mode: u16, bpp: u8, fail: CodeLabel) {
    // 4F00h with "VBE2" at 0000:8000.
    a.mov(dword_ptr(0x8000u32), u32::from_le_bytes(*b"VBE2"))
        .unwrap();
    a.mov(di, 0x8000u32).unwrap();
    a.mov(ax, 0x4F00u32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
    a.cmp(dword_ptr(0x8000u32), u32::from_le_bytes(*b"VESA"))
        .unwrap();
    a.jne(fail).unwrap();
    // 4F01h at 0000:9000: bpp and the LFB address.
    a.mov(di, 0x9000u32).unwrap();
    a.mov(cx, mode as u32).unwrap();
    a.mov(ax, 0x4F01u32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
    a.cmp(byte_ptr(0x9019u32), bpp as u32).unwrap();
    a.jne(fail).unwrap();
    a.mov(esi, dword_ptr(0x9028u32)).unwrap();
    a.mov(ax, 0x4F02u32).unwrap();
    a.mov(bx, 0x4000u32 | mode as u32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
    a.mov(ax, 0x4F03u32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(bx, 0x4000u32 | mode as u32).unwrap();
    a.jne(fail).unwrap();
}

/// Unreal mode: DS loaded in protected mode from a flat 4 GiB descriptor, kept after
/// going back to real mode. The GDT is built at 0000:0600.
fn unreal(a: &mut CodeAssembler) {
    a.mov(dword_ptr(0x600u32), 0u32).unwrap();
    a.mov(dword_ptr(0x604u32), 0u32).unwrap();
    a.mov(dword_ptr(0x608u32), 0x0000_FFFFu32).unwrap();
    a.mov(dword_ptr(0x60Cu32), 0x00CF_9200u32).unwrap();
    a.mov(word_ptr(0x610u32), 15u32).unwrap();
    a.mov(dword_ptr(0x612u32), 0x600u32).unwrap();
    a.lgdt(word_ptr(0x610u32)).unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(al, 1).unwrap();
    a.mov(cr0, eax).unwrap();
    a.mov(bx, 0x08u32).unwrap();
    a.mov(ds, bx).unwrap();
    a.and(al, 0xFE).unwrap();
    a.mov(cr0, eax).unwrap();
}

#[test]
fn vbe_32bpp_linear_framebuffer() {
    let (out, shot) = run("vbe32", &vbe_32bpp_program);
    check_vbe_32bpp(&out, &shot);
}

fn vbe_32bpp_program(a: &mut CodeAssembler, fail: CodeLabel) {
    {
        vbe_setup(a, 0x142, 32, fail);
        unreal(a);
        // (3, 2) red, (639, 479) green, (100, 0) 123456h.
        a.mov(dword_ptr(esi + (2 * 640 + 3) * 4), 0x00FF_0000u32)
            .unwrap();
        a.mov(dword_ptr(esi + (479 * 640 + 639) * 4), 0x0000_FF00u32)
            .unwrap();
        a.mov(dword_ptr(esi + 100 * 4), 0x0012_3456u32).unwrap();
    }
}

fn check_vbe_32bpp(out: &str, shot: &Shot) {
    assert_eq!(out, "OK");
    assert_eq!((shot.width, shot.height), (640, 480));
    assert_eq!(shot.pixel(3, 2), 0xFF0000);
    assert_eq!(shot.pixel(639, 479), 0x00FF00);
    assert_eq!(shot.pixel(100, 0), 0x123456);
    for (x, y) in [(0, 0), (4, 2), (2, 2), (3, 1), (638, 479), (101, 0)] {
        assert_eq!(shot.pixel(x, y), 0, "({x}, {y})");
    }
}

#[test]
fn vbe_16bpp_linear_and_banked() {
    let (out, shot) = run("vbe16", &vbe_16bpp_program);
    check_vbe_16bpp(&out, &shot);
}

fn vbe_16bpp_program(a: &mut CodeAssembler, fail: CodeLabel) {
    {
        vbe_setup(a, 0x111, 16, fail);
        // No windows in a mode set with the linear framebuffer (ours answers 034Fh).
        a.mov(ax, 0x4F05u32).unwrap();
        a.xor(bx, bx).unwrap();
        a.mov(dx, 1u32).unwrap();
        a.int(0x10).unwrap();
        a.cmp(ax, 0x004Fu32).unwrap();
        a.je(fail).unwrap();
        unreal(a);
        a.mov(word_ptr(esi + (10 * 640 + 20) * 2), 0xF800u32)
            .unwrap(); // red
        a.mov(word_ptr(esi + (10 * 640 + 21) * 2), 0x07E0u32)
            .unwrap(); // green
        a.mov(word_ptr(esi + (10 * 640 + 22) * 2), 0xFFFFu32)
            .unwrap();
        // The same mode, banked, keeping memory (bit 15).
        a.mov(ax, 0x4F02u32).unwrap();
        a.mov(bx, 0x8111u32).unwrap();
        a.int(0x10).unwrap();
        a.cmp(ax, 0x004Fu32).unwrap();
        a.jne(fail).unwrap();
        // Bank 1 through 4F05h: offset 10000h is pixel 32768 = (128, 51).
        a.mov(ax, 0x4F05u32).unwrap();
        a.xor(bx, bx).unwrap();
        a.mov(dx, 1u32).unwrap();
        a.int(0x10).unwrap();
        a.cmp(ax, 0x004Fu32).unwrap();
        a.jne(fail).unwrap();
        a.mov(ax, 0xA000u32).unwrap();
        a.mov(es, ax).unwrap();
        a.mov(word_ptr(0u32).es(), 0x001Fu32).unwrap(); // blue
    }
}

fn check_vbe_16bpp(out: &str, shot: &Shot) {
    assert_eq!(out, "OK");
    assert_eq!((shot.width, shot.height), (640, 480));
    assert_eq!(shot.pixel(20, 10), 0xFF0000);
    assert_eq!(shot.pixel(21, 10), 0x00FF00);
    assert_eq!(shot.pixel(22, 10), 0xFFFFFF);
    assert_eq!(shot.pixel(128, 51), 0x0000FF);
    for (x, y) in [(19, 10), (23, 10), (20, 11), (127, 51), (129, 51)] {
        assert_eq!(shot.pixel(x, y), 0, "({x}, {y})");
    }
}

/// The VGA and VBE programs under SeaBIOS with SeaVGABIOS for QEMU's "std" VGA: the
/// hardware must give another BIOS the same pictures. (SeaBIOS moves the framebuffer's
/// BAR; SeaVGABIOS, run as the VGA's PCI ROM, finds it there.)
#[test]
fn seavgabios_stdvga_draws_the_same_vga_and_vbe_modes() {
    const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
    const STDVGA: &str = "/usr/share/seabios/vgabios-stdvga.bin";
    if !(std::path::Path::new(SEABIOS).is_file() && std::path::Path::new(STDVGA).is_file()) {
        eprintln!("skipped: no {SEABIOS} or {STDVGA} (Debian's seabios package)");
        return;
    }
    let args = ["--bios", SEABIOS, "--vga-bios", STDVGA];
    let (out, shot) = run_with("sea-mode13", &args, &mode_13h_program);
    check_mode_13h(&out, &shot);
    let (out, shot) = run_with("sea-mode12", &args, &mode_12h_program);
    check_mode_12h(&out, &shot);
    let (out, shot) = run_with("sea-vbe32", &args, &vbe_32bpp_program);
    check_vbe_32bpp(&out, &shot);
    let (out, shot) = run_with("sea-vbe16", &args, &vbe_16bpp_program);
    check_vbe_16bpp(&out, &shot);
}

#[test]
fn text_80x50_with_the_8x8_font() {
    let (out, shot) = run("text80x50", &text_80x50_program);
    assert_eq!(out, "OK");
    // 80 columns of 9 pixels, 50 rows of 8 scan lines: still 720x400.
    assert_eq!((shot.width, shot.height), (720, 400));
    let font = hospes_bios::font::font_8x8();
    const GREY: u32 = 0xAAAAAA;
    // The BIOS banner stayed in memory (now drawn with the 8x8 font) and the program
    // wrote "Z49" on the last of the 50 rows.
    let cells = [
        (0, 0, b'h'),
        (0, 1, b'o'),
        (49, 0, b'Z'),
        (49, 1, b'4'),
        (49, 2, b'9'),
    ];
    for (row, col, glyph) in cells {
        for line in 0..8 {
            let bits = font[glyph as usize * 8 + line];
            for x in 0..9 {
                let on = x < 8 && bits >> (7 - x) & 1 != 0;
                let want = if on { GREY } else { 0 };
                let got = shot.pixel(col * 9 + x, row * 8 + line);
                assert_eq!(
                    got, want,
                    "cell ({row},{col}) {:?} line {line} x {x}",
                    glyph as char
                );
            }
        }
    }
}

/// AX=1112h (the 8x8 font: 50 rows), AX=1130h must then report 8 scan lines and 50
/// rows; the cursor goes to row 49 and AH=0Eh writes there.
fn text_80x50_program(a: &mut CodeAssembler, fail: CodeLabel) {
    a.mov(ax, 0x1112u32).unwrap();
    a.xor(bl, bl).unwrap();
    a.int(0x10).unwrap();
    a.mov(ax, 0x1130u32).unwrap();
    a.xor(bh, bh).unwrap();
    a.int(0x10).unwrap();
    a.cmp(cx, 8u32).unwrap();
    a.jne(fail).unwrap();
    a.cmp(dl, 49u32).unwrap();
    a.jne(fail).unwrap();
    a.mov(ah, 0x02u32).unwrap();
    a.xor(bh, bh).unwrap();
    a.mov(dx, 49u32 << 8).unwrap();
    a.int(0x10).unwrap();
    for byte in *b"Z49" {
        a.mov(ax, 0x0E00u32 | byte as u32).unwrap();
        a.mov(bx, 7u32).unwrap();
        a.int(0x10).unwrap();
    }
    // The cursor moved along row 49.
    a.mov(ah, 0x03u32).unwrap();
    a.xor(bh, bh).unwrap();
    a.int(0x10).unwrap();
    a.cmp(dx, (49u32 << 8) | 3).unwrap();
    a.jne(fail).unwrap();
}

#[test]
fn vbe_protected_mode_interface() {
    let (out, shot) = run_disk("vbe-pm", &[], &vbe_pm_caller, &vbe_pm_program());
    assert_eq!(out, "OK");
    assert_eq!((shot.width, shot.height), (640, 480));
    // DAC entry 5 = (20h, 00h, 3Fh) in 6 bits, set through the 32-bit palette code; the
    // pixel written on line 2 shows on line 1, the display start being one line down.
    assert_eq!(shot.pixel(10, 1), 0x8200FF);
    assert_eq!(shot.pixel(10, 2), 0);
    assert_eq!(shot.pixel(11, 1), 0);
}

/// Where the table's real-mode address and the framebuffer address are kept.
const PM_TABLE: u32 = 0x6F0;
const PM_LFB: u32 = 0x6F4;
/// The program's 32-bit half, loaded from the second sector.
const PM_CODE: u32 = 0x7E00;

/// 16-bit half: asks for the protected-mode interface (4F0Ah), sets 640x480x8 with the
/// linear framebuffer, loads the second sector and enters 32-bit protected mode there.
fn vbe_pm_caller(a: &mut CodeAssembler, fail: CodeLabel) {
    a.mov(ax, 0x4F0Au32).unwrap();
    a.xor(bx, bx).unwrap();
    a.int(0x10).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
    a.mov(ax, es).unwrap();
    a.movzx(eax, ax).unwrap();
    a.shl(eax, 4).unwrap();
    a.movzx(edi, di).unwrap();
    a.add(eax, edi).unwrap();
    a.mov(dword_ptr(PM_TABLE), eax).unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(es, ax).unwrap();
    vbe_setup(a, 0x101, 8, fail);
    a.mov(dword_ptr(PM_LFB), esi).unwrap();
    // The second sector to 0000:7E00 (DL is still the boot drive? ask for 80h).
    a.mov(ax, 0x0201u32).unwrap();
    a.mov(bx, PM_CODE).unwrap();
    a.mov(cx, 0x0002u32).unwrap();
    a.mov(dx, 0x0080u32).unwrap();
    a.int(0x13).unwrap();
    a.jc(fail).unwrap();
    // GDT at 0600h: null, 08h flat 32-bit code, 10h flat data.
    a.mov(dword_ptr(0x600u32), 0u32).unwrap();
    a.mov(dword_ptr(0x604u32), 0u32).unwrap();
    a.mov(dword_ptr(0x608u32), 0x0000_FFFFu32).unwrap();
    a.mov(dword_ptr(0x60Cu32), 0x00CF_9A00u32).unwrap();
    a.mov(dword_ptr(0x610u32), 0x0000_FFFFu32).unwrap();
    a.mov(dword_ptr(0x614u32), 0x00CF_9200u32).unwrap();
    a.mov(word_ptr(0x620u32), 23u32).unwrap();
    a.mov(dword_ptr(0x622u32), 0x600u32).unwrap();
    a.cli().unwrap();
    a.lgdt(word_ptr(0x620u32)).unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(al, 1).unwrap();
    a.mov(cr0, eax).unwrap();
    // JMP FAR 0008h:00007E00h (32-bit offset).
    let mut far = vec![0x66, 0xEA];
    far.extend_from_slice(&PM_CODE.to_le_bytes());
    far.extend_from_slice(&8u16.to_le_bytes());
    a.db(&far).unwrap();
}

/// 32-bit half: palette entry 5 through the table's 4F09h code, the display start one
/// line (640 bytes) down through its 4F07h code, then colour 5 at (10, 2) of the
/// framebuffer; "OK" or "FAIL" on COM1, and power off.
fn vbe_pm_program() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    let mut report = a.create_label();
    a.mov(ax, 0x10u32).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(esp, 0x7000u32).unwrap();
    a.mov(esi, dword_ptr(PM_TABLE)).unwrap();
    // The port list (at the table's fourth offset) starts with the dispi index port.
    a.movzx(ebp, word_ptr(esi + 6)).unwrap();
    a.cmp(word_ptr(esi + ebp), 0x1CEu32).unwrap();
    a.jne(fail).unwrap();
    a.mov(dword_ptr(0x700u32), 0x0020_003Fu32).unwrap();
    a.movzx(ebp, word_ptr(esi + 4)).unwrap();
    a.add(ebp, esi).unwrap();
    a.mov(eax, 0x4F09u32).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.mov(ecx, 1u32).unwrap();
    a.mov(edx, 5u32).unwrap();
    a.mov(edi, 0x700u32).unwrap();
    a.call(ebp).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
    a.cmp(edi, 0x700u32).unwrap();
    a.jne(fail).unwrap();
    a.movzx(ebp, word_ptr(esi + 2)).unwrap();
    a.add(ebp, esi).unwrap();
    a.mov(eax, 0x4F07u32).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.mov(ecx, 640u32 / 4).unwrap();
    a.xor(edx, edx).unwrap();
    a.call(ebp).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
    a.mov(edi, dword_ptr(PM_LFB)).unwrap();
    a.mov(byte_ptr(edi + 2 * 640 + 10), 5u32).unwrap();
    a.mov(esi, PM_CODE + 0x1F0).unwrap();
    a.jmp(report).unwrap();
    a.set_label(&mut fail).unwrap();
    a.mov(esi, PM_CODE + 0x1F4).unwrap();
    // Print the NUL-terminated string at ESI on COM1, then power off.
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut report).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.set_label(&mut next).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(next).unwrap();
    a.set_label(&mut done).unwrap();
    a.mov(dx, 0x604u32).unwrap();
    a.mov(ax, 0x3400u32).unwrap();
    a.out(dx, ax).unwrap();
    a.hlt().unwrap();
    let mut code = a.assemble(PM_CODE as u64).unwrap();
    assert!(code.len() <= 0x1F0, "32-bit half too long: {}", code.len());
    code.resize(0x1F0, 0);
    code.extend_from_slice(b"OK\0\0FAIL\0");
    code
}

#[test]
fn video_state_save_and_restore() {
    let (out, shot) = run("state13", &state_13h_program);
    assert_eq!(out, "OK");
    // Mode 13h came back over mode 3: its registers, its BIOS data and the DAC entry
    // that was changed before the save (6-bit 3Fh, 10h, 00h).
    assert_eq!((shot.width, shot.height), (320, 200));
    assert_eq!(shot.pixel(8, 20), 0xFF4100);
    assert_eq!(shot.pixel(9, 20), 0);

    let (out, shot) = run("state-vbe", &state_vbe_program);
    assert_eq!(out, "OK");
    assert_eq!((shot.width, shot.height), (640, 480));
    assert_eq!(shot.pixel(3, 2), 0xFF0000);
}

/// Mode 13h, colour 1 at (8, 20) with DAC entry 1 changed, AH=1Ch saves everything
/// (CX=7) at 0000:1000, mode 3 (keeping memory) over it, then AH=1Ch restores; AH=0Fh
/// must say 13h again.
fn state_13h_program(a: &mut CodeAssembler, fail: CodeLabel) {
    a.mov(ax, 0x0013u32).unwrap();
    a.int(0x10).unwrap();
    put_pixel(a, 8, 20, 1);
    // AX=1010h: DAC entry BX=1 to DH red, CH green, CL blue.
    a.mov(ax, 0x1010u32).unwrap();
    a.mov(bx, 1u32).unwrap();
    a.mov(dh, 0x3Fu32).unwrap();
    a.mov(cx, 0x1000u32).unwrap();
    a.int(0x10).unwrap();
    a.mov(ax, 0x1C00u32).unwrap();
    a.mov(cx, 7u32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(al, 0x1Cu32).unwrap();
    a.jne(fail).unwrap();
    a.cmp(bx, 0u32).unwrap();
    a.je(fail).unwrap();
    a.cmp(bx, 0x20u32).unwrap();
    a.ja(fail).unwrap();
    a.mov(ax, 0x1C01u32).unwrap();
    a.mov(cx, 7u32).unwrap();
    a.mov(bx, 0x1000u32).unwrap();
    a.int(0x10).unwrap();
    a.mov(ax, 0x0083u32).unwrap();
    a.int(0x10).unwrap();
    a.mov(ax, 0x1C02u32).unwrap();
    a.mov(cx, 7u32).unwrap();
    a.mov(bx, 0x1000u32).unwrap();
    a.int(0x10).unwrap();
    a.mov(ah, 0x0Fu32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(al, 0x13u32).unwrap();
    a.jne(fail).unwrap();
}

/// VBE mode 111h (640x480x16) with red at (3, 2) through the linear framebuffer;
/// 4F04h saves every state (CX=0Fh), mode 3 replaces it, 4F04h restores it.
fn state_vbe_program(a: &mut CodeAssembler, fail: CodeLabel) {
    vbe_setup(a, 0x111, 16, fail);
    unreal(a);
    a.mov(word_ptr(esi + (2 * 640 + 3) * 2), 0xF800u32).unwrap();
    a.mov(ax, 0x4F04u32).unwrap();
    a.mov(dl, 0u32).unwrap();
    a.mov(cx, 0x0Fu32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
    a.mov(ax, 0x4F04u32).unwrap();
    a.mov(dl, 1u32).unwrap();
    a.mov(cx, 0x0Fu32).unwrap();
    a.mov(bx, 0x1000u32).unwrap();
    a.int(0x10).unwrap();
    a.mov(ax, 0x0083u32).unwrap();
    a.int(0x10).unwrap();
    a.mov(ax, 0x4F04u32).unwrap();
    a.mov(dl, 2u32).unwrap();
    a.mov(cx, 0x0Fu32).unwrap();
    a.mov(bx, 0x1000u32).unwrap();
    a.int(0x10).unwrap();
    a.cmp(ax, 0x004Fu32).unwrap();
    a.jne(fail).unwrap();
}

#[test]
fn text_40x25_cells_are_twice_as_wide() {
    let (out, shot) = run("text40x25", &|a: &mut CodeAssembler, _fail: CodeLabel| {
        a.mov(ax, 0x0001u32).unwrap();
        a.int(0x10).unwrap();
        for byte in *b"Hi" {
            a.mov(ax, 0x0E00u32 | byte as u32).unwrap();
            a.mov(bx, 7u32).unwrap();
            a.int(0x10).unwrap();
        }
    });
    assert_eq!(out, "OK");
    // 40 cells of 9 dots shown at half the dot clock: 18 pixels each, 720x400.
    assert_eq!((shot.width, shot.height), (720, 400));
    let font = hospes_bios::font::font_8x16();
    const GREY: u32 = 0xAAAAAA;
    for (col, glyph) in [(0, b'H'), (1, b'i')] {
        for line in 0..16 {
            let bits = font[glyph as usize * 16 + line];
            for x in 0..18 {
                let dot = x / 2;
                let on = dot < 8 && bits >> (7 - dot) & 1 != 0;
                let want = if on { GREY } else { 0 };
                let got = shot.pixel(col * 18 + x, line);
                assert_eq!(
                    got, want,
                    "cell {col} {:?} line {line} x {x}",
                    glyph as char
                );
            }
        }
    }
}

#[test]
fn vbe_8_bit_dac() {
    let (out, shot) = run("dac8", &|a: &mut CodeAssembler, fail: CodeLabel| {
        vbe_setup(a, 0x101, 8, fail);
        // 4F08h: 8 bits wide, and it says so.
        a.mov(ax, 0x4F08u32).unwrap();
        a.mov(bx, 0x0800u32).unwrap();
        a.int(0x10).unwrap();
        a.cmp(ax, 0x004Fu32).unwrap();
        a.jne(fail).unwrap();
        a.mov(ax, 0x4F08u32).unwrap();
        a.mov(bx, 0x0001u32).unwrap();
        a.int(0x10).unwrap();
        a.cmp(bh, 8u32).unwrap();
        a.jne(fail).unwrap();
        // 4F09h: entry 5 = 81h, 42h, C3h (B G R x at 0000:0700).
        a.mov(dword_ptr(0x700u32), 0x0081_42C3u32).unwrap();
        a.mov(ax, 0x4F09u32).unwrap();
        a.xor(bx, bx).unwrap();
        a.mov(cx, 1u32).unwrap();
        a.mov(dx, 5u32).unwrap();
        a.mov(di, 0x700u32).unwrap();
        a.int(0x10).unwrap();
        a.cmp(ax, 0x004Fu32).unwrap();
        a.jne(fail).unwrap();
        unreal(a);
        a.mov(byte_ptr(esi + 3 * 640 + 7), 5u32).unwrap();
    });
    assert_eq!(out, "OK");
    assert_eq!(shot.pixel(7, 3), 0x8142C3, "all 8 bits of each colour");
}
