//! `hospes run --monitor`: the machine's monitor commands ([`hospes_machine::monitor`])
//! on a console of their own — a Unix socket, a TCP port or stdio — like QEMU's
//! `-monitor`. A thread reads command lines and waits for their answers; the run loop
//! executes the commands between two slices of guest execution.

use hospes_machine::monitor::{self, Reply};
use hospes_machine::Machine;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};

/// Where the monitor listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorSpec {
    Stdio,
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl std::str::FromStr for MonitorSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "stdio" {
            return Ok(MonitorSpec::Stdio);
        }
        match s.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => {
                // QEMU's options after the path (",server,nowait") are what hospes does
                // anyway.
                let path = path.split(',').next().unwrap_or(path);
                Ok(MonitorSpec::Unix(PathBuf::from(path)))
            }
            Some(("tcp", addr)) if addr.contains(':') => {
                let addr = addr.split(',').next().unwrap_or(addr);
                Ok(MonitorSpec::Tcp(addr.to_string()))
            }
            _ => Err(format!(
                "unknown monitor '{s}' (stdio, unix:PATH, tcp:HOST:PORT)"
            )),
        }
    }
}

/// A command line and where its answer goes.
struct Request {
    line: String,
    answer: Sender<Reply>,
}

/// The monitor console of a run.
pub struct Monitor {
    requests: Receiver<Request>,
    /// A Unix socket to remove when the run ends.
    socket_path: Option<PathBuf>,
}

const BANNER: &str = "hospes monitor: type help for the commands\n";
const PROMPT: &str = "(hospes) ";
/// The longest command line read at once.
const MAX_LINE: u64 = 4096;

impl Monitor {
    /// Opens the console (a socket is bound now, so a taken port fails before the run)
    /// and serves it from a thread of its own.
    pub fn start(spec: &MonitorSpec) -> Result<Monitor, String> {
        let (tx, requests) = mpsc::channel();
        let mut socket_path = None;
        match spec {
            MonitorSpec::Stdio => {
                std::thread::spawn(move || {
                    serve_connection(std::io::stdin().lock(), std::io::stdout(), &tx)
                });
            }
            MonitorSpec::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
                socket_path = Some(path.clone());
                std::thread::spawn(move || serve_each(listener.incoming(), |s| s.try_clone(), &tx));
            }
            MonitorSpec::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                std::thread::spawn(move || serve_each(listener.incoming(), |s| s.try_clone(), &tx));
            }
        }
        Ok(Monitor {
            requests,
            socket_path,
        })
    }

    /// Executes the commands that came in; true when one asked to end the run.
    pub fn serve(&self, machine: &mut Machine) -> bool {
        let mut quit = false;
        while let Ok(request) = self.requests.try_recv() {
            let reply = monitor::execute(machine, &request.line);
            quit |= reply.quit;
            let _ = request.answer.send(reply);
        }
        quit
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file left by an earlier run is replaced; any other file at that path is
/// not touched.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("cannot replace {}: {e}", path.display())),
        Ok(_) => Err(format!(
            "cannot listen on {}: a file that is not a socket is there",
            path.display()
        )),
        Err(_) => Ok(()),
    }
}

/// Serves the connections a listener accepts, one after the other, until the run ends.
fn serve_each<S: std::io::Read + Write>(
    incoming: impl Iterator<Item = std::io::Result<S>>,
    try_clone: impl Fn(&S) -> std::io::Result<S>,
    requests: &Sender<Request>,
) {
    for stream in incoming.map_while(Result::ok) {
        let Ok(reader) = try_clone(&stream) else {
            continue;
        };
        if !serve_connection(BufReader::new(reader), stream, requests) {
            break;
        }
    }
}

/// Serves one console until it closes; false once the run has ended (nobody answers).
fn serve_connection(
    mut input: impl BufRead,
    mut output: impl Write,
    requests: &Sender<Request>,
) -> bool {
    if output
        .write_all(format!("{BANNER}{PROMPT}").as_bytes())
        .and_then(|()| output.flush())
        .is_err()
    {
        return true;
    }
    loop {
        // A line is read up to a bound: an endless one costs no more memory than that
        // (its pieces come as unknown commands).
        let mut line = String::new();
        match std::io::Read::take(&mut input, MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        let (answer, reply) = mpsc::channel();
        if requests.send(Request { line, answer }).is_err() {
            return false;
        }
        let Ok(reply) = reply.recv() else {
            return false;
        };
        let mut text = reply.text;
        if !text.is_empty() {
            text.push('\n');
        }
        if !reply.quit {
            text.push_str(PROMPT);
        }
        if output
            .write_all(text.as_bytes())
            .and_then(|()| output.flush())
            .is_err()
        {
            return true;
        }
        if reply.quit {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("stdio".parse(), Ok(MonitorSpec::Stdio));
        assert_eq!(
            "unix:/tmp/m.sock,server,nowait".parse(),
            Ok(MonitorSpec::Unix("/tmp/m.sock".into()))
        );
        assert_eq!(
            "tcp:127.0.0.1:4444".parse(),
            Ok(MonitorSpec::Tcp("127.0.0.1:4444".into()))
        );
        assert!("tcp:4444".parse::<MonitorSpec>().is_err());
        assert!("vc".parse::<MonitorSpec>().is_err());
    }
}
