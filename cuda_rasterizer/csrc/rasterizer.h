// Parameter structs shared by the kernels, their launchers, the torch glue and the CPU test extension.
// Plain C++: no CUDA and no torch headers, so that g++ compiles it on its own.
#pragma once

#include <cstdint>

namespace gsr {

constexpr int kBlockX = 16;
constexpr int kBlockY = 16;
constexpr int kBlockSize = kBlockX * kBlockY;
constexpr int kGradValues = 9;          // dL/dmean2d (2), dL/dconic (3), dL/dopacity, dL/dcolour (3)

constexpr float kNearPlane = 0.2f;      // cull camera-space z <= 0.2
constexpr float kLowPass = 0.3f;        // added to the 2D covariance diagonal
constexpr float kAlphaMax = 0.99f;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kTMin = 1e-4f;          // stop before the transmittance drops below this
constexpr float kDirEps = 1e-12f;       // clamp of the view-direction norm

// Gradient-accumulation policies of the backward render kernel (see atomics.cuh).
enum AtomicsMode : int { kBaseline = 0, kWarp = 1, kDistwar = 2, kTile = 3, kFloor = 4 };

// One camera.  Pointers are device pointers in the kernels, host pointers in the CPU test extension.
struct Camera {
    int width, height;
    int grid_x, grid_y;       // tiles in x and y
    float fx, fy;
    float cx, cy;             // principal point minus 0.5: x = fx * X / Z + cx
    float limx, limy;         // 1.3 * tan(fov / 2), the EWA Jacobian clamp
    float scale_modifier;
    int sh_degree;
    const float* view;        // [16] row-major world-to-camera matrix (column-vector convention)
    const float* campos;      // [3] camera centre in world space
    const float* bg;          // [3] background colour
};

// The camera from the flat arguments Python passes (autograd.py's camera_scalars): f = (fx, fy, cx, cy, limx,
// limy, scale_modifier), i = (width, height, sh_degree).  The one place that knows this packing; the torch
// glue and the CPU test extensions both use it.
inline Camera camera_from_args(const double* f, const int64_t* i, const float* view, const float* campos,
                               const float* bg) {
    Camera c{};
    c.width = static_cast<int>(i[0]);
    c.height = static_cast<int>(i[1]);
    c.grid_x = (c.width + kBlockX - 1) / kBlockX;
    c.grid_y = (c.height + kBlockY - 1) / kBlockY;
    c.fx = static_cast<float>(f[0]);
    c.fy = static_cast<float>(f[1]);
    c.cx = static_cast<float>(f[2]);
    c.cy = static_cast<float>(f[3]);
    c.limx = static_cast<float>(f[4]);
    c.limy = static_cast<float>(f[5]);
    c.scale_modifier = static_cast<float>(f[6]);
    c.sh_degree = static_cast<int>(i[2]);
    c.view = view;
    c.campos = campos;
    c.bg = bg;
    return c;
}

struct PreprocessParams {
    int n;
    const float* means;       // [N, 3]
    const float* scales;      // [N, 3]
    const float* rotations;   // [N, 4] (w, x, y, z), not normalised
    const float* shs;         // [N, K, 3] or null when colours are precomputed
    int sh_coeffs;            // K
    float* means2d;           // [N, 2] out, 0 for invisible
    float* conics;            // [N, 3] out
    float* colors;            // [N, 3] out (null when colours are precomputed)
    float* depths;            // [N] out, camera-space z
    int* radii;               // [N] out, 0 for invisible
    int* tiles_touched;       // [N] out, 0 for invisible
    uint8_t* clamped;         // [N, 3] out, colour channel clamped at 0 (no gradient)
};

struct PreprocessBackwardParams {
    int n;
    const float* means;
    const float* scales;
    const float* rotations;
    const float* shs;             // null when colours are precomputed
    int sh_coeffs;
    const int* tiles_touched;
    const uint8_t* clamped;
    const float* grad_means2d;    // [N, 2]
    const float* grad_conics;     // [N, 3]
    const float* grad_colors;     // [N, 3] or null
    const float* grad_depths;     // [N] or null
    float* grad_means;            // [N, 3] out
    float* grad_scales;           // [N, 3] out
    float* grad_rotations;        // [N, 4] out
    float* grad_shs;              // [N, K, 3] out or null
};

struct BinningParams {
    int n;
    const float* means2d;
    const float* depths;
    const int* radii;
    const int* tiles_touched;
    const int64_t* offsets;       // inclusive prefix sum of tiles_touched, in int64 (no wrap)
    int num_rendered;             // offsets[n - 1], checked <= INT_MAX by the caller
    uint64_t* keys;               // [num_rendered] (tile << 32) | depth bits
    int* values;                  // [num_rendered] Gaussian index
    const uint64_t* sorted_keys;
    int* ranges;                  // [num_tiles, 2] out: [start, end) in the sorted list
};

struct RenderParams {
    int n;
    const float* means2d;         // [N, 2]
    const float* conics;          // [N, 3]
    const float* colors;          // [N, 3]
    const float* opacities;       // [N]
    const float* depths;          // [N] camera-space z (forward: composited into depth); null: z taken as 0
    const int* point_list;        // [num_rendered] sorted Gaussian ids
    const int* ranges;            // [num_tiles, 2]
    // forward outputs, backward inputs
    float* image;                 // [3, H, W]
    float* final_T;               // [H, W]
    int* n_contrib;               // [H, W]
    float* depth;                 // [H, W] forward out, expected depth sum alpha * T * z; null: not written
    // backward
    const float* grad_image;      // [3, H, W]
    const float* grad_final_T;    // [H, W] or null
    float* grad_means2d;          // [N, 2]
    float* grad_conics;           // [N, 3]
    float* grad_opacities;        // [N]
    float* grad_colors;           // [N, 3]
    float* dummy;                 // [kBlockSize * kGradValues], the "floor" mode's sink
    float floor_store_above;      // "floor": store to dummy only when |sum of a pair's 9 values| > this
    unsigned long long* histogram;  // [33], lane_histogram only
};

}  // namespace gsr
