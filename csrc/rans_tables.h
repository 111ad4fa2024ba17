// Packed, validated CDF tables (CompressAI semantics) for the rANS coder.
//
// Input is what CompressAI's entropy models store: cdf int32 [T, Lmax], cdf_length int32 [T],
// offset int32 [T]. Row t holds cdf_length[t] values 0 = c_0 < c_1 < ... < c_{n} = 2^P where
// n = cdf_length[t] - 1 is the number of symbols; the last symbol (n - 1) is the escape that
// carries the tail mass. A value v is coded as symbol v - offset[t] when it lies in
// [0, n - 1), otherwise as the escape plus a raw value (zigzag of the overflow).
#pragma once

#include <cstdint>
#include <vector>

#include "rans_format.h"

namespace lickd {

class TableSet {
 public:
  TableSet(const int32_t* cdf, int64_t n_tables, int64_t row_stride, const int32_t* cdf_length,
           const int32_t* offset, int precision);

  int precision() const { return precision_; }
  int64_t n_tables() const { return int64_t(offset_.size()); }
  uint32_t hash() const { return hash_; }

  int32_t n_symbols(int64_t t) const { return n_symbols_[t]; }
  int32_t offset(int64_t t) const { return offset_[t]; }

  // Symbol s of table t with cdf(s) <= cf < cdf(s + 1) (binary search).
  int32_t find(int64_t t, uint32_t cf) const;

  // Start and frequency of symbol s in table t.
  void start_freq(int64_t t, int32_t s, uint32_t* start, uint32_t* freq) const {
    *start = row_value(t, s);
    *freq = row_value(t, s + 1) - *start;
  }

 private:
  uint32_t row_value(int64_t t, int32_t s) const {
    // The last value 2^P does not fit uint16 when P == 16; it is implied by position.
    return s == n_symbols_[t] ? (1u << precision_) : packed_[row_start_[t] + s];
  }

  int precision_;
  std::vector<uint16_t> packed_;       // concatenated rows (without the final 2^P)
  std::vector<int64_t> row_start_;
  std::vector<int32_t> n_symbols_;
  std::vector<int32_t> offset_;
  uint32_t hash_;
};

}  // namespace lickd
