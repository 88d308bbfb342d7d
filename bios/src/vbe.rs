//! INT 10h AH=4Fh: VESA BIOS Extensions 2.0 over the Bochs "dispi" interface (ports
//! 01CEh/01CFh) of the VGA, whose 16 MiB framebuffer is the VGA's PCI BAR 0 (QEMU's
//! "std" VGA, 1234:1111, in slot 2).
//!
//! Functions: 00h controller information (a "VBE2" request gets the 512-byte block
//! with the OEM strings in its OEM data area; the mode list is in the block's reserved
//! area, so it lives as long as the caller's buffer), 01h mode information, 02h set
//! mode (bit 14 linear framebuffer, bit 15 keep memory; numbers below 100h go to
//! AH=00h), 03h current mode, 04h state size/save/restore (the VGA's states as INT 10h
//! AH=1Ch keeps them, and the dispi registers as the "SVGA state"),
//! 05h bank window (64 KiB granularity, window A only; 034Fh in a mode set with
//! the linear framebuffer, as SeaVGABIOS does too), 06h logical scan line length,
//! 07h display start, 08h DAC format (6 or 8 bits), 09h palette data, 0Ah the
//! protected-mode interface: real 32-bit code in the ROM (see
//! [`protected_mode_interface`]), since a protected-mode caller cannot reach the BIOS's
//! emulator calls (it may even copy the code elsewhere).
//!
//! Modes: the VESA numbers for 8, 15, 16 and 24 bpp (0x118 is 1024x768x24, what
//! Linux's `vga=0x318` asks for), and 32 bpp at 140h-147h (see [`MODES`]).

use crate::{Bios, Platform, Regs};
use hospes_cpu::state::ES;

const INDEX_PORT: u16 = 0x1CE;
const DATA_PORT: u16 = 0x1CF;
const XRES: u16 = 1;
const YRES: u16 = 2;
const BPP: u16 = 3;
const ENABLE: u16 = 4;
const BANK: u16 = 5;
const VIRT_WIDTH: u16 = 6;
const VIRT_HEIGHT: u16 = 7;
const X_OFFSET: u16 = 8;
const Y_OFFSET: u16 = 9;
const ENABLED: u16 = 0x01;
const LFB_ENABLED: u16 = 0x40;
const DAC_8BIT: u16 = 0x20;
const NOCLEARMEM: u16 = 0x80;

/// Video memory, in 64 KiB units.
pub const MEMORY_64K: u16 = 256;
const MEMORY_BYTES: u32 = (MEMORY_64K as u32) << 16;
/// The VGA's PCI slot and the framebuffer address when BAR 0 is unassigned.
const VGA_SLOT: u32 = 2;
const DEFAULT_LFB: u32 = 0xE000_0000;

/// A VBE mode: number, width, height, bits per pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbeMode {
    pub number: u16,
    pub width: u16,
    pub height: u16,
    pub bpp: u8,
}

const fn m(number: u16, width: u16, height: u16, bpp: u8) -> VbeMode {
    VbeMode {
        number,
        width,
        height,
        bpp,
    }
}

/// Every mode offered, in the order of the controller's mode list.
pub const MODES: [VbeMode; 32] = [
    m(0x100, 640, 400, 8),
    m(0x101, 640, 480, 8),
    m(0x103, 800, 600, 8),
    m(0x105, 1024, 768, 8),
    m(0x107, 1280, 1024, 8),
    m(0x10D, 320, 200, 15),
    m(0x10E, 320, 200, 16),
    m(0x10F, 320, 200, 24),
    m(0x110, 640, 480, 15),
    m(0x111, 640, 480, 16),
    m(0x112, 640, 480, 24),
    m(0x113, 800, 600, 15),
    m(0x114, 800, 600, 16),
    m(0x115, 800, 600, 24),
    m(0x116, 1024, 768, 15),
    m(0x117, 1024, 768, 16),
    m(0x118, 1024, 768, 24),
    m(0x119, 1280, 1024, 15),
    m(0x11A, 1280, 1024, 16),
    m(0x11B, 1280, 1024, 24),
    m(0x11C, 1600, 1200, 8),
    m(0x11D, 1600, 1200, 15),
    m(0x11E, 1600, 1200, 16),
    m(0x11F, 1600, 1200, 24),
    m(0x140, 320, 200, 32),
    m(0x141, 640, 400, 32),
    m(0x142, 640, 480, 32),
    m(0x143, 800, 600, 32),
    m(0x144, 1024, 768, 32),
    m(0x145, 1280, 1024, 32),
    m(0x146, 1600, 1200, 32),
    m(0x147, 1920, 1080, 32),
];

pub fn find_mode(number: u16) -> Option<VbeMode> {
    MODES.iter().copied().find(|m| m.number == number & 0x1FF)
}

impl VbeMode {
    pub fn bytes_per_line(&self) -> u32 {
        self.width as u32 * (self.bpp as u32).div_ceil(8)
    }
}

const OEM_STRING: &[u8] = b"hospes VBE\0";
const VENDOR_NAME: &[u8] = b"hospes\0";
const PRODUCT_NAME: &[u8] = b"hospes dispi VGA\0";
const PRODUCT_REV: &[u8] = b"1.0\0";

/// Offset of the mode list in the controller information block (its reserved area).
const MODE_LIST_OFFSET: usize = 0x22;

/// The controller information block for a caller's buffer at `segment:offset`:
/// 512 bytes when the caller asked for VBE 2.0 information ("VBE2"), else 256.
pub fn controller_info(vbe2: bool, segment: u16, offset: u16) -> Vec<u8> {
    let mut b = vec![0u8; if vbe2 { 512 } else { 256 }];
    let far = |at: usize| (segment as u32) << 16 | (offset as u32 + at as u32) & 0xFFFF;
    let put16 =
        |b: &mut Vec<u8>, at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    b[0..4].copy_from_slice(b"VESA");
    put16(&mut b, 4, 0x0200);
    put32(&mut b, 10, 1); // capabilities: DAC switchable to 8 bits, VGA compatible
    put32(&mut b, 14, far(MODE_LIST_OFFSET));
    put16(&mut b, 18, MEMORY_64K);
    let mut at = MODE_LIST_OFFSET;
    for mode in MODES {
        put16(&mut b, at, mode.number);
        at += 2;
    }
    put16(&mut b, at, 0xFFFF);
    at += 2;
    // The strings: in the OEM data area for VBE 2.0 callers, after the list otherwise.
    if vbe2 {
        at = 0x100;
    }
    let string = |b: &mut Vec<u8>, s: &[u8], at: &mut usize| {
        b[*at..*at + s.len()].copy_from_slice(s);
        let p = far(*at);
        *at += s.len();
        p
    };
    let oem = string(&mut b, OEM_STRING, &mut at);
    put32(&mut b, 6, oem);
    if vbe2 {
        put16(&mut b, 20, 0x0100); // OEM software revision
        let v = string(&mut b, VENDOR_NAME, &mut at);
        put32(&mut b, 22, v);
        let p = string(&mut b, PRODUCT_NAME, &mut at);
        put32(&mut b, 26, p);
        let r = string(&mut b, PRODUCT_REV, &mut at);
        put32(&mut b, 30, r);
    }
    b
}

/// The 256-byte mode information block of `mode`, whose framebuffer is at `lfb`.
pub fn mode_info(mode: VbeMode, lfb: u32) -> [u8; 256] {
    let mut b = [0u8; 256];
    let put16 =
        |b: &mut [u8; 256], at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    // Supported, extended information, colour, graphics, linear framebuffer; no BIOS
    // text output; banked access works (bit 6 clear).
    put16(&mut b, 0, 0x009B);
    b[2] = 0x07; // window A: exists, readable, writable
    b[3] = 0x00;
    put16(&mut b, 4, 64); // granularity, KiB
    put16(&mut b, 6, 64); // size, KiB
    put16(&mut b, 8, 0xA000);
    put16(&mut b, 10, 0);
    // WinFuncPtr (12) stays 0: use AX=4F05h.
    let bpl = mode.bytes_per_line();
    put16(&mut b, 16, bpl as u16);
    put16(&mut b, 18, mode.width);
    put16(&mut b, 20, mode.height);
    b[22] = 8; // character cell
    b[23] = 16;
    b[24] = 1; // planes
    b[25] = mode.bpp;
    b[26] = 1; // banks
    b[27] = if mode.bpp == 8 { 4 } else { 6 }; // packed pixel, direct colour
    b[28] = 0; // bank size
    let pages = (MEMORY_BYTES / (bpl * mode.height as u32).max(1)).clamp(1, 256) - 1;
    b[29] = pages as u8;
    b[30] = 1;
    // Red, green, blue, reserved: size and position.
    let fields: [u8; 8] = match mode.bpp {
        15 => [5, 10, 5, 5, 5, 0, 1, 15],
        16 => [5, 11, 6, 5, 5, 0, 0, 0],
        24 => [8, 16, 8, 8, 8, 0, 0, 0],
        32 => [8, 16, 8, 8, 8, 0, 8, 24],
        _ => [0; 8],
    };
    b[31..39].copy_from_slice(&fields);
    b[39] = if mode.bpp == 32 { 2 } else { 0 }; // reserved field usable
    b[40..44].copy_from_slice(&lfb.to_le_bytes());
    // VBE 3.0 fields, harmless to 2.0 callers.
    put16(&mut b, 50, bpl as u16);
    b[52] = pages as u8;
    b[53] = pages as u8;
    b[54..62].copy_from_slice(&fields);
    b
}

/// The protected-mode interface (4F0Ah), assembled once.
pub fn pm_interface_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| protected_mode_interface().expect("the VBE protected-mode code assembles"))
}

/// The table 4F0Ah returns: the offsets (from the table's start) of 32-bit code for
/// 4F05h (bank window: DX = bank), 4F07h (display start: DX:CX = offset in bytes / 4)
/// and 4F09h (palette: CX entries from DX, B G R x each at ES:EDI), then of the list of
/// the I/O ports that code uses (FFFFh-terminated), followed by an empty memory list.
/// The code is position-independent, works with any flat or based code segment, keeps
/// every register but EAX and answers AX = 004Fh (014Fh for an unsupported BL).
fn protected_mode_interface() -> Result<Vec<u8>, iced_x86::IcedError> {
    // Scoped: the assembler's register names would shadow this module's names.
    use iced_x86::code_asm::*;
    use iced_x86::BlockEncoderOptions;
    let mut a = CodeAssembler::new(32)?;
    let mut set_window = a.create_label();
    let mut display_start = a.create_label();
    let mut palette = a.create_label();
    let mut ports = a.create_label();
    let mut failed = a.create_label();
    let mut display_start_set = a.create_label();
    let mut bad_geometry = a.create_label();
    let mut next_entry = a.create_label();
    let mut palette_done = a.create_label();
    let mut palette_set = a.create_label();

    // The header, filled in below once the code's offsets are known.
    let header = [0u8; 8];
    a.db(&header)?;

    // 4F05h: BL = window (A and B share the bank), DX = bank in 64 KiB units.
    a.set_label(&mut set_window)?;
    a.push(edx)?;
    a.mov(dx, INDEX_PORT as u32)?;
    a.mov(ax, BANK as u32)?;
    a.out(dx, ax)?;
    a.inc(dx)?;
    a.pop(eax)?;
    a.out(dx, ax)?;
    a.mov(edx, eax)?;
    a.mov(ax, SUCCESS as u32)?;
    a.ret()?;

    // 4F07h: BL = 00h or 80h (at vertical retrace: the same here), DX:CX = the display
    // start in bytes / 4. It becomes the dispi X and Y offsets, through the bytes per
    // pixel and the virtual width.
    a.set_label(&mut display_start)?;
    a.cmp(bl, 0x80)?;
    a.je(display_start_set)?;
    a.test(bl, bl)?;
    a.jnz(failed)?;
    a.set_label(&mut display_start_set)?;
    a.push(ebx)?;
    a.push(ecx)?;
    a.push(edx)?;
    a.push(esi)?;
    a.movzx(esi, dx)?;
    a.shl(esi, 16)?;
    a.mov(si, cx)?;
    a.shl(esi, 2)?;
    a.mov(dx, INDEX_PORT as u32)?;
    a.mov(ax, BPP as u32)?;
    a.out(dx, ax)?;
    a.inc(dx)?;
    a.in_(ax, dx)?;
    a.add(ax, 7)?;
    a.shr(ax, 3)?;
    a.movzx(ebx, ax)?;
    a.dec(dx)?;
    a.mov(ax, VIRT_WIDTH as u32)?;
    a.out(dx, ax)?;
    a.inc(dx)?;
    a.in_(ax, dx)?;
    a.movzx(ecx, ax)?;
    a.imul_2(ecx, ebx)?;
    a.test(ecx, ecx)?;
    a.jz(bad_geometry)?;
    a.mov(eax, esi)?;
    a.xor(edx, edx)?;
    a.div(ecx)?;
    a.mov(esi, eax)?; // the line
    a.mov(eax, edx)?;
    a.xor(edx, edx)?;
    a.div(ebx)?;
    a.mov(ecx, eax)?; // the pixel in the line
    a.mov(dx, INDEX_PORT as u32)?;
    a.mov(ax, X_OFFSET as u32)?;
    a.out(dx, ax)?;
    a.inc(dx)?;
    a.mov(eax, ecx)?;
    a.out(dx, ax)?;
    a.dec(dx)?;
    a.mov(ax, Y_OFFSET as u32)?;
    a.out(dx, ax)?;
    a.inc(dx)?;
    a.mov(eax, esi)?;
    a.out(dx, ax)?;
    a.pop(esi)?;
    a.pop(edx)?;
    a.pop(ecx)?;
    a.pop(ebx)?;
    a.mov(ax, SUCCESS as u32)?;
    a.ret()?;
    a.set_label(&mut bad_geometry)?;
    a.pop(esi)?;
    a.pop(edx)?;
    a.pop(ecx)?;
    a.pop(ebx)?;
    a.jmp(failed)?;

    // 4F09h: BL = 00h or 80h (set the primary palette), CX entries from DX, each
    // blue, green, red, unused (in the DAC's width, 4F08h) at ES:EDI.
    a.set_label(&mut palette)?;
    a.cmp(bl, 0x80)?;
    a.je(palette_set)?;
    a.test(bl, bl)?;
    a.jnz(failed)?;
    a.set_label(&mut palette_set)?;
    a.push(ecx)?;
    a.push(edx)?;
    a.push(edi)?;
    a.movzx(ecx, cx)?;
    a.mov(al, dl)?;
    a.mov(dx, 0x3C8u32)?;
    a.out(dx, al)?;
    a.inc(dx)?;
    a.test(ecx, ecx)?;
    a.jz(palette_done)?;
    a.set_label(&mut next_entry)?;
    a.mov(al, byte_ptr(edi + 2).es())?;
    a.out(dx, al)?;
    a.mov(al, byte_ptr(edi + 1).es())?;
    a.out(dx, al)?;
    a.mov(al, byte_ptr(edi).es())?;
    a.out(dx, al)?;
    a.add(edi, 4)?;
    a.dec(ecx)?;
    a.jnz(next_entry)?;
    a.set_label(&mut palette_done)?;
    a.pop(edi)?;
    a.pop(edx)?;
    a.pop(ecx)?;
    a.mov(ax, SUCCESS as u32)?;
    a.ret()?;

    a.set_label(&mut failed)?;
    a.mov(ax, FAILED as u32)?;
    a.ret()?;

    // The ports the code uses, then the (empty) list of memory it needs mapped.
    a.set_label(&mut ports)?;
    for port in [INDEX_PORT, DATA_PORT, 0x3C8, 0x3C9, 0xFFFF, 0xFFFF] {
        a.dw(&[port])?;
    }

    let result = a.assemble_options(0, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let mut table = result.inner.code_buffer.clone();
    for (i, label) in [set_window, display_start, palette, ports]
        .iter()
        .enumerate()
    {
        let offset = result.label_ip(label)? as u16;
        table[i * 2..i * 2 + 2].copy_from_slice(&offset.to_le_bytes());
    }
    Ok(table)
}

fn dispi_write(p: &mut dyn Platform, index: u16, v: u16) {
    p.port_write(INDEX_PORT, 2, index as u32);
    p.port_write(DATA_PORT, 2, v as u32);
}

fn dispi_read(p: &mut dyn Platform, index: u16) -> u16 {
    p.port_write(INDEX_PORT, 2, index as u32);
    p.port_read(DATA_PORT, 2) as u16
}

/// Turns the dispi interface off (a VGA mode set does, so the VGA shows again).
pub(crate) fn dispi_disable(p: &mut dyn Platform) {
    dispi_write(p, ENABLE, 0);
}

/// The framebuffer's address: the VGA's BAR 0, read through PCI configuration space.
fn lfb_address(p: &mut dyn Platform) -> u32 {
    p.port_write(0xCF8, 4, 0x8000_0000 | VGA_SLOT << 11 | 0x10);
    let bar = p.port_read(0xCFC, 4);
    match bar & !0xF {
        0 | 0xFFFF_FFF0 => DEFAULT_LFB,
        base => base,
    }
}

/// The mode the dispi registers show, if enabled.
fn current_mode(p: &mut dyn Platform) -> Option<(VbeMode, u16)> {
    let enable = dispi_read(p, ENABLE);
    if enable & ENABLED == 0 {
        return None;
    }
    let (w, h, bpp) = (dispi_read(p, XRES), dispi_read(p, YRES), dispi_read(p, BPP));
    let mode = MODES
        .iter()
        .copied()
        .find(|m| m.width == w && m.height == h && m.bpp as u16 == bpp)?;
    Some((mode, enable))
}

const SUCCESS: u16 = 0x004F;
const FAILED: u16 = 0x014F;

impl Bios {
    /// AH=4Fh.
    pub(crate) fn vbe(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        let es_di = r.lin(ES, r.di());
        let status = match r.al() {
            0x00 => {
                let vbe2 = r.rd32(es_di) == u32::from_le_bytes(*b"VBE2");
                let es = r.cpu.state.seg[ES].selector;
                let block = controller_info(vbe2, es, r.di());
                r.write(es_di, &block);
                SUCCESS
            }
            0x01 => match find_mode(r.cx()) {
                Some(mode) => {
                    let block = mode_info(mode, lfb_address(p));
                    r.write(es_di, &block);
                    SUCCESS
                }
                None => FAILED,
            },
            0x02 => self.vbe_set_mode(r, p),
            0x03 => {
                let number = match current_mode(p) {
                    Some((mode, enable)) => {
                        mode.number | if enable & LFB_ENABLED != 0 { 0x4000 } else { 0 }
                    }
                    None => r.rd8(crate::BDA + 0x49) as u16,
                };
                r.set_bx(number);
                SUCCESS
            }
            0x04 => vbe_state(r, p),
            // Windows are refused in a mode set with the linear framebuffer, as the
            // VBE specification has it (the hardware would bank either way).
            0x05 if dispi_read(p, ENABLE) & LFB_ENABLED != 0 => 0x034F,
            0x05 => match (r.bh(), r.bl()) {
                (0, 0) => {
                    if r.dx() >= MEMORY_64K {
                        FAILED
                    } else {
                        dispi_write(p, BANK, r.dx());
                        SUCCESS
                    }
                }
                (1, 0) => {
                    let bank = dispi_read(p, BANK);
                    r.set_dx(bank);
                    SUCCESS
                }
                _ => FAILED,
            },
            0x06 => scan_line_length(r, p),
            0x07 => match r.bl() {
                0x00 | 0x80 => {
                    dispi_write(p, X_OFFSET, r.cx());
                    dispi_write(p, Y_OFFSET, r.dx());
                    SUCCESS
                }
                0x01 => {
                    r.set_bh(0);
                    let (x, y) = (dispi_read(p, X_OFFSET), dispi_read(p, Y_OFFSET));
                    r.set_cx(x);
                    r.set_dx(y);
                    SUCCESS
                }
                _ => FAILED,
            },
            // DAC width: BL=0 set BH bits (8 or more gives 8, less 6), BL=1 get.
            0x08 => match r.bl() {
                0x00 | 0x01 => {
                    let mut enable = dispi_read(p, ENABLE);
                    if r.bl() == 0 {
                        enable = if r.bh() >= 8 {
                            enable | DAC_8BIT
                        } else {
                            enable & !DAC_8BIT
                        };
                        dispi_write(p, ENABLE, enable | NOCLEARMEM);
                    }
                    r.set_bh(if enable & DAC_8BIT != 0 { 8 } else { 6 });
                    SUCCESS
                }
                _ => FAILED,
            },
            0x09 => palette_data(r, p, es_di),
            0x0A if r.bl() == 0 => {
                let table = pm_interface_table();
                r.cpu.load_seg_real(ES, crate::rom::ROM_SEGMENT);
                r.cpu.state.set_reg16(7, crate::rom::VBE_PM_OFFSET);
                r.set_cx(table.len() as u16);
                SUCCESS
            }
            _ => FAILED,
        };
        r.set_ax(status);
    }

    fn vbe_set_mode(&mut self, r: &mut Regs, p: &mut dyn Platform) -> u16 {
        let bx = r.bx();
        let keep = bx & 0x8000 != 0;
        let number = bx & 0x1FF;
        if number < 0x100 {
            self.set_vga_mode(r, p, number as u8 | if keep { 0x80 } else { 0 });
            return SUCCESS;
        }
        let Some(mode) = find_mode(number) else {
            return FAILED;
        };
        dispi_disable(p);
        dispi_write(p, XRES, mode.width);
        dispi_write(p, YRES, mode.height);
        dispi_write(p, BPP, mode.bpp as u16);
        let mut enable = ENABLED;
        if bx & 0x4000 != 0 {
            enable |= LFB_ENABLED;
        }
        if keep {
            enable |= NOCLEARMEM;
        }
        dispi_write(p, ENABLE, enable);
        if mode.bpp == 8 {
            p.port_write(0x3C6, 1, 0xFF);
            p.port_write(0x3C8, 1, 0);
            for i in 0..=255u8 {
                for c in crate::video::default_palette(i) {
                    p.port_write(0x3C9, 1, c as u32);
                }
            }
        }
        SUCCESS
    }
}

/// AX=4F04h: DL=0 size (in 64-byte blocks) of the states CX selects, 1 save to ES:BX,
/// 2 restore from there. Bits 0-2 are the VGA's (registers, BIOS data, DAC: as INT 10h
/// AH=1Ch keeps them), bit 3 the SVGA state: the dispi registers XRES, YRES, BPP,
/// ENABLE, BANK, VIRT_WIDTH, X and Y offset, as words after the VGA's.
fn vbe_state(r: &mut Regs, p: &mut dyn Platform) -> u16 {
    const SAVED: [u16; 8] = [
        XRES, YRES, BPP, ENABLE, BANK, VIRT_WIDTH, X_OFFSET, Y_OFFSET,
    ];
    let at = r.lin(ES, r.bx());
    let vga_states = r.cx() & 7;
    let svga = r.cx() & 0x08 != 0;
    match r.dl() {
        0x00 => {
            let vga = crate::video::state_bytes(vga_states);
            let bytes = vga + if svga { SAVED.len() as u32 * 2 } else { 0 };
            r.set_bx(bytes.div_ceil(64).max(1) as u16);
            SUCCESS
        }
        0x01 => {
            let at = at + crate::video::save_state(r, p, vga_states, at);
            if svga {
                for (i, &index) in SAVED.iter().enumerate() {
                    let v = dispi_read(p, index);
                    r.wr16(at + 2 * i as u32, v);
                }
            }
            SUCCESS
        }
        0x02 => {
            let at = at + crate::video::restore_state(r, p, vga_states, at);
            if svga {
                dispi_disable(p);
                for (i, &index) in SAVED.iter().enumerate() {
                    let v = r.rd16(at + 2 * i as u32);
                    if index == ENABLE {
                        dispi_write(p, ENABLE, v | NOCLEARMEM);
                    } else {
                        dispi_write(p, index, v);
                    }
                }
            }
            SUCCESS
        }
        _ => FAILED,
    }
}

/// AX=4F06h: BL=0 set the logical line in pixels (CX), 1 get, 2 set in bytes, 3 get
/// the maximum. Answers BX bytes per line, CX pixels per line, DX lines.
fn scan_line_length(r: &mut Regs, p: &mut dyn Platform) -> u16 {
    let bpp = dispi_read(p, BPP).max(8);
    let bytes = (bpp as u32).div_ceil(8);
    match r.bl() {
        0x00 => dispi_write(p, VIRT_WIDTH, r.cx()),
        0x02 => dispi_write(p, VIRT_WIDTH, (r.cx() as u32 / bytes) as u16),
        0x01 => {}
        0x03 => {
            let pixels = (MEMORY_BYTES / bytes / dispi_read(p, YRES).max(1) as u32).min(0x7FFF);
            r.set_bx((pixels * bytes).min(0xFFFF) as u16);
            r.set_cx(pixels as u16);
            r.set_dx(dispi_read(p, YRES));
            return SUCCESS;
        }
        _ => return FAILED,
    }
    let width = dispi_read(p, VIRT_WIDTH) as u32;
    r.set_bx((width * bytes).min(0xFFFF) as u16);
    r.set_cx(width as u16);
    let lines = dispi_read(p, VIRT_HEIGHT);
    r.set_dx(lines);
    SUCCESS
}

/// AX=4F09h: BL=0/80h set, 1 get CX palette entries from DX, at ES:DI as (blue, green,
/// red, 0) with 6-bit components.
fn palette_data(r: &mut Regs, p: &mut dyn Platform, es_di: u32) -> u16 {
    let first = r.dx() as u32;
    if first > 255 {
        return FAILED;
    }
    let count = (r.cx() as u32).min(256 - first);
    match r.bl() {
        0x00 | 0x80 => {
            p.port_write(0x3C8, 1, first);
            for i in 0..count {
                let at = es_di + 4 * i;
                for c in [r.rd8(at + 2), r.rd8(at + 1), r.rd8(at)] {
                    // The DAC keeps as many bits as its width (4F08h).
                    p.port_write(0x3C9, 1, c as u32);
                }
            }
            SUCCESS
        }
        0x01 => {
            p.port_write(0x3C7, 1, first);
            for i in 0..count {
                let at = es_di + 4 * i;
                let rgb: Vec<u8> = (0..3).map(|_| p.port_read(0x3C9, 1) as u8).collect();
                r.write(at, &[rgb[2], rgb[1], rgb[0], 0]);
            }
            SUCCESS
        }
        _ => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_mode_table_layout() {
        let t = pm_interface_table();
        let word = |at: usize| u16::from_le_bytes([t[at], t[at + 1]]);
        // Three code offsets past the 8-byte header, each starting with real code.
        for i in 0..3 {
            let offset = word(i * 2) as usize;
            assert!((8..t.len()).contains(&offset), "entry {i}: {offset}");
        }
        // The port list, then an empty memory list (Linux's vesafb refuses the interface
        // if it asks for memory).
        let ports: Vec<u16> = (0..6).map(|i| word(word(6) as usize + i * 2)).collect();
        assert_eq!(ports, [0x1CE, 0x1CF, 0x3C8, 0x3C9, 0xFFFF, 0xFFFF]);
        assert_eq!(word(6) as usize + 12, t.len());
        // It fits below the ROM's code.
        assert!(crate::rom::VBE_PM_OFFSET as usize + t.len() < 0xE000);
    }

    #[test]
    fn controller_info_block() {
        for vbe2 in [false, true] {
            let b = controller_info(vbe2, 0x1000, 0x0200);
            assert_eq!(b.len(), if vbe2 { 512 } else { 256 });
            assert_eq!(&b[0..4], b"VESA");
            assert_eq!(u16::from_le_bytes([b[4], b[5]]), 0x0200);
            assert_eq!(u16::from_le_bytes([b[18], b[19]]), 256, "16 MiB");
            let ptr = u32::from_le_bytes(b[14..18].try_into().unwrap());
            assert_eq!(ptr >> 16, 0x1000);
            let list_at = (ptr & 0xFFFF) as usize - 0x200;
            let list: Vec<u16> = b[list_at..]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&m| m != 0xFFFF)
                .collect();
            assert_eq!(list.len(), MODES.len(), "terminated by FFFFh");
            assert!(list.contains(&0x118) && list.contains(&0x144) && list.contains(&0x101));
            let oem = u32::from_le_bytes(b[6..10].try_into().unwrap());
            let oem_at = (oem & 0xFFFF) as usize - 0x200;
            assert_eq!(&b[oem_at..oem_at + OEM_STRING.len()], OEM_STRING);
            if vbe2 {
                assert!(oem_at >= 0x100, "strings in the OEM data area");
                let product = u32::from_le_bytes(b[26..30].try_into().unwrap());
                let at = (product & 0xFFFF) as usize - 0x200;
                assert_eq!(&b[at..at + PRODUCT_NAME.len()], PRODUCT_NAME);
            }
        }
    }

    #[test]
    fn mode_info_blocks() {
        let mode = find_mode(0x4118).unwrap();
        assert_eq!((mode.width, mode.height, mode.bpp), (1024, 768, 24));
        let b = mode_info(mode, 0xE000_0000);
        let w = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        assert_eq!(w(0) & 0x99, 0x99, "supported, colour, graphics, LFB");
        assert_eq!(w(16), 3072);
        assert_eq!((w(18), w(20), b[25], b[27]), (1024, 768, 24, 6));
        assert_eq!(&b[31..37], &[8, 16, 8, 8, 8, 0]);
        assert_eq!(
            u32::from_le_bytes(b[40..44].try_into().unwrap()),
            0xE000_0000
        );
        let b = mode_info(find_mode(0x111).unwrap(), 0xE000_0000);
        assert_eq!(&b[31..37], &[5, 11, 6, 5, 5, 0]);
        assert_eq!(u16::from_le_bytes([b[16], b[17]]), 1280);
        let b = mode_info(find_mode(0x142).unwrap(), 0);
        assert_eq!((b[25], &b[31..39]), (32, &[8, 16, 8, 8, 8, 0, 8, 24][..]));
        let b = mode_info(find_mode(0x101).unwrap(), 0);
        assert_eq!((b[25], b[27]), (8, 4), "packed pixel");
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 0xA000);
        assert!(find_mode(0x102).is_none());
        assert!(MODES
            .iter()
            .all(|m| m.bytes_per_line() * m.height as u32 <= MEMORY_BYTES));
    }
}
