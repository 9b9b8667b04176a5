//! Saving and restoring Atari games: an env restored from a saved state continues bit for bit
//! (frames, rewards, dones, game ends, with no-op starts and sticky actions), a Pong training run
//! resumes from a checkpoint exactly, damaged states are refused with an error, and evaluation
//! builds its games without episodic life.

use gala_gpu::algo::{NoProgress, Trainer};
use gala_gpu::backend::BackendKind;
use gala_gpu::checkpoint::Checkpoint;
use gala_gpu::config::Config;
use gala_gpu::env::atari::ale::{Ale, AleOptions};
use gala_gpu::env::atari::roms;
use gala_gpu::env::{make_env, make_vec_env, EnvPreset, EnvSettings, Environment, GameId, StepOutcome, FRAME_BYTES};
use gala_gpu::rng::{PhiloxStream, Purpose};
use std::time::Instant;

fn settings(game: &str, preset: EnvPreset, seed: u64) -> EnvSettings {
    if !roms::any_installed() {
        roms::install().expect("install the ROMs (needs pip and network once)");
    }
    EnvSettings::new(GameId::parse(game).unwrap(), preset, seed)
}

/// What one agent step produced, plus the first frame of the next episode when it ended one.
#[derive(Debug, PartialEq)]
struct Record {
    outcome: StepOutcome,
    frame: Vec<u8>,
    reset_frame: Option<Vec<u8>>,
}

/// `steps` agent steps of a random policy drawn from `actions`, resetting after every done the
/// way the vector env does.
fn play(env: &mut dyn Environment, actions: &mut PhiloxStream, steps: usize) -> Vec<Record> {
    let n = env.num_actions() as u32;
    let mut frame = vec![0u8; FRAME_BYTES];
    (0..steps)
        .map(|_| {
            let outcome = env.step(actions.below(n), &mut frame);
            let taken = frame.clone();
            let reset_frame = outcome.done.then(|| {
                env.reset(&mut frame);
                frame.clone()
            });
            Record { outcome, frame: taken, reset_frame }
        })
        .collect()
}

fn differing(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// For each of `gaps`: env A plays that many steps and is saved, and a freshly built env
/// restored from the state must play the next `after` steps exactly as A does. Returns the game
/// ends seen in the compared steps, so callers can check the comparison covered some.
fn check_resume(s: &EnvSettings, index: usize, gaps: &[usize], after: usize) -> usize {
    let mut a = make_env(s, index).unwrap();
    let mut frame = vec![0u8; FRAME_BYTES];
    a.reset(&mut frame);
    let mut actions = PhiloxStream::new(99, index as u64, Purpose::Action);
    let mut game_ends = 0;
    let mut played = 0;
    for &gap in gaps {
        play(a.as_mut(), &mut actions, gap);
        played += gap;
        let cut = played;
        let state = a.save_state().unwrap();
        // A fresh env of another index (other no-op and sticky streams) must be fully
        // overwritten by the state, not just partly.
        let mut b = make_env(s, index + 1).unwrap();
        b.reset(&mut frame);
        play(b.as_mut(), &mut PhiloxStream::new(1, 2, Purpose::Action), 17);
        b.load_state(&state).unwrap();
        assert_eq!(b.save_state().unwrap(), state, "{:?} {}: a restored env saves the same state", s.preset, s.game.canonical());

        let mut twin = actions.clone();
        let want = play(a.as_mut(), &mut actions, after);
        let got = play(b.as_mut(), &mut twin, after);
        played += after;
        for (t, (w, g)) in want.iter().zip(&got).enumerate() {
            let what = format!("{:?} {}: step {t} after restoring at step {cut}", s.preset, s.game.canonical());
            assert_eq!(w.outcome, g.outcome, "{what}: outcomes differ");
            assert!(w.frame == g.frame, "{what}: frames differ in {} pixels", differing(&w.frame, &g.frame));
            match (&w.reset_frame, &g.reset_frame) {
                (Some(a), Some(b)) => assert!(a == b, "{what}: reset frames differ in {} pixels", differing(a, b)),
                (a, b) => assert_eq!(a.is_some(), b.is_some()),
            }
        }
        game_ends += want.iter().filter(|r| r.outcome.game_over.is_some()).count();
    }
    game_ends
}

#[test]
fn restored_games_continue_identically() {
    let started = Instant::now();
    // gala: no-op starts, episodic life and FIRE resets (Breakout has lives and needs FIRE).
    let ends = check_resume(&settings("breakout", EnvPreset::Gala, 7), 3, &[5, 260, 900], 500);
    assert!(ends >= 1, "the comparison covers a Breakout game end");
    let ends = check_resume(&settings("pong", EnvPreset::Gala, 8), 0, &[40], 400);
    assert_eq!(ends, 0, "Pong games are long; this checks mid-game state");
    // machado: sticky actions 0.25, whose draws must resume mid-stream.
    let ends = check_resume(&settings("breakout", EnvPreset::Machado, 9), 5, &[3, 333, 1200], 500);
    assert!(ends >= 1, "the comparison covers a Breakout game end with sticky actions");
    check_resume(&settings("pong", EnvPreset::Machado, 10), 1, &[123], 400);
    eprintln!("restored_games_continue_identically: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn damaged_states_are_refused_and_the_env_keeps_playing() {
    let s = settings("breakout", EnvPreset::Machado, 4);
    let mut a = make_env(&s, 0).unwrap();
    let mut frame = vec![0u8; FRAME_BYTES];
    a.reset(&mut frame);
    let mut actions = PhiloxStream::new(3, 0, Purpose::Action);
    play(a.as_mut(), &mut actions, 50);
    let state = a.save_state().unwrap();
    let mut b = make_env(&s, 0).unwrap();
    b.load_state(&state).unwrap();

    let mut flipped = state.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let mut future = state.clone();
    future[16] = 9; // format version 9
    let mut damaged: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", state[..state.len() - 9].to_vec()),
        ("header only", state[..40].to_vec()),
        ("one byte flipped", flipped),
        ("newer format", future),
        ("padded", [state.as_slice(), &[0u8; 8]].concat()),
        ("catch's state", {
            let mut c = make_env(&settings("catch", EnvPreset::Gala, 1), 0).unwrap();
            c.reset(&mut frame);
            c.save_state().unwrap()
        }),
    ];
    let mut pong = make_env(&settings("pong", EnvPreset::Machado, 4), 0).unwrap();
    pong.reset(&mut frame);
    damaged.push(("Pong's state", pong.save_state().unwrap()));
    for (what, bytes) in &damaged {
        let err = b.load_state(bytes).expect_err(what).to_string();
        assert!(err.contains("breakout") && err.contains("rejected"), "{what}: unhelpful error `{err}`");
    }
    assert!(b.load_state(&damaged[7].1).unwrap_err().to_string().contains("`pong`"), "names the other game");
    // Nothing was changed by the refused loads: B still continues exactly as A.
    let mut twin = actions.clone();
    assert_eq!(play(a.as_mut(), &mut actions, 300), play(b.as_mut(), &mut twin, 300));

    // The emulator's own part is checked before ALE sees it (ALE would abort the process).
    let rom = roms::find_installed("breakout").unwrap();
    let mut ale = Ale::new(&rom, AleOptions { seed: 5, repeat_action_probability: 0.0 }).unwrap();
    let good = ale.save_system_state().unwrap();
    for bad in [&good[..good.len() - 1], &good[..20], &[0u8; 36][..], &[good.as_slice(), &[1]].concat()[..]] {
        assert!(ale.restore_system_state(bad).is_err(), "{} bytes accepted", bad.len());
    }
    ale.restore_system_state(&good).unwrap();
    let pong_rom = roms::find_installed("pong").unwrap();
    let pong_state = Ale::new(&pong_rom, AleOptions { seed: 5, repeat_action_probability: 0.0 }).unwrap().save_system_state().unwrap();
    let err = ale.restore_system_state(&pong_state).unwrap_err().to_string();
    assert!(err.contains(&pong_rom.md5.to_ascii_lowercase()), "names the other ROM: {err}");
}

/// 2 agents × 2 envs × 5 steps on Pong.
fn pong_config(updates: u64, frames_per_update: u64) -> Config {
    Config {
        agents: 2,
        envs_per_agent: 2,
        n_steps: 5,
        frames: frames_per_update * updates,
        seed: 21,
        game: "pong".into(),
        backend: BackendKind::Cpu,
        threads: 2,
        metrics_every: 1,
        ..Config::default()
    }
}

#[test]
fn pong_training_resumes_bit_exactly() {
    settings("pong", EnvPreset::Gala, 0);
    let started = Instant::now();
    let fpu = Trainer::new(&pong_config(1, 1)).unwrap().frames_per_update();
    assert_eq!(fpu, 2 * 2 * 5 * 4);
    let k = 4;
    let want = Trainer::new(&pong_config(2 * k, fpu)).unwrap().train(None, &mut NoProgress).unwrap();

    let mut first = Trainer::new(&pong_config(k, fpu)).unwrap();
    first.train(None, &mut NoProgress).unwrap();
    // Through the checkpoint's bytes, as a resume from disk reads them.
    let bytes = first.checkpoint(0.0).unwrap().to_bytes().unwrap();
    let ck = Checkpoint::from_bytes(&bytes, std::path::Path::new("pong-test.safetensors")).unwrap();
    assert_eq!(ck.env_states.as_ref().map(|s| s.len()), Some(4), "Atari envs save their states");
    let (mut resumed, exact) = Trainer::from_checkpoint(&ck, &pong_config(2 * k, fpu)).unwrap();
    assert!(exact, "the resume is exact");
    let got = resumed.train(None, &mut NoProgress).unwrap();
    assert_eq!(got.params_sha256, want.params_sha256, "K + resume + K Pong updates differ from 2K straight");
    assert_eq!((got.updates, got.frames), (want.updates, want.frames));
    eprintln!("pong_training_resumes_bit_exactly: {:.1} s", started.elapsed().as_secs_f64());
}

/// Pipelined runs (the segment in flight, the actor's parameters) and lock-step runs with agents
/// on threads (a cut of per-agent states) resume Pong exactly too.
#[test]
fn pong_pipelined_and_threaded_runs_resume_bit_exactly() {
    use gala_gpu::algo::async_gossip::{train_async, train_async_session, AsyncSession};
    settings("pong", EnvPreset::Gala, 0);
    let started = Instant::now();
    let fpu = 2 * 2 * 5 * 4;
    let k = 2;
    // Pipelined, stopped mid-run (a segment in flight) through the checkpoint's bytes.
    let pipelined = |updates| Config { pipeline: true, ..pong_config(updates, fpu) };
    let want = Trainer::new(&pipelined(2 * k)).unwrap().train(None, &mut NoProgress).unwrap();
    let mut first = Trainer::new(&pipelined(2 * k)).unwrap();
    for _ in 0..k {
        first.update().unwrap();
    }
    let bytes = first.checkpoint(0.0).unwrap().to_bytes().unwrap();
    let ck = Checkpoint::from_bytes(&bytes, std::path::Path::new("pong-pipelined.safetensors")).unwrap();
    assert!(ck.pipeline.pending.is_some());
    let (mut resumed, exact) = Trainer::from_checkpoint(&ck, &pipelined(2 * k)).unwrap();
    assert!(exact);
    assert_eq!(resumed.train(None, &mut NoProgress).unwrap().params_sha256, want.params_sha256, "pipelined Pong resume");

    // Lock-step on threads: K rounds with a run folder, resume to 2K.
    let threaded = |updates| Config { agent_threads: true, ..pong_config(updates, fpu) };
    let want = train_async(&threaded(2 * k), None, &mut NoProgress).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = threaded(k);
    let mut run = gala_gpu::run::RunDir::create(dir.path(), "pong", "gala", c.seed, &c.to_toml()).unwrap();
    train_async(&c, Some(&mut run), &mut NoProgress).unwrap();
    let ck = Checkpoint::load(run.path()).unwrap();
    assert_eq!((ck.updates, ck.env_states.as_ref().map(Vec::len)), (k, Some(4)));
    let session = AsyncSession { resume: Some(&ck), ..AsyncSession::default() };
    let got = train_async_session(&threaded(2 * k), None, &mut NoProgress, &session).unwrap();
    assert!(got.exact_resume);
    assert_eq!(got.summary.params_sha256, want.params_sha256, "lock-step threaded Pong resume");
    eprintln!("pong_pipelined_and_threaded_runs_resume_bit_exactly: {:.1} s", started.elapsed().as_secs_f64());
}

/// Random Breakout until the game ends; returns (training dones, lives lost).
fn dones_in_one_game(s: &EnvSettings) -> usize {
    let mut v = make_vec_env(s, 1, 1).unwrap();
    let mut rng = PhiloxStream::new(6, 0, Purpose::Action);
    let mut dones = 0;
    for _ in 0..50_000 {
        v.step(&[rng.below(v.num_actions() as u32)]).unwrap();
        dones += (v.dones()[0] == 1.0) as usize;
        if !v.drain_finished().is_empty() {
            return dones;
        }
    }
    panic!("a random Breakout game did not end");
}

#[test]
fn episodic_life_can_be_overridden() {
    let gala = settings("breakout", EnvPreset::Gala, 2);
    assert_eq!(dones_in_one_game(&gala), 5, "the gala preset ends a training episode per life");
    let whole = EnvSettings { episodic_life: Some(false), ..gala.clone() };
    assert_eq!(dones_in_one_game(&whole), 1, "with episodic life off, only the game over is a done");
    let machado = settings("breakout", EnvPreset::Machado, 2);
    assert_eq!(dones_in_one_game(&EnvSettings { episodic_life: Some(true), ..machado }), 5);
    // Evaluation plays whole games whatever the preset.
    let mut config = Config { game: "breakout".into(), ..Config::default() };
    config.preset = EnvPreset::Gala;
    assert_eq!(gala_gpu::eval::env_settings(&config, 3).unwrap().episodic_life, Some(false));
}

/// Trains one tiny update on `game`, saves a checkpoint and evaluates one game with it.
fn evaluate_one_game(game: &str, dir: &std::path::Path) -> gala_gpu::eval::EvalReport {
    settings(game, EnvPreset::Gala, 0);
    let config = Config { game: game.into(), ..pong_config(1, 80) };
    let mut t = Trainer::new(&config).unwrap();
    t.train(None, &mut NoProgress).unwrap();
    let path = dir.join(format!("{game}.safetensors"));
    t.checkpoint(0.0).unwrap().save(&path).unwrap();
    let opts = gala_gpu::eval::EvalOptions { source: path, episodes: 1, greedy: false, gif: None, agent: 1, seed: None, threads: 2 };
    gala_gpu::eval::evaluate(&opts).unwrap()
}

#[test]
fn eval_plays_whole_games_from_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // Breakout has lives: its game only ends (and is scored) if a lost life does not end the
    // evaluation episode; FIRE to serve again is the policy's to press.
    let started = Instant::now();
    let report = evaluate_one_game("breakout", dir.path());
    assert_eq!(report.scores.len(), 1);
    assert!(report.scores[0] >= 0.0 && report.scores[0].fract() == 0.0, "a Breakout score: {}", report.scores[0]);
    assert!(report.describe().contains("human-normalized"), "{}", report.describe());
    eprintln!("eval, one Breakout game: {:.1} s", started.elapsed().as_secs_f64());
    // Pong: a game to 21 points (a near-random policy loses about 21 to 0).
    let started = Instant::now();
    let report = evaluate_one_game("pong", dir.path());
    let score = report.scores[0];
    assert!((-21.0..=21.0).contains(&score) && score.fract() == 0.0 && score != 0.0, "a Pong score: {score}");
    eprintln!("eval, one Pong game: {:.1} s", started.elapsed().as_secs_f64());
}
