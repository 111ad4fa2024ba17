#include "rans_tables.h"

#include <string>

namespace lickd {

TableSet::TableSet(const int32_t* cdf, int64_t n_tables, int64_t row_stride,
                   const int32_t* cdf_length, const int32_t* offset, int precision)
    : precision_(precision) {
  if (precision < kMinPrecision || precision > kMaxPrecision)
    throw std::invalid_argument("CDF precision must be in [12, 16], got " + std::to_string(precision));
  if (n_tables <= 0) throw std::invalid_argument("no CDF tables (run update() on the model first)");
  const uint32_t total = 1u << precision;
  uint32_t hash = crc32_update(0, reinterpret_cast<const uint8_t*>(&precision), 1);
  row_start_.reserve(n_tables);
  n_symbols_.reserve(n_tables);
  offset_.assign(offset, offset + n_tables);
  for (int64_t t = 0; t < n_tables; ++t) {
    const int32_t len = cdf_length[t];
    const std::string where = "CDF table " + std::to_string(t);
    if (len < 3 || len > row_stride)
      throw std::invalid_argument(where + ": cdf_length " + std::to_string(len) +
                                  " outside [3, " + std::to_string(row_stride) + "]");
    const int32_t* row = cdf + t * row_stride;
    if (row[0] != 0) throw std::invalid_argument(where + ": does not start at 0");
    if (uint32_t(row[len - 1]) != total)
      throw std::invalid_argument(where + ": does not end at 2^" + std::to_string(precision) +
                                  " (tables built for another precision?)");
    for (int32_t s = 1; s < len; ++s)
      if (row[s] <= row[s - 1])
        throw std::invalid_argument(where + ": not strictly increasing at " + std::to_string(s) +
                                    " (every symbol, the escape included, needs frequency >= 1)");
    row_start_.push_back(int64_t(packed_.size()));
    n_symbols_.push_back(len - 1);
    for (int32_t s = 0; s < len - 1; ++s) packed_.push_back(uint16_t(row[s]));
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
}

int32_t TableSet::find(int64_t t, uint32_t cf) const {
  // Largest s with cdf(s) <= cf; cdf(0) = 0 <= cf < 2^P = cdf(n).
  const uint16_t* row = packed_.data() + row_start_[t];
  int32_t lo = 0, hi = n_symbols_[t];  // invariant: row[lo] <= cf < value(hi)
  while (hi - lo > 1) {
    int32_t mid = (lo + hi) >> 1;
    if (row[mid] <= cf)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

}  // namespace lickd
