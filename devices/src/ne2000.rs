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
        let command = value & CR_RD_MASK;
        if command == CR_RD_SEND {
            // "Send packet": read the frame at BNRY, header included.
            let base = u16::from(self.bnry) << 8;
            let lo = self.mem_read(base.wrapping_add(2));
            let hi = self.mem_read(base.wrapping_add(3));
            self.rsar = base;
            self.rbcr = u16::from_le_bytes([lo, hi]);
        }
        // A remote DMA command with nothing to move completes at once.
        if matches!(command, CR_RD_READ | CR_RD_WRITE | CR_RD_SEND) && self.rbcr == 0 {
            self.isr |= ISR_RDC;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const CMD: u16 = 0x00;
    const ISR: u16 = 0x07;
    const IMR: u16 = 0x0F;
    // Page 0 write registers.
    const PSTART: u16 = 0x01;
    const PSTOP: u16 = 0x02;
    const BNRY: u16 = 0x03;
    const TPSR: u16 = 0x04;
    const TBCR0: u16 = 0x05;
    const TBCR1: u16 = 0x06;
    const RSAR0: u16 = 0x08;
    const RSAR1: u16 = 0x09;
    const RBCR0: u16 = 0x0A;
    const RBCR1: u16 = 0x0B;
    const RCR: u16 = 0x0C;
    const TCR: u16 = 0x0D;
    const DCR: u16 = 0x0E;
    const CURR: u16 = 0x07;
    // CR values as drivers write them.
    const NODMA_STOP: u8 = 0x21;
    const NODMA_START: u8 = 0x22;
    const RREAD_START: u8 = 0x0A;
    const RWRITE_START: u8 = 0x12;
    const PAGE1: u8 = 0x40;

    fn rd(c: &mut Ne2000, port: u16) -> u8 {
        c.read(port, 1, 0) as u8
    }

    fn wr(c: &mut Ne2000, port: u16, v: u8) {
        c.write(port, 1, u32::from(v), 0)
    }

    fn set_dma(c: &mut Ne2000, addr: u16, count: u16) {
        wr(c, CMD, 0x20); // page 0, no DMA, running state kept
        wr(c, RBCR0, count as u8);
        wr(c, RBCR1, (count >> 8) as u8);
        wr(c, RSAR0, addr as u8);
        wr(c, RSAR1, (addr >> 8) as u8);
    }

    /// A remote DMA write in word mode, 16-bit accesses (odd count rounded up, as the
    /// drivers do).
    fn dma_write(c: &mut Ne2000, addr: u16, data: &[u8]) {
        let count = (data.len() as u16 + 1) & !1;
        set_dma(c, addr, count);
        wr(c, CMD, RWRITE_START);
        for pair in data.chunks(2) {
            let w = u16::from(pair[0]) | u16::from(*pair.get(1).unwrap_or(&0)) << 8;
            c.write(DATA_PORT, 2, u32::from(w), 0);
        }
    }

    /// A remote DMA read as ne2k-pci does it: 32-bit reads, then a word, then a byte.
    fn dma_read(c: &mut Ne2000, addr: u16, len: usize) -> Vec<u8> {
        set_dma(c, addr, len as u16);
        wr(c, CMD, RREAD_START);
        let mut out = Vec::new();
        for _ in 0..len / 4 {
            out.extend_from_slice(&c.read(DATA_PORT, 4, 0).to_le_bytes());
        }
        if len & 2 != 0 {
            out.extend_from_slice(&(c.read(DATA_PORT, 2, 0) as u16).to_le_bytes());
        }
        if len & 1 != 0 {
            out.push(c.read(DATA_PORT, 1, 0) as u8);
        }
        out
    }

    /// Linux's NS8390_init + start, with the ring of the tests.
    fn start(c: &mut Ne2000) {
        wr(c, CMD, NODMA_STOP);
        wr(c, DCR, 0x49);
        wr(c, RBCR0, 0);
        wr(c, RBCR1, 0);
        wr(c, RCR, 0x20);
        wr(c, TCR, 0x02);
        wr(c, TPSR, 0x40);
        wr(c, PSTART, 0x46);
        wr(c, BNRY, 0x46);
        wr(c, PSTOP, 0x80);
        wr(c, ISR, 0xFF);
        wr(c, IMR, 0);
        wr(c, CMD, NODMA_STOP | PAGE1);
        for (i, b) in MAC.iter().enumerate() {
            wr(c, 1 + i as u16, *b);
            assert_eq!(rd(c, 1 + i as u16), *b, "PAR reads back");
        }
        wr(c, CURR, 0x47);
        wr(c, CMD, NODMA_STOP);
        wr(c, ISR, 0xFF);
        wr(c, IMR, 0x7F);
        wr(c, CMD, NODMA_START);
        wr(c, TCR, 0);
        wr(c, RCR, RCR_AB);
    }

    fn set_ring(c: &mut Ne2000, bnry: u8, curr: u8) {
        wr(c, BNRY, bnry);
        wr(c, CMD, NODMA_START | PAGE1);
        wr(c, CURR, curr);
        wr(c, CMD, NODMA_START);
    }

    fn curr(c: &mut Ne2000) -> u8 {
        wr(c, CMD, NODMA_START | PAGE1);
        let v = rd(c, CURR);
        wr(c, CMD, NODMA_START);
        v
    }

    fn frame_to(dest: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
        f[..6].copy_from_slice(&dest);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[12] = 0x08;
        f[13] = 0x00;
        f
    }

    #[test]
    fn reset_state_and_reset_port() {
        let mut c = Ne2000::new(MAC);
        assert_eq!(rd(&mut c, CMD), 0x21);
        assert_eq!(rd(&mut c, ISR) & ISR_RST, ISR_RST);
        assert!(!c.irq_level());
        // Start, unmask: RST goes away, and the reset port brings it all back.
        wr(&mut c, IMR, 0x7F);
        wr(&mut c, CMD, NODMA_START);
        assert_eq!(rd(&mut c, ISR) & ISR_RST, 0);
        assert_eq!(rd(&mut c, CMD), 0x22);
        let v = c.read(RESET_PORT, 1, 0);
        c.write(RESET_PORT, 1, v, 0);
        assert_eq!(rd(&mut c, CMD), 0x21);
        assert_eq!(rd(&mut c, ISR), ISR_RST);
        wr(&mut c, CMD, 0x21 | 0x80);
        assert_eq!(rd(&mut c, IMR), 0, "IMR cleared (page 2)");
        wr(&mut c, CMD, 0x21);
        // Linux acknowledges RST after the reset; the stop command sets it again.
        wr(&mut c, ISR, ISR_RST);
        assert_eq!(rd(&mut c, ISR), 0);
        wr(&mut c, CMD, NODMA_STOP);
        assert_eq!(rd(&mut c, ISR), ISR_RST);
        // Any offset of the reset port resets.
        wr(&mut c, CMD, NODMA_START);
        c.read(0x1F, 1, 0);
        assert_eq!(rd(&mut c, CMD), 0x21);
    }

    #[test]
    fn prom_reads_in_word_and_byte_mode() {
        let mut c = Ne2000::new(MAC);
        // ne.c: byte mode, 32 bytes: every byte doubled.
        wr(&mut c, DCR, 0x48);
        wr(&mut c, RBCR0, 32);
        wr(&mut c, RBCR1, 0);
        wr(&mut c, RSAR0, 0);
        wr(&mut c, RSAR1, 0);
        wr(&mut c, CMD, RREAD_START);
        let bytes: Vec<u8> = (0..32).map(|_| rd(&mut c, DATA_PORT)).collect();
        for i in 0..6 {
            assert_eq!(bytes[2 * i], MAC[i]);
            assert_eq!(bytes[2 * i + 1], MAC[i]);
        }
        assert_eq!(&bytes[28..32], b"WWWW");
        assert_ne!(rd(&mut c, ISR) & ISR_RDC, 0);
        // ne2k-pci: word mode, inb 32 times: one PROM byte per read.
        wr(&mut c, ISR, 0xFF);
        wr(&mut c, DCR, 0x49);
        wr(&mut c, RBCR0, 32);
        wr(&mut c, RSAR0, 0);
        wr(&mut c, RSAR1, 0);
        wr(&mut c, CMD, RREAD_START);
        let bytes: Vec<u8> = (0..32).map(|_| rd(&mut c, DATA_PORT)).collect();
        assert_eq!(&bytes[..6], &MAC);
        assert_eq!(&bytes[14..16], b"WW");
        // Word reads: each PROM byte in both halves.
        let words: Vec<u8> = dma_read(&mut c, 0, 32);
        for i in 0..6 {
            assert_eq!(&words[2 * i..2 * i + 2], &[MAC[i], MAC[i]]);
        }
        assert_eq!(&words[28..32], b"WWWW");
        assert_eq!(c.mac(), MAC);
        // Writes to the PROM are ignored.
        dma_write(&mut c, 0, &[0; 16]);
        assert_eq!(&dma_read(&mut c, 0, 12)[..2], &[MAC[0], MAC[0]]);
    }

    #[test]
    fn remote_dma_round_trip_across_pages_and_the_end_of_ram() {
        let mut c = Ne2000::new(MAC);
        wr(&mut c, DCR, 0x49);
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) ^ 0x5A).collect();
        // Across a page boundary inside RAM.
        dma_write(&mut c, 0x40C0, &data);
        assert_ne!(rd(&mut c, ISR) & ISR_RDC, 0, "RDC at the end of the write");
        wr(&mut c, ISR, ISR_RDC);
        set_dma(&mut c, 0x40C0, 100);
        wr(&mut c, CMD, RREAD_START);
        let mut back = Vec::new();
        for i in 0..25 {
            assert_eq!(rd(&mut c, ISR) & ISR_RDC, 0, "no RDC before the end ({i})");
            back.extend_from_slice(&c.read(DATA_PORT, 4, 0).to_le_bytes());
        }
        assert_eq!(back, data);
        assert_ne!(rd(&mut c, ISR) & ISR_RDC, 0, "RDC at the end of the read");
        // CRDA followed the transfer.
        assert_eq!(
            u16::from(rd(&mut c, 0x08)) | u16::from(rd(&mut c, 0x09)) << 8,
            0x40C0 + 100
        );
        // Across the end of RAM (0xC000): the tail is dropped and reads 0xFF.
        dma_write(&mut c, 0xBFD0, &data);
        let back = dma_read(&mut c, 0xBFD0, 100);
        assert_eq!(&back[..48], &data[..48]);
        assert!(back[48..].iter().all(|&b| b == 0xFF));
        // Byte mode, odd length, across a page boundary.
        wr(&mut c, DCR, 0x48);
        set_dma(&mut c, 0x50FB, 11);
        wr(&mut c, CMD, RWRITE_START);
        for b in &data[..11] {
            wr(&mut c, DATA_PORT, *b);
        }
        set_dma(&mut c, 0x50FB, 11);
        wr(&mut c, CMD, RREAD_START);
        let back: Vec<u8> = (0..11).map(|_| rd(&mut c, 0x13)).collect();
        assert_eq!(back, &data[..11]);
        // A zero-length command completes at once.
        wr(&mut c, ISR, 0xFF);
        set_dma(&mut c, 0x4000, 0);
        wr(&mut c, CMD, RREAD_START);
        assert_ne!(rd(&mut c, ISR) & ISR_RDC, 0);
    }

    #[test]
    fn transmit_sends_the_frame_and_raises_ptx() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        wr(&mut c, IMR, ISR_PTX);
        let frame = frame_to([0xFF; 6], 100, 3);
        dma_write(&mut c, 0x4000, &frame);
        wr(&mut c, ISR, ISR_RDC);
        wr(&mut c, TPSR, 0x40);
        wr(&mut c, TBCR0, 100);
        wr(&mut c, TBCR1, 0);
        assert!(!c.irq_level());
        wr(&mut c, CMD, NODMA_START | CR_TXP);
        assert_eq!(c.take_transmitted(), vec![frame]);
        assert!(c.take_transmitted().is_empty());
        assert_eq!(rd(&mut c, CMD) & CR_TXP, 0, "TXP clears when done");
        assert_eq!(rd(&mut c, 0x04), TSR_PTX);
        assert_eq!(rd(&mut c, ISR), ISR_PTX);
        assert!(c.irq_level());
        wr(&mut c, ISR, ISR_PTX);
        assert_eq!(rd(&mut c, ISR), 0);
        assert!(!c.irq_level());
        // A short frame goes out as is; an oversized count is clamped.
        wr(&mut c, TBCR0, 42);
        wr(&mut c, CMD, NODMA_START | CR_TXP);
        wr(&mut c, TBCR0, 0xFF);
        wr(&mut c, TBCR1, 0xFF);
        wr(&mut c, CMD, NODMA_START | CR_TXP);
        let sent = c.take_transmitted();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].len(), 42);
        assert_eq!(sent[1].len(), MAX_TX_LEN);
        // Stopped: nothing is sent.
        wr(&mut c, CMD, NODMA_STOP | CR_TXP);
        assert!(c.take_transmitted().is_empty());
        // The queue is bounded.
        wr(&mut c, CMD, NODMA_START);
        wr(&mut c, TBCR0, 60);
        wr(&mut c, TBCR1, 0);
        for _ in 0..TX_QUEUE_LIMIT + 10 {
            wr(&mut c, CMD, NODMA_START | CR_TXP);
        }
        assert_eq!(c.take_transmitted().len(), TX_QUEUE_LIMIT);
    }

    /// Reads the frame at the ring's next page as Linux's ei_receive does; returns
    /// (header, data of count - 4 bytes) and advances BNRY.
    fn linux_receive(c: &mut Ne2000) -> Option<([u8; 4], Vec<u8>)> {
        let mut this = rd(c, BNRY) + 1;
        if this >= 0x80 {
            this = 0x46;
        }
        if this == curr(c) {
            return None;
        }
        let h = dma_read(c, u16::from(this) << 8, 4);
        let header = [h[0], h[1], h[2], h[3]];
        let count = usize::from(u16::from_le_bytes([h[2], h[3]]));
        let data = dma_read(c, (u16::from(this) << 8) + 4, count - 4);
        let next = header[1];
        wr(c, BNRY, if next == 0x46 { 0x7F } else { next - 1 });
        Some((header, data))
    }

    #[test]
    fn receive_stores_the_frame_with_the_header() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        set_ring(&mut c, 0x46, 0x47);
        let frame = frame_to(MAC, 100, 9);
        assert!(c.receive(&frame));
        assert_eq!(rd(&mut c, ISR) & ISR_PRX, ISR_PRX);
        assert!(c.irq_level());
        assert_eq!(rd(&mut c, 0x0C), RSR_PRX);
        assert_eq!(curr(&mut c), 0x48);
        // Header: RSR, next page, count = length + 4 (the CRC).
        assert_eq!(dma_read(&mut c, 0x4700, 4), vec![0x01, 0x48, 104, 0]);
        let stored = dma_read(&mut c, 0x4704, 104);
        assert_eq!(&stored[..100], &frame[..]);
        let fcs = !crc32_register(&frame);
        assert_eq!(&stored[100..], &fcs.to_le_bytes());
        // The driver's view: count - 4 bytes is the frame.
        let (header, data) = linux_receive(&mut c).unwrap();
        assert_eq!(header[0], 0x01);
        assert_eq!(data, frame);
        assert!(linux_receive(&mut c).is_none());
        // A short frame is padded to 60.
        wr(&mut c, ISR, 0xFF);
        assert!(c.receive(&frame[..42]));
        let (header, data) = linux_receive(&mut c).unwrap();
        assert_eq!(u16::from_le_bytes([header[2], header[3]]), 64);
        assert_eq!(&data[..42], &frame[..42]);
        assert!(data[42..].iter().all(|&b| b == 0));
        // Too long, stopped, or in loopback: refused.
        assert!(!c.receive(&frame_to(MAC, MAX_RX_LEN + 1, 0)));
        assert!(c.receive(&frame_to(MAC, MAX_RX_LEN, 0)));
        wr(&mut c, TCR, 0x02);
        assert!(!c.receive(&frame));
        wr(&mut c, TCR, 0);
        wr(&mut c, CMD, NODMA_STOP);
        assert!(!c.receive(&frame));
        // Monitor mode: matched, counted as missed, not stored.
        wr(&mut c, CMD, NODMA_START);
        wr(&mut c, RCR, RCR_MON);
        assert!(!c.receive(&frame));
        assert_eq!(rd(&mut c, 0x0F), 1, "CNTR2");
        assert_eq!(rd(&mut c, 0x0F), 0, "cleared by the read");
    }

    /// The multicast hash, computed independently: CRC-32 shifted MSB first over the
    /// address bits in wire order (LSB of each byte first).
    fn hash_msb_first(addr: &[u8; 6]) -> u8 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in addr {
            for bit in 0..8 {
                let inb = u32::from(byte >> bit) & 1;
                let top = crc >> 31;
                crc <<= 1;
                if top ^ inb != 0 {
                    crc ^= 0x04C1_1DB7;
                }
            }
        }
        (crc >> 26) as u8
    }

    #[test]
    fn address_filter() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        let other = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        assert!(!c.receive(&frame_to(other, 64, 0)));
        assert!(c.receive(&frame_to(MAC, 64, 0)));
        assert!(c.receive(&frame_to([0xFF; 6], 64, 0)), "broadcast with AB");
        assert_eq!(rd(&mut c, 0x0C), RSR_PRX | RSR_PHY);
        wr(&mut c, RCR, 0);
        assert!(
            !c.receive(&frame_to([0xFF; 6], 64, 0)),
            "broadcast without AB"
        );
        wr(&mut c, RCR, RCR_PRO);
        assert!(c.receive(&frame_to(other, 64, 0)), "promiscuous");
        // Multicast: only with AM and the address's hash bit set in MAR.
        let group = [0x01, 0x00, 0x5E, 0x00, 0x00, 0x01];
        let bit = multicast_hash(&group);
        assert_eq!(bit, hash_msb_first(&group));
        assert_eq!(
            multicast_hash(&[0x33, 0x33, 0, 0, 0, 1]),
            hash_msb_first(&[0x33, 0x33, 0, 0, 0, 1])
        );
        wr(&mut c, RCR, RCR_AM);
        assert!(!c.receive(&frame_to(group, 64, 0)), "MAR empty");
        wr(&mut c, CMD, NODMA_START | PAGE1);
        for i in 0..8u16 {
            let v = if i == u16::from(bit >> 3) {
                !(1u8 << (bit & 7))
            } else {
                0xFF
            };
            wr(&mut c, 8 + i, v);
        }
        wr(&mut c, CMD, NODMA_START);
        assert!(!c.receive(&frame_to(group, 64, 0)), "every bit but its own");
        wr(&mut c, CMD, NODMA_START | PAGE1);
        wr(&mut c, 8 + u16::from(bit >> 3), 1 << (bit & 7));
        assert_eq!(rd(&mut c, 8 + u16::from(bit >> 3)), 1 << (bit & 7));
        wr(&mut c, CMD, NODMA_START);
        assert!(c.receive(&frame_to(group, 64, 0)), "its bit set");
        wr(&mut c, RCR, 0);
        assert!(!c.receive(&frame_to(group, 64, 0)), "AM clear");
    }

    #[test]
    fn ring_wraps_at_pstop() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        set_ring(&mut c, 0x7E, 0x7F);
        let frame = frame_to(MAC, 600, 1);
        assert!(c.receive(&frame));
        // 4 + 600 + 4 bytes: pages 0x7F, 0x46, 0x47.
        assert_eq!(curr(&mut c), 0x48);
        assert_eq!(dma_read(&mut c, 0x7F00, 4), vec![0x01, 0x48, 0x5C, 0x02]);
        // One remote read wraps from PSTOP to PSTART.
        let (_, data) = linux_receive(&mut c).unwrap();
        assert_eq!(data, frame);
        assert_eq!(rd(&mut c, BNRY), 0x47);
        assert_eq!(dma_read(&mut c, 0x4600, 4), frame[252..256].to_vec());
    }

    #[test]
    fn full_ring_sets_ovw_and_drops() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        // 1514-byte frames take 6 pages; 57 pages are free behind BNRY.
        let mut accepted = 0;
        while c.receive(&frame_to(MAC, 1514, accepted as u8)) {
            accepted += 1;
            assert!(accepted < 100);
        }
        assert_eq!(accepted, 9);
        assert_ne!(rd(&mut c, ISR) & ISR_OVW, 0);
        assert_eq!(rd(&mut c, 0x0C) & RSR_MPA, RSR_MPA);
        assert_eq!(rd(&mut c, 0x0F), 1, "the missed frame is counted");
        // Nothing was overwritten: every frame reads back.
        wr(&mut c, ISR, 0xFF);
        for i in 0..9 {
            let (_, data) = linux_receive(&mut c).unwrap();
            assert_eq!(data, frame_to(MAC, 1514, i));
        }
        assert!(linux_receive(&mut c).is_none());
        // Room again.
        assert!(c.receive(&frame_to(MAC, 1514, 0)));
        assert_eq!(rd(&mut c, ISR) & ISR_OVW, 0);
    }

    #[test]
    fn loopback_transmit_reaches_the_receiver() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        wr(&mut c, TCR, 0x02);
        let frame = frame_to(MAC, 80, 4);
        dma_write(&mut c, 0x4000, &frame);
        wr(&mut c, TBCR0, 80);
        wr(&mut c, TBCR1, 0);
        wr(&mut c, CMD, NODMA_START | CR_TXP);
        assert!(c.take_transmitted().is_empty(), "not on the wire");
        assert_eq!(rd(&mut c, ISR) & (ISR_PTX | ISR_PRX), ISR_PTX | ISR_PRX);
        let (_, data) = linux_receive(&mut c).unwrap();
        assert_eq!(data, frame);
        // A runt in loopback is refused unless AR.
        wr(&mut c, TBCR0, 40);
        wr(&mut c, CMD, NODMA_START | CR_TXP);
        assert!(linux_receive(&mut c).is_none());
        wr(&mut c, RCR, RCR_AB | RCR_AR);
        wr(&mut c, CMD, NODMA_START | CR_TXP);
        let (_, data) = linux_receive(&mut c).unwrap();
        assert_eq!(data, &frame[..40]);
    }

    #[test]
    fn send_packet_command_reads_the_frame_at_bnry() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        // The other driver convention: BNRY on the next frame to read.
        set_ring(&mut c, 0x47, 0x47);
        let frame = frame_to(MAC, 70, 6);
        assert!(c.receive(&frame));
        wr(&mut c, ISR, 0xFF);
        wr(&mut c, CMD, 0x1A);
        let mut got = Vec::new();
        while rd(&mut c, ISR) & ISR_RDC == 0 {
            got.extend_from_slice(&(c.read(DATA_PORT, 2, 0) as u16).to_le_bytes());
            assert!(got.len() <= 80);
        }
        // The count (74) covers the header and the frame; the CRC is not reached.
        assert_eq!(got.len(), 74);
        assert_eq!(&got[..4], &[0x01, 0x48, 74, 0]);
        assert_eq!(&got[4..], &frame[..70]);
    }

    #[test]
    fn page_two_reads_back_the_configuration() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        wr(&mut c, CMD, NODMA_START | 0x80);
        assert_eq!(rd(&mut c, 0x01), 0x46);
        assert_eq!(rd(&mut c, 0x02), 0x80);
        assert_eq!(rd(&mut c, 0x04), 0x40);
        assert_eq!(rd(&mut c, 0x0C), RCR_AB);
        assert_eq!(rd(&mut c, 0x0D), 0);
        assert_eq!(rd(&mut c, 0x0E), 0x49);
        assert_eq!(rd(&mut c, 0x0F), 0x7F);
        // Page 3 reads 0 and ignores writes (ne2k-pci's full duplex sequence).
        wr(&mut c, CMD, 0xC0 | 0x20);
        wr(&mut c, 0x01, 0xC0);
        wr(&mut c, 0x06, 0x40);
        assert_eq!(rd(&mut c, 0x01), 0);
        assert_eq!(rd(&mut c, CMD), 0xE2);
        wr(&mut c, CMD, 0x20);
        assert_eq!(rd(&mut c, CMD), 0x22, "neither STA nor STP: state kept");
        assert_eq!((rd(&mut c, 0x0A), rd(&mut c, 0x0B)), (0x50, 0x43));
    }

    #[test]
    fn rtl8029_config_space_identity_and_bar() {
        use crate::pci::PciFunction;
        let mut space = rtl8029_config_space();
        assert_eq!(space.config_read(0x00), 0x8029_10EC);
        assert_eq!(space.config_read(0x08), 0x0200_0000);
        assert_eq!(space.config_read(0x10), 0x1);
        space.config_write(0x10, 0xFFFF_FFFF, 0xFFFF_FFFF);
        assert_eq!(space.config_read(0x10), 0xFFFF_FFE1, "32 bytes of I/O");
        space.config_write(0x10, 0xC100, 0xFFFF_FFFF);
        assert_eq!(space.config_read(0x10), 0xC101);
        space.config_write(0x3C, 0x0B, 0xFF);
        assert_eq!(space.config_read(0x3C) & 0xFFFF, 0x010B);
        space.config_write(0x04, 0xFFFF, 0xFFFF);
        assert_eq!(space.config_read(0x04) & 0xFFFF, 0x0001);
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn hostile_register_and_port_sequences_never_panic() {
        let mut c = Ne2000::new(MAC);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut taken = 0usize;
        let mut received = 0usize;
        for step in 0..200_000u32 {
            let r = rng.next();
            let port = (r >> 8) as u16 % 0x24;
            let size = [1u8, 2, 4, 0, 3, 8][(r >> 16) as usize % 6];
            let value = (r >> 32) as u32;
            if r & 1 == 0 {
                c.read(port, size, 0);
            } else {
                c.write(port, size, value, 0);
            }
            if step % 97 == 0 {
                // Now and then a sane start, so the receive path runs too.
                if step % 3 == 0 {
                    start(&mut c);
                    wr(&mut c, RCR, (r >> 40) as u8);
                }
                let len = (rng.next() % 2001) as usize;
                let mut frame: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if len >= 6 && step % 2 == 0 {
                    frame[..6].copy_from_slice(&MAC);
                }
                received += usize::from(c.receive(&frame));
            }
            if step % 1000 == 0 {
                let sent = c.take_transmitted();
                assert!(sent.iter().all(|f| f.len() <= MAX_TX_LEN));
                taken += sent.len();
            }
            assert!(c.tx_queue.len() <= TX_QUEUE_LIMIT);
            let _ = c.irq_level();
        }
        assert!(taken > 0, "some frames went out");
        assert!(received > 0, "some frames came in");
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut c = Ne2000::new(MAC);
        start(&mut c);
        c.receive(&frame_to(MAC, 200, 5));
        dma_write(&mut c, 0x4000, &frame_to([0xFF; 6], 64, 2));
        wr(&mut c, TBCR0, 64);
        wr(&mut c, CMD, NODMA_START | CR_TXP);
        let json = serde_json::to_string(&c).unwrap();
        let mut back: Ne2000 = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.take_transmitted(), c.take_transmitted());
        // A state with a short RAM (a damaged snapshot) cannot make the card panic.
        back.ram.truncate(10);
        back.receive(&frame_to(MAC, 1000, 1));
        dma_read(&mut back, 0x4000, 600);
    }
}
