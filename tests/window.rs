//! `--display window` for real: hospes opens its window on an X server (Xvfb), keys
//! typed into that window (xdotool, through the XTEST extension like a real keyboard)
//! reach a boot program through the PS/2 keyboard and the BIOS, and the window shows
//! the text screen.

use iced_x86::code_asm::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An X server for the test's lifetime.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        // A display number of our own; Xvfb refuses one that is taken.
        for n in 0..50u32 {
            let number = 200 + (std::process::id() + n * 7) % 700;
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
            if socket.exists() {
                continue;
            }
            let mut child = Command::new("Xvfb")
                .arg(format!(":{number}"))
                .args(["-screen", "0", "1600x1000x24", "-nolisten", "tcp"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start Xvfb");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if socket.exists() {
                    return Xvfb {
                        child,
                        display: format!(":{number}"),
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start Xvfb");
    }

    fn xdotool(&self, args: &[&str]) -> String {
        let out = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .expect("run xdotool");
        assert!(out.status.success(), "xdotool {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A floppy boot sector: prints "ready" on COM1, reads keys with INT 16h until Enter,
/// echoing them on the screen with INT 10h, prints "got: <line>" and powers off.
fn echo_program() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut print = a.create_label();
    let mut read = a.create_label();
    let mut done = a.create_label();
    // Messages at fixed places in the sector (see the end).
    const READY: u32 = 0x7D80;
    const GOT: u32 = 0x7D90;
    const NEWLINE: u32 = 0x7DA0;
    const BUFFER: u32 = 0x0600;
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7C00u32).unwrap();
    a.sti().unwrap();
    a.cld().unwrap();
    a.mov(si, READY).unwrap();
    a.call(print).unwrap();
    a.mov(di, BUFFER).unwrap();
    a.set_label(&mut read).unwrap();
    a.mov(ah, 0).unwrap();
    a.int(0x16).unwrap();
    a.cmp(al, 13).unwrap();
    a.je(done).unwrap();
    a.stosb().unwrap();
    a.mov(ah, 0x0E).unwrap();
    a.mov(bx, 7u32).unwrap();
    a.int(0x10).unwrap();
    a.jmp(read).unwrap();
    a.set_label(&mut done).unwrap();
    a.mov(byte_ptr(di), 0).unwrap();
    a.mov(si, GOT).unwrap();
    a.call(print).unwrap();
    a.mov(si, BUFFER).unwrap();
    a.call(print).unwrap();
    a.mov(si, NEWLINE).unwrap();
    a.call(print).unwrap();
    a.mov(dx, 0x604u32).unwrap();
    a.mov(ax, 0x3400u32).unwrap();
    a.out(dx, ax).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    // print: DS:SI to COM1, waiting for the transmitter.
    let mut wait = a.create_label();
    let mut end = a.create_label();
    a.set_label(&mut print).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(end).unwrap();
    a.mov(ah, al).unwrap();
    a.mov(dx, 0x3FDu32).unwrap();
    a.set_label(&mut wait).unwrap();
    a.in_(al, dx).unwrap();
    a.test(al, 0x20).unwrap();
    a.jz(wait).unwrap();
    a.mov(al, ah).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(print).unwrap();
    a.set_label(&mut end).unwrap();
    a.ret().unwrap();
    let mut sector = a.assemble(0x7C00).unwrap();
    assert!(sector.len() <= 0x180, "the code overlaps the messages");
    sector.resize(512, 0);
    for (at, text) in [
        (READY, &b"ready\r\n\0"[..]),
        (GOT, b"got: \0"),
        (NEWLINE, b"\r\n\0"),
    ] {
        let at = (at - 0x7C00) as usize;
        sector[at..at + text.len()].copy_from_slice(text);
    }
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector.resize(1_474_560, 0);
    sector
}

fn wait_for(lines: &mpsc::Receiver<String>, text: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(text);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hospes-window-{}-{name}", std::process::id()))
}

fn run_in_window(xvfb: &Xvfb, floppy: &Path, shot: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["run", "--display", "window", "--fda"])
        .arg(floppy)
        .arg("--screen-text-on-exit")
        .arg(shot)
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run hospes");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[test]
fn keys_typed_in_the_window_reach_the_guest() {
    if !have("Xvfb") || !have("xdotool") {
        println!("skipped: Xvfb and xdotool are not installed (scripts/test installs them)");
        return;
    }
    let xvfb = Xvfb::start();
    let floppy = temp_path("echo.img");
    let screen = temp_path("screen.txt");
    std::fs::write(&floppy, echo_program()).unwrap();
    let (mut child, lines) = run_in_window(&xvfb, &floppy, &screen);
    let mut seen = Vec::new();
    assert!(wait_for(&lines, "ready", &mut seen), "no 'ready': {seen:?}");
    let window = xvfb.xdotool(&["search", "--sync", "--name", "^hospes"]);
    let window = window.lines().next().unwrap_or_default().to_string();
    assert!(!window.is_empty(), "no hospes window");
    // No window manager: the keyboard goes to the window under the pointer.
    xvfb.xdotool(&["mousemove", "--window", &window, "40", "40"]);
    xvfb.xdotool(&["type", "--delay", "40", "hello 42"]);
    xvfb.xdotool(&["key", "Return"]);
    let got = wait_for(&lines, "got: ", &mut seen);
    let status = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(got, "the guest never saw Enter: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("got: hello 42"));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    // The echoed keys are on the screen the window showed.
    let text = std::fs::read_to_string(&screen).unwrap();
    assert!(text.contains("hello 42"), "{text}");
    let _ = std::fs::remove_file(&floppy);
    let _ = std::fs::remove_file(&screen);
}
