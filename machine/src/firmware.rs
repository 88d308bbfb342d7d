//! What the machine does for the firmware before the CPU runs: mapping a firmware image
//! given in place of the built-in BIOS, and the CMOS bytes a PC's firmware reads to learn
//! the RAM size and the boot order (set here for whichever firmware runs).

use crate::MachineError;
use hospes_bios::BootDevice;
use hospes_cpu::mem::PhysMem;
use hospes_devices::fw_cfg::{self, FwCfg};
use hospes_devices::rtc::Rtc;

/// Smallest and largest firmware images, and the unit their size comes in.
pub const MIN_IMAGE: usize = 64 << 10;
pub const MAX_IMAGE: usize = 16 << 20;
/// How much of the image's end also appears below 1 MiB (at E0000-FFFFF).
const LOW_WINDOW: usize = 128 << 10;

/// Checks that a firmware image can be mapped: a whole number of 64 KiB blocks, from
/// 64 KiB to 16 MiB.
pub fn check_image(len: usize) -> Result<(), MachineError> {
    if !(MIN_IMAGE..=MAX_IMAGE).contains(&len) || !len.is_multiple_of(MIN_IMAGE) {
        return Err(MachineError(format!(
            "firmware image of {len} bytes: the size must be a multiple of 64 KiB, from 64 KiB to 16 MiB"
        )));
    }
    Ok(())
}

/// Maps a firmware image read-only so that it ends at 4 GiB (where the CPU starts,
/// at FFFFFFF0) and its last 128 KiB (all of it if smaller) also ends at 1 MiB, as a PC's
/// flash is decoded.
pub fn map_image(mem: &mut PhysMem, image: &[u8]) -> Result<(), MachineError> {
    check_image(image.len())?;
    let base = (1u64 << 32) - image.len() as u64;
    mem.map_rom(base, image)
        .map_err(|e| MachineError(e.to_string()))?;
    let low = image.len().min(LOW_WINDOW) as u64;
    mem.alias(0x10_0000 - low, (1u64 << 32) - low, low);
    Ok(())
}

/// Fills the CMOS bytes that describe the machine: base and extended memory, memory above
/// 16 MiB (in 64 KiB units) and above 4 GiB, the equipment byte, and the boot order in
/// the layout SeaBIOS reads on emulators (0x3D: first device in bits 3:0, second in 7:4;
/// 0x38 bits 7:4: third; 1 floppy, 2 hard disk, 3 CD-ROM), with the standard checksum.
pub fn init_cmos(rtc: &mut Rtc, ram_size: u64, order: &[BootDevice]) {
    let ext_kib = (ram_size.saturating_sub(1 << 20) / 1024).min(0xFFFF) as u16;
    let above_16m = (ram_size.saturating_sub(16 << 20) / 65536).min(0xFFFF) as u16;
    let above_4g = ram_size.saturating_sub(1 << 32) / 65536;
    let code = |d: &BootDevice| match d {
        BootDevice::Floppy => 1u16,
        BootDevice::HardDisk => 2,
        BootDevice::Cdrom => 3,
    };
    let boot = order
        .iter()
        .take(3)
        .enumerate()
        .fold(0u16, |acc, (i, d)| acc | code(d) << (4 * i));
    for (index, value) in [
        (0x10, 0x00), // no floppy drives (there is no floppy controller)
        (0x14, 0x06), // equipment: x87, colour 80x25, no floppy
        (0x15, 0x80), // 640 KiB base memory
        (0x16, 0x02),
        (0x17, ext_kib as u8),
        (0x18, (ext_kib >> 8) as u8),
        (0x30, ext_kib as u8),
        (0x31, (ext_kib >> 8) as u8),
        (0x34, above_16m as u8),
        (0x35, (above_16m >> 8) as u8),
        (0x38, ((boot >> 4) & 0xF0) as u8),
        (0x3D, boot as u8),
        (0x5B, above_4g as u8),
        (0x5C, (above_4g >> 8) as u8),
        (0x5D, (above_4g >> 16) as u8),
        (0x5F, 0), // processors beyond the first
    ] {
        rtc.set_cmos(index, value);
    }
    let sum: u16 = (0x10..=0x2D).map(|i| rtc.cmos(i) as u16).sum();
    rtc.set_cmos(0x2E, (sum >> 8) as u8);
    rtc.set_cmos(0x2F, sum as u8);
}

/// Largest option ROM: the whole option-ROM space, C0000-DFFFF.
const MAX_OPTION_ROM: usize = 128 << 10;

/// Checks that an option ROM looks like one: the 55h AAh signature, and no larger than
/// the option-ROM space.
pub fn check_option_rom(rom: &[u8]) -> Result<(), MachineError> {
    if rom.len() < 3 || rom[0] != 0x55 || rom[1] != 0xAA || rom.len() > MAX_OPTION_ROM {
        return Err(MachineError(format!(
            "option ROM of {} bytes: it must start with 55h AAh and be at most 128 KiB",
            rom.len()
        )));
    }
    Ok(())
}

/// QEMU's fw_cfg as SeaBIOS reads it on this machine: one processor, the ACPI tables
/// (the same ones the built-in BIOS installs, for power-off) with the linker script that
/// tells the firmware where to put them and how to fix up their pointers, and a VGA
/// BIOS if one is given, as the option ROM of the VGA's PCI function (SeaBIOS looks for
/// `pciVVVV,DDDD.rom` before the device's ROM BAR, as QEMU offers it, and runs it with
/// the function's address: SeaVGABIOS then finds the framebuffer at BAR 0 wherever
/// SeaBIOS put it).
/// Memory size and boot order come from CMOS ([`init_cmos`]).
pub fn fw_cfg(ram_size: u64, vga_bios: Option<Vec<u8>>) -> FwCfg {
    let mut cfg = FwCfg::new();
    cfg.set_item(fw_cfg::KEY_NB_CPUS, 1u16.to_le_bytes().to_vec());
    cfg.set_item(fw_cfg::KEY_MAX_CPUS, 1u16.to_le_bytes().to_vec());
    if let Some(rom) = vga_bios {
        let (vendor, device) = hospes_devices::vga::PCI_ID;
        if let Err(e) = cfg.add_file(&format!("pci{vendor:04x},{device:04x}.rom"), rom) {
            log::warn!("{e}");
        }
    }
    match acpi_files(ram_size) {
        Some(files) => {
            for (name, data) in files {
                if let Err(e) = cfg.add_file(name, data) {
                    log::warn!("{e}");
                }
            }
        }
        None => log::warn!("ACPI tables: unexpected layout, not offered to the firmware"),
    }
    cfg
}

const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
const TABLE_LOADER_FILE: &str = "etc/table-loader";

/// The linker script's commands (each 128 bytes: a command number, then its fields).
const LOADER_ALLOCATE: u32 = 1;
const LOADER_ADD_POINTER: u32 = 2;
const LOADER_ADD_CHECKSUM: u32 = 3;
/// ALLOCATE zones: anywhere in high RAM, or in the F segment (where an OS looks for the
/// RSDP).
const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;

fn loader_name(name: &str) -> [u8; 56] {
    let mut field = [0u8; 56];
    field[..name.len()].copy_from_slice(name.as_bytes());
    field
}

fn loader_command(command: u32, fields: &[&[u8]]) -> Vec<u8> {
    let mut entry = command.to_le_bytes().to_vec();
    for f in fields {
        entry.extend_from_slice(f);
    }
    entry.resize(128, 0);
    entry
}

/// The ACPI tables as fw_cfg files: the tables with every pointer made relative to the
/// start of their file, the RSDP, and the linker script that allocates both, adds the
/// tables' address to each pointer and recomputes the checksums. None if the tables do
/// not have the layout walked here (RSDP -> RSDT -> tables; the FADT's FACS and DSDT).
fn acpi_files(ram_size: u64) -> Option<Vec<(&'static str, Vec<u8>)>> {
    let acpi = hospes_bios::acpi::build(ram_size);
    let mut tables = acpi.tables;
    let mut rsdp = acpi.rsdp;
    let get32 = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    // Turns the absolute pointer at `at` into an offset in the tables file.
    let rebase = |b: &mut [u8], at: usize| -> Option<usize> {
        let offset = get32(b, at)?.checked_sub(acpi.base)? as usize;
        b[at..at + 4].copy_from_slice(&(offset as u32).to_le_bytes());
        Some(offset)
    };
    let mut pointers: Vec<(&str, usize)> = vec![(ACPI_RSDP_FILE, 16)];
    let rsdt = rebase(&mut rsdp, 16)?;
    let rsdt_len = get32(&tables, rsdt + 4)? as usize;
    let mut checksummed = vec![(rsdt, rsdt_len)];
    for entry in (rsdt + 36..rsdt + rsdt_len).step_by(4) {
        let table = rebase(&mut tables, entry)?;
        pointers.push((ACPI_TABLES_FILE, entry));
        let len = get32(&tables, table + 4)? as usize;
        checksummed.push((table, len));
        if tables.get(table..table + 4)? == b"FACP" {
            for field in [36, 40] {
                let target = rebase(&mut tables, table + field)?;
                pointers.push((ACPI_TABLES_FILE, table + field));
                if tables.get(target..target + 4)? == b"DSDT" {
                    let len = get32(&tables, target + 4)? as usize;
                    checksummed.push((target, len));
                }
            }
        }
    }
    if checksummed.iter().any(|&(at, len)| at + len > tables.len()) {
        return None;
    }
    let name = loader_name;
    let mut loader = Vec::new();
    loader.extend(loader_command(
        LOADER_ALLOCATE,
        &[&name(ACPI_TABLES_FILE), &64u32.to_le_bytes(), &[ZONE_HIGH]],
    ));
    loader.extend(loader_command(
        LOADER_ALLOCATE,
        &[&name(ACPI_RSDP_FILE), &16u32.to_le_bytes(), &[ZONE_FSEG]],
    ));
    for (file, at) in pointers {
        loader.extend(loader_command(
            LOADER_ADD_POINTER,
            &[
                &name(file),
                &name(ACPI_TABLES_FILE),
                &(at as u32).to_le_bytes(),
                &[4],
            ],
        ));
    }
    for (at, len) in checksummed {
        loader.extend(loader_command(
            LOADER_ADD_CHECKSUM,
            &[
                &name(ACPI_TABLES_FILE),
                &(at as u32 + 9).to_le_bytes(),
                &(at as u32).to_le_bytes(),
                &(len as u32).to_le_bytes(),
            ],
        ));
    }
    let rsdp_len = rsdp.len() as u32;
    loader.extend(loader_command(
        LOADER_ADD_CHECKSUM,
        &[
            &name(ACPI_RSDP_FILE),
            &8u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &rsdp_len.min(20).to_le_bytes(),
        ],
    ));
    Some(vec![
        (ACPI_TABLES_FILE, tables),
        (ACPI_RSDP_FILE, rsdp),
        (TABLE_LOADER_FILE, loader),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_roms() {
        assert!(check_option_rom(&[0x55, 0xAA, 0x40, 0xCB]).is_ok());
        assert!(check_option_rom(&[0x55, 0xAA]).is_err());
        assert!(check_option_rom(&[0xAA, 0x55, 0x40]).is_err());
        let mut big = vec![0u8; (128 << 10) + 1];
        big[0] = 0x55;
        big[1] = 0xAA;
        assert!(check_option_rom(&big).is_err());
    }

    #[test]
    fn image_sizes() {
        assert!(check_image(64 << 10).is_ok());
        assert!(check_image(256 << 10).is_ok());
        assert!(check_image(16 << 20).is_ok());
        for bad in [
            0,
            512,
            32 << 10,
            (64 << 10) + 1,
            100 << 10,
            (16 << 20) + (64 << 10),
        ] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_at_4g_and_below_1m() {
        let mut image = vec![0u8; 256 << 10];
        image[0] = 1;
        image[(128 << 10) - 1] = 2;
        image[128 << 10] = 3;
        let last = image.len() - 16;
        image[last] = 0xEA;
        let mut mem = PhysMem::new(2 << 20, image.len()).unwrap();
        map_image(&mut mem, &image).unwrap();
        assert_eq!(mem.read_u8(0xFFFC_0000), 1);
        assert_eq!(mem.read_u8(0xFFFF_FFF0), 0xEA);
        assert_eq!(mem.read_u8(0xE_0000), 3);
        assert_eq!(mem.read_u8(0xF_FFF0), 0xEA);
        assert_eq!(mem.read_u8(0xD_FFFF), 0, "below the window is RAM");
        mem.write(0xF_FFF0, &[0]);
        assert_eq!(mem.read_u8(0xF_FFF0), 0xEA, "read-only");

        let mut small = vec![0u8; 64 << 10];
        small[0] = 7;
        let mut mem = PhysMem::new(2 << 20, small.len()).unwrap();
        map_image(&mut mem, &small).unwrap();
        assert_eq!(mem.read_u8(0xF_0000), 7);
        assert_eq!(mem.read_u8(0xFFFF_0000), 7);
        assert!(mem.backing(0xE_0000) != mem.backing(0xF_0000));
    }

    /// Plays the linker script as firmware would, with the tables at one address and the
    /// RSDP at another, and checks the result links up and sums to zero.
    #[test]
    fn acpi_linker_script_relocates_the_tables() {
        let files = acpi_files(64 << 20).unwrap();
        let file = |n: &str| files.iter().find(|f| f.0 == n).unwrap().1.clone();
        let mut data = [file(ACPI_TABLES_FILE), file(ACPI_RSDP_FILE)];
        let addr = [0x0300_0000u32, 0xF_5000];
        let index = |name: &[u8]| {
            let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
            [ACPI_TABLES_FILE, ACPI_RSDP_FILE]
                .iter()
                .position(|n| n.as_bytes() == name)
                .unwrap()
        };
        let loader = file(TABLE_LOADER_FILE);
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        for cmd in loader.chunks(128) {
            match u32_at(cmd, 0) {
                LOADER_ALLOCATE => {}
                LOADER_ADD_POINTER => {
                    let (dest, src) = (index(&cmd[4..60]), index(&cmd[60..116]));
                    let at = u32_at(cmd, 116) as usize;
                    assert_eq!(cmd[120], 4);
                    let v = u32_at(&data[dest], at) + addr[src];
                    data[dest][at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                LOADER_ADD_CHECKSUM => {
                    let f = index(&cmd[4..60]);
                    let (at, start, len) = (
                        u32_at(cmd, 60) as usize,
                        u32_at(cmd, 64) as usize,
                        u32_at(cmd, 68) as usize,
                    );
                    let sum = data[f][start..start + len]
                        .iter()
                        .fold(0u8, |s, b| s.wrapping_add(*b));
                    data[f][at] = data[f][at].wrapping_sub(sum);
                }
                other => panic!("command {other}"),
            }
        }
        let sum = |b: &[u8]| b.iter().fold(0u8, |s, x| s.wrapping_add(*x));
        let [tables, rsdp] = &data;
        assert_eq!(sum(&rsdp[..20]), 0);
        let local = |a: u32| (a - addr[0]) as usize;
        let rsdt = local(u32_at(rsdp, 16));
        assert_eq!(&tables[rsdt..rsdt + 4], b"RSDT");
        assert_eq!(
            sum(&tables[rsdt..rsdt + u32_at(tables, rsdt + 4) as usize]),
            0
        );
        let fadt = local(u32_at(tables, rsdt + 36));
        assert_eq!(&tables[fadt..fadt + 4], b"FACP");
        assert_eq!(
            sum(&tables[fadt..fadt + u32_at(tables, fadt + 4) as usize]),
            0
        );
        let facs = u32_at(tables, fadt + 36);
        assert_eq!(facs % 64, 0);
        assert_eq!(&tables[local(facs)..local(facs) + 4], b"FACS");
        let dsdt = local(u32_at(tables, fadt + 40));
        assert_eq!(&tables[dsdt..dsdt + 4], b"DSDT");
        assert_eq!(
            sum(&tables[dsdt..dsdt + u32_at(tables, dsdt + 4) as usize]),
            0
        );
    }

    #[test]
    fn cmos_memory_and_boot_order() {
        let mut rtc = Rtc::new(0);
        init_cmos(
            &mut rtc,
            256 << 20,
            &[BootDevice::Cdrom, BootDevice::HardDisk, BootDevice::Floppy],
        );
        let word = |lo: u8| rtc.cmos(lo) as u32 | (rtc.cmos(lo + 1) as u32) << 8;
        assert_eq!(word(0x34) * 65536 + (16 << 20), 256 << 20);
        assert_eq!(word(0x30), 0xFFFF, "KiB above 1 MiB, capped");
        assert_eq!(rtc.cmos(0x3D), 0x23);
        assert_eq!(rtc.cmos(0x38), 0x10);
        assert_eq!(rtc.cmos(0x5B) | rtc.cmos(0x5C) | rtc.cmos(0x5D), 0);
        let sum: u32 = (0x10..=0x2D).map(|i| rtc.cmos(i) as u32).sum();
        assert_eq!((rtc.cmos(0x2E) as u32) << 8 | rtc.cmos(0x2F) as u32, sum);
    }
}
