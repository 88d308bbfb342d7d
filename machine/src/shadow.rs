//! BIOS shadowing: the i440FX PAM registers decide, for each area of C0000-FFFFF, whether
//! reads and writes reach the RAM underneath or the ROM (the PCI bus where no ROM is
//! mapped). Firmware uses it to copy itself into RAM, unpack there, then write-protect it.
//!
//! The routing is applied to the CPU's page map whenever the guest writes a PAM register;
//! the run loop does it between instructions (the write ends the CPU's slice), so the
//! next instruction already sees the new map.

use hospes_cpu::mem::{Backing, PhysMem, PAGE_SIZE};
use hospes_cpu::Cpu;
use hospes_devices::pci::{pam_areas, PamArea};

/// Start of the shadowable area.
const SHADOW_BASE: u64 = 0xC_0000;
/// Pages from C0000 to the end of the first megabyte.
const SHADOW_PAGES: usize = ((0x10_0000 - SHADOW_BASE) / PAGE_SIZE) as usize;

/// How the shadowable area is routed now, and what lies there when RAM is not selected.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Shadowing {
    /// Per page of C0000-FFFFF: what reads see when they do not go to RAM (the ROM mapped
    /// there when the machine was built, or MMIO where none was).
    #[serde(with = "serde_big_array::BigArray")]
    rom: [Backing; SHADOW_PAGES],
    /// The routing last applied, per PAM area; None before the first application.
    applied: Option<[PamArea; 13]>,
}

impl Shadowing {
    /// Takes note of the ROMs mapped in C0000-FFFFF (call once they are all mapped).
    pub fn new(mem: &PhysMem) -> Shadowing {
        let mut rom = [Backing::Mmio; SHADOW_PAGES];
        for (i, r) in rom.iter_mut().enumerate() {
            *r = match mem.backing(SHADOW_BASE + i as u64 * PAGE_SIZE) {
                b @ Backing::Host {
                    writable: false, ..
                } => b,
                // RAM there is the shadow RAM itself, not a ROM.
                _ => Backing::Mmio,
            };
        }
        Shadowing { rom, applied: None }
    }

    /// Routes every area whose PAM field changed since the last call, and makes the CPU
    /// forget what it cached about those pages.
    pub fn apply(&mut self, pam: [u8; 7], cpu: &mut Cpu) {
        let areas = pam_areas(pam);
        for (i, area) in areas.iter().enumerate() {
            if self.applied.is_some_and(|prev| prev[i] == *area) {
                continue;
            }
            let (base, len) = (area.base as u64, area.len as u64);
            for page in (base..base + len).step_by(PAGE_SIZE as usize) {
                let rom = self.rom[((page - SHADOW_BASE) / PAGE_SIZE) as usize];
                if let Err(e) = cpu.mem.route_page(page, area.read_ram, area.write_ram, rom) {
                    // Only possible if RAM ended below 1 MiB, which the machine refuses.
                    log::warn!("shadowing: {e}");
                }
            }
            log::debug!(
                "shadowing {base:05x}-{:05x}: reads {}, writes {}",
                base + len - 1,
                if area.read_ram { "RAM" } else { "ROM" },
                if area.write_ram { "RAM" } else { "ROM" }
            );
            cpu.memory_map_changed(base, len);
        }
        self.applied = Some(areas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_flushes_on_change() {
        let mut cpu = Cpu::new(2 << 20, 128 << 10).unwrap();
        cpu.mem.map_rom(0xE_0000, &[0xAB; 128 << 10]).unwrap();
        let mut shadow = Shadowing::new(&cpu.mem);
        shadow.apply([0; 7], &mut cpu);
        // C0000-DFFFF has no ROM: the bus answers (all ones), writes vanish.
        assert_eq!(cpu.mem.read_u8(0xC_0000), 0xFF);
        cpu.mem.write(0xC_0000, &[1]);
        assert_eq!(cpu.mem.read_u8(0xC_0000), 0xFF);
        assert_eq!(cpu.mem.read_u8(0xF_0000), 0xAB);
        // Write-only shadow of F0000: copy the ROM into RAM beneath itself.
        shadow.apply([0x20, 0, 0, 0, 0, 0, 0], &mut cpu);
        let rom = (0..16)
            .map(|i| cpu.mem.read_u8(0xF_0000 + i))
            .collect::<Vec<_>>();
        cpu.mem.write(0xF_0000, &[0x5A; 16]);
        assert_eq!(cpu.mem.read_u8(0xF_0000), 0xAB, "reads still see the ROM");
        cpu.mem.write(0xF_0000, &rom);
        // Read-only RAM: the copy shows, writes are dropped.
        shadow.apply([0x10, 0, 0, 0, 0, 0, 0], &mut cpu);
        assert_eq!(cpu.mem.read_u8(0xF_0000), 0xAB);
        cpu.mem.write(0xF_0000, &[0x77]);
        assert_eq!(cpu.mem.read_u8(0xF_0000), 0xAB);
        // Read/write RAM, then back to ROM.
        shadow.apply([0x30, 0x33, 0, 0, 0, 0, 0], &mut cpu);
        cpu.mem.write(0xF_0000, &[0x77]);
        cpu.mem.write(0xC_4000, &[0x66]);
        assert_eq!(cpu.mem.read_u8(0xF_0000), 0x77);
        assert_eq!(cpu.mem.read_u8(0xC_4000), 0x66);
        shadow.apply([0, 0, 0, 0, 0, 0, 0], &mut cpu);
        assert_eq!(cpu.mem.read_u8(0xF_0000), 0xAB);
        assert_eq!(cpu.mem.read_u8(0xC_4000), 0xFF);
        cpu.tlb.check_invariants(&cpu.mem).unwrap();
    }

    /// Runs the CPU from F000:0000 until it halts; returns AL.
    fn run_from_f000(cpu: &mut Cpu) -> u8 {
        use hospes_cpu::state::{CS, DS};
        cpu.load_seg_real(CS, 0xF000);
        cpu.load_seg_real(DS, 0xF000);
        cpu.state.rip = 0;
        cpu.state.halted = false;
        let exit = cpu.run(&mut hospes_cpu::mem::NullBus, 100);
        assert_eq!(exit, hospes_cpu::Exit::Halted);
        cpu.state.reg8(0)
    }

    /// What the CPU caches (decoded blocks, TLB write permission) never outlives a
    /// change of routing: code runs from whichever memory reads now see, and a write
    /// that was fast while the page was RAM is dropped once it is read-only.
    #[test]
    fn cpu_caches_follow_the_routing() {
        let mut cpu = Cpu::new(2 << 20, 64 << 10).unwrap();
        // ROM at F0000: mov al, 1; mov byte [1000h], 11h; hlt.
        let mut rom = vec![0xF4u8; 64 << 10];
        rom[..8].copy_from_slice(&[0xB0, 0x01, 0xC6, 0x06, 0x00, 0x10, 0x11, 0xF4]);
        cpu.mem.map_rom(0xF_0000, &rom).unwrap();
        let mut shadow = Shadowing::new(&cpu.mem);
        shadow.apply([0; 7], &mut cpu);
        assert_eq!(run_from_f000(&mut cpu), 1);
        assert_eq!(cpu.mem.read_u8(0xF_1000), 0xF4, "ROM write dropped");
        // RAM read/write holding different code: mov al, 2; mov byte [1000h], 22h.
        shadow.apply([0x30, 0, 0, 0, 0, 0, 0], &mut cpu);
        cpu.mem
            .write(0xF_0000, &[0xB0, 0x02, 0xC6, 0x06, 0x00, 0x10, 0x22, 0xF4]);
        assert_eq!(run_from_f000(&mut cpu), 2);
        assert_eq!(cpu.mem.read_u8(0xF_1000), 0x22);
        // Read-only RAM: same code, and its store to F1000 (fast before) is now dropped.
        cpu.mem.write(0xF_1000, &[0x00]);
        shadow.apply([0x10, 0, 0, 0, 0, 0, 0], &mut cpu);
        assert_eq!(run_from_f000(&mut cpu), 2);
        assert_eq!(cpu.mem.read_u8(0xF_1000), 0x00);
        // Back to the ROM: its code runs again, not the decoding of the RAM copy.
        shadow.apply([0x00, 0, 0, 0, 0, 0, 0], &mut cpu);
        assert_eq!(run_from_f000(&mut cpu), 1);
        // Write-only RAM: the ROM's code runs and its store lands in the RAM beneath.
        shadow.apply([0x20, 0, 0, 0, 0, 0, 0], &mut cpu);
        assert_eq!(run_from_f000(&mut cpu), 1);
        assert_eq!(cpu.mem.read_u8(0xF_1000), 0xF4, "reads still see the ROM");
        shadow.apply([0x10, 0, 0, 0, 0, 0, 0], &mut cpu);
        assert_eq!(cpu.mem.read_u8(0xF_1000), 0x11);
        cpu.tlb.check_invariants(&cpu.mem).unwrap();
    }
}
