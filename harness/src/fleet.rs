//! Worker processes for tests, benches and the fault-injection suite: started by slot, each
//! with its own log file (and metrics port when asked), their RSS sampled every 200 ms, stopped
//! with SIGTERM (clean drain) or SIGKILL (crash).
//!
//! Guarantee: no worker outlives the harness. Each child asks the kernel for SIGKILL when its
//! parent dies (`PR_SET_PDEATHSIG`) — which Linux ties to the *thread* that forked it, so every
//! child is forked by one spawner thread that lives as long as the fleet — and dropping the
//! fleet kills what is left.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What a worker process runs.
#[derive(Debug, Clone)]
pub enum WorkerCmd {
    /// `EXE run`: the vaxpulse worker.
    Vaxpulse(PathBuf),
    /// `sh -c "exec CMD"` (e.g. the TorchServe bridge), with the same environment.
    Shell(String),
}

impl WorkerCmd {
    /// The `vaxpulse` binary: `VAXPULSE_BIN`, else the one next to this executable (cargo puts
    /// both in the same target directory; test executables live one level deeper, in `deps/`).
    pub fn vaxpulse() -> anyhow::Result<Self> {
        if let Ok(p) = std::env::var("VAXPULSE_BIN") {
            return Ok(WorkerCmd::Vaxpulse(p.into()));
        }
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("the executable has no directory")?;
        for d in [dir, dir.parent().unwrap_or(dir)] {
            let p = d.join("vaxpulse");
            if p.is_file() {
                return Ok(WorkerCmd::Vaxpulse(p));
            }
        }
        anyhow::bail!(
            "no vaxpulse binary next to {} (build it: cargo build --release, or set VAXPULSE_BIN)",
            exe.display()
        )
    }

    fn command(&self) -> Command {
        match self {
            WorkerCmd::Vaxpulse(exe) => {
                let mut c = Command::new(exe);
                c.arg("run");
                c
            }
            WorkerCmd::Shell(s) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("exec {s}"));
                c
            }
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Forks every child from one long-lived thread (see the module docs).
struct Spawner {
    tx: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spawner {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("fleet-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot spawn a thread; the process is out of resources");
        Spawner {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn spawn(&self, mut cmd: Command) -> std::io::Result<Child> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("the spawner lives as long as the fleet; this is a bug")
            .send((cmd, reply_tx))
            .expect("the spawner thread never ends first; this is a bug");
        reply_rx
            .recv()
            .expect("the spawner always replies; this is a bug")
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SIGTERM: the worker drains, commits and exits (`Child::kill` is SIGKILL).
fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on a child we own.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vaxpulse::alloc::vm_rss_bytes(&s).map(|b| b / 1024)
}

/// `Some(true)` on HTTP 200 from `/health/ready`, `Some(false)` on another status, `None` when
/// nothing answers.
fn probe_ready(port: u16) -> Option<bool> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    Some(&head[9..12] == b"200")
}

/// Worker processes by slot.
pub struct Fleet {
    cmd: WorkerCmd,
    env: Vec<(String, String)>,
    pub logs: PathBuf,
    /// Slot `i` serves metrics on `base + i` when set; otherwise metrics are off.
    metrics_port_base: Option<u16>,
    log_level: String,
    slots: Vec<Option<Child>>,
    starts: usize,
    spawner: Spawner,
    peak_rss_kib: Arc<AtomicU64>,
    pids: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
}

impl Fleet {
    pub fn new(
        cmd: WorkerCmd,
        env: Vec<(String, String)>,
        logs: &Path,
        metrics_port_base: Option<u16>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let peak_rss_kib = Arc::new(AtomicU64::new(0));
        let pids = Arc::new(Mutex::new(Vec::<u32>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, p, st) = (peak_rss_kib.clone(), pids.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let now: Vec<u32> = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for pid in now {
                    if let Some(r) = rss_kib(pid) {
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Ok(Fleet {
            cmd,
            env,
            logs: logs.to_path_buf(),
            metrics_port_base,
            log_level: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            slots: Vec::new(),
            starts: 0,
            spawner: Spawner::new(),
            peak_rss_kib,
            pids,
            stop,
        })
    }

    fn refresh_pids(&self) {
        *self.pids.lock().unwrap_or_else(|e| e.into_inner()) = self.pids();
    }

    /// The log file of the latest start of `slot`.
    pub fn log_path(&self, slot: usize, start: usize) -> PathBuf {
        self.logs.join(format!("replica-{slot}-start-{start}.log"))
    }

    /// Starts a worker in `slot` (which must be empty); returns its log file.
    pub fn spawn(&mut self, slot: usize) -> anyhow::Result<PathBuf> {
        while self.slots.len() <= slot {
            self.slots.push(None);
        }
        anyhow::ensure!(self.slots[slot].is_none(), "slot {slot} is running");
        self.starts += 1;
        let log = self.log_path(slot, self.starts);
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = self.cmd.command();
        cmd.envs(self.env.iter().cloned())
            .env(
                "VAXPULSE_METRICS_LISTEN",
                self.metrics_port_base
                    .map_or(String::new(), |b| format!("127.0.0.1:{}", b + slot as u16)),
            )
            .env("RUST_LOG", &self.log_level)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .stdin(Stdio::null());
        let child = self
            .spawner
            .spawn(cmd)
            .context("cannot start a worker process")?;
        self.slots[slot] = Some(child);
        self.refresh_pids();
        Ok(log)
    }

    /// SIGKILL (a crash), and waits for the process to be gone.
    pub fn sigkill(&mut self, slot: usize) {
        if let Some(mut c) = self.slots.get_mut(slot).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.refresh_pids();
    }

    /// SIGTERM, then up to `grace` for the clean drain; false if it exited non-zero or had to
    /// be killed.
    pub fn sigterm(&mut self, slot: usize, grace: Duration) -> bool {
        let Some(mut c) = self.slots.get_mut(slot).and_then(Option::take) else {
            return true;
        };
        sigterm(&c);
        let clean = wait_exit(&mut c, grace);
        self.refresh_pids();
        clean
    }

    /// SIGTERM to every worker at once (one after the other would make each departure a
    /// rebalance that the next one's final commit runs into), then waits for each.
    pub fn stop_all(&mut self, grace: Duration) -> bool {
        self.slots.iter().flatten().for_each(sigterm);
        let deadline = Instant::now() + grace;
        let mut clean = true;
        for slot in 0..self.slots.len() {
            if let Some(mut c) = self.slots[slot].take() {
                clean &= wait_exit(&mut c, deadline.saturating_duration_since(Instant::now()));
            }
        }
        self.refresh_pids();
        clean
    }

    /// The first slot whose worker exited on its own, if any.
    pub fn exited(&mut self) -> Option<usize> {
        self.slots.iter_mut().enumerate().find_map(|(i, c)| {
            c.as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|_| i)
        })
    }

    /// Polls `done` every 250 ms until it holds, while every worker keeps running. An error
    /// when `timeout` passes (saying `what()`: where things stand) or a worker exits on its own;
    /// both name the log directory.
    pub async fn wait_while_running(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
        what: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "timed out after {timeout:?}: {} (logs in {})",
                what(),
                self.logs.display()
            );
            if let Some(slot) = self.exited() {
                anyhow::bail!(
                    "worker {slot} exited on its own: {} (logs in {})",
                    what(),
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// Whether some running worker answers `/health/ready` with anything but 200.
    pub fn any_not_ready(&self) -> bool {
        let Some(base) = self.metrics_port_base else {
            return false;
        };
        self.slots
            .iter()
            .enumerate()
            .any(|(i, c)| c.is_some() && probe_ready(base + i as u16) == Some(false))
    }

    /// Process ids of the running workers.
    pub fn pids(&self) -> Vec<u32> {
        self.slots.iter().flatten().map(Child::id).collect()
    }

    /// Peak RSS of any worker since the last call, in MiB; resets it.
    pub fn take_peak_mib(&self) -> f64 {
        self.peak_rss_kib.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }

    /// Peak RSS of any worker so far, in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak_rss_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// Waits up to `grace` for `c` to exit; kills it past that. True if it exited with status 0.
fn wait_exit(c: &mut Child, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = c.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
    false
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in self.slots.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}
