//! Protected-mode control transfers: far JMP/CALL/RET through call gates and task gates,
//! IRET, interrupt and exception delivery through the IDT, task switches, and the
//! instructions that inspect descriptors (LAR, LSL, VERR, VERW, ARPL) or load system
//! segments (LLDT, LTR), plus SYSENTER/SYSEXIT and the I/O permission check.

use crate::exception::{Exception, Res};
use crate::mem::Bus;
use crate::Cpu;
use iced_x86::Instruction;

impl Cpu {
    pub(crate) fn far_jump_protected(
        &mut self,
        _bus: &mut dyn Bus,
        _sel: u16,
        _off: u32,
    ) -> Res<()> {
        Err(Exception::ud())
    }

    pub(crate) fn far_call_protected(
        &mut self,
        _bus: &mut dyn Bus,
        _sel: u16,
        _off: u32,
        _size: u32,
    ) -> Res<()> {
        Err(Exception::ud())
    }

    pub(crate) fn far_return_protected(
        &mut self,
        _bus: &mut dyn Bus,
        _size: u32,
        _imm: u32,
    ) -> Res<()> {
        Err(Exception::ud())
    }

    pub(crate) fn iret_protected(&mut self, _bus: &mut dyn Bus, _size: u32) -> Res<()> {
        Err(Exception::ud())
    }

    pub(crate) fn interrupt_protected(
        &mut self,
        _bus: &mut dyn Bus,
        _vector: u8,
        _error: Option<u32>,
        _soft: bool,
        _ext: bool,
        _ret: u64,
    ) -> Res<()> {
        Err(Exception::ud())
    }

    /// IN/OUT/INS/OUTS permission: CPL <= IOPL, else the TSS I/O bitmap (and always the
    /// bitmap in V86 mode).
    pub(crate) fn check_io(&mut self, _bus: &mut dyn Bus, _port: u16, _size: u32) -> Res<()> {
        if !self.state.protected()
            || (!self.state.v86() && self.state.cpl <= self.state.flags.iopl())
        {
            return Ok(());
        }
        Err(Exception::gp0())
    }

    pub(crate) fn exec_protected_only(
        &mut self,
        _bus: &mut dyn Bus,
        _ins: &Instruction,
    ) -> Res<()> {
        Err(Exception::ud())
    }
}
