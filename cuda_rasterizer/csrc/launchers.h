// Launchers of the CUDA stages: raw pointers, sizes, a params struct and the CUDA stream as void*.
// Plain C++ (no CUDA and no torch headers): the torch glue (bindings.cpp) includes it.
#pragma once

#include <cstddef>

#include "rasterizer.h"

namespace gsr {

// code 0 = success; otherwise a cudaError_t value and the kernel (or library call) that raised it.
struct Status {
    int code;
    const char* kernel;
};

const char* error_string(int code);

// Stage 1: per-Gaussian preprocess.
Status launch_preprocess(const Camera& cam, const PreprocessParams& p, void* stream, bool debug);

// Stage 2: binning.  inclusive_sum(tiles_touched) -> offsets, accumulated and stored in int64 (an int32
// running sum would wrap silently); the last offset (read with read_int64_sync, which synchronises the
// stream) is the number of (Gaussian, tile) pairs, which the caller must check against INT_MAX (the sort
// and the tile ranges index with int).
size_t scan_temp_bytes(int n);
Status launch_scan(const int* tiles_touched, int64_t* offsets, int n, void* temp, size_t temp_bytes,
                   void* stream, bool debug);
Status read_int64_sync(const int64_t* device_value, int64_t* host_value, void* stream);
int sort_end_bit(int num_tiles);  // 32 depth bits + the bits the tile count needs
size_t sort_temp_bytes(int num_rendered, int end_bit);
// duplicate -> sort (keys, values) -> tile ranges; b.keys, b.values, keys_sorted and values_sorted hold
// num_rendered entries each.
Status launch_binning(const Camera& cam, BinningParams b, uint64_t* keys_sorted, int* values_sorted,
                      void* temp, size_t temp_bytes, void* stream, bool debug);

// Stage 3: forward render.
Status launch_render_forward(const Camera& cam, const RenderParams& p, void* stream, bool debug);

// Stage 4: backward render with an AtomicsMode (kFloor: results wrong, for measurement only).
Status launch_render_backward(const Camera& cam, const RenderParams& p, int mode, int balance_threshold,
                              void* stream, bool debug);
// Histogram [33] of the per-(warp, Gaussian) contributing-lane counts (profiling).
Status launch_lane_histogram(const Camera& cam, const RenderParams& p, void* stream, bool debug);

// Stage 5: preprocess backward.
Status launch_preprocess_backward(const Camera& cam, const PreprocessBackwardParams& p, void* stream,
                                  bool debug);

}  // namespace gsr
