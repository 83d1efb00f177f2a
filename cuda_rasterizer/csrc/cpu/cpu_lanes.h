// The CPU backend's lane types: W pixels of a tile row in one GCC/Clang vector, and their LaneOps, so that
// math.cuh's per-pixel steps (gaussian_power, gaussian_alpha_of_power, pixel_forward_step,
// render_backward_step) run on W pixels at once: the CUDA kernels instantiate the same templates with float.
// The tile loops use kTileLanes: 16 (a whole tile row, one register) where the build targets AVX-512, else 8
// (one AVX register, or two SSE ones).  Generic vector code, plus a few intrinsics where the build's
// instruction set has them; -ffp-contract=off keeps every lane's arithmetic the scalar one.  Each lane's
// results are bitwise those of the float instantiation, except that expf is exp_lanes, a polynomial within 2
// ulp of it (tests/test_cpu_lanes.py checks both, for both widths).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../math.cuh"

// The lane code is always inlined into the tile loops (cpu_rasterizer.h).
#if defined(__GNUC__) || defined(__clang__)
#define GSR_LANE inline __attribute__((always_inline))
#else
#define GSR_LANE inline
#endif

namespace gsr::cpu {

template <int W>
struct LaneTypes {
    typedef float F __attribute__((vector_size(4 * W)));
    typedef int I __attribute__((vector_size(4 * W)));
};
template <int W>
using LaneFW = typename LaneTypes<W>::F;
template <int W>
using LaneIW = typename LaneTypes<W>::I;

// The 8-lane types: the tile loops' width in AVX2 and baseline builds.
constexpr int kLanes = 8;
using LaneF = LaneFW<kLanes>;
using LaneI = LaneIW<kLanes>;

// The tile loops' width: the build's instruction set (the loader's flags, cuda_rasterizer/_cpu_backend.py).
#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
constexpr int kTileLanes = 16;
constexpr const char* kIsaName = "avx512";
#elif defined(__AVX2__)
constexpr int kTileLanes = 8;
constexpr const char* kIsaName = "avx2";
#else
constexpr int kTileLanes = 8;
constexpr const char* kIsaName = "baseline";
#endif

template <class V>
GSR_LANE V splat(float x) {
    return x - V{};  // exact for every x, -0 included (not V{} + x, which turns -0 into +0): a broadcast
}

// W floats at p, unaligned (a std::vector of lane vectors would not be aligned: the vector attribute does not
// survive as a template argument).
template <class V>
GSR_LANE V load_lanes(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <class V>
GSR_LANE void store_lanes(float* p, const V& v) {
    std::memcpy(p, &v, sizeof v);
}

// 0, 1, ..., W - 1
template <int W>
GSR_LANE LaneIW<W> lane_index() {
    LaneIW<W> v;
    for (int l = 0; l < W; ++l) v[l] = l;
    return v;
}

// Whether some lane of a lane-wise condition (-1 / 0) is set.
GSR_LANE bool any_lane(const LaneIW<8>& m) {
#if defined(__AVX2__)
    __m256i v;
    std::memcpy(&v, &m, sizeof v);
    return !_mm256_testz_si256(v, v);
#else
    // the OR of its two 128-bit halves, then of that one's two 64-bit halves
    typedef long long Half __attribute__((vector_size(16)));
    Half lo, hi;
    std::memcpy(&lo, &m, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&m) + sizeof lo, sizeof hi);
    const Half o = lo | hi;
    return (o[0] | o[1]) != 0;
#endif
}

GSR_LANE bool any_lane(const LaneIW<16>& m) {
#if defined(__AVX512F__)
    __m512i v;
    std::memcpy(&v, &m, sizeof v);
    return _mm512_test_epi32_mask(v, v) != 0;
#else
    LaneIW<8> lo, hi;
    std::memcpy(&lo, &m, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&m) + sizeof lo, sizeof hi);
    return any_lane(lo | hi);
#endif
}

// expf for each lane of x <= 0, to within 2 ulp of the libm expf that LaneOps<float>::exp calls (Cody-Waite
// reduction to [-ln2/2, ln2/2] around n = rint(x log2 e), taken with the 1.5 * 2^23 rounding trick, which also
// leaves n in the low mantissa bits for 2^n; then the classic degree-6 minimax polynomial).  Inputs below
// -87.3 give 2^-126 * p (they only meet alpha < 1/255 and are rejected).  Lanes with x > 0 or NaN give
// garbage: gaussian_alpha_of_power only keeps lanes with power <= 0 (NaN fails that test).
template <class V>
GSR_LANE V exp_lanes(V x) {
    using I = decltype(x < x);
    constexpr float kRound = 12582912.f;  // 1.5 * 2^23: t + kRound rounds t to an integer (|t| < 2^22)
    x = x < -87.33654f ? V{} - 87.33654f : x;
    const V t = x * 1.44269504088896341f + kRound;
    const V n = t - kRound;
    const V r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    const V z = r * r;
    V y = 1.9875691500e-4f * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.f;
    I tb;
    std::memcpy(&tb, &t, sizeof tb);
    const I bits = (tb - (0x4B400000 - 127)) << 23;  // (n + 127) << 23: n = bits(t) - bits(kRound)
    V pow2;
    std::memcpy(&pow2, &bits, sizeof pow2);
    return y * pow2;
}

// math.cuh's lane operations for the W-pixel vector (see LaneOps there).
template <int W>
struct VectorLaneOps {
    using F = LaneFW<W>;
    using Mask = LaneIW<W>;
    using Int = LaneIW<W>;
    static GSR_LANE Mask all_of(const Mask& m, const Mask& a) { return m & a; }
    static GSR_LANE Mask and_not(const Mask& m, const Mask& a) { return m & ~a; }
    static GSR_LANE bool any(const Mask& m) { return any_lane(m); }
    static GSR_LANE Mask taken(const Mask& m) { return m; }
    static GSR_LANE bool early(const Mask&) { return true; }  // the caller tests the lanes it gets back
    static GSR_LANE F select(const Mask& m, const F& a, const F& b) { return m ? a : b; }
    static GSR_LANE Int select(const Mask& m, int a, const Int& b) { return m ? Int{} + a : b; }
    static GSR_LANE F exp(const F& x) { return exp_lanes(x); }
    static GSR_LANE F min(const F& x, float c) { return x < c ? x : cpu::splat<F>(c); }
    static GSR_LANE F splat(float x) { return cpu::splat<F>(x); }
};

}  // namespace gsr::cpu

namespace gsr {

template <>
struct LaneOps<cpu::LaneFW<8>> : cpu::VectorLaneOps<8> {};
template <>
struct LaneOps<cpu::LaneFW<16>> : cpu::VectorLaneOps<16> {};

}  // namespace gsr
