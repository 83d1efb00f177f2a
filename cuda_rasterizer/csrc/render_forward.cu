// Stage 3: forward render.  One 16x16 block per tile; the tile's depth-sorted Gaussians are staged in
// shared memory in batches of 256; each thread composites its pixel front to back and keeps the final
// transmittance and its last contributor (1 + list position) for the backward pass, and, in the same pass,
// the expected depth (the Gaussians' camera-space z composited with the colours' weights).
#include "common.cuh"
#include "render_forward_kernel.cuh"

namespace gsr {

Status launch_render_forward(const Camera& cam, const RenderParams& p, void* stream, bool debug) {
    const dim3 grid(cam.grid_x, cam.grid_y), block(kBlockX, kBlockY);
    render_forward_kernel<<<grid, block, 0, as_stream(stream)>>>(cam, p);
    return check_launch("render_forward_kernel", stream, debug);
}

}  // namespace gsr
