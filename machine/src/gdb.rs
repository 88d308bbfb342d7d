//! A gdb remote stub (the `gdbstub` crate): registers (segments and control registers
//! included), memory by linear address, breakpoints, write watchpoints, single steps;
//! and on a replay, going backwards (`reverse-stepi`, `reverse-continue`, reverse
//! watchpoints).
//!
//! Going backwards is going forwards again: the debugger keeps snapshots of the
//! machine as it runs (in memory, sharing unchanged pages), restores the nearest one
//! before where it must go, and replays from there, the recording feeding the same
//! inputs at the same instruction counts. Everything stops on instruction counts, so
//! the machine it reaches is the one that was there.
//!
//! Breakpoints and watchpoints are checked between instructions: with any set, the
//! machine runs one instruction at a time (slow, but exact whatever the tier).

use crate::snapshot::Snapshot;
use crate::{Machine, Stop};
use gdbstub::arch::{Arch, RegId, Registers};
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::{run_blocking, DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::reverse_exec::{ReplayLogPosition, ReverseCont, ReverseStep};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadSingleStep,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, HwBreakpoint, HwWatchpoint, SwBreakpoint, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::{X86CoreRegs, X86SegmentRegs, X87FpuInternalRegs};
use std::net::TcpListener;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Instructions run between looks at the connection (for gdb's interrupt) when no
/// breakpoint makes the machine go one instruction at a time.
const CHUNK: u64 = 1_000_000;
/// A snapshot is kept when the machine has run this many instructions and this long
/// since the last: going back then replays at most about that much.
const SNAPSHOT_INSTRUCTIONS: u64 = 1_000_000;
const SNAPSHOT_TIME: Duration = Duration::from_millis(200);
/// Snapshots kept before older ones are thinned out (every other one dropped).
const MAX_SNAPSHOTS: usize = 256;

/// i386 with the control registers after the usual ones (gdb shows them as $cr0...).
pub enum HospesX86 {}

/// The registers gdb sees: the i386 core and SSE set, then CR0, CR2, CR3 and CR4.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub core: X86CoreRegs,
    pub cr: [u32; 4],
}

impl Registers for Regs {
    type ProgramCounter = u32;

    fn pc(&self) -> u32 {
        self.core.eip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for cr in self.cr {
            for b in cr.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        const CORE: usize = 0x134;
        self.core.gdb_deserialize(bytes.get(..CORE).ok_or(())?)?;
        for (cr, b) in self.cr.iter_mut().zip(bytes[CORE..].chunks_exact(4)) {
            *cr = u32::from_le_bytes(b.try_into().map_err(|_| ())?);
        }
        Ok(())
    }
}

/// Registers by gdb's number (only the size matters here: single registers are read
/// through the whole set).
#[derive(Clone, Copy, Debug)]
pub struct RegNumber(pub usize);

impl RegId for RegNumber {
    fn from_raw_id(id: usize) -> Option<(Self, Option<NonZeroUsize>)> {
        let size = match id {
            0..=15 => 4,
            16..=23 => 10,
            24..=31 => 4,
            32..=39 => 16,
            40..=44 => 4,
            _ => return None,
        };
        Some((RegNumber(id), NonZeroUsize::new(size)))
    }
}

impl Arch for HospesX86 {
    type Usize = u32;
    type Registers = Regs;
    type RegId = RegNumber;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// The register layout for gdb: its i386 core and SSE features, then ours.
const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <reg name="eax" bitsize="32" type="int32" regnum="0"/>
    <reg name="ecx" bitsize="32" type="int32"/>
    <reg name="edx" bitsize="32" type="int32"/>
    <reg name="ebx" bitsize="32" type="int32"/>
    <reg name="esp" bitsize="32" type="data_ptr"/>
    <reg name="ebp" bitsize="32" type="data_ptr"/>
    <reg name="esi" bitsize="32" type="int32"/>
    <reg name="edi" bitsize="32" type="int32"/>
    <reg name="eip" bitsize="32" type="code_ptr"/>
    <reg name="eflags" bitsize="32" type="int32"/>
    <reg name="cs" bitsize="32" type="int32"/>
    <reg name="ss" bitsize="32" type="int32"/>
    <reg name="ds" bitsize="32" type="int32"/>
    <reg name="es" bitsize="32" type="int32"/>
    <reg name="fs" bitsize="32" type="int32"/>
    <reg name="gs" bitsize="32" type="int32"/>
    <reg name="st0" bitsize="80" type="i387_ext"/>
    <reg name="st1" bitsize="80" type="i387_ext"/>
    <reg name="st2" bitsize="80" type="i387_ext"/>
    <reg name="st3" bitsize="80" type="i387_ext"/>
    <reg name="st4" bitsize="80" type="i387_ext"/>
    <reg name="st5" bitsize="80" type="i387_ext"/>
    <reg name="st6" bitsize="80" type="i387_ext"/>
    <reg name="st7" bitsize="80" type="i387_ext"/>
    <reg name="fctrl" bitsize="32" type="int" group="float"/>
    <reg name="fstat" bitsize="32" type="int" group="float"/>
    <reg name="ftag" bitsize="32" type="int" group="float"/>
    <reg name="fiseg" bitsize="32" type="int" group="float"/>
    <reg name="fioff" bitsize="32" type="int" group="float"/>
    <reg name="foseg" bitsize="32" type="int" group="float"/>
    <reg name="fooff" bitsize="32" type="int" group="float"/>
    <reg name="fop" bitsize="32" type="int" group="float"/>
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    <reg name="xmm0" bitsize="128" type="uint128" regnum="32"/>
    <reg name="xmm1" bitsize="128" type="uint128"/>
    <reg name="xmm2" bitsize="128" type="uint128"/>
    <reg name="xmm3" bitsize="128" type="uint128"/>
    <reg name="xmm4" bitsize="128" type="uint128"/>
    <reg name="xmm5" bitsize="128" type="uint128"/>
    <reg name="xmm6" bitsize="128" type="uint128"/>
    <reg name="xmm7" bitsize="128" type="uint128"/>
    <reg name="mxcsr" bitsize="32" type="int" group="vector"/>
  </feature>
  <feature name="org.hospes.x86.control">
    <reg name="cr0" bitsize="32" type="int32" regnum="41" group="system"/>
    <reg name="cr2" bitsize="32" type="int32" group="system"/>
    <reg name="cr3" bitsize="32" type="int32" group="system"/>
    <reg name="cr4" bitsize="32" type="int32" group="system"/>
  </feature>
</target>
"#;

/// How the machine is to go when gdb lets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Going {
    Continue,
    Step,
    ReverseContinue,
    ReverseStep,
}

/// A write watchpoint: the bytes watched and their value when last looked at.
struct Watch {
    addr: u32,
    len: u32,
    value: Vec<u8>,
}

/// Why the machine stopped for gdb.
#[derive(Debug)]
enum Halt {
    Step,
    Breakpoint,
    Watch(u32),
    /// Going back reached the first instruction the debugger knows.
    HistoryStart,
    /// A replay reached the end of its recording.
    HistoryEnd,
    Exited,
    Interrupted,
}

/// The machine as gdb drives it.
pub struct Debugger {
    pub machine: Machine,
    breakpoints: Vec<u32>,
    watches: Vec<Watch>,
    going: Going,
    /// Snapshots taken on the way, oldest first (the first where the session began).
    history: Vec<Snapshot>,
    last_snapshot: Instant,
    /// Set when the guest has powered off (or a replay ended): the machine no longer runs.
    finished: Option<Stop>,
}

impl Debugger {
    /// A debugger for `machine`; it can go backwards if the machine is replaying.
    pub fn new(mut machine: Machine) -> Result<Debugger, String> {
        machine.track_halts();
        let first = machine.snapshot(None).map_err(|e| e.to_string())?;
        Ok(Debugger {
            machine,
            breakpoints: Vec::new(),
            watches: Vec::new(),
            going: Going::Step,
            history: vec![first],
            last_snapshot: Instant::now(),
            finished: None,
        })
    }

    /// Waits for gdb on `port` (127.0.0.1) and serves it until it detaches or the
    /// machine ends; then the machine is the caller's again.
    pub fn serve_tcp(self, port: u16) -> Result<(Machine, Option<Stop>), String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot listen for gdb on 127.0.0.1:{port}: {e}"))?;
        eprintln!("hospes: waiting for gdb on 127.0.0.1:{port}");
        let (stream, _) = listener
            .accept()
            .map_err(|e| format!("cannot accept gdb's connection: {e}"))?;
        self.serve(stream)
    }

    /// Serves gdb on an accepted connection (see [`Debugger::serve_tcp`]).
    pub fn serve(mut self, stream: std::net::TcpStream) -> Result<(Machine, Option<Stop>), String> {
        let conn: Box<dyn ConnectionExt<Error = std::io::Error>> = Box::new(stream);
        let stub = GdbStub::new(conn);
        let ended = stub.run_blocking::<EventLoop>(&mut self);
        // The machine goes on without gdb: no breakpoint may stop it.
        self.disarm();
        match ended {
            Ok(DisconnectReason::Kill) => {
                let finished = Some(self.finished.unwrap_or(Stop::PowerOff));
                Ok((self.machine, finished))
            }
            Ok(_) => Ok((self.machine, self.finished)),
            Err(e) => Err(format!("gdb connection: {e}")),
        }
    }

    fn can_reverse(&mut self) -> bool {
        self.machine.player().is_some()
    }

    fn linear_eip(&self) -> u32 {
        let s = &self.machine.cpu.state;
        s.seg[hospes_cpu::state::CS].base.wrapping_add(s.rip) as u32
    }

    fn at_breakpoint(&self) -> bool {
        !self.breakpoints.is_empty() && self.breakpoints.contains(&self.linear_eip())
    }

    /// Reads linear memory as gdb sees it (no side effects); stops at a page that is
    /// not mapped.
    fn read_linear(&self, addr: u32, out: &mut [u8]) -> usize {
        for (i, b) in out.iter_mut().enumerate() {
            let lin = addr.wrapping_add(i as u32) as u64;
            match self.machine.cpu.debug_translate(lin) {
                Some(p) => *b = self.machine.cpu.mem.read_u8(p),
                None => return i,
            }
        }
        out.len()
    }

    fn watched_value(&self, w: &Watch) -> Vec<u8> {
        let mut v = vec![0u8; w.len as usize];
        self.read_linear(w.addr, &mut v);
        v
    }

    /// The first watchpoint whose bytes changed since last looked at (all are updated).
    fn watch_hit(&mut self) -> Option<u32> {
        let mut hit = None;
        for i in 0..self.watches.len() {
            let now = self.watched_value(&self.watches[i]);
            if now != self.watches[i].value {
                hit = hit.or(Some(self.watches[i].addr));
                self.watches[i].value = now;
            }
        }
        hit
    }

    fn refresh_watches(&mut self) {
        for i in 0..self.watches.len() {
            self.watches[i].value = self.watched_value(&self.watches[i]);
        }
    }

    /// Runs the machine up to instruction count `limit` (or until it stops on its own).
    fn run_to(&mut self, limit: u64) -> Option<Stop> {
        let stop = self.machine.run(Some(limit));
        self.keep_snapshot();
        match stop {
            Stop::InstructionLimit => None,
            other => {
                self.finished = Some(other);
                Some(other)
            }
        }
    }

    /// Takes a snapshot if enough has run since the last one.
    fn keep_snapshot(&mut self) {
        let icount = self.machine.cpu.state.icount;
        let last = self.history.last().map_or(0, |s| s.icount);
        if icount < last + SNAPSHOT_INSTRUCTIONS || self.last_snapshot.elapsed() < SNAPSHOT_TIME {
            return;
        }
        if let Ok(s) = self.machine.snapshot(self.history.last()) {
            self.history.push(s);
            self.last_snapshot = Instant::now();
        }
        if self.history.len() > MAX_SNAPSHOTS {
            // Keep the first, drop every other one of the older half.
            let half = self.history.len() / 2;
            let mut i = 0;
            self.history.retain(|_| {
                i += 1;
                i > half || i % 2 == 1
            });
        }
    }

    /// One instruction forward (or the rest of an idle stretch).
    fn step(&mut self) -> Halt {
        if self.finished.is_some() {
            return Halt::HistoryEnd;
        }
        self.disarm();
        let next = self.machine.cpu.state.icount + 1;
        match self.run_to(next) {
            Some(Stop::ReplayEnded) => Halt::HistoryEnd,
            Some(_) => Halt::Exited,
            None => match self.watch_hit() {
                Some(addr) => Halt::Watch(addr),
                None => Halt::Step,
            },
        }
    }

    /// Forward until a breakpoint, a watchpoint, the end, or gdb's interrupt.
    fn resume(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Halt {
        self.refresh_watches();
        loop {
            if self.finished.is_some() {
                return Halt::HistoryEnd;
            }
            if self.watches.is_empty() {
                let limit = self.machine.cpu.state.icount + CHUNK;
                match self.run_fast(limit) {
                    Some(Stop::ReplayEnded) => return Halt::HistoryEnd,
                    Some(Stop::Breakpoint) => return Halt::Breakpoint,
                    Some(_) => return Halt::Exited,
                    None => {}
                }
            } else {
                // Watched bytes are compared after every instruction.
                for _ in 0..CHUNK / 16 {
                    match self.step() {
                        Halt::Step if self.at_breakpoint() => return Halt::Breakpoint,
                        Halt::Step => {}
                        other => return other,
                    }
                }
            }
            if interrupted() {
                return Halt::Interrupted;
            }
        }
    }

    /// Runs up to `limit` with the breakpoints armed in the CPU (none at the current
    /// instruction, where the machine resumes from). They stay armed until a step or a
    /// restore disarms them.
    fn run_fast(&mut self, limit: u64) -> Option<Stop> {
        let armed: Vec<u64> = self.breakpoints.iter().map(|&a| a as u64).collect();
        if armed != self.machine.cpu.breakpoints {
            // Compiled code would run through the breakpoints: it is made again, the
            // blocks that hold one left to the interpreter.
            self.machine.flush_code();
            self.machine.cpu.breakpoints = armed;
        }
        let cpu = &mut self.machine.cpu;
        cpu.breakpoint_pass = cpu.state.icount;
        let stop = self.run_to(limit);
        if stop == Some(Stop::Breakpoint) {
            self.finished = None;
        }
        stop
    }

    /// Runs without stopping at breakpoints (until `run_fast` arms them again).
    fn disarm(&mut self) {
        self.machine.cpu.breakpoints.clear();
    }

    /// Goes back to instruction count `target`: restores the last snapshot at or before
    /// it and replays up to it.
    fn go_back_to(&mut self, target: u64) -> Result<(), String> {
        self.disarm();
        let at = self.history.partition_point(|s| s.icount <= target);
        let snap = &self.history[at.saturating_sub(1)];
        self.machine.restore(snap).map_err(|e| e.to_string())?;
        let from = snap.icount;
        if let Some(p) = self.machine.player() {
            p.seek_past(from);
        }
        self.finished = None;
        if target > from {
            let stop = self.machine.run(Some(target));
            if stop != Stop::InstructionLimit {
                self.finished = Some(stop);
            }
        }
        Ok(())
    }

    fn reverse_step(&mut self) -> Result<Halt, String> {
        let now = self.machine.cpu.state.icount;
        let first = self.history[0].icount;
        if now <= first {
            return Ok(Halt::HistoryStart);
        }
        let target = self.machine.previous_stop(now).max(first);
        let at = self.history.partition_point(|s| s.icount <= target);
        if target >= self.history[at - 1].icount + SNAPSHOT_INSTRUCTIONS {
            // Steps back come in runs: a snapshot a little before this one makes the
            // next ones replay little. (Going there may skip idle time past it.)
            self.go_back_to(target - SNAPSHOT_INSTRUCTIONS / 2)?;
            if self.machine.cpu.state.icount < target && self.finished.is_none() {
                if let Ok(s) = self.machine.snapshot(Some(&self.history[at - 1])) {
                    self.history.insert(at, s);
                }
            }
        }
        self.go_back_to(target)?;
        Ok(Halt::Step)
    }

    /// Back to the last instruction before now where a breakpoint is, or a watched
    /// value was last written (the machine just before that write).
    fn reverse_continue(&mut self) -> Result<Halt, String> {
        let now = self.machine.cpu.state.icount;
        let mut end = now;
        let mut k = self.history.partition_point(|s| s.icount < now);
        while k > 0 {
            k -= 1;
            let start = self.history[k].icount;
            self.go_back_to(start)?;
            self.refresh_watches();
            let mut found = None;
            if self.watches.is_empty() {
                // Breakpoints only: the CPU stops at them at full speed.
                if self.at_breakpoint() {
                    found = Some((start, Halt::Breakpoint));
                }
                while self.machine.cpu.state.icount < end {
                    match self.run_fast(end) {
                        Some(Stop::Breakpoint) if self.machine.cpu.state.icount < end => {
                            found = Some((self.machine.cpu.state.icount, Halt::Breakpoint));
                        }
                        Some(Stop::Breakpoint) | None => {}
                        Some(_) => break,
                    }
                }
            } else {
                loop {
                    let here = self.machine.cpu.state.icount;
                    if here >= end {
                        break;
                    }
                    if self.at_breakpoint() {
                        found = Some((here, Halt::Breakpoint));
                    }
                    match self.step() {
                        Halt::Watch(addr) => found = Some((here, Halt::Watch(addr))),
                        Halt::Step => {}
                        _ => break,
                    }
                }
            }
            if let Some((at, why)) = found {
                self.go_back_to(at)?;
                self.refresh_watches();
                return Ok(why);
            }
            end = start;
        }
        self.go_back_to(self.history[0].icount)?;
        Ok(Halt::HistoryStart)
    }
}

enum EventLoop {}

impl run_blocking::BlockingEventLoop for EventLoop {
    type Target = Debugger;
    type Connection = Box<dyn ConnectionExt<Error = std::io::Error>>;
    type StopReason = SingleThreadStopReason<u32>;

    #[allow(clippy::type_complexity)]
    fn wait_for_stop_reason(
        target: &mut Debugger,
        conn: &mut Self::Connection,
    ) -> Result<
        run_blocking::Event<SingleThreadStopReason<u32>>,
        run_blocking::WaitForStopReasonError<String, std::io::Error>,
    > {
        let mut interrupted = || conn.peek().map(|b| b.is_some()).unwrap_or(true);
        let halt = match target.going {
            Going::Step => target.step(),
            Going::Continue => target.resume(&mut interrupted),
            Going::ReverseStep => target
                .reverse_step()
                .map_err(run_blocking::WaitForStopReasonError::Target)?,
            Going::ReverseContinue => target
                .reverse_continue()
                .map_err(run_blocking::WaitForStopReasonError::Target)?,
        };
        if let Halt::Interrupted = halt {
            let byte = conn
                .read()
                .map_err(run_blocking::WaitForStopReasonError::Connection)?;
            return Ok(run_blocking::Event::IncomingData(byte));
        }
        let reason = match halt {
            Halt::Step => SingleThreadStopReason::DoneStep,
            Halt::Breakpoint => SingleThreadStopReason::SwBreak(()),
            Halt::Watch(addr) => SingleThreadStopReason::Watch {
                tid: (),
                kind: WatchKind::Write,
                addr,
            },
            Halt::HistoryStart => SingleThreadStopReason::ReplayLog {
                tid: None,
                pos: ReplayLogPosition::Begin,
            },
            Halt::HistoryEnd if target.can_reverse() => SingleThreadStopReason::ReplayLog {
                tid: None,
                pos: ReplayLogPosition::End,
            },
            Halt::HistoryEnd | Halt::Exited => SingleThreadStopReason::Exited(0),
            Halt::Interrupted => SingleThreadStopReason::Signal(Signal::SIGINT),
        };
        Ok(run_blocking::Event::TargetStopped(reason))
    }

    fn on_interrupt(_target: &mut Debugger) -> Result<Option<SingleThreadStopReason<u32>>, String> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

impl Target for Debugger {
    type Arch = HospesX86;
    type Error = String;

    fn base_ops(&mut self) -> gdbstub::target::ext::base::BaseOps<'_, HospesX86, String> {
        gdbstub::target::ext::base::BaseOps::SingleThread(self)
    }

    fn support_breakpoints(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }

    fn support_monitor_cmd(
        &mut self,
    ) -> Option<gdbstub::target::ext::monitor_cmd::MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

/// `monitor ...` in gdb: the machine's own commands.
impl gdbstub::target::ext::monitor_cmd::MonitorCmd for Debugger {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: gdbstub::target::ext::monitor_cmd::ConsoleOutput<'_>,
    ) -> Result<(), String> {
        use gdbstub::outputln;
        let line = String::from_utf8_lossy(cmd);
        let reply = crate::monitor::execute(&mut self.machine, &line);
        if reply.quit {
            outputln!(out, "to end the run from gdb: kill");
        } else if !reply.text.is_empty() {
            outputln!(out, "{}", reply.text);
        }
        Ok(())
    }
}

impl SingleThreadBase for Debugger {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        use hospes_cpu::state::{CS, DS, ES, FS, GS, SS};
        let s = &self.machine.cpu.state;
        let c = &mut regs.core;
        [c.eax, c.ecx, c.edx, c.ebx, c.esp, c.ebp, c.esi, c.edi] =
            std::array::from_fn(|i| s.reg32(i));
        c.eip = s.rip as u32;
        c.eflags = s.flags.get();
        let sel = |i: usize| s.seg[i].selector as u32;
        c.segments = X86SegmentRegs {
            cs: sel(CS),
            ss: sel(SS),
            ds: sel(DS),
            es: sel(ES),
            fs: sel(FS),
            gs: sel(GS),
        };
        let f = &s.fpu;
        let top = (f.status >> 11) & 7;
        for (i, st) in c.st.iter_mut().enumerate() {
            let r = f.regs[(top as usize + i) & 7];
            st[..8].copy_from_slice(&r.sig.to_le_bytes());
            st[8..].copy_from_slice(&r.se.to_le_bytes());
        }
        c.fpu = X87FpuInternalRegs {
            fctrl: f.control as u32,
            fstat: f.status as u32,
            ftag: f.tag as u32,
            fiseg: f.fcs as u32,
            fioff: f.fip,
            foseg: f.fds as u32,
            fooff: f.fdp,
            fop: f.fop as u32,
        };
        c.xmm = [0; 8];
        c.mxcsr = 0x1F80;
        regs.cr = [s.cr0, s.cr2, s.cr3, s.cr4].map(|v| v as u32);
        Ok(())
    }

    /// General registers, EIP and EFLAGS can be changed (segments and control registers
    /// would need their side effects: they are left as they are).
    fn write_registers(&mut self, regs: &Regs) -> TargetResult<(), Self> {
        let c = &regs.core;
        let s = &mut self.machine.cpu.state;
        for (i, v) in [c.eax, c.ecx, c.edx, c.ebx, c.esp, c.ebp, c.esi, c.edi]
            .into_iter()
            .enumerate()
        {
            s.gpr[i] = v as u64;
        }
        s.rip = c.eip as u64;
        let keep = !hospes_cpu::flags::WRITABLE;
        let flags = (s.flags.get() & keep) | (c.eflags & hospes_cpu::flags::WRITABLE);
        s.flags.set(flags);
        self.machine.cpu.end_block = true;
        Ok(())
    }

    fn read_addrs(&mut self, start: u32, data: &mut [u8]) -> TargetResult<usize, Self> {
        Ok(self.read_linear(start, data))
    }

    fn write_addrs(&mut self, start: u32, data: &[u8]) -> TargetResult<(), Self> {
        for (i, &b) in data.iter().enumerate() {
            let lin = start.wrapping_add(i as u32) as u64;
            let p = self
                .machine
                .cpu
                .debug_translate(lin)
                .ok_or(TargetError::NonFatal)?;
            self.machine.cpu.write_phys(p, &[b]);
        }
        Ok(())
    }

    fn support_resume(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::singlethread::SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Debugger {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), String> {
        if signal.is_some() {
            return Err("a PC cannot be resumed with a signal".into());
        }
        self.going = Going::Continue;
        Ok(())
    }

    fn support_single_step(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::singlethread::SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::reverse_exec::ReverseStepOps<'_, (), Self>> {
        if self.can_reverse() {
            Some(self)
        } else {
            None
        }
    }

    fn support_reverse_cont(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::reverse_exec::ReverseContOps<'_, (), Self>> {
        if self.can_reverse() {
            Some(self)
        } else {
            None
        }
    }
}

impl SingleThreadSingleStep for Debugger {
    fn step(&mut self, signal: Option<Signal>) -> Result<(), String> {
        if signal.is_some() {
            return Err("a PC cannot be stepped with a signal".into());
        }
        self.going = Going::Step;
        Ok(())
    }
}

impl ReverseStep<()> for Debugger {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), String> {
        self.going = Going::ReverseStep;
        Ok(())
    }
}

impl ReverseCont<()> for Debugger {
    fn reverse_cont(&mut self) -> Result<(), String> {
        self.going = Going::ReverseContinue;
        Ok(())
    }
}

impl Breakpoints for Debugger {
    fn support_sw_breakpoint(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl Debugger {
    fn add_breakpoint(&mut self, addr: u32) -> bool {
        if !self.breakpoints.contains(&addr) {
            self.breakpoints.push(addr);
        }
        true
    }

    fn remove_breakpoint(&mut self, addr: u32) -> bool {
        let before = self.breakpoints.len();
        self.breakpoints.retain(|&a| a != addr);
        self.breakpoints.len() != before
    }
}

/// Breakpoints are not written into guest memory: they are addresses the machine stops
/// at (so software and hardware ones are the same here).
impl SwBreakpoint for Debugger {
    fn add_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_breakpoint(addr))
    }

    fn remove_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_breakpoint(addr))
    }
}

impl HwBreakpoint for Debugger {
    fn add_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_breakpoint(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_breakpoint(addr))
    }
}

/// Write watchpoints, by value: the machine stops after an instruction that changed
/// the watched bytes. Read and access watchpoints are refused.
impl HwWatchpoint for Debugger {
    fn add_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if kind != WatchKind::Write || len == 0 || len > 64 {
            return Ok(false);
        }
        let mut w = Watch {
            addr,
            len,
            value: Vec::new(),
        };
        w.value = self.watched_value(&w);
        self.watches.push(w);
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let before = self.watches.len();
        if kind == WatchKind::Write {
            self.watches.retain(|w| (w.addr, w.len) != (addr, len));
        }
        Ok(self.watches.len() != before)
    }
}

/// Parses `tcp::PORT` (QEMU's spelling) or a bare port.
pub fn parse_port(spec: &str) -> Result<u16, String> {
    let port = spec
        .strip_prefix("tcp::")
        .or_else(|| spec.strip_prefix("tcp:127.0.0.1:"))
        .or_else(|| spec.strip_prefix("tcp:localhost:"))
        .unwrap_or(spec);
    port.parse()
        .map_err(|_| format!("--gdb '{spec}': expected tcp::PORT (a port number)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::counting_machine;

    /// The counting loop at 7C00h: mov dx,3F8h / xor ax,ax / inc ax (7C05h) /
    /// mov [0600h],ax (7C06h) / out dx,al (7C09h) / jmp 7C05h (7C0Ah).
    fn debugger() -> Debugger {
        Debugger::new(counting_machine()).expect("debugger")
    }

    fn never() -> impl FnMut() -> bool {
        || false
    }

    fn ax(d: &Debugger) -> u32 {
        d.machine.cpu.state.reg32(0) & 0xFFFF
    }

    #[test]
    fn breakpoints_stop_before_the_instruction_and_resume_past_it() {
        let mut d = debugger();
        d.add_breakpoint(0x7C09);
        for count in 1..=3 {
            assert!(matches!(d.resume(&mut never()), Halt::Breakpoint));
            assert_eq!(d.linear_eip(), 0x7C09);
            assert_eq!(ax(&d), count, "the loop ran once more each time");
        }
        assert!(d.remove_breakpoint(0x7C09));
        let at = d.machine.cpu.state.icount;
        assert!(matches!(d.step(), Halt::Step));
        assert_eq!(d.machine.cpu.state.icount, at + 1);
        assert_eq!(d.linear_eip(), 0x7C0A);
    }

    #[test]
    fn write_watchpoints_stop_after_the_write_and_going_back_finds_it() {
        let mut d = debugger();
        assert!(matches!(
            d.add_hw_watchpoint(0x600, 2, WatchKind::Write),
            Ok(true)
        ));
        assert!(matches!(
            d.add_hw_watchpoint(0x600, 2, WatchKind::Read),
            Ok(false)
        ));
        assert!(matches!(d.resume(&mut never()), Halt::Watch(0x600)));
        assert_eq!(d.linear_eip(), 0x7C09, "stopped after the store");
        assert!(matches!(d.resume(&mut never()), Halt::Watch(0x600)));
        assert_eq!(d.machine.cpu.mem.read_u16(0x600), 2);
        let after = d.machine.cpu.state.icount;
        // Backwards: to just before the store that wrote 2.
        assert!(matches!(d.reverse_continue(), Ok(Halt::Watch(0x600))));
        assert_eq!(d.linear_eip(), 0x7C06);
        assert_eq!(d.machine.cpu.mem.read_u16(0x600), 1);
        assert_eq!(d.machine.cpu.state.icount, after - 1);
    }

    #[test]
    fn a_step_back_far_from_any_snapshot_leaves_one_shortly_before() {
        let mut d = debugger();
        let start = d.machine.cpu.state.icount;
        assert_eq!(d.run_to(start + 3 * SNAPSHOT_INSTRUCTIONS), None);
        let kept = d.history.len();
        assert!(matches!(d.reverse_step(), Ok(Halt::Step)));
        let one_back = d.machine.cpu.state.clone();
        assert_eq!(d.history.len(), kept + 1, "a snapshot on the way");
        let near = |s: &Snapshot| {
            s.icount < one_back.icount && s.icount + SNAPSHOT_INSTRUCTIONS > one_back.icount
        };
        assert!(d.history.iter().any(near), "a snapshot shortly before");
        assert!(d.history.windows(2).all(|w| w[0].icount < w[1].icount));
        assert!(matches!(d.reverse_step(), Ok(Halt::Step)));
        assert_eq!(d.history.len(), kept + 1, "the next step replays from it");
        assert!(matches!(d.step(), Halt::Step));
        assert_eq!(d.machine.cpu.state, one_back);
    }

    #[test]
    fn stepping_back_gives_the_machine_of_the_way_forward() {
        let mut d = debugger();
        let mut forward = Vec::new();
        for _ in 0..1000 {
            forward.push(d.machine.cpu.state.clone());
            assert!(matches!(d.step(), Halt::Step));
        }
        for i in (500..1000).rev() {
            assert!(matches!(d.reverse_step(), Ok(Halt::Step)));
            assert_eq!(d.machine.cpu.state, forward[i], "step {i}");
        }
        d.add_breakpoint(0x7C05);
        // Back to the last INC before now: in the loop, at most 4 instructions back.
        let now = d.machine.cpu.state.icount;
        assert!(matches!(d.reverse_continue(), Ok(Halt::Breakpoint)));
        assert_eq!(d.linear_eip(), 0x7C05);
        assert!(d.machine.cpu.state.icount < now && d.machine.cpu.state.icount + 4 >= now);
        // A breakpoint where the program starts is found at the start of history;
        // one never reached, nowhere: back to the start all the same.
        d.remove_breakpoint(0x7C05);
        d.add_breakpoint(0x7C00);
        assert!(matches!(d.reverse_continue(), Ok(Halt::Breakpoint)));
        assert_eq!(d.machine.cpu.state, forward[0]);
        assert!(matches!(d.step(), Halt::Step));
        d.remove_breakpoint(0x7C00);
        d.add_breakpoint(0x7C0C);
        assert!(matches!(d.reverse_continue(), Ok(Halt::HistoryStart)));
        assert_eq!(d.machine.cpu.state, forward[0]);
    }

    #[test]
    fn gdb_ports_in_qemu_spelling() {
        assert_eq!(parse_port("tcp::1234"), Ok(1234));
        assert_eq!(parse_port("1234"), Ok(1234));
        assert_eq!(parse_port("tcp:127.0.0.1:99"), Ok(99));
        assert!(parse_port("tcp::x").is_err());
        assert!(parse_port("udp::1").is_err());
    }

    #[test]
    fn registers_round_trip_through_gdb_bytes() {
        let mut regs = Regs::default();
        regs.core.eax = 0x1234_5678;
        regs.core.eip = 0x7C00;
        regs.cr = [0x6000_0011, 2, 0x1000, 0x10];
        let mut bytes = Vec::new();
        regs.gdb_serialize(|b| bytes.push(b.expect("a known byte")));
        assert_eq!(bytes.len(), 0x134 + 16);
        assert_eq!(&bytes[0x134..0x138], &0x6000_0011u32.to_le_bytes());
        let mut back = Regs::default();
        back.gdb_deserialize(&bytes).expect("parse");
        assert_eq!(back, regs);
    }
}
