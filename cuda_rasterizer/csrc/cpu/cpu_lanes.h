// The CPU backend's lane type: 8 pixels of a tile row in one GCC/Clang vector (one AVX register, or two SSE
// ones), and its LaneOps, so that math.cuh's per-pixel steps (gaussian_power, gaussian_alpha_of_power,
// pixel_forward_step, render_backward_step) run on 8 pixels at once: the CUDA kernels instantiate the same
// templates with float.  No intrinsics, so any x86 or ARM target compiles it; -ffp-contract=off keeps every
// lane's arithmetic the scalar one.  Each lane's results are bitwise those of the float instantiation, except
// that expf is exp_lanes, a polynomial within 2 ulp of it (tests/test_cpu_lanes.py checks both).
#pragma once

#include <cstdint>
#include <cstring>

#include "../math.cuh"

namespace gsr::cpu {

constexpr int kLanes = 8;

typedef float LaneF __attribute__((vector_size(4 * kLanes)));
typedef int LaneI __attribute__((vector_size(4 * kLanes)));

inline LaneF splat(float x) {
    LaneF v;
    for (int l = 0; l < kLanes; ++l) v[l] = x;  // (not LaneF{} + x, which would turn -0 into +0)
    return v;
}

// kLanes floats at p, unaligned (a std::vector of LaneF would not be aligned: the vector attribute does not
// survive as a template argument).
inline LaneF load_lanes(const float* p) {
    LaneF v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store_lanes(float* p, const LaneF& v) { std::memcpy(p, &v, sizeof v); }

// 0, 1, ..., kLanes - 1
inline LaneI lane_index() {
    LaneI v;
    for (int l = 0; l < kLanes; ++l) v[l] = l;
    return v;
}

// Whether some lane of a lane-wise condition (-1 / 0) is set: an OR of its four 64-bit quarters.
inline bool any_lane(const LaneI& m) {
    typedef long long Quads __attribute__((vector_size(4 * kLanes)));
    Quads q;
    std::memcpy(&q, &m, sizeof q);
    return (q[0] | q[1] | q[2] | q[3]) != 0;
}

// expf for each lane, to within 2 ulp of the libm expf that LaneOps<float>::exp calls (Cody-Waite reduction
// to [-ln2/2, ln2/2], then the classic degree-6 minimax polynomial, then 2^n through the exponent bits).
// Inputs below -87.3 give 2^-126 * p (they only meet alpha < 1/255 and are rejected); NaN gives NaN.
inline LaneF exp_lanes(LaneF x) {
    const LaneI nan = x != x;
    x = x < -87.33654f ? LaneF{} - 87.33654f : x;
    x = x > 88.0f ? LaneF{} + 88.0f : x;
    const LaneF fx = x * 1.44269504088896341f + 0.5f;
    LaneF n = __builtin_convertvector(__builtin_convertvector(fx, LaneI), LaneF);
    n = n > fx ? n - 1.f : n;  // floor
    const LaneF r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    const LaneF z = r * r;
    LaneF y = 1.9875691500e-4f * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.f;
    const LaneI bits = (__builtin_convertvector(n, LaneI) + 127) << 23;
    LaneF pow2;
    std::memcpy(&pow2, &bits, sizeof pow2);
    const LaneF out = y * pow2;
    return nan ? x : out;
}

}  // namespace gsr::cpu

namespace gsr {

// math.cuh's lane operations for the 8-pixel vector (see LaneOps there).
template <>
struct LaneOps<cpu::LaneF> {
    using F = cpu::LaneF;
    using Mask = cpu::LaneI;
    using Int = cpu::LaneI;
    static Mask all_of(const Mask& m, const Mask& a) { return m & a; }
    static Mask and_not(const Mask& m, const Mask& a) { return m & ~a; }
    static bool any(const Mask& m) { return cpu::any_lane(m); }
    static Mask taken(const Mask& m) { return m; }
    static F select(const Mask& m, const F& a, const F& b) { return m ? a : b; }
    static Int select(const Mask& m, int a, const Int& b) { return m ? Int{} + a : b; }
    static F exp(const F& x) { return cpu::exp_lanes(x); }
    static F min(const F& x, float c) { return x < c ? x : cpu::splat(c); }
    static F splat(float x) { return cpu::splat(x); }
};

}  // namespace gsr
