#include "rans_cpu.h"

#include <algorithm>
#include <string>

#include "parallel.h"

namespace lickd {

namespace {

void check_indexes(const TableSet& tables, const int32_t* indexes, int64_t n) {
  const int64_t t_max = tables.n_tables();
  for (int64_t i = 0; i < n; ++i)
    if (indexes[i] < 0 || indexes[i] >= t_max)
      throw std::invalid_argument("CDF index " + std::to_string(indexes[i]) + " at position " +
                                  std::to_string(i) + " outside [0, " + std::to_string(t_max) + ")");
}

// Sampled size estimate (rans_format.h): the exact integer sum every backend computes.
uint64_t estimate_cost(const TableSet& tables, const int32_t* symbols, const int32_t* indexes, int64_t n) {
  const int64_t step = estimate_step(n);
  uint64_t cost = 0;
  for (int64_t i = 0; i < n; i += step) {
    const TableRow& r = tables.row(indexes[i]);
    uint64_t raw = 0;
    const int32_t s = split_symbol(symbols[i], r.offset, r.n_symbols, &raw);
    cost += symbol_cost_q16(r.cdf[s + 1] - r.cdf[s], tables.precision(), s == r.n_symbols - 1, raw);
  }
  return cost;
}

}  // namespace

std::vector<uint8_t> rans_encode(const TableSet& tables, const int32_t* symbols,
                                 const int32_t* indexes, int64_t n, const EncodeOptions& opt) {
  if (n < 0) throw std::invalid_argument("negative symbol count");
  check_encode_options(opt);
  check_indexes(tables, indexes, n);
  const int P = tables.precision();

  StreamHeader h;
  h.precision = P;
  h.table_hash = tables.hash();
  h.bare = opt.bare;
  choose_layout(h, n, estimate_cost(tables, symbols, indexes, n), opt);
  const int lanes = h.lanes();
  const int64_t per = int64_t(h.symbols_per_chunk());
  const int64_t n_chunks = int64_t(h.n_chunks);
  const int K = lanes;

  std::vector<std::vector<uint8_t>> payloads(static_cast<size_t>(n_chunks));
  parallel_chunks(n_chunks, opt.threads, [&](int64_t c) {
    const int64_t begin = c * per, count = std::min(n, begin + per) - begin;
    const int32_t* sym = symbols + begin;
    const int32_t* idx = indexes + begin;
    // Forward pass: (start, freq) per symbol, escape values in symbol order, lane checks.
    std::vector<uint32_t> code(static_cast<size_t>(count));  // start | freq << 16 (freq < 2^16)
    std::vector<uint64_t> escapes;
    uint32_t hash[32];
    for (int l = 0; l < K; ++l) hash[l] = kLaneHashInit;
    for (int64_t j = 0; j < count; ++j) {
      const TableRow& r = tables.row(idx[j]);
      uint64_t raw = 0;
      const int32_t s = split_symbol(sym[j], r.offset, r.n_symbols, &raw);
      if (s == r.n_symbols - 1) escapes.push_back(raw);
      code[j] = r.cdf[s] | ((r.cdf[s + 1] - r.cdf[s]) << 16);
      hash[j & (K - 1)] = lane_hash_add(hash[j & (K - 1)], sym[j]);
    }
    ByteWriter w;
    w.varint(uint64_t(escapes.size()));
    if (!escapes.empty()) {
      uint64_t max_raw = 0;
      for (uint64_t e : escapes) max_raw = std::max(max_raw, e);
      const int width = escape_width(max_raw);
      w.u8(uint8_t(width));
      std::vector<uint8_t> packed(size_t((escapes.size() * width + 7) / 8), 0);
      for (size_t e = 0; e < escapes.size(); ++e) put_escape(packed.data(), e, width, escapes[e]);
      w.bytes(packed.data(), packed.size());
    }
    // Backward pass, the exact reverse of the decoder's order; words are emitted backwards.
    uint32_t x[32];
    for (int l = 0; l < K; ++l) x[l] = kRansL + lane_check(hash[l]);
    std::vector<uint16_t> words(static_cast<size_t>(count));  // at most one word per symbol
    uint16_t* wp = words.data() + count;
    const uint32_t max_shift = 32 - P;
    for (int64_t j = count - 1; j >= 0; --j) {
      const uint32_t start = code[j] & 0xFFFF, freq = code[j] >> 16;
      uint32_t xl = x[j & (K - 1)];
      if (xl >= (freq << max_shift)) {  // freq < 2^P, so this does not overflow
        *--wp = uint16_t(xl);
        xl >>= kWordBits;
      }
      x[j & (K - 1)] = ((xl / freq) << P) + (xl % freq) + start;
    }
    for (int l = 0; l < K; ++l) w.u32(x[l]);
    const size_t n_words = size_t(words.data() + count - wp);
    const size_t at = w.buf.size();
    w.buf.resize(at + 2 * n_words);
    for (size_t i = 0; i < n_words; ++i) {
      w.buf[at + 2 * i] = uint8_t(wp[i]);
      w.buf[at + 2 * i + 1] = uint8_t(wp[i] >> 8);
    }
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
                 int64_t n, int32_t* out, int threads, bool bare) {
  const StreamHeader h = read_header(data, size, bare ? n : -1, tables.hash());
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
    auto fail = [c](const char* what) {
      throw StreamError("chunk " + std::to_string(c) + ": " + what);
    };
    const int64_t begin = c * per, count = std::min(n, begin + per) - begin;
    const int32_t* idx = indexes + begin;
    int32_t* o = out + begin;
    ByteReader r(data + chunk_offset[c], h.chunk_bytes[c]);
    // Escape section.
    const uint64_t n_esc = r.varint("escape count");
    if (n_esc > uint64_t(count)) fail("more escapes than symbols");
    int width = 0;
    const uint8_t* packed = nullptr;
    if (n_esc) {
      width = r.u8("escape width");
      if (width < 1 || width > 64) fail("invalid escape width");
      const size_t nbytes = size_t((n_esc * uint64_t(width) + 7) / 8);
      packed = r.pos();
      r.skip(nbytes, "escape values");
      const uint64_t used_bits = n_esc * uint64_t(width);
      if ((used_bits & 7) && (packed[nbytes - 1] >> (used_bits & 7))) fail("nonzero padding after the escape values");
      if (width > 1 && !escape_top_bit_used(packed, 0, 1, n_esc, width)) fail("escape width wider than its values");
    }
    uint64_t esc_used = 0;
    auto next_escape = [&]() -> uint64_t {
      if (esc_used >= n_esc) fail("escape marker without escape value");
      return get_escape(packed, esc_used++, width);
    };
    // Lane states, then the words.
    uint32_t x[32], hash[32];
    for (int l = 0; l < K; ++l) {
      x[l] = r.u32("lane states");
      if (x[l] < kRansL) fail("invalid lane state");
      hash[l] = kLaneHashInit;
    }
    if (r.remaining() & 1) fail("odd word section");
    const uint8_t* wp = r.pos();
    const uint8_t* const wend = wp + r.remaining();
    for (int64_t j = 0; j < count; ++j) {
      const int l = int(j & (K - 1));
      const TableRow& row = tables.row(idx[j]);
      uint32_t xl = x[l];
      const uint32_t cf = xl & mask;
      const int32_t s = tables.find(row, cf);
      const uint32_t start = row.cdf[s];
      xl = (row.cdf[s + 1] - start) * (xl >> P) + cf - start;
      // Refill without a data-dependent branch (it is taken about half the time): the only
      // branch left is the bounds check, which is predictable.
      const bool refill = xl < kRansL;
      if (wp == wend) {
        if (refill) fail("truncated (ran out of words)");
      } else {
        const uint32_t word = uint32_t(wp[0] | (wp[1] << 8));
        xl = refill ? (xl << kWordBits) | word : xl;
        wp += refill ? 2 : 0;
      }
      x[l] = xl;
      int64_t value = s;
      if (s == row.n_symbols - 1) {
        const uint64_t raw = next_escape();
        if (raw >= kMaxEscapeRaw) fail("escape value out of range");
        value = escaped_value(raw, s);
      }
      const int64_t sym = value + row.offset;
      if (sym < INT32_MIN || sym > INT32_MAX) fail("symbol out of int32 range");
      o[j] = int32_t(sym);
      hash[l] = lane_hash_add(hash[l], int32_t(sym));
    }
    if (wp != wend) fail("unused words after the last symbol");
    if (esc_used != n_esc) fail("unused escape values");
    for (int l = 0; l < K; ++l)
      if (x[l] != kRansL + lane_check(hash[l])) fail("checksum mismatch (corrupt stream)");
  });
}

}  // namespace lickd
