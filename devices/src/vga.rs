//! VGA: the sequencer, CRT controller, graphics controller, attribute controller and DAC
//! registers, 256 KiB of display memory in four 64 KiB planes as the CPU reaches it
//! through the A0000-BFFFF window (every read and write mode, latches, odd/even and
//! chain-4 addressing), and a renderer from that state to RGB pixels.
//!
//! The device holds no font of its own: as on real hardware, text modes draw glyphs from
//! plane 2, where the BIOS (or the guest) loads them.
//!
//! Plane addressing follows the hardware: in odd/even mode the CPU offset's bit 0
//! selects the plane pair and the plane address keeps the offset with bit 0 cleared; in
//! chain-4 the two low bits select the plane and are cleared in the plane address. The
//! CRT controller's word and doubleword modes shift its address counter to match, so a
//! text cell at CPU offset 2n is at plane address 2n, and a mode 13h pixel at offset o is
//! in plane o & 3 at plane address o & !3.
//!
//! Beside the VGA sits the Bochs "dispi" interface ([`dispi`]): linear modes of up to
//! 2560x1600 at 8-32 bits per pixel in 16 MiB of memory of their own, reached through
//! the PCI framebuffer BAR or in 64 KiB banks at A0000h. While it is enabled the
//! renderer shows that memory and ignores the VGA's timing registers.
//!
//! [`Vga::render`] draws the whole picture; a [`Screen`] keeps one up to date drawing
//! only the rows whose memory was written since its last update. For that the device
//! stamps each write with its [`Vga::changes`] count: per 64-byte page of plane
//! addresses and plane, per 4 KiB page of dispi memory, and once for every register
//! the whole picture depends on.

pub mod dispi;

use crate::{Nanos, PortDevice};
use dispi::Dispi;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes in one plane.
pub const PLANE_SIZE: usize = 64 * 1024;

const SEQ_REGS: usize = 5;
const CRTC_REGS: usize = 0x19;
const GC_REGS: usize = 9;
const ATTR_REGS: usize = 0x15;

/// An RGB picture: `pixels[y * width + x]` = 0x00RRGGBB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u32>,
}

impl Frame {
    fn resize(&mut self, width: usize, height: usize) {
        self.width = width;
        self.height = height;
        self.pixels.clear();
        self.pixels.resize(width * height, 0);
    }
}

/// What the display hardware is showing, as far as a window title or a test cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayMode {
    /// Alphanumeric mode: character cells.
    Text { columns: usize, rows: usize },
    /// All-points-addressable mode with 16 or 256 colours.
    Graphics {
        width: usize,
        height: usize,
        colours: u16,
    },
    /// A linear mode of the dispi (VBE) interface.
    Linear {
        width: usize,
        height: usize,
        bpp: u16,
    },
}

/// As a window title or the monitor's `info` says it: `80x25 text`, `640x480, 16
/// colours`, `1024x768x32`.
impl std::fmt::Display for DisplayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match *self {
            DisplayMode::Text { columns, rows } => write!(f, "{columns}x{rows} text"),
            DisplayMode::Graphics {
                width,
                height,
                colours,
            } => write!(f, "{width}x{height}, {colours} colours"),
            DisplayMode::Linear { width, height, bpp } => write!(f, "{width}x{height}x{bpp}"),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Vga {
    misc: u8,
    feature: u8,
    seq_index: u8,
    seq: [u8; SEQ_REGS],
    crtc_index: u8,
    crtc: [u8; CRTC_REGS],
    gc_index: u8,
    gc: [u8; GC_REGS],
    /// Attribute index register, including the palette address source bit (20h).
    attr_index: u8,
    attr: [u8; ATTR_REGS],
    /// The attribute controller's flip-flop: true when the next write to 3C0h is data.
    attr_data_next: bool,
    /// Red, green, blue per DAC entry: 6 bits, or 8 with the dispi DAC_8BIT flag.
    #[serde(with = "serde_big_array::BigArray")]
    dac: [[u8; 3]; 256],
    dac_write_index: u8,
    dac_read_index: u8,
    /// Which component (0-2) of the current entry the next 3C9h access moves.
    dac_component: u8,
    /// The last DAC index write was to 3C7h (read mode), as 3C7h reads report.
    dac_read_mode: bool,
    pel_mask: u8,
    /// Plane bytes interleaved: `vram[address][plane]`.
    vram: Vec<[u8; 4]>,
    latch: [u8; 4],
    /// Counts every change that can alter the picture (for redraw decisions).
    changes: u64,
    /// The Bochs VBE interface and its memory.
    dispi: Dispi,
    /// When each input of the picture last changed. Host bookkeeping, not guest state:
    /// skipped so that snapshots and the record/replay digests (serde hashes) never
    /// see it; a restored device gets fresh stamps and a new generation.
    #[serde(skip)]
    stamps: Stamps,
}

/// log2 of the plane addresses per change-tracking page: a write redraws the text row
/// (160 addresses) or scan line (80 planar, 320 in mode 13h) it is in and seldom a
/// neighbour, and a row checks a handful of pages.
const VRAM_PAGE_SHIFT: u32 = 6;
/// log2 of the dispi memory bytes per change-tracking page (a 1024x768x32 line).
const DISPI_PAGE_SHIFT: u32 = 12;

/// When each input of the picture was last written, as values of [`Vga::changes`], so
/// that a [`Screen`] redraws only what was written after it last looked.
struct Stamps {
    /// Tells devices apart: a screen that last looked at another generation (another
    /// device, or this one before a snapshot restore, which builds a new one) cannot
    /// compare these stamps with what it saw and redraws everything.
    generation: u64,
    /// The last write to a register the whole picture depends on (mode, timing, start
    /// address, cursor, palette, DAC, dispi geometry).
    registers: u64,
    /// Per page of plane addresses, per plane, the last write.
    vram: Vec<[u64; 4]>,
    /// Per page of dispi memory, the last write. Empty until the memory is first
    /// written, like the memory itself; a missing stamp means "not since allocation",
    /// and allocation happens in a register write or a restore, both full redraws.
    dispi: Vec<u64>,
}

impl Default for Stamps {
    fn default() -> Self {
        // Only uniqueness matters: no picture depends on the value.
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        Stamps {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            registers: 0,
            vram: vec![[0; 4]; PLANE_SIZE >> VRAM_PAGE_SHIFT],
            dispi: Vec::new(),
        }
    }
}

/// The pages (indices into a table of `count` pages of `1 << shift` bytes, wrapping)
/// that bytes `first..=last` fall in, each at most once.
fn pages(first: usize, last: usize, shift: u32, count: usize) -> impl Iterator<Item = usize> {
    let (a, b) = (first >> shift, last.max(first) >> shift);
    let n = (b - a + 1).min(count);
    (a..a + n).map(move |p| p % count)
}

impl Stamps {
    fn vram_written(&mut self, address: usize, planes: u8, when: u64) {
        let page = &mut self.vram[(address % PLANE_SIZE) >> VRAM_PAGE_SHIFT];
        for (p, stamp) in page.iter_mut().enumerate() {
            if planes >> p & 1 != 0 {
                *stamp = when;
            }
        }
    }

    fn dispi_written(&mut self, offset: usize, when: u64) {
        if self.dispi.is_empty() {
            self.dispi = vec![0; dispi::MEMORY_SIZE >> DISPI_PAGE_SHIFT];
        }
        self.dispi[(offset % dispi::MEMORY_SIZE) >> DISPI_PAGE_SHIFT] = when;
    }

    /// Whether plane addresses `first..=last` (wrapping at the plane size) of any of
    /// `planes` were written after `since`.
    fn vram_written_since(&self, first: usize, last: usize, planes: u8, since: u64) -> bool {
        pages(first, last, VRAM_PAGE_SHIFT, self.vram.len()).any(|page| {
            let stamps = &self.vram[page];
            (0..4).any(|p| planes >> p & 1 != 0 && stamps[p] > since)
        })
    }

    /// Whether dispi memory bytes `first..=last` (wrapping) were written after `since`.
    fn dispi_written_since(&self, first: usize, last: usize, since: u64) -> bool {
        !self.dispi.is_empty()
            && pages(first, last, DISPI_PAGE_SHIFT, self.dispi.len())
                .any(|page| self.dispi[page] > since)
    }
}

/// How the current mode lays the picture out: its size in pixels and its rows, the
/// units that are drawn and redrawn (character rows in text modes, scan lines in
/// graphics modes), with the mode's sizes clamped as drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    mode: DisplayMode,
    width: usize,
    height: usize,
    rows: usize,
    /// Pixel lines per row.
    row_height: usize,
}

impl Default for Vga {
    fn default() -> Self {
        Self::new()
    }
}

impl Vga {
    /// A VGA as it comes out of reset, before any BIOS has programmed it: all registers
    /// zero (which displays nothing) and memory cleared.
    pub fn new() -> Vga {
        Vga {
            misc: 0,
            feature: 0,
            seq_index: 0,
            seq: [0; SEQ_REGS],
            crtc_index: 0,
            crtc: [0; CRTC_REGS],
            gc_index: 0,
            gc: [0; GC_REGS],
            attr_index: 0,
            attr: [0; ATTR_REGS],
            attr_data_next: false,
            dac: [[0; 3]; 256],
            dac_write_index: 0,
            dac_read_index: 0,
            dac_component: 0,
            dac_read_mode: false,
            pel_mask: 0xFF,
            vram: vec![[0; 4]; PLANE_SIZE],
            latch: [0; 4],
            changes: 0,
            dispi: Dispi::default(),
            stamps: Stamps::default(),
        }
    }

    /// Increases whenever registers or memory change in a way that can alter the picture.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The dispi (VBE) interface's registers and memory.
    pub fn dispi(&self) -> &Dispi {
        &self.dispi
    }

    /// The dispi memory a snapshot's copy goes into (see [`Dispi::memory_to_restore`]).
    /// The picture is drawn anew after it: a restored device is a new generation.
    pub fn video_memory_to_restore(&mut self, allocated: bool) -> &mut [u8] {
        self.stamps = Stamps::default();
        self.dispi.memory_to_restore(allocated)
    }

    /// A byte of the linear framebuffer (the PCI BAR), `offset` from its start.
    pub fn lfb_read(&self, offset: usize) -> u8 {
        self.dispi.lfb_read(offset)
    }

    pub fn lfb_write(&mut self, offset: usize, v: u8) {
        self.dispi.lfb_write(offset, v);
        self.changes += 1;
        self.stamps.dispi_written(offset, self.changes);
    }

    /// A plane byte (for tests and debugging).
    pub fn plane_byte(&self, plane: usize, address: usize) -> u8 {
        self.vram[address % PLANE_SIZE][plane & 3]
    }

    fn crtc_ports(&self) -> (u16, u16) {
        if self.misc & 1 != 0 {
            (0x3D4, 0x3DA)
        } else {
            (0x3B4, 0x3BA)
        }
    }

    fn read_port(&mut self, port: u16, now: Nanos) -> u8 {
        let (crtc, status) = self.crtc_ports();
        match port {
            0x3C0 => self.attr_index,
            0x3C1 => self
                .attr
                .get((self.attr_index & 0x1F) as usize)
                .copied()
                .unwrap_or(0),
            0x3C2 => 0x10, // input status 0: switch sense high (a colour monitor)
            0x3C3 => 1,
            0x3C4 => self.seq_index,
            0x3C5 => self.seq.get(self.seq_index as usize).copied().unwrap_or(0),
            0x3C6 => self.pel_mask,
            0x3C7 => {
                if self.dac_read_mode {
                    3
                } else {
                    0
                }
            }
            0x3C8 => self.dac_write_index,
            0x3C9 => {
                let v = self.dac[self.dac_read_index as usize][self.dac_component as usize];
                self.next_dac_component(true);
                v
            }
            0x3CA => self.feature,
            0x3CC => self.misc,
            0x3CE => self.gc_index,
            0x3CF => self.gc.get(self.gc_index as usize).copied().unwrap_or(0),
            p if p == crtc => self.crtc_index,
            p if p == crtc + 1 => self
                .crtc
                .get(self.crtc_index as usize)
                .copied()
                .unwrap_or(0),
            p if p == status => {
                self.attr_data_next = false;
                self.input_status_1(now)
            }
            _ => 0xFF,
        }
    }

    fn write_port(&mut self, port: u16, v: u8) {
        let (crtc, status) = self.crtc_ports();
        self.changes += 1;
        // Whether the write can alter the picture as a whole. Index registers and the
        // registers that only steer CPU accesses (map mask, memory mode, write modes,
        // bit mask...) do not, and drawing programs write those all the time.
        let picture = match port {
            0x3C0 => {
                let data = self.attr_data_next;
                self.attr_data_next = !data;
                if data {
                    if let Some(r) = self.attr.get_mut((self.attr_index & 0x1F) as usize) {
                        *r = v;
                    }
                    true
                } else {
                    // The palette address source bit blanks the screen.
                    let blanking = (self.attr_index ^ v) & 0x20 != 0;
                    self.attr_index = v & 0x3F;
                    blanking
                }
            }
            0x3C2 => {
                self.misc = v;
                true
            }
            0x3C4 => {
                self.seq_index = v;
                false
            }
            0x3C5 => {
                if let Some(r) = self.seq.get_mut(self.seq_index as usize) {
                    *r = v;
                }
                !matches!(self.seq_index, 2 | 4)
            }
            0x3C6 => {
                self.pel_mask = v;
                true
            }
            0x3C7 => {
                self.dac_read_index = v;
                self.dac_component = 0;
                self.dac_read_mode = true;
                false
            }
            0x3C8 => {
                self.dac_write_index = v;
                self.dac_component = 0;
                self.dac_read_mode = false;
                false
            }
            0x3C9 => {
                let v = if self.dispi.dac_8bit() { v } else { v & 0x3F };
                self.dac[self.dac_write_index as usize][self.dac_component as usize] = v;
                self.next_dac_component(false);
                true
            }
            0x3CE => {
                self.gc_index = v;
                false
            }
            0x3CF => match self.gc.get_mut(self.gc_index as usize) {
                Some(r) => {
                    // Of the graphics controller, the picture depends only on the
                    // 256-colour shift mode (5) and the graphics/text bit (6).
                    let shown = match self.gc_index {
                        5 => 0x40,
                        6 => 0x01,
                        _ => 0,
                    };
                    let changed = (*r ^ v) & shown != 0;
                    *r = v;
                    changed
                }
                None => false,
            },
            p if p == crtc => {
                self.crtc_index = v;
                false
            }
            p if p == crtc + 1 => {
                self.write_crtc(v);
                true
            }
            // Feature control is written where input status 1 is read.
            p if p == status => {
                self.feature = v;
                false
            }
            _ => false,
        };
        if picture {
            self.stamps.registers = self.changes;
        }
    }

    fn write_crtc(&mut self, v: u8) {
        let i = self.crtc_index as usize;
        if i >= CRTC_REGS {
            return;
        }
        // CR11 bit 7 write-protects CR00-CR07, except CR07 bit 4 (line compare bit 8).
        if self.crtc[0x11] & 0x80 != 0 && i <= 7 {
            if i == 7 {
                self.crtc[7] = (self.crtc[7] & !0x10) | (v & 0x10);
            }
            return;
        }
        self.crtc[i] = v;
    }

    fn next_dac_component(&mut self, reading: bool) {
        self.dac_component += 1;
        if self.dac_component == 3 {
            self.dac_component = 0;
            if reading {
                self.dac_read_index = self.dac_read_index.wrapping_add(1);
            } else {
                self.dac_write_index = self.dac_write_index.wrapping_add(1);
            }
        }
    }

    /// Nanoseconds per scan line and scan lines per frame, from the CRTC timing registers
    /// and the dot clock (clamped to sane values so a guest cannot stop time).
    fn timing(&self) -> (u64, u64) {
        let dot_clock_hz: u64 = if (self.misc >> 2) & 3 == 1 {
            28_322_000
        } else {
            25_175_000
        };
        let dots_per_char = if self.seq[1] & 1 != 0 { 8 } else { 9 };
        let mut chars_per_line = self.crtc[0] as u64 + 5;
        if self.seq[1] & 8 != 0 {
            chars_per_line *= 2; // half dot clock
        }
        let line_ns = (chars_per_line * dots_per_char * 1_000_000_000 / dot_clock_hz).max(1_000);
        let lines = (self.crtc[6] as u64
            | (self.crtc[7] as u64 & 1) << 8
            | (self.crtc[7] as u64 >> 5 & 1) << 9)
            + 2;
        (line_ns, lines.max(16))
    }

    fn vertical_display_end(&self) -> usize {
        (self.crtc[0x12] as usize
            | (self.crtc[7] as usize >> 1 & 1) << 8
            | (self.crtc[7] as usize >> 6 & 1) << 9)
            + 1
    }

    fn vertical_retrace_start(&self) -> u64 {
        self.crtc[0x10] as u64
            | (self.crtc[7] as u64 >> 2 & 1) << 8
            | (self.crtc[7] as u64 >> 7) << 9
    }

    /// Input status 1: bit 0 while the display is not showing pixels (horizontal or
    /// vertical blanking), bit 3 during vertical retrace. Derived from virtual time, so
    /// programs that wait for retrace see the same thing on every run.
    fn input_status_1(&self, now: Nanos) -> u8 {
        let (line_ns, lines) = self.timing();
        let frame_ns = line_ns * lines;
        let in_frame = now % frame_ns;
        let line = in_frame / line_ns;
        let in_line = in_frame % line_ns;
        let visible_lines = self.vertical_display_end() as u64;
        let retrace_start = self.vertical_retrace_start();
        let retrace_end =
            retrace_start + ((self.crtc[0x11] as u64 & 0xF) + 16 - (retrace_start & 0xF)) % 16;
        let retrace = line >= retrace_start && line < retrace_end.max(retrace_start + 1);
        // The last fifth of every line is horizontal blanking.
        let blank = line >= visible_lines || in_line * 5 >= line_ns * 4;
        (blank as u8) | (retrace as u8) << 3
    }

    /// Where a physical address falls in display memory, given the memory map select.
    fn window_offset(&self, addr: u64) -> Option<usize> {
        let (base, size) = match (self.gc[6] >> 2) & 3 {
            0 => (0xA_0000u64, 0x2_0000u64),
            1 => (0xA_0000, 0x1_0000),
            2 => (0xB_0000, 0x8000),
            _ => (0xB_8000, 0x8000),
        };
        let off = addr.checked_sub(base)?;
        (off < size).then_some(off as usize)
    }

    fn chain4(&self) -> bool {
        self.seq[4] & 8 != 0
    }

    /// A CPU read from display memory (one byte at a physical address).
    pub fn mem_read(&mut self, addr: u64) -> u8 {
        if self.dispi.enabled() {
            return match self.dispi.bank_offset(addr) {
                Some(off) => self.dispi.lfb_read(off),
                None => 0xFF,
            };
        }
        let Some(off) = self.window_offset(addr) else {
            return 0xFF;
        };
        let (address, plane) = if self.chain4() {
            (off & !3, off & 3)
        } else if self.gc[5] & 0x10 != 0 {
            (off & !1, (self.gc[4] as usize & 2) | (off & 1))
        } else {
            (off, self.gc[4] as usize & 3)
        };
        self.latch = self.vram[address % PLANE_SIZE];
        if self.gc[5] & 8 == 0 {
            return self.latch[plane];
        }
        // Read mode 1: a bit is set where every plane enabled by colour don't care
        // matches the colour compare register.
        let mut result = 0xFF;
        for p in 0..4 {
            if self.gc[7] >> p & 1 != 0 {
                let want = if self.gc[2] >> p & 1 != 0 { 0xFF } else { 0 };
                result &= !(self.latch[p] ^ want);
            }
        }
        result
    }

    /// A CPU write to display memory (one byte at a physical address).
    pub fn mem_write(&mut self, addr: u64, value: u8) {
        if self.dispi.enabled() {
            if let Some(off) = self.dispi.bank_offset(addr) {
                self.lfb_write(off, value);
            }
            return;
        }
        let Some(off) = self.window_offset(addr) else {
            return;
        };
        let map_mask = self.seq[2] & 0xF;
        let (address, planes) = if self.chain4() {
            (off & !3, map_mask & (1 << (off & 3)))
        } else if self.seq[4] & 4 == 0 {
            let pair = if off & 1 != 0 { 0b1010 } else { 0b0101 };
            (off & !1, map_mask & pair)
        } else {
            (off, map_mask)
        };
        if planes == 0 {
            return;
        }
        let data = self.write_data(value);
        let cell = &mut self.vram[address % PLANE_SIZE];
        for (p, byte) in cell.iter_mut().enumerate() {
            if planes >> p & 1 != 0 {
                *byte = data[p];
            }
        }
        self.changes += 1;
        self.stamps.vram_written(address, planes, self.changes);
    }

    /// The four plane bytes a write produces, through the write mode, set/reset, data
    /// rotate, logical function and bit mask of the graphics controller.
    fn write_data(&self, value: u8) -> [u8; 4] {
        let rotated = value.rotate_right(self.gc[3] as u32 & 7);
        let set_reset = |p: usize| if self.gc[0] >> p & 1 != 0 { 0xFF } else { 0 };
        let mut bit_mask = self.gc[8];
        let mut data = [0u8; 4];
        match self.gc[5] & 3 {
            0 => {
                for (p, d) in data.iter_mut().enumerate() {
                    *d = if self.gc[1] >> p & 1 != 0 {
                        set_reset(p)
                    } else {
                        rotated
                    };
                }
            }
            1 => return self.latch,
            2 => {
                for (p, d) in data.iter_mut().enumerate() {
                    *d = if value >> p & 1 != 0 { 0xFF } else { 0 };
                }
            }
            _ => {
                bit_mask &= rotated;
                for (p, d) in data.iter_mut().enumerate() {
                    *d = set_reset(p);
                }
            }
        }
        for (p, d) in data.iter_mut().enumerate() {
            let latch = self.latch[p];
            let combined = match (self.gc[3] >> 3) & 3 {
                0 => *d,
                1 => *d & latch,
                2 => *d | latch,
                _ => *d ^ latch,
            };
            *d = (combined & bit_mask) | (latch & !bit_mask);
        }
        data
    }

    fn graphics_mode(&self) -> bool {
        self.gc[6] & 1 != 0
    }

    fn char_height(&self) -> usize {
        (self.crtc[9] as usize & 0x1F) + 1
    }

    /// Scan lines each row of memory is shown on (character height, or the repeat
    /// count in graphics modes), including scan doubling.
    fn lines_per_row(&self) -> usize {
        self.char_height() * if self.crtc[9] & 0x80 != 0 { 2 } else { 1 }
    }

    /// The columns and rows of a text mode, or the pixels of a graphics mode.
    pub fn mode(&self) -> DisplayMode {
        if let Some(g) = self.dispi.geometry() {
            return DisplayMode::Linear {
                width: g.width,
                height: g.height,
                bpp: g.bpp,
            };
        }
        let clocks = self.crtc[1] as usize + 1;
        let lines = self.vertical_display_end();
        if self.graphics_mode() {
            let colours = if self.gc[5] & 0x40 != 0 { 256 } else { 16 };
            let width = clocks * if colours == 256 { 4 } else { 8 };
            DisplayMode::Graphics {
                width,
                height: lines / self.lines_per_row(),
                colours,
            }
        } else {
            DisplayMode::Text {
                columns: clocks,
                rows: lines / self.lines_per_row(),
            }
        }
    }

    /// The CRTC start address and the address step per row, in address counter units.
    fn start_and_stride(&self) -> (usize, usize) {
        let start = (self.crtc[0xC] as usize) << 8 | self.crtc[0xD] as usize;
        (start, self.crtc[0x13] as usize * 2)
    }

    /// How far the CRTC shifts its address counter into a plane address: doubleword
    /// mode 2, word mode 1, byte mode 0.
    fn address_shift(&self) -> u32 {
        if self.crtc[0x14] & 0x40 != 0 {
            2
        } else if self.crtc[0x17] & 0x40 == 0 {
            1
        } else {
            0
        }
    }

    /// The screen is blanked (sequencer screen off, or the attribute controller's
    /// palette address source bit clear while the palette is being programmed).
    fn blanked(&self) -> bool {
        self.seq[1] & 0x20 != 0 || self.attr_index & 0x20 == 0
    }

    /// The RGB colour of DAC entry `index` (after the pixel mask): 6-bit values
    /// widened, or 8-bit ones as they are.
    fn dac_rgb(&self, index: u8) -> u32 {
        let [r, g, b] = self.dac[(index & self.pel_mask) as usize];
        if self.dispi.dac_8bit() {
            return (r as u32) << 16 | (g as u32) << 8 | b as u32;
        }
        let wide = |c: u8| ((c << 2) | (c >> 4)) as u32;
        wide(r) << 16 | wide(g) << 8 | wide(b)
    }

    /// A 4-bit attribute colour through the palette registers and colour select.
    fn palette_rgb(&self, colour: u8) -> u32 {
        let entry = self.attr[(colour & 0xF) as usize] & 0x3F;
        let select = self.attr[0x14];
        let index = if self.attr[0x10] & 0x80 != 0 {
            (entry & 0x0F) | (select & 0x0F) << 4
        } else {
            entry | (select & 0x0C) << 4
        };
        self.dac_rgb(index)
    }

    /// Frames since time zero, for blinking.
    fn frame_number(&self, now: Nanos) -> u64 {
        let (line_ns, lines) = self.timing();
        now / (line_ns * lines)
    }

    /// Whether blinking characters and the text cursor are in their visible phase at
    /// `now`: they blink every 16 and 8 frames.
    fn blink_phases(&self, now: Nanos) -> (bool, bool) {
        let frame_no = self.frame_number(now);
        (
            (frame_no / 16).is_multiple_of(2),
            (frame_no / 8).is_multiple_of(2),
        )
    }

    fn layout(&self) -> Layout {
        match self.mode() {
            DisplayMode::Text { columns, rows } => {
                let (columns, rows) = (columns.min(256), rows.min(128));
                let row_height = self.lines_per_row();
                Layout {
                    mode: DisplayMode::Text { columns, rows },
                    width: columns * self.char_width() * self.dot_repeat(),
                    height: rows * row_height,
                    rows,
                    row_height,
                }
            }
            DisplayMode::Graphics {
                width,
                height,
                colours,
            } => {
                let (width, height) = (width.min(2048), height.min(1536));
                Layout {
                    mode: DisplayMode::Graphics {
                        width,
                        height,
                        colours,
                    },
                    width,
                    height,
                    rows: height,
                    row_height: 1,
                }
            }
            mode @ DisplayMode::Linear { width, height, .. } => Layout {
                mode,
                width,
                height,
                rows: height,
                row_height: 1,
            },
        }
    }

    /// Draws what the monitor shows at virtual time `now` (blink phases depend on it),
    /// all of it. [`Screen`] keeps a picture up to date redrawing only what changed.
    pub fn render(&self, now: Nanos, frame: &mut Frame) {
        let layout = self.layout();
        frame.resize(layout.width, layout.height);
        self.draw_rows(now, &layout, frame, 0..layout.rows);
    }

    /// Draws rows `rows` of `layout` into `frame`, which has the layout's size.
    fn draw_rows(&self, now: Nanos, layout: &Layout, frame: &mut Frame, rows: Range<usize>) {
        let lines = rows.start * layout.row_height..rows.end * layout.row_height;
        match layout.mode {
            DisplayMode::Linear { .. } => self.draw_linear(frame, rows),
            _ if self.blanked() => {
                frame.pixels[lines.start * layout.width..lines.end * layout.width].fill(0)
            }
            DisplayMode::Text { columns, .. } => self.draw_text(now, columns, frame, rows),
            DisplayMode::Graphics { colours, .. } => self.draw_graphics(colours, frame, rows),
        }
    }

    /// Whether memory that row `row` of `layout` shows was written after `since`
    /// (text rows: their cells, not the font; see [`Vga::font_written_since`]).
    fn row_written_since(&self, layout: &Layout, row: usize, since: u64) -> bool {
        let (start, stride) = self.start_and_stride();
        let shift = self.address_shift();
        let first = start + row * stride;
        match layout.mode {
            DisplayMode::Text { columns, .. } => self.stamps.vram_written_since(
                first << shift,
                (first + columns - 1) << shift,
                0b0011,
                since,
            ),
            DisplayMode::Graphics { width, colours, .. } => {
                let pixels_per_address = if colours == 256 { 4 } else { 8 };
                let last = first + (width - 1) / pixels_per_address;
                self.stamps
                    .vram_written_since(first << shift, last << shift, 0b1111, since)
            }
            DisplayMode::Linear { width, bpp, .. } => {
                let Some(g) = self.dispi.geometry() else {
                    return true;
                };
                let first = g.start + row * g.stride;
                let last = first + width * dispi::bytes_per_pixel(bpp) - 1;
                self.stamps.dispi_written_since(first, last, since)
            }
        }
    }

    /// Whether the glyphs of the fonts that text mode `layout` uses (character maps A
    /// and B in plane 2) were written after `since`.
    fn font_written_since(&self, layout: &Layout, since: u64) -> bool {
        let DisplayMode::Text { .. } = layout.mode else {
            return false;
        };
        [self.font_base(0), self.font_base(8)]
            .into_iter()
            .any(|base| {
                self.stamps
                    .vram_written_since(base, base + 256 * 32 - 1, 0b0100, since)
            })
    }

    /// Draws the dispi interface's scan lines `lines`: 8 bpp through the DAC, the other
    /// depths direct (15: x:5:5:5, 16: 5:6:5, 24: B G R bytes, 32: B G R x).
    fn draw_linear(&self, frame: &mut Frame, lines: Range<usize>) {
        let Some(g) = self.dispi.geometry() else {
            return;
        };
        let mem = self.dispi.memory();
        if mem.is_empty() {
            frame.pixels[lines.start * g.width..lines.end * g.width].fill(0);
            return;
        }
        let bytes = dispi::bytes_per_pixel(g.bpp);
        let expand5 = |c: u32| (c << 3) | (c >> 2);
        let expand6 = |c: u32| (c << 2) | (c >> 4);
        for y in lines {
            let row = g.start + y * g.stride;
            let out = &mut frame.pixels[y * g.width..][..g.width];
            for (x, px) in out.iter_mut().enumerate() {
                let at = row + x * bytes;
                let byte = |i: usize| mem[(at + i) % dispi::MEMORY_SIZE] as u32;
                *px = match g.bpp {
                    8 => self.dac_rgb(byte(0) as u8),
                    15 | 16 => {
                        let v = byte(0) | byte(1) << 8;
                        if g.bpp == 15 {
                            expand5(v >> 10 & 0x1F) << 16
                                | expand5(v >> 5 & 0x1F) << 8
                                | expand5(v & 0x1F)
                        } else {
                            expand5(v >> 11) << 16 | expand6(v >> 5 & 0x3F) << 8 | expand5(v & 0x1F)
                        }
                    }
                    _ => byte(2) << 16 | byte(1) << 8 | byte(0),
                };
            }
        }
    }

    fn char_width(&self) -> usize {
        if self.seq[1] & 1 != 0 {
            8
        } else {
            9
        }
    }

    /// Pixels each dot is shown as across: 2 with the dot clock halved (sequencer
    /// clocking mode bit 3, the 40-column text modes: 40 cells as wide as 80).
    fn dot_repeat(&self) -> usize {
        if self.seq[1] & 0x08 != 0 {
            2
        } else {
            1
        }
    }

    /// Offset in plane 2 of the font a character uses: character map select A applies
    /// to attributes with bit 3 set, map B to the others.
    fn font_base(&self, attr: u8) -> usize {
        let sel = self.seq[3] as usize;
        let map = if attr & 8 != 0 {
            (sel >> 2 & 3) | (sel >> 3 & 4)
        } else {
            (sel & 3) | (sel >> 2 & 4)
        };
        // Maps 0-3 start at 0, 16, 32, 48 KiB; the high bit adds 8 KiB.
        (map & 3) * 0x4000 + (map >> 2) * 0x2000
    }

    /// Draws character rows `rows` of a text mode `columns` wide.
    fn draw_text(&self, now: Nanos, columns: usize, frame: &mut Frame, rows: Range<usize>) {
        let cw = self.char_width();
        let repeat = self.dot_repeat();
        let cell_w = cw * repeat;
        let ch_height = self.char_height();
        let line_repeat = if self.crtc[9] & 0x80 != 0 { 2 } else { 1 };
        let cell_h = ch_height * line_repeat;
        let (start, stride) = self.start_and_stride();
        let shift = self.address_shift();
        let blink_enabled = self.attr[0x10] & 8 != 0;
        let line_graphics = self.attr[0x10] & 4 != 0;
        let (blink_on, cursor_on) = self.blink_phases(now);
        let cursor_at = (self.crtc[0xE] as usize) << 8 | self.crtc[0xF] as usize;
        let cursor_start = self.crtc[0xA] as usize & 0x1F;
        let cursor_end = self.crtc[0xB] as usize & 0x1F;
        let cursor_shown = self.crtc[0xA] & 0x20 == 0 && cursor_on;
        for row in rows {
            for col in 0..columns {
                let counter = start + row * stride + col;
                let cell = self.vram[(counter << shift) % PLANE_SIZE];
                let (ch, attr) = (cell[0], cell[1]);
                let mut fg = attr & 0xF;
                let mut bg = attr >> 4;
                if blink_enabled {
                    bg &= 7;
                    if attr & 0x80 != 0 && !blink_on {
                        fg = bg;
                    }
                }
                let fg_rgb = self.palette_rgb(fg);
                let bg_rgb = self.palette_rgb(bg);
                let glyph = self.font_base(attr) + ch as usize * 32;
                let is_cursor = cursor_shown && counter & 0xFFFF == cursor_at;
                for line in 0..ch_height {
                    let mut bits = self.vram[(glyph + line) % PLANE_SIZE][2];
                    if is_cursor && line >= cursor_start && line <= cursor_end {
                        bits = 0xFF;
                    }
                    let ninth = cw == 9 && line_graphics && (0xC0..=0xDF).contains(&ch);
                    for rep in 0..line_repeat {
                        let y = row * cell_h + line * line_repeat + rep;
                        let out = &mut frame.pixels[y * frame.width + col * cell_w..][..cell_w];
                        for (i, px) in out.iter_mut().enumerate() {
                            let x = i / repeat;
                            let on = if x < 8 {
                                bits >> (7 - x) & 1 != 0
                            } else {
                                ninth && bits & 1 != 0
                            };
                            *px = if on { fg_rgb } else { bg_rgb };
                        }
                    }
                }
            }
        }
    }

    /// Draws scan lines `lines` of a 16- or 256-colour graphics mode.
    fn draw_graphics(&self, colours: u16, frame: &mut Frame, lines: Range<usize>) {
        let width = frame.width;
        let (start, stride) = self.start_and_stride();
        let shift = self.address_shift();
        let plane_enable = self.attr[0x12] & 0xF;
        for y in lines {
            let row_counter = start + y * stride;
            let out = &mut frame.pixels[y * width..][..width];
            if colours == 256 {
                for (x, px) in out.iter_mut().enumerate() {
                    let cell = self.vram[((row_counter + x / 4) << shift) % PLANE_SIZE];
                    *px = self.dac_rgb(cell[x % 4]);
                }
            } else {
                for (x, px) in out.iter_mut().enumerate() {
                    let cell = self.vram[((row_counter + x / 8) << shift) % PLANE_SIZE];
                    let bit = 7 - (x % 8);
                    let mut colour = 0u8;
                    for (p, byte) in cell.iter().enumerate() {
                        colour |= (byte >> bit & 1) << p;
                    }
                    *px = self.palette_rgb(colour & plane_enable);
                }
            }
        }
    }

    /// The characters of the text screen, row by row (empty in graphics modes).
    pub fn text_rows(&self) -> Vec<Vec<u8>> {
        let DisplayMode::Text { columns, rows } = self.mode() else {
            return Vec::new();
        };
        let (start, stride) = self.start_and_stride();
        let shift = self.address_shift();
        (0..rows.min(128))
            .map(|row| {
                (0..columns.min(256))
                    .map(|col| self.vram[((start + row * stride + col) << shift) % PLANE_SIZE][0])
                    .collect()
            })
            .collect()
    }
}

/// A picture of a [`Vga`] kept up to date incrementally: each [`Screen::update`]
/// redraws only the rows whose memory was written since the previous one, or everything
/// when a register the whole picture depends on was written, the mode or blink phase
/// changed, or the device is not the one last drawn (another device, or a snapshot
/// restore). Afterwards [`Screen::frame`] equals what [`Vga::render`] draws at the same
/// time.
#[derive(Default)]
pub struct Screen {
    frame: Frame,
    /// What the frame shows; None before the first update.
    drawn: Option<Drawn>,
    /// The pixel lines the last update redrew.
    redrawn: Range<usize>,
}

/// What a [`Screen`]'s frame was drawn from.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Drawn {
    generation: u64,
    /// [`Vga::changes`] then: later writes have later stamps.
    changes: u64,
    layout: Layout,
    /// In text modes, the blink phases of characters and cursor.
    phases: Option<(bool, bool)>,
}

impl Screen {
    /// A screen that has drawn nothing yet: its first update draws everything.
    pub fn new() -> Screen {
        Screen::default()
    }

    /// Brings the picture up to date with `vga` at virtual time `now`. Returns whether
    /// any pixel may have changed (the frame then needs showing again); false means the
    /// frame is as it was.
    pub fn update(&mut self, vga: &Vga, now: Nanos) -> bool {
        let layout = vga.layout();
        let phases = matches!(layout.mode, DisplayMode::Text { .. }).then(|| vga.blink_phases(now));
        let current = Drawn {
            generation: vga.stamps.generation,
            changes: vga.changes,
            layout,
            phases,
        };
        let since = match self.drawn.replace(current) {
            Some(last)
                if last.generation == current.generation
                    && last.layout == layout
                    && last.phases == phases
                    && last.changes <= vga.changes
                    && vga.stamps.registers <= last.changes
                    && !vga.font_written_since(&layout, last.changes) =>
            {
                last.changes
            }
            _ => {
                vga.render(now, &mut self.frame);
                self.redrawn = 0..self.frame.height;
                return true;
            }
        };
        self.redrawn = 0..0;
        if since == vga.changes {
            return false;
        }
        // Runs of written rows, each drawn in one call.
        let mut row = 0;
        while row < layout.rows {
            if !vga.row_written_since(&layout, row, since) {
                row += 1;
                continue;
            }
            let first = row;
            while row < layout.rows && vga.row_written_since(&layout, row, since) {
                row += 1;
            }
            vga.draw_rows(now, &layout, &mut self.frame, first..row);
            if self.redrawn.is_empty() {
                self.redrawn.start = first * layout.row_height;
            }
            self.redrawn.end = row * layout.row_height;
        }
        !self.redrawn.is_empty()
    }

    /// The picture as of the last update (empty before the first).
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The pixel lines the last update redrew, as one range from the first to the last
    /// (all of them after a full redraw, none when it returned false): a window may
    /// upload only these.
    pub fn redrawn_lines(&self) -> Range<usize> {
        self.redrawn.clone()
    }
}

/// The VGA's PCI vendor and device: QEMU's "std" VGA, which VGA BIOSes and Linux's
/// bochs driver know.
pub const PCI_ID: (u16, u16) = (0x1234, 0x1111);

/// The VGA's PCI function, as QEMU's "std" VGA: 1234:1111, a display controller (class
/// 0300h) whose BAR 0 is the 16 MiB prefetchable linear framebuffer, at `lfb_base` with
/// memory decoding on from reset (a BIOS that does not assign BARs, like ours, leaves it
/// there; a guest may move it).
pub fn pci_config_space(lfb_base: u32) -> crate::pci::ConfigSpace {
    let (vendor, device) = PCI_ID;
    let mut space = crate::pci::ConfigSpace::new(vendor, device, 0x03_00_00, 0x02, 0x00);
    space.set_u16(0x04, 0x0003); // I/O and memory space
    space.set_writable(0x04, 0x0003, 2);
    let size = dispi::MEMORY_SIZE as u32;
    space.set_u32(0x10, (lfb_base & !(size - 1)) | 0x8); // prefetchable, 32-bit
    space.set_writable(0x10, !(size - 1), 4);
    space.set_u16(0x2C, 0x1AF4); // subsystem vendor, as QEMU
    space.set_u16(0x2E, 0x1100);
    space
}

impl PortDevice for Vga {
    fn read(&mut self, port: u16, size: u8, now: Nanos) -> u32 {
        match port {
            dispi::INDEX_PORT => return self.dispi.read_index() as u32,
            dispi::DATA_PORT | 0x1D0 => return self.dispi.read_data() as u32,
            _ => {}
        }
        let mut v = 0u32;
        for i in 0..size.min(4) {
            v |= (self.read_port(port.wrapping_add(i as u16), now) as u32) << (8 * i);
        }
        v
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos) {
        match port {
            dispi::INDEX_PORT => return self.dispi.write_index(value as u16),
            dispi::DATA_PORT | 0x1D0 => {
                self.changes += 1;
                // A bank switch moves only the CPU's window, not the picture.
                if self.dispi.read_index() != dispi::INDEX_BANK {
                    self.stamps.registers = self.changes;
                }
                return self.dispi.write_data(value as u16);
            }
            _ => {}
        }
        // A 16-bit OUT to an index port writes the index, then the data port.
        for i in 0..size.min(4) {
            self.write_port(port.wrapping_add(i as u16), (value >> (8 * i)) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(v: &mut Vga, port: u16, value: u8) {
        v.write(port, 1, value as u32, 0);
    }
    fn seq(v: &mut Vga, i: u8, value: u8) {
        out(v, 0x3C4, i);
        out(v, 0x3C5, value);
    }
    fn gc(v: &mut Vga, i: u8, value: u8) {
        out(v, 0x3CE, i);
        out(v, 0x3CF, value);
    }
    fn crtc(v: &mut Vga, i: u8, value: u8) {
        out(v, 0x3D4, i);
        out(v, 0x3D5, value);
    }
    fn attr(v: &mut Vga, i: u8, value: u8) {
        v.read(0x3DA, 1, 0); // reset the flip-flop
        out(v, 0x3C0, i);
        out(v, 0x3C0, value);
    }

    /// The registers of 80x25 colour text (mode 3), as a BIOS programs them.
    fn text_mode() -> Vga {
        let mut v = Vga::new();
        out(&mut v, 0x3C2, 0x67);
        for (i, x) in [0x03, 0x00, 0x03, 0x00, 0x02].into_iter().enumerate() {
            seq(&mut v, i as u8, x);
        }
        crtc(&mut v, 0x11, 0); // unprotect
        let crtc_regs = [
            0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00,
            0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF,
        ];
        for (i, x) in crtc_regs.into_iter().enumerate() {
            crtc(&mut v, i as u8, x);
        }
        for (i, x) in [0, 0, 0, 0, 0, 0x10, 0x0E, 0, 0xFF].into_iter().enumerate() {
            gc(&mut v, i as u8, x);
        }
        for i in 0..16u8 {
            attr(&mut v, i, i);
        }
        attr(&mut v, 0x10, 0x0C);
        attr(&mut v, 0x12, 0x0F);
        out(&mut v, 0x3C0, 0x20); // palette address source: display on
                                  // DAC entry i = grey level i, so colours are easy to check.
        out(&mut v, 0x3C8, 0);
        for i in 0..256u32 {
            for _ in 0..3 {
                out(&mut v, 0x3C9, (i & 0x3F) as u8);
            }
        }
        v
    }

    #[test]
    fn dac_write_then_read_back() {
        let mut v = Vga::new();
        out(&mut v, 0x3C8, 5);
        for c in [0x11, 0x22, 0x33, 0x3F, 0x40, 0x01] {
            out(&mut v, 0x3C9, c);
        }
        out(&mut v, 0x3C7, 5);
        let read: Vec<u32> = (0..6).map(|_| v.read(0x3C9, 1, 0)).collect();
        assert_eq!(
            read,
            [0x11, 0x22, 0x33, 0x3F, 0x00, 0x01],
            "6-bit, auto-increment"
        );
        assert_eq!(v.read(0x3C7, 1, 0), 3, "DAC state: read mode");
        assert_eq!(v.read(0x3C8, 1, 0), 7);
    }

    #[test]
    fn attribute_flip_flop_and_crtc_protection() {
        let mut v = text_mode();
        v.read(0x3DA, 1, 0);
        out(&mut v, 0x3C0, 0x21);
        out(&mut v, 0x3C0, 0x3F);
        assert_eq!(v.read(0x3C0, 1, 0), 0x21);
        assert_eq!(v.read(0x3C1, 1, 0), 0x3F);
        // CR11 bit 7 protects CR00-07, but not CR07 bit 4.
        crtc(&mut v, 0x11, 0x80);
        crtc(&mut v, 0x01, 0x27);
        crtc(&mut v, 0x07, 0x00);
        out(&mut v, 0x3D4, 1);
        assert_eq!(v.read(0x3D5, 1, 0), 0x4F);
        out(&mut v, 0x3D4, 7);
        assert_eq!(v.read(0x3D5, 1, 0), 0x0F);
        // 16-bit OUT: index then data.
        v.write(0x3CE, 2, 0x0508, 0);
        assert_eq!(v.gc[8], 0x05);
        // With the mono CRTC selected, 3D4h no longer answers.
        out(&mut v, 0x3C2, 0x66);
        assert_eq!(v.read(0x3D4, 1, 0), 0xFF);
        out(&mut v, 0x3B4, 0x0E);
        assert_eq!(v.read(0x3B4, 1, 0), 0x0E);
    }

    #[test]
    fn odd_even_text_memory() {
        let mut v = text_mode();
        v.mem_write(0xB8000, b'A');
        v.mem_write(0xB8001, 0x1F);
        v.mem_write(0xB8002, b'B');
        assert_eq!(v.plane_byte(0, 0), b'A');
        assert_eq!(v.plane_byte(1, 0), 0x1F);
        assert_eq!(v.plane_byte(0, 2), b'B');
        assert_eq!(v.plane_byte(2, 0), 0, "plane 2 untouched");
        assert_eq!(v.mem_read(0xB8001), 0x1F);
        assert_eq!(v.mem_read(0xA0000), 0xFF, "outside the B8000 window");
        v.mem_write(0xA0000, 1);
        assert_eq!(v.plane_byte(0, 0), b'A');
        assert_eq!(v.text_rows()[0][..2], [b'A', b'B']);
    }

    #[test]
    fn write_modes_latches_and_read_mode_1() {
        let mut v = Vga::new();
        seq(&mut v, 2, 0x0F);
        seq(&mut v, 4, 0x06); // sequential addressing
        gc(&mut v, 6, 0x05); // graphics, A0000 64K
        gc(&mut v, 8, 0xFF);
        // Write mode 0 with set/reset on planes 0 and 2.
        gc(&mut v, 0, 0x05);
        gc(&mut v, 1, 0x05);
        v.mem_write(0xA0010, 0x3C);
        assert_eq!(
            (0..4).map(|p| v.plane_byte(p, 0x10)).collect::<Vec<_>>(),
            [0xFF, 0x3C, 0xFF, 0x3C]
        );
        // Bit mask keeps the latched bits.
        gc(&mut v, 1, 0);
        v.mem_read(0xA0010);
        gc(&mut v, 8, 0x0F);
        v.mem_write(0xA0010, 0x00);
        assert_eq!(v.plane_byte(0, 0x10), 0xF0);
        assert_eq!(v.plane_byte(1, 0x10), 0x30);
        // Write mode 1 copies the latches (a screen-to-screen copy).
        gc(&mut v, 5, 0x01);
        v.mem_read(0xA0010);
        v.mem_write(0xA0020, 0x99);
        assert_eq!(v.plane_byte(0, 0x20), 0xF0);
        assert_eq!(v.plane_byte(3, 0x20), 0x30);
        // Write mode 2: colour 0b1001 in the bit-masked pixels, with XOR.
        gc(&mut v, 5, 0x02);
        gc(&mut v, 8, 0x81);
        gc(&mut v, 3, 0x18);
        v.mem_read(0xA0030);
        v.mem_write(0xA0030, 0x09);
        assert_eq!(v.plane_byte(0, 0x30), 0x81);
        assert_eq!(v.plane_byte(1, 0x30), 0x00);
        assert_eq!(v.plane_byte(3, 0x30), 0x81);
        // Write mode 3: rotated data ANDed with the bit mask, set/reset as colour.
        gc(&mut v, 3, 0x01); // rotate right 1, replace
        gc(&mut v, 5, 0x03);
        gc(&mut v, 8, 0xFF);
        gc(&mut v, 0, 0x02);
        v.mem_read(0xA0040);
        v.mem_write(0xA0040, 0x06);
        assert_eq!(v.plane_byte(1, 0x40), 0x03);
        assert_eq!(v.plane_byte(0, 0x40), 0x00);
        // Read mode 1: where do planes 0 and 3 match colour 1001?
        gc(&mut v, 5, 0x08);
        gc(&mut v, 2, 0x09);
        gc(&mut v, 7, 0x09);
        assert_eq!(v.mem_read(0xA0030), 0x81);
        // The map mask keeps planes out of a write.
        gc(&mut v, 5, 0);
        gc(&mut v, 3, 0);
        gc(&mut v, 0, 0);
        seq(&mut v, 2, 0x04);
        v.mem_write(0xA0050, 0x77);
        assert_eq!(v.plane_byte(2, 0x50), 0x77);
        assert_eq!(v.plane_byte(1, 0x50), 0);
        // Read map select.
        gc(&mut v, 4, 2);
        assert_eq!(v.mem_read(0xA0050), 0x77);
    }

    #[test]
    fn chain4_addressing() {
        let mut v = Vga::new();
        seq(&mut v, 2, 0x0F);
        seq(&mut v, 4, 0x0E);
        gc(&mut v, 6, 0x05);
        gc(&mut v, 8, 0xFF);
        for (i, b) in [10u8, 11, 12, 13, 14].into_iter().enumerate() {
            v.mem_write(0xA0100 + i as u64, b);
        }
        assert_eq!(v.plane_byte(0, 0x100), 10);
        assert_eq!(v.plane_byte(3, 0x100), 13);
        assert_eq!(v.plane_byte(0, 0x104), 14);
        assert_eq!(v.mem_read(0xA0102), 12);
    }

    /// A glyph for 'H' in plane 2, then the rendered cell checked pixel by pixel.
    #[test]
    fn text_rendering_uses_the_font_in_plane_2() {
        let mut v = text_mode();
        let glyph = [
            0x00, 0x00, 0xC6, 0xC6, 0xC6, 0xFE, 0xC6, 0xC6, 0xC6, 0, 0, 0, 0, 0, 0, 0,
        ];
        // Load the font as a BIOS does: plane 2, sequential, A0000.
        seq(&mut v, 2, 0x04);
        seq(&mut v, 4, 0x06);
        gc(&mut v, 4, 0x02);
        gc(&mut v, 5, 0x00);
        gc(&mut v, 6, 0x04);
        for (i, row) in glyph.iter().enumerate() {
            v.mem_write(0xA0000 + b'H' as u64 * 32 + i as u64, *row);
        }
        seq(&mut v, 2, 0x03);
        seq(&mut v, 4, 0x02);
        gc(&mut v, 4, 0x00);
        gc(&mut v, 5, 0x10);
        gc(&mut v, 6, 0x0E);
        // Row 1, column 2: 'H', white on blue (attr 1Fh); cursor elsewhere.
        let at = 0xB8000 + (80 + 2) * 2;
        v.mem_write(at, b'H');
        v.mem_write(at + 1, 0x1F);
        let mut f = Frame::default();
        v.render(0, &mut f);
        assert_eq!((f.width, f.height), (720, 400));
        assert_eq!(
            v.mode(),
            DisplayMode::Text {
                columns: 80,
                rows: 25
            }
        );
        let (fg, bg) = (v.dac_rgb(15), v.dac_rgb(1));
        for (line, bits) in glyph.iter().enumerate() {
            for x in 0..9 {
                let on = x < 8 && bits >> (7 - x) & 1 != 0;
                let px = f.pixels[(16 + line) * 720 + 2 * 9 + x];
                assert_eq!(px, if on { fg } else { bg }, "line {line} x {x}");
            }
        }
        assert_eq!(fg, 0x3C3C3C, "grey level 15 through the 6-bit DAC");
        // Blinking: attribute bit 7 hides the foreground half of the time.
        v.mem_write(at + 1, 0x9F);
        let (line_ns, lines) = v.timing();
        let frame_ns = line_ns * lines;
        v.render(0, &mut f);
        assert_eq!(f.pixels[(16 + 2) * 720 + 18], fg);
        v.render(16 * frame_ns, &mut f);
        assert_eq!(f.pixels[(16 + 2) * 720 + 18], v.dac_rgb(1));
        // The cursor: scan lines 13-14 of its cell, in the cell's foreground colour.
        crtc(&mut v, 0x0A, 13);
        crtc(&mut v, 0x0B, 14);
        crtc(&mut v, 0x0E, 0);
        crtc(&mut v, 0x0F, 80 + 2);
        v.mem_write(at + 1, 0x1F);
        v.render(0, &mut f);
        assert_eq!(f.pixels[(16 + 13) * 720 + 18 + 4], fg);
        assert_eq!(f.pixels[(16 + 12) * 720 + 18 + 4], bg);
        v.render(8 * frame_ns, &mut f);
        assert_eq!(f.pixels[(16 + 13) * 720 + 18 + 4], bg, "cursor blinks off");
    }

    #[test]
    fn blanked_until_the_palette_source_is_set() {
        let mut v = text_mode();
        v.mem_write(0xB8000, 0xDB);
        v.mem_write(0xB8001, 0x0F);
        v.read(0x3DA, 1, 0);
        out(&mut v, 0x3C0, 0x00); // PAS clear: the attribute palette is being written
        let mut f = Frame::default();
        v.render(0, &mut f);
        assert!(f.pixels.iter().all(|&p| p == 0));
    }

    /// From text mode to mode 13h: chain-4, 256-colour shift, doubleword CRTC, 320x200.
    fn set_mode_13h(v: &mut Vga) {
        seq(v, 1, 0x01);
        seq(v, 4, 0x0E);
        gc(v, 5, 0x40);
        gc(v, 6, 0x05);
        crtc(v, 0x01, 0x4F);
        crtc(v, 0x09, 0x41);
        crtc(v, 0x13, 0x28);
        crtc(v, 0x14, 0x40);
        crtc(v, 0x17, 0xA3);
        attr(v, 0x10, 0x41);
        out(v, 0x3C0, 0x20);
    }

    /// From mode 13h to a mode 12h style 640x480 planar 16-colour mode, byte mode.
    fn set_mode_12h(v: &mut Vga) {
        seq(v, 2, 0x0F);
        seq(v, 4, 0x06);
        gc(v, 5, 0x00);
        crtc(v, 0x09, 0x40);
        crtc(v, 0x12, 0xDF);
        crtc(v, 0x07, 0x3E);
        crtc(v, 0x14, 0x00);
        crtc(v, 0x17, 0xE3);
        attr(v, 0x10, 0x01);
        out(v, 0x3C0, 0x20);
    }

    #[test]
    fn mode_13h_and_planar_16_colour_rendering() {
        let mut v = text_mode();
        set_mode_13h(&mut v);
        assert_eq!(
            v.mode(),
            DisplayMode::Graphics {
                width: 320,
                height: 200,
                colours: 256
            }
        );
        v.mem_write(0xA0000 + 320 * 7 + 5, 42);
        let mut f = Frame::default();
        v.render(0, &mut f);
        assert_eq!(f.pixels[7 * 320 + 5], v.dac_rgb(42));
        assert_eq!(f.pixels[7 * 320 + 4], v.dac_rgb(0));
        // Mode 12h style: 640x480 planar, byte mode; pixel (9, 3) in colour 0Ah.
        set_mode_12h(&mut v);
        assert_eq!(
            v.mode(),
            DisplayMode::Graphics {
                width: 640,
                height: 480,
                colours: 16
            }
        );
        gc(&mut v, 5, 0x02);
        gc(&mut v, 8, 0x40);
        v.mem_read(0xA0000 + 3 * 80 + 1);
        v.mem_write(0xA0000 + 3 * 80 + 1, 0x0A);
        v.render(0, &mut f);
        assert_eq!(f.pixels[3 * 640 + 9], v.palette_rgb(0x0A));
        assert_eq!(f.pixels[3 * 640 + 8], v.palette_rgb(0));
    }

    #[test]
    fn retrace_follows_virtual_time() {
        let v = text_mode();
        let (line_ns, lines) = v.timing();
        assert_eq!(lines, 449, "70 Hz text timing");
        assert!((31_000..32_500).contains(&line_ns));
        let mut v = v;
        assert_eq!(v.read(0x3DA, 1, 0) & 8, 0, "top of frame: no retrace");
        let in_retrace = v.read(0x3DA, 1, 0x19C * line_ns + 10);
        assert_eq!(in_retrace & 9, 9, "line 412: retrace and blanking");
        assert_eq!(v.read(0x3DA, 1, 5 * line_ns + 10) & 1, 0, "displaying");
        assert_eq!(
            v.read(0x3DA, 1, 5 * line_ns + line_ns * 9 / 10) & 1,
            1,
            "hblank"
        );
    }

    #[test]
    fn hostile_register_values_do_not_panic() {
        let mut v = Vga::new();
        let mut f = Frame::default();
        for round in 0..64u32 {
            let x = round.wrapping_mul(2_654_435_761);
            for (i, port) in [0x3C4u16, 0x3CE, 0x3D4].into_iter().enumerate() {
                for r in 0..0x20u8 {
                    v.write(port, 1, r as u32, 0);
                    v.write(port + 1, 1, x.rotate_left(r as u32 + i as u32), 0);
                }
            }
            v.write(0x3C2, 1, x, 0);
            v.read(0x3DA, 1, 0);
            for r in 0..0x20u8 {
                out(&mut v, 0x3C0, r | 0x20);
                out(&mut v, 0x3C0, x.rotate_right(r as u32) as u8);
            }
            v.mem_write(0xA0000 + (x as u64 & 0x1FFFF), x as u8);
            v.mem_read(0xB8000 + (x as u64 & 0x7FFF));
            v.render(x as u64 * 1000, &mut f);
            v.read(0x3DA, 1, u64::MAX - x as u64);
            let _ = v.text_rows();
        }
    }

    fn dispi_set(v: &mut Vga, index: u16, value: u16) {
        v.write(dispi::INDEX_PORT, 2, index as u32, 0);
        v.write(dispi::DATA_PORT, 2, value as u32, 0);
    }

    /// Text mode, then the dispi interface enabled at `width` x `height` x `bpp` with
    /// the linear framebuffer.
    fn linear_mode(width: u16, height: u16, bpp: u16) -> Vga {
        let mut v = text_mode();
        dispi_set(&mut v, dispi::INDEX_XRES, width);
        dispi_set(&mut v, dispi::INDEX_YRES, height);
        dispi_set(&mut v, dispi::INDEX_BPP, bpp);
        dispi_set(
            &mut v,
            dispi::INDEX_ENABLE,
            dispi::ENABLED | dispi::LFB_ENABLED,
        );
        v
    }

    #[test]
    fn dispi_linear_modes_render_every_depth() {
        for bpp in [8u16, 15, 16, 24, 32] {
            let mut v = linear_mode(40, 30, bpp);
            assert_eq!(
                v.mode(),
                DisplayMode::Linear {
                    width: 40,
                    height: 30,
                    bpp
                }
            );
            let bytes = dispi::bytes_per_pixel(bpp);
            // Pixel (3, 2): pure red at every depth (DAC entry 0x3F is grey 0x3F in the
            // test palette, so 8 bpp uses white).
            let red: Vec<u8> = match bpp {
                8 => vec![0x3F],
                15 => 0x7C00u16.to_le_bytes().to_vec(),
                16 => 0xF800u16.to_le_bytes().to_vec(),
                24 => vec![0, 0, 0xFF],
                _ => vec![0, 0, 0xFF, 0],
            };
            let at = (2 * 40 + 3) * bytes;
            for (i, b) in red.iter().enumerate() {
                v.lfb_write(at + i, *b);
            }
            let mut f = Frame::default();
            v.render(0, &mut f);
            assert_eq!((f.width, f.height), (40, 30));
            let want = if bpp == 8 { 0xFFFFFF } else { 0xFF0000 };
            assert_eq!(f.pixels[2 * 40 + 3], want, "{bpp} bpp");
            assert_eq!(f.pixels[2 * 40 + 4], 0);
            // A wider virtual screen and a display start move the picture.
            dispi_set(&mut v, dispi::INDEX_VIRT_WIDTH, 64);
            dispi_set(&mut v, dispi::INDEX_X_OFFSET, 1);
            dispi_set(&mut v, dispi::INDEX_Y_OFFSET, 1);
            let at = (3 * 64 + 5) * bytes;
            for (i, b) in red.iter().enumerate() {
                v.lfb_write(at + i, *b);
            }
            v.render(0, &mut f);
            assert_eq!(f.pixels[2 * 40 + 4], want, "{bpp} bpp, panned");
        }
    }

    #[test]
    fn dispi_banks_through_the_a0000_window() {
        let mut v = text_mode();
        dispi_set(&mut v, dispi::INDEX_BPP, 8);
        dispi_set(&mut v, dispi::INDEX_ENABLE, dispi::ENABLED);
        dispi_set(&mut v, dispi::INDEX_BANK, 2);
        v.mem_write(0xA_0004, 0x77);
        assert_eq!(v.lfb_read(0x2_0004), 0x77);
        assert_eq!(v.mem_read(0xA_0004), 0x77);
        assert_eq!(v.mem_read(0xB_8000), 0xFF, "no text window while enabled");
        assert_eq!(v.plane_byte(0, 0), 0, "VGA planes untouched");
        dispi_set(&mut v, dispi::INDEX_ENABLE, 0);
        assert!(matches!(v.mode(), DisplayMode::Text { .. }));
    }

    /// A xorshift64 generator: the same pseudo-random guest on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    /// Updates `screen` and checks its frame against a full render at the same time;
    /// returns what the update returned.
    fn update_and_compare(screen: &mut Screen, v: &Vga, now: Nanos, what: &str) -> bool {
        let before = screen.frame().clone();
        let changed = screen.update(v, now);
        let mut full = Frame::default();
        v.render(now, &mut full);
        let f = screen.frame();
        assert_eq!((f.width, f.height), (full.width, full.height), "{what}");
        if let Some(i) = (0..full.pixels.len()).find(|&i| f.pixels[i] != full.pixels[i]) {
            panic!(
                "{what}: pixel ({}, {}) is {:06X}, a full render draws {:06X}",
                i % full.width,
                i / full.width,
                f.pixels[i],
                full.pixels[i]
            );
        }
        if !changed {
            assert!(before == *f, "{what}: false, yet the frame changed");
        }
        changed
    }

    /// Text mode with pseudo-random glyphs in all of plane 2 (every character map
    /// select then shows something) and pseudo-random characters in every cell.
    fn text_mode_with_font(rng: &mut Rng) -> Vga {
        let mut v = text_mode();
        write_font(&mut v, rng, 0, PLANE_SIZE as u64);
        for i in 0..80 * 25 * 2 {
            v.mem_write(0xB8000 + i, rng.byte());
        }
        v
    }

    /// Writes `count` random bytes of plane 2 from `at`, then returns to text mode. The
    /// switches write only registers the picture does not depend on, so only the font
    /// stamps tell a screen about the new glyphs.
    fn write_font(v: &mut Vga, rng: &mut Rng, at: u64, count: u64) {
        seq(v, 2, 0x04);
        seq(v, 4, 0x06);
        gc(v, 4, 0x02);
        gc(v, 5, 0x00);
        gc(v, 6, 0x04);
        for i in 0..count {
            v.mem_write(0xA0000 + (at + i) % 0x10000, rng.byte());
        }
        seq(v, 2, 0x03);
        seq(v, 4, 0x02);
        gc(v, 4, 0x00);
        gc(v, 5, 0x10);
        gc(v, 6, 0x0E);
    }

    #[test]
    fn screen_follows_random_text_mode_writes() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut v = text_mode_with_font(&mut rng);
        let (line_ns, lines) = v.timing();
        let frame_ns = line_ns * lines;
        let mut screen = Screen::new();
        let mut now = 0;
        assert!(update_and_compare(&mut screen, &v, now, "first"));
        let mut partial = 0;
        for step in 0..1500 {
            match rng.below(100) {
                0..=69 => v.mem_write(0xB8000 + rng.below(0x1400), rng.byte()),
                70..=74 => {
                    let at = (v.start_and_stride().0 as u64 + rng.below(2000)) as u16;
                    crtc(&mut v, 0x0E, (at >> 8) as u8);
                    crtc(&mut v, 0x0F, at as u8);
                }
                75..=76 => {
                    let at = rng.below(400) as u16;
                    crtc(&mut v, 0x0C, (at >> 8) as u8);
                    crtc(&mut v, 0x0D, at as u8);
                }
                77..=80 => {
                    // A glyph of a font in use.
                    let at = v.font_base(rng.byte()) as u64 + rng.below(256) * 32;
                    write_font(&mut v, &mut rng, at, 16);
                }
                81 => attr(&mut v, 0x10, 0x0C ^ (rng.byte() & 8)),
                82 => {
                    out(&mut v, 0x3C8, rng.byte());
                    out(&mut v, 0x3C9, rng.byte());
                }
                83 => seq(&mut v, 3, rng.byte() & 0x3F),
                _ => {}
            }
            if rng.below(5) == 0 {
                now += rng.below(3 * frame_ns);
                let before = screen.drawn.map(|d| d.changes);
                update_and_compare(&mut screen, &v, now, &format!("text step {step}"));
                partial += (screen.redrawn_lines().len() < screen.frame().height
                    && before.is_some()) as u32;
            }
        }
        assert!(partial > 50, "only {partial} partial updates");
    }

    #[test]
    fn screen_follows_random_256_colour_writes() {
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let mut v = text_mode();
        set_mode_13h(&mut v);
        let mut screen = Screen::new();
        assert!(update_and_compare(&mut screen, &v, 0, "first"));
        for step in 0..3000 {
            match rng.below(100) {
                0..=89 => v.mem_write(0xA0000 + rng.below(0x10000), rng.byte()),
                90 => {
                    out(&mut v, 0x3C8, rng.byte());
                    out(&mut v, 0x3C9, rng.byte());
                }
                91 => {
                    // Panning, by whole doublewords and lines.
                    let at = rng.below(0x4000) as u16;
                    crtc(&mut v, 0x0C, (at >> 8) as u8);
                    crtc(&mut v, 0x0D, at as u8);
                }
                92 => {
                    // Registers that steer only the CPU's writes.
                    seq(&mut v, 2, rng.byte() & 0xF);
                    gc(&mut v, 8, rng.byte());
                }
                _ => {}
            }
            if rng.below(20) == 0 {
                update_and_compare(&mut screen, &v, step, &format!("13h step {step}"));
            }
        }
    }

    #[test]
    fn screen_follows_random_planar_16_colour_writes() {
        let mut rng = Rng(0x0DDB_A11C_AFE5_EED5);
        let mut v = text_mode();
        set_mode_13h(&mut v);
        set_mode_12h(&mut v);
        let mut screen = Screen::new();
        assert!(update_and_compare(&mut screen, &v, 0, "first"));
        for step in 0..3000 {
            match rng.below(100) {
                0..=79 => {
                    let at = 0xA0000 + rng.below(0x10000);
                    v.mem_read(at); // load the latches, as drawing code does
                    v.mem_write(at, rng.byte());
                }
                80..=84 => gc(&mut v, 5, rng.byte() & 3),
                85..=87 => gc(&mut v, 8, rng.byte()),
                88 => {
                    gc(&mut v, 0, rng.byte() & 0xF);
                    gc(&mut v, 1, rng.byte() & 0xF);
                }
                89 => gc(&mut v, 3, rng.byte() & 0x1F),
                90 => seq(&mut v, 2, rng.byte() & 0xF),
                91 => attr(&mut v, rng.byte() & 0xF, rng.byte() & 0x3F),
                92 => attr(&mut v, 0x12, rng.byte() & 0xF),
                93 => out(&mut v, 0x3C0, 0x20),
                _ => {}
            }
            if rng.below(20) == 0 {
                update_and_compare(&mut screen, &v, step, &format!("planar step {step}"));
            }
        }
    }

    #[test]
    fn screen_follows_random_dispi_writes() {
        for bpp in [8u16, 16, 32] {
            let mut rng = Rng(0xB0C5_0000 + bpp as u64);
            let mut v = text_mode();
            dispi_set(&mut v, dispi::INDEX_XRES, 320);
            dispi_set(&mut v, dispi::INDEX_YRES, 200);
            dispi_set(&mut v, dispi::INDEX_BPP, bpp);
            let mut screen = Screen::new();
            assert!(update_and_compare(&mut screen, &v, 0, "text first"));
            dispi_set(
                &mut v,
                dispi::INDEX_ENABLE,
                dispi::ENABLED | dispi::LFB_ENABLED,
            );
            assert!(update_and_compare(&mut screen, &v, 0, "enabled"));
            let bytes = dispi::bytes_per_pixel(bpp) as u64;
            for step in 0..3000 {
                match rng.below(100) {
                    0..=79 => {
                        let at = rng.below(320 * 240 * bytes) as usize;
                        v.lfb_write(at, rng.byte());
                    }
                    80..=86 => {
                        dispi_set(&mut v, dispi::INDEX_BANK, rng.below(3) as u16);
                        v.mem_write(0xA0000 + rng.below(0x10000), rng.byte());
                    }
                    87 => dispi_set(&mut v, dispi::INDEX_Y_OFFSET, rng.below(40) as u16),
                    // Far enough down that the picture wraps round the memory.
                    88 => dispi_set(&mut v, dispi::INDEX_Y_OFFSET, rng.next() as u16),
                    89 => {
                        // Near the end of memory, where a wrapped picture shows it.
                        let at = dispi::MEMORY_SIZE - 1 - rng.below(0x10000) as usize;
                        v.lfb_write(at, rng.byte());
                    }
                    90 => {
                        out(&mut v, 0x3C8, rng.byte());
                        out(&mut v, 0x3C9, rng.byte());
                    }
                    91 => dispi_set(&mut v, dispi::INDEX_VIRT_WIDTH, 320 + rng.below(64) as u16),
                    _ => {}
                }
                if rng.below(20) == 0 {
                    let what = format!("{bpp} bpp step {step}");
                    update_and_compare(&mut screen, &v, step, &what);
                }
            }
        }
    }

    /// Any register, any value, any memory: whatever the guest does, the screen
    /// matches a full render (a register the picture depends on but that does not
    /// bump the register stamp would show here).
    #[test]
    fn screen_follows_random_registers() {
        let mut rng = Rng(0xC0FF_EE00_1234_5678);
        let mut v = text_mode();
        let mut screen = Screen::new();
        let mut now = 0;
        for round in 0..300 {
            for _ in 0..8 {
                let port = [
                    0x3C0, 0x3C2, 0x3C4, 0x3C5, 0x3C6, 0x3C8, 0x3C9, 0x3CE, 0x3CF,
                ][rng.below(9) as usize];
                let port = match rng.below(4) {
                    0 => 0x3D4,
                    1 => 0x3D5,
                    _ => port,
                };
                // Mostly small indices, so that real registers are hit.
                let value = if matches!(port, 0x3C4 | 0x3CE | 0x3D4) {
                    rng.below(0x1A) as u8
                } else {
                    rng.byte()
                };
                out(&mut v, port, value);
            }
            if rng.below(4) == 0 {
                dispi_set(&mut v, dispi::INDEX_XRES, 8 + rng.below(200) as u16);
                dispi_set(&mut v, dispi::INDEX_YRES, 8 + rng.below(200) as u16);
                dispi_set(
                    &mut v,
                    dispi::INDEX_BPP,
                    [8, 15, 16, 24, 32][rng.below(5) as usize],
                );
                dispi_set(&mut v, dispi::INDEX_ENABLE, rng.below(2) as u16);
            }
            for _ in 0..64 {
                if rng.below(2) == 0 {
                    v.mem_write(0xA0000 + rng.below(0x20000), rng.byte());
                } else {
                    v.lfb_write(rng.below(0x20000) as usize, rng.byte());
                }
            }
            now += rng.below(50_000_000);
            update_and_compare(&mut screen, &v, now, &format!("round {round}"));
        }
    }

    #[test]
    fn screen_without_writes_has_nothing_to_do() {
        let mut v = text_mode();
        set_mode_13h(&mut v);
        let mut screen = Screen::new();
        assert!(screen.update(&v, 0), "the first update draws");
        assert!(!screen.update(&v, 0));
        assert!(!screen.update(&v, 1_000_000_000), "no blinking in graphics");
        assert_eq!(screen.redrawn_lines(), 0..0);
        // Index registers and those that steer the CPU's writes only do not redraw.
        seq(&mut v, 2, 0x03);
        gc(&mut v, 8, 0x55);
        gc(&mut v, 5, 0x42);
        v.mem_read(0xA0000);
        assert!(!update_and_compare(
            &mut screen,
            &v,
            0,
            "CPU-side registers"
        ));
    }

    #[test]
    fn one_write_redraws_its_line_only() {
        let mut v = linear_mode(1024, 768, 32);
        let mut screen = Screen::new();
        assert!(screen.update(&v, 0));
        assert!(!screen.update(&v, 0));
        v.lfb_write((100 * 1024 + 7) * 4 + 1, 0xFF);
        assert!(update_and_compare(&mut screen, &v, 0, "one write"));
        assert_eq!(screen.redrawn_lines(), 100..101);
        assert_eq!(screen.frame().pixels[100 * 1024 + 7], 0x00FF00);
        // Text: one cell write redraws its character row.
        let mut v = text_mode();
        let mut screen = Screen::new();
        screen.update(&v, 0);
        v.mem_write(0xB8000 + (3 * 80 + 5) * 2 + 1, 0x70);
        assert!(update_and_compare(&mut screen, &v, 0, "one cell"));
        let lines = screen.redrawn_lines();
        assert!(lines.start <= 3 * 16 && lines.end >= 4 * 16, "{lines:?}");
        assert!(
            lines.len() <= 2 * 16,
            "{lines:?}: the row and at most one neighbour"
        );
    }

    /// A restored snapshot is a different device whose `changes` may equal what the
    /// screen saw of the old one: the screen must redraw it whole.
    #[test]
    fn screen_redraws_a_restored_snapshot() {
        let mut rng = Rng(77);
        let mut v = text_mode_with_font(&mut rng);
        let saved = serde_json::to_string(&v).unwrap();
        let mut screen = Screen::new();
        for i in 0..10 {
            v.mem_write(0xB8000 + i * 2, b'X');
        }
        update_and_compare(&mut screen, &v, 0, "before the restore");
        let mut restored: Vga = serde_json::from_str(&saved).unwrap();
        while restored.changes() < v.changes() {
            restored.mem_write(0xB8000 + 3000, b'Y');
        }
        assert_eq!(restored.changes(), v.changes());
        assert!(update_and_compare(&mut screen, &restored, 0, "restored"));
        // The stamps are no part of the state: equal guests serialize alike however
        // their screens went.
        let mut a = text_mode();
        let mut b = text_mode();
        a.mem_write(0xB8000, 1);
        Screen::new().update(&a, 0);
        b.mem_write(0xB8000, 1);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    /// The cost of an update after one small write against a full render, at
    /// 1024x768x32: `cargo test --release -p hospes-devices screen_timing -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn screen_timing() {
        let mut v = linear_mode(1024, 768, 32);
        let mut screen = Screen::new();
        screen.update(&v, 0);
        let rounds = 200u32;
        let t = std::time::Instant::now();
        for i in 0..rounds {
            v.lfb_write(i as usize * 4096 + 16, i as u8);
            assert!(screen.update(&v, 0));
        }
        let incremental = t.elapsed() / rounds;
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            assert!(!screen.update(&v, 0));
        }
        let idle = t.elapsed() / rounds;
        let mut f = Frame::default();
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            v.render(0, &mut f);
        }
        let full = t.elapsed() / rounds;
        println!("1024x768x32: update after one write {incremental:?}, update without writes {idle:?}, full render {full:?}");
    }
}
