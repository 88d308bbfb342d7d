//! INT 10h: video services for the colour text modes (80x25, mode 3).
//!
//! Characters go straight into the text buffer at B8000h and the cursor is kept in the
//! BDA and programmed into the CRTC, as a VGA BIOS does. Graphics and VBE modes are not
//! offered yet: mode sets other than text modes keep the text mode, and the VBE
//! functions answer "not supported" (AL != 4Fh), which is how boot loaders and Linux's
//! setup code detect a plain VGA.

use crate::{Bios, Platform, Regs, BDA};

pub(crate) const TEXT_BUFFER: u32 = 0xB_8000;
const COLUMNS: u16 = 80;
const ROWS: u16 = 25;
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
const ROWS_MINUS_ONE: u32 = BDA + 0x84;
const CHAR_HEIGHT: u32 = BDA + 0x85;

impl Bios {
    /// Sets mode 3 and clears the screen (POST and AH=00h).
    pub(crate) fn video_init(&self, r: &mut Regs, p: &mut dyn Platform) {
        r.wr8(MODE, 3);
        r.wr16(COLS, COLUMNS);
        r.wr16(PAGE_BYTES, PAGE_SIZE);
        r.wr16(PAGE_START, 0);
        for page in 0..8 {
            r.wr16(CURSOR_POS + page * 2, 0);
        }
        r.wr16(CURSOR_SHAPE, 0x0607);
        r.wr8(ACTIVE_PAGE, 0);
        r.wr16(CRTC_PORT, CRTC_INDEX);
        r.wr8(ROWS_MINUS_ONE, (ROWS - 1) as u8);
        r.wr16(CHAR_HEIGHT, 16);
        let blank: Vec<u8> = (0..COLUMNS * ROWS * 8)
            .flat_map(|_| [b' ', DEFAULT_ATTR])
            .collect();
        r.write(TEXT_BUFFER, &blank);
        update_cursor(r, p, 0);
    }

    pub(crate) fn int10(&mut self, r: &mut Regs, p: &mut dyn Platform) {
        match r.ah() {
            0x00 => {
                // Only text mode exists: any mode set gives a cleared 80x25 screen.
                self.video_init(r, p);
                let mode = r.al() & 0x7F;
                r.wr8(MODE, if matches!(mode, 2 | 3 | 7) { mode } else { 3 });
                r.set_al(0x30);
            }
            0x01 => r.wr16(CURSOR_SHAPE, r.cx()),
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
                r.wr8(ACTIVE_PAGE, page);
                r.wr16(PAGE_START, page as u16 * PAGE_SIZE);
                update_cursor(r, p, page as u32);
            }
            0x06 | 0x07 => {
                let (top, left, bottom, right) = (r.ch(), r.cl(), r.dh(), r.dl());
                scroll(r, r.ah() == 0x06, r.al(), r.bh(), top, left, bottom, right);
            }
            0x08 => {
                let page = (r.bh() & 7) as u32;
                let (col, row) = cursor(r, page);
                let at = cell(page, row, col);
                let (ch, attr) = (r.rd8(at), r.rd8(at + 1));
                r.set_al(ch);
                r.set_ah(attr);
            }
            0x09 | 0x0A => {
                let page = (r.bh() & 7) as u32;
                let (col, row) = cursor(r, page);
                let start = row as u32 * COLUMNS as u32 + col as u32;
                let end = (start + r.cx() as u32).min(COLUMNS as u32 * ROWS as u32);
                for i in start..end {
                    let at = TEXT_BUFFER + page * PAGE_SIZE as u32 + i * 2;
                    r.wr8(at, r.al());
                    if r.ah() == 0x09 {
                        r.wr8(at + 1, r.bl());
                    }
                }
            }
            0x0E => {
                let page = r.rd8(ACTIVE_PAGE) as u32;
                teletype(r, p, page, r.al(), None);
            }
            0x0F => {
                r.set_al(r.rd8(MODE));
                r.set_ah(COLUMNS as u8);
                r.set_bh(r.rd8(ACTIVE_PAGE));
            }
            0x10 => {} // palette registers: nothing to do in text mode
            0x11 if r.al() == 0x30 => {
                // Font information: 16 scan lines per character, 25 rows.
                r.set_cx(16);
                r.set_dl((ROWS - 1) as u8);
            }
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
            0x1A if r.al() == 0x00 => {
                // Display combination: VGA with colour analog display.
                r.set_al(0x1A);
                r.set_bl(0x08);
                r.set_bh(0x00);
            }
            _ => {} // includes VBE (AH=4Fh): AL stays != 4Fh, "not supported"
        }
    }
}

fn cursor(r: &Regs, page: u32) -> (u8, u8) {
    let pos = r.rd16(CURSOR_POS + page * 2);
    (
        (pos as u8).min(COLUMNS as u8 - 1),
        ((pos >> 8) as u8).min(ROWS as u8 - 1),
    )
}

fn cell(page: u32, row: u8, col: u8) -> u32 {
    TEXT_BUFFER + page * PAGE_SIZE as u32 + (row as u32 * COLUMNS as u32 + col as u32) * 2
}

/// Programs the CRTC cursor location registers from the BDA.
fn update_cursor(r: &mut Regs, p: &mut dyn Platform, page: u32) {
    let (col, row) = cursor(r, page);
    let pos = page as u16 * PAGE_SIZE / 2 + row as u16 * COLUMNS + col as u16;
    p.port_write(CRTC_INDEX, 1, 0x0E);
    p.port_write(CRTC_INDEX + 1, 1, (pos >> 8) as u32);
    p.port_write(CRTC_INDEX, 1, 0x0F);
    p.port_write(CRTC_INDEX + 1, 1, (pos & 0xFF) as u32);
}

/// Writes one character with teletype semantics (CR, LF, BS, BEL; wrap and scroll).
pub(crate) fn teletype(r: &mut Regs, p: &mut dyn Platform, page: u32, ch: u8, attr: Option<u8>) {
    let (mut col, mut row) = cursor(r, page);
    match ch {
        b'\r' => col = 0,
        b'\n' => row += 1,
        0x08 => col = col.saturating_sub(1),
        0x07 => {}
        _ => {
            let at = cell(page, row, col);
            r.wr8(at, ch);
            if let Some(a) = attr {
                r.wr8(at + 1, a);
            }
            col += 1;
            if col as u16 >= COLUMNS {
                col = 0;
                row += 1;
            }
        }
    }
    if row as u16 >= ROWS {
        let keep = r.rd8(cell(page, ROWS as u8 - 1, 0) + 1);
        scroll_page(
            r,
            page,
            true,
            1,
            keep,
            0,
            0,
            ROWS as u8 - 1,
            COLUMNS as u8 - 1,
        );
        row = ROWS as u8 - 1;
    }
    r.wr8(CURSOR_POS + page * 2, col);
    r.wr8(CURSOR_POS + page * 2 + 1, row);
    update_cursor(r, p, page);
}

#[allow(clippy::too_many_arguments)]
fn scroll(r: &mut Regs, up: bool, lines: u8, attr: u8, top: u8, left: u8, bottom: u8, right: u8) {
    let page = r.rd8(ACTIVE_PAGE) as u32;
    scroll_page(r, page, up, lines, attr, top, left, bottom, right);
}

/// Scrolls a window of a page by `lines` (0 = clear it), filling with blanks in `attr`.
#[allow(clippy::too_many_arguments)]
fn scroll_page(
    r: &mut Regs,
    page: u32,
    up: bool,
    lines: u8,
    attr: u8,
    top: u8,
    left: u8,
    bottom: u8,
    right: u8,
) {
    let bottom = bottom.min(ROWS as u8 - 1);
    let right = right.min(COLUMNS as u8 - 1);
    if top > bottom || left > right {
        return;
    }
    let height = bottom - top + 1;
    let n = if lines == 0 || lines > height {
        height
    } else {
        lines
    };
    let width = (right - left + 1) as usize * 2;
    let mut line = vec![0u8; width];
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
        if (top as i32..=bottom as i32).contains(&src) {
            r.read(cell(page, src as u8, left), &mut line);
        } else {
            for c in line.chunks_mut(2) {
                c[0] = b' ';
                c[1] = attr;
            }
        }
        r.write(cell(page, row, left), &line);
    }
}
