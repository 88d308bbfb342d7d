//! Disk image formats: raw, qcow2, VMDK and VDI, each behind [`DiskFormat`], found
//! from the file's content by [`open`].
//!
//! Every format reads its file through [`Storage`] (a file, or bytes in memory for the
//! fuzz targets) and treats it as hostile: each offset and size read from it is checked
//! before use, so a damaged image gives a one-line error, never a panic or an access
//! outside the file.

pub mod ova;
pub mod qcow2;
pub mod raw;
pub mod vdi;
pub mod vmdk;

#[cfg(test)]
mod testing;

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

// Numbers in the formats' headers and tables, from bytes the caller has checked
// are there.
pub(crate) fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub(crate) fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub(crate) fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

pub(crate) fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub(crate) fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// The bytes an image format lives in.
pub trait Storage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes what was written durable (fdatasync for a file).
    fn sync(&self) -> io::Result<()>;
}

impl Storage for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// An image in memory, for tests and fuzzing: it grows on writes up to `limit` bytes
/// (a hostile header must not make a fuzz run allocate without bound).
pub struct MemStorage {
    pub bytes: RefCell<Vec<u8>>,
    pub limit: u64,
}

impl MemStorage {
    pub fn new(bytes: Vec<u8>, limit: u64) -> MemStorage {
        MemStorage {
            bytes: RefCell::new(bytes),
            limit,
        }
    }
}

impl Storage for MemStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.borrow();
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= bytes.len() as u64 => {
                buf.copy_from_slice(&bytes[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= self.limit)
            .ok_or_else(|| io::Error::other("past the in-memory image's limit"))?;
        let mut bytes = self.bytes.borrow_mut();
        if bytes.len() < end as usize {
            bytes.resize(end as usize, 0);
        }
        bytes[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes.borrow().len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > self.limit {
            return Err(io::Error::other("past the in-memory image's limit"));
        }
        self.bytes.borrow_mut().resize(len as usize, 0);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// What `hospes img check` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Inconsistencies that can lose or corrupt data (a table pointing outside the
    /// file, two guest blocks sharing one host block, a wrong reference count ...).
    pub errors: Vec<String>,
    /// Host blocks allocated but used by nothing (harmless: space lost, data safe).
    pub leaked_clusters: u64,
}

/// How to make a new image (`hospes img create`, `convert`). A format refuses what it
/// cannot do with a one-line error.
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    /// The format's variant: VMDK "monolithicSparse" (default), "monolithicFlat" or
    /// "streamOptimized"; VDI "dynamic" (default) or "static"; qcow2 "v3" (default)
    /// or "v2".
    pub variant: Option<String>,
    /// qcow2's cluster size in bytes (default 64 KiB).
    pub cluster_size: Option<u64>,
    /// A qcow2 backing file, as written into the new image.
    pub backing_file: Option<PathBuf>,
}

/// An open disk image, as the machine and `hospes img` use it.
pub trait DiskFormat {
    /// The format's name as `qemu-img` spells it: "raw", "qcow2", "vmdk", "vdi".
    fn format_name(&self) -> &'static str;
    /// The virtual disk size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads guest bytes (`offset + buf.len()` at most `len()`).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    /// Writes guest bytes, allocating as needed; fails on an image opened read-only.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String>;
    /// Whether writes are accepted (false when opened or found read-only).
    fn is_writable(&self) -> bool;
    /// Makes every write so far durable (the guest's FLUSH CACHE, and on exit).
    fn flush(&mut self) -> Result<(), String>;
    /// Format details for `hospes img info`, as (name, value) lines.
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Checks the metadata's consistency (`hospes img check`); Err when it cannot.
    fn check(&mut self) -> Result<CheckReport, String> {
        Ok(CheckReport::default())
    }
}

/// The formats `hospes img create` can make.
pub const CREATABLE: &[&str] = &["raw", "qcow2", "vmdk", "vdi"];

/// Bytes read from the start of a file to find its format.
pub const PROBE_BYTES: usize = 1024;

/// The format a file's first bytes (up to [`PROBE_BYTES`]) show; "raw" when none.
pub fn probe(head: &[u8]) -> &'static str {
    if qcow2::Qcow2::probe(head) {
        "qcow2"
    } else if vdi::Vdi::probe(head) {
        "vdi"
    } else if vmdk::Vmdk::probe(head) {
        "vmdk"
    } else {
        "raw"
    }
}

/// Opens a file for reading, and for writing too if `writable` and the file allows
/// it; says whether it got write access.
pub fn open_file(path: &Path, writable: bool) -> Result<(File, bool), String> {
    let opened = if writable {
        match OpenOptions::new().read(true).write(true).open(path) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                File::open(path).map(|f| (f, false))
            }
            other => other.map(|f| (f, true)),
        }
    } else {
        File::open(path).map(|f| (f, false))
    };
    opened.map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Opens an image of any format, found from its content (`format` forces one).
/// Read-only when `writable` is false or the file is not writable.
pub fn open(
    path: &Path,
    writable: bool,
    format: Option<&str>,
) -> Result<Box<dyn DiskFormat>, String> {
    let (file, writable) = open_file(path, writable)?;
    let len = Storage::size(&file).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut head = vec![0u8; (len as usize).min(PROBE_BYTES)];
    Storage::read_exact_at(&file, &mut head, 0)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let format = format.unwrap_or_else(|| probe(&head));
    let named = |e: String| format!("{}: {e}", path.display());
    Ok(match format {
        "raw" => Box::new(raw::Raw::new(Box::new(file), writable).map_err(named)?),
        "qcow2" => Box::new(qcow2::Qcow2::open(path, writable)?),
        "vdi" => Box::new(vdi::Vdi::open(path, writable)?),
        "vmdk" => Box::new(vmdk::Vmdk::open(path, writable)?),
        other => return Err(format!("unknown image format {other:?}")),
    })
}

/// Opens an image of any format (found from its content) that lies in `storage`:
/// a member of an archive, or bytes in memory (the fuzz targets). Formats that name
/// other files (backing files, VMDK extents) cannot be opened this way.
pub fn from_storage(
    storage: Box<dyn Storage>,
    writable: bool,
) -> Result<Box<dyn DiskFormat>, String> {
    let len = storage.size().map_err(|e| format!("cannot read: {e}"))?;
    let mut head = vec![0u8; (len as usize).min(PROBE_BYTES)];
    storage
        .read_exact_at(&mut head, 0)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(match probe(&head) {
        "raw" => Box::new(raw::Raw::new(storage, writable)?),
        "qcow2" => Box::new(qcow2::Qcow2::from_storage(storage, writable)?),
        "vdi" => Box::new(vdi::Vdi::from_storage(storage, writable)?),
        "vmdk" => Box::new(vmdk::Vmdk::from_storage(storage, writable)?),
        other => return Err(format!("{other} images cannot be opened from memory")),
    })
}

/// Makes a new image of `size` bytes (zeros) at `path`; an existing file is replaced.
pub fn create(path: &Path, format: &str, size: u64, options: &CreateOptions) -> Result<(), String> {
    let named = |e: String| format!("{}: {e}", path.display());
    match format {
        "raw" => raw::Raw::create(path, size, options).map_err(named),
        "qcow2" => qcow2::Qcow2::create(path, size, options).map_err(named),
        "vdi" => vdi::Vdi::create(path, size, options).map_err(named),
        "vmdk" => vmdk::Vmdk::create(path, size, options).map_err(named),
        other => Err(format!(
            "cannot create {other:?} images (formats: {})",
            CREATABLE.join(", ")
        )),
    }
}

/// The most bytes a fuzzed image held in memory may grow to.
pub const FUZZ_STORAGE_LIMIT: u64 = 64 << 20;

/// What the fuzz targets (and the hostile-image tests) do with an image made of
/// arbitrary bytes: read its start and spots `seed` picks, write a little, check it,
/// read again. Errors are expected and ignored; a panic is a bug.
pub fn exercise(image: &mut dyn DiskFormat, seed: &[u8]) {
    let len = image.len();
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < len.min(1 << 20) {
        let n = (len - at).min(buf.len() as u64) as usize;
        let _ = image.read_at(at, &mut buf[..n]);
        at += n as u64;
    }
    // Offsets from the seed's bytes, read as numbers, anywhere in the disk.
    let spots: Vec<u64> = seed
        .chunks(8)
        .take(16)
        .map(|c| c.iter().fold(0u64, |v, &b| v << 8 | b as u64))
        .map(|v| if len == 0 { 0 } else { v % len })
        .collect();
    for (i, &spot) in spots.iter().enumerate() {
        let n = (len - spot).min(4096 + i as u64 * 1000) as usize;
        if i % 4 == 3 {
            let _ = image.write_at(spot, &buf[..n]);
        }
        let _ = image.read_at(spot, &mut buf[..n]);
    }
    let _ = image.check();
    let _ = image.flush();
}
