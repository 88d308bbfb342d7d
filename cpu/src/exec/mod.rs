//! The interpreter: the run loop, interrupt and exception delivery, and the operand
//! helpers every instruction implementation uses.

mod int;
pub use int::{set_mul_flags, shift};
mod string;

use crate::exception::{self, Exception, Res};
use crate::flags::{self, AC, IF, TF};
use crate::mem::Bus;
use crate::state::{Segment, CS, ESP, SS};
use crate::Cpu;
use iced_x86::{Instruction, OpKind, Register};

/// Why [`Cpu::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The instruction budget is used up.
    Budget,
    /// HLT with no interrupt pending: the machine should skip to its next event.
    Halted,
    /// A triple fault: the machine resets or stops.
    Shutdown,
}

/// A decoded operand location, computed once for read-modify-write instructions.
#[derive(Clone, Copy, Debug)]
pub enum Loc {
    Reg(Register),
    Mem { seg: usize, off: u32 },
}

/// True if a P6 accepts LOCK on this instruction: a read-modify-write with a memory
/// destination. (The interpreter runs LOCK as no prefix at all: one CPU has no one to
/// lock the bus against; it does not raise #UD where a P6 would.)
pub fn lockable(ins: &Instruction) -> bool {
    use iced_x86::Mnemonic as M;
    ins.op0_kind() == OpKind::Memory
        && matches!(
            ins.mnemonic(),
            M::Add
                | M::Adc
                | M::And
                | M::Btc
                | M::Btr
                | M::Bts
                | M::Cmpxchg
                | M::Cmpxchg8b
                | M::Dec
                | M::Inc
                | M::Neg
                | M::Not
                | M::Or
                | M::Sbb
                | M::Sub
                | M::Xor
                | M::Xadd
                | M::Xchg
        )
}

#[inline]
pub fn size_mask(size: u32) -> u32 {
    if size >= 4 {
        u32::MAX
    } else {
        (1u32 << (size * 8)) - 1
    }
}

#[inline]
pub fn sign_extend(v: u32, size: u32) -> u32 {
    match size {
        1 => v as u8 as i8 as i32 as u32,
        2 => v as u16 as i16 as i32 as u32,
        _ => v,
    }
}

/// Index of a segment register (ES=0 ... GS=5).
#[inline]
pub fn seg_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ES as usize)
}

/// Another execution tier (the JIT): offered each block before the interpreter runs it.
pub trait BlockRunner {
    /// Runs `block`, which starts at the current CS:EIP, and returns true; or returns
    /// false, having changed nothing, to let the interpreter run it. A runner that takes
    /// a block must leave the CPU exactly as the interpreter would: the same
    /// instructions executed and counted (never past `end`, the instruction count the
    /// run must stop at), and the same state.
    fn run_block(
        &mut self,
        cpu: &mut Cpu,
        bus: &mut dyn Bus,
        block: &std::rc::Rc<crate::block::Block>,
        end: u64,
    ) -> bool;
}

impl Cpu {
    /// Runs at most `budget` instructions. Returns early on HLT or shutdown.
    pub fn run(&mut self, bus: &mut dyn Bus, budget: u64) -> Exit {
        self.run_with(bus, budget, None)
    }

    /// [`Cpu::run`], offering every block to `runner` first.
    pub fn run_with(
        &mut self,
        bus: &mut dyn Bus,
        budget: u64,
        mut runner: Option<&mut dyn BlockRunner>,
    ) -> Exit {
        let end = self.state.icount.saturating_add(budget);
        self.budget_end = end;
        while self.state.icount < end {
            if self.shutdown {
                return Exit::Shutdown;
            }
            if self.check_irq {
                if bus.stop_requested() {
                    break;
                }
                self.poll_interrupts(bus);
            }
            if self.state.halted {
                return Exit::Halted;
            }
            let block = match self.fetch_block(bus) {
                Ok(b) => b,
                Err(e) => {
                    self.cur_eip = self.state.rip;
                    self.deliver_exception(bus, e);
                    continue;
                }
            };
            let base = self.state.rip;
            self.end_block = false;
            // A block holding a debugger's breakpoint is interpreted, checked before
            // each instruction; others run as usual (the debugger flushed compiled code
            // when it set the breakpoints, and the JIT compiles only blocks it is given).
            let breakpoints = !self.breakpoints.is_empty() && self.holds_breakpoint(&block, base);
            if let Some(r) = runner.as_deref_mut().filter(|_| !breakpoints) {
                if r.run_block(self, bus, &block, end) {
                    continue;
                }
            }
            for ins in block.instrs.iter() {
                if self.state.icount >= end {
                    break;
                }
                if breakpoints && self.stops_at(base.wrapping_add(ins.ip())) {
                    self.breakpoint_hit = true;
                    return Exit::Budget;
                }
                if !self.step_one(bus, ins, base) || self.end_block || self.check_irq {
                    break;
                }
            }
        }
        if self.shutdown {
            Exit::Shutdown
        } else {
            Exit::Budget
        }
    }

    /// Whether a debugger's breakpoint lies in `block`, starting at `base`.
    #[cold]
    fn holds_breakpoint(&self, block: &crate::block::Block, base: u64) -> bool {
        let (Some(first), Some(last)) = (block.instrs.first(), block.instrs.last()) else {
            return false;
        };
        let cs = self.state.seg[CS].base;
        let lin = |ip: u64| cs.wrapping_add(base.wrapping_add(ip) & 0xFFFF_FFFF) & 0xFFFF_FFFF;
        let (start, end) = (lin(first.ip()), lin(last.ip() + last.len() as u64));
        self.breakpoints.iter().any(|&b| {
            if start <= end {
                (start..end).contains(&b)
            } else {
                b >= start || b < end
            }
        })
    }

    /// Whether a debugger's breakpoint is at `eip` (now).
    #[cold]
    fn stops_at(&self, eip: u64) -> bool {
        let lin = self.state.seg[CS].base.wrapping_add(eip & 0xFFFF_FFFF) & 0xFFFF_FFFF;
        self.state.icount != self.breakpoint_pass && self.breakpoints.contains(&lin)
    }

    /// Executes one instruction. Returns false if control left the straight-line path
    /// (a taken branch, an exception), so the block must not go on.
    #[inline]
    pub fn step_one(&mut self, bus: &mut dyn Bus, ins: &Instruction, base: u64) -> bool {
        let eip = (base + ins.ip()) & 0xFFFF_FFFF;
        if eip != self.state.rip {
            return false;
        }
        self.cur_eip = eip;
        let end = eip + ins.len() as u64;
        // 16-bit code wraps IP at 64 KiB (the instruction itself must still fit the limit).
        let next = if ins.code_size() == iced_x86::CodeSize::Code16 {
            end & 0xFFFF
        } else {
            end & 0xFFFF_FFFF
        };
        let cs_limit = self.state.seg[CS].limit as u64;
        let saved_esp = self.state.gpr[ESP];
        let shadow = self.state.irq_shadow;
        self.state.irq_shadow = false;
        let tf = self.state.flags.bits & TF != 0;
        let result = if end - 1 > cs_limit {
            Err(Exception::gp0())
        } else {
            self.state.rip = next;
            self.exec(bus, ins)
        };
        match result {
            Ok(()) => {
                self.state.icount += 1;
                if shadow {
                    // The instruction after STI / MOV SS has run: interrupts may be due.
                    self.check_irq = true;
                }
                if tf && !self.state.irq_shadow {
                    self.state.dr[6] |= 1 << 14;
                    self.deliver_exception_trap(bus, exception::DB);
                    return false;
                }
                self.state.rip == next
            }
            Err(e) => {
                self.state.gpr[ESP] = saved_esp;
                self.state.rip = eip;
                self.deliver_exception(bus, e);
                false
            }
        }
    }

    /// Delivers a pending external interrupt if IF allows it.
    fn poll_interrupts(&mut self, bus: &mut dyn Bus) {
        if self.state.irq_shadow {
            return;
        }
        self.check_irq = false;
        if self.state.flags.bits & IF != 0 && bus.intr_pending() {
            let vector = bus.intr_ack();
            self.state.halted = false;
            self.cur_eip = self.state.rip;
            let ret = self.state.rip;
            if let Err(e) = self.interrupt(bus, vector, None, false, true, ret) {
                self.deliver_exception(bus, e);
            }
            // Another interrupt may be pending behind this one; it waits for IF again.
            self.check_irq = true;
        }
    }

    /// Delivers a fault. Nested faults during delivery follow the double-fault rules;
    /// a fault while delivering #DF shuts the CPU down.
    ///
    /// Delivering takes one tick of the clock, as an instruction does: a guest whose
    /// exception handler itself faults (an endless exception loop) still lets virtual
    /// time pass, so budgets run out, devices get their turn and the host stays in control.
    pub(crate) fn deliver_exception(&mut self, bus: &mut dyn Bus, e: Exception) {
        self.state.icount += 1;
        let mut cur = e;
        for _ in 0..4 {
            let ret = self.cur_eip;
            match self.interrupt(bus, cur.vector, cur.error, false, false, ret) {
                Ok(()) => {
                    self.state.halted = false;
                    return;
                }
                Err(next) => {
                    if cur.vector == exception::DF {
                        break;
                    }
                    let df = (Exception::is_contributory(cur.vector)
                        && Exception::is_contributory(next.vector))
                        || (cur.vector == exception::PF
                            && (Exception::is_contributory(next.vector)
                                || next.vector == exception::PF));
                    cur = if df {
                        Exception::with_code(exception::DF, 0)
                    } else {
                        next
                    };
                }
            }
        }
        log::debug!("triple fault at {:#x}", self.cur_eip);
        self.shutdown = true;
    }

    /// Delivers a trap (the return address is the next instruction).
    fn deliver_exception_trap(&mut self, bus: &mut dyn Bus, vector: u8) {
        let ret = self.state.rip;
        if let Err(e) = self.interrupt(bus, vector, None, false, false, ret) {
            self.deliver_exception(bus, e);
        }
    }

    /// Transfers control through the IVT (real mode) or the IDT (protected mode).
    /// `soft` is INT n / INT3 / INTO (privilege-checked against the gate's DPL);
    /// `ext` is an external interrupt. `ret` is the EIP to return to.
    pub(crate) fn interrupt(
        &mut self,
        bus: &mut dyn Bus,
        vector: u8,
        error: Option<u32>,
        soft: bool,
        ext: bool,
        ret: u64,
    ) -> Res<()> {
        if self.state.protected() {
            return self.interrupt_protected(bus, vector, error, soft, ext, ret);
        }
        let off = vector as u32 * 4;
        if off + 3 > self.state.idtr.limit {
            return Err(Exception::gp(vector as u32 * 8 + 2));
        }
        let base = self.state.idtr.base + off as u64;
        let ip = self.read_lin(bus, base, 2, false)?;
        let cs = self.read_lin(bus, base + 2, 2, false)?;
        let fl = self.state.flags.get();
        let old_cs = self.state.seg[CS].selector as u32;
        self.push(bus, 2, fl)?;
        self.push(bus, 2, old_cs)?;
        self.push(bus, 2, ret as u32)?;
        self.state.flags.set(fl & !(IF | TF | AC));
        self.load_seg_real(CS, cs as u16);
        self.state.rip = ip as u64;
        Ok(())
    }

    // ---- registers ----

    #[inline]
    pub fn get_reg(&self, r: Register) -> u32 {
        let n = r as usize;
        if (Register::EAX as usize..=Register::R15D as usize).contains(&n) {
            self.state.gpr[n - Register::EAX as usize] as u32
        } else if (Register::AX as usize..=Register::R15W as usize).contains(&n) {
            self.state.gpr[n - Register::AX as usize] as u16 as u32
        } else if (Register::AL as usize..=Register::BH as usize).contains(&n) {
            self.state.reg8(n - Register::AL as usize) as u32
        } else if (Register::ES as usize..=Register::GS as usize).contains(&n) {
            self.state.seg[n - Register::ES as usize].selector as u32
        } else {
            0
        }
    }

    /// Writes a general register (32-bit writes clear nothing above bit 31 in this model).
    #[inline]
    pub fn set_reg(&mut self, r: Register, v: u32) {
        let n = r as usize;
        if (Register::EAX as usize..=Register::R15D as usize).contains(&n) {
            self.state.gpr[n - Register::EAX as usize] = v as u64;
        } else if (Register::AX as usize..=Register::R15W as usize).contains(&n) {
            self.state.set_reg16(n - Register::AX as usize, v as u16);
        } else if (Register::AL as usize..=Register::BH as usize).contains(&n) {
            self.state.set_reg8(n - Register::AL as usize, v as u8);
        }
    }

    // ---- memory operands ----

    /// Whether an instruction's memory operand uses 16-bit addressing.
    #[inline]
    pub fn addr16(ins: &Instruction) -> bool {
        let b = ins.memory_base();
        let i = ins.memory_index();
        if b != Register::None {
            return (Register::AX..=Register::R15W).contains(&b);
        }
        if i != Register::None {
            return (Register::AX..=Register::R15W).contains(&i);
        }
        ins.memory_displ_size() == 2
    }

    /// Effective address (offset within the segment) of the memory operand.
    #[inline]
    pub fn ea(&self, ins: &Instruction) -> u32 {
        let mut a = ins.memory_displacement32();
        let b = ins.memory_base();
        if b != Register::None {
            a = a.wrapping_add(self.get_reg(b));
        }
        let i = ins.memory_index();
        if i != Register::None {
            a = a.wrapping_add(self.get_reg(i) << ins.memory_index_scale().trailing_zeros());
        }
        if Self::addr16(ins) {
            a & 0xFFFF
        } else {
            a
        }
    }

    /// Segment index and offset of the memory operand.
    #[inline]
    pub fn mem_operand(&self, ins: &Instruction) -> (usize, u32) {
        (seg_index(ins.memory_segment()), self.ea(ins))
    }

    /// Segment limit and type checks; returns the linear address.
    #[inline]
    pub fn seg_lin(&self, seg: usize, off: u32, size: u32, write: bool) -> Res<u64> {
        let s = &self.state.seg[seg];
        let last = off.wrapping_add(size - 1);
        let fault = || {
            if seg == SS {
                Exception::ss(0)
            } else {
                Exception::gp0()
            }
        };
        if self.state.protected() && !self.state.v86() {
            if !s.present() {
                return Err(fault());
            }
            // Code segments are never writable and readable only with R; data segments are
            // always readable and writable only with W.
            let ok = if s.attr & crate::state::ATTR_CODE != 0 {
                !write && s.attr & crate::state::ATTR_RW != 0
            } else {
                !write || s.attr & crate::state::ATTR_RW != 0
            };
            if !ok {
                return Err(fault());
            }
            if s.attr & (crate::state::ATTR_CODE | crate::state::ATTR_DC) == crate::state::ATTR_DC {
                let upper = if s.big() { u32::MAX } else { 0xFFFF };
                if off <= s.limit || last > upper || last < off {
                    return Err(fault());
                }
                return Ok((s.base + off as u64) & 0xFFFF_FFFF);
            }
        }
        if last < off || last > s.limit {
            return Err(fault());
        }
        Ok((s.base + off as u64) & 0xFFFF_FFFF)
    }

    #[inline]
    pub fn user(&self) -> bool {
        self.state.cpl == 3
    }

    /// Reads 1, 2 or 4 bytes at seg:off.
    #[inline]
    pub fn read_mem(&mut self, bus: &mut dyn Bus, seg: usize, off: u32, size: u32) -> Res<u32> {
        let lin = self.seg_lin(seg, off, size, false)?;
        let user = self.user();
        self.read_lin(bus, lin, size, user)
    }

    /// Writes 1, 2 or 4 bytes at seg:off.
    #[inline]
    pub fn write_mem(
        &mut self,
        bus: &mut dyn Bus,
        seg: usize,
        off: u32,
        size: u32,
        v: u32,
    ) -> Res<()> {
        let lin = self.seg_lin(seg, off, size, true)?;
        let user = self.user();
        self.write_lin(bus, lin, size, v, user)
    }

    /// Reads 8 bytes at seg:off (CMPXCHG8B, x87 doubles).
    pub fn read_mem64(&mut self, bus: &mut dyn Bus, seg: usize, off: u32) -> Res<u64> {
        let lin = self.seg_lin(seg, off, 8, false)?;
        let user = self.user();
        let lo = self.read_lin(bus, lin, 4, user)?;
        let hi = self.read_lin(bus, (lin + 4) & 0xFFFF_FFFF, 4, user)?;
        Ok(lo as u64 | ((hi as u64) << 32))
    }

    /// Writes 8 bytes at seg:off, checking both halves before writing either.
    pub fn write_mem64(&mut self, bus: &mut dyn Bus, seg: usize, off: u32, v: u64) -> Res<()> {
        let lin = self.seg_lin(seg, off, 8, true)?;
        let user = self.user();
        self.probe_write(lin, 8, user)?;
        self.write_lin(bus, lin, 4, v as u32, user)?;
        self.write_lin(bus, (lin + 4) & 0xFFFF_FFFF, 4, (v >> 32) as u32, user)
    }

    /// Reads `buf.len()` bytes at seg:off (x87 80-bit values, environments).
    pub fn read_mem_bytes(
        &mut self,
        bus: &mut dyn Bus,
        seg: usize,
        off: u32,
        buf: &mut [u8],
    ) -> Res<()> {
        let lin = self.seg_lin(seg, off, buf.len() as u32, false)?;
        let user = self.user();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.read_lin(bus, (lin + i as u64) & 0xFFFF_FFFF, 1, user)? as u8;
        }
        Ok(())
    }

    /// Writes bytes at seg:off, checking the whole range before writing any.
    pub fn write_mem_bytes(
        &mut self,
        bus: &mut dyn Bus,
        seg: usize,
        off: u32,
        data: &[u8],
    ) -> Res<()> {
        let lin = self.seg_lin(seg, off, data.len() as u32, true)?;
        let user = self.user();
        self.probe_write(lin, data.len() as u32, user)?;
        for (i, &b) in data.iter().enumerate() {
            self.write_lin(bus, (lin + i as u64) & 0xFFFF_FFFF, 1, b as u32, user)?;
        }
        Ok(())
    }

    // ---- operands ----

    /// Size in bytes of operand `i`.
    #[inline]
    pub fn op_size(ins: &Instruction, i: u32) -> u32 {
        match ins.op_kind(i) {
            OpKind::Register => ins.op_register(i).size() as u32,
            OpKind::Memory => ins.memory_size().size() as u32,
            OpKind::Immediate8 => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            _ => 4,
        }
    }

    #[inline]
    pub fn loc(&self, ins: &Instruction, i: u32) -> Loc {
        match ins.op_kind(i) {
            OpKind::Register => Loc::Reg(ins.op_register(i)),
            _ => {
                let (seg, off) = self.mem_operand(ins);
                Loc::Mem { seg, off }
            }
        }
    }

    #[inline]
    pub fn read_loc(&mut self, bus: &mut dyn Bus, loc: Loc, size: u32) -> Res<u32> {
        match loc {
            Loc::Reg(r) => Ok(self.get_reg(r)),
            Loc::Mem { seg, off } => self.read_mem(bus, seg, off, size),
        }
    }

    #[inline]
    pub fn write_loc(&mut self, bus: &mut dyn Bus, loc: Loc, size: u32, v: u32) -> Res<()> {
        match loc {
            Loc::Reg(r) => {
                self.set_reg(r, v);
                Ok(())
            }
            Loc::Mem { seg, off } => self.write_mem(bus, seg, off, size, v),
        }
    }

    /// Reads operand `i` (register, memory or immediate), zero-extended.
    #[inline]
    pub fn read_op(&mut self, bus: &mut dyn Bus, ins: &Instruction, i: u32) -> Res<u32> {
        match ins.op_kind(i) {
            OpKind::Register => Ok(self.get_reg(ins.op_register(i))),
            OpKind::Memory => {
                let (seg, off) = self.mem_operand(ins);
                self.read_mem(bus, seg, off, ins.memory_size().size() as u32)
            }
            _ => Ok(ins.immediate(i) as u32),
        }
    }

    #[inline]
    pub fn write_op(&mut self, bus: &mut dyn Bus, ins: &Instruction, i: u32, v: u32) -> Res<()> {
        let loc = self.loc(ins, i);
        let size = Self::op_size(ins, i);
        self.write_loc(bus, loc, size, v)
    }

    // ---- stack ----

    #[inline]
    pub fn sp_mask(&self) -> u32 {
        if self.state.stack32() {
            u32::MAX
        } else {
            0xFFFF
        }
    }

    #[inline]
    pub fn set_sp(&mut self, v: u32) {
        if self.state.stack32() {
            self.state.gpr[ESP] = v as u64;
        } else {
            self.state.set_reg16(ESP, v as u16);
        }
    }

    #[inline]
    pub fn push(&mut self, bus: &mut dyn Bus, size: u32, v: u32) -> Res<()> {
        let sp = (self.state.gpr[ESP] as u32).wrapping_sub(size) & self.sp_mask();
        self.write_mem(bus, SS, sp, size, v)?;
        self.set_sp(sp);
        Ok(())
    }

    #[inline]
    pub fn pop(&mut self, bus: &mut dyn Bus, size: u32) -> Res<u32> {
        let sp = self.state.gpr[ESP] as u32 & self.sp_mask();
        let v = self.read_mem(bus, SS, sp, size)?;
        self.set_sp(sp.wrapping_add(size));
        Ok(v)
    }

    /// Reads the stack at ESP + `offset` without popping.
    pub fn stack_read(&mut self, bus: &mut dyn Bus, offset: u32, size: u32) -> Res<u32> {
        let sp = (self.state.gpr[ESP] as u32).wrapping_add(offset) & self.sp_mask();
        self.read_mem(bus, SS, sp, size)
    }

    // ---- segments in real and V86 mode ----

    /// Loads a segment register the real-mode way: base = selector * 16. The limit and
    /// attributes stay as they were in real mode ("unreal" mode relies on it); V86 mode
    /// forces the V86 values.
    pub fn load_seg_real(&mut self, seg: usize, sel: u16) {
        let s = &mut self.state.seg[seg];
        if self.state.flags.bits & flags::VM != 0 {
            let code = if seg == CS {
                crate::state::ATTR_CODE
            } else {
                0
            };
            *s = Segment::real(
                sel,
                crate::state::ATTR_P
                    | crate::state::ATTR_S
                    | crate::state::ATTR_RW
                    | crate::state::ATTR_ACCESSED
                    | (3 << 5)
                    | code,
            );
        } else {
            s.selector = sel;
            s.base = (sel as u64) << 4;
            if seg == CS {
                // Real mode keeps CS as a 16-bit, present, readable code segment.
                s.attr =
                    (s.attr & !crate::state::ATTR_DB) | crate::state::ATTR_P | crate::state::ATTR_S;
            }
        }
        if seg == CS {
            self.end_block = true;
        }
    }

    /// Loads a data or stack segment register (MOV, POP, LDS, ...), by the rules of the
    /// current mode.
    pub fn load_seg(&mut self, bus: &mut dyn Bus, seg: usize, sel: u16) -> Res<()> {
        if !self.state.protected() || self.state.v86() {
            self.load_seg_real(seg, sel);
            Ok(())
        } else {
            self.load_seg_protected(bus, seg, sel)
        }
    }

    /// Sets EFLAGS as POPF/IRET do, applying the mode's rules on which bits may change.
    pub fn write_flags_checked(&mut self, v: u32, size: u32) {
        let cur = self.state.flags.get();
        let mut writable = flags::ARITH | TF | flags::DF | flags::NT | AC | flags::ID;
        if self.state.protected() {
            if self.state.cpl <= self.state.flags.iopl() {
                writable |= IF;
            }
            if self.state.cpl == 0 {
                writable |= flags::IOPL;
            }
        } else {
            writable |= IF | flags::IOPL;
        }
        if size == 2 {
            writable &= 0xFFFF;
        }
        self.state.flags.set((cur & !writable) | (v & writable));
        self.check_irq = true;
    }
}
