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
// resets [rows] f32 (1.0 where the env's episode ended with the step, as VecEnv::dones).
// Grid: (ceil(frame_len / FRAME_PUSH_THREADS), rows), FRAME_PUSH_THREADS threads. Each thread
// owns one pixel of one stack in every channel (it reads all its old values before writing), so
// the in-place shift has no race. A warp touches 32 consecutive bytes per channel: one sector.

#define FRAME_PUSH_THREADS 256

extern "C" __global__ void __launch_bounds__(FRAME_PUSH_THREADS) frame_stack_push(
    unsigned char* __restrict__ stacks, const unsigned char* __restrict__ frames, const float* __restrict__ resets,
    unsigned int frame_len, unsigned int depth) {
    const unsigned int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= frame_len) return;
    const unsigned long long r = blockIdx.y;
    unsigned char* stack = stacks + r * depth * frame_len;
    if (resets[r] != 0.0f) {
        for (unsigned int c = 0; c + 1 < depth; ++c) stack[c * frame_len + p] = 0;
    } else {
        for (unsigned int c = 0; c + 1 < depth; ++c) stack[c * frame_len + p] = stack[(c + 1) * frame_len + p];
    }
    stack[(depth - 1) * frame_len + p] = frames[r * frame_len + p];
}
