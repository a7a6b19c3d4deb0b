//! `jobsd serve` children of the benchmark, and what `/proc` says about
//! them (CPU time, resident memory) and about PostgreSQL's processes on
//! this host (their CPU time).
//!
//! A child is this very executable (`std::env::current_exe()`), so the
//! benchmark measures the build it is part of, unless `--serve-binary`
//! names another build to compare. It listens on a free port
//! (`--bind 127.0.0.1:0`); its address is read from its start-up log line
//! (`address=`), and its stderr is drained for its whole life so the pipe
//! never fills. Logging is cut down to warnings (plus start-up) so it does
//! not distort the figures. A child is killed when its handle is dropped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `RUST_LOG` of the children: the `log` handler's lines are filtered out.
const CHILD_LOG: &str = "warn,jobsd::app=info";
/// Stderr lines kept to explain a child that failed.
const TAIL_LINES: usize = 20;

/// How to start one `jobsd serve`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub database_url: String,
    pub instance: String,
    pub workers: Option<usize>,
    pub db_max_connections: u32,
    pub db_connect_timeout: Duration,
    pub jobs_dir: PathBuf,
    /// More `serve` flags, passed last.
    pub extra: Vec<String>,
    /// Another `jobsd` executable to run (default: this one).
    pub binary: Option<PathBuf>,
}

/// A running `jobsd serve` child.
pub struct Service {
    pub instance: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pid: u32,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

fn remember(tail: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut tail) = tail.lock() {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

impl Service {
    /// Starts the child and waits (up to 60 s) until it listens.
    pub async fn spawn(spec: &ServiceSpec) -> anyhow::Result<Service> {
        let exe = match &spec.binary {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("locating the jobsd executable")?,
        };
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .args(["--database-url", &spec.database_url])
            .args(["--bind", "127.0.0.1:0", "--log-format", "text"])
            .args(["--instance", &spec.instance])
            .arg("--default-jobs-dir")
            .arg(&spec.jobs_dir)
            .args(["--db-max-connections", &spec.db_max_connections.to_string()])
            .args([
                "--db-connect-timeout",
                &format!("{}ms", spec.db_connect_timeout.as_millis()),
            ]);
        if let Some(workers) = spec.workers {
            command.args(["--workers", &workers.to_string()]);
        }
        let mut child = command
            .args(&spec.extra)
            .env("RUST_LOG", CHILD_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting jobsd serve ({})", spec.instance))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{} exited at once", spec.instance))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("{}: no stderr pipe", spec.instance))?;
        let mut lines = BufReader::new(stderr).lines();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let address = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let address = line
                    .split("address=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string);
                remember(&tail, line);
                if address.is_some() {
                    return address;
                }
            }
            None
        })
        .await;
        let explain = |what: &str| {
            let tail = tail
                .lock()
                .map(|t| Vec::from(t.clone()))
                .unwrap_or_default();
            anyhow!("{} {what}; its log:\n{}", spec.instance, tail.join("\n"))
        };
        let address = match address {
            Ok(Some(address)) => address,
            Ok(None) => return Err(explain("exited before listening")),
            Err(_) => return Err(explain("did not listen within 60 s")),
        };
        let drain_tail = tail.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                remember(&drain_tail, line);
            }
        });
        Ok(Service {
            instance: spec.instance.clone(),
            base: format!("http://{address}"),
            pid,
            child,
            tail,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines the child logged (for error reports).
    pub fn log_tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| Vec::from(t.clone()).join("\n"))
            .unwrap_or_default()
    }

    /// Sends SIGKILL (`kill -9`) and returns at once; see [`Service::kill`].
    pub fn kill_signal(&mut self) -> anyhow::Result<()> {
        self.child
            .start_kill()
            .with_context(|| format!("killing {}", self.instance))
    }

    /// `kill -9`, and waits until the process is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.instance))
    }

    /// SIGTERM (a graceful stop), then waits up to 60 s for the exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e).context("waiting for the child"),
            Err(_) => {
                self.kill().await?;
                bail!("{} did not stop within 60 s of SIGTERM", self.instance)
            }
        }
    }
}

/// CPU time (user + system) a process has used, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat)
        .map(|s| s.ticks)
        .ok_or_else(|| anyhow!("unexpected format of {path}"))
}

/// The parts of `/proc/<pid>/stat` the benchmark reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    /// Field 2, the command name (`comm`), without its parentheses.
    name: String,
    /// Field 4.
    ppid: u32,
    /// utime + stime (fields 14 and 15), clock ticks.
    ticks: u64,
    /// cutime + cstime (fields 16 and 17): what the children it has waited
    /// for used, clock ticks.
    children_ticks: u64,
}

/// The command name (field 2) may hold spaces and parentheses, so it runs
/// from the first `(` to the last `)`, and counting starts after that.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let number = |field: usize| -> Option<u64> { fields.get(field - 3)?.parse().ok() };
    Some(Stat {
        name,
        ppid: u32::try_from(number(4)?).ok()?,
        ticks: number(14)? + number(15)?,
        children_ticks: number(16)? + number(17)?,
    })
}

/// CPU time of the PostgreSQL server(s) on this host, in clock ticks, as
/// `/proc` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostgresCpu {
    /// Every process named `postgres` (postmaster, background processes,
    /// every backend), plus what its postmaster's exited children used
    /// (cutime + cstime), so backends that end between two readings still
    /// count. A difference of two readings is the server's CPU in between,
    /// whoever its clients were.
    pub all: u64,
    /// Backends whose process title names `database`
    /// (`postgres: … <user> <database> <client> …`), while they live.
    pub database: u64,
    /// Processes found (none: PostgreSQL runs elsewhere, or `/proc` hides it).
    pub processes: usize,
}

/// Reads [`PostgresCpu`] from `/proc`; processes that vanish while it reads
/// are skipped.
pub fn postgres_cpu_ticks(database: &str) -> PostgresCpu {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return PostgresCpu::default();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(stat) = parse_stat(&stat).filter(|s| s.name == "postgres") else {
            continue;
        };
        let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        found.push((pid, stat, String::from_utf8_lossy(&title).into_owned()));
    }
    sum_postgres_cpu(&found, database)
}

/// [`PostgresCpu`] of `(pid, stat, process title)` of every process named
/// `postgres`.
fn sum_postgres_cpu(found: &[(u32, Stat, String)], database: &str) -> PostgresCpu {
    let pids: Vec<u32> = found.iter().map(|(pid, _, _)| *pid).collect();
    let mut cpu = PostgresCpu {
        processes: found.len(),
        ..PostgresCpu::default()
    };
    for (_, stat, title) in found {
        cpu.all += stat.ticks;
        // A postmaster is a postgres process whose parent is not one.
        if !pids.contains(&stat.ppid) {
            cpu.all += stat.children_ticks;
        }
        if title.split_whitespace().any(|word| word == database) {
            cpu.database += stat.ticks;
        }
    }
    cpu
}

/// CPU time in clock ticks, in seconds.
pub fn cpu_seconds(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks_per_second() as f64
}

/// CPU time in clock ticks over `wall`, in % of one core.
pub fn cpu_percent(ticks: u64, wall: Duration) -> f64 {
    100.0 * cpu_seconds(ticks) / wall.as_secs_f64().max(1e-9)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's USER_HZ, if that fails).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Resident memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Now (`VmRSS`).
    pub rss_kib: u64,
    /// The peak (`VmHWM`).
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {name} in {path}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_name_with_spaces() {
        let stat = "4242 (jobsd (x) y) S 1 2 3 4 5 6 7 8 9 10 150 25 7 3 20 0 9 0 100";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                name: "jobsd (x) y".to_string(),
                ppid: 1,
                ticks: 175,
                children_ticks: 10,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None, "too few fields");
    }

    #[test]
    fn sums_postgres_with_its_exited_children() {
        let stat = |ppid, ticks, children_ticks| Stat {
            name: "postgres".to_string(),
            ppid,
            ticks,
            children_ticks,
        };
        let found = vec![
            (
                10,
                stat(1, 5, 100),
                "/usr/lib/postgresql/15/bin/postgres -D /data".to_string(),
            ),
            (
                11,
                stat(10, 7, 0),
                "postgres: 15/main: walwriter".to_string(),
            ),
            (
                12,
                stat(10, 20, 0),
                "postgres: 15/main: postgres jobsd_bench_ab_steady 127.0.0.1(5000) idle"
                    .to_string(),
            ),
            (
                13,
                stat(10, 30, 0),
                "postgres: 15/main: postgres jobsd_bench_ab_steady_x 127.0.0.1(5001) idle"
                    .to_string(),
            ),
        ];
        let cpu = sum_postgres_cpu(&found, "jobsd_bench_ab_steady");
        assert_eq!(
            cpu.all,
            5 + 100 + 7 + 20 + 30,
            "children of the postmaster only"
        );
        assert_eq!(cpu.database, 20, "the whole name, not a prefix");
        assert_eq!(cpu.processes, 4);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        let half = cpu_percent(clock_ticks_per_second(), Duration::from_secs(2));
        assert!((half - 50.0).abs() < 1e-9, "{half}");
        let mem = memory(me).expect("status readable");
        assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib);
        assert!(clock_ticks_per_second() > 0);
    }
}
