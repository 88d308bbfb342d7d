//! `--display window`: the guest's screen in a minifb window, the host keyboard on the
//! guest's PS/2 keyboard, the host mouse on its PS/2 mouse while grabbed, and guest time
//! paced to the wall clock.
//!
//! Pacing only decides *when* the machine runs, never what it computes: keys and mouse
//! movements enter at slice boundaries like any outside input, and the guest sees
//! instruction-count time.
//!
//! The mouse is grabbed as QEMU does: a left click in the window grabs it (the click
//! itself is not passed on), Ctrl+Alt+G lets it go. While grabbed, the host pointer's
//! movements move the guest's mouse. The host pointer is hidden, but minifb cannot warp
//! or confine it, so it still moves over the host screen: the guest's mouse stops where
//! the host pointer does (at the screen's edge under X11; at the window's edge where
//! minifb only hears of the pointer inside its window), and a click with the pointer
//! outside the window goes to whatever is there.

use crate::monitor::Monitor;
use crate::screen::{run_slice, Ended};
use hospes_devices::vga::{DisplayMode, Frame, Screen};
use hospes_machine::{Machine, Stop};
use minifb::{InputCallback, Key, MouseButton, MouseMode, Scale, ScaleMode, Window, WindowOptions};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

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
    monitor: Option<&Monitor>,
) -> Result<Ended, String> {
    // Kept up to date by redrawing only what the guest changed.
    let mut screen = Screen::new();
    machine.update_screen(&mut screen);
    let (width, height) = (screen.frame().width, screen.frame().height);
    let options = WindowOptions {
        resize: true,
        scale: Scale::X2,
        scale_mode: ScaleMode::AspectRatioStretch,
        ..WindowOptions::default()
    };
    let mut shown_title = window_title(title, machine.display_mode(), false, None);
    let mut window = Window::new(&shown_title, width.max(320), height.max(200), options)
        .map_err(|e| format!("cannot open a window ({e}); use --display none"))?;
    let keys = KeyEvents::default();
    window.set_input_callback(Box::new(keys.clone()));

    let mut wall_start = Instant::now();
    let mut guest_start = machine.now();
    let mut last_draw: Option<Instant> = None;
    let mut controls = Controls::default();
    let mut to_guest = Vec::new();
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
            if let Some(stop) = run_slice(machine, limit) {
                break stop;
            }
        }
        if monitor.is_some_and(|m| m.serve(machine)) {
            return Ok(Ended::Closed);
        }
        if last_draw.is_none_or(|t| t.elapsed() >= FRAME_INTERVAL) {
            last_draw = Some(Instant::now());
            if machine.update_screen(&mut screen) {
                show(&mut window, screen.frame())?;
            } else {
                // Nothing new to draw; the window still hears its events.
                window.update();
            }
            let was_grabbed = controls.grabbed;
            for (key, pressed) in keys.0.borrow_mut().drain(..) {
                controls.key(key, pressed, &mut to_guest);
            }
            controls.pointer(&pointer_sample(&window, screen.frame()), &mut to_guest);
            send(machine, &mut to_guest);
            if controls.grabbed != was_grabbed {
                window.set_cursor_visibility(!controls.grabbed);
            }
            let now_title = window_title(title, machine.display_mode(), controls.grabbed, None);
            if now_title != shown_title {
                window.set_title(&now_title);
                shown_title = now_title;
            }
        }
    };
    machine.update_screen(&mut screen);
    let frame = screen.frame();
    if controls.grabbed {
        // The guest is done with the mouse: the host pointer comes back.
        window.set_cursor_visibility(true);
    }
    let mut end_title = window_title(title, machine.display_mode(), false, Some(stop));
    if linger {
        end_title.push_str(" (press Esc or close the window)");
    }
    window.set_title(&end_title);
    if linger {
        keys.0.borrow_mut().clear();
        while window.is_open() {
            show(&mut window, frame)?;
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
        show(&mut window, frame)?;
    }
    Ok(Ended::Guest(stop))
}

/// `hospes: <title> — <mode>`, then whether the mouse is grabbed or how the guest ended.
fn window_title(title: &str, mode: DisplayMode, grabbed: bool, ended: Option<Stop>) -> String {
    let mut out = format!("hospes: {title} \u{2014} {mode}");
    if grabbed {
        out.push_str(" \u{2014} mouse grabbed (Ctrl+Alt+G releases)");
    }
    if let Some(stop) = ended {
        let state = match stop {
            Stop::PowerOff => "powered off",
            Stop::HaltedForever => "halted",
            Stop::InstructionLimit => "instruction limit reached",
            Stop::ReplayEnded => "replay ended",
            Stop::ReplayDiverged => "replay diverged",
            Stop::Breakpoint => "at a breakpoint",
            Stop::RecordingFailed => "the recording failed",
        };
        out.push_str(" \u{2014} ");
        out.push_str(state);
    }
    out
}

/// Something for the guest's keyboard or mouse.
#[derive(Debug, PartialEq)]
enum ToGuest {
    Key {
        make: u16,
        pressed: bool,
    },
    Mouse {
        dx: i32,
        dy: i32,
        dz: i32,
        buttons: u8,
    },
}

fn send(machine: &mut Machine, events: &mut Vec<ToGuest>) {
    for event in events.drain(..) {
        match event {
            ToGuest::Key { make, pressed } => machine.key_event(make, pressed),
            ToGuest::Mouse {
                dx,
                dy,
                dz,
                buttons,
            } => machine.mouse_event(dx, dy, dz, buttons),
        }
    }
}

/// PS/2 mouse button bits.
const LEFT_BUTTON: u8 = 1;
const RIGHT_BUTTON: u8 = 2;
const MIDDLE_BUTTON: u8 = 4;

/// The host pointer as the window saw it at one redraw.
#[derive(Clone, Copy, Debug)]
struct PointerSample {
    /// Where it is, in window pixels (it may be outside the window); None if unknown.
    pos: Option<(f32, f32)>,
    /// Whether that is inside the window.
    inside: bool,
    /// The buttons held, as PS/2 bits.
    buttons: u8,
    /// Wheel notches turned away from the user since the last sample.
    wheel: f32,
    /// Guest pixels per window pixel.
    scale: f32,
}

fn pointer_sample(window: &Window, frame: &Frame) -> PointerSample {
    let buttons = [
        (MouseButton::Left, LEFT_BUTTON),
        (MouseButton::Right, RIGHT_BUTTON),
        (MouseButton::Middle, MIDDLE_BUTTON),
    ]
    .into_iter()
    .filter(|&(b, _)| window.get_mouse_down(b))
    .fold(0, |all, (_, bit)| all | bit);
    PointerSample {
        // Window pixels, not minifb's scaled ones (`get_mouse_pos` divides by the scale
        // the window was opened with, which a resized window no longer has).
        pos: window.get_unscaled_mouse_pos(MouseMode::Pass),
        inside: window.get_unscaled_mouse_pos(MouseMode::Discard).is_some(),
        buttons,
        wheel: window.get_scroll_wheel().map_or(0.0, |(_, y)| y),
        scale: guest_pixels_per_window_pixel(window.get_size(), frame),
    }
}

/// The frame is stretched to the window keeping its aspect ratio
/// (`ScaleMode::AspectRatioStretch`): by the smaller of the two ratios.
fn guest_pixels_per_window_pixel((width, height): (usize, usize), frame: &Frame) -> f32 {
    if width == 0 || height == 0 || frame.width == 0 || frame.height == 0 {
        return 1.0;
    }
    (frame.width as f32 / width as f32).max(frame.height as f32 / height as f32)
}

/// What the host keyboard and mouse send to the guest, and the mouse grab (apart from
/// the window, so its rules are tested without one).
#[derive(Default)]
struct Controls {
    grabbed: bool,
    /// The pointer's position at the last sample, in window pixels.
    last_pos: Option<(f32, f32)>,
    /// Movement not sent yet, in guest pixels: fractions of a pixel wait for more.
    motion: (f32, f32),
    /// Wheel notches not sent yet (a touchpad turns it by fractions).
    wheel: f32,
    /// The buttons as the guest last heard of them.
    buttons: u8,
    /// Buttons held since the click that grabbed, kept from the guest until released.
    grabbing_buttons: u8,
    /// Keys held on the host.
    host_keys: HashSet<Key>,
    /// Keys whose press the guest got and whose release it has not.
    guest_keys: HashSet<Key>,
}

impl Controls {
    fn held(&self, keys: [Key; 2]) -> bool {
        keys.iter().any(|k| self.host_keys.contains(k))
    }

    fn key(&mut self, key: Key, pressed: bool, out: &mut Vec<ToGuest>) {
        if pressed {
            self.host_keys.insert(key);
        } else {
            self.host_keys.remove(&key);
        }
        if pressed
            && key == Key::G
            && self.grabbed
            && self.held([Key::LeftCtrl, Key::RightCtrl])
            && self.held([Key::LeftAlt, Key::RightAlt])
        {
            self.release(out);
            return;
        }
        let Some(make) = set2_make_code(key) else {
            return;
        };
        if pressed {
            self.guest_keys.insert(key);
        } else if !self.guest_keys.remove(&key) {
            // The guest never got its press (the G of Ctrl+Alt+G), or already got its
            // release (Ctrl and Alt, when the grab was let go).
            return;
        }
        out.push(ToGuest::Key { make, pressed });
    }

    /// Lets the mouse go; the guest is told that the Ctrl and Alt keys of Ctrl+Alt+G
    /// and any buttons are released, so none stays held for it.
    fn release(&mut self, out: &mut Vec<ToGuest>) {
        self.grabbed = false;
        for key in [Key::LeftCtrl, Key::RightCtrl, Key::LeftAlt, Key::RightAlt] {
            if let (true, Some(make)) = (self.guest_keys.remove(&key), set2_make_code(key)) {
                out.push(ToGuest::Key {
                    make,
                    pressed: false,
                });
            }
        }
        if self.buttons != 0 {
            self.buttons = 0;
            out.push(ToGuest::Mouse {
                dx: 0,
                dy: 0,
                dz: 0,
                buttons: 0,
            });
        }
    }

    /// The pointer at a redraw: grabs on a left click in the window; while grabbed, a
    /// mouse event for the guest if anything changed.
    fn pointer(&mut self, p: &PointerSample, out: &mut Vec<ToGuest>) {
        if !self.grabbed {
            if p.inside && p.buttons & LEFT_BUTTON != 0 {
                self.grabbed = true;
                self.last_pos = p.pos;
                self.motion = (0.0, 0.0);
                self.wheel = 0.0;
                self.buttons = 0;
                self.grabbing_buttons = p.buttons;
            }
            return;
        }
        self.grabbing_buttons &= p.buttons;
        let buttons = p.buttons & !self.grabbing_buttons;
        if let (Some((x, y)), Some((last_x, last_y))) = (p.pos, self.last_pos) {
            self.motion.0 += (x - last_x) * p.scale;
            // Window rows grow downwards; PS/2 counts upwards.
            self.motion.1 += (last_y - y) * p.scale;
        }
        if p.pos.is_some() {
            self.last_pos = p.pos;
        }
        self.wheel += p.wheel;
        let (dx, dy, notches) = (
            self.motion.0.trunc(),
            self.motion.1.trunc(),
            self.wheel.trunc(),
        );
        if dx == 0.0 && dy == 0.0 && notches == 0.0 && buttons == self.buttons {
            return;
        }
        self.motion.0 -= dx;
        self.motion.1 -= dy;
        self.wheel -= notches;
        self.buttons = buttons;
        out.push(ToGuest::Mouse {
            dx: dx as i32,
            dy: dy as i32,
            // PS/2 counts the wheel turned towards the user.
            dz: -(notches as i32),
            buttons,
        });
    }
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

/// The PS/2 scan code set 2 make code of a host key (E0xxh for extended keys), through
/// its name in the machine's key table (QEMU's names, as the monitor's sendkey uses).
fn set2_make_code(key: Key) -> Option<u16> {
    hospes_machine::keys::set2_code(key_name(key)?)
}

fn key_name(key: Key) -> Option<&'static str> {
    use Key::*;
    Some(match key {
        Escape => "esc",
        F1 => "f1",
        F2 => "f2",
        F3 => "f3",
        F4 => "f4",
        F5 => "f5",
        F6 => "f6",
        F7 => "f7",
        F8 => "f8",
        F9 => "f9",
        F10 => "f10",
        F11 => "f11",
        F12 => "f12",
        Backquote => "grave_accent",
        Key1 => "1",
        Key2 => "2",
        Key3 => "3",
        Key4 => "4",
        Key5 => "5",
        Key6 => "6",
        Key7 => "7",
        Key8 => "8",
        Key9 => "9",
        Key0 => "0",
        Minus => "minus",
        Equal => "equal",
        Backspace => "backspace",
        Tab => "tab",
        Q => "q",
        W => "w",
        E => "e",
        R => "r",
        T => "t",
        Y => "y",
        U => "u",
        I => "i",
        O => "o",
        P => "p",
        LeftBracket => "bracket_left",
        RightBracket => "bracket_right",
        Backslash => "backslash",
        CapsLock => "caps_lock",
        A => "a",
        S => "s",
        D => "d",
        F => "f",
        G => "g",
        H => "h",
        J => "j",
        K => "k",
        L => "l",
        Semicolon => "semicolon",
        Apostrophe => "apostrophe",
        Enter => "ret",
        LeftShift => "shift",
        Z => "z",
        X => "x",
        C => "c",
        V => "v",
        B => "b",
        N => "n",
        M => "m",
        Comma => "comma",
        Period => "dot",
        Slash => "slash",
        RightShift => "shift_r",
        LeftCtrl => "ctrl",
        LeftSuper => "meta_l",
        LeftAlt => "alt",
        Space => "spc",
        RightAlt => "alt_r",
        RightSuper => "meta_r",
        Menu => "menu",
        RightCtrl => "ctrl_r",
        Insert => "insert",
        Home => "home",
        PageUp => "pgup",
        Delete => "delete",
        End => "end",
        PageDown => "pgdn",
        Up => "up",
        Left => "left",
        Down => "down",
        Right => "right",
        NumLock => "num_lock",
        NumPadSlash => "kp_divide",
        NumPadAsterisk => "kp_multiply",
        NumPadMinus => "kp_subtract",
        NumPad7 => "kp_7",
        NumPad8 => "kp_8",
        NumPad9 => "kp_9",
        NumPadPlus => "kp_add",
        NumPad4 => "kp_4",
        NumPad5 => "kp_5",
        NumPad6 => "kp_6",
        NumPad1 => "kp_1",
        NumPad2 => "kp_2",
        NumPad3 => "kp_3",
        NumPad0 => "kp_0",
        NumPadDot => "kp_decimal",
        NumPadEnter => "kp_enter",
        ScrollLock => "scroll_lock",
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

    fn at(x: f32, y: f32, buttons: u8) -> PointerSample {
        PointerSample {
            pos: Some((x, y)),
            inside: (0.0..640.0).contains(&x) && (0.0..400.0).contains(&y),
            buttons,
            wheel: 0.0,
            scale: 0.5,
        }
    }

    fn mouse(dx: i32, dy: i32, dz: i32, buttons: u8) -> ToGuest {
        ToGuest::Mouse {
            dx,
            dy,
            dz,
            buttons,
        }
    }

    #[test]
    fn a_click_grabs_and_moves_go_to_the_guest_only_when_something_changed() {
        let mut c = Controls::default();
        let mut out = Vec::new();
        c.pointer(&at(10.0, 10.0, 0), &mut out);
        c.pointer(&at(50.0, 10.0, 0), &mut out);
        assert!(!c.grabbed && out.is_empty(), "not grabbed: nothing");
        c.pointer(&at(50.0, 10.0, LEFT_BUTTON), &mut out);
        assert!(c.grabbed);
        c.pointer(&at(50.0, 10.0, LEFT_BUTTON), &mut out);
        c.pointer(&at(50.0, 10.0, 0), &mut out);
        assert!(
            out.is_empty(),
            "the grabbing click is not passed on: {out:?}"
        );
        // Half a guest pixel per window pixel; a fraction waits for more.
        c.pointer(&at(61.0, 6.0, 0), &mut out);
        c.pointer(&at(61.0, 6.0, 0), &mut out);
        c.pointer(&at(62.0, 6.0, 0), &mut out);
        c.pointer(&at(62.0, 6.0, LEFT_BUTTON | MIDDLE_BUTTON), &mut out);
        // Outside the window, it still counts.
        c.pointer(&at(-20.0, 6.0, LEFT_BUTTON), &mut out);
        let mut wheel = at(-20.0, 6.0, LEFT_BUTTON);
        wheel.wheel = 1.0;
        c.pointer(&wheel, &mut out);
        assert_eq!(
            out,
            [
                mouse(5, 2, 0, 0),
                mouse(1, 0, 0, 0),
                mouse(0, 0, 0, LEFT_BUTTON | MIDDLE_BUTTON),
                mouse(-41, 0, 0, LEFT_BUTTON),
                mouse(0, 0, -1, LEFT_BUTTON),
            ]
        );
    }

    #[test]
    fn ctrl_alt_g_releases_the_grab_without_leaving_keys_or_buttons_held() {
        let mut c = Controls::default();
        let mut out = Vec::new();
        c.pointer(&at(10.0, 10.0, LEFT_BUTTON), &mut out);
        c.pointer(&at(10.0, 10.0, 0), &mut out);
        c.pointer(&at(10.0, 10.0, RIGHT_BUTTON), &mut out);
        c.key(Key::LeftCtrl, true, &mut out);
        c.key(Key::LeftAlt, true, &mut out);
        c.key(Key::G, true, &mut out);
        assert!(!c.grabbed);
        c.key(Key::G, false, &mut out);
        c.key(Key::LeftAlt, false, &mut out);
        c.key(Key::LeftCtrl, false, &mut out);
        c.pointer(&at(30.0, 10.0, 0), &mut out);
        let key = |make, pressed| ToGuest::Key { make, pressed };
        assert_eq!(
            out,
            [
                mouse(0, 0, 0, RIGHT_BUTTON),
                key(0x14, true),
                key(0x11, true),
                key(0x14, false),
                key(0x11, false),
                mouse(0, 0, 0, 0),
            ]
        );
        // Not grabbed, Ctrl+Alt+G is the guest's.
        out.clear();
        for (k, pressed) in [(Key::LeftCtrl, true), (Key::LeftAlt, true), (Key::G, true)] {
            c.key(k, pressed, &mut out);
        }
        assert_eq!(out, [key(0x14, true), key(0x11, true), key(0x34, true)]);
    }

    #[test]
    fn the_title_tells_the_mode_the_grab_and_the_end() {
        let text = DisplayMode::Text {
            columns: 80,
            rows: 25,
        };
        assert_eq!(
            window_title("demo", text, false, None),
            "hospes: demo \u{2014} 80x25 text"
        );
        let linear = DisplayMode::Linear {
            width: 1024,
            height: 768,
            bpp: 32,
        };
        assert_eq!(
            window_title("x", linear, true, None),
            "hospes: x \u{2014} 1024x768x32 \u{2014} mouse grabbed (Ctrl+Alt+G releases)"
        );
        assert!(window_title("x", text, false, Some(Stop::PowerOff)).ends_with("powered off"));
        assert_eq!(
            guest_pixels_per_window_pixel(
                (1600, 800),
                &Frame {
                    width: 720,
                    height: 400,
                    ..Frame::default()
                }
            ),
            0.5
        );
    }
}
