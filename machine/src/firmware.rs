//! What the machine does for the firmware before the CPU runs: mapping a firmware image
//! given in place of the built-in BIOS, and the CMOS bytes a PC's firmware reads to learn
//! the RAM size and the boot order (set here for whichever firmware runs).

use crate::MachineError;
use hospes_bios::BootDevice;
use hospes_cpu::mem::PhysMem;
use hospes_devices::rtc::Rtc;

/// Smallest and largest firmware images, and the unit their size comes in.
pub const MIN_IMAGE: usize = 64 << 10;
pub const MAX_IMAGE: usize = 16 << 20;
/// How much of the image's end also appears below 1 MiB (at E0000-FFFFF).
const LOW_WINDOW: usize = 128 << 10;

/// Checks that a firmware image can be mapped: a whole number of 64 KiB blocks, from
/// 64 KiB to 16 MiB.
pub fn check_image(len: usize) -> Result<(), MachineError> {
    if len < MIN_IMAGE || len > MAX_IMAGE || !len.is_multiple_of(MIN_IMAGE) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(word(0x30), 255 * 1024);
        assert_eq!(rtc.cmos(0x3D), 0x23);
        assert_eq!(rtc.cmos(0x38), 0x10);
        assert_eq!(rtc.cmos(0x5B) | rtc.cmos(0x5C) | rtc.cmos(0x5D), 0);
        let sum: u32 = (0x10..=0x2D).map(|i| rtc.cmos(i) as u32).sum();
        assert_eq!((rtc.cmos(0x2E) as u32) << 8 | rtc.cmos(0x2F) as u32, sum);
    }
}
