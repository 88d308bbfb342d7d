//! Record and replay (DESIGN.md, Time and determinism).
//!
//! Everything from outside enters the machine at one point of the run loop (see
//! `Machine::input_point`), stamped with the instruction count. A recording is a
//! snapshot of the machine when it started, then those inputs in order, with state
//! digests taken every so many instructions and an end mark. Replaying restores the
//! snapshot and feeds the inputs back at the same counts: the guest runs the same, with
//! either tier, and every digest must match; the first that does not stops the replay
//! with a report of what differs.
//!
//! The file: [`MAGIC`], the snapshot format version (u32, little-endian), the snapshot's
//! length (u64) and the snapshot file's bytes, then one zlib stream of entries, each a
//! length (u32) and an [`Entry`] in postcard. The stream is flushed after every entry,
//! so a recording cut short (hospes killed) replays up to its last whole entry.
//!
//! A new kind of [`Input`] goes at the end of the enum and needs no new version: the
//! entries of older recordings decode as before, and a whole entry this hospes cannot
//! decode (an input a newer one added) is refused by name, not replayed as if the
//! recording ended there.

use crate::snapshot::{self, put, take, Snapshot};
use crate::{Journal, Machine, MachineError, Stop};
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use hospes_cpu::state::CpuState;
use hospes_jit::Tier;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// The first bytes of a recording.
pub const MAGIC: &[u8; 16] = b"HOSPES RECORDING";

/// Instructions between two state digests of a recording.
pub const DIGEST_INTERVAL: u64 = 50_000_000;
/// Guest memory is digested a slice at a time, one slice per digest in turn (so a
/// digest costs little): a difference in memory shows within this many digests.
pub const MEMORY_SLICES: u32 = 32;

/// Something from outside the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// Bytes typed on the serial console (COM1).
    Serial(Vec<u8>),
    /// A key pressed or released, as its set-2 make code (E0xxh for extended keys).
    Key { make: u16, pressed: bool },
    /// An Ethernet frame for the network card.
    Frame(Vec<u8>),
    /// The PS/2 mouse moved (`dy` positive upwards, `dz` positive for the wheel turned
    /// towards the user) or its buttons changed (bit 0 left, 1 right, 2 middle).
    /// (Variants are encoded by their index: new ones go last, so recordings made
    /// before them still read the same.)
    Mouse {
        dx: i32,
        dy: i32,
        dz: i32,
        buttons: u8,
    },
}

/// The machine's state in brief, to tell a replay that went another way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub cpu: CpuState,
    /// Each device's name and a hash of its state.
    pub devices: Vec<(String, u64)>,
    /// Which slice of guest memory (of [`MEMORY_SLICES`]) is hashed, and the hash.
    pub memory_slice: u32,
    pub memory: u64,
}

impl Digest {
    /// What differs between a recorded digest and the replay's, in words.
    pub fn differences(&self, replayed: &Digest) -> Vec<String> {
        let mut out = cpu_differences(&self.cpu, &replayed.cpu);
        for ((name, a), (_, b)) in self.devices.iter().zip(&replayed.devices) {
            if a != b {
                out.push(format!("the state of the {name} differs"));
            }
        }
        if self.devices.len() != replayed.devices.len() {
            out.push("the set of devices differs".into());
        }
        if self.memory != replayed.memory {
            out.push(format!(
                "guest memory differs (slice {} of {MEMORY_SLICES} of host memory)",
                self.memory_slice + 1
            ));
        }
        out
    }
}

fn cpu_differences(a: &CpuState, b: &CpuState) -> Vec<String> {
    const GPR: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
    const SEG: [&str; 6] = ["es", "cs", "ss", "ds", "fs", "gs"];
    let mut out = Vec::new();
    let mut field = |name: &str, x: u64, y: u64| {
        if x != y {
            out.push(format!("{name} recorded {x:#x}, replayed {y:#x}"));
        }
    };
    field("instruction count", a.icount, b.icount);
    field("eip", a.rip, b.rip);
    for (i, name) in GPR.iter().enumerate() {
        field(name, a.reg32(i) as u64, b.reg32(i) as u64);
    }
    field("eflags", a.flags.get() as u64, b.flags.get() as u64);
    for (i, name) in SEG.iter().enumerate() {
        field(name, a.seg[i].selector as u64, b.seg[i].selector as u64);
        field(&format!("{name} base"), a.seg[i].base, b.seg[i].base);
    }
    for (name, x, y) in [
        ("cr0", a.cr0, b.cr0),
        ("cr2", a.cr2, b.cr2),
        ("cr3", a.cr3, b.cr3),
        ("cr4", a.cr4, b.cr4),
        ("cpl", a.cpl as u64, b.cpl as u64),
        ("halted", a.halted as u64, b.halted as u64),
        ("interrupt shadow", a.irq_shadow as u64, b.irq_shadow as u64),
        ("A20 mask", a.a20_mask, b.a20_mask),
        ("TSC offset", a.tsc_offset, b.tsc_offset),
        (
            "FPU control word",
            a.fpu.control as u64,
            b.fpu.control as u64,
        ),
        ("FPU status word", a.fpu.status as u64, b.fpu.status as u64),
        ("FPU tag word", a.fpu.tag as u64, b.fpu.tag as u64),
    ] {
        field(name, x, y);
    }
    let mut other = |name: &str, same: bool| {
        if !same {
            out.push(format!("{name} differ"));
        }
    };
    other("the FPU registers", a.fpu.regs == b.fpu.regs);
    other(
        "the FPU pointers",
        a.fpu == b.fpu || a.fpu.regs != b.fpu.regs,
    );
    other("the MSRs", a.msr == b.msr);
    other("the debug registers", a.dr == b.dr);
    other(
        "the descriptor tables",
        (a.gdtr, a.idtr, a.ldtr, a.tr) == (b.gdtr, b.idtr, b.ldtr, b.tr),
    );
    other("the hidden segment limits or attributes", a.seg == b.seg);
    if out.is_empty() && a != b {
        out.push("other CPU state differs".into());
    }
    out
}

/// One entry of a recording.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Entry {
    /// Outside input, at an instruction count.
    Input(u64, Input),
    /// The state at an instruction count.
    Digest(u64, Box<Digest>),
    /// The recording ends at this instruction count.
    End(u64),
}

impl Entry {
    pub fn icount(&self) -> u64 {
        match self {
            Entry::Input(at, _) | Entry::Digest(at, _) | Entry::End(at) => *at,
        }
    }
}

/// Writes a recording as the machine runs.
pub struct Recorder {
    out: ZlibEncoder<BufWriter<File>>,
    /// When the next digest is due.
    pub(crate) next_digest: u64,
    pub(crate) digests: u32,
}

impl Recorder {
    /// Starts a recording in `path` from `start`, the machine as it is now.
    pub fn create(path: &Path, start: &Snapshot) -> Result<Recorder, MachineError> {
        let fail = |e: std::io::Error| {
            MachineError(format!(
                "cannot write the recording {}: {e}",
                path.display()
            ))
        };
        let file = File::create(path).map_err(fail)?;
        let mut out = BufWriter::new(file);
        let mut snap = Vec::new();
        start.write_to(&mut snap)?;
        out.write_all(MAGIC).map_err(fail)?;
        out.write_all(&snapshot::VERSION.to_le_bytes())
            .map_err(fail)?;
        out.write_all(&(snap.len() as u64).to_le_bytes())
            .map_err(fail)?;
        out.write_all(&snap).map_err(fail)?;
        Ok(Recorder {
            out: ZlibEncoder::new(out, flate2::Compression::fast()),
            next_digest: start.icount,
            digests: 0,
        })
    }

    pub fn write(&mut self, entry: &Entry) -> Result<(), MachineError> {
        let mut bytes = Vec::new();
        put(&mut bytes, entry).map_err(MachineError)?;
        let fail = |e: std::io::Error| MachineError(format!("cannot write the recording: {e}"));
        self.out
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .map_err(fail)?;
        self.out.write_all(&bytes).map_err(fail)?;
        self.out.flush().map_err(fail)
    }

    /// Ends the recording at `icount` and closes the file.
    pub fn finish(mut self, icount: u64) -> Result<(), MachineError> {
        self.write(&Entry::End(icount))?;
        let fail = |e: std::io::Error| MachineError(format!("cannot write the recording: {e}"));
        let mut out = self.out.finish().map_err(fail)?;
        out.flush().map_err(fail)?;
        out.into_inner()
            .map_err(|e| fail(e.into_error()))?
            .sync_all()
            .map_err(fail)
    }
}

/// A recording's entries, read whole (they are small: inputs and digests), and where a
/// replay is in them.
pub struct Player {
    entries: Vec<Entry>,
    /// The next entry to replay.
    cursor: usize,
    pub(crate) inputs: u64,
    pub(crate) digests: u32,
}

impl Player {
    /// Opens a recording: its starting snapshot, and the player of its entries.
    pub fn open(path: &Path) -> Result<(Snapshot, Player), MachineError> {
        let name = path.display();
        let bad =
            |what: &str| MachineError(format!("{name}: not a usable hospes recording: {what}"));
        let file =
            File::open(path).map_err(|e| MachineError(format!("cannot open {name}: {e}")))?;
        let mut input = BufReader::new(file);
        let mut head = [0u8; 28];
        input.read_exact(&mut head).map_err(|_| bad("too short"))?;
        if &head[..16] != MAGIC {
            return Err(bad("it does not start as one"));
        }
        let version = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
        if version != snapshot::VERSION {
            return Err(MachineError(format!(
                "{name}: the recording is of format version {version}; this hospes reads version {} only",
                snapshot::VERSION
            )));
        }
        let len = u64::from_le_bytes(head[20..28].try_into().expect("8 bytes"));
        let snap = Snapshot::read_from((&mut input).take(len))
            .map_err(|e| MachineError(format!("{name}: {e}")))?;
        let mut z = ZlibDecoder::new(input);
        // Up to the end mark, or where the file was cut (the replay says which).
        let mut entries = Vec::new();
        while let Some(entry) = read_entry(&mut z) {
            // Whole but unknown: an input added to [`Input`] since this hospes was built.
            let entry = entry.map_err(|e| {
                MachineError(format!(
                    "{name}: entry {} of the recording does not decode (made by a newer hospes?): {e}",
                    entries.len() + 1
                ))
            })?;
            let end = matches!(entry, Entry::End(_));
            entries.push(entry);
            if end {
                break;
            }
        }
        Ok((
            snap,
            Player {
                entries,
                cursor: 0,
                inputs: 0,
                digests: 0,
            },
        ))
    }

    /// The next entry to replay.
    pub fn peek(&self) -> Option<&Entry> {
        self.entries.get(self.cursor)
    }

    /// Takes the next entry (None at the end of the recording).
    pub fn next_entry(&mut self) -> Option<Entry> {
        let entry = self.entries.get(self.cursor).cloned();
        self.cursor += entry.is_some() as usize;
        entry
    }

    /// Goes to the first entry after instruction count `icount`: a snapshot taken at
    /// `icount` (after the run loop's input point) holds what those before did.
    pub fn seek_past(&mut self, icount: u64) {
        self.cursor = self.entries.partition_point(|e| e.icount() <= icount);
    }
}

/// The next entry of a recording's stream; None at its end, or where it was cut; an
/// error for an entry there whole that does not decode.
fn read_entry(z: &mut impl Read) -> Option<Result<Entry, String>> {
    let mut len = [0u8; 4];
    z.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 64 << 20 {
        return None;
    }
    let mut bytes = vec![0u8; len];
    z.read_exact(&mut bytes).ok()?;
    Some(take(&mut &bytes[..]))
}

/// Outside input, recording and replaying: the machine's side.
impl Machine {
    /// The one place outside input enters the machine (at a slice boundary, the devices
    /// caught up with the instruction count), where a recording writes it down and takes
    /// its digests, and where a replay feeds it back and compares them. Returns why the
    /// run must stop, if it must.
    pub(crate) fn input_point(&mut self) -> Option<Stop> {
        let icount = self.cpu.state.icount;
        match std::mem::replace(&mut self.journal, Journal::Live) {
            Journal::Replay(mut player) => {
                let stop = self.replay_entries(&mut player, icount);
                self.journal = Journal::Replay(player);
                stop
            }
            journal => {
                self.journal = journal;
                self.poll_serial_input();
                self.poll_network();
                for input in std::mem::take(&mut self.pending) {
                    if let Journal::Record(r) = &mut self.journal {
                        if let Err(e) = r.write(&Entry::Input(icount, input.clone())) {
                            return Some(self.stop_recording(e));
                        }
                    }
                    self.apply(input);
                }
                let due = match &self.journal {
                    Journal::Record(r) => (icount >= r.next_digest).then_some(r.digests),
                    _ => None,
                };
                if let Some(n) = due {
                    let digest = self.digest(n);
                    if let Journal::Record(r) = &mut self.journal {
                        r.next_digest = icount + DIGEST_INTERVAL;
                        r.digests += 1;
                        if let Err(e) = r.write(&Entry::Digest(icount, Box::new(digest))) {
                            return Some(self.stop_recording(e));
                        }
                    }
                }
                None
            }
        }
    }

    /// Feeds a replay the entries due at `icount`.
    fn replay_entries(&mut self, player: &mut Player, icount: u64) -> Option<Stop> {
        // Host input has no place in a replay.
        self.pending.clear();
        while let Some(entry) = player.peek() {
            let at = entry.icount();
            if at > icount {
                return None;
            }
            let entry = player.next_entry().expect("peeked");
            if at < icount {
                self.replay_report = Some(format!(
                    "replay diverged: it passed instruction {at}, where the recording has {}, without stopping there (now at {icount})",
                    match entry {
                        Entry::Input(..) => "an input",
                        Entry::Digest(..) => "a digest",
                        Entry::End(_) => "its end",
                    }
                ));
                return Some(Stop::ReplayDiverged);
            }
            match entry {
                Entry::Input(_, input) => {
                    player.inputs += 1;
                    self.apply(input);
                }
                Entry::Digest(_, recorded) => {
                    let replayed = self.digest(recorded.memory_slice);
                    player.digests += 1;
                    let differences = recorded.differences(&replayed);
                    if !differences.is_empty() {
                        self.replay_report = Some(format!(
                            "replay diverged at instruction {icount} (digest {}): {}",
                            player.digests,
                            differences.join("; ")
                        ));
                        return Some(Stop::ReplayDiverged);
                    }
                }
                Entry::End(_) => {
                    self.replay_report = Some(format!(
                        "replay ended at instruction {icount}, as recorded: {} inputs fed, {} digests identical",
                        player.inputs, player.digests
                    ));
                    return Some(Stop::ReplayEnded);
                }
            }
        }
        self.replay_report = Some(format!(
            "replay reached the end of a recording cut short (no end mark), at instruction {icount}: {} inputs fed, {} digests identical",
            player.inputs, player.digests
        ));
        Some(Stop::ReplayEnded)
    }

    /// Where a replay must next stop (its next entry), if replaying.
    pub(crate) fn next_replay_stop(&self) -> Option<u64> {
        match &self.journal {
            Journal::Replay(p) => Some(p.peek().map_or(u64::MAX, Entry::icount)),
            _ => None,
        }
    }

    fn stop_recording(&mut self, e: MachineError) -> Stop {
        self.journal = Journal::Live;
        self.replay_report = Some(e.to_string());
        Stop::RecordingFailed
    }

    /// The machine's state in brief (see [`Digest`]); `n` picks the slice of memory.
    pub fn digest(&self, n: u32) -> Digest {
        let memory = self.cpu.mem.host_bytes();
        let slice_len = memory
            .len()
            .div_ceil(MEMORY_SLICES as usize)
            .next_multiple_of(4096);
        let slice = n % MEMORY_SLICES;
        let start = (slice as usize * slice_len).min(memory.len());
        let end = (start + slice_len).min(memory.len());
        let mut cpu = self.cpu.state.clone();
        cpu.flags = cpu.flags.canonical();
        Digest {
            cpu,
            devices: self
                .board
                .digests()
                .into_iter()
                .map(|(name, h)| (name.to_string(), h))
                .collect(),
            memory_slice: slice,
            memory: hash_bytes(&memory[start..end]),
        }
    }

    /// Starts writing a recording of this run to `path` (from now on).
    pub fn record(&mut self, path: &std::path::Path) -> Result<(), MachineError> {
        // The replay starts from the disks as they are now: the run must not change them.
        self.keep_disk_writes_in_memory();
        let start = self.snapshot_for_file()?;
        self.journal = Journal::Record(Recorder::create(path, &start)?);
        Ok(())
    }

    /// Ends a recording started with [`Machine::record`], closing its file.
    pub fn finish_recording(&mut self) -> Result<(), MachineError> {
        match std::mem::replace(&mut self.journal, Journal::Live) {
            Journal::Record(r) => r.finish(self.cpu.state.icount),
            other => {
                self.journal = other;
                Ok(())
            }
        }
    }

    /// A machine to replay the recording in `path`: built from its starting snapshot,
    /// fed only from the recording.
    pub fn replay(
        path: &std::path::Path,
        tier: Tier,
        serial_out: Box<dyn Write>,
    ) -> Result<Machine, MachineError> {
        let (start, player) = Player::open(path)?;
        let mut m = Machine::from_snapshot(&start, tier, serial_out)?;
        m.journal = Journal::Replay(player);
        Ok(m)
    }

    /// Notes where the CPU skips idle time from now on, for [`Machine::previous_stop`].
    pub fn track_halts(&mut self) {
        self.halt_gaps.get_or_insert_with(Default::default);
    }

    /// The instruction count a run last stopped at before `icount`, stepping one
    /// instruction at a time: `icount - 1`, unless the CPU skipped idle time up to
    /// `icount`, then where it halted (tracked since [`Machine::track_halts`]).
    pub fn previous_stop(&self, icount: u64) -> u64 {
        self.halt_gaps
            .as_ref()
            .and_then(|g| g.get(&icount).copied())
            .unwrap_or(icount.saturating_sub(1))
    }

    /// The recording a replay plays (None when not replaying).
    pub fn player(&mut self) -> Option<&mut Player> {
        match &mut self.journal {
            Journal::Replay(p) => Some(p),
            _ => None,
        }
    }

    /// How a replay ended (or why a recording stopped), once it has.
    pub fn replay_report(&self) -> Option<&str> {
        self.replay_report.as_deref()
    }
}

/// A fast hash of bytes, the same on every host (for digests; not cryptographic).
/// Four lanes take every fourth word, so the multiplications overlap; each step is a
/// bijection of the lane, so a change in any one word always changes the result.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut lanes = [bytes.len() as u64, 1, 2, 3].map(|x| x ^ K);
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = step(*lane, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
    }
    let mut h = lanes.iter().fold(K, |h, &lane| step(h, lane));
    for &b in blocks.remainder() {
        h = step(h, b as u64);
    }
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// COM1's output, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn take(&self) -> Vec<u8> {
            std::mem::take(&mut *self.0.lock().expect("capture"))
        }
    }

    /// A machine past its POST running a program that enables the PS/2 mouse through
    /// the i8042 and copies every byte the controller gives to COM1 (and to 0600h on),
    /// with interrupts off, so only the program reads port 60h.
    fn mouse_reading_machine(serial: Captured) -> Machine {
        let mut m = crate::testing::machine();
        assert_eq!(m.run(Some(50_000_000)), Stop::HaltedForever);
        m.serial_out = Box::new(serial);
        let program = [
            0xB0, 0xA8, 0xE6, 0x64, // mov al, A8h; out 64h, al (aux port on)
            0xB0, 0xD4, 0xE6, 0x64, // mov al, D4h; out 64h, al (next byte to the mouse)
            0xB0, 0xF4, 0xE6, 0x60, // mov al, F4h; out 60h, al (enable reporting)
            0xBF, 0x00, 0x06, // mov di, 0600h
            0xE4, 0x64, // poll: in al, 64h
            0xA8, 0x01, // test al, 1
            0x74, 0xFA, // jz poll
            0xE4, 0x60, // in al, 60h
            0x88, 0x05, // mov [di], al
            0x47, // inc di
            0xBA, 0xF8, 0x03, // mov dx, 3F8h
            0xEE, // out dx, al
            0xEB, 0xEF, // jmp poll
        ];
        m.cpu.write_phys(0x7C00, &program);
        let s = &mut m.cpu.state;
        s.seg[hospes_cpu::state::CS] = hospes_cpu::state::Segment::real(0, s.seg[0].attr);
        s.rip = 0x7C00;
        s.halted = false;
        m
    }

    #[test]
    fn an_entry_of_an_unknown_kind_is_refused_not_taken_for_the_end() {
        let m = crate::testing::machine();
        let path = std::env::temp_dir().join(format!("hospes-newer-{}.rec", std::process::id()));
        let mut r =
            Recorder::create(&path, &m.snapshot_for_file().expect("snapshot")).expect("create");
        r.write(&Entry::Input(1, Input::Serial(b"x".to_vec())))
            .expect("write");
        // An entry of a kind after End, as a newer hospes could write.
        r.out.write_all(&1u32.to_le_bytes()).expect("write");
        r.out.write_all(&[3]).expect("write");
        r.finish(2).expect("finish");
        let error = Player::open(&path).err().expect("refused").to_string();
        assert!(
            error.contains("entry 2 of the recording does not decode"),
            "{error}"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn mouse_input_reaches_the_guest_and_replays_the_same() {
        let serial = Captured::default();
        let mut m = mouse_reading_machine(serial.clone());
        let step = |m: &mut Machine| {
            let to = m.cpu.state.icount + 1_000_000;
            assert_eq!(m.run(Some(to)), Stop::InstructionLimit);
        };
        step(&mut m);
        assert_eq!(serial.take(), [0xFA], "the mouse acknowledges F4h");
        let path = std::env::temp_dir().join(format!("hospes-mouse-{}.rec", std::process::id()));
        m.record(&path).expect("record");
        m.mouse_event(5, -3, 0, 1);
        step(&mut m);
        m.mouse_event(-2, 4, 0, 0);
        step(&mut m);
        m.mouse_event(0, 0, 0, 2);
        step(&mut m);
        m.finish_recording().expect("finish");
        let live = serial.take();
        // Left button, 5 right, 3 down; 2 left, 4 up, released; right button alone.
        assert_eq!(
            live,
            [0x29, 5, 0xFD, 0x18, 0xFE, 4, 0x0A, 0, 0],
            "{live:02x?}"
        );

        let replayed = Captured::default();
        let mut r =
            Machine::replay(&path, Tier::Interp, Box::new(replayed.clone())).expect("replay");
        assert_eq!(r.run(None), Stop::ReplayEnded);
        let report = r.replay_report().unwrap_or_default().to_string();
        assert!(report.contains("as recorded: 3 inputs fed"), "{report}");
        assert_eq!(replayed.take(), live);
        assert_eq!(r.cpu.state, m.cpu.state);
        for n in 0..MEMORY_SLICES {
            assert_eq!(r.digest(n), m.digest(n), "slice {n}");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_hash_sees_every_byte_and_its_place() {
        let a = vec![0u8; 4099];
        let base = hash_bytes(&a);
        for i in [0, 7, 8, 31, 32, 4095, 4098] {
            let mut b = a.clone();
            b[i] = 1;
            assert_ne!(hash_bytes(&b), base, "byte {i}");
        }
        let mut x = vec![0u8; 16];
        x[0] = 1;
        let mut y = vec![0u8; 16];
        y[8] = 1;
        assert_ne!(hash_bytes(&x), hash_bytes(&y));
        assert_ne!(hash_bytes(&a[..4098]), base);
    }
}
