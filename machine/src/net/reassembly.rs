//! Putting the guest's fragmented IPv4 datagrams back together.
//!
//! The guest is not trusted: every fragment is checked against the limits
//! of an IPv4 datagram, the number of datagrams under way and their age
//! are bounded, and fragments that contradict each other (two different
//! ends, data past the end) drop the datagram. Overlapping fragments are
//! allowed; where they overlap the later one's bytes count.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::Ipv4Packet;

use super::frame::IP_HEADER;

/// The most payload one IPv4 datagram carries (with a header of 20).
const MAX_PAYLOAD: usize = u16::MAX as usize - IP_HEADER;
/// Fragment offsets count 8-byte blocks.
const BLOCK: usize = 8;
const BLOCKS: usize = MAX_PAYLOAD.div_ceil(BLOCK);
/// Datagrams reassembled at once; the oldest goes for a new one.
pub(crate) const MAX_REASSEMBLIES: usize = 16;
/// A datagram not complete this long after its first fragment is dropped
/// (RFC 791 suggests 15 s at least; Linux waits 30 s).
pub(crate) const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);

/// (source, destination, protocol, ident): RFC 791's reassembly key.
type Key = (Ipv4Addr, Ipv4Addr, u8, u16);

struct Partial {
    /// The IP header of the fragment at offset 0 (options included).
    header: Option<Vec<u8>>,
    /// The payload so far; as long as the furthest fragment reaches.
    data: Vec<u8>,
    /// Which 8-byte blocks of the payload have arrived, and how many.
    blocks: Vec<u64>,
    have: usize,
    /// The payload's length, once the last fragment came.
    end: Option<usize>,
    since: Instant,
}

impl Partial {
    fn new(now: Instant) -> Partial {
        Partial {
            header: None,
            data: Vec::new(),
            blocks: vec![0; BLOCKS.div_ceil(64)],
            have: 0,
            end: None,
            since: now,
        }
    }

    fn mark(&mut self, from: usize, to: usize) {
        for b in from / BLOCK..to.div_ceil(BLOCK) {
            let (word, bit) = (b / 64, 1u64 << (b % 64));
            if self.blocks[word] & bit == 0 {
                self.blocks[word] |= bit;
                self.have += 1;
            }
        }
    }

    /// The whole datagram, if every block up to the end is in.
    fn whole(&self) -> Option<Vec<u8>> {
        let end = self.end?;
        let header = self.header.as_ref()?;
        if self.have != end.div_ceil(BLOCK) || header.len() + end > usize::from(u16::MAX) {
            return None;
        }
        let mut out = Vec::with_capacity(header.len() + end);
        out.extend_from_slice(header);
        out.extend_from_slice(&self.data[..end]);
        let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
        ip.set_total_len((header.len() + end) as u16);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        ip.fill_checksum();
        Some(out)
    }
}

/// The datagrams under reassembly.
#[derive(Default)]
pub(crate) struct Reassembler {
    partials: HashMap<Key, Partial>,
}

impl Reassembler {
    pub fn len(&self) -> usize {
        self.partials.len()
    }

    /// Takes a fragment: an IPv4 packet, checked (lengths and header
    /// checksum), cut to its total length, with more-fragments or an
    /// offset. Returns the datagram it completes, unfragmented.
    pub fn add(&mut self, packet: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.expire(now);
        let ip = Ipv4Packet::new_checked(packet).ok()?;
        let header_len = usize::from(ip.header_len());
        let payload = packet.get(header_len..usize::from(ip.total_len()))?;
        let offset = usize::from(ip.frag_offset());
        let end = offset + payload.len();
        let more = ip.more_frags();
        let key = (
            ip.src_addr(),
            ip.dst_addr(),
            u8::from(ip.next_header()),
            ip.ident(),
        );
        // All but the last fragment carry whole blocks (RFC 791).
        if more && (payload.is_empty() || payload.len() % BLOCK != 0) {
            return None;
        }
        if end > MAX_PAYLOAD {
            self.partials.remove(&key);
            return None;
        }
        if !self.partials.contains_key(&key) && self.partials.len() >= MAX_REASSEMBLIES {
            let oldest = self
                .partials
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| *k)?;
            self.partials.remove(&oldest);
        }
        let p = self
            .partials
            .entry(key)
            .or_insert_with(|| Partial::new(now));
        let contradicts = match (more, p.end) {
            // Two last fragments that disagree, or data already past it.
            (false, Some(e)) => e != end,
            (false, None) => p.data.len() > end,
            (true, Some(e)) => end > e,
            (true, None) => false,
        };
        if contradicts {
            self.partials.remove(&key);
            return None;
        }
        if !more {
            p.end = Some(end);
        }
        if offset == 0 {
            p.header = Some(packet[..header_len].to_vec());
        }
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[offset..end].copy_from_slice(payload);
        p.mark(offset, end);
        let whole = p.whole()?;
        self.partials.remove(&key);
        Some(whole)
    }

    /// Drops the datagrams that took too long.
    pub fn expire(&mut self, now: Instant) {
        self.partials
            .retain(|_, p| now.saturating_duration_since(p.since) < REASSEMBLY_TIMEOUT);
    }
}
