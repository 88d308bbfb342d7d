//! INT 13h: disk services for floppies, hard disks and the CD-ROM, including the EDD
//! extensions (AH=41h-48h) and the El Torito "no emulation" CD interface (AH=4Bh).
//!
//! Transfers go between the drive's image and guest memory directly, as if by DMA.
//! CHS addressing uses the usual translations: 1.44 MB geometry for floppies, 16 heads x
//! 63 sectors (or 255 heads for large disks) for hard disks.

use crate::{Bios, Drive, DriveKind, Platform, Regs, BDA, CDROM};
use hospes_cpu::state::{DS, ES};

// INT 13h status codes.
const OK: u8 = 0x00;
const BAD_COMMAND: u8 = 0x01;
const SECTOR_NOT_FOUND: u8 = 0x04;
const BOUNDARY: u8 = 0x09;
const READ_ERROR: u8 = 0x10;
const WRITE_PROTECTED: u8 = 0x03;
const NOT_READY: u8 = 0xAA;
const TIMEOUT: u8 = 0x80;

/// CHS geometry presented for a drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub cylinders: u32,
    pub heads: u32,
    pub sectors: u32,
}

pub(crate) fn geometry(kind: DriveKind, total: u64) -> Geometry {
    match kind {
        DriveKind::Floppy => match total {
            720 => Geometry {
                cylinders: 40,
                heads: 2,
                sectors: 9,
            },
            1440 => Geometry {
                cylinders: 80,
                heads: 2,
                sectors: 9,
            },
            2400 => Geometry {
                cylinders: 80,
                heads: 2,
                sectors: 15,
            },
            5760 => Geometry {
                cylinders: 80,
                heads: 2,
                sectors: 36,
            },
            _ => Geometry {
                cylinders: 80,
                heads: 2,
                sectors: 18,
            },
        },
        _ => {
            let heads = if total > 1024 * 16 * 63 { 255 } else { 16 };
            let cylinders = (total / (heads as u64 * 63)).clamp(1, 1024) as u32;
            Geometry {
                cylinders,
                heads,
                sectors: 63,
            }
        }
    }
}

/// What a transfer does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Verify,
}

impl Bios {
    pub(crate) fn int13(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        let drive_no = r.dl();
        let function = r.ah();
        let status = self.int13_function(r, p, drive_no, function);
        // AH=15h and 41h succeed with a value in AH rather than a status.
        let (ah, failed) = match function {
            0x15 | 0x41 if status != BAD_COMMAND && status != TIMEOUT => (status, false),
            _ => (status, status != OK),
        };
        if function != 0x01 {
            self.last_disk_status = if failed { status } else { OK };
        }
        r.set_ah(ah);
        r.set_carry(failed);
    }

    fn int13_function(&mut self, r: &mut Regs, p: &mut dyn Platform, dn: u8, f: u8) -> u8 {
        if f == 0x01 {
            return self.last_disk_status;
        }
        let Some(drive) = p.drive(dn) else {
            // AH=15h on an absent floppy drive: "no drive" (AH=00h) is a success.
            return if f == 0x15 && dn < 0x80 { OK } else { TIMEOUT };
        };
        let kind = drive.kind();
        let total = drive.sectors();
        let geo = geometry(kind, total);
        match f {
            0x00 | 0x04 | 0x0C | 0x0D | 0x10 | 0x11 | 0x47 => OK,
            0x02 | 0x03 => {
                let count = r.al() as u32;
                let cyl = r.ch() as u32 | ((r.cl() as u32 & 0xC0) << 2);
                let sector = (r.cl() & 0x3F) as u32;
                let head = r.dh() as u32;
                if sector == 0 || sector > geo.sectors || head >= geo.heads {
                    r.set_al(0);
                    return SECTOR_NOT_FOUND;
                }
                let lba = (cyl * geo.heads + head) * geo.sectors + sector - 1;
                let buf = r.lin(ES, r.bx());
                let op = if f == 0x02 { Op::Read } else { Op::Write };
                let (done, status) = transfer(r, drive, op, lba as u64, count, buf);
                r.set_al(done as u8);
                status
            }
            0x08 => {
                let (cyl, heads, sectors) = if kind == DriveKind::Cdrom {
                    return BAD_COMMAND;
                } else {
                    (geo.cylinders - 1, geo.heads - 1, geo.sectors)
                };
                r.set_ch(cyl as u8);
                r.set_cl((sectors as u8 & 0x3F) | ((cyl >> 2) as u8 & 0xC0));
                r.set_dh(heads as u8);
                if kind == DriveKind::Floppy {
                    r.set_bl(0x04); // 1.44 MB
                    r.set_dl(floppy_count(r));
                    r.set_ax(0);
                } else {
                    r.set_dl(r.rd8(BDA + 0x75));
                }
                OK
            }
            0x15 => {
                match kind {
                    DriveKind::Floppy => r.set_ah(0x02), // changeline supported
                    DriveKind::HardDisk => {
                        let n = total.min(u32::MAX as u64) as u32;
                        r.set_cx((n >> 16) as u16);
                        r.set_dx(n as u16);
                        r.set_ah(0x03);
                    }
                    DriveKind::Cdrom => r.set_ah(0x02),
                }
                // AH carries the type, not a status: return it as is.
                r.ah()
            }
            0x41 => {
                if r.bx() != 0x55AA || kind == DriveKind::Floppy {
                    return BAD_COMMAND;
                }
                r.set_bx(0xAA55);
                r.set_cx(0x0007);
                0x30 // EDD 3.0 (returned in AH)
            }
            0x42..=0x44 => {
                let packet = r.lin(DS, r.si());
                let size = r.rd8(packet);
                if size < 0x10 {
                    return BAD_COMMAND;
                }
                let count = r.rd16(packet + 2) as u32;
                let mut buf = (r.rd16(packet + 6) as u32) << 4;
                buf = buf.wrapping_add(r.rd16(packet + 4) as u32);
                if size >= 0x18 && r.rd32(packet + 4) == 0xFFFF_FFFF {
                    buf = r.rd32(packet + 0x10);
                }
                let lba = r.rd32(packet + 8) as u64 | (r.rd32(packet + 12) as u64) << 32;
                let op = match f {
                    0x42 => Op::Read,
                    0x43 => Op::Write,
                    _ => Op::Verify,
                };
                let (done, status) = transfer(r, drive, op, lba, count, buf);
                r.wr16(packet + 2, done as u16);
                status
            }
            0x48 => {
                let out = r.lin(DS, r.si());
                let size = r.rd16(out);
                if size < 0x1A {
                    return BAD_COMMAND;
                }
                let removable = kind != DriveKind::HardDisk;
                // Flags: CHS info valid (bit 1), removable (bit 2).
                let flags = if removable { 0x0004 } else { 0x0002 };
                r.wr16(out, 0x1A);
                r.wr16(out + 2, flags);
                let (c, h, s) = if kind == DriveKind::Cdrom {
                    (0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF)
                } else {
                    (geo.cylinders, geo.heads, geo.sectors)
                };
                r.wr32(out + 4, c);
                r.wr32(out + 8, h);
                r.wr32(out + 12, s);
                r.wr32(out + 16, total as u32);
                r.wr32(out + 20, (total >> 32) as u32);
                r.wr16(out + 24, drive.sector_size() as u16);
                OK
            }
            0x4B if dn == CDROM => {
                // Get emulation status / terminate: "no emulation" boot from this drive.
                if r.al() > 1 {
                    return BAD_COMMAND;
                }
                let out = r.lin(DS, r.si());
                let mut spec = [0u8; 0x13];
                spec[0] = 0x13;
                spec[1] = 0x00; // no emulation
                spec[2] = dn;
                spec[8..12].copy_from_slice(&self.cd_boot_image_lba.to_le_bytes());
                spec[0x0C..0x0E].copy_from_slice(&0u16.to_le_bytes());
                spec[0x0E..0x10].copy_from_slice(&0x07C0u16.to_le_bytes());
                spec[0x10..0x12].copy_from_slice(&self.cd_boot_sectors.to_le_bytes());
                r.write(out, &spec);
                OK
            }
            _ => BAD_COMMAND,
        }
    }
}

fn floppy_count(r: &Regs) -> u8 {
    let equipment = r.rd16(BDA + 0x10);
    if equipment & 1 == 0 {
        0
    } else {
        ((equipment >> 6) & 3) as u8 + 1
    }
}

/// Moves `count` sectors between the drive and guest memory at `buf`. Returns the
/// number of sectors done and the status.
fn transfer(
    r: &mut Regs,
    drive: &mut dyn Drive,
    op: Op,
    lba: u64,
    count: u32,
    buf: u32,
) -> (u32, u8) {
    let ss = drive.sector_size();
    let total = drive.sectors();
    let mut sector = vec![0u8; ss as usize];
    for i in 0..count {
        let l = lba + i as u64;
        if l >= total {
            return (i, SECTOR_NOT_FOUND);
        }
        let at = buf.wrapping_add(i * ss);
        if at as u64 + ss as u64 > 0x1_0000_0000 {
            return (i, BOUNDARY);
        }
        match op {
            Op::Read => {
                if drive.read(l, &mut sector).is_err() {
                    return (i, READ_ERROR);
                }
                r.write(at, &sector);
            }
            Op::Write => {
                if drive.kind() == DriveKind::Cdrom {
                    return (i, WRITE_PROTECTED);
                }
                r.read(at, &mut sector);
                if drive.write(l, &sector).is_err() {
                    return (i, NOT_READY);
                }
            }
            Op::Verify => {}
        }
    }
    (count, OK)
}

/// The El Torito boot image of an ISO 9660 CD, if it has a bootable "no emulation" entry:
/// (load segment, 512-byte sectors to load, image LBA in 2048-byte sectors).
pub(crate) fn el_torito_boot_entry(drive: &mut dyn Drive) -> Option<(u16, u16, u32)> {
    let mut sector = vec![0u8; 2048];
    // The boot record volume descriptor is at sector 17.
    drive.read(17, &mut sector).ok()?;
    if sector[0] != 0
        || &sector[1..6] != b"CD001"
        || !sector[7..].starts_with(b"EL TORITO SPECIFICATION")
    {
        return None;
    }
    let catalog = u32::from_le_bytes(sector[0x47..0x4B].try_into().ok()?);
    drive.read(catalog as u64, &mut sector).ok()?;
    // Validation entry: header 01, key bytes 55 AA, words summing to zero.
    if sector[0] != 1 || sector[0x1E] != 0x55 || sector[0x1F] != 0xAA {
        return None;
    }
    let sum = sector[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    if sum != 0 {
        return None;
    }
    let entry = &sector[32..64];
    if entry[0] != 0x88 || entry[1] & 0x0F != 0 {
        // Not bootable, or a floppy/hard-disk emulation image (not supported).
        return None;
    }
    let segment = match u16::from_le_bytes([entry[2], entry[3]]) {
        0 => 0x07C0,
        s => s,
    };
    let count = u16::from_le_bytes([entry[6], entry[7]]).max(1);
    let lba = u32::from_le_bytes(entry[8..12].try_into().ok()?);
    Some((segment, count, lba))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_disk_geometry_translation() {
        assert_eq!(
            geometry(DriveKind::HardDisk, 20480),
            Geometry {
                cylinders: 20,
                heads: 16,
                sectors: 63
            }
        );
        let big = geometry(DriveKind::HardDisk, 64 << 21);
        assert_eq!(big.heads, 255);
        assert_eq!(big.cylinders, 1024);
        assert_eq!(geometry(DriveKind::Floppy, 2880).sectors, 18);
    }
}
