// A CPU emulator of the small part of CUDA that lickd's kernels use, so that csrc/rans_cuda.cu
// compiles with g++ and its kernels run in CI, where there is no GPU.
//
// This header stands in for <cuda_runtime.h> (the test build puts this folder first on the include
// path and defines LICKD_CUDA_EMULATOR). Each block runs on one OS thread: every CUDA thread of the
// block is a ucontext coroutine that runs until it reaches a warp collective (__ballot_sync,
// __shfl*_sync, __syncwarp) or __syncthreads, and the collective completes when every live thread it
// concerns has arrived. The emulator fails the launch (std::runtime_error from the launch) instead
// of guessing where the hardware's behaviour is undefined or would hang:
//   * a full-mask warp collective while some lanes of the warp have exited or wait elsewhere;
//   * lanes of a warp at different kinds of collective; partial masks are not emulated;
//   * a deadlock (no thread can run, some have not finished).
// Device memory is host memory; blocks run one after another, so `__shared__` (a function-static
// array here) and the dynamic shared memory are the running block's, and atomics are plain
// read-modify-writes. What it
// cannot show: memory-ordering races and timing. Those need a GPU (tests/test_rans_cuda.py).
#pragma once

#ifndef LICKD_CUDA_EMULATOR
#error "tests/cuda_emu is the CUDA emulator; build with -DLICKD_CUDA_EMULATOR"
#endif

#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct int4 {
  int x, y, z, w;
};
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
struct uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }

// ------------------------------------------------------------------ runtime API (host memory)
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorLaunchFailure = 4 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
using cudaStream_t = struct CUstream_st*;

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "launch failure";
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** p, size_t n) {
  *p = static_cast<T*>(std::malloc(n ? n : 1));
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
template <class T>
cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t) {
  return cudaMalloc(p, n);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  if (n) std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t) {
  return cudaMemcpy(d, s, n, k);
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
  if (n) std::memset(d, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 227 * 1024;  // an H100's
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}

// ------------------------------------------------------------------ the scheduler
namespace emu {

enum Op : int { kNone, kBallot, kShfl, kShflXor, kShflUp, kShflDown, kSyncWarp, kSyncThreads };

struct Thread {
  ucontext_t ctx;
  dim3 tid;
  int lane = 0, warp = 0;
  bool done = false;
  Op waiting = kNone;  // the collective it waits in
  uint64_t value = 0;  // its input to the collective, then the result
  int arg = 0;
};

struct alignas(16) Shared16 {
  unsigned char bytes[16];
};

struct State {
  ucontext_t scheduler;
  std::vector<Shared16> dynamic_shared;  // the running block's dynamic shared memory
  Thread* current = nullptr;
  std::vector<Thread> threads;
  std::function<void()> body;
  dim3 block_idx, block_dim, grid_dim;
  std::string error;
};

inline State& state() {
  static State s;
  return s;
}

[[noreturn]] inline void fail(const std::string& what) {
  State& s = state();
  if (s.error.empty()) s.error = what;
  s.current->done = true;
  setcontext(&s.scheduler);  // abandons this thread's stack: kernels hold only trivial locals
  std::abort();
}

inline void thread_entry() {
  state().body();
  state().current->done = true;  // uc_link returns to the scheduler
}

// Completes the collectives of one warp if every lane of it is waiting; false when not ready.
inline bool try_complete_warp(Thread* lanes) {
  int waiting = 0, exited = 0;
  Op op = kNone;
  for (int l = 0; l < 32; ++l) {
    if (lanes[l].done) ++exited;
    else if (lanes[l].waiting != kNone && lanes[l].waiting != kSyncThreads) {
      if (op == kNone) op = lanes[l].waiting;
      else if (op != lanes[l].waiting) throw std::runtime_error("emulator: lanes of a warp at different collectives");
      ++waiting;
    }
  }
  if (waiting == 0) return false;
  if (waiting + exited < 32) return false;  // some lanes still run (or wait at __syncthreads)
  if (exited) throw std::runtime_error("emulator: full-mask warp collective after lanes of the warp exited");
  uint64_t in[32];
  for (int l = 0; l < 32; ++l) in[l] = lanes[l].value;
  uint64_t ballot = 0;
  for (int l = 0; l < 32; ++l) ballot |= uint64_t(in[l] != 0) << l;
  for (int l = 0; l < 32; ++l) {
    Thread& t = lanes[l];
    const int a = t.arg;
    switch (op) {
      case kBallot: t.value = ballot; break;
      case kShfl: t.value = in[a & 31]; break;
      case kShflXor: t.value = in[(l ^ a) & 31]; break;
      case kShflUp: t.value = l >= a ? in[l - a] : in[l]; break;
      case kShflDown: t.value = l + a < 32 ? in[l + a] : in[l]; break;
      default: break;
    }
    t.waiting = kNone;
  }
  return true;
}

inline void run_block() {
  State& s = state();
  const size_t n = s.threads.size();
  for (;;) {
    bool ran = false;
    for (size_t i = 0; i < n; ++i) {
      Thread& t = s.threads[i];
      if (t.done || t.waiting != kNone) continue;
      s.current = &t;
      swapcontext(&s.scheduler, &t.ctx);
      ran = true;
      if (!s.error.empty()) throw std::runtime_error("emulator: " + s.error);
    }
    bool released = false;
    for (size_t w = 0; w < n; w += 32) released |= try_complete_warp(&s.threads[w]);
    size_t at_barrier = 0, live = 0;
    for (auto& t : s.threads)
      if (!t.done) {
        ++live;
        at_barrier += t.waiting == kSyncThreads;
      }
    if (live == 0) return;
    if (at_barrier == live) {
      for (auto& t : s.threads) t.waiting = kNone;
      released = true;
    }
    if (!ran && !released) throw std::runtime_error("emulator: deadlock (threads wait at collectives that cannot complete)");
  }
}

// Runs body() as every thread of every block of the grid.
inline void run_grid(dim3 grid, dim3 block, std::function<void()> body) {
  State& s = state();
  const size_t per_block = size_t(block.x) * block.y * block.z;
  if (per_block == 0 || per_block % 32 || per_block > 1024)
    throw std::runtime_error("emulator: block size must be a multiple of 32, at most 1024");
  constexpr size_t kStack = 128 * 1024;
  std::vector<char> stacks(per_block * kStack);
  s.body = std::move(body);
  s.block_dim = block;
  s.grid_dim = grid;
  s.error.clear();
  s.threads.assign(per_block, Thread{});
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        s.block_idx = dim3(bx, by, bz);
        for (size_t i = 0; i < per_block; ++i) {
          Thread& t = s.threads[i];
          t = Thread{};
          t.tid = dim3(unsigned(i % block.x), unsigned(i / block.x % block.y), unsigned(i / (size_t(block.x) * block.y)));
          t.lane = int(i % 32);
          t.warp = int(i / 32);
          getcontext(&t.ctx);
          t.ctx.uc_stack.ss_sp = stacks.data() + i * kStack;
          t.ctx.uc_stack.ss_size = kStack;
          t.ctx.uc_link = &s.scheduler;
          makecontext(&t.ctx, thread_entry, 0);
        }
        run_block();
      }
}

inline uint64_t collective(Op op, uint64_t value, int arg, unsigned mask) {
  State& s = state();
  if (op != kSyncThreads && mask != 0xFFFFFFFFu) fail("partial-mask warp collectives are not emulated");
  Thread* t = s.current;
  t->waiting = op;
  t->value = value;
  t->arg = arg;
  swapcontext(&t->ctx, &s.scheduler);
  return t->value;
}

template <class T>
uint64_t bits_of(T v) {
  static_assert(sizeof(T) <= 8, "shuffles of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <class... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared;
  template <class... Args>
  void operator()(Args... args) const {
    auto k = kernel;
    state().dynamic_shared.assign((shared + 15) / 16, Shared16{});
    run_grid(grid, block, [=]() { k(args...); });
  }
};

}  // namespace emu

#define threadIdx (::emu::state().current->tid)
#define blockIdx (::emu::state().block_idx)
#define blockDim (::emu::state().block_dim)
#define gridDim (::emu::state().grid_dim)

// kernel<<<grid, block, shared, stream>>>(args) is written LICKD_LAUNCH(kernel, grid, block, shared, stream)(args).
template <class... Params>
emu::Launch<Params...> lickd_emu_launch(void (*k)(Params...), dim3 g, dim3 b, size_t shared) {
  return emu::Launch<Params...>{k, g, b, shared};
}
#define LICKD_LAUNCH(kernel, grid, block, shared, stream) lickd_emu_launch(kernel, dim3(grid), dim3(block), shared)
// extern __shared__ T name[] (dynamic shared memory, sized by the launch)
#define LICKD_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::emu::state().dynamic_shared.data())

// ------------------------------------------------------------------ device intrinsics
inline unsigned __ballot_sync(unsigned mask, int pred) { return unsigned(emu::collective(emu::kBallot, pred != 0, 0, mask)); }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xFFFFFFFFu; }
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int = 32) {
  return emu::from_bits<T>(emu::collective(emu::kShfl, emu::bits_of(v), src, mask));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int = 32) {
  return emu::from_bits<T>(emu::collective(emu::kShflXor, emu::bits_of(v), lane_mask, mask));
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int = 32) {
  return emu::from_bits<T>(emu::collective(emu::kShflUp, emu::bits_of(v), int(delta), mask));
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int = 32) {
  return emu::from_bits<T>(emu::collective(emu::kShflDown, emu::bits_of(v), int(delta), mask));
}
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { emu::collective(emu::kSyncWarp, 0, 0, mask); }
inline void __syncthreads() { emu::collective(emu::kSyncThreads, 0, 0, 0); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v ? __builtin_clz(unsigned(v)) : 32; }
inline int __clzll(long long v) { return v ? __builtin_clzll((unsigned long long)v) : 64; }
inline int __ffs(int v) { return __builtin_ffs(v); }

template <class T>
T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicOr(T* p, T v) {
  T old = *p;
  *p = old | v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  T old = *p;
  *p = old > v ? old : v;
  return old;
}
