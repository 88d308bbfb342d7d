//! The hospes BIOS: POST, the real-mode services and the boot loaders, implemented in
//! Rust behind small ROM stubs (see DESIGN.md, BIOS).

pub mod linux;
pub mod rom;
