// Memory bandwidth of this machine as a copy kernel (and a read-only kernel) sees it: the yardsticks for decode
// efficiency. Decode only reads weights, so the read figure is the closer comparison; the copy figure is the
// conventional one (STREAM counts read + written bytes).
#pragma once

#include <cstddef>

namespace studio::cpu {

/** Bytes per second moved (read + written) by `threads` threads copying `bytes` bytes; best of several runs. */
double measure_copy_bandwidth(int threads, size_t bytes);

/** Bytes per second read by `threads` threads summing `bytes` bytes; best of several runs. */
double measure_read_bandwidth(int threads, size_t bytes);

}  // namespace studio::cpu
