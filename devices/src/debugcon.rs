//! The debug console: a write-only byte port (0x402, as QEMU's `-debugcon` is wired on a
//! PC) that firmware such as SeaBIOS prints its log to. Reading the port returns a fixed
//! value, which is how firmware tells that the console is there before using it.

use crate::{Nanos, PortDevice};

/// The port firmware expects the console at.
pub const DEBUGCON_PORT: u16 = 0x402;
/// What a read of the port returns when the console is present.
pub const DEBUGCON_READBACK: u8 = 0xE9;
/// Bytes kept while nobody drains the console; later ones are dropped (a guest printing
/// forever must not grow host memory without bound).
const MAX_PENDING: usize = 1 << 20;

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct DebugConsole {
    pending: Vec<u8>,
}

impl DebugConsole {
    pub fn new() -> DebugConsole {
        DebugConsole::default()
    }

    /// The bytes written since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

impl PortDevice for DebugConsole {
    fn read(&mut self, _port: u16, _size: u8, _now: Nanos) -> u32 {
        DEBUGCON_READBACK as u32
    }

    /// Wider writes send their low byte.
    fn write(&mut self, _port: u16, _size: u8, value: u32, _now: Nanos) {
        if self.pending.len() < MAX_PENDING {
            self.pending.push(value as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readback_and_output() {
        let mut con = DebugConsole::new();
        assert_eq!(con.read(DEBUGCON_PORT, 1, 0), 0xE9);
        for b in b"hi\n" {
            con.write(DEBUGCON_PORT, 1, *b as u32, 0);
        }
        con.write(DEBUGCON_PORT, 2, 0x1221, 0);
        assert_eq!(con.take_output(), b"hi\n\x21");
        assert!(con.take_output().is_empty());
        for _ in 0..MAX_PENDING + 10 {
            con.write(DEBUGCON_PORT, 1, b'x' as u32, 0);
        }
        assert_eq!(con.take_output().len(), MAX_PENDING);
    }
}
