//! A safe owner of one ALE 0.6 emulator (through `ale-sys`). All unsafe code of the Atari
//! environment is in this file: the handle is created only from a verified ROM, used only
//! through `&mut self`, and freed on drop.

use super::roms::VerifiedRom;
use crate::error::{Error, Result};
use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Mutex;

/// ALE action codes used by the preprocessing (the rest come from the minimal action set).
pub const NOOP: i32 = 0;
pub const FIRE: i32 = 1;

/// ALE 0.6 keeps process-wide state that its constructor touches (`ALEInterface()` switches
/// stdout/stderr to unbuffered and logs): `ALE_new` is serialised. `loadROM` is not: it builds
/// per-instance state (console, cartridge, the ~0.1 s PhosphorBlend palette tables that are most
/// of an emulator's creation cost), reads the ROM prototypes (`static const`) and builds
/// Stella's TIA tables under `std::call_once`; the logger mode it reads is set once, before any
/// emulator exists (`LOGGER_MODE`). So a vector env builds its emulators on all its threads.
static CREATE_LOCK: Mutex<()> = Mutex::new(());
static LOGGER_MODE: std::sync::Once = std::sync::Once::new();

/// Settings fixed when the emulator is created (ALE reads them in `loadROM`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AleOptions {
    /// Seed of ALE's own generator (ALE's sticky actions; `AtariEnv` does its own and passes
    /// probability 0 here); must be in 1..=i32::MAX because ALE 0.6
    /// reads 0 as "seed from the wall clock".
    pub seed: i32,
    /// Probability that the previous action is repeated instead of the new one, per frame.
    pub repeat_action_probability: f32,
}

pub struct Ale {
    handle: NonNull<ale_sys::ALEInterface>,
    minimal_actions: Vec<i32>,
    /// The ROM's md5 (lower-case hex), which ALE writes at the start of every saved state.
    md5: String,
    width: usize,
    height: usize,
}

// SAFETY: an ALEInterface owns all its emulator state (its own OSystem, RNG and screen); ALE
// keeps no thread affinity, and `Ale` is only used through `&mut self`, so moving it to another
// thread is sound. Global state is only touched by `ALE_new`, which is serialised above.
unsafe impl Send for Ale {}

impl Ale {
    /// Creates an emulator running `rom`. The ROM was verified by md5 and is named
    /// `<game>.bin`, so ALE's `loadROM` cannot hit one of its `exit(1)` paths.
    pub fn new(rom: &VerifiedRom, options: AleOptions) -> Result<Ale> {
        if options.seed <= 0 {
            return Err(Error::Config(format!("ALE seed must be in 1..=2^31-1, got {}", options.seed)));
        }
        if !(0.0..=1.0).contains(&options.repeat_action_probability) {
            return Err(Error::Config(format!(
                "repeat_action_probability must be in [0, 1], got {}",
                options.repeat_action_probability
            )));
        }
        // Re-check right before loading: ALE exits the process if the file vanished.
        if !rom.path.is_file() {
            return Err(Error::Env(format!("ROM {} disappeared; reinstall with `gala-gpu roms install`", rom.path.display())));
        }
        let path = rom.path.to_str().and_then(|s| CString::new(s).ok()).ok_or_else(|| {
            Error::Env(format!("ROM path {} is not valid UTF-8 without NUL bytes; set GALA_ROM_DIR to a plain path", rom.path.display()))
        })?;
        // SAFETY: plain FFI calls on a freshly created, non-null handle; the key strings are
        // NUL-terminated literals, the path a valid CString that outlives the call.
        unsafe {
            LOGGER_MODE.call_once(|| ale_sys::setLoggerMode(2)); // errors only: no banner or per-ROM chatter
            let handle = {
                let _guard = CREATE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
                NonNull::new(ale_sys::ALE_new()).ok_or_else(|| Error::Env("ALE_new returned null (out of memory?)".into()))?
            };
            let ale = |h: NonNull<ale_sys::ALEInterface>| h.as_ptr();
            ale_sys::setInt(ale(handle), c"random_seed".as_ptr(), options.seed);
            ale_sys::setFloat(ale(handle), c"repeat_action_probability".as_ptr(), options.repeat_action_probability);
            // Our own wrapper repeats actions; ALE steps one frame per act().
            ale_sys::setInt(ale(handle), c"frame_skip".as_ptr(), 1);
            ale_sys::setBool(ale(handle), c"color_averaging".as_ptr(), false);
            ale_sys::loadROM(ale(handle), path.as_ptr());
            let n = ale_sys::getMinimalActionSize(ale(handle)).max(0) as usize;
            let mut minimal_actions = vec![0i32; n];
            ale_sys::getMinimalActionSet(ale(handle), minimal_actions.as_mut_ptr());
            let width = ale_sys::getScreenWidth(ale(handle)).max(0) as usize;
            let height = ale_sys::getScreenHeight(ale(handle)).max(0) as usize;
            let me = Ale { handle, minimal_actions, md5: rom.md5.to_ascii_lowercase(), width, height };
            if n == 0 || width == 0 || height == 0 {
                return Err(Error::Env(format!(
                    "ALE loaded {} but reports {n} actions and a {width}x{height} screen",
                    rom.path.display()
                )));
            }
            Ok(me)
        }
    }

    fn ptr(&mut self) -> *mut ale_sys::ALEInterface {
        self.handle.as_ptr()
    }

    /// The game's minimal action set as ALE action codes.
    pub fn minimal_actions(&self) -> &[i32] {
        &self.minimal_actions
    }

    pub fn screen_width(&self) -> usize {
        self.width
    }

    pub fn screen_height(&self) -> usize {
        self.height
    }

    /// Emulates one frame with ALE action code `action`; returns the frame's reward.
    #[inline]
    pub fn act(&mut self, action: i32) -> i32 {
        // SAFETY: valid handle; ALE ignores illegal action codes (maps them to NOOP), and
        // callers only pass codes from the minimal action set or NOOP/FIRE.
        unsafe { ale_sys::act(self.ptr(), action) }
    }

    #[inline]
    pub fn game_over(&mut self) -> bool {
        // SAFETY: valid handle.
        unsafe { ale_sys::game_over(self.ptr()) }
    }

    #[inline]
    pub fn lives(&mut self) -> i32 {
        // SAFETY: valid handle.
        unsafe { ale_sys::lives(self.ptr()) }
    }

    pub fn reset_game(&mut self) {
        // SAFETY: valid handle.
        unsafe { ale_sys::reset_game(self.ptr()) }
    }

    /// Writes the current screen in ALE's grayscale palette into `out` [height·width].
    #[inline]
    pub fn grayscale_into(&mut self, out: &mut [u8]) {
        assert_eq!(out.len(), self.width * self.height, "grayscale buffer size");
        // SAFETY: valid handle; `out` holds exactly width·height bytes, which is what
        // ALE's getScreenGrayscale writes.
        unsafe { ale_sys::getScreenGrayscale(self.ptr(), out.as_mut_ptr()) }
    }

    /// Writes the current screen's palette indices (ALE's `getScreen`: one byte per pixel,
    /// even values; `preprocess::NTSC_RGB[p >> 1]` is the colour) into `out` [height·width].
    #[inline]
    pub fn screen_into(&mut self, out: &mut [u8]) {
        assert_eq!(out.len(), self.width * self.height, "screen buffer size");
        // SAFETY: valid handle; `out` holds exactly width·height bytes, which is what
        // ALE's getScreen copies (its pixel_t is one byte).
        unsafe { ale_sys::getScreen(self.ptr(), out.as_mut_ptr()) }
    }

    /// Writes the current screen as RGB (ALE's `getScreenRGB`, 3 bytes per pixel, row-major)
    /// into `out` [height·width·3].
    pub fn rgb_into(&mut self, out: &mut [u8]) {
        assert_eq!(out.len(), 3 * self.width * self.height, "RGB buffer size");
        // SAFETY: valid handle; `out` holds exactly 3·width·height bytes, what getScreenRGB writes.
        unsafe { ale_sys::getScreenRGB(self.ptr(), out.as_mut_ptr()) }
    }

    /// The emulator's complete state as bytes: ALE's `cloneSystemState` (console RAM, CPU, TIA
    /// and cartridge registers, the game's score/lives bookkeeping, the frame counters and ALE's
    /// own Mersenne-Twister, which the "system" variant adds over `cloneState`), serialised by
    /// ALE's `encodeState`. Not included (ALE keeps them outside `ALEState`): the previous
    /// sticky action (`AtariEnv` does sticky actions itself for that reason) and the TIA's frame
    /// buffers, which the next emulated frame redraws.
    pub fn save_system_state(&self) -> Result<Vec<u8>> {
        // SAFETY: valid handle. Saving only reads the emulator (ALE's C API takes a mutable
        // pointer regardless), and `Ale` is not `Sync`, so no other thread uses it meanwhile.
        // `cloneSystemState` returns a fresh heap object that `OwnedState`
        // frees exactly once. `encodeState` is given a buffer of exactly the length
        // `encodeStateLen` reports, so it never reaches its throwing "buffer too small" path.
        unsafe {
            let state = OwnedState::new(ale_sys::cloneSystemState(self.handle.as_ptr()))?;
            let len = ale_sys::encodeStateLen(state.0.as_ptr());
            if len <= 0 {
                return Err(Error::Env(format!("ALE encoded its state as {len} bytes")));
            }
            let mut out = vec![0u8; len as usize];
            ale_sys::encodeState(state.0.as_ptr(), out.as_mut_ptr().cast(), len);
            Ok(out)
        }
    }

    /// Restores what `save_system_state` produced. ALE itself cannot report a bad state: its
    /// deserialiser throws C++ exceptions (which would abort the process at the FFI boundary)
    /// and its md5 check fails silently, so the bytes are checked for the exact layout ALE
    /// writes before ALE sees them; callers check which game they came from.
    pub fn restore_system_state(&mut self, bytes: &[u8]) -> Result<()> {
        check_encoded_system_state(bytes, &self.md5)?;
        // SAFETY: valid handle; the bytes have the exact structure `decodeState` and
        // `restoreSystemState` read (checked above), so neither reads past its input nor hits
        // a throwing path; the decoded object is freed exactly once by `OwnedState`.
        unsafe {
            let state = OwnedState::new(ale_sys::decodeState(bytes.as_ptr().cast(), bytes.len() as i32))?;
            ale_sys::restoreSystemState(self.ptr(), state.0.as_ptr());
        }
        Ok(())
    }
}

impl Drop for Ale {
    fn drop(&mut self) {
        // SAFETY: the handle came from ALE_new and is deleted exactly once.
        unsafe { ale_sys::ALE_del(self.handle.as_ptr()) }
    }
}

/// An `ALEState` allocated by the C wrapper, deleted on drop.
struct OwnedState(NonNull<ale_sys::ALEState>);

impl OwnedState {
    fn new(ptr: *mut ale_sys::ALEState) -> Result<OwnedState> {
        NonNull::new(ptr).map(OwnedState).ok_or_else(|| Error::Env("ALE returned no state object (out of memory?)".into()))
    }
}

impl Drop for OwnedState {
    fn drop(&mut self) {
        // SAFETY: the pointer came from cloneSystemState/decodeState (`new ALEState`) and is
        // deleted exactly once.
        unsafe { ale_sys::deleteState(self.0.as_ptr()) }
    }
}

/// ALE's `Serializer` writes a bool as one of two 32-bit patterns.
const ALE_TRUE: u32 = 0xfab1_fab2;

/// Checks that `bytes` has the layout of an encoded system `ALEState` of the ROM with `md5`: six
/// i32 (paddles, frame numbers, mode, difficulty), the emulator blob (i32 length + bytes,
/// starting with the "system state included" bool and the ROM's md5 as a string), then two i32
/// (paddle limits), and nothing else. (ALE skips a state of another ROM silently and then
/// misreads the rest, which can throw.)
fn check_encoded_system_state(bytes: &[u8], md5: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Env(format!("ALE state rejected ({why}); it was not saved by this emulator build")));
    let u32_at = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let Some(blob_len) = u32_at(24) else { return bad("too short") };
    let blob_len = blob_len as usize;
    if blob_len > i32::MAX as usize || bytes.len() != 28 + blob_len + 8 {
        return bad(&format!("{} bytes, but its emulator part claims {blob_len}", bytes.len()));
    }
    if u32_at(28) != Some(ALE_TRUE) {
        return bad("no system part");
    }
    let saved_md5 = u32_at(32).and_then(|n| bytes.get(36..36 + (n as usize).min(64)));
    if saved_md5 != Some(md5.as_bytes()) {
        let saved = saved_md5.map(String::from_utf8_lossy).unwrap_or_default();
        return bad(&format!("it is a state of the ROM with md5 {saved}, this emulator runs {md5}"));
    }
    Ok(())
}
