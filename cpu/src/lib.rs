//! The hospes CPU core: an i686 (Pentium Pro/II class) interpreter.
//!
//! [`Cpu`] owns the architectural state, guest physical memory, the TLB and the cache of
//! decoded blocks. Everything outside the CPU (ports, MMIO, the interrupt controller) is
//! reached through the [`mem::Bus`] trait, which the machine implements.

pub mod block;
pub mod exception;
pub mod exec;
pub mod flags;
pub mod fpu;
pub mod mem;
pub mod mmu;
pub mod seg;
pub mod state;
pub mod system;

use exception::Exception;
use mem::PhysMem;
use state::CpuState;

pub use exec::{BlockRunner, Exit};

pub struct Cpu {
    pub state: CpuState,
    pub mem: PhysMem,
    pub tlb: mmu::Tlb,
    pub(crate) blocks: block::BlockCache,
    /// Set by an instruction after which the current block must not continue (a write to
    /// a code page, a change of paging or of the code segment's mode).
    pub end_block: bool,
    /// Set by an instruction that may have changed whether an interrupt is deliverable.
    pub check_irq: bool,
    /// EIP of the instruction being executed (for faults).
    pub(crate) cur_eip: u64,
    /// The machine asked for a shutdown (triple fault).
    pub shutdown: bool,
    /// Instruction count at which the current `run` call must stop.
    pub(crate) budget_end: u64,
    /// Depth of faults being delivered inside a task switch's new task (bounds recursion
    /// through chains of broken task gates).
    pub(crate) nested_task_faults: u8,
    /// For another execution tier: what its code reads next to the CPU state while it
    /// runs (set before each run; meaningless otherwise).
    pub tier: TierScratch,
    /// A debugger's breakpoints (linear addresses): `run_with` stops before running an
    /// instruction at one, except at instruction count `breakpoint_pass` (where the
    /// debugger resumes from), and sets `breakpoint_hit`. While any is set, every
    /// instruction is interpreted.
    pub breakpoints: Vec<u64>,
    pub breakpoint_pass: u64,
    pub breakpoint_hit: bool,
}

/// What another execution tier (the JIT) keeps beside the CPU for its code to read at
/// a fixed distance from the CPU's address, as it reads the state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TierScratch {
    /// The tier's own context for the run (an address).
    pub ctx: usize,
    /// The instruction count the run must not pass.
    pub end: u64,
    /// The tier's table of blocks for indirect branches (an address).
    pub jump_cache: usize,
    /// What the tier's code may assume about the machine now, in its own encoding.
    pub assumed: u32,
}

impl Cpu {
    /// A CPU in the RESET state with `ram_size` bytes of RAM and room for ROM images.
    pub fn new(ram_size: usize, rom_space: usize) -> Result<Cpu, mem::MemError> {
        Ok(Cpu {
            state: CpuState::new(),
            mem: PhysMem::new(ram_size, rom_space)?,
            tlb: mmu::Tlb::default(),
            blocks: block::BlockCache::default(),
            end_block: false,
            check_irq: true,
            cur_eip: 0,
            shutdown: false,
            budget_end: 0,
            nested_task_faults: 0,
            tier: TierScratch::default(),
            breakpoints: Vec::new(),
            breakpoint_pass: 0,
            breakpoint_hit: false,
        })
    }

    /// Back to the RESET state (memory is kept).
    pub fn reset(&mut self) {
        self.state = CpuState::new();
        self.flush_tlb();
        self.flush_code();
        self.shutdown = false;
    }

    pub fn flush_tlb(&mut self) {
        self.tlb.flush_all();
    }

    /// Drops every decoded block (after memory was changed behind the CPU's back).
    pub fn flush_code(&mut self) {
        self.blocks.clear();
        self.mem.clear_code_pages();
        self.end_block = true;
    }

    /// Writes guest-physical memory from outside the CPU (DMA, loaders, tests),
    /// keeping decoded code coherent.
    pub fn write_phys(&mut self, paddr: u64, data: &[u8]) {
        let mut page = paddr & !(mem::PAGE_SIZE - 1);
        let end = paddr + data.len() as u64;
        while page < end {
            if self.mem.is_code_page(page) {
                self.invalidate_code_page(page);
            }
            page += mem::PAGE_SIZE;
        }
        self.mem.write(paddr, data);
    }

    /// A store of `len` bytes at `paddr` (within one page) to a page holding code:
    /// drops only the blocks decoded from the bytes written, so code sharing a page with
    /// data (real-mode programs, stubs beside their variables) is not decoded and
    /// compiled again after every store. The current block ends if any was dropped.
    pub(crate) fn invalidate_code_range(&mut self, paddr: u64, len: u64) {
        let (dropped, remain) = self.blocks.invalidate_range(paddr, len);
        if !remain {
            self.mem.set_code_page(paddr, false);
        }
        if dropped {
            self.end_block = true;
        }
    }

    /// Invalidates every decoded block on a physical page.
    pub(crate) fn invalidate_code_page(&mut self, paddr: u64) {
        self.blocks.invalidate_page(paddr);
        self.mem.set_code_page(paddr, false);
        self.end_block = true;
    }

    /// The machine changed which memory backs the physical pages `[base, base + len)`
    /// (chipset shadowing): drops the code decoded from them and every TLB entry (entries
    /// cache host addresses, and a page may be reached through any linear address), and
    /// ends the current block so the next instruction is fetched through the new map.
    pub fn memory_map_changed(&mut self, base: u64, len: u64) {
        let mut page = base & !(mem::PAGE_SIZE - 1);
        while page < base.saturating_add(len) {
            self.invalidate_code_page(page);
            page += mem::PAGE_SIZE;
        }
        self.flush_tlb();
        self.end_block = true;
    }

    /// Sets the A20 gate (port 92h, the keyboard controller).
    pub fn set_a20(&mut self, enabled: bool) {
        let mask = if enabled { !0 } else { !(1u64 << 20) };
        if mask != self.state.a20_mask {
            self.state.a20_mask = mask;
            self.flush_tlb();
            self.end_block = true;
        }
    }

    /// Signals that the interrupt line may have changed (the machine calls this after
    /// raising an IRQ from an event).
    pub fn irq_changed(&mut self) {
        self.check_irq = true;
    }
}

/// Helper for tests and tools: an exception as `#GP(0010)` style text.
pub fn describe_exception(e: &Exception) -> String {
    let name = match e.vector {
        0 => "DE",
        1 => "DB",
        2 => "NMI",
        3 => "BP",
        4 => "OF",
        5 => "BR",
        6 => "UD",
        7 => "NM",
        8 => "DF",
        10 => "TS",
        11 => "NP",
        12 => "SS",
        13 => "GP",
        14 => "PF",
        16 => "MF",
        17 => "AC",
        18 => "MC",
        19 => "XM",
        _ => "INT",
    };
    match e.error {
        Some(c) => format!("#{name}({c:#x})"),
        None => format!("#{name}"),
    }
}
