// Shared by the CPU test extensions (tests/cpu_math_ext.cpp, tests/csrc/kernel_emu_ext.cpp): a gsr::Camera
// built from the flat arguments the tests pass, with the tensors it points into kept alive beside it.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "rasterizer.h"

namespace test_ext {

using torch::Tensor;

struct Cam {
    Tensor view, campos, bg;  // kept alive while cam points into them
    gsr::Camera cam;
};

Cam make_cam(const Tensor& view, const Tensor& campos, const Tensor& bg, const std::vector<double>& f,
             const std::vector<int64_t>& i) {
    Cam c{view.contiguous(), campos.contiguous(), bg.contiguous(), {}};
    gsr::Camera& k = c.cam;
    k.width = static_cast<int>(i[0]);
    k.height = static_cast<int>(i[1]);
    k.grid_x = (k.width + gsr::kBlockX - 1) / gsr::kBlockX;
    k.grid_y = (k.height + gsr::kBlockY - 1) / gsr::kBlockY;
    k.fx = static_cast<float>(f[0]);
    k.fy = static_cast<float>(f[1]);
    k.cx = static_cast<float>(f[2]);
    k.cy = static_cast<float>(f[3]);
    k.limx = static_cast<float>(f[4]);
    k.limy = static_cast<float>(f[5]);
    k.scale_modifier = static_cast<float>(f[6]);
    k.sh_degree = static_cast<int>(i[2]);
    k.view = c.view.data_ptr<float>();
    k.campos = c.campos.data_ptr<float>();
    k.bg = c.bg.data_ptr<float>();
    return c;
}

float* fp(const Tensor& t) { return t.data_ptr<float>(); }

}  // namespace test_ext
