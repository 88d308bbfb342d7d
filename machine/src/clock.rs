//! Virtual time: the guest's only clock is its retired-instruction count.
//!
//! One instruction is one nanosecond of virtual time (a 1 GHz guest, which is also the
//! TSC rate). Devices are scheduled in nanoseconds; the run loop converts a device
//! deadline into an instruction budget, and HLT jumps straight to the next deadline.

use hospes_devices::Nanos;

/// Nanoseconds of virtual time per retired instruction.
pub const NANOS_PER_INSTRUCTION: u64 = 1;

/// Virtual time at an instruction count.
pub fn nanos(icount: u64) -> Nanos {
    icount * NANOS_PER_INSTRUCTION
}

/// The first instruction count at or after a virtual time.
pub fn icount_at(t: Nanos) -> u64 {
    t.div_ceil(NANOS_PER_INSTRUCTION)
}
