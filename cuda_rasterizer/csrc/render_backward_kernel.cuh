// The backward render kernel, templated on the accumulation policy, and the lane-count kernel (launched by
// render_backward.cu).  Kept in a header, free of launch syntax, so that tests/csrc can also run them on
// the CPU under a thread-per-lane emulation of the CUDA execution model.
#pragma once

#include "atomics.cuh"
#include "math.cuh"
#include "tile_pixel.cuh"

namespace gsr {

__device__ __forceinline__ int warp_max(int v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

// __launch_bounds__'s minimum blocks of 256 per SM.  sm_90: 5 for every policy, which caps it at 48
// registers without spills (62.5% occupancy instead of 37.5-50%, for 5-18 more instructions on the loop's
// paths; docs/BENCHMARKS.md has the A/B).  Elsewhere 5 for baseline and floor only (the reducing policies
// spill under the cap on sm_89), 1 for the others.  -DGSR_BACKWARD_MIN_BLOCKS=N sets N for every policy
// (gs-bench --static --static-flags=-DGSR_BACKWARD_MIN_BLOCKS=1 for the uncapped build).
template <int Mode>
constexpr int backward_min_blocks() {
#if defined(GSR_BACKWARD_MIN_BLOCKS)
    return GSR_BACKWARD_MIN_BLOCKS;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
    return 5;
#else
    return (Mode == kBaseline || Mode == kFloor) ? 5 : 1;
#endif
}

// static-report: the loop starts at the warp's first useful position (gs_trainer/bench/static.py reads
// this line: positions at or past a warp's last contributor are never walked, so they cost it nothing).
template <int Mode>
__global__ void __launch_bounds__(kBlockSize, backward_min_blocks<Mode>())
render_backward_kernel(Camera cam, RenderParams p, int threshold) {
    using Acc = Accumulator<Mode>;
    const TilePixel tp = tile_pixel(cam, p);  // plain variables, not structured bindings: walk() captures them
    const int t = tp.t, px = tp.px, py = tp.py, start = tp.start, end = tp.end;
    const bool inside = tp.inside;
    const float pxf = tp.pxf, pyf = tp.pyf;

    __shared__ int s_id[kBlockSize];
    __shared__ float2 s_xy[kBlockSize];
    __shared__ float4 s_con_o[kBlockSize];
    __shared__ float s_col[3 * kBlockSize];
    __shared__ float s_slots[Mode == kTile ? Accumulator<kTile>::kSharedFloats : 1];
    __shared__ int s_tags[Mode == kTile ? Accumulator<kTile>::kSharedTags : 1];
    __shared__ int s_max_contrib;

    float T_final = 1.f, bg_dot = 0.f;
    float dpix[3] = {0.f, 0.f, 0.f};
    int last = 0;
    if (inside) {
        const int pix = py * cam.width + px;
        const int hw = cam.width * cam.height;
        T_final = p.final_T[pix];
        last = p.n_contrib[pix];
        for (int c = 0; c < 3; ++c) {
            dpix[c] = p.grad_image[c * hw + pix];
            bg_dot += cam.bg[c] * dpix[c];
        }
        if (p.grad_final_T) bg_dot += p.grad_final_T[pix];
    }
    if (t == 0) s_max_contrib = 0;
    if constexpr (Mode == kTile) {
        if (t < Accumulator<kTile>::kSharedTags) s_tags[t] = -1;  // no slot holds a chunk yet
    }
    __syncthreads();
    if (last > 0) atomicMax(&s_max_contrib, last);
    __syncthreads();
    const int count = min(s_max_contrib, end - start);  // list positions [0, count) are walked
    const int warp_last = warp_max(last);                // no lane of this warp uses positions >= this

    // The sinks and the accumulator are built here, in the kernel, from the params (aggregate
    // initialisation, no helper returning the accumulator by value: CUDA 13.0's nvcc turned the global
    // grad_colors atomics of such a returned tile accumulator into shared-memory atomics).
    const GradSinks sinks{p.grad_means2d, p.grad_conics, p.grad_opacities, p.grad_colors, p.dummy,
                          p.floor_store_above};
    const int lane = t & 31;
    Acc acc;
    if constexpr (Mode == kBaseline) acc = Acc{sinks};
    else if constexpr (Mode == kWarp) acc = Acc{lane_sink(sinks, lane), lane};
    else if constexpr (Mode == kDistwar) acc = Acc{sinks, lane_sink(sinks, lane), lane, threshold};
    else if constexpr (Mode == kTile) acc = Acc{sinks, lane, t >> 5, threshold};
    else acc = Acc{sinks, t};
    PixelBackState st;
    pixel_back_init(st, T_final);

    for (int b = 0; b < count; b += kBlockSize) {
        const int batch_n = min(kBlockSize, count - b);
        __syncthreads();  // the previous batch is consumed (and flushed) by every thread
        if (t < batch_n) {
            const int g = p.point_list[start + count - 1 - b - t];
            s_id[t] = g;
            s_xy[t] = make_float2(p.means2d[2 * g], p.means2d[2 * g + 1]);
            s_con_o[t] = make_float4(p.conics[3 * g], p.conics[3 * g + 1], p.conics[3 * g + 2], p.opacities[g]);
            for (int c = 0; c < 3; ++c) s_col[3 * t + c] = p.colors[3 * g + c];
        }
        __syncthreads();
        // position count - 1 - b - j is below warp_last iff j >= count - b - warp_last (warp-uniform)
        const int j_first = max(0, count - b - warp_last);
        auto walk = [&](int j_begin, int j_end, int tag) {
            for (int j = j_begin; j < j_end; ++j) {
                const int pos = count - 1 - b - j;  // position in the tile's list
                float g[kGradValues];               // valid where contrib (atomics.cuh)
                bool contrib = false;
                if (inside && pos < last) {
                    const float4 co = s_con_o[j];
                    const float conic[3] = {co.x, co.y, co.z};
                    float dx, dy, G, alpha;
                    if (gaussian_alpha(s_xy[j].x, s_xy[j].y, conic, co.w, pxf, pyf, dx, dy, G, alpha)) {
                        contrib = true;
                        render_backward_step(st, dpix, bg_dot, T_final, dx, dy, conic, co.w, G, alpha,
                                             s_col + 3 * j, g);
                    }
                }
                acc.add(j, s_id[j], contrib, g, tag, s_slots, s_tags);  // all 32 lanes arrive here together
            }
        };
        if constexpr (Mode == kTile) {
            for (int c0 = 0; c0 < batch_n; c0 += kTileChunk) {
                const int c1 = min(batch_n, c0 + kTileChunk);
                const int tag = b + c0;  // unique per chunk of the kernel
                walk(max(c0, j_first), c1, tag);
                __syncthreads();  // every warp's slots of the chunk are written
                tile_flush(sinks, t, c0, c1, tag, s_id, s_slots, s_tags);
                __syncthreads();  // read before the next chunk overwrites them
            }
        } else {
            walk(j_first, batch_n, 0);
        }
    }
}

// Profiling: for each warp with an in-image pixel and each Gaussian of the tile's full list, the number
// of the warp's pixels that composite it (power <= 0, alpha >= 1/255, position < n_contrib).
__global__ void __launch_bounds__(kBlockSize) lane_histogram_kernel(Camera cam, RenderParams p) {
    const auto [tile, t, px, py, inside, pxf, pyf, start, end] = tile_pixel(cam, p);
    const int n_items = end - start;

    __shared__ float2 s_xy[kBlockSize];
    __shared__ float4 s_con_o[kBlockSize];
    __shared__ unsigned long long s_hist[33];
    if (t < 33) s_hist[t] = 0ull;
    const int last = inside ? p.n_contrib[py * cam.width + px] : 0;
    const bool warp_counts = __any_sync(kFullMask, inside);

    for (int b = 0; b < n_items; b += kBlockSize) {
        const int batch_n = min(kBlockSize, n_items - b);
        __syncthreads();
        if (t < batch_n) {
            const int g = p.point_list[start + b + t];
            s_xy[t] = make_float2(p.means2d[2 * g], p.means2d[2 * g + 1]);
            s_con_o[t] = make_float4(p.conics[3 * g], p.conics[3 * g + 1], p.conics[3 * g + 2], p.opacities[g]);
        }
        __syncthreads();
        for (int j = 0; j < batch_n; ++j) {
            bool contrib = false;
            if (inside && b + j < last) {
                const float4 co = s_con_o[j];
                const float conic[3] = {co.x, co.y, co.z};
                float dx, dy, G, alpha;
                contrib = gaussian_alpha(s_xy[j].x, s_xy[j].y, conic, co.w, pxf, pyf, dx, dy, G, alpha);
            }
            const unsigned mask = __ballot_sync(kFullMask, contrib);
            if (warp_counts && (t & 31) == 0) atomicAdd(&s_hist[__popc(mask)], 1ull);
        }
    }
    __syncthreads();
    if (t < 33 && s_hist[t]) atomicAdd(p.histogram + t, s_hist[t]);
}

}  // namespace gsr
