#include "rans_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

namespace lickd {

namespace {

constexpr uint64_t kMaxEscapeRaw = 1ull << 34;  // |value| < 2^33 for any int32 symbol and offset
constexpr double kBytesPerLane = 3.0;            // measured flush cost of one lane (rans.md §4.2)
constexpr int64_t kMinSymbolsPerChunk = 4096;

void check_indexes(const TableSet& tables, const int32_t* indexes, int64_t n) {
  const int64_t t_max = tables.n_tables();
  for (int64_t i = 0; i < n; ++i)
    if (indexes[i] < 0 || indexes[i] >= t_max)
      throw std::invalid_argument("CDF index " + std::to_string(indexes[i]) + " at position " +
                                  std::to_string(i) + " outside [0, " + std::to_string(t_max) + ")");
}

// Runs fn(c) for c in [0, n) on up to `threads` threads; rethrows the first exception.
template <class Fn>
void parallel_chunks(int64_t n, int threads, Fn fn) {
  int hw = int(std::thread::hardware_concurrency());
  int nt = threads > 0 ? threads : std::max(1, hw);
  nt = int(std::min<int64_t>(nt, n));
  if (nt <= 1) {
    for (int64_t c = 0; c < n; ++c) fn(c);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    for (int64_t c; (c = next.fetch_add(1)) < n;) {
      try {
        fn(c);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < nt; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// Per-symbol coding parameters from the encoder's pre-pass.
struct SymbolCode {
  uint16_t start;
  uint16_t freq;  // < 2^P <= 2^16 because every table has at least two symbols
};

int floor_log2(uint64_t v) { return 63 - __builtin_clzll(v); }

}  // namespace

std::vector<uint8_t> rans_encode(const TableSet& tables, const int32_t* symbols,
                                 const int32_t* indexes, int64_t n, const EncodeOptions& opt) {
  if (n < 0) throw std::invalid_argument("negative symbol count");
  if (opt.lanes < 0 || opt.lanes > (1 << kMaxLog2Lanes) || (opt.lanes & (opt.lanes - 1)))
    throw std::invalid_argument("lanes must be 0 (auto) or a power of two <= 32");
  if (opt.chunks < 0) throw std::invalid_argument("chunks must be >= 0");
  if (!(opt.max_overhead > 0)) throw std::invalid_argument("max_overhead must be > 0");
  check_indexes(tables, indexes, n);
  const int P = tables.precision();

  // Pre-pass: (start, freq) of every symbol, escape values, and the estimated size in bits.
  std::vector<SymbolCode> codes(size_t(n), SymbolCode{0, 0});
  std::vector<uint8_t> is_escape(size_t(n), 0);
  std::vector<uint64_t> escape_raw;  // in symbol order
  double bits = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = indexes[i];
    const int32_t esc = tables.n_symbols(t) - 1;
    int64_t value = int64_t(symbols[i]) - tables.offset(t);
    int32_t s = int32_t(value);
    if (value < 0 || value >= esc) {
      uint64_t raw = value < 0 ? uint64_t(-2 * value - 1) : uint64_t(2 * (value - esc));
      escape_raw.push_back(raw);
      is_escape[i] = 1;
      s = esc;
      bits += 2 * floor_log2(raw + 1) + 1;
    }
    uint32_t start, freq;
    tables.start_freq(t, s, &start, &freq);
    codes[i] = SymbolCode{uint16_t(start), uint16_t(freq)};
    bits += P - std::log2(double(freq));
  }

  // Lanes and chunks: spend at most max_overhead of the estimated size on lane states.
  StreamHeader h;
  h.precision = P;
  h.table_hash = tables.hash();
  h.n_symbols = uint64_t(n);
  const double budget_lanes = std::max(1.0, opt.max_overhead * bits / 8.0 / kBytesPerLane);
  int lanes = opt.lanes;
  if (lanes == 0) {
    lanes = 1;
    while (lanes < (1 << kMaxLog2Lanes) && 2 * lanes <= budget_lanes) lanes *= 2;
  }
  h.log2_lanes = floor_log2(uint64_t(lanes));
  if (n > 0) {
    int64_t chunks = opt.chunks;
    if (chunks == 0) {
      chunks = std::max<int64_t>(1, int64_t(budget_lanes / lanes));
      chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, n / kMinSymbolsPerChunk));
    }
    chunks = std::min<int64_t>(chunks, n);
    const int64_t per = (n + chunks - 1) / chunks;
    h.n_chunks = uint64_t((n + per - 1) / per);  // no empty chunk
  }
  const int64_t per = int64_t(h.symbols_per_chunk());
  const int64_t n_chunks = int64_t(h.n_chunks);
  const int K = lanes;

  // Escapes are contiguous per chunk in symbol order: first escape of each chunk.
  std::vector<int64_t> esc_first(size_t(n_chunks) + 1, 0);
  for (int64_t c = 0, e = 0; c < n_chunks; ++c) {
    esc_first[c] = e;
    const int64_t end = std::min(n, (c + 1) * per);
    for (int64_t i = c * per; i < end; ++i) e += is_escape[i];
    esc_first[c + 1] = e;
  }

  std::vector<std::vector<uint8_t>> payloads(static_cast<size_t>(n_chunks));
  parallel_chunks(n_chunks, opt.threads, [&](int64_t c) {
    const int64_t begin = c * per, count = std::min(n, begin + per) - begin;
    ByteWriter w;
    // Escape section.
    const int64_t e0 = esc_first[c], n_esc = esc_first[c + 1] - e0;
    w.varint(uint64_t(n_esc));
    if (n_esc) {
      uint64_t max_raw = 0;
      for (int64_t e = 0; e < n_esc; ++e) max_raw = std::max(max_raw, escape_raw[e0 + e]);
      const int width = floor_log2(max_raw | 1) + 1;
      w.u8(uint8_t(width));
      std::vector<uint8_t> packed(size_t((n_esc * width + 7) / 8), 0);
      for (int64_t e = 0; e < n_esc; ++e)
        for (int b = 0; b < width; ++b)
          if ((escape_raw[e0 + e] >> b) & 1) {
            const int64_t bit = e * width + b;
            packed[bit >> 3] |= uint8_t(1u << (bit & 7));
          }
      w.bytes(packed.data(), packed.size());
    }
    // Lane checksums in decoder order, then the backward rANS pass.
    std::vector<uint32_t> x(K);
    {
      std::vector<uint16_t> crc(K, kCrc16Init);
      for (int64_t j = 0; j < count; ++j) crc[j % K] = crc16_add_i32(crc[j % K], symbols[begin + j]);
      for (int l = 0; l < K; ++l) x[l] = kRansL + crc[l];
    }
    std::vector<uint16_t> words;
    words.reserve(size_t(count) + 16);
    for (int64_t j = count - 1; j >= 0; --j) {
      const SymbolCode sc = codes[begin + j];
      uint32_t& xl = x[j % K];
      const uint64_t x_max = uint64_t(sc.freq) << (32 - P);
      if (xl >= x_max) {
        words.push_back(uint16_t(xl));
        xl >>= kWordBits;
      }
      xl = ((xl / sc.freq) << P) + (xl % sc.freq) + sc.start;
    }
    for (int l = 0; l < K; ++l) w.u32(x[l]);
    for (auto it = words.rbegin(); it != words.rend(); ++it) w.u16(*it);
    payloads[c] = std::move(w.buf);
  });

  ByteWriter out;
  for (const auto& p : payloads) h.chunk_bytes.push_back(p.size());
  write_header(out, h);
  size_t total = out.buf.size();
  for (const auto& p : payloads) total += p.size();
  out.buf.reserve(total);
  for (const auto& p : payloads) out.bytes(p.data(), p.size());
  return std::move(out.buf);
}

void rans_decode(const TableSet& tables, const uint8_t* data, size_t size, const int32_t* indexes,
                 int64_t n, int32_t* out, int threads) {
  const StreamHeader h = read_header(data, size);
  if (h.n_symbols != uint64_t(n))
    throw StreamError("stream holds " + std::to_string(h.n_symbols) + " symbols, expected " +
                      std::to_string(n));
  if (h.precision != tables.precision() || h.table_hash != tables.hash())
    throw StreamError("stream was coded with other CDF tables (model or weights mismatch)");
  check_indexes(tables, indexes, n);
  const int P = tables.precision();
  const uint32_t mask = (1u << P) - 1;
  const int K = h.lanes();
  const int64_t per = int64_t(h.symbols_per_chunk());

  std::vector<size_t> chunk_offset(h.n_chunks + 1, h.payload_offset);
  for (size_t c = 0; c < h.n_chunks; ++c) chunk_offset[c + 1] = chunk_offset[c] + h.chunk_bytes[c];

  parallel_chunks(int64_t(h.n_chunks), threads, [&](int64_t c) {
    const std::string where = "chunk " + std::to_string(c) + ": ";
    const int64_t begin = c * per, count = std::min(n, begin + per) - begin;
    ByteReader r(data + chunk_offset[c], h.chunk_bytes[c]);
    // Escape section.
    const uint64_t n_esc = r.varint("escape count");
    if (n_esc > uint64_t(count)) throw StreamError(where + "more escapes than symbols");
    int width = 0;
    const uint8_t* packed = nullptr;
    if (n_esc) {
      width = r.u8("escape width");
      if (width < 1 || width > 64) throw StreamError(where + "invalid escape width");
      const size_t nbytes = size_t((n_esc * uint64_t(width) + 7) / 8);
      packed = r.pos();
      r.skip(nbytes, "escape values");
      const uint64_t used_bits = n_esc * uint64_t(width);
      if ((used_bits & 7) && (packed[nbytes - 1] >> (used_bits & 7)))
        throw StreamError(where + "nonzero padding after the escape values");
    }
    uint64_t esc_used = 0;
    auto next_escape = [&]() -> uint64_t {
      if (esc_used >= n_esc) throw StreamError(where + "escape marker without escape value");
      uint64_t v = 0;
      const uint64_t bit0 = esc_used++ * uint64_t(width);
      for (int b = 0; b < width; ++b) {
        const uint64_t bit = bit0 + b;
        v |= uint64_t((packed[bit >> 3] >> (bit & 7)) & 1) << b;
      }
      return v;
    };
    // Lane states and words.
    std::vector<uint32_t> x(K);
    for (int l = 0; l < K; ++l) {
      x[l] = r.u32("lane states");
      if (x[l] < kRansL) throw StreamError(where + "invalid lane state");
    }
    if (r.remaining() & 1) throw StreamError(where + "odd word section");
    const uint8_t* wp = r.pos();
    const uint8_t* wend = wp + r.remaining();
    std::vector<uint16_t> crc(K, kCrc16Init);
    for (int64_t j = 0; j < count; ++j) {
      const int l = int(j % K);
      const int64_t t = indexes[begin + j];
      const uint32_t cf = x[l] & mask;
      const int32_t s = tables.find(t, cf);
      uint32_t start, freq;
      tables.start_freq(t, s, &start, &freq);
      uint32_t xl = freq * (x[l] >> P) + cf - start;
      if (xl < kRansL) {
        if (wp == wend) throw StreamError(where + "truncated (ran out of words)");
        xl = (xl << kWordBits) | uint32_t(wp[0] | (wp[1] << 8));
        wp += 2;
      }
      x[l] = xl;
      int64_t value = s;
      const int32_t esc = tables.n_symbols(t) - 1;
      if (s == esc) {
        const uint64_t raw = next_escape();
        if (raw >= kMaxEscapeRaw) throw StreamError(where + "escape value out of range");
        value = (raw & 1) ? -int64_t((raw >> 1) + 1) : int64_t(esc) + int64_t(raw >> 1);
      }
      const int64_t sym = value + tables.offset(t);
      if (sym < INT32_MIN || sym > INT32_MAX) throw StreamError(where + "symbol out of int32 range");
      out[begin + j] = int32_t(sym);
      crc[l] = crc16_add_i32(crc[l], int32_t(sym));
    }
    if (wp != wend) throw StreamError(where + "unused words after the last symbol");
    if (esc_used != n_esc) throw StreamError(where + "unused escape values");
    for (int l = 0; l < K; ++l)
      if (x[l] != kRansL + crc[l]) throw StreamError(where + "checksum mismatch (corrupt stream)");
  });
}

}  // namespace lickd
