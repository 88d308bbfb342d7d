//! `--display window` for real: hospes opens its window on an X server (Xvfb), keys
//! typed into that window (xdotool, through the XTEST extension like a real keyboard)
//! reach a boot program through the PS/2 keyboard and the BIOS, and the window shows
//! the text screen; the mouse, grabbed by a click, reaches a boot program through the
//! PS/2 mouse.

mod com1;

use iced_x86::code_asm::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
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
    /// Kept open: Xvfb writing to a closed pipe would die of it.
    _stdout: BufReader<ChildStdout>,
}

impl Xvfb {
    fn start() -> Xvfb {
        // Xvfb picks a free display number itself and writes it to its standard output
        // once it takes connections (-displayfd): tests running at once, in this process
        // or in others, never share a display or take one another's for theirs.
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1600x1000x24"])
            .args(["-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut number = String::new();
        let _ = stdout.read_line(&mut number);
        let number = number.trim();
        if number.parse::<u32>().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("could not start Xvfb ({number:?})");
        }
        Xvfb {
            display: format!(":{number}"),
            child,
            _stdout: stdout,
        }
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
    // print: DS:SI to COM1.
    let mut putc = a.create_label();
    let mut end = a.create_label();
    a.set_label(&mut print).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(end).unwrap();
    a.call(putc).unwrap();
    a.jmp(print).unwrap();
    a.set_label(&mut end).unwrap();
    a.ret().unwrap();
    com1::putc_routine(&mut a, &mut putc);
    boot_floppy(
        a.assemble(0x7C00).unwrap(),
        &[
            (READY, b"ready\r\n\0"),
            (GOT, b"got: \0"),
            (NEWLINE, b"\r\n\0"),
        ],
    )
}

/// A 1.44 MB floppy booting `code` (assembled for 0000:7C00, at most 180h bytes), with
/// NUL-terminated messages at their addresses after it.
fn boot_floppy(code: Vec<u8>, messages: &[(u32, &[u8])]) -> Vec<u8> {
    let mut sector = code;
    assert!(sector.len() <= 0x180, "the code overlaps the messages");
    sector.resize(512, 0);
    for &(at, text) in messages {
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

/// hospes in a window on `xvfb`, with a monitor on the Unix socket `shot` + ".sock".
fn run_in_window(xvfb: &Xvfb, floppy: &Path, shot: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["run", "--display", "window", "--fda"])
        .arg(floppy)
        .arg("--screen-text-on-exit")
        .arg(shot)
        .arg("--monitor")
        .arg(format!("unix:{}.sock", shot.display()))
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

/// The id of hospes's window.
fn hospes_window(xvfb: &Xvfb) -> String {
    let window = xvfb.xdotool(&["search", "--sync", "--name", "^hospes"]);
    let window = window.lines().next().unwrap_or_default().to_string();
    assert!(!window.is_empty(), "no hospes window");
    window
}

/// How hospes exited, waiting up to 30 s (None: it did not, and was killed).
fn exit_status(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A window test under way: hospes booted `program` in its window on an Xvfb of its
/// own, and the program said "ready" on COM1.
struct WindowRun {
    xvfb: Xvfb,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// COM1's lines so far.
    seen: Vec<String>,
    /// The window's X id.
    window: String,
    floppy: PathBuf,
    /// Where hospes writes the text screen at exit (and, with ".sock", its monitor).
    screen: PathBuf,
}

impl WindowRun {
    /// None (said on stdout) where Xvfb or xdotool is missing.
    fn start(name: &str, program: Vec<u8>) -> Option<WindowRun> {
        if !have("Xvfb") || !have("xdotool") {
            println!("skipped: Xvfb and xdotool are not installed (scripts/test installs them)");
            return None;
        }
        let xvfb = Xvfb::start();
        let floppy = temp_path(&format!("{name}.img"));
        let screen = temp_path(&format!("{name}-screen.txt"));
        std::fs::write(&floppy, program).unwrap();
        let (child, lines) = run_in_window(&xvfb, &floppy, &screen);
        let mut seen = Vec::new();
        assert!(wait_for(&lines, "ready", &mut seen), "no 'ready': {seen:?}");
        let window = hospes_window(&xvfb);
        Some(WindowRun {
            xvfb,
            child,
            lines,
            seen,
            window,
            floppy,
            screen,
        })
    }
}

impl Drop for WindowRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.floppy);
        let _ = std::fs::remove_file(&self.screen);
    }
}

#[test]
fn keys_typed_in_the_window_reach_the_guest() {
    let Some(mut run) = WindowRun::start("echo", echo_program()) else {
        return;
    };
    let WindowRun {
        xvfb,
        child,
        lines,
        seen,
        window,
        screen,
        ..
    } = &mut run;
    // No window manager: the keyboard goes to the window under the pointer.
    xvfb.xdotool(&["mousemove", "--window", window, "40", "40"]);
    xvfb.xdotool(&["type", "--delay", "40", "hello 42"]);
    // The monitor works beside the window: its screendump shows the 80x25 text screen.
    let png = temp_path("screen.png");
    let reply = monitor_command(
        &PathBuf::from(format!("{}.sock", screen.display())),
        &format!("screendump {}", png.display()),
    );
    assert!(reply.contains("720x400"), "{reply}");
    assert!(png.is_file());
    xvfb.xdotool(&["key", "Return"]);
    let got = wait_for(lines, "got: ", seen);
    let status = exit_status(child);
    assert!(got, "the guest never saw Enter: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("got: hello 42"));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    // The echoed keys are on the screen the window showed.
    let text = std::fs::read_to_string(&screen).unwrap();
    assert!(text.contains("hello 42"), "{text}");
    let _ = std::fs::remove_file(&png);
}

/// One command on a monitor socket: what it answered.
fn monitor_command(socket: &Path, command: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("monitor socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    writeln!(stream, "{command}").unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8];
    // The banner's prompt, then the answer's.
    while got.windows(9).filter(|w| w == b"(hospes) ").count() < 2 {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            other => panic!(
                "monitor: {other:?} after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A floppy boot sector: enables the PS/2 mouse through the i8042's ports (interrupts
/// off: it polls), prints "ready" on COM1, then each 3-byte movement packet as hex
/// ("09 1e 00"), until a packet with the left button held moves right with the total
/// X movement so far positive: then "mouse ok", and powers off.
fn mouse_program() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut print = a.create_label();
    let mut putc = a.create_label();
    let mut hex = a.create_label();
    let mut nibble = a.create_label();
    let mut read_aux = a.create_label();
    let mut input_empty = a.create_label();
    let mut packet = a.create_label();
    let mut bad_ack = a.create_label();
    let mut power_off = a.create_label();
    const READY: u32 = 0x7D80;
    const OK: u32 = 0x7D90;
    const BAD_ACK: u32 = 0x7DA0;
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7C00u32).unwrap();
    a.cld().unwrap();
    // Aux port on; F4h (enable reporting) to the mouse; its acknowledgement FAh.
    for (port, byte) in [(0x64, 0xA8), (0x64, 0xD4), (0x60, 0xF4)] {
        a.call(input_empty).unwrap();
        a.mov(al, byte as u32).unwrap();
        a.out(port, al).unwrap();
    }
    a.call(read_aux).unwrap();
    a.cmp(al, 0xFA).unwrap();
    a.jne(bad_ack).unwrap();
    a.mov(si, READY).unwrap();
    a.call(print).unwrap();
    // DI: the total X movement.
    a.xor(di, di).unwrap();
    a.set_label(&mut packet).unwrap();
    a.call(read_aux).unwrap();
    // A first byte always has bit 3 set: skip others to find the packets' start.
    a.test(al, 0x08).unwrap();
    a.jz(packet).unwrap();
    a.mov(bl, al).unwrap();
    a.call(read_aux).unwrap();
    a.mov(cl, al).unwrap();
    a.call(read_aux).unwrap();
    a.mov(ch, al).unwrap();
    for byte in [bl, cl, ch] {
        a.mov(al, byte).unwrap();
        a.call(hex).unwrap();
        a.mov(al, b' ' as u32).unwrap();
        a.call(putc).unwrap();
    }
    a.mov(al, b'\r' as u32).unwrap();
    a.call(putc).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    a.call(putc).unwrap();
    // X is 9 bits: the sign is bit 4 of the first byte.
    let mut positive = a.create_label();
    a.mov(al, cl).unwrap();
    a.xor(ah, ah).unwrap();
    a.test(bl, 0x10).unwrap();
    a.jz(positive).unwrap();
    a.mov(ah, 0xFF).unwrap();
    a.set_label(&mut positive).unwrap();
    a.add(di, ax).unwrap();
    a.test(bl, 0x01).unwrap();
    a.jz(packet).unwrap();
    a.test(bl, 0x10).unwrap();
    a.jnz(packet).unwrap();
    a.test(cl, cl).unwrap();
    a.jz(packet).unwrap();
    a.cmp(di, 0).unwrap();
    a.jle(packet).unwrap();
    a.mov(si, OK).unwrap();
    a.call(print).unwrap();
    a.set_label(&mut power_off).unwrap();
    a.mov(dx, 0x604u32).unwrap();
    a.mov(ax, 0x3400u32).unwrap();
    a.out(dx, ax).unwrap();
    a.hlt().unwrap();
    a.set_label(&mut bad_ack).unwrap();
    a.mov(si, BAD_ACK).unwrap();
    a.call(print).unwrap();
    a.jmp(power_off).unwrap();
    // read_aux: AL = the next byte from the mouse (keyboard bytes are dropped).
    let mut drop_key = a.create_label();
    a.set_label(&mut read_aux).unwrap();
    a.in_(al, 0x64).unwrap();
    a.test(al, 0x01).unwrap();
    a.jz(read_aux).unwrap();
    a.test(al, 0x20).unwrap();
    a.jz(drop_key).unwrap();
    a.in_(al, 0x60).unwrap();
    a.ret().unwrap();
    a.set_label(&mut drop_key).unwrap();
    a.in_(al, 0x60).unwrap();
    a.jmp(read_aux).unwrap();
    // input_empty: waits until the controller can take a byte.
    a.set_label(&mut input_empty).unwrap();
    a.in_(al, 0x64).unwrap();
    a.test(al, 0x02).unwrap();
    a.jnz(input_empty).unwrap();
    a.ret().unwrap();
    // hex: AL as two hex digits.
    a.set_label(&mut hex).unwrap();
    a.push(ax).unwrap();
    a.shr(al, 4).unwrap();
    a.call(nibble).unwrap();
    a.pop(ax).unwrap();
    a.push(ax).unwrap();
    a.and(al, 0x0F).unwrap();
    a.call(nibble).unwrap();
    a.pop(ax).unwrap();
    a.ret().unwrap();
    let mut digit = a.create_label();
    a.set_label(&mut nibble).unwrap();
    a.add(al, b'0' as u32).unwrap();
    a.cmp(al, b'9' as u32).unwrap();
    a.jbe(digit).unwrap();
    a.add(al, (b'a' - b'9' - 1) as u32).unwrap();
    a.set_label(&mut digit).unwrap();
    a.jmp(putc).unwrap();
    // print: DS:SI to COM1.
    let mut end = a.create_label();
    a.set_label(&mut print).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(end).unwrap();
    a.call(putc).unwrap();
    a.jmp(print).unwrap();
    a.set_label(&mut end).unwrap();
    a.ret().unwrap();
    com1::putc_routine(&mut a, &mut putc);
    boot_floppy(
        a.assemble(0x7C00).unwrap(),
        &[
            (READY, b"ready\r\n\0"),
            (OK, b"mouse ok\r\n\0"),
            (BAD_ACK, b"bad ack\r\n\0"),
        ],
    )
}

/// A packet line of `mouse_program`: buttons, X, Y.
fn packet(line: &str) -> Option<(u8, i32, i32)> {
    let bytes: Vec<u8> = line
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    let [b0, x, y] = bytes[..] else { return None };
    assert_ne!(b0 & 0x08, 0, "not a packet's first byte: {line}");
    let signed = |v: u8, negative: bool| v as i32 - if negative { 256 } else { 0 };
    Some((b0 & 7, signed(x, b0 & 0x10 != 0), signed(y, b0 & 0x20 != 0)))
}

#[test]
fn the_mouse_grabbed_in_the_window_reaches_the_guest() {
    let started = Instant::now();
    let Some(mut run) = WindowRun::start("mouse", mouse_program()) else {
        return;
    };
    let WindowRun {
        xvfb,
        child,
        lines,
        seen,
        window,
        ..
    } = &mut run;
    let pause = || std::thread::sleep(Duration::from_millis(60));
    xvfb.xdotool(&["mousemove", "--window", window, "100", "100"]);
    // minifb looks at the buttons once a frame: a click held for a while, as a hand
    // does (xdotool's click would come and go between two looks).
    let click = |down: &str| {
        xvfb.xdotool(&[down, "1"]);
        pause();
    };
    click("mousedown");
    click("mouseup");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let title = xvfb.xdotool(&["getwindowname", window]);
        if title.contains("mouse grabbed (Ctrl+Alt+G releases)") {
            assert!(title.contains("80x25 text"), "{title}");
            break;
        }
        assert!(Instant::now() < deadline, "not grabbed: {title}");
        pause();
    }
    for _ in 0..3 {
        xvfb.xdotool(&["mousemove_relative", "30", "0"]);
        pause();
    }
    click("mousedown");
    xvfb.xdotool(&["mousemove_relative", "30", "0"]);
    pause();
    click("mouseup");
    let ok = wait_for(lines, "mouse ok", seen);
    let status = exit_status(child);
    assert!(ok, "no 'mouse ok': {seen:?}");
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let packets: Vec<(u8, i32, i32)> = seen.iter().filter_map(|l| packet(l)).collect();
    let first_left = packets
        .iter()
        .position(|p| p.0 & 1 != 0)
        .expect("a packet with the left button");
    let (before, after) = packets.split_at(first_left);
    // The click that grabbed is the host's: the guest saw no button before the drag.
    assert!(before.iter().all(|p| p.0 == 0), "{seen:?}");
    // 90 window pixels right: the text screen's 720 pixels are about as wide as the
    // window (640 pixels, opened before the BIOS set the mode).
    let moved: i32 = before.iter().map(|p| p.1).sum();
    assert!((60..=120).contains(&moved), "moved {moved}: {seen:?}");
    assert!(packets.iter().all(|p| p.2 == 0), "{seen:?}");
    assert!(after.iter().all(|p| p.0 == 1), "{seen:?}");
    assert!(after.iter().any(|p| p.1 > 0), "{seen:?}");
    println!("the mouse test took {:?}", started.elapsed());
}
