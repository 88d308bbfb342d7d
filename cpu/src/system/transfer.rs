//! Protected-mode control transfers: far JMP/CALL/RET through call gates and task gates,
//! IRET (including the return to V86 mode), interrupt and exception delivery through the
//! IDT, and the I/O permission check. Task switches are in `task.rs`; the instructions
//! that inspect descriptors or load system segments are in `descriptors.rs`.
//!
//! Every transfer first reads and checks everything it needs (descriptors, the new stack,
//! the frame it pushes), and only then changes registers, so a fault anywhere before the
//! commit leaves the state as it was and the instruction (or event) can restart.

use crate::exception::{Exception, Res};
use crate::flags::{AC, ARITH, DF, ID, IF, IOPL, NT, RF, TF, VIF, VIP, VM};
use crate::mem::Bus;
use crate::seg::Descriptor;
use crate::state::{
    Segment, ATTR_ACCESSED, ATTR_CODE, ATTR_DC, ATTR_RW, CS, DS, ES, ESP, FS, GS, SS,
};
use crate::Cpu;

/// System descriptor types (bits 0-3 of the access byte with S = 0).
pub(crate) const TYPE_TSS16_AVAIL: u8 = 1;
pub(crate) const TYPE_LDT: u8 = 2;
pub(crate) const TYPE_TSS16_BUSY: u8 = 3;
pub(crate) const TYPE_CALL_GATE16: u8 = 4;
pub(crate) const TYPE_TASK_GATE: u8 = 5;
pub(crate) const TYPE_INT_GATE16: u8 = 6;
pub(crate) const TYPE_TRAP_GATE16: u8 = 7;
pub(crate) const TYPE_TSS32_AVAIL: u8 = 9;
pub(crate) const TYPE_TSS32_BUSY: u8 = 11;
pub(crate) const TYPE_CALL_GATE32: u8 = 12;
pub(crate) const TYPE_INT_GATE32: u8 = 14;
pub(crate) const TYPE_TRAP_GATE32: u8 = 15;

/// The error-code form of a selector: index and TI, RPL bits cleared.
#[inline]
pub(crate) fn sel_code(sel: u16) -> u32 {
    (sel & !3) as u32
}

#[inline]
pub(crate) fn is_null(sel: u16) -> bool {
    sel & !3 == 0
}

pub(crate) fn is_conforming_code(d: Descriptor) -> bool {
    d.is_code() && d.attr() & ATTR_DC != 0
}

pub(crate) fn is_writable_data(d: Descriptor) -> bool {
    !d.is_system() && !d.is_code() && d.attr() & ATTR_RW != 0
}

/// Whether `size` bytes at `off` lie inside the segment (expand-down aware).
pub(crate) fn within_segment(seg: &Segment, off: u32, size: u32) -> bool {
    let last = off.wrapping_add(size - 1);
    if last < off {
        return false;
    }
    if seg.attr & (ATTR_CODE | ATTR_DC) == ATTR_DC && !seg.is_system() {
        let upper = if seg.big() { u32::MAX } else { 0xFFFF };
        off > seg.limit && last <= upper
    } else {
        last <= seg.limit
    }
}

/// A loaded code segment with its accessed bit and the RPL the CPU gives it.
fn code_segment(d: Descriptor, sel: u16, rpl: u8) -> Segment {
    Descriptor(d.0 | (1 << 40)).to_segment((sel & !3) | rpl as u16)
}

/// The stack a transfer pushes its frame on (possibly not loaded yet).
struct FrameStack {
    seg: Segment,
    sp: u32,
    /// The pushes are user-mode accesses (the stack belongs to ring 3).
    user: bool,
    /// Error code of the #SS a limit violation raises.
    fault_code: u32,
}

impl Cpu {
    /// Reads the descriptor of `sel`; a selector beyond its table's limit raises
    /// `fault(selector | ext)` instead of the plain #GP that `read_descriptor` gives.
    pub(crate) fn fetch_descriptor(
        &mut self,
        bus: &mut dyn Bus,
        sel: u16,
        fault: fn(u32) -> Exception,
        ext: u32,
    ) -> Res<Descriptor> {
        let addr = match self.descriptor_addr(sel) {
            Ok(a) => a,
            Err(_) => return Err(fault(sel_code(sel) | ext)),
        };
        let lo = self.read_lin(bus, addr, 4, false)?;
        let hi = self.read_lin(bus, (addr + 4) & 0xFFFF_FFFF, 4, false)?;
        Ok(Descriptor(lo as u64 | (hi as u64) << 32))
    }

    /// Writes `values` (first pushed first) below `stack.sp` on `stack.seg` with
    /// `size`-byte slots and returns the new stack pointer. Every slot is checked against
    /// the limit before anything is written; nothing in the register state changes.
    fn push_frame(
        &mut self,
        bus: &mut dyn Bus,
        stack: &FrameStack,
        size: u32,
        values: &[u32],
    ) -> Res<u32> {
        let seg = &stack.seg;
        let mask = if seg.big() { u32::MAX } else { 0xFFFF };
        let mut cur = stack.sp;
        for _ in values {
            cur = cur.wrapping_sub(size) & mask;
            if !seg.present() || !within_segment(seg, cur, size) {
                return Err(Exception::ss(stack.fault_code));
            }
        }
        // A page fault below leaves only scratch bytes under the old stack pointer.
        let mut cur = stack.sp;
        for &v in values {
            cur = cur.wrapping_sub(size) & mask;
            let lin = (seg.base + cur as u64) & 0xFFFF_FFFF;
            self.write_lin(bus, lin, size, v, stack.user)?;
        }
        Ok(cur)
    }

    /// Sets ESP after switching to the stack `seg`: a 16-bit stack keeps the upper half
    /// of `upper_from`.
    fn set_stack_pointer(&mut self, seg: &Segment, sp: u32, upper_from: u32) {
        let v = if seg.big() {
            sp
        } else {
            (upper_from & 0xFFFF_0000) | (sp & 0xFFFF)
        };
        self.state.gpr[ESP] = v as u64;
    }

    /// The stack for privilege level `dpl` from the current TSS: (SS, ESP).
    pub(crate) fn tss_stack(&mut self, bus: &mut dyn Bus, dpl: u8, ext: u32) -> Res<(u16, u32)> {
        let tr = self.state.tr;
        let err = sel_code(tr.selector) | ext;
        if tr.sys_type() & 8 != 0 {
            let off = 4 + dpl as u32 * 8;
            if off + 7 > tr.limit {
                return Err(Exception::ts(err));
            }
            let esp = self.read_lin(bus, (tr.base + off as u64) & 0xFFFF_FFFF, 4, false)?;
            let ss = self.read_lin(bus, (tr.base + off as u64 + 4) & 0xFFFF_FFFF, 2, false)?;
            Ok((ss as u16, esp))
        } else {
            let off = 2 + dpl as u32 * 4;
            if off + 3 > tr.limit {
                return Err(Exception::ts(err));
            }
            let sp = self.read_lin(bus, (tr.base + off as u64) & 0xFFFF_FFFF, 2, false)?;
            let ss = self.read_lin(bus, (tr.base + off as u64 + 2) & 0xFFFF_FFFF, 2, false)?;
            Ok((ss as u16, sp))
        }
    }

    /// Checks a stack segment about to be loaded for privilege `pl` by a transfer:
    /// `fault` is #TS for a stack taken from the TSS, #GP for one popped by RET/IRET.
    /// A stack that is not present raises #SS. Sets the accessed bit.
    pub(crate) fn check_new_stack(
        &mut self,
        bus: &mut dyn Bus,
        ss_sel: u16,
        pl: u8,
        ext: u32,
        fault: fn(u32) -> Exception,
    ) -> Res<Segment> {
        if is_null(ss_sel) {
            return Err(fault(ext));
        }
        let err = sel_code(ss_sel) | ext;
        if (ss_sel & 3) as u8 != pl {
            return Err(fault(err));
        }
        let d = self.fetch_descriptor(bus, ss_sel, fault, ext)?;
        if !is_writable_data(d) || d.dpl() != pl {
            return Err(fault(err));
        }
        if !d.present() {
            return Err(Exception::ss(err));
        }
        self.set_accessed(bus, ss_sel, d)?;
        Ok(Descriptor(d.0 | (1 << 40)).to_segment(ss_sel))
    }

    /// Checks the target of a far transfer that returns to `rpl` (RETF, IRET): a present
    /// code segment whose DPL fits the RPL, which is not more privileged than the CPL.
    fn check_return_code(&mut self, bus: &mut dyn Bus, cs_sel: u16) -> Res<Descriptor> {
        if is_null(cs_sel) {
            return Err(Exception::gp0());
        }
        let err = sel_code(cs_sel);
        let rpl = (cs_sel & 3) as u8;
        let d = self.fetch_descriptor(bus, cs_sel, Exception::gp, 0)?;
        if !d.is_code() || rpl < self.state.cpl {
            return Err(Exception::gp(err));
        }
        if is_conforming_code(d) {
            if d.dpl() > rpl {
                return Err(Exception::gp(err));
            }
        } else if d.dpl() != rpl {
            return Err(Exception::gp(err));
        }
        if !d.present() {
            return Err(Exception::np(err));
        }
        Ok(d)
    }

    /// Makes `d` the code segment at privilege `cpl` and jumps to `off`.
    fn commit_cs(&mut self, d: Descriptor, sel: u16, cpl: u8, off: u32) {
        self.state.seg[CS] = code_segment(d, sel, cpl);
        self.state.cpl = cpl;
        self.state.rip = off as u64;
        self.end_block = true;
    }

    // ---- far JMP ----

    pub(crate) fn far_jump_protected(&mut self, bus: &mut dyn Bus, sel: u16, off: u32) -> Res<()> {
        if is_null(sel) {
            return Err(Exception::gp0());
        }
        let err = sel_code(sel);
        let cpl = self.state.cpl;
        let rpl = (sel & 3) as u8;
        let d = self.fetch_descriptor(bus, sel, Exception::gp, 0)?;
        if d.is_code() {
            self.check_direct_code(d, sel)?;
            if off > d.limit() {
                return Err(Exception::gp0());
            }
            self.set_accessed(bus, sel, d)?;
            self.commit_cs(d, sel, cpl, off);
            return Ok(());
        }
        if !d.is_system() {
            return Err(Exception::gp(err));
        }
        match d.sys_type() {
            TYPE_CALL_GATE16 | TYPE_CALL_GATE32 => {
                if d.dpl() < cpl || d.dpl() < rpl {
                    return Err(Exception::gp(err));
                }
                if !d.present() {
                    return Err(Exception::np(err));
                }
                let (target_sel, target, target_off) = self.call_gate_target(bus, d)?;
                // A JMP through a call gate never changes privilege.
                let conforming = is_conforming_code(target);
                if (conforming && target.dpl() > cpl) || (!conforming && target.dpl() != cpl) {
                    return Err(Exception::gp(sel_code(target_sel)));
                }
                if !target.present() {
                    return Err(Exception::np(sel_code(target_sel)));
                }
                if target_off > target.limit() {
                    return Err(Exception::gp0());
                }
                self.set_accessed(bus, target_sel, target)?;
                self.commit_cs(target, target_sel, cpl, target_off);
                Ok(())
            }
            TYPE_TASK_GATE | TYPE_TSS16_AVAIL | TYPE_TSS32_AVAIL => {
                if d.dpl() < cpl || d.dpl() < rpl {
                    return Err(Exception::gp(err));
                }
                if !d.present() {
                    return Err(Exception::np(err));
                }
                let ret = self.state.rip as u32;
                self.task_transfer(bus, sel, d, super::task::TaskSwitch::Jump, ret)
            }
            _ => Err(Exception::gp(err)),
        }
    }

    /// Privilege and presence checks for a JMP/CALL straight to a code segment.
    fn check_direct_code(&self, d: Descriptor, sel: u16) -> Res<()> {
        let err = sel_code(sel);
        let cpl = self.state.cpl;
        if is_conforming_code(d) {
            if d.dpl() > cpl {
                return Err(Exception::gp(err));
            }
        } else if (sel & 3) as u8 > cpl || d.dpl() != cpl {
            return Err(Exception::gp(err));
        }
        if !d.present() {
            return Err(Exception::np(err));
        }
        Ok(())
    }

    /// Reads and type-checks the code segment a call gate points to: (selector,
    /// descriptor, entry offset). Presence and privilege are the caller's to check.
    fn call_gate_target(
        &mut self,
        bus: &mut dyn Bus,
        gate: Descriptor,
    ) -> Res<(u16, Descriptor, u32)> {
        let target_sel = gate.gate_selector();
        if is_null(target_sel) {
            return Err(Exception::gp0());
        }
        let target = self.fetch_descriptor(bus, target_sel, Exception::gp, 0)?;
        if !target.is_code() || target.dpl() > self.state.cpl {
            return Err(Exception::gp(sel_code(target_sel)));
        }
        let off = if gate.sys_type() == TYPE_CALL_GATE32 {
            gate.gate_offset()
        } else {
            gate.gate_offset() & 0xFFFF
        };
        Ok((target_sel, target, off))
    }

    /// A JMP/CALL to a TSS or a task gate (the gate's checks are done): finds the TSS and
    /// switches to it.
    fn task_transfer(
        &mut self,
        bus: &mut dyn Bus,
        sel: u16,
        d: Descriptor,
        kind: super::task::TaskSwitch,
        ret: u32,
    ) -> Res<()> {
        let (tss_sel, tss) = if d.sys_type() == TYPE_TASK_GATE {
            self.task_gate_tss(bus, d, 0)?
        } else {
            (sel, d)
        };
        self.task_switch(bus, tss_sel, tss, kind, false, ret, None)
    }

    /// The TSS a task gate names: it must be an available TSS in the GDT.
    fn task_gate_tss(
        &mut self,
        bus: &mut dyn Bus,
        gate: Descriptor,
        ext: u32,
    ) -> Res<(u16, Descriptor)> {
        let tss_sel = gate.gate_selector();
        let err = sel_code(tss_sel) | ext;
        if tss_sel & 4 != 0 || is_null(tss_sel) {
            return Err(Exception::gp(err));
        }
        let tss = self.fetch_descriptor(bus, tss_sel, Exception::gp, ext)?;
        if !tss.is_system() || !matches!(tss.sys_type(), TYPE_TSS16_AVAIL | TYPE_TSS32_AVAIL) {
            return Err(Exception::gp(err));
        }
        if !tss.present() {
            return Err(Exception::np(err));
        }
        Ok((tss_sel, tss))
    }

    // ---- far CALL ----

    pub(crate) fn far_call_protected(
        &mut self,
        bus: &mut dyn Bus,
        sel: u16,
        off: u32,
        size: u32,
    ) -> Res<()> {
        if is_null(sel) {
            return Err(Exception::gp0());
        }
        let err = sel_code(sel);
        let cpl = self.state.cpl;
        let rpl = (sel & 3) as u8;
        let ret = self.state.rip as u32;
        let old_cs = self.state.seg[CS].selector as u32;
        let d = self.fetch_descriptor(bus, sel, Exception::gp, 0)?;
        if d.is_code() {
            self.check_direct_code(d, sel)?;
            if off > d.limit() {
                return Err(Exception::gp0());
            }
            self.set_accessed(bus, sel, d)?;
            let ss = self.state.seg[SS];
            let esp = self.state.gpr[ESP] as u32;
            let sp = self.push_frame(
                bus,
                &FrameStack {
                    seg: ss,
                    sp: esp,
                    user: cpl == 3,
                    fault_code: 0,
                },
                size,
                &[old_cs, ret],
            )?;
            self.set_sp(sp);
            self.commit_cs(d, sel, cpl, off);
            return Ok(());
        }
        if !d.is_system() {
            return Err(Exception::gp(err));
        }
        match d.sys_type() {
            TYPE_CALL_GATE16 | TYPE_CALL_GATE32 => {
                if d.dpl() < cpl || d.dpl() < rpl {
                    return Err(Exception::gp(err));
                }
                if !d.present() {
                    return Err(Exception::np(err));
                }
                self.call_through_gate(bus, d)
            }
            TYPE_TASK_GATE | TYPE_TSS16_AVAIL | TYPE_TSS32_AVAIL => {
                if d.dpl() < cpl || d.dpl() < rpl {
                    return Err(Exception::gp(err));
                }
                if !d.present() {
                    return Err(Exception::np(err));
                }
                self.task_transfer(bus, sel, d, super::task::TaskSwitch::Call, ret)
            }
            _ => Err(Exception::gp(err)),
        }
    }

    /// CALL through a call gate (its own checks done): to the same privilege, or to a
    /// more privileged non-conforming segment on the stack the TSS names for it, copying
    /// the gate's parameter count of stack slots.
    fn call_through_gate(&mut self, bus: &mut dyn Bus, gate: Descriptor) -> Res<()> {
        let cpl = self.state.cpl;
        let (target_sel, target, target_off) = self.call_gate_target(bus, gate)?;
        let target_err = sel_code(target_sel);
        if !target.present() {
            return Err(Exception::np(target_err));
        }
        let size = if gate.sys_type() == TYPE_CALL_GATE32 {
            4
        } else {
            2
        };
        let ret = self.state.rip as u32;
        let old_cs = self.state.seg[CS].selector as u32;
        let old_ss = self.state.seg[SS].selector as u32;
        let old_esp = self.state.gpr[ESP] as u32;
        if !is_conforming_code(target) && target.dpl() < cpl {
            let dpl = target.dpl();
            let (ss_sel, esp) = self.tss_stack(bus, dpl, 0)?;
            let ss = self.check_new_stack(bus, ss_sel, dpl, 0, Exception::ts)?;
            let params = gate.gate_params();
            let mut frame = Vec::with_capacity(4 + params as usize);
            frame.push(old_ss);
            frame.push(old_esp);
            // The deepest parameter is copied first so the order on the new stack matches.
            for i in (0..params).rev() {
                frame.push(self.stack_read(bus, i * size, size)?);
            }
            frame.push(old_cs);
            frame.push(ret);
            if target_off > target.limit() {
                return Err(Exception::gp0());
            }
            self.set_accessed(bus, target_sel, target)?;
            let sp = self.push_frame(
                bus,
                &FrameStack {
                    seg: ss,
                    sp: esp,
                    user: dpl == 3,
                    fault_code: sel_code(ss_sel),
                },
                size,
                &frame,
            )?;
            self.state.seg[SS] = ss;
            self.set_stack_pointer(&ss, sp, esp);
            self.commit_cs(target, target_sel, dpl, target_off);
        } else {
            if target_off > target.limit() {
                return Err(Exception::gp0());
            }
            self.set_accessed(bus, target_sel, target)?;
            let ss = self.state.seg[SS];
            let sp = self.push_frame(
                bus,
                &FrameStack {
                    seg: ss,
                    sp: old_esp,
                    user: cpl == 3,
                    fault_code: 0,
                },
                size,
                &[old_cs, ret],
            )?;
            self.set_sp(sp);
            self.commit_cs(target, target_sel, cpl, target_off);
        }
        Ok(())
    }

    // ---- far RET ----

    pub(crate) fn far_return_protected(
        &mut self,
        bus: &mut dyn Bus,
        size: u32,
        imm: u32,
    ) -> Res<()> {
        let cpl = self.state.cpl;
        let off = self.stack_read(bus, 0, size)?;
        let cs_sel = self.stack_read(bus, size, 2)? as u16;
        let off = if size == 2 { off & 0xFFFF } else { off };
        let code = self.check_return_code(bus, cs_sel)?;
        let rpl = (cs_sel & 3) as u8;
        let esp = self.state.gpr[ESP] as u32;
        if rpl == cpl {
            if off > code.limit() {
                return Err(Exception::gp0());
            }
            self.set_accessed(bus, cs_sel, code)?;
            self.set_sp(esp.wrapping_add(2 * size).wrapping_add(imm) & self.sp_mask());
            self.commit_cs(code, cs_sel, cpl, off);
            return Ok(());
        }
        // Return to an outer level: the caller's SS:ESP sit above the parameters.
        let outer = (2 * size).wrapping_add(imm);
        let new_esp = self.stack_read(bus, outer, size)?;
        let ss_sel = self.stack_read(bus, outer.wrapping_add(size), 2)? as u16;
        let ss = self.check_new_stack(bus, ss_sel, rpl, 0, Exception::gp)?;
        if off > code.limit() {
            return Err(Exception::gp0());
        }
        self.set_accessed(bus, cs_sel, code)?;
        self.state.seg[SS] = ss;
        let new_esp = if size == 2 { new_esp & 0xFFFF } else { new_esp };
        let sp = new_esp.wrapping_add(imm);
        self.set_stack_pointer(&ss, sp, new_esp);
        self.commit_cs(code, cs_sel, rpl, off);
        self.invalidate_outer_segments();
        Ok(())
    }

    // ---- IRET ----

    pub(crate) fn iret_protected(&mut self, bus: &mut dyn Bus, size: u32) -> Res<()> {
        let cur_flags = self.state.flags.get();
        if cur_flags & NT != 0 {
            return self.task_return(bus);
        }
        let cpl = self.state.cpl;
        let eip = self.stack_read(bus, 0, size)?;
        let cs_sel = self.stack_read(bus, size, 2)? as u16;
        let new_flags = self.stack_read(bus, 2 * size, size)?;
        if size == 4 && new_flags & VM != 0 && cpl == 0 {
            return self.iret_to_v86(bus, eip, cs_sel, new_flags);
        }
        let code = self.check_return_code(bus, cs_sel)?;
        let rpl = (cs_sel & 3) as u8;
        let eip = if size == 2 { eip & 0xFFFF } else { eip };
        // Which flags IRET may change depends on the privilege it runs at.
        let mut writable = ARITH | TF | DF | NT | RF | AC | ID;
        if cpl <= self.state.flags.iopl() {
            writable |= IF;
        }
        if cpl == 0 {
            writable |= IOPL | VIF | VIP;
        }
        if size == 2 {
            writable &= 0xFFFF;
        }
        let result_flags = ((cur_flags & !writable) | (new_flags & writable)) & !VM;
        let esp = self.state.gpr[ESP] as u32;
        if rpl == cpl {
            if eip > code.limit() {
                return Err(Exception::gp0());
            }
            self.set_accessed(bus, cs_sel, code)?;
            self.set_sp(esp.wrapping_add(3 * size) & self.sp_mask());
            self.commit_cs(code, cs_sel, cpl, eip);
            self.state.flags.set(result_flags);
            return Ok(());
        }
        let new_esp = self.stack_read(bus, 3 * size, size)?;
        let ss_sel = self.stack_read(bus, 4 * size, 2)? as u16;
        let ss = self.check_new_stack(bus, ss_sel, rpl, 0, Exception::gp)?;
        if eip > code.limit() {
            return Err(Exception::gp0());
        }
        self.set_accessed(bus, cs_sel, code)?;
        self.state.seg[SS] = ss;
        let new_esp = if size == 2 { new_esp & 0xFFFF } else { new_esp };
        self.set_stack_pointer(&ss, new_esp, new_esp);
        self.commit_cs(code, cs_sel, rpl, eip);
        self.state.flags.set(result_flags);
        self.invalidate_outer_segments();
        Ok(())
    }

    /// IRETD at CPL 0 with VM set in the popped EFLAGS: the frame also holds ESP, SS, ES,
    /// DS, FS and GS, and all of them are loaded the real-mode way.
    fn iret_to_v86(&mut self, bus: &mut dyn Bus, eip: u32, cs_sel: u16, new_flags: u32) -> Res<()> {
        let mut rest = [0u32; 6];
        for (i, v) in rest.iter_mut().enumerate() {
            *v = self.stack_read(bus, 12 + 4 * i as u32, 4)?;
        }
        let [new_esp, ss_sel, es_sel, ds_sel, fs_sel, gs_sel] = rest;
        if eip > 0xFFFF {
            return Err(Exception::gp0());
        }
        self.state.flags.set(new_flags);
        self.state.cpl = 3;
        self.load_seg_real(CS, cs_sel);
        for (seg, sel) in [
            (SS, ss_sel),
            (ES, es_sel),
            (DS, ds_sel),
            (FS, fs_sel),
            (GS, gs_sel),
        ] {
            self.load_seg_real(seg, sel as u16);
        }
        self.state.gpr[ESP] = new_esp as u64;
        self.state.rip = eip as u64;
        self.end_block = true;
        Ok(())
    }

    /// IRET with NT set: back to the task whose TSS selector is the back link of this one.
    fn task_return(&mut self, bus: &mut dyn Bus) -> Res<()> {
        let tr = self.state.tr;
        let link = self.read_lin(bus, tr.base & 0xFFFF_FFFF, 2, false)? as u16;
        let err = sel_code(link);
        if link & 4 != 0 || is_null(link) {
            return Err(Exception::ts(err));
        }
        let d = self.fetch_descriptor(bus, link, Exception::ts, 0)?;
        if !d.is_system() || !matches!(d.sys_type(), TYPE_TSS16_BUSY | TYPE_TSS32_BUSY) {
            return Err(Exception::ts(err));
        }
        if !d.present() {
            return Err(Exception::np(err));
        }
        let ret = self.state.rip as u32;
        self.task_switch(
            bus,
            link,
            d,
            super::task::TaskSwitch::Iret,
            false,
            ret,
            None,
        )
    }

    // ---- interrupts and exceptions ----

    pub(crate) fn interrupt_protected(
        &mut self,
        bus: &mut dyn Bus,
        vector: u8,
        error: Option<u32>,
        soft: bool,
        ext: bool,
        ret: u64,
    ) -> Res<()> {
        // EXT marks faults raised while delivering an event the program did not ask for
        // with INT n / INT3 / INTO: external interrupts and earlier exceptions.
        let ext = ext || !soft;
        let ext_bit = ext as u32;
        let idt_err = vector as u32 * 8 + 2 + ext_bit;
        let entry = vector as u32 * 8;
        if entry + 7 > self.state.idtr.limit {
            return Err(Exception::gp(idt_err));
        }
        let addr = (self.state.idtr.base + entry as u64) & 0xFFFF_FFFF;
        let lo = self.read_lin(bus, addr, 4, false)?;
        let hi = self.read_lin(bus, (addr + 4) & 0xFFFF_FFFF, 4, false)?;
        let gate = Descriptor(lo as u64 | (hi as u64) << 32);
        let gate_type = gate.sys_type();
        if !gate.is_system()
            || !matches!(
                gate_type,
                TYPE_TASK_GATE
                    | TYPE_INT_GATE16
                    | TYPE_TRAP_GATE16
                    | TYPE_INT_GATE32
                    | TYPE_TRAP_GATE32
            )
        {
            return Err(Exception::gp(idt_err));
        }
        // INT n, INT3 and INTO may only use gates their privilege level can reach.
        if soft && gate.dpl() < self.state.cpl {
            return Err(Exception::gp(idt_err));
        }
        if !gate.present() {
            return Err(Exception::np(idt_err));
        }
        let ret = ret as u32;
        if gate_type == TYPE_TASK_GATE {
            let (tss_sel, tss) = self.task_gate_tss(bus, gate, ext_bit)?;
            return self.task_switch(
                bus,
                tss_sel,
                tss,
                super::task::TaskSwitch::Interrupt,
                ext,
                ret,
                error,
            );
        }
        let gate32 = gate_type & 8 != 0;
        let trap = gate_type & 1 != 0;
        let size = if gate32 { 4 } else { 2 };
        let offset = if gate32 {
            gate.gate_offset()
        } else {
            gate.gate_offset() & 0xFFFF
        };
        let code_sel = gate.gate_selector();
        if is_null(code_sel) {
            return Err(Exception::gp(ext_bit));
        }
        let code_err = sel_code(code_sel) | ext_bit;
        let code = self.fetch_descriptor(bus, code_sel, Exception::gp, ext_bit)?;
        let cpl = self.state.cpl;
        if !code.is_code() || code.dpl() > cpl {
            return Err(Exception::gp(code_err));
        }
        if !code.present() {
            return Err(Exception::np(code_err));
        }
        let v86 = self.state.v86();
        let old_flags = self.state.flags.get();
        let old_cs = self.state.seg[CS].selector as u32;
        let old_ss = self.state.seg[SS].selector as u32;
        let old_esp = self.state.gpr[ESP] as u32;
        let new_cpl;
        if !is_conforming_code(code) && code.dpl() < cpl {
            // To an inner level on the stack the TSS names for it. From V86 mode only
            // ring 0 may be the target.
            let dpl = code.dpl();
            if v86 && dpl != 0 {
                return Err(Exception::gp(code_err));
            }
            let (ss_sel, esp) = self.tss_stack(bus, dpl, ext_bit)?;
            let ss = self.check_new_stack(bus, ss_sel, dpl, ext_bit, Exception::ts)?;
            let mut frame = Vec::with_capacity(10);
            if v86 {
                for seg in [GS, FS, DS, ES] {
                    frame.push(self.state.seg[seg].selector as u32);
                }
            }
            frame.extend_from_slice(&[old_ss, old_esp, old_flags, old_cs, ret]);
            if let Some(e) = error {
                frame.push(e);
            }
            if offset > code.limit() {
                return Err(Exception::gp(ext_bit));
            }
            self.set_accessed(bus, code_sel, code)?;
            let ss_err = sel_code(ss_sel) | ext_bit;
            let sp = self.push_frame(
                bus,
                &FrameStack {
                    seg: ss,
                    sp: esp,
                    user: dpl == 3,
                    fault_code: ss_err,
                },
                size,
                &frame,
            )?;
            if v86 {
                // The V86 segment values mean nothing to protected-mode code.
                for seg in [GS, FS, DS, ES] {
                    self.state.seg[seg] = Segment::default();
                }
            }
            self.state.seg[SS] = ss;
            self.set_stack_pointer(&ss, sp, esp);
            new_cpl = dpl;
        } else {
            if v86 {
                return Err(Exception::gp(code_err));
            }
            let mut frame = vec![old_flags, old_cs, ret];
            if let Some(e) = error {
                frame.push(e);
            }
            if offset > code.limit() {
                return Err(Exception::gp(ext_bit));
            }
            self.set_accessed(bus, code_sel, code)?;
            let ss = self.state.seg[SS];
            let sp = self.push_frame(
                bus,
                &FrameStack {
                    seg: ss,
                    sp: old_esp,
                    user: cpl == 3,
                    fault_code: ext_bit,
                },
                size,
                &frame,
            )?;
            self.set_sp(sp);
            new_cpl = cpl;
        }
        self.commit_cs(code, code_sel, new_cpl, offset);
        let mut clear = TF | NT | RF | VM;
        if !trap {
            clear |= IF;
        }
        self.state.flags.set(old_flags & !clear);
        Ok(())
    }

    // ---- I/O permission ----

    /// IN/OUT/INS/OUTS permission: CPL <= IOPL, else (and always in V86 mode) every bit
    /// for the accessed ports in the TSS I/O permission bitmap must be clear.
    pub(crate) fn check_io(&mut self, bus: &mut dyn Bus, port: u16, size: u32) -> Res<()> {
        if !self.state.protected()
            || (!self.state.v86() && self.state.cpl <= self.state.flags.iopl())
        {
            return Ok(());
        }
        let tr = self.state.tr;
        // Only a 32-bit TSS has a bitmap; it must reach the map base field.
        if tr.sys_type() & 8 == 0 || tr.limit < 0x67 {
            return Err(Exception::gp0());
        }
        let map_base = self.read_lin(bus, (tr.base + 0x66) & 0xFFFF_FFFF, 2, false)?;
        // Two bytes are always read: the ports of one access may straddle a byte.
        let byte = map_base + (port as u32 >> 3);
        if byte + 1 > tr.limit {
            return Err(Exception::gp0());
        }
        let bits = self.read_lin(bus, (tr.base + byte as u64) & 0xFFFF_FFFF, 2, false)?;
        let mask = ((1u32 << size) - 1) << (port & 7);
        if bits & mask != 0 {
            return Err(Exception::gp0());
        }
        Ok(())
    }
}

/// The descriptor with its accessed bit set, as the CPU caches it after a load.
pub(crate) fn accessed(d: Descriptor) -> Descriptor {
    Descriptor(d.0 | ((ATTR_ACCESSED as u64) << 40))
}
