// lickd rANS stream format, version 1: constants and byte-level helpers shared by
// the CPU coder (rans_cpu.cpp) and any other backend that must produce the same bytes.
//
// Coding core (docs/format.md): 32-bit state, L = 2^16, 16-bit
// renormalisation words, CDF precision P in [12, 16]. A stream codes N symbols split into
// n_chunks chunks of equal symbol count; inside a chunk, symbol j goes to lane j % K at step
// j / K. All integers are little-endian.
//
//   u16  magic = 0x4B72 ("rK")          u8 version = 1
//   u8   flags: bits 0-2 = P - 12, bits 3-5 = log2(K), bit 6 = 0, bit 7 = 0
//   varint n_symbols, varint n_chunks   (n_chunks == 0 iff n_symbols == 0)
//   u32  table_hash                    (CRC32 of the packed CDF tables: detects a model mismatch)
//   n_chunks x varint chunk_bytes      (directory: the offset of every chunk is a prefix sum)
//
// A *bare* stream, for containers that already carry a magic, a version, the model's identity and
// the symbol count (the .lkd file), leaves out magic, version, n_symbols and table_hash:
//   u8 flags (bit 6 = 1), varint n_chunks, the directory, the chunks
// Its reader gets n_symbols and the tables from the caller. That saves 10-11 bytes per stream:
// 0.2 % of a low-rate Kodak y stream (~5 KB).
//   chunk payloads, each:
//     varint n_escapes; if n_escapes > 0: u8 width (1..64, the narrowest that holds the widest
//       value), ceil(n_escapes*width/8) bytes of escape values packed LSB-first, in symbol order
//     K x u32 lane states              (the encoder's final states = the decoder's initial ones)
//     u16 words                        (decoder-forward order; within a step, ascending lanes)
//
// Every lane starts encoding at x0 = L + check(its symbols), a 16-bit hash of the lane's symbols
// (lane_check below), so the decoder verifies each lane's final state and that every word of the
// chunk was consumed: a desync or corruption is an error.
//
// A stream has one form: readers accept only what the writer writes (shortest varints, the
// narrowest escape width, one lane recorded for an empty stream), so other bytes never decode to
// the same symbols.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

// Helpers that the CUDA decoder runs too: one definition, so CPU and GPU agree bit for bit.
#ifdef __CUDACC__
#define LICKD_HOST_DEVICE __host__ __device__
#else
#define LICKD_HOST_DEVICE
#endif

namespace lickd {

constexpr uint16_t kStreamMagic = 0x4B72;
constexpr uint8_t kStreamVersion = 1;
constexpr uint32_t kRansL = 1u << 16;  // lower bound of the normalised state interval
constexpr int kWordBits = 16;
constexpr int kMinPrecision = 12;
constexpr int kMaxPrecision = 16;
constexpr int kMaxLog2Lanes = 5;  // K <= 32: a warp per chunk on the GPU

// Raised for anything wrong with a stream; Python sees it as lickd.StreamError (ValueError).
struct StreamError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- checksums
uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t n);  // zlib's CRC-32

// Lane check: h = h * A + symbol over the lane's symbols in decode order (one multiply-add per
// symbol, the same on CPU and GPU; a change of any one symbol always changes h), then mixed
// (murmur3's finaliser) and cut to 16 bits.
constexpr uint32_t kLaneHashInit = 0x2545F491u;
constexpr uint32_t kLaneHashMul = 0x9E3779B1u;
LICKD_HOST_DEVICE inline uint32_t lane_hash_add(uint32_t h, int32_t symbol) { return h * kLaneHashMul + uint32_t(symbol); }
LICKD_HOST_DEVICE inline uint32_t lane_check(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h & 0xFFFFu;
}

// ---------------------------------------------------------------- symbols and escapes
// Escape raw values stay below 2^34 for any int32 symbol and offset (|overflow| < 2^33).
constexpr uint64_t kMaxEscapeRaw = 1ull << 34;

LICKD_HOST_DEVICE inline int floor_log2_u64(uint64_t v) {  // v > 0
#ifdef __CUDA_ARCH__
  return 63 - __clzll((long long)v);
#else
  return 63 - __builtin_clzll(v);
#endif
}

// The table symbol of `symbol` in a row of n_symbols symbols (the last one the escape) starting
// at `offset`: its index, or the escape with *raw = zigzag of the overflow (coded in the chunk's
// escape section).
LICKD_HOST_DEVICE inline int32_t split_symbol(int32_t symbol, int32_t offset, int32_t n_symbols, uint64_t* raw) {
  const int32_t esc = n_symbols - 1;
  const int64_t value = int64_t(symbol) - offset;
  if (value >= 0 && value < esc) return int32_t(value);
  *raw = value < 0 ? uint64_t(-2 * value - 1) : uint64_t(2 * (value - esc));
  return esc;
}

// Inverse of split_symbol for an escape: the value relative to the row's offset.
LICKD_HOST_DEVICE inline int64_t escaped_value(uint64_t raw, int32_t esc) {
  return (raw & 1) ? -int64_t((raw >> 1) + 1) : int64_t(esc) + int64_t(raw >> 1);
}

// Bits an escape value takes in the escape section: the chunk's widest value sets the width.
LICKD_HOST_DEVICE inline int escape_width(uint64_t max_raw) { return floor_log2_u64(max_raw | 1) + 1; }

// Escape e of a chunk occupies bits [e * width, (e + 1) * width) of its packed section, LSB first.
LICKD_HOST_DEVICE inline void put_escape(uint8_t* packed, uint64_t e, int width, uint64_t raw) {
  for (int b = 0; b < width; ++b)
    if ((raw >> b) & 1) {
      const uint64_t bit = e * uint64_t(width) + b;
      packed[bit >> 3] |= uint8_t(1u << (bit & 7));
    }
}
LICKD_HOST_DEVICE inline uint64_t get_escape(const uint8_t* packed, uint64_t e, int width) {
  uint64_t raw = 0;
  for (int b = 0; b < width; ++b) {
    const uint64_t bit = e * uint64_t(width) + b;
    raw |= uint64_t((packed[bit >> 3] >> (bit & 7)) & 1) << b;
  }
  return raw;
}
// The encoder writes the narrowest width that holds the chunk's widest value, so a reader accepts a
// width only if some escape uses its top bit (or it is 1): every stream a reader accepts is then
// the one the encoder writes. This looks at escapes first, first + step, ... below n (the CUDA
// decoder spreads them over a warp's lanes).
LICKD_HOST_DEVICE inline bool escape_top_bit_used(const uint8_t* packed, uint64_t first, uint64_t step, uint64_t n,
                                                  int width) {
  for (uint64_t e = first; e < n; e += step) {
    const uint64_t bit = e * uint64_t(width) + uint64_t(width - 1);
    if ((packed[bit >> 3] >> (bit & 7)) & 1) return true;
  }
  return false;
}

// ---------------------------------------------------------------- encoder layout policy
// How an encoder picks lanes and chunks. Every backend must pick the same to write the same
// bytes, so the size estimate is integer arithmetic on a fixed sample: symbols at positions
// 0, step, 2*step, ... (step = max(1, n / 2^16)), each costing P - log2(freq) bits (plus the raw
// bits of an escape) in units of 2^-16 bit, summed exactly.
constexpr int64_t kEstimateSamples = 1 << 16;
LICKD_HOST_DEVICE inline int64_t estimate_step(int64_t n) { return n / kEstimateSamples > 1 ? n / kEstimateSamples : 1; }
LICKD_HOST_DEVICE inline int64_t estimate_sample_count(int64_t n) {
  return n > 0 ? (n + estimate_step(n) - 1) / estimate_step(n) : 0;
}

// Cost of one symbol of frequency freq (1..2^P) in 2^-16 bit: log2 to about 0.01 bit by
// log2(1 + m) ~ m * (1.3465557 - 0.3465557 m), in fixed point.
LICKD_HOST_DEVICE inline uint64_t symbol_cost_q16(uint32_t freq, int precision, bool escape, uint64_t raw) {
  const int e = floor_log2_u64(freq);
  const uint64_t m = ((uint64_t(freq) << 16) >> e) - (1u << 16);  // mantissa in [0, 1), Q16
  const uint64_t log2_q16 = (uint64_t(e) << 16) + ((m * (88248u - ((22712u * m) >> 16))) >> 16);
  uint64_t cost = (uint64_t(precision) << 16) - log2_q16;
  if (escape) cost += uint64_t(floor_log2_u64(raw + 1) + 1) << 16;
  return cost;
}

struct EncodeOptions {
  int lanes = 0;                 // K in {1, 2, 4, 8, 16, 32}; 0 = choose from the estimated size
  int64_t chunks = 0;            // 0 = choose from the estimated size and max_overhead
  double max_overhead = 0.0025;  // rate budget for lane states, as a fraction of the estimate
  int threads = 0;               // CPU coder: 0 = all hardware threads
  bool bare = false;             // write a bare stream (no magic, version, symbol count, table hash)
};
void check_encode_options(const EncodeOptions& opt);  // std::invalid_argument when invalid

struct StreamHeader;
// Fills h.log2_lanes and h.n_chunks for n symbols whose sampled cost (estimate_sample_count(n)
// samples) sums to cost_q16: lane states may take at most max_overhead of the estimated size.
void choose_layout(StreamHeader& h, int64_t n, uint64_t cost_q16, const EncodeOptions& opt);

// ---------------------------------------------------------------- varints (LEB128)
LICKD_HOST_DEVICE inline int varint_size(uint64_t v) {
  int n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}
LICKD_HOST_DEVICE inline int put_varint(uint8_t* p, uint64_t v) {
  int n = 0;
  for (; v >= 0x80; v >>= 7) p[n++] = uint8_t(v) | 0x80;
  p[n++] = uint8_t(v);
  return n;
}
// Group b of a varint at bit `shift` as a reader accepts it: a last group of zero (after the
// first) would be a longer form of a shorter varint, and the tenth group holds only bit 63.
LICKD_HOST_DEVICE inline bool varint_group_ok(uint8_t b, int shift) {
  return !(shift > 0 && b == 0) && !(shift == 63 && b > 1);
}

// ---------------------------------------------------------------- writer
class ByteWriter {
 public:
  std::vector<uint8_t> buf;
  void u8(uint8_t v) { buf.push_back(v); }
  void u16(uint16_t v) {
    buf.push_back(uint8_t(v));
    buf.push_back(uint8_t(v >> 8));
  }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) buf.push_back(uint8_t(v >> (8 * i)));
  }
  void varint(uint64_t v) {
    uint8_t tmp[10];
    bytes(tmp, size_t(put_varint(tmp, v)));
  }
  void bytes(const uint8_t* p, size_t n) { buf.insert(buf.end(), p, p + n); }
};

// ---------------------------------------------------------------- bounds-checked reader
class ByteReader {
 public:
  ByteReader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  size_t remaining() const { return size_t(end_ - p_); }
  const uint8_t* pos() const { return p_; }
  void need(size_t n, const char* what) const {
    if (remaining() < n) throw StreamError(std::string("truncated stream (") + what + ")");
  }
  uint8_t u8(const char* what) {
    need(1, what);
    return *p_++;
  }
  uint16_t u16(const char* what) {
    need(2, what);
    uint16_t v = uint16_t(p_[0] | (p_[1] << 8));
    p_ += 2;
    return v;
  }
  uint32_t u32(const char* what) {
    need(4, what);
    uint32_t v = uint32_t(p_[0]) | (uint32_t(p_[1]) << 8) | (uint32_t(p_[2]) << 16) |
                 (uint32_t(p_[3]) << 24);
    p_ += 4;
    return v;
  }
  // Only the shortest form the writer produces is read: no trailing zero groups, no bits past 64.
  uint64_t varint(const char* what) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = u8(what);
      if (!varint_group_ok(b, shift)) break;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    throw StreamError(std::string("malformed varint (") + what + ")");
  }
  void skip(size_t n, const char* what) {
    need(n, what);
    p_ += n;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// ---------------------------------------------------------------- stream header
struct StreamHeader {
  bool bare = false;  // see the format above
  int precision = 15;
  int log2_lanes = 5;
  uint64_t n_symbols = 0;
  uint64_t n_chunks = 0;
  uint32_t table_hash = 0;
  std::vector<uint64_t> chunk_bytes;  // directory
  size_t payload_offset = 0;          // where chunk 0 starts in the stream

  int lanes() const { return 1 << log2_lanes; }
  // Chunk c codes symbols [c * per, min(n, (c + 1) * per)).
  uint64_t symbols_per_chunk() const {
    return n_chunks ? (n_symbols + n_chunks - 1) / n_chunks : 0;
  }
};

void write_header(ByteWriter& w, const StreamHeader& h);
// Parses and validates the header and directory against the stream length. A bare stream needs
// its symbol count and table hash from the caller (bare_symbols >= 0); -1 reads a full stream.
StreamHeader read_header(const uint8_t* data, size_t size, int64_t bare_symbols = -1, uint32_t bare_table_hash = 0);

}  // namespace lickd
