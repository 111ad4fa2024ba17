#include "rans_tables.h"

#include <string>

namespace lickd {

namespace {
constexpr size_t kLutBudgetBytes = 256 * 1024;  // keep all lookup tables cache-resident
}

TableSet::TableSet(const int32_t* cdf, int64_t n_tables, int64_t row_stride,
                   const int32_t* cdf_length, const int32_t* offset, int precision)
    : precision_(precision) {
  if (precision < kMinPrecision || precision > kMaxPrecision)
    throw std::invalid_argument("CDF precision must be in [12, 16], got " + std::to_string(precision));
  if (n_tables <= 0) throw std::invalid_argument("no CDF tables (run update() on the model first)");
  if (n_tables > (int64_t(1) << 24)) throw std::invalid_argument("too many CDF tables");
  const uint32_t total = 1u << precision;
  lut_bits_ = precision < 10 ? precision : 10;
  while (lut_bits_ > 4 && size_t(n_tables) * (size_t(1) << lut_bits_) * 2 > kLutBudgetBytes) --lut_bits_;
  const int shift = precision - lut_bits_;

  uint8_t p8 = uint8_t(precision);
  uint32_t hash = crc32_update(0, &p8, 1);
  std::vector<int64_t> starts;
  for (int64_t t = 0; t < n_tables; ++t) {
    const int32_t len = cdf_length[t];
    const std::string where = "CDF table " + std::to_string(t);
    if (len < 3 || len > row_stride)
      throw std::invalid_argument(where + ": cdf_length " + std::to_string(len) + " outside [3, " +
                                  std::to_string(row_stride) + "]");
    if (len - 1 > 65535) throw std::invalid_argument(where + ": more than 65535 symbols");
    const int32_t* row = cdf + t * row_stride;
    if (row[0] != 0) throw std::invalid_argument(where + ": does not start at 0");
    if (uint32_t(row[len - 1]) != total)
      throw std::invalid_argument(where + ": does not end at 2^" + std::to_string(precision) +
                                  " (tables built for another precision?)");
    for (int32_t s = 1; s < len; ++s)
      if (row[s] <= row[s - 1])
        throw std::invalid_argument(where + ": not strictly increasing at " + std::to_string(s) +
                                    " (every symbol, the escape included, needs frequency >= 1)");
    starts.push_back(int64_t(cdf_.size()));
    for (int32_t s = 0; s < len; ++s) cdf_.push_back(uint32_t(row[s]));
    uint8_t meta[8];
    for (int i = 0; i < 4; ++i) meta[i] = uint8_t(uint32_t(len) >> (8 * i));
    for (int i = 0; i < 4; ++i) meta[4 + i] = uint8_t(uint32_t(offset[t]) >> (8 * i));
    hash = crc32_update(hash, meta, 8);
    for (int32_t s = 0; s < len - 1; ++s) {
      uint8_t b[2] = {uint8_t(row[s]), uint8_t(row[s] >> 8)};
      hash = crc32_update(hash, b, 2);
    }
  }
  hash_ = hash;
  // Coarse lookup: bucket b -> the symbol containing cumulative frequency b << shift.
  const size_t buckets = size_t(1) << lut_bits_;
  lut_.resize(size_t(n_tables) * buckets);
  for (int64_t t = 0; t < n_tables; ++t) {
    const uint32_t* c = cdf_.data() + starts[t];
    uint16_t* l = lut_.data() + size_t(t) * buckets;
    int32_t s = 0;
    for (size_t b = 0; b < buckets; ++b) {
      const uint32_t cf = uint32_t(b) << shift;
      while (c[s + 1] <= cf) ++s;
      l[b] = uint16_t(s);
    }
  }
  rows_.resize(n_tables);
  for (int64_t t = 0; t < n_tables; ++t)
    rows_[t] = TableRow{cdf_.data() + starts[t], lut_.data() + size_t(t) * buckets, cdf_length[t] - 1, offset[t]};
}

}  // namespace lickd
