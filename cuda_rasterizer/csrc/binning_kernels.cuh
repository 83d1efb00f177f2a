// The binning kernels (duplicate with (tile, depth) keys; tile ranges of the sorted keys), launched by
// binning.cu around cub's radix sort.  In a header, free of launch syntax, so that tests/csrc can also run
// them on the CPU.
#pragma once

#include "math.cuh"

namespace gsr {

constexpr int kBinningThreads = 256;


// One key per (Gaussian, tile touched): tile id in the high 32 bits, depth bits in the low 32 (depths are
// > 0.2, so their bit patterns sort like the floats).  Gaussians are written in index order, and the sort
// is stable, so equal depths keep index order, as in the reference.
__global__ void __launch_bounds__(kBinningThreads) duplicate_kernel(Camera cam, BinningParams b) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= b.n || b.tiles_touched[i] == 0) return;
    int64_t off = i == 0 ? 0 : b.offsets[i - 1];
    const int64_t end = b.offsets[i];
    int rect[4];
    tile_rect(cam, b.means2d[2 * i], b.means2d[2 * i + 1], static_cast<float>(b.radii[i]), rect);
    const uint64_t depth = float_bits(b.depths[i]);
    for (int y = rect[1]; y < rect[3]; ++y)
        for (int x = rect[0]; x < rect[2] && off < end; ++x, ++off) {
            b.keys[off] = (static_cast<uint64_t>(y * cam.grid_x + x) << 32) | depth;
            b.values[off] = i;
        }
}

__global__ void __launch_bounds__(kBinningThreads) tile_ranges_kernel(BinningParams b) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= b.num_rendered) return;
    const int tile = static_cast<int>(b.sorted_keys[idx] >> 32);
    if (idx == 0) {
        b.ranges[2 * tile] = 0;
    } else {
        const int prev = static_cast<int>(b.sorted_keys[idx - 1] >> 32);
        if (tile != prev) {
            b.ranges[2 * prev + 1] = idx;
            b.ranges[2 * tile] = idx;
        }
    }
    if (idx == b.num_rendered - 1) b.ranges[2 * tile + 1] = b.num_rendered;
}

}  // namespace gsr
