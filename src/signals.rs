//! Stop signals for a training run: SIGINT (Ctrl-C), SIGTERM (Slurm, Kubernetes, systemd,
//! `kill`) and SIGHUP (a closed terminal) all mean "finish the update in progress, save a
//! checkpoint, print the resume command and exit 128 + the signal's number". A second signal
//! aborts at once (the previous checkpoint stays whole: checkpoints are written to a temporary
//! file and renamed) — unless it arrives within [`DOUBLE_DELIVERY`] of the first: `timeout -s INT
//! 4 gala-gpu train … | grep …` delivers one SIGINT to the process and another to its group, and
//! that pair is one request, not "Ctrl-C twice".
//!
//! The handler itself only writes the signal's number to a pipe (async-signal-safe); a watcher
//! thread does the printing, the flag and the timing.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A second signal this soon after the first is taken as the same request delivered twice.
/// A person pressing Ctrl-C twice takes longer than this; the double deliveries seen took
/// microseconds.
pub const DOUBLE_DELIVERY: Duration = Duration::from_millis(500);

/// The signals that stop a run.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Write end of the self-pipe (-1 before installation).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// The first stop signal received (0 = none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is one byte on this stack frame.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// The signal's conventional name, for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The first stop signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Installs the handlers (once per process; later calls only change nothing): the first stop
/// signal sets `flag` and prints what happens next; a second one more than
/// [`DOUBLE_DELIVERY`] later exits at once with 128 + its number.
pub fn install(flag: Arc<AtomicBool>) -> Result<()> {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::Backend(format!("cannot install the signal handlers: pipe: {}", std::io::Error::last_os_error())));
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    PIPE_WRITE.store(write_fd, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || watch(read_fd, flag))
        .map_err(|e| Error::Backend(format!("cannot start the signal watcher thread: {e}")))?;
    for sig in STOP_SIGNALS {
        // SAFETY: a zeroed sigaction with a plain handler, an empty mask and SA_RESTART (so
        // interrupted reads and writes elsewhere in the process are restarted, not failed).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(Error::Backend(format!("cannot install the {} handler: {}", name(sig), std::io::Error::last_os_error())));
            }
        }
    }
    Ok(())
}

fn watch(read_fd: libc::c_int, flag: Arc<AtomicBool>) {
    let mut first: Option<Instant> = None;
    loop {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
        if n != 1 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let sig = i32::from(byte);
        match first {
            None => {
                first = Some(Instant::now());
                RECEIVED.store(sig, Ordering::SeqCst);
                flag.store(true, Ordering::SeqCst);
                note(&format!(
                    "\n{}: finishing this update and saving a checkpoint (a second signal aborts at once)",
                    name(sig)
                ));
            }
            Some(at) if at.elapsed() < DOUBLE_DELIVERY => {
                // The same request delivered twice (to the process and to its group).
            }
            Some(_) => {
                note("aborted");
                std::process::exit(128 + sig);
            }
        }
    }
}

/// One line on stderr; a closed or full stderr is ignored (there is nowhere left to say it).
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
