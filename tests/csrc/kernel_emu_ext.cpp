// The rasterizer's CUDA kernels, compiled by g++ and run under tests/csrc/cuda_emu.h (one std::thread per
// CUDA thread).  Same calls as tests/cpu_math_ext.cpp, plus the atomics mode of the backward pass.  cub's
// scan and radix sort are replaced by their host equivalents (an inclusive sum, a stable sort).
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

// after torch: the emulation's macros (__shared__, __global__, ...) must not reach torch's headers
#include "cuda_emu.h"

#include "binning_kernels.cuh"
#include "preprocess_kernels.cuh"
#include "render_backward_kernel.cuh"
#include "render_forward_kernel.cuh"
#include "test_camera.h"

namespace {

using torch::Tensor;

using test_ext::Cam;
using test_ext::fp;
using test_ext::make_cam;


dim3 per_gaussian_grid(int64_t n, int threads) { return dim3(static_cast<unsigned>((n + threads - 1) / threads)); }

std::vector<Tensor> preprocess_forward(Tensor means, Tensor scales, Tensor rotations, std::optional<Tensor> shs,
                                       Tensor view, Tensor campos, Tensor bg, std::vector<double> f,
                                       std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    means = means.contiguous(); scales = scales.contiguous(); rotations = rotations.contiguous();
    const int64_t n = means.size(0);
    Tensor shs_c = shs ? shs->contiguous() : Tensor();
    Tensor means2d = torch::empty({n, 2}), conics = torch::empty({n, 3}), colors = torch::zeros({n, 3});
    Tensor depths = torch::empty({n}), radii = torch::empty({n}, torch::kInt32), tiles = torch::empty({n}, torch::kInt32);
    Tensor clamped = torch::zeros({n, 3}, torch::kUInt8);
    gsr::PreprocessParams p{};
    p.n = static_cast<int>(n);
    p.means = fp(means); p.scales = fp(scales); p.rotations = fp(rotations);
    p.shs = shs ? fp(shs_c) : nullptr;
    p.sh_coeffs = shs ? static_cast<int>(shs_c.size(1)) : 0;
    p.means2d = fp(means2d); p.conics = fp(conics); p.colors = shs ? fp(colors) : nullptr;
    p.depths = fp(depths); p.radii = radii.data_ptr<int>(); p.tiles_touched = tiles.data_ptr<int>();
    p.clamped = clamped.data_ptr<uint8_t>();
    if (n > 0)
        emu::launch(per_gaussian_grid(n, gsr::kPreprocessThreads), dim3(gsr::kPreprocessThreads),
                    [&] { gsr::preprocess_kernel(c.cam, p); });
    return {means2d, conics, colors, depths, radii, tiles, clamped};
}

std::vector<Tensor> bin_gaussians(Tensor means2d, Tensor depths, Tensor radii, Tensor tiles, Tensor view,
                                  Tensor campos, Tensor bg, std::vector<double> f, std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    const int64_t n = means2d.size(0);
    const int num_tiles = c.cam.grid_x * c.cam.grid_y;
    // cub::DeviceScan::InclusiveSum over tiles widened to int64, as binning.cu; the same INT_MAX check as
    // bindings.cpp
    Tensor offsets = torch::cumsum(tiles, 0, torch::kInt64).contiguous();
    const int64_t total = n > 0 ? offsets[n - 1].item<int64_t>() : 0;
    TORCH_CHECK(total >= 0 && total <= std::numeric_limits<int>::max(), "cuda_rasterizer: the Gaussians touch ",
                total, " (Gaussian, tile) pairs in total, more than INT_MAX");
    const int m = static_cast<int>(total);
    Tensor keys = torch::full({m}, -1, torch::kInt64), values = torch::full({m}, -1, torch::kInt32);
    Tensor ranges = torch::zeros({num_tiles, 2}, torch::kInt32);
    gsr::BinningParams b{};
    b.n = static_cast<int>(n);
    b.means2d = fp(means2d); b.depths = fp(depths); b.radii = radii.data_ptr<int>();
    b.tiles_touched = tiles.data_ptr<int>(); b.offsets = offsets.data_ptr<int64_t>(); b.num_rendered = m;
    b.keys = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()); b.values = values.data_ptr<int>();
    b.ranges = ranges.data_ptr<int>();
    if (m == 0) return {values, ranges};
    emu::launch(per_gaussian_grid(n, gsr::kBinningThreads), dim3(gsr::kBinningThreads),
                [&] { gsr::duplicate_kernel(c.cam, b); });
    // cub::DeviceRadixSort::SortPairs over bits [0, end_bit): stable
    std::vector<int> order(m);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return b.keys[x] < b.keys[y]; });
    Tensor sorted_keys = torch::empty({m}, torch::kInt64), point_list = torch::empty({m}, torch::kInt32);
    for (int k = 0; k < m; ++k) {
        sorted_keys.data_ptr<int64_t>()[k] = static_cast<int64_t>(b.keys[order[k]]);
        point_list.data_ptr<int>()[k] = b.values[order[k]];
    }
    b.sorted_keys = reinterpret_cast<const uint64_t*>(sorted_keys.data_ptr<int64_t>());
    emu::launch(per_gaussian_grid(m, gsr::kBinningThreads), dim3(gsr::kBinningThreads),
                [&] { gsr::tile_ranges_kernel(b); });
    return {point_list, ranges};
}

gsr::RenderParams render_params(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                const Tensor& opacities, const Tensor& point_list, const Tensor& ranges) {
    gsr::RenderParams p{};
    p.n = static_cast<int>(means2d.size(0));
    p.means2d = fp(means2d); p.conics = fp(conics); p.colors = fp(colors); p.opacities = fp(opacities);
    p.point_list = point_list.data_ptr<int>(); p.ranges = ranges.data_ptr<int>();
    return p;
}

std::vector<Tensor> render_forward(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor depths,
                                   Tensor point_list, Tensor ranges, Tensor view, Tensor campos, Tensor bg,
                                   std::vector<double> f, std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges);
    const int H = c.cam.height, W = c.cam.width;
    Tensor image = torch::full({3, H, W}, -1.f), final_T = torch::full({H, W}, -1.f);
    Tensor n_contrib = torch::full({H, W}, -1, torch::kInt32), depth = torch::full({H, W}, -1.f);
    depths = depths.contiguous();
    p.depths = fp(depths);
    p.image = fp(image); p.final_T = fp(final_T); p.n_contrib = n_contrib.data_ptr<int>(); p.depth = fp(depth);
    emu::launch(dim3(c.cam.grid_x, c.cam.grid_y), dim3(gsr::kBlockX, gsr::kBlockY),
                [&] { gsr::render_forward_kernel(c.cam, p); });
    return {image, final_T, n_contrib, depth};
}

std::vector<Tensor> render_backward(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities,
                                    Tensor point_list, Tensor ranges, Tensor final_T, Tensor n_contrib,
                                    Tensor grad_image, std::optional<Tensor> grad_final_T, Tensor view, Tensor campos,
                                    Tensor bg, std::vector<double> f, std::vector<int64_t> i, int64_t mode,
                                    int64_t threshold) {
    Cam c = make_cam(view, campos, bg, f, i);
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges);
    const int64_t n = means2d.size(0);
    Tensor gm = torch::zeros({n, 2}), gc = torch::zeros({n, 3}), gcol = torch::zeros({n, 3}), go = torch::zeros({n});
    Tensor dummy = torch::zeros({gsr::kBlockSize * gsr::kGradValues});
    grad_image = grad_image.contiguous();
    Tensor gT = grad_final_T ? grad_final_T->contiguous() : Tensor();
    p.final_T = fp(final_T); p.n_contrib = n_contrib.data_ptr<int>(); p.grad_image = fp(grad_image);
    p.grad_final_T = grad_final_T ? fp(gT) : nullptr;
    p.grad_means2d = fp(gm); p.grad_conics = fp(gc); p.grad_colors = fp(gcol); p.grad_opacities = fp(go);
    p.dummy = fp(dummy);
    // "floor" stores every contributing pair here (the GPU glue passes +inf: never), so that the test can
    // see the values were computed
    p.floor_store_above = -1.f;
    emu::float_atomics_per_lane().fill(0);
    const dim3 grid(c.cam.grid_x, c.cam.grid_y), block(gsr::kBlockX, gsr::kBlockY);
    const int thr = static_cast<int>(threshold);
    switch (mode) {
        case gsr::kBaseline: emu::launch(grid, block, [&] { gsr::render_backward_kernel<gsr::kBaseline>(c.cam, p, thr); }); break;
        case gsr::kWarp: emu::launch(grid, block, [&] { gsr::render_backward_kernel<gsr::kWarp>(c.cam, p, thr); }); break;
        case gsr::kDistwar: emu::launch(grid, block, [&] { gsr::render_backward_kernel<gsr::kDistwar>(c.cam, p, thr); }); break;
        case gsr::kTile: emu::launch(grid, block, [&] { gsr::render_backward_kernel<gsr::kTile>(c.cam, p, thr); }); break;
        case gsr::kFloor: emu::launch(grid, block, [&] { gsr::render_backward_kernel<gsr::kFloor>(c.cam, p, thr); }); break;
        default: TORCH_CHECK(false, "unknown mode ", mode);
    }
    Tensor lanes = torch::empty({32}, torch::kInt64);
    for (int l = 0; l < 32; ++l) lanes.data_ptr<int64_t>()[l] = emu::float_atomics_per_lane()[l];
    return {gm, gc, gcol, go, dummy, lanes};
}

Tensor lane_histogram(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor point_list, Tensor ranges,
                      Tensor n_contrib, Tensor view, Tensor campos, Tensor bg, std::vector<double> f,
                      std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges);
    Tensor hist = torch::zeros({33}, torch::kInt64);
    p.n_contrib = n_contrib.data_ptr<int>();
    p.histogram = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
    emu::launch(dim3(c.cam.grid_x, c.cam.grid_y), dim3(gsr::kBlockX, gsr::kBlockY),
                [&] { gsr::lane_histogram_kernel(c.cam, p); });
    return hist;
}

std::vector<Tensor> preprocess_backward(Tensor means, Tensor scales, Tensor rotations, std::optional<Tensor> shs,
                                        Tensor tiles, Tensor clamped, Tensor grad_means2d, Tensor grad_conics,
                                        std::optional<Tensor> grad_colors, std::optional<Tensor> grad_depths,
                                        Tensor view, Tensor campos, Tensor bg, std::vector<double> f,
                                        std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    means = means.contiguous(); scales = scales.contiguous(); rotations = rotations.contiguous();
    grad_means2d = grad_means2d.contiguous(); grad_conics = grad_conics.contiguous();
    Tensor shs_c = shs ? shs->contiguous() : Tensor();
    Tensor gcol = grad_colors ? grad_colors->contiguous() : Tensor();
    Tensor gdep = grad_depths ? grad_depths->contiguous() : Tensor();
    const int64_t n = means.size(0);
    const int64_t K = shs ? shs_c.size(1) : 0;
    Tensor g_means = torch::full({n, 3}, NAN), g_scales = torch::full({n, 3}, NAN), g_rot = torch::full({n, 4}, NAN);
    Tensor g_shs = torch::full({n, K, 3}, NAN);
    gsr::PreprocessBackwardParams p{};
    p.n = static_cast<int>(n);
    p.means = fp(means); p.scales = fp(scales); p.rotations = fp(rotations);
    p.shs = shs ? fp(shs_c) : nullptr;
    p.sh_coeffs = static_cast<int>(K);
    p.tiles_touched = tiles.data_ptr<int>();
    p.clamped = clamped.data_ptr<uint8_t>();
    p.grad_means2d = fp(grad_means2d); p.grad_conics = fp(grad_conics);
    p.grad_colors = grad_colors ? fp(gcol) : nullptr;
    p.grad_depths = grad_depths ? fp(gdep) : nullptr;
    p.grad_means = fp(g_means); p.grad_scales = fp(g_scales); p.grad_rotations = fp(g_rot);
    p.grad_shs = shs ? fp(g_shs) : nullptr;
    if (n > 0)
        emu::launch(per_gaussian_grid(n, gsr::kPreprocessThreads), dim3(gsr::kPreprocessThreads),
                    [&] { gsr::preprocess_backward_kernel(c.cam, p); });
    return {g_means, g_scales, g_rot, g_shs};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("preprocess_forward", &preprocess_forward);
    m.def("bin_gaussians", &bin_gaussians);
    m.def("render_forward", &render_forward);
    m.def("render_backward", &render_backward);
    m.def("lane_histogram", &lane_histogram);
    m.def("preprocess_backward", &preprocess_backward);
}
