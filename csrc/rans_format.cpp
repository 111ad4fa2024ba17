#include "rans_format.h"

#include <algorithm>
#include <array>

namespace lickd {

namespace {

std::array<uint32_t, 256> make_crc32_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
    t[i] = c;
  }
  return t;
}

const std::array<uint32_t, 256> kCrc32Table = make_crc32_table();

}  // namespace

uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t n) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = kCrc32Table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

constexpr uint8_t kBareFlag = 0x40;

void write_header(ByteWriter& w, const StreamHeader& h) {
  const uint8_t flags = uint8_t((h.precision - kMinPrecision) | (h.log2_lanes << 3) | (h.bare ? kBareFlag : 0));
  if (h.bare) {
    w.u8(flags);
    w.varint(h.n_chunks);
  } else {
    w.u16(kStreamMagic);
    w.u8(kStreamVersion);
    w.u8(flags);
    w.varint(h.n_symbols);
    w.varint(h.n_chunks);
    w.u32(h.table_hash);
  }
  for (uint64_t b : h.chunk_bytes) w.varint(b);
}

StreamHeader read_header(const uint8_t* data, size_t size, int64_t bare_symbols, uint32_t bare_table_hash) {
  ByteReader r(data, size);
  StreamHeader h;
  h.bare = bare_symbols >= 0;
  if (!h.bare) {
    if (r.u16("magic") != kStreamMagic) throw StreamError("not a lickd rANS stream (bad magic)");
    uint8_t version = r.u8("version");
    if (version != kStreamVersion)
      throw StreamError("unsupported rANS stream version " + std::to_string(version));
  }
  uint8_t flags = r.u8("flags");
  if (flags & 0x80) throw StreamError("reserved stream flags are set");
  if (bool(flags & kBareFlag) != h.bare)
    throw StreamError(h.bare ? "expected a bare rANS stream, got a full one" : "bare rANS stream without its container");
  h.precision = kMinPrecision + (flags & 7);
  h.log2_lanes = (flags >> 3) & 7;
  if (h.precision > kMaxPrecision) throw StreamError("invalid CDF precision in stream header");
  if (h.log2_lanes > kMaxLog2Lanes) throw StreamError("invalid lane count in stream header");
  if (h.bare) {
    h.n_symbols = uint64_t(bare_symbols);
    h.n_chunks = r.varint("chunk count");
    h.table_hash = bare_table_hash;
  } else {
    h.n_symbols = r.varint("symbol count");
    h.n_chunks = r.varint("chunk count");
    h.table_hash = r.u32("table hash");
  }
  if ((h.n_symbols == 0) != (h.n_chunks == 0) || h.n_chunks > h.n_symbols)
    throw StreamError("inconsistent symbol and chunk counts in stream header");
  if (h.n_symbols == 0 && h.log2_lanes != 0) throw StreamError("an empty stream must record one lane");
  // Each directory entry takes at least one byte: reject counts the stream cannot hold
  // before allocating anything.
  if (h.n_chunks > r.remaining()) throw StreamError("truncated stream (chunk directory)");
  if (h.n_chunks) {
    uint64_t per = h.symbols_per_chunk();
    if ((h.n_chunks - 1) * per >= h.n_symbols) throw StreamError("empty chunk in stream header");
  }
  h.chunk_bytes.resize(h.n_chunks);
  uint64_t total = 0;
  for (auto& b : h.chunk_bytes) {
    b = r.varint("chunk directory");
    if (b > size) throw StreamError("chunk size exceeds stream size");
    total += b;
  }
  h.payload_offset = size - r.remaining();
  if (total != r.remaining())
    throw StreamError(total > r.remaining() ? "truncated stream (chunk payloads)"
                                            : "trailing bytes after the last chunk");
  return h;
}

void check_encode_options(const EncodeOptions& opt) {
  if (opt.lanes < 0 || opt.lanes > (1 << kMaxLog2Lanes) || (opt.lanes & (opt.lanes - 1)))
    throw std::invalid_argument("lanes must be 0 (auto) or a power of two <= 32");
  if (opt.chunks < 0) throw std::invalid_argument("chunks must be >= 0");
  if (!(opt.max_overhead > 0)) throw std::invalid_argument("max_overhead must be > 0");
}

void choose_layout(StreamHeader& h, int64_t n, uint64_t cost_q16, const EncodeOptions& opt) {
  constexpr double kBytesPerLane = 3.0;  // measured flush cost of one lane (docs/format.md)
  constexpr int64_t kMinSymbolsPerChunk = 4096;
  h.n_symbols = uint64_t(n);
  h.n_chunks = 0;
  h.log2_lanes = 0;
  if (n == 0) return;  // an empty stream records one lane, whatever was asked: one form
  const int64_t sampled = estimate_sample_count(n);
  const double bits = sampled ? double(cost_q16) / 65536.0 * double(n) / double(sampled) : 0.0;
  const double budget_lanes = std::max(1.0, opt.max_overhead * bits / 8.0 / kBytesPerLane);
  int lanes = opt.lanes;
  if (lanes == 0) {
    lanes = 1;
    while (lanes < (1 << kMaxLog2Lanes) && 2 * lanes <= budget_lanes) lanes *= 2;
  }
  h.log2_lanes = floor_log2_u64(uint64_t(lanes));
  int64_t chunks = opt.chunks;
  if (chunks == 0) {
    chunks = std::max<int64_t>(1, int64_t(budget_lanes / lanes));
    chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, n / kMinSymbolsPerChunk));
  }
  chunks = std::min<int64_t>(chunks, n);
  const int64_t per = (n + chunks - 1) / chunks;
  h.n_chunks = uint64_t((n + per - 1) / per);  // no empty chunk
}

}  // namespace lickd
