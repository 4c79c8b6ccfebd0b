//! A fault-injecting TCP proxy for the peer links of `cairn serve` processes (std threads).
//!
//! For each member the proxy listens on the member's advertised peer URL and forwards to
//! the port the member really listens on (`--listen-peer-urls`), which may change between
//! starts. A member's peer connection opens with a 36-byte hello (`magic u64 | version u32
//! | cluster u64 | from u64 | to u64`, little-endian, sent by the dialer): the proxy reads
//! it to learn the directed link `from → to` the connection carries, then forwards both
//! directions. The dialer's bytes follow the rules of `from → to`, the answers those of
//! `to → from`.
//!
//! Faults per directed link, all undone by [`Proxy::heal`]:
//! - blackhole: the proxy stops reading that direction, so TCP backpressure stalls the
//!   sender; what was sent is delivered, whole and in order, once healed;
//! - delay: each chunk waits this long before it is written on;
//! - cut: the link's connections are closed now; new ones are let through.
//!
//! Dropping the proxy closes every connection and joins every thread.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const HELLO_BYTES: usize = 36;
/// How often a waiting thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// A dialer that connects and says nothing for this long is closed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CHUNK_BYTES: usize = 64 << 10;

/// A directed link: (from, to) member ids, as the hello names them.
pub type Link = (u64, u64);

#[derive(Default)]
struct Rules {
    blackholed: HashSet<Link>,
    delays: HashMap<Link, Duration>,
}

/// One proxied connection: both sockets, to close them from outside.
struct Conn {
    link: Link,
    sockets: [TcpStream; 2],
}

struct Shared {
    stop: AtomicBool,
    rules: Mutex<Rules>,
    /// Signalled when rules change or the proxy stops.
    changed: Condvar,
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub struct Proxy {
    members: Vec<u64>,
    /// Per member: where its peer listener really is.
    targets: Vec<Arc<Mutex<SocketAddr>>>,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not stop the proxy from being torn down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Starts fronting each `(member id, advertised address, real address)`.
    pub fn start(fronts: &[(u64, String, String)]) -> Proxy {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            rules: Mutex::new(Rules::default()),
            changed: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let mut targets = Vec::new();
        let mut acceptors = Vec::new();
        for (_, listen, target) in fronts {
            let listener = TcpListener::bind(listen)
                .unwrap_or_else(|e| panic!("proxy: cannot listen on {listen}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking");
            let target = Arc::new(Mutex::new(target.parse().expect("a socket address")));
            targets.push(target.clone());
            let shared = shared.clone();
            acceptors.push(std::thread::spawn(move || accept(listener, target, shared)));
        }
        Proxy {
            members: fronts.iter().map(|f| f.0).collect(),
            targets,
            shared,
            acceptors,
        }
    }

    /// Starts fronting one more member (added to the cluster while it runs); its index.
    pub fn add_front(&mut self, id: u64, listen: &str, target: &str) -> usize {
        let listener = TcpListener::bind(listen)
            .unwrap_or_else(|e| panic!("proxy: cannot listen on {listen}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let target = Arc::new(Mutex::new(target.parse().expect("a socket address")));
        self.targets.push(target.clone());
        let shared = self.shared.clone();
        self.acceptors
            .push(std::thread::spawn(move || accept(listener, target, shared)));
        self.members.push(id);
        self.members.len() - 1
    }

    /// The member fronted at `index` has this id (known once `member add` answered).
    pub fn set_member(&mut self, index: usize, id: u64) {
        self.members[index] = id;
    }

    /// Member `index` now really listens on `addr` (it was started again on another port).
    pub fn retarget(&self, index: usize, addr: &str) {
        *lock(&self.targets[index]) = addr.parse().expect("a socket address");
    }

    fn rules(&self, change: impl FnOnce(&mut Rules)) {
        change(&mut lock(&self.shared.rules));
        self.shared.changed.notify_all();
    }

    /// Stops forwarding `from → to` until healed.
    pub fn blackhole(&self, from: u64, to: u64) {
        self.rules(|r| {
            r.blackholed.insert((from, to));
        });
    }

    /// Delays every chunk on `from → to` by `ms` until healed.
    pub fn delay(&self, from: u64, to: u64, ms: u64) {
        self.rules(|r| {
            r.delays.insert((from, to), Duration::from_millis(ms));
        });
    }

    /// Closes the connections carrying `from → to` now; new ones are let through.
    pub fn cut(&self, from: u64, to: u64) {
        for c in lock(&self.shared.conns).values() {
            if c.link == (from, to) {
                for s in &c.sockets {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Blackholes both directions between every member of `a` and every member of `b`.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        self.rules(|r| {
            for &x in a {
                for &y in b {
                    r.blackholed.insert((x, y));
                    r.blackholed.insert((y, x));
                }
            }
        });
    }

    /// Blackholes every link to and from `member`.
    pub fn isolate(&self, member: u64) {
        let others: Vec<u64> = self
            .members
            .iter()
            .copied()
            .filter(|&m| m != member)
            .collect();
        self.partition(&[member], &others);
    }

    /// Undoes every blackhole and delay.
    pub fn heal(&self) {
        self.rules(|r| *r = Rules::default());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        for c in lock(&self.shared.conns).values() {
            for s in &c.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
        // Acceptors are gone: no new connection thread is started from here on.
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept(listener: TcpListener, target: Arc<Mutex<SocketAddr>>, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let to = *lock(&target);
                let s = shared.clone();
                let t = std::thread::spawn(move || connection(stream, to, s));
                let mut threads = lock(&shared.threads);
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL / 4),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Reads the dialer's hello, connects to the member, and forwards both directions.
fn connection(dialer: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let _ = dialer.set_nonblocking(false);
    let _ = dialer.set_nodelay(true);
    let Some(hello) = read_hello(&dialer, &shared) else {
        return;
    };
    let word = |at: usize| u64::from_le_bytes(hello[at..at + 8].try_into().unwrap());
    let link = (word(20), word(28));
    // A blackholed link holds the hello too: the dialer waits for its answer.
    if !wait_open(&shared, link) {
        return;
    }
    let Ok(member) = TcpStream::connect_timeout(&target, UPSTREAM_CONNECT_TIMEOUT) else {
        // As if the member were down: the dialer sees the connection close and dials again.
        return;
    };
    let _ = member.set_nodelay(true);
    if (&member).write_all(&hello).is_err() {
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (Ok(d), Ok(m)) = (dialer.try_clone(), member.try_clone()) else {
        return;
    };
    lock(&shared.conns).insert(
        id,
        Conn {
            link,
            sockets: [d, m],
        },
    );
    // Stopped between the check above and the registration: close what Drop did not see.
    if shared.stop.load(Ordering::Relaxed) {
        let _ = dialer.shutdown(Shutdown::Both);
        let _ = member.shutdown(Shutdown::Both);
    }
    let (d, m) = (dialer.try_clone(), member.try_clone());
    let back = std::thread::spawn({
        let shared = shared.clone();
        move || {
            if let (Ok(d), Ok(m)) = (d, m) {
                pump(&shared, (link.1, link.0), m, d);
            }
        }
    });
    pump(&shared, link, dialer, member);
    let _ = back.join();
    lock(&shared.conns).remove(&id);
}

fn read_hello(dialer: &TcpStream, shared: &Shared) -> Option<[u8; HELLO_BYTES]> {
    let _ = dialer.set_read_timeout(Some(POLL));
    let mut hello = [0u8; HELLO_BYTES];
    let mut got = 0;
    let deadline = Instant::now() + HELLO_TIMEOUT;
    while got < HELLO_BYTES {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return None;
        }
        match (&*dialer).read(&mut hello[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(hello)
}

/// Waits while `link` is blackholed; false once the proxy stops.
fn wait_open(shared: &Shared, link: Link) -> bool {
    let mut rules = lock(&shared.rules);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        if !rules.blackholed.contains(&link) {
            return true;
        }
        rules = shared
            .changed
            .wait_timeout(rules, POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Forwards `src` to `dst` under `link`'s rules until either side closes; then closes both.
fn pump(shared: &Shared, link: Link, mut src: TcpStream, mut dst: TcpStream) {
    let _ = src.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        // Blackholed: nothing is read, so the sender's socket buffers fill and it stalls.
        if !wait_open(shared, link) {
            break;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // A chunk read just before a blackhole is held with the rest.
        if !wait_open(shared, link) {
            break;
        }
        let delay = lock(&shared.rules).delays.get(&link).copied();
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}
