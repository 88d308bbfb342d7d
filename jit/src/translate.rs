//! One decoded block to one Cranelift function.
//!
//! The function is `fn(state, ctx, base) -> u32`: `state` points at the CPU's
//! architectural state, `ctx` at a [`HelperCtx`] for the helpers, `base` is EIP at the
//! block's first instruction (blocks are decoded with IPs relative to their start). It
//! runs the block's instructions in order. Those it knows (register moves, ALU
//! operations on registers and immediates with lazy flags, LEA, NOP) it does itself,
//! reading and writing the state in memory; every other instruction is a call to
//! [`helper_step`], which runs the interpreter's implementation of it. A helper that
//! reports the straight-line path left (a taken branch, an exception, an instruction
//! after which the block must end) makes the function return at once.
//!
//! Instruction count and EIP are written back lazily: before each helper call (which
//! expects EIP at its instruction) and at the end.

use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use hospes_cpu::flags::{FlagOp, Flags, TF};
use hospes_cpu::mem::Bus;
use hospes_cpu::state::CpuState;
use hospes_cpu::Cpu;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use std::mem::offset_of;

/// Compiled code for one block.
pub type BlockFn = unsafe extern "C" fn(*mut CpuState, *mut HelperCtx<'static>, u64) -> u32;

/// What helpers need that compiled code does not touch.
#[repr(C)]
pub struct HelperCtx<'a> {
    cpu: *mut Cpu,
    bus: *mut (dyn Bus + 'a),
    instrs: *const Instruction,
    base: u64,
}

/// Runs the interpreter for instructions `from..to` of the block. Returns 1 if compiled
/// code must return (an instruction left the straight-line path or ended the block).
extern "C" fn helper_step(ctx: *mut HelperCtx<'_>, from: u32, to: u32) -> u32 {
    // SAFETY: compiled code passes on the `ctx` that [`call`] built for this block run:
    // its pointers are to the CPU, the bus and the block's instructions, all borrowed by
    // `call` for its whole duration, and `from..to` are instructions of that block. The
    // compiled code caller holds no Rust reference to the CPU while it calls us.
    let (cpu, bus, instrs, base) = unsafe {
        let ctx = &mut *ctx;
        (
            &mut *ctx.cpu,
            &mut *ctx.bus,
            std::slice::from_raw_parts(ctx.instrs.add(from as usize), (to - from) as usize),
            ctx.base,
        )
    };
    for ins in instrs {
        if !cpu.step_one(bus, ins, base) || cpu.end_block || cpu.check_irq {
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

/// Runs compiled code for a block starting at EIP `base`.
pub fn call(code: BlockFn, cpu: &mut Cpu, bus: &mut dyn Bus, instrs: &[Instruction], base: u64) {
    let cpu: *mut Cpu = cpu;
    // SAFETY: `state` and `ctx.cpu` both derive from the same exclusive borrow of the
    // CPU, held for this whole call. Compiled code accesses the state only between
    // helper calls, and each helper's `&mut Cpu` ends before the compiled code resumes,
    // so the two never access the CPU at the same time. `instrs` is the block the code
    // was compiled from (same length, same order), alive for the call.
    unsafe {
        let state = &raw mut (*cpu).state;
        let mut ctx = HelperCtx {
            cpu,
            bus: bus as *mut (dyn Bus + '_),
            instrs: instrs.as_ptr(),
            base,
        };
        let ctx: *mut HelperCtx<'_> = &mut ctx;
        code(state, ctx.cast(), base);
    }
}

/// Owns the JIT module: the code memory of every function compiled with it.
pub struct Translator {
    module: JITModule,
    helper_step: FuncId,
    ctx: cranelift_codegen::Context,
    builder_ctx: FunctionBuilderContext,
    functions: u32,
}

const GPR: i32 = offset_of!(CpuState, gpr) as i32;
const RIP: i32 = offset_of!(CpuState, rip) as i32;
const ICOUNT: i32 = offset_of!(CpuState, icount) as i32;
const FLAGS: i32 = offset_of!(CpuState, flags) as i32;
const FLAG_OP: i32 = FLAGS + offset_of!(Flags, op) as i32;
const FLAG_SIZE: i32 = FLAGS + offset_of!(Flags, size) as i32;
const FLAG_A: i32 = FLAGS + offset_of!(Flags, a) as i32;
const FLAG_B: i32 = FLAGS + offset_of!(Flags, b) as i32;
const FLAG_RES: i32 = FLAGS + offset_of!(Flags, res) as i32;

/// A general register operand of 16 or 32 bits: (index 0-7, size in bytes).
fn gpr(r: Register) -> Option<(i32, u8)> {
    let n = r as i32;
    if (Register::EAX as i32..=Register::EDI as i32).contains(&n) {
        Some((n - Register::EAX as i32, 4))
    } else if (Register::AX as i32..=Register::DI as i32).contains(&n) {
        Some((n - Register::AX as i32, 2))
    } else {
        None
    }
}

fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8to16 | OpKind::Immediate8to32 | OpKind::Immediate16 | OpKind::Immediate32
    )
}

/// A source operand compiled code can read: a register of the operation's size or an
/// immediate (already sign-extended to it by the decoder).
enum Source {
    Reg(i32),
    Imm(u32),
}

fn source(ins: &Instruction, size: u8) -> Option<Source> {
    match ins.op1_kind() {
        OpKind::Register => match gpr(ins.op1_register()) {
            Some((r, s)) if s == size => Some(Source::Reg(r)),
            _ => None,
        },
        k if is_immediate(k) => Some(Source::Imm(ins.immediate(1) as u32 & mask(size))),
        _ => None,
    }
}

fn mask(size: u8) -> u32 {
    if size == 4 {
        u32::MAX
    } else {
        0xFFFF
    }
}

/// Whether compiled code would do any of `instrs` itself (if not, compiling the block
/// would only produce one call to the interpreter, which can run it directly).
pub fn has_native(instrs: &[Instruction]) -> bool {
    instrs.iter().any(|i| classify(i).is_some())
}

/// The instructions compiled code does itself.
enum Native {
    Nop,
    Mov {
        dst: i32,
        size: u8,
        src: Source,
    },
    Alu {
        op: Mnemonic,
        dst: i32,
        size: u8,
        src: Source,
    },
    Lea {
        dst: i32,
        base: Option<i32>,
        index: Option<(i32, u32)>,
        disp: u32,
    },
}

fn classify(ins: &Instruction) -> Option<Native> {
    use Mnemonic as M;
    if ins.has_lock_prefix() {
        return None;
    }
    match ins.mnemonic() {
        M::Nop if ins.op_count() == 0 || ins.op0_kind() != OpKind::Register => Some(Native::Nop),
        M::Mov if ins.op0_kind() == OpKind::Register => {
            let (dst, size) = gpr(ins.op0_register())?;
            Some(Native::Mov {
                dst,
                size,
                src: source(ins, size)?,
            })
        }
        M::Add | M::Sub | M::And | M::Or | M::Xor | M::Cmp | M::Test
            if ins.op0_kind() == OpKind::Register =>
        {
            let (dst, size) = gpr(ins.op0_register())?;
            Some(Native::Alu {
                op: ins.mnemonic(),
                dst,
                size,
                src: source(ins, size)?,
            })
        }
        M::Lea if ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Memory => {
            let (dst, size) = gpr(ins.op0_register())?;
            // 32-bit operand and address sizes only; the others are left to the helper.
            let base = ins.memory_base();
            let index = ins.memory_index();
            let reg32 = |r: Register| gpr(r).filter(|&(_, s)| s == 4).map(|(n, _)| n);
            if size != 4
                || (base != Register::None && reg32(base).is_none())
                || (index != Register::None && reg32(index).is_none())
                || (base == Register::None
                    && index == Register::None
                    && ins.memory_displ_size() != 4)
            {
                return None;
            }
            Some(Native::Lea {
                dst,
                base: reg32(base),
                index: reg32(index).map(|n| (n, ins.memory_index_scale().trailing_zeros())),
                disp: ins.memory_displacement32(),
            })
        }
        _ => None,
    }
}

impl Translator {
    pub fn new() -> Result<Translator, String> {
        let err = |e: &dyn std::fmt::Display| format!("setting up the JIT: {e}");
        let mut flags = settings::builder();
        flags
            .set("use_colocated_libcalls", "false")
            .map_err(|e| err(&e))?;
        flags.set("is_pic", "false").map_err(|e| err(&e))?;
        flags.set("opt_level", "speed").map_err(|e| err(&e))?;
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
        builder.symbol("helper_step", helper_step as *const u8);
        let mut module = JITModule::new(builder);
        let ptr = module.target_config().pointer_type();
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(types::I32));
        sig.params.push(AbiParam::new(types::I32));
        sig.returns.push(AbiParam::new(types::I32));
        let helper_step = module
            .declare_function("helper_step", Linkage::Import, &sig)
            .map_err(|e| err(&e))?;
        let ctx = module.make_context();
        Ok(Translator {
            module,
            helper_step,
            ctx,
            builder_ctx: FunctionBuilderContext::new(),
            functions: 0,
        })
    }

    /// Frees all code compiled so far. No function of this translator may run again.
    pub fn free(self) {
        // SAFETY: the JIT drops every compiled entry before it frees the translator,
        // and compiled code only runs from those entries, inside `call`, which is not
        // running now (freeing happens between block runs).
        unsafe { self.module.free_memory() }
    }

    /// Compiles a block. Returns the code and how many instructions it does natively.
    pub fn compile(&mut self, instrs: &[Instruction]) -> Result<(BlockFn, usize), String> {
        let err = |e: &dyn std::fmt::Display| format!("compiling a block: {e}");
        let ptr = self.module.target_config().pointer_type();
        let mut sig = self.module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(types::I64));
        sig.returns.push(AbiParam::new(types::I32));
        let id = self
            .module
            .declare_anonymous_function(&sig)
            .map_err(|e| err(&e))?;
        self.functions += 1;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut native_count = 0;
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.builder_ctx);
            let helper = self.module.declare_func_in_func(self.helper_step, b.func);
            let entry = b.create_block();
            let leave = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let params = b.block_params(entry).to_vec();
            let (state, hctx, base) = (params[0], params[1], params[2]);
            let mut e = Emitter { b, state };
            // Instructions run natively since EIP and the count were last written.
            let mut pending = 0i64;
            let natives: Vec<Option<Native>> = instrs.iter().map(classify).collect();
            let mut i = 0;
            while i < instrs.len() {
                if let Some(native) = &natives[i] {
                    e.native(native);
                    native_count += 1;
                    pending += 1;
                    i += 1;
                    continue;
                }
                // A run of instructions compiled code does not do: one helper call.
                let from = i;
                while i < instrs.len() && natives[i].is_none() {
                    i += 1;
                }
                e.sync(base, instrs[from].ip() as i64, pending);
                pending = 0;
                let from = e.b.ins().iconst(types::I32, from as i64);
                let to = e.b.ins().iconst(types::I32, i as i64);
                let call = e.b.ins().call(helper, &[hctx, from, to]);
                let must_leave = e.b.inst_results(call)[0];
                let next = e.b.create_block();
                e.b.ins().brif(must_leave, leave, &[], next, &[]);
                e.b.switch_to_block(next);
            }
            if pending > 0 {
                let last = &instrs[instrs.len() - 1];
                e.sync(base, (last.ip() + last.len() as u64) as i64, pending);
            }
            let zero = e.b.ins().iconst(types::I32, 0);
            e.b.ins().return_(&[zero]);
            e.b.switch_to_block(leave);
            let one = e.b.ins().iconst(types::I32, 1);
            e.b.ins().return_(&[one]);
            e.b.seal_all_blocks();
            e.b.finalize(self.module.target_config());
        }
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(|e| err(&e))?;
        self.module.clear_context(&mut self.ctx);
        self.module.finalize_definitions().map_err(|e| err(&e))?;
        let code = self.module.get_finalized_function(id);
        // SAFETY: `code` is the entry of the function just defined with exactly the
        // signature `BlockFn` declares (two pointers and an i64 in, an i32 out, the
        // platform's C calling convention), finalized and executable.
        let code = unsafe { std::mem::transmute::<*const u8, BlockFn>(code) };
        Ok((code, native_count))
    }
}

struct Emitter<'a> {
    b: FunctionBuilder<'a>,
    state: Value,
}

impl Emitter<'_> {
    fn flags() -> MemFlagsData {
        MemFlagsData::trusted()
    }

    fn load_gpr(&mut self, r: i32, size: u8) -> Value {
        let v = self
            .b
            .ins()
            .load(types::I32, Self::flags(), self.state, GPR + r * 8);
        if size == 2 {
            self.b.ins().band_imm_u(v, 0xFFFF)
        } else {
            v
        }
    }

    /// Writes a 32-bit register (zero-extending, as the interpreter does) or the low
    /// half of one.
    fn store_gpr(&mut self, r: i32, size: u8, v: Value) {
        let at = GPR + r * 8;
        let wide = self.b.ins().uextend(types::I64, v);
        let value = if size == 2 {
            let old = self.b.ins().load(types::I64, Self::flags(), self.state, at);
            let kept = self.b.ins().band_imm_s(old, !0xFFFFi64);
            let low = self.b.ins().band_imm_u(wide, 0xFFFF);
            self.b.ins().bor(kept, low)
        } else {
            wide
        };
        self.b.ins().store(Self::flags(), value, self.state, at);
    }

    fn source(&mut self, src: &Source, size: u8) -> Value {
        match *src {
            Source::Reg(r) => self.load_gpr(r, size),
            Source::Imm(v) => self.b.ins().iconst(types::I32, v as i64),
        }
    }

    fn native(&mut self, n: &Native) {
        match *n {
            Native::Nop => {}
            Native::Mov { dst, size, ref src } => {
                let v = self.source(src, size);
                self.store_gpr(dst, size, v);
            }
            Native::Alu {
                op,
                dst,
                size,
                ref src,
            } => {
                let a = self.load_gpr(dst, size);
                let bv = self.source(src, size);
                let (r, flag_op) = match op {
                    Mnemonic::Add => (self.b.ins().iadd(a, bv), FlagOp::Add),
                    Mnemonic::Sub | Mnemonic::Cmp => (self.b.ins().isub(a, bv), FlagOp::Sub),
                    Mnemonic::And | Mnemonic::Test => (self.b.ins().band(a, bv), FlagOp::Logic),
                    Mnemonic::Or => (self.b.ins().bor(a, bv), FlagOp::Logic),
                    _ => (self.b.ins().bxor(a, bv), FlagOp::Logic),
                };
                let r = if size == 2 {
                    self.b.ins().band_imm_u(r, 0xFFFF)
                } else {
                    r
                };
                if !matches!(op, Mnemonic::Cmp | Mnemonic::Test) {
                    self.store_gpr(dst, size, r);
                }
                // Lazy flags, as `Flags::set_lazy` records them.
                let fl = Self::flags();
                let op_byte = self.b.ins().iconst(types::I8, flag_op as i64);
                let size_byte = self.b.ins().iconst(types::I8, size as i64);
                self.b.ins().store(fl, op_byte, self.state, FLAG_OP);
                self.b.ins().store(fl, size_byte, self.state, FLAG_SIZE);
                self.b.ins().store(fl, a, self.state, FLAG_A);
                self.b.ins().store(fl, bv, self.state, FLAG_B);
                self.b.ins().store(fl, r, self.state, FLAG_RES);
            }
            Native::Lea {
                dst,
                base,
                index,
                disp,
            } => {
                let mut v = self.b.ins().iconst(types::I32, disp as i64);
                if let Some(r) = base {
                    let x = self.load_gpr(r, 4);
                    v = self.b.ins().iadd(v, x);
                }
                if let Some((r, shift)) = index {
                    let x = self.load_gpr(r, 4);
                    let x = self.b.ins().ishl_imm_u(x, shift as i64);
                    v = self.b.ins().iadd(v, x);
                }
                self.store_gpr(dst, 4, v);
            }
        }
    }

    /// Writes EIP (`base + offset`) and adds `pending` to the instruction count.
    fn sync(&mut self, base: Value, offset: i64, pending: i64) {
        if pending == 0 {
            return;
        }
        let fl = Self::flags();
        let rip = self.b.ins().iadd_imm_s(base, offset);
        self.b.ins().store(fl, rip, self.state, RIP);
        let count = self.b.ins().load(types::I64, fl, self.state, ICOUNT);
        let count = self.b.ins().iadd_imm_s(count, pending);
        self.b.ins().store(fl, count, self.state, ICOUNT);
    }
}
