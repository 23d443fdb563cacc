/// \file test_api.cpp
/// \brief ctest suite of nap/metrics.h and nap/snapshot.h against Python-written golden files
/// (tests/golden/make_cpp_golden.py): every weight's bits, the metadata, and the metrics equal
/// to the last float64 bit; damaged files refused; write -> read round trips.
///
/// Usage: nap_api_tests GOLDEN_DIR SCRATCH_DIR (GOLDEN_DIR: the repository's tests/golden/).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "nap/metrics.h"
#include "nap/snapshot.h"

#include "check.h"

namespace {

std::uint64_t bits64(double x) {
  std::uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

std::uint64_t hex(const std::string& s) { return std::stoull(s, nullptr, 16); }

// -- The golden table: kind, name, field, value ------------------------------------------------

struct Golden {
  std::map<std::string, std::map<std::string, std::string>> snapshots, cases, metrics;
  std::map<std::string, std::vector<std::uint32_t>> weights;
};

Golden read_golden(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cannot open %s\n", path.c_str());
    std::exit(2);
  }
  Golden g;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line.compare(0, 5, "kind\t") == 0) continue;
    std::stringstream ss(line);
    std::string kind, name, field, value;
    std::getline(ss, kind, '\t');
    std::getline(ss, name, '\t');
    std::getline(ss, field, '\t');
    std::getline(ss, value);
    if (kind == "snapshot") g.snapshots[name][field] = value;
    else if (kind == "case") g.cases[name][field] = value;
    else if (kind == "metric") g.metrics[name][field] = value;
    else if (kind == "weight") g.weights[name].push_back(static_cast<std::uint32_t>(hex(value)));
  }
  return g;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// -- Snapshots ---------------------------------------------------------------------------------

void golden_snapshot(const std::string& golden, const Golden& g, const std::string& name) {
  const auto& want = g.snapshots.at(name);
  const std::vector<std::uint32_t>& weights = g.weights.at(name);
  nap::Snapshot s = nap::read_snapshot(golden + "/" + want.at("file"));
  CHECK(s.weights.size() == weights.size(), "%s: %zu weights", name.c_str(), s.weights.size());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < weights.size() && i < s.weights.size(); ++i) {
    differ += nap::bits_of(s.weights[i]) != weights[i];
  }
  CHECK(differ == 0, "%s: %zu weights differ in their bits", name.c_str(), differ);
  CHECK(nap::bits_of(s.params.lr) == hex(want.at("param.lr")), "%s: lr", name.c_str());
  CHECK(nap::bits_of(s.params.gate) == hex(want.at("param.gate")), "%s: gate", name.c_str());
  CHECK(nap::bits_of(s.params.decay) == hex(want.at("param.decay")), "%s: decay", name.c_str());
  CHECK(s.iteration == std::stoull(want.at("iteration")), "%s: iteration", name.c_str());
  CHECK(s.sequence == std::stoull(want.at("sequence")), "%s: sequence", name.c_str());
  CHECK(s.format_version == std::stoi(want.at("format_version")), "%s: version", name.c_str());
  std::size_t entries = 0;
  for (const auto& kv : want) {
    if (kv.first.compare(0, 5, "meta.") != 0) continue;
    ++entries;
    const auto it = s.metadata.find(kv.first.substr(5));
    CHECK(it != s.metadata.end() && it->second == kv.second, "%s: %s", name.c_str(), kv.first.c_str());
  }
  CHECK(entries == s.metadata.size() && entries >= 12, "%s: %zu metadata entries", name.c_str(), entries);
}

/// read_snapshot(path) throws SnapshotError whose message names the file and holds `what`.
void expect_refused(const std::string& path, const char* what, const char* label) {
  try {
    nap::read_snapshot(path);
    CHECK(false, "%s: read without error", label);
  } catch (const nap::SnapshotError& e) {
    const std::string msg = e.what();
    CHECK(msg.find(path) != std::string::npos && msg.find(what) != std::string::npos,
          "%s: message '%s' lacks '%s'", label, msg.c_str(), what);
  }
}

std::string patched(std::string bytes, const std::string& from, const std::string& to) {
  const std::size_t at = bytes.find(from);
  CHECK(at != std::string::npos, "'%s' not in the file", from.c_str());
  if (at != std::string::npos) bytes.replace(at, from.size(), to);
  return bytes;
}

void corrupted_copies(const std::string& golden, const std::string& scratch) {
  const std::string good = read_bytes(golden + "/snapshot_v2.nap");
  const std::string path = scratch + "/api_corrupt.nap";
  std::string bytes = good;
  const std::size_t at = bytes.size() - 4 * 500 + 1;  // a byte of weight 500
  bytes[at] = static_cast<char>(bytes[at] ^ 0x01);
  write_bytes(path, bytes);
  expect_refused(path, "checksum mismatch", "flipped weight byte");
  write_bytes(path, patched(good, "\"sequence\":\"4242\"", "\"sequence\":\"4243\""));
  expect_refused(path, "checksum mismatch", "flipped metadata byte");
  write_bytes(path, patched(good, "\"backend\":\"numpy\"", "\"backend\":\"numpz\""));
  expect_refused(path, "checksum mismatch", "flipped free-text metadata byte");
  write_bytes(path, good.substr(0, good.size() - 1));
  expect_refused(path, "truncated or extended", "truncated file");
  write_bytes(path, good + '\0');
  expect_refused(path, "truncated or extended", "extended file");
  write_bytes(path, good.substr(0, 5));
  expect_refused(path, "too short", "5-byte file");
  write_bytes(path, patched(good, "\"format_version\":\"2\"", "\"format_version\":\"3\""));
  expect_refused(path, "format version 3", "future format version");
  write_bytes(path, patched(good, "\"format\":\"nap-snapshot\"", "\"format\":\"nap-snapshoT\""));
  expect_refused(path, "not a nap snapshot", "foreign format");
  write_bytes(path, patched(good, "\"dtype\":\"F32\"", "\"dtype\":\"F16\""));
  expect_refused(path, "are not 1000 float32 values", "wrong dtype");
  write_bytes(path, patched(good, "\"shape\":[1000]", "\"shape\":[1001]"));
  expect_refused(path, "are not 1000 float32 values", "wrong shape");
  write_bytes(path, patched(good, "\"lr\":\"0x3d8f5c29\"", "\"lr\":\"0x7fc00000\""));
  expect_refused(path, "bad metadata", "NaN learning rate");
  write_bytes(path, patched(good, "{\"weights\"", "[\"weights\""));
  expect_refused(path, "unreadable header", "broken JSON");
  bytes = good;
  bytes[7] = 0x10;  // a header length beyond the file
  write_bytes(path, bytes);
  expect_refused(path, "header length", "header length");
  expect_refused(scratch + "/api_no_such_file.nap", "cannot open", "missing file");
}

void round_trip(const std::string& dir, const std::string& scratch) {
  const nap::Snapshot golden = nap::read_snapshot(dir + "/snapshot_v2.nap");
  const std::string path = scratch + "/api_round_trip.nap";
  std::vector<float> w = golden.weights;
  w[9] = -0.0f;  // stored as written, read as +0.0
  for (int pass = 0; pass < 2; ++pass) {  // the second write replaces the first
    nap::write_snapshot(path, w.data(), w.size(), golden.params, 77 + pass, 99);
    const nap::Snapshot s = nap::read_snapshot(path);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < w.size(); ++i) differ += nap::bits_of(s.weights[i]) != nap::bits_of(w[i] + 0.0f);
    CHECK(s.weights.size() == w.size() && differ == 0, "round trip: %zu weights differ", differ);
    CHECK(nap::bits_of(s.weights[9]) == 0u, "-0.0 not read as +0.0");
    CHECK(s.iteration == 77u + pass && s.sequence == 99u, "round trip: iteration/sequence");
    CHECK(nap::bits_of(s.params.lr) == nap::bits_of(golden.params.lr) &&
          nap::bits_of(s.params.gate) == nap::bits_of(golden.params.gate) &&
          nap::bits_of(s.params.decay) == nap::bits_of(golden.params.decay), "round trip: params");
    CHECK(s.format_version == 2 && s.metadata.at("checksum").compare(0, 7, "crc32c:") == 0,
          "round trip: version %d, checksum %s", s.format_version, s.metadata.at("checksum").c_str());
  }
  const std::string bytes = read_bytes(path);
  const std::uint64_t header = static_cast<unsigned char>(bytes[0]) | static_cast<unsigned char>(bytes[1]) << 8;
  CHECK((8 + header) % 64 == 0 && bytes.size() == 8 + header + 4 * w.size(), "layout: header %llu",
        static_cast<unsigned long long>(header));
  std::size_t leftovers = 0;
  for (const auto& entry : std::filesystem::directory_iterator(scratch)) {
    leftovers += entry.path().filename().string().compare(0, 21, ".api_round_trip.nap.t") == 0;
  }
  CHECK(leftovers == 0, "%zu temporary files left", leftovers);
  const std::vector<float> bad = {0.5f, 1.5f, 0.25f};
  nap::write_snapshot(path, bad.data(), bad.size(), nap::Params{}, 0, 0);
  expect_refused(path, "weight 1 = 1.5 is not in [0, 1]", "weight above 1");
  const std::vector<float> none;
  nap::write_snapshot(path, none.data(), 0, nap::Params{}, 1, 2);
  CHECK(nap::read_snapshot(path).weights.empty(), "empty population");
  bool refused = false;
  try {
    nap::write_snapshot(scratch + "/no_such_dir/x.nap", w.data(), w.size(), nap::Params{}, 0, 0);
  } catch (const std::system_error&) {
    refused = true;
  }
  CHECK(refused, "a missing directory was not reported");
  refused = false;
  try {
    nap::write_snapshot(path, w.data(), w.size(), nap::Params{2.0f, 0.5f, 0.0f}, 0, 0);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused && nap::read_snapshot(path).weights.empty(), "lr = 2 was written");
}

void crc_check_values() {
  const char digits[] = "123456789";  // the catalogue's check input
  CHECK(nap::crc32(digits, 9) == 0xCBF43926u, "CRC-32 check value 0x%08x", nap::crc32(digits, 9));
  CHECK(nap::crc32c(digits, 9) == 0xE3069283u, "CRC-32C check value 0x%08x", nap::crc32c(digits, 9));
  CHECK(nap::crc32c(digits + 4, 5, nap::crc32c(digits, 4)) == 0xE3069283u, "CRC-32C continued");
  CHECK(nap::crc32(digits + 1, 8, nap::crc32(digits, 1)) == 0xCBF43926u, "CRC-32 continued");
  std::string long_input(1000, 'x');  // past the 8-byte fast path
  for (std::size_t i = 0; i < long_input.size(); ++i) long_input[i] = static_cast<char>(i * 7);
  std::uint32_t bytewise = 0;
  for (char c : long_input) bytewise = nap::crc32c(&c, 1, bytewise);
  CHECK(bytewise == nap::crc32c(long_input.data(), long_input.size()), "CRC-32C by 8 vs by 1");
}

// -- Metrics -----------------------------------------------------------------------------------

std::map<std::string, std::string> fields(const nap::Metrics& m) {
  auto h = [](double x) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(bits64(x)));
    return std::string(buf);
  };
  return {{"n", std::to_string(m.n)}, {"separation", h(m.separation)},
          {"inversion_ratio", h(m.inversion_ratio)}, {"saturation", h(m.saturation)},
          {"reinforced.count", std::to_string(m.reinforced.count)},
          {"reinforced.mean", h(m.reinforced.mean)}, {"reinforced.std", h(m.reinforced.stddev)},
          {"punished.count", std::to_string(m.punished.count)},
          {"punished.mean", h(m.punished.mean)}, {"punished.std", h(m.punished.stddev)},
          {"min", h(m.min)}, {"max", h(m.max)}, {"nonfinite", std::to_string(m.nonfinite)},
          {"eps", h(m.eps)}};
}

void golden_metrics(const std::string& golden, const Golden& g) {
  const nap::Snapshot s = nap::read_snapshot(golden + "/snapshot_v2.nap");
  CHECK(g.cases.size() >= 6, "%zu metric cases", g.cases.size());
  for (const auto& c : g.cases) {
    const std::string& text = c.second.at("labels");
    std::vector<std::uint8_t> labels(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) labels[i] = static_cast<std::uint8_t>(text[i] - '0');
    double eps;
    const std::uint64_t eps_bits = hex(c.second.at("eps"));
    std::memcpy(&eps, &eps_bits, sizeof eps);
    nap::Metrics m;
    const auto sample_text = c.second.find("sample");
    if (sample_text == c.second.end()) {
      m = nap::metrics(s.weights.data(), labels.data(), labels.size(), eps);
    } else {
      std::vector<std::int64_t> sample;
      std::stringstream ss(sample_text->second);
      for (std::string item; std::getline(ss, item, ',');) sample.push_back(std::stoll(item));
      m = nap::sample_metrics(s.weights.data(), labels.data(), labels.size(), sample.data(),
                              sample.size(), eps);
    }
    const auto got = fields(m);
    const auto& want = g.metrics.at(c.first);
    CHECK(want.size() == got.size(), "%s: %zu fields", c.first.c_str(), want.size());
    for (const auto& kv : want) {
      const auto it = got.find(kv.first);
      CHECK(it != got.end() && it->second == kv.second, "%s.%s: got %s want %s", c.first.c_str(),
            kv.first.c_str(), it == got.end() ? "none" : it->second.c_str(), kv.second.c_str());
    }
  }
}

template <class F>
bool throws(F f) {
  try {
    f();
  } catch (const std::exception&) {
    return true;
  }
  return false;
}

/// The separation of one R weight r and one P weight p is r - p rounded once to float64:
/// pairs whose difference lies exactly halfway between two float64 (ties to even, up and
/// down) or just past it (the remainder's sticky bit).
void rounding() {
  const std::uint8_t labels[] = {1, 0};
  struct Case { float r, p; double want; };
  const Case cases[] = {
      {1.0f + 0x1p-23f, -0x3p-53f, 1.0 + 0x1p-23 + 0x1p-51},  // tie, odd below: up
      {1.0f, -0x1p-53f, 1.0},                                // tie, even below: down
      {1.0f, -(0x1p-53f + 0x1p-60f), 1.0 + 0x1p-52},         // past the tie: up
  };
  for (const Case& c : cases) {
    const float w[] = {c.r, c.p};
    const double got = nap::metrics(w, labels, 2).separation;
    CHECK(bits64(got) == bits64(c.want), "separation %a - %a: got %a want %a",
          static_cast<double>(c.r), static_cast<double>(c.p), got, c.want);
  }
}

void metric_rules() {
  const float w[] = {0.875f, 0.75f, 0.25f, 0.125f};
  const std::uint8_t labels[] = {1, 1, 0, 0};
  const nap::Metrics m = nap::metrics(w, labels, 4);
  CHECK(m.separation == 0.625 && m.inversion_ratio == 1.0 && m.saturation == 0.0,
        "Engine.metrics example: %.17g %.17g %.17g", m.separation, m.inversion_ratio, m.saturation);
  rounding();
  const float r[] = {0.9f, 0.5f}, p[] = {0.5f, 0.1f};
  CHECK(nap::inversion_ratio(r, 2, p, 2) == 0.875, "inversion_ratio example");
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const float r_inf[] = {-inf};
  const float p_zero[] = {0.0f};
  CHECK(nap::inversion_ratio(r_inf, 1, p_zero, 1) == 0.0, "-inf ranks lowest");
  const float r_nan[] = {nan, 0.5f};
  CHECK(std::isnan(nap::inversion_ratio(r_nan, 2, p_zero, 1)), "NaN gives NaN");
  CHECK(std::isnan(nap::inversion_ratio(r, 0, p, 2)), "empty R gives NaN");
  const nap::Metrics empty = nap::metrics(nullptr, nullptr, 0);
  CHECK(empty.n == 0 && std::isnan(empty.saturation) && std::isnan(empty.min) &&
        std::isnan(empty.separation) && std::isnan(empty.inversion_ratio), "empty population");
  const std::uint8_t two[] = {1, 2, 0, 0};
  CHECK(throws([&] { nap::metrics(w, two, 4); }), "label 2 accepted");
  CHECK(throws([&] { nap::metrics(w, labels, 4, 0.5); }), "eps 0.5 accepted");
  CHECK(throws([&] { nap::metrics(w, labels, 4, std::nan("")); }), "eps NaN accepted");
  const std::int64_t outside[] = {0, 4};
  CHECK(throws([&] { nap::sample_metrics(w, labels, 4, outside, 2); }), "index 4 of 4 accepted");
  const std::int64_t negative[] = {-1};
  CHECK(throws([&] { nap::sample_metrics(w, labels, 4, negative, 1); }), "index -1 accepted");
  const float with_nan[] = {nan, 0.5f, 0.99f, 0.01f};
  const nap::Metrics mn = nap::metrics(with_nan, labels, 4);
  CHECK(std::isnan(mn.min) && std::isnan(mn.max) && std::isnan(mn.inversion_ratio) &&
        mn.saturation == 0.5 && mn.nonfinite == 1 && mn.reinforced.count == 2, "NaN weight");
  CHECK(bits64(mn.separation) == 0x7ff8000000000000ull, "NaN is Python's math.nan bits");
  const float with_inf[] = {inf, 0.5f, -inf, 0.5f};
  const nap::Metrics mi = nap::metrics(with_inf, labels, 4);
  CHECK(mi.min == -HUGE_VAL && mi.max == HUGE_VAL && mi.saturation == 0.5 && mi.nonfinite == 2 &&
        std::isnan(mi.inversion_ratio), "infinite weights");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s GOLDEN_DIR SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  const std::string golden = argv[1], scratch = argv[2];
  try {
    const Golden g = read_golden(golden + "/cpp_api_golden.tsv");
    crc_check_values();
    golden_snapshot(golden, g, "v2");
    golden_snapshot(golden, g, "v1");
    golden_metrics(golden, g);
    metric_rules();
    corrupted_copies(golden, scratch);
    round_trip(golden, scratch);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    ++nap_test::failures;
  }
  std::printf("test_api: %d checks, %d failed\n", nap_test::checks, nap_test::failures);
  return nap_test::failures == 0 ? 0 : 1;
}
