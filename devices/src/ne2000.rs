//! An NE2000-compatible Ethernet card: a National DP8390 core with 32 KiB of buffer RAM
//! and a station-address PROM, presented either as an ISA NE2000 or, with
//! [`rtl8029_config_space`], as the PCI Realtek RTL8029 that Linux's ne2k-pci drives.
//!
//! # The hardware
//!
//! The card decodes 32 ports from its base:
//!
//! - 0x00-0x0F: the DP8390's registers, in pages selected by CR.PS (bits 7-6). Reading
//!   and writing the same offset often reach different registers (page 0 reads status:
//!   CLDA, TSR, NCR, ISR, CRDA, RSR, the tally counters; page 0 writes configuration:
//!   PSTART, PSTOP, TPSR, TBCR, RSAR, RBCR, RCR, TCR, DCR, IMR). Page 1 holds the
//!   station address (PAR0-5), CURR and the multicast filter (MAR0-7); page 2 reads back
//!   the page 0 configuration registers. Page 3 is Realtek's configuration page: it
//!   reads as 0 here and ignores writes (ne2k-pci only writes it to force full duplex).
//!   Page 0 offsets 0x0A/0x0B read the RTL8029 ID bytes 'P' 'C' (0x50, 0x43).
//! - 0x10-0x17: the data port of the remote DMA, the only way the host reaches card
//!   memory. The driver sets RSAR (address) and RBCR (count) and issues a remote read
//!   or write in CR.RD; each access then moves one unit (a byte, or a word when DCR.WTS
//!   is set) and advances the address; when the count reaches 0, ISR.RDC is set.
//! - 0x18-0x1F: the reset port. A read resets the DP8390 (CR = 0x21: stopped, remote
//!   DMA aborted; ISR.RST set; IMR cleared); writes are ignored (drivers write back
//!   what they read).
//!
//! The card's address space as the remote DMA sees it: 0x0000-0x001F is the PROM,
//! 0x4000-0xBFFF the 32 KiB buffer RAM (pages 0x40-0xBF; Linux's ne and ne2k-pci
//! drivers use pages 0x40-0x7F, the first 16 KiB, and never look further), anything
//! else reads 0xFF and ignores writes. When the remote DMA address reaches PSTOP it
//! wraps to PSTART, as on the DP8390, so a driver can read a frame that wraps around
//! the receive ring with a single transfer.
//!
//! The PROM holds 16 bytes: the MAC address, zeros, and 'W' 'W' at 0x0E/0x0F (the
//! signature drivers use to tell an NE1000/NE2000 from clones). It sits on the card's
//! low address bits shifted by one, so every PROM byte appears at two consecutive
//! addresses: a byte-wide read of 32 bytes gives each byte twice (how Linux's ne.c
//! recognises a 16-bit card), and a word read at address 2k gives PROM byte k in both
//! halves.
//!
//! # Choices
//!
//! - Word mode (DCR.WTS = 1): every data port access moves at least one word. A byte
//!   access moves a word and returns its low byte (ne2k-pci reads the PROM with `inb`
//!   in word mode and takes every byte it reads as the next PROM byte); a 16-bit access
//!   moves one word, a 32-bit access two words (as the RTL8029 does for ne2k-pci's
//!   32-bit I/O). In byte mode an access of n bytes moves n bytes. The remote DMA keeps
//!   moving data if the guest reads or writes past the count (the count stays at 0).
//! - Register accesses wider than a byte are split into byte accesses at consecutive
//!   offsets, as the ISA bus does for an 8-bit register window.
//! - Transmit is instantaneous in virtual time: CR.TXP copies TBCR bytes (at most 1536)
//!   from TPSR into the transmit queue the machine drains with
//!   [`Ne2000::take_transmitted`], then sets TSR.PTX and ISR.PTX. Frames are sent as the
//!   guest wrote them: the DP8390 does not pad short frames (drivers pad to 60 bytes
//!   themselves) and appends the CRC itself, which the machine's network backend does
//!   not want. In loopback mode (TCR.LB != 0) the frame goes to the card's own receiver
//!   instead of the wire.
//! - Receive: [`Ne2000::receive`] applies the address filter and stores the frame in the
//!   ring with the DP8390's 4-byte header: receive status (RSR), next page, byte count.
//!   The byte count includes the 4-byte CRC, as on the real chip, and the CRC is stored
//!   after the data: Linux's 8390 driver takes `count - 4` as the frame length (it
//!   subtracts `sizeof(struct e8390_pkt_hdr)`, which happens to be 4 too) and QEMU's
//!   model also adds 4. Frames from outside shorter than 60 bytes are padded with zeros
//!   to 60, as the sender's NIC would have padded them on a real wire; so no runt comes
//!   from outside and RCR.AR only matters for short frames sent in loopback. Frames
//!   longer than 1518 bytes (1500 + header + VLAN tag) are refused: a 10 Mbit/s
//!   receiver never sees them.
//! - Ring space: a frame needs ceil((4 + length + 4) / 256) pages from CURR on; it is
//!   refused (ISR.OVW, RSR.MPA, CNTR2 incremented) if any page after CURR's, or the
//!   page CURR would move to, is BNRY's. So CURR never catches up with BNRY, which
//!   makes CURR == BNRY unambiguous for both driver conventions (Linux keeps BNRY one
//!   page behind the next frame to read; other drivers keep it on it).
//! - RCR.MON (monitor mode) refuses matching frames and counts them in CNTR2; the tally
//!   counters clear when read and set ISR.CNT when their top bit is set.
//! - ISR.RST is set by a reset and by the stop command, cleared by the start command
//!   or by writing 1 to it (Linux acknowledges it after a reset). It never interrupts.
//! - Nothing the guest does can make the card panic or grow without bound: all card
//!   memory accesses are checked, the transmit queue keeps the latest
//!   [`TX_QUEUE_LIMIT`] frames.

use crate::pci::ConfigSpace;
use crate::{Nanos, PortDevice};
use std::collections::VecDeque;

/// Buffer RAM size in bytes.
pub const RAM_SIZE: usize = 32 * 1024;
/// First card address of the buffer RAM (page 0x40).
pub const RAM_START: u16 = 0x4000;
/// Frames kept in the transmit queue until the machine takes them; older ones are
/// dropped first.
pub const TX_QUEUE_LIMIT: usize = 256;
/// The longest transmission: TBCR is clamped to this.
pub const MAX_TX_LEN: usize = 1536;
/// The longest frame (without CRC) the receiver accepts.
pub const MAX_RX_LEN: usize = 1518;
/// The shortest frame (without CRC) on the wire.
pub const MIN_FRAME_LEN: usize = 60;

// Port offsets.
const DATA_PORT: u16 = 0x10;
const RESET_PORT: u16 = 0x18;
const PORT_COUNT: u16 = 0x20;

// CR bits.
const CR_STP: u8 = 0x01;
const CR_STA: u8 = 0x02;
const CR_TXP: u8 = 0x04;
const CR_RD_MASK: u8 = 0x38;
const CR_RD_READ: u8 = 0x08;
const CR_RD_WRITE: u8 = 0x10;
const CR_RD_SEND: u8 = 0x18;
const CR_RD_ABORT: u8 = 0x20;

// ISR bits.
pub const ISR_PRX: u8 = 0x01;
pub const ISR_PTX: u8 = 0x02;
pub const ISR_RXE: u8 = 0x04;
pub const ISR_TXE: u8 = 0x08;
pub const ISR_OVW: u8 = 0x10;
pub const ISR_CNT: u8 = 0x20;
pub const ISR_RDC: u8 = 0x40;
pub const ISR_RST: u8 = 0x80;

// RCR bits.
const RCR_AR: u8 = 0x02;
const RCR_AB: u8 = 0x04;
const RCR_AM: u8 = 0x08;
const RCR_PRO: u8 = 0x10;
const RCR_MON: u8 = 0x20;

// RSR bits.
const RSR_PRX: u8 = 0x01;
const RSR_MPA: u8 = 0x10;
const RSR_PHY: u8 = 0x20;

// TSR bits.
const TSR_PTX: u8 = 0x01;

// DCR bits.
const DCR_WTS: u8 = 0x01;

/// The Ethernet CRC-32 register after `data` (reflected, initial all ones, not yet
/// complemented). The frame check sequence is its complement, sent low byte first.
fn crc32_register(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb != 0 {
                crc ^= 0xEDB8_8320;
            }
        }
    }
    crc
}

/// The multicast filter bit (0-63) for a destination address: the DP8390 takes the
/// top six bits of the CRC register in the order the bits go through it (the
/// bit-reversed register of [`crc32_register`]).
pub fn multicast_hash(addr: &[u8; 6]) -> u8 {
    (crc32_register(addr).reverse_bits() >> 26) as u8
}

/// The NE2000's state (all of it: snapshots serialize this).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ne2000 {
    /// The 16 PROM bytes (each appears at two consecutive card addresses).
    prom: [u8; 16],
    /// Buffer RAM, card addresses 0x4000-0xBFFF. Accesses are bounds checked, so a
    /// snapshot with a different length cannot make the card panic.
    ram: Vec<u8>,
    cr: u8,
    isr: u8,
    imr: u8,
    dcr: u8,
    tcr: u8,
    rcr: u8,
    pstart: u8,
    pstop: u8,
    bnry: u8,
    curr: u8,
    tpsr: u8,
    tbcr: u16,
    /// Remote DMA current address (RSAR as written, then advanced: CRDA on reads).
    rsar: u16,
    /// Remote DMA bytes left.
    rbcr: u16,
    tsr: u8,
    rsr: u8,
    /// Current local DMA address (where the receiver last wrote).
    clda: u16,
    par: [u8; 6],
    mar: [u8; 8],
    /// Tally counters: frame alignment errors, CRC errors, missed frames.
    cntr: [u8; 3],
    /// Frames transmitted and not yet taken by the machine.
    tx_queue: VecDeque<Vec<u8>>,
}

impl Ne2000 {
    /// A card with station address `mac`, just powered on (and reset).
    pub fn new(mac: [u8; 6]) -> Ne2000 {
        let mut prom = [0u8; 16];
        prom[..6].copy_from_slice(&mac);
        prom[14] = b'W';
        prom[15] = b'W';
        let mut card = Ne2000 {
            prom,
            ram: vec![0; RAM_SIZE],
            cr: 0,
            isr: 0,
            imr: 0,
            dcr: 0,
            tcr: 0,
            rcr: 0,
            pstart: 0,
            pstop: 0,
            bnry: 0,
            curr: 0,
            tpsr: 0,
            tbcr: 0,
            rsar: 0,
            rbcr: 0,
            tsr: 0,
            rsr: 0,
            clda: 0,
            par: [0; 6],
            mar: [0; 8],
            cntr: [0; 3],
            tx_queue: VecDeque::new(),
        };
        card.reset();
        card
    }

    /// The station address in the PROM (what the card was made with; PAR0-5 is what
    /// the driver programmed).
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.prom[..6]);
        mac
    }

    /// A hardware reset (the reset port, or the machine's reset line): the DP8390
    /// stops, aborts the remote DMA, masks every interrupt and flags ISR.RST. Memory,
    /// the ring pointers and the addresses keep their contents.
    pub fn reset(&mut self) {
        self.cr = CR_STP | CR_RD_ABORT;
        self.isr = ISR_RST;
        self.imr = 0;
        self.tcr = 0;
        self.rbcr = 0;
        self.tsr = 0;
    }

    /// The frames the guest transmitted since the last call, oldest first.
    pub fn take_transmitted(&mut self) -> Vec<Vec<u8>> {
        self.tx_queue.drain(..).collect()
    }

    /// The interrupt output: a pending, unmasked ISR bit (RST never interrupts).
    pub fn irq_level(&self) -> bool {
        self.isr & self.imr & 0x7F != 0
    }

    fn stopped(&self) -> bool {
        self.cr & CR_STP != 0 || self.cr & CR_STA == 0
    }

    fn loopback(&self) -> bool {
        self.tcr & 0x06 != 0
    }

    /// A frame arriving from the wire. Frames shorter than 60 bytes are padded to 60;
    /// returns whether the frame was stored in the receive ring.
    pub fn receive(&mut self, frame: &[u8]) -> bool {
        if self.stopped() || self.loopback() || frame.len() > MAX_RX_LEN {
            return false;
        }
        if frame.len() < MIN_FRAME_LEN {
            let mut padded = [0u8; MIN_FRAME_LEN];
            padded[..frame.len()].copy_from_slice(frame);
            self.accept(&padded)
        } else {
            self.accept(frame)
        }
    }

    /// The receiver proper: address filter, then the ring.
    fn accept(&mut self, frame: &[u8]) -> bool {
        if frame.len() < MIN_FRAME_LEN && self.rcr & RCR_AR == 0 {
            return false; // a runt
        }
        if frame.len() < 6 || !self.address_matches(frame) {
            return false;
        }
        let multicast = frame[0] & 1 != 0;
        if self.rcr & RCR_MON != 0 {
            self.count_missed();
            return false;
        }
        self.store(frame, multicast)
    }

    fn address_matches(&self, frame: &[u8]) -> bool {
        let mut dest = [0u8; 6];
        dest.copy_from_slice(&frame[..6]);
        if self.rcr & RCR_PRO != 0 {
            return true;
        }
        if dest == [0xFF; 6] {
            return self.rcr & RCR_AB != 0;
        }
        if dest[0] & 1 != 0 {
            let bit = multicast_hash(&dest);
            return self.rcr & RCR_AM != 0
                && self.mar[usize::from(bit >> 3)] & (1 << (bit & 7)) != 0;
        }
        dest == self.par
    }

    /// The ring page after `page`.
    fn next_page(&self, page: u8) -> u8 {
        let next = page.wrapping_add(1);
        if next == self.pstop {
            self.pstart
        } else {
            next
        }
    }

    fn count_missed(&mut self) {
        self.bump_counter(2);
        self.rsr = RSR_MPA;
    }

    fn bump_counter(&mut self, i: usize) {
        self.cntr[i] = self.cntr[i].wrapping_add(1);
        if self.cntr[i] & 0x80 != 0 {
            self.isr |= ISR_CNT;
        }
    }

    /// Stores a frame (plus its CRC) at CURR if the ring has room for it.
    fn store(&mut self, frame: &[u8], multicast: bool) -> bool {
        let total = 4 + frame.len() + 4;
        let pages = total.div_ceil(256);
        // The frame's pages after the first, and the page CURR moves to, must not be
        // the boundary page.
        let mut page = self.curr;
        for _ in 0..pages {
            page = self.next_page(page);
            if page == self.bnry {
                self.isr |= ISR_OVW;
                self.count_missed();
                return false;
            }
        }
        let next = page;
        let count = (frame.len() + 4) as u16;
        self.rsr = RSR_PRX | if multicast { RSR_PHY } else { 0 };
        let fcs = (!crc32_register(frame)).to_le_bytes();
        let header = [self.rsr, next, count as u8, (count >> 8) as u8];
        let mut page = self.curr;
        let mut offset = 0u8;
        for &byte in header.iter().chain(frame).chain(&fcs) {
            let addr = u16::from(page) << 8 | u16::from(offset);
            self.ram_write(addr, byte);
            self.clda = addr;
            offset = offset.wrapping_add(1);
            if offset == 0 {
                page = self.next_page(page);
            }
        }
        self.curr = next;
        self.isr |= ISR_PRX;
        true
    }

    fn ram_index(&self, addr: u16) -> Option<usize> {
        let i = usize::from(addr.checked_sub(RAM_START)?);
        (i < self.ram.len()).then_some(i)
    }

    fn ram_write(&mut self, addr: u16, value: u8) {
        if let Some(i) = self.ram_index(addr) {
            self.ram[i] = value;
        }
    }

    /// A byte of the card's address space.
    fn mem_read(&self, addr: u16) -> u8 {
        if addr < 0x20 {
            self.prom[usize::from(addr >> 1)]
        } else {
            self.ram_index(addr).map_or(0xFF, |i| self.ram[i])
        }
    }

    /// Advances the remote DMA address, wrapping from PSTOP to PSTART.
    fn advance_rsar(&mut self) {
        self.rsar = self.rsar.wrapping_add(1);
        if self.rsar == u16::from(self.pstop) << 8 {
            self.rsar = u16::from(self.pstart) << 8;
        }
    }

    /// Counts `n` bytes of remote DMA; sets RDC when the count runs out.
    fn count_dma(&mut self, n: u16) {
        if self.rbcr != 0 {
            self.rbcr = self.rbcr.saturating_sub(n);
            if self.rbcr == 0 {
                self.isr |= ISR_RDC;
            }
        }
    }

    /// One remote DMA read unit (a byte, or a word in word mode), little-endian.
    fn dma_read_unit(&mut self) -> u16 {
        let lo = self.mem_read(self.rsar);
        self.advance_rsar();
        if self.dcr & DCR_WTS == 0 {
            self.count_dma(1);
            return u16::from(lo);
        }
        let hi = self.mem_read(self.rsar);
        self.advance_rsar();
        self.count_dma(2);
        u16::from_le_bytes([lo, hi])
    }

    fn dma_write_unit(&mut self, value: u16) {
        let [lo, hi] = value.to_le_bytes();
        self.ram_write(self.rsar, lo);
        self.advance_rsar();
        if self.dcr & DCR_WTS == 0 {
            self.count_dma(1);
            return;
        }
        self.ram_write(self.rsar, hi);
        self.advance_rsar();
        self.count_dma(2);
    }

    /// How many units an access of `size` bytes moves, and the bits per unit.
    fn units(&self, size: u8) -> (u32, u32) {
        let size = u32::from(size.clamp(1, 4));
        if self.dcr & DCR_WTS != 0 {
            (size.div_ceil(2), 16)
        } else {
            (size, 8)
        }
    }

    fn data_read(&mut self, size: u8) -> u32 {
        let (n, bits) = self.units(size);
        let mut value = 0u32;
        for i in 0..n {
            value |= u32::from(self.dma_read_unit()) << (i * bits);
        }
        value
    }

    fn data_write(&mut self, size: u8, value: u32) {
        let (n, bits) = self.units(size);
        for i in 0..n {
            let unit = (value >> (i * bits)) as u16;
            self.dma_write_unit(if bits == 8 { unit & 0xFF } else { unit });
        }
    }

    fn write_cr(&mut self, value: u8) {
        if value & CR_STP != 0 {
            self.cr = (self.cr & !CR_STA) | CR_STP;
            self.isr |= ISR_RST;
        } else if value & CR_STA != 0 {
            self.cr = (self.cr & !CR_STP) | CR_STA;
            self.isr &= !ISR_RST;
        }
        // Page select and remote DMA command.
        self.cr = (self.cr & (CR_STP | CR_STA)) | (value & 0xF8);
        match value & CR_RD_MASK {
            CR_RD_READ | CR_RD_WRITE => {
                if self.rbcr == 0 {
                    self.isr |= ISR_RDC;
                }
            }
            CR_RD_SEND => {
                // "Send packet": read the frame at BNRY, header included.
                let base = u16::from(self.bnry) << 8;
                let lo = self.mem_read(base.wrapping_add(2));
                let hi = self.mem_read(base.wrapping_add(3));
                self.rsar = base;
                self.rbcr = u16::from_le_bytes([lo, hi]);
                if self.rbcr == 0 {
                    self.isr |= ISR_RDC;
                }
            }
            _ => {}
        }
        if value & CR_TXP != 0 && !self.stopped() {
            self.transmit();
        }
    }

    fn transmit(&mut self) {
        let len = usize::from(self.tbcr).min(MAX_TX_LEN);
        let base = u16::from(self.tpsr) << 8;
        let frame: Vec<u8> = (0..len as u16)
            .map(|i| self.mem_read(base.wrapping_add(i)))
            .collect();
        if self.loopback() {
            self.accept(&frame);
        } else if !frame.is_empty() {
            if self.tx_queue.len() >= TX_QUEUE_LIMIT {
                self.tx_queue.pop_front();
            }
            self.tx_queue.push_back(frame);
        }
        self.tsr = TSR_PTX;
        self.isr |= ISR_PTX;
        self.cr &= !CR_TXP;
    }

    fn page(&self) -> u8 {
        self.cr >> 6
    }

    fn read_register(&mut self, reg: u16) -> u8 {
        if reg == 0 {
            return self.cr;
        }
        match (self.page(), reg) {
            (0, 0x01) => self.clda as u8,
            (0, 0x02) => (self.clda >> 8) as u8,
            (0, 0x03) => self.bnry,
            (0, 0x04) => self.tsr,
            (0, 0x05) => 0, // NCR: never a collision
            (0, 0x06) => 0, // FIFO
            (0, 0x07) => self.isr,
            (0, 0x08) => self.rsar as u8,
            (0, 0x09) => (self.rsar >> 8) as u8,
            (0, 0x0A) => 0x50, // RTL8029 ID
            (0, 0x0B) => 0x43,
            (0, 0x0C) => self.rsr,
            (0, 0x0D..=0x0F) => {
                let i = usize::from(reg - 0x0D);
                std::mem::take(&mut self.cntr[i])
            }
            (1, 0x01..=0x06) => self.par[usize::from(reg - 1)],
            (1, 0x07) => self.curr,
            (1, 0x08..=0x0F) => self.mar[usize::from(reg - 8)],
            (2, 0x01) => self.pstart,
            (2, 0x02) => self.pstop,
            (2, 0x03) => 0, // remote next packet pointer
            (2, 0x04) => self.tpsr,
            (2, 0x05) => 0, // local next packet pointer
            (2, 0x06) => (self.clda >> 8) as u8,
            (2, 0x07) => self.clda as u8,
            (2, 0x0C) => self.rcr,
            (2, 0x0D) => self.tcr,
            (2, 0x0E) => self.dcr,
            (2, 0x0F) => self.imr,
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u16, v: u8) {
        if reg == 0 {
            self.write_cr(v);
            return;
        }
        match (self.page(), reg) {
            (0, 0x01) => self.pstart = v,
            (0, 0x02) => self.pstop = v,
            (0, 0x03) => self.bnry = v,
            (0, 0x04) => self.tpsr = v,
            (0, 0x05) => self.tbcr = (self.tbcr & 0xFF00) | u16::from(v),
            (0, 0x06) => self.tbcr = (self.tbcr & 0x00FF) | u16::from(v) << 8,
            (0, 0x07) => self.isr &= !v,
            (0, 0x08) => self.rsar = (self.rsar & 0xFF00) | u16::from(v),
            (0, 0x09) => self.rsar = (self.rsar & 0x00FF) | u16::from(v) << 8,
            (0, 0x0A) => self.rbcr = (self.rbcr & 0xFF00) | u16::from(v),
            (0, 0x0B) => self.rbcr = (self.rbcr & 0x00FF) | u16::from(v) << 8,
            (0, 0x0C) => self.rcr = v & 0x3F,
            (0, 0x0D) => self.tcr = v & 0x1F,
            (0, 0x0E) => self.dcr = v & 0x7F,
            (0, 0x0F) => self.imr = v & 0x7F,
            (1, 0x01..=0x06) => self.par[usize::from(reg - 1)] = v,
            (1, 0x07) => self.curr = v,
            (1, 0x08..=0x0F) => self.mar[usize::from(reg - 8)] = v,
            (2, 0x01) => self.clda = (self.clda & 0xFF00) | u16::from(v),
            (2, 0x02) => self.clda = (self.clda & 0x00FF) | u16::from(v) << 8,
            _ => {}
        }
    }

    /// A byte-wide access to a register or the reset port.
    fn read_byte(&mut self, offset: u16) -> u8 {
        match offset {
            0x00..=0x0F => self.read_register(offset),
            DATA_PORT..=0x17 => self.data_read(1) as u8,
            RESET_PORT..=0x1F => {
                self.reset();
                0
            }
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, offset: u16, value: u8) {
        match offset {
            0x00..=0x0F => self.write_register(offset, value),
            DATA_PORT..=0x17 => self.data_write(1, u32::from(value)),
            _ => {}
        }
    }
}

impl PortDevice for Ne2000 {
    /// `port` is the offset from the card's base (0x00-0x1F).
    fn read(&mut self, port: u16, size: u8, _now: Nanos) -> u32 {
        if (DATA_PORT..RESET_PORT).contains(&port) {
            return self.data_read(size);
        }
        let mut value = 0u32;
        for i in 0..u16::from(size.clamp(1, 4)) {
            let offset = port.saturating_add(i);
            let byte = if offset < PORT_COUNT {
                self.read_byte(offset)
            } else {
                0xFF
            };
            value |= u32::from(byte) << (8 * i);
        }
        value
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos) {
        if (DATA_PORT..RESET_PORT).contains(&port) {
            self.data_write(size, value);
            return;
        }
        for i in 0..u16::from(size.clamp(1, 4)) {
            self.write_byte(port.saturating_add(i), (value >> (8 * i)) as u8);
        }
    }
}

/// The PCI face of the card: a Realtek RTL8029 (10EC:8029, Ethernet controller) with
/// its 32 ports in BAR0 (I/O) and interrupt pin A. The interrupt line and the command
/// register's I/O enable are writable; the machine reads BAR0 to place the ports.
pub fn rtl8029_config_space() -> ConfigSpace {
    let mut space = ConfigSpace::new(0x10EC, 0x8029, 0x02_00_00, 0x00, 0x00);
    space.set_writable(0x04, 0x0001, 2); // I/O space
    space.set_u16(0x06, 0x0200); // DEVSEL medium
    space.add_io_bar(0, u32::from(PORT_COUNT), 0);
    space.set_u8(0x3D, 1); // INTA#
    space.set_writable(0x3C, 0xFF, 1); // interrupt line
    space
}
