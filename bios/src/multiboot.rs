//! Direct Multiboot boot: loading a kernel that carries a Multiboot (version 1) header,
//! with its boot modules and command line, the way a Multiboot boot loader does
//! (the Multiboot Specification 0.6.96).
//!
//! The kernel is either an ELF32 i386 executable, whose `PT_LOAD` segments are copied to
//! their physical addresses, or any image whose header has the address fields (flag 16,
//! the "a.out kludge"). Everything the kernel and its modules occupy must lie in the RAM
//! the E820 map gives the OS above 1 MiB: below 1 MiB live the IVT, BDA, EBDA and ROM,
//! and GRUB refuses low loads too. Modules follow the kernel, each on a page boundary.
//!
//! The Multiboot information structure (MBI), its memory map, module list and strings,
//! and the GDT the kernel is entered with go in a *boot data area* at the top of
//! conventional memory, just below the EBDA. The E820 map marks that area reserved (see
//! [`crate::e820_map_with_boot_data`]), so a kernel that trusts the map never overwrites
//! what it has not read yet, and the MBI's own memory map says the same.

use crate::system::{e820_map_with_boot_data, E820Entry};
use crate::EBDA;
use std::fmt;

/// The header magic a kernel carries.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// What EAX holds when the kernel is entered.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie wholly within this many bytes from the start of the file.
const HEADER_SEARCH_LIMIT: usize = 8192;

/// Header flags 0-15 are requirements: a loader must refuse a kernel with one it does
/// not know. We know these three. Modules are always page-aligned (bit 0) and memory
/// information is always given (bit 1). Bit 2 asks for the video mode table; like QEMU
/// we boot the kernel in the text mode POST left and report no video information, which
/// the kernel sees as the MBI's video flags (bits 11 and 12) being clear.
const HF_PAGE_ALIGN_MODULES: u32 = 1 << 0;
const HF_MEMORY_INFO: u32 = 1 << 1;
const HF_VIDEO_MODE: u32 = 1 << 2;
const HF_KNOWN_REQUIREMENTS: u32 = HF_PAGE_ALIGN_MODULES | HF_MEMORY_INFO | HF_VIDEO_MODE;
const HF_REQUIREMENTS: u32 = 0xFFFF;
/// Bit 16: the header's address fields say where to load the image.
const HF_ADDRESS_FIELDS: u32 = 1 << 16;

/// MBI flags: which fields of the information structure are valid.
pub const INFO_MEMORY: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MMAP: u32 = 1 << 6;
pub const INFO_LOADER_NAME: u32 = 1 << 9;

/// Lowest address a kernel or module may occupy.
pub const LOAD_FLOOR: u32 = 0x10_0000;
/// The boot data area may grow down from the EBDA to here (the rest of conventional
/// memory stays free for the kernel: real-mode trampolines and the like).
const BOOT_DATA_FLOOR: u32 = 0x8_0000;
/// Modules start on page boundaries.
const PAGE: u64 = 0x1000;

/// Layout of the boot data area, as offsets from its start.
const MBI_SIZE: usize = 116;
const GDT_OFFSET: usize = 128;
const GDT_ENTRIES: [u64; 3] = [
    0,
    // 0x08: code, base 0, limit 4 GiB, execute/read, 32-bit, accessed (so loading it
    // needs no write to the table).
    0x00CF_9B00_0000_FFFF,
    // 0x10: data, base 0, limit 4 GiB, read/write, 32-bit, accessed.
    0x00CF_9300_0000_FFFF,
];
const MMAP_OFFSET: usize = GDT_OFFSET + 8 * GDT_ENTRIES.len();
const _: () = assert!(MBI_SIZE <= GDT_OFFSET);
/// An MBI memory map entry: size (20), base (u64), length (u64), type.
const MMAP_ENTRY_SIZE: usize = 24;
/// A module entry: mod_start, mod_end, string, reserved.
const MODULE_ENTRY_SIZE: usize = 16;

/// Selectors of the GDT the kernel is entered with.
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

const LOADER_NAME: &str = "hospes";

/// Why a Multiboot kernel cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultibootError {
    NoHeader,
    /// The header's fields past the magic and checksum run off the file or out of the
    /// first 8192 bytes.
    TruncatedHeader,
    /// Requirement flags (bits 0-15) we do not know.
    UnsupportedFlags(u32),
    BadAddressFields(&'static str),
    /// Neither address fields nor an ELF header.
    NoElf,
    BadElf(&'static str),
    /// The file ends before the data the headers point at.
    Truncated(&'static str),
    NoLoadableSegments,
    /// A piece of the kernel would land outside the RAM a kernel may use.
    OutOfRange {
        what: &'static str,
        start: u64,
        end: u64,
        ceiling: u32,
    },
    EntryOutsideKernel(u32),
    /// The modules do not fit in RAM after the kernel.
    NoRoomForModule {
        index: usize,
        size: usize,
    },
    /// The command line and module strings do not fit in the boot data area.
    BootDataTooBig {
        needed: usize,
        room: usize,
    },
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultibootError::NoHeader => write!(
                f,
                "no Multiboot header (magic {HEADER_MAGIC:#010x} with a valid checksum) in the first {HEADER_SEARCH_LIMIT} bytes"
            ),
            MultibootError::TruncatedHeader => write!(
                f,
                "the Multiboot header is cut off (its fields must lie in the file's first {HEADER_SEARCH_LIMIT} bytes)"
            ),
            MultibootError::UnsupportedFlags(bits) => write!(
                f,
                "the Multiboot header requires features this loader does not support (flags {bits:#010x})"
            ),
            MultibootError::BadAddressFields(why) => {
                write!(f, "bad Multiboot header address fields: {why}")
            }
            MultibootError::NoElf => write!(
                f,
                "the Multiboot kernel is not ELF and its header has no address fields (flag 16)"
            ),
            MultibootError::BadElf(why) => write!(f, "bad ELF kernel: {why}"),
            MultibootError::Truncated(what) => write!(f, "the kernel file ends inside the {what}"),
            MultibootError::NoLoadableSegments => {
                write!(f, "the ELF kernel has no loadable segments")
            }
            MultibootError::OutOfRange {
                what,
                start,
                end,
                ceiling,
            } => write!(
                f,
                "the {what} at {start:#x}-{end:#x} is outside the RAM a kernel may use ({LOAD_FLOOR:#x}-{ceiling:#x}; see -m)"
            ),
            MultibootError::EntryOutsideKernel(at) => {
                write!(f, "the kernel's entry point {at:#x} is not in anything it loads")
            }
            MultibootError::NoRoomForModule { index, size } => write!(
                f,
                "not enough guest memory for module {} ({size} bytes) after the kernel",
                index + 1
            ),
            MultibootError::BootDataTooBig { needed, room } => write!(
                f,
                "the command line and module strings need {needed} bytes of boot information, {room} fit"
            ),
        }
    }
}

impl std::error::Error for MultibootError {}

/// A boot module: its contents and its string (QEMU's convention: the whole `--initrd`
/// entry, file name and arguments).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Module {
    pub data: Vec<u8>,
    pub string: String,
}

/// A Multiboot kernel to boot directly.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MultibootBoot {
    pub kernel: Vec<u8>,
    /// The command line the kernel sees (by QEMU's convention, starting with the
    /// kernel's file name).
    pub cmdline: String,
    pub modules: Vec<Module>,
}

/// A part of the kernel to place: `data` at `addr`, then `zeros` bytes of zeros (bss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSegment<'a> {
    pub addr: u32,
    pub data: &'a [u8],
    pub zeros: u32,
}

impl LoadSegment<'_> {
    fn end(&self) -> u64 {
        self.addr as u64 + self.data.len() as u64 + self.zeros as u64
    }
}

/// What the kernel file says to load and where to enter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLayout<'a> {
    pub header_flags: u32,
    pub segments: Vec<LoadSegment<'a>>,
    pub entry: u32,
}

/// What to write into guest memory and how to enter the kernel.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MultibootImage {
    /// (physical address, bytes) to copy into guest memory.
    pub chunks: Vec<(u32, Vec<u8>)>,
    /// (physical address, length) ranges to clear (the kernel's bss).
    pub zeros: Vec<(u32, u32)>,
    pub entry: u32,
    /// Physical address of the MBI (EBX at entry).
    pub info_addr: u32,
    /// The GDT the segment registers were loaded from: base and limit.
    pub gdt_base: u32,
    pub gdt_limit: u16,
    /// Start of the reserved boot data area (it ends at the EBDA).
    pub boot_data_base: u32,
    /// Where each module went: (start, end).
    pub modules: Vec<(u32, u32)>,
}

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

/// The offset of the first valid Multiboot header: 4-byte aligned, magic, flags and
/// checksum summing to zero, all within the first 8192 bytes.
pub fn find_header(kernel: &[u8]) -> Option<usize> {
    let window = &kernel[..kernel.len().min(HEADER_SEARCH_LIMIT)];
    (0..window.len().saturating_sub(11))
        .step_by(4)
        .find(|&off| {
            let field = |i: usize| u32_at(window, off + 4 * i).unwrap_or(0);
            field(0) == HEADER_MAGIC && field(0).wrapping_add(field(1)).wrapping_add(field(2)) == 0
        })
}

/// Whether `kernel` carries a Multiboot header.
pub fn is_multiboot(kernel: &[u8]) -> bool {
    find_header(kernel).is_some()
}

/// Reads the header and the ELF or address fields: what to load where, and the entry
/// point. Checks only the file itself; [`load`] checks the addresses against the RAM.
pub fn parse(kernel: &[u8]) -> Result<KernelLayout<'_>, MultibootError> {
    let at = find_header(kernel).ok_or(MultibootError::NoHeader)?;
    let window = &kernel[..kernel.len().min(HEADER_SEARCH_LIMIT)];
    let header_flags = u32_at(window, at + 4).ok_or(MultibootError::TruncatedHeader)?;
    let unknown = header_flags & HF_REQUIREMENTS & !HF_KNOWN_REQUIREMENTS;
    if unknown != 0 {
        return Err(MultibootError::UnsupportedFlags(unknown));
    }
    let (segments, entry) = if header_flags & HF_ADDRESS_FIELDS != 0 {
        let field =
            |i: usize| u32_at(window, at + 12 + 4 * i).ok_or(MultibootError::TruncatedHeader);
        parse_address_fields(
            kernel,
            at,
            [field(0)?, field(1)?, field(2)?, field(3)?, field(4)?],
        )?
    } else {
        parse_elf(kernel)?
    };
    Ok(KernelLayout {
        header_flags,
        segments,
        entry,
    })
}

/// The a.out kludge: header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
fn parse_address_fields(
    kernel: &[u8],
    header_offset: usize,
    [header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr]: [u32; 5],
) -> Result<(Vec<LoadSegment<'_>>, u32), MultibootError> {
    // The file offset that load_addr corresponds to: the header's offset less the
    // distance from load_addr up to the header.
    let before_header =
        header_addr
            .checked_sub(load_addr)
            .ok_or(MultibootError::BadAddressFields(
                "load_addr is above header_addr",
            ))?;
    let file_start = header_offset.checked_sub(before_header as usize).ok_or(
        MultibootError::BadAddressFields("load_addr would start before the file does"),
    )?;
    let load_len = if load_end_addr == 0 {
        (kernel.len() - file_start) as u64
    } else {
        load_end_addr
            .checked_sub(load_addr)
            .ok_or(MultibootError::BadAddressFields(
                "load_end_addr is below load_addr",
            ))? as u64
    };
    if file_start as u64 + load_len > kernel.len() as u64 {
        return Err(MultibootError::Truncated(
            "text and data up to load_end_addr",
        ));
    }
    let load_end = load_addr as u64 + load_len;
    let zeros = if bss_end_addr == 0 {
        0
    } else {
        (bss_end_addr as u64)
            .checked_sub(load_end)
            .ok_or(MultibootError::BadAddressFields(
                "bss_end_addr is below the end of the loaded data",
            ))? as u32
    };
    let data = &kernel[file_start..file_start + load_len as usize];
    Ok((
        vec![LoadSegment {
            addr: load_addr,
            data,
            zeros,
        }],
        entry_addr,
    ))
}

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const ELF_HEADER_SIZE: usize = 52;
const PROGRAM_HEADER_SIZE: usize = 32;

/// An ELF32 i386 executable: its `PT_LOAD` segments at their physical addresses.
fn parse_elf(kernel: &[u8]) -> Result<(Vec<LoadSegment<'_>>, u32), MultibootError> {
    if kernel.get(..4) != Some(b"\x7FELF") {
        return Err(MultibootError::NoElf);
    }
    if kernel.len() < ELF_HEADER_SIZE {
        return Err(MultibootError::Truncated("ELF header"));
    }
    if kernel[4] != 1 {
        return Err(MultibootError::BadElf("not a 32-bit ELF (ELFCLASS32)"));
    }
    if kernel[5] != 1 {
        return Err(MultibootError::BadElf("not little-endian"));
    }
    let half = |off| u16_at(kernel, off).unwrap_or(0);
    let word = |off| u32_at(kernel, off).unwrap_or(0);
    if half(16) != ET_EXEC {
        return Err(MultibootError::BadElf("not an executable (ET_EXEC)"));
    }
    if half(18) != EM_386 {
        return Err(MultibootError::BadElf("not an i386 program (EM_386)"));
    }
    let e_entry = word(24);
    let phoff = word(28) as u64;
    let phentsize = half(42) as u64;
    let phnum = half(44) as u64;
    if phnum == 0 {
        return Err(MultibootError::NoLoadableSegments);
    }
    if phentsize < PROGRAM_HEADER_SIZE as u64 {
        return Err(MultibootError::BadElf(
            "program header entries are too small",
        ));
    }
    if phoff + phnum * phentsize > kernel.len() as u64 {
        return Err(MultibootError::Truncated("program header table"));
    }
    let mut segments = Vec::new();
    // The entry point as a physical address: e_entry is a virtual address, the same as
    // the physical one unless the kernel is linked to run elsewhere (higher half).
    let mut entry = None;
    for i in 0..phnum {
        let ph = (phoff + i * phentsize) as usize;
        let field = |n: usize| word(ph + 4 * n);
        let (p_type, offset, vaddr, paddr, filesz, memsz) =
            (field(0), field(1), field(2), field(3), field(4), field(5));
        if p_type != PT_LOAD || memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(MultibootError::BadElf(
                "a segment's file size exceeds its memory size",
            ));
        }
        if offset as u64 + filesz as u64 > kernel.len() as u64 {
            return Err(MultibootError::Truncated("data of a loadable segment"));
        }
        if e_entry.wrapping_sub(vaddr) < memsz && entry.is_none() {
            entry = Some(paddr.wrapping_add(e_entry.wrapping_sub(vaddr)));
        }
        segments.push(LoadSegment {
            addr: paddr,
            data: &kernel[offset as usize..(offset + filesz) as usize],
            zeros: memsz - filesz,
        });
    }
    if segments.is_empty() {
        return Err(MultibootError::NoLoadableSegments);
    }
    Ok((segments, entry.unwrap_or(e_entry)))
}

fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Lays out a Multiboot kernel, its modules and the boot information for a machine with
/// `ram_size` bytes of RAM (at least 2 MiB).
pub fn load(boot: MultibootBoot, ram_size: u64) -> Result<MultibootImage, MultibootError> {
    let ceiling = crate::acpi::tables_base(ram_size);
    let layout = parse(&boot.kernel)?;
    let mut chunks = Vec::new();
    let mut zeros = Vec::new();
    let mut kernel_end = LOAD_FLOOR as u64;
    for (i, seg) in layout.segments.iter().enumerate() {
        if seg.addr < LOAD_FLOOR || seg.end() > ceiling as u64 {
            return Err(MultibootError::OutOfRange {
                what: if i == 0 { "kernel" } else { "kernel segment" },
                start: seg.addr as u64,
                end: seg.end(),
                ceiling,
            });
        }
        chunks.push((seg.addr, seg.data.to_vec()));
        if seg.zeros > 0 {
            zeros.push((seg.addr + seg.data.len() as u32, seg.zeros));
        }
        kernel_end = kernel_end.max(seg.end());
    }
    let entry_in_kernel = layout
        .segments
        .iter()
        .any(|s| (s.addr as u64..s.end()).contains(&(layout.entry as u64)));
    if !entry_in_kernel {
        return Err(MultibootError::EntryOutsideKernel(layout.entry));
    }

    let mut next = kernel_end;
    let mut module_places = Vec::new();
    for (index, m) in boot.modules.iter().enumerate() {
        let start = align_up(next, PAGE);
        let end = start + m.data.len() as u64;
        if end > ceiling as u64 {
            return Err(MultibootError::NoRoomForModule {
                index,
                size: m.data.len(),
            });
        }
        module_places.push((start as u32, end as u32));
        next = end;
    }

    // The boot data area: MBI, GDT, memory map, module list, then the strings. It ends
    // at the EBDA; its start is page-aligned so the E820 map stays tidy.
    let entries = e820_map_with_boot_data(ram_size, EBDA).len();
    let mods_offset = MMAP_OFFSET + entries * MMAP_ENTRY_SIZE;
    let strings_offset = mods_offset + boot.modules.len() * MODULE_ENTRY_SIZE;
    let strings_len = boot.cmdline.len()
        + 1
        + LOADER_NAME.len()
        + 1
        + boot
            .modules
            .iter()
            .map(|m| m.string.len() + 1)
            .sum::<usize>();
    let needed = strings_offset + strings_len;
    let room = (EBDA - BOOT_DATA_FLOOR) as usize;
    if needed > room {
        return Err(MultibootError::BootDataTooBig { needed, room });
    }
    let base = (EBDA - needed as u32) & !(PAGE as u32 - 1);
    let map = e820_map_with_boot_data(ram_size, base);
    debug_assert_eq!(map.len(), entries);
    let mut area = vec![0u8; (EBDA - base) as usize];
    let addr = |off: usize| base + off as u32;
    let put = |area: &mut [u8], off: usize, v: u32| {
        area[off..off + 4].copy_from_slice(&v.to_le_bytes());
    };

    for (i, d) in GDT_ENTRIES.iter().enumerate() {
        let off = GDT_OFFSET + 8 * i;
        area[off..off + 8].copy_from_slice(&d.to_le_bytes());
    }
    for (i, e) in map.iter().enumerate() {
        let off = MMAP_OFFSET + i * MMAP_ENTRY_SIZE;
        put(&mut area, off, (MMAP_ENTRY_SIZE - 4) as u32);
        area[off + 4..off + 12].copy_from_slice(&e.base.to_le_bytes());
        area[off + 12..off + 20].copy_from_slice(&e.length.to_le_bytes());
        put(&mut area, off + 20, e.kind);
    }
    let mut string_at = strings_offset;
    let mut put_string = |area: &mut [u8], s: &str| -> u32 {
        let at = string_at;
        area[at..at + s.len()].copy_from_slice(s.as_bytes());
        string_at += s.len() + 1;
        addr(at)
    };
    let cmdline = put_string(&mut area, &boot.cmdline);
    let loader_name = put_string(&mut area, LOADER_NAME);
    for (i, (m, &(start, end))) in boot.modules.iter().zip(&module_places).enumerate() {
        let off = mods_offset + i * MODULE_ENTRY_SIZE;
        let string = put_string(&mut area, &m.string);
        put(&mut area, off, start);
        put(&mut area, off + 4, end);
        put(&mut area, off + 8, string);
    }

    // The MBI itself.
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME;
    put(&mut area, 0, flags);
    put(&mut area, 4, 640);
    put(&mut area, 8, upper_memory_kib(&map));
    put(&mut area, 16, cmdline);
    put(&mut area, 20, boot.modules.len() as u32);
    put(&mut area, 24, addr(mods_offset));
    put(&mut area, 44, (map.len() * MMAP_ENTRY_SIZE) as u32);
    put(&mut area, 48, addr(MMAP_OFFSET));
    put(&mut area, 64, loader_name);

    chunks.push((base, area));
    for (m, &(start, _)) in boot.modules.into_iter().zip(&module_places) {
        chunks.push((start, m.data));
    }
    Ok(MultibootImage {
        chunks,
        zeros,
        entry: layout.entry,
        info_addr: base,
        gdt_base: addr(GDT_OFFSET),
        gdt_limit: (8 * GDT_ENTRIES.len() - 1) as u16,
        boot_data_base: base,
        modules: module_places,
    })
}

/// mem_upper: the KiB of usable RAM that continue without a gap from 1 MiB.
fn upper_memory_kib(map: &[E820Entry]) -> u32 {
    let mut end = 0x10_0000u64;
    while let Some(e) = map
        .iter()
        .find(|e| e.kind == 1 && e.base <= end && e.base + e.length > end)
    {
        end = e.base + e.length;
    }
    ((end - 0x10_0000) / 1024).min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, fields: &[u32]) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in fields {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// A flat image: `pad` bytes, then a flag-16 header loading the whole file (from
    /// offset 0) at 1 MiB with `bss` bytes of bss, entry just after the header, then code.
    fn flat_kernel(pad: usize, bss: u32) -> Vec<u8> {
        let base = 0x10_0000u32;
        let mut k = vec![0x90u8; pad];
        let code = vec![0xF4u8; 64];
        let len = pad + 32 + code.len();
        let load_end = base + len as u32;
        k.extend(header(
            HF_ADDRESS_FIELDS | HF_MEMORY_INFO,
            &[
                base + pad as u32,
                base,
                load_end,
                load_end + bss,
                base + pad as u32 + 32,
            ],
        ));
        k.extend(code);
        k
    }

    /// An ELF32 executable with the Multiboot header at 0xC0 and the given program
    /// headers: (type, offset, vaddr, paddr, filesz, memsz).
    fn elf(entry: u32, phdrs: &[[u32; 6]], file_len: usize) -> Vec<u8> {
        let mut k = vec![0u8; file_len.max(0x100)];
        k[..4].copy_from_slice(b"\x7FELF");
        k[4] = 1;
        k[5] = 1;
        k[6] = 1;
        k[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        k[18..20].copy_from_slice(&EM_386.to_le_bytes());
        k[24..28].copy_from_slice(&entry.to_le_bytes());
        k[28..32].copy_from_slice(&52u32.to_le_bytes());
        k[42..44].copy_from_slice(&32u16.to_le_bytes());
        k[44..46].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, ph) in phdrs.iter().enumerate() {
            for (j, v) in ph.iter().enumerate() {
                let at = 52 + 32 * i + 4 * j;
                k[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        let h = header(HF_MEMORY_INFO | HF_PAGE_ALIGN_MODULES, &[]);
        k[0xC0..0xC0 + h.len()].copy_from_slice(&h);
        k
    }

    fn boot(kernel: Vec<u8>) -> MultibootBoot {
        MultibootBoot {
            kernel,
            cmdline: "k.elf hello".into(),
            modules: Vec::new(),
        }
    }

    #[test]
    fn finds_only_aligned_headers_with_a_good_checksum_in_the_first_8k() {
        let h = header(0, &[]);
        let mut k = vec![0u8; 0x3000];
        k[0x1FFC - 12 + 4..0x1FFC + 4].copy_from_slice(&h);
        assert_eq!(find_header(&k), Some(0x1FF4));
        // Cut off by the 8 KiB limit.
        let mut k = vec![0u8; 0x3000];
        k[0x1FF8..0x2004].copy_from_slice(&h);
        assert_eq!(find_header(&k), None);
        // Misaligned.
        let mut k = vec![0u8; 0x100];
        k[0x12..0x1E].copy_from_slice(&h);
        assert_eq!(find_header(&k), None);
        // Bad checksum, then a good header later: the good one is found.
        let mut k = vec![0u8; 0x100];
        k[0x10..0x1C].copy_from_slice(&h);
        k[0x18] ^= 1;
        k[0x40..0x4C].copy_from_slice(&h);
        assert_eq!(find_header(&k), Some(0x40));
        // Too short to hold a header.
        assert_eq!(find_header(&h[..11]), None);
        assert_eq!(find_header(&h), Some(0));
        assert!(!is_multiboot(&[]));
    }

    #[test]
    fn rejects_unknown_requirement_flags_but_not_optional_ones() {
        let mut k = flat_kernel(0, 0);
        let with_flags = |k: &mut Vec<u8>, flags: u32| {
            k[4..8].copy_from_slice(&flags.to_le_bytes());
            let sum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
            k[8..12].copy_from_slice(&sum.to_le_bytes());
        };
        with_flags(&mut k, HF_ADDRESS_FIELDS | 1 << 3 | 1 << 15);
        assert_eq!(
            parse(&k).unwrap_err(),
            MultibootError::UnsupportedFlags(1 << 3 | 1 << 15)
        );
        with_flags(&mut k, HF_ADDRESS_FIELDS | HF_VIDEO_MODE | 1 << 20);
        assert!(parse(&k).is_ok());
    }

    #[test]
    fn address_fields_load_from_the_right_file_offset() {
        // 16 bytes of padding before the header, all loaded.
        let k = flat_kernel(16, 0x2000);
        let img = load(boot(k.clone()), 32 << 20).unwrap();
        assert_eq!(img.chunks[0], (0x10_0000, k.clone()));
        assert_eq!(img.zeros, vec![(0x10_0000 + k.len() as u32, 0x2000)]);
        assert_eq!(img.entry, 0x10_0000 + 16 + 32);

        // load_addr above the file's start: the first bytes are not loaded.
        let mut k = vec![0xAAu8; 0x20];
        k.extend(header(
            HF_ADDRESS_FIELDS,
            &[0x10_0010, 0x10_0000, 0, 0, 0x10_0010],
        ));
        k.extend([0xF4; 16]);
        let layout = parse(&k).unwrap();
        assert_eq!(layout.segments.len(), 1);
        assert_eq!(layout.segments[0].addr, 0x10_0000);
        assert_eq!(layout.segments[0].data, &k[0x10..]);
        assert_eq!(layout.segments[0].zeros, 0);
    }

    #[test]
    fn bad_address_fields_are_errors() {
        let cases: [([u32; 5], &str); 4] = [
            ([0x10_0000, 0x10_0010, 0, 0, 0x10_0000], "above header_addr"),
            ([0x10_1000, 0x10_0000, 0, 0, 0x10_0000], "before the file"),
            (
                [0x10_0000, 0x10_0000, 0x0F_0000, 0, 0x10_0000],
                "below load_addr",
            ),
            (
                [0x10_0000, 0x10_0000, 0x10_0030, 0x10_0010, 0x10_0000],
                "bss_end_addr",
            ),
        ];
        for (fields, why) in cases {
            let mut k = header(HF_ADDRESS_FIELDS, &fields);
            k.extend([0; 64]);
            let e = parse(&k).unwrap_err();
            assert!(e.to_string().contains(why), "{fields:x?}: {e}");
        }
        // load_end_addr past the end of the file.
        let mut k = header(
            HF_ADDRESS_FIELDS,
            &[0x10_0000, 0x10_0000, 0x10_1000, 0, 0x10_0000],
        );
        k.extend([0; 64]);
        assert!(matches!(parse(&k), Err(MultibootError::Truncated(_))));
        // The address fields themselves cut off.
        let k = header(HF_ADDRESS_FIELDS, &[0x10_0000, 0x10_0000]);
        assert_eq!(parse(&k).unwrap_err(), MultibootError::TruncatedHeader);
    }

    #[test]
    fn elf_segments_bss_and_entry() {
        let k = elf(
            0xC010_0010,
            &[
                [PT_LOAD, 0x100, 0xC010_0000, 0x10_0000, 0x40, 0x1000],
                [4, 0, 0, 0, 0x10, 0x10], // PT_NOTE: not loaded
                [PT_LOAD, 0x140, 0x20_0000, 0x20_0000, 0x20, 0x20],
                [PT_LOAD, 0, 0x30_0000, 0x30_0000, 0, 0], // empty: skipped
            ],
            0x200,
        );
        let layout = parse(&k).unwrap();
        assert_eq!(
            layout.segments,
            vec![
                LoadSegment {
                    addr: 0x10_0000,
                    data: &k[0x100..0x140],
                    zeros: 0x1000 - 0x40
                },
                LoadSegment {
                    addr: 0x20_0000,
                    data: &k[0x140..0x160],
                    zeros: 0
                },
            ]
        );
        // The virtual entry point translated into the segment's physical address.
        assert_eq!(layout.entry, 0x10_0010);
        let img = load(boot(k), 16 << 20).unwrap();
        assert_eq!(img.zeros, vec![(0x10_0040, 0xFC0)]);
    }

    #[test]
    fn bad_elf_files_are_errors() {
        let good = [PT_LOAD, 0x100, 0x10_0000, 0x10_0000, 0x40, 0x40];
        let ok = elf(0x10_0000, &[good], 0x200);
        assert!(load(boot(ok.clone()), 16 << 20).is_ok());
        let patch = |off: usize, bytes: &[u8]| {
            let mut k = ok.clone();
            k[off..off + bytes.len()].copy_from_slice(bytes);
            k
        };
        let bad: Vec<(Vec<u8>, &str)> = vec![
            (patch(0, b"\x7FELG"), "not ELF"),
            (patch(4, &[2]), "32-bit"),
            (patch(5, &[2]), "little-endian"),
            (patch(16, &[3, 0]), "ET_EXEC"),
            (patch(18, &[0x3E, 0]), "EM_386"),
            (patch(44, &[0, 0]), "no loadable"),
            (patch(42, &[16, 0]), "too small"),
            (patch(44, &[0xFF, 0xFF]), "program header table"),
            (patch(28, &[0xF0, 0xFF, 0xFF, 0xFF]), "program header table"),
            (patch(52 + 4, &[0xF0, 0xFF, 0xFF, 0xFF]), "loadable segment"),
            (patch(52 + 16, &[0x41]), "file size exceeds"),
            (patch(52, &[2]), "no loadable"),
            (patch(52 + 12, &[0, 0, 0, 0]), "outside the RAM"),
            (patch(52 + 12, &[0, 0, 0xF0, 0xFF]), "outside the RAM"),
            (patch(52 + 12, &[0, 0, 0xFF, 0]), "outside the RAM"),
            (patch(24, &[0, 0, 0, 0x80]), "entry point"),
        ];
        for (k, why) in bad {
            let e = load(boot(k), 16 << 20).unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        // The segment data cut off, and the ELF header cut short.
        assert_eq!(
            parse(&ok[..0x110]).unwrap_err(),
            MultibootError::Truncated("data of a loadable segment")
        );
        let mut short = ok[..36].to_vec();
        short.extend(header(0, &[]));
        assert_eq!(
            parse(&short).unwrap_err(),
            MultibootError::Truncated("ELF header")
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A tiny deterministic generator (xorshift): random files, some with a valid
        // header planted at a random aligned offset with random flags and fields.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let len = (next() % 0x600) as usize;
            let mut k: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= 64 {
                k[..4].copy_from_slice(b"\x7FELF");
                k[4] = 1;
                k[5] = 1;
                k[16] = 2;
                k[17] = 0;
                k[18] = 3;
                k[19] = 0;
                if round % 4 == 0 {
                    k[28..32].copy_from_slice(&52u32.to_le_bytes());
                    k[42] = 32;
                    k[43] = 0;
                }
            }
            if len >= 48 {
                let at = (next() as usize % (len - 47)) & !3;
                let flags = (next() as u32) & (HF_ADDRESS_FIELDS | 7 | 1 << 9);
                let fields: Vec<u32> = (0..5)
                    .map(|_| 0x10_0000 + (next() as u32 % 0x1000))
                    .collect();
                let h = header(flags, &fields);
                k[at..at + h.len()].copy_from_slice(&h);
            }
            let _ = parse(&k);
            let _ = load(boot(k), 4 << 20);
        }
    }

    #[test]
    fn mbi_modules_and_memory_map() {
        let k = elf(
            0x10_0000,
            &[[PT_LOAD, 0x100, 0x10_0000, 0x10_0000, 0x40, 0x1800]],
            0x200,
        );
        let ram = 64u64 << 20;
        let b = MultibootBoot {
            kernel: k,
            cmdline: "k.elf hello world".into(),
            modules: vec![
                Module {
                    data: vec![1; 5000],
                    string: "mod1.bin arg1".into(),
                },
                Module {
                    data: vec![2; 10],
                    string: "mod2.bin".into(),
                },
            ],
        };
        let img = load(b, ram).unwrap();
        assert_eq!(
            img.modules,
            vec![(0x10_2000, 0x10_3388), (0x10_4000, 0x10_400A)]
        );
        let (base, area) = img
            .chunks
            .iter()
            .find(|(a, _)| *a == img.info_addr)
            .unwrap();
        assert_eq!(*base, img.boot_data_base);
        assert_eq!(base % 0x1000, 0);
        assert_eq!(*base as usize + area.len(), EBDA as usize);
        let rd = |addr: u32| u32_at(area, (addr - base) as usize).unwrap();
        let cstr = |addr: u32| {
            let s = &area[(addr - base) as usize..];
            String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
        };
        let mbi = img.info_addr;
        assert_eq!(rd(mbi), 0x24D);
        assert_eq!(rd(mbi + 4), 640);
        let acpi = crate::acpi::tables_base(ram);
        assert_eq!(rd(mbi + 8), (acpi - 0x10_0000) / 1024);
        assert_eq!(cstr(rd(mbi + 16)), "k.elf hello world");
        assert_eq!(rd(mbi + 20), 2);
        let mods = rd(mbi + 24);
        assert_eq!(rd(mods), 0x10_2000);
        assert_eq!(rd(mods + 4), 0x10_3388);
        assert_eq!(cstr(rd(mods + 8)), "mod1.bin arg1");
        assert_eq!(rd(mods + 16), 0x10_4000);
        assert_eq!(cstr(rd(mods + 24)), "mod2.bin");
        assert_eq!(cstr(rd(mbi + 64)), "hospes");
        // The memory map: the E820 map with the boot data area reserved.
        let map = e820_map_with_boot_data(ram, *base);
        let mmap = rd(mbi + 48);
        assert_eq!(rd(mbi + 44) as usize, map.len() * 24);
        for (i, e) in map.iter().enumerate() {
            let at = mmap + 24 * i as u32;
            assert_eq!(rd(at), 20);
            assert_eq!(rd(at + 4) as u64 | (rd(at + 8) as u64) << 32, e.base);
            assert_eq!(rd(at + 12) as u64 | (rd(at + 16) as u64) << 32, e.length);
            assert_eq!(rd(at + 20), e.kind);
        }
        assert_eq!(map[0].base, 0);
        assert_eq!(map[0].length, *base as u64);
        assert_eq!(map[0].kind, 1);
        assert_eq!((map[1].base, map[1].kind), (*base as u64, 2));
        // The GDT.
        assert_eq!(img.gdt_limit, 23);
        let gdt = (img.gdt_base - base) as usize;
        assert_eq!(
            &area[gdt + 8..gdt + 16],
            &0x00CF_9B00_0000_FFFFu64.to_le_bytes()
        );
        assert_eq!(
            &area[gdt + 16..gdt + 24],
            &0x00CF_9300_0000_FFFFu64.to_le_bytes()
        );
    }

    #[test]
    fn no_room_is_an_error() {
        let k = elf(
            0x10_0000,
            &[[PT_LOAD, 0x100, 0x10_0000, 0x10_0000, 0x40, 0x40]],
            0x200,
        );
        let mut b = boot(k.clone());
        b.modules.push(Module {
            data: vec![0; 3 << 20],
            string: "big".into(),
        });
        assert_eq!(
            load(b, 4 << 20).unwrap_err(),
            MultibootError::NoRoomForModule {
                index: 0,
                size: 3 << 20
            }
        );
        let mut b = boot(k);
        b.cmdline = "x".repeat(200_000);
        assert!(matches!(
            load(b, 4 << 20),
            Err(MultibootError::BootDataTooBig { .. })
        ));
    }
}
