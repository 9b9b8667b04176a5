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
//! `__metadata__` holds the resolved config (TOML), the counters (agent steps = the action
//! RNG's step counter, updates = the gossip round, episodes), and `sha256`: a digest over every
//! tensor (name, dtype, shape, bytes) and every other metadata entry, checked on load, so a
//! corrupt or truncated file is refused instead of silently resuming from garbage.

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

const PARAMS_FORMAT: &str = "gala-gpu params 1";

/// Serialises the parameters of `agents` agents ([agents][P] for `net`) as a safetensors file
/// holding only the `agent{r}.{name}` tensors of a checkpoint (same names, shapes and bytes),
/// so PyTorch loads it the same way; the metadata records the shape it was written for.
pub fn params_to_bytes(net: &NetSpec, agents: usize, params: &[f32]) -> Result<Vec<u8>> {
    let layout = net.layout();
    if params.len() != agents * layout.total {
        return Err(Error::Shape(format!("parameters: {} values, expected {} ([{agents}][{}])", params.len(), agents * layout.total, layout.total)));
    }
    let mut tensors = BTreeMap::new();
    insert_arena(&mut tensors, &layout, agents, params, param_name);
    let meta: HashMap<String, String> = [
        ("format", PARAMS_FORMAT.to_string()),
        ("net", format!("{:?}", net.preset).to_lowercase()),
        ("actions", net.actions.to_string()),
        ("agents", agents.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.clone(), t)), Some(meta))
        .map_err(|e| Error::Backend(format!("parameters could not be serialised: {e}")))
}

/// Reads [agents][P] parameters for `net` from a parameter file (`params_to_bytes`) or from a
/// full checkpoint — both name them `agent{r}.{name}`. `origin` names the source in errors.
pub fn params_from_bytes(bytes: &[u8], net: &NetSpec, agents: usize, origin: &str) -> Result<Vec<f32>> {
    let refuse = |why: String| Error::Config(format!("parameters from {origin} refused: {why}"));
    let st = SafeTensors::deserialize(bytes).map_err(|e| refuse(format!("not a valid safetensors file ({e})")))?;
    let views = st.tensors();
    let tensors: HashMap<&str, &safetensors::tensor::TensorView> = views.iter().map(|(k, v)| (k.as_str(), v)).collect();
    extract_arena(&tensors, &net.layout(), agents, param_name)
        .map_err(|why| refuse(format!("{why} (the file must hold {agents} agents of a {:?} net with {} actions)", net.preset, net.actions)))
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
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(refuse(format!("not a gala-gpu checkpoint (format {:?}, expected {FORMAT:?})", meta.get("format"))));
        }
        let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let want = digest(views.iter().map(|(k, v)| (k.as_str(), v.dtype().to_string(), v.shape(), v.data())), &meta);
        match meta.get("sha256") {
            Some(got) if *got == want => {}
            Some(got) => return Err(refuse(format!("checksum mismatch (stored {got}, computed {want})"))),
            None => return Err(refuse("no sha256 in its metadata".into())),
        }
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
        Ok(Checkpoint {
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
