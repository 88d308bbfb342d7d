//! The MC146818 real-time clock and its 128 bytes of CMOS RAM (ports 70h/71h).
//!
//! The clock is kept as Unix seconds at a reference virtual time: it starts at the date
//! the machine gives (the one outside input of this device) and advances with virtual
//! time only. The periodic, alarm and update-ended interrupts raise IRQ 8 through
//! register C; their flags are brought up to date whenever the device is touched, and
//! [`Timed`] schedules the next one that is enabled.

use crate::{Nanos, PortDevice, Timed, NANOS_PER_SEC};

const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const CENTURY: usize = 0x32;

const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// Update-in-progress lasts this long before each second's update.
const UIP_NANOS: Nanos = 244_000;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Rtc {
    #[serde(with = "serde_big_array::BigArray")]
    cmos: [u8; 128],
    index: u8,
    nmi_masked: bool,
    /// Unix seconds at virtual time `base_time`.
    base_secs: i64,
    base_time: Nanos,
    /// Interrupt flags of register C are current up to this time.
    checked_at: Nanos,
    /// Next periodic interrupt time, when the rate is non-zero.
    next_periodic: Option<Nanos>,
    last_now: Nanos,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

impl Rtc {
    pub fn new(start_unix_seconds: i64) -> Rtc {
        let mut cmos = [0u8; 128];
        cmos[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        cmos[REG_B] = B_24H; // BCD, 24-hour
        cmos[REG_D] = 0x80; // valid RAM and time
        let mut rtc = Rtc {
            cmos,
            index: 0,
            nmi_masked: false,
            base_secs: start_unix_seconds,
            base_time: 0,
            checked_at: 0,
            next_periodic: None,
            last_now: 0,
        };
        rtc.store_time(start_unix_seconds);
        rtc.restart_periodic(0);
        rtc
    }

    /// CMOS RAM as the machine or BIOS fills it (memory sizes, configuration).
    pub fn cmos(&self, index: u8) -> u8 {
        self.cmos[(index & 0x7F) as usize]
    }

    pub fn set_cmos(&mut self, index: u8, value: u8) {
        self.cmos[(index & 0x7F) as usize] = value;
    }

    /// Bit 7 of the last index write: NMIs disabled.
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// IRQ 8: an enabled interrupt flag is pending in register C.
    pub fn irq_level(&self) -> bool {
        self.cmos[REG_C] & C_IRQF != 0
    }

    fn binary(&self) -> bool {
        self.cmos[REG_B] & B_BINARY != 0
    }

    fn encode(&self, v: u32) -> u8 {
        if self.binary() {
            v as u8
        } else {
            ((v / 10) << 4 | (v % 10)) as u8
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.binary() {
            v as u32
        } else {
            (v >> 4).min(9) as u32 * 10 + (v & 0xF).min(9) as u32
        }
    }

    fn seconds_at(&self, now: Nanos) -> i64 {
        if self.cmos[REG_B] & B_SET != 0 {
            return self.base_secs;
        }
        self.base_secs + (now.saturating_sub(self.base_time) / NANOS_PER_SEC) as i64
    }

    /// Writes the time fields for `secs`.
    fn store_time(&mut self, secs: i64) {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let (h, min, s) = (tod / 3600, tod / 60 % 60, tod % 60);
        let hour = if self.cmos[REG_B] & B_24H != 0 {
            self.encode(h)
        } else {
            let h12 = if h % 12 == 0 { 12 } else { h % 12 };
            self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
        };
        // Day of week: 1 = Sunday; 1970-01-01 was a Thursday.
        let wday = (days + 4).rem_euclid(7) as u32 + 1;
        self.cmos[0x00] = self.encode(s);
        self.cmos[0x02] = self.encode(min);
        self.cmos[0x04] = hour;
        self.cmos[0x06] = self.encode(wday);
        self.cmos[0x07] = self.encode(d);
        self.cmos[0x08] = self.encode(m);
        self.cmos[0x09] = self.encode(y.rem_euclid(100) as u32);
        self.cmos[CENTURY] = self.encode(y.div_euclid(100).clamp(0, 99) as u32);
    }

    /// Reads the time fields back into Unix seconds.
    fn load_time(&self) -> i64 {
        let hour_reg = self.cmos[0x04];
        let mut h = self.decode(hour_reg & 0x7F);
        if self.cmos[REG_B] & B_24H == 0 {
            h %= 12;
            if hour_reg & 0x80 != 0 {
                h += 12;
            }
        }
        let year =
            self.decode(self.cmos[CENTURY]) as i64 * 100 + self.decode(self.cmos[0x09]) as i64;
        let month = self.decode(self.cmos[0x08]).clamp(1, 12);
        let day = self.decode(self.cmos[0x07]).clamp(1, 31);
        days_from_civil(year, month, day) * 86_400
            + h.min(23) as i64 * 3600
            + self.decode(self.cmos[0x02]).min(59) as i64 * 60
            + self.decode(self.cmos[0x00]).min(59) as i64
    }

    fn periodic_period(&self) -> Option<Nanos> {
        let rate = self.cmos[REG_A] & 0x0F;
        match rate {
            0 => None,
            1 | 2 => Some((NANOS_PER_SEC << (rate + 6)) / 32_768),
            r => Some((NANOS_PER_SEC << (r - 1)) / 32_768),
        }
    }

    /// The virtual time of the update that makes the clock read `secs + 1`.
    fn next_update_after(&self, t: Nanos) -> Nanos {
        let since = t.saturating_sub(self.base_time);
        self.base_time + (since / NANOS_PER_SEC + 1) * NANOS_PER_SEC
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        let tod = secs.rem_euclid(86_400) as u32;
        let field = |reg: usize, v: u32| {
            let a = self.cmos[reg];
            a & 0xC0 == 0xC0 || self.decode(a) == v
        };
        field(0x01, tod % 60) && field(0x03, tod / 60 % 60) && field(0x05, tod / 3600)
    }

    /// Sets PF/UF/AF for everything that happened up to `now`.
    fn catch_up(&mut self, now: Nanos) {
        self.last_now = self.last_now.max(now);
        if now <= self.checked_at {
            return;
        }
        if let (Some(next), Some(period)) = (self.next_periodic, self.periodic_period()) {
            if now >= next {
                self.cmos[REG_C] |= C_PF;
                let missed = (now - next) / period + 1;
                self.next_periodic = Some(next + missed * period);
            }
        }
        if self.cmos[REG_B] & B_SET == 0 {
            let before = self.seconds_at(self.checked_at);
            let after = self.seconds_at(now);
            if after > before {
                self.cmos[REG_C] |= C_UF;
                // Check the alarm for each second passed (at most a day's worth).
                let from = before.max(after - 86_400) + 1;
                if (from..=after).any(|s| self.alarm_matches(s)) {
                    self.cmos[REG_C] |= C_AF;
                }
            }
        }
        self.checked_at = now;
        self.update_irqf();
    }

    fn update_irqf(&mut self) {
        let c = self.cmos[REG_C];
        let b = self.cmos[REG_B];
        let pending = (c & C_PF != 0 && b & B_PIE != 0)
            || (c & C_AF != 0 && b & B_AIE != 0)
            || (c & C_UF != 0 && b & B_UIE != 0);
        if pending {
            self.cmos[REG_C] |= C_IRQF;
        } else {
            self.cmos[REG_C] &= !C_IRQF;
        }
    }

    fn restart_periodic(&mut self, now: Nanos) {
        self.next_periodic = self.periodic_period().map(|p| now + p);
    }
}

impl PortDevice for Rtc {
    fn read(&mut self, port: u16, _size: u8, now: Nanos) -> u32 {
        if port != 0x71 {
            return 0xFF;
        }
        self.catch_up(now);
        let i = self.index as usize;
        let v = match i {
            0x00 | 0x02 | 0x04 | 0x06..=0x09 | CENTURY => {
                if self.cmos[REG_B] & B_SET == 0 {
                    let secs = self.seconds_at(now);
                    self.store_time(secs);
                }
                self.cmos[i]
            }
            REG_A => {
                let into = now.saturating_sub(self.base_time) % NANOS_PER_SEC;
                let uip = self.cmos[REG_B] & B_SET == 0 && into >= NANOS_PER_SEC - UIP_NANOS;
                (self.cmos[REG_A] & 0x7F) | if uip { 0x80 } else { 0 }
            }
            REG_C => {
                let v = self.cmos[REG_C];
                self.cmos[REG_C] = 0;
                v
            }
            _ => self.cmos[i],
        };
        v as u32
    }

    fn write(&mut self, port: u16, _size: u8, value: u32, now: Nanos) {
        let v = value as u8;
        if port == 0x70 {
            self.index = v & 0x7F;
            self.nmi_masked = v & 0x80 != 0;
            return;
        }
        if port != 0x71 {
            return;
        }
        self.catch_up(now);
        let i = self.index as usize;
        match i {
            0x00 | 0x02 | 0x04 | 0x06..=0x09 | CENTURY => {
                if self.cmos[REG_B] & B_SET == 0 {
                    let secs = self.seconds_at(now);
                    self.store_time(secs);
                }
                self.cmos[i] = v;
                if self.cmos[REG_B] & B_SET == 0 {
                    self.base_secs = self.load_time();
                    self.base_time = now;
                    self.checked_at = now;
                }
            }
            REG_A => {
                self.cmos[REG_A] = v & 0x7F;
                self.restart_periodic(now);
            }
            REG_B => {
                let old = self.cmos[REG_B];
                if old & B_SET == 0 && v & B_SET != 0 {
                    // Freeze the clock at its current reading.
                    let secs = self.seconds_at(now);
                    self.store_time(secs);
                    self.base_secs = secs;
                }
                // Changing the data mode does not convert the stored registers.
                self.cmos[REG_B] = if v & B_SET != 0 { v & !B_UIE } else { v };
                if old & B_SET != 0 && v & B_SET == 0 {
                    self.base_secs = self.load_time();
                    self.base_time = now;
                    self.checked_at = now;
                }
                self.update_irqf();
            }
            REG_C | REG_D => {}
            _ => self.cmos[i] = v,
        }
    }
}

impl Timed for Rtc {
    fn next_event(&self) -> Option<Nanos> {
        let b = self.cmos[REG_B];
        let mut next = None;
        if b & B_PIE != 0 && self.cmos[REG_C] & C_PF == 0 {
            next = self.next_periodic;
        }
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            let u = self.next_update_after(self.checked_at.max(self.last_now));
            next = Some(next.map_or(u, |n: Nanos| n.min(u)));
        }
        next
    }

    fn advance(&mut self, now: Nanos) {
        self.catch_up(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(r: &mut Rtc, i: u8, now: Nanos) -> u8 {
        r.write(0x70, 1, i as u32, now);
        r.read(0x71, 1, now) as u8
    }
    fn wr(r: &mut Rtc, i: u8, v: u8, now: Nanos) {
        r.write(0x70, 1, i as u32, now);
        r.write(0x71, 1, v as u32, now);
    }

    /// 2024-02-28 23:30:15 UTC.
    const START: i64 = 1_709_163_015;

    #[test]
    fn date_arithmetic() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(2100, 3, 1)), (2100, 3, 1));
        assert_eq!(START.div_euclid(86_400), days_from_civil(2024, 2, 28));
    }

    #[test]
    fn reads_bcd_then_across_the_leap_day() {
        let mut r = Rtc::new(START);
        assert_eq!(rd(&mut r, 0x00, 0), 0x15);
        assert_eq!(rd(&mut r, 0x02, 0), 0x30);
        assert_eq!(rd(&mut r, 0x04, 0), 0x23);
        assert_eq!(rd(&mut r, 0x07, 0), 0x28);
        assert_eq!(rd(&mut r, 0x08, 0), 0x02);
        assert_eq!(rd(&mut r, 0x09, 0), 0x24);
        assert_eq!(rd(&mut r, 0x32, 0), 0x20);
        assert_eq!(rd(&mut r, 0x06, 0), 4, "Wednesday");
        // One day and one hour later: 2024-03-01 00:30:15.
        let t = (86_400 + 3600) * NANOS_PER_SEC;
        assert_eq!(rd(&mut r, 0x07, t), 0x01);
        assert_eq!(rd(&mut r, 0x08, t), 0x03);
        assert_eq!(rd(&mut r, 0x04, t), 0x00);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut r = Rtc::new(START);
        wr(&mut r, 0x0B, B_BINARY, 0); // 12-hour, binary
        assert_eq!(rd(&mut r, 0x04, 0), 0x80 | 11, "11 PM");
        assert_eq!(rd(&mut r, 0x02, 0), 30);
    }

    #[test]
    fn setting_the_clock() {
        let mut r = Rtc::new(START);
        wr(&mut r, 0x0B, B_SET | B_24H, 0);
        wr(&mut r, 0x04, 0x08, 0);
        wr(&mut r, 0x02, 0x00, 0);
        wr(&mut r, 0x00, 0x00, 0);
        // Frozen while SET is held.
        assert_eq!(rd(&mut r, 0x00, 5 * NANOS_PER_SEC), 0x00);
        wr(&mut r, 0x0B, B_24H, 10 * NANOS_PER_SEC);
        assert_eq!(rd(&mut r, 0x04, 10 * NANOS_PER_SEC), 0x08);
        assert_eq!(rd(&mut r, 0x00, 13 * NANOS_PER_SEC), 0x03);
    }

    #[test]
    fn periodic_interrupt_rate() {
        let mut r = Rtc::new(START);
        wr(&mut r, 0x0A, 0x26, 0);
        wr(&mut r, 0x0B, B_24H | B_PIE, 0);
        let mut count = 0;
        while let Some(t) = r.next_event() {
            if t > NANOS_PER_SEC {
                break;
            }
            r.advance(t);
            assert!(r.irq_level());
            assert_eq!(rd(&mut r, 0x0C, t) & (C_IRQF | C_PF), C_IRQF | C_PF);
            assert!(!r.irq_level());
            count += 1;
        }
        assert_eq!(count, 1024);
    }

    #[test]
    fn update_ended_and_alarm_interrupts() {
        let mut r = Rtc::new(START);
        wr(&mut r, 0x0B, B_24H | B_UIE, 0);
        let t = r.next_event().unwrap();
        assert_eq!(t, NANOS_PER_SEC);
        r.advance(t);
        assert!(r.irq_level());
        assert_eq!(rd(&mut r, 0x0C, t) & C_UF, C_UF);
        // Alarm at 23:30:20, don't-care hours.
        wr(&mut r, 0x01, 0x20, t);
        wr(&mut r, 0x03, 0x30, t);
        wr(&mut r, 0x05, 0xC0, t);
        wr(&mut r, 0x0B, B_24H | B_AIE, t);
        r.advance(4 * NANOS_PER_SEC);
        assert!(!r.irq_level());
        r.advance(5 * NANOS_PER_SEC);
        assert!(r.irq_level());
        assert_eq!(rd(&mut r, 0x0C, 5 * NANOS_PER_SEC) & C_AF, C_AF);
    }

    #[test]
    fn update_in_progress_and_nmi_mask() {
        let mut r = Rtc::new(START);
        assert_eq!(rd(&mut r, 0x0A, 0) & 0x80, 0);
        assert_eq!(rd(&mut r, 0x0A, NANOS_PER_SEC - 100_000) & 0x80, 0x80);
        r.write(0x70, 1, 0x8F, 0);
        assert!(r.nmi_masked());
        r.set_cmos(0x10, 0x40);
        assert_eq!(rd(&mut r, 0x10, 0), 0x40);
        assert_eq!(rd(&mut r, 0x0D, 0), 0x80);
    }
}
