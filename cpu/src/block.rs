//! Cache of decoded basic blocks, keyed by physical address and decode mode.
//!
//! A block is decoded once, with instruction pointers relative to its first byte so that
//! the same bytes reached through different CS:IP pairs (07C0:0000 and 0000:7C00) share
//! one decoding. Blocks never cross a page, so invalidating a page drops every block that
//! was decoded from it.

use crate::exception::{Exception, Res};
use crate::mem::{Backing, Bus, PAGE_SIZE};
use crate::mmu::Access;
use crate::Cpu;
use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl, Instruction};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Longest block, in instructions.
const MAX_BLOCK: usize = 64;

pub struct Block {
    /// Decoded with IP = offset from the block's first byte.
    pub instrs: Box<[Instruction]>,
    /// Physical address of the first byte.
    pub phys: u64,
    /// Bytes from the first instruction's start to the last one's end.
    pub span: u64,
    /// Decoded as 32-bit code.
    pub code32: bool,
    /// Still in the cache: no byte of it has been written since it was decoded.
    pub valid: Cell<bool>,
    /// For another execution tier: blocks found at this one's exits (the tier checks
    /// they are still valid and still at the address it jumps to before using them).
    /// Cleared when the block leaves the cache, so links never form lasting cycles.
    tier_links: RefCell<[Option<Rc<Block>>; TIER_LINKS]>,
    /// The address of each block in `tier_links` ([`no_block`] for none), for compiled
    /// code to read: it stays valid exactly as long as the link keeps that block alive.
    pub tier_link_addrs: [Cell<usize>; TIER_LINKS],
    /// For another execution tier (the JIT): its code for this block, 0 if none. The
    /// tier owns what it stores here and clears it before freeing the code; it is also
    /// cleared when the block leaves the cache, so code found here is never stale.
    pub tier_code: Cell<usize>,
    /// For another execution tier: how often the block has run (its heat).
    pub tier_heat: Cell<u32>,
    /// Decoded for one run only (an instruction crossing a page, or running from
    /// MMIO): not worth compiling.
    pub uncached: bool,
}

impl Block {
    pub fn new(phys: u64, instrs: Box<[Instruction]>) -> Block {
        let span = instrs.last().map_or(0, |i| i.ip() + i.len() as u64);
        let code32 = instrs
            .first()
            .is_some_and(|i| i.code_size() == iced_x86::CodeSize::Code32);
        Block {
            instrs,
            phys,
            span,
            code32,
            valid: Cell::new(true),
            tier_links: RefCell::new(Default::default()),
            tier_link_addrs: std::array::from_fn(|_| Cell::new(no_block())),
            tier_code: Cell::new(0),
            tier_heat: Cell::new(0),
            uncached: false,
        }
    }

    /// The block linked at exit `slot`, if any.
    pub fn tier_link(&self, slot: usize) -> Option<Rc<Block>> {
        self.tier_links.borrow()[slot].clone()
    }

    /// Links exit `slot` to `to`. Ignored once the block has left the cache (its links
    /// were dropped then, and must stay so).
    pub fn set_tier_link(&self, slot: usize, to: &Rc<Block>) {
        if self.valid.get() {
            self.tier_link_addrs[slot].set(Rc::as_ptr(to) as usize);
            self.tier_links.borrow_mut()[slot] = Some(to.clone());
        }
    }
}

/// Zeros the size of a [`Block`]: what compiled code finds where no block is linked
/// (an empty link, an empty jump cache entry), read as a block without code (its
/// `tier_code` 0), so that it needs no separate test for "no block".
static NO_BLOCK: [u64; std::mem::size_of::<Block>() / 8 + 1] =
    [0; std::mem::size_of::<Block>() / 8 + 1];

/// The address that stands for "no block" in [`Block::tier_link_addrs`] and in a
/// tier's tables: of zeros that read as a block with no code.
pub fn no_block() -> usize {
    NO_BLOCK.as_ptr() as usize
}

/// Exits a tier may link: fall through, branch taken.
pub const TIER_LINKS: usize = 2;

/// A multiplicative hasher for integer keys (the std SipHash is needlessly slow here).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

pub struct BlockCache {
    blocks: FastMap<u64, Rc<Block>>,
    /// Blocks fetched lately, direct-mapped by key: most fetches find their block here
    /// without probing the map (a cache miss or two once it is large). An entry is
    /// used only while its block is valid, so invalidation need not look here.
    recent: Box<[Option<Rc<Block>>]>,
    /// The blocks decoded from each physical page: key and byte range in the page.
    by_page: FastMap<u64, Vec<(u64, std::ops::Range<u16>)>>,
}

/// Entries of [`BlockCache::recent`].
const RECENT: usize = 1024;

impl Default for BlockCache {
    fn default() -> BlockCache {
        BlockCache {
            blocks: FastMap::default(),
            recent: vec![None; RECENT].into_boxed_slice(),
            by_page: FastMap::default(),
        }
    }
}

impl BlockCache {
    /// The valid block for `key`, if the cache holds one.
    #[inline]
    fn get(&mut self, key: u64) -> Option<Rc<Block>> {
        let slot = ((key >> 1) ^ (key >> 13)) as usize & (RECENT - 1);
        if let Some(b) = &self.recent[slot] {
            if block_key(b.phys, b.code32) == key && b.valid.get() {
                return Some(b.clone());
            }
        }
        let b = self.blocks.get(&key)?.clone();
        self.recent[slot] = Some(b.clone());
        Some(b)
    }

    pub fn clear(&mut self) {
        for b in self.blocks.values() {
            retire(b);
        }
        self.recent.fill(None);
        self.blocks.clear();
        self.by_page.clear();
    }
    fn remove(&mut self, key: u64) {
        if let Some(b) = self.blocks.remove(&key) {
            retire(&b);
        }
    }
    pub fn invalidate_page(&mut self, paddr: u64) {
        if let Some(keys) = self.by_page.remove(&(paddr >> 12)) {
            for (k, _) in keys {
                self.remove(k);
            }
        }
    }
    /// Drops the blocks whose bytes overlap `[paddr, paddr + len)` (within one page).
    /// Returns whether any was dropped and whether blocks remain on the page.
    pub fn invalidate_range(&mut self, paddr: u64, len: u64) -> (bool, bool) {
        let Some(keys) = self.by_page.get_mut(&(paddr >> 12)) else {
            return (false, false);
        };
        let start = paddr & (PAGE_SIZE - 1);
        let end = start + len;
        let mut gone = Vec::new();
        keys.retain(|&(k, ref r)| {
            let overlaps = (r.start as u64) < end && start < r.end as u64;
            if overlaps {
                gone.push(k);
            }
            !overlaps
        });
        let dropped = !gone.is_empty();
        let remain = !keys.is_empty();
        if !remain {
            self.by_page.remove(&(paddr >> 12));
        }
        for k in gone {
            self.remove(k);
        }
        (dropped, remain)
    }
    pub fn len(&self) -> usize {
        self.blocks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        // Links between cached blocks may form cycles: retiring every block breaks them.
        self.clear();
    }
}

/// A block leaving the cache: marked invalid, its links dropped (so blocks that link
/// each other are freed).
fn retire(b: &Block) {
    b.valid.set(false);
    b.tier_code.set(0);
    // Addresses first: compiled code must never see one whose block may be gone.
    for a in &b.tier_link_addrs {
        a.set(no_block());
    }
    *b.tier_links.borrow_mut() = Default::default();
}

fn block_key(paddr: u64, code32: bool) -> u64 {
    (paddr << 1) | code32 as u64
}

impl Cpu {
    /// The block at CS:EIP, decoding it if needed. Raises #GP for EIP beyond the CS limit
    /// and #PF for an unmapped code page.
    pub(crate) fn fetch_block(&mut self, bus: &mut dyn Bus) -> Res<Rc<Block>> {
        let eip = self.state.rip as u32;
        let cs = self.state.seg[crate::state::CS];
        if eip > cs.limit {
            return Err(Exception::gp0());
        }
        let lin = (cs.base + eip as u64) & 0xFFFF_FFFF;
        let paddr = match self.fetch_tlb_hit(lin) {
            Some(paddr) => paddr,
            None => self.translate(lin, Access::Exec, self.state.cpl == 3)?,
        };
        let code32 = self.state.code32();
        let key = block_key(paddr, code32);
        if let Some(b) = self.blocks.get(key) {
            return Ok(b);
        }
        let page_off = (paddr & (PAGE_SIZE - 1)) as usize;
        let Backing::Host { .. } = self.mem.backing(paddr) else {
            return self.decode_uncached(bus, lin, code32);
        };
        // A block is at most MAX_BLOCK instructions of at most 15 bytes, and never
        // crosses the page.
        let mut bytes = [0u8; MAX_BLOCK * 15];
        let avail = (PAGE_SIZE as usize - page_off).min(bytes.len());
        self.mem.read(paddr, &mut bytes[..avail]);
        let bitness = if code32 { 32 } else { 16 };
        let mut dec = Decoder::with_ip(bitness, &bytes[..avail], 0, DecoderOptions::NONE);
        let mut instrs = Vec::with_capacity(16);
        let mut ins = Instruction::default();
        while dec.can_decode() && instrs.len() < MAX_BLOCK {
            dec.decode_out(&mut ins);
            if dec.last_error() == DecoderError::NoMoreBytes {
                break;
            }
            instrs.push(ins);
            // HLT ends a block too: what follows runs only after an interrupt.
            if ins.flow_control() != FlowControl::Next
                || ins.is_invalid()
                || ins.mnemonic() == iced_x86::Mnemonic::Hlt
            {
                break;
            }
        }
        if instrs.is_empty() {
            // The first instruction crosses into the next page.
            return self.decode_uncached(bus, lin, code32);
        }
        let block = Rc::new(Block::new(paddr, instrs.into_boxed_slice()));
        self.blocks.blocks.insert(key, block.clone());
        let page = paddr >> 12;
        let last = &block.instrs[block.instrs.len() - 1];
        let span = page_off as u64..page_off as u64 + last.ip() + last.len() as u64;
        self.blocks
            .by_page
            .entry(page)
            .or_default()
            .push((key, span.start as u16..span.end as u16));
        if !self.mem.is_code_page(paddr) {
            self.mem.set_code_page(paddr, true);
            self.tlb.protect_phys_page(paddr & !(PAGE_SIZE - 1));
        }
        Ok(block)
    }

    /// The physical address of code at linear `lin` if the TLB holds its page. A TLB
    /// hit needs no page walk (fetches are reads on a P6): as on hardware, the accessed
    /// bit was set when the entry was filled.
    #[inline]
    pub fn fetch_tlb_hit(&self, lin: u64) -> Option<u64> {
        let user = self.state.cpl == 3;
        let e = &self.tlb.entries[user as usize][crate::mmu::Tlb::index(lin)];
        (e.read_tag == lin & !(PAGE_SIZE - 1)).then_some(e.paddr | (lin & (PAGE_SIZE - 1)))
    }

    /// Decodes one instruction byte by byte through the MMU (it crosses a page, or runs
    /// from MMIO). Not cached.
    fn decode_uncached(&mut self, bus: &mut dyn Bus, lin: u64, code32: bool) -> Res<Rc<Block>> {
        let user = self.state.cpl == 3;
        let mut bytes = [0u8; 15];
        let mut n = 0;
        let bitness = if code32 { 32 } else { 16 };
        let mut ins = Instruction::default();
        while n < 15 {
            bytes[n] = self.read_lin(bus, (lin + n as u64) & 0xFFFF_FFFF, 1, user)? as u8;
            n += 1;
            let mut dec = Decoder::with_ip(bitness, &bytes[..n], 0, DecoderOptions::NONE);
            dec.decode_out(&mut ins);
            if dec.last_error() != DecoderError::NoMoreBytes {
                break;
            }
        }
        let mut block = Block::new(lin, vec![ins].into_boxed_slice());
        block.uncached = true;
        block.valid.set(false);
        Ok(Rc::new(block))
    }
}
