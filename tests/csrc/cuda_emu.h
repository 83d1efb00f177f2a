// A CPU emulation of the parts of the CUDA execution model that the rasterizer's kernels use, so that the
// kernels themselves (cuda_rasterizer/csrc/*_kernel(s).cuh) run under g++ in CI, without a GPU.
//
// One std::thread per CUDA thread, one block at a time.  __shared__ becomes a function-local static
// (shared by the threads of the running block).  __syncthreads and the warp intrinsics are barriers.
// Each warp intrinsic also checks the kernels' convergence contract: the mask is the full warp, and all 32
// lanes arrive having made the same number of warp-intrinsic calls of the same kind; a lane that skips one
// is reported (as is a deadlock: a barrier that waits longer than kTimeout).  Atomics take a global lock.
// It is slow: run it on small images.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }

namespace emu {

constexpr auto kTimeout = std::chrono::seconds(300);  // generous: CI machines are shared and loaded

inline std::atomic<bool>& broken() {
    static std::atomic<bool> b{false};
    return b;
}
inline std::mutex& error_mutex() {
    static std::mutex m;
    return m;
}
inline std::string& error_text() {
    static std::string s;
    return s;
}
inline void fail(const std::string& why) {
    {
        std::lock_guard<std::mutex> g(error_mutex());
        if (error_text().empty()) error_text() = why;
    }
    broken() = true;
}

class Barrier {
  public:
    explicit Barrier(int n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lk(m_);
        if (broken()) return;
        const unsigned long g = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
            return;
        }
        if (!cv_.wait_for(lk, kTimeout, [&] { return gen_ != g || broken(); })) {
            fail("barrier timeout: a thread skipped a __syncthreads or a lane skipped a warp intrinsic");
            cv_.notify_all();
        }
    }
    void release() {
        std::lock_guard<std::mutex> lk(m_);
        cv_.notify_all();
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    int n_, count_ = 0;
    unsigned long gen_ = 0;
};

struct Warp {
    Barrier bar{32};
    float f[32];
    int i[32];
    long long calls[32];
};

struct Block {
    explicit Block(int threads) : bar(threads), warps((threads + 31) / 32) {}
    Barrier bar;
    std::vector<Warp> warps;
    std::atomic<int> count{0};
};

inline thread_local Block* tl_block = nullptr;
inline thread_local int tl_tid = 0;
inline thread_local long long tl_warp_calls = 0;

inline Warp& warp() { return tl_block->warps[tl_tid / 32]; }
inline int lane() { return tl_tid % 32; }

// Every lane publishes (number of warp-intrinsic calls so far, kind); all must agree.
inline void warp_enter(unsigned mask, int kind) {
    if (mask != 0xffffffffu) fail("warp intrinsic called with a partial mask");
    Warp& w = warp();
    const long long tag = (++tl_warp_calls) * 8 + kind;
    w.calls[lane()] = tag;
    w.bar.wait();
    for (int l = 0; l < 32; ++l)
        if (w.calls[l] != tag) {
            fail("lanes of a warp diverged: not all 32 made the same warp-intrinsic call");
            break;
        }
}

}  // namespace emu

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

inline void __syncthreads() { emu::tl_block->bar.wait(); }

inline int __syncthreads_count(int pred) {
    emu::Block& b = *emu::tl_block;
    if (pred) b.count.fetch_add(1);
    b.bar.wait();
    const int c = b.count.load();
    b.bar.wait();
    if (emu::tl_tid == 0) b.count.store(0);
    b.bar.wait();
    return c;
}

inline float __shfl_xor_sync(unsigned mask, float v, int offset) {
    emu::warp_enter(mask, 1);
    emu::Warp& w = emu::warp();
    w.f[emu::lane()] = v;
    w.bar.wait();
    const float r = w.f[emu::lane() ^ offset];
    w.bar.wait();
    return r;
}

inline int __shfl_xor_sync(unsigned mask, int v, int offset) {
    emu::warp_enter(mask, 2);
    emu::Warp& w = emu::warp();
    w.i[emu::lane()] = v;
    w.bar.wait();
    const int r = w.i[emu::lane() ^ offset];
    w.bar.wait();
    return r;
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu::warp_enter(mask, 3);
    emu::Warp& w = emu::warp();
    w.i[emu::lane()] = pred != 0;
    w.bar.wait();
    unsigned m = 0;
    for (int l = 0; l < 32; ++l)
        if (w.i[l]) m |= 1u << l;
    w.bar.wait();
    return m;
}

inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

namespace emu {
inline std::mutex& atomic_mutex() {
    static std::mutex m;
    return m;
}
}  // namespace emu

namespace emu {
// float atomicAdd calls (global or shared) per lane since the last reset, for the policies' tests
inline std::array<long long, 32>& float_atomics_per_lane() {
    static std::array<long long, 32> counts{};
    return counts;
}
}  // namespace emu

inline float atomicAdd(float* a, float v) {
    std::lock_guard<std::mutex> g(emu::atomic_mutex());
    ++emu::float_atomics_per_lane()[emu::lane()];
    const float old = *a;
    *a = old + v;
    return old;
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    std::lock_guard<std::mutex> g(emu::atomic_mutex());
    const unsigned long long old = *a;
    *a = old + v;
    return old;
}
inline int atomicOr(int* a, int v) {
    std::lock_guard<std::mutex> g(emu::atomic_mutex());
    const int old = *a;
    *a = old | v;
    return old;
}
inline int atomicMax(int* a, int v) {
    std::lock_guard<std::mutex> g(emu::atomic_mutex());
    const int old = *a;
    *a = std::max(old, v);
    return old;
}

namespace emu {

// Run body() as every thread of every block of the grid; blocks one after the other.
template <class F>
void launch(dim3 grid, dim3 block, F body) {
    broken() = false;
    error_text().clear();
    gridDim = grid;
    blockDim = block;
    const int threads = static_cast<int>(block.x * block.y * block.z);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                Block blk(threads);
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (int t = 0; t < threads; ++t)
                    pool.emplace_back([&, t] {
                        tl_block = &blk;
                        tl_tid = t;
                        tl_warp_calls = 0;
                        threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = uint3{bx, by, bz};
                        body();
                    });
                for (auto& th : pool) th.join();
                if (broken()) throw std::runtime_error("cuda_emu: block (" + std::to_string(bx) + ", " +
                                                       std::to_string(by) + "): " + error_text());
            }
}

}  // namespace emu
