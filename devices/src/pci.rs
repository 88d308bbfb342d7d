//! PCI configuration space: mechanism #1 (ports 0xCF8 / 0xCFC-0xCFF) and bus 0 with an
//! i440FX-like host bridge (00.0), a PIIX3 ISA bridge (01.0) and the PIIX3 IDE function
//! (01.1, compatibility mode on both channels).
//!
//! Each function is a [`PciFunction`]; the built-in ones are plain [`ConfigSpace`]s whose
//! writable-bits mask gives BAR sizing for free: writing all ones to a BAR keeps only
//! the writable address bits, so the guest reads back the size mask.

use crate::{Nanos, PortDevice};

/// Configuration address port.
pub const CONFIG_ADDRESS: u16 = 0xCF8;
/// First configuration data port (0xCFC-0xCFF).
pub const CONFIG_DATA: u16 = 0xCFC;

/// One PCI function's configuration space as the bus sees it.
pub trait PciFunction {
    /// The dword at `offset` (dword aligned).
    fn config_read(&mut self, offset: u8) -> u32;
    /// Writes the bytes of `value` selected by `mask` (0xFF per enabled byte) into the
    /// dword at `offset` (dword aligned).
    fn config_write(&mut self, offset: u8, value: u32, mask: u32);
    /// The function's state, for a snapshot.
    fn save(&self) -> Vec<u8>;
    /// Puts back a state [`PciFunction::save`] gave (from a file: checked).
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
}

/// A 256-byte configuration space with a per-bit writable mask.
#[derive(Clone)]
pub struct ConfigSpace {
    data: [u8; 256],
    writable: [u8; 256],
}

impl ConfigSpace {
    /// A type 0 header with the identity registers filled in; nothing writable yet.
    /// `class` is class code << 16 | subclass << 8 | programming interface.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8, header_type: u8) -> Self {
        let mut space = ConfigSpace {
            data: [0; 256],
            writable: [0; 256],
        };
        space.set_u16(0x00, vendor);
        space.set_u16(0x02, device);
        space.set_u8(0x08, revision);
        space.set_u8(0x09, class as u8);
        space.set_u8(0x0A, (class >> 8) as u8);
        space.set_u8(0x0B, (class >> 16) as u8);
        space.set_u8(0x0E, header_type);
        space
    }

    pub fn set_u8(&mut self, offset: u8, value: u8) {
        self.data[usize::from(offset)] = value;
    }

    pub fn set_u16(&mut self, offset: u8, value: u16) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.data[(usize::from(offset) + i) & 0xFF] = b;
        }
    }

    pub fn set_u32(&mut self, offset: u8, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.data[(usize::from(offset) + i) & 0xFF] = b;
        }
    }

    /// Marks the bits of `mask` (little-endian from `offset`) guest-writable.
    pub fn set_writable(&mut self, offset: u8, mask: u32, bytes: usize) {
        for i in 0..bytes.min(4) {
            self.writable[(usize::from(offset) + i) & 0xFF] = (mask >> (8 * i)) as u8;
        }
    }

    /// Makes BAR `index` (0-5) an I/O BAR of `size` bytes (a power of two, at least 4).
    pub fn add_io_bar(&mut self, index: u8, size: u32, initial: u32) {
        let offset = 0x10 + 4 * index.min(5);
        let size = size.max(4).next_power_of_two();
        self.set_u32(offset, (initial & !(size - 1)) | 0x1);
        self.set_writable(offset, !(size - 1), 4);
    }

    /// The current value of the dword at `offset`.
    pub fn read_u32(&self, offset: u8) -> u32 {
        let base = usize::from(offset & 0xFC);
        u32::from_le_bytes([
            self.data[base],
            self.data[base + 1],
            self.data[base + 2],
            self.data[base + 3],
        ])
    }
}

impl PciFunction for ConfigSpace {
    fn config_read(&mut self, offset: u8) -> u32 {
        self.read_u32(offset)
    }

    fn config_write(&mut self, offset: u8, value: u32, mask: u32) {
        let base = usize::from(offset & 0xFC);
        for i in 0..4 {
            let enabled = (mask >> (8 * i)) as u8;
            let writable = self.writable[base + i] & enabled;
            let new = (value >> (8 * i)) as u8;
            let byte = &mut self.data[base + i];
            *byte = (*byte & !writable) | (new & writable);
        }
    }

    /// The register contents; which bits are writable is the function's make, not state.
    fn save(&self) -> Vec<u8> {
        self.data.to_vec()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let data: [u8; 256] = state
            .try_into()
            .map_err(|_| format!("a PCI configuration space of {} bytes", state.len()))?;
        self.data = data;
        Ok(())
    }
}

/// The i440FX host bridge (00.0). Chipset registers 0x40-0xFF (PAM, SMRAM, ...) are
/// plain storage so firmware can program them.
pub fn host_bridge() -> ConfigSpace {
    let mut space = ConfigSpace::new(0x8086, 0x1237, 0x06_00_00, 0x02, 0x00);
    space.set_u16(0x04, 0x0006);
    for offset in (0x40..=0xFC).step_by(4) {
        space.set_writable(offset, 0xFFFF_FFFF, 4);
    }
    space
}

/// The PIIX3 PCI-to-ISA bridge (01.0), multi-function. PIRQ route registers 0x60-0x63
/// start disabled (0x80) and are writable, as are the other chipset registers.
pub fn piix3_isa_bridge() -> ConfigSpace {
    let mut space = ConfigSpace::new(0x8086, 0x7000, 0x06_01_00, 0x00, 0x80);
    space.set_u16(0x04, 0x0007);
    space.set_u16(0x06, 0x0200);
    for offset in (0x40..=0xFC).step_by(4) {
        space.set_writable(offset, 0xFFFF_FFFF, 4);
    }
    space.set_u32(0x60, 0x8080_8080);
    space
}

/// The PIIX3 IDE function (01.1): both channels in compatibility mode (legacy ports and
/// IRQ 14/15, interrupt pin 0), bus-master capable (BAR4, 16 bytes of I/O). The IDE
/// timing registers start with both channels' decode enabled, which ata_piix checks.
pub fn piix3_ide() -> ConfigSpace {
    let mut space = ConfigSpace::new(0x8086, 0x7010, 0x01_01_80, 0x00, 0x00);
    space.set_writable(0x04, 0x0005, 2); // I/O space, bus master
    space.set_u16(0x06, 0x0280);
    space.add_io_bar(4, 16, 0);
    space.set_writable(0x0C, 0xFF00, 2); // latency timer
    space.set_writable(0x3C, 0xFF, 1); // interrupt line
    for offset in (0x40..=0x4C).step_by(4) {
        space.set_writable(offset, 0xFFFF_FFFF, 4);
    }
    space.set_u32(0x40, 0x8000_8000); // IDETIM: primary and secondary decode enable
    space
}

/// The host bridge's first PAM (Programmable Attribute Map) register; PAM0-PAM6 are
/// 0x59-0x5F.
pub const PAM0: u8 = 0x59;
/// PAM register values at power-on: every area reads ROM (or the PCI bus).
pub const PAM_RESET: [u8; 7] = [0; 7];

/// One area of the BIOS and option-ROM space (C0000-FFFFF) whose routing a PAM field sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PamArea {
    pub base: u32,
    pub len: u32,
    /// Reads (and instruction fetches) go to RAM rather than ROM / the PCI bus.
    pub read_ram: bool,
    /// Writes go to RAM rather than ROM / the PCI bus (where they are dropped).
    pub write_ram: bool,
}

/// Decodes PAM0-PAM6: PAM0 bits 5:4 set F0000-FFFFF; each nibble of PAM1-PAM6 sets one
/// 16 KiB area from C0000 up (low nibble first). In each field bit 0 enables reads from
/// RAM and bit 1 writes to RAM.
pub fn pam_areas(pam: [u8; 7]) -> [PamArea; 13] {
    let area = |base: u32, len: u32, field: u8| PamArea {
        base,
        len,
        read_ram: field & 1 != 0,
        write_ram: field & 2 != 0,
    };
    let mut areas = [area(0xF_0000, 0x1_0000, pam[0] >> 4); 13];
    for (i, a) in areas.iter_mut().skip(1).enumerate() {
        let field = pam[1 + i / 2] >> (4 * (i % 2));
        *a = area(0xC_0000 + 0x4000 * i as u32, 0x4000, field);
    }
    areas
}

/// Bus 0 behind configuration mechanism #1.
pub struct PciBus {
    address: u32,
    /// Functions by device << 3 | function.
    functions: Vec<(u8, Box<dyn PciFunction>)>,
    /// A PAM register was written since [`PciBus::take_pam_written`] was last called: the
    /// machine must re-route the BIOS area.
    pam_written: bool,
    /// Counts configuration writes and restores: what the machine derives from
    /// configuration space (where BARs are, interrupt routing) holds while it stays.
    generation: u64,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

/// What a snapshot keeps of the bus: the address latch and each function's state.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct PciBusState {
    address: u32,
    pam_written: bool,
    functions: Vec<(u8, Vec<u8>)>,
}

impl PciBus {
    pub fn save(&self) -> PciBusState {
        PciBusState {
            address: self.address,
            pam_written: self.pam_written,
            functions: self.functions.iter().map(|(d, f)| (*d, f.save())).collect(),
        }
    }

    /// Puts back a saved state onto a bus built with the same functions.
    pub fn restore(&mut self, state: &PciBusState) -> Result<(), String> {
        if state.functions.len() != self.functions.len() {
            return Err("the PCI functions differ from the machine's".into());
        }
        for (devfn, saved) in &state.functions {
            self.function_mut(*devfn)
                .ok_or_else(|| format!("no PCI function {devfn:#04x} in this machine"))?
                .restore(saved)?;
        }
        self.address = state.address;
        self.pam_written = state.pam_written;
        self.generation += 1;
        Ok(())
    }

    /// Bus 0 with the host bridge, the PIIX3 ISA bridge and the PIIX3 IDE function.
    pub fn new() -> Self {
        let mut bus = PciBus {
            address: 0,
            functions: Vec::new(),
            pam_written: false,
            generation: 0,
        };
        bus.add_function(0, 0, Box::new(host_bridge()));
        bus.add_function(1, 0, Box::new(piix3_isa_bridge()));
        bus.add_function(1, 1, Box::new(piix3_ide()));
        bus
    }

    /// Attaches `function` at bus 0, `device`.`func`, replacing any function there.
    pub fn add_function(&mut self, device: u8, func: u8, function: Box<dyn PciFunction>) {
        let devfn = ((device & 0x1F) << 3) | (func & 0x07);
        self.functions.retain(|(d, _)| *d != devfn);
        self.functions.push((devfn, function));
        self.generation += 1;
    }

    /// Changes whenever configuration space may have changed (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn function_mut(&mut self, devfn: u8) -> Option<&mut Box<dyn PciFunction>> {
        self.functions
            .iter_mut()
            .find(|(d, _)| *d == devfn)
            .map(|(_, f)| f)
    }

    /// Reads a dword of bus 0 configuration space (for the machine, e.g. to find where
    /// the guest put BAR4 or how it routed the PIRQs). Absent functions read all ones.
    pub fn config_read(&mut self, device: u8, func: u8, offset: u8) -> u32 {
        let devfn = ((device & 0x1F) << 3) | (func & 0x07);
        self.function_mut(devfn)
            .map_or(0xFFFF_FFFF, |f| f.config_read(offset & 0xFC))
    }

    /// Writes a dword of bus 0 configuration space, bytes selected by `mask`.
    pub fn config_write(&mut self, device: u8, func: u8, offset: u8, value: u32, mask: u32) {
        let devfn = ((device & 0x1F) << 3) | (func & 0x07);
        self.write_function(devfn, offset & 0xFC, value, mask);
    }

    fn write_function(&mut self, devfn: u8, offset: u8, value: u32, mask: u32) {
        self.generation += 1;
        // PAM0-PAM6 live in the host bridge's dwords 0x58 (bytes 1-3) and 0x5C.
        if devfn == 0
            && ((offset == 0x58 && mask & 0xFFFF_FF00 != 0) || (offset == 0x5C && mask != 0))
        {
            self.pam_written = true;
        }
        if let Some(f) = self.function_mut(devfn) {
            f.config_write(offset, value, mask);
        }
    }

    /// The host bridge's PAM0-PAM6 registers.
    pub fn pam(&mut self) -> [u8; 7] {
        let lo = self.config_read(0, 0, 0x58).to_le_bytes();
        let hi = self.config_read(0, 0, 0x5C).to_le_bytes();
        [lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
    }

    /// Sets PAM0-PAM6 (at power-on, reset, or as firmware that runs outside the guest
    /// would have programmed them).
    pub fn set_pam(&mut self, pam: [u8; 7]) {
        let lo = u32::from_le_bytes([0, pam[0], pam[1], pam[2]]);
        let hi = u32::from_le_bytes([pam[3], pam[4], pam[5], pam[6]]);
        self.write_function(0, 0x58, lo, 0xFFFF_FF00);
        self.write_function(0, 0x5C, hi, 0xFFFF_FFFF);
    }

    /// Whether a PAM register was written since the last call (and clears the flag).
    pub fn take_pam_written(&mut self) -> bool {
        std::mem::take(&mut self.pam_written)
    }

    /// Whether a PAM register was written and the machine has not acted on it yet.
    pub fn pam_written(&self) -> bool {
        self.pam_written
    }

    /// The I/O base the guest gave the IDE bus-master registers (BAR4 of 01.1), if
    /// assigned and I/O decoding is enabled.
    pub fn ide_bus_master_base(&mut self) -> Option<u16> {
        let command = self.config_read(1, 1, 0x04);
        let bar = self.config_read(1, 1, 0x20) & 0xFFF0;
        (command & 1 != 0 && bar != 0).then_some(bar as u16)
    }

    /// The IRQ PIRQ line `pirq` (0-3, PIRQA-D) is routed to, if enabled.
    pub fn pirq_route(&mut self, pirq: u8) -> Option<u8> {
        let route = (self.config_read(1, 0, 0x60) >> (8 * (pirq & 3))) as u8;
        (route & 0x80 == 0).then_some(route & 0x0F)
    }

    /// The function addressed by CONFIG_ADDRESS, if enabled and on bus 0.
    fn addressed(&self) -> Option<(u8, u8)> {
        if self.address & 0x8000_0000 == 0 || (self.address >> 16) & 0xFF != 0 {
            return None;
        }
        Some(((self.address >> 8) as u8, (self.address as u8) & 0xFC))
    }
}

impl PortDevice for PciBus {
    fn read(&mut self, port: u16, size: u8, _now: Nanos) -> u32 {
        let size_mask = match size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        };
        match port {
            CONFIG_ADDRESS if size == 4 => self.address,
            0xCFC..=0xCFF => {
                let shift = 8 * u32::from(port - CONFIG_DATA);
                let Some((devfn, offset)) = self.addressed() else {
                    return size_mask;
                };
                let dword = self
                    .function_mut(devfn)
                    .map_or(0xFFFF_FFFF, |f| f.config_read(offset));
                (dword >> shift) & size_mask
            }
            _ => size_mask,
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos) {
        match port {
            // Byte and word accesses to 0xCF8-0xCFB are not configuration cycles (Linux's
            // type 2 probe pokes them); only dword writes set the address.
            CONFIG_ADDRESS if size == 4 => self.address = value,
            0xCFC..=0xCFF => {
                let Some((devfn, offset)) = self.addressed() else {
                    return;
                };
                let shift = 8 * u32::from(port - CONFIG_DATA);
                let size_mask: u32 = match size {
                    1 => 0xFF,
                    2 => 0xFFFF,
                    _ => 0xFFFF_FFFF,
                };
                let mask = size_mask << shift;
                self.write_function(devfn, offset, value << shift, mask);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_addr(dev: u8, func: u8, offset: u8) -> u32 {
        0x8000_0000 | (u32::from(dev) << 11) | (u32::from(func) << 8) | u32::from(offset & 0xFC)
    }

    fn read(bus: &mut PciBus, dev: u8, func: u8, offset: u8, size: u8) -> u32 {
        bus.write(CONFIG_ADDRESS, 4, cfg_addr(dev, func, offset), 0);
        bus.read(CONFIG_DATA + u16::from(offset & 3), size, 0)
    }

    fn write(bus: &mut PciBus, dev: u8, func: u8, offset: u8, size: u8, value: u32) {
        bus.write(CONFIG_ADDRESS, 4, cfg_addr(dev, func, offset), 0);
        bus.write(CONFIG_DATA + u16::from(offset & 3), size, value, 0);
    }

    #[test]
    fn address_register_reads_back_like_linux_type1_check() {
        let mut bus = PciBus::new();
        bus.write(0xCFB, 1, 0x01, 0);
        bus.write(CONFIG_ADDRESS, 4, 0x8000_0000, 0);
        assert_eq!(bus.read(CONFIG_ADDRESS, 4, 0), 0x8000_0000);
        bus.write(CONFIG_ADDRESS, 4, 0x1234_5678, 0);
        assert_eq!(bus.read(CONFIG_ADDRESS, 4, 0), 0x1234_5678);
        // Byte writes (type 2 probe) do not disturb the address.
        bus.write(CONFIG_ADDRESS, 1, 0, 0);
        bus.write(0xCFA, 1, 0, 0);
        assert_eq!(bus.read(CONFIG_ADDRESS, 4, 0), 0x1234_5678);
    }

    #[test]
    fn identity_of_each_function() {
        let mut bus = PciBus::new();
        assert_eq!(read(&mut bus, 0, 0, 0, 4), 0x1237_8086);
        assert_eq!(read(&mut bus, 0, 0, 8, 4), 0x0600_0002);
        assert_eq!(read(&mut bus, 1, 0, 0, 4), 0x7000_8086);
        assert_eq!(read(&mut bus, 1, 0, 8, 4) >> 8, 0x06_01_00);
        assert_eq!(read(&mut bus, 1, 0, 0x0E, 1), 0x80);
        assert_eq!(read(&mut bus, 1, 1, 0, 4), 0x7010_8086);
        assert_eq!(read(&mut bus, 1, 1, 8, 4) >> 8, 0x01_01_80);
        assert_eq!(read(&mut bus, 1, 1, 0x0E, 1), 0x00);
        assert_eq!(read(&mut bus, 1, 1, 0x3D, 1), 0x00);
        assert_eq!(read(&mut bus, 0, 0, 0x0E, 1), 0x00);
    }

    #[test]
    fn byte_and_word_accesses_at_offsets() {
        let mut bus = PciBus::new();
        assert_eq!(read(&mut bus, 1, 1, 0x00, 2), 0x8086);
        assert_eq!(read(&mut bus, 1, 1, 0x02, 2), 0x7010);
        assert_eq!(read(&mut bus, 1, 1, 0x01, 1), 0x80);
        assert_eq!(read(&mut bus, 1, 1, 0x03, 1), 0x70);
        assert_eq!(read(&mut bus, 1, 1, 0x0B, 1), 0x01);
        assert_eq!(read(&mut bus, 1, 1, 0x0A, 1), 0x01);
        assert_eq!(read(&mut bus, 1, 1, 0x09, 1), 0x80);
        // Byte write to the interrupt line leaves the pin alone.
        write(&mut bus, 1, 1, 0x3C, 1, 0x0E);
        assert_eq!(read(&mut bus, 1, 1, 0x3C, 2), 0x000E);
        // Word write to the command register.
        write(&mut bus, 1, 1, 0x04, 2, 0xFFFF);
        assert_eq!(read(&mut bus, 1, 1, 0x04, 2), 0x0005);
        assert_eq!(read(&mut bus, 1, 1, 0x06, 2), 0x0280);
        // Identity is read-only.
        write(&mut bus, 1, 1, 0x00, 4, 0);
        assert_eq!(read(&mut bus, 1, 1, 0x00, 4), 0x7010_8086);
    }

    #[test]
    fn bar4_sizing_and_assignment() {
        let mut bus = PciBus::new();
        assert_eq!(read(&mut bus, 1, 1, 0x20, 4), 0x1);
        write(&mut bus, 1, 1, 0x20, 4, 0xFFFF_FFFF);
        assert_eq!(read(&mut bus, 1, 1, 0x20, 4), 0xFFFF_FFF1);
        write(&mut bus, 1, 1, 0x20, 4, 0xC000);
        assert_eq!(read(&mut bus, 1, 1, 0x20, 4), 0xC001);
        assert_eq!(bus.ide_bus_master_base(), None);
        write(&mut bus, 1, 1, 0x04, 2, 0x0001);
        assert_eq!(bus.ide_bus_master_base(), Some(0xC000));
        // Unimplemented BARs stay zero.
        write(&mut bus, 1, 1, 0x10, 4, 0xFFFF_FFFF);
        assert_eq!(read(&mut bus, 1, 1, 0x10, 4), 0);
    }

    #[test]
    fn absent_devices_and_disabled_cycles_read_all_ones() {
        let mut bus = PciBus::new();
        assert_eq!(read(&mut bus, 2, 0, 0, 4), 0xFFFF_FFFF);
        assert_eq!(read(&mut bus, 0, 1, 0, 2), 0xFFFF);
        assert_eq!(read(&mut bus, 31, 7, 0xFC, 1), 0xFF);
        // Bus 1 does not exist.
        bus.write(CONFIG_ADDRESS, 4, 0x8001_0000, 0);
        assert_eq!(bus.read(CONFIG_DATA, 4, 0), 0xFFFF_FFFF);
        // Enable bit clear: no configuration cycle.
        bus.write(CONFIG_ADDRESS, 4, 0x0000_0000, 0);
        assert_eq!(bus.read(CONFIG_DATA, 4, 0), 0xFFFF_FFFF);
        bus.write(CONFIG_DATA, 4, 0, 0);
        assert_eq!(read(&mut bus, 0, 0, 0, 4), 0x1237_8086);
    }

    #[test]
    fn pam_registers_are_tracked_and_decoded() {
        let mut bus = PciBus::new();
        assert_eq!(bus.pam(), PAM_RESET);
        assert!(!bus.take_pam_written());
        // Other host bridge registers and other functions do not count.
        write(&mut bus, 0, 0, 0x58, 1, 0xFF);
        write(&mut bus, 0, 0, 0x72, 1, 0x0A);
        write(&mut bus, 1, 0, 0x5C, 4, 0x1234_5678);
        assert!(!bus.take_pam_written());
        assert_eq!(
            read(&mut bus, 0, 0, 0x72, 1),
            0x0A,
            "SMRAM is plain storage"
        );
        write(&mut bus, 0, 0, 0x59, 1, 0x30);
        assert!(bus.pam_written());
        assert!(bus.take_pam_written());
        assert!(!bus.pam_written());
        write(&mut bus, 0, 0, 0x5C, 4, 0x3311_2233);
        assert!(bus.take_pam_written());
        assert_eq!(bus.pam(), [0x30, 0, 0, 0x33, 0x22, 0x11, 0x33]);
        let areas = pam_areas(bus.pam());
        assert_eq!(areas[0].base, 0xF_0000);
        assert!(areas[0].read_ram && areas[0].write_ram);
        // PAM3 = 0x33: D0000 and D4000 RAM read/write.
        assert_eq!((areas[5].base, areas[5].len), (0xD_0000, 0x4000));
        assert!(areas[5].read_ram && areas[5].write_ram);
        // PAM4 = 0x22: D8000 write-only.
        assert_eq!(areas[7].base, 0xD_8000);
        assert!(!areas[7].read_ram && areas[7].write_ram);
        // PAM5 = 0x11: E0000 read-only RAM.
        assert_eq!(areas[9].base, 0xE_0000);
        assert!(areas[9].read_ram && !areas[9].write_ram);
        assert_eq!(areas[1].base, 0xC_0000);
        assert!(!areas[1].read_ram && !areas[1].write_ram);
        assert_eq!(areas[12].base + areas[12].len, 0xF_0000);
        bus.set_pam(PAM_RESET);
        assert!(bus.take_pam_written());
        assert_eq!(bus.pam(), PAM_RESET);
        assert_eq!(read(&mut bus, 0, 0, 0x58, 1), 0xFF, "byte 0x58 kept");
    }

    #[test]
    fn pirq_route_registers() {
        let mut bus = PciBus::new();
        assert_eq!(read(&mut bus, 1, 0, 0x60, 4), 0x8080_8080);
        assert_eq!(bus.pirq_route(0), None);
        write(&mut bus, 1, 0, 0x61, 1, 0x0B);
        write(&mut bus, 1, 0, 0x62, 2, 0x0A0A);
        assert_eq!(read(&mut bus, 1, 0, 0x60, 4), 0x0A0A_0B80);
        assert_eq!(bus.pirq_route(1), Some(0x0B));
        assert_eq!(bus.pirq_route(3), Some(0x0A));
        assert_eq!(bus.pirq_route(0), None);
    }

    #[test]
    fn ide_decode_enabled_and_multifunction() {
        let mut bus = PciBus::new();
        assert_eq!(read(&mut bus, 1, 1, 0x41, 1) & 0x80, 0x80);
        assert_eq!(read(&mut bus, 1, 1, 0x43, 1) & 0x80, 0x80);
        bus.add_function(
            3,
            0,
            Box::new(ConfigSpace::new(0x1234, 0x1111, 0x03_00_00, 0, 0)),
        );
        assert_eq!(read(&mut bus, 3, 0, 0, 4), 0x1111_1234);
    }
}
