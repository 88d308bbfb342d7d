//! `hospes run`: build a PC from the command line and run it.

use crate::monitor::{Monitor, MonitorSpec};
use crate::screen::{self, Display, DisplayArgs, Ended, Presentation};
use hospes_bios::{
    BootDevice, BootOptions, DirectKernel, KernelFormat, LinuxBoot, Module, MultibootBoot,
};
use hospes_image::ova::Appliance;
use hospes_jit::Tier;
use hospes_machine::gdb::Debugger;
use hospes_machine::snapshot::{DiskFile, DiskRole, Snapshot};
use hospes_machine::{Machine, MachineConfig, Stop};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serial {
    Stdio,
    None,
    File(PathBuf),
}

impl std::str::FromStr for Serial {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" | "mon:stdio" => Ok(Serial::Stdio),
            "none" | "null" => Ok(Serial::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Serial::File(PathBuf::from(p))),
                _ => Err(format!(
                    "unknown serial backend '{s}' (stdio, none, file:PATH)"
                )),
            },
        }
    }
}

/// The execution tier option shared by `run`, `demo` and `conformance`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct TierArg {
    /// Execution tier: interp (the interpreter only), auto (the interpreter, compiling
    /// blocks to host code with Cranelift once they are hot) or jit (every block compiled
    /// the first time it runs: the JIT runs all it can, for tests).
    #[arg(long, value_name = "TIER", default_value = "auto")]
    pub tier: Tier,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A disk image to boot (the same as --hda), or an OVA appliance: its disks become
    /// hda and hdb, its memory size the default, and the guest's writes stay in memory.
    #[arg(value_name = "IMAGE", conflicts_with_all = ["hda", "hdb", "restore"])]
    pub image: Option<PathBuf>,
    /// Guest RAM in MiB [default: 128, or the appliance's].
    #[arg(short = 'm', long = "memory", value_name = "MIB")]
    pub memory: Option<u64>,
    /// A Linux bzImage or a Multiboot kernel to boot directly.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// An initrd for a Linux --kernel. For a Multiboot kernel, its modules:
    /// comma-separated "FILE ARGS..." entries (",," is a literal comma).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(long, value_name = "TEXT", requires = "kernel", default_value = "")]
    pub append: String,
    /// First hard disk image.
    #[arg(long, value_name = "FILE")]
    pub hda: Option<PathBuf>,
    /// Second hard disk image.
    #[arg(long, value_name = "FILE")]
    pub hdb: Option<PathBuf>,
    /// CD-ROM image (ISO 9660).
    #[arg(long, value_name = "FILE")]
    pub cdrom: Option<PathBuf>,
    /// Floppy image.
    #[arg(long, value_name = "FILE")]
    pub fda: Option<PathBuf>,
    /// Boot order: a (floppy), c (hard disk), d (CD-ROM), e.g. `dc`.
    #[arg(long, value_name = "ORDER")]
    pub boot: Option<String>,
    /// A firmware ROM image (SeaBIOS's bios.bin, say) to run in place of hospes's own
    /// BIOS: mapped below 4 GiB, its last 128 KiB also at E0000-FFFFF.
    #[arg(long, value_name = "FILE")]
    pub bios: Option<PathBuf>,
    /// A VGA BIOS for the --bios firmware to run (e.g. SeaVGABIOS,
    /// /usr/share/seabios/vgabios-isavga.bin), so it and the guest can use the screen.
    #[arg(long, value_name = "FILE")]
    pub vga_bios: Option<PathBuf>,
    /// Where the firmware's debug console (port 0x402) goes, besides the debug log.
    #[arg(long, value_name = "FILE", hide = true)]
    pub debugcon: Option<PathBuf>,
    /// Where COM1 goes: stdio, none or file:PATH.
    #[arg(long, value_name = "BACKEND")]
    pub serial: Option<Serial>,
    /// A monitor console (screendump, sendkey, save, quit; `help` lists them) on
    /// unix:PATH, tcp:HOST:PORT or stdio (with --serial elsewhere).
    #[arg(long, value_name = "WHERE")]
    pub monitor: Option<MonitorSpec>,
    /// The network card and what it is connected to (repeatable): `user` (NAT, with
    /// `,hostfwd=tcp:127.0.0.1:HPORT-:GPORT` or `udp:...`), `nic,model=ne2k_pci|ne2k_isa[,iobase=,
    /// irq=,macaddr=]`, `socket,udp=HOST:PORT,localaddr=HOST:PORT`, `pcap=FILE`.
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,
    #[command(flatten)]
    pub screen: DisplayArgs,
    #[command(flatten)]
    pub tier: TierArg,
    /// When the run ends, print the JIT's counters on stderr.
    #[arg(long, hide = true)]
    pub jit_stats: bool,
    /// Seconds since the Unix epoch the RTC starts at (default: now). Fixed, it makes a
    /// run reproducible.
    #[arg(long, value_name = "SECONDS", hide = true)]
    pub rtc_start: Option<i64>,
    /// Stop after this many instructions (for tests and benchmarks).
    #[arg(long, value_name = "N", hide = true)]
    pub max_instructions: Option<u64>,
    /// Record the run into FILE (a snapshot of the start, every outside input stamped
    /// with the instruction count, state digests); `hospes replay FILE` plays it back.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// When the run ends, save the whole machine to FILE (see --restore).
    #[arg(long, value_name = "FILE")]
    pub save_on_exit: Option<PathBuf>,
    /// Keep the guest's disk writes in memory: the image files stay as they are (a
    /// recording always does this, so that its replay starts from the same disks).
    #[arg(long)]
    pub snapshot: bool,
    /// Start from a snapshot saved with --save-on-exit, in place of building a machine:
    /// it brings its memory size and disks (which must be unchanged) along.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "hda", "hdb", "cdrom", "fda", "boot", "bios", "rtc_start"])]
    pub restore: Option<PathBuf>,
    /// Serve gdb's remote protocol on tcp::PORT (127.0.0.1): attach any time with
    /// `target remote :PORT`.
    #[arg(long, value_name = "tcp::PORT")]
    pub gdb: Option<String>,
    /// With --gdb, wait for gdb before running the first instruction.
    #[arg(short = 'S', requires = "gdb")]
    pub wait_for_gdb: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The recording.
    #[arg(value_name = "FILE")]
    pub recording: PathBuf,
    /// Where COM1's output goes: stdio, none or file:PATH (its input comes from the
    /// recording).
    #[arg(long, value_name = "BACKEND")]
    pub serial: Option<Serial>,
    #[command(flatten)]
    pub tier: TierArg,
    /// Wait for gdb on tcp::PORT (127.0.0.1) before replaying: it can then also go
    /// backwards (reverse-stepi, reverse-continue, reverse watchpoints).
    #[arg(long, value_name = "tcp::PORT")]
    pub gdb: Option<String>,
}

const DEFAULT_MEMORY_MIB: u64 = 128;

/// Whether the file named on the command line is an OVA appliance.
fn is_ova(path: &Path) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut head = [0u8; 512];
    let n = file
        .read_at(&mut head, 0)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hospes_image::ova::probe(&head[..n]))
}

/// QEMU's single-dash spellings, rewritten to ours before parsing.
pub fn qemu_aliases(args: impl Iterator<Item = String>) -> Vec<String> {
    const LONG: [&str; 15] = [
        "kernel", "initrd", "append", "hda", "hdb", "cdrom", "fda", "boot", "bios", "serial",
        "display", "memory", "gdb", "snapshot", "net",
    ];
    args.map(|a| match a.strip_prefix('-') {
        Some(rest) if !rest.starts_with('-') && LONG.contains(&rest) => format!("--{rest}"),
        _ => a,
    })
    .collect()
}

fn boot_order(spec: &str) -> Result<Vec<BootDevice>, String> {
    // QEMU also accepts `order=dc` and `menu=...` style options: take `order=`.
    let spec = spec
        .split(',')
        .find_map(|p| p.strip_prefix("order="))
        .unwrap_or(spec);
    spec.chars()
        .map(|c| match c {
            'a' => Ok(BootDevice::Floppy),
            'c' => Ok(BootDevice::HardDisk),
            'd' => Ok(BootDevice::Cdrom),
            other => Err(format!("unknown boot device '{other}' (a, c or d)")),
        })
        .collect()
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// QEMU's Multiboot module list: entries separated by commas, ",," standing for a
/// comma inside an entry.
fn split_module_list(spec: &str) -> Vec<String> {
    let mut entries = Vec::new();
    let mut entry = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                entry.push(',');
            }
            ',' => entries.push(std::mem::take(&mut entry)),
            _ => entry.push(c),
        }
    }
    entries.push(entry);
    entries
}

/// Reads the modules of a `--initrd` list: each entry's first word is the file, and the
/// whole entry is the module's string (as QEMU does).
fn multiboot_modules(spec: &Path) -> Result<Vec<Module>, String> {
    let spec = spec
        .to_str()
        .ok_or("--initrd: a Multiboot module list must be valid UTF-8")?;
    split_module_list(spec)
        .into_iter()
        .map(|entry| {
            let file = entry
                .split_whitespace()
                .next()
                .ok_or_else(|| format!("--initrd: an empty module entry in '{spec}'"))?;
            Ok(Module {
                data: read(Path::new(file), "module")?,
                string: entry,
            })
        })
        .collect()
}

/// Reads `--kernel` and what goes with it, telling a Linux kernel from a Multiboot one.
fn direct_kernel(args: &RunArgs, path: &Path) -> Result<DirectKernel, String> {
    let kernel = read(path, "kernel")?;
    match KernelFormat::detect(&kernel) {
        Some(KernelFormat::Linux) => Ok(DirectKernel::Linux(LinuxBoot {
            kernel,
            initrd: args
                .initrd
                .as_ref()
                .map(|p| read(p, "initrd"))
                .transpose()?,
            cmdline: args.append.clone(),
        })),
        Some(KernelFormat::Multiboot) => {
            // The kernel sees its own file name first, as QEMU passes it.
            let mut cmdline = path.display().to_string();
            if !args.append.is_empty() {
                cmdline.push(' ');
                cmdline.push_str(&args.append);
            }
            Ok(DirectKernel::Multiboot(MultibootBoot {
                kernel,
                cmdline,
                modules: match &args.initrd {
                    Some(spec) => multiboot_modules(spec)?,
                    None => Vec::new(),
                },
            }))
        }
        None => Err(format!(
            "{}: not a Linux bzImage or Multiboot kernel",
            path.display()
        )),
    }
}

/// Builds the machine the command line describes.
fn build(args: &RunArgs, serial: Box<dyn Write>) -> Result<Machine, String> {
    let net = crate::net::NetSetup::parse(&args.net)?;
    let mut machine = build_machine(args, serial, net.nic)?;
    machine.connect_network(net.connect()?);
    Ok(machine)
}

/// The machine of the command line (or of the snapshot it restores), not yet
/// connected to the network.
fn build_machine(
    args: &RunArgs,
    serial: Box<dyn Write>,
    nic: Option<hospes_machine::nic::NicConfig>,
) -> Result<Machine, String> {
    if let Some(path) = &args.restore {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let snap = Snapshot::read_from(std::io::BufReader::new(file))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        return Machine::from_snapshot(&snap, args.tier.tier, serial).map_err(|e| e.to_string());
    }
    let firmware = match &args.bios {
        None if args.vga_bios.is_some() => {
            return Err("--vga-bios is for a firmware given with --bios (hospes's own BIOS has its own video services)".into());
        }
        None => None,
        Some(path) => {
            if args.kernel.is_some() {
                return Err("--kernel cannot be used with --bios: only hospes's own BIOS loads kernels directly (boot a disk or CD with a boot loader instead)".into());
            }
            if args.fda.is_some() {
                return Err("--fda cannot be used with --bios: there is no floppy controller for another firmware to drive".into());
            }
            let image = read(path, "BIOS image")?;
            hospes_machine::firmware::check_image(image.len())
                .map_err(|e| format!("--bios {}: {e}", path.display()))?;
            let vga_bios = match &args.vga_bios {
                Some(p) => {
                    let rom = read(p, "VGA BIOS")?;
                    hospes_machine::firmware::check_option_rom(&rom)
                        .map_err(|e| format!("--vga-bios {}: {e}", p.display()))?;
                    Some(rom)
                }
                None => None,
            };
            Some(hospes_machine::Firmware { image, vga_bios })
        }
    };
    let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let appliance = match &args.image {
        Some(path) if is_ova(path)? => Some(Appliance::read(path)?),
        _ => None,
    };
    let hda = match (&appliance, &args.image) {
        (Some(_), _) => None,
        (None, Some(image)) => Some(image),
        (None, None) => args.hda.as_ref(),
    };
    let mut disks: Vec<DiskFile> = [
        (args.fda.as_ref(), DiskRole::Floppy),
        (hda, DiskRole::Hda),
        (args.hdb.as_ref(), DiskRole::Hdb),
        (args.cdrom.as_ref(), DiskRole::Cdrom),
    ]
    .into_iter()
    .filter_map(|(path, role)| {
        path.map(|p| DiskFile {
            path: absolute(p),
            role,
            member: None,
        })
    })
    .collect();
    let mut memory = args.memory.unwrap_or(DEFAULT_MEMORY_MIB);
    if let (Some(ova), Some(path)) = (&appliance, &args.image) {
        if ova.disks.len() > 2 {
            return Err(format!("{}: the appliance has {} disks; hospes attaches two hard disks (import it with `hospes img import-ova` and choose)", path.display(), ova.disks.len()));
        }
        for (name, role) in ova.disks.iter().zip([DiskRole::Hda, DiskRole::Hdb]) {
            disks.push(DiskFile {
                path: absolute(path),
                role,
                member: Some(name.clone()),
            });
        }
        memory = args.memory.or(ova.memory_mib).unwrap_or(DEFAULT_MEMORY_MIB);
        eprintln!(
            "hospes: {}: the appliance's disks are read-only in the archive; the guest's writes stay in memory (`hospes img import-ova` makes images of their own)",
            path.display()
        );
        if ova.cpus.is_some_and(|n| n > 1) {
            log::warn!(
                "the appliance asks for {} CPUs; hospes runs one",
                ova.cpus.unwrap_or(1)
            );
        }
    }
    let hospes_machine::disk::Attached {
        drives,
        ide,
        images,
    } = hospes_machine::disk::attach(&disks)?;
    let mut boot = BootOptions::default();
    if let Some(order) = &args.boot {
        boot.order = boot_order(order)?;
    }
    if let Some(k) = &args.kernel {
        boot.kernel = Some(direct_kernel(args, k)?);
    }
    let config = MachineConfig {
        ram_mib: memory,
        boot,
        drives,
        ide,
        rtc_start_unix: args.rtc_start.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        }),
        firmware,
        tier: args.tier.tier,
        disks,
        images,
        nic,
    };
    Machine::new(config, serial).map_err(|e| e.to_string())
}

fn serial_output(serial: &Option<Serial>) -> Result<Box<dyn Write>, String> {
    Ok(match serial.clone().unwrap_or(Serial::Stdio) {
        Serial::Stdio => Box::new(std::io::stdout()),
        Serial::None => Box::new(std::io::sink()),
        Serial::File(p) => Box::new(
            std::fs::File::create(&p)
                .map_err(|e| format!("cannot create serial output {}: {e}", p.display()))?,
        ),
    })
}

/// Runs the machine headless until gdb attaches (at once with `wait`), serves it until
/// it detaches, and gives the machine back (with why it stopped, if it did).
fn run_with_gdb(
    mut machine: Machine,
    spec: &str,
    wait: bool,
    limit: Option<u64>,
) -> Result<(Machine, Option<Stop>), String> {
    let port = hospes_machine::gdb::parse_port(spec)?;
    if !wait {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot listen for gdb on 127.0.0.1:{port}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("gdb listener: {e}"))?;
        loop {
            let at = machine.cpu.state.icount + 10_000_000;
            let stop = machine.run(Some(limit.map_or(at, |l| l.min(at))));
            if stop != Stop::InstructionLimit
                || limit.is_some_and(|l| machine.cpu.state.icount >= l)
            {
                return Ok((machine, Some(stop)));
            }
            if let Ok((stream, _)) = listener.accept() {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| format!("gdb connection: {e}"))?;
                return Debugger::new(machine)?.serve(stream);
            }
        }
    }
    Debugger::new(machine)?.serve_tcp(port)
}

/// `hospes replay`: 0 when the replay ran to the end of the recording identically.
pub fn replay(args: ReplayArgs) -> Result<i32, String> {
    let serial = serial_output(&args.serial)?;
    let mut machine =
        Machine::replay(&args.recording, args.tier.tier, serial).map_err(|e| e.to_string())?;
    let mut stop = None;
    if let Some(spec) = &args.gdb {
        let port = hospes_machine::gdb::parse_port(spec)?;
        let debugger = Debugger::new(machine)?;
        (machine, stop) = debugger.serve_tcp(port)?;
    }
    let stop = match stop {
        Some(s) => s,
        None => machine.run(None),
    };
    let report = machine.replay_report().unwrap_or("").to_string();
    match stop {
        Stop::ReplayEnded => {
            eprintln!("hospes: {report}");
            Ok(0)
        }
        Stop::ReplayDiverged => Err(report),
        // Only gdb's kill makes a replay power off (the end mark comes first).
        Stop::PowerOff if args.gdb.is_some() => {
            eprintln!(
                "hospes: gdb ended the replay at instruction {}",
                machine.cpu.state.icount
            );
            Ok(0)
        }
        other => Err(format!(
            "the replay stopped before the end of the recording ({other:?}): {}",
            machine.describe_cpu()
        )),
    }
}

pub fn run(args: RunArgs) -> Result<i32, String> {
    if args.gdb.is_some() && args.screen.display == Some(Display::Window) {
        return Err("--gdb runs the machine headless: use it with --display none".into());
    }
    let stdio = matches!(args.serial.clone().unwrap_or(Serial::Stdio), Serial::Stdio);
    match &args.monitor {
        Some(MonitorSpec::Stdio) if stdio => {
            return Err(
                "--monitor stdio needs COM1 elsewhere: add --serial none or file:PATH".into(),
            )
        }
        Some(_) if args.gdb.is_some() => {
            return Err("--monitor and --gdb: use gdb's monitor command instead".into())
        }
        _ => {}
    }
    let serial = serial_output(&args.serial)?;
    let mut machine = build(&args, serial)?;
    let monitor = args.monitor.as_ref().map(Monitor::start).transpose()?;
    if args.snapshot {
        machine.keep_disk_writes_in_memory();
    }
    if let Some(path) = &args.record {
        machine.record(path).map_err(|e| e.to_string())?;
    }
    if args.jit_stats {
        machine.count_jit_hops();
    }
    if let Some(p) = &args.debugcon {
        let file = std::fs::File::create(p)
            .map_err(|e| format!("cannot create debug console output {}: {e}", p.display()))?;
        machine.set_debugcon_output(Box::new(file));
    }
    if stdio {
        // Typed lines go to COM1 (the terminal stays in line mode).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        machine.set_serial_input(rx);
    }
    let how = Presentation {
        display: args.screen.display.unwrap_or(Display::None),
        title: "PC",
        linger: false,
    };
    let mut debugged = None;
    if let Some(spec) = &args.gdb {
        (machine, debugged) =
            run_with_gdb(machine, spec, args.wait_for_gdb, args.max_instructions)?;
    }
    let ended = match debugged {
        Some(stop) => Ended::Guest(stop),
        None => screen::run(
            &mut machine,
            args.max_instructions,
            &args.screen,
            &how,
            monitor.as_ref(),
        )?,
    };
    if args.record.is_some() {
        machine.finish_recording().map_err(|e| e.to_string())?;
    }
    machine.flush_disks()?;
    if let Some(path) = &args.save_on_exit {
        machine.save(path).map_err(|e| e.to_string())?;
    }
    if let Some(s) = machine.jit_stats().filter(|_| args.jit_stats) {
        eprintln!(
            "hospes: JIT: {} blocks compiled ({} instructions, {} native; {} with a PC thunk in place) in {:.2} s, {} left to the interpreter ({} instructions interpreted in blocks waiting for code), {} compiled block runs ({} through links; back to the run loop after {} interpreter stops, {} fall-throughs, {} branches, {} returns, {} budget ends), {} flushes",
            s.compiled_blocks,
            s.compiled_instructions,
            s.native_instructions,
            s.pc_thunks,
            s.compile_time.as_secs_f64(),
            s.interpreted_blocks,
            s.waiting_instructions,
            s.block_runs,
            s.linked_runs,
            s.exits[0],
            s.exits[1],
            s.exits[2],
            s.exits[3],
            s.exits[4],
            s.flushes
        );
    }
    let stop = match ended {
        Ended::Guest(stop) => stop,
        Ended::Closed => return Ok(0),
    };
    match stop {
        Stop::PowerOff => Ok(0),
        Stop::HaltedForever => {
            eprintln!(
                "hospes: the guest halted with interrupts disabled: {}",
                machine.describe_cpu()
            );
            Ok(1)
        }
        Stop::InstructionLimit => {
            eprintln!(
                "hospes: instruction limit reached: {}",
                machine.describe_cpu()
            );
            Ok(3)
        }
        Stop::ReplayEnded | Stop::ReplayDiverged | Stop::Breakpoint => {
            eprintln!(
                "hospes: {}",
                machine.replay_report().unwrap_or("the recording stopped")
            );
            Ok(4)
        }
        Stop::RecordingFailed => Err(machine
            .replay_report()
            .unwrap_or("the recording failed")
            .to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_spellings_become_ours() {
        let v = qemu_aliases(
            [
                "hospes", "run", "-kernel", "k", "-m", "64", "--hda", "d", "-append", "x",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        assert_eq!(
            v,
            ["hospes", "run", "--kernel", "k", "-m", "64", "--hda", "d", "--append", "x"]
        );
    }

    #[test]
    fn module_lists_split_on_single_commas() {
        assert_eq!(
            split_module_list("mod1.bin arg1,mod2.bin"),
            ["mod1.bin arg1", "mod2.bin"]
        );
        assert_eq!(split_module_list("a x,,y,b"), ["a x,y", "b"]);
        assert_eq!(split_module_list("a,"), ["a", ""]);
        assert_eq!(split_module_list("a,,,b"), ["a,", "b"]);
        let e = multiboot_modules(Path::new(",a")).unwrap_err();
        assert!(e.contains("empty module entry"), "{e}");
    }

    #[test]
    fn boot_orders() {
        assert_eq!(
            boot_order("dc").unwrap(),
            vec![BootDevice::Cdrom, BootDevice::HardDisk]
        );
        assert_eq!(
            boot_order("order=a,menu=on").unwrap(),
            vec![BootDevice::Floppy]
        );
        assert!(boot_order("x").is_err());
        assert_eq!(
            "file:/tmp/x".parse::<Serial>().unwrap(),
            Serial::File("/tmp/x".into())
        );
        assert!("bogus".parse::<Serial>().is_err());
    }
}
