// Kernels that check the emulator itself (tests/test_rans_cuda_emulated.py): the collectives'
// results, and that it refuses what is undefined on a GPU instead of running it.
#include <cuda_runtime.h>

#include <cstdio>
#include <exception>

namespace {

// out[t] for 2 blocks x 64 threads: ballot of odd lanes, xor-butterfly sum of lane ids,
// shfl_up by 1, shfl from lane 5, and a __syncthreads-ordered read of the other warp's value.
__global__ void collectives_kernel(unsigned* out) {
  __shared__ unsigned other[64];
  const unsigned t = threadIdx.x, lane = t & 31;
  const unsigned ballot = __ballot_sync(0xFFFFFFFFu, lane & 1);
  unsigned sum = lane;
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
  const unsigned up = __shfl_up_sync(0xFFFFFFFFu, lane * 10, 1);
  const unsigned from5 = __shfl_sync(0xFFFFFFFFu, lane + 100 * blockIdx.x, 5);
  other[t] = t * 7 + blockIdx.x;
  __syncthreads();
  const unsigned peer = other[(t + 32) & 63];
  unsigned* o = out + 6 * (blockIdx.x * 64 + t);
  o[0] = ballot;
  o[1] = sum;
  o[2] = up;
  o[3] = from5;
  o[4] = peer;
  o[5] = blockIdx.x;
}

// Lanes 16..31 leave, then the rest ask for a full-mask ballot: undefined on a GPU.
__global__ void exited_lanes_kernel(unsigned* out) {
  if ((threadIdx.x & 31) >= 16) return;
  out[threadIdx.x] = __ballot_sync(0xFFFFFFFFu, 1);
}

// Odd lanes ballot while even lanes shuffle: lanes at different collectives.
__global__ void divergent_kernel(unsigned* out) {
  const unsigned lane = threadIdx.x & 31;
  out[lane] = (lane & 1) ? __ballot_sync(0xFFFFFFFFu, 1) : __shfl_xor_sync(0xFFFFFFFFu, lane, 1);
}

}  // namespace

// which: 0 collectives (out holds 2*64*6 values), 1 exited lanes, 2 divergent collectives.
// Returns 0 when the launch ran, 3 when the emulator refused it (message in err).
extern "C" int lickd_emu_selftest(int which, unsigned* out, char* err, int err_len) {
  try {
    if (which == 0) LICKD_LAUNCH(collectives_kernel, 2, 64, 0, nullptr)(out);
    if (which == 1) LICKD_LAUNCH(exited_lanes_kernel, 1, 32, 0, nullptr)(out);
    if (which == 2) LICKD_LAUNCH(divergent_kernel, 1, 32, 0, nullptr)(out);
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, size_t(err_len), "%s", e.what());
    return 3;
  }
}
