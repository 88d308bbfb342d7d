//! How a run is shown: the display option shared by `run` and `demo`, and the screen
//! captures written when the guest stops (a PNG screenshot, the text of a text screen).

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

/// How a windowed run ended.
pub enum Ended {
    Guest(Stop),
    /// The user closed the window.
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
) -> Result<Ended, String> {
    // Check the capture paths before running, so a typo does not cost a whole run.
    for path in [&args.screenshot_on_exit, &args.screen_text_on_exit]
        .into_iter()
        .flatten()
    {
        check_writable(path)?;
    }
    let ended = match how.display {
        Display::None => Ended::Guest(machine.run(limit)),
        Display::Window => window::run(machine, limit, how.title, how.linger)?,
    };
    if let Some(path) = &args.screenshot_on_exit {
        let mut frame = Frame::default();
        machine.render_screen(&mut frame);
        write_png(path, &frame)?;
    }
    if let Some(path) = &args.screen_text_on_exit {
        let mut text = machine.screen_text().join("\n");
        text.push('\n');
        std::fs::write(path, text)
            .map_err(|e| format!("cannot write screen text {}: {e}", path.display()))?;
    }
    Ok(ended)
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

/// Saves a frame as an 8-bit RGB PNG.
pub fn write_png(path: &Path, frame: &Frame) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(file),
        frame.width as u32,
        frame.height as u32,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
    let rgb: Vec<u8> = frame
        .pixels
        .iter()
        .flat_map(|&p| [(p >> 16) as u8, (p >> 8) as u8, p as u8])
        .collect();
    writer.write_image_data(&rgb).map_err(|e| fail(&e))?;
    writer.finish().map_err(|e| fail(&e))
}
