//! POST and booting: the IVT and BIOS data areas, the interrupt controllers and timer,
//! the CMOS memory-size bytes, then a boot sector from the first bootable device in the
//! boot order (INT 19h), an El Torito CD image, or a Linux or Multiboot kernel loaded
//! directly.

use crate::disk::el_torito_boot_entry;
use crate::multiboot::{self, MultibootBoot, MultibootImage};
use crate::{linux, Bios, BiosError, Platform, Regs, BDA, CDROM, EBDA, FIRST_HARD_DISK, FLOPPY_A};
use hospes_cpu::flags::IF;
use hospes_cpu::state::{
    DescTable, Segment, ATTR_ACCESSED, ATTR_CODE, ATTR_DB, ATTR_G, ATTR_P, ATTR_RW, ATTR_S, CR0_PE,
    CR0_PG, CS, DS, ES, FS, GS, SS,
};
use hospes_cpu::Cpu;

/// A device to boot from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootDevice {
    Floppy,
    HardDisk,
    Cdrom,
}

/// A Linux bzImage to boot directly.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LinuxBoot {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
}

/// A kernel to boot directly instead of a boot sector.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum DirectKernel {
    Linux(LinuxBoot),
    Multiboot(MultibootBoot),
}

/// The kinds of kernel file the BIOS boots directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A Linux bzImage (it has the "HdrS" setup header, whatever else is wrong with it).
    Linux,
    /// Anything else with a Multiboot header.
    Multiboot,
}

impl KernelFormat {
    /// What `kernel` is, if it is something the BIOS can boot.
    pub fn detect(kernel: &[u8]) -> Option<KernelFormat> {
        if linux::has_setup_header(kernel) {
            Some(KernelFormat::Linux)
        } else if multiboot::is_multiboot(kernel) {
            Some(KernelFormat::Multiboot)
        } else {
            None
        }
    }
}

/// What POST boots.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BootOptions {
    pub order: Vec<BootDevice>,
    /// Boot this kernel, not the boot order.
    pub kernel: Option<DirectKernel>,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            order: vec![BootDevice::Floppy, BootDevice::HardDisk, BootDevice::Cdrom],
            kernel: None,
        }
    }
}

/// A direct kernel laid out for guest memory, kept so that every POST (a reset too)
/// loads it afresh.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum LoadedKernel {
    Linux(linux::LinuxImage),
    Multiboot(MultibootImage),
}

impl LoadedKernel {
    pub(crate) fn load(kernel: DirectKernel, ram_size: u64) -> Result<LoadedKernel, BiosError> {
        match kernel {
            DirectKernel::Linux(k) => linux::load(
                &k.kernel,
                k.initrd.as_deref(),
                &k.cmdline,
                ram_size,
                crate::acpi::tables_base(ram_size) as u64,
            )
            .map(LoadedKernel::Linux)
            .map_err(|e| BiosError(format!("cannot boot the Linux kernel: {e}"))),
            DirectKernel::Multiboot(k) => multiboot::load(k, ram_size)
                .map(LoadedKernel::Multiboot)
                .map_err(|e| BiosError(format!("cannot boot the Multiboot kernel: {e}"))),
        }
    }
}

const COM_PORTS: [u16; 4] = [0x3F8, 0x2F8, 0x3E8, 0x2E8];
const BOOT_SECTOR: u32 = 0x7C00;

impl Bios {
    pub(crate) fn post(&mut self, cpu: &mut Cpu, p: &mut dyn Platform) {
        let mut r = Regs { cpu };
        self.setup_ivt(&mut r);
        self.setup_bda(&mut r, p);
        self.setup_interrupt_controllers(p);
        self.setup_cmos(p);
        self.setup_pci_interrupts(p);
        let acpi = crate::acpi::build(self.ram_size);
        r.write(acpi.base, &acpi.tables);
        // A20 on, as BIOSes leave it for boot loaders that forget to enable it.
        let v = p.port_read(0x92, 1);
        p.port_write(0x92, 1, (v | 2) & !1);
        self.keyboard_init(&mut r);
        self.video_init(&mut r, p);
        self.print_screen(&mut r, p, "hospes BIOS\r\n");
        match &self.kernel {
            Some(LoadedKernel::Linux(image)) => enter_linux(&mut r, image),
            Some(LoadedKernel::Multiboot(image)) => enter_multiboot(&mut r, image),
            None => self.boot(r.cpu, p),
        }
    }

    fn setup_ivt(&self, r: &mut Regs) {
        let mut ivt = Vec::with_capacity(1024);
        for ip in self.rom.vectors {
            ivt.extend_from_slice(&ip.to_le_bytes());
            ivt.extend_from_slice(&crate::rom::ROM_SEGMENT.to_le_bytes());
        }
        r.write(0, &ivt);
    }

    fn setup_bda(&self, r: &mut Regs, p: &mut dyn Platform) {
        r.write(BDA, &[0u8; 0x100]);
        for (i, port) in COM_PORTS.iter().enumerate() {
            r.wr16(BDA + i as u32 * 2, *port);
        }
        r.wr16(BDA + 0x0E, (EBDA >> 4) as u16);
        let floppies = (0..2).filter(|&n| p.drive(FLOPPY_A + n).is_some()).count() as u16;
        let hard_disks = (0..4)
            .filter(|&n| p.drive(FIRST_HARD_DISK + n).is_some())
            .count() as u8;
        // Equipment: floppies, x87 present, 80x25 colour, four serial ports.
        let mut equipment = 0x0002 | (0b10 << 4) | (4 << 9);
        if floppies > 0 {
            equipment |= 1 | ((floppies - 1) << 6);
        }
        r.wr16(BDA + 0x10, equipment);
        r.wr16(BDA + 0x13, (EBDA / 1024) as u16);
        r.wr8(BDA + 0x75, hard_disks);
        // EBDA: its size in KiB first.
        r.write(EBDA, &[0u8; 0x400]);
        r.wr16(EBDA, 1);
    }

    fn setup_interrupt_controllers(&self, p: &mut dyn Platform) {
        // 8259s: vectors 08h and 70h, cascade on IR2, 8086 mode; IRQ 0, 1 and 2 open.
        for (port, value) in [
            (0x20, 0x11),
            (0xA0, 0x11),
            (0x21, 0x08),
            (0xA1, 0x70),
            (0x21, 0x04),
            (0xA1, 0x02),
            (0x21, 0x01),
            (0xA1, 0x01),
            (0x21, 0xF8),
            (0xA1, 0xFF),
        ] {
            p.port_write(port, 1, value);
        }
        // PIT channel 0: mode 3, divisor 65536 (18.2 Hz).
        p.port_write(0x43, 1, 0x36);
        p.port_write(0x40, 1, 0);
        p.port_write(0x40, 1, 0);
    }

    /// Routes PIRQA-PIRQD (PIIX3 registers 60h-63h) to [`crate::acpi::PIRQ_IRQS`], makes
    /// those IRQs level-triggered in the ELCR, and sets the interrupt line register of
    /// every bus 0 function that has an interrupt pin: the routing the ACPI `_PRT`
    /// describes.
    fn setup_pci_interrupts(&self, p: &mut dyn Platform) {
        use crate::acpi::{pci_pirq, PIRQ_IRQS};
        let address = |device: u8, func: u8, offset: u8| {
            0x8000_0000 | u32::from(device) << 11 | u32::from(func) << 8 | u32::from(offset)
        };
        let read = |p: &mut dyn Platform, device: u8, func: u8, offset: u8| {
            p.port_write(0xCF8, 4, address(device, func, offset));
            p.port_read(0xCFC, 4)
        };
        // The PIIX3 ISA bridge at 00:01.0.
        if read(p, 1, 0, 0) != 0x7000_8086 {
            return;
        }
        p.port_write(0xCF8, 4, address(1, 0, 0x60));
        p.port_write(0xCFC, 4, u32::from_le_bytes(PIRQ_IRQS));
        let level = PIRQ_IRQS.iter().fold(0u16, |m, &irq| m | 1 << irq);
        for (port, bits) in [(0x4D0, level as u8), (0x4D1, (level >> 8) as u8)] {
            let v = p.port_read(port, 1);
            p.port_write(port, 1, v | u32::from(bits));
        }
        for device in 0..32u8 {
            for func in 0..8u8 {
                let id = read(p, device, func, 0);
                if id & 0xFFFF == 0xFFFF {
                    if func == 0 {
                        break;
                    }
                    continue;
                }
                let pin = (read(p, device, func, 0x3C) >> 8) as u8;
                if (1..=4).contains(&pin) {
                    let irq = PIRQ_IRQS[usize::from(pci_pirq(device, pin - 1))];
                    p.port_write(0xCF8, 4, address(device, func, 0x3C));
                    p.port_write(0xCFC, 1, irq.into());
                }
                let header = read(p, device, func, 0x0C) >> 16;
                if func == 0 && header & 0x80 == 0 {
                    break;
                }
            }
        }
    }

    fn setup_cmos(&self, p: &mut dyn Platform) {
        let mut write = |index: u8, value: u8| {
            p.port_write(0x70, 1, index as u32);
            p.port_write(0x71, 1, value as u32);
        };
        let ext_kib = (self.ram_size.saturating_sub(0x10_0000) / 1024).min(0xFFFF) as u16;
        let above_16m = (self.ram_size.saturating_sub(16 << 20) / 65536).min(0xFFFF) as u16;
        let mut bytes: Vec<(u8, u8)> = vec![
            (0x15, 0x80), // 640 KiB base memory
            (0x16, 0x02),
            (0x17, ext_kib as u8),
            (0x18, (ext_kib >> 8) as u8),
            (0x30, ext_kib as u8),
            (0x31, (ext_kib >> 8) as u8),
            (0x34, above_16m as u8),
            (0x35, (above_16m >> 8) as u8),
            (0x14, 0x06), // equipment: x87, colour 80x25
        ];
        let sum: u16 = bytes
            .iter()
            .filter(|(i, _)| (0x10..=0x2D).contains(i))
            .map(|&(_, v)| v as u16)
            .sum();
        bytes.push((0x2E, (sum >> 8) as u8));
        bytes.push((0x2F, sum as u8));
        for (i, v) in bytes {
            write(i, v);
        }
    }

    /// Prints on the screen only.
    fn print_screen(&mut self, r: &mut Regs, p: &mut dyn Platform, text: &str) {
        for b in text.bytes() {
            crate::video::teletype(r, p, 0, b, None);
        }
    }

    /// INT 19h: the boot sequence.
    pub(crate) fn boot(&mut self, cpu: &mut Cpu, p: &mut dyn Platform) {
        let order = self.options.order.clone();
        let mut r = Regs { cpu };
        for dev in order {
            let entered = match dev {
                BootDevice::Floppy => self.boot_sector(&mut r, p, FLOPPY_A),
                BootDevice::HardDisk => self.boot_sector(&mut r, p, FIRST_HARD_DISK),
                BootDevice::Cdrom => self.boot_cd(&mut r, p),
            };
            if entered {
                return;
            }
        }
        self.no_boot_device(&mut r, p);
    }

    /// Loads and enters the boot sector of a floppy or hard disk.
    fn boot_sector(&mut self, r: &mut Regs, p: &mut dyn Platform, number: u8) -> bool {
        let Some(drive) = p.drive(number) else {
            return false;
        };
        let mut sector = vec![0u8; 512];
        if drive.sector_size() != 512 || drive.read(0, &mut sector).is_err() {
            return false;
        }
        if sector[510] != 0x55 || sector[511] != 0xAA {
            return false;
        }
        r.write(BOOT_SECTOR, &sector);
        enter_boot_code(r, 0, BOOT_SECTOR as u16, number);
        true
    }

    /// El Torito "no emulation" boot from the CD-ROM.
    fn boot_cd(&mut self, r: &mut Regs, p: &mut dyn Platform) -> bool {
        let Some(drive) = p.drive(CDROM) else {
            return false;
        };
        let Some((segment, count, lba)) = el_torito_boot_entry(drive) else {
            return false;
        };
        let bytes = count as usize * 512;
        let mut image = vec![0u8; bytes.div_ceil(2048) * 2048];
        for (i, chunk) in image.chunks_mut(2048).enumerate() {
            if drive.read(lba as u64 + i as u64, chunk).is_err() {
                return false;
            }
        }
        r.write((segment as u32) << 4, &image[..bytes]);
        self.cd_boot_image_lba = lba;
        self.cd_boot_sectors = count;
        enter_boot_code(r, segment, 0, CDROM);
        true
    }
}

/// Loads a bzImage and enters its real-mode setup code.
fn enter_linux(r: &mut Regs, image: &linux::LinuxImage) {
    for (addr, bytes) in &image.chunks {
        r.write(*addr, bytes);
    }
    let seg = image.segment;
    for s in [DS, ES, FS, GS, SS] {
        r.cpu.load_seg_real(s, seg);
    }
    r.cpu.load_seg_real(CS, seg + 0x20);
    r.cpu.state.rip = 0;
    r.cpu.state.set_reg32(4, image.stack as u32);
    r.cpu.state.flags.set_bit(IF, false);
}

/// Loads a Multiboot kernel, its modules and boot information, and enters it in the
/// state the specification (3.2, "Machine state") describes: 32-bit protected mode,
/// paging off, flat 4 GiB code and data segments, A20 on (POST did it), IF and VM
/// clear, EAX = 2BADB002h, EBX = the MBI.
///
/// The segment caches match a real GDT (in the reserved boot data area), so a kernel
/// that reloads a selector before installing its own GDT gets the same segment. The
/// IDT is empty (limit 0): the kernel must install its own before enabling interrupts,
/// and until then any exception triple-faults at once (the machine resets) rather than
/// running through a real-mode IVT read as gates. The specification leaves ESP
/// undefined; we point it just below the boot data, in free conventional memory, so a
/// kernel that pushes before setting up its stack does not clobber the MBI.
fn enter_multiboot(r: &mut Regs, image: &MultibootImage) {
    for (addr, bytes) in &image.chunks {
        r.write(*addr, bytes);
    }
    const ZEROS: [u8; 4096] = [0; 4096];
    for &(addr, len) in &image.zeros {
        let end = addr as u64 + len as u64;
        let mut at = addr as u64;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            r.write(at as u32, &ZEROS[..n]);
            at += n as u64;
        }
    }
    let flat = |selector: u16, attr: u16| Segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        attr: attr | ATTR_P | ATTR_S | ATTR_RW | ATTR_ACCESSED | ATTR_DB | ATTR_G,
    };
    let cpu = &mut *r.cpu;
    cpu.state.gdtr = DescTable {
        base: image.gdt_base as u64,
        limit: image.gdt_limit as u32,
    };
    cpu.state.idtr = DescTable { base: 0, limit: 0 };
    cpu.state.cr0 = (cpu.state.cr0 | CR0_PE) & !CR0_PG;
    cpu.flush_tlb();
    cpu.state.cpl = 0;
    cpu.state.seg[CS] = flat(multiboot::CODE_SELECTOR, ATTR_CODE);
    for s in [DS, ES, FS, GS, SS] {
        cpu.state.seg[s] = flat(multiboot::DATA_SELECTOR, 0);
    }
    // EFLAGS: only the always-one bit 1.
    cpu.state.flags.set(0x2);
    cpu.state.rip = image.entry as u64;
    cpu.state.set_reg32(0, multiboot::BOOTLOADER_MAGIC);
    cpu.state.set_reg32(3, image.info_addr);
    cpu.state.set_reg32(4, image.boot_data_base);
}

fn enter_boot_code(r: &mut Regs, cs: u16, ip: u16, drive: u8) {
    for s in [DS, ES, SS, FS, GS] {
        r.cpu.load_seg_real(s, 0);
    }
    r.cpu.load_seg_real(CS, cs);
    r.cpu.state.rip = ip as u64;
    r.cpu.state.set_reg32(4, BOOT_SECTOR);
    r.set_dl(drive);
    r.cpu.state.flags.set_bit(IF, true);
}
