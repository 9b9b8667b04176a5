//! Run folders (DESIGN.md's contract): `<out>/<game>__<algo>__<seed>__<time>/` holding
//! config.toml, metrics.csv and, at the end, summary.json. Whole files are written to a
//! temporary name, synced and renamed, so a crash never leaves a half-written config or summary.

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
        fs::rename(&tmp, path)
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

/// An open run folder.
pub struct RunDir {
    path: PathBuf,
    metrics: File,
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
        write_atomic(&path.join("config.toml"), config_toml.as_bytes())?;
        let metrics_path = path.join("metrics.csv");
        let mut metrics = OpenOptions::new().create_new(true).write(true).open(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
        writeln!(metrics, "{METRICS_HEADER}").map_err(|e| Error::io(&metrics_path, e))?;
        Ok(RunDir { path, metrics })
    }

    pub fn path(&self) -> &Path {
        &self.path
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
