//! The compile thread: Cranelift runs beside the guest, which the interpreter keeps
//! running until the code arrives.
//!
//! The thread owns the translator and with it all code memory. Requests and results go
//! through crossbeam channels in order, so a flush is handled after every compile asked
//! for before it; the caller ignores results for blocks it no longer waits for (their
//! code is never run, and is freed with the next flush).

use crate::translate::{BlockPlace, CodeRange, Trampoline, Translator, HOP};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use iced_x86::Instruction;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub(crate) enum Request {
    /// Compile a block's instructions; the result carries `token` back. `runs`
    /// counts how often the interpreter has run the block since (the JIT updates it
    /// now and then): the block most run while waiting is compiled first.
    Compile {
        token: u64,
        block: BlockPlace,
        instrs: Vec<Instruction>,
        runs: Arc<AtomicU32>,
    },
    /// Free all code compiled so far (nothing may run it any more) and start afresh.
    Flush,
}

/// A compiled block: its code's address and how many instructions it does natively,
/// and the trampoline of the translator that compiled it.
pub(crate) struct Compiled {
    pub token: u64,
    pub result: Result<(usize, usize), String>,
    pub trampoline: Trampoline,
    /// How long compiling took (for statistics only: nothing the guest sees depends on
    /// host time).
    pub took: std::time::Duration,
}

/// A compile request waiting for the thread.
struct Job {
    token: u64,
    block: BlockPlace,
    instrs: Vec<Instruction>,
    runs: Arc<AtomicU32>,
}

/// The compile thread's loop, until the JIT hangs up or a flush cannot start afresh.
///
/// Waiting blocks are compiled most run first (a loop the guest is in, run by the
/// interpreter while it waits), then newest first: the block that just became hot is
/// most likely the one the guest is running now, while older requests of a burst (a
/// new phase of the guest touching much code at once) may have cooled down. A flush
/// drops the requests before it: nothing waits for their code any more.
fn serve(inbox: &Receiver<Request>, outbox: &Sender<Compiled>, translator: &mut Translator) {
    let mut perf_map = PerfMap::open();
    let mut waiting: Vec<Job> = Vec::new();
    loop {
        let first = if waiting.is_empty() {
            match inbox.recv() {
                Ok(r) => Some(r),
                Err(_) => return,
            }
        } else {
            None
        };
        for request in first.into_iter().chain(inbox.try_iter()) {
            match request {
                Request::Compile {
                    token,
                    block,
                    instrs,
                    runs,
                } => waiting.push(Job {
                    token,
                    block,
                    instrs,
                    runs,
                }),
                Request::Flush => {
                    waiting.clear();
                    let fresh = match Translator::new() {
                        Ok(t) => t,
                        Err(e) => {
                            log::warn!("JIT: cannot start afresh after a flush: {e}");
                            // Dropping the outbox tells the caller to stop compiling.
                            return;
                        }
                    };
                    std::mem::replace(translator, fresh).free();
                }
            }
        }
        let Some(next) = most_run(&waiting) else {
            continue;
        };
        let job = waiting.remove(next);
        let started = std::time::Instant::now();
        let result = translator
            .compile(&job.instrs, job.block)
            .map(|(code, size, native)| {
                perf_map.add(
                    code as usize,
                    size,
                    job.block.phys,
                    job.instrs.len(),
                    translator.code_ranges.as_deref().unwrap_or(&[]),
                );
                (code as usize, native)
            });
        let done = Compiled {
            token: job.token,
            result,
            trampoline: translator.trampoline,
            took: started.elapsed(),
        };
        if outbox.send(done).is_err() {
            return;
        }
    }
}

/// The waiting job to compile next: the most run, the newest of those.
fn most_run(waiting: &[Job]) -> Option<usize> {
    let runs = |j: &Job| j.runs.load(Ordering::Relaxed);
    (0..waiting.len()).rev().max_by(|&a, &b| {
        // `max_by` keeps the last of equals: iterating newest first, keep the first.
        runs(&waiting[a]).cmp(&runs(&waiting[b])).then(b.cmp(&a))
    })
}

/// `/tmp/perf-PID.map`, naming each compiled block for `perf report` (as QEMU's
/// `-perfmap`), written when `HOSPES_PERF_MAP` is set.
struct PerfMap(Option<std::io::BufWriter<std::fs::File>>);

impl PerfMap {
    fn open() -> PerfMap {
        if std::env::var_os("HOSPES_PERF_MAP").is_none() {
            return PerfMap(None);
        }
        let path = format!("/tmp/perf-{}.map", std::process::id());
        match std::fs::File::create(&path) {
            Ok(f) => PerfMap(Some(std::io::BufWriter::new(f))),
            Err(e) => {
                log::warn!("JIT: cannot write {path}: {e}");
                PerfMap(None)
            }
        }
    }

    /// Names the block's code `guest_<physical address>_<instructions>`, and each
    /// range of it that one instruction compiled to that name plus `@<index>` (`@hop`
    /// for the code that runs on into the next block), so that `perf report` shows
    /// where in a block the time goes.
    fn add(&mut self, code: usize, size: usize, phys: u64, instrs: usize, ranges: &[CodeRange]) {
        use std::fmt::Write as _;
        use std::io::Write;
        if let Some(f) = &mut self.0 {
            let name = format!("guest_{phys:08x}_{instrs}");
            // perf resolves neither overlapping nor adjacent same-named entries well:
            // one entry per run of code of one instruction, and the gaps between.
            let mut runs: Vec<(usize, usize, Option<u32>)> = Vec::new();
            let mut at = 0;
            for r in ranges.iter().filter(|r| r.start < r.end) {
                let (start, end) = (r.start as usize, r.end as usize);
                if start > at {
                    runs.push((at, start, None));
                }
                match runs.last_mut() {
                    Some(last) if last.1 == start && last.2 == Some(r.instruction) => last.1 = end,
                    _ => runs.push((start, end, Some(r.instruction))),
                }
                at = at.max(end);
            }
            if size > at {
                runs.push((at, size, None));
            }
            // Names are unique too (perf mixes up entries of one name): a part after
            // the first of its instruction gets `.<n>`.
            let mut lines = String::new();
            let mut seen: Vec<Option<u32>> = Vec::new();
            for (from, to, instruction) in runs {
                let (start, len) = (code + from, to - from);
                let label = match instruction {
                    None => String::new(),
                    Some(HOP) => "@hop".into(),
                    Some(i) => format!("@{i}"),
                };
                let n = seen.iter().filter(|&&s| s == instruction).count();
                seen.push(instruction);
                let _ = match n {
                    0 => writeln!(lines, "{start:x} {len:x} {name}{label}"),
                    n => writeln!(lines, "{start:x} {len:x} {name}{label}.{n}"),
                };
            }
            // Flushed per block: the map must be complete whenever perf reads it.
            if f.write_all(lines.as_bytes())
                .and_then(|_| f.flush())
                .is_err()
            {
                self.0 = None;
            }
        }
    }
}

pub(crate) struct Worker {
    requests: Option<Sender<Request>>,
    results: Receiver<Compiled>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn start() -> Result<Worker, String> {
        let (requests, inbox) = unbounded::<Request>();
        let (outbox, results) = unbounded();
        let (ready_tx, ready) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("hospes-jit".into())
            .spawn(move || {
                let mut translator = match Translator::new() {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                serve(&inbox, &outbox, &mut translator);
                translator.free();
            })
            .map_err(|e| format!("starting the JIT thread: {e}"))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Worker {
                requests: Some(requests),
                results,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the JIT thread stopped while starting".into()),
        }
    }

    /// Sends a request; false if the thread has stopped.
    pub fn send(&self, request: Request) -> bool {
        self.requests
            .as_ref()
            .is_some_and(|r| r.send(request).is_ok())
    }

    /// The next result: waiting for it if `wait`, else only if one is ready. None when
    /// nothing is ready, or the thread has stopped.
    pub fn result(&self, wait: bool) -> Option<Compiled> {
        if wait {
            self.results.recv().ok()
        } else {
            self.results.try_recv().ok()
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the request channel ends the thread's loop; it frees the code memory.
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
