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
//! found. Code memory is bounded: past [`MAX_COMPILED_BLOCKS`] (or the limit set with
//! [`Jit::set_cache_limit`]) everything is flushed (every slot cleared, the code memory
//! freed) and compiled afresh.
//!
//! Blocks are compiled on a thread of their own (`worker.rs`) once they are hot, while
//! the interpreter goes on running them; the code is installed at the next block
//! boundary. Which tier runs a block never changes what the guest sees, so neither does
//! when the code arrives.
//!
//! Compiled blocks run on into each other without the run loop, by tail calls in the
//! compiled code itself: each direct exit (fall through, branch taken) follows the
//! block it was linked to, and a return or indirect jump the block the jump cache holds
//! for its target (`jump_cache.rs`). The next block runs if it is still valid and
//! compiled, is the block the run loop would fetch at the new EIP (the TLB gives the
//! same physical address, the mode is the same), and may run whole within the budget;
//! anything else that could stop the run loop comes from an instruction the
//! interpreter ran, and that ends the run of compiled code at once. Links are made here
//! when a compiled block's exit leads the run loop to another compiled block.

mod code_memory;
mod jump_cache;
mod translate;
mod worker;

use hospes_cpu::block::Block;
use hospes_cpu::flags::TF;
use hospes_cpu::mem::Bus;
use hospes_cpu::state::CS;
use hospes_cpu::{BlockRunner, Cpu};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

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
/// Runs of a block waiting for its code between updates of the count the compile
/// thread orders its work by (a hash lookup each).
const WAITING_RUNS_SHOWN: u32 = 16;

/// What compiled code returns: how the block was left.
/// The interpreter ended the block (a branch it ran, an exception, an instruction after
/// which the run loop must look at the machine): nothing is known about the next block.
pub(crate) const EXIT_STOP: u32 = 0;
/// At the end of the block (or past a Jcc not taken).
pub(crate) const EXIT_FALLTHROUGH: u32 = 1;
/// At the target of a direct JMP, Jcc or CALL.
pub(crate) const EXIT_TAKEN: u32 = 2;
/// At a target read from a register or memory (RET, indirect JMP).
pub(crate) const EXIT_INDIRECT: u32 = 3;
/// Not run: a block reached through a link found the budget too short for it (the
/// machine is as the block before left it, at this block's start).
pub(crate) const EXIT_BUDGET: u32 = 4;

/// Marks a block in [`Block::tier_code`] as having nothing to compile: the
/// interpreter runs it.
const INTERPRETED: usize = 1;
/// Marks a block in [`Block::tier_code`] as being compiled.
pub(crate) const QUEUED: usize = 2;

/// Counters for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub compiled_blocks: u64,
    /// Blocks left to the interpreter: nothing in them is done natively.
    pub interpreted_blocks: u64,
    pub compiled_instructions: u64,
    pub native_instructions: u64,
    pub flushes: u64,
    /// Block runs (those reached through links counted only after
    /// [`Jit::count_hops`]).
    pub block_runs: u64,
    /// Block runs reached through a link: by compiled code itself (counted only after
    /// [`Jit::count_hops`]) or by the run loop following one.
    pub linked_runs: u64,
    /// Returns to the run loop by how the block was left (`EXIT_*` codes).
    pub exits: [u64; 5],
    /// Instructions the interpreter ran in blocks waiting for their code.
    pub waiting_instructions: u64,
    /// Time the compile thread spent compiling.
    pub compile_time: std::time::Duration,
    /// Blocks compiled with the PC thunk their CALL calls done in place.
    pub pc_thunks: u64,
    /// Compiles that failed (the block is then interpreted): the code memory full, which
    /// makes the JIT flush, or a translator error (logged).
    pub failed_compiles: u64,
}

pub struct Jit {
    tier: Tier,
    /// The compile thread (None for the interpreter tier).
    worker: Option<worker::Worker>,
    /// Every block whose `tier_code` is set, kept alive so its slot can be cleared
    /// when the code is freed (and so its instructions outlive the code using them).
    owned: Vec<Rc<Block>>,
    /// Blocks sent to the compile thread, by request token.
    queued: HashMap<u64, Rc<Block>>,
    /// How often each queued block (by address) has run while waiting, as the
    /// compile thread sees it.
    waiting_runs: HashMap<usize, Arc<AtomicU32>>,
    next_token: u64,
    /// The physical addresses (and code sizes) compiled since the last flush: compiling
    /// one again means its code was rewritten in between. At most one entry per
    /// compiled block, so bounded by the cache limit.
    compiled_at: HashSet<u64>,
    /// How often code on each physical page was rewritten after it was compiled, or
    /// rewrote itself while running compiled, since the last flush.
    page_rewrites: HashMap<u64, u32>,
    /// The compiled block that ran last and the exit it took, to link it to the block
    /// that comes next.
    exit_from: Option<ExitFrom>,
    /// Compiled blocks kept before the code cache is flushed.
    cache_limit: usize,
    /// A compile failed for want of code memory: flush before the next.
    memory_full: bool,
    /// Runs of a block before [`Tier::Auto`] compiles it.
    hot_threshold: u32,
    /// Whether code compiled from now on counts its hops ([`Jit::count_hops`]).
    count_hops: bool,
    /// Enters compiled code: the one of the translator whose code is installed.
    trampoline: Option<translate::Trampoline>,
    /// Where returns find the block at their target.
    jump_cache: jump_cache::JumpCache,
    pub stats: Stats,
}

/// The compiled code in a block's `tier_code` slot, if there is any (not empty, not a
/// marker).
fn code_of(block: &Block) -> Option<translate::BlockFn> {
    match block.tier_code.get() {
        0 | INTERPRETED | QUEUED => None,
        code => Some(code as translate::BlockFn),
    }
}

/// A compiled block that returned through a linkable exit: linked to the block the run
/// loop runs next, if that is the block at the exit's target.
struct ExitFrom {
    block: Rc<Block>,
    slot: usize,
    /// The linear address the block started at.
    from_lin: u64,
    /// The linear address of EIP at the exit.
    lin: u64,
}

impl Jit {
    pub fn new(tier: Tier) -> Result<Jit, String> {
        let worker = match tier {
            Tier::Interp => None,
            _ => Some(worker::Worker::start()?),
        };
        Ok(Jit {
            tier,
            worker,
            owned: Vec::new(),
            queued: HashMap::new(),
            waiting_runs: HashMap::new(),
            next_token: 0,
            compiled_at: HashSet::new(),
            page_rewrites: HashMap::new(),
            exit_from: None,
            cache_limit: MAX_COMPILED_BLOCKS,
            memory_full: false,
            hot_threshold: HOT_THRESHOLD,
            count_hops: false,
            trampoline: None,
            jump_cache: jump_cache::JumpCache::new(),
            stats: Stats::default(),
        })
    }

    /// Sets how many compiled blocks are kept before the code cache is flushed (tests
    /// use a small limit to flush often).
    pub fn set_cache_limit(&mut self, blocks: usize) {
        self.cache_limit = blocks.max(1);
    }

    /// Makes code compiled from now on count the blocks it runs on into through links
    /// ([`Stats::linked_runs`], part of [`Stats::block_runs`]): a memory increment per
    /// hop, so only for statistics (`--jit-stats`).
    pub fn count_hops(&mut self) {
        self.count_hops = true;
    }

    /// Sets how many runs make a block hot for [`Tier::Auto`].
    pub fn set_hot_threshold(&mut self, runs: u32) {
        self.hot_threshold = runs.max(1);
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Clears the slot of every block that has one (before the code is freed), and
    /// forgets the blocks waiting for code (and how often each address was compiled).
    fn release_blocks(&mut self) {
        self.jump_cache.clear();
        self.waiting_runs.clear();
        self.compiled_at.clear();
        self.page_rewrites.clear();
        for b in self
            .owned
            .drain(..)
            .chain(self.queued.drain().map(|(_, b)| b))
        {
            b.tier_code.set(0);
            b.tier_heat.set(0);
        }
    }

    /// Drops all compiled code.
    pub fn flush(&mut self) {
        self.release_blocks();
        self.stats.flushes += 1;
        self.memory_full = false;
        if let Some(w) = &self.worker {
            if !w.send(worker::Request::Flush) {
                self.stop_compiling();
            }
        }
    }

    /// The compile thread has stopped (it logged why): interpret from now on.
    fn stop_compiling(&mut self) {
        log::warn!("JIT: the compile thread stopped; interpreting from now on");
        self.release_blocks();
        self.worker = None;
        self.tier = Tier::Interp;
    }

    /// Installs the code the compile thread has finished: what is ready, or if
    /// `until` is given, waiting until that request's code has come.
    fn install(&mut self, until: Option<u64>) {
        loop {
            let Some(w) = &self.worker else {
                return;
            };
            let Some(done) = w.result(until.is_some()) else {
                if until.is_some() {
                    self.stop_compiling();
                }
                return;
            };
            // A block no longer waited for (flushed since) is left alone; its code is
            // freed with the next flush.
            self.stats.compile_time += done.took;
            if let Some(block) = self.queued.remove(&done.token) {
                self.waiting_runs.remove(&(Rc::as_ptr(&block) as usize));
                match done.result {
                    Ok((code, native)) => {
                        self.trampoline = Some(done.trampoline);
                        self.stats.compiled_blocks += 1;
                        self.stats.compiled_instructions += block.instrs.len() as u64;
                        self.stats.native_instructions += native as u64;
                        // A block that left the cache while it was compiled keeps no
                        // code: compiled code takes code in a block as proof it is valid.
                        if block.valid.get() {
                            block.tier_code.set(code);
                        }
                    }
                    Err(e) => {
                        self.stats.failed_compiles += 1;
                        if e.contains(code_memory::FULL) {
                            self.memory_full = true;
                        } else {
                            log::warn!("JIT: cannot compile a block, interpreting it: {e}");
                        }
                        block.tier_code.set(INTERPRETED);
                    }
                }
                self.owned.push(block);
            }
            if until == Some(done.token) {
                return;
            }
        }
    }

    /// The interpreter runs `block` while it waits for its code: counted in its heat,
    /// and every [`WAITING_RUNS_SHOWN`] runs shown to the compile thread.
    fn note_waiting_run(&mut self, block: &Block) {
        self.stats.waiting_instructions += block.instrs.len() as u64;
        let runs = block.tier_heat.get().wrapping_add(1);
        block.tier_heat.set(runs);
        if runs.is_multiple_of(WAITING_RUNS_SHOWN) {
            if let Some(shown) = self.waiting_runs.get(&(block as *const Block as usize)) {
                shown.store(runs, Ordering::Relaxed);
            }
        }
    }

    /// Code on `block`'s page was rewritten after it was compiled.
    fn note_rewrite(&mut self, block: &Block) {
        *self.page_rewrites.entry(block.phys >> 12).or_insert(0) += 1;
    }

    fn lookup_or_compile(&mut self, cpu: &Cpu, block: &Rc<Block>) -> Option<translate::BlockFn> {
        if !self.queued.is_empty() {
            self.install(None);
        }
        if block.tier_code.get() == QUEUED {
            self.note_waiting_run(block);
        }
        if block.tier_code.get() != 0 {
            return code_of(block);
        }
        if block.uncached {
            return None;
        }
        // In the tiered mode, code on a page whose compiled code was rewritten
        // (self-modifying code, a loader reusing the page) must run twice as often
        // before it is compiled, for every time that happened: code that keeps
        // rewriting itself is left to the interpreter instead of being compiled again
        // and again. The forced tier compiles everything (the conformance vectors
        // reuse one page for every test).
        let needed = if self.tier == Tier::Auto {
            let rewrites = self.page_rewrites.get(&(block.phys >> 12)).copied();
            self.hot_threshold
                .saturating_mul(1 << rewrites.unwrap_or(0).min(16))
        } else {
            1
        };
        let heat = block.tier_heat.get() + 1;
        block.tier_heat.set(heat);
        if heat < needed {
            return None;
        }
        if self.memory_full || self.owned.len() + self.queued.len() >= self.cache_limit {
            self.flush();
        }
        if !translate::has_native(&block.instrs) {
            self.stats.interpreted_blocks += 1;
            block.tier_code.set(INTERPRETED);
            self.owned.push(block.clone());
            return None;
        }
        if !self
            .compiled_at
            .insert(block.phys << 1 | block.code32 as u64)
        {
            self.note_rewrite(block);
        }
        let pc_thunk = translate::PcThunk::called_by(cpu, &block.instrs, cpu.state.rip);
        self.stats.pc_thunks += pc_thunk.is_some() as u64;
        let token = self.next_token;
        self.next_token += 1;
        let runs = Arc::new(AtomicU32::new(0));
        let request = worker::Request::Compile {
            token,
            block: translate::BlockPlace {
                addr: Rc::as_ptr(block) as usize,
                phys: block.phys,
                code32: block.code32,
                assumed: translate::entry_assumptions(cpu),
                pc_thunk,
                count_hops: self.count_hops,
            },
            instrs: block.instrs.to_vec(),
            runs: runs.clone(),
        };
        if !self.worker.as_ref()?.send(request) {
            self.stop_compiling();
            return None;
        }
        block.tier_code.set(QUEUED);
        // Counted afresh while it waits.
        block.tier_heat.set(0);
        self.queued.insert(token, block.clone());
        self.waiting_runs.insert(Rc::as_ptr(block) as usize, runs);
        // The forced tier waits for the code: every block runs compiled from its first
        // run. Otherwise the interpreter runs the block until the code is installed.
        if self.tier == Tier::Jit {
            self.install(Some(token));
            return code_of(block);
        }
        None
    }
}

impl Jit {
    /// Links `exit` to `to`, the block the run loop fetched at EIP after it, if EIP is
    /// still where the exit left it (no interrupt was taken in between) and `to` is in
    /// the mode the exit left in. Compiled code may follow a link to the same linear
    /// page as the block it leaves without looking at the TLB (see `run_on`), so `to`
    /// must then be at the same distance in physical memory.
    fn link(cpu: &Cpu, exit: ExitFrom, to: &Rc<Block>) {
        let from = &exit.block;
        if lin_eip(cpu) != exit.lin || to.code32 != from.code32 {
            return;
        }
        if exit.lin >> 12 == exit.from_lin >> 12
            && to.phys.wrapping_sub(from.phys) != exit.lin.wrapping_sub(exit.from_lin)
        {
            return;
        }
        from.set_tier_link(exit.slot, to);
    }

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

    /// The block to run after `from` left through `exit`: the block linked at that
    /// exit, or for a return the block in the jump cache, if it is still valid and is
    /// the block the run loop would fetch now: decoded in the current mode, at the
    /// physical address the TLB gives for EIP, as the run loop's fetch finds it (on a
    /// TLB miss the run loop walks the page tables and fills the TLB: looking there,
    /// not elsewhere, keeps what the TLB holds the same in both tiers).
    fn next_block(&self, cpu: &Cpu, from: &Block, exit: u32) -> Option<Rc<Block>> {
        let lin = lin_eip(cpu);
        let to = match exit {
            EXIT_INDIRECT => self.jump_cache.get(lin).cloned()?,
            _ => from.tier_link((exit - EXIT_FALLTHROUGH) as usize)?,
        };
        if !to.valid.get() || to.code32 != cpu.state.code32() {
            return None;
        }
        (cpu.fetch_tlb_hit(lin) == Some(to.phys)).then_some(to)
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
        let Some(code) = self.lookup_or_compile(cpu, block) else {
            return false;
        };
        let Some(trampoline) = self.trampoline else {
            return false;
        };
        if let Some(exit) = exit_from {
            Self::link(cpu, exit, block);
        }
        self.jump_cache.insert(lin_eip(cpu), block);
        // Compiled code runs on through linked blocks by itself; where it returns, the
        // links it could not follow are tried here, then the run loop takes over.
        let mut entry = translate::Entry { trampoline, code };
        let mut current = block.clone();
        loop {
            let table = self.jump_cache.addrs();
            let done = translate::call(entry, cpu, bus, &current, table, end);
            self.stats.block_runs += 1 + done.chained;
            self.stats.linked_runs += done.chained;
            if !std::ptr::eq(done.block, Rc::as_ptr(&current)) {
                // SAFETY: compiled code stores into `ctx.block` only the addresses of
                // blocks with code it found through a link (`tier_link_addrs`) or the
                // jump cache, both `Rc::as_ptr` of blocks they keep alive; and every
                // block with code is held by `self.owned` until a flush, which does not
                // happen while compiled code runs. So the block is alive, and one more
                // strong count is taken for this `Rc`.
                current = unsafe {
                    Rc::increment_strong_count(done.block);
                    Rc::from_raw(done.block)
                };
            }
            if done.exit == EXIT_BUDGET {
                self.stats.exits[EXIT_BUDGET as usize] += 1;
                return true;
            }
            if done.exit == EXIT_STOP {
                self.stats.exits[EXIT_STOP as usize] += 1;
                if !current.valid.get() {
                    // The block wrote over its own code.
                    self.note_rewrite(&current);
                }
                return true;
            }
            let next = self
                .next_block(cpu, &current, done.exit)
                .filter(|n| Self::may_run(cpu, n, end))
                .and_then(|n| code_of(&n).map(|c| (n, c)));
            // A linked block may have been flushed since (its slot empty) or queued
            // again: then the run loop takes over.
            let Some((next, code)) = next else {
                self.stats.exits[done.exit as usize] += 1;
                if done.exit != EXIT_INDIRECT {
                    self.exit_from = Some(ExitFrom {
                        block: current,
                        slot: (done.exit - EXIT_FALLTHROUGH) as usize,
                        from_lin: cpu.state.seg[CS].base.wrapping_add(done.base) & 0xFFFF_FFFF,
                        lin: lin_eip(cpu),
                    });
                }
                return true;
            };
            entry.code = code;
            self.stats.linked_runs += 1;
            current = next;
        }
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        // Slots first: the worker frees the code when it stops.
        self.release_blocks();
        self.worker = None;
    }
}
