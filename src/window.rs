//! `--display window`: the guest's screen in a minifb window, the host keyboard on the
//! guest's PS/2 keyboard, and guest time paced to the wall clock.
//!
//! Pacing only decides *when* the machine runs, never what it computes: keys enter at
//! slice boundaries like any outside input, and the guest sees instruction-count time.

use crate::screen::Ended;
use hospes_devices::vga::Frame;
use hospes_machine::{Machine, Stop};
use minifb::{InputCallback, Key, Scale, ScaleMode, Window, WindowOptions};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Instructions the machine runs between looks at the window and the clock (1 ms of
/// guest time).
const SLICE: u64 = 1_000_000;
/// How often the window is redrawn.
const FRAME_INTERVAL: Duration = Duration::from_millis(16);
/// How far the guest may run ahead of the wall clock before it waits.
const AHEAD_LIMIT: Duration = Duration::from_millis(2);
/// Every key press and release the window saw, in order. (Polling the window's key
/// state instead would lose a key pressed and released between two redraws.)
#[derive(Clone, Default)]
struct KeyEvents(Rc<RefCell<Vec<(Key, bool)>>>);

impl InputCallback for KeyEvents {
    fn add_char(&mut self, _uni_char: u32) {}
    fn set_key_state(&mut self, key: Key, pressed: bool) {
        self.0.borrow_mut().push((key, pressed));
    }
}

/// A guest further behind than this (the host could not keep up) gives up the lost
/// time instead of racing to catch up.
const BEHIND_LIMIT: Duration = Duration::from_millis(100);

pub fn run(
    machine: &mut Machine,
    limit: Option<u64>,
    title: &str,
    linger: bool,
) -> Result<Ended, String> {
    let mut frame = Frame::default();
    machine.render_screen(&mut frame);
    let options = WindowOptions {
        resize: true,
        scale: Scale::X2,
        scale_mode: ScaleMode::AspectRatioStretch,
        ..WindowOptions::default()
    };
    let mut window = Window::new(
        &format!("hospes: {title}"),
        frame.width.max(320),
        frame.height.max(200),
        options,
    )
    .map_err(|e| format!("cannot open a window ({e}); use --display none"))?;
    let keys = KeyEvents::default();
    window.set_input_callback(Box::new(keys.clone()));

    let mut wall_start = Instant::now();
    let mut guest_start = machine.now();
    let mut last_draw: Option<Instant> = None;
    let stop = loop {
        if !window.is_open() {
            return Ok(Ended::Closed);
        }
        let guest = Duration::from_nanos(machine.now() - guest_start);
        let wall = wall_start.elapsed();
        if guest > wall + AHEAD_LIMIT {
            std::thread::sleep((guest - wall).min(FRAME_INTERVAL));
        } else {
            if wall > guest + BEHIND_LIMIT {
                wall_start = Instant::now();
                guest_start = machine.now();
            }
            let icount = machine.cpu.state.icount;
            let mut target = icount + SLICE;
            if let Some(l) = limit {
                target = target.min(l);
            }
            match machine.run(Some(target)) {
                Stop::InstructionLimit if limit.is_none_or(|l| machine.cpu.state.icount < l) => {}
                stop => break stop,
            }
        }
        if last_draw.is_none_or(|t| t.elapsed() >= FRAME_INTERVAL) {
            last_draw = Some(Instant::now());
            machine.render_screen(&mut frame);
            show(&mut window, &frame)?;
            for (key, pressed) in keys.0.borrow_mut().drain(..) {
                if let Some(code) = set2_make_code(key) {
                    machine.key_event(code, pressed);
                }
            }
        }
    };
    machine.render_screen(&mut frame);
    if linger {
        window.set_title(&format!(
            "hospes: {title} (powered off; press Esc or close the window)"
        ));
        keys.0.borrow_mut().clear();
        while window.is_open() {
            show(&mut window, &frame)?;
            if keys
                .0
                .borrow_mut()
                .drain(..)
                .any(|e| e == (Key::Escape, true))
            {
                break;
            }
            std::thread::sleep(FRAME_INTERVAL);
        }
    } else {
        show(&mut window, &frame)?;
    }
    Ok(Ended::Guest(stop))
}

fn show(window: &mut Window, frame: &Frame) -> Result<(), String> {
    if frame.pixels.is_empty() {
        return window
            .update_with_buffer(&[0], 1, 1)
            .map_err(|e| e.to_string());
    }
    window
        .update_with_buffer(&frame.pixels, frame.width, frame.height)
        .map_err(|e| format!("cannot draw the window: {e}"))
}

/// The PS/2 scan code set 2 make code of a host key (E0xxh for extended keys).
fn set2_make_code(key: Key) -> Option<u16> {
    use Key::*;
    Some(match key {
        Escape => 0x76,
        F1 => 0x05,
        F2 => 0x06,
        F3 => 0x04,
        F4 => 0x0C,
        F5 => 0x03,
        F6 => 0x0B,
        F7 => 0x83,
        F8 => 0x0A,
        F9 => 0x01,
        F10 => 0x09,
        F11 => 0x78,
        F12 => 0x07,
        Backquote => 0x0E,
        Key1 => 0x16,
        Key2 => 0x1E,
        Key3 => 0x26,
        Key4 => 0x25,
        Key5 => 0x2E,
        Key6 => 0x36,
        Key7 => 0x3D,
        Key8 => 0x3E,
        Key9 => 0x46,
        Key0 => 0x45,
        Minus => 0x4E,
        Equal => 0x55,
        Backspace => 0x66,
        Tab => 0x0D,
        Q => 0x15,
        W => 0x1D,
        E => 0x24,
        R => 0x2D,
        T => 0x2C,
        Y => 0x35,
        U => 0x3C,
        I => 0x43,
        O => 0x44,
        P => 0x4D,
        LeftBracket => 0x54,
        RightBracket => 0x5B,
        Backslash => 0x5D,
        CapsLock => 0x58,
        A => 0x1C,
        S => 0x1B,
        D => 0x23,
        F => 0x2B,
        G => 0x34,
        H => 0x33,
        J => 0x3B,
        K => 0x42,
        L => 0x4B,
        Semicolon => 0x4C,
        Apostrophe => 0x52,
        Enter => 0x5A,
        LeftShift => 0x12,
        Z => 0x1A,
        X => 0x22,
        C => 0x21,
        V => 0x2A,
        B => 0x32,
        N => 0x31,
        M => 0x3A,
        Comma => 0x41,
        Period => 0x49,
        Slash => 0x4A,
        RightShift => 0x59,
        LeftCtrl => 0x14,
        LeftSuper => 0xE01F,
        LeftAlt => 0x11,
        Space => 0x29,
        RightAlt => 0xE011,
        RightSuper => 0xE027,
        Menu => 0xE02F,
        RightCtrl => 0xE014,
        Insert => 0xE070,
        Home => 0xE06C,
        PageUp => 0xE07D,
        Delete => 0xE071,
        End => 0xE069,
        PageDown => 0xE07A,
        Up => 0xE075,
        Left => 0xE06B,
        Down => 0xE072,
        Right => 0xE074,
        NumLock => 0x77,
        NumPadSlash => 0xE04A,
        NumPadAsterisk => 0x7C,
        NumPadMinus => 0x7B,
        NumPad7 => 0x6C,
        NumPad8 => 0x75,
        NumPad9 => 0x7D,
        NumPadPlus => 0x79,
        NumPad4 => 0x6B,
        NumPad5 => 0x73,
        NumPad6 => 0x74,
        NumPad1 => 0x69,
        NumPad2 => 0x72,
        NumPad3 => 0x7A,
        NumPad0 => 0x70,
        NumPadDot => 0x71,
        NumPadEnter => 0xE05A,
        ScrollLock => 0x7E,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_codes_are_distinct() {
        let keys = [
            Key::A,
            Key::Z,
            Key::Key0,
            Key::Enter,
            Key::Escape,
            Key::Up,
            Key::NumPad8,
            Key::RightCtrl,
            Key::LeftCtrl,
        ];
        let codes: Vec<u16> = keys.iter().filter_map(|&k| set2_make_code(k)).collect();
        assert_eq!(codes.len(), keys.len());
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        assert_eq!(set2_make_code(Key::A), Some(0x1C));
        assert_eq!(set2_make_code(Key::Up), Some(0xE075));
    }
}
