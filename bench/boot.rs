//! Debian's Linux booted in hospes and in QEMU (`qemu-system-i386 -accel tcg`) on the
//! same files, alternating, several runs each; plus the guest's workload run natively.
//! Prints medians and ratios; asserts nothing about speed.
//!
//! Run with `bench/boot-vs-qemu` (installs QEMU from Debian and builds the guest images
//! first) or `cargo bench --bench boot`. Settings, from the environment:
//! - `BENCH_RUNS` (default 3): runs per emulator and boot way;
//! - `BENCH_BOOT` (default `kernel`): `kernel`, `cd`, `disk`, or `all`;
//! - `BENCH_HOSPES_ARGS`: extra arguments for `hospes run` (a tier, for example).
//!
//! Boot to shell is the time from start until the initramfs's /init prints
//! HOSPES-INIT-START; the workload is from there to HOSPES-INIT-DONE (a sha256 of 16 MiB
//! and an awk loop); total is until the process exits after the guest powers off. Peak
//! RSS is the process's VmHWM.

#[path = "common.rs"]
mod common;

use common::{median, which};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = "target/guest";
const APPEND: &str = "console=ttyS0 panic=-1";

#[derive(Clone, Copy, Default)]
struct Sample {
    boot: Duration,
    workload: Duration,
    total: Duration,
    peak_rss_kib: u64,
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs one boot, timing the markers on its stdout.
fn measure(program: &Path, args: &[String]) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // VmHWM is a high-water mark: polling it misses only growth in the last interval.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            if let Some(kib) = peak_rss_kib(pid) {
                peak = peak.max(kib);
            }
            if stop_rx.recv_timeout(Duration::from_millis(20)).is_ok() {
                return peak;
            }
        }
    });
    let (mut boot, mut done) = (None, None);
    let mut sha_ok = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains("HOSPES-INIT-START") {
            boot.get_or_insert(start.elapsed());
        }
        if line.contains(
            "HOSPES-SHA256 080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e",
        ) {
            sha_ok = true;
        }
        if line.contains("HOSPES-INIT-DONE") {
            done.get_or_insert(start.elapsed());
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let total = start.elapsed();
    let _ = stop_tx.send(());
    let peak_rss_kib = watcher.join().unwrap_or(0);
    let (Some(boot), Some(done)) = (boot, done) else {
        return Err(format!(
            "{} {args:?}: no HOSPES-INIT-START/DONE markers (exit {status})",
            program.display()
        ));
    };
    if !sha_ok || !status.success() {
        return Err(format!(
            "{} {args:?}: wrong hash or exit status {status}",
            program.display()
        ));
    }
    Ok(Sample {
        boot,
        workload: done - boot,
        total,
        peak_rss_kib,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The guest's workload run natively with the same busybox binary (i386, static).
fn native_workload(busybox: &Path, runs: usize) -> Option<Duration> {
    let script = "dd if=/dev/zero bs=1M count=16 2>/dev/null | $BB sha256sum >/dev/null; \
                  $BB awk 'BEGIN { s = 0; for (i = 0; i < 200000; i++) s += i % 7; print s }' >/dev/null";
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let ok = Command::new(busybox)
            .args(["sh", "-c", script])
            .env("BB", busybox)
            .env("PATH", "/usr/bin:/bin")
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        times.push(start.elapsed());
    }
    Some(median(times))
}

/// Extracts busybox from the cached Debian package.
fn busybox() -> Option<PathBuf> {
    let cache = Path::new(GUEST).join("cache");
    let deb = std::fs::read_dir(&cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("busybox-static"))?;
    let dir = std::env::temp_dir().join(format!("hospes-bench-busybox-{}", std::process::id()));
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()
        .ok()?
        .success();
    let bin = dir.join("bin/busybox");
    (ok && bin.exists()).then_some(bin)
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let ways: Vec<&str> = match std::env::var("BENCH_BOOT").as_deref() {
        Ok("all") => vec!["kernel", "cd", "disk"],
        Ok("cd") => vec!["cd"],
        Ok("disk") => vec!["disk"],
        _ => vec!["kernel"],
    };
    let extra: Vec<String> = std::env::var("BENCH_HOSPES_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let guest = Path::new(GUEST);
    for f in ["vmlinuz", "initrd.img", "linux.iso", "linux-disk.img"] {
        if !guest.join(f).exists() {
            eprintln!("bench boot: {GUEST}/{f} is missing; run scripts/guest-images first");
            std::process::exit(1);
        }
    }
    let qemu = which("qemu-system-i386");
    if qemu.is_none() {
        println!("qemu-system-i386 is not installed: hospes only (bench/boot-vs-qemu installs it)");
    }
    let hospes = PathBuf::from(env!("CARGO_BIN_EXE_hospes"));
    let g = |f: &str| guest.join(f).to_string_lossy().into_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    println!("{runs} run(s) each, alternating hospes and QEMU; boot = until /init starts");
    for way in ways {
        let media: Vec<String> = match way {
            "kernel" => s(&[
                "-kernel",
                &g("vmlinuz"),
                "-initrd",
                &g("initrd.img"),
                "-append",
                APPEND,
            ]),
            "cd" => s(&["-cdrom", &g("linux.iso"), "-boot", "d"]),
            _ => s(&["-hda", &g("linux-disk.img"), "-snapshot"]),
        };
        let mut hospes_args = s(&["run", "-m", "256", "--display", "none"]);
        hospes_args.extend(media.iter().cloned());
        hospes_args.extend(extra.iter().cloned());
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
        ]);
        qemu_args.extend(media.iter().cloned());
        let (mut h, mut q) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            match measure(&hospes, &hospes_args) {
                Ok(x) => h.push(x),
                Err(e) => {
                    eprintln!("bench boot: {e}");
                    std::process::exit(1);
                }
            }
            if let Some(qemu) = &qemu {
                match measure(qemu, &qemu_args) {
                    Ok(x) => q.push(x),
                    Err(e) => eprintln!("bench boot: {e}"),
                }
            }
        }
        report(way, &h, &q);
    }
    if let Some(bb) = busybox() {
        if let Some(native) = native_workload(&bb, runs.max(3)) {
            println!(
                "native workload (the same busybox on the host): {}",
                secs(native)
            );
        }
        let _ = std::fs::remove_dir_all(bb.parent().and_then(Path::parent).unwrap_or(&bb));
    }
}

fn report(way: &str, h: &[Sample], q: &[Sample]) {
    let col = |v: &[Sample], f: fn(&Sample) -> Duration| median(v.iter().map(f).collect());
    let rss = |v: &[Sample]| {
        let mut r: Vec<u64> = v.iter().map(|s| s.peak_rss_kib).collect();
        r.sort();
        r[r.len() / 2]
    };
    println!("\n== {way}");
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>14}",
        "", "boot", "workload", "total", "peak RSS"
    );
    for (name, v) in [("hospes", h), ("qemu tcg", q)] {
        if v.is_empty() {
            continue;
        }
        println!(
            "{name:<14} {:>12} {:>12} {:>12} {:>10} MiB",
            secs(col(v, |s| s.boot)),
            secs(col(v, |s| s.workload)),
            secs(col(v, |s| s.total)),
            rss(v) / 1024
        );
    }
    if !q.is_empty() {
        let ratio = |f: fn(&Sample) -> Duration| {
            col(h, f).as_secs_f64() / col(q, f).as_secs_f64().max(1e-9)
        };
        println!(
            "{:<14} {:>11.2}x {:>11.2}x {:>11.2}x {:>13.2}x",
            "hospes/qemu",
            ratio(|s| s.boot),
            ratio(|s| s.workload),
            ratio(|s| s.total),
            rss(h) as f64 / rss(q).max(1) as f64
        );
    }
}
