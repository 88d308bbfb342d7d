//! Which instructions compiled code does itself, and their operands in the form the
//! emitter wants. Everything `classify` returns None for runs in the interpreter.

use hospes_cpu::state::ESP;
use hospes_cpu::Cpu;
use iced_x86::{CodeSize, ConditionCode, Instruction, MemorySize, Mnemonic, OpKind, Register};

/// A general register: index 0-7, size in bytes, and for AH/CH/DH/BH the high byte.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Gpr {
    pub n: usize,
    pub size: u8,
    pub high: bool,
}

impl Gpr {
    pub fn full(n: usize) -> Gpr {
        Gpr {
            n,
            size: 4,
            high: false,
        }
    }
}

pub(super) fn gpr(r: Register) -> Option<Gpr> {
    // (first register, how many, size, high byte): EAX..EDI, AX..DI, AL..BL, AH..BH.
    const GROUPS: [(Register, usize, u8, bool); 4] = [
        (Register::EAX, 8, 4, false),
        (Register::AX, 8, 2, false),
        (Register::AL, 4, 1, false),
        (Register::AH, 4, 1, true),
    ];
    let n = r as usize;
    GROUPS.iter().find_map(|&(first, count, size, high)| {
        let first = first as usize;
        (first..first + count).contains(&n).then(|| Gpr {
            n: n - first,
            size,
            high,
        })
    })
}

/// A memory operand: segment, base, scaled index, displacement, address size.
#[derive(Clone, Copy)]
pub(super) struct MemRef {
    pub seg: usize,
    pub base: Option<usize>,
    pub index: Option<(usize, u32)>,
    pub disp: u32,
    pub addr16: bool,
}

fn mem_ref(ins: &Instruction) -> Option<MemRef> {
    let seg = (ins.memory_segment() as usize).wrapping_sub(Register::ES as usize);
    if seg > 5 {
        return None;
    }
    let addr16 = Cpu::addr16(ins);
    let want = if addr16 { 2 } else { 4 };
    let reg = |r: Register| -> Option<Option<usize>> {
        if r == Register::None {
            return Some(None);
        }
        let g = gpr(r)?;
        (g.size == want).then_some(Some(g.n))
    };
    let base = reg(ins.memory_base())?;
    let index = reg(ins.memory_index())?.map(|n| (n, ins.memory_index_scale().trailing_zeros()));
    Some(MemRef {
        seg,
        base,
        index,
        disp: ins.memory_displacement32(),
        addr16,
    })
}

#[derive(Clone, Copy)]
pub(super) enum Operand {
    Reg(Gpr),
    Mem(MemRef),
    Imm(u32),
}

pub(super) fn mask(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => u32::MAX,
    }
}

fn operand(ins: &Instruction, i: u32, size: u8) -> Option<Operand> {
    match ins.op_kind(i) {
        OpKind::Register => {
            let g = gpr(ins.op_register(i))?;
            (g.size == size).then_some(Operand::Reg(g))
        }
        OpKind::Memory => {
            if ins.memory_size().size() != size as usize {
                return None;
            }
            Some(Operand::Mem(mem_ref(ins)?))
        }
        OpKind::Immediate8
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate16
        | OpKind::Immediate32 => Some(Operand::Imm(ins.immediate(i) as u32 & mask(size))),
        _ => None,
    }
}

fn operand_size(ins: &Instruction, i: u32) -> Option<u8> {
    let size = match ins.op_kind(i) {
        OpKind::Register => ins.op_register(i).size(),
        OpKind::Memory => ins.memory_size().size(),
        _ => return None,
    };
    matches!(size, 1 | 2 | 4).then_some(size as u8)
}

/// A register operand (not memory, not an immediate) of any size.
fn reg_operand(ins: &Instruction, i: u32) -> Option<Gpr> {
    (ins.op_kind(i) == OpKind::Register)
        .then(|| gpr(ins.op_register(i)))
        .flatten()
}

/// Whether compiled code would do any of `instrs` itself (if not, compiling the block
/// would only produce one call to the interpreter, which can run it directly).
pub fn has_native(instrs: &[Instruction]) -> bool {
    instrs.iter().any(|i| classify(i).is_some())
}

/// Shift counts: an immediate (already masked to 5 bits) or CL.
#[derive(Clone, Copy)]
pub(super) enum Count {
    Imm(u32),
    Cl,
}

/// The instructions compiled code does itself (memory accesses only on the TLB's fast
/// path; anything else takes the interpreter for that one instruction).
pub(super) enum Native {
    Nop,
    Mov {
        dst: Operand,
        src: Operand,
        size: u8,
    },
    /// MOVZX / MOVSX.
    Movx {
        dst: Gpr,
        src: Operand,
        src_size: u8,
        signed: bool,
    },
    /// ADD, ADC, SUB, SBB, AND, OR, XOR, CMP, TEST.
    Alu {
        op: Mnemonic,
        dst: Operand,
        src: Operand,
        size: u8,
    },
    /// INC / DEC.
    IncDec {
        dst: Operand,
        size: u8,
        inc: bool,
    },
    Neg {
        dst: Gpr,
    },
    Not {
        dst: Gpr,
    },
    /// SHL/SHR/SAR/ROL/ROR of a register.
    Shift {
        op: Mnemonic,
        dst: Gpr,
        count: Count,
    },
    /// IMUL with two or three operands: dst = a * b (only `a` may be in memory).
    Imul {
        dst: Gpr,
        a: Operand,
        b: Operand,
    },
    Setcc {
        cc: ConditionCode,
        dst: Gpr,
    },
    Cmovcc {
        cc: ConditionCode,
        dst: Gpr,
        src: Operand,
    },
    Xchg {
        a: Gpr,
        b: Gpr,
    },
    /// CDQ (EDX = sign of EAX) and CWDE (EAX = AX sign-extended).
    Cdq,
    Cwde,
    /// EDX:EAX = the time-stamp counter.
    Rdtsc,
    /// BSWAP of a 32-bit register.
    Bswap {
        dst: Gpr,
    },
    /// BT of a register or memory operand with an immediate bit offset (already
    /// reduced modulo the operand size): CF = the bit, the other flags kept.
    Bt {
        src: Operand,
        size: u8,
        bit: u32,
    },
    Lea {
        dst: Gpr,
        mem: MemRef,
    },
    Push {
        src: Operand,
        size: u8,
    },
    Pop {
        dst: Gpr,
    },
    /// LEAVE with a 32-bit operand size: ESP = EBP, then POP EBP.
    Leave,
    Jmp {
        target: u64,
        mask: u64,
    },
    /// A near JMP to a 32-bit register or memory operand.
    JmpIndirect {
        src: Operand,
    },
    Jcc {
        cc: ConditionCode,
        target: u64,
        mask: u64,
    },
    /// A near CALL with a 32-bit operand size.
    Call {
        target: u64,
    },
    /// A near RET with a 32-bit operand size, releasing `extra` more bytes.
    Ret {
        extra: u32,
    },
    /// A near CALL to a 32-bit register or memory operand.
    CallIndirect {
        src: Operand,
    },
    /// LODS, STOS, SCAS or MOVS without a REP prefix, with 32-bit addresses; `seg` is
    /// the source's segment (LODS, MOVS).
    String {
        op: StringOp,
        size: u8,
        seg: usize,
    },
    /// REP STOSB with 32-bit addresses (a memset).
    RepStosb,
    /// DIV of EDX:EAX by a 32-bit operand.
    Div {
        src: Operand,
    },
    /// CMPXCHG with a memory destination.
    Cmpxchg {
        dst: MemRef,
        src: Gpr,
    },
    Cli,
    /// SAHF: SF, ZF, AF, PF and CF from AH.
    Sahf,
    /// FNSTSW AX.
    FnstswAx,
    /// FNSTCW to memory.
    Fnstcw {
        mem: MemRef,
    },
    /// FLDCW from memory.
    Fldcw {
        mem: MemRef,
    },
    /// A numeric x87 instruction on registers only (`mem` None), reading a memory
    /// operand of `size` bytes, or storing one (FST/FSTP/FIST/FISTP).
    X87 {
        mem: Option<MemRef>,
        size: u8,
        store: bool,
    },
}

/// x87 instructions that change only the FPU's state, in their register forms (with
/// the register forms of [`X87_READ`]).
const X87_REGISTER_ONLY: [Mnemonic; 25] = {
    use Mnemonic as M;
    [
        M::Fst,
        M::Fstp,
        M::Fxch,
        M::Fld1,
        M::Fldz,
        M::Faddp,
        M::Fsubp,
        M::Fsubrp,
        M::Fmulp,
        M::Fdivp,
        M::Fdivrp,
        M::Fcompp,
        M::Fucom,
        M::Fucomp,
        M::Fucompp,
        M::Ftst,
        M::Fxam,
        M::Fchs,
        M::Fabs,
        M::Fsqrt,
        M::Frndint,
        M::Fprem,
        M::Fincstp,
        M::Fdecstp,
        M::Ffree,
    ]
};

/// x87 instructions that change only the FPU's state, in register forms or reading
/// a memory operand.
const X87_READ: [Mnemonic; 18] = {
    use Mnemonic as M;
    [
        M::Fld,
        M::Fild,
        M::Fadd,
        M::Fsub,
        M::Fsubr,
        M::Fmul,
        M::Fdiv,
        M::Fdivr,
        M::Fiadd,
        M::Fisub,
        M::Fisubr,
        M::Fimul,
        M::Fidiv,
        M::Fidivr,
        M::Fcom,
        M::Fcomp,
        M::Ficom,
        M::Ficomp,
    ]
};

/// x87 stores to memory.
const X87_STORE: [Mnemonic; 4] = [
    Mnemonic::Fst,
    Mnemonic::Fstp,
    Mnemonic::Fist,
    Mnemonic::Fistp,
];

/// An x87 instruction compiled code runs through [`super::ops::helper_x87_read`] or
/// [`super::ops::helper_x87_store`]: one of the lists above with a register operand
/// form or a memory operand of 2, 4 or 8 bytes (not 80-bit reals or BCD).
fn x87(ins: &Instruction) -> Option<Native> {
    let m = ins.mnemonic();
    if !Cpu::has_mem(ins) {
        let known = X87_REGISTER_ONLY.contains(&m) || X87_READ.contains(&m);
        return known.then_some(Native::X87 {
            mem: None,
            size: 0,
            store: false,
        });
    }
    let size = match ins.memory_size() {
        MemorySize::Float32 | MemorySize::Int32 => 4,
        MemorySize::Float64 | MemorySize::Int64 => 8,
        MemorySize::Int16 => 2,
        _ => return None,
    };
    let store = X87_STORE.contains(&m);
    if !store && !X87_READ.contains(&m) {
        return None;
    }
    Some(Native::X87 {
        mem: Some(mem_ref(ins)?),
        size,
        store,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum StringOp {
    Lods,
    Stos,
    Scas,
    Movs,
}

/// LODS/STOS/SCAS/MOVS with 32-bit addresses and no REP prefix: the operation and its
/// element size.
fn string_op(ins: &Instruction) -> Option<(StringOp, u8)> {
    use Mnemonic as M;
    let op = match ins.mnemonic() {
        M::Lodsb | M::Lodsw | M::Lodsd => StringOp::Lods,
        M::Stosb | M::Stosw | M::Stosd => StringOp::Stos,
        M::Scasb | M::Scasw | M::Scasd => StringOp::Scas,
        // MOVSD is also an SSE2 instruction: the operand kinds below tell them apart.
        M::Movsb | M::Movsw | M::Movsd => StringOp::Movs,
        _ => return None,
    };
    let addr32 = (0..ins.op_count()).all(|i| {
        matches!(
            ins.op_kind(i),
            OpKind::MemorySegESI | OpKind::MemoryESEDI | OpKind::Register
        )
    }) && (0..ins.op_count()).any(|i| ins.op_kind(i) != OpKind::Register);
    if !addr32 || ins.has_rep_prefix() || ins.has_repne_prefix() {
        return None;
    }
    let size = ins.memory_size().size();
    matches!(size, 1 | 2 | 4).then_some((op, size as u8))
}

fn branch_target(ins: &Instruction) -> Option<(u64, u64)> {
    match ins.op0_kind() {
        OpKind::NearBranch16 => Some((ins.near_branch16() as u64, 0xFFFF)),
        OpKind::NearBranch32 => Some((ins.near_branch32() as u64, 0xFFFF_FFFF)),
        _ => None,
    }
}

/// Whether the instruction's operand size is 32 bits (as for CALL/RET/LEAVE, which
/// have no explicit operand giving it).
fn operand32(ins: &Instruction) -> bool {
    let size = ins.code().op_code().operand_size();
    if ins.code_size() == CodeSize::Code32 {
        size != 16
    } else {
        size == 32
    }
}

const SETCC: [Mnemonic; 16] = {
    use Mnemonic as M;
    [
        M::Seto,
        M::Setno,
        M::Setb,
        M::Setae,
        M::Sete,
        M::Setne,
        M::Setbe,
        M::Seta,
        M::Sets,
        M::Setns,
        M::Setp,
        M::Setnp,
        M::Setl,
        M::Setge,
        M::Setle,
        M::Setg,
    ]
};
const CMOVCC: [Mnemonic; 16] = {
    use Mnemonic as M;
    [
        M::Cmovo,
        M::Cmovno,
        M::Cmovb,
        M::Cmovae,
        M::Cmove,
        M::Cmovne,
        M::Cmovbe,
        M::Cmova,
        M::Cmovs,
        M::Cmovns,
        M::Cmovp,
        M::Cmovnp,
        M::Cmovl,
        M::Cmovge,
        M::Cmovle,
        M::Cmovg,
    ]
};

pub(super) fn classify(ins: &Instruction) -> Option<Native> {
    use Mnemonic as M;
    // LOCK changes nothing on one CPU; where a P6 refuses it, the interpreter decides.
    if ins.has_lock_prefix() && !hospes_cpu::exec::lockable(ins) {
        return None;
    }
    if ins.mnemonic() == M::Stosb && ins.has_rep_prefix() && ins.op0_kind() == OpKind::MemoryESEDI {
        return Some(Native::RepStosb);
    }
    if let Some((op, size)) = string_op(ins) {
        let seg = (ins.memory_segment() as usize).wrapping_sub(Register::ES as usize);
        return (seg <= 5).then_some(Native::String { op, size, seg });
    }
    match ins.mnemonic() {
        M::Nop | M::Pause if ins.op_count() == 0 || ins.op0_kind() != OpKind::Register => {
            Some(Native::Nop)
        }
        M::Mov => {
            let size = operand_size(ins, 0)?;
            let dst = operand(ins, 0, size)?;
            let src = operand(ins, 1, size)?;
            if matches!(dst, Operand::Imm(_)) {
                return None;
            }
            Some(Native::Mov { dst, src, size })
        }
        M::Movzx | M::Movsx => {
            let dst = reg_operand(ins, 0).filter(|g| g.size > 1)?;
            let src_size = operand_size(ins, 1)?;
            Some(Native::Movx {
                dst,
                src: operand(ins, 1, src_size)?,
                src_size,
                signed: ins.mnemonic() == M::Movsx,
            })
        }
        M::Add | M::Adc | M::Sub | M::Sbb | M::And | M::Or | M::Xor | M::Cmp | M::Test => {
            let size = operand_size(ins, 0)?;
            let dst = operand(ins, 0, size)?;
            let src = operand(ins, 1, size)?;
            Some(Native::Alu {
                op: ins.mnemonic(),
                dst,
                src,
                size,
            })
        }
        M::Inc | M::Dec => {
            let size = operand_size(ins, 0)?;
            Some(Native::IncDec {
                dst: operand(ins, 0, size)?,
                size,
                inc: ins.mnemonic() == M::Inc,
            })
        }
        M::Neg => Some(Native::Neg {
            dst: reg_operand(ins, 0)?,
        }),
        M::Not => Some(Native::Not {
            dst: reg_operand(ins, 0)?,
        }),
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror => {
            let dst = reg_operand(ins, 0)?;
            let count = match ins.op_count() {
                1 => Count::Imm(1),
                _ if ins.op1_kind() == OpKind::Immediate8 => {
                    Count::Imm(ins.immediate8() as u32 & 0x1F)
                }
                _ if ins.op1_register() == Register::CL => Count::Cl,
                _ => return None,
            };
            let op = if ins.mnemonic() == M::Sal {
                M::Shl
            } else {
                ins.mnemonic()
            };
            Some(Native::Shift { op, dst, count })
        }
        M::Imul if ins.op_count() >= 2 => {
            let dst = reg_operand(ins, 0).filter(|g| g.size > 1)?;
            let (a, b) = if ins.op_count() == 3 {
                (operand(ins, 1, dst.size)?, operand(ins, 2, dst.size)?)
            } else {
                // Multiplying commutes: the memory operand, if any, goes first.
                (operand(ins, 1, dst.size)?, Operand::Reg(dst))
            };
            Some(Native::Imul { dst, a, b })
        }
        M::Xchg => {
            let a = reg_operand(ins, 0)?;
            let b = reg_operand(ins, 1)?;
            (a.size == b.size).then_some(Native::Xchg { a, b })
        }
        M::Cdq => Some(Native::Cdq),
        M::Rdtsc => Some(Native::Rdtsc),
        M::Bswap => Some(Native::Bswap {
            dst: reg_operand(ins, 0).filter(|g| g.size == 4)?,
        }),
        M::Cwde => Some(Native::Cwde),
        M::Bt if ins.op1_kind() == OpKind::Immediate8 => {
            let size = operand_size(ins, 0).filter(|&s| s > 1)?;
            Some(Native::Bt {
                src: operand(ins, 0, size)?,
                size,
                bit: ins.immediate8() as u32 % (size as u32 * 8),
            })
        }
        M::Lea if ins.op1_kind() == OpKind::Memory => {
            let dst = reg_operand(ins, 0).filter(|g| g.size > 1)?;
            Some(Native::Lea {
                dst,
                mem: mem_ref(ins)?,
            })
        }
        M::Push if ins.op0_kind() == OpKind::Register => {
            let g = reg_operand(ins, 0).filter(|g| g.size > 1)?;
            Some(Native::Push {
                src: Operand::Reg(g),
                size: g.size,
            })
        }
        M::Push if matches!(ins.op0_kind(), OpKind::Immediate8to32 | OpKind::Immediate32) => {
            Some(Native::Push {
                src: Operand::Imm(ins.immediate(0) as u32),
                size: 4,
            })
        }
        M::Push if ins.op0_kind() == OpKind::Memory => {
            let size = operand_size(ins, 0).filter(|&s| s > 1)?;
            Some(Native::Push {
                src: operand(ins, 0, size)?,
                size,
            })
        }
        M::Jmp if operand32(ins) && matches!(ins.op0_kind(), OpKind::Register | OpKind::Memory) => {
            Some(Native::JmpIndirect {
                src: operand(ins, 0, 4)?,
            })
        }
        M::Pop if ins.op0_kind() == OpKind::Register => {
            let g = reg_operand(ins, 0).filter(|g| g.size > 1 && g.n != ESP)?;
            Some(Native::Pop { dst: g })
        }
        M::Leave if operand32(ins) => Some(Native::Leave),
        M::Jmp => {
            let (target, mask) = branch_target(ins)?;
            Some(Native::Jmp { target, mask })
        }
        M::Call if operand32(ins) && ins.op0_kind() == OpKind::NearBranch32 => Some(Native::Call {
            target: ins.near_branch32() as u64,
        }),
        M::Call
            if operand32(ins) && matches!(ins.op0_kind(), OpKind::Register | OpKind::Memory) =>
        {
            Some(Native::CallIndirect {
                src: operand(ins, 0, 4)?,
            })
        }
        M::Div if operand_size(ins, 0) == Some(4) => Some(Native::Div {
            src: operand(ins, 0, 4)?,
        }),
        M::Cmpxchg if ins.op0_kind() == OpKind::Memory => {
            let src = reg_operand(ins, 1)?;
            if operand_size(ins, 0) != Some(src.size) {
                return None;
            }
            Some(Native::Cmpxchg {
                dst: mem_ref(ins)?,
                src,
            })
        }
        M::Cli => Some(Native::Cli),
        M::Sahf => Some(Native::Sahf),
        M::Fnstsw if ins.op0_kind() == OpKind::Register => Some(Native::FnstswAx),
        M::Fnstcw => Some(Native::Fnstcw { mem: mem_ref(ins)? }),
        M::Fldcw => Some(Native::Fldcw { mem: mem_ref(ins)? }),
        m if X87_REGISTER_ONLY.contains(&m) || X87_READ.contains(&m) || X87_STORE.contains(&m) => {
            x87(ins)
        }
        M::Ret if operand32(ins) => Some(Native::Ret {
            extra: if ins.op_count() > 0 {
                ins.immediate16() as u32
            } else {
                0
            },
        }),
        _ if ins.is_jcc_short_or_near() => {
            let (target, mask) = branch_target(ins)?;
            Some(Native::Jcc {
                cc: ins.condition_code(),
                target,
                mask,
            })
        }
        m if SETCC.contains(&m) => Some(Native::Setcc {
            cc: ins.condition_code(),
            dst: reg_operand(ins, 0)?,
        }),
        m if CMOVCC.contains(&m) => {
            let dst = reg_operand(ins, 0)?;
            Some(Native::Cmovcc {
                cc: ins.condition_code(),
                dst,
                src: operand(ins, 1, dst.size)?,
            })
        }
        _ => None,
    }
}
