//! Integer instructions: data movement, arithmetic, logic, shifts, bit operations, BCD,
//! control transfer, and the dispatch to string, system and x87 instructions.

use super::{sign_extend, size_mask, Loc};
use crate::exception::{self, Exception, Res};
use crate::flags::{self, parity, FlagOp, Flags, AF, CF, OF, PF, SF, ZF};
use crate::mem::Bus;
use crate::state::{CS, EAX, EBP, EBX, ECX, EDX, ESP, SS};
use crate::Cpu;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

#[inline]
fn szp(r: u32, size: u32) -> u32 {
    let r = r & size_mask(size);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if r & (1 << (size * 8 - 1)) != 0 {
        f |= SF;
    }
    if parity(r) {
        f |= PF;
    }
    f
}

impl Cpu {
    pub(crate) fn exec(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        use Mnemonic as M;
        match ins.mnemonic() {
            M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let a = self.read_loc(bus, loc, size)?;
                let b = self.read_op(bus, ins, 1)? & size_mask(size);
                let r = self.alu(ins.mnemonic(), size, a, b);
                self.write_loc(bus, loc, size, r)
            }
            M::Cmp | M::Test => {
                let size = Self::op_size(ins, 0);
                let a = self.read_op(bus, ins, 0)?;
                let b = self.read_op(bus, ins, 1)? & size_mask(size);
                self.alu(ins.mnemonic(), size, a, b);
                Ok(())
            }
            M::Inc | M::Dec => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let a = self.read_loc(bus, loc, size)?;
                let (r, op) = if ins.mnemonic() == M::Inc {
                    (a.wrapping_add(1), FlagOp::Inc)
                } else {
                    (a.wrapping_sub(1), FlagOp::Dec)
                };
                self.write_loc(bus, loc, size, r & size_mask(size))?;
                self.state.flags.set_lazy(op, size as u8, a, 1, r);
                Ok(())
            }
            M::Neg => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let a = self.read_loc(bus, loc, size)?;
                let r = 0u32.wrapping_sub(a) & size_mask(size);
                self.write_loc(bus, loc, size, r)?;
                self.state.flags.set_lazy(FlagOp::Sub, size as u8, 0, a, r);
                Ok(())
            }
            M::Not => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let a = self.read_loc(bus, loc, size)?;
                self.write_loc(bus, loc, size, !a & size_mask(size))
            }
            M::Mov => self.exec_mov(bus, ins),
            M::Movzx => {
                let v = self.read_op(bus, ins, 1)?;
                self.write_op(bus, ins, 0, v)
            }
            M::Movsx => {
                let v = self.read_op(bus, ins, 1)?;
                let s = Self::op_size(ins, 1);
                self.write_op(bus, ins, 0, sign_extend(v, s))
            }
            M::Lea => {
                let v = self.ea(ins);
                self.write_op(bus, ins, 0, v)
            }
            M::Xchg => {
                let size = Self::op_size(ins, 0);
                let l0 = self.loc(ins, 0);
                let l1 = self.loc(ins, 1);
                let a = self.read_loc(bus, l0, size)?;
                let b = self.read_loc(bus, l1, size)?;
                // Memory first, so a fault leaves the registers untouched.
                if let Loc::Mem { .. } = l1 {
                    self.write_loc(bus, l1, size, a)?;
                    self.write_loc(bus, l0, size, b)
                } else {
                    self.write_loc(bus, l0, size, b)?;
                    self.write_loc(bus, l1, size, a)
                }
            }
            M::Cmpxchg => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let dst = self.read_loc(bus, loc, size)?;
                let acc = self.state.gpr[EAX] as u32 & size_mask(size);
                let src = self.read_op(bus, ins, 1)?;
                if acc == dst {
                    self.write_loc(bus, loc, size, src)?;
                } else {
                    // The destination is always written (locked cycle), then the accumulator.
                    self.write_loc(bus, loc, size, dst)?;
                    self.set_acc(size, dst);
                }
                self.state
                    .flags
                    .set_lazy(FlagOp::Sub, size as u8, acc, dst, acc.wrapping_sub(dst));
                Ok(())
            }
            M::Cmpxchg8b => {
                let (seg, off) = self.mem_operand(ins);
                let v = self.read_mem64(bus, seg, off)?;
                let edx_eax =
                    (self.state.gpr[EDX] as u32 as u64) << 32 | self.state.gpr[EAX] as u32 as u64;
                if v == edx_eax {
                    let n = (self.state.gpr[ECX] as u32 as u64) << 32
                        | self.state.gpr[EBX] as u32 as u64;
                    self.write_mem64(bus, seg, off, n)?;
                    self.state.flags.set_bit(ZF, true);
                } else {
                    self.write_mem64(bus, seg, off, v)?;
                    self.state.gpr[EAX] = v as u32 as u64;
                    self.state.gpr[EDX] = v >> 32;
                    self.state.flags.set_bit(ZF, false);
                }
                Ok(())
            }
            M::Xadd => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let a = self.read_loc(bus, loc, size)?;
                let b = self.read_op(bus, ins, 1)?;
                let r = a.wrapping_add(b) & size_mask(size);
                self.write_loc(bus, loc, size, r)?;
                self.write_op(bus, ins, 1, a)?;
                self.state.flags.set_lazy(FlagOp::Add, size as u8, a, b, r);
                Ok(())
            }
            M::Bswap => {
                let v = self.read_op(bus, ins, 0)?;
                if Self::op_size(ins, 0) == 2 {
                    // Undefined by Intel; P6 clears the 16-bit register.
                    self.write_op(bus, ins, 0, 0)
                } else {
                    self.write_op(bus, ins, 0, v.swap_bytes())
                }
            }
            M::Push => {
                let size = Self::op_size(ins, 0);
                let v = match ins.op_kind(0) {
                    OpKind::Register
                        if ins.op0_register() == Register::SP
                            || ins.op0_register() == Register::ESP =>
                    {
                        self.state.gpr[ESP] as u32
                    }
                    OpKind::Immediate8to16
                    | OpKind::Immediate8to32
                    | OpKind::Immediate16
                    | OpKind::Immediate32 => ins.immediate(0) as u32,
                    _ => self.read_op(bus, ins, 0)?,
                };
                let psize = ins.stack_pointer_increment().unsigned_abs();
                self.push_sized(bus, psize, v, size)
            }
            M::Pop => {
                let psize = ins.stack_pointer_increment() as u32;
                if ins.op_kind(0) == OpKind::Register && ins.op0_register().is_segment_register() {
                    let v = self.stack_read(bus, 0, psize)?;
                    let seg = super::seg_index(ins.op0_register());
                    self.load_seg(bus, seg, v as u16)?;
                    let sp = self.state.gpr[ESP] as u32;
                    self.set_sp(sp.wrapping_add(psize) & self.sp_mask());
                    if seg == SS {
                        self.state.irq_shadow = true;
                    }
                    return Ok(());
                }
                let v = self.stack_read(bus, 0, psize)?;
                let sp = self.state.gpr[ESP] as u32;
                // ESP is incremented before a memory destination's address is computed.
                self.set_sp(sp.wrapping_add(psize) & self.sp_mask() | (sp & !self.sp_mask()));
                self.write_op(bus, ins, 0, v)
            }
            M::Pusha | M::Pushad => {
                let size = if ins.mnemonic() == M::Pushad { 4 } else { 2 };
                let sp = self.state.gpr[ESP] as u32;
                let regs: [u32; 8] = core::array::from_fn(|i| {
                    if i == ESP {
                        sp
                    } else {
                        self.state.gpr[i] as u32
                    }
                });
                let lin = self.seg_lin(
                    SS,
                    sp.wrapping_sub(8 * size) & self.sp_mask(),
                    8 * size,
                    true,
                );
                if let Ok(lin) = lin {
                    let user = self.user();
                    self.probe_write(lin, 8 * size, user)?;
                }
                for r in regs {
                    self.push(bus, size, r)?;
                }
                Ok(())
            }
            M::Popa | M::Popad => {
                let size = if ins.mnemonic() == M::Popad { 4 } else { 2 };
                let mut vals = [0u32; 8];
                for i in 0..8 {
                    vals[7 - i] = self.stack_read(bus, i as u32 * size, size)?;
                }
                for (i, &v) in vals.iter().enumerate() {
                    if i == ESP {
                        continue;
                    }
                    if size == 4 {
                        self.state.gpr[i] = v as u64;
                    } else {
                        self.state.set_reg16(i, v as u16);
                    }
                }
                let sp = self.state.gpr[ESP] as u32;
                self.set_sp(sp.wrapping_add(8 * size) & self.sp_mask());
                Ok(())
            }
            M::Pushf | M::Pushfd => {
                let size = if ins.mnemonic() == M::Pushfd { 4 } else { 2 };
                if self.state.v86() && self.state.flags.iopl() < 3 {
                    return self.v86_pushf(bus, size);
                }
                // VM and RF are never pushed.
                let f = self.state.flags.get() & !(flags::VM | flags::RF);
                self.push(bus, size, f)
            }
            M::Popf | M::Popfd => {
                let size = if ins.mnemonic() == M::Popfd { 4 } else { 2 };
                if self.state.v86() && self.state.flags.iopl() < 3 {
                    return self.v86_popf(bus, size);
                }
                let v = self.pop(bus, size)?;
                self.write_flags_checked(v, size);
                Ok(())
            }
            M::Lahf => {
                let f = self.state.flags.get() as u8;
                self.state.set_reg8(4, f);
                Ok(())
            }
            M::Sahf => {
                let ah = self.state.reg8(4) as u32;
                let m = SF | ZF | AF | PF | CF;
                self.state.flags.set_masked(ah, m);
                Ok(())
            }
            M::Cbw => {
                let v = self.state.reg8(0) as i8 as i16 as u16;
                self.state.set_reg16(EAX, v);
                Ok(())
            }
            M::Cwde => {
                let v = self.state.reg16(EAX) as i16 as i32 as u32;
                self.state.set_reg32(EAX, v);
                Ok(())
            }
            M::Cwd => {
                let v = if self.state.reg16(EAX) & 0x8000 != 0 {
                    0xFFFF
                } else {
                    0
                };
                self.state.set_reg16(EDX, v);
                Ok(())
            }
            M::Cdq => {
                let v = if self.state.reg32(EAX) & 0x8000_0000 != 0 {
                    u32::MAX
                } else {
                    0
                };
                self.state.set_reg32(EDX, v);
                Ok(())
            }
            M::Xlatb => {
                let (seg, _) = self.mem_operand(ins);
                let off = if Self::addr16(ins) {
                    (self.state.reg16(EBX) as u32).wrapping_add(self.state.reg8(0) as u32) & 0xFFFF
                } else {
                    self.state
                        .reg32(EBX)
                        .wrapping_add(self.state.reg8(0) as u32)
                };
                let v = self.read_mem(bus, seg, off, 1)?;
                self.state.set_reg8(0, v as u8);
                Ok(())
            }
            M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => {
                let size = Self::op_size(ins, 0);
                let (seg, off) = self.mem_operand(ins);
                let v = self.read_mem(bus, seg, off, size)?;
                let sel = self.read_mem(bus, seg, off.wrapping_add(size), 2)? as u16;
                let target = match ins.mnemonic() {
                    M::Lds => crate::state::DS,
                    M::Les => crate::state::ES,
                    M::Lfs => crate::state::FS,
                    M::Lgs => crate::state::GS,
                    _ => SS,
                };
                self.load_seg(bus, target, sel)?;
                if target == SS {
                    self.state.irq_shadow = true;
                }
                self.set_reg(ins.op0_register(), v);
                Ok(())
            }
            M::Mul | M::Imul | M::Div | M::Idiv => self.exec_muldiv(bus, ins),
            M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let a = self.read_loc(bus, loc, size)?;
                let count = if ins.op_count() > 1 {
                    self.read_op(bus, ins, 1)? & 0x1F
                } else {
                    1
                };
                let r = self.shift(ins.mnemonic(), size, a, count);
                if count != 0 {
                    self.write_loc(bus, loc, size, r)?;
                }
                Ok(())
            }
            M::Shld | M::Shrd => {
                let size = Self::op_size(ins, 0);
                let loc = self.loc(ins, 0);
                let a = self.read_loc(bus, loc, size)?;
                let b = self.read_op(bus, ins, 1)?;
                let count = self.read_op(bus, ins, 2)? & 0x1F;
                if count == 0 {
                    return Ok(());
                }
                let r = self.double_shift(ins.mnemonic() == M::Shld, size, a, b, count);
                self.write_loc(bus, loc, size, r)
            }
            M::Bt | M::Bts | M::Btr | M::Btc => self.exec_bt(bus, ins),
            // A P6 has no TZCNT/LZCNT: F3 0F BC/BD are BSF/BSR with an ignored REP prefix
            // (Linux uses `rep bsf` for exactly this reason).
            M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt => {
                let size = Self::op_size(ins, 0);
                let v = self.read_op(bus, ins, 1)? & size_mask(size);
                if v == 0 {
                    // The destination is left unchanged (P6 behaviour).
                    self.state.flags.set_arith(ZF);
                    return Ok(());
                }
                let r = if matches!(ins.mnemonic(), M::Bsf | M::Tzcnt) {
                    v.trailing_zeros()
                } else {
                    31 - v.leading_zeros()
                };
                self.write_op(bus, ins, 0, r)?;
                self.state.flags.set_bit(ZF, false);
                Ok(())
            }
            M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad | M::Salc => self.exec_bcd(ins),
            M::Clc => {
                self.state.flags.set_bit(CF, false);
                Ok(())
            }
            M::Stc => {
                self.state.flags.set_bit(CF, true);
                Ok(())
            }
            M::Cmc => {
                let c = self.state.flags.cf();
                self.state.flags.set_bit(CF, !c);
                Ok(())
            }
            M::Cld => {
                self.state.flags.bits &= !flags::DF;
                Ok(())
            }
            M::Std => {
                self.state.flags.bits |= flags::DF;
                Ok(())
            }
            M::Cli => {
                if !self.iopl_ok() {
                    return self.virtual_cli_sti(false);
                }
                self.state.flags.bits &= !flags::IF;
                Ok(())
            }
            M::Sti => {
                if !self.iopl_ok() {
                    return self.virtual_cli_sti(true);
                }
                if self.state.flags.bits & flags::IF == 0 {
                    self.state.flags.bits |= flags::IF;
                    self.state.irq_shadow = true;
                    self.check_irq = true;
                }
                Ok(())
            }
            // 0F 18-1F (Reservednop) are hint NOPs on a P6: no memory access.
            M::Nop
            | M::Pause
            | M::Reservednop
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2 => Ok(()),
            M::Wait => self.fpu_wait(),
            M::Hlt => {
                if self.state.protected() && self.state.cpl != 0 {
                    return Err(Exception::gp0());
                }
                self.state.halted = true;
                self.check_irq = true;
                self.end_block = true;
                Ok(())
            }
            M::Jmp => self.exec_jmp(bus, ins),
            M::Call => self.exec_call(bus, ins),
            M::Ret => {
                let size = if ins.code_size() == iced_x86::CodeSize::Code32 {
                    if ins.code().op_code().operand_size() == 16 {
                        2
                    } else {
                        4
                    }
                } else if ins.code().op_code().operand_size() == 32 {
                    4
                } else {
                    2
                };
                let target = self.stack_read(bus, 0, size)?;
                if target > self.state.seg[CS].limit {
                    return Err(Exception::gp0());
                }
                let imm = if ins.op_count() > 0 {
                    ins.immediate16() as u32
                } else {
                    0
                };
                let sp = self.state.gpr[ESP] as u32;
                self.set_sp(sp.wrapping_add(size).wrapping_add(imm) & self.sp_mask());
                self.state.rip = target as u64;
                Ok(())
            }
            M::Retf => {
                let size = self.far_operand_size(ins);
                let imm = if ins.op_count() > 0 {
                    ins.immediate16() as u32
                } else {
                    0
                };
                self.far_return(bus, size, imm)
            }
            M::Iret | M::Iretd => {
                let size = if ins.mnemonic() == M::Iretd { 4 } else { 2 };
                self.iret(bus, size)
            }
            M::Jo
            | M::Jno
            | M::Jb
            | M::Jae
            | M::Je
            | M::Jne
            | M::Jbe
            | M::Ja
            | M::Js
            | M::Jns
            | M::Jp
            | M::Jnp
            | M::Jl
            | M::Jge
            | M::Jle
            | M::Jg => {
                if self.state.flags.cond(ins.condition_code() as u8 - 1) {
                    self.near_jump(ins)?;
                }
                Ok(())
            }
            M::Jcxz | M::Jecxz => {
                let c = if ins.mnemonic() == M::Jcxz {
                    self.state.reg16(ECX) as u32
                } else {
                    self.state.reg32(ECX)
                };
                if c == 0 {
                    self.near_jump(ins)?;
                }
                Ok(())
            }
            M::Loop | M::Loope | M::Loopne => {
                let c = if ins.op0_kind() == OpKind::NearBranch16
                    || ins.op0_kind() == OpKind::NearBranch32
                {
                    // The counter is CX or ECX by address size.
                    let addr32 = matches!(
                        ins.code(),
                        iced_x86::Code::Loop_rel8_16_ECX
                            | iced_x86::Code::Loop_rel8_32_ECX
                            | iced_x86::Code::Loope_rel8_16_ECX
                            | iced_x86::Code::Loope_rel8_32_ECX
                            | iced_x86::Code::Loopne_rel8_16_ECX
                            | iced_x86::Code::Loopne_rel8_32_ECX
                    );
                    if addr32 {
                        let c = self.state.reg32(ECX).wrapping_sub(1);
                        self.state.set_reg32(ECX, c);
                        c
                    } else {
                        let c = self.state.reg16(ECX).wrapping_sub(1);
                        self.state.set_reg16(ECX, c);
                        c as u32
                    }
                } else {
                    0
                };
                let take = c != 0
                    && match ins.mnemonic() {
                        M::Loope => self.state.flags.zf(),
                        M::Loopne => !self.state.flags.zf(),
                        _ => true,
                    };
                if take {
                    self.near_jump(ins)?;
                }
                Ok(())
            }
            M::Int => {
                let v = ins.immediate8();
                // Only INT n (not INT3/INTO) is IOPL-sensitive in V86 mode.
                if self.state.v86() {
                    return self.v86_software_interrupt(bus, v);
                }
                self.software_interrupt(bus, v)
            }
            M::Int3 => self.software_interrupt(bus, exception::BP),
            M::Into => {
                if self.state.flags.of() {
                    self.software_interrupt(bus, exception::OF)
                } else {
                    Ok(())
                }
            }
            M::Int1 => {
                let ret = self.state.rip;
                self.interrupt(bus, exception::DB, None, false, true, ret)
            }
            M::Enter => self.exec_enter(bus, ins),
            M::Leave => {
                let size = Self::op_size(ins, 0).max(if ins.code() == iced_x86::Code::Leaved {
                    4
                } else {
                    2
                });
                let size = if ins.code() == iced_x86::Code::Leavew {
                    2
                } else {
                    size
                };
                let bp = if self.state.stack32() {
                    self.state.reg32(EBP)
                } else {
                    self.state.reg16(EBP) as u32
                };
                let v = self.read_mem(bus, SS, bp, size)?;
                self.set_sp(bp.wrapping_add(size) & self.sp_mask());
                if size == 4 {
                    self.state.set_reg32(EBP, v);
                } else {
                    self.state.set_reg16(EBP, v as u16);
                }
                Ok(())
            }
            M::Bound => {
                let size = Self::op_size(ins, 0);
                let idx = sign_extend(self.get_reg(ins.op0_register()), size) as i32;
                let (seg, off) = self.mem_operand(ins);
                let lo = sign_extend(self.read_mem(bus, seg, off, size)?, size) as i32;
                let hi = sign_extend(self.read_mem(bus, seg, off.wrapping_add(size), size)?, size)
                    as i32;
                if idx < lo || idx > hi {
                    return Err(Exception::new(exception::BR));
                }
                Ok(())
            }
            M::In | M::Out => self.exec_inout(bus, ins),
            M::Movsb
            | M::Movsw
            | M::Movsd
            | M::Cmpsb
            | M::Cmpsw
            | M::Cmpsd
            | M::Stosb
            | M::Stosw
            | M::Stosd
            | M::Lodsb
            | M::Lodsw
            | M::Lodsd
            | M::Scasb
            | M::Scasw
            | M::Scasd
            | M::Insb
            | M::Insw
            | M::Insd
            | M::Outsb
            | M::Outsw
            | M::Outsd => self.exec_string(bus, ins),
            M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg => {
                let v = self.read_op(bus, ins, 1)?;
                if self.state.flags.cond(ins.condition_code() as u8 - 1) {
                    self.write_op(bus, ins, 0, v)?;
                }
                Ok(())
            }
            M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg => {
                let v = self.state.flags.cond(ins.condition_code() as u8 - 1) as u32;
                self.write_op(bus, ins, 0, v)
            }
            M::Cpuid => {
                self.cpuid();
                Ok(())
            }
            M::Ud0 | M::Ud1 | M::Ud2 | M::INVALID => Err(Exception::ud()),
            _ => {
                let oc = ins.code().op_code();
                // Register forms of x87 instructions have two-byte opcodes (DB E3).
                let first = if oc.op_code_len() == 2 {
                    oc.op_code() >> 8
                } else {
                    oc.op_code()
                };
                if oc.table() == iced_x86::OpCodeTableKind::Normal && (0xD8..=0xDF).contains(&first)
                {
                    return self.exec_fpu(bus, ins);
                }
                self.exec_system(bus, ins)
            }
        }
    }

    fn set_acc(&mut self, size: u32, v: u32) {
        match size {
            1 => self.state.set_reg8(0, v as u8),
            2 => self.state.set_reg16(EAX, v as u16),
            _ => self.state.set_reg32(EAX, v),
        }
    }

    /// Pushes `v`; a segment register pushed with a 32-bit operand size writes only 16 bits.
    fn push_sized(&mut self, bus: &mut dyn Bus, psize: u32, v: u32, value_size: u32) -> Res<()> {
        if psize == 4 && value_size == 2 {
            let sp = (self.state.gpr[ESP] as u32).wrapping_sub(4) & self.sp_mask();
            self.seg_lin(SS, sp, 4, true)?;
            self.write_mem(bus, SS, sp, 2, v)?;
            self.set_sp(sp);
            Ok(())
        } else {
            self.push(bus, psize, v)
        }
    }

    pub(crate) fn iopl_ok(&self) -> bool {
        if !self.state.protected() {
            return true;
        }
        self.state.cpl <= self.state.flags.iopl()
    }

    /// ADD/OR/ADC/SBB/AND/SUB/XOR/CMP/TEST: computes the result and records the flags.
    #[inline]
    fn alu(&mut self, op: Mnemonic, size: u32, a: u32, b: u32) -> u32 {
        let m = size_mask(size);
        let (r, fop) = match op {
            Mnemonic::Add => (a.wrapping_add(b), FlagOp::Add),
            Mnemonic::Adc => (
                a.wrapping_add(b).wrapping_add(self.state.flags.cf() as u32),
                FlagOp::Add,
            ),
            Mnemonic::Sub | Mnemonic::Cmp => (a.wrapping_sub(b), FlagOp::Sub),
            Mnemonic::Sbb => (
                a.wrapping_sub(b).wrapping_sub(self.state.flags.cf() as u32),
                FlagOp::Sub,
            ),
            Mnemonic::And | Mnemonic::Test => (a & b, FlagOp::Logic),
            Mnemonic::Or => (a | b, FlagOp::Logic),
            _ => (a ^ b, FlagOp::Logic),
        };
        let r = r & m;
        self.state.flags.set_lazy(fop, size as u8, a & m, b & m, r);
        r
    }

    fn exec_mov(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        let dst_kind = ins.op0_kind();
        if dst_kind == OpKind::Register {
            let r = ins.op0_register();
            if r.is_segment_register() {
                if r == Register::CS {
                    return Err(Exception::ud());
                }
                let v = self.read_op(bus, ins, 1)? as u16;
                let seg = super::seg_index(r);
                self.load_seg(bus, seg, v)?;
                if seg == SS {
                    self.state.irq_shadow = true;
                }
                return Ok(());
            }
            if r.is_cr() || r.is_dr() || r.is_tr() {
                return self.exec_system(bus, ins);
            }
        }
        if ins.op1_kind() == OpKind::Register {
            let r = ins.op1_register();
            if r.is_cr() || r.is_dr() || r.is_tr() {
                return self.exec_system(bus, ins);
            }
            if r.is_segment_register() {
                // MOV r32, Sreg zero-extends on P6; to memory it stores 16 bits.
                let v = self.get_reg(r);
                return self.write_op(bus, ins, 0, v);
            }
        }
        let v = self.read_op(bus, ins, 1)?;
        self.write_op(bus, ins, 0, v)
    }

    fn exec_muldiv(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        use Mnemonic as M;
        let m = ins.mnemonic();
        if m == M::Imul && ins.op_count() >= 2 {
            let size = Self::op_size(ins, 0);
            let (a, b) = if ins.op_count() == 3 {
                (self.read_op(bus, ins, 1)?, ins.immediate(2) as u32)
            } else {
                (self.read_op(bus, ins, 0)?, self.read_op(bus, ins, 1)?)
            };
            let a = sign_extend(a, size) as i32 as i64;
            let b = sign_extend(b & size_mask(size), size) as i32 as i64;
            let full = a * b;
            let r = full as u32 & size_mask(size);
            let overflow = sign_extend(r, size) as i32 as i64 != full;
            self.write_op(bus, ins, 0, r)?;
            self.set_mul_flags(r, size, overflow);
            return Ok(());
        }
        let size = Self::op_size(ins, 0);
        let src = self.read_op(bus, ins, 0)?;
        match (m, size) {
            (M::Mul, 1) => {
                let r = (self.state.reg8(0) as u32) * src;
                self.state.set_reg16(EAX, r as u16);
                self.set_mul_flags(r, 1, r >> 8 != 0);
            }
            (M::Mul, 2) => {
                let r = (self.state.reg16(EAX) as u32) * src;
                self.state.set_reg16(EAX, r as u16);
                self.state.set_reg16(EDX, (r >> 16) as u16);
                self.set_mul_flags(r, 2, r >> 16 != 0);
            }
            (M::Mul, _) => {
                let r = (self.state.reg32(EAX) as u64) * src as u64;
                self.state.set_reg32(EAX, r as u32);
                self.state.set_reg32(EDX, (r >> 32) as u32);
                self.set_mul_flags(r as u32, 4, r >> 32 != 0);
            }
            (M::Imul, 1) => {
                let r = (self.state.reg8(0) as i8 as i32) * (src as u8 as i8 as i32);
                self.state.set_reg16(EAX, r as u16);
                self.set_mul_flags(r as u32, 1, r != r as i8 as i32);
            }
            (M::Imul, 2) => {
                let r = (self.state.reg16(EAX) as i16 as i32) * (src as u16 as i16 as i32);
                self.state.set_reg16(EAX, r as u16);
                self.state.set_reg16(EDX, (r >> 16) as u16);
                self.set_mul_flags(r as u32, 2, r != r as i16 as i32);
            }
            (M::Imul, _) => {
                let r = (self.state.reg32(EAX) as i32 as i64) * (src as i32 as i64);
                self.state.set_reg32(EAX, r as u32);
                self.state.set_reg32(EDX, (r >> 32) as u32);
                self.set_mul_flags(r as u32, 4, r != r as i32 as i64);
            }
            (M::Div, 1) => {
                let n = self.state.reg16(EAX) as u32;
                let d = src & 0xFF;
                if d == 0 || n / d > 0xFF {
                    return Err(Exception::de());
                }
                self.state.set_reg8(0, (n / d) as u8);
                self.state.set_reg8(4, (n % d) as u8);
            }
            (M::Div, 2) => {
                let n = (self.state.reg16(EDX) as u32) << 16 | self.state.reg16(EAX) as u32;
                let d = src & 0xFFFF;
                if d == 0 || n / d > 0xFFFF {
                    return Err(Exception::de());
                }
                self.state.set_reg16(EAX, (n / d) as u16);
                self.state.set_reg16(EDX, (n % d) as u16);
            }
            (M::Div, _) => {
                let n = (self.state.reg32(EDX) as u64) << 32 | self.state.reg32(EAX) as u64;
                let d = src as u64;
                if d == 0 || n / d > 0xFFFF_FFFF {
                    return Err(Exception::de());
                }
                self.state.set_reg32(EAX, (n / d) as u32);
                self.state.set_reg32(EDX, (n % d) as u32);
            }
            (M::Idiv, 1) => {
                let n = self.state.reg16(EAX) as i16 as i32;
                let d = src as u8 as i8 as i32;
                if d == 0 {
                    return Err(Exception::de());
                }
                let q = n / d;
                if q != q as i8 as i32 {
                    return Err(Exception::de());
                }
                self.state.set_reg8(0, q as u8);
                self.state.set_reg8(4, (n % d) as u8);
            }
            (M::Idiv, 2) => {
                let n = ((self.state.reg16(EDX) as u32) << 16 | self.state.reg16(EAX) as u32) as i32
                    as i64;
                let d = src as u16 as i16 as i64;
                if d == 0 {
                    return Err(Exception::de());
                }
                let q = n / d;
                if q != q as i16 as i64 {
                    return Err(Exception::de());
                }
                self.state.set_reg16(EAX, q as u16);
                self.state.set_reg16(EDX, (n % d) as u16);
            }
            (_, _) => {
                let n = ((self.state.reg32(EDX) as u64) << 32 | self.state.reg32(EAX) as u64) as i64
                    as i128;
                let d = src as i32 as i128;
                if d == 0 {
                    return Err(Exception::de());
                }
                let q = n / d;
                if q != q as i32 as i128 {
                    return Err(Exception::de());
                }
                self.state.set_reg32(EAX, q as u32);
                self.state.set_reg32(EDX, (n % d) as u32);
            }
        }
        Ok(())
    }

    /// MUL/IMUL: CF = OF = the result did not fit; SF, ZF, PF from the low half (P6).
    fn set_mul_flags(&mut self, low: u32, size: u32, overflow: bool) {
        set_mul_flags(&mut self.state.flags, low, size, overflow);
    }

    fn shift(&mut self, op: Mnemonic, size: u32, a: u32, count: u32) -> u32 {
        shift(&mut self.state.flags, op, size, a, count)
    }

    fn double_shift(&mut self, left: bool, size: u32, a: u32, b: u32, count: u32) -> u32 {
        let bits = size * 8;
        let m = size_mask(size);
        let msb = 1u32 << (bits - 1);
        let (a, b) = (a & m, b & m);
        let (r, cf) = if size == 2 {
            // 16-bit forms with counts above 16 are undefined; P6 shifts through a 32-bit
            // (dest:src:dest) pattern.
            if left {
                let wide = ((a as u64) << 32) | ((b as u64) << 16) | a as u64;
                let v = wide << count;
                (((v >> 32) as u32) & m, (v >> 48) & 1 != 0)
            } else {
                let src = ((a as u64) | ((b as u64) << 16) | ((a as u64) << 32)) >> (count - 1);
                let cf = src & 1 != 0;
                ((src >> 1) as u32 & m, cf)
            }
        } else if left {
            let v = ((a as u64) << 32) | b as u64;
            let v = v << count;
            ((v >> 32) as u32, (a >> (32 - count)) & 1 != 0)
        } else {
            let v = ((b as u64) << 32) | a as u64;
            ((v >> count) as u32, (a >> (count - 1)) & 1 != 0)
        };
        let mut f = szp(r, size) | if cf { CF } else { 0 };
        if (r ^ a) & msb != 0 {
            f |= OF;
        }
        self.state.flags.set_arith(f);
        r
    }

    fn exec_bt(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        let size = Self::op_size(ins, 0);
        let bits = size * 8;
        let offset = self.read_op(bus, ins, 1)?;
        let (loc, bit) = match ins.op0_kind() {
            OpKind::Register => (Loc::Reg(ins.op0_register()), offset % bits),
            _ => {
                let (seg, off) = self.mem_operand(ins);
                if ins.op1_kind() == OpKind::Register {
                    // A register bit offset addresses memory beyond the operand.
                    let sofs = sign_extend(offset, size) as i32;
                    let disp = (sofs >> (if size == 2 { 4 } else { 5 })) * size as i32;
                    let off = off.wrapping_add(disp as u32);
                    let off = if Self::addr16(ins) { off & 0xFFFF } else { off };
                    (Loc::Mem { seg, off }, offset % bits)
                } else {
                    (Loc::Mem { seg, off }, offset % bits)
                }
            }
        };
        let v = self.read_loc(bus, loc, size)?;
        let cf = (v >> bit) & 1 != 0;
        let r = match ins.mnemonic() {
            Mnemonic::Bts => Some(v | (1 << bit)),
            Mnemonic::Btr => Some(v & !(1 << bit)),
            Mnemonic::Btc => Some(v ^ (1 << bit)),
            _ => None,
        };
        if let Some(r) = r {
            self.write_loc(bus, loc, size, r)?;
        }
        self.state.flags.set_bit(CF, cf);
        Ok(())
    }

    fn exec_bcd(&mut self, ins: &Instruction) -> Res<()> {
        let al = self.state.reg8(0) as u32;
        let f = self.state.flags.get();
        let cf = f & CF != 0;
        let af = f & AF != 0;
        match ins.mnemonic() {
            Mnemonic::Daa => {
                let mut a = al;
                let mut nf = 0;
                if (al & 0xF) > 9 || af {
                    a += 6;
                    nf |= AF;
                }
                if al > 0x99 || cf {
                    a += 0x60;
                    nf |= CF;
                }
                let a = a & 0xFF;
                self.state.set_reg8(0, a as u8);
                self.state.flags.set_arith(nf | szp(a, 1) | (f & OF));
            }
            Mnemonic::Das => {
                let mut a = al;
                let mut nf = 0;
                if (al & 0xF) > 9 || af {
                    if a < 6 {
                        nf |= CF; // the borrow out of AL - 6
                    }
                    a = a.wrapping_sub(6);
                    nf |= AF;
                }
                if al > 0x99 || cf {
                    a = a.wrapping_sub(0x60);
                    nf |= CF;
                }
                let a = a & 0xFF;
                self.state.set_reg8(0, a as u8);
                self.state.flags.set_arith(nf | szp(a, 1) | (f & OF));
            }
            Mnemonic::Aaa | Mnemonic::Aas => {
                let ax = self.state.reg16(EAX);
                if (al & 0xF) > 9 || af {
                    let nax = if ins.mnemonic() == Mnemonic::Aaa {
                        ax.wrapping_add(0x106)
                    } else {
                        // The P6 subtracts 6 from all of AX (a borrow reaches AH), then
                        // decrements AH.
                        ax.wrapping_sub(6).wrapping_sub(0x100)
                    };
                    self.state.set_reg16(EAX, nax & 0xFF0F);
                    self.state
                        .flags
                        .set_arith(AF | CF | szp(nax as u32 & 0x0F, 1));
                } else {
                    self.state.set_reg16(EAX, ax & 0xFF0F);
                    self.state.flags.set_arith(szp(ax as u32 & 0x0F, 1));
                }
            }
            Mnemonic::Aam => {
                let base = ins.immediate8() as u32;
                if base == 0 {
                    return Err(Exception::de());
                }
                let ah = al / base;
                let nal = al % base;
                self.state.set_reg16(EAX, ((ah << 8) | nal) as u16);
                self.state.flags.set_arith(szp(nal, 1));
            }
            Mnemonic::Aad => {
                let base = ins.immediate8() as u32;
                let ah = self.state.reg8(4) as u32;
                let nal = (al + ah * base) & 0xFF;
                self.state.set_reg16(EAX, nal as u16);
                self.state.flags.set_arith(szp(nal, 1));
            }
            _ => {
                // SALC: AL = CF ? FF : 00.
                self.state.set_reg8(0, if cf { 0xFF } else { 0 });
            }
        }
        Ok(())
    }

    /// Operand size of RETF/far CALL/far JMP forms.
    pub(crate) fn far_operand_size(&self, ins: &Instruction) -> u32 {
        match ins.code().op_code().operand_size() {
            32 => 4,
            16 => 2,
            _ => {
                if ins.code_size() == iced_x86::CodeSize::Code32 {
                    4
                } else {
                    2
                }
            }
        }
    }

    /// Jumps to the near branch target of operand 0, checking the CS limit.
    fn near_jump(&mut self, ins: &Instruction) -> Res<()> {
        let base = self.cur_eip.wrapping_sub(ins.ip());
        let (t, mask) = match ins.op0_kind() {
            OpKind::NearBranch16 => (ins.near_branch16() as u64, 0xFFFF),
            _ => (ins.near_branch32() as u64, 0xFFFF_FFFF),
        };
        let target = base.wrapping_add(t) & mask;
        if target > self.state.seg[CS].limit as u64 {
            return Err(Exception::gp0());
        }
        self.state.rip = target;
        Ok(())
    }

    fn exec_jmp(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        match ins.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 => self.near_jump(ins),
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let off = if ins.op0_kind() == OpKind::FarBranch16 {
                    ins.far_branch16() as u32
                } else {
                    ins.far_branch32()
                };
                self.far_jump(bus, ins.far_branch_selector(), off)
            }
            OpKind::Register => {
                let t = self.get_reg(ins.op0_register());
                self.jump_abs(t)
            }
            _ => {
                let (seg, off) = self.mem_operand(ins);
                if ins.memory_size().is_packed()
                    || matches!(
                        ins.memory_size(),
                        iced_x86::MemorySize::SegPtr16 | iced_x86::MemorySize::SegPtr32
                    )
                {
                    let size = if ins.memory_size() == iced_x86::MemorySize::SegPtr32 {
                        4
                    } else {
                        2
                    };
                    let o = self.read_mem(bus, seg, off, size)?;
                    let s = self.read_mem(bus, seg, off.wrapping_add(size), 2)? as u16;
                    self.far_jump(bus, s, o)
                } else {
                    let size = ins.memory_size().size() as u32;
                    let t = self.read_mem(bus, seg, off, size)?;
                    self.jump_abs(t)
                }
            }
        }
    }

    fn jump_abs(&mut self, t: u32) -> Res<()> {
        if t > self.state.seg[CS].limit {
            return Err(Exception::gp0());
        }
        self.state.rip = t as u64;
        Ok(())
    }

    fn exec_call(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        let ret = self.state.rip as u32;
        match ins.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 => {
                let size = if ins.op0_kind() == OpKind::NearBranch16 {
                    2
                } else {
                    4
                };
                let base = self.cur_eip.wrapping_sub(ins.ip());
                let (t, mask) = if size == 2 {
                    (ins.near_branch16() as u64, 0xFFFF)
                } else {
                    (ins.near_branch32() as u64, 0xFFFF_FFFF)
                };
                let target = base.wrapping_add(t) & mask;
                if target > self.state.seg[CS].limit as u64 {
                    return Err(Exception::gp0());
                }
                self.push(bus, size, ret)?;
                self.state.rip = target;
                Ok(())
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let (off, size) = if ins.op0_kind() == OpKind::FarBranch16 {
                    (ins.far_branch16() as u32, 2)
                } else {
                    (ins.far_branch32(), 4)
                };
                self.far_call(bus, ins.far_branch_selector(), off, size)
            }
            OpKind::Register => {
                let size = ins.op0_register().size() as u32;
                let t = self.get_reg(ins.op0_register());
                if t > self.state.seg[CS].limit {
                    return Err(Exception::gp0());
                }
                self.push(bus, size, ret)?;
                self.state.rip = t as u64;
                Ok(())
            }
            _ => {
                let (seg, off) = self.mem_operand(ins);
                match ins.memory_size() {
                    iced_x86::MemorySize::SegPtr16 | iced_x86::MemorySize::SegPtr32 => {
                        let size = if ins.memory_size() == iced_x86::MemorySize::SegPtr32 {
                            4
                        } else {
                            2
                        };
                        let o = self.read_mem(bus, seg, off, size)?;
                        let s = self.read_mem(bus, seg, off.wrapping_add(size), 2)? as u16;
                        self.far_call(bus, s, o, size)
                    }
                    ms => {
                        let size = ms.size() as u32;
                        let t = self.read_mem(bus, seg, off, size)?;
                        if t > self.state.seg[CS].limit {
                            return Err(Exception::gp0());
                        }
                        self.push(bus, size, ret)?;
                        self.state.rip = t as u64;
                        Ok(())
                    }
                }
            }
        }
    }

    fn exec_enter(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        let size = if ins.code() == iced_x86::Code::Enterd_imm16_imm8 {
            4
        } else {
            2
        };
        let alloc = ins.immediate16() as u32;
        let level = (ins.immediate8_2nd() & 31) as u32;
        let mask = self.sp_mask();
        let ebp = self.state.gpr[EBP] as u32;
        let mut sp = self.state.gpr[ESP] as u32;
        sp = sp.wrapping_sub(size) & mask;
        self.write_mem(bus, SS, sp, size, ebp)?;
        let frame = sp;
        if level > 0 {
            let mut bp = ebp;
            for _ in 1..level {
                bp = bp.wrapping_sub(size) & mask;
                let v = self.read_mem(bus, SS, bp, size)?;
                sp = sp.wrapping_sub(size) & mask;
                self.write_mem(bus, SS, sp, size, v)?;
            }
            sp = sp.wrapping_sub(size) & mask;
            self.write_mem(bus, SS, sp, size, frame)?;
        }
        let new_sp = sp.wrapping_sub(alloc) & mask;
        // The final stack pointer must be writable (P6 checks it).
        if alloc != 0 {
            self.seg_lin(SS, new_sp, 1, true)?;
        }
        if size == 4 {
            self.state.set_reg32(EBP, frame);
        } else {
            self.state.set_reg16(EBP, frame as u16);
        }
        self.set_sp(new_sp);
        Ok(())
    }

    /// A port read at the current instruction's virtual time. A port access may change a
    /// device's interrupt line or ask the machine to act: then interrupts are re-checked
    /// after the instruction.
    pub(crate) fn port_read(&mut self, bus: &mut dyn Bus, port: u16, size: u32) -> u32 {
        bus.sync_time(self.state.icount);
        let v = bus.io_read(port, size as u8);
        self.check_irq |= bus.needs_attention();
        v
    }

    pub(crate) fn port_write(&mut self, bus: &mut dyn Bus, port: u16, size: u32, v: u32) {
        bus.sync_time(self.state.icount);
        bus.io_write(port, size as u8, v);
        self.check_irq |= bus.needs_attention();
    }

    fn exec_inout(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        if ins.mnemonic() == Mnemonic::In {
            let size = ins.op0_register().size() as u32;
            let port = if ins.op1_kind() == OpKind::Register {
                self.state.reg16(EDX)
            } else {
                ins.immediate8() as u16
            };
            self.check_io(bus, port, size)?;
            let v = self.port_read(bus, port, size);
            self.set_acc(size, v);
        } else {
            let size = ins.op1_register().size() as u32;
            let port = if ins.op0_kind() == OpKind::Register {
                self.state.reg16(EDX)
            } else {
                ins.immediate8() as u16
            };
            self.check_io(bus, port, size)?;
            let v = self.state.gpr[EAX] as u32 & size_mask(size);
            self.port_write(bus, port, size, v);
        }
        Ok(())
    }

    /// INT n / INT3 / INTO: through the gate, checked against its DPL.
    fn software_interrupt(&mut self, bus: &mut dyn Bus, vector: u8) -> Res<()> {
        let ret = self.state.rip;
        self.interrupt(bus, vector, None, true, false, ret)
    }

    /// CPUID: reports exactly what this model implements.
    pub(crate) fn cpuid(&mut self) {
        let leaf = self.state.reg32(EAX);
        let (a, b, c, d) = match leaf {
            0 => (
                1,
                u32::from_le_bytes(*b"Genu"),
                u32::from_le_bytes(*b"ntel"),
                u32::from_le_bytes(*b"ineI"),
            ),
            1 => {
                // Family 6, model 3, stepping 3 (Pentium II "Klamath"). Only what is
                // implemented is reported: not DE (I/O breakpoints), which that CPU had.
                let edx = (1 << 0) // FPU
                    | (1 << 1) // VME (with PVI)
                    | (1 << 3) // PSE
                    | (1 << 4) // TSC
                    | (1 << 5) // MSR
                    | (1 << 8) // CX8
                    | (1 << 11) // SEP
                    | (1 << 13) // PGE
                    | (1 << 15); // CMOV
                (0x0633, 0, 0, edx)
            }
            _ => (0, 0, 0, 0),
        };
        self.state.set_reg32(EAX, a);
        self.state.set_reg32(EBX, b);
        self.state.set_reg32(ECX, c);
        self.state.set_reg32(EDX, d);
    }
}

/// The flags of MUL/IMUL: SF, ZF, PF from the low half, CF = OF = `overflow`.
pub fn set_mul_flags(flags: &mut Flags, low: u32, size: u32, overflow: bool) {
    let mut f = szp(low, size);
    if overflow {
        f |= CF | OF;
    }
    flags.set_arith(f);
}

/// Rotates and shifts: the result, with the flags set as the instruction sets them.
/// `count` is already masked to 5 bits; 0 changes nothing. Shared with the JIT, which
/// computes the result itself and calls this only when the flags are needed.
pub fn shift(flags: &mut Flags, op: Mnemonic, size: u32, a: u32, count: u32) -> u32 {
    if count == 0 {
        return a;
    }
    let bits = size * 8;
    let m = size_mask(size);
    let msb = 1u32 << (bits - 1);
    let a = a & m;
    let old = flags.get();
    let cf_in = old & CF != 0;
    let mut f = old & flags::ARITH;
    let r;
    match op {
        Mnemonic::Rol => {
            let c = count % bits;
            r = if c == 0 {
                a
            } else {
                ((a << c) | (a >> (bits - c))) & m
            };
            let cf = r & 1 != 0;
            f = (f & !(CF | OF)) | if cf { CF } else { 0 };
            if ((r & msb != 0) as u32 ^ cf as u32) != 0 {
                f |= OF;
            }
        }
        Mnemonic::Ror => {
            let c = count % bits;
            r = if c == 0 {
                a
            } else {
                ((a >> c) | (a << (bits - c))) & m
            };
            let cf = r & msb != 0;
            f = (f & !(CF | OF)) | if cf { CF } else { 0 };
            if ((r & msb != 0) != (r & (msb >> 1) != 0)) as u32 != 0 {
                f |= OF;
            }
        }
        Mnemonic::Rcl => {
            let c = count % (bits + 1);
            let mut v = a as u64 | ((cf_in as u64) << bits);
            let w = bits + 1;
            if c != 0 {
                v = ((v << c) | (v >> (w - c))) & ((1u64 << w) - 1);
            }
            r = v as u32 & m;
            let cf = (v >> bits) & 1 != 0;
            f = (f & !(CF | OF)) | if cf { CF } else { 0 };
            if ((r & msb != 0) != cf) as u32 != 0 {
                f |= OF;
            }
        }
        Mnemonic::Rcr => {
            let c = count % (bits + 1);
            let mut v = a as u64 | ((cf_in as u64) << bits);
            let w = bits + 1;
            if c != 0 {
                v = ((v >> c) | (v << (w - c))) & ((1u64 << w) - 1);
            }
            r = v as u32 & m;
            let cf = (v >> bits) & 1 != 0;
            f = (f & !(CF | OF)) | if cf { CF } else { 0 };
            if ((r & msb != 0) != (r & (msb >> 1) != 0)) as u32 != 0 {
                f |= OF;
            }
        }
        // The shifts' flags are lazy: `Flags::arith` derives them from the operands.
        Mnemonic::Shl | Mnemonic::Sal => {
            let r = ((a as u64) << count) as u32 & m;
            flags.set_lazy(FlagOp::Shl, size as u8, a, count, r);
            return r;
        }
        Mnemonic::Shr => {
            let r = if count >= bits { 0 } else { a >> count };
            flags.set_lazy(FlagOp::Shr, size as u8, a, count, r);
            return r;
        }
        _ => {
            let s = sign_extend(a, size) as i32;
            let r = (s >> count.min(bits - 1)) as u32 & m;
            flags.set_lazy(FlagOp::Sar, size as u8, a, count, r);
            return r;
        }
    }
    flags.set_arith(f);
    r
}
