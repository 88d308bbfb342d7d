//! INT 10h: video services for the VGA's colour text modes (80x25 and 40x25, and 80x50
//! or 40x50 after AX=1112h loads the 8x8 font), its
//! graphics modes 0Dh, 0Eh, 10h, 12h (16-colour planar) and 13h (256 colours,
//! chain-4), and the VBE functions (AH=4Fh, [`crate::vbe`]) over the Bochs dispi
//! interface.
//!
//! A text mode set programs the VGA registers and loads the 8x16 font into plane 2, as
//! a VGA BIOS does; characters then go through the VGA's memory window at B8000h, and
//! the cursor is kept in the BDA and programmed into the CRTC. A graphics mode set
//! programs the registers of that mode (the standard IBM VGA values) and the default
//! palette; AH=0Ch/0Dh write and read pixels. AH=1Ch saves and restores the video
//! state (registers, BIOS data, DAC). Text output (AH=09h/0Eh) is not drawn in
//! graphics modes. Other mode numbers give 80x25 text.

use crate::{Bios, Platform, Regs, BDA};

pub(crate) const TEXT_BUFFER: u32 = 0xB_8000;
const FONT_WINDOW: u32 = 0xA_0000;
/// Text rows with the 8x16 font (the 400 scan lines of a text mode / 16).
const ROWS: u16 = 25;
const CHAR_HEIGHT: u8 = 16;
/// Scan lines a text mode shows: rows = this / character height.
const TEXT_SCAN_LINES: u16 = 400;
/// Bytes per text page (80x25 cells rounded up to 4 KiB, as VGA BIOSes lay them out).
const PAGE_SIZE: u16 = 0x1000;
const CRTC_INDEX: u16 = 0x3D4;
const DEFAULT_ATTR: u8 = 0x07;

// BDA fields (offsets from 0x400).
const MODE: u32 = BDA + 0x49;
const COLS: u32 = BDA + 0x4A;
const PAGE_BYTES: u32 = BDA + 0x4C;
const PAGE_START: u32 = BDA + 0x4E;
const CURSOR_POS: u32 = BDA + 0x50;
const CURSOR_SHAPE: u32 = BDA + 0x60;
const ACTIVE_PAGE: u32 = BDA + 0x62;
const CRTC_PORT: u32 = BDA + 0x63;
const MODE_CONTROL: u32 = BDA + 0x65;
const ROWS_MINUS_ONE: u32 = BDA + 0x84;
const BDA_CHAR_HEIGHT: u32 = BDA + 0x85;
const VIDEO_CONTROL: u32 = BDA + 0x87;
const VIDEO_SWITCHES: u32 = BDA + 0x88;
const VGA_FLAGS: u32 = BDA + 0x89;

use crate::rom::{FONT_8X16_OFFSET, FONT_8X8_OFFSET};

/// The register values of a colour text mode.
struct TextMode {
    columns: u16,
    misc: u8,
    seq: [u8; 4],
    crtc: [u8; 25],
}

/// Mode 3: 80x25, 9x16 cells, 720x400 at 70 Hz.
const MODE_80X25: TextMode = TextMode {
    columns: 80,
    misc: 0x67,
    seq: [0x00, 0x03, 0x00, 0x02],
    crtc: [
        0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00,
        0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF,
    ],
};

/// Mode 1: 40x25, the same timing with a halved dot clock.
const MODE_40X25: TextMode = TextMode {
    columns: 40,
    misc: 0x67,
    seq: [0x08, 0x03, 0x00, 0x02],
    crtc: [
        0x2D, 0x27, 0x28, 0x90, 0x2B, 0xA0, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00,
        0x00, 0x9C, 0x8E, 0x8F, 0x14, 0x1F, 0x96, 0xB9, 0xA3, 0xFF,
    ],
};

/// Graphics controller in text mode: odd/even, B8000h window.
const TEXT_GC: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF];
/// Attribute controller: the EGA palette, line graphics and blink on.
const TEXT_ATTR: [u8; 21] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
    0x0C, 0x00, 0x0F, 0x08, 0x00,
];

/// The register values of a VGA graphics mode.
struct GraphicsMode {
    number: u8,
    columns: u16,
    rows: u8,
    char_height: u8,
    page_size: u16,
    misc: u8,
    seq: [u8; 4],
    crtc: [u8; 25],
    gc: [u8; 9],
    /// The 16 palette registers; the mode control register is 01h (41h for 256 colours).
    palette: [u8; 16],
}

const EGA_PALETTE: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
];
/// The palette of the 200-line 16-colour modes (CGA colours on a 200-line monitor).
const CGA_PALETTE: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
];
const IDENTITY_PALETTE: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
];
const PLANAR_GC: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0F, 0xFF];

const GRAPHICS_MODES: [GraphicsMode; 5] = [
    // 320x200, 16 colours: halved dot clock, scan doubled.
    GraphicsMode {
        number: 0x0D,
        columns: 40,
        rows: 25,
        char_height: 8,
        page_size: 0x2000,
        misc: 0x63,
        seq: [0x09, 0x0F, 0x00, 0x06],
        crtc: [
            0x2D, 0x27, 0x28, 0x90, 0x2B, 0x80, 0xBF, 0x1F, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x14, 0x00, 0x96, 0xB9, 0xE3, 0xFF,
        ],
        gc: PLANAR_GC,
        palette: CGA_PALETTE,
    },
    // 640x200, 16 colours, scan doubled.
    GraphicsMode {
        number: 0x0E,
        columns: 80,
        rows: 25,
        char_height: 8,
        page_size: 0x4000,
        misc: 0x63,
        seq: [0x01, 0x0F, 0x00, 0x06],
        crtc: [
            0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0xBF, 0x1F, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x00, 0x96, 0xB9, 0xE3, 0xFF,
        ],
        gc: PLANAR_GC,
        palette: CGA_PALETTE,
    },
    // 640x350, 16 colours.
    GraphicsMode {
        number: 0x10,
        columns: 80,
        rows: 25,
        char_height: 14,
        page_size: 0x8000,
        misc: 0xA3,
        seq: [0x01, 0x0F, 0x00, 0x06],
        crtc: [
            0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0xBF, 0x1F, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x83, 0x85, 0x5D, 0x28, 0x0F, 0x63, 0xBA, 0xE3, 0xFF,
        ],
        gc: PLANAR_GC,
        palette: EGA_PALETTE,
    },
    // 640x480, 16 colours, 60 Hz.
    GraphicsMode {
        number: 0x12,
        columns: 80,
        rows: 30,
        char_height: 16,
        page_size: 0xA000,
        misc: 0xE3,
        seq: [0x01, 0x0F, 0x00, 0x06],
        crtc: [
            0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0x0B, 0x3E, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0xEA, 0x8C, 0xDF, 0x28, 0x00, 0xE7, 0x04, 0xE3, 0xFF,
        ],
        gc: PLANAR_GC,
        palette: EGA_PALETTE,
    },
    // 320x200, 256 colours: chain-4, doubleword addressing, each line shown twice.
    GraphicsMode {
        number: 0x13,
        columns: 40,
        rows: 25,
        char_height: 8,
        page_size: 0xFA00,
        misc: 0x63,
        seq: [0x01, 0x0F, 0x00, 0x0E],
        crtc: [
            0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0xBF, 0x1F, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x40, 0x96, 0xB9, 0xA3, 0xFF,
        ],
        gc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0F, 0xFF],
        palette: IDENTITY_PALETTE,
    },
];

fn graphics_mode(number: u8) -> Option<&'static GraphicsMode> {
    GRAPHICS_MODES.iter().find(|m| m.number == number)
}

/// The VGA's default 256-colour palette (6-bit): the 16 CGA colours, 16 greys, then
/// hue circles of 24 colours at three saturations and three intensities, then black.
pub(crate) fn default_palette(i: u8) -> [u8; 3] {
    const GREYS: [u8; 16] = [
        0x00, 0x05, 0x08, 0x0B, 0x0E, 0x11, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x28, 0x2D, 0x32, 0x38,
        0x3F,
    ];
    // Per intensity, per saturation: the five levels a hue circle steps through.
    const LEVELS: [[[u8; 5]; 3]; 3] = [
        [
            [0x00, 0x10, 0x1F, 0x2F, 0x3F],
            [0x1F, 0x27, 0x2F, 0x37, 0x3F],
            [0x2D, 0x31, 0x36, 0x3A, 0x3F],
        ],
        [
            [0x00, 0x07, 0x0E, 0x15, 0x1C],
            [0x0E, 0x11, 0x15, 0x18, 0x1C],
            [0x14, 0x16, 0x18, 0x1A, 0x1C],
        ],
        [
            [0x00, 0x04, 0x08, 0x0C, 0x10],
            [0x08, 0x0A, 0x0C, 0x0E, 0x10],
            [0x0B, 0x0C, 0x0D, 0x0F, 0x10],
        ],
    ];
    match i {
        0..=15 => {
            let c = |bit: u8| if i & bit != 0 { 0x2A } else { 0 };
            let bright = if i & 8 != 0 { 0x15 } else { 0 };
            let mut rgb = [c(4) + bright, c(2) + bright, c(1) + bright];
            if i == 6 {
                rgb[1] = 0x15; // brown, not dark yellow
            }
            rgb
        }
        16..=31 => [GREYS[i as usize - 16]; 3],
        32..=247 => {
            let n = i as usize - 32;
            let l = LEVELS[n / 72][n / 24 % 3];
            let step = n % 24;
            // Around the circle: blue, magenta, red, yellow, green, cyan; each sixth a
            // rise or fall of one component through the levels.
            let up = |k: usize| l[k];
            let down = |k: usize| l[4 - k];
            let (hi, lo) = (l[4], l[0]);
            let k = step % 4;
            match step / 4 {
                0 => [up(k), lo, hi],
                1 => [hi, lo, down(k)],
                2 => [hi, up(k), lo],
                3 => [down(k), hi, lo],
                4 => [lo, hi, up(k)],
                _ => [lo, down(k), hi],
            }
        }
        _ => [0, 0, 0],
    }
}

/// The 64 EGA colours as 6-bit DAC values: each of red, green, blue has a strong bit
/// (2Ah) and a weak bit (15h), in the rgbRGB order of the EGA palette registers.
fn ega_colour(i: u8) -> [u8; 3] {
    let c = |strong: u8, weak: u8| {
        (if i & strong != 0 { 0x2A } else { 0 }) + (if i & weak != 0 { 0x15 } else { 0 })
    };
    [c(4, 0x20), c(2, 0x10), c(1, 0x08)]
}

pub(crate) fn vram_read(p: &mut dyn Platform, addr: u32) -> u8 {
    p.mmio_read8(addr)
}

fn vram_write(p: &mut dyn Platform, addr: u32, v: u8) {
    p.mmio_write8(addr, v)
}

fn seq_write(p: &mut dyn Platform, index: u8, v: u8) {
    p.port_write(0x3C4, 1, index as u32);
    p.port_write(0x3C5, 1, v as u32);
}

fn gc_write(p: &mut dyn Platform, index: u8, v: u8) {
    p.port_write(0x3CE, 1, index as u32);
    p.port_write(0x3CF, 1, v as u32);
}

fn crtc_write(p: &mut dyn Platform, index: u8, v: u8) {
    p.port_write(CRTC_INDEX, 1, index as u32);
    p.port_write(CRTC_INDEX + 1, 1, v as u32);
}

/// Writes attribute controller registers, leaving the display on (palette address
/// source set) afterwards.
fn attr_write(p: &mut dyn Platform, index: u8, v: u8) {
    p.port_read(0x3DA, 1); // reset the index/data flip-flop
    p.port_write(0x3C0, 1, index as u32);
    p.port_write(0x3C0, 1, v as u32);
    p.port_write(0x3C0, 1, 0x20);
}

fn attr_read(p: &mut dyn Platform, index: u8) -> u8 {
    p.port_read(0x3DA, 1);
    p.port_write(0x3C0, 1, index as u32);
    let v = p.port_read(0x3C1, 1) as u8;
    p.port_read(0x3DA, 1);
    p.port_write(0x3C0, 1, 0x20);
    v
}

/// Loads `count` glyphs of `height` scan lines from `glyphs` into font block `block`
/// of plane 2, starting at character `first` (each glyph has a 32-byte slot).
fn load_font(p: &mut dyn Platform, glyphs: &[u8], height: usize, first: u16, block: u8) {
    // Plane 2 alone, sequential addressing, A0000h window.
    seq_write(p, 2, 0x04);
    seq_write(p, 4, 0x07);
    gc_write(p, 4, 0x02);
    gc_write(p, 5, 0x00);
    gc_write(p, 6, 0x04);
    let base = FONT_WINDOW + (block as u32 & 3) * 0x4000 + (block as u32 >> 2 & 1) * 0x2000;
    for (i, glyph) in glyphs.chunks(height.max(1)).enumerate() {
        let ch = first as u32 + i as u32;
        if ch > 255 {
            break;
        }
        for line in 0..32 {
            let v = glyph.get(line).copied().unwrap_or(0);
            vram_write(p, base + ch * 32 + line as u32, v);
        }
    }
    // Back to odd/even text addressing.
    seq_write(p, 2, 0x03);
    seq_write(p, 4, 0x02);
    gc_write(p, 4, 0x00);
    gc_write(p, 5, 0x10);
    gc_write(p, 6, 0x0E);
}

impl Bios {
    /// Sets mode 3 and clears the screen (POST).
    pub(crate) fn video_init(&self, r: &mut Regs, p: &mut dyn Platform) {
        self.set_text_mode(r, p, 3, true);
    }

    /// Programs the VGA for a graphics mode, sets the default palette, clears display
    /// memory when asked and resets the BDA's video state.
    fn set_graphics_mode(r: &mut Regs, p: &mut dyn Platform, m: &GraphicsMode, clear: bool) {
        crate::vbe::dispi_disable(p);
        seq_write(p, 0, 0x01);
        seq_write(p, 1, m.seq[0] | 0x20);
        p.port_write(0x3C2, 1, m.misc as u32);
        for (i, &v) in m.seq.iter().enumerate().skip(1) {
            seq_write(p, i as u8 + 1, v);
        }
        seq_write(p, 0, 0x03);
        crtc_write(p, 0x11, 0x00);
        for (i, &v) in m.crtc.iter().enumerate() {
            crtc_write(p, i as u8, v);
        }
        for (i, &v) in m.gc.iter().enumerate() {
            gc_write(p, i as u8, v);
        }
        p.port_read(0x3DA, 1);
        let mode_control = if m.number == 0x13 { 0x41 } else { 0x01 };
        let attrs = m
            .palette
            .iter()
            .copied()
            .chain([mode_control, 0x00, 0x0F, 0x00, 0x00]);
        for (i, v) in attrs.enumerate() {
            p.port_write(0x3C0, 1, i as u32);
            p.port_write(0x3C0, 1, v as u32);
        }
        p.port_write(0x3C6, 1, 0xFF);
        p.port_write(0x3C8, 1, 0);
        for i in 0..=255u8 {
            let rgb = if m.number == 0x13 {
                default_palette(i)
            } else {
                ega_colour(i & 0x3F)
            };
            for c in rgb {
                p.port_write(0x3C9, 1, c as u32);
            }
        }
        if clear {
            // Write mode 0 with every plane enabled (chain-4 reaches all four too).
            seq_write(p, 2, 0x0F);
            for i in 0..0x1_0000 {
                vram_write(p, FONT_WINDOW + i, 0);
            }
            seq_write(p, 2, m.seq[1]);
        }
        seq_write(p, 1, m.seq[0]);
        p.port_read(0x3DA, 1);
        p.port_write(0x3C0, 1, 0x20);

        r.wr8(MODE, m.number);
        r.wr16(COLS, m.columns);
        r.wr16(PAGE_BYTES, m.page_size);
        r.wr16(PAGE_START, 0);
        for page in 0..8 {
            r.wr16(CURSOR_POS + page * 2, 0);
        }
        r.wr8(ACTIVE_PAGE, 0);
        r.wr16(CRTC_PORT, CRTC_INDEX);
        r.wr8(MODE_CONTROL, 0x29);
        r.wr8(ROWS_MINUS_ONE, m.rows - 1);
        r.wr16(BDA_CHAR_HEIGHT, m.char_height as u16);
        r.wr8(VIDEO_CONTROL, if clear { 0x60 } else { 0xE0 });
        r.wr8(VIDEO_SWITCHES, 0xF9);
        r.wr8(VGA_FLAGS, 0x51);
    }

    /// AH=00h: sets a VGA mode (AL bit 7: keep display memory). Unknown numbers give
    /// 80x25 text.
    pub(crate) fn set_vga_mode(&self, r: &mut Regs, p: &mut dyn Platform, al: u8) {
        let mode = al & 0x7F;
        let clear = al & 0x80 == 0;
        if let Some(m) = graphics_mode(mode) {
            Self::set_graphics_mode(r, p, m, clear);
            r.set_al(0x20);
            return;
        }
        let text_mode = if matches!(mode, 0..=3) { mode } else { 3 };
        self.set_text_mode(r, p, text_mode, clear);
        r.set_al(if text_mode == 3 { 0x30 } else { 0x20 });
    }

    /// Programs the VGA for a text mode, loads the font and resets the BDA's video state.
    fn set_text_mode(&self, r: &mut Regs, p: &mut dyn Platform, mode: u8, clear: bool) {
        crate::vbe::dispi_disable(p);
        let regs = if mode <= 1 { &MODE_40X25 } else { &MODE_80X25 };
        // Screen off while the registers change.
        seq_write(p, 0, 0x01);
        seq_write(p, 1, regs.seq[0] | 0x20);
        p.port_write(0x3C2, 1, regs.misc as u32);
        for (i, &v) in regs.seq.iter().enumerate().skip(1) {
            seq_write(p, i as u8 + 1, v);
        }
        seq_write(p, 0, 0x03);
        crtc_write(p, 0x11, 0x00); // unprotect CR00-07
        for (i, &v) in regs.crtc.iter().enumerate() {
            crtc_write(p, i as u8, v);
        }
        for (i, &v) in TEXT_GC.iter().enumerate() {
            gc_write(p, i as u8, v);
        }
        p.port_read(0x3DA, 1);
        for (i, &v) in TEXT_ATTR.iter().enumerate() {
            p.port_write(0x3C0, 1, i as u32);
            p.port_write(0x3C0, 1, v as u32);
        }
        p.port_write(0x3C6, 1, 0xFF);
        p.port_write(0x3C8, 1, 0);
        for i in 0..=255u8 {
            for c in ega_colour(i & 0x3F) {
                p.port_write(0x3C9, 1, c as u32);
            }
        }
        load_font(p, &self.font_8x16, CHAR_HEIGHT as usize, 0, 0);
        if clear {
            for i in 0..(0x8000 / 2) {
                vram_write(p, TEXT_BUFFER + i * 2, b' ');
                vram_write(p, TEXT_BUFFER + i * 2 + 1, DEFAULT_ATTR);
            }
        }
        seq_write(p, 1, regs.seq[0]); // screen on
        p.port_read(0x3DA, 1);
        p.port_write(0x3C0, 1, 0x20);

        r.wr8(MODE, mode);
        r.wr16(COLS, regs.columns);
        r.wr16(
            PAGE_BYTES,
            if regs.columns == 40 { 0x800 } else { PAGE_SIZE },
        );
        r.wr16(PAGE_START, 0);
        for page in 0..8 {
            r.wr16(CURSOR_POS + page * 2, 0);
        }
        r.wr16(CURSOR_SHAPE, 0x0607);
        r.wr8(ACTIVE_PAGE, 0);
        r.wr16(CRTC_PORT, CRTC_INDEX);
        r.wr8(MODE_CONTROL, 0x29);
        r.wr8(ROWS_MINUS_ONE, (ROWS - 1) as u8);
        r.wr16(BDA_CHAR_HEIGHT, CHAR_HEIGHT as u16);
        r.wr8(VIDEO_CONTROL, if clear { 0x60 } else { 0xE0 });
        r.wr8(VIDEO_SWITCHES, 0xF9);
        r.wr8(VGA_FLAGS, 0x51);
        set_cursor_shape(r, p, 0x0607);
        update_cursor(r, p, 0);
    }

    pub(crate) fn int10(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        match r.ah() {
            0x00 => self.set_vga_mode(r, p, r.al()),
            0x01 => {
                r.wr16(CURSOR_SHAPE, r.cx());
                set_cursor_shape(r, p, r.cx());
            }
            0x02 => {
                let page = (r.bh() & 7) as u32;
                r.wr8(CURSOR_POS + page * 2, r.dl());
                r.wr8(CURSOR_POS + page * 2 + 1, r.dh());
                if page == r.rd8(ACTIVE_PAGE) as u32 {
                    update_cursor(r, p, page);
                }
            }
            0x03 => {
                let page = (r.bh() & 7) as u32;
                let shape = r.rd16(CURSOR_SHAPE);
                let pos = r.rd16(CURSOR_POS + page * 2);
                r.set_cx(shape);
                r.set_dl(pos as u8);
                r.set_dh((pos >> 8) as u8);
            }
            0x05 => {
                let page = r.al() & 7;
                let start = page as u16 * r.rd16(PAGE_BYTES);
                r.wr8(ACTIVE_PAGE, page);
                r.wr16(PAGE_START, start);
                crtc_write(p, 0x0C, ((start / 2) >> 8) as u8);
                crtc_write(p, 0x0D, (start / 2) as u8);
                update_cursor(r, p, page as u32);
            }
            0x06 | 0x07 => {
                let (top, left, bottom, right) = (r.ch(), r.cl(), r.dh(), r.dl());
                let page = r.rd8(ACTIVE_PAGE) as u32;
                let window = Window {
                    top,
                    left,
                    bottom,
                    right,
                };
                scroll_page(r, p, page, r.ah() == 0x06, r.al(), r.bh(), window);
            }
            0x08 => {
                let page = (r.bh() & 7) as u32;
                let (col, row) = cursor(r, page);
                let at = cell(r, page, row, col);
                let (ch, attr) = (vram_read(p, at), vram_read(p, at + 1));
                r.set_al(ch);
                r.set_ah(attr);
            }
            0x09 | 0x0A => {
                let page = (r.bh() & 7) as u32;
                let (col, row) = cursor(r, page);
                let columns = columns(r) as u32;
                let start = row as u32 * columns + col as u32;
                let end = (start + r.cx() as u32).min(columns * rows(r) as u32);
                let base = page_base(r, page);
                for i in start..end {
                    let at = base + i * 2;
                    vram_write(p, at, r.al());
                    if r.ah() == 0x09 {
                        vram_write(p, at + 1, r.bl());
                    }
                }
            }
            0x0C => {
                if let Some(m) = graphics_mode(r.rd8(MODE)) {
                    write_pixel(r, p, m, r.cx(), r.dx(), r.al());
                }
            }
            0x0D => {
                if let Some(m) = graphics_mode(r.rd8(MODE)) {
                    let v = read_pixel(r, p, m, r.cx(), r.dx());
                    r.set_al(v);
                }
            }
            0x0E => {
                let page = r.rd8(ACTIVE_PAGE) as u32;
                teletype(r, p, page, r.al(), None);
            }
            0x0F => {
                r.set_al(r.rd8(MODE));
                r.set_ah(columns(r) as u8);
                r.set_bh(r.rd8(ACTIVE_PAGE));
            }
            0x10 => palette(r, p),
            0x11 => self.font_service(r, p),
            0x12 if r.bl() == 0x10 => {
                // EGA/VGA information: colour, 256 KiB.
                r.set_bh(0);
                r.set_bl(3);
                r.set_cx(0);
            }
            0x13 => {
                // Write string ES:BP, CX chars, at DH,DL; AL bit 0 moves the cursor, bit 1
                // means the string holds (char, attr) pairs.
                let page = (r.bh() & 7) as u32;
                let saved = cursor(r, page);
                r.wr8(CURSOR_POS + page * 2, r.dl());
                r.wr8(CURSOR_POS + page * 2 + 1, r.dh());
                let bp = r.cpu.state.reg16(5);
                let mode = r.al();
                let mut off = bp;
                for _ in 0..r.cx() {
                    let ch = r.rd8(r.lin(hospes_cpu::state::ES, off));
                    off = off.wrapping_add(1);
                    let attr = if mode & 2 != 0 {
                        let a = r.rd8(r.lin(hospes_cpu::state::ES, off));
                        off = off.wrapping_add(1);
                        a
                    } else {
                        r.bl()
                    };
                    teletype(r, p, page, ch, Some(attr));
                }
                if mode & 1 == 0 {
                    r.wr8(CURSOR_POS + page * 2, saved.0);
                    r.wr8(CURSOR_POS + page * 2 + 1, saved.1);
                    update_cursor(r, p, page);
                }
            }
            0x1C => {
                let at = r.lin(hospes_cpu::state::ES, r.bx());
                let states = r.cx();
                match r.al() {
                    0x00 => r.set_bx(state_bytes(states).div_ceil(64) as u16),
                    0x01 => {
                        save_state(r, p, states, at);
                    }
                    0x02 => {
                        restore_state(r, p, states, at);
                    }
                    _ => return,
                }
                r.set_al(0x1C);
            }
            0x1A if r.al() == 0x00 => {
                // Display combination: VGA with colour analog display.
                r.set_al(0x1A);
                r.set_bl(0x08);
                r.set_bh(0x00);
            }
            0x4F => self.vbe(r, p),
            _ => {}
        }
    }

    /// AH=11h: character generator. Loading the ROM font or a user font, and font
    /// information (AL=30h).
    fn font_service(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        match r.al() {
            // User font from ES:BP: CX glyphs of BH bytes from character DX, block BL.
            0x00 | 0x10 => {
                let height = (r.bh() as usize).clamp(1, 32);
                let count = r.cx() as usize;
                let mut glyphs = vec![0u8; (count * height).min(256 * 32)];
                let src = r.lin(hospes_cpu::state::ES, r.cpu.state.reg16(5));
                r.read(src, &mut glyphs);
                load_font(p, &glyphs, height, r.dx(), r.bl());
            }
            // The ROM 8x16 font (8x14 requests get it too) into block BL.
            0x01 | 0x04 => load_font(p, &self.font_8x16, CHAR_HEIGHT as usize, 0, r.bl()),
            // The ROM 8x8 font into block BL.
            0x02 => load_font(p, &crate::font::font_8x8(), 8, 0, r.bl()),
            // The same, then the mode is recalculated for the new character height:
            // 400 scan lines / 8 = 50 rows (AX=1112h, how DOS's MODE CON LINES=50 gets
            // 80x50), or back to 25.
            0x11 | 0x14 | 0x12 => {
                let height = if r.al() == 0x12 { 8 } else { CHAR_HEIGHT };
                if height == 8 {
                    load_font(p, &crate::font::font_8x8(), 8, 0, r.bl());
                } else {
                    load_font(p, &self.font_8x16, CHAR_HEIGHT as usize, 0, r.bl());
                }
                set_char_height(r, p, height);
            }
            0x03 => seq_write(p, 3, r.bl()),
            0x30 => {
                // Font information: pointer in ES:BP for the font BH asks for, CX =
                // scan lines per character, DL = rows - 1.
                let offset = match r.bh() {
                    0 => r.rd16(0x1F * 4) as u32 | (r.rd16(0x1F * 4 + 2) as u32) << 16,
                    1 => r.rd16(0x43 * 4) as u32 | (r.rd16(0x43 * 4 + 2) as u32) << 16,
                    3 => 0xF000_0000 | FONT_8X8_OFFSET as u32,
                    4 => 0xF000_0000 | (FONT_8X8_OFFSET as u32 + 0x400),
                    _ => 0xF000_0000 | FONT_8X16_OFFSET as u32,
                };
                r.cpu
                    .load_seg_real(hospes_cpu::state::ES, (offset >> 16) as u16);
                r.cpu.state.set_reg16(5, offset as u16);
                r.set_cx(r.rd16(BDA_CHAR_HEIGHT));
                r.set_dl(r.rd8(ROWS_MINUS_ONE));
            }
            _ => {}
        }
    }
}

/// Reprograms a text mode for characters `height` scan lines tall: the CRTC's maximum
/// scan line, the cursor (an underline), and the BDA's rows,
/// character height and page size.
fn set_char_height(r: &mut Regs, p: &mut dyn Platform, height: u8) {
    p.port_write(CRTC_INDEX, 1, 0x09);
    let max_scan = p.port_read(CRTC_INDEX + 1, 1) as u8;
    p.port_write(CRTC_INDEX + 1, 1, ((max_scan & 0xE0) | (height - 1)) as u32);
    let rows = TEXT_SCAN_LINES / height as u16;
    r.wr8(ROWS_MINUS_ONE, (rows - 1) as u8);
    r.wr16(BDA_CHAR_HEIGHT, height as u16);
    let bytes = rows * columns(r) * 2;
    r.wr16(PAGE_BYTES, bytes.next_multiple_of(0x100));
    // The BDA keeps the CGA-style shape; set_cursor_shape fits it to the cell.
    r.wr16(CURSOR_SHAPE, 0x0607);
    set_cursor_shape(r, p, 0x0607);
    let page = r.rd8(ACTIVE_PAGE) as u32;
    update_cursor(r, p, page);
}

/// The VGA registers one state save keeps: misc output, sequencer, CRTC, graphics
/// controller, attribute controller (with each index register).
const HARDWARE_STATE: u32 = 1 + 1 + 5 + 1 + 25 + 1 + 9 + 1 + 21;
/// The BDA's video fields: 49h-66h and 84h-8Ah.
const BDA_VIDEO: [std::ops::Range<u32>; 2] = [0x49..0x67, 0x84..0x8B];
/// The DAC: the pixel mask, the write index, then 256 x 3 colour values.
const DAC_STATE: u32 = 2 + 256 * 3;

/// Bytes each state of a save takes, in the order they are stored, for the states `cx`
/// selects (bit 0 the VGA registers, bit 1 the BIOS data, bit 2 the DAC; 0 if not).
fn state_parts(cx: u16) -> [u32; 3] {
    let bda: u32 = BDA_VIDEO.iter().map(|r| r.len() as u32).sum();
    let sizes = [HARDWARE_STATE, bda, DAC_STATE];
    std::array::from_fn(|i| if cx & 1 << i != 0 { sizes[i] } else { 0 })
}

/// Bytes a state save takes for the states `cx` selects.
pub(crate) fn state_bytes(cx: u16) -> u32 {
    state_parts(cx).iter().sum()
}

/// AH=1Ch AL=01h: stores the states `cx` selects at linear `at`; returns the bytes
/// written.
pub(crate) fn save_state(r: &mut Regs, p: &mut dyn Platform, cx: u16, at: u32) -> u32 {
    let mut out = Vec::new();
    if cx & 1 != 0 {
        out.push(p.port_read(0x3CC, 1) as u8);
        for (index_port, count) in [(0x3C4u16, 5u8), (CRTC_INDEX, 25), (0x3CE, 9)] {
            let index = p.port_read(index_port, 1) as u8;
            out.push(index);
            for i in 0..count {
                p.port_write(index_port, 1, i as u32);
                out.push(p.port_read(index_port + 1, 1) as u8);
            }
            p.port_write(index_port, 1, index as u32);
        }
        p.port_read(0x3DA, 1);
        let index = p.port_read(0x3C0, 1) as u8;
        out.push(index);
        for i in 0..21 {
            out.push(attr_read(p, i));
        }
        p.port_read(0x3DA, 1);
        p.port_write(0x3C0, 1, index as u32);
    }
    if cx & 2 != 0 {
        for range in BDA_VIDEO {
            for offset in range {
                out.push(r.rd8(BDA + offset));
            }
        }
    }
    if cx & 4 != 0 {
        out.push(p.port_read(0x3C6, 1) as u8);
        out.push(p.port_read(0x3C8, 1) as u8);
        p.port_write(0x3C7, 1, 0);
        for _ in 0..256 * 3 {
            out.push(p.port_read(0x3C9, 1) as u8);
        }
    }
    r.write(at, &out);
    out.len() as u32
}

/// AH=1Ch AL=02h: puts back what [`save_state`] stored at `at`; returns the bytes read.
pub(crate) fn restore_state(r: &mut Regs, p: &mut dyn Platform, cx: u16, at: u32) -> u32 {
    let total = state_bytes(cx);
    let mut saved = vec![0u8; total as usize];
    r.read(at, &mut saved);
    let mut bytes = saved.into_iter();
    let mut next = move || bytes.next().unwrap_or(0);
    if cx & 1 != 0 {
        p.port_write(0x3C2, 1, next() as u32);
        for (index_port, count) in [(0x3C4u16, 5u8), (CRTC_INDEX, 25), (0x3CE, 9)] {
            let index = next();
            if index_port == CRTC_INDEX {
                // Unprotect CR00-07 first; the saved CR11, written after them, sets the
                // protection as it was.
                crtc_write(p, 0x11, 0);
            }
            for i in 0..count {
                p.port_write(index_port, 1, i as u32);
                p.port_write(index_port + 1, 1, next() as u32);
            }
            p.port_write(index_port, 1, index as u32);
        }
        let index = next();
        p.port_read(0x3DA, 1);
        for i in 0..21u8 {
            p.port_write(0x3C0, 1, i as u32);
            p.port_write(0x3C0, 1, next() as u32);
        }
        p.port_write(0x3C0, 1, index as u32);
    }
    if cx & 2 != 0 {
        for range in BDA_VIDEO {
            for offset in range {
                r.wr8(BDA + offset, next());
            }
        }
    }
    if cx & 4 != 0 {
        let mask = next();
        let write_index = next();
        p.port_write(0x3C8, 1, 0);
        for _ in 0..256 * 3 {
            p.port_write(0x3C9, 1, next() as u32);
        }
        p.port_write(0x3C6, 1, mask as u32);
        p.port_write(0x3C8, 1, write_index as u32);
    }
    total
}

/// Where pixel (x, y) of page BH is: the byte address in the A0000h window and, for
/// the planar modes, the bit (80h >> x % 8).
fn pixel_address(r: &Regs, m: &GraphicsMode, x: u16, y: u16) -> (u32, u8) {
    let page = (r.bh() as u32 & 7) * m.page_size as u32;
    if m.number == 0x13 {
        (FONT_WINDOW + (y as u32 * 320 + x as u32) % 0x1_0000, 0xFF)
    } else {
        let at = page + y as u32 * m.columns as u32 + x as u32 / 8;
        (FONT_WINDOW + at % 0x1_0000, 0x80 >> (x % 8))
    }
}

/// AH=0Ch: colour AL at (CX, DX); in the 16-colour modes AL bit 7 XORs it in.
fn write_pixel(r: &mut Regs, p: &mut dyn Platform, m: &GraphicsMode, x: u16, y: u16, colour: u8) {
    let (at, bit) = pixel_address(r, m, x, y);
    if m.number == 0x13 {
        vram_write(p, at, colour);
        return;
    }
    // Write mode 2 through the bit mask, over the latches just loaded.
    gc_write(p, 5, 0x02);
    gc_write(p, 8, bit);
    gc_write(p, 3, if colour & 0x80 != 0 { 0x18 } else { 0x00 });
    vram_read(p, at);
    vram_write(p, at, colour & 0x0F);
    gc_write(p, 3, 0x00);
    gc_write(p, 8, 0xFF);
    gc_write(p, 5, 0x00);
}

/// AH=0Dh: the colour at (CX, DX).
fn read_pixel(r: &mut Regs, p: &mut dyn Platform, m: &GraphicsMode, x: u16, y: u16) -> u8 {
    let (at, bit) = pixel_address(r, m, x, y);
    if m.number == 0x13 {
        return vram_read(p, at);
    }
    let mut colour = 0;
    for plane in 0..4 {
        gc_write(p, 4, plane);
        if vram_read(p, at) & bit != 0 {
            colour |= 1 << plane;
        }
    }
    gc_write(p, 4, 0);
    colour
}

/// AH=10h: the attribute controller's palette and the DAC.
fn palette(r: &mut Regs, p: &mut dyn Platform) {
    match r.al() {
        0x00 => attr_write(p, r.bl() & 0x0F, r.bh()),
        0x01 => attr_write(p, 0x11, r.bh()),
        0x02 | 0x09 => {
            // Set (02h) or read (09h) all 16 palette registers and the overscan at ES:DX.
            let at = r.lin(hospes_cpu::state::ES, r.dx());
            for i in 0..17u32 {
                let index = if i == 16 { 0x11 } else { i as u8 };
                if r.al() == 0x02 {
                    let v = r.rd8(at + i);
                    attr_write(p, index, v);
                } else {
                    let v = attr_read(p, index);
                    r.wr8(at + i, v);
                }
            }
        }
        0x03 => {
            // Blink (BL=1) or bright backgrounds (BL=0).
            let mode = attr_read(p, 0x10);
            let v = if r.bl() & 1 != 0 {
                mode | 0x08
            } else {
                mode & !0x08
            };
            attr_write(p, 0x10, v);
        }
        0x07 => {
            let v = attr_read(p, r.bl() & 0x1F);
            r.set_bh(v);
        }
        0x08 => {
            let v = attr_read(p, 0x11);
            r.set_bh(v);
        }
        0x10 => {
            p.port_write(0x3C8, 1, r.bx() as u32 & 0xFF);
            for c in [r.dh(), r.ch(), r.cl()] {
                p.port_write(0x3C9, 1, c as u32);
            }
        }
        0x12 | 0x17 => {
            // Set (12h) or read (17h) CX DAC entries from BX, at ES:DX.
            let at = r.lin(hospes_cpu::state::ES, r.dx());
            let first = r.bx() as u32 & 0xFF;
            let count = (r.cx() as u32).min(256 - first);
            if r.al() == 0x12 {
                p.port_write(0x3C8, 1, first);
                for i in 0..count * 3 {
                    let v = r.rd8(at + i);
                    p.port_write(0x3C9, 1, v as u32);
                }
            } else {
                p.port_write(0x3C7, 1, first);
                for i in 0..count * 3 {
                    let v = p.port_read(0x3C9, 1) as u8;
                    r.wr8(at + i, v);
                }
            }
        }
        0x15 => {
            p.port_write(0x3C7, 1, r.bx() as u32 & 0xFF);
            let rgb: Vec<u8> = (0..3).map(|_| p.port_read(0x3C9, 1) as u8).collect();
            r.set_dh(rgb[0]);
            r.set_ch(rgb[1]);
            r.set_cl(rgb[2]);
        }
        _ => {}
    }
}

fn columns(r: &Regs) -> u16 {
    r.rd16(COLS).clamp(1, 80)
}

/// Text rows of the current mode, from the BDA (25, or 50 with the 8x8 font).
fn rows(r: &Regs) -> u16 {
    (r.rd8(ROWS_MINUS_ONE) as u16 + 1).clamp(1, TEXT_SCAN_LINES / 8)
}

fn page_base(r: &Regs, page: u32) -> u32 {
    TEXT_BUFFER + (page * r.rd16(PAGE_BYTES) as u32) % 0x8000
}

fn cursor(r: &Regs, page: u32) -> (u8, u8) {
    let pos = r.rd16(CURSOR_POS + page * 2);
    (
        (pos as u8).min(columns(r) as u8 - 1),
        ((pos >> 8) as u8).min(rows(r) as u8 - 1),
    )
}

fn cell(r: &Regs, page: u32, row: u8, col: u8) -> u32 {
    page_base(r, page) + (row as u32 * columns(r) as u32 + col as u32) * 2
}

/// Programs the CRTC cursor location registers from the BDA.
fn update_cursor(r: &mut Regs, p: &mut dyn Platform, page: u32) {
    let (col, row) = cursor(r, page);
    let pos =
        ((page_base(r, page) - TEXT_BUFFER) / 2) as u16 + row as u16 * columns(r) + col as u16;
    crtc_write(p, 0x0E, (pos >> 8) as u8);
    crtc_write(p, 0x0F, pos as u8);
}

/// Programs the CRTC cursor shape. CGA-style shapes (scan lines 0-7) are scaled to a
/// 16-line cell, as VGA BIOSes do with cursor emulation on (an 8-line cell takes them
/// as they are); bit 5 of CH hides it.
fn set_cursor_shape(r: &mut Regs, p: &mut dyn Platform, shape: u16) {
    let (mut start, mut end) = ((shape >> 8) as u8, shape as u8 & 0x1F);
    let hidden = start & 0x20 != 0;
    start &= 0x1F;
    let height = (r.rd16(BDA_CHAR_HEIGHT) as u8).clamp(1, 32);
    if height > 8 && start <= 7 && end <= 7 {
        start = (start * 2 + 1).min(height - 1);
        end = (end * 2).min(height - 1);
    }
    crtc_write(p, 0x0A, start | if hidden { 0x20 } else { 0 });
    crtc_write(p, 0x0B, end);
}

/// Writes one character with teletype semantics (CR, LF, BS, BEL; wrap and scroll).
pub(crate) fn teletype(r: &mut Regs, p: &mut dyn Platform, page: u32, ch: u8, attr: Option<u8>) {
    let (mut col, mut row) = cursor(r, page);
    let cols = columns(r);
    match ch {
        b'\r' => col = 0,
        b'\n' => row += 1,
        0x08 => col = col.saturating_sub(1),
        0x07 => {}
        _ => {
            let at = cell(r, page, row, col);
            vram_write(p, at, ch);
            if let Some(a) = attr {
                vram_write(p, at + 1, a);
            }
            col += 1;
            if col as u16 >= cols {
                col = 0;
                row += 1;
            }
        }
    }
    let last_row = rows(r) as u8 - 1;
    if row > last_row {
        let keep = vram_read(p, cell(r, page, last_row, 0) + 1);
        let window = Window {
            top: 0,
            left: 0,
            bottom: last_row,
            right: cols as u8 - 1,
        };
        scroll_page(r, p, page, true, 1, keep, window);
        row = last_row;
    }
    r.wr8(CURSOR_POS + page * 2, col);
    r.wr8(CURSOR_POS + page * 2 + 1, row);
    update_cursor(r, p, page);
}

/// A rectangle of character cells, inclusive.
#[derive(Clone, Copy)]
struct Window {
    top: u8,
    left: u8,
    bottom: u8,
    right: u8,
}

/// Scrolls a window of a page by `lines` (0 = clear it), filling with blanks in `attr`.
fn scroll_page(
    r: &mut Regs,
    p: &mut dyn Platform,
    page: u32,
    up: bool,
    lines: u8,
    attr: u8,
    w: Window,
) {
    let bottom = w.bottom.min(rows(r) as u8 - 1);
    let right = w.right.min(columns(r) as u8 - 1);
    let (top, left) = (w.top, w.left);
    if top > bottom || left > right {
        return;
    }
    let height = bottom - top + 1;
    let n = if lines == 0 || lines > height {
        height
    } else {
        lines
    };
    let width = (right - left + 1) as u32 * 2;
    let rows: Vec<u8> = if up {
        (top..=bottom).collect()
    } else {
        (top..=bottom).rev().collect()
    };
    for &row in &rows {
        let src = if up {
            row as i32 + n as i32
        } else {
            row as i32 - n as i32
        };
        let dst = cell(r, page, row, left);
        if (top as i32..=bottom as i32).contains(&src) {
            let from = cell(r, page, src as u8, left);
            for i in 0..width {
                let v = vram_read(p, from + i);
                vram_write(p, dst + i, v);
            }
        } else {
            for i in 0..width / 2 {
                vram_write(p, dst + i * 2, b' ');
                vram_write(p, dst + i * 2 + 1, attr);
            }
        }
    }
}
