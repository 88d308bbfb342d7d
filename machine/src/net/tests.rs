//! The NAT driven by a second smoltcp interface playing the guest, over
//! loopback only.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Medium};
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
    IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};

use super::frame::{self, Queues};
use super::*;

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

struct Guest {
    start: Instant,
    iface: Interface,
    dev: Queues,
    sockets: SocketSet<'static>,
}

/// Appends everything the socket has received so far to `into`.
fn receive_all(s: &mut tcp::Socket, into: &mut Vec<u8>) {
    while s.can_recv() {
        s.recv(|b| {
            into.extend_from_slice(b);
            (b.len(), ())
        })
        .unwrap();
    }
}

impl Guest {
    /// A guest with no address (for DHCP) or 10.0.2.15/24 via 10.0.2.2.
    fn new(configured: bool) -> Guest {
        let start = Instant::now();
        let mut dev = Queues::new(Medium::Ethernet);
        let mut cfg = Config::new(HardwareAddress::Ethernet(GUEST_MAC));
        cfg.random_seed = 7;
        let mut iface = Interface::new(cfg, &mut dev, SmolInstant::from_millis(0));
        if configured {
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24)).unwrap();
            });
            iface
                .routes_mut()
                .add_default_ipv4_route(GATEWAY_IP)
                .unwrap();
        }
        Guest {
            start,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// One round: the guest's output to the NAT, the NAT's to the guest.
    fn step(&mut self, nat: &mut Nat) -> bool {
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let mut moved = false;
        for f in self.dev.tx.drain(..) {
            nat.guest_sent(&f);
            moved = true;
        }
        let frames = nat.poll();
        moved |= !frames.is_empty();
        self.dev.rx.extend(frames);
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        moved
    }

    /// Steps until `done` (panics after `secs`).
    fn run_until(&mut self, nat: &mut Nat, secs: u64, mut done: impl FnMut(&mut Guest) -> bool) {
        let limit = Instant::now() + Duration::from_secs(secs);
        loop {
            let moved = self.step(nat);
            if done(self) {
                return;
            }
            assert!(Instant::now() < limit, "timed out");
            if !moved {
                thread::sleep(Duration::from_micros(300));
            }
        }
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn connect(&mut self, h: SocketHandle, to: (Ipv4Addr, u16), local_port: u16) {
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, to, local_port)
            .unwrap();
    }

    fn new_tcp(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        self.sockets.add(s)
    }
}

fn test_nat() -> Nat {
    Nat::new(NatConfig {
        restrict: true,
        dns: Some("127.0.0.1:9".parse().unwrap()),
        ..NatConfig::default()
    })
    .unwrap()
}

/// Known bytes: a xorshift stream.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

// ---- frames by hand ----

fn parse_ipv4(f: &[u8]) -> Option<(EthernetAddress, Ipv4Repr, Vec<u8>)> {
    let eth = EthernetFrame::new_checked(f).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).ok()?;
    Some((eth.dst_addr(), repr, ip.payload().to_vec()))
}

fn dhcp_request_frame(
    msg: DhcpMessageType,
    broadcast: bool,
    requested: Option<Ipv4Address>,
    server: Option<Ipv4Address>,
) -> Vec<u8> {
    let params = [1u8, 3, 6, 12, 15, 28, 42];
    let repr = DhcpRepr {
        message_type: msg,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: GUEST_MAC,
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: Ipv4Address::UNSPECIFIED,
        server_ip: Ipv4Address::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast,
        requested_ip: requested,
        client_identifier: Some(GUEST_MAC),
        server_identifier: server,
        parameter_request_list: Some(&params),
        dns_servers: None,
        max_size: Some(576),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut buf = vec![0; repr.buffer_len().max(300)];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
        .unwrap();
    frame::udp_frame(
        GUEST_MAC,
        EthernetAddress::BROADCAST,
        Ipv4Address::UNSPECIFIED,
        68,
        Ipv4Address::BROADCAST,
        67,
        &buf,
    )
}

/// The single DHCP reply among `frames`: (eth dst, ip dst, message).
fn dhcp_reply(
    frames: &[Vec<u8>],
) -> (
    EthernetAddress,
    Ipv4Address,
    DhcpMessageType,
    Ipv4Address,
    Vec<u8>,
) {
    assert_eq!(frames.len(), 1, "one DHCP reply");
    let (eth_dst, ip, payload) = parse_ipv4(&frames[0]).unwrap();
    assert_eq!(ip.src_addr, GATEWAY_IP);
    let udp = UdpPacket::new_checked(&payload[..]).unwrap();
    UdpRepr::parse(
        &udp,
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        &ChecksumCapabilities::default(),
    )
    .expect("UDP checksum");
    assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
    let body = udp.payload().to_vec();
    let pkt = DhcpPacket::new_checked(&body[..]).unwrap();
    let repr = DhcpRepr::parse(&pkt).unwrap();
    assert_eq!(repr.transaction_id, 0x1234_5678);
    assert_eq!(repr.client_hardware_address, GUEST_MAC);
    (eth_dst, ip.dst_addr, repr.message_type, repr.your_ip, body)
}

#[test]
fn net_dhcp_smoltcp_client() {
    let mut nat = test_nat();
    let mut g = Guest::new(false);
    let h = g.sockets.add(dhcpv4::Socket::new());
    let mut got = None;
    g.run_until(&mut nat, 20, |g| {
        if let Some(dhcpv4::Event::Configured(c)) = g.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            got = Some((c.address, c.router, c.dns_servers.to_vec()));
            return true;
        }
        false
    });
    let (addr, router, dns) = got.unwrap();
    assert_eq!(addr, smoltcp::wire::Ipv4Cidr::new(GUEST_IP, 24));
    assert_eq!(router, Some(GATEWAY_IP));
    assert_eq!(dns, vec![DNS_IP]);
}

#[test]
fn net_dhcp_udhcpc_style() {
    for broadcast in [true, false] {
        let mut nat = test_nat();
        nat.guest_sent(&dhcp_request_frame(
            DhcpMessageType::Discover,
            broadcast,
            None,
            None,
        ));
        let (eth_dst, ip_dst, t, yiaddr, body) = dhcp_reply(&nat.poll());
        assert_eq!(t, DhcpMessageType::Offer);
        assert_eq!(yiaddr, GUEST_IP);
        if broadcast {
            assert_eq!(
                (eth_dst, ip_dst),
                (EthernetAddress::BROADCAST, Ipv4Address::BROADCAST)
            );
        } else {
            assert_eq!((eth_dst, ip_dst), (GUEST_MAC, GUEST_IP));
        }
        let pkt = DhcpPacket::new_checked(&body[..]).unwrap();
        let repr = DhcpRepr::parse(&pkt).unwrap();
        assert_eq!(repr.subnet_mask, Some(NETMASK));
        assert_eq!(repr.router, Some(GATEWAY_IP));
        assert_eq!(repr.server_identifier, Some(GATEWAY_IP));
        assert_eq!(repr.lease_duration, Some(86400));
        assert_eq!(repr.dns_servers.as_deref(), Some(&[DNS_IP][..]));

        nat.guest_sent(&dhcp_request_frame(
            DhcpMessageType::Request,
            broadcast,
            Some(GUEST_IP),
            Some(GATEWAY_IP),
        ));
        let (_, _, t, yiaddr, _) = dhcp_reply(&nat.poll());
        assert_eq!((t, yiaddr), (DhcpMessageType::Ack, GUEST_IP));

        // A request for another address is refused; one for another
        // server's offer is ignored.
        nat.guest_sent(&dhcp_request_frame(
            DhcpMessageType::Request,
            broadcast,
            Some(Ipv4Address::new(10, 0, 2, 99)),
            None,
        ));
        let (_, _, t, _, _) = dhcp_reply(&nat.poll());
        assert_eq!(t, DhcpMessageType::Nak);
        nat.guest_sent(&dhcp_request_frame(
            DhcpMessageType::Request,
            broadcast,
            Some(GUEST_IP),
            Some(Ipv4Address::new(10, 0, 2, 4)),
        ));
        assert!(nat.poll().is_empty());
    }
}

#[test]
fn net_arp_and_ping() {
    let mut nat = test_nat();
    for target in [GATEWAY_IP, DNS_IP] {
        nat.guest_sent(&frame::arp_request(GUEST_MAC, GUEST_IP, target));
        let out = nat.poll();
        assert_eq!(out.len(), 1);
        let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
        assert_eq!(eth.dst_addr(), GUEST_MAC);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: GATEWAY_MAC,
                source_protocol_addr: target,
                target_hardware_addr: GUEST_MAC,
                target_protocol_addr: GUEST_IP,
            }
        );
    }
    // Not ours: no answer (not even for the guest's own address).
    for other in [
        GUEST_IP,
        Ipv4Addr::new(10, 0, 2, 77),
        Ipv4Addr::new(8, 8, 8, 8),
    ] {
        nat.guest_sent(&frame::arp_request(GUEST_MAC, Ipv4Addr::UNSPECIFIED, other));
        nat.guest_sent(&frame::arp_request(GUEST_MAC, GUEST_IP, other));
        assert!(nat.poll().is_empty());
    }

    let mut answered = 0;
    for seq in 0..3u16 {
        let data = pattern(56, seq as u64 + 1);
        let req = Icmpv4Repr::EchoRequest {
            ident: 0x4242,
            seq_no: seq,
            data: &data,
        };
        nat.guest_sent(&frame::icmp_frame(
            GUEST_MAC,
            GATEWAY_MAC,
            GUEST_IP,
            GATEWAY_IP,
            &req,
        ));
        for f in nat.poll() {
            let (dst, ip, payload) = parse_ipv4(&f).unwrap();
            assert_eq!(dst, GUEST_MAC);
            assert_eq!((ip.src_addr, ip.dst_addr), (GATEWAY_IP, GUEST_IP));
            let pkt = Icmpv4Packet::new_checked(&payload[..]).unwrap();
            let repr = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()).unwrap();
            assert_eq!(
                repr,
                Icmpv4Repr::EchoReply {
                    ident: 0x4242,
                    seq_no: seq,
                    data: &data
                }
            );
            answered += 1;
        }
    }
    assert_eq!(answered, 3);
}

/// A loopback listener serving `data` to its one client, then closing.
fn serve_once(data: Vec<u8>) -> (u16, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(&data).unwrap();
    });
    (port, t)
}

#[test]
fn net_tcp_download() {
    let data = pattern(1 << 20, 11);
    let want = fnv(&data);
    let (port, server) = serve_once(data);
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.connect(h, (GATEWAY_IP, port), 49500);
    let mut got = Vec::new();
    g.run_until(&mut nat, 60, |g| {
        let s = g.tcp(h);
        receive_all(s, &mut got);
        if !s.may_recv() && s.state() != tcp::State::SynSent {
            s.close();
            return true;
        }
        false
    });
    server.join().unwrap();
    assert_eq!(got.len(), 1 << 20);
    assert_eq!(fnv(&got), want);
    // The connection winds down and the NAT forgets it.
    g.run_until(&mut nat, 10, |_| true);
    let mut n = 0;
    g.run_until(&mut nat, 10, |_| {
        n += 1;
        n > 50
    });
    assert_eq!(nat.stats().tcp_flows, 0);
    assert_eq!(nat.stats().tcp_sockets, 0);
}

#[test]
fn net_tcp_upload() {
    let data = pattern(1 << 20, 12);
    let want = fnv(&data);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"thanks").unwrap();
        got
    });
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.connect(h, (GATEWAY_IP, port), 49501);
    let mut sent = 0;
    let mut reply = Vec::new();
    g.run_until(&mut nat, 60, |g| {
        let s = g.tcp(h);
        if sent < data.len() && s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap();
            if sent == data.len() {
                s.close(); // half-close: the server's read_to_end ends
            }
        }
        receive_all(s, &mut reply);
        sent == data.len() && !s.may_recv() && s.state() != tcp::State::SynSent
    });
    let got = server.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(fnv(&got), want);
    assert_eq!(reply, b"thanks");
}

#[test]
fn net_tcp_refused_gets_reset() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.connect(h, (GATEWAY_IP, port), 49502);
    g.run_until(&mut nat, 10, |g| g.tcp(h).state() == tcp::State::Closed);
    // Also refused without a host connect: a destination the restricted
    // NAT does not reach, and a port on 10.0.2.3 that is not DNS.
    for (ip, p) in [(Ipv4Addr::new(192, 0, 2, 1), 80), (DNS_IP, 80)] {
        let h = g.new_tcp();
        g.connect(h, (ip, p), 49503);
        g.run_until(&mut nat, 10, |g| g.tcp(h).state() == tcp::State::Closed);
    }
    assert_eq!(nat.stats().tcp_flows, 0);
}

#[test]
fn net_tcp_host_closes_with_reset() {
    // The host server resets the connection: the guest sees the reset.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        thread::sleep(Duration::from_millis(100));
    });
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.connect(h, (GATEWAY_IP, port), 49504);
    g.run_until(&mut nat, 10, |g| {
        g.tcp(h).state() == tcp::State::Established
    });
    server.join().unwrap();
    g.run_until(&mut nat, 10, |g| g.tcp(h).state() == tcp::State::Closed);
}

#[test]
fn net_udp_echo() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let mut buf = [0; 2048];
        for _ in 0..3 {
            let (n, from) = echo.recv_from(&mut buf).unwrap();
            echo.send_to(&buf[..n], from).unwrap();
        }
    });
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let s = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    );
    let h = g.sockets.add(s);
    g.sockets.get_mut::<udp::Socket>(h).bind(40000).unwrap();
    for i in 0..3u64 {
        let msg = pattern(100 + 300 * i as usize, i + 5);
        g.sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(&msg, (GATEWAY_IP, port))
            .unwrap();
        let mut reply = None;
        g.run_until(&mut nat, 10, |g| {
            if let Ok((data, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
                reply = Some((data.to_vec(), meta.endpoint));
                return true;
            }
            false
        });
        let (data, from) = reply.unwrap();
        assert_eq!(data, msg);
        assert_eq!(from.addr, IpAddress::Ipv4(GATEWAY_IP));
        assert_eq!(from.port, port);
    }
    server.join().unwrap();
    assert_eq!(nat.stats().udp_flows, 1);
}

#[test]
fn net_host_forward() {
    let data = pattern(300_000, 13);
    let want = data.clone();
    let mut nat = Nat::new(NatConfig {
        host_forwards: vec![HostForward::parse("tcp:127.0.0.1:0-:80").unwrap()],
        restrict: true,
        ..NatConfig::default()
    })
    .unwrap();
    let addr = nat.forward_addrs()[0];
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
    // A second NAT cannot take the same port.
    let taken = format!("tcp::{}-:80", addr.port());
    assert!(Nat::new(NatConfig {
        host_forwards: vec![HostForward::parse(&taken).unwrap()],
        ..NatConfig::default()
    })
    .is_err());

    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.tcp(h).listen(80).unwrap();
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut sent = 0;
    let mut request = Vec::new();
    g.run_until(&mut nat, 60, |g| {
        let s = g.tcp(h);
        receive_all(s, &mut request);
        if s.can_send() && sent < data.len() {
            sent += s.send_slice(&data[sent..]).unwrap();
            if sent == data.len() {
                s.close();
            }
        }
        client.is_finished()
    });
    assert_eq!(request, b"GET /");
    let got = client.join().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want);
}

#[test]
fn net_host_forward_refused_by_guest() {
    let mut nat = Nat::new(NatConfig {
        host_forwards: vec![HostForward::parse("tcp::0-:81").unwrap()],
        restrict: true,
        ..NatConfig::default()
    })
    .unwrap();
    let addr = nat.forward_addrs()[0];
    let mut g = Guest::new(true); // nothing listens on 81
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
    });
    g.run_until(&mut nat, 20, |_| client.is_finished());
    assert!(
        client.join().unwrap().is_err(),
        "the host client sees a reset"
    );
}

#[test]
fn net_hostforward_parse() {
    let p = |s: &str| HostForward::parse(s);
    let hf = |a: &str, g| HostForward {
        proto: ForwardProto::Tcp,
        host: a.parse::<SocketAddr>().unwrap(),
        guest_port: g,
    };
    let udp = |a: &str, g| HostForward {
        proto: ForwardProto::Udp,
        ..hf(a, g)
    };
    assert_eq!(p("tcp:127.0.0.1:8080-:80"), Ok(hf("127.0.0.1:8080", 80)));
    assert_eq!(p("tcp::8080-:80"), Ok(hf("127.0.0.1:8080", 80)));
    assert_eq!(p("::2222-:22"), Ok(hf("127.0.0.1:2222", 22)));
    assert_eq!(
        p("tcp:0.0.0.0:2222-10.0.2.15:22"),
        Ok(hf("0.0.0.0:2222", 22))
    );
    assert_eq!(p("tcp:localhost:0-:22"), Ok(hf("127.0.0.1:0", 22)));
    assert_eq!(p("udp::5353-:53"), Ok(udp("127.0.0.1:5353", 53)));
    assert_eq!(
        p("udp:0.0.0.0:6000-10.0.2.15:6001"),
        Ok(udp("0.0.0.0:6000", 6001))
    );
    assert_eq!(p("udp:[::1]:69-:69"), Ok(udp("[::1]:69", 69)));
    for bad in [
        "",
        "tcp",
        "udp",
        "udp::53",
        "udp::53-:0",
        "udp::x-:53",
        "udp:1.2.3:53-:53",
        "udp::53-10.0.2.2:53",
        "UDP::53-:53",
        "sctp::1-:1",
        "tcp::8080",
        ":2222-:22",
        "tcp::8080-80",
        "tcp::x-:80",
        "tcp::70000-:80",
        "tcp::8080-:0",
        "tcp::8080-:",
        "tcp:999.1.1.1:8080-:80",
        "tcp::8080-10.0.2.16:80",
    ] {
        let e = p(bad).expect_err(bad);
        assert!(!e.contains('\n') && e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn net_resolv_conf() {
    use super::config::first_nameserver;
    let t = "# x\nsearch lan\nnameserver 192.168.1.1\nnameserver 8.8.8.8\n";
    assert_eq!(first_nameserver(t), Some("192.168.1.1:53".parse().unwrap()));
    assert_eq!(
        first_nameserver("nameserver fe80::1%eth0\n"),
        Some("[fe80::1]:53".parse().unwrap())
    );
    assert_eq!(first_nameserver("options ndots:1\n"), None);
}

// ---- hostile input ----

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn tcp_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    control: TcpControl,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: src.1,
        dst_port: dst.1,
        control,
        seq_number: TcpSeqNumber(1000),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 8192,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    frame::ip_frame(
        GUEST_MAC,
        GATEWAY_MAC,
        src.0,
        dst.0,
        IpProtocol::Tcp,
        repr.buffer_len(),
        |b| {
            repr.emit(
                &mut TcpPacket::new_unchecked(b),
                &src.0.into(),
                &dst.0.into(),
                &ChecksumCapabilities::default(),
            )
        },
    )
}

/// Recomputes the IPv4 header checksum and, for TCP/UDP/ICMP, the payload's.
fn fix_checksums(f: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(&mut f[..]) else {
        return;
    };
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
    let payload = ip.payload_mut();
    match proto {
        IpProtocol::Tcp => {
            if let Ok(mut p) = TcpPacket::new_checked(payload) {
                p.fill_checksum(&src.into(), &dst.into());
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut p) = UdpPacket::new_checked(payload) {
                p.fill_checksum(&src.into(), &dst.into());
            }
        }
        IpProtocol::Icmp => {
            if let Ok(mut p) = Icmpv4Packet::new_checked(payload) {
                p.fill_checksum();
            }
        }
        _ => {}
    }
}

#[test]
fn net_hostile_frames() {
    // Host ends the SYNs and datagrams may reach: a listener that never
    // accepts (the kernel completes handshakes into its backlog) and a sink.
    let host = Ipv4Addr::new(127, 0, 0, 2);
    let listener = TcpListener::bind((host, 0)).unwrap();
    let lport = listener.local_addr().unwrap().port();
    let sink = UdpSocket::bind((host, 0)).unwrap();
    let uport = sink.local_addr().unwrap().port();
    let closed = {
        let l = TcpListener::bind((host, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let mut nat = Nat::new(NatConfig {
        restrict: true,
        // 10.0.2.2 is 127.0.0.2 here: random ports hit nothing of the
        // other tests (on 127.0.0.1), only what listens on all addresses.
        host_loopback: host,
        dns: Some(SocketAddr::from((host, uport))),
        ..NatConfig::default()
    })
    .unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let ports = [lport, uport, closed, 53, 67];
    let mut max_frames = 0;
    let (mut max_tcp, mut max_udp) = (0, 0);
    for i in 0..20_000u32 {
        let sport = 1024 + (i % 60000) as u16;
        let dst_ip = match rng.below(4) {
            0 => GATEWAY_IP,
            1 => DNS_IP,
            2 => Ipv4Addr::new(10, 0, 2, rng.below(256) as u8),
            _ => Ipv4Addr::from(rng.next() as u32),
        };
        let dport = ports[rng.below(ports.len())];
        let payload = pattern(rng.below(64), i as u64 + 1);
        let mut f = match rng.below(9) {
            0 => frame::arp_request(GUEST_MAC, GUEST_IP, dst_ip),
            1 => {
                let req = Icmpv4Repr::EchoRequest {
                    ident: 1,
                    seq_no: i as u16,
                    data: &payload,
                };
                frame::icmp_frame(GUEST_MAC, GATEWAY_MAC, GUEST_IP, dst_ip, &req)
            }
            2 => frame::udp_frame(
                GUEST_MAC,
                GATEWAY_MAC,
                GUEST_IP,
                sport,
                GATEWAY_IP,
                uport,
                &payload,
            ),
            8 => frame::udp_frame(
                GUEST_MAC,
                GATEWAY_MAC,
                GUEST_IP,
                sport,
                dst_ip,
                dport,
                &payload,
            ),
            3 => dhcp_request_frame(DhcpMessageType::Discover, i % 2 == 0, None, None),
            // SYN flood to the listener from ever new ports.
            4 | 5 => tcp_frame(
                (GUEST_IP, sport),
                (GATEWAY_IP, lport),
                TcpControl::Syn,
                None,
                &[],
            ),
            6 => tcp_frame(
                (GUEST_IP, sport),
                (dst_ip, dport),
                TcpControl::None,
                Some(rng.next() as u32),
                &payload,
            ),
            _ => tcp_frame(
                (GUEST_IP, sport),
                (dst_ip, dport),
                TcpControl::Fin,
                Some(1),
                &payload,
            ),
        };
        // Mutations: none, bytes, truncation, IP header fields, options.
        match rng.below(6) {
            0 => {}
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(f.len());
                    f[at] = rng.next() as u8;
                }
            }
            2 => f.truncate(rng.below(f.len() + 1)),
            3 if f.len() > 34 => {
                // Total length / header length / fragment fields.
                let at = 14 + [0, 2, 3, 6, 7, 9][rng.below(6)];
                f[at] = rng.next() as u8;
            }
            4 if f.len() > 34 => {
                // Bogus IP options: claim up to 60 header bytes.
                let words = 6 + rng.below(10);
                f[14] = 0x40 | words as u8;
                for b in f.iter_mut().skip(34).take((words - 5) * 4) {
                    *b = 0x44;
                }
            }
            _ => {
                let at = rng.below(f.len());
                f[at] ^= 1 << rng.below(8);
            }
        }
        // Mostly with valid checksums, to get past the first checks.
        if rng.below(4) != 0 {
            fix_checksums(&mut f);
        }
        nat.guest_sent(&f);
        if i % 8 == 0 {
            let out = nat.poll();
            max_frames = max_frames.max(out.len());
            let st = nat.stats();
            assert!(st.tcp_flows <= MAX_TCP_FLOWS, "{st:?}");
            assert!(st.udp_flows <= MAX_UDP_FLOWS, "{st:?}");
            assert!(st.tcp_sockets <= st.tcp_flows, "{st:?}");
            max_tcp = max_tcp.max(st.tcp_flows);
            max_udp = max_udp.max(st.udp_flows);
        }
    }
    for _ in 0..20 {
        nat.poll();
        thread::sleep(Duration::from_millis(5));
    }
    let st = nat.stats();
    assert!(
        st.tcp_flows <= MAX_TCP_FLOWS && st.udp_flows <= MAX_UDP_FLOWS,
        "{st:?}"
    );
    eprintln!(
        "hostile: {st:?}, max tcp {max_tcp}, max udp {max_udp}, max frames/poll {max_frames}"
    );
    assert_eq!(max_tcp, MAX_TCP_FLOWS, "the SYN flood filled the TCP table");
    assert_eq!(max_udp, MAX_UDP_FLOWS, "the UDP flows filled their table");
    assert!(max_frames <= super::MAX_OUT_FRAMES + 4096);
    drop(listener);
}

#[test]
fn net_dns_forward_with_fragmented_reply() {
    // The "resolver" answers every query with 4000 known bytes: more than
    // one frame holds, so the NAT sends IPv4 fragments.
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_addr = dns.local_addr().unwrap();
    let big = pattern(4000, 77);
    let answer = big.clone();
    let server = thread::spawn(move || {
        let mut buf = [0; 512];
        let (n, from) = dns.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"query");
        dns.send_to(&answer, from).unwrap();
    });
    let mut nat = Nat::new(NatConfig {
        dns: Some(dns_addr),
        restrict: true,
        ..NatConfig::default()
    })
    .unwrap();
    nat.guest_sent(&frame::udp_frame(
        GUEST_MAC,
        GATEWAY_MAC,
        GUEST_IP,
        5353,
        DNS_IP,
        53,
        b"query",
    ));
    assert_eq!(nat.stats().udp_flows, 1);
    server.join().unwrap();
    let limit = Instant::now() + Duration::from_secs(5);
    let mut frags = Vec::new();
    while frags.len() < 3 {
        assert!(Instant::now() < limit, "no reply");
        for f in nat.poll() {
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            assert_eq!(eth.dst_addr(), GUEST_MAC);
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!((ip.src_addr(), ip.dst_addr()), (DNS_IP, GUEST_IP));
            assert!(f.len() <= 1514);
            frags.push((
                ip.frag_offset() as usize,
                ip.more_frags(),
                ip.payload().to_vec(),
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(frags.len(), 3);
    let mut dgram = Vec::new();
    for (i, (off, more, data)) in frags.iter().enumerate() {
        assert_eq!(*off, dgram.len());
        assert_eq!(*more, i < 2);
        dgram.extend_from_slice(data);
    }
    let udp = UdpPacket::new_checked(&dgram[..]).unwrap();
    assert!(udp.verify_checksum(&DNS_IP.into(), &GUEST_IP.into()));
    assert_eq!((udp.src_port(), udp.dst_port()), (53, 5353));
    assert!(udp.payload() == &big[..]);
}

#[test]
fn net_small_frames_padded_and_poll_hint() {
    let mut nat = test_nat();
    assert_eq!(nat.next_poll_in(), None);
    nat.guest_sent(&frame::arp_request(GUEST_MAC, GUEST_IP, GATEWAY_IP));
    assert_eq!(nat.next_poll_in(), Some(Duration::ZERO));
    let out = nat.poll();
    assert_eq!(out[0].len(), 60);
    // A pending host connect keeps the hint short.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    nat.guest_sent(&tcp_frame(
        (GUEST_IP, 40000),
        (GATEWAY_IP, port),
        TcpControl::Syn,
        None,
        &[],
    ));
    nat.poll();
    assert!(nat.next_poll_in().unwrap() <= Duration::from_millis(50));
}

#[allow(dead_code)]
fn nat_is_send(n: Nat) -> impl Send {
    n
}

#[test]
fn net_tcp_concurrent_connections_to_one_port() {
    // Eight guest connections to the same host port at once: each gets the
    // bytes for the id it sent, so no two were crossed.
    const N: usize = 8;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..N {
            let (mut s, _) = l.accept().unwrap();
            workers.push(thread::spawn(move || {
                let mut id = [0u8];
                s.read_exact(&mut id).unwrap();
                s.write_all(&pattern(200_000, id[0] as u64 + 100)).unwrap();
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let handles: Vec<SocketHandle> = (0..N)
        .map(|i| {
            let h = g.new_tcp();
            g.connect(h, (GATEWAY_IP, port), 50000 + i as u16);
            h
        })
        .collect();
    let mut got = vec![Vec::new(); N];
    let mut said = [false; N];
    g.run_until(&mut nat, 60, |g| {
        let mut finished = 0;
        for (i, &h) in handles.iter().enumerate() {
            let s = g.tcp(h);
            if !said[i] && s.can_send() {
                s.send_slice(&[i as u8]).unwrap();
                said[i] = true;
            }
            receive_all(s, &mut got[i]);
            if said[i] && !s.may_recv() {
                s.close();
                finished += 1;
            }
        }
        finished == N
    });
    server.join().unwrap();
    for (i, data) in got.iter().enumerate() {
        assert!(*data == pattern(200_000, i as u64 + 100), "connection {i}");
    }
}

/// A NAT that lets the guest reach "outside" addresses, all of which lead
/// to 127.0.0.1 in this test build.
fn outside_nat() -> Nat {
    let mut nat = Nat::new(NatConfig {
        restrict: false,
        dns: Some("127.0.0.1:9".parse().unwrap()),
        ..NatConfig::default()
    })
    .unwrap();
    nat.redirect_outside = Some(Ipv4Addr::LOCALHOST);
    nat
}

#[test]
fn net_tcp_and_udp_to_outside_address() {
    let outside = Ipv4Addr::new(203, 0, 113, 5);
    let data = pattern(100_000, 21);
    let (port, server) = serve_once(data.clone());
    let mut nat = outside_nat();
    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.connect(h, (outside, port), 49600);
    let mut got = Vec::new();
    g.run_until(&mut nat, 30, |g| {
        let s = g.tcp(h);
        receive_all(s, &mut got);
        if !s.may_recv() && s.state() != tcp::State::SynSent {
            // The peer was the outside address all along.
            assert_eq!(s.remote_endpoint().unwrap().addr, IpAddress::Ipv4(outside));
            s.close();
            return true;
        }
        false
    });
    server.join().unwrap();
    assert!(got == data);

    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uport = echo.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let mut buf = [0; 2048];
        let (n, from) = echo.recv_from(&mut buf).unwrap();
        echo.send_to(&buf[..n], from).unwrap();
    });
    let s = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    );
    let uh = g.sockets.add(s);
    g.sockets.get_mut::<udp::Socket>(uh).bind(40001).unwrap();
    g.sockets
        .get_mut::<udp::Socket>(uh)
        .send_slice(b"hello outside", (outside, uport))
        .unwrap();
    let mut reply = None;
    g.run_until(&mut nat, 10, |g| {
        if let Ok((d, meta)) = g.sockets.get_mut::<udp::Socket>(uh).recv() {
            reply = Some((d.to_vec(), meta.endpoint));
            return true;
        }
        false
    });
    server.join().unwrap();
    let (d, from) = reply.unwrap();
    assert_eq!(d, b"hello outside");
    assert_eq!(from.addr, IpAddress::Ipv4(outside));
    assert_eq!(from.port, uport);
}

#[test]
fn net_ping_outside_through_icmp_socket() {
    if super::ping_socket().is_err() {
        eprintln!("skipped: no unprivileged ICMP sockets here (net.ipv4.ping_group_range)");
        return;
    }
    let outside = Ipv4Addr::new(203, 0, 113, 7);
    let mut nat = outside_nat();
    let data = pattern(32, 3);
    let req = Icmpv4Repr::EchoRequest {
        ident: 0x77,
        seq_no: 5,
        data: &data,
    };
    nat.guest_sent(&frame::icmp_frame(
        GUEST_MAC,
        GATEWAY_MAC,
        GUEST_IP,
        outside,
        &req,
    ));
    let limit = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < limit, "no echo reply");
        if let Some(f) = nat.poll().first() {
            let (_, ip, payload) = parse_ipv4(f).unwrap();
            assert_eq!((ip.src_addr, ip.dst_addr), (outside, GUEST_IP));
            let pkt = Icmpv4Packet::new_checked(&payload[..]).unwrap();
            let repr = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()).unwrap();
            assert_eq!(
                repr,
                Icmpv4Repr::EchoReply {
                    ident: 0x77,
                    seq_no: 5,
                    data: &data
                }
            );
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn net_tcp_host_half_close() {
    // The host closes its side first and then still reads what the guest
    // sends; the guest closes after.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"hello").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let data = pattern(100_000, 31);
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.connect(h, (GATEWAY_IP, port), 49700);
    let mut hello = Vec::new();
    let mut sent = 0;
    g.run_until(&mut nat, 30, |g| {
        let s = g.tcp(h);
        receive_all(s, &mut hello);
        // Send only once the host's FIN is in.
        if s.state() == tcp::State::CloseWait && sent < data.len() && s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap();
            if sent == data.len() {
                s.close();
            }
        }
        sent == data.len() && s.state() == tcp::State::Closed
    });
    assert_eq!(hello, b"hello");
    let got = server.join().unwrap();
    assert!(got == data);
}

/// A guest UDP socket bound to `port`.
fn guest_udp(g: &mut Guest, port: u16) -> SocketHandle {
    let s = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    );
    let h = g.sockets.add(s);
    g.sockets.get_mut::<udp::Socket>(h).bind(port).unwrap();
    h
}

#[test]
fn net_udp_host_forward() {
    // Two host senders on one UDP forward; the guest answers each, and each
    // answer goes back to its own sender from the forward's address.
    let mut nat = Nat::new(NatConfig {
        host_forwards: vec![
            HostForward::parse("tcp::0-:80").unwrap(),
            HostForward::parse("udp:127.0.0.1:0-:5000").unwrap(),
        ],
        restrict: true,
        ..NatConfig::default()
    })
    .unwrap();
    let addrs = nat.forward_addrs();
    assert_eq!(addrs.len(), 2);
    let fwd = addrs[1];
    // The UDP socket really is the second one (a UDP socket answers).
    assert_ne!(fwd.port(), 0);
    let mut g = Guest::new(true);
    let h = guest_udp(&mut g, 5000);
    let clients: Vec<UdpSocket> = (0..2)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let mut seen_ports = Vec::new();
    for round in 0..2 {
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("hello {i} {round}");
            c.send_to(msg.as_bytes(), fwd).unwrap();
            let mut got = None;
            g.run_until(&mut nat, 10, |g| {
                let s = g.sockets.get_mut::<udp::Socket>(h);
                if let Ok((data, meta)) = s.recv() {
                    assert_eq!(data, msg.as_bytes());
                    assert_eq!(meta.endpoint.addr, IpAddress::Ipv4(GATEWAY_IP));
                    let from = meta.endpoint;
                    let reply = format!("re: {}", msg);
                    s.send_slice(reply.as_bytes(), from).unwrap();
                    seen_ports.push((i, from.port));
                }
                let mut buf = [0; 64];
                if let Ok((n, from)) = c.recv_from(&mut buf) {
                    got = Some((buf[..n].to_vec(), from));
                    return true;
                }
                false
            });
            let (data, from) = got.unwrap();
            assert_eq!(data, format!("re: hello {i} {round}").as_bytes());
            assert_eq!(from, fwd);
        }
    }
    // Each sender kept its port at 10.0.2.2, and the two differ.
    let port_of = |i| {
        let ps: Vec<u16> = seen_ports
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, p)| *p)
            .collect();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0], ps[1]);
        ps[0]
    };
    assert_ne!(port_of(0), port_of(1));
    assert_eq!(nat.stats().udp_forward_peers, 2);
    assert_eq!(nat.stats().udp_flows, 0);
    // Idle senders are forgotten.
    nat.advance_clock(UDP_IDLE + Duration::from_secs(1));
    nat.poll();
    assert_eq!(nat.stats().udp_forward_peers, 0);
}

/// The first ICMP message among `frames`, as (source, type, code, body
/// after the 8-byte ICMP header), checksums checked.
fn icmp_of(frames: &[Vec<u8>]) -> Option<(Ipv4Addr, u8, u8, Vec<u8>)> {
    frames.iter().find_map(|f| {
        let (dst, ip, payload) = parse_ipv4(f)?;
        if ip.next_header != IpProtocol::Icmp {
            return None;
        }
        assert_eq!(dst, GUEST_MAC);
        assert_eq!(ip.dst_addr, GUEST_IP);
        let pkt = Icmpv4Packet::new_checked(&payload[..]).unwrap();
        assert!(pkt.verify_checksum());
        Some((ip.src_addr, payload[0], payload[1], payload[8..].to_vec()))
    })
}

#[test]
fn net_udp_port_unreachable() {
    let closed = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut nat = test_nat();
    // To the host (10.0.2.2 is 127.0.0.1) on a port nothing has: the
    // host's refusal comes back as ICMP port unreachable.
    let sent = frame::udp_frame(
        GUEST_MAC,
        GATEWAY_MAC,
        GUEST_IP,
        41000,
        GATEWAY_IP,
        closed,
        b"anyone there?",
    );
    nat.guest_sent(&sent);
    let limit = Instant::now() + Duration::from_secs(5);
    let icmp = loop {
        assert!(Instant::now() < limit, "no port unreachable");
        if let Some(m) = icmp_of(&nat.poll()) {
            break m;
        }
        thread::sleep(Duration::from_millis(1));
    };
    // Type 3 code 3 from where the datagram went, quoting it (a small one
    // whole) as sent.
    assert_eq!(icmp, (GATEWAY_IP, 3, 3, sent[14..].to_vec()));
    // smoltcp (as a guest stack would) reads it as port unreachable.
    let f = nat_icmp_repr(&frame::icmp_unreachable(
        GATEWAY_MAC,
        GUEST_MAC,
        GATEWAY_IP,
        GUEST_IP,
        frame::PORT_UNREACHABLE,
        &sent[14..],
    ));
    assert!(f, "smoltcp parses it as port unreachable");

    // The NAT's own resolver address on a port that is not DNS: at once.
    let sent = frame::udp_frame(
        GUEST_MAC,
        GATEWAY_MAC,
        GUEST_IP,
        41001,
        DNS_IP,
        123,
        b"ntp?",
    );
    nat.guest_sent(&sent);
    let icmp = icmp_of(&nat.poll()).expect("port unreachable from 10.0.2.3");
    assert_eq!(icmp, (DNS_IP, 3, 3, sent[14..].to_vec()));
    assert_eq!(nat.stats().udp_flows, 1);

    // A header with options is quoted whole (IHL 6); a big datagram only
    // so far as the error stays within 576 bytes.
    let mut with_opts = sent[14..].to_vec();
    with_opts.splice(20..20, [1u8, 1, 1, 0]);
    with_opts[0] = 0x46;
    assert_eq!(frame::quote_len(&with_opts), with_opts.len());
    assert_eq!(frame::quote_len(&[0x45; 1400]), 576 - 28);
    assert_eq!(frame::quote_len(&[]), 0);
    nat.guest_sent(&frame::eth_wrap(
        GUEST_MAC,
        GATEWAY_MAC,
        EthernetProtocol::Ipv4,
        &{
            let mut p = with_opts.clone();
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
            ip.fill_checksum();
            p
        },
    ));
    let icmp = icmp_of(&nat.poll()).expect("port unreachable for a datagram with options");
    assert_eq!(icmp.3.len(), with_opts.len());
    assert_eq!(&icmp.3[20..24], &[1, 1, 1, 0]);

    // A datagram bigger than one error holds: 548 bytes of it.
    let big = pattern(1000, 9);
    let sent = frame::udp_frame(GUEST_MAC, GATEWAY_MAC, GUEST_IP, 41002, DNS_IP, 7, &big);
    nat.guest_sent(&sent);
    let icmp = icmp_of(&nat.poll()).expect("port unreachable for a big datagram");
    assert_eq!(icmp.3, sent[14..14 + 548].to_vec());
}

/// Whether smoltcp parses an unreachable frame as port unreachable.
fn nat_icmp_repr(f: &[u8]) -> bool {
    let (_, _, payload) = parse_ipv4(f).unwrap();
    let pkt = Icmpv4Packet::new_checked(&payload[..]).unwrap();
    matches!(
        Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()),
        Ok(Icmpv4Repr::DstUnreachable {
            reason: smoltcp::wire::Icmpv4DstUnreachable::PortUnreachable,
            ..
        })
    )
}

#[test]
fn net_udp_idle_timeouts() {
    // A host sink and a "resolver" that never answer: only the guest's
    // datagrams keep the flows alive.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut nat = Nat::new(NatConfig {
        restrict: true,
        dns: Some(dns.local_addr().unwrap()),
        ..NatConfig::default()
    })
    .unwrap();
    let send = |nat: &mut Nat, dst: Ipv4Addr, port: u16| {
        nat.guest_sent(&frame::udp_frame(
            GUEST_MAC,
            GATEWAY_MAC,
            GUEST_IP,
            42000,
            dst,
            port,
            b"x",
        ));
        nat.poll();
    };
    send(&mut nat, GATEWAY_IP, sink_port);
    send(&mut nat, DNS_IP, 53);
    assert_eq!(nat.stats().udp_flows, 2);
    // The DNS flow goes first.
    nat.advance_clock(DNS_IDLE + Duration::from_secs(1));
    nat.poll();
    assert_eq!(nat.stats().udp_flows, 1);
    // Traffic keeps the other one.
    nat.advance_clock(UDP_IDLE - DNS_IDLE - Duration::from_secs(10));
    send(&mut nat, GATEWAY_IP, sink_port);
    nat.advance_clock(Duration::from_secs(20));
    nat.poll();
    assert_eq!(nat.stats().udp_flows, 1);
    nat.advance_clock(UDP_IDLE);
    nat.poll();
    assert_eq!(nat.stats().udp_flows, 0);
    // The host got every datagram, and its socket is gone with the flow.
    let mut buf = [0; 8];
    sink.set_nonblocking(true).unwrap();
    let mut n = 0;
    while sink.recv(&mut buf).is_ok() {
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn net_tcp_idle_reset() {
    // The host end reads until the connection ends, and says how.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Some(e.kind())),
            }
        }
    });
    let mut nat = test_nat();
    let mut g = Guest::new(true);
    let h = g.new_tcp();
    g.connect(h, (GATEWAY_IP, port), 49800);
    g.run_until(&mut nat, 10, |g| {
        g.tcp(h).state() == tcp::State::Established
    });
    // Quiet for just under the limit, then a byte: the clock starts over.
    nat.advance_clock(TCP_IDLE - Duration::from_secs(60));
    g.tcp(h).send_slice(b"a").unwrap();
    g.run_until(&mut nat, 10, |g| g.tcp(h).send_queue() == 0);
    nat.advance_clock(Duration::from_secs(120));
    for _ in 0..5 {
        g.step(&mut nat);
    }
    assert_eq!(g.tcp(h).state(), tcp::State::Established);
    assert_eq!(nat.stats().tcp_flows, 1);
    // Quiet past the limit: both ends are reset and the flow is gone.
    nat.advance_clock(TCP_IDLE + Duration::from_secs(1));
    g.run_until(&mut nat, 10, |g| g.tcp(h).state() == tcp::State::Closed);
    // The flow goes (and the host's end is reset) at the next poll.
    g.step(&mut nat);
    let (got, how) = server.join().unwrap();
    assert_eq!(got, b"a");
    assert_eq!(how, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(nat.stats().tcp_flows, 0);
    assert_eq!(nat.stats().tcp_sockets, 0);
}

// ---- guest fragments ----

/// One fragment from the guest: bytes `from..to` of the IP payload
/// `whole`, with more-fragments `more`.
fn guest_fragment(
    dst: Ipv4Addr,
    proto: IpProtocol,
    whole: &[u8],
    (from, to): (usize, usize),
    more: bool,
    ident: u16,
) -> Vec<u8> {
    let mut f = frame::ip_frame(
        GUEST_MAC,
        GATEWAY_MAC,
        GUEST_IP,
        dst,
        proto,
        to - from,
        |b| b.copy_from_slice(&whole[from..to]),
    );
    let mut ip = Ipv4Packet::new_unchecked(&mut f[frame::ETH_HEADER..]);
    ip.set_ident(ident);
    ip.set_dont_frag(false);
    ip.set_more_frags(more);
    ip.set_frag_offset(from as u16);
    ip.fill_checksum();
    f
}

/// Frames the NAT sent, put back together: (source, IP payload), checking
/// each fragment's size and checksum.
fn reassemble_reply(frames: &[Vec<u8>]) -> Option<(Ipv4Addr, Vec<u8>)> {
    let mut parts = Vec::new();
    let mut src = None;
    for f in frames {
        assert!(f.len() <= 1514);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), GUEST_IP);
        src = Some(ip.src_addr());
        parts.push((
            ip.frag_offset() as usize,
            ip.more_frags(),
            ip.payload().to_vec(),
        ));
    }
    parts.sort_by_key(|p| p.0);
    let mut whole = Vec::new();
    for (off, _, data) in &parts {
        assert_eq!(*off, whole.len());
        whole.extend_from_slice(data);
    }
    let last = parts.last()?;
    assert!(!last.1);
    Some((src?, whole))
}

/// The echo message (type 8 or 0) with `data`, as bytes.
fn echo_bytes(request: bool, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let repr = if request {
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }
    } else {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        }
    };
    let mut b = vec![0; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut b[..]),
        &ChecksumCapabilities::default(),
    );
    b
}

#[test]
fn net_fragmented_ping() {
    // `ping -s 3000 10.0.2.2`: three fragments, sent out of order with a
    // duplicate; the reply comes back fragmented too.
    let mut nat = test_nat();
    let data = pattern(3000, 41);
    let req = echo_bytes(true, 0x99, 1, &data);
    let frags = frame::ip_frames(
        GUEST_MAC,
        GATEWAY_MAC,
        GUEST_IP,
        GATEWAY_IP,
        IpProtocol::Icmp,
        &req,
        0x4321,
    );
    assert_eq!(frags.len(), 3);
    for i in [2, 0, 2] {
        nat.guest_sent(&frags[i]);
        assert!(nat.poll().is_empty());
    }
    assert_eq!(nat.stats().reassemblies, 1);
    nat.guest_sent(&frags[1]);
    let out = nat.poll();
    assert_eq!(out.len(), 3);
    let (src, reply) = reassemble_reply(&out).unwrap();
    assert_eq!(src, GATEWAY_IP);
    assert!(reply == echo_bytes(false, 0x99, 1, &data));
    assert_eq!(nat.stats().reassemblies, 0);

    // Overlapping fragments (same bytes where they overlap) complete it
    // as well; the same ident again is a new datagram.
    let parts = [(0, 1480, true), (8, 2000, true), (1992, req.len(), false)];
    for (from, to, more) in parts {
        nat.guest_sent(&guest_fragment(
            GATEWAY_IP,
            IpProtocol::Icmp,
            &req,
            (from, to),
            more,
            0x4321,
        ));
    }
    let (_, reply) = reassemble_reply(&nat.poll()).unwrap();
    assert!(reply == echo_bytes(false, 0x99, 1, &data));
}

#[test]
fn net_fragmented_udp() {
    // A 5000-byte datagram from the guest reaches the host whole; the
    // host's 5000-byte answer reaches the guest in fragments.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let mut buf = [0; 65536];
        let (n, from) = echo.recv_from(&mut buf).unwrap();
        let mut answer = buf[..n].to_vec();
        answer.reverse();
        echo.send_to(&answer, from).unwrap();
        n
    });
    let mut nat = test_nat();
    let msg = pattern(5000, 42);
    let frags = frame::udp_frames(
        GUEST_MAC,
        GATEWAY_MAC,
        (GUEST_IP, 43000),
        (GATEWAY_IP, port),
        &msg,
        7,
    );
    assert_eq!(frags.len(), 4);
    for f in frags.iter().rev() {
        nat.guest_sent(f);
    }
    assert_eq!(server.join().unwrap(), 5000);
    let limit = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let (src, dgram) = loop {
        assert!(Instant::now() < limit, "no reply");
        out.extend(nat.poll());
        if out.len() >= 4 {
            break reassemble_reply(&out).unwrap();
        }
        thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(src, GATEWAY_IP);
    let udp = UdpPacket::new_checked(&dgram[..]).unwrap();
    assert!(udp.verify_checksum(&GATEWAY_IP.into(), &GUEST_IP.into()));
    assert_eq!((udp.src_port(), udp.dst_port()), (port, 43000));
    let mut want = msg.clone();
    want.reverse();
    assert!(udp.payload() == &want[..]);
}

#[test]
fn net_fragments_hostile() {
    use super::reassembly::{MAX_REASSEMBLIES, REASSEMBLY_TIMEOUT};
    let mut nat = test_nat();
    let req = echo_bytes(true, 1, 1, &pattern(2000, 43));
    let frag = |nat: &mut Nat, range, more, ident| {
        nat.guest_sent(&guest_fragment(
            GATEWAY_IP,
            IpProtocol::Icmp,
            &req,
            range,
            more,
            ident,
        ));
        nat.poll()
    };
    // A datagram that takes too long is dropped; its rest completes nothing.
    frag(&mut nat, (0, 1480), true, 1);
    assert_eq!(nat.stats().reassemblies, 1);
    nat.advance_clock(REASSEMBLY_TIMEOUT + Duration::from_secs(1));
    nat.poll();
    assert_eq!(nat.stats().reassemblies, 0);
    assert!(frag(&mut nat, (1480, req.len()), false, 1).is_empty());
    nat.advance_clock(REASSEMBLY_TIMEOUT + Duration::from_secs(1));
    nat.poll();
    // Two different ends, and data past the end: dropped.
    frag(&mut nat, (1480, req.len()), false, 2);
    assert!(frag(&mut nat, (1480, req.len() - 8), false, 2).is_empty());
    assert!(frag(&mut nat, (0, 1480), true, 2).is_empty());
    frag(&mut nat, (8, 1488), true, 3);
    assert!(frag(&mut nat, (0, 800), false, 3).is_empty());
    assert!(frag(&mut nat, (0, 1480), true, 3).is_empty());
    // A middle fragment that is not whole blocks is ignored.
    assert!(frag(&mut nat, (0, 1481), true, 4).is_empty());
    assert!(frag(&mut nat, (1481, req.len()), false, 4).is_empty());
    // Many datagrams at once: the table stays bounded.
    for ident in 100..200 {
        frag(&mut nat, (0, 1480), true, ident);
        assert!(nat.stats().reassemblies <= MAX_REASSEMBLIES);
    }
    // Random fragments (offsets up to the 64 KiB limit and past it, any
    // length, some with the TCP protocol): no panic, bounded state.
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let junk = pattern(1480, 44);
    for _ in 0..20_000 {
        let ident = rng.below(40) as u16;
        let off = rng.below(8200) * 8;
        let len = rng.below(1481);
        let proto = [IpProtocol::Icmp, IpProtocol::Udp, IpProtocol::Tcp][rng.below(3)];
        let mut f = frame::ip_frame(
            GUEST_MAC,
            GATEWAY_MAC,
            GUEST_IP,
            [GATEWAY_IP, DNS_IP][rng.below(2)],
            proto,
            len,
            |b| b.copy_from_slice(&junk[..len]),
        );
        let mut ip = Ipv4Packet::new_unchecked(&mut f[frame::ETH_HEADER..]);
        ip.set_ident(ident);
        ip.set_dont_frag(false);
        ip.set_more_frags(rng.below(3) != 0);
        ip.set_frag_offset(off.min(0xfff8) as u16);
        ip.fill_checksum();
        nat.guest_sent(&f);
        if rng.below(16) == 0 {
            nat.poll();
        }
        assert!(nat.stats().reassemblies <= MAX_REASSEMBLIES);
    }
    nat.poll();
    // Still works after all that.
    let frags = frame::ip_frames(
        GUEST_MAC,
        GATEWAY_MAC,
        GUEST_IP,
        GATEWAY_IP,
        IpProtocol::Icmp,
        &req,
        0x7777,
    );
    for f in &frags {
        nat.guest_sent(f);
    }
    let (_, reply) = reassemble_reply(&nat.poll()).unwrap();
    assert!(reply == echo_bytes(false, 1, 1, &pattern(2000, 43)));
}
