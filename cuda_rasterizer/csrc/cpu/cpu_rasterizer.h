// The CPU backend's stages: host loops around math.cuh's functions (preprocess_one, preprocess_backward_one,
// tile_rect) and, for the per-pixel loops, lane forms of gaussian_alpha, pixel_forward_step and
// render_backward_step that run 8 pixels at once.  Torch-free: raw pointers and the params structs of
// rasterizer.h; the torch glue is cpu_bindings.cpp.
//
// Structure (the CUDA pipeline's, with the loops a CPU wants):
//   preprocess            parallel over Gaussians
//   bin                   count pairs per tile, fill the tiles' lists, sort each tile's list by
//                         (depth bits, index) in parallel over tiles; record where each (Gaussian, tile) pair
//                         landed (pair_pos), for the backward's reduction
//   render forward        parallel over tiles; a tile stages its Gaussians contiguously, then each group of 8
//                         pixels of a tile row walks them front to back in lockstep (each lane the CUDA
//                         thread's loop; the group stops when all 8 are done)
//   render backward       parallel over tiles; each 8-pixel group walks back to front from its lanes' largest
//                         n_contrib, and each accepting lane adds its 9 gradient values, in pixel order, into the
//                         tile's partial row of that Gaussian: row = list position, owned by this tile alone, so
//                         no lock and no atomic.  Then, parallel over Gaussians, each Gaussian sums its rows in
//                         tile order (the CPU form of the CUDA `tile` policy: one flush per (tile, Gaussian)).
//   preprocess backward   parallel over Gaussians
//
// The lane forms (gaussian_alpha_lanes, pixel_forward_step_lanes, render_backward_step_lanes, next to the
// loops below) do each lane's arithmetic exactly as the math.cuh function does, in the same order, with one
// exception: expf is exp_lanes, a polynomial within 2 ulp of it (1 ulp measured).  Keep them in step with
// math.cuh: tests/test_cpu_lanes.py checks them bitwise against the scalar steps, and the tests compare the
// whole backend with the PyTorch reference (images 1e-5, gradients 1e-4 relative).
//
// Determinism: every sum has a fixed order (pixel order within a tile, tile order across tiles) that does not
// depend on which thread ran which tile, so the results are bitwise the same for any thread count.
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

#include "../math.cuh"

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
// the power below which the pair cannot reach alpha >= 1/255 (see gaussian_alpha_lanes), and the camera-space
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

// Pixels of a tile row walked together, in lockstep over the tile's Gaussians: each lane is its own pixel
// with its own state (the CUDA thread's loop, unchanged), and the lanes' independent dependency chains
// (transmittance, colour) overlap in the core instead of waiting on each other.  Every per-pixel sum keeps
// its order, so the results are bitwise those of one pixel at a time.
constexpr int kLanes = 8;

// The per-tile render loops are compiled twice, for AVX2 (8 lanes in one register) and for the build's
// baseline (two SSE registers), and the loader picks the AVX2 one where the CPU has it (GCC/Clang function
// multi-versioning; Linux x86-64).  Without FMA contraction the two give bitwise the same results; the rest
// of the extension (preprocess, libm calls) stays baseline code.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define GSR_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GSR_CPU_CLONES inline
#endif
static_assert(kBlockX % kLanes == 0, "a tile row splits into whole lane groups");

// The lanes' floats and ints as GCC/Clang vectors (one AVX register, or two SSE ones; no intrinsics, so any
// x86 or ARM target compiles them).  -ffp-contract=off keeps every lane's arithmetic the scalar one.
typedef float LaneF __attribute__((vector_size(4 * kLanes)));
typedef int LaneI __attribute__((vector_size(4 * kLanes)));

// The lanes' bit mask of a lane-wise condition.
inline unsigned lane_bits(const LaneI& c) {
    unsigned m = 0u;
    for (int l = 0; l < kLanes; ++l) m |= static_cast<unsigned>(c[l] & 1) << l;
    return m;
}

// All lanes of bit mask m as a lane-wise condition (-1 / 0).
inline LaneI lanes_of(unsigned m) {
    LaneI c;
    for (int l = 0; l < kLanes; ++l) c[l] = (m >> l & 1u) ? -1 : 0;
    return c;
}


// expf for each lane, to within 2 ulp of the libm expf that gaussian_alpha calls (Cody-Waite reduction to
// [-ln2/2, ln2/2], then the classic degree-6 minimax polynomial, then 2^n through the exponent bits).  Inputs
// below -87.3 give 2^-126 * p (they only meet alpha < 1/255 and are rejected); NaN gives NaN.
inline LaneF exp_lanes(LaneF x) {
    const LaneI nan = x != x;
    x = x < -87.33654f ? LaneF{} - 87.33654f : x;
    x = x > 88.0f ? LaneF{} + 88.0f : x;
    const LaneF fx = x * 1.44269504088896341f + 0.5f;
    LaneF n = __builtin_convertvector(__builtin_convertvector(fx, LaneI), LaneF);
    n = n > fx ? n - 1.f : n;  // floor
    const LaneF r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    const LaneF z = r * r;
    LaneF y = 1.9875691500e-4f * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.f;
    const LaneI bits = (__builtin_convertvector(n, LaneI) + 127) << 23;
    LaneF pow2;
    std::memcpy(&pow2, &bits, sizeof pow2);
    const LaneF out = y * pow2;
    return nan ? x : out;
}

// The lane form of math.cuh's gaussian_alpha: the same power, the same tests (power <= 0, opacity * G >=
// 1/255, alpha = min(0.99, opacity * G)), in the same order of operations, for the kLanes pixels (px[l], py)
// and staged Gaussian s; only expf is exp_lanes.  Returns the accepting lanes as a bit mask; dx, dy, G, alpha
// are meaningful in those lanes.  Lanes that cannot reach 1/255 (the staged power cut) are rejected first,
// and a Gaussian no lane can reach skips the exponential altogether.
inline unsigned gaussian_alpha_lanes(const float* s, const LaneF& px, float py, LaneF& dx, LaneF& dy, LaneF& G,
                                     LaneF& alpha) {
    dx = s[0] - px;
    dy = LaneF{} + (s[1] - py);
    const LaneF power = -0.5f * (s[2] * dx * dx + s[4] * dy * dy) - s[3] * dx * dy;
    LaneI ok = (power <= 0.f) & (power >= s[9]);
    if (lane_bits(ok) == 0u) return 0u;
    G = exp_lanes(power);
    const LaneF raw = s[5] * G;
    ok &= raw >= kAlphaMin;
    alpha = raw < kAlphaMax ? raw : LaneF{} + kAlphaMax;
    return lane_bits(ok);
}

// math.cuh's PixelFwdState for kLanes pixels, and the lane forms of pixel_forward_init / pixel_forward_step:
// the same arithmetic in the same order per lane (so each lane's colour, T and last are bitwise the scalar
// step's), applied to the lanes of m.  Returns the lanes of m that are done (their step would take T below
// kTMin: not composited, as pixel_forward_step returning false).
struct PixelFwdLanes {
    LaneF T, C[3], D;
    LaneI last;
};

inline void pixel_forward_init_lanes(PixelFwdLanes& st) {
    st.T = LaneF{} + 1.f;
    for (int c = 0; c < 3; ++c) st.C[c] = LaneF{};
    st.D = LaneF{};
    st.last = LaneI{};
}

// (the lane form of pixel_forward_step_depth: also D += (alpha * T) * z, the staged Gaussian's z)
inline unsigned pixel_forward_step_lanes(PixelFwdLanes& st, unsigned m, const LaneF& alpha, const float color[3],
                                         float z, int position) {
    const LaneF test_T = st.T * (1.f - alpha);
    const LaneI stop = test_T < kTMin;
    const unsigned done = lane_bits(stop) & m;
    const LaneI step = lanes_of(m & ~done);
    for (int c = 0; c < 3; ++c) st.C[c] = step ? st.C[c] + color[c] * alpha * st.T : st.C[c];
    st.D = step ? st.D + alpha * st.T * z : st.D;
    st.T = step ? test_T : st.T;
    st.last = step ? LaneI{} + position : st.last;
    return done;
}

// math.cuh's PixelBackState for kLanes pixels, and the lane forms of pixel_back_init / render_backward_step:
// the same arithmetic in the same order per lane, so each lane's state and its 9 values are bitwise the
// scalar step's.  The state advances in the lanes of m only; out[v][l] is meaningful in those lanes.
struct PixelBackLanes {
    LaneF T, accum[3], last_alpha, last_color[3];
};

inline void pixel_back_init_lanes(PixelBackLanes& st, const LaneF& T_final) {
    st.T = T_final;
    st.last_alpha = LaneF{};
    for (int c = 0; c < 3; ++c) st.accum[c] = st.last_color[c] = LaneF{};
}

inline void render_backward_step_lanes(PixelBackLanes& st, unsigned m, const LaneF dpix[3], const LaneF& bg_dot,
                                       const LaneF& T_final, const LaneF& dx, const LaneF& dy, const float conic[3],
                                       float opacity, const LaneF& G, const LaneF& alpha, const float color[3],
                                       float out[kGradValues][kLanes]) {
    const LaneI on = lanes_of(m);
    const LaneF inv_one_minus = 1.f / (1.f - alpha);  // as render_backward_step: one reciprocal
    const LaneF T = st.T * inv_one_minus;
    st.T = on ? T : st.T;
    const LaneF w = alpha * T;
    LaneF g_alpha = LaneF{};
    for (int c = 0; c < 3; ++c) {
        const LaneF accum = st.last_alpha * st.last_color[c] + (1.f - st.last_alpha) * st.accum[c];
        st.accum[c] = on ? accum : st.accum[c];
        st.last_color[c] = on ? LaneF{} + color[c] : st.last_color[c];
        g_alpha += (color[c] - accum) * dpix[c];
        const LaneF o = w * dpix[c];
        std::memcpy(out[6 + c], &o, sizeof o);
    }
    g_alpha *= T;
    st.last_alpha = on ? alpha : st.last_alpha;
    g_alpha += (-T_final * inv_one_minus) * bg_dot;

    const LaneF g_G = opacity * g_alpha;
    const LaneF gdx = G * dx, gdy = G * dy;
    const LaneF o[6] = {g_G * (-gdx * conic[0] - gdy * conic[1]), g_G * (-gdy * conic[2] - gdx * conic[1]),
                        -0.5f * gdx * dx * g_G, -gdx * dy * g_G, -0.5f * gdy * dy * g_G, G * g_alpha};
    for (int v = 0; v < 6; ++v) std::memcpy(out[v], &o[v], sizeof o[v]);
}

// The lanes whose pixel composited list position j or a later one (j < last), as a bit mask.
inline unsigned active_lanes(const int last[kLanes], int j) {
    unsigned m = 0u;
    for (int l = 0; l < kLanes; ++l) m |= static_cast<unsigned>(j < last[l]) << l;
    return m;
}

// One tile of the forward render (tile t; staged is the thread's scratch).
GSR_CPU_CLONES void render_forward_tile(const Camera& cam, const RenderParams& p, int64_t t,
                                        std::vector<float>& staged) {
    const int64_t hw = static_cast<int64_t>(cam.width) * cam.height;
    const int start = p.ranges[2 * t], n_items = p.ranges[2 * t + 1] - start;
    stage_tile(p, start, n_items, staged);
    const TileBox box = tile_box(cam, t);
    for (int py = box.y0; py < box.y1; ++py) {
        const float pyf = static_cast<float>(py);
        for (int x0 = box.x0; x0 < box.x1; x0 += kLanes) {
            const int lanes = std::min(kLanes, box.x1 - x0);
            LaneF pxv;
            for (int l = 0; l < kLanes; ++l) pxv[l] = static_cast<float>(x0 + l);
            PixelFwdLanes st;
            pixel_forward_init_lanes(st);
            unsigned live = (1u << lanes) - 1u;  // lanes not done
            for (int j = 0; j < n_items && live != 0u; ++j) {
                const float* s = staged.data() + static_cast<size_t>(j) * kStaged;
                LaneF dx, dy, G, alpha;
                const unsigned m = gaussian_alpha_lanes(s, pxv, pyf, dx, dy, G, alpha) & live;
                if (m != 0u) live &= ~pixel_forward_step_lanes(st, m, alpha, s + 6, s[10], j + 1);
            }
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

// image, final_T, n_contrib and (when not null) depth of p are written for every pixel.
inline void render_forward(const Camera& cam, const RenderParams& p, int threads) {
    parallel_for(static_cast<int64_t>(cam.grid_x) * cam.grid_y, threads, 1, [&](int64_t t) {
        thread_local std::vector<float> staged;
        render_forward_tile(cam, p, t, staged);
    });
}

// One tile of the backward render: its rows of partial (see render_backward).
GSR_CPU_CLONES void render_backward_tile(const Camera& cam, const RenderParams& p, int64_t t, float* partial,
                                         std::vector<float>& staged) {
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
    for (int py = box.y0; py < box.y1; ++py) {
        const float pyf = static_cast<float>(py);
        for (int x0 = box.x0; x0 < box.x1; x0 += kLanes) {
            const int lanes = std::min(kLanes, box.x1 - x0);
            int last[kLanes];
            LaneF pxv, T_final, dpix[3], bg_dot = LaneF{};
            int top = 0;  // the lanes' largest last
            for (int l = 0; l < kLanes; ++l) {
                const int64_t pix = static_cast<int64_t>(py) * cam.width + x0 + l;
                last[l] = l < lanes ? std::min(p.n_contrib[pix], count) : 0;
                top = std::max(top, last[l]);
                pxv[l] = static_cast<float>(x0 + l);
                T_final[l] = l < lanes ? p.final_T[pix] : 1.f;
                for (int c = 0; c < 3; ++c) {
                    dpix[c][l] = l < lanes ? p.grad_image[c * hw + pix] : 0.f;
                    bg_dot[l] += cam.bg[c] * dpix[c][l];
                }
                if (p.grad_final_T && l < lanes) bg_dot[l] += p.grad_final_T[pix];
            }
            PixelBackLanes st;
            pixel_back_init_lanes(st, T_final);
            for (int j = top - 1; j >= 0; --j) {
                const float* s = staged.data() + static_cast<size_t>(j) * kStaged;
                LaneF dx, dy, G, alpha;
                const unsigned m = gaussian_alpha_lanes(s, pxv, pyf, dx, dy, G, alpha) & active_lanes(last, j);
                if (m == 0u) continue;
                float g[kGradValues][kLanes];
                render_backward_step_lanes(st, m, dpix, bg_dot, T_final, dx, dy, s + 2, s[5], G, alpha, s + 6, g);
                // lane order = pixel order: the row's sums keep the order of one pixel at a time
                float* row = rows + static_cast<int64_t>(j) * kGradValues;
                for (unsigned k = m; k != 0u; k &= k - 1u) {
                    const int l = __builtin_ctz(k);
                    for (int v = 0; v < kGradValues; ++v) row[v] += g[v][l];
                }
            }
        }
    }
}

// Backward render.  partial [M * kGradValues] is scratch (written here, no need to zero it); the four gradient
// outputs of p (grad_means2d, grad_conics, grad_opacities, grad_colors) are written for every Gaussian.
// b supplies n, offsets; out supplies pair_pos (from bin()).
inline void render_backward(const Camera& cam, const RenderParams& p, const BinningParams& b,
                            const BinOutputs& out, float* partial, int threads) {
    parallel_for(static_cast<int64_t>(cam.grid_x) * cam.grid_y, threads, 1, [&](int64_t t) {
        thread_local std::vector<float> staged;
        render_backward_tile(cam, p, t, partial, staged);
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
