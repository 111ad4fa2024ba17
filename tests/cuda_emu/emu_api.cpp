// C entry points (for ctypes) to csrc/rans_cuda.cu compiled against the CPU emulator in this
// folder: the CUDA coder's kernels and host code, run without a GPU. Built by
// tests/test_rans_cuda_emulated.py; "device" pointers are host pointers here.
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "rans_cuda.h"

namespace {

struct Tables {
  lickd::TableSet host;
  lickd::DeviceTables device;
  Tables(const int32_t* cdf, int64_t n, int64_t stride, const int32_t* len, const int32_t* off, int precision)
      : host(cdf, n, stride, len, off, precision), device(host) {}
};

// 0 = ok, 1 = StreamError, 2 = invalid_argument, 3 = anything else (an emulator failure).
int report(char* err, int err_len) {
  try {
    throw;
  } catch (const lickd::StreamError& e) {
    std::snprintf(err, size_t(err_len), "%s", e.what());
    return 1;
  } catch (const std::invalid_argument& e) {
    std::snprintf(err, size_t(err_len), "%s", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::snprintf(err, size_t(err_len), "%s", e.what());
    return 3;
  }
}

}  // namespace

extern "C" {

void* lickd_emu_tables(const int32_t* cdf, int64_t n_tables, int64_t stride, const int32_t* cdf_length,
                       const int32_t* offset, int precision, char* err, int err_len) {
  try {
    return new Tables(cdf, n_tables, stride, cdf_length, offset, precision);
  } catch (...) {
    report(err, err_len);
    return nullptr;
  }
}

void lickd_emu_free_tables(void* t) { delete static_cast<Tables*>(t); }

// Size of the decoder's shared-memory table image (0: it decodes from global memory).
int lickd_emu_shared_table_bytes(void* t) { return static_cast<Tables*>(t)->device.shared_bytes; }

int lickd_emu_decode(void* t, int n, const char* const* data, const int64_t* sizes, const int32_t* const* indexes,
                     int32_t* const* out, const int64_t* counts, int bare, char* err, int err_len) {
  try {
    std::vector<std::string> streams;
    std::vector<uintptr_t> idx, outs;
    for (int i = 0; i < n; ++i) {
      streams.emplace_back(data[i], size_t(sizes[i]));
      idx.push_back(reinterpret_cast<uintptr_t>(indexes[i]));
      outs.push_back(reinterpret_cast<uintptr_t>(out[i]));
    }
    lickd::rans_decode_cuda(static_cast<Tables*>(t)->device, streams, idx, outs, std::vector<int64_t>(counts, counts + n), 0,
                            bare != 0);
    return 0;
  } catch (...) {
    return report(err, err_len);
  }
}

int lickd_emu_encode(void* t, int n, const int32_t* const* symbols, const int32_t* const* indexes, const int64_t* counts,
                     int lanes, int64_t chunks, double max_overhead, int bare, void** result, char* err, int err_len) {
  try {
    std::vector<uintptr_t> sym, idx;
    for (int i = 0; i < n; ++i) {
      sym.push_back(reinterpret_cast<uintptr_t>(symbols[i]));
      idx.push_back(reinterpret_cast<uintptr_t>(indexes[i]));
    }
    lickd::EncodeOptions opt;
    opt.lanes = lanes;
    opt.chunks = chunks;
    opt.max_overhead = max_overhead;
    opt.bare = bare != 0;
    *result = new std::vector<std::vector<uint8_t>>(lickd::rans_encode_cuda(
        static_cast<Tables*>(t)->device, sym, idx, std::vector<int64_t>(counts, counts + n), opt, 0));
    return 0;
  } catch (...) {
    return report(err, err_len);
  }
}

int64_t lickd_emu_result_size(void* r, int i) {
  return int64_t((*static_cast<std::vector<std::vector<uint8_t>>*>(r))[size_t(i)].size());
}

void lickd_emu_result_copy(void* r, int i, uint8_t* dst) {
  const auto& v = (*static_cast<std::vector<std::vector<uint8_t>>*>(r))[size_t(i)];
  std::copy(v.begin(), v.end(), dst);
}

void lickd_emu_free_result(void* r) { delete static_cast<std::vector<std::vector<uint8_t>>*>(r); }

}  // extern "C"
