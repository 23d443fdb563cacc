/// \file snapshot.h
/// \brief Snapshots (docs/snapshots.md) from C++: the files nap_gpu's Python side writes and
/// loads (nap_gpu/snapshot.py), read and written with the same checks.
///
/// A snapshot is a safetensors file: an 8-byte little-endian header length, a JSON header
/// (padded with spaces so the weights start on a 64-byte boundary), then n little-endian
/// float32 weights. The header's "__metadata__" holds strings only: format "nap-snapshot",
/// format_version, n, lr/gate/decay as float32 bit patterns ("0x3d4ccccd"), iteration,
/// sequence, backend, nap_gpu_version, created and the checksum: the CRC of the weights'
/// bytes continued over the other metadata as canonical JSON (sorted keys, no spaces, ASCII),
/// "crc32c:xxxxxxxx" (CRC-32C, format version 2) or "crc32:xxxxxxxx" (zlib's CRC-32, version 1).
#pragma once

#include <cstddef>  // for std::size_t
#include <cstdint>  // for std::uint32_t, std::uint64_t
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "nap/law.h"  // for nap::Params

namespace nap {

/// The snapshot format version written (read: 1 and 2).
constexpr int kSnapshotFormatVersion = 2;

/// A file that is not a usable snapshot; the message names the file and what is wrong where
/// (Python's nap_gpu.SnapshotError, with the same wording).
class SnapshotError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One population as a snapshot holds it.
struct Snapshot {
  std::vector<float> weights;  ///< every one in [0, 1]; -0.0 is read as +0.0
  Params params;
  std::uint64_t iteration = 0;  ///< the population's dense steps
  std::uint64_t sequence = 0;   ///< the write-ahead log's sequence number covered (0: no log)
  int format_version = kSnapshotFormatVersion;
  std::map<std::string, std::string> metadata;  ///< every "__metadata__" entry, as stored (UTF-8)
};

/// Reads and verifies a snapshot, as nap_gpu.snapshot.read does: header length, JSON, format
/// name, a version this code reads (<= 2), metadata (integers in decimal, parameters as
/// float32 bit patterns in [0, 1]), dtype F32 and shape [n], the data offsets against the
/// file's size, the checksum over every weight byte and the metadata, then that every weight
/// lies in [0, 1] (a checksum fault is reported first: the bytes are not the ones written).
/// Throws SnapshotError for each fault, and also when the file cannot be opened. Stricter than
/// Python in two places no nap writer reaches: metadata values must be JSON strings, and
/// integers plain decimal digits.
Snapshot read_snapshot(const std::string& path);

/// Writes weights w[0..n) and their metadata to path (format version 2, backend "cpp"),
/// atomically and durably: a temporary file in the same directory, flushed and synced, renamed
/// over path, then the directory synced (POSIX). A crash leaves the old file or the new one.
/// Throws std::invalid_argument for parameters outside [0, 1] (Python's Params refuses them
/// too), std::system_error when the file cannot be written (the temporary file is removed and
/// a previous file at path is untouched).
void write_snapshot(const std::string& path, const float* w, std::size_t n, const Params& params,
                    std::uint64_t iteration = 0, std::uint64_t sequence = 0);

/// zlib's CRC-32 of data[0..n), continuing crc (0 to start): zlib.crc32(data, crc).
std::uint32_t crc32(const void* data, std::size_t n, std::uint32_t crc = 0);
/// CRC-32C (Castagnoli) of data[0..n), continuing crc: crc32c.crc32c(data, value=crc).
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

}  // namespace nap
