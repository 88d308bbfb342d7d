//! Memory for compiled code: one region, written through one mapping and run through
//! another.
//!
//! Cranelift's default provider gives every finalized function pages of its own and
//! changes their protection with a system call each time: with a block per function,
//! that is a page (and a TLB entry) per guest block, and on every compile a TLB
//! shootdown that interrupts the guest's thread. Here all code of a translator goes into
//! one shared-memory region mapped twice, read-write (where Cranelift writes it) and
//! read-execute (where it runs), so no page is ever writable and executable at once and
//! no protection changes after start. Code is packed, so a hot path's blocks share
//! pages.
//!
//! The compile thread writes code and then hands its address over a channel; x86 keeps
//! instruction fetch coherent with those writes, so nothing more is needed there. On
//! other hosts the instruction cache would need flushing: they use Cranelift's own
//! provider.

use cranelift_jit::{BranchProtection, JITMemoryKind, JITMemoryProvider};
use cranelift_module::ModuleResult;
use std::io;

/// Address space reserved per translator. Only pages written are backed; the JIT's
/// block limit keeps use far below this on Linux (about 1.2 KB of code per block, 20,000
/// blocks). Long blocks of 16-bit code with many memory operands can take 13 KB each
/// (the random streams of the differential tests): running out fails that compile (the
/// block is interpreted) and makes the JIT flush before it compiles another.
pub const RESERVE: usize = 256 << 20;

/// The error a compile fails with when the region is used up: the JIT then flushes.
pub const FULL: &str = "the JIT's code memory is full";

/// A region mapped twice: `write` and `exec` views of the same pages.
pub struct DualMapped {
    write: *mut u8,
    exec: *mut u8,
    len: usize,
    used: usize,
}

// SAFETY: the mappings belong to this value alone; moving it to the compile thread
// moves that ownership. The execute view is read by the guest's thread only through
// addresses the compile thread hands over after writing.
unsafe impl Send for DualMapped {}

impl DualMapped {
    /// Maps `len` bytes twice. Fails where the host has no anonymous shared memory
    /// (or forbids executable mappings of it).
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub fn new(len: usize) -> io::Result<DualMapped> {
        let err = io::Error::last_os_error;
        // SAFETY: plain system calls on a descriptor we own; every mapping is checked
        // for failure, and on failure what was created so far is released.
        unsafe {
            let fd = libc::memfd_create(c"hospes-jit".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(err());
            }
            let map = |prot| libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0);
            let result = if libc::ftruncate(fd, len as libc::off_t) != 0 {
                Err(err())
            } else {
                let write = map(libc::PROT_READ | libc::PROT_WRITE);
                if write == libc::MAP_FAILED {
                    Err(err())
                } else {
                    let exec = map(libc::PROT_READ | libc::PROT_EXEC);
                    if exec == libc::MAP_FAILED {
                        let e = err();
                        libc::munmap(write, len);
                        Err(e)
                    } else {
                        Ok(DualMapped {
                            write: write.cast(),
                            exec: exec.cast(),
                            len,
                            used: 0,
                        })
                    }
                }
            };
            // The mappings keep the memory; the descriptor is no longer needed.
            libc::close(fd);
            result
        }
    }

    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    pub fn new(_len: usize) -> io::Result<DualMapped> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "dual-mapped code memory needs Linux on x86-64",
        ))
    }

    /// The distance from an address in the write view to the same byte in the execute
    /// view.
    pub fn exec_offset(&self) -> usize {
        (self.exec as usize).wrapping_sub(self.write as usize)
    }

    fn unmap(&mut self) {
        if self.len == 0 {
            return;
        }
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        // SAFETY: both views were mapped by `new` with this length and are unmapped
        // once (`len` is zeroed after).
        unsafe {
            libc::munmap(self.write.cast(), self.len);
            libc::munmap(self.exec.cast(), self.len);
        }
        self.len = 0;
    }
}

impl JITMemoryProvider for DualMapped {
    fn allocate(&mut self, size: usize, align: u64, _kind: JITMemoryKind) -> io::Result<*mut u8> {
        let align = usize::try_from(align)
            .ok()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad alignment"))?;
        let start = self.used.next_multiple_of(align);
        match start.checked_add(size) {
            Some(end) if end <= self.len => {
                self.used = end;
                // SAFETY: `start..end` lies inside the write view's `len` bytes.
                Ok(unsafe { self.write.add(start) })
            }
            _ => Err(io::Error::new(io::ErrorKind::OutOfMemory, FULL)),
        }
    }

    /// Called only when no code of this region can run any more. Never called (so the
    /// region is leaked, as Cranelift's own providers do) if the translator is dropped
    /// unfreed: in a panic, compiled code may still be running.
    unsafe fn free_memory(&mut self) {
        self.unmap();
    }

    fn finalize(&mut self, _branch_protection: BranchProtection) -> ModuleResult<()> {
        // Nothing to change: the code is already executable through the other view.
        Ok(())
    }
}
