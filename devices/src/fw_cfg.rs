//! QEMU's firmware configuration device (fw_cfg), the traditional I/O interface: write a
//! 16-bit item key to the selector port (0x510), then read the item's bytes one at a time
//! from the data port (0x511). Item 0 is the signature "QEMU", item 1 the interface
//! version, and item 0x19 a directory of named files (big-endian count, then 64-byte
//! entries: size, key, name). SeaBIOS reads its ACPI tables and their linker script from
//! such files; it does not need this device for anything else.

use crate::{Nanos, PortDevice};
use std::collections::BTreeMap;

pub const SELECTOR_PORT: u16 = 0x510;
pub const DATA_PORT: u16 = 0x511;

pub const KEY_SIGNATURE: u16 = 0x00;
pub const KEY_ID: u16 = 0x01;
pub const KEY_NB_CPUS: u16 = 0x05;
pub const KEY_MAX_CPUS: u16 = 0x0F;
pub const KEY_FILE_DIR: u16 = 0x19;
/// Keys given to files, in the order they are added.
const FIRST_FILE_KEY: u16 = 0x20;
/// Longest file name, without its NUL.
pub const MAX_NAME: usize = 55;
/// Interface version 1: the traditional port interface only (no DMA).
const ID_TRADITIONAL: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    next_file_key: u16,
    /// Directory entries: size, key, name.
    files: Vec<(u32, u16, String)>,
    selected: u16,
    offset: usize,
}

impl Default for FwCfg {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfg {
    /// The device with its signature and version items and an empty directory.
    pub fn new() -> FwCfg {
        let mut cfg = FwCfg {
            items: BTreeMap::new(),
            next_file_key: FIRST_FILE_KEY,
            files: Vec::new(),
            selected: 0,
            offset: 0,
        };
        cfg.items.insert(KEY_SIGNATURE, b"QEMU".to_vec());
        cfg.items
            .insert(KEY_ID, ID_TRADITIONAL.to_le_bytes().to_vec());
        cfg.items.insert(KEY_FILE_DIR, 0u32.to_be_bytes().to_vec());
        cfg
    }

    /// Sets a numbered item (little-endian values, as QEMU stores them).
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, data);
    }

    /// Adds a named file and returns its key. Names longer than [`MAX_NAME`] are refused.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, String> {
        if name.len() > MAX_NAME || name.is_empty() {
            return Err(format!("fw_cfg file name '{name}' is empty or too long"));
        }
        let key = self.next_file_key;
        self.next_file_key += 1;
        self.files.push((data.len() as u32, key, name.to_string()));
        self.items.insert(key, data);
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (size, key, name) in &self.files {
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; 56];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
        }
        self.items.insert(KEY_FILE_DIR, dir);
        Ok(key)
    }

    fn next_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selected)
            .and_then(|item| item.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }
}

impl PortDevice for FwCfg {
    /// The data port is one byte wide: wider reads take consecutive bytes, little endian.
    /// Past the end of an item, and for absent items, bytes read as 0.
    fn read(&mut self, port: u16, size: u8, _now: Nanos) -> u32 {
        if port != DATA_PORT {
            return 0;
        }
        (0..size.min(4)).fold(0, |v, i| v | (self.next_byte() as u32) << (8 * i))
    }

    /// Selecting an item rewinds it. Writes to the data port are ignored (as QEMU does
    /// since its items became read-only).
    fn write(&mut self, port: u16, _size: u8, value: u32, _now: Nanos) {
        if port == SELECTOR_PORT {
            self.selected = value as u16;
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(cfg: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        cfg.write(SELECTOR_PORT, 2, key as u32, 0);
        (0..len).map(|_| cfg.read(DATA_PORT, 1, 0) as u8).collect()
    }

    #[test]
    fn signature_version_items_and_files() {
        let mut cfg = FwCfg::new();
        assert_eq!(read_item(&mut cfg, KEY_SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&mut cfg, KEY_ID, 4), [1, 0, 0, 0]);
        assert_eq!(
            read_item(&mut cfg, 0x1234, 2),
            [0, 0],
            "absent items read 0"
        );
        cfg.set_item(KEY_NB_CPUS, 1u16.to_le_bytes().to_vec());
        assert_eq!(read_item(&mut cfg, KEY_NB_CPUS, 2), [1, 0]);
        assert_eq!(read_item(&mut cfg, KEY_FILE_DIR, 4), [0, 0, 0, 0]);
        let a = cfg.add_file("etc/a", vec![1, 2, 3]).unwrap();
        let b = cfg.add_file("etc/b", vec![9]).unwrap();
        assert_eq!((a, b), (0x20, 0x21));
        assert!(cfg.add_file(&"x".repeat(56), vec![]).is_err());
        let dir = read_item(&mut cfg, KEY_FILE_DIR, 4 + 128);
        assert_eq!(&dir[0..4], &[0, 0, 0, 2]);
        assert_eq!(&dir[4..8], &[0, 0, 0, 3]);
        assert_eq!(&dir[8..10], &[0, 0x20]);
        assert_eq!(&dir[12..18], b"etc/a\0");
        assert_eq!(&dir[68 + 4..68 + 6], &[0, 0x21]);
        // Wider reads take consecutive bytes; reselecting rewinds.
        cfg.write(SELECTOR_PORT, 2, a as u32, 0);
        assert_eq!(cfg.read(DATA_PORT, 2, 0), 0x0201);
        assert_eq!(cfg.read(DATA_PORT, 1, 0), 3);
        assert_eq!(cfg.read(DATA_PORT, 1, 0), 0);
        cfg.write(DATA_PORT, 1, 0xFF, 0);
        assert_eq!(read_item(&mut cfg, a, 3), [1, 2, 3]);
    }
}
