//! The compile thread: Cranelift runs beside the guest, which the interpreter keeps
//! running until the code arrives.
//!
//! The thread owns the translator and with it all code memory. Requests and results go
//! through crossbeam channels in order, so a flush is handled after every compile asked
//! for before it; the caller ignores results for blocks it no longer waits for (their
//! code is never run, and is freed with the next flush).

use crate::translate::Translator;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use iced_x86::Instruction;
use std::thread::JoinHandle;

pub(crate) enum Request {
    /// Compile a block's instructions; the result carries `token` back.
    Compile {
        token: u64,
        instrs: Vec<Instruction>,
    },
    /// Free all code compiled so far (nothing may run it any more) and start afresh.
    Flush,
}

/// A compiled block: its code's address and how many instructions it does natively.
pub(crate) struct Compiled {
    pub token: u64,
    pub result: Result<(usize, usize), String>,
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
                for request in inbox {
                    match request {
                        Request::Compile { token, instrs } => {
                            let result = translator
                                .compile(&instrs)
                                .map(|(code, native)| (code as usize, native));
                            if outbox.send(Compiled { token, result }).is_err() {
                                break;
                            }
                        }
                        Request::Flush => {
                            let fresh = match Translator::new() {
                                Ok(t) => t,
                                Err(e) => {
                                    log::warn!("JIT: cannot start afresh after a flush: {e}");
                                    // Dropping the outbox tells the caller to stop compiling.
                                    break;
                                }
                            };
                            std::mem::replace(&mut translator, fresh).free();
                        }
                    }
                }
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
