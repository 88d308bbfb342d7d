//! String instructions (MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS) with REP prefixes.
//!
//! Each iteration of a repeated string instruction counts as one retired instruction on
//! the virtual clock. A REP instruction runs until its count is done or the run loop's
//! budget is reached; in the second case EIP stays on the instruction so it resumes
//! exactly where it stopped, after any interrupt that is due.

use super::size_mask;
use crate::exception::Res;
use crate::flags::FlagOp;
use crate::mem::Bus;
use crate::state::{EAX, ECX, EDI, EDX, ES, ESI};
use crate::Cpu;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rep {
    None,
    /// REP / REPE / REPZ
    E,
    /// REPNE / REPNZ
    Ne,
}

impl Cpu {
    pub(crate) fn exec_string(&mut self, bus: &mut dyn Bus, ins: &Instruction) -> Res<()> {
        let m = ins.mnemonic();
        let size: u32 = match m {
            M::Movsb | M::Cmpsb | M::Stosb | M::Lodsb | M::Scasb | M::Insb | M::Outsb => 1,
            M::Movsw | M::Cmpsw | M::Stosw | M::Lodsw | M::Scasw | M::Insw | M::Outsw => 2,
            _ => 4,
        };
        // Address size from the operand form: SI/DI or ESI/EDI.
        let addr32 = (0..ins.op_count()).any(|i| {
            matches!(
                ins.op_kind(i),
                OpKind::MemorySegESI | OpKind::MemoryESEDI | OpKind::MemorySegEDI
            )
        });
        let amask: u32 = if addr32 { u32::MAX } else { 0xFFFF };
        let src_seg = super::seg_index(ins.memory_segment());
        let rep = if ins.has_rep_prefix() {
            Rep::E
        } else if ins.has_repne_prefix() {
            Rep::Ne
        } else {
            Rep::None
        };
        let compares = matches!(
            m,
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Scasb | M::Scasw | M::Scasd
        );
        if matches!(
            m,
            M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd
        ) {
            let port = self.state.reg16(EDX);
            self.check_io(bus, port, size)?;
            self.check_irq = true;
        }
        let step = if self.state.flags.df() {
            size.wrapping_neg()
        } else {
            size
        };
        let get = |cpu: &Cpu, r: usize| cpu.state.gpr[r] as u32 & amask;
        let set = |cpu: &mut Cpu, r: usize, v: u32| {
            if addr32 {
                cpu.state.gpr[r] = v as u64;
            } else {
                cpu.state.set_reg16(r, v as u16);
            }
        };
        let mut iterations: u64 = 0;
        loop {
            if rep != Rep::None && get(self, ECX) == 0 {
                break;
            }
            match m {
                M::Movsb | M::Movsw | M::Movsd => {
                    let v = self.read_mem(bus, src_seg, get(self, ESI), size)?;
                    self.write_mem(bus, ES, get(self, EDI), size, v)?;
                    let si = get(self, ESI).wrapping_add(step);
                    set(self, ESI, si);
                    let di = get(self, EDI).wrapping_add(step);
                    set(self, EDI, di);
                }
                M::Stosb | M::Stosw | M::Stosd => {
                    let v = self.state.gpr[EAX] as u32 & size_mask(size);
                    self.write_mem(bus, ES, get(self, EDI), size, v)?;
                    let di = get(self, EDI).wrapping_add(step);
                    set(self, EDI, di);
                }
                M::Lodsb | M::Lodsw | M::Lodsd => {
                    let v = self.read_mem(bus, src_seg, get(self, ESI), size)?;
                    match size {
                        1 => self.state.set_reg8(0, v as u8),
                        2 => self.state.set_reg16(EAX, v as u16),
                        _ => self.state.set_reg32(EAX, v),
                    }
                    let si = get(self, ESI).wrapping_add(step);
                    set(self, ESI, si);
                }
                M::Cmpsb | M::Cmpsw | M::Cmpsd => {
                    let a = self.read_mem(bus, src_seg, get(self, ESI), size)?;
                    let b = self.read_mem(bus, ES, get(self, EDI), size)?;
                    self.state.flags.set_lazy(
                        FlagOp::Sub,
                        size as u8,
                        a,
                        b,
                        a.wrapping_sub(b) & size_mask(size),
                    );
                    let si = get(self, ESI).wrapping_add(step);
                    set(self, ESI, si);
                    let di = get(self, EDI).wrapping_add(step);
                    set(self, EDI, di);
                }
                M::Scasb | M::Scasw | M::Scasd => {
                    let a = self.state.gpr[EAX] as u32 & size_mask(size);
                    let b = self.read_mem(bus, ES, get(self, EDI), size)?;
                    self.state.flags.set_lazy(
                        FlagOp::Sub,
                        size as u8,
                        a,
                        b,
                        a.wrapping_sub(b) & size_mask(size),
                    );
                    let di = get(self, EDI).wrapping_add(step);
                    set(self, EDI, di);
                }
                M::Insb | M::Insw | M::Insd => {
                    // The destination is checked before the port is read.
                    let di = get(self, EDI);
                    let lin = self.seg_lin(ES, di, size, true)?;
                    let user = self.user();
                    self.probe_write(lin, size, user)?;
                    let v = self.port_read(bus, self.state.reg16(EDX), size);
                    self.write_mem(bus, ES, di, size, v)?;
                    set(self, EDI, di.wrapping_add(step));
                }
                _ => {
                    let v = self.read_mem(bus, src_seg, get(self, ESI), size)?;
                    self.port_write(bus, self.state.reg16(EDX), size, v);
                    let si = get(self, ESI).wrapping_add(step);
                    set(self, ESI, si);
                }
            }
            if rep == Rep::None {
                return Ok(());
            }
            let c = get(self, ECX).wrapping_sub(1);
            set(self, ECX, c);
            iterations += 1;
            if compares {
                let zf = self.state.flags.zf();
                if (rep == Rep::E && !zf) || (rep == Rep::Ne && zf) {
                    break;
                }
            }
            if c == 0 {
                break;
            }
            // Out of budget: stop here and resume this instruction later. The iteration
            // just done is counted by the caller.
            if self.state.icount + iterations >= self.budget_end || self.end_block {
                self.state.icount += iterations - 1;
                self.state.rip = self.cur_eip;
                self.end_block = true;
                return Ok(());
            }
        }
        if iterations > 0 {
            self.state.icount += iterations - 1;
        }
        Ok(())
    }
}
