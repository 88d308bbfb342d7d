//! Hardware task switches (Intel SDM vol. 3, ch. 7) for 32-bit and 16-bit TSSs: through
//! JMP/CALL to a TSS or a task gate, IRET with NT set, and interrupts through task gates.

use super::transfer::{accessed, is_conforming_code, is_null, sel_code, TYPE_LDT};
use crate::exception::{Exception, Res};
use crate::flags::NT;
use crate::mem::Bus;
use crate::seg::Descriptor;
use crate::state::{Segment, ATTR_RW, CR0_TS, CS, DS, ES, FS, GS, SS};
use crate::Cpu;

/// What started a task switch: it decides the busy bits, NT and the back link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskSwitch {
    Jump,
    Call,
    Iret,
    Interrupt,
}

/// The register image of a task as its TSS holds it.
struct TaskImage {
    cr3: u32,
    eip: u32,
    eflags: u32,
    gpr: [u32; 8],
    /// ES, CS, SS, DS, FS, GS (FS and GS are 0 in a 16-bit TSS).
    seg: [u16; 6],
    ldt: u16,
    /// The T bit: a debug trap on entry to the task (32-bit TSS only).
    debug_trap: bool,
}

/// Faults in the new task's context may themselves switch tasks; past this depth the
/// guest is looping through broken tasks and the CPU shuts down instead.
const MAX_NESTED_TASK_FAULTS: u8 = 8;

impl Cpu {
    /// Switches to the task of TSS `sel` (descriptor `desc`, present and of a TSS type).
    /// `ret` is the EIP saved in the old task; `error` is pushed on the new task's stack
    /// (an exception delivered through a task gate). Faults after the new task's state
    /// is loaded are delivered in the new task, and the switch itself then succeeds.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn task_switch(
        &mut self,
        bus: &mut dyn Bus,
        sel: u16,
        desc: Descriptor,
        kind: TaskSwitch,
        ext: bool,
        ret: u32,
        error: Option<u32>,
    ) -> Res<()> {
        let ext_bit = ext as u32;
        let err = sel_code(sel) | ext_bit;
        let new32 = desc.sys_type() & 8 != 0;
        let busy = desc.sys_type() & 2 != 0;
        if kind == TaskSwitch::Iret {
            if !busy {
                return Err(Exception::ts(err));
            }
        } else if busy {
            return Err(Exception::gp(err));
        }
        if desc.limit() < if new32 { 0x67 } else { 0x2B } {
            return Err(Exception::ts(err));
        }
        let new_base = desc.base();
        let image = self.read_tss(bus, new_base, new32)?;

        // Save the outgoing task.
        let old = self.state.tr;
        let old32 = old.sys_type() & 8 != 0;
        if old.limit < if old32 { 0x5F } else { 0x29 } {
            return Err(Exception::ts(sel_code(old.selector) | ext_bit));
        }
        let mut old_flags = self.state.flags.get();
        if kind == TaskSwitch::Iret {
            old_flags &= !NT;
        }
        self.save_tss(bus, old.base, old32, ret, old_flags)?;
        if matches!(kind, TaskSwitch::Jump | TaskSwitch::Iret) {
            self.set_tss_busy(bus, old.selector, false)?;
        }
        let mut new_flags = image.eflags;
        if matches!(kind, TaskSwitch::Call | TaskSwitch::Interrupt) {
            self.write_lin(bus, new_base & 0xFFFF_FFFF, 2, old.selector as u32, false)?;
            new_flags |= NT;
        }
        if kind != TaskSwitch::Iret {
            self.set_tss_busy(bus, sel, true)?;
        }

        // Commit: from here on the CPU is in the new task.
        self.state.tr = Descriptor(desc.0 | (1 << 41)).to_segment(sel);
        self.state.cr0 |= CR0_TS;
        // Local breakpoints (L0-L3, LE) belong to the old task.
        self.state.dr[7] &= !0x155;
        if new32 && self.state.paging() {
            self.state.cr3 = image.cr3 as u64 & 0xFFFF_F018;
            self.tlb.flush_non_global();
        }
        for (i, &v) in image.gpr.iter().enumerate() {
            if new32 {
                self.state.set_reg32(i, v);
            } else {
                self.state.set_reg16(i, v as u16);
            }
        }
        self.state.flags.set(new_flags);
        let eip = if new32 { image.eip } else { image.eip & 0xFFFF };
        self.state.rip = eip as u64;
        self.cur_eip = eip as u64;
        self.end_block = true;
        self.check_irq = true;
        let loaded = self
            .load_task_segments(bus, &image, ext_bit)
            .and_then(|()| {
                if eip > self.state.seg[CS].limit {
                    return Err(Exception::gp0());
                }
                match error {
                    Some(code) => self.push(bus, if new32 { 4 } else { 2 }, code),
                    None => Ok(()),
                }
            });
        if let Err(e) = loaded {
            self.fault_in_new_task(bus, e);
        } else if image.debug_trap {
            // The T bit: #DB (DR6.BT) before the new task's first instruction.
            self.state.dr[6] |= 1 << 15;
            let ret = self.state.rip;
            if let Err(e) = self.interrupt(bus, crate::exception::DB, None, false, false, ret) {
                self.fault_in_new_task(bus, e);
            }
        }
        Ok(())
    }

    fn fault_in_new_task(&mut self, bus: &mut dyn Bus, e: Exception) {
        if self.nested_task_faults >= MAX_NESTED_TASK_FAULTS {
            self.shutdown = true;
            return;
        }
        self.nested_task_faults += 1;
        self.deliver_exception(bus, e);
        self.nested_task_faults -= 1;
    }

    fn read_tss(&mut self, bus: &mut dyn Bus, base: u64, is32: bool) -> Res<TaskImage> {
        let mut rd = |cpu: &mut Cpu, off: u64, size: u32| {
            cpu.read_lin(bus, (base + off) & 0xFFFF_FFFF, size, false)
        };
        let mut image = TaskImage {
            cr3: 0,
            eip: 0,
            eflags: 0,
            gpr: [0; 8],
            seg: [0; 6],
            ldt: 0,
            debug_trap: false,
        };
        if is32 {
            image.cr3 = rd(self, 0x1C, 4)?;
            image.eip = rd(self, 0x20, 4)?;
            image.eflags = rd(self, 0x24, 4)?;
            for i in 0..8 {
                image.gpr[i] = rd(self, 0x28 + 4 * i as u64, 4)?;
            }
            for i in 0..6 {
                image.seg[i] = rd(self, 0x48 + 4 * i as u64, 2)? as u16;
            }
            image.ldt = rd(self, 0x60, 2)? as u16;
            image.debug_trap = rd(self, 0x64, 1)? & 1 != 0;
        } else {
            image.eip = rd(self, 0x0E, 2)?;
            image.eflags = rd(self, 0x10, 2)?;
            for i in 0..8 {
                image.gpr[i] = rd(self, 0x12 + 2 * i as u64, 2)?;
            }
            for (i, seg) in [ES, CS, SS, DS].into_iter().enumerate() {
                image.seg[seg] = rd(self, 0x22 + 2 * i as u64, 2)? as u16;
            }
            image.ldt = rd(self, 0x2A, 2)? as u16;
        }
        Ok(image)
    }

    /// Writes the current task's dynamic state into its TSS at `base`.
    fn save_tss(
        &mut self,
        bus: &mut dyn Bus,
        base: u64,
        is32: bool,
        eip: u32,
        eflags: u32,
    ) -> Res<()> {
        let gpr: [u32; 8] = core::array::from_fn(|i| self.state.reg32(i));
        let sels: [u16; 6] = core::array::from_fn(|i| self.state.seg[i].selector);
        let at = |off: u64| (base + off) & 0xFFFF_FFFF;
        if is32 {
            // Check the whole save area first so a page fault cannot leave it half written.
            self.probe_write(at(0x20), 0x40, false)?;
            self.write_lin(bus, at(0x20), 4, eip, false)?;
            self.write_lin(bus, at(0x24), 4, eflags, false)?;
            for (i, &v) in gpr.iter().enumerate() {
                self.write_lin(bus, at(0x28 + 4 * i as u64), 4, v, false)?;
            }
            for (i, &s) in sels.iter().enumerate() {
                self.write_lin(bus, at(0x48 + 4 * i as u64), 2, s as u32, false)?;
            }
        } else {
            self.probe_write(at(0x0E), 0x1C, false)?;
            self.write_lin(bus, at(0x0E), 2, eip, false)?;
            self.write_lin(bus, at(0x10), 2, eflags, false)?;
            for (i, &v) in gpr.iter().enumerate() {
                self.write_lin(bus, at(0x12 + 2 * i as u64), 2, v, false)?;
            }
            for (i, seg) in [ES, CS, SS, DS].into_iter().enumerate() {
                self.write_lin(bus, at(0x22 + 2 * i as u64), 2, sels[seg] as u32, false)?;
            }
        }
        Ok(())
    }

    /// Sets or clears the busy bit of the TSS descriptor `sel` in the GDT.
    pub(crate) fn set_tss_busy(&mut self, bus: &mut dyn Bus, sel: u16, busy: bool) -> Res<()> {
        let addr = self.descriptor_addr(sel & !4)?;
        let hi_addr = (addr + 4) & 0xFFFF_FFFF;
        let hi = self.read_lin(bus, hi_addr, 4, false)?;
        let new = if busy { hi | (1 << 9) } else { hi & !(1 << 9) };
        if new != hi {
            self.write_lin(bus, hi_addr, 4, new, false)?;
        }
        Ok(())
    }

    /// Loads LDTR and the segment registers of the new task, with the checks of a task
    /// switch (#TS for bad selectors, #NP / #SS for absent segments).
    fn load_task_segments(&mut self, bus: &mut dyn Bus, image: &TaskImage, ext: u32) -> Res<()> {
        // Every selector is visible at once; descriptors are unusable until loaded.
        for (i, &sel) in image.seg.iter().enumerate() {
            self.state.seg[i] = Segment {
                selector: sel,
                ..Default::default()
            };
        }
        self.state.ldtr = Segment::default();
        let v86 = self.state.v86();
        self.state.cpl = if v86 { 3 } else { (image.seg[CS] & 3) as u8 };

        let ldt = image.ldt;
        if !is_null(ldt) {
            let err = sel_code(ldt) | ext;
            if ldt & 4 != 0 {
                return Err(Exception::ts(err));
            }
            let d = self.fetch_descriptor(bus, ldt, Exception::ts, ext)?;
            if !d.is_system() || d.sys_type() != TYPE_LDT || !d.present() {
                return Err(Exception::ts(err));
            }
            self.state.ldtr = d.to_segment(ldt);
        }
        if v86 {
            for (i, &sel) in image.seg.iter().enumerate() {
                self.load_seg_real(i, sel);
            }
            return Ok(());
        }
        let cpl = self.state.cpl;

        let cs = image.seg[CS];
        if is_null(cs) {
            return Err(Exception::ts(ext));
        }
        let err = sel_code(cs) | ext;
        let d = self.fetch_descriptor(bus, cs, Exception::ts, ext)?;
        if !d.is_code() {
            return Err(Exception::ts(err));
        }
        if is_conforming_code(d) {
            if d.dpl() > cpl {
                return Err(Exception::ts(err));
            }
        } else if d.dpl() != cpl {
            return Err(Exception::ts(err));
        }
        if !d.present() {
            return Err(Exception::np(err));
        }
        self.set_accessed(bus, cs, d)?;
        self.state.seg[CS] = accessed(d).to_segment(cs);

        let ss = self.check_new_stack(bus, image.seg[SS], cpl, ext, Exception::ts)?;
        self.state.seg[SS] = ss;

        for seg in [DS, ES, FS, GS] {
            let sel = image.seg[seg];
            if is_null(sel) {
                continue;
            }
            let err = sel_code(sel) | ext;
            let d = self.fetch_descriptor(bus, sel, Exception::ts, ext)?;
            if d.is_system() || (d.is_code() && d.attr() & ATTR_RW == 0) {
                return Err(Exception::ts(err));
            }
            let rpl = (sel & 3) as u8;
            if !is_conforming_code(d) && (d.dpl() < cpl || d.dpl() < rpl) {
                return Err(Exception::ts(err));
            }
            if !d.present() {
                return Err(Exception::np(err));
            }
            self.set_accessed(bus, sel, d)?;
            self.state.seg[seg] = accessed(d).to_segment(sel);
        }
        Ok(())
    }
}
