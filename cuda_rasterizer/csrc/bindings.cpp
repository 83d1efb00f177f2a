// Torch glue: checks the inputs (device, dtype, contiguity, shape; messages name the argument),
// allocates outputs and temporary buffers, and calls the torch-free launchers (launchers.h).
// Built by torch.utils.cpp_extension.load with g++; the kernels come in a static library built by nvcc.
#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "launchers.h"

namespace {

using torch::Tensor;

void check_status(const gsr::Status& s) {
    TORCH_CHECK(s.code == 0, "cuda_rasterizer: ", s.kernel, " failed: ", gsr::error_string(s.code),
                " (set CUDA_RASTERIZER_DEBUG=1 to synchronise after each launch and name the failing kernel)");
}

void check_tensor(const Tensor& t, const char* name, const torch::Device& device, at::ScalarType dtype,
                  std::vector<int64_t> shape) {
    TORCH_CHECK(t.device() == device, "cuda_rasterizer: ", name, " must be on ", device, ", got ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, "cuda_rasterizer: ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "cuda_rasterizer: ", name, " must be contiguous");
    bool ok = t.dim() == static_cast<int64_t>(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || t.size(i) == shape[i];
    if (!ok) {
        std::string want = "[";
        for (size_t i = 0; i < shape.size(); ++i)
            want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
        want += "]";
        TORCH_CHECK(false, "cuda_rasterizer: ", name, " must have shape ", want, ", got ", t.sizes());
    }
}

// The camera: view [16], campos [3], bg [3] float32 tensors on the device; floats (fx, fy, cx - 0.5,
// cy - 0.5, limx, limy, scale_modifier); ints (width, height, sh_degree).
gsr::Camera make_camera(const Tensor& view, const Tensor& campos, const Tensor& bg, const std::vector<double>& f,
                        const std::vector<int64_t>& i, const torch::Device& device) {
    check_tensor(view, "viewmatrix", device, torch::kFloat32, {16});
    check_tensor(campos, "campos", device, torch::kFloat32, {3});
    check_tensor(bg, "bg", device, torch::kFloat32, {3});
    TORCH_CHECK(f.size() == 7, "cuda_rasterizer: camera floats must have 7 values, got ", f.size());
    TORCH_CHECK(i.size() == 3, "cuda_rasterizer: camera ints must have 3 values, got ", i.size());
    TORCH_CHECK(i[0] > 0 && i[1] > 0, "cuda_rasterizer: image size must be positive, got ", i[0], "x", i[1]);
    TORCH_CHECK(i[2] >= 0 && i[2] <= 3, "cuda_rasterizer: sh_degree must be in 0..3, got ", i[2]);
    return gsr::camera_from_args(f.data(), i.data(), view.data_ptr<float>(), campos.data_ptr<float>(),
                                 bg.data_ptr<float>());
}

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }

void check_device(const Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), "cuda_rasterizer: ", name, " must be a CUDA tensor, got device ", t.device());
}

// -> (means2d [N,2], conics [N,3], colors [N,3] (empty without shs), depths [N], radii [N] int32,
//     tiles_touched [N] int32, clamped [N,3] uint8)
std::vector<Tensor> preprocess_forward(const Tensor& means, const Tensor& scales, const Tensor& rotations,
                                       const std::optional<Tensor>& shs, const Tensor& view, const Tensor& campos,
                                       const Tensor& bg, const std::vector<double>& f, const std::vector<int64_t>& i,
                                       int64_t stream, bool debug) {
    check_device(means, "means");
    const auto device = means.device();
    const c10::DeviceGuard guard(device);
    const int64_t n = means.size(0);
    check_tensor(means, "means", device, torch::kFloat32, {n, 3});
    check_tensor(scales, "scales", device, torch::kFloat32, {n, 3});
    check_tensor(rotations, "rotations", device, torch::kFloat32, {n, 4});
    // the kernels index per-Gaussian rows with int (4 * i at most; the SH rows in int64)
    TORCH_CHECK(n <= std::numeric_limits<int>::max() / 4, "cuda_rasterizer: at most ",
                std::numeric_limits<int>::max() / 4, " Gaussians per call, got ", n);
    const gsr::Camera cam = make_camera(view, campos, bg, f, i, device);
    int64_t K = 0;
    if (shs) {
        check_tensor(*shs, "shs", device, torch::kFloat32, {n, -1, 3});
        K = shs->size(1);
        TORCH_CHECK(K >= (cam.sh_degree + 1) * (cam.sh_degree + 1), "cuda_rasterizer: sh_degree ", cam.sh_degree,
                    " needs ", (cam.sh_degree + 1) * (cam.sh_degree + 1), " SH coefficients, shs has ", K);
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
    check_status(gsr::launch_preprocess(cam, p, as_stream(stream), debug));
    return {means2d, conics, colors, depths, radii, tiles, clamped};
}

// -> (point_list [M] int32, ranges [num_tiles, 2] int32).  Synchronises once to learn M.
std::vector<Tensor> bin_gaussians(const Tensor& means2d, const Tensor& depths, const Tensor& radii,
                                  const Tensor& tiles_touched, const Tensor& view, const Tensor& campos,
                                  const Tensor& bg, const std::vector<double>& f, const std::vector<int64_t>& i,
                                  int64_t stream, bool debug) {
    check_device(means2d, "means2d");
    const auto device = means2d.device();
    const c10::DeviceGuard guard(device);
    const int64_t n = means2d.size(0);
    check_tensor(means2d, "means2d", device, torch::kFloat32, {n, 2});
    check_tensor(depths, "depths", device, torch::kFloat32, {n});
    check_tensor(radii, "radii", device, torch::kInt32, {n});
    check_tensor(tiles_touched, "tiles_touched", device, torch::kInt32, {n});
    const gsr::Camera cam = make_camera(view, campos, bg, f, i, device);
    const int64_t num_tiles = static_cast<int64_t>(cam.grid_x) * cam.grid_y;
    const auto opt_i = means2d.options().dtype(torch::kInt32);
    const auto opt_b = means2d.options().dtype(torch::kUInt8);
    Tensor ranges = torch::empty({num_tiles, 2}, opt_i);
    void* s = as_stream(stream);

    // The scan accumulates in int64, so the total is exact; the sort and the tile ranges index with int.
    int64_t total = 0;
    Tensor offsets = torch::empty({n}, means2d.options().dtype(torch::kInt64));
    int64_t* offsets_ptr = offsets.data_ptr<int64_t>();
    if (n > 0) {
        const size_t scan_bytes = gsr::scan_temp_bytes(static_cast<int>(n));
        Tensor scan_temp = torch::empty({static_cast<int64_t>(scan_bytes) + 1}, opt_b);
        check_status(gsr::launch_scan(tiles_touched.data_ptr<int>(), offsets_ptr, static_cast<int>(n),
                                      scan_temp.data_ptr(), scan_bytes, s, debug));
        check_status(gsr::read_int64_sync(offsets_ptr + (n - 1), &total, s));
    }
    TORCH_CHECK(total >= 0 && total <= std::numeric_limits<int>::max(),
                "cuda_rasterizer: the Gaussians touch ", total, " (Gaussian, tile) pairs in total, more than ",
                std::numeric_limits<int>::max(), " (INT_MAX): the radix sort and the tile ranges index them with "
                "int32. Render fewer or smaller Gaussians (scale_modifier), or a smaller image, per call");
    const int num_rendered = static_cast<int>(total);
    const int end_bit = gsr::sort_end_bit(static_cast<int>(num_tiles));
    const int64_t m = num_rendered;
    // keys: unsorted and sorted halves of one buffer, freed on return; the sorted values are their own
    // tensor, since the point list they become lives as long as the autograd graph
    Tensor keys = torch::empty({2 * m}, means2d.options().dtype(torch::kInt64));
    Tensor values = torch::empty({m}, opt_i);
    Tensor point_list = torch::empty({m}, opt_i);
    const size_t sort_bytes = m > 0 ? gsr::sort_temp_bytes(num_rendered, end_bit) : 0;
    Tensor sort_temp = torch::empty({static_cast<int64_t>(sort_bytes) + 1}, opt_b);

    gsr::BinningParams b{};
    b.n = static_cast<int>(n);
    b.means2d = means2d.data_ptr<float>();
    b.depths = depths.data_ptr<float>();
    b.radii = radii.data_ptr<int>();
    b.tiles_touched = tiles_touched.data_ptr<int>();
    b.offsets = offsets_ptr;
    b.num_rendered = num_rendered;
    auto* key_base = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
    b.keys = key_base;
    b.values = values.data_ptr<int>();
    b.ranges = ranges.data_ptr<int>();
    check_status(gsr::launch_binning(cam, b, key_base + m, point_list.data_ptr<int>(), sort_temp.data_ptr(),
                                     sort_bytes, s, debug));
    return {point_list, ranges};
}

gsr::RenderParams render_params(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                const Tensor& opacities, const Tensor& point_list, const Tensor& ranges,
                                const gsr::Camera& cam) {
    const auto device = means2d.device();
    const int64_t n = means2d.size(0);
    check_tensor(means2d, "means2d", device, torch::kFloat32, {n, 2});
    check_tensor(conics, "conics", device, torch::kFloat32, {n, 3});
    check_tensor(colors, "colors", device, torch::kFloat32, {n, 3});
    check_tensor(opacities, "opacities", device, torch::kFloat32, {n});
    check_tensor(point_list, "point_list", device, torch::kInt32, {-1});
    check_tensor(ranges, "ranges", device, torch::kInt32, {static_cast<int64_t>(cam.grid_x) * cam.grid_y, 2});
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
                                   const std::vector<double>& f, const std::vector<int64_t>& i, int64_t stream,
                                   bool debug) {
    check_device(means2d, "means2d");
    const auto device = means2d.device();
    const c10::DeviceGuard guard(device);
    const gsr::Camera cam = make_camera(view, campos, bg, f, i, device);
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges, cam);
    check_tensor(depths, "depths", device, torch::kFloat32, {means2d.size(0)});
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
    check_status(gsr::launch_render_forward(cam, p, as_stream(stream), debug));
    return {image, final_T, n_contrib, depth};
}

// The backward render into grads [N * kGradValues] (means2d 2N | conics 3N | colours 3N | opacities N), which
// the kernel accumulates into: the caller zeroes it.  -> views (grad_means2d [N,2], grad_conics [N,3],
// grad_colors [N,3], grad_opacities [N]) of it.
std::vector<Tensor> render_backward_impl(const Tensor& grads, const Tensor& means2d, const Tensor& conics,
                                         const Tensor& colors, const Tensor& opacities, const Tensor& point_list,
                                         const Tensor& ranges, const Tensor& final_T, const Tensor& n_contrib,
                                         const Tensor& grad_image, const std::optional<Tensor>& grad_final_T,
                                         const gsr::Camera& cam, int64_t mode, int64_t balance_threshold,
                                         int64_t stream, bool debug) {
    const auto device = means2d.device();
    TORCH_CHECK(mode >= gsr::kBaseline && mode <= gsr::kFloor, "cuda_rasterizer: unknown atomics mode ", mode);
    TORCH_CHECK(balance_threshold >= 1 && balance_threshold <= 33,
                "cuda_rasterizer: balance_threshold must be in 1..33, got ", balance_threshold);
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges, cam);
    check_tensor(final_T, "final_T", device, torch::kFloat32, {cam.height, cam.width});
    check_tensor(n_contrib, "n_contrib", device, torch::kInt32, {cam.height, cam.width});
    check_tensor(grad_image, "grad_image", device, torch::kFloat32, {3, cam.height, cam.width});
    if (grad_final_T) check_tensor(*grad_final_T, "grad_final_T", device, torch::kFloat32, {cam.height, cam.width});
    const int64_t n = means2d.size(0);
    check_tensor(grads, "grads", device, torch::kFloat32, {n * gsr::kGradValues});
    const auto opt = means2d.options();
    Tensor g_means2d = grads.narrow(0, 0, 2 * n).view({n, 2});
    Tensor g_conics = grads.narrow(0, 2 * n, 3 * n).view({n, 3});
    Tensor g_colors = grads.narrow(0, 5 * n, 3 * n).view({n, 3});
    Tensor g_opacities = grads.narrow(0, 8 * n, n);
    Tensor dummy = mode == gsr::kFloor ? torch::empty({gsr::kBlockSize * gsr::kGradValues}, opt) : torch::empty({0}, opt);
    p.final_T = final_T.data_ptr<float>();
    p.n_contrib = n_contrib.data_ptr<int>();
    p.grad_image = grad_image.data_ptr<float>();
    p.grad_final_T = grad_final_T ? grad_final_T->data_ptr<float>() : nullptr;
    p.grad_means2d = g_means2d.data_ptr<float>();
    p.grad_conics = g_conics.data_ptr<float>();
    p.grad_colors = g_colors.data_ptr<float>();
    p.grad_opacities = g_opacities.data_ptr<float>();
    p.dummy = mode == gsr::kFloor ? dummy.data_ptr<float>() : nullptr;
    p.floor_store_above = std::numeric_limits<float>::infinity();  // "floor" never stores (atomics.cuh)
    check_status(gsr::launch_render_backward(cam, p, static_cast<int>(mode), static_cast<int>(balance_threshold),
                                             as_stream(stream), debug));
    return {g_means2d, g_conics, g_colors, g_opacities};
}

// -> (grad_means2d [N,2], grad_conics [N,3], grad_colors [N,3], grad_opacities [N]), freshly zeroed.
std::vector<Tensor> render_backward(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                    const Tensor& opacities, const Tensor& point_list, const Tensor& ranges,
                                    const Tensor& final_T, const Tensor& n_contrib, const Tensor& grad_image,
                                    const std::optional<Tensor>& grad_final_T, const Tensor& view,
                                    const Tensor& campos, const Tensor& bg, const std::vector<double>& f,
                                    const std::vector<int64_t>& i, int64_t mode, int64_t balance_threshold,
                                    int64_t stream, bool debug) {
    check_device(means2d, "means2d");
    const c10::DeviceGuard guard(means2d.device());
    const gsr::Camera cam = make_camera(view, campos, bg, f, i, means2d.device());
    // one zeroed buffer (one memset) holding the four gradients
    Tensor grads = torch::zeros({means2d.size(0) * gsr::kGradValues}, means2d.options());
    return render_backward_impl(grads, means2d, conics, colors, opacities, point_list, ranges, final_T, n_contrib,
                                grad_image, grad_final_T, cam, mode, balance_threshold, stream, debug);
}

// As render_backward, into the caller's grads [N * 9] float32 (zeroed by the caller; the kernel adds to
// it): no allocation and no memset, so that a probe can time the kernel alone.  -> views of grads.
std::vector<Tensor> render_backward_into(const Tensor& grads, const Tensor& means2d, const Tensor& conics,
                                         const Tensor& colors, const Tensor& opacities, const Tensor& point_list,
                                         const Tensor& ranges, const Tensor& final_T, const Tensor& n_contrib,
                                         const Tensor& grad_image, const std::optional<Tensor>& grad_final_T,
                                         const Tensor& view, const Tensor& campos, const Tensor& bg,
                                         const std::vector<double>& f, const std::vector<int64_t>& i, int64_t mode,
                                         int64_t balance_threshold, int64_t stream, bool debug) {
    check_device(means2d, "means2d");
    const c10::DeviceGuard guard(means2d.device());
    const gsr::Camera cam = make_camera(view, campos, bg, f, i, means2d.device());
    return render_backward_impl(grads, means2d, conics, colors, opacities, point_list, ranges, final_T, n_contrib,
                                grad_image, grad_final_T, cam, mode, balance_threshold, stream, debug);
}

// -> [33] int64 histogram of contributing-lane counts per (warp, Gaussian).
Tensor lane_histogram(const Tensor& means2d, const Tensor& conics, const Tensor& colors, const Tensor& opacities,
                      const Tensor& point_list, const Tensor& ranges, const Tensor& n_contrib, const Tensor& view,
                      const Tensor& campos, const Tensor& bg, const std::vector<double>& f,
                      const std::vector<int64_t>& i, int64_t stream, bool debug) {
    check_device(means2d, "means2d");
    const auto device = means2d.device();
    const c10::DeviceGuard guard(device);
    const gsr::Camera cam = make_camera(view, campos, bg, f, i, device);
    gsr::RenderParams p = render_params(means2d, conics, colors, opacities, point_list, ranges, cam);
    check_tensor(n_contrib, "n_contrib", device, torch::kInt32, {cam.height, cam.width});
    Tensor hist = torch::zeros({33}, means2d.options().dtype(torch::kInt64));
    p.n_contrib = n_contrib.data_ptr<int>();
    p.histogram = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
    check_status(gsr::launch_lane_histogram(cam, p, as_stream(stream), debug));
    return hist;
}

// -> (grad_means [N,3], grad_scales [N,3], grad_rotations [N,4], grad_shs [N,K,3] or empty)
std::vector<Tensor> preprocess_backward(const Tensor& means, const Tensor& scales, const Tensor& rotations,
                                        const std::optional<Tensor>& shs, const Tensor& tiles_touched,
                                        const Tensor& clamped, const Tensor& grad_means2d, const Tensor& grad_conics,
                                        const std::optional<Tensor>& grad_colors,
                                        const std::optional<Tensor>& grad_depths, const Tensor& view,
                                        const Tensor& campos, const Tensor& bg, const std::vector<double>& f,
                                        const std::vector<int64_t>& i, int64_t stream, bool debug) {
    check_device(means, "means");
    const auto device = means.device();
    const c10::DeviceGuard guard(device);
    const int64_t n = means.size(0);
    check_tensor(means, "means", device, torch::kFloat32, {n, 3});
    check_tensor(scales, "scales", device, torch::kFloat32, {n, 3});
    check_tensor(rotations, "rotations", device, torch::kFloat32, {n, 4});
    check_tensor(tiles_touched, "tiles_touched", device, torch::kInt32, {n});
    check_tensor(grad_means2d, "grad_means2d", device, torch::kFloat32, {n, 2});
    check_tensor(grad_conics, "grad_conics", device, torch::kFloat32, {n, 3});
    const gsr::Camera cam = make_camera(view, campos, bg, f, i, device);
    int64_t K = 0;
    if (shs) {
        check_tensor(*shs, "shs", device, torch::kFloat32, {n, -1, 3});
        K = shs->size(1);
        check_tensor(clamped, "clamped", device, torch::kUInt8, {n, 3});
        TORCH_CHECK(grad_colors.has_value(), "cuda_rasterizer: grad_colors is needed with shs");
        check_tensor(*grad_colors, "grad_colors", device, torch::kFloat32, {n, 3});
    }
    if (grad_depths) check_tensor(*grad_depths, "grad_depths", device, torch::kFloat32, {n});
    const auto opt = means.options();
    Tensor g_means = torch::empty({n, 3}, opt);
    Tensor g_scales = torch::empty({n, 3}, opt);
    Tensor g_rotations = torch::empty({n, 4}, opt);
    Tensor g_shs = shs ? torch::empty({n, K, 3}, opt) : torch::empty({0}, opt);

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
    p.grad_colors = shs ? grad_colors->data_ptr<float>() : nullptr;
    p.grad_depths = grad_depths ? grad_depths->data_ptr<float>() : nullptr;
    p.grad_means = g_means.data_ptr<float>();
    p.grad_scales = g_scales.data_ptr<float>();
    p.grad_rotations = g_rotations.data_ptr<float>();
    p.grad_shs = shs ? g_shs.data_ptr<float>() : nullptr;
    check_status(gsr::launch_preprocess_backward(cam, p, as_stream(stream), debug));
    return {g_means, g_scales, g_rotations, g_shs};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "CUDA tile rasterizer for 3D Gaussian Splatting (see cuda_rasterizer/autograd.py)";
    m.def("preprocess_forward", &preprocess_forward);
    m.def("bin_gaussians", &bin_gaussians);
    m.def("render_forward", &render_forward);
    m.def("render_backward", &render_backward);
    m.def("render_backward_into", &render_backward_into);
    m.def("lane_histogram", &lane_histogram);
    m.def("preprocess_backward", &preprocess_backward);
    m.attr("ATOMICS_MODES") = py::make_tuple("baseline", "warp", "distwar", "tile", "floor");
    m.attr("BLOCK_SIZE") = gsr::kBlockSize;
}
