//! A stand-in for the hybrid vsock socket of a VMM, for host tests without a
//! guest: it reads `CONNECT <port>\n`, replies as configured and, once it
//! replies `OK `, forwards the stream to the agent's unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the fake VMM handles one connection attempt.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Close the socket without a reply, as a VMM may do while no guest
    /// process listens on the port.
    Close,
    /// Send this line and close.
    Reject(&'static str),
    /// Send `OK <port>` and forward to the agent.
    Accept,
}

/// A fake VMM socket, stopped when dropped.
pub struct FakeVmm {
    pub socket: PathBuf,
    /// Every `CONNECT` line received, without the newline.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeVmm {
    /// Listens on `socket`. Attempt `n` gets `replies[n]`, or the last entry
    /// once the list is used up.
    pub fn start(socket: &Path, agent_socket: &Path, replies: Vec<Reply>) -> FakeVmm {
        let listener = UnixListener::bind(socket).expect("binding the fake VMM socket failed");
        listener
            .set_nonblocking(true)
            .expect("making the fake VMM socket non-blocking failed");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let requests = requests.clone();
            let stop = stop.clone();
            let agent_socket = agent_socket.to_path_buf();
            std::thread::spawn(move || serve(listener, &agent_socket, &replies, &requests, &stop))
        };
        FakeVmm {
            socket: socket.to_path_buf(),
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Returns the `CONNECT` lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: UnixListener,
    agent_socket: &Path,
    replies: &[Reply],
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut attempt = 0;
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(error) => panic!("fake VMM accept failed: {error}"),
        };
        stream.set_nonblocking(false).unwrap();
        let reply = replies
            .get(attempt)
            .or(replies.last())
            .cloned()
            .unwrap_or(Reply::Close);
        attempt += 1;
        handle(stream, agent_socket, reply, requests);
    }
}

fn handle(stream: UnixStream, agent_socket: &Path, reply: Reply, requests: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    requests.lock().unwrap().push(line.trim_end().to_string());
    let mut stream = stream;
    match reply {
        Reply::Close => {}
        Reply::Reject(text) => {
            let _ = stream.write_all(format!("{text}\n").as_bytes());
        }
        Reply::Accept => {
            let port = line.trim_end().trim_start_matches("CONNECT ").to_string();
            // The reply carries the host-side port, as Firecracker's does.
            stream.write_all(format!("OK {port}\n").as_bytes()).unwrap();
            let agent = UnixStream::connect(agent_socket).expect("fake VMM: agent connect failed");
            forward(stream, agent);
        }
    }
}

/// Copies bytes both ways on background threads until either side closes.
fn forward(host: UnixStream, guest: UnixStream) {
    let pairs = [
        (host.try_clone().unwrap(), guest.try_clone().unwrap()),
        (guest, host),
    ];
    for (mut from, mut to) in pairs {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}
