// Stage 1 and stage 5: per-Gaussian preprocess and its backward.  The bodies live in math.cuh.
#include "common.cuh"
#include "preprocess_kernels.cuh"

namespace gsr {
namespace {

constexpr int kThreads = kPreprocessThreads;

}  // namespace

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

Status launch_preprocess(const Camera& cam, const PreprocessParams& p, void* stream, bool debug) {
    if (p.n == 0) return ok_status();
    preprocess_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, as_stream(stream)>>>(cam, p);
    return check_launch("preprocess_kernel", stream, debug);
}

Status launch_preprocess_backward(const Camera& cam, const PreprocessBackwardParams& p, void* stream,
                                  bool debug) {
    if (p.n == 0) return ok_status();
    preprocess_backward_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, as_stream(stream)>>>(cam, p);
    return check_launch("preprocess_backward_kernel", stream, debug);
}

}  // namespace gsr
