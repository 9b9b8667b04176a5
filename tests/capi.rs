//! The engine API and its C ABI: the header is current, the Rust example trains exactly as the
//! trainer does, the C and Python examples learn catch through libgala_gpu.so, and every
//! boundary error comes back as its status code and message.

#[path = "../examples/engine_catch.rs"]
mod example;

use gala_gpu::algo::trainer::{NoProgress, Trainer};
use gala_gpu::capi::*;
use gala_gpu::config::Config;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn header_is_up_to_date() {
    let root = Path::new(ROOT);
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi.rs"))
        .generate()
        .expect("cbindgen generates the header from src/capi.rs")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = root.join("include/gala_gpu.h");
    if std::env::var_os("GALA_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("include/gala_gpu.h is writable");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/gala_gpu.h is stale (src/capi.rs changed); regenerate it with \
         `GALA_UPDATE_HEADER=1 cargo test --release --test capi header_is_up_to_date` and commit it"
    );
}

/// The example's own loop over `Engine` and `gala-gpu train`'s trainer end with the same
/// parameters for the same seed, on the gossiping (ring) and the a2c layout.
#[test]
fn example_loop_matches_the_trainer() {
    for algo in [gala_gpu::config::Algo::Gala, gala_gpu::config::Algo::A2c] {
        let updates = 4u64;
        let config = Config { agents: 2, envs_per_agent: 2, n_steps: 5, threads: 1, algo, ..example::example_config() };
        let frames = updates * (config.agents * config.envs_per_agent * config.n_steps) as u64;
        let mut trainer = Trainer::new(&Config { frames, ..config.clone() }).unwrap();
        let summary = trainer.train(None, &mut NoProgress).unwrap();
        assert_eq!(summary.updates, updates);
        let (mut engine, _) = example::train(&config, updates).unwrap();
        assert_eq!(engine.round(), updates);
        assert_eq!(engine.params_sha256().unwrap(), summary.params_sha256, "{algo:?}: the Engine loop diverged from the trainer");
        let mut fresh = Trainer::new(&Config { frames, ..config.clone() }).unwrap();
        assert_ne!(fresh.params_sha256().unwrap(), summary.params_sha256, "training changed nothing");
    }
}

/// The directory holding libgala_gpu.so: the test binary lives in target/<profile>/deps, where
/// cargo also writes the cdylib (and copies it one level up).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        if dir.join("libgala_gpu.so").exists() {
            return dir.to_path_buf();
        }
    }
    panic!("libgala_gpu.so not found next to {}; is `crate-type` missing cdylib?", exe.display());
}

fn run_logged(cmd: &mut Command, what: &str) {
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{what} ({:.1} s):\n{text}", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    assert!(text.contains("learned: mean return"), "{what} did not report learning:\n{text}");
}

/// Budget and threshold of the example runs in tests: 24k agent steps (300 updates of 4 agents ×
/// 4 envs × 5 steps); runs of this setup pass 0.8 by then, so 0.5 leaves a wide margin.
const FRAMES: &str = "24000";
const THRESHOLD: &str = "0.5";

#[test]
fn c_example_learns_catch() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("catch");
    let lib = lib_dir();
    let root = Path::new(ROOT);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(root.join("examples/c/catch.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lgala_gpu")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("the C compiler `{cc}` could not be started: {e}"));
    assert!(status.success(), "examples/c/catch.c did not compile against include/gala_gpu.h");
    run_logged(Command::new(&exe).args([FRAMES, THRESHOLD]), "examples/c/catch.c");
}

#[test]
fn python_example_learns_catch() {
    let lib = lib_dir().join("libgala_gpu.so");
    run_logged(
        Command::new("python3")
            .arg(Path::new(ROOT).join("examples/python/catch.py"))
            .arg("--lib")
            .arg(lib)
            .args(["--frames", FRAMES, "--threshold", THRESHOLD]),
        "examples/python/catch.py",
    );
}

// ---- boundary errors, through the exported functions themselves ----

fn last_error() -> String {
    // SAFETY: gala_last_error returns a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(gala_last_error()) }.to_string_lossy().into_owned()
}

fn small_engine() -> *mut GalaEngine {
    let config = CString::new("agents = 2\nenvs_per_agent = 1\nn_steps = 2\nbackend = \"cpu\"\nthreads = 1\n").unwrap();
    let mut engine = std::ptr::null_mut();
    // SAFETY: a valid C string and a valid out pointer.
    let status = unsafe { gala_engine_create(config.as_ptr(), 3, &mut engine) };
    assert_eq!(status, GalaStatus::GalaOk, "{}", last_error());
    assert!(!engine.is_null());
    engine
}

const OBS: usize = 4 * 84 * 84;

/// act on `engine` with buffers of the given lengths.
fn act(engine: *mut GalaEngine, obs: Option<&[u8]>, actions_len: usize) -> GalaStatus {
    let mut actions = vec![0u32; actions_len.max(1)];
    let (ptr, len) = obs.map_or((std::ptr::null(), 0), |o| (o.as_ptr(), o.len()));
    // SAFETY: every pointer is valid for the length passed with it.
    unsafe { gala_engine_act(engine, ptr, len, 0, 0, actions.as_mut_ptr(), actions_len, std::ptr::null_mut(), 0, std::ptr::null_mut(), 0) }
}

#[test]
fn create_reports_config_errors() {
    let mut engine = std::ptr::dangling_mut::<GalaEngine>();
    let bad = CString::new("agents = 2\nlearning_rate = 0.1\n").unwrap();
    // SAFETY: valid C string and out pointer.
    assert_eq!(unsafe { gala_engine_create(bad.as_ptr(), 3, &mut engine) }, GalaStatus::GalaErrConfig);
    assert!(engine.is_null(), "a failed create leaves *out NULL");
    let e = last_error();
    assert!(e.starts_with("gala_engine_create:") && e.contains("learning_rate"), "{e}");
    // SAFETY: NULL config means defaults; `out` is valid.
    assert_eq!(unsafe { gala_engine_create(std::ptr::null(), 0, &mut engine) }, GalaStatus::GalaErrConfig);
    assert!(last_error().contains("at least 1 action"), "{}", last_error());
    // SAFETY: a NULL out pointer is detected before any write.
    assert_eq!(unsafe { gala_engine_create(bad.as_ptr(), 3, std::ptr::null_mut()) }, GalaStatus::GalaErrNullPointer);
    assert!(last_error().contains("`out` is NULL"), "{}", last_error());
}

#[test]
fn wrong_sizes_and_null_pointers_leave_the_engine_usable() {
    let engine = small_engine();
    let obs = vec![0u8; 2 * OBS];
    assert_eq!(act(engine, Some(&obs), 2), GalaStatus::GalaOk);
    assert_eq!(last_error(), "", "a success clears the message");
    assert_eq!(act(engine, None, 2), GalaStatus::GalaErrNullPointer);
    assert!(last_error().contains("`obs` is NULL"), "{}", last_error());
    assert_eq!(act(engine, Some(&obs[..OBS]), 2), GalaStatus::GalaErrSize);
    let e = last_error();
    assert!(e.contains("`obs` holds 28224 elements, expected 56448"), "{e}");
    assert_eq!(act(engine, Some(&obs), 3), GalaStatus::GalaErrSize);
    assert!(last_error().contains("`actions` holds 3 elements, expected 2"), "{}", last_error());
    let mut sha = [0 as std::ffi::c_char; 64];
    // SAFETY: `sha` has the 64 bytes passed.
    assert_eq!(unsafe { gala_engine_params_sha256(engine, sha.as_mut_ptr(), sha.len()) }, GalaStatus::GalaErrSize);
    // Learning with a wrong segment size changes nothing and poisons nothing.
    let (acts, rewards) = (vec![0u32; 4], vec![0f32; 4]);
    // SAFETY: each pointer is valid for its length; obs is deliberately too short.
    let status = unsafe {
        gala_engine_learn(engine, obs.as_ptr(), obs.len(), acts.as_ptr(), 4, rewards.as_ptr(), 4, rewards.as_ptr(), 4, rewards.as_ptr(), 2, std::ptr::null(), 0, std::ptr::null_mut(), 0)
    };
    assert_eq!(status, GalaStatus::GalaErrSize);
    assert!(last_error().contains("`obs` holds 56448 elements, expected 112896"), "{}", last_error());
    assert_eq!(act(engine, Some(&obs), 2), GalaStatus::GalaOk, "the engine stays usable after argument errors");
    assert_eq!(gala_engine_free(engine), GalaStatus::GalaOk);
}

#[test]
fn a_failure_inside_the_engine_poisons_the_handle() {
    let engine = small_engine();
    let s = 2 * 2;
    let obs = vec![7u8; s * OBS];
    let acts = vec![1u32; s];
    let mut rewards = vec![1f32; s];
    rewards[s - 1] = f32::NAN;
    let dones = vec![0f32; s];
    let boot = [0f32; 2];
    let mut stats = vec![GalaLearnStats::default(); 2];
    // SAFETY: each pointer is valid for the length passed with it.
    let status = unsafe {
        gala_engine_learn(engine, obs.as_ptr(), obs.len(), acts.as_ptr(), s, rewards.as_ptr(), s, dones.as_ptr(), s, boot.as_ptr(), 2, std::ptr::null(), 0, stats.as_mut_ptr(), 2)
    };
    assert_eq!(status, GalaStatus::GalaErrNonFinite, "{}", last_error());
    let first = last_error();
    assert!(first.contains("non-finite") && first.contains("agent 1"), "{first}");
    assert_eq!(act(engine, Some(&obs[..2 * OBS]), 2), GalaStatus::GalaErrPoisoned);
    let e = last_error();
    assert!(e.contains("poisoned") && e.contains("non-finite"), "{e}");
    assert_eq!(gala_engine_gossip(engine), GalaStatus::GalaErrPoisoned);
    assert_eq!(gala_engine_free(engine), GalaStatus::GalaOk, "a poisoned engine can be freed");
}

#[test]
fn freed_and_made_up_handles_are_detected() {
    let engine = small_engine();
    assert_eq!(gala_engine_free(engine), GalaStatus::GalaOk);
    assert_eq!(gala_engine_gossip(engine), GalaStatus::GalaErrInvalidHandle);
    assert!(last_error().contains("not a live engine"), "{}", last_error());
    assert_eq!(gala_engine_free(engine), GalaStatus::GalaErrInvalidHandle, "double free is detected");
    assert_eq!(gala_engine_gossip(0x1234usize as *mut GalaEngine), GalaStatus::GalaErrInvalidHandle);
    assert_eq!(gala_engine_gossip(std::ptr::null_mut()), GalaStatus::GalaErrNullPointer);
    assert_eq!(gala_engine_free(std::ptr::null_mut()), GalaStatus::GalaOk, "free(NULL) is a no-op");
    // A new engine never gets the freed handle back.
    let again = small_engine();
    assert_ne!(again, engine);
    assert_eq!(gala_engine_free(again), GalaStatus::GalaOk);
}

#[test]
fn params_export_and_import_through_the_c_abi() {
    let (a, b) = (small_engine(), small_engine());
    let mut info = GalaEngineInfo::default();
    // SAFETY: `info` is a valid GalaEngineInfo.
    assert_eq!(unsafe { gala_engine_info(a, &mut info) }, GalaStatus::GalaOk);
    assert_eq!((info.agents, info.envs_per_agent, info.n_steps, info.actions, info.obs_bytes), (2, 1, 2, 3, OBS));
    let n = info.agents * info.param_count;
    let mut params = vec![0f32; n];
    // SAFETY: buffers valid for the lengths passed.
    unsafe {
        assert_eq!(gala_engine_read_params(a, params.as_mut_ptr(), n), GalaStatus::GalaOk);
        params[3] = 0.5;
        assert_eq!(gala_engine_write_params(a, params.as_ptr(), n), GalaStatus::GalaOk);
        assert_eq!(gala_engine_write_params(a, params.as_ptr(), n - 1), GalaStatus::GalaErrSize);
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = CString::new(tmp.path().join("params.safetensors").to_str().unwrap()).unwrap();
    let missing = CString::new(tmp.path().join("nope/params.safetensors").to_str().unwrap()).unwrap();
    let mut back = vec![0f32; n];
    // SAFETY: valid handles, C strings and buffers.
    unsafe {
        assert_eq!(gala_engine_save_params(a, file.as_ptr()), GalaStatus::GalaOk, "{}", last_error());
        assert_eq!(gala_engine_load_params(b, file.as_ptr()), GalaStatus::GalaOk, "{}", last_error());
        assert_eq!(gala_engine_read_params(b, back.as_mut_ptr(), n), GalaStatus::GalaOk);
        assert_eq!(gala_engine_load_params(b, missing.as_ptr()), GalaStatus::GalaErrIo);
        assert!(last_error().contains("nope"), "{}", last_error());
        assert_eq!(gala_engine_load_params(b, std::ptr::null()), GalaStatus::GalaErrNullPointer);
    }
    assert_eq!(back, params);
    let st = std::fs::read(tmp.path().join("params.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(st.tensor("agent1.fc.weight").unwrap().shape(), &[512, 32 * 7 * 7]);
    // A file for another network is refused by name, and the engine stays usable.
    let config = CString::new("agents = 2\nenvs_per_agent = 1\nbackend = \"cpu\"\nthreads = 1\n").unwrap();
    let mut other = std::ptr::null_mut();
    // SAFETY: valid C strings and out pointer.
    unsafe {
        assert_eq!(gala_engine_create(config.as_ptr(), 6, &mut other), GalaStatus::GalaOk);
        assert_eq!(gala_engine_load_params(other, file.as_ptr()), GalaStatus::GalaErrConfig);
        assert!(last_error().contains("agent0.actor.weight"), "{}", last_error());
        assert_eq!(gala_engine_gossip(other), GalaStatus::GalaOk);
    }
    for e in [a, b, other] {
        assert_eq!(gala_engine_free(e), GalaStatus::GalaOk);
    }
}

/// The C ABI and the Rust `Engine` are one path: the same data through either gives the same
/// actions, values and parameters (off-policy segment with behaviour log-probs included).
#[test]
fn c_abi_and_rust_engine_agree() {
    use gala_gpu::backend::{ActOutput, Segment};
    use gala_gpu::engine::Engine;
    let toml = "agents = 2\nenvs_per_agent = 1\nn_steps = 2\nbackend = \"cpu\"\nthreads = 1\nseed = 5\n";
    let mut rust = Engine::new(&Config::from_toml_str(toml, Path::new("t")).unwrap(), 3).unwrap();
    let config = CString::new(toml).unwrap();
    let mut c = std::ptr::null_mut();
    // SAFETY: valid C string and out pointer.
    assert_eq!(unsafe { gala_engine_create(config.as_ptr(), 3, &mut c) }, GalaStatus::GalaOk);
    let (n, s) = (2, 4);
    let obs: Vec<u8> = (0..s * OBS).map(|i| (i * 31 % 251) as u8).collect();
    let mut out = ActOutput::default();
    rust.act(&obs[..n * OBS], 3, false, &mut out).unwrap();
    let (mut actions, mut values, mut log_probs) = (vec![0u32; n], vec![0f32; n], vec![0f32; n]);
    // SAFETY: every buffer is valid for the length passed.
    let status = unsafe {
        gala_engine_act(c, obs.as_ptr(), n * OBS, 3, 0, actions.as_mut_ptr(), n, values.as_mut_ptr(), n, log_probs.as_mut_ptr(), n)
    };
    assert_eq!(status, GalaStatus::GalaOk, "{}", last_error());
    assert_eq!((actions, values, log_probs), (out.actions.clone(), out.values.clone(), out.log_probs.clone()));
    let acts = vec![0u32, 2, 1, 1];
    let rewards = vec![1.0f32, 0.0, -1.0, 0.5];
    let dones = vec![0.0f32, 1.0, 0.0, 0.0];
    let behaviour = vec![-1.2f32, -0.9, -1.0, -1.5];
    let segment = Segment { obs: &obs, actions: &acts, rewards: &rewards, dones: &dones, bootstrap_values: &out.values, behaviour_log_probs: Some(&behaviour) };
    rust.learn(&segment).unwrap();
    rust.gossip().unwrap();
    // SAFETY: every buffer is valid for the length passed.
    unsafe {
        let wrong = gala_engine_learn(
            c, obs.as_ptr(), obs.len(), acts.as_ptr(), s, rewards.as_ptr(), s, dones.as_ptr(), s, out.values.as_ptr(), n,
            behaviour.as_ptr(), s - 1, std::ptr::null_mut(), 0,
        );
        assert_eq!(wrong, GalaStatus::GalaErrSize);
        assert!(last_error().contains("`behaviour_log_probs` holds 3 elements, expected 4"), "{}", last_error());
        let status = gala_engine_learn(
            c, obs.as_ptr(), obs.len(), acts.as_ptr(), s, rewards.as_ptr(), s, dones.as_ptr(), s, out.values.as_ptr(), n,
            behaviour.as_ptr(), s, std::ptr::null_mut(), 0,
        );
        assert_eq!(status, GalaStatus::GalaOk, "{}", last_error());
    }
    assert_eq!(gala_engine_gossip(c), GalaStatus::GalaOk);
    let mut sha = [0 as std::ffi::c_char; 65];
    // SAFETY: `sha` holds the 65 bytes passed.
    assert_eq!(unsafe { gala_engine_params_sha256(c, sha.as_mut_ptr(), sha.len()) }, GalaStatus::GalaOk);
    // SAFETY: the call wrote a NUL-terminated string.
    let sha = unsafe { CStr::from_ptr(sha.as_ptr()) }.to_str().unwrap().to_string();
    assert_eq!(sha, rust.params_sha256().unwrap());
    assert_ne!(sha, Engine::new(&Config::from_toml_str(toml, Path::new("t")).unwrap(), 3).unwrap().params_sha256().unwrap());
    assert_eq!(gala_engine_free(c), GalaStatus::GalaOk);
}
