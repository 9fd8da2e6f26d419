//! A TCP proxy a test can cut and restore, to take a service "down" and back without
//! touching the service itself, or hold what clients already connected send, to deliver it
//! later (a dead producer's last request that the broker receives after a restart).

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy holds back: bytes that connections older than the hold send to the target.
#[derive(Default)]
struct Hold {
    /// Holding now.
    active: AtomicBool,
    /// Incremented by each hold: a connection accepted before it (older epoch) is held.
    epoch: AtomicU64,
    /// Bytes held so far.
    bytes: AtomicU64,
}

/// Forwards 127.0.0.1:<port> to a target while up; when down, refuses new connections and
/// cuts the open ones.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    target: Arc<Mutex<String>>,
    hold: Arc<Hold>,
}

impl Proxy {
    /// Starts forwarding to `target` (host:port).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let target = Arc::new(Mutex::new(target.to_string()));
        let hold = Arc::new(Hold::default());
        let (up2, gen2, target2, hold2) = (up.clone(), generation.clone(), target.clone(), hold.clone());
        std::thread::spawn(move || {
            loop {
                match listener.accept() {
                    Ok((client, _)) => {
                        if !up2.load(Ordering::SeqCst) {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        }
                        let to = target2.lock().unwrap().clone();
                        let Ok(server) = TcpStream::connect(&to) else {
                            continue;
                        };
                        let born = gen2.load(Ordering::SeqCst);
                        let epoch = hold2.epoch.load(Ordering::SeqCst);
                        pipe(client, server, gen2.clone(), born, hold2.clone(), epoch);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, up, generation, target, hold }
    }

    /// Forwards new connections to `target` from now on.
    pub fn set_target(&self, target: &str) {
        *self.target.lock().unwrap() = target.to_string();
    }

    /// Refuses new connections and cuts the open ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// From now on, what the connections already open send to the target is held (their
    /// client may even die meanwhile); connections opened later pass.
    pub fn hold(&self) {
        self.hold.epoch.fetch_add(1, Ordering::SeqCst);
        self.hold.active.store(true, Ordering::SeqCst);
    }

    /// Bytes held so far.
    pub fn held_bytes(&self) -> u64 {
        self.hold.bytes.load(Ordering::SeqCst)
    }

    /// Delivers everything held, in order, and forwards normally again.
    pub fn release(&self) {
        self.hold.active.store(false, Ordering::SeqCst);
    }
}

fn pipe(a: TcpStream, b: TcpStream, generation: Arc<AtomicU64>, born: u64, hold: Arc<Hold>, epoch: u64) {
    let client_to_server = (a.try_clone().unwrap(), b.try_clone().unwrap(), Some(hold));
    for (mut from, mut to, hold) in [client_to_server, (b, a, None)] {
        let generation = generation.clone();
        std::thread::spawn(move || {
            // Held only for connections older than the hold.
            let holding = |h: &Option<Arc<Hold>>| {
                h.as_ref().is_some_and(|h| {
                    h.active.load(Ordering::SeqCst) && epoch < h.epoch.load(Ordering::SeqCst)
                })
            };
            from.set_read_timeout(Some(Duration::from_millis(50))).ok();
            let mut buf = [0u8; 16384];
            let mut held: Vec<u8> = Vec::new();
            loop {
                if generation.load(Ordering::SeqCst) != born {
                    break;
                }
                if !held.is_empty() && !holding(&hold) && std::io::Write::write_all(&mut to, &held).is_err() {
                    break;
                }
                if !holding(&hold) {
                    held.clear();
                }
                match std::io::Read::read(&mut from, &mut buf) {
                    Ok(0) => break,
                    Ok(n) if holding(&hold) => {
                        held.extend_from_slice(&buf[..n]);
                        if let Some(h) = &hold {
                            h.bytes.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    }
                    Ok(n) => {
                        if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            if !held.is_empty() {
                // The client is gone (or cut): what it sent still reaches the target, on release.
                while holding(&hold) && generation.load(Ordering::SeqCst) == born {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = std::io::Write::write_all(&mut to, &held);
                // Let the target read it all before the connection closes.
                std::thread::sleep(Duration::from_secs(1));
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}
