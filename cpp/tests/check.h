/// \file check.h
/// \brief The ctest programs' one assertion: CHECK(cond, printf-style message) counts the check,
/// and on failure counts it failed and prints where and why; the program goes on, and main
/// reports both counts and exits non-zero when any failed.
#pragma once

#include <cstdio>

namespace nap_test {
inline int failures = 0;
inline int checks = 0;
}  // namespace nap_test

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    ++nap_test::checks;                                                      \
    if (!(cond)) {                                                           \
      ++nap_test::failures;                                                  \
      std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                     \
      std::fprintf(stderr, "\n");                                            \
    }                                                                        \
  } while (0)
