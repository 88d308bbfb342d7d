//! User-mode NAT ("slirp") network backend.
//!
//! The guest's Ethernet card sends its frames to [`Nat::guest_sent`]; the
//! frames [`Nat::poll`] returns go to the guest. The guest sees QEMU's
//! `-netdev user` LAN: itself at 10.0.2.15 (by DHCP), the gateway and host
//! at 10.0.2.2, a resolver at 10.0.2.3. Its TCP connections and UDP flows
//! end here and are re-made with ordinary host sockets; nothing needs
//! privileges.
//!
//! Layout: ARP, ICMP echo, DHCP and UDP are handled by hand on the parsed
//! frames (`frame`, `dhcp`); TCP is terminated in a smoltcp interface of the
//! IP medium that sees only the guest's TCP packets (so smoltcp never
//! answers ARP: with `any_ip` it would claim every address, the guest's own
//! included). ARP is answered for 10.0.2.2 and 10.0.2.3 only; echo requests
//! to them are answered here, echo to other addresses goes through an
//! unprivileged ICMP socket where the host allows those. UDP: one connected
//! host socket per (guest endpoint, destination), idle ones closed after
//! 240 s (those to the resolver after 10 s); replies too big for one frame
//! (UDP, and echo replies) are sent as IPv4 fragments. A host's port
//! unreachable (ECONNREFUSED on the flow's socket), and datagrams to ports
//! of 10.0.2.2/10.0.2.3 that nothing serves, get the guest an ICMP port
//! unreachable quoting its datagram (up to 548 bytes of it).
//!
//! The guest's fragmented UDP and ICMP datagrams are put back together
//! (`reassembly`: at most 16 under way, 30 s each, bounded and checked
//! against a hostile guest); its TCP fragments are dropped.
//!
//! Host forwards (`hostfwd=`): TCP ones accept host connections and connect
//! to the guest from 10.0.2.2 (below). UDP ones bind a host socket; each
//! host sender on it is given a port of 10.0.2.2 (from 49152 up), its
//! datagrams reach the guest from there, and what the guest sends back to
//! that port goes to the sender from the forward's socket. Senders idle
//! 240 s are forgotten. Only replies from the forward's guest port go
//! back that way (a guest that answers from another port, as TFTP does,
//! makes an ordinary flow to the host's loopback instead).
//!
//! Timeouts are measured on the NAT's clock (the host's monotonic clock;
//! tests move it on instead of sleeping). Besides those above: a TCP
//! connection that moves no data and gets no guest segment for 2 h 4 min
//! (RFC 5382's lower bound) is reset both ways, so forgotten connections
//! do not fill the table; a host connect that takes over 30 s is given up;
//! a connection the host closed is dropped 120 s later if the guest has
//! not closed its side; a guest that leaves data, a handshake or a FIN
//! unanswered 120 s loses the connection (smoltcp's timeout, which is off
//! while nothing is owed: a quiet guest is no dead one). The guest learns
//! of any of these only through the frames it is sent, which the machine
//! records.
//!
//! Not done: TCP fragments from the guest (dropped), ICMP errors other
//! than port unreachable (no time exceeded when a reassembly times out, no
//! host unreachable), IPv6.
//!
//! Accepting SYNs to any address: the interface has `any_ip` and a default
//! route through its own 10.0.2.2, so it takes packets for every unicast
//! address. A guest SYN for a new (source, destination) pair is not given
//! to it at once: the NAT first opens the host connection (a non-blocking
//! socket2 connect, checked at each poll with `take_error`/`peer_addr`; no
//! threads, no blocking). When that connect completes, a smoltcp socket is
//! made listening on exactly the destination the guest asked for, and the
//! held SYN goes in: the guest's handshake completes only once the host's
//! has. If the host refuses (or the connect times out, or the destination
//! is not allowed, or the flow table is full), the SYN goes in with no
//! socket for it, and smoltcp answers it with a RST.

mod config;
mod dhcp;
mod frame;
pub mod link;
mod reassembly;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, Icmpv4Packet, Icmpv4Repr,
    IpAddress, IpCidr, IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket,
    UdpRepr, DHCP_SERVER_PORT,
};

pub use config::{ForwardProto, HostForward, NatConfig};
use frame::Queues;
use reassembly::Reassembler;

/// The gateway, which is also the host (10.0.2.2).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The resolver (10.0.2.3).
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The address DHCP gives the guest.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// The MAC of 10.0.2.2 and 10.0.2.3.
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);

/// At most this many TCP connections (pending connects included).
pub const MAX_TCP_FLOWS: usize = 256;
/// At most this many UDP flows; the least recently used goes for a new one.
pub const MAX_UDP_FLOWS: usize = 256;
/// Each TCP connection's guest-side receive and send buffers.
const TCP_BUFFER: usize = 128 * 1024;
/// UDP flows (and UDP forward peers) idle this long are closed: slirp's
/// figure, and more than the 2 minutes RFC 4787 (REQ-5) asks of a NAT.
const UDP_IDLE: Duration = Duration::from_secs(240);
/// Flows to the resolver go sooner (one query, one answer), as in slirp.
const DNS_IDLE: Duration = Duration::from_secs(10);
/// An open TCP connection that moved no data either way this long is reset
/// (guest and host both get a RST), so that forgotten connections do not
/// fill the table. RFC 5382 (REQ-5) asks a NAT to wait at least 2 h 4 min;
/// guests that keep idle connections longer send keepalives.
const TCP_IDLE: Duration = Duration::from_secs(2 * 3600 + 4 * 60);
/// A host connect not done by then is given up (the guest gets a RST).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection whose host side has closed is dropped if the guest has not
/// closed its side this long after.
const FIN_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// A guest that leaves the NAT's data, handshake or FIN unanswered this
/// long loses the connection (smoltcp's timeout).
const GUEST_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(120);
/// Guest TCP packets waiting for smoltcp (between guest_sent and poll).
const MAX_RX_QUEUE: usize = 1024;
/// Frames for the guest waiting for poll.
const MAX_OUT_FRAMES: usize = 4096;
/// At most this many echo (ping) flows to outside addresses.
const MAX_PING_FLOWS: usize = 64;
/// Echo flows idle this long are closed.
const PING_IDLE: Duration = Duration::from_secs(10);
/// Host connections accepted by one forward in one poll.
const ACCEPTS_PER_POLL: usize = 16;
/// Datagrams read from one UDP flow in one poll.
const UDP_READS_PER_POLL: usize = 64;
/// How often to look at host sockets while some are open: there is no OS
/// readiness notification here, poll() just tries them all.
const HOST_IO_INTERVAL: Duration = Duration::from_millis(5);
/// Same, with only the forward listeners open.
const LISTEN_INTERVAL: Duration = Duration::from_millis(50);

/// Counts for tests and statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    pub tcp_flows: usize,
    pub udp_flows: usize,
    /// Host senders on UDP forwards the guest can answer.
    pub udp_forward_peers: usize,
    /// Fragmented guest datagrams not yet complete.
    pub reassemblies: usize,
    pub ping_flows: usize,
    /// smoltcp sockets: one per TCP flow past its host connect.
    pub tcp_sockets: usize,
}

/// (guest address, address the guest talks to).
type FlowKey = (SocketAddrV4, SocketAddrV4);

enum TcpFlow {
    /// The host connect is under way; the guest's SYN waits in `syn`.
    Connecting {
        stream: TcpStream,
        syn: Vec<u8>,
        since: Instant,
    },
    Open(OpenFlow),
}

struct OpenFlow {
    handle: SocketHandle,
    stream: TcpStream,
    /// When data last moved either way (for [`TCP_IDLE`]).
    last: Instant,
    /// The host closed its sending side (the guest was sent a FIN).
    host_eof: Option<Instant>,
    /// The guest's FIN was passed on to the host (shutdown(Write)).
    guest_eof: bool,
}

struct PingFlow {
    socket: socket2::Socket,
    last: Instant,
}

/// An unprivileged ICMP echo socket (Linux: needs the process's group in
/// net.ipv4.ping_group_range).
fn ping_socket() -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

struct UdpFlow {
    socket: UdpSocket,
    last: Instant,
    /// The start of the guest's latest datagram (IP header included): what
    /// an ICMP error about it quotes.
    quote: Vec<u8>,
}

/// A host socket bound for a UDP forward.
struct UdpForward {
    socket: UdpSocket,
    guest_port: u16,
}

/// A host sender on a UDP forward. The guest sees it as 10.0.2.2 at the
/// port it is keyed by in `Nat::forward_peers`.
struct ForwardPeer {
    /// Index into `Nat::udp_forwards`.
    forward: usize,
    peer: SocketAddr,
    last: Instant,
}

/// The user-mode NAT. See the module docs.
pub struct Nat {
    start: Instant,
    iface: Interface,
    queues: Queues,
    sockets: SocketSet<'static>,
    tcp: HashMap<FlowKey, TcpFlow>,
    udp: HashMap<FlowKey, UdpFlow>,
    /// Echo flows: (guest, destination, guest's ident).
    pings: HashMap<(Ipv4Addr, Ipv4Addr, u16), PingFlow>,
    listeners: Vec<(TcpListener, u16)>,
    udp_forwards: Vec<UdpForward>,
    /// UDP forward senders by the 10.0.2.2 port the guest sees them at.
    forward_peers: HashMap<u16, ForwardPeer>,
    /// The forwards' bound addresses, in the configuration's order.
    forward_addrs: Vec<SocketAddr>,
    dns: Option<SocketAddr>,
    host_loopback: Ipv4Addr,
    restrict: bool,
    guest_mac: Option<EthernetAddress>,
    out: Vec<Vec<u8>>,
    next_port: u16,
    next_udp_port: u16,
    deadline: Option<Instant>,
    udp_buf: Vec<u8>,
    /// IPv4 ident of the datagrams the NAT fragments.
    ip_ident: u16,
    /// The guest's fragmented datagrams under reassembly.
    fragments: Reassembler,
    /// Added to the host clock: tests move the NAT's time on with it
    /// instead of sleeping through its timeouts.
    clock_skew: Duration,
    /// Tests: where flows to outside addresses really go (loopback), so
    /// the path for arbitrary addresses is tested without sending anything
    /// off this machine.
    #[cfg(test)]
    redirect_outside: Option<Ipv4Addr>,
}

fn unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_broadcast() || ip.is_multicast() || ip.is_unspecified())
}

fn smol_time(start: Instant, now: Instant) -> SmolInstant {
    SmolInstant::from_micros(now.saturating_duration_since(start).as_micros() as i64)
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Starts a non-blocking connect to `target`.
fn start_connect(target: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || would_block(&e) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from(s);
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Where a started connect stands.
enum Connect {
    Pending,
    Done,
    Failed,
}

fn connect_state(stream: &TcpStream) -> Connect {
    match stream.take_error() {
        Ok(Some(_)) | Err(_) => return Connect::Failed,
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Connect::Done,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Connect::Pending,
        Err(_) => Connect::Failed,
    }
}

/// Drops a host stream with a RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

fn new_tcp_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s.set_timeout(Some(GUEST_TIMEOUT));
    s
}

impl Nat {
    /// Makes the NAT and binds the host forwards' listeners.
    pub fn new(config: NatConfig) -> Result<Nat, String> {
        let mut listeners = Vec::new();
        let mut udp_forwards = Vec::new();
        let mut forward_addrs = Vec::new();
        for f in &config.host_forwards {
            let what = match f.proto {
                ForwardProto::Tcp => "tcp",
                ForwardProto::Udp => "udp",
            };
            let err = |e: io::Error| {
                format!(
                    "{what} host forward {} -> guest port {}: {e}",
                    f.host, f.guest_port
                )
            };
            let addr = match f.proto {
                ForwardProto::Tcp => {
                    let l = TcpListener::bind(f.host).map_err(err)?;
                    l.set_nonblocking(true).map_err(err)?;
                    let addr = l.local_addr().map_err(err)?;
                    listeners.push((l, f.guest_port));
                    addr
                }
                ForwardProto::Udp => {
                    let socket = UdpSocket::bind(f.host).map_err(err)?;
                    socket.set_nonblocking(true).map_err(err)?;
                    let addr = socket.local_addr().map_err(err)?;
                    udp_forwards.push(UdpForward {
                        socket,
                        guest_port: f.guest_port,
                    });
                    addr
                }
            };
            forward_addrs.push(addr);
        }
        let start = Instant::now();
        let mut queues = Queues::new(Medium::Ip);
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
            ^ (std::process::id() as u64) << 32;
        let mut iface = Interface::new(cfg, &mut queues, smol_time(start, start));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), 24));
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(DNS_IP), 24));
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .map_err(|e| format!("NAT route: {e:?}"))?;
        iface.set_any_ip(true);
        Ok(Nat {
            start,
            iface,
            queues,
            sockets: SocketSet::new(Vec::new()),
            tcp: HashMap::new(),
            udp: HashMap::new(),
            pings: HashMap::new(),
            listeners,
            udp_forwards,
            forward_peers: HashMap::new(),
            forward_addrs,
            dns: config.dns.or_else(config::system_dns),
            host_loopback: config.host_loopback,
            restrict: config.restrict,
            guest_mac: None,
            out: Vec::new(),
            next_port: 49152,
            next_udp_port: 49152,
            deadline: None,
            udp_buf: vec![0; 65536],
            ip_ident: 0,
            fragments: Reassembler::default(),
            clock_skew: Duration::ZERO,
            #[cfg(test)]
            redirect_outside: None,
        })
    }

    /// The addresses the host forwards listen on, in the configuration's
    /// order (with the port the system picked where the forward asked for
    /// port 0).
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.forward_addrs.clone()
    }

    /// The NAT's clock: every timeout here is measured on it.
    fn now(&self) -> Instant {
        Instant::now() + self.clock_skew
    }

    fn smol_now(&self) -> SmolInstant {
        smol_time(self.start, self.now())
    }

    /// Tests: moves the NAT's clock on by `by`.
    #[cfg(test)]
    pub(crate) fn advance_clock(&mut self, by: Duration) {
        self.clock_skew += by;
    }

    pub fn stats(&self) -> NatStats {
        NatStats {
            tcp_flows: self.tcp.len(),
            udp_flows: self.udp.len(),
            udp_forward_peers: self.forward_peers.len(),
            reassemblies: self.fragments.len(),
            ping_flows: self.pings.len(),
            tcp_sockets: self.sockets.iter().count(),
        }
    }

    /// When [`Nat::poll`] should be called next at the latest.
    pub fn next_poll_in(&self) -> Option<Duration> {
        if !self.out.is_empty() || !self.queues.rx.is_empty() {
            return Some(Duration::ZERO);
        }
        self.deadline
            .map(|d| d.saturating_duration_since(self.now()))
    }

    fn push_out(&mut self, frame: Vec<u8>) {
        if self.out.len() < MAX_OUT_FRAMES {
            self.out.push(frame::pad(frame));
        }
    }

    fn guest_eth(&self) -> EthernetAddress {
        self.guest_mac.unwrap_or(EthernetAddress::BROADCAST)
    }

    /// A frame the guest transmitted.
    pub fn guest_sent(&mut self, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let src = eth.src_addr();
        if src.is_unicast() && src != GATEWAY_MAC {
            self.guest_mac = Some(src);
        }
        let dst = eth.dst_addr();
        if !(dst.is_broadcast() || dst == GATEWAY_MAC || dst.is_multicast()) {
            return;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                if let Some(reply) = frame::arp_reply(eth.payload(), GATEWAY_MAC, |ip| {
                    ip == GATEWAY_IP || ip == DNS_IP
                }) {
                    self.push_out(reply);
                }
            }
            EthernetProtocol::Ipv4 => self.ipv4_in(eth.payload()),
            _ => {}
        }
    }

    fn ipv4_in(&mut self, packet: &[u8]) {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        if ip.more_frags() || ip.frag_offset() != 0 {
            // UDP and ICMP are put back together; TCP segments are not
            // fragmented by guests that do path MTU discovery or heed the
            // MSS, so they are dropped.
            if ip.version() == 4
                && ip.verify_checksum()
                && matches!(ip.next_header(), IpProtocol::Udp | IpProtocol::Icmp)
            {
                let now = self.now();
                let total = usize::from(ip.total_len());
                if let Some(whole) = self.fragments.add(&packet[..total], now) {
                    self.ipv4_in(&whole);
                }
            }
            return;
        }
        let Ok(repr) = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()) else {
            return;
        };
        let total = ip.total_len() as usize;
        match repr.next_header {
            IpProtocol::Tcp => self.tcp_in(&repr, &packet[..total], ip.payload()),
            IpProtocol::Udp => self.udp_in(&repr, &packet[..total], ip.payload()),
            IpProtocol::Icmp => self.icmp_in(&repr, ip.payload()),
            _ => {}
        }
    }

    fn icmp_in(&mut self, ip: &Ipv4Repr, data: &[u8]) {
        if !unicast(ip.src_addr) {
            return;
        }
        let Ok(pkt) = Icmpv4Packet::new_checked(data) else {
            return;
        };
        let Ok(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default())
        else {
            return;
        };
        if ip.dst_addr == GATEWAY_IP || ip.dst_addr == DNS_IP {
            let reply = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            self.ip_ident = self.ip_ident.wrapping_add(1);
            let frames = frame::icmp_frames(
                GATEWAY_MAC,
                self.guest_eth(),
                ip.dst_addr,
                ip.src_addr,
                &reply,
                self.ip_ident,
            );
            for f in frames {
                self.push_out(f);
            }
            return;
        }
        // Elsewhere: through an unprivileged ICMP socket, where the host
        // allows them (net.ipv4.ping_group_range); else dropped.
        let Some(SocketAddr::V4(target)) = self.host_target(ip.dst_addr, 1) else {
            return;
        };
        let key = (ip.src_addr, ip.dst_addr, ident);
        let now = self.now();
        if !self.pings.contains_key(&key) {
            if self.pings.len() >= MAX_PING_FLOWS {
                if let Some(oldest) = self
                    .pings
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| *k)
                {
                    self.pings.remove(&oldest);
                }
            }
            let Ok(socket) = ping_socket() else {
                return;
            };
            self.pings.insert(key, PingFlow { socket, last: now });
        }
        if let Some(flow) = self.pings.get_mut(&key) {
            flow.last = now;
            // The kernel puts in its own ident and the checksum.
            let mut msg = vec![0; 8 + data.len()];
            msg[0] = 8;
            msg[6..8].copy_from_slice(&seq_no.to_be_bytes());
            msg[8..].copy_from_slice(data);
            let to = SocketAddr::new(IpAddr::V4(*target.ip()), 0);
            let _ = flow.socket.send_to(&msg, &to.into());
        }
    }

    fn poll_pings(&mut self, now: Instant) {
        let guest_eth = self.guest_eth();
        let mut frames = Vec::new();
        let buf = &mut self.udp_buf;
        let ip_ident = &mut self.ip_ident;
        let room = MAX_OUT_FRAMES.saturating_sub(self.out.len());
        self.pings.retain(|&(guest, remote, ident), flow| {
            for _ in 0..UDP_READS_PER_POLL {
                if frames.len() >= room {
                    break;
                }
                let n = match (&flow.socket).read(buf) {
                    Ok(n) => n,
                    Err(_) => break,
                };
                // An echo reply: type 0, then code, checksum, ident, seq.
                if n < 8 || buf[0] != 0 {
                    continue;
                }
                flow.last = now;
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no: u16::from_be_bytes([buf[6], buf[7]]),
                    data: &buf[8..n],
                };
                *ip_ident = ip_ident.wrapping_add(1);
                frames.extend(frame::icmp_frames(
                    GATEWAY_MAC,
                    guest_eth,
                    remote,
                    guest,
                    &reply,
                    *ip_ident,
                ));
            }
            now.saturating_duration_since(flow.last) < PING_IDLE
        });
        for f in frames {
            self.push_out(f);
        }
    }

    /// The host address for a guest destination, if the guest may reach it.
    fn host_target(&self, dst: Ipv4Addr, port: u16) -> Option<SocketAddr> {
        if port == 0 {
            return None;
        }
        if dst == GATEWAY_IP {
            return Some(SocketAddr::new(IpAddr::V4(self.host_loopback), port));
        }
        if dst == DNS_IP {
            return if port == 53 { self.dns } else { None };
        }
        let o = dst.octets();
        let on_lan = o[0] == 10 && o[1] == 0 && o[2] == 2;
        if self.restrict
            || on_lan
            || !unicast(dst)
            || dst.is_loopback()
            || dst.is_unspecified()
            || dst.is_broadcast()
            || o[0] == 0
        {
            return None;
        }
        #[cfg(test)]
        if let Some(r) = self.redirect_outside {
            return Some(SocketAddr::new(IpAddr::V4(r), port));
        }
        Some(SocketAddr::new(IpAddr::V4(dst), port))
    }

    /// ICMP port unreachable for the guest's datagram `packet` (its IP
    /// header and on), from the address it was sent to.
    fn port_unreachable(&mut self, packet: &[u8]) {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        let f = frame::icmp_unreachable(
            GATEWAY_MAC,
            self.guest_eth(),
            ip.dst_addr(),
            ip.src_addr(),
            frame::PORT_UNREACHABLE,
            packet,
        );
        self.push_out(f);
    }

    /// `packet` is the whole IP datagram, `data` its UDP part.
    fn udp_in(&mut self, ip: &Ipv4Repr, packet: &[u8], data: &[u8]) {
        let Ok(pkt) = UdpPacket::new_checked(data) else {
            return;
        };
        let Ok(udp) = UdpRepr::parse(
            &pkt,
            &ip.src_addr.into(),
            &ip.dst_addr.into(),
            &ChecksumCapabilities::default(),
        ) else {
            return;
        };
        if udp.dst_port == DHCP_SERVER_PORT
            && (ip.dst_addr == Ipv4Addr::BROADCAST || ip.dst_addr == GATEWAY_IP)
        {
            if let Some(f) = dhcp::answer(pkt.payload()) {
                self.push_out(f);
            }
            return;
        }
        if !unicast(ip.src_addr) || udp.src_port == 0 {
            return;
        }
        let now = self.now();
        if ip.dst_addr == GATEWAY_IP && ip.src_addr == GUEST_IP {
            // A reply to a sender on a UDP forward?
            if let Some(p) = self.forward_peers.get_mut(&udp.dst_port) {
                let forward = &self.udp_forwards[p.forward];
                if forward.guest_port == udp.src_port {
                    p.last = now;
                    let _ = forward.socket.send_to(pkt.payload(), p.peer);
                    return;
                }
            }
        }
        let Some(target) = self.host_target(ip.dst_addr, udp.dst_port) else {
            // Nothing listens there: say so, as a host would. (Other
            // addresses the guest may not reach stay silent.)
            if ip.dst_addr == GATEWAY_IP || ip.dst_addr == DNS_IP {
                self.port_unreachable(packet);
            }
            return;
        };
        let key = (
            SocketAddrV4::new(ip.src_addr, udp.src_port),
            SocketAddrV4::new(ip.dst_addr, udp.dst_port),
        );
        if !self.udp.contains_key(&key) {
            if self.udp.len() >= MAX_UDP_FLOWS {
                if let Some(oldest) = self.udp.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) {
                    self.udp.remove(&oldest);
                }
            }
            let Ok(socket) = udp_socket(target) else {
                return;
            };
            let flow = UdpFlow {
                socket,
                last: now,
                quote: Vec::new(),
            };
            self.udp.insert(key, flow);
        }
        let Some(flow) = self.udp.get_mut(&key) else {
            return;
        };
        flow.last = now;
        flow.quote.clear();
        flow.quote
            .extend_from_slice(&packet[..frame::quote_len(packet)]);
        if let Err(e) = flow.socket.send(pkt.payload()) {
            // An ICMP error for an earlier datagram of this flow is
            // reported here (and this one was not sent).
            if e.kind() == io::ErrorKind::ConnectionRefused {
                self.port_unreachable(packet);
            }
        }
    }

    fn tcp_in(&mut self, ip: &Ipv4Repr, packet: &[u8], data: &[u8]) {
        let Ok(seg) = TcpPacket::new_checked(data) else {
            return;
        };
        if !seg.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()) {
            return;
        }
        let key = (
            SocketAddrV4::new(ip.src_addr, seg.src_port()),
            SocketAddrV4::new(ip.dst_addr, seg.dst_port()),
        );
        let pure_syn = seg.syn() && !seg.ack() && !seg.rst() && !seg.fin();
        let now = self.now();
        match self.tcp.get_mut(&key) {
            Some(TcpFlow::Connecting { syn, .. }) => {
                // A repeated SYN: the latest one counts (the guest may
                // have started over with another sequence number).
                if pure_syn {
                    *syn = packet.to_vec();
                }
                return;
            }
            Some(TcpFlow::Open(flow)) => {
                // Any segment counts as activity, the guest's keepalives
                // included.
                flow.last = now;
                return self.give_smoltcp(packet.to_vec(), false);
            }
            None => {}
        }
        if pure_syn && unicast(ip.src_addr) && seg.src_port() != 0 && self.tcp.len() < MAX_TCP_FLOWS
        {
            if let Some(target) = self.host_target(ip.dst_addr, seg.dst_port()) {
                if let Ok(stream) = start_connect(target) {
                    self.tcp.insert(
                        key,
                        TcpFlow::Connecting {
                            stream,
                            syn: packet.to_vec(),
                            since: now,
                        },
                    );
                    return;
                }
            }
        }
        // No flow for it: smoltcp answers with a RST.
        self.give_smoltcp(packet.to_vec(), false)
    }

    fn give_smoltcp(&mut self, packet: Vec<u8>, front: bool) {
        if front {
            self.queues.rx.push_front(packet);
        } else if self.queues.rx.len() < MAX_RX_QUEUE {
            self.queues.rx.push_back(packet);
        }
    }

    fn free_port(&mut self) -> Option<u16> {
        for _ in 0..16384 {
            let p = self.next_port;
            self.next_port = if p == 65535 { 49152 } else { p + 1 };
            let taken = self
                .tcp
                .keys()
                .any(|(_, r)| *r.ip() == GATEWAY_IP && r.port() == p);
            if !taken {
                return Some(p);
            }
        }
        None
    }

    fn accept_forwards(&mut self, now: Instant) {
        for i in 0..self.listeners.len() {
            for _ in 0..ACCEPTS_PER_POLL {
                let (stream, guest_port) = match self.listeners[i].0.accept() {
                    Ok((s, _)) => (s, self.listeners[i].1),
                    Err(_) => break,
                };
                if self.tcp.len() >= MAX_TCP_FLOWS || stream.set_nonblocking(true).is_err() {
                    reset(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let Some(port) = self.free_port() else {
                    reset(stream);
                    continue;
                };
                let mut sock = new_tcp_socket();
                let remote = (IpAddress::Ipv4(GUEST_IP), guest_port);
                let local = IpListenEndpoint {
                    addr: Some(IpAddress::Ipv4(GATEWAY_IP)),
                    port,
                };
                if sock.connect(self.iface.context(), remote, local).is_err() {
                    reset(stream);
                    continue;
                }
                let handle = self.sockets.add(sock);
                self.tcp.insert(
                    (
                        SocketAddrV4::new(GUEST_IP, guest_port),
                        SocketAddrV4::new(GATEWAY_IP, port),
                    ),
                    TcpFlow::Open(OpenFlow {
                        handle,
                        stream,
                        last: now,
                        host_eof: None,
                        guest_eof: false,
                    }),
                );
            }
        }
    }

    /// Moves finished host connects on: a listening socket and the held
    /// SYN when connected; the bare SYN (so a RST) when not.
    fn check_connects(&mut self, now: Instant) {
        let keys: Vec<FlowKey> = self
            .tcp
            .iter()
            .filter(|(_, f)| matches!(f, TcpFlow::Connecting { .. }))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(TcpFlow::Connecting { stream, since, .. }) = self.tcp.get(&key) else {
                continue;
            };
            let state = match connect_state(stream) {
                Connect::Pending if now.saturating_duration_since(*since) > CONNECT_TIMEOUT => {
                    Connect::Failed
                }
                s => s,
            };
            match state {
                Connect::Pending => {}
                Connect::Failed => {
                    if let Some(TcpFlow::Connecting { syn, .. }) = self.tcp.remove(&key) {
                        self.give_smoltcp(syn, true);
                    }
                }
                Connect::Done => {
                    let Some(TcpFlow::Connecting { stream, syn, .. }) = self.tcp.remove(&key)
                    else {
                        continue;
                    };
                    let mut sock = new_tcp_socket();
                    let local = IpListenEndpoint {
                        addr: Some(IpAddress::Ipv4(*key.1.ip())),
                        port: key.1.port(),
                    };
                    if sock.listen(local).is_err() {
                        reset(stream);
                        self.give_smoltcp(syn, true);
                        continue;
                    }
                    let handle = self.sockets.add(sock);
                    // The SYN alone, at once: no other SYN to this endpoint
                    // may reach the listening socket before this one.
                    self.give_smoltcp(syn, true);
                    self.iface.poll_ingress_single(
                        self.smol_now(),
                        &mut self.queues,
                        &mut self.sockets,
                    );
                    if self.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
                        // smoltcp did not take the SYN.
                        self.sockets.remove(handle);
                        reset(stream);
                        continue;
                    }
                    self.tcp.insert(
                        key,
                        TcpFlow::Open(OpenFlow {
                            handle,
                            stream,
                            last: now,
                            host_eof: None,
                            guest_eof: false,
                        }),
                    );
                }
            }
        }
    }

    /// Copies bytes between the smoltcp sockets and the host streams, and
    /// retires finished connections.
    fn shuttle(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (key, flow) in self.tcp.iter_mut() {
            let TcpFlow::Open(flow) = flow else { continue };
            let sock = self.sockets.get_mut::<tcp::Socket>(flow.handle);
            if sock.state() == tcp::State::Listen {
                // Its SYN was not taken: nothing was established.
                done.push((*key, false));
                continue;
            }
            let mut broken = false;
            // Guest -> host (also what is left after the guest closed).
            while sock.can_recv() {
                let r = sock.recv(|buf| match flow.stream.write(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                });
                match r {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => {
                        flow.last = now;
                        // Half-closed but busy: restart the FIN-wait clock.
                        if flow.host_eof.is_some() {
                            flow.host_eof = Some(now);
                        }
                    }
                    Ok(Err(e)) if would_block(&e) => break,
                    Ok(Err(_)) => {
                        broken = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let state = sock.state();
            let guest_closed = match state {
                tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait => true,
                // After our FIN: closed by LAST-ACK (or a late RST).
                tcp::State::Closed => flow.host_eof.is_some(),
                _ => false,
            };
            if !flow.guest_eof && guest_closed && sock.recv_queue() == 0 {
                let _ = flow.stream.shutdown(Shutdown::Write);
                flow.guest_eof = true;
            }
            let stale = flow
                .host_eof
                .is_some_and(|t| now.saturating_duration_since(t) > FIN_WAIT_TIMEOUT);
            match state {
                tcp::State::Closed if broken || stale || sock.recv_queue() == 0 => {
                    done.push((*key, flow.host_eof.is_some() && flow.guest_eof));
                    continue;
                }
                tcp::State::TimeWait if broken || stale || sock.recv_queue() == 0 => {
                    done.push((*key, !broken));
                    continue;
                }
                tcp::State::Closed | tcp::State::TimeWait => continue,
                _ => {}
            }
            // Host -> guest.
            while !broken && flow.host_eof.is_none() && sock.can_send() {
                let r = sock.send(|buf| {
                    if buf.is_empty() {
                        return (0, Err(io::ErrorKind::WouldBlock.into()));
                    }
                    match flow.stream.read(buf) {
                        Ok(n) => (n, Ok(n)),
                        Err(e) => (0, Err(e)),
                    }
                });
                match r {
                    Ok(Ok(0)) => {
                        flow.host_eof = Some(now);
                        sock.close();
                    }
                    Ok(Ok(_)) => flow.last = now,
                    Ok(Err(e)) if would_block(&e) => break,
                    Ok(Err(_)) => broken = true,
                    Err(_) => break,
                }
            }
            if stale || now.saturating_duration_since(flow.last) > TCP_IDLE {
                broken = true;
            }
            // smoltcp's timeout also ends a connection whose guest has
            // merely been quiet that long, with nothing to send it: keep it
            // only while something waits for the guest (data, a handshake,
            // a FIN). Idle connections are TCP_IDLE's business.
            let idle_ok = matches!(
                sock.state(),
                tcp::State::Established | tcp::State::CloseWait
            ) && sock.send_queue() == 0;
            sock.set_timeout((!idle_ok).then_some(GUEST_TIMEOUT));
            if broken {
                // smoltcp sends the guest a RST at the next egress; the
                // flow goes at the next poll, when the state reads Closed.
                sock.abort();
            }
        }
        for (key, clean) in done {
            if let Some(TcpFlow::Open(flow)) = self.tcp.remove(&key) {
                self.sockets.remove(flow.handle);
                if !clean {
                    reset(flow.stream);
                }
            }
        }
    }

    fn poll_udp(&mut self, now: Instant) {
        let guest_eth = self.guest_eth();
        let mut frames = Vec::new();
        let ident = &mut self.ip_ident;
        // Read no more than the output queue takes: the rest waits in the
        // host sockets' buffers.
        let room = MAX_OUT_FRAMES.saturating_sub(self.out.len());
        self.udp.retain(|(guest, remote), flow| {
            for _ in 0..UDP_READS_PER_POLL {
                if frames.len() >= room {
                    break;
                }
                match flow.socket.recv(&mut self.udp_buf) {
                    Ok(n) => {
                        flow.last = now;
                        *ident = ident.wrapping_add(1);
                        frames.extend(frame::udp_frames(
                            GATEWAY_MAC,
                            guest_eth,
                            (*remote.ip(), remote.port()),
                            (*guest.ip(), guest.port()),
                            &self.udp_buf[..n],
                            *ident,
                        ));
                    }
                    Err(e) if would_block(&e) => break,
                    // The host's ICMP port unreachable for what this flow
                    // sent: the guest gets one about its latest datagram.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        if !flow.quote.is_empty() {
                            frames.push(frame::icmp_unreachable(
                                GATEWAY_MAC,
                                guest_eth,
                                *remote.ip(),
                                *guest.ip(),
                                frame::PORT_UNREACHABLE,
                                &flow.quote,
                            ));
                        }
                        break;
                    }
                    // Other ICMP errors show up here too.
                    Err(_) => break,
                }
            }
            let idle = if *remote.ip() == DNS_IP {
                DNS_IDLE
            } else {
                UDP_IDLE
            };
            now.saturating_duration_since(flow.last) < idle
        });
        for f in frames {
            self.push_out(f);
        }
    }

    /// Datagrams from the hosts' senders on the UDP forwards, to the guest.
    fn poll_udp_forwards(&mut self, now: Instant) {
        let guest_eth = self.guest_eth();
        for i in 0..self.udp_forwards.len() {
            for _ in 0..UDP_READS_PER_POLL {
                if self.out.len() >= MAX_OUT_FRAMES {
                    break;
                }
                let (n, peer) = match self.udp_forwards[i].socket.recv_from(&mut self.udp_buf) {
                    Ok(r) => r,
                    Err(e) if would_block(&e) => break,
                    // An ICMP error for a reply the guest sent: nothing to
                    // pass on (the sender is not a flow of the guest's).
                    Err(_) => continue,
                };
                let Some(port) = self.forward_peer_port(i, peer, now) else {
                    continue;
                };
                self.ip_ident = self.ip_ident.wrapping_add(1);
                let frames = frame::udp_frames(
                    GATEWAY_MAC,
                    guest_eth,
                    (GATEWAY_IP, port),
                    (GUEST_IP, self.udp_forwards[i].guest_port),
                    &self.udp_buf[..n],
                    self.ip_ident,
                );
                for f in frames {
                    self.push_out(f);
                }
            }
        }
        self.forward_peers
            .retain(|_, p| now.saturating_duration_since(p.last) < UDP_IDLE);
    }

    /// The 10.0.2.2 port that stands for `peer` on forward `forward`: the
    /// one it had, or a new one (the least recently used goes if the table
    /// is full).
    fn forward_peer_port(&mut self, forward: usize, peer: SocketAddr, now: Instant) -> Option<u16> {
        if let Some((&port, p)) = self
            .forward_peers
            .iter_mut()
            .find(|(_, p)| p.forward == forward && p.peer == peer)
        {
            p.last = now;
            return Some(port);
        }
        if self.forward_peers.len() >= MAX_UDP_FLOWS {
            let oldest = self
                .forward_peers
                .iter()
                .min_by_key(|(_, p)| p.last)
                .map(|(k, _)| *k)?;
            self.forward_peers.remove(&oldest);
        }
        // The ephemeral range has room for far more than MAX_UDP_FLOWS.
        let port = loop {
            let p = self.next_udp_port;
            self.next_udp_port = if p == 65535 { 49152 } else { p + 1 };
            if !self.forward_peers.contains_key(&p) {
                break p;
            }
        };
        self.forward_peers.insert(
            port,
            ForwardPeer {
                forward,
                peer,
                last: now,
            },
        );
        Some(port)
    }

    /// Does the host I/O (never blocking) and returns frames for the guest.
    pub fn poll(&mut self) -> Vec<Vec<u8>> {
        let now = self.now();
        let smol_now = smol_time(self.start, now);
        self.accept_forwards(now);
        self.check_connects(now);
        self.iface
            .poll(smol_now, &mut self.queues, &mut self.sockets);
        self.shuttle(now);
        self.iface
            .poll(smol_now, &mut self.queues, &mut self.sockets);
        self.poll_udp(now);
        self.poll_udp_forwards(now);
        self.poll_pings(now);
        self.fragments.expire(now);

        let guest_eth = self.guest_eth();
        let mut frames = std::mem::take(&mut self.out);
        frames.extend(self.queues.tx.drain(..).map(|p| {
            frame::pad(frame::eth_wrap(
                GATEWAY_MAC,
                guest_eth,
                EthernetProtocol::Ipv4,
                &p,
            ))
        }));

        // The next deadline: smoltcp's timers, the host sockets, UDP expiry.
        let smol = self
            .iface
            .poll_delay(smol_now, &self.sockets)
            .map(|d| now + Duration::from_micros(d.total_micros()));
        let host = if !self.tcp.is_empty()
            || !self.udp.is_empty()
            || !self.pings.is_empty()
            || !self.forward_peers.is_empty()
        {
            Some(now + HOST_IO_INTERVAL)
        } else if !self.listeners.is_empty() || !self.udp_forwards.is_empty() {
            Some(now + LISTEN_INTERVAL)
        } else {
            None
        };
        self.deadline = match (smol, host) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        frames
    }
}

fn udp_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(a) if a.ip().is_loopback() => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    s.set_nonblocking(true)?;
    Ok(s)
}
