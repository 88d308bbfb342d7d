//! The monitor's commands: one set for every console that offers them (`hospes run
//! --monitor`, on a socket or stdio, and gdb's `monitor` command). A command runs
//! between two slices of guest execution; only `sendkey` changes what the guest sees,
//! and it does so through the recorded input like a key typed in the window.

use crate::Machine;
use hospes_devices::vga::Frame;
use std::path::Path;

/// What a command answered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Text for the user (no trailing newline; may be empty).
    pub text: String,
    /// The user asked to end the run.
    pub quit: bool,
}

impl Reply {
    fn say(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            quit: false,
        }
    }
}

const HELP: &str = "\
hospes monitor commands:
  info              instruction count, virtual time, screen mode and CPU state
  icount            the instruction count
  cpu               the CPU state in one line
  screendump FILE   save the screen as a PNG file (also: screenshot FILE)
  screen            the text of the text-mode screen
  sendkey KEYS      press and release keys, e.g. sendkey ctrl-alt-delete (QEMU's names)
  save FILE         save the whole machine (hospes run --restore FILE)
  quit              end the run (the on-exit captures are still written)";

/// Runs one command line.
pub fn execute(machine: &mut Machine, line: &str) -> Reply {
    let mut words = line.split_whitespace();
    let (Some(command), argument, None) = (words.next(), words.next(), words.next()) else {
        return if line.trim().is_empty() {
            Reply::default()
        } else {
            Reply::say(format!("too many arguments: {}", line.trim()))
        };
    };
    match (command, argument) {
        ("help" | "?", None) => Reply::say(HELP),
        ("info", None) => Reply::say(info(machine)),
        ("icount", None) => Reply::say(machine.cpu.state.icount.to_string()),
        ("cpu", None) => Reply::say(machine.describe_cpu()),
        ("screendump" | "screenshot", Some(path)) => {
            let mut frame = Frame::default();
            machine.render_screen(&mut frame);
            match write_png(Path::new(path), &frame) {
                Ok(()) => Reply::say(format!(
                    "saved the screen ({}x{}) to {path}",
                    frame.width, frame.height
                )),
                Err(e) => Reply::say(e),
            }
        }
        ("screen", None) => {
            let lines = machine.screen_text();
            if lines.is_empty() {
                Reply::say("the screen is in a graphics mode: use screendump FILE")
            } else {
                Reply::say(lines.join("\n"))
            }
        }
        ("sendkey", Some(spec)) => match crate::keys::chord(spec) {
            Ok(codes) => {
                for &code in &codes {
                    machine.key_event(code, true);
                }
                for &code in codes.iter().rev() {
                    machine.key_event(code, false);
                }
                Reply::default()
            }
            Err(e) => Reply::say(e),
        },
        ("save", Some(path)) => match machine.save(Path::new(path)) {
            Ok(()) => Reply::say(format!("saved the machine to {path}")),
            Err(e) => Reply::say(e.to_string()),
        },
        ("quit" | "q", None) => Reply {
            text: String::new(),
            quit: true,
        },
        _ => Reply::say(format!("unknown command: {} (try help)", line.trim())),
    }
}

fn info(machine: &Machine) -> String {
    let screen = machine.display_mode();
    format!(
        "icount {}, virtual time {:.3} s, screen {screen}\n{}",
        machine.cpu.state.icount,
        machine.now() as f64 / 1e9,
        machine.describe_cpu()
    )
}

/// Saves a frame as an 8-bit RGB PNG.
pub fn write_png(path: &Path, frame: &Frame) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    if frame.pixels.is_empty() {
        return Err(fail(&"the screen shows nothing (no display mode set)"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::counting_machine;

    #[test]
    fn commands_answer_and_sendkey_reaches_the_keyboard() {
        let mut m = counting_machine();
        let icount = m.cpu.state.icount;
        assert_eq!(execute(&mut m, "icount").text, icount.to_string());
        assert!(execute(&mut m, "info").text.contains("80x25 text"));
        assert!(execute(&mut m, "help").text.contains("screendump FILE"));
        assert_eq!(execute(&mut m, "  ").text, "");
        assert!(execute(&mut m, "frobnicate")
            .text
            .starts_with("unknown command"));
        assert!(execute(&mut m, "sendkey ctrl-nokey")
            .text
            .contains("unknown key"));
        assert!(execute(&mut m, "quit").quit);
        // The BIOS's screen is text: its first line is the banner.
        let screen = execute(&mut m, "screen").text;
        assert_eq!(screen.lines().next(), Some("hospes BIOS"), "{screen}");

        assert_eq!(execute(&mut m, "sendkey ctrl-c"), Reply::default());
        assert_eq!(
            m.pending,
            [(0x14, true), (0x21, true), (0x21, false), (0x14, false)]
                .map(|(make, pressed)| crate::replay::Input::Key { make, pressed })
        );
    }

    #[test]
    fn screendump_writes_the_screen_as_png() {
        let mut m = counting_machine();
        let dir = std::env::temp_dir().join(format!("hospes-monitor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("screen.png");
        let reply = execute(&mut m, &format!("screendump {}", path.display()));
        assert!(reply.text.contains("720x400"), "{reply:?}");
        let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (720, 400));
        let bad = execute(&mut m, "screendump /nonexistent-dir/x.png");
        assert!(bad.text.starts_with("cannot write"), "{bad:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
