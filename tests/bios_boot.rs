//! The PC and its BIOS with small boot sectors written here: booting from a hard disk,
//! a floppy and a CD, the disk, video, serial and memory-map services, and ACPI
//! power-off ending `hospes run` with status 0.

use iced_x86::code_asm::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_path(name: &str) -> PathBuf {
    // Under the target directory (not the system temp directory, which would keep
    // one directory per run).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bios-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Code shared by the boot programs: print DS:SI on COM1 through INT 14h.
fn print_routine(a: &mut CodeAssembler, print: &mut CodeLabel) {
    let mut done = a.create_label();
    a.set_label(print).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.mov(ah, 1).unwrap();
    a.xor(dx, dx).unwrap();
    a.int(0x14).unwrap();
    a.jmp(*print).unwrap();
    a.set_label(&mut done).unwrap();
    a.ret().unwrap();
}

/// ACPI soft-off: SLP_TYP=5 | SLP_EN to PM1a control (604h).
fn power_off(a: &mut CodeAssembler) {
    a.mov(dx, 0x604u32).unwrap();
    a.mov(ax, 0x3400u32).unwrap();
    a.out(dx, ax).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
}

/// Where the boot program keeps its messages (inside the boot sector).
const E820_MSG: u16 = 0x1A0;
const FAIL_MSG: u16 = 0x1B0;

/// A boot sector at 0000:7C00 that reads a sector with INT 13h (CHS sector 2, or with
/// the EDD packet interface the given LBA), prints the string stored there, checks the
/// first E820 entry, writes on the screen with INT 10h, and powers off.
fn disk_boot_program(sector_size: usize, lba: Option<u32>) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut print = a.create_label();
    let mut fail = a.create_label();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7C00u32).unwrap();
    // DL still holds the boot drive.
    match lba {
        Some(lba) => {
            // Disk address packet at 0000:0600: 1 sector at `lba` to 0000:8000.
            a.mov(word_ptr(0x600u32), 0x0010u32).unwrap();
            a.mov(word_ptr(0x602u32), 1u32).unwrap();
            a.mov(word_ptr(0x604u32), 0x8000u32).unwrap();
            a.mov(word_ptr(0x606u32), 0u32).unwrap();
            a.mov(dword_ptr(0x608u32), lba).unwrap();
            a.mov(dword_ptr(0x60Cu32), 0u32).unwrap();
            a.mov(si, 0x600u32).unwrap();
            a.mov(ah, 0x42).unwrap();
        }
        None => {
            a.mov(ax, 0x0201u32).unwrap(); // read 1 sector
            a.mov(cx, 0x0002u32).unwrap(); // cylinder 0, sector 2
            a.mov(dh, 0).unwrap();
            a.mov(bx, 0x8000u32).unwrap();
        }
    }
    a.int(0x13).unwrap();
    a.jc(fail).unwrap();
    a.mov(si, 0x8000u32).unwrap();
    a.call(print).unwrap();
    // E820: the first entry must be usable RAM from 0.
    a.mov(eax, 0xE820u32).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.mov(ecx, 20u32).unwrap();
    a.mov(edx, 0x534D_4150u32).unwrap();
    a.mov(di, 0x9000u32).unwrap();
    a.int(0x15).unwrap();
    a.jc(fail).unwrap();
    a.cmp(eax, 0x534D_4150).unwrap();
    a.jne(fail).unwrap();
    a.cmp(dword_ptr(0x9010u32), 1).unwrap();
    a.jne(fail).unwrap();
    a.mov(si, 0x7C00 + E820_MSG as u32).unwrap();
    a.call(print).unwrap();
    // Teletype on the screen.
    a.mov(ax, 0x0E48u32).unwrap(); // 'H'
    a.xor(bx, bx).unwrap();
    a.int(0x10).unwrap();
    power_off(&mut a);
    a.set_label(&mut fail).unwrap();
    a.mov(si, 0x7C00 + FAIL_MSG as u32).unwrap();
    a.call(print).unwrap();
    power_off(&mut a);
    print_routine(&mut a, &mut print);
    let mut code = a.assemble(0x7C00).unwrap();
    assert!(code.len() <= E820_MSG as usize, "boot program too long");
    code.resize(sector_size.max(512), 0);
    let put = |code: &mut Vec<u8>, at: u16, text: &[u8]| {
        code[at as usize..at as usize + text.len()].copy_from_slice(text);
    };
    put(&mut code, E820_MSG, b"e820 ok\r\n\0");
    put(&mut code, FAIL_MSG, b"FAIL\r\n\0");
    code[510] = 0x55;
    code[511] = 0xAA;
    code
}

fn run_hospes(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .arg("run")
        .args(args)
        .output()
        .expect("run hospes");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_image(path: &Path, sectors: &[Vec<u8>], total: usize) {
    let mut img: Vec<u8> = sectors.concat();
    img.resize(total, 0);
    std::fs::write(path, img).unwrap();
}

#[test]
fn boots_a_hard_disk_reads_with_chs_and_powers_off() {
    let path = temp_path("hd.img");
    let mut second = b"hello from sector 2\r\n\0".to_vec();
    second.resize(512, 0);
    write_image(&path, &[disk_boot_program(512, None), second], 1 << 20);
    let (code, out, err) =
        run_hospes(&["--hda", path.to_str().unwrap(), "--boot", "c", "-m", "16"]);
    assert_eq!(out, "hello from sector 2\r\ne820 ok\r\n", "stderr: {err}");
    assert_eq!(code, 0);
}

#[test]
fn boots_a_hard_disk_reads_with_edd() {
    let path = temp_path("hd-edd.img");
    let mut second = b"edd read ok\r\n\0".to_vec();
    second.resize(512, 0);
    write_image(&path, &[disk_boot_program(512, Some(1)), second], 1 << 20);
    let (code, out, err) = run_hospes(&["-hda", path.to_str().unwrap(), "-m", "32"]);
    assert_eq!(out, "edd read ok\r\ne820 ok\r\n", "stderr: {err}");
    assert_eq!(code, 0);
}

#[test]
fn boots_a_floppy() {
    let path = temp_path("fd.img");
    let mut second = b"floppy ok\r\n\0".to_vec();
    second.resize(512, 0);
    write_image(&path, &[disk_boot_program(512, None), second], 1_474_560);
    let (code, out, err) = run_hospes(&["--fda", path.to_str().unwrap(), "--boot", "a"]);
    assert_eq!(out, "floppy ok\r\ne820 ok\r\n", "stderr: {err}");
    assert_eq!(code, 0);
}

/// A minimal El Torito CD: volume descriptors at sector 16-18, the boot catalog at 19,
/// the boot image (our program) at 20 and the data sector it reads at 21.
#[test]
fn boots_a_cd_with_el_torito() {
    let path = temp_path("cd.iso");
    let mut img = vec![0u8; 2048 * 32];
    // Primary volume descriptor (type 1) and terminator (type 255), enough for the BIOS.
    img[16 * 2048] = 1;
    img[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
    let brvd = 17 * 2048;
    img[brvd] = 0;
    img[brvd + 1..brvd + 6].copy_from_slice(b"CD001");
    img[brvd + 6] = 1;
    img[brvd + 7..brvd + 30].copy_from_slice(b"EL TORITO SPECIFICATION");
    img[brvd + 0x47..brvd + 0x4B].copy_from_slice(&19u32.to_le_bytes());
    img[18 * 2048] = 255;
    img[18 * 2048 + 1..18 * 2048 + 6].copy_from_slice(b"CD001");
    let cat = 19 * 2048;
    img[cat] = 1; // validation entry
    img[cat + 0x1E] = 0x55;
    img[cat + 0x1F] = 0xAA;
    let sum = img[cat..cat + 32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    img[cat + 0x1C..cat + 0x1E].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    img[cat + 32] = 0x88; // bootable, no emulation
    img[cat + 32 + 6..cat + 32 + 8].copy_from_slice(&4u16.to_le_bytes());
    img[cat + 32 + 8..cat + 32 + 12].copy_from_slice(&20u32.to_le_bytes());
    // The boot program reads the CD's 2048-byte sector 21.
    let prog = disk_boot_program(2048, Some(21));
    img[20 * 2048..21 * 2048].copy_from_slice(&prog);
    let msg = b"cd read ok\r\n\0";
    img[21 * 2048..21 * 2048 + msg.len()].copy_from_slice(msg);
    std::fs::write(&path, &img).unwrap();
    let (code, out, err) = run_hospes(&["--cdrom", path.to_str().unwrap(), "--boot", "d"]);
    assert_eq!(out, "cd read ok\r\ne820 ok\r\n", "stderr: {err}");
    assert_eq!(code, 0);
}

#[test]
fn nothing_to_boot_is_reported_and_exits_nonzero() {
    let (code, out, _err) = run_hospes(&["-m", "8"]);
    assert!(out.contains("No bootable device."), "stdout: {out}");
    assert_ne!(code, 0);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        &["--hda", "/nonexistent/disk.img"][..],
        &["-m", "1"][..],
        &["--boot", "x"][..],
        &["--kernel", "/nonexistent/vmlinuz"][..],
        &["--serial", "bogus"][..],
    ] {
        let (code, _out, err) = run_hospes(args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("hospes: "), "{args:?}: {err}");
    }
}

/// A boot sector that talks to the chipset directly: PCI configuration mechanism #1
/// (the i440FX host bridge's IDs) and an ATA PIO read of its own disk's sector 0
/// through the primary IDE channel, then powers off.
#[test]
fn pci_config_space_and_ata_pio_from_a_boot_sector() {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut print = a.create_label();
    let mut fail = a.create_label();
    let mut wait = a.create_label();
    const OK_MSG: u16 = 0x1A0;
    const FAIL_MSG: u16 = 0x1B0;
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7C00u32).unwrap();
    // PCI 00:00.0 dword 0: vendor 8086, device 1237.
    a.mov(dx, 0xCF8u32).unwrap();
    a.mov(eax, 0x8000_0000u32).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xCFCu32).unwrap();
    a.in_(eax, dx).unwrap();
    a.cmp(eax, 0x1237_8086).unwrap();
    a.jne(fail).unwrap();
    // ATA: LBA 0, one sector, READ SECTORS.
    for (port, v) in [
        (0x1F6u32, 0xE0u32),
        (0x1F2, 1),
        (0x1F3, 0),
        (0x1F4, 0),
        (0x1F5, 0),
        (0x1F7, 0x20),
    ] {
        a.mov(dx, port).unwrap();
        a.mov(al, v).unwrap();
        a.out(dx, al).unwrap();
    }
    a.set_label(&mut wait).unwrap();
    a.in_(al, dx).unwrap();
    a.test(al, 0x80).unwrap(); // BSY
    a.jnz(wait).unwrap();
    a.test(al, 0x08).unwrap(); // DRQ
    a.jz(fail).unwrap();
    a.mov(dx, 0x1F0u32).unwrap();
    a.mov(di, 0x8000u32).unwrap();
    a.mov(cx, 256u32).unwrap();
    a.rep().insw().unwrap();
    a.cmp(word_ptr(0x8000u32 + 510), 0xAA55u32).unwrap();
    a.jne(fail).unwrap();
    a.mov(si, 0x7C00 + OK_MSG as u32).unwrap();
    a.call(print).unwrap();
    power_off(&mut a);
    a.set_label(&mut fail).unwrap();
    a.mov(si, 0x7C00 + FAIL_MSG as u32).unwrap();
    a.call(print).unwrap();
    power_off(&mut a);
    print_routine(&mut a, &mut print);
    let mut code = a.assemble(0x7C00).unwrap();
    assert!(code.len() <= OK_MSG as usize);
    code.resize(512, 0);
    code[OK_MSG as usize..OK_MSG as usize + 13].copy_from_slice(b"pci+ata ok\r\n\0");
    code[FAIL_MSG as usize..FAIL_MSG as usize + 7].copy_from_slice(b"FAIL\r\n\0");
    code[510] = 0x55;
    code[511] = 0xAA;
    let path = temp_path("ata.img");
    write_image(&path, &[code], 1 << 20);
    let (code, out, err) = run_hospes(&["--hda", path.to_str().unwrap()]);
    assert_eq!(out, "pci+ata ok\r\n", "stderr: {err}");
    assert_eq!(code, 0);
}
