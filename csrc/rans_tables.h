// Packed, validated CDF tables (CompressAI semantics) for the rANS coder.
//
// Input is what CompressAI's entropy models store: cdf int32 [T, Lmax], cdf_length int32 [T],
// offset int32 [T]. Row t holds cdf_length[t] values 0 = c_0 < c_1 < ... < c_n = 2^P where
// n = cdf_length[t] - 1 is the number of symbols; the last symbol (n - 1) is the escape that
// carries the tail mass. A value v is coded as symbol v - offset[t] when it lies in
// [0, n - 1), otherwise as the escape plus a raw value (zigzag of the overflow).
//
// Decoding looks symbols up with a coarse table per row: bucket b of 2^lut_bits buckets holds
// the symbol at the bucket's first cumulative frequency, and a short forward scan finishes.
#pragma once

#include <cstdint>
#include <vector>

#include "rans_format.h"

namespace lickd {

struct TableRow {
  const uint32_t* cdf;  // n_symbols + 1 values
  const uint16_t* lut;  // 2^lut_bits first-candidate symbols
  int32_t n_symbols;
  int32_t offset;
};

class TableSet {
 public:
  TableSet(const int32_t* cdf, int64_t n_tables, int64_t row_stride, const int32_t* cdf_length,
           const int32_t* offset, int precision);
  TableSet(const TableSet&) = delete;
  TableSet& operator=(const TableSet&) = delete;
  TableSet(TableSet&&) = default;  // rows_ point into the vectors' heap buffers, which a move keeps

  int precision() const { return precision_; }
  int64_t n_tables() const { return int64_t(rows_.size()); }
  uint32_t hash() const { return hash_; }
  const TableRow& row(int64_t t) const { return rows_[t]; }
  int lut_shift() const { return precision_ - lut_bits_; }

  // Flat arrays, for copying the tables to a device: cdf values, lookup buckets, and per row
  // (cdf start, lut start, symbol count, offset).
  const std::vector<uint32_t>& cdf_values() const { return cdf_; }
  const std::vector<uint16_t>& lut_values() const { return lut_; }
  int lut_bits() const { return lut_bits_; }

  // Symbol s of row r with cdf[s] <= cf < cdf[s + 1].
  int32_t find(const TableRow& r, uint32_t cf) const {
    int32_t s = r.lut[cf >> lut_shift()];
    while (r.cdf[s + 1] <= cf) ++s;
    return s;
  }

 private:
  int precision_;
  int lut_bits_;
  std::vector<uint32_t> cdf_;
  std::vector<uint16_t> lut_;
  std::vector<TableRow> rows_;
  uint32_t hash_;
};

}  // namespace lickd
