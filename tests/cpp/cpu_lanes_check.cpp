// Checks, for tests/test_cpu_lanes.py, that math.cuh's per-pixel steps instantiated with the CPU's 8- and
// 16-pixel lane types (cpu/cpu_lanes.h) give each lane the results of the float instantiation (the CUDA kernels' one):
//   exp_lanes within 2 ulp of expf;
//   gaussian_power bitwise, and gaussian_alpha_of_power's alpha within 2 ulp (expf vs exp_lanes) with the same
//   accepting lanes away from the 1/255 edge;
//   pixel_forward_step (colour, depth, T, last, done) and render_backward_step (state, 9 values) bitwise.
// Prints one line of checksums (the same for every target ISA when the lanes' arithmetic does not depend on it)
// and exits 1 on a failed check.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "cpu/cpu_lanes.h"

using namespace gsr;
using namespace gsr::cpu;

static uint32_t bits(float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b;
}

static int64_t ulps(float a, float b) { return std::llabs(static_cast<int64_t>(bits(a)) - static_cast<int64_t>(bits(b))); }

// The steps' lane instantiation of width W against the float one; adds to fails and sum.
template <int W>
static int check_steps(int& fails, uint64_t& sum) {
    using LF = LaneFW<W>;
    using LI = LaneIW<W>;
    std::mt19937 rng(0);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    int alpha_checked = 0;
    for (int trial = 0; trial < 20000; ++trial) {
        PixelFwd<LF> fl;
        pixel_forward_init(fl);
        PixelFwdState fs[W];
        for (auto& s : fs) pixel_forward_init(s);
        LF T_final, bg_dot, dpix[3];
        PixelBackState bs[W];
        for (int l = 0; l < W; ++l) {
            T_final[l] = 0.01f + u(rng);
            bg_dot[l] = u(rng) - 0.5f;
            for (int c = 0; c < 3; ++c) dpix[c][l] = u(rng) - 0.5f;
            pixel_back_init(bs[l], T_final[l]);
        }
        PixelBack<LF> bl;
        pixel_back_init(bl, T_final);
        LI live = LI{} - 1;
        for (int j = 0; j < 12; ++j) {
            const float color[3] = {u(rng), u(rng), u(rng)}, conic[3] = {u(rng), u(rng) - 0.5f, u(rng)};
            const float opacity = u(rng) < 0.2f ? 1.f : u(rng), z = 0.2f + 10.f * u(rng);  // 1: alpha's clamp
            const float mx = 8.f * u(rng), my = 8.f * u(rng);
            LF px, py, alpha, G, dx, dy;
            LI m;
            for (int l = 0; l < W; ++l) {
                px[l] = static_cast<float>(l);
                py[l] = static_cast<float>(trial % 8);
                alpha[l] = u(rng) * 0.99f;
                G[l] = u(rng);
                m[l] = u(rng) < 0.8f ? -1 : 0;
            }
            // the alpha of the pair (mx, my) at the lanes' pixels
            LF ldx, ldy, lG = LF{}, lalpha = LF{};
            const LF power = gaussian_power(mx, my, conic, px, py, ldx, ldy);
            const LI ok = gaussian_alpha_of_power<LF>(power <= 0.f, power, opacity, lG, lalpha);
            for (int l = 0; l < W; ++l) {
                float sdx, sdy, sG = 0.f, salpha = 0.f;
                const bool sok = gaussian_alpha(mx, my, conic, opacity, px[l], py[l], sdx, sdy, sG, salpha);
                const float sp = gaussian_power(mx, my, conic, px[l], py[l], sdx, sdy);
                if (bits(sp) != bits(power[l]) || bits(sdx) != bits(ldx[l]) || bits(sdy) != bits(ldy[l])) ++fails;
                const bool edge = std::fabs(opacity * sG - kAlphaMin) < 1e-6f;
                if (!edge && sok != (ok[l] != 0)) ++fails;
                if (sok && ok[l] && (ulps(sG, lG[l]) > 2 || ulps(salpha, lalpha[l]) > 2)) ++fails;
                alpha_checked += sok ? 1 : 0;
                sum = sum * 31 + bits(power[l]);
            }
            // the steps, on the same inputs in every lane and for the scalar pixels
            const LI mf = m & live;
            const LI stepped = pixel_forward_step(fl, mf, alpha, color, z, j + 1);
            live &= ~mf | stepped;
            for (int l = 0; l < W; ++l) {
                dx[l] = 4.f * u(rng) - 2.f;
                dy[l] = 4.f * u(rng) - 2.f;
            }
            LF g[kGradValues];
            render_backward_step(bl, m, dpix, bg_dot, T_final, dx, dy, conic, opacity, G, alpha, color, g);
            for (int l = 0; l < W; ++l) {
                if (mf[l]) {
                    const bool more = pixel_forward_step_depth(fs[l], alpha[l], color, z, j + 1);
                    if (more != (live[l] != 0)) ++fails;
                }
                if (m[l]) {
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
        for (int l = 0; l < W; ++l) {
            if (bits(fs[l].T) != bits(fl.T[l]) || fs[l].last != fl.last[l]) ++fails;
            if (bits(fs[l].D) != bits(fl.D[l])) ++fails;
            for (int c = 0; c < 3; ++c) if (bits(fs[l].C[c]) != bits(fl.C[c][l])) ++fails;
            if (bits(bs[l].T) != bits(bl.T[l]) || bits(bs[l].last_alpha) != bits(bl.last_alpha[l])) ++fails;
            for (int c = 0; c < 3; ++c)
                if (bits(bs[l].accum[c]) != bits(bl.accum[c][l]) || bits(bs[l].last_color[c]) != bits(bl.last_color[c][l]))
                    ++fails;
            sum = sum * 31 + bits(fl.T[l]) + bits(fl.C[0][l]);
        }
    }
    return alpha_checked;
}

int main() {
    int fails = 0;
    uint64_t sum = 0;
    // exp_lanes vs expf over [-87, 0], at three scales
    int64_t worst = 0;
    for (long i = 0; i <= 3000000; ++i) {
        const float scale = i % 3 == 0 ? 1.f : (i % 3 == 1 ? 1e-3f : 1e-6f);
        const float x = -87.0f * static_cast<float>(static_cast<double>(i) / 3000000.0) * scale;
        const float a = exp_lanes(splat<LaneF>(x))[0], b = expf(x);
        const int64_t d = ulps(a, b);
        worst = d > worst ? d : worst;
        sum = sum * 31 + bits(a);
    }
    if (worst > 2) { std::printf("exp_lanes: %ld ulp from expf\n", static_cast<long>(worst)); ++fails; }
    for (int w : {8, 16}) {  // the tile loops' widths (16 with AVX-512)
        const int checked = w == 8 ? check_steps<8>(fails, sum) : check_steps<16>(fails, sum);
        if (checked < 10000) { std::printf("W=%d: only %d accepted pairs checked\n", w, checked); ++fails; }
    }
    std::printf("max_ulp %ld checksum %016llx fails %d\n", static_cast<long>(worst),
                static_cast<unsigned long long>(sum), fails);
    return fails ? 1 : 0;
}
