// CPU emulation of the CUDA pipeline for tests: the same __host__ __device__ code as the kernels
// (cuda_rasterizer/csrc/math.cuh: preprocess_one, preprocess_backward_one, tile_rect, gaussian_alpha,
// pixel_forward_step_depth, render_backward_step), driven by sequential host loops that visit (tile, pixel, Gaussian) in the
// kernels' order.  Built with g++ by tests/test_cuda_math_cpu.py; compared there with reference.py.
#include <torch/extension.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <vector>

#include "math.cuh"
#include "test_camera.h"

namespace {

using torch::Tensor;

using test_ext::Cam;
using test_ext::fp;
using test_ext::make_cam;


std::vector<Tensor> preprocess_forward(Tensor means, Tensor scales, Tensor rotations, std::optional<Tensor> shs,
                                       Tensor view, Tensor campos, Tensor bg, std::vector<double> f,
                                       std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    means = means.contiguous(); scales = scales.contiguous(); rotations = rotations.contiguous();
    const int64_t n = means.size(0);
    const auto opt = means.options();
    Tensor shs_c = shs ? shs->contiguous() : Tensor();
    Tensor means2d = torch::empty({n, 2}, opt), conics = torch::empty({n, 3}, opt);
    Tensor colors = torch::zeros({n, 3}, opt), depths = torch::empty({n}, opt);
    Tensor radii = torch::empty({n}, opt.dtype(torch::kInt32)), tiles = torch::empty({n}, opt.dtype(torch::kInt32));
    Tensor clamped = torch::zeros({n, 3}, opt.dtype(torch::kUInt8));
    gsr::PreprocessParams p{};
    p.n = static_cast<int>(n);
    p.means = fp(means); p.scales = fp(scales); p.rotations = fp(rotations);
    p.shs = shs ? fp(shs_c) : nullptr;
    p.sh_coeffs = shs ? static_cast<int>(shs_c.size(1)) : 0;
    p.means2d = fp(means2d); p.conics = fp(conics); p.colors = shs ? fp(colors) : nullptr;
    p.depths = fp(depths); p.radii = radii.data_ptr<int>(); p.tiles_touched = tiles.data_ptr<int>();
    p.clamped = clamped.data_ptr<uint8_t>();
    for (int k = 0; k < p.n; ++k) gsr::preprocess_one(c.cam, p, k);
    return {means2d, conics, colors, depths, radii, tiles, clamped};
}

// Same keys as the duplicate kernel, a stable sort (as cub's radix sort), ranges per tile.
std::vector<Tensor> bin_gaussians(Tensor means2d, Tensor depths, Tensor radii, Tensor tiles, Tensor view,
                                  Tensor campos, Tensor bg, std::vector<double> f, std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    const int n = static_cast<int>(means2d.size(0));
    const int* tt = tiles.data_ptr<int>();
    const int* rr = radii.data_ptr<int>();
    const float* m2 = fp(means2d);
    const float* dp = fp(depths);
    std::vector<uint64_t> keys;
    std::vector<int> vals;
    for (int g = 0; g < n; ++g) {
        if (tt[g] == 0) continue;
        int rect[4];
        gsr::tile_rect(c.cam, m2[2 * g], m2[2 * g + 1], static_cast<float>(rr[g]), rect);
        int written = 0;
        for (int y = rect[1]; y < rect[3]; ++y)
            for (int x = rect[0]; x < rect[2]; ++x) {
                keys.push_back((static_cast<uint64_t>(y * c.cam.grid_x + x) << 32) | gsr::float_bits(dp[g]));
                vals.push_back(g);
                ++written;
            }
        TORCH_CHECK(written == tt[g], "tile_rect disagrees with tiles_touched for Gaussian ", g);
    }
    std::vector<size_t> order(keys.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] < keys[b]; });
    const int64_t m = static_cast<int64_t>(keys.size());
    const int num_tiles = c.cam.grid_x * c.cam.grid_y;
    Tensor point_list = torch::empty({m}, torch::kInt32);
    Tensor ranges = torch::zeros({num_tiles, 2}, torch::kInt32);
    int* pl = point_list.data_ptr<int>();
    int* rg = ranges.data_ptr<int>();
    for (int64_t k = 0; k < m; ++k) {
        pl[k] = vals[order[k]];
        const int tile = static_cast<int>(keys[order[k]] >> 32);
        if (k == 0 || tile != static_cast<int>(keys[order[k - 1]] >> 32)) rg[2 * tile] = static_cast<int>(k);
        rg[2 * tile + 1] = static_cast<int>(k + 1);
    }
    return {point_list, ranges};
}

// The forward kernel's per-pixel loop, pixel by pixel.
std::vector<Tensor> render_forward(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor depths,
                                   Tensor point_list, Tensor ranges, Tensor view, Tensor campos, Tensor bg,
                                   std::vector<double> f, std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    const gsr::Camera& cam = c.cam;
    const int W = cam.width, H = cam.height;
    Tensor image = torch::empty({3, H, W}, torch::kFloat32);
    Tensor final_T = torch::empty({H, W}, torch::kFloat32);
    Tensor n_contrib = torch::empty({H, W}, torch::kInt32);
    Tensor depth = torch::empty({H, W}, torch::kFloat32);
    const float *m2 = fp(means2d), *co = fp(conics), *col = fp(colors), *op = fp(opacities), *z = fp(depths);
    const int *pl = point_list.data_ptr<int>(), *rg = ranges.data_ptr<int>();
    for (int py = 0; py < H; ++py)
        for (int px = 0; px < W; ++px) {
            const int tile = (py / gsr::kBlockY) * cam.grid_x + px / gsr::kBlockX;
            gsr::PixelFwdState st;
            gsr::pixel_forward_init(st);
            int contributor = 0;
            for (int k = rg[2 * tile]; k < rg[2 * tile + 1]; ++k) {
                const int g = pl[k];
                ++contributor;
                float dx, dy, G, alpha;
                if (!gsr::gaussian_alpha(m2[2 * g], m2[2 * g + 1], co + 3 * g, op[g], static_cast<float>(px),
                                         static_cast<float>(py), dx, dy, G, alpha))
                    continue;
                if (!gsr::pixel_forward_step_depth(st, alpha, col + 3 * g, z[g], contributor)) break;
            }
            const int pix = py * W + px;
            for (int ch = 0; ch < 3; ++ch) fp(image)[ch * H * W + pix] = st.C[ch] + st.T * cam.bg[ch];
            fp(final_T)[pix] = st.T;
            n_contrib.data_ptr<int>()[pix] = st.last;
            fp(depth)[pix] = st.D;
        }
    return {image, final_T, n_contrib, depth};
}

// The backward kernel's per-pixel loop, back to front, accumulating sequentially.
std::vector<Tensor> render_backward(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities,
                                    Tensor point_list, Tensor ranges, Tensor final_T, Tensor n_contrib,
                                    Tensor grad_image, std::optional<Tensor> grad_final_T, Tensor view, Tensor campos,
                                    Tensor bg, std::vector<double> f, std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    const gsr::Camera& cam = c.cam;
    const int W = cam.width, H = cam.height;
    const int64_t n = means2d.size(0);
    Tensor gm = torch::zeros({n, 2}), gc = torch::zeros({n, 3}), gcol = torch::zeros({n, 3}), go = torch::zeros({n});
    grad_image = grad_image.contiguous();
    Tensor gT = grad_final_T ? grad_final_T->contiguous() : Tensor();
    const float *m2 = fp(means2d), *co = fp(conics), *col = fp(colors), *op = fp(opacities);
    const int *pl = point_list.data_ptr<int>(), *rg = ranges.data_ptr<int>();
    for (int py = 0; py < H; ++py)
        for (int px = 0; px < W; ++px) {
            const int tile = (py / gsr::kBlockY) * cam.grid_x + px / gsr::kBlockX;
            const int pix = py * W + px;
            const float T_final = fp(final_T)[pix];
            const int last = n_contrib.data_ptr<int>()[pix];
            float dpix[3], bg_dot = 0.f;
            for (int ch = 0; ch < 3; ++ch) {
                dpix[ch] = fp(grad_image)[ch * H * W + pix];
                bg_dot += cam.bg[ch] * dpix[ch];
            }
            if (grad_final_T) bg_dot += fp(gT)[pix];
            gsr::PixelBackState st;
            gsr::pixel_back_init(st, T_final);
            const int start = rg[2 * tile];
            for (int pos = last - 1; pos >= 0; --pos) {
                const int g = pl[start + pos];
                float dx, dy, G, alpha, out[gsr::kGradValues];
                if (!gsr::gaussian_alpha(m2[2 * g], m2[2 * g + 1], co + 3 * g, op[g], static_cast<float>(px),
                                         static_cast<float>(py), dx, dy, G, alpha))
                    continue;
                gsr::render_backward_step(st, dpix, bg_dot, T_final, dx, dy, co + 3 * g, op[g], G, alpha,
                                          col + 3 * g, out);
                fp(gm)[2 * g] += out[0]; fp(gm)[2 * g + 1] += out[1];
                for (int k = 0; k < 3; ++k) fp(gc)[3 * g + k] += out[2 + k];
                fp(go)[g] += out[5];
                for (int k = 0; k < 3; ++k) fp(gcol)[3 * g + k] += out[6 + k];
            }
        }
    return {gm, gc, gcol, go};
}

// The lane-count histogram, with the counting kernel's definition.
Tensor lane_histogram(Tensor means2d, Tensor conics, Tensor opacities, Tensor point_list, Tensor ranges,
                      Tensor n_contrib, Tensor view, Tensor campos, Tensor bg, std::vector<double> f,
                      std::vector<int64_t> i) {
    Cam c = make_cam(view, campos, bg, f, i);
    const gsr::Camera& cam = c.cam;
    Tensor hist = torch::zeros({33}, torch::kInt64);
    const float *m2 = fp(means2d), *co = fp(conics), *op = fp(opacities);
    const int *pl = point_list.data_ptr<int>(), *rg = ranges.data_ptr<int>(), *nc = n_contrib.data_ptr<int>();
    for (int ty = 0; ty < cam.grid_y; ++ty)
        for (int tx = 0; tx < cam.grid_x; ++tx) {
            const int tile = ty * cam.grid_x + tx;
            for (int w = 0; w < gsr::kBlockSize / 32; ++w) {
                if (ty * gsr::kBlockY + 2 * w >= cam.height) continue;  // no in-image pixel in this warp
                for (int k = rg[2 * tile]; k < rg[2 * tile + 1]; ++k) {
                    const int g = pl[k], pos = k - rg[2 * tile];
                    int count = 0;
                    for (int lane = 0; lane < 32; ++lane) {
                        const int t = 32 * w + lane;
                        const int px = tx * gsr::kBlockX + t % gsr::kBlockX, py = ty * gsr::kBlockY + t / gsr::kBlockX;
                        if (px >= cam.width || py >= cam.height || pos >= nc[py * cam.width + px]) continue;
                        float dx, dy, G, alpha;
                        count += gsr::gaussian_alpha(m2[2 * g], m2[2 * g + 1], co + 3 * g, op[g], static_cast<float>(px),
                                                     static_cast<float>(py), dx, dy, G, alpha);
                    }
                    hist.data_ptr<int64_t>()[count] += 1;
                }
            }
        }
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
    Tensor g_means = torch::empty({n, 3}), g_scales = torch::empty({n, 3}), g_rot = torch::empty({n, 4});
    Tensor g_shs = torch::empty({n, K, 3});
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
    for (int k = 0; k < p.n; ++k) gsr::preprocess_backward_one(c.cam, p, k);
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
