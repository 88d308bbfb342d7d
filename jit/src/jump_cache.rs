//! The jump cache: where compiled code leaving through an indirect branch (a RET)
//! finds the block at its target without the run loop, as QEMU's `tb_jmp_cache` does.
//! A small table indexed by a hash of the target's linear address; compiled code checks
//! an entry as it checks a link (valid, compiled, same mode, and the TLB maps the
//! address to the block's physical address) before running it.

use crate::translate::{jump_cache_index, JUMP_CACHE_ENTRIES};
use hospes_cpu::block::{no_block, Block};
use std::rc::Rc;

pub(crate) struct JumpCache {
    /// Each entry's block address ([`no_block`] for none), read by compiled code.
    addrs: Box<[usize]>,
    /// The blocks themselves, kept alive while their address is in `addrs`.
    blocks: Box<[Option<Rc<Block>>]>,
}

impl JumpCache {
    pub fn new() -> JumpCache {
        JumpCache {
            addrs: vec![no_block(); JUMP_CACHE_ENTRIES].into_boxed_slice(),
            blocks: vec![None; JUMP_CACHE_ENTRIES].into_boxed_slice(),
        }
    }

    /// Remembers `block` as the block at linear address `lin`.
    pub fn insert(&mut self, lin: u64, block: &Rc<Block>) {
        let i = jump_cache_index(lin);
        self.addrs[i] = Rc::as_ptr(block) as usize;
        self.blocks[i] = Some(block.clone());
    }

    /// The block last seen at linear address `lin` (or at one sharing its entry).
    pub fn get(&self, lin: u64) -> Option<&Rc<Block>> {
        self.blocks[jump_cache_index(lin)].as_ref()
    }

    pub fn clear(&mut self) {
        self.addrs.fill(no_block());
        self.blocks.fill(None);
    }

    /// The table compiled code reads: valid until the next `insert` or `clear`.
    pub fn addrs(&self) -> *const usize {
        self.addrs.as_ptr()
    }
}
