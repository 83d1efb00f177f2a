// cpu_ssim.h's forward and backward on fixed pseudo-random images of a few shapes: prints one FNV-1a checksum of
// every mean, derivative map and dL/dx.  tests/test_ssim_cpu.py builds it for the baseline target and for each
// instruction set of _cpu_backend.ISAS that the CPU has, and expects the same checksum.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu_ssim.h"

int main() {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](const void* p, size_t n) {
        const unsigned char* c = static_cast<const unsigned char*>(p);
        for (size_t i = 0; i < n; ++i) h = (h ^ c[i]) * 1099511628211ull;
    };
    uint32_t state = 12345u;
    auto uniform = [&state]() {  // xorshift32 in [0, 1)
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        return static_cast<float>(state >> 8) * (1.0f / 16777216.0f);
    };
    const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {3, 12, 11}, {1, 31, 17}, {3, 149, 199}};
    for (const auto& s : shapes) {
        const int64_t C = s[0], H = s[1], W = s[2], n = C * H * W;
        std::vector<float> x(n), y(n), grad(3 * n), dx(n);
        for (auto& v : x) v = uniform();
        for (auto& v : y) v = uniform();
        const double mean = gsr::cpu::ssim::forward(x.data(), y.data(), C, H, W, grad.data(), 1);
        gsr::cpu::ssim::backward(x.data(), y.data(), grad.data(), C, H, W, 0.7, dx.data(), 1);
        mix(&mean, sizeof mean);
        mix(grad.data(), grad.size() * sizeof(float));
        mix(dx.data(), dx.size() * sizeof(float));
    }
    std::printf("%016llx\n", static_cast<unsigned long long>(h));
    return 0;
}
