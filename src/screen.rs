//! How a run is shown: the display option shared by `run` and `demo`, and the screen
//! captures written when the guest stops (a PNG screenshot, the text of a text screen).

use crate::monitor::Monitor;
use crate::window;
use hospes_devices::vga::Frame;
use hospes_machine::{Machine, Stop};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Display {
    /// Headless: the screen is kept but not shown.
    None,
    /// A window showing the screen, with the keyboard (and the mouse, once grabbed by a
    /// click) going to the guest.
    Window,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DisplayArgs {
    /// none: headless; window: show the screen (COM1 stays on stdio unless --serial
    /// says otherwise).
    #[arg(long, value_enum)]
    pub display: Option<Display>,
    /// When the guest stops, save its screen as a PNG file.
    #[arg(long, value_name = "FILE")]
    pub screenshot_on_exit: Option<PathBuf>,
    /// When the guest stops, save the text of its text-mode screen.
    #[arg(long, value_name = "FILE")]
    pub screen_text_on_exit: Option<PathBuf>,
}

/// How a run ended.
pub enum Ended {
    Guest(Stop),
    /// The user ended it: closed the window, or `quit` on the monitor.
    Closed,
}

/// What to show the user while a run lasts.
pub struct Presentation<'a> {
    pub display: Display,
    /// The window's title.
    pub title: &'a str,
    /// Keep the window open after the guest stops, showing the last screen, until the
    /// user closes it (for the demo, whose guest is over in a moment).
    pub linger: bool,
}

/// Runs the machine until it stops (or `limit` instructions), headless or in a window,
/// then writes the screen captures the options ask for.
pub fn run(
    machine: &mut Machine,
    limit: Option<u64>,
    args: &DisplayArgs,
    how: &Presentation,
    monitor: Option<&Monitor>,
) -> Result<Ended, String> {
    // Check the capture paths before running, so a typo does not cost a whole run.
    for path in [&args.screenshot_on_exit, &args.screen_text_on_exit]
        .into_iter()
        .flatten()
    {
        check_writable(path)?;
    }
    let ended = match how.display {
        Display::None => match monitor {
            None => Ended::Guest(machine.run(limit)),
            Some(monitor) => loop {
                if monitor.serve(machine) {
                    break Ended::Closed;
                }
                if let Some(stop) = run_slice(machine, limit) {
                    break Ended::Guest(stop);
                }
            },
        },
        Display::Window => window::run(machine, limit, how.title, how.linger, monitor)?,
    };
    if let Some(path) = &args.screenshot_on_exit {
        let mut frame = Frame::default();
        machine.render_screen(&mut frame);
        hospes_machine::monitor::write_png(path, &frame)?;
    }
    if let Some(path) = &args.screen_text_on_exit {
        let mut text = machine.screen_text().join("\n");
        text.push('\n');
        std::fs::write(path, text)
            .map_err(|e| format!("cannot write screen text {}: {e}", path.display()))?;
    }
    Ok(ended)
}

/// Instructions the machine runs between looks at the window, the clock or the monitor
/// (1 ms of guest time).
pub const SLICE: u64 = 1_000_000;

/// Runs the machine for a [`SLICE`] (or up to `limit`): the stop, if it stopped for
/// another reason than the end of the slice.
pub fn run_slice(machine: &mut Machine, limit: Option<u64>) -> Option<Stop> {
    let mut target = machine.cpu.state.icount + SLICE;
    if let Some(l) = limit {
        target = target.min(l);
    }
    match machine.run(Some(target)) {
        Stop::InstructionLimit if limit.is_none_or(|l| machine.cpu.state.icount < l) => None,
        stop => Some(stop),
    }
}

/// The display to use when none was given: a window if this session has a graphical
/// display, headless otherwise.
pub fn default_display() -> Display {
    let has = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
    if has("DISPLAY") || has("WAYLAND_DISPLAY") {
        Display::Window
    } else {
        Display::None
    }
}

fn check_writable(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "cannot write {}: no directory {}",
            path.display(),
            dir.display()
        ))
    }
}
