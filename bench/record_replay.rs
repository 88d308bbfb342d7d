//! What recording costs and how fast gdb goes backwards, on Debian's Linux booting and
//! running its workload to power-off (the images of `scripts/guest-images`):
//! - the run plain and with `--record`, alternating, `BENCH_RUNS` (default 3) each:
//!   median wall times, the overhead ratio, the recording's size; and the replay's time;
//! - through Debian's gdb on `hospes replay --gdb` of that recording: `continue` to the
//!   end, then reverse-stepi there (a few times), `reverse-continue` back to a
//!   breakpoint at the kernel's 32-bit entry (at the start of the recording), and
//!   reverse-stepi there: the latency of each, from gdb's side.
//!
//! Run with `bench/record-replay` (builds the images, installs gdb if missing) or
//! `cargo bench --bench record_replay`. Prints figures; asserts nothing about speed.

#[path = "common.rs"]
mod common;

use common::median;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = "target/guest";

fn hospes() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hospes"))
}

/// The boot as the tests run it, with `extra` arguments; its wall time.
fn boot(extra: &[&str]) -> Duration {
    let g = |f: &str| Path::new(GUEST).join(f);
    let start = Instant::now();
    let status = hospes()
        .args(["run", "-m", "256", "--display", "none", "--serial", "none"])
        .args(["--rtc-start", "1764028800", "--kernel"])
        .arg(g("vmlinuz"))
        .arg("--initrd")
        .arg(g("initrd.img"))
        .args(["--append", "console=ttyS0 panic=-1"])
        .args(extra)
        .stdin(Stdio::null())
        .status()
        .expect("run hospes");
    assert!(status.success(), "hospes run {extra:?}: {status:?}");
    start.elapsed()
}

/// Runs gdb's commands against a replay of `recording`; returns gdb's output.
fn gdb_session(recording: &Path, commands: &[&str]) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut replay = hospes()
        .args([
            "replay",
            "--serial",
            "none",
            "--gdb",
            &format!("tcp::{port}"),
        ])
        .arg(recording)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hospes replay");
    // Its first line says it listens.
    let mut stderr = std::io::BufReader::new(replay.stderr.take().expect("stderr"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).expect("hospes's first line");
    let mut gdb = Command::new("gdb");
    gdb.args([
        "-batch",
        "-nx",
        "-ex",
        "set pagination off",
        "-ex",
        "set confirm off",
    ])
    .args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in commands {
        gdb.args(["-ex", c]);
    }
    let out = gdb.output().expect("run gdb");
    let _ = replay.wait();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seconds between gdb's `shell date +%s.%N` marks, in order.
fn marks(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .filter(|&t| t > 1e9)
        .collect()
}

fn main() {
    for f in ["vmlinuz", "initrd.img"] {
        if !Path::new(GUEST).join(f).exists() {
            eprintln!(
                "bench record_replay: {GUEST}/{f} is missing; run scripts/guest-images first"
            );
            std::process::exit(1);
        }
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-record-replay");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let recording = dir.join("boot.hrec");
    let rec = recording.to_string_lossy().into_owned();
    let (mut plain, mut recorded) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        plain.push(boot(&[]));
        recorded.push(boot(&["--record", &rec]));
    }
    let mut replays = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let status = hospes()
            .args(["replay", "--serial", "none"])
            .arg(&recording)
            .stderr(Stdio::null())
            .status()
            .expect("run hospes replay");
        assert!(status.success(), "replay: {status:?}");
        replays.push(start.elapsed());
    }
    let (p, r, rp) = (median(plain), median(recorded), median(replays));
    let size = std::fs::metadata(&recording).map(|m| m.len()).unwrap_or(0);
    println!("{runs} run(s) each of the Linux boot + workload to power-off (--tier auto)");
    println!("plain run          {:>8.2} s", p.as_secs_f64());
    println!(
        "with --record      {:>8.2} s   overhead {:.2}x   recording {:.1} MiB",
        r.as_secs_f64(),
        r.as_secs_f64() / p.as_secs_f64(),
        size as f64 / (1 << 20) as f64
    );
    println!(
        "replay             {:>8.2} s   {:.2}x the plain run",
        rp.as_secs_f64(),
        rp.as_secs_f64() / p.as_secs_f64()
    );

    if Command::new("gdb").arg("--version").output().is_err() {
        println!(
            "gdb is not installed: no reverse-execution figures (bench/record-replay installs it)"
        );
        return;
    }
    let mark = "shell date +%s.%N";
    let mut commands = vec![mark, "continue", mark];
    for _ in 0..3 {
        commands.extend([mark, "reverse-stepi"]);
    }
    commands.extend([mark, "hbreak *0x100000", "reverse-continue", mark]);
    for _ in 0..3 {
        commands.extend(["reverse-stepi", mark]);
    }
    commands.push("kill");
    let out = gdb_session(&recording, &commands);
    let t = marks(&out);
    if t.len() != 10 {
        println!("gdb session did not go as planned:\n{out}");
        return;
    }
    let ms = |a: usize, b: usize| (t[b] - t[a]) * 1000.0;
    println!("gdb on the replay:");
    println!("continue to the end          {:>8.0} ms", ms(0, 1));
    let at_end: Vec<String> = (2..5).map(|i| format!("{:.0}", ms(i, i + 1))).collect();
    println!(
        "reverse-stepi at the end     {:>8} ms (each of 3)",
        at_end.join(" / ")
    );
    println!("reverse-continue to the start {:>7.0} ms", ms(5, 6));
    let at_start: Vec<String> = (6..9).map(|i| format!("{:.0}", ms(i, i + 1))).collect();
    println!(
        "reverse-stepi near the start {:>8} ms (each of 3)",
        at_start.join(" / ")
    );
}
