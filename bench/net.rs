//! Guest-to-host TCP throughput through the user-mode NAT, hospes beside QEMU's TCG
//! with the same card (an RTL8029, Linux's ne2k-pci) and QEMU's own user networking:
//! Debian's Linux (the images of `scripts/guest-images`) fetches `BENCH_NET_MIB`
//! (default 32) MiB with busybox wget from an HTTP server on the host's loopback; the
//! time is taken on the host between the guest's serial markers before and after.
//! `BENCH_RUNS` (default 3) runs each, median.
//!
//! Run with `bench/net-vs-qemu` (installs QEMU, builds the images) or `cargo bench
//! --bench net`. Prints figures; asserts nothing about speed.

#[path = "common.rs"]
mod common;

use common::{median, which};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = "target/guest";

/// Serves `big` bytes at /big and a small file at any other path, in a thread.
fn serve(big: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP server");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let chunk = vec![0x5au8; 1 << 16];
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let len = if request.starts_with(b"GET /big ") {
                big
            } else {
                4096
            };
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
    });
    port
}

/// Runs a guest; the wall time between its bench markers.
fn measure(program: &Path, args: &[String]) -> Result<Duration, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let mut reader = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let (mut start, mut end) = (None, None);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        match line.trim_end() {
            "HOSPES-BENCH-START" => start = Some(Instant::now()),
            "HOSPES-BENCH-END" => end = Some(Instant::now()),
            _ => {}
        }
        line.clear();
    }
    let _ = child.wait();
    match (start, end) {
        (Some(s), Some(e)) => Ok(e - s),
        _ => Err(format!("{}: no bench markers", program.display())),
    }
}

fn main() {
    let guest = Path::new(GUEST);
    for f in ["vmlinuz", "initrd.img"] {
        if !guest.join(f).exists() {
            eprintln!("bench net: {GUEST}/{f} is missing; run scripts/guest-images first");
            std::process::exit(1);
        }
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mib = env("BENCH_NET_MIB", 32);
    let runs = env("BENCH_RUNS", 3).max(1);
    let port = serve(mib << 20);
    let append = format!("console=ttyS0 panic=-1 hospes.net={port} hospes.netbench");
    let g = |f: &str| guest.join(f).display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut hospes_args = s(&["run", "-m", "256", "--display", "none", "--net", "user"]);
    hospes_args.extend(s(&[
        "--kernel",
        &g("vmlinuz"),
        "--initrd",
        &g("initrd.img"),
    ]));
    hospes_args.extend(s(&["--append", &append]));
    let mut qemu_args = s(&[
        "-accel",
        "tcg",
        "-m",
        "256",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-netdev",
        "user,id=n0",
        "-device",
        "ne2k_pci,netdev=n0",
    ]);
    qemu_args.extend(s(&["-kernel", &g("vmlinuz"), "-initrd", &g("initrd.img")]));
    qemu_args.extend(s(&["-append", &append]));
    let hospes = PathBuf::from(env!("CARGO_BIN_EXE_hospes"));
    let qemu = which("qemu-system-i386");
    if qemu.is_none() {
        println!("qemu-system-i386 is not installed: hospes only (bench/net-vs-qemu installs it)");
    }
    let (mut h, mut q) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        match measure(&hospes, &hospes_args) {
            Ok(d) => h.push(d),
            Err(e) => eprintln!("hospes: {e}"),
        }
        if let Some(qemu) = &qemu {
            match measure(qemu, &qemu_args) {
                Ok(d) => q.push(d),
                Err(e) => eprintln!("qemu: {e}"),
            }
        }
    }
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!("guest-to-host TCP through the NAT (ne2k-pci, wget of {mib} MiB, median of {runs}):");
    let middle = |v: Vec<Duration>| (!v.is_empty()).then(|| median(v));
    let (hm, qm) = (middle(h), middle(q));
    for (name, m) in [("hospes", hm), ("qemu tcg", qm)] {
        if let Some(d) = m {
            println!(
                "  {name:9} {:6.2} s  {:6.2} MiB/s",
                d.as_secs_f64(),
                rate(d)
            );
        }
    }
    if let (Some(hd), Some(qd)) = (hm, qm) {
        println!(
            "  throughput ratio hospes/qemu: {:.2}x",
            rate(hd) / rate(qd)
        );
    }
}
