// Frame stacking on the device (issue 12, "frames stay on the device"): one environment step of
// every env's stack of `depth` frames, in place, so that per agent step only each env's newest
// 84x84 frame goes up (4x less traffic than the whole 4-frame stack). The CPU twin is
// `env::vec_env::push_frame`, which is also the host's own stacking (VecEnv::step), so the
// device stack and the host's observation are the same function of the same bytes.
//
//   for c < depth-1:  stacks[r][c] = resets[r] != 0 ? 0 : stacks[r][c+1]   (shift, or zero on done)
//                     stacks[r][depth-1] = frames[r]                         (the newest frame last)
//
// Shapes: stacks [rows][depth][frame_len] u8 (rows = agents * envs); frames [rows][frame_len] u8;
// resets [rows] f32 (1.0 where the env's episode ended with the step, as VecEnv::dones);
// depth <= FRAME_MAX_DEPTH.
// Grid: (ceil(units / FRAME_PUSH_THREADS), rows), FRAME_PUSH_THREADS threads, a unit being one
// 4-byte word of pixels when `words` (the launcher's choice where frame_len % 4 == 0: every row
// and channel then starts on a word) and one pixel otherwise. Each thread owns one unit of one
// stack in every channel and loads all its old values and the new frame's before it stores any:
// the in-place shift has no race, and the loads go out together (shifting channel by channel, a
// store waited for each load: depth - 1 serial round trips). A warp's access per channel is 128
// consecutive bytes (words) or 32 (pixels).

#include "prelude.cuh"

#define FRAME_PUSH_THREADS 256
#define FRAME_MAX_DEPTH 8

template <class Unit>
__device__ __forceinline__ void frame_push_unit(Unit* __restrict__ stack, const Unit* __restrict__ frame, bool reset,
                                                unsigned int p, unsigned int len, unsigned int depth) {
    Unit old[FRAME_MAX_DEPTH - 1];
    const Unit fresh = frame[p];
    GALA_UNROLL
    for (unsigned int c = 0; c + 1 < FRAME_MAX_DEPTH; ++c)
        old[c] = (c + 1 < depth && !reset) ? stack[(c + 1) * len + p] : (Unit)0;
    GALA_UNROLL
    for (unsigned int c = 0; c + 1 < FRAME_MAX_DEPTH; ++c)
        if (c + 1 < depth) stack[c * len + p] = old[c];
    stack[(depth - 1) * len + p] = fresh;
}

extern "C" __global__ void __launch_bounds__(FRAME_PUSH_THREADS) frame_stack_push(
    unsigned char* __restrict__ stacks, const unsigned char* __restrict__ frames, const float* __restrict__ resets,
    unsigned int frame_len, unsigned int depth, unsigned int words) {
    const unsigned int p = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long r = blockIdx.y;
    const bool reset = resets[r] != 0.0f;
    if (words) {
        const unsigned int len = frame_len / 4;
        if (p >= len) return;
        frame_push_unit<unsigned int>((unsigned int*)(stacks + r * depth * frame_len),
                                      (const unsigned int*)(frames + r * frame_len), reset, p, len, depth);
    } else {
        if (p >= frame_len) return;
        frame_push_unit<unsigned char>(stacks + r * depth * frame_len, frames + r * frame_len, reset, p, frame_len, depth);
    }
}
