//! System instructions: control/debug registers, descriptor-table registers, MSRs, the
//! TSC, cache and TLB control. Protected-mode control transfers (gates, privilege
//! changes, IDT delivery, the I/O bitmap) are in `transfer.rs`, task switches in
//! `task.rs`, LLDT/LTR/LAR/LSL/VERR/VERW/ARPL/SYSENTER/SYSEXIT in `descriptors.rs`, and
//! the V86 mode extensions (VME/PVI) in `vme.rs`.

mod descriptors;
mod task;
mod transfer;
mod vme;

use crate::exception::{Exception, Res};
use crate::flags;
use crate::mem::Bus;
use crate::state::*;
use crate::Cpu;
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// MSR numbers.
pub const MSR_TSC: u32 = 0x10;
pub const MSR_APIC_BASE: u32 = 0x1B;
pub const MSR_BIOS_SIGN: u32 = 0x8B;
pub const MSR_SYSENTER_CS: u32 = 0x174;
pub const MSR_SYSENTER_ESP: u32 = 0x175;
pub const MSR_SYSENTER_EIP: u32 = 0x176;

impl Cpu {
    /// Instructions that need CPL 0 in protected mode raise #GP(0) otherwise (V86 included).
    fn require_cpl0(&self) -> Res<()> {
        if self.state.protected() && (self.state.cpl != 0 || self.state.v86()) {
            return Err(Exception::gp0());
        }
        Ok(())
    }

    pub(crate) fn exec_system(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        match ins.mnemonic() {
            M::Mov => self.mov_special(bus, ins),
            M::Lgdt | M::Lidt => {
                self.require_cpl0()?;
                if ins.op0_kind() != OpKind::Memory {
                    return Err(Exception::ud());
                }
                let (seg, off) = self.mem_operand(ins);
                let limit = self.read_mem(bus, seg, off, 2)?;
                let mut base = self.read_mem(bus, seg, off.wrapping_add(2), 4)?;
                // With a 16-bit operand size only 24 bits of base are loaded.
                if Self::op16_descriptor_table(ins) {
                    base &= 0x00FF_FFFF;
                }
                let t = DescTable {
                    base: base as u64,
                    limit,
                };
                if ins.mnemonic() == M::Lgdt {
                    self.state.gdtr = t;
                } else {
                    self.state.idtr = t;
                }
                Ok(())
            }
            M::Sgdt | M::Sidt => {
                if ins.op0_kind() != OpKind::Memory {
                    return Err(Exception::ud());
                }
                let t = if ins.mnemonic() == M::Sgdt {
                    self.state.gdtr
                } else {
                    self.state.idtr
                };
                let (seg, off) = self.mem_operand(ins);
                let mut bytes = [0u8; 6];
                bytes[..2].copy_from_slice(&(t.limit as u16).to_le_bytes());
                bytes[2..].copy_from_slice(&(t.base as u32).to_le_bytes());
                self.write_mem_bytes(bus, seg, off, &bytes)
            }
            M::Smsw => {
                let v = self.state.cr0 as u32;
                if ins.op0_kind() == OpKind::Memory {
                    let (seg, off) = self.mem_operand(ins);
                    self.write_mem(bus, seg, off, 2, v)
                } else {
                    // To a register, SMSW stores all of CR0 with a 32-bit operand.
                    let size = ins.op0_register().size() as u32;
                    let v = if size == 4 { v } else { v & 0xFFFF };
                    self.set_reg(ins.op0_register(), v);
                    Ok(())
                }
            }
            M::Lmsw => {
                self.require_cpl0()?;
                let v = self.read_op(bus, ins, 0)? as u64;
                // LMSW sets PE but cannot clear it, and touches only MP, EM, TS.
                let new = (self.state.cr0 & !0xE) | (v & 0xF) | (self.state.cr0 & CR0_PE);
                self.write_cr0(new)
            }
            M::Clts => {
                self.require_cpl0()?;
                self.state.cr0 &= !CR0_TS;
                Ok(())
            }
            M::Invlpg => {
                self.require_cpl0()?;
                let (seg, off) = self.mem_operand(ins);
                let lin = (self.state.seg[seg].base + off as u64) & 0xFFFF_FFFF;
                self.tlb.flush_page(lin);
                self.end_block = true;
                Ok(())
            }
            M::Invd | M::Wbinvd => self.require_cpl0(),
            M::Rdtsc => {
                if self.state.cr4 & CR4_TSD != 0 && self.state.protected() && self.state.cpl != 0 {
                    return Err(Exception::gp0());
                }
                let tsc = self.tsc();
                self.state.set_reg32(EAX, tsc as u32);
                self.state.set_reg32(EDX, (tsc >> 32) as u32);
                Ok(())
            }
            M::Vmcall => {
                // The emulator call: BIOS services implemented by the machine.
                self.end_block = true;
                self.check_irq = true;
                if bus.emulator_call(self) {
                    Ok(())
                } else {
                    Err(Exception::ud())
                }
            }
            M::Rdpmc => {
                if self.state.cr4 & CR4_PCE == 0 && self.state.protected() && self.state.cpl != 0 {
                    return Err(Exception::gp0());
                }
                if self.state.reg32(ECX) > 1 {
                    return Err(Exception::gp0());
                }
                self.state.set_reg32(EAX, 0);
                self.state.set_reg32(EDX, 0);
                Ok(())
            }
            M::Rdmsr => {
                self.require_cpl0()?;
                let v = self.read_msr(self.state.reg32(ECX))?;
                self.state.set_reg32(EAX, v as u32);
                self.state.set_reg32(EDX, (v >> 32) as u32);
                Ok(())
            }
            M::Wrmsr => {
                self.require_cpl0()?;
                let v = (self.state.reg32(EDX) as u64) << 32 | self.state.reg32(EAX) as u64;
                self.write_msr(self.state.reg32(ECX), v)
            }
            M::Lldt
            | M::Ltr
            | M::Sldt
            | M::Str
            | M::Lar
            | M::Lsl
            | M::Verr
            | M::Verw
            | M::Arpl
            | M::Sysenter
            | M::Sysexit => self.exec_protected_only(bus, ins),
            _ => Err(Exception::ud()),
        }
    }

    fn op16_descriptor_table(ins: &Instruction) -> bool {
        ins.code().op_code().operand_size() == 16
            || (ins.code_size() == iced_x86::CodeSize::Code16
                && ins.code().op_code().operand_size() != 32)
    }

    /// The TSC: the instruction count plus the offset WRMSR set.
    pub fn tsc(&self) -> u64 {
        self.state.icount.wrapping_add(self.state.tsc_offset)
    }

    fn read_msr(&self, msr: u32) -> Res<u64> {
        let m = &self.state.msr;
        Ok(match msr {
            MSR_TSC => self.tsc(),
            MSR_BIOS_SIGN => 0,
            MSR_SYSENTER_CS => m.sysenter_cs,
            MSR_SYSENTER_ESP => m.sysenter_esp,
            MSR_SYSENTER_EIP => m.sysenter_eip,
            _ => return Err(Exception::gp0()),
        })
    }

    fn write_msr(&mut self, msr: u32, v: u64) -> Res<()> {
        let m = &mut self.state.msr;
        match msr {
            MSR_TSC => self.state.tsc_offset = v.wrapping_sub(self.state.icount),
            MSR_BIOS_SIGN => {}
            MSR_SYSENTER_CS => m.sysenter_cs = v & 0xFFFF,
            MSR_SYSENTER_ESP => m.sysenter_esp = v & 0xFFFF_FFFF,
            MSR_SYSENTER_EIP => m.sysenter_eip = v & 0xFFFF_FFFF,
            _ => return Err(Exception::gp0()),
        }
        Ok(())
    }

    /// Writes CR0 with the architectural consistency checks, flushing what depends on it.
    pub fn write_cr0(&mut self, v: u64) -> Res<()> {
        let v = (v & 0xFFFF_FFFF) | CR0_ET;
        if (v & CR0_PG != 0 && v & CR0_PE == 0) || (v & CR0_NW != 0 && v & CR0_CD == 0) {
            return Err(Exception::gp0());
        }
        let changed = self.state.cr0 ^ v;
        self.state.cr0 = v;
        if changed & (CR0_PG | CR0_WP | CR0_PE) != 0 {
            self.flush_tlb();
        }
        if changed & CR0_PE != 0 && v & CR0_PE == 0 {
            self.state.cpl = 0;
        }
        self.end_block = true;
        Ok(())
    }

    fn mov_special(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        self.require_cpl0()?;
        let to_special = ins.op0_kind() == OpKind::Register && {
            let r = ins.op0_register();
            r.is_cr() || r.is_dr() || r.is_tr()
        };
        if to_special {
            let r = ins.op0_register();
            let v = self.get_reg(ins.op1_register()) as u64;
            match r {
                Register::CR0 => self.write_cr0(v)?,
                Register::CR2 => self.state.cr2 = v,
                Register::CR3 => {
                    self.state.cr3 = v & 0xFFFF_F018;
                    self.tlb.flush_non_global();
                    self.end_block = true;
                }
                Register::CR4 => {
                    if v & !CR4_SUPPORTED != 0 {
                        return Err(Exception::gp0());
                    }
                    if (self.state.cr4 ^ v) & (CR4_PSE | CR4_PGE) != 0 {
                        self.flush_tlb();
                    }
                    self.state.cr4 = v;
                    self.end_block = true;
                }
                Register::DR0 | Register::DR1 | Register::DR2 | Register::DR3 => {
                    self.state.dr[r as usize - Register::DR0 as usize] = v;
                }
                Register::DR4 | Register::DR6 => {
                    if r == Register::DR4 && self.state.cr4 & CR4_DE != 0 {
                        return Err(Exception::ud());
                    }
                    self.state.dr[6] = (v & 0xE00F) | 0xFFFF_0FF0;
                }
                Register::DR5 | Register::DR7 => {
                    if r == Register::DR5 && self.state.cr4 & CR4_DE != 0 {
                        return Err(Exception::ud());
                    }
                    self.state.dr[7] = (v & 0xFFFF_2BFF) | 0x400;
                }
                _ => return Err(Exception::ud()),
            }
            let _ = bus;
            Ok(())
        } else {
            let r = ins.op1_register();
            let v = match r {
                Register::CR0 => self.state.cr0,
                Register::CR2 => self.state.cr2,
                Register::CR3 => self.state.cr3,
                Register::CR4 => self.state.cr4,
                Register::DR0 | Register::DR1 | Register::DR2 | Register::DR3 => {
                    self.state.dr[r as usize - Register::DR0 as usize]
                }
                Register::DR4 | Register::DR6 => {
                    if r == Register::DR4 && self.state.cr4 & CR4_DE != 0 {
                        return Err(Exception::ud());
                    }
                    self.state.dr[6]
                }
                Register::DR5 | Register::DR7 => {
                    if r == Register::DR5 && self.state.cr4 & CR4_DE != 0 {
                        return Err(Exception::ud());
                    }
                    self.state.dr[7]
                }
                _ => return Err(Exception::ud()),
            };
            self.set_reg(ins.op0_register(), v as u32);
            Ok(())
        }
    }

    // ---- far transfers: real and V86 mode here, protected mode in transfer.rs ----

    /// Far JMP to sel:off.
    pub(crate) fn far_jump(&mut self, bus: &mut dyn Bus, sel: u16, off: u32) -> Res<()> {
        if self.state.protected() && !self.state.v86() {
            return self.far_jump_protected(bus, sel, off);
        }
        if off > self.state.seg[CS].limit {
            return Err(Exception::gp0());
        }
        self.load_seg_real(CS, sel);
        self.state.rip = off as u64;
        Ok(())
    }

    /// Far CALL to sel:off with operand size `size` (2 or 4).
    pub(crate) fn far_call(&mut self, bus: &mut dyn Bus, sel: u16, off: u32, size: u32) -> Res<()> {
        if self.state.protected() && !self.state.v86() {
            return self.far_call_protected(bus, sel, off, size);
        }
        let cs = self.state.seg[CS].selector as u32;
        let ret = self.state.rip as u32;
        // Check both pushes before changing anything.
        let sp = (self.state.gpr[ESP] as u32).wrapping_sub(2 * size) & self.sp_mask();
        self.seg_lin(SS, sp, 2 * size, true)?;
        if off > self.state.seg[CS].limit {
            return Err(Exception::gp0());
        }
        self.push(bus, size, cs)?;
        self.push(bus, size, ret)?;
        self.load_seg_real(CS, sel);
        self.state.rip = off as u64;
        Ok(())
    }

    /// RETF [imm16].
    pub(crate) fn far_return(&mut self, bus: &mut dyn Bus, size: u32, imm: u32) -> Res<()> {
        if self.state.protected() && !self.state.v86() {
            return self.far_return_protected(bus, size, imm);
        }
        let off = self.stack_read(bus, 0, size)?;
        let sel = self.stack_read(bus, size, 2)? as u16;
        let off = if size == 2 { off & 0xFFFF } else { off };
        if off > self.state.seg[CS].limit {
            return Err(Exception::gp0());
        }
        let sp = self.state.gpr[ESP] as u32;
        self.set_sp(sp.wrapping_add(2 * size).wrapping_add(imm) & self.sp_mask());
        self.load_seg_real(CS, sel);
        self.state.rip = off as u64;
        Ok(())
    }

    /// IRET / IRETD.
    pub(crate) fn iret(&mut self, bus: &mut dyn Bus, size: u32) -> Res<()> {
        self.check_irq = true;
        if self.state.v86() {
            if self.state.flags.iopl() < 3 {
                return self.v86_iret(bus, size);
            }
        } else if self.state.protected() {
            return self.iret_protected(bus, size);
        }
        let off = self.stack_read(bus, 0, size)?;
        let sel = self.stack_read(bus, size, 2)? as u16;
        let fl = self.stack_read(bus, 2 * size, size)?;
        if off > self.state.seg[CS].limit {
            return Err(Exception::gp0());
        }
        let sp = self.state.gpr[ESP] as u32;
        self.set_sp(sp.wrapping_add(3 * size) & self.sp_mask());
        self.load_seg_real(CS, sel);
        self.state.rip = off as u64;
        if self.state.v86() {
            // IOPL is not changed in V86 mode; VM is never set by this path.
            let keep = flags::IOPL | flags::VM | flags::VIP | flags::VIF;
            let cur = self.state.flags.get();
            let mut v = fl;
            if size == 2 {
                v = (cur & 0xFFFF_0000) | (v & 0xFFFF);
            }
            self.state.flags.set((cur & keep) | (v & !keep));
        } else {
            self.write_flags_checked(fl, size);
        }
        Ok(())
    }
}
