//! `hospes run --monitor`: the monitor console on a Unix socket answers `info`,
//! `screen` and `screendump` while the guest runs, `sendkey` types into the guest
//! (through the BIOS keyboard), and `quit` ends a run that would never end by itself.

use iced_x86::code_asm::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn temp_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

/// A floppy boot sector: sends every key INT 16h returns to COM1 until Enter, then
/// powers off. With `forever`, it waits for keys and never powers off.
fn key_echo_floppy(name: &str, forever: bool) -> PathBuf {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut read = a.create_label();
    a.xor(ax, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7C00u32).unwrap();
    a.sti().unwrap();
    a.set_label(&mut read).unwrap();
    a.mov(ah, 0u32).unwrap();
    a.int(0x16).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.out(dx, al).unwrap();
    if !forever {
        a.cmp(al, 13u32).unwrap();
    }
    a.jne(read).unwrap();
    a.mov(dx, 0x604u32).unwrap();
    a.mov(ax, 0x3400u32).unwrap();
    a.out(dx, ax).unwrap();
    a.hlt().unwrap();
    let mut code = a.assemble(0x7C00).unwrap();
    code.resize(1474560, 0);
    code[510] = 0x55;
    code[511] = 0xAA;
    let path = temp_path(name);
    std::fs::write(&path, code).unwrap();
    path
}

/// hospes with a monitor on a Unix socket; COM1 on its stdout.
fn start(floppy: &Path, socket: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["run", "--display", "none", "--fda"])
        .arg(floppy)
        .arg("--monitor")
        .arg(format!("unix:{}", socket.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hospes")
}

/// A monitor connection: sends a command, reads up to the next prompt.
struct Console {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Console {
    fn connect(socket: &Path) -> Console {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("no monitor socket: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut console = Console {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let banner = console.until_prompt();
        assert!(banner.contains("hospes monitor"), "{banner}");
        console
    }

    fn until_prompt(&mut self) -> String {
        const PROMPT: &[u8] = b"(hospes) ";
        let mut got = Vec::new();
        while !got.ends_with(PROMPT) {
            let mut byte = [0u8];
            match self.reader.read(&mut byte) {
                Ok(1) => got.push(byte[0]),
                other => panic!("monitor closed: {other:?} after {got:?}"),
            }
        }
        got.truncate(got.len() - PROMPT.len());
        String::from_utf8(got).unwrap()
    }

    fn command(&mut self, line: &str) -> String {
        writeln!(self.writer, "{line}").unwrap();
        self.until_prompt()
    }
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hospes did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn monitor_commands_while_the_guest_runs() {
    let floppy = key_echo_floppy("echo.img", false);
    let socket = temp_path("echo.sock");
    let shot = temp_path("echo.png");
    let mut child = start(&floppy, &socket, &[]);
    let mut console = Console::connect(&socket);

    let info = console.command("info");
    assert!(info.contains("screen 80x25 text"), "{info}");
    let screen = console.command("screen");
    assert_eq!(screen.lines().next(), Some("hospes BIOS"), "{screen}");
    let reply = console.command(&format!("screendump {}", shot.display()));
    assert!(reply.contains("720x400"), "{reply}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).expect("screendump file"));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (720, 400));
    assert!(console.command("bogus").contains("unknown command"));

    // Keys by QEMU's names reach the guest as ASCII through INT 16h.
    for key in ["h", "shift-i", "ret"] {
        assert_eq!(console.command(&format!("sendkey {key}")), "");
    }
    let status = wait(&mut child);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(out, "hI\r");
    assert!(!socket.exists(), "the socket is removed at the end");
    let _ = std::fs::remove_file(&floppy);
    let _ = std::fs::remove_file(&shot);
}

#[test]
fn quit_ends_a_run_and_the_exit_captures_are_written() {
    let floppy = key_echo_floppy("forever.img", true);
    let socket = temp_path("forever.sock");
    let text = temp_path("forever.txt");
    let mut child = start(
        &floppy,
        &socket,
        &["--screen-text-on-exit", text.to_str().unwrap()],
    );
    let mut console = Console::connect(&socket);
    writeln!(console.writer, "quit").unwrap();
    let status = wait(&mut child);
    assert!(status.success(), "{status:?}");
    let screen = std::fs::read_to_string(&text).expect("screen text");
    assert!(screen.starts_with("hospes BIOS"), "{screen}");
    // The console closed with the run.
    let mut rest = String::new();
    let _ = console.reader.read_line(&mut rest);
    assert_eq!(rest, "");
    let _ = std::fs::remove_file(&floppy);
    let _ = std::fs::remove_file(&text);
}

/// The virtual time `info` reports, in seconds.
fn virtual_seconds(console: &mut Console) -> f64 {
    let info = console.command("info");
    let at = info.find("virtual time ").expect("virtual time") + "virtual time ".len();
    info[at..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .expect("seconds")
}

#[test]
fn an_idle_guest_waiting_for_typed_input_keeps_to_the_wall_clock() {
    // With COM1 on an open stdin, the guest's idle time is paced: waiting for keys,
    // its clock (the BIOS tick) runs no faster than the host's.
    let floppy = key_echo_floppy("paced.img", true);
    let socket = temp_path("paced.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["run", "--display", "none", "--fda"])
        .arg(&floppy)
        .arg("--monitor")
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run hospes");
    let mut console = Console::connect(&socket);
    let start = virtual_seconds(&mut console);
    std::thread::sleep(Duration::from_secs(1));
    let waited = virtual_seconds(&mut console) - start;
    // Unpaced, the halted guest would leap through minutes in that second.
    assert!((0.2..5.0).contains(&waited), "{waited} s of guest time");
    drop(child.stdin.take());
    // Its stdin closed, nothing more can be typed: the idle guest is not paced now.
    std::thread::sleep(Duration::from_millis(200));
    let start = virtual_seconds(&mut console);
    std::thread::sleep(Duration::from_secs(1));
    let raced = virtual_seconds(&mut console) - start;
    assert!(raced > 20.0, "{raced} s of guest time");
    writeln!(console.writer, "quit").unwrap();
    assert!(wait(&mut child).success());
    let _ = std::fs::remove_file(&floppy);
}

#[test]
fn bad_monitor_options_are_one_line_errors() {
    let floppy = key_echo_floppy("bad.img", false);
    for (args, want) in [
        (vec!["--monitor", "vc"], "unknown monitor 'vc'"),
        (
            vec!["--monitor", "stdio"],
            "--monitor stdio needs COM1 elsewhere",
        ),
        (
            vec!["--monitor", "unix:/nonexistent-dir/m.sock"],
            "cannot listen on /nonexistent-dir/m.sock",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
            .args(["run", "--display", "none", "--fda"])
            .arg(&floppy)
            .args(&args)
            .output()
            .expect("run hospes");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let _ = std::fs::remove_file(&floppy);
}
