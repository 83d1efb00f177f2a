// The pixel that a thread of a tile block owns (16x16 threads, one block per tile), and the tile's slice of
// the depth-sorted list.  One definition for every render kernel, so that they agree on the layout.
#pragma once

#include "rasterizer.h"

namespace gsr {

struct TilePixel {
    int tile;        // tile index, row-major over the tile grid
    int t;           // thread rank in the block, 16 * ly + lx: warp w = t / 32 covers rows 2w and 2w + 1
    int px, py;      // pixel coordinates (pixel i's centre is at coordinate i)
    bool inside;     // in the image; threads past the edge still take part in every barrier and shuffle
    float pxf, pyf;  // px, py as floats
    int start, end;  // the tile's range [start, end) in the sorted list
};

__device__ inline TilePixel tile_pixel(const Camera& cam, const RenderParams& p) {
    const int tile = blockIdx.y * cam.grid_x + blockIdx.x;
    const int px = blockIdx.x * kBlockX + threadIdx.x;
    const int py = blockIdx.y * kBlockY + threadIdx.y;
    return TilePixel{tile, static_cast<int>(threadIdx.y * kBlockX + threadIdx.x), px, py,
                     px < cam.width && py < cam.height, static_cast<float>(px), static_cast<float>(py),
                     p.ranges[2 * tile], p.ranges[2 * tile + 1]};
}

}  // namespace gsr
