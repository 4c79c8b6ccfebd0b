//! `lock`, `elect` and `sem`: etcdctl 3.4's `lock` and `elect`, and a semaphore in the same
//! style. Each holds a session: a lease (`--ttl`) kept alive by a thread, revoked when the
//! command ends (so what it held is released at once), or left to expire if the process
//! is killed.

use crate::client::{keep_alive_loop, Client, ClientError, ObserveStream};
use crate::lock::{LeaderKey, LockRequest, LockResponse};
use crate::protocol::{ClientRequest, ClientResponse};
use clap::{Args, Subcommand};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `lock <lockname> [exec-command arg1 arg2 ...]`.
#[derive(Args, Debug, Clone)]
pub struct LockArgs {
    pub name: OsString,
    /// A command to run while holding the lock (with ETCD_LOCK_KEY and ETCD_LOCK_REV set);
    /// the lock is released when it ends, and its exit code is this command's.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
    /// Timeout for the session, in seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

/// `elect <election-name> [proposal]`.
#[derive(Args, Debug, Clone)]
pub struct ElectArgs {
    pub name: OsString,
    pub proposal: Option<OsString>,
    /// Observation mode: print the leader's key and value on every change.
    #[arg(short = 'l', long)]
    pub listen: bool,
    /// Timeout for the session, in seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

/// `sem acquire|release`.
#[derive(Subcommand, Debug, Clone)]
pub enum SemCmd {
    /// Waits until at most LIMIT-1 others hold the semaphore NAME, then holds it: prints
    /// the key, runs the command if one is given (else holds until interrupted), releases.
    Acquire {
        name: OsString,
        /// Holders at once.
        #[arg(long)]
        limit: u32,
        /// Timeout for the session, in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Releases the hold of the session with this lease (hex) on NAME.
    Release {
        name: OsString,
        #[arg(long)]
        lease: String,
    },
}

/// Set by SIGINT/SIGTERM while a command holds something: it releases and exits.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

/// A lease kept alive by a thread; revoked when dropped.
pub struct Session {
    pub lease: i64,
    endpoints: Vec<String>,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    pub fn new(endpoints: &[String], timeout: Duration, ttl: i64) -> Result<Session, ClientError> {
        let mut client = Client::new(endpoints.to_vec(), timeout);
        let lease = client.lease_grant(ttl, 0)?.id;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ends) = (stop.clone(), endpoints.to_vec());
        let thread = std::thread::spawn(move || {
            keep_alive_loop(ends, timeout, lease, &s, |_| {});
        });
        Ok(Session {
            lease,
            endpoints: endpoints.to_vec(),
            timeout,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut client = Client::new(self.endpoints.clone(), self.timeout);
        let _ = client.lease_revoke(self.lease);
    }
}

/// A lock, election or semaphore request that may wait for its turn (as long as it takes,
/// or until interrupted).
fn wait_turn(client: &mut Client, req: LockRequest) -> Result<LockResponse, String> {
    match client.request_within(&ClientRequest::Lock(req), Duration::from_secs(365 * 86_400)) {
        Ok(ClientResponse::Lock(r)) => Ok(r),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `command` with `env`; its exit code.
fn run(command: &[OsString], env: &[(&str, String)]) -> Result<i32, String> {
    let Some((program, args)) = command.split_first() else {
        return Ok(0);
    };
    let status = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .map_err(|e| format!("{program:?}: {e}"))?;
    Ok(status.code().unwrap_or(1))
}

fn hold_until_interrupted() {
    while !INTERRUPTED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_line(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// `lock`: prints the key held; runs the command, or holds until interrupted; releases.
pub fn lock(endpoints: &[String], timeout: Duration, args: &LockArgs) -> Result<i32, String> {
    catch_signals();
    let session = Session::new(endpoints, timeout, args.ttl).map_err(|e| e.to_string())?;
    let mut client = Client::new(endpoints.to_vec(), timeout);
    let req = LockRequest::Lock {
        name: args.name.as_bytes().to_vec(),
        lease: session.lease,
    };
    let LockResponse::Lock { key, revision, .. } = wait_turn(&mut client, req)? else {
        return Err("unexpected reply".into());
    };
    let code = if args.command.is_empty() {
        print_line(&key);
        hold_until_interrupted();
        0
    } else {
        let env = [
            ("ETCD_LOCK_KEY", String::from_utf8_lossy(&key).into_owned()),
            ("ETCD_LOCK_REV", revision.to_string()),
        ];
        run(&args.command, &env)?
    };
    let _ = wait_turn(&mut client, LockRequest::Unlock { key });
    drop(session);
    Ok(code)
}

/// `sem acquire`: as `lock`, with LIMIT holders at once.
pub fn sem(endpoints: &[String], timeout: Duration, cmd: &SemCmd) -> Result<i32, String> {
    let mut client = Client::new(endpoints.to_vec(), timeout);
    match cmd {
        SemCmd::Release { name, lease } => {
            let lease = i64::from_str_radix(lease, 16)
                .map_err(|e| format!("bad lease ID arg ({e}), expecting ID in Hex"))?;
            let key = crate::lock::contender_key(name.as_bytes(), lease);
            wait_turn(&mut client, LockRequest::Release { key })?;
            Ok(0)
        }
        SemCmd::Acquire {
            name,
            limit,
            ttl,
            command,
        } => {
            catch_signals();
            let session = Session::new(endpoints, timeout, *ttl).map_err(|e| e.to_string())?;
            let req = LockRequest::Acquire {
                name: name.as_bytes().to_vec(),
                lease: session.lease,
                limit: *limit,
            };
            let LockResponse::Acquire { key, revision, .. } = wait_turn(&mut client, req)? else {
                return Err("unexpected reply".into());
            };
            let code = if command.is_empty() {
                print_line(&key);
                hold_until_interrupted();
                0
            } else {
                let env = [
                    ("ETCD_SEM_KEY", String::from_utf8_lossy(&key).into_owned()),
                    ("ETCD_SEM_REV", revision.to_string()),
                ];
                run(command, &env)?
            };
            let _ = wait_turn(&mut client, LockRequest::Release { key });
            drop(session);
            Ok(code)
        }
    }
}

/// `elect`: campaigns with the proposal (printing the leader's key and value once it
/// leads, then holding until interrupted and resigning), or with `-l` observes: prints the
/// leader's key and value at each change.
pub fn elect(endpoints: &[String], timeout: Duration, args: &ElectArgs) -> Result<i32, String> {
    let name = args.name.as_bytes().to_vec();
    let mut client = Client::new(endpoints.to_vec(), timeout);
    if args.listen {
        return observe(endpoints, timeout, &name);
    }
    let Some(proposal) = &args.proposal else {
        return Err("no proposal argument but -l not set".into());
    };
    catch_signals();
    let session = Session::new(endpoints, timeout, args.ttl).map_err(|e| e.to_string())?;
    let req = LockRequest::Campaign {
        name,
        lease: session.lease,
        value: proposal.as_bytes().to_vec(),
    };
    let LockResponse::Campaign { leader, .. } = wait_turn(&mut client, req)? else {
        return Err("unexpected reply".into());
    };
    print_line(&leader.key);
    print_line(proposal.as_bytes());
    hold_until_interrupted();
    let _ = wait_turn(
        &mut client,
        LockRequest::Resign {
            leader: LeaderKey { ..leader },
        },
    );
    drop(session);
    Ok(0)
}

/// Prints the election's leader (key, then value) now and at each change, until
/// interrupted; the member streams them (`Observe`).
fn observe(endpoints: &[String], timeout: Duration, name: &[u8]) -> Result<i32, String> {
    catch_signals();
    let mut stream =
        ObserveStream::connect(endpoints.to_vec(), timeout, name).map_err(|e| e.to_string())?;
    while !INTERRUPTED.load(Ordering::Relaxed) {
        match stream.next(Duration::from_millis(200)) {
            Ok(Some(kv)) => {
                print_line(&kv.key);
                print_line(&kv.value);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(0)
}
