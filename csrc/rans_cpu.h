// CPU reference rANS coder for the lickd stream format (rans_format.h).
// Chunks are coded on a pool of threads; the bytes do not depend on the thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "rans_format.h"
#include "rans_tables.h"

namespace lickd {

// symbols[i] is coded with table indexes[i]. Returns the complete stream.
std::vector<uint8_t> rans_encode(const TableSet& tables, const int32_t* symbols,
                                 const int32_t* indexes, int64_t n, const EncodeOptions& opt);

// Decodes n symbols into out. Throws StreamError on any corruption, truncation or mismatch.
// bare: the stream was written with EncodeOptions::bare (n and the tables come from the caller).
void rans_decode(const TableSet& tables, const uint8_t* data, size_t size, const int32_t* indexes,
                 int64_t n, int32_t* out, int threads, bool bare = false);

}  // namespace lickd
