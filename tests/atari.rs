//! Atari environment tests. They need the ROMs; the first test to run installs them through the
//! library's own `roms::install()` (pip download of the pinned ale-py wheel) when none are
//! present, so CI provisions ROMs exactly the way users do.

use gala_gpu::env::atari::ale::{Ale, AleOptions};
use gala_gpu::env::atari::preprocess::{max_into, AreaResize};
use gala_gpu::env::atari::{roms, AtariConfig, AtariEnv, MaxPool};
use gala_gpu::env::{make_env, make_vec_env, EnvPreset, EnvSettings, Environment, GameId, FRAME_BYTES};
use gala_gpu::model::{FRAME_STACK, OBS_BYTES};
use gala_gpu::rng::{PhiloxStream, Purpose};
use std::path::PathBuf;
use std::sync::Mutex;

static PROVISION: Mutex<bool> = Mutex::new(false);

fn rom(game: &str) -> roms::VerifiedRom {
    let mut done = PROVISION.lock().unwrap_or_else(|p| p.into_inner());
    if !*done {
        if !roms::any_installed() {
            let report = roms::install().expect("installing the ROMs (needs python3 -m pip and PyPI)");
            assert!(report.playable >= 70, "{report:?}");
        }
        *done = true;
    }
    roms::find_installed(game).unwrap()
}

fn settings(game: &str, preset: EnvPreset, seed: u64) -> EnvSettings {
    let id = GameId::parse(game).unwrap();
    rom(id.canonical());
    EnvSettings::new(id, preset, seed)
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gala-atari-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Exact area average in f64: each source pixel weighted by the area of it inside the output
/// pixel's footprint [y·sh, (y+1)·sh) × [x·sw, (x+1)·sw), divided by the footprint's area.
fn reference_resize(src: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let (sh, sw) = (h as f64 / oh as f64, w as f64 / ow as f64);
    let overlap = |a0: f64, a1: f64, b0: f64, b1: f64| (a1.min(b1) - a0.max(b0)).max(0.0);
    let mut out = vec![0.0; oh * ow];
    for y in 0..oh {
        for x in 0..ow {
            let (y0, y1, x0, x1) = (y as f64 * sh, (y + 1) as f64 * sh, x as f64 * sw, (x + 1) as f64 * sw);
            let mut acc = 0.0;
            for sy in 0..h {
                let wy = overlap(y0, y1, sy as f64, sy as f64 + 1.0);
                if wy == 0.0 {
                    continue;
                }
                for sx in 0..w {
                    let wx = overlap(x0, x1, sx as f64, sx as f64 + 1.0);
                    acc += wy * wx * src[sy * w + sx] as f64;
                }
            }
            out[y * ow + x] = acc / (sh * sw);
        }
    }
    out
}

fn assert_matches_reference(ours: &[u8], reference: &[f64]) {
    for (i, (&o, &r)) in ours.iter().zip(reference).enumerate() {
        assert!((o as f64 - r).abs() <= 0.5 + 1e-9, "pixel {i}: ours {o}, exact mean {r}");
        if (r - r.floor() - 0.5).abs() > 1e-6 {
            assert_eq!(o as f64, r.round(), "pixel {i}: exact mean {r}");
        }
    }
}

#[test]
fn pong_and_breakout_reset_and_step() {
    for (game, actions) in [("PongNoFrameskip-v4", 6), ("ALE/Breakout-v5", 4)] {
        let mut v = make_vec_env(&settings(game, EnvPreset::Gala, 3), 3, 2).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v.num_actions(), actions, "{game}: minimal action set");
        assert_eq!(v.frames_per_step(), 4);
        let obs: &[u8] = v.observations();
        assert_eq!(obs.len(), 3 * FRAME_STACK * 84 * 84);
        let newest = &obs[(FRAME_STACK - 1) * FRAME_BYTES..OBS_BYTES];
        assert!(newest.iter().any(|&p| p > 0), "{game}: the first frame is not blank");
        let mut rng = PhiloxStream::new(1, 0, Purpose::Action);
        for _ in 0..150 {
            let a: Vec<u32> = (0..3).map(|_| rng.below(actions as u32)).collect();
            v.step(&a).unwrap();
            let r: &[f32] = v.rewards();
            let d: &[f32] = v.dones();
            assert_eq!((r.len(), d.len()), (3, 3));
            assert!(d.iter().all(|&x| x == 0.0 || x == 1.0));
            assert!(r.iter().all(|x| x.fract() == 0.0), "rewards are unclipped game points");
        }
        assert!(v.step(&[0, 0, actions as u32]).is_err(), "out-of-range action is an error");
    }
}

#[test]
fn breakout_episodic_life_and_stack_zeroing() {
    // Random play on Breakout: every lost life ends a training episode (done, no game_over),
    // the game ends after 5 lives, and the reported score is the sum of all rewards over them.
    let s = settings("breakout", EnvPreset::Gala, 11);
    let mut v = make_vec_env(&s, 1, 1).unwrap();
    let mut rng = PhiloxStream::new(5, 0, Purpose::Action);
    let (mut dones, mut sum, mut steps) = (0, 0.0f64, 0);
    let game = loop {
        v.step(&[rng.below(4)]).unwrap();
        steps += 1;
        assert!(steps < 20_000, "a random Breakout game ends");
        sum += v.rewards()[0] as f64;
        if v.dones()[0] == 1.0 {
            dones += 1;
            let obs = v.observations();
            assert!(obs[..(FRAME_STACK - 1) * FRAME_BYTES].iter().all(|&p| p == 0), "stack zeroed on done");
            assert!(obs[(FRAME_STACK - 1) * FRAME_BYTES..].iter().any(|&p| p > 0), "new episode's first frame");
        } else if steps > 1 {
            let obs = v.observations();
            assert!(obs[(FRAME_STACK - 2) * FRAME_BYTES..(FRAME_STACK - 1) * FRAME_BYTES].iter().any(|&p| p > 0));
        }
        if let Some(f) = v.drain_finished().pop() {
            break f;
        }
    };
    assert_eq!(dones, 5, "one training episode per life");
    // The score also counts rewards earned during FIRE/no-op reset steps, which the agent never
    // sees, so it is at least the sum of the rewards the agent got.
    assert!(game.end.score >= sum && game.end.score.fract() == 0.0, "score {} vs agent rewards {sum}", game.end.score);

    // Without episodic life (machado), the same game gives one done, at game over.
    let mut v = make_vec_env(&settings("breakout", EnvPreset::Machado, 11), 1, 1).unwrap();
    let mut dones = 0;
    loop {
        v.step(&[rng.below(4)]).unwrap();
        dones += v.dones()[0] as i32;
        if !v.drain_finished().is_empty() {
            break;
        }
    }
    assert_eq!(dones, 1);
}

/// One agent step on a bare emulator: `code` for 4 frames, `grab(ale, slot)` after frames 3
/// (slot 0) and 4 (slot 1), as MaxAndSkip keeps them; returns the summed reward.
fn bare_step(ale: &mut Ale, code: i32, mut grab: impl FnMut(&mut Ale, usize)) -> i32 {
    let mut reward = 0;
    for i in 0..4 {
        reward += ale.act(code);
        if i >= 2 {
            grab(ale, i - 2);
        }
    }
    reward
}

#[test]
fn frames_are_the_max_of_the_last_two_screens_resized() {
    // An AtariEnv without no-ops, fire reset or sticky actions against a bare emulator driven
    // with the same action codes: each agent frame must equal the f64 area average of the
    // pixel-wise max of raw grey frames 3 and 4 (the grey max-pool: Gymnasium's
    // AtariPreprocessing, the machado preset's).
    let rom = rom("pong");
    let config = AtariConfig {
        noop_max: 0,
        episodic_life: false,
        fire_reset: false,
        repeat_action_probability: 0.0,
        max_episode_frames: 0,
        ..AtariConfig::for_preset(EnvPreset::Machado, "pong")
    };
    assert_eq!(config.max_pool, MaxPool::Grey, "machado keeps Gymnasium's grey max-pool");
    let mut env = AtariEnv::new(&rom, config, 9, 0).unwrap();
    let codes = env.action_codes().to_vec();
    let mut ale = Ale::new(&rom, AleOptions { seed: 123, repeat_action_probability: 0.0 }).unwrap();
    let (h, w) = (ale.screen_height(), ale.screen_width());
    assert_eq!((h, w), (210, 160));
    let mut frame = vec![0u8; FRAME_BYTES];
    env.reset(&mut frame);
    ale.reset_game();
    let mut raw = [vec![0u8; h * w], vec![0u8; h * w]];
    ale.grayscale_into(&mut raw[1]);
    assert_matches_reference(&frame, &reference_resize(&raw[1], h, w, 84, 84));
    let mut checked_flicker = false;
    for t in 0..60u32 {
        let a = (t / 7) % codes.len() as u32;
        let out = env.step(a, &mut frame);
        let reward = bare_step(&mut ale, codes[a as usize], |ale, slot| ale.grayscale_into(&mut raw[slot]));
        assert_eq!(out.reward, reward as f32);
        let pooled: Vec<u8> = raw[0].iter().zip(&raw[1]).map(|(a, b)| *a.max(b)).collect();
        checked_flicker |= raw[0] != raw[1];
        if t % 6 == 0 {
            assert_matches_reference(&frame, &reference_resize(&pooled, h, w, 84, 84));
        }
        // And the library pieces on their own.
        let mut ours = vec![0u8; h * w];
        max_into(&raw[0], &raw[1], &mut ours);
        assert_eq!(ours, pooled);
    }
    assert!(checked_flicker, "frames 3 and 4 differed at least once");

    // The resize alone, on noise (every pixel value, many fractional cases) and odd sizes.
    let mut rng = PhiloxStream::new(2, 0, Purpose::Init);
    for (sh, sw) in [(210, 160), (250, 160), (97, 85)] {
        let src: Vec<u8> = (0..sh * sw).map(|_| rng.next_u32() as u8).collect();
        let mut r = AreaResize::new(sh, sw, 84, 84).unwrap();
        let mut dst = vec![0u8; 84 * 84];
        r.apply(&src, &mut dst);
        assert_matches_reference(&dst, &reference_resize(&src, sh, sw, 84, 84));
    }
}

/// baselines' `WarpFrame` grey: OpenCV 4's `COLOR_RGB2GRAY` on uint8, written out here from
/// OpenCV's `RGB2Gray<uchar>` (imgproc/src/color_rgb.simd.hpp: RY15, GY15, BY15 with
/// gray_shift 15, CV_DESCALE = add half, shift) independently of the library. BY15 is 3735,
/// not round(0.114·2^15) = 3736, so that the weights sum to exactly 2^15.
fn opencv_grey(r: u8, g: u8, b: u8) -> u8 {
    const SHIFT: u32 = 15;
    let (wr, wg, wb) = (9798u32, 19235u32, 3735u32);
    assert_eq!(wr + wg + wb, 1 << SHIFT);
    ((r as u32 * wr + g as u32 * wg + b as u32 * wb + (1 << (SHIFT - 1))) >> SHIFT) as u8
}

/// baselines' observation of two RGB screens: channel-wise max (MaxAndSkipEnv), then grey.
fn baselines_pool(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.chunks_exact(3).zip(b.chunks_exact(3)).map(|(x, y)| opencv_grey(x[0].max(y[0]), x[1].max(y[1]), x[2].max(y[2]))).collect()
}

#[test]
fn gala_and_dqn_frames_are_baselines_rgb_max_then_grey() {
    // The `gala` preset's env (without no-ops, fire reset and the frame cap, so a bare
    // emulator can follow it) against frames built from ALE's RGB screens by baselines'
    // formulas: max over the RGB frames 3 and 4 of each step, OpenCV grey, area resize.
    for game in ["pong", "breakout"] {
        let rom = rom(game);
        let preset = AtariConfig::for_preset(EnvPreset::Gala, game);
        assert_eq!(preset.max_pool, MaxPool::Rgb);
        assert_eq!(AtariConfig::for_preset(EnvPreset::Dqn, game).max_pool, MaxPool::Rgb);
        let config = AtariConfig { noop_max: 0, fire_reset: false, episodic_life: false, max_episode_frames: 0, ..preset };
        let mut env = AtariEnv::new(&rom, config, 4, 0).unwrap();
        let codes = env.action_codes().to_vec();
        let mut ale = Ale::new(&rom, AleOptions { seed: 77, repeat_action_probability: 0.0 }).unwrap();
        let (h, w) = (ale.screen_height(), ale.screen_width());
        let mut frame = vec![0u8; FRAME_BYTES];
        env.reset(&mut frame);
        ale.reset_game();
        let mut rgb = [vec![0u8; 3 * h * w], vec![0u8; 3 * h * w]];
        let mut grey = [vec![0u8; h * w], vec![0u8; h * w]];
        ale.rgb_into(&mut rgb[1]);
        // The reset observation is one raw frame, converted the same way.
        assert_matches_reference(&frame, &reference_resize(&baselines_pool(&rgb[1], &rgb[1]), h, w, 84, 84));
        let (mut differs, mut order_matters, mut steps) = (0, 0, 0);
        for t in 0..120u32 {
            // Hold each action for a while so paddles actually travel.
            let a = (t / 9) % codes.len() as u32;
            let out = env.step(a, &mut frame);
            let reward = bare_step(&mut ale, codes[a as usize], |ale, slot| {
                ale.rgb_into(&mut rgb[slot]);
                ale.grayscale_into(&mut grey[slot]);
            });
            assert_eq!(out.reward, reward as f32);
            let pooled = baselines_pool(&rgb[0], &rgb[1]);
            assert_matches_reference(&frame, &reference_resize(&pooled, h, w, 84, 84));
            // How often the order matters (grey each frame, with the same grey formula, then
            // the max), and how often ALE's grey max-pool would have given another frame.
            let g: Vec<Vec<u8>> = rgb.iter().map(|f| baselines_pool(f, f)).collect();
            let grey_first: Vec<u8> = g[0].iter().zip(&g[1]).map(|(a, b)| *a.max(b)).collect();
            order_matters += usize::from(grey_first != pooled);
            let grey_pool: Vec<u8> = grey[0].iter().zip(&grey[1]).map(|(a, b)| *a.max(b)).collect();
            let mut grey_frame = vec![0u8; FRAME_BYTES];
            AreaResize::new(h, w, 84, 84).unwrap().apply(&grey_pool, &mut grey_frame);
            differs += usize::from(grey_frame != frame);
            steps += 1;
        }
        eprintln!("{game}: {steps} steps; max-then-grey ≠ grey-then-max on {order_matters} screens; ALE's grey max-pool differs from baselines' in {differs} frames");
        if game == "pong" {
            assert!(order_matters > 0, "pong: pooling RGB or grey never differed, so this test shows nothing");
        }
    }
}

#[test]
fn damaged_roms_are_refused_and_the_process_lives() {
    let good = rom("pong");
    let bytes = std::fs::read(&good.path).unwrap();
    let dir = scratch_dir("bad");
    let truncated = dir.join("pong.bin");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let flipped_dir = scratch_dir("flip");
    let flipped = flipped_dir.join("pong.bin");
    let mut b = bytes.clone();
    b[100] ^= 0x40;
    std::fs::write(&flipped, &b).unwrap();
    for bad in [&truncated, &flipped] {
        let err = roms::identify(bad).unwrap_err().to_string();
        assert!(err.contains("refusing ROM") && err.contains("corrupt"), "{err}");
        let mut s = settings("pong", EnvPreset::Gala, 0);
        s.rom = Some(bad.clone());
        let err = make_env(&s, 0).err().expect("damaged ROM must be refused").to_string();
        assert!(err.contains("refusing ROM"), "{err}");
        assert!(GameId::from_rom(bad).is_err());
    }
    assert!(roms::identify(&dir.join("missing.bin")).is_err());
    // Still alive: a good ROM under a foreign name loads (staged under its canonical name).
    let renamed = dir.join("my-game.a26");
    std::fs::write(&renamed, &bytes).unwrap();
    assert_eq!(GameId::from_rom(&renamed).unwrap(), GameId::Atari("pong".into()));
    let mut s = settings("pong", EnvPreset::Gala, 0);
    s.rom = Some(renamed.clone());
    let mut env = make_env(&s, 0).unwrap();
    assert_eq!(env.num_actions(), 6);
    let mut frame = vec![0u8; FRAME_BYTES];
    env.reset(&mut frame);
    // The right ROM for another game is refused too.
    s.game = GameId::parse("breakout").unwrap();
    assert!(make_env(&s, 0).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&flipped_dir);
}

fn trajectory(s: &EnvSettings, envs: usize, threads: usize, steps: u32) -> Vec<u8> {
    let mut v = make_vec_env(s, envs, threads).unwrap();
    let k = v.num_actions() as u32;
    let mut rng = PhiloxStream::new(77, 0, Purpose::Action);
    let mut stream = v.observations().to_vec();
    for _ in 0..steps {
        let a: Vec<u32> = (0..envs).map(|_| rng.below(k)).collect();
        v.step(&a).unwrap();
        stream.extend_from_slice(v.observations());
        stream.extend(v.rewards().iter().map(|&r| r as i8 as u8));
    }
    stream
}

#[test]
fn same_seed_same_stream_any_thread_count() {
    let s = settings("pong", EnvPreset::Gala, 21);
    let a = trajectory(&s, 4, 1, 80);
    let b = trajectory(&s, 4, 2, 80);
    assert!(a == b, "same seed, 1 vs 2 threads: identical observations");
    // Built (emulators created and reset) on 4 threads at once, as a big vector env is.
    assert!(trajectory(&s, 8, 1, 30) == trajectory(&s, 8, 4, 30), "same seed, 8 envs built on 1 vs 4 threads");
    let other = trajectory(&settings("pong", EnvPreset::Gala, 22), 4, 2, 80);
    assert!(a != other, "another seed gives other no-op starts");
}

#[test]
fn sticky_actions_change_trajectories() {
    let rom = rom("breakout");
    let base = AtariConfig::for_preset(EnvPreset::Machado, "breakout");
    assert_eq!(base.repeat_action_probability, 0.25);
    let run = |config: &AtariConfig, index: u64| {
        let mut env = AtariEnv::new(&rom, config.clone(), 4, index).unwrap();
        let mut frame = vec![0u8; FRAME_BYTES];
        env.reset(&mut frame);
        let mut out = frame.clone();
        for t in 0..120u32 {
            env.step([1, 2, 3, 0][(t as usize / 3) % 4], &mut frame);
            out.extend_from_slice(&frame);
        }
        out
    };
    let no_sticky = AtariConfig { repeat_action_probability: 0.0, ..base.clone() };
    let plain = run(&no_sticky, 0);
    assert_eq!(plain, run(&no_sticky, 1), "p = 0 and no no-ops: the game is deterministic");
    let sticky = run(&base, 0);
    assert_ne!(sticky, plain, "p = 0.25 changes the trajectory");
    assert_eq!(sticky, run(&base, 0), "same seed and index: same sticky draws");
    assert_ne!(sticky, run(&base, 1), "another env index: other sticky draws");
}

#[test]
fn presets_and_names() {
    assert_eq!(GameId::parse("SpaceInvadersNoFrameskip-v4").unwrap(), GameId::Atari("space_invaders".into()));
    assert_eq!(GameId::parse("catch").unwrap(), GameId::Catch);
    assert!(GameId::parse("NotAGame").is_err());
    assert_eq!(AtariConfig::for_preset(EnvPreset::Gala, "space_invaders").max_episode_frames, 300_000);
    let g = AtariConfig::for_preset(EnvPreset::Gala, "pong");
    assert_eq!((g.noop_max, g.episodic_life, g.fire_reset, g.max_episode_frames), (30, true, true, 400_000));
    let m = AtariConfig::for_preset(EnvPreset::Machado, "pong");
    assert_eq!((m.episodic_life, m.max_episode_frames), (false, 108_000));
    assert_eq!((g.max_pool, m.max_pool), (MaxPool::Rgb, MaxPool::Grey), "gala: baselines' RGB max-pool; machado: Gymnasium's grey one");
    let list = roms::list().unwrap();
    let _ = rom("pong");
    let list = if list.is_empty() { roms::list().unwrap() } else { list };
    let pong = list.iter().find(|e| e.game == "pong").expect("pong listed");
    assert!(pong.md5_ok && pong.playable);
}

/// A saved env state of format version 1 (written before the RGB max-pool existed: its raw
/// screens are grey, and it has no max-pool byte) loads into a `gala` env as the grey form, so
/// a run saved then continues exactly with the observations it was trained on.
#[test]
fn version_1_states_continue_with_the_grey_max_pool() {
    let rom = rom("pong");
    // No no-ops or FIRE steps: their count shifts the phase of Pong's every-other-frame
    // updates against the 4-frame steps, and in some phases the two max-pool forms agree.
    let gala = AtariConfig { noop_max: 0, fire_reset: false, ..AtariConfig::for_preset(EnvPreset::Gala, "pong") };
    let mut old = AtariEnv::new(&rom, AtariConfig { max_pool: MaxPool::Grey, ..gala.clone() }, 5, 0).unwrap();
    let mut frame = vec![0u8; FRAME_BYTES];
    old.reset(&mut frame);
    for t in 0..40u32 {
        old.step(t / 5 % 6, &mut frame);
    }
    let v2 = old.save_state().unwrap();
    // Version 2 → 1: drop the max-pool byte after the previous action, fix version, length and
    // the FNV-1a checksum (layout: `STATE_MAGIC` in src/env/atari/mod.rs).
    let name_len = v2[24] as usize;
    let at = 24 + 1 + name_len + 4 + 4 + 4 + 1 + 8 * 5 + 5 + 5 + 4;
    assert_eq!(v2[at], 0, "the grey form is byte 0");
    let mut v1 = [&v2[..at], &v2[at + 1..v2.len() - 8]].concat();
    v1[16..20].copy_from_slice(&1u32.to_le_bytes());
    let len = u32::from_le_bytes(v1[20..24].try_into().unwrap()) - 1;
    v1[20..24].copy_from_slice(&len.to_le_bytes());
    let fnv = v1.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    v1.extend_from_slice(&fnv.to_le_bytes());

    let mut resumed = AtariEnv::new(&rom, gala.clone(), 9, 3).unwrap();
    assert_eq!(resumed.config().max_pool, MaxPool::Rgb);
    resumed.load_state(&v1).unwrap();
    assert_eq!(resumed.config().max_pool, MaxPool::Grey, "a version 1 state keeps the grey max-pool");
    let mut rgb = AtariEnv::new(&rom, gala, 9, 3).unwrap();
    rgb.load_state(&{
        let mut s = v2.clone();
        s[at] = 1; // the same state claiming the RGB form (its screens are grey: only the next steps matter)
        let n = s.len() - 8;
        let fnv = s[..n].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        s[n..].copy_from_slice(&fnv.to_le_bytes());
        s
    })
    .unwrap();
    let (mut f_old, mut f_new, mut f_rgb) = (vec![0u8; FRAME_BYTES], vec![0u8; FRAME_BYTES], vec![0u8; FRAME_BYTES]);
    let mut rgb_differs = false;
    for t in 0..60u32 {
        let a = t / 4 % 6;
        let (o, n) = (old.step(a, &mut f_old), resumed.step(a, &mut f_new));
        rgb.step(a, &mut f_rgb);
        assert_eq!((o.reward, o.done), (n.reward, n.done), "step {t}");
        assert_eq!(f_old, f_new, "step {t}: the resumed env's frame differs from the uninterrupted one");
        rgb_differs |= f_rgb != f_old;
    }
    assert!(rgb_differs, "the RGB form would have given other frames, so the test distinguishes them");
}
