// moe_align: sort the token slots of a top-k routing by expert and pad each expert's segment to the
// GEMM block size (DESIGN.md section 8). Slot s = token * k + j. The per-expert arithmetic lives in
// host/device functions shared by the C++ loop, the nvcc launchers and NVRTC, so every backend
// returns the same bytes.
//
// Outputs (int32, allocated at the upper bound U = slots + n_experts * (block - 1)):
//   sorted_ids (U,)        slot ids grouped by expert, each expert's slots in slot order, each
//                          segment padded to a multiple of `block` with the sentinel `slots`
//   expert_ids (ceil(U / block),)  expert of each block of sorted_ids; -1 past the padded length
//   n_pad (1,)             padded length = offsets[n_experts]
//   slot_pos (slots,)      row of sorted_ids holding slot s, -1 when the slot was dropped
//   offsets (n_experts + 1,)  start of each expert's padded segment
//   counts (n_experts,)    slots routed to each expert (before any capacity drop)
//   dropped (1,)           slots dropped by the capacity limit
//   invalid (1,)           slots whose expert id lies outside 0..n_experts-1: they are left out (slot_pos
//                          -1, in no segment, not counted in `counts`), never indexed with, and counted here
#pragma once
#include "../../common.h"

namespace pyscale {
namespace moe {

// An id that may index the per-expert arrays; any other slot is left out and counted as invalid.
PYSCALE_HD bool valid_expert(int32_t e, int64_t n_experts) { return e >= 0 && e < n_experts; }

// Slots an expert keeps: all of them when capacity < 0 (dropless), else the first `capacity`.
PYSCALE_HD int64_t kept_count(int64_t routed, int64_t capacity) {
  return (capacity < 0 || routed < capacity) ? routed : capacity;
}

// Length of an expert's segment after padding to a multiple of the block size.
PYSCALE_HD int64_t padded_count(int64_t kept, int64_t block) { return (kept + block - 1) / block * block; }

// The allocation every output is sized by, so a fake (meta) implementation knows it from shapes.
PYSCALE_HD int64_t upper_bound_rows(int64_t slots, int64_t n_experts, int64_t block) {
  return slots + n_experts * (block - 1);
}

PYSCALE_HD int64_t upper_bound_blocks(int64_t slots, int64_t n_experts, int64_t block) {
  return (upper_bound_rows(slots, n_experts, block) + block - 1) / block;
}

// Place slot `s` whose rank among the slots of its expert (in slot order) is `rank`.
PYSCALE_HD void place_slot(int64_t s, int64_t rank, int64_t kept, int64_t segment_start, int32_t* sorted_ids,
                           int32_t* slot_pos) {
  if (rank < kept) {
    const int64_t row = segment_start + rank;
    sorted_ids[row] = static_cast<int32_t>(s);
    slot_pos[s] = static_cast<int32_t>(row);
  } else {
    slot_pos[s] = -1;
  }
}

// Prefix sum of padded segment lengths, the padded total and the number of dropped slots.
PYSCALE_HD void segment_offsets(const int32_t* counts, int64_t n_experts, int64_t block, int64_t capacity,
                                int32_t* offsets, int32_t* n_pad, int32_t* dropped) {
  int64_t total = 0, lost = 0;
  offsets[0] = 0;
  for (int64_t e = 0; e < n_experts; ++e) {
    const int64_t kept = kept_count(counts[e], capacity);
    lost += counts[e] - kept;
    total += padded_count(kept, block);
    offsets[e + 1] = static_cast<int32_t>(total);
  }
  *n_pad = static_cast<int32_t>(total);
  *dropped = static_cast<int32_t>(lost);
}

// Slots per chunk in the CUDA path: one warp ranks a chunk 32 slots at a time.
constexpr int kAlignChunk = 256;

// The CUDA path's per-chunk histogram row: n_experts counts, then the chunk's invalid ids.
PYSCALE_HD int64_t hist_row(int64_t n_experts) { return n_experts + 1; }

}  // namespace moe
}  // namespace pyscale

#if defined(__CUDACC__)
extern "C" __global__ void pyscale_moe_fill_kernel(int32_t* __restrict__ out, int64_t n, int32_t value) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = value;
}

// hist[chunk * (n_experts + 1) + e] = slots of chunk routed to e, column n_experts its invalid ids (shared
// memory holds n_experts + 1 counters; an invalid id only bumps the last). Counts do not depend on atomic order.
extern "C" __global__ void pyscale_moe_chunk_hist_kernel(const int32_t* __restrict__ ids, int64_t slots,
                                                         int64_t n_experts, int32_t* __restrict__ hist) {
  extern __shared__ int32_t local[];
  const int64_t row = pyscale::moe::hist_row(n_experts);
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) local[e] = 0;
  __syncthreads();
  const int64_t base = static_cast<int64_t>(blockIdx.x) * pyscale::moe::kAlignChunk;
  for (int64_t i = threadIdx.x; i < pyscale::moe::kAlignChunk; i += blockDim.x) {
    if (base + i < slots) {
      const int32_t e = ids[base + i];
      atomicAdd(&local[pyscale::moe::valid_expert(e, n_experts) ? e : n_experts], 1);
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) hist[blockIdx.x * row + e] = local[e];
}

// One block: hist becomes the exclusive prefix over chunks per expert, then offsets, n_pad, dropped,
// the invalid-id total (column n_experts, summed in chunk order) and the expert of every block of the
// padded layout.
extern "C" __global__ void pyscale_moe_scan_kernel(int32_t* __restrict__ hist, int64_t chunks, int64_t n_experts,
                                                   int64_t block, int64_t capacity, int32_t* __restrict__ offsets,
                                                   int32_t* __restrict__ counts, int32_t* __restrict__ n_pad,
                                                   int32_t* __restrict__ dropped, int32_t* __restrict__ invalid,
                                                   int32_t* __restrict__ expert_ids) {
  const int64_t row = pyscale::moe::hist_row(n_experts);
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
    int32_t running = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t here = hist[c * row + e];
      hist[c * row + e] = running;
      running += here;
    }
    if (e < n_experts) {
      counts[e] = running;
    } else {
      *invalid = running;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) pyscale::moe::segment_offsets(counts, n_experts, block, capacity, offsets, n_pad, dropped);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) {
    for (int64_t b = offsets[e] / block; b < offsets[e + 1] / block; ++b) expert_ids[b] = static_cast<int32_t>(e);
  }
}

// One warp per chunk, 32 slots at a time in slot order: a slot's rank within its expert is the
// expert's count before this chunk, plus earlier slots of this chunk, plus lower lanes with the same
// expert (__match_any_sync). Deterministic, no atomics on positions.
extern "C" __global__ void pyscale_moe_place_kernel(const int32_t* __restrict__ ids, int64_t slots,
                                                    int64_t n_experts, int64_t capacity,
                                                    const int32_t* __restrict__ hist,
                                                    const int32_t* __restrict__ offsets,
                                                    const int32_t* __restrict__ counts,
                                                    int32_t* __restrict__ sorted_ids, int32_t* __restrict__ slot_pos) {
  extern __shared__ int32_t running[];
  const unsigned lane = threadIdx.x;
  const int64_t row = pyscale::moe::hist_row(n_experts);
  for (int64_t e = lane; e < n_experts; e += 32) running[e] = hist[blockIdx.x * row + e];
  __syncwarp();
  const int64_t base = static_cast<int64_t>(blockIdx.x) * pyscale::moe::kAlignChunk;
  const unsigned lower = (1u << lane) - 1u;
  for (int it = 0; it < pyscale::moe::kAlignChunk / 32; ++it) {
    const int64_t s = base + it * 32 + lane;
    const bool in_range = s < slots;
    const int32_t id = in_range ? ids[s] : -1;
    const bool valid = in_range && pyscale::moe::valid_expert(id, n_experts);
    const int32_t e = valid ? id : -1;  // every invalid lane shares the key -1 and touches no counter
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int32_t before = valid ? running[e] : 0;
    __syncwarp();
    if (in_range && !valid) slot_pos[s] = -1;
    if (valid) {
      const int64_t rank = before + __popc(peers & lower);
      pyscale::moe::place_slot(s, rank, pyscale::moe::kept_count(counts[e], capacity), offsets[e], sorted_ids,
                               slot_pos);
      if (lane == 31u - static_cast<unsigned>(__clz(peers))) running[e] = before + __popc(peers);
    }
    __syncwarp();
  }
}
#endif
