//! Where the network card's frames go and come from: a backend (the user-mode NAT,
//! or a UDP socket to another hospes) and, if asked, a capture file.
//!
//! Frames from a backend are outside input: the machine takes them at its input point
//! and records them with the instruction count (see `replay`), so a replay needs no
//! backend at all.

use super::Nat;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

/// The longest Ethernet frame passed on (without CRC).
const MAX_FRAME: usize = 1518;
/// Frames taken from a socket per poll at most (the rest wait in the socket).
const MAX_FRAMES_PER_POLL: usize = 256;

/// A point-to-point link to another hospes: each UDP datagram is one frame (QEMU's
/// `-netdev socket,udp=...,localaddr=...`).
pub struct SocketLink {
    socket: UdpSocket,
    peer: SocketAddr,
}

impl SocketLink {
    pub fn new(local: SocketAddr, peer: SocketAddr) -> Result<SocketLink, String> {
        let socket = UdpSocket::bind(local).map_err(|e| format!("cannot bind UDP {local}: {e}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("UDP {local}: {e}"))?;
        Ok(SocketLink { socket, peer })
    }
}

/// What the card is connected to.
pub enum Backend {
    User(Box<Nat>),
    Socket(SocketLink),
}

/// A pcap capture (link type Ethernet), stamped with virtual time.
struct Pcap(BufWriter<File>);

impl Pcap {
    fn create(path: &Path) -> Result<Pcap, String> {
        let file = File::create(path)
            .map_err(|e| format!("cannot create the capture {}: {e}", path.display()))?;
        let mut out = BufWriter::new(file);
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // microsecond stamps
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes()); // GMT
        header.extend_from_slice(&0u32.to_le_bytes()); // accuracy
        header.extend_from_slice(&65_535u32.to_le_bytes()); // snap length
        header.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        out.write_all(&header)
            .map_err(|e| format!("cannot write the capture {}: {e}", path.display()))?;
        Ok(Pcap(out))
    }

    fn frame(&mut self, frame: &[u8], now_ns: u64) {
        let micros = now_ns / 1_000;
        let mut record = Vec::with_capacity(16 + frame.len());
        record.extend_from_slice(&((micros / 1_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&((micros % 1_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(frame);
        // A capture that cannot be written is not worth stopping the guest for.
        if let Err(e) = self.0.write_all(&record) {
            log::warn!("capture: {e}");
        }
    }
}

/// The card's connection to the outside.
#[derive(Default)]
pub struct NetLink {
    backend: Option<Backend>,
    pcap: Option<Pcap>,
}

impl NetLink {
    pub fn new(backend: Option<Backend>, capture: Option<&Path>) -> Result<NetLink, String> {
        Ok(NetLink {
            backend,
            pcap: capture.map(Pcap::create).transpose()?,
        })
    }

    /// Whether frames can come from outside (the run loop then paces idle time to the
    /// wall clock, so the guest does not race ahead of the host's answers).
    pub fn has_backend(&self) -> bool {
        self.backend.is_some()
    }

    /// A frame the guest sent.
    pub fn send(&mut self, frame: &[u8], now_ns: u64) {
        self.capture(frame, now_ns);
        match &mut self.backend {
            Some(Backend::User(nat)) => nat.guest_sent(frame),
            Some(Backend::Socket(link)) => {
                // UDP may drop, like a wire; a full socket buffer is a lost frame.
                let _ = link.socket.send_to(frame, link.peer);
            }
            None => {}
        }
    }

    /// Frames from outside for the guest, as many as are there now (never waits).
    pub fn receive(&mut self) -> Vec<Vec<u8>> {
        match &mut self.backend {
            Some(Backend::User(nat)) => nat.poll(),
            Some(Backend::Socket(link)) => {
                let mut frames = Vec::new();
                let mut buf = [0u8; 2048];
                while frames.len() < MAX_FRAMES_PER_POLL {
                    match link.socket.recv_from(&mut buf) {
                        Ok((n, from)) if from == link.peer && n <= MAX_FRAME => {
                            frames.push(buf[..n].to_vec())
                        }
                        Ok(_) => {} // not from the peer, or not a frame
                        Err(_) => break,
                    }
                }
                frames
            }
            None => Vec::new(),
        }
    }

    /// A frame given to the guest (it goes to the capture).
    pub fn capture(&mut self, frame: &[u8], now_ns: u64) {
        if let Some(p) = &mut self.pcap {
            p.frame(frame, now_ns);
        }
    }

    /// How long the backend may wait before it must be polled again.
    pub fn next_poll_in(&self) -> Option<Duration> {
        match &self.backend {
            Some(Backend::User(nat)) => nat.next_poll_in(),
            Some(Backend::Socket(_)) => Some(Duration::from_millis(1)),
            None => None,
        }
    }

    /// Writes out the capture.
    pub fn flush(&mut self) {
        if let Some(p) = &mut self.pcap {
            let _ = p.0.flush();
        }
    }
}
