// The 3DGS loss's SSIM term, fused, for [C, H, W] float32 images x (rendered) and y (target): forward (mean
// SSIM) and backward (dL/dx; no gradient for y).  Torch-free, raw pointers; the torch glue is cpu_bindings.cpp,
// the Python side gs_trainer/losses.py (whose ssim_map is the reference: same window, same zero padding, same
// constants, same order of the separable passes).
//
// Forward, one channel at a time (its five planes of (H + 10) x W stay in cache):
//   horizontal pass   parallel over the channel's rows: the row of x, y, x^2, y^2, xy padded by 5 zeros each side,
//                     each blurred with the 11 taps into its plane (planes keep 5 zero rows above and below)
//   vertical pass     parallel over the rows: the 11 taps down the five planes give mu_x, mu_y, E[x^2], E[y^2],
//                     E[xy] of a row; then per pixel SSIM, its row sum (float64, 8 partial sums), and, when a
//                     backward follows, the three partial derivatives dS/dmu_x, dS/dE[x^2], dS/dE[xy]
//   mean              the row sums in row order (float64), / (C H W)
// Backward (upstream gradient g), one channel at a time: the three derivative maps blurred with the window's adjoint (the window is
// symmetric and zero padded, so the adjoint is the same blur), then per pixel
//   dL/dx = g / (C H W) * (B[dS/dmu_x] + 2 x B[dS/dE[x^2]] + y B[dS/dE[xy]]).
//
// Determinism: every per-pixel sum has a fixed order (the taps in order), every row's work is the same whichever
// thread runs it, and the mean sums the rows in order: the results are bitwise the same for any thread count.
// The row loops are compiled for AVX2 and for the baseline (see GSR_SSIM_CLONES): without FMA contraction
// (-ffp-contract=off) the two give bitwise the same results.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu_rasterizer.h"  // parallel_for, FlushDenormals

#if defined(GSR_SSIM_CLONES)
// defined by the build (e.g. as inline, to compare one instruction set's results with another's)
#elif defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define GSR_SSIM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GSR_SSIM_CLONES inline
#endif

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

// out[j] = g[0] p[j] + g[1] p[W + j] + ... + g[10] p[10 W + j]: one output row of the vertical pass, p the
// first of its 11 input rows (the plane's zero rows included).
inline void blur_col(const float* __restrict p, int64_t W, float* __restrict out, const Window& w) {
    for (int64_t j = 0; j < W; ++j) {
        float s = w.g[0] * p[j];
        for (int k = 1; k < kTaps; ++k) s += w.g[k] * p[k * W + j];
        out[j] = s;
    }
}

// Planes of H + 2 kHalf rows of W: row i of the image is plane row i + kHalf; the kHalf rows above and below
// are zero (the vertical zero padding).  The image rows are left uninitialised: the horizontal pass writes them.
struct Planes {
    int64_t H, W;
    std::unique_ptr<float[]> data;
    Planes(int64_t planes, int64_t H_, int64_t W_)
        : H(H_), W(W_), data(new float[static_cast<size_t>(planes * (H_ + 2 * kHalf) * W_)]) {
        for (int64_t m = 0; m < planes; ++m) {
            std::fill(plane(m), plane(m) + kHalf * W, 0.f);
            std::fill(plane(m) + (H + kHalf) * W, plane(m) + stride(), 0.f);
        }
    }
    int64_t stride() const { return (H + 2 * kHalf) * W; }
    float* plane(int64_t m) { return data.get() + m * stride(); }
    float* row(int64_t m, int64_t i) { return plane(m) + (i + kHalf) * W; }
};

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

// The horizontal pass of one image row (xr, yr: W values) into its rows of the five planes; pad: scratch of
// 5 (W + 2 kHalf) floats.
GSR_SSIM_CLONES void forward_hrow(const float* xr, const float* yr, int64_t W, const Window& w, float* pad,
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

// The vertical pass of one row (p[m]: the first of the 11 input rows of plane m), then per pixel SSIM and, when
// grad is not null, its three partial derivatives (grad[0..2]: W values each).  Returns the row's SSIM sum.
// rows: scratch of 6 W floats.
GSR_SSIM_CLONES double forward_vrow(const float* const p[kForwardMaps], int64_t W, const Window& w, float* rows,
                                    float* const grad[kGradMaps]) {
    for (int m = 0; m < kForwardMaps; ++m) blur_col(p[m], W, rows + m * W, w);
    float* S = rows + 5 * W;
    if (grad)
        ssim_row_grad(rows, rows + W, rows + 2 * W, rows + 3 * W, rows + 4 * W, W, S, grad[0], grad[1], grad[2]);
    else
        ssim_row(rows, rows + W, rows + 2 * W, rows + 3 * W, rows + 4 * W, W, S);
    return row_sum(S, W);
}

// The horizontal pass of the backward for one row: the three derivative rows (d[m]: W values) padded and blurred.
GSR_SSIM_CLONES void backward_hrow(const float* const d[kGradMaps], int64_t W, const Window& w, float* pad,
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
GSR_SSIM_CLONES void backward_vrow(const float* const p[kGradMaps], const float* xr, const float* yr, int64_t W,
                                   const Window& w, float scale, float* rows, float* dx) {
    for (int m = 0; m < kGradMaps; ++m) blur_col(p[m], W, rows + m * W, w);
    combine_row(rows, rows + W, rows + 2 * W, xr, yr, W, scale, dx);
}

// Mean SSIM of x and y ([C, H, W] each).  grad: null, or [3, C, H, W] for the per-pixel derivative maps that
// backward() takes.  One channel at a time (its planes stay in cache), parallel over its rows.
inline double forward(const float* x, const float* y, int64_t C, int64_t H, int64_t W, float* grad, int threads) {
    const Window w = window();
    const int64_t hw = H * W;
    Planes planes(kForwardMaps, H, W);
    std::vector<double> row_sums(static_cast<size_t>(C * H));
    for (int64_t c = 0; c < C; ++c) {
        const float* xc = x + c * hw;
        const float* yc = y + c * hw;
        parallel_for(H, threads, 8, [&](int64_t i) {
            thread_local std::vector<float> pad;
            pad.resize(static_cast<size_t>(kForwardMaps * (W + 2 * kHalf)));
            float* out[kForwardMaps];
            for (int m = 0; m < kForwardMaps; ++m) out[m] = planes.row(m, i);
            forward_hrow(xc + i * W, yc + i * W, W, w, pad.data(), out);
        });
        parallel_for(H, threads, 8, [&](int64_t i) {
            thread_local std::vector<float> scratch;
            scratch.resize(static_cast<size_t>(6 * W));
            const float* p[kForwardMaps];
            for (int m = 0; m < kForwardMaps; ++m) p[m] = planes.row(m, i - kHalf);
            float* g[kGradMaps];
            for (int m = 0; m < kGradMaps; ++m) g[m] = grad ? grad + (m * C + c) * hw + i * W : nullptr;
            row_sums[c * H + i] = forward_vrow(p, W, w, scratch.data(), grad ? g : nullptr);
        });
    }
    double total = 0.0;
    for (const double r : row_sums) total += r;
    return total / static_cast<double>(C * H * W);
}

// dL/dx ([C, H, W]) for the upstream gradient g of the mean SSIM; grad: forward()'s derivative maps.
inline void backward(const float* x, const float* y, const float* grad, int64_t C, int64_t H, int64_t W, double g,
                     float* dx, int threads) {
    const Window w = window();
    const int64_t hw = H * W;
    const float scale = static_cast<float>(g / static_cast<double>(C * H * W));
    Planes planes(kGradMaps, H, W);
    for (int64_t c = 0; c < C; ++c) {
        parallel_for(H, threads, 8, [&](int64_t i) {
            thread_local std::vector<float> pad;
            pad.resize(static_cast<size_t>(kGradMaps * (W + 2 * kHalf)));
            const float* d[kGradMaps];
            float* out[kGradMaps];
            for (int m = 0; m < kGradMaps; ++m) {
                d[m] = grad + (m * C + c) * hw + i * W;
                out[m] = planes.row(m, i);
            }
            backward_hrow(d, W, w, pad.data(), out);
        });
        parallel_for(H, threads, 8, [&](int64_t i) {
            thread_local std::vector<float> scratch;
            scratch.resize(static_cast<size_t>(3 * W));
            const float* p[kGradMaps];
            for (int m = 0; m < kGradMaps; ++m) p[m] = planes.row(m, i - kHalf);
            const int64_t r = c * H + i;
            backward_vrow(p, x + r * W, y + r * W, W, w, scale, scratch.data(), dx + r * W);
        });
    }
}

}  // namespace gsr::cpu::ssim
