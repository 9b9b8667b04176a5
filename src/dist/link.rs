//! Device-to-device cross-rank messages for lock-step gossip (NCCL on `cuda`), behind one small
//! trait, [`DeviceLink`], beside the host-staged [`RankTransport`](super::RankTransport): the
//! protocol — who sends which agent's θ to which rank, and the order the sums read them in — is
//! `RoundPlan`'s either way; a link only moves the rows the GPU arena points it at
//! (`GpuArena::mix_over_link`).
//!
//! Written here, in every build:
//! * [`choose`]: the ranks agree on the path (every rank able to → a link, else host-staged with
//!   the reason), the NCCL unique id travelling from rank 0 in the same broadcast;
//! * [`probe_nccl`]: whether libnccl can be loaded, checked with `dlopen` before cudarc is asked
//!   anything (its loader panics when the library or a symbol is missing);
//! * [`HostMemoryLink`]: the link for the simulator, whose device memory is host memory — the
//!   NCCL path's plumbing (rows, order, the mix over received rows) tested without a GPU.
//!
//! The NCCL link itself is `nccl::NcclLink` (cargo feature `nccl`).

use super::{lock, Incoming, Outgoing, SharedTransport};
use crate::backend::{Backend, BackendKind};
use crate::device::NativeStream;
use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// One message of a device link: `len` f32 at device address `ptr`, to or from rank `peer`.
/// `tag` is the sending agent; NCCL does not use it (it matches the messages between two ranks
/// by their order, which `RoundPlan` keeps the same on both sides: ascending agents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMessage {
    pub peer: usize,
    pub tag: u32,
    pub ptr: u64,
    pub len: usize,
}

/// Moves lock-step gossip messages between ranks device to device.
pub trait DeviceLink: Send {
    /// For the run's log ("NCCL 2.27.7 (libnccl.so), …").
    fn describe(&self) -> String;
    /// Enqueues one round's receives into `recvs` and sends from `sends` on `stream`, as one
    /// group (so no pair of ranks waits on the other's order), without waiting for them. Between
    /// two ranks, the k-th message one sends is the k-th the other receives.
    fn exchange(&mut self, stream: &NativeStream, sends: &[DeviceMessage], recvs: &[DeviceMessage], timeout: Duration) -> Result<()>;
    /// Waits until `done` says the stream has passed the exchange (and the mix after it), at
    /// most `timeout`; a failure or the timeout is an error naming `peers`, the ranks of the round.
    fn wait(&mut self, done: &mut dyn FnMut() -> Result<bool>, peers: &[usize], timeout: Duration) -> Result<()>;
}

/// How the cross-rank messages of lock-step gossip travel in this run.
pub enum CrossRankPath {
    /// Device to device over a link (NCCL).
    Device(Box<dyn DeviceLink>),
    /// Through host memory and the rank transport (MPI), for this reason.
    HostStaged(String),
}

impl CrossRankPath {
    /// The run's line: "NCCL device to device (…)" or "host-staged (reason)".
    pub fn describe(&self) -> String {
        match self {
            CrossRankPath::Device(link) => link.describe(),
            CrossRankPath::HostStaged(why) => format!("host-staged ({why})"),
        }
    }
}

/// What rank 0 tells every rank: a link, with the bytes its members connect with (NCCL's
/// unique id), or host-staged, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Link(Vec<u8>),
    HostStaged(String),
}

impl Decision {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Decision::Link(id) => [&[1u8][..], id].concat(),
            Decision::HostStaged(why) => [&[0u8][..], why.as_bytes()].concat(),
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((1, id)) => Ok(Decision::Link(id.to_vec())),
            Some((0, why)) => Ok(Decision::HostStaged(String::from_utf8_lossy(why).into_owned())),
            _ => Err(Error::Backend(format!("rank 0's choice of the cross-rank gossip path is malformed ({} bytes)", bytes.len()))),
        }
    }
}

/// A rank's readiness for a link, as rank 0 gathers it: `[1]` and the device it would use
/// (NCCL wants one GPU per rank), or `[0]` and the reason it cannot.
fn encode_ready(ready: &std::result::Result<String, String>) -> Vec<u8> {
    match ready {
        Ok(device) => [&[1u8][..], device.as_bytes()].concat(),
        Err(why) => [&[0u8][..], why.as_bytes()].concat(),
    }
}

/// Rank 0's decision from every rank's readiness (rank order): a link only when all are ready,
/// each on a device of its own.
fn decide(ready: &[Vec<u8>], make_id: impl FnOnce() -> Result<Vec<u8>>) -> Decision {
    let refused: Vec<String> = ready
        .iter()
        .enumerate()
        .filter(|(_, r)| r.first() != Some(&1))
        .map(|(q, r)| format!("rank {q}: {}", String::from_utf8_lossy(r.get(1..).unwrap_or_default())))
        .collect();
    if !refused.is_empty() {
        // Ranks usually refuse for the same reason: say it once, with who.
        let reasons: Vec<&str> = refused.iter().map(|r| r.split_once(": ").map_or("", |(_, w)| w)).collect();
        if reasons.windows(2).all(|w| w[0] == w[1]) && refused.len() == ready.len() {
            return Decision::HostStaged(reasons[0].to_string());
        }
        return Decision::HostStaged(refused.join("; "));
    }
    for (q, r) in ready.iter().enumerate() {
        if let Some(first) = ready[..q].iter().position(|o| o == r) {
            return Decision::HostStaged(format!(
                "ranks {first} and {q} share {}: NCCL needs a GPU per rank (start at most as many processes per machine as it has GPUs)",
                String::from_utf8_lossy(&r[1..])
            ));
        }
    }
    match make_id() {
        Ok(id) => Decision::Link(id),
        Err(e) => Decision::HostStaged(format!("rank 0 could not start NCCL: {e}")),
    }
}

/// The ranks agree on the path (collective: every rank calls it, in the same place): rank 0
/// gathers every rank's readiness; when all are ready it makes the link's id (`make_id`, NCCL's
/// unique id) and broadcasts it, and every rank `connect`s with it; otherwise every rank
/// learns the reason and stays host-staged. A rank that cannot connect after all agreed is an
/// error (the others are connecting at the same moment).
pub(crate) fn agree(
    transport: &SharedTransport, ready: std::result::Result<String, String>, make_id: impl FnOnce() -> Result<Vec<u8>>,
    connect: impl FnOnce(&[u8]) -> Result<Box<dyn DeviceLink>>, timeout: Duration,
) -> Result<CrossRankPath> {
    let decision = {
        let mut t = lock(transport);
        let gathered = t.gather(&encode_ready(&ready), timeout)?;
        let mine = gathered.map(|all| decide(&all, make_id).encode()).unwrap_or_default();
        Decision::decode(&t.broadcast(&mine, timeout)?)?
    };
    match decision {
        Decision::HostStaged(why) => Ok(CrossRankPath::HostStaged(why)),
        Decision::Link(id) => connect(&id).map(CrossRankPath::Device).map_err(|e| {
            Error::Backend(format!("every rank can use NCCL, but this rank could not join the communicator: {e}; GALA_GPU_NCCL=0 runs the gossip host-staged"))
        }),
    }
}

/// Chooses the path of a lock-step run's cross-rank messages, after the trainer has opened this
/// rank's backend. `kind` is the configured backend (the same on every rank, so every rank
/// takes the same branch); `host_memory_link` is the test hook that runs the device path on the
/// simulator ([`HostMemoryLink`]).
pub fn choose(
    kind: BackendKind, backend: &mut dyn Backend, transport: &SharedTransport, host_memory_link: bool, timeout: Duration,
) -> Result<CrossRankPath> {
    if host_memory_link {
        if backend.name() != "sim" {
            return Err(Error::Config(format!("the host-memory device link runs on the simulator only, not on the {} backend", backend.name())));
        }
        let t = transport.clone();
        let device = format!("the simulator of rank {}", lock(transport).rank());
        return agree(transport, Ok(device), || Ok(Vec::new()), move |_| Ok(Box::new(HostMemoryLink::new(t))), timeout);
    }
    match kind {
        BackendKind::Cpu | BackendKind::Sim => {
            let name = format!("{kind:?}").to_lowercase();
            Ok(CrossRankPath::HostStaged(format!("the {name} backend keeps its parameters in host memory; NCCL is for --backend cuda")))
        }
        BackendKind::Cuda | BackendKind::Auto => nccl_path(backend, transport, timeout),
    }
}

#[cfg(not(feature = "nccl"))]
fn nccl_path(_backend: &mut dyn Backend, _transport: &SharedTransport, _timeout: Duration) -> Result<CrossRankPath> {
    // Every rank runs the same build (the configurations were compared): nothing to agree on.
    Ok(CrossRankPath::HostStaged("this gala-gpu was built without NCCL: `cargo build --release --features nccl`".into()))
}

#[cfg(feature = "nccl")]
fn nccl_path(backend: &mut dyn Backend, transport: &SharedTransport, timeout: Duration) -> Result<CrossRankPath> {
    let (rank, ranks) = {
        let t = lock(transport);
        (t.rank(), t.ranks())
    };
    // Whatever fails here is this rank's reason, told to the others (who wait in `agree`).
    let ready = nccl_ready(backend).and_then(|(file, device)| match backend.native_stream() {
        Ok(Some(native)) => Ok((file, device, native)),
        Ok(None) => Err("the backend has no device stream".to_string()),
        Err(e) => Err(format!("its device stream: {e}")),
    });
    let (announced, joining) = match ready {
        Ok((file, device, native)) => (Ok(device), Some((file, native))),
        Err(why) => (Err(why), None),
    };
    let connect = |id: &[u8]| -> Result<Box<dyn DeviceLink>> {
        let (file, native) = joining.ok_or_else(|| Error::Backend("this rank was not ready for NCCL".into()))?;
        Ok(Box::new(super::nccl::NcclLink::connect(id, rank, ranks, &native, file, timeout)?))
    };
    agree(transport, announced, super::nccl::unique_id, connect, timeout)
}

/// Whether this rank can use NCCL: on `cuda`, not turned off, with a loadable libnccl; when so,
/// the library's file name and the GPU this rank uses (machine, visible devices, ordinal).
#[cfg(feature = "nccl")]
fn nccl_ready(backend: &mut dyn Backend) -> std::result::Result<(String, String), String> {
    if backend.name() != "cuda" {
        return Err(format!("the {} backend (auto found no usable GPU)", backend.name()));
    }
    if std::env::var("GALA_GPU_NCCL").is_ok_and(|v| v == "0") {
        return Err("GALA_GPU_NCCL=0".into());
    }
    let file = probe_nccl()?;
    Ok((file, device_key(crate::backend::cuda_ordinal())))
}

/// Names the GPU `ordinal` of this process among those of the run: the machine, the devices
/// CUDA_VISIBLE_DEVICES leaves visible, the ordinal. Two ranks with the same key share a GPU
/// (different visible lists are taken as different GPUs).
pub fn device_key(ordinal: usize) -> String {
    let mut name = [0 as libc::c_char; 256];
    // SAFETY: the buffer is 256 bytes and NUL-terminated below whatever gethostname wrote.
    let host = if unsafe { libc::gethostname(name.as_mut_ptr(), name.len() - 1) } == 0 {
        // SAFETY: NUL-terminated within the buffer (its last byte was never written).
        unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned()
    } else {
        "?".into()
    };
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => format!("GPU {ordinal} of CUDA_VISIBLE_DEVICES={v} on {host}"),
        Err(_) => format!("GPU {ordinal} on {host}"),
    }
}

/// The NCCL symbols the link calls: cudarc resolves each on first use and panics when one is
/// missing, so all are checked before the first call.
pub const NCCL_SYMBOLS: &[&str] = &[
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclCommGetAsyncError",
    "ncclGetErrorString",
    "ncclGetLastError",
    "ncclGroupStart",
    "ncclGroupEnd",
    "ncclSend",
    "ncclRecv",
];

/// The soname NCCL 2 installs (the `nvidia-nccl-cu13` wheel ships only this file).
pub const NCCL_SONAME: &str = "libnccl.so.2";

/// Whether libnccl can be loaded the way cudarc loads it (the first of its candidate names that
/// `dlopen` finds on the library path) with every symbol the link calls: that file's name, or
/// why not, with what to do.
pub fn probe_nccl() -> std::result::Result<String, String> {
    probe_library(&cudarc::get_lib_name_candidates("nccl"), NCCL_SONAME, NCCL_SYMBOLS)
}

fn dlopen(name: &str) -> Option<*mut libc::c_void> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: plain dlopen of a library name; the handle is closed by the caller.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    (!handle.is_null()).then_some(handle)
}

fn probe_library(candidates: &[String], soname: &str, symbols: &[&str]) -> std::result::Result<String, String> {
    for name in candidates {
        let Some(handle) = dlopen(name) else { continue };
        let missing: Vec<&str> = symbols
            .iter()
            .copied()
            .filter(|s| {
                let c = std::ffi::CString::new(*s).expect("symbol names have no NUL");
                // SAFETY: a live handle from dlopen; only the address is looked up.
                unsafe { libc::dlsym(handle, c.as_ptr()) }.is_null()
            })
            .collect();
        // SAFETY: the handle came from dlopen above and nothing from it is used after this.
        unsafe { libc::dlclose(handle) };
        return if missing.is_empty() {
            Ok(name.clone())
        } else {
            Err(format!("{name} lacks {} (an NCCL 2.19 or newer is needed)", missing.join(", ")))
        };
    }
    if let Some(handle) = dlopen(soname) {
        // SAFETY: as above.
        unsafe { libc::dlclose(handle) };
        return Err(format!(
            "{soname} is on the library path, but cudarc loads libnccl by the names {}…, not {soname}: add a link `libnccl.so -> {soname}` in a folder on LD_LIBRARY_PATH (bench/gpu/nccl-env.sh does)",
            candidates.iter().take(1).chain(candidates.iter().filter(|c| c.contains(".so.")).take(2)).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Err(format!(
        "libnccl was not found on the library path (looked for {soname} and {}): `pip install nvidia-nccl-cu13`, then `. bench/gpu/nccl-env.sh`",
        candidates.first().map_or("libnccl.so", String::as_str)
    ))
}

/// Waits for `done` until `timeout`, polling every 20 µs at first and every millisecond once a
/// millisecond has passed; false when the time ran out.
pub(crate) fn poll_until(done: &mut dyn FnMut() -> Result<bool>, timeout: Duration, mut each: impl FnMut() -> Result<()>) -> Result<bool> {
    let started = Instant::now();
    loop {
        if done()? {
            return Ok(true);
        }
        each()?;
        let waited = started.elapsed();
        if waited >= timeout {
            return Ok(false);
        }
        std::thread::sleep(if waited < Duration::from_millis(1) { Duration::from_micros(20) } else { Duration::from_millis(1) });
    }
}

/// The device link of the simulator, whose device memory is host memory: the rows a round
/// points at are read and written in place and carried by the rank transport (tagged with the
/// sending agent). It exists so that the NCCL path's plumbing — which rows go where, the mix
/// over the received rows, bit-identity with one process — is tested without a GPU; on a CUDA
/// stream it refuses.
pub struct HostMemoryLink {
    transport: SharedTransport,
}

impl HostMemoryLink {
    pub fn new(transport: SharedTransport) -> Self {
        HostMemoryLink { transport }
    }
}

impl DeviceLink for HostMemoryLink {
    fn describe(&self) -> String {
        "device to device through host memory (the simulator's stand-in for NCCL)".into()
    }

    fn exchange(&mut self, stream: &NativeStream, sends: &[DeviceMessage], recvs: &[DeviceMessage], timeout: Duration) -> Result<()> {
        if !matches!(stream, NativeStream::Host) {
            return Err(Error::Unsupported("the host-memory device link needs the simulator's memory, not a CUDA stream".into()));
        }
        let bytes = |m: &DeviceMessage| m.len * std::mem::size_of::<f32>();
        // SAFETY: under the simulator a device address is the host address of a live buffer
        // (the arena's snapshot rows, alive for this call); the caller's send rows and receive
        // rows are disjoint, so no byte is both read and written here.
        let outgoing: Vec<Outgoing<'_>> = sends
            .iter()
            .map(|m| Outgoing { to: m.peer, tag: m.tag, data: unsafe { std::slice::from_raw_parts(m.ptr as *const u8, bytes(m)) } })
            .collect();
        // SAFETY: as above.
        let mut incoming: Vec<Incoming<'_>> = recvs
            .iter()
            .map(|m| Incoming { from: m.peer, tag: m.tag, data: unsafe { std::slice::from_raw_parts_mut(m.ptr as *mut u8, bytes(m)) } })
            .collect();
        lock(&self.transport).exchange(&outgoing, &mut incoming, timeout)
    }

    fn wait(&mut self, done: &mut dyn FnMut() -> Result<bool>, peers: &[usize], timeout: Duration) -> Result<()> {
        if poll_until(done, timeout, || Ok(()))? {
            Ok(())
        } else {
            Err(Error::Backend(format!("the round with rank(s) {peers:?} did not finish within {:.0} s", timeout.as_secs_f64())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::local::LocalRanks;
    use crate::dist::RankTransport;
    use std::sync::{Arc, Mutex};

    #[test]
    fn decisions_survive_the_broadcast() {
        let id: Vec<u8> = (0..128u8).collect();
        for d in [Decision::Link(id), Decision::Link(Vec::new()), Decision::HostStaged("rank 1: no libnccl".into())] {
            assert_eq!(Decision::decode(&d.encode()).unwrap(), d);
        }
        assert!(Decision::decode(&[]).unwrap_err().to_string().contains("malformed"));
        assert!(Decision::decode(&[7, 1]).is_err());
    }

    #[test]
    fn a_link_needs_every_rank() {
        let on = |d: usize| encode_ready(&Ok(device_key(d)));
        let ok = on(0);
        let no = |w: &str| encode_ready(&Err(w.into()));
        assert_eq!(decide(&[on(0), on(1)], || Ok(vec![9; 128])), Decision::Link(vec![9; 128]));
        // Two ranks on one GPU (more processes than GPUs on a machine): host-staged, naming them.
        let d = decide(&[on(0), on(1), on(0)], || panic!("no id when ranks share a GPU"));
        assert!(matches!(&d, Decision::HostStaged(w) if w.starts_with("ranks 0 and 2 share GPU 0") && w.contains("a GPU per rank")), "{d:?}");
        // One rank without: host-staged, naming it; rank 0 makes no id.
        let d = decide(&[ok.clone(), no("libnccl was not found")], || panic!("no id when a rank refuses"));
        assert_eq!(d, Decision::HostStaged("rank 1: libnccl was not found".into()));
        // Every rank for the same reason: said once.
        assert_eq!(decide(&[no("GALA_GPU_NCCL=0"), no("GALA_GPU_NCCL=0")], || Ok(vec![])), Decision::HostStaged("GALA_GPU_NCCL=0".into()));
        // Rank 0 cannot make the id: host-staged with its error.
        let d = decide(&[ok, on(1)], || Err(Error::Backend("ncclGetUniqueId failed".into())));
        assert!(matches!(&d, Decision::HostStaged(w) if w.contains("rank 0 could not start NCCL") && w.contains("ncclGetUniqueId")), "{d:?}");
    }

    /// The agreement over real ranks (threads): the id made on rank 0 reaches every rank's
    /// `connect`; one unready rank keeps every rank host-staged with its reason.
    #[test]
    fn ranks_agree_on_the_path_and_the_id_reaches_all() {
        let t = Duration::from_secs(10);
        let run = |unready: Option<usize>| -> Vec<String> {
            std::thread::scope(|s| {
                let hs: Vec<_> = LocalRanks::group(3)
                    .into_iter()
                    .map(|ep| {
                        s.spawn(move || {
                            let rank = ep.rank();
                            let shared: SharedTransport = Arc::new(Mutex::new(Box::new(ep)));
                            let ready = if Some(rank) == unready { Err("libnccl was not found".to_string()) } else { Ok(device_key(rank)) };
                            let make_id = move || {
                                assert_eq!(rank, 0, "only rank 0 makes the id");
                                Ok(vec![42u8; 128])
                            };
                            let tr = shared.clone();
                            let connect = move |id: &[u8]| -> Result<Box<dyn DeviceLink>> {
                                assert_eq!(id, &[42u8; 128][..]);
                                Ok(Box::new(HostMemoryLink::new(tr)))
                            };
                            agree(&shared, ready, make_id, connect, t).unwrap().describe()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            })
        };
        assert!(run(None).iter().all(|d| d.contains("through host memory")), "{:?}", run(None));
        let got = run(Some(2));
        assert!(got.iter().all(|d| d == "host-staged (rank 2: libnccl was not found)"), "{got:?}");
    }

    #[test]
    fn a_missing_library_is_a_reason_not_a_panic() {
        let none = vec!["libgala-no-such-library.so".to_string()];
        let err = probe_library(&none, "libgala-no-such-library.so.2", NCCL_SYMBOLS).unwrap_err();
        assert!(err.contains("was not found") && err.contains("pip install nvidia-nccl-cu13"), "{err}");
        // Only the soname is there (the wheel's layout): say which link to add.
        let err = probe_library(&none, "libc.so.6", NCCL_SYMBOLS).unwrap_err();
        assert!(err.contains("libc.so.6 is on the library path") && err.contains("libnccl.so ->"), "{err}");
        // A library without the symbols is named with what it lacks; one with them is taken.
        let libc = vec!["libc.so.6".to_string()];
        let err = probe_library(&libc, NCCL_SONAME, &["malloc", "ncclSend"]).unwrap_err();
        assert!(err.contains("lacks ncclSend") && !err.contains("malloc"), "{err}");
        assert_eq!(probe_library(&libc, NCCL_SONAME, &["malloc"]), Ok("libc.so.6".to_string()));
        // cudarc's own candidate list starts with libnccl.so, which the wheel does not ship.
        assert_eq!(cudarc::get_lib_name_candidates("nccl")[0], "libnccl.so");
    }

    /// On a machine without libnccl (CI, this one) the probe says so; with it, it names the file.
    #[test]
    fn the_probe_of_this_machine_answers() {
        match probe_nccl() {
            Ok(file) => assert!(file.starts_with("libnccl"), "{file}"),
            Err(why) => assert!(why.contains("libnccl") || why.contains(NCCL_SONAME), "{why}"),
        }
    }

    #[test]
    fn the_host_memory_link_refuses_a_cuda_stream() {
        let shared: SharedTransport = Arc::new(Mutex::new(Box::new(LocalRanks::group(1).pop().unwrap())));
        let cuda = NativeStream::Cuda { stream: 1, context: 1, keep: Arc::new(()) };
        let err = HostMemoryLink::new(shared).exchange(&cuda, &[], &[], Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains("simulator"), "{err}");
    }
}
