//! Disk images behind the BIOS drives: raw image files for now (the block-backend layer
//! with qcow2, VMDK and VDI comes with the disk-image issue).

use crate::board::DriveSlot;
use crate::snapshot::{DiskFile, DiskRole};
use hospes_bios::{Drive, DriveError, DriveKind, CDROM, FIRST_HARD_DISK, FLOPPY_A};
use hospes_devices::ide::IdeDevice;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A raw image file: sector `n` is at byte `n * sector_size`.
pub struct RawDrive {
    file: File,
    kind: DriveKind,
    sector_size: u32,
    sectors: u64,
    writable: bool,
}

impl RawDrive {
    /// Opens an image. CD-ROMs are read-only with 2048-byte sectors; a trailing partial
    /// sector is not addressable.
    pub fn open(path: &Path, kind: DriveKind) -> Result<RawDrive, String> {
        let writable = kind != DriveKind::Cdrom;
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .or_else(|e| {
                if writable && e.kind() == std::io::ErrorKind::PermissionDenied {
                    File::open(path)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        let sector_size = if kind == DriveKind::Cdrom { 2048 } else { 512 };
        if len < sector_size as u64 {
            return Err(format!(
                "{} is too small to be a disk image",
                path.display()
            ));
        }
        Ok(RawDrive {
            writable: writable
                && !file
                    .metadata()
                    .map(|m| m.permissions().readonly())
                    .unwrap_or(true),
            file,
            kind,
            sector_size,
            sectors: len / sector_size as u64,
        })
    }
}

impl Drive for RawDrive {
    fn kind(&self) -> DriveKind {
        self.kind
    }
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DriveError> {
        if lba >= self.sectors {
            return Err(DriveError(format!("sector {lba} is past the end")));
        }
        self.file
            .read_exact_at(buf, lba * self.sector_size as u64)
            .map_err(|e| DriveError(e.to_string()))
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DriveError> {
        if !self.writable {
            return Err(DriveError("the image is read-only".into()));
        }
        if lba >= self.sectors {
            return Err(DriveError(format!("sector {lba} is past the end")));
        }
        self.file
            .write_all_at(buf, lba * self.sector_size as u64)
            .map_err(|e| DriveError(e.to_string()))
    }
}

/// An image file as the IDE controller sees it (byte offsets). It opens its own handle
/// on the file, beside the BIOS's [`RawDrive`]; both write straight through, so each
/// sees the other's writes.
pub struct FileBackend {
    file: File,
    len: u64,
    read_only: bool,
}

impl FileBackend {
    pub fn open(path: &Path, read_only: bool) -> Result<FileBackend, String> {
        let file = if read_only {
            File::open(path)
        } else {
            OpenOptions::new().read(true).write(true).open(path)
        }
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        Ok(FileBackend {
            file,
            len,
            read_only,
        })
    }
}

impl hospes_devices::ide::BlockBackend for FileBackend {
    fn sector_count(&self) -> u64 {
        self.len / 512
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err("read past the end of the image".into());
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| e.to_string())
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), String> {
        if self.read_only {
            return Err("the image is read-only".into());
        }
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err("write past the end of the image".into());
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| e.to_string())
    }
    fn flush(&mut self) -> Result<(), String> {
        self.file.sync_data().map_err(|e| e.to_string())
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// The IDE devices of the primary and secondary channels, (master, slave) each.
pub type IdeDevices = [(Option<IdeDevice>, Option<IdeDevice>); 2];

/// Opens the disk images for the BIOS and for IDE, wired as QEMU does: hda/hdb on the
/// primary channel, the CD-ROM as the secondary master (the floppy is the BIOS's only).
pub fn attach(files: &[DiskFile]) -> Result<(Vec<DriveSlot>, IdeDevices), String> {
    let mut drives = Vec::new();
    let mut ide: IdeDevices = [(None, None), (None, None)];
    for file in files {
        let path = &file.path;
        let (number, kind) = match file.role {
            DiskRole::Floppy => (FLOPPY_A, DriveKind::Floppy),
            DiskRole::Hda => (FIRST_HARD_DISK, DriveKind::HardDisk),
            DiskRole::Hdb => (FIRST_HARD_DISK + 1, DriveKind::HardDisk),
            DiskRole::Cdrom => (CDROM, DriveKind::Cdrom),
        };
        if drives.iter().any(|d: &DriveSlot| d.number == number) {
            return Err(format!(
                "two images for the same drive ({})",
                path.display()
            ));
        }
        drives.push(DriveSlot {
            number,
            drive: Box::new(RawDrive::open(path, kind)?),
        });
        let slot = match file.role {
            DiskRole::Floppy => continue,
            DiskRole::Hda => &mut ide[0].0,
            DiskRole::Hdb => &mut ide[0].1,
            DiskRole::Cdrom => &mut ide[1].0,
        };
        let cd = file.role == DiskRole::Cdrom;
        let backend = Box::new(FileBackend::open(path, cd)?);
        *slot = Some(if cd {
            IdeDevice::Cdrom(Some(backend))
        } else {
            IdeDevice::Disk(backend)
        });
    }
    Ok((drives, ide))
}
