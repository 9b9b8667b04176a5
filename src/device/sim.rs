//! The simulator device: kernels/*.cu compiled by the host C++ compiler against
//! kernels/sim/cuda_sim.h (build.rs) and run on the CPU by kernels/sim/sim_runtime.cpp.
//!
//! Memory is host memory, so copies are memcpy and every operation has finished when it
//! returns; streams and events exist so that code written for the CUDA device runs unchanged.
//! Blocks are spread over host threads (`GALA_SIM_THREADS`, default: all cores); the result does
//! not depend on that number.

use super::{
    check_launch, check_range, DeviceBuffer, DeviceElem, DeviceId, Event, HostBuffer, KernelArg, LaunchConfig, SimShim, Stream,
    SIM_PROFILED_SHIMS, SIM_SHIMS,
};
use super::sim_profile::{self, LaunchMemoryProfile, RawMemoryProfile};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

extern "C" {
    fn gala_sim_launch(
        shim: SimShim, grid: *const u32, block: *const u32, shared_bytes: u32, args: *mut *mut c_void,
        err: *mut c_char, err_len: std::ffi::c_ulong, profile: *mut RawMemoryProfile,
    ) -> i32;
    fn gala_sim_memory_register(ptr: *const c_void, bytes: u64);
    fn gala_sim_memory_unregister(ptr: *const c_void);
}

/// The simulator's "device memory": a zeroed host allocation, 256-byte aligned like cudaMalloc's,
/// written only through the raw pointer that kernels and copies use.
struct HostStorage {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    /// Device memory is registered with the profiler, which counts only its addresses (and the
    /// block's shared memory) as memory traffic; pinned host buffers are not device memory.
    registered: bool,
}

// SAFETY: a plain owned allocation; access is synchronised by the device API (every simulated
// operation completes before it returns).
unsafe impl Send for HostStorage {}
unsafe impl Sync for HostStorage {}

impl HostStorage {
    fn zeroed(bytes: usize) -> Result<Self> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 256)
            .map_err(|e| Error::Backend(format!("alloc of {bytes} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::Backend(format!("the simulator could not allocate {bytes} bytes of host memory")));
        }
        Ok(HostStorage { ptr, layout, registered: false })
    }

    fn device_memory(bytes: usize) -> Result<Self> {
        let mut s = Self::zeroed(bytes)?;
        // SAFETY: registers a live allocation's range; unregistered in Drop before it is freed.
        unsafe { gala_sim_memory_register(s.ptr as *const c_void, s.layout.size() as u64) };
        s.registered = true;
        Ok(s)
    }
}

impl Drop for HostStorage {
    fn drop(&mut self) {
        if self.registered {
            // SAFETY: registered in `device_memory`; the runtime only drops the range.
            unsafe { gala_sim_memory_unregister(self.ptr as *const c_void) };
        }
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Runs the kernels on the CPU.
pub struct SimDevice {
    id: DeviceId,
    streams: AtomicUsize,
}

impl Default for SimDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl SimDevice {
    pub fn new() -> Self {
        SimDevice { id: DeviceId::fresh(), streams: AtomicUsize::new(1) }
    }

    fn check_stream(&self, stream: Stream) -> Result<()> {
        if stream.owner != self.id {
            return Err(Error::Backend("stream belongs to another device".into()));
        }
        Ok(())
    }

    fn check_buffer<T: DeviceElem>(&self, b: &DeviceBuffer<T>) -> Result<()> {
        if b.owner != self.id {
            return Err(Error::Backend("buffer belongs to another device".into()));
        }
        Ok(())
    }
}

impl super::Device for SimDevice {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn describe(&self) -> String {
        let threads = std::env::var("GALA_SIM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        format!("CUDA simulator on {threads} host threads")
    }

    fn alloc_zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::Backend(format!("alloc of {len} elements overflows")))?;
        let storage = HostStorage::device_memory(bytes)?;
        let ptr = storage.ptr as u64;
        Ok(DeviceBuffer { ptr, len, owner: self.id, _storage: Box::new(storage), _elem: PhantomData })
    }

    fn alloc_host<T: DeviceElem>(&self, len: usize) -> Result<HostBuffer<T>> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::Backend(format!("host alloc of {len} elements overflows")))?;
        let storage = HostStorage::zeroed(bytes)?;
        Ok(HostBuffer { ptr: storage.ptr as *mut T, len, _storage: Box::new(storage) })
    }

    unsafe fn upload_async<T: DeviceElem>(&self, stream: Stream, src: &[T], dst: &mut DeviceBuffer<T>, offset: usize) -> Result<()> {
        // Simulated copies are done when they return: the contract holds trivially.
        self.upload(stream, src, dst, offset)
    }

    fn upload<T: DeviceElem>(&self, stream: Stream, src: &[T], dst: &mut DeviceBuffer<T>, offset: usize) -> Result<()> {
        self.check_stream(stream)?;
        self.check_buffer(dst)?;
        check_range("upload", offset, src.len(), dst.len)?;
        // SAFETY: the range is inside dst's allocation (checked) and `&mut dst` is exclusive.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), (dst.ptr as *mut T).add(offset), src.len()) };
        Ok(())
    }

    fn download<T: DeviceElem>(&self, stream: Stream, src: &DeviceBuffer<T>, offset: usize, dst: &mut [T]) -> Result<()> {
        self.check_stream(stream)?;
        self.check_buffer(src)?;
        check_range("download", offset, dst.len(), src.len)?;
        // SAFETY: the range is inside src's allocation (checked); no kernel runs concurrently.
        unsafe { std::ptr::copy_nonoverlapping((src.ptr as *const T).add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy<T: DeviceElem>(
        &self, stream: Stream, src: &DeviceBuffer<T>, src_offset: usize, dst: &mut DeviceBuffer<T>, dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.check_stream(stream)?;
        self.check_buffer(src)?;
        self.check_buffer(dst)?;
        check_range("copy source", src_offset, len, src.len)?;
        check_range("copy destination", dst_offset, len, dst.len)?;
        // SAFETY: both ranges are in bounds; distinct buffers (the borrows say so) do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping((src.ptr as *const T).add(src_offset), (dst.ptr as *mut T).add(dst_offset), len)
        };
        Ok(())
    }

    fn launch(&self, stream: Stream, name: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        self.check_stream(stream)?;
        check_launch(self.id, name, &config, args)?;
        // The memory profiler (sim_profile.rs) runs the instrumented twin of the kernel.
        let profiling = sim_profile::collecting() || sim_profile::env_requested();
        let shim = if profiling { SIM_PROFILED_SHIMS } else { SIM_SHIMS }
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| Error::Backend(format!("kernel `{name}` has no simulator shim (rebuild)")))?;
        let mut values: Vec<[u8; 8]> = args.iter().map(|a| a.value_bytes()).collect();
        let mut pointers: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr() as *mut c_void).collect();
        let grid = [config.grid.0, config.grid.1, config.grid.2];
        let block = [config.block.0, config.block.1, config.block.2];
        let mut err = [0 as c_char; 512];
        // GALA_SIM_PROFILE=1 (any value but `memory`) prints every launch's wall time (to find
        // what makes tests slow); GALA_SIM_PROFILE=memory prints its memory-access profile.
        let started = std::env::var_os("GALA_SIM_PROFILE")
            .filter(|_| !sim_profile::env_requested())
            .map(|_| std::time::Instant::now());
        let mut raw = RawMemoryProfile::default();
        let raw_ptr: *mut RawMemoryProfile = if profiling { &mut raw } else { std::ptr::null_mut() };
        // SAFETY: the arguments match the kernel's parameter list (checked above) and every
        // buffer argument is a live allocation of this device; the launch returns when done.
        let rc = unsafe {
            gala_sim_launch(
                shim,
                grid.as_ptr(),
                block.as_ptr(),
                config.shared_mem_bytes,
                pointers.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len() as std::ffi::c_ulong,
                raw_ptr,
            )
        };
        if let Some(t) = started {
            eprintln!("sim launch {name} grid {:?} block {:?}: {:.1} ms", config.grid, config.block, t.elapsed().as_secs_f64() * 1e3);
        }
        if profiling && rc == 0 {
            let p = LaunchMemoryProfile::new(name, config.grid, config.block, &raw);
            if sim_profile::env_requested() {
                eprintln!("sim profile: {}", p.summary());
            }
            sim_profile::collect(p);
        }
        if rc != 0 {
            // SAFETY: the runtime wrote a NUL-terminated message into `err`.
            let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::Backend(format!("simulated launch of `{name}` failed: {msg}")));
        }
        Ok(())
    }

    fn default_stream(&self) -> Stream {
        Stream { index: 0, owner: self.id }
    }

    fn new_stream(&self) -> Result<Stream> {
        Ok(Stream { index: self.streams.fetch_add(1, Ordering::Relaxed), owner: self.id })
    }

    fn record_event(&self, stream: Stream) -> Result<Event> {
        self.check_stream(stream)?;
        Ok(Event { owner: self.id, inner: None })
    }

    fn record_timed_event(&self, stream: Stream) -> Result<Event> {
        self.check_stream(stream)?;
        // Simulated work is done when its call returns, so the host clock is the device clock.
        Ok(Event { owner: self.id, inner: Some(Box::new(std::time::Instant::now())) })
    }

    fn elapsed_seconds(&self, start: &Event, end: &Event) -> Result<f64> {
        let instant = |e: &Event| -> Result<std::time::Instant> {
            if e.owner != self.id {
                return Err(Error::Backend("event belongs to another device".into()));
            }
            e.inner
                .as_ref()
                .and_then(|b| b.downcast_ref::<std::time::Instant>())
                .copied()
                .ok_or_else(|| Error::Backend("elapsed_seconds needs events from record_timed_event".into()))
        };
        Ok(instant(end)?.saturating_duration_since(instant(start)?).as_secs_f64())
    }

    fn event_done(&self, event: &Event) -> Result<bool> {
        if event.owner != self.id {
            return Err(Error::Backend("event belongs to another device".into()));
        }
        Ok(true)
    }

    fn stream_wait_event(&self, stream: Stream, event: &Event) -> Result<()> {
        self.check_stream(stream)?;
        self.event_done(event).map(|_| ())
    }

    fn synchronize(&self, stream: Stream) -> Result<()> {
        self.check_stream(stream)
    }

    fn native_stream(&self, stream: Stream) -> Result<super::NativeStream> {
        self.check_stream(stream)?;
        Ok(super::NativeStream::Host)
    }
}
