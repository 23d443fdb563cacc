/// \file ranks.cpp
/// \brief rank_sums: the inversion ratio's exact integer 2U, saturation and the extreme keys
/// (and exact_sums' bins, from the same read), in O(n) on every thread, without sorting.
///
/// 2U = sum over P weights p of 2 #(r > p) + #(r == p), r over the R weights, compared by
/// their keys (nap/law.h metric_key). The keys are binned by their top 16 bits, counted per
/// label on each thread (phase 1). Pairs in different bins are ordered by the bins alone
/// (prefix sums over 65536 bins); only bins holding both labels need their weights told
/// apart: their low 16 bits and label are gathered (phase 2), and each such bin is ranked on
/// its own (phase 3): sorted (std::sort when small, two radix passes) and walked, or counted
/// over its 2^17 possible values when large. A trained population, whose R and P weights lie
/// apart, has few such bins: one pass over memory. Only integer operations touch the weights.
#include <algorithm>  // for std::sort, std::min, std::max
#include <cstdint>    // for std::int32_t, std::uint32_t, std::uint64_t
#include <memory>     // for std::unique_ptr
#include <vector>     // for std::vector

#include "nap/core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nap {
namespace {

constexpr unsigned kLowBits = kRankLowBits;
constexpr std::size_t kBins = kRankBins;
constexpr std::uint32_t kLowMask = (1u << kLowBits) - 1u;
/// Elements a phase-1 slice holds at most: its per-bin counts are uint32.
constexpr std::size_t kMaxSlice = std::size_t{1} << 31;
/// Below this many elements one thread does it all (threads cost more than they save).
constexpr std::size_t kParallelRanks = std::size_t{1} << 16;
/// A mixed bin of at least this many weights is radix sorted, a smaller one by std::sort; from
/// kCountingBin on, counting its 2^17 possible values costs less than sorting it.
constexpr std::size_t kRadixBin = 256;
constexpr std::size_t kCountingBin = std::size_t{1} << 15;

/// 128-bit unsigned accumulator (portable: no __int128).
struct U128 {
  std::uint64_t high = 0, low = 0;
  void add(const U128& x) {
    low += x.low;
    high += x.high + (low < x.low);
  }
  void add_product(std::uint64_t a, std::uint64_t b) {
    const std::uint64_t a0 = a & 0xFFFFFFFFu, a1 = a >> 32, b0 = b & 0xFFFFFFFFu, b1 = b >> 32;
    const std::uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const std::uint64_t mid = (p00 >> 32) + (p01 & 0xFFFFFFFFu) + (p10 & 0xFFFFFFFFu);
    add(U128{p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32), (mid << 32) | (p00 & 0xFFFFFFFFu)});
  }
};

/// What one slice of the population adds: per-bin counts by label, saturation, extremes.
struct Slice {
  std::size_t lo = 0, hi = 0;
  std::vector<std::uint32_t> r, p;  // kBins counts each
  std::uint64_t saturated = 0;
  std::uint32_t min_key = 0xFFFFFFFFu, max_key = 0;
};

void add_to(RankSums* out, const U128& x) {
  out->twice_u_low += x.low;
  out->twice_u_high += x.high + (out->twice_u_low < x.low);
}

inline std::uint32_t key_at(const float* w, std::size_t i) { return metric_key(bits_of(w[i])); }

int threads_for(std::size_t n) {
  if (n < kParallelRanks) return 1;
  return std::max(1, num_threads());
}

/// Runs body(i) for i in [0, count) on up to `threads` threads (dynamic: work per i varies).
template <class Body>
void parallel_for(std::size_t count, int threads, Body body) {
#ifdef _OPENMP
  if (threads > 1 && count > 1) {
    const int items = static_cast<int>(count);
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int i = 0; i < items; ++i) body(static_cast<std::size_t>(i));
    return;
  }
#else
  (void)threads;
#endif
  for (std::size_t i = 0; i < count; ++i) body(i);
}

/// Phase 1 over one slice; with `exact` (kExactSumsSize entries) exact_sums' bins too, from
/// the same read of the weights.
template <bool kWithExactSums>
void count_slice(const float* w, const std::uint8_t* labels, std::uint32_t low_key,
                 std::uint32_t high_key, Slice* s, std::uint64_t* exact) {
  s->r.assign(kBins, 0);
  s->p.assign(kBins, 0);
  std::uint64_t saturated = 0;
  std::uint32_t kmin = 0xFFFFFFFFu, kmax = 0;
  std::uint32_t* by_label[2] = {s->p.data(), s->r.data()};
  for (std::size_t i = s->lo; i < s->hi; ++i) {
    const std::uint32_t b = bits_of(w[i]), k = metric_key(b), label = labels[i] & 1u;
    ++by_label[label][rank_bin(k)];
    saturated += saturated_key(k, low_key, high_key);
    kmin = std::min(kmin, k);
    kmax = std::max(kmax, k);
    if (kWithExactSums) add_exact_terms(exact, b, label);
  }
  s->saturated = saturated;
  s->min_key = kmin;
  s->max_key = kmax;
}

/// 2U within one bin from its (low bits << 1 | label) values sorted ascending: runs of one
/// low value from the top down, each P weight ranking below the R weights above it.
U128 rank_sorted(const std::uint32_t* v, std::size_t count) {
  U128 twice_u;
  std::uint64_t r_above = 0;
  for (std::size_t end = count; end > 0;) {
    const std::uint32_t low = v[end - 1] >> 1;
    std::size_t start = end;
    std::uint64_t cr = 0;
    while (start > 0 && (v[start - 1] >> 1) == low) cr += v[--start] & 1u;
    const std::uint64_t cp = (end - start) - cr;
    if (cp) twice_u.add_product(cp, 2 * r_above + cr);
    r_above += cr;
    end = start;
  }
  return twice_u;
}

/// 2U within one large bin by counting its 2^17 (low bits, label) values: no sort.
U128 rank_by_counting(const std::uint32_t* v, std::size_t count, std::vector<std::uint32_t>* c) {
  c->assign(std::size_t{2} << kLowBits, 0);
  std::uint32_t* counts = c->data();
  for (std::size_t i = 0; i < count; ++i) ++counts[v[i]];
  U128 twice_u;
  std::uint64_t r_above = 0;
  for (std::size_t low = std::size_t{1} << kLowBits; low-- > 0;) {
    const std::uint64_t cp = counts[2 * low], cr = counts[2 * low + 1];
    if (cp) twice_u.add_product(cp, 2 * r_above + cr);
    r_above += cr;
  }
  return twice_u;
}

/// One stable counting pass of an LSD radix sort: src -> dst by the digit (v >> shift) & mask.
void radix_pass(const std::uint32_t* src, std::uint32_t* dst, std::size_t count, unsigned shift,
                std::uint32_t mask) {
  std::uint32_t start[1u << 9] = {};
  for (std::size_t i = 0; i < count; ++i) ++start[(src[i] >> shift) & mask];
  std::uint32_t at = 0;
  for (std::uint32_t d = 0; d <= mask; ++d) {
    const std::uint32_t c = start[d];
    start[d] = at;
    at += c;
  }
  for (std::size_t i = 0; i < count; ++i) dst[start[(src[i] >> shift) & mask]++] = src[i];
}

/// Sorts one bin's 17-bit values in place: two radix passes (9 + 8 bits) through a scratch
/// buffer for a large bin, std::sort for a small one.
void sort_bin(std::uint32_t* v, std::size_t count, std::vector<std::uint32_t>* scratch) {
  if (count < kRadixBin) {
    std::sort(v, v + count);
    return;
  }
  scratch->resize(count);
  radix_pass(v, scratch->data(), count, 0, 0x1FFu);
  radix_pass(scratch->data(), v, count, 9, 0xFFu);
}

std::vector<Slice> cut_slices(std::size_t n, int threads) {
  const std::size_t slices = std::max<std::size_t>(
      {std::size_t{1}, static_cast<std::size_t>(threads), (n + kMaxSlice - 1) / kMaxSlice});
  std::vector<Slice> parts(slices);
  for (std::size_t s = 0; s < slices; ++s) {  // 64-byte aligned cuts, as the loops make
    parts[s].lo = s == 0 ? 0 : (n * s / slices) & ~std::size_t{15};
    parts[s].hi = s + 1 == slices ? n : (n * (s + 1) / slices) & ~std::size_t{15};
  }
  return parts;
}

/// The mixed bins (holding both labels) and where each one's weights go when gathered.
struct Mixed {
  std::vector<std::size_t> bins;
  std::vector<std::int32_t> index;    // kBins entries: bin -> its place in `bins`, or -1
  std::vector<std::uint64_t> offset;  // kBins + 1 entries: bin b is [offset[b], offset[b + 1])
};

/// Adds up the slices: counts, saturation, extremes, and the pairs of weights in different
/// bins (each P weight ranks below every R weight of a higher bin); finds the mixed bins.
Mixed sum_bins(const std::vector<Slice>& parts, RankSums* out) {
  Mixed mixed{{}, std::vector<std::int32_t>(kBins, -1), std::vector<std::uint64_t>(kBins + 1, 0)};
  std::uint64_t r_above = 0;
  for (std::size_t b = kBins; b-- > 0;) {
    std::uint64_t r = 0, p = 0;
    for (const Slice& s : parts) {
      r += s.r[b];
      p += s.p[b];
    }
    U128 across;
    across.add_product(p, 2 * r_above);
    add_to(out, across);
    r_above += r;
    out->reinforced += r;
    out->punished += p;
    mixed.offset[b] = (r && p) ? r + p : 0;  // sizes for now, offsets below
  }
  for (const Slice& s : parts) {
    out->saturated += s.saturated;
    out->min_key = std::min(out->min_key, s.min_key);
    out->max_key = std::max(out->max_key, s.max_key);
  }
  std::uint64_t gathered = 0;
  for (std::size_t b = 0; b < kBins; ++b) {
    const std::uint64_t size = mixed.offset[b];
    mixed.offset[b] = gathered;
    if (size) {
      mixed.index[b] = static_cast<std::int32_t>(mixed.bins.size());
      mixed.bins.push_back(b);
    }
    gathered += size;
  }
  mixed.offset[kBins] = gathered;
  return mixed;
}

/// Phase 2: the (low bits << 1 | label) of every weight in a mixed bin, bin by bin; each
/// slice writes after the earlier slices' weights of the bin.
std::unique_ptr<std::uint32_t[]> gather(const float* w, const std::uint8_t* labels,
                                        const std::vector<Slice>& parts, const Mixed& mixed,
                                        int threads) {
  std::vector<std::vector<std::uint64_t>> cursor(parts.size(),
                                                 std::vector<std::uint64_t>(mixed.bins.size()));
  for (std::size_t i = 0; i < mixed.bins.size(); ++i) {
    const std::size_t b = mixed.bins[i];
    std::uint64_t at = mixed.offset[b];
    for (std::size_t s = 0; s < parts.size(); ++s) {
      cursor[s][i] = at;
      at += std::uint64_t{parts[s].r[b]} + parts[s].p[b];
    }
  }
  std::unique_ptr<std::uint32_t[]> values(new std::uint32_t[mixed.offset[kBins]]);
  parallel_for(parts.size(), threads, [&](std::size_t s) {
    std::uint64_t* mine = cursor[s].data();
    for (std::size_t i = parts[s].lo; i < parts[s].hi; ++i) {
      const std::uint32_t k = key_at(w, i);
      const std::int32_t m = mixed.index[rank_bin(k)];
      if (m >= 0) values[mine[m]++] = ((k & kLowMask) << 1) | (labels[i] & 1u);
    }
  });
  return values;
}

/// Phase 3: 2U within each mixed bin, each on its own.
U128 rank_within(std::uint32_t* values, const Mixed& mixed, int threads) {
  std::vector<U128> within(mixed.bins.size());
  parallel_for(mixed.bins.size(), threads, [&](std::size_t i) {
    const std::size_t b = mixed.bins[i];
    std::uint32_t* v = values + mixed.offset[b];
    const std::size_t count = static_cast<std::size_t>(mixed.offset[b + 1] - mixed.offset[b]);
    thread_local std::vector<std::uint32_t> scratch;
    if (count >= kCountingBin) {
      within[i] = rank_by_counting(v, count, &scratch);
    } else {
      sort_bin(v, count, &scratch);
      within[i] = rank_sorted(v, count);
    }
  });
  U128 total;
  for (const U128& x : within) total.add(x);
  return total;
}

}  // namespace

RankSums rank_sums(const float* w, const std::uint8_t* labels, std::size_t n,
                   std::uint32_t low_key, std::uint32_t high_key, std::uint64_t* exact_sums) {
  const int threads = threads_for(n);
  std::vector<Slice> parts = cut_slices(n, threads);
  std::vector<std::vector<std::uint64_t>> exact(exact_sums ? parts.size() : 0,
                                                 std::vector<std::uint64_t>(kExactSumsSize, 0));
  parallel_for(parts.size(), threads, [&](std::size_t s) {  // phase 1
    if (exact_sums) {
      count_slice<true>(w, labels, low_key, high_key, &parts[s], exact[s].data());
    } else {
      count_slice<false>(w, labels, low_key, high_key, &parts[s], nullptr);
    }
  });
  if (exact_sums) {  // integer sums: any order gives the same bins
    std::fill(exact_sums, exact_sums + kExactSumsSize, std::uint64_t{0});
    for (const std::vector<std::uint64_t>& part : exact) {
      for (std::size_t j = 0; j < kExactSumsSize; ++j) exact_sums[j] += part[j];
    }
  }
  RankSums out;
  const Mixed mixed = sum_bins(parts, &out);
  if (!mixed.bins.empty()) {
    const std::unique_ptr<std::uint32_t[]> values = gather(w, labels, parts, mixed, threads);
    add_to(&out, rank_within(values.get(), mixed, threads));
  }
  return out;
}

}  // namespace nap
