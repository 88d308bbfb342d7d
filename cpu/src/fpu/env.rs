//! FSTENV/FLDENV and FSAVE/FRSTOR images (SDM vol. 1, figures 8-9 to 8-12): 14 or 28
//! bytes of environment by operand size, in the protected-mode layout (selector and
//! offset pointers) or the real/V86-mode layout (20/32-bit linear pointers split around
//! the opcode), followed for FSAVE by ST(0)..ST(7) as 10-byte values.

use super::float::{BUSY, ES, EXC, F80};
use super::FpuState;
use crate::exception::Res;
use crate::mem::Bus;
use crate::Cpu;
use iced_x86::{Instruction, MemorySize};

fn put16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn get16(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}
fn get32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Writes the environment image; returns its length (14 or 28). Reserved halves of the
/// 32-bit layout read as ones, as on Intel processors.
pub fn store_env(f: &FpuState, size32: bool, protected: bool, out: &mut [u8]) -> usize {
    let fop = (f.fop & 0x7FF) as u32;
    // Real/V86 layouts hold linear addresses.
    let lip = if protected {
        f.fip
    } else {
        ((f.fcs as u32) << 4).wrapping_add(f.fip)
    };
    let ldp = if protected {
        f.fdp
    } else {
        ((f.fds as u32) << 4).wrapping_add(f.fdp)
    };
    if size32 {
        put32(out, 0, 0xFFFF_0000 | f.control as u32);
        put32(out, 4, 0xFFFF_0000 | f.status as u32);
        put32(out, 8, 0xFFFF_0000 | f.tag as u32);
        if protected {
            put32(out, 12, f.fip);
            put32(out, 16, f.fcs as u32 | (fop << 16));
            put32(out, 20, f.fdp);
            put32(out, 24, 0xFFFF_0000 | f.fds as u32);
        } else {
            put32(out, 12, 0xFFFF_0000 | (lip & 0xFFFF));
            put32(out, 16, ((lip >> 16) << 12) | fop);
            put32(out, 20, 0xFFFF_0000 | (ldp & 0xFFFF));
            put32(out, 24, (ldp >> 16) << 12);
        }
        28
    } else {
        put16(out, 0, f.control);
        put16(out, 2, f.status);
        put16(out, 4, f.tag);
        if protected {
            put16(out, 6, f.fip as u16);
            put16(out, 8, f.fcs);
            put16(out, 10, f.fdp as u16);
            put16(out, 12, f.fds);
        } else {
            put16(out, 6, lip as u16);
            put16(out, 8, ((((lip >> 16) & 0xF) << 12) | fop) as u16);
            put16(out, 10, ldp as u16);
            put16(out, 12, (((ldp >> 16) & 0xF) << 12) as u16);
        }
        14
    }
}

/// Loads an environment image (the inverse of [`store_env`]). Tags other than "empty"
/// are recomputed from the register contents, as the P6 does; ES and B follow the flags.
pub fn load_env(f: &mut FpuState, size32: bool, protected: bool, d: &[u8]) -> usize {
    let n = if size32 {
        f.control = get16(d, 0);
        f.status = get16(d, 4);
        f.tag = get16(d, 8);
        if protected {
            f.fip = get32(d, 12);
            f.fcs = get16(d, 16);
            f.fop = get16(d, 18) & 0x7FF;
            f.fdp = get32(d, 20);
            f.fds = get16(d, 24);
        } else {
            let w = get32(d, 16);
            f.fip = (get32(d, 12) & 0xFFFF) | ((w >> 12) << 16);
            f.fop = (w & 0x7FF) as u16;
            f.fdp = (get32(d, 20) & 0xFFFF) | ((get32(d, 24) >> 12) << 16);
            f.fcs = 0;
            f.fds = 0;
        }
        28
    } else {
        f.control = get16(d, 0);
        f.status = get16(d, 2);
        f.tag = get16(d, 4);
        if protected {
            f.fip = get16(d, 6) as u32;
            f.fcs = get16(d, 8);
            f.fdp = get16(d, 10) as u32;
            f.fds = get16(d, 12);
        } else {
            let w = get16(d, 8) as u32;
            f.fip = get16(d, 6) as u32 | ((w >> 12) << 16);
            f.fop = (w & 0x7FF) as u16;
            f.fdp = get16(d, 10) as u32 | (((get16(d, 12) as u32) >> 12) << 16);
            f.fcs = 0;
            f.fds = 0;
        }
        14
    };
    f.control = (f.control & 0x1F7F) | 0x0040;
    f.status &= !(ES | BUSY);
    f.update_es();
    let _ = EXC;
    n
}

/// FSAVE image: environment then ST(0)..ST(7). Returns the length.
pub fn store_state(f: &FpuState, size32: bool, protected: bool, out: &mut [u8; 108]) -> usize {
    let n = store_env(f, size32, protected, out);
    for i in 0..8 {
        out[n + 10 * i..n + 10 * i + 10].copy_from_slice(&f.st(i).to_bytes());
    }
    n + 80
}

/// FRSTOR image.
pub fn load_state(f: &mut FpuState, size32: bool, protected: bool, d: &[u8]) {
    let n = load_env(f, size32, protected, d);
    for i in 0..8 {
        let mut b = [0u8; 10];
        b.copy_from_slice(&d[n + 10 * i..n + 10 * i + 10]);
        let p = f.phys(i);
        f.regs[p] = F80::from_bytes(&b);
    }
    f.retag();
}

impl Cpu {
    fn env_layout(&self, ins: &Instruction) -> (bool, bool) {
        let size32 = matches!(
            ins.memory_size(),
            MemorySize::FpuEnv28 | MemorySize::FpuState108
        );
        let protected = self.state.protected() && !self.state.v86();
        (size32, protected)
    }

    /// FNSTENV (masks all exceptions afterwards) and FNSAVE (then reinitializes).
    pub(crate) fn fpu_stenv(
        &mut self,
        bus: &mut dyn Bus,
        ins: &Instruction,
        save: bool,
    ) -> Res<()> {
        let (seg, off) = self.mem_operand(ins);
        let (size32, protected) = self.env_layout(ins);
        let mut buf = [0u8; 108];
        let len = if save {
            store_state(&self.state.fpu, size32, protected, &mut buf)
        } else {
            store_env(&self.state.fpu, size32, protected, &mut buf)
        };
        self.write_mem_bytes(bus, seg, off, &buf[..len])?;
        if save {
            self.state.fpu.init();
        } else {
            self.state.fpu.control |= EXC;
        }
        Ok(())
    }

    /// FLDENV and FRSTOR.
    pub(crate) fn fpu_ldenv(
        &mut self,
        bus: &mut dyn Bus,
        ins: &Instruction,
        rstor: bool,
    ) -> Res<()> {
        let (seg, off) = self.mem_operand(ins);
        let (size32, protected) = self.env_layout(ins);
        let len = (if size32 { 28 } else { 14 }) + if rstor { 80 } else { 0 };
        let mut buf = [0u8; 108];
        self.read_mem_bytes(bus, seg, off, &mut buf[..len])?;
        if rstor {
            load_state(&mut self.state.fpu, size32, protected, &buf[..len]);
        } else {
            load_env(&mut self.state.fpu, size32, protected, &buf[..len]);
            self.state.fpu.retag();
        }
        Ok(())
    }
}
