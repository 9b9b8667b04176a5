//! The NCCL device link (cargo feature `nccl`): lock-step gossip messages between ranks go GPU
//! to GPU with `ncclSend`/`ncclRecv` on the agents' own stream (cudarc's raw NCCL bindings,
//! loaded at run time: libnccl is needed only where the link is used, and `link::probe_nccl`
//! has checked it loads before anything here is called).
//!
//! One communicator over every rank, made once per run: rank 0's `ncclGetUniqueId` reaches
//! the others in the path agreement's MPI broadcast (`link::agree`), then every rank joins
//! with `ncclCommInitRank` on the CUDA device its backend opened. A round is one NCCL group of
//! the receives and sends `RoundPlan` lists, enqueued on the arena's stream between the snapshot
//! copy and the mix launch, so the device orders transfer and mix and the host waits once.
//!
//! Never tested on hardware in this repository's CI (no GPU there); see README
//! ("GPU to GPU with NCCL") for the test a machine with two GPUs runs.

use super::link::{poll_until, DeviceLink, DeviceMessage};
use crate::device::NativeStream;
use crate::error::{Error, Result};
use cudarc::nccl::{result, sys};
use std::ffi::{c_void, CStr};
use std::time::Duration;

/// NCCL's text for `code`, plus the communicator's last error message when there is one.
fn nccl_error(what: &str, code: sys::ncclResult_t, comm: Option<sys::ncclComm_t>) -> Error {
    // SAFETY: ncclGetErrorString returns a static string for any code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(code)) }.to_string_lossy().into_owned();
    // SAFETY: a live communicator; the returned string is NCCL's own, read at once.
    let last = comm.map(|c| unsafe { CStr::from_ptr(sys::ncclGetLastError(c)) }.to_string_lossy().into_owned()).filter(|s| !s.is_empty());
    Error::Backend(format!("NCCL {what} failed: {text} ({code:?}){}", last.map(|l| format!(": {l}")).unwrap_or_default()))
}

/// Rank 0's `ncclUniqueId`, as the bytes the path agreement broadcasts.
pub fn unique_id() -> Result<Vec<u8>> {
    let id = result::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e.0, None))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// The id from the broadcast bytes (exactly `ncclUniqueId`'s 128).
fn id_from_bytes(bytes: &[u8]) -> Result<sys::ncclUniqueId> {
    let mut internal = [0 as std::ffi::c_char; 128];
    if bytes.len() != internal.len() {
        return Err(Error::Backend(format!("an NCCL unique id is {} bytes, rank 0 sent {}", internal.len(), bytes.len())));
    }
    for (d, &b) in internal.iter_mut().zip(bytes) {
        *d = b as std::ffi::c_char;
    }
    Ok(sys::ncclUniqueId { internal })
}

/// A communicator handle that may cross to the thread that waits for `ncclCommInitRank`.
struct Comm(sys::ncclComm_t);
// SAFETY: an NCCL communicator may be used from any thread, one at a time (the link is used
// behind `&mut self` only).
unsafe impl Send for Comm {}

/// This rank's member of the run's NCCL communicator.
pub struct NcclLink {
    /// None once aborted after a failure (every later call is refused).
    comm: Option<sys::ncclComm_t>,
    rank: usize,
    ranks: usize,
    version: i32,
    library: String,
    /// Keeps the CUDA context alive while the communicator uses it.
    _context: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

// SAFETY: as for `Comm`.
unsafe impl Send for NcclLink {}

impl NcclLink {
    /// Joins the communicator `id` names as `rank` of `ranks`, on the CUDA device of `stream`
    /// (its context is made current for the call). `ncclCommInitRank` returns only once every
    /// rank has joined, so it runs on a helper thread and a rank that never joins is an error
    /// after `timeout`, not a hang (the helper is left blocked in NCCL; the run ends on the error).
    pub fn connect(id: &[u8], rank: usize, ranks: usize, stream: &NativeStream, library: String, timeout: Duration) -> Result<Self> {
        let NativeStream::Cuda { context, keep, .. } = stream else {
            return Err(Error::Unsupported("NCCL needs a CUDA stream".into()));
        };
        let id = id_from_bytes(id)?;
        // SAFETY: only tries to dlopen the driver library (the helper below calls into it).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Backend("NCCL needs the CUDA driver library (libcuda.so), which was not found".into()));
        }
        let (nranks, me) = (i32::try_from(ranks), i32::try_from(rank));
        let (Ok(nranks), Ok(me)) = (nranks, me) else {
            return Err(Error::Unsupported(format!("{ranks} ranks are more than NCCL counts")));
        };
        let context = *context;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("gala-nccl-init".into())
            .spawn(move || {
                // SAFETY: the context is alive (the caller's `keep` holds it) and was created by
                // cudarc for this device; making it current selects the GPU NCCL joins with.
                let joined = match unsafe { cudarc::driver::result::ctx::set_current(context as cudarc::driver::sys::CUcontext) } {
                    Err(e) => Err(Error::Backend(format!("CUDA context for NCCL: {e:?}"))),
                    Ok(()) => {
                        let mut comm = std::mem::MaybeUninit::uninit();
                        // SAFETY: `comm` is written by NCCL on success and read only then.
                        match unsafe { result::comm_init_rank(comm.as_mut_ptr(), nranks, id, me) } {
                            Ok(_) => Ok(Comm(unsafe { comm.assume_init() })),
                            Err(e) => Err(nccl_error("ncclCommInitRank", e.0, None)),
                        }
                    }
                };
                let _ = tx.send(joined);
            })
            .map_err(|e| Error::Backend(format!("cannot start the NCCL set-up thread: {e}")))?;
        let comm = match rx.recv_timeout(timeout) {
            Ok(joined) => joined?.0,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(Error::Backend(format!(
                    "the NCCL communicator of {ranks} ranks was not complete within {:.0} s (gossip_timeout): a rank did not join",
                    timeout.as_secs_f64()
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Backend("the NCCL set-up thread ended without an answer (a library it needed could not be loaded)".into()))
            }
        };
        let version = result::get_nccl_version().map_err(|e| nccl_error("ncclGetVersion", e.0, Some(comm)))?;
        Ok(NcclLink { comm: Some(comm), rank, ranks, version, library, _context: keep.clone() })
    }

    fn comm(&self) -> Result<sys::ncclComm_t> {
        self.comm.ok_or_else(|| Error::Backend("the NCCL communicator was aborted after an earlier failure".into()))
    }

    /// Aborts the communicator (NCCL's way out of operations that will never complete: it
    /// ends the kernels still waiting for a peer).
    fn abort(&mut self) {
        if let Some(comm) = self.comm.take() {
            // SAFETY: a live communicator, not used after this.
            let _ = unsafe { result::comm_abort(comm) };
        }
    }
}

impl Drop for NcclLink {
    fn drop(&mut self) {
        if let Some(comm) = self.comm.take() {
            // SAFETY: a live communicator whose operations have all completed (every round
            // waited for its stream); not used after this. Errors cannot be reported from drop.
            let _ = unsafe { result::comm_destroy(comm) };
        }
    }
}

impl DeviceLink for NcclLink {
    fn describe(&self) -> String {
        let v = self.version;
        // NCCL_VERSION_CODE is major*10000 + minor*100 + patch since 2.9.
        format!("NCCL device to device (NCCL {}.{}.{}, {}, {} ranks, on the agents' stream)", v / 10000, v / 100 % 100, v % 100, self.library, self.ranks)
    }

    fn exchange(&mut self, stream: &NativeStream, sends: &[DeviceMessage], recvs: &[DeviceMessage], _timeout: Duration) -> Result<()> {
        let comm = self.comm()?;
        let NativeStream::Cuda { stream, .. } = stream else {
            return Err(Error::Unsupported("NCCL needs a CUDA stream".into()));
        };
        if let Some(m) = sends.iter().chain(recvs).find(|m| m.peer >= self.ranks || m.peer == self.rank) {
            return Err(Error::Backend(format!("rank {} cannot exchange with rank {} of {} over NCCL", self.rank, m.peer, self.ranks)));
        }
        let s = *stream as sys::cudaStream_t;
        let f32 = sys::ncclDataType_t::ncclFloat32;
        result::group_start().map_err(|e| nccl_error("ncclGroupStart", e.0, Some(comm)))?;
        // Every call between start and end is made, even after a failure, so the group is
        // closed either way; the first failure is the one reported.
        let mut posted = Ok(());
        for m in recvs {
            // SAFETY: `ptr` is a live device buffer of at least `len` f32 on this stream's
            // device (the arena's snapshot rows), not freed before the stream passes this.
            let r = unsafe { result::recv(m.ptr as *mut c_void, m.len, f32, m.peer as i32, comm, s) };
            if let (Ok(()), Err(e)) = (&posted, r) {
                posted = Err(nccl_error(&format!("ncclRecv from rank {}", m.peer), e.0, Some(comm)));
            }
        }
        for m in sends {
            // SAFETY: as above; NCCL only reads a send buffer.
            let r = unsafe { result::send(m.ptr as *const c_void, m.len, f32, m.peer as i32, comm, s) };
            if let (Ok(()), Err(e)) = (&posted, r) {
                posted = Err(nccl_error(&format!("ncclSend to rank {}", m.peer), e.0, Some(comm)));
            }
        }
        let ended = result::group_end().map(|_| ()).map_err(|e| nccl_error("ncclGroupEnd", e.0, Some(comm)));
        let outcome = posted.and(ended);
        if outcome.is_err() {
            self.abort();
        }
        outcome
    }

    fn wait(&mut self, done: &mut dyn FnMut() -> Result<bool>, peers: &[usize], timeout: Duration) -> Result<()> {
        let comm = self.comm()?;
        // NCCL reports a failed peer connection asynchronously; check it while waiting.
        let check = || {
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator and an out-parameter.
            let rc = unsafe { sys::ncclCommGetAsyncError(comm, &mut state) };
            match (rc, state) {
                (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress) => Ok(()),
                (sys::ncclResult_t::ncclSuccess, bad) => Err(nccl_error(&format!("the round with rank(s) {peers:?}"), bad, Some(comm))),
                (rc, _) => Err(nccl_error("ncclCommGetAsyncError", rc, Some(comm))),
            }
        };
        match poll_until(done, timeout, check) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.abort();
                Err(Error::Backend(format!(
                    "no answer from rank(s) {peers:?} over NCCL within {:.0} s (gossip_timeout): stopped, hung or too slow; the communicator was aborted",
                    timeout.as_secs_f64()
                )))
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With libnccl loadable (`. bench/gpu/nccl-env.sh`; no GPU needed), cudarc loads the file
    /// the probe found and answers what rank 0 asks before any GPU work: the version and a
    /// unique id of 128 bytes that survives the broadcast's byte form. Without libnccl it says
    /// so and passes, unless GALA_REQUIRE_NCCL=1.
    #[test]
    fn libnccl_answers_through_cudarc_when_present() {
        if let Err(why) = super::super::link::probe_nccl() {
            assert_ne!(std::env::var("GALA_REQUIRE_NCCL").as_deref(), Ok("1"), "GALA_REQUIRE_NCCL=1, but {why}");
            eprintln!("skipped: {why}");
            return;
        }
        let v = result::get_nccl_version().map_err(|e| nccl_error("ncclGetVersion", e.0, None)).unwrap();
        assert!(v >= 21900, "NCCL version code {v}: 2.19 or newer is needed");
        let id = unique_id().unwrap();
        assert_eq!(id.len(), 128);
        assert!(id.iter().any(|&b| b != 0), "an all-zero unique id");
        assert_eq!(id_from_bytes(&id).unwrap().internal.iter().map(|&c| c as u8).collect::<Vec<_>>(), id);
        // A second id differs (each names its own bootstrap).
        assert_ne!(unique_id().unwrap(), id);
    }

    /// Joining refuses, with a message, what it cannot do, before NCCL is called.
    #[test]
    fn joining_without_a_cuda_stream_or_a_valid_id_is_an_error() {
        let t = Duration::from_secs(5);
        let err = NcclLink::connect(&[0; 128], 0, 2, &NativeStream::Host, String::new(), t).err().unwrap().to_string();
        assert!(err.contains("NCCL needs a CUDA stream"), "{err}");
        let cuda = NativeStream::Cuda { stream: 0, context: 0, keep: std::sync::Arc::new(()) };
        let err = NcclLink::connect(&[0; 7], 0, 2, &cuda, String::new(), t).err().unwrap().to_string();
        assert!(err.contains("128 bytes, rank 0 sent 7"), "{err}");
        // SAFETY: only tries to dlopen the driver library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            let err = NcclLink::connect(&[0; 128], 0, 2, &cuda, String::new(), t).err().unwrap().to_string();
            assert!(err.contains("libcuda.so"), "{err}");
        }
    }

    #[test]
    fn the_unique_id_crosses_as_its_128_bytes() {
        let bytes: Vec<u8> = (0..128).map(|i| (i * 7 % 256) as u8).collect();
        let id = id_from_bytes(&bytes).unwrap();
        assert_eq!(id.internal.iter().map(|&c| c as u8).collect::<Vec<_>>(), bytes);
        let err = id_from_bytes(&bytes[..100]).unwrap_err().to_string();
        assert!(err.contains("128 bytes, rank 0 sent 100"), "{err}");
    }
}
