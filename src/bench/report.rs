//! The benchmark's report: each figure beside its target, with the machine
//! it was measured on, as a markdown table or as JSON.

use serde::Serialize;

use crate::store::bench::{PostgresFacts, ServerFacts, SqliteFacts};

/// How a figure is compared with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cmp {
    AtLeast,
    AtMost,
    Below,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub cmp: Cmp,
    pub value: f64,
}

impl Target {
    fn met_by(&self, value: f64) -> bool {
        match self.cmp {
            Cmp::AtLeast => value >= self.value,
            Cmp::AtMost => value <= self.value,
            Cmp::Below => value < self.value,
        }
    }
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<Target>,
    /// Whether the target is met (none without a target).
    pub met: Option<bool>,
    /// How it was measured (sizes, paths), for the reader.
    pub note: String,
}

impl Figure {
    pub fn new(
        scenario: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Figure {
            scenario,
            name: name.into(),
            value,
            unit,
            target: None,
            met: None,
            note: String::new(),
        }
    }

    pub fn target(mut self, cmp: Cmp, value: f64) -> Self {
        let target = Target { cmp, value };
        self.met = Some(target.met_by(self.value));
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// The machine and database the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub measured_at: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub kernel: String,
    /// 1-minute load average before and after the benchmark.
    pub load_before: f64,
    pub load_after: f64,
    pub jobsd_version: String,
    /// `release` or `debug`: a debug build's figures mean little.
    pub build: String,
    /// The PostgreSQL server measured (or compared with, for the drain on
    /// the embedded store).
    pub postgres: Option<PostgresFacts>,
    /// The embedded store measured, as its replicas open their files.
    pub sqlite: Option<SqliteFacts>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The 1-minute load average (0 when unreadable).
pub fn load_average() -> f64 {
    read("/proc/loadavg")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

impl Machine {
    /// What this process can see of its machine, and the facts of the
    /// database measured (and of a baseline server, if any).
    pub fn observe(database: ServerFacts, baseline: Option<ServerFacts>) -> Machine {
        let (mut postgres, mut sqlite) = (None, None);
        for facts in std::iter::once(database).chain(baseline) {
            match facts {
                ServerFacts::Postgres(f) => postgres = Some(f),
                ServerFacts::Sqlite(f) => sqlite = Some(f),
            }
        }
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, m)| m.trim().to_string());
        let memory_kib: u64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Machine {
            measured_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: memory_kib / 1024,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_before: load_average(),
            load_after: 0.0,
            jobsd_version: env!("CARGO_PKG_VERSION").to_string(),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
            postgres,
            sqlite,
        }
    }
}

/// A scenario that does not apply to the store measured.
#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    pub scenario: &'static str,
    pub reason: String,
}

/// A scenario that could not be measured.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub scenario: &'static str,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// The settings of this run (flags).
    pub settings: serde_json::Value,
    /// The flags every replica got besides its database, address and name.
    pub replica_flags: String,
    pub figures: Vec<Figure>,
    pub failures: Vec<Failure>,
    /// Scenarios not run on this store, with why.
    pub left_out: Vec<LeftOut>,
}

/// A number with thousands separators and `decimals` decimals.
fn grouped(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{out}")
    } else {
        format!("{sign}{out}.{frac}")
    }
}

/// A value in its unit, with a precision that suits the unit.
pub fn show(value: f64, unit: &str) -> String {
    let decimals = match unit {
        "ms" | "%" | "s" | "×" => 2,
        "MB" => 1,
        _ => 0,
    };
    format!("{} {unit}", grouped(value, decimals))
}

impl Report {
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!("## jobsd benchmark, {}\n\n", m.measured_at);
        out += &format!(
            "- machine: {} CPU(s), {}, {} MiB memory, Linux {}\n",
            m.cpus, m.cpu_model, m.memory_mib, m.kernel
        );
        out += &format!(
            "- load average (1 min): {:.2} before, {:.2} after\n",
            m.load_before, m.load_after
        );
        if let Some(lite) = &m.sqlite {
            out += &format!(
                "- SQLite {}, embedded in each replica: journal_mode {}, synchronous {}, busy_timeout {} ms; \
                 a file per scenario in {}; no database server, so a replica's CPU is all the service uses\n",
                lite.sqlite_version,
                lite.journal_mode,
                lite.synchronous,
                lite.busy_timeout_ms,
                lite.directory
            );
        }
        if let Some(pg) = &m.postgres {
            let role = if m.sqlite.is_some() {
                " (the drain's baseline)"
            } else {
                ""
            };
            out += &format!(
                "- PostgreSQL {}{role}: shared_buffers {}, synchronous_commit {}, fsync {}, max_connections {}\n",
                pg.server_version, pg.shared_buffers, pg.synchronous_commit, pg.fsync, pg.max_connections
            );
        }
        out += &format!(
            "- jobsd {} ({} build); each replica: `jobsd serve {}`\n",
            m.jobsd_version, m.build, self.replica_flags
        );
        if m.build == "debug" {
            out += "- **warning: a debug build; use `cargo run --release -- bench` for real figures**\n";
        }
        out +=
            "\n| scenario | figure | value | target | result | how |\n|---|---|---|---|---|---|\n";
        for f in &self.figures {
            let target = f.target.map_or_else(
                || "—".to_string(),
                |t| {
                    let op = match t.cmp {
                        Cmp::AtLeast => "≥",
                        Cmp::AtMost => "≤",
                        Cmp::Below => "<",
                    };
                    format!("{op} {}", show(t.value, f.unit))
                },
            );
            let result = match f.met {
                Some(true) => "pass",
                Some(false) => "**miss**",
                None => "",
            };
            out += &format!(
                "| {} | {} | {} | {target} | {result} | {} |\n",
                f.scenario,
                f.name,
                show(f.value, f.unit),
                f.note
            );
        }
        if !self.left_out.is_empty() {
            out += "\nScenarios left out:\n\n";
            for left in &self.left_out {
                out += &format!("- {}: {}\n", left.scenario, left.reason);
            }
        }
        if !self.failures.is_empty() {
            out += "\nScenarios that could not be measured:\n\n";
            for failure in &self.failures {
                out += &format!("- {}: {}\n", failure.scenario, failure.error);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(show(12345.6, "runs/s"), "12,346 runs/s");
        assert_eq!(show(1.234, "ms"), "1.23 ms");
        assert_eq!(show(999.0, "req/s"), "999 req/s");
        assert_eq!(show(-1234.5, "ms"), "-1,234.50 ms");
        assert_eq!(show(0.5, "%"), "0.50 %");
        assert_eq!(show(0.834, "×"), "0.83 ×");
    }

    #[test]
    fn targets_are_judged() {
        let f = Figure::new("drain", "x", 19_999.0, "runs/s").target(Cmp::AtLeast, 20_000.0);
        assert_eq!(f.met, Some(false));
        let f = Figure::new("idle", "cpu", 0.99, "%").target(Cmp::Below, 1.0);
        assert_eq!(f.met, Some(true));
        let f = Figure::new("lag", "p99", 5.0, "ms").target(Cmp::AtMost, 5.0);
        assert_eq!(f.met, Some(true));
        assert_eq!(Figure::new("api", "p99", 1.0, "ms").met, None);
    }
}
