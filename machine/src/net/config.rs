//! NAT configuration: host forwards (QEMU's `hostfwd=` syntax) and the
//! host resolver.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Which transport a host forward carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardProto {
    #[default]
    Tcp,
    Udp,
}

/// A port forward from the host into the guest. TCP: connections accepted
/// on `host` are connected to the guest's 10.0.2.15:`guest_port`. UDP:
/// datagrams arriving at `host` go to 10.0.2.15:`guest_port`, and the
/// guest's replies go back to their senders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostForward {
    pub proto: ForwardProto,
    pub host: SocketAddr,
    pub guest_port: u16,
}

impl HostForward {
    /// Parses QEMU's `hostfwd` syntax: `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`,
    /// e.g. `tcp:127.0.0.1:8080-:80`, `tcp::8080-:80` or `udp::5353-:53`
    /// (no protocol is TCP). The host address
    /// defaults to 127.0.0.1; the guest address, if given, must be 10.0.2.15.
    /// A host port of 0 binds an ephemeral port (see [`super::Nat::forward_addrs`]).
    pub fn parse(spec: &str) -> Result<HostForward, String> {
        let bad = |why: &str| format!("bad host forward '{spec}': {why}");
        let (proto, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport"))?;
        let proto = match proto {
            "" | "tcp" => ForwardProto::Tcp,
            "udp" => ForwardProto::Udp,
            other => return Err(bad(&format!("unknown protocol '{other}' (tcp or udp)"))),
        };
        let (host, guest) = rest
            .split_once('-')
            .ok_or_else(|| bad("missing '-' between host and guest parts"))?;
        let (host_addr, host_port) = host
            .rsplit_once(':')
            .ok_or_else(|| bad("host part must be [hostaddr]:hostport"))?;
        let (guest_addr, guest_port) = guest
            .rsplit_once(':')
            .ok_or_else(|| bad("guest part must be [guestaddr]:guestport"))?;
        let host_ip: IpAddr = match host_addr {
            "" | "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            a => a
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| bad(&format!("bad host address '{a}'")))?,
        };
        let host_port: u16 = host_port
            .parse()
            .map_err(|_| bad(&format!("bad host port '{host_port}'")))?;
        match guest_addr {
            "" | "10.0.2.15" => {}
            a => return Err(bad(&format!("guest address '{a}' is not 10.0.2.15"))),
        }
        let guest_port: u16 = guest_port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(&format!("bad guest port '{guest_port}'")))?;
        Ok(HostForward {
            proto,
            host: SocketAddr::new(host_ip, host_port),
            guest_port,
        })
    }
}

/// The NAT's configuration.
#[derive(Clone, Debug)]
pub struct NatConfig {
    /// TCP and UDP forwards from host addresses into the guest.
    pub host_forwards: Vec<HostForward>,
    /// The host resolver that the guest reaches as 10.0.2.3:53. `None`: the
    /// first `nameserver` of /etc/resolv.conf (port 53).
    pub dns: Option<SocketAddr>,
    /// The host address the guest reaches as 10.0.2.2 (default 127.0.0.1).
    pub host_loopback: Ipv4Addr,
    /// The guest reaches only 10.0.2.2 (the host) and 10.0.2.3 (DNS): TCP
    /// to other addresses is refused (RST), UDP and echo dropped. (Unlike
    /// QEMU's `restrict=on`, the host itself stays reachable.)
    pub restrict: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            host_forwards: Vec::new(),
            dns: None,
            host_loopback: Ipv4Addr::LOCALHOST,
            restrict: false,
        }
    }
}

/// The first nameserver of a resolv.conf text, port 53.
pub(crate) fn first_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "nameserver" {
            return None;
        }
        let addr = words.next()?;
        // Drop an IPv6 zone ("fe80::1%eth0"): std does not parse it.
        let addr = addr.split('%').next()?;
        let ip: IpAddr = addr.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

pub(crate) fn system_dns() -> Option<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|t| first_nameserver(&t))
}
