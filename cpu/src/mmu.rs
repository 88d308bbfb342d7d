//! Linear-to-physical translation: the software TLB and the two-level page walk.
//!
//! The TLB is direct-mapped, one table for supervisor and one for user accesses. An entry
//! caches, for one linear page, the host address of its bytes as an addend (`host =
//! linear + addend`) and one tag per access kind. A tag holds the page's linear address if
//! that access may use the fast path, or `INVALID` if it must take the slow path (not
//! mapped yet, not permitted, MMIO, a write that must set the dirty bit, a page holding
//! code). The hit path is one compare and one add.

use crate::exception::{Exception, Res};
use crate::mem::{Backing, Bus, PhysMem, PAGE_SIZE};
use crate::state::{CR0_WP, CR4_PGE, CR4_PSE};
use crate::Cpu;

/// Entries per table (direct-mapped by page number). 1024 rather than 256: the
/// kernel's XZ unpacker reads its dictionary all over megabytes of output, and with
/// 256 entries its misses sent compiled code back to the interpreter twice as often
/// (measured on the Linux boot benchmark).
pub const TLB_ENTRIES: usize = 1024;
const INVALID: u64 = 1;
const PAGE_MASK: u64 = !(PAGE_SIZE - 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exec,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlbEntry {
    pub read_tag: u64,
    pub write_tag: u64,
    /// `host address - linear address` for the page.
    pub addend: usize,
    /// Physical address of the page.
    pub paddr: u64,
}

impl TlbEntry {
    const EMPTY: TlbEntry = TlbEntry {
        read_tag: INVALID,
        write_tag: INVALID,
        addend: 0,
        paddr: 0,
    };
}

pub struct Tlb {
    /// [supervisor, user]. Inside the `Cpu` itself, not behind a pointer: compiled code
    /// reaches an entry at a fixed offset from the `Cpu` it is given, with no load of a
    /// table address on every memory access.
    pub entries: [[TlbEntry; TLB_ENTRIES]; 2],
    /// Per table, a bit per entry: it maps a global page (kept on CR3 loads). Kept
    /// apart so that an entry stays 32 bytes (compiled code indexes by a shift).
    global: [[u64; TLB_ENTRIES / 64]; 2],
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            entries: [[TlbEntry::EMPTY; TLB_ENTRIES]; 2],
            global: [[0; TLB_ENTRIES / 64]; 2],
        }
    }
}

impl Tlb {
    #[inline]
    pub fn index(lin: u64) -> usize {
        (lin >> 12) as usize & (TLB_ENTRIES - 1)
    }
    /// Checks that every valid entry maps its page inside guest memory (for tests).
    pub fn check_invariants(&self, mem: &PhysMem) -> Result<(), String> {
        let range = mem.host_range();
        for (kind, table) in self.entries.iter().enumerate() {
            for e in table.iter() {
                for tag in [e.read_tag, e.write_tag] {
                    if tag == INVALID {
                        continue;
                    }
                    let host = e.addend.wrapping_add(tag as usize);
                    if host < range.start || host + PAGE_SIZE as usize > range.end {
                        return Err(format!(
                            "{} entry for linear {tag:#x} maps host {host:#x}, outside {range:x?}",
                            if kind == 0 { "supervisor" } else { "user" }
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn flush_all(&mut self) {
        for t in self.entries.iter_mut() {
            t.fill(TlbEntry::EMPTY);
        }
        self.global = [[0; TLB_ENTRIES / 64]; 2];
    }
    /// A CR3 load: drops every entry that is not global.
    pub fn flush_non_global(&mut self) {
        for (t, global) in self.entries.iter_mut().zip(&self.global) {
            for (i, e) in t.iter_mut().enumerate() {
                if global[i / 64] & (1 << (i % 64)) == 0 {
                    *e = TlbEntry::EMPTY;
                }
            }
        }
    }
    /// Puts `e` in `user`'s table at `index`.
    fn set(&mut self, user: bool, index: usize, e: TlbEntry, global: bool) {
        self.entries[user as usize][index] = e;
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let g = &mut self.global[user as usize][word];
        *g = if global { *g | bit } else { *g & !bit };
    }
    /// INVLPG.
    pub fn flush_page(&mut self, lin: u64) {
        let i = Self::index(lin);
        for t in self.entries.iter_mut() {
            if t[i].read_tag & PAGE_MASK == lin & PAGE_MASK
                || t[i].write_tag & PAGE_MASK == lin & PAGE_MASK
            {
                t[i] = TlbEntry::EMPTY;
            }
        }
    }
    /// Stops fast writes to a physical page (it now holds code).
    pub fn protect_phys_page(&mut self, paddr: u64) {
        for t in self.entries.iter_mut() {
            for e in t.iter_mut() {
                if e.paddr == paddr & PAGE_MASK {
                    e.write_tag = INVALID;
                }
            }
        }
    }
}

/// Result of a page walk.
struct Walk {
    paddr: u64,
    /// Writes are permitted for this privilege.
    writable: bool,
    /// The dirty bit is already set, so a write needs no page-table update.
    dirty: bool,
    global: bool,
}

fn pf_code(present: bool, write: bool, user: bool) -> u32 {
    (present as u32) | ((write as u32) << 1) | ((user as u32) << 2)
}

impl Cpu {
    /// Translates a linear address for an access at privilege `user`, filling the TLB.
    /// Raises #PF (setting CR2) when the page tables deny it.
    pub fn translate(&mut self, lin: u64, access: Access, user: bool) -> Res<u64> {
        let lin = lin & 0xFFFF_FFFF;
        let walk = if self.state.paging() {
            self.walk(lin, access, user)?
        } else {
            Walk {
                paddr: lin & PAGE_MASK,
                writable: true,
                dirty: true,
                global: false,
            }
        };
        let ppage = walk.paddr & self.state.a20_mask & PAGE_MASK;
        let page = lin & PAGE_MASK;
        let mut e = TlbEntry {
            read_tag: INVALID,
            write_tag: INVALID,
            addend: 0,
            paddr: ppage,
        };
        if let Backing::Host { offset, writable } = self.mem.backing(ppage) {
            let host = self.mem.host_ptr(offset) as usize;
            e.addend = host.wrapping_sub(page as usize);
            e.read_tag = page;
            if writable && walk.writable && walk.dirty && !self.mem.is_code_page(ppage) {
                e.write_tag = page;
            }
        }
        // With A20 masked, pages that differ only in bit 20 must not share an entry's
        // physical page; the mask is applied above so the cached address is final.
        self.tlb.set(user, Tlb::index(lin), e, walk.global);
        Ok(ppage | (lin & !PAGE_MASK))
    }

    /// The physical address behind linear address `lin` as a debugger sees it: the
    /// page tables read, nothing changed (no accessed bits, no TLB entry, no fault).
    /// None when the page is not present.
    pub fn debug_translate(&self, lin: u64) -> Option<u64> {
        let lin = lin & 0xFFFF_FFFF;
        let a20 = self.state.a20_mask;
        if !self.state.paging() {
            return Some(lin & a20);
        }
        let pde_addr = ((self.state.cr3 & 0xFFFF_F000) | ((lin >> 20) & 0xFFC)) & a20;
        let pde = self.mem.read_u32(pde_addr);
        if pde & 1 == 0 {
            return None;
        }
        let paddr = if pde & 0x80 != 0 && self.state.cr4 & CR4_PSE != 0 {
            (pde as u64 & 0xFFC0_0000) | (lin & 0x003F_FFFF)
        } else {
            let pte_addr = ((pde as u64 & 0xFFFF_F000) | ((lin >> 10) & 0xFFC)) & a20;
            let pte = self.mem.read_u32(pte_addr);
            if pte & 1 == 0 {
                return None;
            }
            (pte as u64 & 0xFFFF_F000) | (lin & 0xFFF)
        };
        Some(paddr & a20)
    }

    fn walk(&mut self, lin: u64, access: Access, user: bool) -> Res<Walk> {
        let write = access == Access::Write;
        let a20 = self.state.a20_mask;
        let pde_addr = ((self.state.cr3 & 0xFFFF_F000) | ((lin >> 20) & 0xFFC)) & a20;
        let pde = self.mem.read_u32(pde_addr);
        if pde & 1 == 0 {
            self.state.cr2 = lin;
            return Err(Exception::pf(pf_code(false, write, user)));
        }
        let wp = self.state.cr0 & CR0_WP != 0;
        let big = pde & 0x80 != 0 && self.state.cr4 & CR4_PSE != 0;
        let pge = self.state.cr4 & CR4_PGE != 0;
        let (entry, entry_addr, mut rw, us, paddr) = if big {
            (
                pde,
                pde_addr,
                pde & 2 != 0,
                pde & 4 != 0,
                (pde as u64 & 0xFFC0_0000) | (lin & 0x003F_F000),
            )
        } else {
            let pte_addr = ((pde as u64 & 0xFFFF_F000) | ((lin >> 10) & 0xFFC)) & a20;
            let pte = self.mem.read_u32(pte_addr);
            if pte & 1 == 0 {
                self.state.cr2 = lin;
                return Err(Exception::pf(pf_code(false, write, user)));
            }
            let rw = pde & 2 != 0 && pte & 2 != 0;
            let us = pde & 4 != 0 && pte & 4 != 0;
            (pte, pte_addr, rw, us, pte as u64 & 0xFFFF_F000)
        };
        if user && !us {
            self.state.cr2 = lin;
            return Err(Exception::pf(pf_code(true, write, user)));
        }
        // Supervisor writes ignore R/W unless CR0.WP is set.
        if !user && !wp {
            rw = true;
        }
        if write && !rw {
            self.state.cr2 = lin;
            return Err(Exception::pf(pf_code(true, write, user)));
        }
        // Accessed bits on both levels; dirty on the final level for writes.
        if !big && pde & 0x20 == 0 {
            self.mem.write(pde_addr, &(pde | 0x20).to_le_bytes());
        }
        let mut new = entry | 0x20;
        if write {
            new |= 0x40;
        }
        if new != entry {
            self.mem.write(entry_addr, &new.to_le_bytes());
        }
        Ok(Walk {
            paddr,
            writable: rw,
            dirty: new & 0x40 != 0,
            global: pge && entry & 0x100 != 0,
        })
    }

    // ---- linear memory access ----

    /// The host address of linear address `lin` if the TLB holds its page for this kind
    /// of access (a write hit means a writable RAM page holding no code), and how many
    /// bytes are left in the page from there.
    pub(crate) fn host_in_page(&self, lin: u64, write: bool, user: bool) -> Option<(*mut u8, u64)> {
        let e = &self.tlb.entries[user as usize][Tlb::index(lin)];
        let tag = if write { e.write_tag } else { e.read_tag };
        (tag == lin & PAGE_MASK).then(|| {
            let host = e.addend.wrapping_add(lin as usize) as *mut u8;
            (host, PAGE_SIZE - (lin & !PAGE_MASK))
        })
    }

    /// Reads `size` (1, 2 or 4) bytes at a linear address.
    #[inline]
    pub fn read_lin(&mut self, bus: &mut dyn Bus, lin: u64, size: u32, user: bool) -> Res<u32> {
        let e = &self.tlb.entries[user as usize][Tlb::index(lin)];
        if e.read_tag == lin & PAGE_MASK && (lin & !PAGE_MASK) as u32 + size <= PAGE_SIZE as u32 {
            let p = e.addend.wrapping_add(lin as usize) as *const u8;
            // SAFETY: the tag matched, so `addend` was computed from a host page of the guest
            // memory mapping (which lives as long as `self.mem` and is never remapped while
            // entries exist), and the access stays inside that page.
            unsafe {
                return Ok(match size {
                    1 => *p as u32,
                    2 => (p as *const u16).read_unaligned() as u32,
                    _ => (p as *const u32).read_unaligned(),
                });
            }
        }
        self.read_lin_slow(bus, lin, size, user)
    }

    #[cold]
    fn read_lin_slow(&mut self, bus: &mut dyn Bus, lin: u64, size: u32, user: bool) -> Res<u32> {
        let lin = lin & 0xFFFF_FFFF;
        if (lin & !PAGE_MASK) as u32 + size > PAGE_SIZE as u32 {
            // Crosses a page: translate both pages before reading anything.
            let first = (PAGE_SIZE - (lin & !PAGE_MASK)) as u32;
            let p1 = self.translate(lin, Access::Read, user)?;
            let p2 = self.translate((lin + first as u64) & 0xFFFF_FFFF, Access::Read, user)?;
            let mut v = 0u32;
            for i in 0..size {
                let pa = if i < first {
                    p1 + i as u64
                } else {
                    p2 + (i - first) as u64
                };
                v |= (self.phys_read(bus, pa, 1) as u32) << (8 * i);
            }
            return Ok(v);
        }
        let pa = self.translate(lin, Access::Read, user)?;
        Ok(self.phys_read(bus, pa, size) as u32)
    }

    /// Writes `size` (1, 2 or 4) bytes at a linear address.
    #[inline]
    pub fn write_lin(
        &mut self,
        bus: &mut dyn Bus,
        lin: u64,
        size: u32,
        val: u32,
        user: bool,
    ) -> Res<()> {
        let e = &self.tlb.entries[user as usize][Tlb::index(lin)];
        if e.write_tag == lin & PAGE_MASK && (lin & !PAGE_MASK) as u32 + size <= PAGE_SIZE as u32 {
            let p = e.addend.wrapping_add(lin as usize) as *mut u8;
            // SAFETY: as in `read_lin`; the write tag is only set for writable RAM pages that
            // hold no code, so no cached decoding is made stale by this store.
            unsafe {
                match size {
                    1 => *p = val as u8,
                    2 => (p as *mut u16).write_unaligned(val as u16),
                    _ => (p as *mut u32).write_unaligned(val),
                }
            }
            return Ok(());
        }
        self.write_lin_slow(bus, lin, size, val, user)
    }

    #[cold]
    fn write_lin_slow(
        &mut self,
        bus: &mut dyn Bus,
        lin: u64,
        size: u32,
        val: u32,
        user: bool,
    ) -> Res<()> {
        let lin = lin & 0xFFFF_FFFF;
        if (lin & !PAGE_MASK) as u32 + size > PAGE_SIZE as u32 {
            let first = (PAGE_SIZE - (lin & !PAGE_MASK)) as u32;
            let p1 = self.translate(lin, Access::Write, user)?;
            let p2 = self.translate((lin + first as u64) & 0xFFFF_FFFF, Access::Write, user)?;
            for i in 0..size {
                let pa = if i < first {
                    p1 + i as u64
                } else {
                    p2 + (i - first) as u64
                };
                self.phys_write(bus, pa, 1, (val >> (8 * i)) as u64 & 0xFF);
            }
            return Ok(());
        }
        let pa = self.translate(lin, Access::Write, user)?;
        self.phys_write(bus, pa, size, val as u64);
        Ok(())
    }

    /// Checks that a linear range is writable (for instructions that must not fault midway).
    pub fn probe_write(&mut self, lin: u64, size: u32, user: bool) -> Res<()> {
        self.translate(lin, Access::Write, user)?;
        let last = (lin + size as u64 - 1) & 0xFFFF_FFFF;
        if last & PAGE_MASK != lin & PAGE_MASK {
            self.translate(last, Access::Write, user)?;
        }
        Ok(())
    }

    /// Physical read of up to 8 bytes within one page: RAM/ROM or the bus.
    pub fn phys_read(&mut self, bus: &mut dyn Bus, paddr: u64, size: u32) -> u64 {
        match self.mem.backing(paddr) {
            Backing::Host { .. } => {
                let mut b = [0u8; 8];
                self.mem.read(paddr, &mut b[..size as usize]);
                u64::from_le_bytes(b)
            }
            Backing::Mmio => {
                bus.sync_time(self.state.icount);
                bus.mmio_read(paddr, size as u8)
            }
        }
    }

    /// Physical write of up to 8 bytes within one page, invalidating decoded code there.
    pub fn phys_write(&mut self, bus: &mut dyn Bus, paddr: u64, size: u32, val: u64) {
        match self.mem.backing(paddr) {
            Backing::Host { writable: true, .. } => {
                if self.mem.is_code_page(paddr) {
                    self.invalidate_code_range(paddr, size as u64);
                }
                self.mem.write(paddr, &val.to_le_bytes()[..size as usize]);
            }
            // Shadowing may send writes to the RAM beneath a ROM or MMIO page. That RAM
            // is not what reads of the page see, so no decoded code depends on it.
            Backing::Host {
                writable: false, ..
            }
            | Backing::Mmio
                if self.mem.redirected_write(paddr).is_some() =>
            {
                self.mem.write(paddr, &val.to_le_bytes()[..size as usize]);
            }
            Backing::Host {
                writable: false, ..
            } => {}
            Backing::Mmio => {
                bus.sync_time(self.state.icount);
                bus.mmio_write(paddr, size as u8, val);
                // A device may have raised an interrupt.
                self.check_irq |= bus.needs_attention();
            }
        }
    }
}

impl PhysMem {
    /// Used by tests: whether a physical address is backed by host memory.
    pub fn is_backed(&self, paddr: u64) -> bool {
        matches!(self.backing(paddr), Backing::Host { .. })
    }
}
