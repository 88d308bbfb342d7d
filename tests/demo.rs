//! `hospes` with no arguments runs the built-in demo guest: check its whole serial output.

use std::process::Command;

#[test]
fn demo_guest_runs_to_completion() {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .output()
        .expect("run hospes");
    let stdout = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(
        out.status.success(),
        "exit status {:?}, stderr: {}\nstdout:\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = "\
hospes demo guest
  real mode: booted from hard disk 80h by the hospes BIOS
  CPUID vendor: GenuineIntel
  protected mode: 32-bit flat segments, CPL 0
  paging: on, 4 KiB pages + a 4 MiB page; alias 0x80003000 -> 0x00003000 ok
  primes below 100: 2 3 5 7 11 13 17 19 23 29 31 37 41 43 47 53 59 61 67 71 73 79 83 89 97
  TSS and IDT loaded; IRET to ring 3
  ring 3: hello from user mode, CPL=3, via INT 80h
  ring 0: caught #PF from ring 3, CR2=0x00003000 error code=0x00000007
demo finished: powering off
";
    assert_eq!(stdout, expected);
}

#[test]
fn unknown_flag_is_one_line_and_nonzero() {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .arg("--no-such-flag")
        .output()
        .expect("run hospes");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("hospes: "), "stderr: {stderr}");
}

#[test]
fn missing_suite_is_one_line_and_nonzero() {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["conformance", "--suite", "/nonexistent/suite"])
        .output()
        .expect("run hospes");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.contains("/nonexistent/suite"), "stderr: {stderr}");
}
