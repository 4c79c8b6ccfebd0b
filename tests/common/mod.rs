//! Helpers shared by the tests that run `cairn serve`.

#[allow(dead_code)]
pub mod cluster;
#[allow(dead_code)]
pub mod proxy;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A port for one member of this test process. Ports the kernel hands out for port 0 can
/// repeat between tests running in parallel (two members would then race for one port), so
/// each call takes the next port of a range of this process's own. The ports stay below
/// Linux's default ephemeral range (32768 and up): a client connecting to a port in that
/// range while nothing listens there can be handed the same port as its own and connect to
/// itself, which looks like a member that is up. (A machine may set a wider range: wait
/// for a member with [`wait_serving`], which a connection to itself does not satisfy.)
pub fn free_addr() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 1_000) as u16 * 20;
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % 20_000;
        let port = 10_000 + (base + step) % 22_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
}

/// `cairn serve` on `dir`, with the native protocol on `addr` and peers on a port of its
/// own (so that members of parallel tests never meet on etcd's default peer port).
#[allow(dead_code)]
pub fn serve_command(dir: &std::path::Path, addr: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["serve", "--listen-native-addr", addr, "--data-dir"])
        .arg(dir)
        .arg("--listen-peer-urls")
        .arg(format!("http://{}", free_addr()))
        .args(["--listen-client-urls", "http://127.0.0.1:0"]);
    cmd
}

/// `cairn serve` flags for a member of a two-member cluster whose other member never
/// starts: it never has a leader, and answers linearizable reads and writes Unavailable at
/// once.
#[allow(dead_code)]
pub fn leaderless_flags() -> Vec<String> {
    let (own, absent) = (free_addr(), free_addr());
    vec![
        "--name".into(),
        "a".into(),
        "--initial-cluster".into(),
        format!("a=http://{own},b=http://{absent}"),
        "--initial-advertise-peer-urls".into(),
        format!("http://{own}"),
    ]
}

/// A tmpfs of `size` (as mount's `size=` option takes it) mounted for a test, unmounted on
/// drop (stop every process using it first). Mounting needs root: `None`, with a line
/// saying the test is skipped, where it is not allowed.
#[allow(dead_code)]
pub struct Tmpfs {
    pub path: std::path::PathBuf,
    _parent: tempfile::TempDir,
}

#[allow(dead_code)]
impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().expect("tempdir");
        let path = parent.path().join("fs");
        std::fs::create_dir(&path).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path,
                _parent: parent,
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

/// Whether a member answers a status request on `addr`.
#[allow(dead_code)]
pub fn answers_status(addr: &str) -> bool {
    use cairn::protocol::{ClientRequest, ClientResponse};
    let mut c = cairn::client::Client::new(vec![addr.to_string()], Duration::from_secs(2));
    matches!(
        c.request(&ClientRequest::Status),
        Ok(ClientResponse::Status(_))
    )
}

/// Waits (30 s at most) until a member answers a status request on `addr`. With `child`,
/// the member's process: its exit fails the wait at once, with its stderr if piped.
#[allow(dead_code)]
pub fn wait_serving(addr: &str, mut child: Option<&mut std::process::Child>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(child) = child.as_deref_mut() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("the member on {addr} exited at start ({status}): {err}");
            }
        }
        if answers_status(addr) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}: not serving after 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends a test's `cairn serve` process (SIGKILL, then reaped) and, if the test is failing,
/// prints its log under `label`.
#[allow(dead_code)]
pub fn end_member(child: &mut std::process::Child, label: &str, log: &std::path::Path) {
    let _ = child.kill();
    let _ = child.wait();
    if std::thread::panicking() {
        eprintln!(
            "---- {label} ----\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}
