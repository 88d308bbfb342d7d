//! Debian's SeaBIOS (`--bios`) in place of the built-in BIOS: it has to find the chipset,
//! RAM and disks the way it does on QEMU's PC, and boot a hard disk and a CD whose boot
//! programs (written here) use its INT 13h, 15h and 1Ah services and print on COM1
//! directly. Skipped, with one line, where the `seabios` package is not installed
//! (scripts/guest-images installs it).

mod com1;

use iced_x86::code_asm::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

fn seabios() -> Option<&'static str> {
    if Path::new(SEABIOS).is_file() {
        Some(SEABIOS)
    } else {
        eprintln!("skipped: no {SEABIOS} (install Debian's seabios package)");
        None
    }
}

fn temp_path(name: &str) -> PathBuf {
    // Under the target directory (not the system temp directory, which would keep
    // one directory per run).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("seabios-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

struct Run {
    code: i32,
    serial: String,
    stderr: String,
    debugcon: String,
}

impl Run {
    fn context(&self) -> String {
        let tail: Vec<&str> = self.debugcon.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "status {}\nstderr: {}\nserial:\n{}\nSeaBIOS log (last lines):\n{}",
            self.code,
            self.stderr,
            self.serial,
            tail.join("\n")
        )
    }
}

fn run_hospes(name: &str, args: &[&str]) -> Run {
    let debugcon = temp_path(&format!("{name}-debugcon.txt"));
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .arg("run")
        .args(["--debugcon", debugcon.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run hospes");
    Run {
        code: out.status.code().unwrap_or(-1),
        serial: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        debugcon: std::fs::read_to_string(&debugcon).unwrap_or_default(),
    }
}

/// Where boot programs keep the boot drive number.
const BOOT_DRIVE: u32 = 0x500;
/// The EDD disk address packet.
const PACKET: u32 = 0x600;

/// A real-mode boot program that reports what it finds on COM1, one `KEY values` line per
/// check, writing the UART's registers itself (so only the firmware's disk, memory and
/// clock services are under test).
///
/// Strings go after the code, at `data_base`: a program is built twice, first to learn
/// how long its code is (`mov si, imm16` has one length whatever the address).
struct Program {
    a: CodeAssembler,
    origin: u32,
    data_base: u32,
    data: Vec<u8>,
    putc: CodeLabel,
    puts: CodeLabel,
    hex: CodeLabel,
}

impl Program {
    fn new(origin: u32, data_base: u32) -> Program {
        let mut a = CodeAssembler::new(16).unwrap();
        let putc = a.create_label();
        let puts = a.create_label();
        let hex = a.create_label();
        Program {
            a,
            origin,
            data_base,
            data: Vec::new(),
            putc,
            puts,
            hex,
        }
    }

    /// Prints a constant string.
    fn print(&mut self, text: &str) {
        let addr = self.data_base + self.data.len() as u32;
        self.data.extend_from_slice(text.as_bytes());
        self.data.push(0);
        self.a.mov(si, addr).unwrap();
        self.a.call(self.puts).unwrap();
    }

    /// Prints the NUL-terminated string at a fixed address.
    fn print_at(&mut self, addr: u32) {
        self.a.mov(si, addr).unwrap();
        self.a.call(self.puts).unwrap();
    }

    /// Prints the low `digits` hex digits of EAX (clobbers EAX).
    fn print_eax(&mut self, digits: u32) {
        if digits < 8 {
            self.a.shl(eax, 32 - 4 * digits).unwrap();
        }
        self.a.mov(cx, digits).unwrap();
        self.a.call(self.hex).unwrap();
    }

    /// Prints `label`, then " cf=" and the carry flag as 0 or 1 (keeps the registers).
    fn print_status(&mut self, label: &str) {
        self.a.pushfd().unwrap();
        self.print(label);
        self.a.popfd().unwrap();
        self.print_carry();
    }

    /// Prints " cf=" and the carry flag as 0 or 1 (keeps the registers).
    fn print_carry(&mut self) {
        self.a.pushfd().unwrap();
        self.a.pushad().unwrap();
        self.a.setc(al).unwrap();
        self.a.movzx(eax, al).unwrap();
        self.a.push(eax).unwrap();
        self.print(" cf=");
        self.a.pop(eax).unwrap();
        self.print_eax(1);
        self.a.popad().unwrap();
        self.a.popfd().unwrap();
    }

    fn power_off(&mut self) {
        self.a.mov(dx, 0x604u32).unwrap();
        self.a.mov(ax, (5u32 << 10) | (1 << 13)).unwrap();
        self.a.out(dx, ax).unwrap();
        self.a.cli().unwrap();
        let mut stop = self.a.create_label();
        self.a.set_label(&mut stop).unwrap();
        self.a.hlt().unwrap();
        self.a.jmp(stop).unwrap();
    }

    fn finish(mut self) -> Vec<u8> {
        let a = &mut self.a;
        com1::putc_routine(a, &mut self.putc);
        // puts: DS:SI, NUL-terminated.
        a.set_label(&mut self.puts).unwrap();
        let mut done = a.create_label();
        a.lodsb().unwrap();
        a.test(al, al).unwrap();
        a.jz(done).unwrap();
        a.call(self.putc).unwrap();
        a.jmp(self.puts).unwrap();
        a.set_label(&mut done).unwrap();
        a.ret().unwrap();
        // hex: the top CX nibbles of EAX.
        a.set_label(&mut self.hex).unwrap();
        let mut digit = a.create_label();
        let next = self.hex;
        a.rol(eax, 4u32).unwrap();
        a.push(eax).unwrap();
        a.and(al, 0x0F).unwrap();
        a.add(al, b'0' as u32).unwrap();
        a.cmp(al, b'9' as u32).unwrap();
        a.jbe(digit).unwrap();
        a.add(al, 7u32).unwrap();
        a.set_label(&mut digit).unwrap();
        a.call(self.putc).unwrap();
        a.pop(eax).unwrap();
        a.dec(cx).unwrap();
        a.jnz(next).unwrap();
        a.ret().unwrap();
        let mut code = a.assemble(self.origin as u64).unwrap();
        code.extend_from_slice(&self.data);
        code
    }

    /// Builds the program `body` writes, with its strings right after its code.
    fn build(origin: u32, body: impl Fn(&mut Program)) -> Vec<u8> {
        let mut first = Program::new(origin, 0);
        body(&mut first);
        let data_len = first.data.len();
        let code_len = first.finish().len() - data_len;
        let mut p = Program::new(origin, origin + code_len as u32);
        body(&mut p);
        let bytes = p.finish();
        assert_eq!(bytes.len(), code_len + data_len);
        bytes
    }
}

/// The checks both boot programs make after their disk reads: the E820 map, then the
/// clock services of INT 1Ah; then power off.
fn memory_and_clock_checks(p: &mut Program) {
    // E820: every entry as base, length and type (at most 32 of them).
    let a = &mut p.a;
    a.xor(ebx, ebx).unwrap();
    a.mov(bp, 32u32).unwrap();
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut next).unwrap();
    a.mov(eax, 0xE820u32).unwrap();
    a.mov(edx, 0x534D_4150u32).unwrap();
    a.mov(ecx, 20u32).unwrap();
    a.mov(di, 0x9400u32).unwrap();
    a.int(0x15).unwrap();
    a.jc(done).unwrap();
    a.cmp(eax, 0x534D_4150).unwrap();
    a.jne(done).unwrap();
    a.push(ebx).unwrap();
    p.print("E820 ");
    for (offset, digits, sep) in [
        (4u32, 8, ""),
        (0, 8, " "),
        (12, 8, ""),
        (8, 8, " "),
        (16, 2, "\r\n"),
    ] {
        p.a.mov(eax, dword_ptr(0x9400 + offset)).unwrap();
        p.print_eax(digits);
        p.print(sep);
    }
    let a = &mut p.a;
    a.pop(ebx).unwrap();
    a.test(ebx, ebx).unwrap();
    a.jz(done).unwrap();
    a.dec(bp).unwrap();
    a.jnz(next).unwrap();
    a.set_label(&mut done).unwrap();
    // INT 1Ah AH=02h: the RTC time, BCD hours, minutes, seconds.
    p.a.mov(ah, 0x02).unwrap();
    p.a.int(0x1A).unwrap();
    p.print_status("TIME");
    p.print(" ");
    p.a.mov(eax, ecx).unwrap();
    p.print_eax(4);
    p.a.movzx(eax, dh).unwrap();
    p.print_eax(2);
    p.print("\r\n");
    // AH=04h: the date, BCD century, year, month, day.
    p.a.mov(ah, 0x04).unwrap();
    p.a.int(0x1A).unwrap();
    p.print_status("DATE");
    p.print(" ");
    p.a.mov(eax, ecx).unwrap();
    p.print_eax(4);
    p.a.mov(eax, edx).unwrap();
    p.print_eax(4);
    p.print("\r\n");
    // AH=00h: timer ticks since midnight, twice with a wait between (interrupts on).
    for _ in 0..2 {
        p.a.sti().unwrap();
        p.a.mov(ah, 0x00).unwrap();
        p.a.int(0x1A).unwrap();
        p.a.push(dx).unwrap();
        p.a.push(cx).unwrap();
        p.print("TICKS ");
        p.a.pop(ax).unwrap();
        p.print_eax(4);
        p.a.pop(ax).unwrap();
        p.print_eax(4);
        p.print("\r\n");
        // INT 15h AH=86h: wait CX:DX = 200 ms.
        p.a.mov(ah, 0x86).unwrap();
        p.a.mov(cx, 0x0003u32).unwrap();
        p.a.mov(dx, 0x0D40u32).unwrap();
        p.a.int(0x15).unwrap();
    }
    p.print("DONE\r\n");
    p.power_off();
}

/// Reads with the EDD packet interface (INT 13h AH=42h): `count` sectors at `lba` to
/// 0000:9000, printing `EDD42 cf=C ah=XX`.
fn edd_read(p: &mut Program, lba: u32, count: u32) {
    let a = &mut p.a;
    a.mov(word_ptr(PACKET), 0x0010u32).unwrap();
    a.mov(word_ptr(PACKET + 2), count).unwrap();
    a.mov(word_ptr(PACKET + 4), 0x9000u32).unwrap();
    a.mov(word_ptr(PACKET + 6), 0u32).unwrap();
    a.mov(dword_ptr(PACKET + 8), lba).unwrap();
    a.mov(dword_ptr(PACKET + 12), 0u32).unwrap();
    a.mov(si, PACKET).unwrap();
    a.mov(dl, byte_ptr(BOOT_DRIVE)).unwrap();
    a.mov(ah, 0x42).unwrap();
    a.int(0x13).unwrap();
    p.print_status("EDD42");
    p.print(" ah=");
    p.a.movzx(eax, ah).unwrap();
    p.print_eax(2);
}

/// Sets DS, ES and SS to 0 and a stack below 7C00, keeping DL.
fn flat_segments(a: &mut CodeAssembler) {
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7C00u32).unwrap();
    a.sti().unwrap();
}

/// The sectors of the boot program's code after the MBR, and where the MBR loads them.
const HD_PROGRAM_SECTORS: u32 = 4;
const HD_PROGRAM_AT: u32 = 0x7E00;
/// Where, in the last of those sectors, the MBR's check string sits.
const CHS_MARKER: &[u8] = b"chs read ok\0";

/// A hard-disk image: an MBR that loads the program's sectors 1-4 with INT 13h AH=02h
/// (CHS) and jumps there; the program; and every later sector `n` holding the text
/// `LBA n`, so any read shows which sector it got.
fn hard_disk_image(sectors: u32) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    flat_segments(&mut a);
    a.mov(byte_ptr(BOOT_DRIVE), dl).unwrap();
    a.mov(ax, 0x0200 | HD_PROGRAM_SECTORS).unwrap();
    a.mov(cx, 0x0002u32).unwrap(); // cylinder 0, sector 2
    a.mov(dh, 0).unwrap();
    a.mov(bx, HD_PROGRAM_AT).unwrap();
    a.int(0x13).unwrap();
    let mut fail = a.create_label();
    a.jc(fail).unwrap();
    a.jmp(HD_PROGRAM_AT as u64).unwrap();
    a.set_label(&mut fail).unwrap();
    a.hlt().unwrap();
    a.jmp(fail).unwrap();
    let mut mbr = a.assemble(0x7C00).unwrap();
    assert!(mbr.len() <= 446);
    mbr.resize(512, 0);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    let mut program = Program::build(HD_PROGRAM_AT, hd_program);
    let room = (HD_PROGRAM_SECTORS * 512) as usize - CHS_MARKER.len();
    assert!(program.len() <= room, "program too long: {}", program.len());
    program.resize(room, 0);
    program.extend_from_slice(CHS_MARKER);

    let mut image = mbr;
    image.extend_from_slice(&program);
    for n in (1 + HD_PROGRAM_SECTORS)..sectors {
        let mut sector = format!("LBA {n}\0").into_bytes();
        sector.resize(512, 0);
        image.extend_from_slice(&sector);
    }
    image
}

/// What the hard disk's boot program writes on the screen (INT 10h teletype).
const SCREEN_TEXT: &str = "hello from INT 10h";

/// The hard disk's boot program (after the MBR).
fn hd_program(p: &mut Program) {
    for b in SCREEN_TEXT.bytes() {
        p.a.mov(ah, 0x0E).unwrap();
        p.a.mov(al, b as u32).unwrap();
        p.a.mov(bx, 0x0007u32).unwrap();
        p.a.int(0x10).unwrap();
    }
    p.print("BOOT dl=");
    p.a.movzx(eax, byte_ptr(BOOT_DRIVE)).unwrap();
    p.print_eax(2);
    p.print("\r\nCHS ");
    let marker_at = HD_PROGRAM_AT + HD_PROGRAM_SECTORS * 512 - CHS_MARKER.len() as u32;
    p.print_at(marker_at);
    p.print("\r\n");
    // EDD installation check.
    p.a.mov(ah, 0x41).unwrap();
    p.a.mov(bx, 0x55AAu32).unwrap();
    p.a.mov(dl, byte_ptr(BOOT_DRIVE)).unwrap();
    p.a.int(0x13).unwrap();
    p.print_status("EDD41");
    p.print(" bx=");
    p.a.movzx(eax, bx).unwrap();
    p.print_eax(4);
    p.print("\r\n");
    // Two sectors at LBA 100: print the second.
    edd_read(p, 100, 2);
    p.print(" ");
    p.print_at(0x9200);
    p.print("\r\n");
    // Geometry, then CHS cylinder 0, head 1, sector 1 (LBA = sectors per track).
    p.a.mov(ah, 0x08).unwrap();
    p.a.mov(dl, byte_ptr(BOOT_DRIVE)).unwrap();
    p.a.int(0x13).unwrap();
    p.print_status("GEOM");
    p.print(" ");
    for r in [ch, cl, dh, dl] {
        p.a.movzx(eax, r).unwrap();
        p.a.push(dx).unwrap();
        p.a.push(cx).unwrap();
        p.print_eax(2);
        p.print(" ");
        p.a.pop(cx).unwrap();
        p.a.pop(dx).unwrap();
    }
    p.print("\r\n");
    p.a.mov(ax, 0x0201u32).unwrap();
    p.a.mov(cx, 0x0001u32).unwrap();
    p.a.mov(dh, 1).unwrap();
    p.a.mov(dl, byte_ptr(BOOT_DRIVE)).unwrap();
    p.a.mov(bx, 0x9000u32).unwrap();
    p.a.int(0x13).unwrap();
    p.print_status("CHSH1");
    p.print(" ");
    p.print_at(0x9000);
    p.print("\r\n");
    memory_and_clock_checks(p);
}

/// The value after `key` on the serial line that starts with it.
fn line<'a>(serial: &'a str, key: &str) -> &'a str {
    serial
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{serial}"))
        .trim()
}

/// Checks the E820 map against the RAM size and the clock lines; returns the map.
fn check_memory_and_clock(serial: &str, ram: u64) {
    let mut entries = Vec::new();
    for l in serial.lines().filter_map(|l| l.strip_prefix("E820 ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let base = u64::from_str_radix(f[0], 16).unwrap();
        let len = u64::from_str_radix(f[1], 16).unwrap();
        let kind = u32::from_str_radix(f[2], 16).unwrap();
        entries.push((base, len, kind));
    }
    assert!(entries.len() >= 3, "E820 map:\n{serial}");
    assert_eq!(entries[0].0, 0, "E820 starts at 0");
    assert_eq!(entries[0].2, 1);
    assert!(entries[0].1 >= 0x9_F000, "base memory {:#x}", entries[0].1);
    // The map below the firmware's own top-of-4G area ends exactly at the top of RAM.
    let top = entries
        .iter()
        .filter(|e| e.0 < 0xF000_0000)
        .map(|e| e.0 + e.1)
        .max()
        .unwrap();
    assert_eq!(top, ram, "E820 map:\n{serial}");
    let usable: u64 = entries.iter().filter(|e| e.2 == 1).map(|e| e.1).sum();
    assert!(usable > ram - (2 << 20), "usable {usable:#x} of {ram:#x}");
    // The RTC runs from the host's current time: a valid BCD time and this year.
    let bcd = |s: &str| -> u32 {
        assert!(s.chars().all(|c| c.is_ascii_digit()), "not BCD: {s}");
        s.parse().unwrap()
    };
    let time = line(serial, "TIME cf=0 ");
    assert!(bcd(&time[0..2]) < 24 && bcd(&time[2..4]) < 60 && bcd(&time[4..6]) < 60);
    let date = line(serial, "DATE cf=0 ");
    let year = bcd(&date[0..4]);
    let now_year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952) as u32;
    assert!(
        year.abs_diff(now_year) <= 1,
        "year {year}, expected {now_year}"
    );
    assert!((1..=12).contains(&bcd(&date[4..6])) && (1..=31).contains(&bcd(&date[6..8])));
    // The tick count advances over the 200 ms wait (18.2 Hz: about 3-4 ticks).
    let ticks: Vec<u32> = serial
        .lines()
        .filter_map(|l| l.strip_prefix("TICKS "))
        .map(|t| u32::from_str_radix(t.trim(), 16).unwrap())
        .collect();
    assert_eq!(ticks.len(), 2, "{serial}");
    let advanced = ticks[1].wrapping_sub(ticks[0]);
    assert!((2..=6).contains(&advanced), "ticks {ticks:x?}");
    assert!(serial.contains("DONE"), "{serial}");
}

#[test]
fn seabios_boots_a_hard_disk() {
    let Some(bios) = seabios() else { return };
    let path = temp_path("hd.img");
    std::fs::write(&path, hard_disk_image(8192)).unwrap();
    let start = Instant::now();
    let run = run_hospes(
        "hd",
        &["--bios", bios, "-m", "64", "--hda", path.to_str().unwrap()],
    );
    eprintln!(
        "SeaBIOS hard-disk boot: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let s = &run.serial;
    let ctx = run.context();
    assert!(s.contains("BOOT dl=80"), "{ctx}");
    assert_eq!(line(s, "CHS "), "chs read ok", "{ctx}");
    assert!(line(s, "EDD41 ").starts_with("cf=0 bx=AA55"), "{ctx}");
    assert_eq!(line(s, "EDD42 "), "cf=0 ah=00 LBA 101", "{ctx}");
    // CHS head 1, sector 1 is the first sector of the second track.
    let geom: Vec<u32> = line(s, "GEOM cf=0 ")
        .split_whitespace()
        .map(|v| u32::from_str_radix(v, 16).unwrap())
        .collect();
    let sectors_per_track = geom[1] & 0x3F;
    assert!(geom[2] >= 1, "one head only: {geom:x?}");
    assert_eq!(geom[3], 1, "one hard disk: {geom:x?}");
    assert_eq!(
        line(s, "CHSH1 "),
        format!("cf=0 LBA {sectors_per_track}"),
        "{ctx}"
    );
    check_memory_and_clock(s, 64 << 20);
    assert_eq!(run.code, 0, "{ctx}");
    assert!(run.debugcon.contains("SeaBIOS (version"), "{ctx}");
    assert!(run.debugcon.contains("RamSize: 0x04000000 [cmos]"), "{ctx}");
}

/// With SeaVGABIOS from the same package as the VGA BIOS, SeaBIOS's banner and the boot
/// program's INT 10h text appear on the VGA's text screen.
#[test]
fn seabios_runs_a_vga_bios() {
    let Some(bios) = seabios() else { return };
    let vga = "/usr/share/seabios/vgabios-isavga.bin";
    if !Path::new(vga).is_file() {
        eprintln!("skipped: no {vga}");
        return;
    }
    let disk = temp_path("vga.img");
    std::fs::write(&disk, hard_disk_image(8192)).unwrap();
    let screen = temp_path("vga-screen.txt");
    let run = run_hospes(
        "vga",
        &[
            "--bios",
            bios,
            "--vga-bios",
            vga,
            "--hda",
            disk.to_str().unwrap(),
            "--screen-text-on-exit",
            screen.to_str().unwrap(),
        ],
    );
    let ctx = run.context();
    assert_eq!(run.code, 0, "{ctx}");
    assert!(run.debugcon.contains("Start SeaVGABIOS"), "{ctx}");
    let text = std::fs::read_to_string(&screen).unwrap();
    assert!(text.contains("SeaBIOS (version"), "screen:\n{text}");
    assert!(text.contains("Booting from Hard Disk"), "screen:\n{text}");
    assert!(text.contains(SCREEN_TEXT), "screen:\n{text}");
}

/// The CD's boot program (El Torito, no emulation, loaded at 0000:7C00).
fn cd_program(p: &mut Program) {
    flat_segments(&mut p.a);
    p.a.mov(byte_ptr(BOOT_DRIVE), dl).unwrap();
    p.print("BOOT dl=");
    p.a.movzx(eax, byte_ptr(BOOT_DRIVE)).unwrap();
    p.print_eax(2);
    p.print("\r\n");
    // The primary volume descriptor: "CD001" at byte 1 of sector 16.
    edd_read(p, 16, 1);
    p.a.mov(byte_ptr(0x9006u32), 0).unwrap();
    p.print(" ");
    p.print_at(0x9001);
    p.print("\r\n");
    edd_read(p, CD_DATA_SECTOR, 1);
    p.print(" ");
    p.print_at(0x9000);
    p.print("\r\n");
    memory_and_clock_checks(p);
}

/// The CD's sector the boot program reads, and its text.
const CD_DATA_SECTOR: u32 = 21;
const CD_DATA: &[u8] = b"cd sector 21\0";

/// A minimal El Torito CD: primary volume descriptor at sector 16, boot record at 17,
/// terminator at 18, boot catalog at 19, the boot image at 20 (4 virtual sectors) and a
/// data sector at 21.
fn cd_image() -> Vec<u8> {
    let mut img = vec![0u8; 2048 * 32];
    let mut descriptor = |sector: usize, kind: u8| {
        img[sector * 2048] = kind;
        img[sector * 2048 + 1..sector * 2048 + 6].copy_from_slice(b"CD001");
        img[sector * 2048 + 6] = 1;
        sector * 2048
    };
    descriptor(16, 1);
    let brvd = descriptor(17, 0);
    descriptor(18, 255);
    img[brvd + 7..brvd + 30].copy_from_slice(b"EL TORITO SPECIFICATION");
    img[brvd + 0x47..brvd + 0x4B].copy_from_slice(&19u32.to_le_bytes());
    let cat = 19 * 2048;
    img[cat] = 1; // validation entry, x86
    img[cat + 0x1E] = 0x55;
    img[cat + 0x1F] = 0xAA;
    let sum = img[cat..cat + 32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    img[cat + 0x1C..cat + 0x1E].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    img[cat + 32] = 0x88; // bootable, no emulation, default load segment
    img[cat + 32 + 6..cat + 32 + 8].copy_from_slice(&4u16.to_le_bytes());
    img[cat + 32 + 8..cat + 32 + 12].copy_from_slice(&20u32.to_le_bytes());
    let program = Program::build(0x7C00, cd_program);
    assert!(program.len() <= 2048, "CD boot program too long");
    img[20 * 2048..20 * 2048 + program.len()].copy_from_slice(&program);
    let data = CD_DATA_SECTOR as usize * 2048;
    img[data..data + CD_DATA.len()].copy_from_slice(CD_DATA);
    img
}

#[test]
fn seabios_boots_an_el_torito_cd() {
    let Some(bios) = seabios() else { return };
    let path = temp_path("cd.iso");
    std::fs::write(&path, cd_image()).unwrap();
    let start = Instant::now();
    let run = run_hospes(
        "cd",
        &[
            "--bios",
            bios,
            "-m",
            "32",
            "--cdrom",
            path.to_str().unwrap(),
            "-boot",
            "d",
        ],
    );
    eprintln!("SeaBIOS CD boot: {:.2} s", start.elapsed().as_secs_f64());
    let s = &run.serial;
    let ctx = run.context();
    assert!(s.contains("BOOT dl="), "{ctx}");
    let reads: Vec<&str> = s.lines().filter_map(|l| l.strip_prefix("EDD42 ")).collect();
    assert_eq!(
        reads,
        ["cf=0 ah=00 CD001", "cf=0 ah=00 cd sector 21"],
        "{ctx}"
    );
    check_memory_and_clock(s, 32 << 20);
    assert_eq!(run.code, 0, "{ctx}");
    assert!(run.debugcon.contains("Booting from DVD/CD"), "{ctx}");
}

/// Hard disk first in the boot order, but only a CD has something to boot: SeaBIOS
/// follows the order CMOS gives it and falls through to the CD.
#[test]
fn seabios_follows_the_boot_order() {
    let Some(bios) = seabios() else { return };
    let cd = temp_path("order.iso");
    std::fs::write(&cd, cd_image()).unwrap();
    let blank = temp_path("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let run = run_hospes(
        "order",
        &[
            "--bios",
            bios,
            "--hda",
            blank.to_str().unwrap(),
            "--cdrom",
            cd.to_str().unwrap(),
            "-boot",
            "cd",
        ],
    );
    let ctx = run.context();
    assert!(run.serial.contains("DONE"), "{ctx}");
    let hd = run.debugcon.find("Booting from Hard Disk").expect(&ctx);
    let cd = run.debugcon.find("Booting from DVD/CD").expect(&ctx);
    assert!(hd < cd, "{ctx}");
    assert_eq!(run.code, 0, "{ctx}");
}

fn run_plain(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .arg("run")
        .args(args)
        .output()
        .expect("run hospes");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_firmware_arguments_are_one_line_errors() {
    let small = temp_path("small.bin");
    std::fs::write(&small, vec![0u8; 32 << 10]).unwrap();
    let odd = temp_path("odd.bin");
    std::fs::write(&odd, vec![0u8; 100 << 10]).unwrap();
    let big = temp_path("big.bin");
    std::fs::write(&big, vec![0u8; (16 << 20) + (64 << 10)]).unwrap();
    let good = temp_path("good.bin");
    std::fs::write(&good, vec![0xF4u8; 64 << 10]).unwrap();
    let not_a_rom = temp_path("not-a-rom.bin");
    std::fs::write(&not_a_rom, vec![0u8; 4096]).unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &["--bios", "/nonexistent/bios.bin"],
            "/nonexistent/bios.bin",
        ),
        (&["--bios", small.to_str().unwrap()], "multiple of 64 KiB"),
        (&["--bios", odd.to_str().unwrap()], "multiple of 64 KiB"),
        (&["--bios", big.to_str().unwrap()], "16 MiB"),
        (
            &["--bios", good.to_str().unwrap(), "--kernel", "/x/vmlinuz"],
            "--kernel",
        ),
        (
            &["--bios", good.to_str().unwrap(), "--fda", "/x/fd.img"],
            "--fda",
        ),
        (&["--vga-bios", not_a_rom.to_str().unwrap()], "--bios"),
        (
            &[
                "--bios",
                good.to_str().unwrap(),
                "--vga-bios",
                not_a_rom.to_str().unwrap(),
            ],
            "55h AAh",
        ),
    ];
    for (args, needle) in cases {
        let (code, err) = run_plain(args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("hospes: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A firmware image that is nothing but HLT: the CPU starts at FFFFFFF0 inside it, halts
/// with interrupts off, and hospes reports that (status 1) rather than hanging.
#[test]
fn a_firmware_that_halts_is_reported() {
    let hlt = temp_path("hlt.bin");
    std::fs::write(&hlt, vec![0xF4u8; 64 << 10]).unwrap();
    let (code, err) = run_plain(&["--bios", hlt.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("halted"), "{err}");
    assert!(
        err.contains("f000:0000fff0") || err.contains("fff1"),
        "{err}"
    );
}

/// SHA-256 of 16 MiB of zeros, as `sha256sum` prints it (see tests/linux_boot.rs).
const ZEROS_SHA256: &str = "080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e";

/// Debian's Linux from the SYSLINUX disk of scripts/guest-images, booted by SeaBIOS: the
/// initramfs's markers as tests/linux_boot.rs checks them, and power-off through the ACPI
/// tables SeaBIOS installed from fw_cfg.
#[test]
fn seabios_boots_linux_from_a_disk() {
    let Some(bios) = seabios() else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest");
    let disk = dir.join("linux-disk.img");
    if !disk.is_file() {
        eprintln!("skipped: no {} (run scripts/guest-images)", disk.display());
        return;
    }
    let start = Instant::now();
    let run = run_hospes(
        "linux",
        &[
            "--bios",
            bios,
            "-m",
            "256",
            "--display",
            "none",
            "-hda",
            disk.to_str().unwrap(),
            "-snapshot",
        ],
    );
    eprintln!(
        "SeaBIOS Linux disk boot: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let s = &run.serial;
    let tail: Vec<&str> = s.lines().rev().take(40).collect();
    let ctx = format!(
        "status {}\nstderr: {}\nlast output:\n{}",
        run.code,
        run.stderr,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    for marker in ["HOSPES-INIT-START", "HOSPES-INIT-DONE"] {
        assert!(s.contains(marker), "no {marker}\n{ctx}");
    }
    let uname = line(s, "HOSPES-UNAME ");
    assert!(
        uname.starts_with("Linux ") && uname.contains("6.1.") && uname.contains("i686"),
        "{uname}"
    );
    assert!(line(s, "HOSPES-SHA256 ").starts_with(ZEROS_SHA256), "{ctx}");
    let awk: u64 = (0..200_000u64).map(|i| i % 7).sum();
    assert_eq!(line(s, "HOSPES-AWK "), awk.to_string(), "{ctx}");
    assert!(run.debugcon.contains("Booting from Hard Disk"), "{ctx}");
    assert_eq!(run.code, 0, "exit status\n{ctx}");
}

/// A boot program that resets the machine through the keyboard controller the first
/// time (keeping a count in CMOS byte 7Eh), then prints and powers off: SeaBIOS must
/// come back through its reset path with shadow RAM still locked, and boot again.
fn reboot_program(p: &mut Program) {
    flat_segments(&mut p.a);
    let a = &mut p.a;
    a.mov(al, 0x7E).unwrap();
    a.out(0x70, al).unwrap();
    a.in_(al, 0x71).unwrap();
    a.inc(al).unwrap();
    a.mov(bl, al).unwrap();
    a.mov(al, 0x7E).unwrap();
    a.out(0x70, al).unwrap();
    a.mov(al, bl).unwrap();
    a.out(0x71, al).unwrap();
    p.print("BOOT ");
    p.a.movzx(eax, bl).unwrap();
    p.print_eax(2);
    p.print("\r\n");
    let mut second = p.a.create_label();
    p.a.cmp(bl, 2).unwrap();
    p.a.jae(second).unwrap();
    // Pulse the reset line (i8042 output port bit 0).
    p.a.mov(al, 0xFE).unwrap();
    p.a.out(0x64, al).unwrap();
    let mut stop = p.a.create_label();
    p.a.set_label(&mut stop).unwrap();
    p.a.hlt().unwrap();
    p.a.jmp(stop).unwrap();
    p.a.set_label(&mut second).unwrap();
    p.print("DONE\r\n");
    p.power_off();
}

#[test]
fn seabios_survives_a_reset() {
    let Some(bios) = seabios() else { return };
    let mut sector = Program::build(0x7C00, reboot_program);
    assert!(sector.len() <= 510);
    sector.resize(512, 0);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector.resize(1 << 20, 0);
    let path = temp_path("reboot.img");
    std::fs::write(&path, sector).unwrap();
    let run = run_hospes("reboot", &["--bios", bios, "--hda", path.to_str().unwrap()]);
    let ctx = run.context();
    assert_eq!(run.serial, "BOOT 01\r\nBOOT 02\r\nDONE\r\n", "{ctx}");
    assert_eq!(run.code, 0, "{ctx}");
    assert_eq!(
        run.debugcon.matches("Booting from Hard Disk").count(),
        2,
        "{ctx}"
    );
}
