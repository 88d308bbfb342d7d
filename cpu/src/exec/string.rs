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
        let bulk = rep != Rep::None
            && addr32
            && !self.state.flags.df()
            && matches!(
                m,
                M::Movsb | M::Movsw | M::Movsd | M::Stosb | M::Stosw | M::Stosd
            );
        loop {
            if rep != Rep::None && get(self, ECX) == 0 {
                break;
            }
            // Many iterations at once where they stay in pages the TLB holds: what the
            // loop below would do, one iteration at a time, with no fault and no stop
            // possible before the last (each stop is checked below as after one).
            let done = if bulk {
                let room = self
                    .budget_end
                    .saturating_sub(self.state.icount + iterations);
                self.string_bulk(m, src_seg, size, room)
            } else {
                0
            };
            if done > 0 {
                iterations += done;
                let c = get(self, ECX);
                if c == 0 {
                    break;
                }
                if self.state.icount + iterations >= self.budget_end {
                    self.state.icount += iterations - 1;
                    self.state.rip = self.cur_eip;
                    self.end_block = true;
                    return Ok(());
                }
                continue;
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

    /// Up to `room` iterations of REP MOVS or STOS (32-bit addresses, DF clear) done at
    /// once, within the current source and destination pages and only if the TLB holds
    /// them (the loop's first iteration on a page fills it) and the segment limits allow
    /// them all. Returns how many were done (0: none, the caller does one the slow way);
    /// ECX, ESI and EDI are advanced by that many.
    fn string_bulk(&mut self, m: M, src_seg: usize, size: u32, room: u64) -> u64 {
        let step = size as u64;
        let user = self.user();
        let di = self.state.gpr[EDI] as u32;
        let Ok(dst_lin) = self.seg_lin(ES, di, size, true) else {
            return 0;
        };
        let Some((dst, dst_room)) = self.host_in_page(dst_lin, true, user) else {
            return 0;
        };
        let mut n = (self.state.gpr[ECX] as u32 as u64)
            .min(room)
            .min(dst_room / step);
        let movs = matches!(m, M::Movsb | M::Movsw | M::Movsd);
        let mut src = std::ptr::null();
        if movs {
            let si = self.state.gpr[ESI] as u32;
            let Ok(src_lin) = self.seg_lin(src_seg, si, size, false) else {
                return 0;
            };
            let Some((from, src_room)) = self.host_in_page(src_lin, false, user) else {
                return 0;
            };
            n = n.min(src_room / step);
            let bytes = (n * step) as u32;
            if n == 0 || self.seg_lin(src_seg, si, bytes, false).is_err() {
                return 0;
            }
            src = from as *const u8;
        }
        let bytes = n * step;
        if n == 0 || self.seg_lin(ES, di, bytes as u32, true).is_err() {
            return 0;
        }
        if movs {
            // SAFETY: both ranges lie inside one host page of guest memory each (the TLB
            // entries were made from the guest memory mapping, and `n` stops at the end of
            // either page). The copy goes forward an element at a time where the
            // destination overlaps the source ahead of it, as the instruction does.
            unsafe {
                if dst as usize > src as usize && (dst as usize) < src as usize + bytes as usize {
                    let size = size as usize;
                    let mut element = [0u8; 4];
                    for i in (0..bytes as usize).step_by(size) {
                        std::ptr::copy_nonoverlapping(src.add(i), element.as_mut_ptr(), size);
                        std::ptr::copy_nonoverlapping(element.as_ptr(), dst.add(i), size);
                    }
                } else {
                    std::ptr::copy(src, dst, bytes as usize);
                }
            }
            let si = self.state.gpr[ESI] as u32;
            self.state.gpr[ESI] = si.wrapping_add(bytes as u32) as u64;
        } else {
            let v = self.state.gpr[EAX] as u32;
            // SAFETY: as above, the destination range is inside one host page of guest
            // memory.
            unsafe {
                match size {
                    1 => std::ptr::write_bytes(dst, v as u8, bytes as usize),
                    2 => (0..n as usize)
                        .for_each(|i| (dst.add(2 * i) as *mut u16).write_unaligned(v as u16)),
                    _ => (0..n as usize)
                        .for_each(|i| (dst.add(4 * i) as *mut u32).write_unaligned(v)),
                }
            }
        }
        self.state.gpr[EDI] = di.wrapping_add(bytes as u32) as u64;
        let c = self.state.gpr[ECX] as u32;
        self.state.gpr[ECX] = c.wrapping_sub(n as u32) as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use crate::mem::NullBus;
    use crate::state::*;
    use crate::Cpu;
    use iced_x86::code_asm::*;

    const CODE: u64 = 0x1000;
    const GDT: u64 = 0x600;
    const IDT: u64 = 0x800;
    const HANDLER: u64 = 0x3000;
    const PAGE_DIR: u64 = 0x10_0000;
    const PAGE_TABLE: u64 = 0x10_1000;
    /// Not present when paging is on.
    const HOLE: u64 = 0x20_0000;

    /// A CPU in flat 32-bit protected mode (paging on with the page at [`HOLE`] absent,
    /// if `paging`), whose faults halt at [`HANDLER`], about to run `code` (then HLT).
    fn machine(paging: bool, code: impl FnOnce(&mut CodeAssembler)) -> Cpu {
        let mut cpu = Cpu::new(4 << 20, 0).unwrap();
        let mut a = CodeAssembler::new(32).unwrap();
        code(&mut a);
        a.hlt().unwrap();
        cpu.write_phys(CODE, &a.assemble(CODE).unwrap());
        cpu.write_phys(HANDLER, &[0xF4]);
        let desc = |access: u64| 0x00CF_0000_0000_FFFF | access << 40;
        let gdt: Vec<u8> = [0, desc(0x9A), desc(0x92)]
            .iter()
            .flat_map(|d: &u64| d.to_le_bytes())
            .collect();
        cpu.write_phys(GDT, &gdt);
        let gate = HANDLER & 0xFFFF | 0x08 << 16 | 0x8E00 << 32 | (HANDLER >> 16) << 48;
        let idt: Vec<u8> = (0..32).flat_map(|_| gate.to_le_bytes()).collect();
        cpu.write_phys(IDT, &idt);
        let pt: Vec<u8> = (0..1024u64)
            .flat_map(|i| {
                let present = if i << 12 == HOLE { 0 } else { 3 };
                ((i << 12 | present) as u32).to_le_bytes()
            })
            .collect();
        cpu.write_phys(PAGE_TABLE, &pt);
        cpu.write_phys(PAGE_DIR, &((PAGE_TABLE | 3) as u32).to_le_bytes());
        let st = &mut cpu.state;
        st.cr0 = CR0_ET | CR0_PE | if paging { CR0_PG } else { 0 };
        st.cr3 = PAGE_DIR;
        st.gdtr = DescTable {
            base: GDT,
            limit: 23,
        };
        st.idtr = DescTable {
            base: IDT,
            limit: 32 * 8 - 1,
        };
        st.seg = [Segment::flat(0x10, false, 0); 6];
        st.seg[CS] = Segment::flat(0x08, true, 0);
        st.gpr[ESP] = 0x9000;
        st.rip = CODE;
        cpu.flush_tlb();
        cpu
    }

    fn bytes(cpu: &Cpu, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        cpu.mem.read(at, &mut b);
        b
    }

    #[test]
    fn overlapping_rep_movsb_copies_forward_one_byte_at_a_time() {
        // dst = src + 1 over three pages: the first byte is repeated all along.
        let mut cpu = machine(false, |a| {
            a.mov(esi, 0x4_0ffe).unwrap();
            a.mov(edi, 0x4_0fff).unwrap();
            a.mov(ecx, 9000).unwrap();
            a.rep().movsb().unwrap();
        });
        cpu.write_phys(0x4_0ffe, &[0xAB, 1, 2, 3]);
        cpu.run(&mut NullBus, 100_000);
        assert!(cpu.state.halted);
        assert!(bytes(&cpu, 0x4_0ffe, 9001).iter().all(|&b| b == 0xAB));
        assert_eq!(bytes(&cpu, 0x4_0ffe + 9001, 1), [0]);
        assert_eq!(cpu.state.gpr[ECX], 0);
        assert_eq!(cpu.state.gpr[ESI], 0x4_0ffe + 9000);
        assert_eq!(cpu.state.gpr[EDI], 0x4_0fff + 9000);
    }

    #[test]
    fn overlapping_rep_movsd_copies_a_dword_at_a_time() {
        let mut cpu = machine(false, |a| {
            a.mov(esi, 0x4_0f00).unwrap();
            a.mov(edi, 0x4_0f01).unwrap();
            a.mov(ecx, 700).unwrap();
            a.rep().movsd().unwrap();
        });
        let mut model: Vec<u8> = (0..2804u32).map(|i| (i * 13 + 5) as u8).collect();
        cpu.write_phys(0x4_0f00, &model);
        for i in 0..700 {
            let element: Vec<u8> = model[4 * i..4 * i + 4].to_vec();
            model[4 * i + 1..4 * i + 5].copy_from_slice(&element);
        }
        cpu.run(&mut NullBus, 100_000);
        assert!(cpu.state.halted);
        assert_eq!(bytes(&cpu, 0x4_0f00, 2804), model);
    }

    #[test]
    fn rep_movsd_copies_across_pages_and_counts_every_iteration() {
        let mut cpu = machine(true, |a| {
            a.mov(esi, 0x5_0802).unwrap();
            a.mov(edi, 0x7_0010).unwrap();
            a.mov(ecx, 3000).unwrap();
            a.rep().movsd().unwrap();
        });
        let src: Vec<u8> = (0..12_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        cpu.write_phys(0x5_0802, &src);
        let start = cpu.state.icount;
        cpu.run(&mut NullBus, 100_000);
        assert!(cpu.state.halted);
        assert_eq!(bytes(&cpu, 0x7_0010, 12_000), src);
        // Three MOVs, 3000 iterations, HLT.
        assert_eq!(cpu.state.icount - start, 3 + 3000 + 1);
    }

    #[test]
    fn rep_stosd_faults_at_the_first_absent_page_with_the_count_left() {
        let mut cpu = machine(true, |a| {
            a.mov(eax, 0x1234_5678).unwrap();
            a.mov(edi, (HOLE - 4000) as u32).unwrap();
            a.mov(ecx, 5000).unwrap();
            a.rep().stosd().unwrap();
        });
        cpu.run(&mut NullBus, 100_000);
        assert!(cpu.state.halted);
        assert_eq!(cpu.state.rip, HANDLER + 1, "the #PF handler ran");
        assert_eq!(cpu.state.cr2, HOLE);
        assert_eq!(cpu.state.gpr[EDI], HOLE);
        assert_eq!(cpu.state.gpr[ECX], 5000 - 1000);
        let written = bytes(&cpu, HOLE - 4000, 4000);
        assert!(written.chunks(4).all(|w| w == 0x1234_5678u32.to_le_bytes()));
    }

    #[test]
    fn rep_stosb_stops_at_the_segment_limit_with_the_count_left() {
        let mut cpu = machine(false, |a| {
            a.mov(al, 0x5A).unwrap();
            a.mov(edi, 0x6_0000).unwrap();
            a.mov(ecx, 10_000).unwrap();
            a.rep().stosb().unwrap();
        });
        cpu.state.seg[ES].limit = 0x6_1233;
        cpu.state.seg[ES].attr &= !ATTR_G;
        cpu.run(&mut NullBus, 100_000);
        assert!(cpu.state.halted);
        assert_eq!(cpu.state.rip, HANDLER + 1, "the #GP handler ran");
        assert_eq!(cpu.state.gpr[EDI], 0x6_1234);
        assert_eq!(cpu.state.gpr[ECX], 10_000 - 0x1234);
        assert!(bytes(&cpu, 0x6_0000, 0x1234).iter().all(|&b| b == 0x5A));
        assert_eq!(bytes(&cpu, 0x6_1234, 1), [0]);
    }

    #[test]
    fn rep_stosw_stops_at_the_budget_and_resumes() {
        let mut cpu = machine(false, |a| {
            a.mov(eax, 0xBEEF).unwrap();
            a.mov(edi, 0x6_0000).unwrap();
            a.mov(ecx, 4000).unwrap();
            a.rep().stosw().unwrap();
        });
        // Three MOVs, then 1000 iterations.
        cpu.run(&mut NullBus, 1003);
        let rep_at = cpu.state.rip;
        assert_eq!(cpu.state.gpr[ECX], 3000);
        assert_eq!(cpu.state.gpr[EDI], 0x6_0000 + 2000);
        assert_eq!(bytes(&cpu, 0x6_0000 + 1998, 4), [0xEF, 0xBE, 0, 0]);
        cpu.run(&mut NullBus, 10_000);
        assert!(cpu.state.halted);
        assert_ne!(cpu.state.rip, rep_at);
        assert!(bytes(&cpu, 0x6_0000, 8000)
            .chunks(2)
            .all(|w| w == [0xEF, 0xBE]));
        assert_eq!(cpu.state.gpr[ECX], 0);
    }
}
