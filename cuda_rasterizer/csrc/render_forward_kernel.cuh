// The forward render kernel (launched by render_forward.cu).  Kept in a header, free of launch syntax, so that
// tests/csrc can also run it on the CPU under a thread-per-lane emulation of the CUDA execution model.
#pragma once

#include "math.cuh"
#include "tile_pixel.cuh"

namespace gsr {

__global__ void __launch_bounds__(kBlockSize) render_forward_kernel(Camera cam, RenderParams p) {
    const auto [tile, t, px, py, inside, pxf, pyf, start, end] = tile_pixel(cam, p);
    const int n_items = end - start;

    __shared__ float2 s_xy[kBlockSize];
    __shared__ float4 s_con_o[kBlockSize];
    __shared__ float s_col[3 * kBlockSize];
    __shared__ float s_z[kBlockSize];

    bool done = !inside;  // pixels past the image edge help load shared memory, nothing else
    PixelFwdState st;
    pixel_forward_init(st);
    int contributor = 0;

    for (int b = 0; b < n_items; b += kBlockSize) {
        // also the barrier that keeps the previous batch in shared memory until everyone is done with it
        if (__syncthreads_count(done) == kBlockSize) break;
        const int batch_n = min(kBlockSize, n_items - b);
        if (t < batch_n) {
            const int g = p.point_list[start + b + t];
            s_xy[t] = make_float2(p.means2d[2 * g], p.means2d[2 * g + 1]);
            s_con_o[t] = make_float4(p.conics[3 * g], p.conics[3 * g + 1], p.conics[3 * g + 2], p.opacities[g]);
            for (int c = 0; c < 3; ++c) s_col[3 * t + c] = p.colors[3 * g + c];
            s_z[t] = p.depths ? p.depths[g] : 0.f;
        }
        __syncthreads();
        for (int j = 0; !done && j < batch_n; ++j) {
            ++contributor;
            const float4 co = s_con_o[j];
            const float conic[3] = {co.x, co.y, co.z};
            float dx, dy, G, alpha;
            if (!gaussian_alpha(s_xy[j].x, s_xy[j].y, conic, co.w, pxf, pyf, dx, dy, G, alpha)) continue;
            if (!pixel_forward_step_depth(st, alpha, s_col + 3 * j, s_z[j], contributor)) done = true;
        }
    }
    if (inside) {
        const int pix = py * cam.width + px;
        const int hw = cam.width * cam.height;
        for (int c = 0; c < 3; ++c) p.image[c * hw + pix] = st.C[c] + st.T * cam.bg[c];
        p.final_T[pix] = st.T;
        p.n_contrib[pix] = st.last;
        if (p.depth) p.depth[pix] = st.D;
    }
}


}  // namespace gsr
