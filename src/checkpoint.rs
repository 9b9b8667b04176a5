//! Checkpoints: one safetensors file holding everything a run needs to continue bit for bit.
//!
//! Tensors (PyTorch names and layouts, little-endian, C order):
//! * `agent{r}.{name}` — agent r's parameters, `name` as a PyTorch module with attributes
//!   conv1, conv2, conv3, fc, actor, critic names them (`agent0.conv1.weight` is [32, 4, 8, 8]).
//!   One tensor per agent and name (not a leading agent dimension) so that
//!   `{k[7:]: v for k, v in load_file(p).items() if k.startswith("agent0.")}` is directly a
//!   `state_dict` for `load_state_dict`.
//! * `optim.agent{r}.{name}.square_avg` — RMSprop's running average of squared gradients
//!   (PyTorch's `square_avg` state), same shape as the parameter.
//! * `env.observations` — the vector env's frame stacks, u8 [envs][4][84][84];
//!   `env.state.{i}` — environment i's saved state (opaque bytes, `Environment::save_state`).
//! * `stats.recent_games` (f64 [n, 3]: agent step, global env index, score of the last ≤100
//!   finished games, oldest first; steps and indices are exact in f64) and
//!   `stats.agent{r}.recent_scores`.
//!
//! * Pipelined runs only (`pipeline = true`), what is in flight between two updates:
//!   - when a collected segment awaits learning (metadata `pipeline_segment` = `stale` or
//!     `on-policy`, the latter meaning that its behaviour policy is the learner's current one):
//!     `pipeline.obs` (u8 [agents][n_steps][envs][4][84][84]), `pipeline.actions` (i32),
//!     `pipeline.rewards` (as learned from, i.e. clipped where the preset clips),
//!     `pipeline.dones` and `pipeline.log_probs` (log μ(a|s) of the behaviour parameters), all
//!     f32 [agents][n_steps][envs] except the actions, and `pipeline.bootstrap_values`
//!     (f32 [agents][envs], V(s_T) by the behaviour parameters). The environments, frame stacks
//!     and `step` are already past that segment, and `frames` counts it.
//!   - when the actor's parameters are not the learner's (metadata `pipeline_actor` = `behind`;
//!     after a run ended by its budget, the actor still holds the parameters before the last
//!     update and collects the next segment with them, exactly as an uninterrupted run would):
//!     `pipeline.actor_params` (f32 [agents][P], arena order). Otherwise the actor holds the
//!     learner's parameters.
//!
//! `__metadata__` holds the resolved config (TOML), the counters (agent steps = the action
//! RNG's step counter, updates = the gossip round, episodes), and `sha256`: a digest over every
//! tensor (name, dtype, shape, bytes) and every other metadata entry, checked on load, so a
//! corrupt or truncated file is refused instead of silently resuming from garbage.
//!
//! Asynchronous runs (agents on their own threads) write the same format: agents' tensors in
//! agent order, environments in global order, the games of all agents merged. A checkpoint
//! taken at a cut (every agent completed the same round: `save_every`, the end, Ctrl-C) has
//! uniform counters. One saved after a failure holds each agent's state after its own last
//! completed round, not a cut: then `agent_updates` (comma-separated, agent order) gives each
//! agent's completed rounds, its agent steps being rounds × n_steps, while `updates` and `step`
//! are the slowest agent's.
//! Gossip messages in flight are not saved: a resumed run starts with empty mailboxes.
//!
//! Files written before these additions (no `pipeline_*` or `agent_updates` entries) load as
//! before: nothing in flight, every agent at `updates`.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{NetSpec, ParamLayout};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The checkpoint's file name inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const FORMAT: &str = "gala-gpu checkpoint 1";

/// Everything in a checkpoint, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: Config,
    /// The game's action count (the policy head's width).
    pub actions: usize,
    /// Learners as run (`a2c`: 1) and simulators per learner.
    pub agents: usize,
    pub envs_per_agent: usize,
    /// [agents][P] in the arena order of `ParamLayout`.
    pub params: Vec<f32>,
    /// RMSprop square averages [agents][P].
    pub square_avg: Vec<f32>,
    /// Agent steps taken by every env (the action sampler's step counter).
    pub step: u64,
    pub updates: u64,
    pub episodes: u64,
    pub frames: u64,
    /// Wall-clock seconds of training so far (for SPS; not part of the result).
    pub wall_seconds: f64,
    pub recent_games: Vec<crate::algo::trainer::GameRecord>,
    pub agent_episodes: Vec<u64>,
    pub agent_recent_scores: Vec<Vec<f64>>,
    /// The frame stacks [envs][4][84][84].
    pub observations: Vec<u8>,
    /// Each environment's saved state; None when the game cannot save it (resume then restarts
    /// the games, and is not bit-exact).
    pub env_states: Option<Vec<Vec<u8>>>,
    /// Pipelined runs: what is in flight between two updates (empty otherwise).
    pub pipeline: PipelineState,
    /// Each agent's completed rounds when agents stopped at different rounds (an asynchronous
    /// run's failure); None when every agent is at `updates` (and `step`).
    pub agent_updates: Option<Vec<u64>>,
}

/// What a pipelined trainer holds between two updates besides the learner's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineState {
    /// A collected segment not learned from yet.
    pub pending: Option<PendingSegment>,
    /// The actor's parameters [agents][P] when they are not the learner's.
    pub actor_params: Option<Vec<f32>>,
}

impl PipelineState {
    /// Nothing in flight: a plain (unpipelined) trainer could continue from the checkpoint.
    pub fn is_empty(&self) -> bool {
        self.pending.is_none() && self.actor_params.is_none()
    }
}

/// A collected rollout segment, [agents][n_steps][envs](…), as the learner will use it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PendingSegment {
    pub obs: Vec<u8>,
    pub actions: Vec<u32>,
    pub rewards: Vec<f32>,
    pub dones: Vec<f32>,
    /// log μ(a|s) of the parameters that acted.
    pub log_probs: Vec<f32>,
    /// V(s_T) after the segment [agents][envs], by the parameters that acted.
    pub bootstrap_values: Vec<f32>,
    /// Collected by parameters older than the learner's (the loss applies the truncated
    /// importance ratio).
    pub stale: bool,
}

/// An owned tensor for serialisation.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The digest stored as `sha256` (module docs): tensors and metadata in name order.
fn digest<'a>(tensors: impl Iterator<Item = (&'a str, String, &'a [usize], &'a [u8])>, metadata: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (name, dtype, shape, data) in tensors {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(dtype.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    for (k, v) in metadata.iter().filter(|(k, _)| k.as_str() != "sha256") {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn layout_of(config: &Config, actions: usize) -> ParamLayout {
    NetSpec::new(config.net, actions).layout()
}

/// Agent `agent`'s tensor `tensor` (a `ParamLayout` name such as `conv1.weight`): the one place
/// the PyTorch naming of parameters is spelled, shared by checkpoints and parameter files.
pub fn param_name(agent: usize, tensor: &str) -> String {
    format!("agent{agent}.{tensor}")
}

/// RMSprop's `square_avg` for the parameter `param_name(agent, tensor)`.
pub fn square_avg_name(agent: usize, tensor: &str) -> String {
    format!("optim.{}.square_avg", param_name(agent, tensor))
}

/// Adds one tensor per (agent, layout tensor) of the arena [agents][P], named by `name`.
fn insert_arena(tensors: &mut BTreeMap<String, Owned>, layout: &ParamLayout, agents: usize, arena: &[f32], name: fn(usize, &str) -> String) {
    let p = layout.total;
    for r in 0..agents {
        for t in &layout.tensors {
            let range = r * p + t.offset..r * p + t.offset + t.len;
            tensors.insert(name(r, t.name), Owned { dtype: Dtype::F32, shape: t.shape.clone(), data: f32_bytes(&arena[range]) });
        }
    }
}

/// Reads the arena [agents][P] back from tensors named by `name`; the error says which tensor
/// is missing or has the wrong dtype or shape.
fn extract_arena(
    tensors: &HashMap<&str, &safetensors::tensor::TensorView>,
    layout: &ParamLayout,
    agents: usize,
    name: fn(usize, &str) -> String,
) -> std::result::Result<Vec<f32>, String> {
    let p = layout.total;
    let mut arena = vec![0f32; agents * p];
    for r in 0..agents {
        for t in &layout.tensors {
            let key = name(r, t.name);
            let view = tensors.get(key.as_str()).ok_or_else(|| format!("tensor `{key}` is missing"))?;
            if view.dtype() != Dtype::F32 || view.shape() != t.shape.as_slice() {
                return Err(format!("tensor `{key}` is {} {:?}, expected F32 {:?}", view.dtype(), view.shape(), t.shape));
            }
            let dst = &mut arena[r * p + t.offset..r * p + t.offset + t.len];
            for (d, c) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
                *d = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
        }
    }
    Ok(arena)
}

/// Parameter files carry a `sha256` digest like checkpoints (module docs), checked on load.
const PARAMS_FORMAT: &str = "gala-gpu params 2";
/// Parameter files written before the digest was added: still loaded, with nothing to check
/// them against.
const PARAMS_FORMAT_V1: &str = "gala-gpu params 1";

/// Checks a file's stored `sha256` against its tensors and metadata (`views` in name order).
fn verify_digest(views: &[(String, safetensors::tensor::TensorView)], meta: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    let want = digest(views.iter().map(|(k, v)| (k.as_str(), v.dtype().to_string(), v.shape(), v.data())), meta);
    match meta.get("sha256") {
        Some(got) if *got == want => Ok(()),
        Some(got) => Err(format!("checksum mismatch (stored {got}, computed {want})")),
        None => Err("no sha256 in its metadata".into()),
    }
}

/// The first NaN or infinite value of an arena [agents][P], named by agent, tensor and element.
pub fn find_nonfinite(layout: &ParamLayout, arena: &[f32]) -> Option<String> {
    let p = layout.total.max(1);
    let i = arena.iter().position(|x| !x.is_finite())?;
    let (agent, off) = (i / p, i % p);
    let place = match layout.tensors.iter().find(|t| t.range().contains(&off)) {
        Some(t) => format!("`{}` element {}", param_name(agent, t.name), off - t.offset),
        None => format!("agent {agent} index {off}"),
    };
    Some(format!("{place} is {}", arena[i]))
}

/// Serialises the parameters of `agents` agents ([agents][P] for `net`) as a safetensors file
/// holding only the `agent{r}.{name}` tensors of a checkpoint (same names, shapes and bytes),
/// so PyTorch loads it the same way; the metadata records the shape it was written for and a
/// `sha256` digest as checkpoints have.
pub fn params_to_bytes(net: &NetSpec, agents: usize, params: &[f32]) -> Result<Vec<u8>> {
    let layout = net.layout();
    if params.len() != agents * layout.total {
        return Err(Error::Shape(format!("parameters: {} values, expected {} ([{agents}][{}])", params.len(), agents * layout.total, layout.total)));
    }
    let mut tensors = BTreeMap::new();
    insert_arena(&mut tensors, &layout, agents, params, param_name);
    let mut meta: BTreeMap<String, String> = [
        ("format", PARAMS_FORMAT.to_string()),
        ("net", format!("{:?}", net.preset).to_lowercase()),
        ("actions", net.actions.to_string()),
        ("agents", agents.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let sha = digest(tensors.iter().map(|(k, t)| (k.as_str(), t.dtype.to_string(), t.shape.as_slice(), t.data.as_slice())), &meta);
    meta.insert("sha256".into(), sha);
    let meta: HashMap<String, String> = meta.into_iter().collect();
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.clone(), t)), Some(meta))
        .map_err(|e| Error::Backend(format!("parameters could not be serialised: {e}")))
}

/// Reads [agents][P] parameters for `net` from a parameter file (`params_to_bytes`) or from a
/// full checkpoint — both name them `agent{r}.{name}`. `origin` names the source in errors.
/// Refused (nothing is returned): a file of another format, a digest mismatch (a damaged
/// file), another agent count, another network shape, and NaN or infinite values.
pub fn params_from_bytes(bytes: &[u8], net: &NetSpec, agents: usize, origin: &str) -> Result<Vec<f32>> {
    let refuse = |why: String| Error::Config(format!("parameters from {origin} refused: {why}"));
    let st = SafeTensors::deserialize(bytes).map_err(|e| refuse(format!("not a valid safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| refuse(format!("bad header ({e})")))?;
    let meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    match meta.get("format").map(String::as_str) {
        Some(PARAMS_FORMAT | FORMAT) => verify_digest(&views, &meta).map_err(|why| refuse(format!("{why}; the file is damaged")))?,
        Some(PARAMS_FORMAT_V1) => {}
        other => {
            return Err(refuse(format!(
                "not a gala-gpu parameter file or checkpoint (format {other:?}, expected {PARAMS_FORMAT:?} or {FORMAT:?})"
            )))
        }
    }
    let shape = || format!("{agents} agents of a {:?} net with {} actions", net.preset, net.actions);
    // Agents are counted from the tensor names, so a file of more agents is not silently cut
    // to this engine's first ones.
    let held = views
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("agent")?.split_once('.')?.0.parse::<usize>().ok())
        .max()
        .map_or(0, |r| r + 1);
    if held != agents {
        return Err(refuse(format!("it holds {held} agents, this engine has {agents} (the file must hold {})", shape())));
    }
    let tensors: HashMap<&str, &safetensors::tensor::TensorView> = views.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let layout = net.layout();
    let arena = extract_arena(&tensors, &layout, agents, param_name).map_err(|why| refuse(format!("{why} (the file must hold {})", shape())))?;
    if let Some(what) = find_nonfinite(&layout, &arena) {
        return Err(refuse(format!("{what}; parameters must be finite")));
    }
    Ok(arena)
}

impl Checkpoint {
    /// Serialises to the bytes of a safetensors file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let layout = layout_of(&self.config, self.actions);
        let p = layout.total;
        let want = p * self.agents;
        if self.params.len() != want || self.square_avg.len() != want {
            return Err(Error::Shape(format!(
                "checkpoint: {} parameters and {} optimizer values, expected {want} ([{}][{p}])",
                self.params.len(),
                self.square_avg.len(),
                self.agents
            )));
        }
        let mut tensors: BTreeMap<String, Owned> = BTreeMap::new();
        insert_arena(&mut tensors, &layout, self.agents, &self.params, param_name);
        insert_arena(&mut tensors, &layout, self.agents, &self.square_avg, square_avg_name);
        for r in 0..self.agents {
            let scores = self.agent_recent_scores.get(r).map(Vec::as_slice).unwrap_or(&[]);
            tensors.insert(format!("stats.agent{r}.recent_scores"), Owned { dtype: Dtype::F64, shape: vec![scores.len()], data: f64_bytes(scores) });
        }
        let games: Vec<f64> = self.recent_games.iter().flat_map(|g| [g.step as f64, g.env as f64, g.score]).collect();
        tensors.insert("stats.recent_games".into(), Owned { dtype: Dtype::F64, shape: vec![self.recent_games.len(), 3], data: f64_bytes(&games) });
        let envs = self.agents * self.envs_per_agent;
        tensors.insert(
            "env.observations".into(),
            Owned { dtype: Dtype::U8, shape: vec![envs, crate::model::FRAME_STACK, crate::model::FRAME_HW, crate::model::FRAME_HW], data: self.observations.clone() },
        );
        if let Some(states) = &self.env_states {
            for (i, s) in states.iter().enumerate() {
                tensors.insert(format!("env.state.{i}"), Owned { dtype: Dtype::U8, shape: vec![s.len()], data: s.clone() });
            }
        }
        let mut meta = BTreeMap::new();
        let (agents, steps) = (self.agents, self.config.n_steps);
        if let Some(seg) = &self.pipeline.pending {
            let samples = agents * steps * self.envs_per_agent;
            let lens = [seg.actions.len(), seg.rewards.len(), seg.dones.len(), seg.log_probs.len()];
            if seg.obs.len() != samples * crate::model::OBS_BYTES || lens.iter().any(|&l| l != samples) || seg.bootstrap_values.len() != envs {
                return Err(Error::Shape(format!(
                    "checkpoint: the pending segment holds {} observation bytes, {lens:?} actions/rewards/dones/log-probs and {} bootstrap values, expected {} bytes, {samples} each and {envs}",
                    seg.obs.len(),
                    seg.bootstrap_values.len(),
                    samples * crate::model::OBS_BYTES
                )));
            }
            let rows = vec![agents, steps, self.envs_per_agent];
            let hw = crate::model::FRAME_HW;
            tensors.insert(
                "pipeline.obs".into(),
                Owned { dtype: Dtype::U8, shape: [rows.as_slice(), &[crate::model::FRAME_STACK, hw, hw]].concat(), data: seg.obs.clone() },
            );
            // i32, not u32: PyTorch's `load_file` must still load the whole file.
            let actions: Vec<u8> = seg.actions.iter().flat_map(|&a| (a as i32).to_le_bytes()).collect();
            tensors.insert("pipeline.actions".into(), Owned { dtype: Dtype::I32, shape: rows.clone(), data: actions });
            for (name, v) in [("rewards", &seg.rewards), ("dones", &seg.dones), ("log_probs", &seg.log_probs)] {
                tensors.insert(format!("pipeline.{name}"), Owned { dtype: Dtype::F32, shape: rows.clone(), data: f32_bytes(v) });
            }
            tensors.insert(
                "pipeline.bootstrap_values".into(),
                Owned { dtype: Dtype::F32, shape: vec![agents, self.envs_per_agent], data: f32_bytes(&seg.bootstrap_values) },
            );
            meta.insert("pipeline_segment".to_string(), if seg.stale { "stale" } else { "on-policy" }.to_string());
        }
        if let Some(actor) = &self.pipeline.actor_params {
            if actor.len() != want {
                return Err(Error::Shape(format!("checkpoint: {} actor parameters, expected {want} ([{agents}][{p}])", actor.len())));
            }
            tensors.insert("pipeline.actor_params".into(), Owned { dtype: Dtype::F32, shape: vec![agents, p], data: f32_bytes(actor) });
            meta.insert("pipeline_actor".to_string(), "behind".to_string());
        }
        if let Some(rounds) = &self.agent_updates {
            if rounds.len() != agents {
                return Err(Error::Shape(format!("checkpoint: {} per-agent round counts for {agents} agents", rounds.len())));
            }
            meta.insert("agent_updates".to_string(), rounds.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
        }
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("config".into(), self.config.to_toml());
        meta.insert("actions".into(), self.actions.to_string());
        meta.insert("agents".into(), self.agents.to_string());
        meta.insert("envs_per_agent".into(), self.envs_per_agent.to_string());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("updates".into(), self.updates.to_string());
        meta.insert("episodes".into(), self.episodes.to_string());
        meta.insert("frames".into(), self.frames.to_string());
        meta.insert("wall_seconds".into(), format!("{:?}", self.wall_seconds));
        meta.insert("agent_episodes".into(), self.agent_episodes.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
        meta.insert("env_states".into(), if self.env_states.is_some() { "saved" } else { "none" }.into());
        let sha = digest(tensors.iter().map(|(k, t)| (k.as_str(), t.dtype.to_string(), t.shape.as_slice(), t.data.as_slice())), &meta);
        meta.insert("sha256".into(), sha);
        let meta: HashMap<String, String> = meta.into_iter().collect();
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.clone(), t)), Some(meta))
            .map_err(|e| Error::Backend(format!("checkpoint could not be serialised: {e}")))
    }

    /// Parses and verifies a checkpoint file's bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Checkpoint> {
        let refuse = |why: String| {
            Error::Config(format!(
                "checkpoint {} refused: {why}; it is truncated or corrupt — use another copy or start a new run",
                origin.display()
            ))
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| refuse(format!("not a valid safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| refuse(format!("bad header ({e})")))?;
        let meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
        match meta.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            // Not damage: a file of another kind. Say what it is and what is needed instead.
            Some(PARAMS_FORMAT | PARAMS_FORMAT_V1) => {
                return Err(Error::Config(format!(
                    "{} is a parameter file (written by gala_engine_save_params / Engine::save_params), not a checkpoint: it holds the \
                     network's weights but no game, preset or run settings; give a run folder or its {CHECKPOINT_FILE}, or load the \
                     file into an engine with gala_engine_load_params / Engine::load_params",
                    origin.display()
                )))
            }
            other => return Err(refuse(format!("not a gala-gpu checkpoint (format {other:?}, expected {FORMAT:?})"))),
        }
        let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        verify_digest(&views, &meta).map_err(refuse)?;
        let get = |k: &str| meta.get(k).ok_or_else(|| refuse(format!("metadata lacks `{k}`")));
        let num = |k: &str| -> Result<u64> { get(k)?.parse::<u64>().map_err(|_| refuse(format!("metadata `{k}` is not a number"))) };
        let config = Config::from_toml_str(get("config")?, origin)?;
        let actions = num("actions")? as usize;
        let agents = num("agents")? as usize;
        let envs_per_agent = num("envs_per_agent")? as usize;
        if actions == 0 || agents == 0 || envs_per_agent == 0 {
            return Err(refuse("zero actions, agents or environments".into()));
        }
        let tensors: HashMap<&str, &safetensors::tensor::TensorView> = views.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor = |name: &str, dtype: Dtype| -> Result<&[u8]> {
            let t = tensors.get(name).ok_or_else(|| refuse(format!("tensor `{name}` is missing")))?;
            if t.dtype() != dtype {
                return Err(refuse(format!("tensor `{name}` is {}, expected {dtype}", t.dtype())));
            }
            Ok(t.data())
        };
        let f64s = |b: &[u8]| b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect::<Vec<f64>>();
        let layout = layout_of(&config, actions);
        let params = extract_arena(&tensors, &layout, agents, param_name).map_err(refuse)?;
        let square_avg = extract_arena(&tensors, &layout, agents, square_avg_name).map_err(refuse)?;
        let envs = agents * envs_per_agent;
        let observations = tensor("env.observations", Dtype::U8)?.to_vec();
        if observations.len() != envs * crate::model::OBS_BYTES {
            return Err(refuse(format!("env.observations holds {} bytes, expected {}", observations.len(), envs * crate::model::OBS_BYTES)));
        }
        let env_states = match get("env_states")?.as_str() {
            "saved" => Some((0..envs).map(|i| tensor(&format!("env.state.{i}"), Dtype::U8).map(<[u8]>::to_vec)).collect::<Result<Vec<_>>>()?),
            _ => None,
        };
        let agent_episodes: Vec<u64> = get("agent_episodes")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().map_err(|_| refuse("metadata `agent_episodes` is not a list of numbers".into())))
            .collect::<Result<_>>()?;
        if agent_episodes.len() != agents {
            return Err(refuse(format!("{} per-agent episode counts for {agents} agents", agent_episodes.len())));
        }
        let agent_recent_scores = (0..agents).map(|r| tensor(&format!("stats.agent{r}.recent_scores"), Dtype::F64).map(f64s)).collect::<Result<Vec<_>>>()?;
        // Pipelined and asynchronous additions (module docs); absent in older files.
        let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect::<Vec<f32>>();
        let samples = agents * config.n_steps * envs_per_agent;
        let sized = |name: &str, dtype: Dtype, len: usize| -> Result<&[u8]> {
            let data = tensor(name, dtype)?;
            if data.len() != len {
                return Err(refuse(format!("tensor `{name}` holds {} bytes, expected {len}", data.len())));
            }
            Ok(data)
        };
        let pending = match meta.get("pipeline_segment").map(String::as_str) {
            None => None,
            Some(kind @ ("stale" | "on-policy")) => Some(PendingSegment {
                obs: sized("pipeline.obs", Dtype::U8, samples * crate::model::OBS_BYTES)?.to_vec(),
                actions: sized("pipeline.actions", Dtype::I32, samples * 4)?
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as u32)
                    .collect(),
                rewards: f32s(sized("pipeline.rewards", Dtype::F32, samples * 4)?),
                dones: f32s(sized("pipeline.dones", Dtype::F32, samples * 4)?),
                log_probs: f32s(sized("pipeline.log_probs", Dtype::F32, samples * 4)?),
                bootstrap_values: f32s(sized("pipeline.bootstrap_values", Dtype::F32, envs * 4)?),
                stale: kind == "stale",
            }),
            Some(other) => return Err(refuse(format!("metadata `pipeline_segment` is {other:?}, expected \"stale\" or \"on-policy\""))),
        };
        let actor_params = match meta.get("pipeline_actor").map(String::as_str) {
            None => None,
            Some("behind") => Some(f32s(sized("pipeline.actor_params", Dtype::F32, params.len() * 4)?)),
            Some(other) => return Err(refuse(format!("metadata `pipeline_actor` is {other:?}, expected \"behind\""))),
        };
        let agent_updates = match meta.get("agent_updates") {
            None => None,
            Some(list) => {
                let rounds: Vec<u64> = list
                    .split(',')
                    .map(|s| s.parse::<u64>().map_err(|_| refuse("metadata `agent_updates` is not a list of numbers".into())))
                    .collect::<Result<_>>()?;
                if rounds.len() != agents {
                    return Err(refuse(format!("{} per-agent round counts for {agents} agents", rounds.len())));
                }
                Some(rounds)
            }
        };
        Ok(Checkpoint {
            pipeline: PipelineState { pending, actor_params },
            agent_updates,
            actions,
            agents,
            envs_per_agent,
            params,
            square_avg,
            step: num("step")?,
            updates: num("updates")?,
            episodes: num("episodes")?,
            frames: num("frames")?,
            wall_seconds: get("wall_seconds")?.parse().unwrap_or(0.0),
            recent_games: f64s(tensor("stats.recent_games", Dtype::F64)?)
                .chunks_exact(3)
                .map(|g| crate::algo::trainer::GameRecord { step: g[0] as u64, env: g[1] as usize, score: g[2] })
                .collect(),
            agent_episodes,
            agent_recent_scores,
            observations,
            env_states,
            config,
        })
    }

    /// Writes the checkpoint durably: temporary file, fsync, rename over `path`, fsync the folder.
    /// On any failure the previous file at `path` is untouched, and the error says so.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::run::write_atomic(path, &bytes).map_err(|e| {
            let previous = if path.exists() { "the previous checkpoint there is intact" } else { "no earlier checkpoint exists" };
            Error::Config(format!("checkpoint not saved ({e}); {previous}; free disk space or fix the folder's permissions, then resume"))
        })
    }

    /// Loads `path`, or `path/checkpoint.safetensors` when `path` is a run folder.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let file = resolve_path(path);
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        Checkpoint::from_bytes(&bytes, &file)
    }

    /// Agent `r`'s parameters [P].
    pub fn agent_params(&self, r: usize) -> Option<&[f32]> {
        let p = self.params.len() / self.agents;
        self.params.get(r * p..(r + 1) * p)
    }
}

/// A checkpoint file, or a run folder's checkpoint.
pub fn resolve_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CHECKPOINT_FILE)
    } else {
        path.to_path_buf()
    }
}

impl Checkpoint {
    /// Each agent's completed rounds (updates), in agent order.
    pub fn agent_rounds(&self) -> Vec<u64> {
        self.agent_updates.clone().unwrap_or_else(|| vec![self.updates; self.agents])
    }

    /// One run-wide checkpoint from single-agent ones (`Trainer::for_agent` checkpoints of
    /// agents 0, 1, … in order), as the asynchronous runner saves them. Agents' tensors and
    /// environments are concatenated in agent order, the last 100 games of all agents merged in
    /// (step, env) order. `cut`: the parts are every agent right after completing the same round;
    /// otherwise (a failure's salvage) or when the rounds differ, `agent_updates` records each
    /// agent's rounds.
    pub fn merge_agents(parts: &[Checkpoint], cut: bool) -> Result<Checkpoint> {
        let first = parts.first().ok_or_else(|| Error::Shape("checkpoint: no agents to merge".into()))?;
        for (r, c) in parts.iter().enumerate() {
            if c.agents != 1 || c.envs_per_agent != first.envs_per_agent || c.actions != first.actions || !c.pipeline.is_empty() {
                return Err(Error::Shape(format!(
                    "checkpoint: agent {r}'s part holds {} agents × {} envs with {} actions, expected 1 × {} with {}",
                    c.agents, c.envs_per_agent, c.actions, first.envs_per_agent, first.actions
                )));
            }
        }
        let rounds: Vec<u64> = parts.iter().map(|c| c.updates).collect();
        let slowest = parts.iter().min_by_key(|c| c.updates).expect("at least one part");
        let mut games: Vec<crate::algo::trainer::GameRecord> = parts.iter().flat_map(|c| c.recent_games.iter().copied()).collect();
        games.sort_by(|a, b| (a.step, a.env).cmp(&(b.step, b.env)));
        let games = games.split_off(games.len().saturating_sub(crate::algo::trainer::RECENT_GAMES));
        Ok(Checkpoint {
            config: first.config.clone(),
            actions: first.actions,
            agents: parts.len(),
            envs_per_agent: first.envs_per_agent,
            params: parts.iter().flat_map(|c| c.params.iter().copied()).collect(),
            square_avg: parts.iter().flat_map(|c| c.square_avg.iter().copied()).collect(),
            step: slowest.step,
            updates: slowest.updates,
            episodes: parts.iter().map(|c| c.episodes).sum(),
            frames: parts.iter().map(|c| c.frames).sum(),
            wall_seconds: parts.iter().map(|c| c.wall_seconds).fold(0.0, f64::max),
            recent_games: games,
            agent_episodes: parts.iter().flat_map(|c| c.agent_episodes.iter().copied()).collect(),
            agent_recent_scores: parts.iter().flat_map(|c| c.agent_recent_scores.iter().cloned()).collect(),
            observations: parts.iter().flat_map(|c| c.observations.iter().copied()).collect(),
            env_states: parts.iter().map(|c| c.env_states.clone()).collect::<Option<Vec<_>>>().map(|v| v.concat()),
            pipeline: PipelineState::default(),
            agent_updates: (!cut || rounds.iter().any(|&u| u != rounds[0])).then_some(rounds),
        })
    }

    /// Agent `r`'s share as a single-agent checkpoint (what `Trainer::for_agent` restores):
    /// its parameters, optimizer state, environments, counters and games.
    pub fn agent_part(&self, r: usize) -> Result<Checkpoint> {
        if r >= self.agents || !self.pipeline.is_empty() {
            return Err(Error::Config(format!("checkpoint: no agent {r} to restore alone (it holds {} agents{})", self.agents,
                if self.pipeline.is_empty() { "" } else { " of a pipelined run" })));
        }
        let p = self.params.len() / self.agents;
        let envs = self.envs_per_agent;
        let rounds = self.agent_rounds();
        let steps: Vec<u64> = match &self.agent_updates {
            Some(u) => u.iter().map(|&u| u * self.config.n_steps as u64).collect(),
            None => vec![self.step; self.agents],
        };
        let total_steps: u128 = steps.iter().map(|&s| s as u128).sum();
        let frames = if total_steps == 0 { 0 } else { (self.frames as u128 * steps[r] as u128 / total_steps) as u64 };
        let env_range = r * envs..(r + 1) * envs;
        let obs = crate::model::OBS_BYTES;
        Ok(Checkpoint {
            config: self.config.clone(),
            actions: self.actions,
            agents: 1,
            envs_per_agent: envs,
            params: self.params[r * p..(r + 1) * p].to_vec(),
            square_avg: self.square_avg[r * p..(r + 1) * p].to_vec(),
            step: steps[r],
            updates: rounds[r],
            episodes: self.agent_episodes[r],
            frames,
            wall_seconds: self.wall_seconds,
            recent_games: self.recent_games.iter().filter(|g| env_range.contains(&g.env)).copied().collect(),
            agent_episodes: vec![self.agent_episodes[r]],
            agent_recent_scores: vec![self.agent_recent_scores.get(r).cloned().unwrap_or_default()],
            observations: self.observations[env_range.start * obs..env_range.end * obs].to_vec(),
            env_states: self.env_states.as_ref().map(|s| s[env_range.clone()].to_vec()),
            pipeline: PipelineState::default(),
            agent_updates: None,
        })
    }
}
