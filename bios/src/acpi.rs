//! ACPI tables: enough for an operating system to find the PCI bus, route its
//! interrupts, and power the machine off.
//!
//! RSDP (in the ROM) -> RSDT -> FADT -> FACS and a DSDT (AML built with [`crate::aml`])
//! holding:
//!
//! - `\_S5`, the soft-off sleep type. The FADT points at a PIIX4-style power-management
//!   block at port 600h: PM1a event (600h), PM1a control (604h) and the PM timer (608h).
//!   Writing SLP_TYP=5 with SLP_EN to PM1a control powers the machine off; the machine
//!   implements that block (see the machine crate). ACPI is always enabled (no SMI
//!   command port), so PM1a control reads with SCI_EN set.
//! - `\_SB.PCI0`, the PCI root bridge (`_HID` PNP0A03, `_ADR`/`_UID`/`_BBN` 0). With
//!   ACPI an OS (Linux on x86, for one) only scans PCI buses an ACPI root bridge names.
//!   Its `_CRS` gives bus numbers 00-FFh, the configuration ports CF8h-CFFh (consumed),
//!   the I/O windows 0000h-0CF7h and 0D00h-FFFFh, the legacy VGA window A0000h-BFFFFh,
//!   and the 32-bit memory window from the end of RAM to FEBFFFFFh where the OS may put
//!   BARs.
//! - `\_SB.PCI0._PRT`: the interrupt routing of every device slot (0-31) and pin
//!   (INTA-INTD), to fixed GSIs (no link devices). It follows the PIIX3 wiring of
//!   [`pci_pirq`] (slot N's INTA drives PIRQ (N - 1) mod 4, INTB the next one, ...) and
//!   the PIRQ route registers (PIIX3 60h-63h) the BIOS programs at POST to
//!   [`PIRQ_IRQS`] (PIRQA/B -> IRQ 10, PIRQC/D -> IRQ 11, level-triggered in the ELCR),
//!   the routing SeaBIOS programs too, so the table holds with either firmware. Without
//!   an I/O APIC the GSIs are the 8259 inputs. An OS that reprograms 60h-63h itself
//!   (without ACPI) must not trust this table; one that uses it leaves them alone.

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

/// The IRQ each PIRQ line (PIRQA-PIRQD) is routed to: what the BIOS writes to the PIIX3
/// PIRQ route registers (60h-63h) and what `_PRT` tells the OS.
pub const PIRQ_IRQS: [u8; 4] = [10, 10, 11, 11];

/// The PIRQ line (0-3, PIRQA-PIRQD) that PCI `slot`'s interrupt `pin` (0-3, INTA-INTD)
/// drives: the i440FX/PIIX3 board wiring (as QEMU and SeaBIOS have it), each slot
/// rotated by one so that slot 1's INTA is PIRQA. The machine must wire a device's
/// INTx with this too.
pub fn pci_pirq(slot: u8, pin: u8) -> u8 {
    (slot.wrapping_add(pin).wrapping_add(3)) & 3
}

/// The top of the 32-bit PCI memory window (below the I/O APIC and other chipset
/// addresses at FEC00000h).
pub const PCI_MEM_END: u32 = 0xFEBF_FFFF;

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

/// The DSDT's AML (the table without its header).
fn dsdt_aml(ram_size: u64) -> Vec<u8> {
    use crate::aml::{self, integer, name, res};
    // Name (_S5_, Package (4) { 5, 5, 0, 0 })
    let s5 = name(
        "_S5",
        &aml::package(&[
            vec![0x0A, SLP_TYP_S5 as u8],
            vec![0x0A, SLP_TYP_S5 as u8],
            integer(0),
            integer(0),
        ]),
    );

    let mut windows = vec![
        res::word_bus_number(0x00, 0xFF),
        res::io(0xCF8, 0xCF8, 1, 8),
        res::word_io(0x0000, 0x0CF7),
        res::word_io(0x0D00, 0xFFFF),
        res::dword_memory(true, 0x000A_0000, 0x000B_FFFF),
    ];
    if ram_size < u64::from(PCI_MEM_END) {
        windows.push(res::dword_memory(false, ram_size as u32, PCI_MEM_END));
    }

    // Package { Package { slot << 16 | FFFF, pin, 0 (no link: a GSI), GSI }, ... }
    let prt: Vec<Vec<u8>> = (0..32u8)
        .flat_map(|slot| (0..4u8).map(move |pin| (slot, pin)))
        .map(|(slot, pin)| {
            let gsi = PIRQ_IRQS[usize::from(pci_pirq(slot, pin))];
            aml::package(&[
                integer(u64::from(slot) << 16 | 0xFFFF),
                integer(pin.into()),
                integer(0),
                integer(gsi.into()),
            ])
        })
        .collect();

    let pci0 = [
        name("_HID", &integer(aml::eisa_id("PNP0A03").into())),
        name("_ADR", &integer(0)),
        name("_UID", &integer(0)),
        name("_BBN", &integer(0)),
        name("_CRS", &aml::resource_template(&windows)),
        name("_PRT", &aml::package(&prt)),
    ]
    .concat();

    let mut out = s5;
    out.extend(aml::scope("\\_SB", &aml::device("PCI0", &pci0)));
    out
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

    let aml = dsdt_aml(ram_size);
    let dsdt = table(b"DSDT", 1, &aml);
    assert!(
        facs.len() + dsdt.len() + 116 + 40 <= TABLES_SIZE as usize,
        "ACPI tables too large"
    );
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

    /// The DSDT of a machine with `ram` bytes of RAM.
    fn dsdt(ram: u64) -> Vec<u8> {
        let t = build(ram);
        let at = |addr: u32| (addr - t.base) as usize;
        let rsdt_at = u32::from_le_bytes(t.rsdp[16..20].try_into().unwrap());
        let rsdt = &t.tables[at(rsdt_at)..];
        let fadt_at = u32::from_le_bytes(rsdt[36..40].try_into().unwrap());
        let fadt = &t.tables[at(fadt_at)..];
        let dsdt_at = u32::from_le_bytes(fadt[40..44].try_into().unwrap());
        let dsdt = &t.tables[at(dsdt_at)..];
        let len = u32::from_le_bytes(dsdt[4..8].try_into().unwrap()) as usize;
        dsdt[..len].to_vec()
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn dsdt_has_the_pci_root_bridge() {
        let d = dsdt(256 << 20);
        assert_eq!(&d[0..4], b"DSDT");
        assert_eq!(sum(&d), 0);
        let aml = dsdt_aml(256 << 20);
        assert_eq!(d.len(), 36 + aml.len());
        assert_eq!(&d[36..], &aml[..]);
        // _S5 unchanged: Name (_S5_, Package (4) { 5, 5, 0, 0 }).
        assert_eq!(&d[36..50], b"\x08_S5_\x12\x08\x04\x0A\x05\x0A\x05\x00\x00");
        // Scope (\_SB) { Device (PCI0) { ... } } fills the rest of the table: the
        // PkgLengths (2 bytes each, lead byte 01b in bits 7:6) cover it exactly.
        let scope = &d[50..];
        assert_eq!(scope[0], 0x10);
        assert_eq!(scope[1] >> 6, 1);
        let scope_len = usize::from(scope[1] & 0x0F) | usize::from(scope[2]) << 4;
        assert_eq!(1 + scope_len, scope.len());
        assert_eq!(&scope[3..8], b"\\_SB_");
        assert_eq!(&scope[8..10], [0x5B, 0x82]);
        let dev_len = usize::from(scope[10] & 0x0F) | usize::from(scope[11]) << 4;
        assert_eq!(10 + dev_len, scope.len());
        assert_eq!(&scope[12..16], b"PCI0");
        // _HID EISAID ("PNP0A03").
        assert!(find(&d, b"\x08_HID\x0C\x41\xD0\x0A\x03").is_some());
        // 128 _PRT entries; slot 1 INTA -> PIRQA -> IRQ 10, slot 2 INTA -> PIRQB -> IRQ
        // 10, slot 3 INTA -> PIRQC -> IRQ 11, slots 0 and 31: PIRQD and PIRQC, IRQ 11.
        let prt = find(&d, b"_PRT").unwrap();
        assert_eq!(d[prt + 4], 0x12);
        assert_eq!(d[prt + 7], 128);
        for (slot, irq) in [(0u32, 11u8), (1, 10), (2, 10), (3, 11), (31, 11)] {
            let addr = slot << 16 | 0xFFFF;
            let mut entry = crate::aml::integer(addr.into());
            entry.extend([0x00, 0x00, 0x0A, irq]);
            assert!(find(&d[prt..], &entry).is_some(), "slot {slot}");
        }
    }

    #[test]
    fn pci0_crs_windows() {
        let d = dsdt(256 << 20);
        let crs = find(&d, b"_CRS").unwrap();
        assert_eq!(d[crs + 4], 0x11); // Buffer
                                      // Bus numbers 0-FFh.
        let bus = [0x88, 0x0D, 0, 2, 0x0C, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 1];
        assert!(find(&d[crs..], &bus).is_some());
        // PCI memory from the end of RAM up to FEBFFFFFh.
        let mut mem = vec![0x87, 0x17, 0, 0, 0x0C, 0x01, 0, 0, 0, 0];
        mem.extend(0x1000_0000u32.to_le_bytes());
        mem.extend(PCI_MEM_END.to_le_bytes());
        mem.extend([0, 0, 0, 0]);
        mem.extend((PCI_MEM_END - 0x1000_0000 + 1).to_le_bytes());
        let at = find(&d[crs..], &mem).unwrap();
        // The end tag closes the template (and the buffer), checksum 0.
        assert_eq!(
            &d[crs + at + mem.len()..crs + at + mem.len() + 2],
            [0x79, 0x00]
        );
        assert_eq!(
            &d[crs + at + mem.len() + 2..crs + at + mem.len() + 7],
            b"\x08_PRT"
        );
        // If asked, leave the table for a disassembler (iasl -d).
        if let Some(path) = std::env::var_os("HOSPES_DSDT_OUT") {
            std::fs::write(path, &d).unwrap();
        }
    }

    #[test]
    fn pirq_swizzle() {
        assert_eq!(pci_pirq(1, 0), 0);
        assert_eq!(pci_pirq(1, 3), 3);
        assert_eq!(pci_pirq(2, 0), 1);
        assert_eq!(pci_pirq(0, 0), 3);
        assert_eq!(pci_pirq(4, 1), 0);
    }
}
