//! Guest physical memory and the bus the CPU reaches devices through.
//!
//! Guest RAM is one anonymous mapping. ROM images live in the same mapping after RAM, so
//! every backed guest page has a host address and the TLB can cache `host - linear` as a
//! single addend. Pages with no backing (the VGA window, unassigned space) go to the
//! [`Bus`] as MMIO.

use memmap2::MmapMut;

pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;
/// Physical pages tracked by the page map: 4 GiB worth (the i686 model has no PAE yet).
const MAPPED_PAGES: usize = 1 << 20;

/// What the CPU needs from the machine around it.
pub trait Bus {
    fn io_read(&mut self, port: u16, size: u8) -> u32;
    fn io_write(&mut self, port: u16, size: u8, value: u32);
    /// A read from a physical address with no RAM or ROM behind it.
    fn mmio_read(&mut self, addr: u64, size: u8) -> u64;
    fn mmio_write(&mut self, addr: u64, size: u8, value: u64);
    /// True while the interrupt controller asserts INTR.
    fn intr_pending(&mut self) -> bool {
        false
    }
    /// The INTA cycle: returns the vector of the highest-priority pending interrupt.
    fn intr_ack(&mut self) -> u8 {
        0
    }
    /// Checked after port and MMIO accesses: true makes [`crate::Cpu::run`] return at the
    /// next instruction boundary, so the machine can act at once (A20, reset, power-off).
    fn stop_requested(&mut self) -> bool {
        false
    }
    /// Asked after every port and MMIO access: whether the run loop must look at the
    /// machine at the next instruction boundary (an interrupt is asserted, or
    /// [`Bus::stop_requested`] would be true). False lets the block go on: a guest
    /// polling a port runs without a trip through the run loop per access. Must not
    /// change anything; the default always asks.
    fn needs_attention(&mut self) -> bool {
        true
    }
    /// Called before every port or MMIO access with the instruction count at which it
    /// happens, so devices see the virtual time of the access.
    fn sync_time(&mut self, _icount: u64) {}
    /// The emulator-call opcode (VMCALL, `0F 01 C1`) was executed; `cpu.state` holds the
    /// registers with EIP past the opcode, and the bus identifies the service from where
    /// it was executed (see DESIGN.md, BIOS). Returns false if the call is not honoured
    /// there (anywhere outside the BIOS ROM), in which case the opcode raises #UD as on
    /// a P6.
    fn emulator_call(&mut self, _cpu: &mut crate::Cpu) -> bool {
        false
    }
}

/// A bus with nothing on it: I/O reads return all ones, writes are ignored.
#[derive(Default)]
pub struct NullBus;

impl Bus for NullBus {
    fn io_read(&mut self, _port: u16, size: u8) -> u32 {
        ones(size) as u32
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn mmio_read(&mut self, _addr: u64, size: u8) -> u64 {
        ones(size)
    }
    fn mmio_write(&mut self, _addr: u64, _size: u8, _value: u64) {}
}

pub fn ones(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// Error creating guest memory.
#[derive(Debug)]
pub struct MemError(pub String);

impl std::fmt::Display for MemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for MemError {}

/// Backing of one guest page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backing {
    /// Offset of the page in the host mapping; `writable` is false for ROM.
    Host { offset: usize, writable: bool },
    /// No memory: accesses go to the bus.
    Mmio,
}

/// Page-map flag: writes to this page go to the RAM at the same guest address, whatever
/// reads see (chipset shadowing in write-only mode: reads from ROM, writes into the shadow
/// RAM beneath it). The rest of the entry says where reads go.
const WRITES_TO_RAM: u32 = 1 << 31;

/// What a snapshot keeps of guest memory beside its bytes: the sizes and where each
/// guest page leads (RAM, ROM, aliases, shadowing, MMIO).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemLayout {
    pub ram_size: usize,
    /// Bytes of the host mapping: RAM, then the ROM space.
    pub host_len: usize,
    pub rom_used: usize,
    pub pages: Vec<u32>,
}

pub struct PhysMem {
    map: MmapMut,
    ram_size: usize,
    rom_used: usize,
    /// Per guest page: 0 = MMIO; otherwise `(host page index + 1) << 1 | writable`; either
    /// may carry [`WRITES_TO_RAM`].
    pages: Vec<u32>,
    /// One bit per guest page: the page holds decoded or translated code.
    code: Vec<u64>,
}

impl PhysMem {
    /// RAM of `ram_size` bytes at physical address 0, plus `rom_space` bytes for ROM images.
    pub fn new(ram_size: usize, rom_space: usize) -> Result<PhysMem, MemError> {
        let ram_size = (ram_size + PAGE_SIZE as usize - 1) & !(PAGE_SIZE as usize - 1);
        let rom_space = (rom_space + PAGE_SIZE as usize - 1) & !(PAGE_SIZE as usize - 1);
        if ram_size as u64 > 0xF000_0000 {
            return Err(MemError(format!(
                "{} MiB of RAM is more than this 32-bit machine can address",
                ram_size >> 20
            )));
        }
        let map =
            MmapMut::map_anon((ram_size + rom_space).max(PAGE_SIZE as usize)).map_err(|e| {
                MemError(format!(
                    "cannot allocate {} MiB of guest RAM: {e}",
                    ram_size >> 20
                ))
            })?;
        let mut pages = vec![0u32; MAPPED_PAGES];
        for (i, p) in pages.iter_mut().enumerate().take(ram_size >> PAGE_SHIFT) {
            *p = ((i as u32 + 1) << 1) | 1;
        }
        Ok(PhysMem {
            map,
            ram_size,
            rom_used: 0,
            pages,
            code: vec![0; MAPPED_PAGES / 64],
        })
    }

    pub fn ram_size(&self) -> usize {
        self.ram_size
    }

    /// The layout a snapshot keeps (see [`PhysMem::set_layout`]).
    pub fn layout(&self) -> MemLayout {
        MemLayout {
            ram_size: self.ram_size,
            host_len: self.map.len(),
            rom_used: self.rom_used,
            pages: self.pages.clone(),
        }
    }

    /// Takes a saved layout of memory of the same size. The layout may come from a
    /// file: every page must lead inside the mapping, or nothing changes. Decoded code
    /// is forgotten (the caller flushes what the CPU cached).
    pub fn set_layout(&mut self, layout: MemLayout) -> Result<(), MemError> {
        if layout.ram_size != self.ram_size || layout.host_len != self.map.len() {
            return Err(MemError(format!(
                "a memory of {} + {} bytes, not {} + {}",
                layout.ram_size,
                layout.host_len.saturating_sub(layout.ram_size),
                self.ram_size,
                self.map.len() - self.ram_size
            )));
        }
        let inside = |&e: &u32| {
            let e = e & !WRITES_TO_RAM;
            e == 0 || ((((e >> 1) - 1) as usize) << PAGE_SHIFT) < self.map.len()
        };
        if layout.pages.len() != MAPPED_PAGES
            || layout.rom_used > self.map.len() - self.ram_size
            || !layout.pages.iter().all(inside)
        {
            return Err(MemError("a page map leading outside guest memory".into()));
        }
        self.pages = layout.pages;
        self.rom_used = layout.rom_used;
        self.clear_code_pages();
        Ok(())
    }

    /// All of guest memory as the host holds it: RAM, then the ROM space.
    pub fn host_bytes(&self) -> &[u8] {
        &self.map
    }

    /// See [`PhysMem::host_bytes`]. Writing here bypasses the code-page tracking: the
    /// caller flushes decoded code.
    pub fn host_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Copies a ROM image into the ROM space and maps it read-only at `base` (page aligned).
    pub fn map_rom(&mut self, base: u64, data: &[u8]) -> Result<(), MemError> {
        let len = (data.len() + PAGE_SIZE as usize - 1) & !(PAGE_SIZE as usize - 1);
        let start = self.ram_size + self.rom_used;
        if start + len > self.map.len() || !base.is_multiple_of(PAGE_SIZE) {
            return Err(MemError("ROM image does not fit the ROM space".into()));
        }
        self.map[start..start + data.len()].copy_from_slice(data);
        self.rom_used += len;
        for i in 0..len >> PAGE_SHIFT {
            let gp = (base >> PAGE_SHIFT) as usize + i;
            if gp < MAPPED_PAGES {
                self.pages[gp] = (((start >> PAGE_SHIFT) + i + 1) as u32) << 1;
            }
        }
        Ok(())
    }

    /// Maps guest pages `[base, base+len)` to the same host memory as `[target, target+len)`
    /// (the BIOS alias below 4 GiB, for example).
    pub fn alias(&mut self, base: u64, target: u64, len: u64) {
        for i in 0..(len >> PAGE_SHIFT) as usize {
            let gp = (base >> PAGE_SHIFT) as usize + i;
            let tp = (target >> PAGE_SHIFT) as usize + i;
            if gp < MAPPED_PAGES && tp < MAPPED_PAGES {
                // Only the read side is aliased: shadow RAM belongs to one address.
                self.pages[gp] = self.pages[tp] & !WRITES_TO_RAM;
            }
        }
    }

    /// Makes guest pages `[base, base+len)` MMIO (the VGA window, for example).
    pub fn set_mmio(&mut self, base: u64, len: u64) {
        for i in 0..(len >> PAGE_SHIFT) as usize {
            let gp = (base >> PAGE_SHIFT) as usize + i;
            if gp < MAPPED_PAGES {
                self.pages[gp] = 0;
            }
        }
    }

    /// Routes one guest page of RAM below the top of RAM, as a memory controller's
    /// shadowing does (the i440FX PAM registers): reads go to the RAM at `paddr` when
    /// `read_ram`, else to `other`, which must be a read-only host page (ROM) or MMIO;
    /// writes go to that RAM when `write_ram`, else to `other` (dropped for ROM).
    /// The caller flushes what the CPU cached about the page (TLB, decoded code).
    pub fn route_page(
        &mut self,
        paddr: u64,
        read_ram: bool,
        write_ram: bool,
        other: Backing,
    ) -> Result<(), MemError> {
        let gp = (paddr >> PAGE_SHIFT) as usize;
        if paddr as usize >= self.ram_size || !paddr.is_multiple_of(PAGE_SIZE) {
            return Err(MemError(format!(
                "no RAM page at {paddr:#x} to route (RAM ends at {:#x})",
                self.ram_size
            )));
        }
        let ram_entry = ((gp as u32) + 1) << 1;
        let entry = if read_ram {
            ram_entry | write_ram as u32
        } else {
            let other_entry = match other {
                Backing::Mmio => 0,
                Backing::Host {
                    offset,
                    writable: false,
                } if offset.is_multiple_of(PAGE_SIZE as usize)
                    && offset + PAGE_SIZE as usize <= self.map.len() =>
                {
                    (((offset >> PAGE_SHIFT) + 1) as u32) << 1
                }
                _ => {
                    return Err(MemError(format!(
                        "cannot route reads of {paddr:#x} to {other:?}"
                    )))
                }
            };
            other_entry | if write_ram { WRITES_TO_RAM } else { 0 }
        };
        self.pages[gp] = entry;
        Ok(())
    }

    /// Where a write to a page that is not writable (ROM or MMIO for reads) lands instead:
    /// the host offset of the RAM beneath, if the page is routed so.
    #[inline]
    pub fn redirected_write(&self, paddr: u64) -> Option<usize> {
        let gp = (paddr >> PAGE_SHIFT) as usize;
        match self.pages.get(gp) {
            Some(&e) if e & WRITES_TO_RAM != 0 && gp << PAGE_SHIFT < self.ram_size => {
                Some(gp << PAGE_SHIFT)
            }
            _ => None,
        }
    }

    #[inline]
    pub fn backing(&self, paddr: u64) -> Backing {
        let gp = (paddr >> PAGE_SHIFT) as usize;
        match self.pages.get(gp).map(|&e| e & !WRITES_TO_RAM) {
            Some(e) if e != 0 => Backing::Host {
                offset: (((e >> 1) - 1) as usize) << PAGE_SHIFT,
                writable: e & 1 != 0,
            },
            _ => Backing::Mmio,
        }
    }

    /// The host address range of the whole mapping (RAM and ROM space), for checks that
    /// nothing points outside guest memory.
    pub fn host_range(&self) -> std::ops::Range<usize> {
        let start = self.map.as_ptr() as usize;
        start..start + self.map.len()
    }

    /// Host pointer to the start of the page at `offset` in the mapping.
    #[inline]
    pub fn host_ptr(&mut self, offset: usize) -> *mut u8 {
        debug_assert!(offset < self.map.len());
        // SAFETY: `offset` comes from the page map, which only holds offsets of pages
        // inside the mapping, so the result stays within the same allocation.
        unsafe { self.map.as_mut_ptr().add(offset) }
    }

    /// Splits `[paddr, paddr + len)` into runs that stay within one page: (address,
    /// offset into the range, length).
    fn page_runs(paddr: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut done = 0;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let a = paddr.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (a & (PAGE_SIZE - 1))) as usize).min(len - done);
            let run = (a, done, n);
            done += n;
            Some(run)
        })
    }

    /// Reads guest-physical memory; MMIO bytes read as 0xFF (no device is consulted).
    pub fn read(&self, paddr: u64, buf: &mut [u8]) {
        for (a, at, n) in Self::page_runs(paddr, buf.len()) {
            let out = &mut buf[at..at + n];
            match self.backing(a) {
                Backing::Host { offset, .. } => {
                    let from = offset + (a & (PAGE_SIZE - 1)) as usize;
                    out.copy_from_slice(&self.map[from..from + n]);
                }
                Backing::Mmio => out.fill(0xFF),
            }
        }
    }

    /// Writes guest-physical memory, RAM only (ROM and MMIO bytes are dropped, unless
    /// the page sends writes to the RAM beneath it).
    pub fn write(&mut self, paddr: u64, data: &[u8]) {
        for (a, at, n) in Self::page_runs(paddr, data.len()) {
            let target = match self.backing(a) {
                Backing::Host {
                    offset,
                    writable: true,
                } => Some(offset),
                _ => self.redirected_write(a),
            };
            if let Some(page) = target {
                let to = page + (a & (PAGE_SIZE - 1)) as usize;
                self.map[to..to + n].copy_from_slice(&data[at..at + n]);
            }
        }
    }

    /// Writes into ROM as well as RAM: for loading firmware and test images.
    pub fn write_any(&mut self, paddr: u64, data: &[u8]) {
        for (a, at, n) in Self::page_runs(paddr, data.len()) {
            if let Backing::Host { offset, .. } = self.backing(a) {
                let to = offset + (a & (PAGE_SIZE - 1)) as usize;
                self.map[to..to + n].copy_from_slice(&data[at..at + n]);
            }
        }
    }

    pub fn read_u8(&self, paddr: u64) -> u8 {
        let mut b = [0u8; 1];
        self.read(paddr, &mut b);
        b[0]
    }
    pub fn read_u16(&self, paddr: u64) -> u16 {
        let mut b = [0u8; 2];
        self.read(paddr, &mut b);
        u16::from_le_bytes(b)
    }
    pub fn read_u32(&self, paddr: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(paddr, &mut b);
        u32::from_le_bytes(b)
    }

    /// Whether a guest page is marked as holding code.
    #[inline]
    pub fn is_code_page(&self, paddr: u64) -> bool {
        let gp = (paddr >> PAGE_SHIFT) as usize;
        gp < MAPPED_PAGES && self.code[gp / 64] & (1 << (gp % 64)) != 0
    }
    pub fn set_code_page(&mut self, paddr: u64, on: bool) {
        let gp = (paddr >> PAGE_SHIFT) as usize;
        if gp < MAPPED_PAGES {
            if on {
                self.code[gp / 64] |= 1 << (gp % 64);
            } else {
                self.code[gp / 64] &= !(1 << (gp % 64));
            }
        }
    }
    pub fn clear_code_pages(&mut self) {
        self.code.iter_mut().for_each(|w| *w = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_rom_and_mmio() {
        let mut m = PhysMem::new(1 << 20, 64 << 10).unwrap();
        m.write(0x1000, &[1, 2, 3]);
        assert_eq!(m.read_u16(0x1001), 0x0302);
        m.map_rom(0xF0000, &[0xAA; 4096]).unwrap();
        m.write(0xF0000, &[0x55]);
        assert_eq!(m.read_u8(0xF0000), 0xAA, "ROM is read-only");
        m.set_mmio(0xA0000, 0x20000);
        assert_eq!(m.backing(0xA1234), Backing::Mmio);
        assert_eq!(m.read_u8(0x2000_0000), 0xFF, "unbacked reads as ones");
        m.alias(0xFFFF_0000, 0xF0000, 0x1000);
        assert_eq!(m.read_u8(0xFFFF_0000), 0xAA);
    }

    #[test]
    fn shadow_routing_of_a_rom_page() {
        let mut m = PhysMem::new(1 << 20, 64 << 10).unwrap();
        m.map_rom(0xF0000, &[0xAA; 4096]).unwrap();
        let rom = m.backing(0xF0000);
        // Read ROM, write RAM: reads keep seeing the ROM, writes fill the RAM beneath.
        m.route_page(0xF0000, false, true, rom).unwrap();
        m.write(0xF0010, &[0x11]);
        assert_eq!(m.read_u8(0xF0010), 0xAA);
        assert_eq!(m.redirected_write(0xF0010), Some(0xF0000));
        // Read RAM, writes dropped: the byte written before shows, new writes do not.
        m.route_page(0xF0000, true, false, rom).unwrap();
        assert_eq!(m.read_u8(0xF0010), 0x11);
        m.write(0xF0010, &[0x22]);
        assert_eq!(m.read_u8(0xF0010), 0x11);
        assert_eq!(m.redirected_write(0xF0010), None);
        // RAM both ways.
        m.route_page(0xF0000, true, true, rom).unwrap();
        m.write(0xF0010, &[0x33]);
        assert_eq!(m.read_u8(0xF0010), 0x33);
        // Back to the ROM.
        m.route_page(0xF0000, false, false, rom).unwrap();
        assert_eq!(m.read_u8(0xF0010), 0xAA);
        assert_eq!(m.backing(0xF0000), rom);
        // Read MMIO, write RAM.
        m.route_page(0xC0000, false, true, Backing::Mmio).unwrap();
        assert_eq!(m.backing(0xC0000), Backing::Mmio);
        m.write(0xC0000, &[0x44]);
        m.route_page(0xC0000, true, false, Backing::Mmio).unwrap();
        assert_eq!(m.read_u8(0xC0000), 0x44);
        // Nonsense is refused: no RAM there, or a writable or foreign page for reads.
        assert!(m.route_page(0x20_0000, true, true, Backing::Mmio).is_err());
        let ram = m.backing(0x1000);
        assert!(m.route_page(0xF0000, false, false, ram).is_err());
        let far = Backing::Host {
            offset: 1 << 30,
            writable: false,
        };
        assert!(m.route_page(0xF0000, false, false, far).is_err());
    }
}
