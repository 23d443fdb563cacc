/// \file snapshot.cpp
/// \brief nap/snapshot.h: the byte layout and checks of nap_gpu/snapshot.py, without
/// third-party code (a JSON reader for the header, table-driven CRCs).
#if defined(_WIN32)
#define _CRT_SECURE_NO_WARNINGS  // fopen and strerror are the portable calls here
#endif
#include "nap/snapshot.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <system_error>
#include <utility>

#if defined(_WIN32)
#define NOMINMAX                 // windows.h must not define min and max
#define WIN32_LEAN_AND_MEAN
#include <io.h>       // for _commit, _fileno
#include <process.h>  // for _getpid
#include <windows.h>  // for MoveFileExA
#else
#include <fcntl.h>   // for open
#include <unistd.h>  // for fsync, getpid, close
#endif

namespace nap {
namespace {

constexpr const char* kFormat = "nap-snapshot";
constexpr std::uint64_t kMaxHeader = std::uint64_t{1} << 20;
constexpr std::size_t kAlign = 64;        // the weights start on a 64-byte boundary
constexpr std::size_t kChunk = 1u << 20;  // weights per read/write step (4 MiB)

// -- CRCs: slicing-by-8 tables of the reflected polynomials -----------------------------------

struct CrcTable {
  std::uint32_t t[8][256];
  explicit CrcTable(std::uint32_t poly) {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ poly : c >> 1;
      t[0][i] = c;
    }
    for (int s = 1; s < 8; ++s) {
      for (int i = 0; i < 256; ++i) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
    }
  }
  std::uint32_t update(std::uint32_t crc, const unsigned char* p, std::size_t n) const {
    crc = ~crc;
    for (; n >= 8; p += 8, n -= 8) {
      const std::uint32_t a = crc ^ (p[0] | p[1] << 8 | p[2] << 16 | std::uint32_t{p[3]} << 24);
      const std::uint32_t b = p[4] | p[5] << 8 | p[6] << 16 | std::uint32_t{p[7]} << 24;
      crc = t[7][a & 0xFFu] ^ t[6][(a >> 8) & 0xFFu] ^ t[5][(a >> 16) & 0xFFu] ^ t[4][a >> 24] ^
            t[3][b & 0xFFu] ^ t[2][(b >> 8) & 0xFFu] ^ t[1][(b >> 16) & 0xFFu] ^ t[0][b >> 24];
    }
    for (; n > 0; ++p, --n) crc = t[0][(crc ^ *p) & 0xFFu] ^ (crc >> 8);
    return ~crc;
  }
};

const CrcTable& crc32_table() {
  static const CrcTable table(0xEDB88320u);
  return table;
}
const CrcTable& crc32c_table() {
  static const CrcTable table(0x82F63B78u);
  return table;
}

// -- JSON: the subset a header needs (any value parsed; strings kept as UTF-8) ----------------

struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  std::string text;  // a string's UTF-8, a number's literal
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;

  /// The member named key (the last one, as Python's dict keeps), or nullptr.
  const Json* find(const std::string& key) const {
    for (auto it = members.rbegin(); it != members.rend(); ++it) {
      if (it->first == key) return &it->second;
    }
    return nullptr;
  }
};

void append_utf8(std::string* out, std::uint32_t cp) {  // lone surrogates too (as Python keeps)
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// The code point at s[*i] (UTF-8, surrogates allowed: append_utf8's output), advancing *i;
/// 0xFFFFFFFF for a malformed sequence.
std::uint32_t next_code_point(const std::string& s, std::size_t* i) {
  const unsigned char lead = static_cast<unsigned char>(s[(*i)++]);
  if (lead < 0x80) return lead;
  const int extra = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : -1;
  if (extra < 0 || lead > 0xF4 || *i + extra > s.size()) return 0xFFFFFFFFu;
  std::uint32_t cp = lead & (0x3Fu >> extra);
  for (int k = 0; k < extra; ++k) {
    const unsigned char c = static_cast<unsigned char>(s[(*i)++]);
    if ((c & 0xC0) != 0x80) return 0xFFFFFFFFu;
    cp = cp << 6 | (c & 0x3Fu);
  }
  static const std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
  return cp < kMin[extra] || cp > 0x10FFFF ? 0xFFFFFFFFu : cp;  // no overlong forms
}

int hex_digit(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
       : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}

  Json document() {
    Json v = value();
    skip_space();
    if (i_ != s_.size()) fail("extra data");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw std::runtime_error(std::string(what) + " at header byte " + std::to_string(i_));
  }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool take(char c) {
    skip_space();
    if (i_ < s_.size() && s_[i_] == c) return ++i_, true;
    return false;
  }
  void expect(char c) {
    if (!take(c)) fail(("expected '" + std::string(1, c) + "'").c_str());
  }
  bool literal(const char* word) {
    const std::size_t len = std::strlen(word);
    if (s_.compare(i_, len, word) != 0) return false;
    i_ += len;
    return true;
  }

  Json value() {
    skip_space();
    if (i_ >= s_.size()) fail("unexpected end");
    Json v;
    const char c = s_[i_];
    if (c == '{') return object();
    if (c == '[') return array();
    if (c == '"') {
      v.kind = Json::kString;
      v.text = string();
    } else if (literal("true") || literal("false")) {
      v.kind = Json::kBool;
    } else if (!literal("null")) {
      return number();
    }
    return v;
  }
  Json object() {
    Json v;
    v.kind = Json::kObject;
    expect('{');
    if (take('}')) return v;
    do {
      skip_space();
      if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string key");
      std::string key = string();
      expect(':');
      v.members.emplace_back(std::move(key), value());
    } while (take(','));
    expect('}');
    return v;
  }
  Json array() {
    Json v;
    v.kind = Json::kArray;
    expect('[');
    if (take(']')) return v;
    do v.items.push_back(value());
    while (take(','));
    expect(']');
    return v;
  }
  Json number() {  // -?int frac? exp? (Python's NaN/Infinity are not snapshot values)
    const std::size_t start = i_;
    auto digits = [&] {
      const std::size_t from = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ > from;
    };
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (!digits()) fail("expected a value");
    if (i_ < s_.size() && s_[i_] == '.' && (++i_, !digits())) fail("bad number");
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digits()) fail("bad number");
    }
    Json v;
    v.kind = Json::kNumber;
    v.text = s_.substr(start, i_ - start);
    return v;
  }
  std::uint32_t hex4() {
    if (i_ + 4 > s_.size()) fail("bad \\u escape");
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const int d = hex_digit(s_[i_++]);
      if (d < 0) fail("bad \\u escape");
      v = v << 4 | static_cast<std::uint32_t>(d);
    }
    return v;
  }
  std::uint32_t escape() {
    const char c = i_ < s_.size() ? s_[i_++] : '\0';
    switch (c) {
      case '"': return '"';
      case '\\': return '\\';
      case '/': return '/';
      case 'b': return '\b';
      case 'f': return '\f';
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case 'u': break;
      default: fail("bad escape");
    }
    const std::uint32_t cp = hex4();
    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(i_, 2, "\\u") == 0) {  // a surrogate pair?
      const std::size_t back = i_;
      i_ += 2;
      const std::uint32_t low = hex4();
      if (low >= 0xDC00 && low < 0xE000) return 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
      i_ = back;  // a lone high surrogate, kept as Python keeps it
    }
    return cp;
  }
  std::string string() {
    std::string out;
    ++i_;  // the opening quote
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') return ++i_, out;
      if (c < 0x20) fail("control character in a string");
      if (c == '\\') {
        ++i_;
        append_utf8(&out, escape());
      } else if (c < 0x80) {
        out += s_[i_++];
      } else {
        const std::size_t from = i_;
        const std::uint32_t cp = next_code_point(s_, &i_);
        if (cp == 0xFFFFFFFFu || (cp >= 0xD800 && cp < 0xE000)) fail("invalid UTF-8");
        out.append(s_, from, i_ - from);
      }
    }
  }

  const std::string& s_;
  std::size_t i_ = 0;
};

/// A string as Python's json.dumps writes it (ensure_ascii): quotes, backslashes and
/// control characters escaped, every code point outside ' '..'~' as \uxxxx (pairs above
/// 0xFFFF). The checksum covers these bytes, so they must be Python's to the byte.
void append_json_string(std::string* out, const std::string& s) {
  static const char kHex[] = "0123456789abcdef";
  auto u4 = [&](std::uint32_t v) {
    *out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) *out += kHex[(v >> shift) & 0xF];
  };
  *out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const std::uint32_t cp = next_code_point(s, &i);
    switch (cp) {
      case '"': *out += "\\\""; continue;
      case '\\': *out += "\\\\"; continue;
      case '\b': *out += "\\b"; continue;
      case '\f': *out += "\\f"; continue;
      case '\n': *out += "\\n"; continue;
      case '\r': *out += "\\r"; continue;
      case '\t': *out += "\\t"; continue;
      default: break;
    }
    if (cp >= 0x20 && cp < 0x7F) {
      *out += static_cast<char>(cp);
    } else if (cp < 0x10000) {
      u4(cp);
    } else {
      u4(0xD800 + ((cp - 0x10000) >> 10));
      u4(0xDC00 + ((cp - 0x10000) & 0x3FF));
    }
  }
  *out += '"';
}

/// json.dumps(metadata without "checksum", sort_keys=True, separators=(",", ":")): std::map
/// orders UTF-8 keys bytewise, which is Python's code-point order.
std::string canonical_json(const std::map<std::string, std::string>& metadata) {
  std::string out = "{";
  for (const auto& kv : metadata) {
    if (kv.first == "checksum") continue;
    if (out.size() > 1) out += ',';
    append_json_string(&out, kv.first);
    out += ':';
    append_json_string(&out, kv.second);
  }
  return out + "}";
}

std::string hex8(std::uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(v));
  return buf;
}

/// The checksum text: the weights' CRC continued over the canonical metadata.
std::string seal(bool crc32c_name, std::uint32_t weights_crc,
                 const std::map<std::string, std::string>& metadata) {
  const std::string text = canonical_json(metadata);
  return crc32c_name ? "crc32c:" + hex8(crc32c(text.data(), text.size(), weights_crc))
                     : "crc32:" + hex8(crc32(text.data(), text.size(), weights_crc));
}

// -- Little-endian weights on any host ---------------------------------------------------------

bool little_endian_host() {
  const std::uint32_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

void swap_bytes(float* w, std::size_t n) {  // big-endian hosts only
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b = bits_of(w[i]);
    w[i] = float_of_bits((b >> 24) | ((b >> 8) & 0xFF00u) | ((b << 8) & 0xFF0000u) | (b << 24));
  }
}

// -- Reading -----------------------------------------------------------------------------------

std::string float_text(float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(x));
  return buf;
}

/// Plain decimal digits as an unsigned 64-bit integer (throws std::runtime_error otherwise).
std::uint64_t decimal(const std::string& text, const char* what) {
  std::uint64_t v = 0;
  bool ok = !text.empty() && text.size() <= 20;
  for (const char c : text) {
    ok = ok && c >= '0' && c <= '9' && v <= (UINT64_MAX - (c - '0')) / 10;
    if (ok) v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  if (!ok) throw std::runtime_error(std::string(what) + " = '" + text + "' is not a non-negative integer");
  return v;
}

/// A float32 parameter from its bit pattern in hex ("0x3d4ccccd"), checked as Params does.
float parameter(const std::string& text, const char* name) {
  std::size_t i = text.compare(0, 2, "0x") == 0 || text.compare(0, 2, "0X") == 0 ? 2 : 0;
  std::uint64_t v = 0;
  bool ok = i < text.size();
  for (; i < text.size() && ok; ++i) {
    const int d = hex_digit(text[i]);
    ok = d >= 0 && v <= 0x0FFFFFFFu;
    v = v << 4 | static_cast<std::uint64_t>(d & 0xF);
  }
  const float x = float_of_bits(static_cast<std::uint32_t>(v));
  if (!ok || !(x >= 0.0f && x <= 1.0f)) {  // NaN fails too
    throw std::runtime_error(std::string("Params.") + name + " = '" + text +
                             "' is not a float32 bit pattern in [0, 1]");
  }
  return x + 0.0f;  // -0.0 -> +0.0, as Params
}

struct Header {
  std::uint64_t length = 0, n = 0, data_offset = 0;
  Snapshot snap;  // all but the weights
};

std::string where(const Header& h) { return "(bytes 8.." + std::to_string(8 + h.length) + ")"; }

const std::string& meta_entry(const std::map<std::string, std::string>& meta, const char* key) {
  const auto it = meta.find(key);
  if (it == meta.end()) throw std::runtime_error(std::string("no '") + key + "' entry");
  return it->second;
}

std::map<std::string, std::string> string_entries(const Json& meta) {
  std::map<std::string, std::string> out;
  for (const auto& kv : meta.members) {
    if (kv.second.kind != Json::kString) {
      throw std::runtime_error("metadata entry '" + kv.first + "' is not a string");
    }
    out[kv.first] = kv.second.text;  // a repeated key: the last one, as Python
  }
  return out;
}

/// The metadata's values (Python's _header, from the format check on).
void read_metadata(const std::string& path, const Json& meta, Header* h) {
  const Json* format = meta.find("format");
  if (!format || format->kind != Json::kString || format->text != kFormat) {
    throw SnapshotError(path + ": not a nap snapshot (format " +
                        (format && format->kind == Json::kString ? "'" + format->text + "'" : "missing") + ")");
  }
  try {
    Snapshot& s = h->snap;
    s.metadata = string_entries(meta);
    const std::uint64_t version = decimal(meta_entry(s.metadata, "format_version"), "format_version");
    if (version > kSnapshotFormatVersion) {
      throw SnapshotError(path + ": written in snapshot format version " + std::to_string(version) +
                          "; this reader reads versions up to " +
                          std::to_string(kSnapshotFormatVersion) + ": upgrade nap (the file was "
                          "written by nap_gpu " + meta_entry(s.metadata, "nap_gpu_version") + ")");
    }
    s.format_version = static_cast<int>(version);
    h->n = decimal(meta_entry(s.metadata, "n"), "n");
    s.params.lr = parameter(meta_entry(s.metadata, "lr"), "lr");
    s.params.gate = parameter(meta_entry(s.metadata, "gate"), "gate");
    s.params.decay = parameter(meta_entry(s.metadata, "decay"), "decay");
    s.iteration = decimal(meta_entry(s.metadata, "iteration"), "iteration");
    s.sequence = decimal(meta_entry(s.metadata, "sequence"), "sequence");
    for (const char* key : {"backend", "nap_gpu_version", "created", "checksum"}) meta_entry(s.metadata, key);
  } catch (const SnapshotError&) {
    throw;
  } catch (const std::exception& e) {
    throw SnapshotError(path + ": bad metadata in the header " + where(*h) + ": " + e.what());
  }
}

std::string json_text(const Json* v) {  // a short rendering for messages
  if (!v) return "missing";
  if (v->kind == Json::kString) return "'" + v->text + "'";
  if (v->kind == Json::kNumber) return v->text;
  if (v->kind == Json::kArray) {
    std::string out = "[";
    for (const Json& item : v->items) out += (out.size() > 1 ? ", " : "") + json_text(&item);
    return out + "]";
  }
  return "?";
}

/// An array of exactly `count` plain integers, or false.
bool integers(const Json* v, std::size_t count, std::uint64_t* out) {
  if (!v || v->kind != Json::kArray || v->items.size() != count) return false;
  try {
    for (std::size_t i = 0; i < count; ++i) {
      if (v->items[i].kind != Json::kNumber) return false;
      out[i] = decimal(v->items[i].text, "value");
    }
  } catch (const std::runtime_error&) {
    return false;
  }
  return true;
}

/// The tensor entry: dtype F32, shape [n], offsets spanning 4n bytes; then the file's size.
void read_tensor(const std::string& path, const Json& tensor, std::uint64_t size, Header* h) {
  const Json* dtype = tensor.kind == Json::kObject ? tensor.find("dtype") : nullptr;
  const Json* shape = tensor.kind == Json::kObject ? tensor.find("shape") : nullptr;
  const Json* offsets = tensor.kind == Json::kObject ? tensor.find("data_offsets") : nullptr;
  std::uint64_t dims[1] = {0}, span[2] = {0, 0};
  if (!integers(offsets, 2, span) || span[1] < span[0]) {
    throw SnapshotError(path + ": bad metadata in the header " + where(*h) +
                        ": data_offsets " + json_text(offsets) + " are not two integers");
  }
  const bool f32 = dtype && dtype->kind == Json::kString && dtype->text == "F32";
  if (!f32 || !integers(shape, 1, dims) || dims[0] != h->n || span[1] - span[0] != 4 * h->n ||
      h->n > (UINT64_MAX >> 3)) {
    throw SnapshotError(path + ": the weights are not " + std::to_string(h->n) +
                        " float32 values (dtype " + json_text(dtype) + ", shape " +
                        json_text(shape) + ")");
  }
  h->data_offset = 8 + h->length + span[0];
  if (span[0] > size || h->data_offset + 4 * h->n != size) {
    throw SnapshotError(path + ": file is " + std::to_string(size) + " bytes, expected " +
                        std::to_string(h->data_offset + 4 * h->n) + " (truncated or extended)");
  }
}

Header read_header(const std::string& path, std::ifstream& in, std::uint64_t size) {
  Header h;
  unsigned char prefix[8];
  if (size < 8 || !in.read(reinterpret_cast<char*>(prefix), 8)) {
    throw SnapshotError(path + ": too short to be a snapshot (" + std::to_string(size) + " bytes)");
  }
  for (int k = 7; k >= 0; --k) h.length = h.length << 8 | prefix[k];
  if (h.length > std::min(kMaxHeader, size - 8)) {
    throw SnapshotError(path + ": not a nap snapshot (header length " + std::to_string(h.length) +
                        " at byte 0 does not fit the file's " + std::to_string(size) + " bytes)");
  }
  std::string text(static_cast<std::size_t>(h.length), '\0');
  in.read(&text[0], static_cast<std::streamsize>(h.length));
  Json header;
  try {
    header = Parser(text).document();
    if (header.kind != Json::kObject) throw std::runtime_error("the header is not an object");
    if (!header.find("__metadata__") || header.find("__metadata__")->kind != Json::kObject) {
      throw std::runtime_error("no '__metadata__' object");
    }
    if (!header.find("weights")) throw std::runtime_error("no 'weights' entry");
  } catch (const std::runtime_error& e) {
    throw SnapshotError(path + ": unreadable header " + where(h) + ": " + e.what());
  }
  read_metadata(path, *header.find("__metadata__"), &h);
  read_tensor(path, *header.find("weights"), size, &h);
  return h;
}

/// Reads the weights in chunks, the checksum carried over the file's bytes as they come.
std::uint32_t read_weights(const std::string& path, std::ifstream& in, const Header& h,
                           bool crc32c_name, std::vector<float>* w) {
  w->resize(static_cast<std::size_t>(h.n));
  in.seekg(static_cast<std::streamoff>(h.data_offset));
  std::uint32_t crc = 0;
  for (std::size_t lo = 0; lo < w->size(); lo += kChunk) {
    const std::size_t count = std::min(kChunk, w->size() - lo);
    char* bytes = reinterpret_cast<char*>(w->data() + lo);
    if (!in.read(bytes, static_cast<std::streamsize>(4 * count))) {
      throw SnapshotError(path + ": truncated at byte " +
                          std::to_string(h.data_offset + 4 * lo + static_cast<std::uint64_t>(in.gcount())) +
                          ", expected " + std::to_string(h.data_offset + 4 * h.n) + " bytes");
    }
    crc = crc32c_name ? crc32c(bytes, 4 * count, crc) : crc32(bytes, 4 * count, crc);
  }
  if (!little_endian_host()) swap_bytes(w->data(), w->size());
  return crc;
}

/// The first weight outside [0, 1] (NaN included) as an error; -0.0 becomes +0.0.
void check_range(const std::string& path, std::vector<float>* w) {
  for (std::size_t i = 0; i < w->size(); ++i) {
    float& x = (*w)[i];
    if (!(x >= 0.0f && x <= 1.0f)) {
      throw SnapshotError(path + ": weight " + std::to_string(i) + " = " + float_text(x) +
                          " is not in [0, 1]");
    }
    x = x + 0.0f;
  }
}

// -- Writing -----------------------------------------------------------------------------------

[[noreturn]] void system_failure(const std::string& path, const char* what, int err,
                                 const std::error_category& category = std::generic_category()) {
  throw std::system_error(err, category, "nap::write_snapshot: " + path + ": " + what);
}

void check_parameter(float x, const char* name) {
  if (!(x >= 0.0f && x <= 1.0f)) {
    throw std::invalid_argument(std::string("nap::write_snapshot: Params.") + name + " = " +
                                float_text(x) + " must lie in [0, 1]");
  }
}

std::string utc_now() {  // ISO 8601 to the second, as Python's isoformat(timespec="seconds")
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
#if defined(_WIN32)
  gmtime_s(&tm, &t);
#else
  gmtime_r(&t, &tm);
#endif
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
  return buf;
}

/// The 8-byte length and the JSON header, padded with spaces so the weights start aligned;
/// the metadata in the order Python writes it.
std::string header_bytes(const std::vector<std::pair<std::string, std::string>>& meta, std::size_t n) {
  std::string json = "{\"weights\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(n) +
                     "],\"data_offsets\":[0," + std::to_string(4 * static_cast<std::uint64_t>(n)) +
                     "]},\"__metadata__\":{";
  for (std::size_t i = 0; i < meta.size(); ++i) {
    if (i) json += ',';
    append_json_string(&json, meta[i].first);
    json += ':';
    append_json_string(&json, meta[i].second);
  }
  json += "}}";
  json.append((kAlign - (8 + json.size()) % kAlign) % kAlign, ' ');
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>((static_cast<std::uint64_t>(json.size()) >> (8 * k)) & 0xFF);
  return out + json;
}

/// The weights' little-endian bytes, chunk by chunk, each passed to sink(bytes, count).
template <class Sink>
void weight_bytes(const float* w, std::size_t n, Sink sink) {
  if (little_endian_host()) {
    for (std::size_t lo = 0; lo < n; lo += kChunk) sink(reinterpret_cast<const char*>(w + lo), 4 * std::min(kChunk, n - lo));
    return;
  }
  std::vector<float> buffer;
  for (std::size_t lo = 0; lo < n; lo += kChunk) {
    buffer.assign(w + lo, w + lo + std::min(kChunk, n - lo));
    swap_bytes(buffer.data(), buffer.size());
    sink(reinterpret_cast<const char*>(buffer.data()), 4 * buffer.size());
  }
}

std::string directory_of(const std::string& path) {
  const std::size_t slash = path.find_last_of("/\\");
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

std::string temporary_name(const std::string& path) {
  const std::size_t slash = path.find_last_of("/\\");
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
#if defined(_WIN32)
  const long pid = _getpid();
#else
  const long pid = static_cast<long>(getpid());
#endif
  return dir + "." + name + ".tmp-" + std::to_string(pid);
}

/// Writes the file's bytes to tmp and syncs them; the checksum is patched into the
/// fixed-width header field once the weights are written (the header keeps its length).
void write_file(const std::string& tmp, const float* w, std::size_t n,
                std::vector<std::pair<std::string, std::string>> meta) {
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) system_failure(tmp, "cannot create the temporary file", errno);
  std::map<std::string, std::string> sorted(meta.begin(), meta.end());
  meta.emplace_back("checksum", seal(true, 0, sorted));
  const std::string placeholder = header_bytes(meta, n);
  bool ok = std::fwrite(placeholder.data(), 1, placeholder.size(), f) == placeholder.size();
  std::uint32_t crc = 0;
  weight_bytes(w, n, [&](const char* bytes, std::size_t count) {
    crc = crc32c(bytes, count, crc);
    ok = ok && std::fwrite(bytes, 1, count, f) == count;
  });
  meta.back().second = seal(true, crc, sorted);
  const std::string header = header_bytes(meta, n);
  ok = ok && header.size() == placeholder.size() && std::fseek(f, 0, SEEK_SET) == 0 &&
       std::fwrite(header.data(), 1, header.size(), f) == header.size() && std::fflush(f) == 0;
#if defined(_WIN32)
  ok = ok && _commit(_fileno(f)) == 0;
#else
  ok = ok && fsync(fileno(f)) == 0;
#endif
  const int err = errno;
  if (std::fclose(f) != 0 || !ok) system_failure(tmp, "write failed", ok ? errno : err);
}

void rename_over(const std::string& tmp, const std::string& path) {
#if defined(_WIN32)
  if (!MoveFileExA(tmp.c_str(), path.c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) {
    system_failure(path, "cannot rename the temporary file over it", static_cast<int>(GetLastError()),
                   std::system_category());
  }
#else
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    system_failure(path, "cannot rename the temporary file over it", errno);
  }
#endif
}

/// Makes the rename durable (POSIX; on Windows a rename with MOVEFILE_WRITE_THROUGH is).
void sync_directory(const std::string& dir) {
#if !defined(_WIN32)
  const int fd = open(dir.c_str(), O_RDONLY);
  if (fd < 0) system_failure(dir, "cannot open the directory to sync it", errno);
  const int rc = fsync(fd), err = errno;
  close(fd);
  if (rc != 0) system_failure(dir, "cannot sync the directory", err);
#else
  (void)dir;
#endif
}

}  // namespace

std::uint32_t crc32(const void* data, std::size_t n, std::uint32_t crc) {
  return crc32_table().update(crc, static_cast<const unsigned char*>(data), n);
}

std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc) {
  return crc32c_table().update(crc, static_cast<const unsigned char*>(data), n);
}

Snapshot read_snapshot(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SnapshotError(path + ": cannot open the file: " + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (end < 0) throw SnapshotError(path + ": cannot determine the file's size");
  const std::uint64_t size = static_cast<std::uint64_t>(end);
  in.seekg(0);
  Header h = read_header(path, in, size);
  const std::string& stored = h.snap.metadata.at("checksum");
  // The name before ':' picks the CRC; an unknown name is checked as CRC-32C (and fails).
  const bool crc32c_name = stored.substr(0, stored.find(':')) != "crc32";
  const std::uint32_t crc = read_weights(path, in, h, crc32c_name, &h.snap.weights);
  const std::string sealed = seal(crc32c_name, crc, h.snap.metadata);
  if (sealed != stored) {
    throw SnapshotError(path + ": checksum mismatch over the weights (bytes " +
                        std::to_string(h.data_offset) + ".." + std::to_string(h.data_offset + 4 * h.n) +
                        ") and the metadata: header says " + stored + ", contents give " + sealed);
  }
  check_range(path, &h.snap.weights);
  return std::move(h.snap);
}

void write_snapshot(const std::string& path, const float* w, std::size_t n, const Params& params,
                    std::uint64_t iteration, std::uint64_t sequence) {
  check_parameter(params.lr, "lr");
  check_parameter(params.gate, "gate");
  check_parameter(params.decay, "decay");
  const std::vector<std::pair<std::string, std::string>> meta = {
      {"format", kFormat}, {"format_version", std::to_string(kSnapshotFormatVersion)},
      {"n", std::to_string(n)}, {"lr", "0x" + hex8(bits_of(params.lr + 0.0f))},
      {"gate", "0x" + hex8(bits_of(params.gate + 0.0f))},
      {"decay", "0x" + hex8(bits_of(params.decay + 0.0f))},
      {"iteration", std::to_string(iteration)}, {"sequence", std::to_string(sequence)},
      {"backend", "cpp"}, {"nap_gpu_version", ""}, {"created", utc_now()}};
  const std::string tmp = temporary_name(path);
  try {
    write_file(tmp, w, n, meta);
    rename_over(tmp, path);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  sync_directory(directory_of(path));
}

}  // namespace nap
