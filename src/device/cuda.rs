//! The CUDA device: cudarc 0.19's driver API, with every kernels/*.cu compiled once by NVRTC
//! for the GPU's architecture when the device is opened (the module store).
//!
//! Opening fails with an error (never a panic) when there is no driver library, no GPU, or no
//! libnvrtc; a kernel that does not compile fails with NVRTC's log.

use super::{
    check_launch, check_range, nvrtc, DeviceBuffer, DeviceElem, DeviceId, Event, Graph, HostBuffer, KernelArg, LaunchConfig,
    Stream, KERNEL_SOURCES,
};
use crate::error::{Error, Result};
use cudarc::driver::{result as cu, sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaStream, PushKernelArg};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

fn driver_err(what: &str, e: cu::DriverError) -> Error {
    Error::Backend(format!("CUDA {what} failed: {e:?}"))
}

/// An instantiated CUDA graph, movable between threads.
struct SendGraph(CudaGraph);
// SAFETY: CUDA graph objects are not internally synchronised, so they must not be used by two
// threads at once — and they are not: a `Graph` is owned by one backend and used through
// `&self` of that backend's calls, which its owner serialises (`Backend` methods take `&mut`).
// Moving one to another thread between uses is allowed by the driver.
unsafe impl Send for SendGraph {}

/// A device allocation, freed on drop.
struct CudaStorage {
    ptr: sys::CUdeviceptr,
    ctx: Arc<CudaContext>,
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; the context keeps them for the next check.
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: allocated by malloc_sync in this context and freed only here.
        self.ctx.record_err(unsafe { cu::free_sync(self.ptr) });
    }
}

/// Page-locked host memory (cuMemHostAlloc), freed on drop.
struct PinnedStorage {
    ptr: *mut std::ffi::c_void,
    ctx: Arc<CudaContext>,
}

// SAFETY: a plain owned allocation; the HostBuffer that holds it mediates access.
unsafe impl Send for PinnedStorage {}
unsafe impl Sync for PinnedStorage {}

impl Drop for PinnedStorage {
    fn drop(&mut self) {
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: allocated by malloc_host in this context and freed only here.
        self.ctx.record_err(unsafe { cu::free_host(self.ptr) });
    }
}

/// A GPU driven through the CUDA driver API.
pub struct CudaDevice {
    id: DeviceId,
    ctx: Arc<CudaContext>,
    streams: Mutex<Vec<Arc<CudaStream>>>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    arch: String,
}

impl CudaDevice {
    /// Opens GPU `ordinal` and compiles every kernel for it.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen the driver library and drops the handle.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Backend(
                "the CUDA driver library (libcuda.so) was not found; install an NVIDIA driver, or use --backend sim/cpu".into(),
            ));
        }
        if !nvrtc::available() {
            return Err(Error::Backend(format!(
                "the NVRTC library (libnvrtc.so) is needed to compile the kernels; {}",
                nvrtc::INSTALL_HINT
            )));
        }
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::Backend("the CUDA driver could not be initialised".into()))?
            .map_err(|e| Error::Backend(format!("no CUDA device {ordinal} could be opened: {e:?}")))?;
        let name = ctx.name().map_err(|e| driver_err("cuDeviceGetName", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver_err("compute capability query", e))?;
        let arch = format!("compute_{major}{minor}");
        let mut functions = HashMap::new();
        for source in KERNEL_SOURCES {
            // A build for newer GPUs (the TF32 one: sm_80) is skipped; the backend then refuses
            // what needs its kernels (`precision = "tf32"`, GpuBackend::new).
            if (major * 10 + minor) < source.min_arch as i32 {
                continue;
            }
            let compiled = nvrtc::compile(source, &arch)?;
            let ptx = compiled.ptx.ok_or_else(|| Error::Backend(format!("NVRTC returned no PTX for {}", source.describe())))?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(|e| driver_err(&format!("loading the PTX of {}", source.describe()), e))?;
            for sig in super::KERNEL_SIGNATURES.iter().filter(|k| source.builds(k)) {
                let f = module.load_function(sig.name).map_err(|e| driver_err(&format!("cuModuleGetFunction({})", sig.name), e))?;
                functions.insert(sig.name, f);
            }
        }
        let default = ctx.default_stream();
        Ok(CudaDevice { id: DeviceId::fresh(), ctx, streams: Mutex::new(vec![default]), functions, name, arch })
    }

    fn stream(&self, s: Stream) -> Result<Arc<CudaStream>> {
        if s.owner != self.id {
            return Err(Error::Backend("stream belongs to another device".into()));
        }
        let streams = self.streams.lock().map_err(|_| Error::Backend("stream table poisoned".into()))?;
        streams.get(s.index).cloned().ok_or_else(|| Error::Backend(format!("no stream {}", s.index)))
    }

    fn check_buffer<T: DeviceElem>(&self, b: &DeviceBuffer<T>) -> Result<()> {
        if b.owner != self.id {
            return Err(Error::Backend("buffer belongs to another device".into()));
        }
        Ok(())
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the context", e))
    }
}

fn byte_offset<T>(elements: usize) -> u64 {
    (elements * std::mem::size_of::<T>()) as u64
}

impl super::Device for CudaDevice {
    fn kind(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    fn alloc_zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        self.bind()?;
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        // SAFETY: plain allocation and memset of the fresh allocation.
        let ptr = unsafe { cu::malloc_sync(bytes) }.map_err(|e| driver_err(&format!("allocating {bytes} bytes"), e))?;
        let storage = CudaStorage { ptr, ctx: self.ctx.clone() };
        // cuMemsetD8 is asynchronous with respect to the host for device memory, on the legacy
        // NULL stream, and the streams work is queued on are non-blocking (no implicit order
        // with the NULL stream): wait for the zeros here, so later work on any stream sees them.
        let null = self.stream(Stream { index: 0, owner: self.id })?;
        unsafe { cu::memset_d8_async(ptr, 0, bytes, null.cu_stream()) }.map_err(|e| driver_err("memset", e))?;
        null.synchronize().map_err(|e| driver_err("memset synchronize", e))?;
        Ok(DeviceBuffer { ptr, len, owner: self.id, _storage: Box::new(storage), _elem: PhantomData })
    }

    fn alloc_host<T: DeviceElem>(&self, len: usize) -> Result<HostBuffer<T>> {
        self.bind()?;
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        // SAFETY: a plain page-locked allocation (flags 0: portable to this context only),
        // zero-filled before anyone reads it.
        let ptr = unsafe { cu::malloc_host(bytes, 0) }.map_err(|e| driver_err(&format!("allocating {bytes} bytes of pinned host memory"), e))?;
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, bytes) };
        let storage = PinnedStorage { ptr, ctx: self.ctx.clone() };
        Ok(HostBuffer { ptr: ptr as *mut T, len, _storage: Box::new(storage) })
    }

    unsafe fn upload_async<T: DeviceElem>(&self, stream: Stream, src: &[T], dst: &mut DeviceBuffer<T>, offset: usize) -> Result<()> {
        let s = self.stream(stream)?;
        self.check_buffer(dst)?;
        check_range("upload", offset, src.len(), dst.len)?;
        self.bind()?;
        // SAFETY: destination range in bounds (checked); the caller keeps `src` alive and
        // unmodified until the stream has passed this copy (the function's contract).
        unsafe { cu::memcpy_htod_async(dst.ptr + byte_offset::<T>(offset), src, s.cu_stream()) }
            .map_err(|e| driver_err("host-to-device copy", e))
    }

    fn upload<T: DeviceElem>(&self, stream: Stream, src: &[T], dst: &mut DeviceBuffer<T>, offset: usize) -> Result<()> {
        let s = self.stream(stream)?;
        self.check_buffer(dst)?;
        check_range("upload", offset, src.len(), dst.len)?;
        self.bind()?;
        // SAFETY: destination range in bounds (checked); we synchronise before `src` is released.
        unsafe { cu::memcpy_htod_async(dst.ptr + byte_offset::<T>(offset), src, s.cu_stream()) }
            .map_err(|e| driver_err("host-to-device copy", e))?;
        s.synchronize().map_err(|e| driver_err("stream synchronize", e))
    }

    fn download<T: DeviceElem>(&self, stream: Stream, src: &DeviceBuffer<T>, offset: usize, dst: &mut [T]) -> Result<()> {
        let s = self.stream(stream)?;
        self.check_buffer(src)?;
        check_range("download", offset, dst.len(), src.len)?;
        self.bind()?;
        // SAFETY: source range in bounds (checked); we synchronise before `dst` is read.
        unsafe { cu::memcpy_dtoh_async(dst, src.ptr + byte_offset::<T>(offset), s.cu_stream()) }
            .map_err(|e| driver_err("device-to-host copy", e))?;
        s.synchronize().map_err(|e| driver_err("stream synchronize", e))
    }

    fn copy<T: DeviceElem>(
        &self, stream: Stream, src: &DeviceBuffer<T>, src_offset: usize, dst: &mut DeviceBuffer<T>, dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let s = self.stream(stream)?;
        self.check_buffer(src)?;
        self.check_buffer(dst)?;
        check_range("copy source", src_offset, len, src.len)?;
        check_range("copy destination", dst_offset, len, dst.len)?;
        self.bind()?;
        // SAFETY: both ranges in bounds; the buffers outlive the stream work (they are freed
        // with a synchronous cuMemFree, which waits for the device).
        unsafe {
            cu::memcpy_dtod_async(
                dst.ptr + byte_offset::<T>(dst_offset),
                src.ptr + byte_offset::<T>(src_offset),
                len * std::mem::size_of::<T>(),
                s.cu_stream(),
            )
        }
        .map_err(|e| driver_err("device-to-device copy", e))
    }

    fn launch(&self, stream: Stream, name: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        check_launch(self.id, name, &config, args)?;
        let s = self.stream(stream)?;
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| Error::Backend(format!("kernel `{name}` is not in the module store")))?;
        let mut builder = s.launch_builder(f);
        for arg in args {
            match arg {
                KernelArg::Buffer { ptr, .. } => builder.arg(ptr),
                KernelArg::U32(v) => builder.arg(v),
                KernelArg::I32(v) => builder.arg(v),
                KernelArg::U64(v) => builder.arg(v),
                KernelArg::F32(v) => builder.arg(v),
                KernelArg::F64(v) => builder.arg(v),
            };
        }
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: config.grid,
            block_dim: config.block,
            shared_mem_bytes: config.shared_mem_bytes,
        };
        // SAFETY: the arguments match the kernel's parameter list (checked above) and every
        // buffer is a live allocation of this device.
        unsafe { builder.launch(cfg) }.map_err(|e| driver_err(&format!("launch of `{name}`"), e))?;
        Ok(())
    }

    fn default_stream(&self) -> Stream {
        Stream { index: 0, owner: self.id }
    }

    fn new_stream(&self) -> Result<Stream> {
        let s = self.ctx.new_stream().map_err(|e| driver_err("stream creation", e))?;
        let mut streams = self.streams.lock().map_err(|_| Error::Backend("stream table poisoned".into()))?;
        streams.push(s);
        Ok(Stream { index: streams.len() - 1, owner: self.id })
    }

    fn record_event(&self, stream: Stream) -> Result<Event> {
        let s = self.stream(stream)?;
        let e = s.record_event(None).map_err(|e| driver_err("event record", e))?;
        Ok(Event { owner: self.id, inner: Some(Box::new(e)) })
    }

    fn record_timed_event(&self, stream: Stream) -> Result<Event> {
        let s = self.stream(stream)?;
        let e = s.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| driver_err("timed event record", e))?;
        Ok(Event { owner: self.id, inner: Some(Box::new(e)) })
    }

    fn elapsed_seconds(&self, start: &Event, end: &Event) -> Result<f64> {
        let (a, b) = (self.cuda_event(start)?, self.cuda_event(end)?);
        // cuEventElapsedTime: milliseconds, about 0.5 µs resolution; fails for events created
        // without timing (record_event), which is reported as an error here.
        let ms = a.elapsed_ms(b).map_err(|e| driver_err("event elapsed time (events need record_timed_event)", e))?;
        Ok(f64::from(ms) / 1e3)
    }

    fn event_done(&self, event: &Event) -> Result<bool> {
        let e = self.cuda_event(event)?;
        // cuEventQuery is called from whichever agent thread polls: bind the context first
        // (cudarc binds for record and wait, not for the query).
        self.bind()?;
        e.try_is_complete().map_err(|e| driver_err("event query", e))
    }

    fn stream_wait_event(&self, stream: Stream, event: &Event) -> Result<()> {
        let s = self.stream(stream)?;
        s.wait(self.cuda_event(event)?).map_err(|e| driver_err("stream wait", e))
    }

    fn synchronize(&self, stream: Stream) -> Result<()> {
        let s = self.stream(stream)?;
        s.synchronize().map_err(|e| driver_err("stream synchronize", e))?;
        self.ctx.check_err().map_err(|e| driver_err("an earlier asynchronous operation", e))
    }
    fn native_stream(&self, stream: Stream) -> Result<super::NativeStream> {
        let s = self.stream(stream)?;
        self.bind()?;
        // The handles stay valid while the device lives (the stream table holds the stream) and
        // `keep` holds the context for a holder that outlives the device.
        Ok(super::NativeStream::Cuda { stream: s.cu_stream() as usize, context: self.ctx.cu_ctx() as usize, keep: self.ctx.clone() })
    }

    fn begin_capture(&self, stream: Stream) -> Result<bool> {
        let s = self.stream(stream)?;
        // Relaxed: other threads (the pipelined actor, other agents' backends) keep launching and
        // copying on their own streams while this one records.
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).map_err(|e| driver_err("stream capture begin", e))?;
        Ok(true)
    }

    fn end_capture(&self, stream: Stream) -> Result<Graph> {
        let s = self.stream(stream)?;
        let graph = s
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| driver_err("stream capture end / graph instantiation", e))?
            .ok_or_else(|| Error::Backend("stream capture recorded no graph".into()))?;
        Ok(Graph::new(self.id, Box::new(SendGraph(graph))))
    }

    fn launch_graph(&self, graph: &Graph) -> Result<()> {
        let g: &SendGraph = graph.native(self.id)?;
        g.0.launch().map_err(|e| driver_err("graph launch", e))
    }
    fn has_kernel(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }
}

impl CudaDevice {
    fn cuda_event<'a>(&self, event: &'a Event) -> Result<&'a CudaEvent> {
        if event.owner != self.id {
            return Err(Error::Backend("event belongs to another device".into()));
        }
        event
            .inner
            .as_ref()
            .and_then(|b| b.downcast_ref::<CudaEvent>())
            .ok_or_else(|| Error::Backend("not a CUDA event".into()))
    }
}
