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
    c.cam = gsr::camera_from_args(f.data(), i.data(), c.view.data_ptr<float>(), c.campos.data_ptr<float>(),
                                  c.bg.data_ptr<float>());
    return c;
}

float* fp(const Tensor& t) { return t.data_ptr<float>(); }

}  // namespace test_ext
