/* Trains GALA-A2C agents on catch through the C ABI, with the game written here in C.
 *
 *   cargo build --release
 *   cc -O2 -Iinclude examples/c/catch.c -Ltarget/release -lgala_gpu \
 *      -Wl,-rpath,$PWD/target/release -o catch && ./catch [FRAMES] [THRESHOLD]
 *
 * Catch (as src/env/catch.rs): a 10x5 board; a ball starts in a random column of the top row
 * and falls one row per step; the paddle on the bottom row moves (0 stay, 1 left, 2 right);
 * when the ball reaches the bottom row the game ends, +1 if the paddle is under it, else -1.
 * Cells are 8x16-pixel blocks (ball 255, paddle 160) centred in an 84x84 frame; observations
 * stack the last 4 frames, zeroed when a game ends. Exits 0 when the mean return of the last
 * 100 games reaches THRESHOLD (default 0.5) within FRAMES agent steps (default 24000). */
#include "gala_gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROWS = 10, COLS = 5, CELL_H = 8, CELL_W = 16, HW = 84, FRAME = HW * HW, STACK = 4,
       MARGIN = (HW - ROWS * CELL_H) / 2, RECENT = 100 };

typedef struct { int ball_row, ball_col, paddle_col; uint64_t rng; } Game;

static uint32_t next_rand(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return (uint32_t)((*s * 0x2545F4914F6CDD1DULL) >> 32);
}

static void cell(uint8_t *frame, int row, int col, uint8_t value) {
    for (int y = 0; y < CELL_H; y++)
        memset(frame + (MARGIN + row * CELL_H + y) * HW + MARGIN + col * CELL_W, value, CELL_W);
}

static void render(const Game *g, uint8_t *frame) {
    memset(frame, 0, FRAME);
    cell(frame, ROWS - 1, g->paddle_col, 160);
    cell(frame, g->ball_row, g->ball_col, 255);
}

/* Starts a game with a zeroed frame stack whose newest frame shows it. */
static void reset(Game *g, uint8_t *stack) {
    g->ball_row = 0;
    g->ball_col = (int)(next_rand(&g->rng) % COLS);
    g->paddle_col = (int)(next_rand(&g->rng) % COLS);
    memset(stack, 0, STACK * FRAME);
    render(g, stack + (STACK - 1) * FRAME);
}

/* One step; returns the reward and sets *done (the stack then holds the next game's start). */
static float step(Game *g, uint8_t *stack, uint32_t action, float *done) {
    if (action == 1 && g->paddle_col > 0) g->paddle_col--;
    if (action == 2 && g->paddle_col < COLS - 1) g->paddle_col++;
    g->ball_row++;
    if (g->ball_row == ROWS - 1) {
        float reward = g->ball_col == g->paddle_col ? 1.0f : -1.0f;
        *done = 1.0f;
        reset(g, stack);
        return reward;
    }
    *done = 0.0f;
    memmove(stack, stack + FRAME, (STACK - 1) * FRAME);
    render(g, stack + (STACK - 1) * FRAME);
    return 0.0f;
}

#define CHECK(call)                                                                      \
    do {                                                                                 \
        GalaStatus status_ = (call);                                                     \
        if (status_ != GALA_OK) {                                                        \
            fprintf(stderr, "%s failed (status %d): %s\n", #call, (int)status_, gala_last_error()); \
            exit(2);                                                                     \
        }                                                                                \
    } while (0)

int main(int argc, char **argv) {
    long frames = argc > 1 ? atol(argv[1]) : 24000;
    double threshold = argc > 2 ? atof(argv[2]) : 0.5;
    const char *config = "agents = 4\nenvs_per_agent = 4\nn_steps = 5\nlr = 1.4e-3\n"
                         "backend = \"cpu\"\nseed = 1\n";
    GalaEngine *engine = NULL;
    CHECK(gala_engine_create(config, 3, &engine));
    GalaEngineInfo info;
    CHECK(gala_engine_info(engine, &info));
    size_t agents = info.agents, envs = info.envs_per_agent, steps = info.n_steps;
    size_t n = agents * envs, s = agents * steps * envs;

    Game *games = calloc(n, sizeof *games);
    uint8_t *obs = malloc(n * info.obs_bytes), *seg_obs = malloc(s * info.obs_bytes);
    uint32_t *actions = malloc(n * sizeof *actions), *seg_actions = malloc(s * sizeof *seg_actions);
    float *rewards = malloc(s * sizeof *rewards), *dones = malloc(s * sizeof *dones);
    float *bootstrap = malloc(n * sizeof *bootstrap);
    GalaLearnStats *stats = malloc(agents * sizeof *stats);
    double recent[RECENT];
    size_t finished = 0;
    for (size_t i = 0; i < n; i++) {
        games[i].rng = 0x9E3779B97F4A7C15ULL * (i + 1);
        reset(&games[i], obs + i * info.obs_bytes);
    }

    uint64_t t_step = 0;
    double mean = -1.0;
    long updates = frames / (long)s;
    for (long u = 0; u < updates; u++) {
        for (size_t t = 0; t < steps; t++) {
            CHECK(gala_engine_act(engine, obs, n * info.obs_bytes, t_step, 0, actions, n, NULL, 0, NULL, 0));
            for (size_t a = 0; a < agents; a++)
                for (size_t e = 0; e < envs; e++) {
                    size_t i = a * envs + e, row = (a * steps + t) * envs + e; /* [agents][steps][envs] */
                    memcpy(seg_obs + row * info.obs_bytes, obs + i * info.obs_bytes, info.obs_bytes);
                    seg_actions[row] = actions[i];
                    rewards[row] = step(&games[i], obs + i * info.obs_bytes, actions[i], &dones[row]);
                    if (dones[row] != 0.0f) recent[finished++ % RECENT] = rewards[row];
                }
            t_step++;
        }
        /* V(s_T) for the bootstrap, at the step the next segment starts with. */
        CHECK(gala_engine_act(engine, obs, n * info.obs_bytes, t_step, 0, actions, n, bootstrap, n, NULL, 0));
        CHECK(gala_engine_learn(engine, seg_obs, s * info.obs_bytes, seg_actions, s, rewards, s, dones, s,
                                bootstrap, n, NULL, 0, stats, agents));
        CHECK(gala_engine_gossip(engine));
        size_t k = finished < RECENT ? finished : RECENT;
        mean = 0.0;
        for (size_t i = 0; i < k; i++) mean += recent[i];
        mean = k ? mean / (double)k : -1.0;
        if ((u + 1) % 50 == 0 || u + 1 == updates) {
            double consensus;
            CHECK(gala_engine_consensus_distance(engine, &consensus));
            printf("frames %6lu  games %5zu  mean return (last 100) %+.2f  entropy %.3f  consensus %.2e\n",
                   (unsigned long)(t_step * n), finished, mean, stats[0].entropy, consensus);
            fflush(stdout);
        }
    }
    char sha[65];
    CHECK(gala_engine_params_sha256(engine, sha, sizeof sha));
    printf("params_sha256 %s\n", sha);
    CHECK(gala_engine_free(engine));
    free(games); free(obs); free(seg_obs); free(actions); free(seg_actions);
    free(rewards); free(dones); free(bootstrap); free(stats);
    if (mean < threshold) {
        fprintf(stderr, "did not learn: mean return %.2f < %.2f after %ld frames\n", mean, threshold, frames);
        return 1;
    }
    printf("learned: mean return %.2f >= %.2f\n", mean, threshold);
    return 0;
}
