// CUDA decoder for the lickd rANS stream format: one warp per chunk, the chunk's K lanes on warp
// lanes 0..K-1. It reads exactly the bytes the CPU coder (rans_cpu.cpp) writes:
//   * refill words are consumed in ascending lane order within a step: a ballot of the lanes that
//     need a word, and each takes word number popc(ballot & lanes_below);
//   * escape values are taken in symbol order the same way (ballot of escape markers);
//   * each lane's final state must equal L + lane_check(hash of its symbols), every word of the
//     chunk must be consumed and every escape value used; anything else is an error code per chunk.
// Tables are read through the L1/L2 caches (a shared-memory copy is a later optimisation).
#include <cuda_runtime.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "rans_cuda.h"

namespace lickd {

namespace {

struct ChunkDesc {
  uint64_t byte_begin;  // in the concatenated stream buffer
  uint64_t byte_end;
  uint64_t idx_ptr;  // device int32* of the chunk's first index
  uint64_t out_ptr;  // device int32* of the chunk's first output
  int32_t count;
  int32_t lanes;
  int32_t precision;
  int32_t pad;
};

enum ErrorCode : int32_t {
  kOk = 0,
  kTruncatedWords,
  kTrailingWords,
  kBadEscapeSection,
  kMissingEscape,
  kUnusedEscapes,
  kEscapeRange,
  kSymbolRange,
  kChecksum,
  kBadLaneState,
  kOddWords,
  kTruncated,
  kBadIndex,
};

const char* error_text(int32_t code) {
  switch (code) {
    case kTruncatedWords: return "truncated (ran out of words)";
    case kTrailingWords: return "unused words after the last symbol";
    case kBadEscapeSection: return "invalid escape section";
    case kMissingEscape: return "escape marker without escape value";
    case kUnusedEscapes: return "unused escape values";
    case kEscapeRange: return "escape value out of range";
    case kSymbolRange: return "symbol out of int32 range";
    case kChecksum: return "checksum mismatch (corrupt stream)";
    case kBadLaneState: return "invalid lane state";
    case kOddWords: return "odd word section";
    case kTruncated: return "truncated chunk";
    case kBadIndex: return "CDF index out of range";
    default: return "unknown error";
  }
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

__device__ __forceinline__ int warp_max(int v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

__global__ void decode_kernel(const uint8_t* __restrict__ bytes, const ChunkDesc* __restrict__ chunks, int n_chunks,
                              const uint32_t* __restrict__ cdf, const uint16_t* __restrict__ lut,
                              const int4* __restrict__ rows, int n_tables, int lut_shift,
                              int32_t* __restrict__ status) {
  const int warp = int((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int lane = int(threadIdx.x & 31);
  if (warp >= n_chunks) return;  // the whole warp leaves together
  const ChunkDesc c = chunks[warp];
  const int K = c.lanes, P = c.precision;
  const uint32_t mask = (1u << P) - 1;
  const uint8_t* p = bytes + c.byte_begin;
  const uint8_t* const end = bytes + c.byte_end;
  const unsigned below = (1u << lane) - 1u;
  int err = kOk;

  // Escape section (every lane parses the same few bytes).
  uint64_t n_esc = 0;
  int width = 0;
  const uint8_t* packed = nullptr;
  {
    int shift = 0;
    bool done = false;
    while (!done && !err) {
      if (p >= end || shift > 63) {
        err = kTruncated;
        break;
      }
      const uint8_t b = *p++;
      n_esc |= uint64_t(b & 0x7F) << shift;
      shift += 7;
      done = !(b & 0x80);
    }
    if (!err && n_esc > uint64_t(c.count)) err = kBadEscapeSection;
    if (!err && n_esc) {
      if (p >= end) err = kTruncated;
      else {
        width = *p++;
        if (width < 1 || width > 64) err = kBadEscapeSection;
        const uint64_t nbytes = (n_esc * uint64_t(width) + 7) / 8;
        if (!err && uint64_t(end - p) < nbytes) err = kTruncated;
        if (!err) {
          packed = p;
          p += nbytes;
          const uint64_t used = n_esc * uint64_t(width);
          if ((used & 7) && (packed[nbytes - 1] >> (used & 7))) err = kBadEscapeSection;
        }
      }
    }
  }
  // Lane states.
  uint32_t x = 0, hash = kLaneHashInit;
  if (!err && uint64_t(end - p) < 4ull * K) err = kTruncated;
  if (!err) {
    if (lane < K) {
      const uint8_t* s = p + 4 * lane;
      x = uint32_t(s[0]) | (uint32_t(s[1]) << 8) | (uint32_t(s[2]) << 16) | (uint32_t(s[3]) << 24);
    }
    p += 4 * K;
    if (warp_max(lane < K && x < kRansL ? 1 : 0)) err = kBadLaneState;
    if (!err && ((end - p) & 1)) err = kOddWords;
  }
  const uint8_t* wp = p;
  const int32_t* idx = reinterpret_cast<const int32_t*>(c.idx_ptr);
  int32_t* out = reinterpret_cast<int32_t*>(c.out_ptr);
  uint64_t esc_used = 0;
  const int64_t steps = (int64_t(c.count) + K - 1) / K;
  for (int64_t step = 0; step < steps && !err; ++step) {
    const int64_t j = step * K + lane;
    const bool active = lane < K && j < c.count;
    int lane_err = kOk;
    int32_t s = 0;
    int4 row = make_int4(0, 0, 0, 0);
    bool refill = false;
    if (active) {
      const int t = idx[j];
      if (t < 0 || t >= n_tables) {
        lane_err = kBadIndex;
      } else {
        row = rows[t];
        const uint32_t cf = x & mask;
        s = lut[row.y + (cf >> lut_shift)];
        while (cdf[row.x + s + 1] <= cf) ++s;
        const uint32_t start = cdf[row.x + s];
        x = (cdf[row.x + s + 1] - start) * (x >> P) + cf - start;
        refill = x < kRansL;
      }
    }
    err = warp_max(lane_err);
    if (err) break;
    const unsigned rmask = __ballot_sync(0xFFFFFFFFu, refill);
    const int n_refill = __popc(rmask);
    if (uint64_t(end - wp) < 2ull * n_refill) {
      err = kTruncatedWords;
      break;
    }
    if (refill) {
      const uint8_t* w = wp + 2 * __popc(rmask & below);
      x = (x << 16) | uint32_t(w[0]) | (uint32_t(w[1]) << 8);
    }
    wp += 2 * n_refill;
    const bool is_escape = active && s == row.z - 1;
    const unsigned emask = __ballot_sync(0xFFFFFFFFu, is_escape);
    int64_t value = s;
    if (is_escape) {
      const uint64_t e = esc_used + __popc(emask & below);
      if (e >= n_esc) {
        lane_err = kMissingEscape;
      } else {
        uint64_t raw = 0;
        const uint64_t bit0 = e * uint64_t(width);
        for (int b = 0; b < width; ++b) {
          const uint64_t bit = bit0 + b;
          raw |= uint64_t((packed[bit >> 3] >> (bit & 7)) & 1) << b;
        }
        if (raw >= (1ull << 34)) lane_err = kEscapeRange;
        value = (raw & 1) ? -int64_t((raw >> 1) + 1) : int64_t(s) + int64_t(raw >> 1);
      }
    }
    esc_used += __popc(emask);
    if (active && !lane_err) {
      const int64_t sym = value + row.w;
      if (sym < INT32_MIN || sym > INT32_MAX) {
        lane_err = kSymbolRange;
      } else {
        out[j] = int32_t(sym);
        hash = lane_hash_add(hash, int32_t(sym));
      }
    }
    err = warp_max(lane_err);
  }
  if (!err && wp != end) err = kTrailingWords;
  if (!err && esc_used != n_esc) err = kUnusedEscapes;
  if (!err && warp_max(lane < K && x != kRansL + lane_check(hash) ? 1 : 0)) err = kChecksum;
  if (lane == 0) status[warp] = err;
}

template <class T>
T* device_copy(const T* host, size_t n, const char* what) {
  T* ptr = nullptr;
  check(cudaMalloc(&ptr, sizeof(T) * (n ? n : 1)), what);
  if (n) check(cudaMemcpy(ptr, host, sizeof(T) * n, cudaMemcpyHostToDevice), what);
  return ptr;
}

}  // namespace

DeviceTables::DeviceTables(const TableSet& tables) : host(tables) {
  check(cudaGetDevice(&device), "cudaGetDevice");
  const auto& c = tables.cdf_values();
  const auto& l = tables.lut_values();
  std::vector<int32_t> r(size_t(tables.n_tables()) * 4);
  for (int64_t t = 0; t < tables.n_tables(); ++t) {
    const TableRow& row = tables.row(t);
    r[4 * t] = int32_t(row.cdf - c.data());
    r[4 * t + 1] = int32_t(row.lut - l.data());
    r[4 * t + 2] = row.n_symbols;
    r[4 * t + 3] = row.offset;
  }
  cdf = device_copy(c.data(), c.size(), "table upload");
  lut = device_copy(l.data(), l.size(), "table upload");
  rows = device_copy(r.data(), r.size(), "table upload");
}

DeviceTables::~DeviceTables() {
  cudaFree(const_cast<uint32_t*>(cdf));
  cudaFree(const_cast<uint16_t*>(lut));
  cudaFree(const_cast<int32_t*>(rows));
}

void rans_decode_cuda(const DeviceTables& tables, const std::vector<std::string>& streams,
                      const std::vector<uintptr_t>& index_ptrs, const std::vector<uintptr_t>& out_ptrs,
                      const std::vector<int64_t>& counts, uintptr_t cuda_stream) {
  const size_t n_streams = streams.size();
  if (index_ptrs.size() != n_streams || out_ptrs.size() != n_streams || counts.size() != n_streams)
    throw std::invalid_argument("streams, indexes, outputs and counts differ in number");
  const TableSet& t = tables.host;
  std::vector<ChunkDesc> chunks;
  std::vector<std::pair<size_t, uint64_t>> owner;  // (stream, chunk) of each descriptor
  std::string all;
  for (size_t i = 0; i < n_streams; ++i) {
    const std::string& s = streams[i];
    StreamHeader h;
    try {
      h = read_header(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    } catch (const StreamError& e) {
      throw StreamError("stream " + std::to_string(i) + ": " + e.what());
    }
    if (h.n_symbols != uint64_t(counts[i]))
      throw StreamError("stream " + std::to_string(i) + " holds " + std::to_string(h.n_symbols) +
                        " symbols, expected " + std::to_string(counts[i]));
    if (h.precision != t.precision() || h.table_hash != t.hash())
      throw StreamError("stream " + std::to_string(i) + " was coded with other CDF tables (model or weights mismatch)");
    const uint64_t base = all.size(), per = h.symbols_per_chunk();
    uint64_t offset = base + h.payload_offset;
    for (uint64_t c = 0; c < h.n_chunks; ++c) {
      const uint64_t begin = c * per, count = std::min<uint64_t>(h.n_symbols, begin + per) - begin;
      chunks.push_back(ChunkDesc{offset, offset + h.chunk_bytes[c], index_ptrs[i] + 4 * begin,
                                 out_ptrs[i] + 4 * begin, int32_t(count), h.lanes(), h.precision, 0});
      owner.emplace_back(i, c);
      offset += h.chunk_bytes[c];
    }
    all += s;
  }
  if (chunks.empty()) return;
  int device = -1;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (device != tables.device) throw std::invalid_argument("tables live on another CUDA device");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  uint8_t* d_bytes = nullptr;
  ChunkDesc* d_chunks = nullptr;
  int32_t* d_status = nullptr;
  std::vector<int32_t> status(chunks.size(), 0);
  auto release = [&]() {
    cudaFreeAsync(d_bytes, stream);
    cudaFreeAsync(d_chunks, stream);
    cudaFreeAsync(d_status, stream);
  };
  try {
    check(cudaMallocAsync(&d_bytes, all.size(), stream), "cudaMallocAsync");
    check(cudaMallocAsync(&d_chunks, sizeof(ChunkDesc) * chunks.size(), stream), "cudaMallocAsync");
    check(cudaMallocAsync(&d_status, sizeof(int32_t) * chunks.size(), stream), "cudaMallocAsync");
    check(cudaMemcpyAsync(d_bytes, all.data(), all.size(), cudaMemcpyHostToDevice, stream), "upload");
    check(cudaMemcpyAsync(d_chunks, chunks.data(), sizeof(ChunkDesc) * chunks.size(), cudaMemcpyHostToDevice, stream),
          "upload");
    const int threads = 128, warps_per_block = threads / 32;
    const int blocks = int((chunks.size() + warps_per_block - 1) / warps_per_block);
    decode_kernel<<<blocks, threads, 0, stream>>>(d_bytes, d_chunks, int(chunks.size()), tables.cdf, tables.lut,
                                                  reinterpret_cast<const int4*>(tables.rows), int(t.n_tables()),
                                                  t.lut_shift(), d_status);
    check(cudaGetLastError(), "decode kernel launch");
    check(cudaMemcpyAsync(status.data(), d_status, sizeof(int32_t) * chunks.size(), cudaMemcpyDeviceToHost, stream),
          "status download");
    check(cudaStreamSynchronize(stream), "decode");
  } catch (...) {
    release();
    throw;
  }
  release();
  for (size_t k = 0; k < chunks.size(); ++k)
    if (status[k] != kOk) {
      const std::string where = "stream " + std::to_string(owner[k].first) + " chunk " + std::to_string(owner[k].second);
      if (status[k] == kBadIndex) throw std::invalid_argument(where + ": " + error_text(status[k]));
      throw StreamError(where + ": " + error_text(status[k]));
    }
}

}  // namespace lickd
