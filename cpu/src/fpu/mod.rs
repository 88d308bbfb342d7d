//! The x87 FPU of a Pentium Pro/II, with true 80-bit precision.
//!
//! Registers are kept as raw 80-bit values ([`F80`]) in physical order; ST(i) is physical
//! register `(TOP + i) & 7`. All arithmetic is exact integer arithmetic rounded once per
//! the control word (see [`float`]). Unmasked exceptions set ES and B and are delivered at
//! the next waiting x87 instruction or WAIT as #MF (CR0.NE = 1).
//!
//! The transcendental instructions are computed in extended precision by series on top
//! of the same soft-float; they are accurate to a few ulps, not bit-exact with the P6
//! (see [`transcendental`]).

mod env;
pub mod float;
mod transcendental;

#[cfg(test)]
mod tests;

use crate::exception::{self, Exception, Res};
use crate::exec::seg_index;
use crate::mem::Bus;
use crate::state::{CR0_EM, CR0_MP, CR0_NE, CR0_TS, CS, EAX};
use crate::Cpu;
use float::{Class, Cmp, Ctx, BUSY, C0, C1, C2, C3, DE, ES, EXC, F80, IE, SF, ZE};
use iced_x86::{Instruction, MemorySize, Mnemonic as M, OpKind, Register};

/// x87 state.
///
/// `Default` is the state after power-up/RESET as given by the SDM (vol. 3, table 9-1):
/// control word 0040H, status word 0, tag word 5555H (every register holds +0.0 and is
/// tagged "zero"), pointers and opcode 0. FNINIT then gives control 037FH and an all-empty
/// tag word FFFFH.
#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FpuState {
    /// Physical registers R0..R7.
    pub regs: [F80; 8],
    pub control: u16,
    /// Status word, TOP in bits 11-13.
    pub status: u16,
    /// Full tag word, two bits per physical register: 00 valid, 01 zero, 10 special
    /// (NaN, infinity, denormal, unsupported), 11 empty. Kept current on every write.
    pub tag: u16,
    /// Last non-control instruction's opcode (11 bits: low 3 bits of the first opcode
    /// byte, then the ModRM byte).
    pub fop: u16,
    pub fip: u32,
    pub fdp: u32,
    pub fcs: u16,
    pub fds: u16,
}

impl Default for FpuState {
    fn default() -> Self {
        FpuState {
            regs: [F80::ZERO; 8],
            control: 0x0040,
            status: 0,
            tag: 0x5555,
            fop: 0,
            fip: 0,
            fdp: 0,
            fcs: 0,
            fds: 0,
        }
    }
}

/// Tag of a non-empty register value.
pub fn tag_of(v: F80) -> u16 {
    match v.class() {
        Class::Zero => 1,
        Class::Normal => 0,
        _ => 2,
    }
}

impl FpuState {
    pub fn top(&self) -> usize {
        ((self.status >> 11) & 7) as usize
    }
    pub fn set_top(&mut self, t: usize) {
        self.status = (self.status & !0x3800) | (((t & 7) as u16) << 11);
    }
    /// Physical register of ST(i).
    pub fn phys(&self, i: usize) -> usize {
        (self.top() + i) & 7
    }
    pub fn st(&self, i: usize) -> F80 {
        self.regs[self.phys(i)]
    }
    pub fn is_empty(&self, i: usize) -> bool {
        let p = self.phys(i);
        (self.tag >> (2 * p)) & 3 == 3
    }
    fn set_tag(&mut self, p: usize, t: u16) {
        let p = p & 7;
        self.tag = (self.tag & !(3 << (2 * p))) | ((t & 3) << (2 * p));
    }
    pub fn set_st(&mut self, i: usize, v: F80) {
        let p = self.phys(i);
        self.regs[p] = v;
        self.set_tag(p, tag_of(v));
    }
    pub fn free(&mut self, i: usize) {
        let p = self.phys(i);
        self.set_tag(p, 3);
    }
    pub fn push(&mut self, v: F80) {
        let t = self.top().wrapping_sub(1) & 7;
        self.set_top(t);
        self.set_st(0, v);
    }
    pub fn pop(&mut self) {
        self.free(0);
        let t = self.top() + 1;
        self.set_top(t);
    }
    /// Recomputes the tags of non-empty registers from their contents (FLDENV/FRSTOR).
    pub fn retag(&mut self) {
        for p in 0..8 {
            if (self.tag >> (2 * p)) & 3 != 3 {
                let t = tag_of(self.regs[p]);
                self.set_tag(p, t);
            }
        }
    }
    /// FNINIT.
    pub fn init(&mut self) {
        self.control = 0x037F;
        self.status = 0;
        self.tag = 0xFFFF;
        self.fop = 0;
        self.fip = 0;
        self.fdp = 0;
        self.fcs = 0;
        self.fds = 0;
    }
    pub fn ctx(&self) -> Ctx {
        Ctx::from_control(self.control)
    }
    /// Sets C0..C3 (the bits given as `cc`, others cleared).
    pub fn set_cc(&mut self, cc: u16) {
        self.status = (self.status & !(C0 | C1 | C2 | C3)) | (cc & (C0 | C1 | C2 | C3));
    }
    pub fn set_c1(&mut self, on: bool) {
        if on {
            self.status |= C1;
        } else {
            self.status &= !C1;
        }
    }
    /// Recomputes ES and B from the exception flags and masks (after FLDCW/FLDENV).
    pub fn update_es(&mut self) {
        if self.status & !self.control & EXC != 0 {
            self.status |= ES | BUSY;
        } else {
            self.status &= !(ES | BUSY);
        }
    }
    /// Merges exception flags (and SF). Returns the unmasked ones; sets ES and B if any.
    pub fn raise(&mut self, flags: u16) -> u16 {
        self.status |= flags & (EXC | SF);
        let unmasked = self.unmasked(flags);
        if unmasked != 0 {
            self.status |= ES | BUSY;
        }
        unmasked
    }
    /// The exceptions among `flags` that the control word does not mask.
    pub fn unmasked(&self, flags: u16) -> u16 {
        flags & EXC & !self.control
    }
    /// Stack underflow (IE, SF, C1 = 0). Returns true when masked (the caller then
    /// delivers the indefinite).
    pub fn underflow(&mut self) -> bool {
        self.set_c1(false);
        self.raise(IE | SF) == 0
    }
    /// Stack overflow (IE, SF, C1 = 1). Returns true when masked.
    pub fn overflow(&mut self) -> bool {
        self.set_c1(true);
        self.raise(IE | SF) == 0
    }
    /// Pushes with the overflow check: a full slot gives the indefinite when masked.
    pub fn push_checked(&mut self, v: F80) {
        let p = self.top().wrapping_sub(1) & 7;
        if (self.tag >> (2 * p)) & 3 != 3 {
            if self.overflow() {
                self.push(F80::INDEFINITE);
            }
        } else {
            self.push(v);
        }
    }
}

/// The FOP an x87 instruction leaves in the FPU (11 bits: the low 3 bits of its first
/// opcode byte, then its ModRM byte), as the FPU records it for FSTENV/FSAVE.
pub fn fpu_opcode(ins: &Instruction) -> u16 {
    let oc = ins.op_code();
    let two = oc.op_code_len() == 2;
    let op = if two {
        ((oc.op_code() >> 8) & 7) as u16
    } else {
        (oc.op_code() & 7) as u16
    };
    let modrm = if two {
        // Register forms report "D8 C0" etc. as the opcode; add the ST(i) index.
        let is_st = |r: Register| (Register::ST0..=Register::ST7).contains(&r);
        let i = if ins.op_count() >= 2 && ins.op0_register() == Register::ST0 {
            ins.op1_register()
        } else if ins.op_count() >= 1 {
            ins.op0_register()
        } else {
            Register::None
        };
        let idx = if is_st(i) { st_index(i) as u16 } else { 0 };
        ((oc.op_code() & 0xFF) as u16).wrapping_add(idx)
    } else {
        memory_modrm(ins)
    };
    (op << 8) | (modrm & 0xFF)
}

/// The ModRM byte of an instruction with a memory operand (FOP records it), rebuilt
/// from the decoded operand as it was encoded: mod from the displacement's size, rm
/// from the base and index (a SIB byte where there is an index or the base is ESP),
/// reg the opcode's /digit.
fn memory_modrm(ins: &Instruction) -> u16 {
    let reg = (ins.op_code().group_index().max(0) as u16 & 7) << 3;
    let (base, index) = (ins.memory_base(), ins.memory_index());
    let disp_mod = match ins.memory_displ_size() {
        0 => 0,
        1 => 1 << 6,
        _ => 2 << 6,
    };
    let (mod_bits, rm) = if Cpu::addr16(ins) {
        use Register::{BP, BX, DI, SI};
        let rm = match (base, index) {
            (BX, SI) => 0,
            (BX, DI) => 1,
            (BP, SI) => 2,
            (BP, DI) => 3,
            (SI, Register::None) => 4,
            (DI, Register::None) => 5,
            (BP, Register::None) => 6,
            (BX, Register::None) => 7,
            // [disp16]
            _ => return reg | 6,
        };
        (disp_mod, rm)
    } else if base == Register::None && index == Register::None {
        // [disp32]
        return reg | 5;
    } else {
        let rm = if index != Register::None || base == Register::ESP {
            4
        } else {
            (base as u16).wrapping_sub(Register::EAX as u16) & 7
        };
        // A SIB byte without a base has a 32-bit displacement and mod 0.
        let mod_bits = if base == Register::None { 0 } else { disp_mod };
        (mod_bits, rm)
    };
    mod_bits | reg | rm
}

/// A numeric memory operand of at most 8 bytes (`bits`, read as `size`) widened to
/// extended precision: SNaNs stay signaling; the flags carry DE for a denormal real.
fn operand_from_bits(size: MemorySize, bits: u64) -> (F80, u16) {
    match size {
        MemorySize::Float32 => float::from_ieee(bits & 0xFFFF_FFFF, 8, 23),
        MemorySize::Float64 => float::from_ieee(bits, 11, 52),
        MemorySize::Int16 => (float::from_i64(bits as u16 as i16 as i64), 0),
        MemorySize::Int32 => (float::from_i64(bits as u32 as i32 as i64), 0),
        _ => (float::from_i64(bits as i64), 0),
    }
}

/// Whether a store of ST0 (FST/FSTP/FIST/FISTP/FBSTP) pops it: all but FST and FIST.
fn store_pops(m: M) -> bool {
    !matches!(m, M::Fst | M::Fist)
}

/// Index of an ST register operand.
fn st_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ST0 as usize) & 7
}

/// Arithmetic operations of the D8/DC/DE/DA/DE groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    SubR,
    Mul,
    Div,
    DivR,
}

/// Whether `flags` contain an unmasked exception that suppresses the result store.
const NO_STORE: u16 = IE | DE | ZE;
/// For memory destinations, unmasked OE/UE also suppress the store.
const NO_STORE_MEM: u16 = IE | DE | ZE | float::OE | float::UE;

impl Cpu {
    /// WAIT/FWAIT: #NM if CR0.MP and CR0.TS are both set; delivers a pending unmasked
    /// x87 exception.
    pub(crate) fn fpu_wait(&mut self) -> Res<()> {
        if self.state.cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS {
            return Err(Exception::nm());
        }
        self.fpu_pending()
    }

    /// A pending unmasked exception (ES set) is signalled here.
    fn fpu_pending(&mut self) -> Res<()> {
        if self.fpu_signals_pending() {
            return Err(Exception::new(exception::MF));
        }
        // TODO: with CR0.NE = 0 a PC asserts FERR# and raises IRQ13 through the interrupt
        // controller (IGNNE# on the write to port F0h); not modelled yet, so the
        // instruction just proceeds.
        Ok(())
    }

    /// A pending unmasked exception (ES) that the next numeric instruction or WAIT
    /// signals as #MF (CR0.NE set).
    fn fpu_signals_pending(&self) -> bool {
        self.state.fpu.status & ES != 0 && self.state.cr0 & CR0_NE != 0
    }

    /// The FPU is absent (CR0.EM) or its state belongs to another task (CR0.TS): x87
    /// instructions raise #NM.
    fn fpu_unavailable(&self) -> bool {
        self.state.cr0 & (CR0_EM | CR0_TS) != 0
    }

    /// Whether a numeric instruction runs rather than faulting (#NM or #MF), as
    /// [`Cpu::exec_fpu`] checks.
    fn fpu_ready(&self) -> bool {
        !self.fpu_unavailable() && !self.fpu_signals_pending()
    }

    /// A numeric instruction that reads at most 8 bytes of memory or none, for compiled
    /// code, which has read the operand (`bits`, at offset `off` of the instruction's
    /// segment) without a fault: the rest of what [`Cpu::exec_fpu`] does for the
    /// instruction at `eip`, whose FOP ([`fpu_opcode`]) the caller gives as `fop`.
    /// Returns false, having changed nothing, where the instruction faults instead
    /// (#NM, #MF). Not for stores, the environment and control instructions, or those
    /// that touch EFLAGS or general registers.
    pub fn fpu_numeric_read(
        &mut self,
        bus: &mut dyn Bus,
        ins: &Instruction,
        eip: u64,
        off: u32,
        bits: u64,
        fop: u16,
    ) -> bool {
        if !self.fpu_ready() {
            return false;
        }
        let has_mem = Self::has_mem(ins);
        let operand = has_mem.then(|| operand_from_bits(ins.memory_size(), bits));
        self.cur_eip = eip;
        let mem = has_mem.then(|| (seg_index(ins.memory_segment()), off));
        self.fpu_note_fop(fop, mem);
        self.fpu_numeric(bus, ins, operand).is_ok()
    }

    /// FST/FSTP/FIST/FISTP to at most 8 bytes for compiled code, whose write to offset
    /// `off` of the instruction's segment cannot fault: the rest of what
    /// [`Cpu::exec_fpu`] does for the instruction at `eip` (FOP `fop`, from
    /// [`fpu_opcode`]); returns the bits to write. None, having changed nothing, where
    /// the interpreter must run it (#NM, #MF, or an unmasked exception that suppresses
    /// the store).
    pub fn fpu_store_write(
        &mut self,
        ins: &Instruction,
        eip: u64,
        off: u32,
        fop: u16,
    ) -> Option<u64> {
        if !self.fpu_ready() {
            return None;
        }
        let (bytes, _, fl, c1) = self.fpu_store_value(ins.memory_size()).ok()?;
        if self.state.fpu.unmasked(fl) & NO_STORE_MEM != 0 {
            return None;
        }
        self.cur_eip = eip;
        self.fpu_note_fop(fop, Some((seg_index(ins.memory_segment()), off)));
        let f = &mut self.state.fpu;
        f.set_c1(c1);
        f.raise(fl);
        if store_pops(ins.mnemonic()) {
            f.pop();
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[..8]);
        Some(u64::from_le_bytes(low))
    }

    pub(crate) fn exec_fpu(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        if self.fpu_unavailable() {
            return Err(Exception::nm());
        }
        let m = ins.mnemonic();
        let nowait = matches!(
            m,
            M::Fninit
                | M::Fnclex
                | M::Fnstsw
                | M::Fnstcw
                | M::Fnstenv
                | M::Fnsave
                | M::Fnsetpm
                | M::Fneni
                | M::Fndisi
        );
        if !nowait {
            self.fpu_pending()?;
        }
        // A fault part-way (writing a memory operand, or reading an environment) must
        // leave the FPU untouched. Every other instruction reads its memory operand
        // before it changes anything (see `fpu_op`), so only these save the state.
        let changes_before_fault = Self::has_mem(ins)
            && matches!(
                m,
                M::Fst
                    | M::Fstp
                    | M::Fstpnce
                    | M::Fist
                    | M::Fistp
                    | M::Fbstp
                    | M::Fnstenv
                    | M::Fstenv
                    | M::Fnsave
                    | M::Fsave
                    | M::Fldenv
                    | M::Frstor
            );
        if !changes_before_fault {
            return self.fpu_op(bus, ins);
        }
        let saved = self.state.fpu.clone();
        let r = self.fpu_op(bus, ins);
        if r.is_err() {
            self.state.fpu = saved;
        }
        r
    }

    /// Records FIP/FCS/FOP (and FDP/FDS for memory operands) for a non-control
    /// instruction, as the P6 does.
    fn fpu_note(&mut self, ins: &Instruction) {
        let mem = Self::has_mem(ins).then(|| self.mem_operand(ins));
        self.fpu_note_at(ins, mem);
    }

    /// [`Cpu::fpu_note`] with the memory operand (segment, offset) given.
    fn fpu_note_at(&mut self, ins: &Instruction, mem: Option<(usize, u32)>) {
        self.fpu_note_fop(fpu_opcode(ins), mem);
    }

    /// Records the last instruction's opcode `fop`, its address and its memory operand
    /// (segment, offset) if it has one.
    fn fpu_note_fop(&mut self, fop: u16, mem: Option<(usize, u32)>) {
        let mem = mem.map(|(seg, off)| (off, self.state.seg[seg % 6].selector));
        let fcs = self.state.seg[CS].selector;
        let f = &mut self.state.fpu;
        f.fop = fop;
        f.fip = self.cur_eip as u32;
        f.fcs = fcs;
        if let Some((off, sel)) = mem {
            f.fdp = off;
            f.fds = sel;
        }
    }

    /// Whether one of `ins`'s operands is in memory.
    pub fn has_mem(ins: &Instruction) -> bool {
        (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory)
    }

    /// Reads a numeric memory operand and widens it to extended precision. SNaNs stay
    /// signaling; the flags carry DE for a denormal single/double.
    fn fpu_read_operand(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<(F80, u16)> {
        let (seg, off) = self.mem_operand(ins);
        let size = ins.memory_size();
        Ok(match size {
            MemorySize::Float32 | MemorySize::Int16 | MemorySize::Int32 => {
                let v = self.read_mem(bus, seg, off, size.size() as u32)?;
                operand_from_bits(size, v as u64)
            }
            MemorySize::Float64 | MemorySize::Int64 => {
                let v = self.read_mem64(bus, seg, off)?;
                operand_from_bits(size, v)
            }
            MemorySize::Float80 => {
                let mut b = [0u8; 10];
                self.read_mem_bytes(bus, seg, off, &mut b)?;
                (F80::from_bytes(&b), 0)
            }
            MemorySize::Bcd => {
                let mut b = [0u8; 10];
                self.read_mem_bytes(bus, seg, off, &mut b)?;
                (bcd_to_f80(&b), 0)
            }
            _ => return Err(Exception::ud()),
        })
    }

    fn fpu_op(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        let m = ins.mnemonic();
        match m {
            // ---- control instructions (no FIP/FOP update) ----
            M::Fninit | M::Finit => {
                self.state.fpu.init();
                return Ok(());
            }
            M::Fnclex | M::Fclex => {
                self.state.fpu.status &= !(EXC | SF | ES | BUSY);
                return Ok(());
            }
            M::Fnstsw | M::Fstsw => {
                let sw = self.state.fpu.status;
                if ins.op_count() > 0 && ins.op_kind(0) == OpKind::Register {
                    self.state.set_reg16(EAX, sw);
                } else {
                    let (seg, off) = self.mem_operand(ins);
                    self.write_mem(bus, seg, off, 2, sw as u32)?;
                }
                return Ok(());
            }
            M::Fnstcw | M::Fstcw => {
                let (seg, off) = self.mem_operand(ins);
                let cw = self.state.fpu.control;
                self.write_mem(bus, seg, off, 2, cw as u32)?;
                return Ok(());
            }
            M::Fldcw => {
                let (seg, off) = self.mem_operand(ins);
                let cw = self.read_mem(bus, seg, off, 2)? as u16;
                let f = &mut self.state.fpu;
                f.control = (cw & 0x1F7F) | 0x0040;
                f.update_es();
                return Ok(());
            }
            M::Fnstenv | M::Fstenv => return self.fpu_stenv(bus, ins, false),
            M::Fnsave | M::Fsave => return self.fpu_stenv(bus, ins, true),
            M::Fldenv => return self.fpu_ldenv(bus, ins, false),
            M::Frstor => return self.fpu_ldenv(bus, ins, true),
            M::Fnsetpm | M::Fsetpm | M::Fneni | M::Feni | M::Fndisi | M::Fdisi => return Ok(()),
            M::Fisttp
            | M::Frstpm
            | M::Fstdw
            | M::Fstsg
            | M::Fnstdw
            | M::Fnstsg
            | M::Ftstp
            | M::Frint2
            | M::Frichop
            | M::Frinear => return Err(Exception::ud()),
            _ => {}
        }

        // Numeric instructions: read the memory operand first (a fault changes nothing),
        // then record the pointers.
        let is_store = matches!(
            m,
            M::Fst | M::Fstp | M::Fstpnce | M::Fist | M::Fistp | M::Fbstp
        );
        let mem = if Self::has_mem(ins) && !is_store {
            Some(self.fpu_read_operand(bus, ins)?)
        } else {
            None
        };
        self.fpu_note(ins);
        self.fpu_numeric(bus, ins, mem)
    }

    /// A numeric instruction after its memory operand (if a source: `mem`) was read
    /// and the pointers recorded.
    fn fpu_numeric(
        &mut self,
        bus: &mut dyn Bus,
        ins: &Instruction,
        mem: Option<(F80, u16)>,
    ) -> Res<()> {
        let m = ins.mnemonic();
        let ctx = self.state.fpu.ctx();
        match m {
            M::Fld => {
                if let Some((v, fl)) = mem {
                    self.fpu_load(v, fl, ins.memory_size() == MemorySize::Float80);
                } else {
                    let i = st_index(ins.op0_register());
                    let f = &mut self.state.fpu;
                    if f.is_empty(i) {
                        if f.underflow() {
                            f.push_checked(F80::INDEFINITE);
                        }
                    } else {
                        let v = f.st(i);
                        f.set_c1(false);
                        f.push_checked(v);
                    }
                }
            }
            M::Fild | M::Fbld => {
                let (v, _) = mem.unwrap_or((F80::INDEFINITE, 0));
                let f = &mut self.state.fpu;
                f.set_c1(false);
                f.push_checked(v);
            }
            M::Fld1 | M::Fldl2t | M::Fldl2e | M::Fldpi | M::Fldlg2 | M::Fldln2 | M::Fldz => {
                let v = constant(m, ctx.rc);
                let f = &mut self.state.fpu;
                f.set_c1(false);
                f.push_checked(v);
            }
            M::Fst | M::Fstp | M::Fstpnce => {
                let pop = store_pops(m);
                if Self::has_mem(ins) {
                    self.fpu_store(bus, ins, pop)?;
                } else {
                    let i = st_index(ins.op0_register());
                    let f = &mut self.state.fpu;
                    if f.is_empty(0) {
                        if f.underflow() {
                            f.set_st(i, F80::INDEFINITE);
                            if pop {
                                f.pop();
                            }
                        }
                    } else {
                        let v = f.st(0);
                        f.set_c1(false);
                        f.set_st(i, v);
                        if pop {
                            f.pop();
                        }
                    }
                }
            }
            M::Fist | M::Fistp | M::Fbstp => self.fpu_store(bus, ins, store_pops(m))?,
            M::Fxch => {
                let i = if ins.op_count() >= 2 {
                    st_index(ins.op1_register())
                } else if ins.op_count() == 1 {
                    st_index(ins.op0_register())
                } else {
                    1
                };
                let f = &mut self.state.fpu;
                if f.is_empty(0) || f.is_empty(i) {
                    if !f.underflow() {
                        return Ok(());
                    }
                    if f.is_empty(0) {
                        f.set_st(0, F80::INDEFINITE);
                    }
                    if f.is_empty(i) {
                        f.set_st(i, F80::INDEFINITE);
                    }
                } else {
                    f.set_c1(false);
                }
                let (a, b) = (f.st(0), f.st(i));
                f.set_st(0, b);
                f.set_st(i, a);
            }
            M::Fadd | M::Faddp | M::Fiadd => self.fpu_arith(ins, Arith::Add, mem, ctx),
            M::Fsub | M::Fsubp | M::Fisub => self.fpu_arith(ins, Arith::Sub, mem, ctx),
            M::Fsubr | M::Fsubrp | M::Fisubr => self.fpu_arith(ins, Arith::SubR, mem, ctx),
            M::Fmul | M::Fmulp | M::Fimul => self.fpu_arith(ins, Arith::Mul, mem, ctx),
            M::Fdiv | M::Fdivp | M::Fidiv => self.fpu_arith(ins, Arith::Div, mem, ctx),
            M::Fdivr | M::Fdivrp | M::Fidivr => self.fpu_arith(ins, Arith::DivR, mem, ctx),
            M::Fcom
            | M::Fcomp
            | M::Fcompp
            | M::Fucom
            | M::Fucomp
            | M::Fucompp
            | M::Ficom
            | M::Ficomp
            | M::Ftst => {
                let quiet = matches!(m, M::Fucom | M::Fucomp | M::Fucompp);
                let pops = match m {
                    M::Fcomp | M::Fucomp | M::Ficomp => 1,
                    M::Fcompp | M::Fucompp => 2,
                    _ => 0,
                };
                let src = if m == M::Ftst {
                    Some((F80::ZERO, 0))
                } else {
                    mem
                };
                self.fpu_compare(ins, src, quiet, pops, false);
            }
            M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip => {
                let quiet = matches!(m, M::Fucomi | M::Fucomip);
                let pops = matches!(m, M::Fcomip | M::Fucomip) as u32;
                self.fpu_compare(ins, None, quiet, pops, true);
            }
            M::Fxam => {
                let f = &mut self.state.fpu;
                let v = f.st(0);
                let cc = if f.is_empty(0) {
                    C3 | C0
                } else {
                    match v.class() {
                        Class::Unsupported => 0,
                        Class::QNan | Class::SNan => C0,
                        Class::Normal => C2,
                        Class::Inf => C2 | C0,
                        Class::Zero => C3,
                        Class::Denormal => C3 | C2,
                    }
                };
                f.set_cc(cc | if v.sign() { C1 } else { 0 });
            }
            M::Fchs | M::Fabs => {
                let f = &mut self.state.fpu;
                if f.is_empty(0) {
                    if f.underflow() {
                        f.set_st(0, F80::INDEFINITE);
                    }
                } else {
                    let v = f.st(0);
                    f.set_c1(false);
                    f.set_st(0, if m == M::Fchs { v.negate() } else { v.abs() });
                }
            }
            M::Fsqrt => self.fpu_unary(float::sqrt, ctx),
            M::Frndint => self.fpu_unary(|a, c| float::round_to_int(a, c.full()), ctx),
            M::Fscale => {
                if let Some((a, b)) = self.fpu_two() {
                    let (r, fl) = transcendental::fscale(a, b, ctx.full());
                    self.fpu_result(0, r, fl, false);
                }
            }
            M::Fxtract => self.fpu_fxtract(),
            M::Fprem | M::Fprem1 => {
                if let Some((a, b)) = self.fpu_two() {
                    let (r, fl, q, complete) = float::prem(a, b, m == M::Fprem1, ctx);
                    let f = &mut self.state.fpu;
                    if f.raise(fl) & NO_STORE == 0 {
                        f.set_st(0, r);
                        let cc = if complete {
                            (if q & 4 != 0 { C0 } else { 0 })
                                | (if q & 2 != 0 { C3 } else { 0 })
                                | (if q & 1 != 0 { C1 } else { 0 })
                        } else {
                            C2
                        };
                        f.set_cc(cc);
                    }
                } else {
                    self.state.fpu.status &= !C2;
                }
            }
            M::F2xm1 | M::Fsin | M::Fcos | M::Fptan | M::Fsincos => self.fpu_trig(m),
            M::Fyl2x | M::Fyl2xp1 | M::Fpatan => {
                if let Some((a, b)) = self.fpu_two_into(true) {
                    let (r, fl) = match m {
                        M::Fyl2x => transcendental::fyl2x(a, b, ctx),
                        M::Fyl2xp1 => transcendental::fyl2xp1(a, b, ctx),
                        _ => transcendental::fpatan(a, b, ctx),
                    };
                    self.fpu_result(1, r, fl, true);
                }
            }
            M::Fdecstp | M::Fincstp => {
                let f = &mut self.state.fpu;
                let t = if m == M::Fincstp {
                    f.top() + 1
                } else {
                    f.top().wrapping_sub(1)
                };
                f.set_top(t);
                f.set_c1(false);
            }
            M::Ffree | M::Ffreep => {
                let i = st_index(ins.op0_register());
                let f = &mut self.state.fpu;
                f.free(i);
                if m == M::Ffreep {
                    let t = f.top() + 1;
                    f.set_top(t);
                }
            }
            M::Fnop => {}
            M::Fcmovb
            | M::Fcmove
            | M::Fcmovbe
            | M::Fcmovu
            | M::Fcmovnb
            | M::Fcmovne
            | M::Fcmovnbe
            | M::Fcmovnu => {
                let fl = &self.state.flags;
                let cond = match m {
                    M::Fcmovb => fl.cf(),
                    M::Fcmove => fl.zf(),
                    M::Fcmovbe => fl.cf() || fl.zf(),
                    M::Fcmovu => fl.pf(),
                    M::Fcmovnb => !fl.cf(),
                    M::Fcmovne => !fl.zf(),
                    M::Fcmovnbe => !(fl.cf() || fl.zf()),
                    _ => !fl.pf(),
                };
                let i = if ins.op_count() >= 2 {
                    st_index(ins.op1_register())
                } else {
                    1
                };
                let f = &mut self.state.fpu;
                if f.is_empty(0) || f.is_empty(i) {
                    if f.underflow() && cond {
                        f.set_st(0, F80::INDEFINITE);
                    }
                } else {
                    f.set_c1(false);
                    if cond {
                        let v = f.st(i);
                        f.set_st(0, v);
                    }
                }
            }
            _ => return Err(Exception::ud()),
        }
        Ok(())
    }

    /// FLD m32/m64/m80 after the read.
    fn fpu_load(&mut self, v: F80, fl: u16, raw: bool) {
        let f = &mut self.state.fpu;
        let p = f.top().wrapping_sub(1) & 7;
        if (f.tag >> (2 * p)) & 3 != 3 {
            if f.overflow() {
                f.push(F80::INDEFINITE);
            }
            return;
        }
        let mut flags = fl;
        let mut v = v;
        if !raw && v.class() == Class::SNan {
            flags |= IE;
            v = v.quiet();
        }
        f.set_c1(false);
        if f.raise(flags) & NO_STORE == 0 {
            f.push(v);
        }
    }

    /// Writes a result to ST(dst) unless an unmasked IE/DE/ZE forbids it; C1 from the
    /// rounding; pops afterwards when `pop`.
    fn fpu_result(&mut self, dst: usize, r: F80, fl: u16, pop: bool) {
        let f = &mut self.state.fpu;
        f.set_c1(fl & C1 != 0);
        if f.raise(fl) & NO_STORE == 0 {
            f.set_st(dst, r);
            if pop {
                f.pop();
            }
        }
    }

    /// ST(0) and ST(1) for two-operand register instructions, or the underflow response
    /// (ST(0) = indefinite when masked) and None.
    fn fpu_two(&mut self) -> Option<(F80, F80)> {
        self.fpu_two_into(false)
    }

    /// Like [`Cpu::fpu_two`]; with `pop` the masked underflow response is ST(1) =
    /// indefinite and a pop (FYL2X, FYL2XP1, FPATAN).
    fn fpu_two_into(&mut self, pop: bool) -> Option<(F80, F80)> {
        let f = &mut self.state.fpu;
        if f.is_empty(0) || f.is_empty(1) {
            if f.underflow() {
                if pop {
                    f.set_st(1, F80::INDEFINITE);
                    f.pop();
                } else {
                    f.set_st(0, F80::INDEFINITE);
                }
            }
            return None;
        }
        Some((f.st(0), f.st(1)))
    }

    fn fpu_unary(&mut self, op: impl Fn(F80, Ctx) -> (F80, u16), ctx: Ctx) {
        let f = &mut self.state.fpu;
        if f.is_empty(0) {
            if f.underflow() {
                f.set_st(0, F80::INDEFINITE);
            }
            return;
        }
        let (r, fl) = op(f.st(0), ctx);
        self.fpu_result(0, r, fl, false);
    }

    fn fpu_arith(&mut self, ins: &Instruction, op: Arith, mem: Option<(F80, u16)>, ctx: Ctx) {
        let m = ins.mnemonic();
        let pop = matches!(
            m,
            M::Faddp | M::Fsubp | M::Fsubrp | M::Fmulp | M::Fdivp | M::Fdivrp
        );
        // dst = dst op src.
        let (dst, src, extra) = if let Some((v, fl)) = mem {
            (0, None, Some((v, fl)))
        } else if ins.op_count() >= 2 {
            (
                st_index(ins.op0_register()),
                Some(st_index(ins.op1_register())),
                None,
            )
        } else if ins.op_count() == 1 {
            (0, Some(st_index(ins.op0_register())), None)
        } else {
            (1, Some(0), None)
        };
        let f = &mut self.state.fpu;
        let empty = f.is_empty(dst) || src.is_some_and(|s| f.is_empty(s));
        if empty {
            if f.underflow() {
                f.set_st(dst, F80::INDEFINITE);
                if pop {
                    f.pop();
                }
            }
            return;
        }
        let a = f.st(dst);
        let (b, bfl) = match (src, extra) {
            (Some(s), _) => (f.st(s), 0),
            (None, Some(x)) => x,
            _ => (F80::INDEFINITE, 0),
        };
        let (r, fl) = match op {
            Arith::Add => float::add(a, b, false, ctx),
            Arith::Sub => float::add(a, b, true, ctx),
            Arith::SubR => float::add(b, a, true, ctx),
            Arith::Mul => float::mul(a, b, ctx),
            Arith::Div => float::div(a, b, ctx),
            Arith::DivR => float::div(b, a, ctx),
        };
        self.fpu_result(dst, r, fl | bfl, pop);
    }

    fn fpu_compare(
        &mut self,
        ins: &Instruction,
        mem: Option<(F80, u16)>,
        quiet: bool,
        pops: u32,
        eflags: bool,
    ) {
        let src = if mem.is_some() {
            None
        } else if ins.op_count() >= 2 {
            Some(st_index(ins.op1_register()))
        } else if ins.op_count() == 1 {
            Some(st_index(ins.op0_register()))
        } else {
            Some(1)
        };
        let f = &mut self.state.fpu;
        let empty = f.is_empty(0) || src.is_some_and(|s| f.is_empty(s));
        let (res, fl) = if empty {
            (Cmp::Unordered, IE | SF)
        } else {
            let a = f.st(0);
            let (b, bfl) = match src {
                Some(s) => (f.st(s), 0),
                None => mem.unwrap_or((F80::INDEFINITE, 0)),
            };
            let (r, fl) = float::compare(a, b, quiet);
            (r, fl | bfl)
        };
        if f.raise(fl) & NO_STORE != 0 {
            if empty {
                f.set_c1(false);
            }
            return;
        }
        if eflags {
            f.set_c1(false);
            let (zf, pf, cf) = match res {
                Cmp::Greater => (false, false, false),
                Cmp::Less => (false, false, true),
                Cmp::Equal => (true, false, false),
                Cmp::Unordered => (true, true, true),
            };
            use crate::flags as fx;
            let v = (if zf { fx::ZF } else { 0 })
                | (if pf { fx::PF } else { 0 })
                | (if cf { fx::CF } else { 0 });
            self.state.flags.set_arith(v);
        } else {
            f.set_cc(match res {
                Cmp::Greater => 0,
                Cmp::Less => C0,
                Cmp::Equal => C3,
                Cmp::Unordered => C3 | C2 | C0,
            });
        }
        let f = &mut self.state.fpu;
        for _ in 0..pops {
            f.pop();
        }
    }

    /// FST/FSTP/FIST/FISTP/FBSTP to memory.
    fn fpu_store(&mut self, bus: &mut dyn Bus, ins: &Instruction, pop: bool) -> Res<()> {
        let (seg, off) = self.mem_operand(ins);
        let (bytes, len, fl, c1) = self.fpu_store_value(ins.memory_size())?;
        let f = &mut self.state.fpu;
        f.set_c1(c1);
        if f.raise(fl) & NO_STORE_MEM != 0 {
            return Ok(());
        }
        self.write_mem_bytes(bus, seg, off, &bytes[..len])?;
        if pop {
            self.state.fpu.pop();
        }
        Ok(())
    }

    /// What FST(P)/FIST(P)/FBSTP write for ST0 as `size`: the bytes and their length,
    /// the exception flags raised and C1 (the indefinite with IE and SF for an empty
    /// ST0). Changes nothing.
    fn fpu_store_value(&self, size: MemorySize) -> Res<([u8; 10], usize, u16, bool)> {
        let f = &self.state.fpu;
        let ctx = f.ctx();
        let empty = f.is_empty(0);
        let v = if empty { F80::INDEFINITE } else { f.st(0) };
        let mut bytes = [0u8; 10];
        let (len, fl) = match size {
            MemorySize::Float32 => {
                let (b, fl) = float::to_ieee(v, float::SGL, ctx);
                bytes[..4].copy_from_slice(&(b as u32).to_le_bytes());
                (4, fl)
            }
            MemorySize::Float64 => {
                let (b, fl) = float::to_ieee(v, float::DBL, ctx);
                bytes[..8].copy_from_slice(&b.to_le_bytes());
                (8, fl)
            }
            MemorySize::Float80 => {
                bytes = v.to_bytes();
                (10, 0)
            }
            MemorySize::Int16 | MemorySize::Int32 | MemorySize::Int64 => {
                let n = size.size();
                let (i, fl) = float::to_int(v, n as u32 * 8, ctx);
                bytes[..8].copy_from_slice(&i.to_le_bytes());
                (n, fl)
            }
            MemorySize::Bcd => {
                let (b, fl) = f80_to_bcd(v, ctx);
                bytes = b;
                (10, fl)
            }
            _ => return Err(Exception::ud()),
        };
        Ok(if empty {
            (bytes, len, IE | SF, false)
        } else {
            (bytes, len, fl, fl & C1 != 0)
        })
    }

    fn fpu_fxtract(&mut self) {
        let f = &mut self.state.fpu;
        if f.is_empty(0) {
            if f.underflow() {
                f.set_st(0, F80::INDEFINITE);
                f.push_checked(F80::INDEFINITE);
            }
            return;
        }
        let p = f.top().wrapping_sub(1) & 7;
        if (f.tag >> (2 * p)) & 3 != 3 {
            if f.overflow() {
                f.set_st(0, F80::INDEFINITE);
                f.push(F80::INDEFINITE);
            }
            return;
        }
        let a = f.st(0);
        let (e, s, fl) = match a.class() {
            Class::Unsupported => (F80::INDEFINITE, F80::INDEFINITE, IE),
            Class::SNan => (a.quiet(), a.quiet(), IE),
            Class::QNan => (a, a, 0),
            Class::Zero => (F80::inf(true), a, ZE),
            Class::Inf => (F80::inf(false), a, 0),
            c => {
                let (sign, e, m) = a.unpack();
                (
                    float::from_i64((e - float::BIAS) as i64),
                    F80::new(sign, 0x3FFF, m),
                    if c == Class::Denormal { DE } else { 0 },
                )
            }
        };
        f.set_c1(false);
        if f.raise(fl) & NO_STORE == 0 {
            f.set_st(0, e);
            f.push(s);
        }
    }

    fn fpu_trig(&mut self, m: M) {
        let f = &mut self.state.fpu;
        if f.is_empty(0) {
            if f.underflow() {
                f.set_st(0, F80::INDEFINITE);
                if matches!(m, M::Fptan | M::Fsincos) {
                    f.push_checked(F80::INDEFINITE);
                }
            }
            return;
        }
        let two = matches!(m, M::Fptan | M::Fsincos);
        if two {
            let p = f.top().wrapping_sub(1) & 7;
            if (f.tag >> (2 * p)) & 3 != 3 {
                if f.overflow() {
                    f.set_st(0, F80::INDEFINITE);
                    f.push(F80::INDEFINITE);
                }
                return;
            }
        }
        let a = f.st(0);
        let ctx = f.ctx();
        if m == M::F2xm1 {
            let (r, fl) = transcendental::f2xm1(a, ctx);
            self.fpu_result(0, r, fl, false);
            return;
        }
        // Argument range: |x| >= 2^63 leaves the operand unchanged with C2 = 1.
        if transcendental::out_of_range(a) {
            f.status |= C2;
            return;
        }
        let (r0, r1, fl) = transcendental::trig(m, a, ctx);
        f.status &= !C2;
        f.set_c1(fl & C1 != 0);
        if f.raise(fl) & NO_STORE == 0 {
            f.set_st(0, r0);
            if let Some(v) = r1 {
                f.push(v);
            }
        }
    }
}

/// Constants, rounded per RC like a P6 (the stored 66-bit values rounded to 64 bits).
fn constant(m: M, rc: u8) -> F80 {
    // (exponent, 64-bit truncated significand, whether the discarded bits exceed half,
    // nonzero tail)
    let (e, sig, above_half) = match m {
        M::Fld1 => return F80::ONE,
        M::Fldz => return F80::ZERO,
        M::Fldl2t => (0x4000, 0xD49A_784B_CD1B_8AFE_u64, false),
        M::Fldl2e => (0x3FFF, 0xB8AA_3B29_5C17_F0BB, true),
        M::Fldpi => (0x4000, 0xC90F_DAA2_2168_C234, true),
        M::Fldlg2 => (0x3FFD, 0x9A20_9A84_FBCF_F798, true),
        _ => (0x3FFE, 0xB172_17F7_D1CF_79AB, true), // ln 2
    };
    let up = match rc {
        0 => above_half,
        2 => true,
        _ => false,
    };
    F80::new(false, e, sig + up as u64)
}

/// Packed BCD (18 digits + sign byte) to extended; exact.
fn bcd_to_f80(b: &[u8; 10]) -> F80 {
    let mut v: i64 = 0;
    for i in (0..9).rev() {
        let hi = (b[i] >> 4) as i64;
        let lo = (b[i] & 0xF) as i64;
        v = v.wrapping_mul(100).wrapping_add(hi * 10 + lo);
    }
    let r = float::from_i64(v);
    if b[9] & 0x80 != 0 {
        r.negate()
    } else {
        r
    }
}

/// FBSTP conversion: round per RC; |value| >= 10^18 or NaN → IE and the BCD indefinite.
fn f80_to_bcd(v: F80, ctx: Ctx) -> ([u8; 10], u16) {
    let mut indef = [0u8; 10];
    indef[7] = 0xC0;
    indef[8] = 0xFF;
    indef[9] = 0xFF;
    let (i, fl) = float::to_int(v, 64, ctx);
    if fl & IE != 0 || i.unsigned_abs() >= 1_000_000_000_000_000_000 {
        return (indef, IE | (fl & DE));
    }
    let mut mag = i.unsigned_abs();
    let mut out = [0u8; 10];
    for byte in out.iter_mut().take(9) {
        let lo = (mag % 10) as u8;
        mag /= 10;
        let hi = (mag % 10) as u8;
        mag /= 10;
        *byte = (hi << 4) | lo;
    }
    if v.sign() {
        out[9] = 0x80;
    }
    (out, fl)
}
