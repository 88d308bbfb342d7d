//! The two cascaded 8259A programmable interrupt controllers of the PC/AT, plus the
//! PIIX edge/level control registers (ELCR, ports 4D0h/4D1h).
//!
//! The master serves IRQ 0-7 and receives the slave (IRQ 8-15) on its input 2. Each
//! chip keeps IRR (requests), ISR (in service) and IMR (mask) and prioritises with a
//! rotating lowest-priority pointer. Edge-triggered inputs latch a request on a rising
//! edge; level-triggered inputs (per ELCR, or all of a chip with ICW1.LTIM) request for
//! as long as the line is high.

use crate::{Nanos, PortDevice};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Current input levels (for edge detection and level triggering).
    lines: u8,
    /// Inputs that are level-triggered (ELCR or LTIM).
    level: u8,
    elcr: u8,
    /// The input with the lowest priority (priority goes lowest+1, ..., lowest).
    lowest: u8,
    vector_base: u8,
    /// Initialisation: which ICW comes next (0 = initialised).
    init_step: u8,
    needs_icw4: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    ltim: bool,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    /// ELCR bits that may be set (lines 0, 1, 2 on the master and 0, 5 on the slave
    /// are always edge-triggered).
    elcr_mask: u8,
}

impl Chip {
    fn new(vector_base: u8, elcr_mask: u8) -> Chip {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0xFF,
            lines: 0,
            level: 0,
            elcr: 0,
            lowest: 7,
            vector_base,
            init_step: 0,
            needs_icw4: false,
            single: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            ltim: false,
            read_isr: false,
            poll: false,
            special_mask: false,
            elcr_mask,
        }
    }

    fn update_level_mask(&mut self) {
        self.level = if self.ltim { 0xFF } else { self.elcr };
    }

    fn set_line(&mut self, n: u8, high: bool) {
        let bit = 1 << n;
        if self.level & bit != 0 {
            if high {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if high && self.lines & bit == 0 {
            // An edge request stays latched even if the line falls before INTA (a
            // timer in square-wave mode must not lose ticks while IF is clear).
            self.irr |= bit;
        }
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// Inputs in priority order, highest first.
    fn priority_order(&self) -> impl Iterator<Item = u8> {
        let start = (self.lowest + 1) & 7;
        (0..8).map(move |i| (start + i) & 7)
    }

    /// The highest-priority request that may interrupt now.
    fn pending(&self) -> Option<u8> {
        let requests = self.irr & !self.imr;
        // (Asked before every block: nearly always nothing is requested.)
        if requests == 0 {
            return None;
        }
        for n in self.priority_order() {
            let bit = 1 << n;
            if self.isr & bit != 0 && !self.special_mask {
                // Nothing of lower priority than an in-service input gets through.
                return None;
            }
            if requests & bit != 0 && (self.isr & bit == 0) {
                return Some(n);
            }
        }
        None
    }

    /// The highest-priority in-service input.
    fn highest_in_service(&self) -> Option<u8> {
        self.priority_order().find(|&n| self.isr & (1 << n) != 0)
    }

    /// INTA: returns the input served, or None (spurious).
    fn acknowledge(&mut self) -> Option<u8> {
        let n = self.pending()?;
        let bit = 1 << n;
        if self.level & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.lowest = n;
            }
        } else {
            self.isr |= bit;
        }
        Some(n)
    }

    fn eoi(&mut self, specific: Option<u8>, rotate: bool) {
        let n = match specific {
            Some(n) => Some(n),
            None => self.highest_in_service(),
        };
        if let Some(n) = n {
            self.isr &= !(1 << n);
            if rotate {
                self.lowest = n;
            }
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1.
            self.init_step = 2;
            self.ltim = v & 0x08 != 0;
            self.single = v & 0x02 != 0;
            self.needs_icw4 = v & 0x01 != 0;
            self.imr = 0;
            self.isr = 0;
            self.irr &= self.level;
            self.lowest = 7;
            self.special_mask = false;
            self.read_isr = false;
            self.auto_eoi = false;
            self.update_level_mask();
        } else if v & 0x08 == 0 {
            // OCW2.
            let level = v & 7;
            match v >> 5 {
                0b001 => self.eoi(None, false),
                0b011 => self.eoi(Some(level), false),
                0b101 => self.eoi(None, true),
                0b100 => self.rotate_on_auto_eoi = true,
                0b000 => self.rotate_on_auto_eoi = false,
                0b111 => self.eoi(Some(level), true),
                0b110 => self.lowest = level,
                _ => {}
            }
        } else {
            // OCW3.
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            self.poll = v & 0x04 != 0;
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init_step {
            2 => {
                self.vector_base = v & 0xF8;
                self.init_step = if self.single {
                    if self.needs_icw4 {
                        4
                    } else {
                        0
                    }
                } else {
                    3
                };
            }
            3 => {
                self.init_step = if self.needs_icw4 { 4 } else { 0 };
            }
            4 => {
                self.auto_eoi = v & 0x02 != 0;
                self.init_step = 0;
            }
            _ => self.imr = v,
        }
    }
}

/// Master and slave 8259A.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// Power-on state: vectors 08h and 70h, everything masked (the BIOS programs it).
    pub fn new() -> Pic {
        Pic {
            master: Chip::new(0x08, 0xF8),
            slave: Chip::new(0x70, 0xDE),
        }
    }

    /// Drives input `line` (0-15).
    pub fn set_irq(&mut self, line: u8, level: bool) {
        if line < 8 {
            self.master.set_line(line, level);
        } else if line < 16 {
            self.slave.set_line(line - 8, level);
        }
        self.update_cascade();
    }

    fn update_cascade(&mut self) {
        let slave_requests = self.slave.pending().is_some();
        // The cascade input behaves as a level from the slave's INT output.
        let bit = 1 << 2;
        if slave_requests {
            self.master.irr |= bit;
        } else {
            self.master.irr &= !bit;
        }
        if slave_requests {
            self.master.lines |= bit;
        } else {
            self.master.lines &= !bit;
        }
    }

    /// The INTR line to the CPU.
    pub fn intr(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The interrupt acknowledge cycle: the vector to run.
    pub fn acknowledge(&mut self) -> u8 {
        let v = match self.master.acknowledge() {
            Some(2) if !self.master.single => match self.slave.acknowledge() {
                Some(n) => self.slave.vector_base | n,
                None => self.slave.vector_base | 7,
            },
            Some(n) => self.master.vector_base | n,
            None => self.master.vector_base | 7,
        };
        self.update_cascade();
        v
    }

    fn poll(chip: &mut Chip) -> u8 {
        chip.poll = false;
        match chip.acknowledge() {
            Some(n) => 0x80 | n,
            None => 0,
        }
    }
}

impl PortDevice for Pic {
    fn read(&mut self, port: u16, _size: u8, _now: Nanos) -> u32 {
        let v = match port {
            0x20 | 0xA0 => {
                let chip = if port == 0x20 {
                    &mut self.master
                } else {
                    &mut self.slave
                };
                if chip.poll {
                    Self::poll(chip)
                } else if chip.read_isr {
                    chip.isr
                } else {
                    chip.irr
                }
            }
            0x21 => self.master.imr,
            0xA1 => self.slave.imr,
            0x4D0 => self.master.elcr,
            0x4D1 => self.slave.elcr,
            _ => 0xFF,
        };
        self.update_cascade();
        v as u32
    }

    fn write(&mut self, port: u16, _size: u8, value: u32, _now: Nanos) {
        let v = value as u8;
        match port {
            0x20 => self.master.write_command(v),
            0x21 => self.master.write_data(v),
            0xA0 => self.slave.write_command(v),
            0xA1 => self.slave.write_data(v),
            0x4D0 => {
                self.master.elcr = v & self.master.elcr_mask;
                self.master.update_level_mask();
            }
            0x4D1 => {
                self.slave.elcr = v & self.slave.elcr_mask;
                self.slave.update_level_mask();
            }
            _ => {}
        }
        self.update_cascade();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PC BIOS initialisation: vectors 08h/70h, cascade, 8086 mode, all open.
    fn init(p: &mut Pic) {
        for (port, v) in [
            (0x20, 0x11),
            (0xA0, 0x11),
            (0x21, 0x08),
            (0xA1, 0x70),
            (0x21, 0x04),
            (0xA1, 0x02),
            (0x21, 0x01),
            (0xA1, 0x01),
            (0x21, 0x00),
            (0xA1, 0x00),
        ] {
            p.write(port, 1, v, 0);
        }
    }

    fn eoi(p: &mut Pic, slave: bool) {
        if slave {
            p.write(0xA0, 1, 0x20, 0);
        }
        p.write(0x20, 1, 0x20, 0);
    }

    #[test]
    fn priority_and_eoi() {
        let mut p = Pic::new();
        init(&mut p);
        assert!(!p.intr());
        p.set_irq(4, true);
        p.set_irq(1, true);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x09);
        // IRQ 4 is lower priority than the in-service IRQ 1.
        assert!(!p.intr());
        eoi(&mut p, false);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x0C);
        eoi(&mut p, false);
        assert!(!p.intr());
        // Edge: the line is still high, no new request until it falls and rises.
        p.set_irq(1, true);
        assert!(!p.intr());
        p.set_irq(1, false);
        p.set_irq(1, true);
        assert!(p.intr());
    }

    #[test]
    fn masking_and_irr_isr_reads() {
        let mut p = Pic::new();
        init(&mut p);
        p.write(0x21, 1, 0x01, 0);
        p.set_irq(0, true);
        assert!(!p.intr());
        p.write(0x20, 1, 0x0A, 0); // OCW3: read IRR
        assert_eq!(p.read(0x20, 1, 0), 0x01);
        p.write(0x21, 1, 0x00, 0);
        assert_eq!(p.acknowledge(), 0x08);
        p.write(0x20, 1, 0x0B, 0); // read ISR
        assert_eq!(p.read(0x20, 1, 0), 0x01);
        p.write(0x20, 1, 0x60, 0); // specific EOI for 0
        assert_eq!(p.read(0x20, 1, 0), 0x00);
        assert_eq!(p.read(0x21, 1, 0), 0x00);
    }

    #[test]
    fn cascade_delivers_slave_vectors() {
        let mut p = Pic::new();
        init(&mut p);
        p.set_irq(14, true);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x76);
        p.set_irq(3, true);
        // IRQ 3 is below the cascade (IRQ 2) in priority: it waits.
        assert!(!p.intr());
        eoi(&mut p, true);
        assert_eq!(p.acknowledge(), 0x0B);
    }

    #[test]
    fn spurious_interrupt_when_the_request_vanished() {
        let mut p = Pic::new();
        init(&mut p);
        // A level-triggered request that drops before the acknowledge.
        p.write(0x4D0, 1, 0x20, 0);
        p.set_irq(5, true);
        assert!(p.intr());
        p.set_irq(5, false);
        assert_eq!(p.acknowledge(), 0x0F);
        p.write(0x20, 1, 0x0B, 0);
        assert_eq!(p.read(0x20, 1, 0), 0, "no ISR bit for a spurious IRQ 7");
    }

    #[test]
    fn level_triggered_lines_request_again_after_eoi() {
        let mut p = Pic::new();
        init(&mut p);
        p.write(0x4D1, 1, 0x08, 0); // IRQ 11 level
        assert_eq!(p.read(0x4D1, 1, 0), 0x08);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), 0x73);
        eoi(&mut p, true);
        assert!(p.intr(), "still asserted");
        p.set_irq(11, false);
        assert!(!p.intr());
        // ELCR cannot make IRQ 0 level-triggered.
        p.write(0x4D0, 1, 0xFF, 0);
        assert_eq!(p.read(0x4D0, 1, 0), 0xF8);
    }

    #[test]
    fn auto_eoi_poll_and_rotation() {
        let mut p = Pic::new();
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x03),
            (0x21, 0),
        ] {
            p.write(port, 1, v, 0);
        }
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x23);
        p.write(0x20, 1, 0x0B, 0);
        assert_eq!(p.read(0x20, 1, 0), 0, "auto-EOI leaves ISR clear");
        // Poll mode.
        p.set_irq(6, true);
        p.write(0x20, 1, 0x0C, 0);
        assert_eq!(p.read(0x20, 1, 0), 0x86);
        // Set priority: lowest = 5, so 6 beats 4.
        p.write(0x20, 1, 0xC5, 0);
        p.set_irq(4, true);
        p.set_irq(7, true);
        assert_eq!(p.acknowledge(), 0x27);
    }
}
