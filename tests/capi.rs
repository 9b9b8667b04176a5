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

/// A handle is still usable: act works on it and it is not poisoned.
fn assert_usable(engine: *mut GalaEngine) {
    let obs = vec![0u8; 2 * OBS];
    assert_eq!(act(engine, Some(&obs), 2), GalaStatus::GalaOk, "{}", last_error());
}

/// `gala_engine_load_params` refuses files of another agent count (a parameter export and a
/// trainer checkpoint of 4 agents into a 2-agent engine), damaged files (one flipped bit
/// anywhere: payload or header) and non-finite values; each is `GALA_ERR_CONFIG` with the
/// reason, changes nothing, and leaves the handle usable.
#[test]
fn load_params_refuses_other_agent_counts_damage_and_non_finite_values() {
    let engine = small_engine();
    let tmp = tempfile::tempdir().unwrap();
    let cpath = |name: &str| CString::new(tmp.path().join(name).to_str().unwrap()).unwrap();
    let mut info = GalaEngineInfo::default();
    // SAFETY: valid handle and out pointer.
    assert_eq!(unsafe { gala_engine_info(engine, &mut info) }, GalaStatus::GalaOk);
    let mut before = vec![0f32; info.agents * info.param_count];
    // SAFETY: `before` holds agents × param_count floats.
    assert_eq!(unsafe { gala_engine_read_params(engine, before.as_mut_ptr(), before.len()) }, GalaStatus::GalaOk);
    let unchanged = |what: &str| {
        let mut now = vec![0f32; before.len()];
        // SAFETY: `now` holds agents × param_count floats.
        assert_eq!(unsafe { gala_engine_read_params(engine, now.as_mut_ptr(), now.len()) }, GalaStatus::GalaOk);
        assert!(now == before, "{what}: the refused load changed the parameters");
        assert_usable(engine);
    };

    // A parameter export of a 4-agent engine (same network and actions).
    let four = CString::new("agents = 4\nenvs_per_agent = 1\nn_steps = 2\nbackend = \"cpu\"\nthreads = 1\nseed = 3\n").unwrap();
    let mut big = std::ptr::null_mut();
    let four_file = cpath("four.safetensors");
    // SAFETY: valid C strings and out pointer.
    unsafe {
        assert_eq!(gala_engine_create(four.as_ptr(), 3, &mut big), GalaStatus::GalaOk, "{}", last_error());
        assert_eq!(gala_engine_save_params(big, four_file.as_ptr()), GalaStatus::GalaOk, "{}", last_error());
        assert_eq!(gala_engine_load_params(engine, four_file.as_ptr()), GalaStatus::GalaErrConfig);
    }
    assert!(last_error().contains("4 agents") && last_error().contains("has 2"), "{}", last_error());
    unchanged("4-agent export");
    assert_eq!(gala_engine_free(big), GalaStatus::GalaOk);

    // A trainer checkpoint of 4 agents on catch (3 actions, like this engine).
    let config = Config { agents: 4, envs_per_agent: 1, n_steps: 2, game: "catch".into(), threads: 1, backend: gala_gpu::backend::BackendKind::Cpu, ..Config::default() };
    let ck = Trainer::new(&config).unwrap().checkpoint(0.0).unwrap();
    ck.save(&tmp.path().join("ck.safetensors")).unwrap();
    // SAFETY: valid handle and C string.
    assert_eq!(unsafe { gala_engine_load_params(engine, cpath("ck.safetensors").as_ptr()) }, GalaStatus::GalaErrConfig);
    assert!(last_error().contains("4 agents"), "{}", last_error());
    unchanged("4-agent checkpoint");
    // The same trainer with 2 agents loads: checkpoints are accepted when they match.
    let ck2 = Trainer::new(&Config { agents: 2, ..config }).unwrap().checkpoint(0.0).unwrap();
    ck2.save(&tmp.path().join("ck2.safetensors")).unwrap();
    // SAFETY: valid handle and C string.
    assert_eq!(unsafe { gala_engine_load_params(engine, cpath("ck2.safetensors").as_ptr()) }, GalaStatus::GalaOk, "{}", last_error());
    // SAFETY: `before` holds agents × param_count floats.
    assert_eq!(unsafe { gala_engine_write_params(engine, before.as_ptr(), before.len()) }, GalaStatus::GalaOk);

    // One flipped bit, in the tensor bytes or in the JSON header, is refused.
    let good_file = cpath("good.safetensors");
    // SAFETY: valid handle and C string.
    assert_eq!(unsafe { gala_engine_save_params(engine, good_file.as_ptr()) }, GalaStatus::GalaOk);
    let good = std::fs::read(tmp.path().join("good.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let payload = good.len() - 8 - header_len;
    let header = std::str::from_utf8(&good[8..8 + header_len]).unwrap();
    // A bit of a metadata value (the action count "3" becomes "2"): still valid JSON.
    let meta_at = 8 + header.find("\"actions\":\"3\"").expect("actions in the metadata") + "\"actions\":\"".len();
    for (what, at, bit) in [("payload", 8 + header_len + payload / 3, 0x01u8), ("payload, high bit", 8 + header_len + payload - 5, 0x80), ("metadata", meta_at, 0x01)] {
        let mut bad = good.clone();
        bad[at] ^= bit;
        let name = format!("flip{at}.safetensors");
        std::fs::write(tmp.path().join(&name), &bad).unwrap();
        // SAFETY: valid handle and C string.
        assert_eq!(unsafe { gala_engine_load_params(engine, cpath(&name).as_ptr()) }, GalaStatus::GalaErrConfig, "{what}");
        assert!(last_error().contains("checksum"), "{what}: {}", last_error());
        unchanged(what);
    }

    // NaN and infinity in a file (written with a valid checksum by the library itself).
    for (what, value) in [("NaN", f32::NAN), ("inf", f32::INFINITY)] {
        let mut params = before.clone();
        params[info.param_count + 7] = value;
        let net = gala_gpu::model::NetSpec::new(gala_gpu::model::NetPreset::Gala, 3);
        let bytes = gala_gpu::checkpoint::params_to_bytes(&net, 2, &params).unwrap();
        std::fs::write(tmp.path().join("nan.safetensors"), bytes).unwrap();
        // SAFETY: valid handle and C string.
        assert_eq!(unsafe { gala_engine_load_params(engine, cpath("nan.safetensors").as_ptr()) }, GalaStatus::GalaErrConfig, "{what}");
        assert!(last_error().contains("agent1.conv1.weight") && last_error().contains("finite"), "{what}: {}", last_error());
        unchanged(what);
    }
    assert_eq!(gala_engine_free(engine), GalaStatus::GalaOk);
}

/// `gala_engine_write_params` refuses NaN/inf parameters and `gala_engine_learn` refuses
/// `dones` outside {0, 1} and non-finite behaviour log-probs or bootstrap values: argument
/// errors (`GALA_ERR_CONFIG`) that change nothing and leave the handle usable.
#[test]
fn write_params_and_learn_refuse_values_they_cannot_use() {
    let engine = small_engine();
    let mut info = GalaEngineInfo::default();
    // SAFETY: valid handle and out pointer.
    assert_eq!(unsafe { gala_engine_info(engine, &mut info) }, GalaStatus::GalaOk);
    let mut params = vec![0f32; info.agents * info.param_count];
    // SAFETY: `params` holds agents × param_count floats.
    assert_eq!(unsafe { gala_engine_read_params(engine, params.as_mut_ptr(), params.len()) }, GalaStatus::GalaOk);
    let sha = || {
        let mut out = [0 as std::ffi::c_char; 65];
        // SAFETY: `out` holds 65 bytes.
        assert_eq!(unsafe { gala_engine_params_sha256(engine, out.as_mut_ptr(), out.len()) }, GalaStatus::GalaOk);
        // SAFETY: NUL-terminated by the call.
        unsafe { CStr::from_ptr(out.as_ptr()) }.to_str().unwrap().to_string()
    };
    let start = sha();
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut bad = params.clone();
        bad[info.param_count - 1] = value; // agent 0's critic.bias
        // SAFETY: `bad` holds agents × param_count floats.
        assert_eq!(unsafe { gala_engine_write_params(engine, bad.as_ptr(), bad.len()) }, GalaStatus::GalaErrConfig, "{value}");
        assert!(last_error().contains("agent0.critic.bias") && last_error().contains("finite"), "{value}: {}", last_error());
        assert_eq!(sha(), start, "{value}: a refused write changed the parameters");
        assert_usable(engine);
    }

    let (n, s) = (2usize, 4usize); // agents × envs, agents × n_steps × envs
    let obs = vec![7u8; s * OBS];
    let acts = vec![0u32, 1, 2, 1];
    let rewards = vec![1.0f32, 0.0, -1.0, 0.0];
    let good_dones = vec![0.0f32, 1.0, 0.0, 0.0];
    let values = vec![0.1f32, -0.2];
    let good_lp = vec![-1.1f32, -0.9, -1.0, -1.2];
    let learn = |dones: &[f32], boot: &[f32], lp: Option<&[f32]>| {
        let (lp_ptr, lp_len) = lp.map_or((std::ptr::null(), 0), |l| (l.as_ptr(), l.len()));
        // SAFETY: every buffer is valid for the length passed.
        unsafe {
            gala_engine_learn(
                engine, obs.as_ptr(), obs.len(), acts.as_ptr(), s, rewards.as_ptr(), s, dones.as_ptr(), s, boot.as_ptr(), n, lp_ptr, lp_len,
                std::ptr::null_mut(), 0,
            )
        }
    };
    for d in [0.5f32, 2.0, -1.0, f32::NAN] {
        let dones = vec![0.0, d, 0.0, 0.0];
        assert_eq!(learn(&dones, &values, None), GalaStatus::GalaErrConfig, "dones {d}");
        assert!(last_error().contains("dones[1]"), "{d}: {}", last_error());
        assert_eq!(sha(), start);
    }
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let lp = vec![-1.0, -1.0, v, -1.0];
        assert_eq!(learn(&good_dones, &values, Some(&lp)), GalaStatus::GalaErrConfig, "log-prob {v}");
        assert!(last_error().contains("behaviour_log_probs[2]"), "{v}: {}", last_error());
        assert_eq!(learn(&good_dones, &[0.0, v], Some(&good_lp)), GalaStatus::GalaErrConfig, "bootstrap {v}");
        assert!(last_error().contains("bootstrap_values[1]"), "{v}: {}", last_error());
        assert_eq!(sha(), start);
    }
    assert_usable(engine);
    // The handle was never poisoned: a valid segment still learns.
    assert_eq!(learn(&good_dones, &values, Some(&good_lp)), GalaStatus::GalaOk, "{}", last_error());
    assert_ne!(sha(), start);
    assert_eq!(gala_engine_free(engine), GalaStatus::GalaOk);
}
