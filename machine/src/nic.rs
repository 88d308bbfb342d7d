//! The network card on the board: an NE2000 either on the PCI bus (an RTL8029, as
//! Linux's ne2k-pci drives it) or on the ISA bus at a fixed port and IRQ (as DOS
//! packet drivers expect).

use hospes_devices::ne2000::Ne2000;
use hospes_devices::pci::PciBus;
use serde::{Deserialize, Serialize};

/// The PCI slot the card sits in (QEMU's first free slot, 00:03.0).
pub const PCI_SLOT: u8 = 3;

/// Where the card is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NicWiring {
    /// An RTL8029 in [`PCI_SLOT`]: the guest places its 32 ports with BAR0, its
    /// interrupt (INTA) goes through the PIIX3's PIRQ routing.
    Pci,
    /// An ISA NE2000 at `base` (32 ports) on IRQ `irq`.
    Isa { base: u16, irq: u8 },
}

/// What the machine is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    pub mac: [u8; 6],
    pub wiring: NicWiring,
}

impl NicConfig {
    /// QEMU's default MAC for the first card (52:54:00:12:34:56) on the PCI bus.
    pub fn default_pci() -> NicConfig {
        NicConfig {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            wiring: NicWiring::Pci,
        }
    }

    /// Checks an ISA card's place: its ports must not overlap the board's devices
    /// and its IRQ must be one no other device drives.
    pub fn validate(&self) -> Result<(), String> {
        if let NicWiring::Isa { base, irq } = self.wiring {
            if !(0x200..=0x3E0).contains(&base) || base % 0x20 != 0 {
                return Err(format!(
                    "an ISA NE2000 sits at a multiple of 0x20 from 0x200 to 0x3E0, not {base:#x}"
                ));
            }
            // COM ports (2E8-2FF, 3E8-3FF), IDE (376, 3F6) and the VGA (3B0-3DF).
            let busy = [0x2E0, 0x360, 0x3A0, 0x3C0, 0x3E0];
            if busy.contains(&base) {
                return Err(format!(
                    "ports {base:#x}-{:#x} are taken by the serial ports, IDE or the VGA",
                    base + 0x1F
                ));
            }
            if !matches!(irq, 5 | 7 | 9 | 10 | 11) {
                return Err(format!(
                    "IRQ {irq} is taken or not wired (an ISA NE2000 can use 5, 7, 9, 10 or 11)"
                ));
            }
        }
        Ok(())
    }
}

/// The card and its wiring.
#[derive(Serialize, Deserialize)]
pub struct Nic {
    pub card: Ne2000,
    pub wiring: NicWiring,
}

impl Nic {
    pub fn new(config: &NicConfig) -> Nic {
        Nic {
            card: Ne2000::new(config.mac),
            wiring: config.wiring,
        }
    }

    /// The first of the card's 32 ports, if it answers on any.
    pub fn io_base(&self, pci: &mut PciBus) -> Option<u16> {
        match self.wiring {
            NicWiring::Isa { base, .. } => Some(base),
            NicWiring::Pci => {
                let command = pci.config_read(PCI_SLOT, 0, 0x04);
                let bar = pci.config_read(PCI_SLOT, 0, 0x10);
                // I/O decoding off, or BAR0 not placed yet: the card answers nothing.
                (command & 1 != 0 && bar & !3 != 0).then_some((bar & 0xFFFC) as u16)
            }
        }
    }

    /// The IRQ line the card drives, if connected.
    pub fn irq_line(&self, pci: &mut PciBus) -> Option<u8> {
        match self.wiring {
            NicWiring::Isa { irq, .. } => Some(irq),
            NicWiring::Pci => {
                let pirq = hospes_bios::acpi::pci_pirq(PCI_SLOT, 0);
                pci.pirq_route(pirq)
            }
        }
    }
}
