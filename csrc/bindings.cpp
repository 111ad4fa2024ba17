// Python bindings of the rANS coder (CPU, and CUDA when built with it): module lickd._rans.
// Arrays are taken without copies (C-contiguous int32 required; the Python wrapper
// lickd.entropy.coder converts), and the GIL is released while coding.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "rans_cpu.h"
#ifdef LICKD_WITH_CUDA
#include "rans_cuda.h"
#endif

namespace py = pybind11;
using lickd::TableSet;

namespace {

using IntArray = py::array_t<int32_t, py::array::c_style>;

IntArray require(const py::array& a, const char* name, int ndim) {
  if (!py::isinstance<IntArray>(a) || a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must be a C-contiguous int32 array with " +
                                std::to_string(ndim) + " dimension(s)");
  return py::reinterpret_borrow<IntArray>(a);
}

TableSet make_tables(const py::array& cdf_a, const py::array& len_a, const py::array& off_a,
                     int precision) {
  auto cdf = require(cdf_a, "cdf", 2), len = require(len_a, "cdf_length", 1),
       off = require(off_a, "offset", 1);
  if (len.shape(0) != cdf.shape(0) || off.shape(0) != cdf.shape(0))
    throw std::invalid_argument("cdf, cdf_length and offset disagree on the number of tables");
  return TableSet(cdf.data(), cdf.shape(0), cdf.shape(1), len.data(), off.data(), precision);
}

py::bytes encode(const TableSet& tables, const py::array& sym_a, const py::array& idx_a, int lanes,
                 int64_t chunks, double max_overhead, int threads, bool bare) {
  auto sym = require(sym_a, "symbols", 1), idx = require(idx_a, "indexes", 1);
  if (sym.shape(0) != idx.shape(0))
    throw std::invalid_argument("symbols and indexes differ in length");
  lickd::EncodeOptions opt;
  opt.lanes = lanes;
  opt.chunks = chunks;
  opt.max_overhead = max_overhead;
  opt.threads = threads;
  opt.bare = bare;
  std::vector<uint8_t> out;
  {
    py::gil_scoped_release release;
    out = lickd::rans_encode(tables, sym.data(), idx.data(), sym.shape(0), opt);
  }
  return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
}

IntArray decode(const TableSet& tables, const py::buffer& data, const py::array& idx_a,
                int threads, bool bare) {
  auto idx = require(idx_a, "indexes", 1);
  py::buffer_info buf = data.request();
  if (buf.itemsize != 1 || buf.ndim != 1 || (buf.ndim == 1 && buf.strides[0] != 1))
    throw std::invalid_argument("stream must be a contiguous bytes-like object");
  IntArray out(idx.shape(0));
  const auto* p = static_cast<const uint8_t*>(buf.ptr);
  int32_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    lickd::rans_decode(tables, p, size_t(buf.size), idx.data(), idx.shape(0), o, threads, bare);
  }
  return out;
}

py::dict stream_info(const py::bytes& data, int64_t bare_symbols) {
  std::string s = data;
  auto h = lickd::read_header(reinterpret_cast<const uint8_t*>(s.data()), s.size(), bare_symbols);
  py::dict d;
  d["bare"] = h.bare;
  d["precision"] = h.precision;
  d["lanes"] = h.lanes();
  d["n_symbols"] = h.n_symbols;
  d["n_chunks"] = h.n_chunks;
  d["table_hash"] = h.table_hash;
  d["chunk_bytes"] = h.chunk_bytes;
  d["header_bytes"] = h.payload_offset;
  return d;
}

}  // namespace

PYBIND11_MODULE(_rans, m) {
  m.doc() = "lickd rANS coder, CPU and CUDA (stream format v1, see csrc/rans_format.h)";
  py::register_exception<lickd::StreamError>(m, "StreamError", PyExc_ValueError);

  py::class_<TableSet>(m, "TableSet")
      .def(py::init(&make_tables), py::arg("cdf"), py::arg("cdf_length"), py::arg("offset"),
           py::arg("precision"))
      .def_property_readonly("precision", &TableSet::precision)
      .def_property_readonly("n_tables", &TableSet::n_tables)
      .def_property_readonly("hash", &TableSet::hash);

  m.def("encode", &encode, py::arg("tables"), py::arg("symbols"), py::arg("indexes"),
        py::arg("lanes") = 0, py::arg("chunks") = 0, py::arg("max_overhead") = 0.0025,
        py::arg("threads") = 0, py::arg("bare") = false);
  m.def("decode", &decode, py::arg("tables"), py::arg("data"), py::arg("indexes"),
        py::arg("threads") = 0, py::arg("bare") = false);
  // bare_symbols >= 0: a bare stream of that many symbols (its table hash is not stored: 0)
  m.def("stream_info", &stream_info, py::arg("data"), py::arg("bare_symbols") = -1);
#ifdef LICKD_WITH_CUDA
  m.attr("WITH_CUDA") = true;
  // Device copy of a TableSet (keeps the TableSet alive) and the batched CUDA coder. Device
  // buffers are passed as data pointers with the current CUDA stream handle.
  py::class_<lickd::DeviceTables>(m, "DeviceTables")
      .def(py::init<const TableSet&>(), py::arg("tables"), py::keep_alive<1, 2>())
      .def_readonly("device", &lickd::DeviceTables::device);
  m.def(
      "decode_cuda",
      [](const lickd::DeviceTables& tables, const std::vector<py::bytes>& streams,
         const std::vector<uintptr_t>& index_ptrs, const std::vector<uintptr_t>& out_ptrs,
         const std::vector<int64_t>& counts, uintptr_t stream, bool bare) {
        std::vector<std::string> data(streams.begin(), streams.end());
        py::gil_scoped_release release;
        lickd::rans_decode_cuda(tables, data, index_ptrs, out_ptrs, counts, stream, bare);
      },
      py::arg("tables"), py::arg("streams"), py::arg("index_ptrs"), py::arg("out_ptrs"), py::arg("counts"),
      py::arg("stream"), py::arg("bare") = false);
  m.def(
      "encode_cuda",
      [](const lickd::DeviceTables& tables, const std::vector<uintptr_t>& symbol_ptrs,
         const std::vector<uintptr_t>& index_ptrs, const std::vector<int64_t>& counts, int lanes, int64_t chunks,
         double max_overhead, uintptr_t stream, bool bare) {
        lickd::EncodeOptions opt;
        opt.lanes = lanes;
        opt.chunks = chunks;
        opt.max_overhead = max_overhead;
        opt.bare = bare;
        std::vector<std::vector<uint8_t>> out;
        {
          py::gil_scoped_release release;
          out = lickd::rans_encode_cuda(tables, symbol_ptrs, index_ptrs, counts, opt, stream);
        }
        py::list result;
        for (const auto& o : out) result.append(py::bytes(reinterpret_cast<const char*>(o.data()), o.size()));
        return result;
      },
      py::arg("tables"), py::arg("symbol_ptrs"), py::arg("index_ptrs"), py::arg("counts"), py::arg("lanes") = 0,
      py::arg("chunks") = 0, py::arg("max_overhead") = 0.0025, py::arg("stream") = 0, py::arg("bare") = false);
#else
  m.attr("WITH_CUDA") = false;
#endif
  m.attr("STREAM_VERSION") = int(lickd::kStreamVersion);
}
