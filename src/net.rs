//! `run --net SPEC`: the network card and what it is connected to, in QEMU's words.
//!
//! - `nic[,model=ne2k_pci|ne2k_isa][,macaddr=52:54:00:12:34:56][,iobase=0x300][,irq=9]`
//! - `user[,hostfwd=tcp|udp:127.0.0.1:HPORT-:GPORT]...[,restrict=on]`: the NAT (10.0.2.0/24)
//! - `socket,udp=HOST:PORT,localaddr=HOST:PORT`: a wire to another hospes
//! - `pcap=FILE`: every frame, both ways, to a capture
//! - `none`
//!
//! A backend without `nic` gets the default card (an RTL8029 on the PCI bus).

use hospes_machine::net::link::{Backend, NetLink, SocketLink};
use hospes_machine::net::{HostForward, Nat, NatConfig};
use hospes_machine::nic::{NicConfig, NicWiring};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

enum BackendSpec {
    User(NatConfig),
    Socket { local: SocketAddr, peer: SocketAddr },
}

/// The network as asked for on the command line.
#[derive(Default)]
pub struct NetSetup {
    pub nic: Option<NicConfig>,
    backend: Option<BackendSpec>,
    pcap: Option<PathBuf>,
}

fn address(spec: &str, what: &str) -> Result<SocketAddr, String> {
    spec.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("--net: {what} {spec:?} is not HOST:PORT"))
}

fn number(text: &str, what: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("--net: {what} {text:?} is not a number"))
}

fn mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--net: macaddr {text:?} is not six hex bytes"))?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| format!("--net: macaddr {text:?} is not six hex bytes"))?;
    if mac[0] & 1 != 0 {
        return Err(format!("--net: macaddr {text:?} is a multicast address"));
    }
    Ok(mac)
}

impl NetSetup {
    pub fn parse(specs: &[String]) -> Result<NetSetup, String> {
        let mut setup = NetSetup::default();
        for spec in specs {
            let mut parts = spec.split(',');
            let kind = parts.next().unwrap_or_default();
            let options: Vec<(&str, &str)> = parts
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect();
            let unknown = |key: &str| format!("--net {kind}: unknown option {key:?}");
            if let Some(path) = kind.strip_prefix("pcap=") {
                setup.pcap = Some(PathBuf::from(path));
                continue;
            }
            match kind {
                "none" => {}
                "nic" => {
                    let mut nic = NicConfig::default_pci();
                    let (mut base, mut irq) = (0x300u16, 9u8);
                    let mut isa = false;
                    for (key, value) in options {
                        match key {
                            "model" => {
                                isa = match value {
                                    "ne2k_pci" | "rtl8029" => false,
                                    "ne2k_isa" | "ne2000" => true,
                                    _ => {
                                        return Err(format!(
                                    "--net nic: model {value:?}: hospes has ne2k_pci and ne2k_isa"
                                ))
                                    }
                                }
                            }
                            "macaddr" | "mac" => nic.mac = mac(value)?,
                            "iobase" => {
                                base = u16::try_from(number(value, "iobase")?).map_err(|_| {
                                    format!("--net nic: iobase {value} is past 0xFFFF")
                                })?
                            }
                            "irq" => {
                                irq = u8::try_from(number(value, "irq")?)
                                    .map_err(|_| format!("--net nic: irq {value} is past 15"))?
                            }
                            _ => return Err(unknown(key)),
                        }
                    }
                    if isa {
                        nic.wiring = NicWiring::Isa { base, irq };
                    }
                    nic.validate().map_err(|e| format!("--net nic: {e}"))?;
                    setup.nic = Some(nic);
                }
                "user" => {
                    let mut config = NatConfig::default();
                    for (key, value) in options {
                        match key {
                            "hostfwd" => config.host_forwards.push(
                                HostForward::parse(value)
                                    .map_err(|e| format!("--net user: {e}"))?,
                            ),
                            "restrict" => config.restrict = matches!(value, "on" | "yes" | "y"),
                            "id" => {}
                            _ => return Err(unknown(key)),
                        }
                    }
                    setup.set_backend(BackendSpec::User(config))?;
                }
                "socket" => {
                    let (mut local, mut peer) = (None, None);
                    for (key, value) in options {
                        match key {
                            "udp" => peer = Some(address(value, "udp")?),
                            "localaddr" => local = Some(address(value, "localaddr")?),
                            "id" => {}
                            _ => return Err(unknown(key)),
                        }
                    }
                    let (Some(local), Some(peer)) = (local, peer) else {
                        return Err(
                            "--net socket needs udp=HOST:PORT and localaddr=HOST:PORT".into()
                        );
                    };
                    setup.set_backend(BackendSpec::Socket { local, peer })?;
                }
                _ => {
                    return Err(format!(
                        "--net {spec:?}: expected nic, user, socket, pcap=FILE or none"
                    ))
                }
            }
        }
        if setup.nic.is_none() && (setup.backend.is_some() || setup.pcap.is_some()) {
            setup.nic = Some(NicConfig::default_pci());
        }
        Ok(setup)
    }

    fn set_backend(&mut self, backend: BackendSpec) -> Result<(), String> {
        if self.backend.is_some() {
            return Err("--net: one backend (user or socket) per card".into());
        }
        self.backend = Some(backend);
        Ok(())
    }

    /// Opens the backend (binds its sockets) and the capture.
    pub fn connect(self) -> Result<NetLink, String> {
        let backend = match self.backend {
            None => None,
            Some(BackendSpec::User(config)) => Some(Backend::User(Box::new(
                Nat::new(config).map_err(|e| format!("--net user: {e}"))?,
            ))),
            Some(BackendSpec::Socket { local, peer }) => Some(Backend::Socket(
                SocketLink::new(local, peer).map_err(|e| format!("--net socket: {e}"))?,
            )),
        };
        NetLink::new(backend, self.pcap.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(specs: &[&str]) -> Result<NetSetup, String> {
        NetSetup::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn net_options_as_qemu_spells_them() {
        let s =
            parse(&["user,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp::5353-:53"]).expect("user");
        assert_eq!(s.nic, Some(NicConfig::default_pci()));
        let s = parse(&["nic,model=ne2k_isa,iobase=0x320,irq=10,macaddr=52:54:00:aa:bb:cc"])
            .expect("isa");
        let nic = s.nic.expect("a card");
        assert_eq!(
            nic.wiring,
            NicWiring::Isa {
                base: 0x320,
                irq: 10
            }
        );
        assert_eq!(nic.mac, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
        assert!(parse(&["none"]).expect("none").nic.is_none());
        for bad in [
            "nic,model=e1000",
            "nic,model=ne2k_isa,iobase=0x3f8",
            "nic,model=ne2k_isa,irq=4",
            "nic,macaddr=01:00:00:00:00:00",
            "user,colour=blue",
            "user,hostfwd=udp::5353",
            "socket,udp=127.0.0.1:5000",
            "tap,ifname=tap0",
        ] {
            let e = parse(&[bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(parse(&["user", "socket,udp=127.0.0.1:5000,localaddr=127.0.0.1:5001"]).is_err());
    }
}
