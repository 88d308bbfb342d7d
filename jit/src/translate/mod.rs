//! One decoded block to one Cranelift function.
//!
//! The function is `fn(cpu, ctx, base, icount) -> u32` in Cranelift's `tail` calling
//! convention (entered from Rust through a [`Trampoline`]): `cpu` points at the `Cpu`
//! (its architectural state and its TLB at fixed offsets), `ctx` at a [`HelperCtx`]
//! for the helpers, `base` is EIP at the block's first instruction (blocks are decoded
//! with IPs relative to their start) and `icount` the instruction count there (the
//! state's EIP and count are stored only where the code returns or calls a helper).
//! It runs the block's instructions in order, then runs on into the next
//! block's code by a tail call where it may (`Emitter::run_on`), or returns how it
//! left.
//!
//! - Instructions it knows (MOV, MOVZX/MOVSX, ADD/SUB/AND/OR/XOR/CMP/TEST of 8, 16 and
//!   32 bits on registers, immediates and memory, LEA, PUSH/POP, NOP, and a final near
//!   JMP or Jcc) it does itself. Guest registers live in SSA values from their first use
//!   and go back to the state only where the interpreter needs them; lazy flags are
//!   recorded as the interpreter's `Flags::set_lazy` would, and a Jcc after a compiled
//!   CMP/TEST/ADD/SUB/logic operation tests its operands directly.
//! - Memory operands take the TLB's fast path inline (the same entries and tags the
//!   interpreter uses) when the segment is a plain writable data segment and the access
//!   stays inside the limit and the page. Otherwise (faults, MMIO, pages holding code,
//!   odd segments) the interpreter runs the rest of the block and the function returns:
//!   a side exit, so the fast path never merges with it.
//! - Every other run of instructions is one call to [`helper_step`], which runs the
//!   interpreter's implementation. A helper that reports the straight-line path left (a
//!   taken branch, an exception, an instruction after which the block must end) makes
//!   the function return at once.
//!
//! EIP and the instruction count are written only at exits and before helpers, as
//! `base + ip` and `count at entry + instructions done`, both known when compiling.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, FuncRef, InstBuilder, MemFlagsData, SigRef, Signature, SourceLoc,
    UserFuncName, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use hospes_cpu::block::{Block, TIER_LINKS};
use hospes_cpu::flags::{FlagOp, Flags, TF};
use hospes_cpu::fpu::FpuState;
use hospes_cpu::mem::Bus;
use hospes_cpu::mmu::{Tlb, TlbEntry, TLB_ENTRIES};
use hospes_cpu::state::{
    CpuState, Segment, ATTR_CODE, ATTR_DB, ATTR_DC, ATTR_P, ATTR_RW, ATTR_S, CR0_PE, CR4_TSD, CS,
    EAX, EBP, ECX, EDX, ES, ESP, SS,
};
use hospes_cpu::{Cpu, TierScratch};
use iced_x86::{Instruction, Mnemonic};
use std::collections::{HashMap, HashSet};
use std::mem::offset_of;

mod classify;
mod flags;
mod ops;

use crate::code_memory::{self, DualMapped};

pub use classify::has_native;
use classify::{classify, mask, Count, Gpr, MemRef, Native, Operand};
use flags::{deferred_shift, is_rotate, keeps_old_flags, PendingFlags, DEFERRED_MUL};

/// Compiled code for one block. Its calling convention is Cranelift's `tail` (so that
/// blocks can run on into each other with tail calls): only compiled code calls it,
/// the first through the [`Trampoline`].
pub type BlockFn = *const u8;

/// Calls a [`BlockFn`] (`code`, the last argument) with the CPU, EIP and the
/// instruction count at its start, from Rust: compiled once per translator. The
/// helper context is found through the CPU ([`Cpu::tier`]).
pub type Trampoline = unsafe extern "C" fn(*mut Cpu, u64, u64, BlockFn) -> u32;

/// What helpers need that compiled code does not touch.
#[repr(C)]
pub struct HelperCtx<'a> {
    cpu: *mut Cpu,
    bus: *mut (dyn Bus + 'a),
    /// The block running now, so helpers find its instructions and the caller sees
    /// where compiled code left: compiled code of a block reached through a link sets
    /// it (and `base`) before it calls such a helper or returns.
    block: *const Block,
    /// EIP at the running block's first instruction.
    base: u64,
    /// The instruction count the run must not pass.
    end: u64,
    /// Blocks entered through links without returning.
    chained: u64,
    /// The bits [`ops::helper_x87_store`] gives compiled code to write.
    x87_out: u64,
    /// [`entry_assumptions`] now (segments and the CPL change only in the interpreter,
    /// and [`helper_step`] ends the run of compiled code when they do).
    assumed: u32,
}

/// The bit of [`entry_assumptions`] for CPL 3: compiled code reads the TLB's user
/// table (bits 0-5 are the flat segments).
const ASSUME_USER: u32 = 1 << 8;
/// The bit of [`entry_assumptions`] for a flat CS (base 0, limit 4 GiB): linear
/// addresses of code are EIPs, and no 32-bit EIP is beyond the limit.
const ASSUME_FLAT_CS: u32 = 1 << 9;

/// What a block's code is compiled to assume about the machine, checked once at its
/// entry: which segments are flat ([`flat_segments`]) and whether the CPL is 3.
pub fn entry_assumptions(cpu: &Cpu) -> u32 {
    let user = if cpu.state.cpl == 3 { ASSUME_USER } else { 0 };
    let cs = &cpu.state.seg[CS];
    let flat_cs = if cs.base == 0 && cs.limit == 0xFFFF_FFFF {
        ASSUME_FLAT_CS
    } else {
        0
    };
    flat_segments(cpu) | user | flat_cs
}

/// The segments (a bit per segment register) that are flat: base 0, limit 4 GiB,
/// present writable expand-up data (SS also 32-bit). Accesses through them need no
/// segment check: the TLB lookup of the 64-bit linear address catches an access
/// wrapping past 4 GiB (no page has that tag).
pub fn flat_segments(cpu: &Cpu) -> u32 {
    let mut mask = 0;
    for (n, s) in cpu.state.seg.iter().enumerate() {
        let need = FAST_SEG_ATTR | if n == SS { ATTR_DB } else { 0 };
        let mask_bits = FAST_SEG_MASK | need;
        if s.base == 0 && s.limit == 0xFFFF_FFFF && s.attr & mask_bits == need {
            mask |= 1 << n;
        }
    }
    mask
}

/// Entries of the jump cache, where indirect branches find their target's block.
pub const JUMP_CACHE_ENTRIES: usize = 4096;

/// The jump cache entry for code at linear address `lin`.
pub fn jump_cache_index(lin: u64) -> usize {
    ((lin >> 12) ^ lin) as usize & (JUMP_CACHE_ENTRIES - 1)
}

/// Runs the interpreter for instructions `from..to` of the block. Returns 1 if compiled
/// code must return (an instruction left the straight-line path or ended the block).
extern "C" fn helper_step(ctx: *mut HelperCtx<'_>, from: u32, to: u32) -> u32 {
    // SAFETY: compiled code passes on the `ctx` that [`call`] built for this run: its
    // pointers are to the CPU and the bus, borrowed by `call` for its whole duration,
    // and to the running block, which the JIT keeps alive while it has code (the first
    // block is borrowed by `call`; a linked one is kept alive by the link compiled code
    // followed to it); `from..to` are instructions of that block. The compiled code
    // caller holds no Rust reference to the CPU while it calls us.
    let (cpu, bus, block, base, ctx_assumed, end) = unsafe {
        let ctx = &mut *ctx;
        (
            &mut *ctx.cpu,
            &mut *ctx.bus,
            &*ctx.block,
            ctx.base,
            ctx.assumed,
            ctx.end,
        )
    };
    let (from, to) = (from as usize, to as usize);
    let run = block.instrs.get(from..to).unwrap_or_default();
    for (i, ins) in run.iter().enumerate() {
        let i = from + i;
        let before = cpu.state.icount;
        if !cpu.step_one(bus, ins, base) || cpu.end_block || cpu.check_irq {
            return 1;
        }
        // A repeated string instruction that ran all its iterations counted each
        // (compiled code takes its count from the state after it): the rest of the
        // block must still fit the budget, as the run loop checked for the whole block.
        if cpu.state.icount != before + 1 {
            let rest = (block.instrs.len() - (i + 1)) as u64;
            if !counts_iterations(ins) || cpu.state.icount + rest > end {
                return 1;
            }
        }
        // Compiled code relies on the segments it found flat at its entry: after a
        // segment load that changed what is flat, the rest runs from the run loop.
        if loads_segment(ins) && entry_assumptions(cpu) != ctx_assumed {
            return 1;
        }
        // After MOV SS / POP SS (an interrupt shadow) or with TF set, the next
        // instruction has checks compiled code does not make: the interpreter runs it.
        if cpu.state.irq_shadow || cpu.state.flags.bits & TF != 0 {
            return 1;
        }
    }
    0
}

/// Whether `ins` is a repeated string instruction, which counts each iteration as an
/// instruction.
fn counts_iterations(ins: &Instruction) -> bool {
    (ins.has_rep_prefix() || ins.has_repne_prefix()) && ins.is_string_instruction()
}

/// Whether `ins` loads a data or stack segment register (CS is loaded only by far
/// transfers, which end the block).
fn loads_segment(ins: &Instruction) -> bool {
    ins.op0_register().is_segment_register()
        || matches!(
            ins.mnemonic(),
            Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss
        )
}

/// How a run of compiled code ended.
pub struct Finished {
    /// One of the `EXIT_*` codes.
    pub exit: u32,
    /// The block whose code returned (the first block, or one linked from it).
    pub block: *const Block,
    /// EIP at that block's start.
    pub base: u64,
    /// Blocks entered through links without returning.
    pub chained: u64,
}

/// Where compiled code starts: a block's `code` and its translator's `trampoline`.
#[derive(Clone, Copy)]
pub struct Entry {
    pub trampoline: Trampoline,
    pub code: BlockFn,
}

/// Runs compiled code for `block` (`entry`), starting at EIP `base`, and on through
/// linked blocks (and blocks in the `jump_cache` table) while they fit before
/// instruction count `end`.
pub fn call(
    entry: Entry,
    cpu: &mut Cpu,
    bus: &mut dyn Bus,
    block: &Block,
    jump_cache: *const usize,
    end: u64,
) -> Finished {
    let cpu: *mut Cpu = cpu;
    // SAFETY: compiled code and the helpers (through `ctx.cpu`) are given the same
    // pointer, from the exclusive borrow of the CPU held for this whole call. Compiled
    // code accesses the CPU (its state and TLB) only between helper calls, and each
    // helper's `&mut Cpu` ends before the compiled code resumes, so the two never
    // access the CPU at the same time. `block` is the block `code` was
    // compiled from, alive for the call; `code` and `trampoline` come from the same
    // live translator; `jump_cache` is the JIT's table, unchanged during the call.
    // Compiled code finds `ctx` through `cpu.tier.ctx`, set below to this frame's
    // `ctx`, which lives until the trampoline returns (no code reads it after).
    unsafe {
        let base = (*cpu).state.rip;
        let mut ctx = HelperCtx {
            cpu,
            bus: bus as *mut (dyn Bus + '_),
            block,
            base,
            end,
            chained: 0,
            x87_out: 0,
            assumed: entry_assumptions(&*cpu),
        };
        let ctx_ptr = &mut ctx as *mut HelperCtx<'_>;
        // Compiled code reads these beside the state; `ctx` lives until the
        // trampoline returns, and nothing reads `tier.ctx` after.
        (*cpu).tier = TierScratch {
            ctx: ctx_ptr as usize,
            end,
            jump_cache: jump_cache as usize,
            assumed: ctx.assumed,
        };
        let icount = (*cpu).state.icount;
        let exit = (entry.trampoline)(cpu, base, icount, entry.code);
        Finished {
            exit,
            block: ctx.block,
            base: ctx.base,
            chained: ctx.chained,
        }
    }
}

/// Owns the JIT module: the code memory of every function compiled with it.
pub struct Translator {
    module: JITModule,
    /// Where code runs relative to where Cranelift wrote it (`code_memory`).
    exec_offset: usize,
    /// Enters compiled code from Rust.
    pub trampoline: Trampoline,
    helpers: HelperIds,
    ctx: cranelift_codegen::Context,
    builder_ctx: FunctionBuilderContext,
    /// For profiling (`HOSPES_PERF_MAP`): the ranges of the last block's code that
    /// each of its instructions compiled to, filled in only if `Some`.
    pub code_ranges: Option<Vec<CodeRange>>,
}

/// A range of a compiled block's code (offsets from its start) and the instruction it
/// does: an index into the block's instructions, or [`HOP`] for the code that runs on
/// into the next block.
pub struct CodeRange {
    pub start: u32,
    pub end: u32,
    pub instruction: u32,
}

/// [`CodeRange::instruction`] of the code that leaves a block (run on or return).
pub const HOP: u32 = u32::MAX - 1;

/// The helpers compiled code calls, as declared in the module.
struct HelperIds {
    step: FuncId,
    flags: FuncId,
    cond: FuncId,
    x87_read: FuncId,
    x87_store: FuncId,
}

/// The helpers, as imported into the function being built.
struct Helpers {
    step: FuncRef,
    flags: FuncRef,
    cond: FuncRef,
    x87_read: FuncRef,
    x87_store: FuncRef,
}

/// Compiled code is given the `Cpu`: its state is at this offset.
const STATE: i32 = offset_of!(Cpu, state) as i32;
const GPR: i32 = STATE + offset_of!(CpuState, gpr) as i32;
// Compiled code reads and writes the low half of a 64-bit register slot at its address
// (see `Emitter::store_registers`).
const _: () = assert!(cfg!(target_endian = "little"));
const RIP: i32 = STATE + offset_of!(CpuState, rip) as i32;
const ICOUNT: i32 = STATE + offset_of!(CpuState, icount) as i32;
const FLAGS: i32 = STATE + offset_of!(CpuState, flags) as i32;
const FLAG_BITS: i32 = FLAGS + offset_of!(Flags, bits) as i32;
const FLAG_OP: i32 = FLAGS + offset_of!(Flags, op) as i32;
const FLAG_SIZE: i32 = FLAGS + offset_of!(Flags, size) as i32;
const FLAG_A: i32 = FLAGS + offset_of!(Flags, a) as i32;
const FLAG_B: i32 = FLAGS + offset_of!(Flags, b) as i32;
const FLAG_RES: i32 = FLAGS + offset_of!(Flags, res) as i32;

const SEG: i32 = STATE + offset_of!(CpuState, seg) as i32;
const SEG_SIZE: i32 = std::mem::size_of::<Segment>() as i32;
const SEG_BASE: i32 = offset_of!(Segment, base) as i32;
const SEG_LIMIT: i32 = offset_of!(Segment, limit) as i32;
const SEG_ATTR: i32 = offset_of!(Segment, attr) as i32;
const CPL: i32 = STATE + offset_of!(CpuState, cpl) as i32;
const CR0: i32 = STATE + offset_of!(CpuState, cr0) as i32;
const FPU: i32 = STATE + offset_of!(CpuState, fpu) as i32;
const FPU_STATUS: i32 = FPU + offset_of!(FpuState, status) as i32;
const FPU_CONTROL: i32 = FPU + offset_of!(FpuState, control) as i32;
const CR4: i32 = STATE + offset_of!(CpuState, cr4) as i32;
const TSC_OFFSET: i32 = STATE + offset_of!(CpuState, tsc_offset) as i32;
const TLB_ENTRY: i64 = std::mem::size_of::<TlbEntry>() as i64;
/// The TLB's tables, inside the `Cpu`: supervisor, then user.
const TLB_TABLES: i32 = (offset_of!(Cpu, tlb) + offset_of!(Tlb, entries)) as i32;
const TLB_TABLE_SIZE: i32 = TLB_ENTRY as i32 * TLB_ENTRIES as i32;
const TLB_READ_TAG: i32 = offset_of!(TlbEntry, read_tag) as i32;
const TLB_WRITE_TAG: i32 = offset_of!(TlbEntry, write_tag) as i32;
const TLB_ADDEND: i32 = offset_of!(TlbEntry, addend) as i32;
const TLB_PADDR: i32 = offset_of!(TlbEntry, paddr) as i32;
const CTX_BLOCK: i32 = offset_of!(HelperCtx<'static>, block) as i32;
const CTX_BASE: i32 = offset_of!(HelperCtx<'static>, base) as i32;
const CTX_CHAINED: i32 = offset_of!(HelperCtx<'static>, chained) as i32;
const BLOCK_LINK_ADDRS: i64 = offset_of!(Block, tier_link_addrs) as i64;
const BLOCK_CODE: i32 = offset_of!(Block, tier_code) as i32;
const BLOCK_SPAN: i32 = offset_of!(Block, span) as i32;
const BLOCK_PHYS: i32 = offset_of!(Block, phys) as i32;
const BLOCK_CODE32: i32 = offset_of!(Block, code32) as i32;
const TIER: i32 = offset_of!(Cpu, tier) as i32;
const TIER_CTX: i32 = TIER + offset_of!(TierScratch, ctx) as i32;
const TIER_END: i32 = TIER + offset_of!(TierScratch, end) as i32;
const TIER_JUMP_CACHE: i32 = TIER + offset_of!(TierScratch, jump_cache) as i32;
const TIER_ASSUMED: i32 = TIER + offset_of!(TierScratch, assumed) as i32;
const CTX_X87_OUT: i32 = offset_of!(HelperCtx<'static>, x87_out) as i32;
const PAGE: i64 = 4096;
// Compiled code finds a TLB entry by shifting the page number.
const _: () = assert!(TLB_ENTRY.count_ones() == 1 && TLB_ENTRY <= 1 << 12);
// Compiled code reads the link addresses as an array of words.
const _: () =
    assert!(std::mem::size_of::<[std::cell::Cell<usize>; TIER_LINKS]>() == TIER_LINKS * 8);
/// Attribute bits a segment must have (present, code/data, data, expand-up, writable)
/// for compiled code to access it without the interpreter's full checks.
const FAST_SEG_MASK: u16 = ATTR_P | ATTR_S | ATTR_CODE | ATTR_DC | ATTR_RW;
const FAST_SEG_ATTR: u16 = ATTR_P | ATTR_S | ATTR_RW;

impl Translator {
    pub fn new() -> Result<Translator, String> {
        let err = |e: &dyn std::fmt::Display| format!("setting up the JIT: {e}");
        let mut flags = settings::builder();
        flags
            .set("use_colocated_libcalls", "false")
            .map_err(|e| err(&e))?;
        flags.set("is_pic", "false").map_err(|e| err(&e))?;
        // Cranelift's tail calls (blocks running on into each other) need frame pointers.
        flags
            .set("preserve_frame_pointers", "true")
            .map_err(|e| err(&e))?;
        // Measured on the Linux boot benchmark: Cranelift's optimiser (`speed`) cuts
        // the compiled code's host instructions by ~5% and the run by 2-4%, at ~40%
        // more compile time; not the default yet (it was held back while a compile-time
        // blow-up in the v86 differential test was open; that was a failed compile's
        // function left in the context, at either level, and is fixed).
        // The backtracking register allocator matters more (`single_pass` compiled
        // 1.6 times faster but ran the boot twice as long). HOSPES_JIT_OPT and
        // HOSPES_JIT_REGALLOC override these, for measurements.
        let opt = std::env::var("HOSPES_JIT_OPT").unwrap_or_else(|_| "none".into());
        flags.set("opt_level", &opt).map_err(|e| err(&e))?;
        let alloc = std::env::var("HOSPES_JIT_REGALLOC").unwrap_or_else(|_| "backtracking".into());
        flags
            .set("regalloc_algorithm", &alloc)
            .map_err(|e| err(&e))?;
        // The verifier costs about a tenth of compile time; debug builds keep it.
        let verify = if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        };
        flags.set("enable_verifier", verify).map_err(|e| err(&e))?;
        let isa = cranelift_native::builder()
            .map_err(|e| err(&e))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| err(&e))?;
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        // Code goes into one region written and run through two mappings where the
        // host allows it (see `code_memory`), else into Cranelift's own pages. perf
        // names JIT code from its map only in anonymous memory: profiling
        // (`HOSPES_PERF_MAP`) uses Cranelift's pages.
        let memory = match std::env::var_os("HOSPES_PERF_MAP") {
            Some(_) => Err(std::io::Error::other("profiling")),
            None => DualMapped::new(code_memory::RESERVE),
        };
        let exec_offset = match memory {
            Ok(memory) => {
                let offset = memory.exec_offset();
                builder.memory_provider(Box::new(memory));
                offset
            }
            Err(e) => {
                log::debug!("JIT: code memory from Cranelift ({e})");
                0
            }
        };
        builder.symbol("helper_step", helper_step as *const u8);
        builder.symbol("helper_flags", flags::helper_flags as *const u8);
        builder.symbol("helper_cond", flags::helper_cond as *const u8);
        builder.symbol("helper_x87_read", ops::helper_x87_read as *const u8);
        builder.symbol("helper_x87_store", ops::helper_x87_store as *const u8);
        let mut module = JITModule::new(builder);
        let ptr = module.target_config().pointer_type();
        // Each helper: its name, then a pointer and `ints` i32 parameters, and whether
        // it returns an i32.
        let mut declare = |name: &str, ints: usize, ret: bool| {
            let mut sig = module.make_signature();
            sig.params.push(AbiParam::new(ptr));
            sig.params
                .extend(std::iter::repeat_n(AbiParam::new(types::I32), ints));
            if ret {
                sig.returns.push(AbiParam::new(types::I32));
            }
            module
                .declare_function(name, Linkage::Import, &sig)
                .map_err(|e| err(&e))
        };
        let helpers = HelperIds {
            step: declare("helper_step", 2, true)?,
            flags: declare("helper_flags", 4, false)?,
            cond: declare("helper_cond", 1, true)?,
            x87_read: declare("helper_x87_read", 5, true)?,
            x87_store: declare("helper_x87_store", 3, true)?,
        };
        let mut ctx = module.make_context();
        let mut builder_ctx = FunctionBuilderContext::new();
        let trampoline = build_trampoline(&mut module, &mut ctx, &mut builder_ctx, exec_offset)?;
        Ok(Translator {
            module,
            exec_offset,
            trampoline,
            helpers,
            ctx,
            builder_ctx,
            code_ranges: std::env::var_os("HOSPES_PERF_MAP").map(|_| Vec::new()),
        })
    }

    /// Frees all code compiled so far. No function of this translator may run again.
    pub fn free(self) {
        // SAFETY: the JIT drops every compiled entry before it frees the translator,
        // and compiled code only runs from those entries, inside `call`, which is not
        // running now (freeing happens between block runs).
        unsafe { self.module.free_memory() }
    }

    /// Compiles the instructions of `block`. Returns the code, its size in bytes and
    /// how many instructions it does natively.
    pub fn compile(
        &mut self,
        instrs: &[Instruction],
        block: BlockPlace,
    ) -> Result<(BlockFn, usize, usize), String> {
        let err = |e: &dyn std::fmt::Display| format!("compiling a block: {e}");
        let sig = block_signature(&self.module);
        let id = self
            .module
            .declare_anonymous_function(&sig)
            .map_err(|e| err(&e))?;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut native_count = 0;
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.builder_ctx);
            let mut import = |id| self.module.declare_func_in_func(id, b.func);
            let helpers = Helpers {
                step: import(self.helpers.step),
                flags: import(self.helpers.flags),
                cond: import(self.helpers.cond),
                x87_read: import(self.helpers.x87_read),
                x87_store: import(self.helpers.x87_store),
            };
            let block_sig = b.import_signature(block_signature(&self.module));
            let entry = b.create_block();
            let leave = b.create_block();
            b.set_cold_block(leave);
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let params = b.block_params(entry).to_vec();
            let (cpu, base, icount0) = (params[0], params[1], params[2]);
            let mut e = Emitter {
                b,
                cpu,
                base,
                icount0,
                helpers,
                leave,
                place: block,
                block_sig,
                frontend: self.module.target_config(),
                count: instrs.len(),
                assumed_mask: 0,
                regs: [None; 8],
                dirty: [false; 8],
                flags: None,
                sums: HashMap::new(),
                scaled: HashMap::new(),
                pages: Vec::new(),
                checked: HashSet::new(),
                interpreted: false,
                done: 0,
                ended: false,
                loop_head: None,
            };
            // The entry check of what the code assumes, emitted last (in a block the
            // entry jumps to) when it is known.
            let check = e.b.create_block();
            let body = e.b.create_block();
            e.b.ins().jump(check, &[]);
            e.b.switch_to_block(body);
            let natives: Vec<Option<Native>> = instrs.iter().map(classify).collect();
            // A block that branches back to its own start loops inside its code: the
            // body takes the count and the registers as parameters (see
            // `Emitter::loop_back`).
            let loops = match natives.last() {
                Some(Some(Native::Jcc { target, mask, .. } | Native::Jmp { target, mask })) => {
                    *mask == 0xFFFF_FFFF && *target as u32 == 0
                }
                _ => false,
            };
            let mut entry_args = Vec::new();
            if loops {
                e.icount0 = e.b.append_block_param(body, types::I64);
                entry_args.push(BlockArg::Value(icount0));
                for n in 0..8 {
                    e.regs[n] = Some(e.b.append_block_param(body, types::I32));
                }
                // The values may be newer than the state's after a loop.
                e.dirty = [true; 8];
                e.loop_head = Some(body);
            }
            let mut i = 0;
            while i < instrs.len() && !e.ended {
                e.b.set_srcloc(SourceLoc::new(i as u32));
                if let Some(native) = &natives[i] {
                    e.native(native, instrs, i);
                    native_count += 1;
                    i += 1;
                    continue;
                }
                // A run of instructions compiled code does not do: one helper call.
                let from = i;
                while i < instrs.len() && natives[i].is_none() {
                    i += 1;
                }
                e.interpret(instrs, from, i);
            }
            if !e.ended {
                let last = &instrs[instrs.len() - 1];
                e.exit((last.ip() + last.len() as u64) as i64);
            }
            e.b.switch_to_block(check);
            e.icount0 = icount0;
            (e.regs, e.dirty, e.flags) = ([None; 8], [false; 8], None);
            if loops {
                for n in 0..8 {
                    let v = e.reg32(n);
                    entry_args.push(BlockArg::Value(v));
                }
            }
            // The budget: the code runs whole or not at all (the run loop checked it
            // for the first block; a link only for its own).
            let after = e.b.ins().iadd_imm_u(icount0, instrs.len() as i64);
            let end = e.b.ins().load(types::I64, trusted(), cpu, TIER_END);
            let fits = e.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, after, end);
            let assumptions = e.b.create_block();
            let short = e.b.create_block();
            e.b.set_cold_block(short);
            e.b.ins().brif(fits, assumptions, &[], short, &[]);
            e.b.switch_to_block(short);
            // Nothing has run: the machine is as the block before left it.
            e.store_position(base, 0);
            e.leave_with(crate::EXIT_BUDGET);
            e.b.switch_to_block(assumptions);
            let mask = e.assumed_mask;
            if mask == 0 {
                e.b.ins().jump(body, &entry_args);
            } else {
                let now = e.b.ins().load(types::I32, trusted(), cpu, TIER_ASSUMED);
                let now = e.b.ins().band_imm_u(now, mask as i64);
                let want = (block.assumed & mask) as i64;
                let ok = e.b.ins().icmp_imm_u(IntCC::Equal, now, want);
                let otherwise = e.b.create_block();
                e.b.set_cold_block(otherwise);
                e.b.ins().brif(ok, body, &entry_args, otherwise, &[]);
                // Where the check fails, the interpreter runs the block, from the
                // machine as it was at entry.
                e.b.switch_to_block(otherwise);
                (e.regs, e.dirty, e.flags) = ([None; 8], [false; 8], None);
                e.icount0 = icount0;
                e.call_interpreter(0, instrs.len(), 0, 0);
                e.b.ins().jump(leave, &[]);
            }
            e.b.switch_to_block(leave);
            let stop = e.b.ins().iconst(types::I32, crate::EXIT_STOP as i64);
            e.b.ins().return_(&[stop]);
            e.b.seal_all_blocks();
            e.b.finalize(self.module.target_config());
        }
        // HOSPES_JIT_DUMP=<physical addresses in hex, comma-separated>: print those
        // blocks' instructions and host code (for working on code quality).
        let dump = std::env::var("HOSPES_JIT_DUMP").is_ok_and(|v| {
            v.split(',')
                .filter_map(|a| u64::from_str_radix(a.trim().trim_start_matches("0x"), 16).ok())
                .any(|a| a == block.phys)
        });
        self.ctx.set_disasm(dump);
        if let Err(e) = self.module.define_function(id, &mut self.ctx) {
            // The context must start empty for the next block, whatever happened.
            self.module.clear_context(&mut self.ctx);
            return Err(err(&e));
        }
        let compiled = self.ctx.compiled_code().ok_or("no code")?;
        if dump {
            for ins in instrs {
                eprintln!("{:08x} {ins}", block.phys + ins.ip());
            }
            eprintln!("{}", compiled.vcode.as_deref().unwrap_or(""));
        }
        if let Some(ranges) = &mut self.code_ranges {
            ranges.clear();
            ranges.extend(
                compiled
                    .buffer
                    .get_srclocs_sorted()
                    .iter()
                    .map(|r| CodeRange {
                        start: r.start,
                        end: r.end,
                        instruction: r.loc.bits(),
                    }),
            );
        }
        let pc_relative = self.exec_offset != 0 && has_pc_relative_reloc(compiled);
        let size = compiled.code_info().total_size as usize;
        self.module.clear_context(&mut self.ctx);
        if pc_relative {
            return Err("a PC-relative reference out of the block's code".into());
        }
        self.module.finalize_definitions().map_err(|e| err(&e))?;
        let code = self
            .module
            .get_finalized_function(id)
            .wrapping_add(self.exec_offset);
        if dump {
            // SAFETY: `code` is the start of the `size` bytes of code just finalized,
            // mapped readable (as well as executable) until the translator is freed.
            let bytes = unsafe { std::slice::from_raw_parts(code, size) };
            let mut decoder =
                iced_x86::Decoder::with_ip(64, bytes, code as u64, iced_x86::DecoderOptions::NONE);
            for ins in &mut decoder {
                eprintln!("  {:x} +{:x}: {ins}", ins.ip(), ins.ip() - code as u64);
            }
        }
        Ok((code, size, native_count))
    }
}

/// Where a block being compiled is: what its code needs to know to run on into the
/// blocks linked to it.
#[derive(Clone, Copy)]
pub struct BlockPlace {
    /// The address of the [`Block`] (which outlives its code).
    pub addr: usize,
    pub phys: u64,
    pub code32: bool,
    /// [`entry_assumptions`] when the block was found hot: accesses through the flat
    /// segments are compiled without segment checks, and the TLB table of that CPL is
    /// read, behind one check at entry.
    pub assumed: u32,
    /// The PC thunk the block's last instruction (a CALL) called when the block was
    /// found hot, which compiled code does in place while its bytes stay the same.
    pub pc_thunk: Option<PcThunk>,
    /// Count the hops out of the block in the context (for statistics).
    pub count_hops: bool,
}

/// A position-independent code thunk (`__x86.get_pc_thunk.*`): `MOV reg,[ESP]; RET`,
/// called at the start of nearly every function of 32-bit PIE code to learn its own
/// address. Compiled code does CALL + thunk + RET as one step: the return address is
/// pushed as by the CALL and also put in the register, ESP is back where it was, and
/// the code goes on after the CALL (three instructions counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcThunk {
    /// The register the thunk loads (not ESP).
    pub reg: usize,
    /// The thunk's four bytes, as a little-endian u32: compiled code compares them
    /// with the code at the target before doing the thunk in place.
    pub bytes: u32,
}

impl PcThunk {
    /// The thunk whose first four bytes (little-endian) are `bytes`, if they are one:
    /// 8B /r with ModRM mod=00 r/m=100 and SIB [ESP] (04+8*reg 24), then C3.
    pub fn from_bytes(bytes: u32) -> Option<PcThunk> {
        let [opcode, modrm, sib, ret] = bytes.to_le_bytes();
        let reg = (modrm >> 3 & 7) as usize;
        (opcode == 0x8B && modrm & 0xC7 == 0x04 && sib == 0x24 && ret == 0xC3 && reg != ESP)
            .then_some(PcThunk { reg, bytes })
    }

    /// The thunk that the near CALL ending a 32-bit block running at EIP `eip` calls,
    /// as the TLB and memory hold it now (None where the TLB does not hold the
    /// target's page: the block is not compiled with it in place).
    pub fn called_by(cpu: &Cpu, instrs: &[Instruction], eip: u64) -> Option<PcThunk> {
        let last = instrs.last()?;
        if last.mnemonic() != Mnemonic::Call
            || last.op0_kind() != iced_x86::OpKind::NearBranch32
            || entry_assumptions(cpu) & ASSUME_FLAT_CS == 0
        {
            return None;
        }
        let target = eip.wrapping_add(last.near_branch32() as u64) & 0xFFFF_FFFF;
        if target & (PAGE as u64 - 1) > PAGE as u64 - 4 {
            return None;
        }
        let phys = cpu.fetch_tlb_hit(target)?;
        PcThunk::from_bytes(cpu.mem.read_u32(phys))
    }
}

/// Whether compiled code refers to something outside itself by a PC-relative
/// distance: Cranelift computes those from where it writes the code, which is not where
/// the code runs (`code_memory`). Helpers are called through absolute addresses, so
/// none is expected; a block that has one is not used.
fn has_pc_relative_reloc(code: &cranelift_codegen::CompiledCode) -> bool {
    use cranelift_codegen::binemit::Reloc;
    code.buffer.relocs().iter().any(|r| {
        matches!(
            r.kind,
            Reloc::X86PCRel4 | Reloc::X86CallPCRel4 | Reloc::X86CallPLTRel4 | Reloc::X86GOTPCRel4
        )
    })
}

/// The signature of every block's code ([`BlockFn`]).
fn block_signature(module: &JITModule) -> Signature {
    let ptr = module.target_config().pointer_type();
    let mut sig = Signature::new(CallConv::Tail);
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I32));
    sig
}

/// Compiles the [`Trampoline`]: a function of the platform's C calling convention
/// that calls the block code it is given and returns its result.
fn build_trampoline(
    module: &mut JITModule,
    ctx: &mut cranelift_codegen::Context,
    builder_ctx: &mut FunctionBuilderContext,
    exec_offset: usize,
) -> Result<Trampoline, String> {
    let err = |e: &dyn std::fmt::Display| format!("setting up the JIT: {e}");
    // The block's parameters and result, then the code to call, in the C convention.
    let mut sig = block_signature(module);
    sig.call_conv = module.isa().default_call_conv();
    let ptr = module.target_config().pointer_type();
    sig.params.push(AbiParam::new(ptr));
    let id = module
        .declare_anonymous_function(&sig)
        .map_err(|e| err(&e))?;
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, builder_ctx);
        let callee = b.import_signature(block_signature(module));
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let call = b.ins().call_indirect(callee, p[3], &p[..3]);
        let exit = b.inst_results(call)[0];
        b.ins().return_(&[exit]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    module.define_function(id, ctx).map_err(|e| err(&e))?;
    module.clear_context(ctx);
    module.finalize_definitions().map_err(|e| err(&e))?;
    let code = module.get_finalized_function(id).wrapping_add(exec_offset);
    // SAFETY: `code` is the entry of the function just defined with exactly the
    // signature `Trampoline` declares (a pointer, two i64 and a pointer in, an i32
    // out, the platform's C calling convention), finalized and executable.
    Ok(unsafe { std::mem::transmute::<*const u8, Trampoline>(code) })
}

fn trusted() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Guest memory through the TLB: may be unaligned; never traps (the TLB only maps
/// pages inside guest memory).
fn guest() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Where the block a compiled block leaves for is found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// In the block's link `slot`; `same_page`: the new EIP is on the block's page at a
    /// fixed distance (links are made only where the physical distance is the same).
    Link { slot: usize, same_page: bool },
    /// In the JIT's jump cache (an indirect branch's target).
    Lookup,
}

/// A flat-segment access whose TLB check passed: `size` bytes at `root + offset`
/// (32-bit), at host address `host`.
#[derive(Clone, Copy)]
struct PageMemo {
    root: Value,
    offset: i64,
    size: u8,
    host: Value,
    /// Checked for writing (a writable page is readable too).
    writable: bool,
}

/// Accesses remembered in [`Emitter::pages`].
const PAGE_MEMOS: usize = 8;

/// Emits one block's code, keeping guest registers in SSA values between the points
/// where the interpreter needs them in memory.
struct Emitter<'a> {
    b: FunctionBuilder<'a>,
    /// The `Cpu` (its state at [`STATE`], its TLB at [`TLB_TABLES`]).
    cpu: Value,
    base: Value,
    /// The instruction count at entry.
    icount0: Value,
    helpers: Helpers,
    leave: cranelift_codegen::ir::Block,
    /// Where the block is, for running on into linked blocks.
    place: BlockPlace,
    /// The block's length in instructions.
    count: usize,
    /// The bits of [`BlockPlace::assumed`] the code relies on (checked once at entry).
    assumed_mask: u32,
    /// The signature of block code, for tail calls into linked blocks.
    block_sig: SigRef,
    /// For library calls (memset).
    frontend: cranelift_codegen::isa::TargetFrontendConfig,
    /// Each register's current 32-bit value, if held in SSA.
    regs: [Option<Value>; 8],
    /// Registers whose value in SSA is newer than the state's.
    dirty: [bool; 8],
    flags: Option<PendingFlags>,
    /// 32-bit values known as another value plus a constant (addresses from a base
    /// register and displacements, ESP after pushes and pops), by the value.
    sums: HashMap<Value, (Value, i64)>,
    /// `base + index << scale` already computed in this block.
    scaled: HashMap<(Option<Value>, Value, u32), Value>,
    /// Flat-segment accesses whose TLB check passed on the path compiled code is on
    /// (newest last): another access to the same address needs no check.
    pages: Vec<PageMemo>,
    /// Fast-path conditions known to hold (accesses [`Emitter::pages`] vouches for).
    checked: HashSet<Value>,
    /// The interpreter ran some of the block's instructions on the way here (not in a
    /// side exit): the TLB may have changed since entry.
    interpreted: bool,
    /// Instructions completed since entry.
    done: i64,
    /// The block's code has returned (a branch ended it).
    ended: bool,
    /// Where the block's instructions start, for a block that branches back to its
    /// own start: parameters the count there and the eight registers.
    loop_head: Option<cranelift_codegen::ir::Block>,
}

impl Emitter<'_> {
    fn iconst32(&mut self, v: u32) -> Value {
        self.b.ins().iconst(types::I32, v as i64)
    }

    fn reg32(&mut self, n: usize) -> Value {
        if let Some(v) = self.regs[n] {
            return v;
        }
        let v = self
            .b
            .ins()
            .load(types::I32, trusted(), self.cpu, GPR + n as i32 * 8);
        self.regs[n] = Some(v);
        v
    }

    /// `v` cut to an operand of `size` bytes (zero-extended to 32 bits).
    fn truncate(&mut self, v: Value, size: u8) -> Value {
        if size == 4 {
            v
        } else {
            self.b.ins().band_imm_u(v, mask(size) as i64)
        }
    }

    /// A register of any size, zero-extended to 32 bits.
    fn get(&mut self, g: Gpr) -> Value {
        let v = self.reg32(g.n);
        match (g.size, g.high) {
            (4, _) => v,
            (2, _) => self.b.ins().band_imm_u(v, 0xFFFF),
            (_, false) => self.b.ins().band_imm_u(v, 0xFF),
            (_, true) => {
                let x = self.b.ins().ushr_imm_u(v, 8);
                self.b.ins().band_imm_u(x, 0xFF)
            }
        }
    }

    /// Writes a register of any size (`v` holds the value in its low bits).
    fn set(&mut self, g: Gpr, v: Value) {
        let new = match (g.size, g.high) {
            (4, _) => v,
            (size, high) => {
                let old = self.reg32(g.n);
                let (m, shift) = match (size, high) {
                    (2, _) => (0xFFFFu32, 0),
                    (_, false) => (0xFF, 0),
                    _ => (0xFF00, 8),
                };
                let kept = self.b.ins().band_imm_u(old, (!m) as i64);
                let v = if shift > 0 {
                    self.b.ins().ishl_imm_u(v, shift)
                } else {
                    v
                };
                let low = self.b.ins().band_imm_u(v, m as i64);
                self.b.ins().bor(kept, low)
            }
        };
        self.regs[g.n] = Some(new);
        self.dirty[g.n] = true;
    }

    fn value(&mut self, o: &Operand) -> Value {
        match *o {
            Operand::Reg(g) => self.get(g),
            Operand::Imm(v) => self.iconst32(v),
            Operand::Mem(_) => unreachable!("memory operands are read through the TLB"),
        }
    }

    /// EIP of the instruction at `ip` in the block.
    fn eip_at(&mut self, ip: i64) -> Value {
        self.b.ins().iadd_imm_s(self.base, ip)
    }

    /// Stores everything held only in SSA (registers, lazy flags), EIP and the count of
    /// instructions done, so the interpreter sees the machine as it is at `eip`. Emits
    /// code only; the tracked state is unchanged.
    fn store_all(&mut self, eip: Value, done: i64) {
        self.store_registers();
        self.store_position(eip, done);
    }

    /// Stores the registers and flags held only in SSA. A register's state slot is 64
    /// bits wide, but a 32-bit CPU never sets the upper half (every writer stores a
    /// zero-extended 32-bit value): storing the low half keeps it so.
    fn store_registers(&mut self) {
        for n in 0..8 {
            if self.dirty[n] {
                let v = self.regs[n].expect("a dirty register is held");
                self.b
                    .ins()
                    .store(trusted(), v, self.cpu, GPR + n as i32 * 8);
            }
        }
        self.store_flags();
    }

    /// Stores EIP and the instruction count after `done` instructions.
    fn store_position(&mut self, eip: Value, done: i64) {
        self.b.ins().store(trusted(), eip, self.cpu, RIP);
        let count = self.b.ins().iadd_imm_s(self.icount0, done);
        self.b.ins().store(trusted(), count, self.cpu, ICOUNT);
    }

    /// Leaves the block for the instruction at `ip` (everything stored).
    fn exit(&mut self, ip: i64) {
        let eip = self.eip_at(ip);
        let same_page = self.in_page(ip);
        self.run_on(
            Next::Link { slot: 0, same_page },
            eip,
            crate::EXIT_FALLTHROUGH,
        );
    }

    /// Whether the instruction at `ip` (relative to the block, and reached without
    /// EIP wrapping) is on the block's page.
    fn in_page(&self, ip: i64) -> bool {
        (0..PAGE).contains(&((self.place.phys & (PAGE as u64 - 1)) as i64 + ip))
    }

    /// Whether the target of a branch (relative to the block, wrapped with `mask`) is
    /// on the block's page whatever EIP the block starts at: only where EIP wraps as
    /// the linear address does (at 4 GiB).
    fn branch_in_page(&self, target: u64, mask: u64) -> bool {
        mask == 0xFFFF_FFFF && self.in_page(target as u32 as i32 as i64)
    }

    /// Leaves the block for EIP `eip` (everything stored): runs on into the block
    /// found at `next` if the run loop would run it next (it is still valid and
    /// compiled, fits the budget and the CS limit, and is at the physical address EIP
    /// maps to), else returns `exit`. Nothing else can stop the run loop from going
    /// on: whatever needs it (an interrupt due, a trap, a mode change) comes from an
    /// instruction the interpreter ran, and that ends the block at once.
    fn run_on(&mut self, next: Next, eip: Value, exit: u32) {
        self.b.set_srcloc(SourceLoc::new(HOP));
        // The next block takes EIP and the count as parameters: they are stored only
        // where the code returns.
        self.store_registers();
        let fl = trusted();
        let back = self.b.create_block();
        self.b.set_cold_block(back);
        let require = |e: &mut Self, ok: Value| {
            let next = e.b.create_block();
            e.b.ins().brif(ok, next, &[], back, &[]);
            e.b.switch_to_block(next);
        };
        let lin = if self.flat_cs() {
            eip
        } else {
            let cs_base = self.b.ins().load(
                types::I32,
                fl,
                self.cpu,
                SEG + CS as i32 * SEG_SIZE + SEG_BASE,
            );
            let eip32 = self.b.ins().ireduce(types::I32, eip);
            let lin = self.b.ins().iadd(cs_base, eip32);
            self.b.ins().uextend(types::I64, lin)
        };
        let to = match next {
            Next::Link { slot, .. } => {
                let link = self.place.addr as i64 + BLOCK_LINK_ADDRS + slot as i64 * 8;
                let link = self.b.ins().iconst(types::I64, link);
                self.b.ins().load(types::I64, fl, link, 0)
            }
            Next::Lookup => {
                let table = self.b.ins().load(types::I64, fl, self.cpu, TIER_JUMP_CACHE);
                let hash = self.b.ins().ushr_imm_u(lin, 12);
                let hash = self.b.ins().bxor(hash, lin);
                let index = self.b.ins().band_imm_u(hash, JUMP_CACHE_ENTRIES as i64 - 1);
                let at = self.b.ins().ishl_imm_u(index, 3);
                let at = self.b.ins().iadd(table, at);
                self.b.ins().load(types::I64, fl, at, 0)
            }
        };
        // An empty link or entry holds `no_block()`, which reads as a block without
        // code: the checks below fail on it.
        if next == Next::Lookup {
            // Links are made in the mode they are followed in; the cache holds blocks
            // of any mode.
            let code32 = self.b.ins().uload8(types::I32, fl, to, BLOCK_CODE32);
            let same = self
                .b
                .ins()
                .icmp_imm_u(IntCC::Equal, code32, self.place.code32 as i64);
            require(self, same);
        }
        // Code in the block also says it is valid: a block leaving the cache loses it.
        let code = self.b.ins().load(types::I64, fl, to, BLOCK_CODE);
        let compiled =
            self.b
                .ins()
                .icmp_imm_u(IntCC::UnsignedGreaterThan, code, crate::QUEUED as i64);
        require(self, compiled);
        // The next block checks the budget for itself (it knows its length).
        // With a flat CS the block is inside the limit: its bytes are on one page, the
        // page the TLB check below (or the link's distance on this page) puts EIP on.
        let flat = self.flat_cs();
        if !flat || !self.place.code32 {
            let span = self.b.ins().load(types::I64, fl, to, BLOCK_SPAN);
            let past = self.b.ins().iadd(eip, span);
            if !flat {
                let last = self.b.ins().iadd_imm_s(past, -1);
                let in_limit = self.within_cs_limit(last);
                require(self, in_limit);
            }
            if !self.place.code32 {
                let no_wrap = self
                    .b
                    .ins()
                    .icmp_imm_u(IntCC::UnsignedLessThan, past, 0x1_0000);
                require(self, no_wrap);
            }
        }
        // The run loop's fetch: the TLB entry for the page of EIP (a miss leaves it
        // to the run loop, which walks the page tables and fills the TLB). Looked at
        // even on this block's page where the interpreter ran any of this block's
        // instructions (it may have evicted or refilled the entry), so what the TLB
        // holds never depends on the tier. Otherwise the entry is the one the fetch or
        // the hop into this block found, and the link's distance says the rest.
        let same_page = matches!(
            next,
            Next::Link {
                same_page: true,
                ..
            }
        );
        if !same_page || self.interpreted {
            let (entry, table) = self.tlb_entry(lin);
            let tag = self
                .b
                .ins()
                .load(types::I64, fl, entry, table + TLB_READ_TAG);
            let page = self.b.ins().band_imm_u(lin, !(PAGE - 1));
            let hit = self.b.ins().icmp(IntCC::Equal, tag, page);
            require(self, hit);
            let paddr = self.b.ins().load(types::I64, fl, entry, table + TLB_PADDR);
            let offset = self.b.ins().band_imm_u(lin, PAGE - 1);
            let phys = self.b.ins().bor(paddr, offset);
            let to_phys = self.b.ins().load(types::I64, fl, to, BLOCK_PHYS);
            let here = self.b.ins().icmp(IntCC::Equal, phys, to_phys);
            require(self, here);
        }
        if self.place.count_hops {
            let hctx = self.hctx();
            let chained = self.b.ins().load(types::I64, fl, hctx, CTX_CHAINED);
            let chained = self.b.ins().iadd_imm_u(chained, 1);
            self.b.ins().store(fl, chained, hctx, CTX_CHAINED);
        }
        let count = self.b.ins().iadd_imm_s(self.icount0, self.done);
        let args = [self.cpu, eip, count];
        self.b
            .ins()
            .return_call_indirect(self.block_sig, code, &args);
        self.b.switch_to_block(back);
        self.store_position(eip, self.done);
        self.leave_with(exit);
    }

    /// Emits a call of [`helper_step`] for instructions `from..to`, the first at `ip`,
    /// with everything stored first (`done` instructions counted). Returns its result:
    /// whether the compiled code must leave.
    fn call_interpreter(&mut self, from: usize, to: usize, ip: u64, done: i64) -> Value {
        let eip = self.eip_at(ip as i64);
        self.store_all(eip, done);
        self.publish_block();
        let from = self.b.ins().iconst(types::I32, from as i64);
        let to = self.b.ins().iconst(types::I32, to as i64);
        let hctx = self.hctx();
        let call = self.b.ins().call(self.helpers.step, &[hctx, from, to]);
        self.b.inst_results(call)[0]
    }

    /// Tells the helpers and the caller which block is running, and where: stored
    /// only before a helper that reads it is called and where the code returns (not
    /// at every hop).
    pub(super) fn publish_block(&mut self) {
        let fl = trusted();
        let addr = self.b.ins().iconst(types::I64, self.place.addr as i64);
        let hctx = self.hctx();
        self.b.ins().store(fl, addr, hctx, CTX_BLOCK);
        self.b.ins().store(fl, self.base, hctx, CTX_BASE);
    }

    /// The helper context (loaded where a helper or the caller needs it: it is not
    /// kept in a register).
    pub(super) fn hctx(&mut self) -> Value {
        self.b.ins().load(types::I64, trusted(), self.cpu, TIER_CTX)
    }

    /// Calls the interpreter for instructions `from..to`; afterwards nothing is assumed
    /// about registers or flags.
    fn interpret(&mut self, instrs: &[Instruction], from: usize, to: usize) {
        let must_leave = self.call_interpreter(from, to, instrs[from].ip(), self.done);
        self.regs = [None; 8];
        self.dirty = [false; 8];
        self.flags = None;
        // The interpreter may have changed the TLB.
        self.pages.clear();
        self.interpreted = true;
        let next = self.b.create_block();
        self.b.ins().brif(must_leave, self.leave, &[], next, &[]);
        self.b.switch_to_block(next);
        self.done += (to - from) as i64;
        // After a repeated string instruction, the count goes on from the state's (each
        // iteration counted).
        if instrs[from..to].iter().any(counts_iterations) {
            let count = self.b.ins().load(types::I64, trusted(), self.cpu, ICOUNT);
            self.icount0 = self.b.ins().iadd_imm_s(count, -self.done);
        }
    }

    /// `v + k` (32-bit, wrapping), remembered as such for [`Emitter::fast_address`].
    fn add_const(&mut self, v: Value, k: i64) -> Value {
        if k == 0 {
            return v;
        }
        let r = self.b.ins().iadd_imm_s(v, k);
        let (root, offset) = self.sum_of(v);
        self.sums.insert(r, (root, offset + k));
        r
    }

    /// `v` as a root value plus a constant.
    fn sum_of(&self, v: Value) -> (Value, i64) {
        self.sums.get(&v).copied().unwrap_or((v, 0))
    }

    /// Effective address (the offset in the segment) of a memory operand.
    fn ea(&mut self, m: &MemRef) -> Value {
        if !m.addr16 && (m.base.is_some() || m.index.is_some()) {
            let base = m.base.map(|n| self.reg32(n));
            let root = match (base, m.index) {
                (Some(base), None) => base,
                (_, Some((n, shift))) => {
                    let index = self.reg32(n);
                    match self.scaled.get(&(base, index, shift)) {
                        Some(&v) => v,
                        None => {
                            let scaled = self.b.ins().ishl_imm_u(index, shift as i64);
                            let v = match base {
                                Some(base) => self.b.ins().iadd(base, scaled),
                                None => scaled,
                            };
                            self.scaled.insert((base, index, shift), v);
                            v
                        }
                    }
                }
                (None, None) => unreachable!("a base or an index"),
            };
            return self.add_const(root, m.disp as i32 as i64);
        }
        let mut v = self.iconst32(m.disp);
        if let Some(n) = m.base {
            let size = if m.addr16 { 2 } else { 4 };
            let x = self.get(Gpr {
                n,
                size,
                high: false,
            });
            v = self.b.ins().iadd(v, x);
        }
        if let Some((n, shift)) = m.index {
            let size = if m.addr16 { 2 } else { 4 };
            let x = self.get(Gpr {
                n,
                size,
                high: false,
            });
            let x = self.b.ins().ishl_imm_u(x, shift as i64);
            v = self.b.ins().iadd(v, x);
        }
        if m.addr16 {
            v = self.b.ins().band_imm_u(v, 0xFFFF);
        }
        v
    }

    /// Whether segment `seg` is a present, writable, expand-up data segment (with the
    /// attribute bits `also` set as well), as an i8 0/1. Loaded at each use rather than
    /// kept in a register: an L1 hit costs no more than reloading a spilled value.
    fn segment_usable(&mut self, seg: usize, also: u16) -> Value {
        let at = SEG + seg as i32 * SEG_SIZE;
        let attr = self
            .b
            .ins()
            .uload16(types::I32, trusted(), self.cpu, at + SEG_ATTR);
        let attr = self.b.ins().band_imm_u(attr, (FAST_SEG_MASK | also) as i64);
        self.b
            .ins()
            .icmp_imm_u(IntCC::Equal, attr, (FAST_SEG_ATTR | also) as i64)
    }

    /// Segment `seg`'s limit (i64) and base (i32).
    fn segment_extent(&mut self, seg: usize) -> (Value, Value) {
        let at = SEG + seg as i32 * SEG_SIZE;
        let limit = self.b.ins().uload32(trusted(), self.cpu, at + SEG_LIMIT);
        // The low half: linear addresses are 32-bit.
        let base = self
            .b
            .ins()
            .load(types::I32, trusted(), self.cpu, at + SEG_BASE);
        (limit, base)
    }

    /// The TLB entry for linear address `lin` (an i64), slot `(lin >> 12) &
    /// (TLB_ENTRIES - 1)` of the table for the CPL: an address and the offset to add
    /// to a field's. The table is the one for the CPL the block was compiled at, which
    /// the entry check makes sure of (only the interpreter changes the CPL, and that
    /// ends the run of compiled code).
    fn tlb_entry(&mut self, lin: Value) -> (Value, i32) {
        self.assumed_mask |= ASSUME_USER;
        let table = if self.place.assumed & ASSUME_USER != 0 {
            TLB_TABLES + TLB_TABLE_SIZE
        } else {
            TLB_TABLES
        };
        let shift = TLB_ENTRY.trailing_zeros() as i64;
        let offset = self.b.ins().ushr_imm_u(lin, 12 - shift);
        let offset = self
            .b
            .ins()
            .band_imm_u(offset, (TLB_ENTRIES as i64 - 1) << shift);
        (self.b.ins().iadd(self.cpu, offset), table)
    }

    /// The TLB fast-path check for `size` bytes at `seg:off`: returns (hit, host address).
    /// A hit needs a present, writable, expand-up data segment (with the attribute bits
    /// `also` set as well) whose limit covers the access (the interpreter checks every
    /// other case), and a TLB entry for the page that allows this access kind, with the
    /// access inside the page.
    fn fast_address(
        &mut self,
        seg: usize,
        off: Value,
        size: u8,
        write: bool,
        also: u16,
    ) -> (Value, Value) {
        let (usable, lin) = if self.place.assumed & (1 << seg) != 0 {
            // Checked at entry; the linear address is the offset.
            self.assumed_mask |= 1 << seg;
            let lin = self.b.ins().uextend(types::I64, off);
            return self.flat_address(off, lin, size, write);
        } else {
            let seg_ok = self.segment_usable(seg, also);
            let (limit, seg_base) = self.segment_extent(seg);
            let off64 = self.b.ins().uextend(types::I64, off);
            let last = self.b.ins().iadd_imm_u(off64, size as i64 - 1);
            let in_limit = self
                .b
                .ins()
                .icmp(IntCC::UnsignedLessThanOrEqual, last, limit);
            // The linear address wraps at 4 GiB: a 32-bit add, zero-extended.
            let lin = self.b.ins().iadd(seg_base, off);
            let lin = self.b.ins().uextend(types::I64, lin);
            (Some(self.b.ins().band(seg_ok, in_limit)), lin)
        };
        self.tlb_check(usable, lin, size, write)
    }

    /// The fast path of an access through a flat segment at `off` (linear address
    /// `lin`): where an access at the same address (the same root value plus the same
    /// constant) of at least this size passed its TLB check on this path, its host
    /// address without a check; elsewhere the TLB check.
    fn flat_address(&mut self, off: Value, lin: Value, size: u8, write: bool) -> (Value, Value) {
        let (root, offset) = self.sum_of(off);
        let same = self.pages.iter().rev().find(|m| {
            m.root == root && m.offset == offset && m.size >= size && (m.writable || !write)
        });
        if let Some(m) = same {
            let host = m.host;
            let hit = self.b.ins().iconst(types::I8, 1);
            self.checked.insert(hit);
            return (hit, host);
        }
        let (hit, host) = self.tlb_check(None, lin, size, write);
        // Callers use the host address only where `hit` holds (else the interpreter
        // runs the rest of the block), so later accesses may rely on this one.
        if self.pages.len() == PAGE_MEMOS {
            self.pages.remove(0);
        }
        self.pages.push(PageMemo {
            root,
            offset,
            size,
            host,
            writable: write,
        });
        (hit, host)
    }

    /// The TLB check of `size` bytes at linear address `lin`, and `usable` (the
    /// segment checks) if given: returns (hit, host address).
    fn tlb_check(
        &mut self,
        usable: Option<Value>,
        lin: Value,
        size: u8,
        write: bool,
    ) -> (Value, Value) {
        let fl = trusted();
        let (entry, table) = self.tlb_entry(lin);
        let tag_at = if write { TLB_WRITE_TAG } else { TLB_READ_TAG };
        let tag = self.b.ins().load(types::I64, fl, entry, table + tag_at);
        // The page of the access's last byte: the tag (of the slot lin's page picks)
        // can equal it only if the access stays in lin's page, so one compare checks
        // both (a neighbouring page has another slot).
        let last_byte = match size {
            1 => lin,
            _ => self.b.ins().iadd_imm_u(lin, size as i64 - 1),
        };
        let page = self.b.ins().band_imm_u(last_byte, !0xFFFi64);
        let tag_ok = self.b.ins().icmp(IntCC::Equal, tag, page);
        let ok = match usable {
            Some(usable) => self.b.ins().band(usable, tag_ok),
            None => tag_ok,
        };
        let addend = self.b.ins().load(types::I64, fl, entry, table + TLB_ADDEND);
        let host = self.b.ins().iadd(lin, addend);
        (ok, host)
    }

    fn load_guest(&mut self, host: Value, size: u8) -> Value {
        match size {
            1 => self.b.ins().uload8(types::I32, guest(), host, 0),
            2 => self.b.ins().uload16(types::I32, guest(), host, 0),
            _ => self.b.ins().load(types::I32, guest(), host, 0),
        }
    }

    fn store_guest(&mut self, host: Value, v: Value, size: u8) {
        match size {
            1 => self.b.ins().istore8(guest(), v, host, 0),
            2 => self.b.ins().istore16(guest(), v, host, 0),
            _ => self.b.ins().store(guest(), v, host, 0),
        };
    }

    /// Runs a native instruction that accesses memory: `fast` emits the instruction on
    /// the TLB's fast path (given `hit`), and compiled code goes on from there. On a
    /// miss (faults, MMIO, pages holding code, segment checks) the interpreter runs the
    /// rest of the block from this instruction and the code returns: a side exit, so
    /// the paths never merge and the fast path keeps its registers in SSA values.
    fn with_slow_path(
        &mut self,
        ins: &Instruction,
        index: usize,
        hit: Value,
        fast: impl FnOnce(&mut Self),
    ) {
        if self.checked.contains(&hit) {
            fast(self);
            return;
        }
        let fast_blk = self.b.create_block();
        let slow_blk = self.b.create_block();
        self.b.set_cold_block(slow_blk);
        self.b.ins().brif(hit, fast_blk, &[], slow_blk, &[]);
        self.b.switch_to_block(slow_blk);
        self.call_interpreter(index, self.count, ins.ip(), self.done);
        self.b.ins().jump(self.leave, &[]);
        self.b.switch_to_block(fast_blk);
        fast(self);
    }

    /// ADD/ADC/SUB/SBB/logic of `a` and `bv`, recording the lazy flags; `carry` (0/1)
    /// is the carry in for ADC/SBB.
    fn alu(&mut self, op: Mnemonic, size: u8, a: Value, bv: Value, carry: Option<Value>) -> Value {
        let (r, flag_op) = match op {
            Mnemonic::Add => (self.b.ins().iadd(a, bv), FlagOp::Add),
            Mnemonic::Sub | Mnemonic::Cmp => (self.b.ins().isub(a, bv), FlagOp::Sub),
            Mnemonic::Adc => {
                let sum = self.b.ins().iadd(a, bv);
                let c = carry.expect("ADC has a carry in");
                (self.b.ins().iadd(sum, c), FlagOp::Add)
            }
            Mnemonic::Sbb => {
                let diff = self.b.ins().isub(a, bv);
                let c = carry.expect("SBB has a borrow in");
                (self.b.ins().isub(diff, c), FlagOp::Sub)
            }
            Mnemonic::And | Mnemonic::Test => (self.b.ins().band(a, bv), FlagOp::Logic),
            Mnemonic::Or => (self.b.ins().bor(a, bv), FlagOp::Logic),
            _ => (self.b.ins().bxor(a, bv), FlagOp::Logic),
        };
        let r = self.truncate(r, size);
        self.flags = Some(PendingFlags::Lazy {
            op: flag_op,
            size,
            a,
            b: bv,
            res: r,
            carry: carry.is_some(),
        });
        r
    }

    fn native(&mut self, n: &Native, instrs: &[Instruction], index: usize) {
        let ins = &instrs[index];
        let next_ip = (ins.ip() + ins.len() as u64) as i64;
        match *n {
            Native::Nop => {}
            Native::Lea { dst, ref mem } => {
                let v = self.ea(mem);
                self.set(dst, v);
            }
            Native::Mov {
                dst: Operand::Reg(d),
                src: Operand::Mem(ref m),
                size,
            } => {
                let off = self.ea(m);
                let (hit, host) = self.fast_address(m.seg, off, size, false, 0);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.load_guest(host, size);
                    e.set(d, v);
                });
            }
            Native::Mov {
                dst: Operand::Mem(ref m),
                ref src,
                size,
            } => {
                let off = self.ea(m);
                let v = self.value(src);
                let (hit, host) = self.fast_address(m.seg, off, size, true, 0);
                self.with_slow_path(ins, index, hit, |e| {
                    e.store_guest(host, v, size);
                });
            }
            Native::Mov {
                dst: Operand::Reg(d),
                ref src,
                ..
            } => {
                let v = self.value(src);
                self.set(d, v);
            }
            Native::Mov { .. } => unreachable!("MOV to an immediate"),
            Native::Movx {
                dst,
                ref src,
                src_size,
                signed,
            } => {
                let extend = |e: &mut Self, v: Value| -> Value {
                    if !signed {
                        return v;
                    }
                    let narrow = if src_size == 1 { types::I8 } else { types::I16 };
                    let t = e.b.ins().ireduce(narrow, v);
                    let w = e.b.ins().sextend(types::I32, t);
                    if dst.size == 2 {
                        e.b.ins().band_imm_u(w, 0xFFFF)
                    } else {
                        w
                    }
                };
                match *src {
                    Operand::Mem(ref m) => {
                        let off = self.ea(m);
                        let (hit, host) = self.fast_address(m.seg, off, src_size, false, 0);
                        self.with_slow_path(ins, index, hit, |e| {
                            let v = e.load_guest(host, src_size);
                            let v = extend(e, v);
                            e.set(dst, v);
                        });
                    }
                    _ => {
                        let v = self.value(src);
                        let v = extend(self, v);
                        self.set(dst, v);
                    }
                }
            }
            Native::Alu {
                op,
                ref dst,
                ref src,
                size,
            } => {
                let writes = !matches!(op, Mnemonic::Cmp | Mnemonic::Test);
                let carry = self.carry_in(op);
                match (dst, src) {
                    (Operand::Reg(d), Operand::Mem(m)) => {
                        let d = *d;
                        let off = self.ea(m);
                        let (hit, host) = self.fast_address(m.seg, off, size, false, 0);
                        self.with_slow_path(ins, index, hit, |e| {
                            let b = e.load_guest(host, size);
                            let a = e.get(d);
                            let r = e.alu(op, size, a, b, carry);
                            if writes {
                                e.set(d, r);
                            }
                        });
                    }
                    (Operand::Mem(m), src) => {
                        let off = self.ea(m);
                        let b = self.value(src);
                        let (hit, host) = self.fast_address(m.seg, off, size, writes, 0);
                        self.with_slow_path(ins, index, hit, |e| {
                            let a = e.load_guest(host, size);
                            let r = e.alu(op, size, a, b, carry);
                            if writes {
                                e.store_guest(host, r, size);
                            }
                        });
                    }
                    (Operand::Reg(d), src) => {
                        let d = *d;
                        let a = self.get(d);
                        let b = self.value(src);
                        let r = self.alu(op, size, a, b, carry);
                        if writes {
                            self.set(d, r);
                        }
                    }
                    _ => unreachable!("ALU destination is a register or memory"),
                }
            }
            Native::Push {
                src: Operand::Mem(ref m),
                size,
            } => {
                // The operand's address comes from ESP before the push.
                let off = self.ea(m);
                let (read_ok, from) = self.fast_address(m.seg, off, size, false, 0);
                let esp = self.reg32(ESP);
                let new_esp = self.add_const(esp, -(size as i64));
                let (write_ok, to) = self.fast_stack(new_esp, size, true);
                let hit = self.b.ins().band(read_ok, write_ok);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.load_guest(from, size);
                    e.store_guest(to, v, size);
                    e.set(Gpr::full(ESP), new_esp);
                });
            }
            Native::Push { ref src, size } => {
                let v = self.value(src);
                let esp = self.reg32(ESP);
                let new_esp = self.add_const(esp, -(size as i64));
                let (hit, host) = self.fast_stack(new_esp, size, true);
                self.with_slow_path(ins, index, hit, |e| {
                    e.store_guest(host, v, size);
                    e.set(Gpr::full(ESP), new_esp);
                });
            }
            Native::Pop { dst } => {
                let esp = self.reg32(ESP);
                let (hit, host) = self.fast_stack(esp, dst.size, false);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.load_guest(host, dst.size);
                    let esp = e.reg32(ESP);
                    let new_esp = e.add_const(esp, dst.size as i64);
                    e.set(Gpr::full(ESP), new_esp);
                    e.set(dst, v);
                });
            }
            Native::Jmp { target, mask } => {
                self.done += 1;
                self.branch(ins, index, None, target, mask, next_ip);
                return;
            }
            Native::Jcc { cc, target, mask } => {
                let taken = self.condition(cc);
                self.done += 1;
                self.branch(ins, index, Some(taken), target, mask, next_ip);
                return;
            }
            Native::Call { target } => {
                self.call(ins, index, target, next_ip);
                return;
            }
            Native::Ret { extra } => {
                self.ret(ins, index, extra);
                return;
            }
            Native::JmpIndirect { ref src } => {
                self.jmp_indirect(ins, index, src);
                return;
            }
            Native::IncDec { ref dst, size, inc } => self.inc_dec(ins, index, dst, size, inc),
            Native::String { op, size, seg } => self.string(ins, index, op, size, seg),
            Native::RepStosb if self.place.assumed & (1 << ES) == 0 => {
                // ES is not known to be flat here: the interpreter's, and on.
                self.interpret(instrs, index, index + 1);
                return;
            }
            Native::RepStosb => self.rep_stosb(ins, index),
            Native::Div { ref src } => self.div(ins, index, src),
            Native::Cmpxchg { ref dst, src } => self.cmpxchg(ins, index, dst, src),
            Native::Cli => self.cli(ins, index),
            Native::Sahf => self.sahf(),
            Native::FnstswAx => self.fnstsw_ax(ins, index),
            Native::Fnstcw { ref mem } => self.fnstcw(ins, index, mem),
            Native::Fldcw { ref mem } => self.fldcw(ins, index, mem),
            Native::X87 {
                ref mem,
                size,
                store,
            } => self.x87(ins, index, mem, size, store),
            Native::CallIndirect { ref src } => {
                self.call_indirect(ins, index, src, next_ip);
                return;
            }
            Native::Neg { dst } => {
                let a = self.get(dst);
                let zero = self.iconst32(0);
                let r = self.b.ins().isub(zero, a);
                let r = self.truncate(r, dst.size);
                self.set(dst, r);
                self.flags = Some(PendingFlags::Lazy {
                    op: FlagOp::Sub,
                    size: dst.size,
                    a: zero,
                    b: a,
                    res: r,
                    carry: false,
                });
            }
            Native::Not { dst } => {
                let a = self.get(dst);
                let r = self.b.ins().bnot(a);
                self.set(dst, r);
            }
            Native::Shift { op, dst, count } => self.shift(op, dst, count),
            Native::Imul { dst, ref a, ref b } => self.imul(ins, index, dst, a, b),
            Native::Setcc { cc, dst } => {
                let c = self.condition(cc);
                let v = self.b.ins().uextend(types::I32, c);
                self.set(dst, v);
            }
            Native::Cmovcc { cc, dst, ref src } => {
                let c = self.condition(cc);
                let old = self.get(dst);
                // The source is read (and may fault) whatever the condition.
                let v = match *src {
                    Operand::Mem(ref m) => {
                        let off = self.ea(m);
                        let (hit, host) = self.fast_address(m.seg, off, dst.size, false, 0);
                        // On the slow path the interpreter does the whole CMOV.
                        self.with_slow_path(ins, index, hit, |e| {
                            let v = e.load_guest(host, dst.size);
                            let v = e.b.ins().select(c, v, old);
                            e.set(dst, v);
                        });
                        self.done += 1;
                        return;
                    }
                    _ => self.value(src),
                };
                let v = self.b.ins().select(c, v, old);
                self.set(dst, v);
            }
            Native::Xchg { a, b } => {
                let va = self.get(a);
                let vb = self.get(b);
                self.set(a, vb);
                self.set(b, va);
            }
            Native::Cdq => {
                let eax = self.reg32(EAX);
                let sign = self.b.ins().sshr_imm_u(eax, 31);
                self.set(Gpr::full(EDX), sign);
            }
            Native::Cwde => {
                let eax = self.reg32(EAX);
                let ax = self.b.ins().ireduce(types::I16, eax);
                let v = self.b.ins().sextend(types::I32, ax);
                self.set(Gpr::full(EAX), v);
            }
            Native::Bt { ref src, size, bit } => {
                // The flags before are kept but CF: the slow path's interpreter starts
                // from them in the state.
                if matches!(src, Operand::Mem(_)) {
                    self.store_flags();
                }
                let bt = |e: &mut Self, v: Value| {
                    let x = e.b.ins().ushr_imm_u(v, bit as i64);
                    let cf = e.b.ins().band_imm_u(x, 1);
                    e.bit_test_flags(cf, size);
                };
                match *src {
                    Operand::Mem(ref m) => {
                        let off = self.ea(m);
                        let (hit, host) = self.fast_address(m.seg, off, size, false, 0);
                        self.with_slow_path(ins, index, hit, |e| {
                            let v = e.load_guest(host, size);
                            bt(e, v);
                        });
                    }
                    _ => {
                        let v = self.value(src);
                        bt(self, v);
                    }
                }
            }
            Native::Bswap { dst } => {
                let v = self.get(dst);
                let r = self.b.ins().bswap(v);
                self.set(dst, r);
            }
            Native::Rdtsc => {
                // #GP when CR4.TSD forbids it (protected mode, CPL above 0): the
                // interpreter's to raise.
                let cr4 = self.b.ins().load(types::I64, trusted(), self.cpu, CR4);
                let cr0 = self.b.ins().load(types::I64, trusted(), self.cpu, CR0);
                let cpl = self.b.ins().uload8(types::I64, trusted(), self.cpu, CPL);
                // Each condition as a 0/1 truth value (the bits sit at different
                // positions, so masking them against each other would give 0).
                let tsd = self.b.ins().band_imm_u(cr4, CR4_TSD as i64);
                let tsd = self.b.ins().icmp_imm_u(IntCC::NotEqual, tsd, 0);
                let pe = self.b.ins().band_imm_u(cr0, CR0_PE as i64);
                let pe = self.b.ins().icmp_imm_u(IntCC::NotEqual, pe, 0);
                let user = self.b.ins().icmp_imm_u(IntCC::NotEqual, cpl, 0);
                let forbidden = self.b.ins().band(tsd, pe);
                let forbidden = self.b.ins().band(forbidden, user);
                let allowed = self.b.ins().icmp_imm_u(IntCC::Equal, forbidden, 0);
                self.with_slow_path(ins, index, allowed, |e| {
                    // The count before this instruction retires, as `Cpu::tsc` reads it.
                    let offset = e.b.ins().load(types::I64, trusted(), e.cpu, TSC_OFFSET);
                    let now = e.b.ins().iadd_imm_s(e.icount0, e.done);
                    let tsc = e.b.ins().iadd(now, offset);
                    let low = e.b.ins().ireduce(types::I32, tsc);
                    let high = e.b.ins().ushr_imm_u(tsc, 32);
                    let high = e.b.ins().ireduce(types::I32, high);
                    e.set(Gpr::full(EAX), low);
                    e.set(Gpr::full(EDX), high);
                });
            }
            Native::Leave => {
                let ebp = self.reg32(EBP);
                let (hit, host) = self.fast_stack(ebp, 4, false);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.load_guest(host, 4);
                    let esp = e.add_const(ebp, 4);
                    e.set(Gpr::full(ESP), esp);
                    e.set(Gpr::full(EBP), v);
                });
            }
        }
        self.done += 1;
    }

    /// IMUL dst, a, b (two- and three-operand forms): the low half, with the flags
    /// deferred (CF = OF = the product does not fit).
    fn imul(&mut self, ins: &Instruction, index: usize, dst: Gpr, a: &Operand, b: &Operand) {
        let size = dst.size;
        let mul = |e: &mut Self, a: Value, b: Value| {
            let wide = |e: &mut Self, v: Value| {
                let v = if size == 2 {
                    let t = e.b.ins().ireduce(types::I16, v);
                    e.b.ins().sextend(types::I32, t)
                } else {
                    v
                };
                e.b.ins().sextend(types::I64, v)
            };
            let (wa, wb) = (wide(e, a), wide(e, b));
            // The 64-bit product only serves the overflow flag: Cranelift emits it only
            // if the flags are stored.
            let full = e.b.ins().imul(wa, wb);
            let low = e.b.ins().imul(a, b);
            let low = e.truncate(low, size);
            let back = wide(e, low);
            let overflow = e.b.ins().icmp(IntCC::NotEqual, back, full);
            let overflow = e.b.ins().uextend(types::I32, overflow);
            e.set(dst, low);
            e.flags = Some(PendingFlags::Deferred {
                kind: DEFERRED_MUL,
                size,
                a: low,
                b: overflow,
            });
        };
        let bv = self.value(b);
        match *a {
            Operand::Mem(ref m) => {
                let off = self.ea(m);
                let (hit, host) = self.fast_address(m.seg, off, size, false, 0);
                self.with_slow_path(ins, index, hit, |e| {
                    let av = e.load_guest(host, size);
                    mul(e, av, bv);
                });
            }
            _ => {
                let av = self.value(a);
                mul(self, av, bv);
            }
        }
    }

    /// A near CALL: pushes the return address on the stack's fast path and leaves for
    /// the target (the interpreter does the whole CALL on the slow path, or faults).
    fn call(&mut self, ins: &Instruction, index: usize, target: u64, next_ip: i64) {
        let ret = self.eip_at(next_ip);
        let ret = self.b.ins().ireduce(types::I32, ret);
        let esp = self.reg32(ESP);
        let new_esp = self.add_const(esp, -4);
        let (hit, host) = self.fast_stack(new_esp, 4, true);
        let t = self.target_eip(target, 0xFFFF_FFFF);
        let in_limit = self.within_cs_limit(t);
        let hit = self.b.ins().band(hit, in_limit);
        self.with_slow_path(ins, index, hit, |e| {
            e.store_guest(host, ret, 4);
            e.set(Gpr::full(ESP), new_esp);
        });
        self.done += 1;
        if let Some(thunk) = self.place.pc_thunk {
            if self.flat_cs() {
                self.pc_thunk_in_place(thunk, t, esp, ret, next_ip);
            }
        }
        let same_page = self.branch_in_page(target, 0xFFFF_FFFF);
        self.run_on(Next::Link { slot: 1, same_page }, t, crate::EXIT_TAKEN);
    }

    /// After a CALL to `t` pushed `ret` (ESP was `esp`): where the code at `t` is still
    /// `thunk` (its page in the TLB, as the run loop's fetch needs) and the budget
    /// holds the thunk's two instructions, does them (the register gets `ret`, ESP is
    /// back to `esp`) and leaves for the instruction after the CALL; else goes on to
    /// the CALL's own exit.
    fn pc_thunk_in_place(
        &mut self,
        thunk: PcThunk,
        t: Value,
        esp: Value,
        ret: Value,
        next_ip: i64,
    ) {
        // The run loop would fetch the thunk through the TLB (a read hit).
        let (mapped, host) = self.tlb_check(None, t, 4, false);
        let compare = self.b.create_block();
        let decided = self.b.create_block();
        let in_place = self.b.append_block_param(decided, types::I8);
        let no = self.b.ins().iconst(types::I8, 0);
        self.b
            .ins()
            .brif(mapped, compare, &[], decided, &[no.into()]);
        self.b.switch_to_block(compare);
        let bytes = self.b.ins().load(types::I32, guest(), host, 0);
        let same = self
            .b
            .ins()
            .icmp_imm_u(IntCC::Equal, bytes, thunk.bytes as i64);
        let after = self.b.ins().iadd_imm_s(self.icount0, self.done + 2);
        let end = self.b.ins().load(types::I64, trusted(), self.cpu, TIER_END);
        let fits = self
            .b
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, after, end);
        let both = self.b.ins().band(same, fits);
        self.b.ins().jump(decided, &[both.into()]);
        self.b.switch_to_block(decided);
        let thunk_blk = self.b.create_block();
        let call_blk = self.b.create_block();
        self.b.ins().brif(in_place, thunk_blk, &[], call_blk, &[]);
        self.b.switch_to_block(thunk_blk);
        let (regs, dirty) = (self.regs, self.dirty);
        self.set(Gpr::full(ESP), esp);
        self.set(Gpr::full(thunk.reg), ret);
        self.done += 2;
        self.exit(next_ip);
        self.done -= 2;
        (self.regs, self.dirty) = (regs, dirty);
        self.b.switch_to_block(call_blk);
    }

    /// A near RET: pops the return address on the stack's fast path and leaves for it.
    fn ret(&mut self, ins: &Instruction, index: usize, extra: u32) {
        let esp = self.reg32(ESP);
        let (hit, host) = self.fast_stack(esp, 4, false);
        // Loaded only on the fast path; the slow path's interpreter does the whole RET.
        let mut target = None;
        self.with_slow_path(ins, index, hit, |e| {
            target = Some(e.load_guest(host, 4));
        });
        let target = target.expect("the fast path loads the target");
        let target = self.b.ins().uextend(types::I64, target);
        self.unless_beyond_cs_limit(ins, index, target, self.done);
        let new_esp = self.add_const(esp, 4 + extra as i64);
        self.set(Gpr::full(ESP), new_esp);
        self.done += 1;
        self.run_on(Next::Lookup, target, crate::EXIT_INDIRECT);
    }

    /// A near JMP to a register or memory operand: leaves for the target, found in the
    /// jump cache (the interpreter does the JMP on the slow path, or faults).
    fn jmp_indirect(&mut self, ins: &Instruction, index: usize, src: &Operand) {
        let target = self.read32(ins, index, src);
        let target = self.b.ins().uextend(types::I64, target);
        self.unless_beyond_cs_limit(ins, index, target, self.done);
        self.done += 1;
        self.run_on(Next::Lookup, target, crate::EXIT_INDIRECT);
    }

    /// The carry in of ADC/SBB (None for the other ALU operations).
    fn carry_in(&mut self, op: Mnemonic) -> Option<Value> {
        matches!(op, Mnemonic::Adc | Mnemonic::Sbb).then(|| self.carry_flag())
    }

    fn inc_dec(&mut self, ins: &Instruction, index: usize, dst: &Operand, size: u8, inc: bool) {
        let op = if inc { FlagOp::Inc } else { FlagOp::Dec };
        let apply = |e: &mut Self, a: Value| -> Value {
            let r = if inc {
                e.b.ins().iadd_imm_u(a, 1)
            } else {
                e.b.ins().iadd_imm_s(a, -1)
            };
            let r = e.truncate(r, size);
            // CF is kept (in `bits`), as `Flags::set_lazy` does for INC/DEC.
            e.keep_carry();
            let one = e.iconst32(1);
            e.flags = Some(PendingFlags::Lazy {
                op,
                size,
                a,
                b: one,
                res: r,
                carry: false,
            });
            r
        };
        match *dst {
            Operand::Reg(d) => {
                let a = self.get(d);
                let r = apply(self, a);
                self.set(d, r);
            }
            Operand::Mem(ref m) => {
                // The carry kept must be known before the paths split: the slow path
                // keeps it itself, from the stored flags.
                if !matches!(self.flags, Some(PendingFlags::Lazy { .. })) {
                    self.flush_flags();
                }
                let off = self.ea(m);
                let (hit, host) = self.fast_address(m.seg, off, size, true, 0);
                self.with_slow_path(ins, index, hit, |e| {
                    let a = e.load_guest(host, size);
                    let r = apply(e, a);
                    e.store_guest(host, r, size);
                });
            }
            Operand::Imm(_) => unreachable!("INC/DEC of an immediate"),
        }
    }

    /// Shifts and rotates of a register. The flags are deferred: the interpreter's code
    /// computes them only if they are stored.
    fn shift(&mut self, op: Mnemonic, dst: Gpr, count: Count) {
        let size = dst.size;
        let bits = size as i64 * 8;
        let a = self.get(dst);
        let (count, from_cl) = match count {
            Count::Imm(0) => return,
            Count::Imm(c) => (self.iconst32(c), false),
            Count::Cl => {
                let ecx = self.reg32(ECX);
                (self.b.ins().band_imm_u(ecx, 0x1F), true)
            }
        };
        // A rotate keeps SF/ZF/AF/PF, and a count of 0 (from CL) keeps everything: the
        // flags before must be in the state for the deferred computation to start from.
        // After another rotate they already are: that one made sure of it, and changed
        // only CF and OF, which this one (its count known nonzero) sets.
        let after_rotate = matches!(
            self.flags,
            Some(PendingFlags::Deferred { kind, .. }) if is_rotate(kind)
        );
        if from_cl || (keeps_old_flags(op) && !after_rotate) {
            self.flush_flags();
        }
        let r = match op {
            Mnemonic::Shl => self.b.ins().ishl(a, count),
            Mnemonic::Shr => self.b.ins().ushr(a, count),
            Mnemonic::Sar => {
                let v = match size {
                    1 => {
                        let t = self.b.ins().ireduce(types::I8, a);
                        self.b.ins().sextend(types::I32, t)
                    }
                    2 => {
                        let t = self.b.ins().ireduce(types::I16, a);
                        self.b.ins().sextend(types::I32, t)
                    }
                    _ => a,
                };
                self.b.ins().sshr(v, count)
            }
            _ if size == 4 => {
                if op == Mnemonic::Rol {
                    self.b.ins().rotl(a, count)
                } else {
                    self.b.ins().rotr(a, count)
                }
            }
            _ => {
                // (a << c) | (a >> (bits - c)) within `bits`, c = count mod bits.
                let c = self.b.ins().band_imm_u(count, bits - 1);
                let bits_v = self.iconst32(bits as u32);
                let back = self.b.ins().isub(bits_v, c);
                let (l, r) = if op == Mnemonic::Rol {
                    (c, back)
                } else {
                    (back, c)
                };
                let hi = self.b.ins().ishl(a, l);
                let lo = self.b.ins().ushr(a, r);
                self.b.ins().bor(hi, lo)
            }
        };
        let r = self.truncate(r, size);
        self.set(dst, r);
        let lazy = match op {
            Mnemonic::Shl => Some(FlagOp::Shl),
            Mnemonic::Shr => Some(FlagOp::Shr),
            Mnemonic::Sar => Some(FlagOp::Sar),
            _ => None,
        };
        self.flags = Some(match lazy {
            // A shift by a count known to be nonzero records its operands as the
            // interpreter does (`Flags::arith` derives the flags).
            Some(op) if !from_cl => PendingFlags::Lazy {
                op,
                size,
                a,
                b: count,
                res: r,
                carry: false,
            },
            // Rotates keep some flags, and a count of 0 keeps them all: the
            // interpreter's code computes them when they are stored.
            _ => PendingFlags::Deferred {
                kind: deferred_shift(op),
                size,
                a,
                b: count,
            },
        });
    }

    /// The stack fast path: 32-bit stack segments only (SS.B set).
    fn fast_stack(&mut self, esp: Value, size: u8, write: bool) -> (Value, Value) {
        self.fast_address(SS, esp, size, write, ATTR_DB)
    }

    /// Ends the block at a near JMP or Jcc (already counted in `done`): EIP becomes the
    /// target when `taken` (always for JMP), else the next instruction. A target beyond
    /// the CS limit is the interpreter's to fault on.
    fn branch(
        &mut self,
        ins: &Instruction,
        index: usize,
        taken: Option<Value>,
        target: u64,
        mask: u64,
        next_ip: i64,
    ) {
        let target_blk = self.b.create_block();
        if let Some(taken) = taken {
            let fall = self.b.create_block();
            self.b.ins().brif(taken, target_blk, &[], fall, &[]);
            self.b.switch_to_block(fall);
            self.exit(next_ip);
        } else {
            self.b.ins().jump(target_blk, &[]);
        }
        self.b.switch_to_block(target_blk);
        if self.branch_in_page(target, mask) && target as u32 == 0 {
            self.loop_back();
        }
        let t = self.target_eip(target, mask);
        // The branch is already counted in `done`; on a fault it is not.
        self.unless_beyond_cs_limit(ins, index, t, self.done - 1);
        let same_page = self.branch_in_page(target, mask);
        self.run_on(Next::Link { slot: 1, same_page }, t, crate::EXIT_TAKEN);
    }

    /// Goes on where `target` (the 32-bit EIP a near transfer leads to, an i64) is
    /// inside the CS limit; beyond it the interpreter runs (and faults on) the
    /// instruction, with `done` instructions counted before it.
    fn unless_beyond_cs_limit(
        &mut self,
        ins: &Instruction,
        index: usize,
        target: Value,
        done: i64,
    ) {
        if self.flat_cs() {
            return;
        }
        let in_limit = self.within_cs_limit(target);
        let go = self.b.create_block();
        let fault = self.b.create_block();
        self.b.set_cold_block(fault);
        self.b.ins().brif(in_limit, go, &[], fault, &[]);
        self.b.switch_to_block(fault);
        self.call_interpreter(index, index + 1, ins.ip(), done);
        self.b.ins().jump(self.leave, &[]);
        self.b.switch_to_block(go);
    }

    /// At a branch back to the block's own start: runs the block again inside its code,
    /// with the registers in SSA values, if it fits the budget and no instruction on
    /// the way was the interpreter's (which may have changed the TLB the run loop's
    /// fetch would look at, or ended the block). Nothing else needs checking: the
    /// block is at the same EIP in the same mode, and only the interpreter writes to
    /// pages holding code. Otherwise goes on to leave the block as any branch does.
    fn loop_back(&mut self) {
        let Some(head) = self.loop_head.filter(|_| !self.interpreted) else {
            return;
        };
        let again = self.b.create_block();
        let leave = self.b.create_block();
        let count = self.b.ins().iadd_imm_s(self.icount0, self.done);
        let after = self.b.ins().iadd_imm_s(count, self.count as i64);
        let end = self.b.ins().load(types::I64, trusted(), self.cpu, TIER_END);
        let fits = self
            .b
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, after, end);
        self.b.ins().brif(fits, again, &[], leave, &[]);
        self.b.switch_to_block(again);
        self.store_flags();
        let mut args = vec![BlockArg::Value(count)];
        for n in 0..8 {
            let v = self.reg32(n);
            args.push(BlockArg::Value(v));
        }
        self.b.ins().jump(head, &args);
        self.b.switch_to_block(leave);
    }

    /// EIP of a branch target (relative to the block), wrapped to the operand size.
    fn target_eip(&mut self, target: u64, mask: u64) -> Value {
        let t = self.b.ins().iadd_imm_u(self.base, target as i64);
        if mask == 0xFFFF_FFFF {
            // Zero-extending the low half: one register move (an AND with the mask
            // would read it from memory).
            let low = self.b.ins().ireduce(types::I32, t);
            return self.b.ins().uextend(types::I64, low);
        }
        self.b.ins().band_imm_u(t, mask as i64)
    }

    /// Whether CS is flat where the block runs (checked at entry).
    fn flat_cs(&mut self) -> bool {
        let flat = self.place.assumed & ASSUME_FLAT_CS != 0;
        if flat {
            self.assumed_mask |= ASSUME_FLAT_CS;
        }
        flat
    }

    /// Whether EIP `t` (an i64) is inside the CS limit.
    fn within_cs_limit(&mut self, t: Value) -> Value {
        if self.flat_cs() {
            return self
                .b
                .ins()
                .icmp_imm_u(IntCC::UnsignedLessThanOrEqual, t, 0xFFFF_FFFF);
        }
        let limit =
            self.b
                .ins()
                .uload32(trusted(), self.cpu, SEG + CS as i32 * SEG_SIZE + SEG_LIMIT);
        self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, t, limit)
    }

    /// Returns `code` (one of the `EXIT_*` codes); everything is stored.
    fn leave_with(&mut self, code: u32) {
        self.publish_block();
        let v = self.iconst32(code);
        self.b.ins().return_(&[v]);
        self.ended = true;
    }
}
