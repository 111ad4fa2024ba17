// A small pool for the CPU code of lickd's extensions (the rANS coder, the exact convolutions).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace lickd {

// Runs fn(c) for c in [0, n) on up to `threads` threads (<= 0: one per hardware thread), each
// taking the next c as it finishes one; rethrows the first exception once every thread is done.
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
  for (int i = 1; i < nt; ++i) {
    try {
      pool.emplace_back(worker);
    } catch (const std::system_error&) {  // no more threads: the ones running take every chunk
      break;
    }
  }
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace lickd
