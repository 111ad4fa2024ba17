// Python bindings of the integer convolutions (int_conv.h): module lickd._intconv.
// Arrays are taken without copies (aligned, C-contiguous, of the dtype named, outputs apart from
// inputs; lickd.layers.int_conv prepares them), and the GIL is released while computing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "int_conv.h"

namespace py = pybind11;
namespace ex = lickd::intconv;

namespace {

template <class T>
py::array_t<T, py::array::c_style> require(const py::array& a, const char* name, int ndim) {
  using Array = py::array_t<T, py::array::c_style>;
  const bool aligned = a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if (!py::isinstance<Array>(a) || a.ndim() != ndim || !aligned)
    throw std::invalid_argument(std::string(name) + " must be an aligned, C-contiguous " +
                                py::str(py::dtype::of<T>()).cast<std::string>() + " array with " +
                                std::to_string(ndim) + " dimension(s)");
  return py::reinterpret_borrow<Array>(a);
}

// Refuses an output whose memory overlaps an input's (the threads would race on it).
void check_apart(const py::array& out, const py::array& in, const char* name) {
  const auto* o = static_cast<const char*>(out.data());
  const auto* i = static_cast<const char*>(in.data());
  if (o < i + in.nbytes() && i < o + out.nbytes())
    throw std::invalid_argument(std::string("out overlaps ") + name);
}

void conv(const py::array& input_a, const py::array& weights_a, const py::array& a_steps_a,
          const py::array& w_steps_a, const py::array& bias_a, py::array& out_a, std::pair<int64_t, int64_t> kernel,
          std::pair<int64_t, int64_t> stride, std::pair<int64_t, int64_t> offset, std::pair<int64_t, int64_t> rows,
          std::pair<int64_t, int64_t> cols, std::pair<int64_t, int64_t> origin, std::pair<int64_t, int64_t> step,
          int threads, const std::string& isa) {
  auto input = require<int16_t>(input_a, "input", 4);
  auto weights = require<int16_t>(weights_a, "weights", 6);
  auto a_steps = require<double>(a_steps_a, "a_steps", 1);
  auto w_steps = require<double>(w_steps_a, "w_steps", 1);
  auto bias = require<double>(bias_a, "bias", 1);
  auto out = require<float>(out_a, "out", 4);
  if (!out.writeable()) throw std::invalid_argument("out must be writeable");
  check_apart(out, input, "input");
  check_apart(out, weights, "weights");
  ex::ConvGeometry g;
  g.batch = input.shape(0), g.in_h = input.shape(1), g.in_w = input.shape(2), g.in_c = input.shape(3);
  g.out_h = out.shape(1), g.out_w = out.shape(2), g.out_c = out.shape(3);
  std::tie(g.kh, g.kw) = kernel;
  std::tie(g.sh, g.sw) = stride;
  std::tie(g.off_h, g.off_w) = offset;
  std::tie(g.r0, g.r1) = rows;
  std::tie(g.c0, g.c1) = cols;
  std::tie(g.origin_h, g.origin_w) = origin;
  std::tie(g.step_h, g.step_w) = step;
  const int64_t blocks = (g.out_c + ex::kOutBlock - 1) / ex::kOutBlock;
  if (out.shape(0) != g.batch || a_steps.shape(0) != g.batch)
    throw std::invalid_argument("input, out and a_steps disagree on the batch");
  if (w_steps.shape(0) != g.out_c || bias.shape(0) != g.out_c)
    throw std::invalid_argument("w_steps and bias must have one value per output channel");
  const std::vector<int64_t> packed{blocks, g.kh, g.kw, g.in_c / 2, ex::kOutBlock, 2};
  for (int d = 0; d < 6; ++d)
    if (weights.shape(d) != packed[d])
      throw std::invalid_argument("weights are not packed for this kernel, input and output (dimension " +
                                  std::to_string(d) + ")");
  float* o = out.mutable_data();
  py::gil_scoped_release release;
  ex::conv(g, input.data(), weights.data(), a_steps.data(), w_steps.data(), bias.data(), o, threads, isa);
}

void quantize(const py::array& v_a, const py::array& steps_a, py::array& out_a, std::pair<int64_t, int64_t> at,
              int threads) {
  auto v = require<float>(v_a, "values", 4);
  auto steps = require<double>(steps_a, "steps", 1);
  auto out = require<int16_t>(out_a, "out", 4);
  if (!out.writeable()) throw std::invalid_argument("out must be writeable");
  check_apart(out, v, "values");
  if (steps.shape(0) != v.shape(0) || out.shape(0) != v.shape(0))
    throw std::invalid_argument("values, steps and out disagree on the batch");
  int16_t* o = out.mutable_data();
  py::gil_scoped_release release;
  ex::quantize(v.data(), v.shape(0), v.shape(1), v.shape(2), v.shape(3), steps.data(), o, out.shape(1),
               out.shape(2), out.shape(3), at.first, at.second, threads);
}

py::array_t<float> sanitize_absmax(py::array& v_a, int threads) {
  auto v = require<float>(v_a, "values", 4);
  if (!v.writeable()) throw std::invalid_argument("values must be writeable");
  py::array_t<float> absmax(v.shape(0));
  float* data = v.mutable_data();
  float* m = absmax.mutable_data();
  const int64_t per_image = v.shape(0) ? v.size() / v.shape(0) : 0;
  {
    py::gil_scoped_release release;
    ex::sanitize_absmax(data, v.shape(0), per_image, m, threads);
  }
  return absmax;
}

}  // namespace

PYBIND11_MODULE(_intconv, m) {
  m.doc() = "lickd integer convolutions (int16 x int16 -> int32) on the CPU (see csrc/int_conv.h)";
  m.def("conv", &conv, py::arg("input"), py::arg("weights"), py::arg("a_steps"), py::arg("w_steps"),
        py::arg("bias"), py::arg("out"), py::arg("kernel"), py::arg("stride"), py::arg("offset"), py::arg("rows"),
        py::arg("cols"), py::arg("origin"), py::arg("step"), py::arg("threads") = 0, py::arg("isa") = "auto");
  m.def("quantize", &quantize, py::arg("values"), py::arg("steps"), py::arg("out"), py::arg("at"),
        py::arg("threads") = 0);
  m.def("sanitize_absmax", &sanitize_absmax, py::arg("values"), py::arg("threads") = 0);
  m.def("best_isa", &ex::best_isa);
  m.attr("MAX_REDUCTION") = ex::kMaxReduction;
  m.attr("OUT_BLOCK") = ex::kOutBlock;
}
