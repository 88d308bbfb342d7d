//! A 16550A UART (COM1-COM4).
//!
//! Transmission is instantaneous in virtual time: a byte written to THR goes straight to
//! an output buffer the machine drains, and the transmitter is empty again at once. The
//! THR-empty interrupt still follows the hardware rules Linux's 8250 driver depends on:
//! it is pending while IER.ETBEI is set and THR is empty, is re-armed when ETBEI goes
//! from 0 to 1, and is cleared by reading IIR (when it is the reported source) or by
//! writing THR. Received bytes enter a 16-byte FIFO; what does not fit waits in a
//! bounded backlog and is fed in as the guest reads, so pasted input is not lost. With
//! the FIFO enabled, data below the trigger level raises the character-timeout
//! interrupt after four character times, which needs [`Timed`].

use crate::{Nanos, PortDevice, Timed, NANOS_PER_SEC};
use std::collections::VecDeque;

const FIFO_SIZE: usize = 16;
/// Bytes kept waiting beyond the FIFO; more input than this is dropped.
const BACKLOG_LIMIT: usize = 64 * 1024;
/// Transmitted bytes kept until the machine drains them; older output is dropped first.
const OUTPUT_LIMIT: usize = 1 << 20;
/// The UART's input clock divided by 16: the baud rate at divisor 1.
const BASE_BAUD: u64 = 115_200;

// IER bits.
const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_RLS: u8 = 1 << 2;
const IER_MS: u8 = 1 << 3;
// LSR bits.
const LSR_DR: u8 = 1 << 0;
const LSR_OE: u8 = 1 << 1;
const LSR_BI: u8 = 1 << 4;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
const LSR_FIFO_ERR: u8 = 1 << 7;
// MCR bits.
const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
// MSR bits.
const MSR_DCTS: u8 = 1 << 0;
const MSR_DDSR: u8 = 1 << 1;
const MSR_TERI: u8 = 1 << 2;
const MSR_DDCD: u8 = 1 << 3;
const MSR_CTS: u8 = 1 << 4;
const MSR_DSR: u8 = 1 << 5;
const MSR_RI: u8 = 1 << 6;
const MSR_DCD: u8 = 1 << 7;
// IIR interrupt identifications.
const IIR_NONE: u8 = 0x01;
const IIR_MSR: u8 = 0x00;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_RLS: u8 = 0x06;
const IIR_TIMEOUT: u8 = 0x0C;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Uart {
    base: u16,
    divisor: u16,
    ier: u8,
    lcr: u8,
    mcr: u8,
    /// Error bits of LSR (OE, BI); DR/THRE/TEMT are derived.
    lsr_errors: u8,
    /// MSR delta bits not yet read.
    msr_deltas: u8,
    scratch: u8,
    fifo_enabled: bool,
    trigger: usize,
    rx: VecDeque<u8>,
    backlog: VecDeque<u8>,
    output: Vec<u8>,
    /// The THR-empty interrupt is pending (see the module doc).
    thre_pending: bool,
    /// When the character timeout fires, if armed.
    timeout_at: Option<Nanos>,
    timeout_pending: bool,
    /// The latest virtual time the UART has seen (input arrives between calls).
    last_now: Nanos,
}

impl Uart {
    pub fn new(base: u16) -> Uart {
        Uart {
            base,
            divisor: 12, // 9600 baud
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            scratch: 0,
            fifo_enabled: false,
            trigger: 1,
            rx: VecDeque::new(),
            backlog: VecDeque::new(),
            output: Vec::new(),
            thre_pending: false,
            timeout_at: None,
            timeout_pending: false,
            last_now: 0,
        }
    }

    /// The bytes the guest transmitted since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Bytes arriving from outside.
    pub fn push_input(&mut self, bytes: &[u8]) {
        if self.mcr & MCR_LOOP != 0 {
            return; // the line is disconnected in loopback mode
        }
        let room = BACKLOG_LIMIT.saturating_sub(self.backlog.len());
        self.backlog.extend(bytes.iter().take(room));
        self.refill();
        if self.timeout_at.is_none() && !self.timeout_pending {
            self.arm_timeout(self.last_now);
        }
    }

    /// Interrupt output (OUT2 gates it onto the ISA line on PCs).
    pub fn irq_level(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && self.pending() != IIR_NONE
    }

    fn capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Moves waiting bytes into the receive FIFO as room allows.
    fn refill(&mut self) {
        while self.rx.len() < self.capacity() {
            match self.backlog.pop_front() {
                Some(b) => self.rx.push_back(b),
                None => break,
            }
        }
    }

    /// A byte received on the line (loopback): overruns if there is no room.
    fn receive(&mut self, b: u8) {
        if self.rx.len() >= self.capacity() {
            self.lsr_errors |= LSR_OE;
        } else {
            self.rx.push_back(b);
        }
    }

    /// Time of one character (start + data + parity + stop bits) at the current rate.
    fn char_time(&self) -> Nanos {
        let bits = 1
            + 5
            + (self.lcr & 3) as u64
            + ((self.lcr >> 3) & 1) as u64
            + 1
            + ((self.lcr >> 2) & 1) as u64;
        let baud = BASE_BAUD / self.divisor.max(1) as u64;
        bits * NANOS_PER_SEC / baud.max(1)
    }

    fn arm_timeout(&mut self, now: Nanos) {
        self.timeout_pending = false;
        self.timeout_at = if self.fifo_enabled && !self.rx.is_empty() {
            Some(now + 4 * self.char_time())
        } else {
            None
        };
    }

    fn lsr(&self) -> u8 {
        let mut v = self.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            v |= LSR_DR;
        }
        if self.fifo_enabled && self.lsr_errors & (LSR_OE | LSR_BI) != 0 {
            v |= LSR_FIFO_ERR;
        }
        v
    }

    fn msr(&self) -> u8 {
        let lines = if self.mcr & MCR_LOOP != 0 {
            let mut l = 0;
            if self.mcr & MCR_RTS != 0 {
                l |= MSR_CTS;
            }
            if self.mcr & MCR_DTR != 0 {
                l |= MSR_DSR;
            }
            if self.mcr & MCR_OUT1 != 0 {
                l |= MSR_RI;
            }
            if self.mcr & MCR_OUT2 != 0 {
                l |= MSR_DCD;
            }
            l
        } else {
            MSR_DCD | MSR_DSR | MSR_CTS
        };
        lines | self.msr_deltas
    }

    /// The highest-priority pending interrupt, as IIR bits 0-3.
    fn pending(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr_errors & (LSR_OE | LSR_BI) != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && self.rx.len() >= self.trigger.min(self.capacity()) {
            IIR_RDA
        } else if self.ier & IER_RDA != 0 && self.timeout_pending && !self.rx.is_empty() {
            IIR_TIMEOUT
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr_deltas != 0 {
            IIR_MSR
        } else {
            IIR_NONE
        }
    }

    fn set_mcr(&mut self, v: u8) {
        let old_msr = self.msr() & 0xF0;
        self.mcr = v & 0x1F;
        let new_msr = self.msr() & 0xF0;
        let changed = old_msr ^ new_msr;
        if changed & MSR_CTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
        if old_msr & MSR_RI != 0 && new_msr & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
    }
}

impl PortDevice for Uart {
    fn read(&mut self, port: u16, _size: u8, now: Nanos) -> u32 {
        self.last_now = now;
        let dlab = self.lcr & 0x80 != 0;
        let v = match port.wrapping_sub(self.base) {
            0 if dlab => self.divisor as u8,
            0 => {
                let b = self.rx.pop_front().unwrap_or(0);
                self.refill();
                self.arm_timeout(now);
                b
            }
            1 if dlab => (self.divisor >> 8) as u8,
            1 => self.ier,
            2 => {
                let id = self.pending();
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                id | if self.fifo_enabled { 0xC0 } else { 0 }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let v = self.lsr();
                self.lsr_errors = 0;
                v
            }
            6 => {
                let v = self.msr();
                self.msr_deltas = 0;
                v
            }
            7 => self.scratch,
            _ => 0xFF,
        };
        v as u32
    }

    fn write(&mut self, port: u16, _size: u8, value: u32, now: Nanos) {
        self.last_now = now;
        let v = value as u8;
        let dlab = self.lcr & 0x80 != 0;
        match port.wrapping_sub(self.base) {
            0 if dlab => self.divisor = (self.divisor & 0xFF00) | v as u16,
            0 => {
                if self.mcr & MCR_LOOP != 0 {
                    self.receive(v);
                    self.arm_timeout(now);
                } else {
                    if self.output.len() >= OUTPUT_LIMIT {
                        self.output.drain(..OUTPUT_LIMIT / 2);
                    }
                    self.output.push(v);
                }
                // Sent at once: THR is empty again, which is an interrupt event.
                self.thre_pending = true;
            }
            1 if dlab => self.divisor = (self.divisor & 0x00FF) | (v as u16) << 8,
            1 => {
                let old = self.ier;
                self.ier = v & 0x0F;
                if old & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            2 => {
                let enable = v & 1 != 0;
                if enable != self.fifo_enabled {
                    self.rx.clear();
                }
                self.fifo_enabled = enable;
                if v & 2 != 0 {
                    self.rx.clear();
                    self.lsr_errors &= !LSR_OE;
                }
                self.trigger = [1, 4, 8, 14][(v >> 6) as usize];
                self.refill();
                self.arm_timeout(now);
            }
            3 => self.lcr = v,
            4 => self.set_mcr(v),
            7 => self.scratch = v,
            _ => {}
        }
    }
}

impl Timed for Uart {
    fn next_event(&self) -> Option<Nanos> {
        if self.timeout_pending {
            None
        } else {
            self.timeout_at
        }
    }

    fn advance(&mut self, now: Nanos) {
        self.last_now = now;
        if let Some(t) = self.timeout_at {
            if now >= t {
                self.timeout_at = None;
                self.timeout_pending = !self.rx.is_empty();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COM1: u16 = 0x3F8;

    fn rd(u: &mut Uart, reg: u16) -> u8 {
        u.read(COM1 + reg, 1, 0) as u8
    }
    fn wr(u: &mut Uart, reg: u16, v: u8) {
        u.write(COM1 + reg, 1, v as u32, 0)
    }

    #[test]
    fn divisor_latch_and_line_control() {
        let mut u = Uart::new(COM1);
        wr(&mut u, 3, 0x80);
        wr(&mut u, 0, 0x01);
        wr(&mut u, 1, 0x00);
        assert_eq!(rd(&mut u, 0), 0x01);
        assert_eq!(rd(&mut u, 1), 0x00);
        wr(&mut u, 3, 0x03);
        assert_eq!(u.divisor, 1);
        assert_eq!(rd(&mut u, 3), 0x03);
        wr(&mut u, 7, 0x5A);
        assert_eq!(rd(&mut u, 7), 0x5A);
    }

    #[test]
    fn transmit_goes_to_output_and_thre_interrupt_follows_etbei() {
        let mut u = Uart::new(COM1);
        wr(&mut u, 4, MCR_OUT2);
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_NONE);
        assert!(!u.irq_level());
        // ETBEI 0 -> 1 with THR empty: interrupt.
        wr(&mut u, 1, IER_THRE);
        assert!(u.irq_level());
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_THRE);
        // Reading IIR cleared it.
        assert!(!u.irq_level());
        wr(&mut u, 0, b'h');
        wr(&mut u, 0, b'i');
        assert!(u.irq_level());
        assert_eq!(u.take_output(), b"hi");
        assert!(u.take_output().is_empty());
        assert_eq!(rd(&mut u, 5) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        // Without OUT2 the line stays low.
        wr(&mut u, 4, 0);
        assert!(!u.irq_level());
    }

    #[test]
    fn receive_interrupt_and_fifo_trigger_levels() {
        let mut u = Uart::new(COM1);
        wr(&mut u, 4, MCR_OUT2);
        wr(&mut u, 1, IER_RDA);
        u.push_input(b"a");
        assert!(u.irq_level());
        assert_eq!(rd(&mut u, 2), IIR_RDA);
        assert_eq!(rd(&mut u, 5) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, 0), b'a');
        assert!(!u.irq_level());
        // FIFO on, trigger 4: three bytes do not trigger, four do.
        wr(&mut u, 2, 0x41);
        assert_eq!(rd(&mut u, 2) & 0xC0, 0xC0);
        u.push_input(b"xyz");
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_NONE);
        u.push_input(b"w");
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_RDA);
        // Clear the receive FIFO.
        wr(&mut u, 2, 0x43);
        assert_eq!(rd(&mut u, 5) & LSR_DR, 0);
    }

    #[test]
    fn character_timeout_fires_after_four_character_times() {
        let mut u = Uart::new(COM1);
        wr(&mut u, 4, MCR_OUT2);
        wr(&mut u, 1, IER_RDA);
        wr(&mut u, 2, 0xC1); // FIFO, trigger 14
        u.advance(1000);
        u.push_input(b"ab");
        assert!(!u.irq_level());
        let t = u.next_event().expect("timeout scheduled");
        assert_eq!(t, 1000 + 4 * u.char_time());
        u.advance(t - 1);
        assert!(!u.irq_level());
        u.advance(t);
        assert!(u.irq_level());
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_TIMEOUT);
        assert_eq!(u.next_event(), None);
        // Reading data clears it and re-arms for the remaining byte.
        assert_eq!(u.read(COM1, 1, t + 10) as u8, b'a');
        assert!(!u.irq_level());
        assert!(u.next_event().is_some());
    }

    #[test]
    fn loopback_returns_data_and_maps_modem_lines() {
        let mut u = Uart::new(COM1);
        wr(&mut u, 4, MCR_LOOP);
        rd(&mut u, 6);
        wr(&mut u, 0, 0x42);
        assert!(u.take_output().is_empty());
        assert_eq!(rd(&mut u, 0), 0x42);
        wr(
            &mut u,
            4,
            MCR_LOOP | MCR_RTS | MCR_DTR | MCR_OUT1 | MCR_OUT2,
        );
        let msr = rd(&mut u, 6);
        assert_eq!(msr & 0xF0, MSR_CTS | MSR_DSR | MSR_RI | MSR_DCD);
        assert_eq!(
            msr & (MSR_DCTS | MSR_DDSR | MSR_DDCD),
            MSR_DCTS | MSR_DDSR | MSR_DDCD
        );
        assert_eq!(rd(&mut u, 6) & 0x0F, 0);
        wr(&mut u, 4, 0);
        assert_eq!(rd(&mut u, 6) & 0xF0, MSR_DCD | MSR_DSR | MSR_CTS);
    }

    #[test]
    fn overrun_in_loopback_without_fifo() {
        let mut u = Uart::new(COM1);
        wr(&mut u, 4, MCR_LOOP | MCR_OUT2);
        wr(&mut u, 1, IER_RLS);
        wr(&mut u, 0, 1);
        wr(&mut u, 0, 2);
        assert!(u.irq_level());
        assert_eq!(rd(&mut u, 2) & 0x0F, IIR_RLS);
        assert_eq!(rd(&mut u, 5) & LSR_OE, LSR_OE);
        assert_eq!(rd(&mut u, 5) & LSR_OE, 0);
        assert_eq!(rd(&mut u, 0), 1);
    }

    #[test]
    fn backlog_feeds_the_fifo_as_the_guest_reads() {
        let mut u = Uart::new(COM1);
        wr(&mut u, 2, 0x01);
        let text: Vec<u8> = (0..100u8).collect();
        u.push_input(&text);
        let mut got = Vec::new();
        while rd(&mut u, 5) & LSR_DR != 0 {
            got.push(rd(&mut u, 0));
        }
        assert_eq!(got, text);
        assert_eq!(rd(&mut u, 5) & LSR_OE, 0);
    }
}
