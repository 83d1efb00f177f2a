// Per-Gaussian and per-pixel math of the rasterizer, each forward helper beside its backward (VJP) twin.
//
// Every function is __host__ __device__: the kernels call them, and so does the CPU test extension
// (tests/cpu_math_ext.cpp, built with g++), which checks them against cuda_rasterizer/reference.py.
// The semantics are those of reference.py; comments name the reference expression where it matters.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "rasterizer.h"

#ifdef __CUDACC__
#define GSR_HD __host__ __device__ __forceinline__
#define GSR_PIXEL __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define GSR_HD inline
// the per-pixel steps: always inlined on the host too, into the CPU backend's ISA-specific tile loops
#define GSR_PIXEL inline __attribute__((always_inline))
#else
#define GSR_HD inline
#define GSR_PIXEL inline
#endif

namespace gsr {

GSR_HD bool is_finite(float v) { return fabsf(v) <= 3.402823466e38f; }  // false for inf and NaN

GSR_HD float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

GSR_HD uint32_t float_bits(float v) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(v);
#else
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    return u;
#endif
}

// ----------------------------------------------------------------------------------------------------
// World to camera: p_view = R p + t with view row-major [16].

GSR_HD void transform_point(const float* view, const float p[3], float out[3]) {
    for (int r = 0; r < 3; ++r)
        out[r] = view[4 * r + 0] * p[0] + view[4 * r + 1] * p[1] + view[4 * r + 2] * p[2] + view[4 * r + 3];
}

// dL/dp (world) += R^T dL/dp_view
GSR_HD void transform_point_vjp(const float* view, const float g_view[3], float g_world[3]) {
    for (int c = 0; c < 3; ++c)
        g_world[c] += view[c] * g_view[0] + view[4 + c] * g_view[1] + view[8 + c] * g_view[2];
}

// ----------------------------------------------------------------------------------------------------
// Pixel position of a camera-space point: x = fx * X / Z + cx (cx already holds the -0.5 shift).

GSR_HD void project_mean(const Camera& cam, const float pv[3], float& mx, float& my) {
    mx = cam.fx * pv[0] / pv[2] + cam.cx;
    my = cam.fy * pv[1] / pv[2] + cam.cy;
}

GSR_HD void project_mean_vjp(const Camera& cam, const float pv[3], float g_mx, float g_my, float g_pv[3]) {
    const float iz = 1.0f / pv[2];
    g_pv[0] += g_mx * cam.fx * iz;
    g_pv[1] += g_my * cam.fy * iz;
    g_pv[2] -= (g_mx * cam.fx * pv[0] + g_my * cam.fy * pv[1]) * iz * iz;
}

// ----------------------------------------------------------------------------------------------------
// Quaternion (w, x, y, z), not normalised, to rotation matrix (row-major), as the reference.

GSR_HD void quat_to_rotmat(const float q[4], float R[9]) {
    const float r = q[0], x = q[1], y = q[2], z = q[3];
    R[0] = 1.f - 2.f * (y * y + z * z); R[1] = 2.f * (x * y - r * z);       R[2] = 2.f * (x * z + r * y);
    R[3] = 2.f * (x * y + r * z);       R[4] = 1.f - 2.f * (x * x + z * z); R[5] = 2.f * (y * z - r * x);
    R[6] = 2.f * (x * z - r * y);       R[7] = 2.f * (y * z + r * x);       R[8] = 1.f - 2.f * (x * x + y * y);
}

GSR_HD void quat_to_rotmat_vjp(const float q[4], const float G[9], float gq[4]) {
    const float r = q[0], x = q[1], y = q[2], z = q[3];
    gq[0] = 2.f * (z * (G[3] - G[1]) + y * (G[2] - G[6]) + x * (G[7] - G[5]));
    gq[1] = 2.f * (y * (G[1] + G[3]) + z * (G[2] + G[6]) + r * (G[7] - G[5])) - 4.f * x * (G[4] + G[8]);
    gq[2] = 2.f * (x * (G[1] + G[3]) + r * (G[2] - G[6]) + z * (G[5] + G[7])) - 4.f * y * (G[0] + G[8]);
    gq[3] = 2.f * (r * (G[3] - G[1]) + x * (G[2] + G[6]) + y * (G[5] + G[7])) - 4.f * z * (G[0] + G[4]);
}

// ----------------------------------------------------------------------------------------------------
// 3D covariance Sigma = M M^T with M = R diag(mod * s).  cov is a full row-major 3x3.

GSR_HD void scaled_rotation(const float s[3], float mod, const float q[4], float R[9], float M[9]) {
    quat_to_rotmat(q, R);
    const float sm[3] = {mod * s[0], mod * s[1], mod * s[2]};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) M[3 * i + j] = R[3 * i + j] * sm[j];
}

GSR_HD void compute_cov3d(const float s[3], float mod, const float q[4], float cov[9]) {
    float R[9], M[9];
    scaled_rotation(s, mod, q, R, M);
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k)
            cov[3 * i + k] = M[3 * i + 0] * M[3 * k + 0] + M[3 * i + 1] * M[3 * k + 1] + M[3 * i + 2] * M[3 * k + 2];
}

// g_cov: gradient w.r.t. the full 3x3 Sigma, symmetric.  Writes (not adds) g_s and g_q.
GSR_HD void compute_cov3d_vjp(const float s[3], float mod, const float q[4], const float g_cov[9],
                              float g_s[3], float g_q[4]) {
    float R[9], M[9];
    scaled_rotation(s, mod, q, R, M);
    // dL/dM = (G + G^T) M = 2 G M for symmetric G
    float gM[9];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            gM[3 * i + j] = 2.f * (g_cov[3 * i + 0] * M[0 + j] + g_cov[3 * i + 1] * M[3 + j] + g_cov[3 * i + 2] * M[6 + j]);
    const float sm[3] = {mod * s[0], mod * s[1], mod * s[2]};
    float gR[9];
    for (int j = 0; j < 3; ++j) {
        g_s[j] = mod * (gM[j] * R[j] + gM[3 + j] * R[3 + j] + gM[6 + j] * R[6 + j]);
        for (int i = 0; i < 3; ++i) gR[3 * i + j] = gM[3 * i + j] * sm[j];
    }
    quat_to_rotmat_vjp(q, gR, g_q);
}

// ----------------------------------------------------------------------------------------------------
// EWA projection: cov2d = T Sigma T^T with T = J W, J the Jacobian at the camera-space point clamped to
// 1.3x the frustum.  Returns (cov00, cov01, cov11) without the low-pass.

GSR_HD void ewa_jacobian_T(const Camera& cam, const float pv[3], float T[6], float& txtz, float& tytz) {
    const float z = pv[2];
    txtz = clampf(pv[0] / z, -cam.limx, cam.limx);
    tytz = clampf(pv[1] / z, -cam.limy, cam.limy);
    const float j00 = cam.fx / z, j02 = -cam.fx * txtz / z;
    const float j11 = cam.fy / z, j12 = -cam.fy * tytz / z;
    const float* W = cam.view;  // rows 0..2, columns 0..2
    for (int c = 0; c < 3; ++c) {
        T[c] = j00 * W[c] + j02 * W[8 + c];
        T[3 + c] = j11 * W[4 + c] + j12 * W[8 + c];
    }
}

GSR_HD void ewa_cov2d(const Camera& cam, const float pv[3], const float cov3d[9], float cov2d[3]) {
    float T[6], txtz, tytz;
    ewa_jacobian_T(cam, pv, T, txtz, tytz);
    float TS[6];  // T Sigma, 2x3
    for (int r = 0; r < 2; ++r)
        for (int k = 0; k < 3; ++k)
            TS[3 * r + k] = T[3 * r + 0] * cov3d[k] + T[3 * r + 1] * cov3d[3 + k] + T[3 * r + 2] * cov3d[6 + k];
    cov2d[0] = TS[0] * T[0] + TS[1] * T[1] + TS[2] * T[2];
    cov2d[1] = TS[0] * T[3] + TS[1] * T[4] + TS[2] * T[5];
    cov2d[2] = TS[3] * T[3] + TS[4] * T[4] + TS[5] * T[5];
}

// g_cov2d: gradient w.r.t. (cov00, cov01, cov11), where cov01 is the [0, 1] entry alone.
// Adds to g_pv, writes g_cov3d (symmetric 3x3).
GSR_HD void ewa_cov2d_vjp(const Camera& cam, const float pv[3], const float cov3d[9], const float g_cov2d[3],
                          float g_pv[3], float g_cov3d[9]) {
    float T[6], txtz, tytz;
    ewa_jacobian_T(cam, pv, T, txtz, tytz);
    // symmetric form of the cotangent: [[g0, g1/2], [g1/2, g2]]
    const float G[4] = {g_cov2d[0], 0.5f * g_cov2d[1], 0.5f * g_cov2d[1], g_cov2d[2]};
    // dL/dSigma = T^T G T
    float GT[6];  // G T, 2x3
    for (int r = 0; r < 2; ++r)
        for (int k = 0; k < 3; ++k) GT[3 * r + k] = G[2 * r] * T[k] + G[2 * r + 1] * T[3 + k];
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k) g_cov3d[3 * i + k] = T[i] * GT[k] + T[3 + i] * GT[3 + k];
    // dL/dT = 2 G T Sigma
    float gT[6];
    for (int r = 0; r < 2; ++r)
        for (int k = 0; k < 3; ++k)
            gT[3 * r + k] = 2.f * (GT[3 * r + 0] * cov3d[k] + GT[3 * r + 1] * cov3d[3 + k] + GT[3 * r + 2] * cov3d[6 + k]);
    // T = J W: dL/dJ = dL/dT W^T; only J00, J02, J11, J12 are variables.
    const float* W = cam.view;
    const float gj00 = gT[0] * W[0] + gT[1] * W[1] + gT[2] * W[2];
    const float gj02 = gT[0] * W[8] + gT[1] * W[9] + gT[2] * W[10];
    const float gj11 = gT[3] * W[4] + gT[4] * W[5] + gT[5] * W[6];
    const float gj12 = gT[3] * W[8] + gT[4] * W[9] + gT[5] * W[10];
    const float x = pv[0], y = pv[1], z = pv[2];
    const float iz = 1.0f / z, iz2 = iz * iz;
    g_pv[2] += -cam.fx * iz2 * gj00 - cam.fy * iz2 * gj11 + cam.fx * txtz * iz2 * gj02 + cam.fy * tytz * iz2 * gj12;
    const float g_txtz = -cam.fx * iz * gj02;
    const float g_tytz = -cam.fy * iz * gj12;
    // the clamp passes the gradient when the unclamped value lies in [-lim, lim] (torch.clamp)
    const float tx = x / z, ty = y / z;
    if (tx >= -cam.limx && tx <= cam.limx) {
        g_pv[0] += g_txtz * iz;
        g_pv[2] -= g_txtz * x * iz2;
    }
    if (ty >= -cam.limy && ty <= cam.limy) {
        g_pv[1] += g_tytz * iz;
        g_pv[2] -= g_tytz * y * iz2;
    }
}

// ----------------------------------------------------------------------------------------------------
// Conic (inverse of cov2d + 0.3 I), stored (A, B, C) for [[A, B], [B, C]].  Returns det != 0.

GSR_HD bool compute_conic(const float cov2d[3], float conic[3], float& det) {
    const float a = cov2d[0] + kLowPass, b = cov2d[1], c = cov2d[2] + kLowPass;
    det = a * c - b * b;
    const bool ok = det != 0.f;
    const float inv = 1.f / (ok ? det : 1.f);
    conic[0] = c * inv;
    conic[1] = -b * inv;
    conic[2] = a * inv;
    return ok;
}

// Writes g_cov2d (the low-pass is a constant).
GSR_HD void compute_conic_vjp(const float cov2d[3], const float g_conic[3], float g_cov2d[3]) {
    const float a = cov2d[0] + kLowPass, b = cov2d[1], c = cov2d[2] + kLowPass;
    const float det = a * c - b * b;
    const float inv = 1.f / (det != 0.f ? det : 1.f);
    const float g_inv = g_conic[0] * c - g_conic[1] * b + g_conic[2] * a;
    const float g_det = det != 0.f ? -g_inv * inv * inv : 0.f;
    g_cov2d[0] = g_conic[2] * inv + g_det * c;
    g_cov2d[1] = -g_conic[1] * inv - 2.f * b * g_det;
    g_cov2d[2] = g_conic[0] * inv + g_det * a;
}

// Radii are capped here (far beyond any image) so that the int32 radius stored by the preprocess converts
// back to the very float it came from: the binning recomputes the tile rectangle from it.
constexpr float kMaxRadius = 1073741824.f;  // 2^30

// 3-sigma radius of the larger eigenvalue; NaN/inf give 0.
GSR_HD float compute_radius(const float cov2d[3], float det) {
    const float a = cov2d[0] + kLowPass, c = cov2d[2] + kLowPass;
    const float mid = 0.5f * (a + c);
    const float lambda1 = mid + sqrtf(fmaxf(mid * mid - det, 0.1f));
    const float r = ceilf(3.f * sqrtf(lambda1));
    return is_finite(r) ? fminf(r, kMaxRadius) : 0.f;
}

// Tiles [rect[0], rect[2]) x [rect[1], rect[3]) overlapped by the square of half-side r (floor, clamp).
// Returns the number of tiles.  NaN positions give an empty rectangle.
GSR_HD long long tile_rect(const Camera& cam, float mx, float my, float r, int rect[4]) {
    const float gx = static_cast<float>(cam.grid_x), gy = static_cast<float>(cam.grid_y);
    rect[0] = static_cast<int>(clampf(floorf((mx - r) / kBlockX), 0.f, gx));
    rect[1] = static_cast<int>(clampf(floorf((my - r) / kBlockY), 0.f, gy));
    rect[2] = static_cast<int>(clampf(floorf((mx + r + (kBlockX - 1)) / kBlockX), 0.f, gx));
    rect[3] = static_cast<int>(clampf(floorf((my + r + (kBlockY - 1)) / kBlockY), 0.f, gy));
    if (rect[2] <= rect[0] || rect[3] <= rect[1]) return 0;
    return static_cast<long long>(rect[2] - rect[0]) * static_cast<long long>(rect[3] - rect[1]);
}

// ----------------------------------------------------------------------------------------------------
// Spherical harmonics (degrees 0-3), constants and signs of the original 3DGS (cuda_rasterizer/sh.py).

constexpr float kShC0 = 0.28209479177387814f;
constexpr float kShC1 = 0.4886025119029199f;
// Scalars rather than arrays: namespace-scope constexpr arrays are not usable in device code.
constexpr float kShC2_0 = 1.0925484305920792f, kShC2_1 = -1.0925484305920792f, kShC2_2 = 0.31539156525252005f,
                kShC2_3 = -1.0925484305920792f, kShC2_4 = 0.5462742152960396f;
constexpr float kShC3_0 = -0.5900435899266435f, kShC3_1 = 2.890611442640554f, kShC3_2 = -0.4570457994644658f,
                kShC3_3 = 0.3731763325901154f, kShC3_4 = -0.4570457994644658f, kShC3_5 = 1.445305721320277f,
                kShC3_6 = -0.5900435899266435f;

GSR_HD int sh_count(int degree) { return (degree + 1) * (degree + 1); }

// Basis values b[k] and, when db is not null, their derivatives db[k][0..2] w.r.t. the direction.
GSR_HD void sh_basis(int degree, const float d[3], float b[16], float (*db)[3]) {
    const float x = d[0], y = d[1], z = d[2];
    for (int k = 0; k < 16; ++k) {
        b[k] = 0.f;
        if (db) db[k][0] = db[k][1] = db[k][2] = 0.f;
    }
    b[0] = kShC0;
    if (degree < 1) return;
    b[1] = -kShC1 * y;
    b[2] = kShC1 * z;
    b[3] = -kShC1 * x;
    if (db) { db[1][1] = -kShC1; db[2][2] = kShC1; db[3][0] = -kShC1; }
    if (degree < 2) return;
    const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
    b[4] = kShC2_0 * xy;
    b[5] = kShC2_1 * yz;
    b[6] = kShC2_2 * (2.f * zz - xx - yy);
    b[7] = kShC2_3 * xz;
    b[8] = kShC2_4 * (xx - yy);
    if (db) {
        db[4][0] = kShC2_0 * y;         db[4][1] = kShC2_0 * x;
        db[5][1] = kShC2_1 * z;         db[5][2] = kShC2_1 * y;
        db[6][0] = -2.f * kShC2_2 * x;  db[6][1] = -2.f * kShC2_2 * y;  db[6][2] = 4.f * kShC2_2 * z;
        db[7][0] = kShC2_3 * z;         db[7][2] = kShC2_3 * x;
        db[8][0] = 2.f * kShC2_4 * x;   db[8][1] = -2.f * kShC2_4 * y;
    }
    if (degree < 3) return;
    b[9] = kShC3_0 * y * (3.f * xx - yy);
    b[10] = kShC3_1 * xy * z;
    b[11] = kShC3_2 * y * (4.f * zz - xx - yy);
    b[12] = kShC3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
    b[13] = kShC3_4 * x * (4.f * zz - xx - yy);
    b[14] = kShC3_5 * z * (xx - yy);
    b[15] = kShC3_6 * x * (xx - 3.f * yy);
    if (db) {
        db[9][0] = kShC3_0 * 6.f * xy;                  db[9][1] = kShC3_0 * 3.f * (xx - yy);
        db[10][0] = kShC3_1 * yz;                       db[10][1] = kShC3_1 * xz;
        db[10][2] = kShC3_1 * xy;
        db[11][0] = kShC3_2 * -2.f * xy;                db[11][1] = kShC3_2 * (4.f * zz - xx - 3.f * yy);
        db[11][2] = kShC3_2 * 8.f * yz;
        db[12][0] = kShC3_3 * -6.f * xz;                db[12][1] = kShC3_3 * -6.f * yz;
        db[12][2] = kShC3_3 * (6.f * zz - 3.f * xx - 3.f * yy);
        db[13][0] = kShC3_4 * (4.f * zz - 3.f * xx - yy);  db[13][1] = kShC3_4 * -2.f * xy;
        db[13][2] = kShC3_4 * 8.f * xz;
        db[14][0] = kShC3_5 * 2.f * xz;                 db[14][1] = kShC3_5 * -2.f * yz;
        db[14][2] = kShC3_5 * (xx - yy);
        db[15][0] = kShC3_6 * 3.f * (xx - yy);          db[15][1] = kShC3_6 * -6.f * xy;
    }
}

// Unit view direction (mean - campos) / max(|.|, 1e-12); returns the unclamped norm.
GSR_HD float view_dir(const float mean[3], const float campos[3], float dir[3]) {
    const float d[3] = {mean[0] - campos[0], mean[1] - campos[1], mean[2] - campos[2]};
    const float n = sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    const float nc = fmaxf(n, kDirEps);
    for (int k = 0; k < 3; ++k) dir[k] = d[k] / nc;
    return n;
}

// Adds dL/dmean to g_mean.
GSR_HD void view_dir_vjp(const float dir[3], float norm, const float g_dir[3], float g_mean[3]) {
    if (norm >= kDirEps) {
        const float dg = dir[0] * g_dir[0] + dir[1] * g_dir[1] + dir[2] * g_dir[2];
        for (int k = 0; k < 3; ++k) g_mean[k] += (g_dir[k] - dir[k] * dg) / norm;
    } else {
        for (int k = 0; k < 3; ++k) g_mean[k] += g_dir[k] / kDirEps;
    }
}

// rgb = max(sum_k b_k sh_k + 0.5, 0); clamped[c] says the clamp was active (no gradient).
// The loops over the 16 basis functions are unrolled with a guard on K (a run-time value), so that b and
// db are indexed by constants and stay in registers (a run-time bound would put them in local memory).
GSR_HD void sh_to_color(int degree, const float* sh, const float dir[3], float rgb[3], uint8_t clamped[3]) {
    float b[16];
    sh_basis(degree, dir, b, nullptr);
    const int K = sh_count(degree);
    for (int c = 0; c < 3; ++c) {
        float v = 0.f;
#pragma unroll
        for (int k = 0; k < 16; ++k)
            if (k < K) v += b[k] * sh[3 * k + c];
        v += 0.5f;
        clamped[c] = v < 0.f;
        rgb[c] = v < 0.f ? 0.f : v;
    }
}

// g_sh [sh_coeffs, 3] written (zeros past the degree's coefficients); dL/ddir written to g_dir.
GSR_HD void sh_to_color_vjp(int degree, int sh_coeffs, const float* sh, const float dir[3],
                            const uint8_t clamped[3], const float g_rgb_in[3], float* g_sh, float g_dir[3]) {
    float b[16], db[16][3];
    sh_basis(degree, dir, b, db);
    const float g[3] = {clamped[0] ? 0.f : g_rgb_in[0], clamped[1] ? 0.f : g_rgb_in[1],
                        clamped[2] ? 0.f : g_rgb_in[2]};
    const int K = sh_count(degree) < sh_coeffs ? sh_count(degree) : sh_coeffs;
    g_dir[0] = g_dir[1] = g_dir[2] = 0.f;
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        if (k < K) {
            for (int c = 0; c < 3; ++c) g_sh[3 * k + c] = b[k] * g[c];
            if (k > 0) {
                const float sg = sh[3 * k] * g[0] + sh[3 * k + 1] * g[1] + sh[3 * k + 2] * g[2];
                for (int a = 0; a < 3; ++a) g_dir[a] += sg * db[k][a];
            }
        }
    }
    for (int k = 3 * K; k < 3 * sh_coeffs; ++k) g_sh[k] = 0.f;  // coefficients past the degree's
}

// ----------------------------------------------------------------------------------------------------
// The preprocess stage for Gaussian i (the kernel body; the CPU test extension calls it too).

GSR_HD void preprocess_one(const Camera& cam, const PreprocessParams& p, int i) {
    const float* mean = p.means + 3 * i;
    float pv[3];
    transform_point(cam.view, mean, pv);
    p.depths[i] = pv[2];
    const bool in_front = pv[2] > kNearPlane;
    if (!in_front) pv[2] = 1.f;  // the reference's harmless stand-in depth for culled Gaussians

    float mx, my;
    project_mean(cam, pv, mx, my);
    float cov3d[9], cov2d[3], conic[3], det;
    compute_cov3d(p.scales + 3 * i, cam.scale_modifier, p.rotations + 4 * i, cov3d);
    ewa_cov2d(cam, pv, cov3d, cov2d);
    const bool det_ok = compute_conic(cov2d, conic, det);
    for (int k = 0; k < 3; ++k) p.conics[3 * i + k] = conic[k];

    const float radius = (in_front && det_ok) ? compute_radius(cov2d, det) : 0.f;
    int rect[4];
    const long long area = tile_rect(cam, mx, my, radius, rect);
    const bool visible = in_front && det_ok && area > 0;

    p.means2d[2 * i] = visible ? mx : 0.f;
    p.means2d[2 * i + 1] = visible ? my : 0.f;
    p.radii[i] = visible ? static_cast<int>(radius) : 0;
    p.tiles_touched[i] = visible ? static_cast<int>(area) : 0;
    if (p.colors) {
        float rgb[3] = {0.f, 0.f, 0.f};
        uint8_t clamped[3] = {0, 0, 0};
        if (visible) {
            float dir[3];
            view_dir(mean, cam.campos, dir);
            sh_to_color(cam.sh_degree, p.shs + 3ll * p.sh_coeffs * i, dir, rgb, clamped);
        }
        for (int c = 0; c < 3; ++c) {
            p.colors[3 * i + c] = rgb[c];
            p.clamped[3 * i + c] = clamped[c];
        }
    }
}

// The preprocess backward for Gaussian i: render gradients (means2d, conics, colours) and the depth
// gradient back to means, scales, rotations and SH coefficients.  Writes every output row.
GSR_HD void preprocess_backward_one(const Camera& cam, const PreprocessBackwardParams& p, int i) {
    const float* mean = p.means + 3 * i;
    float g_pv[3] = {0.f, 0.f, p.grad_depths ? p.grad_depths[i] : 0.f};
    float g_mean[3] = {0.f, 0.f, 0.f};
    float g_s[3] = {0.f, 0.f, 0.f};
    float g_q[4] = {0.f, 0.f, 0.f, 0.f};
    const bool visible = p.tiles_touched[i] > 0;
    if (visible) {
        float pv[3];
        transform_point(cam.view, mean, pv);
        project_mean_vjp(cam, pv, p.grad_means2d[2 * i], p.grad_means2d[2 * i + 1], g_pv);
        float cov3d[9], cov2d[3], g_cov2d[3], g_cov3d[9];
        const float* s = p.scales + 3 * i;
        const float* q = p.rotations + 4 * i;
        compute_cov3d(s, cam.scale_modifier, q, cov3d);
        ewa_cov2d(cam, pv, cov3d, cov2d);
        compute_conic_vjp(cov2d, p.grad_conics + 3 * i, g_cov2d);
        ewa_cov2d_vjp(cam, pv, cov3d, g_cov2d, g_pv, g_cov3d);
        compute_cov3d_vjp(s, cam.scale_modifier, q, g_cov3d, g_s, g_q);
    }
    if (p.grad_shs) {
        float* g_sh = p.grad_shs + 3ll * p.sh_coeffs * i;
        if (visible && p.grad_colors) {
            float dir[3], g_dir[3];
            const float norm = view_dir(mean, cam.campos, dir);
            sh_to_color_vjp(cam.sh_degree, p.sh_coeffs, p.shs + 3ll * p.sh_coeffs * i, dir, p.clamped + 3 * i,
                            p.grad_colors + 3 * i, g_sh, g_dir);
            if (cam.sh_degree > 0) view_dir_vjp(dir, norm, g_dir, g_mean);
        } else {
            for (int k = 0; k < 3 * p.sh_coeffs; ++k) g_sh[k] = 0.f;
        }
    }
    transform_point_vjp(cam.view, g_pv, g_mean);
    for (int k = 0; k < 3; ++k) {
        p.grad_means[3 * i + k] = g_mean[k];
        p.grad_scales[3 * i + k] = g_s[k];
    }
    for (int k = 0; k < 4; ++k) p.grad_rotations[4 * i + k] = g_q[k];
}

// ----------------------------------------------------------------------------------------------------
// Per (pixel, Gaussian): alpha and the compositing rules.
//
// These steps are templates over the lane type F, the pixels that one call steps together: F = float is one
// pixel (the CUDA thread, Mask = bool); the CPU backend instantiates them with an 8-pixel vector
// (csrc/cpu/cpu_lanes.h), so that both devices run this code and cannot drift apart.  Each lane does the
// scalar arithmetic, in the same order.  A lane type supplies LaneOps<F>: its Mask (the type of F < float)
// and Int (int lanes), and
//   all_of(m, a)        a & m lane-wise          and_not(m, a)    m & ~a
//   any(m)              some lane of m is set    select(m, a, b)  a where m, else b (F, or Int with an int a)
//   exp(x)              expf per lane            min(x, c)        fminf(x, c) per lane (x not NaN)
//   splat(x)            x in every lane
//   taken(m)            m, where any(m) was just found true: for one lane the constant true, so that the
//                       callers' branches fold (nvcc does not fold a returned flag it has just tested)
//   early(m)            whether an early return when no lane of m is left is tested: any(m) for one lane; a
//                       vector may skip the test (true) where what follows leaves the lanes outside m as
//                       they are, so that the result is the same either way
template <class F>
struct LaneOps;

template <>
struct LaneOps<float> {
    using Mask = bool;
    using Int = int;
    static GSR_PIXEL bool all_of(bool m, bool a) { return m && a; }
    static GSR_PIXEL bool and_not(bool m, bool a) { return m && !a; }
    static GSR_PIXEL bool any(bool m) { return m; }
    static GSR_PIXEL bool taken(bool) { return true; }
    static GSR_PIXEL bool early(bool m) { return m; }
    static GSR_PIXEL float select(bool m, float a, float b) { return m ? a : b; }
    static GSR_PIXEL float splat(float x) { return x; }
    static GSR_PIXEL int select(bool m, int a, int b) { return m ? a : b; }
    static GSR_PIXEL float exp(float x) { return expf(x); }
    static GSR_PIXEL float min(float x, float c) { return fminf(x, c); }
};

template <class F>
using MaskOf = typename LaneOps<F>::Mask;

// The Gaussian's exponent at pixel (px, py): -1/2 d^T conic d with d = (dx, dy) = mean - pixel.
template <class F>
GSR_PIXEL F gaussian_power(float mx, float my, const float conic[3], const F& px, const F& py, F& dx, F& dy) {
    dx = mx - px;
    dy = my - py;
    return -0.5f * (conic[0] * dx * dx + conic[2] * dy * dy) - conic[1] * dx * dy;
}

// Of the lanes ok (where the caller has checked power <= 0), those where the pair is composited: alpha =
// min(0.99, opacity * exp(power)) >= 1/255 (NaN fails).  G and alpha are set unless no lane of ok is left.
template <class F>
GSR_PIXEL MaskOf<F> gaussian_alpha_of_power(MaskOf<F> ok, const F& power, float opacity, F& G, F& alpha) {
    using L = LaneOps<F>;
    if (!L::any(ok)) return MaskOf<F>{};
    G = L::exp(power);
    const F raw = opacity * G;
    ok = L::all_of(ok, raw >= kAlphaMin);  // min(0.99, raw) >= 1/255 iff raw >= 1/255
    if (!L::early(ok)) return MaskOf<F>{};
    alpha = L::min(raw, kAlphaMax);
    return L::taken(ok);
}

// Whether the Gaussian is composited at pixel (px, py) (power <= 0 and alpha >= 1/255), with the
// quantities the backward step needs.  dx, dy = mean - pixel.
template <class F>
GSR_PIXEL MaskOf<F> gaussian_alpha(float mx, float my, const float conic[3], float opacity, const F& px, const F& py,
                                F& dx, F& dy, F& G, F& alpha) {
    const F power = gaussian_power(mx, my, conic, px, py, dx, dy);
    return gaussian_alpha_of_power<F>(power <= 0.f, power, opacity, G, alpha);
}

// What the forward pass carries from one Gaussian to the next of a pixel (front to back).
template <class F>
struct PixelFwd {
    F T;                           // transmittance in front of the next Gaussian
    F C[3];                        // colour composited so far (background excluded)
    F D;                           // expected depth so far, sum of alpha * T * z
    typename LaneOps<F>::Int last; // 1-based list position of the last composited Gaussian, 0 if none
};
using PixelFwdState = PixelFwd<float>;

template <class F>
GSR_PIXEL void pixel_forward_init(PixelFwd<F>& st) {
    st.T = F{} + 1.f;
    st.D = F{};
    st.last = typename LaneOps<F>::Int{};
    for (int c = 0; c < 3; ++c) st.C[c] = F{};
}

// One (pixel, Gaussian) step of the forward compositing in the lanes m, where gaussian_alpha accepted the
// pair at 1-based list position `position`: colour and depth z composited with the weight alpha * T, T
// multiplied by (1 - alpha).  Returns the lanes of m where it was composited; the other lanes of m are done:
// this Gaussian would take their transmittance below kTMin, so it is not composited there and no later one is.
template <class F>
GSR_PIXEL MaskOf<F> pixel_forward_step(PixelFwd<F>& st, MaskOf<F> m, const F& alpha, const float color[3], float z,
                                    int position) {
    using L = LaneOps<F>;
    const F test_T = st.T * (1.f - alpha);
    const MaskOf<F> step = L::and_not(m, test_T < kTMin);
    if (!L::early(step)) return MaskOf<F>{};
    const F weight = alpha * st.T;
    for (int c = 0; c < 3; ++c) st.C[c] = L::select(step, st.C[c] + color[c] * weight, st.C[c]);
    st.D = L::select(step, st.D + weight * z, st.D);
    st.T = L::select(step, test_T, st.T);
    st.last = L::select(step, position, st.last);
    return L::taken(step);
}

// The one-pixel form: false when the pixel is done (the Gaussian is not composited).
GSR_PIXEL bool pixel_forward_step_depth(PixelFwdState& st, float alpha, const float color[3], float z, int position) {
    return pixel_forward_step<float>(st, true, alpha, color, z, position);
}

// What the backward pass carries from one Gaussian to the previous one of a pixel (back to front).
template <class F>
struct PixelBack {
    F T;             // transmittance in front of the current Gaussian
    F accum[3];      // colour composited behind the current Gaussian (background excluded)
    F last_alpha;
    F last_color[3];
};
using PixelBackState = PixelBack<float>;

template <class F>
GSR_PIXEL void pixel_back_init(PixelBack<F>& st, const F& T_final) {
    st.T = T_final;
    st.last_alpha = F{};
    for (int c = 0; c < 3; ++c) st.accum[c] = st.last_color[c] = F{};
}

// One (pixel, Gaussian) step of the backward render, back to front over the composited Gaussians, in the
// lanes on (the state advances there only).  dpix: dL/dpixel colour; bg_dot: dL/dpixel . bg + dL/dfinal_T.
// Writes the 9 values out = (dL/dmean2d x, y, dL/dconic A, B, C, dL/dopacity, dL/dcolour r, g, b),
// meaningful in the lanes on; alpha's min(0.99) clamp passes the gradient straight through, as in the
// reference.
template <class F>
GSR_PIXEL void render_backward_step(PixelBack<F>& st, MaskOf<F> on, const F dpix[3], const F& bg_dot, const F& T_final,
                                 const F& dx, const F& dy, const float conic[3], float opacity, const F& G,
                                 const F& alpha, const float color[3], F out[kGradValues]) {
    using L = LaneOps<F>;
    const F inv_one_minus = 1.f / (1.f - alpha);  // one reciprocal for both divisions by (1 - alpha)
    const F T = st.T * inv_one_minus;
    st.T = L::select(on, T, st.T);
    const F w = alpha * T;
    F g_alpha = F{};
    for (int c = 0; c < 3; ++c) {
        const F accum = st.last_alpha * st.last_color[c] + (1.f - st.last_alpha) * st.accum[c];
        st.accum[c] = L::select(on, accum, st.accum[c]);
        st.last_color[c] = L::select(on, L::splat(color[c]), st.last_color[c]);
        g_alpha += (color[c] - accum) * dpix[c];
        out[6 + c] = w * dpix[c];
    }
    g_alpha *= T;
    st.last_alpha = L::select(on, alpha, st.last_alpha);
    g_alpha += (-T_final * inv_one_minus) * bg_dot;

    const F g_G = opacity * g_alpha;
    const F gdx = G * dx, gdy = G * dy;
    out[0] = g_G * (-gdx * conic[0] - gdy * conic[1]);
    out[1] = g_G * (-gdy * conic[2] - gdx * conic[1]);
    out[2] = -0.5f * gdx * dx * g_G;
    out[3] = -gdx * dy * g_G;
    out[4] = -0.5f * gdy * dy * g_G;
    out[5] = G * g_alpha;
}

// The one-pixel form (the pair is composited).
GSR_PIXEL void render_backward_step(PixelBackState& st, const float dpix[3], float bg_dot, float T_final, float dx,
                                 float dy, const float conic[3], float opacity, float G, float alpha,
                                 const float color[3], float out[kGradValues]) {
    render_backward_step<float>(st, true, dpix, bg_dot, T_final, dx, dy, conic, opacity, G, alpha, color, out);
}

}  // namespace gsr
