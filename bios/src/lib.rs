//! The hospes BIOS: POST, the real-mode services and the boot loaders, implemented in
//! Rust behind small ROM stubs (see DESIGN.md, BIOS, and [`rom`]).
//!
//! The machine owns a [`Bios`], maps [`Bios::rom`] at E0000h-FFFFFh, and calls
//! [`Bios::call`] when the CPU executes the emulator-call opcode inside the ROM. The BIOS
//! reaches devices only through [`Platform`]: port I/O like any ROM code, plus the disk
//! images behind the drives it boots from. It keeps its own state in the BDA/EBDA in
//! guest memory, as a real BIOS does, so a guest sees the usual data structures.

pub mod acpi;
pub mod aml;
mod disk;
pub mod font;
mod keyboard;
pub mod linux;
pub mod multiboot;
mod post;
pub mod rom;
mod system;
mod vbe;
mod video;

use hospes_cpu::state::{CS, SS};
use hospes_cpu::Cpu;
use rom::{Rom, Service};
use std::fmt;

pub use multiboot::{Module, MultibootBoot};
pub use post::{BootDevice, BootOptions, DirectKernel, KernelFormat, LinuxBoot};
pub use system::{e820_map, e820_map_with_boot_data, E820Entry};

/// Kinds of drives the BIOS boots from and serves through INT 13h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    Floppy,
    HardDisk,
    /// An ATAPI CD-ROM: 2048-byte sectors, El Torito boot.
    Cdrom,
}

/// An I/O error from a drive's backing image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveError(pub String);

impl fmt::Display for DriveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A drive as the BIOS sees it: fixed-size sectors addressed by LBA.
pub trait Drive {
    fn kind(&self) -> DriveKind;
    /// 512, or 2048 for a CD-ROM.
    fn sector_size(&self) -> u32;
    fn sectors(&self) -> u64;
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DriveError>;
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DriveError>;
}

/// What the BIOS needs from the machine around it.
pub trait Platform {
    fn port_read(&mut self, port: u16, size: u8) -> u32;
    fn port_write(&mut self, port: u16, size: u8, value: u32);
    /// The drive with this BIOS drive number (00h-01h floppies, 80h-83h hard disks,
    /// E0h the CD-ROM), if present.
    fn drive(&mut self, number: u8) -> Option<&mut dyn Drive>;
    /// Virtual time in nanoseconds (the machine's clock).
    fn now(&self) -> u64;
    /// A byte of memory-mapped I/O (the VGA window at A0000h-BFFFFh): what the CPU would
    /// read there.
    fn mmio_read8(&mut self, addr: u32) -> u8;
    fn mmio_write8(&mut self, addr: u32, value: u8);
}

/// Drive numbers.
pub const FLOPPY_A: u8 = 0x00;
pub const FIRST_HARD_DISK: u8 = 0x80;
pub const CDROM: u8 = 0xE0;

/// The BIOS: its ROM and the state it keeps outside guest memory.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Bios {
    rom: Rom,
    options: BootOptions,
    /// The kernel to boot directly, already laid out (checked when the BIOS is built,
    /// so a bad kernel is an error before the machine starts).
    kernel: Option<post::LoadedKernel>,
    /// Where the guest-visible memory map ends (RAM size in bytes).
    ram_size: u64,
    /// Start of the conventional memory reserved below the EBDA for a Multiboot
    /// kernel's boot information (the EBDA itself when there is none).
    boot_data_base: u32,
    /// The status of the last INT 13h operation, per drive class (AH=01h).
    last_disk_status: u8,
    /// Virtual time at which a pending INT 15h AH=86h wait ends.
    wait_until: Option<u64>,
    /// The keyboard controller sent an E0 prefix: the next code is an extended key.
    keyboard_e0: bool,
    /// The El Torito boot image we booted from (LBA, 512-byte sectors loaded), for
    /// INT 13h AH=4Bh.
    cd_boot_image_lba: u32,
    cd_boot_sectors: u16,
    /// The 8x16 font a text mode set loads into the VGA.
    font_8x16: Vec<u8>,
}

/// Why the BIOS could not be set up.
#[derive(Debug)]
pub struct BiosError(pub String);

impl fmt::Display for BiosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BiosError {}

impl Bios {
    pub fn new(ram_size: u64, mut options: BootOptions) -> Result<Bios, BiosError> {
        if ram_size < 2 << 20 {
            return Err(BiosError("the BIOS needs at least 2 MiB of RAM".into()));
        }
        let kernel = options
            .kernel
            .take()
            .map(|k| post::LoadedKernel::load(k, ram_size))
            .transpose()?;
        let boot_data_base = match &kernel {
            Some(post::LoadedKernel::Multiboot(image)) => image.boot_data_base,
            _ => EBDA,
        };
        let mut rom = rom::build().map_err(BiosError)?;
        let acpi = acpi::build(ram_size);
        let at = rom::RSDP as usize;
        rom.image[at..at + acpi.rsdp.len()].copy_from_slice(&acpi.rsdp);
        Ok(Bios {
            rom,
            options,
            kernel,
            ram_size,
            boot_data_base,
            last_disk_status: 0,
            wait_until: None,
            keyboard_e0: false,
            cd_boot_image_lba: 0,
            cd_boot_sectors: 0,
            font_8x16: font::font_8x16(),
        })
    }

    /// The 128 KiB ROM image for E0000h-FFFFFh.
    pub fn rom(&self) -> &[u8] {
        &self.rom.image
    }

    /// Handles the emulator call at the current instruction. Returns false if it was not
    /// executed from one of the ROM's call sites (the CPU then raises #UD).
    pub fn call(&mut self, cpu: &mut Cpu, platform: &mut dyn Platform) -> bool {
        // EIP is already past the 3-byte VMCALL.
        let at = cpu.state.seg[CS]
            .base
            .wrapping_add(cpu.state.rip)
            .wrapping_sub(3) as u32;
        if cpu.state.protected() && !cpu.state.v86() {
            return false;
        }
        let Some(&service) = self.rom.services.get(&at) else {
            return false;
        };
        match service {
            Service::Post => self.post(cpu, platform),
            Service::TimerTick => self.timer_tick(cpu),
            Service::Keyboard => self.keyboard_irq(cpu, platform),
            Service::Interrupt(v) => self.interrupt(v, cpu, platform),
        }
        true
    }

    fn interrupt(&mut self, vector: u8, cpu: &mut Cpu, platform: &mut dyn Platform) {
        let mut regs = Regs { cpu };
        match vector {
            0x10 => self.int10(&mut regs, platform),
            0x11 => {
                let v = regs.rd16(BDA + 0x10);
                regs.set_ax(v);
            }
            0x12 => {
                let v = regs.rd16(BDA + 0x13);
                regs.set_ax(v);
            }
            0x13 => self.int13(&mut regs, platform),
            0x14 => self.int14(&mut regs, platform),
            0x15 => self.int15(&mut regs, platform),
            0x16 => self.int16(&mut regs, platform),
            0x17 => {
                // No printer: "timeout" status.
                regs.set_ah(0x01);
            }
            0x18 => self.no_boot_device(&mut regs, platform),
            0x19 => self.boot(regs.cpu, platform),
            0x1A => self.int1a(&mut regs, platform),
            _ => {}
        }
    }
}

/// The BIOS data area.
pub(crate) const BDA: u32 = 0x400;
/// The extended BIOS data area (1 KiB below 640 KiB).
pub(crate) const EBDA: u32 = 0x9_FC00;

/// Register and memory access for a service call, in real-mode terms.
pub(crate) struct Regs<'a> {
    pub cpu: &'a mut Cpu,
}

impl Regs<'_> {
    pub fn cx(&self) -> u16 {
        self.cpu.state.reg16(1)
    }
    pub fn dx(&self) -> u16 {
        self.cpu.state.reg16(2)
    }
    pub fn bx(&self) -> u16 {
        self.cpu.state.reg16(3)
    }
    pub fn si(&self) -> u16 {
        self.cpu.state.reg16(6)
    }
    pub fn di(&self) -> u16 {
        self.cpu.state.reg16(7)
    }
    pub fn ah(&self) -> u8 {
        self.cpu.state.reg8(4)
    }
    pub fn al(&self) -> u8 {
        self.cpu.state.reg8(0)
    }
    pub fn bl(&self) -> u8 {
        self.cpu.state.reg8(3)
    }
    pub fn bh(&self) -> u8 {
        self.cpu.state.reg8(7)
    }
    pub fn cl(&self) -> u8 {
        self.cpu.state.reg8(1)
    }
    pub fn ch(&self) -> u8 {
        self.cpu.state.reg8(5)
    }
    pub fn dl(&self) -> u8 {
        self.cpu.state.reg8(2)
    }
    pub fn dh(&self) -> u8 {
        self.cpu.state.reg8(6)
    }
    pub fn ebx(&self) -> u32 {
        self.cpu.state.reg32(3)
    }
    pub fn ecx(&self) -> u32 {
        self.cpu.state.reg32(1)
    }
    pub fn edx(&self) -> u32 {
        self.cpu.state.reg32(2)
    }
    pub fn set_ax(&mut self, v: u16) {
        self.cpu.state.set_reg16(0, v)
    }
    pub fn set_bx(&mut self, v: u16) {
        self.cpu.state.set_reg16(3, v)
    }
    pub fn set_cx(&mut self, v: u16) {
        self.cpu.state.set_reg16(1, v)
    }
    pub fn set_dx(&mut self, v: u16) {
        self.cpu.state.set_reg16(2, v)
    }
    pub fn set_al(&mut self, v: u8) {
        self.cpu.state.set_reg8(0, v)
    }
    pub fn set_ah(&mut self, v: u8) {
        self.cpu.state.set_reg8(4, v)
    }
    pub fn set_bl(&mut self, v: u8) {
        self.cpu.state.set_reg8(3, v)
    }
    pub fn set_bh(&mut self, v: u8) {
        self.cpu.state.set_reg8(7, v)
    }
    pub fn set_cl(&mut self, v: u8) {
        self.cpu.state.set_reg8(1, v)
    }
    pub fn set_ch(&mut self, v: u8) {
        self.cpu.state.set_reg8(5, v)
    }
    pub fn set_dl(&mut self, v: u8) {
        self.cpu.state.set_reg8(2, v)
    }
    pub fn set_dh(&mut self, v: u8) {
        self.cpu.state.set_reg8(6, v)
    }
    pub fn set_eax(&mut self, v: u32) {
        self.cpu.state.set_reg32(0, v)
    }
    pub fn set_ebx(&mut self, v: u32) {
        self.cpu.state.set_reg32(3, v)
    }
    pub fn set_ecx(&mut self, v: u32) {
        self.cpu.state.set_reg32(1, v)
    }

    /// Linear address of `seg:off` for a segment register index.
    pub fn lin(&self, seg: usize, off: u16) -> u32 {
        (self.cpu.state.seg[seg].base as u32).wrapping_add(off as u32)
    }

    pub fn rd8(&self, addr: u32) -> u8 {
        self.cpu.mem.read_u8(addr as u64)
    }
    pub fn rd16(&self, addr: u32) -> u16 {
        self.cpu.mem.read_u16(addr as u64)
    }
    pub fn rd32(&self, addr: u32) -> u32 {
        self.cpu.mem.read_u32(addr as u64)
    }
    pub fn read(&self, addr: u32, buf: &mut [u8]) {
        self.cpu.mem.read(addr as u64, buf)
    }
    pub fn wr8(&mut self, addr: u32, v: u8) {
        self.cpu.write_phys(addr as u64, &[v])
    }
    pub fn wr16(&mut self, addr: u32, v: u16) {
        self.cpu.write_phys(addr as u64, &v.to_le_bytes())
    }
    pub fn wr32(&mut self, addr: u32, v: u32) {
        self.cpu.write_phys(addr as u64, &v.to_le_bytes())
    }
    pub fn write(&mut self, addr: u32, data: &[u8]) {
        self.cpu.write_phys(addr as u64, data)
    }

    /// The FLAGS image the INT pushed (SS:SP+4 at the stub's VMCALL).
    fn stacked_flags_addr(&self) -> u32 {
        self.lin(SS, self.cpu.state.reg16(4).wrapping_add(4))
    }

    /// Sets or clears a flag in the FLAGS image that IRET will restore.
    pub fn set_return_flag(&mut self, mask: u16, on: bool) {
        let at = self.stacked_flags_addr();
        let f = self.rd16(at);
        self.wr16(at, if on { f | mask } else { f & !mask });
    }

    /// The usual service result: CF in the returned FLAGS.
    pub fn set_carry(&mut self, on: bool) {
        self.set_return_flag(1, on);
    }

    /// For the waiting stubs: ZF clear = the service is complete, set = HLT and retry.
    pub fn set_done(&mut self, done: bool) {
        self.cpu.state.flags.set_bit(hospes_cpu::flags::ZF, !done);
    }
}
