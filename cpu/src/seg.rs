//! Protected-mode segmentation: descriptor tables and segment register loads.

use crate::exception::{Exception, Res};
use crate::mem::Bus;
use crate::state::{
    Segment, ATTR_ACCESSED, ATTR_CODE, ATTR_DC, ATTR_G, ATTR_P, ATTR_RW, ATTR_S, SS,
};
use crate::Cpu;

/// A raw 8-byte descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor(pub u64);

impl Descriptor {
    pub fn base(&self) -> u64 {
        let d = self.0;
        ((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24)
    }
    pub fn limit(&self) -> u32 {
        let d = self.0;
        let raw = ((d & 0xFFFF) | (((d >> 48) & 0xF) << 16)) as u32;
        if self.attr() & ATTR_G != 0 {
            (raw << 12) | 0xFFF
        } else {
            raw
        }
    }
    /// Access byte in bits 0-7, AVL/L/D/G in bits 12-15.
    pub fn attr(&self) -> u16 {
        ((self.0 >> 40) as u16) & 0xF0FF
    }
    pub fn dpl(&self) -> u8 {
        ((self.0 >> 45) & 3) as u8
    }
    pub fn present(&self) -> bool {
        self.attr() & ATTR_P != 0
    }
    pub fn is_system(&self) -> bool {
        self.attr() & ATTR_S == 0
    }
    pub fn is_code(&self) -> bool {
        !self.is_system() && self.attr() & ATTR_CODE != 0
    }
    pub fn sys_type(&self) -> u8 {
        ((self.0 >> 40) & 0xF) as u8
    }
    /// Gate fields: target selector, offset, parameter count.
    pub fn gate_selector(&self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub fn gate_offset(&self) -> u32 {
        ((self.0 & 0xFFFF) | ((self.0 >> 32) & 0xFFFF_0000)) as u32
    }
    pub fn gate_params(&self) -> u32 {
        ((self.0 >> 32) & 0x1F) as u32
    }
    pub fn to_segment(&self, selector: u16) -> Segment {
        Segment {
            base: self.base(),
            limit: self.limit(),
            selector,
            attr: self.attr(),
        }
    }
}

impl Cpu {
    /// Linear address of a selector's descriptor, or #GP(selector) beyond the table limit.
    pub fn descriptor_addr(&self, sel: u16) -> Res<u64> {
        let index = (sel & !7) as u32;
        let (base, limit) = if sel & 4 != 0 {
            let l = &self.state.ldtr;
            if !l.present() || l.selector & !3 == 0 {
                return Err(Exception::gp((sel & !3) as u32));
            }
            (l.base, l.limit)
        } else {
            (self.state.gdtr.base, self.state.gdtr.limit)
        };
        if index + 7 > limit {
            return Err(Exception::gp((sel & !3) as u32));
        }
        Ok((base + index as u64) & 0xFFFF_FFFF)
    }

    /// Reads a descriptor (a supervisor access whatever the CPL).
    pub fn read_descriptor(&mut self, bus: &mut dyn Bus, sel: u16) -> Res<Descriptor> {
        let addr = self.descriptor_addr(sel)?;
        let lo = self.read_lin(bus, addr, 4, false)?;
        let hi = self.read_lin(bus, (addr + 4) & 0xFFFF_FFFF, 4, false)?;
        Ok(Descriptor(lo as u64 | (hi as u64) << 32))
    }

    /// Sets the accessed bit of a code/data descriptor if it is clear.
    pub fn set_accessed(&mut self, bus: &mut dyn Bus, sel: u16, d: Descriptor) -> Res<()> {
        if d.attr() & ATTR_ACCESSED == 0 {
            let addr = self.descriptor_addr(sel)?;
            let hi = ((d.0 >> 32) as u32) | (1 << 8);
            self.write_lin(bus, (addr + 4) & 0xFFFF_FFFF, 4, hi, false)?;
        }
        Ok(())
    }

    /// MOV/POP/LxS to a data or stack segment register in protected mode.
    pub fn load_seg_protected(&mut self, bus: &mut dyn Bus, seg: usize, sel: u16) -> Res<()> {
        let cpl = self.state.cpl;
        let rpl = (sel & 3) as u8;
        let err = (sel & !3) as u32;
        if sel & !3 == 0 {
            if seg == SS {
                return Err(Exception::gp0());
            }
            // A null selector loads an unusable segment; using it raises #GP(0).
            self.state.seg[seg] = Segment {
                selector: sel,
                ..Default::default()
            };
            return Ok(());
        }
        let d = self.read_descriptor(bus, sel)?;
        if seg == SS {
            if rpl != cpl
                || d.dpl() != cpl
                || d.is_system()
                || d.is_code()
                || d.attr() & ATTR_RW == 0
            {
                return Err(Exception::gp(err));
            }
            if !d.present() {
                return Err(Exception::ss(err));
            }
        } else {
            if d.is_system() || (d.is_code() && d.attr() & ATTR_RW == 0) {
                return Err(Exception::gp(err));
            }
            let conforming_code = d.is_code() && d.attr() & ATTR_DC != 0;
            if !conforming_code && (rpl > d.dpl() || cpl > d.dpl()) {
                return Err(Exception::gp(err));
            }
            if !d.present() {
                return Err(Exception::np(err));
            }
        }
        self.set_accessed(bus, sel, d)?;
        self.state.seg[seg] = Descriptor(d.0 | (1 << 40)).to_segment(sel);
        Ok(())
    }

    /// After a privilege change to an outer level: data segment registers the new CPL may
    /// not use are loaded with null (RET/IRET to an outer level).
    pub fn invalidate_outer_segments(&mut self) {
        let cpl = self.state.cpl;
        for seg in [
            crate::state::ES,
            crate::state::DS,
            crate::state::FS,
            crate::state::GS,
        ] {
            let s = self.state.seg[seg];
            let conforming_code = s.is_code() && s.attr & ATTR_DC != 0;
            if s.present() && !conforming_code && s.dpl() < cpl {
                self.state.seg[seg] = Segment {
                    selector: 0,
                    ..Default::default()
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_fields() {
        // Flat 4 GiB ring-0 code: base 0, limit FFFFF, G=1, D=1, type A (exec/read), P.
        let d = Descriptor(0x00CF_9A00_0000_FFFF);
        assert_eq!(d.base(), 0);
        assert_eq!(d.limit(), 0xFFFF_FFFF);
        assert!(d.is_code() && d.present());
        assert_eq!(d.dpl(), 0);
        let s = d.to_segment(8);
        assert!(s.big());
        // Base 12345678 limit 0x1234 byte granular data DPL 3.
        let d = Descriptor(0x1200_F234_5678_1234);
        assert_eq!(d.base(), 0x1234_5678);
        assert_eq!(d.limit(), 0x1234);
        assert_eq!(d.dpl(), 3);
        assert!(!d.is_code() && !d.is_system());
    }
}
