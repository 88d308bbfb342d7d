//! The NE2000 and the user-mode NAT with Debian's Linux: the guest's /init (from
//! `scripts/guest-images`) loads ne2k-pci, takes 10.0.2.15 by DHCP, pings 10.0.2.2,
//! fetches a file from an HTTP server on the host's loopback through the NAT, then
//! serves a file with busybox httpd that the host fetches through a hostfwd. The run
//! is recorded, and its replay (no network at all) prints the same. Two guests on a
//! UDP wire, one with the PCI card and one with the ISA card, ping each other.
//! Traffic stays on loopback.

mod guest;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hospes() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hospes"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("network")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `sha256sum`'s digest of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An HTTP/1.0 server on 127.0.0.1 answering every GET with `body`, in a thread.
fn serve(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP server");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

/// GET `path` from 127.0.0.1:`port`: the body.
fn get(port: u16, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the hostfwd");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n").expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    // A CGI's own header lines may end in a bare LF.
    let (split, gap) = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (at, 4),
        None => (
            response
                .windows(2)
                .position(|w| w == b"\n\n")
                .unwrap_or_else(|| {
                    panic!("no HTTP header in {:?}", String::from_utf8_lossy(&response))
                }),
            2,
        ),
    };
    assert!(response.starts_with(b"HTTP/1."), "{:?}", &response[..split]);
    response[split + gap..].to_vec()
}

fn line<'a>(output: &'a str, marker: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(marker))
        .unwrap_or_else(|| panic!("no {marker:?} line in:\n{output}"))
}

#[test]
fn linux_gets_an_address_pings_fetches_and_serves_through_the_nat() {
    let Some(dir) = guest::images() else { return };
    let work = scratch("nat");
    let file: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let http_port = serve(file.clone());
    let forward = free_port();
    let recording = work.join("net.rec");
    let capture = work.join("net.pcap");
    let t0 = Instant::now();
    let mut child = hospes()
        .current_dir(&dir)
        .args(["run", "-m", "256", "--display", "none"])
        .args(["--kernel", "vmlinuz", "--initrd", "initrd.img", "--append"])
        .arg(format!("console=ttyS0 hospes.net={http_port}"))
        .args(["--rtc-start", "1764028800", "--net"])
        .arg(format!("user,hostfwd=tcp:127.0.0.1:{forward}-:80"))
        .arg("--net")
        .arg(format!("pcap={}", capture.display()))
        .arg("--record")
        .arg(&recording)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hospes");
    let stdout = child.stdout.take().expect("stdout");
    let mut output = String::new();
    let mut served = None;
    let mut reader = BufReader::new(stdout);
    let mut l = String::new();
    while reader.read_line(&mut l).expect("read the serial output") > 0 {
        output.push_str(&l);
        let ready = l.trim_end() == "HOSPES-HTTPD-READY";
        l.clear();
        if ready {
            // The guest serves now: fetch its file through the forward, then tell it
            // to finish.
            served = Some(get(forward, "/served"));
            get(forward, "/cgi-bin/done");
        }
    }
    let status = child.wait().expect("wait for hospes");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    eprintln!("NAT run: {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(status.code(), Some(0), "{stderr}\n{output}");
    assert_eq!(line(&output, "HOSPES-NET-ADDR "), "10.0.2.15/24");
    let ping = line(&output, "HOSPES-PING ");
    assert!(
        ping.contains("3 packets transmitted, 3 packets received, 0% packet loss"),
        "{ping}"
    );
    assert!(
        line(&output, "HOSPES-WGET ").starts_with(&sha256(&file)),
        "the guest fetched something else"
    );
    let served = served.expect("the guest never said its httpd was ready");
    let expected: Vec<u8> = b"HOSPES-SERVED\n"
        .iter()
        .copied()
        .cycle()
        .take(262_144)
        .collect();
    assert!(
        served == expected,
        "the host fetched {} other bytes",
        served.len()
    );
    assert!(output.contains("HOSPES-NET-DONE"));

    // The capture: a pcap of Ethernet frames, the DHCP offer of 10.0.2.15 among them.
    let pcap = std::fs::read(&capture).expect("read the capture");
    assert_eq!(&pcap[..4], &0xa1b2_c3d4u32.to_le_bytes());
    assert!(
        pcap.windows(4).any(|w| w == [10, 0, 2, 15]) && pcap.len() > 1_000_000,
        "the capture holds {} bytes",
        pcap.len()
    );

    // The replay has no network: the frames come from the recording, and the guest
    // prints the same, byte for byte.
    let replay = hospes()
        .args(["replay", "--serial", "stdio"])
        .arg(&recording)
        .stdin(Stdio::null())
        .output()
        .expect("run the replay");
    let replay_err = String::from_utf8_lossy(&replay.stderr);
    assert_eq!(replay.status.code(), Some(0), "{replay_err}");
    assert!(
        replay_err.contains("as recorded"),
        "the replay did not end as recorded: {replay_err}"
    );
    let replayed = String::from_utf8_lossy(&replay.stdout);
    if replayed != output {
        std::fs::write(work.join("live.txt"), &output).expect("write");
        std::fs::write(work.join("replay.txt"), replayed.as_bytes()).expect("write");
        let at = output
            .lines()
            .zip(replayed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(output.lines().count().min(replayed.lines().count()));
        panic!(
            "the replay printed something else from line {} on (both in {})",
            at + 1,
            work.display()
        );
    }
}

/// Two guests on a UDP wire (`--net socket`), one with the RTL8029 on PCI and one with
/// an ISA NE2000 at 0x300, IRQ 5 (Linux's ne.ko), ping each other.
#[test]
fn two_guests_ping_each_other_over_a_socket_wire() {
    let Some(dir) = guest::images() else { return };
    let (a, b) = (free_port(), free_port());
    let run = |me: &str, peer: &str, local: u16, remote: u16, nic: &str| {
        hospes()
            .current_dir(&dir)
            .args(["run", "-m", "128", "--display", "none"])
            .args(["--kernel", "vmlinuz", "--initrd", "initrd.img", "--append"])
            .arg(format!("console=ttyS0 hospes.peer={me},{peer}"))
            .arg("--net")
            .arg(format!(
                "socket,udp=127.0.0.1:{remote},localaddr=127.0.0.1:{local}"
            ))
            .args(["--net", nic])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hospes")
    };
    let pci = run("10.0.3.1", "10.0.3.2", a, b, "nic,model=ne2k_pci");
    let isa = run(
        "10.0.3.2",
        "10.0.3.1,isa",
        b,
        a,
        "nic,model=ne2k_isa,iobase=0x300,irq=5,macaddr=52:54:00:12:34:57",
    );
    for (name, child) in [("PCI", pci), ("ISA", isa)] {
        let out = child.wait_with_output().expect("wait for hospes");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ping = line(&stdout, "HOSPES-PEER-PING ");
        assert!(
            ping.contains("3 packets received, 0% packet loss"),
            "{name}: {ping}"
        );
    }
}
