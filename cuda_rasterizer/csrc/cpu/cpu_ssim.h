// The 3DGS loss's SSIM term, fused, for [C, H, W] float32 images x (rendered) and y (target): forward (mean
// SSIM) and backward (dL/dx; no gradient for y).  Torch-free, raw pointers; the torch glue is cpu_bindings.cpp,
// the Python side gs_trainer/losses.py (whose ssim_map is the reference: same window, same zero padding, same
// constants, same order of the separable passes).
//
// Forward, in bands of rows of one channel (parallel over the bands), each walked top to bottom:
//   horizontal pass   a row of x, y, x^2, y^2, xy padded by 5 zeros each side, each blurred with the 11 taps into
//                     a ring of the last 11 such rows (per map; a zero row stands for rows outside the image)
//   vertical pass     the 11 taps down the ring give mu_x, mu_y, E[x^2], E[y^2], E[xy] of the row 5 above; then
//                     per pixel SSIM, its row sum (float64, 8 partial sums), and, when a backward follows, the three
//                     partial derivatives dS/dmu_x, dS/dE[x^2], dS/dE[xy]
//   mean              the row sums in row order (float64), / (C H W)
// The working set is the ring (5 x 11 rows), whatever the image size.
// Backward (upstream gradient g), in the same bands: the three derivative maps blurred with the window's adjoint
// (the window is symmetric and zero padded, so the adjoint is the same blur), then per pixel
//   dL/dx = g / (C H W) * (B[dS/dmu_x] + 2 x B[dS/dE[x^2]] + y B[dS/dE[xy]]).
//
// Determinism: every per-pixel sum has a fixed order (the taps in order), every row's work is the same whichever
// band and thread compute it, and the mean sums the rows in order: the results are bitwise the same for any
// thread count.
// The row loops are compiled for the extension's instruction set (the loader's flags, _cpu_backend.ISAS):
// without FMA contraction (-ffp-contract=off) every one gives bitwise the same results.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_rasterizer.h"  // parallel_for, FlushDenormals


namespace gsr::cpu::ssim {

constexpr int kTaps = 11;           // the window: 11 taps, sigma 1.5 (losses.SSIM_WINDOW, SSIM_SIGMA)
constexpr int kHalf = kTaps / 2;    // zero padding on each side
constexpr double kSigma = 1.5;
constexpr float kC1 = static_cast<float>(0.01 * 0.01);  // (K1 L)^2, as losses.SSIM_C1 rounded to float
constexpr float kC2 = static_cast<float>(0.03 * 0.03);  // (K2 L)^2
constexpr int kForwardMaps = 5;     // x, y, x^2, y^2, xy
constexpr int kGradMaps = 3;        // dS/dmu_x, dS/dE[x^2], dS/dE[xy]

struct Window {
    float g[kTaps];
};

// The normalised 1D Gaussian, computed in float64 and rounded to float (as losses._window_1d).
inline Window window() {
    Window w{};
    double d[kTaps], sum = 0.0;
    for (int k = 0; k < kTaps; ++k) {
        const double t = k - kHalf;
        d[k] = std::exp(-t * t / (2.0 * kSigma * kSigma));
        sum += d[k];
    }
    for (int k = 0; k < kTaps; ++k) w.g[k] = static_cast<float>(d[k] / sum);
    return w;
}

// out[j] = g[0] in[j] + g[1] in[j + 1] + ... + g[10] in[j + 10], j in [0, n): one row, padded by kHalf zeros.
inline void blur_row(const float* __restrict in, float* __restrict out, int64_t n, const Window& w) {
    for (int64_t j = 0; j < n; ++j) {
        float s = w.g[0] * in[j];
        for (int k = 1; k < kTaps; ++k) s += w.g[k] * in[j + k];
        out[j] = s;
    }
}

// out[j] = g[0] r[0][j] + g[1] r[1][j] + ... + g[10] r[10][j]: one output row of the vertical pass from its 11
// input rows (a zero row where the window leaves the image).
inline void blur_col(const float* const r[kTaps], int64_t W, float* __restrict out, const Window& w) {
    const float* __restrict r0 = r[0];
    const float* __restrict r1 = r[1];
    const float* __restrict r2 = r[2];
    const float* __restrict r3 = r[3];
    const float* __restrict r4 = r[4];
    const float* __restrict r5 = r[5];
    const float* __restrict r6 = r[6];
    const float* __restrict r7 = r[7];
    const float* __restrict r8 = r[8];
    const float* __restrict r9 = r[9];
    const float* __restrict r10 = r[10];
    const float* g = w.g;
    for (int64_t j = 0; j < W; ++j) {
        float s = g[0] * r0[j];
        s += g[1] * r1[j];
        s += g[2] * r2[j];
        s += g[3] * r3[j];
        s += g[4] * r4[j];
        s += g[5] * r5[j];
        s += g[6] * r6[j];
        s += g[7] * r7[j];
        s += g[8] * r8[j];
        s += g[9] * r9[j];
        s += g[10] * r10[j];
        out[j] = s;
    }
}

// A band of output rows [i0, i1) of one channel's vertical pass, walked top to bottom over a ring of the 11
// horizontal rows each output row needs: hrow(r, out[M]) writes horizontal row r of the M maps, vrow(i, p[M])
// takes output row i's 11 input rows per map.  Each horizontal row is computed once per band (the band's first
// kTaps - 1 are also its upper neighbour's); every row's values are the same whichever band computes them.
// ring: M kTaps W floats; zero: W zeros.
template <int M, class HRow, class VRow>
inline void walk_band(int64_t H, int64_t W, int64_t i0, int64_t i1, float* ring, const float* zero, const HRow& hrow,
                      const VRow& vrow) {
    auto slot = [&](int m, int64_t r) { return ring + (m * kTaps + r % kTaps) * W; };  // r >= 0
    auto horizontal = [&](int64_t r) {
        float* out[M];
        for (int m = 0; m < M; ++m) out[m] = slot(m, r);
        hrow(r, out);
    };
    for (int64_t r = std::max<int64_t>(0, i0 - kHalf); r < std::min(H, i0 + kHalf); ++r) horizontal(r);
    for (int64_t i = i0; i < i1; ++i) {
        if (i + kHalf < H) horizontal(i + kHalf);
        const float* p[M][kTaps];
        for (int k = 0; k < kTaps; ++k) {
            const int64_t r = i - kHalf + k;
            for (int m = 0; m < M; ++m) p[m][k] = (r < 0 || r >= H) ? zero : slot(m, r);
        }
        vrow(i, p);
    }
}

// Rows per band: the whole channel on one thread; else ~8 bands per thread, handed out as threads free up (a
// thread that the OS preempts then holds up little), and at least 32 rows (each band recomputes kTaps - 1
// horizontal rows).  Any choice gives the same results.
inline int64_t band_rows(int64_t C, int64_t H, int threads) {
    if (threads <= 1) return H;
    const int64_t want_bands = 8 * threads;
    const int64_t per_channel = (want_bands + C - 1) / C;
    return std::max<int64_t>(32, (H + per_channel - 1) / per_channel);
}

// The padded rows of x, y, x^2, y^2 and xy of one image row (their first and last kHalf values stay as they are).
inline void products_row(const float* __restrict xr, const float* __restrict yr, int64_t W, float* __restrict px,
                         float* __restrict py, float* __restrict pxx, float* __restrict pyy,
                         float* __restrict pxy) {
    for (int64_t j = 0; j < W; ++j) {
        const float a = xr[j], b = yr[j];
        px[kHalf + j] = a;
        py[kHalf + j] = b;
        pxx[kHalf + j] = a * a;
        pyy[kHalf + j] = b * b;
        pxy[kHalf + j] = a * b;
    }
}

// The horizontal pass of one image row (xr, yr: W values) into its rows of the five maps (out); pad: scratch of
// 5 (W + 2 kHalf) floats.
inline void forward_hrow(const float* xr, const float* yr, int64_t W, const Window& w, float* pad,
                                  float* const out[kForwardMaps]) {
    const int64_t pw = W + 2 * kHalf;
    for (int m = 0; m < kForwardMaps; ++m) {
        std::fill(pad + m * pw, pad + m * pw + kHalf, 0.f);
        std::fill(pad + m * pw + kHalf + W, pad + (m + 1) * pw, 0.f);
    }
    products_row(xr, yr, W, pad, pad + pw, pad + 2 * pw, pad + 3 * pw, pad + 4 * pw);
    for (int m = 0; m < kForwardMaps; ++m) blur_row(pad + m * pw, out[m], W, w);
}

// Per pixel SSIM of one row from its blurred maps: the expression of losses.ssim_map, in its order.
inline void ssim_row(const float* __restrict mu1, const float* __restrict mu2, const float* __restrict e11,
                     const float* __restrict e22, const float* __restrict e12, int64_t W, float* __restrict S) {
    for (int64_t j = 0; j < W; ++j) {
        const float m1 = mu1[j], m2 = mu2[j];
        const float m11 = m1 * m1, m22 = m2 * m2, m12 = m1 * m2;
        const float s1 = e11[j] - m11, s2 = e22[j] - m22, s12 = e12[j] - m12;
        const float a1 = 2.f * m12 + kC1, a2 = 2.f * s12 + kC2;
        const float b1 = m11 + m22 + kC1, b2 = s1 + s2 + kC2;
        S[j] = (a1 * a2) / (b1 * b2);
    }
}

// ssim_row, and the three partial derivatives of each pixel's SSIM.  With a1 = 2 mu1 mu2 + C1,
// a2 = 2 (E12 - mu1 mu2) + C2, b1 = mu1^2 + mu2^2 + C1, b2 = E11 - mu1^2 + E22 - mu2^2 + C2, S = a1 a2 / (b1 b2):
//   dS/dmu1 = 2 mu2 (dS/da1 - dS/da2) + 2 mu1 (dS/db1 - dS/db2),  dS/dE11 = dS/db2,  dS/dE12 = 2 dS/da2.
inline void ssim_row_grad(const float* __restrict mu1, const float* __restrict mu2, const float* __restrict e11,
                          const float* __restrict e22, const float* __restrict e12, int64_t W, float* __restrict S,
                          float* __restrict gmu, float* __restrict g11, float* __restrict g12) {
    for (int64_t j = 0; j < W; ++j) {
        const float m1 = mu1[j], m2 = mu2[j];
        const float m11 = m1 * m1, m22 = m2 * m2, m12 = m1 * m2;
        const float s1 = e11[j] - m11, s2 = e22[j] - m22, s12 = e12[j] - m12;
        const float a1 = 2.f * m12 + kC1, a2 = 2.f * s12 + kC2;
        const float b1 = m11 + m22 + kC1, b2 = s1 + s2 + kC2;
        const float den = b1 * b2, s = (a1 * a2) / den;
        S[j] = s;
        const float da1 = a2 / den, da2 = a1 / den;
        const float db1 = -s / b1, db2 = -s / b2;
        gmu[j] = 2.f * m2 * (da1 - da2) + 2.f * m1 * (db1 - db2);
        g11[j] = db2;
        g12[j] = 2.f * da2;
    }
}

// The sum of a row's values in float64: 8 partial sums (lane l takes the values j = l mod 8), then a fixed tree.
inline double row_sum(const float* __restrict v, int64_t W) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= W; j += 8)
        for (int l = 0; l < 8; ++l) acc[l] += v[j + l];
    for (int l = 0; j + l < W; ++l) acc[l] += v[j + l];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// The vertical pass of one row (p[m]: the 11 input rows of map m), then per pixel SSIM and, when
// grad is not null, its three partial derivatives (grad[0..2]: W values each).  Returns the row's SSIM sum.
// rows: scratch of 6 W floats.
inline double forward_vrow(const float* const p[kForwardMaps][kTaps], int64_t W, const Window& w,
                                    float* rows, float* const grad[kGradMaps]) {
    for (int m = 0; m < kForwardMaps; ++m) blur_col(p[m], W, rows + m * W, w);
    float* S = rows + 5 * W;
    if (grad)
        ssim_row_grad(rows, rows + W, rows + 2 * W, rows + 3 * W, rows + 4 * W, W, S, grad[0], grad[1], grad[2]);
    else
        ssim_row(rows, rows + W, rows + 2 * W, rows + 3 * W, rows + 4 * W, W, S);
    return row_sum(S, W);
}

// The horizontal pass of the backward for one row: the three derivative rows (d[m]: W values) padded and blurred.
inline void backward_hrow(const float* const d[kGradMaps], int64_t W, const Window& w, float* pad,
                                   float* const out[kGradMaps]) {
    const int64_t pw = W + 2 * kHalf;
    for (int m = 0; m < kGradMaps; ++m) {
        float* q = pad + m * pw;
        std::fill(q, q + kHalf, 0.f);
        std::memcpy(q + kHalf, d[m], static_cast<size_t>(W) * sizeof(float));
        std::fill(q + kHalf + W, q + pw, 0.f);
        blur_row(q, out[m], W, w);
    }
}

// dL/dx of one row's pixels from the blurred derivative maps.
inline void combine_row(const float* __restrict bmu, const float* __restrict b11, const float* __restrict b12,
                        const float* __restrict xr, const float* __restrict yr, int64_t W, float scale,
                        float* __restrict dx) {
    for (int64_t j = 0; j < W; ++j) dx[j] = scale * (bmu[j] + 2.f * xr[j] * b11[j] + yr[j] * b12[j]);
}

// The vertical pass of the backward for one row and dL/dx of its pixels (xr, yr, dx: W values).
// rows: scratch of 3 W floats.
inline void backward_vrow(const float* const p[kGradMaps][kTaps], const float* xr, const float* yr,
                                   int64_t W, const Window& w, float scale, float* rows, float* dx) {
    for (int m = 0; m < kGradMaps; ++m) blur_col(p[m], W, rows + m * W, w);
    combine_row(rows, rows + W, rows + 2 * W, xr, yr, W, scale, dx);
}

// Mean SSIM of x and y ([C, H, W] each).  grad: null, or [3, C, H, W] for the per-pixel derivative maps that
// backward() takes.  Parallel over bands of rows (channel-major).
inline double forward(const float* x, const float* y, int64_t C, int64_t H, int64_t W, float* grad, int threads) {
    const Window w = window();
    const int64_t hw = H * W, B = band_rows(C, H, threads), bands = (H + B - 1) / B;
    std::vector<double> row_sums(static_cast<size_t>(C * H));
    parallel_for(C * bands, threads, 1, [&](int64_t t) {
        thread_local std::vector<float> scratch;
        scratch.resize(static_cast<size_t>((kForwardMaps * kTaps + 1 + 6 + kForwardMaps) * W +
                                           kForwardMaps * 2 * kHalf));
        float* ring = scratch.data();
        float* zero = ring + kForwardMaps * kTaps * W;
        float* rows = zero + W;
        float* pad = rows + 6 * W;
        std::fill(zero, zero + W, 0.f);
        const int64_t c = t / bands, i0 = (t % bands) * B, i1 = std::min(H, i0 + B);
        const float* xc = x + c * hw;
        const float* yc = y + c * hw;
        walk_band<kForwardMaps>(
            H, W, i0, i1, ring, zero,
            [&](int64_t r, float* const out[kForwardMaps]) { forward_hrow(xc + r * W, yc + r * W, W, w, pad, out); },
            [&](int64_t i, const float* const p[kForwardMaps][kTaps]) {
                float* g[kGradMaps];
                for (int m = 0; m < kGradMaps; ++m) g[m] = grad ? grad + (m * C + c) * hw + i * W : nullptr;
                row_sums[c * H + i] = forward_vrow(p, W, w, rows, grad ? g : nullptr);
            });
    });
    double total = 0.0;
    for (const double r : row_sums) total += r;
    return total / static_cast<double>(C * H * W);
}

// dL/dx ([C, H, W]) for the upstream gradient g of the mean SSIM; grad: forward()'s derivative maps.
inline void backward(const float* x, const float* y, const float* grad, int64_t C, int64_t H, int64_t W, double g,
                     float* dx, int threads) {
    const Window w = window();
    const int64_t hw = H * W, B = band_rows(C, H, threads), bands = (H + B - 1) / B;
    const float scale = static_cast<float>(g / static_cast<double>(C * H * W));
    parallel_for(C * bands, threads, 1, [&](int64_t t) {
        thread_local std::vector<float> scratch;
        scratch.resize(static_cast<size_t>((kGradMaps * kTaps + 1 + 3 + kGradMaps) * W + kGradMaps * 2 * kHalf));
        float* ring = scratch.data();
        float* zero = ring + kGradMaps * kTaps * W;
        float* rows = zero + W;
        float* pad = rows + 3 * W;
        std::fill(zero, zero + W, 0.f);
        const int64_t c = t / bands, i0 = (t % bands) * B, i1 = std::min(H, i0 + B);
        walk_band<kGradMaps>(
            H, W, i0, i1, ring, zero,
            [&](int64_t r, float* const out[kGradMaps]) {
                const float* d[kGradMaps];
                for (int m = 0; m < kGradMaps; ++m) d[m] = grad + (m * C + c) * hw + r * W;
                backward_hrow(d, W, w, pad, out);
            },
            [&](int64_t i, const float* const p[kGradMaps][kTaps]) {
                const int64_t r = c * H + i;
                backward_vrow(p, x + r * W, y + r * W, W, w, scale, rows, dx + r * W);
            });
    });
}

}  // namespace gsr::cpu::ssim
