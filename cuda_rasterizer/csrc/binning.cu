// Stage 2: prefix sum of tiles touched, duplication with 64-bit (tile, depth) keys, a radix sort over
// the bits the tile count needs, and per-tile ranges of the sorted list.
#include <cub/cub.cuh>
#include <thrust/iterator/transform_iterator.h>

#include "binning_kernels.cuh"
#include "common.cuh"

namespace gsr {
namespace {

constexpr int kThreads = kBinningThreads;

// The scan reads tiles_touched widened to int64, so that cub accumulates (and writes) int64: an int
// accumulator would wrap at 2^31 pairs, long before the total could be checked.
struct ToI64 {
    __host__ __device__ int64_t operator()(int v) const { return static_cast<int64_t>(v); }
};
using WideTiles = thrust::transform_iterator<ToI64, const int*, int64_t>;

}  // namespace

size_t scan_temp_bytes(int n) {
    size_t bytes = 0;
    cub::DeviceScan::InclusiveSum(nullptr, bytes, WideTiles(static_cast<const int*>(nullptr), ToI64{}),
                                  static_cast<int64_t*>(nullptr), n);
    return bytes;
}

Status launch_scan(const int* tiles_touched, int64_t* offsets, int n, void* temp, size_t temp_bytes,
                   void* stream, bool debug) {
    if (n == 0) return ok_status();
    cudaError_t err = cub::DeviceScan::InclusiveSum(temp, temp_bytes, WideTiles(tiles_touched, ToI64{}), offsets, n,
                                                    as_stream(stream));
    if (err != cudaSuccess) return Status{static_cast<int>(err), "cub::DeviceScan::InclusiveSum"};
    return check_launch("cub::DeviceScan::InclusiveSum", stream, debug);
}

Status read_int64_sync(const int64_t* device_value, int64_t* host_value, void* stream) {
    cudaError_t err = cudaMemcpyAsync(host_value, device_value, sizeof(int64_t), cudaMemcpyDeviceToHost,
                                      as_stream(stream));
    if (err == cudaSuccess) err = cudaStreamSynchronize(as_stream(stream));
    return Status{static_cast<int>(err), "read_int64_sync (cudaMemcpyAsync)"};
}

int sort_end_bit(int num_tiles) {
    int bits = 0;
    while (bits < 31 && (1 << bits) < num_tiles) ++bits;
    return 32 + bits;
}

size_t sort_temp_bytes(int num_rendered, int end_bit) {
    size_t bytes = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                    static_cast<uint64_t*>(nullptr), static_cast<const int*>(nullptr),
                                    static_cast<int*>(nullptr), num_rendered, 0, end_bit);
    return bytes;
}

Status launch_binning(const Camera& cam, BinningParams b, uint64_t* keys_sorted, int* values_sorted, void* temp,
                      size_t temp_bytes, void* stream, bool debug) {
    const int num_tiles = cam.grid_x * cam.grid_y;
    cudaStream_t s = as_stream(stream);
    cudaError_t err = cudaMemsetAsync(b.ranges, 0, sizeof(int) * 2 * static_cast<size_t>(num_tiles), s);
    if (err != cudaSuccess) return Status{static_cast<int>(err), "cudaMemsetAsync(ranges)"};
    if (b.num_rendered == 0) return ok_status();

    duplicate_kernel<<<blocks_for(b.n, kThreads), kThreads, 0, s>>>(cam, b);
    Status st = check_launch("duplicate_kernel", stream, debug);
    if (st.code) return st;

    err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, b.keys, keys_sorted, b.values, values_sorted,
                                          b.num_rendered, 0, sort_end_bit(num_tiles), s);
    if (err != cudaSuccess) return Status{static_cast<int>(err), "cub::DeviceRadixSort::SortPairs"};
    st = check_launch("cub::DeviceRadixSort::SortPairs", stream, debug);
    if (st.code) return st;

    b.sorted_keys = keys_sorted;
    tile_ranges_kernel<<<blocks_for(b.num_rendered, kThreads), kThreads, 0, s>>>(b);
    return check_launch("tile_ranges_kernel", stream, debug);
}

}  // namespace gsr
