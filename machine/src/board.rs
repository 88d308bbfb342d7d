//! The motherboard: every device on the port bus, the interrupt wiring, and the glue
//! that lets the CPU (through [`Bus`]) and the BIOS (through [`Platform`]) reach them.

use crate::clock;
use crate::nic::{self, Nic, NicConfig, NicWiring};
use crate::snapshot::{put, take};
use hospes_bios::acpi;
use hospes_bios::{Bios, Drive, Platform};
use hospes_cpu::mem::Bus;
use hospes_cpu::Cpu;
use hospes_devices::debugcon::{DebugConsole, DEBUGCON_PORT};
use hospes_devices::fw_cfg::{self, FwCfg};
use hospes_devices::i8042::I8042;
use hospes_devices::ide::{IdeChannel, IdeDevice};
use hospes_devices::pci::PciBus;
use hospes_devices::pic::Pic;
use hospes_devices::pit::Pit;
use hospes_devices::rtc::Rtc;
use hospes_devices::uart::Uart;
use hospes_devices::vga::Vga;
use hospes_devices::{Nanos, PortDevice, Timed};

/// Why the machine stopped on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PowerEvent {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (keyboard controller, port 92h, triple fault).
    Reset,
}

/// Where a BIOS drive number leads.
pub struct DriveSlot {
    pub number: u8,
    pub drive: Box<dyn Drive>,
}

/// All devices, and the state of the few chipset registers that are not devices.
pub struct Devices {
    pub pic: Pic,
    pub pit: Pit,
    pub rtc: Rtc,
    pub uarts: [Uart; 4],
    pub kbc: I8042,
    pub pci: PciBus,
    /// Primary (IRQ 14) and secondary (IRQ 15) IDE channels.
    pub ide: [IdeChannel; 2],
    pub vga: Vga,
    pub drives: Vec<DriveSlot>,
    /// The network card, if the machine has one.
    pub nic: Option<Nic>,
    /// Firmware's log port (0x402).
    pub debugcon: DebugConsole,
    /// QEMU's firmware configuration ports, for a firmware image that reads them.
    pub fw_cfg: Option<FwCfg>,
    /// Port 92h (fast A20 and reset).
    port92: u8,
    /// Port 61h: speaker gate (bit 0) and speaker data (bit 1).
    port61: u8,
    /// ACPI PM1a enable register.
    pm1_enable: u16,
    /// Instruction count of the access being made (set by the CPU before each access).
    icount: u64,
    /// A power event the run loop has to act on.
    pub power_event: Option<PowerEvent>,
    /// The A20 gate as the chipset drives it (port 92h bit 1 OR the i8042 output port).
    pub a20: bool,
    /// The A20 gate changed since the run loop last looked.
    pub a20_changed: bool,
    /// A timer device was written: its next event may now come before the end of the
    /// CPU's current slice, so the slice must end and the deadline be recomputed.
    pub timers_changed: bool,
    /// What hot paths read from PCI configuration space, while it is unchanged.
    pci_view: Option<PciView>,
}

/// The devices' notes for the run loop (the instruction count they last saw, changes it
/// has yet to act on): saved, since a restored machine goes on from them, but not
/// digested, since when the loop acts on them depends on how the code ran (which tier,
/// which block boundaries), not on the guest.
const RUN_LOOP_STATE: &str = "run-loop notes";

/// Where the guest put the PCI functions' resources, as of one [`PciBus::generation`]:
/// read from configuration space once, not on every port or memory access.
#[derive(Clone, Copy, Debug)]
struct PciView {
    generation: u64,
    ide_bus_master: Option<u16>,
    nic_io: Option<u16>,
    nic_irq: Option<u8>,
    /// The linear framebuffer's address while the VGA decodes memory there.
    lfb: Option<u64>,
}

/// The VGA's registers (monochrome and colour CRTC sets included).
const VGA_PORTS_START: u16 = 0x3B0;
const VGA_PORTS_END: u16 = 0x3DF;
/// The legacy VGA memory window.
pub const VGA_WINDOW: std::ops::Range<u64> = 0xA_0000..0xC_0000;
/// The VGA's PCI slot (as on QEMU's i440FX machine: the "std" VGA, 1234:1111).
pub const VGA_PCI_SLOT: u8 = 2;
/// Where the linear framebuffer (the VGA's BAR 0) is at reset, as SeaBIOS places it on
/// QEMU. The guest may move it: any address above RAM reaches the board as MMIO.
pub const LFB_BASE: u32 = 0xE000_0000;

const COM_BASES: [u16; 4] = [0x3F8, 0x2F8, 0x3E8, 0x2E8];
/// IRQ lines of COM1-COM4.
const COM_IRQS: [u8; 4] = [4, 3, 4, 3];

impl Devices {
    /// A device asked for something only the machine does: power off or reset, the
    /// A20 gate moved, the chipset's memory map changed.
    fn machine_must_act(&self) -> bool {
        self.power_event.is_some() || self.a20_changed || self.pci.pam_written()
    }

    /// `ide` holds the (master, slave) devices of the primary and secondary channels.
    pub fn new(
        rtc_start_unix: i64,
        drives: Vec<DriveSlot>,
        ide: [(Option<IdeDevice>, Option<IdeDevice>); 2],
        nic: Option<&NicConfig>,
    ) -> Devices {
        let [(pm, ps), (sm, ss)] = ide;
        let mut pci = PciBus::new();
        pci.add_function(
            VGA_PCI_SLOT,
            0,
            Box::new(hospes_devices::vga::pci_config_space(LFB_BASE)),
        );
        if nic.is_some_and(|n| n.wiring == NicWiring::Pci) {
            let card = hospes_devices::ne2000::rtl8029_config_space();
            pci.add_function(nic::PCI_SLOT, 0, Box::new(card));
        }
        Devices {
            pic: Pic::new(),
            pit: Pit::new(),
            rtc: Rtc::new(rtc_start_unix),
            uarts: COM_BASES.map(Uart::new),
            kbc: I8042::new(),
            pci,
            ide: [IdeChannel::primary(pm, ps), IdeChannel::secondary(sm, ss)],
            vga: Vga::new(),
            drives,
            nic: nic.map(Nic::new),
            debugcon: DebugConsole::new(),
            fw_cfg: None,
            port92: 0,
            port61: 0,
            pm1_enable: 0,
            icount: 0,
            power_event: None,
            a20: true,
            a20_changed: false,
            timers_changed: false,
            pci_view: None,
        }
    }

    /// The PCI resources as configuration space has them now.
    fn pci_view(&mut self) -> PciView {
        let generation = self.pci.generation();
        if let Some(view) = self.pci_view.filter(|v| v.generation == generation) {
            return view;
        }
        let command = self.pci.config_read(VGA_PCI_SLOT, 0, 0x04);
        let base = (self.pci.config_read(VGA_PCI_SLOT, 0, 0x10) & !0xF) as u64;
        let view = PciView {
            generation,
            ide_bus_master: self.pci.ide_bus_master_base(),
            nic_io: self.nic.as_ref().and_then(|n| n.io_base(&mut self.pci)),
            nic_irq: self.nic.as_ref().and_then(|n| n.irq_line(&mut self.pci)),
            lfb: (command & 2 != 0 && base != 0).then_some(base),
        };
        // Reading configuration space changes nothing in it.
        debug_assert_eq!(self.pci.generation(), generation);
        self.pci_view = Some(view);
        view
    }

    pub fn now(&self) -> Nanos {
        clock::nanos(self.icount)
    }

    pub fn set_icount(&mut self, icount: u64) {
        self.icount = icount;
    }

    /// Passes every device's interrupt output to the PIC.
    pub fn sync_irqs(&mut self) {
        self.pic.set_irq(0, self.pit.irq_level());
        self.pic.set_irq(1, self.kbc.irq1_level());
        self.pic.set_irq(8, self.rtc.irq_level());
        self.pic.set_irq(12, self.kbc.irq12_level());
        self.pic.set_irq(14, self.ide[0].irq_level());
        self.pic.set_irq(15, self.ide[1].irq_level());
        // COM1/COM3 share IRQ 4 and COM2/COM4 IRQ 3: the line is the OR of both.
        for line in [3u8, 4] {
            let level = (0..4).any(|i| COM_IRQS[i] == line && self.uarts[i].irq_level());
            self.pic.set_irq(line, level);
        }
        // The card's line is its own (an ISA card's IRQ is checked to be free; PCI
        // interrupts go to IRQ 10/11, which nothing else drives).
        if let Some(line) = self.pci_view().nic_irq {
            let level = self.nic.as_ref().is_some_and(|n| n.card.irq_level());
            self.pic.set_irq(line, level);
        }
    }

    /// The earliest virtual time at which a device needs attention.
    pub fn next_event(&self) -> Option<Nanos> {
        let mut next = [
            self.pit.next_event(),
            self.rtc.next_event(),
            self.kbc.next_event(),
        ]
        .into_iter()
        .flatten()
        .min();
        for u in &self.uarts {
            if let Some(t) = u.next_event() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Runs every device's timers up to now.
    pub fn advance(&mut self) {
        let now = self.now();
        self.pit.advance(now);
        self.rtc.advance(now);
        self.kbc.advance(now);
        for u in &mut self.uarts {
            u.advance(now);
        }
        self.sync_irqs();
    }

    fn update_a20(&mut self) {
        let a20 = self.port92 & 2 != 0 || self.kbc.a20();
        if a20 != self.a20 {
            self.a20 = a20;
            self.a20_changed = true;
        }
    }

    pub fn port_read(&mut self, port: u16, size: u8) -> u32 {
        let now = self.now();
        // Reading received data schedules the next byte (keyboard) or a timeout (UART).
        if port == 0x60 || COM_BASES.contains(&port) {
            self.timers_changed = true;
        }
        let v = match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 => self.pic.read(port, size, now),
            0x40..=0x43 => self.pit.read(port, size, now),
            0x60 | 0x64 => self.kbc.read(port, size, now),
            0x61 => {
                // Bit 4 toggles with DRAM refresh (every 15 us); bit 5 is PIT channel 2.
                let refresh = (now / 15_000) & 1 != 0;
                (self.port61 & 0x0F) as u32
                    | (refresh as u32) << 4
                    | (self.pit.out2(now) as u32) << 5
            }
            0x70 | 0x71 => self.rtc.read(port, size, now),
            0x92 => self.port92 as u32,
            DEBUGCON_PORT => self.debugcon.read(port, size, now),
            fw_cfg::SELECTOR_PORT | fw_cfg::DATA_PORT if self.fw_cfg.is_some() => {
                self.fw_cfg.as_mut().map_or(0, |f| f.read(port, size, now))
            }
            0xCF8..=0xCFF => self.pci.read(port, size, now),
            0x1F0..=0x1F7 | 0x3F6 => self.ide[0].read(port, size, now),
            0x170..=0x177 | 0x376 => self.ide[1].read(port, size, now),
            VGA_PORTS_START..=VGA_PORTS_END | 0x1CE..=0x1D0 => self.vga.read(port, size, now),
            p if p == acpi::PM1A_EVT => 0,
            p if p == acpi::PM1A_EVT + 2 => self.pm1_enable as u32,
            p if p == acpi::PM1A_CNT => 1, // SCI_EN: ACPI is always on
            p if (acpi::PM_TMR..acpi::PM_TMR + 4).contains(&p) => {
                // The 3.579545 MHz, 24-bit ACPI PM timer.
                let ticks = (now as u128 * 3_579_545 / 1_000_000_000) as u32 & 0xFF_FFFF;
                ticks >> ((p - acpi::PM_TMR) * 8)
            }
            p => match COM_BASES.iter().position(|&b| (b..b + 8).contains(&p)) {
                Some(i) => self.uarts[i].read(port, size, now),
                None => match (self.bus_master_port(p), self.nic_register(p)) {
                    (Some((ch, off)), _) => self.ide[ch].bus_master_read(off, size),
                    (None, Some(reg)) => {
                        self.nic.as_mut().map_or(0, |n| n.card.read(reg, size, now))
                    }
                    (None, None) => hospes_cpu::mem::ones(size) as u32,
                },
            },
        };
        self.after_access(port);
        v & hospes_cpu::mem::ones(size) as u32
    }

    pub fn port_write(&mut self, port: u16, size: u8, value: u32) {
        let now = self.now();
        if matches!(port, 0x40..=0x43 | 0x60 | 0x61 | 0x64 | 0x70 | 0x71)
            || COM_BASES.iter().any(|&b| (b..b + 8).contains(&port))
        {
            self.timers_changed = true;
        }
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 => self.pic.write(port, size, value, now),
            0x40..=0x43 => self.pit.write(port, size, value, now),
            0x60 | 0x64 => self.kbc.write(port, size, value, now),
            0x61 => {
                self.port61 = value as u8 & 0x0F;
                self.pit.set_gate2(value & 1 != 0, now);
            }
            0x70 | 0x71 => self.rtc.write(port, size, value, now),
            0xCF8..=0xCFF => self.pci.write(port, size, value, now),
            DEBUGCON_PORT => self.debugcon.write(port, size, value, now),
            fw_cfg::SELECTOR_PORT | fw_cfg::DATA_PORT if self.fw_cfg.is_some() => {
                if let Some(f) = &mut self.fw_cfg {
                    f.write(port, size, value, now);
                }
            }
            0x1F0..=0x1F7 | 0x3F6 => self.ide[0].write(port, size, value, now),
            0x170..=0x177 | 0x376 => self.ide[1].write(port, size, value, now),
            VGA_PORTS_START..=VGA_PORTS_END | 0x1CE..=0x1D0 => {
                self.vga.write(port, size, value, now)
            }
            0x92 => {
                if value & 1 != 0 && self.port92 & 1 == 0 {
                    self.power_event = Some(PowerEvent::Reset);
                }
                self.port92 = value as u8 & 0x03;
            }
            p if p == acpi::PM1A_EVT + 2 => self.pm1_enable = value as u16,
            p if p == acpi::PM1A_CNT => {
                let v = value as u16;
                if v & acpi::SLP_EN != 0 && (v >> 10) & 7 == acpi::SLP_TYP_S5 {
                    self.power_event = Some(PowerEvent::PowerOff);
                }
            }
            p => {
                if let Some(i) = COM_BASES.iter().position(|&b| (b..b + 8).contains(&p)) {
                    self.uarts[i].write(port, size, value, now);
                } else if let Some((ch, off)) = self.bus_master_port(p) {
                    self.ide[ch].bus_master_write(off, size, value);
                } else if let Some(reg) = self.nic_register(p) {
                    if let Some(nic) = &mut self.nic {
                        nic.card.write(reg, size, value, now);
                    }
                }
            }
        }
        self.after_access(port);
    }

    /// The IDE bus-master registers, wherever the guest put BAR4: (channel, offset).
    fn bus_master_port(&mut self, port: u16) -> Option<(usize, u16)> {
        let base = self.pci_view().ide_bus_master?;
        let off = port.checked_sub(base)?;
        (off < 16).then_some(((off / 8) as usize, off % 8))
    }

    /// The network card's register at `port`, if the card answers there.
    fn nic_register(&mut self, port: u16) -> Option<u16> {
        let offset = port.checked_sub(self.pci_view().nic_io?)?;
        (offset < 0x20).then_some(offset)
    }

    /// The offset of `addr` in the linear framebuffer, if the VGA's BAR 0 is enabled
    /// (memory space on in its command register) and covers it.
    fn lfb_offset(&mut self, addr: u64) -> Option<usize> {
        let off = addr.checked_sub(self.pci_view().lfb?)?;
        (off < hospes_devices::vga::dispi::MEMORY_SIZE as u64).then_some(off as usize)
    }

    /// A read from memory-mapped I/O: the VGA window, the linear framebuffer, or
    /// nothing (all ones).
    pub fn mmio_read(&mut self, addr: u64, size: u8) -> u64 {
        if !VGA_WINDOW.contains(&addr) {
            return match self.lfb_offset(addr) {
                Some(off) => (0..size.min(8) as usize).fold(0u64, |v, i| {
                    v | (self.vga.lfb_read(off + i) as u64) << (8 * i)
                }),
                None => hospes_cpu::mem::ones(size),
            };
        }
        let mut v = 0u64;
        for i in 0..size.min(8) as u64 {
            v |= (self.vga.mem_read(addr + i) as u64) << (8 * i);
        }
        v
    }

    pub fn mmio_write(&mut self, addr: u64, size: u8, value: u64) {
        if VGA_WINDOW.contains(&addr) {
            for i in 0..size.min(8) as u64 {
                self.vga.mem_write(addr + i, (value >> (8 * i)) as u8);
            }
        } else if let Some(off) = self.lfb_offset(addr) {
            for i in 0..size.min(8) as usize {
                self.vga.lfb_write(off + i, (value >> (8 * i)) as u8);
            }
        }
    }

    /// After an access to `port`: a reset the keyboard controller was asked for, the
    /// A20 gate, and the interrupt lines. Port 61h (which the kernel polls while it
    /// calibrates its clocks, with an OUT to port 80h as delay in between, about a
    /// million times per boot) and port 80h change none of them.
    fn after_access(&mut self, port: u16) {
        if matches!(port, 0x61 | 0x80) {
            return;
        }
        if self.kbc.take_reset_request() {
            self.power_event = Some(PowerEvent::Reset);
        }
        self.update_a20();
        self.sync_irqs();
    }
}

impl Platform for Devices {
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        Devices::port_read(self, port, size)
    }
    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        Devices::port_write(self, port, size, value)
    }
    fn drive(&mut self, number: u8) -> Option<&mut dyn Drive> {
        self.drives
            .iter_mut()
            .find(|d| d.number == number)
            .map(|d| d.drive.as_mut() as &mut dyn Drive)
    }
    fn now(&self) -> u64 {
        Devices::now(self)
    }
    fn mmio_read8(&mut self, addr: u32) -> u8 {
        self.mmio_read(addr as u64, 1) as u8
    }
    fn mmio_write8(&mut self, addr: u32, value: u8) {
        self.mmio_write(addr as u64, 1, value as u64)
    }
}

/// What the CPU sees: the devices plus the BIOS behind its emulator calls.
pub struct Board {
    pub devices: Devices,
    /// The built-in BIOS; None when a firmware image runs in its place (its emulator
    /// calls are then not honoured).
    pub bios: Option<Bios>,
}

impl Board {
    /// Each device's state by name, encoded: what a snapshot keeps ([`Board::save`])
    /// and a replay's digest hashes ([`Board::digests`]), from this one list.
    fn device_states(&self) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
        fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
            let mut bytes = Vec::new();
            put(&mut bytes, value)?;
            Ok(bytes)
        }
        let d = &self.devices;
        Ok(vec![
            ("PIC", encode(&d.pic)?),
            ("PIT", encode(&d.pit)?),
            ("RTC", encode(&d.rtc)?),
            ("UARTs", encode(&d.uarts)?),
            ("keyboard controller", encode(&d.kbc)?),
            ("PCI bus", encode(&d.pci.save())?),
            ("IDE channels", encode(&d.ide)?),
            ("VGA", encode(&d.vga)?),
            ("debug console", encode(&d.debugcon)?),
            ("firmware configuration", encode(&d.fw_cfg)?),
            ("network card", encode(&d.nic)?),
            (
                "chipset",
                encode(&(d.port92, d.port61, d.pm1_enable, d.a20, d.power_event))?,
            ),
            (
                RUN_LOOP_STATE,
                encode(&(d.icount, d.a20_changed, d.timers_changed))?,
            ),
        ])
    }

    /// Appends the state of every device to `out` (host storage excepted: see
    /// [`crate::snapshot`]; the VBE memory is kept apart, page by page). The BIOS is
    /// saved apart ([`Board::save_bios`]): it is mostly the kernel it loads, the same in
    /// every snapshot of a run.
    pub fn save(&self, out: &mut Vec<u8>) -> Result<(), String> {
        put(out, &self.device_states()?)
    }

    /// Each device's name and a hash of its state (the BIOS's is not included: it is
    /// mostly the kernel it loads), and of the VBE memory.
    pub fn digests(&self) -> Vec<(&'static str, u64)> {
        // Encoding into memory cannot fail.
        let states = self.device_states().unwrap_or_default();
        let mut digests: Vec<_> = states
            .iter()
            .filter(|(name, _)| *name != RUN_LOOP_STATE)
            .map(|(name, bytes)| (*name, crate::replay::hash_bytes(bytes)))
            .collect();
        let video = self.devices.vga.dispi().memory();
        digests.push(("video memory", crate::replay::hash_bytes(video)));
        digests
    }

    /// The BIOS's state (with the kernel it loads), or None with a firmware image.
    pub fn save_bios(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        put(&mut out, &self.bios)?;
        Ok(out)
    }

    pub fn restore_bios(&mut self, saved: &[u8]) -> Result<(), String> {
        let mut input = saved;
        self.bios = take(&mut input)?;
        if !input.is_empty() {
            return Err("trailing bytes after the BIOS".into());
        }
        Ok(())
    }

    /// Takes the state [`Board::save`] wrote, onto a board built with the same devices
    /// and storage. On an error the board is left partly restored: throw it away.
    pub fn restore(&mut self, input: &mut &[u8]) -> Result<(), String> {
        let states: Vec<(String, Vec<u8>)> = take(input)?;
        let mut states = states.into_iter();
        // The devices in the order `device_states` lists them.
        let mut next = |name: &str| match states.next() {
            Some((saved, bytes)) if saved == name => Ok(bytes),
            _ => Err(format!(
                "the snapshot's devices are not this machine's (no {name} where expected)"
            )),
        };
        fn decode<T: serde::de::DeserializeOwned>(bytes: Vec<u8>) -> Result<T, String> {
            let mut input = &bytes[..];
            let value = take(&mut input)?;
            if !input.is_empty() {
                return Err("trailing bytes in a device's state".into());
            }
            Ok(value)
        }
        let d = &mut self.devices;
        d.pic = decode(next("PIC")?)?;
        d.pit = decode(next("PIT")?)?;
        d.rtc = decode(next("RTC")?)?;
        d.uarts = decode(next("UARTs")?)?;
        d.kbc = decode(next("keyboard controller")?)?;
        let pci: hospes_devices::pci::PciBusState = decode(next("PCI bus")?)?;
        d.pci.restore(&pci)?;
        let ide: [IdeChannel; 2] = decode(next("IDE channels")?)?;
        for (mine, saved) in d.ide.iter_mut().zip(ide) {
            mine.restore(saved)?;
        }
        d.vga = decode(next("VGA")?)?;
        d.debugcon = decode(next("debug console")?)?;
        d.fw_cfg = decode(next("firmware configuration")?)?;
        let nic: Option<Nic> = decode(next("network card")?)?;
        if nic.as_ref().map(|n| n.wiring) != d.nic.as_ref().map(|n| n.wiring) {
            return Err("the snapshot's network card is not this machine's".into());
        }
        d.nic = nic;
        (d.port92, d.port61, d.pm1_enable, d.a20, d.power_event) = decode(next("chipset")?)?;
        (d.icount, d.a20_changed, d.timers_changed) = decode(next(RUN_LOOP_STATE)?)?;
        if states.next().is_some() {
            return Err("the snapshot has more devices than this machine".into());
        }
        Ok(())
    }
}

impl Bus for Board {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.devices.port_read(port, size)
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.devices.port_write(port, size, value)
    }
    fn mmio_read(&mut self, addr: u64, size: u8) -> u64 {
        self.devices.mmio_read(addr, size)
    }
    fn mmio_write(&mut self, addr: u64, size: u8, value: u64) {
        self.devices.mmio_write(addr, size, value)
    }
    fn intr_pending(&mut self) -> bool {
        self.devices.pic.intr()
    }
    fn intr_ack(&mut self) -> u8 {
        let v = self.devices.pic.acknowledge();
        self.devices.sync_irqs();
        v
    }
    fn stop_requested(&mut self) -> bool {
        self.devices.machine_must_act() || std::mem::take(&mut self.devices.timers_changed)
    }
    fn needs_attention(&mut self) -> bool {
        let d = &self.devices;
        d.pic.intr() || d.machine_must_act() || d.timers_changed
    }
    fn sync_time(&mut self, icount: u64) {
        self.devices.set_icount(icount);
    }
    fn emulator_call(&mut self, cpu: &mut Cpu) -> bool {
        let Some(bios) = &mut self.bios else {
            return false;
        };
        self.devices.set_icount(cpu.state.icount);
        bios.call(cpu, &mut self.devices)
    }
}
