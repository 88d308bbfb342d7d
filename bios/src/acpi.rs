//! ACPI tables: just enough for an operating system to power the machine off.
//!
//! RSDP (in the ROM) -> RSDT -> FADT -> FACS and a DSDT whose only object is `\_S5`, the
//! soft-off sleep type. The FADT points at a PIIX4-style power-management block at port
//! 600h: PM1a event (600h), PM1a control (604h) and the PM timer (608h). Writing
//! SLP_TYP=5 with SLP_EN to PM1a control powers the machine off; the machine implements
//! that block (see the machine crate). ACPI is always enabled (no SMI command port), so
//! PM1a control reads with SCI_EN set.

/// Power-management I/O ports.
pub const PM_BASE: u16 = 0x600;
pub const PM1A_EVT: u16 = PM_BASE;
pub const PM1A_CNT: u16 = PM_BASE + 4;
pub const PM_TMR: u16 = PM_BASE + 8;
/// The sleep type `\_S5` declares (written to PM1a control bits 10-12).
pub const SLP_TYP_S5: u16 = 5;
/// PM1 control: SLP_EN.
pub const SLP_EN: u16 = 1 << 13;
/// The SCI interrupt line.
pub const SCI_IRQ: u8 = 9;

/// Bytes reserved at the top of RAM for the tables.
pub const TABLES_SIZE: u64 = 0x1_0000;

const OEM_ID: &[u8; 6] = b"HOSPES";
const OEM_TABLE_ID: &[u8; 8] = b"HOSPESPC";

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// A table with the standard 36-byte header; the checksum is filled in.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"HSPS");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The tables for a machine with `ram_size` bytes of RAM: the RSDP (for the ROM) and
/// the block of tables to place at `tables_base(ram_size)`.
pub struct AcpiTables {
    pub rsdp: Vec<u8>,
    pub base: u32,
    pub tables: Vec<u8>,
}

pub fn tables_base(ram_size: u64) -> u32 {
    (ram_size - TABLES_SIZE) as u32
}

pub fn build(ram_size: u64) -> AcpiTables {
    let base = tables_base(ram_size);
    // Layout inside the block: FACS (64-byte aligned) first, then DSDT, FADT, RSDT.
    let facs_at = base;
    let mut facs = vec![0u8; 64];
    facs[0..4].copy_from_slice(b"FACS");
    facs[4..8].copy_from_slice(&64u32.to_le_bytes());

    // DSDT: Name (_S5_, Package (4) { 5, 5, 0, 0 })
    let aml = [
        0x08,
        b'_',
        b'S',
        b'5',
        b'_',
        0x12,
        0x08,
        0x04,
        0x0A,
        SLP_TYP_S5 as u8,
        0x0A,
        SLP_TYP_S5 as u8,
        0x00,
        0x00,
    ];
    let dsdt = table(b"DSDT", 1, &aml);
    let dsdt_at = facs_at + facs.len() as u32;

    let mut f = vec![0u8; 116 - 36];
    let put32 = |f: &mut Vec<u8>, off: usize, v: u32| {
        f[off - 36..off - 32].copy_from_slice(&v.to_le_bytes());
    };
    put32(&mut f, 36, facs_at);
    put32(&mut f, 40, dsdt_at);
    f[46 - 36..48 - 36].copy_from_slice(&(SCI_IRQ as u16).to_le_bytes());
    put32(&mut f, 56, PM1A_EVT as u32);
    put32(&mut f, 64, PM1A_CNT as u32);
    put32(&mut f, 76, PM_TMR as u32);
    f[88 - 36] = 4; // PM1_EVT_LEN
    f[89 - 36] = 2; // PM1_CNT_LEN
    f[91 - 36] = 4; // PM_TMR_LEN
    f[96 - 36..98 - 36].copy_from_slice(&101u16.to_le_bytes()); // no C2
    f[98 - 36..100 - 36].copy_from_slice(&1001u16.to_le_bytes()); // no C3
    f[108 - 36] = 0x32; // RTC century register
                        // Flags: WBINVD, C1 supported, no power or sleep button.
    put32(&mut f, 112, 1 | 1 << 2 | 1 << 4 | 1 << 5);
    let fadt = table(b"FACP", 1, &f);
    let fadt_at = dsdt_at + dsdt.len() as u32;

    let rsdt = table(b"RSDT", 1, &fadt_at.to_le_bytes());
    let rsdt_at = fadt_at + fadt.len() as u32;

    let mut tables = facs;
    tables.extend_from_slice(&dsdt);
    tables.extend_from_slice(&fadt);
    tables.extend_from_slice(&rsdt);

    let mut rsdp = Vec::with_capacity(20);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(0); // ACPI 1.0
    rsdp.extend_from_slice(&rsdt_at.to_le_bytes());
    rsdp[8] = checksum(&rsdp);
    AcpiTables { rsdp, base, tables }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn tables_checksum_and_link_up() {
        let t = build(256 << 20);
        assert_eq!(sum(&t.rsdp), 0);
        let rsdt_at = u32::from_le_bytes(t.rsdp[16..20].try_into().unwrap());
        let at = |addr: u32| (addr - t.base) as usize;
        let rsdt = &t.tables[at(rsdt_at)..];
        assert_eq!(&rsdt[0..4], b"RSDT");
        let len = u32::from_le_bytes(rsdt[4..8].try_into().unwrap()) as usize;
        assert_eq!(sum(&rsdt[..len]), 0);
        let fadt_at = u32::from_le_bytes(rsdt[36..40].try_into().unwrap());
        let fadt = &t.tables[at(fadt_at)..at(fadt_at) + 116];
        assert_eq!(&fadt[0..4], b"FACP");
        assert_eq!(sum(fadt), 0);
        let dsdt_at = u32::from_le_bytes(fadt[40..44].try_into().unwrap());
        let dsdt = &t.tables[at(dsdt_at)..];
        assert_eq!(&dsdt[0..4], b"DSDT");
        let dlen = u32::from_le_bytes(dsdt[4..8].try_into().unwrap()) as usize;
        assert_eq!(sum(&dsdt[..dlen]), 0);
        assert_eq!(&dsdt[36..41], b"\x08_S5_");
        assert_eq!(u32::from_le_bytes(fadt[64..68].try_into().unwrap()), 0x604);
        let facs_at = u32::from_le_bytes(fadt[36..40].try_into().unwrap());
        assert_eq!(facs_at % 64, 0);
    }
}
