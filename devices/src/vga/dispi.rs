//! The Bochs/QEMU "dispi" display interface (what Bochs calls VBE): an index port
//! (01CEh) and a data port (01CFh, also 01D0h) through which a guest sets a linear
//! graphics mode of any size at 8, 15, 16, 24 or 32 bits per pixel, a virtual width
//! and a display start, in 16 MiB of video memory of its own.
//!
//! The memory is reached two ways: the linear framebuffer (the VGA's PCI BAR 0,
//! [`Dispi::lfb_read`] / [`Dispi::lfb_write`]) and, while the interface is enabled,
//! 64 KiB banks through A0000h-AFFFFh chosen by the BANK register.
//!
//! Choices:
//! - The memory is allocated on the first write (or enable) and stays empty in a machine
//!   that never uses it, so snapshots of text-mode guests do not carry 16 MiB of zeros.
//! - XRES, YRES and BPP can be written only while the interface is disabled, as on
//!   Bochs; with ENABLE's GETCAPS bit set they read the maximums.
//! - The 8-bit DAC bit (20h) of ENABLE is kept but the DAC stays 6 bits wide.

/// Index port.
pub const INDEX_PORT: u16 = 0x1CE;
/// Data port (01D0h is an alias on Bochs).
pub const DATA_PORT: u16 = 0x1CF;

/// Bytes of video memory.
pub const MEMORY_SIZE: usize = 16 * 1024 * 1024;
pub const MAX_XRES: u16 = 2560;
pub const MAX_YRES: u16 = 1600;
pub const MAX_BPP: u16 = 32;

pub const INDEX_ID: u16 = 0;
pub const INDEX_XRES: u16 = 1;
pub const INDEX_YRES: u16 = 2;
pub const INDEX_BPP: u16 = 3;
pub const INDEX_ENABLE: u16 = 4;
pub const INDEX_BANK: u16 = 5;
pub const INDEX_VIRT_WIDTH: u16 = 6;
pub const INDEX_VIRT_HEIGHT: u16 = 7;
pub const INDEX_X_OFFSET: u16 = 8;
pub const INDEX_Y_OFFSET: u16 = 9;
pub const INDEX_VIDEO_MEMORY_64K: u16 = 0xA;

pub const ID0: u16 = 0xB0C0;
/// The newest interface version this device implements.
pub const ID5: u16 = 0xB0C5;

pub const ENABLED: u16 = 0x01;
pub const GETCAPS: u16 = 0x02;
pub const DAC_8BIT: u16 = 0x20;
pub const LFB_ENABLED: u16 = 0x40;
pub const NOCLEARMEM: u16 = 0x80;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Dispi {
    index: u16,
    id: u16,
    xres: u16,
    yres: u16,
    bpp: u16,
    enable: u16,
    bank: u16,
    virt_width: u16,
    virt_height: u16,
    x_offset: u16,
    y_offset: u16,
    /// Empty until first used, then [`MEMORY_SIZE`] bytes. Not serialized with the
    /// registers: a snapshot keeps it page by page like guest RAM (sharing unchanged
    /// pages with the snapshot before), through [`Dispi::memory`] and
    /// [`Dispi::memory_to_restore`].
    #[serde(skip)]
    memory: Vec<u8>,
}

impl Default for Dispi {
    fn default() -> Self {
        Dispi {
            index: 0,
            id: ID5,
            xres: 640,
            yres: 480,
            bpp: 8,
            enable: 0,
            bank: 0,
            virt_width: 640,
            virt_height: 480,
            x_offset: 0,
            y_offset: 0,
            memory: Vec::new(),
        }
    }
}

/// What the interface shows while enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    pub bpp: u16,
    /// Bytes from one scan line to the next.
    pub stride: usize,
    /// Byte offset of the top left pixel shown.
    pub start: usize,
}

/// Bytes one pixel takes at `bpp` bits (15 bpp takes two).
pub fn bytes_per_pixel(bpp: u16) -> usize {
    (bpp as usize).div_ceil(8)
}

impl Dispi {
    pub fn enabled(&self) -> bool {
        self.enable & ENABLED != 0
    }

    /// The DAC takes and gives 8 bits per colour, not the VGA's 6 (VBE 4F08h).
    pub fn dac_8bit(&self) -> bool {
        self.enable & DAC_8BIT != 0
    }

    pub fn read_index(&self) -> u16 {
        self.index
    }

    pub fn write_index(&mut self, v: u16) {
        self.index = v;
    }

    fn stride(&self) -> usize {
        self.virt_width as usize * bytes_per_pixel(self.bpp)
    }

    /// Lines of memory at the current virtual width.
    fn lines_in_memory(&self) -> u16 {
        (MEMORY_SIZE / self.stride().max(1)).min(u16::MAX as usize) as u16
    }

    pub fn read_data(&self) -> u16 {
        let caps = self.enable & GETCAPS != 0;
        match self.index {
            INDEX_ID => self.id,
            INDEX_XRES if caps => MAX_XRES,
            INDEX_YRES if caps => MAX_YRES,
            INDEX_BPP if caps => MAX_BPP,
            INDEX_XRES => self.xres,
            INDEX_YRES => self.yres,
            INDEX_BPP => self.bpp,
            INDEX_ENABLE => self.enable,
            INDEX_BANK => self.bank,
            INDEX_VIRT_WIDTH => self.virt_width,
            INDEX_VIRT_HEIGHT => self.virt_height,
            INDEX_X_OFFSET => self.x_offset,
            INDEX_Y_OFFSET => self.y_offset,
            INDEX_VIDEO_MEMORY_64K => (MEMORY_SIZE >> 16) as u16,
            _ => 0,
        }
    }

    pub fn write_data(&mut self, v: u16) {
        let enabled = self.enabled();
        match self.index {
            INDEX_ID if (ID0..=ID5).contains(&v) => self.id = v,
            INDEX_XRES if !enabled => self.xres = v.clamp(1, MAX_XRES),
            INDEX_YRES if !enabled => self.yres = v.clamp(1, MAX_YRES),
            INDEX_BPP if !enabled => {
                self.bpp = match v {
                    0 => 8,
                    8 | 15 | 16 | 24 | 32 => v,
                    _ => self.bpp,
                }
            }
            INDEX_ENABLE => self.set_enable(v),
            INDEX_BANK => {
                let banks = (MEMORY_SIZE >> 16) as u16;
                self.bank = v % banks;
            }
            INDEX_VIRT_WIDTH => {
                self.virt_width = v.max(self.xres);
                self.virt_height = self.lines_in_memory();
            }
            INDEX_VIRT_HEIGHT => {} // follows from the width and the memory size
            INDEX_X_OFFSET => self.x_offset = v,
            INDEX_Y_OFFSET => self.y_offset = v,
            _ => {}
        }
    }

    fn set_enable(&mut self, v: u16) {
        let was = self.enabled();
        self.enable = v & (ENABLED | GETCAPS | DAC_8BIT | LFB_ENABLED | NOCLEARMEM);
        if v & ENABLED != 0 && !was {
            self.virt_width = self.xres;
            self.virt_height = self.lines_in_memory();
            self.x_offset = 0;
            self.y_offset = 0;
            self.bank = 0;
            self.allocate();
            if v & NOCLEARMEM == 0 {
                self.memory.fill(0);
            }
        }
    }

    fn allocate(&mut self) {
        if self.memory.is_empty() {
            self.memory = vec![0; MEMORY_SIZE];
        }
    }

    /// The picture's geometry while enabled.
    pub fn geometry(&self) -> Option<Geometry> {
        if !self.enabled() {
            return None;
        }
        let bpp = self.bpp;
        let stride = self.stride();
        let start = self.y_offset as usize * stride + self.x_offset as usize * bytes_per_pixel(bpp);
        Some(Geometry {
            width: self.xres as usize,
            height: self.yres as usize,
            bpp,
            stride,
            start,
        })
    }

    /// A byte of video memory at `offset` (wrapping at the memory size).
    pub fn lfb_read(&self, offset: usize) -> u8 {
        self.memory.get(offset % MEMORY_SIZE).copied().unwrap_or(0)
    }

    pub fn lfb_write(&mut self, offset: usize, v: u8) {
        self.allocate();
        self.memory[offset % MEMORY_SIZE] = v;
    }

    /// Video memory from `offset` (for the renderer): empty if never written.
    pub fn memory(&self) -> &[u8] {
        &self.memory
    }

    /// The memory for a snapshot's copy to go into: [`MEMORY_SIZE`] bytes if the
    /// snapshot had it (`allocated`), else none (freed).
    pub fn memory_to_restore(&mut self, allocated: bool) -> &mut [u8] {
        if allocated {
            self.allocate();
        } else {
            self.memory = Vec::new();
        }
        &mut self.memory
    }

    /// The memory offset of a byte of the A0000h-AFFFFh window, if enabled.
    pub fn bank_offset(&self, addr: u64) -> Option<usize> {
        if !self.enabled() {
            return None;
        }
        let off = addr.checked_sub(0xA_0000)?;
        (off < 0x1_0000).then(|| ((self.bank as usize) << 16) + off as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(d: &mut Dispi, index: u16, v: u16) {
        d.write_index(index);
        d.write_data(v);
    }
    fn get(d: &mut Dispi, index: u16) -> u16 {
        d.write_index(index);
        d.read_data()
    }

    #[test]
    fn registers_modes_and_caps() {
        let mut d = Dispi::default();
        assert_eq!(get(&mut d, INDEX_ID), ID5);
        set(&mut d, INDEX_ID, ID0 + 2);
        assert_eq!(get(&mut d, INDEX_ID), 0xB0C2);
        set(&mut d, INDEX_ID, 0x1234);
        assert_eq!(get(&mut d, INDEX_ID), 0xB0C2, "unknown IDs are ignored");
        assert_eq!(get(&mut d, INDEX_VIDEO_MEMORY_64K), 256);
        set(&mut d, INDEX_ENABLE, GETCAPS);
        assert_eq!(get(&mut d, INDEX_XRES), MAX_XRES);
        assert_eq!(get(&mut d, INDEX_BPP), 32);
        set(&mut d, INDEX_ENABLE, 0);
        set(&mut d, INDEX_XRES, 800);
        set(&mut d, INDEX_YRES, 600);
        set(&mut d, INDEX_BPP, 13);
        assert_eq!(get(&mut d, INDEX_BPP), 8, "bad depths are ignored");
        set(&mut d, INDEX_BPP, 32);
        assert!(d.memory().is_empty(), "no memory until used");
        set(&mut d, INDEX_ENABLE, ENABLED | LFB_ENABLED);
        assert_eq!(d.memory().len(), MEMORY_SIZE);
        assert_eq!(get(&mut d, INDEX_VIRT_WIDTH), 800);
        assert_eq!(get(&mut d, INDEX_VIRT_HEIGHT), (MEMORY_SIZE / 3200) as u16);
        set(&mut d, INDEX_XRES, 1024);
        assert_eq!(get(&mut d, INDEX_XRES), 800, "fixed while enabled");
        set(&mut d, INDEX_VIRT_WIDTH, 1000);
        set(&mut d, INDEX_X_OFFSET, 10);
        set(&mut d, INDEX_Y_OFFSET, 2);
        let g = d.geometry().unwrap();
        assert_eq!((g.width, g.height, g.bpp, g.stride), (800, 600, 32, 4000));
        assert_eq!(g.start, 2 * 4000 + 40);
        set(&mut d, INDEX_BANK, 3);
        assert_eq!(d.bank_offset(0xA_0010), Some(0x3_0010));
        assert_eq!(d.bank_offset(0xB_0000), None);
        d.lfb_write(0x3_0010, 0x5A);
        // Re-enabling without NOCLEARMEM clears; with it keeps.
        set(&mut d, INDEX_ENABLE, 0);
        set(&mut d, INDEX_ENABLE, ENABLED | NOCLEARMEM);
        assert_eq!(d.lfb_read(0x3_0010), 0x5A);
        assert_eq!(get(&mut d, INDEX_BANK), 0);
        set(&mut d, INDEX_ENABLE, 0);
        set(&mut d, INDEX_ENABLE, ENABLED);
        assert_eq!(d.lfb_read(0x3_0010), 0);
        assert_eq!(d.lfb_read(usize::MAX), 0, "wraps, never panics");
    }

    #[test]
    fn memory_is_not_serialized_with_the_registers() {
        let mut d = Dispi::default();
        d.lfb_write(12345, 0xA5);
        let json = serde_json::to_vec(&d).unwrap();
        assert!(json.len() < 1000, "{} bytes", json.len());
        let mut back: Dispi = serde_json::from_slice(&json).unwrap();
        assert!(back.memory().is_empty());
        back.memory_to_restore(true).copy_from_slice(d.memory());
        assert_eq!(back.lfb_read(12345), 0xA5);
        assert!(back.memory_to_restore(false).is_empty());
    }
}
