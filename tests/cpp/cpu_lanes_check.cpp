// Checks of cpu_rasterizer.h's lane forms against math.cuh's scalar functions, for tests/test_cpu_lanes.py:
// exp_lanes within 2 ulp of expf; pixel_forward_step_lanes and render_backward_step_lanes bitwise equal to
// pixel_forward_step_depth (colour, T, last and depth) and render_backward_step lane by lane.  Prints one line of checksums (the same for every
// target ISA when the lanes' arithmetic does not depend on it) and exits 1 on a failed check.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "cpu/cpu_rasterizer.h"

using namespace gsr;
using namespace gsr::cpu;

static uint32_t bits(float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b;
}

int main() {
    int fails = 0;
    uint64_t sum = 0;
    // exp_lanes vs expf over [-87, 0], at three scales
    int64_t worst = 0;
    for (long i = 0; i <= 3000000; ++i) {
        const float scale = i % 3 == 0 ? 1.f : (i % 3 == 1 ? 1e-3f : 1e-6f);
        const float x = -87.0f * static_cast<float>(static_cast<double>(i) / 3000000.0) * scale;
        LaneF v = LaneF{} + x;
        const float a = exp_lanes(v)[0], b = expf(x);
        const int64_t d = std::llabs(static_cast<int64_t>(bits(a)) - static_cast<int64_t>(bits(b)));
        worst = d > worst ? d : worst;
        sum = sum * 31 + bits(a);
    }
    if (worst > 2) { std::printf("exp_lanes: %ld ulp from expf\n", static_cast<long>(worst)); ++fails; }
    std::mt19937 rng(0);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    for (int trial = 0; trial < 20000; ++trial) {
        // forward: a lane group and the scalar steps of the same pixels
        PixelFwdLanes fl;
        pixel_forward_init_lanes(fl);
        PixelFwdState fs[kLanes];
        for (auto& s : fs) pixel_forward_init(s);
        PixelBackLanes bl;
        LaneF T_final, bg_dot, dpix[3];
        PixelBackState bs[kLanes];
        for (int l = 0; l < kLanes; ++l) {
            T_final[l] = 0.01f + u(rng);
            bg_dot[l] = u(rng) - 0.5f;
            for (int c = 0; c < 3; ++c) dpix[c][l] = u(rng) - 0.5f;
            pixel_back_init(bs[l], T_final[l]);
        }
        pixel_back_init_lanes(bl, T_final);
        unsigned live = (1u << kLanes) - 1u;
        for (int j = 0; j < 12; ++j) {
            LaneF alpha, G, dx, dy;
            const float color[3] = {u(rng), u(rng), u(rng)}, conic[3] = {u(rng), u(rng) - 0.5f, u(rng)};
            const float opacity = u(rng), z = 0.2f + 10.f * u(rng);
            unsigned m = 0u;
            for (int l = 0; l < kLanes; ++l) {
                alpha[l] = u(rng) * 0.99f;
                G[l] = u(rng);
                dx[l] = 4.f * u(rng) - 2.f;
                dy[l] = 4.f * u(rng) - 2.f;
                m |= static_cast<unsigned>(u(rng) < 0.8f) << l;
            }
            const unsigned mf = m & live;
            live &= ~pixel_forward_step_lanes(fl, mf, alpha, color, z, j + 1);
            float g[kGradValues][kLanes];
            render_backward_step_lanes(bl, m, dpix, bg_dot, T_final, dx, dy, conic, opacity, G, alpha, color, g);
            for (int l = 0; l < kLanes; ++l) {
                if (mf >> l & 1u) {
                    const bool more = pixel_forward_step_depth(fs[l], alpha[l], color, z, j + 1);
                    if (more != ((live >> l & 1u) != 0u)) ++fails;
                }
                if (m >> l & 1u) {
                    const float d[3] = {dpix[0][l], dpix[1][l], dpix[2][l]};
                    float gs[kGradValues];
                    render_backward_step(bs[l], d, bg_dot[l], T_final[l], dx[l], dy[l], conic, opacity, G[l],
                                         alpha[l], color, gs);
                    for (int v = 0; v < kGradValues; ++v) {
                        if (bits(gs[v]) != bits(g[v][l])) ++fails;
                        sum = sum * 31 + bits(g[v][l]);
                    }
                }
            }
        }
        for (int l = 0; l < kLanes; ++l) {
            if (bits(fs[l].T) != bits(fl.T[l]) || fs[l].last != fl.last[l]) ++fails;
            if (bits(fs[l].D) != bits(fl.D[l])) ++fails;
            for (int c = 0; c < 3; ++c) if (bits(fs[l].C[c]) != bits(fl.C[c][l])) ++fails;
            if (bits(bs[l].T) != bits(bl.T[l])) ++fails;
            sum = sum * 31 + bits(fl.T[l]) + bits(fl.C[0][l]);
        }
    }
    std::printf("max_ulp %ld checksum %016llx fails %d\n", static_cast<long>(worst),
                static_cast<unsigned long long>(sum), fails);
    return fails ? 1 : 0;
}
