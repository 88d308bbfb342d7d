//! Direct Linux boot: loading a bzImage (and an initrd and a command line) the way a boot
//! loader does under the x86 boot protocol (Documentation/arch/x86/boot.rst).
//!
//! The real-mode part of the kernel (the setup code) goes below 640 KiB with the command
//! line after its heap; the protected-mode part goes at 1 MiB; the initrd at the top of
//! memory the kernel allows. The kernel is then entered at its real-mode setup code,
//! which asks the BIOS for the memory map and the like and switches to protected mode on
//! its own, exactly as when GRUB or SYSLINUX loads it.

use std::fmt;

/// Where the real-mode setup code is loaded (segment `REAL_MODE_BASE >> 4`).
pub const REAL_MODE_BASE: u32 = 0x9_0000;
/// Offset of the end of the setup heap from `REAL_MODE_BASE` (also the initial SP).
const HEAP_END: u32 = 0xE000;
/// Offset of the command line from `REAL_MODE_BASE`: after the heap, below the EBDA.
const CMDLINE_OFFSET: u32 = 0xE000;
/// Longest command line we place (the space up to the EBDA at 0x9FC00, minus the NUL).
const CMDLINE_SPACE: u32 = 0x1C00;
/// Where the protected-mode kernel goes (bzImage, LOADED_HIGH).
pub const KERNEL_BASE: u32 = 0x10_0000;

const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
/// type_of_loader: 0xFF means "undefined boot loader", which the kernel accepts.
const LOADER_TYPE: u8 = 0xFF;

/// Why a kernel image cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinuxError {
    TooSmall,
    NotBzImage(&'static str),
    TooOld(u16),
    CmdlineTooLong { len: usize, max: usize },
    NoRoom(&'static str),
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxError::TooSmall => write!(f, "the kernel image is too small to be a bzImage"),
            LinuxError::NotBzImage(why) => write!(f, "not a Linux bzImage: {why}"),
            LinuxError::TooOld(v) => write!(
                f,
                "boot protocol {}.{:02} is too old (2.04 or later is needed)",
                v >> 8,
                v & 0xFF
            ),
            LinuxError::CmdlineTooLong { len, max } => {
                write!(
                    f,
                    "the kernel command line is {len} bytes, the kernel takes {max}"
                )
            }
            LinuxError::NoRoom(what) => write!(f, "not enough guest memory for the {what}"),
        }
    }
}

impl std::error::Error for LinuxError {}

/// What to write into guest memory and how to enter the kernel.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LinuxImage {
    /// (physical address, bytes) to copy into guest memory.
    pub chunks: Vec<(u32, Vec<u8>)>,
    /// Real-mode segment of the setup code: enter at `segment + 0x20 : 0` with DS, ES,
    /// FS, GS and SS = `segment` and SP = `stack`.
    pub segment: u16,
    pub stack: u16,
    /// Where the initrd was placed (address, size), if any.
    pub initrd: Option<(u32, u32)>,
}

/// Whether `kernel` has the bzImage setup header signature ("HdrS" at 202h): it is a
/// Linux kernel, good or bad, and not something else.
pub fn has_setup_header(kernel: &[u8]) -> bool {
    kernel.get(0x202..0x206) == Some(&HDRS_MAGIC.to_le_bytes()[..])
}

/// The video mode a "vga=" option asks for: "normal", "ext", "ask" or a number
/// (decimal or 0x hex; 0x318 is VESA mode 118h plus 200h).
fn vga_option(cmdline: &str) -> Option<u16> {
    let value = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("vga="))
        .next_back()?;
    match value {
        "normal" => Some(0xFFFF),
        "ext" => Some(0xFFFE),
        "ask" => Some(0xFFFD),
        v => match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => u16::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        },
    }
}

fn u16_at(d: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([d[off], d[off + 1]])
}

fn u32_at(d: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([d[off], d[off + 1], d[off + 2], d[off + 3]])
}

fn put_u32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Lays out a bzImage for a machine with `ram_size` bytes of RAM. `initrd_ceiling` is
/// the highest address the initrd may end at (below any firmware-reserved memory).
pub fn load(
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram_size: u64,
    initrd_ceiling: u64,
) -> Result<LinuxImage, LinuxError> {
    if kernel.len() < 0x300 {
        return Err(LinuxError::TooSmall);
    }
    if u16_at(kernel, 0x1FE) != 0xAA55 {
        return Err(LinuxError::NotBzImage("no boot signature at 0x1FE"));
    }
    if u32_at(kernel, 0x202) != HDRS_MAGIC {
        return Err(LinuxError::NotBzImage("no HdrS setup header"));
    }
    let version = u16_at(kernel, 0x206);
    if version < 0x0204 {
        return Err(LinuxError::TooOld(version));
    }
    if kernel[0x211] & LOADED_HIGH == 0 {
        return Err(LinuxError::NotBzImage("a zImage (not loaded high)"));
    }
    let setup_sects = match kernel[0x1F1] {
        0 => 4,
        n => n as usize,
    };
    let setup_len = (setup_sects + 1) * 512;
    if kernel.len() <= setup_len {
        return Err(LinuxError::NotBzImage(
            "the setup code fills the whole file",
        ));
    }
    let cmdline_max = if version >= 0x0206 {
        (u32_at(kernel, 0x238) as usize).min(CMDLINE_SPACE as usize - 1)
    } else {
        255
    };
    if cmdline.len() > cmdline_max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max: cmdline_max,
        });
    }

    let mut setup = kernel[..setup_len].to_vec();
    let protected = kernel[setup_len..].to_vec();
    if KERNEL_BASE as u64 + protected.len() as u64 > ram_size {
        return Err(LinuxError::NoRoom("kernel"));
    }

    // The setup header fields a boot loader fills in.
    setup[0x210] = LOADER_TYPE;
    setup[0x211] |= CAN_USE_HEAP;
    setup[0x224..0x226].copy_from_slice(&((HEAP_END - 0x200) as u16).to_le_bytes());
    put_u32(&mut setup, 0x228, REAL_MODE_BASE + CMDLINE_OFFSET);
    // vid_mode from the command line's "vga=" as boot loaders do; otherwise left as
    // the image has it ("normal", 80x25, in practice).
    if let Some(mode) = vga_option(cmdline) {
        setup[0x1FA..0x1FC].copy_from_slice(&mode.to_le_bytes());
    }

    let mut placed_initrd = None;
    if let Some(rd) = initrd {
        let max = (u32_at(kernel, 0x22C) as u64).min(initrd_ceiling.saturating_sub(1));
        let end = (max + 1).min(ram_size) & !0xFFF;
        let start = end
            .checked_sub(rd.len() as u64)
            .ok_or(LinuxError::NoRoom("initrd"))?
            & !0xFFF;
        let kernel_end = KERNEL_BASE as u64 + protected.len() as u64;
        if start < kernel_end {
            return Err(LinuxError::NoRoom("initrd"));
        }
        put_u32(&mut setup, 0x218, start as u32);
        put_u32(&mut setup, 0x21C, rd.len() as u32);
        placed_initrd = Some((start as u32, rd.len() as u32));
    }

    let mut chunks = vec![(REAL_MODE_BASE, setup), (KERNEL_BASE, protected)];
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    chunks.push((REAL_MODE_BASE + CMDLINE_OFFSET, line));
    if let (Some(rd), Some((at, _))) = (initrd, placed_initrd) {
        chunks.push((at, rd.to_vec()));
    }
    Ok(LinuxImage {
        chunks,
        segment: (REAL_MODE_BASE >> 4) as u16,
        stack: HEAP_END as u16,
        initrd: placed_initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal image with a valid setup header and `payload` as the protected-mode part.
    fn fake_bzimage(version: u16, payload: &[u8]) -> Vec<u8> {
        let mut k = vec![0u8; 5 * 512];
        k[0x1F1] = 4;
        k[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
        k[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        k[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        k[0x211] = LOADED_HIGH;
        k[0x22C..0x230].copy_from_slice(&0x37FF_FFFFu32.to_le_bytes());
        k[0x238..0x23C].copy_from_slice(&2047u32.to_le_bytes());
        k.extend_from_slice(payload);
        k
    }

    #[test]
    fn lays_out_setup_kernel_cmdline_and_initrd() {
        let k = fake_bzimage(0x020F, &[0x90; 3000]);
        let rd = vec![7u8; 10_000];
        let img = load(&k, Some(&rd), "console=ttyS0", 64 << 20, 64 << 20).unwrap();
        assert_eq!(img.segment, 0x9000);
        let setup = &img.chunks[0];
        assert_eq!(setup.0, REAL_MODE_BASE);
        assert_eq!(setup.1.len(), 5 * 512);
        assert_eq!(setup.1[0x210], 0xFF);
        assert_eq!(setup.1[0x211], LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(u32_at(&setup.1, 0x228), 0x9E000);
        assert_eq!(img.chunks[1], (KERNEL_BASE, vec![0x90; 3000]));
        assert_eq!(img.chunks[2], (0x9E000, b"console=ttyS0\0".to_vec()));
        let (at, len) = img.initrd.unwrap();
        assert_eq!(len, 10_000);
        assert_eq!(at % 4096, 0);
        assert!(at as u64 + len as u64 <= 64 << 20);
        assert!(at as u64 + len as u64 > (64 << 20) - 8192);
        assert_eq!(u32_at(&setup.1, 0x218), at);
        assert_eq!(u32_at(&setup.1, 0x21C), 10_000);
    }

    #[test]
    fn vga_option_sets_vid_mode() {
        assert_eq!(vga_option("console=ttyS0 vga=0x318"), Some(0x318));
        assert_eq!(vga_option("vga=791 quiet"), Some(791));
        assert_eq!(vga_option("vga=ask"), Some(0xFFFD));
        assert_eq!(vga_option("vga=bogus"), None);
        assert_eq!(vga_option("console=ttyS0"), None);
    }

    #[test]
    fn respects_initrd_addr_max() {
        let mut k = fake_bzimage(0x020F, &[0; 100]);
        k[0x22C..0x230].copy_from_slice(&0x00FF_FFFFu32.to_le_bytes());
        let img = load(&k, Some(&[1; 4096]), "", 256 << 20, 256 << 20).unwrap();
        let (at, _) = img.initrd.unwrap();
        assert_eq!(at, 0x00FF_F000);
    }

    #[test]
    fn rejects_bad_images() {
        assert_eq!(
            load(&[0; 100], None, "", 1 << 26, 1 << 26).unwrap_err(),
            LinuxError::TooSmall
        );
        let mut k = fake_bzimage(0x020F, &[0; 100]);
        k[0x202] = 0;
        assert!(matches!(
            load(&k, None, "", 1 << 26, 1 << 26),
            Err(LinuxError::NotBzImage(_))
        ));
        let k = fake_bzimage(0x0202, &[0; 100]);
        assert_eq!(
            load(&k, None, "", 1 << 26, 1 << 26).unwrap_err(),
            LinuxError::TooOld(0x0202)
        );
        let k = fake_bzimage(0x020F, &[0; 100]);
        let long = "x".repeat(3000);
        assert!(matches!(
            load(&k, None, &long, 1 << 26, 1 << 26),
            Err(LinuxError::CmdlineTooLong { .. })
        ));
        let k = fake_bzimage(0x020F, &vec![0; 2 << 20]);
        assert_eq!(
            load(&k, None, "", 2 << 20, 2 << 20).unwrap_err(),
            LinuxError::NoRoom("kernel")
        );
        let k = fake_bzimage(0x020F, &[0; 100]);
        assert_eq!(
            load(&k, Some(&vec![0; 8 << 20]), "", 4 << 20, 4 << 20).unwrap_err(),
            LinuxError::NoRoom("initrd")
        );
    }
}
