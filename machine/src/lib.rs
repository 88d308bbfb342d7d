//! The PC: memory map, devices, BIOS and the run loop, around the CPU core.
//!
//! [`Machine::run`] alternates between the CPU, given an exact instruction budget up to
//! the next device deadline, and the devices, advanced to the virtual time of that
//! deadline (see DESIGN.md, Time and determinism). A halted CPU skips straight to the
//! next deadline. Nothing here reads host time: a run depends only on its inputs.

pub mod board;
pub mod clock;
pub mod disk;
pub mod firmware;
pub mod gdb;
pub mod keys;
pub mod monitor;
pub mod net;
pub mod nic;
pub mod replay;
pub mod shadow;
pub mod snapshot;

use board::{Board, Devices, DriveSlot, PowerEvent};
use hospes_bios::{Bios, BootOptions};
use hospes_cpu::{BlockRunner, Cpu, Exit};
use hospes_jit::{Jit, Stats, Tier};
use replay::{Input, Player, Recorder};
use snapshot::DiskFile;
use std::fmt;
use std::io::Write;

/// RAM above which PCI devices and firmware live (the BIOS alias, for one).
const MAX_RAM_MIB: u64 = 3072;
/// The ROM alias at the top of 4 GiB.
const HIGH_ROM_ALIAS: u64 = 0xFFFE_0000;
/// Longest slice the CPU runs without returning (for host input and output).
const MAX_SLICE: u64 = 2_000_000;

/// How the machine is put together.
pub struct MachineConfig {
    pub ram_mib: u64,
    pub boot: BootOptions,
    pub drives: Vec<DriveSlot>,
    /// IDE (master, slave) devices of the primary and secondary channels.
    pub ide: [(
        Option<hospes_devices::ide::IdeDevice>,
        Option<hospes_devices::ide::IdeDevice>,
    ); 2],
    /// Seconds since the Unix epoch the RTC starts at.
    pub rtc_start_unix: i64,
    /// A firmware image to run in place of the built-in BIOS (SeaBIOS's bios.bin, say).
    /// It finds the disks through the IDE controller; `boot.order` reaches it through
    /// CMOS, and `drives` and `boot.kernel` are not used.
    pub firmware: Option<Firmware>,
    /// Which execution tier runs guest code (see DESIGN.md, Execution tiers).
    pub tier: Tier,
    /// The image files behind `drives` and `ide` (see [`disk::attach`]), for snapshots
    /// to name. A machine whose disks are not all files here cannot be saved to a file.
    pub disks: Vec<DiskFile>,
    /// Those files, opened (the same order): their overlays are part of snapshots.
    pub images: Vec<disk::Image>,
    /// The network card, if any (what it is connected to: [`Machine::connect_network`]).
    pub nic: Option<nic::NicConfig>,
}

/// A firmware image given in place of the built-in BIOS, and what it is given to run.
pub struct Firmware {
    pub image: Vec<u8>,
    /// A VGA BIOS option ROM (SeaVGABIOS, say) offered to the firmware through fw_cfg.
    pub vga_bios: Option<Vec<u8>>,
}

/// PAM0-PAM6 as the built-in BIOS leaves them (its POST runs outside the guest): the
/// option-ROM space C0000-DFFFF is RAM, the BIOS at E0000-FFFFF reads ROM.
const BUILTIN_BIOS_PAM: [u8; 7] = [0x00, 0x33, 0x33, 0x33, 0x33, 0x00, 0x00];

/// Errors building or running the machine.
#[derive(Debug)]
pub struct MachineError(pub String);

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MachineError {}

/// Why [`Machine::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest powered the machine off.
    PowerOff,
    /// The CPU halted with interrupts disabled and nothing can wake it.
    HaltedForever,
    /// The instruction limit given to `run` was reached.
    InstructionLimit,
    /// A replay reached the end of its recording ([`Machine::replay_report`] says more).
    ReplayEnded,
    /// A replay went another way than its recording ([`Machine::replay_report`] says
    /// where and what differs).
    ReplayDiverged,
    /// The CPU is at one of a debugger's breakpoints (`Cpu::breakpoints`).
    Breakpoint,
    /// Writing the recording failed (a full disk, a closed pipe): the run stopped there,
    /// so that no input goes unrecorded ([`Machine::replay_report`] says why).
    RecordingFailed,
}

/// Where outside input comes from, and whether it is written down.
enum Journal {
    /// From the host, as it comes.
    Live,
    /// From the host, and into a recording.
    Record(Recorder),
    /// From a recording only.
    Replay(Player),
}

pub struct Machine {
    pub cpu: Cpu,
    pub board: Board,
    /// The JIT the run loop offers every block to (None: the interpreter only). A field
    /// of its own, beside `cpu` and `board`, so the three borrow apart.
    jit: Option<Jit>,
    /// Where COM1's output goes.
    serial_out: Box<dyn Write>,
    /// Bytes from outside for COM1, taken at slice boundaries.
    serial_in: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    resets: u64,
    shadow: shadow::Shadowing,
    /// Where the firmware's debug console (port 0x402) goes, besides the log.
    debugcon_out: Option<Box<dyn Write>>,
    debugcon_line: Vec<u8>,
    ram_mib: u64,
    disks: Vec<DiskFile>,
    images: Vec<disk::Image>,
    /// Input from the host waiting for the next input point.
    pending: Vec<Input>,
    journal: Journal,
    /// How the replay ended, or the error that stopped a recording.
    replay_report: Option<String>,
    /// For a debugger going backwards: the instruction count each idle skip started
    /// from, by where it ended (see [`Machine::previous_stop`]).
    halt_gaps: Option<std::collections::BTreeMap<u64, u64>>,
    /// Where the network card's frames go and come from.
    net: net::link::NetLink,
    /// Idle time paced to the wall clock (while frames can come from outside).
    pacer: clock::Pacer,
}

/// The JIT for `tier` (None for the interpreter alone).
fn start_jit(tier: Tier) -> Result<Option<Jit>, MachineError> {
    match tier {
        Tier::Interp => Ok(None),
        tier => Jit::new(tier)
            .map(Some)
            .map_err(|e| MachineError(format!("cannot start the JIT: {e}"))),
    }
}

impl Machine {
    /// A machine of these parts, running live; `shape` is the RAM size in MiB, the disk
    /// image files and their images (for snapshots).
    fn assemble(
        cpu: Cpu,
        board: Board,
        jit: Option<Jit>,
        shadow: shadow::Shadowing,
        serial_out: Box<dyn Write>,
        shape: (u64, Vec<DiskFile>, Vec<disk::Image>),
    ) -> Machine {
        Machine {
            cpu,
            board,
            jit,
            serial_out,
            serial_in: None,
            resets: 0,
            shadow,
            debugcon_out: None,
            debugcon_line: Vec::new(),
            ram_mib: shape.0,
            disks: shape.1,
            images: shape.2,
            pending: Vec::new(),
            journal: Journal::Live,
            replay_report: None,
            halt_gaps: None,
            net: net::link::NetLink::default(),
            pacer: clock::Pacer::default(),
        }
    }

    pub fn new(config: MachineConfig, serial_out: Box<dyn Write>) -> Result<Machine, MachineError> {
        if !(2..=MAX_RAM_MIB).contains(&config.ram_mib) {
            return Err(MachineError(format!(
                "memory size {} MiB is out of range (2 to {MAX_RAM_MIB} MiB)",
                config.ram_mib
            )));
        }
        let ram = config.ram_mib << 20;
        let jit = start_jit(config.tier)?;
        let boot_order = config.boot.order.clone();
        let mut vga_bios = None;
        let (bios, mut cpu, pam) = match config.firmware {
            None => {
                let bios = Bios::new(ram, config.boot).map_err(|e| MachineError(e.to_string()))?;
                let rom = bios.rom().to_vec();
                let mut cpu =
                    Cpu::new(ram as usize, rom.len()).map_err(|e| MachineError(e.to_string()))?;
                cpu.mem
                    .map_rom(hospes_bios::rom::ROM_BASE as u64, &rom)
                    .map_err(|e| MachineError(e.to_string()))?;
                cpu.mem.alias(
                    HIGH_ROM_ALIAS,
                    hospes_bios::rom::ROM_BASE as u64,
                    rom.len() as u64,
                );
                (Some(bios), cpu, BUILTIN_BIOS_PAM)
            }
            Some(Firmware {
                image,
                vga_bios: vga,
            }) => {
                firmware::check_image(image.len())?;
                if let Some(rom) = &vga {
                    firmware::check_option_rom(rom)?;
                }
                vga_bios = vga;
                let mut cpu =
                    Cpu::new(ram as usize, image.len()).map_err(|e| MachineError(e.to_string()))?;
                firmware::map_image(&mut cpu.mem, &image)?;
                (None, cpu, hospes_devices::pci::PAM_RESET)
            }
        };
        // The VGA's memory window, whichever firmware runs.
        cpu.mem.set_mmio(
            board::VGA_WINDOW.start,
            board::VGA_WINDOW.end - board::VGA_WINDOW.start,
        );
        if let Some(nic) = &config.nic {
            nic.validate().map_err(MachineError)?;
        }
        let mut devices = Devices::new(
            config.rtc_start_unix,
            config.drives,
            config.ide,
            config.nic.as_ref(),
        );
        firmware::init_cmos(&mut devices.rtc, ram, &boot_order);
        if bios.is_none() {
            devices.fw_cfg = Some(firmware::fw_cfg(ram, vga_bios));
        }
        let mut shadow = shadow::Shadowing::new(&cpu.mem);
        devices.pci.set_pam(pam);
        devices.pci.take_pam_written();
        shadow.apply(pam, &mut cpu);
        let mut m = Machine::assemble(
            cpu,
            Board { devices, bios },
            jit,
            shadow,
            serial_out,
            (config.ram_mib, config.disks, config.images),
        );
        m.cpu.reset();
        m.board.devices.sync_irqs();
        Ok(m)
    }

    /// A one-line summary of the CPU state (for diagnostics).
    pub fn describe_cpu(&self) -> String {
        let s = &self.cpu.state;
        format!(
            "icount={} cs:eip={:04x}:{:08x} (lin {:08x}) eax={:08x} ebx={:08x} ecx={:08x} edx={:08x} esi={:08x} edi={:08x} ebp={:08x} esp={:08x} eflags={:08x} cr0={:08x} cr3={:08x} cpl={} halted={}",
            s.icount,
            s.seg[hospes_cpu::state::CS].selector,
            s.rip,
            s.seg[hospes_cpu::state::CS].base.wrapping_add(s.rip),
            s.reg32(0),
            s.reg32(3),
            s.reg32(1),
            s.reg32(2),
            s.reg32(6),
            s.reg32(7),
            s.reg32(5),
            s.reg32(4),
            s.flags.get(),
            s.cr0,
            s.cr3,
            s.cpl,
            s.halted
        )
    }

    /// From now on, disk writes stay in memory: the image files are not changed (as
    /// QEMU's `-snapshot`), and snapshots carry what was written.
    pub fn keep_disk_writes_in_memory(&mut self) {
        for image in &self.images {
            image.borrow_mut().use_overlay();
        }
    }

    /// Makes the guest's disk writes durable in the image files (on exit; the guest's
    /// FLUSH CACHE does the same for its disk).
    pub fn flush_disks(&mut self) -> Result<(), String> {
        for (image, file) in self.images.iter().zip(&self.disks) {
            image
                .borrow_mut()
                .flush()
                .map_err(|e| format!("cannot flush {}: {e}", file.path.display()))?;
        }
        Ok(())
    }

    /// Forgets all decoded and compiled code (it is made again as the guest runs).
    pub fn flush_code(&mut self) {
        self.cpu.flush_code();
        if let Some(jit) = &mut self.jit {
            jit.flush();
        }
    }

    /// The execution tier guest code runs in.
    pub fn tier(&self) -> Tier {
        self.jit.as_ref().map_or(Tier::Interp, Jit::tier)
    }

    /// The JIT's counters (None when the interpreter runs everything).
    /// Makes the JIT count hops between compiled blocks in its statistics (at a small
    /// cost per hop).
    pub fn count_jit_hops(&mut self) {
        if let Some(j) = &mut self.jit {
            j.count_hops();
        }
    }

    pub fn jit_stats(&self) -> Option<Stats> {
        self.jit.as_ref().map(|j| j.stats)
    }

    /// How many times the guest reset the machine.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Runs until the guest powers off or halts for good, or until `limit` instructions
    /// have run in total.
    pub fn run(&mut self, limit: Option<u64>) -> Stop {
        loop {
            let icount = self.cpu.state.icount;
            self.board.devices.set_icount(icount);
            self.board.devices.advance();
            self.cpu.irq_changed();
            self.drain_serial();
            self.send_frames();
            if let Some(stop) = self.input_point() {
                self.drain_serial();
                return stop;
            }
            if let Some(ev) = self.board.devices.power_event.take() {
                match ev {
                    PowerEvent::PowerOff => return Stop::PowerOff,
                    PowerEvent::Reset => self.reset(),
                }
            }
            if std::mem::take(&mut self.board.devices.a20_changed) {
                self.cpu.set_a20(self.board.devices.a20);
            }
            if self.board.devices.pci.take_pam_written() {
                let pam = self.board.devices.pci.pam();
                self.shadow.apply(pam, &mut self.cpu);
            }
            if let Some(l) = limit {
                if icount >= l {
                    return Stop::InstructionLimit;
                }
            }
            let deadline = self.board.devices.next_event().map(clock::icount_at);
            let mut budget = deadline.map_or(MAX_SLICE, |d| d.saturating_sub(icount));
            budget = budget.clamp(1, MAX_SLICE);
            if let Some(l) = limit {
                budget = budget.min(l - icount);
            }
            if let Some(at) = self.next_replay_stop() {
                budget = budget.min(at.saturating_sub(icount).max(1));
            }
            let runner = self.jit.as_mut().map(|j| j as &mut dyn BlockRunner);
            match self.cpu.run_with(&mut self.board, budget, runner) {
                Exit::Budget if std::mem::take(&mut self.cpu.breakpoint_hit) => {
                    self.drain_serial();
                    return Stop::Breakpoint;
                }
                Exit::Budget => {}
                Exit::Shutdown => {
                    log::info!("triple fault: resetting");
                    self.reset();
                }
                Exit::Halted => {
                    if !self.cpu.state.flags.iflag() {
                        // Nothing can interrupt a CPU halted with IF clear (no NMI source).
                        self.drain_serial();
                        return Stop::HaltedForever;
                    }
                    // Idle until the next device event (or, with none scheduled, for a
                    // slice, waiting for outside input).
                    // The guest may have reprogrammed a timer just before HLT: ask again.
                    let deadline = self.board.devices.next_event().map(clock::icount_at);
                    let mut wake = deadline.unwrap_or(self.cpu.state.icount + MAX_SLICE);
                    if let Some(at) = self.next_replay_stop() {
                        wake = wake.min(at);
                    }
                    let halted_at = self.cpu.state.icount;
                    let outside = self.net.has_backend() || self.serial_in.is_some();
                    if outside && self.is_live() {
                        // Frames answer, and people type, in wall time: idle no faster
                        // than it (a guest waiting at a prompt does not race its clock
                        // and the host's CPU), and wake early when input comes.
                        let (net, pending) = (&mut self.net, &mut self.pending);
                        let serial = &mut self.serial_in;
                        wake = self.pacer.idle(halted_at, wake, || {
                            let frames = net.receive();
                            let came = !frames.is_empty();
                            pending.extend(frames.into_iter().map(Input::Frame));
                            take_serial_input(serial, pending) || came
                        });
                    }
                    self.cpu.state.icount = halted_at.max(wake);
                    if let Some(gaps) = &mut self.halt_gaps {
                        if wake > halted_at {
                            gaps.insert(wake, halted_at);
                        }
                    }
                }
            }
        }
    }

    /// Whether input comes from the host (live or recording), not from a recording.
    fn is_live(&self) -> bool {
        !matches!(self.journal, Journal::Replay(_))
    }

    /// Connects the network card (the NAT, a socket to another hospes, a capture).
    pub fn connect_network(&mut self, link: net::link::NetLink) {
        self.net = link;
    }

    /// Passes the frames the guest sent to the network.
    fn send_frames(&mut self) {
        let Some(nic) = &mut self.board.devices.nic else {
            return;
        };
        let now = clock::nanos(self.cpu.state.icount);
        for frame in nic.card.take_transmitted() {
            self.net.send(&frame, now);
        }
    }

    /// Frames from outside, queued as input (the input point applies or records them).
    fn poll_network(&mut self) {
        if self.board.devices.nic.is_none() {
            return;
        }
        for frame in self.net.receive() {
            self.pending.push(Input::Frame(frame));
        }
    }

    fn reset(&mut self) {
        self.resets += 1;
        self.cpu.reset();
        self.cpu.set_a20(true);
    }

    fn drain_serial(&mut self) {
        let out = self.board.devices.uarts[0].take_output();
        if !out.is_empty() {
            let _ = self.serial_out.write_all(&out);
            let _ = self.serial_out.flush();
        }
        self.drain_debugcon();
    }

    /// Also sends the firmware's debug console (port 0x402) to `out`.
    pub fn set_debugcon_output(&mut self, out: Box<dyn Write>) {
        self.debugcon_out = Some(out);
    }

    /// Passes the debug console's bytes on: whole lines to the log, everything to the
    /// output set with [`Machine::set_debugcon_output`].
    fn drain_debugcon(&mut self) {
        let out = self.board.devices.debugcon.take_output();
        if out.is_empty() {
            return;
        }
        if let Some(w) = &mut self.debugcon_out {
            let _ = w.write_all(&out);
            let _ = w.flush();
        }
        for &b in &out {
            if b == b'\n' || self.debugcon_line.len() >= 4096 {
                let line = String::from_utf8_lossy(&self.debugcon_line);
                log::debug!(target: "debugcon", "{}", line.trim_end());
                self.debugcon_line.clear();
            } else {
                self.debugcon_line.push(b);
            }
        }
    }

    /// Feeds COM1 from a channel (the host's stdin, for one).
    pub fn set_serial_input(&mut self, rx: std::sync::mpsc::Receiver<Vec<u8>>) {
        self.serial_in = Some(rx);
    }

    fn poll_serial_input(&mut self) {
        take_serial_input(&mut self.serial_in, &mut self.pending);
    }

    /// A key pressed or released on the host keyboard, as its set-2 make code (E0xxh for
    /// extended keys); the i8042 translates it if the guest asks for set 1. It reaches
    /// the guest when the machine next runs.
    pub fn key_event(&mut self, make: u16, pressed: bool) {
        self.pending.push(Input::Key { make, pressed });
    }

    /// The host mouse moved by `dx`, `dy` (positive right and up) and its wheel by `dz`
    /// (positive towards the user), with `buttons` held (bit 0 left, 1 right, 2 middle).
    /// It reaches the guest's PS/2 mouse when the machine next runs, as packets if the
    /// guest has enabled reporting (nothing otherwise, as a real mouse).
    pub fn mouse_event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        self.pending.push(Input::Mouse {
            dx,
            dy,
            dz,
            buttons,
        });
    }

    /// Bytes typed on the serial console (COM1). They reach the guest when the machine
    /// next runs.
    pub fn serial_input(&mut self, bytes: &[u8]) {
        self.pending.push(Input::Serial(bytes.to_vec()));
    }

    fn apply(&mut self, input: Input) {
        match input {
            Input::Serial(bytes) => self.board.devices.uarts[0].push_input(&bytes),
            Input::Key { make, pressed } => self.board.devices.kbc.key_set2(make, pressed),
            Input::Mouse {
                dx,
                dy,
                dz,
                buttons,
            } => self.board.devices.kbc.mouse_event(dx, dy, dz, buttons),
            Input::Frame(frame) => {
                if let Some(nic) = &mut self.board.devices.nic {
                    self.net
                        .capture(&frame, clock::nanos(self.cpu.state.icount));
                    nic.card.receive(&frame);
                }
            }
        }
        self.board.devices.sync_irqs();
        self.cpu.irq_changed();
    }

    /// Virtual time now, in nanoseconds.
    pub fn now(&self) -> u64 {
        clock::nanos(self.cpu.state.icount)
    }

    /// Draws the screen as the monitor would show it now.
    pub fn render_screen(&self, frame: &mut hospes_devices::vga::Frame) {
        self.board.devices.vga.render(self.now(), frame);
    }

    /// Brings `screen` up to date, redrawing only what changed since its last update;
    /// false when nothing did.
    pub fn update_screen(&self, screen: &mut hospes_devices::vga::Screen) -> bool {
        screen.update(&self.board.devices.vga, self.now())
    }

    /// What the display is showing: its text or graphics mode and size.
    pub fn display_mode(&self) -> hospes_devices::vga::DisplayMode {
        self.board.devices.vga.mode()
    }

    /// The text-mode screen as lines of text (code page 437 bytes outside printable
    /// ASCII become '?'; trailing blanks are trimmed). Empty in graphics modes.
    pub fn screen_text(&self) -> Vec<String> {
        self.board
            .devices
            .vga
            .text_rows()
            .iter()
            .map(|row| {
                let line: String = row
                    .iter()
                    .map(|&c| match c {
                        0x20..=0x7E => c as char,
                        0 => ' ',
                        _ => '?',
                    })
                    .collect();
                line.trim_end().to_string()
            })
            .collect()
    }
}

/// Moves what came on the serial input channel into `pending`; true if anything did.
/// At the end of the input (the host's stdin closed) the channel is dropped, so an
/// idle guest is no longer paced waiting for it.
fn take_serial_input(
    channel: &mut Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    pending: &mut Vec<Input>,
) -> bool {
    use std::sync::mpsc::TryRecvError;
    let Some(rx) = channel else { return false };
    let mut got = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(bytes) => got.extend_from_slice(&bytes),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                *channel = None;
                break;
            }
        }
    }
    if got.is_empty() {
        return false;
    }
    pending.push(Input::Serial(got));
    true
}

/// Small machines for the unit tests of snapshots, replay and the debugger.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{Machine, MachineConfig, Stop};
    use hospes_jit::Tier;

    /// A machine past its POST (which finds nothing to boot), then running a loop
    /// that counts in AX, stores the count at 0600h and writes it to COM1.
    pub fn counting_machine() -> Machine {
        let mut m = machine();
        assert_eq!(m.run(Some(50_000_000)), Stop::HaltedForever);
        let program = [
            0xBA, 0xF8, 0x03, // mov dx, 3F8h
            0x31, 0xC0, // xor ax, ax
            0x40, // inc ax
            0xA3, 0x00, 0x06, // mov [0600h], ax
            0xEE, // out dx, al
            0xEB, 0xF9, // jmp (to inc ax)
        ];
        m.cpu.write_phys(0x7C00, &program);
        let s = &mut m.cpu.state;
        s.seg[hospes_cpu::state::CS] = hospes_cpu::state::Segment::real(0, s.seg[0].attr);
        s.rip = 0x7C00;
        s.halted = false;
        m
    }

    pub fn machine() -> Machine {
        let config = MachineConfig {
            ram_mib: 4,
            boot: hospes_bios::BootOptions::default(),
            drives: Vec::new(),
            ide: [(None, None), (None, None)],
            rtc_start_unix: 1_764_028_800,
            firmware: None,
            tier: Tier::Interp,
            disks: Vec::new(),
            images: Vec::new(),
            nic: None,
        };
        Machine::new(config, Box::new(std::io::sink())).expect("machine")
    }
}
