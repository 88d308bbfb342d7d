//! The 8254 programmable interval timer: three 16-bit counters clocked at 1.193182 MHz.
//!
//! Counters are not ticked: each remembers the PIT clock at which it was loaded, and its
//! count and OUT level are computed from virtual time when asked. Channel 0's OUT is
//! IRQ 0; [`Timed`] gives the time of its next transition so the machine can advance
//! the PIT exactly there and the interrupt controller sees every edge. Channel 2's gate
//! and OUT are wired to port 61h (the machine's job). Channel 1 (DRAM refresh) counts
//! but drives nothing.

use crate::{Nanos, PortDevice, Timed, NANOS_PER_SEC};

/// Input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// PIT clocks elapsed at virtual time `t`.
fn clocks_at(t: Nanos) -> u64 {
    (t as u128 * PIT_HZ as u128 / NANOS_PER_SEC as u128) as u64
}

/// The first virtual time at which `k` clocks have elapsed.
fn time_of_clock(k: u64) -> Nanos {
    (k as u128 * NANOS_PER_SEC as u128).div_ceil(PIT_HZ as u128) as u64
}

fn from_bcd(v: u16) -> u32 {
    let d = |s: u16| ((v >> s) & 0xF).min(9) as u32;
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Channel {
    mode: u8,
    bcd: bool,
    /// 1 = LSB only, 2 = MSB only, 3 = LSB then MSB.
    access: u8,
    /// The count written (in binary), 1..=65536 (or 10000 in BCD).
    reload: u32,
    /// The counter has a count and is counting (or waiting for a gate trigger).
    loaded: bool,
    /// Clock at which counting (re)started.
    start: u64,
    /// Counting is stopped by the gate: the elapsed clocks at the stop.
    frozen: Option<u64>,
    gate: bool,
    /// Modes 1 and 5 have been triggered by a gate edge.
    triggered: bool,
    /// Write state: the LSB of an LSB-then-MSB write is waiting for the MSB.
    write_lsb: Option<u8>,
    /// Read state: the MSB of an LSB-then-MSB read comes next.
    read_msb_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
    null_count: bool,
}

impl Channel {
    fn new(gate: bool) -> Channel {
        Channel {
            mode: 0,
            bcd: false,
            access: 3,
            reload: 0x1_0000,
            loaded: false,
            start: 0,
            frozen: None,
            gate,
            triggered: false,
            write_lsb: None,
            read_msb_next: false,
            latched_count: None,
            latched_status: None,
            null_count: true,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// Clocks counted since the load, at clock `now`.
    fn elapsed(&self, now: u64) -> u64 {
        match self.frozen {
            Some(e) => e,
            None => now.saturating_sub(self.start),
        }
    }

    /// Whether the counter is running its cycle (loaded, and triggered for modes 1/5).
    fn running(&self) -> bool {
        self.loaded && (!matches!(self.mode, 1 | 5) || self.triggered)
    }

    /// OUT at clock `now`.
    fn out(&self, now: u64) -> bool {
        if !self.loaded {
            // After a control word: low in mode 0, high otherwise.
            return self.mode != 0;
        }
        let n = self.reload as u64;
        let e = self.elapsed(now);
        match self.mode {
            0 => e >= n,
            1 => !self.triggered || e >= n,
            2 => !self.gate || e % n != n - 1,
            3 => !self.gate || e % n < n.div_ceil(2),
            4 => e != n,
            _ => !self.triggered || e != n,
        }
    }

    /// The count as the counter element holds it at clock `now`.
    fn count(&self, now: u64) -> u32 {
        if !self.running() {
            return self.reload % self.modulus();
        }
        let n = self.reload as u64;
        let e = self.elapsed(now);
        let c = match self.mode {
            2 => n - e % n,
            3 => {
                // Decrements by two; each half period starts from the (even) reload.
                let p = e % n;
                let half = n.div_ceil(2);
                let into = if p < half { p } else { p - half };
                (n & !1).saturating_sub(2 * into).max(2)
            }
            _ => {
                // Modes 0, 1, 4, 5 count down and wrap.
                let m = self.modulus() as u64;
                (n + m - e % m) % m
            }
        };
        c as u32 % self.modulus()
    }

    /// The next clock after `now` at which OUT changes, for a running counter.
    fn next_transition(&self, now: u64) -> Option<u64> {
        if !self.running() || self.frozen.is_some() {
            return None;
        }
        let n = self.reload as u64;
        let e = self.elapsed(now);
        let at = |d: u64| Some(self.start + d);
        match self.mode {
            0 | 1 => (e < n).then(|| self.start + n).or(None),
            2 => {
                let base = e - e % n;
                // Low at n-1, high again at n (the next period's 0).
                if e % n < n - 1 {
                    at(base + n - 1)
                } else {
                    at(base + n)
                }
            }
            3 => {
                let base = e - e % n;
                let half = n.div_ceil(2);
                if e % n < half {
                    at(base + half)
                } else {
                    at(base + n)
                }
            }
            _ => {
                if e < n {
                    at(n)
                } else if e == n {
                    at(n + 1)
                } else {
                    None
                }
            }
        }
    }

    fn status(&self, now: u64) -> u8 {
        (self.out(now) as u8) << 7
            | (self.null_count as u8) << 6
            | self.access << 4
            | self.mode << 1
            | self.bcd as u8
    }

    fn load(&mut self, value: u16, now: u64) {
        let v = if self.bcd {
            from_bcd(value)
        } else {
            value as u32
        };
        self.reload = if v == 0 { self.modulus() } else { v };
        self.loaded = true;
        self.null_count = false;
        // Counting starts with the next clock.
        self.start = now + 1;
        self.frozen = if self.gate || matches!(self.mode, 1 | 5) {
            None
        } else {
            Some(0)
        };
        if matches!(self.mode, 1 | 5) {
            self.triggered = false;
        }
    }

    fn set_gate(&mut self, level: bool, now: u64) {
        if level == self.gate {
            return;
        }
        self.gate = level;
        match self.mode {
            0 | 4 => {
                // The gate only enables counting.
                if level {
                    if let Some(e) = self.frozen.take() {
                        self.start = now.saturating_sub(e);
                    }
                } else if self.frozen.is_none() {
                    self.frozen = Some(self.elapsed(now));
                }
            }
            _ => {
                // A rising edge (re)starts the count; in modes 2 and 3 a low gate stops it.
                if level {
                    self.start = now + 1;
                    self.frozen = None;
                    self.triggered = true;
                } else if matches!(self.mode, 2 | 3) {
                    self.frozen = Some(self.elapsed(now));
                }
            }
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        let value = match self.latched_count {
            Some(c) => c,
            None => {
                let c = self.count(now);
                if self.bcd {
                    to_bcd(c)
                } else {
                    c as u16
                }
            }
        };
        match self.access {
            1 => {
                self.latched_count = None;
                value as u8
            }
            2 => {
                self.latched_count = None;
                (value >> 8) as u8
            }
            _ => {
                if self.read_msb_next {
                    self.read_msb_next = false;
                    self.latched_count = None;
                    (value >> 8) as u8
                } else {
                    self.read_msb_next = true;
                    value as u8
                }
            }
        }
    }

    fn write(&mut self, v: u8, now: u64) {
        match self.access {
            1 => self.load(v as u16, now),
            2 => self.load((v as u16) << 8, now),
            _ => match self.write_lsb.take() {
                Some(lsb) => self.load(lsb as u16 | (v as u16) << 8, now),
                None => {
                    self.write_lsb = Some(v);
                    // Mode 0: writing the first byte stops the count and drops OUT.
                    if self.mode == 0 {
                        self.loaded = false;
                    }
                }
            },
        }
    }

    fn control(&mut self, access: u8, mode: u8, bcd: bool, now: u64) {
        if access == 0 {
            if self.latched_count.is_none() {
                let c = self.count(now);
                self.latched_count = Some(if self.bcd { to_bcd(c) } else { c as u16 });
                self.read_msb_next = false;
            }
            return;
        }
        self.access = access;
        self.mode = if mode >= 6 { mode - 4 } else { mode };
        self.bcd = bcd;
        self.loaded = false;
        self.triggered = false;
        self.null_count = true;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latched_count = None;
        self.latched_status = None;
        self.frozen = None;
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Pit {
    channels: [Channel; 3],
    /// The virtual time of the last call (for `irq_level`).
    last_now: Nanos,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    pub fn new() -> Pit {
        Pit {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            last_now: 0,
        }
    }

    /// Channel 0's OUT (IRQ 0) as of the last call.
    pub fn irq_level(&self) -> bool {
        self.channels[0].out(clocks_at(self.last_now))
    }

    /// Channel 2's gate (port 61h bit 0).
    pub fn set_gate2(&mut self, level: bool, now: Nanos) {
        self.last_now = now;
        self.channels[2].set_gate(level, clocks_at(now));
    }

    /// Channel 2's OUT (port 61h bit 5).
    pub fn out2(&self, now: Nanos) -> bool {
        self.channels[2].out(clocks_at(now))
    }
}

impl PortDevice for Pit {
    fn read(&mut self, port: u16, _size: u8, now: Nanos) -> u32 {
        self.last_now = now;
        let clk = clocks_at(now);
        match port {
            0x40..=0x42 => self.channels[(port - 0x40) as usize].read(clk) as u32,
            _ => 0xFF,
        }
    }

    fn write(&mut self, port: u16, _size: u8, value: u32, now: Nanos) {
        self.last_now = now;
        let clk = clocks_at(now);
        let v = value as u8;
        match port {
            0x40..=0x42 => self.channels[(port - 0x40) as usize].write(v, clk),
            0x43 => {
                let sel = v >> 6;
                if sel == 3 {
                    // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
                    for (i, ch) in self.channels.iter_mut().enumerate() {
                        if v & (2 << i) == 0 {
                            continue;
                        }
                        if v & 0x10 == 0 && ch.latched_status.is_none() {
                            ch.latched_status = Some(ch.status(clk));
                        }
                        if v & 0x20 == 0 {
                            ch.control(0, 0, false, clk);
                        }
                    }
                } else {
                    self.channels[sel as usize].control(
                        (v >> 4) & 3,
                        (v >> 1) & 7,
                        v & 1 != 0,
                        clk,
                    );
                }
            }
            _ => {}
        }
    }
}

impl Timed for Pit {
    fn next_event(&self) -> Option<Nanos> {
        let now = clocks_at(self.last_now);
        self.channels[0].next_transition(now).map(time_of_clock)
    }

    fn advance(&mut self, now: Nanos) {
        self.last_now = self.last_now.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(p: &mut Pit, ch: u16, mode: u8, count: u16, now: Nanos) {
        p.write(
            0x43,
            1,
            ((ch as u32) << 6) | 0x30 | ((mode as u32) << 1),
            now,
        );
        p.write(0x40 + ch, 1, (count & 0xFF) as u32, now);
        p.write(0x40 + ch, 1, (count >> 8) as u32, now);
    }

    fn read_count(p: &mut Pit, ch: u16, now: Nanos) -> u16 {
        p.write(0x43, 1, (ch as u32) << 6, now); // latch
        let lo = p.read(0x40 + ch, 1, now);
        let hi = p.read(0x40 + ch, 1, now);
        (lo | hi << 8) as u16
    }

    #[test]
    fn mode_2_rate_generator_edges_over_one_second() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 11932, 0);
        assert!(p.irq_level());
        let mut rising = 0;
        let mut level = p.irq_level();
        while let Some(t) = p.next_event() {
            if t > NANOS_PER_SEC {
                break;
            }
            p.advance(t);
            let l = p.irq_level();
            assert_ne!(l, level, "every event is a transition");
            if l {
                rising += 1;
            }
            level = l;
        }
        // 1193182 / 11932 = 99.998...: the count starts one clock after the write.
        let expected = (clocks_at(NANOS_PER_SEC) - 1) / 11932;
        assert_eq!(rising, expected);
    }

    #[test]
    fn mode_3_square_wave() {
        let mut p = Pit::new();
        program(&mut p, 0, 3, 1000, 0);
        let start = 1; // counting starts with the next clock
        let t = |clk: u64| time_of_clock(start + clk);
        p.advance(t(499));
        assert!(p.irq_level());
        p.advance(t(500));
        assert!(!p.irq_level());
        p.advance(t(999));
        assert!(!p.irq_level());
        p.advance(t(1000));
        assert!(p.irq_level());
        assert_eq!(p.next_event(), Some(t(1500)));
    }

    #[test]
    fn mode_0_interrupt_on_terminal_count_and_readout() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 100, 0);
        assert!(!p.irq_level());
        assert_eq!(read_count(&mut p, 0, time_of_clock(11)), 90);
        let end = p.next_event().unwrap();
        assert_eq!(end, time_of_clock(101));
        p.advance(end);
        assert!(p.irq_level());
        assert_eq!(p.next_event(), None);
        // The counter wraps after terminal count.
        assert_eq!(read_count(&mut p, 0, time_of_clock(102)), 0xFFFF);
    }

    #[test]
    fn lsb_msb_sequencing_and_read_back_status() {
        let mut p = Pit::new();
        p.write(0x43, 1, 0x14, 0); // ch0, LSB only, mode 2
        p.write(0x40, 1, 50, 0);
        p.write(0x43, 1, 0xE2, 0); // read-back status of ch0
        let status = p.read(0x40, 1, 0) as u8;
        assert_eq!(status & 0x3F, 0x14);
        assert_eq!(status & 0x40, 0, "count loaded");
        assert_eq!(status & 0x80, 0x80, "OUT high in mode 2");
        // Read-back count latch of ch0 (bit 5 clear, bit 4 set).
        p.write(0x43, 1, 0xD2, time_of_clock(11));
        assert_eq!(p.read(0x40, 1, time_of_clock(30)), 40);
    }

    #[test]
    fn bcd_counting() {
        let mut p = Pit::new();
        p.write(0x43, 1, 0x31, 0); // ch0, LSB/MSB, mode 0, BCD
        p.write(0x40, 1, 0x00, 0);
        p.write(0x40, 1, 0x10, 0); // 1000
        assert_eq!(read_count(&mut p, 0, time_of_clock(1 + 1)), 0x0999);
    }

    #[test]
    fn channel_2_calibration_through_the_gate() {
        let mut p = Pit::new();
        p.set_gate2(false, 0);
        p.write(0x43, 1, 0xB0, 0); // ch2, LSB/MSB, mode 0
        p.write(0x42, 1, 0xFF, 0);
        p.write(0x42, 1, 0xFF, 0);
        // Gate low: nothing counts.
        assert!(!p.out2(time_of_clock(70_000)));
        p.set_gate2(true, time_of_clock(100));
        assert!(!p.out2(time_of_clock(100 + 65_000)));
        assert!(p.out2(time_of_clock(100 + 65_536)));
        // Mode 1 on channel 2: the gate edge triggers the one-shot.
        p.write(0x43, 1, 0xB2, 0);
        p.write(0x42, 1, 10, 0);
        p.write(0x42, 1, 0, 0);
        p.set_gate2(false, time_of_clock(200_000));
        assert!(p.out2(time_of_clock(200_001)));
        p.set_gate2(true, time_of_clock(200_010));
        assert!(!p.out2(time_of_clock(200_015)));
        assert!(p.out2(time_of_clock(200_021)));
    }

    #[test]
    fn reprogramming_restarts_the_count() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 1000, 0);
        program(&mut p, 0, 2, 100, time_of_clock(500));
        assert_eq!(p.next_event(), Some(time_of_clock(501 + 99)));
        assert_eq!(clocks_at(time_of_clock(12345)), 12345);
    }
}
