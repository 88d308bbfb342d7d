//! Record/replay and snapshots with Debian's Linux (the images of `scripts/guest-images`):
//! a boot with a line typed on the serial console is recorded and replayed bit for bit
//! with the interpreter and with the JIT; a snapshot taken in the middle of a boot
//! finishes it as the uninterrupted run does; a replay that goes another way is stopped
//! at the first digest that differs; a disk changed since a snapshot is refused.

use hospes_machine::replay::{Entry, Player, Recorder};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const RTC_START: &str = "1764028800";
const APPEND: &str = "console=ttyS0 panic=-1 quiet";

fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest")
}

/// The guest directory, or None (with one line saying so) when the set-up has not run.
fn images() -> Option<PathBuf> {
    let dir = guest_dir();
    if ["vmlinuz", "initrd.img", "linux-disk.img"]
        .iter()
        .all(|f| dir.join(f).is_file())
    {
        Some(dir)
    } else {
        eprintln!(
            "skipped: no guest images in {} (run scripts/guest-images)",
            dir.display()
        );
        None
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("record_replay");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir.join(name)
}

fn hospes() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hospes"))
}

/// `hospes run` of the direct kernel boot with `extra` arguments.
fn linux(dir: &Path, append: &str, extra: &[&str]) -> Command {
    let mut c = hospes();
    c.current_dir(dir)
        .args([
            "run",
            "-m",
            "256",
            "--display",
            "none",
            "--rtc-start",
            RTC_START,
        ])
        .args([
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.img",
            "--append",
            append,
        ])
        .args(extra);
    c
}

fn output(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run hospes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Records the boot, typing a line when /init asks for one; returns the serial output.
fn record_with_typing(dir: &Path, recording: &Path) -> Vec<u8> {
    let append = format!("{APPEND} hospes.ask");
    let mut child = linux(dir, &append, &["--record", recording.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hospes");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).expect("read output");
        seen.extend_from_slice(&line);
        if n == 0 {
            panic!("the guest never asked for input:\n{}", text(&seen));
        }
        if line.starts_with(b"HOSPES-ASK") {
            break;
        }
    }
    stdin
        .write_all(b"typed on the host\n")
        .expect("type a line");
    reader.read_to_end(&mut seen).expect("read output");
    let status = child.wait().expect("wait for hospes");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(status.success(), "recording run: {status:?}\n{stderr}");
    let out = text(&seen);
    assert!(out.contains("HOSPES-TYPED typed on the host"), "{out}");
    assert!(out.contains("HOSPES-INIT-DONE"), "{out}");
    seen
}

#[test]
fn a_recorded_boot_with_typed_input_replays_bit_exact_with_either_tier() {
    let Some(dir) = images() else { return };
    let recording = scratch("typed.hrec");
    let recorded = record_with_typing(&dir, &recording);
    // Both replays at once (one core each).
    let replays: Vec<_> = ["interp", "jit"]
        .iter()
        .map(|tier| {
            let mut c = hospes();
            c.args(["replay", "--tier", tier])
                .arg(&recording)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (*tier, c.spawn().expect("run hospes replay"))
        })
        .collect();
    for (tier, child) in replays {
        let out = child.wait_with_output().expect("wait for the replay");
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{tier}: {:?}\n{stderr}", out.status);
        assert!(stderr.contains("as recorded"), "{tier}: {stderr}");
        let inputs: u32 = field_before(&stderr, " inputs fed");
        let digests: u32 = field_before(&stderr, " digests identical");
        assert!(inputs >= 1, "{tier}: {stderr}");
        assert!(digests >= 20, "{tier}: {stderr}");
        assert!(
            out.stdout == recorded,
            "{tier}: the replay's serial output differs from the recorded run's:\n{}",
            text(&out.stdout)
        );
    }
}

/// The number just before `what` in `s`.
fn field_before<T: std::str::FromStr>(s: &str, what: &str) -> T {
    let end = s.find(what).unwrap_or_else(|| panic!("no '{what}' in {s}"));
    let start = s[..end].rfind(' ').map_or(0, |i| i + 1);
    s[start..end]
        .parse()
        .unwrap_or_else(|_| panic!("no number before '{what}' in {s}"))
}

#[test]
fn a_snapshot_taken_mid_boot_finishes_the_boot_as_the_uninterrupted_run() {
    let Some(dir) = images() else { return };
    let whole = output(&mut linux(&dir, APPEND, &[]));
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    let snap = scratch("mid-boot.snap");
    let first = output(&mut linux(
        &dir,
        APPEND,
        &[
            "--max-instructions",
            "1500000000",
            "--save-on-exit",
            snap.to_str().unwrap(),
        ],
    ));
    assert_eq!(first.status.code(), Some(3), "{}", text(&first.stderr));
    let rest = output(
        hospes()
            .args(["run", "--display", "none", "--restore"])
            .arg(&snap),
    );
    assert!(rest.status.success(), "{}", text(&rest.stderr));
    let joined = [first.stdout, rest.stdout].concat();
    assert!(
        joined == whole.stdout,
        "saved and restored:\n{}\nuninterrupted:\n{}",
        text(&joined),
        text(&whole.stdout)
    );
    assert!(text(&joined).contains("HOSPES-INIT-DONE"));
}

#[test]
fn a_replay_that_goes_another_way_stops_at_the_first_differing_digest() {
    let Some(dir) = images() else { return };
    let recording = scratch("short.hrec");
    let run = output(&mut linux(
        &dir,
        APPEND,
        &[
            "--max-instructions",
            "400000000",
            "--record",
            recording.to_str().unwrap(),
        ],
    ));
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));
    // The same recording with the third digest's EAX changed: to the replay, the run
    // went another way there.
    let tampered = scratch("tampered.hrec");
    let (start, mut player) = Player::open(&recording).expect("open the recording");
    let mut out = Recorder::create(&tampered, &start).expect("write a recording");
    let mut digests = 0;
    let mut changed_at = None;
    while let Some(entry) = player.next_entry() {
        match entry {
            Entry::End(at) => {
                out.finish(at).expect("finish");
                break;
            }
            Entry::Digest(at, mut d) => {
                digests += 1;
                if digests == 3 {
                    d.cpu.gpr[0] ^= 0x40;
                    changed_at = Some(at);
                }
                out.write(&Entry::Digest(at, d)).expect("write");
            }
            other => out.write(&other).expect("write"),
        }
    }
    let at = changed_at.expect("the short run has three digests");
    let good = output(
        hospes()
            .args(["replay", "--serial", "none"])
            .arg(&recording),
    );
    assert!(good.status.success(), "{}", text(&good.stderr));
    let bad = output(hospes().args(["replay", "--serial", "none"]).arg(&tampered));
    let stderr = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "replay diverged at instruction {at} (digest 3): eax recorded"
        )),
        "{stderr}"
    );
}

#[test]
fn a_snapshot_is_refused_when_its_disk_changed_since() {
    let Some(dir) = images() else { return };
    let disk = scratch("disk-copy.img");
    std::fs::copy(dir.join("linux-disk.img"), &disk).expect("copy the disk");
    let snap = scratch("disk.snap");
    let first = output(hospes().current_dir(&dir).args([
        "run",
        "-m",
        "64",
        "--display",
        "none",
        "--serial",
        "none",
        "--hda",
        disk.to_str().unwrap(),
        "--max-instructions",
        "20000000",
        "--save-on-exit",
        snap.to_str().unwrap(),
    ]));
    assert_eq!(first.status.code(), Some(3), "{}", text(&first.stderr));
    let restore = || {
        output(
            hospes()
                .args(["run", "--display", "none", "--serial", "none"])
                .args(["--max-instructions", "30000000", "--restore"])
                .arg(&snap),
        )
    };
    let again = restore();
    assert_eq!(again.status.code(), Some(3), "{}", text(&again.stderr));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open the copy");
    f.write_all(b"changed").expect("change the copy");
    drop(f);
    let refused = restore();
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("changed since the snapshot was taken"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// A recording that can no longer be written (here a pipe whose reader went away after
/// the recording's head) stops the run at once with the reason, in one line and a
/// non-zero exit: no input may happen unrecorded.
#[test]
fn a_recording_that_cannot_be_written_stops_the_run() {
    let fifo = scratch("recording.fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // A floppy that loops for ever.
    let floppy = scratch("loop.img");
    let mut sector = vec![0xEB, 0xFE]; // jmp $
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xAA]);
    sector.resize(1_474_560, 0);
    std::fs::write(&floppy, sector).unwrap();
    let child = hospes()
        .args(["run", "--display", "none", "--serial", "none", "--fda"])
        .arg(&floppy)
        .arg("--record")
        .arg(&fifo)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hospes");
    // Read the head (magic, version, the starting snapshot's length and bytes), then
    // go away: every entry after it meets a closed pipe.
    let mut reader = std::fs::File::open(&fifo).expect("open the pipe");
    let mut head = [0u8; 28];
    reader.read_exact(&mut head).expect("the recording's head");
    assert_eq!(&head[..16], b"HOSPES RECORDING");
    let len = u64::from_le_bytes(head[20..28].try_into().unwrap());
    std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink()).unwrap();
    drop(reader);
    let out = child.wait_with_output().expect("hospes ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // (Not "cannot write the recording PATH": that would be the start failing.)
    assert!(stderr.contains("cannot write the recording: "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&floppy);
}
