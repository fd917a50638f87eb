// The mlx backend: the Backend interface (backend/backend.h) implemented with mlx::core operations, compiled
// only when binding.gyp finds MLX (native/find-mlx.js defines STUDIO_WITH_MLX). Activations and the KV cache
// are bf16; the router runs in f32 as docs/model.md asks. On a Mac it computes on the GPU (Metal), elsewhere on
// MLX's cpu device unless MLX was built with CUDA.
//
// Thread ownership: MLX streams belong to the thread that creates them, so the backend must be created, used
// and destroyed on one thread (the engine thread).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "backend/backend.h"

namespace studio {

/**
 * A new mlx backend on MLX's GPU where it has one (Metal on a Mac; CUDA builds too), else on MLX's cpu device.
 * Activations are bf16 unless the environment sets STUDIO_MLX_DTYPE=f32: a checking mode in which the same ops
 * in f32 must match the cpu backend closely (the wire then carries f32).
 */
std::unique_ptr<Backend> make_mlx_backend();

/** "gpu" or "cpu": the MLX device make_mlx_backend() would compute on. */
std::string mlx_device_kind();

/** The version of the MLX library loaded at run time, e.g. "0.32.1" (a dev build adds a suffix). */
std::string mlx_version_text();

/** The version of the MLX headers the addon was compiled against, "major.minor.patch". */
std::string mlx_built_version_text();

/**
 * Empty when the MLX loaded at run time has the version the addon was compiled against; otherwise a message
 * naming both (and the library's path). make_mlx_backend() throws it: MLX's C++ ABI is not stable across
 * releases, so a mismatch would otherwise fail somewhere deep inside a forward.
 */
std::string mlx_version_error();

/** The file the MLX library was loaded from, or "" where the loader cannot say. */
std::string mlx_library_path();

/** The GPU's recommended maximum working set as MLX reports it (Metal), or nothing (MLX's cpu device, CUDA). */
std::optional<size_t> mlx_max_recommended_working_set();

}  // namespace studio
