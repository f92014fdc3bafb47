#include <vector>

#include "moe.h"
#include "moe_kernels.cuh"

namespace pyscale {
namespace moe {

void align_cpu(const int32_t* ids, int64_t slots, int64_t n_experts, int64_t block, int64_t capacity,
               int32_t* sorted_ids, int32_t* expert_ids, int32_t* n_pad, int32_t* slot_pos, int32_t* offsets,
               int32_t* counts, int32_t* dropped, int32_t* invalid) {
  const int64_t rows = upper_bound_rows(slots, n_experts, block);
  const int64_t blocks = upper_bound_blocks(slots, n_experts, block);
  for (int64_t e = 0; e < n_experts; ++e) counts[e] = 0;
  int32_t bad = 0;
  for (int64_t s = 0; s < slots; ++s) {
    if (valid_expert(ids[s], n_experts)) {
      ++counts[ids[s]];
    } else {
      ++bad;
    }
  }
  *invalid = bad;
  segment_offsets(counts, n_experts, block, capacity, offsets, n_pad, dropped);
  for (int64_t r = 0; r < rows; ++r) sorted_ids[r] = static_cast<int32_t>(slots);
  for (int64_t b = 0; b < blocks; ++b) expert_ids[b] = -1;
  for (int64_t e = 0; e < n_experts; ++e) {
    for (int64_t b = offsets[e] / block; b < offsets[e + 1] / block; ++b) expert_ids[b] = static_cast<int32_t>(e);
  }
  // Walking slots in order gives each expert its slots in slot (= token) order.
  std::vector<int64_t> cursor(static_cast<size_t>(n_experts), 0);
  for (int64_t s = 0; s < slots; ++s) {
    const int32_t e = ids[s];
    if (!valid_expert(e, n_experts)) {
      slot_pos[s] = -1;
      continue;
    }
    place_slot(s, cursor[e]++, kept_count(counts[e], capacity), offsets[e], sorted_ids, slot_pos);
  }
}

int64_t align_cuda_workspace(int64_t slots, int64_t n_experts) {
  const int64_t chunks = (slots + kAlignChunk - 1) / kAlignChunk;
  return chunks > 0 ? chunks * hist_row(n_experts) : 1;
}

}  // namespace moe
}  // namespace pyscale
