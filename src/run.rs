//! Run folders (DESIGN.md's contract): `<out>/<game>__<algo>__<seed>__<time>/` holding
//! config.toml, metrics.csv and, at the end, summary.json. Whole files are written to a
//! temporary name, synced and renamed, so a crash never leaves a half-written config or summary.

use crate::algo::health::{NetHealth, LAYERS};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The final record of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub game: String,
    pub algo: String,
    pub seed: u64,
    pub agents: usize,
    pub envs_per_agent: usize,
    pub frames: u64,
    pub updates: u64,
    pub episodes: u64,
    /// Mean unclipped game score over the last 100 finished games (null before any).
    pub mean_return_100: Option<f64>,
    pub consensus_distance: f64,
    /// Raw frames per second over the whole run.
    pub sps: f64,
    pub wall_seconds: f64,
    pub backend: String,
    /// SHA-256 over all agents' parameters (little-endian f32, agent order).
    pub params_sha256: String,
}

/// SHA-256 of the parameter arena as little-endian f32 bytes.
pub fn params_sha256(params: &[f32]) -> String {
    let mut h = Sha256::new();
    for chunk in params.chunks(1 << 14) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
        h.update(&bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to `path` atomically: temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder's entry is synced.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// UTC civil time "YYYYmmdd-HHMMSS" from Unix seconds (Howard Hinnant's days→civil algorithm).
pub fn utc_stamp(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

pub const METRICS_HEADER: &str = "frames,updates,episodes,mean_return_100,consensus_distance,value_loss,policy_loss,entropy,grad_norm,sps,wall_seconds";

/// One row of metrics.csv (losses are means over agents).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MetricsRow {
    pub frames: u64,
    pub updates: u64,
    pub episodes: u64,
    pub mean_return_100: Option<f64>,
    pub consensus_distance: f64,
    pub value_loss: f64,
    pub policy_loss: f64,
    pub entropy: f64,
    pub grad_norm: f64,
    pub sps: f64,
    pub wall_seconds: f64,
}

impl MetricsRow {
    fn csv(&self) -> String {
        let ret = self.mean_return_100.map(|r| format!("{r:.4}")).unwrap_or_default();
        format!(
            "{},{},{},{ret},{:.6e},{:.6},{:.6},{:.6},{:.6},{:.1},{:.3}",
            self.frames, self.updates, self.episodes, self.consensus_distance, self.value_loss, self.policy_loss,
            self.entropy, self.grad_norm, self.sps, self.wall_seconds
        )
    }
}

/// metrics_agents.csv: one row per agent per metrics.csv row (long format, so any agent count
/// fits one header).
pub const AGENT_METRICS_HEADER: &str = "frames,updates,agent,episodes,mean_return_100,value_loss,policy_loss,entropy,grad_norm";

/// The network-health log (`algo::health`): per agent and layer, units alive and active share.
pub const HEALTH_FILE: &str = "health.csv";
pub const HEALTH_HEADER: &str = "frames,updates,agent,conv1_units,conv1_active,conv2_units,conv2_active,conv3_units,conv3_active,fc_units,fc_active,logit_std";

/// One agent's part of a metrics row.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AgentMetricsRow {
    pub agent: usize,
    /// Games this agent's envs finished so far.
    pub episodes: u64,
    /// Mean unclipped score of this agent's last 100 games.
    pub mean_return_100: Option<f64>,
    pub value_loss: f64,
    pub policy_loss: f64,
    pub entropy: f64,
    pub grad_norm: f64,
}

/// A fresh run id (16 hex digits): a hash of the time in nanoseconds, the process id and a
/// per-process counter; unique for every practical purpose, and all it must do is tell runs
/// apart (`--resume` compares the folder's with its checkpoint's).
pub fn new_run_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = Sha256::new();
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The configuration recorded in a run folder's config.toml, checked against the checkpoint
/// found there: both must belong to the same run (`run_id`), or a checkpoint copied in from
/// another run would continue that run here, overwriting this one's files. Folders and
/// checkpoints written before run ids existed carry none; they resume as before when neither
/// has one.
pub fn folder_config_for(dir: &Path, checkpoint: &crate::checkpoint::Checkpoint) -> Result<crate::config::Config> {
    let path = dir.join("config.toml");
    let text = fs::read_to_string(&path).map_err(|e| {
        Error::Config(format!(
            "{}: {e}; a run folder keeps its config.toml from its creation (it says which run the checkpoint belongs to): restore it",
            path.display()
        ))
    })?;
    let folder = crate::config::Config::from_toml_str(&text, &path)?;
    let ours = folder.run_id.as_deref().unwrap_or("none (written before run ids)");
    let theirs = checkpoint.config.run_id.as_deref().unwrap_or("none (written before run ids)");
    if folder.run_id != checkpoint.config.run_id {
        return Err(Error::Config(format!(
            "the checkpoint in {} belongs to another run (its run id is {theirs}; this folder's config.toml says {ours}): it was copied in from another run folder; resume that run's own folder, or put this run's checkpoint back",
            dir.display()
        )));
    }
    Ok(folder)
}

/// Appends what a resume changed to `RUN/config_history.csv` (`frames,key,old,new`; the
/// header once): the run's configuration over time, since config.toml only holds the latest.
pub fn append_config_history(dir: &Path, frames: u64, changes: &[(String, String, String)]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let path = dir.join("config_history.csv");
    let mut f = open_csv(&path, "frames,key,old,new")?;
    let quote = |v: &str| if v.contains([',', '"']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v.to_string() };
    let text: String = changes.iter().map(|(k, old, new)| format!("{frames},{k},{},{}\n", quote(old), quote(new))).collect();
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(&path, e))
}

/// The lock file inside every run folder (see [`RunLock`]).
pub const LOCK_FILE: &str = "run.lock";

/// An exclusive lock on a run folder: `flock` on `RUN/run.lock`, which holds the holder's pid.
/// Held for the whole run (a [`RunDir`] owns one), so two processes never write one folder —
/// they would interleave metrics.csv rows and fight over the checkpoint's temporary file. The
/// kernel releases it when the process ends however it ends (`kill -9` included), so a stale
/// lock file is harmless: only a live holder blocks.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock or fails at once, naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        if !dir.is_dir() {
            let why = if dir.exists() { "a file, not a folder" } else { "no such folder" };
            return Err(Error::Config(format!("{}: not a run folder ({why}; give the folder a run was written to)", dir.display())));
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock(2) on a descriptor this File owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(&path, err));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process".to_string(),
            };
            return Err(Error::Config(format!(
                "run folder {} is in use by {holder} (it holds {}); wait for that run to end or stop it (kill -TERM saves a checkpoint), then retry",
                dir.display(),
                path.display()
            )));
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(pid.as_bytes())).and_then(|_| file.flush()).map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file })
    }
}

/// An open run folder.
pub struct RunDir {
    path: PathBuf,
    _lock: RunLock,
    metrics: File,
    agent_metrics: File,
    /// Per agent, how much of the network still fires (`algo::health`), at a sparse schedule.
    health: File,
    events: crate::tfevents::EventWriter,
}

/// Opens `path` for appending, creating it with `header` if it does not exist.
fn open_csv(path: &Path, header: &str) -> Result<File> {
    let existed = path.exists();
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    if !existed {
        writeln!(f, "{header}").map_err(|e| Error::io(path, e))?;
    }
    Ok(f)
}

/// Keeps the header and the rows at or below `frames` (the first column): after a resume from
/// a checkpoint, rows logged after it would otherwise appear twice.
fn truncate_csv_after(path: &Path, frames: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, l)| *i == 0 || l.split(',').next().and_then(|f| f.parse::<u64>().ok()).is_some_and(|f| f <= frames))
        .map(|(_, l)| l)
        .collect();
    if kept.len() != text.lines().count() {
        write_atomic(path, format!("{}\n", kept.join("\n")).as_bytes())?;
    }
    Ok(())
}

impl RunDir {
    /// Creates `<out>/<game>__<algo>__<seed>__<time>/` (a `-N` suffix if that exists already),
    /// writes config.toml and starts metrics.csv. Fails before any training if `out` is not
    /// writable.
    pub fn create(out: &Path, game: &str, algo: &str, seed: u64, config_toml: &str) -> Result<RunDir> {
        fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let base = format!("{game}__{algo}__{seed}__{}", utc_stamp(now));
        let mut path = out.join(&base);
        let mut n = 1;
        loop {
            match fs::create_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    n += 1;
                    path = out.join(format!("{base}-{n}"));
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        let lock = RunLock::acquire(&path)?;
        write_atomic(&path.join("config.toml"), config_toml.as_bytes())?;
        let metrics_path = path.join("metrics.csv");
        let mut metrics = OpenOptions::new().create_new(true).write(true).open(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
        writeln!(metrics, "{METRICS_HEADER}").map_err(|e| Error::io(&metrics_path, e))?;
        let agent_metrics = open_csv(&path.join("metrics_agents.csv"), AGENT_METRICS_HEADER)?;
        let health = open_csv(&path.join(HEALTH_FILE), HEALTH_HEADER)?;
        let events = crate::tfevents::EventWriter::create(&path)?;
        Ok(RunDir { path, _lock: lock, metrics, agent_metrics, health, events })
    }

    /// Reopens an existing run folder to continue it from a checkpoint taken at `frames`:
    /// rewrites config.toml (the budget may have changed), drops metric rows logged after the
    /// checkpoint, and starts a new TensorBoard event file.
    pub fn resume(path: &Path, frames: u64, config_toml: &str) -> Result<RunDir> {
        let lock = RunLock::acquire(path)?;
        Self::resume_locked(path, lock, frames, config_toml)
    }

    /// [`RunDir::resume`] with the folder's lock already taken (before its checkpoint was read).
    pub fn resume_locked(path: &Path, lock: RunLock, frames: u64, config_toml: &str) -> Result<RunDir> {
        write_atomic(&path.join("config.toml"), config_toml.as_bytes())?;
        let metrics_path = path.join("metrics.csv");
        let agents_path = path.join("metrics_agents.csv");
        truncate_csv_after(&metrics_path, frames)?;
        truncate_csv_after(&agents_path, frames)?;
        let health_path = path.join(HEALTH_FILE);
        truncate_csv_after(&health_path, frames)?;
        let metrics = open_csv(&metrics_path, METRICS_HEADER)?;
        let agent_metrics = open_csv(&agents_path, AGENT_METRICS_HEADER)?;
        let health = open_csv(&health_path, HEALTH_HEADER)?;
        let events = crate::tfevents::EventWriter::create(path)?;
        Ok(RunDir { path: path.to_path_buf(), _lock: lock, metrics, agent_metrics, health, events })
    }

    /// Where this run's checkpoint lives.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.path.join(crate::checkpoint::CHECKPOINT_FILE)
    }

    /// health.csv rows, one per agent (`first_agent` numbers the first), and their mean per
    /// layer as TensorBoard scalars.
    pub fn append_health(&mut self, frames: u64, updates: u64, first_agent: usize, agents: &[NetHealth]) -> Result<()> {
        let path = self.path.join(HEALTH_FILE);
        let mut text = String::new();
        for (i, h) in agents.iter().enumerate() {
            text.push_str(&format!("{frames},{updates},{}", first_agent + i));
            for l in &h.layers {
                text.push_str(&format!(",{:.4},{:.4}", l.units_alive, l.active));
            }
            text.push_str(&format!(",{:.6e}\n", h.logit_std));
        }
        self.health.write_all(text.as_bytes()).and_then(|_| self.health.flush()).map_err(|e| Error::io(&path, e))?;
        let n = agents.len().max(1) as f64;
        let mut scalars: Vec<(String, f64)> = Vec::new();
        for (l, name) in LAYERS.iter().enumerate() {
            scalars.push((format!("health/{name}_units_alive"), agents.iter().map(|h| h.layers[l].units_alive).sum::<f64>() / n));
            scalars.push((format!("health/{name}_active"), agents.iter().map(|h| h.layers[l].active).sum::<f64>() / n));
        }
        scalars.push(("health/logit_std".into(), agents.iter().map(|h| h.logit_std).sum::<f64>() / n));
        self.events.scalars(frames, &scalars)
    }

    /// metrics_agents.csv rows and one TensorBoard event with the mean and per-agent scalars.
    pub fn append_agent_metrics(&mut self, row: &MetricsRow, agents: &[AgentMetricsRow]) -> Result<()> {
        let path = self.path.join("metrics_agents.csv");
        let mut text = String::new();
        for a in agents {
            let ret = a.mean_return_100.map(|r| format!("{r:.4}")).unwrap_or_default();
            text.push_str(&format!(
                "{},{},{},{},{ret},{:.6},{:.6},{:.6},{:.6}\n",
                row.frames, row.updates, a.agent, a.episodes, a.value_loss, a.policy_loss, a.entropy, a.grad_norm
            ));
        }
        self.agent_metrics.write_all(text.as_bytes()).and_then(|_| self.agent_metrics.flush()).map_err(|e| Error::io(&path, e))?;
        let mut scalars: Vec<(String, f64)> = vec![
            ("charts/episodic_return".into(), row.mean_return_100.unwrap_or(f64::NAN)),
            ("charts/SPS".into(), row.sps),
            ("charts/frames".into(), row.frames as f64),
            ("charts/episodes".into(), row.episodes as f64),
            ("losses/value_loss".into(), row.value_loss),
            ("losses/policy_loss".into(), row.policy_loss),
            ("losses/entropy".into(), row.entropy),
            ("losses/grad_norm".into(), row.grad_norm),
            ("gossip/consensus_distance".into(), row.consensus_distance),
        ];
        for a in agents {
            let r = a.agent;
            scalars.push((format!("agent{r}/episodic_return"), a.mean_return_100.unwrap_or(f64::NAN)));
            scalars.push((format!("agent{r}/value_loss"), a.value_loss));
            scalars.push((format!("agent{r}/policy_loss"), a.policy_loss));
            scalars.push((format!("agent{r}/entropy"), a.entropy));
            scalars.push((format!("agent{r}/grad_norm"), a.grad_norm));
        }
        self.events.scalars(row.frames, &scalars)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes a run folder this process just created when the run could not even start (no
    /// environment, no backend): it would hold nothing but a config, and a folder of a run that
    /// never happened only confuses. Best effort; never used on a resumed run.
    pub fn discard(self) {
        let RunDir { path, .. } = self;
        let _ = fs::remove_dir_all(&path);
    }

    pub fn append_metrics(&mut self, row: &MetricsRow) -> Result<()> {
        writeln!(self.metrics, "{}", row.csv())
            .and_then(|_| self.metrics.flush())
            .map_err(|e| Error::io(self.path.join("metrics.csv"), e))
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        let json = serde_json::to_string_pretty(summary).expect("summary serialises");
        write_atomic(&self.path.join("summary.json"), json.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_civil_time() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400 + 3661), "20000229-010101");
        assert_eq!(utc_stamp(1_795_000_000), "20261118-110640");
    }

    #[test]
    fn sha_is_of_little_endian_floats() {
        // Python: hashlib.sha256(struct.pack('<ff', 1.0, -2.5)).hexdigest()
        assert_eq!(params_sha256(&[1.0, -2.5]), "48943f7a0ea247f8e3c9386d0c5822fe181d323a9289980426638cc4e72a43e1");
    }
}
