//! The keyboard: the IRQ 1 handler that turns scan codes (set 1, as translated by the
//! i8042) into BIOS keystrokes in the BDA's 16-entry ring buffer, and INT 16h that reads
//! them. US layout.

use crate::{Bios, Platform, Regs, BDA};

const SHIFT_FLAGS: u32 = BDA + 0x17;
const BUFFER_HEAD: u32 = BDA + 0x1A;
const BUFFER_TAIL: u32 = BDA + 0x1C;
const BUFFER_START: u32 = BDA + 0x80;
const BUFFER_END: u32 = BDA + 0x82;

const RIGHT_SHIFT: u8 = 1 << 0;
const LEFT_SHIFT: u8 = 1 << 1;
const CTRL: u8 = 1 << 2;
const ALT: u8 = 1 << 3;
const SCROLL_LOCK: u8 = 1 << 4;
const NUM_LOCK: u8 = 1 << 5;
const CAPS_LOCK: u8 = 1 << 6;

/// Set-1 make codes 0x00-0x39 to (unshifted, shifted) ASCII; 0 where none.
const ASCII: [(u8, u8); 0x3A] = [
    (0, 0),
    (0x1B, 0x1B),
    (b'1', b'!'),
    (b'2', b'@'),
    (b'3', b'#'),
    (b'4', b'$'),
    (b'5', b'%'),
    (b'6', b'^'),
    (b'7', b'&'),
    (b'8', b'*'),
    (b'9', b'('),
    (b'0', b')'),
    (b'-', b'_'),
    (b'=', b'+'),
    (0x08, 0x08),
    (0x09, 0),
    (b'q', b'Q'),
    (b'w', b'W'),
    (b'e', b'E'),
    (b'r', b'R'),
    (b't', b'T'),
    (b'y', b'Y'),
    (b'u', b'U'),
    (b'i', b'I'),
    (b'o', b'O'),
    (b'p', b'P'),
    (b'[', b'{'),
    (b']', b'}'),
    (0x0D, 0x0D),
    (0, 0), // left ctrl
    (b'a', b'A'),
    (b's', b'S'),
    (b'd', b'D'),
    (b'f', b'F'),
    (b'g', b'G'),
    (b'h', b'H'),
    (b'j', b'J'),
    (b'k', b'K'),
    (b'l', b'L'),
    (b';', b':'),
    (b'\'', b'"'),
    (b'`', b'~'),
    (0, 0), // left shift
    (b'\\', b'|'),
    (b'z', b'Z'),
    (b'x', b'X'),
    (b'c', b'C'),
    (b'v', b'V'),
    (b'b', b'B'),
    (b'n', b'N'),
    (b'm', b'M'),
    (b',', b'<'),
    (b'.', b'>'),
    (b'/', b'?'),
    (0, 0), // right shift
    (b'*', b'*'),
    (0, 0), // left alt
    (b' ', b' '),
];

/// Keypad 0x47-0x53 with Num Lock: digits and the point.
const KEYPAD: [u8; 13] = [
    b'7', b'8', b'9', b'-', b'4', b'5', b'6', b'+', b'1', b'2', b'3', b'0', b'.',
];

impl Bios {
    /// Sets up an empty keyboard buffer (POST).
    pub(crate) fn keyboard_init(&self, r: &mut Regs) {
        r.wr16(BUFFER_START, 0x1E);
        r.wr16(BUFFER_END, 0x3E);
        r.wr16(BUFFER_HEAD, 0x1E);
        r.wr16(BUFFER_TAIL, 0x1E);
        r.wr8(SHIFT_FLAGS, NUM_LOCK);
        r.wr8(SHIFT_FLAGS + 1, 0);
    }

    /// IRQ 1: one byte from the controller.
    pub(crate) fn keyboard_irq(&mut self, cpu: &mut hospes_cpu::Cpu, p: &mut dyn Platform) {
        let mut r = Regs { cpu };
        // Only keyboard data (not mouse data) is ours.
        let status = p.port_read(0x64, 1) as u8;
        if status & 0x01 == 0 || status & 0x20 != 0 {
            return;
        }
        let code = p.port_read(0x60, 1) as u8;
        if code == 0xE0 {
            self.keyboard_e0 = true;
            return;
        }
        let extended = std::mem::take(&mut self.keyboard_e0);
        let release = code & 0x80 != 0;
        let make = code & 0x7F;
        let mut flags = r.rd8(SHIFT_FLAGS);
        let modifier = match make {
            0x2A if !extended => LEFT_SHIFT,
            0x36 if !extended => RIGHT_SHIFT,
            0x1D => CTRL,
            0x38 => ALT,
            _ => 0,
        };
        if modifier != 0 {
            if release {
                flags &= !modifier;
            } else {
                flags |= modifier;
            }
            r.wr8(SHIFT_FLAGS, flags);
            return;
        }
        if release {
            return;
        }
        let toggle = match make {
            0x3A => CAPS_LOCK,
            0x45 if !extended => NUM_LOCK,
            0x46 if !extended => SCROLL_LOCK,
            _ => 0,
        };
        if toggle != 0 {
            r.wr8(SHIFT_FLAGS, flags ^ toggle);
            return;
        }
        if let Some(key) = keystroke(make, extended, flags) {
            push_key(&mut r, key);
        }
    }

    pub(crate) fn int16(&mut self, r: &mut Regs, _p: &mut dyn Platform) {
        match r.ah() {
            // Read a key, waiting for one.
            0x00 | 0x10 => match pop_key(r, true) {
                Some(k) => {
                    r.set_ax(if r.ah() == 0x00 { basic(k) } else { k });
                    r.set_done(true);
                }
                None => r.set_done(false),
            },
            // Is a key ready? ZF in the returned FLAGS says "no".
            0x01 | 0x11 => {
                match pop_key(r, false) {
                    Some(k) => {
                        r.set_ax(if r.ah() == 0x01 { basic(k) } else { k });
                        r.set_return_flag(hospes_cpu::flags::ZF as u16, false);
                    }
                    None => r.set_return_flag(hospes_cpu::flags::ZF as u16, true),
                }
                r.set_done(true);
            }
            0x02 => {
                r.set_al(r.rd8(SHIFT_FLAGS));
                r.set_done(true);
            }
            0x12 => {
                let f = r.rd8(SHIFT_FLAGS);
                let ext = r.rd8(SHIFT_FLAGS + 1);
                r.set_al(f);
                r.set_ah(ext);
                r.set_done(true);
            }
            0x05 => {
                let ok = push_key(r, r.cx());
                r.set_al(if ok { 0 } else { 1 });
                r.set_done(true);
            }
            // Typematic rate, keyboard ID, and the rest: accepted, nothing to do.
            _ => r.set_done(true),
        }
    }
}

/// The AH=00h/01h view of a keystroke: extended keys look like their plain versions.
fn basic(key: u16) -> u16 {
    if key & 0xFF == 0xE0 {
        key & 0xFF00
    } else {
        key
    }
}

/// (scan << 8 | ascii) for a make code, given the shift state.
fn keystroke(make: u8, extended: bool, flags: u8) -> Option<u16> {
    let shift = flags & (LEFT_SHIFT | RIGHT_SHIFT) != 0;
    let ctrl = flags & CTRL != 0;
    let alt = flags & ALT != 0;
    let scan = make as u16;
    if extended {
        return match make {
            0x1C => Some(0x1C0D),                  // keypad Enter
            0x35 => Some(0x352F),                  // keypad /
            0x47..=0x53 => Some(scan << 8 | 0xE0), // arrows, Home, End, ...
            _ => None,
        };
    }
    match make {
        0x3B..=0x44 => {
            // F1-F10: different scan codes with shift, ctrl, alt.
            let base = if alt {
                0x68
            } else if ctrl {
                0x5E
            } else if shift {
                0x54
            } else {
                0x3B
            };
            Some(((base + make as u16 - 0x3B) << 8) & 0xFF00)
        }
        0x57 | 0x58 => {
            let base = if alt {
                0x8B
            } else if ctrl {
                0x89
            } else if shift {
                0x87
            } else {
                0x85
            };
            Some((base + make as u16 - 0x57) << 8)
        }
        0x47..=0x53 => {
            let numlock = flags & NUM_LOCK != 0;
            if numlock != shift && ![0x4A, 0x4E].contains(&make) {
                Some(scan << 8 | KEYPAD[(make - 0x47) as usize] as u16)
            } else {
                match make {
                    0x4A => Some(0x4A2D),
                    0x4E => Some(0x4E2B),
                    _ => Some(scan << 8),
                }
            }
        }
        m if (m as usize) < ASCII.len() => {
            let (plain, shifted) = ASCII[m as usize];
            if plain == 0 {
                return None;
            }
            let letter = plain.is_ascii_lowercase();
            let caps = flags & CAPS_LOCK != 0 && letter;
            let ch = if alt {
                0
            } else if ctrl {
                if letter {
                    plain & 0x1F
                } else {
                    match plain {
                        b'[' => 0x1B,
                        b'\\' => 0x1C,
                        b']' => 0x1D,
                        0x0D => 0x0A,
                        0x08 => 0x7F,
                        _ => 0,
                    }
                }
            } else if shift != caps {
                shifted
            } else {
                plain
            };
            // A key with no character makes no keystroke, except with Alt or Ctrl
            // (scan code only) and Shift-Tab.
            let shift_tab = m == 0x0F && shift;
            if ch == 0 && !(alt || ctrl || shift_tab) {
                return None;
            }
            Some(scan << 8 | ch as u16)
        }
        _ => None,
    }
}

fn push_key(r: &mut Regs, key: u16) -> bool {
    let (start, end) = (r.rd16(BUFFER_START), r.rd16(BUFFER_END));
    let tail = r.rd16(BUFFER_TAIL);
    let mut next = tail + 2;
    if next >= end {
        next = start;
    }
    if next == r.rd16(BUFFER_HEAD) {
        return false; // full: the key is lost, as on a PC (which would beep)
    }
    r.wr16(BDA + tail as u32, key);
    r.wr16(BUFFER_TAIL, next);
    true
}

fn pop_key(r: &mut Regs, remove: bool) -> Option<u16> {
    let (start, end) = (r.rd16(BUFFER_START), r.rd16(BUFFER_END));
    let head = r.rd16(BUFFER_HEAD);
    if head == r.rd16(BUFFER_TAIL) {
        return None;
    }
    let key = r.rd16(BDA + head as u32);
    if remove {
        let mut next = head + 2;
        if next >= end {
            next = start;
        }
        r.wr16(BUFFER_HEAD, next);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_digits_and_modifiers() {
        assert_eq!(keystroke(0x1E, false, 0), Some(0x1E61)); // a
        assert_eq!(keystroke(0x1E, false, LEFT_SHIFT), Some(0x1E41)); // A
        assert_eq!(keystroke(0x1E, false, CAPS_LOCK), Some(0x1E41));
        assert_eq!(
            keystroke(0x1E, false, CAPS_LOCK | RIGHT_SHIFT),
            Some(0x1E61)
        );
        assert_eq!(keystroke(0x2E, false, CTRL), Some(0x2E03)); // ctrl-C
        assert_eq!(keystroke(0x1E, false, ALT), Some(0x1E00));
        assert_eq!(keystroke(0x02, false, LEFT_SHIFT), Some(0x0221)); // !
        assert_eq!(keystroke(0x1C, false, 0), Some(0x1C0D));
        assert_eq!(keystroke(0x3B, false, 0), Some(0x3B00)); // F1
        assert_eq!(keystroke(0x48, true, 0), Some(0x48E0)); // up arrow
        assert_eq!(keystroke(0x48, false, NUM_LOCK), Some(0x4838)); // keypad 8
        assert_eq!(keystroke(0x48, false, 0), Some(0x4800));
        assert_eq!(basic(0x48E0), 0x4800);
    }
}
