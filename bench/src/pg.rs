//! `--store postgres`: the burst on herald's PostgreSQL store, on a
//! throwaway cluster on this host (`eval "$(bash .ci/postgres.sh start)"`,
//! which exports `HERALD_TEST_POSTGRES` and `HERALD_TEST_POSTGRES_DIR`).
//! Each run gets a new database in that cluster; herald reads its URL from
//! a 0600 file in the scratch directory (`url = { file = ... }`), and the
//! password is never printed or put on a command line.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The cluster the runs use.
pub struct Cluster {
    user: String,
    password: String,
    host: String,
    port: String,
    /// The postmaster's pid: its and its children's CPU is the server's.
    postmaster: u32,
}

impl Cluster {
    pub fn from_env() -> anyhow::Result<Cluster> {
        let url = std::env::var("HERALD_TEST_POSTGRES")
            .context("--store postgres needs HERALD_TEST_POSTGRES: eval \"$(bash .ci/postgres.sh start)\"")?;
        let dir = std::env::var("HERALD_TEST_POSTGRES_DIR").context("HERALD_TEST_POSTGRES_DIR")?;
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .context("HERALD_TEST_POSTGRES is not a postgres:// URL")?;
        let (auth, hostpart) = rest.split_once('@').context("HERALD_TEST_POSTGRES has no user")?;
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let hostport = hostpart.split('/').next().unwrap_or(hostpart);
        let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
        if !(host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())) {
            bail!("the PostgreSQL cluster must be on this host (127.0.0.1), not {host}");
        }
        let pid_file = Path::new(&dir).join("data/postmaster.pid");
        let postmaster = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("the postmaster's pid")?;
        Ok(Cluster { user: user.into(), password: password.into(), host: host.into(), port: port.into(), postmaster })
    }

    /// `psql` connected to the cluster's `postgres` database (the password
    /// in its environment, never on its command line).
    fn psql(&self) -> Command {
        let mut cmd = Command::new("psql");
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", &self.port)
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", "postgres");
        cmd
    }

    /// One value a query answers (`psql -At`).
    pub fn query_value(&self, sql: &str) -> anyhow::Result<String> {
        let out = self.psql().args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().context("running psql")?;
        if !out.status.success() {
            bail!("psql: {}: {}", sql, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Transactions committed in database `name` so far
    /// (`pg_stat_database.xact_commit`; the server publishes a
    /// connection's counts about once a second, so read it over spans of
    /// several seconds).
    pub fn xact_commit(&self, name: &str) -> anyhow::Result<u64> {
        let sql = format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'");
        self.query_value(&sql)?.parse().with_context(|| format!("xact_commit of {name}"))
    }

    /// `pg_database_size(name)`, in bytes.
    pub fn database_size(&self, name: &str) -> anyhow::Result<u64> {
        self.query_value(&format!("SELECT pg_database_size('{name}')"))?
            .parse()
            .with_context(|| format!("the size of {name}"))
    }

    /// A new, empty database; the file (0600) holding its URL.
    pub fn new_database(&self, name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        let out = self
            .psql()
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {name}"))
            .arg("-c")
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .context("running psql (PostgreSQL's client)")?;
        if !out.status.success() {
            bail!("psql could not create database {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join("database-url");
        let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&path)?;
        writeln!(file, "postgres://{}:{}@{}:{}/{name}", self.user, self.password, self.host, self.port)?;
        Ok(path)
    }

    /// CPU time (user + system) of the postmaster and its children now, by pid.
    pub fn cpu_by_pid(&self) -> std::collections::HashMap<u32, f64> {
        let mut out = std::collections::HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return out };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some(close) = stat.rfind(')') else { continue };
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let ppid = fields.get(1).and_then(|p| p.parse::<u32>().ok());
            if (pid == self.postmaster || ppid == Some(self.postmaster))
                && let Some(cpu) = crate::procs::cpu_seconds(pid)
            {
                out.insert(pid, cpu);
            }
        }
        out
    }
}

/// CPU the server spent between two snapshots (a process new since the
/// first counts from zero; one gone since is missed, so keep the
/// connections open until the second).
pub fn cpu_between(before: &std::collections::HashMap<u32, f64>, after: &std::collections::HashMap<u32, f64>) -> f64 {
    after.iter().map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0)).sum()
}
