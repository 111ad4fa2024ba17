// CPU reference rANS coder for the lickd stream format (rans_format.h).
// Chunks are coded on a pool of threads; the bytes do not depend on the thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "rans_format.h"
#include "rans_tables.h"

namespace lickd {

struct EncodeOptions {
  int lanes = 0;              // K in {1, 2, 4, 8, 16, 32}; 0 = choose from the estimated size
  int64_t chunks = 0;         // 0 = choose from the estimated size and max_overhead
  double max_overhead = 0.0025;  // rate budget for lane states, as a fraction of the estimate
  int threads = 0;            // 0 = all hardware threads
};

// symbols[i] is coded with table indexes[i]. Returns the complete stream.
std::vector<uint8_t> rans_encode(const TableSet& tables, const int32_t* symbols,
                                 const int32_t* indexes, int64_t n, const EncodeOptions& opt);

// Decodes n symbols into out. Throws StreamError on any corruption, truncation or mismatch.
void rans_decode(const TableSet& tables, const uint8_t* data, size_t size, const int32_t* indexes,
                 int64_t n, int32_t* out, int threads);

}  // namespace lickd
