//! Failure behaviour under hostile or unlucky use (README "Failure behaviour"): stop signals
//! save, run folders are locked and owned, resumes refuse foreign checkpoints and edited
//! configurations, sizes are checked before allocating, closed pipes stop quietly, and
//! nothing panics. Tiny `catch` runs throughout.

use gala_gpu::algo::{NoProgress, Trainer};
use gala_gpu::backend::BackendKind;
use gala_gpu::checkpoint::Checkpoint;
use gala_gpu::config::Config;
use gala_gpu::run::RunDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gala-gpu");

/// 2 agents × 3 envs × 5 steps of catch: 30 frames per update.
const TINY: &[&str] = &["--game", "catch", "--agents", "2", "--envs-per-agent", "3", "--n-steps", "5", "--backend", "cpu", "--threads", "1"];

fn gala(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run gala-gpu")
}

fn train_args<'a>(extra: &[&'a str], out: &'a Path) -> Vec<&'a str> {
    let mut v: Vec<&str> = vec!["train"];
    v.extend_from_slice(TINY);
    v.extend_from_slice(extra);
    v.extend_from_slice(&["-q", "--out", out.to_str().unwrap()]);
    v
}

/// Fails with one stderr line containing every needle, and no panic.
fn fails_with(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "should fail: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line expected: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` missing from {stderr}");
    }
    stderr
}

fn run_folders(out: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(out) {
        Ok(d) => d.map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect(),
        Err(_) => Vec::new(),
    }
}

/// A tiny run to completion; returns its folder.
fn finished_run(out: &Path, frames: u64) -> PathBuf {
    let f = frames.to_string();
    let o = gala(&train_args(&["--frames", &f], out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

/// Starts a long tiny run (metrics every update) and waits until it has logged `rows` metrics
/// rows: training is then under way. Returns the child and its folder.
fn start_long_run(out: &Path, extra: &[&str], rows: usize) -> (Child, PathBuf) {
    let mut args = train_args(&["--frames", "100000000", "--metrics-every", "1"], out);
    args.extend_from_slice(extra);
    let child = Command::new(BIN).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    loop {
        if let Some(run) = run_folders(out).into_iter().next() {
            let n = std::fs::read_to_string(run.join("metrics.csv")).map(|t| t.lines().count()).unwrap_or(0);
            if n > rows {
                return (child, run);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

// ---------------------------------------------------------------------------------------------
// Signals (items 1 and 2)

/// SIGTERM and SIGHUP stop a run as the first Ctrl-C does — with the default `--save-every 0`
/// too: the update finishes, the checkpoint is saved, the resume command is printed, and the
/// exit code is 128 + the signal. The checkpoint resumes.
#[test]
fn sigterm_and_sighup_save_a_checkpoint_and_exit_128_plus_the_signal() {
    for (sig, code, name) in [(libc::SIGTERM, 143, "SIGTERM"), (libc::SIGHUP, 129, "SIGHUP")] {
        let dir = tempfile::tempdir().unwrap();
        let (child, run) = start_long_run(dir.path(), &[], 2);
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        assert!(stderr.contains(name) && stderr.contains("checkpoint saved") && stderr.contains(&format!("--resume {}", run.display())), "{stderr}");
        let ck = Checkpoint::load(&run).unwrap();
        assert!(ck.frames >= 60 && ck.frames % 30 == 0, "{}", ck.frames);
        let total = (ck.frames + 30).to_string();
        let o = gala(&["train", "--resume", run.to_str().unwrap(), "--frames", &total, "-q"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// The same SIGINT delivered twice within a moment (to the process and to its group, as
/// `timeout -s INT … | grep` does) is one request: the run still saves, it does not abort.
#[test]
fn a_signal_delivered_twice_at_once_is_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let (child, run) = start_long_run(dir.path(), &[], 1);
    signal(&child, libc::SIGINT);
    // Long enough for the first to be delivered on a busy machine (two signals sent closer
    // together may merge into one pending signal), well inside the double-delivery window.
    std::thread::sleep(Duration::from_millis(150));
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("checkpoint saved") && !stderr.contains("aborted"), "{stderr}");
    Checkpoint::load(&run).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Run folders (items 3, 4, 5, 6)

/// While a run trains, a second process cannot resume its folder: refused at once naming the
/// holder's pid, and the folder's files are untouched by it.
#[test]
fn a_run_folder_is_locked_while_its_run_trains() {
    let dir = tempfile::tempdir().unwrap();
    let (child, run) = start_long_run(dir.path(), &["--save-every", "30"], 1);
    let started = Instant::now();
    while !run.join("checkpoint.safetensors").exists() {
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    // (A small budget: were the folder not locked, this would finish quickly, not hang.)
    let o = gala(&["train", "--resume", run.to_str().unwrap(), "--frames", "60", "-q"]);
    fails_with(&o, &["in use by process", &pid]);
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    // Once the holder is gone (the kernel released its lock), the folder resumes.
    let ck = Checkpoint::load(&run).unwrap();
    let o = gala(&["train", "--resume", run.to_str().unwrap(), "--frames", &(ck.frames + 30).to_string(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A checkpoint copied in from another run is refused (the run ids differ), and this run's
/// files are left as they were.
#[test]
fn a_foreign_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = finished_run(&dir.path().join("a"), 60);
    let b = finished_run(&dir.path().join("b"), 90);
    let metrics = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    let config = std::fs::read_to_string(a.join("config.toml")).unwrap();
    std::fs::copy(b.join("checkpoint.safetensors"), a.join("checkpoint.safetensors")).unwrap();
    let o = gala(&["train", "--resume", a.to_str().unwrap(), "--frames", "120", "-q"]);
    fails_with(&o, &["belongs to another run", "run id"]);
    assert_eq!(std::fs::read_to_string(a.join("metrics.csv")).unwrap(), metrics);
    assert_eq!(std::fs::read_to_string(a.join("config.toml")).unwrap(), config);
}

/// Run folders and checkpoints written before run ids existed (neither carries one) resume.
#[test]
fn a_run_without_run_ids_still_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        game: "catch".into(), agents: 2, envs_per_agent: 3, n_steps: 5, frames: 60, backend: BackendKind::Cpu, threads: 1,
        ..Config::default()
    };
    assert!(config.run_id.is_none());
    let mut t = Trainer::new(&config).unwrap();
    let mut run = RunDir::create(dir.path(), "catch", "gala", 1, &config.to_toml()).unwrap();
    t.train(Some(&mut run), &mut NoProgress).unwrap();
    let path = run.path().to_path_buf();
    drop(run);
    let o = gala(&["train", "--resume", path.to_str().unwrap(), "--frames", "90", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// An edit of config.toml that a resume cannot honour is refused, naming the key and what may
/// change; an edit of a resumable setting (here lr) is taken and recorded in the history.
#[test]
fn edits_of_config_toml_are_refused_or_taken_never_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished_run(dir.path(), 60);
    let path = run.join("config.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, original.replace("agents = 2", "agents = 3").replace("seed = 1", "seed = 4")).unwrap();
    let o = gala(&["train", "--resume", run.to_str().unwrap(), "--frames", "90", "-q"]);
    let e = fails_with(&o, &["config.toml was edited", "agents (2 in the checkpoint, 3 in config.toml)", "seed", "--lr"]);
    assert!(!e.contains("envs_per_agent ("), "{e}");
    assert_eq!(Checkpoint::load(&run).unwrap().frames, 60, "nothing trained");

    let lr = original.lines().find(|l| l.starts_with("lr = ")).unwrap();
    std::fs::write(&path, original.replace(lr, "lr = 0.0005")).unwrap();
    let o = gala(&["train", "--resume", run.to_str().unwrap(), "--frames", "90", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = Checkpoint::load(&run).unwrap();
    assert_eq!((ck.frames, ck.config.lr), (90, 0.0005));
    let history = std::fs::read_to_string(run.join("config_history.csv")).unwrap();
    assert!(history.starts_with("frames,key,old,new\n") && history.contains("60,lr,0.0007,0.0005") && history.contains("60,frames,60,90"), "{history}");
}

/// `--frames 0` (and `frames = 0` in a file) is refused — on a new run and on a resume — rather
/// than meaning "the default budget".
#[test]
fn frames_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    fails_with(&gala(&train_args(&["--frames", "0"], &out)), &["--frames", "0 is not a frame budget"]);
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "frames = 0\n").unwrap();
    fails_with(&gala(&train_args(&["--config", cfg.to_str().unwrap()], &out)), &["c.toml:1", "0 is not a frame budget"]);
    let run = finished_run(&out, 30);
    fails_with(&gala(&["train", "--resume", run.to_str().unwrap(), "--frames", "0"]), &["0 is not a frame budget"]);
    assert_eq!(run_folders(&out).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// No panics, no silent acceptance (items 7, 8, 11, 21)

#[test]
fn out_of_range_values_are_one_line_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let big = "9223372036854775808"; // i64::MAX + 1
    for flag in ["--seed", "--frames", "--save-every", "--sync-freq", "--metrics-every"] {
        let key = flag.trim_start_matches("--").replace('-', "_");
        fails_with(&gala(&train_args(&[flag, big], &out)), &[&format!("`{key}`"), "too large"]);
    }
    fails_with(&gala(&train_args(&["--gossip-timeout", "1e30", "--agent-threads"], &out)), &["`gossip_timeout`", "at most"]);
    fails_with(&gala(&["train", "--game", "catch", "--threads", "100000", "--out", out.to_str().unwrap()]), &["`threads`", "100000"]);
    fails_with(&gala(&["eval", "nowhere", "--threads", "100000"]), &["`threads`"]);
    fails_with(&gala(&["bench", "learner", "--threads", "100000"]), &["`threads`"]);
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"r\xff"));
        let o = Command::new(BIN).arg("train").args(TINY).arg("--out").arg(&bad).output().unwrap();
        fails_with(&o, &["`out`", "UTF-8"]);
    }
    assert!(run_folders(&out).is_empty(), "no run folder for a refused start");
}

/// Settings a run would ignore are refused instead of being stored in config.toml.
#[test]
fn contradictory_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let o = out.to_str().unwrap();
    fails_with(&gala(&["train", "--game", "catch", "--rom", "pong.bin", "--out", o]), &["`rom`", "catch"]);
    fails_with(&gala(&["train", "--game", "catch", "--preset", "machado", "--out", o]), &["`preset`", "catch"]);
    fails_with(&gala(&["train", "--game", "catch", "--algo", "a2c", "--topology", "exp", "--peers", "7", "--out", o]), &["`topology`/`peers`", "a2c"]);
    fails_with(&gala(&["train", "--game", "catch", "--agents", "1", "--peers", "5", "--out", o]), &["`topology`/`peers`", "single agent"]);
    assert!(run_folders(&out).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Output to closed pipes and full devices (item 9)

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) fills the array; the read end is closed at once, the write end handed over.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

#[test]
fn a_closed_stdout_stops_quietly_and_a_full_one_is_one_line() {
    for args in [vec!["info"], vec!["roms", "list"]] {
        let o = Command::new(BIN).args(&args).stdout(closed_pipe()).stderr(Stdio::piped()).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{args:?}: {stderr}");
    }
    // `train … | true`: the run completes, its folder is whole, the exit is clean.
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN).args(train_args(&["--frames", "60"], dir.path())).stdout(closed_pipe()).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let run = run_folders(dir.path()).pop().unwrap();
    assert!(run.join("summary.json").exists());
    // `> /dev/full`: one error line.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = Command::new(BIN).arg("info").stdout(full).stderr(Stdio::piped()).output().unwrap();
    let e = fails_with(&o, &["stdout", "No space left"]);
    assert_eq!(o.status.code(), Some(1), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Sizes before allocating (items 10 and 12)

/// Shapes far beyond any machine are refused with their size before anything is allocated,
/// and leave no run folder.
#[test]
fn absurd_shapes_are_refused_with_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    for flags in [["--agents", "1000000"], ["--envs-per-agent", "100000000"], ["--n-steps", "1000000000"]] {
        let o = gala(&["train", "--game", "catch", flags[0], flags[1], "--backend", "cpu", "--out", out.to_str().unwrap()]);
        fails_with(&o, &["needs at least", "GiB of host memory", "GiB available"]);
    }
    fails_with(&gala(&["bench", "learner", "--agents", "1000000", "--backend", "cpu"]), &["needs at least", "GiB"]);
    assert!(run_folders(&out).is_empty(), "a refused run left a folder");
}

/// `gala_engine_create` refuses such shapes with GALA_ERR_CONFIG and the size, instead of
/// aborting its host process.
#[test]
fn the_c_abi_refuses_absurd_shapes_with_their_size() {
    use gala_gpu::capi::*;
    use std::ffi::{CStr, CString};
    for (toml, actions) in [
        ("envs_per_agent = 4294967295\nbackend = \"cpu\"\n", 6u32),
        ("agents = 1000000\nbackend = \"cpu\"\n", 6),
        ("backend = \"cpu\"\n", 100_000_000),
    ] {
        let text = CString::new(toml).unwrap();
        let mut engine: *mut GalaEngine = std::ptr::null_mut();
        // SAFETY: a NUL-terminated string and a writable out-pointer.
        let status = unsafe { gala_engine_create(text.as_ptr(), actions, &mut engine) };
        // SAFETY: gala_last_error returns a valid C string owned by the library.
        let message = unsafe { CStr::from_ptr(gala_last_error()) }.to_string_lossy().to_string();
        assert_eq!(status, GalaStatus::GalaErrConfig, "{toml:?}: {message}");
        assert!(engine.is_null());
        assert!(message.contains("needs at least") && message.contains("GiB"), "{message}");
    }
}
