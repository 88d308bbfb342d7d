//! The i8042 keyboard controller with a PS/2 keyboard and a PS/2 mouse.
//!
//! The controller has one output buffer shared by both devices: bytes wait in a small
//! queue per device and move into the buffer one at a time as the guest reads port 60h,
//! keyboard first. The keyboard produces scan code set 2; with the command byte's XLATE
//! bit (on by default, as a BIOS leaves it) the controller translates to set 1. The
//! output port carries the A20 gate and the reset line, which the machine reads back.

use crate::{Nanos, PortDevice, Timed};
use std::collections::VecDeque;

/// Bytes a device may have queued (a keyboard's buffer is about this size).
const QUEUE_LIMIT: usize = 16;
/// After the guest reads a byte, the next one arrives this much later (a PS/2 byte takes
/// about a millisecond on the wire). The gap makes the IRQ line fall and rise again, so
/// an edge-triggered interrupt controller sees every byte.
const NEXT_BYTE_DELAY: Nanos = 100_000;

// Status register bits.
const ST_OBF: u8 = 1 << 0;
const ST_SYS: u8 = 1 << 2;
const ST_CMD: u8 = 1 << 3;
const ST_UNLOCKED: u8 = 1 << 4;
const ST_AUX: u8 = 1 << 5;
// Command byte bits.
const CB_INT1: u8 = 1 << 0;
const CB_INT2: u8 = 1 << 1;
const CB_SYS: u8 = 1 << 2;
const CB_KBD_OFF: u8 = 1 << 4;
const CB_AUX_OFF: u8 = 1 << 5;
const CB_XLATE: u8 = 1 << 6;

/// What a byte written to port 60h is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum DataTarget {
    Keyboard,
    CommandByte,
    Ram(u8),
    OutputPort,
    KeyboardBuffer,
    AuxBuffer,
    Mouse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Source {
    Keyboard,
    Mouse,
}

/// The PS/2 keyboard.
#[derive(serde::Serialize, serde::Deserialize)]
struct Keyboard {
    queue: VecDeque<u8>,
    enabled: bool,
    scan_set: u8,
    /// A command byte waiting for its parameter (F3, ED, F0).
    awaiting: Option<u8>,
}

/// The PS/2 mouse.
#[derive(serde::Serialize, serde::Deserialize)]
struct Mouse {
    queue: VecDeque<u8>,
    reporting: bool,
    id: u8,
    sample_rate: u8,
    resolution: u8,
    scaling21: bool,
    remote: bool,
    wrap: bool,
    awaiting: Option<u8>,
    /// The last three sample rates, for the IntelliMouse knock (200, 100, 80).
    rates: [u8; 3],
    buttons: u8,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct I8042 {
    command_byte: u8,
    ram: [u8; 32],
    output_port: u8,
    /// The byte in the output buffer and where it came from.
    out: Option<(u8, Source)>,
    /// Controller replies (self tests, reads) wait here ahead of device data.
    controller_queue: VecDeque<(u8, Source)>,
    last_was_command: bool,
    target: DataTarget,
    kbd: Keyboard,
    mouse: Mouse,
    reset_request: bool,
    /// Translation state: the next set-2 byte follows an F0 (break) prefix.
    xlate_break: bool,
    /// When the next queued byte moves into the output buffer (after a read).
    refill_at: Option<Nanos>,
    last_byte: u8,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    pub fn new() -> I8042 {
        I8042 {
            command_byte: CB_INT1 | CB_SYS | CB_XLATE,
            ram: [0; 32],
            // A20 on and the reset line inactive (high).
            output_port: 0x03,
            out: None,
            controller_queue: VecDeque::new(),
            last_was_command: false,
            target: DataTarget::Keyboard,
            kbd: Keyboard {
                queue: VecDeque::new(),
                enabled: true,
                scan_set: 2,
                awaiting: None,
            },
            mouse: Mouse::new(),
            reset_request: false,
            xlate_break: false,
            refill_at: None,
            last_byte: 0,
        }
    }

    /// IRQ 1: keyboard data in the output buffer, with INT1 enabled.
    pub fn irq1_level(&self) -> bool {
        matches!(self.out, Some((_, Source::Keyboard))) && self.command_byte & CB_INT1 != 0
    }

    /// IRQ 12: mouse data in the output buffer, with INT2 enabled.
    pub fn irq12_level(&self) -> bool {
        matches!(self.out, Some((_, Source::Mouse))) && self.command_byte & CB_INT2 != 0
    }

    /// The A20 gate as driven by output port bit 1.
    pub fn a20(&self) -> bool {
        self.output_port & 2 != 0
    }

    /// True once after the guest pulsed or lowered the reset line.
    pub fn take_reset_request(&mut self) -> bool {
        std::mem::take(&mut self.reset_request)
    }

    /// A key event from the host: the set-2 make code (0xE0xx for extended keys).
    pub fn key_set2(&mut self, make: u16, pressed: bool) {
        if !self.kbd.enabled {
            return;
        }
        let mut bytes = Vec::with_capacity(3);
        if make >> 8 == 0xE0 {
            bytes.push(0xE0);
        }
        if !pressed {
            bytes.push(0xF0);
        }
        bytes.push(make as u8);
        if self.kbd.queue.len() + bytes.len() <= QUEUE_LIMIT {
            self.kbd.queue.extend(bytes);
        }
        self.fill_output();
    }

    /// Mouse movement and buttons (bit 0 left, 1 right, 2 middle) from the host. `dy` is
    /// positive upwards, as PS/2 reports it.
    pub fn mouse_event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        if !self.mouse.reporting || self.mouse.remote {
            return;
        }
        self.mouse.buttons = buttons & 7;
        let (mut dx, mut dy, mut dz) = (dx, dy, dz);
        loop {
            let px = dx.clamp(-255, 255);
            let py = dy.clamp(-255, 255);
            let pz = dz.clamp(-8, 7);
            let packet = self.mouse.packet(px, py, pz);
            if self.mouse.queue.len() + packet.len() > QUEUE_LIMIT {
                break;
            }
            self.mouse.queue.extend(packet);
            dx -= px;
            dy -= py;
            dz -= pz;
            if dx == 0 && dy == 0 && dz == 0 {
                break;
            }
        }
        self.fill_output();
    }

    /// Moves the next pending byte into the output buffer if it is empty.
    fn fill_output(&mut self) {
        if self.out.is_some() || self.refill_at.is_some() {
            return;
        }
        if let Some(b) = self.controller_queue.pop_front() {
            self.out = Some(b);
            return;
        }
        if self.command_byte & CB_KBD_OFF == 0 {
            while let Some(b) = self.kbd.queue.pop_front() {
                if let Some(t) = self.translate(b) {
                    self.out = Some((t, Source::Keyboard));
                    return;
                }
            }
        }
        if self.command_byte & CB_AUX_OFF == 0 {
            if let Some(b) = self.mouse.queue.pop_front() {
                self.out = Some((b, Source::Mouse));
            }
        }
    }

    /// Set 2 to set 1 translation (XLATE). Returns None for a swallowed F0 prefix.
    fn translate(&mut self, b: u8) -> Option<u8> {
        if self.command_byte & CB_XLATE == 0 || self.kbd.scan_set != 2 {
            return Some(b);
        }
        if b == 0xF0 {
            self.xlate_break = true;
            return None;
        }
        let t = set2_to_set1(b);
        let brk = std::mem::take(&mut self.xlate_break);
        Some(if brk && b != 0xE0 && b != 0xE1 {
            t | 0x80
        } else {
            t
        })
    }

    fn reply(&mut self, b: u8) {
        self.controller_queue.push_back((b, Source::Keyboard));
        self.fill_output();
    }

    fn kbd_reply(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.kbd.queue.len() < QUEUE_LIMIT {
                self.kbd.queue.push_back(b);
            }
        }
        self.fill_output();
    }

    fn mouse_reply(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.mouse.queue.len() < QUEUE_LIMIT {
                self.mouse.queue.push_back(b);
            }
        }
        self.fill_output();
    }

    fn status(&self) -> u8 {
        let mut s = ST_UNLOCKED;
        if self.command_byte & CB_SYS != 0 {
            s |= ST_SYS;
        }
        if self.last_was_command {
            s |= ST_CMD;
        }
        match self.out {
            Some((_, Source::Mouse)) => s |= ST_OBF | ST_AUX,
            Some(_) => s |= ST_OBF,
            None => {}
        }
        s
    }

    fn controller_command(&mut self, cmd: u8) {
        match cmd {
            0x20..=0x3F => {
                let v = if cmd == 0x20 {
                    self.command_byte
                } else {
                    self.ram[(cmd & 0x1F) as usize]
                };
                self.reply(v);
            }
            0x60..=0x7F => {
                self.target = if cmd == 0x60 {
                    DataTarget::CommandByte
                } else {
                    DataTarget::Ram(cmd & 0x1F)
                };
            }
            0xA7 => self.command_byte |= CB_AUX_OFF,
            0xA8 => self.command_byte &= !CB_AUX_OFF,
            0xA9 | 0xAB => self.reply(0x00),
            0xAA => {
                self.command_byte |= CB_SYS;
                self.reply(0x55);
            }
            0xAD => self.command_byte |= CB_KBD_OFF,
            0xAE => self.command_byte &= !CB_KBD_OFF,
            0xC0 => self.reply(0xBF), // input port: keyboard not locked
            0xD0 => {
                let v = self.output_port;
                self.reply(v);
            }
            0xD1 => self.target = DataTarget::OutputPort,
            0xD2 => self.target = DataTarget::KeyboardBuffer,
            0xD3 => self.target = DataTarget::AuxBuffer,
            0xD4 => self.target = DataTarget::Mouse,
            0xDD => self.output_port &= !2,
            0xDF => self.output_port |= 2,
            // Pulse output port lines whose bit is 0 in the command; bit 0 is reset.
            0xF0..=0xFF if cmd & 1 == 0 => self.reset_request = true,
            _ => {}
        }
        self.fill_output();
    }

    fn keyboard_command(&mut self, b: u8) {
        if let Some(cmd) = self.kbd.awaiting.take() {
            match cmd {
                0xF0 => {
                    if b == 0 {
                        let set = self.kbd.scan_set;
                        self.kbd_reply(&[0xFA, set]);
                    } else if b == 1 || b == 2 {
                        self.kbd.scan_set = b;
                        self.kbd_reply(&[0xFA]);
                    } else {
                        self.kbd_reply(&[0xFE]);
                    }
                }
                _ => self.kbd_reply(&[0xFA]), // F3 typematic, ED LEDs
            }
            return;
        }
        match b {
            0xFF => {
                self.kbd.queue.clear();
                self.kbd.enabled = true;
                self.kbd.scan_set = 2;
                self.kbd_reply(&[0xFA, 0xAA]);
            }
            0xFE => self.kbd_reply(&[0xFA]),
            0xF6 => {
                self.kbd.scan_set = 2;
                self.kbd.enabled = true;
                self.kbd_reply(&[0xFA]);
            }
            0xF5 => {
                self.kbd.enabled = false;
                self.kbd_reply(&[0xFA]);
            }
            0xF4 => {
                self.kbd.enabled = true;
                self.kbd_reply(&[0xFA]);
            }
            0xF3 | 0xED | 0xF0 => {
                self.kbd.awaiting = Some(b);
                self.kbd_reply(&[0xFA]);
            }
            0xF2 => self.kbd_reply(&[0xFA, 0xAB, 0x83]),
            0xEE => self.kbd_reply(&[0xEE]),
            0xF7..=0xFD => self.kbd_reply(&[0xFA]),
            _ => self.kbd_reply(&[0xFE]),
        }
    }

    fn mouse_command(&mut self, b: u8) {
        let m = &mut self.mouse;
        if m.wrap && b != 0xEC && b != 0xFF {
            self.mouse_reply(&[b]);
            return;
        }
        if let Some(cmd) = m.awaiting.take() {
            match cmd {
                0xF3 => {
                    m.sample_rate = b;
                    m.rates = [m.rates[1], m.rates[2], b];
                    if m.rates == [200, 100, 80] {
                        m.id = 3;
                    }
                }
                _ => m.resolution = b & 3, // E8
            }
            self.mouse_reply(&[0xFA]);
            return;
        }
        match b {
            0xFF => {
                *m = Mouse::new();
                self.mouse_reply(&[0xFA, 0xAA, 0x00]);
            }
            0xF6 => {
                let id = m.id;
                *m = Mouse::new();
                self.mouse.id = id;
                self.mouse_reply(&[0xFA]);
            }
            0xF5 => {
                m.reporting = false;
                self.mouse_reply(&[0xFA]);
            }
            0xF4 => {
                m.reporting = true;
                self.mouse_reply(&[0xFA]);
            }
            0xF3 | 0xE8 => {
                m.awaiting = Some(b);
                self.mouse_reply(&[0xFA]);
            }
            0xF2 => {
                let id = m.id;
                self.mouse_reply(&[0xFA, id]);
            }
            0xE6 | 0xE7 => {
                m.scaling21 = b == 0xE7;
                self.mouse_reply(&[0xFA]);
            }
            0xE9 => {
                let status = (m.remote as u8) << 6
                    | (m.reporting as u8) << 5
                    | (m.scaling21 as u8) << 4
                    | (m.buttons & 1) << 2
                    | (m.buttons & 4) >> 1
                    | (m.buttons & 2) >> 1;
                let (res, rate) = (m.resolution, m.sample_rate);
                self.mouse_reply(&[0xFA, status, res, rate]);
            }
            0xEA => {
                m.remote = false;
                self.mouse_reply(&[0xFA]);
            }
            0xF0 => {
                m.remote = true;
                self.mouse_reply(&[0xFA]);
            }
            0xEB => {
                let p = m.packet(0, 0, 0);
                let mut r = vec![0xFA];
                r.extend(p);
                self.mouse_reply(&r);
            }
            0xEC => {
                m.wrap = false;
                self.mouse_reply(&[0xFA]);
            }
            0xEE => {
                m.wrap = true;
                self.mouse_reply(&[0xFA]);
            }
            _ => self.mouse_reply(&[0xFE]),
        }
    }
}

impl Mouse {
    fn new() -> Mouse {
        Mouse {
            queue: VecDeque::new(),
            reporting: false,
            id: 0,
            sample_rate: 100,
            resolution: 2,
            scaling21: false,
            remote: false,
            wrap: false,
            awaiting: None,
            rates: [0; 3],
            buttons: 0,
        }
    }

    /// One movement packet (3 bytes, or 4 with the wheel for ID 3).
    fn packet(&self, dx: i32, dy: i32, dz: i32) -> Vec<u8> {
        let mut b0 = 0x08 | (self.buttons & 7);
        if dx < 0 {
            b0 |= 0x10;
        }
        if dy < 0 {
            b0 |= 0x20;
        }
        let mut p = vec![b0, dx as u8, dy as u8];
        if self.id == 3 {
            p.push(dz as u8);
        }
        p
    }
}

impl PortDevice for I8042 {
    fn read(&mut self, port: u16, _size: u8, now: Nanos) -> u32 {
        match port {
            0x60 => {
                // Reading an empty buffer returns the last byte again, as hardware does.
                let v = match self.out.take() {
                    Some((b, _)) => {
                        self.last_byte = b;
                        self.refill_at = Some(now + NEXT_BYTE_DELAY);
                        b
                    }
                    None => self.last_byte,
                };
                v as u32
            }
            _ => self.status() as u32,
        }
    }

    fn write(&mut self, port: u16, _size: u8, value: u32, _now: Nanos) {
        let v = value as u8;
        if port == 0x64 {
            self.last_was_command = true;
            self.controller_command(v);
            return;
        }
        self.last_was_command = false;
        let target = std::mem::replace(&mut self.target, DataTarget::Keyboard);
        match target {
            DataTarget::Keyboard => {
                // Talking to the keyboard enables its interface.
                self.command_byte &= !CB_KBD_OFF;
                self.keyboard_command(v);
            }
            DataTarget::CommandByte => {
                self.command_byte = v;
                self.fill_output();
            }
            DataTarget::Ram(i) => self.ram[i as usize & 0x1F] = v,
            DataTarget::OutputPort => {
                if v & 1 == 0 {
                    self.reset_request = true;
                }
                self.output_port = v | 1;
            }
            DataTarget::KeyboardBuffer => {
                self.controller_queue.push_back((v, Source::Keyboard));
                self.fill_output();
            }
            DataTarget::AuxBuffer => {
                self.controller_queue.push_back((v, Source::Mouse));
                self.fill_output();
            }
            DataTarget::Mouse => self.mouse_command(v),
        }
    }
}

impl Timed for I8042 {
    fn next_event(&self) -> Option<Nanos> {
        self.refill_at
    }

    fn advance(&mut self, now: Nanos) {
        if self.refill_at.is_some_and(|t| now >= t) {
            self.refill_at = None;
            self.fill_output();
        }
    }
}

/// The i8042's set 2 to set 1 translation table (for make codes; break codes are the
/// same with bit 7 set). Codes not in the standard layout map through unchanged.
fn set2_to_set1(b: u8) -> u8 {
    const TABLE: [(u8, u8); 90] = [
        (0x76, 0x01),
        (0x16, 0x02),
        (0x1E, 0x03),
        (0x26, 0x04),
        (0x25, 0x05),
        (0x2E, 0x06),
        (0x36, 0x07),
        (0x3D, 0x08),
        (0x3E, 0x09),
        (0x46, 0x0A),
        (0x45, 0x0B),
        (0x4E, 0x0C),
        (0x55, 0x0D),
        (0x66, 0x0E),
        (0x0D, 0x0F),
        (0x15, 0x10),
        (0x1D, 0x11),
        (0x24, 0x12),
        (0x2D, 0x13),
        (0x2C, 0x14),
        (0x35, 0x15),
        (0x3C, 0x16),
        (0x43, 0x17),
        (0x44, 0x18),
        (0x4D, 0x19),
        (0x54, 0x1A),
        (0x5B, 0x1B),
        (0x5A, 0x1C),
        (0x14, 0x1D),
        (0x1C, 0x1E),
        (0x1B, 0x1F),
        (0x23, 0x20),
        (0x2B, 0x21),
        (0x34, 0x22),
        (0x33, 0x23),
        (0x3B, 0x24),
        (0x42, 0x25),
        (0x4B, 0x26),
        (0x4C, 0x27),
        (0x52, 0x28),
        (0x0E, 0x29),
        (0x12, 0x2A),
        (0x5D, 0x2B),
        (0x1A, 0x2C),
        (0x22, 0x2D),
        (0x21, 0x2E),
        (0x2A, 0x2F),
        (0x32, 0x30),
        (0x31, 0x31),
        (0x3A, 0x32),
        (0x41, 0x33),
        (0x49, 0x34),
        (0x4A, 0x35),
        (0x59, 0x36),
        (0x7C, 0x37),
        (0x11, 0x38),
        (0x29, 0x39),
        (0x58, 0x3A),
        (0x05, 0x3B),
        (0x06, 0x3C),
        (0x04, 0x3D),
        (0x0C, 0x3E),
        (0x03, 0x3F),
        (0x0B, 0x40),
        (0x83, 0x41),
        (0x0A, 0x42),
        (0x01, 0x43),
        (0x09, 0x44),
        (0x77, 0x45),
        (0x7E, 0x46),
        (0x6C, 0x47),
        (0x75, 0x48),
        (0x7D, 0x49),
        (0x7B, 0x4A),
        (0x6B, 0x4B),
        (0x73, 0x4C),
        (0x74, 0x4D),
        (0x79, 0x4E),
        (0x69, 0x4F),
        (0x72, 0x50),
        (0x7A, 0x51),
        (0x70, 0x52),
        (0x71, 0x53),
        (0x78, 0x57),
        (0x07, 0x58),
        (0x1F, 0x5B),
        (0x27, 0x5C),
        (0x2F, 0x5D),
        (0x61, 0x56),
        (0x84, 0x54),
    ];
    TABLE
        .iter()
        .find(|&&(s2, _)| s2 == b)
        .map_or(b, |&(_, s1)| s1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads every byte the controller has, letting time pass between bytes.
    fn read_all(k: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        loop {
            if let Some(t) = k.next_event() {
                k.advance(t);
            }
            if k.read(0x64, 1, 0) as u8 & ST_OBF == 0 {
                return v;
            }
            v.push(k.read(0x60, 1, 0) as u8);
        }
    }

    #[test]
    fn self_test_and_command_byte() {
        let mut k = I8042::new();
        k.write(0x64, 1, 0xAA, 0);
        assert_eq!(read_all(&mut k), [0x55]);
        k.write(0x64, 1, 0x20, 0);
        assert_eq!(read_all(&mut k), [CB_INT1 | CB_SYS | CB_XLATE]);
        k.write(0x64, 1, 0x60, 0);
        k.write(0x60, 1, 0x47, 0);
        k.write(0x64, 1, 0x20, 0);
        assert_eq!(read_all(&mut k), [0x47]);
        k.write(0x64, 1, 0xAB, 0);
        assert_eq!(read_all(&mut k), [0x00]);
    }

    #[test]
    fn keys_are_translated_to_set_1() {
        let mut k = I8042::new();
        k.key_set2(0x1C, true); // A
        assert!(k.irq1_level());
        assert_eq!(read_all(&mut k), [0x1E]);
        assert!(!k.irq1_level());
        k.key_set2(0x1C, false);
        assert_eq!(read_all(&mut k), [0x9E]);
        k.key_set2(0xE075, true); // up arrow
        k.key_set2(0xE075, false);
        assert_eq!(read_all(&mut k), [0xE0, 0x48, 0xE0, 0xC8]);
        // Without XLATE the raw set-2 bytes come through.
        k.write(0x64, 1, 0x60, 0);
        k.write(0x60, 1, CB_INT1 as u32, 0);
        k.key_set2(0x1C, false);
        assert_eq!(read_all(&mut k), [0xF0, 0x1C]);
    }

    #[test]
    fn keyboard_commands() {
        let mut k = I8042::new();
        k.write(0x60, 1, 0xFF, 0);
        assert_eq!(read_all(&mut k), [0xFA, 0xAA]);
        k.write(0x60, 1, 0xF2, 0);
        // Identify bytes are translated too (AB 83 -> AB 41) as on real controllers.
        assert_eq!(read_all(&mut k)[0], 0xFA);
        k.write(0x60, 1, 0xED, 0);
        k.write(0x60, 1, 0x07, 0);
        assert_eq!(read_all(&mut k), [0xFA, 0xFA]);
        k.write(0x60, 1, 0xEE, 0);
        assert_eq!(read_all(&mut k), [0xEE]);
        k.write(0x60, 1, 0x12, 0);
        assert_eq!(read_all(&mut k), [0xFE]);
        k.write(0x60, 1, 0xF5, 0);
        read_all(&mut k);
        k.key_set2(0x1C, true);
        assert!(read_all(&mut k).is_empty());
    }

    #[test]
    fn mouse_reset_intellimouse_and_packets() {
        let mut k = I8042::new();
        k.write(0x64, 1, 0xA8, 0);
        let mouse = |k: &mut I8042, b: u8| {
            k.write(0x64, 1, 0xD4, 0);
            k.write(0x60, 1, b as u32, 0);
        };
        mouse(&mut k, 0xFF);
        assert_eq!(k.read(0x64, 1, 0) as u8 & ST_AUX, ST_AUX);
        assert_eq!(read_all(&mut k), [0xFA, 0xAA, 0x00]);
        for r in [200, 100, 80] {
            mouse(&mut k, 0xF3);
            mouse(&mut k, r);
        }
        read_all(&mut k);
        mouse(&mut k, 0xF2);
        assert_eq!(read_all(&mut k), [0xFA, 0x03]);
        k.mouse_event(5, -3, 0, 1);
        assert!(read_all(&mut k).is_empty(), "reporting is off");
        mouse(&mut k, 0xF4);
        read_all(&mut k);
        k.write(0x64, 1, 0x60, 0);
        k.write(0x60, 1, (CB_INT1 | CB_INT2 | CB_SYS) as u32, 0);
        k.mouse_event(5, -3, 1, 1);
        assert!(k.irq12_level());
        assert_eq!(read_all(&mut k), [0x29, 5, 0xFD, 1]);
        k.mouse_event(300, 0, 0, 0);
        assert_eq!(read_all(&mut k), [0x08, 255, 0, 0, 0x08, 45, 0, 0]);
    }

    #[test]
    fn a20_and_reset_lines() {
        let mut k = I8042::new();
        assert!(k.a20());
        k.write(0x64, 1, 0xDD, 0);
        assert!(!k.a20());
        k.write(0x64, 1, 0xD1, 0);
        k.write(0x60, 1, 0x03, 0);
        assert!(k.a20());
        assert!(!k.take_reset_request());
        k.write(0x64, 1, 0xFE, 0);
        assert!(k.take_reset_request());
        assert!(!k.take_reset_request());
        k.write(0x64, 1, 0xD1, 0);
        k.write(0x60, 1, 0x02, 0);
        assert!(k.take_reset_request());
    }

    #[test]
    fn keyboard_data_before_mouse_data() {
        let mut k = I8042::new();
        k.write(0x64, 1, 0xD3, 0);
        k.write(0x60, 1, 0x77, 0);
        k.key_set2(0x1C, true);
        assert_eq!(k.read(0x64, 1, 0) as u8 & ST_AUX, ST_AUX);
        assert_eq!(k.read(0x60, 1, 0), 0x77);
        // The next byte arrives a little later: the IRQ line drops in between.
        assert!(!k.irq1_level() && !k.irq12_level());
        assert_eq!(k.read(0x64, 1, 0) as u8 & ST_OBF, 0);
        k.advance(k.next_event().expect("next byte scheduled"));
        assert!(k.irq1_level());
        assert_eq!(k.read(0x64, 1, 0) as u8 & ST_AUX, 0);
        assert_eq!(k.read(0x60, 1, 0), 0x1E);
    }
}
