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

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond, ...)                                     \
  do {                                                       \
    ++g_checks;                                              \
    if (!(cond)) {                                           \
      ++g_failures;                                          \
      std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                     \
      std::fprintf(stderr, "\n");                            \
    }                                                        \
  } while (0)

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
}

void exact_sums_reconstruct() {
  const std::size_t n = 100003;
  const auto w = uniform(n, 0.0f, 1.0f, 7);
  std::vector<std::uint8_t> labels(n);
  for (std::size_t i = 0; i < n; ++i) labels[i] = static_cast<std::uint8_t>(i % 3 == 0);
  std::vector<std::uint64_t> out(2 * 512 * 4);
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: nap_core_tests GOLDEN_DIR\n");
    return 2;
  }
  std::printf("nap core: %s, %d threads\n", nap::compile_options(), nap::num_threads());
  golden_single_events(argv[1]);
  golden_sequences(argv[1]);
  invariants();
  parallel_matches_serial();
  scans();
  exact_sums_reconstruct();
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
