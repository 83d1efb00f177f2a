// Stage 4: backward render, templated on the gradient-accumulation policy (atomics.cuh).
//
// One 16x16 block per tile, as the forward.  The tile's list is walked back to front in batches staged
// in shared memory, starting at the largest n_contrib of the block (positions past it are composited by
// no pixel of the tile).  Each thread rebuilds its transmittance from the saved final value
// (render_backward_step in math.cuh).  Each warp starts a batch at its own first useful position (the
// positions past its largest n_contrib are never walked), a warp-uniform bound, so the policies' full-mask
// intrinsics see 32 converged lanes; every thread still reaches every __syncthreads.
#include "common.cuh"
#include "render_backward_kernel.cuh"

namespace gsr {
namespace {

template <int Mode>
Status launch_mode(const Camera& cam, const RenderParams& p, int threshold, void* stream, bool debug,
                   const char* name) {
    const dim3 grid(cam.grid_x, cam.grid_y), block(kBlockX, kBlockY);
    render_backward_kernel<Mode><<<grid, block, 0, as_stream(stream)>>>(cam, p, threshold);
    return check_launch(name, stream, debug);
}

}  // namespace

Status launch_render_backward(const Camera& cam, const RenderParams& p, int mode, int balance_threshold,
                              void* stream, bool debug) {
    switch (mode) {
        case kBaseline: return launch_mode<kBaseline>(cam, p, balance_threshold, stream, debug, "render_backward_kernel<baseline>");
        case kWarp: return launch_mode<kWarp>(cam, p, balance_threshold, stream, debug, "render_backward_kernel<warp>");
        case kDistwar: return launch_mode<kDistwar>(cam, p, balance_threshold, stream, debug, "render_backward_kernel<distwar>");
        case kTile: return launch_mode<kTile>(cam, p, balance_threshold, stream, debug, "render_backward_kernel<tile>");
        case kFloor: return launch_mode<kFloor>(cam, p, balance_threshold, stream, debug, "render_backward_kernel<floor>");
        default: return Status{static_cast<int>(cudaErrorInvalidValue), "render_backward (unknown atomics mode)"};
    }
}

Status launch_lane_histogram(const Camera& cam, const RenderParams& p, void* stream, bool debug) {
    const dim3 grid(cam.grid_x, cam.grid_y), block(kBlockX, kBlockY);
    lane_histogram_kernel<<<grid, block, 0, as_stream(stream)>>>(cam, p);
    return check_launch("lane_histogram_kernel", stream, debug);
}

}  // namespace gsr
