//! Exceptions as values: a faulting operation returns one of these up to the instruction
//! boundary, where the run loop delivers it. Nothing a guest does unwinds the host stack.

pub const DE: u8 = 0;
pub const DB: u8 = 1;
pub const NMI: u8 = 2;
pub const BP: u8 = 3;
pub const OF: u8 = 4;
pub const BR: u8 = 5;
pub const UD: u8 = 6;
pub const NM: u8 = 7;
pub const DF: u8 = 8;
pub const TS: u8 = 10;
pub const NP: u8 = 11;
pub const SS: u8 = 12;
pub const GP: u8 = 13;
pub const PF: u8 = 14;
pub const MF: u8 = 16;
pub const AC: u8 = 17;
pub const MC: u8 = 18;
pub const XM: u8 = 19;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error: Option<u32>,
}

pub type Res<T> = Result<T, Exception>;

impl Exception {
    pub const fn new(vector: u8) -> Exception {
        Exception {
            vector,
            error: None,
        }
    }
    pub const fn with_code(vector: u8, code: u32) -> Exception {
        Exception {
            vector,
            error: Some(code),
        }
    }
    /// #DE, #UD, ... (no error code).
    pub const fn de() -> Exception {
        Self::new(DE)
    }
    pub const fn ud() -> Exception {
        Self::new(UD)
    }
    pub const fn nm() -> Exception {
        Self::new(NM)
    }
    pub const fn gp(code: u32) -> Exception {
        Self::with_code(GP, code)
    }
    pub const fn gp0() -> Exception {
        Self::with_code(GP, 0)
    }
    pub const fn ss(code: u32) -> Exception {
        Self::with_code(SS, code)
    }
    pub const fn np(code: u32) -> Exception {
        Self::with_code(NP, code)
    }
    pub const fn ts(code: u32) -> Exception {
        Self::with_code(TS, code)
    }
    pub const fn pf(code: u32) -> Exception {
        Self::with_code(PF, code)
    }

    /// Whether the vector pushes an error code when delivered in protected mode.
    pub fn has_error_code(vector: u8) -> bool {
        matches!(vector, DF | TS | NP | SS | GP | PF | AC)
    }

    /// Class for the double-fault rules (Intel SDM Vol. 3, Table 6-4).
    pub fn is_contributory(vector: u8) -> bool {
        matches!(vector, DE | TS | NP | SS | GP)
    }
}
