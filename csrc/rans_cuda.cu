// CUDA coder for the lickd rANS stream format (rans_format.h): one warp per chunk, the chunk's K
// lanes on warp lanes 0..K-1, writing and reading exactly the bytes of the CPU coder (rans_cpu.cpp).
//
// Decode: refill words are consumed in ascending lane order within a step (a ballot of the lanes
// that need a word; each takes word number popc(ballot & lanes_below), from 128-byte windows of
// the stream held in the warp's registers and loaded ahead); escape values are taken in
// symbol order the same way; each lane's final state must equal L + lane_check(hash of its
// symbols), every word of the chunk must be consumed and every escape value used; anything else is
// an error code per chunk.
//
// Encode, in four launches with three small device-to-host copies between them:
//   1. estimate_kernel: the sampled size estimate of every stream (integer sum, so the host picks
//      the same lanes and chunks as the CPU coder: choose_layout);
//   2. encode_scan_kernel: per chunk, its escape count and width and the lanes' initial states
//      (L + lane_check), which the host turns into each chunk's head size;
//   3. encode_chunks_kernel: the backward pass: every step's renormalisation words go to
//      ptr - popc(ballot) in a per-chunk scratch (so the stream holds them in ascending lane order
//      per step, as the CPU writes them), escape values into the packed section, final states;
//   4. gather_chunks_kernel: chunk heads and words, compacted into the payload bytes.
// The decoder reads the tables from shared memory when they fit (P <= 15, <= 112 KB: the
// Gaussian set is 88 KB), else through the L1/L2 caches; the encoder's lookups do not depend on
// the coder state, so it reads them through the caches.
//
// tests/cuda_emu emulates the CUDA features used here on the CPU, so CI runs these kernels too.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>

#include "rans_cuda.h"

#ifndef LICKD_LAUNCH  // the CPU emulator (tests/cuda_emu) defines its own
#define LICKD_LAUNCH(kernel, grid, block, shared, stream) kernel<<<grid, block, shared, stream>>>
#define LICKD_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

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

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr size_t kMaxSharedTableBytes = 112 * 1024;  // two decoding blocks per H100 SM
constexpr int kThreadsPerBlock = 128;  // 4 warps, one chunk each

// A device allocation on a stream, freed on scope exit (also when an error unwinds).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer(size_t n, cudaStream_t stream) : stream_(stream) {
    check(cudaMallocAsync(&ptr_, sizeof(T) * (n ? n : 1), stream), "cudaMallocAsync");
  }
  ~DeviceBuffer() { cudaFreeAsync(ptr_, stream_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  void upload(const std::vector<T>& host) {
    if (!host.empty())
      check(cudaMemcpyAsync(ptr_, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice, stream_), "upload");
  }
  // The first n values, once the stream has finished everything queued on it.
  std::vector<T> fetch(size_t n, const char* what) const {
    std::vector<T> host(n);
    if (n) check(cudaMemcpyAsync(host.data(), ptr_, sizeof(T) * n, cudaMemcpyDeviceToHost, stream_), what);
    check(cudaStreamSynchronize(stream_), what);
    return host;
  }
  void zero(size_t n) { check(cudaMemsetAsync(ptr_, 0, sizeof(T) * n, stream_), "cudaMemsetAsync"); }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

int blocks_for_warps(size_t warps) {
  return int((warps + kThreadsPerBlock / 32 - 1) / (kThreadsPerBlock / 32));
}

__device__ __forceinline__ int warp_max(int v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ uint64_t warp_sum_u64(uint64_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v) {
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t other = __shfl_xor_sync(kFullMask, v, o);
    v = other > v ? other : v;
  }
  return v;
}

// The decoder's view of the tables: in global memory (any table set), or copied into shared
// memory (P <= 15, so cdf values fit 16 bits; a coarser lookup table), where each of a step's
// dependent lookups costs tens of cycles instead of hundreds: what bounds one chunk's speed.
template <class CdfT>
struct TableView {
  const CdfT* cdf;
  const uint16_t* lut;
  const int4* rows;  // cdf start, lut start, n_symbols, offset
  int n_tables, lut_shift;

  __device__ __forceinline__ uint32_t at(const int4& r, int32_t s) const { return cdf[r.x + s]; }
  __device__ __forceinline__ int32_t find(const int4& r, uint32_t cf) const {  // cdf[s] <= cf < cdf[s + 1]
    int32_t s = lut[r.y + (cf >> lut_shift)];
    while (at(r, s + 1) <= cf) ++s;
    return s;
  }
};

// Global-memory tables and, when it fits, the shared-memory image of the same tables
// (DeviceTables::shared_image: rows, then u16 cdf, then u16 lut, 16-byte aligned sections).
struct DecodeTables {
  TableView<uint32_t> global;
  const uint4* image;
  int image_words;  // 16-byte words
  int cdf_offset, lut_offset;  // in bytes from the image start
  int shared_lut_shift;
};

template <class Tables>
__device__ void decode_chunk(const uint8_t* __restrict__ bytes, const ChunkDesc& c, const Tables& tables, int lane,
                             int32_t* __restrict__ status_slot);

template <bool kShared>
__global__ void decode_kernel(const uint8_t* __restrict__ bytes, const ChunkDesc* __restrict__ chunks, int n_chunks,
                              DecodeTables tables, int32_t* __restrict__ status) {
  const int warp = int((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int lane = int(threadIdx.x & 31);
  if constexpr (kShared) {
    LICKD_DYNAMIC_SHARED(uint4, image);
    for (int i = int(threadIdx.x); i < tables.image_words; i += int(blockDim.x)) image[i] = tables.image[i];
    __syncthreads();
    const uint8_t* base = reinterpret_cast<const uint8_t*>(image);
    const TableView<uint16_t> view{reinterpret_cast<const uint16_t*>(base + tables.cdf_offset),
                                   reinterpret_cast<const uint16_t*>(base + tables.lut_offset),
                                   reinterpret_cast<const int4*>(base), tables.global.n_tables, tables.shared_lut_shift};
    if (warp < n_chunks) decode_chunk(bytes, chunks[warp], view, lane, status + warp);
  } else {
    if (warp < n_chunks) decode_chunk(bytes, chunks[warp], tables.global, lane, status + warp);
  }
}

template <class Tables>
__device__ void decode_chunk(const uint8_t* __restrict__ bytes, const ChunkDesc& c, const Tables& tables, int lane,
                             int32_t* __restrict__ status_slot) {
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
      if (!varint_group_ok(b, shift)) {
        err = kBadEscapeSection;
        break;
      }
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
  // err and width are the same in every lane here (each parsed the same bytes).
  if (!err && width > 1 && !warp_max(escape_top_bit_used(packed, lane, 32, n_esc, width) ? 1 : 0))
    err = kBadEscapeSection;
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
  // The words are staged through registers, so no step waits on global memory for its refill:
  // windows [base, base + 128) (cur) and the next 128 bytes (nxt) are held one u32 per lane, and
  // the window after them (far) is in flight. base is 4-byte aligned (the stream buffer is padded
  // by 4 bytes); a step consumes at most 64 bytes, so a word never lies beyond nxt.
  const uint8_t* base = wp - (reinterpret_cast<uintptr_t>(wp) & 3);
  auto window = [&](const uint8_t* w) -> uint32_t {
    const uint8_t* q = w + 4 * lane;
    return q < end ? *reinterpret_cast<const uint32_t*>(q) : 0u;
  };
  uint32_t cur = window(base), nxt = window(base + 128), far = window(base + 256);
  const int32_t* idx = reinterpret_cast<const int32_t*>(c.idx_ptr);
  int32_t* out = reinterpret_cast<int32_t*>(c.out_ptr);
  uint64_t esc_used = 0;
  const int64_t steps = (int64_t(c.count) + K - 1) / K;
  // The next step's table index is loaded one step ahead: it does not depend on the state, so its
  // global-memory latency leaves the step's dependency chain.
  int t_next = lane < K && lane < c.count ? idx[lane] : 0;
  for (int64_t step = 0; step < steps && !err; ++step) {
    const int64_t j = step * K + lane;
    const bool active = lane < K && j < c.count;
    const int t = t_next;
    if (lane < K && j + K < c.count) t_next = idx[j + K];
    int lane_err = kOk;
    int32_t s = 0;
    int4 row = make_int4(0, 0, 0, 0);
    bool refill = false;
    if (active) {
      if (t < 0 || t >= tables.n_tables) {
        lane_err = kBadIndex;
      } else {
        row = tables.rows[t];
        const uint32_t cf = x & mask;
        s = tables.find(row, cf);
        const uint32_t start = tables.at(row, s);
        x = (tables.at(row, s + 1) - start) * (x >> P) + cf - start;
        refill = x < kRansL;
      }
    }
    err = warp_max(lane_err);
    if (err) break;
    const unsigned rmask = __ballot_sync(kFullMask, refill);
    const int n_refill = __popc(rmask);
    if (uint64_t(end - wp) < 2ull * n_refill) {
      err = kTruncatedWords;
      break;
    }
    {  // this lane's word: bytes b0, b0 + 1 from base, fetched from the lanes that hold them
      const int b0 = refill ? int(wp - base) + 2 * __popc(rmask & below) : 0, b1 = b0 + 1;
      const uint32_t c0 = __shfl_sync(kFullMask, cur, (b0 >> 2) & 31), n0 = __shfl_sync(kFullMask, nxt, (b0 >> 2) & 31);
      const uint32_t c1 = __shfl_sync(kFullMask, cur, (b1 >> 2) & 31), n1 = __shfl_sync(kFullMask, nxt, (b1 >> 2) & 31);
      const uint32_t lo = ((b0 < 128 ? c0 : n0) >> (8 * (b0 & 3))) & 0xFFu;
      const uint32_t hi = ((b1 < 128 ? c1 : n1) >> (8 * (b1 & 3))) & 0xFFu;
      if (refill) x = (x << 16) | lo | (hi << 8);
    }
    wp += 2 * n_refill;
    if (wp - base >= 128) {
      base += 128;
      cur = nxt;
      nxt = far;
      far = window(base + 256);
    }
    const bool is_escape = active && s == row.z - 1;
    const unsigned emask = __ballot_sync(kFullMask, is_escape);
    int64_t value = s;
    if (is_escape) {
      const uint64_t e = esc_used + __popc(emask & below);
      if (e >= n_esc) {
        lane_err = kMissingEscape;
      } else {
        const uint64_t raw = get_escape(packed, e, width);
        if (raw >= kMaxEscapeRaw) lane_err = kEscapeRange;
        value = escaped_value(raw, s);
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
  if (lane == 0) *status_slot = err;
}

// ------------------------------------------------------------------ encoder kernels
struct EncodeStream {  // estimate_kernel's view of one stream
  uint64_t sym_ptr, idx_ptr;
  int64_t n;
};

struct EncodeChunk {
  uint64_t sym_ptr, idx_ptr;  // device int32* of the chunk's first symbol and index
  int32_t count, lanes;
  uint64_t head_offset;  // escape section + lane states, in the head buffer
  uint64_t word_offset;  // first of `count` u16 scratch slots; the words end at word_offset + count
  uint64_t out_offset;   // where the chunk's payload goes in the output
  uint32_t head_bytes, pad;
};

struct ChunkStats {
  uint32_t n_escapes;
  int32_t width;  // escape width in bits, 0 without escapes
  int32_t error;
  int32_t pad;
};

__device__ __forceinline__ bool valid_index(int t, int n_tables) { return t >= 0 && t < n_tables; }

// Sum of symbol_cost_q16 over the sampled positions of every stream (grid.y = stream).
__global__ void estimate_kernel(const EncodeStream* __restrict__ streams, const uint32_t* __restrict__ cdf,
                                const int4* __restrict__ rows, int n_tables, int precision,
                                unsigned long long* __restrict__ cost) {
  const EncodeStream st = streams[blockIdx.y];
  const int32_t* sym = reinterpret_cast<const int32_t*>(st.sym_ptr);
  const int32_t* idx = reinterpret_cast<const int32_t*>(st.idx_ptr);
  const int64_t step = estimate_step(st.n), samples = estimate_sample_count(st.n);
  uint64_t sum = 0;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < samples; k += int64_t(gridDim.x) * blockDim.x) {
    const int t = idx[k * step];
    if (!valid_index(t, n_tables)) continue;  // encode_scan_kernel reports it
    const int4 r = rows[t];
    uint64_t raw = 0;
    const int32_t s = split_symbol(sym[k * step], r.w, r.z, &raw);
    sum += symbol_cost_q16(cdf[r.x + s + 1] - cdf[r.x + s], precision, s == r.z - 1, raw);
  }
  sum = warp_sum_u64(sum);
  if ((threadIdx.x & 31) == 0 && sum) atomicAdd(&cost[blockIdx.y], (unsigned long long)sum);
}

// Forward pass of each chunk: escape count and width, lane checks -> initial states x0.
__global__ void encode_scan_kernel(const EncodeChunk* __restrict__ chunks, int n_chunks, const int4* __restrict__ rows,
                                   int n_tables, ChunkStats* __restrict__ stats, uint32_t* __restrict__ x0) {
  const int warp = int((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int lane = int(threadIdx.x & 31);
  if (warp >= n_chunks) return;  // the whole warp leaves together
  const EncodeChunk c = chunks[warp];
  const int32_t* sym = reinterpret_cast<const int32_t*>(c.sym_ptr);
  const int32_t* idx = reinterpret_cast<const int32_t*>(c.idx_ptr);
  uint32_t hash = kLaneHashInit;
  uint64_t n_esc = 0, max_raw = 0;
  int err = kOk;
  if (lane < c.lanes)
    for (int64_t j = lane; j < c.count; j += c.lanes) {
      const int t = idx[j];
      if (!valid_index(t, n_tables)) {
        err = kBadIndex;
        continue;
      }
      const int4 r = rows[t];
      const int32_t v = sym[j];
      uint64_t raw = 0;
      if (split_symbol(v, r.w, r.z, &raw) == r.z - 1) {
        ++n_esc;
        max_raw = raw > max_raw ? raw : max_raw;
      }
      hash = lane_hash_add(hash, v);
    }
  n_esc = warp_sum_u64(n_esc);
  max_raw = warp_max_u64(max_raw);
  err = warp_max(err);
  if (lane < c.lanes) x0[size_t(warp) * 32 + lane] = kRansL + lane_check(hash);
  if (lane == 0) stats[warp] = ChunkStats{uint32_t(n_esc), n_esc ? escape_width(max_raw) : 0, err, 0};
}

// Backward pass of each chunk, the exact reverse of the decoder (see the CPU encoder).
__global__ void encode_chunks_kernel(const EncodeChunk* __restrict__ chunks, const ChunkStats* __restrict__ stats,
                                     const uint32_t* __restrict__ x0, int n_chunks, const uint32_t* __restrict__ cdf,
                                     const int4* __restrict__ rows, int precision, uint8_t* __restrict__ head,
                                     uint16_t* __restrict__ words, uint32_t* __restrict__ n_words) {
  const int warp = int((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int lane = int(threadIdx.x & 31);
  if (warp >= n_chunks) return;
  const EncodeChunk c = chunks[warp];
  const ChunkStats st = stats[warp];
  const int K = c.lanes, P = precision;
  const unsigned below = (1u << lane) - 1u;
  const int32_t* sym = reinterpret_cast<const int32_t*>(c.sym_ptr);
  const int32_t* idx = reinterpret_cast<const int32_t*>(c.idx_ptr);
  // Head: varint n_escapes [u8 width, packed escapes] then the K lane states.
  uint8_t* h = head + c.head_offset;
  int at = varint_size(st.n_escapes);
  if (lane == 0) put_varint(h, st.n_escapes);
  uint8_t* packed = h + at + 1;
  if (st.n_escapes) {
    if (lane == 0) h[at] = uint8_t(st.width);
    at += 1 + int((uint64_t(st.n_escapes) * uint64_t(st.width) + 7) / 8);
  }
  uint8_t* states = h + at;

  uint32_t x = lane < K ? x0[size_t(warp) * 32 + lane] : 0;
  uint16_t* w = words + c.word_offset;
  int64_t wpos = c.count;  // words are written backwards from the end of the scratch
  uint64_t esc_left = st.n_escapes;
  const uint32_t max_shift = 32 - P;
  const int64_t last_step = (int64_t(c.count) + K - 1) / K - 1;
  // The next (earlier) step's symbol and index are loaded one step ahead, off the state's chain.
  int32_t t_next = 0, v_next = 0;
  if (lane < K && last_step * K + lane < c.count) {
    t_next = idx[last_step * K + lane];
    v_next = sym[last_step * K + lane];
  }
  for (int64_t step = last_step; step >= 0; --step) {
    const int64_t j = step * K + lane;
    const bool active = lane < K && j < c.count;
    const int32_t t = t_next, v = v_next;
    if (lane < K && step > 0) {
      t_next = idx[j - K];
      v_next = sym[j - K];
    }
    uint32_t start = 0, freq = 1;
    bool is_escape = false;
    uint64_t raw = 0;
    if (active) {
      const int4 r = rows[t];
      const int32_t s = split_symbol(v, r.w, r.z, &raw);
      is_escape = s == r.z - 1;
      start = cdf[r.x + s];
      freq = cdf[r.x + s + 1] - start;
    }
    const bool emit = active && x >= (freq << max_shift);
    const unsigned rmask = __ballot_sync(kFullMask, emit);
    wpos -= __popc(rmask);
    if (emit) {
      w[wpos + __popc(rmask & below)] = uint16_t(x);
      x >>= kWordBits;
    }
    if (active) x = ((x / freq) << P) + (x % freq) + start;
    const unsigned emask = __ballot_sync(kFullMask, is_escape);
    if (emask) {  // rare: escapes of this step are numbers esc_left - popc(emask) ... in lane order
      esc_left -= __popc(emask);
      for (unsigned m = emask; m; m &= m - 1) {  // one lane at a time: neighbours share bytes
        if (lane == __ffs(int(m)) - 1) put_escape(packed, esc_left + __popc(emask & below), st.width, raw);
        __syncwarp();
      }
    }
  }
  if (lane < K)
    for (int b = 0; b < 4; ++b) states[4 * lane + b] = uint8_t(x >> (8 * b));
  if (lane == 0) n_words[warp] = uint32_t(c.count - wpos);
}

// Chunk payload = head bytes then the chunk's words (little-endian), at out_offset.
__global__ void gather_chunks_kernel(const EncodeChunk* __restrict__ chunks, int n_chunks, const uint8_t* __restrict__ head,
                                     const uint16_t* __restrict__ words, const uint32_t* __restrict__ n_words,
                                     uint8_t* __restrict__ out) {
  const int warp = int((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int lane = int(threadIdx.x & 31);
  if (warp >= n_chunks) return;
  const EncodeChunk c = chunks[warp];
  uint8_t* o = out + c.out_offset;
  for (uint32_t i = lane; i < c.head_bytes; i += 32) o[i] = head[c.head_offset + i];
  o += c.head_bytes;
  const uint32_t nw = n_words[warp];
  const uint16_t* w = words + c.word_offset + (uint64_t(c.count) - nw);
  for (uint32_t i = lane; i < nw; i += 32) {
    o[2 * i] = uint8_t(w[i]);
    o[2 * i + 1] = uint8_t(w[i] >> 8);
  }
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

  // The decoder's shared-memory image: rows (int4), cdf as u16 (P <= 15: values <= 2^15), and a
  // lookup table of at most 2^8 buckets per row and 32 KB in all; built only when it fits.
  const int P = tables.precision();
  const int64_t T = tables.n_tables();
  int k = std::min(8, P);
  while (k > 4 && T * (int64_t(1) << k) * 2 > 32 * 1024) --k;
  auto align16 = [](size_t n) { return (n + 15) / 16 * 16; };
  const size_t rows_bytes = align16(size_t(T) * 16), cdf_bytes = align16(c.size() * 2);
  const size_t lut_bytes = align16(size_t(T) * (size_t(1) << k) * 2);
  const size_t total = rows_bytes + cdf_bytes + lut_bytes;
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  if (P <= 15 && total <= std::min<size_t>(size_t(optin), kMaxSharedTableBytes)) {
    std::vector<uint8_t> image(total, 0);
    std::memcpy(image.data(), r.data(), size_t(T) * 16);
    uint16_t* cdf16 = reinterpret_cast<uint16_t*>(image.data() + rows_bytes);
    for (size_t i = 0; i < c.size(); ++i) cdf16[i] = uint16_t(c[i]);
    uint16_t* lut16 = reinterpret_cast<uint16_t*>(image.data() + rows_bytes + cdf_bytes);
    int32_t* image_rows = reinterpret_cast<int32_t*>(image.data());
    for (int64_t t = 0; t < T; ++t) {
      const TableRow& row = tables.row(t);
      image_rows[4 * t + 1] = int32_t(t << k);
      int32_t s = 0;  // bucket b starts at cf = b << (P - k): its symbol s has cdf[s] <= cf < cdf[s + 1]
      for (int64_t b = 0; b < (int64_t(1) << k); ++b) {
        const uint32_t cf = uint32_t(b) << (P - k);
        while (row.cdf[s + 1] <= cf) ++s;
        lut16[(t << k) + b] = uint16_t(s);
      }
    }
    shared_image = device_copy(image.data(), image.size(), "table upload");
    shared_bytes = int(total);
    shared_cdf_offset = int(rows_bytes);
    shared_lut_offset = int(rows_bytes + cdf_bytes);
    shared_lut_shift = P - k;
  }
}

DeviceTables::~DeviceTables() {
  cudaFree(const_cast<uint32_t*>(cdf));
  cudaFree(const_cast<uint16_t*>(lut));
  cudaFree(const_cast<int32_t*>(rows));
  cudaFree(const_cast<uint8_t*>(shared_image));
}

void rans_decode_cuda(const DeviceTables& tables, const std::vector<std::string>& streams,
                      const std::vector<uintptr_t>& index_ptrs, const std::vector<uintptr_t>& out_ptrs,
                      const std::vector<int64_t>& counts, uintptr_t cuda_stream, bool bare) {
  const size_t n_streams = streams.size();
  if (index_ptrs.size() != n_streams || out_ptrs.size() != n_streams || counts.size() != n_streams)
    throw std::invalid_argument("streams, indexes, outputs and counts differ in number");
  const TableSet& t = tables.host;
  std::vector<ChunkDesc> chunks;
  std::vector<std::pair<size_t, uint64_t>> owner;  // (stream, chunk) of each descriptor
  std::vector<uint8_t> all;  // every stream, concatenated
  for (size_t i = 0; i < n_streams; ++i) {
    const std::string& s = streams[i];
    StreamHeader h;
    try {
      h = read_header(reinterpret_cast<const uint8_t*>(s.data()), s.size(), bare ? counts[i] : -1, t.hash());
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
      if (count > uint64_t(INT32_MAX)) throw StreamError("stream " + std::to_string(i) + ": chunk too large");
      chunks.push_back(ChunkDesc{offset, offset + h.chunk_bytes[c], index_ptrs[i] + 4 * begin,
                                 out_ptrs[i] + 4 * begin, int32_t(count), h.lanes(), h.precision, 0});
      owner.emplace_back(i, c);
      offset += h.chunk_bytes[c];
    }
    all.insert(all.end(), s.begin(), s.end());
  }
  if (chunks.empty()) return;
  int device = -1;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (device != tables.device) throw std::invalid_argument("tables live on another CUDA device");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  all.resize(all.size() + 4, 0);  // the decoder's aligned 4-byte window loads may read 3 bytes past a chunk
  DeviceBuffer<uint8_t> d_bytes(all.size(), stream);
  DeviceBuffer<ChunkDesc> d_chunks(chunks.size(), stream);
  DeviceBuffer<int32_t> d_status(chunks.size(), stream);
  d_bytes.upload(all);
  d_chunks.upload(chunks);
  const DecodeTables views{{tables.cdf, tables.lut, reinterpret_cast<const int4*>(tables.rows), int(t.n_tables()),
                            t.lut_shift()},
                           reinterpret_cast<const uint4*>(tables.shared_image), tables.shared_bytes / 16,
                           tables.shared_cdf_offset, tables.shared_lut_offset, tables.shared_lut_shift};
  if (tables.shared_image) {  // 8 warps per block share one copy of the tables
    const int threads = 256, blocks = int((chunks.size() + 7) / 8);
    check(cudaFuncSetAttribute(decode_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, tables.shared_bytes),
          "cudaFuncSetAttribute");
    LICKD_LAUNCH(decode_kernel<true>, blocks, threads, size_t(tables.shared_bytes), stream)(
        d_bytes.get(), d_chunks.get(), int(chunks.size()), views, d_status.get());
  } else {
    LICKD_LAUNCH(decode_kernel<false>, blocks_for_warps(chunks.size()), kThreadsPerBlock, 0, stream)(
        d_bytes.get(), d_chunks.get(), int(chunks.size()), views, d_status.get());
  }
  check(cudaGetLastError(), "decode kernel launch");
  const std::vector<int32_t> status = d_status.fetch(chunks.size(), "decode");
  for (size_t k = 0; k < chunks.size(); ++k)
    if (status[k] != kOk) {
      const std::string where = "stream " + std::to_string(owner[k].first) + " chunk " + std::to_string(owner[k].second);
      if (status[k] == kBadIndex) throw std::invalid_argument(where + ": " + error_text(status[k]));
      throw StreamError(where + ": " + error_text(status[k]));
    }
}

std::vector<std::vector<uint8_t>> rans_encode_cuda(const DeviceTables& tables, const std::vector<uintptr_t>& symbol_ptrs,
                                                   const std::vector<uintptr_t>& index_ptrs,
                                                   const std::vector<int64_t>& counts, const EncodeOptions& opt,
                                                   uintptr_t cuda_stream) {
  const size_t n_streams = symbol_ptrs.size();
  if (index_ptrs.size() != n_streams || counts.size() != n_streams)
    throw std::invalid_argument("symbols, indexes and counts differ in number");
  check_encode_options(opt);
  for (int64_t n : counts)
    if (n < 0) throw std::invalid_argument("negative symbol count");
  if (n_streams > 65535) throw std::invalid_argument("at most 65535 streams per call");
  const TableSet& t = tables.host;
  const int P = t.precision();
  int device = -1;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (device != tables.device) throw std::invalid_argument("tables live on another CUDA device");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  const int4* rows = reinterpret_cast<const int4*>(tables.rows);

  // 1. Size estimates -> lanes and chunks of every stream, as the CPU coder picks them.
  std::vector<uint64_t> cost(n_streams, 0);
  if (n_streams) {
    std::vector<EncodeStream> desc(n_streams);
    int64_t most = 0;
    for (size_t i = 0; i < n_streams; ++i) {
      desc[i] = EncodeStream{symbol_ptrs[i], index_ptrs[i], counts[i]};
      most = std::max(most, estimate_sample_count(counts[i]));
    }
    DeviceBuffer<EncodeStream> d_desc(n_streams, stream);
    DeviceBuffer<unsigned long long> d_cost(n_streams, stream);
    d_desc.upload(desc);
    d_cost.zero(n_streams);
    if (most > 0) {
      const unsigned bx = unsigned(std::min<int64_t>(32, (most + 255) / 256));
      LICKD_LAUNCH(estimate_kernel, dim3(bx, unsigned(n_streams)), 256, 0, stream)(
          d_desc.get(), tables.cdf, rows, int(t.n_tables()), P, d_cost.get());
      check(cudaGetLastError(), "estimate kernel launch");
    }
    const std::vector<unsigned long long> sums = d_cost.fetch(n_streams, "size estimate");
    std::copy(sums.begin(), sums.end(), cost.begin());
  }
  std::vector<StreamHeader> headers(n_streams);
  std::vector<EncodeChunk> chunks;
  std::vector<size_t> first_chunk(n_streams + 1, 0);
  uint64_t n_total = 0;
  for (size_t i = 0; i < n_streams; ++i) {
    StreamHeader& h = headers[i];
    h.precision = P;
    h.table_hash = t.hash();
    h.bare = opt.bare;
    choose_layout(h, counts[i], cost[i], opt);
    const uint64_t per = h.symbols_per_chunk();
    if (per > uint64_t(INT32_MAX)) throw std::invalid_argument("more than 2^31 symbols in one chunk: ask for more chunks");
    first_chunk[i] = chunks.size();
    for (uint64_t c = 0; c < h.n_chunks; ++c) {
      const uint64_t begin = c * per, count = std::min<uint64_t>(h.n_symbols, begin + per) - begin;
      EncodeChunk e{};
      e.sym_ptr = symbol_ptrs[i] + 4 * begin;
      e.idx_ptr = index_ptrs[i] + 4 * begin;
      e.count = int32_t(count);
      e.lanes = h.lanes();
      e.word_offset = n_total;
      n_total += count;
      chunks.push_back(e);
    }
  }
  first_chunk[n_streams] = chunks.size();
  std::vector<std::vector<uint8_t>> result(n_streams);
  const size_t nc = chunks.size();
  if (nc) {
    // 2. Escapes and lane checks -> the size of every chunk's head.
    DeviceBuffer<EncodeChunk> d_chunks(nc, stream);
    DeviceBuffer<ChunkStats> d_stats(nc, stream);
    DeviceBuffer<uint32_t> d_x0(nc * 32, stream);
    d_chunks.upload(chunks);
    LICKD_LAUNCH(encode_scan_kernel, blocks_for_warps(nc), kThreadsPerBlock, 0, stream)(
        d_chunks.get(), int(nc), rows, int(t.n_tables()), d_stats.get(), d_x0.get());
    check(cudaGetLastError(), "encode scan kernel launch");
    const std::vector<ChunkStats> stats = d_stats.fetch(nc, "encode scan");
    uint64_t head_total = 0;
    for (size_t k = 0; k < nc; ++k) {
      if (stats[k].error) {
        const size_t i = size_t(std::upper_bound(first_chunk.begin(), first_chunk.end(), k) - first_chunk.begin()) - 1;
        throw std::invalid_argument("stream " + std::to_string(i) + ": CDF index outside [0, " +
                                    std::to_string(t.n_tables()) + ")");
      }
      const uint64_t n_esc = stats[k].n_escapes;
      chunks[k].head_offset = head_total;
      chunks[k].head_bytes = uint32_t(varint_size(n_esc) + (n_esc ? 1 + (n_esc * uint64_t(stats[k].width) + 7) / 8 : 0) +
                                      4 * uint64_t(chunks[k].lanes));
      head_total += chunks[k].head_bytes;
    }
    // 3. The backward pass into the head buffer and the word scratch.
    DeviceBuffer<uint8_t> d_head(head_total, stream);
    DeviceBuffer<uint16_t> d_words(n_total, stream);
    DeviceBuffer<uint32_t> d_n_words(nc, stream);
    d_head.zero(head_total);  // the packed escapes are OR-ed in
    d_chunks.upload(chunks);
    LICKD_LAUNCH(encode_chunks_kernel, blocks_for_warps(nc), kThreadsPerBlock, 0, stream)(
        d_chunks.get(), d_stats.get(), d_x0.get(), int(nc), tables.cdf, rows, P, d_head.get(), d_words.get(),
        d_n_words.get());
    check(cudaGetLastError(), "encode kernel launch");
    const std::vector<uint32_t> n_words = d_n_words.fetch(nc, "encode");
    // 4. Compaction into one payload buffer; each stream's header goes in front on the host.
    uint64_t out_total = 0;
    for (size_t k = 0; k < nc; ++k) {
      chunks[k].out_offset = out_total;
      out_total += chunks[k].head_bytes + 2 * uint64_t(n_words[k]);
    }
    DeviceBuffer<uint8_t> d_out(out_total, stream);
    d_chunks.upload(chunks);
    LICKD_LAUNCH(gather_chunks_kernel, blocks_for_warps(nc), kThreadsPerBlock, 0, stream)(
        d_chunks.get(), int(nc), d_head.get(), d_words.get(), d_n_words.get(), d_out.get());
    check(cudaGetLastError(), "gather kernel launch");
    const std::vector<uint8_t> payload = d_out.fetch(out_total, "encode output");
    for (size_t i = 0; i < n_streams; ++i) {
      const size_t a = first_chunk[i], b = first_chunk[i + 1];
      for (size_t k = a; k < b; ++k) headers[i].chunk_bytes.push_back(chunks[k].head_bytes + 2 * uint64_t(n_words[k]));
      ByteWriter w;
      write_header(w, headers[i]);
      if (b > a) {
        const uint64_t from = chunks[a].out_offset, to = chunks[b - 1].out_offset + headers[i].chunk_bytes.back();
        w.bytes(payload.data() + from, size_t(to - from));
      }
      result[i] = std::move(w.buf);
    }
    return result;
  }
  for (size_t i = 0; i < n_streams; ++i) {
    ByteWriter w;
    write_header(w, headers[i]);
    result[i] = std::move(w.buf);
  }
  return result;
}

}  // namespace lickd
