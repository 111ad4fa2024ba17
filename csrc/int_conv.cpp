#include "int_conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LICKD_X86 1
#endif

#include "parallel.h"

namespace lickd {
namespace intconv {

namespace {

constexpr int kMaxTile = 6;  // output positions per register tile (6 x 16 int32 sums: 12 ymm)

std::string str(int64_t v) { return std::to_string(v); }

// What one (image, output block, output row) task needs: its sums for a tile of positions.
struct Task {
  const ConvGeometry* g;
  const int16_t* input;    // image b
  const int16_t* weights;  // block ob
  int64_t row;             // r
};

inline const int16_t* input_at(const Task& t, int64_t c) {
  const ConvGeometry& g = *t.g;
  return t.input + ((g.off_h + t.row * g.sh) * g.in_w + g.off_w + c * g.sw) * g.in_c;
}

// sums[i][o] for positions c .. c + n - 1 of the task's row, outputs o of its block.
void tile_scalar(const Task& t, int64_t c, int n, int32_t (*sums)[kOutBlock]) {
  const ConvGeometry& g = *t.g;
  const int64_t pairs = g.in_c / 2;
  for (int i = 0; i < n; ++i) std::fill(sums[i], sums[i] + kOutBlock, 0);
  for (int64_t dy = 0; dy < g.kh; ++dy) {
    for (int64_t dx = 0; dx < g.kw; ++dx) {
      const int16_t* w = t.weights + (dy * g.kw + dx) * pairs * 2 * kOutBlock;
      for (int i = 0; i < n; ++i) {
        const int16_t* x = input_at(t, c + i) + (dy * g.in_w + dx) * g.in_c;
        for (int64_t p = 0; p < pairs; ++p) {
          const int32_t x0 = x[2 * p], x1 = x[2 * p + 1];
          const int16_t* wp = w + p * 2 * kOutBlock;
          for (int o = 0; o < kOutBlock; ++o) sums[i][o] += x0 * wp[2 * o] + x1 * wp[2 * o + 1];
        }
      }
    }
  }
}

#ifdef LICKD_X86
// The same sums with vpmaddwd: one broadcast (even, odd) activation pair times 16 outputs'
// weight pairs gives 16 int32 sums of two products; N positions share each weight load.
template <int N>
__attribute__((target("avx2"))) void tile_avx2_n(const Task& t, int64_t c, int32_t (*sums)[kOutBlock]) {
  const ConvGeometry& g = *t.g;
  const int64_t pairs = g.in_c / 2;
  const int64_t pos_stride = g.sw * g.in_c;
  __m256i acc[N][2];
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t dy = 0; dy < g.kh; ++dy) {
    for (int64_t dx = 0; dx < g.kw; ++dx) {
      const int16_t* w = t.weights + (dy * g.kw + dx) * pairs * 2 * kOutBlock;
      const int16_t* x = input_at(t, c) + (dy * g.in_w + dx) * g.in_c;
      for (int64_t p = 0; p < pairs; ++p) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 2 * kOutBlock));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 2 * kOutBlock + 16));
        for (int i = 0; i < N; ++i) {
          int32_t pair;
          std::memcpy(&pair, x + i * pos_stride + 2 * p, sizeof pair);
          const __m256i a = _mm256_set1_epi32(pair);
          acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(a, w0));
          acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(a, w1));
        }
      }
    }
  }
  for (int i = 0; i < N; ++i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums[i]), acc[i][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums[i] + 8), acc[i][1]);
  }
}

void tile_avx2(const Task& t, int64_t c, int n, int32_t (*sums)[kOutBlock]) {
  switch (n) {
    case 6: return tile_avx2_n<6>(t, c, sums);
    case 5: return tile_avx2_n<5>(t, c, sums);
    case 4: return tile_avx2_n<4>(t, c, sums);
    case 3: return tile_avx2_n<3>(t, c, sums);
    case 2: return tile_avx2_n<2>(t, c, sums);
    default: return tile_avx2_n<1>(t, c, sums);
  }
}

bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }
#else
bool cpu_has_avx2() { return false; }
#endif

using TileFn = void (*)(const Task&, int64_t, int, int32_t (*)[kOutBlock]);

TileFn tile_function(const std::string& isa) {
  const std::string chosen = isa == "auto" ? best_isa() : isa;
  if (chosen == "scalar") return tile_scalar;
#ifdef LICKD_X86
  if (chosen == "avx2") {
    if (!cpu_has_avx2()) throw std::invalid_argument("this CPU has no AVX2");
    return tile_avx2;
  }
#endif
  throw std::invalid_argument("unknown or unavailable instruction set '" + isa + "'");
}

// Throws unless all n values lie within +-limit (in parallel pieces: the inputs reach tens of MB).
void check_range(const int16_t* v, int64_t n, int32_t limit, const char* what, int threads) {
  constexpr int64_t kPiece = 1 << 18;
  parallel_chunks((n + kPiece - 1) / kPiece, threads, [&](int64_t k) {
    const int16_t* p = v + k * kPiece;
    const int64_t len = std::min(kPiece, n - k * kPiece);
    int32_t m = 0;
    for (int64_t i = 0; i < len; ++i) m = std::max(m, std::abs(int32_t(p[i])));
    if (m <= limit) return;
    for (int64_t i = 0; i < len; ++i)
      if (std::abs(int32_t(p[i])) > limit)
        throw std::invalid_argument(std::string(what) + " value " + str(p[i]) + " outside +-" + str(limit));
  });
}

}  // namespace

std::string best_isa() { return cpu_has_avx2() ? "avx2" : "scalar"; }

void check_geometry(const ConvGeometry& g) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("int conv: " + m); };
  // bounds that keep every product and sum below in int64 (no overflow, whatever the caller passes)
  constexpr int64_t kMaxIndex = int64_t(1) << 31, kMaxStep = int64_t(1) << 16;
  auto in = [](int64_t v, int64_t lo, int64_t hi) { return lo <= v && v <= hi; };
  for (int64_t v : {g.batch, g.in_h, g.in_w, g.in_c, g.out_h, g.out_w, g.out_c, g.off_h, g.off_w, g.r0, g.r1, g.c0, g.c1})
    if (!in(v, 0, kMaxIndex)) fail("a dimension, offset or position outside [0, 2^31]");
  if (!in(g.origin_h, -kMaxIndex, kMaxIndex) || !in(g.origin_w, -kMaxIndex, kMaxIndex))
    fail("an output origin outside +-2^31");
  for (int64_t v : {g.kh, g.kw, g.sh, g.sw, g.step_h, g.step_w})
    if (!in(v, 1, kMaxStep)) fail("kernel, stride and output step must be in [1, 2^16]");
  if (g.in_c == 0 || g.out_c == 0) fail("no input or output channels");
  if (g.in_c % 2) fail("input channels must be even (pad with a zero channel)");
  if (g.kh * g.kw * g.in_c > kMaxReduction)
    fail("a reduction of " + str(g.kh * g.kw * g.in_c) + " products exceeds " + str(kMaxReduction) + " (int32 sums)");
  if (g.r0 > g.r1 || g.c0 > g.c1) fail("a position range is reversed");
  if (g.r0 == g.r1 || g.c0 == g.c1) return;
  // first and last positions must read inside the input and write inside the output
  const int64_t bottom = g.off_h + (g.r1 - 1) * g.sh + g.kh - 1, right = g.off_w + (g.c1 - 1) * g.sw + g.kw - 1;
  if (bottom >= g.in_h || right >= g.in_w) fail("positions read outside the input");
  const int64_t o_top = g.origin_h + g.step_h * g.r0, o_bottom = g.origin_h + g.step_h * (g.r1 - 1);
  const int64_t o_left = g.origin_w + g.step_w * g.c0, o_right = g.origin_w + g.step_w * (g.c1 - 1);
  if (o_top < 0 || o_left < 0 || o_bottom >= g.out_h || o_right >= g.out_w) fail("positions write outside the output");
}

void conv(const ConvGeometry& g, const int16_t* input, const int16_t* weights, const double* a_steps,
          const double* w_steps, const double* bias, float* out, int threads, const std::string& isa) {
  check_geometry(g);
  const TileFn tile = tile_function(isa);
  const int64_t blocks = (g.out_c + kOutBlock - 1) / kOutBlock;
  const int64_t block_size = g.kh * g.kw * g.in_c * kOutBlock;
  check_range(weights, blocks * block_size, kWeightMax, "weight", threads);
  check_range(input, g.batch * g.in_h * g.in_w * g.in_c, kActivationMax, "activation", threads);
  const int64_t rows = g.r1 - g.r0;
  if (rows == 0 || g.c1 == g.c0 || g.batch == 0) return;
  // tasks: block-major, so the threads share one block's weights in cache at a time
  parallel_chunks(blocks * g.batch * rows, threads, [&](int64_t task) {
    const int64_t ob = task / (g.batch * rows), b = task / rows % g.batch, r = g.r0 + task % rows;
    const Task t{&g, input + b * g.in_h * g.in_w * g.in_c, weights + ob * block_size, r};
    const int n_out = int(std::min<int64_t>(kOutBlock, g.out_c - ob * kOutBlock));
    double scale[kOutBlock], shift[kOutBlock];
    for (int o = 0; o < n_out; ++o) {
      scale[o] = a_steps[b] * w_steps[ob * kOutBlock + o];  // exact for powers of two
      shift[o] = bias[ob * kOutBlock + o];
    }
    float* out_row = out + (b * g.out_h + g.origin_h + g.step_h * r) * g.out_w * g.out_c + ob * kOutBlock;
    int32_t sums[kMaxTile][kOutBlock];
    for (int64_t c = g.c0; c < g.c1; c += kMaxTile) {
      const int n = int(std::min<int64_t>(kMaxTile, g.c1 - c));
      tile(t, c, n, sums);
      for (int i = 0; i < n; ++i) {
        float* o_px = out_row + (g.origin_w + g.step_w * (c + i)) * g.out_c;
        for (int o = 0; o < n_out; ++o) o_px[o] = float(double(sums[i][o]) * scale[o] + shift[o]);
      }
    }
  });
}

namespace {

constexpr float kFloatMax = std::numeric_limits<float>::max();

// nan_to_num of [p, end) in place; returns the largest |value| (the max is exact in any order)
float sanitize_scalar(float* p, float* end) {
  float m = 0.0f;
  for (; p != end; ++p) {
    const float f = std::isnan(*p) ? 0.0f : std::min(std::max(*p, -kFloatMax), kFloatMax);
    *p = f;
    m = std::max(m, std::fabs(f));
  }
  return m;
}

#ifdef LICKD_X86
__attribute__((target("avx2"))) float sanitize_avx2(float* p, float* end) {
  const __m256 hi = _mm256_set1_ps(kFloatMax), lo = _mm256_set1_ps(-kFloatMax);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (; end - p >= 8; p += 8) {
    const __m256 x = _mm256_loadu_ps(p);
    __m256 f = _mm256_min_ps(_mm256_max_ps(x, lo), hi);  // +-inf -> +-FLT_MAX
    f = _mm256_and_ps(f, _mm256_cmp_ps(x, x, _CMP_ORD_Q));  // NaN -> 0
    _mm256_storeu_ps(p, f);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, f));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, m);
  float r = sanitize_scalar(p, end);
  for (float l : lanes) r = std::max(r, l);
  return r;
}
#endif

}  // namespace

void sanitize_absmax(float* v, int64_t batch, int64_t n, float* absmax, int threads) {
  auto run = sanitize_scalar;
#ifdef LICKD_X86
  if (cpu_has_avx2()) run = sanitize_avx2;
#endif
  constexpr int64_t kPiece = 1 << 16;  // values per task
  const int64_t pieces = (n + kPiece - 1) / kPiece;
  std::vector<float> maxima(size_t(batch * pieces), 0.0f);
  parallel_chunks(batch * pieces, threads, [&](int64_t task) {
    const int64_t b = task / pieces, k = task % pieces;
    float* start = v + b * n + k * kPiece;
    maxima[size_t(task)] = run(start, start + std::min(kPiece, n - k * kPiece));
  });
  for (int64_t b = 0; b < batch; ++b)
    absmax[b] = pieces ? *std::max_element(maxima.begin() + b * pieces, maxima.begin() + (b + 1) * pieces) : 0.0f;
}

namespace {

// One row of quantize: nearest integer of double(f) * (1 / step) (for a power-of-two step the
// reciprocal and the product are exact), ties to even, clamped; NaN -> 0.
void quantize_row_scalar(const float* src, int16_t* dst, int64_t n, double inv_step) {
  for (int64_t i = 0; i < n; ++i) {
    double q = std::isnan(src[i]) ? 0.0 : std::nearbyint(double(src[i]) * inv_step);
    dst[i] = int16_t(std::min<double>(std::max<double>(q, -kActivationMax), kActivationMax));
  }
}

#ifdef LICKD_X86
__attribute__((target("avx2"))) void quantize_row_avx2(const float* src, int16_t* dst, int64_t n, double inv_step) {
  const __m256d inv = _mm256_set1_pd(inv_step), lo = _mm256_set1_pd(-kActivationMax),
                hi = _mm256_set1_pd(kActivationMax);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i q[2];
    for (int h = 0; h < 2; ++h) {
      const __m256d f = _mm256_cvtps_pd(_mm_loadu_ps(src + i + 4 * h));
      __m256d r = _mm256_round_pd(_mm256_mul_pd(f, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm256_min_pd(_mm256_max_pd(r, lo), hi);
      r = _mm256_and_pd(r, _mm256_cmp_pd(f, f, _CMP_ORD_Q));  // NaN -> 0
      q[h] = _mm256_castsi128_si256(_mm256_cvtpd_epi32(r));
    }
    const __m128i packed = _mm_packs_epi32(_mm256_castsi256_si128(q[0]), _mm256_castsi256_si128(q[1]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), packed);
  }
  quantize_row_scalar(src + i, dst + i, n - i, inv_step);
}
#endif

}  // namespace

void quantize(const float* v, int64_t batch, int64_t h, int64_t w, int64_t c, const double* steps,
              int16_t* out, int64_t out_h, int64_t out_w, int64_t out_c, int64_t top, int64_t left, int threads) {
  constexpr int64_t kMaxIndex = int64_t(1) << 31;
  for (int64_t v : {batch, h, w, c, out_h, out_w, out_c, top, left})
    if (v < 0 || v > kMaxIndex) throw std::invalid_argument("int quantize: a dimension or offset outside [0, 2^31]");
  if (top + h > out_h || left + w > out_w || c > out_c)
    throw std::invalid_argument("int quantize: the values do not fit the output at (top, left)");
  for (int64_t b = 0; b < batch; ++b)
    if (!(steps[b] > 0) || std::isinf(steps[b]) || std::isinf(1.0 / steps[b]))
      throw std::invalid_argument("int quantize: steps must be positive, finite and invertible");
  auto row = quantize_row_scalar;
#ifdef LICKD_X86
  if (cpu_has_avx2()) row = quantize_row_avx2;
#endif
  parallel_chunks(batch * out_h, threads, [&](int64_t task) {
    const int64_t b = task / out_h, oy = task % out_h, y = oy - top;
    int16_t* line = out + (b * out_h + oy) * out_w * out_c;
    if (y < 0 || y >= h) return (void)std::fill(line, line + out_w * out_c, int16_t(0));
    std::fill(line, line + left * out_c, int16_t(0));
    std::fill(line + (left + w) * out_c, line + out_w * out_c, int16_t(0));
    const double inv_step = 1.0 / steps[b];
    const float* src = v + (b * h + y) * w * c;
    int16_t* dst = line + left * out_c;
    if (c == out_c) return row(src, dst, w * c, inv_step);
    for (int64_t x = 0; x < w; ++x) {
      row(src + x * c, dst + x * out_c, c, inv_step);
      std::fill(dst + x * out_c + c, dst + (x + 1) * out_c, int16_t(0));
    }
  });
}

}  // namespace intconv
}  // namespace lickd
