// CUDA-only helpers shared by the .cu files: status after a launch, grid sizes.
#pragma once

#include <cuda_runtime.h>

#include "launchers.h"

namespace gsr {

inline cudaStream_t as_stream(void* s) { return reinterpret_cast<cudaStream_t>(s); }

// After a launch: the launch error, and with debug the execution error too (synchronises).
inline Status check_launch(const char* kernel, void* stream, bool debug) {
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess && debug) err = cudaStreamSynchronize(as_stream(stream));
    return Status{static_cast<int>(err), kernel};
}

inline Status ok_status() { return Status{0, nullptr}; }

inline unsigned blocks_for(long long n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace gsr
