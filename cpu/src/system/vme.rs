//! Virtual-8086 mode extensions (CR4.VME) and protected-mode virtual interrupts
//! (CR4.PVI), Intel SDM vol. 3 sections 20.3-20.4: at IOPL < 3 the IOPL-sensitive
//! instructions work on the virtual interrupt flag (VIF, with VIP pending) instead of
//! faulting, and INT n in V86 mode may be redirected to the V86 program's own interrupt
//! vector table through the TSS interrupt redirection bitmap.

use crate::exception::{Exception, Res};
use crate::flags::{ARITH, DF, IF, IOPL, NT, RF, TF, VIF, VIP};
use crate::mem::Bus;
use crate::state::{CR4_PVI, CR4_VME, CS, ESP};
use crate::Cpu;

impl Cpu {
    /// V86 mode at IOPL < 3 with CR4.VME: the IOPL-sensitive instructions are virtualised.
    fn vme_active(&self) -> bool {
        self.state.v86() && self.state.flags.iopl() < 3 && self.state.cr4 & CR4_VME != 0
    }

    /// CLI (`set` false) or STI (`set` true) that IOPL does not allow: with VME in V86
    /// mode or PVI at CPL 3 they change VIF instead; STI with VIP pending and every other
    /// case raise #GP(0).
    pub(crate) fn virtual_cli_sti(&mut self, set: bool) -> Res<()> {
        let pvi = self.state.protected()
            && !self.state.v86()
            && self.state.cpl == 3
            && self.state.cr4 & CR4_PVI != 0;
        if !self.vme_active() && !pvi {
            return Err(Exception::gp0());
        }
        if set {
            // The monitor wants to deliver a pending virtual interrupt now.
            if self.state.flags.bits & VIP != 0 {
                return Err(Exception::gp0());
            }
            self.state.flags.bits |= VIF;
        } else {
            self.state.flags.bits &= !VIF;
        }
        Ok(())
    }

    /// PUSHF in V86 mode at IOPL < 3: with VME a 16-bit PUSHF pushes FLAGS with IF read
    /// from VIF and IOPL reading 3; otherwise #GP(0).
    pub(crate) fn v86_pushf(&mut self, bus: &mut dyn Bus, size: u32) -> Res<()> {
        if !self.vme_active() || size != 2 {
            return Err(Exception::gp0());
        }
        let f = self.state.flags.get();
        let mut image = (f & 0xFFFF & !IF) | IOPL;
        if f & VIF != 0 {
            image |= IF;
        }
        self.push(bus, 2, image)
    }

    /// Applies a 16-bit FLAGS image popped in V86 mode under VME: #GP(0) if it sets TF,
    /// or sets IF while a virtual interrupt is pending; else IF goes to VIF and IOPL stays.
    fn vme_load_flags(&mut self, image: u32) -> Res<()> {
        let cur = self.state.flags.get();
        if image & TF != 0 || (image & IF != 0 && cur & VIP != 0) {
            return Err(Exception::gp0());
        }
        let writable = ARITH | DF | NT;
        let mut new = (cur & !writable) | (image & writable);
        new = if image & IF != 0 {
            new | VIF
        } else {
            new & !VIF
        };
        self.state.flags.set(new);
        Ok(())
    }

    /// POPF in V86 mode at IOPL < 3: only a 16-bit POPF under VME, else #GP(0).
    pub(crate) fn v86_popf(&mut self, bus: &mut dyn Bus, size: u32) -> Res<()> {
        if !self.vme_active() || size != 2 {
            return Err(Exception::gp0());
        }
        let image = self.stack_read(bus, 0, 2)?;
        self.vme_load_flags(image)?;
        let sp = self.state.gpr[ESP] as u32;
        self.set_sp(sp.wrapping_add(2) & self.sp_mask());
        Ok(())
    }

    /// IRET in V86 mode at IOPL < 3: only a 16-bit IRET under VME, else #GP(0).
    pub(crate) fn v86_iret(&mut self, bus: &mut dyn Bus, size: u32) -> Res<()> {
        if !self.vme_active() || size != 2 {
            return Err(Exception::gp0());
        }
        let ip = self.stack_read(bus, 0, 2)?;
        let cs = self.stack_read(bus, 2, 2)? as u16;
        let image = self.stack_read(bus, 4, 2)?;
        self.vme_load_flags(image)?;
        let sp = self.state.gpr[ESP] as u32;
        self.set_sp(sp.wrapping_add(6) & self.sp_mask());
        self.load_seg_real(CS, cs);
        self.state.rip = ip as u64;
        Ok(())
    }

    /// INT n in V86 mode. With VME, a clear bit in the TSS interrupt redirection bitmap
    /// sends it through the V86 program's vector table at linear 0; otherwise it goes
    /// through the IDT if IOPL is 3 and raises #GP(0) if not.
    pub(crate) fn v86_software_interrupt(&mut self, bus: &mut dyn Bus, vector: u8) -> Res<()> {
        if self.state.cr4 & CR4_VME != 0 && !self.redirection_bit(bus, vector)? {
            return self.v86_redirected_interrupt(bus, vector);
        }
        if self.state.flags.iopl() < 3 {
            return Err(Exception::gp0());
        }
        let ret = self.state.rip;
        self.interrupt(bus, vector, None, true, false, ret)
    }

    /// The vector's bit in the interrupt redirection bitmap: the 32 bytes just below the
    /// I/O permission bitmap of a 32-bit TSS.
    fn redirection_bit(&mut self, bus: &mut dyn Bus, vector: u8) -> Res<bool> {
        let tr = self.state.tr;
        if tr.sys_type() & 8 == 0 || tr.limit < 0x67 {
            return Err(Exception::gp0());
        }
        let map_base = self.read_lin(bus, (tr.base + 0x66) & 0xFFFF_FFFF, 2, false)?;
        let byte = (map_base + vector as u32 / 8).wrapping_sub(32);
        if byte > tr.limit {
            return Err(Exception::gp0());
        }
        let bits = self.read_lin(bus, (tr.base + byte as u64) & 0xFFFF_FFFF, 1, false)?;
        Ok(bits & (1 << (vector & 7)) != 0)
    }

    /// A redirected INT n: a real-mode style interrupt inside V86 mode. At IOPL < 3 the
    /// pushed FLAGS show VIF as IF and IOPL as 3, and VIF (not IF) is cleared.
    fn v86_redirected_interrupt(&mut self, bus: &mut dyn Bus, vector: u8) -> Res<()> {
        let entry = vector as u64 * 4;
        let ip = self.read_lin(bus, entry, 2, true)?;
        let cs = self.read_lin(bus, entry + 2, 2, true)? as u16;
        let f = self.state.flags.get();
        let virtual_if = self.state.flags.iopl() < 3;
        let mut image = f & 0xFFFF;
        if virtual_if {
            image = (image & !IF) | IOPL | if f & VIF != 0 { IF } else { 0 };
        }
        let old_cs = self.state.seg[CS].selector as u32;
        let ret = self.state.rip as u32;
        self.push(bus, 2, image)?;
        self.push(bus, 2, old_cs)?;
        self.push(bus, 2, ret)?;
        let cleared = TF | RF | if virtual_if { VIF } else { IF };
        self.state.flags.set(f & !cleared);
        self.load_seg_real(CS, cs);
        self.state.rip = ip as u64;
        Ok(())
    }
}
