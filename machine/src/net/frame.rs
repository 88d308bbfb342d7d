//! Building frames for the guest, and the packet queues that connect the
//! NAT's smoltcp interface (IP medium: it sees bare IPv4 packets) to it.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

pub(crate) const ETH_HEADER: usize = 14;
pub(crate) const IP_HEADER: usize = 20;
pub(crate) const UDP_HEADER: usize = 8;
pub(crate) const MTU: usize = 1500;

/// Packet queues playing a smoltcp device. `rx` holds packets for smoltcp
/// to take in, `tx` what it sent out. Nothing here bounds them: the callers
/// bound `rx`, and smoltcp's output is bounded by the TCP windows.
pub(crate) struct Queues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    medium: Medium,
}

impl Queues {
    pub fn new(medium: Medium) -> Queues {
        Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            medium,
        }
    }
}

pub(crate) struct RxToken(Vec<u8>);
pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxToken(p), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = self.medium;
        caps.max_transmission_unit = match self.medium {
            Medium::Ethernet => MTU + ETH_HEADER,
            _ => MTU,
        };
        caps
    }
}

/// Wraps an IPv4 packet in an Ethernet frame.
pub(crate) fn eth_wrap(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0; ETH_HEADER + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// An Ethernet + IPv4 frame whose IP payload (`len` bytes) `fill` writes.
pub(crate) fn ip_frame(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut buf = vec![0; ETH_HEADER + IP_HEADER + len];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: eth_src,
        dst_addr: eth_dst,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let mut ip = Ipv4Packet::new_unchecked(frame.payload_mut());
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: len,
        hop_limit: 64,
    }
    .emit(&mut ip, &ChecksumCapabilities::default());
    fill(ip.payload_mut());
    buf
}

/// A UDP datagram in a frame.
#[allow(clippy::too_many_arguments)]
pub(crate) fn udp_frame(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    ip_frame(
        eth_src,
        eth_dst,
        src,
        dst,
        IpProtocol::Udp,
        UDP_HEADER + payload.len(),
        |buf| {
            let mut udp = UdpPacket::new_unchecked(buf);
            UdpRepr { src_port, dst_port }.emit(
                &mut udp,
                &src.into(),
                &dst.into(),
                payload.len(),
                |p| p.copy_from_slice(payload),
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// A UDP datagram as one frame, or as IPv4 fragments when it does not fit
/// the MTU (`ident` tells one fragmented datagram from another).
#[allow(clippy::too_many_arguments)]
pub(crate) fn udp_frames(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
    ident: u16,
) -> Vec<Vec<u8>> {
    let total = UDP_HEADER + payload.len();
    if total > usize::from(u16::MAX) - IP_HEADER {
        return Vec::new();
    }
    let mut dgram = vec![0; total];
    UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut dgram[..]),
        &src.0.into(),
        &dst.0.into(),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    ip_frames(
        eth_src,
        eth_dst,
        src.0,
        dst.0,
        IpProtocol::Udp,
        &dgram,
        ident,
    )
}

/// An ICMP message as one frame, or as IPv4 fragments when it does not
/// fit the MTU (a big echo reply).
pub(crate) fn icmp_frames(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp: &Icmpv4Repr,
    ident: u16,
) -> Vec<Vec<u8>> {
    let mut msg = vec![0; icmp.buffer_len()];
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut msg[..]),
        &ChecksumCapabilities::default(),
    );
    ip_frames(eth_src, eth_dst, src, dst, IpProtocol::Icmp, &msg, ident)
}

/// An IP payload (a whole UDP datagram, ICMP message...) as one frame, or
/// as IPv4 fragments of at most the MTU; none if no IPv4 datagram holds it.
pub(crate) fn ip_frames(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload: &[u8],
    ident: u16,
) -> Vec<Vec<u8>> {
    let total = payload.len();
    if total <= MTU - IP_HEADER {
        return vec![ip_frame(eth_src, eth_dst, src, dst, proto, total, |b| {
            b.copy_from_slice(payload)
        })];
    }
    if total > usize::from(u16::MAX) - IP_HEADER {
        return Vec::new();
    }
    let step = (MTU - IP_HEADER) & !7;
    payload
        .chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = i * step;
            let mut f = ip_frame(eth_src, eth_dst, src, dst, proto, chunk.len(), |b| {
                b.copy_from_slice(chunk)
            });
            let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_HEADER..]);
            ip.set_ident(ident);
            ip.set_dont_frag(false);
            ip.set_more_frags(offset + chunk.len() < total);
            ip.set_frag_offset(offset as u16);
            ip.fill_checksum();
            f
        })
        .collect()
}

/// Pads a frame to Ethernet's minimum (60 bytes without the FCS), as a
/// real sender would.
pub(crate) fn pad(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// An ICMP message in one frame (the tests' guest sends these; the NAT
/// itself uses [`icmp_frames`]).
#[cfg(test)]
pub(crate) fn icmp_frame(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp: &Icmpv4Repr,
) -> Vec<u8> {
    ip_frame(
        eth_src,
        eth_dst,
        src,
        dst,
        IpProtocol::Icmp,
        icmp.buffer_len(),
        |buf| {
            let mut pkt = Icmpv4Packet::new_unchecked(buf);
            icmp.emit(&mut pkt, &ChecksumCapabilities::default());
        },
    )
}

/// ICMP destination unreachable code for "port unreachable".
pub(crate) const PORT_UNREACHABLE: u8 = 3;

/// How much of an IP datagram an ICMP error about it quotes: as much as
/// keeps the error within 576 bytes (RFC 1812 4.3.2.3), which is always
/// more than RFC 792's header and 8 bytes. (smoltcp, for one, reads an
/// error only if it quotes the whole of a small datagram.)
pub(crate) fn quote_len(packet: &[u8]) -> usize {
    packet.len().min(576 - IP_HEADER - 8)
}

/// ICMP destination unreachable (`code`) about `original`, an IP datagram
/// of which it quotes the first [`quote_len`] bytes as they came.
pub(crate) fn icmp_unreachable(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    code: u8,
    original: &[u8],
) -> Vec<u8> {
    let quoted = &original[..quote_len(original)];
    ip_frame(
        eth_src,
        eth_dst,
        src,
        dst,
        IpProtocol::Icmp,
        8 + quoted.len(),
        |buf| {
            // Type 3, the code, the checksum, 4 unused bytes, the quote.
            buf[0] = 3;
            buf[1] = code;
            buf[8..].copy_from_slice(quoted);
            Icmpv4Packet::new_unchecked(buf).fill_checksum();
        },
    )
}

/// An ARP packet in a frame.
pub(crate) fn arp_frame(
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    arp: &ArpRepr,
) -> Vec<u8> {
    let mut payload = vec![0; arp.buffer_len()];
    arp.emit(&mut ArpPacket::new_unchecked(&mut payload[..]));
    eth_wrap(eth_src, eth_dst, EthernetProtocol::Arp, &payload)
}

/// An ARP request (used by the tests, and handy for debugging).
#[cfg(test)]
pub(crate) fn arp_request(src_mac: EthernetAddress, src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        src_mac,
        EthernetAddress::BROADCAST,
        &ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: src_mac,
            source_protocol_addr: src,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        },
    )
}

/// The reply to an ARP request for `owned` addresses, answered with `mac`.
pub(crate) fn arp_reply(
    payload: &[u8],
    mac: EthernetAddress,
    owns: impl Fn(Ipv4Addr) -> bool,
) -> Option<Vec<u8>> {
    let pkt = ArpPacket::new_checked(payload).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&pkt).ok()?
    else {
        return None;
    };
    if operation != ArpOperation::Request
        || !owns(target_protocol_addr)
        || source_protocol_addr == target_protocol_addr
        || !source_hardware_addr.is_unicast()
    {
        return None;
    }
    Some(arp_frame(
        mac,
        source_hardware_addr,
        &ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: mac,
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        },
    ))
}
