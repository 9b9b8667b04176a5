//! The command line: bad input fails cleanly on one line; a short catch run learns.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn gala(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gala-gpu")).args(args).output().expect("run gala-gpu")
}

/// Exits non-zero with a single stderr line containing `needle`, and no panic.
fn fails_with(args: &[&str], needle: &str) {
    let out = gala(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {stderr:?}");
    assert!(lines[0].contains(needle), "{args:?}: {:?} does not name `{needle}`", lines[0]);
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "agents = 2\nlearning_rate = 0.1\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = dir.path().to_str().unwrap();
    fails_with(&["train", "--config", cfg, "--out", out], "learning_rate");
    fails_with(&["train", "--lr", "-0.001", "--out", out], "lr");
    fails_with(&["train", "--agents", "0", "--out", out], "agents");
    fails_with(&["train", "--preset", "atari2600", "--out", out], "atari2600");
    fails_with(&["train", "--net", "resnet", "--out", out], "resnet");
    fails_with(&["train", "--game", "zork", "--out", out], "zork");
    fails_with(&["train", "--agents", "4", "--peers", "4", "--out", out], "peers");
    fails_with(&["train", "--config", "/nonexistent/x.toml"], "/nonexistent/x.toml");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count(), 0, "no run folder for a failed start");
}

#[test]
fn unwritable_output_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    fails_with(&["train", "--out", file.to_str().unwrap(), "--frames", "100000000"], "not-a-dir");
}

#[test]
fn info_runs_without_a_gpu() {
    let out = gala(&["info"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gpu:"), "{text}");
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `train --game catch --agents 4` learns: a random policy scores about −0.6; after 48,000 frames
/// the mean over the last 100 games must be at least 0.8 (seen: ≥ 0.9 by 30,000 frames).
#[test]
fn catch_is_learned_within_the_frame_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = gala(&[
        "train", "--game", "catch", "--agents", "4", "--envs-per-agent", "4", "--lr", "1.4e-3", "--frames", "48000",
        "--seed", "1", "--backend", "cpu", "--out", dir.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "training failed: {stderr}");
    let run = Path::new(String::from_utf8_lossy(&out.stdout).trim()).to_path_buf();
    assert!(run.starts_with(dir.path()));
    let name = run.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("catch__gala__1__"), "run folder name {name}");
    let summary = read_json(&run.join("summary.json"));
    for key in ["frames", "updates", "episodes", "mean_return_100", "consensus_distance", "sps", "wall_seconds", "backend", "params_sha256"] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    assert_eq!(summary["frames"], 48000);
    assert_eq!(summary["backend"], "cpu");
    let ret = summary["mean_return_100"].as_f64().unwrap();
    assert!(ret >= 0.8, "catch not learned: mean return over the last 100 games {ret} < 0.8\n{stderr}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("agents = 4") && config.contains("game = \"catch\""), "{config}");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with("frames,updates,episodes,mean_return_100,consensus_distance"));
    assert!(metrics.lines().count() > 10);
}

/// A short Atari run completes and writes its run folder (ROMs are provisioned by .ci/run or by
/// the trainer itself).
#[test]
fn short_pong_run_writes_its_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = gala(&[
        "train", "--game", "PongNoFrameskip-v4", "--agents", "2", "--envs-per-agent", "2", "--frames", "400",
        "--backend", "cpu", "--out", dir.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "training failed: {stderr}");
    let run = Path::new(String::from_utf8_lossy(&out.stdout).trim()).to_path_buf();
    assert!(run.file_name().unwrap().to_str().unwrap().starts_with("pong__gala__1__"), "{}", run.display());
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["frames"], 400, "5 updates of 2 agents x 2 envs x 5 steps x 4 frames");
    assert_eq!(summary["updates"], 5);
    assert!(run.join("config.toml").exists() && run.join("metrics.csv").exists());
}

#[test]
fn bench_e2e_reports_rates_and_the_fraction_of_emulation() {
    for pipeline in [false, true] {
        let mut args = vec!["bench", "e2e", "--game", "catch", "--agents", "2", "--envs-per-agent", "2", "--updates", "2", "--backend", "cpu", "--json"];
        if pipeline {
            args.push("--pipeline");
        }
        let out = gala(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["pipeline"], pipeline);
        assert_eq!(report["updates"], 2);
        for key in ["frames_per_sec", "agent_steps_per_sec", "emulation_frames_per_sec", "fraction_of_emulation", "learner_busy_fraction"] {
            let v = report[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{key} = {v}");
        }
        assert!(report["phases"]["learn"].as_f64().unwrap() > 0.0);
        assert!(report["learner_device_busy_fraction"].is_null(), "the cpu backend has no device");
    }
}

#[test]
fn bench_e2e_on_a_device_backend_reports_how_busy_the_device_was() {
    for pipeline in [false, true] {
        let mut args = vec!["bench", "e2e", "--game", "catch", "--agents", "2", "--envs-per-agent", "2", "--n-steps", "2", "--updates", "2", "--backend", "sim", "--json"];
        if pipeline {
            args.push("--pipeline");
        }
        let out = gala(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let learner = report["learner_device_busy_fraction"].as_f64().expect("a device backend reports its busy fraction");
        assert!(learner > 0.0 && learner <= 1.0, "learner device busy {learner}");
        match report["actor_device_busy_fraction"].as_f64() {
            Some(actor) => assert!(pipeline && actor > 0.0 && actor <= 1.0, "actor device busy {actor} (pipeline {pipeline})"),
            None => assert!(!pipeline, "a pipelined run reports the actor's stream too"),
        }
    }
}

#[test]
fn bench_learner_profile_prints_the_memory_access_table_on_sim_only() {
    let tiny = ["bench", "learner", "--agents", "1", "--envs-per-agent", "1", "--n-steps", "2", "--updates", "1"];
    let args: Vec<&str> = tiny.iter().copied().chain(["--backend", "sim", "--profile", "--json"]).collect();
    let out = gala(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let launches = report["memory_profile"].as_array().expect("--profile adds the per-launch profile");
    assert_eq!(launches.len() as u64, report["launches_per_update"].as_u64().unwrap(), "one profile per launch of the update");
    // conv1 (8x8/4 on 84x84) runs the word-load forward kernel.
    let fwd = launches.iter().find(|l| l["kernel"] == "conv_forward_u8_words").expect("conv1 forward is profiled");
    assert!(fwd["shared_store"]["requests"].as_u64().unwrap() > 0 && fwd["global_load"]["units"].as_u64().unwrap() > 0);
    // In this binary (not only in a test binary, whose thread-local layout differs) the GEMM
    // kernels' tiles are conflict-free: every shared request takes the fewest wavefronts its
    // bytes allow. Before the simulator aligned __shared__ arrays to 16 bytes, the tiles sat off
    // a 16-byte boundary here and every 128-bit access was profiled as four scalar ones. The TF32
    // build's too (its fragment reads and its K-lane tiles' swapped segments, kernels/conv.cu).
    let tf32_args: Vec<&str> = args.iter().copied().chain(["--precision", "tf32"]).collect();
    let tf32 = gala(&tf32_args);
    assert!(tf32.status.success(), "{}", String::from_utf8_lossy(&tf32.stderr));
    let tf32: serde_json::Value = serde_json::from_slice(&tf32.stdout).unwrap();
    let tf32_launches = tf32["memory_profile"].as_array().unwrap();
    assert!(tf32_launches.iter().any(|l| l["kernel"] == "conv_forward_u8_words_tf32"), "--precision tf32 runs the tf32 kernels");
    for l in launches.iter().chain(tf32_launches).filter(|l| common::is_gemm_kernel(l["kernel"].as_str().unwrap())) {
        for class in ["shared_load", "shared_store"] {
            let (units, ideal) = (l[class]["units"].as_u64().unwrap(), l[class]["ideal_units"].as_u64().unwrap());
            assert!(ideal > 0 && units == ideal, "{} {class}: {units} wavefronts for an ideal {ideal}", l["kernel"]);
        }
    }
    let text = gala(&tiny.iter().copied().chain(["--backend", "sim", "--profile"]).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&text.stdout).contains("| conv_forward_u8_words |"), "the text report prints the table");
    let cpu: Vec<&str> = tiny.iter().copied().chain(["--backend", "cpu", "--profile"]).collect();
    fails_with(&cpu, "--profile needs --backend sim");
}

#[test]
fn tf32_on_the_cpu_backend_is_one_clear_line_and_leaves_no_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    fails_with(&["train", "-q", "--game", "catch", "--backend", "cpu", "--precision", "tf32", "--out", out], "`precision`");
    if gala_gpu::gpu_probe().is_err() {
        // `auto` falls back to the cpu backend without a GPU: the message says so.
        fails_with(&["train", "-q", "--game", "catch", "--precision", "tf32", "--out", out], "no usable GPU");
    }
    fails_with(&["train", "-q", "--game", "catch", "--precision", "bf16", "--out", out], "bf16");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a refused run leaves no run folder");
}

#[test]
fn cuda_without_a_gpu_is_one_clear_line_and_leaves_no_run_folder() {
    if let Ok(name) = gala_gpu::gpu_probe() {
        eprintln!("SKIPPED: a GPU is present ({name}); this test is about machines without one");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fails_with(&["train", "-q", "--game", "catch", "--backend", "cuda", "--out", dir.path().to_str().unwrap()], "NVIDIA driver");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the run that never started left a folder");
}

/// GALA_ROM_DIR naming a file: every ROM command says which variable to fix (not only the
/// OS's "File exists").
#[test]
fn a_rom_dir_that_is_a_file_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roms");
    std::fs::write(&file, "not a folder").unwrap();
    for args in [&["roms", "list"][..], &["roms", "install"], &["train", "--game", "pong", "--frames", "400", "--out", dir.path().to_str().unwrap()]] {
        let out = Command::new(env!("CARGO_BIN_EXE_gala-gpu")).args(args).env("GALA_ROM_DIR", &file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail: {stderr}");
        let line = stderr.lines().find(|l| l.contains("error")).unwrap_or_default();
        assert!(line.contains("GALA_ROM_DIR") && line.contains("not a directory") && line.contains(file.to_str().unwrap()), "{args:?}: {stderr}");
    }
}
