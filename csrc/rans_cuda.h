// CUDA coder for the lickd rANS stream format (rans_format.h): the same streams the CPU coder
// writes and reads, byte for byte, coded one warp per chunk. Host-side API; device buffers are passed as raw pointers so
// the extension needs no PyTorch headers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rans_tables.h"

namespace lickd {

// A TableSet's arrays in device memory (built once per table set and device).
class DeviceTables {
 public:
  explicit DeviceTables(const TableSet& tables);
  ~DeviceTables();
  DeviceTables(const DeviceTables&) = delete;
  DeviceTables& operator=(const DeviceTables&) = delete;

  const TableSet& host;
  const uint32_t* cdf = nullptr;
  const uint16_t* lut = nullptr;
  const int32_t* rows = nullptr;  // 4 ints per row: cdf start, lut start, n_symbols, offset
  int device = -1;
  // The decoder's shared-memory copy (rows, u16 cdf, coarse u16 lut), or null when it does not fit.
  const uint8_t* shared_image = nullptr;
  int shared_bytes = 0, shared_cdf_offset = 0, shared_lut_offset = 0, shared_lut_shift = 0;
};

// Decodes streams[i] (host bytes) into out_ptrs[i] (device int32, counts[i] symbols) with CDF
// indexes from index_ptrs[i] (device int32), all in one launch on `stream`. Throws StreamError
// naming the stream and chunk on any corruption.
void rans_decode_cuda(const DeviceTables& tables, const std::vector<std::string>& streams,
                      const std::vector<uintptr_t>& index_ptrs, const std::vector<uintptr_t>& out_ptrs,
                      const std::vector<int64_t>& counts, uintptr_t cuda_stream, bool bare = false);

// Encodes counts[i] symbols at symbol_ptrs[i] with the tables at index_ptrs[i] (device int32) for
// every i in one set of launches on `stream`; returns each complete stream (host bytes), identical
// to what rans_encode (CPU) writes for the same input and options (opt.threads is unused).
std::vector<std::vector<uint8_t>> rans_encode_cuda(const DeviceTables& tables, const std::vector<uintptr_t>& symbol_ptrs,
                                                   const std::vector<uintptr_t>& index_ptrs,
                                                   const std::vector<int64_t>& counts, const EncodeOptions& opt,
                                                   uintptr_t cuda_stream);

}  // namespace lickd
