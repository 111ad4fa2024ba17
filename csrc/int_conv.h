// Integer convolutions on the CPU for the device-independent entropy parameters
// (lickd/entropy/exact.py, arithmetic version 2, through lickd/layers/int_conv.py): int16
// activations (|a| <= 1023) times 8-bit weights stored as int16 (|w| <= 127), summed in int32 with
// AVX2's vpmaddwd (a plain C++ fallback gives the same sums elsewhere).
//
// A reduction has at most kMaxReduction products, so every partial sum is an integer below 2^31:
// exact in any order, on any instruction set. The finished output is
// float32(double(sum) * (a_step * w_step[o]) + bias[o]); with power-of-two steps the product of
// the steps and the scaling are exact, the bias is added with one double rounding and the result
// rounded once to float: the same IEEE operations (and bits) as the PyTorch path.
#pragma once

#include <cstdint>
#include <string>

namespace lickd {
namespace intconv {

constexpr int32_t kWeightMax = 127;       // |w| in its step
constexpr int32_t kActivationMax = 1023;  // |a| in its step
// products per output (kh * kw * channels) that keep every int32 partial sum exact: 16,529
constexpr int64_t kMaxReduction = int64_t(INT32_MAX) / (int64_t(kWeightMax) * kActivationMax);
constexpr int kOutBlock = 16;  // output channels per packed weight block

// One stride-sh/sw correlation over a zero-padded channels-last input.
//   input   int16 [batch, in_h, in_w, in_c], in_c even (a zero channel pads an odd count)
//   weights int16 [ceil(out_c / 16), kh, kw, in_c / 2, 16, 2]: for each block of 16 outputs, tap
//           and pair of input channels, the 16 outputs' (even, odd) channel weights; zero past out_c
//   output  float32 [batch, out_h, out_w, out_c]
// Output position (r, c), r in [r0, r1), c in [c0, c1), reads input rows off_h + r * sh + dy
// and columns off_w + c * sw + dx, and is written at out[origin_h + step_h * r][origin_w + step_w * c].
struct ConvGeometry {
  int64_t batch = 0, in_h = 0, in_w = 0, in_c = 0;
  int64_t out_h = 0, out_w = 0, out_c = 0;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1;
  int64_t off_h = 0, off_w = 0;
  int64_t r0 = 0, r1 = 0, c0 = 0, c1 = 0;
  int64_t origin_h = 0, origin_w = 0, step_h = 1, step_w = 1;
};

// Throws std::invalid_argument when the geometry reads or writes outside its arrays, a value is
// past the bounds that keep the index arithmetic in int64, or the reduction is too long to stay exact.
void check_geometry(const ConvGeometry& g);

// "avx2" where this CPU runs the vector kernel, else "scalar" (the same sums, in plain C++).
std::string best_isa();

// The convolution above, finished into `out`. a_steps [batch], w_steps and bias [out_c]. `isa` is
// "auto", "avx2" or "scalar" (every choice gives the same bits). Inputs outside +-kActivationMax
// or weights outside +-kWeightMax throw std::invalid_argument.
void conv(const ConvGeometry& g, const int16_t* input, const int16_t* weights, const double* a_steps,
          const double* w_steps, const double* bias, float* out, int threads, const std::string& isa);

// Prepares a float32 [batch, n] layer input in place as torch.nan_to_num does (NaN -> 0, +-inf ->
// +-FLT_MAX) and writes each image's largest |value| to absmax [batch].
void sanitize_absmax(float* v, int64_t batch, int64_t n, float* absmax, int threads);

// Activation integers of a float32 [batch, h, w, c] tensor: nearest integer (ties to even) of
// double(v) * (1 / steps[b]) (for a power-of-two step: double(v) / step, exactly), clamped to
// +-kActivationMax (NaN -> 0), written at (top, left) into int16 [batch, out_h, out_w, out_c],
// channels from 0; every other element of `out` is set to 0 (it may start uninitialised).
void quantize(const float* v, int64_t batch, int64_t h, int64_t w, int64_t c, const double* steps,
              int16_t* out, int64_t out_h, int64_t out_w, int64_t out_c, int64_t top, int64_t left, int threads);

}  // namespace intconv
}  // namespace lickd
