/// \file test_core.cpp
/// \brief ctest suite of the C++ core alone: golden tables (bits), the law's invariants, and
/// every parallel loop against a one-thread run of the same law. Comparisons are bitwise.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "nap/core.h"

#include "check.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 1)
#include <xmmintrin.h>
#define NAP_TEST_MXCSR 1
#elif defined(__aarch64__) && defined(__GNUC__)
#define NAP_TEST_FPCR 1
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <csignal>
#include <sys/wait.h>
#include <unistd.h>
#define NAP_TEST_FORK 1
#endif

namespace {

std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

float from_hex(const std::string& h) {
  const std::uint32_t b = static_cast<std::uint32_t>(std::stoul(h, nullptr, 16));
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

std::vector<std::vector<std::string>> read_tsv(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cannot open %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<std::vector<std::string>> rows;
  std::string line;
  bool header = true;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (header) {  // the column names
      header = false;
      continue;
    }
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, '\t')) cells.push_back(cell);
    rows.push_back(cells);
  }
  return rows;
}

void golden_single_events(const std::string& dir) {
  const auto rows = read_tsv(dir + "/law_golden.tsv");
  CHECK(rows.size() > 20, "too few golden rows: %zu", rows.size());
  for (const auto& r : rows) {
    const nap::Params p{from_hex(r[3]), from_hex(r[4]), from_hex(r[5])};
    const float w = from_hex(r[1]), q = from_hex(r[2]);
    float out = 0.0f;
    if (r[0] == "step") out = nap::step(w, q, p);
    else if (r[0] == "feedback") out = nap::feedback(w, q, p.lr, p.gate);
    else out = nap::decay_once(w, p.decay);
    CHECK(bits(out) == bits(from_hex(r[6])), "%s: got 0x%08x want %s", r[7].c_str(), bits(out),
          r[6].c_str());
    // The same case through the array loops (one element).
    float arr = w;
    if (r[0] == "step") nap::step(&arr, &q, 1, p);
    else if (r[0] == "decay") nap::decay(&arr, 1, p.decay, 1);
    else {
      const std::int64_t id = 0;
      nap::update(&arr, 1, &id, &q, 1, p);
    }
    CHECK(bits(arr) == bits(from_hex(r[6])), "loop: %s", r[7].c_str());
  }
}

void golden_sequences(const std::string& dir) {
  for (const auto& r : read_tsv(dir + "/law_sequences.tsv")) {
    const nap::Params p{from_hex(r[4]), from_hex(r[5]), from_hex(r[6])};
    float w = from_hex(r[1]);
    const float q = from_hex(r[2]);
    const int repeats = std::stoi(r[3]);
    float arr = w;
    for (int i = 0; i < repeats; ++i) w = r[0] == "step" ? nap::step(w, q, p) : nap::decay_once(w, p.decay);
    if (r[0] == "decay") nap::decay(&arr, 1, p.decay, static_cast<std::uint64_t>(repeats));
    else
      for (int i = 0; i < repeats; ++i) nap::step_scalar(&arr, q, 1, p);
    CHECK(bits(w) == bits(from_hex(r[7])), "%s: got 0x%08x", r[8].c_str(), bits(w));
    CHECK(bits(arr) == bits(from_hex(r[7])), "loop: %s", r[8].c_str());
  }
}

std::vector<float> uniform(std::size_t n, float lo, float hi, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Invariant 1: decay never increases a weight and stays in [0, 1].
// Invariant 2: q > gate never lowers a weight (before decay), q <= gate never raises it.
void invariants() {
  const nap::Params p;
  const auto ws = uniform(20000, 0.0f, 1.0f, 1);
  const auto qs = uniform(20000, -0.5f, 1.5f, 2);
  for (std::size_t i = 0; i < ws.size(); ++i) {
    const float d = nap::decay_once(ws[i], p.decay);
    CHECK(d <= ws[i] && d >= 0.0f, "decay rose at %zu", i);
    const float f = nap::feedback(ws[i], qs[i], p.lr, p.gate);
    CHECK(f >= 0.0f && f <= 1.0f, "feedback out of bounds at %zu", i);
    if (qs[i] > p.gate) CHECK(f >= ws[i], "reinforcement lowered w at %zu", i);
    else CHECK(f <= ws[i], "punishment raised w at %zu", i);
  }
  // -0.0 never leaves the law; NaN weights propagate as NaN (numpy.maximum semantics).
  CHECK(bits(nap::step(-0.0f, 0.0f, p)) == 0u, "-0.0 left the law");
  const float nan = from_hex("0x7fc00000");
  CHECK(nap::step(nan, 0.9f, p) != nap::step(nan, 0.9f, p), "NaN weight did not propagate");
}

// The measured threshold lies within its bounds, is measured once, and a pin overrides it.
void parallel_threshold() {
  nap::set_num_threads(2);
  if (nap::num_threads() > 1) {  // (a core without OpenMP runs one thread)
    const std::size_t measured = nap::parallel_threshold();
    CHECK(measured >= (std::size_t{1} << 16) && measured <= (std::size_t{1} << 24),
          "measured parallel threshold outside [2^16, 2^24]");
    CHECK(nap::parallel_threshold() == measured, "parallel threshold measured twice");
    nap::set_parallel_threshold(1000);
    CHECK(nap::parallel_threshold() == 1000, "set_parallel_threshold did not pin it");
    nap::set_parallel_threshold(0);
    CHECK(nap::parallel_threshold() == measured, "set_parallel_threshold(0) did not unpin it");
  }
  nap::set_num_threads(1);
  CHECK(nap::parallel_threshold() == static_cast<std::size_t>(-1), "one thread went parallel");
  nap::set_num_threads(0);
}

// Parallel loops against the same law run on one thread, bitwise.
void parallel_matches_serial() {
  const nap::Params p;
  const std::size_t n = 300001;  // not a multiple of any vector width or block
  const auto w0 = uniform(n, 0.0f, 1.0f, 3);
  const auto q = uniform(n, -0.2f, 1.2f, 4);

  auto run = [&](int threads, auto body) {
    nap::set_num_threads(threads);
    std::vector<float> w = w0;
    body(w);
    nap::set_num_threads(0);
    return w;
  };
  auto dense = [&](std::vector<float>& w) { nap::step(w.data(), q.data(), n, p); };
  auto decays = [&](std::vector<float>& w) { nap::decay(w.data(), n, p.decay, 37); };
  CHECK(same_bits(run(1, dense), run(2, dense)), "dense step differs across thread counts");
  CHECK(same_bits(run(1, decays), run(2, decays)), "decay(k) differs across thread counts");

  std::vector<float> expect_dense = w0;
  for (std::size_t i = 0; i < n; ++i) expect_dense[i] = nap::step(w0[i], q[i], p);
  CHECK(same_bits(run(2, dense), expect_dense), "dense loop differs from the law");

  std::vector<float> expect_decay = w0;
  for (auto& x : expect_decay)
    for (int r = 0; r < 37; ++r) x = nap::decay_once(x, p.decay);
  CHECK(same_bits(run(2, decays), expect_decay), "decay(37) differs from 37 single decays");

  // Sparse: many duplicates in random order, big enough to take the parallel path.
  const std::size_t m = 200000;
  std::mt19937 gen(5);
  std::uniform_int_distribution<std::int64_t> hot(0, 50), any(0, static_cast<std::int64_t>(n) - 1);
  std::vector<std::int64_t> ids(m);
  for (std::size_t j = 0; j < m; ++j) ids[j] = (j % 3 == 0) ? hot(gen) : any(gen);
  const auto eq = uniform(m, -0.3f, 1.3f, 6);
  auto sparse = [&](std::vector<float>& w) { nap::update(w.data(), n, ids.data(), eq.data(), m, p); };
  std::vector<float> expect_sparse = w0;
  for (std::size_t j = 0; j < m; ++j)
    expect_sparse[ids[j]] = nap::feedback(expect_sparse[ids[j]], eq[j], p.lr, p.gate);
  CHECK(same_bits(run(4, sparse), expect_sparse), "parallel sparse batch broke event order");
  CHECK(same_bits(run(7, sparse), expect_sparse), "parallel sparse batch (7 threads) broke order");
  CHECK(same_bits(run(1, sparse), expect_sparse), "serial sparse batch differs");
}

// step_into: the in-place step's bits in another array, on 1 and 2 threads, below and past the
// streaming-store size, with out at every offset within a vector (the scalar head before the
// first 64-byte boundary); a NaN or infinite q anywhere is reported at its index and w is
// never written.
void step_into_matches_step() {
  const nap::Params p;
  for (const std::size_t n : {std::size_t{1}, std::size_t{37}, std::size_t{300001},
                              (std::size_t{1} << 20) + 13}) {
    const auto w0 = uniform(n, 0.0f, 1.0f, 7);
    auto q = uniform(n, -0.2f, 1.2f, 8);
    std::vector<float> expect = w0;
    nap::step(expect.data(), q.data(), n, p);
    for (const int threads : {1, 2}) {
      nap::set_num_threads(threads);
      for (std::size_t offset = 0; offset < 17; offset += 5) {
        std::vector<float> buffer(n + offset, -1.0f), w = w0;
        float* out = buffer.data() + offset;
        CHECK(nap::step_into(w.data(), q.data(), out, n, p) == -1,
              "step_into flagged finite q (n=%zu)", n);
        CHECK(std::memcmp(out, expect.data(), n * sizeof(float)) == 0,
              "step_into differs from step: n=%zu, %d threads, offset %zu", n, threads, offset);
        CHECK(same_bits(w, w0), "step_into wrote w (n=%zu)", n);
      }
      for (const std::size_t at : {std::size_t{0}, n / 2, n - 1}) {
        const float saved = q[at];
        q[at] = at % 2 ? INFINITY : NAN;
        std::vector<float> w = w0, out(n);
        CHECK(nap::step_into(w.data(), q.data(), out.data(), n, p) == static_cast<std::int64_t>(at),
              "step_into missed the non-finite q at %zu (n=%zu, %d threads)", at, n, threads);
        CHECK(same_bits(w, w0), "a rejected step_into wrote w (n=%zu)", n);
        q[at] = saved;
      }
      nap::set_num_threads(0);
    }
  }
}

// The batch over a population past the caches, on 2 and 3 threads (each reads every event and
// keeps its own id range): ids on each side of every range's edge and a few hot ids, a handful
// of events each (so no weight saturates and every event shows), spread over many chunks.
void filtered_batch_keeps_order() {
  const nap::Params p;
  const std::size_t n = (std::size_t{1} << 22) + 5, m = 100000;
  const auto w0 = uniform(n, 0.0f, 1.0f, 7);
  std::mt19937 gen(9);
  std::uniform_int_distribution<std::int64_t> any(0, static_cast<std::int64_t>(n) - 1);
  std::uniform_int_distribution<std::size_t> at(0, m - 1);
  std::vector<std::int64_t> ids(m);
  for (auto& id : ids) id = any(gen);
  for (std::size_t T : {2, 3})
    for (std::size_t t = 0; t <= T; ++t)
      for (std::int64_t d : {-2, -1, 0, 1}) {
        const auto edge = static_cast<std::int64_t>((n + T - 1) / T * t) + d;
        if (edge < 0 || edge >= static_cast<std::int64_t>(n)) continue;
        for (int e = 0; e < 6; ++e) ids[at(gen)] = edge;
      }
  for (std::int64_t hot : {3, 1 << 21, (1 << 22) + 4})
    for (int e = 0; e < 20; ++e) ids[at(gen)] = hot;
  const auto eq = uniform(m, -0.3f, 1.3f, 8);
  std::vector<float> expect = w0;
  for (std::size_t j = 0; j < m; ++j)
    expect[ids[j]] = nap::feedback(expect[ids[j]], eq[j], p.lr, p.gate);
  for (int threads : {2, 3}) {
    nap::set_num_threads(threads);
    std::vector<float> w = w0;
    nap::update(w.data(), n, ids.data(), eq.data(), m, p);
    nap::set_num_threads(0);
    CHECK(same_bits(w, expect), "filtered sparse batch on %d threads broke event order", threads);
  }
}

void scans() {
  std::vector<float> x(5000, 0.5f);
  CHECK(nap::first_nonfinite(x.data(), x.size()) == -1, "clean array flagged");
  x[4321] = from_hex("0x7f800000");
  x[4999] = from_hex("0x7fc00000");
  CHECK(nap::first_nonfinite(x.data(), x.size()) == 4321, "first inf not found");
  std::vector<std::int64_t> ids = {0, 5, 9, 10, -1};
  CHECK(nap::first_bad_id(ids.data(), ids.size(), 10) == 3, "id == n not caught");
  CHECK(nap::first_bad_id(ids.data(), 3, 10) == -1, "valid ids flagged");
  ids[1] = -7;
  CHECK(nap::first_bad_id(ids.data(), ids.size(), 10) == 1, "negative id not caught");
  // Large enough to be split among threads: the first hit wins whichever slice finds it.
  std::vector<float> big(300001, 0.25f);
  std::vector<std::int64_t> big_ids(big.size(), 3);
  for (const int threads : {1, 2, 3}) {
    nap::set_num_threads(threads);
    for (const std::size_t at : {std::size_t{299999}, std::size_t{150001}, std::size_t{4097},
                                 std::size_t{0}}) {
      big[at] = from_hex("0xff800000");
      big_ids[at] = 10;
      CHECK(nap::first_nonfinite(big.data(), big.size()) == static_cast<std::int64_t>(at),
            "first_nonfinite on %d threads: not %zu", threads, at);
      CHECK(nap::first_bad_id(big_ids.data(), big_ids.size(), 10) == static_cast<std::int64_t>(at),
            "first_bad_id on %d threads: not %zu", threads, at);
    }
    std::fill(big.begin(), big.end(), 0.25f);
    std::fill(big_ids.begin(), big_ids.end(), 3);
    CHECK(nap::first_nonfinite(big.data(), big.size()) == -1, "clean array flagged");
  }
  // Every position is looked at: each block is read as side-by-side stretches (kernels.inl),
  // so the stretches, their seams (a quarter of a 2^16 block apart) and the tail all count.
  std::vector<float> wide((std::size_t{1} << 17) + 37, 0.75f);
  std::vector<std::size_t> where;
  for (std::size_t at = 0; at < wide.size(); at += 331) where.push_back(at);
  for (std::size_t seam = 0; seam <= wide.size(); seam += std::size_t{1} << 14) {
    if (seam > 0) where.push_back(seam - 1);
    if (seam < wide.size()) where.push_back(seam);
  }
  where.push_back(wide.size() - 1);
  for (const int threads : {1, 2, 3}) {
    nap::set_num_threads(threads);
    for (const std::size_t at : where) {
      wide[at] = from_hex("0x7fc00001");
      CHECK(nap::first_nonfinite(wide.data(), wide.size()) == static_cast<std::int64_t>(at),
            "first_nonfinite on %d threads missed %zu", threads, at);
      wide[at] = 0.75f;
    }
  }
  nap::set_num_threads(0);
}

void exact_sums_reconstruct() {
  const std::size_t n = 100003;
  const auto w = uniform(n, 0.0f, 1.0f, 7);
  std::vector<std::uint8_t> labels(n);
  for (std::size_t i = 0; i < n; ++i) labels[i] = static_cast<std::uint8_t>(i % 3 == 0);
  // The buffer is exactly kExactSumsSize (2 * 512 * 4) entries, then a canary the call must
  // not touch; a negative NaN labelled 1 lands in the very last bin.
  static_assert(nap::kExactSumsSize == 2 * 512 * 4, "exact_sums writes 2 x 512 x 4 sums");
  std::vector<std::uint64_t> out(nap::kExactSumsSize + 4, 0xa5a5a5a5a5a5a5a5ull);
  std::vector<float> with_nan = w;
  with_nan.push_back(from_hex("0xffffffff"));
  std::vector<std::uint8_t> nan_label = labels;
  nan_label.push_back(1);
  nap::exact_sums(with_nan.data(), nan_label.data(), with_nan.size(), out.data());
  CHECK(out[(2 * 512 - 1) * 4] == 1 && out[nap::kExactSumsSize - 3] == 0xffffff,
        "the last bin (label 1, key 511) holds the negative NaN");
  for (std::size_t k = nap::kExactSumsSize; k < out.size(); ++k)
    CHECK(out[k] == 0xa5a5a5a5a5a5a5a5ull, "exact_sums wrote past its %zu entries (at %zu)",
          nap::kExactSumsSize, k);
  nap::exact_sums(w.data(), labels.data(), n, out.data());
  long double sum[2] = {0, 0};
  std::uint64_t count[2] = {0, 0};
  for (int l = 0; l < 2; ++l)
    for (int key = 0; key < 256; ++key) {
      const std::uint64_t* acc = &out[(static_cast<std::size_t>(l) * 512 + key) * 4];
      count[l] += acc[0];
      const int e = key == 0 ? 1 : key;
      sum[l] += static_cast<long double>(acc[1]) * std::ldexp(1.0L, e - 150);
    }
  long double direct[2] = {0, 0};
  for (std::size_t i = 0; i < n; ++i) direct[labels[i]] += w[i];
  CHECK(count[1] == (n + 2) / 3 && count[0] + count[1] == n, "counts wrong");
  for (int l = 0; l < 2; ++l)
    CHECK(std::fabs(static_cast<double>(sum[l] - direct[l])) < 1e-6, "sum %d off", l);
}

// decay_once round after round until k rounds or a round changes no bit: the definition
// decay(k) must reproduce (written here without nap::decay_repeated).
float decay_by_definition(float x, float d, std::uint64_t k) {
  for (std::uint64_t r = 0; r < k; ++r) {
    const float y = nap::decay_once(x, d);
    if (bits(y) == bits(x)) break;
    x = y;
  }
  return x;
}

// decay(k) stops at each weight's fixpoint: a decay below half an ulp never moves a weight,
// and decay(2^62) used to loop 2^62 rounds on it. The bits are those of k rounds.
void decay_fixpoints() {
  // Under 1e-9: above 2^-5 a round changes nothing; below 1e-6 a weight reaches 0 within
  // ~1000 rounds; 0.03 moves an ulp a round and needs ~2.5e7 rounds to reach 0.
  std::vector<float> w = uniform(5000, 0.0313f, 1.0f, 8);
  const auto tiny = uniform(500, 0.0f, 1e-6f, 9);
  w.insert(w.end(), tiny.begin(), tiny.end());
  for (int e = 20; e < 150; e += 2) w.push_back(std::ldexp(1.0f, -e));
  w[0] = 0.0f;
  w[1] = 1.0f;
  w[2] = 0.03f;
  const std::uint64_t forever = std::uint64_t{1} << 62;
  for (const float d : {1e-9f, 0.02f, 1e-4f, 1.401298464e-45f}) {
    const std::uint64_t ks[] = {forever, 4321, 9};
    for (const std::uint64_t k : ks) {
      if (d == 1e-9f && k == 4321) continue;  // (covered by 9 and forever)
      std::vector<float> expect = w;
      for (auto& x : expect) x = decay_by_definition(x, d, k);
      for (const int threads : {1, 2}) {
        nap::set_num_threads(threads);
        std::vector<float> got = w;
        nap::decay(got.data(), got.size(), d, k);
        CHECK(same_bits(got, expect), "decay(%llu) by %g on %d threads differs from k rounds",
              static_cast<unsigned long long>(k), static_cast<double>(d), threads);
      }
      nap::set_num_threads(0);
    }
  }
  // Weights from outside the law (a caller's own array): -0.0, negative, NaN, above 1.
  std::vector<float> odd = {-0.0f, -0.5f, -1e-45f, 1.5f, 0.3f, 0.0f, 1.0f};
  for (const char* h : {"0x7fc00000", "0xffc00000", "0x7f800001", "0x7f800000", "0xff800000",
                        "0x7fc12345"})
    odd.push_back(from_hex(h));
  for (const float d : {0.0f, 0.02f, 1e-9f})
    for (const std::uint64_t k : {std::uint64_t{1}, std::uint64_t{3}, std::uint64_t{100},
                                  forever}) {
      std::vector<float> got = odd, expect = odd;
      for (auto& x : expect) x = decay_by_definition(x, d, d == 0.0f ? 1 : k);
      nap::decay(got.data(), got.size(), d, k);
      CHECK(same_bits(got, expect), "decay(%llu) by %g of weights from outside the law",
            static_cast<unsigned long long>(k), static_cast<double>(d));
      CHECK(bits(got[0]) == 0u, "-0.0 left decay(%llu)", static_cast<unsigned long long>(k));
    }
  // The law's own stops give the same bits: one weight alone, and eight side by side (each
  // group holds a slow weight, 0.03, beside ones that stop at once or within ~1000 rounds).
  for (std::size_t g = 0; g + 8 <= w.size(); g += 8 * 400) {
    float eight[8] = {w[g], w[g + 1], w[g + 2], 0.03f, w[g + 4], w[g + 5], w[g + 6], w[g + 7]};
    const float lone[8] = {eight[0], eight[1], eight[2], eight[3],
                           eight[4], eight[5], eight[6], eight[7]};
    nap::decay_repeated(eight, 1e-9f, forever);
    for (int i = 0; i < 8; ++i)
      CHECK(bits(eight[i]) == bits(decay_by_definition(lone[i], 1e-9f, forever)),
            "decay_repeated<8> lane %d of group %zu", i, g);
  }
  for (const float x : w)
    CHECK(bits(nap::decay_repeated(x, 1e-9f, forever)) ==
              bits(decay_by_definition(x, 1e-9f, forever)),
          "decay_repeated(%g)", static_cast<double>(x));
}

// steps_never_negative_zero: where it holds, no quality gives a -0.0 step (a sweep of every
// 4099th float32 bit pattern and the specials), so update's loop may drop its +0; where it
// fails, a -0.0 step exists (the predicate is needed) and update still returns +0.0 bits.
void negative_zero_steps() {
  const float inf = INFINITY, nan = std::nanf(""), tiny = from_hex("0x00000001");
  const float lrs[] = {0.0f, -0.0f, tiny, from_hex("0x007fffff"), std::nextafter(1e-30f, 0.0f),
                       1e-30f, 1e-7f, 0.05f, 1.0f, 3.0f, inf, nan};
  const float gates[] = {-tiny, -0.0f, 0.0f, tiny, 0.5f, 1.0f, 2.0f, inf, nan};
  std::vector<float> qs = {0.0f, -0.0f, 1.0f, tiny, -tiny, std::nextafter(1.0f, 0.0f),
                           0.5f, 2.0f, -2.0f, inf, -inf, nan};
  for (std::uint64_t b = 0; b <= 0xffffffffull; b += 4099) {
    float q;
    const auto b32 = static_cast<std::uint32_t>(b);
    std::memcpy(&q, &b32, sizeof q);
    qs.push_back(q);
  }
  for (const float lr : lrs)
    for (const float gate : gates) {
      const bool fast = nap::steps_never_negative_zero(lr, gate);
      std::size_t negative_zeros = 0;
      for (const float q : qs) negative_zeros += bits(nap::feedback_step(q, lr, gate)) == 0x80000000u;
      CHECK(!fast || negative_zeros == 0, "lr %g gate %g: %zu -0.0 steps", lr, gate, negative_zeros);
      // -0.0 weights and punishing qualities, one id: the chain must end on +0.0 (or the law)
      const nap::Params p{lr, gate, 0.02f};
      std::vector<float> w = {-0.0f, 0.0f, -0.0f};
      const std::int64_t ids[] = {0, 0, 1, 2, 2, 0};
      const float eq[] = {0.25f, 1.0f, 0.0f, -0.0f, 0.5f, 0.9f};
      std::vector<float> want(w);
      for (std::size_t j = 0; j < 6; ++j) want[ids[j]] = nap::feedback(want[ids[j]], eq[j], lr, gate);
      nap::update(w.data(), w.size(), ids, eq, 6, p);
      CHECK(same_bits(w, want), "update lr %g gate %g: not the law's bits", lr, gate);
    }
  CHECK(!nap::steps_never_negative_zero(0.0f, 0.5f) &&
            bits(nap::feedback_step(0.25f, 0.0f, 0.5f)) == 0x80000000u,
        "lr 0 punishing is a -0.0 step, and the predicate says so");
  CHECK(bits(nap::feedback_step(0.25f, 1e-30f, 0.5f)) == bits(-0.75f * 1e-30f),
        "the smallest fast-path punishing step is normal");
}

// The input rules of nap/law.h that the CUDA kernels use (pinned against NumPy's results).
void input_rules() {
  const std::uint64_t in[] = {0x3FE0000010000000ull, 0x3FE0000030000000ull, 0x36A8000000000000ull,
                              0x36A0000000000000ull, 0x3690000000000000ull, 0xFFF4000123456789ull,
                              0x7FF0000000000001ull, 0x4010000000000000ull, 0xC010000000000000ull,
                              0x8000000000000000ull, 0xFFF0000000000000ull, 0x7FEFFFFFFFFFFFFFull};
  const std::uint32_t out[] = {0x3f000000u, 0x3f000002u, 0x2u,        0x1u,
                               0x0u,        0xffe00009u, 0x7fc00000u, 0x40000000u,
                               0xbf800000u, 0x80000000u, 0xff800000u, 0x40000000u};
  for (std::size_t i = 0; i < sizeof in / sizeof in[0]; ++i) {
    double q;
    std::memcpy(&q, &in[i], sizeof q);
    CHECK(bits(nap::narrow_quality(q)) == out[i], "narrow_quality(0x%016llx) = 0x%08x",
          static_cast<unsigned long long>(in[i]), bits(nap::narrow_quality(q)));
  }
  CHECK(nap::nonfinite_bits(0x7f800000u) && nap::nonfinite_bits(0xffc00001u) &&
            !nap::nonfinite_bits(0x7f7fffffu) && !nap::nonfinite_bits(0x80000001u),
        "nonfinite_bits");
  CHECK(nap::id_outside(-1, 10) && nap::id_outside(10, 10) && !nap::id_outside(9, 10) &&
            nap::id_outside(0, 0) && nap::id_outside(INT64_MIN, INT64_MAX) &&
            !nap::id_outside(INT64_MAX - 1, INT64_MAX),
        "id_outside");
  const nap::ExactTerms t = nap::exact_terms(bits(1.0f));
  CHECK(t.significand == 0x800000u && t.square_high == 0x400000u && t.square_low == 0,
        "exact_terms(1.0)");
  CHECK(nap::exact_terms(1u).significand == 1 && nap::exact_bin(bits(-0.5f), 1) == 512 + 0x17e,
        "exact_terms/bin of a subnormal and -0.5");
}

// The thread's flush-to-zero and denormals-are-zero bits (what another library may set).
#if defined(NAP_TEST_MXCSR)
constexpr unsigned long long kFlushBits = (1u << 15) | (1u << 6);  // MXCSR FTZ, DAZ
unsigned long long fp_mode() { return _mm_getcsr(); }
void set_fp_mode(unsigned long long m) { _mm_setcsr(static_cast<unsigned>(m)); }
#elif defined(NAP_TEST_FPCR)
constexpr unsigned long long kFlushBits = 1ull << 24;  // FPCR FZ
unsigned long long fp_mode() {
  unsigned long long m;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(m));
  return m;
}
void set_fp_mode(unsigned long long m) { __asm__ __volatile__("msr fpcr, %0" : : "r"(m)); }
#endif

// Subnormal weights, qualities and learning rate under a caller that flushes subnormals (on
// the calling thread and on every OpenMP thread): every loop still runs the IEEE law, on 1
// and 2 threads, and every thread's mode is as it was afterwards.
void subnormals_under_flush_to_zero() {
#if defined(NAP_TEST_MXCSR) || defined(NAP_TEST_FPCR)
  const std::size_t n = std::size_t{1} << 18;  // above the parallel threshold
  const nap::Params p{from_hex("0x00100000"), 0.5f, 0.0f};  // lr subnormal, decay off
  std::mt19937 gen(11);
  std::uniform_int_distribution<std::uint32_t> sub(1, 0x7fffff), any(0, 0x3f800000);
  std::vector<float> w0(n), q(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t b = i % 2 ? sub(gen) : any(gen);  // half the qualities subnormal too
    std::memcpy(&q[i], &b, sizeof b);
    std::uint32_t wb = sub(gen);
    std::memcpy(&w0[i], &wb, sizeof wb);
  }
  const std::size_t m = n;
  std::vector<std::int64_t> ids(m);
  for (std::size_t j = 0; j < m; ++j) ids[j] = static_cast<std::int64_t>((j * 7919) % n);
  // The references, computed in IEEE mode before the mode changes.
  std::vector<float> want_step(w0), want_update(w0), want_decay(w0);
  for (std::size_t i = 0; i < n; ++i) want_step[i] = nap::step(w0[i], q[i], p);
  for (std::size_t j = 0; j < m; ++j)
    want_update[ids[j]] = nap::feedback(want_update[ids[j]], q[j], p.lr, p.gate);
  for (auto& x : want_decay) x = nap::decay_once(x, from_hex("0x00000001"));
  std::size_t subnormal_results = 0;
  for (const float x : want_step) subnormal_results += (bits(x) & 0x7f800000u) == 0 && bits(x) != 0;
  CHECK(subnormal_results > n / 2, "the case keeps few subnormals: %zu", subnormal_results);

  const unsigned long long before = fp_mode();
  std::vector<unsigned long long> modes;
#ifdef _OPENMP
#pragma omp parallel num_threads(2)
  set_fp_mode(fp_mode() | kFlushBits);  // the pool's threads, as a library's init would
#endif
  set_fp_mode(before | kFlushBits);
  for (const int threads : {1, 2, 4}) {
    nap::set_num_threads(threads);
    std::vector<float> got = w0;
    nap::step(got.data(), q.data(), n, p);
    CHECK(same_bits(got, want_step), "step on %d threads flushed subnormals", threads);
    got = w0;
    nap::update(got.data(), n, ids.data(), q.data(), m, p);
    CHECK(same_bits(got, want_update), "update on %d threads flushed subnormals", threads);
    got = w0;
    nap::decay(got.data(), n, from_hex("0x00000001"), 1);
    CHECK(same_bits(got, want_decay), "decay on %d threads flushed subnormals", threads);
    CHECK(fp_mode() == (before | kFlushBits), "the caller's mode changed on %d threads", threads);
  }
  nap::set_num_threads(0);
#ifdef _OPENMP
  int flushed_threads = 0, threads_seen = 0;
#pragma omp parallel num_threads(2) reduction(+ : flushed_threads, threads_seen)
  {
    threads_seen += 1;
    flushed_threads += (fp_mode() & kFlushBits) == kFlushBits ? 1 : 0;
    set_fp_mode(fp_mode() & ~kFlushBits);
  }
  CHECK(flushed_threads == threads_seen, "a worker's mode was not restored");
#endif
  set_fp_mode(before);
#else
  std::printf("(no flush-to-zero control on this target: subnormal check skipped)\n");
#endif
}

// fork() after a parallel region: the child's loops must not wait for the parent's OpenMP
// threads (libgomp hangs there), and give the same bits.
void fork_after_parallel_region() {
#ifdef NAP_TEST_FORK
  const nap::Params p;
  const std::size_t n = std::size_t{1} << 17;
  const auto w0 = uniform(n, 0.0f, 1.0f, 12);
  const auto q = uniform(n, -0.2f, 1.2f, 13);
  std::vector<float> want = w0;
  for (int r = 0; r < 3; ++r)
    for (std::size_t i = 0; i < n; ++i) want[i] = nap::step(want[i], q[i], p);
  nap::set_num_threads(2);
  std::vector<float> parent = w0;
  nap::step(parent.data(), q.data(), n, p);  // the OpenMP threads now exist
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child == 0) {
    alarm(60);  // a hang ends as SIGALRM
    std::vector<float> w = parent;
    nap::step(w.data(), q.data(), n, p);
    nap::set_num_threads(2);
    nap::step(w.data(), q.data(), n, p);
    const bool ok = same_bits(w, want) && nap::num_threads() == 1 &&
                    nap::first_nonfinite(w.data(), n) == -1;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  CHECK(child > 0 && waitpid(child, &status, 0) == child, "fork/waitpid failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "the forked child %s", WIFSIGNALED(status) ? "hung (or crashed)" : "got other bits");
  nap::step(parent.data(), q.data(), n, p);  // the parent's threads still work
  nap::step(parent.data(), q.data(), n, p);
  CHECK(same_bits(parent, want), "the parent's loops after the fork");
  nap::set_num_threads(0);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: nap_core_tests GOLDEN_DIR\n");
    return 2;
  }
  std::printf("nap core: %s, %d threads\n", nap::compile_options(), nap::num_threads());
  parallel_threshold();
  // The tests' sizes take the parallel paths from 2^16 elements, whatever this machine measures.
  nap::set_parallel_threshold(std::size_t{1} << 16);
  golden_single_events(argv[1]);
  golden_sequences(argv[1]);
  invariants();
  parallel_matches_serial();
  step_into_matches_step();
  filtered_batch_keeps_order();
  scans();
  exact_sums_reconstruct();
  decay_fixpoints();
  negative_zero_steps();
  input_rules();
  subnormals_under_flush_to_zero();
  fork_after_parallel_region();
  std::printf("%d checks, %d failed\n", nap_test::checks, nap_test::failures);
  return nap_test::failures == 0 ? 0 : 1;
}
