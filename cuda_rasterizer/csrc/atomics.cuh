// Gradient-accumulation policies of the backward render kernel, selected at run time and passed to the
// kernel as a template parameter.
//
// The kernel calls Accumulator<Mode>::add(j, gid, contrib, g, ...) once per (pixel thread, Gaussian j of
// the shared batch), with g the 9 gradient values, valid only where contrib is true (g is not zeroed for
// the other lanes: a policy that sums over the warp selects 0 for them, on its reduce path only).
// Contract: every one of the 32 lanes of a warp makes the same sequence of add() calls (pixels past the
// image edge, pixels already past their last contributor and non-contributing pairs all call with
// contrib = false), so the full-mask warp intrinsics below see all 32 lanes.
//
//   kBaseline  every contributing lane does its own 9 global atomicAdds (the original rasterizer).
//   kWarp      ballot first: no lane contributes, nothing to do; otherwise a reduce-scatter over the warp
//              (12 shuffles, reduce_scatter9) leaves the sum of value L in lane L < 9, and lanes 0..8 each
//              issue one atomic (one instruction for the warp instead of 9 serial ones from a single lane).
//   kDistwar   DISTWAR: count the contributing lanes (ballot, popc); none: skip; at least `threshold`:
//              reduce-scatter, then lanes 0..8 issue one atomic each; fewer: the contributing lanes issue
//              their own atomics (served by L2).
//   kTile      distwar's choice per warp, but a reducing warp does not issue global atomics: lanes 0..8
//              store its 9 sums, with plain stores, into the warp's own shared slot for that Gaussian (no
//              shared atomics, so no compare-and-swap loops), and after every chunk of kTileChunk Gaussians
//              the block sums the 8 warps' slots and issues one global atomic per (Gaussian, tile, value)
//              that any warp reduced.  Below the threshold the contributing lanes add to global memory as
//              distwar does.
//   kFloor     no atomics and, in measurement, no stores: the 9 values are folded into one sum, stored
//              (per thread, to a dummy slot) only when |sum| > sinks.floor_store_above, a run-time value
//              that the glue sets to +inf (never true, not even for NaN).  The compiler cannot know it,
//              so the gradient math stays; no store traffic inflates the floor (results wrong; the
//              benchmark's lower bound; never reachable from rasterize_gaussians).
//
// Every policy sums the same float terms; only the order of the sums differs.
#pragma once

#include "rasterizer.h"

namespace gsr {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = kBlockSize / 32;
constexpr int kTileChunk = 32;  // tile: Gaussians per shared-slot round (8 warps x 32 x 9 floats = 9 KiB)

struct GradSinks {
    float* means2d;    // [N, 2]
    float* conics;     // [N, 3]
    float* opacities;  // [N]
    float* colors;     // [N, 3]
    float* dummy;      // [kBlockSize * kGradValues], kFloor only
    float floor_store_above;  // kFloor: store to dummy only when |sum of the 9| > this (+inf: never)
};

// Where gradient value k (0..8, the order of global_add9) of every Gaussian lives: sink(k) + stride(k) * gid.
// The reducing policies compute it once per thread (lane k), not per step.
struct LaneSink {
    float* base;  // lanes 9..31: colors (never used)
    int stride;
};

__device__ __forceinline__ LaneSink lane_sink(const GradSinks& s, int k) {
    if (k < 2) return LaneSink{s.means2d + k, 2};
    if (k < 5) return LaneSink{s.conics + (k - 2), 3};
    if (k == 5) return LaneSink{s.opacities, 1};
    return LaneSink{s.colors + (k < kGradValues ? k - 6 : 0), 3};  // lanes 9..31: never used
}

__device__ __forceinline__ void global_add9(const GradSinks& s, int gid, const float* g) {
    atomicAdd(s.means2d + 2 * gid, g[0]);
    atomicAdd(s.means2d + 2 * gid + 1, g[1]);
    atomicAdd(s.conics + 3 * gid, g[2]);
    atomicAdd(s.conics + 3 * gid + 1, g[3]);
    atomicAdd(s.conics + 3 * gid + 2, g[4]);
    atomicAdd(s.opacities + gid, g[5]);
    atomicAdd(s.colors + 3 * gid, g[6]);
    atomicAdd(s.colors + 3 * gid + 1, g[7]);
    atomicAdd(s.colors + 3 * gid + 2, g[8]);
}

// One exchange of a reduce-scatter step: the lane keeps `lo` when `hi_side` is false and `hi` otherwise,
// sends the other one to lane ^ offset and adds what that lane sent (its copy of the value kept here).
__device__ __forceinline__ float exchange(float lo, float hi, bool hi_side, int offset) {
    const float send = hi_side ? lo : hi;
    const float keep = hi_side ? hi : lo;
    return keep + __shfl_xor_sync(kFullMask, send, offset);
}

// Reduce-scatter of the 9 values over the 32 lanes (v: this lane's values, 0 for a non-contributing lane).
// Returns, in lane L < 9, the warp's sum of value L; other lanes get partial sums, to be ignored.  Recursive
// halving over lane bits 0..4: 5 + 3 + 2 + 1 + 1 = 12 shuffles (a butterfly of all 9 values costs 45).
//   bit 0: even lanes keep values 0,2,4,6,8, odd lanes 1,3,5,7 (value 8's pair sum is formed by both);
//   bit 1: slots (0,2 | 1,3) split again, slot 4 (value 8) summed;  bit 2: likewise;  bit 3: lanes with
//   bit 3 set keep value 8 (the only value of a lane 8 + 16m), the others their value 0..7;  bit 4: sum.
// All 32 lanes must call it (warp-uniform condition).
__device__ __forceinline__ float reduce_scatter9(const float (&v)[kGradValues], int lane) {
    const bool b0 = lane & 1, b1 = lane & 2, b2 = lane & 4, b3 = lane & 8;
    // bit 0: pairs (0,1) (2,3) (4,5) (6,7), then value 8
    const float a0 = exchange(v[0], v[1], b0, 1);
    const float a1 = exchange(v[2], v[3], b0, 1);
    const float a2 = exchange(v[4], v[5], b0, 1);
    const float a3 = exchange(v[6], v[7], b0, 1);
    const float a4 = v[8] + __shfl_xor_sync(kFullMask, v[8], 1);
    // bit 1: slots (a0, a1) (a2, a3), then a4
    const float c0 = exchange(a0, a1, b1, 2);
    const float c1 = exchange(a2, a3, b1, 2);
    const float c2 = a4 + __shfl_xor_sync(kFullMask, a4, 2);
    // bit 2: slots (c0, c1), then c2
    const float d0 = exchange(c0, c1, b2, 4);
    const float d1 = c2 + __shfl_xor_sync(kFullMask, c2, 4);
    // bit 3: value L & 7 (bit 3 clear) or value 8 (bit 3 set)
    const float e0 = exchange(d0, d1, b3, 8);
    return e0 + __shfl_xor_sync(kFullMask, e0, 16);
}

__device__ __forceinline__ float reduce_to_lanes(bool contrib, const float (&g)[kGradValues], int lane) {
    float v[kGradValues];
#pragma unroll
    for (int k = 0; k < kGradValues; ++k) v[k] = contrib ? g[k] : 0.f;
    return reduce_scatter9(v, lane);
}

template <int Mode>
struct Accumulator;

template <>
struct Accumulator<kBaseline> {
    static constexpr int kSharedFloats = 0;
    static constexpr int kChunk = kBlockSize;
    GradSinks sinks;
    __device__ __forceinline__ void add(int, int gid, bool contrib, const float (&g)[kGradValues], int, float*,
                                        int*) const {
        if (contrib) global_add9(sinks, gid, g);
    }
};

template <>
struct Accumulator<kWarp> {
    static constexpr int kSharedFloats = 0;
    static constexpr int kChunk = kBlockSize;
    LaneSink mine;  // lane L < 9: where value L goes
    int lane;
    __device__ __forceinline__ void add(int, int gid, bool contrib, const float (&g)[kGradValues], int, float*,
                                        int*) const {
        if (!__any_sync(kFullMask, contrib)) return;  // warp-uniform
        const float sum = reduce_to_lanes(contrib, g, lane);
        if (lane < kGradValues) atomicAdd(mine.base + mine.stride * gid, sum);
    }
};

template <>
struct Accumulator<kDistwar> {
    static constexpr int kSharedFloats = 0;
    static constexpr int kChunk = kBlockSize;
    GradSinks sinks;
    LaneSink mine;
    int lane;
    int threshold;
    __device__ __forceinline__ void add(int, int gid, bool contrib, const float (&g)[kGradValues], int, float*,
                                        int*) const {
        const unsigned mask = __ballot_sync(kFullMask, contrib);
        if (mask == 0) return;                       // warp-uniform
        if (__popc(mask) >= threshold) {             // warp-uniform
            const float sum = reduce_to_lanes(contrib, g, lane);
            if (lane < kGradValues) atomicAdd(mine.base + mine.stride * gid, sum);
        } else if (contrib) {
            global_add9(sinks, gid, g);
        }
    }
};

// Shared memory of kTile (declared by the kernel, passed to add() and tile_flush() as arguments, never
// stored in the accumulator: a struct mixing global and shared pointers is what CUDA 13.0 miscompiled):
//   slots [kWarpsPerBlock][kTileChunk][9]  a reducing warp's 9 sums for Gaussian j of the chunk
//   tags  [kWarpsPerBlock][kTileChunk]     the chunk tag the slot was written for (stale slots are ignored,
//                                          so nothing is zeroed per chunk)
template <>
struct Accumulator<kTile> {
    static constexpr int kSharedFloats = kWarpsPerBlock * kTileChunk * kGradValues;
    static constexpr int kSharedTags = kWarpsPerBlock * kTileChunk;
    static constexpr int kChunk = kTileChunk;
    GradSinks sinks;
    int lane;
    int warp;
    int threshold;
    __device__ __forceinline__ void add(int j, int gid, bool contrib, const float (&g)[kGradValues], int tag,
                                        float* slots, int* tags) const {
        const unsigned mask = __ballot_sync(kFullMask, contrib);
        if (mask == 0) return;
        if (__popc(mask) >= threshold) {
            const float sum = reduce_to_lanes(contrib, g, lane);
            const int slot = warp * kTileChunk + (j % kTileChunk);
            if (lane < kGradValues) slots[kGradValues * slot + lane] = sum;
            if (lane == 0) tags[slot] = tag;
        } else if (contrib) {
            global_add9(sinks, gid, g);
        }
    }
};

// kTile, after a __syncthreads that follows a chunk [c0, c1) of the batch: the block sums the warps' slots,
// thread t taking (Gaussian, value) pairs t, t + 256, ...; one global atomic per pair that a warp reduced.
// sinks are the kernel's own (built from the params in the kernel).
__device__ __forceinline__ void tile_flush(const GradSinks& sinks, int t, int c0, int c1, int tag, const int* ids,
                                           const float* slots, const int* tags) {
    for (int i = t; i < (c1 - c0) * kGradValues; i += kBlockSize) {
        const int jj = i / kGradValues, k = i - kGradValues * jj;  // j = c0 + jj
        float sum = 0.f;
        bool any = false;
#pragma unroll
        for (int w = 0; w < kWarpsPerBlock; ++w) {
            const int slot = w * kTileChunk + ((c0 + jj) % kTileChunk);
            if (tags[slot] == tag) {
                sum += slots[kGradValues * slot + k];
                any = true;
            }
        }
        if (any) {
            const LaneSink s = lane_sink(sinks, k);
            atomicAdd(s.base + s.stride * ids[c0 + jj], sum);
        }
    }
}

template <>
struct Accumulator<kFloor> {
    static constexpr int kSharedFloats = 0;
    static constexpr int kChunk = kBlockSize;
    GradSinks sinks;
    int t;
    __device__ __forceinline__ void add(int, int, bool contrib, const float (&g)[kGradValues], int, float*,
                                        int*) const {
        if (contrib) {
            float sum = 0.f;  // depends on all 9 values, so none of their math can be dropped
#pragma unroll
            for (int k = 0; k < kGradValues; ++k) sum += g[k];
            if (fabsf(sum) > sinks.floor_store_above) {
#pragma unroll
                for (int k = 0; k < kGradValues; ++k) sinks.dummy[kGradValues * t + k] = g[k];
            }
        }
    }
};

}  // namespace gsr
