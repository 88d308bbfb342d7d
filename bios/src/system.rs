//! INT 14h (serial), INT 15h (system services: memory map, A20, waits, block move),
//! INT 1Ah (time of day and the RTC), the IRQ 0 tick, and INT 18h.

use crate::{Bios, Platform, Regs, BDA, EBDA};
use hospes_cpu::state::ES;

const TICKS: u32 = BDA + 0x6C;
const MIDNIGHT: u32 = BDA + 0x70;
/// Ticks per day at 1193182 / 65536 Hz.
const TICKS_PER_DAY: u32 = 0x1800B0;
const SMAP: u32 = 0x534D_4150;

/// One E820 entry: base, length, type (1 usable, 2 reserved, 3 ACPI tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub base: u64,
    pub length: u64,
    pub kind: u32,
}

/// The memory map the BIOS reports for `ram_size` bytes of RAM (at least 2 MiB): the
/// ACPI tables take the top [`crate::acpi::TABLES_SIZE`] bytes.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    e820_map_with_boot_data(ram_size, EBDA)
}

/// The memory map when the BIOS also keeps boot data for a directly loaded kernel (the
/// Multiboot information) in conventional memory from `boot_data_base` (at most the
/// EBDA) up: that part is reserved with the EBDA. The map has as many entries whatever
/// `boot_data_base` is.
pub fn e820_map_with_boot_data(ram_size: u64, boot_data_base: u32) -> Vec<E820Entry> {
    let low_end = boot_data_base.min(EBDA) as u64;
    let mut map = vec![
        E820Entry {
            base: 0,
            length: low_end,
            kind: 1,
        },
        E820Entry {
            base: low_end,
            length: 0xA_0000 - low_end,
            kind: 2,
        },
        E820Entry {
            base: 0xE_0000,
            length: 0x2_0000,
            kind: 2,
        },
    ];
    let acpi = crate::acpi::tables_base(ram_size) as u64;
    map.push(E820Entry {
        base: 0x10_0000,
        length: acpi - 0x10_0000,
        kind: 1,
    });
    map.push(E820Entry {
        base: acpi,
        length: ram_size - acpi,
        kind: 3,
    });
    map.push(E820Entry {
        base: 0xFFFE_0000,
        length: 0x2_0000,
        kind: 2,
    });
    map
}

impl Bios {
    pub(crate) fn timer_tick(&mut self, cpu: &mut hospes_cpu::Cpu) {
        let mut r = Regs { cpu };
        let mut t = r.rd32(TICKS).wrapping_add(1);
        if t >= TICKS_PER_DAY {
            t = 0;
            r.wr8(MIDNIGHT, 1);
        }
        r.wr32(TICKS, t);
    }

    pub(crate) fn int14(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        let port = r.dx() as u32;
        let base = if port < 4 { r.rd16(BDA + port * 2) } else { 0 };
        if base == 0 {
            r.set_ah(0x80); // timeout: no such port
            return;
        }
        match r.ah() {
            0x00 => {
                // Initialise: baud from AL bits 7-5, word format from bits 4-0.
                let divisors = [1047u16, 768, 384, 192, 96, 48, 24, 12];
                let d = divisors[(r.al() >> 5) as usize];
                p.port_write(base + 3, 1, 0x80);
                p.port_write(base, 1, (d & 0xFF) as u32);
                p.port_write(base + 1, 1, (d >> 8) as u32);
                p.port_write(base + 3, 1, (r.al() & 0x1F) as u32);
            }
            0x01 => p.port_write(base, 1, r.al() as u32),
            0x02 => {
                if p.port_read(base + 5, 1) & 1 != 0 {
                    let b = p.port_read(base, 1) as u8;
                    r.set_al(b);
                } else {
                    r.set_ah(0x80);
                    return;
                }
            }
            _ => {}
        }
        let lsr = p.port_read(base + 5, 1) as u8;
        let msr = p.port_read(base + 6, 1) as u8;
        r.set_ah(lsr & 0x7F);
        if r.cpu.state.reg8(4) == 0x00 || r.cpu.state.reg8(4) == 0x03 {
            r.set_al(msr);
        }
    }

    pub(crate) fn int15(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        // Every INT 15h function completes at once except AH=86h (wait).
        let mut done = true;
        let ok = match r.ah() {
            0x24 => match r.al() {
                0x00 | 0x01 => {
                    let v = p.port_read(0x92, 1) as u8;
                    let v = if r.al() == 1 { v | 2 } else { v & !2 };
                    p.port_write(0x92, 1, (v & !1) as u32);
                    r.set_ah(0);
                    true
                }
                0x02 => {
                    let on = p.port_read(0x92, 1) & 2 != 0;
                    r.set_al(on as u8);
                    r.set_ah(0);
                    true
                }
                0x03 => {
                    r.set_bx(0x0003); // A20 via the keyboard controller and port 92h
                    r.set_ah(0);
                    true
                }
                _ => false,
            },
            0x86 => {
                // Wait CX:DX microseconds: HLT until virtual time has passed.
                let now = p.now();
                let until = *self
                    .wait_until
                    .get_or_insert_with(|| now + ((r.cx() as u64) << 16 | r.dx() as u64) * 1000);
                if now >= until {
                    self.wait_until = None;
                } else {
                    done = false;
                }
                r.set_ah(0);
                true
            }
            0x87 => {
                // Block move: ES:SI is a GDT whose entries 2 and 3 are source and target.
                let gdt = r.lin(ES, r.si());
                let base =
                    |r: &Regs, d: u32| r.rd32(d + 2) & 0xFF_FFFF | (r.rd8(d + 7) as u32) << 24;
                let (src, dst) = (base(r, gdt + 0x10), base(r, gdt + 0x18));
                let len = r.cx() as usize * 2;
                let mut buf = vec![0u8; len];
                r.read(src, &mut buf);
                r.write(dst, &buf);
                r.set_ah(0);
                true
            }
            0x88 => {
                let kib = (self.ram_size.saturating_sub(0x10_0000) / 1024).min(0xFFFF);
                r.set_ax(kib as u16);
                true
            }
            0xC0 => {
                r.cpu.load_seg_real(ES, crate::rom::ROM_SEGMENT);
                r.set_bx(crate::rom::CONFIG_TABLE);
                r.set_ah(0);
                true
            }
            0xC1 => {
                r.cpu.load_seg_real(ES, (EBDA >> 4) as u16);
                true
            }
            0xE8 => match r.al() {
                0x01 => {
                    let above_1m = self.ram_size.saturating_sub(0x10_0000);
                    let low = (above_1m.min(15 << 20) / 1024) as u16;
                    let high = (self.ram_size.saturating_sub(16 << 20) / 65536).min(0xFFFF) as u16;
                    r.set_ax(low);
                    r.set_cx(low);
                    r.set_bx(high);
                    r.set_dx(high);
                    true
                }
                0x20 if r.edx() == SMAP && r.ecx() >= 20 => {
                    let map = e820_map_with_boot_data(self.ram_size, self.boot_data_base);
                    let i = r.ebx() as usize;
                    match map.get(i) {
                        Some(e) => {
                            let at = r.lin(ES, r.di());
                            r.wr32(at, e.base as u32);
                            r.wr32(at + 4, (e.base >> 32) as u32);
                            r.wr32(at + 8, e.length as u32);
                            r.wr32(at + 12, (e.length >> 32) as u32);
                            r.wr32(at + 16, e.kind);
                            r.set_eax(SMAP);
                            r.set_ecx(20);
                            r.set_ebx(if i + 1 < map.len() { i as u32 + 1 } else { 0 });
                            true
                        }
                        None => false,
                    }
                }
                _ => false,
            },
            0x90 | 0x91 => {
                r.set_ah(0);
                true
            }
            _ => false,
        };
        if !ok {
            r.set_ah(0x86);
        }
        r.set_carry(!ok);
        r.set_done(done);
    }

    pub(crate) fn int1a(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        let mut cmos = |index: u8| -> u8 {
            p.port_write(0x70, 1, index as u32);
            p.port_read(0x71, 1) as u8
        };
        let ok = match r.ah() {
            0x00 => {
                let t = r.rd32(TICKS);
                r.set_cx((t >> 16) as u16);
                r.set_dx(t as u16);
                let m = r.rd8(MIDNIGHT);
                r.set_al(m);
                r.wr8(MIDNIGHT, 0);
                true
            }
            0x01 => {
                let t = (r.cx() as u32) << 16 | r.dx() as u32;
                r.wr32(TICKS, t);
                r.wr8(MIDNIGHT, 0);
                true
            }
            0x02 => {
                let (h, m, s) = (cmos(4), cmos(2), cmos(0));
                let dst = cmos(0x0B) & 1;
                r.set_ch(h);
                r.set_cl(m);
                r.set_dh(s);
                r.set_dl(dst);
                true
            }
            0x04 => {
                let (c, y, mo, d) = (cmos(0x32), cmos(9), cmos(8), cmos(7));
                r.set_ch(c);
                r.set_cl(y);
                r.set_dh(mo);
                r.set_dl(d);
                true
            }
            0x03 | 0x05 => {
                // Setting the clock: write the BCD fields with SET held.
                let b = cmos(0x0B);
                let writes: [(u8, u8); 4] = if r.ah() == 0x03 {
                    [(4, r.ch()), (2, r.cl()), (0, r.dh()), (0x0B, b)]
                } else {
                    [(0x32, r.ch()), (9, r.cl()), (8, r.dh()), (7, r.dl())]
                };
                p.port_write(0x70, 1, 0x0B);
                p.port_write(0x71, 1, (b | 0x80) as u32);
                for (i, v) in writes {
                    if i != 0x0B {
                        p.port_write(0x70, 1, i as u32);
                        p.port_write(0x71, 1, v as u32);
                    }
                }
                p.port_write(0x70, 1, 0x0B);
                p.port_write(0x71, 1, (b & !0x80) as u32);
                true
            }
            // PCI BIOS (AX=B1xxh) and everything else: not supported.
            _ => false,
        };
        if !ok {
            r.set_ah(0x86);
        }
        r.set_carry(!ok);
    }

    /// INT 18h: nothing to boot. Say so and stop with interrupts off.
    pub(crate) fn no_boot_device(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        self.print(r, p, "No bootable device.\r\n");
        r.cpu.state.flags.set_bit(hospes_cpu::flags::IF, false);
        r.cpu.state.halted = true;
    }

    /// Prints a message on the screen and on COM1 (a headless user sees it too).
    pub(crate) fn print(&mut self, r: &mut Regs, p: &mut dyn Platform, text: &str) {
        let page = r.rd8(BDA + 0x62) as u32;
        for b in text.bytes() {
            crate::video::teletype(r, p, page, b, None);
            p.port_write(0x3F8, 1, b as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_covers_ram_and_reserves_firmware() {
        let map = e820_map(256 << 20);
        assert_eq!(
            map[0],
            E820Entry {
                base: 0,
                length: 0x9FC00,
                kind: 1
            }
        );
        let top = (256 << 20) - crate::acpi::TABLES_SIZE;
        assert!(map
            .iter()
            .any(|e| e.base == 0x10_0000 && e.length == top - 0x10_0000 && e.kind == 1));
        assert!(map.iter().any(|e| e.base == top && e.kind == 3));
        assert!(map.iter().any(|e| e.base == 0xE_0000 && e.kind == 2));
    }
}
