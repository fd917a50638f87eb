// A small JSON reader for safetensors headers and index files. Only what those files need: objects, arrays,
// strings (with escapes), numbers, booleans and null. Errors throw std::runtime_error with the byte offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace studio::io {

class JsonValue {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> array;
  // Ordered map keeps parsing deterministic; lookups are by key.
  std::map<std::string, JsonValue> object;

  bool is_object() const { return kind == Kind::Object; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Number; }
  /** The member named key, or nullptr when absent or when this is not an object. */
  const JsonValue* find(const std::string& key) const;
};

/** Parses text as one JSON value; throws std::runtime_error("invalid JSON at byte N: why"). */
JsonValue parse_json(std::string_view text);

}  // namespace studio::io
