//! Debian's gdb against hospes's gdb stub, on a replay of Debian's Linux booting (the
//! images of `scripts/guest-images`): a breakpoint at the kernel's 32-bit entry, memory
//! read there, a control register, 1000 steps forward and 500 back (the registers must
//! be those of the forward pass), and reverse-continue back to the breakpoint.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest")
}

/// Where the 32-bit code of a bzImage starts in the file: after the setup sectors.
fn protected_mode_code(kernel: &[u8]) -> &[u8] {
    let setup_sectors = match kernel[0x1F1] {
        0 => 4,
        n => n as usize,
    };
    &kernel[(setup_sectors + 1) * 512..]
}

/// The text gdb printed between `echo <name>\n` and the next marker.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("<{name}>"))
        .unwrap_or_else(|| panic!("no <{name}> in gdb's output:\n{out}"));
    let rest = &out[start + name.len() + 2..];
    &rest[..rest.find('<').unwrap_or(rest.len())]
}

/// The `info registers` lines of a section (gdb's other chatter left out).
fn registers(section: &str) -> Vec<&str> {
    section
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|v| v.starts_with("0x"))
        })
        .collect()
}

#[test]
fn gdb_breaks_steps_and_steps_back_through_a_replayed_linux_boot() {
    let dir = guest_dir();
    if !dir.join("vmlinuz").is_file() {
        eprintln!(
            "skipped: no guest images in {} (run scripts/guest-images)",
            dir.display()
        );
        return;
    }
    if Command::new("gdb").arg("--version").output().is_err() {
        eprintln!("skipped: no gdb (scripts/guest-images installs it)");
        return;
    }
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gdb");
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let recording = scratch.join("early-boot.hrec");
    let run = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .current_dir(&dir)
        .args(["run", "-m", "256", "--display", "none", "--serial", "none"])
        .args(["--rtc-start", "1764028800", "--kernel", "vmlinuz"])
        .args(["--initrd", "initrd.img", "--append", "console=ttyS0 quiet"])
        .args(["--max-instructions", "50000000", "--record"])
        .arg(&recording)
        .output()
        .expect("run hospes");
    assert_eq!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut replay = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args([
            "replay",
            "--serial",
            "none",
            "--gdb",
            &format!("tcp::{port}"),
        ])
        .arg(&recording)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hospes replay");
    let mut stderr = BufReader::new(replay.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("hospes's first line");
    assert!(line.contains("waiting for gdb"), "{line}");

    let regs = "info registers eip eax ebx ecx edx esi edi ebp esp eflags cs ss ds";
    let saved = scratch.join("at-entry.snap");
    let _ = std::fs::remove_file(&saved);
    let save = format!("monitor save {}", saved.display());
    let script = [
        "set pagination off",
        "set confirm off",
        &format!("target remote 127.0.0.1:{port}"),
        "hbreak *0x100000",
        "continue",
        "echo <entry>\\n",
        "x/8xb 0x100000",
        "p/x $cr0",
        "stepi 500",
        "echo <forward>\\n",
        regs,
        "stepi 500",
        "reverse-stepi 500",
        "echo <back>\\n",
        regs,
        "reverse-continue",
        "echo <again>\\n",
        "p/x $eip",
        "monitor icount",
        &save,
        "echo <end>\\n",
        "kill",
    ];
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx"]);
    for cmd in script {
        gdb.args(["-ex", cmd]);
    }
    let out = gdb.output().expect("run gdb");
    let out =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let status = replay.wait().expect("wait for hospes");
    assert!(status.success(), "hospes: {status:?}\n{out}");

    let entry = section(&out, "entry");
    let kernel = std::fs::read(dir.join("vmlinuz")).expect("read the kernel");
    let bytes: Vec<String> = protected_mode_code(&kernel)[..8]
        .iter()
        .map(|b| format!("0x{b:02x}"))
        .collect();
    assert!(
        entry
            .split_whitespace()
            .filter(|w| w.starts_with("0x") && w.len() == 4)
            .eq(bytes.iter().map(String::as_str)),
        "memory at the breakpoint is not the kernel's entry code {bytes:?}:\n{out}"
    );
    let cr0 = entry
        .lines()
        .find_map(|l| l.split("= ").nth(1))
        .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no CR0 value:\n{out}"));
    assert_eq!(
        cr0 & 0x8000_0001,
        1,
        "protected mode without paging:\n{out}"
    );
    assert!(out.contains("Breakpoint 1, 0x00100000"), "{out}");
    let forward = registers(section(&out, "forward"));
    assert_eq!(forward.len(), 13, "{out}");
    assert_eq!(
        forward,
        registers(section(&out, "back")),
        "stepping back differs:\n{out}"
    );
    assert!(
        !forward[0].contains("0x100000 "),
        "500 steps went nowhere:\n{out}"
    );
    let again = section(&out, "again");
    assert!(again.contains("0x100000"), "{out}");

    // `monitor save` wrote the machine at the breakpoint: restored, it goes on from
    // that instruction count.
    // (gdb prints what `monitor` answers on its standard error.)
    assert!(out.contains("saved the machine to"), "{out}");
    let icount: u64 = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count from `monitor icount`:\n{out}"));
    let limit = (icount + 1000).to_string();
    let restored = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["run", "--display", "none", "--serial", "none", "--restore"])
        .arg(&saved)
        .args(["--max-instructions", &limit])
        .output()
        .expect("run hospes");
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert_eq!(restored.status.code(), Some(3), "{stderr}\n{out}");
    assert!(stderr.contains(&format!("icount={limit} ")), "{stderr}");
}
