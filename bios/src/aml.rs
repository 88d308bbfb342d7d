//! A few ACPI Machine Language (AML) encoders: just what the DSDT needs (names, scopes,
//! devices, methods, packages, buffers, integers) and the resource descriptors of a PCI
//! root bridge's `_CRS`. Each function returns the encoded bytes of one term.

/// Encodes a PkgLength for `content` bytes that follow it: the length counts the
/// PkgLength bytes themselves, one byte up to 63, else 2-4 bytes with the low nibble in
/// the lead byte (whose top two bits give the number of following bytes).
pub fn pkg_length(content: usize) -> Vec<u8> {
    if content < 0x3F {
        return vec![(content + 1) as u8];
    }
    for n in 2..=4usize {
        let total = content + n;
        if total < 1 << (4 + 8 * (n - 1)) {
            let mut out = vec![(((n - 1) as u8) << 6) | (total & 0x0F) as u8];
            for i in 0..n - 1 {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return out;
        }
    }
    panic!("AML package of {content} bytes is too long");
}

/// `bytes` preceded by their PkgLength.
fn with_pkg_length(bytes: &[u8]) -> Vec<u8> {
    let mut out = pkg_length(bytes.len());
    out.extend_from_slice(bytes);
    out
}

/// A NameString: `\` for the root, then segments separated by `.`, each padded with `_`
/// to four characters ("\\_SB.PCI0" -> `\` DualNamePrefix `_SB_` `PCI0`).
pub fn name_string(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix('\\') {
        out.push(b'\\');
        rest = r;
    }
    while let Some(r) = rest.strip_prefix('^') {
        out.push(b'^');
        rest = r;
    }
    let segs: Vec<&str> = rest.split('.').filter(|s| !s.is_empty()).collect();
    match segs.len() {
        0 => out.push(0x00), // NullName
        1 => {}
        2 => out.push(0x2E), // DualNamePrefix
        n => {
            out.push(0x2F); // MultiNamePrefix
            out.push(n as u8);
        }
    }
    for seg in segs {
        assert!(
            (1..=4).contains(&seg.len()) && seg.is_ascii(),
            "bad AML name segment {seg:?}"
        );
        let mut s = *b"____";
        s[..seg.len()].copy_from_slice(seg.as_bytes());
        out.extend_from_slice(&s);
    }
    out
}

/// An integer with the shortest encoding: ZeroOp, OneOp, or Byte/Word/DWord/QWordPrefix.
pub fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xFF => vec![0x0A, v as u8],
        0x100..=0xFFFF => {
            let mut out = vec![0x0B];
            out.extend_from_slice(&(v as u16).to_le_bytes());
            out
        }
        0x1_0000..=0xFFFF_FFFF => {
            let mut out = vec![0x0C];
            out.extend_from_slice(&(v as u32).to_le_bytes());
            out
        }
        _ => {
            let mut out = vec![0x0E];
            out.extend_from_slice(&v.to_le_bytes());
            out
        }
    }
}

/// The 32-bit compressed EISA ID of a 7-character PNP ID ("PNP0A03" -> 0x030AD041): three
/// 5-bit letters and four hex digits, stored big-endian.
pub fn eisa_id(id: &str) -> u32 {
    let b = id.as_bytes();
    assert!(b.len() == 7, "EISA ID {id:?} is not 7 characters");
    let letter = |c: u8| {
        assert!(c.is_ascii_uppercase(), "EISA ID {id:?}: bad letter");
        u32::from(c - 0x40)
    };
    let hex = |c: u8| (c as char).to_digit(16).expect("EISA ID: bad hex digit");
    let mut v = letter(b[0]) << 26 | letter(b[1]) << 21 | letter(b[2]) << 16;
    for (i, &c) in b[3..].iter().enumerate() {
        v |= hex(c) << (12 - 4 * i);
    }
    v.swap_bytes()
}

/// `Name (path, value)`; `value` is an encoded data object.
pub fn name(path: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x08];
    out.extend(name_string(path));
    out.extend_from_slice(value);
    out
}

/// `Scope (path) { body }`.
pub fn scope(path: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = name_string(path);
    inner.extend_from_slice(body);
    let mut out = vec![0x10];
    out.extend(with_pkg_length(&inner));
    out
}

/// `Device (path) { body }`.
pub fn device(path: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = name_string(path);
    inner.extend_from_slice(body);
    let mut out = vec![0x5B, 0x82];
    out.extend(with_pkg_length(&inner));
    out
}

/// `Method (path, args, NotSerialized or Serialized) { body }`.
pub fn method(path: &str, args: u8, serialized: bool, body: &[u8]) -> Vec<u8> {
    let mut inner = name_string(path);
    inner.push((args & 7) | if serialized { 8 } else { 0 });
    inner.extend_from_slice(body);
    let mut out = vec![0x14];
    out.extend(with_pkg_length(&inner));
    out
}

/// `Return (value)`.
pub fn return_(value: &[u8]) -> Vec<u8> {
    let mut out = vec![0xA4];
    out.extend_from_slice(value);
    out
}

/// `Package () { elements }`.
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    assert!(elements.len() <= 0xFF, "AML package of too many elements");
    let mut inner = vec![elements.len() as u8];
    for e in elements {
        inner.extend_from_slice(e);
    }
    let mut out = vec![0x12];
    out.extend(with_pkg_length(&inner));
    out
}

/// `Buffer () { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut inner = integer(bytes.len() as u64);
    inner.extend_from_slice(bytes);
    let mut out = vec![0x11];
    out.extend(with_pkg_length(&inner));
    out
}

/// Resource descriptors, for `ResourceTemplate () { ... }` ([`resource_template`]).
pub mod res {
    /// Address space descriptor general flags: the window is produced for child devices
    /// (bit 0 clear), positive decode, fixed minimum and maximum addresses.
    const PRODUCER_FIXED: u8 = 0b1100;

    fn word_address(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
        let mut out = vec![0x88, 0x0D, 0x00, kind, PRODUCER_FIXED, type_flags];
        let len = max.wrapping_sub(min).wrapping_add(1);
        for v in [0, min, max, 0, len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// `WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0,
    /// len)`.
    pub fn word_bus_number(min: u16, max: u16) -> Vec<u8> {
        word_address(2, 0, min, max)
    }

    /// `WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min,
    /// max, 0, len)`.
    pub fn word_io(min: u16, max: u16) -> Vec<u8> {
        word_address(1, 0b11, min, max)
    }

    /// `DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable or
    /// NonCacheable, ReadWrite, 0, min, max, 0, len)`.
    pub fn dword_memory(cacheable: bool, min: u32, max: u32) -> Vec<u8> {
        let type_flags = if cacheable { 0b011 } else { 0b001 };
        let mut out = vec![0x87, 0x17, 0x00, 0, PRODUCER_FIXED, type_flags];
        let len = max.wrapping_sub(min).wrapping_add(1);
        for v in [0, min, max, 0, len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// `IO (Decode16, min, max, alignment, len)`.
    pub fn io(min: u16, max: u16, alignment: u8, len: u8) -> Vec<u8> {
        let mut out = vec![0x47, 0x01];
        out.extend_from_slice(&min.to_le_bytes());
        out.extend_from_slice(&max.to_le_bytes());
        out.extend_from_slice(&[alignment, len]);
        out
    }

    /// The End Tag, checksum 0 (which means "not checksummed").
    pub fn end_tag() -> Vec<u8> {
        vec![0x79, 0x00]
    }
}

/// `ResourceTemplate () { descriptors }`: a buffer of the descriptors and an end tag.
pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes: Vec<u8> = descriptors.concat();
    bytes.extend(res::end_tag());
    buffer(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_lengths() {
        assert_eq!(pkg_length(0), [0x01]);
        assert_eq!(pkg_length(62), [0x3F]);
        // 63 bytes of content: 65 with a 2-byte PkgLength = 0x041.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        assert_eq!(pkg_length(0xFFD), [0x4F, 0xFF]);
        // 0xFFE + 3 = 0x1001.
        assert_eq!(pkg_length(0xFFE), [0x81, 0x00, 0x01]);
        // 0xFFFFD + 4 = 0x100001.
        assert_eq!(pkg_length(0xFFFFD), [0xC1, 0x00, 0x00, 0x01]);
    }

    #[test]
    fn eisa_ids() {
        assert_eq!(eisa_id("PNP0A03"), 0x030A_D041);
        assert_eq!(
            integer(eisa_id("PNP0A03").into()),
            [0x0C, 0x41, 0xD0, 0x0A, 0x03]
        );
        assert_eq!(eisa_id("PNP0C0F"), 0x0F0C_D041);
    }

    #[test]
    fn integers_and_names() {
        assert_eq!(integer(0), [0x00]);
        assert_eq!(integer(1), [0x01]);
        assert_eq!(integer(0xFF), [0x0A, 0xFF]);
        assert_eq!(integer(0xFFFF), [0x0B, 0xFF, 0xFF]);
        assert_eq!(integer(0x1_0000), [0x0C, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(name_string("_S5"), b"_S5_");
        assert_eq!(name_string("\\_SB.PCI0"), b"\\\x2E_SB_PCI0");
        assert_eq!(name_string("\\_SB.PCI0.ISA"), b"\\\x2F\x03_SB_PCI0ISA_");
        assert_eq!(
            name("_UID", &integer(0)),
            [0x08, b'_', b'U', b'I', b'D', 0x00]
        );
        assert_eq!(
            device("PCI0", &[]),
            [0x5B, 0x82, 0x05, b'P', b'C', b'I', b'0']
        );
    }

    #[test]
    fn resource_templates() {
        let t = resource_template(&[res::word_bus_number(0, 0xFF)]);
        // Buffer, PkgLength, size 18 (BytePrefix), 16 bytes of descriptor, end tag.
        assert_eq!(&t[..4], [0x11, 0x15, 0x0A, 18]);
        assert_eq!(
            &t[4..20],
            [0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0x00, 0x01]
        );
        assert_eq!(&t[20..], [0x79, 0x00]);
        let m = res::dword_memory(false, 0x1000_0000, 0xFEBF_FFFF);
        assert_eq!(m.len(), 26);
        assert_eq!(&m[22..26], 0xEEC0_0000u32.to_le_bytes());
        assert_eq!(
            res::io(0xCF8, 0xCF8, 1, 8),
            [0x47, 1, 0xF8, 0x0C, 0xF8, 0x0C, 1, 8]
        );
    }
}
