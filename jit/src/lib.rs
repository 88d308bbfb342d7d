//! The Cranelift tier: guest blocks translated to host code.
//!
//! The interpreter stays the reference. [`Jit`] is a [`BlockRunner`]: the CPU's run loop
//! offers it every block, and it runs the block's compiled code when it has some (and
//! the block can run whole within the instruction budget), or declines and the
//! interpreter runs the block. Compiled code does the common instructions itself and
//! calls the interpreter's own implementation for every other instruction, so no block
//! is ever refused and both tiers give the same result by construction.
//!
//! Compiled code hangs off the decoded block itself (`Block::tier_code`), so finding it
//! costs no lookup: the CPU drops a block when its page is written (self-modifying
//! code, loaders) and decodes a new one, which has no code yet, so stale code is never
//! found. Code memory is bounded: past [`MAX_COMPILED_BLOCKS`] everything is flushed
//! (every slot cleared, the code memory freed) and compiled afresh.

mod translate;

use hospes_cpu::block::Block;
use hospes_cpu::flags::TF;
use hospes_cpu::mem::Bus;
use hospes_cpu::state::CS;
use hospes_cpu::{BlockRunner, Cpu};
use std::rc::Rc;

/// Which tier runs guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The interpreter only.
    Interp,
    /// Every block compiled the first time it runs (for tests: the JIT runs everything
    /// it can).
    Jit,
    /// Blocks compiled once they have run [`HOT_THRESHOLD`] times.
    Auto,
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Tier, String> {
        match s {
            "interp" => Ok(Tier::Interp),
            "jit" => Ok(Tier::Jit),
            "auto" => Ok(Tier::Auto),
            _ => Err(format!("unknown tier '{s}' (interp, jit or auto)")),
        }
    }
}

/// Runs of a block before [`Tier::Auto`] compiles it.
pub const HOT_THRESHOLD: u32 = 50;
/// Compiled blocks kept before the code cache is flushed.
pub const MAX_COMPILED_BLOCKS: usize = 20_000;

/// What compiled code returns: how the block was left.
/// The interpreter ended the block (a branch it ran, an exception, an instruction after
/// which the run loop must look at the machine): nothing is known about the next block.
pub(crate) const EXIT_STOP: u32 = 0;
/// At the end of the block (or past a Jcc not taken).
pub(crate) const EXIT_FALLTHROUGH: u32 = 1;
/// At the target of a direct JMP, Jcc or CALL.
pub(crate) const EXIT_TAKEN: u32 = 2;
/// At a target read from memory (RET).
pub(crate) const EXIT_INDIRECT: u32 = 3;

/// Marks a block in [`Block::tier_code`] as having nothing to compile: the
/// interpreter runs it.
const INTERPRETED: usize = 1;

/// Counters for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub compiled_blocks: u64,
    /// Blocks left to the interpreter: nothing in them is done natively.
    pub interpreted_blocks: u64,
    pub compiled_instructions: u64,
    pub native_instructions: u64,
    pub flushes: u64,
    pub block_runs: u64,
}

pub struct Jit {
    tier: Tier,
    translator: Option<translate::Translator>,
    /// Every block whose `tier_code` is set, kept alive so its slot can be cleared
    /// when the code is freed (and so its instructions outlive the code using them).
    owned: Vec<Rc<Block>>,
    /// The compiled block that ran last, the exit it took (0: fall through, 1: branch
    /// taken) and its linear address, to link it to the block that comes next.
    exit_from: Option<(Rc<Block>, usize, u64)>,
    pub stats: Stats,
}

impl Jit {
    pub fn new(tier: Tier) -> Result<Jit, String> {
        let translator = match tier {
            Tier::Interp => None,
            _ => Some(translate::Translator::new()?),
        };
        Ok(Jit {
            tier,
            translator,
            owned: Vec::new(),
            exit_from: None,
            stats: Stats::default(),
        })
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Clears the slot of every block that has one (before the code is freed).
    fn release_blocks(&mut self) {
        for b in self.owned.drain(..) {
            b.tier_code.set(0);
            b.tier_heat.set(0);
        }
    }

    /// Drops all compiled code.
    pub fn flush(&mut self) -> Result<(), String> {
        self.release_blocks();
        self.stats.flushes += 1;
        if let Some(t) = self.translator.take() {
            t.free();
            self.translator = Some(translate::Translator::new()?);
        }
        Ok(())
    }

    fn lookup_or_compile(&mut self, block: &Rc<Block>) -> Option<translate::BlockFn> {
        match block.tier_code.get() {
            0 => {}
            INTERPRETED => return None,
            // SAFETY: only `compile` below stores into `tier_code` (besides the
            // INTERPRETED marker), and it stores a `BlockFn` from the current
            // translator; `flush` clears every slot before that translator's code is
            // freed.
            code => return Some(unsafe { std::mem::transmute::<usize, translate::BlockFn>(code) }),
        }
        if block.uncached {
            return None;
        }
        if self.tier == Tier::Auto {
            let heat = block.tier_heat.get() + 1;
            block.tier_heat.set(heat);
            if heat < HOT_THRESHOLD {
                return None;
            }
        }
        if self.owned.len() >= MAX_COMPILED_BLOCKS {
            if let Err(e) = self.flush() {
                log::warn!("JIT flush failed, interpreting from now on: {e}");
                self.tier = Tier::Interp;
                return None;
            }
        }
        if !translate::has_native(&block.instrs) {
            self.stats.interpreted_blocks += 1;
            block.tier_code.set(INTERPRETED);
            self.owned.push(block.clone());
            return None;
        }
        let translator = self.translator.as_mut()?;
        match translator.compile(&block.instrs) {
            Ok((code, native)) => {
                self.stats.compiled_blocks += 1;
                self.stats.compiled_instructions += block.instrs.len() as u64;
                self.stats.native_instructions += native as u64;
                block.tier_code.set(code as usize);
                self.owned.push(block.clone());
                Some(code)
            }
            Err(e) => {
                log::warn!("JIT: cannot compile a block, interpreting it: {e}");
                block.tier_code.set(INTERPRETED);
                self.owned.push(block.clone());
                None
            }
        }
    }
}

impl Jit {
    /// Whether compiled code may run `block` now: whole, within the budget, with
    /// nothing due between its instructions (an interrupt check, a single-step trap, the
    /// instruction after STI or MOV SS), every instruction inside the CS limit and no
    /// 16-bit IP wrap (the checks the interpreter makes per instruction, made once).
    fn may_run(cpu: &Cpu, block: &Block, end: u64) -> bool {
        if block.instrs.is_empty()
            || end.saturating_sub(cpu.state.icount) < block.instrs.len() as u64
            || cpu.check_irq
            || cpu.state.irq_shadow
            || cpu.state.halted
            || cpu.shutdown
            || cpu.state.flags.bits & TF != 0
        {
            return false;
        }
        let end = cpu.state.rip + block.span;
        end - 1 <= cpu.state.seg[CS].limit as u64 && (block.code32 || end < 0x1_0000)
    }

    /// The block at `lin` (linear address of EIP now) if `from`'s exit `slot` links to
    /// it: the link must still be valid and its block at the address jumped to. The
    /// link and the source share a physical page (checked when linking), so the same
    /// distance in linear and physical addresses means the same page was reached, whose
    /// mapping compiled code cannot have changed (that ends a block in the interpreter).
    fn linked(cpu: &Cpu, from: &Block, from_lin: u64, slot: usize, lin: u64) -> Option<Rc<Block>> {
        let links = from.tier_links.borrow();
        let to = links[slot].as_ref()?;
        let same_place = lin.wrapping_sub(from_lin) == to.phys.wrapping_sub(from.phys);
        let same_mode = to.code32 == from.code32 && cpu.state.code32() == to.code32;
        (to.valid.get() && same_place && same_mode).then(|| to.clone())
    }
}

/// The linear address of EIP.
fn lin_eip(cpu: &Cpu) -> u64 {
    cpu.state.seg[CS].base.wrapping_add(cpu.state.rip) & 0xFFFF_FFFF
}

impl BlockRunner for Jit {
    fn run_block(&mut self, cpu: &mut Cpu, bus: &mut dyn Bus, block: &Rc<Block>, end: u64) -> bool {
        if self.tier == Tier::Interp {
            return false;
        }
        let exit_from = self.exit_from.take();
        if !Self::may_run(cpu, block, end) {
            return false;
        }
        let Some(mut code) = self.lookup_or_compile(block) else {
            return false;
        };
        // The previous compiled block left for this one's address: link them, if they
        // share a page (the only case a link can be checked cheaply).
        if let Some((from, slot, _)) = exit_from {
            if from.valid.get() && from.phys >> 12 == block.phys >> 12 {
                from.tier_links.borrow_mut()[slot] = Some(block.clone());
            }
        }
        // Then run linked compiled blocks for as long as they may run.
        let mut current = block.clone();
        loop {
            let lin = lin_eip(cpu);
            self.stats.block_runs += 1;
            let exit = translate::call(code, cpu, bus, &current.instrs, cpu.state.rip);
            let slot = match exit {
                EXIT_FALLTHROUGH => 0,
                EXIT_TAKEN => 1,
                _ => return true,
            };
            let next = Self::linked(cpu, &current, lin, slot, lin_eip(cpu))
                .filter(|n| Self::may_run(cpu, n, end));
            let Some(next) = next else {
                self.exit_from = Some((current, slot, lin));
                return true;
            };
            match next.tier_code.get() {
                0 | INTERPRETED => {
                    self.exit_from = Some((current, slot, lin));
                    return true;
                }
                // SAFETY: as in `lookup_or_compile`: a non-marker slot holds a live
                // `BlockFn` of the current translator.
                c => code = unsafe { std::mem::transmute::<usize, translate::BlockFn>(c) },
            }
            current = next;
        }
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        self.release_blocks();
        if let Some(t) = self.translator.take() {
            t.free();
        }
    }
}
