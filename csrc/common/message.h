// Argument-check macros whose messages are built without iostreams.
//
// c10's TORCH_CHECK formats its arguments through std::ostringstream, and that template code
// (std::ostream::_M_insert<long>, ...) can be instantiated inside this module from the compiler's own
// libstdc++ headers. On the first H200 runs that copy did not match the libstdc++ loaded at run time, and
// every failing check crashed the process (SIGSEGV inside _M_insert<long> defined in _C.so) instead of
// raising. Here a message is appended piece by piece to one std::string (std::to_string, snprintf, c10's
// own out-of-line toString / Device::str) and reaches c10::Error as that one string, which c10 stores
// without touching a stream. Use these macros, never TORCH_CHECK, in sentfuse's C++ code.
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

namespace sentfuse {
namespace message {

inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, c10::string_view v) { s.append(v.data(), v.size()); }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T, typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                                                  !std::is_same_v<T, char>>>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
inline void append(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);  // what a default-formatted ostream prints
  s += buf;
}
inline void append(std::string& s, float v) { append(s, static_cast<double>(v)); }
inline void append(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const c10::Device& v) { s += v.str(); }

template <typename... Args>
std::string build(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

}  // namespace message

// Throw c10's ValueError / TypeError / IndexError (Python sees the same class) with a finished message.
[[noreturn]] void throw_value_error(const char* func, const char* file, uint32_t line, std::string msg);
[[noreturn]] void throw_type_error(const char* func, const char* file, uint32_t line, std::string msg);
[[noreturn]] void throw_index_error(const char* func, const char* file, uint32_t line, std::string msg);

}  // namespace sentfuse

#define SENTFUSE_CHECK_(kind, cond, ...)                                                                    \
  do {                                                                                                     \
    if (C10_UNLIKELY(!(cond)))                                                                             \
      ::sentfuse::throw_##kind##_error(__func__, __FILE__, __LINE__, ::sentfuse::message::build(__VA_ARGS__)); \
  } while (false)
#define SENTFUSE_CHECK_VALUE(cond, ...) SENTFUSE_CHECK_(value, cond, __VA_ARGS__)
#define SENTFUSE_CHECK_TYPE(cond, ...) SENTFUSE_CHECK_(type, cond, __VA_ARGS__)
#define SENTFUSE_CHECK_INDEX(cond, ...) SENTFUSE_CHECK_(index, cond, __VA_ARGS__)
