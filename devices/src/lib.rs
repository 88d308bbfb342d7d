//! PC devices, each a plain struct that knows nothing of the CPU or the machine.
//!
//! A device sees port reads and writes stamped with the current virtual time, drives
//! interrupt lines that the machine samples, and may ask to be woken at a future virtual
//! time. The contract every device here follows:
//!
//! - [`PortDevice::read`] / [`PortDevice::write`] take the port, the access size in bytes
//!   and `now`, the virtual time of the access.
//! - A device with an interrupt output exposes `irq_level(&self) -> bool`: the level of
//!   its line after the last call. The machine samples it after every call into the
//!   device and passes it to the interrupt controller, which handles edge versus level.
//! - A device with timers implements [`Timed`]: `next_event` says when it next needs
//!   `advance`; the machine never lets the CPU run past that time without calling it.
//! - Inputs from outside (keys, serial bytes) enter through plain methods, called by the
//!   machine at event boundaries only (so record/replay can reproduce them).
//!
//! Nothing here reads host time: the only clock is the `now` the machine passes in.

pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod ne2000;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod uart;
pub mod vga;

/// Virtual time in nanoseconds, derived by the machine from the instruction count.
pub type Nanos = u64;

/// Nanoseconds per second, for converting rates.
pub const NANOS_PER_SEC: Nanos = 1_000_000_000;

/// A device on the I/O port bus.
pub trait PortDevice {
    fn read(&mut self, port: u16, size: u8, now: Nanos) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32, now: Nanos);
}

/// A device with timers.
pub trait Timed {
    /// The virtual time at which the device next needs [`Timed::advance`], if any.
    fn next_event(&self) -> Option<Nanos>;
    /// Brings the device up to `now`, firing every timer due by then.
    fn advance(&mut self, now: Nanos);
}
