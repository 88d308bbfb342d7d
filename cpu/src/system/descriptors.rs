//! Protected-mode-only system instructions: LLDT, LTR, SLDT, STR (system segment
//! registers), LAR, LSL, VERR, VERW, ARPL (descriptor inspection), SYSENTER, SYSEXIT.

use super::transfer::{is_conforming_code, is_null, sel_code, TYPE_LDT};
use super::transfer::{
    TYPE_CALL_GATE16, TYPE_CALL_GATE32, TYPE_TASK_GATE, TYPE_TSS16_AVAIL, TYPE_TSS16_BUSY,
    TYPE_TSS32_AVAIL, TYPE_TSS32_BUSY,
};
use crate::exception::{Exception, Res};
use crate::flags::{IF, RF, VM, ZF};
use crate::mem::Bus;
use crate::seg::Descriptor;
use crate::state::{Segment, ATTR_RW, CS, ECX, EDX, ESP, SS};
use crate::Cpu;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

impl Cpu {
    pub(crate) fn exec_protected_only(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        match ins.mnemonic() {
            M::Sysenter => return self.sysenter(),
            M::Sysexit => return self.sysexit(),
            _ => {}
        }
        // The rest are not recognised in real-address and V86 mode.
        if !self.state.protected() || self.state.v86() {
            return Err(Exception::ud());
        }
        match ins.mnemonic() {
            M::Lldt => {
                self.require_cpl0()?;
                let sel = self.read_selector_operand(bus, ins, 0)?;
                self.load_ldtr(bus, sel)
            }
            M::Ltr => {
                self.require_cpl0()?;
                let sel = self.read_selector_operand(bus, ins, 0)?;
                self.load_tr(bus, sel)
            }
            M::Sldt | M::Str => {
                let sel = if ins.mnemonic() == M::Sldt {
                    self.state.ldtr.selector
                } else {
                    self.state.tr.selector
                };
                if ins.op0_kind() == OpKind::Memory {
                    let (seg, off) = self.mem_operand(ins);
                    self.write_mem(bus, seg, off, 2, sel as u32)
                } else {
                    // A 32-bit register gets the selector zero-extended.
                    self.set_reg(ins.op0_register(), sel as u32);
                    Ok(())
                }
            }
            M::Lar | M::Lsl => {
                let sel = self.read_selector_operand(bus, ins, 1)?;
                let value = if ins.mnemonic() == M::Lar {
                    self.lar_value(bus, sel)?
                } else {
                    self.lsl_value(bus, sel)?
                };
                match value {
                    Some(v) => {
                        let r = ins.op0_register();
                        let v = if r.size() == 2 { v & 0xFFFF } else { v };
                        self.set_reg(r, v);
                        self.state.flags.set_bit(ZF, true);
                    }
                    None => self.state.flags.set_bit(ZF, false),
                }
                Ok(())
            }
            M::Verr | M::Verw => {
                let sel = self.read_selector_operand(bus, ins, 0)?;
                let ok = self.verify(bus, sel, ins.mnemonic() == M::Verw)?;
                self.state.flags.set_bit(ZF, ok);
                Ok(())
            }
            M::Arpl => {
                let src_rpl = self.get_reg(ins.op1_register()) as u16 & 3;
                let (dest, write_back) = match ins.op0_kind() {
                    OpKind::Register => (self.get_reg(ins.op0_register()), None),
                    _ => {
                        let (seg, off) = self.mem_operand(ins);
                        (self.read_mem(bus, seg, off, 2)?, Some((seg, off)))
                    }
                };
                if (dest as u16 & 3) < src_rpl {
                    let new = (dest & !3) | src_rpl as u32;
                    match write_back {
                        Some((seg, off)) => self.write_mem(bus, seg, off, 2, new)?,
                        None => {
                            // Only the low 16 bits of a register operand change.
                            let r = ins.op0_register();
                            let full = (self.get_reg(r) & 0xFFFF_0000) | (new & 0xFFFF);
                            self.set_reg(r, full);
                        }
                    }
                    self.state.flags.set_bit(ZF, true);
                } else {
                    self.state.flags.set_bit(ZF, false);
                }
                Ok(())
            }
            _ => Err(Exception::ud()),
        }
    }

    /// A 16-bit selector operand: the low word of a register, or a word in memory.
    fn read_selector_operand(&mut self, bus: &mut dyn Bus, ins: &Instruction, i: u32) -> Res<u16> {
        if ins.op_kind(i) == OpKind::Register {
            Ok(self.get_reg(ins.op_register(i)) as u16)
        } else {
            let (seg, off) = self.mem_operand(ins);
            Ok(self.read_mem(bus, seg, off, 2)? as u16)
        }
    }

    /// The descriptor of `sel` for LAR/LSL/VERR/VERW, or None where those instructions
    /// report failure (null selector, beyond the table limit) instead of faulting.
    fn probe_descriptor(&mut self, bus: &mut dyn Bus, sel: u16) -> Res<Option<Descriptor>> {
        if is_null(sel) {
            return Ok(None);
        }
        let Ok(addr) = self.descriptor_addr(sel) else {
            return Ok(None);
        };
        let lo = self.read_lin(bus, addr, 4, false)?;
        let hi = self.read_lin(bus, (addr + 4) & 0xFFFF_FFFF, 4, false)?;
        Ok(Some(Descriptor(lo as u64 | (hi as u64) << 32)))
    }

    /// Whether the CPL and the selector's RPL may see the descriptor (conforming code
    /// segments are visible from any level).
    fn visible(&self, d: Descriptor, sel: u16) -> bool {
        is_conforming_code(d) || (d.dpl() >= self.state.cpl && d.dpl() >= (sel & 3) as u8)
    }

    fn lar_value(&mut self, bus: &mut dyn Bus, sel: u16) -> Res<Option<u32>> {
        let Some(d) = self.probe_descriptor(bus, sel)? else {
            return Ok(None);
        };
        let type_ok = !d.is_system()
            || matches!(
                d.sys_type(),
                TYPE_TSS16_AVAIL
                    | TYPE_LDT
                    | TYPE_TSS16_BUSY
                    | TYPE_CALL_GATE16
                    | TYPE_TASK_GATE
                    | TYPE_TSS32_AVAIL
                    | TYPE_TSS32_BUSY
                    | TYPE_CALL_GATE32
            );
        if !type_ok || !self.visible(d, sel) {
            return Ok(None);
        }
        Ok(Some((d.0 >> 32) as u32 & 0x00FF_FF00))
    }

    fn lsl_value(&mut self, bus: &mut dyn Bus, sel: u16) -> Res<Option<u32>> {
        let Some(d) = self.probe_descriptor(bus, sel)? else {
            return Ok(None);
        };
        let type_ok = !d.is_system()
            || matches!(
                d.sys_type(),
                TYPE_TSS16_AVAIL | TYPE_LDT | TYPE_TSS16_BUSY | TYPE_TSS32_AVAIL | TYPE_TSS32_BUSY
            );
        if !type_ok || !self.visible(d, sel) {
            return Ok(None);
        }
        Ok(Some(d.limit()))
    }

    /// VERR / VERW: whether the segment is readable (writable) at the current privilege.
    fn verify(&mut self, bus: &mut dyn Bus, sel: u16, write: bool) -> Res<bool> {
        let Some(d) = self.probe_descriptor(bus, sel)? else {
            return Ok(false);
        };
        if d.is_system() || !self.visible(d, sel) {
            return Ok(false);
        }
        let rw = d.attr() & ATTR_RW != 0;
        Ok(if write {
            !d.is_code() && rw
        } else {
            !d.is_code() || rw
        })
    }

    fn load_ldtr(&mut self, bus: &mut dyn Bus, sel: u16) -> Res<()> {
        if is_null(sel) {
            // A null LDT selector leaves LDTR unusable: LDT references then fault.
            self.state.ldtr = Segment {
                selector: sel,
                ..Default::default()
            };
            return Ok(());
        }
        let err = sel_code(sel);
        if sel & 4 != 0 {
            return Err(Exception::gp(err));
        }
        let d = self.fetch_descriptor(bus, sel, Exception::gp, 0)?;
        if !d.is_system() || d.sys_type() != TYPE_LDT {
            return Err(Exception::gp(err));
        }
        if !d.present() {
            return Err(Exception::np(err));
        }
        self.state.ldtr = d.to_segment(sel);
        Ok(())
    }

    fn load_tr(&mut self, bus: &mut dyn Bus, sel: u16) -> Res<()> {
        if is_null(sel) {
            return Err(Exception::gp0());
        }
        let err = sel_code(sel);
        if sel & 4 != 0 {
            return Err(Exception::gp(err));
        }
        let d = self.fetch_descriptor(bus, sel, Exception::gp, 0)?;
        if !d.is_system() || !matches!(d.sys_type(), TYPE_TSS16_AVAIL | TYPE_TSS32_AVAIL) {
            return Err(Exception::gp(err));
        }
        if !d.present() {
            return Err(Exception::np(err));
        }
        self.set_tss_busy(bus, sel, true)?;
        self.state.tr = Descriptor(d.0 | (1 << 41)).to_segment(sel);
        Ok(())
    }

    /// SYSENTER: to ring 0 at SYSENTER_CS:SYSENTER_EIP with flat segments.
    fn sysenter(&mut self) -> Res<()> {
        let cs = self.state.msr.sysenter_cs as u16 & !3;
        if !self.state.protected() || cs == 0 {
            return Err(Exception::gp0());
        }
        let f = self.state.flags.get();
        self.state.flags.set(f & !(VM | IF | RF));
        self.state.cpl = 0;
        self.state.seg[CS] = Segment::flat(cs, true, 0);
        self.state.seg[SS] = Segment::flat(cs.wrapping_add(8), false, 0);
        self.state.gpr[ESP] = self.state.msr.sysenter_esp & 0xFFFF_FFFF;
        self.state.rip = self.state.msr.sysenter_eip & 0xFFFF_FFFF;
        self.end_block = true;
        Ok(())
    }

    /// SYSEXIT: from ring 0 to ring 3 at EDX with stack ECX, flat segments after
    /// SYSENTER_CS.
    fn sysexit(&mut self) -> Res<()> {
        let cs = self.state.msr.sysenter_cs as u16 & !3;
        if !self.state.protected() || self.state.v86() || self.state.cpl != 0 || cs == 0 {
            return Err(Exception::gp0());
        }
        self.state.cpl = 3;
        self.state.seg[CS] = Segment::flat(cs.wrapping_add(16) | 3, true, 3);
        self.state.seg[SS] = Segment::flat(cs.wrapping_add(24) | 3, false, 3);
        self.state.gpr[ESP] = self.state.reg32(ECX) as u64;
        self.state.rip = self.state.reg32(EDX) as u64;
        self.end_block = true;
        Ok(())
    }
}
