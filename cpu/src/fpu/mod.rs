//! The x87 FPU.

use crate::exception::{Exception, Res};
use crate::mem::Bus;
use crate::state::{CR0_EM, CR0_MP, CR0_TS};
use crate::Cpu;
use iced_x86::Instruction;

#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FpuState {
    pub control: u16,
    pub status: u16,
    pub tag: u16,
}

impl Cpu {
    /// WAIT/FWAIT: #NM if CR0.MP and CR0.TS are both set.
    pub(crate) fn fpu_wait(&mut self) -> Res<()> {
        if self.state.cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS {
            return Err(Exception::nm());
        }
        Ok(())
    }

    pub(crate) fn exec_fpu(&mut self, _bus: &mut dyn Bus, _ins: &Instruction) -> Res<()> {
        if self.state.cr0 & (CR0_EM | CR0_TS) != 0 {
            return Err(Exception::nm());
        }
        Err(Exception::ud())
    }
}
