// Torch glue of the CPU backend: checks the inputs (device, dtype, contiguity, shape, NaN; every message names
// the tensor and is raised as a Python ValueError), allocates the outputs and calls the host loops of
// cpu_rasterizer.h.  Built by cuda_rasterizer/_cpu_backend.py with torch.utils.cpp_extension.load.
//
// The five functions are the CUDA glue's stages (bindings.cpp), with the same arguments less the stream and
// the atomics mode; bin_gaussians also returns the pair offsets and positions that render_backward reduces
// with.  Threads: at::get_num_threads() (torch.set_num_threads), on torch's own OpenMP runtime.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cpu_rasterizer.h"
#include "cpu_ssim.h"

namespace {

using torch::Tensor;

void check_tensor(const Tensor& t, const char* name, at::ScalarType dtype, std::vector<int64_t> shape) {
    TORCH_CHECK_VALUE(t.device().is_cpu(), "cuda_rasterizer (cpu backend): ", name, " must be a CPU tensor, got ",
                      t.device());
    TORCH_CHECK_VALUE(t.scalar_type() == dtype, "cuda_rasterizer (cpu backend): ", name, " must be ", dtype,
                      ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.is_contiguous(), "cuda_rasterizer (cpu backend): ", name, " must be contiguous");
    bool ok = t.dim() == static_cast<int64_t>(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || t.size(i) == shape[i];
    if (!ok) {
        std::string want = "[";
        for (size_t i = 0; i < shape.size(); ++i)
            want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
        want += "]";
        TORCH_CHECK_VALUE(false, "cuda_rasterizer (cpu backend): ", name, " must have shape ", want, ", got ",
                          t.sizes());
    }
}

// A NaN in an input would silently turn into NaN gradients or a garbage image: refuse it, naming the tensor.
void check_no_nan(const Tensor& t, const char* name) {
    const float* d = t.data_ptr<float>();
    const int64_t n = t.numel();
    bool nan = false;
    for (int64_t k = 0; k < n; ++k) nan |= std::isnan(d[k]);
    if (nan) {
        int64_t first = 0;
        while (!std::isnan(d[first])) ++first;
        TORCH_CHECK_VALUE(false, "cuda_rasterizer (cpu backend): ", name, " contains NaN (first at flat index ",
                          first, " of ", n, ")");
    }
}

void check_input(const Tensor& t, const char* name, std::vector<int64_t> shape) {
    check_tensor(t, name, torch::kFloat32, std::move(shape));
    check_no_nan(t, name);
}

int threads() { return std::max(1, at::get_num_threads()); }

gsr::Camera make_camera(const Tensor& view, const Tensor& campos, const Tensor& bg, const std::vector<double>& f,
                        const std::vector<int64_t>& i) {
    check_input(view, "viewmatrix", {16});
    check_input(campos, "campos", {3});
    check_input(bg, "bg", {3});
    TORCH_CHECK_VALUE(f.size() == 7, "cuda_rasterizer (cpu backend): camera floats must have 7 values, got ",
                      f.size());
    TORCH_CHECK_VALUE(i.size() == 3, "cuda_rasterizer (cpu backend): camera ints must have 3 values, got ", i.size());
    for (double v : f) TORCH_CHECK_VALUE(std::isfinite(v), "cuda_rasterizer (cpu backend): camera value ", v,
                                         " is not finite (fx, fy, cx, cy, tan(fov), scale_modifier)");
    TORCH_CHECK_VALUE(i[0] > 0 && i[1] > 0, "cuda_rasterizer (cpu backend): image size must be positive, got ",
                      i[0], "x", i[1]);
    TORCH_CHECK_VALUE(i[0] <= 65536 && i[1] <= 65536, "cuda_rasterizer (cpu backend): image size at most 65536 "
                      "per side, got ", i[0], "x", i[1]);
    TORCH_CHECK_VALUE(i[2] >= 0 && i[2] <= 3, "cuda_rasterizer (cpu backend): sh_degree must be in 0..3, got ", i[2]);
    return gsr::camera_from_args(f.data(), i.data(), view.data_ptr<float>(), campos.data_ptr<float>(),
                                 bg.data_ptr<float>());
}

int64_t gaussian_count(const Tensor& means) {
    TORCH_CHECK_VALUE(means.dim() >= 1, "cuda_rasterizer (cpu backend): means must have shape [N, 3], got ",
                      means.sizes());
    const int64_t n = means.size(0);
    // rows are indexed with int (4 * i at most; the SH rows in int64)
    TORCH_CHECK_VALUE(n <= std::numeric_limits<int>::max() / 4, "cuda_rasterizer (cpu backend): at most ",
                      std::numeric_limits<int>::max() / 4, " Gaussians per call, got ", n);
    return n;
}

// -> (means2d [N,2], conics [N,3], colors [N,3] (empty without shs), depths [N], radii [N] int32,
//     tiles_touched [N] int32, clamped [N,3] uint8)
std::vector<Tensor> preprocess_forward(const Tensor& means, const Tensor& scales, const Tensor& rotations,
                                       const std::optional<Tensor>& shs, const Tensor& view, const Tensor& campos,
                                       const Tensor& bg, const std::vector<double>& f, const std::vector<int64_t>& i) {
    const int64_t n = gaussian_count(means);
    check_input(means, "means", {n, 3});
    check_input(scales, "scales", {n, 3});
    check_input(rotations, "rotations", {n, 4});
    const gsr::Camera cam = make_camera(view, campos, bg, f, i);
    int64_t K = 0;
    if (shs) {
        check_input(*shs, "shs", {n, -1, 3});
        K = shs->size(1);
        TORCH_CHECK_VALUE(K >= (cam.sh_degree + 1) * (cam.sh_degree + 1), "cuda_rasterizer (cpu backend): sh_degree ",
                          cam.sh_degree, " needs ", (cam.sh_degree + 1) * (cam.sh_degree + 1),
                          " SH coefficients, shs has ", K);
    }
    const auto opt = means.options();
    Tensor means2d = torch::empty({n, 2}, opt);
    Tensor conics = torch::empty({n, 3}, opt);
    Tensor colors = shs ? torch::empty({n, 3}, opt) : torch::empty({0}, opt);
    Tensor depths = torch::empty({n}, opt);
    Tensor radii = torch::empty({n}, opt.dtype(torch::kInt32));
    Tensor tiles = torch::empty({n}, opt.dtype(torch::kInt32));
    Tensor clamped = torch::zeros({shs ? n : 0, 3}, opt.dtype(torch::kUInt8));

    gsr::PreprocessParams p{};
    p.n = static_cast<int>(n);
    p.means = means.data_ptr<float>();
    p.scales = scales.data_ptr<float>();
    p.rotations = rotations.data_ptr<float>();
    p.shs = shs ? shs->data_ptr<float>() : nullptr;
    p.sh_coeffs = static_cast<int>(K);
    p.means2d = means2d.data_ptr<float>();
    p.conics = conics.data_ptr<float>();
    p.colors = shs ? colors.data_ptr<float>() : nullptr;
    p.depths = depths.data_ptr<float>();
    p.radii = radii.data_ptr<int>();
    p.tiles_touched = tiles.data_ptr<int>();
    p.clamped = shs ? clamped.data_ptr<uint8_t>() : nullptr;
    {
        pybind11::gil_scoped_release nogil;
        gsr::cpu::preprocess(cam, p, threads());
    }
    return {means2d, conics, colors, depths, radii, tiles, clamped};
}

// -> (point_list [M] int32, ranges [num_tiles, 2] int32, offsets [N] int64, pair_pos [M] int32)
std::vector<Tensor> bin_gaussians(const Tensor& means2d, const Tensor& depths, const Tensor& radii,
                                  const Tensor& tiles_touched, const Tensor& view, const Tensor& campos,
                                  const Tensor& bg, const std::vector<double>& f, const std::vector<int64_t>& i) {
    const int64_t n = gaussian_count(means2d);
    check_tensor(means2d, "means2d", torch::kFloat32, {n, 2});
    check_tensor(depths, "depths", torch::kFloat32, {n});
    check_tensor(radii, "radii", torch::kInt32, {n});
    check_tensor(tiles_touched, "tiles_touched", torch::kInt32, {n});
    const gsr::Camera cam = make_camera(view, campos, bg, f, i);
    const int64_t num_tiles = static_cast<int64_t>(cam.grid_x) * cam.grid_y;
    const auto opt_i = means2d.options().dtype(torch::kInt32);
    Tensor offsets = torch::empty({n}, means2d.options().dtype(torch::kInt64));
    const int* touched = tiles_touched.data_ptr<int>();
    for (int64_t k = 0; k < n; ++k)
        TORCH_CHECK_VALUE(touched[k] >= 0, "cuda_rasterizer (cpu backend): tiles_touched[", k, "] is negative");
    const int64_t total = gsr::cpu::pair_offsets(static_cast<int>(n), touched, offsets.data_ptr<int64_t>());
    TORCH_CHECK_VALUE(total <= std::numeric_limits<int>::max(), "cuda_rasterizer (cpu backend): the Gaussians touch ",
                      total, " (Gaussian, tile) pairs in total, more than ", std::numeric_limits<int>::max(),
                      " (INT_MAX). Render fewer or smaller Gaussians (scale_modifier), or a smaller image, per call");
    Tensor point_list = torch::empty({total}, opt_i);
    Tensor pair_pos = torch::empty({total}, opt_i);
    Tensor ranges = torch::empty({num_tiles, 2}, opt_i);
    gsr::BinningParams b{};
    b.n = static_cast<int>(n);
    b.means2d = means2d.data_ptr<float>();
    b.depths = depths.data_ptr<float>();
    b.radii = radii.data_ptr<int>();
    b.tiles_touched = touched;
    b.offsets = offsets.data_ptr<int64_t>();
    b.num_rendered = static_cast<int>(total);
    const gsr::cpu::BinOutputs out{point_list.data_ptr<int>(), ranges.data_ptr<int>(), pair_pos.data_ptr<int>()};
    {
        pybind11::gil_scoped_release nogil;
        gsr::cpu::bin(cam, b, out, threads());
    }
    return {point_list, ranges, offsets, pair_pos};
}

gsr::RenderParams render_params(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                const Tensor& opacities, const Tensor& point_list, const Tensor& ranges,
                                const gsr::Camera& cam, bool check_values) {
    const int64_t n = gaussian_count(means2d);
    check_tensor(means2d, "means2d", torch::kFloat32, {n, 2});
    check_tensor(conics, "conics", torch::kFloat32, {n, 3});
    check_tensor(colors, "colors", torch::kFloat32, {n, 3});
    check_tensor(opacities, "opacities", torch::kFloat32, {n});
    check_tensor(point_list, "point_list", torch::kInt32, {-1});
    check_tensor(ranges, "ranges", torch::kInt32, {static_cast<int64_t>(cam.grid_x) * cam.grid_y, 2});
    if (check_values) {
        // means2d and conics are not checked: a culled Gaussian may carry a NaN conic (from an inf scale),
        // and it is never composited (a NaN position touches no tile)
        check_no_nan(colors, "colors");
        check_no_nan(opacities, "opacities");
        // the ranges and ids index memory: check them once, here, rather than trust them
        const int* r = ranges.data_ptr<int>();
        const int* ids = point_list.data_ptr<int>();
        const int64_t m = point_list.numel();
        for (int64_t t = 0; t < ranges.size(0); ++t)
            TORCH_CHECK_VALUE(0 <= r[2 * t] && r[2 * t] <= r[2 * t + 1] && r[2 * t + 1] <= m,
                              "cuda_rasterizer (cpu backend): ranges[", t, "] = [", r[2 * t], ", ", r[2 * t + 1],
                              ") is not a range of point_list (", m, " entries)");
        for (int64_t k = 0; k < m; ++k)
            TORCH_CHECK_VALUE(0 <= ids[k] && ids[k] < n, "cuda_rasterizer (cpu backend): point_list[", k, "] = ",
                              ids[k], " is not a Gaussian index (N = ", n, ")");
    }
    gsr::RenderParams p{};
    p.n = static_cast<int>(n);
    p.means2d = means2d.data_ptr<float>();
    p.conics = conics.data_ptr<float>();
    p.colors = colors.data_ptr<float>();
    p.opacities = opacities.data_ptr<float>();
    p.point_list = point_list.data_ptr<int>();
    p.ranges = ranges.data_ptr<int>();
    return p;
}

// depths [N]: the Gaussians' camera-space z, composited into depth in the same pass.
// -> (image [3,H,W], final_T [H,W], n_contrib [H,W] int32, depth [H,W] expected depth sum alpha * T * z)
std::vector<Tensor> render_forward(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                   const Tensor& opacities, const Tensor& depths, const Tensor& point_list,
                                   const Tensor& ranges, const Tensor& view, const Tensor& campos, const Tensor& bg,
                                   const std::vector<double>& f, const std::vector<int64_t>& i) {
    const gsr::Camera cam = make_camera(view, campos, bg, f, i);
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges, cam, true);
    check_tensor(depths, "depths", torch::kFloat32, {means2d.size(0)});
    const auto opt = means2d.options();
    Tensor image = torch::empty({3, cam.height, cam.width}, opt);
    Tensor final_T = torch::empty({cam.height, cam.width}, opt);
    Tensor n_contrib = torch::empty({cam.height, cam.width}, opt.dtype(torch::kInt32));
    Tensor depth = torch::empty({cam.height, cam.width}, opt);
    p.depths = depths.data_ptr<float>();
    p.image = image.data_ptr<float>();
    p.final_T = final_T.data_ptr<float>();
    p.n_contrib = n_contrib.data_ptr<int>();
    p.depth = depth.data_ptr<float>();
    {
        pybind11::gil_scoped_release nogil;
        gsr::cpu::render_forward(cam, p, threads());
    }
    return {image, final_T, n_contrib, depth};
}

// -> (grad_means2d [N,2], grad_conics [N,3], grad_colors [N,3], grad_opacities [N])
std::vector<Tensor> render_backward(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                    const Tensor& opacities, const Tensor& point_list, const Tensor& ranges,
                                    const Tensor& offsets, const Tensor& pair_pos, const Tensor& final_T,
                                    const Tensor& n_contrib, const Tensor& grad_image,
                                    const std::optional<Tensor>& grad_final_T, const Tensor& view,
                                    const Tensor& campos, const Tensor& bg, const std::vector<double>& f,
                                    const std::vector<int64_t>& i) {
    const gsr::Camera cam = make_camera(view, campos, bg, f, i);
    // the forward's own outputs: their ids and ranges were checked there
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges, cam, false);
    const int64_t n = means2d.size(0);
    const int64_t m = point_list.numel();
    check_tensor(offsets, "offsets", torch::kInt64, {n});
    check_tensor(pair_pos, "pair_pos", torch::kInt32, {m});
    TORCH_CHECK_VALUE(n == 0 || offsets.data_ptr<int64_t>()[n - 1] == m,
                      "cuda_rasterizer (cpu backend): offsets do not match point_list");
    check_tensor(final_T, "final_T", torch::kFloat32, {cam.height, cam.width});
    check_tensor(n_contrib, "n_contrib", torch::kInt32, {cam.height, cam.width});
    check_tensor(grad_image, "grad_image", torch::kFloat32, {3, cam.height, cam.width});
    if (grad_final_T) check_tensor(*grad_final_T, "grad_final_T", torch::kFloat32, {cam.height, cam.width});
    const auto opt = means2d.options();
    Tensor g_means2d = torch::empty({n, 2}, opt);
    Tensor g_conics = torch::empty({n, 3}, opt);
    Tensor g_colors = torch::empty({n, 3}, opt);
    Tensor g_opacities = torch::empty({n}, opt);
    Tensor partial = torch::empty({m * gsr::kGradValues}, opt);
    p.final_T = final_T.data_ptr<float>();
    p.n_contrib = n_contrib.data_ptr<int>();
    p.grad_image = grad_image.data_ptr<float>();
    p.grad_final_T = grad_final_T ? grad_final_T->data_ptr<float>() : nullptr;
    p.grad_means2d = g_means2d.data_ptr<float>();
    p.grad_conics = g_conics.data_ptr<float>();
    p.grad_colors = g_colors.data_ptr<float>();
    p.grad_opacities = g_opacities.data_ptr<float>();
    gsr::BinningParams b{};
    b.n = static_cast<int>(n);
    b.offsets = offsets.data_ptr<int64_t>();
    const gsr::cpu::BinOutputs out{nullptr, nullptr, pair_pos.data_ptr<int>()};
    {
        pybind11::gil_scoped_release nogil;
        gsr::cpu::render_backward(cam, p, b, out, partial.data_ptr<float>(), threads());
    }
    return {g_means2d, g_conics, g_colors, g_opacities};
}

// -> (grad_means [N,3], grad_scales [N,3], grad_rotations [N,4], grad_shs [N,K,3] or None)
std::vector<std::optional<Tensor>> preprocess_backward(
        const Tensor& means, const Tensor& scales, const Tensor& rotations, const std::optional<Tensor>& shs,
        const Tensor& tiles_touched, const Tensor& clamped, const Tensor& grad_means2d, const Tensor& grad_conics,
        const std::optional<Tensor>& grad_colors, const std::optional<Tensor>& grad_depths, const Tensor& view,
        const Tensor& campos, const Tensor& bg, const std::vector<double>& f, const std::vector<int64_t>& i) {
    const int64_t n = gaussian_count(means);
    check_tensor(means, "means", torch::kFloat32, {n, 3});
    check_tensor(scales, "scales", torch::kFloat32, {n, 3});
    check_tensor(rotations, "rotations", torch::kFloat32, {n, 4});
    check_tensor(tiles_touched, "tiles_touched", torch::kInt32, {n});
    check_tensor(grad_means2d, "grad_means2d", torch::kFloat32, {n, 2});
    check_tensor(grad_conics, "grad_conics", torch::kFloat32, {n, 3});
    if (grad_depths) check_tensor(*grad_depths, "grad_depths", torch::kFloat32, {n});
    const gsr::Camera cam = make_camera(view, campos, bg, f, i);
    int64_t K = 0;
    if (shs) {
        check_tensor(*shs, "shs", torch::kFloat32, {n, -1, 3});
        K = shs->size(1);
        check_tensor(clamped, "clamped", torch::kUInt8, {n, 3});
        if (grad_colors) check_tensor(*grad_colors, "grad_colors", torch::kFloat32, {n, 3});
    }
    const auto opt = means.options();
    Tensor g_means = torch::empty({n, 3}, opt);
    Tensor g_scales = torch::empty({n, 3}, opt);
    Tensor g_rotations = torch::empty({n, 4}, opt);
    std::optional<Tensor> g_shs;
    if (shs) g_shs = torch::empty({n, K, 3}, opt);
    gsr::PreprocessBackwardParams p{};
    p.n = static_cast<int>(n);
    p.means = means.data_ptr<float>();
    p.scales = scales.data_ptr<float>();
    p.rotations = rotations.data_ptr<float>();
    p.shs = shs ? shs->data_ptr<float>() : nullptr;
    p.sh_coeffs = static_cast<int>(K);
    p.tiles_touched = tiles_touched.data_ptr<int>();
    p.clamped = shs ? clamped.data_ptr<uint8_t>() : nullptr;
    p.grad_means2d = grad_means2d.data_ptr<float>();
    p.grad_conics = grad_conics.data_ptr<float>();
    p.grad_colors = (shs && grad_colors) ? grad_colors->data_ptr<float>() : nullptr;
    p.grad_depths = grad_depths ? grad_depths->data_ptr<float>() : nullptr;
    p.grad_means = g_means.data_ptr<float>();
    p.grad_scales = g_scales.data_ptr<float>();
    p.grad_rotations = g_rotations.data_ptr<float>();
    p.grad_shs = g_shs ? g_shs->data_ptr<float>() : nullptr;
    {
        pybind11::gil_scoped_release nogil;
        gsr::cpu::preprocess_backward(cam, p, threads());
    }
    return {g_means, g_scales, g_rotations, g_shs};
}

// The 3DGS loss's SSIM term (cpu_ssim.h), for gs_trainer/losses.py.  image (rendered) and gt: [C, H, W] float32.
void check_ssim_images(const Tensor& image, const Tensor& gt) {
    TORCH_CHECK_VALUE(image.dim() == 3, "cuda_rasterizer (cpu backend): ssim: image must be [C, H, W], got ",
                      image.sizes());
    check_tensor(image, "ssim: image", torch::kFloat32, {-1, -1, -1});
    check_tensor(gt, "ssim: gt", torch::kFloat32, {image.size(0), image.size(1), image.size(2)});
    TORCH_CHECK_VALUE(image.numel() > 0, "cuda_rasterizer (cpu backend): ssim: image has no pixels, shape ",
                      image.sizes());
}

// -> (mean SSIM, a float32 scalar; [3, C, H, W] per-pixel dS/dmu_x, dS/dE[x^2], dS/dE[xy] when need_grad,
//     else an empty tensor)
std::vector<Tensor> ssim_forward(const Tensor& image, const Tensor& gt, bool need_grad) {
    check_ssim_images(image, gt);
    const int64_t C = image.size(0), H = image.size(1), W = image.size(2);
    Tensor grad = need_grad ? torch::empty({3, C, H, W}, image.options()) : torch::empty({0}, image.options());
    double mean = 0.0;
    {
        pybind11::gil_scoped_release nogil;
        mean = gsr::cpu::ssim::forward(image.data_ptr<float>(), gt.data_ptr<float>(), C, H, W,
                                       need_grad ? grad.data_ptr<float>() : nullptr, threads());
    }
    return {torch::scalar_tensor(mean, image.options()), grad};
}

// -> dL/dimage [C, H, W] for the upstream gradient grad_ssim (a scalar) of ssim_forward's mean; ssim_grad: its maps.
Tensor ssim_backward(const Tensor& image, const Tensor& gt, const Tensor& ssim_grad, const Tensor& grad_ssim) {
    check_ssim_images(image, gt);
    const int64_t C = image.size(0), H = image.size(1), W = image.size(2);
    check_tensor(ssim_grad, "ssim: ssim_grad", torch::kFloat32, {3, C, H, W});
    TORCH_CHECK_VALUE(grad_ssim.numel() == 1, "cuda_rasterizer (cpu backend): ssim: grad_ssim must be a scalar, got ",
                      grad_ssim.sizes());
    const double g = grad_ssim.item<double>();
    Tensor dx = torch::empty({C, H, W}, image.options());
    {
        pybind11::gil_scoped_release nogil;
        gsr::cpu::ssim::backward(image.data_ptr<float>(), gt.data_ptr<float>(), ssim_grad.data_ptr<float>(), C, H,
                                 W, g, dx.data_ptr<float>(), threads());
    }
    return dx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "cuda_rasterizer's CPU backend: the kernels' math.cuh in host loops over tiles and Gaussians";
    m.def("preprocess_forward", &preprocess_forward);
    m.def("bin_gaussians", &bin_gaussians);
    m.def("render_forward", &render_forward);
    m.def("render_backward", &render_backward);
    m.def("preprocess_backward", &preprocess_backward);
    m.def("openmp", &gsr::cpu::openmp_enabled, "whether the loops were compiled with OpenMP");
    m.def("num_threads", &threads, "the thread count the loops use now (torch.get_num_threads())");
    m.def("isa", [] { return std::string(gsr::cpu::kIsaName); },
          "the instruction set the extension was built for: avx512 (16-lane tile loops), avx2 or baseline");
    m.def("ssim_forward", &ssim_forward, "mean SSIM of [C, H, W] float32 images, and the maps its backward takes");
    m.def("ssim_backward", &ssim_backward, "dL/dimage of ssim_forward's mean for an upstream scalar gradient");
}
