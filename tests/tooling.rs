//! Run-folder tooling: TensorBoard files, checkpoints and bit-exact resume, Ctrl-C, eval, plot,
//! and failing cleanly (corrupt checkpoints, NaN, failed saves).

mod common;

use gala_gpu::algo::{NoProgress, Trainer};
use gala_gpu::backend::BackendKind;
use gala_gpu::checkpoint::Checkpoint;
use gala_gpu::config::Config;
use gala_gpu::run::RunDir;
use gala_gpu::tfevents::EventWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// 2 agents × 3 envs × 5 steps on catch: 30 frames per update.
const FRAMES_PER_UPDATE: u64 = 30;

fn small_config(seed: u64, updates: u64) -> Config {
    Config {
        agents: 2,
        envs_per_agent: 3,
        n_steps: 5,
        frames: FRAMES_PER_UPDATE * updates,
        seed,
        game: "catch".into(),
        backend: BackendKind::Cpu,
        threads: 2,
        metrics_every: 1,
        ..Config::default()
    }
}

fn gala(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gala-gpu")).args(args).envs(env.iter().copied()).output().expect("run gala-gpu")
}

fn only_run_folder(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "expected one run folder in {}: {dirs:?}", out.display());
    dirs[0].clone()
}

fn summary_sha(run: &Path) -> String {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    v["params_sha256"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// A TFRecord / protobuf reader written from the format specification, independent of the
// writer: records are `u64 len | masked crc(len) | data | masked crc(data)`, and protobuf fields
// are (varint key = field << 3 | wire type) followed by the value.

fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282ead8)
}

fn read_records(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let header = bytes.get(i..i + 12).ok_or("truncated record header")?;
        let len = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if mask(crc32c::crc32c(&header[..8])) != len_crc {
            return Err(format!("length CRC mismatch at byte {i}"));
        }
        let data = bytes.get(i + 12..i + 12 + len).ok_or("truncated record data")?;
        let crc = u32::from_le_bytes(bytes.get(i + 12 + len..i + 16 + len).ok_or("truncated data CRC")?.try_into().unwrap());
        if mask(crc32c::crc32c(data)) != crc {
            return Err(format!("data CRC mismatch at byte {i}"));
        }
        out.push(data.to_vec());
        i += 16 + len;
    }
    Ok(out)
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

/// (field number, raw value bytes or varint) of one protobuf message.
enum Field {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(Vec<u8>),
}

fn fields(b: &[u8]) -> Vec<(u64, Field)> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let key = varint(b, &mut i);
        let f = match key & 7 {
            0 => Field::Varint(varint(b, &mut i)),
            1 => {
                i += 8;
                Field::Fixed64(b[i - 8..i].try_into().unwrap())
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                i += n;
                Field::Bytes(b[i - n..i].to_vec())
            }
            5 => {
                i += 4;
                Field::Fixed32(b[i - 4..i].try_into().unwrap())
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((key >> 3, f));
    }
    out
}

/// Decodes an Event: (step, file_version, [(tag, simple_value)]).
fn decode_event(b: &[u8]) -> (i64, Option<String>, Vec<(String, f32)>) {
    let (mut step, mut version, mut values) = (0i64, None, Vec::new());
    for (n, f) in fields(b) {
        match (n, f) {
            (1, Field::Fixed64(w)) => assert!(f64::from_le_bytes(w) > 1.5e9, "wall_time is Unix seconds"),
            (2, Field::Varint(v)) => step = v as i64,
            (3, Field::Bytes(s)) => version = Some(String::from_utf8(s).unwrap()),
            (5, Field::Bytes(summary)) => {
                for (vn, vf) in fields(&summary) {
                    let (1, Field::Bytes(value)) = (vn, vf) else { panic!("Summary has only `value` (1)") };
                    let (mut tag, mut x) = (String::new(), f32::NAN);
                    for (k, f) in fields(&value) {
                        match (k, f) {
                            (1, Field::Bytes(t)) => tag = String::from_utf8(t).unwrap(),
                            (2, Field::Fixed32(w)) => x = f32::from_le_bytes(w),
                            _ => panic!("unexpected Summary.Value field {k}"),
                        }
                    }
                    values.push((tag, x));
                }
            }
            (n, _) => panic!("unexpected Event field {n}"),
        }
    }
    (step, version, values)
}

#[test]
fn tfevents_round_trip_with_valid_crcs() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.scalars(30, &[("charts/SPS".into(), 1234.5), ("losses/entropy".into(), 1.0986), ("skipped".into(), f64::NAN)]).unwrap();
    w.scalars(60, &[("agent1/episodic_return".into(), -0.25)]).unwrap();
    let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let bytes = std::fs::read(w.path()).unwrap();
    let records = read_records(&bytes).unwrap();
    assert_eq!(records.len(), 3);
    let events: Vec<_> = records.iter().map(|r| decode_event(r)).collect();
    assert_eq!(events[0].1.as_deref(), Some("brain.Event:2"));
    assert_eq!(events[1].0, 30);
    assert_eq!(events[1].2, vec![("charts/SPS".to_string(), 1234.5f32), ("losses/entropy".to_string(), 1.0986f32)]);
    assert_eq!(events[2], (60, None, vec![("agent1/episodic_return".to_string(), -0.25f32)]));
    // A flipped bit anywhere is caught by one of the two CRCs.
    for at in [3usize, 10, 20, bytes.len() - 2] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        assert!(read_records(&bad).is_err(), "corruption at byte {at} not detected");
    }
}

/// Trains `updates` updates with a run folder under `out`; returns the folder.
fn train_in_folder(config: &Config, out: &Path) -> PathBuf {
    let mut run = RunDir::create(out, "catch", "gala", config.seed, &config.to_toml()).unwrap();
    let mut t = Trainer::new(config).unwrap();
    t.train(Some(&mut run), &mut NoProgress).unwrap();
    run.path().to_path_buf()
}

#[test]
fn resume_is_bit_exact_and_the_run_folder_is_complete() {
    let k = 3;
    let mut straight = Trainer::new(&small_config(5, 2 * k)).unwrap();
    let want = straight.train(None, &mut NoProgress).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = train_in_folder(&small_config(5, k), dir.path());
    let ck = Checkpoint::load(&run).unwrap();
    assert_eq!((ck.frames, ck.updates, ck.step), (k * FRAMES_PER_UPDATE, k, k * 5));
    assert!(ck.env_states.is_some(), "catch saves its state");
    let config = Config { frames: 2 * k * FRAMES_PER_UPDATE, ..ck.config.clone() };
    let (mut resumed, exact) = Trainer::from_checkpoint(&ck, &config).unwrap();
    assert!(exact);
    let mut folder = RunDir::resume(&run, ck.frames, &config.to_toml()).unwrap();
    let got = resumed.train(Some(&mut folder), &mut NoProgress).unwrap();
    assert_eq!(got.params_sha256, want.params_sha256, "K + resume + K updates differ from 2K straight");
    assert_eq!((got.updates, got.episodes, got.frames), (want.updates, want.episodes, want.frames));
    assert_eq!(got.mean_return_100, want.mean_return_100);
    assert_eq!(summary_sha(&run), want.params_sha256);
    assert_eq!(resumed.agent_returns(), straight.agent_returns(), "per-agent episode statistics carried over");

    // metrics.csv keeps its header and has one row per update, none duplicated by the resume.
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with(gala_gpu::run::METRICS_HEADER));
    assert_eq!(metrics.lines().count() as u64, 1 + 2 * k);
    let agents = std::fs::read_to_string(run.join("metrics_agents.csv")).unwrap();
    assert_eq!(agents.lines().count() as u64, 1 + 2 * k * 2, "one row per agent per update");
    // health.csv: per agent, after updates 1, 2 and 5 of the 6 (the straight run above logged
    // none and ends with the same parameters: measuring health does not disturb training).
    let health = std::fs::read_to_string(run.join("health.csv")).unwrap();
    assert!(health.starts_with(gala_gpu::run::HEALTH_HEADER));
    let rows: Vec<(u64, u64)> = health.lines().skip(1).map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), gala_gpu::run::HEALTH_HEADER.split(',').count(), "{l}");
        for x in &f[3..11] {
            let v: f64 = x.parse().unwrap();
            assert!((0.0..=1.0).contains(&v), "{l}");
        }
        (f[1].parse().unwrap(), f[2].parse().unwrap())
    }).collect();
    assert_eq!(rows, [(1, 0), (1, 1), (2, 0), (2, 1), (5, 0), (5, 1)]);
    // Two sessions, two TensorBoard files, each a valid record stream with per-agent tags.
    let events: Vec<PathBuf> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 2);
    let mut tags = std::collections::BTreeSet::new();
    for e in &events {
        for r in read_records(&std::fs::read(e).unwrap()).unwrap() {
            tags.extend(decode_event(&r).2.into_iter().map(|(t, _)| t));
        }
    }
    for t in ["charts/SPS", "charts/episodic_return", "losses/value_loss", "losses/entropy", "losses/grad_norm", "gossip/consensus_distance", "agent0/episodic_return", "agent1/entropy", "health/conv1_units_alive", "health/logit_std"] {
        assert!(tags.contains(t), "no `{t}` scalar in {tags:?}");
    }
}

#[test]
fn corrupt_or_truncated_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_in_folder(&small_config(2, 1), dir.path());
    let good = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("flipped payload byte", {
            let mut b = good.clone();
            let at = 8 + header_len + (good.len() - 8 - header_len) / 3;
            b[at] ^= 1;
            b
        }),
        ("flipped header byte", {
            let mut b = good.clone();
            b[8 + header_len / 2] ^= 0x20;
            b
        }),
    ];
    for (what, bytes) in cases {
        let path = dir.path().join(format!("{}.safetensors", what.replace(' ', "_")));
        std::fs::write(&path, &bytes).unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains(path.to_str().unwrap()), "{what}: {e}");
        // The CLI says the same on one line and does not panic.
        let out = gala(&["eval", path.to_str().unwrap(), "--episodes", "1"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !stderr.contains("panicked"), "{what}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.contains("refused"), "{what}: {stderr}");
    }
    assert!(Checkpoint::from_bytes(&good, Path::new("ok")).is_ok());
}

#[test]
fn a_failed_save_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&small_config(3, 2)).unwrap();
    t.update().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let first = t.checkpoint(1.0).unwrap();
    first.save(&path).unwrap();
    t.update().unwrap();
    // A folder where the temporary file goes makes the write fail (even for root).
    std::fs::create_dir(dir.path().join("checkpoint.safetensors.tmp")).unwrap();
    let e = t.checkpoint(2.0).unwrap().save(&path).unwrap_err().to_string();
    assert!(e.contains("not saved") && e.contains("previous checkpoint there is intact"), "{e}");
    assert_eq!(Checkpoint::load(&path).unwrap(), first, "the previous checkpoint must be untouched");
}

#[test]
fn non_finite_parameters_name_agent_and_tensor() {
    let mut t = Trainer::new(&small_config(4, 1)).unwrap();
    let b = t.backend_mut();
    let layout = b.spec().net.layout();
    let mut params = b.read_params().unwrap();
    let fc_bias = layout.tensors.iter().find(|t| t.name == "fc.bias").unwrap();
    params[layout.total + fc_bias.offset + 7] = f32::INFINITY;
    b.write_params(&params).unwrap();
    let e = t.check_params_finite().unwrap_err().to_string();
    assert!(e.contains("agent 1") && e.contains("`fc.bias` element 7") && e.contains("inf"), "{e}");
}

#[test]
fn nan_in_the_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = gala(
        &[
            "train", "--game", "catch", "--agents", "2", "--envs-per-agent", "3", "--n-steps", "5", "--frames", "600", "--backend", "cpu",
            "--threads", "2", "--save-every", "60", "-q", "--out", dir.path().to_str().unwrap(),
        ],
        &[("GALA_GPU_DEBUG_NAN_AT_UPDATE", "4")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let run = only_run_folder(dir.path());
    let advice = format!("gala-gpu train --resume {} --lr 3.500e-4", run.display());
    for needle in ["non-finite", "agent 1", "loss is NaN", "update 4", "last good checkpoint (frame 120)", &advice] {
        assert!(stderr.contains(needle), "`{needle}` missing from {stderr}");
    }
    let ck = Checkpoint::load(&run).unwrap();
    assert_eq!((ck.frames, ck.updates), (120, 4));
    assert!(ck.params.iter().all(|x| x.is_finite()));
    assert!(!run.join("summary.json").exists(), "a failed run writes no summary");

    // The advice works as printed: the resume with the lower learning rate trains on, and the
    // change is in the run's configuration history.
    let out = gala(&["train", "--resume", run.to_str().unwrap(), "--lr", "3.500e-4", "--frames", "180", "-q"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ck = Checkpoint::load(&run).unwrap();
    assert_eq!((ck.frames, ck.config.lr), (180, 3.5e-4));
    let history = std::fs::read_to_string(run.join("config_history.csv")).unwrap();
    assert!(history.contains("120,lr,0.0007,0.00035"), "{history}");

    // Without a checkpoint there is nothing to resume: the advice says to start anew.
    let dir = tempfile::tempdir().unwrap();
    let out = gala(
        &["train", "--game", "catch", "--agents", "2", "--envs-per-agent", "3", "--frames", "600", "--backend", "cpu", "--threads", "2", "-q",
            "--out", dir.path().to_str().unwrap()],
        &[("GALA_GPU_DEBUG_NAN_AT_UPDATE", "2")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no checkpoint had been saved yet") && stderr.contains("start a new run with a lower learning rate (e.g. --lr 3.500e-4)") && !stderr.contains("--resume"), "{stderr}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (run, out) = common::interrupt_after_first_checkpoint(
        &["train", "--game", "catch", "--agents", "2", "--envs-per-agent", "3", "--n-steps", "5", "--frames", "100000000", "--backend",
            "cpu", "--threads", "2", "--seed", "9", "--save-every", "30", "-q"],
        dir.path(),
        Duration::from_millis(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("checkpoint saved") && stderr.contains("--resume"), "{stderr}");
    let ck = Checkpoint::load(&run).unwrap();
    assert!(ck.frames >= FRAMES_PER_UPDATE && ck.frames.is_multiple_of(FRAMES_PER_UPDATE), "{}", ck.frames);
    assert!(!run.join("summary.json").exists());

    // Resume to two updates past the interruption; compare with a straight run.
    let total = ck.frames + 2 * FRAMES_PER_UPDATE;
    let out = gala(&["train", "--resume", run.to_str().unwrap(), "--frames", &total.to_string(), "-q"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), run.to_str().unwrap());
    let straight = Trainer::new(&Config { frames: total, ..ck.config.clone() }).unwrap().train(None, &mut NoProgress).unwrap();
    assert_eq!(summary_sha(&run), straight.params_sha256, "interrupt + resume is not bit-exact");

    // Flags that would change the run's shape or identity are refused on resume, on one line.
    let out = gala(&["train", "--resume", run.to_str().unwrap(), "--agents", "3"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("--agents"), "{stderr}");
}

#[test]
fn eval_gif_and_plot_on_the_built_in_game() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_in_folder(&small_config(6, 8), dir.path());
    let gif = dir.path().join("game.gif");
    let out = gala(&["eval", run.to_str().unwrap(), "--episodes", "7", "--greedy", "--gif", gif.to_str().unwrap(), "--threads", "1"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("7 games") && stdout.contains("mean") && stdout.contains("median") && stdout.contains("raw scores"), "{stdout}");
    // catch scores are ±1 per game: the mean of 7 is k/7 for an odd k.
    let mean: f64 = stdout.split("mean ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!((-1.0..=1.0).contains(&mean) && ((mean * 7.0).round() as i64) % 2 != 0, "{mean}");
    let bytes = std::fs::read(&gif).unwrap();
    assert!(bytes.starts_with(b"GIF89a"), "not a GIF");
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 168, "84×84 frames drawn at 2×");
    assert_eq!(*bytes.last().unwrap(), 0x3b, "GIF trailer");

    let out = gala(&["plot", run.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg_path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(svg_path, run.join("learning_curve.svg"));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
    assert!(texts.iter().any(|t| t.contains("agent 1")) && texts.iter().any(|t| t.contains("frames")), "{texts:?}");
    let lines = doc.descendants().filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path")).count();
    assert!(lines >= 3, "expected a curve per agent and the mean, found {lines}");

    // Several runs on one chart: one labelled curve each; --out is required, labels must match.
    let (r, cmp) = (run.to_str().unwrap(), dir.path().join("cmp.svg"));
    let out = gala(&["plot", r, r, "--out", cmp.to_str().unwrap(), "--label", "lock-step", "--label", "pipelined"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&cmp).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(str::trim).collect();
    assert!(texts.contains(&"lock-step") && texts.contains(&"pipelined") && !texts.iter().any(|t| t.contains("agent 1")), "{texts:?}");
    for (args, says) in [(vec!["plot", r, r], "--out"), (vec!["plot", r, r, "--out", "x.svg", "--label", "one"], "--label")] {
        let out = gala(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn resume_of_a_missing_folder_is_one_line() {
    let out = gala(&["train", "--resume", "/nonexistent/run"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("/nonexistent/run"), "{stderr}");
}

/// `eval` on a parameter export (gala_engine_save_params) says what the file is and what eval
/// needs, instead of calling it truncated or corrupt.
#[test]
fn eval_of_a_parameter_file_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { agents: 1, envs_per_agent: 1, n_steps: 1, backend: BackendKind::Cpu, threads: 1, ..Config::default() };
    let path = dir.path().join("params.safetensors");
    gala_gpu::engine::Engine::new(&config, 3).unwrap().save_params(&path).unwrap();
    let out = gala(&["eval", path.to_str().unwrap(), "--episodes", "1"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1, "{stderr}");
    assert!(stderr.contains("is a parameter file") && stderr.contains("run folder") && !stderr.contains("corrupt"), "{stderr}");
}

/// `eval --gif` checks its output path before playing: a missing folder or a folder as the
/// file fails at once, naming the flag, with no scores printed.
#[test]
fn eval_checks_the_gif_path_before_playing() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_in_folder(&small_config(8, 1), dir.path());
    let missing = dir.path().join("no/such/folder/game.gif");
    let cases = [(missing.to_str().unwrap(), "does not exist"), (dir.path().to_str().unwrap(), "is a folder")];
    for (gif, why) in cases {
        let started = std::time::Instant::now();
        let out = gala(&["eval", run.to_str().unwrap(), "--episodes", "20000", "--gif", gif, "--threads", "1"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.trim().lines().count() == 1, "{gif}: {stderr}");
        assert!(stderr.contains("--gif") && stderr.contains(why), "{gif}: {stderr}");
        assert!(out.stdout.is_empty(), "{gif}: no games were to be played");
        assert!(started.elapsed() < Duration::from_secs(20), "{gif}: the games were played first ({:?})", started.elapsed());
    }
}

fn fake_run(dir: &Path, metrics: &str, agents: Option<&str>) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.csv"), metrics).unwrap();
    if let Some(a) = agents {
        std::fs::write(run.join("metrics_agents.csv"), a).unwrap();
    }
    run
}

/// A metrics.csv with text in a numeric column: `plot` names the file, line and column instead
/// of reporting that no games were logged. Empty returns (no finished game yet) are skipped.
#[test]
fn plot_names_a_bad_line_in_metrics_csv() {
    let dir = tempfile::tempdir().unwrap();
    let header = gala_gpu::run::METRICS_HEADER;
    let metrics = format!("{header}\n30,1,0,,0,0.1,0.1,1.0,0.5,100,0.3\n60,2,3,oops,0,0.1,0.1,1.0,0.5,100,0.6\n");
    let run = fake_run(dir.path(), &metrics, None);
    let out = gala(&["plot", run.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1, "{stderr}");
    assert!(stderr.contains("metrics.csv:3") && stderr.contains("mean_return_100") && stderr.contains("oops"), "{stderr}");
    // The same in metrics_agents.csv, and a good file plots.
    let good = format!("{header}\n30,1,0,,0,0.1,0.1,1.0,0.5,100,0.3\n60,2,3,0.5,0,0.1,0.1,1.0,0.5,100,0.6\n");
    let agents = format!("{}\n60,2,0,2,0.5,0.1,0.1,1.0,0.5\n60,2,x1,1,0.5,0.1,0.1,1.0,0.5\n", gala_gpu::run::AGENT_METRICS_HEADER);
    let run = fake_run(dir.path(), &good, Some(&agents));
    let stderr = String::from_utf8_lossy(&gala(&["plot", run.to_str().unwrap()], &[]).stderr).to_string();
    assert!(stderr.contains("metrics_agents.csv:3") && stderr.contains("`agent`"), "{stderr}");
    std::fs::remove_file(run.join("metrics_agents.csv")).unwrap();
    assert!(gala(&["plot", run.to_str().unwrap()], &[]).status.success());
}

/// The frames axis reads 1M, 2M… (k on short runs), not 1000000.0, and the legend says each
/// agent's curve is over its own last 100 games.
#[test]
fn plot_labels_frames_in_k_and_m_and_explains_the_agent_curves() {
    let texts = |top: f64| -> Vec<String> {
        let mean: Vec<(f64, f64)> = (0..=20).map(|i| (top * i as f64 / 20.0, i as f64 / 20.0)).collect();
        let agent: Vec<(f64, f64)> = mean.iter().map(|&(x, y)| (x, y * 0.9)).collect();
        let svg = gala_gpu::plot::render_svg("t", &mean, &[agent.clone(), agent]).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(|s| s.trim().to_string()).collect()
    };
    for (top, unit, example) in [(40e6, 'M', "10M"), (48_000.0, 'k', "10k")] {
        let t = texts(top);
        assert!(t.iter().any(|s| s == example), "{top}: no `{example}` label in {t:?}");
        let labels: Vec<&String> = t.iter().filter(|s| s.starts_with(|c: char| c.is_ascii_digit())).collect();
        assert!(labels.iter().any(|s| s.ends_with(unit)), "{top}: {labels:?}");
        assert!(labels.iter().all(|s| !s.contains("000")), "{top}: raw frame counts in {labels:?}");
        assert!(t.iter().any(|s| s.contains("agent 1") && s.contains("own last 100 games")), "{t:?}");
    }
    assert_eq!(gala_gpu::plot::frames_label(1_500_000.0), "1.5M");
    assert_eq!(gala_gpu::plot::frames_label(2_000_000.0), "2M");
    assert_eq!(gala_gpu::plot::frames_label(500.0), "500");
}
