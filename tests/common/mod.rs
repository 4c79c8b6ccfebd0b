//! Helpers shared by the tests that run `cairn serve`.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};

/// A port for one member of this test process. Ports the kernel hands out for port 0 can
/// repeat between tests running in parallel (two members would then race for one port), so
/// each call takes the next port of a range of this process's own.
pub fn free_addr() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 16;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
}
