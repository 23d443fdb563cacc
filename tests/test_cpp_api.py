"""The C++ API (cpp/include/nap/metrics.h, snapshot.h) against the Python package, through a
small driver program built on the installed core with find_package(nap) -> nap::core:

* C++ metrics equal ``nap_gpu.metrics`` to the last float64 bit on random and adversarial
  populations (ties, all equal, an empty R or P, NaN, infinities, subnormals, any finite bit
  pattern), on samples of them, and for the standalone inversion ratio;
* snapshots the C++ side writes are loaded by ``nap.load`` bit for bit, and snapshots Python
  writes are read by the C++ side bit for bit, damaged ones refused with Python's wording;
* the ctest case of the API (golden files of tests/golden/make_cpp_golden.py) passes.

Skipped with the reason when CMake or a C++ compiler is missing.
"""

from __future__ import annotations

import math
import pathlib
import struct
import subprocess

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu import metrics, snapshot

from conftest import bits
from cpp_build import REPO, TIMEOUT, build_consumer, run

DRIVER_MAIN = r"""
// Driver of tests/test_cpp_api.py. Input files: u64 n, u64 m, f64 eps, u32 lr, gate, decay, pad,
// u64 iteration, sequence; then float32 w[n], uint8 labels[n], int64 sample[m].
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "nap/metrics.h"
#include "nap/snapshot.h"

namespace {
struct Input {
  std::uint64_t n = 0, m = 0, iteration = 0, sequence = 0;
  double eps = 0;
  nap::Params params;
  std::vector<float> w;
  std::vector<std::uint8_t> labels;
  std::vector<std::int64_t> sample;
};

Input read_input(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::string b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Input x;
  std::uint32_t p[4];
  std::memcpy(&x.n, &b[0], 8);
  std::memcpy(&x.m, &b[8], 8);
  std::memcpy(&x.eps, &b[16], 8);
  std::memcpy(p, &b[24], 16);
  std::memcpy(&x.iteration, &b[40], 8);
  std::memcpy(&x.sequence, &b[48], 8);
  x.params = nap::Params{nap::float_of_bits(p[0]), nap::float_of_bits(p[1]), nap::float_of_bits(p[2])};
  x.w.resize(x.n);
  x.labels.resize(x.n);
  x.sample.resize(x.m);
  std::size_t at = 56;
  if (x.n) std::memcpy(x.w.data(), &b[at], 4 * x.n);
  at += 4 * x.n;
  if (x.n) std::memcpy(x.labels.data(), &b[at], x.n);
  at += x.n;
  if (x.m) std::memcpy(x.sample.data(), &b[at], 8 * x.m);
  return x;
}

void print(const char* part, const char* field, double v) {
  unsigned long long b;
  std::memcpy(&b, &v, 8);
  std::printf("%s %s 0x%016llx\n", part, field, b);
}

void print(const char* part, const nap::Metrics& m) {
  std::printf("%s n %llu\n", part, static_cast<unsigned long long>(m.n));
  print(part, "separation", m.separation);
  print(part, "inversion_ratio", m.inversion_ratio);
  print(part, "saturation", m.saturation);
  std::printf("%s reinforced.count %llu\n", part, static_cast<unsigned long long>(m.reinforced.count));
  print(part, "reinforced.mean", m.reinforced.mean);
  print(part, "reinforced.std", m.reinforced.stddev);
  std::printf("%s punished.count %llu\n", part, static_cast<unsigned long long>(m.punished.count));
  print(part, "punished.mean", m.punished.mean);
  print(part, "punished.std", m.punished.stddev);
  print(part, "min", m.min);
  print(part, "max", m.max);
  std::printf("%s nonfinite %llu\n", part, static_cast<unsigned long long>(m.nonfinite));
  print(part, "eps", m.eps);
}
}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argv[1];
  try {
    if (mode == "metrics") {
      const Input x = read_input(argv[2]);
      print("full", nap::metrics(x.w.data(), x.labels.data(), x.n, x.eps));
      print("sample", nap::sample_metrics(x.w.data(), x.labels.data(), x.n, x.sample.data(), x.m, x.eps));
      std::vector<float> r, p;
      for (std::size_t i = 0; i < x.n; ++i) (x.labels[i] ? r : p).push_back(x.w[i]);
      print("pair", "ratio", nap::inversion_ratio(r.data(), r.size(), p.data(), p.size()));
    } else if (mode == "write") {
      const Input x = read_input(argv[3]);
      nap::write_snapshot(argv[2], x.w.data(), x.n, x.params, x.iteration, x.sequence);
    } else if (mode == "read") {  // the weights' bits to argv[3], the rest to stdout
      const nap::Snapshot s = nap::read_snapshot(argv[2]);
      std::ofstream(argv[3], std::ios::binary).write(reinterpret_cast<const char*>(s.weights.data()),
                                                     static_cast<std::streamsize>(4 * s.weights.size()));
      std::printf("%llu %llu %08x %08x %08x %s\n", static_cast<unsigned long long>(s.iteration),
                  static_cast<unsigned long long>(s.sequence), nap::bits_of(s.params.lr),
                  nap::bits_of(s.params.gate), nap::bits_of(s.params.decay),
                  s.metadata.at("checksum").c_str());
    }
  } catch (const nap::SnapshotError& e) {
    std::printf("SnapshotError: %s\n", e.what());
    return 3;
  }
  return 0;
}
"""

@pytest.fixture(scope="module")
def installed(core_installed):  # the session's build, installed (tests/conftest.py)
    return core_installed


@pytest.fixture(scope="module")
def driver(installed, tmp_path_factory) -> pathlib.Path:
    return build_consumer(installed, tmp_path_factory.mktemp("nap_api_driver"), DRIVER_MAIN)


def test_ctest_api_passes(core_build):
    out = run(["ctest", "-R", "nap_api_tests", "-V", "-C", "Release"], cwd=core_build.build_dir)
    summary = [line for line in out.splitlines() if "test_api:" in line]
    assert summary and summary[-1].rstrip().endswith(" 0 failed"), out
    assert int(summary[-1].split("test_api:")[1].split()[0]) > 150, out


# -- metrics ------------------------------------------------------------------------------------

def _input_file(path: pathlib.Path, w, labels, *, eps=metrics.DEFAULT_EPS, sample=None,
                params=None, iteration=0, sequence=0) -> pathlib.Path:
    params = nap.Params() if params is None else params
    w = np.ascontiguousarray(w, np.float32)
    labels = np.ascontiguousarray(labels, np.uint8)
    sample = np.zeros(0, np.int64) if sample is None else np.ascontiguousarray(sample, np.int64)
    lr, gate, decay = (int(np.float32(v).view(np.uint32)) for v in params.float32())
    head = struct.pack("<QQdIIIIQQ", w.size, sample.size, eps, lr, gate, decay, 0, iteration, sequence)
    path.write_bytes(head + w.astype("<f4").tobytes() + labels.tobytes() + sample.astype("<i8").tobytes())
    return path


def _f64(x: float) -> str:
    return f"0x{struct.unpack('<Q', struct.pack('<d', x))[0]:016x}"


def _expected(part: str, m: metrics.Metrics) -> dict[str, str]:
    out = {}
    for field, value in m.as_dict().items():
        if isinstance(value, dict):
            out.update({f"{part} {field}.{k}": str(v) if k == "count" else _f64(v) for k, v in value.items()})
        else:
            out[f"{part} {field}"] = str(value) if isinstance(value, int) else _f64(value)
    return out


def _from_bits(values) -> np.ndarray:
    return np.asarray(values, np.uint32).view(np.float32)


def _populations():
    """(name, weights, labels, eps) of the adversarial cases."""
    rng = np.random.default_rng(2024)
    n = 4001
    half = (np.arange(n) % 2 == 0).astype(np.uint8)
    random_labels = rng.integers(0, 2, n).astype(np.uint8)
    finite_bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    finite_bits[(finite_bits & 0x7F800000) == 0x7F800000] &= 0xBFFFFFFF  # no inf/NaN
    subnormal = _from_bits(rng.integers(0, 0x00800000, n, dtype=np.uint32))
    subnormal[::7] = 0.0
    subnormal[1::11] = -0.0
    nan_weights = rng.random(n, dtype=np.float32)
    nan_weights[17] = np.nan
    negative_nan = rng.random(n, dtype=np.float32)
    negative_nan[3] = _from_bits([0xFFC00001])[0]
    infinite = rng.random(n, dtype=np.float32)
    infinite[[5, 8]] = [np.inf, -np.inf]
    return [
        ("uniform", rng.random(n, dtype=np.float32), random_labels, metrics.DEFAULT_EPS),
        ("reference", rng.random(n, dtype=np.float32), half, 0.1),
        ("ties", rng.choice(np.float32([0, 0.25, 0.5, 0.98, 1]), n), random_labels, metrics.DEFAULT_EPS),
        ("all_equal", np.full(n, 0.375, np.float32), random_labels, metrics.DEFAULT_EPS),
        ("empty_p", rng.random(n, dtype=np.float32), np.ones(n, np.uint8), metrics.DEFAULT_EPS),
        ("empty_r", rng.random(n, dtype=np.float32), np.zeros(n, np.uint8), 0.0),
        ("one_each", np.float32([0.3, 0.3]), np.uint8([1, 0]), 0.49),
        ("single", np.float32([0.7]), np.uint8([1]), metrics.DEFAULT_EPS),
        ("empty", np.zeros(0, np.float32), np.zeros(0, np.uint8), metrics.DEFAULT_EPS),
        ("nan", nan_weights, random_labels, metrics.DEFAULT_EPS),
        ("negative_nan", negative_nan, half, metrics.DEFAULT_EPS),
        ("infinite", infinite, random_labels, metrics.DEFAULT_EPS),
        ("subnormal", subnormal, random_labels, metrics.DEFAULT_EPS),
        ("any_finite_bits", _from_bits(finite_bits), random_labels, metrics.DEFAULT_EPS),
        # r - p halfway between two float64 (ties to even, up and down) or just past it
        ("tie_up", np.float32([1 + 2**-23, -3 * 2**-53]), np.uint8([1, 0]), metrics.DEFAULT_EPS),
        ("tie_down", np.float32([1, -2**-53]), np.uint8([1, 0]), metrics.DEFAULT_EPS),
        ("past_tie", np.float32([1, -(2**-53 + 2**-60)]), np.uint8([1, 0]), metrics.DEFAULT_EPS),
        ("wide_range", (rng.standard_normal(n) * 1e3).astype(np.float32), half, 0.3),
    ]


@pytest.mark.parametrize("name, w, labels, eps", _populations(), ids=[p[0] for p in _populations()])
def test_metrics_equal_python_to_the_bit(driver, tmp_path, name, w, labels, eps):
    rng = np.random.default_rng(len(name))
    sample = rng.integers(0, w.size, 777) if w.size else np.zeros(0, np.int64)
    out = run([driver, "metrics", _input_file(tmp_path / "in.bin", w, labels, eps=eps, sample=sample)])
    got = dict(line.rsplit(" ", 1) for line in out.splitlines())
    bk = nap.backends.get("numpy")
    want = _expected("full", metrics.compute(w, labels, bk, eps=eps))
    want |= _expected("sample", metrics.compute(w[sample], labels[sample], bk, eps=eps))
    want["pair ratio"] = _f64(metrics.inversion_ratio(w[labels == 1], w[labels == 0]))
    assert got == want


# -- snapshots ----------------------------------------------------------------------------------

def _trained(n: int) -> tuple[np.ndarray, nap.Params, int]:
    params = nap.Params(lr=0.06, gate=0.55, decay=0.005)
    eng = nap.Engine(n, backend="numpy", seed=3, params=params)
    work = nap.ReferenceWorkload(n, seed=3)
    for _ in range(4):
        eng.step(work.next_quality())
    w = eng.to_numpy().copy()
    w[:4] = [0.0, 1.0, _from_bits([1])[0], 0.5]
    return w, params, eng.iteration


@pytest.mark.parametrize("n", [4, 1000, 2_500_001])  # the last: several 4 MiB chunks
def test_cpp_written_snapshot_loads_in_python(driver, tmp_path, n):
    w, params, iteration = _trained(n)
    path = tmp_path / "cpp.nap"
    run([driver, "write", path, _input_file(tmp_path / "in.bin", w, np.zeros(n, np.uint8), params=params,
                                            iteration=iteration, sequence=31)])
    eng = nap.load(path, backend="numpy")
    assert np.array_equal(bits(eng.to_numpy()), bits(w))
    assert eng.params == params and eng.iteration == iteration
    info = snapshot.inspect(path)
    assert info.checksum_ok and info.checksum.startswith("crc32c:") and info.format_version == 2
    assert info.sequence == 31 and info.backend == "cpp" and info.n == n
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("n", [1000, 2_500_001])
def test_python_written_snapshot_reads_in_cpp(driver, tmp_path, n):
    w, params, iteration = _trained(n)
    path = snapshot.write(tmp_path / "py.nap", w, params, iteration=iteration, sequence=8)
    out = run([driver, "read", path, tmp_path / "w.bin"]).split()
    assert np.array_equal(np.fromfile(tmp_path / "w.bin", "<u4"), bits(w))
    lr, gate, decay = (f"{int(v.view(np.uint32)):08x}" for v in params.float32())
    assert out == [str(iteration), "8", lr, gate, decay, snapshot.inspect(path).checksum]


def test_escaped_metadata_checks_as_python_forms_it(driver, tmp_path):
    """The checksum covers the metadata's canonical JSON: quotes, backslashes, control
    characters and non-ASCII text (escaped \\uxxxx, pairs above U+FFFF) must come out of the
    C++ reader's JSON writer byte for byte as Python's."""
    w, params, iteration = _trained(16)
    path = snapshot.write(tmp_path / "odd.nap", w, params, iteration=iteration,
                          backend='n\u00fcm"py\\ \t\u0001\u007f', version="\u00e9\U0001f600\ud800")
    out = run([driver, "read", path, tmp_path / "w.bin"]).split()
    assert out[-1] == snapshot.inspect(path).checksum
    assert np.array_equal(np.fromfile(tmp_path / "w.bin", "<u4"), bits(w))


def _python_error(path) -> str:
    with pytest.raises(snapshot.SnapshotError) as err:
        snapshot.read(path)
    return str(err.value)


@pytest.mark.parametrize("fault", ["weight", "metadata", "truncated", "extended", "version"])
def test_damaged_snapshots_refused_as_python_refuses_them(driver, tmp_path, fault):
    w, params, iteration = _trained(1000)
    path = snapshot.write(tmp_path / "bad.nap", w, params, iteration=iteration, sequence=8)
    data = bytearray(path.read_bytes())
    if fault == "weight":
        data[-123] ^= 0x40
    elif fault == "metadata":
        at = data.index(b'"sequence":"8"') + 12
        data[at] = ord("9")
    elif fault == "truncated":
        del data[-3:]
    elif fault == "extended":
        data += b"\0\0\0\0"
    else:
        at = data.index(b'"format_version":"2"') + 18
        data[at] = ord("7")
    path.write_bytes(bytes(data))
    proc = subprocess.run([str(driver), "read", str(path), str(tmp_path / "w.bin")],
                          stdout=subprocess.PIPE, text=True, timeout=TIMEOUT)
    assert proc.returncode == 3, proc.stdout
    message = proc.stdout.strip().removeprefix("SnapshotError: ")
    expected = _python_error(path)
    if fault == "version":  # the same fault; the advice names the reader that failed
        assert message.split(": upgrade")[0] == expected.split(": upgrade")[0].replace(
            "this nap_gpu reads", "this reader reads")
    else:
        assert message == expected


# -- the docs' example (docs/cpp.md) ----------------------------------------------------------

def test_the_docs_example_builds_and_runs(installed, tmp_path):
    """The host service of docs/cpp.md, run twice (the second run resumes from the first's
    snapshot): its weights are Python's replay of the same events, its metrics Python's."""
    page = (REPO / "docs" / "cpp.md").read_text()
    example = page.split("```cpp\n", 1)[1].split("```", 1)[0]
    exe = build_consumer(installed, tmp_path / "example", example)
    work = tmp_path / "run"
    work.mkdir()
    outputs = [run([exe], cwd=work) for _ in range(2)]
    n = 10000
    w = np.full(n, 0.5, np.float32)
    labels = (np.arange(n) % 2 == 0).astype(np.uint8)
    quality = np.where(labels == 1, np.float32(0.8), np.float32(0.2)).astype(np.float32)
    for out in outputs:
        nap.update(w, np.array([3, 3, 7, 8], np.int64), np.float32([0.9, 0.1, 0.8, 0.2]),
                   backend="numpy")
        nap.step(w, quality, backend="numpy")
        fields = out.split()
        got = dict(zip(fields[::2], fields[1::2]))
        m = metrics.compute(w, labels, nap.backends.get("numpy"))
        sample = metrics.compute(w[::7], labels[::7], nap.backends.get("numpy"))
        assert float(got["separation"]) == m.separation
        assert float(got["inversion_ratio"]) == m.inversion_ratio
        assert float(got["saturation"]) == m.saturation and got["nonfinite"] == "0"
        assert float(got["sampled_inversion_ratio"]) == sample.inversion_ratio
        assert not math.isnan(sample.inversion_ratio)
    eng = nap.load(work / "population.nap", backend="numpy")
    assert eng.iteration == 2 and got["iteration"] == "2"
    assert np.array_equal(bits(eng.to_numpy()), bits(w))
