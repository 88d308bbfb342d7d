//! A raw image: guest byte `n` is the file's byte `n`.

use super::{CreateOptions, DiskFormat, Storage};
use std::path::Path;

pub struct Raw {
    storage: Box<dyn Storage>,
    len: u64,
    writable: bool,
}

impl Raw {
    pub fn new(storage: Box<dyn Storage>, writable: bool) -> Result<Raw, String> {
        let len = storage.size().map_err(|e| format!("cannot read: {e}"))?;
        Ok(Raw {
            storage,
            len,
            writable,
        })
    }

    /// A sparse file of `size` zero bytes.
    pub fn create(path: &Path, size: u64, options: &CreateOptions) -> Result<(), String> {
        if options.variant.is_some() || options.backing_file.is_some() {
            return Err("a raw image has no variants or backing files".into());
        }
        if options.cluster_size.is_some() {
            return Err("a raw image has no cluster size".into());
        }
        let file = std::fs::File::create(path).map_err(|e| format!("cannot create: {e}"))?;
        file.set_len(size).map_err(|e| format!("cannot size: {e}"))
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), String> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err("an access past the end of the image".into()),
        }
    }
}

impl DiskFormat for Raw {
    fn format_name(&self) -> &'static str {
        "raw"
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.check_range(offset, buf.len())?;
        self.storage
            .read_exact_at(buf, offset)
            .map_err(|e| e.to_string())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        if !self.writable {
            return Err("the image is read-only".into());
        }
        self.check_range(offset, data.len())?;
        self.storage
            .write_all_at(data, offset)
            .map_err(|e| e.to_string())
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
    fn flush(&mut self) -> Result<(), String> {
        self.storage.sync().map_err(|e| e.to_string())
    }
}
