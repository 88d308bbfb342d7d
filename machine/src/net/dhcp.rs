//! The DHCP server: one lease, 10.0.2.15, for whoever asks.

use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Address,
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT,
};

use super::frame::udp_frame;
use super::{DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, NETMASK};

pub(crate) const LEASE_SECS: u32 = 86400;
const BOOTREQUEST: u8 = 1;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_SERVER_ID: u8 = 54;
const OPT_DNS: u8 = 6;
/// BOOTP's minimum message size: some clients drop shorter replies.
const MIN_BOOTP_LEN: usize = 300;

fn ipv4_option(data: &[u8]) -> Option<Ipv4Address> {
    let b: [u8; 4] = data.try_into().ok()?;
    Some(Ipv4Address::from(b))
}

/// The server's answer (a whole frame) to a DHCP message from the guest,
/// if it calls for one.
pub(crate) fn answer(payload: &[u8]) -> Option<Vec<u8>> {
    let pkt = DhcpPacket::new_checked(payload).ok()?;
    // Op, htype 1 (Ethernet), hlen 6: read from the bytes, as smoltcp's
    // accessors only know the values they can represent.
    if payload[0] != BOOTREQUEST || payload[1] != 1 || payload[2] != 6 {
        return None;
    }
    let mut msg_type = None;
    let mut requested = None;
    let mut server_id = None;
    for opt in pkt.options() {
        match opt.kind {
            OPT_MESSAGE_TYPE if opt.data.len() == 1 => msg_type = Some(opt.data[0]),
            OPT_REQUESTED_IP => requested = ipv4_option(opt.data),
            OPT_SERVER_ID => server_id = ipv4_option(opt.data),
            _ => {}
        }
    }
    let chaddr = pkt.client_hardware_address();
    if !chaddr.is_unicast() {
        return None;
    }
    let ciaddr = pkt.client_ip();
    let broadcast_flag = payload[10] & 0x80 != 0;
    let unspecified = Ipv4Address::UNSPECIFIED;

    let (reply, yiaddr) = match DhcpMessageType::from(msg_type?) {
        DhcpMessageType::Discover => (DhcpMessageType::Offer, GUEST_IP),
        DhcpMessageType::Request => {
            if server_id.is_some_and(|s| s != GATEWAY_IP) {
                return None; // the client took another server's offer
            }
            let wanted = requested.or((ciaddr != unspecified).then_some(ciaddr));
            match wanted {
                None => (DhcpMessageType::Ack, GUEST_IP),
                Some(ip) if ip == GUEST_IP => (DhcpMessageType::Ack, GUEST_IP),
                Some(_) => (DhcpMessageType::Nak, unspecified),
            }
        }
        DhcpMessageType::Inform => (DhcpMessageType::Ack, unspecified),
        _ => return None,
    };
    let nak = reply == DhcpMessageType::Nak;
    let dns_octets = DNS_IP.octets();
    let dns_option = [DhcpOption {
        kind: OPT_DNS,
        data: &dns_octets,
    }];
    let repr = DhcpRepr {
        message_type: reply,
        transaction_id: pkt.transaction_id(),
        secs: 0,
        client_hardware_address: chaddr,
        client_ip: if nak { unspecified } else { ciaddr },
        your_ip: yiaddr,
        server_ip: if nak { unspecified } else { GATEWAY_IP },
        router: (!nak).then_some(GATEWAY_IP),
        subnet_mask: (!nak).then_some(NETMASK),
        relay_agent_ip: unspecified,
        broadcast: broadcast_flag,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(GATEWAY_IP),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: (!nak && yiaddr != unspecified).then_some(LEASE_SECS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: if nak { &[] } else { &dns_option },
    };
    let mut buf = vec![0; repr.buffer_len().max(MIN_BOOTP_LEN)];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
        .ok()?;

    // RFC 2131 4.1: to ciaddr if the client has one; else broadcast if it
    // asked for it (or for a NAK); else unicast to yiaddr at chaddr.
    let (ip_dst, mac_dst) = if nak {
        (Ipv4Address::BROADCAST, EthernetAddress::BROADCAST)
    } else if ciaddr != unspecified {
        (ciaddr, chaddr)
    } else if broadcast_flag {
        (Ipv4Address::BROADCAST, EthernetAddress::BROADCAST)
    } else {
        (yiaddr, chaddr)
    };
    Some(udp_frame(
        GATEWAY_MAC,
        mac_dst,
        GATEWAY_IP,
        DHCP_SERVER_PORT,
        ip_dst,
        DHCP_CLIENT_PORT,
        &buf,
    ))
}
