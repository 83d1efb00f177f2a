// The CPU backend's stages: host loops around math.cuh's functions, the CUDA kernels' own: preprocess_one,
// preprocess_backward_one and tile_rect per Gaussian, and per pixel gaussian_power, gaussian_alpha_of_power,
// pixel_forward_step and render_backward_step, instantiated with the 8-pixel lane type of cpu_lanes.h (the
// kernels instantiate them with float).  Torch-free: raw pointers and the params structs of rasterizer.h; the
// torch glue is cpu_bindings.cpp.
//
// Structure (the CUDA pipeline's, with the loops a CPU wants):
//   preprocess            parallel over Gaussians
//   bin                   count pairs per tile, fill the tiles' lists, sort each tile's list by
//                         (depth bits, index) in parallel over tiles; record where each (Gaussian, tile) pair
//                         landed (pair_pos), for the backward's reduction
//   render forward        parallel over tiles; a tile stages its Gaussians contiguously, then each group of W
//                         pixels of a tile row (W = 16 with AVX-512, else 8) walks them front to back in
//                         lockstep (each lane the CUDA thread's loop; the group stops when all W are done)
//   render backward       parallel over tiles; each W-pixel group walks back to front from its lanes' largest
//                         n_contrib, and adds its accepting lanes' 9 gradient values lane-wise into the tile's
//                         per-(list position, value) column sums; the tile then writes each sum of 16 lanes into
//                         its partial row of that Gaussian: row = list position, owned by this tile alone, so
//                         no lock and no atomic.  Then, parallel over Gaussians, each Gaussian sums its rows in
//                         tile order (the CPU form of the CUDA `tile` policy: one flush per (tile, Gaussian)).
//   preprocess backward   parallel over Gaussians
//
// Lanes: each lane's arithmetic is the float instantiation's, in the same order, except that expf is
// exp_lanes (within 2 ulp; 1 ulp measured).  tests/test_cpu_lanes.py checks the lane instantiations bitwise
// against the float ones, and the tests compare the whole backend with the PyTorch reference (images 1e-5,
// gradients 1e-4 relative).
//
// Determinism: every sum has a fixed order (within a tile: lane-wise over the tile's lane groups in row order,
// then over the 8 lanes; across tiles: tile order) that does not depend on which thread ran which tile, so
// the results are bitwise the same for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "cpu_lanes.h"

namespace gsr::cpu {

// Denormal floats flushed to zero for the duration of a stage (and restored, since the threads are torch's):
// exp() of a far tail gives denormals, which x86 cores compute with 10-100x slower.  Every value that could
// be denormal is far below what any result depends on (alpha < 1/255 is skipped).  Deterministic.
struct FlushDenormals {
#if defined(__SSE__) || defined(__x86_64__)
    unsigned saved = _mm_getcsr();
    FlushDenormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ | DAZ
    ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// body(i) for i in [0, n) on `threads` threads, handed out in chunks of `chunk` as threads free up.
template <class F>
void parallel_for(int64_t n, int threads, int64_t chunk, const F& body) {
#ifdef _OPENMP
    if (threads > 1 && n > chunk) {
#pragma omp parallel num_threads(threads)
        {
            const FlushDenormals ftz;
#pragma omp for schedule(dynamic, chunk)
            for (int64_t i = 0; i < n; ++i) body(i);
        }
        return;
    }
#endif
    (void)threads;
    (void)chunk;
    const FlushDenormals ftz;
    for (int64_t i = 0; i < n; ++i) body(i);
}

inline bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

inline void preprocess(const Camera& cam, const PreprocessParams& p, int threads) {
    parallel_for(p.n, threads, 1024, [&](int64_t i) { preprocess_one(cam, p, static_cast<int>(i)); });
}

inline void preprocess_backward(const Camera& cam, const PreprocessBackwardParams& p, int threads) {
    parallel_for(p.n, threads, 1024, [&](int64_t i) { preprocess_backward_one(cam, p, static_cast<int>(i)); });
}

// offsets[i] = tiles_touched[0] + ... + tiles_touched[i] (int64, no wrap); returns the total.
inline int64_t pair_offsets(int n, const int* tiles_touched, int64_t* offsets) {
    int64_t total = 0;
    for (int i = 0; i < n; ++i) offsets[i] = (total += tiles_touched[i]);
    return total;
}

struct BinOutputs {
    int* point_list;   // [M] Gaussian ids, per tile front to back (depth, then index)
    int* ranges;       // [num_tiles, 2] [start, end) in point_list
    int* pair_pos;     // [M] for pair k of Gaussian i (offsets[i-1] + k, tiles in row-major order of its
                       //     rectangle): its position in point_list
};

// The binning: b.n, means2d, depths, radii, tiles_touched, offsets and num_rendered as in BinningParams.
inline void bin(const Camera& cam, const BinningParams& b, const BinOutputs& out, int threads) {
    const int num_tiles = cam.grid_x * cam.grid_y;
    std::vector<int64_t> cursor(num_tiles + 1, 0);
    auto rect_of = [&](int i, int rect[4]) {
        tile_rect(cam, b.means2d[2 * i], b.means2d[2 * i + 1], static_cast<float>(b.radii[i]), rect);
    };
    for (int i = 0; i < b.n; ++i) {
        if (b.tiles_touched[i] == 0) continue;
        int rect[4];
        rect_of(i, rect);
        for (int y = rect[1]; y < rect[3]; ++y)
            for (int x = rect[0]; x < rect[2]; ++x) ++cursor[y * cam.grid_x + x + 1];
    }
    for (int t = 0; t < num_tiles; ++t) {
        cursor[t + 1] += cursor[t];
        out.ranges[2 * t] = static_cast<int>(cursor[t]);
        out.ranges[2 * t + 1] = static_cast<int>(cursor[t + 1]);
    }
    // keys (depth bits << 32 | index): depths of visible Gaussians are > 0.2, so their bits sort like the
    // floats, and equal depths keep index order, as the reference's stable sort and the CUDA radix sort do.
    std::vector<uint64_t> keys(static_cast<size_t>(b.num_rendered));
    for (int i = 0; i < b.n; ++i) {
        if (b.tiles_touched[i] == 0) continue;
        int rect[4];
        rect_of(i, rect);
        const uint64_t key = (static_cast<uint64_t>(float_bits(b.depths[i])) << 32) | static_cast<uint32_t>(i);
        for (int y = rect[1]; y < rect[3]; ++y)
            for (int x = rect[0]; x < rect[2]; ++x) keys[cursor[y * cam.grid_x + x]++] = key;
    }
    parallel_for(num_tiles, threads, 4, [&](int64_t t) {
        const int start = out.ranges[2 * t], end = out.ranges[2 * t + 1];
        std::sort(keys.begin() + start, keys.begin() + end);
        const int tx = static_cast<int>(t % cam.grid_x), ty = static_cast<int>(t / cam.grid_x);
        for (int pos = start; pos < end; ++pos) {
            const int g = static_cast<int>(keys[pos] & 0xffffffffu);
            out.point_list[pos] = g;
            int rect[4];
            rect_of(g, rect);
            const int64_t first = g == 0 ? 0 : b.offsets[g - 1];
            out.pair_pos[first + (ty - rect[1]) * (rect[2] - rect[0]) + (tx - rect[0])] = pos;
        }
    });
}

// A tile's Gaussians, staged contiguously in list order: x, y, conic A, B, C, opacity, colour r, g, b, and
// the power below which the pair cannot reach alpha >= 1/255 (see staged_alpha), and the camera-space
// z (0 when p.depths is null).
constexpr int kStaged = 11;
// Safety margin of that bound, in units of power (a factor e on alpha): covers any rounding difference
// between the bound's arithmetic and gaussian_alpha's.
constexpr float kPowerCutMargin = 1.f;

inline void stage_tile(const RenderParams& p, int start, int count, std::vector<float>& s) {
    s.resize(static_cast<size_t>(count) * kStaged);
    for (int j = 0; j < count; ++j) {
        const int g = p.point_list[start + j];
        float* d = s.data() + static_cast<size_t>(j) * kStaged;
        d[0] = p.means2d[2 * g];
        d[1] = p.means2d[2 * g + 1];
        for (int k = 0; k < 3; ++k) d[2 + k] = p.conics[3 * g + k];
        d[5] = p.opacities[g];
        for (int k = 0; k < 3; ++k) d[6 + k] = p.colors[3 * g + k];
        // opacity * exp(power) >= 1/255 needs power >= log(1/255 / opacity); opacity <= 0: never
        d[9] = d[5] > 0.f ? logf(kAlphaMin / d[5]) - kPowerCutMargin : INFINITY;
        d[10] = p.depths ? p.depths[g] : 0.f;
    }
}

struct TileBox {
    int x0, y0, x1, y1;  // pixels [x0, x1) x [y0, y1) of the tile inside the image
};

inline TileBox tile_box(const Camera& cam, int64_t t) {
    const int tx = static_cast<int>(t % cam.grid_x), ty = static_cast<int>(t / cam.grid_x);
    return TileBox{tx * kBlockX, ty * kBlockY, std::min(cam.width, (tx + 1) * kBlockX),
                   std::min(cam.height, (ty + 1) * kBlockY)};
}

// The pixels of a tile row walked together, W at a time, in lockstep over the tile's Gaussians: each lane is
// its own pixel with its own state (the CUDA thread's loop, unchanged), and the lanes' independent dependency
// chains (transmittance, colour) overlap in the core instead of waiting on each other.  Every per-pixel sum
// keeps its order, so each pixel's results are bitwise those of one pixel at a time, for any W.
template <int W>
struct LaneGroup {
    LaneFW<W> px, py;  // the lanes' pixel centres
    LaneIW<W> inside;  // lanes inside the image (-1 / 0)
};

template <int W>
GSR_LANE LaneGroup<W> lane_group(int x0, int py, int x1) {
    const LaneIW<W> idx = lane_index<W>() + x0;
    return LaneGroup<W>{__builtin_convertvector(idx, LaneFW<W>), splat<LaneFW<W>>(static_cast<float>(py)), idx < x1};
}

// math.cuh's gaussian_alpha for the lanes m of group g and the staged Gaussian s, with the staged power cut
// first: lanes that cannot reach alpha >= 1/255 are rejected before the exponential, and a Gaussian that no
// lane can reach skips it altogether.  Returns the accepting lanes; dx, dy, G, alpha are meaningful there.
template <int W>
GSR_LANE LaneIW<W> staged_alpha(const float* s, const LaneGroup<W>& g, LaneIW<W> m, LaneFW<W>& dx, LaneFW<W>& dy,
                                LaneFW<W>& G, LaneFW<W>& alpha) {
    const LaneFW<W> power = gaussian_power(s[0], s[1], s + 2, g.px, g.py, dx, dy);
    m &= (power <= 0.f) & (power >= s[9]);
    return gaussian_alpha_of_power<LaneFW<W>>(m, power, s[5], G, alpha);
}

// Positions a lane group takes at once: their alphas are computed together before their steps, so that the
// independent exponentials overlap in the core instead of each waiting out its own latency.
constexpr int kBatch = 4;

// One tile of the forward render (tile t; staged is the thread's scratch), W pixels at a time.
template <int W>
GSR_LANE void render_forward_tile(const Camera& cam, const RenderParams& p, int64_t t, std::vector<float>& staged) {
    using F = LaneFW<W>;
    using I = LaneIW<W>;
    const int64_t hw = static_cast<int64_t>(cam.width) * cam.height;
    const int start = p.ranges[2 * t], n_items = p.ranges[2 * t + 1] - start;
    stage_tile(p, start, n_items, staged);
    const TileBox box = tile_box(cam, t);
    for (int py = box.y0; py < box.y1; ++py) {
        for (int x0 = box.x0; x0 < box.x1; x0 += W) {
            const LaneGroup<W> g = lane_group<W>(x0, py, box.x1);
            PixelFwd<F> st;
            pixel_forward_init(st);
            I live = g.inside;  // lanes not done
            for (int j0 = 0; j0 < n_items && any_lane(live); j0 += kBatch) {
                // a batch of positions: their alphas first (independent: their exponentials overlap), then
                // the steps in order; a lane done inside the batch takes no later step (m & live)
                const int kn = std::min(kBatch, n_items - j0);
                F G[kBatch], alpha[kBatch];
                I ms[kBatch];
                for (int k = 0; k < kn; ++k) {
                    F dx, dy;
                    ms[k] = staged_alpha<W>(staged.data() + static_cast<size_t>(j0 + k) * kStaged, g, live, dx, dy,
                                            G[k], alpha[k]);
                }
                for (int k = 0; k < kn; ++k) {
                    const I m = ms[k] & live;
                    if (!any_lane(m)) continue;
                    const float* s = staged.data() + static_cast<size_t>(j0 + k) * kStaged;
                    live &= ~m | pixel_forward_step(st, m, alpha[k], s + 6, s[10], j0 + k + 1);  // m minus the done
                }
            }
            const int lanes = std::min(W, box.x1 - x0);
            for (int l = 0; l < lanes; ++l) {
                const int64_t pix = static_cast<int64_t>(py) * cam.width + x0 + l;
                for (int c = 0; c < 3; ++c) p.image[c * hw + pix] = st.C[c][l] + st.T[l] * cam.bg[c];
                p.final_T[pix] = st.T[l];
                p.n_contrib[pix] = st.last[l];
                if (p.depth) p.depth[pix] = st.D[l];
            }
        }
    }
}

// The backward's lane sums are a tile row wide (kBlockX lanes, one per pixel column) whatever the tile loops'
// width: a group adds its lanes at its columns.  Each column's sum runs over the tile's rows in order, so the
// gradients are bitwise the same for every width (and instruction set), as the forward's are.
constexpr int kSumLanes = kBlockX;

template <class V>
GSR_LANE void add_to_sums(float* sum, const V& v) {
    store_lanes(sum, load_lanes<V>(sum) + v);
}

// One tile of the backward render, W pixels at a time: its rows of partial (see render_backward).  sums is
// the thread's scratch: per list position and gradient value, kSumLanes lane-wise sums over the tile's pixels
// (pixel x adds into lane x % 16, in row order); each row of partial is then the sum of those 16 lanes, in
// lane order.  A fixed order that depends neither on the threads nor on the instruction set.
template <int W>
GSR_LANE void render_backward_tile(const Camera& cam, const RenderParams& p, int64_t t, float* partial,
                                   std::vector<float>& staged, std::vector<float>& sums) {
    using F = LaneFW<W>;
    using I = LaneIW<W>;
    static_assert(kSumLanes % W == 0, "whole groups in a tile row");
    const int64_t hw = static_cast<int64_t>(cam.width) * cam.height;
    const int start = p.ranges[2 * t], end = p.ranges[2 * t + 1];
    float* rows = partial + static_cast<int64_t>(start) * kGradValues;
    std::memset(rows, 0, sizeof(float) * static_cast<size_t>(end - start) * kGradValues);
    const TileBox box = tile_box(cam, t);
    int count = 0;  // list positions [0, count) are used by some pixel of the tile
    for (int py = box.y0; py < box.y1; ++py)
        for (int px = box.x0; px < box.x1; ++px)
            count = std::max(count, p.n_contrib[static_cast<int64_t>(py) * cam.width + px]);
    count = std::min(count, end - start);
    if (count == 0) return;
    stage_tile(p, start, count, staged);
    sums.assign(static_cast<size_t>(count) * kGradValues * kSumLanes, 0.f);
    for (int py = box.y0; py < box.y1; ++py) {
        for (int x0 = box.x0; x0 < box.x1; x0 += W) {
            const LaneGroup<W> grp = lane_group<W>(x0, py, box.x1);
            const int lanes = std::min(W, box.x1 - x0);
            I last = I{};
            F T_final = splat<F>(1.f), dpix[3] = {F{}, F{}, F{}}, bg_dot = F{};
            int top = 0;  // the lanes' largest last
            for (int l = 0; l < lanes; ++l) {
                const int64_t pix = static_cast<int64_t>(py) * cam.width + x0 + l;
                last[l] = std::min(p.n_contrib[pix], count);
                top = std::max(top, last[l]);
                T_final[l] = p.final_T[pix];
                for (int c = 0; c < 3; ++c) {
                    dpix[c][l] = p.grad_image[c * hw + pix];
                    bg_dot[l] += cam.bg[c] * dpix[c][l];
                }
                if (p.grad_final_T) bg_dot[l] += p.grad_final_T[pix];
            }
            PixelBack<F> st;
            pixel_back_init(st, T_final);
            for (int j1 = top - 1; j1 >= 0; j1 -= kBatch) {
                // a batch of positions j1, j1 - 1, ...: their alphas first, then the steps in order
                const int kn = std::min(kBatch, j1 + 1);
                F dx[kBatch], dy[kBatch], G[kBatch], alpha[kBatch];
                I ms[kBatch];
                for (int k = 0; k < kn; ++k)
                    ms[k] = staged_alpha<W>(staged.data() + static_cast<size_t>(j1 - k) * kStaged, grp,
                                            (I{} + (j1 - k)) < last, dx[k], dy[k], G[k], alpha[k]);
                for (int k = 0; k < kn; ++k) {
                    const I m = ms[k];
                    if (!any_lane(m)) continue;
                    const int j = j1 - k;
                    const float* s = staged.data() + static_cast<size_t>(j) * kStaged;
                    F g[kGradValues];
                    render_backward_step(st, m, dpix, bg_dot, T_final, dx[k], dy[k], s + 2, s[5], G[k], alpha[k],
                                         s + 6, g);
                    float* sum = sums.data() + static_cast<size_t>(j) * kGradValues * kSumLanes + (x0 - box.x0);
                    for (int v = 0; v < kGradValues; ++v) add_to_sums(sum + v * kSumLanes, m ? g[v] : F{});
                }
            }
        }
    }
    for (int j = 0; j < count; ++j)
        for (int v = 0; v < kGradValues; ++v) {
            const float* sum = sums.data() + (static_cast<size_t>(j) * kGradValues + v) * kSumLanes;
            float r = sum[0];
            for (int l = 1; l < kSumLanes; ++l) r += sum[l];
            rows[static_cast<int64_t>(j) * kGradValues + v] = r;
        }
}

// image, final_T, n_contrib and (when not null) depth of p are written for every pixel.
inline void render_forward(const Camera& cam, const RenderParams& p, int threads) {
    parallel_for(static_cast<int64_t>(cam.grid_x) * cam.grid_y, threads, 1, [&](int64_t t) {
        thread_local std::vector<float> staged;
        render_forward_tile<kTileLanes>(cam, p, t, staged);
    });
}

// Backward render.  partial [M * kGradValues] is scratch (written here, no need to zero it); the four gradient
// outputs of p (grad_means2d, grad_conics, grad_opacities, grad_colors) are written for every Gaussian.
// b supplies n, offsets; out supplies pair_pos (from bin()).
inline void render_backward(const Camera& cam, const RenderParams& p, const BinningParams& b,
                            const BinOutputs& out, float* partial, int threads) {
    parallel_for(static_cast<int64_t>(cam.grid_x) * cam.grid_y, threads, 1, [&](int64_t t) {
        thread_local std::vector<float> staged;
        thread_local std::vector<float> sums;
        render_backward_tile<kTileLanes>(cam, p, t, partial, staged, sums);
    });
    // one flush per (tile, Gaussian), in tile order
    parallel_for(b.n, threads, 1024, [&](int64_t i) {
        float s[kGradValues] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        const int64_t first = i == 0 ? 0 : b.offsets[i - 1];
        for (int64_t k = first; k < b.offsets[i]; ++k) {
            const float* row = partial + static_cast<int64_t>(out.pair_pos[k]) * kGradValues;
            for (int v = 0; v < kGradValues; ++v) s[v] += row[v];
        }
        p.grad_means2d[2 * i] = s[0];
        p.grad_means2d[2 * i + 1] = s[1];
        for (int v = 0; v < 3; ++v) p.grad_conics[3 * i + v] = s[2 + v];
        p.grad_opacities[i] = s[5];
        for (int v = 0; v < 3; ++v) p.grad_colors[3 * i + v] = s[6 + v];
    });
}

}  // namespace gsr::cpu
