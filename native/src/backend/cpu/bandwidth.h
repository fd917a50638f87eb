// Memory bandwidth of this machine as a copy kernel sees it: the yardstick for decode efficiency.
#pragma once

#include <cstddef>

namespace studio::cpu {

/** Bytes per second moved (read + written) by `threads` threads copying `bytes` bytes; best of several runs. */
double measure_copy_bandwidth(int threads, size_t bytes);

}  // namespace studio::cpu
