//! Disk images behind the BIOS drives and the IDE devices, of any format [`image`]
//! reads.
//!
//! One [`Image`] per file, shared by the BIOS's drive and the IDE device on it, so both
//! see the same bytes. Its writes go to the file, or, with the overlay on (`--snapshot`,
//! and always while recording, so a replay starts from the same disk), to memory: the
//! file is then never written, and a snapshot carries the overlay.

use crate::board::DriveSlot;
use crate::snapshot::{DiskFile, DiskRole};
use hospes_bios::{Drive, DriveError, DriveKind, CDROM, FIRST_HARD_DISK, FLOPPY_A};
use hospes_devices::ide::IdeDevice;
use hospes_image::{self as image, DiskFormat};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

/// The overlay's unit: writes are kept by 512-byte sector.
const SECTOR: u64 = 512;

/// Sectors written to memory in place of the file, by sector number.
pub type Overlay = BTreeMap<u64, Box<[u8]>>;

/// An image file and, if on, the overlay in front of it.
pub struct ImageFile {
    format: Box<dyn DiskFormat>,
    /// The size the guest sees.
    len: u64,
    writable: bool,
    overlay: Option<Overlay>,
}

/// An image file as the machine shares it between the BIOS and IDE.
pub type Image = Rc<RefCell<ImageFile>>;

impl ImageFile {
    /// Opens an image of any format, for writing too unless `read_only` (or the file
    /// is read-only).
    pub fn open(path: &Path, read_only: bool) -> Result<ImageFile, String> {
        Ok(ImageFile::new(image::open(path, !read_only, None)?))
    }

    pub fn new(format: Box<dyn DiskFormat>) -> ImageFile {
        ImageFile {
            len: format.len(),
            writable: format.is_writable(),
            format,
            overlay: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// From now on, writes go to memory (those already made stay in the file).
    pub fn use_overlay(&mut self) {
        self.overlay.get_or_insert_with(Overlay::new);
    }

    /// The overlay (None when writes go to the file).
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// Replaces the overlay (a snapshot's).
    pub fn set_overlay(&mut self, overlay: Option<Overlay>) -> Result<(), String> {
        let sectors = self.len.div_ceil(SECTOR);
        let fits = |o: &Overlay| {
            o.iter()
                .all(|(&n, data)| n < sectors && data.len() == SECTOR as usize)
        };
        if !overlay.as_ref().is_none_or(fits) {
            return Err("a disk overlay that does not fit its image".into());
        }
        self.overlay = overlay;
        Ok(())
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), String> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err("an access past the end of the image".into()),
        }
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.check(offset, buf.len())?;
        self.format.read_at(offset, buf)?;
        let Some(overlay) = &self.overlay else {
            return Ok(());
        };
        let end = offset + buf.len() as u64;
        for (&n, data) in overlay.range(offset / SECTOR..end.div_ceil(SECTOR)) {
            let (start, stop) = ((n * SECTOR).max(offset), ((n + 1) * SECTOR).min(end));
            buf[(start - offset) as usize..(stop - offset) as usize].copy_from_slice(
                &data[(start - n * SECTOR) as usize..(stop - n * SECTOR) as usize],
            );
        }
        Ok(())
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        if !self.writable && self.overlay.is_none() {
            return Err("the image is read-only".into());
        }
        self.check(offset, data.len())?;
        if self.overlay.is_none() {
            return self.format.write_at(offset, data);
        }
        let end = offset + data.len() as u64;
        for n in offset / SECTOR..end.div_ceil(SECTOR) {
            let mut sector = vec![0u8; SECTOR as usize];
            let base = n * SECTOR;
            let whole = base >= offset && base + SECTOR <= end;
            if !whole {
                // Only part of the sector is written: the rest as it reads now (the
                // last sector of an image may be short: zeros past its end).
                let avail = (self.len - base).min(SECTOR) as usize;
                self.read(base, &mut sector[..avail])?;
            }
            let (start, stop) = (base.max(offset), (base + SECTOR).min(end));
            sector[(start - base) as usize..(stop - base) as usize]
                .copy_from_slice(&data[(start - offset) as usize..(stop - offset) as usize]);
            if let Some(o) = &mut self.overlay {
                o.insert(n, sector.into_boxed_slice());
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), String> {
        match self.overlay {
            Some(_) => Ok(()),
            None => self.format.flush(),
        }
    }

    fn read_only(&self) -> bool {
        !self.writable && self.overlay.is_none()
    }
}

/// An image as a BIOS drive: sector `n` is at byte `n * sector_size`.
pub struct RawDrive {
    image: Image,
    kind: DriveKind,
    sector_size: u32,
    sectors: u64,
}

impl RawDrive {
    /// CD-ROMs have 2048-byte sectors; a trailing partial sector is not addressable.
    pub fn new(image: Image, kind: DriveKind) -> Result<RawDrive, String> {
        let sector_size = if kind == DriveKind::Cdrom { 2048 } else { 512 };
        let len = image.borrow().len();
        if len < sector_size as u64 {
            return Err("too small to be a disk image".into());
        }
        Ok(RawDrive {
            image,
            kind,
            sector_size,
            sectors: len / sector_size as u64,
        })
    }

    fn offset(&self, lba: u64) -> Result<u64, DriveError> {
        if lba >= self.sectors {
            return Err(DriveError(format!("sector {lba} is past the end")));
        }
        Ok(lba * self.sector_size as u64)
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
        let offset = self.offset(lba)?;
        self.image
            .borrow_mut()
            .read(offset, buf)
            .map_err(DriveError)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DriveError> {
        if self.kind == DriveKind::Cdrom {
            return Err(DriveError("a CD-ROM is read-only".into()));
        }
        let offset = self.offset(lba)?;
        self.image
            .borrow_mut()
            .write(offset, buf)
            .map_err(DriveError)
    }
}

/// An image as the IDE controller sees it (byte offsets).
pub struct FileBackend {
    image: Image,
    /// A CD medium: never written, whatever the file allows.
    read_only: bool,
}

impl hospes_devices::ide::BlockBackend for FileBackend {
    fn sector_count(&self) -> u64 {
        self.image.borrow().len() / 512
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.image.borrow_mut().read(offset, buf)
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), String> {
        if self.read_only {
            return Err("the image is read-only".into());
        }
        self.image.borrow_mut().write(offset, buf)
    }
    fn flush(&mut self) -> Result<(), String> {
        self.image.borrow_mut().flush()
    }
    fn read_only(&self) -> bool {
        self.read_only || self.image.borrow().read_only()
    }
}

/// The IDE devices of the primary and secondary channels, (master, slave) each.
pub type IdeDevices = [(Option<IdeDevice>, Option<IdeDevice>); 2];

/// The disk images of a machine, opened: the BIOS's drives, the IDE devices, and each
/// file's [`Image`] in the order given.
pub struct Attached {
    pub drives: Vec<DriveSlot>,
    pub ide: IdeDevices,
    pub images: Vec<Image>,
}

/// Opens the disk images for the BIOS and for IDE, wired as QEMU does: hda/hdb on the
/// primary channel, the CD-ROM as the secondary master (the floppy is the BIOS's only).
pub fn attach(files: &[DiskFile]) -> Result<Attached, String> {
    let mut out = Attached {
        drives: Vec::new(),
        ide: [(None, None), (None, None)],
        images: Vec::new(),
    };
    for file in files {
        let path = &file.path;
        let (number, kind) = match file.role {
            DiskRole::Floppy => (FLOPPY_A, DriveKind::Floppy),
            DiskRole::Hda => (FIRST_HARD_DISK, DriveKind::HardDisk),
            DiskRole::Hdb => (FIRST_HARD_DISK + 1, DriveKind::HardDisk),
            DiskRole::Cdrom => (CDROM, DriveKind::Cdrom),
        };
        if out.drives.iter().any(|d| d.number == number) {
            return Err(format!(
                "two images for the same drive ({})",
                path.display()
            ));
        }
        let cd = file.role == DiskRole::Cdrom;
        let image = match &file.member {
            Some(name) => {
                // Read-only in the archive: the guest's writes go to memory.
                let mut image = ImageFile::new(image::ova::open_disk(path, name)?);
                image.use_overlay();
                image
            }
            None => ImageFile::open(path, cd)?,
        };
        let image = Rc::new(RefCell::new(image));
        let drive =
            RawDrive::new(image.clone(), kind).map_err(|e| format!("{}: {e}", path.display()))?;
        out.drives.push(DriveSlot {
            number,
            drive: Box::new(drive),
        });
        out.images.push(image.clone());
        let slot = match file.role {
            DiskRole::Floppy => continue,
            DiskRole::Hda => &mut out.ide[0].0,
            DiskRole::Hdb => &mut out.ide[0].1,
            DiskRole::Cdrom => &mut out.ide[1].0,
        };
        let backend = Box::new(FileBackend {
            image,
            read_only: cd,
        });
        *slot = Some(if cd {
            IdeDevice::Cdrom(Some(backend))
        } else {
            IdeDevice::Disk(backend)
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: &[u8]) -> (tempfile_path::Scratch, ImageFile) {
        let scratch = tempfile_path::Scratch::new(bytes);
        let image = ImageFile::open(&scratch.0, false).expect("open");
        (scratch, image)
    }

    /// A file removed when dropped.
    mod tempfile_path {
        pub struct Scratch(pub std::path::PathBuf);
        impl Scratch {
            pub fn new(bytes: &[u8]) -> Scratch {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "hospes-disk-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, bytes).expect("write scratch image");
                Scratch(path)
            }
        }
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn the_overlay_takes_writes_and_the_file_stays_as_it_was() {
        let original: Vec<u8> = (0..1300u32).map(|i| i as u8).collect();
        let (scratch, mut img) = image(&original);
        img.use_overlay();
        // Across a sector boundary, partly into the short last sector.
        img.write(500, &[0xAA; 20]).expect("write");
        img.write(1290, &[0xBB; 10]).expect("write at the end");
        assert!(img.write(1295, &[0; 10]).is_err(), "past the end");
        let mut all = vec![0u8; 1300];
        img.read(0, &mut all).expect("read");
        let mut expected = original.clone();
        expected[500..520].fill(0xAA);
        expected[1290..1300].fill(0xBB);
        assert_eq!(all, expected);
        let mut part = [0u8; 8];
        img.read(516, &mut part).expect("read");
        assert_eq!(part, [0xAA, 0xAA, 0xAA, 0xAA, 8, 9, 10, 11]);
        assert_eq!(std::fs::read(&scratch.0).expect("file"), original);
        assert_eq!(img.overlay().map(|o| o.len()), Some(3));
        // Back to a snapshot's overlay (none: the file's bytes).
        img.set_overlay(Some(Overlay::new())).expect("fits");
        img.read(0, &mut all).expect("read");
        assert_eq!(all, original);
        let mut bad = Overlay::new();
        bad.insert(3, vec![0; 512].into_boxed_slice());
        assert!(img.set_overlay(Some(bad)).is_err());
    }

    #[test]
    fn without_the_overlay_writes_reach_the_file() {
        let (scratch, mut img) = image(&[0u8; 1024]);
        img.write(510, &[1, 2, 3, 4]).expect("write");
        let file = std::fs::read(&scratch.0).expect("file");
        assert_eq!(&file[508..516], &[0, 0, 1, 2, 3, 4, 0, 0]);
    }
}
