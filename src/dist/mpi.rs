//! The MPI transport (cargo feature `mpi`): ranks are the processes `mpirun`/`srun` started,
//! messages are non-blocking point-to-point on MPI_COMM_WORLD, host-staged (any backend).
//!
//! rsmpi initialises and finalises MPI; the messages use its raw bindings (`mpi::ffi`) because
//! the protocol needs what the safe wrappers hide: every request is polled with `MPI_Test`
//! against a deadline (a silent rank must become an error naming it, not a hang) and the
//! communicator's error handler is `MPI_ERRORS_RETURN`, so an MPI failure comes back as an
//! error code that is turned into a message here instead of MPI aborting the job silently.

use super::{Incoming, Outgoing, RankTransport, ASYNC_TAG};
use crate::error::{Error, Result};
use mpi::ffi;
use std::os::raw::{c_char, c_int, c_void};
use std::time::{Duration, Instant};

/// MPI counts are C ints: larger messages travel as several, in order (same tag).
const CHUNK: usize = 1 << 30;

/// MPI itself, initialised for this process: dropping it finalises MPI. Kept apart from the
/// transport on purpose: MPI_Finalize waits for every other rank, so after a failure (a rank
/// that no longer answers) it would hang; the caller drops it only after a run that ended well
/// on every rank, and otherwise ends the job with [`abort_job`].
pub struct MpiSession {
    _universe: mpi::environment::Universe,
}

/// This process's place in the MPI job.
pub struct MpiTransport {
    rank: usize,
    ranks: usize,
    processor: String,
    /// Posted messages still leaving (asynchronous gossip): their requests own the buffers.
    outbox: Vec<(ffi::MPI_Request, Vec<u8>, usize)>,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED and every call goes through `&mut self`
// (the transport sits behind a Mutex in `dist`), so calls are never concurrent; the universe
// holds no thread-affine state.
unsafe impl Send for MpiTransport {}

fn error_string(code: c_int) -> String {
    let mut buf = vec![0 as c_char; 1024];
    let mut len: c_int = 0;
    // SAFETY: the buffer holds MPI_MAX_ERROR_STRING (≤ 1024 in Open MPI and MPICH) characters.
    let rc = unsafe { ffi::MPI_Error_string(code, buf.as_mut_ptr(), &mut len) };
    if rc != 0 || len <= 0 {
        return format!("MPI error {code}");
    }
    let bytes: Vec<u8> = buf[..len as usize].iter().map(|&c| c as u8).collect();
    format!("{} (MPI error {code})", String::from_utf8_lossy(&bytes))
}

fn check(rc: c_int, what: impl FnOnce() -> String) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Backend(format!("{}: {}", what(), error_string(rc))))
    }
}

impl MpiTransport {
    /// Initialises MPI (thread level SERIALIZED) and makes MPI_COMM_WORLD return errors instead
    /// of aborting. Fails when MPI was initialised before or the library refuses.
    pub fn init() -> Result<(MpiSession, Self)> {
        let (universe, provided) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| Error::Backend("MPI was already initialised in this process".into()))?;
        if provided < mpi::Threading::Serialized {
            return Err(Error::Unsupported(format!("the MPI library offers thread level {provided:?}; gala-gpu needs SERIALIZED")));
        }
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: plain MPI calls on the world communicator after MPI_Init_thread.
        unsafe {
            check(ffi::MPI_Comm_set_errhandler(ffi::RSMPI_COMM_WORLD, ffi::RSMPI_ERRORS_RETURN), || "MPI_Comm_set_errhandler".into())?;
            check(ffi::MPI_Comm_rank(ffi::RSMPI_COMM_WORLD, &mut rank), || "MPI_Comm_rank".into())?;
            check(ffi::MPI_Comm_size(ffi::RSMPI_COMM_WORLD, &mut size), || "MPI_Comm_size".into())?;
        }
        let mut name = vec![0 as c_char; 256];
        let mut len: c_int = 0;
        // SAFETY: MPI_MAX_PROCESSOR_NAME is 256 in Open MPI and MPICH.
        let processor = if unsafe { ffi::MPI_Get_processor_name(name.as_mut_ptr(), &mut len) } == 0 && len > 0 {
            String::from_utf8_lossy(&name[..len as usize].iter().map(|&c| c as u8).collect::<Vec<u8>>()).into_owned()
        } else {
            "?".into()
        };
        Ok((MpiSession { _universe: universe }, MpiTransport { rank: rank as usize, ranks: size as usize, processor, outbox: Vec::new() }))
    }

}

/// Ends the whole MPI job now (every rank) with `code`, after a failure the other ranks cannot
/// get past (they would wait for this rank until their gossip_timeout). Call only after MPI was
/// initialised (`MpiTransport::init`).
pub fn abort_job(code: i32) -> ! {
    // SAFETY: MPI_Abort on the world communicator; it does not return in practice.
    unsafe {
        ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::exit(code)
}

/// One posted request and whom it concerns.
struct Pending {
    request: ffi::MPI_Request,
    peer: usize,
    receive: bool,
    done: bool,
}

impl RankTransport for MpiTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn describe(&self) -> String {
        format!("MPI ({} processes; rank {} on {}; non-blocking point-to-point through host memory)", self.ranks, self.rank, self.processor)
    }

    fn post(&mut self, to: usize, data: Vec<u8>) -> Result<()> {
        let count = c_int::try_from(data.len())
            .map_err(|_| Error::Unsupported(format!("an asynchronous gossip message of {} bytes (MPI counts stop at 2 GiB)", data.len())))?;
        // SAFETY: RSMPI_REQUEST_NULL is a valid initial handle value.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: the buffer lives in `outbox` (a Vec's heap block does not move) until
        // MPI_Test reports the send complete.
        let rc = unsafe {
            ffi::MPI_Isend(data.as_ptr() as *mut c_void, count, ffi::RSMPI_UINT8_T, to as c_int, ASYNC_TAG as c_int, ffi::RSMPI_COMM_WORLD, &mut request)
        };
        check(rc, || format!("sending to rank {to}"))?;
        self.outbox.push((request, data, to));
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<(usize, Vec<u8>)>> {
        self.posted_done()?;
        let mut flag: c_int = 0;
        // SAFETY: a zeroed MPI_Status is a valid out-parameter.
        let mut status: ffi::MPI_Status = unsafe { std::mem::zeroed() };
        // SAFETY: plain probe on the world communicator.
        let rc = unsafe { ffi::MPI_Iprobe(ffi::RSMPI_ANY_SOURCE, ASYNC_TAG as c_int, ffi::RSMPI_COMM_WORLD, &mut flag, &mut status) };
        check(rc, || "probing for gossip messages".into())?;
        if flag == 0 {
            return Ok(None);
        }
        let from = status.MPI_SOURCE;
        let mut count: c_int = 0;
        // SAFETY: `status` was filled by the probe above.
        check(unsafe { ffi::MPI_Get_count(&status, ffi::RSMPI_UINT8_T, &mut count) }, || format!("a message from rank {from}"))?;
        let mut data = vec![0u8; count.max(0) as usize];
        // SAFETY: the probed message is matched by this receive (calls are serialised: no other
        // thread can take it in between); `data` holds exactly its bytes.
        let rc = unsafe {
            ffi::MPI_Recv(data.as_mut_ptr() as *mut c_void, count, ffi::RSMPI_UINT8_T, from, ASYNC_TAG as c_int, ffi::RSMPI_COMM_WORLD, ffi::RSMPI_STATUS_IGNORE)
        };
        check(rc, || format!("receiving from rank {from}"))?;
        Ok(Some((from as usize, data)))
    }

    fn posted_done(&mut self) -> Result<bool> {
        let mut failure = Ok(());
        self.outbox.retain_mut(|(request, _, to)| {
            if failure.is_err() {
                return true;
            }
            let mut flag: c_int = 0;
            // SAFETY: a live request handle; MPI_Test frees it when complete.
            let rc = unsafe { ffi::MPI_Test(request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            if rc != 0 {
                failure = check(rc, || format!("sending to rank {to}"));
                return true;
            }
            flag == 0
        });
        failure.map(|_| self.outbox.is_empty())
    }

    fn exchange(&mut self, sends: &[Outgoing<'_>], recvs: &mut [Incoming<'_>], timeout: Duration) -> Result<()> {
        let mut pending: Vec<Pending> = Vec::new();
        let mut post = |pending: &mut Vec<Pending>| -> Result<()> {
            // Receives first, so matching sends find them posted.
            for r in recvs.iter_mut() {
                for chunk in r.data.chunks_mut(CHUNK) {
                    // SAFETY: RSMPI_REQUEST_NULL is a valid initial handle value.
                    let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
                    // SAFETY: `chunk` outlives the request: every request is completed (or the
                    // job aborted, see `main`) before this function returns.
                    let rc = unsafe {
                        ffi::MPI_Irecv(chunk.as_mut_ptr() as *mut c_void, chunk.len() as c_int, ffi::RSMPI_UINT8_T, r.from as c_int, r.tag as c_int, ffi::RSMPI_COMM_WORLD, &mut request)
                    };
                    check(rc, || format!("receiving from rank {}", r.from))?;
                    pending.push(Pending { request, peer: r.from, receive: true, done: false });
                }
            }
            for s in sends {
                for chunk in s.data.chunks(CHUNK) {
                    // SAFETY: as above; MPI only reads a send buffer.
                    let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
                    let rc = unsafe {
                        ffi::MPI_Isend(chunk.as_ptr() as *mut c_void, chunk.len() as c_int, ffi::RSMPI_UINT8_T, s.to as c_int, s.tag as c_int, ffi::RSMPI_COMM_WORLD, &mut request)
                    };
                    check(rc, || format!("sending to rank {}", s.to))?;
                    pending.push(Pending { request, peer: s.to, receive: false, done: false });
                }
            }
            Ok(())
        };
        let posted = post(&mut pending);
        let deadline = Instant::now() + timeout;
        let mut outcome = posted;
        while outcome.is_ok() && pending.iter().any(|p| !p.done) {
            let mut progressed = false;
            for p in pending.iter_mut().filter(|p| !p.done) {
                let mut flag: c_int = 0;
                // SAFETY: a live request handle; MPI_Test frees it when complete.
                let rc = unsafe { ffi::MPI_Test(&mut p.request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
                if rc != 0 {
                    outcome = check(rc, || format!("{} rank {}", if p.receive { "receiving from" } else { "sending to" }, p.peer));
                    break;
                }
                if flag != 0 {
                    p.done = true;
                    progressed = true;
                }
            }
            if outcome.is_ok() && pending.iter().any(|p| !p.done) {
                if Instant::now() >= deadline {
                    let mut silent: Vec<usize> = pending.iter().filter(|p| !p.done).map(|p| p.peer).collect();
                    silent.sort_unstable();
                    silent.dedup();
                    outcome = Err(Error::Backend(format!(
                        "no answer from rank(s) {silent:?} within {:.0} s (gossip_timeout): stopped, hung or too slow",
                        timeout.as_secs_f64()
                    )));
                } else if !progressed {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        if outcome.is_err() {
            // Withdraw what is still posted; a receive that never matched is cancelled at once.
            // (A send to a dead peer may stay pending: the caller ends the job on this error.)
            for p in pending.iter_mut().filter(|p| !p.done) {
                // SAFETY: live request handles.
                unsafe {
                    ffi::MPI_Cancel(&mut p.request);
                    ffi::MPI_Request_free(&mut p.request);
                }
            }
        }
        outcome
    }
}
