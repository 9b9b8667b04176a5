//! The C ABI: [`crate::engine::Engine`] for programs in C, Python (ctypes), or anything else
//! that can call C. Built into `libgala_gpu.so` (the crate's `cdylib`); the header is
//! `include/gala_gpu.h`, generated from this file by cbindgen (`cbindgen.toml`; the
//! `header_is_up_to_date` test in `tests/capi.rs` fails when it is stale and, with
//! `GALA_UPDATE_HEADER=1`, rewrites it).
//!
//! Contract, for every `gala_*` function:
//! * It returns a [`GalaStatus`]; `GALA_OK` is 0. After a call, `gala_last_error()` gives this
//!   thread's message for it ("" after a success).
//! * Panics never cross the boundary: each entry point catches them (`GALA_ERR_PANIC`).
//! * Every buffer comes with its length in elements, checked against the engine's shapes before
//!   anything is read or written (`GALA_ERR_SIZE`); NULL where a pointer is required is
//!   `GALA_ERR_NULL_POINTER`.
//! * Handles: `gala_engine_create` makes one, `gala_engine_free` ends it; the library owns the
//!   engine, the caller owns every buffer. A handle is a key into a table of live engines, never
//!   dereferenced, and keys are never reused, so a freed (or made-up) handle is reported as
//!   `GALA_ERR_INVALID_HANDLE` instead of touching freed memory. Each engine has a lock, so
//!   calls on one handle from several threads are serialised (and different handles run in
//!   parallel).
//! * After a failed call: argument errors (`NULL_POINTER`, `SIZE`, `CONFIG`, `IO`) are found
//!   before the engine changes, and the handle stays usable. A failure inside the engine's work
//!   (`NON_FINITE`, `BACKEND`, `PANIC`) may leave it half-updated, so the handle is *poisoned*:
//!   every later call on it except `gala_engine_free` returns `GALA_ERR_POISONED`, with the
//!   original failure in the message.

use crate::backend::{ActOutput, Segment};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::Error;
use crate::model::OBS_BYTES;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a `gala_*` call returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GalaStatus {
    /// Success.
    GalaOk = 0,
    /// A required pointer argument was NULL.
    GalaErrNullPointer = 1,
    /// A buffer length does not match the engine's shapes (or a pointer is misaligned).
    GalaErrSize = 2,
    /// An invalid setting or argument: config TOML, action count, parameter file contents.
    GalaErrConfig = 3,
    /// The handle is not a live engine (freed already, or never created).
    GalaErrInvalidHandle = 4,
    /// An earlier failure inside the engine poisoned this handle; free it.
    GalaErrPoisoned = 5,
    /// A loss, gradient or parameter became NaN or infinite (poisons the handle).
    GalaErrNonFinite = 6,
    /// The compute backend failed (poisons the handle).
    GalaErrBackend = 7,
    /// A file could not be read or written.
    GalaErrIo = 8,
    /// A bug: the library panicked (caught; poisons the handle).
    GalaErrPanic = 9,
}

/// An engine: N actor-learners on one device. Opaque; only ever used through a pointer.
pub struct GalaEngine {
    _private: [u8; 0],
}

/// Shapes of an engine (`gala_engine_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GalaEngineInfo {
    /// Learners (1 for `algo = "a2c"`).
    pub agents: usize,
    /// Environments per learner.
    pub envs_per_agent: usize,
    /// Steps per learning segment.
    pub n_steps: usize,
    /// The policy's action count.
    pub actions: usize,
    /// Parameters per agent.
    pub param_count: usize,
    /// Bytes of one observation: 4 × 84 × 84 uint8.
    pub obs_bytes: usize,
    /// Gossip rounds done.
    pub round: u64,
}

/// One agent's statistics of a `gala_engine_learn` call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GalaLearnStats {
    pub value_loss: f64,
    pub policy_loss: f64,
    pub entropy: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// A live engine and, once poisoned, why.
struct Slot {
    engine: Engine,
    poisoned: Option<String>,
}

type SlotRef = Arc<Mutex<Slot>>;

/// Live engines by handle value. Handles are never reused, so a stale one is never confused
/// with a newer engine.
static LIVE: Mutex<Option<HashMap<usize, SlotRef>>> = Mutex::new(None);
/// Next handle value; starts away from 0 (NULL) and small integers a caller might confuse.
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(0x6a1a_0000);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: its status and message.
struct Failure {
    status: GalaStatus,
    message: String,
}

impl Failure {
    fn new(status: GalaStatus, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Shape(_) => GalaStatus::GalaErrSize,
            Error::Config(_) => GalaStatus::GalaErrConfig,
            Error::Io { .. } => GalaStatus::GalaErrIo,
            Error::NonFinite(_) => GalaStatus::GalaErrNonFinite,
            Error::Backend(_) | Error::Unsupported(_) | Error::Env(_) => GalaStatus::GalaErrBackend,
        };
        Failure::new(status, e.to_string())
    }
}

/// Whether a failure may have left the engine half-updated (module docs).
fn poisons(status: GalaStatus) -> bool {
    matches!(status, GalaStatus::GalaErrNonFinite | GalaStatus::GalaErrBackend | GalaStatus::GalaErrPanic)
}

fn set_last_error(message: &str) {
    // Interior NULs would cut the C string short; they cannot be represented, so replace them.
    let c = CString::new(message.replace('\0', " ")).expect("NULs were replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned());
    format!("internal error (panic): {}; please report it", what.unwrap_or_else(|| "no message".into()))
}

/// Runs an entry point's body: catches panics, records the message, returns the status.
fn entry(what: &str, body: impl FnOnce() -> Result<(), Failure>) -> GalaStatus {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| Err(Failure::new(GalaStatus::GalaErrPanic, panic_message(p.as_ref()))));
    match result {
        Ok(()) => {
            set_last_error("");
            GalaStatus::GalaOk
        }
        Err(f) => {
            set_last_error(&format!("{what}: {}", f.message));
            f.status
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is caught and poisons the *engine* explicitly; the
    // mutex's own poison flag carries no extra information.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lookup(handle: *const GalaEngine) -> Result<SlotRef, Failure> {
    if handle.is_null() {
        return Err(Failure::new(GalaStatus::GalaErrNullPointer, "the engine handle is NULL"));
    }
    lock(&LIVE)
        .as_ref()
        .and_then(|live| live.get(&(handle as usize)).cloned())
        .ok_or_else(|| Failure::new(GalaStatus::GalaErrInvalidHandle, format!("{handle:p} is not a live engine (freed already, or never created)")))
}

/// Runs `f` on the engine behind `handle`, refusing poisoned engines and poisoning on failures
/// inside the engine (module docs).
fn with_engine(handle: *const GalaEngine, f: impl FnOnce(&mut Engine) -> Result<(), Failure>) -> Result<(), Failure> {
    let slot = lookup(handle)?;
    let mut slot = lock(&slot);
    if let Some(why) = &slot.poisoned {
        return Err(Failure::new(GalaStatus::GalaErrPoisoned, format!("the engine was poisoned by an earlier failure ({why}); free it and create a new one")));
    }
    let result = catch_unwind(AssertUnwindSafe(|| f(&mut slot.engine)))
        .unwrap_or_else(|p| Err(Failure::new(GalaStatus::GalaErrPanic, panic_message(p.as_ref()))));
    if let Err(e) = &result {
        if poisons(e.status) {
            slot.poisoned = Some(e.message.clone());
        }
    }
    result
}

fn check_len(name: &str, len: usize, want: usize, shape: &str) -> Result<(), Failure> {
    if len != want {
        return Err(Failure::new(GalaStatus::GalaErrSize, format!("`{name}` holds {len} elements, expected {want} ({shape})")));
    }
    Ok(())
}

fn check_ptr<T>(name: &str, ptr: *const T) -> Result<(), Failure> {
    if ptr.is_null() {
        return Err(Failure::new(GalaStatus::GalaErrNullPointer, format!("`{name}` is NULL")));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Failure::new(GalaStatus::GalaErrSize, format!("`{name}` is not aligned to {} bytes", std::mem::align_of::<T>())));
    }
    Ok(())
}

/// # Safety
/// `ptr` must point to `len` readable `T`s that stay valid and unmodified during the call.
unsafe fn input<'a, T>(name: &str, ptr: *const T, len: usize, want: usize, shape: &str) -> Result<&'a [T], Failure> {
    check_ptr(name, ptr)?;
    check_len(name, len, want, shape)?;
    // SAFETY: non-null and aligned (checked); the caller guarantees `len` valid elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// # Safety
/// `ptr` must point to `len` writable `T`s not aliased by any other argument during the call.
unsafe fn output<'a, T>(name: &str, ptr: *mut T, len: usize, want: usize, shape: &str) -> Result<&'a mut [T], Failure> {
    check_ptr(name, ptr)?;
    check_len(name, len, want, shape)?;
    // SAFETY: non-null and aligned (checked); the caller guarantees `len` writable elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// # Safety
/// `ptr` must be NULL or a NUL-terminated string valid during the call.
unsafe fn c_str<'a>(name: &str, ptr: *const c_char) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::new(GalaStatus::GalaErrNullPointer, format!("`{name}` is NULL")));
    }
    // SAFETY: non-null; the caller guarantees NUL termination.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| Failure::new(GalaStatus::GalaErrConfig, format!("`{name}` is not valid UTF-8")))
}

/// The message of this thread's last `gala_*` call: "" after a success, else what failed and
/// why. The string belongs to the library and stays valid until this thread's next `gala_*` call.
#[no_mangle]
pub extern "C" fn gala_last_error() -> *const c_char {
    // Only fails during thread teardown; then a static empty string is the honest answer.
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// Creates an engine. `config_toml` holds settings in the format of `gala-gpu train --config`
/// files (e.g. `"agents = 4\nenvs_per_agent = 4\nlr = 1.4e-3\nbackend = \"cpu\"\n"`; keys left out
/// keep their defaults; NULL means all defaults); `actions` is the policy's action count (your
/// environment's). On success `*out` is the new handle; on failure it is set to NULL.
///
/// # Safety
/// `config_toml` is NULL or a NUL-terminated string; `out` points to writable storage for a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_create(config_toml: *const c_char, actions: u32, out: *mut *mut GalaEngine) -> GalaStatus {
    entry("gala_engine_create", || {
        check_ptr("out", out)?;
        // SAFETY: `out` is non-null and aligned (checked above) and writable (caller contract).
        unsafe { *out = std::ptr::null_mut() };
        let config = if config_toml.is_null() {
            Config::default()
        } else {
            // SAFETY: non-null, NUL-terminated by the caller's contract.
            let text = unsafe { c_str("config_toml", config_toml) }?;
            Config::from_toml_str(text, Path::new("<config_toml>"))?
        };
        let engine = Engine::new(&config, actions as usize)?;
        let handle = NEXT_HANDLE.fetch_add(16, Ordering::Relaxed);
        lock(&LIVE).get_or_insert_with(HashMap::new).insert(handle, Arc::new(Mutex::new(Slot { engine, poisoned: None })));
        // SAFETY: as above. The handle is a key, never dereferenced (module docs).
        unsafe { *out = handle as *mut GalaEngine };
        Ok(())
    })
}

/// Frees an engine. NULL is a no-op (`GALA_OK`); a handle that was already freed or never
/// created is `GALA_ERR_INVALID_HANDLE`. Poisoned engines are freed like any other.
/// A call still running on the handle in another thread finishes first.
#[no_mangle]
pub extern "C" fn gala_engine_free(engine: *mut GalaEngine) -> GalaStatus {
    entry("gala_engine_free", || {
        if engine.is_null() {
            return Ok(());
        }
        let slot = lock(&LIVE).as_mut().and_then(|live| live.remove(&(engine as usize)));
        match slot {
            // Dropped here, once any call holding the Arc has returned.
            Some(slot) => {
                drop(slot);
                Ok(())
            }
            None => Err(Failure::new(GalaStatus::GalaErrInvalidHandle, format!("{engine:p} is not a live engine (freed already, or never created)"))),
        }
    })
}

/// Writes the engine's shapes to `*out`.
///
/// # Safety
/// `out` points to a writable `GalaEngineInfo`.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_info(engine: *const GalaEngine, out: *mut GalaEngineInfo) -> GalaStatus {
    entry("gala_engine_info", || {
        with_engine(engine, |e| {
            // SAFETY: one writable GalaEngineInfo by the caller's contract; null/alignment checked.
            let out = unsafe { output("out", out, 1, 1, "one GalaEngineInfo") }?;
            out[0] = GalaEngineInfo {
                agents: e.agents(),
                envs_per_agent: e.envs_per_agent(),
                n_steps: e.n_steps(),
                actions: e.actions(),
                param_count: e.param_count(),
                obs_bytes: OBS_BYTES,
                round: e.round(),
            };
            Ok(())
        })
    })
}

/// Acts for every agent's environments. `obs`: frame stacks `[agents][envs][4][84][84]` uint8
/// (`obs_len` = agents·envs·28224 bytes). Writes `[agents][envs]` actions, and — where the
/// pointer is not NULL — V(s) into `values` and log π(a|s) into `log_probs` (a NULL output's
/// length is ignored). Actions are sampled with the RNG at (seed, agent, env, `step`); pass the
/// number of agent steps taken so far (the bootstrap act after a segment uses the same step as
/// the next segment's first act). `greedy` ≠ 0 takes the most likely action instead.
///
/// # Safety
/// Each non-NULL pointer points to as many elements as its length says, outputs writable and
/// not overlapping any other argument.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_act(
    engine: *mut GalaEngine,
    obs: *const u8,
    obs_len: usize,
    step: u64,
    greedy: c_int,
    actions: *mut u32,
    actions_len: usize,
    values: *mut f32,
    values_len: usize,
    log_probs: *mut f32,
    log_probs_len: usize,
) -> GalaStatus {
    entry("gala_engine_act", || {
        with_engine(engine, |e| {
            let n = e.agents() * e.envs_per_agent();
            let shape = "agents × envs_per_agent";
            // SAFETY (all four): the caller's contract gives each pointer its length in valid elements.
            let obs = unsafe { input("obs", obs, obs_len, n * OBS_BYTES, "agents × envs_per_agent × 4 × 84 × 84 bytes") }?;
            let actions = unsafe { output("actions", actions, actions_len, n, shape) }?;
            let values = if values.is_null() { None } else { Some(unsafe { output("values", values, values_len, n, shape) }?) };
            let log_probs = if log_probs.is_null() { None } else { Some(unsafe { output("log_probs", log_probs, log_probs_len, n, shape) }?) };
            let mut out = ActOutput::default();
            e.act(obs, step, greedy != 0, &mut out)?;
            actions.copy_from_slice(&out.actions);
            if let Some(v) = values {
                v.copy_from_slice(&out.values);
            }
            if let Some(l) = log_probs {
                l.copy_from_slice(&out.log_probs);
            }
            Ok(())
        })
    })
}

/// One A2C update of every agent from a segment of `n_steps` steps (S = agents·n_steps·envs):
/// `obs` `[agents][n_steps][envs][4][84][84]` uint8 (S·28224 bytes), `actions` `[agents][n_steps][envs]`
/// (S), `rewards` (S, as learned from — clip them yourself if you want clipping), `dones` (S, 1.0
/// where the episode ended with that step, else 0.0), `bootstrap_values` `[agents][envs]`: V of the
/// observation after the segment (`values` of a `gala_engine_act` on it).
/// `behaviour_log_probs` (S) is NULL for on-policy data (plain A2C); when the segment was
/// collected by older parameters (pipelining), pass the `log_probs` the acting policy reported
/// and the policy-gradient term is weighted by min(1, π(a|s)/μ(a|s)). `stats` may be NULL;
/// otherwise it receives one `GalaLearnStats` per agent (`stats_len` = agents). A NaN or
/// infinite parameter after the update is `GALA_ERR_NON_FINITE` and poisons the engine.
/// Arguments no environment or `gala_engine_act` produces are refused before anything changes
/// (`GALA_ERR_CONFIG`; the handle stays usable): an action outside the policy's range, a
/// `dones` value other than 0.0 and 1.0, a NaN or infinite `bootstrap_values` or
/// `behaviour_log_probs` value. (A NaN reward is learned from and makes the loss NaN:
/// `GALA_ERR_NON_FINITE`.)
///
/// # Safety
/// Each non-NULL pointer points to as many elements as its length says; `stats` is writable.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_learn(
    engine: *mut GalaEngine,
    obs: *const u8,
    obs_len: usize,
    actions: *const u32,
    actions_len: usize,
    rewards: *const f32,
    rewards_len: usize,
    dones: *const f32,
    dones_len: usize,
    bootstrap_values: *const f32,
    bootstrap_values_len: usize,
    behaviour_log_probs: *const f32,
    behaviour_log_probs_len: usize,
    stats: *mut GalaLearnStats,
    stats_len: usize,
) -> GalaStatus {
    entry("gala_engine_learn", || {
        with_engine(engine, |e| {
            let (agents, envs) = (e.agents(), e.envs_per_agent());
            let s = agents * e.n_steps() * envs;
            let shape = "agents × n_steps × envs_per_agent";
            // SAFETY (all): the caller's contract gives each pointer its length in valid elements.
            let segment = Segment {
                obs: unsafe { input("obs", obs, obs_len, s * OBS_BYTES, "agents × n_steps × envs_per_agent × 4 × 84 × 84 bytes") }?,
                actions: unsafe { input("actions", actions, actions_len, s, shape) }?,
                rewards: unsafe { input("rewards", rewards, rewards_len, s, shape) }?,
                dones: unsafe { input("dones", dones, dones_len, s, shape) }?,
                bootstrap_values: unsafe { input("bootstrap_values", bootstrap_values, bootstrap_values_len, agents * envs, "agents × envs_per_agent") }?,
                behaviour_log_probs: if behaviour_log_probs.is_null() {
                    None
                } else {
                    Some(unsafe { input("behaviour_log_probs", behaviour_log_probs, behaviour_log_probs_len, s, shape) }?)
                },
            };
            let stats = if stats.is_null() { None } else { Some(unsafe { output("stats", stats, stats_len, agents, "agents") }?) };
            if let Some(&bad) = segment.actions.iter().find(|&&a| a as usize >= e.actions()) {
                return Err(Failure::new(GalaStatus::GalaErrConfig, format!("`actions` holds {bad}, but the policy has {} actions", e.actions())));
            }
            let learned = e.learn(&segment)?;
            // Checked here, as the trainer does, so a divergence is reported at the update that
            // caused it rather than as garbage actions later.
            e.check_params_finite()?;
            if let Some(stats) = stats {
                for (dst, s) in stats.iter_mut().zip(learned) {
                    *dst = GalaLearnStats { value_loss: s.value_loss, policy_loss: s.policy_loss, entropy: s.entropy, grad_norm: s.grad_norm };
                }
            }
            Ok(())
        })
    })
}

/// One lock-step gossip round on the configured topology; advances the round counter
/// (without gossip — `algo = "a2c"` or one agent — only the counter advances).
#[no_mangle]
pub extern "C" fn gala_engine_gossip(engine: *mut GalaEngine) -> GalaStatus {
    entry("gala_engine_gossip", || with_engine(engine, |e| Ok(e.gossip()?)))
}

/// Writes max_r ‖θ_r − θ̄‖ / ‖θ̄‖ to `*out`.
///
/// # Safety
/// `out` points to a writable double.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_consensus_distance(engine: *mut GalaEngine, out: *mut f64) -> GalaStatus {
    entry("gala_engine_consensus_distance", || {
        with_engine(engine, |e| {
            // SAFETY: one writable double by the caller's contract.
            let out = unsafe { output("out", out, 1, 1, "one double") }?;
            out[0] = e.consensus_distance()?;
            Ok(())
        })
    })
}

/// Writes the SHA-256 of all agents' parameters (64 hex digits and a NUL; `out_len` ≥ 65) —
/// the `params_sha256` of `gala-gpu train`'s summary.json.
///
/// # Safety
/// `out` points to `out_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_params_sha256(engine: *mut GalaEngine, out: *mut c_char, out_len: usize) -> GalaStatus {
    entry("gala_engine_params_sha256", || {
        with_engine(engine, |e| {
            check_ptr("out", out)?;
            if out_len < 65 {
                return Err(Failure::new(GalaStatus::GalaErrSize, format!("`out` holds {out_len} bytes, needs at least 65")));
            }
            let hex = e.params_sha256()?;
            // SAFETY: `out` has ≥ 65 writable bytes (checked length, caller's contract).
            let out = unsafe { std::slice::from_raw_parts_mut(out as *mut u8, 65) };
            out[..64].copy_from_slice(hex.as_bytes());
            out[64] = 0;
            Ok(())
        })
    })
}

/// Copies all agents' parameters `[agents][P]` into `out` (`out_len` = agents·param_count), in
/// the PyTorch layouts and order of `conv1.weight`, `conv1.bias`, …, `critic.bias`.
///
/// # Safety
/// `out` points to `out_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_read_params(engine: *mut GalaEngine, out: *mut f32, out_len: usize) -> GalaStatus {
    entry("gala_engine_read_params", || {
        with_engine(engine, |e| {
            let want = e.agents() * e.param_count();
            // SAFETY: `out_len` writable floats by the caller's contract.
            let out = unsafe { output("out", out, out_len, want, "agents × param_count") }?;
            out.copy_from_slice(&e.read_params()?);
            Ok(())
        })
    })
}

/// Replaces all agents' parameters from `params` `[agents][P]` (`params_len` = agents·param_count).
/// A NaN or infinite value is refused (`GALA_ERR_CONFIG`, naming the tensor and element) and
/// changes nothing.
///
/// # Safety
/// `params` points to `params_len` readable floats.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_write_params(engine: *mut GalaEngine, params: *const f32, params_len: usize) -> GalaStatus {
    entry("gala_engine_write_params", || {
        with_engine(engine, |e| {
            let want = e.agents() * e.param_count();
            // SAFETY: `params_len` readable floats by the caller's contract.
            let params = unsafe { input("params", params, params_len, want, "agents × param_count") }?;
            Ok(e.write_params(params)?)
        })
    })
}

/// Saves the parameters to `path` as safetensors with the checkpoint's PyTorch names
/// (`agent0.conv1.weight`, …): `safetensors.torch.load_file` reads it. Its metadata holds a
/// SHA-256 of the contents, checked by `gala_engine_load_params`.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_save_params(engine: *mut GalaEngine, path: *const c_char) -> GalaStatus {
    entry("gala_engine_save_params", || {
        with_engine(engine, |e| {
            // SAFETY: NUL-terminated by the caller's contract.
            let path = unsafe { c_str("path", path) }?;
            Ok(e.save_params(Path::new(path))?)
        })
    })
}

/// Loads parameters from a file written by `gala_engine_save_params`, or from a `gala-gpu`
/// checkpoint (or run folder) of the same agents and network. A file that does not match —
/// another agent count, another network, a checksum that does not match its contents (a
/// damaged file), a NaN or infinite value, not a parameter file or checkpoint at all — changes
/// nothing (`GALA_ERR_CONFIG`, saying which); an unreadable file is `GALA_ERR_IO`.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gala_engine_load_params(engine: *mut GalaEngine, path: *const c_char) -> GalaStatus {
    entry("gala_engine_load_params", || {
        with_engine(engine, |e| {
            // SAFETY: NUL-terminated by the caller's contract.
            let path = unsafe { c_str("path", path) }?;
            Ok(e.load_params(Path::new(path))?)
        })
    })
}
