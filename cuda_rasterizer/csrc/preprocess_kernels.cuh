// The per-Gaussian preprocess kernels (bodies in math.cuh), launched by preprocess.cu.  In a header, free
// of launch syntax, so that tests/csrc can also run them on the CPU.
#pragma once

#include "math.cuh"

namespace gsr {

constexpr int kPreprocessThreads = 256;


__global__ void __launch_bounds__(kPreprocessThreads) preprocess_kernel(Camera cam, PreprocessParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) preprocess_one(cam, p, i);
}

__global__ void __launch_bounds__(kPreprocessThreads) preprocess_backward_kernel(Camera cam, PreprocessBackwardParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) preprocess_backward_one(cam, p, i);
}

}  // namespace gsr
