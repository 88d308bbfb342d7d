//! Architectural state: one `#[repr(C)]` struct that the interpreter and the JIT share.
//!
//! General registers are 64 bits wide so that long mode can be added without changing the
//! layout; in the i686 model only the low 32 bits are ever observable.

use crate::flags::Flags;
use crate::fpu::FpuState;

/// Segment register indices in x86 encoding order (the `sreg` field of ModRM).
pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS: usize = 2;
pub const DS: usize = 3;
pub const FS: usize = 4;
pub const GS: usize = 5;

/// General register indices in x86 encoding order.
pub const EAX: usize = 0;
pub const ECX: usize = 1;
pub const EDX: usize = 2;
pub const EBX: usize = 3;
pub const ESP: usize = 4;
pub const EBP: usize = 5;
pub const ESI: usize = 6;
pub const EDI: usize = 7;

/// CR0 bits.
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_EM: u64 = 1 << 2;
pub const CR0_TS: u64 = 1 << 3;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_AM: u64 = 1 << 18;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;

/// CR4 bits this model implements.
pub const CR4_VME: u64 = 1 << 0;
pub const CR4_PVI: u64 = 1 << 1;
pub const CR4_TSD: u64 = 1 << 2;
pub const CR4_DE: u64 = 1 << 3;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_PCE: u64 = 1 << 8;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// The CR4 bits a guest may set (the features CPUID reports; no DE); setting any other
/// bit raises #GP(0).
pub const CR4_SUPPORTED: u64 = CR4_VME | CR4_PVI | CR4_TSD | CR4_PSE | CR4_PGE | CR4_PCE;

/// Descriptor attribute bits, as kept in [`Segment::attr`]: the access byte in bits 0-7 and
/// the AVL/L/D/G nibble in bits 12-15 (descriptor bits 40-47 and 52-55).
pub const ATTR_ACCESSED: u16 = 1 << 0;
pub const ATTR_RW: u16 = 1 << 1; // writable data / readable code
pub const ATTR_DC: u16 = 1 << 2; // expand-down data / conforming code
pub const ATTR_CODE: u16 = 1 << 3;
pub const ATTR_S: u16 = 1 << 4; // code/data (1) or system (0)
pub const ATTR_P: u16 = 1 << 7;
pub const ATTR_DB: u16 = 1 << 14;
pub const ATTR_G: u16 = 1 << 15;

/// A segment register: the visible selector and the hidden descriptor cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub base: u64,
    /// Byte-granular limit (already scaled by G).
    pub limit: u32,
    pub selector: u16,
    pub attr: u16,
}

impl Segment {
    /// A segment as real mode and V86 mode load it: base = selector * 16, 64 KiB limit.
    pub fn real(selector: u16, attr: u16) -> Segment {
        Segment {
            base: (selector as u64) << 4,
            limit: 0xFFFF,
            selector,
            attr,
        }
    }
    /// A flat 32-bit segment (base 0, limit 4 GiB, present, accessed, readable and
    /// writable), code or data, at privilege `dpl`: what SYSENTER/SYSEXIT load.
    pub fn flat(selector: u16, code: bool, dpl: u8) -> Segment {
        let kind = if code { ATTR_CODE } else { 0 };
        Segment {
            base: 0,
            limit: u32::MAX,
            selector,
            attr: ATTR_P
                | ATTR_S
                | ATTR_RW
                | ATTR_ACCESSED
                | ATTR_DB
                | ATTR_G
                | kind
                | ((dpl as u16) << 5),
        }
    }
    pub fn dpl(&self) -> u8 {
        ((self.attr >> 5) & 3) as u8
    }
    pub fn present(&self) -> bool {
        self.attr & ATTR_P != 0
    }
    pub fn is_system(&self) -> bool {
        self.attr & ATTR_S == 0
    }
    pub fn is_code(&self) -> bool {
        self.attr & (ATTR_S | ATTR_CODE) == ATTR_S | ATTR_CODE
    }
    pub fn is_data(&self) -> bool {
        self.attr & (ATTR_S | ATTR_CODE) == ATTR_S
    }
    pub fn big(&self) -> bool {
        self.attr & ATTR_DB != 0
    }
    /// System descriptor type (bits 0-3 of the access byte).
    pub fn sys_type(&self) -> u8 {
        (self.attr & 0xF) as u8
    }
}

/// GDTR / IDTR.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescTable {
    pub base: u64,
    pub limit: u32,
}

/// Model-specific registers that this i686 model implements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Msrs {
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub apic_base: u64,
    pub efer: u64,
    pub pat: u64,
    pub mtrr_def_type: u64,
    pub mtrr_fixed: [u64; 11],
    pub mtrr_var: [u64; 16],
    pub misc_enable: u64,
}

/// The whole architectural state of one CPU.
#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuState {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub flags: Flags,
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescTable,
    pub idtr: DescTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr: [u64; 8],
    pub msr: Msrs,
    /// Retired-instruction count: the only clock the guest sees.
    pub icount: u64,
    /// Offset added to `icount` to form the TSC (WRMSR to the TSC sets it).
    pub tsc_offset: u64,
    /// Current privilege level (the RPL of CS in protected mode; 3 in V86 mode; 0 in real mode).
    pub cpl: u8,
    /// The CPU is halted, waiting for an interrupt.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI, MOV SS, POP SS).
    pub irq_shadow: bool,
    /// Address mask applied to every physical address: the A20 gate.
    pub a20_mask: u64,
    pub fpu: FpuState,
}

impl Default for CpuState {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuState {
    /// The state after RESET: real mode, CS:IP = F000:FFF0 with CS base FFFF0000.
    pub fn new() -> CpuState {
        let data_attr = ATTR_P | ATTR_S | ATTR_RW | ATTR_ACCESSED;
        let mut seg = [Segment::real(0, data_attr); 6];
        seg[CS] = Segment {
            base: 0xFFFF_0000,
            limit: 0xFFFF,
            selector: 0xF000,
            attr: ATTR_P | ATTR_S | ATTR_CODE | ATTR_RW | ATTR_ACCESSED,
        };
        let mut gpr = [0u64; 16];
        // EDX holds the processor signature after reset: family 6, model 3, stepping 3.
        gpr[EDX] = 0x0633;
        CpuState {
            gpr,
            rip: 0xFFF0,
            flags: Flags::new(),
            seg,
            ldtr: Segment {
                attr: ATTR_P | 2,
                limit: 0xFFFF,
                ..Default::default()
            },
            tr: Segment {
                attr: ATTR_P | 11,
                limit: 0xFFFF,
                ..Default::default()
            },
            gdtr: DescTable {
                base: 0,
                limit: 0xFFFF,
            },
            idtr: DescTable {
                base: 0,
                limit: 0x3FF,
            },
            cr0: CR0_ET | CR0_CD | CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            dr: [0, 0, 0, 0, 0xFFFF0FF0, 0x400, 0xFFFF0FF0, 0x400],
            msr: Msrs {
                apic_base: 0xFEE0_0900,
                pat: 0x0007_0406_0007_0406,
                ..Default::default()
            },
            icount: 0,
            tsc_offset: 0,
            cpl: 0,
            halted: false,
            irq_shadow: false,
            a20_mask: !0,
            fpu: FpuState::default(),
        }
    }

    pub fn protected(&self) -> bool {
        self.cr0 & CR0_PE != 0
    }
    pub fn v86(&self) -> bool {
        self.flags.bits & crate::flags::VM != 0
    }
    pub fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0
    }
    /// Operand/address size of the code segment: true for 32-bit.
    pub fn code32(&self) -> bool {
        self.seg[CS].big() && self.protected() && !self.v86()
    }
    pub fn stack32(&self) -> bool {
        self.seg[SS].big() && self.protected() && !self.v86()
    }
    pub fn eip(&self) -> u32 {
        self.rip as u32
    }

    pub fn reg32(&self, r: usize) -> u32 {
        self.gpr[r] as u32
    }
    pub fn set_reg32(&mut self, r: usize, v: u32) {
        self.gpr[r] = v as u64;
    }
    pub fn reg16(&self, r: usize) -> u16 {
        self.gpr[r] as u16
    }
    pub fn set_reg16(&mut self, r: usize, v: u16) {
        self.gpr[r] = (self.gpr[r] & !0xFFFF) | v as u64;
    }
    /// 8-bit register by x86 encoding: 0-3 = AL..BL, 4-7 = AH..BH.
    pub fn reg8(&self, r: usize) -> u8 {
        if r < 4 {
            self.gpr[r] as u8
        } else {
            (self.gpr[r - 4] >> 8) as u8
        }
    }
    pub fn set_reg8(&mut self, r: usize, v: u8) {
        if r < 4 {
            self.gpr[r] = (self.gpr[r] & !0xFF) | v as u64;
        } else {
            self.gpr[r - 4] = (self.gpr[r - 4] & !0xFF00) | ((v as u64) << 8);
        }
    }
}
