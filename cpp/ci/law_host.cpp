// A host service's own loops over the law header, compiled by cross_checks.sh with a plain
// compiler command line (no CMake target): prints every weight's bits, one per line, so two
// builds (e.g. aarch64 under qemu and x86-64) can be compared bit for bit. The inputs are
// made with integer arithmetic and single divisions, which no compiler can contract.
#include <cstdio>
#include <vector>

#include "nap/law.h"

int main() {
  const long n = 1L << 18;
  std::vector<float> w(n), q(n), lr(n);
  unsigned s = 12345u;
  auto next = [&s] { return (s = s * 1664525u + 1013904223u) >> 8; };
  for (long i = 0; i < n; ++i) {
    w[i] = static_cast<float>(next()) / 16777216.0f;
    q[i] = static_cast<float>(static_cast<int>(next() % 14000001u) - 2000000) / 1e7f;
    lr[i] = static_cast<float>(next() % 300001u) / 1e6f;
  }
  const nap::Params p;
  for (long i = 0; i < n; ++i) w[i] = nap::step(w[i], q[i], p);
  // A quality known to reinforce: each product feeds one sum, the easiest case to fuse.
  for (long i = 0; i < n; ++i) w[i] = nap::feedback(w[i], 0.875f, lr[i], p.gate);
  for (long i = 0; i < n; ++i) std::printf("%08x\n", nap::bits_of(w[i]));
  return 0;
}
