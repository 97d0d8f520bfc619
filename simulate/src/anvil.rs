//! A local anvil node on a free loopback port, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Where the project's scripts install anvil (`fixtures/node_modules`, from npm
/// `@foundry-rs/anvil`), unless `CHAINFOLD_ANVIL` names another binary.
pub fn anvil_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CHAINFOLD_ANVIL") {
        return Ok(PathBuf::from(path));
    }
    let relative = "fixtures/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";
    let mut dir: Option<&Path> = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join(relative);
        if candidate.exists() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    let cwd = std::env::current_dir()?.join(relative);
    if cwd.exists() {
        return Ok(cwd);
    }
    anyhow::bail!(
        "anvil not found: run `scripts/stack up` (installs it with npm into fixtures/node_modules) or set CHAINFOLD_ANVIL"
    )
}

/// A running anvil.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    pub port: u16,
    pub chain_id: u64,
}

impl Anvil {
    /// Starts anvil with `chain_id` on a free port (automine, unlocked and auto-impersonated
    /// accounts) and waits until it answers.
    pub fn spawn(chain_id: u64) -> anyhow::Result<Anvil> {
        let binary = anvil_binary()?;
        let mut last_err = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--chain-id", &chain_id.to_string()])
                .args(["--auto-impersonate", "--silent", "--accounts", "10"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("could not start {}", binary.display()))?;
            let mut anvil = Anvil {
                child,
                port,
                chain_id,
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Some(status) = anvil.child.try_wait()? {
                    last_err = Some(anyhow::anyhow!("anvil exited at start: {status}"));
                    break;
                }
                // Ours only if this child holds the listening socket: the port was free when
                // picked, but another process (another test's node) may have taken it since, and
                // then a connect succeeds to that one while this child fails to bind and exits.
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && listens_on(anvil.child.id(), port)
                {
                    return Ok(anvil);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = anvil.child.kill();
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("anvil did not start")))
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The process id (for tests that kill it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Whether process `pid` holds a TCP socket listening on `port` (Linux: the listening sockets'
/// inodes in `/proc/net/tcp{,6}` against the process's file descriptors). Where `/proc` cannot
/// tell (another system), a connect that succeeded is taken as enough, as before.
fn listens_on(pid: u32, port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    let mut inodes = std::collections::HashSet::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode
            if fields.len() > 9 && fields[1].ends_with(&wanted) && fields[3] == "0A" {
                inodes.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    if !readable {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.contains(target.to_string_lossy().as_ref()))
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listener_is_found_in_its_own_process_and_not_in_another() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(super::listens_on(std::process::id(), port));
        drop(listener);
        assert!(!super::listens_on(std::process::id(), port), "closed");
        // PID 1 holds no listener on a port this test just bound and closed.
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = other.local_addr().expect("addr").port();
        assert!(!super::listens_on(1, port));
    }
}
