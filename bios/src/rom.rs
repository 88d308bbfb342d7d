//! The BIOS ROM image: the reset vector, the interrupt entry stubs and fixed tables.
//!
//! The work of every service is done in Rust (see [`crate::Bios::call`]). The ROM holds
//! only small real-mode stubs around the emulator-call opcode (VMCALL, `0F 01 C1`): the
//! machine honours it only inside this ROM and identifies the service from the address
//! of the opcode. A stub looks like ordinary BIOS code to the guest: it is reached
//! through the IVT, ends with IRET, and hardware interrupt stubs send their own EOI.

use iced_x86::code_asm::*;
use std::collections::HashMap;

/// The ROM occupies the top 128 KiB below 1 MiB (and is aliased below 4 GiB).
pub const ROM_BASE: u32 = 0xE_0000;
pub const ROM_SIZE: usize = 0x2_0000;
/// Real-mode segment of the code part of the ROM.
pub const ROM_SEGMENT: u16 = 0xF000;
/// Where the stubs start inside segment F000.
const CODE_OFFSET: u16 = 0xE000;
/// Fonts in segment F000: 8x16 (4 KiB), 8x8 (2 KiB), and the IBM-compatible copy of
/// the 8x8 characters 00h-7Fh.
pub const FONT_8X16_OFFSET: u16 = 0xA000;
pub const FONT_8X8_OFFSET: u16 = 0xB000;
const COMPAT_FONT_OFFSET: u16 = 0xFA6E;
/// The VBE protected-mode interface (INT 10h AX=4F0Ah) at F000:C000.
pub const VBE_PM_OFFSET: u16 = 0xC000;
/// The system configuration table (INT 15h AH=C0h) at F000:0100.
pub const CONFIG_TABLE: u16 = 0x0100;
/// Offset in the ROM image of the ACPI RSDP (F000:0200, 16-byte aligned as required).
pub const RSDP: u32 = 0xF_0200 - ROM_BASE;

/// What a VMCALL in the ROM asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Service {
    /// Power-on self test, from the reset vector.
    Post,
    /// A software interrupt service (INT 10h, 13h, ...): the vector.
    Interrupt(u8),
    /// IRQ 0: the timer tick (before INT 1Ch and the EOI).
    TimerTick,
    /// IRQ 1: a byte from the keyboard controller (before the EOI).
    Keyboard,
}

/// The assembled ROM.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Rom {
    pub image: Vec<u8>,
    /// Linear address of each VMCALL opcode -> the service it stands for.
    pub services: HashMap<u32, Service>,
    /// Real-mode entry point (offset in F000) of each interrupt vector's handler.
    #[serde(with = "serde_big_array::BigArray")]
    pub vectors: [u16; 256],
}

/// Software interrupts served in Rust.
pub const SERVICED_VECTORS: [u8; 11] = [
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A,
];
/// Services that may have to wait (INT 16h read key, INT 15h AH=86h): their Rust side
/// clears ZF when done, or sets it to ask the stub to HLT until the next interrupt and
/// call again.
const WAITING_VECTORS: [u8; 2] = [0x15, 0x16];

struct Builder {
    asm: CodeAssembler,
    /// (label of a VMCALL, service)
    calls: Vec<(CodeLabel, Service)>,
}

fn err(e: IcedError) -> String {
    format!("assembling the BIOS ROM: {e}")
}

impl Builder {
    /// Emits a VMCALL for `service`. `here` is a label already set on this position, if
    /// any (the assembler allows one label per instruction).
    fn vmcall(&mut self, service: Service, here: Option<CodeLabel>) -> Result<(), String> {
        let l = match here {
            Some(l) => l,
            None => {
                let mut l = self.asm.create_label();
                self.asm.set_label(&mut l).map_err(err)?;
                l
            }
        };
        self.asm.db(&[0x0F, 0x01, 0xC1]).map_err(err)?;
        self.calls.push((l, service));
        Ok(())
    }
}

/// Builds the ROM.
pub fn build() -> Result<Rom, String> {
    let mut b = Builder {
        asm: CodeAssembler::new(16).map_err(err)?,
        calls: Vec::new(),
    };
    let mut entry: Vec<(u8, CodeLabel)> = Vec::new();

    // POST: the Rust side sets up the machine and leaves CS:IP at the boot code.
    let mut post = b.asm.create_label();
    b.asm.set_label(&mut post).map_err(err)?;
    b.asm.cli().map_err(err)?;
    b.vmcall(Service::Post, None)?;
    // Not reached unless POST found nothing to boot: INT 18h reports it.
    b.asm.int(0x18).map_err(err)?;
    let mut stop = b.asm.create_label();
    b.asm.set_label(&mut stop).map_err(err)?;
    b.asm.cli().map_err(err)?;
    b.asm.hlt().map_err(err)?;
    b.asm.jmp(stop).map_err(err)?;

    // Software interrupt services.
    for &v in &SERVICED_VECTORS {
        let mut l = b.asm.create_label();
        b.asm.set_label(&mut l).map_err(err)?;
        if WAITING_VECTORS.contains(&v) {
            let mut again = b.asm.create_label();
            let mut done = b.asm.create_label();
            b.asm.sti().map_err(err)?;
            b.asm.set_label(&mut again).map_err(err)?;
            b.vmcall(Service::Interrupt(v), Some(again))?;
            b.asm.jnz(done).map_err(err)?;
            b.asm.hlt().map_err(err)?;
            b.asm.jmp(again).map_err(err)?;
            b.asm.set_label(&mut done).map_err(err)?;
            b.asm.iret().map_err(err)?;
        } else {
            b.vmcall(Service::Interrupt(v), Some(l))?;
            b.asm.iret().map_err(err)?;
        }
        entry.push((v, l));
    }

    // IRQ 0 (INT 08h): tick, the user hook INT 1Ch, EOI.
    let mut irq0 = b.asm.create_label();
    b.asm.set_label(&mut irq0).map_err(err)?;
    b.asm.push(ax).map_err(err)?;
    b.vmcall(Service::TimerTick, None)?;
    b.asm.int(0x1C).map_err(err)?;
    b.asm.mov(al, 0x20).map_err(err)?;
    b.asm.out(0x20, al).map_err(err)?;
    b.asm.pop(ax).map_err(err)?;
    b.asm.iret().map_err(err)?;
    entry.push((0x08, irq0));

    // IRQ 1 (INT 09h): read the scan code into the BIOS buffer, EOI.
    let mut irq1 = b.asm.create_label();
    b.asm.set_label(&mut irq1).map_err(err)?;
    b.asm.push(ax).map_err(err)?;
    b.vmcall(Service::Keyboard, None)?;
    b.asm.mov(al, 0x20).map_err(err)?;
    b.asm.out(0x20, al).map_err(err)?;
    b.asm.pop(ax).map_err(err)?;
    b.asm.iret().map_err(err)?;
    entry.push((0x09, irq1));

    // Other IRQs: acknowledge at the PIC(s) and return.
    let mut master_eoi = b.asm.create_label();
    b.asm.set_label(&mut master_eoi).map_err(err)?;
    b.asm.push(ax).map_err(err)?;
    b.asm.mov(al, 0x20).map_err(err)?;
    b.asm.out(0x20, al).map_err(err)?;
    b.asm.pop(ax).map_err(err)?;
    b.asm.iret().map_err(err)?;
    let mut slave_eoi = b.asm.create_label();
    b.asm.set_label(&mut slave_eoi).map_err(err)?;
    b.asm.push(ax).map_err(err)?;
    b.asm.mov(al, 0x20).map_err(err)?;
    b.asm.out(0xA0, al).map_err(err)?;
    b.asm.out(0x20, al).map_err(err)?;
    b.asm.pop(ax).map_err(err)?;
    b.asm.iret().map_err(err)?;

    // Everything else: a bare IRET.
    let mut bare_iret = b.asm.create_label();
    b.asm.set_label(&mut bare_iret).map_err(err)?;
    b.asm.iret().map_err(err)?;

    let code_ip = ROM_SEGMENT as u64 * 16 + CODE_OFFSET as u64;
    let result = b
        .asm
        .assemble_options(
            code_ip,
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .map_err(err)?;
    let code = &result.inner.code_buffer;
    let reset_vector = 0xFFF0usize;
    if CODE_OFFSET as usize + code.len() > COMPAT_FONT_OFFSET as usize {
        return Err("the BIOS ROM stubs do not fit below the font at F000:FA6E".into());
    }
    let offset_of = |l: &CodeLabel| -> Result<u16, String> {
        Ok((result.label_ip(l).map_err(err)? - ROM_SEGMENT as u64 * 16) as u16)
    };

    let mut image = vec![0xFFu8; ROM_SIZE];
    let seg_start = (ROM_SEGMENT as u32 * 16 - ROM_BASE) as usize;
    let at = seg_start + CODE_OFFSET as usize;
    image[at..at + code.len()].copy_from_slice(code);
    // Reset vector: JMP FAR F000:post.
    let post_ip = offset_of(&post)?;
    let r = seg_start + reset_vector;
    image[r] = 0xEA;
    image[r + 1..r + 3].copy_from_slice(&post_ip.to_le_bytes());
    image[r + 3..r + 5].copy_from_slice(&ROM_SEGMENT.to_le_bytes());
    // Fonts: 8x16 and 8x8 for INT 10h/1130h and INT 43h/1Fh, and the first half of the
    // 8x8 font where the IBM PC BIOS had it (programs of that era read it directly).
    let font8 = crate::font::font_8x8();
    let font16 = crate::font::font_8x16();
    for (offset, data) in [
        (FONT_8X16_OFFSET, &font16[..]),
        (FONT_8X8_OFFSET, &font8[..]),
        (COMPAT_FONT_OFFSET, &font8[..1024]),
    ] {
        let at = seg_start + offset as usize;
        image[at..at + data.len()].copy_from_slice(data);
    }
    let pm = crate::vbe::pm_interface_table();
    let at = seg_start + VBE_PM_OFFSET as usize;
    image[at..at + pm.len()].copy_from_slice(pm);
    // BIOS date (MM/DD/YY at F000:FFF5) and model byte (FC = AT) at F000:FFFE.
    image[seg_start + 0xFFF5..seg_start + 0xFFFD].copy_from_slice(b"11/25/26");
    image[seg_start + 0xFFFE] = 0xFC;
    // Configuration table: length 8, model FC (AT), submodel 0, revision 0; features:
    // second PIC, RTC, INT 15h/4Fh called, EBDA; INT 16h/09h supported.
    let t = seg_start + CONFIG_TABLE as usize;
    image[t..t + 10].copy_from_slice(&[8, 0, 0xFC, 0, 0, 0x74, 0x40, 0, 0, 0]);

    let mut vectors = [offset_of(&bare_iret)?; 256];
    for irq in 2..8u8 {
        vectors[0x08 + irq as usize] = offset_of(&master_eoi)?;
    }
    for irq in 0..8u8 {
        vectors[0x70 + irq as usize] = offset_of(&slave_eoi)?;
    }
    for (v, l) in &entry {
        vectors[*v as usize] = offset_of(l)?;
    }
    // Not handlers but pointers: the graphics-mode fonts (INT 1Fh: characters 80h-FFh).
    vectors[0x1F] = FONT_8X8_OFFSET + 0x400;
    vectors[0x43] = FONT_8X8_OFFSET;
    let mut services = HashMap::new();
    for (l, s) in &b.calls {
        services.insert(result.label_ip(l).map_err(err)? as u32, *s);
    }
    Ok(Rom {
        image,
        services,
        vectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_vector_jumps_to_post() {
        let rom = build().unwrap();
        let r = 0x1FFF0;
        assert_eq!(rom.image[r], 0xEA);
        let ip = u16::from_le_bytes([rom.image[r + 1], rom.image[r + 2]]);
        let seg = u16::from_le_bytes([rom.image[r + 3], rom.image[r + 4]]);
        assert_eq!(seg, 0xF000);
        // POST starts with CLI then the VMCALL.
        let post = (seg as usize * 16 + ip as usize) - ROM_BASE as usize;
        assert_eq!(rom.image[post], 0xFA);
        assert_eq!(&rom.image[post + 1..post + 4], &[0x0F, 0x01, 0xC1]);
        assert_eq!(
            rom.services[&(seg as u32 * 16 + ip as u32 + 1)],
            Service::Post
        );
    }

    #[test]
    fn every_service_call_is_a_vmcall_in_the_rom() {
        let rom = build().unwrap();
        for &addr in rom.services.keys() {
            let off = (addr - ROM_BASE) as usize;
            assert_eq!(&rom.image[off..off + 3], &[0x0F, 0x01, 0xC1]);
        }
        for v in SERVICED_VECTORS {
            assert!(rom.services.values().any(|s| *s == Service::Interrupt(v)));
        }
        assert!(rom.services.values().any(|s| *s == Service::TimerTick));
        // Vectors point at the stubs in segment F000, except the two font pointers.
        for (v, &ip) in rom.vectors.iter().enumerate() {
            match v {
                0x1F => assert_eq!(ip, FONT_8X8_OFFSET + 0x400),
                0x43 => assert_eq!(ip, FONT_8X8_OFFSET),
                _ => assert!(ip >= CODE_OFFSET),
            }
        }
        // The fonts are where the pointers say: 'A' in the 8x8 font, twice as tall in
        // the 8x16 one.
        let seg = (ROM_SEGMENT as u32 * 16 - ROM_BASE) as usize;
        let a8 = &rom.image[seg + FONT_8X8_OFFSET as usize + 8 * 0x41..][..8];
        let a16 = &rom.image[seg + FONT_8X16_OFFSET as usize + 16 * 0x41..][..16];
        assert!(a8.iter().any(|&r| r != 0));
        for (i, &r) in a16.iter().enumerate() {
            assert_eq!(r, a8[i / 2]);
        }
    }
}
